"""The layer contract shared by every layer.

A layer is built once for a feature shape (the shape of one sample, without the batch axis), declares its
parameters as `ParamSpec`s, and receives views into the model's flat parameter and gradient buffers.  At
run time ``forward(X, training)`` returns the layer's output and ``backward(dY)`` the gradient with respect
to its input, leaving the parameter gradients in the gradient views.  Both work on whole batches (first
axis) and write into buffers the layer owns, made once per batch shape and reused.

Data layout: channels-last.  Features are on the last axis: a batch of vectors is (N, F), of sequences
(N, T, F), of images (N, H, W, C); a layer with a per-feature parameter applies it along the last axis.

Layers with several inputs set ``n_inputs`` (None: any number >= 2) and take / return lists of arrays; a
layer may also set ``n_inputs`` on itself when it is called (initial states: ``lstm(x, initial_state=[h, c])``).
Layers with several outputs set ``n_outputs``: ``_build`` returns a list of shapes, ``forward`` a list of
arrays, ``backward`` receives a list of gradients (None for an output nothing consumed).  See fastnn.graph.

Masks (issue 12): an (N, T) bool array (True = a real step) travels with a sequence tensor (N, T, ...).
``mask_support`` says what a layer does with one: None refuses it (an error when the model is built), "pass"
ignores it and hands it on unchanged (per-step layers), "use" receives it as ``forward(X, training, mask=M)``
(M None when no mask arrives at run time) and keeps what backward needs.  ``output_mask(mask)`` gives the
output's mask (per output for a multi-output layer); it is also called at build time with ``True`` standing for
"a mask arrives", so it must hand the mask back as an opaque value or return None.  Mask producers
(Embedding(mask_zero=True), Masking) have ``produces_mask`` True and ``compute_mask(X)``; their mask replaces
any incoming one.  The executor computes masks only in graphs that have a producer, and the loss ignores the
masked positions of the model's output.
"""
from __future__ import annotations

import difflib
import inspect
import math
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from fastnn._core._threads import get_num_threads  # noqa: F401  (re-exported for the layer modules)
from fastnn._core.attrs import StrictAttributes
from fastnn._typing import Config, FloatArray, NDArray, Shape
from fastnn.graph import Tensor, check_shape
from fastnn.initializers import default_fans

if TYPE_CHECKING:
    from typing_extensions import Self


class ParamSpec(namedtuple("ParamSpec", "name shape init decay fan_in fan_out unit_axis")):
    """A parameter a layer asks for.

    Fields: ``name``; ``shape``; ``init``, its initializer; ``decay``, whether weight decay applies;
    ``fan_in`` / ``fan_out``, the inputs feeding one output unit and the outputs fed by one input (what
    Glorot/He initializers scale by); ``unit_axis``, the axis of ``shape`` that indexes the output units (what
    ``MaxNorm``, pruning and diagnostics treat as one unit per index; the others hold a unit's incoming weights).

    The last three default from the shape (``default_fans``; unit axis the last), which is right for a Dense
    weight (n_in, units): fan_in n_in, fan_out units, unit axis 1, and for a bias (units,).  A layer whose
    layout differs passes them explicitly.  ``initialize(rng)`` draws the initial value from the spec's fans.
    """
    __slots__ = ()

    def __new__(cls, name: str, shape: Sequence[int | None], init: Callable[..., NDArray[np.float64]], decay: bool,
                fan_in: int | None = None, fan_out: int | None = None, unit_axis: int | None = None) -> ParamSpec:
        # a None dimension (a layer built on a variable axis) is kept: the parameter table refuses it, naming the layer
        shape = tuple(None if d is None else int(d) for d in shape)
        fi, fo = (None, None) if None in shape else default_fans(cast("tuple[int, ...]", shape))
        for given, what in ((fan_in, "fan_in"), (fan_out, "fan_out")):
            if given is not None and (isinstance(given, bool) or int(given) != given or given < 1):
                raise ValueError(f"ParamSpec {name!r}: {what} must be an int >= 1, got {given!r}")
        fan_in = fi if fan_in is None else int(fan_in)
        fan_out = fo if fan_out is None else int(fan_out)
        if unit_axis is None:
            unit_axis = max(len(shape) - 1, 0)
        else:
            unit_axis = int(unit_axis)
            if not -len(shape) <= unit_axis < max(len(shape), 1):
                raise ValueError(f"ParamSpec {name!r}: unit_axis {unit_axis} is out of range for shape {shape}")
            unit_axis %= max(len(shape), 1)
        return super().__new__(cls, name, shape, init, decay, fan_in, fan_out, unit_axis)

    @property
    def fans(self) -> tuple[int, int]:
        """(fan_in, fan_out)."""
        return self.fan_in, self.fan_out

    def initialize(self, rng: np.random.Generator) -> NDArray[np.float64]:
        """The initial value (a float64 array of ``shape``) drawn by ``init`` from `rng` with this spec's fans."""
        return self.init(self.shape, rng, fans=self.fans)

_name_counts: dict[str, int] = {}


def _auto_name(prefix: str) -> str:
    _name_counts[prefix] = _name_counts.get(prefix, 0) + 1
    return f"{prefix}_{_name_counts[prefix]}"


# incremented by every assignment to a layer's ``trainable``: a parameter table compares it with the count it
# saw at its last layout, so that the trainer notices a change since compile without visiting the layers
_trainable_changes = [0]


def trainable_changes() -> int:
    """How many times ``trainable`` has been assigned on any layer (a cheap change detector)."""
    return _trainable_changes[0]


# layer class -> the names of input_shape / input_dim that its constructor takes itself (Embedding's input_dim)
_own_input_kwargs: dict[type, frozenset] = {}


def _declared_input(cls, kwargs):
    """Take Keras' ``input_shape=`` / ``input_dim=`` out of a layer constructor's `kwargs` (unless the class's
    constructor has a parameter of that name itself, as Embedding's ``input_dim``, the vocabulary size) and
    return the per-sample shape they declare, or None."""
    own = _own_input_kwargs.get(cls)
    if own is None:
        params = inspect.signature(cls.__init__).parameters
        own = _own_input_kwargs[cls] = frozenset(k for k in ("input_shape", "input_dim") if k in params)
    given = {k: kwargs.pop(k) for k in ("input_shape", "input_dim") if k not in own and k in kwargs}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if len(given) == 2:
        raise ValueError(f"{cls.__name__}: give input_shape or input_dim, not both (got {given['input_shape']!r} "
                         f"and {given['input_dim']!r})")
    (key, value), = given.items()
    return check_shape(cls.__name__, key, value)


class _SealOnConstruction(type):
    """The layers' metaclass: once the outermost ``__init__`` has run, the layer is sealed, and a public
    attribute it does not define can no longer be set (see ``Layer._reject_attribute``).

    It also takes Keras' ``input_shape=`` / ``input_dim=`` keyword arguments of any layer constructor (the shape of
    one sample, as ``Sequential(input_shape=...)``): kept as ``layer.declared_input_shape``; the first layer of a
    ``Sequential`` gives the model its input shape, and any layer checks it against its input when built."""

    def __call__(cls, *args, **kwargs):
        declared = _declared_input(cls, kwargs)
        layer = super().__call__(*args, **kwargs)
        layer.__dict__["_declared_input_shape"] = declared
        layer.__dict__["_sealed"] = True
        return layer


class Layer(StrictAttributes, metaclass=_SealOnConstruction):
    """Base class of all layers.

    Subclasses implement ``_build(input_shape) -> output_shape``, ``param_specs()`` (if they have
    parameters), ``forward`` and ``backward``, and ``get_config``.

    Attributes are strict once the layer is constructed: setting a public name the layer does not define
    (``dense.activaton = "relu"``, ``layer.trainabel = False``) raises AttributeError naming the layer and the
    closest known name, instead of silently adding an attribute nothing reads.  Settings the layer defines,
    properties, and private names (a leading underscore: the state ``forward`` / ``backward`` keep) are set as
    usual; the check is C code (``fastnn._core.attrs``) that private names pass at the cost of a plain
    assignment.  A subclass sets its own public attributes in its ``__init__``, which runs before the seal.

    ``trainable`` (True by default) says whether the optimizer updates the layer's parameters (Keras'
    ``Layer.trainable``).  As in Keras, a change takes effect at the next ``model.compile(...)``: ``fit`` and
    ``train_on_batch`` raise a RuntimeError while a change is pending.  A frozen layer still passes gradients
    to the layers before it; its parameters keep their values and get no optimizer state.  Setting it on a
    container (a ``Residual``) sets it on the container's layers too, and a layer inside a frozen container
    is frozen whatever its own flag.  A frozen ``BatchNorm`` runs in inference mode (Keras 3).
    """
    n_inputs: int | None = 1    # number of input tensors (None: variable, >= 2; a layer may set it when called)
    n_outputs: int = 1          # number of output tensors (> 1: forward returns a list, backward receives one)
    mask_support: str | None = None   # None: refuses a mask; "pass": hands it on unchanged; "use": forward(..., mask=M)
    produces_mask: bool = False  # True for a layer that makes a mask (then compute_mask(X) gives it)
    integer_input: bool = False  # True for a layer that takes integer ids (Embedding): the model keeps X integer
    fusable: str | None = None  # "softmax" / "sigmoid": the layer ends in that function and can hand logits to a loss
    _max_cached_batches = 8
    _trainable = True     # the layer's own flag (``trainable``)
    _frozen = False       # set by the parameter table at its layout: the parameters are not trained (as compiled)

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a str, got {type(name).__name__}")
        self.name = name or _auto_name(type(self).__name__.lower())
        self.built = False
        self.input_shape: Any = None      # feature shape(s), without the batch axis
        self.output_shape: Any = None
        self.dtype: np.dtype[Any] | None = None
        self.params: dict[str, FloatArray] = {}   # name -> view into the model's flat parameter buffer
        self.grads: dict[str, FloatArray] = {}    # name -> view into the model's flat gradient buffer
        self.buffers: dict[str, NDArray[Any]] = {}   # name -> non-trainable state saved with the model (running stats)
        self.need_input_grad = True  # False when the input is the model's input: dX is not computed
        self._in_graph = False
        self._buffers: OrderedDict[Any, Any] = OrderedDict()

    # ------------------------------------------------------------------ graph construction
    def __call__(self, inputs: Tensor | Sequence[Tensor]) -> Any:
        """Call the layer on a tensor (or a list of tensors): the symbolic output tensor (``fastnn.graph``)."""
        return Tensor.from_layer(self, inputs)

    def call_on(self, inputs: Sequence[Tensor]) -> Any:
        """Call the layer on the list of tensors a saved graph lists for its node (``fastnn.io`` rebuilds graphs
        with it): one tensor as ``self(t)``; several, for a layer whose input count is fixed by its class, as
        ``self(list)``, else (inputs decided at call time: initial states) with ``n_inputs`` set to their count.
        Returns what calling the layer returns."""
        if len(inputs) == 1:
            return self(inputs[0])
        if type(self).n_inputs == 1:
            self.n_inputs = len(inputs)
            return Tensor.from_layer(self, list(inputs))
        return self(list(inputs))

    _declared_input_shape = None

    @property
    def declared_input_shape(self) -> tuple[int | None, ...] | None:
        """The per-sample input shape given to the constructor as Keras' ``input_shape=`` / ``input_dim=``
        (a tuple; None when not given)."""
        return self._declared_input_shape

    def build(self, input_shape: Shape | list[Shape]) -> Shape | list[Shape]:
        """Infer the output shape from the input shape (a tuple, or a list of tuples for multi-input layers);
        a layer with ``n_outputs > 1`` returns a list of shapes.  A layer given ``input_shape=`` (or
        ``input_dim=``) at construction refuses any other input shape (a None axis of the declared shape
        matches any size)."""
        declared = self._declared_input_shape
        if declared is not None and not (
                isinstance(input_shape, tuple) and len(input_shape) == len(declared)
                and all(d is None or d == s for d, s in zip(declared, input_shape))):
            raise ValueError(f"{self.name}: was given input_shape={declared}, but its input has shape "
                             f"{input_shape}; input_shape / input_dim on a layer declares the model's input (on the "
                             "first layer of a Sequential); leave it out on later layers, or make it agree")
        out = self._build(input_shape)
        self.input_shape = input_shape
        if self.n_outputs != 1:
            self.output_shape = [tuple(None if d is None else int(d) for d in o) for o in out]
        else:
            self.output_shape = tuple(None if d is None else int(d) for d in out)   # None: a variable axis
        self.built = True
        return self.output_shape

    def _build(self, input_shape):
        return input_shape

    def param_specs(self) -> list[ParamSpec]:
        """The parameters this layer needs, as ParamSpecs (none by default)."""
        return []

    def _bind(self, params, grads, dtype):
        """Receive views into the model's flat buffers (dicts keyed by ParamSpec name) and the model dtype."""
        self.params = params
        self.grads = grads
        self.dtype = dtype
        self._buffers.clear()

    # ------------------------------------------------------------------ freezing and strict attributes
    @property
    def trainable(self) -> bool:
        """Whether the optimizer updates this layer's parameters (True by default; see the class docstring:
        a change takes effect at the next ``compile``)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{self.name}: trainable must be a bool, got {type(value).__name__} {value!r}")
        self._trainable = bool(value)
        _trainable_changes[0] += 1
        for layer in self.sublayers():      # a container propagates the flag (Keras)
            layer.trainable = value

    def _reject_attribute(self, name):
        """Called (by ``fastnn._core.attrs``) for a public attribute the constructed layer does not define."""
        known = sorted({k for k in self.__dict__ if not k.startswith("_")} |
                       {k for k in dir(type(self)) if not k.startswith("_")})
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(f"{self.name}: {type(self).__name__} has no attribute {name!r}{hint} (a layer accepts "
                             "only the settings it defines; names starting with '_' are free for private state)")

    # ------------------------------------------------------------------ optional capabilities
    # The model and the services (io, prune, diagnostics, the compiled plan) ask the layer through these
    # methods, with these defaults, instead of testing for attributes.
    # containers: the get_config / constructor key that holds the sublayers
    sublayers_key: ClassVar[str | None] = None

    def sublayers(self) -> list[Layer]:
        """The layers this layer contains (a container such as Residual), graph nodes of their own that run
        before it; ``fastnn.io`` saves them as nodes and refers to them under ``sublayers_key``.  [] by default."""
        return []

    def attach_rng(self, generator: np.random.Generator) -> None:
        """Receive the model's seeded ``layer_rng`` (random layers draw from it); ignored by default."""

    @property
    def has_constraint(self) -> bool:
        """Whether ``apply_constraint`` changes the weights (the model calls it after every update)."""
        return False

    def apply_constraint(self) -> None:
        """Project the parameters onto their constraint after an optimizer step; nothing by default."""

    # ------------------------------------------------------------------ masks
    def output_mask(self, mask: Any) -> Any:
        """The mask of the output given the input's `mask` ((N, T) bool array; at build time ``True``): the mask
        itself for a "pass" layer, else None.  A multi-output layer may return a list (one per output); a single
        value is its first output's mask."""
        return mask if self.mask_support == "pass" else None

    def compute_mask(self, X: NDArray[Any]) -> NDArray[np.bool_]:
        """A producer's (N, T) bool mask of its output for the input batch X (True = a real step)."""
        raise NotImplementedError(f"{self.name}: {type(self).__name__} makes no mask")

    def mask_description(self) -> str:
        """How this producer makes its mask, for error messages ("mask_zero=True")."""
        return "its mask"

    # ------------------------------------------------------------------ execution
    def forward(self, X: Any, training: bool = False) -> Any:
        """The output for the batch X (an array; a list of arrays for a multi-input layer), made in a buffer the
        layer owns; a multi-output layer returns a list.  ``training`` selects the training behaviour (dropout,
        batch statistics)."""
        raise NotImplementedError

    def backward(self, dY: Any) -> Any:
        """The gradient with respect to the input of the last ``forward`` (a list for a multi-input layer, None
        where an input has none), given the output's gradient dY (a list for a multi-output layer); the
        parameter gradients go into ``grads``."""
        raise NotImplementedError

    def _batch_buffers(self, shape, make, tag=None):
        """Buffers for one batch shape: made once by ``make(n)`` (n = the batch size) and reused.

        The cache key is the batch's full shape (a tuple, batch axis included) and ``tag`` (e.g. "grad" for the
        backward's buffers), so that two batches of the same size but another shape (a sequence of another
        length) never share buffers; a few shapes are kept (least recently made first out).
        """
        key = (tag, shape) if tag is not None else shape
        bufs = self._buffers.get(key)
        if bufs is None:
            bufs = make(shape[0])
            self._buffers[key] = bufs
            if len(self._buffers) > self._max_cached_batches:
                self._buffers.popitem(last=False)
        return bufs

    # ------------------------------------------------------------------ description
    def get_config(self) -> Config:
        """The constructor's keyword arguments, JSON-serializable: ``type(self)(**get_config())`` rebuilds the
        layer (initializers and activations as their own configs / names)."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """A new, unbuilt layer from ``get_config()``'s output."""
        return cls(**config)

    def extra_repr(self) -> str:
        """The constructor arguments ``repr`` shows (besides the name)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra + ', ' if extra else ''}name={self.name!r})"

    def _param(self, key):
        if key not in self.params:
            raise AttributeError(f"{self.name}: no parameter {key!r} (is the layer in a built model?)")
        return self.params[key]

    def _set_param(self, key, value):
        view = self._param(key)
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"{self.name}: {key} must have shape {view.shape}, got {value.shape}")
        if value.dtype.kind not in "fiu":
            raise TypeError(f"{self.name}: {key} must hold real numbers, got dtype {value.dtype}")
        if not np.isfinite(value).all():
            raise ValueError(f"{self.name}: {key} contains NaN or infinity")
        view[...] = value


class WeightBias:
    """Mixin: ``weight`` and ``bias`` as writable views into the model's flat parameter buffer (assigning copies
    into the view, after checking shape and values), and ``weight_grad`` / ``bias_grad`` from the last backward.
    A layer without a bias (``use_bias=False``) has ``bias`` None."""

    name: str
    _param: Callable[[str], FloatArray]
    _set_param: Callable[[str, Any], None]
    grads: dict[str, FloatArray]

    def _has_bias(self) -> bool:
        return getattr(self, "use_bias", True)

    @property
    def weight(self) -> FloatArray:
        """The weight (a view into the model's flat parameters); assigning copies into it."""
        return self._param("weight")

    @weight.setter
    def weight(self, value: Any) -> None:
        self._set_param("weight", value)

    @property
    def bias(self) -> FloatArray | None:
        """The bias (a view into the model's flat parameters), None without one; assigning copies into it."""
        return self._param("bias") if self._has_bias() else None

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self._has_bias():
            raise AttributeError(f"{self.name}: the layer has no bias (use_bias=False)")
        self._set_param("bias", value)

    @property
    def weight_grad(self) -> FloatArray | None:
        """The weight's gradient from the last backward."""
        return self.grads.get("weight")

    @property
    def bias_grad(self) -> FloatArray | None:
        """The bias's gradient from the last backward (None without a bias)."""
        return self.grads.get("bias") if self._has_bias() else None


def flat2d(X: NDArray[Any]) -> NDArray[Any]:
    """A (n, features) view of a C-contiguous batch of any rank (no copy)."""
    return X.reshape(X.shape[0], -1) if X.ndim != 2 else X


def rows2d(X: NDArray[Any]) -> NDArray[Any]:
    """A (rows, features) view of a C-contiguous array of rank >= 1 whose features are on the last axis:
    every leading axis becomes a row (a (N, T, F) batch -> (N*T, F)).  Never copies: an array that is not
    C-contiguous raises instead (a copy would silently drop what a kernel writes into it)."""
    if X.ndim == 2:
        return X
    if not X.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous array of shape {X.shape}, got a strided view")
    return X.reshape(math.prod(X.shape[:-1]), X.shape[-1])
