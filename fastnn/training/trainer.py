"""The trainer: fit, evaluate, train_on_batch and the guarded training step of a model.

``Trainer(model)`` keeps what training needs beside the model's public settings (``model.loss``,
``model.optimizer``, ``model.nan_guard``, ``clip_norm``, ``clip_value``, ``lr_schedule``): whether the loss
is fused with the output layer (``fused``), the sampled-softmax step (``sampled``), the NaN guard's backup
(``guard_backup``), the layers with weight constraints (``constrained``) and the diagnostics monitor of a
``fit(diagnostics=True)`` (``monitor``).  It runs the network through the executor (``model.engine``) and
finds parameters through the table (``model.table``).

``fit`` is split into helpers: ``_fit_prepare`` (data, weights, validation split), ``_fit_callbacks``,
``_fit_epoch`` (the batches of one epoch: the compiled plan, ``fastnn.training.compiled``, when the model and
the call qualify, else the per-layer loop) and ``step``, one update with the NaN/inf guard around the
optimizer step.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union, cast

import numpy as np

from fastnn import callbacks as _callbacks
from fastnn import engine as _engine
from fastnn import graph as _graph
from fastnn import losses as _losses
from fastnn import metrics as _metrics
from fastnn._core import clip as _clip
from fastnn._core import guard as _guard
from fastnn._core import losses as _kloss
from fastnn._core._threads import get_num_threads
from fastnn._validation import as_float_array, as_index_array, check_number
from fastnn.callbacks import History
from fastnn.errors import NonFiniteError
from fastnn.layers.normalization import BatchNorm
from fastnn.training import compiled as _compiled

if TYPE_CHECKING:
    from fastnn._typing import NDArray
    from fastnn.distributed import DataParallel
    from fastnn.engine import Executor
    from fastnn.layers.base import Layer
    from fastnn.model import Model
    from fastnn.optim import Optimizer
    from fastnn.training.sampled import SampledOutput

ArrayLike = Any                                   # numpy arrays, or what np.asarray takes (as fastnn.model)

MetricSpec = Union[str, _metrics.Metric]          # a metric name or a fastnn.metrics.Metric
#: a batch's place for error messages: (epoch, batch), 0-based, or a text
Where = Union[tuple[int, int], str]


class Trainer:
    """Training and evaluation of `model` (a ``fastnn.Model``); `build(feature_shape)` builds an unbuilt model
    from the shape of the first data it sees (Sequential without input_dim), or raises.

    Attributes:
        fused: the loss takes the output layer's logits (its softmax/sigmoid is fused into the loss).
        sampled: the ``fastnn.training.sampled.SampledOutput`` of a SampledSoftmax loss, else None.
        guard_backup: the parameters before the last update (a reused buffer of the NaN guard).
        buffer_backup: the layer buffers before the last guarded step and their reused copies (see
            ``_buffer_backups``); None until the first guarded step after compile.
        guard_backup_steps: compiled-plan steps whose update the guard had to back up (see compiled.py).
        constrained: the layers with a weight constraint, applied after every update.
        monitor: the ``fastnn.diagnostics.Monitor`` during ``fit(diagnostics=True)``, else None.
        base_lr: the optimizer's lr at compile, the base of ``lr_schedule``.
        compiled_plan: False runs every fit on the per-layer path (tests compare the two paths).
        distributed: the ``fastnn.distributed.DataParallel`` of the last ``fit(distributed=...)``, else None
            (``Model.save`` then writes on rank 0 only).
        train_plan, infer_plans: the compiled plans kept between calls (see compiled.py).
    """

    def __init__(self, model: Model, build: Callable[[tuple[int | None, ...]], None]) -> None:
        self.model = model
        self.build = build
        self.fused = False
        self.sampled: SampledOutput | None = None
        self.guard_backup = None
        self._saved = None       # the update's backup while a guarded step runs (restored on Ctrl-C)
        self.buffer_backup = None
        self.guard_backup_steps = 0
        self.constrained: list[Layer] = []
        self.monitor = None
        self.base_lr = None
        self.compiled_plan = True
        self.train_plan = None
        self.infer_plans = None
        self.tuner = None       # the per-layer path's ThreadTuner ("auto" thread count, compiled.BatchTuning)
        # the fastnn.distributed.DataParallel of the last distributed fit (save: rank 0)
        self.distributed: DataParallel | None = None
        self._dist: DataParallel | None = None       # the DataParallel while a distributed fit runs
        self._train_lock = threading.RLock()     # held by the thread that runs fit / train_on_batch

    def _set_mode(self, training):
        """Set the model's mode and return the previous one (so that callers can restore it)."""
        prev, self.model.training = self.model.training, bool(training)
        return prev

    def attach(self) -> None:
        """Bind the compiled loss and optimizer to the built model (the model calls it at compile and build)."""
        model = self.model
        out_layer = model.graph.nodes[-1][0]
        self.fused = (model.loss.fuses is not None and out_layer.fusable == model.loss.fuses
                      and model.graph.output_index is None)
        self.sampled = None
        if getattr(model.loss, "sampled", False):       # SampledSoftmax: step trains through sampled.py
            from fastnn.training.sampled import SampledOutput
            self.sampled = SampledOutput(model)
        table, opt = model.table, cast("Optimizer", model.optimizer)      # compiled: attach runs after compile
        if opt.owner() is not model:      # compile claims it (Optimizer._claim); never bind another model's optimizer
            raise RuntimeError(f"{model.name}: the optimizer {type(opt).__name__} trains another model; call "
                               f"{model.name}.compile(...) with an optimizer of its own")
        old_prefix = table.trainable_parameters
        moves = table.relayout()        # the trainable flags take effect here (Keras: at compile)
        if moves is not None:
            model.parameters, model.gradients = table.parameters, table.gradients
            self.train_plan = self.infer_plans = None        # they hold the old buffers' addresses
        if moves is not None and opt._params is old_prefix:
            opt._rebind(table.trainable_parameters, table.trainable_gradients, table.n_decay, moves)
        else:
            opt._bind(table.trainable_parameters, table.trainable_gradients, table.n_decay)
        if self.guard_backup is None or self.guard_backup.shape != table.trainable_parameters.shape:
            self.guard_backup = np.empty_like(table.trainable_parameters)
        self.constrained = [layer for layer in model.graph.layers if layer.has_constraint]
        self.buffer_backup = None       # rebuilt at the next guarded step, for the layers' current buffers

    def check_trainable(self, owner: str) -> None:
        """Raise a RuntimeError naming the layers whose ``trainable`` flag changed since the last compile (the
        change takes effect at compile, as in Keras, and is never half-applied)."""
        table = self.model.table
        if table.trainable_changed():
            names = ", ".join(f"{layer.name} ({'frozen' if id(layer) in table.frozen else 'trainable'} as "
                              "compiled)" for layer in table.changed_layers())
            raise RuntimeError(f"{owner}: trainable was changed on {names} since the model was compiled; call "
                               f"{self.model.name}.compile(...) again to apply it (it takes effect at compile, "
                               "as in Keras)")

    def check_optimizer(self, owner: str) -> None:
        """Raise a RuntimeError unless the optimizer is bound to this model's trainable buffers with state of
        their size (an optimizer updates exactly the buffers it is bound to: never another model's)."""
        model = self.model
        opt = cast("Optimizer", model.optimizer)      # not None: the model is compiled (require_compiled)
        table = model.table
        if (opt.owner() is not model or opt._params is not table.trainable_parameters
                or opt._grads is not table.trainable_gradients
                or any(a.shape != opt._params.shape for a in opt.state.values())):
            raise RuntimeError(f"{owner}: {model.name}'s optimizer {type(opt).__name__} is not bound to its "
                               f"parameters (was model.optimizer replaced, or the optimizer given to another "
                               f"model?); call {model.name}.compile(...) with an optimizer of its own")

    def require_compiled(self, what: str) -> None:
        """Raise a RuntimeError naming `what` when the model has no loss yet."""
        model = self.model
        if model.loss is None:
            raise RuntimeError(f"{model.name}: call compile(loss=..., optimizer=...) before {what}")

    def step(self, Xb: NDArray[Any], Tb: NDArray[Any], where: Where,
             Wb: NDArray[Any] | None = None) -> tuple[float, int]:
        """One forward, loss, backward and update; returns (loss before the update, n_correct).

        `where` is (epoch, batch), 0-based, or a text, for the error message; `Wb` per-sample weights or None.

        The NaN/inf guard (``model.nan_guard``, on by default; off, nothing is checked) keeps the weights at
        their last finite state:
        a non-finite loss stops before the backward pass, a non-finite gradient (one pass of the compiled
        ``guard.first_nonfinite`` over the trainable part of the flat gradient buffer, what the optimizer
        updates) before the update; both leave weights and optimizer state untouched.  An update can still
        overflow from finite gradients, so the trainable parameters are copied into one reused buffer before
        the update and checked after it (a second pass); a non-finite parameter (or optimizer state) restores
        both from the copy, step count included.  Cost per step: read passes over the gradients, parameters
        and optimizer state and one copy of the parameters and the state, no allocation.

        Layer buffers (BatchNorm's running statistics, which the forward pass updates) are copied into reused
        buffers before the forward pass, only for the layers that have them, and checked after the backward
        pass: a non-finite buffer (e.g. a running variance overflowed by one huge sample) raises NonFiniteError
        ``what="buffer"`` naming the layer and buffer, and every NonFiniteError of the step restores them, so
        that the model is left exactly as before the step.  A KeyboardInterrupt (Ctrl-C) anywhere in a guarded
        step restores the same way, so an interrupted ``fit`` holds exactly the batches applied before it.
        """
        model = self.model
        guard = model.nan_guard
        if not guard:
            return self._step(Xb, Tb, where, Wb, False, ())
        buffers = self._buffer_backups()
        for _, _, _, buf, copy in buffers:     # the forward pass updates them (BatchNorm's running statistics)
            np.copyto(copy, buf)
        self._saved = None
        try:
            return self._step(Xb, Tb, where, Wb, True, buffers)
        except NonFiniteError:
            for _, _, _, buf, copy in buffers:
                np.copyto(buf, copy)
            raise
        except KeyboardInterrupt:
            # Ctrl-C anywhere in the step: the model is left as before this batch (buffers, and once the update's
            # backup was taken, parameters, optimizer state and step count), so that fit can go on from there
            for _, _, _, buf, copy in buffers:
                np.copyto(buf, copy)
            if self._saved is not None:
                self._restore_training_state(self._saved)
            raise
        finally:
            self._saved = None

    def _step(self, Xb, Tb, where, Wb, guard, buffers):
        """``step`` between the buffers' backup and their restore on NonFiniteError (`buffers`, checked after
        the forward and backward passes when `guard`)."""
        model = self.model
        if self.sampled is not None:      # sampled softmax: forward, sampled loss, backward (sampled.py)
            loss, correct = self.sampled.forward_backward(Xb, Tb, Wb, where)
        else:
            prev = self._set_mode(True)
            try:
                out = model.engine.forward(Xb, True, self.fused)
            finally:
                self._set_mode(prev)
            loss, correct, grad = model.engine.loss_and_grad(model.loss, out, Tb, Wb)
            if self._dist is not None:     # data-parallel: the global batch's loss; the gradient scaled to its share
                loss, correct = self._dist.combine_loss(self, loss, correct, grad, Xb.shape[0], Wb)
            if guard and not np.isfinite(loss):
                raise self.nonfinite("loss", where, None, f"the loss is {loss}")
            model.engine.backward(grad)
        if self._dist is not None:         # data-parallel: the global batch's gradient on every rank
            self._dist.reduce_gradients(model.table.trainable_gradients)
        # the guard scans what the optimizer updates: the trainable prefix of the flat buffers (frozen layers'
        # gradients are computed but never applied)
        if guard:
            for layer, name, arr, buf, _ in buffers:
                bad = _guard.first_nonfinite(buf)
                if bad >= 0:
                    at = ", ".join(str(int(i)) for i in np.unravel_index(bad, arr.shape))
                    raise self.nonfinite("buffer", where, None, f"the forward pass made the buffer "
                                         f"{layer.name}.{name}[{at}] {buf[bad]}")
            grads = model.optimizer._grads
            bad = _guard.first_nonfinite(grads)
            if bad >= 0:
                raise self.nonfinite("gradient", where, bad, f"the gradient of {model.table.locate(bad)} is "
                                      f"{grads[bad]}")
            saved = self._saved = self._save_training_state()
        self._clip_gradients()      # after the gradient check: a NaN norm would spread over every gradient
        self._schedule_step()
        model.optimizer.step()
        if guard:
            params = model.optimizer._params
            bad = _guard.first_nonfinite(params)
            if bad >= 0:
                value = params[bad]
                self._restore_training_state(saved)
                raise self.nonfinite("parameters", where, bad, f"the update made {model.table.locate(bad)} {value}")
            for key, arr in model.optimizer.state.items():
                if _guard.first_nonfinite(arr) >= 0:
                    self._restore_training_state(saved)
                    raise self.nonfinite("parameters", where, None,
                                          f"the update made the optimizer's {key} non-finite")
        self._apply_constraints()
        return loss, correct

    def _buffer_backups(self):
        """[(layer, name, buffer, flat view of it, flat copy)] for every floating-point layer buffer (BatchNorm's
        running statistics), the copies kept between steps; rebuilt when a layer's buffer is a new array (after compile
        or build, or a replaced buffer).  Empty for a model without buffers."""
        entries = self.buffer_backup
        if entries is not None:
            for layer, name, arr, _, _ in entries:
                if layer.buffers.get(name) is not arr:
                    entries = None
                    break
        if entries is None:
            entries = []
            for layer in self.model.graph.layers:
                for name, arr in layer.buffers.items():
                    if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.flags.c_contiguous:
                        flat = arr.reshape(-1)
                        entries.append((layer, name, arr, flat, np.empty_like(flat)))
            self.buffer_backup = entries
        return entries

    def _save_training_state(self):
        """Copy the parameters, the optimizer state and its step count into reused buffers (no allocation)."""
        model = self.model
        opt = model.optimizer
        np.copyto(self.guard_backup, opt._params)
        copies = {}
        for k, a in opt.state.items():
            buf = model.engine.cached(("saved", k, a.shape), lambda a=a: np.empty_like(a))
            np.copyto(buf, a)
            copies[k] = buf
        return copies, opt.step_count

    def _restore_training_state(self, saved):
        model = self.model
        copies, step_count = saved
        np.copyto(model.optimizer._params, self.guard_backup)
        for k, v in model.optimizer.state.items():
            np.copyto(v, copies[k])
        model.optimizer.step_count = step_count

    def nonfinite(self, what: str, where: Where, index: int | None, detail: str) -> NonFiniteError:
        """The NonFiniteError for `what` ("loss", "gradient", "buffer", "parameters") at `where` ((epoch, batch)
        0-based, or a text), flat index `index` (or None), with the message `detail`."""
        epoch: int | None       # 1-based in the error, None for a text `where`
        batch: int | None
        if isinstance(where, tuple):
            epoch, batch = where[0] + 1, where[1] + 1
            at = f"at epoch {epoch}, batch {batch}"
        else:
            epoch = batch = None
            at = where
        rolled = ("restored to their values before this batch's update" if what == "parameters"
                  else "those from before this batch")
        return NonFiniteError(f"{self.model.name}: {detail} {at}; training stopped and the weights are {rolled} "
                              "(lower the learning rate, or check the data)", what, epoch, batch, index)

    def _clip_gradients(self):
        """Clip the trainable part of the flat gradient buffer in place (one compiled pass) if compile asked
        for it."""
        model = self.model
        if self.monitor is not None:    # fit(diagnostics=True): measure the gradient before clipping
            self.monitor.on_gradients()
        if model.clip_norm is not None or model.clip_value is not None:
            model.grad_norm = _clip.clip_gradients(
                model.optimizer._grads, -1.0 if model.clip_value is None else model.clip_value,
                -1.0 if model.clip_norm is None else model.clip_norm, get_num_threads())

    def _apply_schedule(self, epoch):
        """Set the learning rate for `epoch` (0-based) from a per-epoch schedule; called by fit per epoch."""
        model = self.model
        if model.lr_schedule is not None and not model.lr_schedule.per_step:
            model.optimizer.lr = model.lr_schedule(epoch, self.base_lr)

    def _schedule_step(self):
        """Set the learning rate for the coming step from a per-step schedule (t = steps taken so far)."""
        model = self.model
        if model.lr_schedule is not None and model.lr_schedule.per_step:
            model.optimizer.lr = model.lr_schedule(model.optimizer.step_count, self.base_lr)

    def _apply_constraints(self):
        """Apply the layers' weight constraints (e.g. Dense max_norm) after an optimizer step."""
        for layer in self.constrained:
            layer.apply_constraint()

    # ================================================================== input checking
    def check_X(self, X: ArrayLike, owner: str, allow_build: bool = True) -> NDArray[Any]:
        """X as a float array of the model dtype with the model's input shape (builds an unbuilt model from
        it when `allow_build`); errors name `owner`.  A model whose input feeds Embedding layers
        (``graph.integer_input``) keeps X as integers (int32 or int64; other integers and floats holding whole
        numbers become int64); each Embedding checks the range of the ids it reads."""
        model = self.model
        if not model.built and allow_build and isinstance(X, np.ndarray) and X.dtype.kind in "iu" and X.ndim >= 2:
            self.build(X.shape[1:])          # ids: build first, so that the graph says whether the input takes ids
        if model.built and model.graph.integer_input:
            X = as_index_array(owner, "X", X)
        else:
            X = as_float_array(owner, "X", X, model.dtype)
        if X.ndim < 2:
            raise ValueError(f"{owner}: X must have shape (n_samples, features...), got {X.shape}")
        if not model.built and allow_build:
            self.build(X.shape[1:])
            if model.graph.integer_input:
                X = as_index_array(owner, "X", X)
        if not _graph.matches(X.shape[1:], model.input_shape):
            raise ValueError(f"{owner}: X must have shape (n, {', '.join(map(str, model.input_shape))}) for this "
                             f"model's input, got {X.shape}")
        return X

    def check_Xy(self, X: ArrayLike, y: ArrayLike, owner: str) -> tuple[NDArray[Any], NDArray[Any]]:
        """(X, T): checked inputs and the loss's prepared targets (the model must be compiled)."""
        model = self.model
        self.require_compiled(owner)
        X = self.check_X(X, owner)
        T = model.loss.prepare_targets(y, X.shape[0], self.output_shape_for(y), model.dtype, owner=f"{owner}: y")
        return X, T

    def output_shape_for(self, y: NDArray[Any]) -> tuple[int | None, ...]:
        """The model's output shape per sample, a variable (None) axis sized as the targets' same axis (the
        targets of such a model are shaped as its outputs); the output shape itself when it has none."""
        shape = self.model.output_shape
        if not _graph.is_variable(shape):
            return shape
        ys = np.shape(y)[1:]
        resolved = tuple(ys[i] if d is None and i < len(ys) else d for i, d in enumerate(shape))
        if _graph.is_variable(resolved):
            raise ValueError(f"{self.model.name}: the output shape {shape} has a variable axis, which the targets "
                             f"of shape {np.shape(y)} do not size; give targets shaped as the outputs")
        return resolved

    # ================================================================== public training API
    @contextlib.contextmanager
    def exclusive(self, owner: str) -> Iterator[None]:
        """Hold the model's training for this thread (``Model.fit`` and ``train_on_batch`` run inside it): fit and
        train_on_batch on another thread meanwhile raise a RuntimeError naming the model (they would share the layers'
        buffers and the optimizer state).  The same thread may enter again (a callback's train_on_batch inside fit);
        predict and evaluate never wait."""
        if not self._train_lock.acquire(blocking=False):
            raise RuntimeError(f"{owner}: {self.model.name} is being trained on another thread (fit or "
                               "train_on_batch); train a model from one thread at a time (predict and evaluate "
                               "may run beside it)")
        try:
            yield
        finally:
            self._train_lock.release()

    def train_on_batch(self, X: ArrayLike, y: ArrayLike) -> float:
        X, T = self.check_Xy(X, y, "train_on_batch")
        self.check_trainable("train_on_batch")
        self.check_optimizer("train_on_batch")
        if X.shape[0] == 0:
            raise ValueError("train_on_batch: the batch is empty")
        loss, _ = self.step(X, T, "in train_on_batch")
        return loss

    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_split: float = 0.0, validation_data: tuple | None = None,
            metrics: MetricSpec | Sequence[MetricSpec] | None = None, class_weight: str | dict | None = None,
            sample_weight: ArrayLike | None = None, initial_epoch: int = 0, callbacks: Any = None, verbose: int = 0,
            nan_guard: bool | None = None, diagnostics: bool = False, distributed: Any = None) -> History:
        """``Model.fit`` (see its docstring for the arguments); returns a History."""
        model = self.model
        owner = "fit"
        epochs = check_number(owner, "epochs", epochs, low=1, integer=True)
        initial_epoch = check_number(owner, "initial_epoch", initial_epoch, low=0, integer=True)
        batch_size = check_number(owner, "batch_size", batch_size, low=1, integer=True)
        verbose = check_number(owner, "verbose", verbose, low=0, high=2, integer=True)
        if nan_guard is not None and not isinstance(nan_guard, (bool, np.bool_)):
            raise TypeError(f"fit: nan_guard must be a bool or None, got {type(nan_guard).__name__}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"fit: shuffle must be a bool, got {type(shuffle).__name__} {shuffle!r}")
        dist = None
        if distributed is not None:
            from fastnn.distributed import DataParallel
            if not isinstance(distributed, DataParallel):
                raise TypeError(f"fit: distributed must be a fastnn.distributed.DataParallel or None, got "
                                f"{type(distributed).__name__}")
            dist = distributed
        train, val, metric_objs = self._fit_prepare(X, y, validation_split, validation_data, metrics,
                                                    class_weight, sample_weight)
        self.check_trainable("fit")
        self.check_optimizer("fit")
        if dist is not None and self.sampled is not None:
            raise ValueError("fit: distributed training does not support the sampled_softmax loss (its step "
                             "computes part of the output only); train it in one process")
        n = train[0].shape[0]
        if dist is None:
            bs = min(batch_size, n)
            n_batches = -(-n // bs)
            sizes = {bs, n - (n_batches - 1) * bs}          # the batch sizes of an epoch
        else:      # batch_size per rank: a global batch of batch_size * size rows, split over the ranks
            bs = min(batch_size, -(-n // dist.size))
            n_batches = -(-n // (bs * dist.size))
            last = n - (n_batches - 1) * bs * dist.size
            if dist.sync_batchnorm:
                sizes = {bs * dist.size, last}
            else:                                     # local statistics: the rows of one rank's shard
                sizes = {bs} | {(r + 1) * last // dist.size - r * last // dist.size for r in range(dist.size)}
                if 0 in sizes:
                    sizes.add(1)
            if dist.rank != 0:
                verbose = 0
        for layer in model.graph.layers:
            if isinstance(layer, BatchNorm):            # before any update, not at the epoch's last batch
                layer.check_training_batches(sizes, owner)
        history = History()
        monitor = None
        if isinstance(callbacks, _callbacks.Callback) or (callable(callbacks) and not isinstance(callbacks, type)):
            callbacks = [callbacks]          # one callback, or one function (an on_epoch_end)
        if diagnostics:
            from fastnn import diagnostics as _diagnostics
            monitor = _diagnostics.Monitor()
            callbacks = _diagnostics.with_monitor(callbacks, monitor)
        # callbacks that write files act on rank 0 only
        if dist is not None and dist.rank != 0 and callbacks is not None and not isinstance(callbacks, (str, bytes)):
            try:
                callbacks = [cb for cb in callbacks if not getattr(cb, "writes_files", False)]
            except TypeError:
                pass        # _fit_callbacks raises its error
        cbs = self._fit_callbacks(callbacks, history, verbose, epochs, n_batches)
        # as Keras' callback.params: what on_train_begin can check against; "extra_logs": a callback of the
        # user's that runs before this one has an on_epoch_end, which may add keys to the logs
        extra = False
        for cb in cbs.callbacks:
            cb.params = {"epochs": epochs, "steps": n_batches, "verbose": verbose, "do_validation": val is not None,
                         "extra_logs": extra}
            # a LambdaCallback's on_epoch_end (a plain function's) is an instance attribute: the user's code too
            extra = extra or (not type(cb).__module__.startswith("fastnn.")
                              and type(cb).on_epoch_end is not _callbacks.Callback.on_epoch_end) \
                or "on_epoch_end" in getattr(cb, "__dict__", ())
        saved_guard = model.nan_guard
        if nan_guard is not None:
            model.nan_guard = bool(nan_guard)
        model.stop_training = False
        model.history = history
        logs = {}
        self.distributed = dist           # save() after this fit: on rank 0 only when distributed
        if dist is not None:
            dist.start(model, train, val)
            self._dist = dist
        try:
            cbs.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                t0 = time.perf_counter()
                self._apply_schedule(epoch)      # before the callbacks, so that a LearningRateScheduler wins
                cbs.on_epoch_begin(epoch)
                if dist is not None:
                    logs = dist.fit_epoch(self, epoch, train, bs, shuffle, metric_objs, cbs)
                else:
                    logs = self._fit_epoch(epoch, train, bs, shuffle, metric_objs, cbs)
                if val is not None and dist is not None:
                    vlogs = dist.evaluate(self, val, metric_objs)
                    logs.update({"val_" + k: v for k, v in vlogs.items()})
                elif val is not None:
                    vlogs = self.evaluate_arrays(val[0], val[1], None, val[2], metric_objs)
                    logs.update({"val_" + k: v for k, v in vlogs.items()})
                logs["time"] = time.perf_counter() - t0
                model.epochs_trained = epoch + 1
                cbs.on_epoch_end(epoch, logs)
                if model.stop_training:
                    break
            cbs.on_train_end(logs)
        finally:
            model.nan_guard = saved_guard
            if dist is not None:
                self._dist = None
                dist.finish(model)
            if monitor is not None:
                monitor.close()
        return history

    # ------------------------------------------------------------------ fit helpers
    def _fit_prepare(self, X, y, validation_split, validation_data, metrics, class_weight, sample_weight):
        """Checked training arrays (X, T, W), validation arrays or None, and the Metric objects."""
        model = self.model
        owner = "fit"
        X, T = self.check_Xy(X, y, owner)
        n = X.shape[0]
        if n == 0:
            raise ValueError("fit: X has no samples")
        validation_split = check_number(owner, "validation_split", validation_split, low=0.0, high=1.0,
                                        high_open=True)
        SW = None if sample_weight is None else self.check_weights(sample_weight, n, "fit: sample_weight")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError("fit: validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            Xv, Tv = self.check_Xy(validation_data[0], validation_data[1], "fit: validation_data")
            if Xv.shape[0] == 0:
                raise ValueError("fit: validation_data has no samples")
            Wv = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                Wv = self.check_weights(validation_data[2], Xv.shape[0], "fit: validation_data sample_weight")
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
            CW = self.class_weights(class_weight, T)
            W = CW if W is None else (W * CW).astype(model.dtype)
        if W is not None and not float(W.sum(dtype=np.float64)) > 0:
            raise ValueError("fit: the sample weights (times the class weights) sum to 0; nothing to train on")
        objs = self.metric_objects(metrics, owner)
        if objs and self.sampled is not None:
            raise ValueError("fit: with sampled_softmax the training step does not compute the full output, so "
                             "metrics other than accuracy cannot be measured in fit; use evaluate(..., metrics=...)")
        return (X, T, W), val, objs

    def metric_objects(self, metrics: MetricSpec | Sequence[MetricSpec] | None, owner: str,
                       loss: _losses.Loss | None = None) -> list[_metrics.Metric]:
        """The Metric objects for `metrics` (a name, a Metric or a list of them) other than accuracy (reported
        anyway, from the loss kernel's count); a metric of the other kind of loss (a regression metric for a
        classification loss, or the reverse), an unknown or a repeated one raises, naming `owner`.  `loss`: the
        loss to check them against (default: the model's)."""
        loss = self.model.loss if loss is None else loss
        objs: list[_metrics.Metric] = []
        if not isinstance(metrics, (str, _metrics.Metric, type(None))):
            try:
                metrics = list(metrics)
            except TypeError:
                raise TypeError(f"{owner}: metrics must be a name, a fastnn.metrics.Metric or a list of them, got "
                                f"{type(metrics).__name__}") from None
        for spec in ([metrics] if isinstance(metrics, (str, _metrics.Metric)) else (metrics or [])):
            m = _metrics.get(spec, owner)
            m.check_loss(loss, owner)
            if isinstance(m, _metrics.Accuracy):
                continue
            if any(o.name == m.name for o in objs):
                raise ValueError(f"{owner}: metric {m.name!r} given twice")
            objs.append(m)
        return objs

    def check_weights(self, w: ArrayLike, n: int, owner: str) -> NDArray[Any]:
        arr = np.asarray(w)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{owner}: must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != (n,):
            raise ValueError(f"{owner}: must have shape ({n},), one weight per sample, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=self.model.dtype)
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"{owner}: weights must be finite and >= 0")
        return arr

    def class_weights(self, class_weight: str | dict[int, float], T: NDArray[Any]) -> NDArray[Any]:
        """Per-sample weights from class weights; the class of a sample is its label, the argmax of a
        probability row, or (one sigmoid output) target > 0.5."""
        model = self.model
        per_position = (T.ndim > 2 or (T.ndim == 2 and isinstance(model.loss, _losses.CrossEntropy)
                                       and T.dtype.kind in "iu"))
        if per_position:
            # (n, T) labels or (n, T, k) rows: one class per position, while weights are per sample
            raise ValueError(f"fit: class_weight needs one class per sample, but the targets have shape {T.shape} "
                             "(a class per position); weight the samples with sample_weight instead")
        n_classes = int(model.output_shape[-1])       # the model's classes: its output columns
        if T.ndim == 1:
            classes = T
        elif isinstance(model.loss, _losses.CrossEntropy):
            classes = np.argmax(T, axis=1)
        elif T.ndim == 2 and T.shape[1] == 1 and isinstance(model.loss, _losses.BinaryCrossEntropy):
            classes = (T[:, 0] > 0.5).astype(np.intp)
            n_classes = 2                               # one sigmoid output: classes 0 and 1
        else:
            raise ValueError("fit: class_weight needs class targets (cross_entropy labels or rows, or one "
                             "binary_cross_entropy output)")
        counts = np.bincount(classes, minlength=n_classes)
        if isinstance(class_weight, dict):
            for k in class_weight:
                if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                    raise ValueError(f"fit: class_weight keys must be class indices >= 0, got {k!r}")
                if k >= n_classes:
                    raise ValueError(f"fit: class_weight has a weight for class {k}, but the model has "
                                     f"{n_classes} classes (0 .. {n_classes - 1})")
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"fit: class_weight must be 'balanced' or a dict, got {class_weight!r}")
            present = counts > 0
            table = np.ones(counts.size)
            table[present] = classes.size / (present.sum() * counts[present])
        elif isinstance(class_weight, dict):
            table = np.ones(counts.size)
            for k, v in class_weight.items():
                table[k] = check_number("fit", f"class_weight[{k}]", v, low=0.0)
        else:
            raise TypeError(f"fit: class_weight must be 'balanced' or a dict, got {type(class_weight).__name__}")
        return np.ascontiguousarray(table[classes], dtype=model.dtype)

    def _fit_callbacks(self, callbacks, history, verbose, epochs, n_batches):
        if isinstance(callbacks, _callbacks.Callback) or (callable(callbacks) and not isinstance(callbacks, type)):
            callbacks = [callbacks]
        try:
            cbs = list(callbacks if callbacks is not None else [])
        except TypeError:
            raise TypeError(f"fit: callbacks must be a Callback or a function, or a list of them, got "
                            f"{type(callbacks).__name__}") from None
        if verbose == 1 and getattr(sys.stdout, "isatty", lambda: False)():
            cbs.append(_callbacks.ProgressBar(epochs, n_batches))
        elif verbose:
            cbs.append(_callbacks.EpochLogger(epochs))
        cbs.append(history)
        return _callbacks.CallbackList(cbs, self.model)

    def _fit_epoch(self, epoch, train, bs, shuffle, metrics, cbs):
        """The batches of one epoch; returns the epoch's logs (loss, accuracy, metrics)."""
        model = self.model
        plan = _compiled.plan_for(model, train, bs, metrics, cbs)
        if plan is not None:    # the compiled training plan: the whole epoch in the compiled core
            return _compiled.fit_epoch(model, plan, epoch, train, bs, shuffle, cbs, metrics)
        n = train[0].shape[0]
        # a fresh permutation each epoch: it depends only on the generator state, so a run resumed from a
        # checkpoint shuffles exactly as the uninterrupted run
        idx = model.rng.permutation(n) if shuffle else None
        for m in metrics:
            m.reset()
        # "auto" threads: one thread while the team stalls
        tuning = _compiled.BatchTuning.start(self, self._dist is not None)
        try:
            return self._fit_batches(epoch, train, bs, idx, metrics, cbs, tuning)
        finally:
            if tuning is not None:
                tuning.close()

    def _fit_batches(self, epoch, train, bs, idx, metrics, cbs, tuning):
        """The per-layer path's loop over the batches of an epoch (``_fit_epoch``); returns the epoch's logs."""
        model = self.model
        X, T, W = train
        n = X.shape[0]
        shuffle = idx is not None
        hooks, progress = cbs.batch_hooks, cbs.progress
        sums = model.loss.sums
        total, wtotal, seen, correct = 0.0, 0.0, 0, 0
        running = 0.0         # the progress display's running loss: sum of batch loss * batch size
        masked = model.graph.has_masks
        predictions = 0       # masked outputs: the real positions seen (accuracy's denominator)
        for b, start in enumerate(range(0, n, bs)):
            stop = min(start + bs, n)
            m = stop - start
            if tuning is not None:
                tuning.before()
            if hooks:
                cbs.on_batch_begin(b, {"batch": b, "size": m})
            if shuffle:
                Xb, Tb, Wb = self.gather(X, T, W, idx[start:stop])
            else:
                Xb, Tb, Wb = X[start:stop], T[start:stop], None if W is None else W[start:stop]
            loss, c = self.step(Xb, Tb, (epoch, b), Wb)
            mask = model.engine.output_mask_value() if masked else None
            if mask is not None:       # the batch weighs what its real steps weigh
                ws, npred = self.mask_weight(mask, Wb, model.engine.output(), model.engine)
                total += loss if sums else loss * ws
                wtotal += ws
                predictions += npred
            elif Wb is not None:
                ws = _kloss.weight_sum(Wb)
                total += loss if sums else loss * ws
                wtotal += ws
            else:
                total += loss if sums else loss * m
                wtotal += m
            if masked and mask is None:
                predictions += model.loss.n_predictions(m, self.output_shape_for(T))
            seen += m
            correct += c
            if metrics:
                out = model.engine.output()
                for met in metrics:
                    update_metric(met, out, Tb, mask)
            if hooks:
                cbs.on_batch_end(b, {"batch": b, "size": m, "loss": loss})
            if progress:
                running += loss * m
                cbs.on_progress(b + 1, running / seen)
            if tuning is not None:
                tuning.after()
            if model.stop_training:
                break
        denom = wtotal if (W is not None or masked) else seen
        logs = {"loss": total if sums else (total / denom if denom > 0 else 0.0)}
        if model.loss.classification:
            npred = predictions if masked else model.loss.n_predictions(seen, self.output_shape_for(T))
            logs["accuracy"] = correct / npred if npred else 0.0
        for met in metrics:
            logs[met.name] = met.result()
        return logs

    def mask_weight(self, mask: NDArray[np.bool_], Wb: NDArray[Any] | None, out: NDArray[Any],
                    engine: Executor) -> tuple[float, int]:
        """(weight, predictions) of a batch with a masked output: the summed weights of its real steps (sample
        weights, or 1 each) and the number of real positions the loss's accuracy counts.  The weighted sum goes
        through a float64 buffer of `engine` (the executor that ran the batch), so a batch makes no new array."""
        steps = int(np.count_nonzero(mask))
        if Wb is None:
            ws = float(steps)
        else:
            buf = engine.cached(("mask_weight", mask.shape), lambda: np.empty(mask.shape, dtype=np.float64))
            buf.fill(0)
            np.copyto(buf, Wb[:, None], where=mask)
            ws = float(buf.sum())
        return ws, self.model.loss.n_predictions(steps, out.shape[2:])

    def gather(self, X: NDArray[Any], T: NDArray[Any], W: NDArray[Any] | None,
               sel: NDArray[np.intp]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None]:
        """The rows `sel` of (X, T, W) copied into buffers of the executor reused for batches of that size."""
        model = self.model
        m = sel.shape[0]
        Xb = model.engine.cached(("xb", (m,) + X.shape[1:], X.dtype.str),
                                      lambda: np.empty((m,) + X.shape[1:], dtype=X.dtype))
        Tb = model.engine.cached(("tb", (m,) + T.shape[1:], T.dtype.str),
                                      lambda: np.empty((m,) + T.shape[1:], dtype=T.dtype))
        np.take(X, sel, axis=0, out=Xb, mode="clip")
        np.take(T, sel, axis=0, out=Tb, mode="clip")
        Wb = None
        if W is not None:
            Wb = model.engine.cached(("wb", (m,), W.dtype.str), lambda: np.empty(m, dtype=W.dtype))
            np.take(W, sel, out=Wb, mode="clip")
        return Xb, Tb, Wb

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None,
                 sample_weight: ArrayLike | None = None,
                 metrics: MetricSpec | Sequence[MetricSpec] | None = None) -> dict[str, float]:
        """The loss (and accuracy, for classification losses; and the given metrics) on (X, y) in inference
        mode, as a dict.  ``sample_weight`` weights the loss as in fit."""
        X, T = self.check_Xy(X, y, "evaluate")
        if X.shape[0] == 0:
            raise ValueError("evaluate: X has no samples")
        if batch_size is not None:
            batch_size = check_number("evaluate", "batch_size", batch_size, low=1, integer=True)
        W = None if sample_weight is None else self.check_weights(sample_weight, X.shape[0],
                                                                   "evaluate: sample_weight")
        objs = self.metric_objects(metrics, "evaluate")
        prev = self._set_mode(False)
        try:
            return self.evaluate_arrays(X, T, batch_size, W, objs)
        finally:
            self._set_mode(prev)

    def evaluate_arrays(self, X: NDArray[Any], T: NDArray[Any], batch_size: int | None = None,
                        W: NDArray[Any] | None = None, metrics: Sequence[_metrics.Metric] = ()) -> dict[str, float]:
        """The logs of ``evaluate`` for checked arrays, in the current mode of the layers' forward (inference)."""
        return self.logs_from_sums(*self.evaluate_sums(X, T, batch_size, W, metrics), metrics)

    def logs_from_sums(self, total: float, wtotal: float, correct: int, predictions: int,
                       metrics: Sequence[_metrics.Metric] = ()) -> dict[str, float]:
        """The logs of ``evaluate`` from the sums of ``evaluate_sums`` (possibly added over data-parallel ranks)."""
        model = self.model
        # keyed by the metrics' names (Metric.name: a str for every metric that reports)
        logs: dict[Any, float] = {
            "loss": float(total) if model.loss.sums else (float(total) / wtotal if wtotal > 0 else 0.0)}
        if model.loss.classification:
            logs["accuracy"] = float(correct) / predictions if predictions else 0.0
        for m in metrics:
            logs[m.name] = m.result()
        return logs

    def evaluate_sums(self, X: NDArray[Any], T: NDArray[Any], batch_size: int | None = None,
                      W: NDArray[Any] | None = None,
                      metrics: Sequence[_metrics.Metric] = ()) -> tuple[float, float, int, int]:
        """(loss total, its weight, correct, predictions) of (X, T) in the current mode, the metrics updated:
        the loss is total / weight (total itself for a loss that sums), the accuracy correct / predictions."""
        model = self.model
        n = X.shape[0]
        bs = _engine.inference_rows(model.graph, X) if batch_size is None else batch_size
        total, wtotal, correct, predictions = 0.0, 0.0, 0, 0
        masked = model.graph.has_masks
        for m in metrics:
            m.reset()
        engine = model.engine.checkout()     # an executor of its own: safe beside other threads
        # a graph of compiled layers runs through a compiled inference plan (the same kernels, the same values)
        fast = not masked and X.dtype == model.dtype and X.ndim >= 2 and X.flags.c_contiguous
        try:
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                out = _compiled.predict(model, X[start:stop], logits=self.fused) if fast else None
                if out is None:
                    fast = False
                    out = engine.forward(X[start:stop], False, self.fused)
                Wb = None if W is None else W[start:stop]
                mask = engine.output_mask_value() if masked else None
                if mask is not None:
                    loss, c = model.loss.masked(out, T[start:stop], mask, None, Wb)
                    ws, npred = self.mask_weight(mask, Wb, out, engine)
                    total += loss if model.loss.sums else loss * ws
                    wtotal += ws
                    predictions += npred
                else:
                    loss, c = model.loss(out, T[start:stop], None, Wb)
                    ws = (stop - start) if Wb is None else _kloss.weight_sum(Wb)
                    total += loss if model.loss.sums else loss * ws
                    wtotal += ws
                    if masked:
                        predictions += model.loss.n_predictions(stop - start, self.output_shape_for(T))
                correct += c
                for m in metrics:
                    update_metric(m, out, T[start:stop], mask)
        finally:
            model.engine.checkin(engine)
        denom = wtotal if (W is not None or masked) else n
        npred = predictions if masked else model.loss.n_predictions(n, self.output_shape_for(T))
        return total, denom, correct, npred



def update_metric(metric: _metrics.Metric, out: NDArray[Any], targets: NDArray[Any],
                  mask: NDArray[np.bool_] | None) -> None:
    """``metric.update`` on a batch; with a mask on the output, on its real steps only."""
    if mask is None:
        metric.update(out, targets)
        return
    n, steps = mask.shape
    sel = mask.reshape(-1)
    o = out.reshape((n * steps,) + out.shape[2:])[sel]
    if targets.dtype.kind in "iu":                 # labels, one per position
        t = targets.reshape((n * steps,) + targets.shape[2:])[sel]
    else:                                          # rows shaped as the output (flattened per sample)
        t = targets.reshape((n * steps,) + out.shape[2:])[sel]
    metric.update(o, t)
