"""The compiled training plan: ``fit`` runs whole epochs in the compiled core (fastnn/_core/plan.pyx).

A model qualifies when it is a chain of compiled layers (``Dense`` without a weight constraint, activation
layers) trained with "cross_entropy" on integer labels or "mse" / "l2" / "mae", by ``SGD``, ``Adam`` or
``AdamW`` (exactly those classes), without sample/class weights, extra metrics, per-step schedules or
callbacks with batch hooks.  Everything else runs on the per-layer path (``Trainer.step``), which stays the
reference: the plan runs the same kernels in the same order on the same buffers, draws the permutation from
``model.rng`` in Python once per epoch as that path does, and gives the same weights (tests/test_plan.py).
"""
import numpy as np

from fastnn import losses as _losses
from fastnn import optim as _optim
from fastnn._core import plan as _k
from fastnn._core._threads import get_num_threads
from fastnn.layers import activations as _act
from fastnn.layers.dense import Dense

_REG_KIND = {_losses.L2: 0, _losses.MSE: 1, _losses.MAE: 2}
_ACT_TYPES = tuple(_act.CLASSES.values())


class TrainPlan:
    """Per-layer descriptors and batch buffers of one model at one batch size."""

    def __init__(self, model, bs, fused=None):
        self.model, self.bs, self.params = model, bs, model.parameters
        fused = model.trainer.fused if fused is None else fused
        dt = model.dtype
        L = len(model.graph.nodes)
        self.spec = np.zeros((L, 7), dtype=np.longlong)
        self.alphas = np.zeros(L, dtype=np.float64)
        self.bufs = np.zeros((L, 5), dtype=np.longlong)
        self._keep = []
        n_in = model.input_shape[0]
        for l, (layer, _) in enumerate(model.graph.nodes):
            last = l == L - 1
            n_out = layer.output_shape[0]
            if isinstance(layer, Dense):
                act = 0 if (last and fused) else layer.activation.kind
                w_off = model.table.offset(layer, "weight")
                b_off = model.table.offset(layer, "bias") if layer.use_bias else -1
                self.spec[l] = (0, act, n_in, n_out, w_off, b_off, int(layer.need_input_grad))
                self.alphas[l] = layer.activation.alpha
            else:
                act = -1 if (last and fused) else layer.kind
                self.spec[l] = (1, act, n_in, n_out, -1, -1, 1)
                self.alphas[l] = layer.alpha
            Z, Y, dZ, dX = (np.empty((bs, n_out), dt), np.empty((bs, n_out), dt), np.empty((bs, n_out), dt),
                            np.empty((bs, n_in), dt))
            self._keep += [Z, Y, dZ, dX]
            out = Z if (self.spec[l, 0] == 0 and act == 0) else Y
            self.bufs[l] = [a.__array_interface__["data"][0] for a in (Z, Y, dZ, dX, out)]
            n_in = n_out
        k = model.output_shape[0]
        self.Xb = np.empty((bs, model.input_shape[0]), dt)
        self.dout = np.empty((bs, k), dt)
        self.labels = np.empty(bs, np.intp)
        self.Tb = np.empty((bs, k), dt)
        self.hyper = np.zeros(6)
        self.stats = np.zeros(5)


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


def predict(model, X):
    """The output for X (float array of the model dtype, C-contiguous, 2-D) through a compiled inference plan
    with buffers kept between calls; None when the model is not a chain of compiled layers or X holds a
    NaN/inf (the caller's general path then predicts or raises its usual error)."""
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
    plan = plans[1].get(bs)
    if plan is None:
        plan = plans[1][bs] = TrainPlan(model, bs, fused=False)
    out = np.empty((n, model.output_shape[0]), dtype=model.dtype)
    if _k.forward_rows(X, out, plan.spec, plan.alphas, plan.bufs, model.parameters, bs, get_num_threads()) >= 0:
        return None
    return out


def plan_for(model, train, bs, metrics, cbs):
    """The compiled plan for this fit call, or None when the model or the call needs the per-layer path."""
    X, T, W = train
    loss, opt = model.loss, model.optimizer
    trainer = model.trainer
    if not trainer.compiled_plan:      # tests switch the plan off to compare the two paths
        return None
    if W is not None or metrics or cbs.batch_hooks or trainer.constrained:
        return None
    # diagnostics read gradients and unit counts from the per-layer path; sampled softmax has its own step
    if trainer.monitor is not None or trainer.sampled is not None:
        return None
    if model.lr_schedule is not None and model.lr_schedule.per_step:
        return None
    if type(opt) not in (_optim.SGD, _optim.Adam, _optim.AdamW):
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
    # the plan addresses frozen layers past the end of the trainable prefix it is given (see fit_epoch)
    if opt._params is not model.table.trainable_parameters or opt._grads is not model.table.trainable_gradients:
        return None
    plan = trainer.train_plan
    if plan is None or plan.bs != bs or plan.params is not model.parameters or plan.model is not model:
        plan = trainer.train_plan = TrainPlan(model, bs)
    return plan


def fit_epoch(model, plan, epoch, train, bs, shuffle):
    """One epoch through the plan; returns the logs as ``Trainer._fit_epoch`` does (raises NonFiniteError).

    The plan gets the optimizer's buffers, the trainable prefix of the model's flat buffers
    (``model.table.trainable_parameters``, the whole buffers when nothing is frozen): the update, clipping and
    the guard's scans cover exactly those elements, while the layers' offsets (``TrainPlan.spec``) address the
    whole buffer from the same start, so a frozen layer (after the prefix) is read in the forward pass and its
    gradient written in the backward pass but never updated."""
    X, T, _ = train
    n = X.shape[0]
    idx = model.rng.permutation(n) if shuffle else None
    opt = model.optimizer
    h = plan.hyper
    if isinstance(opt, _optim.Adam):
        kind = 1
        h[:] = (opt.lr, opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay, float(opt._decoupled))
        states = [opt.state["exp_avg"], opt.state["exp_avg_sq"], opt.state.get("max_exp_avg_sq")]
    else:
        kind = 0
        h[:] = (opt.lr, opt.momentum, opt.dampening, opt.weight_decay, float(opt.nesterov), 0.0)
        states = [opt.state.get("momentum_buffer"), None, None]
    guard = model.nan_guard
    backups = [None, None, None]
    if guard:
        backups = [None if s is None else model.engine.cached(("saved", key, s.shape), lambda s=s: np.empty_like(s))
                   for key, s in zip(_state_keys(opt), states)]
    loss = model.loss
    ce = type(loss) is _losses.CrossEntropy
    stats = plan.stats
    stats[:] = 0.0
    n_batches = -(-n // bs)
    clip_value = -1.0 if model.clip_value is None else model.clip_value
    max_norm = -1.0 if model.clip_norm is None else model.clip_norm
    status, done, bad, value = _k.run_batches(
        X, T, idx, 0, n_batches, bs, plan.spec, plan.alphas, plan.bufs, opt._params, opt._grads,
        plan.Xb, plan.labels if ce else plan.Tb, plan.dout, 0 if ce else 1, 0 if ce else _REG_KIND[type(loss)],
        kind, h, opt.step_count, opt._n_decay, states[0], states[1], states[2], guard,
        model.trainer.guard_backup if guard else None, backups[0], backups[1], backups[2], clip_value, max_norm, stats,
        get_num_threads())
    opt.step_count += done
    model.trainer.guard_backup_steps += int(stats[4])
    if model.clip_norm is not None or model.clip_value is not None:
        model.grad_norm = float(stats[3])
    if status:
        where = (epoch, done)
        if status == 1:
            raise model.trainer.nonfinite("loss", where, None, f"the loss is {value}")
        if status == 2:
            raise model.trainer.nonfinite("gradient", where, bad, f"the gradient of {model.table.locate(bad)} is "
                                   f"{model.gradients[bad]}")
        if status == 3:
            raise model.trainer.nonfinite("parameters", where, bad, f"the update made {model.table.locate(bad)} "
                                   f"{model.parameters.dtype.type(value)}")
        raise model.trainer.nonfinite("parameters", where, None,
                               f"the update made the optimizer's {_state_keys(opt)[bad]} non-finite")
    seen = stats[2]
    logs = {"loss": float(stats[0]) if loss.sums else (float(stats[0]) / seen if seen > 0 else 0.0)}
    if loss.classification:
        logs["accuracy"] = int(stats[1]) / loss.n_predictions(int(seen), model.output_shape)
    return logs


def _state_keys(opt):
    if isinstance(opt, _optim.Adam):
        return ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    return ["momentum_buffer", None, None]
