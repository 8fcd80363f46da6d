"""Conv2D / Conv1D: float64 parity with torch.nn.functional.conv2d / conv1d (forward and every gradient, after the
layout permutation), the numpy oracle (fastnn._reference) for the kernels, central differences, float32 against
float64, 1 against 2 threads, the fused activation and its unit counters, save/load, a model that learns,
predict from threads, and the errors.

The parity matrix is a hand-made covering set rather than the full product: every kernel size (1/3/5/7), stride
(1/2), padding (valid / same / explicit, + causal in 1-D), dilation (1/2), groups (1 / 2 / C), bias on/off, odd
image sizes, a batch of one and an empty batch appears, each kernel path (the 1x1 GEMM, im2col + GEMM, depthwise)
several times, on small images so that the whole file runs in a few seconds.
"""
import threading

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _reference as ref
from fastnn._core import conv as K
from fastnn._core.kinds import ACT
from fastnn.layers import Conv1D, Conv2D, Dense, Flatten

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
    from tests._netcheck import standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad
    from _netcheck import standalone

RTOL, ATOL = 1e-10, 1e-11


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _same(n, k, s, d):
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


# (batch, H, W, C, filters, kernel, strides, padding, dilation, groups, bias, activation)
CASES_2D = [
    (2, 5, 7, 3, 4, 1, 1, "valid", 1, 1, True, None),                # 1x1: the plain GEMM
    (2, 7, 7, 4, 6, 3, 1, "same", 1, 1, True, "relu"),
    (3, 9, 8, 4, 6, 3, 2, "same", 1, 2, False, None),                # asymmetric "same" (odd total)
    (2, 11, 9, 4, 4, 5, 1, "valid", 2, 4, True, "tanh"),            # depthwise, dilated
    (1, 13, 11, 2, 3, 7, 2, 3, 1, 1, True, None),                    # a batch of one, explicit int padding
    (2, 8, 9, 4, 8, 3, 2, ((1, 2), (0, 1)), 2, 1, True, None),      # explicit asymmetric, strided, dilated
    (2, 6, 6, 4, 8, 3, 1, "same", 1, 4, False, "sigmoid"),          # depthwise with multiplier 2
    (2, 7, 5, 6, 6, 5, 2, (2, 1), 1, 3, True, None),                # 3 groups of 2 channels, pair padding
    (2, 6, 6, 3, 5, 1, 2, "same", 1, 1, True, None),                # 1x1 strided: gathered
    (2, 9, 7, 2, 4, (3, 5), (1, 2), "same", (2, 1), 2, True, "relu"),   # rectangular everything
    (0, 7, 7, 4, 6, 3, 1, "same", 1, 2, True, "relu"),              # an empty batch
    (2, 7, 7, 5, 7, 7, 1, "valid", 1, 1, True, None),               # kernel as large as the image
    (2, 6, 8, 4, 6, 5, 2, 2, 2, 2, False, "tanh"),                  # 5x5, stride 2, dilation 2, groups 2
    # stride 1: backward-to-data runs as the transposed convolution (flipped kernel, padding (k-1)d - p)
    (2, 5, 6, 3, 4, 3, 1, 3, 1, 1, True, None),                      # padding beyond the kernel: negative
    (1, 4, 5, 2, 3, 1, 1, 1, 1, 1, False, None),                     # a padded 1x1: gathered, not the GEMM
    (2, 6, 7, 2, 3, 4, 1, "same", 1, 1, True, "relu"),              # even kernel: "same" pads 1 top, 2 bottom
    (2, 7, 6, 4, 6, 3, 1, "valid", 2, 2, True, None),               # groups 2, dilation 2
]
# (batch, T, C, filters, kernel, strides, padding, dilation, groups, bias, activation)
CASES_1D = [
    (2, 9, 3, 4, 3, 1, "causal", 2, 1, True, None),
    (3, 10, 4, 6, 5, 2, "same", 1, 2, True, "relu"),
    (1, 7, 4, 4, 3, 1, (2, 1), 1, 4, False, None),                  # depthwise, explicit (left, right)
    (2, 8, 2, 3, 1, 1, "valid", 1, 1, True, "tanh"),
    (2, 11, 4, 4, 7, 2, 3, 1, 1, True, None),
    (0, 9, 4, 4, 3, 1, "causal", 1, 2, True, None),
]
TORCH_ACT = {None: lambda t: t, "tanh": lambda t: t.tanh(), "relu": lambda t: t.relu(),
             "sigmoid": lambda t: t.sigmoid()}


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _pads_2d(H, W, k, s, padding, d):
    (kh, kw), (sh, sw), (dh, dw) = _pair(k), _pair(s), _pair(d)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return _same(H, kh, sh, dh), _same(W, kw, sw, dw)
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0],) * 2, (padding[1],) * 2
    return padding


def _run_layer(layer, X, R):
    Y = layer.forward(X, True)
    dX = layer.backward(R)
    return Y, dX


@pytest.mark.parametrize("case", CASES_2D, ids=[str(i) for i in range(len(CASES_2D))])
def test_conv2d_matches_torch(case):
    torch = _torch()
    F = torch.nn.functional
    N, H, W, C, Fo, k, s, padding, d, G, bias, act = case
    layer = standalone(Conv2D(Fo, k, strides=s, padding=padding, dilation_rate=d, groups=G, activation=act,
                              use_bias=bias), (H, W, C), seed=1)
    rng = np.random.default_rng(2)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(Fo)
    X = rng.standard_normal((N, H, W, C))
    (pt, pb), (pl, pr) = _pads_2d(H, W, k, s, padding, d)
    Y = layer.forward(X, True)
    R = rng.standard_normal(Y.shape)
    dX = layer.backward(R)
    assert Y.shape[1:] == layer.output_shape

    tX = torch.tensor(X.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tW = torch.tensor(layer.weight.transpose(3, 2, 0, 1).copy(), requires_grad=True)     # permute(2,3,1,0)^-1
    tb = torch.tensor(layer.bias.copy(), requires_grad=True) if bias else None
    tY = TORCH_ACT[act](F.conv2d(F.pad(tX, (pl, pr, pt, pb)), tW, tb, stride=_pair(s), dilation=_pair(d),
                                 groups=G))
    (tY * torch.tensor(R.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.weight_grad, tW.grad.permute(2, 3, 1, 0).numpy(), rtol=RTOL, atol=ATOL)
    if bias:
        np.testing.assert_allclose(layer.bias_grad, tb.grad.numpy(), rtol=RTOL, atol=ATOL)
    if N == 0:
        assert not layer.weight_grad.any()


@pytest.mark.parametrize("case", CASES_1D, ids=[str(i) for i in range(len(CASES_1D))])
def test_conv1d_matches_torch(case):
    torch = _torch()
    F = torch.nn.functional
    N, T, C, Fo, k, s, padding, d, G, bias, act = case
    layer = standalone(Conv1D(Fo, k, strides=s, padding=padding, dilation_rate=d, groups=G, activation=act,
                              use_bias=bias), (T, C), seed=3)
    rng = np.random.default_rng(4)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(Fo)
    X = rng.standard_normal((N, T, C))
    if padding == "valid":
        pads = (0, 0)
    elif padding == "causal":
        pads = (d * (k - 1), 0)
    elif padding == "same":
        pads = _same(T, k, s, d)
    else:
        pads = padding if isinstance(padding, tuple) else (padding, padding)
    Y = layer.forward(X, True)
    R = rng.standard_normal(Y.shape)
    dX = layer.backward(R)
    assert layer.weight.shape == (k, C // G, Fo) and Y.shape[1:] == layer.output_shape
    tX = torch.tensor(X.transpose(0, 2, 1).copy(), requires_grad=True)
    tW = torch.tensor(layer.weight.transpose(2, 1, 0).copy(), requires_grad=True)
    tb = torch.tensor(layer.bias.copy(), requires_grad=True) if bias else None
    tY = TORCH_ACT[act](F.conv1d(F.pad(tX, pads), tW, tb, stride=s, dilation=d, groups=G))
    (tY * torch.tensor(R.transpose(0, 2, 1).copy())).sum().backward()
    np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.weight_grad, tW.grad.permute(2, 1, 0).numpy(), rtol=RTOL, atol=ATOL)
    if bias:
        np.testing.assert_allclose(layer.bias_grad, tb.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_torch_symmetric_padding_equals_same_for_odd_kernels():
    """Stride 1, odd kernel: Keras' "same" is torch's padding=k // 2 (no F.pad needed)."""
    torch = _torch()
    layer = standalone(Conv2D(3, 5, padding="same"), (6, 7, 2), seed=5)
    X = np.random.default_rng(6).standard_normal((2, 6, 7, 2))
    t = torch.nn.functional.conv2d(torch.tensor(X.transpose(0, 3, 1, 2).copy()),
                                   torch.tensor(layer.weight.transpose(3, 2, 0, 1).copy()),
                                   torch.tensor(layer.bias.copy()), padding=2)
    np.testing.assert_allclose(layer.forward(X), t.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------ kernels
KERNEL_CASES = [  # (X shape, W shape, strides, dilation, padding (t, b, l, r), groups, activation kind)
    ((3, 7, 6, 4), (3, 3, 4, 6), (1, 1), (1, 1), (1, 1, 1, 1), 1, ACT.RELU),
    ((3, 9, 8, 4), (3, 2, 2, 6), (2, 1), (2, 1), (1, 2, 0, 1), 2, ACT.TANH),
    ((3, 9, 8, 4), (3, 3, 1, 8), (2, 2), (1, 1), (1, 1, 1, 1), 4, ACT.IDENTITY),
    ((5, 5, 5, 4), (1, 1, 4, 4), (1, 1), (1, 1), (0, 0, 0, 0), 1, ACT.SIGMOID),
    ((1, 1, 9, 3), (1, 3, 3, 5), (1, 1), (1, 2), (0, 0, 4, 0), 1, ACT.IDENTITY),      # Conv1D, causal
    # the small-channel direct path (C <= 4, F <= 8, one group, OW >= 8): rows of 12, 9 (stride 2, dilation 2), 21, 9
    ((3, 10, 12, 1), (5, 5, 1, 6), (1, 1), (1, 1), (2, 2, 2, 2), 1, ACT.RELU),
    ((2, 11, 19, 3), (3, 3, 3, 5), (2, 2), (1, 2), (1, 0, 1, 2), 1, ACT.TANH),
    ((2, 9, 20, 4), (2, 3, 4, 3), (1, 1), (2, 1), (0, 1, 3, 0), 1, ACT.IDENTITY),
    ((2, 6, 9, 2), (3, 3, 2, 8), (1, 1), (1, 1), (1, 1, 1, 1), 1, ACT.RELU),         # 8 filters: passes of 7 + 1
]


def _kernel_run(mod, dtype, X, Wt, b, strides, dilation, padding, groups, act, dY, n_threads):
    N, H, W, C = X.shape
    kh, kw, _, F = Wt.shape
    OH = (H + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    OW = (W + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    X, Wt, b, dY = (a.astype(dtype) for a in (X, Wt, b, dY[:, :OH, :OW]))
    Z, Y, dZ = (np.empty((N, OH, OW, F), dtype) for _ in range(3))
    sf = np.full(max(1, K.scratch_size(X.shape, Wt.shape, strides, dilation, padding, groups, X.itemsize,
                                       n_threads, False)), np.nan, dtype)
    sb = np.full(max(1, K.scratch_size(X.shape, Wt.shape, strides, dilation, padding, groups, X.itemsize,
                                       n_threads, True)), np.nan, dtype)
    mod.conv2d_forward(X, Wt, b, Z, Y, strides, dilation, padding, groups, sf, act, 0.0, n_threads)
    dX, dW, db = np.full_like(X, np.nan), np.full_like(Wt, np.nan), np.full_like(b, np.nan)
    mod.conv2d_backward(X, Wt, Z, Y, np.ascontiguousarray(dY), dZ, dX, dW, db, strides, dilation, padding, groups,
                        sb, act, 0.0, n_threads)
    return Y, dX, dW, db


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[str(i) for i in range(len(KERNEL_CASES))])
def test_kernels_match_reference(case, n_threads, dtype):
    xs, ws, strides, dilation, padding, groups, act = case
    rng = np.random.default_rng(7)
    X, Wt, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[3])
    dY = rng.standard_normal((xs[0], xs[1] + 4, xs[2] + 4, ws[3]))
    got = _kernel_run(K, dtype, X, Wt, b, strides, dilation, padding, groups, act, dY, n_threads)
    want = _kernel_run(ref, np.float64, X, Wt, b, strides, dilation, padding, groups, act, dY, 1)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **tol)


def test_threads_agree_on_a_larger_batch():
    """1 and 2 threads (forward tiles split, backward images split with private dW) give the same values."""
    rng = np.random.default_rng(8)
    X, Wt, b = rng.standard_normal((6, 12, 12, 8)), rng.standard_normal((3, 3, 8, 16)), rng.standard_normal(16)
    dY = rng.standard_normal((6, 16, 16, 16))
    one = _kernel_run(K, np.float64, X, Wt, b, (1, 1), (1, 1), (1, 1, 1, 1), 1, ACT.RELU, dY, 1)
    two = _kernel_run(K, np.float64, X, Wt, b, (1, 1), (1, 1), (1, 1, 1, 1), 1, ACT.RELU, dY, 2)
    for a, c in zip(one, two):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_small_channel_weights_without_input_gradient(strides):
    """A first layer (dX not needed) runs the direct small-channel weights' pass at every stride; its dW and db
    equal those of a run that also computes dX (at stride 2: the gathered path), on 1 and 2 threads."""
    rng = np.random.default_rng(9)
    X, Wt, b = rng.standard_normal((5, 13, 17, 2)), rng.standard_normal((3, 3, 2, 7)), rng.standard_normal(7)
    pad = (1, 1, 1, 1)
    OH, OW = (13 + 2 - 3) // strides[0] + 1, (17 + 2 - 3) // strides[1] + 1
    dY = rng.standard_normal((5, OH, OW, 7))
    want = _kernel_run(ref, np.float64, X, Wt, b, strides, (1, 1), pad, 1, ACT.RELU, dY, 1)
    for nt in (1, 2):
        Z, Y, dZ = (np.empty((5, OH, OW, 7)) for _ in range(3))
        sf = np.empty(max(1, K.scratch_size(X.shape, Wt.shape, strides, (1, 1), pad, 1, 8, nt, False)))
        sb = np.empty(max(1, K.scratch_size(X.shape, Wt.shape, strides, (1, 1), pad, 1, 8, nt, True)))
        K.conv2d_forward(X, Wt, b, Z, Y, strides, (1, 1), pad, 1, sf, ACT.RELU, 0.0, nt)
        dW, db = np.full_like(Wt, np.nan), np.full_like(b, np.nan)
        K.conv2d_backward(X, Wt, Z, Y, dY, dZ, None, dW, db, strides, (1, 1), pad, 1, sb, ACT.RELU, 0.0, nt)
        np.testing.assert_allclose(Y, want[0], rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(dW, want[2], rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(db, want[3], rtol=1e-10, atol=1e-11)


def test_kernel_shape_errors():
    X, Wt = np.zeros((2, 5, 5, 4)), np.zeros((3, 3, 4, 6))
    Z = np.zeros((2, 3, 3, 6))
    sc = np.zeros(10000)
    with pytest.raises(ValueError, match="conv2d_forward: the output has shape"):
        K.conv2d_forward(X, Wt, None, np.zeros((2, 5, 5, 6)), np.zeros((2, 5, 5, 6)), (1, 1), (1, 1),
                         (0, 0, 0, 0), 1, sc)
    with pytest.raises(ValueError, match="W has shape"):
        K.conv2d_forward(X, np.zeros((3, 3, 2, 6)), None, Z, Z, (1, 1), (1, 1), (0, 0, 0, 0), 1, sc)
    with pytest.raises(ValueError, match="scratch has 1 elements"):
        K.conv2d_forward(X, Wt, None, Z, Z, (1, 1), (1, 1), (0, 0, 0, 0), 1, np.zeros(1))
    with pytest.raises(ValueError, match="larger than the padded input"):
        K.conv2d_forward(X, np.zeros((7, 7, 4, 6)), None, Z, Z, (1, 1), (1, 1), (0, 0, 0, 0), 1, sc)


# --------------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2D(3, 3, strides=2, padding="same", activation="tanh"), (2, 5, 6, 2)),
    (lambda: Conv2D(4, (2, 3), dilation_rate=(2, 1), padding=((0, 1), (2, 0)), groups=2), (2, 5, 5, 2)),
    (lambda: Conv2D(4, 3, groups=2, padding="same", activation="sigmoid"), (1, 4, 4, 2)),   # depthwise x2
    (lambda: Conv1D(3, 3, padding="causal", dilation_rate=2, activation="tanh"), (2, 7, 2)),
], ids=["conv2d-same-s2", "conv2d-dilated-groups", "depthwise", "conv1d-causal"])
def test_finite_differences(make, shape):
    layer = standalone(make(), shape[1:], seed=9)
    rng = np.random.default_rng(10)
    if layer.use_bias:
        layer.params["bias"][...] = rng.standard_normal(layer.filters) * 0.5
    X = rng.standard_normal(shape)
    R = rng.standard_normal((shape[0],) + layer.output_shape)

    def f(_):
        return float(np.sum(layer.forward(X, True) * R))

    layer.forward(X, True)
    dX = layer.backward(R).copy()
    dW, db = layer.weight_grad.copy(), layer.bias_grad.copy()
    assert_grad_close(dX, numeric_grad(f, X))
    assert_grad_close(dW, numeric_grad(f, layer.params["weight"]))
    assert_grad_close(db, numeric_grad(f, layer.params["bias"]))


def test_float32_agrees_with_float64():
    lay = {}
    for dt in (np.float32, np.float64):
        lay[dt] = standalone(Conv2D(6, 3, padding="same", groups=2, activation="relu"), (9, 9, 4), dtype=dt,
                             seed=11)
    lay[np.float32].params["weight"][...] = lay[np.float64].params["weight"]
    rng = np.random.default_rng(12)
    X, R = rng.standard_normal((3, 9, 9, 4)), rng.standard_normal((3, 9, 9, 6))
    out = {dt: (l.forward(X.astype(dt), True).copy(), l.backward(R.astype(dt)).copy(), l.weight_grad.copy())
           for dt, l in lay.items()}
    for a, c in zip(out[np.float32], out[np.float64]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ layer behaviour
def test_activation_fused_equals_separate_layer_and_logits():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((2, 6, 6, 3))
    fused = standalone(Conv2D(4, 3, activation="relu"), (6, 6, 3), seed=14)
    plain = standalone(Conv2D(4, 3), (6, 6, 3), seed=14)
    fused.params["bias"][...] = plain.params["bias"][...] = rng.standard_normal(4)
    Z = plain.forward(X).copy()
    np.testing.assert_array_equal(fused.forward(X), np.maximum(Z, 0))
    np.testing.assert_array_equal(fused.forward(X, logits=True), Z)


def test_unit_counters_count_channels():
    """The diagnostics' counters: per filter, the output pixels (over the batch) where the ReLU is active."""
    layer = standalone(Conv2D(5, 3, padding="same", activation="relu"), (6, 6, 2), seed=15)
    X = np.random.default_rng(16).standard_normal((4, 6, 6, 2))
    layer._act_counts = np.zeros((2, 5), dtype=np.int64)
    Y = layer.forward(X)
    np.testing.assert_array_equal(layer._act_counts.sum(axis=0), (Y > 0).sum(axis=(0, 1, 2)))


def test_param_specs_fans_and_unit_axis():
    layer = Conv2D(8, (3, 5), groups=2)
    layer.build((10, 10, 4))
    w, b = layer.param_specs()
    assert w.shape == (3, 5, 2, 8) and w.fans == (30, 60) and w.unit_axis == 3
    assert b.shape == (8,) and b.unit_axis == 0
    c1 = Conv1D(6, 3)
    c1.build((None, 4))                       # a variable length
    assert c1.output_shape == (None, 6)
    assert c1.param_specs()[0].shape == (3, 4, 6) and c1.param_specs()[0].unit_axis == 2


def test_conv1d_variable_length():
    layer = standalone(Conv1D(3, 3, padding="same"), (None, 2), seed=17)
    for T in (5, 8):
        assert layer.forward(np.ones((2, T, 2))).shape == (2, T, 3)


def test_max_norm_per_filter():
    m = fnn.Sequential([Conv2D(4, 3, max_norm=0.5), Flatten(), Dense(2)], input_shape=(5, 5, 2), seed=0,
                       dtype="float64")
    m.compile("cross_entropy", fnn.optim.SGD(lr=1.0))
    rng = np.random.default_rng(0)
    m.fit(rng.standard_normal((8, 5, 5, 2)), rng.integers(0, 2, 8), epochs=1, batch_size=8)
    norms = np.sqrt((m.layers[0].weight ** 2).sum(axis=(0, 1, 2)))
    assert np.all(norms <= 0.5 + 1e-12)


def test_config_round_trip():
    for layer in (Conv2D(4, (3, 1), strides=(2, 1), padding=((1, 0), (2, 2)), dilation_rate=2, groups=2,
                         activation=fnn.layers.LeakyReLU(0.1), use_bias=False, kernel_init="he_normal"),
                  Conv1D(3, 5, padding="causal", bias_init="ones")):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


def test_save_load_round_trip(tmp_path):
    L = fnn.layers
    m = fnn.Sequential([Conv2D(4, 3, padding="same", activation="relu"),
                        Conv2D(6, 3, strides=2, groups=2, activation="tanh"), Flatten(), Dense(3)],
                       input_shape=(7, 7, 2), seed=1)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 7, 7, 2)).astype(np.float32)
    m.compile("cross_entropy", "adam")
    m.fit(X, rng.integers(0, 3, 6), epochs=1, batch_size=3)
    m.save(tmp_path / "c.fnn")
    m2 = fnn.load(tmp_path / "c.fnn")
    assert [l.get_config() for l in m2.layers] == [l.get_config() for l in m.layers]
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    assert isinstance(m2.layers[0], L.Conv2D)


def _digits_like(n, rng):
    """8x8 images of a bright vertical or horizontal bar at a random place: class 0 / 1."""
    X = rng.normal(0, 0.3, size=(n, 8, 8, 1))
    y = rng.integers(0, 2, n)
    pos = rng.integers(1, 7, n)
    for i in range(n):
        if y[i]:
            X[i, pos[i], :, 0] += 2
        else:
            X[i, :, pos[i], 0] += 2
    return X.astype(np.float32), y


def test_model_fits_and_predicts_from_threads():
    rng = np.random.default_rng(2)
    X, y = _digits_like(128, rng)
    m = fnn.Sequential([Conv2D(8, 3, padding="same", activation="relu"), Flatten(), Dense(10)],
                       input_shape=(8, 8, 1), seed=0)
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    before = m.evaluate(X, y)
    m.fit(X, y, epochs=8, batch_size=32)
    after = m.evaluate(X, y)
    loss_before = before["loss"] if isinstance(before, dict) else before[0]
    loss_after = after["loss"] if isinstance(after, dict) else after[0]
    assert loss_after < 0.5 * loss_before
    want = m.predict(X)
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = m.predict(X[i * 8:(i + 1) * 8 + 20])
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        np.testing.assert_allclose(results[i], want[i * 8:(i + 1) * 8 + 20], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(filters=0, kernel_size=3), ValueError, "filters must be >= 1"),
    (dict(filters=2.5, kernel_size=3), TypeError, "filters must be an int"),
    (dict(filters=4, kernel_size=(3, 3, 3)), ValueError, "kernel_size must be an int or 2 ints"),
    (dict(filters=4, kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (dict(filters=4, kernel_size=3, strides=0), ValueError, "strides must be >= 1"),
    (dict(filters=4, kernel_size=3, dilation_rate="2"), TypeError, "dilation_rate must be an int"),
    (dict(filters=4, kernel_size=3, padding="causal"), ValueError, "padding must be one of"),
    (dict(filters=4, kernel_size=3, padding=-1), ValueError, "padding must be >= 0"),
    (dict(filters=4, kernel_size=3, padding=(1, 2, 3)), ValueError, "padding must be an int, "),
    (dict(filters=4, kernel_size=3, padding=1.5), TypeError, "padding must be a str, an int or a tuple"),
    (dict(filters=4, kernel_size=3, groups=3), ValueError, r"filters \(4\) must be a multiple of groups \(3\)"),
    (dict(filters=4, kernel_size=3, use_bias=1), TypeError, "use_bias must be a bool"),
    (dict(filters=4, kernel_size=3, activation="nope"), ValueError, "unknown activation"),
])
def test_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match) as e:
        Conv2D(name="c", **kwargs)
    assert str(e.value).startswith("c: ")                      # the message names the layer


@pytest.mark.parametrize("make,input_shape,match", [
    (lambda: Conv2D(4, 3, groups=2), (8, 8, 3), r"input channels \(3\) must be a multiple of groups \(2\)"),
    (lambda: Conv2D(4, 3), (8, 8), r"expects samples of shape \(H, W, C\)"),
    (lambda: Conv1D(4, 3), (8, 8, 2), r"expects samples of shape \(T, C\)"),
    (lambda: Conv2D(4, 5), (4, 6, 2), "larger than the input"),
    (lambda: Conv2D(4, 3, dilation_rate=3), (6, 7, 2), "larger than the input"),
    (lambda: Conv2D(4, 7, padding=1), (4, 6, 2), "larger than the padded input"),
    (lambda: Conv1D(4, 3, padding="same"), (None, None), "channel axis"),
])
def test_build_errors(make, input_shape, match):
    layer = make()
    layer.name = "conv_x"
    with pytest.raises(ValueError, match=match) as e:
        fnn.Sequential([layer], input_shape=input_shape)
    assert str(e.value).startswith("conv_x: ")                 # the message names the layer


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (4, 16, 16)])
def test_channels_first_input_is_refused_with_the_fix(shape):
    with pytest.raises(ValueError) as e:
        fnn.Sequential([Conv2D(4, 3), Flatten(), Dense(2)], input_shape=shape)
    msg = str(e.value)
    assert "channels-last" in msg and "X.transpose(0, 2, 3, 1)" in msg and "Permute((2, 3, 1))" in msg
    assert f"input_shape=({shape[1]}, {shape[2]}, {shape[0]})" in msg


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (3, 32, 16), (8, 8, 8), (2, 5, 5), (5, 3, 3)])
def test_channels_last_shapes_pass_the_layout_check(shape):
    m = fnn.Sequential([Conv2D(2, 1), Flatten(), Dense(2)], input_shape=shape)
    assert m.layers[0].output_shape == shape[:2] + (2,)


def test_forward_input_errors():
    layer = standalone(Conv2D(4, 3, name="c2"), (6, 6, 2), seed=0)
    with pytest.raises(ValueError, match=r"c2: expected a batch of shape \(N, H, W, C\)"):
        layer.forward(np.zeros((6, 6, 2)))
    with pytest.raises(ValueError, match="c2: expected 2 input channels"):
        layer.forward(np.zeros((1, 6, 6, 3)))


def test_scratch_for_fewer_threads_still_runs():
    """Buffers made at 1 thread, then a call asking for 2: the kernel runs on the threads its scratch allows."""
    rng = np.random.default_rng(18)
    X, Wt, b = rng.standard_normal((4, 9, 9, 3)), rng.standard_normal((3, 3, 3, 5)), rng.standard_normal(5)
    args = ((1, 1), (1, 1), (1, 1, 1, 1), 1)
    Z, Y, dZ = (np.empty((4, 9, 9, 5)) for _ in range(3))
    sf = np.empty(K.scratch_size(X.shape, Wt.shape, *args, 8, 1, False))
    sb = np.empty(K.scratch_size(X.shape, Wt.shape, *args, 8, 1, True))
    assert sb.size < K.scratch_size(X.shape, Wt.shape, *args, 8, 2, True)
    K.conv2d_forward(X, Wt, b, Z, Y, *args, sf, ACT.TANH, 0.0, 2)
    dY = rng.standard_normal((4, 9, 9, 5))
    dX, dW, db = np.empty_like(X), np.empty_like(Wt), np.empty_like(b)
    K.conv2d_backward(X, Wt, Z, Y, dY, dZ, dX, dW, db, *args, sb, ACT.TANH, 0.0, 2)
    want = _kernel_run(ref, np.float64, X, Wt, b, *args, ACT.TANH, dY, 1)
    for a, c in zip((Y, dX, dW, db), want):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-11)
