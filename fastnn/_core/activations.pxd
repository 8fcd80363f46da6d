from libc.stdint cimport int64_t

from fastnn._core._common cimport floating

# Activation kinds: csrc/fnn_kinds.h (FNN_ACT_..., through fastnn/_core/kinds.pxd).  These return 0, or
# FNN_ERR_KIND (nothing computed) for a kind outside the table.

cdef int act_forward(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                     Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil
cdef int act_backward(int kind, const floating *Z, const floating *Y, const floating *dY, floating *dZ,
                      Py_ssize_t n_rows, Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil
cdef int act_forward_counted(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, double alpha, int n_threads, int64_t *counts,
                             Py_ssize_t n_slots) noexcept nogil

# ValueError naming owner unless kind is a row of the activation table
cdef int check_act(int kind, str owner) except -1
# RuntimeError unless a kernel returned 0
cdef int kernel_ok(int err, str owner) except -1
