"""Activation layers.  Each class names one compiled kind, a row of the kind table (csrc/fnn_kinds.h, mirrored in
Python as ``fastnn._core.kinds.ACT``), and is registered under that row's name when it is defined.

Elementwise activations apply to batches of any shape; Softmax normalizes over the last axis.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fastnn._core import activations as _k
from fastnn._core.kinds import ACT
from fastnn._core.kinds import check as _check_kind
from fastnn._typing import Config, FloatArray, NDArray
from fastnn._validation import check_number
from fastnn.layers.base import Layer, get_num_threads

# name -> class, for Dense(activation="name"): every Activation subclass with a ``kind`` registers itself here under
# its kind's table name (ACT.RELU.label == "relu"), plus the aliases it lists in ``aliases``
REGISTRY: dict[str, type[Activation]] = {}


_COVERED: set[Any] = set()    # the kinds that a class stands for (its own, and those it lists in ``covers``)


def _register(cls):
    cls.kind = _check_kind(ACT, cls.kind, cls.__name__)       # ValueError for a kind not in the table
    for name in (cls.kind.label,) + tuple(cls.aliases):
        if name in REGISTRY:
            raise ValueError(f"{cls.__name__}: activation name {name!r} is taken by {REGISTRY[name].__name__}")
        REGISTRY[name] = cls
    _COVERED.add(cls.kind)
    _COVERED.update(cls.__dict__.get("covers", ()))


class Activation(Layer):
    """Base of the activation layers: ``Y = f(X)`` with the compiled kernel of kind ``kind`` (an ``ACT`` member).

    A subclass sets ``kind`` (and ``aliases``, more registry names, if any); defining it registers it."""
    mask_support = "pass"     # per step: a mask on (N, T, ...) passes unchanged (fastnn.layers.base)
    kind: Any = None
    aliases: tuple[str, ...] = ()
    alpha = 0.0
    # (n_slots, n_features) int64 buffer for the unit counters (fastnn.diagnostics), or None
    _act_counts: NDArray[np.int64] | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("kind") is not None:
            _register(cls)

    def _build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: input must have at least one feature axis, got shape {input_shape}")
        return input_shape

    def _rows(self, X):
        # softmax is over the last axis; elementwise kinds may use any 2-D view
        return X.reshape(-1, X.shape[-1]) if X.ndim != 2 else X

    def forward(self, X: FloatArray, training: bool = False, logits: bool = False) -> FloatArray:
        """Y = f(X).  With logits=True (the output layer of a fused loss), return X itself."""
        self._X = X
        self._logits = logits
        if logits:
            return X
        Y = self._batch_buffers(X.shape, lambda n: np.empty(X.shape, dtype=X.dtype))
        if X.size:
            _k.activation_forward(self.kind, self._rows(X), self._rows(Y), self.alpha, get_num_threads(),
                                  self._act_counts)
        self._Y = Y
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        if self._logits:
            return dY
        X = self._X
        dX = self._batch_buffers(X.shape, lambda n: np.empty(X.shape, dtype=X.dtype), tag="grad")
        if X.size:
            _k.activation_backward(self.kind, self._rows(X), self._rows(self._Y), self._rows(dY), self._rows(dX),
                                   self.alpha, get_num_threads())
        return dX

class Identity(Activation):
    """f(x) = x."""
    kind = ACT.IDENTITY
    aliases = ("linear",)


class ReLU(Activation):
    """f(x) = max(x, 0); the derivative at 0 is taken as 0 (as torch does)."""
    kind = ACT.RELU


class _WithAlpha(Activation):
    """An activation with one parameter, ``alpha``, which goes to the kernel (saved in the config)."""

    def __init__(self, alpha: float, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha = check_number(type(self).__name__, "alpha", alpha)

    def get_config(self) -> Config:
        return {"name": self.name, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class LeakyReLU(_WithAlpha):
    """f(x) = x for x > 0, alpha * x otherwise (torch.nn.LeakyReLU's negative_slope)."""
    kind = ACT.LEAKY_RELU

    def __init__(self, alpha: float = 0.01, name: str | None = None) -> None:
        super().__init__(alpha, name)


class Sigmoid(Activation):
    """f(x) = 1 / (1 + exp(-x)), computed without overflow; fused with "binary_cross_entropy" at the output."""
    kind = ACT.SIGMOID
    fusable = "sigmoid"


class Tanh(Activation):
    """f(x) = tanh(x)."""
    kind = ACT.TANH


class Softmax(Activation):
    """Softmax over the last axis; fused with "cross_entropy" when it is the model's output layer."""
    kind = ACT.SOFTMAX
    fusable = "softmax"


class GELU(Activation):
    """Gaussian error linear unit, torch.nn.GELU: f(x) = x * Phi(x), Phi the standard normal CDF (exact, with erf).

    Args:
        approximate: "none" (exact, the default) or "tanh": f(x) = x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2,
            as ``torch.nn.GELU(approximate="tanh")``.
    """
    kind = ACT.GELU
    covers = (ACT.GELU_TANH,)
    _APPROXIMATIONS = {"none": ACT.GELU, "tanh": ACT.GELU_TANH}

    def __init__(self, approximate: str = "none", name: str | None = None) -> None:
        super().__init__(name)
        if approximate not in self._APPROXIMATIONS:
            raise ValueError(f"{type(self).__name__}: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.kind = self._APPROXIMATIONS[approximate]

    def get_config(self) -> Config:
        return {"name": self.name, "approximate": self.approximate}

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}" if self.approximate != "none" else ""


class SiLU(Activation):
    """Sigmoid linear unit (swish), torch.nn.SiLU: f(x) = x * sigmoid(x).  Registry names "silu" and "swish"."""
    kind = ACT.SILU
    aliases = ("swish",)


class ELU(_WithAlpha):
    """Exponential linear unit, torch.nn.ELU: f(x) = x for x > 0, alpha * (exp(x) - 1) otherwise."""
    kind = ACT.ELU

    def __init__(self, alpha: float = 1.0, name: str | None = None) -> None:
        super().__init__(alpha, name)


class SELU(Activation):
    """Scaled ELU, torch.nn.SELU: f(x) = scale * (x for x > 0, alpha * (exp(x) - 1) otherwise), with
    alpha = 1.6732632423543772 and scale = 1.0507009873554805 (self-normalizing networks)."""
    kind = ACT.SELU


class Softplus(Activation):
    """torch.nn.Softplus() (beta 1, threshold 20): f(x) = log(1 + exp(x)), and x itself for x > 20."""
    kind = ACT.SOFTPLUS


class Mish(Activation):
    """Mish, torch.nn.Mish: f(x) = x * tanh(softplus(x))."""
    kind = ACT.MISH


def _plain_class(kind):
    """A layer class for a row of the kind table: named after the row (CamelCase: "hard_tanh" -> HardTanh), no
    parameters, not yet registered."""
    name = "".join(part.capitalize() for part in kind.label.split("_"))
    cls = type(name, (Activation,), {"__module__": __name__, "__qualname__": name, "__doc__":
                                     f"The {kind.label!r} activation: its row in csrc/fnn_kinds.h, its math in "
                                     "csrc/fnn_act.h."})
    cls.kind = kind
    return cls


# a row of the table that no class above stands for gets a plain one, so that a new parameterless activation
# needs nothing here: Dense(activation="<name>"), saving and the compiled plans work from its row alone
for _kind in ACT:
    if _kind not in _COVERED:
        _cls = _plain_class(_kind)
        _register(_cls)
        globals()[_cls.__name__] = _cls

# class name -> class (saving, loading, the compiled plan), derived from REGISTRY
CLASSES = {cls.__name__: cls for cls in REGISTRY.values()}


def get(spec: str | Activation | None, owner: str = "activation") -> Activation:
    """An activation layer instance from a name (REGISTRY), None (identity) or an Activation instance."""
    if spec is None:
        return Identity()
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        cls = REGISTRY.get(spec.lower())
        if cls is None:
            raise ValueError(f"{owner}: unknown activation {spec!r}; known: {sorted(REGISTRY)}")
        return cls()
    raise TypeError(f"{owner}: activation must be a name, None or an activation layer, got {type(spec).__name__}")


def to_config(act: Activation) -> Config:
    """The config of a fused activation, as a layer with one (Dense, Conv1D, Conv2D) saves it: its class name and
    settings, without its own layer name."""
    cfg = {"class": type(act).__name__, **act.get_config()}
    cfg.pop("name")
    return cfg


def from_config(config: Config, owner: str) -> Activation:
    """The activation instance ``to_config`` described; ValueError naming `owner` for an unknown class."""
    config = dict(config)
    cls = CLASSES.get(config.pop("class", None))
    if cls is None:
        raise ValueError(f"{owner}: unknown activation in {config!r}")
    return cls(**config)
