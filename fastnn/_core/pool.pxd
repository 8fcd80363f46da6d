# The pooling kernels on raw pointers (fastnn/_core/pool.pyx), for the def wrappers there and for the compiled
# training plan (fastnn/_core/plan.pyx): both run these.  The caller checks the geometry (as pool.pyx's
# _check_geometry does) once.

from libc.stdint cimport int32_t

from fastnn._core._common cimport floating

# ValueError naming `fn` unless X (N, H, W, C) (xshape) and Y (N, OH, OW, C) (yshape) fit the window geometry
cdef int check_geometry(str fn, tuple xshape, tuple yshape, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh,
                        Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl) except -1
# Y (N, OH, OW, C) = the max (is_max, argmax A (N, OH, OW, C) int32 written) or the mean of each window of
# X (N, H, W, C); window (ph, pw), strides (sh, sw), padding before (pt, pl)
cdef void pool_forward(bint is_max, const floating *X, floating *Y, int32_t *A, Py_ssize_t N, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int n_threads) noexcept nogil
# dX (N, H, W, C) = the gradient of pool_forward for dY (N, OH, OW, C) (A: max pooling's argmax)
cdef void pool_backward(bint is_max, const floating *dY, const int32_t *A, floating *dX, Py_ssize_t N,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph,
                        Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        int n_threads) noexcept nogil
