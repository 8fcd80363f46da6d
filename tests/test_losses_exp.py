"""The vectorized exponentials of the softmax cross-entropy (csrc/fnn_exp.h): the exponential itself over the
whole range, on each path (AVX-512, AVX2+FMA, libm), and the loss and gradient in float32 at a few ulp from the
exact values on extreme logits, against the numpy oracle and torch; the two vector paths are bit-identical."""
import numpy as np
import pytest
import scipy_openblas32  # noqa: F401  (loads the BLAS before the extensions)

from fastnn import _reference as ref
from fastnn._core import losses

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:
    from _gradcheck import assert_grad_close, numeric_grad

EPS32 = float(np.finfo(np.float32).eps)
PATHS = {2: "AVX-512F", 1: "AVX2+FMA", 0: "libm"}


@pytest.fixture(params=[2, 1, 0], ids=["avx512", "avx2", "libm"])
def path(request):
    got = losses.set_exp_isa(request.param)
    try:
        if got != request.param:
            pytest.skip(f"this CPU or build has no {PATHS[request.param]} path")
        yield got
    finally:
        losses.set_exp_isa(2)


def _ulps(got, exact, dtype):
    """|got - exact| in units of the spacing of exact rounded to dtype (the least subnormal at 0)."""
    exact = np.asarray(exact, np.longdouble)
    sp = np.spacing(np.abs(exact.astype(dtype))).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - exact) / sp


def _exp_points(dtype, rng):
    lo, hi = (-110.0, 92.0) if dtype == np.float32 else (-750.0, 712.0)
    x = np.concatenate([rng.uniform(lo, hi, 60000), rng.uniform(-1, 1, 20000),
                        rng.uniform(lo + 10, lo + 50, 20000),            # the subnormal results and the underflow
                        np.arange(-200, 200) * np.log(2)])               # the reduction's boundaries
    return np.concatenate([x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy_whole_range(path, dtype):
    """Within 1 ulp of e^x (float and double) over the whole range, subnormal results rounded once, 0 below,
    inf above; NaN stays NaN."""
    x = _exp_points(dtype, np.random.default_rng(0))
    out = np.empty_like(x)
    losses.exp_twin(x, out)
    with np.errstate(over="ignore", under="ignore"):
        exact = np.exp(x.astype(np.longdouble))
        finite = np.isfinite(exact.astype(dtype))
    err = _ulps(out[finite], exact[finite], dtype)
    assert err.max() <= 1.0, (err.max(), x[finite][np.argmax(err)])
    assert np.all(np.isposinf(out[~finite]))
    big = np.finfo(dtype).max
    special = np.array([-np.inf, np.inf, np.nan, -big, big, 0.0, -0.0, -1e4, 1e4], dtype)
    out = np.empty_like(special)
    losses.exp_twin(special, out)
    assert out[0] == 0 and out[1] == np.inf and np.isnan(out[2]) and out[3] == 0 and out[4] == np.inf
    assert out[5] == 1 and out[6] == 1 and out[7] == 0 and out[8] == np.inf


def test_vector_paths_bit_identical():
    """AVX-512 and AVX2 compute the same operations in the same order: the same bits, also for the losses."""
    if losses.set_exp_isa(2) != 2:
        pytest.skip("this CPU has no AVX-512F")
    rng = np.random.default_rng(1)
    try:
        for dtype in (np.float32, np.float64):
            x = _exp_points(dtype, rng)
            Z = (rng.standard_normal((37, 53)) * 20).astype(dtype)
            labels = rng.integers(0, 53, 37).astype(np.intp)
            T = rng.random((37, 53)).astype(dtype)
            outs = []
            for cap in (2, 1):
                assert losses.set_exp_isa(cap) == cap
                e = np.empty_like(x)
                losses.exp_twin(x, e)
                dZ, dS = np.empty_like(Z), np.empty_like(Z)
                outs.append((e, losses.softmax_cross_entropy(Z, labels, dZ), dZ,
                             losses.softmax_cross_entropy_soft(Z, T, dS), dS))
            (e2, l2, g2, s2, h2), (e1, l1, g1, s1, h1) = outs
            np.testing.assert_array_equal(e2, e1)
            np.testing.assert_array_equal(g2, g1)
            np.testing.assert_array_equal(h2, h1)
            assert l2 == l1 and s2 == s1
    finally:
        losses.set_exp_isa(2)


def _cases(rng):
    """(name, logits) float32 rows of the awkward kinds, with widths 1 to 65 (the vector tails)."""
    out = []
    for k in (1, 3, 7, 8, 15, 16, 17, 31, 33, 65):
        out.append((f"normal k={k}", rng.standard_normal((9, k)) * 3))
        out.append((f"wide spread k={k}", rng.uniform(-95, 12, (9, k))))   # z - max rounded in float: TwoSum
    z = rng.standard_normal((8, 65))
    z[np.arange(8), rng.integers(0, 65, 8)] = 1e4                         # one huge logit per row
    out.append(("one huge", z))
    out.append(("all equal", np.full((5, 65), 7.25)))
    out.append(("all equal, large", np.full((3, 17), 3e38)))
    z = rng.standard_normal((6, 65)) * 1e30                               # very large and small logits
    out.append(("1e30", z))
    z = rng.standard_normal((6, 33))
    z[:, 1::3] = -1e38                                                    # -inf-like gaps
    z[:, 2::5] = -np.inf
    out.append(("gaps", z))
    z = rng.standard_normal((4, 65)) * 1e-30                              # nearly equal, tiny
    out.append(("tiny", z))
    return [(name, np.asarray(v, np.float32)) for name, v in out]


def _exact_ce(Z, labels, w):
    """The loss and gradient of the labels cross-entropy in long double from the float32 logits."""
    z = Z.astype(np.longdouble)
    m = z.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", under="ignore"):
        e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))
    inv = 1 / w.astype(np.longdouble).sum()
    loss = ((np.log(s[:, 0]) + m[:, 0] - z[rows, labels]) * w).sum() * inv
    g = e / s
    g[rows, labels] -= 1
    return loss, g * (w[:, None] * inv)


def test_softmax_ce_float32_few_ulp(path):
    """Loss within 2^-23 (+ the double rounding of its terms) and every gradient element within 3 ulp (+ the
    label column's cancellation, 2 eps * w_i / sum w) of the exact values, over extreme rows; the oracle agrees."""
    rng = np.random.default_rng(2)
    for name, Z in _cases(rng):
        n, k = Z.shape
        finite = np.isfinite(Z) & (Z > -1e37)
        labels = np.array([rng.choice(np.flatnonzero(finite[i])) for i in range(n)], np.intp)
        for w in (None, rng.uniform(0.1, 2.0, n).astype(np.float32)):
            wf = np.ones(n, np.float32) if w is None else w
            want_loss, want_g = _exact_ce(Z, labels, wf)
            dZ = np.full_like(Z, np.nan)
            loss, n_correct = losses.softmax_cross_entropy(Z, labels, dZ, W=w)
            scale = float(np.max(np.abs(Z[finite])))
            assert abs(loss - float(want_loss)) <= 2 * EPS32 + 1e-15 * scale, name
            assert n_correct == int(np.sum(np.argmax(Z, axis=1) == labels)), name
            unit = (wf / wf.sum()).astype(np.longdouble)[:, None]
            err = np.abs(dZ.astype(np.longdouble) - want_g)
            bound = 3 * np.spacing(np.abs(want_g.astype(np.float32))).astype(np.longdouble)
            bound[np.arange(n), labels] += 2 * EPS32 * unit[:, 0]
            assert np.all(err <= bound), (name, float(np.max(err / bound)))
            assert np.all(dZ[~finite] == 0), name
            if w is None and np.all(np.isfinite(Z)):
                want_ref = np.empty_like(Z)
                ref_loss, ref_correct = ref.softmax_cross_entropy(Z, labels, want_ref)
                assert loss == pytest.approx(ref_loss, rel=1e-6, abs=2 * EPS32), name
                np.testing.assert_allclose(dZ, want_ref, rtol=4 * EPS32, atol=3 * EPS32 / n, err_msg=name)


def test_softmax_ce_soft_float32_few_ulp(path):
    """The probability-row cross-entropy on the same rows: loss and gradient at a few ulp of the exact values."""
    rng = np.random.default_rng(3)
    for name, Z in _cases(rng):
        n, k = Z.shape
        T = rng.random((n, k)).astype(np.float32)
        T[rng.random((n, k)) < 0.3] = 0
        T[~(np.isfinite(Z) & (Z > -1e37))] = 0                             # no target mass on -inf logits
        T[:, 0] += 0.01
        T /= T.sum(axis=1, keepdims=True)
        z = Z.astype(np.longdouble)
        t = T.astype(np.longdouble)
        m = z.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", under="ignore"):
            e = np.exp(z - m)
        s = e.sum(axis=1, keepdims=True)
        lse = np.log(s) + m
        with np.errstate(invalid="ignore"):
            want_loss = np.where(t != 0, t * (lse - z), 0).sum() / n
        p = e / s * t.sum(axis=1, keepdims=True)
        want_g = (p - t) / n
        dZ = np.full_like(Z, np.nan)
        loss, _ = losses.softmax_cross_entropy_soft(Z, T, dZ)
        scale = float(np.max(np.abs(Z[np.isfinite(Z)])))
        assert abs(loss - float(want_loss)) <= 4 * EPS32 + 1e-15 * scale, name
        err = np.abs(dZ.astype(np.longdouble) - want_g)
        bound = 3 * np.spacing(np.abs(want_g.astype(np.float32))).astype(np.longdouble) + 2 * EPS32 * (p + t) / n
        assert np.all(err <= bound), (name, float(np.max(err / bound)))


def test_softmax_ce_float32_vs_torch(path):
    """Against torch's float32 cross_entropy (labels and probability rows) on the finite extreme rows."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    for name, Z in _cases(rng):
        if not np.all(np.isfinite(Z)) or np.any(np.abs(Z) > 1e37):
            continue
        n, k = Z.shape
        labels = rng.integers(0, k, n).astype(np.intp)
        zt = torch.tensor(Z, requires_grad=True)
        want = F.cross_entropy(zt, torch.tensor(labels))
        want.backward()
        dZ = np.empty_like(Z)
        loss, _ = losses.softmax_cross_entropy(Z, labels, dZ)
        scale = max(1.0, float(np.max(np.abs(Z))))
        assert loss == pytest.approx(want.item(), rel=4 * EPS32, abs=4 * EPS32 * scale), name
        np.testing.assert_allclose(dZ, zt.grad.numpy(), rtol=8 * EPS32, atol=4 * EPS32 / n, err_msg=name)
        T = rng.random((n, k)).astype(np.float32)
        T /= T.sum(axis=1, keepdims=True)
        zt = torch.tensor(Z, requires_grad=True)
        want = F.cross_entropy(zt, torch.tensor(T))
        want.backward()
        loss, _ = losses.softmax_cross_entropy_soft(Z, T, dZ)
        assert loss == pytest.approx(want.item(), rel=4 * EPS32, abs=4 * EPS32 * scale), name
        np.testing.assert_allclose(dZ, zt.grad.numpy(), rtol=8 * EPS32, atol=4 * EPS32 / n, err_msg=name)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_softmax_ce_float64_gradcheck(path, k):
    """float64: the vector double exponential keeps the central finite differences at their tolerance."""
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((4, k)) * 2
    labels = rng.integers(0, k, 4).astype(np.intp)
    T = rng.random((4, k))
    T /= T.sum(axis=1, keepdims=True)
    W = rng.uniform(0.5, 2.0, 4)
    dZ = np.empty_like(Z)
    losses.softmax_cross_entropy(Z, labels, dZ, W=W)
    if k > 1:
        assert_grad_close(dZ, numeric_grad(lambda z: losses.softmax_cross_entropy(z, labels, W=W)[0], Z))
        losses.softmax_cross_entropy_soft(Z, T, dZ, W=W)
        assert_grad_close(dZ, numeric_grad(lambda z: losses.softmax_cross_entropy_soft(z, T, W=W)[0], Z))
    else:                                   # one class: the loss is 0 whatever z, and so is its gradient
        assert np.all(dZ == 0)
        assert losses.softmax_cross_entropy_soft(Z, T, dZ, W=W)[0] == 0 and np.all(dZ == 0)
    want = np.empty_like(Z)
    losses.softmax_cross_entropy(Z, labels, dZ)
    ref.softmax_cross_entropy(Z, labels, want)
    np.testing.assert_allclose(dZ, want, rtol=1e-14, atol=1e-16)


def test_softmax_ce_nan_and_inf_rows(path):
    """A NaN or +inf logit makes its row's loss NaN, as before; argmax ignores a NaN after the first column."""
    Z = np.array([[0.0, 1.0, 2.0], [1.0, np.nan, 0.5], [np.nan, 1.0, 0.0], [np.inf, 0.0, 1.0]], np.float32)
    for i in range(4):
        loss, _ = losses.softmax_cross_entropy(Z[i:i + 1], np.array([2], np.intp))
        assert np.isnan(loss) == (i > 0)
    _, n_correct = losses.softmax_cross_entropy(Z[1:2], np.array([0], np.intp))
    assert n_correct == 1
    _, n_correct = losses.softmax_cross_entropy(Z[2:3], np.array([0], np.intp))
    assert n_correct == 1


def test_sigmoid_bce_float32_few_ulp(path):
    """Binary cross-entropy on logits (one e^-|z| per element, shared by the softplus and the sigmoid): loss and
    gradient at a few ulp of the exact values, from tiny to huge logits and odd widths."""
    rng = np.random.default_rng(6)
    for k in (1, 7, 65, 300):
        Z = (rng.standard_normal((5, k)) * np.array([1e-30, 1, 10, 100, 1e30])[:, None]).astype(np.float32)
        T = rng.random((5, k)).astype(np.float32)
        T[:, ::3] = np.round(T[:, ::3])
        z, t = Z.astype(np.longdouble), T.astype(np.longdouble)
        N = Z.size
        want_loss = (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))) - t * z).sum() / N
        sig = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
        want_g = (sig - t) / N
        dZ = np.full_like(Z, np.nan)
        loss, n_correct = losses.sigmoid_binary_cross_entropy(Z, T, dZ)
        scale = float(np.max(np.abs(z * t)))
        assert abs(loss - float(want_loss)) <= 4 * EPS32 * max(1.0, float(want_loss)) + 1e-15 * scale, k
        assert n_correct == int(np.sum((Z > 0) == (T > 0.5)))
        err = np.abs(dZ.astype(np.longdouble) - want_g)
        bound = 3 * np.spacing(np.abs(want_g.astype(np.float32))).astype(np.longdouble) + 2 * EPS32 * (sig + t) / N
        assert np.all(err <= bound), (k, float(np.max(err / bound)))
        want = np.empty_like(Z)
        ref_loss, _ = ref.sigmoid_binary_cross_entropy(Z, T, want)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        np.testing.assert_allclose(dZ, want, rtol=4 * EPS32, atol=2 * EPS32 / N)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_sum_adds_in_row_order(dtype):
    """A batch's weight sum as the loss kernels and the compiled plan take it (row order, in double), not numpy's
    pairwise sum: the per-layer history weighs its batches with the plan's bits."""
    w = (np.random.default_rng(1).random(1001) * 3).astype(dtype)
    w[::3] *= 1e-9
    assert losses.weight_sum(w) == np.add.accumulate(w.astype(np.float64))[-1]
    assert losses.weight_sum(w[:0]) == 0.0
