"""The compiled kernels (activations, dense, losses, gemm) against the numpy reference and against calculus.

Table-driven: one row per activation and per loss; every test is swept over float32/float64 and, where the
kernel takes it, over n_threads 1 and 2.  The large shape (300 x 200 = 60000 elements) is above the
2 x FNN_MIN_PER_THREAD (2 x 16384) elements that the kernels need before they split rows over 2 threads.
OUT buffers are pre-filled with NaN, so a kernel that skips writing them cannot pass.
"""
import functools
import math
import os
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import scipy_openblas32  # noqa: F401  (loads the BLAS before the extensions; fastnn/__init__ does it too)

from fastnn import _reference as ref
from fastnn._core import _threads, activations, dense, losses
from fastnn._core.kinds import ACT, LOSS

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:  # run from elsewhere than the repository root
    sys.path.insert(0, os.path.dirname(__file__))
    from _gradcheck import assert_grad_close, numeric_grad

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# No overflow, log(0) or nan on the way (underflow of e^-2000 to 0 is expected and harmless).
NO_FP_TROUBLE = dict(over="raise", divide="raise", invalid="raise")
THREADS = [1, 2]
BIG = (300, 200)   # 60000 elements: the kernels split it over 2 threads

# (kind, name, alpha): the kernel's activation table, one row per kind of csrc/fnn_kinds.h (checked below).
ACTIVATIONS = [
    (ACT.IDENTITY, "identity", 0.0),
    (ACT.RELU, "relu", 0.0),
    (ACT.LEAKY_RELU, "leaky_relu", 0.1),
    (ACT.SIGMOID, "sigmoid", 0.0),
    (ACT.TANH, "tanh", 0.0),
    (ACT.GELU, "gelu", 0.0),
    (ACT.GELU_TANH, "gelu_tanh", 0.0),
    (ACT.SILU, "silu", 0.0),
    (ACT.ELU, "elu", 0.7),
    (ACT.SELU, "selu", 0.0),
    (ACT.SOFTPLUS, "softplus", 0.0),
    (ACT.MISH, "mish", 0.0),
    (ACT.SOFTMAX, "softmax", 0.0),
]
ELEMENTWISE = [a for a in ACTIVATIONS if a[1] != "softmax"]
ACT_IDS = [a[1] for a in ACTIVATIONS]
SHAPES = [(0, 7), (1, 7), (5, 3), BIG]

# The compiled kernels gathered under the reference's names, to run one table against both.
compiled = SimpleNamespace(
    activation_forward=activations.activation_forward,
    activation_backward=activations.activation_backward,
    dense_forward=dense.dense_forward,
    dense_backward=dense.dense_backward,
    softmax_cross_entropy=losses.softmax_cross_entropy,
    softmax_cross_entropy_soft=losses.softmax_cross_entropy_soft,
    sigmoid_binary_cross_entropy=losses.sigmoid_binary_cross_entropy,
    regression_loss=losses.regression_loss,
)
IMPLS = pytest.mark.parametrize("impl", [compiled, ref], ids=["compiled", "reference"])


def nan(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


def assert_close(got, want, dtype):
    """got == want to the dtype's tolerance, relative to each element and to the array's scale."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    rtol = RTOL[dtype]
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1.0))


def away_from_zero(rng, shape, lo=0.2, hi=2.0):
    """Random values with |x| in [lo, hi): no kink of relu / leaky relu / |.| within reach of eps."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, hi, size=shape)


# ------------------------------------------------------------------------------------- activations
def test_activation_table_covers_every_kind():
    """A new row of csrc/fnn_kinds.h needs its row in ACTIVATIONS above (and its math in fastnn/_reference.py)."""
    assert {a[0] for a in ACTIVATIONS} == set(ACT)
    assert all(a[1] == a[0].label for a in ACTIVATIONS)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_forward_matches_reference(dtype, n_threads, kind, name, alpha, shape):
    rng = np.random.default_rng(0)
    Z = (3 * rng.standard_normal(shape)).astype(dtype)
    Z0 = Z.copy()
    Y = nan(shape, dtype)
    activations.activation_forward(kind, Z, Y, alpha=alpha, n_threads=n_threads)
    Y_ref = nan(shape, dtype)
    ref.activation_forward(kind, Z, Y_ref, alpha=alpha)
    assert not np.isnan(Y).any(), "Y was not (fully) written"
    assert_close(Y, Y_ref, dtype)
    np.testing.assert_array_equal(Z, Z0)   # no bias: Z is left alone


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward_matches_reference(dtype, n_threads, kind, name, alpha, shape):
    rng = np.random.default_rng(1)
    Z = (3 * rng.standard_normal(shape)).astype(dtype)
    Y = np.empty_like(Z)
    ref.activation_forward(kind, Z, Y, alpha=alpha)
    dY = rng.standard_normal(shape).astype(dtype)
    dZ = nan(shape, dtype)
    activations.activation_backward(kind, Z, Y, dY, dZ, alpha=alpha, n_threads=n_threads)
    dZ_ref = nan(shape, dtype)
    ref.activation_backward(kind, Z, Y, dY, dZ_ref, alpha=alpha)
    assert not np.isnan(dZ).any(), "dZ was not (fully) written"
    assert_close(dZ, dZ_ref, dtype)


@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_one_vs_two_threads(dtype, kind, name, alpha):
    rng = np.random.default_rng(2)
    Z = (3 * rng.standard_normal(BIG)).astype(dtype)
    dY = rng.standard_normal(BIG).astype(dtype)
    out = {}
    for nt in THREADS:
        Y, dZ = nan(BIG, dtype), nan(BIG, dtype)
        activations.activation_forward(kind, Z, Y, alpha=alpha, n_threads=nt)
        activations.activation_backward(kind, Z, Y, dY, dZ, alpha=alpha, n_threads=nt)
        out[nt] = (Y, dZ)
    assert not np.isnan(out[2][0]).any() and not np.isnan(out[2][1]).any()
    np.testing.assert_array_equal(out[1][0], out[2][0])
    np.testing.assert_array_equal(out[1][1], out[2][1])


@pytest.mark.parametrize("shape", [(5, 3), BIG], ids=str)
@pytest.mark.parametrize("kind,name,alpha", ELEMENTWISE, ids=[a[1] for a in ELEMENTWISE])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_in_place(dtype, kind, name, alpha, shape):
    """Y may be Z (elementwise kinds), dZ may be dY (every kind): the result is the same."""
    rng = np.random.default_rng(3)
    Z = (3 * rng.standard_normal(shape)).astype(dtype)
    Y_ref = np.empty_like(Z)
    ref.activation_forward(kind, Z, Y_ref, alpha=alpha)
    Y = Z.copy()
    activations.activation_forward(kind, Y, Y, alpha=alpha, n_threads=2)
    assert_close(Y, Y_ref, dtype)

    dY = rng.standard_normal(shape).astype(dtype)
    dZ_ref = np.empty_like(Z)
    ref.activation_backward(kind, Z, Y_ref, dY, dZ_ref, alpha=alpha)
    buf = dY.copy()
    activations.activation_backward(kind, Z, Y_ref, buf, buf, alpha=alpha, n_threads=2)
    assert_close(buf, dZ_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_in_place(dtype):
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((6, 5)).astype(dtype)
    Y = np.empty_like(Z)
    ref.activation_forward(ACT.SOFTMAX, Z, Y)
    dY = rng.standard_normal(Z.shape).astype(dtype)
    want = np.empty_like(Z)
    ref.activation_backward(ACT.SOFTMAX, Z, Y, dY, want)
    activations.activation_backward(ACT.SOFTMAX, Z, Y, dY, dY)
    assert_close(dY, want, dtype)


@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
def test_activation_gradcheck(kind, name, alpha):
    """activation_backward == d/dZ sum(R * act(Z)), numerically from activation_forward, float64."""
    rng = np.random.default_rng(5)
    Z = away_from_zero(rng, (4, 5))
    R = rng.standard_normal(Z.shape)

    def f(z):
        y = np.empty_like(z)
        activations.activation_forward(kind, z, y, alpha=alpha)
        return np.sum(R * y)

    Y = np.empty_like(Z)
    activations.activation_forward(kind, Z, Y, alpha=alpha)
    dZ = nan(Z.shape, np.float64)
    activations.activation_backward(kind, Z, Y, R, dZ, alpha=alpha)
    assert_grad_close(dZ, numeric_grad(f, Z))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_without_overflow(dtype):
    Z = np.array([[100.0, -100.0, 1000.0, -1000.0, 0.0]], dtype=dtype)
    Y = nan(Z.shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        activations.activation_forward(ACT.SIGMOID, Z, Y)
        Y_ref = nan(Z.shape, dtype)
        with np.errstate(**NO_FP_TROUBLE):
            ref.activation_forward(ACT.SIGMOID, Z, Y_ref)
    for y in (Y, Y_ref):
        assert y[0, 0] == 1.0 and y[0, 2] == 1.0 and y[0, 3] == 0.0 and y[0, 4] == 0.5
        # sigmoid(-100) = e^-100 / (1 + e^-100) = 3.7e-44: not 0, but tiny and not negative
        assert 0.0 <= y[0, 1] < 1e-40
    if dtype == np.float64:
        assert Y[0, 1] == pytest.approx(math.exp(-100.0), rel=1e-12)
    dZ = nan(Z.shape, dtype)
    activations.activation_backward(ACT.SIGMOID, Z, Y, np.ones_like(Z), dZ)
    assert np.all(np.isfinite(dZ)) and dZ[0, 0] == 0.0 and dZ[0, 2] == 0.0 and dZ[0, 4] == 0.25


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits(dtype, n_threads):
    Z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [1000.0, 1000.0]], dtype=dtype)
    Y = nan(Z.shape, dtype)
    activations.activation_forward(ACT.SOFTMAX, Z, Y, n_threads=n_threads)
    np.testing.assert_array_equal(Y, np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=dtype))
    Y_ref = nan(Z.shape, dtype)
    with np.errstate(**NO_FP_TROUBLE):
        ref.activation_forward(ACT.SOFTMAX, Z, Y_ref)
    np.testing.assert_array_equal(Y_ref, Y)


# ------------------------------------------------------------------------------------------- dense
DENSE_SHAPES = [(0, 4, 3), (1, 4, 3), (3, 0, 4), (6, 5, 4), (300, 32, 200)]


def dense_inputs(rng, dtype, n, n_in, n_out):
    X = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(max(n_in, 1))).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    return X, W, b


def dense_fwd(mod, X, W, b, act, alpha, n_threads=1):
    n, n_out = X.shape[0], W.shape[1]
    Z, Y = nan((n, n_out), X.dtype), nan((n, n_out), X.dtype)
    mod.dense_forward(X, W, b, Z, Y, act=act, alpha=alpha, n_threads=n_threads)
    return Z, Y


def dense_bwd(mod, X, W, Z, Y, dY, act, alpha, n_threads=1, with_dX=True, with_db=True):
    n, n_in, n_out = X.shape[0], X.shape[1], W.shape[1]
    dZ = nan((n, n_out), X.dtype)
    dX = nan((n, n_in), X.dtype) if with_dX else None
    dW = nan((n_in, n_out), X.dtype)
    db = nan(n_out, X.dtype) if with_db else None
    mod.dense_backward(X, W, Z, Y, dY.copy(), dZ, dX, dW, db, act=act, alpha=alpha, n_threads=n_threads)
    return dZ, dX, dW, db


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matches_reference(dtype, n_threads, kind, name, alpha, shape):
    rng = np.random.default_rng(10)
    X, W, b = dense_inputs(rng, dtype, *shape)
    Z, Y = dense_fwd(dense, X, W, b, kind, alpha, n_threads)
    Zr, Yr = dense_fwd(ref, X, W, b, kind, alpha)
    assert not np.isnan(Z).any() and not np.isnan(Y).any()
    assert_close(Z, Zr, dtype)
    assert_close(Y, Yr, dtype)

    dY = rng.standard_normal(Y.shape).astype(dtype)
    got = dense_bwd(dense, X, W, Z, Y, dY, kind, alpha, n_threads)
    want = dense_bwd(ref, X, W, Z, Y, dY, kind, alpha)
    names = ["dZ", "dX", "dW", "db"]
    if kind == ACT.IDENTITY:        # the identity does not use its dZ scratch
        got, want, names = got[1:], want[1:], names[1:]
    for nm, g, w in zip(names, got, want):
        assert not np.isnan(g).any(), f"{nm} was not (fully) written"
        assert_close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_optional_outputs(dtype):
    """b, dX, db may be None; the rest is unchanged by their absence."""
    rng = np.random.default_rng(11)
    X, W, b = dense_inputs(rng, dtype, 6, 5, 4)
    Z, Y = dense_fwd(dense, X, W, None, 4, 0.0)
    Zr, Yr = dense_fwd(ref, X, W, None, 4, 0.0)
    assert_close(Z, Zr, dtype)
    assert_close(Y, Yr, dtype)
    dY = rng.standard_normal(Y.shape).astype(dtype)
    full = dense_bwd(dense, X, W, Z, Y, dY, 4, 0.0)
    dZ, dX, dW, db = dense_bwd(dense, X, W, Z, Y, dY, 4, 0.0, with_dX=False, with_db=False)
    assert dX is None and db is None
    np.testing.assert_array_equal(dW, full[2])
    np.testing.assert_array_equal(dZ, full[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_in_place_buffers(dtype):
    """Y may be Z for the identity; dZ may be dY: results are those of separate buffers."""
    rng = np.random.default_rng(12)
    X, W, b = dense_inputs(rng, dtype, 7, 5, 6)
    Zr, Yr = dense_fwd(ref, X, W, b, 0, 0.0)
    Z = nan(Zr.shape, dtype)
    dense.dense_forward(X, W, b, Z, Z)
    assert_close(Z, Zr, dtype)

    Z, Y = dense_fwd(dense, X, W, b, 1, 0.0)
    dY = rng.standard_normal(Y.shape).astype(dtype)
    want = dense_bwd(ref, X, W, Z, Y, dY, 1, 0.0)
    g = dY.copy()
    dX, dW, db = nan(X.shape, dtype), nan(W.shape, dtype), nan(b.shape, dtype)
    dense.dense_backward(X, W, Z, Y, g, g, dX, dW, db, act=ACT.RELU)
    for got, w in zip((g, dX, dW, db), want):
        assert_close(got, w, dtype)


@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_one_vs_two_threads(dtype, kind, name, alpha):
    rng = np.random.default_rng(13)
    X, W, b = dense_inputs(rng, dtype, 300, 32, 200)
    outs = []
    for nt in THREADS:
        Z, Y = dense_fwd(dense, X, W, b, kind, alpha, nt)
        dY = np.ones_like(Y)
        outs.append((Z, Y) + dense_bwd(dense, X, W, Z, Y, dY, kind, alpha, nt))
    for a, c in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind,name,alpha", ACTIVATIONS, ids=ACT_IDS)
def test_dense_gradcheck(kind, name, alpha):
    """dX, dW, db of dense_backward == gradients of sum(R * dense_forward(X, W, b)), float64."""
    rng = np.random.default_rng(14)
    X, W, b = dense_inputs(rng, np.float64, 4, 3, 5)
    R = rng.standard_normal((4, 5))
    Z, Y = dense_fwd(dense, X, W, b, kind, alpha)
    assert np.min(np.abs(Z)) > 1e-3     # away from the relu kinks (fixed seed)

    def f(X=X, W=W, b=b):
        return np.sum(R * dense_fwd(dense, X, W, b, kind, alpha)[1])

    dZ, dX, dW, db = dense_bwd(dense, X, W, Z, Y, R, kind, alpha)
    assert_grad_close(dX, numeric_grad(lambda x: f(X=x), X))
    assert_grad_close(dW, numeric_grad(lambda w: f(W=w), W))
    assert_grad_close(db, numeric_grad(lambda c: f(b=c), b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_empty_batch_zeroes_gradients(dtype):
    X = np.zeros((0, 4), dtype)
    W = np.ones((4, 3), dtype)
    Z, Y = nan((0, 3), dtype), nan((0, 3), dtype)
    dense.dense_forward(X, W, np.ones(3, dtype), Z, Y)
    dW, db = nan((4, 3), dtype), nan(3, dtype)
    dense.dense_backward(X, W, Z, Y, nan((0, 3), dtype), nan((0, 3), dtype), nan((0, 4), dtype), dW, db, act=ACT.RELU)
    np.testing.assert_array_equal(dW, 0)
    np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_read_only_inputs(dtype):
    rng = np.random.default_rng(15)
    X, W, b = dense_inputs(rng, dtype, 5, 4, 3)
    for a in (X, W, b):
        a.flags.writeable = False
    Z, Y = dense_fwd(dense, X, W, b, 3, 0.0)
    Zr, Yr = dense_fwd(ref, X, W, b, 3, 0.0)
    assert_close(Y, Yr, dtype)
    Z.flags.writeable = Y.flags.writeable = False
    dY = np.ones(Y.shape, dtype)
    got = dense_bwd(dense, X, W, Z, Y, dY, 3, 0.0)
    want = dense_bwd(ref, X, W, Z, Y, dY, 3, 0.0)
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


# -------------------------------------------------------------------------------------------- losses
def _labels(rng, n, k, dtype):
    return rng.integers(0, k, size=n).astype(np.intp)


def _soft_targets(rng, n, k, dtype):
    """Probability rows, with some exact zeros, and one row that does not sum to 1 (torch allows it)."""
    t = rng.uniform(size=(n, k)) * (rng.uniform(size=(n, k)) > 0.3)
    t[:, 0] += 0.01
    t /= t.sum(axis=1, keepdims=True)
    if n > 1:
        t[-1] *= 0.5
    return t.astype(dtype)


def _binary_targets(rng, n, k, dtype):
    t = (rng.uniform(size=(n, k)) > 0.5).astype(np.float64)
    t[: n // 2] = rng.uniform(size=t[: n // 2].shape)   # soft labels too
    return t.astype(dtype)


def _regression_targets(rng, n, k, dtype):
    return rng.standard_normal((n, k)).astype(dtype)


# name: (compiled function, reference function, targets maker)
LOSSES = {
    "softmax_ce": (losses.softmax_cross_entropy, ref.softmax_cross_entropy, _labels),
    "softmax_ce_soft": (losses.softmax_cross_entropy_soft, ref.softmax_cross_entropy_soft, _soft_targets),
    "sigmoid_bce": (losses.sigmoid_binary_cross_entropy, ref.sigmoid_binary_cross_entropy, _binary_targets),
    "l2": (functools.partial(losses.regression_loss, LOSS.L2), functools.partial(ref.regression_loss, LOSS.L2),
           _regression_targets),
    "mse": (functools.partial(losses.regression_loss, LOSS.MSE), functools.partial(ref.regression_loss, LOSS.MSE),
            _regression_targets),
    "mae": (functools.partial(losses.regression_loss, LOSS.MAE), functools.partial(ref.regression_loss, LOSS.MAE),
            _regression_targets),
}
LOSS_NAMES = list(LOSSES)
LOSS_SHAPES = [(0, 5), (1, 5), (7, 4), BIG]


def loss_inputs(name, rng, shape, dtype):
    n, k = shape
    Z = (2 * rng.standard_normal(shape)).astype(dtype)
    T = LOSSES[name][2](rng, n, k, dtype)
    if name == "mae" and Z.size:
        Z.reshape(-1)[::5] = T.reshape(-1)[::5]      # exact ties: sign(0) = 0
    return Z, T


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_matches_reference(dtype, name, shape):
    fn, fn_ref, _ = LOSSES[name]
    rng = np.random.default_rng(20)
    Z, T = loss_inputs(name, rng, shape, dtype)
    dZ = nan(shape, dtype)
    loss, n_correct = fn(Z, T, dZ)
    dZ_ref = nan(shape, dtype)
    loss_ref, n_correct_ref = fn_ref(Z, T, dZ_ref)
    assert isinstance(loss, float) and isinstance(n_correct, int)
    assert n_correct == n_correct_ref
    if math.isnan(loss_ref):
        assert math.isnan(loss)
    else:
        assert loss == pytest.approx(loss_ref, rel=RTOL[dtype], abs=RTOL[dtype])
    assert not np.isnan(dZ).any(), "dZ was not (fully) written"
    assert_close(dZ, dZ_ref, dtype)
    # value only (no gradient buffer): the same loss
    loss2, n_correct2 = fn(Z, T)
    assert n_correct2 == n_correct
    assert loss2 == loss or (math.isnan(loss2) and math.isnan(loss))


def test_loss_empty_values():
    """n = 0: nan for the means, 0.0 for the l2 sum (compiled and reference agree)."""
    Z = np.zeros((0, 3))
    for name, (fn, fn_ref, _) in LOSSES.items():
        T = np.zeros(0, np.intp) if name == "softmax_ce" else np.zeros((0, 3))
        for f in (fn, fn_ref):
            loss, n_correct = f(Z, T, np.zeros((0, 3)))
            assert n_correct == 0
            if name == "l2":
                assert loss == 0.0
            else:
                assert math.isnan(loss)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_gradcheck(name):
    fn = LOSSES[name][0]
    rng = np.random.default_rng(21)
    Z, T = loss_inputs(name, rng, (4, 5), np.float64)
    if name == "mae":
        Z = T + away_from_zero(rng, T.shape)    # |p - t| >= 0.2: no kink within reach
    dZ = nan(Z.shape, np.float64)
    fn(Z, T, dZ)
    assert_grad_close(dZ, numeric_grad(lambda z: fn(z, T)[0], Z))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype):
    # row 0: correct with a margin of 2000 (loss 0); row 1: wrong by 2000 (loss 2000)
    Z = np.array([[1000.0, -1000.0, -1000.0], [1000.0, -1000.0, -1000.0]], dtype=dtype)
    labels = np.array([0, 1], dtype=np.intp)
    want_grad = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]) / 2
    for fn in (losses.softmax_cross_entropy, ref.softmax_cross_entropy):
        dZ = nan(Z.shape, dtype)
        with np.errstate(**NO_FP_TROUBLE):
            loss, n_correct = fn(Z, labels, dZ)
        assert loss == pytest.approx(1000.0, rel=1e-12)
        assert n_correct == 1
        np.testing.assert_array_equal(dZ, want_grad.astype(dtype))
        loss0, _ = fn(Z[:1], labels[:1])
        assert loss0 == 0.0
        loss1, _ = fn(Z[1:], labels[1:])
        assert loss1 == pytest.approx(2000.0, rel=1e-12)

    T = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=dtype)   # row 1: half right, half wrong by 2000
    want_grad = np.array([[0.0, 0.0, 0.0], [0.5, -0.5, 0.0]]) / 2
    for fn in (losses.softmax_cross_entropy_soft, ref.softmax_cross_entropy_soft):
        dZ = nan(Z.shape, dtype)
        with np.errstate(**NO_FP_TROUBLE):
            loss, n_correct = fn(Z, T, dZ)
        assert loss == pytest.approx((0.0 + 1000.0) / 2, rel=1e-12)
        assert n_correct == 2
        np.testing.assert_array_equal(dZ, want_grad.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_extreme_logits(dtype):
    Z = np.array([[1000.0, -1000.0, 1000.0, -1000.0]], dtype=dtype)
    T = np.array([[1.0, 1.0, 0.0, 0.0]], dtype=dtype)
    for fn in (losses.sigmoid_binary_cross_entropy, ref.sigmoid_binary_cross_entropy):
        dZ = nan(Z.shape, dtype)
        with np.errstate(**NO_FP_TROUBLE):
            loss, n_correct = fn(Z, T, dZ)
        assert loss == pytest.approx((0.0 + 1000.0 + 1000.0 + 0.0) / 4, rel=1e-12)
        assert n_correct == 2
        np.testing.assert_array_equal(dZ, (np.array([[0.0, -1.0, 1.0, 0.0]]) / 4).astype(dtype))
        assert fn(Z[:, [0, 3]], T[:, [0, 3]])[0] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_regression_loss_values(dtype):
    """Hand-computed: d = [1, -2, 0, 0.5]."""
    P = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=dtype)
    T = np.array([[0.0, 0.0], [3.0, 0.0]], dtype=dtype)
    want = {LOSS.L2: (5.25, [[2.0, -4.0], [0.0, 1.0]]),
            LOSS.MSE: (5.25 / 4, [[0.5, -1.0], [0.0, 0.25]]),
            LOSS.MAE: (3.5 / 4, [[0.25, -0.25], [0.0, 0.25]])}
    for kind, (loss_want, grad_want) in want.items():
        for fn in (losses.regression_loss, ref.regression_loss):
            dP = nan(P.shape, dtype)
            loss, n_correct = fn(kind, P, T, dP)
            assert (loss, n_correct) == (pytest.approx(loss_want, rel=1e-12), 0)
            np.testing.assert_array_equal(dP, np.array(grad_want, dtype=dtype))


def test_losses_read_only_inputs():
    rng = np.random.default_rng(22)
    for name, (fn, fn_ref, _) in LOSSES.items():
        Z, T = loss_inputs(name, rng, (5, 4), np.float64)
        Z.flags.writeable = False
        T.flags.writeable = False
        dZ, dZ_ref = nan(Z.shape, np.float64), nan(Z.shape, np.float64)
        assert fn(Z, T, dZ)[0] == pytest.approx(fn_ref(Z, T, dZ_ref)[0], rel=1e-12)
        assert_close(dZ, dZ_ref, np.float64)


# -------------------------------------------------------------------------------------------- errors
@IMPLS
@pytest.mark.parametrize("bad", [3, 7, -1])
def test_label_out_of_range(impl, bad):
    Z = np.zeros((4, 3))
    labels = np.array([0, 2, bad, 1], dtype=np.intp)
    with pytest.raises(ValueError, match=rf"label {bad}\b.*row 2"):
        impl.softmax_cross_entropy(Z, labels, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=rf"label {bad}\b"):
        impl.softmax_cross_entropy(Z, labels)


def _z(*shape):
    return np.zeros(shape)


# (description, call(impl)) with mismatched shapes: each must raise ValueError.
SHAPE_ERRORS = [
    ("act_fwd Y", lambda m: m.activation_forward(ACT.RELU, _z(3, 4), _z(3, 5))),
    ("act_fwd Y rows", lambda m: m.activation_forward(ACT.SOFTMAX, _z(3, 4), _z(2, 4))),
    ("act_bwd dY", lambda m: m.activation_backward(ACT.RELU, _z(3, 4), _z(3, 4), _z(3, 5), _z(3, 4))),
    ("act_bwd dZ", lambda m: m.activation_backward(ACT.SIGMOID, _z(3, 4), _z(3, 4), _z(3, 4), _z(4, 4))),
    ("act_bwd Y", lambda m: m.activation_backward(ACT.SIGMOID, _z(3, 4), _z(2, 4), _z(3, 4), _z(3, 4))),
    ("dense_fwd W", lambda m: m.dense_forward(_z(3, 4), _z(5, 2), None, _z(3, 2), _z(3, 2))),
    ("dense_fwd b", lambda m: m.dense_forward(_z(3, 4), _z(4, 2), _z(3), _z(3, 2), _z(3, 2))),
    ("dense_fwd Z", lambda m: m.dense_forward(_z(3, 4), _z(4, 2), None, _z(3, 3), _z(3, 2))),
    ("dense_fwd Y", lambda m: m.dense_forward(_z(3, 4), _z(4, 2), None, _z(3, 2), _z(2, 2))),
    ("dense_bwd dW", lambda m: m.dense_backward(_z(3, 4), _z(4, 2), _z(3, 2), _z(3, 2), _z(3, 2), _z(3, 2),
                                                _z(3, 4), _z(2, 4), _z(2))),
    ("dense_bwd dX", lambda m: m.dense_backward(_z(3, 4), _z(4, 2), _z(3, 2), _z(3, 2), _z(3, 2), _z(3, 2),
                                                _z(3, 2), _z(4, 2), _z(2))),
    ("dense_bwd db", lambda m: m.dense_backward(_z(3, 4), _z(4, 2), _z(3, 2), _z(3, 2), _z(3, 2), _z(3, 2),
                                                _z(3, 4), _z(4, 2), _z(4))),
    ("dense_bwd dY", lambda m: m.dense_backward(_z(3, 4), _z(4, 2), _z(3, 2), _z(3, 2), _z(2, 2), _z(3, 2),
                                                _z(3, 4), _z(4, 2), _z(2))),
    ("ce labels", lambda m: m.softmax_cross_entropy(_z(3, 4), np.zeros(2, np.intp))),
    ("ce dZ", lambda m: m.softmax_cross_entropy(_z(3, 4), np.zeros(3, np.intp), _z(3, 3))),
    ("ce no classes", lambda m: m.softmax_cross_entropy(_z(3, 0), np.zeros(3, np.intp))),
    ("ce_soft T", lambda m: m.softmax_cross_entropy_soft(_z(3, 4), _z(3, 5))),
    ("ce_soft dZ", lambda m: m.softmax_cross_entropy_soft(_z(3, 4), _z(3, 4), _z(4, 4))),
    ("bce T", lambda m: m.sigmoid_binary_cross_entropy(_z(3, 4), _z(4, 3))),
    ("bce dZ", lambda m: m.sigmoid_binary_cross_entropy(_z(3, 4), _z(3, 4), _z(3, 5))),
    ("regression T", lambda m: m.regression_loss(LOSS.MSE, _z(3, 4), _z(3, 1))),
    ("regression dP", lambda m: m.regression_loss(LOSS.L2, _z(3, 4), _z(3, 4), _z(1, 4))),
]
# (description, call(impl)) with an unknown kind (just past the table, or negative): ValueError.
KIND_ERRORS = [
    ("act_fwd kind past the table", lambda m: m.activation_forward(len(ACT), _z(2, 2), _z(2, 2))),
    ("act_bwd kind -1", lambda m: m.activation_backward(-1, _z(2, 2), _z(2, 2), _z(2, 2), _z(2, 2))),
    ("dense_fwd kind past the table", lambda m: m.dense_forward(_z(2, 2), _z(2, 2), None, _z(2, 2), _z(2, 2),
                                                                act=len(ACT) + 3)),
    ("dense_bwd kind past the table", lambda m: m.dense_backward(_z(3, 4), _z(4, 2), _z(3, 2), _z(3, 2), _z(3, 2),
                                                                 _z(3, 2), _z(3, 4), _z(4, 2), _z(2), act=len(ACT))),
    ("regression kind cross_entropy", lambda m: m.regression_loss(LOSS.CROSS_ENTROPY, _z(2, 2), _z(2, 2))),
    ("regression kind past the table", lambda m: m.regression_loss(len(LOSS), _z(2, 2), _z(2, 2))),
]


@IMPLS
@pytest.mark.parametrize("what,call", SHAPE_ERRORS + KIND_ERRORS, ids=[e[0] for e in SHAPE_ERRORS + KIND_ERRORS])
def test_bad_arguments_raise_value_error(impl, what, call):
    with pytest.raises(ValueError):
        call(impl)


# ---------------------------------------------------------------------------------------------- gemm
GEMM_CTYPE = {np.float32: "float", np.float64: "double"}


@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_numpy(dtype, trans_a, trans_b, beta):
    rng = np.random.default_rng(30)
    M, N, K = 7, 5, 6
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype) if beta else nan((M, N), dtype)
    want = 0.7 * (A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
    if beta:
        want = want + beta * C0.astype(np.float64)
    C = C0.copy()
    _threads.gemm[GEMM_CTYPE[dtype]](trans_a, trans_b, 0.7, A, B, beta, C)
    assert_close(C, want.astype(dtype), dtype)
    C_ref = C0.copy()
    ref.gemm(trans_a, trans_b, 0.7, A, B, beta, C_ref)
    assert_close(C_ref, want.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_plain_call_with_python_scalars(dtype):
    """The memoryview twin called as tests and users naturally call it: Python floats for alpha and beta."""
    A = np.ones((2, 3), dtype)
    B = np.ones((3, 4), dtype)
    C = nan((2, 4), dtype)
    _threads.gemm(False, False, 1.0, A, B, 0.0, C)
    np.testing.assert_array_equal(C, np.full((2, 4), 3.0, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_shape_mismatch(dtype):
    f = _threads.gemm[GEMM_CTYPE[dtype]]
    with pytest.raises(ValueError):
        f(False, False, 1.0, np.ones((2, 3), dtype), np.ones((4, 2), dtype), 0.0, np.ones((2, 2), dtype))
    with pytest.raises(ValueError):
        f(True, False, 1.0, np.ones((2, 3), dtype), np.ones((2, 2), dtype), 0.0, np.ones((2, 2), dtype))


def test_float32_tanh_is_bounded_and_accurate_everywhere():
    """The float32 tanh is a rational approximation: over a dense sweep it stays in [-1, 1] (an overshoot would
    make 1 - y^2 negative), within 4e-7 of tanh, exact at 0 and for tiny arguments, NaN for NaN."""
    x = np.linspace(-12, 12, 400_001, dtype=np.float32).reshape(1, -1)
    y = np.empty_like(x)
    activations.activation_forward(ACT.TANH, x, y, 0.0, 1)
    assert np.abs(y).max() <= 1.0
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), rtol=0, atol=4e-7)
    z = np.array([[np.nan, -0.0, 0.0, 1e-30, -3e-4, np.inf, -np.inf]], np.float32)
    w = np.empty_like(z)
    activations.activation_forward(ACT.TANH, z, w, 0.0, 1)
    assert np.isnan(w[0, 0]) and np.signbit(w[0, 1]) and w[0, 2] == 0
    np.testing.assert_array_equal(w[0, 3:], np.array([1e-30, -3e-4, 1, -1], np.float32))


def test_activation_table_covers_every_registered_kind():
    """A new activation (a class in fastnn.layers.activations.REGISTRY) needs its row in ACTIVATIONS above."""
    from fastnn.layers.activations import CLASSES, GELU
    assert {a[0] for a in ACTIVATIONS} == {cls.kind for cls in CLASSES.values()} | {GELU(approximate="tanh").kind}
