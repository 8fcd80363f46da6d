"""The N-D layer contract, channels-last (features on the last axis): sequences (N, T, F), images (N, H, W, C).

Dense on any rank against torch.nn.Linear and finite differences; BatchNorm on 2-D, 3-D and 4-D against torch
BatchNorm1d / BatchNorm2d (fed the channels-first transpose), running statistics and eval mode included;
LayerNorm over the last axis against torch.nn.LayerNorm(C); cross-entropy and binary cross-entropy on
(N, T, K) and (N, H, W, K) against torch (value and gradient); metrics counting positions; Flatten / Reshape;
ParamSpec fans and unit axis (a conv kernel built directly); buffers keyed by shape; a model end to end.
Everything in float64; torch rows skip where torch is not installed.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm, Dense, Flatten, LayerNorm, ParamSpec, Reshape

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
    from tests._netcheck import check_model_grads, standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad
    from _netcheck import check_model_grads, standalone

RTOL, ATOL = 1e-10, 1e-12


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _t(torch, a, grad=False):
    return torch.tensor(np.array(a), dtype=torch.float64, requires_grad=grad)


def _to_channels_first(a):
    """channels-last (N, ..., C) -> torch's channels-first (N, C, ...)."""
    return np.moveaxis(a, -1, 1)


# ------------------------------------------------------------------------------------------------ Dense
DENSE_CASES = [  # (input shape of a batch, units, activation)
    ((6, 5), 4, None),                 # 2-D: unchanged
    ((4, 7, 5), 3, None),              # a sequence batch (N, T, F)
    ((3, 4, 5, 6), 2, None),           # an image batch (N, H, W, C)
    ((4, 7, 5), 3, "tanh"),            # the fused activation per position
    ((2, 3, 2, 4), 5, "relu"),
    ((0, 7, 5), 3, None),              # an empty batch
    ((1, 7, 5), 3, "sigmoid"),         # a one-sample batch
]
TORCH_ACT = {None: lambda t: t, "tanh": lambda t: t.tanh(), "relu": lambda t: t.relu(),
             "sigmoid": lambda t: t.sigmoid()}


@pytest.mark.parametrize("shape,units,act", DENSE_CASES, ids=[f"{s}-{a}" for s, _, a in DENSE_CASES])
def test_dense_matches_torch_linear(shape, units, act):
    torch = _torch()
    layer = standalone(Dense(units, activation=act), shape[1:], seed=1)
    assert layer.output_shape == shape[1:-1] + (units,)
    rng = np.random.default_rng(2)
    layer.params["bias"][...] = rng.standard_normal(units)
    X = rng.standard_normal(shape)
    R = rng.standard_normal(shape[:-1] + (units,))
    Y = layer.forward(X, True)
    dX = layer.backward(R)
    lin = torch.nn.Linear(shape[-1], units).double()
    with torch.no_grad():
        lin.weight.copy_(_t(torch, layer.weight.T))
        lin.bias.copy_(_t(torch, layer.bias))
    tX = _t(torch, X, grad=True)
    tY = TORCH_ACT[act](lin(tX))
    (tY * _t(torch, R)).sum().backward()
    assert Y.shape == tuple(tY.shape)
    np.testing.assert_allclose(Y, tY.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dX, tX.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.weight_grad, lin.weight.grad.numpy().T, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.bias_grad, lin.bias.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape,act", [((3, 4, 5), "tanh"), ((2, 3, 2, 4), None)])
def test_dense_nd_finite_differences(shape, act):
    layer = standalone(Dense(3, activation=act), shape[1:], seed=3)
    rng = np.random.default_rng(4)
    layer.params["bias"][...] = rng.standard_normal(3)
    X = rng.standard_normal(shape)
    R = rng.standard_normal(shape[:-1] + (3,))

    def f(_):
        return float(np.sum(layer.forward(X, True) * R))

    layer.forward(X, True)
    dX = layer.backward(R).copy()
    dW, db = layer.weight_grad.copy(), layer.bias_grad.copy()
    assert_grad_close(dX, numeric_grad(f, X))
    assert_grad_close(dW, numeric_grad(f, layer.params["weight"]))
    assert_grad_close(db, numeric_grad(f, layer.params["bias"]))


def test_dense_nd_views_not_copies_and_shape_keyed_buffers():
    """The N-D batch runs through the 2-D kernels as a (rows, n_in) view; two batches of one size and another
    shape get their own buffers (the cache key is the full shape)."""
    layer = standalone(Dense(3), (5,), seed=0)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((4, 6, 5)), rng.standard_normal((4, 2, 5))
    YA = layer.forward(A).copy()
    YB = layer.forward(B)
    assert YB.shape == (4, 2, 3)
    np.testing.assert_allclose(YB, B @ layer.weight + layer.bias, rtol=1e-12)
    YA2 = layer.forward(A)
    np.testing.assert_array_equal(YA2, YA)
    assert not np.shares_memory(YA2, YB)
    assert np.shares_memory(layer._X, A)               # the input was not copied
    with pytest.raises(ValueError, match="Dense expects"):
        Dense(3, name="d")(fnn.Input(()))


BUFFER_LAYERS = [lambda: Dense(3, activation="relu"), lambda: BatchNorm(), lambda: LayerNorm(),
                 lambda: fnn.layers.Dropout(0.5, mode="weight_scaling"), lambda: fnn.layers.Tanh()]


@pytest.mark.parametrize("make", BUFFER_LAYERS, ids=lambda m: type(m()).__name__)
def test_buffers_are_keyed_by_the_full_shape(make):
    """Two batches of one size and different lengths (a variable time axis) each get buffers of their shape;
    the first batch's output is not overwritten by the second's."""
    layer = standalone(make(), (6, 5), seed=0)
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((4, 6, 5)), rng.standard_normal((4, 2, 5))
    YA = layer.forward(A, False)
    keep = YA.copy()
    dA = layer.backward(np.ones_like(YA))
    assert dA.shape == A.shape
    YB = layer.forward(B, False)
    assert YB.shape[:2] == (4, 2) and not np.shares_memory(YA, YB)
    np.testing.assert_array_equal(YA, keep)
    dB = layer.backward(np.ones_like(YB))
    assert dB.shape == B.shape and not np.shares_memory(dA, dB)


# ------------------------------------------------------------------------------------------------ BatchNorm
BN_SHAPES = [(8, 5), (4, 6, 5), (3, 4, 5, 6), (1, 7, 3)]     # the last: one sample, 7 values per channel


def _torch_bn(torch, shape):
    C = shape[-1]
    return (torch.nn.BatchNorm1d(C) if len(shape) <= 3 else torch.nn.BatchNorm2d(C)).double()


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_matches_torch_channels_last(shape):
    """Three training steps on different batches (outputs, gradients of input / weight / bias, running
    statistics with torch's unbiased count N*L or N*H*W), then inference with the running statistics."""
    torch = _torch()
    C = shape[-1]
    bn = standalone(BatchNorm(momentum=0.3), shape[1:])
    tbn = _torch_bn(torch, shape)
    tbn.momentum = 0.3
    rng = np.random.default_rng(5)
    bn.weight[...] = rng.uniform(0.5, 1.5, C)
    bn.bias[...] = rng.standard_normal(C)
    with torch.no_grad():
        tbn.weight.copy_(_t(torch, bn.weight))
        tbn.bias.copy_(_t(torch, bn.bias))
    tbn.train()
    for step in range(3):
        X = rng.standard_normal(shape) * (1 + step) + step
        R = rng.standard_normal(shape)
        Y = bn.forward(X, True)
        dX = bn.backward(R)
        tbn.zero_grad()
        tX = _t(torch, _to_channels_first(X), grad=True)
        tY = tbn(tX)
        (tY * _t(torch, _to_channels_first(R))).sum().backward()
        np.testing.assert_allclose(Y, np.moveaxis(tY.detach().numpy(), 1, -1), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(dX, np.moveaxis(tX.grad.numpy(), 1, -1), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(bn.weight_grad, tbn.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(bn.bias_grad, tbn.bias.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12, atol=1e-14)
    tbn.eval()
    X = rng.standard_normal(shape)
    R = rng.standard_normal(shape)
    Y = bn.forward(X, False)
    dX = bn.backward(R)
    tX = _t(torch, _to_channels_first(X), grad=True)
    tY = tbn(tX)
    (tY * _t(torch, _to_channels_first(R))).sum().backward()
    np.testing.assert_allclose(Y, np.moveaxis(tY.detach().numpy(), 1, -1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, np.moveaxis(tX.grad.numpy(), 1, -1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,training", [((3, 4, 5), True), ((2, 3, 2, 4), True), ((3, 4, 5), False)])
def test_batchnorm_nd_finite_differences(shape, training):
    bn = standalone(BatchNorm(), shape[1:])
    rng = np.random.default_rng(6)
    bn.weight[...] = rng.uniform(0.5, 1.5, shape[-1])
    bn.bias[...] = rng.standard_normal(shape[-1])
    bn.running_mean[...] = 0.2
    bn.running_var[...] = 1.7
    bn.momentum = 0.0            # the running statistics stay put while differencing
    X = rng.standard_normal(shape) * 2 + 1
    R = rng.standard_normal(shape)

    def f(_):
        return float(np.sum(bn.forward(X, training) * R))

    bn.forward(X, training)
    dX = bn.backward(R).copy()
    dW = bn.weight_grad.copy()
    assert_grad_close(dX, numeric_grad(f, X), rtol=1e-6, atol=1e-8)
    assert_grad_close(dW, numeric_grad(f, bn.params["weight"]), rtol=1e-6, atol=1e-8)


def test_batchnorm_one_value_per_channel_raises_but_one_sequence_trains():
    bn = standalone(BatchNorm(name="bn"), (4,))
    with pytest.raises(ValueError, match="bn.*more than 1 value per channel"):
        bn.forward(np.ones((1, 4)), True)
    bn3 = standalone(BatchNorm(name="bn3"), (1, 4))
    with pytest.raises(ValueError, match="bn3.*more than 1"):
        bn3.forward(np.ones((1, 1, 4)), True)
    seq = standalone(BatchNorm(), (3, 4))
    Y = seq.forward(np.random.default_rng(0).standard_normal((1, 3, 4)), True)
    np.testing.assert_allclose(Y.mean(axis=(0, 1)), 0, atol=1e-12)


def test_batchnorm_axis_is_the_last_axis():
    assert BatchNorm(axis=3)(fnn.Input((4, 5, 6))).shape == (4, 5, 6)
    assert BatchNorm(axis=-1)(fnn.Input((4, 5, 6))).shape == (4, 5, 6)
    with pytest.raises(ValueError, match=r"bn.*last axis.*axis=1.*transpose"):
        BatchNorm(axis=1, name="bn")(fnn.Input((4, 5, 6)))
    with pytest.raises(ValueError, match=r"axis=-2"):
        BatchNorm(axis=-2)(fnn.Input((4, 5)))
    assert BatchNorm.from_config(BatchNorm(axis=2, name="b").get_config()).axis == 2


# ------------------------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 5), (2, 3, 4, 6)], ids=str)
def test_layernorm_over_the_last_axis_matches_torch(shape):
    torch = _torch()
    C = shape[-1]
    ln = standalone(LayerNorm(eps=1e-4), shape[1:])
    assert ln.weight.shape == (C,)
    rng = np.random.default_rng(7)
    ln.weight[...] = rng.uniform(0.5, 1.5, C)
    ln.bias[...] = rng.standard_normal(C)
    tln = torch.nn.LayerNorm(C, eps=1e-4).double()
    with torch.no_grad():
        tln.weight.copy_(_t(torch, ln.weight))
        tln.bias.copy_(_t(torch, ln.bias))
    X = rng.standard_normal(shape) * 3 + 1
    R = rng.standard_normal(shape)
    Y = ln.forward(X, True)
    dX = ln.backward(R)
    tX = _t(torch, X, grad=True)
    tY = tln(tX)
    (tY * _t(torch, R)).sum().backward()
    np.testing.assert_allclose(Y, tY.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, tX.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ln.weight_grad, tln.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ln.bias_grad, tln.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layernorm_3d_finite_differences():
    ln = standalone(LayerNorm(), (4, 5))
    rng = np.random.default_rng(8)
    ln.weight[...] = rng.uniform(0.5, 1.5, 5)
    X = rng.standard_normal((3, 4, 5))
    R = rng.standard_normal(X.shape)

    def f(_):
        return float(np.sum(ln.forward(X) * R))

    ln.forward(X)
    dX = ln.backward(R).copy()
    dW = ln.weight_grad.copy()
    assert_grad_close(dX, numeric_grad(f, X), rtol=1e-6, atol=1e-8)
    assert_grad_close(dW, numeric_grad(f, ln.params["weight"]), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------ losses
LOSS_SHAPES = [(5, 4), (4, 6, 3), (2, 3, 4, 5), (1, 6, 3)]


def _loss_call(loss, out, y, weights=None):
    T = loss.prepare_targets(y, out.shape[0], out.shape[1:], np.float64)
    grad = np.empty_like(out)
    value, correct = loss(out, T, grad, weights)
    return value, correct, grad


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probabilities"])
def test_cross_entropy_nd_matches_torch(shape, soft):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    K = shape[-1]
    Z = rng.standard_normal(shape) * 2
    if soft:
        y = rng.dirichlet(np.ones(K), size=shape[:-1])
        ty = _t(torch, _to_channels_first(y))
    else:
        y = rng.integers(0, K, size=shape[:-1])
        ty = torch.tensor(y)
    loss = fnn.losses.get("cross_entropy")
    value, correct, grad = _loss_call(loss, Z, y)
    tZ = _t(torch, _to_channels_first(Z), grad=True)
    tl = F.cross_entropy(tZ, ty)
    tl.backward()
    assert value == pytest.approx(float(tl.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, np.moveaxis(tZ.grad.numpy(), 1, -1), rtol=1e-10, atol=1e-14)
    labels = y if not soft else y.argmax(-1)
    assert correct == int((Z.argmax(-1) == labels).sum())                 # positions, not samples
    assert loss.n_predictions(shape[0], shape[1:]) == labels.size


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 3), (2, 3, 4, 5)], ids=str)
def test_cross_entropy_nd_sample_weights_cover_each_position(shape):
    """A sample's weight applies to each of its positions: sum_i w_i sum_p l_ip / (P sum_i w_i), with the
    gradient checked by finite differences."""
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    Z = rng.standard_normal(shape)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    w = rng.uniform(0.1, 2.0, shape[0])
    loss = fnn.losses.get("cross_entropy")
    value, _, grad = _loss_call(loss, Z, y, w)
    per = F.cross_entropy(_t(torch, _to_channels_first(Z)), torch.tensor(y), reduction="none").numpy()
    P = per[0].size
    want = float((w.reshape((-1,) + (1,) * (per.ndim - 1)) * per).sum() / (P * w.sum()))
    assert value == pytest.approx(want, rel=1e-12)
    T = loss.prepare_targets(y, shape[0], shape[1:], np.float64)
    assert_grad_close(grad, numeric_grad(lambda z: loss(z, T, None, w)[0], Z), rtol=1e-6, atol=1e-9)


def test_cross_entropy_nd_bad_targets():
    loss = fnn.losses.get("cross_entropy")
    with pytest.raises(ValueError, match=r"y: labels must have shape \(4, 6\), got \(4, 5\)"):
        loss.prepare_targets(np.zeros((4, 5), int), 4, (6, 3), np.float64, owner="y")
    with pytest.raises(ValueError, match=r"out of range for 3 classes"):
        loss.prepare_targets(np.full((4, 6), 3), 4, (6, 3), np.float64)
    with pytest.raises(ValueError, match=r"whole numbers.*index \(1, 2\)"):
        y = np.zeros((4, 6))
        y[1, 2] = 0.5
        loss.prepare_targets(y, 4, (6, 3), np.float64)
    with pytest.raises(ValueError, match=r"targets must be labels \(4, 6\) or probabilities \(4, 6, 3\)"):
        loss.prepare_targets(np.zeros(4), 4, (6, 3), np.float64)
    with pytest.raises(ValueError, match="sampled_softmax needs outputs of shape"):
        fnn.losses.SampledSoftmax(4).prepare_targets(np.zeros(4, int), 4, (6, 3), np.float64)


@pytest.mark.parametrize("shape", [(5, 1), (4, 6, 3), (2, 3, 4, 2)], ids=str)
def test_binary_cross_entropy_nd_matches_torch(shape):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    Z = rng.standard_normal(shape) * 2
    y = rng.uniform(0, 1, shape).round(1)
    w = rng.uniform(0.1, 2.0, shape[0])
    loss = fnn.losses.get("binary_cross_entropy")
    for weights in (None, w):
        value, correct, grad = _loss_call(loss, Z, y, weights)
        tZ = _t(torch, Z, grad=True)
        tw = None if weights is None else _t(torch, weights.reshape((-1,) + (1,) * (Z.ndim - 1)))
        per = F.binary_cross_entropy_with_logits(tZ, _t(torch, y), reduction="none")
        tl = per.mean() if tw is None else (per * tw).sum() / (tw.sum() * (Z.size // shape[0]))
        tl.backward()
        assert value == pytest.approx(float(tl.detach()), rel=1e-12)
        np.testing.assert_allclose(grad, tZ.grad.numpy(), rtol=1e-10, atol=1e-14)
        assert correct == int(((Z > 0) == (y > 0.5)).sum())
    assert loss.n_predictions(shape[0], shape[1:]) == Z.size
    # one output per position: the trailing 1 may be left out of the targets
    T = loss.prepare_targets(np.zeros((3, 4)), 3, (4, 1), np.float64)
    assert T.size == 12


@pytest.mark.parametrize("name", ["mse", "mae", "l2"])
def test_regression_losses_nd_match_torch(name):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    Z, y = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    value, _, grad = _loss_call(fnn.losses.get(name), Z, y)
    tZ = _t(torch, Z, grad=True)
    fn = {"mse": F.mse_loss, "mae": F.l1_loss, "l2": lambda a, b: F.mse_loss(a, b, reduction="sum")}[name]
    tl = fn(tZ, _t(torch, y))
    tl.backward()
    assert value == pytest.approx(float(tl.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, tZ.grad.numpy(), rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("soft", [False, True])
def test_top_k_accuracy_counts_positions(k, soft):
    rng = np.random.default_rng(13)
    out = rng.standard_normal((6, 7, 4))
    labels = rng.integers(0, 4, size=(6, 7))
    targets = np.eye(4)[labels] if soft else labels
    m = fnn.metrics.TopKAccuracy(k)
    m.update(out[:4], targets[:4])
    m.update(out[4:], targets[4:])
    rank = (out > np.take_along_axis(out, labels[..., None], -1)).sum(-1)
    assert m.result() == pytest.approx(float((rank < k).mean()))
    assert m._n == 42


def test_elementwise_metrics_nd():
    rng = np.random.default_rng(14)
    out, y = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2))
    T = fnn.losses.get("mse").prepare_targets(y, 5, (3, 2), np.float64)
    for name, want in (("mae", np.abs(out - y).mean()), ("mse", ((out - y) ** 2).mean())):
        m = fnn.metrics.get(name)
        m.reset()
        m.update(out, T)
        assert m.result() == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------ Flatten / Reshape
SHAPE_CASES = [  # (layer, input shape of one sample, output shape of one sample)
    (lambda: Flatten(), (4, 5), (20,)),
    (lambda: Flatten(), (2, 3, 4), (24,)),
    (lambda: Flatten(), (6,), (6,)),
    (lambda: Reshape((4, 5)), (20,), (4, 5)),
    (lambda: Reshape((-1, 3)), (2, 6), (4, 3)),
    (lambda: Reshape((2, -1, 2)), (12,), (2, 3, 2)),
    (lambda: Reshape(7), (7,), (7,)),
]


@pytest.mark.parametrize("make,in_shape,out_shape", SHAPE_CASES,
                         ids=[f"{m().__class__.__name__}{i}-{o}" for m, i, o in SHAPE_CASES])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_flatten_reshape_views_round_trip_and_gradients(make, in_shape, out_shape, n):
    layer = standalone(make(), in_shape)
    assert layer.output_shape == out_shape
    X = np.random.default_rng(15).standard_normal((n,) + in_shape)
    Y = layer.forward(X, True)
    assert Y.shape == (n,) + out_shape
    np.testing.assert_array_equal(Y.reshape(-1), X.reshape(-1))          # row-major, order unchanged
    R = np.random.default_rng(16).standard_normal(Y.shape)
    dX = layer.backward(R)
    assert dX.shape == X.shape
    np.testing.assert_array_equal(dX.reshape(-1), R.reshape(-1))
    if n:
        assert np.shares_memory(Y, X) and np.shares_memory(dX, R)      # views, no copies
    back = standalone(Reshape(in_shape), out_shape)                     # and back again
    np.testing.assert_array_equal(back.forward(Y), X)


def test_flatten_is_row_major_over_channels_last():
    X = np.arange(2 * 2 * 3 * 4, dtype=np.float64).reshape(2, 2, 3, 4)     # (N, H, W, C)
    Y = standalone(Flatten(), (2, 3, 4)).forward(X)
    np.testing.assert_array_equal(Y[1, :4], X[1, 0, 0, :])                   # a pixel's channels are adjacent


def test_reshape_bad_shapes():
    with pytest.raises(ValueError, match=r"r1: cannot reshape a sample of shape \(5,\) \(5 elements\) to "
                                         r"\(4, 4\) \(16 elements\)"):
        Reshape((4, 4), name="r1")(fnn.Input(5))
    with pytest.raises(ValueError, match=r"r2: cannot reshape.*\(2, 5\).*not a multiple of 3"):
        Reshape((3, -1), name="r2")(fnn.Input((2, 5)))
    with pytest.raises(ValueError, match="at most one -1"):
        Reshape((-1, -1))
    with pytest.raises(ValueError, match="positive ints"):
        Reshape((0, 3))
    with pytest.raises(ValueError, match="positive ints"):
        Reshape((2, 1.5))
    with pytest.raises(TypeError, match="tuple of ints"):
        Reshape(())
    with pytest.raises(TypeError, match="tuple of ints"):
        Reshape("3,4")
    assert Reshape.from_config(Reshape((2, -1), name="r").get_config()).shape == (2, -1)


def test_model_gradients_through_reshape_flatten_and_nd_layers():
    model = fnn.Sequential([Reshape((4, 3)), Dense(5, activation="tanh"), BatchNorm(), LayerNorm(), Flatten(),
                            Dense(2)], input_dim=12, seed=1, dtype="float64")
    X = np.random.default_rng(17).standard_normal((6, 12))
    check_model_grads(model, X, training=True, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ ParamSpec
def test_paramspec_defaults_keep_dense_fans_and_draws():
    w = ParamSpec("weight", (5, 3), fnn.initializers.get("xavier_uniform"), True)
    assert (w.fan_in, w.fan_out, w.unit_axis) == (5, 3, 1)
    b = ParamSpec("bias", (3,), fnn.initializers.get("zeros"), False)
    assert (b.fan_in, b.fan_out, b.unit_axis) == (3, 3, 0)
    a = w.initialize(np.random.default_rng(0))
    np.testing.assert_array_equal(a, w.init((5, 3), np.random.default_rng(0)))     # the same draw as before
    d = standalone(Dense(4, kernel_init="he_normal"), (6,))
    ws = d.param_specs()[0]
    assert (ws.shape, ws.fan_in, ws.fan_out, ws.unit_axis) == ((6, 4), 6, 4, 1)


@pytest.mark.parametrize("name,scale", [("xavier_uniform", lambda fi, fo: np.sqrt(6 / (fi + fo))),
                                        ("he_normal", lambda fi, fo: np.sqrt(2 / fi)),
                                        ("lecun_uniform", lambda fi, fo: np.sqrt(3 / fi))])
def test_conv_kernel_spec_gets_receptive_field_fans(name, scale):
    """A channels-last conv kernel (kh, kw, C_in, C_out), built as a ParamSpec directly: fans kh*kw*C_in and
    kh*kw*C_out, from the shape by default or given explicitly, with no initializer code about convolution."""
    kh, kw, cin, cout = 3, 3, 8, 16
    init = fnn.initializers.get(name)
    spec = ParamSpec("kernel", (kh, kw, cin, cout), init, True)
    assert (spec.fan_in, spec.fan_out, spec.unit_axis) == (kh * kw * cin, kh * kw * cout, 3)
    explicit = ParamSpec("kernel", (kh, kw, cin, cout), init, True, fan_in=kh * kw * cin,
                         fan_out=kh * kw * cout, unit_axis=-1)
    assert explicit == spec
    W = spec.initialize(np.random.default_rng(1))
    s = scale(kh * kw * cin, kh * kw * cout)
    if name.endswith("uniform"):
        assert np.abs(W).max() <= s and np.abs(W).max() > 0.95 * s
    else:
        assert W.std() == pytest.approx(s, rel=0.05)
    # the spec's fans, not the shape, decide: other fans give another scale
    other = spec._replace(fan_in=10, fan_out=10).initialize(np.random.default_rng(1))
    np.testing.assert_allclose(other / W, scale(10, 10) / s)


def test_paramspec_validates_fans_and_unit_axis():
    with pytest.raises(ValueError, match="fan_in"):
        ParamSpec("w", (2, 3), None, True, fan_in=0)
    with pytest.raises(ValueError, match="unit_axis 2"):
        ParamSpec("w", (2, 3), None, True, unit_axis=2)
    assert ParamSpec("w", (2, 3), None, True, unit_axis=-2).unit_axis == 0


@pytest.mark.parametrize("shape,unit_axis", [((5, 4), 1), ((3, 3, 2, 4), 3), ((4, 3, 3, 2), 0), ((2, 4, 3), 1)])
def test_max_norm_over_all_axes_but_the_unit_axis(shape, unit_axis):
    rng = np.random.default_rng(18)
    W = rng.standard_normal(shape) * rng.uniform(0.2, 2.0, shape[unit_axis]).reshape(
        [-1 if a == unit_axis else 1 for a in range(len(shape))])           # units of different norms
    units = np.moveaxis(W, unit_axis, -1).reshape(-1, shape[unit_axis])      # one column per unit
    norms = np.sqrt((units ** 2).sum(axis=0))
    limit = float(np.median(norms))                                          # some units above, some below
    want = np.moveaxis((units * np.minimum(1.0, limit / norms)).reshape(np.moveaxis(W, unit_axis, -1).shape),
                       -1, unit_axis)
    c = fnn.constraints.MaxNorm(limit)
    out = c(W, unit_axis=unit_axis)
    assert out is W
    np.testing.assert_allclose(W, want, rtol=1e-12)
    with pytest.raises(ValueError, match="unit_axis"):
        c(W, unit_axis=len(shape))


# ------------------------------------------------------------------------------------------------ end to end
def _sequence_data(n=64, T=6, F=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, T, F))


def test_sequence_classifier_end_to_end():
    """Dense per time step, Flatten, Dense: a (T, F) input through the public API, trained a few steps."""
    X = _sequence_data()
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int) + (X[:, 0, 1] > 1)
    model = fnn.Sequential([Dense(8, activation="relu"), LayerNorm(), Flatten(), Dense(3)], input_dim=(6, 4),
                           seed=0)
    assert model.output_shape == (3,)
    model.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    hist = model.fit(X, y, epochs=8, batch_size=16)
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    assert model.predict(X[:1]).shape == (1, 3)                       # a one-sample batch
    assert model.predict(X).shape == (64, 3)


def test_per_position_classifier_end_to_end():
    """Labels per time step: outputs (n, T, K), labels (n, T); accuracy and top-k count positions, sample
    weights apply to every position of their sample, and a BatchNorm over (n, T, C) trains on one sample."""
    X = _sequence_data(seed=1)
    y = (X[..., 0] > 0).astype(int) + (X[..., 1] > 0.5)
    model = fnn.Sequential([Dense(8, activation="tanh"), BatchNorm(), Dense(3)], input_dim=(6, 4), seed=0,
                           dtype="float64")
    model.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    hist = model.fit(X, y, epochs=10, batch_size=16, metrics=["top_k_accuracy"])
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    res = model.evaluate(X, y, metrics=[fnn.metrics.TopKAccuracy(2)])
    out = model.predict(X)
    assert out.shape == (64, 6, 3)
    assert res["accuracy"] == pytest.approx(float((out.argmax(-1) == y).mean()))
    rank = (out > np.take_along_axis(out, y[..., None], -1)).sum(-1)
    assert res["top_2_accuracy"] == pytest.approx(float((rank < 2).mean()))
    # per-sample weights: an all-ones weighting is the unweighted loss; weight 2 on half = duplicating it
    w = np.ones(64)
    assert model.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(res["loss"], rel=1e-12)
    w[:32] = 2.0
    dup = model.evaluate(np.concatenate([X, X[:32]]), np.concatenate([y, y[:32]]))["loss"]
    assert model.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(dup, rel=1e-10)
    before = model.parameters.copy()
    model.train_on_batch(X[:1], y[:1])                                  # one sequence: 6 values per channel
    assert np.all(np.isfinite(model.parameters)) and not np.array_equal(before, model.parameters)


def test_image_batch_end_to_end_with_binary_cross_entropy():
    """(N, H, W, C) images, a per-pixel Dense and BatchNorm (BatchNorm2d channels-last), a per-pixel sigmoid
    output trained with binary cross-entropy against (N, H, W, 1) masks."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((32, 4, 4, 3))
    y = (X[..., :1] + X[..., 1:2] > 0).astype(float)
    model = fnn.Sequential([Dense(6, activation="relu"), BatchNorm(), Dense(1, activation="sigmoid")],
                           input_dim=(4, 4, 3), seed=0)
    model.compile("binary_cross_entropy", fnn.optim.Adam(lr=2e-2))
    hist = model.fit(X, y, epochs=8, batch_size=8)
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert hist.history["accuracy"][-1] > 0.8
    assert model.predict(X[:2]).shape == (2, 4, 4, 1)


def test_class_weight_with_per_position_labels_is_refused():
    # weights are per sample; a class per position has no per-sample class to weigh
    model = fnn.Sequential([fnn.layers.Dense(3)], input_shape=(4, 5), seed=0).compile("cross_entropy", "sgd")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4, 5)).astype(np.float32)
    y = rng.integers(0, 3, (6, 4))
    before = model.parameters.copy()
    with pytest.raises(ValueError, match=r"class_weight needs one class per sample.*\(6, 4\)"):
        model.fit(X, y, class_weight="balanced")
    np.testing.assert_array_equal(model.parameters, before)
    model.fit(X, y, sample_weight=np.arange(1, 7), epochs=1)      # the per-sample way works


def test_predict_classes_per_position():
    """A per-step head (n, T, k) gives one class per step, (n, T); a per-step sigmoid (n, T, 1) gives (n, T)."""
    L = fnn.layers
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 5, 3))
    m = fnn.Sequential([L.Dense(4)], input_shape=(5, 3), seed=0)
    m.compile("cross_entropy", fnn.optim.SGD(0.1))
    np.testing.assert_array_equal(m.predict_classes(X), np.argmax(m.predict(X), axis=-1))
    assert m.predict_classes(X).shape == (6, 5)
    b = fnn.Sequential([L.Dense(1, activation="sigmoid")], input_shape=(5, 3), seed=0)
    b.compile("binary_cross_entropy", fnn.optim.SGD(0.1))
    np.testing.assert_array_equal(b.predict_classes(X, threshold=0.4), (b.predict(X)[..., 0] > 0.4).astype(np.int8))
