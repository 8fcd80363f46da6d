"""The graph engine with multi-input layers: fan-out gradients, Add / Concatenate, errors, training mode."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Add, Concatenate, Dense, Layer, Tanh

try:
    from tests._netcheck import check_model_grads
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _netcheck import check_model_grads


def _data(n=6, d=5, seed=1):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_add_concatenate_fanout_gradients():
    x = fnn.Input(5)
    h = Dense(4, activation="tanh")(x)                 # h feeds three layers: fan-out
    a = Dense(4, activation="sigmoid")(h)
    b = Dense(4)(h)
    s = Add()([a, b, h])
    c = Concatenate()([h, s])                          # (4 + 4)
    out = Dense(3, activation="tanh")(c)
    model = fnn.Model(x, out, seed=0, dtype="float64")
    check_model_grads(model, _data())


def test_add_same_tensor_twice_doubles_the_gradient():
    x = fnn.Input(3)
    h = Dense(3)(x)
    model = fnn.Model(x, Add()([h, h]), seed=0, dtype="float64")
    X = _data(d=3)
    check_model_grads(model, X)
    np.testing.assert_allclose(model.predict(X), 2 * (X @ model.layers[0].weight + model.layers[0].bias))


def test_concatenate_values_and_gradient_split():
    x = fnn.Input(4)
    a = Dense(2)(x)
    b = Dense(3, activation="tanh")(x)
    model = fnn.Model(x, Concatenate()([a, b]), seed=0, dtype="float64")
    X = _data(d=4)
    out = model.predict(X)
    d1, d2 = model.layers[0], model.layers[1]
    np.testing.assert_allclose(out[:, :2], X @ d1.weight + d1.bias)
    np.testing.assert_allclose(out[:, 2:], np.tanh(X @ d2.weight + d2.bias))
    check_model_grads(model, X)


def test_sequential_is_the_chain_graph():
    def layers():
        return [Dense(8, activation="relu"), Dense(3)]

    seq = fnn.Sequential(layers(), input_dim=5, seed=3)
    x = fnn.Input(5)
    l1, l2 = layers()
    graph = fnn.Model(x, l2(l1(x)), seed=3)
    np.testing.assert_array_equal(seq.parameters, graph.parameters)
    X = _data(d=5).astype(np.float32)
    np.testing.assert_array_equal(seq.predict(X), graph.predict(X))


def test_shape_mismatch_at_add_and_concatenate_names_layer_and_shapes():
    x = fnn.Input(5)
    a, b = Dense(4)(x), Dense(3)(x)
    add = Add(name="join")
    with pytest.raises(ValueError, match=r"join.*\(4,\).*\(3,\)"):
        add([a, b])
    y = fnn.Input((2, 3))
    with pytest.raises(ValueError, match=r"concat.*\(2, 3\).*\(4,\)"):
        Concatenate(name="concat")([y, a])
    with pytest.raises(ValueError, match="at least 2"):
        Add()([a])
    with pytest.raises(TypeError, match="list of tensors"):
        Add()(a)


def test_layer_reused_is_an_error():
    x = fnn.Input(5)
    d = Dense(5)
    h = d(x)
    with pytest.raises(ValueError, match="already used"):
        d(h)            # reusing a layer is the only way to close a cycle: refused at the call


def test_cycle_is_detected_if_tensors_are_tampered_with():
    x = fnn.Input(3)
    h1 = Dense(3)(x)
    h2 = Dense(3)(h1)
    h1.inputs = (h2,)   # impossible through the API; the model still refuses it
    with pytest.raises(ValueError, match="cycle"):
        fnn.Model(x, h2)


def test_disconnected_output_and_other_input():
    x, z = fnn.Input(3), fnn.Input(3)
    out = Dense(2)(z)
    with pytest.raises(ValueError, match="does not depend on the model's input"):
        fnn.Model(x, out)
    h = Add()([Dense(3)(x), Dense(3)(z)])
    with pytest.raises(ValueError, match="another Input"):
        fnn.Model(x, h)


class _Probe(Layer):
    """Identity that records the `training` flag of every forward call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, X, training=False):
        self.seen.append(bool(training))
        return X

    def backward(self, dY):
        return dY


def test_train_eval_modes_and_restoring():
    probe = _Probe()
    model = fnn.Sequential([Dense(4), probe, Tanh(), Dense(2)], input_dim=3, seed=0)
    model.compile("mse", fnn.optim.SGD(lr=0.01))
    assert model.training is False
    assert model.train() is model and model.training is True
    X, y = _data(8, 3).astype(np.float32), np.zeros((8, 2), np.float32)
    probe.seen.clear()
    model.predict(X)
    model.evaluate(X, y)
    assert probe.seen == [False, False] and model.training is True   # restored to training
    model.eval()
    probe.seen.clear()
    model.fit(X, y, epochs=2, batch_size=4)
    model.train_on_batch(X, y)
    assert probe.seen == [True] * 5 and model.training is False      # restored to inference
    # a forward without an explicit flag follows the mode
    probe.seen.clear()
    model.engine.forward(X, model.training)
    model.train().engine.forward(X, True)
    assert probe.seen == [False, True]
    with pytest.raises(TypeError):
        model.train("yes")


def test_merge_layers_are_registered_with_configs():
    for cls in (Add, Concatenate):
        assert fnn.layers.REGISTRY[cls.__name__] is cls and cls.__name__ in fnn.layers.__all__
        layer = cls(name="m")
        again = cls.from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
