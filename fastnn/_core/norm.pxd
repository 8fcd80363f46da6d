# The normalization kernels on raw pointers (fastnn/_core/norm.pyx), for the compiled training plan: the caller
# checks shapes and pointers as the def wrappers there do.

from fastnn._core._common cimport floating

cdef void bn_forward(const floating *X, const floating *gamma, const floating *beta, floating *Y, floating *Xhat,
                     floating *mean, floating *invstd, floating *rmean, floating *rvar, Py_ssize_t n, Py_ssize_t C,
                     bint training, double momentum, double eps, int n_threads, bint relu) noexcept nogil
cdef void bn_backward(const floating *dY, const floating *Xhat, const floating *gamma, const floating *invstd,
                      floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t C, bint batch_stats,
                      int n_threads, const floating *A) noexcept nogil
cdef void ln_forward(const floating *X, const floating *gamma, const floating *beta, floating *Y, floating *Xhat,
                     floating *invstd, Py_ssize_t n, Py_ssize_t D, double eps, int n_threads) noexcept nogil
cdef void ln_backward(const floating *dY, const floating *Xhat, const floating *gamma, const floating *invstd,
                      floating *dX, floating *dgamma, floating *dbeta, Py_ssize_t n, Py_ssize_t D,
                      int n_threads) noexcept nogil
