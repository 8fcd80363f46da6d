"""Dropout: gradient with a fixed mask, expectation equals inference, drop rate, determinism, modes, errors."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, Dropout

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
    from tests._netcheck import check_model_grads, standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad
    from _netcheck import check_model_grads, standalone


class _FixedSeed:
    """Stands in for the model's generator: every call gets the same seed, hence the same mask."""

    def integers(self, low, high):
        return 123456789


@pytest.mark.parametrize("mode", ["inverted", "weight_scaling"])
def test_gradient_with_fixed_mask(mode):
    layer = standalone(Dropout(0.4, mode=mode), (3, 5))
    layer.attach_rng(_FixedSeed())
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3, 5))
    R = rng.standard_normal(X.shape)

    def f(_):
        return float(np.sum(layer.forward(X, True) * R))

    f(X)
    dX = layer.backward(R).copy()
    assert 0 < layer.mask.sum() < layer.mask.size
    assert_grad_close(dX, numeric_grad(f, X))
    np.testing.assert_array_equal(dX == 0, layer.mask == 0)


def test_gradient_in_a_model_with_fixed_mask():
    x = fnn.Input(6)
    h = Dense(8, activation="tanh")(x)
    drop = Dropout(0.5)
    out = Dense(3)(drop(h))
    model = fnn.Model(x, out, seed=0, dtype="float64")
    drop.attach_rng(_FixedSeed())
    check_model_grads(model, np.random.default_rng(1).standard_normal((5, 6)))


@pytest.mark.parametrize("mode", ["inverted", "weight_scaling"])
@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_mean_over_masks_equals_inference(mode, rate):
    layer = standalone(Dropout(rate, mode=mode), (500,))
    layer.attach_rng(np.random.default_rng(0))
    X = np.random.default_rng(1).uniform(0.5, 2.0, (4, 500))
    M = 400
    acc = np.zeros_like(X)
    for _ in range(M):
        acc += layer.forward(X, True)
    mean = acc / M
    infer = layer.forward(X, False).copy()
    np.testing.assert_array_equal(layer.forward(X, False), infer)       # inference is deterministic
    scale = 1 / (1 - rate) if mode == "inverted" else 1.0
    sd = X * scale * np.sqrt(rate * (1 - rate)) / np.sqrt(M)            # std of the mean of M masks
    assert np.all(np.abs(mean - infer) < 5 * sd)
    z = (mean - infer) / sd                                             # ~ N(0, 1) each
    assert abs(z.mean()) < 5 / np.sqrt(z.size)                          # no bias overall
    if mode == "inverted":
        np.testing.assert_array_equal(infer, X)
    else:
        np.testing.assert_allclose(infer, X * (1 - rate))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_rate_within_statistical_bounds_and_kept_units_scaled(rate):
    layer = standalone(Dropout(rate), (1000,), dtype=np.float32)
    layer.attach_rng(np.random.default_rng(7))
    X = np.ones((1000, 1000), np.float32)
    Y = layer.forward(X, True)
    N = X.size
    dropped = 1 - layer.mask.mean()
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / N)
    np.testing.assert_allclose(Y[layer.mask == 1], np.float32(1 / (1 - rate)), rtol=1e-6)
    assert np.all(Y[layer.mask == 0] == 0)
    # neighbouring elements are not correlated (a broken counter would repeat patterns)
    m = layer.mask.reshape(-1).astype(np.float64)
    corr = np.corrcoef(m[:-1], m[1:])[0, 1]
    assert abs(corr) < 5 / np.sqrt(N)


def test_masks_change_between_calls_and_do_not_depend_on_threads():
    X = np.ones((300, 200))
    masks = []
    for threads in (1, 2):
        fnn.set_num_threads(threads)
        layer = standalone(Dropout(0.5), (200,))
        layer.attach_rng(np.random.default_rng(3))
        layer.forward(X, True)
        first = layer.mask.copy()
        layer.forward(X, True)
        assert not np.array_equal(first, layer.mask)
        masks.append(first)
    fnn.set_num_threads(2)
    np.testing.assert_array_equal(masks[0], masks[1])


def _train(seed):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = fnn.Sequential([Dense(16, activation="relu"), Dropout(0.3), Dense(3)], input_dim=8, seed=seed)
    model.compile("cross_entropy", fnn.optim.SGD(lr=0.1))
    model.fit(X, y, epochs=3, batch_size=16)
    return model.parameters.copy(), model.predict(X)


def test_training_is_reproducible_for_a_seed_and_predict_has_no_dropout():
    p1, out1 = _train(5)
    p2, out2 = _train(5)
    p3, _ = _train(6)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(out1, out2)
    assert not np.array_equal(p1, p3)


def test_rate_zero_is_identity_and_errors():
    layer = standalone(Dropout(0.0), (4,))
    X = np.ones((2, 4))
    assert layer.forward(X, True) is X
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            Dropout(bad)
    with pytest.raises(TypeError, match="rate"):
        Dropout("0.5")
    with pytest.raises(ValueError, match="mode"):
        Dropout(0.5, mode="scaled")
    d = Dropout(0.25, mode="weight_scaling")
    assert fnn.layers.REGISTRY["Dropout"].from_config(d.get_config()).get_config() == d.get_config()
