"""The register-blocked direct convolution kernels (csrc/fnn_conv_direct.h, the "blocked" route of conv.pyx):
float32 forward (every fused activation and its unit counters), backward-to-data and backward-to-weights against
the float64 numpy oracle and torch, on shapes that hit every tail (filters not a multiple of 16 or 8, output rows
not a multiple of the register block, strides 1/2, dilation 2, valid / same / explicit / beyond-the-kernel
padding, groups 2, a batch of one, odd image sizes); AVX-512 and AVX2 (the ISA capped); 1 and 2 threads; and
that the route really takes the kernels (a silent fallback to im2col would fail here)."""
import numpy as np
import pytest

from fastnn import _reference as ref
from fastnn._core import conv as K
from fastnn._core.kinds import ACT
from fastnn.layers import Conv2D

try:
    from tests._netcheck import standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _netcheck import standalone

TOL = dict(rtol=2e-4, atol=2e-4)

# (N, H, W, C, F, (kh, kw), strides, dilation, padding (top, bottom, left, right), groups)
CASES = [
    (2, 9, 11, 16, 32, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),     # "same", 11 columns: blocks + borders
    (1, 7, 13, 12, 20, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0), 1),     # valid, batch of one, F = 16 + 4
    (2, 9, 10, 10, 19, (3, 3), (2, 2), (1, 1), (0, 1, 0, 1), 1),     # stride 2 ("same" of TF), F = 16 + 3
    (2, 12, 12, 16, 24, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2), 2),    # dilation 2, groups 2 (12 filters each)
    (1, 8, 30, 9, 40, (5, 3), (1, 2), (1, 1), (3, 0, 2, 1), 1),      # explicit asymmetric, 30 wide, F = 40
    (3, 6, 7, 24, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),       # one AVX2 vector of filters
    (2, 5, 6, 8, 9, (3, 3), (1, 1), (1, 1), (3, 3, 3, 3), 1),        # padding beyond the kernel: dX's negative
    (2, 5, 29, 8, 33, (1, 3), (1, 1), (1, 1), (0, 0, 1, 1), 1),      # 29 = 2 x 12 + 5 / 16 + 13; F = 2 x 16 + 1
    (2, 14, 14, 6, 16, (5, 5), (1, 1), (1, 1), (0, 0, 0, 0), 1),     # LeNet's second layer: 6 channels
    (2, 11, 9, 4, 6, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 1),       # the fewest channels and filters, stride 2
    (1, 10, 10, 10, 10, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 2),    # groups of 5 channels and 5 filters
    (2, 13, 11, 1, 32, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0), 1),     # a first layer: one channel (C2's)
    (2, 9, 10, 3, 20, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),      # three channels, "same" (C3's), F = 16 + 4
    (1, 11, 12, 2, 5, (5, 5), (2, 2), (1, 1), (2, 2, 2, 2), 1),      # two channels, stride 2, 5x5, F = 5
]
ISAS = [2, 1]


@pytest.fixture(params=ISAS, ids=["avx512", "avx2"])
def isa(request):
    got = K.set_direct_isa(request.param)
    try:
        if got != request.param:
            pytest.skip(f"this CPU has no {'AVX-512F' if request.param == 2 else 'AVX2+FMA'}")
        yield got
    finally:
        K.set_direct_isa(2)


def _out(case):
    N, H, W, C, F, (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr), G = case
    return (N, (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1, F)


def _data(case, seed=0):
    N, H, W, C, F, (kh, kw), s, d, p, G = case
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, H, W, C)).astype(np.float32)
    Wt = (rng.standard_normal((kh, kw, C // G, F)) / np.sqrt(kh * kw * C // G)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    dY = rng.standard_normal(_out(case)).astype(np.float32)
    return X, Wt, b, dY


def _run(mod, dtype, case, X, Wt, b, dY, act, n_threads, counts=None, need_dx=True):
    N, H, W, C, F, k, s, d, p, G = case
    X, Wt, b, dY = (np.ascontiguousarray(a, dtype) for a in (X, Wt, b, dY))
    Z, Y, dZ = (np.empty(_out(case), dtype) for _ in range(3))

    def size(bwd):
        return max(1, K.scratch_size(X.shape, Wt.shape, s, d, p, G, X.itemsize, n_threads, bwd))

    mod.conv2d_forward(X, Wt, b, Z, Y, s, d, p, G, np.full(size(False), np.nan, dtype), act, 0.1, n_threads,
                       counts)
    dX = np.full_like(X, np.nan) if need_dx else None
    dW, db = np.full_like(Wt, np.nan), np.full_like(b, np.nan)
    mod.conv2d_backward(X, Wt, Z, Y, dY, dZ, dX, dW, db, s, d, p, G, np.full(size(True), np.nan, dtype), act, 0.1,
                        n_threads)
    return Y, dX, dW, db


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_direct_matches_reference(case, isa):
    assert K.route(*_geom(case), 4) == "blocked"
    X, Wt, b, dY = _data(case)
    want = _run(ref, np.float64, case, X, Wt, b, dY, ACT.IDENTITY, 1)
    for nt in (1, 2):
        got = _run(K, np.float32, case, X, Wt, b, dY, ACT.IDENTITY, nt)
        for name, g, w in zip(("Y", "dX", "dW", "db"), got, want):
            np.testing.assert_allclose(g, w, **TOL, err_msg=f"{name}, {nt} thread(s)")


def _geom(case):
    N, H, W, C, F, k, s, d, p, G = case
    return (N, H, W, C), (k[0], k[1], C // G, F), s, d, p, G


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_weights_pass_alone(strides, isa):
    """The weights' pass without dX (a first layer; at stride 2 the blocked kernel keeps it, with dX it would
    take the gathered path)."""
    case = (2, 9, 11, 16, 20, (3, 3), strides, (1, 1), (1, 1, 1, 1), 1)
    X, Wt, b, dY = _data(case, 3)
    got = _run(K, np.float32, case, X, Wt, b, dY, ACT.IDENTITY, 2, need_dx=False)
    want = _run(ref, np.float64, case, X, Wt, b, dY, ACT.IDENTITY, 1)
    for g, w in zip(got[2:], want[2:]):
        np.testing.assert_allclose(g, w, **TOL)


KINDS = [a for a in ACT if a != ACT.SOFTMAX]


@pytest.mark.parametrize("act", KINDS, ids=[a.name.lower() for a in KINDS])
def test_fused_activations_and_counters(act, isa):
    """Bias + every activation on the rows the kernel wrote, its gradient, and the unit counters (the same counts
    as the im2col route's)."""
    case = CASES[0]
    X, Wt, b, dY = _data(case, 4)
    want = _run(ref, np.float64, case, X, Wt, b, dY, act, 1)
    counts = np.zeros((2, case[4]), np.int64)
    got = _run(K, np.float32, case, X, Wt, b, dY, act, 2, counts)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=5e-4, atol=5e-4)
    K.set_direct_isa(0)
    counts0 = np.zeros_like(counts)
    _run(K, np.float32, case, X, Wt, b, dY, act, 2, counts0)
    np.testing.assert_array_equal(counts.sum(axis=0), counts0.sum(axis=0))


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[7]], ids=["same", "stride2", "groups", "tails"])
def test_fused_bias_and_relu_give_the_bits_of_the_pass(case, isa):
    """The blocked kernel adds the bias and applies ReLU / the identity as it stores (fnn_convd_epi): Z and Y must
    be the bits of the kernel's plain sums followed by float32 z + b and (z > 0 ? z : 0), also for NaN sums, -0,
    and Y the same array as Z; unit counters (diagnostics) keep the pass."""
    N, H, W, C, F, k, s, d, p, G = case
    X, Wt, b, _ = _data(case, 5)
    X[0, 1, 1, 0] = np.nan                          # NaN outputs around one pixel
    b[0] = -0.0
    size = max(1, K.scratch_size(X.shape, Wt.shape, s, d, p, G, 4, 2, False))
    plain = np.empty(_out(case), np.float32)
    K.conv2d_forward(X, Wt, None, plain, plain, s, d, p, G, np.empty(size, np.float32), ACT.IDENTITY, 0.0, 2)
    z = (plain + b).astype(np.float32)
    want_y = np.where(z > 0, z, np.float32(0))
    for act, want in ((ACT.RELU, want_y), (ACT.IDENTITY, z)):
        Z, Y = np.empty_like(plain), np.empty_like(plain)
        K.conv2d_forward(X, Wt, b, Z, Y, s, d, p, G, np.empty(size, np.float32), act, 0.0, 2)
        assert np.array_equal(Z, z, equal_nan=True)
        assert np.array_equal(Y, want, equal_nan=True)
        assert np.array_equal(np.signbit(Y), np.signbit(want))
    Z = np.empty_like(plain)
    K.conv2d_forward(X, Wt, b, Z, Z, s, d, p, G, np.empty(size, np.float32), ACT.IDENTITY, 0.0, 2)
    assert np.array_equal(Z, z, equal_nan=True)


def test_threads_and_isas_agree():
    """The forward gives the same bits on 1 and 2 threads (each output is one chain of FMAs whatever the split);
    the weights' pass (private accumulators summed) and AVX2 against AVX-512 agree within float32 rounding."""
    case = (5, 10, 10, 16, 24, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1)
    X, Wt, b, dY = _data(case, 5)
    runs = {}
    for cap in ISAS:
        if K.set_direct_isa(cap) != cap:
            continue
        for nt in (1, 2):
            runs[cap, nt] = _run(K, np.float32, case, X, Wt, b, dY, ACT.RELU, nt)
    K.set_direct_isa(2)
    if not runs:
        pytest.skip("no AVX2+FMA")
    first = next(iter(runs.values()))
    for (cap, _nt), got in runs.items():
        np.testing.assert_array_equal(got[0], runs[cap, 1][0])
        for g, w in zip(got, first):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_torch_parity_float32(isa):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    case = CASES[3]                        # dilation 2, groups 2
    N, H, W, C, F, k, s, d, (pt, pb, pl, pr), G = case
    X, Wt, b, dY = _data(case, 6)
    Y, dX, dW, db = _run(K, np.float32, case, X, Wt, b, dY, ACT.IDENTITY, 2)
    tX = torch.tensor(X.transpose(0, 3, 1, 2).astype(np.float64), requires_grad=True)
    tW = torch.tensor(Wt.transpose(3, 2, 0, 1).astype(np.float64), requires_grad=True)
    tb = torch.tensor(b.astype(np.float64), requires_grad=True)
    F_ = torch.nn.functional
    tY = F_.conv2d(F_.pad(tX, (pl, pr, pt, pb)), tW, tb, stride=s, dilation=d, groups=G)
    (tY * torch.tensor(dY.transpose(0, 3, 1, 2).astype(np.float64))).sum().backward()
    np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 3, 1), **TOL)
    np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 3, 1), **TOL)
    np.testing.assert_allclose(dW, tW.grad.permute(2, 3, 1, 0).numpy(), **TOL)
    np.testing.assert_allclose(db, tb.grad.numpy(), **TOL)


def test_route_takes_the_blocked_kernels_for_3x3_32_channels():
    """A 3x3 32 -> 32 layer runs the blocked kernels in float32 wherever the CPU has AVX2+FMA (forward, and the
    transposed convolution of its stride-1 backward-to-data), and so do first layers of 1-3 channels into 16 filters
    or more; float64, a capped ISA and few filters keep im2col."""
    shapes = ((32, 16, 16, 32), (3, 3, 32, 32), (1, 1), (1, 1), (1, 1, 1, 1), 1)
    isa = K.set_direct_isa(2)
    try:
        if isa == 0:
            pytest.skip("no AVX2+FMA: the im2col path")
        assert K.route(*shapes, 4) == "blocked"
        assert K.route(*shapes, 8) == "im2col"
        assert K.route((32, 32, 32, 3), (3, 3, 3, 32), (1, 1), (1, 1), (1, 1, 1, 1), 1, 4) == "blocked"
        assert K.route((64, 28, 28, 1), (3, 3, 1, 32), (1, 1), (1, 1), (0, 0, 0, 0), 1, 4) == "blocked"
        assert K.route((8, 12, 12, 16), (3, 3, 16, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, 4) == "im2col"
        assert K.set_direct_isa(0) == 0
        assert K.route(*shapes, 4) == "im2col"
    finally:
        K.set_direct_isa(2)


def test_scratch_sized_under_one_cap_serves_the_other():
    """A layer sizes its scratch once: a buffer sized while the kernels were capped still runs them (and back)."""
    case = CASES[0]
    X, Wt, b, dY = _data(case, 7)
    N, H, W, C, F, k, s, d, p, G = case
    K.set_direct_isa(0)
    try:
        sf = np.empty(K.scratch_size(X.shape, Wt.shape, s, d, p, G, 4, 2, False), np.float32)
        sb = np.empty(K.scratch_size(X.shape, Wt.shape, s, d, p, G, 4, 2, True), np.float32)
        K.set_direct_isa(2)
        Z = np.empty(_out(case), np.float32)
        K.conv2d_forward(X, Wt, b, Z, Z, s, d, p, G, sf, ACT.IDENTITY, 0.0, 2)
        dX, dW, db = np.empty_like(X), np.empty_like(Wt), np.empty_like(b)
        K.conv2d_backward(X, Wt, Z, Z, dY, dY, dX, dW, db, s, d, p, G, sb, ACT.IDENTITY, 0.0, 2)
        want = _run(ref, np.float64, case, X, Wt, b, dY, ACT.IDENTITY, 1)
        for g, w in zip((Z, dX, dW, db), want):
            np.testing.assert_allclose(g, w, **TOL)
    finally:
        K.set_direct_isa(2)


def test_layer_float32_agrees_with_float64():
    """Conv2D in float32 (the blocked route) against the same layer in float64 (im2col + dgemm)."""
    rng = np.random.default_rng(9)
    X, R = rng.standard_normal((3, 10, 9, 16)), rng.standard_normal((3, 10, 9, 24))
    out = {}
    for dtype in (np.float32, np.float64):
        layer = standalone(Conv2D(24, 3, padding="same", activation="relu"), (10, 9, 16), dtype=dtype, seed=10)
        Y = layer.forward(X.astype(dtype), True)
        dX = layer.backward(R.astype(dtype))
        out[dtype] = (Y, dX, layer.weight_grad.copy(), layer.bias_grad.copy())
    for a, c in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, c, rtol=2e-3, atol=2e-3)
