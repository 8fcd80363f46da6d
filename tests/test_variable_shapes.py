"""Input shapes with a variable (None) axis, and Sequential(input_shape=...)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm, Concatenate, LayerNorm, ReLU, Sigmoid, Tanh


def _branches(dtype="float64"):
    x = fnn.Input((None, 8))
    out = Concatenate()([Tanh()(x), Sigmoid()(x)])
    return fnn.Model(x, out, dtype=dtype)


def _want(X):
    return np.concatenate([np.tanh(X), 1.0 / (1.0 + np.exp(-X))], axis=-1)


def test_input_accepts_none_on_an_axis():
    assert fnn.Input((None, 8)).shape == (None, 8)
    assert fnn.Input([None]).shape == (None,)
    assert fnn.Input(np.int64(3)).shape == (3,)
    with pytest.raises(ValueError, match="positive int or None"):
        fnn.Input((0, 8))
    with pytest.raises(ValueError, match="positive int or None"):
        fnn.Input((None, 2.5))
    with pytest.raises(TypeError, match="Input: shape"):
        fnn.Input("8")


def test_a_variable_time_axis_any_length():
    model = _branches()
    assert model.input_shape == (None, 8) and model.output_shape == (None, 16)
    rng = np.random.default_rng(0)
    for T in (5, 7, 5, 1, 3):               # lengths change between calls: no stale buffer is reused
        X = rng.standard_normal((3, T, 8))
        Y = model.predict(X)
        assert Y.shape == (3, T, 16)
        np.testing.assert_allclose(Y, _want(X), rtol=1e-12, atol=1e-15)
    X = rng.standard_normal((5, 4, 8))
    np.testing.assert_allclose(model.predict(X, batch_size=2), _want(X), rtol=1e-12, atol=1e-15)


def test_the_input_check_fixes_the_other_axes():
    model = _branches()
    with pytest.raises(ValueError, match=r"X must have shape \(n, None, 8\)"):
        model.predict(np.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match=r"X must have shape \(n, None, 8\)"):
        model.predict(np.zeros((2, 8)))


def test_training_and_evaluation_with_a_variable_axis():
    model = _branches().compile("mse", "sgd")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 6, 8))
    T = rng.standard_normal((4, 6, 16))
    assert model.evaluate(X, np.zeros((4, 6, 16)))["loss"] == pytest.approx(np.mean(_want(X) ** 2), rel=1e-12)
    assert model.train_on_batch(X, T) == pytest.approx(np.mean((_want(X) - T) ** 2), rel=1e-12)
    X2, T2 = rng.standard_normal((4, 3, 8)), rng.standard_normal((4, 3, 16))
    assert model.train_on_batch(X2, T2) == pytest.approx(np.mean((_want(X2) - T2) ** 2), rel=1e-12)
    hist = model.fit(X, T, epochs=2, batch_size=2, shuffle=False)
    assert hist.history["loss"][0] == pytest.approx(np.mean((_want(X) - T) ** 2), rel=1e-12)
    with pytest.raises(ValueError, match="targets"):
        model.evaluate(X, np.zeros((4, 6, 15)))


def test_compiled_plans_do_not_apply_to_a_variable_input():
    model = fnn.Sequential([ReLU()], input_shape=(None,)).compile("mse", "sgd")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 5))
    model.fit(X, X, epochs=1, batch_size=4)
    assert model.trainer.train_plan is None
    X3 = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(model.predict(X3), np.maximum(X3, 0).astype(np.float32))
    assert model.trainer.infer_plans is None


def test_parameters_on_a_variable_axis_raise_a_clear_error():
    bn = BatchNorm()
    with pytest.raises(ValueError, match=r"batchnorm\w*: parameter 'weight' would have shape \(None,\).*None"):
        fnn.Sequential([bn], input_shape=(None,))
    assert not bn._in_graph                             # the failed build released the layer
    fnn.Sequential([bn], input_dim=4)
    x = fnn.Input((8, None))
    with pytest.raises(ValueError, match="cannot carry parameters"):
        fnn.Model(x, LayerNorm()(x))        # LayerNorm's parameters are on the last axis, here the variable one


def test_last_axis_layers_on_a_variable_time_axis():
    # Dense, BatchNorm and LayerNorm use the last axis only: a variable time axis before it is fine
    x = fnn.Input((None, 8))
    h = fnn.layers.Dense(6, activation="tanh")(x)
    h = LayerNorm()(BatchNorm()(h))
    model = fnn.Model(x, fnn.layers.Dense(3)(h), seed=0, dtype="float64").compile("mse", "sgd")
    rng = np.random.default_rng(0)
    for T in (5, 2, 5, 7):
        X = rng.standard_normal((4, T, 8))
        model.train_on_batch(X, rng.standard_normal((4, T, 3)))
        out = model.predict(X)
        assert out.shape == (4, T, 3)
        # per-step: the model applied to one step alone gives that step's output (inference mode)
        np.testing.assert_allclose(model.predict(X[:, 1:2]), out[:, 1:2], rtol=1e-12, atol=1e-12)


def test_save_and_load_a_variable_input(tmp_path):
    model = _branches().compile("mse", "sgd")
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fnn.load(path)
    assert loaded.input_shape == (None, 8) and loaded.output_shape == (None, 16)
    X = np.random.default_rng(3).standard_normal((2, 9, 8))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_sequential_input_shape():
    rng = np.random.default_rng(4)
    a = fnn.Sequential([fnn.layers.Dense(3)], input_shape=(5,), seed=1)
    b = fnn.Sequential([fnn.layers.Dense(3)], input_dim=5, seed=1)
    assert a.built and a.input_shape == (5,)
    np.testing.assert_array_equal(a.parameters, b.parameters)
    img = fnn.Sequential([ReLU()], input_shape=(4, 3, 2))
    assert img.input_shape == img.output_shape == (4, 3, 2)
    X = rng.standard_normal((2, 4, 3, 2))
    np.testing.assert_array_equal(img.predict(X), np.maximum(X, 0).astype(np.float32))
    with pytest.raises(ValueError, match="input_dim or input_shape, not both"):
        fnn.Sequential([ReLU()], input_dim=3, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        fnn.Sequential([ReLU()], input_shape=(3, 0))
    with pytest.raises(TypeError, match="input_shape"):
        fnn.Sequential([ReLU()], input_shape="3")
    assert not fnn.Sequential([ReLU()]).built


def test_diagnostics_refuse_a_variable_axis_clearly():
    model = fnn.Sequential([ReLU()], input_shape=(None, 3)).compile("mse", "sgd")
    X = np.ones((2, 4, 3))
    with pytest.raises(ValueError, match="fixed shapes.*variable axis"):
        model.diagnose(X, X, verbose=False)
