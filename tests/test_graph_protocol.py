"""The graph protocol of issue 12: layers with several outputs, inputs decided at call time, masks in the graph.

The layers here are test layers (not in the package): ``Heads`` returns [2 x, x * x] (two outputs),
``Mix`` is called as ``mix(x, initial_state=[s1, ...])`` and returns x * (1 + s1 + ...) (its input count is
decided when it is called, as a recurrent layer with initial states), ``StepMask`` makes a mask (steps whose
first feature is > 0) and ``UseMask`` consumes one (zeroes the masked steps; output mask None).
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.graph import Tensor
from fastnn.layers import REGISTRY, Add, Dense, Layer
from tests._netcheck import check_model_grads


class Heads(Layer):
    n_outputs = 2

    def _build(self, input_shape):
        return [input_shape, input_shape]

    def forward(self, X, training=False):
        self._X = X
        return [2.0 * X, X * X]

    def backward(self, dY):
        assert isinstance(dY, list) and len(dY) == 2
        d = np.zeros_like(self._X)
        if dY[0] is not None:
            d += 2.0 * dY[0]
        if dY[1] is not None:
            d += 2.0 * self._X * dY[1]
        return d if self.need_input_grad else None


class Mix(Layer):
    def __call__(self, x, initial_state=None):
        states = list(initial_state or [])
        if not states:
            return super().__call__(x)
        self.n_inputs = 1 + len(states)
        return Tensor.from_layer(self, [x] + states)

    def _build(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.name}: all inputs must have one shape, got {shapes}")
        return shapes[0]

    def forward(self, X, training=False):
        xs = X if isinstance(X, list) else [X]
        self._xs = xs
        self._f = 1.0 + sum(xs[1:])
        return xs[0] * self._f

    def backward(self, dY):
        if len(self._xs) == 1:
            return dY * self._f
        return [dY * self._f] + [dY * self._xs[0] for _ in self._xs[1:]]


class StepMask(Layer):
    produces_mask = True

    def forward(self, X, training=False):
        return X

    def backward(self, dY):
        return dY

    def compute_mask(self, X):
        return X[..., 0] > 0

    def mask_description(self):
        return "first feature > 0"


class UseMask(Layer):
    mask_support = "use"

    def forward(self, X, training=False, mask=None):
        self._m = None if mask is None else mask[..., None].astype(X.dtype)
        return X if mask is None else X * self._m

    def backward(self, dY):
        return dY if self._m is None else dY * self._m


class UseHeads(Layer):
    """Two outputs, takes a mask: output 0 (x) keeps it, output 1 (x summed over steps) has none."""
    mask_support = "use"
    n_outputs = 2

    def _build(self, input_shape):
        return [input_shape, input_shape[1:]]

    def forward(self, X, training=False, mask=None):
        self._seen = mask
        return [X, X.sum(axis=1)]

    def backward(self, dY):
        d = np.zeros(self.input_shape, dtype=float)[None].repeat(dY[0].shape[0] if dY[0] is not None else
                                                                dY[1].shape[0], axis=0)
        if dY[0] is not None:
            d += dY[0]
        if dY[1] is not None:
            d += dY[1][:, None, :]
        return d

    def output_mask(self, mask):
        return [mask, None]


@pytest.fixture
def registered(monkeypatch):
    for cls in (Heads, Mix, StepMask, UseMask):
        monkeypatch.setitem(REGISTRY, cls.__name__, cls)


def _x(n=5, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_multi_output_values_fanout_and_gradients():
    x = fnn.Input(4)
    h = Dense(3, activation="tanh")(x)
    a, b = Heads()(h)
    assert isinstance(a, Tensor) and (a.index, b.index) == (0, 1) and a.shape == (3,)
    d1, d2, d3 = Dense(2), Dense(2), Dense(2)
    out = Add()([d1(a), d2(b), d3(a)])       # output 0 has two consumers: summed
    model = fnn.Model(x, out, seed=0, dtype="float64")
    assert model.graph.general and model.graph.out_fanout[1] == [2, 1]
    X = _x()
    H = np.tanh(X @ model.layers[0].weight + model.layers[0].bias)
    want = sum(v @ L.weight + L.bias for v, L in ((2 * H, d1), (H * H, d2), (2 * H, d3)))
    np.testing.assert_allclose(model.predict(X), want, rtol=1e-12)
    check_model_grads(model, X)


def test_unconsumed_output_gets_none_and_any_output_is_the_model_output():
    x = fnn.Input(4)
    h = Dense(3)(x)
    a, b = Heads()(h)
    model = fnn.Model(x, b, seed=0, dtype="float64")          # output 1 of the last node; output 0 unused
    assert model.graph.output_index == 1
    X = _x()
    H = X @ model.layers[0].weight + model.layers[0].bias
    np.testing.assert_allclose(model.predict(X), H * H, rtol=1e-12)
    check_model_grads(model, X)
    model.compile("mse", "sgd")
    assert not model.trainer.fused
    model.fit(X, np.zeros((5, 3)), epochs=2, batch_size=2)
    assert model.evaluate(X, np.zeros((5, 3)))["loss"] >= 0


def test_initial_state_inputs_from_other_layers():
    x = fnn.Input(4)
    s1 = Dense(4, activation="tanh")(x)
    s2 = Dense(4)(x)
    mix = Mix()
    y = mix(Dense(4)(x), initial_state=[s1, s2])
    assert mix.n_inputs == 3 and model_inputs(y) == 3
    model = fnn.Model(x, Dense(2)(y), seed=0, dtype="float64")
    check_model_grads(model, _x())


def model_inputs(t):
    return len(t.inputs)


def test_multi_output_and_initial_state_roundtrip_through_save(tmp_path, registered):
    x = fnn.Input(4)
    a, b = Heads()(Dense(4)(x))
    y = Mix()(a, initial_state=[b])
    model = fnn.Model(x, Heads()(y)[0], seed=0, dtype="float64")
    model.compile("mse", "adam")
    X = _x()
    model.fit(X, np.zeros((5, 4)), epochs=1, batch_size=5)
    path = tmp_path / "m.fnn"
    model.save(path)
    back = fnn.io.load(path)
    assert back.graph.picks == model.graph.picks and back.graph.output_index == 0
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_mask_flows_to_use_layer_and_refusal_names_both_layers():
    x = fnn.Input((6, 3))
    t = StepMask()(x)
    assert t.masked and t.mask_from is t.layer
    d = Dense(3)(t)                                  # "pass"
    assert d.masked
    u = UseMask()(d)
    assert not u.masked
    model = fnn.Model(x, Dense(2)(u), seed=0, dtype="float64")
    X = np.random.default_rng(1).standard_normal((4, 6, 3))
    out = model.predict(X)
    m = X[..., 0] > 0
    np.testing.assert_allclose(out[~m], np.broadcast_to(model.layers[-1].bias, out[~m].shape))
    check_model_grads(model, X)
    y = StepMask()(fnn.Input((6, 3)))
    with pytest.raises(ValueError, match=r"flatten_\d+ cannot take the mask made by stepmask_\d+ \(first feature"):
        fnn.layers.Flatten()(y)


def test_plain_graphs_keep_the_plain_path():
    model = fnn.Sequential([Dense(4, activation="relu"), Dense(2)], input_dim=3)
    assert not model.graph.general and not model.graph.has_masks and model.graph.picks == [None, None]
    assert model.engine._general is False


def test_multi_output_use_layer_gets_the_mask_and_gives_one_per_output(capsys):
    x = fnn.Input((5, 2))
    seq, total = UseHeads()(StepMask()(x))
    assert seq.masked and not total.masked
    head = Dense(3)(total)                       # no mask: Dense on (N, 2)
    with pytest.raises(ValueError, match="cannot take the mask"):
        fnn.layers.Flatten()(seq)
    model = fnn.Model(x, seq, seed=0, dtype="float64")
    X = np.random.default_rng(3).standard_normal((4, 5, 2))
    model.engine.forward(X, False)
    layer = model.layers[-1]
    np.testing.assert_array_equal(layer._seen, X[..., 0] > 0)
    np.testing.assert_array_equal(model.engine.output_mask_value(), X[..., 0] > 0)
    assert model.engine.masks[-1][1] is None
    model.summary()
    assert "[(None, 5, 2), (None, 2)]" in capsys.readouterr().out
    other = fnn.Model(x, head, seed=0, dtype="float64")
    other.engine.forward(X, False)
    assert other.engine.output_mask_value() is None
    check_model_grads(other, X)


def test_sampled_softmax_refuses_an_output_fed_by_a_multi_output_layer():
    x = fnn.Input(4)
    a, _ = Heads()(Dense(4)(x))
    model = fnn.Model(x, Dense(6)(a))
    with pytest.raises(ValueError, match="single-output"):
        model.compile(fnn.losses.SampledSoftmax(num_sampled=2), "sgd")
