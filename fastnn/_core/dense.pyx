# cython: boundscheck=False, wraparound=False, cdivision=True
"""Dense layer kernels: Y = act(X.W + b) and its backward pass, float32 and float64.

Shapes: X (n, n_in), W (n_in, n_out), b (n_out,), Z and Y (n, n_out).  The GEMM writes Z = X.W, then one pass
adds the bias and applies the activation (fastnn._core.activations).  Shapes are checked here, once per
call, so the loops below run without bounds checks.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastnn._core._common cimport floating
from fastnn._core cimport _blas
from fastnn._core.activations cimport act_forward, act_forward_counted, act_backward, check_act, kernel_ok
from fastnn._core.kinds cimport FNN_ACT_IDENTITY
from fastnn._core.activations import check_counts


cdef _check(str what, tuple got, tuple want):
    if got != want:
        raise ValueError(f"dense: {what} has shape {got}, expected {want}")


def dense_forward(const floating[:, ::1] X, const floating[:, ::1] W, const floating[::1] b,
                  floating[:, ::1] Z, floating[:, ::1] Y, int act=FNN_ACT_IDENTITY, double alpha=0.0,
                  int n_threads=1, int64_t[:, ::1] counts=None):
    """Z = X.W + b (OUT), Y = act(Z) (OUT; Y may be Z when act is the identity).  b may be None.

    counts (IN/OUT, optional): the activation's unit counters, (n_slots, n_out) int64 (see activations.pyx).
    """
    cdef Py_ssize_t n = X.shape[0], n_in = X.shape[1], n_out = W.shape[1]
    check_act(act, "dense_forward")
    _check("W", (W.shape[0], W.shape[1]), (n_in, n_out))
    _check("Z", (Z.shape[0], Z.shape[1]), (n, n_out))
    _check("Y", (Y.shape[0], Y.shape[1]), (n, n_out))
    cdef const floating *bp = NULL
    if b is not None:
        _check("b", (b.shape[0],), (n_out,))
        bp = &b[0] if n_out > 0 else NULL
    if counts is not None:
        check_counts(counts, n_out, "dense_forward")
    if n == 0 or n_out == 0:
        return
    cdef int err
    with nogil:
        if n_in == 0:
            memset(&Z[0, 0], 0, n * n_out * sizeof(floating))
        else:
            _blas.rows_times(<int>n, <int>n_out, <int>n_in, &X[0, 0], <int>n_in, &W[0, 0], <int>n_out,
                             &Z[0, 0], <int>n_out)
        if counts is None:
            err = act_forward(act, &Z[0, 0], &Y[0, 0], bp, n, n_out, alpha, n_threads)
        else:
            err = act_forward_counted(act, &Z[0, 0], &Y[0, 0], bp, n, n_out, alpha, n_threads, &counts[0, 0],
                                      counts.shape[0])
    kernel_ok(err, "dense_forward")


def dense_backward(const floating[:, ::1] X, const floating[:, ::1] W, const floating[:, ::1] Z,
                   const floating[:, ::1] Y, floating[:, ::1] dY, floating[:, ::1] dZ, floating[:, ::1] dX,
                   floating[:, ::1] dW, floating[::1] db, int act=FNN_ACT_IDENTITY, double alpha=0.0,
                   int n_threads=1):
    """Backward of dense_forward.

    IN: X, W, Z, Y (the forward's), dY (gradient of the loss with respect to Y).
    OUT: dZ = dY * act'(Z) (scratch; may be dY itself, and is not used for the identity), dW = X^T.dZ,
    db = sum of dZ over rows (None: no bias), dX = dZ.W^T (None: not needed, e.g. the first layer).
    """
    cdef Py_ssize_t n = X.shape[0], n_in = X.shape[1], n_out = W.shape[1], i, j
    check_act(act, "dense_backward")
    _check("W", (W.shape[0], W.shape[1]), (n_in, n_out))
    _check("dW", (dW.shape[0], dW.shape[1]), (n_in, n_out))
    for name, a in (("Z", Z), ("Y", Y), ("dY", dY), ("dZ", dZ)):
        _check(name, (a.shape[0], a.shape[1]), (n, n_out))
    if dX is not None:
        _check("dX", (dX.shape[0], dX.shape[1]), (n, n_in))
    if db is not None:
        _check("db", (db.shape[0],), (n_out,))
    cdef floating *g
    cdef floating *dbp = &db[0] if (db is not None and n_out > 0) else NULL
    cdef floating *dXp = &dX[0, 0] if (dX is not None and n * n_in > 0) else NULL
    if n == 0 or n_out == 0:
        # no samples (or no outputs): zero gradients, nothing flows back
        if n_in * n_out > 0:
            memset(&dW[0, 0], 0, n_in * n_out * sizeof(floating))
        if dbp != NULL:
            memset(dbp, 0, n_out * sizeof(floating))
        if dXp != NULL:
            memset(dXp, 0, n * n_in * sizeof(floating))
        return
    cdef int err = 0
    with nogil:
        if act == FNN_ACT_IDENTITY:
            g = &dY[0, 0]
        else:
            g = &dZ[0, 0]
            err = act_backward(act, &Z[0, 0], &Y[0, 0], &dY[0, 0], g, n, n_out, alpha, n_threads)
        if n_in > 0:
            _blas.gemm(True, False, <int>n_in, <int>n_out, <int>n, <floating>1, &X[0, 0], <int>n_in,
                       g, <int>n_out, <floating>0, &dW[0, 0], <int>n_out)
        if dbp != NULL:
            memset(dbp, 0, n_out * sizeof(floating))
            for i in range(n):
                for j in range(n_out):
                    dbp[j] = dbp[j] + g[i * n_out + j]
        if dXp != NULL:
            _blas.gemm(False, True, <int>n, <int>n_in, <int>n_out, <floating>1, g, <int>n_out,
                       &W[0, 0], <int>n_out, <floating>0, dXp, <int>n_in)
    kernel_ok(err, "dense_backward")


def rows_product(const floating[:, ::1] X, const floating[:, ::1] W, floating[:, ::1] Z, int isa_cap=2):
    """Z (OUT, (m, N)) = X (m, K) . W (K, N) by the route of the Dense forward (_blas.rows_times), its few-row
    kernel capped at isa_cap (0: none, the BLAS; 1: AVX2+FMA; 2: the best this CPU has) for this call.  Returns
    the kernel's ISA in use during the call (0, 1, 2).  For tests and measurements: the cap is per extension
    module, and this one sets the dense module's only."""
    cdef Py_ssize_t m = X.shape[0], K = X.shape[1], N = W.shape[1]
    _check("W", (W.shape[0], W.shape[1]), (K, N))
    _check("Z", (Z.shape[0], Z.shape[1]), (m, N))
    cdef int isa = _blas.fnn_rows_set_isa(isa_cap)
    try:
        with nogil:
            _blas.rows_times(<int>m, <int>N, <int>K, &X[0, 0] if m * K > 0 else NULL, <int>K,
                             &W[0, 0] if K * N > 0 else NULL, <int>N, &Z[0, 0] if m * N > 0 else NULL, <int>N)
    finally:
        _blas.fnn_rows_set_isa(2)
    return isa
