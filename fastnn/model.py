"""Models: a graph of layers, its flat parameter buffer, and training / inference over it.

``Input`` makes a symbolic tensor; calling a layer on tensors makes new ones; ``Model(inputs, outputs)``
orders the layers topologically.  ``Sequential`` is the special case of a chain, run by the same engine.
Forward runs the nodes in topological order; backward runs them in exactly the reverse order, and the
gradients of a tensor used by several layers are summed.

All of a model's parameters live in one contiguous array (``model.parameters``) and their gradients in
another (``model.gradients``); each layer's parameters are views into them.  Parameters that take weight
decay come first, so an optimizer applies decay to a prefix of the buffer.

The training loop (``fit``) is split into helpers: ``_fit_prepare`` (data, weights, validation split),
``_fit_callbacks``, ``_fit_epoch`` (batches of one epoch) and ``_epoch_logs``; ``_step`` is one update with
the NaN/inf guard around the optimizer step.
"""
import sys
import time

import numpy as np

from fastnn import callbacks as _callbacks
from fastnn import losses as _losses
from fastnn import metrics as _metrics
from fastnn import optim as _optim
from fastnn.training import compiled as _plan
from fastnn.errors import NonFiniteError
from fastnn._core import guard as _guard
from fastnn.callbacks import History
from fastnn import schedules as _schedules
from fastnn._core import clip as _clip
from fastnn._core._threads import get_num_threads
from fastnn._validation import as_float_array, check_dtype, check_number
from fastnn.graph import Graph, Input, Tensor  # noqa: F401  (Tensor, Input: re-exported)
from fastnn.layers.base import Layer
from fastnn.params import ParameterTable


def _check_seed(owner, seed):
    if seed is None:
        return None
    return check_number(owner, "seed", seed, low=0, integer=True)


class Model:
    """A network: a graph of layers from ``inputs`` (a tensor from ``fastnn.Input``) to ``outputs``.

    Args:
        inputs: the model's input tensor.
        outputs: the output tensor (a layer's output that depends on ``inputs``).
        seed: seeds the weight initialization, the shuffling and every random layer (int, or None for fresh
            entropy).
        dtype: "float32" (default) or "float64".

    Example::

        x = fnn.Input(64)
        h = fnn.layers.Dense(128, activation="relu")(x)
        model = fnn.Model(x, fnn.layers.Dense(10)(h), seed=0)
    """

    def __init__(self, inputs, outputs, seed=0, dtype="float32", name=None):
        self._init_common(seed, dtype, name)
        self._build_graph(inputs, outputs)

    # ================================================================== construction
    def _init_common(self, seed, dtype, name):
        owner = type(self).__name__
        self.seed = _check_seed(owner, seed)
        self.dtype = check_dtype(owner, dtype)
        self.name = name or owner.lower()
        ss = np.random.SeedSequence(self.seed)
        init_ss, shuffle_ss, layer_ss = ss.spawn(3)
        self._init_rng = np.random.Generator(np.random.PCG64(init_ss))
        self.rng = np.random.Generator(np.random.PCG64(shuffle_ss))         # shuffling
        self.layer_rng = np.random.Generator(np.random.PCG64(layer_ss))     # random layers (dropout, ...)
        self.built = False
        self.loss = None
        self.optimizer = None
        self._fused = False
        self._sampled = None       # a fastnn._sampled.SampledOutput when the loss is SampledSoftmax
        self._caches = {}
        self.nan_guard = True          # see _step; compile(nan_guard=False) / fit(nan_guard=False) turn it off
        self._guard_backup = None      # the parameters before the last update (reused buffer)
        self._guard_backup_steps = 0   # compiled-plan steps whose update the guard had to back up (see _plan)
        self.stop_training = False     # set by callbacks to end fit after the current batch
        self.epochs_trained = 0        # epochs completed by fit (saved, so that a resumed run knows where it is)
        self.history = None            # the History of the last fit
        self.training = False    # the mode of a forward pass: fit/train_on_batch switch to True, predict to False
        self.clip_norm = self.clip_value = self.lr_schedule = None
        self.grad_norm = None    # global gradient norm of the last step, when clipping is on
        self._base_lr = None
        self._constrained = []
        self._diagnostics = None # a fastnn.diagnostics.Monitor during fit(diagnostics=True), else None

    def _build_graph(self, inputs, outputs):
        graph = Graph(inputs, outputs, owner=self.name)
        self.graph = graph
        self.input_shape = graph.input_shape
        self.output_shape = graph.output_shape
        self._plan = graph.nodes
        self._fanout = graph.fanout
        nodes = graph.nodes
        self._values = [None] * len(nodes)
        self._gvalues = [None] * len(nodes)
        self._allocate_parameters()
        self.built = True
        if self.loss is not None:
            self._attach_training()

    def _allocate_parameters(self):
        """The parameter table (flat buffers, decayed parameters first; layers get views) and the generators."""
        self.table = ParameterTable(self.graph.layers, self.dtype, self._init_rng)
        self.parameters = self.table.parameters
        self.gradients = self.table.gradients
        self._n_decay = self.table.n_decay
        for layer, _ in self._plan:
            if hasattr(layer, "_attach_rng"):
                layer._attach_rng(self.layer_rng)

    @property
    def layers(self):
        """The layers, in the order they run."""
        return [layer for layer, _ in self._plan]

    def count_params(self):
        """The number of scalar parameters."""
        return int(self.parameters.size)

    def summary(self, file=None):
        """Print a table of the layers, their output shapes and parameter counts."""
        file = file or sys.stdout
        rows = [("layer", "output shape", "params")]
        for layer, _ in self._plan:
            n = sum(int(np.prod(v.shape)) for v in layer.params.values())
            rows.append((repr(layer), "(None, " + ", ".join(map(str, layer.output_shape)) + ")", str(n)))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}", file=file)
        print(f"total parameters: {self.count_params()} ({np.dtype(self.dtype).name})", file=file)

    # ================================================================== training / inference mode
    def train(self, mode=True):
        """Put the model in training mode (dropout active, batch statistics in BatchNorm); returns the model.

        ``fit`` and ``train_on_batch`` run in training mode and ``predict`` / ``evaluate`` in inference mode
        whatever the current mode, and restore the previous mode afterwards (as ``model.train()`` /
        ``model.eval()`` do in torch).
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{self.name}: train(mode) takes a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        return self

    def eval(self):
        """Put the model in inference mode (no dropout, running statistics in BatchNorm); returns the model."""
        return self.train(False)

    def _set_mode(self, training):
        """Set the mode and return the previous one (so that callers can restore it)."""
        prev, self.training = self.training, bool(training)
        return prev

    # ================================================================== compile
    def compile(self, loss, optimizer="adam", clip_norm=None, clip_value=None, lr_schedule=None, nan_guard=True):
        """Set the loss and the optimizer.  Never re-initializes or re-allocates the weights.

        Args:
            loss: a name from ``fastnn.losses.REGISTRY`` ("cross_entropy", "mse", ...) or a Loss.
            optimizer: a name (its defaults) or an optimizer from ``fastnn.optim``.
            clip_norm: if given, after each backward the flat gradient is scaled by clip_norm / (norm + 1e-6)
                when its global L2 norm exceeds clip_norm (torch.nn.utils.clip_grad_norm_).
            clip_value: if given, each gradient element is clamped to [-clip_value, clip_value] first
                (torch.nn.utils.clip_grad_value_).
            lr_schedule: a ``fastnn.schedules`` schedule; it sets ``optimizer.lr`` from the optimizer's lr at
                this call (the base lr), at the start of every epoch of ``fit`` (or before every step when
                the schedule has ``per_step=True``).
            nan_guard: check every training step for NaN/inf (loss, gradients, updated parameters) and stop
                with NonFiniteError, weights rolled back (see ``_step``).  On by default.
        """
        loss = _losses.get(loss)
        optimizer = _optim.get(optimizer)
        if not isinstance(nan_guard, (bool, np.bool_)):
            raise TypeError(f"compile: nan_guard must be a bool, got {type(nan_guard).__name__}")
        clip_norm = None if clip_norm is None else check_number("compile", "clip_norm", clip_norm, low=0.0)
        clip_value = None if clip_value is None else check_number("compile", "clip_value", clip_value, low=0.0,
                                                                  low_open=True)
        if lr_schedule is not None and not isinstance(lr_schedule, _schedules.Schedule):
            raise TypeError(f"compile: lr_schedule must be a fastnn.schedules.Schedule or None, got "
                            f"{type(lr_schedule).__name__}")
        self.nan_guard = bool(nan_guard)
        self.loss, self.optimizer = loss, optimizer
        self.clip_norm, self.clip_value, self.lr_schedule = clip_norm, clip_value, lr_schedule
        self._base_lr = optimizer.lr
        if self.built:
            self._attach_training()
        return self

    def _attach_training(self):
        out_layer = self._plan[-1][0]
        self._fused = self.loss.fuses is not None and out_layer.fusable == self.loss.fuses
        self._sampled = None
        if getattr(self.loss, "sampled", False):       # SampledSoftmax: _step trains through fastnn.training.sampled
            from fastnn.training.sampled import SampledOutput
            self._sampled = SampledOutput(self)
        self.optimizer._bind(self.parameters, self.gradients, self._n_decay)
        if self._guard_backup is None or self._guard_backup.shape != self.parameters.shape:
            self._guard_backup = np.empty_like(self.parameters)
        self._constrained = [l for l, _ in self._plan if getattr(l, "constraint", None) is not None]

    def _require_compiled(self, what):
        if self.loss is None:
            raise RuntimeError(f"{self.name}: call compile(loss=..., optimizer=...) before {what}")

    # ================================================================== execution engine
    def _forward(self, X, training=None, logits=False):
        if training is None:
            training = self.training
        vals = self._values
        last = len(self._plan) - 1
        for i, (layer, src) in enumerate(self._plan):
            if layer.n_inputs == 1:
                s = src[0]
                x = X if s < 0 else vals[s]
            else:
                x = [X if s < 0 else vals[s] for s in src]
            if logits and i == last:
                vals[i] = layer.forward(x, training, logits=True)
            else:
                vals[i] = layer.forward(x, training)
        return vals[last]

    def _backward(self, d_out, start=None):
        """Backward from the output (or from node `start`, whose output's gradient is d_out)."""
        grads = self._gvalues
        last = len(self._plan) - 1 if start is None else start
        grads[last] = d_out
        for i in range(last, -1, -1):
            g = grads[i]
            grads[i] = None
            layer, src = self._plan[i]
            if g is None:
                continue
            dx = layer.backward(g)
            dxs = dx if layer.n_inputs != 1 else (dx,)
            for s, d in zip(src, dxs):
                if s < 0 or d is None:
                    continue
                if self._fanout[s] == 1:
                    grads[s] = d
                elif grads[s] is None:
                    acc = self._cached(("acc", s, d.shape), lambda: np.empty(d.shape, dtype=self.dtype))
                    np.copyto(acc, d)
                    grads[s] = acc
                else:
                    np.add(grads[s], d, out=grads[s])

    def _cached(self, key, make):
        buf = self._caches.get(key)
        if buf is None:
            if len(self._caches) > 64:
                self._caches.clear()
            buf = self._caches[key] = make()
        return buf

    def _loss_and_grad(self, out, targets, weights=None):
        grad = self._cached(("dout", out.shape), lambda: np.empty(out.shape, dtype=self.dtype))
        loss, correct = self.loss(out, targets, grad, weights)
        return loss, correct, grad

    def _step(self, Xb, Tb, where, Wb=None):
        """One forward, loss, backward and update; returns (loss before the update, n_correct).

        `where` is (epoch, batch), 0-based, or a text, for the error message; `Wb` per-sample weights or None.

        The NaN/inf guard (``self.nan_guard``, on by default; off, nothing is checked) keeps the weights at their last finite state:
        a non-finite loss stops before the backward pass, a non-finite gradient (one pass of the compiled
        ``guard.first_nonfinite`` over the flat gradient buffer) before the update; both leave weights and
        optimizer state untouched.  An update can still overflow from finite gradients, so the parameters
        are copied into one reused buffer before the update and checked after it (a second pass); a
        non-finite parameter (or optimizer state) restores both from the copy, step count included.  Cost
        per step: read passes over the gradients, parameters and optimizer state and one copy of the
        parameters and the state, no allocation.
        """
        guard = self.nan_guard
        if self._sampled is not None:      # sampled softmax: forward, sampled loss, backward (fastnn/training/sampled.py)
            loss, correct = self._sampled.forward_backward(Xb, Tb, Wb, where)
        else:
            prev = self._set_mode(True)
            try:
                out = self._forward(Xb, True, self._fused)
            finally:
                self._set_mode(prev)
            loss, correct, grad = self._loss_and_grad(out, Tb, Wb)
            if guard and not np.isfinite(loss):
                raise self._nonfinite("loss", where, None, f"the loss is {loss}")
            self._backward(grad)
        if guard:
            bad = _guard.first_nonfinite(self.gradients)
            if bad >= 0:
                raise self._nonfinite("gradient", where, bad, f"the gradient of {self._locate(bad)} is "
                                      f"{self.gradients[bad]}")
            saved = self._save_training_state()
        self._clip_gradients()      # after the gradient check: a NaN norm would spread over every gradient
        self._schedule_step()
        self.optimizer.step()
        if guard:
            bad = _guard.first_nonfinite(self.parameters)
            if bad >= 0:
                value = self.parameters[bad]
                self._restore_training_state(saved)
                raise self._nonfinite("parameters", where, bad, f"the update made {self._locate(bad)} {value}")
            for key, arr in self.optimizer.state.items():
                if _guard.first_nonfinite(arr) >= 0:
                    self._restore_training_state(saved)
                    raise self._nonfinite("parameters", where, None,
                                          f"the update made the optimizer's {key} non-finite")
        self._apply_constraints()
        return loss, correct

    def _save_training_state(self):
        """Copy the parameters, the optimizer state and its step count into reused buffers (no allocation)."""
        opt = self.optimizer
        np.copyto(self._guard_backup, self.parameters)
        copies = {}
        for k, a in opt.state.items():
            buf = self._cached(("saved", k, a.shape), lambda: np.empty_like(a))
            np.copyto(buf, a)
            copies[k] = buf
        return copies, opt.step_count

    def _restore_training_state(self, saved):
        copies, step_count = saved
        np.copyto(self.parameters, self._guard_backup)
        for k, v in self.optimizer.state.items():
            np.copyto(v, copies[k])
        self.optimizer.step_count = step_count

    def _nonfinite(self, what, where, index, detail):
        if isinstance(where, tuple):
            epoch, batch = where[0] + 1, where[1] + 1
            at = f"at epoch {epoch}, batch {batch}"
        else:
            epoch = batch = None
            at = where
        rolled = ("restored to their values before this batch's update" if what == "parameters"
                  else "those from before this batch")
        return NonFiniteError(f"{self.name}: {detail} {at}; training stopped and the weights are {rolled} "
                              "(lower the learning rate, or check the data)", what, epoch, batch, index)

    def _locate(self, index):
        return self.table.locate(index)

    # small hooks of _step and fit: clipping, schedules, constraints
    def _clip_gradients(self):
        """Clip the flat gradient buffer in place (one compiled pass) if compile asked for it."""
        if self._diagnostics is not None:    # fit(diagnostics=True): measure the gradient before clipping
            self._diagnostics.on_gradients()
        if self.clip_norm is not None or self.clip_value is not None:
            self.grad_norm = _clip.clip_gradients(
                self.gradients, -1.0 if self.clip_value is None else self.clip_value,
                -1.0 if self.clip_norm is None else self.clip_norm, get_num_threads())

    def _apply_schedule(self, epoch):
        """Set the learning rate for `epoch` (0-based) from a per-epoch schedule; called by fit per epoch."""
        if self.lr_schedule is not None and not self.lr_schedule.per_step:
            self.optimizer.lr = self.lr_schedule(epoch, self._base_lr)

    def _schedule_step(self):
        """Set the learning rate for the coming step from a per-step schedule (t = steps taken so far)."""
        if self.lr_schedule is not None and self.lr_schedule.per_step:
            self.optimizer.lr = self.lr_schedule(self.optimizer.step_count, self._base_lr)

    def _apply_constraints(self):
        """Apply the layers' weight constraints (e.g. Dense max_norm) after an optimizer step."""
        for layer in self._constrained:
            layer._apply_constraint()

    # ================================================================== input checking
    def _check_X(self, X, owner, allow_build=True):
        X = as_float_array(owner, "X", X, self.dtype)
        if X.ndim < 2:
            raise ValueError(f"{owner}: X must have shape (n_samples, features...), got {X.shape}")
        if not self.built and allow_build:
            self._build_from_data(X.shape[1:])
        if X.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"{owner}: X must have shape (n, {', '.join(map(str, self.input_shape))}) for this "
                             f"model's input, got {X.shape}")
        return X

    def _build_from_data(self, feature_shape):
        raise RuntimeError(f"{self.name}: model is not built")

    def _check_Xy(self, X, y, owner):
        self._require_compiled(owner)
        X = self._check_X(X, owner)
        T = self.loss.prepare_targets(y, X.shape[0], self.output_shape, self.dtype, owner=f"{owner}: y")
        return X, T

    # ================================================================== public training API
    def train_on_batch(self, X, y):
        """One forward, backward and update on the batch (X, y); returns the loss of that forward pass."""
        X, T = self._check_Xy(X, y, "train_on_batch")
        if X.shape[0] == 0:
            raise ValueError("train_on_batch: the batch is empty")
        loss, _ = self._step(X, T, "in train_on_batch")
        return loss

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_split=0.0, validation_data=None,
            metrics=None, class_weight=None, sample_weight=None, initial_epoch=0, callbacks=None, verbose=0,
            nan_guard=None, diagnostics=False):
        """Train in mini-batches, epochs ``initial_epoch`` .. ``epochs - 1``; returns a History.

        Args:
            X: inputs, shape (n, *input_shape).  y: targets (see the loss).
            epochs: the index of the last epoch + 1 (as Keras: with initial_epoch=k, epochs - k are run).
            batch_size: samples per update (the last batch may be smaller).
            shuffle: reshuffle the samples every epoch with the model's seeded generator.
            validation_split: a fraction in [0, 1): the last samples of (X, y) (before any shuffling, as Keras)
                are held out and evaluated after every epoch.  Ignored when validation_data is given.
            validation_data: (X_val, y_val) or (X_val, y_val, sample_weight_val), evaluated after every epoch.
            metrics: names or fastnn.metrics.Metric objects: "accuracy", "top_k_accuracy", "mae", "mse", "r2"
                (see fastnn.metrics); "accuracy" is always reported for classification losses.
            class_weight: "balanced" (n / (n_classes * count of the class), as sklearn computes it, over the
                training labels) or a dict {class: weight} (missing classes weigh 1); training only.
            sample_weight: per-sample weights (n,), >= 0; multiplied by the class weights.  The loss becomes the
                weighted mean sum(w l) / sum(w) (torch's definition; see fastnn.losses).
            initial_epoch: the epoch to start at (resuming: ``model.epochs_trained`` of a loaded checkpoint).
            callbacks: fastnn.callbacks.Callback objects.
            verbose: 0 silent; 1 a live progress bar on a terminal (one line per epoch when stdout is not a
                terminal); 2 one line per epoch.
            nan_guard: override the compile setting for this call (see ``_step``).
            diagnostics: record per-layer training-health diagnostics every epoch in
                ``history.history["diagnostics"]`` (one dict per epoch, {layer name: {"grad_norm", "weight_norm",
                "update_ratio", "dead_fraction" | "saturated_fraction"}}) and warn (TrainingHealthWarning) once
                when gradients vanish or explode or a layer's ReLUs are mostly dead (see fastnn.diagnostics).

        ``history.history["loss"]`` is the (weighted) mean training loss of each epoch over its batches (for
        "l2", which sums over samples, the epoch's sum), measured while training; "accuracy" likewise for
        classification losses; the other metrics are measured on the same forward passes; "val_..." are
        evaluated in inference mode after the epoch; "time" is the epoch's seconds.
        """
        owner = "fit"
        epochs = check_number(owner, "epochs", epochs, low=1, integer=True)
        initial_epoch = check_number(owner, "initial_epoch", initial_epoch, low=0, integer=True)
        batch_size = check_number(owner, "batch_size", batch_size, low=1, integer=True)
        verbose = check_number(owner, "verbose", verbose, low=0, high=2, integer=True)
        if nan_guard is not None and not isinstance(nan_guard, (bool, np.bool_)):
            raise TypeError(f"fit: nan_guard must be a bool or None, got {type(nan_guard).__name__}")
        train, val, metric_objs = self._fit_prepare(X, y, validation_split, validation_data, metrics,
                                                    class_weight, sample_weight)
        n = train[0].shape[0]
        bs = min(batch_size, n)
        n_batches = -(-n // bs)
        history = History()
        monitor = None
        if diagnostics:
            from fastnn import diagnostics as _diagnostics
            monitor = _diagnostics.Monitor()
            callbacks = _diagnostics.with_monitor(callbacks, monitor)
        cbs = self._fit_callbacks(callbacks, history, verbose, epochs, n_batches)
        saved_guard = self.nan_guard
        if nan_guard is not None:
            self.nan_guard = bool(nan_guard)
        self.stop_training = False
        self.history = history
        logs = {}
        try:
            cbs.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                t0 = time.perf_counter()
                self._apply_schedule(epoch)      # before the callbacks, so that a LearningRateScheduler wins
                cbs.on_epoch_begin(epoch)
                logs = self._fit_epoch(epoch, train, bs, shuffle, metric_objs, cbs)
                if val is not None:
                    vlogs = self._evaluate_arrays(val[0], val[1], None, val[2], metric_objs)
                    logs.update({"val_" + k: v for k, v in vlogs.items()})
                logs["time"] = time.perf_counter() - t0
                self.epochs_trained = epoch + 1
                cbs.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            cbs.on_train_end(logs)
        finally:
            self.nan_guard = saved_guard
            if monitor is not None:
                monitor.close()
        return history

    # ------------------------------------------------------------------ fit helpers
    def _fit_prepare(self, X, y, validation_split, validation_data, metrics, class_weight, sample_weight):
        """Checked training arrays (X, T, W), validation arrays or None, and the Metric objects."""
        owner = "fit"
        X, T = self._check_Xy(X, y, owner)
        n = X.shape[0]
        if n == 0:
            raise ValueError("fit: X has no samples")
        validation_split = check_number(owner, "validation_split", validation_split, low=0.0, high=1.0,
                                        high_open=True)
        SW = None if sample_weight is None else self._check_weights(sample_weight, n, "fit: sample_weight")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError("fit: validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            Xv, Tv = self._check_Xy(validation_data[0], validation_data[1], "fit: validation_data")
            if Xv.shape[0] == 0:
                raise ValueError("fit: validation_data has no samples")
            Wv = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                Wv = self._check_weights(validation_data[2], Xv.shape[0], "fit: validation_data sample_weight")
            val = (Xv, Tv, Wv)
        elif validation_split > 0:
            split = int(n * (1.0 - validation_split))
            if split < 1 or split >= n:
                raise ValueError(f"fit: validation_split={validation_split} leaves {split} of {n} samples for "
                                 "training; both parts must be non-empty")
            val = (X[split:], T[split:], None if SW is None else SW[split:])
            X, T, n = X[:split], T[:split], split
            SW = None if SW is None else SW[:split]
        W = SW
        if class_weight is not None:
            CW = self._class_weights(class_weight, T)
            W = CW if W is None else (W * CW).astype(self.dtype)
        if W is not None and not float(W.sum(dtype=np.float64)) > 0:
            raise ValueError("fit: the sample weights (times the class weights) sum to 0; nothing to train on")
        objs = []
        for spec in ([metrics] if isinstance(metrics, (str, _metrics.Metric)) else (metrics or [])):
            m = _metrics.get(spec)
            want = "classification" if self.loss.classification else "regression"
            if m.kind != want:
                raise ValueError(f"fit: metric {m.name!r} applies to {m.kind} losses, the loss "
                                 f"{self.loss.name!r} is not one")
            if isinstance(m, _metrics.Accuracy):
                continue      # reported anyway, from the loss kernel's count
            if any(o.name == m.name for o in objs):
                raise ValueError(f"fit: metric {m.name!r} given twice")
            objs.append(m)
        if objs and self._sampled is not None:
            raise ValueError("fit: with sampled_softmax the training step does not compute the full output, so "
                             "metrics other than accuracy cannot be measured in fit; use evaluate(..., metrics=...)")
        return (X, T, W), val, objs

    def _check_weights(self, w, n, owner):
        arr = np.asarray(w)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{owner}: must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != (n,):
            raise ValueError(f"{owner}: must have shape ({n},), one weight per sample, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"{owner}: weights must be finite and >= 0")
        return arr

    def _class_weights(self, class_weight, T):
        """Per-sample weights from class weights; the class of a sample is its label, the argmax of a
        probability row, or (one sigmoid output) target > 0.5."""
        if T.ndim == 1:
            classes = T
        elif isinstance(self.loss, _losses.CrossEntropy):
            classes = np.argmax(T, axis=1)
        elif T.ndim == 2 and T.shape[1] == 1 and isinstance(self.loss, _losses.BinaryCrossEntropy):
            classes = (T[:, 0] > 0.5).astype(np.intp)
        else:
            raise ValueError("fit: class_weight needs class targets (cross_entropy labels or rows, or one "
                             "binary_cross_entropy output)")
        counts = np.bincount(classes)
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"fit: class_weight must be 'balanced' or a dict, got {class_weight!r}")
            present = counts > 0
            table = np.ones(counts.size)
            table[present] = classes.size / (present.sum() * counts[present])
        elif isinstance(class_weight, dict):
            table = np.ones(max(counts.size, 1 + max((k for k in class_weight if isinstance(k, (int, np.integer))),
                                                    default=-1)))
            for k, v in class_weight.items():
                if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                    raise ValueError(f"fit: class_weight keys must be class indices >= 0, got {k!r}")
                table[k] = check_number("fit", f"class_weight[{k}]", v, low=0.0)
        else:
            raise TypeError(f"fit: class_weight must be 'balanced' or a dict, got {type(class_weight).__name__}")
        return np.ascontiguousarray(table[classes], dtype=self.dtype)

    def _fit_callbacks(self, callbacks, history, verbose, epochs, n_batches):
        if isinstance(callbacks, _callbacks.Callback):
            callbacks = [callbacks]
        cbs = list(callbacks or [])
        if verbose == 1 and getattr(sys.stdout, "isatty", lambda: False)():
            cbs.append(_callbacks.ProgressBar(epochs, n_batches))
        elif verbose:
            cbs.append(_callbacks.EpochLogger(epochs))
        cbs.append(history)
        return _callbacks.CallbackList(cbs, self)

    def _fit_epoch(self, epoch, train, bs, shuffle, metrics, cbs):
        """The batches of one epoch; returns the epoch's logs (loss, accuracy, metrics)."""
        plan = _plan.plan_for(self, train, bs, metrics, cbs)
        if plan is not None:    # the compiled training plan: the whole epoch in the compiled core
            return _plan.fit_epoch(self, plan, epoch, train, bs, shuffle)
        X, T, W = train
        n = X.shape[0]
        # a fresh permutation each epoch: it depends only on the generator state, so a run resumed from a
        # checkpoint shuffles exactly as the uninterrupted run
        idx = self.rng.permutation(n) if shuffle else None
        for m in metrics:
            m.reset()
        hooks = cbs.batch_hooks
        sums = self.loss.sums
        total, wtotal, seen, correct = 0.0, 0.0, 0, 0
        for b, start in enumerate(range(0, n, bs)):
            stop = min(start + bs, n)
            m = stop - start
            if hooks:
                cbs.on_batch_begin(b, {"batch": b, "size": m})
            if shuffle:
                Xb, Tb, Wb = self._gather(X, T, W, idx[start:stop])
            else:
                Xb, Tb, Wb = X[start:stop], T[start:stop], None if W is None else W[start:stop]
            loss, c = self._step(Xb, Tb, (epoch, b), Wb)
            if Wb is not None:
                ws = float(Wb.sum(dtype=np.float64))
                total += loss if sums else loss * ws
                wtotal += ws
            else:
                total += loss if sums else loss * m
            seen += m
            correct += c
            if metrics:
                out = self._values[-1]
                for met in metrics:
                    met.update(out, Tb)
            if hooks:
                cbs.on_batch_end(b, {"batch": b, "size": m, "loss": loss})
            if self.stop_training:
                break
        denom = wtotal if W is not None else seen
        logs = {"loss": total if sums else (total / denom if denom > 0 else 0.0)}
        if self.loss.classification:
            logs["accuracy"] = correct / self.loss.n_predictions(seen, self.output_shape)
        for met in metrics:
            logs[met.name] = met.result()
        return logs

    def _gather(self, X, T, W, sel):
        m = sel.shape[0]
        Xb = self._cached(("xb", m), lambda: np.empty((m,) + X.shape[1:], dtype=X.dtype))
        Tb = self._cached(("tb", m, T.dtype.str), lambda: np.empty((m,) + T.shape[1:], dtype=T.dtype))
        np.take(X, sel, axis=0, out=Xb, mode="clip")
        np.take(T, sel, axis=0, out=Tb, mode="clip")
        Wb = None
        if W is not None:
            Wb = self._cached(("wb", m), lambda: np.empty(m, dtype=W.dtype))
            np.take(W, sel, out=Wb, mode="clip")
        return Xb, Tb, Wb

    # ================================================================== public inference API
    def predict(self, X, batch_size=None):
        """The network's output for X (inference mode), as a new array of shape (n, *output_shape).

        A model ending in softmax (or sigmoid) returns probabilities, also when its loss is fused.
        """
        if (type(X) is np.ndarray and batch_size is None and X.dtype == self.dtype and X.ndim == 2
                and self.built and X.shape[0] > 0 and X.shape[1:] == self.input_shape and X.flags.c_contiguous):
            out = _plan.predict(self, X)       # fast path: a compiled inference plan, no per-layer Python
            if out is not None:
                return out
        X = self._check_X(X, "predict")
        n = X.shape[0]
        out = np.empty((n,) + tuple(self.output_shape), dtype=self.dtype)
        if n == 0:
            return out
        bs = n if batch_size is None else check_number("predict", "batch_size", batch_size, low=1, integer=True)
        prev = self._set_mode(False)
        try:
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                out[start:stop] = self._forward(X[start:stop], False)
        finally:
            self._set_mode(prev)
        return out

    def predict_classes(self, X, threshold=0.5, batch_size=None):
        """Class decisions for X (inference mode).

        - Multi-label / one-vs-all (the model ends in a sigmoid, or its loss is "binary_cross_entropy", whose
          logits are passed through the sigmoid here): an int8 array of 0/1 of shape (n, k), 1 where the
          probability exceeds ``threshold``; (n,) for a model with one output (yes/no).
        - Otherwise (softmax, cross_entropy, sampled_softmax): the index of the largest output, (n,) intp.
        """
        threshold = check_number("predict_classes", "threshold", threshold, low=0.0, high=1.0)
        out = self.predict(X, batch_size)
        out = out.reshape(out.shape[0], -1)
        layer = self._plan[-1][0] if self.built else None
        if getattr(layer, "fusable", None) == "sigmoid" or isinstance(self.loss, _losses.BinaryCrossEntropy):
            if getattr(layer, "fusable", None) != "sigmoid":
                with np.errstate(over="ignore"):
                    out = 1.0 / (1.0 + np.exp(-out.astype(np.float64)))
            labels = (out > threshold).astype(np.int8)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        return np.argmax(out, axis=1)

    def evaluate(self, X, y, batch_size=None, sample_weight=None, metrics=None):
        """The loss (and accuracy, for classification losses; and the given metrics) on (X, y) in inference
        mode, as a dict.  ``sample_weight`` weights the loss as in fit."""
        X, T = self._check_Xy(X, y, "evaluate")
        if X.shape[0] == 0:
            raise ValueError("evaluate: X has no samples")
        if batch_size is not None:
            batch_size = check_number("evaluate", "batch_size", batch_size, low=1, integer=True)
        W = None if sample_weight is None else self._check_weights(sample_weight, X.shape[0],
                                                                   "evaluate: sample_weight")
        objs = [m for m in (_metrics.get(s) for s in ([metrics] if isinstance(metrics, (str, _metrics.Metric))
                                                       else (metrics or [])))
                if not isinstance(m, _metrics.Accuracy)]
        prev = self._set_mode(False)
        try:
            return self._evaluate_arrays(X, T, batch_size, W, objs)
        finally:
            self._set_mode(prev)

    def _evaluate_arrays(self, X, T, batch_size=None, W=None, metrics=()):
        n = X.shape[0]
        bs = n if batch_size is None else batch_size
        total, wtotal, correct = 0.0, 0.0, 0
        for m in metrics:
            m.reset()
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            out = self._forward(X[start:stop], False, self._fused)
            Wb = None if W is None else W[start:stop]
            loss, c = self.loss(out, T[start:stop], None, Wb)
            if Wb is not None:
                ws = float(Wb.sum(dtype=np.float64))
                total += loss if self.loss.sums else loss * ws
                wtotal += ws
            else:
                total += loss if self.loss.sums else loss * (stop - start)
            correct += c
            for m in metrics:
                m.update(out, T[start:stop])
        denom = wtotal if W is not None else n
        logs = {"loss": total if self.loss.sums else (total / denom if denom > 0 else 0.0)}
        if self.loss.classification:
            logs["accuracy"] = correct / self.loss.n_predictions(n, self.output_shape)
        for m in metrics:
            logs[m.name] = m.result()
        return logs

    def diagnose(self, X, y, batch_size=None, file=None, verbose=True):
        """Print a table of per-layer training-health numbers for (X, y) -- gradient and weight norms,
        update/weight ratio, dead ReLU and saturated sigmoid/tanh fractions -- and return them (a
        ``fastnn.diagnostics.Diagnosis``: {layer name: {...}}, with ``.problems``).  Changes nothing; see
        ``fastnn.diagnostics.diagnose``."""
        from fastnn import diagnostics as _diagnostics
        return _diagnostics.diagnose(self, X, y, batch_size=batch_size, file=file, verbose=verbose)

    # ================================================================== saving
    def save(self, path, include_optimizer=True):
        """Save the model to one file (fastnn.io's format): architecture, weights, layer buffers, loss,
        optimizer and its state, generator states, ``epochs_trained``.  The write is atomic."""
        from fastnn import io as _io
        _io.save(self, path, include_optimizer=include_optimizer)

    def __repr__(self):
        state = f"{len(self._plan)} layers, {self.count_params()} parameters" if self.built else "not built"
        return f"{type(self).__name__}({state}, dtype={np.dtype(self.dtype).name})"


class Sequential(Model):
    """A chain of layers, each fed by the previous one.

    Args:
        layers: the layers, first to last.
        input_dim: the number of input features (or the input shape as a tuple).  Given, the model is built
            (weights allocated and initialized) at construction; otherwise on the first fit/predict.
        seed, dtype: as for Model.

    Example::

        model = fnn.Sequential([fnn.layers.Dense(128, activation="relu"), fnn.layers.Dense(10)], input_dim=64)
    """

    def __init__(self, layers=None, input_dim=None, seed=0, dtype="float32", name=None):
        self._init_common(seed, dtype, name)
        self._layers = []
        for layer in (layers or []):
            self.add(layer)
        if input_dim is not None:
            self._build_from_data(Input(input_dim).shape)

    def add(self, layer):
        """Append a layer (before the model is built)."""
        if self.built:
            raise RuntimeError(f"{self.name}: cannot add layers to a built model")
        if not isinstance(layer, Layer):
            raise TypeError(f"{self.name}: expected a fastnn layer, got {type(layer).__name__}")
        if layer._in_graph or any(layer is l for l in self._layers):
            raise ValueError(f"{self.name}: layer {layer.name} is already used in a model")
        self._layers.append(layer)

    @property
    def layers(self):
        return list(self._layers)

    def _build_from_data(self, feature_shape):
        if not self._layers:
            raise ValueError(f"{self.name}: the model has no layers")
        x = inp = Input(feature_shape)
        try:
            for layer in self._layers:
                x = layer(x)
        except Exception:
            for layer in self._layers:
                layer._in_graph = False
            raise
        self._build_graph(inp, x)
