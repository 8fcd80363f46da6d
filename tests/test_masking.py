"""Masks (issue 12): Masking, the mask of Embedding(mask_zero=True) through "pass" layers to the loss, which leaves
the masked steps out of the mean, the accuracy and the metrics, with sample weights; refusals at build time."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, Embedding, Masking
from fastnn.training import compiled as _compiled
from tests._gradcheck import assert_grad_close, numeric_grad
from tests._netcheck import standalone

L = fnn.layers


def _ids(seed=0, n=5, T=6, V=9):
    rng = np.random.default_rng(seed)
    X = rng.integers(1, V, (n, T))
    lengths = rng.integers(1, T + 1, n)
    lengths[0] = T
    for i, l in enumerate(lengths):
        X[i, l:] = 0                                      # right padding with id 0
    return X


def _softmax_ce(Z, y, w):
    """sum w l / sum w over rows, and d/dZ: the reference for a weighted per-position cross-entropy."""
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    loss = -np.log(P[np.arange(len(y)), y])
    dZ = P.copy()
    dZ[np.arange(len(y)), y] -= 1.0
    return float((w * loss).sum() / w.sum()), dZ * (w / w.sum())[:, None]


def _model(mask_zero=True, seed=0):
    return fnn.Sequential([Embedding(9, 4, mask_zero=mask_zero), Dense(5, activation="tanh"), L.Dropout(0.0),
                           L.LayerNorm(), Dense(3)], input_shape=(None,), seed=seed, dtype="float64")


@pytest.mark.parametrize("weighted", [False, True])
def test_masked_cross_entropy_is_the_loss_on_real_steps_loss_and_gradient(weighted):
    X = _ids()
    y = np.random.default_rng(1).integers(0, 3, X.shape)
    sw = np.array([1.0, 2.0, 0.5, 3.0, 1.5]) if weighted else None
    masked, plain = _model(True), _model(False)
    plain.set_weights(masked.get_weights())
    for m in (masked, plain):
        m.compile("cross_entropy", "sgd")
    assert masked.graph.has_masks and not plain.graph.general
    real = X != 0
    w = (real * (1.0 if sw is None else sw[:, None])).reshape(-1)
    # masked model: the executor's loss on the masked output
    out = masked.engine.forward(X, True)
    np.testing.assert_array_equal(masked.engine.output_mask_value(), real)
    loss, correct, grad = masked.engine.loss_and_grad(masked.loss, out, y, sw)
    masked.engine.backward(grad)
    # reference: the plain model's logits, numpy cross-entropy weighted by sample weight x mask
    Z = plain.engine.forward(X, True)
    want, dZ = _softmax_ce(Z.reshape(-1, 3), y.reshape(-1), w)
    assert loss == pytest.approx(want, rel=1e-12)
    assert masked.engine.loss_value(masked.loss, out, y, sw) == (loss, correct)
    assert correct == int(((Z.reshape(-1, 3).argmax(1) == y.reshape(-1)) & real.reshape(-1)).sum())
    np.testing.assert_allclose(grad.reshape(-1, 3), dZ, rtol=1e-10, atol=1e-14)
    assert not grad[~real].any()                          # masked steps: gradient exactly 0
    plain.engine.backward(dZ.reshape(Z.shape))
    np.testing.assert_allclose(masked.gradients, plain.gradients, rtol=1e-10, atol=1e-14)
    # and the whole masked model against finite differences of its own loss
    def f(_):
        o = masked.engine.forward(X, True)
        return masked.loss.masked(o, y, masked.engine.output_mask_value(), None, sw)[0]
    masked.engine.forward(X, True)
    _, _, g = masked.engine.loss_and_grad(masked.loss, masked.engine.forward(X, True), y, sw)
    masked.engine.backward(g)
    assert_grad_close(masked.gradients.copy(), numeric_grad(f, masked.parameters), rtol=1e-6)


def test_fit_and_evaluate_count_only_real_steps_and_skip_the_compiled_plan():
    X = _ids(2, n=8)
    y = np.random.default_rng(3).integers(0, 3, X.shape)
    m = _model()
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.0))     # lr 0: fit's logs are the evaluation of fixed weights
    sw = np.linspace(0.5, 2.0, 8)
    h = m.fit(X, y, epochs=1, batch_size=3, shuffle=False, sample_weight=sw, metrics=["top_k_accuracy"])
    e = m.evaluate(X, y, sample_weight=sw, batch_size=3, metrics=["top_k_accuracy"])
    Z = m.predict(X)
    real = X != 0
    want, _ = _softmax_ce(Z.reshape(-1, 3), y.reshape(-1), (real * sw[:, None]).reshape(-1))
    acc = ((Z.argmax(-1) == y) & real).sum() / real.sum()
    for logs in (e, {k: v[0] for k, v in h.history.items()}):
        assert logs["loss"] == pytest.approx(want, rel=1e-10)
        assert logs["accuracy"] == pytest.approx(acc)
        assert logs["top_k_accuracy"] == 1.0              # 3 classes: top 5 always hits, on real steps
    reg = fnn.Sequential([Masking(), Dense(2)], input_shape=(4, 3), dtype="float64")
    reg.compile("mse", "sgd")
    Xf = np.ones((6, 4, 3))
    train = (Xf, reg.loss.prepare_targets(np.zeros((6, 4, 2)), 6, (4, 2), np.float64), None)
    assert _compiled.plan_for(reg, train, 2, [], fnn.callbacks.CallbackList([], reg)) is None


def test_masked_mse_and_mae_metric_average_over_real_steps_and_all_masked_batch():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((4, 5, 3))
    X[1, 3:] = 0.0
    X[2, 1:] = 0.0
    Y = rng.standard_normal((4, 5, 2))
    m = fnn.Sequential([Masking(0.0), Dense(2)], input_shape=(5, 3), dtype="float64", seed=0)
    m.compile("mse", "sgd")
    real = np.any(X != 0, axis=-1)
    P = m.predict(X)
    np.testing.assert_array_equal(P[~real], np.broadcast_to(m.layers[-1].bias, P[~real].shape))
    logs = m.evaluate(X, Y, metrics=["mae"])
    assert logs["loss"] == pytest.approx(np.mean((P - Y)[real] ** 2), rel=1e-12)
    assert logs["mae"] == pytest.approx(np.mean(np.abs(P - Y)[real]), rel=1e-12)
    Xz = np.zeros((2, 5, 3))
    out = m.engine.forward(Xz, True)
    loss, _, grad = m.engine.loss_and_grad(m.loss, out, m.loss.prepare_targets(Y[:2], 2, (5, 2), np.float64))
    assert loss == 0.0 and not grad.any()


def test_masking_layer_forward_backward_and_mask():
    layer = standalone(Masking(mask_value=-1.0), (3, 2))
    X = np.array([[[1.0, -1.0], [-1.0, -1.0], [0.0, 2.0]], [[-1.0, -1.0], [3.0, 4.0], [-1.0, -1.0]]])
    Y = layer.forward(X)
    M = layer.compute_mask(X)
    np.testing.assert_array_equal(M, [[True, False, True], [False, True, False]])
    np.testing.assert_array_equal(Y, X * M[..., None])
    dY = np.arange(12.0).reshape(2, 3, 2) + 1
    np.testing.assert_array_equal(layer.backward(dY), dY * M[..., None])
    with pytest.raises(ValueError, match="Masking takes sequences"):
        fnn.Sequential([Masking()], input_dim=4)


def test_refusals_name_the_layer_and_the_mask_producer():
    with pytest.raises(ValueError, match=r"flatten_\d+ cannot take the mask made by embedding_\d+ \(mask_zero=True\)"):
        fnn.Sequential([Embedding(5, 2, mask_zero=True), L.Flatten()], input_shape=(4,))
    with pytest.raises(ValueError, match=r"batchnorm_\d+ cannot take the mask made by masking_\d+ \(mask_value=0.0\)"):
        fnn.Sequential([Masking(), L.BatchNorm()], input_shape=(4, 3))
    # a producer after a masked tensor replaces the mask; pass layers hand it on
    x = fnn.Input((4, 3))
    t = Masking(2.0)(Dense(3)(Masking()(x)))
    assert t.masked and t.mask_from.mask_value == 2.0


def test_add_of_masked_tensors_ands_the_masks():
    x = fnn.Input((4, 2))
    a = Masking(1.0)(x)
    b = Masking(2.0)(x)
    model = fnn.Model(x, Dense(2)(L.Add()([a, b])), dtype="float64")
    X = np.zeros((1, 4, 2))
    X[0, 1] = 1.0
    X[0, 2] = 2.0
    model.engine.forward(X, False)
    np.testing.assert_array_equal(model.engine.output_mask_value(), [[True, False, False, True]])


def test_binary_cross_entropy_accuracy_counts_real_elements(tmp_path):
    X = _ids(5)
    m = fnn.Sequential([Embedding(9, 3, mask_zero=True), Dense(2)], input_shape=(None,), dtype="float64")
    m.compile("binary_cross_entropy", "sgd")
    y = (np.random.default_rng(6).random(X.shape + (2,)) > 0.5).astype(float)
    logs = m.evaluate(X, y)
    Z = m.predict(X)
    real = X != 0
    assert logs["accuracy"] == pytest.approx(((Z > 0) == (y > 0.5))[real].mean())
    path = tmp_path / "mask.fnn"
    mm = fnn.Sequential([Masking(0.5), Dense(2)], input_shape=(None, 3), seed=1)
    mm.compile("mse", "adam")
    mm.save(path)
    back = fnn.io.load(path)
    assert back.layers[0].mask_value == 0.5 and back.graph.has_masks
    Xf = np.random.default_rng(7).standard_normal((3, 4, 3)).astype(np.float32)
    Xf[0, 2] = 0.5
    np.testing.assert_array_equal(back.predict(Xf), mm.predict(Xf))
