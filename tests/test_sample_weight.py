"""Per-sample weights in the loss kernels: weighted mean sum(w l) / sum(w) (torch's definition), vs numpy."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import losses as K
from fastnn._core.kinds import LOSS


def _lse(z):
    m = z.max(axis=1, keepdims=True)
    return (np.log(np.exp(z - m).sum(axis=1, keepdims=True)) + m)[:, 0]


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _ref(name, Z, T, w):
    """(loss, dZ) in float64 numpy."""
    n, k = Z.shape
    if name == "ce":
        li = _lse(Z) - Z[np.arange(n), T]
        P = np.exp(Z - _lse(Z)[:, None])
        G = P.copy()
        G[np.arange(n), T] -= 1
        return (w * li).sum() / w.sum(), G * (w / w.sum())[:, None]
    if name == "ce_soft":
        li = (T * (_lse(Z)[:, None] - Z)).sum(axis=1)
        P = np.exp(Z - _lse(Z)[:, None])
        G = P * T.sum(axis=1, keepdims=True) - T
        return (w * li).sum() / w.sum(), G * (w / w.sum())[:, None]
    if name == "bce":
        L = _softplus(Z) - T * Z
        S = 1 / (1 + np.exp(-Z))
        return (w[:, None] * L).sum() / (k * w.sum()), (S - T) * (w / (k * w.sum()))[:, None]
    D = Z - T
    if name == "l2":
        return (w[:, None] * D * D).sum(), 2 * D * w[:, None]
    if name == "mse":
        return (w[:, None] * D * D).sum() / (k * w.sum()), 2 * D * (w / (k * w.sum()))[:, None]
    if name == "mae":
        return (w[:, None] * np.abs(D)).sum() / (k * w.sum()), np.sign(D) * (w / (k * w.sum()))[:, None]


def _call(name, Z, T, G, w):
    if name == "ce":
        return K.softmax_cross_entropy(Z, T, G, w)
    if name == "ce_soft":
        return K.softmax_cross_entropy_soft(Z, T, G, w)
    if name == "bce":
        return K.sigmoid_binary_cross_entropy(Z, T, G, w)
    return K.regression_loss(LOSS.from_label(name), Z, T, G, w)


@pytest.mark.parametrize("name", ["ce", "ce_soft", "bce", "l2", "mse", "mae"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_loss_matches_numpy(name, dtype):
    rng = np.random.default_rng(1)
    n, k = 9, 4
    Z = rng.normal(size=(n, k)).astype(dtype)
    if name == "ce":
        T = rng.integers(0, k, n).astype(np.intp)
    elif name == "ce_soft":
        T = rng.dirichlet(np.ones(k), n).astype(dtype)
    elif name == "bce":
        T = rng.random((n, k)).astype(dtype)
    else:
        T = rng.normal(size=(n, k)).astype(dtype)
    w = rng.random(n).astype(dtype) * 3
    w[2] = 0.0
    G = np.empty_like(Z)
    loss, _ = _call(name, Z, T, G, w)
    ref_loss, ref_G = _ref(name, Z.astype(np.float64), T if name == "ce" else T.astype(np.float64),
                           w.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(ref_loss, rel=tol)
    np.testing.assert_allclose(G, ref_G, rtol=tol * 10, atol=tol)
    assert np.abs(G).sum() > 0
    # W = None equals W = 1
    G1, G2 = np.empty_like(Z), np.empty_like(Z)
    l1, _ = _call(name, Z, T, G1, None)
    l2, _ = _call(name, Z, T, G2, np.ones(n, dtype))
    assert l1 == pytest.approx(l2, rel=tol)
    np.testing.assert_allclose(G1, G2, rtol=tol * 10, atol=tol)


def test_zero_weights_give_zero_loss_and_gradient():
    Z = np.ones((3, 2))
    G = np.full_like(Z, 7.0)
    loss, _ = K.softmax_cross_entropy(Z, np.zeros(3, np.intp), G, np.zeros(3))
    assert loss == 0.0 and not G.any()


def test_weight_length_is_checked():
    with pytest.raises(ValueError, match="sample weights"):
        K.softmax_cross_entropy(np.ones((3, 2)), np.zeros(3, np.intp), None, np.ones(2))


def test_fit_integer_weights_equal_repeated_samples():
    """Full-batch gradient descent with weight 2 on a sample equals duplicating that sample (mean losses)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 5))
    y = rng.integers(0, 3, 10)
    w = rng.integers(1, 4, 10)

    def model():
        m = fnn.Sequential([fnn.layers.Dense(3)], input_dim=5, seed=1, dtype="float64")
        m.compile("cross_entropy", fnn.optim.SGD(lr=0.5))
        return m

    a, b = model(), model()
    a.fit(X, y, epochs=3, batch_size=10, shuffle=False, sample_weight=w)
    b.fit(np.repeat(X, w, axis=0), np.repeat(y, w), epochs=3, batch_size=int(w.sum()), shuffle=False)
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-12, atol=1e-14)


def test_class_weight_balanced_is_sklearns():
    y = np.array([0, 0, 0, 1, 2, 2])
    m = fnn.Sequential([fnn.layers.Dense(3)], input_dim=2, seed=0, dtype="float64")
    m.compile("cross_entropy", "sgd")
    W = m.trainer.class_weights("balanced", y.astype(np.intp))
    expect = 6 / (3 * np.array([3, 3, 3, 1, 2, 2]))
    np.testing.assert_allclose(W, expect)
    W = m.trainer.class_weights({1: 5.0}, y.astype(np.intp))
    np.testing.assert_allclose(W, [1, 1, 1, 5, 1, 1])
    # class_weight and sample_weight multiply, and both enter fit
    X = np.random.default_rng(0).normal(size=(6, 2))
    a = fnn.Sequential([fnn.layers.Dense(3)], input_dim=2, seed=0, dtype="float64")
    a.compile("cross_entropy", fnn.optim.SGD(lr=0.1))
    b = fnn.Sequential([fnn.layers.Dense(3)], input_dim=2, seed=0, dtype="float64")
    b.compile("cross_entropy", fnn.optim.SGD(lr=0.1))
    sw = np.arange(1.0, 7.0)
    a.fit(X, y, epochs=2, batch_size=6, class_weight="balanced", sample_weight=sw)
    b.fit(X, y, epochs=2, batch_size=6, sample_weight=sw * expect)
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-12)


def test_bad_weights_raise():
    m = fnn.Sequential([fnn.layers.Dense(3)], input_dim=2, seed=0)
    m.compile("cross_entropy", "sgd")
    X, y = np.ones((4, 2)), np.zeros(4, int)
    with pytest.raises(ValueError, match="sample_weight"):
        m.fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        m.fit(X, y, sample_weight=-np.ones(4))
    with pytest.raises(ValueError, match="sum to 0"):
        m.fit(X, y, sample_weight=np.zeros(4))
    with pytest.raises(ValueError, match="class_weight"):
        m.fit(X, y, class_weight="nonsense")
