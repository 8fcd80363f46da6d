"""Training-health diagnostics: per-layer gradient and weight norms, update/weight ratios, dead and saturated units,
and a finite-difference gradient check.

What is measured, per layer (keys of the per-layer dicts):

| key | meaning |
|---|---|
| ``grad_norm`` | L2 norm of the layer's parameter gradients (all its parameters together) |
| ``weight_norm`` | L2 norm of the layer's parameters |
| ``update_ratio`` | norm of the update the optimizer made (parameters after minus before a step) / ``weight_norm`` |
| ``dead_fraction`` | ReLU units (a ``Dense(activation="relu")``, a ``Conv2D`` / ``Conv1D`` with that activation, or a ``ReLU`` layer): the fraction of units whose output is 0 for every sample seen (for N-D outputs, at every position: a convolution's unit is a channel) |
| ``saturated_fraction`` | sigmoid / tanh units: the fraction of (sample, position, unit) outputs that are saturated: sigmoid y < 0.01 or y > 0.99, tanh abs(y) > 0.99 (the derivative is then below about 0.01 / 0.02) |

The unit counters are gathered inside the compiled activation kernels (``act_forward_counted`` in
fastnn/_core/activations.pyx): a layer whose ``_act_counts`` buffer is set counts, per unit, the samples where
it is active (ReLU) or saturated (sigmoid, tanh) in the same pass that computes the activation.  The buffer is
None outside diagnostics, so the normal path runs the plain kernel.  (A fused output activation, one that hands
its logits to the loss, is not counted.)

``model.fit(..., diagnostics=True)`` adds a :class:`Monitor`: ``history.history["diagnostics"]`` is then a
list with one dict per epoch, ``{layer name: {key: value}}``, where ``grad_norm`` and ``update_ratio`` are the
means over the epoch's batches (the gradient as the backward pass left it, before clipping), ``weight_norm``
is measured at the end of the epoch, and the unit fractions count over all the training samples of the epoch.
It warns (:class:`TrainingHealthWarning`, once per problem and layer in a fit call) when

* gradients vanish: a layer's gradient norm is below ``VANISHING`` (1e-3) times that of the output layer (the
  last layer with parameters), i.e. they shrink by three orders of magnitude or more toward the input;
* gradients explode: a layer's gradient norm is above ``EXPLODING`` (1e3) times the output layer's, or has
  grown by that factor since the first epoch of the fit, or is not finite;
* ReLUs die: more than ``DEAD`` (half) of a layer's ReLU units are dead.

Recurrent layers (SimpleRNN, LSTM, GRU: those with a ``step_grad_norms`` attribute) also get ``step_grad_norms``
(a Bidirectional: that of its forward layer, and ``backward_step_grad_norms``): a list, one value per time step
in the order the layer runs its steps (reversed time for ``go_backwards=True``), of the L2 norm over the batch of
the gradient of the loss with respect to the state after that step, ``||dL/dh_s||`` (the gradient reaching step s
from the later steps and from the loss at s), the mean over the epoch's batches (a step that a variable-length
batch did not have counts over the batches that had it).  The kernel computes them in its backward pass while
the diagnostics run (the layer's ``record_step_grad_norms`` flag, restored after the fit), at the cost of one pass
over (n, units) per step.  ``fit`` warns when

* gradients vanish along time: ``step_grad_norms[0] < VANISHING * max(step_grad_norms)``: the gradient that
  reaches the first step is three orders of magnitude or more below the largest, so the layer cannot learn
  dependencies over that span.  The rule uses the largest norm rather than the last step's, because with masked
  sequences the loss enters at each sequence's own last step; with ``return_sequences=True`` the loss enters at
  every step, so the first step's norm holds its own term and this rule fires only when that term vanishes too
  (the long-range part alone is not separable from the recorded norms);
* gradients explode along time: a norm is not finite, or ``step_grad_norms[0] > EXPLODING *
  step_grad_norms[-1]`` (the gradient grows by three orders of magnitude or more on its way back).

``model.diagnose(X, y)`` (:func:`diagnose`) prints the same table for one batch or a whole dataset, and
:func:`gradcheck` compares a model's gradients with central finite differences in float64.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from fastnn._core._threads import get_num_threads
from fastnn._core.kinds import ACT
from fastnn._typing import ArrayLike
from fastnn._validation import check_number
from fastnn.callbacks import Callback

if TYPE_CHECKING:
    from fastnn.model import Model

#: per layer name, its diagnostics ({key: value}, the keys of the module docstring)
Stats = dict[str, dict[str, Any]]
#: a problem found: (kind, layer name, message)
Problem = tuple[str, str, str]

VANISHING = 1e-3     # a gradient norm below this times the output layer's: vanishing
EXPLODING = 1e3      # above this times the output layer's (or times its first-epoch value): exploding
DEAD = 0.5           # more than this fraction of a layer's ReLU units dead: warn

# activation kind -> (its name, what its unit counters measure); the counting is act_forward_counted's
_COUNTED = {kind: (kind.label, key) for kind, key in [
    (ACT.RELU, "dead_fraction"), (ACT.SIGMOID, "saturated_fraction"), (ACT.TANH, "saturated_fraction")]}


class TrainingHealthWarning(UserWarning):
    """Training looks unhealthy: vanishing or exploding gradients, or mostly dead ReLU units."""


# ---------------------------------------------------------------------------------------------- measuring
def _counted_layers(model):
    """[(layer, kind, units, rows per sample)] for the layers whose activation is counted: a Dense or a
    convolution (its channels are its units; every position of a sample is a row) with a counted fused
    activation, and the counted activation layers."""
    from fastnn.layers.activations import Activation
    out = []
    last = model.layers[-1]
    for layer in model.layers:
        # a layer with a fused activation that takes the unit counters (Dense, Conv1D, Conv2D: `_act_counts`)
        if not isinstance(layer, Activation) and hasattr(layer, "_act_counts") and hasattr(layer, "activation"):
            kind = layer.activation.kind
            units = layer.output_shape[-1]
        elif isinstance(layer, Activation):
            kind, units = layer.kind, layer.output_shape[-1]
        else:
            continue
        if kind not in _COUNTED or (layer is last and model.trainer.fused):
            continue
        if None in layer.output_shape:
            if not isinstance(layer, Activation) and _COUNTED[kind][1] == "dead_fraction":
                out.append((layer, kind, units, None))     # dead units need no row count
                continue
            raise ValueError(f"{model.name}: the unit counters of the diagnostics need fixed shapes; layer "
                             f"{layer.name} has the output shape {layer.output_shape} (None: a variable axis)")
        rows = int(np.prod(layer.output_shape[:-1], dtype=np.int64))
        out.append((layer, kind, units, rows))
    return out


class _Counters:
    """The unit-counter buffers of a model's counted layers, attached while diagnostics run."""

    def __init__(self, model):
        slots = max(1, get_num_threads())
        self.layers = _counted_layers(model)
        self.buffers = {}
        for layer, _kind, units, _rows in self.layers:
            self.buffers[layer] = np.zeros((slots, units), dtype=np.int64)
            layer._act_counts = self.buffers[layer]

    def reset(self):
        for buf in self.buffers.values():
            buf[...] = 0

    def close(self):
        for layer in self.buffers:
            layer._act_counts = None

    def fractions(self, n_samples):
        """{layer: (kind, per-unit count)} -> {layer name: {"activation", "dead_fraction" | "saturated_fraction"}}"""
        out = {}
        for layer, kind, units, rows in self.layers:
            counts = self.buffers[layer].sum(axis=0)
            name, key = _COUNTED[kind]
            if key == "dead_fraction":
                value = float(np.mean(counts == 0)) if n_samples else 0.0
            else:
                total = n_samples * rows * units
                value = float(counts.sum() / total) if total else 0.0
            out[layer.name] = {"activation": name, key: value}
        return out


def _param_segments(model):
    """[(layer, [(offset, size), ...])] for the layers with parameters, in graph order."""
    out = []
    for layer in model.layers:
        segs = model.table.segments(layer)
        if segs:
            out.append((layer, segs))
    return out


def _norms(flat, segments):
    """The L2 norm of each layer's part of a flat buffer (float64 accumulation)."""
    res = []
    for _, segs in segments:
        s = 0.0
        for off, size in segs:
            v = flat[off:off + size]
            s += float(np.dot(v, v)) if v.dtype == np.float64 else float(np.dot(v.astype(np.float64), v))
        res.append(math.sqrt(s))
    return res


def _stats(model, segments, grad_norms, weight_norms, update_ratios, fractions, along_time=None):
    """{layer name: {...}} in graph order from the measured pieces."""
    along_time = along_time or {}
    stats = {}
    pos = {layer.name: i for i, (layer, _) in enumerate(segments)}
    for layer in model.layers:
        entry = {}
        i = pos.get(layer.name)
        if i is not None:
            entry["grad_norm"] = grad_norms[i]
            entry["weight_norm"] = weight_norms[i]
            if update_ratios is not None:
                entry["update_ratio"] = update_ratios[i]
        entry.update(fractions.get(layer.name, {}))
        entry.update(along_time.get(layer.name, {}))
        if entry:
            stats[layer.name] = entry
    return stats


# ---------------------------------------------------------------------------------------------- along time
STEP_FLAG = "record_step_grad_norms"   # the recurrent layers' switch: backward then records step_grad_norms
STEP_KEYS = ("step_grad_norms", "backward_step_grad_norms")


def _is_recurrent(layer):
    return hasattr(type(layer), "step_grad_norms") and hasattr(layer, STEP_FLAG)


def _recurrent_layers(model):
    """[(model layer, stats key, recurrent layer)] of the layers that can record the gradient norm reaching each
    time step, in graph order: a SimpleRNN / LSTM / GRU under "step_grad_norms", the two directions of a
    Bidirectional under "step_grad_norms" and "backward_step_grad_norms"."""
    out = []
    for layer in model.layers:
        if _is_recurrent(layer):
            out.append((layer, STEP_KEYS[0], layer))
        else:
            inner = [getattr(layer, "layer", None), getattr(layer, "backward_layer", None)]
            if all(x is not None and _is_recurrent(x) for x in inner):
                out += [(layer, key, x) for key, x in zip(STEP_KEYS, inner)]
    return out


class _StepNorms:
    """Per recurrent layer, the sum over batches of the per-step gradient norms and the count of batches that had
    each step; switches the layers' recording on while it is open."""

    def __init__(self, model):
        self.layers = _recurrent_layers(model)
        self._saved = [(rec, getattr(rec, STEP_FLAG)) for _, _, rec in self.layers]
        for _, _, rec in self.layers:
            setattr(rec, STEP_FLAG, True)
        self.reset()

    def reset(self):
        self.sums = [np.zeros(0) for _ in self.layers]
        self.counts = [np.zeros(0, dtype=np.int64) for _ in self.layers]

    def add(self, weight=1.0):
        """Add the norms of the last backward pass (times ``weight``)."""
        for k, (_, _, rec) in enumerate(self.layers):
            norms = rec.step_grad_norms
            if norms is None:
                continue
            norms = np.asarray(norms, dtype=np.float64).ravel()
            S = len(norms)
            if S > len(self.sums[k]):
                grow = S - len(self.sums[k])
                self.sums[k] = np.concatenate([self.sums[k], np.zeros(grow)])
                self.counts[k] = np.concatenate([self.counts[k], np.zeros(grow, dtype=np.int64)])
            self.sums[k][:S] += weight * norms
            self.counts[k][:S] += 1

    def means(self):
        """{layer name: {"step_grad_norms": [mean per step], ...}} for the layers that recorded something."""
        out = {}
        for k, (layer, key, _) in enumerate(self.layers):
            c = self.counts[k]
            if len(c):
                out.setdefault(layer.name, {})[key] = [float(v) for v in self.sums[k] / np.maximum(c, 1)]
        return out

    def close(self):
        for rec, flag in self._saved:
            setattr(rec, STEP_FLAG, flag)


def find_time_problems(stats: Stats) -> list[Problem]:
    """The vanishing / exploding gradients along time in a stats dict's ``step_grad_norms`` (and a Bidirectional's
    ``backward_step_grad_norms``), by the rules of the module docstring: a list of (kind, name, message), name the
    layer's (with " (backward)" for a Bidirectional's backward direction)."""
    problems = []
    for layer_name, e in stats.items():
        for key in STEP_KEYS:
            g = e.get(key)
            if g and len(g) >= 2:
                name = layer_name if key == STEP_KEYS[0] else layer_name + " (backward)"
                problem = _time_problem(name, np.asarray(g, dtype=np.float64))
                if problem is not None:
                    problems.append(problem)
    return problems


def _time_problem(name, g):
    if not np.isfinite(g).all():
        return ("exploding", name, (
            f"the gradient along time of layer {name} is not finite: gradients explode through its steps; "
            "lower the learning rate or use clip_norm"))
    first, last, peak = float(g[0]), float(g[-1]), float(g.max())
    if peak > 0 and first < VANISHING * peak:
        return ("vanishing", name, (
            f"gradients vanish along time in layer {name}: the gradient norm reaching its first step is "
            f"{first:.2e}, {first / peak:.1e} times the largest over its {len(g)} steps ({peak:.2e}), so it "
            "cannot learn dependencies that span the sequence; LSTM or GRU instead of SimpleRNN, shorter "
            "sequences or orthogonal recurrent weights help"))
    if last > 0 and first > EXPLODING * last:
        return ("exploding", name, (
            f"gradients explode along time in layer {name}: the gradient norm reaching its first step is "
            f"{first:.2e}, {first / last:.1e} times that at its last step ({last:.2e}); lower the learning "
            "rate, use clip_norm, or LSTM / GRU"))
    return None


def find_problems(stats: Stats, first: Stats | None = None) -> list[Problem]:
    """The problems in a per-layer stats dict: a list of (kind, layer name, message), kind one of "vanishing",
    "exploding", "vanishing along time", "exploding along time" (recurrent layers' ``step_grad_norms``),
    "dead".  ``first`` is an earlier stats dict (the first epoch) for the growth test."""
    problems = []
    grads = [(name, e["grad_norm"]) for name, e in stats.items() if "grad_norm" in e]
    if grads:
        out_name, ref = grads[-1]
        bad = [(n, g) for n, g in grads if not math.isfinite(g)]
        if bad:
            problems.append(("exploding", bad[0][0], f"the gradient of layer {bad[0][0]} is not finite "
                             f"({bad[0][1]}): gradients explode; lower the learning rate or use clip_norm"))
        elif ref > 0 and len(grads) > 1:
            # a layer whose ReLUs are mostly dead has a small gradient for that reason: reported as dead below
            vanish = [(n, g) for n, g in grads[:-1] if g < VANISHING * ref
                      and not stats[n].get("dead_fraction", 0.0) > DEAD]
            if vanish:
                n, g = vanish[-1]
                problems.append(("vanishing", n, (
                    f"gradients vanish toward the input: the gradient norm of layer {n} is {g:.2e}, "
                    f"{g / ref:.1e} times that of the output layer {out_name} ({ref:.2e}), so {n} and the "
                    "layers before it barely learn; ReLU activations with he_normal init, BatchNorm or residual "
                    "connections help")))
            explode = [(n, g) for n, g in grads[:-1] if g > EXPLODING * ref]
            if explode:
                n, g = explode[-1]
                problems.append(("exploding", n, (
                    f"gradients explode toward the input: the gradient norm of layer {n} is {g:.2e}, "
                    f"{g / ref:.1e} times that of the output layer {out_name} ({ref:.2e}); lower the learning "
                    "rate, use clip_norm, or normalize (BatchNorm)")))
        if first is not None and not any(p[0] == "exploding" for p in problems):
            for n, g in grads:
                g0 = first.get(n, {}).get("grad_norm")
                if g0 is not None and g0 > 0 and g > EXPLODING * g0:
                    problems.append(("exploding", n, (
                        f"gradients explode: the gradient norm of layer {n} grew from {g0:.2e} to {g:.2e} "
                        "since the first epoch; lower the learning rate or use clip_norm")))
                    break
    problems += [(kind + " along time", name, m) for kind, name, m in find_time_problems(stats)]
    for name, e in stats.items():
        d = e.get("dead_fraction")
        if d is not None and d > DEAD:
            problems.append(("dead", name, (
                f"{d:.0%} of the ReLU units of layer {name} are dead (zero for every sample seen), so they no "
                "longer learn; lower the learning rate, use he_normal init or a smaller negative bias, or "
                "LeakyReLU")))
    return problems


# ---------------------------------------------------------------------------------------------- in fit
class Monitor(Callback):
    """What ``fit(diagnostics=True)`` adds: records the per-layer diagnostics of every epoch in
    ``logs["diagnostics"]`` (so in ``history.history["diagnostics"]``) and warns once per problem and layer
    (see the module docstring).  The model calls ``on_gradients`` after each backward pass, before clipping."""

    def __init__(self) -> None:
        self._counters: _Counters | None = None
        self._warned: set[Any] = set()
        self._first = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        self._segments = _param_segments(model)
        self._counters = _Counters(model)
        self._steps_norms = _StepNorms(model)
        self._before = np.empty_like(model.parameters)
        self._diff = np.empty_like(model.parameters)
        model.trainer.monitor = self
        self._reset()

    def _reset(self):
        k = len(self._segments)
        self._grad_sum = np.zeros(k)
        self._ratio_sum = np.zeros(k)
        self._steps = 0
        self._updates = 0
        self._samples = 0
        self._pending = False
        self._counters.reset()
        self._steps_norms.reset()

    def on_gradients(self) -> None:
        """After the backward pass of a training step, before clipping and the update."""
        model = self.model
        self._grad_sum += _norms(model.gradients, self._segments)
        self._steps_norms.add()
        self._steps += 1
        np.copyto(self._before, model.parameters)
        self._pending = True

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self._samples += int(logs.get("size", 0))
        if self._pending:
            model = self.model
            np.subtract(model.parameters, self._before, out=self._diff)
            upd = _norms(self._diff, self._segments)
            w = _norms(model.parameters, self._segments)
            self._ratio_sum += [u / x if x > 0 else 0.0 for u, x in zip(upd, w)]
            self._updates += 1
            self._pending = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        grads = [float(g) for g in self._grad_sum / max(self._steps, 1)]
        ratios = [float(r) for r in self._ratio_sum / max(self._updates, 1)]
        weights = _norms(model.parameters, self._segments)
        assert self._counters is not None       # made by on_train_begin
        stats = _stats(model, self._segments, grads, weights, ratios, self._counters.fractions(self._samples),
                       self._steps_norms.means())
        if logs is not None:
            logs["diagnostics"] = stats
        for kind, name, message in find_problems(stats, self._first):
            if (kind, name) not in self._warned:
                self._warned.add((kind, name))
                warnings.warn(f"{model.name}: {message} (epoch {epoch + 1})", TrainingHealthWarning,
                              stacklevel=5)   # Monitor <- CallbackList <- Trainer.fit <- Model.fit <- caller
        if self._first is None:
            self._first = stats
        self._reset()

    def close(self) -> None:
        """Detach from the model (the counters off, no more gradient hook); fit calls it in any case."""
        if self._counters is not None:
            self._counters.close()
            self._steps_norms.close()
        if getattr(self, "model", None) is not None and self.model.trainer.monitor is self:
            self.model.trainer.monitor = None


def with_monitor(callbacks: Callback | Sequence[Callback] | None, monitor: Monitor) -> list[Callback]:
    """``callbacks`` (None, one Callback or a list) with ``monitor`` first, so that the others see its logs."""
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    return [monitor] + list(callbacks or [])


# ---------------------------------------------------------------------------------------------- diagnose
class Diagnosis(dict):
    """What :func:`diagnose` returns: ``{layer name: {key: value}}`` (the keys of the module docstring), with
    ``problems`` (a list of (kind, layer name, message)), ``loss`` and ``n_samples`` as attributes."""

    def __init__(self, stats: Stats, problems: list[Problem], loss: float, n_samples: int) -> None:
        super().__init__(stats)
        self.problems = problems
        self.loss = loss
        self.n_samples = n_samples

    def table(self) -> str:
        """The table ``diagnose`` prints, as a string."""
        head = ("layer", "activation", "grad norm", "weight norm", "update/weight", "dead", "saturated")
        rows = [head]

        def f(v, pct=False):
            if v is None:
                return "-"
            return f"{v:.1%}" if pct else f"{v:.3e}"

        for name, e in self.items():
            rows.append((name, e.get("activation", "-"), f(e.get("grad_norm")), f(e.get("weight_norm")),
                         f(e.get("update_ratio")), f(e.get("dead_fraction"), True),
                         f(e.get("saturated_fraction"), True)))
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
        for name, e in self.items():
            g = e.get("step_grad_norms")
            if g:
                lines.append(f"{name} along time ({len(g)} steps, first to last): gradient norm {g[0]:.3e} at the "
                             f"first step, {g[-1]:.3e} at the last, largest {max(g):.3e}")
        lines.append(f"loss {self.loss:.6g} over {self.n_samples} samples")
        lines += [f"problem: {m}" for _, _, m in self.problems] or ["no problem found"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def diagnose(model: Model, X: ArrayLike, y: ArrayLike, batch_size: int | None = None, file: IO[str] | None = None,
             verbose: bool = True) -> Diagnosis:
    """Measure the model's health on (X, y) -- one batch, or a dataset in batches of ``batch_size`` -- print a
    table (when ``verbose``) and return a :class:`Diagnosis`.

    The forward and backward passes run in inference mode (no dropout, BatchNorm with its running statistics),
    so nothing of the model changes: the gradient is that of the loss over all of (X, y) (the weighted sum of
    the batch gradients), ``update_ratio`` is that of the step the optimizer would take from it (taken, then
    undone: parameters, optimizer state and step count restored; no clipping or schedule), and the parameters,
    gradients buffer, optimizer state and mode are as before the call.  The model must be compiled.
    """
    Xc, T = model.trainer.check_Xy(X, y, "diagnose")
    n = Xc.shape[0]
    if n == 0:
        raise ValueError("diagnose: X has no samples")
    bs = n if batch_size is None else check_number("diagnose", "batch_size", batch_size, low=1, integer=True)
    segments = _param_segments(model)
    saved_grads = model.gradients.copy()
    acc = np.zeros(model.gradients.shape, dtype=np.float64)
    counters = _Counters(model)
    step_norms = _StepNorms(model)
    prev, model.training = model.training, False
    total = wsum = 0.0
    masked = model.graph.has_masks
    try:
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            out = model.engine.forward(Xc[start:stop], False, model.trainer.fused)
            loss, _, grad = model.engine.loss_and_grad(model.loss, out, T[start:stop])
            model.engine.backward(grad)
            # a batch's loss is a mean over its samples, or over its real steps when the output is masked: the
            # whole set's is the mean of the batches weighted by those counts (summed losses just add up)
            mask = model.engine.output_mask_value() if masked else None
            w = 1.0 if model.loss.sums else float(stop - start if mask is None else np.count_nonzero(mask))
            acc += w * model.gradients
            step_norms.add()
            total += loss * w
            wsum += w
        if not model.loss.sums and wsum > 0:
            acc /= wsum
            total /= wsum
        grads = _norms(acc, segments)
        ratios = None
        opt = model.optimizer
        if opt is not None and opt._params is model.table.trainable_parameters:
            before = model.parameters.copy()
            state = {k: v.copy() for k, v in opt.state.items()}
            steps = opt.step_count
            np.copyto(model.gradients, acc, casting="unsafe")
            try:
                opt.step()
                upd = _norms(model.parameters - before, segments)
            finally:
                np.copyto(model.parameters, before)
                for k, v in opt.state.items():
                    np.copyto(v, state[k])
                opt.step_count = steps
            ratios = [u / x if x > 0 else 0.0 for u, x in zip(upd, _norms(model.parameters, segments))]
        fractions = counters.fractions(n)
    finally:
        counters.close()
        step_norms.close()
        model.training = prev
        np.copyto(model.gradients, saved_grads)
    stats = _stats(model, segments, grads, _norms(model.parameters, segments), ratios, fractions, step_norms.means())
    result = Diagnosis(stats, find_problems(stats), float(total), n)
    if verbose:
        print(result.table(), file=file or sys.stdout)
    return result


# ---------------------------------------------------------------------------------------------- gradcheck
def _copy_model(model, dtype):
    """A copy of a built model in `dtype` (an in-memory snapshot, ``fastnn.io.snapshot``: architecture,
    weights, buffers, trainable flags, loss)."""
    from fastnn import io as _io
    header, arrays = _io.snapshot(model, include_optimizer=False)
    header["model"]["dtype"] = np.dtype(dtype).name
    arrays = {k: (a.astype(dtype) if a.dtype.kind == "f" else a) for k, a in arrays.items()}
    return _io.build(header, arrays, compile=True)


class GradcheckReport:
    """What :func:`gradcheck` returns.

    Attributes:
        errors: {"layer.param": worst relative error over the checked elements}, in graph order.
        details: {"layer.param": (index of the worst element, analytic, numeric, elements checked)}.
        max_error: the largest of ``errors``; worst: its key.
        tol: the tolerance ``passed`` uses.
        zero: the parameters whose checked analytic gradient is all zeros (nothing was really tested there).
    """

    def __init__(self, errors: dict[str, float], details: dict[str, tuple[Any, ...]], tol: float,
                 zero: list[str]) -> None:
        self.errors, self.details, self.tol, self.zero = errors, details, tol, zero
        self.worst: str | None = max(errors, key=errors.__getitem__) if errors else None
        self.max_error = errors[self.worst] if self.worst is not None else 0.0

    @property
    def passed(self) -> bool:
        """Every worst relative error is at most ``tol``."""
        return self.max_error <= self.tol

    def __str__(self) -> str:
        w = max([len(k) for k in self.errors] + [9])
        lines = [f"{'parameter':<{w}}  {'max rel err':>11}  {'checked':>7}"]
        for k, e in self.errors.items():
            lines.append(f"{k:<{w}}  {e:11.2e}  {self.details[k][3]:7d}")
        lines.append(f"{'passed' if self.passed else 'FAILED'} (tol {self.tol:g}); worst {self.worst} "
                     f"{self.max_error:.2e}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"GradcheckReport(max_error={self.max_error:.3e}, worst={self.worst!r}, passed={self.passed})"


def gradcheck(model: Model, X: ArrayLike, y: ArrayLike, eps: float = 1e-6, max_per_param: int = 64,
              training: bool = True, tol: float = 1e-4, atol: float = 1e-5, seed: int = 0) -> GradcheckReport:
    """Compare the model's parameter gradients with central finite differences, in float64.

    A float32 model is copied to float64 first (the copy is checked); a float64 model is checked in place and
    everything the check touches is restored exactly (parameters, gradient buffer, layer buffers such as
    BatchNorm statistics, the random layers' generator state, the mode), so the model does not change.

    For each parameter array, up to ``max_per_param`` elements (all of them when there are fewer; otherwise a
    random choice from ``seed``) are perturbed by +-eps; the relative error of an element is
    ``|analytic - numeric| / max(|analytic|, |numeric|, atol)``: gradients smaller than ``atol`` are compared
    absolutely, since the rounding noise of a central difference is about ``|loss| * 1e-16 / eps`` (1e-10 to
    1e-9 here).  ``training=True`` checks the training-mode
    function (BatchNorm with batch statistics; dropout and stochastic depth replay the same masks at every
    evaluation, by restoring the layer generator's state); False checks inference mode.  Errors of order
    1e-7..1e-5 are normal (kinks of ReLU can cost more); a wrong backward gives errors near 1.

    Returns a :class:`GradcheckReport` (``report.errors``, ``report.max_error``, ``report.passed``).  ``eps``
    and ``atol`` must be finite and > 0, ``tol`` finite and >= 0, ``max_per_param`` an int >= 1 (else
    ValueError/TypeError naming the argument, before anything runs).
    """
    eps = check_number("gradcheck", "eps", eps, low=0.0, low_open=True)
    atol = check_number("gradcheck", "atol", atol, low=0.0, low_open=True)
    tol = check_number("gradcheck", "tol", tol, low=0.0)
    max_per_param = check_number("gradcheck", "max_per_param", max_per_param, low=1, integer=True)
    model.trainer.require_compiled("gradcheck")
    if not model.built:
        model.trainer.check_X(X, "gradcheck")
    m = model if np.dtype(model.dtype) == np.float64 else _copy_model(model, np.float64)
    if m is not model:
        m.compile(loss=model.loss, optimizer="sgd")      # the very loss (its settings), a throwaway optimizer
    Xc, T = m.trainer.check_Xy(X, y, "gradcheck")
    if Xc.shape[0] == 0:
        raise ValueError("gradcheck: X has no samples")
    saved = None
    if m is model:
        saved = (m.parameters.copy(), m.gradients.copy(),
                 [(buf, np.array(buf, copy=True)) for layer in m.layers for buf in layer.buffers.values()],
                 m.layer_rng.bit_generator.state, m.training)
    rng_state = m.layer_rng.bit_generator.state
    training = bool(training)
    flat = m.parameters
    try:
        def loss_at():
            m.layer_rng.bit_generator.state = rng_state
            out = m.engine.forward(Xc, training, m.trainer.fused)
            return float(m.engine.loss_value(m.loss, out, T)[0])       # mask-aware, as loss_and_grad

        m.layer_rng.bit_generator.state = rng_state
        out = m.engine.forward(Xc, training, m.trainer.fused)
        _, _, grad = m.engine.loss_and_grad(m.loss, out, T)
        m.engine.backward(grad)
        analytic = m.gradients.copy()
        pick = np.random.default_rng(seed)
        errors, details, zero = {}, {}, []
        for layer in m.layers:
            for row in m.table.rows_of(layer):
                pname, off, size = row.name, row.offset, row.size
                idx = np.arange(size) if size <= max_per_param else np.sort(
                    pick.choice(size, max_per_param, replace=False))
                worst, where = -1.0, (-1, math.nan, math.nan)     # replaced by the first element checked
                a_checked = []
                for i in idx:
                    k = off + int(i)
                    old = flat[k]
                    flat[k] = old + eps
                    fp = loss_at()
                    flat[k] = old - eps
                    fm = loss_at()
                    flat[k] = old
                    num = (fp - fm) / (2.0 * eps)
                    a = float(analytic[k])
                    a_checked.append(a)
                    err = abs(a - num) / max(abs(a), abs(num), atol)
                    if err > worst:
                        worst, where = err, (int(i), a, num)
                key = f"{layer.name}.{pname}"
                errors[key] = worst
                details[key] = where + (len(idx),)
                if not any(a_checked):
                    zero.append(key)
    finally:
        if saved is not None:
            params, grads, bufs, state, mode = saved
            np.copyto(m.parameters, params)
            np.copyto(m.gradients, grads)
            for buf, copy in bufs:
                np.copyto(buf, copy)
            m.layer_rng.bit_generator.state = state
            m.training = mode
    return GradcheckReport(errors, details, tol, zero)
