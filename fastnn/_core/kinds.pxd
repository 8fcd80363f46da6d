# The kinds of csrc/fnn_kinds.h for the Cython kernels: the enum names they use (the numbers come from the header;
# a name missing here is simply not used from Cython).  The Python mirror is fastnn/_core/kinds.pyx.
cdef extern from "fnn_kinds.h" nogil:
    const int FNN_ERR_KIND

    cdef enum fnn_act_kind:
        FNN_ACT_IDENTITY
        FNN_ACT_RELU
        FNN_ACT_LEAKY_RELU
        FNN_ACT_SIGMOID
        FNN_ACT_TANH
        FNN_ACT_SOFTMAX
        FNN_N_ACT
    const int FNN_N_ACT_ELEMENTWISE

    cdef enum fnn_loss_kind:
        FNN_LOSS_CROSS_ENTROPY
        FNN_LOSS_L2
        FNN_LOSS_MSE
        FNN_LOSS_MAE
        FNN_LOSS_CROSS_ENTROPY_SOFT
        FNN_LOSS_BINARY_CROSS_ENTROPY
        FNN_N_LOSS

    cdef enum fnn_opt_kind:
        FNN_OPT_SGD
        FNN_OPT_ADAM
        FNN_OPT_RMSPROP
        FNN_OPT_ADAGRAD
        FNN_N_OPT

    cdef enum fnn_layer_kind:
        FNN_LAYER_DENSE
        FNN_LAYER_ACTIVATION
        FNN_LAYER_PASS
        FNN_LAYER_BATCHNORM
        FNN_LAYER_LAYERNORM
        FNN_LAYER_DROPOUT
        FNN_LAYER_ADD
        FNN_LAYER_RESIDUAL
        FNN_LAYER_CONCAT
        FNN_LAYER_IDENTITY
        FNN_LAYER_CONV
        FNN_LAYER_POOL
        FNN_LAYER_RNN
        FNN_LAYER_EMBEDDING
        FNN_LAYER_MASKING
        FNN_N_LAYER

    cdef enum fnn_status_kind:
        FNN_STATUS_DONE
        FNN_STATUS_NONFINITE_LOSS
        FNN_STATUS_NONFINITE_GRADIENT
        FNN_STATUS_NONFINITE_PARAMETER
        FNN_STATUS_NONFINITE_STATE
        FNN_STATUS_NONFINITE_BUFFER
        FNN_STATUS_BAD_KIND
        FNN_N_STATUS

    const char *fnn_act_id(int k)
    const char *fnn_act_name(int k)
    const char *fnn_loss_id(int k)
    const char *fnn_loss_name(int k)
    const char *fnn_opt_id(int k)
    const char *fnn_opt_name(int k)
    const char *fnn_layer_id(int k)
    const char *fnn_layer_name(int k)
    const char *fnn_status_id(int k)
    const char *fnn_status_name(int k)


cdef inline bint act_valid(int kind) noexcept nogil:
    return 0 <= kind < FNN_N_ACT
