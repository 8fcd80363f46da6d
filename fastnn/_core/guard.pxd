# The NaN/inf guard's scan, shared with the compiled training plan (plan.pyx) and the inference plan.
from fastnn._core._common cimport floating

cdef Py_ssize_t _first_nonfinite(const floating *p, Py_ssize_t n) noexcept nogil
