# cython: boundscheck=False, wraparound=False, cdivision=True
"""Dropout kernels, float32 and float64: the mask is drawn and applied in one pass.

The random numbers come from a counter-based generator (csrc/fnn_rng.h, SplitMix64 indexed by element): element
i is kept when the top 53 bits of fnn_rng_u64(seed, i) are >= `threshold` (threshold = rate * 2^53), so it is
dropped with probability rate.  The mask depends only on (seed, i): the result is the same for any number of
threads.  Arrays are flat (any batch shape, C-contiguous, viewed as 1-D by the caller).
"""
from cython.parallel cimport prange
from libc.stdint cimport uint64_t

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD

cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef extern from "fnn_norm.h" nogil:
    void fnn_dropout_fwd_f(const float *X, float *Y, unsigned char *mask, Py_ssize_t i0, Py_ssize_t i1, uint64_t seed,
                           uint64_t threshold, float scale, uint64_t offset)
    void fnn_dropout_fwd_d(const double *X, double *Y, unsigned char *mask, Py_ssize_t i0, Py_ssize_t i1,
                           uint64_t seed, uint64_t threshold, double scale, uint64_t offset)
    void fnn_dropout_bwd_f(const float *dY, const unsigned char *mask, float *dX, Py_ssize_t i0, Py_ssize_t i1,
                           float scale)
    void fnn_dropout_bwd_d(const double *dY, const unsigned char *mask, double *dX, Py_ssize_t i0, Py_ssize_t i1,
                           double scale)


cdef inline void _fwd_range(const floating *X, floating *Y, unsigned char *mask, Py_ssize_t i0, Py_ssize_t i1,
                            uint64_t seed, uint64_t threshold, floating scale, uint64_t offset) noexcept nogil:
    if floating is float:
        fnn_dropout_fwd_f(X, Y, mask, i0, i1, seed, threshold, scale, offset)
    else:
        fnn_dropout_fwd_d(X, Y, mask, i0, i1, seed, threshold, scale, offset)


cdef inline void _bwd_range(const floating *dY, const unsigned char *mask, floating *dX, Py_ssize_t i0,
                            Py_ssize_t i1, floating scale) noexcept nogil:
    if floating is float:
        fnn_dropout_bwd_f(dY, mask, dX, i0, i1, scale)
    else:
        fnn_dropout_bwd_d(dY, mask, dX, i0, i1, scale)


def dropout_forward(const floating[::1] X, floating[::1] Y, unsigned char[::1] mask, uint64_t seed,
                    uint64_t threshold, double scale, int n_threads=1, uint64_t offset=0):
    """mask[i] = 1 if element i is kept (fnn_rng_u64(seed, offset + i) >> 11 >= threshold) else 0 (OUT, uint8);
    Y[i] = X[i] * mask[i] * scale (OUT).  threshold = rate * 2^53 drops a fraction `rate` on average.

    `offset` skips ahead in the generator's counter: the mask of X equals elements offset .. offset + n - 1 of
    the mask of a larger array drawn with the same seed (a data-parallel rank's rows of the global batch)."""
    cdef Py_ssize_t n = X.shape[0]
    if Y.shape[0] != n or mask.shape[0] != n:
        raise ValueError(f"dropout_forward: X has {n} elements, Y {Y.shape[0]}, mask {mask.shape[0]}")
    if threshold > (<uint64_t>1 << 53):
        raise ValueError(f"dropout_forward: threshold must be <= 2^53, got {threshold}")
    if n == 0:
        return
    with nogil:
        dropout_fwd(&X[0], &Y[0], &mask[0], n, seed, threshold, scale, offset, n_threads)


cdef void dropout_fwd(const floating *X, floating *Y, unsigned char *mask, Py_ssize_t n, uint64_t seed,
                      uint64_t threshold, double scale, uint64_t offset, int n_threads) noexcept nogil:
    """dropout_forward on raw pointers (threshold <= 2^53, checked by the caller)."""
    cdef Py_ssize_t t
    if n == 0:
        return
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    if nt <= 1:
        _fwd_range(X, Y, mask, 0, n, seed, threshold, <floating>scale, offset)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _fwd_range(X, Y, mask, _lo(t, nt, n), _lo(t + 1, nt, n), seed, threshold, <floating>scale, offset)


def dropout_backward(const floating[::1] dY, const unsigned char[::1] mask, floating[::1] dX, double scale,
                     int n_threads=1):
    """dX[i] = dY[i] * mask[i] * scale (OUT), with the mask of the forward pass (IN)."""
    cdef Py_ssize_t n = dY.shape[0]
    if dX.shape[0] != n or mask.shape[0] != n:
        raise ValueError(f"dropout_backward: dY has {n} elements, dX {dX.shape[0]}, mask {mask.shape[0]}")
    if n == 0:
        return
    with nogil:
        dropout_bwd(&dY[0], &mask[0], &dX[0], n, scale, n_threads)


cdef void dropout_bwd(const floating *dY, const unsigned char *mask, floating *dX, Py_ssize_t n, double scale,
                      int n_threads) noexcept nogil:
    """dropout_backward on raw pointers."""
    cdef Py_ssize_t t
    if n == 0:
        return
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    if nt <= 1:
        _bwd_range(dY, mask, dX, 0, n, <floating>scale)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bwd_range(dY, mask, dX, _lo(t, nt, n), _lo(t + 1, nt, n), <floating>scale)
