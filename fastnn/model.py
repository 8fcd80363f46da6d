"""Models: ``Model`` and ``Sequential``, a facade composing the graph, the parameter table, the executor
and the trainer.

- ``fastnn.graph``: ``Input``, symbolic tensors and the topological order of the layers (``model.graph``).
- ``fastnn.params``: the parameter table (``model.table``): one row per parameter, the flat ``parameters`` and
  ``gradients`` buffers (decayed parameters first) whose views the layers hold.
- ``fastnn.engine``: the executor (``model.engine``): forward and backward over the nodes.
- ``fastnn.training``: the trainer (``model.trainer``): fit, evaluate, train_on_batch, the guarded step, the
  compiled plan and the sampled-softmax step.

``Sequential`` is the special case of a chain, built from its first data when no input shape is given.
"""
from __future__ import annotations

import os
import sys
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO, Union

import numpy as np

from fastnn import engine as _engine
from fastnn import losses as _losses
from fastnn import metrics as _metrics
from fastnn import optim as _optim
from fastnn import schedules as _schedules
from fastnn._validation import check_dtype, check_number
from fastnn.callbacks import History
from fastnn.engine import Executor
from fastnn.errors import NonFiniteError  # noqa: F401  (re-exported)
from fastnn.graph import Graph, Input, Tensor, check_shape  # (Tensor, Input: also re-exported)
from fastnn.graph import matches as _graph_matches
from fastnn.layers.base import Layer
from fastnn.params import ParameterTable, frozen_layers
from fastnn.training import compiled as _compiled
from fastnn.training.trainer import Trainer

if TYPE_CHECKING:
    from fastnn.diagnostics import Diagnosis

ArrayLike = Any                                   # numpy arrays, or what np.asarray takes
MetricSpec = Union[str, _metrics.Metric]          # a metric name or a fastnn.metrics.Metric

LoadResult = namedtuple("LoadResult", "missing_keys unexpected_keys")
LoadResult.__doc__ = "What ``Model.load_state_dict`` returns: the keys it did not find, and those it did not use."


def _check_seed(owner, seed):
    if seed is None:
        return None
    return check_number(owner, "seed", seed, low=0, integer=True)


def _check_verbose(owner: str, verbose: int | str | bool) -> int:
    """`verbose` as an int 0, 1 or 2 ("auto" is 1, as in Keras); errors name `owner`."""
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    if isinstance(verbose, str):
        if verbose != "auto":
            raise TypeError(f"{owner}: verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        return 1
    return check_number(owner, "verbose", verbose, low=0, high=2, integer=True)


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

    The parts: ``model.graph`` (fastnn.graph.Graph), ``model.table`` (fastnn.params.ParameterTable),
    ``model.engine`` (fastnn.engine.Executor), ``model.trainer`` (fastnn.training.trainer.Trainer); the first
    three exist once the model is built.
    """

    def __init__(self, inputs: Tensor, outputs: Tensor, seed: int | None = 0, dtype: str = "float32",
                 name: str | None = None) -> None:
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
        self.init_rng = np.random.Generator(np.random.PCG64(init_ss))       # weight initialization
        self.rng = np.random.Generator(np.random.PCG64(shuffle_ss))         # shuffling
        self.layer_rng = np.random.Generator(np.random.PCG64(layer_ss))     # random layers (dropout, ...)
        self.built = False
        self.graph = self.table = self.engine = None
        self.loss = None
        self._optimizer = None
        self.compile_metrics = []      # compile(metrics=...) as a list: the default of fit and evaluate
        self.nan_guard = True          # see Trainer.step; compile(nan_guard=False) / fit(nan_guard=False) turn it off
        self.stop_training = False     # set by callbacks to end fit after the current batch
        self.epochs_trained = 0        # epochs completed by fit (saved, so that a resumed run knows where it is)
        self.history = None            # the History of the last fit
        self.training = False    # the mode of a forward pass: fit/train_on_batch switch to True, predict to False
        self.clip_norm = self.clip_value = self.lr_schedule = None
        self.grad_norm = None    # global gradient norm of the last step, when clipping is on
        self.trainer = Trainer(self, self._build_from_data)

    def _build_graph(self, inputs, outputs):
        self.graph = Graph(inputs, outputs, owner=self.name)
        self.input_shape = self.graph.input_shape
        self.output_shape = self.graph.output_shape
        self.table = ParameterTable(self.graph.layers, self.dtype, self.init_rng)
        self.parameters = self.table.parameters
        self.gradients = self.table.gradients
        for layer in self.graph.layers:
            layer.attach_rng(self.layer_rng)
        self.engine = Executor(self.graph, self.dtype)
        self.built = True
        if self.loss is not None:
            self.trainer.attach()

    def _build_from_data(self, feature_shape):
        raise RuntimeError(f"{self.name}: model is not built")

    def _declared_input(self):
        """The input shape the model declares before it is built (Sequential), or None."""
        return None

    def _not_built(self, what):
        return (f"{what}: {self.name} is not built yet: its input shape is unknown, so it has no weights.  Give "
                "the input shape (Sequential(..., input_shape=(64,)) or input_dim=64, an fnn.Input(64) as the first "
                "item, or input_shape= on the first layer), or call model.build((None, 64)), or fit / predict once "
                "(the first data gives the shape)")

    def _require_built(self, what):
        """Build a model that declares its input shape but is not built yet (a Sequential whose layers came
        through ``add``); raise a ValueError naming `what` and saying how to build a model that declares none."""
        if self.built:
            return
        shape = self._declared_input()
        if shape is None:
            raise ValueError(self._not_built(what))
        self._build_from_data(shape)

    def __getattr__(self, name):
        # only called when normal lookup fails: the attributes that exist once the model is built
        if name in ("parameters", "gradients", "input_shape", "output_shape") and "trainer" in self.__dict__:
            try:
                self._require_built(name)
            except ValueError as exc:
                raise AttributeError(str(exc)) from None
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def build(self, input_shape: Sequence[int | None] | None = None) -> Model:
        """Build the model for inputs of shape `input_shape`, Keras' ``build``: the batch shape, its first axis
        the batch (None or any size, ignored), e.g. ``(None, 64)`` or ``(None, 28, 28, 1)``.  Allocates and
        initializes the weights of a Sequential not built yet; a built model only checks that the shape is its
        own.  ``input_shape=None`` builds from the declared input shape (or raises saying there is none).
        Returns the model."""
        if input_shape is None:
            self._require_built("build")
            return self
        if isinstance(input_shape, (int, np.integer)) or not isinstance(input_shape, (tuple, list)) \
                or len(input_shape) < 2:
            raise ValueError(f"build: input_shape is Keras' batch shape, the batch axis first, e.g. (None, 64) for "
                             f"samples of 64 features; got {input_shape!r}")
        shape = check_shape(type(self).__name__, "input_shape (without its batch axis)", tuple(input_shape)[1:])
        if self.built:
            if not _graph_matches(shape, self.input_shape):
                raise ValueError(f"build: {self.name} is built for inputs (None, "
                                 f"{', '.join(map(str, self.input_shape))}), got {tuple(input_shape)}")
            return self
        declared = self._declared_input()
        if declared is not None and shape != declared:
            raise ValueError(f"build: {self.name} declares the input shape {declared}, got {shape} (from "
                             f"{tuple(input_shape)})")
        self._build_from_data(shape)
        return self

    @property
    def layers(self) -> list[Layer]:
        """The layers, in the order they run."""
        return self.graph.layers

    def count_params(self, trainable: bool | None = None) -> int:
        """The number of scalar parameters: all of them (default), the trainable ones (``trainable=True``) or
        the frozen ones (False), by the layers' current ``trainable`` flags.  Layer buffers (BatchNorm's running
        statistics) are not parameters and are not counted.  An unbuilt model is a ValueError saying how to
        build it."""
        self._require_built("count_params")
        if trainable is None:
            return int(self.parameters.size)
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"{self.name}: count_params(trainable) takes None or a bool, got {trainable!r}")
        frozen = frozen_layers(self.graph.layers)
        n = sum(r.size for r in self.table.rows if (id(r.layer) not in frozen) == bool(trainable))
        return int(n)

    def summary(self, file: TextIO | None = None) -> None:
        """Print a table of the layers, their output shapes and parameter counts (marked "frozen" for a frozen
        layer), then the totals: all, trainable and non-trainable parameters (as Keras, by the current
        ``trainable`` flags) and the values in layer buffers.  An unbuilt model is a ValueError saying how to
        build it."""
        self._require_built("summary")
        file = file or sys.stdout
        frozen = frozen_layers(self.graph.layers)
        rows = [("layer", "output shape", "params")]
        for layer in self.graph.layers:
            n = sum(int(np.prod(v.shape)) for v in layer.params.values())
            mark = " (frozen)" if n and id(layer) in frozen else ""
            shapes = layer.output_shape if layer.n_outputs != 1 else [layer.output_shape]
            shape = ", ".join("(None, " + ", ".join(map(str, o)) + ")" for o in shapes)
            rows.append((repr(layer), shape if len(shapes) == 1 else f"[{shape}]", f"{n}{mark}"))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}", file=file)
        print(f"total parameters: {self.count_params()} ({np.dtype(self.dtype).name})", file=file)
        n_buffers = sum(int(np.size(b)) for layer in self.graph.layers for b in layer.buffers.values())
        print(f"trainable parameters: {self.count_params(True)}, non-trainable parameters: "
              f"{self.count_params(False)}, buffer values (e.g. running statistics): {n_buffers}", file=file)

    # ================================================================== weights in memory
    def _weight_entries(self):
        """[(layer, kind, name, array)] in the order of get_weights: the layers in graph order, each layer's
        parameters in its ParamSpec order ("param"), then its buffers ("buffer")."""
        self._require_built("weights")
        out = []
        for layer in self.graph.layers:
            out += [(layer, "param", name, view) for name, view in layer.params.items()]
            out += [(layer, "buffer", name, np.asarray(buf)) for name, buf in layer.buffers.items()]
        return out

    def get_weights(self) -> list[np.ndarray]:
        """The weights as a list of arrays (copies), Keras' ``get_weights``.

        Order: the layers in graph order (``model.graph.layers``: a Residual's block layers are nodes of
        their own, before the Residual), and for each layer its parameters in its ParamSpec order (Dense:
        weight, bias) followed by its buffers (BatchNorm: weight, bias, running_mean, running_var).  Buffers
        are included, as Keras includes non-trainable weights such as BatchNorm's moving statistics.  The
        order does not depend on ``trainable``.  ``set_weights`` takes the same list.
        """
        return [np.array(a, copy=True) for _, _, _, a in self._weight_entries()]

    def _checked(self, owner, what, value, like):
        """`value` as an array of the model dtype shaped as `like`, after checking shape, kind and finiteness;
        errors name `owner` and `what` ("dense_1.weight")."""
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise TypeError(f"{owner}: {what} must be an array, got {type(value).__name__} ({exc})") from None
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{owner}: {what} must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != like.shape:
            raise ValueError(f"{owner}: {what} must have shape {like.shape}, got {arr.shape}")
        arr = arr.astype(like.dtype, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(f"{owner}: {what} contains NaN or infinity")
        return arr

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Set the weights from a list of arrays in the order of ``get_weights`` (Keras' ``set_weights``).

        Every entry is checked first: the count, each shape, that it holds real numbers (cast to the model
        dtype) and that they are finite; a bad entry raises ValueError (TypeError for a wrong kind) naming the
        layer and parameter with the expected and given shape, and nothing is changed.  The optimizer state
        is kept (as Keras).
        """
        entries = self._weight_entries()
        if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
            raise TypeError(f"set_weights: expected a list of {len(entries)} arrays (as get_weights returns), got "
                            f"{type(weights).__name__}")
        if len(weights) != len(entries):
            names = ", ".join(f"{layer.name}.{n}" for layer, _, n, _ in entries)
            raise ValueError(f"set_weights: {self.name} has {len(entries)} weight arrays ({names}), got "
                             f"{len(weights)}")
        checked = [self._checked("set_weights", f"entry {i} ({layer.name}.{n})", w, a)
                   for i, ((layer, _, n, a), w) in enumerate(zip(entries, weights))]
        for (_, _, _, a), w in zip(entries, checked):
            a[...] = w

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights by name, torch's ``state_dict``: a dict "layer_name.name" -> array (a copy), the
        parameters and the buffers (BatchNorm's running_mean / running_var, as torch includes them), in the
        order of ``get_weights``."""
        out = {}
        for layer, _, name, a in self._weight_entries():
            key = f"{layer.name}.{name}"
            if key in out:
                raise ValueError(f"state_dict: two layers of {self.name} are named {layer.name!r}; the keys "
                                 "'layer_name.name' need unique layer names")
            out[key] = np.array(a, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], strict: bool = True) -> LoadResult:
        """Load weights by name from a mapping as ``state_dict`` returns (torch's ``load_state_dict``).

        With ``strict`` (default) the keys must be exactly the model's: missing and unexpected keys are
        listed in a ValueError.  With ``strict=False`` the matching keys are loaded and the others reported.
        Every loaded array is checked as in ``set_weights`` (shape, real numbers, finite), all before anything
        is written: on any error the model is unchanged.  Returns ``(missing_keys, unexpected_keys)`` (a
        named tuple, as torch).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping name -> array, got {type(state_dict).__name__}")
        entries = {}
        for layer, _, name, a in self._weight_entries():
            key = f"{layer.name}.{name}"
            if key in entries:
                raise ValueError(f"load_state_dict: two layers of {self.name} are named {layer.name!r}")
            entries[key] = a
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: the keys do not match {self.name}'s: missing {missing}, "
                             f"unexpected {unexpected}")
        checked = [(entries[k], self._checked("load_state_dict", repr(k), state_dict[k], entries[k]))
                   for k in entries if k in state_dict]
        for a, v in checked:
            a[...] = v
        return LoadResult(missing, unexpected)

    def clone(self) -> Model:
        """An independent copy: same architecture, weights, buffers, loss, optimizer with its state, generator
        states and ``epochs_trained``, sharing no memory with this model (``fastnn.io.clone``: the save format
        in memory).  Both, trained the same way from here, give the same weights."""
        import copy

        from fastnn import io as _io
        self._require_built("clone")
        new = _io.clone(self)
        new.compile_metrics = copy.deepcopy(self.compile_metrics)
        return new

    # ================================================================== training / inference mode
    def train(self, mode: bool = True) -> Model:
        """Put the model in training mode (dropout active, batch statistics in BatchNorm); returns the model.

        ``fit`` and ``train_on_batch`` run in training mode and ``predict`` / ``evaluate`` in inference mode
        whatever the current mode, and restore the previous mode afterwards (as ``model.train()`` /
        ``model.eval()`` do in torch).
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{self.name}: train(mode) takes a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        return self

    def eval(self) -> Model:
        """Put the model in inference mode (no dropout, running statistics in BatchNorm); returns the model."""
        return self.train(False)

    # ================================================================== compile
    def compile(self, loss: str | _losses.Loss, optimizer: str | _optim.Optimizer = "adam",
                clip_norm: float | None = None, clip_value: float | None = None,
                lr_schedule: _schedules.Schedule | None = None, nan_guard: bool = True,
                metrics: MetricSpec | Sequence[MetricSpec] | None = None) -> Model:
        """Set the loss and the optimizer.  Never re-initializes the weights.

        The layers' ``trainable`` flags take effect here (as in Keras): the optimizer updates the parameters of
        the trainable layers only and keeps state for those only.  When the set of frozen layers changed since
        the last compile (or build), the flat buffers are re-ordered (``ParameterTable.relayout``: values kept,
        ``model.parameters`` / ``gradients`` become new arrays, the layers' views follow) and the same
        optimizer instance carries its state over (a newly trainable parameter starts with fresh state).

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
                with NonFiniteError, weights rolled back (see ``Trainer.step``).  On by default.
            metrics: names or ``fastnn.metrics.Metric`` objects (as ``fit(metrics=...)``), checked here against
                the loss: ``fit`` reports them every epoch (training and validation) and ``evaluate`` returns
                them, unless those calls are given ``metrics=`` of their own (which then win).  "accuracy" is
                reported for classification losses whether it is listed or not.  Not saved with the model.
        """
        loss = _losses.get(loss)
        self.trainer.metric_objects(metrics, "compile", loss=loss)     # checked now; fit / evaluate resolve them
        metric_specs = [] if metrics is None else [metrics] if isinstance(metrics, (str, _metrics.Metric)) \
            else list(metrics)
        opt = _optim.get(optimizer)
        if not isinstance(nan_guard, (bool, np.bool_)):
            raise TypeError(f"compile: nan_guard must be a bool, got {type(nan_guard).__name__}")
        clip_norm = None if clip_norm is None else check_number("compile", "clip_norm", clip_norm, low=0.0)
        clip_value = None if clip_value is None else check_number("compile", "clip_value", clip_value, low=0.0,
                                                                  low_open=True)
        if lr_schedule is not None and not isinstance(lr_schedule, _schedules.Schedule):
            raise TypeError(f"compile: lr_schedule must be a fastnn.schedules.Schedule or None, got "
                            f"{type(lr_schedule).__name__}")
        opt._claim(self)      # refuses an optimizer that trains another model, before anything changes
        self.nan_guard = bool(nan_guard)
        self.loss, self._optimizer = loss, opt
        self.compile_metrics = metric_specs
        self.clip_norm, self.clip_value, self.lr_schedule = clip_norm, clip_value, lr_schedule
        self.trainer.base_lr = opt.lr
        if self.built:
            self.trainer.attach()
        return self

    @property
    def optimizer(self) -> _optim.Optimizer | None:
        """The optimizer set by ``compile`` (None before).  Assigning one re-compiles with it, keeping the loss,
        clipping, schedule and guard setting, with compile's checks (an optimizer that trains another model is a
        ValueError, and nothing changes)."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: str | _optim.Optimizer) -> None:
        if value is self._optimizer:
            return
        if self.loss is None:
            raise ValueError(f"{self.name}: set the optimizer with compile(loss, optimizer=...); the model has no "
                             "loss yet")
        self.compile(self.loss, value, self.clip_norm, self.clip_value, self.lr_schedule, self.nan_guard,
                     self.compile_metrics)

    # ================================================================== training
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_split: float = 0.0, validation_data: tuple | None = None,
            metrics: MetricSpec | Sequence[MetricSpec] | None = None, class_weight: str | dict | None = None,
            sample_weight: ArrayLike | None = None, initial_epoch: int = 0, callbacks: Any = None,
            verbose: int | str = 0, nan_guard: bool | None = None, diagnostics: bool = False,
            distributed: Any = None) -> History:
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
                (see fastnn.metrics); "accuracy" is always reported for classification losses.  None (default):
                those given to ``compile(metrics=...)``; ``[]``: none.
            class_weight: "balanced" (n / (n_classes * count of the class), as sklearn computes it, over the
                training labels) or a dict {class: weight} (missing classes weigh 1); training only.
            sample_weight: per-sample weights (n,), >= 0; multiplied by the class weights.  The loss becomes the
                weighted mean sum(w l) / sum(w) (torch's definition; see fastnn.losses).
            initial_epoch: the epoch to start at (resuming: ``model.epochs_trained`` of a loaded checkpoint).
            callbacks: fastnn.callbacks.Callback objects, or plain functions ``f(epoch, logs)`` run after every
                epoch (``fastnn.callbacks.LambdaCallback(on_epoch_end=f)``).
            verbose: 0 silent; 1 (or "auto", Keras' default) a live progress bar on a terminal (one line per
                epoch when stdout is not a terminal); 2 one line per epoch.
            nan_guard: override the compile setting for this call (see ``Trainer.step``).
            diagnostics: record per-layer training-health diagnostics every epoch in
                ``history.history["diagnostics"]`` (one dict per epoch, {layer name: {"grad_norm", "weight_norm",
                "update_ratio", "dead_fraction" | "saturated_fraction"}}) and warn (TrainingHealthWarning) once
                when gradients vanish or explode or a layer's ReLUs are mostly dead (see fastnn.diagnostics).
            distributed: a ``fastnn.distributed.DataParallel``: data-parallel training over MPI (run the script
                under ``mpiexec -n N python -m mpi4py``); ``batch_size`` is then the per-rank batch, every rank
                trains on its share of each global batch and the weights stay identical on every rank (see
                fastnn.distributed).

        ``history.history["loss"]`` is the (weighted) mean training loss of each epoch over its batches (for
        "l2", which sums over samples, the epoch's sum), measured while training; "accuracy" likewise for
        classification losses; the other metrics are measured on the same forward passes; "val_..." are
        evaluated in inference mode after the epoch; "time" is the epoch's seconds.
        """
        verbose = _check_verbose("fit", verbose)
        if metrics is None:
            metrics = self.compile_metrics
        with self.trainer.exclusive("fit"):      # one thread trains a model at a time
            return self.trainer.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                                    validation_split=validation_split, validation_data=validation_data,
                                    metrics=metrics, class_weight=class_weight, sample_weight=sample_weight,
                                    initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose,
                                    nan_guard=nan_guard, diagnostics=diagnostics, distributed=distributed)

    def train_on_batch(self, X: ArrayLike, y: ArrayLike) -> float:
        """One forward, backward and update on the batch (X, y); returns the loss of that forward pass."""
        with self.trainer.exclusive("train_on_batch"):
            return self.trainer.train_on_batch(X, y)

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None,
                 sample_weight: ArrayLike | None = None, metrics: MetricSpec | Sequence[MetricSpec] | None = None,
                 verbose: int | str = 0, return_dict: bool | None = None) -> dict[str, float] | list[float] | float:
        """The loss (and accuracy, for classification losses; and the given metrics) on (X, y) in inference
        mode.  ``sample_weight`` weights the loss as in fit.

        Args:
            verbose: 0 (default) prints nothing; 1, 2 or "auto" print one line, ``evaluate - loss 0.1234 -
                accuracy 0.9600`` (Keras' progress bar is not drawn: evaluation is one pass).
            metrics: as for fit; None (default): those given to ``compile(metrics=...)``.
            return_dict: None (default, fastnn's form) or True: a dict {"loss": ..., "accuracy": ..., metric
                name: ...}.  False: Keras' form, the dict's values as a list ``[loss, accuracy, ...]`` when it has
                more than the loss, else the loss alone (a float).  Keras returns that list by default; fastnn
                keeps the dict, which it has always returned.
        """
        verbose = _check_verbose("evaluate", verbose)
        if return_dict is not None and not isinstance(return_dict, (bool, np.bool_)):
            raise TypeError(f"evaluate: return_dict must be a bool or None, got {type(return_dict).__name__}")
        if metrics is None:
            metrics = self.compile_metrics
        logs = self.trainer.evaluate(X, y, batch_size=batch_size, sample_weight=sample_weight, metrics=metrics)
        if verbose:
            print("evaluate - " + " - ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
        if return_dict is None or return_dict:
            return logs
        values = list(logs.values())
        return values if len(values) > 1 else values[0]

    # ================================================================== public inference API
    def predict(self, X: ArrayLike, batch_size: int | None = None, verbose: int | str = 0) -> np.ndarray:
        """The network's output for X (inference mode), as a new array of shape (n, *output_shape).

        ``verbose`` (0, 1, 2 or "auto") is accepted for Keras code and checked; predict prints nothing.

        A model ending in softmax (or sigmoid) returns probabilities, also when its loss is fused.

        Thread-safe: any number of threads may predict on one model at once (each call runs on buffers of its
        own: a compiled inference plan or an executor checked out of a small pool), and a predict running beside
        ``fit`` on another thread does not change what fit computes; it sees the weights as they are at that
        moment of training (possibly between the updates of one step).  The model's mode (``model.training``)
        is not touched.
        """
        if verbose != 0:
            _check_verbose("predict", verbose)
        if (type(X) is np.ndarray and batch_size is None and X.dtype == self.dtype and X.ndim >= 2
                and self.built and X.shape[0] > 0 and X.shape[1:] == self.input_shape and X.flags.c_contiguous):
            out = _compiled.predict(self, X)       # fast path: a compiled inference plan, no per-layer Python
            if out is not None:
                return out
        X = self.trainer.check_X(X, "predict")
        n = X.shape[0]
        variable = any(d is None for d in self.output_shape)
        out = None if variable else np.empty((n,) + tuple(self.output_shape), dtype=self.dtype)
        if batch_size is not None:
            batch_size = check_number("predict", "batch_size", batch_size, low=1, integer=True)
        if n == 0 and out is not None:
            return out
        bs = _engine.inference_rows(self.graph, X) if batch_size is None else batch_size
        # an executor of its own (Executor.checkout): safe from many threads at once, and beside a running fit
        engine = self.engine.checkout()
        try:
            if n == 0:       # a variable axis, sized by the input's: the output of one zero sample gives its size
                Y = engine.forward(np.zeros((1,) + X.shape[1:], dtype=self.dtype), False)
                return np.empty((0,) + Y.shape[1:], dtype=self.dtype)
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                Y = engine.forward(X[start:stop], False)
                if out is None:      # a variable axis: sized by the first batch's output
                    out = np.empty((n,) + Y.shape[1:], dtype=self.dtype)
                out[start:stop] = Y
        finally:
            self.engine.checkin(engine)
        return out

    def __call__(self, X: ArrayLike, training: bool | None = False) -> np.ndarray:
        """``model(X)``: the output array for X, as ``predict(X)`` (inference mode; a new numpy array, not a
        tensor).  ``training`` must be False (or None): training runs through fit / train_on_batch.  A model is not
        called on symbolic tensors (fastnn models do not nest as layers)."""
        if training:
            raise ValueError(f"{self.name}(X, training=True): calling a model runs inference only; train with "
                             "fit or train_on_batch (model(X) is predict(X))")
        if isinstance(X, Tensor):
            raise TypeError(f"{self.name}: a model is called on arrays (model(X) is predict(X)); a model cannot be "
                            "called on a symbolic tensor to nest it in another model: use its layers instead")
        return self.predict(X)

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by name or by its index in ``model.layers`` (Keras' ``get_layer``: give one of the two).
        A layer nested in a container (a Residual's block) is found by name too, once the model is built.
        Not found: a ValueError listing the layer names."""
        if (name is None) == (index is None):
            raise ValueError(f"get_layer: give a name or an index (one of the two), got name={name!r}, "
                             f"index={index!r}")
        layers = self.layers
        if index is not None:
            if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
                raise TypeError(f"get_layer: index must be an int, got {type(index).__name__}")
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index {index} is out of range: {self.name} has {len(layers)} layers")
            return layers[index]
        if not isinstance(name, str):
            raise TypeError(f"get_layer: name must be a str, got {type(name).__name__}")
        every = list(layers)
        if self.built:
            every += [layer for layer in self.graph.layers if all(layer is not x for x in layers)]
        for layer in every:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: {self.name} has no layer named {name!r}; its layers: "
                         f"{', '.join(layer.name for layer in every)}")

    def predict_classes(self, X: ArrayLike, threshold: float = 0.5, batch_size: int | None = None) -> np.ndarray:
        """Class decisions for X (inference mode).

        - Multi-label / one-vs-all (the model ends in a sigmoid, or its loss is "binary_cross_entropy", whose
          logits are passed through the sigmoid here): an int8 array of 0/1 of shape (n, k), 1 where the
          probability exceeds ``threshold``; (n,) for a model with one output (yes/no).
        - Otherwise (softmax, cross_entropy, sampled_softmax): the index of the largest output, (n,) intp.

        Outputs with positions, (n, ..., k) (a per-step Dense after ``return_sequences=True``, a per-pixel head),
        get the same per position: (n, ..., k) 0/1 labels, or (n, ...) indices; (n, ..., 1) gives (n, ...).
        """
        threshold = check_number("predict_classes", "threshold", threshold, low=0.0, high=1.0)
        out = self.predict(X, batch_size)
        if out.ndim == 1:
            out = out[:, None]
        layer = self.graph.layers[-1] if self.built else None
        if getattr(layer, "fusable", None) == "sigmoid" or isinstance(self.loss, _losses.BinaryCrossEntropy):
            if getattr(layer, "fusable", None) != "sigmoid":
                with np.errstate(over="ignore"):
                    out = 1.0 / (1.0 + np.exp(-out.astype(np.float64)))
            labels = (out > threshold).astype(np.int8)
            return labels[..., 0] if labels.shape[-1] == 1 else labels
        return np.argmax(out, axis=-1)

    def diagnose(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None, file: TextIO | None = None,
                 verbose: bool = True) -> Diagnosis:
        """Print a table of per-layer training-health numbers for (X, y) -- gradient and weight norms,
        update/weight ratio, dead ReLU and saturated sigmoid/tanh fractions -- and return them (a
        ``fastnn.diagnostics.Diagnosis``: {layer name: {...}}, with ``.problems``).  Changes nothing; see
        ``fastnn.diagnostics.diagnose``."""
        from fastnn import diagnostics as _diagnostics
        return _diagnostics.diagnose(self, X, y, batch_size=batch_size, file=file, verbose=verbose)

    # ================================================================== saving
    def save(self, path: str | os.PathLike, include_optimizer: bool = True) -> None:
        """Save the model to one file (fastnn.io's format): architecture, weights, layer buffers, loss,
        optimizer and its state, generator states, ``epochs_trained``.  The write is atomic.  Name it ``.fnn``
        (or ``.npz``, or anything else): another library's extension (".keras", ".h5", ".pt", ".onnx", ".pkl",
        ...) is a ValueError, since the file would not be in that format (``fnn.onnx.export`` writes ONNX).

        After a distributed fit (``fit(distributed=...)``) only rank 0 writes; the other ranks return without
        writing (the models are identical; call ``DataParallel.barrier()`` before another rank reads the file)."""
        from fastnn import io as _io
        _io.check_extension(path, "save")
        self._require_built("save")
        dist = self.trainer.distributed
        if dist is not None and dist.rank != 0:
            return
        _io.save(self, path, include_optimizer=include_optimizer)

    def __repr__(self) -> str:
        state = f"{len(self.graph)} layers, {self.count_params()} parameters" if self.built else "not built"
        return f"{type(self).__name__}({state}, dtype={np.dtype(self.dtype).name})"


class Sequential(Model):
    """A chain of layers, each fed by the previous one.

    Args:
        layers: the layers, first to last; the first item may be an ``fnn.Input(shape)`` (Keras 3), which gives
            the input shape.
        input_dim: the number of input features (or the input shape as a tuple).  Given, the model is built
            (weights allocated and initialized) at construction; otherwise on the first fit/predict.
        seed, dtype: as for Model.
        input_shape: the shape of one sample, e.g. ``(H, W, C)`` or ``(None, F)`` for sequences of any length
            (Keras' name; give this or input_dim, not both).

    The input shape may come from ``input_dim`` / ``input_shape``, from an ``fnn.Input`` first in ``layers``, or
    from ``input_shape=`` / ``input_dim=`` given to the first layer (Keras' ``Dense(10, input_shape=(64,))``);
    two of them that disagree are a ValueError.  With one of them the model is built at construction (or, for
    layers given through ``add``, when first used).

    Example::

        model = fnn.Sequential([fnn.layers.Dense(128, activation="relu"), fnn.layers.Dense(10)], input_dim=64)
        model = fnn.Sequential([fnn.Input(64), fnn.layers.Dense(128, activation="relu"), fnn.layers.Dense(10)])
    """

    def __init__(self, layers: Sequence[Layer | Tensor] | None = None,
                 input_dim: int | Sequence[int | None] | None = None, seed: int | None = 0, dtype: str = "float32",
                 name: str | None = None, input_shape: int | Sequence[int | None] | None = None) -> None:
        self._init_common(seed, dtype, name)
        if input_dim is not None and input_shape is not None:
            raise ValueError(f"{self.name}: give input_dim or input_shape, not both (got {input_dim!r} and "
                             f"{input_shape!r})")
        shape = None
        if input_dim is not None:
            shape = Input(input_dim).shape
        elif input_shape is not None:
            shape = check_shape(type(self).__name__, "input_shape", input_shape)
        self._input = shape         # the declared per-sample input shape (None: from the first layer, or the data)
        self._layers: list[Layer] = []
        self._layer_ids: set[int] = set()     # add's check that a layer is not added twice, in constant time
        if isinstance(layers, (Layer, Tensor)):
            raise TypeError(f"{self.name}: layers must be a list of layers, got one {type(layers).__name__}; "
                            "write Sequential([...])")
        for layer in (layers or []):
            self.add(layer)
        shape = self._declared_input()
        if shape is not None:
            self._build_from_data(shape)

    def _declared_input(self):
        """The declared input shape: Sequential's input_dim / input_shape, an ``fnn.Input`` added first, or the
        first layer's ``input_shape=`` (None: none declared; the model is built from the first data)."""
        if self._input is not None:
            return self._input
        return self._layers[0].declared_input_shape if self._layers else None

    def add(self, layer: Layer | Tensor) -> None:
        """Append a layer (before the model is built).  An ``fnn.Input(shape)`` added before any layer declares
        the input shape (Keras 3's ``model.add(keras.Input(shape))``)."""
        if self.built:
            raise RuntimeError(f"{self.name}: cannot add layers to a built model")
        if isinstance(layer, Tensor):
            if layer.layer is not None:
                raise TypeError(f"{self.name}: Sequential takes layers (and an fnn.Input first), got the output "
                                f"tensor of {layer.layer.name}; use fnn.Model(inputs, outputs) for a graph")
            if self._layers:
                raise ValueError(f"{self.name}: an fnn.Input can only come first, before the layers")
            if self._input is not None and tuple(layer.shape) != self._input:
                raise ValueError(f"{self.name}: the fnn.Input has shape {tuple(layer.shape)}, but the input shape "
                                 f"{self._input} was also given; give it once")
            self._input = tuple(layer.shape)
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"{self.name}: expected a fastnn layer, got {type(layer).__name__}")
        if layer._in_graph or id(layer) in self._layer_ids:
            raise ValueError(f"{self.name}: layer {layer.name} is already used in a model")
        self._layers.append(layer)
        self._layer_ids.add(id(layer))

    @property
    def layers(self) -> list[Layer]:
        """The layers given or added, first to last (a copy of the list)."""
        return list(self._layers)

    def _build_from_data(self, feature_shape):
        if not self._layers:
            raise ValueError(f"{self.name}: the model has no layers")
        declared = self._declared_input()
        x = inp = Input(feature_shape if declared is None else declared)
        try:
            for layer in self._layers:
                x = layer(x)
            self._build_graph(inp, x)
        except Exception:
            for layer in self._layers:
                layer._in_graph = False
            raise
