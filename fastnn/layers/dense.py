"""Dense (fully connected) layer: Y = act(X.W + b), with the bias and activation fused into the GEMM's pass."""
import numpy as np

from fastnn import constraints, initializers
from fastnn._core import dense as _k
from fastnn.layers import activations as _act
from fastnn.layers.base import Layer, ParamSpec, WeightBias, get_num_threads


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

    Shape: input (n, n_in), output (n, units).  ``weight`` is (n_in, units), ``bias`` (units,): views into the
    model's flat parameter buffer, the same arrays for the model's life; ``weight_grad`` / ``bias_grad`` hold
    the gradients of the last backward pass.
    """

    _act_counts = None   # (n_slots, units) int64 buffer the fused activation's unit counters go to (diagnostics)

    def __init__(self, units, activation=None, kernel_init="xavier_uniform", bias_init="zeros", use_bias=True,
                 max_norm=None, name=None):
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
        if len(input_shape) != 1:
            raise ValueError(f"{self.name}: Dense expects inputs of shape (n, features), got feature shape "
                             f"{input_shape}")
        return (self.units,)

    def param_specs(self):
        specs = [ParamSpec("weight", (self.input_shape[0], self.units), self.kernel_init, True)]
        if self.use_bias:
            specs.append(ParamSpec("bias", (self.units,), self.bias_init, False))
        return specs

    def _apply_constraint(self):
        """Called by the model after each optimizer step when the layer has a constraint."""
        self.constraint(self.params["weight"])

    def _make_buffers(self, n):
        Z = np.empty((n, self.units), dtype=self.dtype)
        Y = Z if self.activation.kind == 0 else np.empty_like(Z)
        return Z, Y

    def forward(self, X, training=False, logits=False):
        Z, Y = self._batch_buffers(X.shape[0], self._make_buffers)
        kind = 0 if logits else self.activation.kind
        out = Z if kind == 0 else Y
        counts = self._act_counts if kind else None      # unit counters, only while diagnostics ask for them
        _k.dense_forward(X, self.params["weight"], self.params.get("bias"), Z, out, kind, self.activation.alpha,
                         get_num_threads(), counts)
        self._X, self._Z, self._Y, self._kind = X, Z, out, kind
        return out

    def backward(self, dY):
        n = dY.shape[0]
        n_in = self.input_shape[0]

        def make(_):
            dZ = np.empty((n, self.units), dtype=self.dtype) if self.activation.kind != 0 else None
            dX = np.empty((n, n_in), dtype=self.dtype)
            return dZ, dX

        dZ, dX = self._batch_buffers(-1 - n, make)
        _k.dense_backward(self._X, self.params["weight"], self._Z, self._Y, dY, dZ if dZ is not None else dY,
                          dX if self.need_input_grad else None, self.grads["weight"], self.grads.get("bias"),
                          self._kind, self.activation.alpha, get_num_threads())
        return dX if self.need_input_grad else None

    def get_config(self):
        act = self.activation
        act_cfg = {"class": type(act).__name__, **act.get_config()}
        act_cfg.pop("name")
        cfg = {"name": self.name, "units": self.units, "activation": act_cfg,
               "kernel_init": self.kernel_init.get_config(), "bias_init": self.bias_init.get_config(),
               "use_bias": self.use_bias}
        if self.constraint is not None:
            cfg["max_norm"] = self.constraint.max_value
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        act = dict(config.pop("activation"))
        act_cls = _act.CLASSES.get(act.pop("class"))
        if act_cls is None:
            raise ValueError(f"Dense.from_config: unknown activation in {config!r}")
        return cls(activation=act_cls(**act), kernel_init=initializers.from_config(config.pop("kernel_init")),
                   bias_init=initializers.from_config(config.pop("bias_init")), **config)

    def extra_repr(self):
        act = type(self.activation).__name__
        return f"{self.units}" + (f", activation={act}" if act != "Identity" else "")
