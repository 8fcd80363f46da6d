"""Pooling layers, channels-last (Keras' names and semantics), compiled kernels in fastnn/_core/pool.pyx.

``MaxPool2D`` / ``AvgPool2D`` pool windows of (N, H, W, C) images, ``MaxPool1D`` / ``AvgPool1D`` of (N, T, C)
sequences (the H = 1 case of the same kernels), each channel on its own; ``GlobalMaxPooling1D/2D`` and
``GlobalAveragePooling1D/2D`` pool every spatial position at once, (N, ..., C) -> (N, C).

Windows and padding (TensorFlow's convention): ``strides`` defaults to ``pool_size``.  "valid": windows lie
inside the input, out = floor((in - pool) / stride) + 1, and an input smaller than the pool is an error.
"same": out = ceil(in / stride), the input padded by max((out - 1) * stride + pool - in, 0) positions, half
(rounded down) at the top/left, the odd extra one at the bottom/right.  Padded positions are never part of a
result: max pooling ignores them, and average pooling divides by the number of real inputs in the window
(Keras; torch's ``count_include_pad=False``).  Every window holds at least one real input.

Max pooling's gradient goes to the FIRST maximum of each window (row-major scan order over the window), so an
all-equal window sends its whole gradient to its top-left input.  NaN: a NaN in a window is its maximum, so the
output is NaN (as torch, which propagates NaN) and the gradient goes to the window's first NaN (torch's CPU
kernel picks the last).  The argmax (int32, the winner's position in its image) is kept in a buffer per batch
shape for the backward.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastnn._core import pool as _k
from fastnn._typing import Config, FloatArray
from fastnn.layers.base import Layer, get_num_threads

_PADDINGS = ("valid", "same")


def _int_tuple(owner, name, value, rank):
    """`value` (an int or a sequence of `rank` ints, each >= 1) as a tuple of `rank` ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,) * rank
    if (not isinstance(value, (tuple, list)) or len(value) != rank
            or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in value)):
        want = "an int" if rank == 1 else f"an int or a tuple of {rank} ints"
        raise TypeError(f"{owner}: {name} must be {want}, got {value!r}")
    if any(v < 1 for v in value):
        raise ValueError(f"{owner}: {name} must be >= 1, got {tuple(int(v) for v in value)}")
    return tuple(int(v) for v in value)


def _axis(n, k, s, padding):
    """(output length, padding before) of one spatial axis of length n, or (None, None) for a variable axis;
    None output for a 'valid' input shorter than the pool (the caller raises)."""
    if n is None:
        return None, None
    if padding == "same":
        out = -(-n // s)
        return out, max((out - 1) * s + k - n, 0) // 2
    return ((n - k) // s + 1 if n >= k else None), 0


def _spatial(shape):
    return ", ".join(map(str, shape))


class _Pool(Layer):
    """Windowed pooling over the spatial axes of a channels-last input (see the module docstring)."""
    _rank = 2          # spatial axes
    _max = True        # max or average

    @property
    def spatial_rank(self) -> int:
        """The number of spatial axes: 2 for the 2D layers, 1 for the 1D ones."""
        return self._rank

    @property
    def is_max(self) -> bool:
        """True for max pooling, False for average pooling."""
        return self._max

    def __init__(self, pool_size: int | tuple[int, ...] = 2, strides: int | tuple[int, ...] | None = None,
                 padding: str = "valid", name: str | None = None) -> None:
        super().__init__(name)
        owner = f"{self.name} ({type(self).__name__})"
        self.pool_size = _int_tuple(owner, "pool_size", pool_size, self._rank)
        self.strides = self.pool_size if strides is None else _int_tuple(owner, "strides", strides, self._rank)
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(f"{owner}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding.lower()
        self._geom: Any = None   # the last forward's shapes, argmax buffer and window

    def _layout(self):
        return "(n, H, W, C)" if self._rank == 2 else "(n, T, C)"

    def _window(self, spatial):
        """(pool size, strides) for inputs of these spatial sizes."""
        return self.pool_size, self.strides

    def _out_spatial(self, spatial, given):
        out = []
        for n, k, s in zip(spatial, *self._window(spatial)):
            o, _ = _axis(n, k, s, self.padding)
            if o is None and n is not None:
                raise ValueError(f"{self.name}: {type(self).__name__} with padding='valid' needs every spatial size "
                                 f">= pool_size {self.pool_size}, got input of shape {given}")
            out.append(o)
        return tuple(out)

    def pads_for(self, sizes: Sequence[int]) -> list[tuple[int, int]]:
        """((before, after) virtual padding per spatial axis) for input spatial sizes `sizes` (ints): none for
        "valid"; for "same", TensorFlow's split (the odd extra position after), as the kernels pad."""
        if self.padding != "same":
            return [(0, 0)] * len(sizes)
        out = []
        for n, k, s in zip(sizes, self.pool_size, self.strides):
            o, before = _axis(n, k, s, "same")
            total = max((o - 1) * s + k - n, 0)
            out.append((before, total - before))
        return out

    def _build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != self._rank + 1:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs of shape {self._layout()}, got "
                             f"feature shape {input_shape} (rank {len(input_shape) + 1} with the batch axis)")
        return self._out_spatial(input_shape[:-1], f"(n, {_spatial(input_shape)})") + input_shape[-1:]

    def _check(self, X):
        if not isinstance(X, np.ndarray) or X.ndim != self._rank + 2:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs of shape {self._layout()}, got "
                             f"{getattr(X, 'shape', type(X).__name__)}")
        if self.input_shape is not None and any(d is not None and d != g
                                                for d, g in zip(self.input_shape, X.shape[1:])):
            raise ValueError(f"{self.name}: expected inputs of shape (n, {_spatial(self.input_shape)}), got "
                             f"{X.shape}")
        return X if X.flags.c_contiguous else np.ascontiguousarray(X)

    def kernel_geometry(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """For a batch of shape (N, *spatial, C): the 2-D kernels' (N, H, W, C) input, (N, OH, OW, C) output and
        window (ph, pw, sh, sw, pt, pl) (1-D pooling: H = 1), as ``forward`` and the compiled plan run them."""
        N, C = shape[0], shape[-1]
        spatial = tuple(shape[1:-1])
        out = self._out_spatial(spatial, tuple(shape))
        pool, strides = self._window(spatial)
        if self._rank == 2:
            (H, W), (OH, OW), (ph, pw), (sh, sw) = spatial, out, pool, strides
            pt, pl = (_axis(H, ph, sh, self.padding)[1], _axis(W, pw, sw, self.padding)[1])
        else:
            H, W, OH, OW = 1, spatial[0], 1, out[0]
            ph, pw, sh, sw, pt = 1, pool[0], 1, strides[0], 0
            pl = _axis(W, pw, sw, self.padding)[1]
        return (N, H, W, C), (N, OH, OW, C), (ph, pw, sh, sw, pt, pl)

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        X = self._check(X)
        N, C = X.shape[0], X.shape[-1]
        out = self._out_spatial(X.shape[1:-1], X.shape)
        (_, H, W, _), (_, OH, OW, _), (ph, pw, sh, sw, pt, pl) = self.kernel_geometry(X.shape)
        yshape = (N,) + out + (C,)
        if self._max:
            Y, A = self._batch_buffers(X.shape, lambda _: (np.empty(yshape, X.dtype), np.empty(yshape, np.int32)))
            _k.max_pool2d_forward(X.reshape(N, H, W, C), Y.reshape(N, OH, OW, C), A.reshape(N, OH, OW, C),
                                  ph, pw, sh, sw, pt, pl, get_num_threads())
        else:
            Y, A = self._batch_buffers(X.shape, lambda _: (np.empty(yshape, X.dtype), None))
            _k.avg_pool2d_forward(X.reshape(N, H, W, C), Y.reshape(N, OH, OW, C), ph, pw, sh, sw, pt, pl,
                                  get_num_threads())
        self._geom = (X.shape, (N, H, W, C), (N, OH, OW, C), A, (ph, pw, sh, sw, pt, pl))
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        if not self.need_input_grad:
            return None
        if self._geom is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        xshape, x4, y4, A, geom = self._geom
        if dY.shape[0] != y4[0] or int(np.prod(dY.shape)) != int(np.prod(y4)):
            raise ValueError(f"{self.name}: dY of shape {dY.shape} does not match the last forward's output "
                             f"(n={y4[0]}, {y4[1:]})")
        if not dY.flags.c_contiguous:
            dY = np.ascontiguousarray(dY)
        dX = self._batch_buffers(xshape, lambda _: np.empty(xshape, dY.dtype), tag="grad")
        if self._max:
            _k.max_pool2d_backward(dY.reshape(y4), A.reshape(y4), dX.reshape(x4), *geom, get_num_threads())
        else:
            _k.avg_pool2d_backward(dY.reshape(y4), dX.reshape(x4), *geom, get_num_threads())
        return dX

    def get_config(self) -> Config:
        if self._rank == 1:
            return {"name": self.name, "pool_size": self.pool_size[0], "strides": self.strides[0],
                    "padding": self.padding}
        return {"name": self.name, "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}

    def extra_repr(self) -> str:
        ps = self.pool_size[0] if self._rank == 1 else self.pool_size
        st = self.strides[0] if self._rank == 1 else self.strides
        return f"pool_size={ps}, strides={st}, padding={self.padding!r}"


class MaxPool2D(_Pool):
    """2-D max pooling of channels-last images, each channel on its own (Keras' MaxPooling2D).

    Args:
        pool_size: the window (height, width), an int or a pair (default 2).
        strides: the step between windows, an int or a pair; None (default): ``pool_size``.
        padding: "valid" (windows inside the input) or "same" (out = ceil(in / stride), TensorFlow's padding,
            the extra position at the bottom/right; padded positions are ignored).

    The gradient of each output goes to the first maximum of its window (row-major scan); a window holding a
    NaN outputs NaN and sends its gradient to its first NaN.

    Shape: input (n, H, W, C), output (n, H', W', C).

    Example::

        fnn.layers.MaxPool2D(2)                      # (n, 28, 28, 32) -> (n, 14, 14, 32)
        fnn.layers.MaxPool2D(3, strides=2, padding="same")   # (n, 7, 7, C) -> (n, 4, 4, C)
    """


class AvgPool2D(_Pool):
    """2-D average pooling of channels-last images, each channel on its own (Keras' AveragePooling2D).

    Arguments as ``MaxPool2D``.  With padding="same" the average is over the real inputs of each window only
    (Keras; torch's ``count_include_pad=False``).

    Shape: input (n, H, W, C), output (n, H', W', C).
    """
    _max = False


class MaxPool1D(_Pool):
    """1-D max pooling of channels-last sequences (Keras' MaxPooling1D): ``MaxPool2D`` along the one axis T.

    Args: pool_size (an int, default 2), strides (an int; None: pool_size), padding ("valid" or "same").

    Shape: input (n, T, C), output (n, T', C).
    """
    _rank = 1


class AvgPool1D(_Pool):
    """1-D average pooling of channels-last sequences (Keras' AveragePooling1D): ``AvgPool2D`` along T.

    Args: pool_size (an int, default 2), strides (an int; None: pool_size), padding ("valid" or "same"; with
    "same" each window averages its real inputs only).

    Shape: input (n, T, C), output (n, T', C).
    """
    _rank = 1
    _max = False


class _GlobalPool(_Pool):
    """Pooling over all spatial positions: one window covering the whole input."""

    def __init__(self, keepdims: bool = False, name: str | None = None) -> None:
        Layer.__init__(self, name)
        if not isinstance(keepdims, (bool, np.bool_)):
            raise TypeError(f"{self.name} ({type(self).__name__}): keepdims must be a bool, got {keepdims!r}")
        self.keepdims = bool(keepdims)
        self.padding = "valid"
        self._geom: Any = None   # the last forward's shapes, argmax buffer and window

    def _window(self, spatial):
        return tuple(spatial), tuple(spatial)

    def _out_spatial(self, spatial, given):
        return (1,) * self._rank

    def _build(self, input_shape):
        out = super()._build(input_shape)
        return out if self.keepdims else out[-1:]

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        X = self._check(X)
        if any(d == 0 for d in X.shape[1:-1]):
            raise ValueError(f"{self.name}: {type(self).__name__} needs at least one position, got input {X.shape}")
        Y = super().forward(X, training)
        return Y if self.keepdims else Y.reshape(X.shape[0], X.shape[-1])

    def get_config(self) -> Config:
        return {"name": self.name, "keepdims": self.keepdims}

    def extra_repr(self) -> str:
        return "keepdims=True" if self.keepdims else ""


class GlobalMaxPooling2D(_GlobalPool):
    """The maximum of each channel over all positions of an image (Keras' GlobalMaxPooling2D); the gradient
    goes to the first maximum in row-major order (a NaN wins, as in ``MaxPool2D``).

    Args: keepdims (False): keep the spatial axes, as size 1.

    Shape: input (n, H, W, C), output (n, C) (keepdims: (n, 1, 1, C)).
    """


class GlobalAveragePooling2D(_GlobalPool):
    """The mean of each channel over all positions of an image (Keras' GlobalAveragePooling2D).

    Args: keepdims (False): keep the spatial axes, as size 1.

    Shape: input (n, H, W, C), output (n, C) (keepdims: (n, 1, 1, C)).
    """
    _max = False


class GlobalMaxPooling1D(_GlobalPool):
    """The maximum of each channel over all steps of a sequence (Keras' GlobalMaxPooling1D).

    Args: keepdims (False): keep the step axis, as size 1.

    Shape: input (n, T, C), output (n, C) (keepdims: (n, 1, C)).
    """
    _rank = 1


class GlobalAveragePooling1D(_GlobalPool):
    """The mean of each channel over all steps of a sequence (Keras' GlobalAveragePooling1D).

    Args: keepdims (False): keep the step axis, as size 1.

    Shape: input (n, T, C), output (n, C) (keepdims: (n, 1, C)).
    """
    _rank = 1
    _max = False


# Keras' longer names
MaxPooling2D, AveragePooling2D, MaxPooling1D, AveragePooling1D = MaxPool2D, AvgPool2D, MaxPool1D, AvgPool1D

CLASSES = {cls.__name__: cls for cls in (MaxPool2D, AvgPool2D, MaxPool1D, AvgPool1D, GlobalMaxPooling2D,
                                         GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalAveragePooling1D)}
