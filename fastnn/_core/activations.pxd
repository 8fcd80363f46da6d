from libc.stdint cimport int64_t

from fastnn._core._common cimport floating

# Activation kinds: the registry in fastnn/layers/activations.py maps names to these numbers.
cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_LEAKY_RELU = 2
    ACT_SIGMOID = 3
    ACT_TANH = 4
    ACT_SOFTMAX = 5
    N_ACT = 6

cdef void act_forward(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                      Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil
cdef void act_backward(int kind, const floating *Z, const floating *Y, const floating *dY, floating *dZ,
                       Py_ssize_t n_rows, Py_ssize_t n_cols, double alpha, int n_threads) noexcept nogil
cdef void act_forward_counted(int kind, floating *Z, floating *Y, const floating *bias, Py_ssize_t n_rows,
                              Py_ssize_t n_cols, double alpha, int n_threads, int64_t *counts,
                              Py_ssize_t n_slots) noexcept nogil
