# The nogil cores of losses.pyx, shared with the compiled training plan (plan.pyx).
from fastnn._core._common cimport floating

cdef double ce_labels_core(const floating *Z, const Py_ssize_t *labels, floating *dZ, const floating *W,
                           Py_ssize_t n, Py_ssize_t k, double inv_n, Py_ssize_t *n_correct,
                           Py_ssize_t *bad) noexcept nogil
cdef double regression_core(int kind, const floating *P, const floating *T, floating *dP, const floating *W,
                            Py_ssize_t n, Py_ssize_t k, double inv) noexcept nogil
cdef double ce_soft_core(const floating *Z, const floating *T, floating *dZ, const floating *W, Py_ssize_t n,
                         Py_ssize_t k, double inv_n, Py_ssize_t *n_correct) noexcept nogil
cdef double bce_core(const floating *z, const floating *t, floating *g, const floating *W, Py_ssize_t n,
                     Py_ssize_t k, double inv_n, Py_ssize_t *n_correct) noexcept nogil
