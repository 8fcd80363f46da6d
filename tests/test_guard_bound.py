"""The NaN guard's update bound (fastnn/_core/bound.pyx), used by the compiled training plan to skip the guard's
backup copy: whenever it says "proved", the real compiled update produces only finite values; the plan's update
tracks the exact maxima the next proof needs and writes the same values as the untracked kernels; normal
training takes no backup and gives the same weights as training without the guard; huge or corrupted values
make the guard back up, check and restore exactly."""
import functools

import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import bound
from fastnn._core import optim as K
from fastnn._core import plan as KP
from fastnn.model import NonFiniteError

N = 96


# ------------------------------------------------------------------------------------------------ scan
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 2049, 40000])
@pytest.mark.parametrize("threads", [1, 2])
def test_scan_matches_numpy(dtype, n, threads):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=n) * 10.0 ** rng.integers(-5, 5, size=n)).astype(dtype)
    bad, amax, amin = bound.scan(x, threads)
    assert not bad
    if n:
        assert amax == float(np.abs(x).max()) and amin == float(x.min())
        for v in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[int(rng.integers(n))] = v
            assert bound.scan(y, threads)[0]
    else:
        assert (amax, amin) == (0.0, np.inf)


# ------------------------------------------------------------------------- randomized: proved => finite
def _array(rng, mag, dtype, nonneg=False):
    """N values of magnitude <= mag with many exactly at mag, some 0, some tiny, random signs."""
    kind = rng.integers(0, 4, size=N)
    a = np.where(kind == 0, mag, np.where(kind == 1, 0.0, np.where(kind == 2, mag * rng.random(N), min(mag, 1e-30))))
    a[rng.integers(N)] = mag
    a = np.minimum(a, float(np.finfo(dtype).max))
    if not nonneg:
        a = a * rng.choice([-1.0, 1.0], size=N)
    return a.astype(dtype)


def _mags(rng, dtype):
    top = np.log10(np.finfo(dtype).max)
    return {k: 10.0 ** min(rng.uniform(-3, top + 1), 308.0) if rng.random() < 0.8 else 0.0 for k in "gpmvb"}


def _hyper(rng):
    def pick(lo, hi):      # log-uniform in [10^lo, 10^hi], sometimes exactly 0
        return 0.0 if rng.random() < 0.1 else float(10.0 ** rng.uniform(lo, hi))
    return dict(lr=pick(-6, 4), wd=pick(-6, 1), eps=pick(-45, 0), mom=min(pick(-3, 0.3), 2.0),
                damp=float(rng.uniform(-1.0, 1.5)),
                b1=float(min(rng.choice([0.0, 0.9, 0.999999, rng.random()]), 0.999999)),
                b2=float(min(rng.choice([0.0, 0.999, 1 - 1e-12, rng.random()]), 1 - 1e-12)),
                step=int(rng.choice([1, 2, 10, 10**6])))


def _scale_to_edge(ok, mags):
    """Scale all magnitudes by a common factor 10^s to just inside the bound's edge (bisection on s), so the
    tests run where overflow is closest; returns the scaled magnitudes (or the originals if never proved)."""
    lo, hi = -330.0, 330.0

    def sc(s):
        return {k: min(v * 10.0 ** (s / 2) * 10.0 ** (s / 2), 1e308) for k, v in mags.items()}

    if not ok(sc(lo)):
        return mags
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(sc(mid)) else (lo, mid)
    return sc(lo)


def _top(mag, dtype):
    """The largest magnitude of _array(rng, mag, dtype): mag as the dtype holds it."""
    return float(np.array(min(mag, float(np.finfo(dtype).max))).astype(dtype))


def _mx(a):
    return float(np.abs(a).max()) if a is not None and a.size else 0.0


def _run_trials(dtype, make_case, trials=500):
    """make_case(rng, h, dtype) -> (proved(mags) -> bool, run(mags) -> {name: array after the update})."""
    rng = np.random.default_rng(12345 if dtype == np.float32 else 54321)
    n_proved = 0
    for trial in range(trials):
        h = _hyper(rng)
        mags = _mags(rng, dtype)
        proved, run = make_case(rng, h, dtype)
        if rng.random() < 0.7:
            mags = _scale_to_edge(proved, mags)
        for _ in range(3):
            if proved(mags):
                n_proved += 1
                with np.errstate(all="ignore"):
                    out = run(mags)
                for name, a in out.items():
                    assert np.isfinite(a).all(), (trial, name, h, mags)
            mags = {k: v * 0.5 for k, v in mags.items()}
    assert n_proved > trials // 4       # the bound is not vacuous


def _common(rng, mags, dtype, names, nonneg=()):
    arrs = {k: _array(rng, mags[k], dtype, k in nonneg) for k in names}
    return arrs, int(rng.choice([0, N // 2, N]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov", "first"])
def test_sgd_bound_implies_finite_update(dtype, variant):
    dbl = dtype == np.float64
    has_buf = variant != "plain"
    nesterov = variant == "nesterov"
    first = variant == "first"

    def make(rng, h, dt):
        damp = 0.0 if nesterov else h["damp"]
        seed = int(rng.integers(2**31))

        def arrays(m):
            return _common(np.random.default_rng(seed), m, dt, "gpb")

        def proved(m):
            t = {k: _top(m[k], dt) for k in "gpb"}
            return bound.sgd(dbl, t["g"], t["p"], t["b"], has_buf, h["lr"], h["mom"], damp, h["wd"], nesterov, first)

        def run(m):
            a, nd = arrays(m)
            assert all(_mx(a[k]) == _top(m[k], dt) for k in "gpb")
            K.sgd_step(a["p"], a["g"], a["b"] if has_buf else None, h["lr"], h["mom"], damp, h["wd"], nesterov,
                       first, nd)
            return {"p": a["p"], "b": a["b"]} if has_buf else {"p": a["p"]}
        return proved, run
    _run_trials(dtype, make)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["adam", "adamw", "amsgrad", "adamw_amsgrad"])
def test_adam_bound_implies_finite_update(dtype, variant):
    dbl = dtype == np.float64
    decoupled = variant.startswith("adamw")
    ams = variant.endswith("amsgrad")

    def make(rng, h, dt):
        seed = int(rng.integers(2**31))

        def arrays(m):
            return _common(np.random.default_rng(seed), m, dt, "gpmvb", nonneg="vb")

        def proved(m):
            t = {k: _top(m[k], dt) for k in "gpmvb"}
            return bound.adam(dbl, t["g"], t["p"], t["m"], t["v"], t["b"], ams, h["lr"], h["b1"], h["b2"], h["eps"],
                              h["wd"], decoupled, h["step"])

        def run(m):
            a, nd = arrays(m)
            assert all(_mx(a[k]) == _top(m[k], dt) for k in "gpmvb")
            K.adam_step(a["p"], a["g"], a["m"], a["v"], a["b"] if ams else None, h["lr"], h["b1"], h["b2"],
                        h["eps"], h["wd"], decoupled, h["step"], nd)
            return {"p": a["p"], "m": a["m"], "v": a["v"], **({"vmax": a["b"]} if ams else {})}
        return proved, run
    _run_trials(dtype, make)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["plain", "momentum"])
def test_rmsprop_bound_implies_finite_update_within_its_carried_bounds(dtype, variant):
    """rmsprop_safe: a proved step gives finite values, all within the bounds it returns (which the plan carries
    to the next step in place of measured maxima)."""
    dbl = dtype == np.float64
    has_buf = variant == "momentum"

    def make(rng, h, dt):
        seed = int(rng.integers(2**31))
        alpha = float(rng.choice([0.0, 0.99, 1.0, rng.random(), h["b2"]]))

        def arrays(m):
            return _common(np.random.default_rng(seed), m, dt, "gpmb", nonneg="m")

        def proved(m):
            t = {k: _top(m[k], dt) for k in "gpmb"}
            return bound.rmsprop(dbl, t["g"], t["p"], t["m"], t["b"], False, has_buf, h["lr"], alpha, h["eps"],
                                 h["wd"], h["mom"])

        def run(m):
            nb = proved(m)
            a, nd = arrays(m)
            K.rmsprop_step(a["p"], a["g"], a["m"], None, a["b"] if has_buf else None, h["lr"], alpha, h["eps"],
                           h["wd"], h["mom"], nd)
            assert _mx(a["p"]) <= nb[0] and float(a["m"].max()) <= nb[1] and a["m"].min() >= 0
            if has_buf:
                assert _mx(a["b"]) <= nb[2]
            return {"p": a["p"], "sq": a["m"], **({"buf": a["b"]} if has_buf else {})}
        return proved, run
    _run_trials(dtype, make)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adagrad_bound_implies_finite_update_within_its_carried_bounds(dtype):
    dbl = dtype == np.float64

    def make(rng, h, dt):
        seed = int(rng.integers(2**31))

        def arrays(m):
            return _common(np.random.default_rng(seed), m, dt, "gpm", nonneg="m")

        def proved(m):
            t = {k: _top(m[k], dt) for k in "gpm"}
            return bound.adagrad(dbl, t["g"], t["p"], t["m"], h["lr"], h["wd"], h["eps"])

        def run(m):
            nb = proved(m)
            a, nd = arrays(m)
            K.adagrad_step(a["p"], a["g"], a["m"], h["lr"], h["wd"], h["eps"], nd)
            assert _mx(a["p"]) <= nb[0] and float(a["m"].max()) <= nb[1]
            return {"p": a["p"], "sum": a["m"]}
        return proved, run
    _run_trials(dtype, make)


def test_centered_rmsprop_is_never_proved():
    """sqrt(square_avg - grad_avg^2): the difference can round below 0 for nearly constant gradients."""
    for dbl in (False, True):
        assert bound.rmsprop(dbl, 1.0, 1.0, 1.0, 1.0, False, True, 1e-3, 0.99, 1e-8, 0.0, 0.9) is not None
        assert bound.rmsprop(dbl, 1.0, 1.0, 1.0, 1.0, True, True, 1e-3, 0.99, 1e-8, 0.0, 0.9) is None
        assert bound.rmsprop(dbl, 1.0, 1.0, 1.0, 0.0, False, False, 1e-3, 1.5, 1e-8, 0.0, 0.0) is None  # alpha > 1
        assert bound.rmsprop(dbl, 1.0, 1.0, 1.0, 0.0, False, False, 1e-3, 0.99, 0.0, 0.0, 0.0) is None  # eps 0
        assert bound.adagrad(dbl, 1.0, 1.0, 1.0, 1e-2, 0.0, 1e-10) is not None
        assert bound.adagrad(dbl, 1.0, 1.0, 1.0, 1e-2, 0.0, 0.0) is None
        for bad in (np.inf, np.nan):
            assert bound.adagrad(dbl, bad, 1.0, 1.0, 1e-2, 0.0, 1e-10) is None
            assert bound.rmsprop(dbl, 1.0, bad, 1.0, 0.0, False, False, 1e-3, 0.99, 1e-8, 0.0, 0.0) is None
    # in float32, a constant gradient drives square_avg - grad_avg^2 to rounding noise, below 0 for some values
    g = np.float32(0.1) * np.arange(1, 2001, dtype=np.float32)
    sq, ga, a = np.zeros_like(g), np.zeros_like(g), np.float32(0.9)
    neg = np.zeros(g.shape, bool)
    for _ in range(200):
        sq = sq * a + (1 - a) * g * g
        ga = ga + (1 - a) * (g - ga)
        neg |= sq - ga * ga < 0
    assert neg.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov_first", "adam", "adamw_amsgrad"])
def test_the_tracked_update_writes_the_same_values_and_its_maxima_are_exact(dtype, threads, opt):
    """The plan's update for proved steps against optim's sgd_step / adam_step (the same C loops, split the
    plan's way: weight-decay prefix, thread ranges): identical values, and the maxima it returns are those of
    the arrays it wrote."""
    rng = np.random.default_rng(3)
    n, nd = 40001, 30000           # two threads' ranges, the weight-decay prefix inside the first
    p = rng.normal(size=n).astype(dtype)
    g = (rng.normal(size=n) * 10.0 ** rng.integers(-3, 3, size=n)).astype(dtype)
    step = 1 if opt == "nesterov_first" else 5
    if opt.startswith("adam"):
        ams, dec = opt.endswith("amsgrad"), opt.startswith("adamw")
        st = [rng.normal(size=n).astype(dtype), rng.random(n).astype(dtype), rng.random(n).astype(dtype)]
        if not ams:
            st[2] = None
        ref = [p.copy()] + [None if s is None else s.copy() for s in st]
        K.adam_step(ref[0], g, ref[1], ref[2], ref[3], 1e-3, 0.9, 0.999, 1e-8, 0.01, dec, step, nd)
        plan = KP.Plan(p, g, 1, 0)
        plan.adam(1e-3, 0.9, 0.999, 1e-8, 0.01, dec, st[0], st[1], st[2], nd)
        mx = KP.tracked_update(plan, step, threads)
    else:
        has_buf = opt != "sgd"
        nest = opt == "nesterov_first"
        st = [rng.normal(size=n).astype(dtype) if has_buf else None, None, None]
        damp = 0.0 if nest else 0.1
        momentum = 0.9 if has_buf else 0.0
        ref = [p.copy(), None if st[0] is None else st[0].copy(), None, None]
        K.sgd_step(ref[0], g, ref[1], 0.05, momentum, damp, 1e-3, nest, step == 1, nd)
        plan = KP.Plan(p, g, 1, 0)
        plan.sgd(0.05, momentum, damp, 1e-3, nest, st[0], nd)
        mx = KP.tracked_update(plan, step, threads)
    for got, want, m in zip([p] + st, ref, mx):
        if want is None:
            assert got is None and m == 0.0
        else:
            np.testing.assert_array_equal(got, want)
            assert m == _mx(want)


def test_what_the_bound_never_proves():
    for dbl in (False, True):
        ok = functools.partial(bound.adam, dbl)
        assert ok(1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
        # eps 0 or subnormal: m / (sqrt(v) + eps) may be 0/0
        assert not ok(1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 0.0, 0.0, False, 1)
        assert not ok(1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-320, 0.0, False, 1)
        assert not ok(1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 1.0, 0.999, 1e-8, 0.0, False, 1)     # beta1 = 1
        assert not ok(1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 0)     # step 0
        for bad in (np.inf, np.nan):
            assert not bound.sgd(dbl, bad, 1.0, 1.0, True, 0.1, 0.9, 0.0, 0.0, False, False)
            assert not bound.sgd(dbl, 1.0, bad, 1.0, True, 0.1, 0.9, 0.0, 0.0, False, False)
            assert not bound.sgd(dbl, 1.0, 1.0, bad, True, 0.1, 0.9, 0.0, 0.0, False, False)
            assert not ok(1.0, 1.0, bad, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
            assert not ok(1.0, 1.0, 1.0, 1.0, 0.0, False, bad, 0.9, 0.999, 1e-8, 0.0, False, 1)
        # the momentum buffer's bound does not matter at the first step (the buffer is set to the gradient)
        assert bound.sgd(dbl, 1.0, 1.0, np.inf, True, 0.1, 0.9, 0.0, 0.0, False, True)
    # float32: eps 1e-40 is subnormal in float32 only
    assert not bound.adam(False, 1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-40, 0.0, False, 1)
    assert bound.adam(True, 1.0, 1.0, 1.0, 1.0, 0.0, False, 1e-3, 0.9, 0.999, 1e-40, 0.0, False, 1)


# ---------------------------------------------------- the compiled plan skips / takes the backup
def _model(opt, dtype="float32", guard=True):
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(3)], input_dim=8, seed=0,
                       dtype=dtype)
    m.compile("cross_entropy", opt, nan_guard=guard)
    return m


def _data(n=256, dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype(dtype), rng.integers(0, 3, size=n)


OPTS = {
    "sgd": lambda: fnn.optim.SGD(lr=0.01),
    "momentum": lambda: fnn.optim.SGD(lr=0.01, momentum=0.9, dampening=0.1),
    "nesterov": lambda: fnn.optim.SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda: fnn.optim.Adam(lr=1e-3, weight_decay=1e-3),
    "adamw_amsgrad": lambda: fnn.optim.AdamW(lr=1e-3, amsgrad=True),
    "rmsprop": lambda: fnn.optim.RMSprop(lr=1e-3, weight_decay=1e-4),
    "rmsprop_momentum": lambda: fnn.optim.RMSprop(lr=1e-3, momentum=0.9, alpha=0.9),
    "adagrad": lambda: fnn.optim.Adagrad(lr=1e-2, lr_decay=1e-3, weight_decay=1e-4, initial_accumulator_value=0.1),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", sorted(OPTS))
def test_normal_training_takes_no_backup_and_matches_training_without_the_guard(opt, dtype):
    X, y = _data(dtype=np.dtype(dtype))
    m = _model(OPTS[opt](), dtype)
    ref = _model(OPTS[opt](), dtype, guard=False)
    m.fit(X, y, epochs=3, batch_size=32, verbose=0)
    ref.fit(X, y, epochs=3, batch_size=32, verbose=0)
    assert m.trainer.train_plan is not None
    assert m.trainer.guard_backup_steps == 0 and m.optimizer.step_count == 24
    np.testing.assert_array_equal(m.parameters, ref.parameters)
    for k, v in m.optimizer.state.items():
        np.testing.assert_array_equal(v, ref.optimizer.state[k])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", sorted(OPTS))
def test_huge_weights_or_state_take_the_backup_and_an_overflow_is_restored(opt, dtype):
    m = _model(OPTS[opt](), dtype)
    X, y = _data(dtype=np.dtype(dtype))
    m.fit(X, y, epochs=1, batch_size=32, verbose=0)
    # a weight (then a state value) the user writes close to the dtype's largest value: the bound cannot prove
    # the step finite, so the guard backs up (the plan reads the maxima again at each fit call)
    huge = float(np.finfo(dtype).max) / 4
    X0 = X[:32].copy()
    X0[:, 0] = 0.0                      # the huge weight multiplies zeros: forward and gradients stay finite
    targets = ("weight", "state") if m.optimizer.state else ("weight",)
    for target in targets:
        if target == "weight":
            m.layers[0].weight[0, 0] = huge
        else:
            m.layers[0].weight[0, 0] = 0.1
            next(iter(m.optimizer.state.values()))[0] = huge
        before = m.parameters.copy()
        state = {k: v.copy() for k, v in m.optimizer.state.items()}
        steps, n0 = m.optimizer.step_count, m.trainer.guard_backup_steps
        try:
            m.fit(X0, y[:32], epochs=1, batch_size=32, verbose=0)
        except NonFiniteError as e:          # the step overflowed: restored exactly
            assert e.what == "parameters"
            np.testing.assert_array_equal(m.parameters, before)
            for k, v in m.optimizer.state.items():
                np.testing.assert_array_equal(v, state[k])
            assert m.optimizer.step_count == steps
        else:
            assert np.isfinite(m.parameters).all()
        assert m.trainer.guard_backup_steps == n0 + 1, target


@pytest.mark.parametrize("opt", ["adam", "adamw_amsgrad"])
def test_a_negative_square_average_is_backed_up_checked_and_restored(opt):
    """sqrt(negative) is NaN from finite inputs: a state with a negative exp_avg_sq is never proved."""
    m = _model(OPTS[opt]())
    X, y = _data()
    m.fit(X, y, epochs=1, batch_size=32, verbose=0)
    m.optimizer.state["exp_avg_sq"][:] = -1.0          # e.g. a corrupted or hand-made state
    if opt == "adamw_amsgrad":
        m.optimizer.state["max_exp_avg_sq"][:] = -1.0
    before = m.parameters.copy()
    state = {k: v.copy() for k, v in m.optimizer.state.items()}
    steps, n0 = m.optimizer.step_count, m.trainer.guard_backup_steps
    with pytest.raises(NonFiniteError):
        m.fit(X[:32], y[:32], epochs=1, batch_size=32, verbose=0)
    assert m.trainer.guard_backup_steps == n0 + 1
    np.testing.assert_array_equal(m.parameters, before)
    for k, v in m.optimizer.state.items():
        np.testing.assert_array_equal(v, state[k])
    assert m.optimizer.step_count == steps


@pytest.mark.parametrize("opt", ["rmsprop", "adagrad"])
def test_a_negative_square_sum_is_never_proved(opt):
    """RMSprop's square_avg and Adagrad's sum are square roots' arguments: a negative value is never proved."""
    m = _model(OPTS[opt]())
    X, y = _data()
    m.fit(X, y, epochs=1, batch_size=32, verbose=0)
    next(iter(m.optimizer.state.values()))[:] = -1.0
    before = m.parameters.copy()
    n0 = m.trainer.guard_backup_steps
    with pytest.raises(NonFiniteError):
        m.fit(X[:32], y[:32], epochs=1, batch_size=32, verbose=0)
    assert m.trainer.guard_backup_steps == n0 + 1
    np.testing.assert_array_equal(m.parameters, before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_centered_rmsprop_always_backs_up_and_trains_the_same(dtype):
    X, y = _data(64, np.dtype(dtype))
    m = _model(fnn.optim.RMSprop(lr=1e-3, centered=True, momentum=0.5), dtype)
    ref = _model(fnn.optim.RMSprop(lr=1e-3, centered=True, momentum=0.5), dtype, guard=False)
    m.fit(X, y, epochs=2, batch_size=32, verbose=0)
    ref.fit(X, y, epochs=2, batch_size=32, verbose=0)
    assert m.trainer.train_plan is not None and m.trainer.guard_backup_steps == 4
    np.testing.assert_array_equal(m.parameters, ref.parameters)


def test_adam_with_eps_zero_always_backs_up_and_trains_the_same():
    X, y = _data(64)
    m = _model(fnn.optim.Adam(lr=1e-3, eps=0.0))
    ref = _model(fnn.optim.Adam(lr=1e-3, eps=0.0), guard=False)
    m.fit(X, y, epochs=2, batch_size=32, verbose=0)
    ref.fit(X, y, epochs=2, batch_size=32, verbose=0)
    assert m.trainer.guard_backup_steps == 4
    np.testing.assert_array_equal(m.parameters, ref.parameters)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_overflowing_update_is_backed_up_and_rolled_back(dtype):
    m = _model(fnn.optim.SGD(lr=float(np.finfo(dtype).max) / 2), dtype)
    X, y = _data(64, np.dtype(dtype))
    X *= 100
    before = m.parameters.copy()
    with pytest.raises(NonFiniteError) as ei:
        m.fit(X, y, epochs=1, batch_size=32, verbose=0)
    assert ei.value.what == "parameters" and ei.value.batch == 1
    assert m.trainer.guard_backup_steps == 1 and m.optimizer.step_count == 0
    np.testing.assert_array_equal(m.parameters, before)


def test_exploding_adamw_is_proved_finite_until_near_overflow():
    """AdamW lr=1e3 grows the weights every step until the forward pass or an update overflows: the guard proves
    (no backup) all but at most the last steps, and the weights it leaves are finite."""
    m = _model(fnn.optim.AdamW(lr=1e3, weight_decay=0.01))
    X, y = _data(2048)
    with pytest.raises(NonFiniteError):
        m.fit(X, y, epochs=50, batch_size=32, verbose=0)
    assert np.isfinite(m.parameters).all()
    assert m.optimizer.step_count > 10 and m.trainer.guard_backup_steps <= 2
