# The clipping pass and the max-norm constraint of clip.pyx, shared with the compiled training plan (plan.pyx).
from fastnn._core._common cimport floating

cdef double clip_core(floating *g, Py_ssize_t n, double clip_value, double max_norm, int n_threads) noexcept nogil
cdef void max_norm_core(floating *W, floating *norms, Py_ssize_t n_in, Py_ssize_t n_out, double max_value,
                        int n_threads) noexcept nogil
