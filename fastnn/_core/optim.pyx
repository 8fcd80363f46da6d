# cython: boundscheck=False, wraparound=False, cdivision=True
"""Optimizer updates: one pass over the model's flat parameter buffer, float32 and float64.

Each follows the single-tensor update of the torch.optim class of the same name, step for step.  Weight
decay (coupled: added to the gradient; decoupled for AdamW: p *= 1 - lr*wd) applies to elements
[0, n_decay) of the buffer only: fastnn lays out the parameters that decay (weights) first.  The buffer is
split over threads in contiguous ranges when it is large enough.
"""
from cython.parallel cimport prange

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD


cdef _check_same(str fn, Py_ssize_t n, dict arrays):
    for name, a in arrays.items():
        if a is not None and a.shape[0] != n:
            raise ValueError(f"{fn}: {name} has {a.shape[0]} elements, the parameters have {n}")


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


# ---------------------------------------------------------------------------------------------- SGD
cdef extern from "fnn_update.h" nogil:
    void fnn_sgd_range_max_f(float *p, const float *g, float *buf, Py_ssize_t i0, Py_ssize_t i1, float lr,
                             float momentum, float dampening, float wd, int nesterov, int first, double *mx)
    void fnn_sgd_range_max_d(double *p, const double *g, double *buf, Py_ssize_t i0, Py_ssize_t i1, double lr,
                             double momentum, double dampening, double wd, int nesterov, int first, double *mx)
    void fnn_adam_range_max_f(float *p, const float *g, float *m, float *v, float *vmax, Py_ssize_t i0,
                              Py_ssize_t i1, float step_size, float beta1, float beta2, float eps, float bc2_sqrt,
                              float wd, float decay_factor, double *mx)
    void fnn_adam_range_max_d(double *p, const double *g, double *m, double *v, double *vmax, Py_ssize_t i0,
                              Py_ssize_t i1, double step_size, double beta1, double beta2, double eps,
                              double bc2_sqrt, double wd, double decay_factor, double *mx)
    void fnn_rmsprop_range_f(float *p, const float *g, float *sq, float *gavg, float *buf, Py_ssize_t i0,
                             Py_ssize_t i1, float lr, float alpha, float eps, float wd, float momentum)
    void fnn_rmsprop_range_d(double *p, const double *g, double *sq, double *gavg, double *buf, Py_ssize_t i0,
                             Py_ssize_t i1, double lr, double alpha, double eps, double wd, double momentum)
    void fnn_adagrad_range_f(float *p, const float *g, float *s, Py_ssize_t i0, Py_ssize_t i1, float clr,
                             float wd, float eps)
    void fnn_adagrad_range_d(double *p, const double *g, double *s, Py_ssize_t i0, Py_ssize_t i1, double clr,
                             double wd, double eps)


cdef void _sgd_range(floating *p, const floating *g, floating *buf, Py_ssize_t i0, Py_ssize_t i1,
                     floating lr, floating momentum, floating dampening, floating wd, bint nesterov,
                     bint first, double *mx) noexcept nogil:
    """g' = g + wd p; with a buffer: buf = g' (first step) or momentum buf + (1 - dampening) g', and the step is
    g' + momentum buf (nesterov) or buf; p -= lr step.  In C (csrc/fnn_update.h); mx (may be NULL): raised to
    max |p| and max |buf| written (mx[0], mx[1])."""
    cdef double scratch[4]
    if mx == NULL:
        mx = scratch
        mx[0] = mx[1] = mx[2] = mx[3] = 0.0
    if floating is float:
        fnn_sgd_range_max_f(p, g, buf, i0, i1, lr, momentum, dampening, wd, nesterov, first, mx)
    else:
        fnn_sgd_range_max_d(p, g, buf, i0, i1, lr, momentum, dampening, wd, nesterov, first, mx)


def sgd_step(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr, double momentum,
             double dampening, double weight_decay, bint nesterov, bint first, Py_ssize_t n_decay,
             int n_threads=1):
    """torch.optim.SGD: p (IN/OUT), g (IN), buf (IN/OUT momentum buffer; None without momentum)."""
    cdef Py_ssize_t n = p.shape[0], t, a, b, c
    _check_same("sgd_step", n, {"g": g, "buf": buf})
    if n == 0:
        return
    cdef floating *bp = &buf[0] if buf is not None else NULL
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    n_decay = max(0, min(n_decay, n))
    for t in prange(nt, num_threads=nt, nogil=True, schedule="static"):
        a = _lo(t, nt, n)
        b = _lo(t + 1, nt, n)
        c = min(max(a, n_decay), b)
        _sgd_range(&p[0], &g[0], bp, a, c, <floating>lr, <floating>momentum, <floating>dampening,
                   <floating>weight_decay, nesterov, first, NULL)
        _sgd_range(&p[0], &g[0], bp, c, b, <floating>lr, <floating>momentum, <floating>dampening,
                   <floating>0, nesterov, first, NULL)


# ------------------------------------------------------------------------------------------ Adagrad
cdef void _adagrad_range(floating *p, const floating *g, floating *s, Py_ssize_t i0, Py_ssize_t i1,
                         floating clr, floating wd, floating eps) noexcept nogil:
    """g' = g + wd p; s += g' g'; p -= clr g' / (sqrt(s) + eps).  In C (csrc/fnn_update.h)."""
    if floating is float:
        fnn_adagrad_range_f(p, g, s, i0, i1, clr, wd, eps)
    else:
        fnn_adagrad_range_d(p, g, s, i0, i1, clr, wd, eps)


def adagrad_step(floating[::1] p, const floating[::1] g, floating[::1] state_sum, double clr,
                 double weight_decay, double eps, Py_ssize_t n_decay, int n_threads=1):
    """torch.optim.Adagrad with the decayed rate clr = lr / (1 + (step - 1) * lr_decay) given."""
    cdef Py_ssize_t n = p.shape[0], t, a, b, c
    _check_same("adagrad_step", n, {"g": g, "state_sum": state_sum})
    if n == 0:
        return
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    n_decay = max(0, min(n_decay, n))
    for t in prange(nt, num_threads=nt, nogil=True, schedule="static"):
        a = _lo(t, nt, n)
        b = _lo(t + 1, nt, n)
        c = min(max(a, n_decay), b)
        _adagrad_range(&p[0], &g[0], &state_sum[0], a, c, <floating>clr, <floating>weight_decay, <floating>eps)
        _adagrad_range(&p[0], &g[0], &state_sum[0], c, b, <floating>clr, <floating>0, <floating>eps)


# ------------------------------------------------------------------------------------------ RMSprop
cdef void _rmsprop_range(floating *p, const floating *g, floating *sq, floating *gavg, floating *buf,
                         Py_ssize_t i0, Py_ssize_t i1, floating lr, floating alpha, floating eps,
                         floating wd, floating momentum) noexcept nogil:
    """torch.optim.RMSprop's update of [i0, i1) (gavg NULL unless centered, buf NULL without momentum).  In C
    (csrc/fnn_update.h)."""
    if floating is float:
        fnn_rmsprop_range_f(p, g, sq, gavg, buf, i0, i1, lr, alpha, eps, wd, momentum)
    else:
        fnn_rmsprop_range_d(p, g, sq, gavg, buf, i0, i1, lr, alpha, eps, wd, momentum)


def rmsprop_step(floating[::1] p, const floating[::1] g, floating[::1] square_avg, floating[::1] grad_avg,
                 floating[::1] buf, double lr, double alpha, double eps, double weight_decay, double momentum,
                 Py_ssize_t n_decay, int n_threads=1):
    """torch.optim.RMSprop: grad_avg None unless centered, buf None unless momentum > 0."""
    cdef Py_ssize_t n = p.shape[0], t, a, b, c
    _check_same("rmsprop_step", n, {"g": g, "square_avg": square_avg, "grad_avg": grad_avg, "buf": buf})
    if n == 0:
        return
    cdef floating *gap = &grad_avg[0] if grad_avg is not None else NULL
    cdef floating *bp = &buf[0] if buf is not None else NULL
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    n_decay = max(0, min(n_decay, n))
    for t in prange(nt, num_threads=nt, nogil=True, schedule="static"):
        a = _lo(t, nt, n)
        b = _lo(t + 1, nt, n)
        c = min(max(a, n_decay), b)
        _rmsprop_range(&p[0], &g[0], &square_avg[0], gap, bp, a, c, <floating>lr, <floating>alpha,
                       <floating>eps, <floating>weight_decay, <floating>momentum)
        _rmsprop_range(&p[0], &g[0], &square_avg[0], gap, bp, c, b, <floating>lr, <floating>alpha,
                       <floating>eps, <floating>0, <floating>momentum)


# --------------------------------------------------------------------------------------- Adam, AdamW
cdef void _adam_range(floating *p, const floating *g, floating *m, floating *v, floating *vmax,
                      Py_ssize_t i0, Py_ssize_t i1, floating step_size, floating beta1, floating beta2,
                      floating eps, floating bc2_sqrt, floating wd, floating decay_factor, double *mx) noexcept nogil:
    """p = p * decay_factor; g' = g + wd p; m, v (and vmax) updated; p -= step_size m / (sqrt(v) / bc2_sqrt + eps).
    In C (csrc/fnn_update.h); mx (may be NULL): raised to max |p|, |m|, v, vmax written (mx[0..3])."""
    cdef double scratch[4]
    if mx == NULL:
        mx = scratch
        mx[0] = mx[1] = mx[2] = mx[3] = 0.0
    if floating is float:
        fnn_adam_range_max_f(p, g, m, v, vmax, i0, i1, step_size, beta1, beta2, eps, bc2_sqrt, wd, decay_factor, mx)
    else:
        fnn_adam_range_max_d(p, g, m, v, vmax, i0, i1, step_size, beta1, beta2, eps, bc2_sqrt, wd, decay_factor, mx)


def adam_step(floating[::1] p, const floating[::1] g, floating[::1] exp_avg, floating[::1] exp_avg_sq,
              floating[::1] max_exp_avg_sq, double lr, double beta1, double beta2, double eps,
              double weight_decay, bint decoupled, Py_ssize_t step, Py_ssize_t n_decay, int n_threads=1):
    """torch.optim.Adam (decoupled=False) and AdamW (decoupled=True) at the given step (>= 1).

    max_exp_avg_sq is None unless amsgrad.
    """
    cdef Py_ssize_t n = p.shape[0], t, a, b, c
    _check_same("adam_step", n, {"g": g, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                                 "max_exp_avg_sq": max_exp_avg_sq})
    if step < 1:
        raise ValueError(f"adam_step: step must be >= 1, got {step}")
    if n == 0:
        return
    cdef double bc1 = 1.0 - beta1 ** step
    cdef double bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    cdef double step_size = lr / bc1
    cdef floating wd_c = <floating>(0.0 if decoupled else weight_decay)
    cdef floating dfac = <floating>(1.0 - lr * weight_decay if decoupled else 1.0)
    cdef floating *vmp = &max_exp_avg_sq[0] if max_exp_avg_sq is not None else NULL
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    n_decay = max(0, min(n_decay, n))
    for t in prange(nt, num_threads=nt, nogil=True, schedule="static"):
        a = _lo(t, nt, n)
        b = _lo(t + 1, nt, n)
        c = min(max(a, n_decay), b)
        _adam_range(&p[0], &g[0], &exp_avg[0], &exp_avg_sq[0], vmp, a, c, <floating>step_size,
                    <floating>beta1, <floating>beta2, <floating>eps, <floating>bc2_sqrt, wd_c, dfac, NULL)
        _adam_range(&p[0], &g[0], &exp_avg[0], &exp_avg_sq[0], vmp, c, b, <floating>step_size,
                    <floating>beta1, <floating>beta2, <floating>eps, <floating>bc2_sqrt, <floating>0,
                    <floating>1, NULL)
