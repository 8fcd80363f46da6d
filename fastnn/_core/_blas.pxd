# The only door to BLAS (scipy-openblas32: every symbol carries the prefix scipy_, blasint is int).

from libc.string cimport memset

from fastnn._core._common cimport floating

cdef extern from "cblas.h" nogil:
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
        CblasColMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K,
                           float alpha, const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc)
    void scipy_cblas_dgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K,
                           double alpha, const double *A, int lda, const double *B, int ldb,
                           double beta, double *C, int ldc)
    void scipy_cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, int M, int N, float alpha, const float *A,
                           int lda, const float *x, int incx, float beta, float *y, int incy)
    void scipy_cblas_dgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, int M, int N, double alpha, const double *A,
                           int lda, const double *x, int incx, double beta, double *y, int incy)


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                      const floating *A, int lda, const floating *B, int ldb,
                      floating beta, floating *C, int ldc) noexcept nogil:
    """C := alpha * op(A).op(B) + beta * C, row-major; op(A) is M x K, op(B) is K x N, C is M x N."""
    cdef CBLAS_TRANSPOSE ta = CblasTrans if trans_a else CblasNoTrans
    cdef CBLAS_TRANSPOSE tb = CblasTrans if trans_b else CblasNoTrans
    if floating is float:
        scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void gemv(bint trans_a, int M, int N, floating alpha, const floating *A, int lda,
                      const floating *x, int incx, floating beta, floating *y, int incy) noexcept nogil:
    """y := alpha * op(A).x + beta * y, A row-major M x N (lda >= N); op(A) is A (y has M elements, x N) or,
    with trans_a, A^T (y has N elements, x M)."""
    cdef CBLAS_TRANSPOSE ta = CblasTrans if trans_a else CblasNoTrans
    if floating is float:
        scipy_cblas_sgemv(CblasRowMajor, ta, M, N, alpha, A, lda, x, incx, beta, y, incy)
    else:
        scipy_cblas_dgemv(CblasRowMajor, ta, M, N, alpha, A, lda, x, incx, beta, y, incy)


cdef extern from "fnn_rows.h" nogil:
    int fnn_rows_f(int m, Py_ssize_t N, Py_ssize_t K, const float *X, Py_ssize_t ldx, const float *W,
                   Py_ssize_t ldw, float *Z, Py_ssize_t ldz)
    int fnn_rows_d(int m, Py_ssize_t N, Py_ssize_t K, const double *X, Py_ssize_t ldx, const double *W,
                   Py_ssize_t ldw, double *Z, Py_ssize_t ldz)
    int fnn_rows_isa()
    int fnn_rows_set_isa(int cap)


cdef inline void rows_times(int m, int N, int K, const floating *x, int ldx, const floating *W, int ldw,
                            floating *Z, int ldz) noexcept nogil:
    """Z (m x N) = x (m x K) . W (K x N), row-major, by the route chosen for the shape: the forward products of
    Dense layers (every m >= 0, N >= 0, K >= 0).

    OpenBLAS's GEMM is slow for a few rows on AVX2 CPUs (its Haswell kernels pack W on every call: one row of the
    W4 network's 784x256 layer took ~4x its GEMV), and its GEMV streams W once per row.  fastnn's own kernel
    (csrc/fnn_rows.h, AVX-512 or AVX2+FMA) streams W once for up to 4 rows: it takes 1-3 rows everywhere (as fast
    as the GEMV for one row, faster than OpenBLAS's GEMM for 2-3 on every core type measured), and 4 rows on
    AVX2 CPUs (on AVX-512 ones OpenBLAS's GEMM is faster there).  Without the kernel (another compiler or CPU):
    the GEMV for one row, the GEMM otherwise.  The kernel's values do not depend on the ISA or the columns given
    (a column split over threads gives the same bits)."""
    cdef int done = 0, r
    if m <= 0 or N <= 0:
        return
    if K <= 0:
        for r in range(m):
            memset(Z + <Py_ssize_t>r * ldz, 0, N * sizeof(floating))
        return
    if m <= 3 or (m == 4 and fnn_rows_isa() == 1):
        if floating is float:
            done = fnn_rows_f(m, N, K, x, ldx, W, ldw, Z, ldz)
        else:
            done = fnn_rows_d(m, N, K, x, ldx, W, ldw, Z, ldz)
    if done:
        return
    if m == 1:
        gemv(True, K, N, <floating>1, W, ldw, x, 1, <floating>0, Z, 1)
    else:
        gemm(False, False, m, N, K, <floating>1, x, ldx, W, ldw, <floating>0, Z, ldz)
