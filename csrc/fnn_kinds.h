/* fnn_kinds.h: the one table of fastnn's integer kinds, read by C, Cython and Python.
 *
 * Each list below is an X-macro: one row per kind.  Expanded here into a C enum (FNN_ACT_RELU, ...), a count
 * (FNN_N_ACT) and two name functions (fnn_act_id: "RELU", fnn_act_name: "relu"); fastnn/_core/kinds.pxd
 * `cdef extern`s the enums for the Cython kernels (names only, the numbers come from here), and
 * fastnn/_core/kinds.pyx builds the Python mirror (enum.IntEnum ACT, LOSS, OPT, PLAN_LAYER, PLAN_STATUS) at
 * import by reading the names back from C: no number is typed twice anywhere.
 *
 * An unknown kind is an error, never a default: every Python entry into the compiled core checks a kind against
 * the FNN_N_... counts (fastnn._core.kinds.check), and the C switches return FNN_ERR_KIND from their default
 * case, which their callers check.
 *
 * Adding an activation: one row in FNN_ACT_ELEMENTWISE, X(ID, name), and its math, the two inline functions
 * fnn_<name>_fwd / fnn_<name>_bwd in csrc/fnn_act.h.  Everything else (the Cython dispatch, the Python enum and
 * registry check, saving, the compiled plan) follows from the row. */
#ifndef FNN_KINDS_H
#define FNN_KINDS_H

#define FNN_ERR_KIND (-1)   /* returned by a kernel given a kind that is not in its table */

/* Activations.  Elementwise ones run in csrc/fnn_act.h (y = f(v), dz = dy * f'(z)); the row-wise ones (a
 * reduction over each row) in fastnn/_core/activations.pyx.  Elementwise kinds come first: a kind k is
 * elementwise exactly when k < FNN_N_ACT_ELEMENTWISE.  IDENTITY is 0 (the "no activation" of a Dense layer). */
#define FNN_ACT_ELEMENTWISE(X)                                                                            \
    X(IDENTITY, identity)                                                                                 \
    X(RELU, relu)                                                                                         \
    X(LEAKY_RELU, leaky_relu)        /* alpha: the slope below 0 */                                       \
    X(SIGMOID, sigmoid)                                                                                   \
    X(TANH, tanh)                                                                                         \
    X(GELU, gelu)                    /* exact: x Phi(x), Phi the normal CDF (erf) */                      \
    X(GELU_TANH, gelu_tanh)          /* torch's approximate="tanh" */                                     \
    X(SILU, silu)                    /* swish: x sigmoid(x) */                                            \
    X(ELU, elu)                      /* alpha: the negative saturation value */                           \
    X(SELU, selu)                                                                                         \
    X(SOFTPLUS, softplus)            /* beta 1, threshold 20 (torch's defaults) */                        \
    X(MISH, mish)
#define FNN_ACT_ROWWISE(X)                                                                                \
    X(SOFTMAX, softmax)
#define FNN_ACTIVATIONS(X) FNN_ACT_ELEMENTWISE(X) FNN_ACT_ROWWISE(X)

/* Losses the compiled code computes: softmax cross-entropy on integer labels (the plan), and the regression
 * losses of losses.pyx's regression_loss (also the plan's). */
#define FNN_LOSSES(X)                                                                                     \
    X(CROSS_ENTROPY, cross_entropy)  /* softmax cross-entropy, integer labels, mean */                   \
    X(L2, l2)                        /* sum of squares (no 1/2) */                                        \
    X(MSE, mse)                      /* mean of squares */                                                \
    X(MAE, mae)                      /* mean absolute error */                                            \
    X(CROSS_ENTROPY_SOFT, cross_entropy_soft)  /* softmax cross-entropy against probability rows, mean */  \
    X(BINARY_CROSS_ENTROPY, binary_cross_entropy) /* sigmoid cross-entropy on logits, mean over elements */

/* Optimizers of the compiled training plan (their hyperparameters: fastnn/_core/plan.pyx, struct Update). */
#define FNN_OPTIMIZERS(X)                                                                                 \
    X(SGD, sgd)                      /* torch.optim.SGD: momentum, dampening, nesterov, coupled decay */  \
    X(ADAM, adam)                    /* torch.optim.Adam / AdamW (decoupled decay), amsgrad */            \
    X(RMSPROP, rmsprop)              /* torch.optim.RMSprop: momentum, centered, coupled decay */         \
    X(ADAGRAD, adagrad)              /* torch.optim.Adagrad: lr_decay, coupled decay */

/* Nodes of the compiled plan's graph. */
#define FNN_PLAN_LAYERS(X)                                                                                \
    X(DENSE, dense)                  /* GEMM, then bias and activation in one pass */                     \
    X(ACTIVATION, activation)        /* an activation layer */                                            \
    X(PASS, pass)                    /* an output activation fused with the loss: lets the logits through */ \
    X(BATCHNORM, batchnorm)          /* BatchNorm over the rows (batch statistics, or running when frozen) */ \
    X(LAYERNORM, layernorm)          /* LayerNorm over the features of each row */                        \
    X(DROPOUT, dropout)              /* Dropout: a mask from the counter-based generator, seeded per batch */ \
    X(ADD, add)                      /* Add: the sum of its sources */                                    \
    X(RESIDUAL, residual)            /* Residual: x + block(x), the block dropped per batch (stochastic depth) */ \
    X(CONCAT, concat)                /* Concatenate along the features */                                 \
    X(IDENTITY, identity)            /* Flatten / Reshape: the input goes through */                      \
    X(CONV, conv)                    /* Conv2D / Conv1D: tiled convolution, bias and activation fused */    \
    X(POOL, pool)                    /* max / average pooling, windowed or global */                      \
    X(RNN, rnn)                      /* SimpleRNN / LSTM / GRU over a sequence (csrc/fnn_rnn.h via rnn.pxd) */ \
    X(EMBEDDING, embedding)          /* Embedding: token ids (carried as exact floats) -> rows of the table */ \
    X(MASKING, masking)              /* Masking: the steps whose features all equal mask_value zeroed, masked */

/* What a run of the compiled plan returns (its first value). */
#define FNN_PLAN_STATUSES(X)                                                                              \
    X(DONE, done)                    /* every batch done */                                               \
    X(NONFINITE_LOSS, nonfinite_loss)        /* before the backward pass; weights untouched */            \
    X(NONFINITE_GRADIENT, nonfinite_gradient) /* at `bad`, before the update */                           \
    X(NONFINITE_PARAMETER, nonfinite_parameter) /* the update made parameter `bad` non-finite; restored */ \
    X(NONFINITE_STATE, nonfinite_state)      /* the update made optimizer state `bad` non-finite; restored */ \
    X(NONFINITE_BUFFER, nonfinite_buffer)    /* the forward pass made node `bad`'s running statistics non-finite */ \
    X(BAD_KIND, bad_kind)            /* a kernel met a kind outside its table (an internal error) */

/* ---- expansions: enum, count, and the names (as functions: no unused static data in every unit) */
#define FNN_KIND_ENUM_(PREFIX, ID, NAME) PREFIX##ID,
#define FNN_KIND_ID_(PREFIX, ID, NAME) case PREFIX##ID: return #ID;
#define FNN_KIND_NAME_(PREFIX, ID, NAME) case PREFIX##ID: return #NAME;
#define FNN_KIND_COUNT_(ID, NAME) + 1

#define FNN_KIND_TABLE(TABLE, PREFIX, TAG, COUNT)                                                         \
    enum fnn_##TAG##_kind { TABLE(PREFIX##ENUM_) COUNT };                                         \
    static inline const char *fnn_##TAG##_id(int k) { switch (k) { TABLE(PREFIX##ID_) default: return 0; } } \
    static inline const char *fnn_##TAG##_name(int k) { switch (k) { TABLE(PREFIX##NAME_) default: return 0; } }

#define FNN_ACT_ENUM_(ID, NAME) FNN_KIND_ENUM_(FNN_ACT_, ID, NAME)
#define FNN_ACT_ID_(ID, NAME) FNN_KIND_ID_(FNN_ACT_, ID, NAME)
#define FNN_ACT_NAME_(ID, NAME) FNN_KIND_NAME_(FNN_ACT_, ID, NAME)
#define FNN_LOSS_ENUM_(ID, NAME) FNN_KIND_ENUM_(FNN_LOSS_, ID, NAME)
#define FNN_LOSS_ID_(ID, NAME) FNN_KIND_ID_(FNN_LOSS_, ID, NAME)
#define FNN_LOSS_NAME_(ID, NAME) FNN_KIND_NAME_(FNN_LOSS_, ID, NAME)
#define FNN_OPT_ENUM_(ID, NAME) FNN_KIND_ENUM_(FNN_OPT_, ID, NAME)
#define FNN_OPT_ID_(ID, NAME) FNN_KIND_ID_(FNN_OPT_, ID, NAME)
#define FNN_OPT_NAME_(ID, NAME) FNN_KIND_NAME_(FNN_OPT_, ID, NAME)
#define FNN_LAYER_ENUM_(ID, NAME) FNN_KIND_ENUM_(FNN_LAYER_, ID, NAME)
#define FNN_LAYER_ID_(ID, NAME) FNN_KIND_ID_(FNN_LAYER_, ID, NAME)
#define FNN_LAYER_NAME_(ID, NAME) FNN_KIND_NAME_(FNN_LAYER_, ID, NAME)
#define FNN_STATUS_ENUM_(ID, NAME) FNN_KIND_ENUM_(FNN_STATUS_, ID, NAME)
#define FNN_STATUS_ID_(ID, NAME) FNN_KIND_ID_(FNN_STATUS_, ID, NAME)
#define FNN_STATUS_NAME_(ID, NAME) FNN_KIND_NAME_(FNN_STATUS_, ID, NAME)

FNN_KIND_TABLE(FNN_ACTIVATIONS, FNN_ACT_, act, FNN_N_ACT)
FNN_KIND_TABLE(FNN_LOSSES, FNN_LOSS_, loss, FNN_N_LOSS)
FNN_KIND_TABLE(FNN_OPTIMIZERS, FNN_OPT_, opt, FNN_N_OPT)
FNN_KIND_TABLE(FNN_PLAN_LAYERS, FNN_LAYER_, layer, FNN_N_LAYER)
FNN_KIND_TABLE(FNN_PLAN_STATUSES, FNN_STATUS_, status, FNN_N_STATUS)

enum { FNN_N_ACT_ELEMENTWISE = 0 FNN_ACT_ELEMENTWISE(FNN_KIND_COUNT_) };
#endif
