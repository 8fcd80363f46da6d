"""Layers that join several tensors: Add (element-wise sum) and Concatenate (along the last feature axis).

Both take a list of at least two tensors (``n_inputs = None``): ``Add()([a, b])``.  Their forward and backward
are single memory-bound numpy passes into buffers made once per batch size.  Shapes are checked when the
layer is called on tensors (graph construction), so a mismatch is a ValueError naming the layer and the shapes
before anything runs.
"""
from __future__ import annotations

import numpy as np

from fastnn._typing import FloatArray
from fastnn.layers.base import Layer


class Add(Layer):
    """Element-wise sum of two or more tensors of the same shape: ``Y = X_1 + X_2 + ...``.

    The gradient of the sum flows unchanged to every input (the same array is handed to each; the model
    sums it with the other gradients of a tensor that feeds several layers).

    Shape: inputs k x (n, *s), output (n, *s).

    Example::

        h = fnn.layers.Add()([h, fnn.layers.Dense(128)(h)])     # a skip connection
    """
    mask_support = "pass"     # the output's mask: the AND of the inputs' masks (Keras' merge layers)
    n_inputs = None

    def _build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError(f"{self.name}: Add needs inputs of one shape, got feature shapes "
                             f"{', '.join(str(s) for s in shapes)}")
        return shapes[0]

    def forward(self, X: list[FloatArray], training: bool = False) -> FloatArray:
        Y = self._batch_buffers(X[0].shape, lambda n: np.empty(X[0].shape, dtype=X[0].dtype))
        np.add(X[0], X[1], out=Y)
        for x in X[2:]:
            np.add(Y, x, out=Y)
        self._k = len(X)
        return Y

    def backward(self, dY: FloatArray) -> list[FloatArray]:
        return [dY] * self._k


class Concatenate(Layer):
    """Concatenation of two or more tensors along the last feature axis (torch.cat(dim=-1)).

    All other feature axes must agree.  Shape: inputs (n, *s, d_i), output (n, *s, sum d_i).

    Example::

        h = fnn.layers.Concatenate()([a, b])      # (n, 32) and (n, 16) -> (n, 48)
    """
    mask_support = "pass"     # along the last axis: the output's mask is the AND of the inputs' masks (Keras)
    n_inputs = None

    def _build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if any(len(s) < 1 for s in shapes) or any(s[:-1] != shapes[0][:-1] for s in shapes[1:]):
            raise ValueError(f"{self.name}: Concatenate joins along the last axis and needs the other axes to "
                             f"agree, got feature shapes {', '.join(str(s) for s in shapes)}")
        self._sizes = [s[-1] for s in shapes]
        return shapes[0][:-1] + (sum(self._sizes),)

    def forward(self, X: list[FloatArray], training: bool = False) -> FloatArray:
        shape = X[0].shape[:-1] + (sum(x.shape[-1] for x in X),)
        Y = self._batch_buffers(shape, lambda n: np.empty(shape, dtype=X[0].dtype))
        np.concatenate(X, axis=-1, out=Y)
        return Y

    def backward(self, dY: FloatArray) -> list[FloatArray]:
        def make(_):
            return [np.empty(dY.shape[:-1] + (d,), dtype=dY.dtype) for d in self._sizes]

        dXs = self._batch_buffers(dY.shape, make, tag="grad")
        a = 0
        for dX, d in zip(dXs, self._sizes):
            np.copyto(dX, dY[..., a:a + d])     # contiguous copies: the kernels upstream need C order
            a += d
        return dXs
