# cython: boundscheck=False, wraparound=False, cdivision=True
"""Gradient clipping over the model's flat gradient buffer, and the max-norm weight constraint, float32/float64.

``clip_gradients`` is one kernel: pass 1 clips each element to [-clip_value, clip_value] (when asked) and
accumulates the squared global norm in double, one partial sum per thread over static contiguous ranges
(deterministic for a given thread count); pass 2, only when the norm exceeds max_norm, scales the buffer by
max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_ does.

``max_norm_columns`` (fastnn.constraints.MaxNorm) rescales the columns of a weight whose L2 norm exceeds the
limit; its nogil core ``max_norm_core`` is shared with the compiled training plan (plan.pyx), which applies the
constraints after each update, so both paths run the same code on the same values.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD

cdef enum:
    FNN_MAX_PARTIALS = 256


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef double _clip_sq_range(floating *g, Py_ssize_t i0, Py_ssize_t i1, floating v, bint by_value) noexcept nogil:
    cdef Py_ssize_t i
    cdef double s = 0
    cdef floating x
    for i in range(i0, i1):
        x = g[i]
        if by_value:
            x = v if x > v else (-v if x < -v else x)
            g[i] = x
        s += <double>x * x
    return s


cdef void _scale_range(floating *g, Py_ssize_t i0, Py_ssize_t i1, floating c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        g[i] = g[i] * c


def clip_gradients(floating[::1] g, double clip_value=-1.0, double max_norm=-1.0, int n_threads=1):
    """Clip g (IN/OUT) in place and return its global L2 norm (after value clipping, before norm scaling).

    clip_value > 0: each element clamped to [-clip_value, clip_value] first (torch clip_grad_value_).
    max_norm >= 0: when the norm exceeds max_norm, g *= max_norm / (norm + 1e-6) (torch clip_grad_norm_).
    Negative values switch a part off.  A non-finite norm is returned as is and g is scaled by it (as torch).
    """
    if g.shape[0] == 0:
        return 0.0
    return clip_core(&g[0], g.shape[0], clip_value, max_norm, n_threads)


cdef double clip_core(floating *g, Py_ssize_t n, double clip_value, double max_norm, int n_threads) noexcept nogil:
    """clip_gradients on a raw buffer of n > 0 elements (nogil; the compiled training plan calls it too)."""
    cdef Py_ssize_t t
    cdef double partial[FNN_MAX_PARTIALS]
    cdef double total = 0, coef
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    if nt > FNN_MAX_PARTIALS:
        nt = FNN_MAX_PARTIALS
    cdef bint by_value = clip_value > 0
    if nt <= 1:
        partial[0] = _clip_sq_range(g, 0, n, <floating>clip_value, by_value)
    else:
        for t in prange(nt, num_threads=nt, schedule="static"):
            partial[t] = _clip_sq_range(g, _lo(t, nt, n), _lo(t + 1, nt, n), <floating>clip_value, by_value)
    for t in range(nt):
        total = total + partial[t]
    total = sqrt(total)
    if max_norm >= 0:
        coef = max_norm / (total + 1e-6)
        if coef < 1.0 or coef != coef:
            if nt <= 1:
                _scale_range(g, 0, n, <floating>coef)
            else:
                for t in prange(nt, num_threads=nt, schedule="static"):
                    _scale_range(g, _lo(t, nt, n), _lo(t + 1, nt, n), <floating>coef)
    return total


def max_norm_columns(floating[:, ::1] W, floating[::1] norms, double max_value, int n_threads=1):
    """Rescale every column of W (IN/OUT, (n_in, n_out): a unit's incoming weights) whose L2 norm exceeds
    max_value to norm max_value.  norms (OUT scratch, (n_out,)) receives the column norms before rescaling."""
    if norms.shape[0] != W.shape[1]:
        raise ValueError(f"max_norm_columns: norms has {norms.shape[0]} elements, W has {W.shape[1]} columns")
    if W.shape[1] == 0:
        return
    with nogil:
        max_norm_core(&W[0, 0] if W.shape[0] > 0 else NULL, &norms[0], W.shape[0], W.shape[1], max_value,
                      n_threads)


cdef void max_norm_core(floating *W, floating *norms, Py_ssize_t n_in, Py_ssize_t n_out, double max_value,
                        int n_threads) noexcept nogil:
    """max_norm_columns on a raw (n_in, n_out) row-major W (n_in may be 0: W unused) and norms (n_out,); nogil,
    no allocation (the compiled training plan calls it after each update).  The columns are split over the
    threads in blocks of 16; each column's sum runs over the rows in order whatever the split, so every thread
    count gives the same bits."""
    cdef int nt = threads_for(n_in * n_out, n_threads, FNN_MIN_PER_THREAD)
    cdef Py_ssize_t t
    if n_out <= 0:
        return
    if nt > n_out // 16:
        nt = max(1, <int>(n_out // 16))
    if nt <= 1:
        _max_norm_cols(W, norms, n_in, n_out, 0, n_out, max_value)
    else:
        for t in prange(nt, num_threads=nt, schedule="static"):
            _max_norm_cols(W, norms, n_in, n_out, _lo(t, nt, n_out // 16) * 16,
                           n_out if t == nt - 1 else _lo(t + 1, nt, n_out // 16) * 16, max_value)


cdef void _max_norm_cols(floating *W, floating *norms, Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t c0,
                         Py_ssize_t c1, double max_value) noexcept nogil:
    """Columns [c0, c1) of max_norm_core: their norms (a sum of squares over the rows, in row order, then the
    square root), then, only when one exceeds max_value, a pass that rescales those columns."""
    cdef Py_ssize_t i, j
    cdef floating *w
    cdef bint over = 0
    for j in range(c0, c1):
        norms[j] = 0
    for i in range(n_in):
        w = W + i * n_out
        for j in range(c0, c1):
            norms[j] = norms[j] + w[j] * w[j]
    for j in range(c0, c1):
        norms[j] = sqrt(norms[j])
        over |= norms[j] > max_value
    if not over:
        return
    for i in range(n_in):
        w = W + i * n_out
        for j in range(c0, c1):
            if norms[j] > max_value:
                w[j] = w[j] * (max_value / norms[j])
