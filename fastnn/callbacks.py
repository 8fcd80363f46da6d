"""Callbacks: code that ``fit`` runs at the start and end of training, of every epoch and of every batch.

Subclass ``Callback`` and override any of ``on_train_begin(logs)``, ``on_train_end(logs)``,
``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)``, ``on_batch_begin(batch, logs)``,
``on_batch_end(batch, logs)``; ``self.model`` is the model being trained.  Semantics follow Keras:

- ``epoch`` and ``batch`` are 0-based indices (printed 1-based); with ``fit(initial_epoch=k)`` the first
  epoch is k.
- ``on_epoch_end``'s ``logs`` holds the epoch's "loss", the metrics, "val_..." values and "time"; a callback
  may add keys (LearningRateScheduler and ReduceLROnPlateau add "lr") and History records them all.
- ``on_batch_end``'s ``logs`` holds "batch", "size" (samples in the batch) and "loss" (the batch's loss,
  before its update).  The batch hooks are called only for callbacks that override them, so callbacks
  that do not cost nothing per batch.
- Setting ``self.model.stop_training = True`` stops training cleanly: after the current batch, the epoch is
  closed as usual (its on_epoch_end runs) and on_train_end runs.
- ``LambdaCallback(on_epoch_end=f, ...)`` makes a callback of plain functions (Keras' signatures), and a plain
  function in ``fit(callbacks=[f])`` is taken as ``on_epoch_end``: ``f(epoch, logs)``.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np

from fastnn import io as _io

if TYPE_CHECKING:                      # matplotlib stays optional: only History.plot imports it
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fastnn.model import Model
    from fastnn.optim import Optimizer


class Callback:
    """Base class of callbacks; every hook does nothing.

    ``writes_files``: True for a callback that writes files (ModelCheckpoint, CSVLogger); a distributed fit
    (fastnn.distributed) runs such callbacks on rank 0 only."""
    if TYPE_CHECKING:
        # set by set_model before any hook runs (None, the class attribute, only on a callback never given to fit)
        model: Model
    else:
        model = None
    writes_files = False

    def set_model(self, model: Model) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass


def _overrides(cb, hook):
    """Whether `cb` does something at `hook`: its class overrides it, or the instance holds a function for it
    (a LambdaCallback given that hook)."""
    return getattr(type(cb), hook, None) is not getattr(Callback, hook) or hook in getattr(cb, "__dict__", ())


class LambdaCallback(Callback):
    """A callback made of plain functions, Keras' ``LambdaCallback``: each argument given is called at its
    hook with Keras' arguments, ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)``,
    ``on_batch_begin(batch, logs)``, ``on_batch_end(batch, logs)``, ``on_train_begin(logs)``,
    ``on_train_end(logs)`` (see the module docstring for the logs).  ``self.model`` is set as for any callback
    but the functions do not receive it: close over the model.

    Only the hooks given count: one without a batch hook leaves fit on its compiled training plan.

    Example::

        log = fnn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """
    HOOKS = ("on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end", "on_train_begin", "on_train_end")

    def __init__(self, on_epoch_begin: Callable[[int, dict[str, Any] | None], Any] | None = None,
                 on_epoch_end: Callable[[int, dict[str, Any] | None], Any] | None = None,
                 on_batch_begin: Callable[[int, dict[str, Any] | None], Any] | None = None,
                 on_batch_end: Callable[[int, dict[str, Any] | None], Any] | None = None,
                 on_train_begin: Callable[[dict[str, Any] | None], Any] | None = None,
                 on_train_end: Callable[[dict[str, Any] | None], Any] | None = None) -> None:
        given = dict(zip(self.HOOKS, (on_epoch_begin, on_epoch_end, on_batch_begin, on_batch_end, on_train_begin,
                                      on_train_end)))
        for hook, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"LambdaCallback: {hook} must be a function or None, got {type(fn).__name__}")
        for hook, fn in given.items():
            if fn is not None:
                setattr(self, hook, fn)      # an instance attribute: called as fn(epoch, logs) / fn(logs)

    def __repr__(self) -> str:
        hooks = ", ".join(f"{h}={getattr(self, h).__name__ if hasattr(getattr(self, h), '__name__') else '...'}"
                          for h in self.HOOKS if h in vars(self))
        return f"LambdaCallback({hooks})"


def as_callback(cb: Callback | Callable[[int, dict[str, Any] | None], Any], owner: str = "fit") -> Callback:
    """`cb` as a Callback: a Callback as it is, a plain function (any callable that is not a Callback) as
    ``LambdaCallback(on_epoch_end=cb)``, called ``cb(epoch, logs)`` after every epoch.  Anything else is a
    TypeError naming `owner`."""
    if isinstance(cb, Callback):
        return cb
    if callable(cb) and not isinstance(cb, type):
        return LambdaCallback(on_epoch_end=cb)
    raise TypeError(f"{owner}: callbacks must be fastnn.callbacks.Callback instances or functions "
                    f"f(epoch, logs) (run after every epoch), got {type(cb).__name__}"
                    + (" (a class: pass an instance)" if isinstance(cb, type) else ""))


class CallbackList:
    """The callbacks of one fit call.  ``batch_hooks`` is False when no callback overrides a batch hook: fit
    then skips the per-batch calls (and the logs dicts) entirely.  Plain functions are taken as
    ``LambdaCallback(on_epoch_end=f)`` (``as_callback``)."""

    def __init__(self, callbacks: Iterable[Callback | Callable[[int, dict[str, Any] | None], Any]],
                 model: Model) -> None:
        self.callbacks = [as_callback(cb) for cb in callbacks]
        for cb in self.callbacks:
            cb.set_model(model)
        self._begin = [cb for cb in self.callbacks if _overrides(cb, "on_batch_begin")]
        self._end = [cb for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        self.batch_hooks = bool(self._begin or self._end)
        # fit's own progress display (ProgressBar.on_progress): called between the compiled plan's chunks, so it
        # does not take training off the plan as a batch hook does
        self._progress: list[Any] = [cb for cb in self.callbacks if callable(getattr(cb, "on_progress", None))]
        self.progress = bool(self._progress)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        for cb in self._begin:
            cb.on_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        for cb in self._end:
            cb.on_batch_end(batch, logs)

    def on_progress(self, batches: int, loss: float) -> None:
        for cb in self._progress:
            cb.on_progress(batches, loss)


# ---------------------------------------------------------------------------------------------- History
class History(Callback):
    """What ``fit`` returns (also ``model.history``): ``history`` maps each key of the epoch logs ("loss",
    "accuracy", "val_loss", "val_accuracy", the metrics, "lr", "time") to one value per epoch; ``epoch`` lists
    the epoch indices (0-based; they start at ``initial_epoch``)."""

    def __init__(self) -> None:
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record(epoch, logs or {})

    def _record(self, epoch, logs):
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def plot(self, keys: str | Sequence[str] | None = None,
             ax: Axes | Sequence[Axes] | None = None) -> Figure:
        """Draw the recorded curves against the epoch (1-based, integer ticks); returns the matplotlib Figure.

        Args:
            keys: what to draw: one name or a list of names.  By default the loss and every metric, each with its
                "val_..." curve when there is one.  Any recorded per-epoch number can be named: "lr" (recorded by
                LearningRateScheduler and ReduceLROnPlateau), "time", a key a callback added, or one "val_..." key
                on its own.  A name that was not recorded raises ValueError listing the recorded keys.
            ax: where to draw.  None: a new pyplot figure with one panel per name (pyplot knows it, so
                ``h.plot(); plt.show()`` shows it).  One Axes: every name into it (each line labelled with its
                key).  A sequence (or array) of Axes: one per name.  Given axes, nothing is created and the
                figure's layout is left to the caller.

        Returns the Figure drawn into (the axes' figure when ``ax`` is given; its ``axes`` are the panels), as
        ``plt.subplots`` users expect to ``savefig`` it.  Needs matplotlib (not a dependency of fastnn): without
        it, an ImportError that says so."""
        try:
            import matplotlib.axes
            import matplotlib.ticker
        except ImportError:
            raise ImportError("History.plot() needs matplotlib, which fastnn does not require: "
                              "pip install matplotlib") from None
        if keys is None:
            names = [k for k in self.history
                     if not k.startswith("val_") and k not in ("time", "lr", "diagnostics")]
            names += [k[4:] for k in self.history if k.startswith("val_") and k[4:] not in names]
            if not names:
                raise ValueError("History.plot: nothing recorded yet (no epoch has ended)")
        else:
            names = [keys] if isinstance(keys, str) else list(keys)
            unknown = [k for k in names if k not in self.history and "val_" + k not in self.history]
            if unknown or not names:
                raise ValueError(f"History.plot: no values recorded for {unknown or 'an empty list of keys'}; "
                                 f"recorded: {list(self.history)}")
        epochs = [e + 1 for e in self.epoch]
        series = {}
        for name in names:
            for key in (name, "val_" + name) if not name.startswith("val_") else (name,):
                if key not in self.history:
                    continue
                values = self.history[key]
                if not all(v is None or _is_number(v) for v in values):
                    raise ValueError(f"History.plot: {key!r} is not a per-epoch number (its values are "
                                     f"{type(values[0]).__name__}); plottable: "
                                     f"{[k for k, v in self.history.items() if all(map(_is_number, v))]}")
                if len(values) != len(epochs):
                    raise ValueError(f"History.plot: {key!r} has {len(values)} values for {len(epochs)} epochs "
                                     "(a key not logged at every epoch cannot be placed)")
                series[key] = [np.nan if v is None else float(v) for v in values]
        if ax is None:
            import matplotlib.pyplot as plt
            fig, grid = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
            panels = [[n] for n in names]
            axes = list(grid[0])
        else:
            axes = [ax] if isinstance(ax, matplotlib.axes.Axes) else list(np.asarray(ax, dtype=object).ravel())
            if not all(isinstance(a, matplotlib.axes.Axes) for a in axes):
                raise TypeError(f"History.plot: ax must be a matplotlib Axes or a sequence of them, got "
                                f"{type(ax).__name__}")
            if len(axes) == 1:
                panels = [names]
            elif len(axes) == len(names):
                panels = [[n] for n in names]
            else:
                raise ValueError(f"History.plot: {len(axes)} axes given for {len(names)} keys {names}; give one "
                                 "Axes, or one per key")
            fig = axes[0].figure
        for a, panel in zip(axes, panels):
            lines = []
            for name in panel:
                for key in (name, "val_" + name) if not name.startswith("val_") else (name,):
                    if key in series:
                        label = key if len(panel) > 1 else ("validation" if key.startswith("val_") else "train")
                        lines += a.plot(epochs, series[key], marker=".", label=label)
            a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
            a.set_xlabel("epoch")
            if len(panel) == 1:
                a.set_title(panel[0])
            if len(lines) > 1:
                a.legend()
        if ax is None:
            fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


# ---------------------------------------------------------------------------------------------- helpers
def _monitor_mode(owner, monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        # Keras' rule: accuracies (and here r2) are maximized, everything else minimized
        mode = "max" if ("acc" in monitor or monitor.endswith("r2")) else "min"
    return mode


def _weights_snapshot(model, into=None):
    """A copy of the model's parameters and layer buffers (reusing `into`'s arrays when given)."""
    if into is None:
        into = (np.empty_like(model.parameters),
                [{k: np.empty_like(np.asarray(v)) for k, v in layer.buffers.items()} for layer in model.layers])
    np.copyto(into[0], model.parameters)
    for layer, saved in zip(model.layers, into[1]):
        for k, v in layer.buffers.items():
            np.copyto(saved[k], v)
    return into


def _weights_restore(model, snap):
    np.copyto(model.parameters, snap[0])
    for layer, saved in zip(model.layers, snap[1]):
        for k, v in saved.items():
            np.copyto(layer.buffers[k], v)


def _optimizer(model: Model) -> Optimizer:
    """The optimizer of the model being trained (fit runs only on a compiled model: never None in a hook)."""
    return cast("Optimizer", model.optimizer)


def _is_number(v):
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- EarlyStopping
class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving (Keras' EarlyStopping).

    Args:
        monitor: the logs key to watch ("val_loss" by default; "loss", "val_accuracy", ...).
        min_delta: the smallest change that counts as an improvement.
        patience: epochs without improvement after which training stops.
        mode: "min", "max" or "auto" (max for accuracies and r2, min otherwise).
        baseline: training stops if the monitored value does not beat it within ``patience`` epochs.
        restore_best_weights: when stopping, put back the parameters (and layer buffers) of the best epoch.
            As in Keras, if training runs to its last epoch without stopping, the last weights are kept.
        start_from_epoch: epochs to wait before watching.

    After training, ``stopped_epoch`` is the (0-based) epoch at which it stopped (0: it did not stop early) and
    ``best_epoch`` / ``best`` the best epoch and value.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 baseline: float | None = None, restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0) -> None:
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.mode = _monitor_mode("EarlyStopping", monitor, mode)
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.verbose = verbose
        self._snap = self._best_snap = None

    def _better(self, current, reference):
        if reference is None:
            return True
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self._has_best = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"EarlyStopping: {self.monitor!r} is not in the logs (available: {sorted(logs or {})})",
                          RuntimeWarning, stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and not self._has_best:
            self._snap = _weights_snapshot(self.model, self._snap)
            self._has_best = True
        self.wait += 1
        if self._better(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self._snap = _weights_snapshot(self.model, self._snap)
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self._has_best:
                _weights_restore(self.model, self._snap)
                if self.verbose:
                    print(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1}", flush=True)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose:
            print(f"EarlyStopping: stopped at epoch {self.stopped_epoch + 1}", flush=True)


# ---------------------------------------------------------------------------------------------- ModelCheckpoint
class ModelCheckpoint(Callback):
    """Save the model (``model.save``: weights, optimizer state, generator states) at the end of epochs.

    Args:
        filepath: a file path, which may hold format fields filled from the epoch (1-based) and the logs,
            e.g. ``"ckpt/model-{epoch:03d}-{val_loss:.3f}.fnn"``; or a directory (a path ending with a
            separator, or an existing directory), in which the files are named ``epoch-{epoch:04d}.fnn``, or
            ``best.fnn`` with ``save_best_only``.  Missing directories are created.
        monitor, mode: the logs key that decides what "best" is, and its direction (as EarlyStopping).
        save_best_only: save only when ``monitor`` improves (then one file, overwritten, unless the path has
            fields).
        save_freq: "epoch" (every epoch) or an int n (every n epochs).

    Every write is atomic (see fastnn.io), so a crash while saving leaves the previous checkpoint intact.  A
    model holding NaN or infinity (a divergence with the NaN guard off) is not saved: a RuntimeWarning says so,
    and the last checkpoint, which loads, stays.
    ``last_path`` is the most recent file written.  Resume with
    ``m = fnn.load(path); m.fit(X, y, epochs=N, initial_epoch=m.epochs_trained, ...)``.
    """
    writes_files = True

    def __init__(self, filepath: str | os.PathLike[str], monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", save_freq: str | int = "epoch", verbose: int = 0) -> None:
        filepath = os.fspath(filepath)
        if filepath.endswith(("/", os.sep)) or os.path.isdir(filepath):
            filepath = os.path.join(filepath, "best.fnn" if save_best_only else "epoch-{epoch:04d}.fnn")
        _io.check_extension(filepath, "ModelCheckpoint")      # before training, not at the first save
        self.filepath = filepath
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = _monitor_mode("ModelCheckpoint", monitor, mode)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int)
                                     or save_freq < 1):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive int, got {save_freq!r}")
        self.save_freq = save_freq if isinstance(save_freq, int) else 1      # "epoch": every epoch
        self.verbose = verbose
        self.best: float | None = None
        self.last_path: str | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Check the path's format fields before anything trains: a malformed path, or a ``val_`` field when fit
        has no validation data (``self.params["do_validation"]``, set by fit) and no callback of the user's runs
        before this one that could add it to the logs (``self.params["extra_logs"]``), is a ValueError."""
        import re
        import string
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.filepath) if f is not None]
        except ValueError as exc:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} is not a valid format string ({exc})") \
                from None
        params = getattr(self, "params", None) or {}
        for field in fields:
            key = re.split(r"[.\[]", field, maxsplit=1)[0]
            if key == "" or key.isdigit():
                raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} has a positional field {{{field}}}; "
                                 "name the value, e.g. {epoch:03d} or {val_loss:.3f}")
            if key.startswith("val_") and params.get("do_validation") is False and not params.get("extra_logs"):
                raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} uses {{{field}}}, but fit has no "
                                 "validation data (give validation_data or validation_split)")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if (epoch + 1) % self.save_freq:
            return
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"ModelCheckpoint: {self.monitor!r} is not in the logs; nothing saved",
                              RuntimeWarning, stacklevel=2)
                return
            if self.best is not None and not (current < self.best if self.mode == "min" else current > self.best):
                return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        bad = _io.nonfinite_array(self.model)
        if bad is not None:
            # never replace a loadable checkpoint with one that load refuses (save would refuse it anyway); the
            # best value stays that of the last file written
            warnings.warn(f"ModelCheckpoint: epoch {epoch + 1}: the model holds NaN or infinity ({bad!r}); "
                          f"{path!r} not written, the last checkpoint is {self.last_path!r}",
                          RuntimeWarning, stacklevel=2)
            return
        if self.save_best_only:
            self.best = current
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        self.model.save(path)
        self.last_path = path
        if self.verbose:
            print(f"ModelCheckpoint: saved {path}", flush=True)


# ---------------------------------------------------------------------------------------------- learning rate
class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch to ``schedule(epoch, lr)`` (Keras'
    signature: the 0-based epoch and the current rate).  Adds "lr" to the epoch logs."""

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError("LearningRateScheduler: schedule must be callable as schedule(epoch, lr)")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        lr = self.schedule(epoch, float(_optimizer(self.model).lr))
        if not _is_number(lr) or not math.isfinite(lr):
            raise ValueError(f"LearningRateScheduler: the schedule returned {lr!r} at epoch {epoch}; "
                             "expected a finite number")
        _optimizer(self.model).lr = float(lr)
        if self.verbose:
            print(f"LearningRateScheduler: epoch {epoch + 1}, lr {lr:.6g}", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(_optimizer(self.model).lr)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by ``min_delta`` for
    ``patience`` epochs (Keras' ReduceLROnPlateau: then ``cooldown`` epochs of rest; never below ``min_lr``).
    Adds "lr" to the epoch logs."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, verbose: int = 0) -> None:
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor!r}")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.mode = _monitor_mode("ReduceLROnPlateau", monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.verbose = verbose

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait = 0
        self.cooldown_counter = 0
        self.best = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        opt = _optimizer(self.model)
        logs["lr"] = float(opt.lr)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: {self.monitor!r} is not in the logs", RuntimeWarning, stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        better = (self.best is None or (current < self.best - self.min_delta if self.mode == "min"
                                        else current > self.best + self.min_delta))
        if better:
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(opt.lr)
                if old > self.min_lr:
                    opt.lr = max(old * self.factor, self.min_lr)
                    if self.verbose:
                        print(f"ReduceLROnPlateau: epoch {epoch + 1}, lr {old:.6g} -> {opt.lr:.6g}", flush=True)
                self.cooldown_counter = self.cooldown
                self.wait = 0


# ---------------------------------------------------------------------------------------------- logging
class CSVLogger(Callback):
    """Append one row per epoch to a CSV file: "epoch" (0-based, as Keras) then the logs keys in order.

    ``append=False`` starts a new file at train begin; ``append=True`` keeps existing rows (for resuming).
    The file is opened, written and closed at every epoch end, so it is complete even if training crashes.
    """
    writes_files = True

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self._keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._keys = None
        if not self.append and os.path.exists(self.filename):
            os.remove(self.filename)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        new_file = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        if self._keys is None:
            self._keys = list(logs)
        with open(self.filename, "a", newline="") as f:
            w = csv.writer(f, delimiter=self.separator)
            if new_file:
                w.writerow(["epoch"] + self._keys)
            w.writerow([epoch] + [logs.get(k, "") for k in self._keys])


class TerminateOnNaN(Callback):
    """Stop training cleanly when a batch loss is NaN or infinite (useful with ``nan_guard=False``; with the
    guard on, fit raises NonFiniteError first).  ``terminated_at`` is (epoch, batch), 0-based, or None."""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.terminated_at: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.terminated_at = (self._epoch, batch)
            self.model.stop_training = True
            print(f"TerminateOnNaN: loss {loss} at epoch {self._epoch + 1}, batch {batch + 1}; stopping",
                  flush=True)


# ---------------------------------------------------------------------------------------------- progress
def _epoch_line(epoch, epochs, logs):
    parts = " - ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "time" and _is_number(v))
    return f"epoch {epoch + 1}/{epochs} - {parts} - {logs.get('time', 0.0):.3f}s"


class EpochLogger(Callback):
    """verbose=2 (or verbose=1 when the output is not a terminal): one line per epoch."""

    def __init__(self, epochs: int, file: TextIO | None = None) -> None:
        self.epochs = epochs
        self.file = file

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        print(_epoch_line(epoch, self.epochs, logs or {}), file=self.file or sys.stdout, flush=True)


class ProgressBar(Callback):
    """verbose=1 on a terminal: a live bar per epoch (batches done, ETA, running loss), redrawn at most every
    ``interval`` seconds with a carriage return, then the epoch's line.

    It has no batch hook (which would take fit off its compiled training plan): fit calls ``on_progress`` instead,
    between the plan's chunks of batches (about every 0.05 s) and after every batch on the per-layer path."""

    def __init__(self, epochs: int, n_batches: int, file: TextIO | None = None, interval: float = 0.1,
                 width: int = 24) -> None:
        self.epochs = epochs
        self.n_batches = n_batches
        self.file = file
        self.interval = interval
        self.width = width

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._cols = 0

    def on_progress(self, batches: int, loss: float) -> None:
        """`batches` of this epoch's batches are done; `loss` is their running loss (the mean over their samples
        of each batch's loss).  Redraws the bar when ``interval`` has passed or the epoch's batches are done."""
        now = time.perf_counter()
        done = batches
        if now - self._last < self.interval and done < self.n_batches:
            return
        self._last = now
        frac = done / self.n_batches
        filled = int(self.width * frac)
        bar = "=" * max(0, filled - 1) + (">" if filled < self.width else "=") + "." * (self.width - filled)
        eta = (now - self._t0) / max(done, 1) * (self.n_batches - done)
        text = (f"epoch {self._epoch + 1}/{self.epochs} [{bar}] {done}/{self.n_batches} - ETA {eta:.1f}s - "
                f"loss {loss:.4f}")
        self._write("\r" + text.ljust(self._cols))
        self._cols = len(text)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        line = _epoch_line(epoch, self.epochs, logs or {})
        self._write("\r" + line.ljust(self._cols) + "\n")

    def _write(self, s):
        f = self.file or sys.stdout
        f.write(s)
        f.flush()
