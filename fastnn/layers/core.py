"""Shape layers: Flatten, Reshape and Permute.

Flatten and Reshape change only how one sample's elements are grouped, never their order (row-major, C order):
the forward is a view of the input batch and the backward a view of the output gradient, with no copy and no
buffer.  Data layout is channels-last (features on the last axis), so ``Flatten`` of an image batch
(n, H, W, C) gives (n, H*W*C) with the channels of one pixel adjacent, as Keras' ``Flatten``.  (torch's
``nn.Flatten`` on (n, C, H, W) groups by channel instead: weights moved from torch to a Dense after Flatten must
be permuted.)  ``Permute`` reorders the axes of each sample (a copy): ``Permute((2, 3, 1))`` at the input is the
path for channels-first (N, C, H, W) data.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fastnn._typing import Config, FloatArray
from fastnn.layers.base import Layer


def _view(X, shape):
    """X (C-contiguous) seen with `shape` (the same number of elements): a view, never a copy."""
    if not X.flags.c_contiguous:
        X = np.ascontiguousarray(X)
    return X.reshape(shape)


class Flatten(Layer):
    """Flatten each sample to one feature axis, row-major (C order) over the non-batch axes.

    Shape: input (n, d1, d2, ...), output (n, d1*d2*...).  The output is a view of the input (no copy).

    Example::

        model = fnn.Sequential([fnn.layers.Dense(8), fnn.layers.Flatten(), fnn.layers.Dense(3)],
                               input_dim=(12, 5))      # (n, 12, 5) -> (n, 12, 8) -> (n, 96) -> (n, 3)
    """

    def _build(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        return _view(X, (X.shape[0], math.prod(X.shape[1:])))

    def backward(self, dY: FloatArray) -> FloatArray | None:
        return _view(dY, (dY.shape[0],) + tuple(self.input_shape)) if self.need_input_grad else None


class Reshape(Layer):
    """Give each sample a new shape with the same number of elements, row-major (C order), as Keras' Reshape.

    Args:
        shape: the target shape of one sample (without the batch axis), a tuple of positive ints; one entry may
            be -1, inferred from the input's size.

    A target whose size differs from the input's is a ValueError when the layer is called on a tensor.

    Shape: input (n, *s), output (n, *shape).  The output is a view of the input (no copy).

    Example::

        fnn.layers.Reshape((4, -1))      # (n, 12) -> (n, 4, 3)
    """

    def __init__(self, shape: int | Sequence[int], name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or len(shape) == 0:
            raise TypeError(f"{self.name}: shape must be a non-empty tuple of ints (one sample's shape), "
                            f"got {shape!r}")
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or (d < 1 and d != -1):
                raise ValueError(f"{self.name}: shape entries must be positive ints or one -1, got {tuple(shape)}")
        if sum(d == -1 for d in shape) > 1:
            raise ValueError(f"{self.name}: at most one -1 in shape, got {tuple(shape)}")
        self.shape = tuple(int(d) for d in shape)

    def _build(self, input_shape):
        size = int(np.prod(input_shape, dtype=np.int64))
        known = int(np.prod([d for d in self.shape if d != -1], dtype=np.int64))
        if -1 in self.shape:
            if size % known:
                raise ValueError(f"{self.name}: cannot reshape a sample of shape {tuple(input_shape)} ({size} "
                                 f"elements) to {self.shape}: {size} is not a multiple of {known}")
            return tuple(size // known if d == -1 else d for d in self.shape)
        if known != size:
            raise ValueError(f"{self.name}: cannot reshape a sample of shape {tuple(input_shape)} ({size} elements) "
                             f"to {self.shape} ({known} elements)")
        return self.shape

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        return _view(X, (X.shape[0],) + self.output_shape)

    def backward(self, dY: FloatArray) -> FloatArray | None:
        return _view(dY, (dY.shape[0],) + tuple(self.input_shape)) if self.need_input_grad else None

    def get_config(self) -> Config:
        return {"name": self.name, "shape": list(self.shape)}

    def extra_repr(self) -> str:
        return f"{self.shape}"


class Permute(Layer):
    """Permute the axes of each sample (Keras' Permute): the path for channels-first data.

    Args:
        dims: a permutation of the sample axes, numbered from 1 (the batch axis, 0, stays first): output axis
            i + 1 is input axis ``dims[i]``.  ``Permute((2, 3, 1))`` turns (n, C, H, W) into (n, H, W, C).

    fastnn's layers are channels-last.  A PyTorch user with (N, C, H, W) arrays starts the model with
    ``Permute((2, 3, 1))`` and declares the channels-first input shape; a model so built gives the same
    outputs and gradients as the channels-last model fed ``X.transpose(0, 2, 3, 1)``.  Unlike ``Reshape``
    the elements move: the forward copies into a contiguous buffer (one per batch shape) and the backward
    permutes the gradient back the same way.

    Shape: input (n, d1, ..., dk), output (n, d_dims[0], ..., d_dims[k-1]).

    Example::

        model = fnn.Sequential([fnn.layers.Permute((2, 3, 1)), fnn.layers.MaxPool2D(2), fnn.layers.Flatten(),
                                fnn.layers.Dense(10)], input_shape=(3, 32, 32))     # NCHW data
    """

    def __init__(self, dims: Sequence[int], name: str | None = None) -> None:
        super().__init__(name)
        if (not isinstance(dims, (tuple, list)) or not dims
                or any(isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) for d in dims)):
            raise TypeError(f"{self.name}: dims must be a tuple of ints (a permutation of the sample axes, from 1), "
                            f"got {dims!r}")
        if sorted(int(d) for d in dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"{self.name}: dims must be a permutation of 1..{len(dims)} (the sample axes; the batch "
                             f"axis 0 is never moved), got {tuple(dims)}")
        self.dims = tuple(int(d) for d in dims)
        self._axes = (0,) + self.dims
        self._inverse = tuple(int(a) for a in np.argsort(self._axes))

    def _build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != len(self.dims):
            raise ValueError(f"{self.name}: Permute{self.dims} expects samples of rank {len(self.dims)}, got "
                             f"feature shape {input_shape} (rank {len(input_shape)})")
        return tuple(input_shape[d - 1] for d in self.dims)

    def _permute(self, A, axes, tag):
        if A.ndim != len(axes):
            raise ValueError(f"{self.name}: Permute{self.dims} expects arrays of rank {len(axes)} (batch axis "
                             f"included), got shape {A.shape}")
        shape = tuple(A.shape[a] for a in axes)
        out = self._batch_buffers(shape, lambda _: np.empty(shape, A.dtype), tag=tag)
        np.copyto(out, A.transpose(axes))
        return out

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        return self._permute(X, self._axes, None)

    def backward(self, dY: FloatArray) -> FloatArray | None:
        return self._permute(dY, self._inverse, "grad") if self.need_input_grad else None

    def get_config(self) -> Config:
        return {"name": self.name, "dims": list(self.dims)}

    def extra_repr(self) -> str:
        return f"{self.dims}"
