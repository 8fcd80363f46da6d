"""The optimizer update kernels: 5 steps against updates written out by hand here, and against torch.optim.

One table row per optimizer configuration.  Each kernel updates one flat parameter buffer in place and
applies weight decay to elements [0, n_decay) only; the hand-written updates below follow the pseudo-code
of the torch.optim documentation (single-tensor algorithm), in float64.  Gradients change scale from step
to step, so that AMSGrad's running max differs from the second moment.
"""
import numpy as np
import pytest
import scipy_openblas32  # noqa: F401  (loads the BLAS before the extensions; fastnn/__init__ does it too)

from fastnn import _reference as ref
from fastnn._core import optim

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
THREADS = [1, 2]
N_STEPS = 5
GRAD_SCALES = [3.0, 0.1, 2.0, 0.05, 1.0]    # one per step
BIG = 60000                                  # > 2 x 16384: split over 2 threads

DEFAULTS = {
    "sgd": dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    "adagrad": dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10),
    "rmsprop": dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
    "adam": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    "adamw": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
}

# (id, family, hyper-parameters over the family's defaults)
CASES = [
    ("sgd", "sgd", {}),
    ("sgd_momentum", "sgd", dict(momentum=0.9)),
    ("sgd_dampening", "sgd", dict(momentum=0.9, dampening=0.3)),
    ("sgd_nesterov", "sgd", dict(momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", "sgd", dict(weight_decay=0.05)),
    ("sgd_momentum_weight_decay", "sgd", dict(momentum=0.8, dampening=0.1, weight_decay=0.05)),
    ("sgd_nesterov_weight_decay", "sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("adagrad", "adagrad", {}),
    ("adagrad_lr_decay_weight_decay", "adagrad", dict(lr_decay=0.05, weight_decay=0.05)),
    ("rmsprop", "rmsprop", {}),
    ("rmsprop_centered", "rmsprop", dict(centered=True)),
    ("rmsprop_momentum", "rmsprop", dict(momentum=0.9)),
    ("rmsprop_centered_momentum_weight_decay", "rmsprop", dict(centered=True, momentum=0.9, weight_decay=0.05)),
    ("adam", "adam", {}),
    ("adam_weight_decay", "adam", dict(weight_decay=0.05)),
    ("adam_amsgrad", "adam", dict(amsgrad=True)),
    ("adamw", "adamw", dict(weight_decay=0.1)),
    ("adamw_amsgrad", "adamw", dict(weight_decay=0.1, amsgrad=True)),
]
CASE_IDS = [c[0] for c in CASES]
STATE_KEYS = {   # the state each family keeps, by torch's names
    "sgd": ["momentum_buffer"],
    "adagrad": ["sum"],
    "rmsprop": ["square_avg", "grad_avg", "momentum_buffer"],
    "adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    "adamw": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
}


def hyper(family, overrides):
    h = dict(DEFAULTS[family])
    h.update(overrides)
    return h


def problem(dtype, size, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(size).astype(dtype)
    grads = [(s * rng.standard_normal(size)).astype(dtype) for s in GRAD_SCALES[:N_STEPS]]
    return p, grads


def clamp(n_decay, size):
    return max(0, min(n_decay, size))


# ------------------------------------------------------------------ running a kernel (or the reference)
def run_steps(impl, family, h, p, grads, n_decay, n_threads=1):
    """N_STEPS updates of p (in place) with impl's <family>_step; returns {name: buffer} incl. "param"."""
    dtype, n = p.dtype, p.shape[0]
    out = {"param": p}
    if family == "sgd":
        # NaN: the first step must overwrite the momentum buffer, not read it
        buf = np.full(n, np.nan, dtype) if h["momentum"] != 0 else None
        for t, g in enumerate(grads):
            impl.sgd_step(p, g, buf, h["lr"], h["momentum"], h["dampening"], h["weight_decay"], h["nesterov"],
                          t == 0, n_decay, n_threads=n_threads)
        out["momentum_buffer"] = buf
    elif family == "adagrad":
        state_sum = np.zeros(n, dtype)
        for step, g in enumerate(grads, start=1):
            clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
            impl.adagrad_step(p, g, state_sum, clr, h["weight_decay"], h["eps"], n_decay, n_threads=n_threads)
        out["sum"] = state_sum
    elif family == "rmsprop":
        square_avg = np.zeros(n, dtype)
        grad_avg = np.zeros(n, dtype) if h["centered"] else None
        buf = np.zeros(n, dtype) if h["momentum"] > 0 else None
        for g in grads:
            impl.rmsprop_step(p, g, square_avg, grad_avg, buf, h["lr"], h["alpha"], h["eps"], h["weight_decay"],
                              h["momentum"], n_decay, n_threads=n_threads)
        out.update(square_avg=square_avg, grad_avg=grad_avg, momentum_buffer=buf)
    else:
        exp_avg, exp_avg_sq = np.zeros(n, dtype), np.zeros(n, dtype)
        vmax = np.zeros(n, dtype) if h["amsgrad"] else None
        beta1, beta2 = h["betas"]
        for step, g in enumerate(grads, start=1):
            impl.adam_step(p, g, exp_avg, exp_avg_sq, vmax, h["lr"], beta1, beta2, h["eps"], h["weight_decay"],
                           family == "adamw", step, n_decay, n_threads=n_threads)
        out.update(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=vmax)
    return out


# ------------------------------------------------------------------------- the updates, by hand (float64)
def hand_steps(family, h, p, grads, n_decay):
    """The torch.optim pseudo-code, whole-buffer numpy in float64, weight decay on [0, n_decay)."""
    p = p.astype(np.float64)
    n = p.shape[0]
    decays = np.arange(n) < clamp(n_decay, n)          # which elements get weight decay
    wd = h["weight_decay"]
    out = {}
    if family == "sgd":
        b = None
        for g in grads:
            g = g.astype(np.float64) + np.where(decays, wd * p, 0.0)
            if h["momentum"] != 0:
                b = g if b is None else h["momentum"] * b + (1 - h["dampening"]) * g
                g = g + h["momentum"] * b if h["nesterov"] else b
            p = p - h["lr"] * g
        out["momentum_buffer"] = b
    elif family == "adagrad":
        s = np.zeros(n)
        for step, g in enumerate(grads, start=1):
            g = g.astype(np.float64) + np.where(decays, wd * p, 0.0)
            clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
            s = s + g ** 2
            p = p - clr * g / (np.sqrt(s) + h["eps"])
        out["sum"] = s
    elif family == "rmsprop":
        a, eps, mom = h["alpha"], h["eps"], h["momentum"]
        v = np.zeros(n)
        gbar = np.zeros(n) if h["centered"] else None
        b = np.zeros(n) if mom > 0 else None
        for g in grads:
            g = g.astype(np.float64) + np.where(decays, wd * p, 0.0)
            v = a * v + (1 - a) * g ** 2
            vt = v
            if gbar is not None:
                gbar = a * gbar + (1 - a) * g
                vt = v - gbar ** 2
            if b is not None:
                b = mom * b + g / (np.sqrt(vt) + eps)
                p = p - h["lr"] * b
            else:
                p = p - h["lr"] * g / (np.sqrt(vt) + eps)
        out.update(square_avg=v, grad_avg=gbar, momentum_buffer=b)
    else:
        lr, (b1, b2), eps = h["lr"], h["betas"], h["eps"]
        m, v = np.zeros(n), np.zeros(n)
        vmax = np.zeros(n) if h["amsgrad"] else None
        for t, g in enumerate(grads, start=1):
            g = g.astype(np.float64)
            if family == "adamw":
                p = np.where(decays, p * (1 - lr * wd), p)
            else:
                g = g + np.where(decays, wd * p, 0.0)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g ** 2
            m_hat = m / (1 - b1 ** t)
            if vmax is not None:
                vmax = np.maximum(vmax, v)
                v_hat = vmax / (1 - b2 ** t)
            else:
                v_hat = v / (1 - b2 ** t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.update(exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=vmax)
    out["param"] = p
    return out


def assert_close(got, want, dtype, what=""):
    if want is None:
        assert got is None, f"{what}: expected no buffer"
        return
    assert got.dtype == dtype
    assert not np.isnan(got).any(), f"{what} has NaN (not written?)"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    np.testing.assert_allclose(got, np.asarray(want).astype(dtype), rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                               err_msg=what)


def assert_state_close(got, want, family, dtype):
    for key in ["param"] + STATE_KEYS[family]:
        assert_close(got[key], want[key], dtype, key)


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("size,n_decay", [(1, 1), (37, 25), (BIG, 40000)], ids=["1", "37", "big"])
@pytest.mark.parametrize("case_id,family,overrides", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_hand_written_update(dtype, n_threads, case_id, family, overrides, size, n_decay):
    """5 steps; n_decay < size: only the first n_decay elements decay (40000 lies in the 2nd thread's half)."""
    h = hyper(family, overrides)
    p, grads = problem(dtype, size)
    want = hand_steps(family, h, p, grads, n_decay)
    p0 = p.copy()
    got = run_steps(optim, family, h, p, grads, n_decay, n_threads)
    assert got["param"] is p and not np.array_equal(p, p0), "p was not updated in place"
    assert_state_close(got, want, family, dtype)


@pytest.mark.parametrize("case_id,family,overrides", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_hand_written_update(dtype, case_id, family, overrides):
    h = hyper(family, overrides)
    p, grads = problem(dtype, 37)
    want = hand_steps(family, h, p, grads, 25)
    assert_state_close(run_steps(ref, family, h, p, grads, 25), want, family, dtype)


@pytest.mark.parametrize("case_id,family,overrides", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_vs_two_threads(dtype, case_id, family, overrides):
    h = hyper(family, overrides)
    results = []
    for nt in THREADS:
        p, grads = problem(dtype, BIG)
        results.append(run_steps(optim, family, h, p, grads, 40000, nt))
    for key in ["param"] + STATE_KEYS[family]:
        if results[0][key] is None:
            assert results[1][key] is None
        else:
            np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_weight_decay_cases_do_decay():
    """Guard against a vacuous n_decay check: with weight decay, n_decay changes the result of every family."""
    for case_id, family, overrides in CASES:
        h = hyper(family, overrides)
        if h["weight_decay"] == 0:
            continue
        p, grads = problem(np.float64, 37)
        a = run_steps(optim, family, h, p.copy(), grads, 37)["param"]
        b = run_steps(optim, family, h, p.copy(), grads, 25)["param"]
        np.testing.assert_array_equal(a[:25], b[:25], err_msg=case_id)   # decayed in both runs
        assert np.all(a[25:] != b[25:]), f"{case_id}: n_decay had no effect on elements past it"


@pytest.mark.parametrize("impl", [optim, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("family", ["sgd", "adagrad", "rmsprop", "adam", "adamw"])
def test_n_decay_is_clamped(impl, family):
    """n_decay < 0 acts as 0 and n_decay > size as size."""
    h = hyper(family, dict(weight_decay=0.05, momentum=0.9) if family in ("sgd", "rmsprop") else
              dict(weight_decay=0.05))
    p, grads = problem(np.float64, 37)
    results = {nd: run_steps(impl, family, h, p.copy(), grads, nd)["param"] for nd in (-3, 0, 37, 50)}
    np.testing.assert_array_equal(results[-3], results[0])
    np.testing.assert_array_equal(results[50], results[37])
    assert not np.array_equal(results[0], results[37])


@pytest.mark.parametrize("impl", [optim, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("case_id,family,overrides", CASES, ids=CASE_IDS)
def test_empty_buffer(impl, case_id, family, overrides):
    got = run_steps(impl, family, hyper(family, overrides), np.zeros(0), [np.zeros(0)] * N_STEPS, 0)
    assert got["param"].shape == (0,)


def _z(n):
    return np.zeros(n)


SIZE_ERRORS = [
    ("sgd g", lambda m: m.sgd_step(_z(4), _z(3), None, 0.1, 0.0, 0.0, 0.0, False, True, 4)),
    ("sgd buf", lambda m: m.sgd_step(_z(4), _z(4), _z(5), 0.1, 0.9, 0.0, 0.0, False, True, 4)),
    ("adagrad state", lambda m: m.adagrad_step(_z(4), _z(4), _z(3), 0.1, 0.0, 1e-10, 4)),
    ("rmsprop square_avg", lambda m: m.rmsprop_step(_z(4), _z(4), _z(2), None, None, 0.01, 0.99, 1e-8, 0.0, 0.0, 4)),
    ("rmsprop grad_avg", lambda m: m.rmsprop_step(_z(4), _z(4), _z(4), _z(3), None, 0.01, 0.99, 1e-8, 0.0, 0.0, 4)),
    ("rmsprop buf", lambda m: m.rmsprop_step(_z(4), _z(4), _z(4), None, _z(6), 0.01, 0.99, 1e-8, 0.0, 0.9, 4)),
    ("adam exp_avg", lambda m: m.adam_step(_z(4), _z(4), _z(3), _z(4), None, 0.01, 0.9, 0.999, 1e-8, 0.0,
                                           False, 1, 4)),
    ("adam max", lambda m: m.adam_step(_z(4), _z(4), _z(4), _z(4), _z(1), 0.01, 0.9, 0.999, 1e-8, 0.0,
                                       False, 1, 4)),
    ("adam step 0", lambda m: m.adam_step(_z(4), _z(4), _z(4), _z(4), None, 0.01, 0.9, 0.999, 1e-8, 0.0,
                                          False, 0, 4)),
]


@pytest.mark.parametrize("impl", [optim, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize("what,call", SIZE_ERRORS, ids=[e[0] for e in SIZE_ERRORS])
def test_bad_arguments_raise_value_error(impl, what, call):
    with pytest.raises(ValueError):
        call(impl)


def test_amsgrad_max_differs_from_second_moment():
    """The gradient schedule makes v shrink at some steps, so the AMSGrad tests see vmax != v."""
    h = hyper("adam", dict(amsgrad=True))
    p, grads = problem(np.float64, 37)
    got = run_steps(optim, "adam", h, p, grads, 0)
    assert np.all(got["max_exp_avg_sq"] >= got["exp_avg_sq"])
    assert np.any(got["max_exp_avg_sq"] > got["exp_avg_sq"])


# -------------------------------------------------------------------------------------- torch parity
def torch_steps(torch, family, h, p, grads):
    """N_STEPS of the real torch.optim class on one flat parameter tensor (single-tensor algorithm)."""
    param = torch.tensor(p.copy(), requires_grad=True)
    if family == "sgd":
        opt = torch.optim.SGD([param], lr=h["lr"], momentum=h["momentum"], dampening=h["dampening"],
                              weight_decay=h["weight_decay"], nesterov=h["nesterov"], foreach=False)
    elif family == "adagrad":
        opt = torch.optim.Adagrad([param], lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                                  eps=h["eps"], foreach=False)
    elif family == "rmsprop":
        opt = torch.optim.RMSprop([param], lr=h["lr"], alpha=h["alpha"], eps=h["eps"],
                                  weight_decay=h["weight_decay"], momentum=h["momentum"], centered=h["centered"],
                                  foreach=False)
    else:
        cls = torch.optim.AdamW if family == "adamw" else torch.optim.Adam
        opt = cls([param], lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                  amsgrad=h["amsgrad"], foreach=False)
    for g in grads:
        param.grad = torch.tensor(g.copy())
        opt.step()
    state = opt.state[param]
    out = {"param": param.detach().numpy()}
    for key in STATE_KEYS[family]:
        v = state.get(key)
        out[key] = None if v is None else v.detach().numpy()
    return out


@pytest.mark.parametrize("case_id,family,overrides", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype, case_id, family, overrides):
    torch = pytest.importorskip("torch")
    h = hyper(family, overrides)
    p, grads = problem(dtype, 37, seed=1)
    want = torch_steps(torch, family, h, p, grads)
    assert want["param"].dtype == dtype
    got = run_steps(optim, family, h, p, grads, n_decay=p.shape[0])   # torch decays the whole tensor
    assert_state_close(got, want, family, dtype)


@pytest.mark.parametrize("size", [1, 15, 1037, BIG])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernel_is_bitwise_its_formula_in_ieee_operations(dtype, amsgrad, size):
    """csrc/fnn_update.h runs the clone of the Adam loop for this CPU's widest vectors (csrc/fnn_dispatch.h): it
    must give, bit for bit, the formula's IEEE operations in the kernel's order, done one at a time by numpy in
    the same dtype (vector width, tails and remainders must not change a value)."""
    rng = np.random.default_rng(size)
    T = dtype
    p = rng.normal(size=size).astype(T)
    m, v = rng.normal(size=size).astype(T), rng.random(size).astype(T)
    vmax = rng.random(size).astype(T) if amsgrad else None
    g = (rng.normal(size=size) * 10.0 ** rng.integers(-4, 3, size=size)).astype(T)
    lr, b1, b2, eps, wd, step, nd = 1e-3, 0.9, 0.999, 1e-8, 0.01, 7, size // 2
    want = [a.copy() for a in (p, m, v)] + [vmax.copy() if amsgrad else None]
    optim.adam_step(p, g, m, v, vmax, lr, b1, b2, eps, wd, False, step, nd)
    ss, bc2 = T(lr / (1.0 - b1 ** step)), T((1.0 - b2 ** step) ** 0.5)
    b1, b2, eps = T(b1), T(b2), T(eps)
    wdv = np.where(np.arange(size) < nd, T(wd), T(0)).astype(T)
    P, M, V, VM = want
    gi = g + wdv * P                      # decay factor 1 (Adam): p * 1 == p
    M[:] = M + (T(1) - b1) * (gi - M)
    V[:] = V * b2 + (T(1) - b2) * gi * gi
    den_v = V
    if amsgrad:
        VM[:] = np.where(V > VM, V, VM)
        den_v = VM
    P[:] = P - ss * M / (np.sqrt(den_v) / bc2 + eps)
    for got, w in zip((p, m, v, vmax), want):
        if w is not None:
            np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("size", [1, 15, 1037, BIG])
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov", "first"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_kernel_is_bitwise_its_formula_in_ieee_operations(dtype, variant, size):
    """As for Adam: the dispatched SGD loop (csrc/fnn_update.h) is, bit for bit, its formula's operations in
    order, done by numpy (the momentum term (1 - dampening) g' in double, then rounded to the dtype)."""
    rng = np.random.default_rng(size)
    T = dtype
    p = rng.normal(size=size).astype(T)
    g = (rng.normal(size=size) * 10.0 ** rng.integers(-4, 3, size=size)).astype(T)
    buf = None if variant == "plain" else rng.normal(size=size).astype(T)
    lr, mom, damp, wd, nd = 0.05, 0.9, 0.0 if variant == "nesterov" else 0.3, 1e-3, size // 2
    nest, first = variant == "nesterov", variant == "first"
    P, B = p.copy(), None if buf is None else buf.copy()
    optim.sgd_step(p, g, buf, lr, mom if buf is not None else 0.0, damp, wd, nest, first, nd)
    wdv = np.where(np.arange(size) < nd, T(wd), T(0)).astype(T)
    gi = g + wdv * P
    d = gi
    if B is not None:
        if first:
            B[:] = gi
        else:
            B[:] = (T(mom) * B).astype(np.float64) + (1.0 - float(T(damp))) * gi.astype(np.float64)
        d = gi + T(mom) * B if nest else B
    P[:] = P - T(lr) * d
    np.testing.assert_array_equal(p, P)
    if B is not None:
        np.testing.assert_array_equal(buf, B)
