"""The NaN/inf guard: the compiled one-pass kernel, and fit/train_on_batch stopping with finite weights."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import guard
from fastnn.model import NonFiniteError


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 2048, 2049, 10000])
def test_first_nonfinite_matches_numpy(dtype, n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(dtype)
    assert guard.first_nonfinite(x) == -1
    for bad in (np.nan, np.inf, -np.inf):
        for _ in range(3):
            if n == 0:
                continue
            y = x.copy()
            pos = np.sort(rng.choice(n, size=min(n, 3), replace=False))
            y[pos] = bad
            assert guard.first_nonfinite(y) == int(np.flatnonzero(~np.isfinite(y))[0])
    # the largest finite values are finite
    big = np.full(max(n, 1), np.finfo(dtype).max, dtype=dtype)
    big[::2] *= -1
    assert guard.first_nonfinite(big) == -1


def test_first_nonfinite_read_only_input():
    x = np.ones(100, np.float32)
    x.setflags(write=False)
    assert guard.first_nonfinite(x) == -1


def _model(lr, loss="cross_entropy", out=10, guard_on=True):
    m = fnn.Sequential([fnn.layers.Dense(32, activation="relu"), fnn.layers.Dense(out)], input_dim=64, seed=0)
    m.compile(loss, fnn.optim.SGD(lr=lr), nan_guard=guard_on)
    return m


def test_exploding_learning_rate_ends_fit_with_nan_error_and_finite_weights():
    X, y = fnn.datasets.load_digits()
    m = _model(1e20)
    with pytest.raises(NonFiniteError, match=r"at epoch 1, batch \d+") as ei:
        m.fit(X[:512], y[:512], epochs=5, batch_size=64)
    assert isinstance(ei.value, FloatingPointError)
    assert ei.value.epoch == 1 and ei.value.batch >= 2
    assert np.isfinite(m.parameters).all()
    assert ei.value.what in ("loss", "gradient", "parameters")


def test_nonfinite_gradient_stops_before_the_update():
    # a huge target makes the squared error overflow float32 in the gradient but not the weights
    m = _model(0.0, loss="l2", out=1)
    X = np.ones((4, 64), np.float32)
    before = m.parameters.copy()
    state_before = m.optimizer.step_count
    y = np.full((4, 1), 3e38, np.float32)
    with pytest.raises(NonFiniteError) as ei:
        m.train_on_batch(X, y)
    assert ei.value.what in ("loss", "gradient")
    np.testing.assert_array_equal(m.parameters, before)
    assert m.optimizer.step_count == state_before


def test_overflow_in_the_update_is_rolled_back():
    m = _model(1e39)
    X, y = fnn.datasets.load_digits()
    before = m.parameters.copy()
    with pytest.raises(NonFiniteError, match="the update made") as ei:
        m.train_on_batch(X[:32], y[:32])
    assert ei.value.what == "parameters" and ei.value.index is not None
    np.testing.assert_array_equal(m.parameters, before)


def test_guard_can_be_turned_off():
    X, y = fnn.datasets.load_digits()
    m = _model(1e39)
    m.fit(X[:64], y[:64], epochs=1, batch_size=32, nan_guard=False)
    assert not np.isfinite(m.parameters).all()
    assert m.nan_guard is True                         # the fit override does not stick
    m2 = _model(1e39, guard_on=False)
    cb = fnn.callbacks.TerminateOnNaN()
    m2.fit(X[:256], y[:256], epochs=3, batch_size=32, callbacks=[cb])
    assert cb.terminated_at is not None and m2.epochs_trained == cb.terminated_at[0] + 1


# ---------------------------------------------------------------- layer buffers (BatchNorm's running statistics)
def _bn_model(lr=0.01, optimizer=None, seed=0):
    m = fnn.Sequential([fnn.layers.Dense(8), fnn.layers.BatchNorm(), fnn.layers.Dense(1)], input_dim=4, seed=seed)
    m.compile("mse", optimizer or fnn.optim.SGD(lr=lr))
    return m


def _bn_data(n=16):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 1)).astype(np.float32)


def _snapshot(m):
    bufs = {(i, k): v.copy() for i, layer in enumerate(m.layers) for k, v in layer.buffers.items()}
    state = {k: v.copy() for k, v in m.optimizer.state.items()}
    return m.parameters.copy(), bufs, state, m.optimizer.step_count


def _assert_same(m, snap):
    params, bufs, state, steps = snap
    np.testing.assert_array_equal(m.parameters, params)
    assert len(bufs) == sum(len(layer.buffers) for layer in m.layers)
    for i, layer in enumerate(m.layers):
        for k, v in layer.buffers.items():
            np.testing.assert_array_equal(v, bufs[(i, k)])
    for k, v in m.optimizer.state.items():
        np.testing.assert_array_equal(v, state[k])
    assert m.optimizer.step_count == steps


def test_huge_finite_sample_overflowing_the_running_variance_raises_and_restores_everything():
    X, y = _bn_data()
    m = _bn_model(optimizer=fnn.optim.Adam(lr=0.01))
    m.fit(X, y, epochs=1, batch_size=8)
    snap = _snapshot(m)
    pred = m.predict(X)
    Xbad = X[:8].copy()
    Xbad[3] = 1e30          # finite in float32, but its variance over the batch is not
    with pytest.raises(NonFiniteError, match=r"batchnorm_\d+\.running_var\[\d+\] inf") as ei:
        m.train_on_batch(Xbad, y[:8])
    assert ei.value.what == "buffer"
    _assert_same(m, snap)
    np.testing.assert_array_equal(m.predict(X), pred)


@pytest.mark.parametrize("what", ["loss", "parameters"])
def test_nonfinite_step_restores_the_running_statistics(what):
    X, y = _bn_data()
    m = _bn_model()
    m.fit(X, y, epochs=1, batch_size=8)
    snap = _snapshot(m)
    if what == "parameters":
        m.optimizer.lr = 1e39          # finite gradients, an update that overflows
    else:
        m.parameters[m.table.offset(m.layers[2], "weight")] = 3e38     # a finite weight, an infinite loss
        snap = _snapshot(m)
    with pytest.raises(NonFiniteError) as ei:
        m.train_on_batch(X[:8], y[:8])
    assert ei.value.what == what
    _assert_same(m, snap)


def test_fit_stopped_by_a_bad_batch_keeps_the_statistics_of_the_batches_before():
    X, y = _bn_data(24)
    Xbad = X.copy()
    Xbad[20] = 1e30          # in the third batch of 8
    ref = _bn_model()
    ref.fit(X[:16], y[:16], epochs=1, batch_size=8, shuffle=False)
    m = _bn_model()
    with pytest.raises(NonFiniteError) as ei:
        m.fit(Xbad, y, epochs=1, batch_size=8, shuffle=False)
    assert (ei.value.what, ei.value.epoch, ei.value.batch) == ("buffer", 1, 3)
    _assert_same(m, _snapshot(ref))


def test_buffer_backups_are_reused_and_only_for_layers_with_buffers():
    X, y = _bn_data()
    m = _bn_model()
    m.train_on_batch(X[:8], y[:8])
    backups = m.trainer.buffer_backup
    assert [(layer.name, k) for layer, k, *_ in backups] == [(m.layers[1].name, "running_mean"),
                                                             (m.layers[1].name, "running_var")]
    m.fit(X, y, epochs=2, batch_size=8)
    assert all(a[4] is b[4] for a, b in zip(backups, m.trainer.buffer_backup))
    plain = _model(0.01)
    plain.train_on_batch(np.ones((2, 64), np.float32), np.array([0, 1]))
    assert plain.trainer.buffer_backup == []


def test_buffers_are_not_guarded_with_the_guard_off():
    X, y = _bn_data()
    m = _bn_model()
    m.compile("mse", fnn.optim.SGD(lr=0.01), nan_guard=False)
    Xbad = X[:8].copy()
    Xbad[3] = 1e30
    m.train_on_batch(Xbad, y[:8])
    assert not np.isfinite(m.layers[1].running_var).all()
    assert m.trainer.buffer_backup is None


def test_guarded_step_of_a_batchnorm_model_allocates_nothing():
    import tracemalloc
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 7)).astype(np.float32), rng.integers(0, 10, 64)
    m = fnn.Sequential([fnn.layers.Dense(256), fnn.layers.BatchNorm(), fnn.layers.ReLU(), fnn.layers.Dense(10)],
                       input_dim=7, seed=0)
    m.compile("cross_entropy", "adam")
    T = m.loss.prepare_targets(y, 64, m.output_shape, m.dtype)
    for _ in range(2):
        m.trainer.step(X, T, (0, 0))          # warm-up: batch buffers, the buffers' backups
    tracemalloc.start()
    try:
        m.trainer.step(X, T, (0, 0))
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(30):
            m.trainer.step(X, T, (0, 0))
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cur - base <= 256, cur - base
    assert peak - base <= 16384, peak - base        # no array-sized temporary (one 64 x 256 float32 is 64 kB)


# ---------------------------------------------------------------- Ctrl-C on the per-layer path (issue 13, 5)
def _bn_chain():
    L = fnn.layers
    m = fnn.Sequential([L.Dense(12), L.BatchNorm(), L.ReLU(), L.Dense(3)], input_dim=5, seed=0, dtype="float64")
    return m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))


@pytest.mark.parametrize("where", ["after the update", "in the forward pass"])
def test_ctrl_c_in_a_per_layer_step_leaves_the_batches_before_it(where, restore_threads):
    """A KeyboardInterrupt raised inside a guarded step (here injected at the 3rd batch: right after the
    optimizer's update, or in the last layer's forward after BatchNorm updated its running statistics) leaves
    parameters, optimizer state, step count and running statistics as after exactly 2 batches."""
    fnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((80, 5)), rng.integers(0, 3, 80)
    m = _bn_chain()
    m.trainer.compiled_plan = False     # the per-layer step (the compiled plan stops between chunks only)
    calls = []
    if where == "after the update":
        opt, real = m.optimizer, m.optimizer.step

        def step():
            real()
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        opt.step = step
    else:
        layer = m.layers[-1]
        real = layer.forward

        def forward(x, training=False, logits=False):
            out = real(x, training, logits)
            if training:
                calls.append(1)
                if len(calls) == 3:
                    raise KeyboardInterrupt
            return out
        layer.__dict__["forward"] = forward
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    assert m.optimizer.step_count == 2 and m.epochs_trained == 0
    ref = _bn_chain()
    ref.fit(X[:32], y[:32], epochs=1, batch_size=16, shuffle=False)
    np.testing.assert_array_equal(m.parameters, ref.parameters)
    for k, v in ref.optimizer.state.items():
        np.testing.assert_array_equal(m.optimizer.state[k], v)
    for name, buf in ref.layers[1].buffers.items():
        np.testing.assert_array_equal(m.layers[1].buffers[name], buf)
