"""Convolution layers, channels-last: Conv2D over (N, H, W, C) and Conv1D over (N, T, C).

Y = act(conv(X, W) + b), bias and activation fused into the kernel's pass over each output tile
(fastnn/_core/conv.pyx: float32 layers with at least 4 input channels and 4 filters per group run register-
blocked direct kernels, csrc/fnn_conv_direct.h, on AVX-512 or AVX2+FMA CPUs; other layers tiled im2col + GEMM;
a 1x1 convolution is the Dense GEMM, a depthwise one and small first layers direct loops).
The weight is laid out (kh, kw, C_in / groups, filters) as Keras lays out its kernels: a PyTorch ``Conv2d.weight``
(filters, C_in / groups, kh, kw) maps to it as ``w.permute(2, 3, 1, 0)`` (Conv1d: ``w.permute(2, 1, 0)``).
Conv1D runs as a Conv2D of height 1 through the same kernels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn import constraints, initializers
from fastnn._core import conv as _k
from fastnn._core.kinds import ACT
from fastnn._typing import Config, FloatArray
from fastnn.layers import activations as _act
from fastnn.layers.base import Layer, ParamSpec, WeightBias, get_num_threads

if TYPE_CHECKING:
    from typing_extensions import Self

    from fastnn.constraints import MaxNorm
    from fastnn.initializers import Initializer
    from fastnn.layers.activations import Activation


def _int(value, what, owner, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value}")
    return int(value)


def _tuple(value, n, what, owner):
    """An int or a sequence of n ints (each >= 1) -> a tuple of n ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{owner}: {what} must be an int or {n} ints, got {tuple(value)!r}")
        return tuple(_int(v, what, owner) for v in value)
    return (_int(value, what, owner),) * n


def _padding(value, rank, owner):
    """Normalize `padding`: "valid", "same" (and "causal" for rank 1), or explicit zeros as ((before, after),)
    per spatial axis."""
    if isinstance(value, str):
        v = value.lower()
        allowed = ("valid", "same", "causal") if rank == 1 else ("valid", "same")
        if v not in allowed:
            raise ValueError(f"{owner}: padding must be one of {allowed} or explicit sizes, got {value!r}")
        return v
    def pair(p):
        if isinstance(p, (tuple, list)):
            if len(p) != 2:
                raise ValueError(f"{owner}: explicit padding must be (before, after) per axis, got {p!r}")
            return (_int(p[0], "padding", owner, 0), _int(p[1], "padding", owner, 0))
        p = _int(p, "padding", owner, 0)
        return (p, p)
    if rank == 1:
        return (pair(value),)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner}: padding must be an int, (pad_h, pad_w) or ((top, bottom), (left, right)), "
                             f"got {value!r}")
        return (pair(value[0]), pair(value[1]))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        p = pair(value)
        return (p, p)
    raise TypeError(f"{owner}: padding must be a str, an int or a tuple, got {type(value).__name__} {value!r}")


def _same(n, k, s, d):
    """TensorFlow's "same": output ceil(n / s); the odd one of the total padding goes after (bottom / right)."""
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


class _Conv(WeightBias, Layer):
    """The shared body of Conv1D and Conv2D (``_rank`` spatial axes)."""

    _rank = 2
    _act_counts = None   # (n_slots, filters) int64: the fused activation's unit counters (diagnostics), or None

    def __init__(self, filters: int, kernel_size: int | tuple[int, ...], strides: int | tuple[int, ...] = 1,
                 padding: str | Sequence[Any] = "valid", dilation_rate: int | tuple[int, ...] = 1, groups: int = 1,
                 activation: str | Activation | None = None, use_bias: bool = True,
                 kernel_init: str | Initializer = "xavier_uniform", bias_init: str | Initializer = "zeros",
                 max_norm: float | MaxNorm | None = None, name: str | None = None) -> None:
        super().__init__(name)
        r = self._rank
        self.filters = _int(filters, "filters", self.name)
        self.kernel_size = _tuple(kernel_size, r, "kernel_size", self.name)
        self.strides = _tuple(strides, r, "strides", self.name)
        self.dilation_rate = _tuple(dilation_rate, r, "dilation_rate", self.name)
        self.padding = _padding(padding, r, self.name)
        self.groups = _int(groups, "groups", self.name)
        if self.filters % self.groups:
            raise ValueError(f"{self.name}: filters ({self.filters}) must be a multiple of groups ({self.groups})")
        self.activation = _act.get(activation, owner=self.name)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise TypeError(f"{self.name}: use_bias must be a bool, got {type(use_bias).__name__}")
        self.use_bias = bool(use_bias)
        self.kernel_init = initializers.get(kernel_init, owner=f"{self.name} kernel_init")
        self.bias_init = initializers.get(bias_init, owner=f"{self.name} bias_init")
        self.constraint = constraints.get(max_norm, owner=f"{self.name} max_norm")
        self.fusable = self.activation.fusable

    # ------------------------------------------------------------------ shapes
    @property
    def spatial_rank(self) -> int:
        """The number of spatial axes: 2 for Conv2D, 1 for Conv1D."""
        return self._rank

    def pads_for(self, sizes: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """((before, after) zeros per spatial axis) for input spatial sizes `sizes` (ints)."""
        if self.padding == "valid":
            return ((0, 0),) * self._rank
        if self.padding == "causal":
            return ((self.dilation_rate[0] * (self.kernel_size[0] - 1), 0),)
        if self.padding == "same":
            return tuple(_same(n, k, s, d) for n, k, s, d in
                         zip(sizes, self.kernel_size, self.strides, self.dilation_rate))
        return self.padding

    def _out_size(self, axis, n, pads):
        if n is None:
            return None
        k, s, d = self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis]
        span = n + pads[axis][0] + pads[axis][1]
        out = (span - d * (k - 1) - 1) // s + 1
        if out < 1:
            raise ValueError(f"{self.name}: the kernel {self.kernel_size} (dilation {self.dilation_rate}) is larger "
                             f"than the {'padded ' if span != n else ''}input: spatial size {n} "
                             f"(padded to {span}) along axis {axis + 1} gives an empty output")
        return out

    def _check_layout(self, input_shape):
        """The PyTorch-layout trap (Conv2D only): see Conv2D's docstring."""

    def _build(self, input_shape):
        r = self._rank
        shape = tuple(input_shape)
        if len(shape) != r + 1:
            want = "(H, W, C)" if r == 2 else "(T, C)"
            raise ValueError(f"{self.name}: {type(self).__name__} expects samples of shape {want} (channels-last), "
                             f"got a sample shape {shape}")
        C = shape[-1]
        if C is None:
            raise ValueError(f"{self.name}: the channel axis (last) must have a fixed size, got {shape}")
        self._check_layout(shape)
        if C % self.groups:
            raise ValueError(f"{self.name}: input channels ({C}) must be a multiple of groups ({self.groups}); "
                             f"sample shape {shape}")
        sizes = shape[:-1]
        pads = self.pads_for(tuple(1 if n is None else n for n in sizes))      # an axis' padding needs its size only
        out = [None if n is None else self._out_size(a, n, pads) for a, n in enumerate(sizes)]
        return tuple(out) + (self.filters,)

    def param_specs(self) -> list[ParamSpec]:
        C = self.input_shape[-1]
        cg = C // self.groups
        field = int(np.prod(self.kernel_size))
        shape = tuple(self.kernel_size) + (cg, self.filters)
        specs = [ParamSpec("weight", shape, self.kernel_init, True, fan_in=field * cg,
                           fan_out=field * self.filters // self.groups, unit_axis=len(shape) - 1)]
        if self.use_bias:
            specs.append(ParamSpec("bias", (self.filters,), self.bias_init, False, unit_axis=0))
        return specs

    @property
    def has_constraint(self) -> bool:
        return self.constraint is not None

    def apply_constraint(self) -> None:
        """Called by the model after each optimizer step: applies the weight constraint (per filter), if any."""
        if self.constraint is not None:
            W = self.params["weight"]
            self.constraint(W, unit_axis=W.ndim - 1)

    # ------------------------------------------------------------------ execution
    def _geometry(self, shape):
        """For a batch shape (N, *spatial, C): (4-D input shape, 4-D output shape, strides, dilation, padding as
        (top, bottom, left, right)), all as the 2-D kernel sees them (Conv1D: height 1)."""
        sizes = shape[1:-1]
        pads = self.pads_for(sizes)
        out = tuple(self._out_size(a, n, pads) for a, n in enumerate(sizes))
        if self._rank == 1:
            x4 = (shape[0], 1, shape[1], shape[2])
            z4 = (shape[0], 1, out[0], self.filters)
            return x4, z4, (1,) + self.strides, (1,) + self.dilation_rate, (0, 0) + pads[0]
        x4 = tuple(shape)
        z4 = (shape[0],) + out + (self.filters,)
        return x4, z4, self.strides, self.dilation_rate, pads[0] + pads[1]

    def _w4(self, W):
        return W.reshape((1,) + W.shape) if self._rank == 1 else W

    def _check_input(self, X):
        if X.ndim != self._rank + 2:
            want = "(N, H, W, C)" if self._rank == 2 else "(N, T, C)"
            raise ValueError(f"{self.name}: expected a batch of shape {want}, got an array of shape {X.shape}")
        if X.shape[-1] != self.input_shape[-1]:
            raise ValueError(f"{self.name}: expected {self.input_shape[-1]} input channels (last axis), got a batch "
                             f"of shape {X.shape}")

    def forward(self, X: FloatArray, training: bool = False, logits: bool = False) -> FloatArray:
        self._check_input(X)
        X = np.ascontiguousarray(X)
        identity = self.activation.kind == ACT.IDENTITY

        def make(_):
            x4, z4, s, d, p = self._geometry(X.shape)
            Z = np.empty(z4, dtype=self.dtype)
            Y = Z if identity else np.empty_like(Z)
            n = _k.scratch_size(x4, self._w4(self.params["weight"]).shape, s, d, p, self.groups,
                                np.dtype(self.dtype).itemsize, get_num_threads(), False)
            return Z, Y, np.empty(max(n, 1), dtype=self.dtype), (x4, s, d, p)

        Z, Y, scratch, (x4, s, d, p) = self._batch_buffers(X.shape, make)
        kind = ACT.IDENTITY if logits else self.activation.kind
        out = Z if kind == ACT.IDENTITY else Y
        counts = self._act_counts if kind != ACT.IDENTITY else None
        X4 = X.reshape(x4)
        _k.conv2d_forward(X4, self._w4(self.params["weight"]), self.params.get("bias"), Z, out, s, d, p, self.groups,
                          scratch, kind, self.activation.alpha, get_num_threads(), counts)
        self._X, self._Z, self._Y, self._kind = X4, Z, out, kind
        return out.reshape(out.shape[0], *out.shape[2:]) if self._rank == 1 else out

    def backward(self, dY: FloatArray) -> FloatArray | None:
        dY = np.ascontiguousarray(dY)
        identity = self.activation.kind == ACT.IDENTITY
        X4, Z = self._X, self._Z

        def make(_):
            dZ = None if identity else np.empty(Z.shape, dtype=self.dtype)
            dX = np.empty(X4.shape, dtype=self.dtype)
            x4, z4, s, d, p = self._geometry(self._X_shape(X4))
            n = _k.scratch_size(x4, self._w4(self.params["weight"]).shape, s, d, p, self.groups,
                                np.dtype(self.dtype).itemsize, get_num_threads(), True)
            return dZ, dX, np.empty(max(n, 1), dtype=self.dtype), (s, d, p)

        dZ, dX, scratch, (s, d, p) = self._batch_buffers(X4.shape, make, tag="grad")
        dY4 = dY.reshape(Z.shape)
        _k.conv2d_backward(X4, self._w4(self.params["weight"]), Z, self._Y, dY4, dZ if dZ is not None else dY4,
                           dX if self.need_input_grad else None, self._w4(self.grads["weight"]),
                           self.grads.get("bias"), s, d, p, self.groups, scratch, self._kind, self.activation.alpha,
                           get_num_threads())
        if not self.need_input_grad:
            return None
        return dX.reshape(dX.shape[0], *dX.shape[2:]) if self._rank == 1 else dX

    def _X_shape(self, X4):
        return (X4.shape[0], X4.shape[2], X4.shape[3]) if self._rank == 1 else X4.shape

    # ------------------------------------------------------------------ description
    def get_config(self) -> Config:
        act_cfg = _act.to_config(self.activation)
        pad = self.padding if isinstance(self.padding, str) else [list(p) for p in self.padding]
        if self._rank == 1 and not isinstance(pad, str):
            pad = pad[0]
        cfg = {"name": self.name, "filters": self.filters,
               "kernel_size": list(self.kernel_size), "strides": list(self.strides), "padding": pad,
               "dilation_rate": list(self.dilation_rate), "groups": self.groups, "activation": act_cfg,
               "use_bias": self.use_bias, "kernel_init": self.kernel_init.get_config(),
               "bias_init": self.bias_init.get_config()}
        if self.constraint is not None:
            cfg["max_norm"] = self.constraint.max_value
        return cfg

    @classmethod
    def from_config(cls, config: Config) -> Self:
        config = dict(config)
        act = _act.from_config(config.pop("activation"), f"{cls.__name__}.from_config")
        return cls(activation=act, kernel_init=initializers.from_config(config.pop("kernel_init")),
                   bias_init=initializers.from_config(config.pop("bias_init")), **config)

    def extra_repr(self) -> str:
        k = self.kernel_size if self._rank == 2 else self.kernel_size[0]
        s = f"{self.filters}, kernel_size={k}"
        if any(v != 1 for v in self.strides):
            s += f", strides={self.strides if self._rank == 2 else self.strides[0]}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        if any(v != 1 for v in self.dilation_rate):
            s += f", dilation_rate={self.dilation_rate if self._rank == 2 else self.dilation_rate[0]}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        act = type(self.activation).__name__
        return s + (f", activation={act}" if act != "Identity" else "")


class Conv2D(_Conv):
    """2-D convolution over channels-last images (Keras' Conv2D; torch.nn.Conv2d after the layout permutation).

    Args:
        filters: number of output channels F.
        kernel_size: an int or a pair (kh, kw).
        strides: an int or a pair (default 1).
        padding: "valid" (none, the default); "same" (output size ceil(in / stride); where the total padding
            of an axis is odd, the extra row / column goes at the bottom / right, as TensorFlow and Keras do; for
            PyTorch's symmetric ``padding=k // 2`` with stride 1 and an odd kernel the two agree); or explicit
            zeros: an int, a pair (pad_h, pad_w) or ((top, bottom), (left, right)).
        dilation_rate: an int or a pair (default 1).
        groups: splits the input channels and the filters into this many groups, each convolved separately
            (channels and filters must be multiples of it); groups = C_in is a depthwise convolution.
        activation: as Dense's (a name, an activation layer instance, or None), fused into the kernel.
        use_bias: whether the layer has a bias.
        kernel_init: the weight's initializer (default "xavier_uniform", Keras' default "glorot_uniform"), with
            fan_in = kh*kw*C_in/groups and fan_out = kh*kw*filters/groups (the outputs one input actually
            feeds; Keras and PyTorch do not divide fan_out by groups, so grouped layers differ from theirs).
        bias_init: the bias' initializer (default "zeros").
        max_norm: None, a positive number or a ``fastnn.constraints.MaxNorm``: after every optimizer step each
            filter's weights (``weight[..., f]``) are rescaled to L2 norm at most that.

    Shape: input (N, H, W, C_in), output (N, OH, OW, filters).  ``weight`` is (kh, kw, C_in / groups, filters)
    (a torch ``Conv2d.weight`` ``w`` maps as ``w.permute(2, 3, 1, 0)``), ``bias`` (filters,).  Each filter
    (the last axis of ``weight``) is one unit for MaxNorm, pruning and the diagnostics' unit counters.

    Layout: fastnn is channels-last.  A model declared with ``input_shape=(C, H, W)`` as PyTorch lays images out
    is refused with a ValueError explaining the fix, when the shape looks channels-first: its first axis is 1, 3
    or 4, smaller than the other two, and those two are equal (e.g. (1, 28, 28), (3, 32, 32)).  Genuinely
    channels-last shapes of that form (an image 1, 3 or 4 rows high with as many channels as columns) are the
    only ones refused; a non-square (C, H, W) passes unnoticed, and then gives a wrong but shape-valid model.
    The fix: ``X.transpose(0, 2, 3, 1)`` and ``input_shape=(H, W, C)``, or a ``fastnn.layers.Permute((2, 3, 1))``
    layer first.

    Example::

        model = fnn.Sequential([fnn.layers.Conv2D(16, 3, padding="same", activation="relu"),
                                fnn.layers.Flatten(), fnn.layers.Dense(10)], input_shape=(8, 8, 1))
    """
    _rank = 2

    def _check_layout(self, shape):
        h, w, c = shape
        if h in (1, 3, 4) and w is not None and w == c and w > h:
            raise ValueError(
                f"{self.name}: the sample shape {tuple(shape)} looks channels-first (C, H, W) = ({h}, {w}, {c}), "
                f"PyTorch's layout; fastnn is channels-last and would read it as an image {h} pixel(s) high with "
                f"{c} channels.  Transpose the data with X.transpose(0, 2, 3, 1) and declare "
                f"input_shape=({w}, {c}, {h}), or put a fastnn.layers.Permute((2, 3, 1)) layer first")


class Conv1D(_Conv):
    """1-D convolution over channels-last sequences (Keras' Conv1D; torch.nn.Conv1d after the layout permutation).

    Args: as ``Conv2D``'s with single ints (a 1-tuple is accepted too); ``padding`` is "valid", "same",
    "causal" (dilation_rate * (kernel_size - 1) zeros on the left only: output t sees inputs <= t, as Keras'
    causal padding) or explicit zeros: an int or (left, right).

    Shape: input (N, T, C_in), output (N, T_out, filters); ``weight`` is (kernel_size, C_in / groups, filters)
    (a torch ``Conv1d.weight`` ``w`` maps as ``w.permute(2, 1, 0)``), ``bias`` (filters,).  T may be a variable
    axis (None in the input shape).
    """
    _rank = 1
