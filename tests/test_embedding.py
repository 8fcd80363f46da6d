"""Embedding: the compiled gather / scatter-add against torch and finite differences, integer inputs at the model
boundary, id checks, training, save/load."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import embedding as _k
from fastnn.layers import Dense, Embedding
from tests._gradcheck import assert_grad_close, numeric_grad
from tests._netcheck import standalone

L = fnn.layers


def _layer(V=7, D=3, dtype=np.float64, **kw):
    return standalone(Embedding(V, D, **kw), (4,), dtype=dtype)


@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_backward_match_torch_with_repeated_ids(ids_dtype, dtype):
    torch = pytest.importorskip("torch")
    layer = _layer(dtype=dtype)
    X = np.array([[1, 2, 1, 0], [6, 6, 6, 3], [0, 0, 5, 1]], dtype=ids_dtype)
    Y = layer.forward(X)
    R = np.random.default_rng(0).standard_normal(Y.shape).astype(dtype)
    assert layer.backward(R) is None
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    emb = torch.nn.Embedding(7, 3, padding_idx=None).to(tdt)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(layer.params["weight"].copy()))
    out = emb(torch.from_numpy(X.astype(np.int64)))
    out.backward(torch.from_numpy(R))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(Y, out.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["weight"], emb.weight.grad.numpy(), rtol=tol, atol=tol)
    assert not layer.grads["weight"][4].any()           # id 4 unused: a zero row


def test_gradient_matches_finite_differences_and_is_rezeroed():
    layer = _layer()
    X = np.array([[1, 2, 1, 0], [3, 6, 6, 2]])
    R = np.random.default_rng(1).standard_normal((2, 4, 3))
    layer.grads["weight"][...] = 7.0                    # stale values: backward must zero the buffer first
    layer.forward(X)
    layer.backward(R)
    W = layer.params["weight"]
    numeric = numeric_grad(lambda _: float(np.sum(layer.forward(X) * R)), W)
    assert_grad_close(layer.grads["weight"], numeric)


def test_empty_batch_one_row_and_threads():
    layer = _layer()
    assert layer.forward(np.zeros((0, 4), np.int64)).shape == (0, 4, 3)
    layer.backward(np.zeros((0, 4, 3)))
    assert not layer.grads["weight"].any()
    Y = layer.forward(np.array([[5, 5, 0, 1]]))
    np.testing.assert_array_equal(Y[0], layer.params["weight"][[5, 5, 0, 1]])
    rng = np.random.default_rng(2)
    W = rng.standard_normal((50, 64))
    ids = rng.integers(0, 50, 3000).astype(np.int64)
    dY = rng.standard_normal((3000, 64))
    outs = []
    for nt in (1, 2):
        Y, dW = np.empty((3000, 64)), np.empty((50, 64))
        assert _k.embedding_forward(ids, W, Y, nt) == -1
        _k.embedding_backward(ids, dY, dW, nt)
        outs.append((Y, dW))
    np.testing.assert_array_equal(outs[0][0], W[ids])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    ref = np.zeros_like(W)
    np.add.at(ref, ids, dY)
    np.testing.assert_allclose(outs[0][1], ref, rtol=1e-12)


def test_ids_out_of_range_negative_and_non_integer_floats():
    layer = _layer()
    with pytest.raises(ValueError, match=r"embedding_\d+: id 7 at position \(1, 2\) is out of range: ids must be in "
                                         r"\[0, 7\)"):
        layer.forward(np.array([[0, 1, 2, 3], [4, 5, 7, 0]]))
    with pytest.raises(ValueError, match=r"id -1 at position \(0, 0\)"):
        layer.forward(np.array([[-1, 1, 2, 3]], np.int32))
    model = fnn.Sequential([Embedding(5, 2), Dense(1)], input_shape=(3,))
    with pytest.raises(ValueError, match=r"whole numbers, got 1.5 at index \(0, 1\)"):
        model.predict(np.array([[0.0, 1.5, 2.0]]))
    with pytest.raises(TypeError, match="integer ids"):
        model.predict(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match=r"id 9 at position \(0, 2\)"):
        model.predict(np.array([[0, 1, 9]]))


def test_constructor_checks_and_mask_zero_needs_sequences():
    with pytest.raises(ValueError, match="input_dim"):
        Embedding(0, 3)
    with pytest.raises(ValueError, match="counts? it"):
        Embedding(1, 3, mask_zero=True)
    with pytest.raises(TypeError, match="mask_zero"):
        Embedding(4, 3, mask_zero=1)
    with pytest.raises(ValueError, match="mask_zero=True needs sequences"):
        fnn.Sequential([Embedding(4, 3, mask_zero=True)], input_shape=(2, 3))
    e = Embedding(4, 3)
    assert isinstance(e.embeddings_init, fnn.initializers.RandomUniform)


def test_integer_input_kept_and_predict_with_int_and_float_ids():
    model = fnn.Sequential([Embedding(20, 4), Dense(2)], input_shape=(None,), seed=0)
    assert model.graph.integer_input
    X = np.random.default_rng(0).integers(0, 20, (6, 5))
    assert model.trainer.check_X(X, "t").dtype == np.int64
    assert model.trainer.check_X(X.astype(np.int32), "t").dtype == np.int32
    np.testing.assert_array_equal(model.predict(X), model.predict(X.astype(np.float64)))
    assert model.predict(X[:0]).shape == (0, 5, 2)
    lazy = fnn.Sequential([Embedding(20, 4), Dense(2)], seed=0)      # built from its first (integer) data
    assert lazy.predict(X).shape == (6, 5, 2) and lazy.graph.integer_input
    with pytest.raises(ValueError, match="takes integer ids, and"):
        x = fnn.Input(3)
        fnn.Model(x, L.Add()([Dense(2)(Embedding(5, 2)(x)), Dense(2)(fnn.layers.Reshape((3, 1))(x))]))


def test_model_trains_per_step_and_matches_the_weights_torch_would_use():
    rng = np.random.default_rng(0)
    V, T = 12, 6
    X = rng.integers(0, V, (64, T))
    y = (X % 3)                                           # a per-step class from the id
    model = fnn.Sequential([Embedding(V, 8), Dense(16, activation="tanh"), Dense(3)], input_shape=(T,), seed=0)
    model.compile("cross_entropy", fnn.optim.Adam(lr=0.05))
    first = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=30, batch_size=16)
    logs = model.evaluate(X, y)
    assert logs["loss"] < 0.2 * first and logs["accuracy"] > 0.95


def test_save_load_roundtrip(tmp_path):
    model = fnn.Sequential([Embedding(9, 3, mask_zero=True, embeddings_init="xavier_uniform"), Dense(2)],
                           input_shape=(None,), seed=3)
    model.compile("mse", "adam")
    X = np.array([[1, 2, 0], [3, 0, 0]])
    model.fit(X, np.ones((2, 3, 2)), epochs=2)
    path = tmp_path / "e.fnn"
    model.save(path)
    back = fnn.io.load(path)
    e = back.layers[0]
    assert (e.input_dim, e.output_dim, e.mask_zero) == (9, 3, True)
    assert e.embeddings_init.name == "xavier_uniform"
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    assert back.evaluate(X, np.ones((2, 3, 2)))["loss"] == pytest.approx(model.evaluate(X, np.ones((2, 3, 2)))["loss"])
    assert repr(e).startswith("Embedding(9, 3, mask_zero=True")
