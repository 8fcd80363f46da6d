# cython: boundscheck=False, wraparound=False, cdivision=True
"""Embedding kernels, float32 and float64 weights, int32 and int64 ids: the forward a row gather, the backward
a scatter-add into the rows used.

    forward:  Y[i, :] = W[ids[i], :]                       (rows i of the flattened batch)
    backward: dW = 0; dW[ids[i], :] += dY[i, :]            (repeated ids accumulate)

The ids are checked against [0, n_rows) in the forward before anything is read (one pass over the ids): a bad
id returns its position and writes nothing, so the loops below index W without bounds checks.  The backward
runs on the ids of that forward.  Threads: the gather splits the rows; the scatter-add splits the columns
(each thread adds its slice of every row in the ids' order), so repeated ids never race and the sums do not
depend on the thread count.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef Py_ssize_t _first_bad(const index_t *ids, Py_ssize_t n, Py_ssize_t n_rows) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if ids[i] < 0 or ids[i] >= n_rows:
            return i
    return -1


cdef void _gather(const index_t *ids, const floating *W, floating *Y, Py_ssize_t i0, Py_ssize_t i1,
                  Py_ssize_t d) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        memcpy(Y + i * d, W + <Py_ssize_t>ids[i] * d, d * sizeof(floating))


cdef void _scatter(const index_t *ids, const floating *dY, floating *dW, Py_ssize_t n, Py_ssize_t d,
                   Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating *row
    cdef const floating *g
    for i in range(n):
        row = dW + <Py_ssize_t>ids[i] * d
        g = dY + i * d
        for j in range(j0, j1):
            row[j] += g[j]


def embedding_forward(const index_t[::1] ids, const floating[:, ::1] W, floating[:, ::1] Y, int n_threads=1):
    """Y[i] = W[ids[i]] (OUT) for the n ids (IN, flattened batch); W (IN) is (n_rows, d), Y (n, d).  Returns -1,
    or the position of the first id outside [0, n_rows) (then nothing is written)."""
    cdef Py_ssize_t n = ids.shape[0], d = W.shape[1], n_rows = W.shape[0], bad
    if Y.shape[0] != n or Y.shape[1] != d:
        raise ValueError(f"embedding_forward: Y must be ({n}, {d}), got ({Y.shape[0]}, {Y.shape[1]})")
    if n == 0:
        return -1
    with nogil:
        bad = _first_bad(&ids[0], n, n_rows)
    if bad >= 0 or d == 0:
        return bad
    with nogil:
        embedding_gather(&ids[0], &W[0, 0], &Y[0, 0], n, d, n_threads)
    return -1


def embedding_backward(const index_t[::1] ids, const floating[:, ::1] dY, floating[:, ::1] dW, int n_threads=1):
    """dW = 0, then dW[ids[i]] += dY[i] for every i (OUT: the whole (n_rows, d) gradient; rows of ids that do not
    occur stay 0).  The ids must be those a forward accepted (in range: not checked again)."""
    cdef Py_ssize_t n = ids.shape[0], d = dW.shape[1], n_rows = dW.shape[0]
    if dY.shape[0] != n or dY.shape[1] != d:
        raise ValueError(f"embedding_backward: dY must be ({n}, {d}), got ({dY.shape[0]}, {dY.shape[1]})")
    if n_rows == 0 or d == 0:
        return
    with nogil:
        embedding_scatter(&ids[0] if n > 0 else NULL, &dY[0, 0] if n > 0 else NULL, &dW[0, 0], n, n_rows, d,
                          n_threads)


cdef void embedding_gather(const index_t *ids, const floating *W, floating *Y, Py_ssize_t n, Py_ssize_t d,
                           int n_threads) noexcept nogil:
    cdef Py_ssize_t t
    cdef int nt = threads_for(n * d, n_threads, FNN_MIN_PER_THREAD)
    if n == 0 or d == 0:
        return
    if nt <= 1:
        _gather(ids, W, Y, 0, n, d)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _gather(ids, W, Y, _lo(t, nt, n), _lo(t + 1, nt, n), d)


cdef void embedding_scatter(const index_t *ids, const floating *dY, floating *dW, Py_ssize_t n, Py_ssize_t n_rows,
                            Py_ssize_t d, int n_threads) noexcept nogil:
    cdef Py_ssize_t t
    if n_rows == 0 or d == 0:
        return
    cdef int nt = threads_for(n_rows * d, n_threads, FNN_MIN_PER_THREAD)
    for t in prange(nt, num_threads=nt, schedule="static"):
        memset(dW + _lo(t, nt, n_rows) * d, 0, (_lo(t + 1, nt, n_rows) - _lo(t, nt, n_rows)) * d * sizeof(floating))
    if n == 0:
        return
    nt = threads_for(n * d, n_threads, FNN_MIN_PER_THREAD)
    if nt > d:
        nt = <int>d
    for t in prange(nt, num_threads=nt, schedule="static"):
        _scatter(ids, dY, dW, n, d, _lo(t, nt, d), _lo(t + 1, nt, d))
