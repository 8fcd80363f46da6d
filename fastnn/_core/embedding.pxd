# The embedding kernels on raw pointers (fastnn/_core/embedding.pyx), for the def wrappers there and for the
# compiled training plan (fastnn/_core/plan.pyx): both run these, so the two paths share one code path.  The ids
# must be in [0, n_rows) (the callers check them first).

from libc.stdint cimport int32_t, int64_t

from fastnn._core._common cimport floating

ctypedef fused index_t:
    int32_t
    int64_t

# Y[i] = W[ids[i]] for the n ids (W (n_rows, d), Y (n, d)); the rows split over the threads
cdef void embedding_gather(const index_t *ids, const floating *W, floating *Y, Py_ssize_t n, Py_ssize_t d,
                           int n_threads) noexcept nogil
# dW = 0, then dW[ids[i]] += dY[i] for every i, in the ids' order (dW (n_rows, d)); the columns split over the
# threads, so that the sums do not depend on the thread count
cdef void embedding_scatter(const index_t *ids, const floating *dY, floating *dW, Py_ssize_t n, Py_ssize_t n_rows,
                            Py_ssize_t d, int n_threads) noexcept nogil
