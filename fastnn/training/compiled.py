"""The compiled training plan: ``fit`` runs the epochs in the compiled core (fastnn/_core/plan.pyx), in chunks of
batches that return to Python about every 0.05 s (Ctrl-C).

A model qualifies when it is a chain of compiled layers (``Dense`` without a weight constraint, activation layers)
trained with "cross_entropy" on integer labels or "mse" / "l2" / "mae", by ``SGD`` (with momentum, Nesterov),
``Adam`` (AMSGrad), ``AdamW``, ``RMSprop`` (momentum, centered) or ``Adagrad`` (exactly those classes), without
sample/class weights, metrics other than accuracy (which the loss kernel counts anyway), per-step schedules or
callbacks with batch hooks, and without masks or multi-output layers (``graph.general``: the plan has no mask).
``fit(verbose=1)``'s progress bar is no batch hook: it is redrawn between chunks (``on_progress``, with the batches
done and their running loss), and validation runs after the epoch, so neither leaves the plan.  Everything else
runs on the per-layer path (``Trainer.step``), which stays the reference: the plan runs the same kernels in the
same order on the same buffers, draws the permutation from ``model.rng`` in Python once per epoch as that path
does, and gives the same weights (tests/test_plan.py).
"""
import time

import numpy as np

from fastnn import losses as _losses
from fastnn import optim as _optim
from fastnn._core import plan as _k
from fastnn._core._threads import get_num_threads
from fastnn._core.kinds import ACT, OPT, PLAN_STATUS
from fastnn.layers import activations as _act
from fastnn.layers.dense import Dense

CHUNK_SECONDS = 0.05      # the time one call into the compiled core runs before returning to Python (Ctrl-C)
_REG_KIND = {cls: cls.kind for cls in (_losses.L2, _losses.MSE, _losses.MAE)}
_ACT_TYPES = tuple(_act.CLASSES.values())


class TrainPlan:
    """Per-layer descriptors and batch buffers of one model at one batch size: ``core``, the compiled plan's
    state (fastnn/_core/plan.pyx ``Plan``), and the buffers it points into."""

    def __init__(self, model, bs, fused=None):
        self.model, self.bs, self.params = model, bs, model.parameters
        self.chunk = 1          # batches per call of run_batches, adapted by fit_epoch
        fused = model.trainer.fused if fused is None else fused
        dt = model.dtype
        L = len(model.graph.nodes)
        self.core = core = _k.Plan(model.parameters, model.gradients, bs, L, model.table.n_trainable)
        n_in = model.input_shape[0]
        for i, (layer, _) in enumerate(model.graph.nodes):
            last = i == L - 1
            n_out = layer.output_shape[0]
            Y, dX = np.empty((bs, n_out), dt), np.empty((bs, n_in), dt)
            if isinstance(layer, Dense):
                act = ACT.IDENTITY if (last and fused) else layer.activation.kind
                b_off = model.table.offset(layer, "bias") if layer.use_bias else -1
                core.dense(i, act, n_in, n_out, model.table.offset(layer, "weight"), b_off,
                           layer.need_input_grad, layer.activation.alpha, np.empty((bs, n_out), dt), Y,
                           np.empty((bs, n_out), dt), dX)
            else:
                core.activation(i, layer.kind, n_out, layer.alpha, Y, dX, passthrough=last and fused)
            n_in = n_out
        k = model.output_shape[0]
        core.batch_buffers(np.empty((bs, model.input_shape[0]), dt), np.empty(bs, np.intp), np.empty((bs, k), dt),
                           np.empty((bs, k), dt))


def _chain_of_compiled_layers(model):
    for i, (layer, src) in enumerate(model.graph.nodes):
        if src != (i - 1,) or len(layer.output_shape) != 1:
            return False
        if type(layer) is Dense:
            if type(layer.activation) not in _ACT_TYPES:
                return False
        elif type(layer) not in _ACT_TYPES:
            return False
    return len(model.input_shape) == 1 and None not in model.input_shape


_MAX_FREE_PLANS = 4     # inference plans kept per row-count class (more are made while more threads predict)


def predict(model, X):
    """The output for X (float array of the model dtype, C-contiguous, 2-D) through a compiled inference plan
    with buffers kept between calls; None when the model is not a chain of compiled layers or X holds a
    NaN/inf (the caller's general path then predicts or raises its usual error).  Thread-safe: each call has a
    plan of its own for its duration (a pool per row-count class)."""
    trainer = model.trainer
    plans = trainer.infer_plans
    if plans is None or plans[0] is not model.parameters:
        if not _chain_of_compiled_layers(model):
            trainer.infer_plans = (model.parameters, None)
            return None
        plans = trainer.infer_plans = (model.parameters, {})
    if plans[1] is None:
        return None
    n = X.shape[0]
    bs = 1 if n == 1 else (64 if n <= 64 else 1024)     # a few sizes: single sample, small batch, chunks
    # the plans of one size are a pool: a call checks one out (list pop and append are atomic under the GIL), so
    # two threads never share a plan's buffers while forward_rows runs without the GIL; none free: make one
    free = plans[1].get(bs)
    if free is None:
        free = plans[1].setdefault(bs, [])
    try:
        plan = free.pop()
    except IndexError:
        plan = TrainPlan(model, bs, fused=False)
    try:
        out = np.empty((n, model.output_shape[0]), dtype=model.dtype)
        status = _k.forward_rows(plan.core, X, out, get_num_threads())
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
    if model.graph.general:            # masks or multi-output layers: the plan cannot honour them
        return None
    if W is not None or metrics or cbs.batch_hooks or trainer.constrained:
        return None
    # diagnostics read gradients and unit counts from the per-layer path; sampled softmax has its own step
    if trainer.monitor is not None or trainer.sampled is not None:
        return None
    if model.lr_schedule is not None and model.lr_schedule.per_step:
        return None
    if type(opt) not in (_optim.SGD, _optim.Adam, _optim.AdamW, _optim.RMSprop, _optim.Adagrad):
        return None
    if model.table.n_trainable == 0:      # everything frozen: the per-layer path (which updates nothing)
        return None
    if type(loss) is _losses.CrossEntropy:
        if T.ndim != 1:
            return None
    elif type(loss) not in _REG_KIND:
        return None
    if len(model.input_shape) != 1 or X.ndim != 2 or None in model.input_shape:
        return None
    for i, (layer, src) in enumerate(model.graph.nodes):
        if src != (i - 1,) or len(layer.output_shape) != 1:
            return None
        if type(layer) is Dense:
            if layer.has_constraint or type(layer.activation) not in _ACT_TYPES:
                return None
        elif type(layer) not in _ACT_TYPES:
            return None
    # the plan updates the trainable prefix of the flat buffers, the one the optimizer is bound to (see fit_epoch)
    # (Trainer.check_optimizer has checked this at the start of fit; the plan checks again, as it writes through
    # raw pointers: never another model's buffers, never state of another size)
    if (opt._params is not model.table.trainable_parameters or opt._grads is not model.table.trainable_gradients
            or any(a.shape != opt._params.shape for a in opt.state.values())):
        raise RuntimeError(f"compiled plan: {model.name}'s optimizer is not bound to its parameters")
    plan = trainer.train_plan
    if plan is None or plan.bs != bs or plan.params is not model.parameters or plan.model is not model:
        plan = trainer.train_plan = TrainPlan(model, bs)
    return plan


def fit_epoch(model, plan, epoch, train, bs, shuffle, cbs=None):
    """One epoch through the plan; returns the logs as ``Trainer._fit_epoch`` does (raises NonFiniteError).
    `cbs` (a CallbackList, or None): its progress display (``on_progress``) is called after every chunk.

    The plan holds the model's whole flat buffers, which the layers' offsets address, and the length of their
    trainable prefix (``model.table.n_trainable``, the optimizer's buffers): the update, clipping and the guard's
    scans cover exactly those elements, so a frozen layer (after the prefix) is read in the forward pass and its
    gradient written in the backward pass but never updated.

    The epoch runs in chunks of batches (``plan.chunk``, adapted so that a chunk takes about CHUNK_SECONDS; the
    first chunk of a new plan is one batch): between chunks control returns to Python, so that Ctrl-C
    (KeyboardInterrupt) stops training within about that time, at a batch boundary, with the weights, the
    optimizer state and ``optimizer.step_count`` all holding exactly the batches applied (the partial epoch is
    not counted in ``epochs_trained`` or the history; ``fit`` can be called again).  A chunk costs one Python
    round trip and one scan of the parameters by the guard, nothing measurable at that size."""
    X, T, _ = train
    n = X.shape[0]
    idx = model.rng.permutation(n) if shuffle else None
    opt = model.optimizer
    core = plan.core
    # data-parallel (fastnn/distributed.py): the plan allreduces through MPI_Allreduce itself, and its batches are
    # this rank's shares of global batches of bs * size rows
    dist = model.trainer._dist
    hook = None if dist is None else dist.plan_hook(model.dtype)
    core.allreduce(*(hook or ()))
    gbs = bs * (1 if hook is None else dist.size)
    core.loss(model.loss.kind)
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
    step0, b = opt.step_count, 0
    status = PLAN_STATUS.DONE
    try:
        # the epoch in chunks of about CHUNK_SECONDS: each returns to Python, where a pending KeyboardInterrupt
        # (Ctrl-C) is raised at a batch boundary; the chunk size adapts to the time of the last chunk
        while b < n_batches:
            b1 = min(b + plan.chunk, n_batches)
            t0 = time.perf_counter()
            status, done, bad, value = _k.run_batches(core, X, T, idx, b, b1, step0 + b, n_threads)
            b += done
            if status != PLAN_STATUS.DONE:
                break
            if progress:
                s = core.stats
                cbs.on_progress(b, float(s["batch_loss_sum"]) / max(float(s["n_samples"]), 1.0))
            dt = time.perf_counter() - t0      # per batch run (the epoch's last chunk may be short)
            plan.chunk = max(1, min(int(done * CHUNK_SECONDS / max(dt, 1e-6)), 16 * plan.chunk))
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
    logs = {"loss": float(stats["loss_sum"]) if loss.sums else (float(stats["loss_sum"]) / seen if seen > 0 else 0.0)}
    if loss.classification:
        logs["accuracy"] = int(stats["n_correct"]) / loss.n_predictions(int(seen), model.output_shape)
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
