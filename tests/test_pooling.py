"""Pooling layers (channels-last) and Permute.

Float64 parity with torch.nn.functional.max_pool2d / avg_pool2d / max_pool1d / avg_pool1d (forward and input
gradient, fed the channels-first transpose) over pool sizes 1/2/3, strides 1/2/3, "valid" and "same" (TF's
asymmetric padding, given to torch as an explicit F.pad: -inf for max, and for average a sum pool divided by
the count of real inputs); the compiled kernels against the numpy oracle (fastnn/_reference.py) at 1 and 2
threads; ties (the first maximum gets the gradient) and NaN; finite differences; float32 against float64;
global pooling against numpy; a small CNN trained end to end; Permute as the channels-first path; errors.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import _reference as ref
from fastnn._core import pool as kern
from fastnn.layers import (
    AvgPool1D,
    AvgPool2D,
    Dense,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    MaxPool1D,
    MaxPool2D,
    Permute,
)

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
    from tests._netcheck import standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad
    from _netcheck import standalone

RTOL, ATOL = 1e-12, 1e-13


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _torch_pool(torch, X, kind, pool, strides, padding):
    """torch's answer for a channels-last X (N, *spatial, C): (Y channels-last, dX channels-last) for the loss
    sum(Y * R), with R drawn from X's shape; "same" padding applied explicitly (TF's asymmetric split)."""
    F = torch.nn.functional
    rank = X.ndim - 2
    t = torch.tensor(np.moveaxis(X, -1, 1).copy(), requires_grad=True)
    x = t
    pads = []
    if padding == "same":
        for n, k, s in reversed(list(zip(X.shape[1:-1], pool, strides))):   # F.pad: last axis first
            pads += list(_same_pads(n, k, s))
    k, s = (pool[0], strides[0]) if rank == 1 else (tuple(pool), tuple(strides))
    mp, ap = (F.max_pool1d, F.avg_pool1d) if rank == 1 else (F.max_pool2d, F.avg_pool2d)
    if kind == "max":
        if pads:
            x = F.pad(x, pads, value=-np.inf)
        y = mp(x, k, s)
    else:
        if pads:
            ones = F.pad(torch.ones_like(t), pads)
            count = ap(ones, k, s) * np.prod(pool)
            y = ap(F.pad(x, pads), k, s) * np.prod(pool) / count
        else:
            y = ap(x, k, s)
    R = np.random.default_rng(7).standard_normal(y.shape)
    (y * torch.tensor(R)).sum().backward()
    return np.moveaxis(y.detach().numpy(), 1, -1), np.moveaxis(t.grad.numpy(), 1, -1), np.moveaxis(R, 1, -1)


LAYERS = {("max", 2): MaxPool2D, ("avg", 2): AvgPool2D, ("max", 1): MaxPool1D, ("avg", 1): AvgPool1D}
GRID = [(p, s, pad) for p in (1, 2, 3) for s in (1, 2, 3) for pad in ("valid", "same")]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("pool,strides,padding", GRID + [((2, 3), (1, 2), "valid"), ((3, 2), (2, 1), "same")])
def test_pool2d_matches_torch(kind, pool, strides, padding):
    torch = _torch()
    X = np.random.default_rng(1).standard_normal((2, 7, 6, 3))
    layer = standalone(LAYERS[kind, 2](pool, strides=strides, padding=padding), X.shape[1:])
    Y = layer.forward(X, True)
    tY, tdX, R = _torch_pool(torch, X, kind, layer.pool_size, layer.strides, padding)
    assert Y.shape == tY.shape == (2,) + layer.output_shape
    np.testing.assert_allclose(Y, tY, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.backward(R), tdX, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("pool,strides,padding", GRID)
def test_pool1d_matches_torch(kind, pool, strides, padding):
    torch = _torch()
    X = np.random.default_rng(2).standard_normal((3, 8, 2))
    layer = standalone(LAYERS[kind, 1](pool, strides=strides, padding=padding), X.shape[1:])
    Y = layer.forward(X, True)
    tY, tdX, R = _torch_pool(torch, X, kind, layer.pool_size, layer.strides, padding)
    assert Y.shape == tY.shape
    np.testing.assert_allclose(Y, tY, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.backward(R), tdX, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 5, 5, 2), (0, 5, 5, 2), (1, 1, 1, 1)], ids=["one", "empty", "1x1"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_one_and_empty_batches(shape, kind):
    layer = standalone(LAYERS[kind, 2](2, strides=2, padding="same"), shape[1:])
    X = np.random.default_rng(3).standard_normal(shape)
    Y = layer.forward(X, True)
    assert Y.shape == (shape[0],) + layer.output_shape
    dX = layer.backward(np.ones(Y.shape))
    assert dX.shape == shape
    if shape[0]:
        torch = _torch()
        tY, tdX, R = _torch_pool(torch, X, kind, (2, 2), (2, 2), "same")
        np.testing.assert_allclose(layer.forward(X, True), tY, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(layer.backward(R), tdX, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pad", [(0, 0), (1, 0), (1, 2)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernels_match_reference(dtype, pad, n_threads):
    """The compiled kernels against the numpy oracle, asymmetric windows and overlapping strides, with ties and
    repeated values (rounded inputs) so that the first-maximum rule is exercised."""
    rng = np.random.default_rng(4)
    X = np.round(rng.standard_normal((3, 9, 8, 5)), 1).astype(dtype)
    ph, pw, sh, sw = 3, 4, 2, 1
    pt, pl = pad
    OH, OW = (9 - 1 + pt) // sh + 1, (8 - 1 + pl) // sw + 1      # the last window starts inside the image
    dY = rng.standard_normal((3, OH, OW, 5)).astype(dtype)
    out = {}
    for name, mod in (("k", kern), ("r", ref)):
        Y, A, dX = np.empty(dY.shape, dtype), np.empty(dY.shape, np.int32), np.empty(X.shape, dtype)
        mod.max_pool2d_forward(X, Y, A, ph, pw, sh, sw, pt, pl, n_threads)
        mod.max_pool2d_backward(dY, A, dX, ph, pw, sh, sw, pt, pl, n_threads)
        Ya, dXa = np.empty(dY.shape, dtype), np.empty(X.shape, dtype)
        mod.avg_pool2d_forward(X, Ya, ph, pw, sh, sw, pt, pl, n_threads)
        mod.avg_pool2d_backward(dY, dXa, ph, pw, sh, sw, pt, pl, n_threads)
        out[name] = Y, A, dX, Ya, dXa
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_array_equal(out["k"][0], out["r"][0])
    np.testing.assert_array_equal(out["k"][1], out["r"][1])
    for a, b in zip(out["k"][2:], out["r"][2:]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_ties_send_the_gradient_to_the_first_maximum():
    X = np.zeros((1, 4, 4, 2))
    X[0, 2:, 2:, 1] = [[5.0, 5.0], [5.0, 1.0]]       # a tie in the bottom-right window of channel 1
    layer = standalone(MaxPool2D(2), X.shape[1:])
    layer.forward(X, True)
    dY = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    dX = layer.backward(dY)
    want = np.zeros_like(X)
    want[0, ::2, ::2, :] = dY[0]                     # all-equal windows: the top-left input
    np.testing.assert_array_equal(dX, want)
    # overlapping windows of a constant image: each output's gradient to its window's top-left
    layer = standalone(MaxPool2D(2, strides=1), (3, 3, 1))
    layer.forward(np.ones((1, 3, 3, 1)), True)
    dX = layer.backward(np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dX[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    torch = _torch()                                 # torch's CPU kernel also keeps the first maximum
    tY, tdX, R = _torch_pool(torch, np.ones((2, 5, 5, 3)), "max", (3, 3), (1, 1), "valid")
    layer = standalone(MaxPool2D(3, strides=1), (5, 5, 3))
    layer.forward(np.ones((2, 5, 5, 3)), True)
    np.testing.assert_array_equal(layer.backward(R), tdX)


def test_nan_propagates_and_its_gradient_goes_to_the_first_nan():
    X = np.zeros((1, 2, 4, 1))
    X[0, 0, 1, 0] = 3.0
    X[0, 1, 0, 0] = np.nan           # first window: the max 3 comes first in scan order, then a NaN
    X[0, 0, 3, 0] = np.nan           # second window: two NaNs, the first one wins
    X[0, 1, 2, 0] = np.nan
    layer = standalone(MaxPool2D(2), X.shape[1:])
    Y = layer.forward(X, True)
    assert np.isnan(Y).all()
    dX = layer.backward(np.array([[[[2.0], [5.0]]]]))
    want = np.zeros_like(X)
    want[0, 1, 0, 0] = 2.0
    want[0, 0, 3, 0] = 5.0
    np.testing.assert_array_equal(dX, want)
    g = standalone(GlobalMaxPooling2D(), X.shape[1:])
    assert np.isnan(g.forward(X, True)).all()
    dX = g.backward(np.ones((1, 1)))
    assert dX[0, 0, 3, 0] == 1.0 and dX.sum() == 1.0
    avg = standalone(AvgPool2D(2), X.shape[1:])
    assert np.isnan(avg.forward(X, True)).all()


@pytest.mark.parametrize("make,shape", [
    (lambda: AvgPool2D(3, strides=2, padding="same"), (2, 5, 4, 2)),
    (lambda: MaxPool2D(3, strides=2, padding="same"), (2, 5, 4, 2)),
    (lambda: MaxPool2D((2, 3), strides=1), (1, 4, 5, 2)),
    (lambda: MaxPool2D(2), (2, 5, 7, 3)),                    # tiled windows, few channels: the row-wise path
    (lambda: MaxPool2D((2, 3), strides=(2, 3)), (1, 4, 9, 17)),   # tiled, vectors over 17 channels
    (lambda: AvgPool1D(3, strides=2, padding="same"), (2, 6, 2)),
    (lambda: MaxPool1D(2, strides=1), (2, 5, 3)),
    (lambda: GlobalAveragePooling2D(), (2, 3, 2, 2)),
    (lambda: GlobalMaxPooling1D(), (2, 4, 3)),
], ids=["avg2d", "max2d", "max2d-rect", "max2d-tiled", "max2d-tiled-wide", "avg1d", "max1d", "gap2d", "gmp1d"])
def test_finite_differences(make, shape):
    """Float64 central differences of L = sum(Y * R); distinct inputs keep max pooling away from ties."""
    layer = standalone(make(), shape[1:])
    rng = np.random.default_rng(5)
    X = rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1
    Y = layer.forward(X, True)
    R = rng.standard_normal(Y.shape)
    dX = layer.backward(R).copy()
    assert_grad_close(dX, numeric_grad(lambda x: float(np.sum(layer.forward(x, True) * R)), X))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_float32_matches_float64(cls):
    X = np.random.default_rng(6).standard_normal((4, 9, 7, 5))
    R = np.random.default_rng(7).standard_normal((4, 5, 4, 5))
    res = {}
    for dtype in (np.float32, np.float64):
        layer = standalone(cls(3, strides=2, padding="same"), X.shape[1:], dtype=dtype)
        Y = layer.forward(X.astype(dtype), True)
        dX = layer.backward(R.astype(dtype))
        assert Y.dtype == dX.dtype == dtype
        res[dtype] = Y.astype(np.float64), dX.astype(np.float64)
    for a, b in zip(res[np.float32], res[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,shape,fn", [
    (GlobalAveragePooling2D, (3, 4, 5, 6), np.mean), (GlobalMaxPooling2D, (3, 4, 5, 6), np.max),
    (GlobalAveragePooling1D, (3, 7, 2), np.mean), (GlobalMaxPooling1D, (3, 7, 2), np.max),
    (GlobalAveragePooling2D, (0, 4, 5, 6), np.mean), (GlobalMaxPooling1D, (1, 1, 2), np.max)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_numpy(cls, shape, fn, keepdims):
    X = np.random.default_rng(8).standard_normal(shape)
    layer = standalone(cls(keepdims=keepdims), shape[1:])
    axes = tuple(range(1, len(shape) - 1))
    Y = layer.forward(X, True)
    want = fn(X, axis=axes, keepdims=keepdims) if shape[0] else np.empty((0,) + layer.output_shape)
    assert Y.shape == (shape[0],) + layer.output_shape
    np.testing.assert_allclose(Y, want, rtol=1e-13, atol=1e-13)
    dY = np.random.default_rng(9).standard_normal(Y.shape)
    dX = layer.backward(dY)
    g = dY.reshape(shape[0], *([1] * len(axes)), shape[-1])
    if fn is np.mean:
        want = np.broadcast_to(g / np.prod([shape[a] for a in axes]), shape)
    else:
        want = np.where(X == fn(X, axis=axes, keepdims=True), g, 0.0)
    np.testing.assert_allclose(dX, want, rtol=1e-13, atol=1e-13)


def test_buffers_are_reused_between_steps():
    layer = standalone(MaxPool2D(2), (4, 4, 3))
    X = np.random.default_rng(10).standard_normal((2, 4, 4, 3))
    Y1 = layer.forward(X, True)
    dX1 = layer.backward(np.ones(Y1.shape))
    Y2 = layer.forward(X + 1, True)
    dX2 = layer.backward(np.ones(Y2.shape))
    assert np.shares_memory(Y1, Y2) and np.shares_memory(dX1, dX2)


def test_small_cnn_fits_and_saves(tmp_path):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((96, 6, 6, 2))
    y = (X[..., 0].max(axis=(1, 2)) > 2.0).astype(int) + (X[..., 1].mean(axis=(1, 2)) > 0)
    model = fnn.Sequential([Dense(8, activation="relu"), MaxPool2D(2), GlobalAveragePooling2D(), Dense(3)],
                           input_shape=(6, 6, 2), seed=0)
    assert model.output_shape == (3,)
    model.compile("cross_entropy", fnn.optim.Adam(lr=2e-2))
    losses = model.fit(X, y, epochs=15, batch_size=32).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.85 * losses[0]
    path = tmp_path / "cnn.fnn"
    model.save(path)
    loaded = fnn.load(path)
    assert [type(l).__name__ for l in loaded.layers] == ["Dense", "MaxPool2D", "GlobalAveragePooling2D", "Dense"]
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D, MaxPool1D, AvgPool1D, GlobalMaxPooling2D,
                                 GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalAveragePooling1D, Permute])
def test_config_round_trip(cls):
    layer = (cls((2, 1)) if cls is Permute else cls(keepdims=True) if cls.__name__.startswith("Global")
             else cls(3, strides=2, padding="same"))
    again = cls.from_config(layer.get_config())
    assert again.get_config() == layer.get_config() and fnn.layers.REGISTRY[cls.__name__] is cls
    assert repr(again) == repr(layer)


def _same_as_channels_last(cf, cl, Xcf, R):
    """cf (Permute((2, 3, 1)) first, on NCHW Xcf) and cl (the channels-last model) with cf's weights: the same
    outputs, and the same parameter gradients for the output gradient R."""
    cl.parameters[...] = cf.parameters
    Xcl = np.ascontiguousarray(Xcf.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(cf.predict(Xcf), cl.predict(Xcl))
    grads = []
    for m, X in ((cf, Xcf), (cl, Xcl)):
        m.engine.forward(X, True)
        m.engine.backward(R.copy())
        grads.append(m.gradients.copy())
    assert np.any(grads[0] != 0)
    np.testing.assert_array_equal(grads[0], grads[1])


def test_permute_is_the_channels_first_path():
    """Permute((2, 3, 1)) on NCHW data: the same outputs and parameter gradients as the channels-last model on
    the transposed data; its own backward permutes the gradient back."""
    rng = np.random.default_rng(12)
    Xcf = rng.standard_normal((5, 2, 6, 6))
    L = fnn.layers
    cf = fnn.Sequential([Permute((2, 3, 1)), Dense(4, activation="relu"), MaxPool2D(2), GlobalAveragePooling2D(),
                         Dense(3)], input_shape=(2, 6, 6), seed=0,
                        dtype="float64")
    cl = fnn.Sequential([Dense(4, activation="relu"), L.MaxPool2D(2), L.GlobalAveragePooling2D(), Dense(3)],
                        input_shape=(6, 6, 2), seed=1, dtype="float64")
    _same_as_channels_last(cf, cl, Xcf, rng.standard_normal((5, 3)))
    p = standalone(Permute((3, 1, 2)), (2, 3, 4))
    X = rng.standard_normal((2, 2, 3, 4))
    Y = p.forward(X)
    np.testing.assert_array_equal(Y, X.transpose(0, 3, 1, 2))
    assert Y.flags.c_contiguous
    dY = rng.standard_normal(Y.shape)
    np.testing.assert_array_equal(p.backward(dY), dY.transpose(0, 2, 3, 1))


def _err(match, fn, *args, **kw):
    with pytest.raises((ValueError, TypeError), match=match):
        fn(*args, **kw)


def test_errors_name_the_layer_expected_and_given():
    _err(r"mp: MaxPool2D expects inputs of shape \(n, H, W, C\), got feature shape \(6, 2\)",
         standalone, MaxPool2D(2, name="mp"), (6, 2))
    _err(r"p1: MaxPool1D expects inputs of shape \(n, T, C\), got feature shape \(6, 6, 2\)",
         standalone, MaxPool1D(2, name="p1"), (6, 6, 2))
    _err(r"ap: AvgPool2D with padding='valid' needs every spatial size >= pool_size \(3, 3\), got input of "
         r"shape \(n, 2, 5, 1\)", standalone, AvgPool2D(3, name="ap"), (2, 5, 1))
    standalone(AvgPool2D(3, padding="same"), (2, 5, 1))                   # "same" pads instead
    _err(r"x \(MaxPool2D\): pool_size must be >= 1, got \(0, 2\)", MaxPool2D, (0, 2), name="x")
    _err(r"x \(MaxPool2D\): strides must be an int or a tuple of 2 ints, got \(1, 2, 3\)", MaxPool2D, 2,
         strides=(1, 2, 3), name="x")
    _err(r"pool_size must be an int, got \(2, 2\)", MaxPool1D, (2, 2))
    _err(r"pool_size must be an int or a tuple of 2 ints, got 2.0", AvgPool2D, 2.0)
    _err(r"padding must be 'valid' or 'same', got 'full'", MaxPool2D, 2, padding="full")
    _err("keepdims must be a bool", GlobalMaxPooling2D, keepdims=1)
    layer = standalone(MaxPool2D(2, name="m"), (4, 4, 3))
    _err(r"m: MaxPool2D expects inputs of shape \(n, H, W, C\), got \(4, 4, 3\)", layer.forward, np.zeros((4, 4, 3)))
    _err(r"m: expected inputs of shape \(n, 4, 4, 3\), got \(2, 4, 4, 2\)", layer.forward, np.zeros((2, 4, 4, 2)))
    model = fnn.Sequential([MaxPool2D(2), Dense(2)], input_shape=(4, 4, 3))
    _err(r"must have shape \(n, 4, 4, 3\)", model.predict, np.zeros((2, 4, 3)))
    _err(r"pe: dims must be a permutation of 1..3 .*got \(0, 1, 2\)", Permute, (0, 1, 2), name="pe")
    _err(r"dims must be a tuple of ints", Permute, 3)
    _err(r"pe: Permute\(2, 1\) expects samples of rank 2, got feature shape \(2, 3, 4\)",
         standalone, Permute((2, 1), name="pe"), (2, 3, 4))
    _err(r"max_pool2d_forward: padding must satisfy", kern.max_pool2d_forward, np.zeros((1, 4, 4, 1)),
         np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1), np.int32), 2, 2, 2, 2, 2, 0)
    _err(r"a window would hold no input", kern.avg_pool2d_forward, np.zeros((1, 4, 4, 1)), np.zeros((1, 3, 2, 1)),
         2, 2, 2, 2, 0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_threads_give_the_same_answer(dtype):
    """Large enough that the kernels split rows (forward) and images (backward) between 2 threads."""
    rng = np.random.default_rng(13)
    X = np.round(rng.standard_normal((8, 16, 16, 8)), 1).astype(dtype)
    dY = rng.standard_normal((8, 8, 8, 8)).astype(dtype)
    res = []
    for nt in (1, 2):
        Y, A, dX = np.empty(dY.shape, dtype), np.empty(dY.shape, np.int32), np.empty(X.shape, dtype)
        kern.max_pool2d_forward(X, Y, A, 3, 3, 2, 2, 1, 1, nt)
        kern.max_pool2d_backward(dY, A, dX, 3, 3, 2, 2, 1, 1, nt)
        Ya, dXa = np.empty(dY.shape, dtype), np.empty(X.shape, dtype)
        kern.avg_pool2d_forward(X, Ya, 3, 3, 2, 2, 1, 1, nt)
        kern.avg_pool2d_backward(dY, dXa, 3, 3, 2, 2, 1, 1, nt)
        res.append((Y, A, dX, Ya, dXa))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)
    Yr, Ar, dXr = np.empty(dY.shape, dtype), np.empty(dY.shape, np.int32), np.empty(X.shape, dtype)
    ref.max_pool2d_forward(X, Yr, Ar, 3, 3, 2, 2, 1, 1)
    ref.max_pool2d_backward(dY, Ar, dXr, 3, 3, 2, 2, 1, 1)
    np.testing.assert_array_equal(res[1][1], Ar)
    np.testing.assert_allclose(res[1][2], dXr, rtol=1e-6, atol=1e-6)


def test_variable_spatial_sizes():
    """Built on (None, None, C): pooling sizes its output per batch; global pooling gives (n, C) for any size."""
    L = fnn.layers
    model = fnn.Sequential([L.MaxPool2D(2, padding="same"), Dense(4), L.GlobalAveragePooling2D(), Dense(3)],
                           input_shape=(None, None, 2), seed=0, dtype="float64")
    assert [l.output_shape for l in model.layers] == [(None, None, 2), (None, None, 4), (4,), (3,)]
    for shape in ((2, 5, 7, 2), (3, 4, 4, 2)):
        X = np.random.default_rng(14).standard_normal(shape)
        assert model.predict(X).shape == (shape[0], 3)
    seq = fnn.Sequential([L.MaxPool1D(3, name="p"), L.GlobalMaxPooling1D(), Dense(2)], input_shape=(None, 4))
    assert seq.predict(np.ones((2, 9, 4), np.float32)).shape == (2, 2)
    _err(r"p: MaxPool1D with padding='valid' needs every spatial size >= pool_size \(3,\), got input of shape "
         r"\(2, 2, 4\)", seq.predict, np.ones((2, 2, 4), np.float32))


TILED = [(C, pool, size) for C in (1, 5, 16, 19) for pool, size in (((2, 2), (7, 9)), ((3, 2), (9, 8)),
                                                                     ((2, 3), (4, 7)))]
TILED += [(1, (2, 2), (2, 1100)), (5, (2, 2), (3, 1000))]       # 500 output columns x C > the flat row buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C,pool,size", TILED)
def test_tiled_max_pooling_matches_reference(dtype, C, pool, size):
    """Windows that tile the image (stride == pool, no padding): the paths for few channels (a whole output row
    per window position) and for many (vectors over C), and the fallback for rows longer than the flat buffer,
    against the numpy oracle: ties (rounded inputs), NaNs, odd sizes whose last rows/columns no window covers
    (their gradient must be written as zeros over whatever dX held), 1 and 2 threads."""
    rng = np.random.default_rng(C)
    H, W = size
    X = np.round(rng.standard_normal((3, H, W, C)), 1).astype(dtype)
    X.reshape(-1)[rng.choice(X.size, max(1, X.size // 97), replace=False)] = np.nan
    ph, pw = pool
    OH, OW = H // ph, W // pw
    dY = rng.standard_normal((3, OH, OW, C)).astype(dtype)
    got = {}
    for name, mod in (("k1", kern), ("k2", kern), ("r", ref)):
        Y, A = np.full(dY.shape, 7, dtype), np.full(dY.shape, -1, np.int32)
        dX = np.full(X.shape, np.nan, dtype)
        nt = 2 if name == "k2" else 1
        mod.max_pool2d_forward(X, Y, A, ph, pw, ph, pw, 0, 0, nt)
        mod.max_pool2d_backward(dY, A, dX, ph, pw, ph, pw, 0, 0, nt)
        got[name] = Y, A, dX
    for name in ("k1", "k2"):
        for a, b in zip(got[name], got["r"]):
            np.testing.assert_array_equal(a, b)


def test_permute_then_conv2d_is_the_pytorch_layout_path():
    """The README's path for (N, C, H, W) arrays with a convolution first: Permute((2, 3, 1)) then Conv2D equals
    the channels-last model on the transposed data, outputs and every parameter gradient, and a PyTorch Conv2d's
    weight maps as w.permute(2, 3, 1, 0)."""
    L = fnn.layers
    rng = np.random.default_rng(13)
    Xcf = rng.standard_normal((3, 2, 7, 5))                          # odd sizes, 2 channels
    cf = fnn.Sequential([Permute((2, 3, 1)), L.Conv2D(4, 3, padding="same", activation="relu"),
                         GlobalAveragePooling2D(), Dense(3)], input_shape=(2, 7, 5), seed=0, dtype="float64")
    cl = fnn.Sequential([L.Conv2D(4, 3, padding="same", activation="relu"), GlobalAveragePooling2D(), Dense(3)],
                        input_shape=(7, 5, 2), seed=1, dtype="float64")
    _same_as_channels_last(cf, cl, Xcf, rng.standard_normal((3, 3)))
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(2, 4, 3, padding=1, dtype=torch.float64)
    cf.layers[1].params["weight"][...] = conv.weight.detach().permute(2, 3, 1, 0).numpy()
    cf.layers[1].params["bias"][...] = conv.bias.detach().numpy()
    want = torch.relu(conv(torch.from_numpy(Xcf))).detach().numpy().transpose(0, 2, 3, 1)
    got = cf.engine.forward(Xcf, False)
    np.testing.assert_allclose(cf.engine.values[1], want, rtol=1e-12, atol=1e-12)
    assert got.shape == (3, 3)
