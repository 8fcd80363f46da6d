# cython: boundscheck=False, wraparound=False, cdivision=True
"""The compiled training plan: whole runs of mini-batches (an epoch, or a chunk of one) without Python per batch.

For a graph of compiled layers (Dense with its fused activation and Concatenate on feature vectors; Conv2D / Conv1D
with theirs, max / average / global pooling, activation layers, BatchNorm, LayerNorm, Dropout, Residual with
stochastic depth, Add and Flatten/Reshape on channels-last outputs of any shape; SimpleRNN / LSTM / GRU over a
sequence (rnn.pxd's kernels, no mask), an Embedding of the batch's ids (carried as exact floats) and a Dense per
step; a feature vector out, or a per-step output (T, k) with the cross-entropy over its n * T positions), one call
runs, for each batch, all ``nogil``: the gather of the batch from the epoch's permutation (each sample's features
in one row), the forward pass (a Dense layer: GEMM, then bias + activation in one pass; a convolution: conv.pyx's
tiled kernels, with the bias and activation fused), the loss and its gradient (softmax cross-entropy fused), the
backward pass (the nodes in reverse order, the gradients of an output read by several nodes summed as the executor
fastnn/engine.py sums them), the NaN/inf guard, clipping, the optimizer update over the flat parameter buffer and
the max-norm weight constraints.  It runs the same kernels, in the same order, on the same buffers as the
per-layer path (fastnn/model.py ``_step``), so the two give the same weights.

The plan's state is one ``Plan`` object (a cdef class over C structs), filled once per model and batch size
(the nodes, ``dense`` / ``activation`` / ``batchnorm`` / ..., their sources ``link``, and the batch buffers,
which check the graph) and per epoch (``loss``, ``sgd`` / ``adam`` / ``rmsprop`` / ``adagrad``, ``guard``,
``clip``, ``constraints``), each setter validating its arguments (kinds against the table csrc/fnn_kinds.h,
dtypes, shapes) so that the nogil loops need no checks:

- ``PlanLayer``: kind (PLAN_LAYER: DENSE, ACTIVATION, PASS (an output activation fused with the loss that
  lets the logits through), BATCHNORM, LAYERNORM, DROPOUT, ADD, RESIDUAL, CONCAT, IDENTITY, CONV, POOL, RNN,
  EMBEDDING), its
  sources and fanout, activation kind and alpha, sizes (features per sample, and the output as rows x cols, the
  last axis, for the row-wise kernels: BatchNorm over (N, H, W, C) normalizes the N*H*W rows of C channels, as the
  per-layer layer does on its (N*H*W, C) view), offsets of its parameters in the flat buffer, its batch buffers
  (Z, Y, dZ, dX, the gradient sum acc of an output read several times) and the kind's own settings (statistics
  and running statistics, dropout threshold and mask, survival probability, its column in a batch's draws, a
  convolution's geometry and workspace (the per-layer path's sizes, so both split the work over the same
  threads), a pooling window and its argmax, a recurrent layer's cell, sizes and rnn.pyx buffers (allocated once
  with the plan, the packing scratch sized for the plan's thread count), an embedding's table and ids);
- ``Update``: the optimizer kind (OPT) and its hyperparameters by name (``SGDHyper``, ``AdamHyper``, ...), the
  weight-decay prefix and the state arrays;
- the guard's backup buffers, the clipping thresholds, and the statistics of the last run (``RunStats``).

``run_batches(plan, X, targets, perm, b0, b1, step, n_threads)`` returns (status, batches_done, bad_index, value),
status a PLAN_STATUS: DONE; NONFINITE_LOSS (before the backward pass, weights untouched); NONFINITE_GRADIENT at
bad_index (before the update); NONFINITE_PARAMETER: the update made parameter bad_index non-finite (its value in
`value`; parameters and optimizer state restored from the copy); NONFINITE_STATE: the update made optimizer state
bad_index (0, 1, 2: s0, s1, s2) non-finite (restored); NONFINITE_BUFFER: the forward pass made the running statistics
of BatchNorm node bad_index non-finite (found after the backward pass, before the gradient scan, as the per-layer
path checks them; nothing updated).  With the guard on, each BatchNorm node's running statistics are copied into its
backup (``batchnorm``'s `backup`) before each batch's forward pass: after any status but DONE the caller restores
them from there (the plan leaves them as the failed batch made them, so that the caller can name the bad value);
BAD_KIND: a kind outside the table reached a kernel (an internal error: the setters check every kind).
batches_done counts completed updates.
"""
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.string cimport memcpy, memset
from libc.math cimport sqrt
from libc.stdint cimport int32_t, int64_t, intptr_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import numpy as np

from fastnn._core._common cimport floating
from fastnn._core cimport _blas
from fastnn._core.activations cimport act_forward, act_backward, check_act
from fastnn._core.losses cimport ce_labels_core, regression_core, ce_soft_core, bce_core
from fastnn._core.optim cimport _sgd_range, _adam_range, _rmsprop_range, _adagrad_range
from fastnn._core.clip cimport clip_core, max_norm_core
from fastnn._core.norm cimport bn_forward, bn_backward, ln_forward, ln_backward
from fastnn._core.dropout cimport dropout_fwd, dropout_bwd
from fastnn._core.conv cimport fnn_conv_geom, conv_geometry, conv_scratch, conv_forward, conv_backward
from fastnn._core.pool cimport check_geometry, pool_forward, pool_backward
from fastnn._core.rnn cimport (rnn_forward_emb_raw, rnn_backward_raw, rnn_gates, rnn_saved, rnn_packed_size,
                               rnn_mask_plan)
from fastnn._core.embedding cimport embedding_gather, embedding_scatter
from fastnn._core.guard cimport _first_nonfinite
from fastnn._core.bound cimport Bounds, scan_max, sgd_safe, adam_safe, rmsprop_safe, adagrad_safe
from fastnn._core.kinds cimport (FNN_ACT_IDENTITY, FNN_ACT_RELU, FNN_LOSS_CROSS_ENTROPY, FNN_LOSS_L2, FNN_LOSS_MSE,
                                 FNN_LOSS_MAE, FNN_LOSS_CROSS_ENTROPY_SOFT, FNN_LOSS_BINARY_CROSS_ENTROPY,
                                 FNN_OPT_SGD, FNN_OPT_ADAM, FNN_OPT_RMSPROP, FNN_OPT_ADAGRAD, FNN_LAYER_DENSE,
                                 FNN_LAYER_ACTIVATION, FNN_LAYER_PASS, FNN_LAYER_BATCHNORM, FNN_LAYER_LAYERNORM,
                                 FNN_LAYER_DROPOUT, FNN_LAYER_ADD, FNN_LAYER_RESIDUAL, FNN_LAYER_CONCAT,
                                 FNN_LAYER_IDENTITY, FNN_LAYER_CONV, FNN_LAYER_POOL, FNN_LAYER_RNN,
                                 FNN_LAYER_EMBEDDING, FNN_LAYER_MASKING, FNN_N_LAYER,
                                 FNN_STATUS_DONE, FNN_STATUS_NONFINITE_LOSS, FNN_STATUS_NONFINITE_GRADIENT,
                                 FNN_STATUS_NONFINITE_PARAMETER, FNN_STATUS_NONFINITE_STATE, FNN_STATUS_BAD_KIND,
                                 FNN_STATUS_NONFINITE_BUFFER,
                                 FNN_ERR_KIND)
from fastnn._core.kinds import LOSS, PLAN_LAYER, check
from cython.parallel cimport prange
from fastnn._core._common cimport threads_for, FNN_MIN_PER_THREAD, FNN_MIN_GATHER_PER_THREAD

cdef enum:
    _BLOCK = 2048
    _MAX_T = 256


cdef enum:
    _MERGE_CONCAT = 0       # Bidirectional's merge modes (fastnn/layers/recurrent.py)
    _MERGE_SUM = 1
    _MERGE_MUL = 2
    _MERGE_AVE = 3


cdef struct RnnC:           # one direction of a recurrent node: rnn.pyx's sizes and buffers for bs rows
    int cell                # rnn.pyx TANH, RELU, LSTM, GRU
    bint reverse, seq       # go_backwards; return_sequences (Y (bs, steps * units), else Y is hout (bs, units))
    Py_ssize_t steps, units, step_in    # the sequence's steps, the state's units, the features per step
    Py_ssize_t w_off, whh_off, bih_off, bhh_off     # weight_ih, weight_hh, bias_ih, bias_hh in the flat parameters
    const unsigned char *mask   # (bs, steps) the mask of an Embedding(mask_zero=True) feeding it, or NULL
    int *perm               # (bs,) the row plan of each forward (rnn.pyx mask_plan: the identity without a mask)
    int *n_active           # (steps,) the rows running at each step (the batch's m without a mask)
    int *scratch            # (bs + steps + 1,) mask_plan's scratch
    int *mode               # (1,) mask_plan's mode in the last forward (1: the kernels blend with the mask)
    void *Y                 # the direction's output (the node's own Y for a single direction)
    void *hout              # (bs, units) the last state (Y itself without return_sequences)
    void *dX                # (bs, steps * step_in) the gradient toward the input, or NULL
    void *XP                # the kernels' buffers (rnn.pyx's module docstring): XP, HP, Hs, Cs (LSTM), Gs (LSTM,
    void *HP                # GRU), Wp (float32: the packing scratch for the plan's thread count), dH, dC (LSTM),
    void *Hs                # dGt, dGo
    void *Cs
    void *Gs
    void *Wp
    void *dH
    void *dC
    void *dGt
    void *dGo
    const int64_t *ids      # an Embedding node feeding it (Plan.rnn's emb): its ids (bs, steps), else NULL
    Py_ssize_t emb_off      # its table (vocab, step_in) in the flat parameters
    Py_ssize_t vocab
    void *xtab              # float32 (vocab * G * units): the table's input projections (rnn_forward_emb_raw)


cdef struct PlanLayer:
    int kind                # a PLAN_LAYER kind (csrc/fnn_kinds.h)
    int act                 # the activation kind (FNN_ACT_...); a Dense layer's own, FNN_ACT_IDENTITY for none
    double alpha            # the activation's parameter
    Py_ssize_t n_in, n_out  # features per sample in (the sum over the sources for CONCAT) and out (all axes)
    Py_ssize_t rows, cols   # the output seen as rows x cols per sample (the last axis: cols; rows 1 for a vector):
    # the rows of the row-wise kernels (activation, BatchNorm, LayerNorm) and the length of a bias
    Py_ssize_t w_off, b_off  # offsets in the flat parameters: Dense W (n_in, n_out) and b (n_out), BatchNorm /
    # LayerNorm weight and bias (cols), Conv W (kh, kw, C/G, F) and b (F = cols); b_off -1: no bias
    Py_ssize_t w_len        # the weight's elements (0: none)
    bint need_dx            # compute the gradient toward the input (not for a node fed by the batch alone)
    Py_ssize_t src0, n_src  # its sources: srcs[src0 : src0 + n_src] of the plan (-1: the batch)
    Py_ssize_t fanout       # how many times other nodes read its output
    void *acc               # (bs, n_out) the sum of its output's gradients, when fanout > 1
    void *Z                 # (bs, n_out) Dense: the pre-activation; BatchNorm / LayerNorm: Xhat
    void *Y                 # (bs, n_out) the output
    void *dZ                # (bs, n_out) Dense: dY * act'(Z)
    void *dX                # (bs, n_in) the gradient toward the input (CONCAT: each source's part, one after the other)
    void *out               # Z or Y: a Dense layer's output
    void *mean              # BatchNorm (n_out,): the batch's mean
    void *invstd            # BatchNorm (n_out,), LayerNorm (bs,): 1 / sqrt(var + eps)
    void *rmean             # BatchNorm (n_out,): the running statistics (the layer's buffers)
    void *rvar
    void *rbak              # BatchNorm (2, n_out): their copy before the batch (the guard), NULL when not given
    double momentum, eps    # BatchNorm / LayerNorm
    bint batch_stats        # BatchNorm: normalize with the batch's statistics in training (0: frozen)
    bint fused              # BatchNorm: it also applies the ReLU node it alone feeds (Y = max(Y, 0); its backward
    # masks the gradient by Y > 0); that ACTIVATION node: fused, it lets its input and gradient through
    int draw                # DROPOUT, RESIDUAL: its column in a batch's draws; -1: it draws nothing
    unsigned long long threshold   # DROPOUT: rate * 2^53
    double scale            # DROPOUT: the training scale of kept units; RESIDUAL: the survival probability
    double infer_scale      # DROPOUT: the inference scale (1 - rate for "weight_scaling", else 1)
    unsigned char *mask     # DROPOUT (bs, n_out)
    fnn_conv_geom geom      # CONV: the convolution's geometry (N: the batch's rows, set per call); POOL: the input
    # (H, W, C), the output (OH, OW), the window (kh, kw), strides (sh, sw) and padding before (pt, pl)
    void *scratch           # CONV: the kernels' workspace (one buffer shared by the plan's CONV nodes)
    Py_ssize_t have_fwd, have_bwd   # CONV: the scratch elements the forward / backward may use (the per-layer
    # path's buffer sizes, so that both split the work over the same threads)
    bint pool_max           # POOL: max (else average)
    int32_t *argmax         # POOL, max: (bs, OH, OW, C) the first maximum of each window
    RnnC rnn[2]             # RNN: its direction(s): one, or forward and backward (Bidirectional)
    int n_dirs              # RNN: 1 or 2
    int merge               # RNN with two directions: how their outputs merge (_MERGE_CONCAT, ...)
    void *dY2               # RNN with two directions: (2, bs, rows * units) each direction's output gradient
    Py_ssize_t n_rows       # EMBEDDING: the table's rows (input_dim); its columns are cols
    int64_t *ids            # EMBEDDING: (bs, steps) the batch's ids, converted from the floats of the batch
    unsigned char *emask    # EMBEDDING with mask_zero: (bs, steps) ids != 0; MASKING: (bs, steps) the steps with a
    # feature other than mask_value (alpha) (the recurrent nodes they feed read it)


cdef struct MaxNormC:       # a max-norm weight constraint (fastnn.constraints.MaxNorm), applied after each update
    Py_ssize_t w_off        # the weight's offset in the flat parameters, (rows, cols) row-major: a Dense weight
    Py_ssize_t rows, cols   # the columns are the units; each column's L2 norm is kept at most max_value
    double max_value
    void *norms             # (cols,) scratch: the column norms


cdef struct SGDHyper:       # torch.optim.SGD
    double lr, momentum, dampening, weight_decay
    bint nesterov

cdef struct AdamHyper:      # torch.optim.Adam / AdamW (decoupled weight decay)
    double lr, beta1, beta2, eps, weight_decay
    bint decoupled

cdef struct RMSpropHyper:   # torch.optim.RMSprop
    double lr, alpha, eps, weight_decay, momentum
    bint centered

cdef struct AdagradHyper:   # torch.optim.Adagrad (the state's initial value is the caller's)
    double lr, lr_decay, weight_decay, eps

cdef struct Update:
    int kind                # FNN_OPT_SGD, _ADAM, _RMSPROP or _ADAGRAD: the member that holds the hyperparameters
    SGDHyper sgd
    AdamHyper adam
    RMSpropHyper rmsprop
    AdagradHyper adagrad
    Py_ssize_t n_decay      # weight decay applies to parameters [0, n_decay)
    void *s0                # SGD: momentum_buffer (NULL without momentum); Adam: exp_avg; RMSprop: square_avg;
    # Adagrad: sum (s0 only)
    void *s1                # Adam: exp_avg_sq; RMSprop: grad_avg (NULL unless centered); else NULL
    void *s2                # Adam with amsgrad: max_exp_avg_sq; RMSprop with momentum: momentum_buffer; else NULL

cdef struct StepConsts:     # what an update derives from the step count (the step after it, >= 1)
    bint first              # SGD: the first step (the buffer starts as the gradient)
    double step_size        # Adam: lr / (1 - beta1^step)
    double bc2_sqrt         # Adam: sqrt(1 - beta2^step)
    double wd               # Adam: the coupled weight decay (0 for AdamW)
    double decay_factor     # Adam: 1 - lr * weight_decay for AdamW (1 for Adam)
    double clr              # Adagrad: lr / (1 + (step - 1) * lr_decay)

# MPI_Allreduce(sendbuf, recvbuf, count, datatype, op, comm) of the MPI library mpi4py loaded, the handles passed as
# intptr_t (MPICH's ABI: int handles, read from the low half of the register on x86-64 and aarch64)
ctypedef int (*allreduce_fn)(const void *, void *, int, intptr_t, intptr_t, intptr_t) noexcept nogil
# MPI_Iallreduce(sendbuf, recvbuf, count, datatype, op, comm, &request), MPI_Waitall(count, requests, statuses) and
# MPI_Testall(count, requests, &flag, statuses) of the same library (MPICH's ABI: int requests; statuses passed as
# MPI_STATUSES_IGNORE, the address 1)
ctypedef int (*iallreduce_fn)(const void *, void *, int, intptr_t, intptr_t, intptr_t, int *) noexcept nogil
ctypedef int (*waitall_fn)(int, int *, intptr_t) noexcept nogil
ctypedef int (*testall_fn)(int, int *, int *, intptr_t) noexcept nogil
# the sharded update (Plan.shard): MPI_Reduce_scatter(sendbuf, recvbuf, recvcounts, datatype, op, comm),
# MPI_Allgatherv(sendbuf, sendcount, sendtype, recvbuf, recvcounts, displs, recvtype, comm) and
# MPI_Allgather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm) (MPICH's ABI, as above)
ctypedef int (*reduce_scatter_fn)(const void *, void *, const int *, intptr_t, intptr_t, intptr_t) noexcept nogil
ctypedef int (*allgatherv_fn)(const void *, int, intptr_t, void *, const int *, const int *, intptr_t,
                              intptr_t) noexcept nogil
ctypedef int (*allgather_fn)(const void *, int, intptr_t, void *, int, intptr_t, intptr_t) noexcept nogil

cdef enum:
    _SH_K = 8       # doubles per rank in the sharded update's small allgather (see run_batches)


cdef struct Overlap:        # data-parallel: the gradient allreduced in buckets while the backward pass runs
    iallreduce_fn start
    waitall_fn wait
    testall_fn test         # NULL: no MPI_Testall between the backward pass's GEMMs
    intptr_t comm, dtype, op, in_place
    Py_ssize_t *first       # per node: its bucket, the intervals iv[first : first + count] of the flat gradient,
    Py_ssize_t *count       # started once the node's backward is done (count 0: none)
    Py_ssize_t *lo          # the intervals [lo, hi), in the order they are started
    Py_ssize_t *hi
    int *reqs               # the requests started in this backward pass (one per interval)
    int n_req
    int err                 # the error code of a failed MPI call, else 0
    double seconds          # the time in the MPI calls of this backward pass


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef struct RunStats:
    double loss_sum         # sum of loss * batch size ("l2": of the loss, a sum already)
    double batch_loss_sum   # sum of loss * batch size for every loss (the progress bar's running loss)
    double n_correct        # correct predictions (cross-entropy)
    double n_samples
    double grad_norm        # the last gradient norm, when clipping
    double n_backups        # guarded steps that took the backup (the others were proved finite by bound.pyx)
    double allreduce_seconds    # data-parallel: the time in the gradient allreduce (waits for the other ranks in it)
    double mpi_error        # data-parallel: the error code of a failed MPI_Allreduce (status BAD_KIND), else 0
    double weight_sum       # with sample weights: the sum of the weights of the batches run (each summed in order)
    double last_loss        # the loss of the last batch applied


cdef void _gemm_few_rows(Py_ssize_t m, Py_ssize_t nout, Py_ssize_t nin, const floating *x, const floating *W,
                         floating *Z, int n_threads) noexcept nogil:
    """Z (m, nout) = x (m, nin) . W (nin, nout), by the route _blas.rows_times chooses for the shape (fastnn's
    few-row kernel, OpenBLAS's GEMV or GEMM).  For a few rows of a large layer, OpenBLAS keeps the product on
    one thread; split the output columns over the OpenMP team instead (blocks aligned to 16 elements), each
    thread running the same route on its block."""
    cdef int nt = n_threads
    cdef Py_ssize_t t, c0, c1
    if nt > 1 and m <= 4 and nin * nout >= 65536 and nout >= 32 * nt:
        for t in prange(nt, num_threads=nt, schedule="static"):
            c0 = (t * nout // nt) // 16 * 16
            c1 = nout if t == nt - 1 else ((t + 1) * nout // nt) // 16 * 16
            _blas.rows_times(<int>m, <int>(c1 - c0), <int>nin, x, <int>nin, W + c0, <int>nout, Z + c0, <int>nout)
    else:
        _blas.rows_times(<int>m, <int>nout, <int>nin, x, <int>nin, W, <int>nout, Z, <int>nout)


cdef inline const floating *_input(const floating *x, void **outp, const Py_ssize_t *srcs, const PlanLayer *ly,
                                   Py_ssize_t j) noexcept nogil:
    """The j-th input of node ly in the current pass (x: the batch)."""
    cdef Py_ssize_t s = srcs[ly.src0 + j]
    return x if s < 0 else <const floating *>outp[s]


cdef void _ew(int op, const floating *a, const floating *b, floating *y, floating c, Py_ssize_t n,
              int n_threads) noexcept nogil:
    """Elementwise over n values, as numpy does it: op 0: y = a + b; op 1: y = a * c + b; op 2: y = a * c."""
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    cdef Py_ssize_t t
    if nt <= 1:
        _ew_range(op, a, b, y, c, 0, n)
    else:
        for t in prange(nt, num_threads=nt, schedule="static"):
            _ew_range(op, a, b, y, c, _lo(t, nt, n), _lo(t + 1, nt, n))


cdef inline void _ew_range(int op, const floating *a, const floating *b, floating *y, floating c, Py_ssize_t i0,
                           Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    if op == 0:
        for i in range(i0, i1):
            y[i] = a[i] + b[i]
    elif op == 1:
        for i in range(i0, i1):
            v = a[i] * c            # rounded before the addition, as np.multiply then np.add
            y[i] = v + b[i]
    else:
        for i in range(i0, i1):
            y[i] = a[i] * c


cdef void _rnn_fwd(const RnnC *r, const floating *x, const floating *prm, Py_ssize_t m,
                   int n_threads) noexcept nogil:
    """One direction of a recurrent node forward over the m rows at x (rnn.pxd: the per-layer layer's call)."""
    r.mode[0] = rnn_mask_plan(r.mask, m, r.steps, r.reverse, r.perm, r.n_active, r.scratch)
    rnn_forward_emb_raw(r.cell, m, r.steps, r.step_in, r.units, r.reverse, r.perm, r.n_active,
                        r.mask if r.mode[0] == 1 else NULL, n_threads, x,
                        prm + r.w_off, prm + r.whh_off, prm + r.bih_off, prm + r.bhh_off, NULL, NULL,
                        <floating *>r.XP, <floating *>r.HP, <floating *>r.Hs, <floating *>r.Cs, <floating *>r.Gs,
                        <floating *>r.Y if r.seq else NULL, <floating *>r.hout, NULL, <floating *>r.Wp,
                        r.ids, prm + r.emb_off if r.ids != NULL else NULL, r.vocab, <floating *>r.xtab)


cdef void _rnn_bwd(const RnnC *r, const floating *x, const floating *prm, floating *grd, const floating *dy,
                   Py_ssize_t m, int n_threads) noexcept nogil:
    """Backpropagation through time of _rnn_fwd from dy, the gradient of its output (the sequence with seq, else
    the last state): its four parameter gradients, and dX when r.dX is given."""
    rnn_backward_raw(r.cell, m, r.steps, r.step_in, r.units, r.reverse, r.perm, r.n_active,
                     r.mask if r.mode[0] == 1 else NULL, n_threads, x,
                     prm + r.w_off, prm + r.whh_off, <floating *>r.Hs, <floating *>r.Cs, <floating *>r.Gs,
                     dy if r.seq else NULL, NULL if r.seq else dy, NULL, <floating *>r.dH, <floating *>r.dC,
                     <floating *>r.dGt, <floating *>r.dGo, <floating *>r.dX, grd + r.w_off, grd + r.whh_off,
                     grd + r.bih_off, grd + r.bhh_off, NULL, NULL, NULL, <floating *>r.Wp)


cdef void _rnn_zero(const RnnC *r, floating *grd) noexcept nogil:
    """Zero gradients of a direction that no gradient reached."""
    cdef Py_ssize_t GU = rnn_gates(r.cell) * r.units
    memset(grd + r.w_off, 0, r.step_in * GU * sizeof(floating))
    memset(grd + r.whh_off, 0, r.units * GU * sizeof(floating))
    memset(grd + r.bih_off, 0, GU * sizeof(floating))
    memset(grd + r.bhh_off, 0, GU * sizeof(floating))


cdef void _merge_fwd(const PlanLayer *ly, floating *y, Py_ssize_t m) noexcept nogil:
    """Bidirectional's merge of its two directions' outputs into y (ly.Y), as Bidirectional.forward: the backward
    direction's sequence (in its processing order) reversed back in time first (R = rows: the steps with
    return_sequences, else 1: the last states)."""
    cdef Py_ssize_t R = ly.rows, U = ly.rnn[0].units, i, t, c, fi, bi
    cdef const floating *yf = <const floating *>ly.rnn[0].Y
    cdef const floating *yb = <const floating *>ly.rnn[1].Y
    cdef floating v
    for i in range(m):
        for t in range(R):
            fi = (i * R + t) * U
            bi = (i * R + R - 1 - t) * U
            if ly.merge == _MERGE_CONCAT:
                memcpy(y + 2 * fi, yf + fi, U * sizeof(floating))
                memcpy(y + 2 * fi + U, yb + bi, U * sizeof(floating))
            elif ly.merge == _MERGE_SUM:
                for c in range(U):
                    y[fi + c] = yf[fi + c] + yb[bi + c]
            elif ly.merge == _MERGE_MUL:
                for c in range(U):
                    y[fi + c] = yf[fi + c] * yb[bi + c]
            else:
                for c in range(U):
                    v = yf[fi + c] + yb[bi + c]         # np.add, then out *= 0.5
                    y[fi + c] = v * <floating>0.5


cdef void _merge_bwd(const PlanLayer *ly, const floating *dy, Py_ssize_t m) noexcept nogil:
    """The two directions' output gradients (ly.dY2: forward's, then backward's in its processing order) from dy,
    the gradient of the merged output, as Bidirectional.backward."""
    cdef Py_ssize_t R = ly.rows, U = ly.rnn[0].units, i, t, c, fi, bi
    cdef const floating *yf = <const floating *>ly.rnn[0].Y
    cdef const floating *yb = <const floating *>ly.rnn[1].Y
    cdef floating *df = <floating *>ly.dY2
    cdef floating *db = df + m * R * U
    cdef floating v
    for i in range(m):
        for t in range(R):
            fi = (i * R + t) * U
            bi = (i * R + R - 1 - t) * U
            if ly.merge == _MERGE_CONCAT:
                memcpy(df + fi, dy + 2 * fi, U * sizeof(floating))
                memcpy(db + bi, dy + 2 * fi + U, U * sizeof(floating))
            elif ly.merge == _MERGE_SUM:
                memcpy(df + fi, dy + fi, U * sizeof(floating))
                memcpy(db + bi, dy + fi, U * sizeof(floating))
            elif ly.merge == _MERGE_MUL:
                for c in range(U):
                    df[fi + c] = dy[fi + c] * yb[bi + c]
                    db[bi + c] = dy[fi + c] * yf[fi + c]
            else:
                for c in range(U):
                    v = dy[fi + c] * <floating>0.5
                    df[fi + c] = v
                    db[bi + c] = v


cdef const floating *_forward_graph(const floating *x, Py_ssize_t m, const PlanLayer *layers, Py_ssize_t L,
                                    const Py_ssize_t *srcs, void **outp, unsigned char *kept, const floating *prm,
                                    bint training, const uint64_t *draws, int n_threads) noexcept nogil:
    """The forward pass of a plan's graph for the m rows at x, through the plan's buffers, in training mode
    (draws: this batch's random draws, one per drawing node) or in inference mode; node l's output is left in
    outp[l] (a buffer of its own, or its input's for a node that lets it through) and kept[l] says whether a
    DROPOUT node masked or a RESIDUAL node kept its block.  Returns the output of the last node (NULL when a
    kernel rejected a kind, or a training BatchNorm got one row: never for a plan built through its setters and
    trained through fit, which refuses such a batch first).

    Each node runs the per-layer path's kernel: a Dense layer is a GEMM (columns split over threads for a few rows
    of a large layer), then bias and activation in one pass; a CONV node the tiled convolution of conv.pyx (bias
    and activation fused) on the m images, a POOL node pool.pyx's windows; the row-wise kernels (activation,
    BatchNorm, LayerNorm) see the m * rows rows of cols values of a channels-last output, as the per-layer layers
    see their (N*..., C) view; a PASS node (an output activation fused with the loss) lets the logits through."""
    cdef Py_ssize_t l, j, i, c0, w
    cdef const PlanLayer *ly
    cdef const floating *xi
    cdef const floating *h
    cdef floating *Z
    cdef floating *Y
    cdef fnn_conv_geom g
    for l in range(L):
        ly = &layers[l]
        Z = <floating *>ly.Z
        Y = <floating *>ly.Y
        xi = _input(x, outp, srcs, ly, 0)
        if ly.kind == FNN_LAYER_DENSE:      # on the m * rows rows of the input's last axis (rows 1: a vector)
            if ly.n_in == 0:
                memset(Z, 0, m * ly.n_out * sizeof(floating))
            else:
                _gemm_few_rows(m * ly.rows, ly.cols, ly.n_in // ly.rows, xi, prm + ly.w_off, Z, n_threads)
            if act_forward(ly.act, Z, Y if ly.act != FNN_ACT_IDENTITY else Z,
                           prm + ly.b_off if ly.b_off >= 0 else NULL, m * ly.rows, ly.cols, ly.alpha, n_threads) != 0:
                return NULL
            outp[l] = Y if ly.act != FNN_ACT_IDENTITY else Z
        elif ly.kind == FNN_LAYER_RNN:
            for j in range(ly.n_dirs):
                _rnn_fwd(&ly.rnn[j], xi, prm, m, n_threads)
            if ly.n_dirs == 2:
                _merge_fwd(ly, Y, m)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_MASKING:     # as Masking.forward: the mask, then Y = X * mask per step
            for i in range(m * ly.rows):
                j = 0
                for c0 in range(ly.cols):
                    j = j | (xi[i * ly.cols + c0] != <floating>ly.alpha)
                ly.emask[i] = j != 0
                for c0 in range(ly.cols):
                    Y[i * ly.cols + c0] = xi[i * ly.cols + c0] * <floating>ly.emask[i]
            outp[l] = Y
        elif ly.kind == FNN_LAYER_EMBEDDING:
            for i in range(m * ly.n_in):
                ly.ids[i] = <int64_t>xi[i]
            if ly.emask != NULL:
                for i in range(m * ly.n_in):
                    ly.emask[i] = ly.ids[i] != 0
            embedding_gather(ly.ids, prm + ly.w_off, Y, m * ly.n_in, ly.cols, n_threads)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_ACTIVATION:
            if ly.fused:            # its BatchNorm source applied it
                outp[l] = <void *>xi
                continue
            if act_forward(ly.act, <floating *>xi, Y, NULL, m * ly.rows, ly.cols, ly.alpha, n_threads) != 0:
                return NULL
            outp[l] = Y
        elif ly.kind == FNN_LAYER_CONV:
            g = ly.geom
            g.N = m
            conv_forward(&g, xi, prm + ly.w_off, prm + ly.b_off if ly.b_off >= 0 else NULL, Z,
                         Y if ly.act != FNN_ACT_IDENTITY else Z, <floating *>ly.scratch, ly.have_fwd, ly.act,
                         ly.alpha, n_threads, NULL, 0)
            outp[l] = Y if ly.act != FNN_ACT_IDENTITY else Z
        elif ly.kind == FNN_LAYER_POOL:
            pool_forward(ly.pool_max, xi, Y, ly.argmax, m, ly.geom.H, ly.geom.W, ly.geom.C, ly.geom.OH, ly.geom.OW,
                         ly.geom.kh, ly.geom.kw, ly.geom.sh, ly.geom.sw, ly.geom.pt, ly.geom.pl, n_threads)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_PASS or ly.kind == FNN_LAYER_IDENTITY:
            outp[l] = <void *>xi
        elif ly.kind == FNN_LAYER_BATCHNORM:
            if training and ly.batch_stats and m * ly.rows < 2:
                return NULL
            bn_forward(xi, prm + ly.w_off, prm + ly.b_off, Y, Z, <floating *>ly.mean, <floating *>ly.invstd,
                       <floating *>ly.rmean, <floating *>ly.rvar, m * ly.rows, ly.cols, training and ly.batch_stats,
                       ly.momentum, ly.eps, n_threads, ly.fused)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_LAYERNORM:
            ln_forward(xi, prm + ly.w_off, prm + ly.b_off, Y, Z, <floating *>ly.invstd, m * ly.rows, ly.cols,
                       ly.eps, n_threads)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_DROPOUT:
            kept[l] = training and ly.draw >= 0
            if kept[l]:
                dropout_fwd(xi, Y, ly.mask, m * ly.n_out, draws[ly.draw], ly.threshold, ly.scale, 0, n_threads)
                outp[l] = Y
            elif not training and ly.infer_scale != 1.0:
                _ew(2, xi, <const floating *>NULL, Y, <floating>ly.infer_scale, m * ly.n_out, n_threads)
                outp[l] = Y
            else:
                outp[l] = <void *>xi
        elif ly.kind == FNN_LAYER_ADD:
            _ew(0, xi, _input(x, outp, srcs, ly, 1), Y, 0, m * ly.n_out, n_threads)
            for j in range(2, ly.n_src):
                _ew(0, Y, _input(x, outp, srcs, ly, j), Y, 0, m * ly.n_out, n_threads)
            outp[l] = Y
        elif ly.kind == FNN_LAYER_RESIDUAL:
            h = _input(x, outp, srcs, ly, 1)
            kept[l] = not (training and ly.draw >= 0 and draws[ly.draw] == 0)
            if not kept[l]:
                outp[l] = <void *>xi        # the block dropped for this batch: y = x
            elif not training and ly.scale != 1.0:
                _ew(1, h, xi, Y, <floating>ly.scale, m * ly.n_out, n_threads)
                outp[l] = Y
            else:
                _ew(0, xi, h, Y, 0, m * ly.n_out, n_threads)
                outp[l] = Y
        elif ly.kind == FNN_LAYER_CONCAT:
            c0 = 0
            for j in range(ly.n_src):
                h = _input(x, outp, srcs, ly, j)
                w = _width(layers, srcs, ly, j)
                for i in range(m):
                    memcpy(Y + i * ly.n_out + c0, h + i * w, w * sizeof(floating))
                c0 += w
            outp[l] = Y
        else:
            return NULL
    return <const floating *>outp[L - 1] if L > 0 else x


cdef inline Py_ssize_t _width(const PlanLayer *layers, const Py_ssize_t *srcs, const PlanLayer *ly,
                              Py_ssize_t j) noexcept nogil:
    """The features of the j-th input of node ly (CONCAT: the batch never feeds one, see _check_graph)."""
    return layers[srcs[ly.src0 + j]].n_out


cdef inline void _give(const PlanLayer *layers, const Py_ssize_t *srcs, void **gp, const PlanLayer *ly, Py_ssize_t j,
                       const floating *d, Py_ssize_t m) noexcept nogil:
    """Hand the gradient d toward node ly's j-th source, as the per-layer executor does (fastnn/engine.py): the
    source's own when it has one reader, else summed in its acc buffer (copied in first, then added)."""
    cdef Py_ssize_t s = srcs[ly.src0 + j], i, n
    cdef floating *a
    if s < 0 or d == NULL:
        return
    if layers[s].fanout == 1:
        gp[s] = <void *>d
        return
    a = <floating *>layers[s].acc
    n = m * layers[s].n_out
    if gp[s] == NULL:
        memcpy(a, d, n * sizeof(floating))
        gp[s] = a
    else:
        for i in range(n):
            a[i] = a[i] + d[i]


cdef int _ov_test(Overlap *ov) noexcept nogil:
    """Let MPI progress the buckets in flight (MPICH moves a nonblocking collective on only inside MPI calls)."""
    cdef int flag = 0
    cdef double t
    if ov.test == NULL or ov.n_req == 0 or ov.err != 0:
        return ov.err
    t = _now()
    ov.err = ov.test(ov.n_req, ov.reqs, &flag, 1)
    ov.seconds += _now() - t
    return ov.err


cdef int _ov_after(Overlap *ov, Py_ssize_t l, void *grd, size_t item) noexcept nogil:
    """Node l's backward is done: start its bucket (if it has one; grd the flat gradient, item its element size),
    else let the buckets in flight progress.  Returns an MPI error code, 0 when all went well."""
    cdef double t
    cdef Py_ssize_t k
    if ov.count[l] == 0:
        return _ov_test(ov)
    t = _now()
    for k in range(ov.first[l], ov.first[l] + ov.count[l]):
        if ov.err != 0:
            break
        ov.err = ov.start(<const void *>ov.in_place, <char *>grd + ov.lo[k] * item, <int>(ov.hi[k] - ov.lo[k]),
                          ov.dtype, ov.op, ov.comm, &ov.reqs[ov.n_req])
        ov.n_req += 1
    ov.seconds += _now() - t
    return ov.err


cdef int _backward_graph(const floating *xb, Py_ssize_t m, const PlanLayer *layers, Py_ssize_t L,
                         const Py_ssize_t *srcs, void **outp, void **gp, const unsigned char *kept, const floating *prm,
                         floating *grd, floating *dy0, int n_threads, Overlap *ov) noexcept nogil:
    """The backward pass of a training forward (_forward_graph), nodes in reverse order from the loss gradient dy0:
    parameter gradients into grd, each node's input gradient handed to its sources (_give).  A node that no
    gradient reached (inside a Residual block dropped for this batch) gets zero parameter gradients, as the
    per-layer path's Residual.backward gives it.  Returns FNN_STATUS_DONE, or FNN_STATUS_BAD_KIND for a kind
    outside the table or a failed MPI call (ov.err).

    ov (data-parallel with overlap, else NULL): after each node, the bucket of the flat gradient that this node
    completes is allreduced with MPI_Iallreduce (the caller waits for all before the update), and between a Dense
    node's two GEMMs and after each node MPI_Testall lets the buckets in flight progress."""
    cdef Py_ssize_t l, i, j, c0, w, ci, co, mr
    cdef const PlanLayer *ly
    cdef const floating *x
    cdef floating *dy
    cdef fnn_conv_geom cg
    cdef floating *g
    cdef floating *dbp
    cdef floating *dx
    for l in range(L):
        gp[l] = NULL
    gp[L - 1] = dy0
    for l in range(L - 1, -1, -1):
        ly = &layers[l]
        dy = <floating *>gp[l]
        gp[l] = NULL
        if dy == NULL:
            if ly.w_len > 0:
                memset(grd + ly.w_off, 0, ly.w_len * sizeof(floating))
            if ly.b_off >= 0:
                memset(grd + ly.b_off, 0, ly.cols * sizeof(floating))
            if ly.kind == FNN_LAYER_RNN:
                for j in range(ly.n_dirs):
                    _rnn_zero(&ly.rnn[j], grd)
            if ov != NULL and _ov_after(ov, l, grd, sizeof(floating)) != 0:
                return FNN_STATUS_BAD_KIND
            continue
        x = _input(xb, outp, srcs, ly, 0)
        dx = <floating *>ly.dX if ly.need_dx else NULL
        if ly.kind == FNN_LAYER_DENSE:
            if ly.act == FNN_ACT_IDENTITY:
                g = dy
            else:
                g = <floating *>ly.dZ
                if act_backward(ly.act, <floating *>ly.Z, <floating *>ly.Y, dy, g, m, ly.n_out, ly.alpha,
                                n_threads) != 0:
                    return FNN_STATUS_BAD_KIND
            # dense_backward on the m * rows rows of ci inputs and co outputs (rows 1: a vector)
            ci, co, mr = ly.n_in // ly.rows, ly.cols, m * ly.rows
            if ly.n_in > 0:
                _blas.gemm(True, False, <int>ci, <int>co, <int>mr, <floating>1, x, <int>ci,
                           g, <int>co, <floating>0, grd + ly.w_off, <int>co)
            if ly.b_off >= 0:
                dbp = grd + ly.b_off
                memset(dbp, 0, co * sizeof(floating))
                for i in range(mr):
                    for j in range(co):
                        dbp[j] = dbp[j] + g[i * co + j]
            if dx != NULL:
                if ov != NULL and _ov_test(ov) != 0:
                    return FNN_STATUS_BAD_KIND
                _blas.gemm(False, True, <int>mr, <int>ci, <int>co, <floating>1, g, <int>co,
                           prm + ly.w_off, <int>co, <floating>0, dx, <int>ci)
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_RNN:
            if ly.n_dirs == 1:
                _rnn_bwd(&ly.rnn[0], x, prm, grd, dy, m, n_threads)
            else:       # as Bidirectional.backward: each direction's output gradient, both backwards, dX summed
                _merge_bwd(ly, dy, m)
                _rnn_bwd(&ly.rnn[0], x, prm, grd, <floating *>ly.dY2, m, n_threads)
                _rnn_bwd(&ly.rnn[1], x, prm, grd, <floating *>ly.dY2 + ly.rnn[0].units * ly.rows * m, m, n_threads)
                if dx != NULL:
                    _ew(0, dx, <const floating *>ly.rnn[1].dX, dx, 0, m * ly.n_in, n_threads)
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_MASKING:
            if dx != NULL:      # dX = dY * mask per step (Masking.backward)
                for i in range(m * ly.rows):
                    for c0 in range(ly.cols):
                        dx[i * ly.cols + c0] = dy[i * ly.cols + c0] * <floating>ly.emask[i]
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_EMBEDDING:
            embedding_scatter(ly.ids, dy, grd + ly.w_off, m * ly.n_in, ly.n_rows, ly.cols, n_threads)
        elif ly.kind == FNN_LAYER_ACTIVATION:
            if ly.fused:            # its BatchNorm source masks the gradient
                _give(layers, srcs, gp, ly, 0, dy, m)
            else:
                if dx != NULL:
                    if act_backward(ly.act, x, <floating *>ly.Y, dy, dx, m * ly.rows, ly.cols, ly.alpha,
                                    n_threads) != 0:
                        return FNN_STATUS_BAD_KIND
                _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_CONV:
            cg = ly.geom
            cg.N = m
            if conv_backward(&cg, x, prm + ly.w_off, <floating *>ly.Z,
                             <floating *>(ly.Y if ly.act != FNN_ACT_IDENTITY else ly.Z), dy,
                             <floating *>ly.dZ if ly.act != FNN_ACT_IDENTITY else dy, dx, grd + ly.w_off,
                             grd + ly.b_off if ly.b_off >= 0 else NULL, <floating *>ly.scratch, ly.have_bwd, ly.act,
                             ly.alpha, n_threads) != 0:
                return FNN_STATUS_BAD_KIND
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_POOL:
            if dx != NULL:
                pool_backward(ly.pool_max, dy, ly.argmax, dx, m, ly.geom.H, ly.geom.W, ly.geom.C, ly.geom.OH,
                              ly.geom.OW, ly.geom.kh, ly.geom.kw, ly.geom.sh, ly.geom.sw, ly.geom.pt, ly.geom.pl,
                              n_threads)
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_PASS or ly.kind == FNN_LAYER_IDENTITY:
            _give(layers, srcs, gp, ly, 0, dy, m)
        elif ly.kind == FNN_LAYER_BATCHNORM:
            bn_backward(dy, <floating *>ly.Z, prm + ly.w_off, <floating *>ly.invstd, dx, grd + ly.w_off,
                        grd + ly.b_off, m * ly.rows, ly.cols, ly.batch_stats, n_threads,
                        <floating *>ly.Y if ly.fused else NULL)
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_LAYERNORM:
            ln_backward(dy, <floating *>ly.Z, prm + ly.w_off, <floating *>ly.invstd, dx, grd + ly.w_off,
                        grd + ly.b_off, m * ly.rows, ly.cols, n_threads)
            _give(layers, srcs, gp, ly, 0, dx, m)
        elif ly.kind == FNN_LAYER_DROPOUT:
            if kept[l]:
                if dx != NULL:
                    dropout_bwd(dy, ly.mask, dx, m * ly.n_out, ly.scale, n_threads)
                _give(layers, srcs, gp, ly, 0, dx, m)
            else:
                _give(layers, srcs, gp, ly, 0, dy, m)
        elif ly.kind == FNN_LAYER_ADD:
            for j in range(ly.n_src):
                _give(layers, srcs, gp, ly, j, dy, m)
        elif ly.kind == FNN_LAYER_RESIDUAL:
            _give(layers, srcs, gp, ly, 0, dy, m)
            if kept[l]:
                _give(layers, srcs, gp, ly, 1, dy, m)
        elif ly.kind == FNN_LAYER_CONCAT:
            c0 = 0
            dx = <floating *>ly.dX
            for j in range(ly.n_src):
                w = _width(layers, srcs, ly, j)
                for i in range(m):
                    memcpy(dx + i * w, dy + i * ly.n_out + c0, w * sizeof(floating))
                _give(layers, srcs, gp, ly, j, dx, m)
                dx = dx + m * w
                c0 += w
        else:
            return FNN_STATUS_BAD_KIND
        if ov != NULL and _ov_after(ov, l, grd, sizeof(floating)) != 0:
            return FNN_STATUS_BAD_KIND
    return FNN_STATUS_DONE


cdef inline void _set_lr(Update *u, double lr) noexcept nogil:
    """The learning rate of the optimizer's next step (a per-step schedule)."""
    if u.kind == FNN_OPT_SGD:
        u.sgd.lr = lr
    elif u.kind == FNN_OPT_ADAM:
        u.adam.lr = lr
    elif u.kind == FNN_OPT_RMSPROP:
        u.rmsprop.lr = lr
    elif u.kind == FNN_OPT_ADAGRAD:
        u.adagrad.lr = lr


cdef void _save_running(const PlanLayer *layers, Py_ssize_t L, const floating *like) noexcept nogil:
    """Copy the running statistics of every BatchNorm node that updates them into its backup (the guard); `like`
    only gives the dtype."""
    cdef Py_ssize_t l, n
    for l in range(L):
        if layers[l].kind == FNN_LAYER_BATCHNORM and layers[l].batch_stats and layers[l].rbak != NULL:
            n = layers[l].cols
            memcpy(layers[l].rbak, layers[l].rmean, n * sizeof(floating))
            memcpy(<floating *>layers[l].rbak + n, layers[l].rvar, n * sizeof(floating))


cdef Py_ssize_t _bad_running(const PlanLayer *layers, Py_ssize_t L, const floating *like) noexcept nogil:
    """The first BatchNorm node whose running statistics hold a NaN/inf, or -1 (`like`: the dtype)."""
    cdef Py_ssize_t l
    for l in range(L):
        if layers[l].kind == FNN_LAYER_BATCHNORM and layers[l].batch_stats and layers[l].cols > 0:
            if (_first_nonfinite(<floating *>layers[l].rmean, layers[l].cols) >= 0
                    or _first_nonfinite(<floating *>layers[l].rvar, layers[l].cols) >= 0):
                return l
    return -1


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef inline void _consts(const Update *u, Py_ssize_t step, StepConsts *c) noexcept nogil:
    """The step-dependent constants of an update (step >= 1: the count after it)."""
    c.first = step == 1
    c.step_size = c.bc2_sqrt = c.wd = c.decay_factor = c.clr = 0.0
    if u.kind == FNN_OPT_ADAGRAD:       # as optim.Adagrad._update, in double
        c.clr = u.adagrad.lr / (1 + (step - 1) * u.adagrad.lr_decay)
    if u.kind == FNN_OPT_ADAM:
        c.step_size = u.adam.lr / (1.0 - u.adam.beta1 ** step)
        c.bc2_sqrt = (1.0 - u.adam.beta2 ** step) ** 0.5
        c.wd = 0.0 if u.adam.decoupled else u.adam.weight_decay
        c.decay_factor = 1.0 - u.adam.lr * u.adam.weight_decay if u.adam.decoupled else 1.0


cdef inline void _update_range(const Update *u, const StepConsts *c, floating *p, const floating *g,
                               Py_ssize_t i0, Py_ssize_t i1, double *mx) noexcept nogil:
    """The update of elements [i0, i1), exactly as optim.sgd_step / adam_step / rmsprop_step / adagrad_step do it
    (weight decay on [0, n_decay) only).  u.kind is one of the four (_update checks it).  mx (may be NULL): SGD and
    Adam raise it to the maxima of |p| and of each state written (mx[0..3]); RMSprop and Adagrad do not track them
    (the guard carries its proved bounds instead, see run_batches)."""
    cdef Py_ssize_t cut = min(max(i0, u.n_decay), i1)
    cdef floating *s0 = <floating *>u.s0
    cdef floating *s1 = <floating *>u.s1
    cdef floating *s2 = <floating *>u.s2
    cdef const SGDHyper *h
    cdef const AdamHyper *a
    cdef const RMSpropHyper *r
    cdef const AdagradHyper *ag
    if u.kind == FNN_OPT_RMSPROP:
        r = &u.rmsprop
        _rmsprop_range(p, g, s0, s1, s2, i0, cut, <floating>r.lr, <floating>r.alpha, <floating>r.eps,
                       <floating>r.weight_decay, <floating>r.momentum)
        _rmsprop_range(p, g, s0, s1, s2, cut, i1, <floating>r.lr, <floating>r.alpha, <floating>r.eps, <floating>0,
                       <floating>r.momentum)
    elif u.kind == FNN_OPT_ADAGRAD:
        ag = &u.adagrad
        _adagrad_range(p, g, s0, i0, cut, <floating>c.clr, <floating>ag.weight_decay, <floating>ag.eps)
        _adagrad_range(p, g, s0, cut, i1, <floating>c.clr, <floating>0, <floating>ag.eps)
    elif u.kind == FNN_OPT_SGD:
        h = &u.sgd
        _sgd_range(p, g, s0, i0, cut, <floating>h.lr, <floating>h.momentum, <floating>h.dampening,
                   <floating>h.weight_decay, h.nesterov, c.first, mx)
        _sgd_range(p, g, s0, cut, i1, <floating>h.lr, <floating>h.momentum, <floating>h.dampening, <floating>0,
                   h.nesterov, c.first, mx)
    else:
        a = &u.adam
        _adam_range(p, g, s0, s1, s2, i0, cut, <floating>c.step_size, <floating>a.beta1, <floating>a.beta2,
                    <floating>a.eps, <floating>c.bc2_sqrt, <floating>c.wd, <floating>c.decay_factor, mx)
        _adam_range(p, g, s0, s1, s2, cut, i1, <floating>c.step_size, <floating>a.beta1, <floating>a.beta2,
                    <floating>a.eps, <floating>c.bc2_sqrt, <floating>0, <floating>1, mx)


cdef inline bint _tracks(int kind) noexcept nogil:
    """Whether the update kernel of `kind` tracks the maxima of what it writes (csrc/fnn_update.h)."""
    return kind == FNN_OPT_SGD or kind == FNN_OPT_ADAM


cdef inline bint _bad_block(const floating *x, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    cdef int acc = 0
    if x == NULL:
        return 0
    for i in range(i0, i1):
        v = x[i] - x[i]
        acc |= v != 0
    return acc != 0


cdef inline void _copy_block(floating *dst, const floating *src, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    if src != NULL:
        memcpy(dst + i0, src + i0, (i1 - i0) * sizeof(floating))


cdef int _guarded_range(const Update *u, const StepConsts *c, floating *p, const floating *g, floating *B,
                        floating *B0, floating *B1, floating *B2, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The guarded update of elements [a, b), block by block (backup copy, update, check while in cache)."""
    cdef Py_ssize_t i0 = a, i1
    cdef int bad = 0
    cdef floating *s0 = <floating *>u.s0
    cdef floating *s1 = <floating *>u.s1
    cdef floating *s2 = <floating *>u.s2
    while i0 < b:
        i1 = min(i0 + _BLOCK, b)
        _copy_block(B, p, i0, i1)
        _copy_block(B0, s0, i0, i1)
        _copy_block(B1, s1, i0, i1)
        _copy_block(B2, s2, i0, i1)
        _update_range(u, c, p, g, i0, i1, NULL)
        bad |= _bad_block(p, i0, i1) | _bad_block(s0, i0, i1) | _bad_block(s1, i0, i1) | _bad_block(s2, i0, i1)
        i0 = i1
    return bad


cdef int _update(const Update *u, floating *p, const floating *g, floating *B, floating *B0, floating *B1,
                 floating *B2, Py_ssize_t n, Py_ssize_t step, int n_threads, Bounds *mx) noexcept nogil:
    """One optimizer step (step >= 1: the count after it).  With backups (B != NULL: the NaN guard could not prove
    the step finite), the update runs block by block: each block of the parameters and state is copied into the
    backups just before it is updated and checked for NaN/inf just after, while it is in cache, instead of three
    separate passes over the whole buffers.  Returns 1 when some updated parameter or state element is
    non-finite (the caller then restores from the backups, which hold the whole buffers from before the step),
    0 otherwise, and FNN_ERR_KIND (nothing done) for an optimizer kind outside the table.
    Without backups and with mx != NULL, *mx receives the maxima of |p| and of each state after the update (SGD,
    Adam: _tracks; for RMSprop and Adagrad *mx is left as it is)."""
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    cdef Py_ssize_t t
    cdef StepConsts c
    cdef int bad[_MAX_T]
    cdef double part[_MAX_T][4]
    cdef bint any_bad = 0
    if u.kind != FNN_OPT_SGD and u.kind != FNN_OPT_ADAM and u.kind != FNN_OPT_RMSPROP and u.kind != FNN_OPT_ADAGRAD:
        return FNN_ERR_KIND
    if nt > _MAX_T:
        nt = _MAX_T
    _consts(u, step, &c)
    if B == NULL:      # the update kernels track the maxima anyway: collect them per thread, keep them if asked
        if nt <= 1:
            part[0][0] = part[0][1] = part[0][2] = part[0][3] = 0.0
            _update_range(u, &c, p, g, 0, n, &part[0][0])
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                part[t][0] = part[t][1] = part[t][2] = part[t][3] = 0.0
                _update_range(u, &c, p, g, _lo(t, nt, n), _lo(t + 1, nt, n), &part[t][0])
        if mx != NULL and _tracks(u.kind):
            mx.P, mx.S0, mx.S1, mx.S2 = part[0][0], part[0][1], part[0][2], part[0][3]
            for t in range(1, nt):
                mx.P = max(mx.P, part[t][0])
                mx.S0 = max(mx.S0, part[t][1])
                mx.S1 = max(mx.S1, part[t][2])
                mx.S2 = max(mx.S2, part[t][3])
        return 0
    if nt <= 1:        # no parallel region for one thread (GOMP_parallel costs ~1 us per step even then)
        return _guarded_range(u, &c, p, g, B, B0, B1, B2, 0, n)
    for t in prange(nt, num_threads=nt, schedule="static"):
        bad[t] = _guarded_range(u, &c, p, g, B, B0, B1, B2, _lo(t, nt, n), _lo(t + 1, nt, n))
    for t in range(nt):
        any_bad |= bad[t] != 0
    return any_bad


cdef bint _refresh(Bounds *bd, int kind, const floating *p, const floating *s0, const floating *s1,
                   const floating *s2, Py_ssize_t n, int n_threads) noexcept nogil:
    """Fresh bounds from one read pass over the parameters and each state array; 0 when a value is NaN/inf or
    a square average (Adam's exp_avg_sq s1, RMSprop's square_avg s0, Adagrad's sum s0) is negative: nothing can
    be proved then."""
    cdef double lo
    cdef int bad = scan_max(p, n, n_threads, &bd.P, &lo)
    bd.S0 = bd.S1 = bd.S2 = 0.0
    if s0 != NULL:
        bad |= scan_max(s0, n, n_threads, &bd.S0, &lo)
        if kind == FNN_OPT_RMSPROP or kind == FNN_OPT_ADAGRAD:
            bad |= not (lo >= 0)
    if s1 != NULL:
        bad |= scan_max(s1, n, n_threads, &bd.S1, &lo)
        if kind == FNN_OPT_ADAM:
            bad |= not (lo >= 0)
    if s2 != NULL:
        bad |= scan_max(s2, n, n_threads, &bd.S2, &lo)
    return not bad


cdef inline bint _proved(const Update *u, bint dbl, const Bounds *bd, double G, Py_ssize_t step,
                         Bounds *nb) noexcept nogil:
    """bound.sgd_safe / adam_safe / rmsprop_safe / adagrad_safe with the plan's hyperparameters (0: not proved, also
    for an unknown kind).  RMSprop and Adagrad, whose kernels do not track maxima, write into *nb the bounds that
    hold after the update when it is proved."""
    cdef StepConsts c
    if u.kind == FNN_OPT_RMSPROP:
        return rmsprop_safe(dbl, bd, G, u.rmsprop.centered, u.s2 != NULL, u.rmsprop.lr, u.rmsprop.alpha,
                            u.rmsprop.eps, u.rmsprop.weight_decay, u.rmsprop.momentum, nb)
    if u.kind == FNN_OPT_ADAGRAD:
        _consts(u, step, &c)
        return adagrad_safe(dbl, bd, G, c.clr, u.adagrad.weight_decay, u.adagrad.eps, nb)
    if u.kind == FNN_OPT_SGD:
        return sgd_safe(dbl, bd, G, u.s0 != NULL, u.sgd.lr, u.sgd.momentum, u.sgd.dampening, u.sgd.weight_decay,
                        u.sgd.nesterov, step == 1)
    if u.kind == FNN_OPT_ADAM:
        return adam_safe(dbl, bd, G, u.s2 != NULL, u.adam.lr, u.adam.beta1, u.adam.beta2, u.adam.eps,
                         u.adam.weight_decay, u.adam.decoupled, step)
    return 0


cdef void *_addr(object a):
    return <void *><size_t>a.__array_interface__["data"][0]


cdef class Plan:
    """The state of a compiled plan for one model (flat parameters and gradients) at one batch size.

    Made by fastnn/training/compiled.py: ``Plan(params, grads, bs, n_layers, n_update)``, one node setter per
    layer (``dense``, ``activation``, ``batchnorm``, ``layernorm``, ``dropout``, ``add``, ``residual``, ``concat``,
    ``identity``, ``conv``, ``pool``), ``link`` for a node whose sources are not just the node before it (the
    default chain), and ``batch_buffers`` once, which checks the graph; then, before a run, ``loss``, an
    optimizer (``sgd``, ``adam``, ``rmsprop`` or ``adagrad``), ``guard`` and ``clip``.
    Every array it is given must be C-contiguous, of the parameters' dtype (labels: intp), and of the documented
    shape; it keeps a reference to each, so the raw pointers in its C structs stay valid."""
    cdef PlanLayer *layers
    cdef Py_ssize_t n_layers, bs, P
    cdef Py_ssize_t U           # the update, clipping and the guard cover [0, U) (the trainable prefix); U <= P
    cdef object dtype
    cdef bint dbl
    cdef void *params
    cdef void *grads
    cdef void *Xb               # (bs, n_in) the gathered batch
    cdef void *dout             # (bs, k) the gradient of the loss with respect to the output
    cdef Py_ssize_t *labels     # (bs,) the batch's labels (cross-entropy)
    cdef void *Tb               # (bs, k) the batch's targets (regression)
    cdef void *Wb               # (bs * rows,) the batch's sample weights (NULL: none given to batch_buffers)
    cdef int loss_kind          # FNN_LOSS_...; -1 until loss() is called
    cdef public bint fuse_relu  # fuse a BatchNorm -> ReLU pair into one node (default; read by batch_buffers)
    cdef Update update          # kind -1 until sgd() / adam() / rmsprop() / adagrad() is called
    cdef bint guard_on
    cdef void *backup           # the parameters' backup (guard); NULL without the guard
    cdef void *bs0
    cdef void *bs1
    cdef void *bs2              # the optimizer states' backups (NULL where a state is absent)
    cdef double clip_value      # > 0: clip each gradient element to +-clip_value
    cdef double max_norm        # >= 0: scale the gradient to this norm at most
    cdef MaxNormC *cons         # the weight constraints, applied after each update in this order (``constraints``)
    cdef Py_ssize_t n_cons
    cdef RunStats st
    cdef Bounds bd              # the guard's bounds of |p| and the states, carried from one run to the next of an
    cdef bint bd_known          # epoch's chunks (nothing touches the buffers in between); reset_stats forgets them
    cdef bint bd_trusted
    cdef intptr_t ar_fn         # data-parallel (``allreduce``): MPI_Allreduce's address, 0 in one process
    cdef intptr_t ar_comm, ar_dtype, ar_double, ar_sum, ar_in_place
    cdef intptr_t ar_iall, ar_waitall   # MPI_Iallreduce, MPI_Waitall (0: the loss allreduce blocks, before backward)
    cdef Py_ssize_t ar_rank, ar_size
    cdef double ar_small[2]
    cdef Overlap ov             # data-parallel with overlap (``overlap``): the buckets; ov_on 0: one blocking call
    cdef bint ov_on
    cdef bint sh_on             # data-parallel with the sharded update (``shard``)
    cdef intptr_t sh_rs, sh_agv, sh_ag      # MPI_Reduce_scatter, MPI_Allgatherv, MPI_Allgather
    cdef Py_ssize_t sh_lo, sh_cnt           # this rank's shard [sh_lo, sh_lo + sh_cnt) of the trainable prefix
    cdef int *sh_counts         # (size,) every rank's shard length, and (size,) its offset
    cdef int *sh_displs
    cdef double *sh_small       # (size * _SH_K,) the small allgather's buffer
    cdef void *sh_grad          # (sh_cnt,) the global gradient of this rank's shard (the reduce-scatter's result)
    cdef dict _keep             # the arrays the pointers above point into
    cdef bytearray _set         # which layers were given
    cdef Py_ssize_t _n_in0      # the batch's features
    cdef list _links            # each node's sources (None: the node before it, or the batch for node 0)
    cdef Py_ssize_t *srcs       # every node's sources, one after the other (PlanLayer.src0, n_src)
    cdef void **outp            # per node: its output in the current pass (see _forward_graph)
    cdef void **gp              # per node: the gradient of its output in the current backward pass (NULL: none)
    cdef unsigned char *kept    # per node: a DROPOUT node masked / a RESIDUAL node kept its block this batch
    cdef Py_ssize_t n_draws     # random draws per batch (DROPOUT and RESIDUAL nodes that draw)

    def __cinit__(self, params, grads, Py_ssize_t bs, Py_ssize_t n_layers, Py_ssize_t n_update=-1):
        self.layers = <PlanLayer *>PyMem_Calloc(max(n_layers, 1), sizeof(PlanLayer))
        self.outp = <void **>PyMem_Calloc(max(n_layers, 1), sizeof(void *))
        self.gp = <void **>PyMem_Calloc(max(n_layers, 1), sizeof(void *))
        self.kept = <unsigned char *>PyMem_Calloc(max(n_layers, 1), 1)
        if self.layers == NULL or self.outp == NULL or self.gp == NULL or self.kept == NULL:
            raise MemoryError()
        self.fuse_relu = 1

    def __init__(self, params, grads, Py_ssize_t bs, Py_ssize_t n_layers, Py_ssize_t n_update=-1):
        """params, grads: the model's whole flat buffers (P,), which the layers' offsets address; n_update: the
        length of the prefix that the optimizer updates (the trainable parameters; -1: all P), the size of the
        optimizer states and of the guard's backups."""
        if params.dtype not in (np.float32, np.float64) or params.ndim != 1 or not params.flags.c_contiguous:
            raise ValueError(f"Plan: parameters must be a contiguous float32 or float64 vector, got {params.dtype}")
        if bs < 1 or n_layers < 0:
            raise ValueError(f"Plan: bad batch size {bs} or layer count {n_layers}")
        self.dtype, self.dbl = params.dtype, params.dtype == np.float64
        self.P, self.bs, self.n_layers = params.shape[0], bs, n_layers
        if n_update > self.P or n_update < -1:
            raise ValueError(f"Plan: n_update {n_update} outside [0, {self.P}]")
        self.U = self.P if n_update < 0 else n_update
        self._keep = {}
        self._set = bytearray(n_layers)
        self._links = [None] * n_layers
        self.params = self._arr("params", params, (self.P,))
        self.grads = self._arr("grads", grads, (self.P,))
        self.loss_kind = -1
        self.update.kind = -1
        self.clip_value = self.max_norm = -1.0

    def __dealloc__(self):
        PyMem_Free(self.layers)
        PyMem_Free(self.outp)
        PyMem_Free(self.gp)
        PyMem_Free(self.kept)
        PyMem_Free(self.srcs)
        PyMem_Free(self.cons)
        _free_buckets(&self.ov)
        _free_shard(self)

    cdef void *_arr(self, key, a, tuple shape, dtype=None) except? NULL:
        """Check a (dtype, C-contiguous, shape), keep it, return its data pointer (NULL for None or empty)."""
        if a is None:
            self._keep.pop(key, None)
            return NULL
        want = self.dtype if dtype is None else np.dtype(dtype)
        if a.dtype != want or not a.flags.c_contiguous or a.shape != shape:
            raise ValueError(f"Plan: {key} must be a C-contiguous {want} array of shape {shape}, got {a.dtype} "
                             f"{a.shape}")
        self._keep[key] = a
        return _addr(a) if a.size else NULL

    cdef PlanLayer *_layer(self, Py_ssize_t l, Py_ssize_t n_in, Py_ssize_t n_out) except NULL:
        if not 0 <= l < self.n_layers:
            raise ValueError(f"Plan: layer {l} outside [0, {self.n_layers})")
        if n_in < 0 or n_out < 0:
            raise ValueError(f"Plan: layer {l} has sizes {n_in} -> {n_out}")
        self._set[l] = 1
        cdef PlanLayer *ly = &self.layers[l]
        memset(ly, 0, sizeof(PlanLayer))
        ly.w_off = ly.b_off = ly.draw = -1
        ly.need_dx = 1
        ly.n_in, ly.n_out, ly.rows, ly.cols = n_in, n_out, 1, n_out
        return ly

    def dense(self, Py_ssize_t l, int act, Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t w_off, Py_ssize_t b_off,
              bint need_dx, double alpha, Z, Y, dZ, dX, Py_ssize_t rows=1):
        """Layer l: Dense (n_in -> n_out) with activation act (FNN_ACT_IDENTITY for none: the output is Z),
        W at w_off and b at b_off (-1: no bias) in the parameters; buffers Z, Y, dZ (bs, n_out), dX (bs, n_in).
        rows > 1: each sample is `rows` rows (the positions of a sequence or an image) of n_in / rows features,
        each mapped to n_out / rows (the per-layer layer on its (N * rows, features) view); W (n_in / rows,
        n_out / rows), b (n_out / rows,)."""
        check_act(act, "Plan.dense")
        if rows < 1 or n_in % rows or n_out % rows:
            raise ValueError(f"Plan.dense: layer {l}: {n_in} -> {n_out} features do not make {rows} rows")
        cdef Py_ssize_t ci = n_in // rows, co = n_out // rows
        if w_off < 0 or w_off + ci * co > self.P or b_off < -1 or (b_off >= 0 and b_off + co > self.P):
            raise ValueError(f"Plan.dense: layer {l}: offsets {w_off}, {b_off} outside the {self.P} parameters")
        cdef PlanLayer *ly = self._layer(l, n_in, n_out)
        self._rows(ly, l, rows)
        ly.kind, ly.act, ly.alpha, ly.n_in, ly.n_out = FNN_LAYER_DENSE, act, alpha, n_in, n_out
        ly.w_off, ly.b_off, ly.need_dx, ly.w_len = w_off, b_off, need_dx, ci * co
        ly.Z = self._arr(("Z", l), Z, (self.bs, n_out))
        ly.Y = self._arr(("Y", l), Y, (self.bs, n_out))
        ly.dZ = self._arr(("dZ", l), dZ, (self.bs, n_out))
        ly.dX = self._arr(("dX", l), dX, (self.bs, n_in))
        ly.out = ly.Z if act == FNN_ACT_IDENTITY else ly.Y

    def rnn(self, Py_ssize_t l, int cell, Py_ssize_t steps, Py_ssize_t step_in, Py_ssize_t units, bint seq,
            bint need_dx, int n_threads, Y, dX, dirs, int merge=-1, dY2=None, mask=None, Py_ssize_t emb=-1):
        """Layer l: a SimpleRNN (cell rnn.TANH or RELU), LSTM or GRU over samples of steps x step_in features (no
        mask, no initial state), return_sequences (seq: the output Y (bs, steps * units), step s at position s, as
        the per-layer layer returns it; else the last state (bs, units)), or a Bidirectional pair of them merged by
        `merge` (0 concat: Y twice as wide, 1 sum, 2 mul, 3 ave).  Y: the node's output; dX (bs, steps *
        step_in) when need_dx.  dirs: one dict per direction (forward, then backward), rnn.pyx's buffers for bs
        rows (its module docstring), all flat: "reverse" (go_backwards), the offsets "w_off", "whh_off",
        "bih_off", "bhh_off" of weight_ih, weight_hh, bias_ih, bias_hh; "Y" (the direction's output; of the
        second direction only, the first's is the node's Y unless merged: then its own too), "hout" (bs, units)
        with seq (else None), "dX" (the second direction's own, when need_dx), "perm" (bs,) int32 the identity,
        "n_active" (steps,) int32, "XP", "HP", "Hs", "Cs" (LSTM, else None), "Gs" (LSTM and GRU, else None), "dH",
        "dC" (LSTM), "dGt", "dGo"; "Wp": float32 rnn.packed_size(cell, step_in, units, n_threads) elements (the
        most threads a run may take: fewer use a part of it, as the per-layer path's smaller buffer), None for
        float64; "scratch" (bs + steps + 1,) and "mode" (1,) int32.  dY2 (2 * bs * rows * units,): the two
        directions' output gradients (two directions only).  mask: None, or the (bs, steps) uint8 buffer an
        Embedding node with mask_zero fills (Plan.embedding): masked steps leave the state unchanged, the rows run
        sorted by length when the mask is right-padded, as the per-layer layer runs them.  emb: the index of an
        Embedding node (Plan.embedding, before this one) that is the node's input, or -1; with it (float32) each
        direction's "xtab" (vocab * G * units,) takes the table's input projections, which the forward computes
        once per batch instead of per step and row (rnn.pxd rnn_forward_emb_raw: the same bits)."""
        if cell < 0 or cell > 3 or steps < 1 or step_in < 1 or units < 1 or n_threads < 1:
            raise ValueError(f"Plan.rnn: layer {l}: cell {cell}, steps {steps}, step_in {step_in}, units {units}, "
                             f"threads {n_threads}")
        cdef Py_ssize_t nd = len(dirs), R = steps if seq else 1, bs = self.bs, k
        if nd not in (1, 2) or (nd == 2 and not 0 <= merge <= 3):
            raise ValueError(f"Plan.rnn: layer {l}: {nd} directions, merge {merge}")
        if emb >= 0 and (emb >= l or emb >= self.n_layers or not self._set[emb]
                         or self.layers[emb].kind != FNN_LAYER_EMBEDDING or self.layers[emb].cols != step_in
                         or self.layers[emb].rows != steps):
            raise ValueError(f"Plan.rnn: layer {l}: node {emb} is not an Embedding of {steps} steps of "
                             f"{step_in} features before it")
        cdef Py_ssize_t G = rnn_gates(cell), GU = G * units, SV = rnn_saved(cell) * units
        cdef bint lstm = G == 4
        cdef Py_ssize_t width = R * units * (2 if nd == 2 and merge == _MERGE_CONCAT else 1)
        cdef PlanLayer *ly = self._layer(l, steps * step_in, width)
        self._rows(ly, l, R)
        ly.kind, ly.need_dx, ly.n_dirs, ly.merge = FNN_LAYER_RNN, need_dx, nd, merge
        ly.Y = self._arr(("Y", l), Y, (bs, width))
        ly.dX = self._arr(("dX", l), dX if need_dx else None, (bs, ly.n_in))
        ly.dY2 = self._arr(("dY2", l), dY2 if nd == 2 else None, (2 * bs * R * units,))
        cdef RnnC *r
        for k in range(nd):
            d = dirs[k]
            r = &ly.rnn[k]
            r.cell, r.reverse, r.seq, r.steps, r.units, r.step_in = cell, d["reverse"], seq, steps, units, step_in
            r.w_off, r.whh_off, r.bih_off, r.bhh_off = d["w_off"], d["whh_off"], d["bih_off"], d["bhh_off"]
            if (r.w_off < 0 or r.w_off + step_in * GU > self.P or r.whh_off < 0 or r.whh_off + units * GU > self.P
                    or r.bih_off < 0 or r.bih_off + GU > self.P or r.bhh_off < 0 or r.bhh_off + GU > self.P):
                raise ValueError(f"Plan.rnn: layer {l}: offsets outside the {self.P} parameters")
            key = ("rnn", l, k)
            r.Y = ly.Y if nd == 1 else self._arr(key + ("Y",), d["Y"], (bs, R * units))
            r.hout = self._arr(key + ("hout",), d["hout"], (bs, units)) if seq else r.Y
            r.dX = ly.dX if k == 0 else self._arr(key + ("dX",), d["dX"] if need_dx else None, (bs, ly.n_in))
            r.mask = <const unsigned char *>self._arr(key + ("mask",), mask, (bs, steps), np.uint8)
            r.perm = <int *>self._arr(key + ("perm",), d["perm"], (bs,), np.intc)
            r.n_active = <int *>self._arr(key + ("n_active",), d["n_active"], (steps,), np.intc)
            r.scratch = <int *>self._arr(key + ("scratch",), d["scratch"], (bs + steps + 1,), np.intc)
            r.mode = <int *>self._arr(key + ("mode",), d["mode"], (1,), np.intc)
            r.XP = self._arr(key + ("XP",), d["XP"], (bs * steps * GU,))
            r.HP = self._arr(key + ("HP",), d["HP"], (bs * GU,))
            r.Hs = self._arr(key + ("Hs",), d["Hs"], ((steps + 1) * bs * units,))
            r.Cs = self._arr(key + ("Cs",), d["Cs"] if lstm else None, ((steps + 1) * bs * units,))
            r.Gs = self._arr(key + ("Gs",), d["Gs"] if SV else None, (steps * bs * SV,))
            r.Wp = self._arr(key + ("Wp",), None if self.dbl else d["Wp"],
                             (rnn_packed_size(cell, step_in, units, n_threads),))
            r.dH = self._arr(key + ("dH",), d["dH"], (bs * units,))
            r.dC = self._arr(key + ("dC",), d["dC"] if lstm else None, (bs * units,))
            r.dGt = self._arr(key + ("dGt",), d["dGt"], (steps * bs * GU,))
            r.dGo = self._arr(key + ("dGo",), d["dGo"], (bs * steps * GU,))
            r.ids, r.emb_off, r.vocab, r.xtab = NULL, 0, 0, NULL
            if emb >= 0:           # (checked above, before the node was reset)
                if not self.dbl:
                    r.ids, r.emb_off, r.vocab = self.layers[emb].ids, self.layers[emb].w_off, self.layers[emb].n_rows
                    r.xtab = self._arr(key + ("xtab",), d["xtab"], (r.vocab * GU,))
                    if r.xtab == NULL or r.ids == NULL:
                        raise ValueError(f"Plan.rnn: layer {l}: the Embedding's ids and an xtab buffer are needed")
            if (r.Y == NULL or r.hout == NULL or (need_dx and r.dX == NULL) or r.XP == NULL or r.HP == NULL
                    or r.Hs == NULL or (lstm and (r.Cs == NULL or r.dC == NULL)) or (SV and r.Gs == NULL)
                    or (not self.dbl and r.Wp == NULL) or r.dH == NULL or r.dGt == NULL or r.dGo == NULL
                    or (nd == 2 and ly.dY2 == NULL) or r.perm == NULL or r.n_active == NULL or r.scratch == NULL
                    or r.mode == NULL):
                raise ValueError(f"Plan.rnn: layer {l}: a buffer is missing")

    def masking(self, Py_ssize_t l, Py_ssize_t steps, Py_ssize_t features, double mask_value, bint need_dx, Y, dX,
                mask):
        """Layer l: Masking of samples of steps x features (fastnn.layers.Masking): mask (bs, steps) uint8 gets
        each batch's steps that hold a feature other than mask_value (compared in the plan's dtype), Y (bs, steps *
        features) the input with the other steps zeroed (times 0), dX (bs, steps * features) when need_dx."""
        if steps < 1 or features < 1:
            raise ValueError(f"Plan.masking: layer {l}: {steps} steps of {features} features")
        cdef PlanLayer *ly = self._layer(l, steps * features, steps * features)
        self._rows(ly, l, steps)
        ly.kind, ly.alpha, ly.need_dx = FNN_LAYER_MASKING, mask_value, need_dx
        ly.Y = self._arr(("Y", l), Y, (self.bs, ly.n_out))
        ly.dX = self._arr(("dX", l), dX if need_dx else None, (self.bs, ly.n_in))
        ly.emask = <unsigned char *>self._arr(("emask", l), mask, (self.bs, steps), np.uint8)
        if ly.Y == NULL or ly.emask == NULL or (need_dx and ly.dX == NULL):
            raise ValueError(f"Plan.masking: layer {l}: Y, mask and (need_dx) dX are needed")

    def embedding(self, Py_ssize_t l, Py_ssize_t steps, Py_ssize_t n_rows, Py_ssize_t d, Py_ssize_t w_off, Y,
                  ids, mask=None):
        """Layer l: Embedding of the batch's `steps` ids per sample (carried as floats, exact: the caller checks
        that they are integers in [0, n_rows), and for float32 that n_rows <= 2^24), the table (n_rows, d) at
        w_off; buffers Y (bs, steps * d) and ids (bs, steps) int64.  Only the batch may feed it.  mask (bs, steps)
        uint8 (mask_zero=True): each batch's ids != 0, given to the recurrent nodes it feeds (Plan.rnn's mask)."""
        if steps < 1 or n_rows < 1 or d < 1 or w_off < 0 or w_off + n_rows * d > self.P:
            raise ValueError(f"Plan.embedding: layer {l}: steps {steps}, table ({n_rows}, {d}) at {w_off}")
        if not self.dbl and n_rows > (1 << 24):
            raise ValueError(f"Plan.embedding: layer {l}: {n_rows} ids are not all exact in float32")
        cdef PlanLayer *ly = self._layer(l, steps, steps * d)
        self._rows(ly, l, steps)
        ly.kind, ly.n_rows, ly.w_off, ly.w_len, ly.need_dx = FNN_LAYER_EMBEDDING, n_rows, w_off, n_rows * d, 0
        ly.Y = self._arr(("Y", l), Y, (self.bs, steps * d))
        ly.ids = <int64_t *>self._arr(("ids", l), ids, (self.bs, steps), np.int64)
        ly.emask = <unsigned char *>self._arr(("emask", l), mask, (self.bs, steps), np.uint8)

    def activation(self, Py_ssize_t l, int act, Py_ssize_t n, double alpha, Y, dX, bint passthrough=False,
                   Py_ssize_t rows=1):
        """Layer l: an activation layer of kind act over n features per sample, seen as rows x (n / rows) (the
        last axis: a row-wise activation such as softmax runs along it); buffers Y and dX (bs, n).  passthrough: it
        is the output activation fused with the loss (a PASS layer: the logits go through, nothing computed)."""
        check_act(act, "Plan.activation")
        cdef PlanLayer *ly = self._layer(l, n, n)
        self._rows(ly, l, rows)
        ly.kind = FNN_LAYER_PASS if passthrough else FNN_LAYER_ACTIVATION
        ly.act, ly.alpha, ly.n_in, ly.n_out, ly.w_off, ly.b_off, ly.need_dx = act, alpha, n, n, -1, -1, 1
        ly.Z = ly.dZ = NULL
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))
        ly.dX = self._arr(("dX", l), dX, (self.bs, n))
        ly.out = ly.Y

    cdef int _rows(self, PlanLayer *ly, Py_ssize_t l, Py_ssize_t rows) except -1:
        """Node l's output is `rows` rows per sample of n_out / rows values (the last axis)."""
        if rows < 1 or ly.n_out % rows:
            raise ValueError(f"Plan: layer {l}: {ly.n_out} features do not make {rows} rows")
        ly.rows, ly.cols = rows, ly.n_out // rows
        return 0

    cdef _params_at(self, Py_ssize_t l, str owner, Py_ssize_t w_off, Py_ssize_t b_off, Py_ssize_t n):
        if w_off < 0 or w_off + n > self.P or b_off < 0 or b_off + n > self.P:
            raise ValueError(f"Plan.{owner}: layer {l}: offsets {w_off}, {b_off} outside the {self.P} parameters")

    def batchnorm(self, Py_ssize_t l, Py_ssize_t n, Py_ssize_t w_off, Py_ssize_t b_off, bint need_dx, double momentum,
                  double eps, bint batch_stats, Y, Xhat, dX, mean, invstd, running_mean, running_var, backup=None,
                  Py_ssize_t rows=1):
        """Layer l: BatchNorm over n features per sample, seen as rows x C (C = n / rows, the channels of the last
        axis, normalized over the batch's m * rows rows: torch.nn.BatchNorm1d / 2d), weight and bias (C,) at w_off
        and b_off; batch_stats: training normalizes with the batch's statistics and updates running_mean /
        running_var (C,) (the layer's buffers), else (a frozen layer) with those; buffers Y, Xhat, dX (bs, n), mean,
        invstd (C,); backup (2, C): where the NaN guard copies the running statistics before each batch (needed
        for the guard)."""
        if rows < 1 or n % rows:
            raise ValueError(f"Plan.batchnorm: layer {l}: {n} features do not make {rows} rows")
        cdef Py_ssize_t C = n // rows
        self._params_at(l, "batchnorm", w_off, b_off, C)
        if not eps > 0 or not 0 <= momentum <= 1:
            raise ValueError(f"Plan.batchnorm: layer {l}: eps {eps} or momentum {momentum} out of range")
        cdef PlanLayer *ly = self._layer(l, n, n)
        self._rows(ly, l, rows)
        ly.kind, ly.n_in, ly.n_out, ly.w_off, ly.b_off, ly.need_dx = FNN_LAYER_BATCHNORM, n, n, w_off, b_off, need_dx
        ly.w_len = C
        ly.momentum, ly.eps, ly.batch_stats = momentum, eps, batch_stats
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))
        ly.Z = self._arr(("Z", l), Xhat, (self.bs, n))
        ly.dX = self._arr(("dX", l), dX, (self.bs, n))
        ly.mean = self._arr(("mean", l), mean, (C,))
        ly.invstd = self._arr(("invstd", l), invstd, (C,))
        ly.rmean = self._arr(("rmean", l), running_mean, (C,))
        ly.rvar = self._arr(("rvar", l), running_var, (C,))
        ly.rbak = self._arr(("rbak", l), backup, (2, C))
        if n > 0 and (ly.Y == NULL or ly.rmean == NULL or ly.rvar == NULL):
            raise ValueError(f"Plan.batchnorm: layer {l}: Y, Xhat, dX, mean, invstd and the running statistics are "
                             "needed")

    def layernorm(self, Py_ssize_t l, Py_ssize_t n, Py_ssize_t w_off, Py_ssize_t b_off, bint need_dx, double eps, Y,
                  Xhat, dX, invstd, Py_ssize_t rows=1):
        """Layer l: LayerNorm (torch.nn.LayerNorm) over the last axis of n features per sample seen as rows x D
        (D = n / rows), weight and bias (D,) at w_off and b_off; buffers Y, Xhat, dX (bs, n), invstd (bs * rows,)."""
        if rows < 1 or n % rows:
            raise ValueError(f"Plan.layernorm: layer {l}: {n} features do not make {rows} rows")
        self._params_at(l, "layernorm", w_off, b_off, n // rows)
        if not eps > 0:
            raise ValueError(f"Plan.layernorm: layer {l}: eps {eps} out of range")
        cdef PlanLayer *ly = self._layer(l, n, n)
        self._rows(ly, l, rows)
        ly.kind, ly.n_in, ly.n_out, ly.w_off, ly.b_off, ly.need_dx = FNN_LAYER_LAYERNORM, n, n, w_off, b_off, need_dx
        ly.eps, ly.w_len = eps, ly.cols
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))
        ly.Z = self._arr(("Z", l), Xhat, (self.bs, n))
        ly.dX = self._arr(("dX", l), dX, (self.bs, n))
        ly.invstd = self._arr(("invstd", l), invstd, (self.bs * rows,))

    def conv(self, Py_ssize_t l, int act, double alpha, tuple in_shape, tuple out_shape, tuple kernel, tuple strides,
             tuple dilation, tuple padding, Py_ssize_t groups, Py_ssize_t w_off, Py_ssize_t b_off, bint need_dx, Z, Y,
             dZ, dX, scratch, Py_ssize_t have_fwd, Py_ssize_t have_bwd):
        """Layer l: a convolution (fastnn/_core/conv.pyx conv2d_forward / conv2d_backward) of samples in_shape
        (H, W, C) into out_shape (OH, OW, F), kernel (kh, kw), strides, dilation (pairs), padding (top, bottom,
        left, right), groups, activation act (FNN_ACT_IDENTITY: the output is Z), W (kh, kw, C / groups, F) at
        w_off and b (F,) at b_off (-1: no bias) in the parameters.  Buffers Z, dX (bs, H*W*C), Y, dZ (bs, OH*OW*F)
        (None for the identity); scratch: the workspace, of which the forward uses have_fwd and the backward
        have_bwd elements (at least conv.scratch_size's for one thread: with more, as many threads as fit)."""
        check_act(act, "Plan.conv")
        cdef fnn_conv_geom g
        if len(in_shape) != 3 or len(out_shape) != 3 or len(kernel) != 2:
            raise ValueError(f"Plan.conv: layer {l}: shapes {in_shape} -> {out_shape}, kernel {kernel}")
        cdef Py_ssize_t bs = self.bs
        conv_geometry(&g, (bs,) + in_shape, tuple(kernel) + (in_shape[2] // groups if groups > 0 else 0,
                                                             out_shape[2]),
                      (bs,) + out_shape, strides, dilation, padding, groups, f"Plan.conv (layer {l})")
        cdef Py_ssize_t n_in = g.H * g.W * g.C, n_out = g.OH * g.OW * g.F
        cdef Py_ssize_t w_len = g.kh * g.kw * (g.C // g.G) * g.F
        if w_off < 0 or w_off + w_len > self.P or b_off < -1 or (b_off >= 0 and b_off + g.F > self.P):
            raise ValueError(f"Plan.conv: layer {l}: offsets {w_off}, {b_off} outside the {self.P} parameters")
        cdef Py_ssize_t item = 8 if self.dbl else 4
        if (have_fwd < conv_scratch(&g, item, 1, False) or have_bwd < conv_scratch(&g, item, 1, True)
                or scratch is None or scratch.ndim != 1 or scratch.shape[0] < max(have_fwd, have_bwd)):
            raise ValueError(f"Plan.conv: layer {l}: scratch of {getattr(scratch, 'shape', None)} for {have_fwd} "
                             f"and {have_bwd} elements, at least {conv_scratch(&g, item, 1, False)} and "
                             f"{conv_scratch(&g, item, 1, True)} needed")
        cdef PlanLayer *ly = self._layer(l, n_in, n_out)
        self._rows(ly, l, g.OH * g.OW)
        ly.kind, ly.act, ly.alpha, ly.n_in, ly.n_out = FNN_LAYER_CONV, act, alpha, n_in, n_out
        ly.w_off, ly.b_off, ly.need_dx, ly.w_len = w_off, b_off, need_dx, w_len
        ly.geom = g
        ly.Z = self._arr(("Z", l), Z, (self.bs, n_out))
        identity = act == FNN_ACT_IDENTITY
        ly.Y = self._arr(("Y", l), None if identity else Y, (self.bs, n_out))
        ly.dZ = self._arr(("dZ", l), None if identity else dZ, (self.bs, n_out))
        ly.dX = self._arr(("dX", l), dX if need_dx else None, (self.bs, n_in))
        ly.scratch = self._arr(("scratch", l), scratch, (scratch.shape[0],))
        ly.have_fwd, ly.have_bwd = have_fwd, have_bwd
        ly.out = ly.Z if identity else ly.Y
        if ly.Z == NULL or (not identity and (ly.Y == NULL or ly.dZ == NULL)) or (need_dx and ly.dX == NULL):
            raise ValueError(f"Plan.conv: layer {l}: Z, and Y and dZ for an activation, and dX when need_dx, are "
                             "needed")

    def pool(self, Py_ssize_t l, bint is_max, tuple in_shape, tuple out_shape, tuple window, tuple strides,
             tuple pads, bint need_dx, Y, dX, argmax=None):
        """Layer l: max (is_max) or average pooling (fastnn/_core/pool.pyx) of samples in_shape (H, W, C) into
        out_shape (OH, OW, C), window (ph, pw), strides (sh, sw), padding before (pt, pl) (pool.pyx's geometry:
        1-D pooling has H = 1, global pooling one window over the whole input); buffers Y (bs, OH*OW*C), dX
        (bs, H*W*C) (None unless need_dx), argmax (bs, OH*OW*C) int32 (max pooling)."""
        if len(in_shape) != 3 or len(out_shape) != 3 or len(window) != 2 or len(strides) != 2 or len(pads) != 2:
            raise ValueError(f"Plan.pool: layer {l}: shapes {in_shape} -> {out_shape}, window {window}, strides "
                             f"{strides}, pads {pads}")
        check_geometry(f"Plan.pool (layer {l})", (self.bs,) + in_shape, (self.bs,) + out_shape, window[0],
                       window[1], strides[0], strides[1], pads[0], pads[1])
        cdef Py_ssize_t n_in = in_shape[0] * in_shape[1] * in_shape[2]
        cdef Py_ssize_t n_out = out_shape[0] * out_shape[1] * out_shape[2]
        cdef PlanLayer *ly = self._layer(l, n_in, n_out)
        self._rows(ly, l, out_shape[0] * out_shape[1])
        ly.kind, ly.pool_max, ly.n_in, ly.n_out, ly.need_dx = FNN_LAYER_POOL, is_max, n_in, n_out, need_dx
        ly.geom.H, ly.geom.W, ly.geom.C = in_shape
        ly.geom.OH, ly.geom.OW, ly.geom.F = out_shape
        ly.geom.kh, ly.geom.kw = window
        ly.geom.sh, ly.geom.sw = strides
        ly.geom.pt, ly.geom.pl = pads
        ly.Y = self._arr(("Y", l), Y, (self.bs, n_out))
        ly.dX = self._arr(("dX", l), dX if need_dx else None, (self.bs, n_in))
        ly.argmax = <int32_t *>self._arr(("argmax", l), argmax if is_max else None, (self.bs, n_out), np.int32)
        if n_out > 0 and (ly.Y == NULL or (need_dx and ly.dX == NULL) or (is_max and ly.argmax == NULL)):
            raise ValueError(f"Plan.pool: layer {l}: Y, dX (when need_dx) and (max pooling) argmax are needed")

    def dropout(self, Py_ssize_t l, Py_ssize_t n, int draw, unsigned long long threshold, double scale,
                double infer_scale, Y, mask, dX):
        """Layer l: Dropout over n features.  draw: its column in a batch's draws (the seed of the batch's mask),
        -1 for a layer that draws nothing (rate 0); threshold = rate * 2^53 (<= 2^53), scale: the training scale of
        kept units, infer_scale: the inference scale; buffers Y, dX (bs, n), mask (bs, n) uint8."""
        if threshold > (<unsigned long long>1 << 53) or draw < -1:
            raise ValueError(f"Plan.dropout: layer {l}: threshold {threshold} or draw {draw} out of range")
        cdef PlanLayer *ly = self._layer(l, n, n)
        ly.kind, ly.n_in, ly.n_out, ly.draw = FNN_LAYER_DROPOUT, n, n, draw
        ly.threshold, ly.scale, ly.infer_scale = threshold, scale, infer_scale
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))
        ly.dX = self._arr(("dX", l), dX, (self.bs, n))
        ly.mask = <unsigned char *>self._arr(("mask", l), mask, (self.bs, n), np.uint8)

    def add(self, Py_ssize_t l, Py_ssize_t n, Y):
        """Layer l: Add (the sum of its sources, in order, each of n features); buffer Y (bs, n)."""
        cdef PlanLayer *ly = self._layer(l, n, n)
        ly.kind, ly.n_in, ly.n_out = FNN_LAYER_ADD, n, n
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))

    def residual(self, Py_ssize_t l, Py_ssize_t n, int draw, double survival_prob, Y):
        """Layer l: Residual, x + block(x), its sources (x, block(x)) of n features; draw: its column in a batch's
        draws (1: the block is kept for the batch, 0: dropped), -1 for survival_prob 1 (it draws nothing); at
        inference y = x + survival_prob * block(x).  Buffer Y (bs, n)."""
        if not 0 < survival_prob <= 1 or draw < -1:
            raise ValueError(f"Plan.residual: layer {l}: survival_prob {survival_prob} or draw {draw} out of range")
        cdef PlanLayer *ly = self._layer(l, n, n)
        ly.kind, ly.n_in, ly.n_out, ly.draw, ly.scale = FNN_LAYER_RESIDUAL, n, n, draw, survival_prob
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))

    def concat(self, Py_ssize_t l, Py_ssize_t n, Y, dX):
        """Layer l: Concatenate its sources' features (n in all); buffers Y (bs, n) and dX (bs * n,): each source's
        gradient, (bs, n_j) one after the other."""
        cdef PlanLayer *ly = self._layer(l, n, n)
        ly.kind, ly.n_in, ly.n_out = FNN_LAYER_CONCAT, n, n
        ly.Y = self._arr(("Y", l), Y, (self.bs, n))
        ly.dX = self._arr(("dX", l), dX, (self.bs * n,))

    def identity(self, Py_ssize_t l, Py_ssize_t n):
        """Layer l: a layer that lets its input of n features per sample through (Flatten, Reshape)."""
        cdef PlanLayer *ly = self._layer(l, n, n)
        ly.kind, ly.n_in, ly.n_out = FNN_LAYER_IDENTITY, n, n

    def link(self, Py_ssize_t l, srcs, acc=None):
        """Node l reads the outputs of the nodes `srcs` (each < l; -1: the batch), in that order; acc (bs, n_out):
        the buffer in which the gradients of node l's output are summed, needed when other nodes read it more than
        once (batch_buffers checks).  Without a link, node l reads node l - 1 (node 0: the batch)."""
        if not 0 <= l < self.n_layers:
            raise ValueError(f"Plan.link: layer {l} outside [0, {self.n_layers})")
        srcs = tuple(int(v) for v in srcs)
        if not srcs or any(not -1 <= v < l for v in srcs):
            raise ValueError(f"Plan.link: layer {l}: sources {srcs} must be earlier layers or -1 (the batch)")
        self._links[l] = (srcs, acc)

    def batch_buffers(self, Xb, labels, Tb, dout, Wb=None):
        """The batch's rows Xb (bs, n_in), labels (bs * rows,) intp (rows: the output node's, the positions of
        a per-step output, each with its label; 1 for a feature vector), targets Tb (bs, k), output gradient dout
        (bs, k) and sample weights Wb (bs * rows,) (needed for runs with weights: each sample's on each of its
        positions).  Checks the graph first (every node given, sources and widths consistent)."""
        n_in0 = self._check_graph()
        k = self.layers[self.n_layers - 1].n_out
        self.Xb = self._arr("Xb", Xb, (self.bs, n_in0))
        self.labels = <Py_ssize_t *>self._arr("labels", labels, (self.bs * self.layers[self.n_layers - 1].rows,),
                                              np.intp)
        self.Tb = self._arr("Tb", Tb, (self.bs, k))
        self.dout = self._arr("dout", dout, (self.bs, k))
        self.Wb = self._arr("Wb", Wb, (self.bs * self.layers[self.n_layers - 1].rows,))

    cdef Py_ssize_t _check_graph(self) except -1:
        """Pack the sources, count the fanouts, check widths, acc buffers and draws; returns the batch's width."""
        cdef Py_ssize_t L = self.n_layers, l, j, total = 0, n_in0 = -1
        cdef PlanLayer *ly
        if L == 0 or not all(self._set):
            raise ValueError("Plan: every layer must be given before the batch buffers")
        links = [(l - 1,) if self._links[l] is None else self._links[l][0] for l in range(L)]
        total = sum(len(t) for t in links)
        PyMem_Free(self.srcs)
        self.srcs = <Py_ssize_t *>PyMem_Calloc(max(total, 1), sizeof(Py_ssize_t))
        if self.srcs == NULL:
            raise MemoryError()
        fanout = [0] * L
        draws = []
        total = 0
        for l in range(L):
            ly = &self.layers[l]
            t = links[l]
            ly.src0, ly.n_src = total, len(t)
            for j in range(len(t)):
                self.srcs[total + j] = t[j]
                if t[j] >= 0:
                    fanout[t[j]] += 1
            total += len(t)
            widths = []
            n_in = ly.n_in
            for v in t:
                if v < 0:
                    if ly.kind == FNN_LAYER_CONCAT:
                        raise ValueError(f"Plan: layer {l}: a concatenation of the batch itself is not compiled")
                    if n_in0 >= 0 and n_in0 != ly.n_in:
                        raise ValueError(f"Plan: layer {l} takes {ly.n_in} features from the batch, another "
                                         f"layer {n_in0}")
                    n_in0 = ly.n_in
                    widths.append(ly.n_in)
                else:
                    if ly.kind == FNN_LAYER_EMBEDDING:
                        raise ValueError(f"Plan: layer {l}: an embedding reads the batch's ids only")
                    widths.append(self.layers[v].n_out)
            n_want = 2 if ly.kind == FNN_LAYER_RESIDUAL else (-2 if ly.kind in (FNN_LAYER_ADD, FNN_LAYER_CONCAT) else 1)
            if (n_want > 0 and len(t) != n_want) or (n_want < 0 and len(t) < 2):
                raise ValueError(f"Plan: layer {l} ({_kind_name(ly.kind)}) has {len(t)} sources")
            if ly.kind == FNN_LAYER_CONCAT:
                if sum(widths) != ly.n_out:
                    raise ValueError(f"Plan: layer {l} concatenates {widths} features into {ly.n_out}")
            elif any(w != n_in for w in widths):
                raise ValueError(f"Plan: layer {l} takes {n_in} features, its sources give {widths}")
            if ly.kind == FNN_LAYER_DROPOUT or ly.kind == FNN_LAYER_RESIDUAL:
                if ly.draw >= 0:
                    draws.append(ly.draw)
        if n_in0 < 0:
            raise ValueError("Plan: no layer reads the batch")
        if sorted(draws) != list(range(len(draws))):
            raise ValueError(f"Plan: the draw columns {draws} are not 0 .. {len(draws) - 1} once each")
        for l in range(L):
            ly = &self.layers[l]
            ly.fanout = fanout[l]
            acc = None if self._links[l] is None else self._links[l][1]
            ly.acc = self._arr(("acc", l), acc, (self.bs, ly.n_out)) if fanout[l] > 1 else NULL
            if fanout[l] > 1 and acc is None:
                raise ValueError(f"Plan: layer {l} is read {fanout[l]} times and needs a gradient buffer (link acc)")
        if fanout[L - 1] != 0:
            raise ValueError("Plan: the last layer is the output; no layer may read it")
        # a ReLU node whose single source is a BatchNorm that feeds nothing else runs inside that node: the forward
        # saves a pass over the rows (and the backward one), with the bits of the two passes (csrc/fnn_norm.h)
        for l in range(L):
            self.layers[l].fused = 0
        for l in range(L):
            ly = &self.layers[l]
            t = links[l]
            if (self.fuse_relu and ly.kind == FNN_LAYER_ACTIVATION and ly.act == FNN_ACT_RELU and len(t) == 1
                    and t[0] >= 0 and self.layers[t[0]].kind == FNN_LAYER_BATCHNORM and fanout[t[0]] == 1):
                ly.fused = self.layers[t[0]].fused = 1
        self.n_draws = len(draws)
        self._n_in0 = n_in0
        return n_in0

    @property
    def fused_nodes(self):
        """The BatchNorm nodes that also apply the ReLU node they alone feed (fuse_relu; set by batch_buffers)."""
        return tuple(l for l in range(self.n_layers)
                     if self.layers[l].kind == FNN_LAYER_BATCHNORM and self.layers[l].fused)

    @property
    def draws_per_batch(self):
        """The random draws a training batch takes (one per Dropout and Residual node that draws)."""
        return self.n_draws

    def loss(self, int kind):
        """The loss: LOSS.CROSS_ENTROPY (softmax cross-entropy on integer labels), LOSS.CROSS_ENTROPY_SOFT (against
        probability rows), LOSS.BINARY_CROSS_ENTROPY (sigmoid, on logits), LOSS.L2, LOSS.MSE or LOSS.MAE."""
        if kind not in (FNN_LOSS_CROSS_ENTROPY, FNN_LOSS_L2, FNN_LOSS_MSE, FNN_LOSS_MAE, FNN_LOSS_CROSS_ENTROPY_SOFT,
                        FNN_LOSS_BINARY_CROSS_ENTROPY):
            check(LOSS, kind, "Plan.loss")
            raise ValueError(f"Plan.loss: the plan computes no {LOSS(kind).label} loss")
        self.loss_kind = kind

    cdef _states(self, Py_ssize_t n_decay, s0, s1, s2):
        self.update.n_decay = max(0, min(n_decay, self.U))
        self.update.s0 = self._arr("s0", s0, (self.U,))
        self.update.s1 = self._arr("s1", s1, (self.U,))
        self.update.s2 = self._arr("s2", s2, (self.U,))

    def sgd(self, double lr, double momentum, double dampening, double weight_decay, bint nesterov, momentum_buffer,
            Py_ssize_t n_decay):
        """torch.optim.SGD: momentum_buffer (n_update,) or None (no momentum); weight decay on [0, n_decay)."""
        self.update.kind = FNN_OPT_SGD
        self.update.sgd = SGDHyper(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                   nesterov=nesterov)
        self._states(n_decay, momentum_buffer, None, None)

    def adam(self, double lr, double beta1, double beta2, double eps, double weight_decay, bint decoupled, exp_avg,
             exp_avg_sq, max_exp_avg_sq, Py_ssize_t n_decay):
        """torch.optim.Adam (decoupled: AdamW): the states (n_update,), max_exp_avg_sq None without amsgrad."""
        if exp_avg is None or exp_avg_sq is None:
            raise ValueError("Plan.adam: exp_avg and exp_avg_sq are needed")
        self.update.kind = FNN_OPT_ADAM
        self.update.adam = AdamHyper(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                     decoupled=decoupled)
        self._states(n_decay, exp_avg, exp_avg_sq, max_exp_avg_sq)

    def rmsprop(self, double lr, double alpha, double eps, double weight_decay, double momentum, bint centered,
                square_avg, grad_avg, momentum_buffer, Py_ssize_t n_decay):
        """torch.optim.RMSprop: the states (n_update,), grad_avg None unless centered, momentum_buffer None unless
        momentum > 0."""
        if square_avg is None or (grad_avg is None) == bool(centered):
            raise ValueError("Plan.rmsprop: square_avg is needed, and grad_avg exactly when centered")
        self.update.kind = FNN_OPT_RMSPROP
        self.update.rmsprop = RMSpropHyper(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                           centered=centered)
        self._states(n_decay, square_avg, grad_avg, momentum_buffer)

    def adagrad(self, double lr, double lr_decay, double weight_decay, double eps, state_sum, Py_ssize_t n_decay):
        """torch.optim.Adagrad: state_sum (n_update,); the rate at step t is lr / (1 + (t - 1) * lr_decay)."""
        if state_sum is None:
            raise ValueError("Plan.adagrad: state_sum is needed")
        self.update.kind = FNN_OPT_ADAGRAD
        self.update.adagrad = AdagradHyper(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)
        self._states(n_decay, state_sum, None, None)

    def guard(self, bint on, backup=None, backup_s0=None, backup_s1=None, backup_s2=None):
        """The NaN guard on (backup: the parameters' backup buffer (n_update,), and one per present state) or off."""
        if on and backup is None:
            raise ValueError("Plan.guard: the guard needs the parameters' backup buffer")
        for l in range(self.n_layers):
            if (on and self.layers[l].kind == FNN_LAYER_BATCHNORM and self.layers[l].batch_stats
                    and self.layers[l].n_out > 0 and self.layers[l].rbak == NULL):
                raise ValueError(f"Plan.guard: BatchNorm layer {l} needs a backup of its running statistics")
        self.guard_on = on
        if not on:
            backup = backup_s0 = backup_s1 = backup_s2 = None
        self.backup = self._arr("backup", backup, (self.U,))
        present = (self.update.s0 != NULL, self.update.s1 != NULL, self.update.s2 != NULL)
        for key, b, has in zip(("bs0", "bs1", "bs2"), (backup_s0, backup_s1, backup_s2), present):
            if self.guard_on and (b is None) == has:
                raise ValueError(f"Plan.guard: {key} must be given exactly for a present optimizer state")
        self.bs0 = self._arr("bs0", backup_s0, (self.U,))
        self.bs1 = self._arr("bs1", backup_s1, (self.U,))
        self.bs2 = self._arr("bs2", backup_s2, (self.U,))

    def clip(self, double clip_value=-1.0, double max_norm=-1.0):
        """Gradient clipping: each element to +-clip_value (when > 0), then the norm to max_norm (when >= 0)."""
        self.clip_value, self.max_norm = clip_value, max_norm

    def constraints(self, items=()):
        """The max-norm weight constraints (fastnn.constraints.MaxNorm), applied in this order after every update
        (never after one that was undone): `items` a sequence of (w_off, rows, cols, max_value, norms), the
        weight (rows, cols) at w_off in the parameters (anywhere in them: the per-layer path constrains a frozen
        layer's weight too), its columns' L2 norms kept at most max_value > 0, norms a (cols,) scratch array."""
        items = list(items)
        checked = []
        for w_off, rows, cols, max_value, norms in items:
            if rows < 0 or cols < 0 or w_off < 0 or w_off + rows * cols > self.P:
                raise ValueError(f"Plan.constraints: a ({rows}, {cols}) weight at offset {w_off} lies outside the "
                                 f"{self.P} parameters")
            if not max_value > 0:
                raise ValueError(f"Plan.constraints: max_value must be > 0, got {max_value}")
            if (not isinstance(norms, np.ndarray) or norms.dtype != self.dtype or not norms.flags.c_contiguous
                    or norms.shape != (cols,)):
                raise ValueError(f"Plan.constraints: norms must be a C-contiguous {self.dtype} array of shape "
                                 f"({cols},), got {getattr(norms, 'dtype', type(norms).__name__)} "
                                 f"{getattr(norms, 'shape', '')}")
            checked.append((w_off, rows, cols, float(max_value), norms))
        cdef MaxNormC *cons = <MaxNormC *>PyMem_Calloc(max(len(checked), 1), sizeof(MaxNormC))
        if cons == NULL:
            raise MemoryError()
        for i, (w_off, rows, cols, max_value, norms) in enumerate(checked):     # checked: nothing raises here
            cons[i].w_off, cons[i].rows, cons[i].cols, cons[i].max_value = w_off, rows, cols, max_value
            cons[i].norms = self._arr(("norms", i), norms, (cols,))
        for i in range(len(checked), self.n_cons):
            self._keep.pop(("norms", i), None)
        PyMem_Free(self.cons)
        self.cons, self.n_cons = cons, len(checked)

    def allreduce(self, intptr_t fn=0, intptr_t comm=0, intptr_t dtype=0, intptr_t double_dtype=0,
                  intptr_t sum_op=0, intptr_t in_place=0, Py_ssize_t rank=0, Py_ssize_t size=1,
                  intptr_t iallreduce=0, intptr_t waitall=0):
        """Data-parallel training (fastnn/distributed.py): `fn` the address of MPI_Allreduce in the MPI library
        mpi4py loaded (MPICH ABI), the handles of the communicator, of the parameters' MPI datatype, of
        MPI_DOUBLE and MPI_SUM, the MPI_IN_PLACE address, this rank and the communicator's size.  A run then
        trains this rank's rows [rank * m // size, (rank + 1) * m // size) of global batches of bs * size rows (m
        rows, the last one short), scales the loss gradient by 1 / m, allreduces (sum, in place) the loss and the
        correct count (2 doubles) before the backward pass and the gradient's trainable prefix after it, so the
        update and the statistics are the global batch's on every rank.  fn = 0 (the default): one process.
        With `iallreduce` and `waitall` (MPI_Iallreduce, MPI_Waitall of the same library) the loss's allreduce is
        started before the backward pass and waited for after the gradient's, so that a step waits for the other
        ranks once instead of twice; a non-finite global loss then stops the run after the backward pass
        (NONFINITE_LOSS, nothing updated, the gradient buffer holding that batch's gradient)."""
        if fn != 0 and (size < 1 or not 0 <= rank < size):
            raise ValueError(f"Plan.allreduce: rank {rank} outside [0, {size})")
        if fn != 0 and self.U > 2147483647:
            raise ValueError(f"Plan.allreduce: {self.U} parameters exceed MPI's int count")
        self.ar_fn = fn if size > 1 else 0
        self.ar_comm, self.ar_dtype, self.ar_double, self.ar_sum, self.ar_in_place = (comm, dtype, double_dtype,
                                                                                      sum_op, in_place)
        self.ar_rank = rank if self.ar_fn != 0 else 0
        self.ar_size = size if self.ar_fn != 0 else 1
        self.ar_iall = iallreduce if (iallreduce != 0 and waitall != 0) else 0
        self.ar_waitall = waitall if self.ar_iall != 0 else 0
        self.ov_on = 0
        self.sh_on = 0
        self.bd_known = 0

    def shard(self, intptr_t reduce_scatter=0, intptr_t allgatherv=0, intptr_t allgather=0):
        """The sharded update (after ``allreduce``, with more than one rank; ``allreduce`` and ``overlap`` turn it
        off): `reduce_scatter`, `allgatherv`, `allgather` the addresses of MPI_Reduce_scatter, MPI_Allgatherv and
        MPI_Allgather in the library of ``allreduce``'s MPI_Allreduce (0: off, one allreduce and the whole update on
        every rank).  The trainable prefix [0, U) is split into one contiguous shard per rank, in rank order, as
        evenly as 16-element blocks allow.  Each step then reduce-scatters the gradient (this rank gets the global
        sum of its shard), combines the shards' partial results of the guard and of clipping (max |g|, the first
        non-finite element, the sum of squares, BatchNorm's bad running statistics, the bounds of |p| and of the
        state) in one small MPI_Allgather, each rank combining them in rank order (the same bits on every rank),
        updates its shard's parameters and optimizer state only, and allgathers the parameters in place before the
        weight constraints.  Before run_batches returns, the optimizer states are allgathered too, so parameters
        and state are bitwise identical on every rank.  Not with ``overlap`` (whose buckets are allreduced)."""
        cdef Py_ssize_t R = self.ar_size, r, nblk, a, b
        _free_shard(self)
        self.sh_on = 0
        self.bd_known = 0
        if reduce_scatter == 0:
            return
        if self.ar_fn == 0 or R < 2 or allgatherv == 0 or allgather == 0:
            raise ValueError("Plan.shard: needs allreduce (with more than one rank), MPI_Allgatherv and "
                             "MPI_Allgather")
        if self.ov_on:
            raise ValueError("Plan.shard: not with overlap")
        self.sh_counts = <int *>PyMem_Calloc(R, sizeof(int))
        self.sh_displs = <int *>PyMem_Calloc(R, sizeof(int))
        self.sh_small = <double *>PyMem_Calloc(R * _SH_K, sizeof(double))
        if self.sh_counts == NULL or self.sh_displs == NULL or self.sh_small == NULL:
            _free_shard(self)
            raise MemoryError()
        nblk = (self.U + 15) // 16
        for r in range(R):
            a = min(self.U, 16 * (r * nblk // R))
            b = min(self.U, 16 * ((r + 1) * nblk // R))
            self.sh_displs[r], self.sh_counts[r] = <int>a, <int>(b - a)
        self.sh_lo, self.sh_cnt = self.sh_displs[self.ar_rank], self.sh_counts[self.ar_rank]
        # not in place: MPICH's in-place reduce-scatter copies a shard onto the buffer's start, overlapping it
        self.sh_grad = self._arr("sh_grad", np.zeros(max(self.sh_cnt, 1), self.dtype), (max(self.sh_cnt, 1),))
        self.sh_rs, self.sh_agv, self.sh_ag = reduce_scatter, allgatherv, allgather
        self.sh_on = 1

    @property
    def shards(self):
        """The sharded update's shards [(lo, hi)] in rank order ([] when off)."""
        if not self.sh_on:
            return []
        return [(self.sh_displs[r], self.sh_displs[r] + self.sh_counts[r]) for r in range(self.ar_size)]

    def overlap(self, intptr_t iallreduce=0, intptr_t waitall=0, intptr_t testall=0, Py_ssize_t min_bucket=0):
        """Overlap the gradient allreduce with the backward pass (after ``allreduce``, which it needs, and
        ``batch_buffers``; ``allreduce`` turns it off again): `iallreduce`, `waitall`, `testall` the addresses of
        MPI_Iallreduce, MPI_Waitall and MPI_Testall in the library of ``allreduce``'s MPI_Allreduce (testall 0:
        no MPI_Testall calls).  After node l's backward pass, the part of the trainable prefix of the flat gradient
        that is final (every element but the parameters of the nodes before l) and not yet started is started,
        one MPI_Iallreduce (sum, in place) per contiguous interval, once it holds at least `min_bucket` elements
        (after node 0: whatever is left); the run waits for all before the guard and the update.  Each element is
        summed once over the ranks, as by the one blocking call (for two ranks a + b: the same bits on both ranks,
        and the same as the blocking call's; for more, MPICH's algorithms (recursive doubling, whose partners add
        the same two values, reduce-scatter + allgather, ring) give every rank the same bits, though a bucket's
        algorithm and so its rounding may differ from the one call's).  iallreduce 0: off."""
        cdef Py_ssize_t L = self.n_layers, U = self.U, l, k, n_iv = 0
        cdef PlanLayer *ly
        cdef Overlap ov
        if iallreduce == 0:
            self.ov_on = 0
            return
        if self.ar_fn == 0 or waitall == 0 or self.srcs == NULL:
            raise ValueError("Plan.overlap: needs allreduce (with more than one rank), MPI_Waitall and the batch "
                             "buffers first")
        owned = []          # (lo, hi, node): each node's parameters inside the trainable prefix
        for l in range(L):
            ly = &self.layers[l]
            spans = []
            if ly.w_len > 0:
                spans.append((ly.w_off, ly.w_off + ly.w_len))
            if ly.b_off >= 0:
                spans.append((ly.b_off, ly.b_off + ly.cols))
            owned += [(a, min(b, U), l) for a, b in spans if a < min(b, U)]
        started = []
        buckets = [[] for _ in range(L)]
        for l in range(L - 1, -1, -1):
            ready = _minus([(0, U)], sorted([(a, b) for a, b, node in owned if node < l] + started))
            total = sum(b - a for a, b in ready)
            if total > 0 and (total >= min_bucket or l == 0):
                buckets[l] = ready
                started = sorted(started + ready)
        n_iv = sum(len(b) for b in buckets)
        memset(&ov, 0, sizeof(Overlap))
        ov.first = <Py_ssize_t *>PyMem_Calloc(max(L, 1), sizeof(Py_ssize_t))
        ov.count = <Py_ssize_t *>PyMem_Calloc(max(L, 1), sizeof(Py_ssize_t))
        ov.lo = <Py_ssize_t *>PyMem_Calloc(max(n_iv, 1), sizeof(Py_ssize_t))
        ov.hi = <Py_ssize_t *>PyMem_Calloc(max(n_iv, 1), sizeof(Py_ssize_t))
        ov.reqs = <int *>PyMem_Calloc(max(n_iv, 1), sizeof(int))
        if ov.first == NULL or ov.count == NULL or ov.lo == NULL or ov.hi == NULL or ov.reqs == NULL:
            _free_buckets(&ov)
            raise MemoryError()
        k = 0
        for l in range(L - 1, -1, -1):
            ov.first[l], ov.count[l] = k, len(buckets[l])
            for a, b in buckets[l]:
                ov.lo[k], ov.hi[k] = a, b
                k += 1
        ov.start = <iallreduce_fn>iallreduce
        ov.wait = <waitall_fn>waitall
        ov.test = <testall_fn>testall if testall != 0 else NULL
        ov.comm, ov.dtype, ov.op, ov.in_place = self.ar_comm, self.ar_dtype, self.ar_sum, self.ar_in_place
        _free_buckets(&self.ov)
        self.ov = ov
        self.ov_on = 1
        _free_shard(self)
        self.sh_on = 0

    @property
    def buckets(self):
        """The overlap's buckets in the order they are started: [(node, [(lo, hi), ...])] ([] without overlap)."""
        if not self.ov_on:
            return []
        out = []
        for l in range(self.n_layers - 1, -1, -1):
            ks = range(self.ov.first[l], self.ov.first[l] + self.ov.count[l])
            if self.ov.count[l] > 0:
                out.append((l, [(self.ov.lo[k], self.ov.hi[k]) for k in ks]))
        return out

    @property
    def stats(self):
        """The last run's statistics: {loss_sum, batch_loss_sum, n_correct, n_samples, grad_norm, n_backups,
        allreduce_seconds, mpi_error, weight_sum} (data-parallel: the global batches')."""
        return dict(self.st)


cdef void _free_buckets(Overlap *ov) noexcept:
    PyMem_Free(ov.first)
    PyMem_Free(ov.count)
    PyMem_Free(ov.lo)
    PyMem_Free(ov.hi)
    PyMem_Free(ov.reqs)
    ov.first = ov.count = ov.lo = ov.hi = NULL
    ov.reqs = NULL


cdef void _free_shard(Plan plan) noexcept:
    PyMem_Free(plan.sh_counts)
    PyMem_Free(plan.sh_displs)
    PyMem_Free(plan.sh_small)
    plan.sh_counts = plan.sh_displs = NULL
    plan.sh_small = NULL


def _minus(ivs, cuts):
    """The intervals `ivs` (sorted, disjoint [lo, hi)) less the sorted intervals `cuts` (they may overlap)."""
    out = []
    for a, b in ivs:
        for c, d in cuts:
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
            if a >= b:
                break
        if a < b:
            out.append((a, b))
    return out


def _kind_name(int kind):
    return PLAN_LAYER(kind).label if 0 <= kind < FNN_N_LAYER else str(kind)


cdef inline floating *_off(floating *x, Py_ssize_t lo) noexcept nogil:
    """x + lo, NULL for an absent buffer."""
    return NULL if x == NULL else x + lo


cdef double _sq_sum(const floating *g, Py_ssize_t n, double clip_value) noexcept nogil:
    """The sum of squares of g[0:n] clamped to +-clip_value (when > 0), as clip_core's first pass (unwritten)."""
    cdef Py_ssize_t i
    cdef double s = 0
    cdef floating x, v = <floating>clip_value
    for i in range(n):
        x = g[i]
        if clip_value > 0:
            x = v if x > v else (-v if x < -v else x)
        s += <double>x * x
    return s


cdef void _clip_scale(floating *g, Py_ssize_t n, double clip_value, double coef) noexcept nogil:
    """g[0:n] clamped to +-clip_value (when > 0), then times coef (when not 1), as clip_core."""
    cdef Py_ssize_t i
    cdef floating x, v = <floating>clip_value, c = <floating>coef
    if clip_value <= 0 and coef == 1.0:
        return
    for i in range(n):
        x = g[i]
        if clip_value > 0:
            x = v if x > v else (-v if x < -v else x)
        if coef != 1.0:
            x = x * c
        g[i] = x


cdef int _sh_bounds(allgather_fn agf, double *sv, double *mine, Py_ssize_t R, Bounds *bd, bint *ok,
                    const void *in_place, intptr_t dbl_type, intptr_t comm) noexcept nogil:
    """Combine the shards' bounds (max) and their refresh results (all must be ok) over the ranks."""
    cdef Py_ssize_t q
    cdef int err
    mine[0], mine[1], mine[2], mine[3], mine[4] = bd.P, bd.S0, bd.S1, bd.S2, <double>ok[0]
    err = agf(in_place, _SH_K, dbl_type, sv, _SH_K, dbl_type, comm)
    if err != 0:
        return err
    bd.P = bd.S0 = bd.S1 = bd.S2 = 0.0
    ok[0] = 1
    for q in range(R):
        bd.P, bd.S0 = max(bd.P, sv[q * _SH_K]), max(bd.S0, sv[q * _SH_K + 1])
        bd.S1, bd.S2 = max(bd.S1, sv[q * _SH_K + 2]), max(bd.S2, sv[q * _SH_K + 3])
        ok[0] = ok[0] and sv[q * _SH_K + 4] != 0
    return 0


cdef int _check_dtype(Plan plan, bint dbl, object X, str owner) except -1:
    """ValueError naming `owner` unless X's dtype (dbl: float64) is the plan's."""
    if dbl != plan.dbl:
        raise ValueError(f"{owner}: X is {np.asarray(X).dtype}, the plan is {plan.dtype}")
    return 0


def run_batches(Plan plan, const floating[:, ::1] X, object targets, const Py_ssize_t[::1] perm, Py_ssize_t b0,
                Py_ssize_t b1, Py_ssize_t step, int n_threads, const uint64_t[:, ::1] draws=None,
                const floating[::1] weights=None, const double[::1] lrs=None, floating[:, ::1] outputs=None):
    """Run batches b0 .. b1-1 of an epoch over X (n, n_in) (rows perm[b*bs : (b+1)*bs], or in order when perm
    is None).  targets: int labels (n,) for cross-entropy, floating (n, k) for the regression losses.  step: the
    optimizer's step count before the first batch.  draws (b1 - b0, plan.draws_per_batch) uint64: each batch's
    random draws, in node order (a Dropout node's mask seed; a Residual node's 1 to keep its block, 0 to drop
    it); None when the plan draws nothing.  weights (n,): per-sample weights of the loss (each batch's loss is
    its weighted mean, normalized by the batch's weight sum, as fastnn.losses does), or None.  The statistics of
    the run: ``plan.stats``.  lrs (>= b1 - b0,): a per-step schedule's learning rate for each batch's update (set
    just before it, as Trainer._schedule_step does), or None: the optimizer's.  outputs ((b1 - b0) * bs, k): where
    batch b's output rows (the logits of a fused output) are copied, at row (b - b0) * bs, or None.

    The NaN guard (plan.guard given a backup): each step's gradient is scanned once for NaN/inf (status
    NONFINITE_GRADIENT, nothing updated) and for G = max |g|; the update then runs without any copy when
    bound.pyx proves from G and bounds of |p| and of the state (one scan when the call starts, then carried from
    step to step) that it stays finite, and otherwise the old way: block by block, backup copy, update, check, and
    a restore of everything on failure."""
    # P: the updated prefix (the trainable parameters); the layers' offsets address the whole buffer
    cdef Py_ssize_t n = X.shape[0], n_in0 = X.shape[1], L = plan.n_layers, P = plan.U, bs = plan.bs
    _check_dtype(plan, floating is double, X, "run_batches")
    if plan.Xb == NULL or plan._n_in0 != n_in0:
        raise ValueError("run_batches: X does not match the plan (or its batch buffers are missing)")
    if plan.loss_kind < 0 or plan.update.kind < 0:
        raise ValueError("run_batches: the plan has no loss or no optimizer")
    cdef Py_ssize_t nd = plan.n_draws
    if nd > 0 and b1 > b0 and (draws is None or draws.shape[0] < b1 - b0 or draws.shape[1] != nd):
        raise ValueError(f"run_batches: the plan takes {nd} draws per batch for {b1 - b0} batches, got "
                         f"{None if draws is None else (draws.shape[0], draws.shape[1])}")
    cdef const uint64_t *drp = &draws[0, 0] if nd > 0 and b1 > b0 else NULL
    cdef const floating *Wp = NULL
    cdef const double *lrp = NULL
    cdef floating *outp_rows = NULL
    if outputs is not None and b1 > b0:
        if outputs.shape[0] < (b1 - b0) * bs or outputs.shape[1] != plan.layers[L - 1].n_out or plan.ar_size > 1:
            raise ValueError(f"run_batches: outputs must have {(b1 - b0) * bs} rows of {plan.layers[L - 1].n_out} "
                             "(one process)")
        outp_rows = &outputs[0, 0]
    if lrs is not None and b1 > b0:
        if lrs.shape[0] < b1 - b0:
            raise ValueError(f"run_batches: {lrs.shape[0]} learning rates for {b1 - b0} batches")
        lrp = &lrs[0]
    cdef floating *wbp = <floating *>plan.Wb
    cdef double ws = 0.0, wsum, wrows = 0.0
    cdef const floating *wbc
    if weights is not None:
        if weights.shape[0] != n or plan.Wb == NULL:
            raise ValueError(f"run_batches: {weights.shape[0]} weights for {n} rows, or no weight buffer in the plan")
        if plan.ar_fn != 0 and plan.ar_size > 1:
            raise ValueError("run_batches: sample weights are not supported in data-parallel runs")
        Wp = &weights[0] if n > 0 else NULL
    cdef allreduce_fn ar = <allreduce_fn>plan.ar_fn if plan.ar_size > 1 else NULL
    cdef Py_ssize_t R = plan.ar_size if ar != NULL else 1, rank = plan.ar_rank if ar != NULL else 0, gs, gm
    cdef const void *in_place = <const void *>plan.ar_in_place
    cdef double *small = plan.ar_small
    cdef int ar_err = 0
    cdef double t_ar
    cdef Overlap *ov = &plan.ov if (ar != NULL and plan.ov_on) else NULL
    cdef iallreduce_fn iall = <iallreduce_fn>plan.ar_iall if ar != NULL else NULL
    cdef waitall_fn waitall = <waitall_fn>plan.ar_waitall
    cdef int small_req = 0, grad_err
    # the sharded update (Plan.shard): this rank's shard [lo, lo + cnt) of the prefix, its global gradient in gsh
    cdef bint sh = ar != NULL and ov == NULL and plan.sh_on
    cdef reduce_scatter_fn rsf = <reduce_scatter_fn>plan.sh_rs
    cdef allgatherv_fn agv = <allgatherv_fn>plan.sh_agv
    cdef allgather_fn agf = <allgather_fn>plan.sh_ag
    cdef Py_ssize_t lo = plan.sh_lo if sh else 0, cnt = plan.sh_cnt if sh else P, q, badp
    cdef double *sv = plan.sh_small
    cdef floating *gsh = <floating *>plan.sh_grad
    cdef double *mine = plan.sh_small + rank * _SH_K if sh else NULL
    cdef double sumsq, coef, badv
    cdef int sclass
    cdef Update us
    if perm is not None and perm.shape[0] < min(b1 * bs * R, n):
        raise ValueError("run_batches: the permutation is shorter than the batches")
    cdef Py_ssize_t k = plan.layers[L - 1].n_out
    # a per-step output (SR > 1 rows per sample, of kc classes) with cross-entropy on labels: the softmax
    # cross-entropy over its n * SR positions, each with its label (targets: (n * SR,) labels), their mean as the
    # per-layer path's loss on the (m * SR, kc) view.  The other losses but the soft cross-entropy take each sample's
    # whole output as one row of k values, as the per-layer losses do on their (m, k) view
    cdef Py_ssize_t SR = plan.layers[L - 1].rows if plan.loss_kind == FNN_LOSS_CROSS_ENTROPY else 1, j
    cdef Py_ssize_t kc = k // SR
    if plan.layers[L - 1].rows > 1 and (plan.loss_kind == FNN_LOSS_CROSS_ENTROPY_SOFT or (
            SR > 1 and plan.ar_size > 1)):
        raise ValueError("run_batches: a per-step output takes cross-entropy on labels (not in data-parallel runs) "
                         "or a loss over each sample's whole output")
    cdef const Py_ssize_t[::1] lab
    cdef const floating[:, ::1] T
    cdef const Py_ssize_t *labp = NULL
    cdef const floating *Tp = NULL
    cdef int lk = plan.loss_kind
    if lk == FNN_LOSS_CROSS_ENTROPY:
        lab = targets
        if lab.shape[0] != n * SR:
            raise ValueError("run_batches: labels do not match X")
        labp = &lab[0] if n > 0 else NULL
    else:
        T = targets
        if T.shape[0] != n or T.shape[1] != k:
            raise ValueError("run_batches: targets do not match X and the output")
        Tp = &T[0, 0] if n > 0 else NULL
    cdef const Update *u = &plan.update
    cdef RunStats *st = &plan.st
    cdef const Py_ssize_t *pp = &perm[0] if perm is not None and perm.shape[0] > 0 else NULL
    cdef floating *prm = <floating *>plan.params
    cdef floating *grd = <floating *>plan.grads
    cdef floating *xb = <floating *>plan.Xb
    cdef floating *dy0 = <floating *>plan.dout
    cdef Py_ssize_t *labbp = plan.labels
    cdef floating *Tbp = <floating *>plan.Tb
    cdef floating *S0 = <floating *>u.s0
    cdef floating *S1 = <floating *>u.s1
    cdef floating *S2 = <floating *>u.s2
    cdef bint guard = plan.guard_on
    cdef floating *B = <floating *>plan.backup if guard else NULL
    cdef floating *B0 = <floating *>plan.bs0
    cdef floating *B1 = <floating *>plan.bs1
    cdef floating *B2 = <floating *>plan.bs2
    cdef double clip_value = plan.clip_value, max_norm = plan.max_norm
    cdef Py_ssize_t b = b0, start, m, i, r, bad = -1, n_correct
    cdef int status = FNN_STATUS_DONE, nt, up
    cdef double loss = 0.0, value = 0.0, inv
    cdef const floating *out
    cdef size_t row_x = n_in0 * sizeof(floating)
    cdef Bounds bd, nb
    cdef bint dbl = floating is double, trusted = 0, fresh = 0, fallback = 0, backup_step = 0
    cdef double G = 0.0, gmin
    cdef Py_ssize_t n_backups = 0
    cdef bint ok
    cdef floating *xp
    bd.P = bd.S0 = bd.S1 = bd.S2 = 0.0
    ar_err = 0
    with nogil:
        if guard:
            if plan.bd_known:       # the previous chunk of this epoch left them: no scan
                bd, trusted, fresh = plan.bd, plan.bd_trusted, 0
            elif sh:                # the shard's bounds, combined over the ranks
                trusted = _refresh(&bd, u.kind, prm + lo, _off(S0, lo), _off(S1, lo), _off(S2, lo), cnt, n_threads)
                ar_err = _sh_bounds(agf, sv, mine, R, &bd, &trusted, in_place, plan.ar_double, plan.ar_comm)
                if ar_err != 0:
                    st.mpi_error = ar_err
                    status = FNN_STATUS_BAD_KIND
                    b1 = b0
                fresh = trusted
            else:
                trusted = fresh = _refresh(&bd, u.kind, prm, S0, S1, S2, P, n_threads)
        for b in range(b0, b1):
            # this rank's rows of global batch b (one process: R = 1, the whole batch)
            gs = b * bs * R
            gm = min(gs + bs * R, n) - gs
            start = gs + rank * gm // R
            m = gs + (rank + 1) * gm // R - start
            # ---- gather the batch
            nt = threads_for(m * n_in0, n_threads, FNN_MIN_GATHER_PER_THREAD)
            if nt > 1:
                for i in prange(m, num_threads=nt, schedule="static"):
                    memcpy(xb + i * n_in0, &X[pp[start + i] if pp != NULL else start + i, 0], row_x)
            for i in range(m):
                r = pp[start + i] if pp != NULL else start + i
                if nt <= 1:
                    memcpy(xb + i * n_in0, &X[r, 0], row_x)
                if lk == FNN_LOSS_CROSS_ENTROPY:
                    for j in range(SR):
                        labbp[i * SR + j] = labp[r * SR + j]
                else:
                    memcpy(Tbp + i * k, Tp + r * k, k * sizeof(floating))
                if Wp != NULL:      # each sample's weight on each of its SR positions (losses.py _row_weights)
                    for j in range(SR):
                        wbp[i * SR + j] = Wp[r]
            if Wp != NULL:          # the batch's weight sum, in row order (losses.pyx _inv_weight_sum)
                ws = 0.0
                for i in range(m):
                    ws += wbp[i * SR]
                wrows = ws
                if SR > 1:          # a per-step loss's: over its m * SR rows
                    wrows = 0.0
                    for i in range(m * SR):
                        wrows += wbp[i]
            # ---- forward
            if guard:
                _save_running(plan.layers, L, prm)
            out = _forward_graph(xb, m, plan.layers, L, plan.srcs, plan.outp, plan.kept, prm, 1,
                                 drp + (b - b0) * nd if drp != NULL else NULL, n_threads)
            if out == NULL:
                status = FNN_STATUS_BAD_KIND
                break
            # ---- loss and its gradient
            n_correct = 0
            # the loss is the batch's mean over its weight (rows, or their sample weights) and, but for the
            # cross-entropies, its k outputs; "l2" sums (fastnn/_core/losses.pyx _inv_weight_sum)
            wsum = ws if Wp != NULL else <double>gm
            if lk == FNN_LOSS_L2:
                inv = 1.0
            elif SR > 1 and Wp != NULL:
                inv = 1.0 / (1.0 * wrows) if wrows > 0 else 0.0
            elif lk == FNN_LOSS_CROSS_ENTROPY or lk == FNN_LOSS_CROSS_ENTROPY_SOFT:
                inv = 1.0 / (1.0 * (wsum * SR)) if wsum > 0 else 0.0
            else:
                inv = 1.0 / (<double>k * wsum) if wsum > 0 else 0.0
            wbc = <const floating *>wbp if Wp != NULL else NULL
            if lk == FNN_LOSS_CROSS_ENTROPY:
                loss = ce_labels_core(out, labbp, dy0, wbc, m * SR, kc, inv, &n_correct, &bad)
            elif lk == FNN_LOSS_CROSS_ENTROPY_SOFT:
                loss = ce_soft_core(out, Tbp, dy0, wbc, m, k, inv, &n_correct)
            elif lk == FNN_LOSS_BINARY_CROSS_ENTROPY:
                loss = bce_core(out, Tbp, dy0, wbc, m, k, inv, &n_correct)
            else:
                loss = regression_core(lk, out, Tbp, dy0, wbc, m, k, inv)
            if ar != NULL:      # the global batch's loss (this rank's part of the mean) and correct count
                small[0] = loss
                small[1] = n_correct
                if iall != NULL:    # started now, waited for after the gradient's allreduce (one wait per step)
                    ar_err = iall(in_place, small, 2, plan.ar_double, plan.ar_sum, plan.ar_comm, &small_req)
                else:
                    ar_err = ar(in_place, small, 2, plan.ar_double, plan.ar_sum, plan.ar_comm)
                    loss = small[0]
                    n_correct = <Py_ssize_t>small[1]
                if ar_err != 0:
                    st.mpi_error = ar_err
                    status = FNN_STATUS_BAD_KIND
                    break
            if guard and iall == NULL and not (loss - loss == 0):
                status = FNN_STATUS_NONFINITE_LOSS
                break
            # ---- backward (reverse order)
            if ov != NULL:
                ov.n_req = ov.err = 0
                ov.seconds = 0.0
            status = _backward_graph(xb, m, plan.layers, L, plan.srcs, plan.outp, plan.gp, plan.kept, prm, grd,
                                     dy0, n_threads, ov)
            grad_err = 0
            if ov != NULL:      # wait for every bucket (also after a failure: MPI may still write into them)
                t_ar = _now()
                ar_err = ov.wait(ov.n_req, ov.reqs, 1) if ov.n_req > 0 else 0
                st.allreduce_seconds += _now() - t_ar + ov.seconds
                grad_err = ov.err if ov.err != 0 else ar_err
            elif sh and status == FNN_STATUS_DONE:      # the global sum of this rank's shard, into gsh
                t_ar = _now()
                grad_err = rsf(grd, gsh, plan.sh_counts, plan.ar_dtype, plan.ar_sum, plan.ar_comm)
                st.allreduce_seconds += _now() - t_ar
            elif ar != NULL and status == FNN_STATUS_DONE:      # the global batch's gradient on every rank
                t_ar = _now()
                grad_err = ar(in_place, grd, <int>P, plan.ar_dtype, plan.ar_sum, plan.ar_comm)
                st.allreduce_seconds += _now() - t_ar
            if iall != NULL:    # the loss's allreduce, started before the backward pass (done by now, mostly)
                ar_err = waitall(1, &small_req, 1)
                grad_err = grad_err if grad_err != 0 else ar_err
                loss = small[0]
                n_correct = <Py_ssize_t>small[1]
            if grad_err != 0:
                st.mpi_error = grad_err
                status = FNN_STATUS_BAD_KIND
                break
            if status != FNN_STATUS_DONE:
                break
            if guard and iall != NULL and not (loss - loss == 0):
                status = FNN_STATUS_NONFINITE_LOSS
                break
            # ---- guard, clipping, update
            if sh and (guard or clip_value > 0 or max_norm >= 0):
                # the shards' partial results, combined in rank order by every rank (the same bits everywhere):
                # [0] max |g|, [1] the first non-finite gradient element (global index, -1: none), [2] the first
                # BatchNorm node with bad running statistics (-1), [3:7] the bounds of |p| and the states (max),
                # [7] the sum of squares of the (value-clipped) gradient
                mine[0] = 0.0
                mine[1] = mine[2] = -1.0
                mine[3], mine[4], mine[5], mine[6] = bd.P, bd.S0, bd.S1, bd.S2
                mine[7] = 0.0
                if guard:
                    mine[2] = <double>_bad_running(plan.layers, L, prm)
                    if scan_max(gsh, cnt, n_threads, &G, &gmin):
                        mine[1] = <double>(lo + _first_nonfinite(gsh, cnt))
                    mine[0] = G
                if clip_value > 0 or max_norm >= 0:
                    mine[7] = _sq_sum(gsh, cnt, clip_value)
                t_ar = _now()
                ar_err = agf(in_place, _SH_K, plan.ar_double, sv, _SH_K, plan.ar_double, plan.ar_comm)
                st.allreduce_seconds += _now() - t_ar
                if ar_err != 0:
                    st.mpi_error = ar_err
                    status = FNN_STATUS_BAD_KIND
                    break
                G, bad, sumsq = 0.0, -1, 0.0
                bd.P = bd.S0 = bd.S1 = bd.S2 = 0.0
                r = -1
                for q in range(R):
                    G = max(G, sv[q * _SH_K])
                    if bad < 0 and sv[q * _SH_K + 1] >= 0:
                        bad = <Py_ssize_t>sv[q * _SH_K + 1]
                    if sv[q * _SH_K + 2] >= 0 and (r < 0 or sv[q * _SH_K + 2] < r):
                        r = <Py_ssize_t>sv[q * _SH_K + 2]
                    bd.P, bd.S0 = max(bd.P, sv[q * _SH_K + 3]), max(bd.S0, sv[q * _SH_K + 4])
                    bd.S1, bd.S2 = max(bd.S1, sv[q * _SH_K + 5]), max(bd.S2, sv[q * _SH_K + 6])
                    sumsq = sumsq + sv[q * _SH_K + 7]
                if r >= 0:
                    bad = r
                    status = FNN_STATUS_NONFINITE_BUFFER
                    break
                if bad >= 0:    # every rank gets the whole global gradient (the caller names the bad value)
                    memcpy(grd + lo, gsh, cnt * sizeof(floating))
                    ar_err = agv(in_place, 0, plan.ar_dtype, grd, plan.sh_counts, plan.sh_displs, plan.ar_dtype,
                                 plan.ar_comm)
                    if ar_err != 0:
                        st.mpi_error = ar_err
                    status = FNN_STATUS_NONFINITE_GRADIENT if ar_err == 0 else FNN_STATUS_BAD_KIND
                    break
                if clip_value > 0 or max_norm >= 0:     # as clip_core, with the global norm
                    st.grad_norm = sqrt(sumsq)
                    coef = max_norm / (st.grad_norm + 1e-6) if max_norm >= 0 else 1.0
                    _clip_scale(gsh, cnt, clip_value, coef if (coef < 1.0 or coef != coef) else 1.0)
            elif guard:
                bad = _bad_running(plan.layers, L, prm)
                if bad >= 0:
                    status = FNN_STATUS_NONFINITE_BUFFER
                    break
                # before clipping: a NaN norm would spread everywhere; G = max |g| also bounds the clipped gradient
                if scan_max(grd, P, n_threads, &G, &gmin):
                    bad = _first_nonfinite(grd, P)
                    status = FNN_STATUS_NONFINITE_GRADIENT
                    break
            if not sh and (clip_value > 0 or max_norm >= 0):
                st.grad_norm = clip_core(grd, P, clip_value, max_norm, n_threads)
            step += 1
            if lrp != NULL:
                _set_lr(&plan.update, lrp[b - b0])
            # the guard's backup is needed only for a step the bound cannot prove finite (bound.pyx), from G and
            # the maxima of |p| and the state, which the previous proved update tracked (or a scan found); when
            # fresh maxima do not prove it either, back up for the rest of this call
            backup_step = guard
            if guard and not fallback:
                if trusted and _proved(u, dbl, &bd, G, step, &nb):
                    backup_step = 0
                elif sh and not fresh:      # fresh bounds of the shards, combined
                    ok = _refresh(&bd, u.kind, prm + lo, _off(S0, lo), _off(S1, lo), _off(S2, lo), cnt, n_threads)
                    ar_err = _sh_bounds(agf, sv, mine, R, &bd, &ok, in_place, plan.ar_double, plan.ar_comm)
                    if ar_err != 0:
                        st.mpi_error = ar_err
                        status = FNN_STATUS_BAD_KIND
                        break
                    if ok and _proved(u, dbl, &bd, G, step, &nb):
                        backup_step = 0
                    else:
                        fallback = 1
                elif (not sh and not fresh and _refresh(&bd, u.kind, prm, S0, S1, S2, P, n_threads)
                      and _proved(u, dbl, &bd, G, step, &nb)):
                    backup_step = 0
                else:
                    fallback = 1
                trusted = not backup_step
                fresh = 0
            n_backups += backup_step
            if sh:      # this rank's shard only: its parameters, state and backups, its gradient in gsh
                us = u[0]
                us.s0, us.s1, us.s2 = _off(S0, lo), _off(S1, lo), _off(S2, lo)
                us.n_decay = min(max(u.n_decay - lo, 0), cnt)
                up = _update(&us, prm + lo, gsh, _off(B, lo) if backup_step else NULL, _off(B0, lo), _off(B1, lo),
                             _off(B2, lo), cnt, step, n_threads, &bd if trusted else NULL)
                if backup_step and up != FNN_ERR_KIND:      # did any shard fail?  (only a backed-up step can)
                    badp, badv, sclass = -1, 0.0, 3
                    if up:
                        badp = _first_nonfinite(prm + lo, cnt)
                        if badp >= 0:
                            badv = prm[lo + badp]
                            badp += lo
                        elif S0 != NULL and _first_nonfinite(S0 + lo, cnt) >= 0:
                            sclass = 0
                        elif S1 != NULL and _first_nonfinite(S1 + lo, cnt) >= 0:
                            sclass = 1
                        else:
                            sclass = 2
                    mine[0], mine[1], mine[2], mine[3] = up, badp, badv, sclass
                    ar_err = agf(in_place, _SH_K, plan.ar_double, sv, _SH_K, plan.ar_double, plan.ar_comm)
                    if ar_err != 0:
                        st.mpi_error = ar_err
                        status = FNN_STATUS_BAD_KIND
                        break
                    up, bad, sclass = 0, -1, 3
                    for q in range(R):
                        up |= sv[q * _SH_K] != 0
                        if bad < 0 and sv[q * _SH_K + 1] >= 0:
                            bad, value = <Py_ssize_t>sv[q * _SH_K + 1], sv[q * _SH_K + 2]
                        sclass = min(sclass, <int>sv[q * _SH_K + 3])
                    if up:      # restore this rank's shard (the rest of the parameters is untouched yet)
                        step -= 1
                        status = FNN_STATUS_NONFINITE_PARAMETER if bad >= 0 else FNN_STATUS_NONFINITE_STATE
                        if bad < 0:
                            bad = sclass
                        memcpy(prm + lo, B + lo, cnt * sizeof(floating))
                        if S0 != NULL:
                            memcpy(S0 + lo, B0 + lo, cnt * sizeof(floating))
                        if S1 != NULL:
                            memcpy(S1 + lo, B1 + lo, cnt * sizeof(floating))
                        if S2 != NULL:
                            memcpy(S2 + lo, B2 + lo, cnt * sizeof(floating))
                        break
            else:
                up = _update(u, prm, grd, B if backup_step else NULL, B0, B1, B2, P, step, n_threads,
                             &bd if trusted else NULL)
            if trusted and not _tracks(u.kind):       # the proved bounds after the update (RMSprop, Adagrad)
                bd = nb
            if up == FNN_ERR_KIND:
                step -= 1
                status = FNN_STATUS_BAD_KIND
                break
            if sh:      # every rank's updated shard to every rank: the same parameters everywhere
                t_ar = _now()
                ar_err = agv(in_place, 0, plan.ar_dtype, prm, plan.sh_counts, plan.sh_displs, plan.ar_dtype,
                             plan.ar_comm)
                st.allreduce_seconds += _now() - t_ar
                if ar_err != 0:
                    st.mpi_error = ar_err
                    status = FNN_STATUS_BAD_KIND
                    break
            if up:
                # cold path: a non-finite gradient (it always makes its parameter non-finite) or an overflowing
                # update; classify as the per-layer path does, then restore parameters and state
                step -= 1
                bad = _first_nonfinite(grd, P)
                if bad >= 0:
                    status = FNN_STATUS_NONFINITE_GRADIENT
                else:
                    bad = _first_nonfinite(prm, P)
                    if bad >= 0:
                        value = prm[bad]
                        status = FNN_STATUS_NONFINITE_PARAMETER
                    elif S0 != NULL and _first_nonfinite(S0, P) >= 0:
                        status, bad = FNN_STATUS_NONFINITE_STATE, 0
                    elif S1 != NULL and _first_nonfinite(S1, P) >= 0:
                        status, bad = FNN_STATUS_NONFINITE_STATE, 1
                    else:
                        status, bad = FNN_STATUS_NONFINITE_STATE, 2
                memcpy(prm, B, P * sizeof(floating))
                if S0 != NULL:
                    memcpy(S0, B0, P * sizeof(floating))
                if S1 != NULL:
                    memcpy(S1, B1, P * sizeof(floating))
                if S2 != NULL:
                    memcpy(S2, B2, P * sizeof(floating))
                break
            # the weight constraints, after an update that stands (the per-layer path: Trainer._apply_constraints,
            # after the guard's check).  They only shrink weights (a factor below 1, |p| cannot grow), so the
            # guard's carried bound of |p| stays valid, and the backup of a later step holds constrained weights
            for i in range(plan.n_cons):
                max_norm_core(prm + plan.cons[i].w_off, <floating *>plan.cons[i].norms, plan.cons[i].rows,
                              plan.cons[i].cols, plan.cons[i].max_value, n_threads)
            st.loss_sum += loss if lk == FNN_LOSS_L2 else loss * wsum    # l2 sums
            st.weight_sum += ws
            st.last_loss = loss
            if outp_rows != NULL:       # the batch's output, for the caller's metrics
                memcpy(outp_rows + (b - b0) * bs * k, out, m * k * sizeof(floating))
            st.batch_loss_sum += loss * gm
            st.n_correct += n_correct
            st.n_samples += gm
        if sh and st.mpi_error == 0:    # the optimizer states of every shard to every rank (every exit)
            t_ar = _now()
            for q in range(3):
                xp = S0 if q == 0 else (S1 if q == 1 else S2)
                if xp != NULL and ar_err == 0:
                    ar_err = agv(in_place, 0, plan.ar_dtype, xp, plan.sh_counts, plan.sh_displs, plan.ar_dtype,
                                 plan.ar_comm)
            st.allreduce_seconds += _now() - t_ar
            if ar_err != 0:
                st.mpi_error = ar_err
                status = FNN_STATUS_BAD_KIND
    st.n_backups += n_backups
    # the bounds stay valid for the next chunk when this run ended normally and its last update tracked them
    plan.bd, plan.bd_trusted = bd, trusted
    plan.bd_known = guard and status == FNN_STATUS_DONE and trusted and not fallback
    if status == FNN_STATUS_NONFINITE_LOSS:
        value = loss
    return status, b - b0 if status != FNN_STATUS_DONE else b1 - b0, bad, value


def forget_bounds(Plan plan):
    """Forget the guard's carried bounds: the next run scans the parameters and the optimizer state again (after
    Python code that may have changed them, a callback's batch hook, ran between two runs)."""
    plan.bd_known = 0


def reset_stats(Plan plan):
    """Zero the plan's run statistics (run_batches adds to them), and forget the guard's bounds: the next run
    scans the buffers again (the caller calls it at the start of an epoch, after which the chunks' runs follow
    one another with nothing else touching the parameters or the optimizer state)."""
    memset(&plan.st, 0, sizeof(RunStats))
    plan.bd_known = 0


def forward_rows(Plan plan, const floating[:, ::1] X, floating[:, ::1] out, int n_threads, bint logits=False):
    """Inference through the plan (made without a PASS layer unless `logits`: a plan made with its output activation
    fused gives the logits): out (OUT, (n, n_out)) = the network's output for
    X (IN, (n, n_in)), in chunks of the plan's batch size.  Returns the index of the first non-finite element of X
    (nothing computed), or -1."""
    cdef Py_ssize_t n = X.shape[0], n_in0 = X.shape[1], L = plan.n_layers, k = out.shape[1], bs = plan.bs
    cdef Py_ssize_t s, m, bad
    cdef const floating *x
    cdef const floating *prm = <const floating *>plan.params
    _check_dtype(plan, floating is double, X, "forward_rows")
    if plan.srcs == NULL:
        raise ValueError("forward_rows: the plan's graph is not complete (batch_buffers checks it)")
    if out.shape[0] != n or L == 0 or plan._n_in0 != n_in0 or plan.layers[L - 1].n_out != k:
        raise ValueError("forward_rows: arrays do not match the plan")
    for l in range(L):
        if plan.layers[l].kind == FNN_LAYER_PASS and not logits:
            raise ValueError("forward_rows: the plan has a fused output (a PASS layer)")
    if n == 0:
        return -1
    with nogil:
        bad = _first_nonfinite(&X[0, 0], n * n_in0)
        if bad < 0:
            s = 0
            while s < n:
                m = min(bs, n - s)
                x = _forward_graph(&X[s, 0], m, plan.layers, L, plan.srcs, plan.outp, plan.kept, prm, 0, NULL,
                                   n_threads)
                if x == NULL:
                    break
                memcpy(&out[s, 0], x, m * k * sizeof(floating))
                s += m
    if bad < 0 and s < n:
        raise RuntimeError("forward_rows: a kernel rejected a kind of the plan")
    return bad


def tracked_update(Plan plan, Py_ssize_t step, int n_threads):
    """One unguarded update of the plan's parameters by its gradients (the optimizer as set by plan.sgd /
    plan.adam; RMSprop and Adagrad track no maxima: ValueError), exactly as run_batches makes a proved one (step
    >= 1: the count after it); the states are updated in place.  Returns the maxima it tracked, (max |p|, max |s0|,
    max |s1|, max |s2|), 0.0 for an absent state.  For tests."""
    cdef Bounds mx
    cdef int err
    if step < 1 or plan.U == 0 or plan.update.kind < 0 or not _tracks(plan.update.kind):
        raise ValueError("tracked_update: bad arguments (or an optimizer whose kernel tracks no maxima)")
    with nogil:
        if plan.dbl:
            err = _update(&plan.update, <double *>plan.params, <const double *>plan.grads, NULL, NULL, NULL, NULL,
                          plan.U, step, n_threads, &mx)
        else:
            err = _update(&plan.update, <float *>plan.params, <const float *>plan.grads, NULL, NULL, NULL, NULL,
                          plan.U, step, n_threads, &mx)
    if err != 0:
        raise RuntimeError(f"tracked_update: the update kernel failed ({err})")
    return mx.P, mx.S0, mx.S1, mx.S2


def allreduce_seconds(intptr_t fn, intptr_t comm, intptr_t dtype, intptr_t op, intptr_t in_place,
                      floating[::1] buf, Py_ssize_t iters):
    """Seconds per call of the in-place sum ``fn(in_place, buf, len(buf), dtype, op, comm)`` called `iters` times
    from C without the GIL, exactly as ``run_batches`` calls MPI_Allreduce on the gradient (the arguments as
    ``DataParallel.plan_hook`` gives them; benchmarks/distributed.py times the plan's transport with it).  Raises
    RuntimeError with MPI's error code if a call fails."""
    if fn == 0 or iters < 1:
        raise ValueError(f"allreduce_seconds: no MPI_Allreduce address ({fn}) or iters {iters} < 1")
    cdef allreduce_fn ar = <allreduce_fn>fn
    cdef Py_ssize_t _i
    cdef int err = 0
    cdef double t0
    cdef void *p = <void *>&buf[0] if buf.shape[0] > 0 else NULL
    cdef int count = <int>buf.shape[0]
    with nogil:
        t0 = _now()
        for _i in range(iters):
            err = ar(<const void *>in_place, p, count, dtype, op, comm)
            if err != 0:
                break
        t0 = _now() - t0
    if err != 0:
        raise RuntimeError(f"allreduce_seconds: MPI_Allreduce returned error code {err}")
    return t0 / iters
