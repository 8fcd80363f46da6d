# cython: boundscheck=False, wraparound=False, cdivision=True
"""Activation kernels, forward and backward, float32 and float64.

Layout: (n_rows, n_cols) C-contiguous blocks; softmax is over each row (the feature axis), every other
activation is elementwise.  ``act_forward`` can add a per-column bias to Z first (fused with Dense: the pass
that follows the GEMM adds the bias and applies the activation).  Work is split over rows between threads
only when each thread gets at least FNN_MIN_ACT_PER_THREAD elements (_common.pxd says why it is lower than
the other kernels' threshold).

Kinds: the rows of csrc/fnn_kinds.h.  An elementwise kind (a row of FNN_ACT_ELEMENTWISE) runs in C
(csrc/fnn_act.h: its forward and backward are two inline functions there); a row-wise kind (FNN_ACT_ROWWISE:
softmax) runs in the row loops below.  Every kernel returns FNN_ERR_KIND for a kind outside the table, before
any work; the Python wrappers check the kind first and raise ValueError.

Unit counters (training-health diagnostics, fastnn.diagnostics): ``act_forward_counted`` is ``act_forward``
that also adds, per column, the number of rows whose output is *active* (ReLU / leaky ReLU: y > 0) or
*saturated* (sigmoid: y < 0.01 or y > 0.99; tanh: |y| > 0.99) into a caller-owned int64 buffer with one row
per thread (no atomics; the caller sums the rows).  The other kinds count nothing (leaky ReLU counts active
units like ReLU).  The Python wrappers take
``counts=None``: then the plain ``act_forward`` runs, so the normal path costs nothing.
"""
from cython.parallel cimport prange
from libc.math cimport exp, expf
from libc.stdint cimport int64_t

from fastnn._core._common cimport floating, threads_for, FNN_MIN_ACT_PER_THREAD
from fastnn._core.kinds cimport (FNN_ERR_KIND, FNN_N_ACT_ELEMENTWISE, FNN_ACT_RELU, FNN_ACT_LEAKY_RELU,
                                 FNN_ACT_SIGMOID, FNN_ACT_TANH, FNN_ACT_SOFTMAX, act_valid)
from fastnn._core.kinds import ACT, check


cdef inline floating f_exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef extern from "fnn_act.h" nogil:
    int fnn_act_fwd_f(int kind, float *Z, float *Y, const float *bias, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t n_cols, float alpha)
    int fnn_act_fwd_d(int kind, double *Z, double *Y, const double *bias, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t n_cols, double alpha)
    int fnn_act_bwd_f(int kind, const float *Z, const float *Y, const float *dY, float *dZ, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t n_cols, float alpha)
    int fnn_act_bwd_d(int kind, const double *Z, const double *Y, const double *dY, double *dZ, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t n_cols, double alpha)


cdef inline bint _elementwise(int kind) noexcept nogil:
    """The kinds csrc/fnn_act.h computes (the rows of FNN_ACT_ELEMENTWISE, numbered first)."""
    return 0 <= kind < FNN_N_ACT_ELEMENTWISE


cdef int _fwd_rows(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t r0, Py_ssize_t r1,
                   Py_ssize_t n_cols, floating alpha) noexcept nogil:
    """Rows [r0, r1): Z += bias (if given), Y = act(Z).  The elementwise kinds run in C (csrc/fnn_act.h).
    Returns 0, or FNN_ERR_KIND for a kind outside the table (nothing computed)."""
    cdef Py_ssize_t i, j
    cdef floating *z
    cdef floating *y
    cdef floating m, s
    if _elementwise(kind):
        if floating is float:
            return fnn_act_fwd_f(kind, Z, Y, bias, r0, r1, n_cols, alpha)
        else:
            return fnn_act_fwd_d(kind, Z, Y, bias, r0, r1, n_cols, alpha)
    if kind != FNN_ACT_SOFTMAX:
        return FNN_ERR_KIND
    for i in range(r0, r1):      # softmax: over the row, shifted by its max
        z = Z + i * n_cols
        y = Y + i * n_cols
        if bias != NULL:
            for j in range(n_cols):
                z[j] = z[j] + bias[j]
        if n_cols == 0:
            continue
        m = z[0]
        for j in range(1, n_cols):
            if z[j] > m:
                m = z[j]
        s = 0
        for j in range(n_cols):
            y[j] = f_exp(z[j] - m)
            s = s + y[j]
        s = 1 / s
        for j in range(n_cols):
            y[j] = y[j] * s
    return 0


cdef int _bwd_rows(int kind, const floating *Z, const floating *Y, const floating *dY, floating *dZ,
                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n_cols, floating alpha) noexcept nogil:
    """Rows [r0, r1): dZ = dY * act'(Z); the elementwise kinds in C (csrc/fnn_act.h), softmax's
    Jacobian-vector product y * (dy - sum(dy * y)) here.  Returns 0, or FNN_ERR_KIND (nothing computed)."""
    cdef Py_ssize_t i, j
    cdef const floating *y
    cdef const floating *dy
    cdef floating *dz
    cdef floating s
    if _elementwise(kind):
        if floating is float:
            return fnn_act_bwd_f(kind, Z, Y, dY, dZ, r0, r1, n_cols, alpha)
        else:
            return fnn_act_bwd_d(kind, Z, Y, dY, dZ, r0, r1, n_cols, alpha)
    if kind != FNN_ACT_SOFTMAX:
        return FNN_ERR_KIND
    for i in range(r0, r1):
        y = Y + i * n_cols
        dy = dY + i * n_cols
        dz = dZ + i * n_cols
        s = 0
        for j in range(n_cols):
            s = s + dy[j] * y[j]
        for j in range(n_cols):
            dz[j] = y[j] * (dy[j] - s)
    return 0


cdef int act_forward(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                     Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil:
    """Z += bias (if given), then Y = act(Z).  Y may be Z for the elementwise kinds.  Returns 0, or FNN_ERR_KIND
    for a kind outside the table (checked first: nothing computed)."""
    cdef int nt = threads_for(n_rows * n_cols, n_threads, FNN_MIN_ACT_PER_THREAD)
    cdef int t
    if not act_valid(kind):
        return FNN_ERR_KIND
    if nt > n_rows:
        nt = <int>n_rows
    if nt <= 1:
        return _fwd_rows(kind, Z, Y, bias, 0, n_rows, n_cols, <floating>alpha)
    for t in prange(nt, num_threads=nt, schedule="static"):
        _fwd_rows(kind, Z, Y, bias, t * n_rows // nt, (t + 1) * n_rows // nt, n_cols, <floating>alpha)
    return 0


cdef int act_backward(int kind, const floating *Z, const floating *Y, const floating *dY, floating *dZ,
                      Py_ssize_t n_rows, Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil:
    """dZ = dY * act'(Z) (the softmax's Jacobian-vector product for softmax).  dZ may be dY.  Returns 0, or
    FNN_ERR_KIND for a kind outside the table (nothing computed)."""
    cdef int nt = threads_for(n_rows * n_cols, n_threads, FNN_MIN_ACT_PER_THREAD)
    cdef int t
    if not act_valid(kind):
        return FNN_ERR_KIND
    if nt > n_rows:
        nt = <int>n_rows
    if nt <= 1:
        return _bwd_rows(kind, Z, Y, dY, dZ, 0, n_rows, n_cols, <floating>alpha)
    for t in prange(nt, num_threads=nt, schedule="static"):
        _bwd_rows(kind, Z, Y, dY, dZ, t * n_rows // nt, (t + 1) * n_rows // nt, n_cols, <floating>alpha)
    return 0


cdef inline void _count_row(int kind, const floating *y, int64_t *c, Py_ssize_t n_cols) noexcept nogil:
    """c[j] += 1 where unit j of this output row is active (relu kinds) or saturated (sigmoid, tanh)."""
    cdef Py_ssize_t j
    if kind == FNN_ACT_RELU or kind == FNN_ACT_LEAKY_RELU:
        for j in range(n_cols):
            if y[j] > 0:
                c[j] += 1
    elif kind == FNN_ACT_SIGMOID:
        for j in range(n_cols):
            if y[j] < <floating>0.01 or y[j] > <floating>0.99:
                c[j] += 1
    elif kind == FNN_ACT_TANH:
        for j in range(n_cols):
            if y[j] > <floating>0.99 or y[j] < <floating>-0.99:
                c[j] += 1


cdef void _fwd_rows_counted(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t r0,
                            Py_ssize_t r1, Py_ssize_t n_cols, floating alpha, int64_t *c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(r0, r1):      # count each row right after computing it, while it is in cache
        _fwd_rows(kind, Z, Y, bias, i, i + 1, n_cols, alpha)      # the kind was checked by act_forward_counted
        _count_row(kind, Y + i * n_cols, c, n_cols)


cdef int act_forward_counted(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, double alpha, int n_threads, int64_t *counts,
                             Py_ssize_t n_slots) noexcept nogil:
    """act_forward, and counts[t, j] += number of rows of thread t where unit j is active / saturated.

    counts (IN/OUT, accumulated): (n_slots, n_cols) int64; at most n_slots threads are used.  Returns 0, or
    FNN_ERR_KIND for a kind outside the table (nothing computed).
    """
    cdef int nt = threads_for(n_rows * n_cols, n_threads, FNN_MIN_ACT_PER_THREAD)
    cdef int t
    if not act_valid(kind):
        return FNN_ERR_KIND
    if nt > n_rows:
        nt = <int>n_rows
    if nt > n_slots:
        nt = <int>n_slots
    if nt <= 1:
        _fwd_rows_counted(kind, Z, Y, bias, 0, n_rows, n_cols, <floating>alpha, counts)
        return 0
    for t in prange(nt, num_threads=nt, schedule="static"):
        _fwd_rows_counted(kind, Z, Y, bias, t * n_rows // nt, (t + 1) * n_rows // nt, n_cols, <floating>alpha,
                          counts + t * n_cols)
    return 0


def check_counts(int64_t[:, ::1] counts, Py_ssize_t n_cols, str owner):
    """Validate a counts buffer for act_forward_counted: (n_slots >= 1, n_cols) int64."""
    if counts.shape[0] < 1 or counts.shape[1] != n_cols:
        raise ValueError(f"{owner}: counts must have shape (n_slots >= 1, {n_cols}), got "
                         f"{(counts.shape[0], counts.shape[1])}")


cdef int check_act(int kind, str owner) except -1:
    """ValueError naming owner unless kind is a row of the activation table (fast path: one comparison)."""
    if not act_valid(kind):
        check(ACT, kind, owner)      # raises, naming the known kinds
    return 0


cdef int kernel_ok(int err, str owner) except -1:
    """RuntimeError unless a kernel returned 0 (its kind was checked on entry: an internal error)."""
    if err != 0:
        raise RuntimeError(f"{owner}: the kernel rejected its activation kind (error {err})")
    return 0


def activation_forward(int kind, floating[:, ::1] Z, floating[:, ::1] Y, double alpha=0.0, int n_threads=1,
                       int64_t[:, ::1] counts=None):
    """Y = act(Z), row-wise for softmax.  Z (IN), Y (OUT, may be Z for elementwise kinds): same shape.

    counts (IN/OUT, optional): (n_slots, n_cols) int64; adds the unit counters (see the module docstring).
    """
    check_act(kind, "activation_forward")
    if Z.shape[0] != Y.shape[0] or Z.shape[1] != Y.shape[1]:
        raise ValueError(f"activation_forward: Z is {(Z.shape[0], Z.shape[1])}, Y is {(Y.shape[0], Y.shape[1])}")
    if counts is not None:
        check_counts(counts, Z.shape[1], "activation_forward")
    if Z.shape[0] * Z.shape[1] == 0:
        return
    cdef int err
    with nogil:
        if counts is None:
            err = act_forward(kind, &Z[0, 0], &Y[0, 0], <const floating *>NULL, Z.shape[0], Z.shape[1], alpha,
                              n_threads)
        else:
            err = act_forward_counted(kind, &Z[0, 0], &Y[0, 0], <const floating *>NULL, Z.shape[0], Z.shape[1],
                                      alpha, n_threads, &counts[0, 0], counts.shape[0])
    kernel_ok(err, "activation_forward")


def activation_backward(int kind, const floating[:, ::1] Z, const floating[:, ::1] Y, const floating[:, ::1] dY,
                        floating[:, ::1] dZ, double alpha=0.0, int n_threads=1):
    """dZ = dY * act'(Z).  Z, Y (IN: the forward's input and output), dY (IN), dZ (OUT): same shape."""
    check_act(kind, "activation_backward")
    for name, a in (("Y", Y), ("dY", dY), ("dZ", dZ)):
        if a.shape[0] != Z.shape[0] or a.shape[1] != Z.shape[1]:
            raise ValueError(f"activation_backward: Z is {(Z.shape[0], Z.shape[1])}, "
                             f"{name} is {(a.shape[0], a.shape[1])}")
    if Z.shape[0] * Z.shape[1] == 0:
        return
    cdef int err
    with nogil:
        err = act_backward(kind, &Z[0, 0], &Y[0, 0], &dY[0, 0], &dZ[0, 0], Z.shape[0], Z.shape[1], alpha, n_threads)
    kernel_ok(err, "activation_backward")
