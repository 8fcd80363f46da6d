"""The forward product of Dense layers by shape (fastnn/_core/_blas.pxd rows_times): fastnn's few-row kernel
(csrc/fnn_rows.h, AVX-512 and AVX2+FMA), OpenBLAS's GEMV for one row and its GEMM, against numpy in float64."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import dense as _dense
from fastnn.layers import Dense

# (K, N): odd sizes around the vector widths (4, 8, 16 lanes) and the kernel's 8-row steps of K; 0 and 1
SHAPES = [(1, 1), (0, 5), (7, 0), (1, 9), (9, 1), (3, 17), (8, 16), (13, 31), (17, 33), (64, 10), (130, 47),
          (37, 2100)]
ROWS = [0, 1, 2, 3, 4, 5]


def _machine_caps():
    """The ISA caps worth testing on this CPU: 0 (the BLAS) and each kernel the CPU has."""
    X = np.ones((1, 1), np.float32)
    best = _dense.rows_product(X, X, np.empty((1, 1), np.float32), 2)
    return list(range(best + 1))


CAPS = _machine_caps()


def _product(X, W, cap):
    Z = np.full((X.shape[0], W.shape[1]), np.nan, dtype=X.dtype)
    _dense.rows_product(X, W, Z, cap)
    return Z


def _tolerance(X, W):
    """|error| bound of a float product: a few ulps of the sum of |x_k w_kj| per element."""
    eps = np.finfo(X.dtype).eps
    return 4 * (X.shape[1] + 2) * eps * (np.abs(X).astype(np.float64) @ np.abs(W).astype(np.float64)) + 1e-300


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", CAPS)
def test_rows_product_matches_numpy(dtype, cap):
    rng = np.random.default_rng(0)
    for K, N in SHAPES:
        W = rng.standard_normal((K, N)).astype(dtype)
        for m in ROWS:
            X = rng.standard_normal((m, K)).astype(dtype)
            Z = _product(X, W, cap)
            ref = X.astype(np.float64) @ W.astype(np.float64)
            assert Z.shape == ref.shape
            assert np.all(np.abs(Z - ref) <= _tolerance(X, W)), (K, N, m, cap)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_values_do_not_depend_on_isa_or_columns(dtype):
    """The kernel computes each element as the same chain of FMAs in k order: the AVX2 and AVX-512 paths agree
    bit for bit, and so does any block of columns (the plan's split over threads)."""
    if CAPS[-1] < 1:
        pytest.skip("no AVX2+FMA on this CPU: the BLAS runs")
    rng = np.random.default_rng(1)
    K, N = 83, 70
    W = rng.standard_normal((K, N)).astype(dtype)
    for m in (1, 2, 3):
        X = rng.standard_normal((m, K)).astype(dtype)
        full = _product(X, W, CAPS[-1])
        np.testing.assert_array_equal(_product(X, W, 1), full)
        for c0, c1 in ((0, 16), (16, 69), (37, 70)):
            np.testing.assert_array_equal(_product(X, np.ascontiguousarray(W[:, c0:c1]), CAPS[-1]),
                                          full[:, c0:c1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_at_every_alignment_of_w(dtype):
    """W at every element offset from a cache line (the kernel peels a masked head up to an aligned column):
    the same bits at each offset, and numpy's values."""
    rng = np.random.default_rng(5)
    K, N = 19, 45
    W0 = rng.standard_normal((K, N)).astype(dtype)
    X = rng.standard_normal((3, K)).astype(dtype)
    buf = np.empty(K * N + 64, dtype)
    first = None
    for off in range(16):
        W = buf[off:off + K * N].reshape(K, N)
        W[...] = W0
        for cap in CAPS:
            Z = _product(X, W, cap)
            assert np.all(np.abs(Z - X.astype(np.float64) @ W0) <= _tolerance(X, W0)), (off, cap)
            if cap > 0:
                if first is None:
                    first = Z
                np.testing.assert_array_equal(Z, first)


def test_rows_product_keeps_nan_and_inf():
    """No shortcut for zeros: a NaN or inf in W reaches the outputs it touches, as in the BLAS."""
    for cap in CAPS:
        X = np.ones((2, 9), np.float32)
        X[1, 3] = 0.0
        W = np.ones((9, 20), np.float32)
        W[3, 5] = np.nan
        W[4, 19] = np.inf
        Z = _product(X, W, cap)
        assert np.isnan(Z[0, 5]) and np.isnan(Z[1, 5]) and np.isinf(Z[0, 19]) and np.isinf(Z[1, 19])
        assert np.all(np.isfinite(np.delete(Z, [5, 19], axis=1)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_predict_few_rows_matches_numpy(restore_threads, dtype, n_threads):
    """The compiled inference plan and the per-layer path, 1-5 rows (the W4 shape scaled down, one layer large
    enough for the plan's column split), against numpy from the same weights."""
    fnn.set_num_threads(n_threads)
    rng = np.random.default_rng(2)
    m = fnn.Sequential([Dense(257, activation="relu"), Dense(33, activation="relu"), Dense(10)],
                       input_dim=261, seed=3, dtype=dtype)
    W1, b1, W2, b2, W3, b3 = (w.astype(np.float64) for w in m.get_weights())
    X = rng.normal(size=(5, 261)).astype(dtype)
    ref = np.maximum(np.maximum(X @ W1 + b1, 0) @ W2 + b2, 0) @ W3 + b3
    tol = 2e-5 if dtype == "float32" else 1e-12
    for n in range(1, 6):
        fast = m.predict(X[:n])
        slow = m.engine.forward(X[:n], False).copy()
        np.testing.assert_allclose(fast, ref[:n], rtol=tol, atol=tol)
        np.testing.assert_allclose(slow, ref[:n], rtol=tol, atol=tol)
        np.testing.assert_array_equal(fast, slow)       # one route for both paths


def test_dense_forward_one_row_and_degenerate_sizes():
    """dense_forward itself with 1 row, and n_in / n_out of 0 and 1."""
    rng = np.random.default_rng(4)
    for n_in, n_out in ((0, 3), (1, 1), (1, 7), (5, 1), (300, 129)):
        for n in (1, 2, 4, 5):
            X = rng.standard_normal((n, n_in)).astype(np.float32)
            W = rng.standard_normal((n_in, n_out)).astype(np.float32)
            b = rng.standard_normal(n_out).astype(np.float32)
            Z = np.full((n, n_out), np.nan, np.float32)
            _dense.dense_forward(X, W, b, Z, Z)
            ref = X.astype(np.float64) @ W + b
            np.testing.assert_allclose(Z, ref, rtol=1e-5, atol=1e-5 * max(1, n_in) ** 0.5)
