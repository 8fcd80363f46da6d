"""Dense (fully connected) layer: Y = act(X.W + b), with the bias and activation fused into the GEMM's pass.

Applied to the last axis of an input of any rank (torch.nn.Linear, Keras Dense): a batch (N, ..., n_in) is
viewed as (N*..., n_in) rows (no copy) and runs through the same 2-D kernels."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastnn import constraints, initializers
from fastnn._core import dense as _k
from fastnn._core.kinds import ACT
from fastnn._typing import Config, FloatArray
from fastnn.layers import activations as _act
from fastnn.layers.base import Layer, ParamSpec, WeightBias, get_num_threads, rows2d

if TYPE_CHECKING:
    from typing_extensions import Self

    from fastnn.constraints import MaxNorm
    from fastnn.initializers import Initializer
    from fastnn.layers.activations import Activation


class Dense(WeightBias, Layer):
    """Fully connected layer.

    Args:
        units: number of output features (n_out).
        activation: a name ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu", "silu" or "swish",
            "elu", "selu", "softplus", "mish", "identity"), an activation layer instance (e.g. ``LeakyReLU(0.2)``,
            ``GELU(approximate="tanh")``, ``ELU(alpha=0.5)``), or None for the identity.
        kernel_init: initializer of the weight (default "xavier_uniform"); a name or an Initializer.
        bias_init: initializer of the bias (default "zeros").
        use_bias: whether the layer has a bias.
        max_norm: None, a positive number c, or a ``fastnn.constraints.MaxNorm``: after every optimizer step
            the incoming weights of each unit (each column of ``weight``) are rescaled to L2 norm at most c.

    Shape: input (n, ..., n_in), output (n, ..., units): the layer acts on the last axis, every leading
    position (a time step, a pixel) independently with the same weights.  ``weight`` is (n_in, units), ``bias``
    (units,): views into the
    model's flat parameter buffer, the same arrays for the model's life; ``weight_grad`` / ``bias_grad`` hold
    the gradients of the last backward pass.
    """
    mask_support = "pass"     # per step: a mask on (N, T, ...) passes unchanged (fastnn.layers.base)

    _act_counts = None   # (n_slots, units) int64 buffer the fused activation's unit counters go to (diagnostics)

    def __init__(self, units: int, activation: str | Activation | None = None,
                 kernel_init: str | Initializer = "xavier_uniform", bias_init: str | Initializer = "zeros",
                 use_bias: bool = True, max_norm: float | MaxNorm | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise TypeError(f"{self.name}: units must be an int, got {type(units).__name__} {units!r}")
        if units < 1:
            raise ValueError(f"{self.name}: units must be >= 1, got {units}")
        self.units = int(units)
        self.activation = _act.get(activation, owner=self.name)
        self.kernel_init = initializers.get(kernel_init, owner=f"{self.name} kernel_init")
        self.bias_init = initializers.get(bias_init, owner=f"{self.name} bias_init")
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"{self.name}: use_bias must be a bool, got {type(use_bias).__name__}")
        self.use_bias = bool(use_bias)
        self.constraint = constraints.get(max_norm, owner=f"{self.name} max_norm")
        self.fusable = self.activation.fusable

    def _build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: Dense expects inputs of shape (n, ..., features), got feature shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.units,)

    def param_specs(self) -> list[ParamSpec]:
        n_in = self.input_shape[-1]
        specs = [ParamSpec("weight", (n_in, self.units), self.kernel_init, True, fan_in=n_in, fan_out=self.units,
                           unit_axis=1)]
        if self.use_bias:
            specs.append(ParamSpec("bias", (self.units,), self.bias_init, False, unit_axis=0))
        return specs

    @property
    def has_constraint(self) -> bool:
        return self.constraint is not None

    def apply_constraint(self) -> None:
        """Called by the model after each optimizer step: applies the weight constraint, if any."""
        if self.constraint is not None:
            self.constraint(self.params["weight"], unit_axis=1)

    def forward(self, X: FloatArray, training: bool = False, logits: bool = False) -> FloatArray:
        def make(_):
            Z = np.empty(X.shape[:-1] + (self.units,), dtype=self.dtype)
            return Z, (Z if self.activation.kind == ACT.IDENTITY else np.empty_like(Z))

        Z, Y = self._batch_buffers(X.shape, make)
        kind = ACT.IDENTITY if logits else self.activation.kind
        out = Z if kind == ACT.IDENTITY else Y
        counts = self._act_counts if kind != ACT.IDENTITY else None      # unit counters, only while diagnostics ask
        X2, Z2 = rows2d(X), rows2d(Z)
        _k.dense_forward(X2, self.params["weight"], self.params.get("bias"), Z2, rows2d(out), kind,
                         self.activation.alpha, get_num_threads(), counts)
        self._X, self._Z, self._Y, self._kind = X2, Z2, rows2d(out), kind
        return out

    def backward(self, dY: FloatArray) -> FloatArray | None:
        def make(_):
            dZ = np.empty(dY.shape, dtype=self.dtype) if self.activation.kind != ACT.IDENTITY else None
            dX = np.empty(dY.shape[:-1] + (self.input_shape[-1],), dtype=self.dtype)
            return dZ, dX

        dZ, dX = self._batch_buffers(dY.shape, make, tag="grad")
        dY2 = rows2d(dY)
        _k.dense_backward(self._X, self.params["weight"], self._Z, self._Y, dY2,
                          rows2d(dZ) if dZ is not None else dY2, rows2d(dX) if self.need_input_grad else None,
                          self.grads["weight"], self.grads.get("bias"), self._kind, self.activation.alpha,
                          get_num_threads())
        return dX if self.need_input_grad else None

    def get_config(self) -> Config:
        act_cfg = _act.to_config(self.activation)
        cfg = {"name": self.name, "units": self.units, "activation": act_cfg,
               "kernel_init": self.kernel_init.get_config(), "bias_init": self.bias_init.get_config(),
               "use_bias": self.use_bias}
        if self.constraint is not None:
            cfg["max_norm"] = self.constraint.max_value
        return cfg

    @classmethod
    def from_config(cls, config: Config) -> Self:
        config = dict(config)
        act = _act.from_config(config.pop("activation"), "Dense.from_config")
        return cls(activation=act, kernel_init=initializers.from_config(config.pop("kernel_init")),
                   bias_init=initializers.from_config(config.pop("bias_init")), **config)

    def extra_repr(self) -> str:
        act = type(self.activation).__name__
        return f"{self.units}" + (f", activation={act}" if act != "Identity" else "")
