"""Residual connections and stochastic depth: gradients, expectation, graph expansion, Sequential, configs."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm, Dense, Residual, linear_decay, residual_stack

try:
    from tests._netcheck import check_model_grads
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _netcheck import check_model_grads


class _Draws:
    """Stands in for the model's generator: random() returns the given values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def _model(p=1.0, dtype="float64"):
    x = fnn.Input(5)
    h = Dense(4, activation="tanh")(x)
    res = Residual([Dense(6, activation="tanh"), Dense(4)], survival_prob=p)
    out = Dense(3)(res(h))
    return fnn.Model(x, out, seed=0, dtype=dtype), res


def test_residual_gradients_and_value():
    model, res = _model()
    X = np.random.default_rng(0).standard_normal((6, 5))
    check_model_grads(model, X)
    d0, b1, b2, _, _ = model.layers
    h = np.tanh(X @ d0.weight + d0.bias)
    want = h + np.tanh(h @ b1.weight + b1.bias) @ b2.weight + b2.bias
    model.engine.forward(X, False)
    np.testing.assert_allclose(model.engine.values[3], want, rtol=1e-12)


def test_stochastic_depth_gradients_kept_dropped_and_inference():
    X = np.random.default_rng(0).standard_normal((6, 5))
    model, res = _model(p=0.6)
    check_model_grads(model, X, training=False)                 # inference: x + p * block(x)
    for draw, kept in ((0.3, True), (0.9, False)):
        res.attach_rng(_Draws(*([draw] * 1000)))
        check_model_grads(model, X)
        assert res.kept is kept
        block = np.concatenate([v.ravel() for l in res.block for v in l.grads.values()])
        assert np.any(block != 0) if kept else np.all(block == 0)


def test_stochastic_depth_expectation_equals_inference():
    model, res = _model(p=0.7)
    X = np.random.default_rng(1).standard_normal((8, 5))
    model.engine.forward(X, False)
    infer = model.engine.values[3].copy()
    model.engine.forward(X, True)
    x = model.engine.values[0].copy()
    M, acc, kept = 2000, 0.0, 0
    for _ in range(M):
        model.engine.forward(X, True)
        y = model.engine.values[3]
        if res.kept:
            kept += 1
        else:
            np.testing.assert_array_equal(y, x)                 # the whole block dropped
        acc = acc + y
    p_hat = kept / M
    assert abs(p_hat - 0.7) < 5 * np.sqrt(0.7 * 0.3 / M)
    h = (infer - x) / 0.7                                      # block(x)
    np.testing.assert_allclose(acc / M, infer, atol=5 * np.sqrt(0.21 / M) * np.abs(h).max())


def test_in_sequential_and_functional_give_the_same_network():
    def parts():
        return [Dense(4), Residual([Dense(4, activation="relu"), BatchNorm()]), Dense(2)]
    seq = fnn.Sequential(parts(), input_dim=3, seed=2)
    assert [type(l).__name__ for l in seq.layers] == ["Dense", "Residual", "Dense"]
    x = fnn.Input(3)
    a, r, b = parts()
    graph = fnn.Model(x, b(r(a(x))), seed=2)
    np.testing.assert_array_equal(seq.parameters, graph.parameters)
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(seq.predict(X), graph.predict(X))
    assert len(seq.graph.nodes) == 5                                  # the block's layers are graph nodes


def test_errors():
    x = fnn.Input(5)
    with pytest.raises(ValueError, match=r"res.*\(5,\).*\(3,\)"):
        Residual(Dense(3), name="res")(x)
    d = Dense(5)
    r = Residual(d)
    r(x)
    with pytest.raises(ValueError, match="already used"):
        r(x)
    with pytest.raises(ValueError, match="already used"):
        Residual(d)
    with pytest.raises(ValueError, match="survival_prob"):
        Residual(Dense(5), survival_prob=0)
    with pytest.raises(TypeError):
        Residual("dense")
    with pytest.raises(ValueError, match="twice"):
        e = Dense(5)
        Residual([e, e])
    # a failed build releases the block's layers, so a corrected model can use them
    blk = Dense(3)
    res = Residual(blk)
    seq = fnn.Sequential([res])
    with pytest.raises(ValueError):
        seq._build_from_data((5,))
    assert not blk._in_graph and not res._in_graph


def test_linear_decay_and_config_roundtrip():
    np.testing.assert_allclose(linear_decay(4, 0.5), [0.875, 0.75, 0.625, 0.5])
    stack = residual_stack([[Dense(8, activation="relu"), Dense(8)] for _ in range(3)], final_survival_prob=0.4)
    assert [r.survival_prob for r in stack] == pytest.approx([0.8, 0.6, 0.4])
    model = fnn.Sequential([Dense(8)] + stack + [Dense(2)], input_dim=4, seed=0)
    assert len(model.graph.nodes) == 2 + 3 * 3
    cfg = stack[0].get_config()
    import json
    again = Residual.from_config(json.loads(json.dumps(cfg)))
    assert again.get_config()["block"] == cfg["block"] and again.survival_prob == 0.8
    assert fnn.layers.REGISTRY["Residual"] is Residual
