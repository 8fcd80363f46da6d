"""The compiled training plan: ``fit`` runs the epochs in the compiled core (fastnn/_core/plan.pyx), in chunks of
batches that return to Python about every 0.05 s (Ctrl-C).

A model qualifies when it is a graph of compiled layers with fixed shapes and a feature vector out: ``Dense``, also
with a ``max_norm`` constraint (``fastnn.constraints.MaxNorm``, applied after each update in C), and
``Concatenate`` on feature vectors; ``Conv2D`` / ``Conv1D`` (any padding, strides, dilation, groups; a
``max_norm`` constraint per filter), ``MaxPool2D`` / ``AvgPool2D`` / ``MaxPool1D`` / ``AvgPool1D``,
``GlobalAveragePooling1D/2D``, ``GlobalMaxPooling1D/2D``, activation layers, ``BatchNorm`` (not synchronized;
over the channels of an image), ``LayerNorm``, ``Dropout``, ``Residual`` with stochastic depth, ``Add`` and
``Flatten`` / ``Reshape`` on outputs of any shape (channels-last; the plan holds each sample's features in one row:
X is seen as (n, features)), and for training ``SimpleRNN`` / ``LSTM`` / ``GRU`` on fixed-length float sequences
(stacks, ``return_sequences`` either way, ``go_backwards``; without masks, initial or returned states), a first
``Embedding`` (the ids go to the plan as exact floats of the model's dtype; its ``mask_zero`` mask, and a
``Masking`` layer's, when they reach recurrent layers only and not the loss) and a ``Dense``
per step, with a per-step output (T, k) trained by "cross_entropy" on (n, T) labels or by
"mse", "l2", "mae" or "binary_cross_entropy" (over each sample's whole output, as those losses take it),
trained with "cross_entropy" (integer labels or probability rows), "binary_cross_entropy", "mse", "l2" or "mae",
by ``SGD`` (with momentum, Nesterov), ``Adam`` (AMSGrad), ``AdamW``, ``RMSprop`` (momentum, centered) or
``Adagrad`` (exactly those classes), with or without sample/class weights (one process), epoch or per-step
learning-rate schedules, clipping, metrics (each batch's output is copied out for them) and callbacks with batch
hooks (then one batch per call); without masks or multi-output layers (``graph.general``: the plan has no mask).
Data-parallel runs (fastnn.distributed) use the plan without sample weights, metrics, batch hooks, Dropout,
BatchNorm, convolutions or pooling.
``fit(verbose=1)``'s progress bar is no batch hook: it is redrawn between chunks (``on_progress``, with the batches
done and their running loss), and validation runs after the epoch, so neither leaves the plan.  Everything else
runs on the per-layer path (``Trainer.step``), which stays the reference: the plan runs the same kernels in the
same order on the same buffers, draws the permutation from ``model.rng`` in Python once per epoch as that path
does, and gives the same weights (tests/test_plan.py).

Random layers: a training batch's draws from ``model.layer_rng`` (a Dropout layer's mask seed, a Residual layer's
keep-or-drop) are taken in Python before each chunk, for all of its batches, in the order the per-layer path takes
them (node order, batch after batch), so both paths see the same masks and the generator ends in the same state
(``_draws``).  After a chunk stopped by a non-finite value, the generator is rewound to hold exactly the draws of
the batches the per-layer path would have run.
"""
import math
import time

import numpy as np

from fastnn import losses as _losses
from fastnn import optim as _optim
from fastnn._core import _threads
from fastnn._core import conv as _conv
from fastnn._core import guard as _guard
from fastnn._core import plan as _k
from fastnn._core import rnn as _rnn
from fastnn._core._threads import get_num_threads
from fastnn._core.kinds import ACT, LOSS, OPT, PLAN_STATUS
from fastnn.constraints import MaxNorm
from fastnn.engine import chunk_rows
from fastnn.layers import activations as _act
from fastnn.layers import pooling as _pool
from fastnn.layers.conv import Conv1D, Conv2D
from fastnn.layers.core import Flatten, Reshape
from fastnn.layers.dense import Dense
from fastnn.layers.dropout import Dropout
from fastnn.layers.embedding import Embedding, Masking
from fastnn.layers.merge import Add, Concatenate
from fastnn.layers.normalization import BatchNorm, LayerNorm
from fastnn.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from fastnn.layers.residual import Residual

CHUNK_SECONDS = 0.05      # the time one call into the compiled core runs before returning to Python (Ctrl-C)
_REG_KIND = {cls: cls.kind for cls in (_losses.L2, _losses.MSE, _losses.MAE)}


def _size(shape):
    """The features of one sample of this shape (all axes)."""
    return int(np.prod(shape, dtype=np.int64))


def _loss_kind(loss, T):
    """The plan's LOSS kind for `loss` on targets T, or None when the plan does not compute it."""
    t = type(loss)
    if t is _losses.CrossEntropy:     # integer labels (n,), or (n, T) for a per-step output; or probability rows
        if T.dtype.kind in "iu":
            return LOSS.CROSS_ENTROPY if T.ndim in (1, 2) else None
        return LOSS.CROSS_ENTROPY_SOFT if T.ndim == 2 else None
    if t is _losses.BinaryCrossEntropy:
        return LOSS.BINARY_CROSS_ENTROPY if T.ndim == 2 else None
    return _REG_KIND.get(t)
_ACT_TYPES = tuple(_act.CLASSES.values())
_PLAIN_TYPES = (LayerNorm, Add, Flatten, Reshape, Dropout, Residual)      # on outputs of any shape
_CONV_TYPES = (Conv2D, Conv1D)
_RNN_TYPES = (SimpleRNN, LSTM, GRU)
_POOL_TYPES = tuple(_pool.CLASSES.values())
# bit generators whose Generator.random() is (next_uint64 >> 11) * 2^-53 and integers(0, 2**63) is
# next_uint64 >> 1: their draws come in one vectorized call (``_draws``)
_RAW64 = tuple(getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "SFC64", "Philox")
               if hasattr(np.random, name))


class ThreadTuner:
    """Chooses the thread count of each chunk of a compiled fit when the count is "auto" (``set_num_threads``):
    the full count n, or one thread, whichever trains faster per batch now.

    On a quiet machine n threads win; with another busy process on the cores a team of n waits at every parallel
    region for a thread the scheduler has put aside, and one thread can be many times faster.  The tuner keeps
    an estimate of the seconds per batch of the chosen count (the mean of its last two chunks; a plan's first,
    cold chunk is not counted) and now and then probes the other count with a short chunk (a quarter of a normal
    one's batches, or of its time at the other count's last speed when that is slower), whose time replaces the
    other's estimate.  It probes at once when the chosen count slows down by half or more, else after `interval`
    seconds, which doubles (to MAX_INTERVAL) each time a probe confirms the choice and goes back to MIN_INTERVAL
    when it switches.  A probe of n threads starts cold (the other cores' caches, a sleeping team), so the tuner
    leans to n: one thread must be faster by DOWN (one thread's time below DOWN times n's) to take over, n only
    as fast as one thread to take back."""

    MIN_INTERVAL, MAX_INTERVAL, DOWN = 0.25, 8.0, 0.85

    def __init__(self, n, clock=time.monotonic):
        self.n, self.cur, self.clock = n, n, clock
        self.est = {}           # count -> seconds per batch
        self.at = {}            # count -> clock() of its last measurement
        self.interval = self.MIN_INTERVAL
        self.probing = False
        self.warm = False       # the first chunk (cold buffers and caches) has run

    def _other(self):
        return 1 if self.cur != 1 else self.n

    def next(self, chunk):
        """(threads, batches) for the next chunk, given the normal chunk size."""
        other = self._other()
        if self.cur in self.est and (other not in self.at or self.clock() - self.at[other] > self.interval):
            self.probing = True
            size = chunk // 4
            if other in self.est:       # about a quarter of a chunk's time at the other count's last speed
                size = min(size, int(chunk * self.est[self.cur] / (4 * self.est[other])))
            return other, max(2, size)
        self.probing = False
        return self.cur, chunk

    def record(self, count, batches, seconds):
        """A chunk of `batches` took `seconds` at `count` threads; returns whether it was a normal (not a probe)
        chunk, whose time may size the next ones."""
        if batches <= 0:
            return not self.probing
        if not self.warm:
            self.warm = True
            return True
        per = seconds / batches
        self.at[count] = self.clock()
        if not self.probing:
            old = self.est.get(count)
            self.est[count] = per if old is None else 0.5 * (old + per)
            if old is not None and per > 1.5 * old:     # slowed down: look at the other count soon
                self.interval = self.MIN_INTERVAL
                self.at.pop(self._other(), None)
            return True
        self.probing = False
        self.est[count] = per
        better = per < self.DOWN * self.est[self.cur] if count < self.cur else per <= self.est[self.cur]
        if better:
            self.cur, self.interval = count, self.MIN_INTERVAL
        else:
            self.interval = min(self.MAX_INTERVAL, 2 * self.interval)
        return False


class BatchTuning:
    """The ThreadTuner for a loop of single batches (the per-layer path): ``before()`` / ``after()`` around each
    batch group the batches into chunks of about CHUNK_SECONDS, each run at the tuner's thread count
    (``_threads.set_active_threads``), and ``close()`` gives the count back.  None when the count is fixed."""

    @classmethod
    def start(cls, owner, data_parallel):
        """The tuning of `owner` (a Trainer: its tuner is kept between epochs), or None when the thread count is
        not "auto", is 1, or the fit is data-parallel."""
        n = get_num_threads()
        if not _threads.adaptive() or n < 2 or data_parallel:
            return None
        if owner.tuner is None or owner.tuner.n != n:
            owner.tuner = ThreadTuner(n)
        return cls(owner.tuner, n)

    def __init__(self, tuner, n):
        self.tuner, self.n = tuner, n
        self.chunk, self.left, self.count, self.nt, self.t0 = 1, 0, 0, n, 0.0

    def before(self):
        if self.left > 0:
            return
        self.nt, self.left = self.tuner.next(self.chunk)
        self.count = 0
        if self.nt != self.n:
            _threads.set_active_threads(self.nt)
        self.t0 = time.perf_counter()

    def after(self):
        self.count += 1
        self.left -= 1
        if self.left > 0:
            return
        dt = time.perf_counter() - self.t0
        if self.nt != self.n:
            _threads.set_active_threads(self.n)
        if self.tuner.record(self.nt, self.count, dt):
            self.chunk = max(1, min(int(self.count * CHUNK_SECONDS / max(dt, 1e-6)), 16 * self.chunk))

    def close(self):
        if self.left > 0 and self.nt != self.n:
            _threads.set_active_threads(self.n)
        self.left = 0


class TrainPlan:
    """Per-node descriptors and batch buffers of one model at one batch size: ``core``, the compiled plan's
    state (fastnn/_core/plan.pyx ``Plan``), and the buffers it points into.  ``draw_specs``: one entry per random
    draw of a training batch, in node order: None for a Dropout layer's mask seed, the survival probability for a
    Residual layer's keep-or-drop."""

    def __init__(self, model, bs, fused=None):
        self.model, self.bs, self.params = model, bs, model.parameters
        self.chunk = 1          # batches per call of run_batches, adapted by fit_epoch
        self.outputs = None     # (rows, k): the batches' outputs a chunk copies out for the metrics
        self.tuner = None       # the ThreadTuner of an "auto" thread count (fit_epoch)
        self.norms = {}         # the constraints' scratch vectors, by layer (set_constraints)
        fused = model.trainer.fused if fused is None else fused
        dt = model.dtype
        graph = model.graph
        L = len(graph.nodes)
        self.core = core = _k.Plan(model.parameters, model.gradients, bs, L, model.table.n_trainable)
        self.draw_specs = []
        self.running = []       # (BatchNorm layer, the guard's (2, C) copy of its running statistics)
        self.buffers = []       # (BatchNorm layer, its running_mean, its running_var): the arrays the plan writes
        table = model.table
        # every output as features per sample (all axes), and as rows x cols (the last axis) for the row-wise kernels
        width = [_size(layer.output_shape) for layer, _ in graph.nodes]
        n_in0 = _size(model.input_shape)
        self.threads = get_num_threads()     # the conv and recurrent scratch is sized for this many threads
        self.thread_sized = False            # (plan_for makes a new plan for more threads when one is)
        self.embeddings = []                 # the Embedding layers (the batch's ids: fit_epoch checks them)
        self.rnn_tables = {}                 # recurrent node -> its directions' Embedding tables (Plan.rnn's emb)
        scratch, convs = None, []
        masks = _mask_flow(graph) or [None] * L      # which nodes' outputs carry an Embedding's mask
        mask_buf = {}       # the Embedding node -> the (bs, T) uint8 buffer it fills each batch
        for i, (layer, src) in enumerate(graph.nodes):
            last = i == L - 1
            n_out = width[i]
            n_in = n_in0 if src[0] < 0 else width[src[0]]
            rows = n_out // layer.output_shape[-1] if layer.output_shape[-1] else 1
            t = type(layer)

            def buf(shape=(bs, n_out), dtype=dt):
                return np.empty(shape, dtype)

            if t is Dense:      # on the last axis: `rows` rows per sample (1 for a vector)
                act = ACT.IDENTITY if (last and fused) else layer.activation.kind
                b_off = table.offset(layer, "bias") if layer.use_bias else -1
                core.dense(i, act, n_in, n_out, table.offset(layer, "weight"), b_off, layer.need_input_grad,
                           layer.activation.alpha, buf(), buf(), buf(), buf((bs, n_in)), rows=rows)
            elif t in _RNN_TYPES or t is Bidirectional:
                # one direction, or Bidirectional's two (merged in the node), each with rnn.pyx's buffers for bs rows
                # as the per-layer layer makes them (recurrent.py forward / backward)
                bi = t is Bidirectional
                inner = layer.layer if bi else layer
                cell, U, seq = inner._cell, inner.units, inner.return_sequences
                steps, f = layer.input_shape
                dirs = [_rnn_buffers(table, layer, lay, prefix, bs, dt, self.threads, last=k == 0 and not bi)
                        for k, (lay, prefix) in enumerate([(inner, "forward_"), (layer.backward_layer, "backward_")]
                                                          if bi else [(layer, "")])]
                # fed by an Embedding whose table has fewer rows than half a batch's ids (float32): the forward
                # multiplies the table by W_ih once per batch, not each id's row per step (the same bits), where
                # the products fit in L2 beside the packed weights (csrc/fnn_rnn.h fnn_rnn_use_xtab; scratch here up
                # to 4 MiB, the most any L2 budget takes)
                feed = graph.nodes[src[0]][0] if src[0] >= 0 else None
                tab = feed.input_dim * _rnn.n_gates(cell) * U if type(feed) is Embedding else 0
                emb = src[0] if (tab and dt == np.float32 and 2 * feed.input_dim <= bs * steps
                                 and tab * 4 <= 4 << 20) else -1
                for d in dirs:
                    d["xtab"] = np.zeros(tab, dt) if emb >= 0 else None
                if emb >= 0:
                    self.rnn_tables[i] = [d["xtab"] for d in dirs]
                core.rnn(i, cell, steps, f, U, seq, layer.need_input_grad, self.threads, buf(),
                         buf((bs, n_in)) if layer.need_input_grad else None, dirs,
                         _MERGES[layer.merge_mode] if bi else -1,
                         np.empty(2 * bs * (steps if seq else 1) * U, dt) if bi else None,
                         mask_buf[masks[src[0]]] if src[0] >= 0 and masks[src[0]] is not None else None, emb=emb)
                self.thread_sized = True
            elif t is Masking:
                steps, f = layer.input_shape
                mask_buf[i] = np.empty((bs, steps), np.uint8)
                core.masking(i, steps, f, layer.mask_value, layer.need_input_grad, buf(),
                             buf((bs, n_in)) if layer.need_input_grad else None, mask_buf[i])
            elif t is Embedding:
                steps = n_in
                if layer.mask_zero:
                    mask_buf[i] = np.empty((bs, steps), np.uint8)
                core.embedding(i, steps, layer.input_dim, layer.output_dim, table.offset(layer, "weight"), buf(),
                               np.empty((bs, steps), np.int64), mask_buf.get(i))
                self.embeddings.append(layer)
            elif t in _ACT_TYPES:
                core.activation(i, layer.kind, n_out, layer.alpha, buf(), buf(), passthrough=last and fused,
                                rows=rows)
            elif t in _CONV_TYPES:
                # the per-layer path's geometry (Conv1D: a Conv2D of height 1) and scratch sizes (_Conv.forward)
                x4, z4, st, dil, pad = layer._geometry((bs,) + tuple(layer.input_shape))
                w4 = layer._w4(layer.params["weight"]).shape
                item = np.dtype(dt).itemsize
                have = [max(_conv.scratch_size(x4, w4, st, dil, pad, layer.groups, item, self.threads, back), 1)
                        for back in (False, True)]
                act = ACT.IDENTITY if (last and fused) else layer.activation.kind
                b_off = table.offset(layer, "bias") if layer.use_bias else -1
                identity = act == ACT.IDENTITY
                convs.append((i, (act, layer.activation.alpha, x4[1:], z4[1:], w4[:2], st, dil, pad, layer.groups,
                                  table.offset(layer, "weight"), b_off, layer.need_input_grad, buf(),
                                  None if identity else buf(), None if identity else buf(),
                                  buf((bs, n_in)) if layer.need_input_grad else None), have))
                scratch = max(scratch or 0, *have)
            elif t in _POOL_TYPES:
                x4, y4, (ph, pw, sh, sw, pt, pl) = layer.kernel_geometry((bs,) + tuple(layer.input_shape))
                core.pool(i, layer.is_max, x4[1:], y4[1:], (ph, pw), (sh, sw), (pt, pl), layer.need_input_grad, buf(),
                          buf((bs, n_in)) if layer.need_input_grad else None,
                          buf(dtype=np.int32) if layer.is_max else None)
            elif t is BatchNorm:
                C = n_out // rows
                backup = buf((2, C))
                core.batchnorm(i, n_out, table.offset(layer, "weight"), table.offset(layer, "bias"),
                               layer.need_input_grad, layer.momentum, layer.eps, layer.batch_statistics, buf(), buf(),
                               buf(), buf((C,)), buf((C,)), layer.buffers["running_mean"],
                               layer.buffers["running_var"], backup, rows=rows)
                if layer.batch_statistics:
                    self.running.append((layer, backup))
                self.buffers.append((layer, layer.buffers["running_mean"], layer.buffers["running_var"]))
            elif t is LayerNorm:
                core.layernorm(i, n_out, table.offset(layer, "weight"), table.offset(layer, "bias"),
                               layer.need_input_grad, layer.eps, buf(), buf(), buf(), buf((bs * rows,)), rows=rows)
            elif t is Dropout:
                draw = -1
                if layer.rate > 0:
                    draw = len(self.draw_specs)
                    self.draw_specs.append(None)
                keep = 1.0 - layer.rate
                core.dropout(i, n_out, draw, int(round(layer.rate * 2.0 ** 53)),
                             1.0 / keep if layer.mode == "inverted" else 1.0,
                             keep if layer.mode != "inverted" else 1.0, buf(), buf(dtype=np.uint8), buf())
            elif t is Residual:
                draw = -1
                if layer.survival_prob < 1.0:
                    draw = len(self.draw_specs)
                    self.draw_specs.append(layer.survival_prob)
                core.residual(i, n_out, draw, layer.survival_prob, buf())
            elif t is Add:
                core.add(i, n_out, buf())
            elif t is Concatenate:
                core.concat(i, n_out, buf(), buf((bs * n_out,)))
            elif t in (Flatten, Reshape):
                core.identity(i, n_out)
            else:       # plan_for / predict checked the graph (_compiles)
                raise TypeError(f"compiled plan: no compiled node for {t.__name__}")
            core.link(i, src, buf() if graph.fanout[i] > 1 else None)
        # the convolutions' workspace: one buffer for all of them (they run one after the other), each node using
        # the part the per-layer path's own buffers would have (the same thread split)
        self.scratch = None if scratch is None else np.empty(scratch, dt)
        for i, args, have in convs:
            core.conv(i, *args, self.scratch, *have)
        self.thread_sized = self.thread_sized or bool(convs)
        k = width[-1]
        self.out_rows = k // model.output_shape[-1] if model.output_shape[-1] else 1   # > 1: a per-step output
        self.set_constraints()
        core.batch_buffers(np.empty((bs, n_in0), dt), np.empty(bs * self.out_rows, np.intp), np.empty((bs, k), dt),
                           np.empty((bs, k), dt), np.empty(bs * self.out_rows, dt))


    def set_constraints(self):
        """Give the plan the weight constraints of the layers the per-layer path constrains
        (``Trainer.constrained``, in its order), read now: a layer's ``constraint`` (or its ``max_value``) may have
        been changed since the plan was made."""
        model = self.model
        items = []
        for layer in model.trainer.constrained:
            c = layer.constraint
            if c is None:
                continue
            shape = layer.params["weight"].shape       # Dense (n_in, n_out); Conv (kh, kw, C/G, F): (kh*kw*C/G, F)
            n_in, n_out = _size(shape[:-1]), shape[-1]
            norms = self.norms.get(id(layer))
            if norms is None or norms.shape != (n_out,):
                norms = self.norms[id(layer)] = np.empty(n_out, model.dtype)
            items.append((model.table.offset(layer, "weight"), n_in, n_out, c.max_value, norms))
        self.core.constraints(items)


_MERGES = {"concat": 0, "sum": 1, "mul": 2, "ave": 3}     # plan.pyx's _MERGE_... (Bidirectional's merge modes)


def _rnn_buffers(table, owner, layer, prefix, bs, dt, threads, last):
    """The plan's description of one direction of a recurrent node (Plan.rnn's `dirs` entry): `layer` (a SimpleRNN,
    LSTM or GRU; owner: it, or the Bidirectional holding it, whose parameters are named with `prefix`), rnn.pyx's
    buffers for bs rows, the float32 packing scratch for `threads` threads.  last: the direction writes the node's
    own output (no "Y" of its own)."""
    cell, U = layer._cell, layer.units
    steps, f = owner.input_shape
    GU, SV, lstm = _rnn.n_gates(cell) * U, _rnn.n_saved(cell) * U, cell == _rnn.LSTM
    seq = layer.return_sequences

    def flat(size, on=True):
        return np.empty(size, dt) if on else None

    return dict(reverse=layer.go_backwards, w_off=table.offset(owner, prefix + "weight_ih"),
                whh_off=table.offset(owner, prefix + "weight_hh"), bih_off=table.offset(owner, prefix + "bias_ih"),
                bhh_off=table.offset(owner, prefix + "bias_hh"),
                Y=None if last else np.empty((bs, (steps if seq else 1) * U), dt),
                hout=np.empty((bs, U), dt) if seq else None,
                dX=None if last or not owner.need_input_grad else np.empty((bs, steps * f), dt),
                perm=np.arange(bs, dtype=np.intc), n_active=np.empty(steps, np.intc),
                scratch=np.empty(bs + steps + 1, np.intc), mode=np.zeros(1, np.intc), XP=flat(bs * steps * GU),
                HP=flat(bs * GU), Hs=flat((steps + 1) * bs * U), Cs=flat((steps + 1) * bs * U, lstm),
                Gs=flat(steps * bs * SV, SV > 0),
                Wp=flat(_rnn.packed_size(cell, f, U, threads), dt == np.float32), dH=flat(bs * U),
                dC=flat(bs * U, lstm), dGt=flat(steps * bs * GU), dGo=flat(bs * steps * GU))


def _mask_flow(graph):
    """For a graph with masks: per node, the Embedding (mask_zero) or Masking node whose mask its output carries, or
    None; None when the plan cannot honour the masks.  The plan takes a mask from an Embedding or a Masking layer
    into recurrent layers only
    (a SimpleRNN / LSTM / GRU / Bidirectional hands it on with return_sequences), with no mask on the model output
    (the loss unmasked) and single-output layers; any other layer reached by a mask keeps the per-layer path."""
    if not graph.has_masks or any(f is not None for f in graph.out_fanout):
        return None
    out = []
    for i, (layer, src) in enumerate(graph.nodes):
        t = type(layer)
        got = [out[s] for s in src if s >= 0 and out[s] is not None]
        if layer.produces_mask:
            if (t is not Embedding and t is not Masking) or got:
                return None
            out.append(i)
        elif got:
            if len(src) != 1 or (t not in _RNN_TYPES and t is not Bidirectional):
                return None
            out.append(got[0] if layer.return_sequences else None)
        else:
            out.append(None)
    return out if out[-1] is None else None


def _constraints_compile(layers):
    """Whether the plan applies every constraint of these layers (``Trainer.constrained``): a Dense or convolution
    layer's ``MaxNorm`` (exactly that class: a subclass may constrain otherwise) over its units, the last axis of
    its weight (the columns of the weight seen as (rows, units), as ``MaxNorm`` sees it), or none.  Any other
    constrained layer (a user's layer with ``apply_constraint``) keeps the model on the per-layer path."""
    return all((type(layer) is Dense or type(layer) in _CONV_TYPES)
               and (layer.constraint is None or type(layer.constraint) is MaxNorm) for layer in layers)


def _compiles(model, training):
    """Whether every node of the model's graph has a compiled counterpart (TrainPlan), with fixed shapes and a
    feature vector out of the model; for training also without a synchronized BatchNorm or a weight constraint
    the plan does not apply.  Dense and Concatenate work on feature vectors; convolutions, pooling, activations,
    BatchNorm, LayerNorm, Dropout, Add, Residual and Flatten / Reshape on outputs of any shape (channels-last)."""
    graph = model.graph
    if not isinstance(model.input_shape, tuple) or None in model.input_shape:
        return False
    if graph.general and not (training and _mask_flow(graph) is not None):     # masks: into recurrent layers only
        return False
    shapes = [layer.output_shape for layer, _ in graph.nodes]
    # a per-step output (T, k) trains (plan_for checks the loss: cross-entropy on (n, T) labels), predicts not
    if any(not isinstance(out, tuple) or not out or None in out for out in shapes) or not (
            len(shapes[-1]) == 1 or (training and len(shapes[-1]) == 2)):
        return False
    # recurrent models train on the plan with a Dense per step (elsewhere a Dense on more than one axis keeps a
    # model on the per-layer path, as before)
    sequences = training and any(type(layer) in _RNN_TYPES or type(layer) in (Embedding, Bidirectional, Masking)
                                 for layer in graph.layers)
    for layer, src in graph.nodes:
        t = type(layer)
        vector = len(layer.output_shape) == 1 and all(len(model.input_shape if s < 0 else shapes[s]) == 1
                                                      for s in src)
        if t is Masking:        # on float sequences, into recurrent layers (_mask_flow), for training
            if not training or len(layer.input_shape) != 2 or len(src) != 1:
                return False
        elif t in _RNN_TYPES or t is Embedding or t is Bidirectional:
            # training only (inference keeps the per-layer path); no mask, initial state, returned state or
            # recorded step norms; an Embedding reads the batch's ids (carried as exact floats)
            if not training:
                return False
            if t is Embedding:
                if (tuple(src) != (-1,) or len(model.input_shape) != 1
                        or (model.dtype == np.float32 and layer.input_dim > 2 ** 24)):
                    return False
            elif t is Bidirectional:
                inner = layer.layer
                if (layer.merge_mode not in _MERGES or type(inner) not in _RNN_TYPES
                        or type(layer.backward_layer) is not type(inner) or len(layer.input_shape) != 2
                        or inner.record_step_grad_norms or layer.backward_layer.record_step_grad_norms):
                    return False
            elif (layer.return_state or layer.n_inputs != 1 or layer.record_step_grad_norms
                  or len(layer.input_shape) != 2):
                return False
        elif t is Dense:    # on feature vectors; in a recurrent model also per step (the last axis of a sequence)
            if ((not vector and not sequences) or type(layer.activation) not in _ACT_TYPES
                    or (training and not _constraints_compile([layer]))):
                return False
        elif t in _CONV_TYPES:
            if type(layer.activation) not in _ACT_TYPES or (training and not _constraints_compile([layer])):
                return False
        elif t is BatchNorm:
            if training and layer.reducer is not None:
                return False
        elif t is Concatenate:
            if -1 in src or not vector:
                return False
        elif t not in _ACT_TYPES and t not in _PLAIN_TYPES and t not in _POOL_TYPES:
            return False
    return True


def _draws(rng, specs, n_batches):
    """The (n_batches, len(specs)) uint64 draws of n_batches training batches from `rng` (``TrainPlan.draw_specs``),
    exactly as the per-layer path takes them batch after batch in node order: a Dropout layer's
    ``rng.integers(0, 2**63)`` (its mask seed), a Residual layer's ``rng.random() < survival_prob`` (1: keep the
    block).  For the bit generators in _RAW64 each is one 64-bit output of the generator (integers: its top 63
    bits; random: its top 53 bits times 2^-53), so all of them come from one ``random_raw`` call."""
    nd = len(specs)
    out = np.empty((n_batches, nd), np.uint64)
    bg = rng.bit_generator
    if type(bg) in _RAW64:
        raw = bg.random_raw(n_batches * nd).reshape(n_batches, nd)
        for j, p in enumerate(specs):
            if p is None:
                np.right_shift(raw[:, j], np.uint64(1), out=out[:, j])
            else:
                out[:, j] = (raw[:, j] >> np.uint64(11)) * (1.0 / 9007199254740992.0) < p
        return out
    for b in range(n_batches):
        for j, p in enumerate(specs):
            out[b, j] = rng.integers(0, 2 ** 63) if p is None else (rng.random() < p)
    return out


_MAX_FREE_PLANS = 4     # inference plans kept per row-count class (more are made while more threads predict)


def predict(model, X, logits=False):
    """The output for X (float array of the model dtype, C-contiguous, (n, *input_shape): images and sequences
    are read as (n, features) views) through a compiled inference plan
    with buffers kept between calls; None when the model is not a graph of compiled layers or X holds a
    NaN/inf (the caller's general path then predicts or raises its usual error).  `logits`: the output layer's
    activation fused with the loss is left out (``Trainer.fused``: what the loss of evaluate and validation
    takes).  Thread-safe: each call has a plan of its own for its duration (a pool per row-count class)."""
    trainer = model.trainer
    plans = trainer.infer_plans
    if plans is None or plans[0] is not model.parameters:
        if not _compiles(model, False):
            trainer.infer_plans = (model.parameters, None)
            return None
        plans = trainer.infer_plans = (model.parameters, {})
    if plans[1] is None:
        return None
    n = X.shape[0]
    if X.ndim != 2:
        X = X.reshape(n, -1)            # C-contiguous: a view, the layout the plan's rows use
    bs = 1 if n == 1 else (64 if n <= 64 else 1024)     # a few sizes: single sample, small batch, chunks
    if n > 1 and any(type(layer) in _CONV_TYPES or type(layer) in _POOL_TYPES for layer in model.graph.layers):
        # images: chunks of the executor's size (engine.chunk_rows: about INFERENCE_CHUNK_ELEMENTS values in the
        # widest layer, more where the weights are large; a plan holds several buffers of bs rows per layer), as
        # the nearest of the few sizes of the pool (a factor: 38 rows run as 64, 16 as 8)
        rows = chunk_rows(model.graph, tuple(model.input_shape))
        bs = min(bs, min((1, 8, 64, 1024), key=lambda s: abs(math.log2(s / rows))))
    # the plans of one size are a pool: a call checks one out (list pop and append are atomic under the GIL), so
    # two threads never share a plan's buffers while forward_rows runs without the GIL; none free: make one
    key = (bs, bool(logits))
    free = plans[1].get(key)
    if free is None:
        free = plans[1].setdefault(key, [])
    try:
        plan = free.pop()
    except IndexError:
        plan = TrainPlan(model, bs, fused=bool(logits))
    try:
        out = np.empty((n, model.output_shape[0]), dtype=model.dtype)
        status = _k.forward_rows(plan.core, X, out, get_num_threads(), bool(logits))
    finally:
        if len(free) < _MAX_FREE_PLANS:
            free.append(plan)
    return None if status >= 0 else out


def plan_for(model, train, bs, metrics, cbs):
    """The compiled plan for this fit call, or None when the model or the call needs the per-layer path."""
    X, T, W = train
    loss, opt = model.loss, model.optimizer
    trainer = model.trainer
    if not trainer.compiled_plan:      # tests switch the plan off to compare the two paths
        return None
    dist = trainer._dist
    if dist is not None and dist.plan_hook(model.dtype) is None:   # data-parallel without the C allreduce hook
        return None
    if model.graph.general and _mask_flow(model.graph) is None:     # masks the plan cannot honour, several outputs
        return None
    if not _constraints_compile(trainer.constrained) or (dist is not None and (metrics or cbs.batch_hooks)):
        return None
    if W is not None and (dist is not None or W.dtype != model.dtype or not W.flags.c_contiguous):
        return None
    # diagnostics read gradients and unit counts from the per-layer path; sampled softmax has its own step
    if trainer.monitor is not None or trainer.sampled is not None:
        return None
    if type(opt) not in (_optim.SGD, _optim.Adam, _optim.AdamW, _optim.RMSprop, _optim.Adagrad):
        return None
    if model.table.n_trainable == 0:      # everything frozen: the per-layer path (which updates nothing)
        return None
    if _loss_kind(loss, T) is None:
        return None
    if X.shape[1:] != tuple(model.input_shape) or not X.flags.c_contiguous or not _compiles(model, True):
        return None
    out_shape = tuple(model.output_shape)
    kind = _loss_kind(loss, T)
    if len(out_shape) > 1 and (dist is not None or kind == LOSS.CROSS_ENTROPY_SOFT or (
            kind == LOSS.CROSS_ENTROPY and (T.shape != (X.shape[0],) + out_shape[:-1] or T.dtype != np.intp))):
        return None     # a per-step output: cross-entropy on (n, T) labels, or a loss over each sample's output
    if len(out_shape) == 1 and _loss_kind(loss, T) == LOSS.CROSS_ENTROPY and T.ndim != 1:
        return None
    embeds = [layer for layer, _ in model.graph.nodes if type(layer) is Embedding]
    if embeds:
        # the ids travel as exact floats: integers in [0, input_dim) (else the per-layer path raises its error)
        if X.dtype.kind not in "iu" or dist is not None:
            return None
        if X.size and (X.min() < 0 or X.max() >= min(layer.input_dim for layer in embeds)):
            return None
    elif X.dtype != model.dtype:
        return None
    # data-parallel: Dropout draws its rank's rows of the global mask and BatchNorm may synchronize: per-layer path;
    # convolutions, pooling and recurrent layers too (not yet checked against it under MPI)
    if dist is not None and any(type(layer) in (Dropout, BatchNorm, Embedding, Bidirectional, Masking) + _CONV_TYPES
                                + _POOL_TYPES + _RNN_TYPES for layer, _ in model.graph.nodes):
        return None
    # the plan updates the trainable prefix of the flat buffers, the one the optimizer is bound to (see fit_epoch)
    # (Trainer.check_optimizer has checked this at the start of fit; the plan checks again, as it writes through
    # raw pointers: never another model's buffers, never state of another size)
    if (opt._params is not model.table.trainable_parameters or opt._grads is not model.table.trainable_gradients
            or any(a.shape != opt._params.shape for a in opt.state.values())):
        raise RuntimeError(f"compiled plan: {model.name}'s optimizer is not bound to its parameters")
    plan = trainer.train_plan
    if plan is None or plan.bs != bs or plan.params is not model.parameters or plan.model is not model or (
            plan.thread_sized and plan.threads < get_num_threads()) or any(
            layer.buffers.get("running_mean") is not rm or layer.buffers.get("running_var") is not rv
            for layer, rm, rv in plan.buffers):
        plan = trainer.train_plan = TrainPlan(model, bs)
    return plan


def _set_update(core, opt):
    """Give the optimizer's hyperparameters and state to the plan; returns the states in the plan's order."""
    if opt.kind == OPT.ADAM:
        states = [opt.state["exp_avg"], opt.state["exp_avg_sq"], opt.state.get("max_exp_avg_sq")]
        core.adam(opt.lr, opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay, opt._decoupled, *states,
                  opt._n_decay)
    elif opt.kind == OPT.SGD:
        states = [opt.state.get("momentum_buffer"), None, None]
        core.sgd(opt.lr, opt.momentum, opt.dampening, opt.weight_decay, opt.nesterov, states[0], opt._n_decay)
    elif opt.kind == OPT.RMSPROP:
        states = [opt.state.get(k) for k in _state_keys(opt)]
        core.rmsprop(opt.lr, opt.alpha, opt.eps, opt.weight_decay, opt.momentum, opt.centered, *states, opt._n_decay)
    elif opt.kind == OPT.ADAGRAD:
        states = [opt.state["sum"], None, None]
        core.adagrad(opt.lr, opt.lr_decay, opt.weight_decay, opt.eps, states[0], opt._n_decay)
    else:
        raise ValueError(f"compiled plan: no compiled update for {type(opt).__name__}")
    return states


def fit_epoch(model, plan, epoch, train, bs, shuffle, cbs=None, metrics=()):
    """One epoch through the plan; returns the logs as ``Trainer._fit_epoch`` does (raises NonFiniteError).
    `cbs` (a CallbackList, or None): its progress display (``on_progress``) is called after every chunk, and its
    batch hooks (``on_batch_begin`` / ``on_batch_end``, when a callback has them) around every batch.
    `metrics`: Metric objects, updated with each batch's output (the plan copies it out) and targets.

    The plan holds the model's whole flat buffers, which the layers' offsets address, and the length of their
    trainable prefix (``model.table.n_trainable``, the optimizer's buffers): the update, clipping and the guard's
    scans cover exactly those elements, so a frozen layer (after the prefix) is read in the forward pass and its
    gradient written in the backward pass but never updated.

    The epoch runs in chunks of batches (``plan.chunk``, adapted so that a chunk takes about CHUNK_SECONDS; the
    first chunk of a new plan is one batch): between chunks control returns to Python, so that Ctrl-C
    (KeyboardInterrupt) stops training within about that time, at a batch boundary, with the weights, the
    optimizer state and ``optimizer.step_count`` all holding exactly the batches applied (the partial epoch is
    not counted in ``epochs_trained`` or the history; ``fit`` can be called again).  A chunk costs one Python
    round trip and one scan of the parameters by the guard, nothing measurable at that size.  With batch hooks
    every chunk is one batch: before it the hook runs and the plan takes the optimizer's hyperparameters again (a
    hook may change the learning rate) and forgets the guard's carried bounds (a hook may change the weights);
    after it ``optimizer.step_count`` is up to date when the other hook runs, as on the per-layer path."""
    X, T, W = train
    n = X.shape[0]
    X = X.reshape(n, -1)        # the plan's rows: each sample's features (a view: plan_for checked X is contiguous)
    if plan.embeddings:         # token ids: as exact floats of the model's dtype (plan_for checked their range)
        X = X.astype(model.dtype)
    labels = T                  # the metrics' targets
    if plan.out_rows > 1 and _loss_kind(model.loss, T) == LOSS.CROSS_ENTROPY:   # per-step labels (n, T): read as
        T = np.ascontiguousarray(T).reshape(-1)                                    # (n * T,)
    idx = model.rng.permutation(n) if shuffle else None
    opt = model.optimizer
    core = plan.core
    # data-parallel (fastnn/distributed.py): the plan allreduces through MPI_Allreduce itself, and its batches are
    # this rank's shares of global batches of bs * size rows
    dist = model.trainer._dist
    hook = None if dist is None else dist.plan_hook(model.dtype)
    core.allreduce(*(hook or ()))
    if hook is not None:
        core.overlap(*(dist.overlap_hook(model.dtype) or ()))
        core.shard(*(dist.shard_hook(model.dtype) or ()))
    gbs = bs * (1 if hook is None else dist.size)
    sharded = hook is not None and bool(core.shards)
    core.loss(_loss_kind(model.loss, T))
    states = _set_update(core, opt)
    plan.set_constraints()
    guard = model.nan_guard
    if guard:
        core.guard(True, model.trainer.guard_backup,
                   *[None if s is None else model.engine.cached(("saved", key, s.shape), lambda s=s: np.empty_like(s))
                     for key, s in zip(_state_keys(opt), states)])
    else:
        core.guard(False)
    core.clip(-1.0 if model.clip_value is None else model.clip_value,
              -1.0 if model.clip_norm is None else model.clip_norm)
    loss = model.loss
    _k.reset_stats(core)
    n_batches, n_threads = -(-n // gbs), get_num_threads()
    progress = cbs is not None and cbs.progress
    hooks = cbs is not None and cbs.batch_hooks
    for met in metrics:
        met.reset()
    step0, b = opt.step_count, 0
    status = PLAN_STATUS.DONE
    tuner = None
    if _threads.adaptive() and n_threads > 1 and dist is None:
        if plan.tuner is None or plan.tuner.n != n_threads:
            plan.tuner = ThreadTuner(n_threads)
        tuner = plan.tuner
    specs, rng, draws = plan.draw_specs, model.layer_rng, None
    # a per-step schedule: each batch's learning rate, from the step count before its update (Trainer._schedule_step)
    sched = model.lr_schedule if (model.lr_schedule is not None and model.lr_schedule.per_step) else None
    lrs = outputs = None
    try:
        # the epoch in chunks of about CHUNK_SECONDS: each returns to Python, where a pending KeyboardInterrupt
        # (Ctrl-C) is raised at a batch boundary; the chunk size adapts to the time of the last chunk
        while b < n_batches:
            b1 = b + 1 if hooks else min(b + plan.chunk, n_batches)
            nt = n_threads
            if tuner is not None:
                nt, size = tuner.next(plan.chunk)
                b1 = b + 1 if hooks else min(b + size, n_batches)
            t0 = time.perf_counter()
            if hooks:
                cbs.on_batch_begin(b, {"batch": b, "size": min(bs, n - b * bs)})
                _set_update(core, opt)
                plan.set_constraints()
                _k.forget_bounds(core)
            if specs:
                rng_state = rng.bit_generator.state
                draws = _draws(rng, specs, b1 - b)
            if sched is not None:
                base = model.trainer.base_lr
                lrs = np.array([sched(step0 + j, base) for j in range(b, b1)], dtype=np.float64)
            if metrics:
                rows = (b1 - b) * bs
                if plan.outputs is None or plan.outputs.shape[0] < rows:
                    plan.outputs = np.empty((rows,) + tuple(model.output_shape), model.dtype)
                outputs = plan.outputs      # (rows, T, k) for a per-step output: the plan writes its (rows, T*k) view
            if nt != n_threads:
                _threads.set_active_threads(nt)
            try:
                status, done, bad, value = _k.run_batches(core, X, T, idx, b, b1, step0 + b, nt, draws, W, lrs,
                                                          None if outputs is None else
                                                          outputs.reshape(outputs.shape[0], -1))
            finally:
                if nt != n_threads:
                    _threads.set_active_threads(n_threads)
            run_seconds = time.perf_counter() - t0
            if sched is not None:   # the rate of the last step taken, or tried (an update that was undone)
                tried = done + (status in (PLAN_STATUS.NONFINITE_PARAMETER, PLAN_STATUS.NONFINITE_STATE))
                if tried > 0:
                    opt.lr = float(lrs[tried - 1])
            for j in range(done):       # the metrics of the batches applied, in order
                start, stop = (b + j) * bs, min((b + j + 1) * bs, n)
                Tb = labels[start:stop] if idx is None else labels[idx[start:stop]]
                for met in metrics:
                    met.update(outputs[j * bs:j * bs + stop - start], Tb)
            b += done
            if status != PLAN_STATUS.DONE:
                if specs:       # the per-layer path would have drawn for the batches run and the one that failed
                    rng.bit_generator.state = rng_state
                    _draws(rng, specs, done + 1)
                break
            if hooks:
                opt.step_count = step0 + b
                cbs.on_batch_end(b - 1, {"batch": b - 1, "size": min(bs, n - (b - 1) * bs),
                                         "loss": float(core.stats["last_loss"])})
            if progress:
                s = core.stats
                cbs.on_progress(b, float(s["batch_loss_sum"]) / max(float(s["n_samples"]), 1.0))
            if model.stop_training:
                break
            dt = time.perf_counter() - t0      # per batch run (the epoch's last chunk may be short)
            if tuner is None or tuner.record(nt, done, run_seconds):    # a probe does not size the chunks
                plan.chunk = max(1, min(int(done * CHUNK_SECONDS / max(dt, 1e-6)), 16 * plan.chunk))
                if sharded:     # rank 0's: every rank must make the same run_batches calls (each ends with
                    plan.chunk = dist.comm.bcast(plan.chunk, root=0)    # collectives: the states' allgather)
    finally:
        # from the plan's own count (each applied batch adds its samples; all but the epoch's last are full), so
        # that an interrupt anywhere in the loop, even between a chunk's return and the line after it, leaves the
        # step count equal to the updates the weights hold
        stats = core.stats
        opt.step_count = step0 + -(-int(stats["n_samples"]) // gbs)
        model.trainer.guard_backup_steps += int(stats["n_backups"])
        if dist is not None:
            dist.allreduce_seconds += float(stats["allreduce_seconds"])
        if model.clip_norm is not None or model.clip_value is not None:
            model.grad_norm = float(stats["grad_norm"])
    done = b
    if status != PLAN_STATUS.DONE:
        where = (epoch, done)
        detail = None
        if status == PLAN_STATUS.NONFINITE_BUFFER:    # name the first bad value, as the per-layer path does
            layer = model.graph.nodes[bad].layer
            for name in ("running_mean", "running_var"):
                arr = layer.buffers[name]
                i = _guard.first_nonfinite(arr)
                if i >= 0:
                    detail = f"the forward pass made the buffer {layer.name}.{name}[{i}] {arr[i]}"
                    break
        if guard:       # every NonFiniteError leaves the running statistics as before the failed batch
            for layer, backup in plan.running:
                layer.buffers["running_mean"][...] = backup[0]
                layer.buffers["running_var"][...] = backup[1]
        if status == PLAN_STATUS.NONFINITE_BUFFER:
            raise model.trainer.nonfinite("buffer", where, None, detail)
        if status == PLAN_STATUS.NONFINITE_LOSS:
            raise model.trainer.nonfinite("loss", where, None, f"the loss is {value}")
        if status == PLAN_STATUS.NONFINITE_GRADIENT:
            raise model.trainer.nonfinite("gradient", where, bad, f"the gradient of {model.table.locate(bad)} is "
                                   f"{model.gradients[bad]}")
        if status == PLAN_STATUS.NONFINITE_PARAMETER:
            raise model.trainer.nonfinite("parameters", where, bad, f"the update made {model.table.locate(bad)} "
                                   f"{model.parameters.dtype.type(value)}")
        if status == PLAN_STATUS.NONFINITE_STATE:
            raise model.trainer.nonfinite("parameters", where, None,
                                   f"the update made the optimizer's {_state_keys(opt)[bad]} non-finite")
        if stats["mpi_error"]:
            raise RuntimeError(f"compiled plan: MPI_Allreduce failed with error code {int(stats['mpi_error'])} "
                               f"at epoch {epoch + 1}, batch {done + 1}")
        raise RuntimeError(f"compiled plan: status {PLAN_STATUS(status).label} (a kind outside the table)")
    seen = stats["n_samples"]
    denom = float(stats["weight_sum"]) if W is not None else seen
    logs = {"loss": float(stats["loss_sum"]) if loss.sums else (float(stats["loss_sum"]) / denom if denom > 0 else 0.0)}
    if loss.classification:
        logs["accuracy"] = int(stats["n_correct"]) / loss.n_predictions(int(seen), model.output_shape)
    for met in metrics:
        logs[met.name] = met.result()
    return logs


def _state_keys(opt):
    """The optimizer's state names in the plan's order (s0, s1, s2)."""
    if isinstance(opt, _optim.Adam):
        return ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    if isinstance(opt, _optim.RMSprop):
        return ["square_avg", "grad_avg", "momentum_buffer"]
    if isinstance(opt, _optim.Adagrad):
        return ["sum", None, None]
    return ["momentum_buffer", None, None]
