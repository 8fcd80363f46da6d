# cython: boundscheck=False, wraparound=False, cdivision=True
"""Normalization kernels, forward and backward, float32 and float64: batch norm over the rows of each column
(torch.nn.BatchNorm1d on (n, C)) and layer norm over the columns of each row (torch.nn.LayerNorm).

Shapes: X, Y, Xhat, dY, dX (n, C); gamma, beta, dgamma, dbeta, mean, invstd, running_* (C,) for batch norm;
invstd (n,) for layer norm.  Xhat = (X - mean) * invstd is kept by the forward for the backward.

Design: sums run in double whatever the dtype.  Batch-norm statistics are column sums over rows; they are
taken over blocks of FNN_COLS columns at a time (a row's block is one contiguous read, the accumulators live
on the stack), and blocks are split between threads.  Layer norm splits rows between threads; its dgamma /
dbeta (column sums) use the same column-block pass.  Mean and variance take two passes (no cancellation).
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD

cdef extern from "fnn_norm.h":
    enum: FNN_COLS "FNN_NORM_COLS"      # columns per block of the column-sum passes


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef int _n_blocks_threads(Py_ssize_t n, Py_ssize_t C, int n_threads, Py_ssize_t *n_blocks) noexcept nogil:
    n_blocks[0] = (C + FNN_COLS - 1) // FNN_COLS
    cdef int nt = threads_for(n * C, n_threads, FNN_MIN_PER_THREAD)
    if nt > n_blocks[0]:
        nt = <int>n_blocks[0]
    return nt if nt > 0 else 1


# ------------------------------------------------------------------------------------------ batch norm
cdef extern from "fnn_norm.h" nogil:
    void fnn_bn_fwd_block_f(const float *X, float *Y, float *Xhat, const float *gamma, const float *beta, float *mean,
                            float *invstd, float *rmean, float *rvar, Py_ssize_t n, Py_ssize_t C, Py_ssize_t c0,
                            Py_ssize_t c1, int training, double momentum, double eps, int relu)
    void fnn_bn_fwd_block_d(const double *X, double *Y, double *Xhat, const double *gamma, const double *beta,
                            double *mean, double *invstd, double *rmean, double *rvar, Py_ssize_t n, Py_ssize_t C,
                            Py_ssize_t c0, Py_ssize_t c1, int training, double momentum, double eps, int relu)
    void fnn_col_sums_f(const float *dY, const float *Xhat, const float *A, Py_ssize_t n, Py_ssize_t C, Py_ssize_t c0,
                        Py_ssize_t c1, float *sum_dy, float *sum_dy_xhat)
    void fnn_col_sums_d(const double *dY, const double *Xhat, const double *A, Py_ssize_t n, Py_ssize_t C,
                        Py_ssize_t c0, Py_ssize_t c1, double *sum_dy, double *sum_dy_xhat)
    void fnn_bn_dx_block_f(const float *dY, const float *Xhat, const float *A, const float *gamma, const float *invstd,
                           float *dX, const float *dgamma, const float *dbeta, Py_ssize_t n, Py_ssize_t i0,
                           Py_ssize_t i1, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, int batch_stats)
    void fnn_bn_dx_block_d(const double *dY, const double *Xhat, const double *A, const double *gamma,
                           const double *invstd, double *dX, const double *dgamma, const double *dbeta, Py_ssize_t n,
                           Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, int batch_stats)
    void fnn_bn_norm_block_f(const float *X, float *Y, float *Xhat, const float *gamma, const float *beta,
                             const double *m, const double *s, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C,
                             Py_ssize_t c0, Py_ssize_t c1, int relu)
    void fnn_bn_norm_block_d(const double *X, double *Y, double *Xhat, const double *gamma, const double *beta,
                             const double *m, const double *s, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C,
                             Py_ssize_t c0, Py_ssize_t c1, int relu)
    void fnn_bn_sum_rows_f(const float *X, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, double *acc)
    void fnn_bn_sum_rows_d(const double *X, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, double *acc)
    void fnn_bn_sq_rows_f(const float *X, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, const double *m, double *acc)
    void fnn_bn_sq_rows_d(const double *X, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, const double *m,
                          double *acc)
    void fnn_bn_colsum_rows_f(const float *dY, const float *Xhat, const float *A, Py_ssize_t i0, Py_ssize_t i1,
                              Py_ssize_t C, double *a, double *b)
    void fnn_bn_colsum_rows_d(const double *dY, const double *Xhat, const double *A, Py_ssize_t i0, Py_ssize_t i1,
                              Py_ssize_t C, double *a, double *b)

# The row split (few columns, several threads): per-thread double partials on the caller's stack, at most
# _ROW_PART values (threads x columns x 2, plus the mean and inverse deviation of each column).
cdef enum:
    _ROW_PART = 4096


def row_split_threads(Py_ssize_t n, Py_ssize_t C, int n_threads):
    """The threads batch norm over (n, C) splits by rows at n_threads (0: it splits by column blocks)."""
    return _row_split_threads(n, C, n_threads)


cdef int _row_split_threads(Py_ssize_t n, Py_ssize_t C, int n_threads) noexcept nogil:
    """Threads for the row split, or 0 when the column blocks already give every thread work (or the partials
    would not fit): only then do the bits depend on the thread count."""
    cdef Py_ssize_t nb = (C + FNN_COLS - 1) // FNN_COLS
    cdef int nt = threads_for(n * C, n_threads, FNN_MIN_PER_THREAD)
    if nt > n:
        nt = <int>n
    if nt <= nb or nt <= 1 or 2 * nt * C + 2 * C > _ROW_PART:
        return 0
    return nt


cdef inline void _bn_fwd_block(const floating *X, floating *Y, floating *Xhat, const floating *gamma,
                               const floating *beta, floating *mean, floating *invstd, floating *rmean,
                               floating *rvar, Py_ssize_t n, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1,
                               bint training, double momentum, double eps, bint relu) noexcept nogil:
    """The statistics, Xhat and Y of columns [c0, c1) (csrc/fnn_norm.h, per ISA)."""
    if floating is float:
        fnn_bn_fwd_block_f(X, Y, Xhat, gamma, beta, mean, invstd, rmean, rvar, n, C, c0, c1, training, momentum, eps,
                           relu)
    else:
        fnn_bn_fwd_block_d(X, Y, Xhat, gamma, beta, mean, invstd, rmean, rvar, n, C, c0, c1, training, momentum, eps,
                           relu)


cdef inline void _col_sums(const floating *dY, const floating *Xhat, const floating *A, Py_ssize_t n, Py_ssize_t C,
                           Py_ssize_t c0, Py_ssize_t c1, floating *sum_dy, floating *sum_dy_xhat) noexcept nogil:
    """sum_dy[c] = sum_i dZ[i, c], sum_dy_xhat[c] = sum_i dZ[i, c] * Xhat[i, c], for c in [c0, c1); dZ = dY, or
    with A (a fused ReLU's output) dY where A > 0, else 0."""
    if floating is float:
        fnn_col_sums_f(dY, Xhat, A, n, C, c0, c1, sum_dy, sum_dy_xhat)
    else:
        fnn_col_sums_d(dY, Xhat, A, n, C, c0, c1, sum_dy, sum_dy_xhat)


cdef void _bn_bwd_block(const floating *dY, const floating *Xhat, const floating *A, const floating *gamma,
                        const floating *invstd, floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n,
                        Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, bint batch_stats) noexcept nogil:
    """dbeta, dgamma on columns [c0, c1), then dX (when not NULL): with the batch's statistics,
    dX = gamma * invstd / n * (n dY - sum dY - Xhat * sum(dY Xhat)), else dX = dY * gamma * invstd."""
    _col_sums(dY, Xhat, A, n, C, c0, c1, dbeta, dgamma)
    if dX == NULL:
        return
    if floating is float:
        fnn_bn_dx_block_f(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, 0, n, C, c0, c1, batch_stats)
    else:
        fnn_bn_dx_block_d(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, 0, n, C, c0, c1, batch_stats)


cdef _check1(str fn, str name, a, Py_ssize_t want):
    if a.shape[0] != want:
        raise ValueError(f"{fn}: {name} has {a.shape[0]} elements, expected {want}")


cdef _check2(str fn, str name, a, Py_ssize_t n, Py_ssize_t C):
    if a.shape[0] != n or a.shape[1] != C:
        raise ValueError(f"{fn}: {name} has shape {(a.shape[0], a.shape[1])}, expected {(n, C)}")


def batchnorm_forward(const floating[:, ::1] X, const floating[::1] gamma, const floating[::1] beta,
                      floating[:, ::1] Y, floating[:, ::1] Xhat, floating[::1] mean, floating[::1] invstd,
                      floating[::1] running_mean, floating[::1] running_var, bint training, double momentum=0.1,
                      double eps=1e-5, int n_threads=1, bint relu=False):
    """Batch norm over the rows of each column (torch.nn.BatchNorm1d); relu: Y = max(that, 0), a ReLU fused.

    training: mean, invstd (OUT) from the batch (biased variance); running_mean/var (IN/OUT) updated as
    r = (1 - momentum) r + momentum * stat, with the unbiased variance (None: not tracked); needs n > 1.
    not training: mean, invstd (OUT) from running_mean/var (IN).
    Xhat = (X - mean) * invstd (OUT), Y = gamma * Xhat + beta (OUT).
    """
    cdef Py_ssize_t n = X.shape[0], C = X.shape[1]
    fn = "batchnorm_forward"
    for name, a in (("Y", Y), ("Xhat", Xhat)):
        _check2(fn, name, a, n, C)
    for name, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("invstd", invstd)):
        _check1(fn, name, a, C)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fn}: running_mean and running_var are both given or both None")
    if running_mean is not None:
        _check1(fn, "running_mean", running_mean, C)
        _check1(fn, "running_var", running_var, C)
    elif not training:
        raise ValueError(f"{fn}: inference needs running_mean and running_var")
    if training and n < 2:
        raise ValueError(f"{fn}: training needs more than 1 value per channel, got a batch of {n}")
    if n == 0 or C == 0:
        return
    cdef floating *rm = &running_mean[0] if running_mean is not None else NULL
    cdef floating *rv = &running_var[0] if running_var is not None else NULL
    with nogil:
        bn_forward(&X[0, 0], &gamma[0], &beta[0], &Y[0, 0], &Xhat[0, 0], &mean[0], &invstd[0], rm, rv, n, C,
                   training, momentum, eps, n_threads, relu)


cdef void bn_forward(const floating *X, const floating *gamma, const floating *beta, floating *Y, floating *Xhat,
                     floating *mean, floating *invstd, floating *rmean, floating *rvar, Py_ssize_t n, Py_ssize_t C,
                     bint training, double momentum, double eps, int n_threads, bint relu) noexcept nogil:
    """batchnorm_forward on raw pointers, checked by the caller (training: n > 1; not training: rmean, rvar
    given); n == 0 or C == 0: nothing.  relu: Y = max(Y, 0), the bits of an activation pass after it."""
    cdef Py_ssize_t nb, t
    if n == 0 or C == 0:
        return
    cdef int nr = _row_split_threads(n, C, n_threads)
    if nr:
        _bn_fwd_by_rows(X, gamma, beta, Y, Xhat, mean, invstd, rmean, rvar, n, C, training, momentum, eps, nr, relu)
        return
    cdef int nt = _n_blocks_threads(n, C, n_threads, &nb)
    if nt <= 1:
        _bn_fwd_range(X, Y, Xhat, gamma, beta, mean, invstd, rmean, rvar, n, C, 0, nb, training, momentum, eps,
                      relu)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bn_fwd_range(X, Y, Xhat, gamma, beta, mean, invstd, rmean, rvar, n, C, _lo(t, nt, nb), _lo(t + 1, nt, nb),
                      training, momentum, eps, relu)


cdef void _bn_fwd_range(const floating *X, floating *Y, floating *Xhat, const floating *gamma,
                        const floating *beta, floating *mean, floating *invstd, floating *rmean, floating *rvar,
                        Py_ssize_t n, Py_ssize_t C, Py_ssize_t b0, Py_ssize_t b1, bint training,
                        double momentum, double eps, bint relu) noexcept nogil:
    cdef Py_ssize_t b
    for b in range(b0, b1):
        _bn_fwd_block(X, Y, Xhat, gamma, beta, mean, invstd, rmean, rvar, n, C, b * FNN_COLS,
                      min((b + 1) * FNN_COLS, C), training, momentum, eps, relu)


cdef void _bn_bwd_range(const floating *dY, const floating *Xhat, const floating *A, const floating *gamma,
                        const floating *invstd, floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n,
                        Py_ssize_t C, Py_ssize_t b0, Py_ssize_t b1, bint batch_stats) noexcept nogil:
    cdef Py_ssize_t b
    for b in range(b0, b1):
        _bn_bwd_block(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, C, b * FNN_COLS,
                      min((b + 1) * FNN_COLS, C), batch_stats)


def batchnorm_backward(const floating[:, ::1] dY, const floating[:, ::1] Xhat, const floating[::1] gamma,
                       const floating[::1] invstd, floating[:, ::1] dX, floating[::1] dgamma, floating[::1] dbeta,
                       bint batch_stats, int n_threads=1, const floating[:, ::1] A=None):
    """Backward of batchnorm_forward.  IN: dY, Xhat, gamma, invstd (the forward's).  OUT: dgamma = sum dY Xhat,
    dbeta = sum dY, dX (None: not needed).  batch_stats: the forward normalized with the batch's statistics
    (training), so dX has the terms through the mean and variance; else dX = dY * gamma * invstd.  A: the output
    of a forward with relu=True; dY is then the gradient of that output (the norm's is dY where A > 0, else 0)."""
    cdef Py_ssize_t n = dY.shape[0], C = dY.shape[1]
    fn = "batchnorm_backward"
    _check2(fn, "Xhat", Xhat, n, C)
    if dX is not None:
        _check2(fn, "dX", dX, n, C)
    if A is not None:
        _check2(fn, "A", A, n, C)
    for name, a in (("gamma", gamma), ("invstd", invstd), ("dgamma", dgamma), ("dbeta", dbeta)):
        _check1(fn, name, a, C)
    if C == 0:
        return
    if n == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    cdef floating *dxp = &dX[0, 0] if dX is not None else NULL
    cdef const floating *ap = &A[0, 0] if A is not None else NULL
    with nogil:
        bn_backward(&dY[0, 0], &Xhat[0, 0], &gamma[0], &invstd[0], dxp, &dgamma[0], &dbeta[0], n, C, batch_stats,
                    n_threads, ap)


cdef void bn_backward(const floating *dY, const floating *Xhat, const floating *gamma, const floating *invstd,
                      floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t C, bint batch_stats,
                      int n_threads, const floating *A) noexcept nogil:
    """batchnorm_backward on raw pointers (dX NULL: not needed; A NULL: no fused ReLU); n == 0 zeroes dgamma and
    dbeta."""
    cdef Py_ssize_t nb, t, j
    if C == 0:
        return
    if n == 0:
        for j in range(C):
            dgamma[j] = 0
            dbeta[j] = 0
        return
    cdef int nr = _row_split_threads(n, C, n_threads)
    if nr:
        _bn_bwd_by_rows(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, C, batch_stats, nr)
        return
    cdef int nt = _n_blocks_threads(n, C, n_threads, &nb)
    if nt <= 1:
        _bn_bwd_range(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, C, 0, nb, batch_stats)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bn_bwd_range(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, C, _lo(t, nt, nb), _lo(t + 1, nt, nb),
                      batch_stats)


cdef void _bn_fwd_by_rows(const floating *X, const floating *gamma, const floating *beta, floating *Y,
                          floating *Xhat, floating *mean, floating *invstd, floating *rmean, floating *rvar,
                          Py_ssize_t n, Py_ssize_t C, bint training, double momentum, double eps,
                          int nt, bint relu) noexcept nogil:
    """bn_forward split by rows over nt threads (_row_split_threads): partial sums per thread, added in thread
    order, then the same statistics as fnn_bn_fwd_block and its own last pass (fnn_bn_norm_block)."""
    cdef double part[_ROW_PART]
    cdef double *m = part + 2 * nt * C
    cdef double *sd = m + C
    cdef double v
    cdef Py_ssize_t t, j
    if training:
        for j in range(nt * C):
            part[j] = 0
        for t in prange(nt, num_threads=nt, schedule="static"):
            if floating is float:
                fnn_bn_sum_rows_f(X, _lo(t, nt, n), _lo(t + 1, nt, n), C, part + t * C)
            else:
                fnn_bn_sum_rows_d(X, _lo(t, nt, n), _lo(t + 1, nt, n), C, part + t * C)
        for j in range(C):
            v = 0
            for t in range(nt):
                v = v + part[t * C + j]
            m[j] = v / n
        for j in range(nt * C):
            part[j] = 0
        for t in prange(nt, num_threads=nt, schedule="static"):
            if floating is float:
                fnn_bn_sq_rows_f(X, _lo(t, nt, n), _lo(t + 1, nt, n), C, m, part + t * C)
            else:
                fnn_bn_sq_rows_d(X, _lo(t, nt, n), _lo(t + 1, nt, n), C, m, part + t * C)
        for j in range(C):
            v = 0
            for t in range(nt):
                v = v + part[t * C + j]
            v = v / n                       # biased: normalizes the batch
            mean[j] = <floating>m[j]
            sd[j] = 1.0 / sqrt(v + eps)
            invstd[j] = <floating>sd[j]
            if rmean != NULL:
                rmean[j] = <floating>((1 - momentum) * rmean[j] + momentum * m[j])
                rvar[j] = <floating>((1 - momentum) * rvar[j] + momentum * v * n / (n - 1))
    else:
        for j in range(C):
            m[j] = rmean[j]
            sd[j] = 1.0 / sqrt(<double>rvar[j] + eps)
            mean[j] = <floating>m[j]
            invstd[j] = <floating>sd[j]
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bn_norm_rows(X, Y, Xhat, gamma, beta, m, sd, _lo(t, nt, n), _lo(t + 1, nt, n), C, relu)


cdef void _bn_bwd_by_rows(const floating *dY, const floating *Xhat, const floating *A, const floating *gamma,
                          const floating *invstd, floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n,
                          Py_ssize_t C, bint batch_stats, int nt) noexcept nogil:
    """bn_backward split by rows over nt threads: the column sums as per-thread partials added in thread order,
    then dX by rows with fnn_bn_dx_block."""
    cdef double part[_ROW_PART]
    cdef double a, b
    cdef Py_ssize_t t, j
    for j in range(2 * nt * C):
        part[j] = 0
    for t in prange(nt, num_threads=nt, schedule="static"):
        if floating is float:
            fnn_bn_colsum_rows_f(dY, Xhat, A, _lo(t, nt, n), _lo(t + 1, nt, n), C, part + t * C,
                                 part + (nt + t) * C)
        else:
            fnn_bn_colsum_rows_d(dY, Xhat, A, _lo(t, nt, n), _lo(t + 1, nt, n), C, part + t * C,
                                 part + (nt + t) * C)
    for j in range(C):
        a = 0
        b = 0
        for t in range(nt):
            a = a + part[t * C + j]
            b = b + part[(nt + t) * C + j]
        dbeta[j] = <floating>a
        dgamma[j] = <floating>b
    if dX == NULL:
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bn_dx_rows(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, _lo(t, nt, n), _lo(t + 1, nt, n), C,
                    batch_stats)


cdef void _bn_norm_rows(const floating *X, floating *Y, floating *Xhat, const floating *gamma, const floating *beta,
                        const double *m, const double *sd, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t C, bint relu) noexcept nogil:
    """The forward's last pass on rows [i0, i1), block by block of columns (fnn_bn_norm_block)."""
    cdef Py_ssize_t b, c0, c1
    for b in range((C + FNN_COLS - 1) // FNN_COLS):
        c0 = b * FNN_COLS
        c1 = min(c0 + FNN_COLS, C)
        if floating is float:
            fnn_bn_norm_block_f(X, Y, Xhat, gamma, beta, m + c0, sd + c0, i0, i1, C, c0, c1, relu)
        else:
            fnn_bn_norm_block_d(X, Y, Xhat, gamma, beta, m + c0, sd + c0, i0, i1, C, c0, c1, relu)


cdef void _bn_dx_rows(const floating *dY, const floating *Xhat, const floating *A, const floating *gamma,
                      const floating *invstd, floating *dX, const floating *dgamma, const floating *dbeta,
                      Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, bint batch_stats) noexcept nogil:
    """dX of rows [i0, i1) (of n), block by block of columns (fnn_bn_dx_block)."""
    cdef Py_ssize_t b, c0, c1
    for b in range((C + FNN_COLS - 1) // FNN_COLS):
        c0 = b * FNN_COLS
        c1 = min(c0 + FNN_COLS, C)
        if floating is float:
            fnn_bn_dx_block_f(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, i0, i1, C, c0, c1, batch_stats)
        else:
            fnn_bn_dx_block_d(dY, Xhat, A, gamma, invstd, dX, dgamma, dbeta, n, i0, i1, C, c0, c1, batch_stats)


# ------------------------------------------------------------------------------------------ layer norm
cdef void _ln_fwd_rows(const floating *X, floating *Y, floating *Xhat, const floating *gamma,
                       const floating *beta, floating *invstd, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t D,
                       double eps) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double m, s, v
    cdef const floating *x
    cdef floating *y
    cdef floating *xh
    for i in range(r0, r1):
        x = X + i * D
        y = Y + i * D
        xh = Xhat + i * D
        m = 0
        for j in range(D):
            m += x[j]
        m = m / D
        s = 0
        for j in range(D):
            v = x[j] - m
            s += v * v
        s = 1.0 / sqrt(s / D + eps)
        invstd[i] = <floating>s
        for j in range(D):
            xh[j] = <floating>((x[j] - m) * s)
            y[j] = xh[j] * gamma[j] + beta[j]


cdef void _ln_bwd_rows(const floating *dY, const floating *Xhat, const floating *gamma, const floating *invstd,
                       floating *dX, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double a, b, g
    cdef const floating *dy
    cdef const floating *xh
    cdef floating *dx
    for i in range(r0, r1):
        dy = dY + i * D
        xh = Xhat + i * D
        dx = dX + i * D
        a = 0
        b = 0
        for j in range(D):
            g = <double>dy[j] * gamma[j]
            a += g
            b += g * xh[j]
        a = a / D
        b = b / D
        # dX = invstd * (g - mean(g) - Xhat * mean(g Xhat)), g = dY * gamma
        for j in range(D):
            dx[j] = <floating>(invstd[i] * (<double>dy[j] * gamma[j] - a - xh[j] * b))


cdef void _col_sums_range(const floating *dY, const floating *Xhat, Py_ssize_t n, Py_ssize_t C, Py_ssize_t b0,
                          Py_ssize_t b1, floating *sum_dy, floating *sum_dy_xhat) noexcept nogil:
    cdef Py_ssize_t b
    for b in range(b0, b1):
        _col_sums(dY, Xhat, NULL, n, C, b * FNN_COLS, min((b + 1) * FNN_COLS, C), sum_dy, sum_dy_xhat)


def layernorm_forward(const floating[:, ::1] X, const floating[::1] gamma, const floating[::1] beta,
                      floating[:, ::1] Y, floating[:, ::1] Xhat, floating[::1] invstd, double eps=1e-5,
                      int n_threads=1):
    """Layer norm over the columns of each row (torch.nn.LayerNorm over all features, biased variance).

    OUT: invstd (n,) = 1 / sqrt(var_row + eps), Xhat = (X - mean_row) * invstd, Y = gamma * Xhat + beta."""
    cdef Py_ssize_t n = X.shape[0], D = X.shape[1]
    fn = "layernorm_forward"
    for name, a in (("Y", Y), ("Xhat", Xhat)):
        _check2(fn, name, a, n, D)
    for name, a in (("gamma", gamma), ("beta", beta)):
        _check1(fn, name, a, D)
    _check1(fn, "invstd", invstd, n)
    if n == 0 or D == 0:
        return
    with nogil:
        ln_forward(&X[0, 0], &gamma[0], &beta[0], &Y[0, 0], &Xhat[0, 0], &invstd[0], n, D, eps, n_threads)


cdef void ln_forward(const floating *X, const floating *gamma, const floating *beta, floating *Y, floating *Xhat,
                     floating *invstd, Py_ssize_t n, Py_ssize_t D, double eps, int n_threads) noexcept nogil:
    """layernorm_forward on raw pointers; n == 0 or D == 0: nothing."""
    cdef Py_ssize_t t
    if n == 0 or D == 0:
        return
    cdef int nt = threads_for(n * D, n_threads, FNN_MIN_PER_THREAD)
    if nt > n:
        nt = <int>n
    if nt <= 1:
        _ln_fwd_rows(X, Y, Xhat, gamma, beta, invstd, 0, n, D, eps)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _ln_fwd_rows(X, Y, Xhat, gamma, beta, invstd, _lo(t, nt, n), _lo(t + 1, nt, n), D, eps)


def layernorm_backward(const floating[:, ::1] dY, const floating[:, ::1] Xhat, const floating[::1] gamma,
                       const floating[::1] invstd, floating[:, ::1] dX, floating[::1] dgamma, floating[::1] dbeta,
                       int n_threads=1):
    """Backward of layernorm_forward.  IN: dY, Xhat, gamma, invstd.  OUT: dgamma = sum over rows of dY Xhat,
    dbeta = sum over rows of dY, dX (None: not needed)."""
    cdef Py_ssize_t n = dY.shape[0], D = dY.shape[1]
    fn = "layernorm_backward"
    _check2(fn, "Xhat", Xhat, n, D)
    if dX is not None:
        _check2(fn, "dX", dX, n, D)
    for name, a in (("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)):
        _check1(fn, name, a, D)
    _check1(fn, "invstd", invstd, n)
    if D == 0:
        return
    if n == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    cdef floating *dxp = &dX[0, 0] if dX is not None else NULL
    with nogil:
        ln_backward(&dY[0, 0], &Xhat[0, 0], &gamma[0], &invstd[0], dxp, &dgamma[0], &dbeta[0], n, D, n_threads)


cdef void ln_backward(const floating *dY, const floating *Xhat, const floating *gamma, const floating *invstd,
                      floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t D,
                      int n_threads) noexcept nogil:
    """layernorm_backward on raw pointers (dX NULL: not needed); n == 0 zeroes dgamma and dbeta."""
    cdef Py_ssize_t nb, t, j
    cdef int nt
    if D == 0:
        return
    if n == 0:
        for j in range(D):
            dgamma[j] = 0
            dbeta[j] = 0
        return
    if dX != NULL:
        nt = threads_for(n * D, n_threads, FNN_MIN_PER_THREAD)
        if nt > n:
            nt = <int>n
        if nt <= 1:
            _ln_bwd_rows(dY, Xhat, gamma, invstd, dX, 0, n, D)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                _ln_bwd_rows(dY, Xhat, gamma, invstd, dX, _lo(t, nt, n), _lo(t + 1, nt, n), D)
    nt = _n_blocks_threads(n, D, n_threads, &nb)
    if nt <= 1:
        _col_sums_range(dY, Xhat, n, D, 0, nb, dbeta, dgamma)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _col_sums_range(dY, Xhat, n, D, _lo(t, nt, nb), _lo(t + 1, nt, nb), dbeta, dgamma)
