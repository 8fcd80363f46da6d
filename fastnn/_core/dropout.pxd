# The dropout kernels on raw pointers (fastnn/_core/dropout.pyx), for the compiled training plan.

from libc.stdint cimport uint64_t

from fastnn._core._common cimport floating

cdef void dropout_fwd(const floating *X, floating *Y, unsigned char *mask, Py_ssize_t n, uint64_t seed,
                      uint64_t threshold, double scale, uint64_t offset, int n_threads) noexcept nogil
cdef void dropout_bwd(const floating *dY, const unsigned char *mask, floating *dX, Py_ssize_t n, double scale,
                      int n_threads) noexcept nogil
