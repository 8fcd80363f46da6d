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
