# The per-range updates of optim.pyx, shared with the compiled training plan (plan.pyx) so that both paths run
# exactly the same arithmetic.
from fastnn._core._common cimport floating

cdef void _sgd_range(floating *p, const floating *g, floating *buf, Py_ssize_t i0, Py_ssize_t i1,
                     floating lr, floating momentum, floating dampening, floating wd, bint nesterov,
                     bint first, double *mx) noexcept nogil
cdef void _adagrad_range(floating *p, const floating *g, floating *s, Py_ssize_t i0, Py_ssize_t i1,
                         floating clr, floating wd, floating eps) noexcept nogil
cdef void _rmsprop_range(floating *p, const floating *g, floating *sq, floating *gavg, floating *buf,
                         Py_ssize_t i0, Py_ssize_t i1, floating lr, floating alpha, floating eps,
                         floating wd, floating momentum) noexcept nogil
cdef void _adam_range(floating *p, const floating *g, floating *m, floating *v, floating *vmax,
                      Py_ssize_t i0, Py_ssize_t i1, floating step_size, floating beta1, floating beta2,
                      floating eps, floating bc2_sqrt, floating wd, floating decay_factor, double *mx) noexcept nogil
