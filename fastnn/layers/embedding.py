"""Sequence input layers: Embedding (integer ids -> vectors) and Masking (mark padded steps of float sequences).

Both may make the mask of issue 12 (an (N, T) bool array, True = a real step; see fastnn.layers.base): an
``Embedding(mask_zero=True)`` masks the steps whose id is 0 (the padding id), a ``Masking(mask_value)`` the steps
whose features all equal ``mask_value``.  The mask travels through the per-step layers after them to the layers
that use it (recurrent layers) and to the loss, which ignores the masked positions of the model's output.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn import initializers
from fastnn._core import embedding as _k
from fastnn._typing import Config, FloatArray, NDArray
from fastnn._validation import as_index_array, check_number
from fastnn.layers.base import Layer, ParamSpec, get_num_threads

if TYPE_CHECKING:
    from typing_extensions import Self

    from fastnn.initializers import Initializer


class Embedding(Layer):
    """A lookup table of ``input_dim`` vectors of size ``output_dim``: integer ids (N, T) -> (N, T, output_dim)
    (Keras' Embedding; torch's ``nn.Embedding``, whose ``weight`` is this layer's ``weight`` as it is).

    Args:
        input_dim: the number of ids (the vocabulary size); ids must be in [0, input_dim).  With
            ``mask_zero=True`` id 0 is the padding id and counts in input_dim.
        output_dim: the size of each vector.
        mask_zero: make a mask of the steps whose id is not 0 (the padding id 0 is masked), as Keras does; the
            input must then be sequences (N, T).
        embeddings_init: initializer of the table (default "uniform": U[-0.05, 0.05), Keras' default; torch
            draws N(0, 1)).
        name: the layer's name.

    Input: integer ids, (N, T) (or any (N, ...)): int32 or int64 arrays are used as they are; a model whose
    input feeds an Embedding keeps X integer at its boundary (other integer types and floats holding whole
    numbers are converted; anything else is an error).  An id outside [0, input_dim) is a ValueError naming the
    layer, the id and its position.  Output: (N, ..., output_dim).

    The forward is a compiled row gather; the backward zeroes the table's gradient and scatter-adds dY into the
    rows of the ids used (repeated ids accumulate; no other temporary).  The gradient rows of ids absent from the
    batch are 0, which the optimizers still treat as a step (Adam's moments decay, weight decay applies), exactly
    as with torch's dense ``nn.Embedding`` (sparse=False).  There is no gradient with respect to the ids.

    Example::

        model = fnn.Sequential([fnn.layers.Embedding(1000, 16, mask_zero=True), fnn.layers.Dense(5)],
                               input_shape=(None,))      # ids (N, T) -> (N, T, 5), padded steps masked
    """
    integer_input = True

    def __init__(self, input_dim: int, output_dim: int, mask_zero: bool = False,
                 embeddings_init: str | Initializer = "uniform", name: str | None = None) -> None:
        super().__init__(name)
        self.input_dim = check_number(self.name, "input_dim", input_dim, low=1, integer=True)
        self.output_dim = check_number(self.name, "output_dim", output_dim, low=1, integer=True)
        if not isinstance(mask_zero, (bool, np.bool_)):
            raise TypeError(f"{self.name}: mask_zero must be a bool, got {type(mask_zero).__name__}")
        self.mask_zero = bool(mask_zero)
        if self.mask_zero and self.input_dim < 2:
            raise ValueError(f"{self.name}: with mask_zero=True id 0 is padding, so input_dim must count it and be "
                             f">= 2, got {self.input_dim}")
        self.embeddings_init = initializers.get(embeddings_init, owner=f"{self.name} embeddings_init")
        self._ids: NDArray[Any] | None = None

    @property
    def produces_mask(self) -> bool:  # type: ignore[override]  # a property over the class flag
        """True with mask_zero: the layer masks the steps whose id is 0."""
        return self.mask_zero

    def mask_description(self) -> str:
        return "mask_zero=True"

    def _build(self, input_shape):
        if self.mask_zero and len(input_shape) != 1:
            raise ValueError(f"{self.name}: mask_zero=True needs sequences of ids (N, T), got a feature shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape) + (self.output_dim,)

    def param_specs(self) -> list[ParamSpec]:
        return [ParamSpec("weight", (self.input_dim, self.output_dim), self.embeddings_init, True, unit_axis=1)]

    @property
    def weight(self) -> FloatArray:
        """The table (input_dim, output_dim): a writable view into the model's parameters."""
        return self._param("weight")

    @weight.setter
    def weight(self, value: Any) -> None:
        self._set_param("weight", value)

    @property
    def weight_grad(self) -> FloatArray | None:
        return self.grads.get("weight")

    def _as_ids(self, X):
        if X.dtype != np.int32 and X.dtype != np.int64:
            X = as_index_array(self.name, "ids", X)
        elif not X.flags.c_contiguous:
            X = np.ascontiguousarray(X)
        return X

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        X = self._as_ids(X)
        Y = self._batch_buffers(X.shape, lambda _: np.empty(X.shape + (self.output_dim,), dtype=self.dtype))
        ids = X.reshape(-1)
        bad = _k.embedding_forward(ids, self.params["weight"], Y.reshape(-1, self.output_dim), get_num_threads())
        if bad >= 0:
            at = tuple(int(i) for i in np.unravel_index(bad, X.shape))
            raise ValueError(f"{self.name}: id {int(ids[bad])} at position {at} is out of range: ids must be in "
                             f"[0, {self.input_dim}) (input_dim={self.input_dim})")
        self._ids = ids
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        _k.embedding_backward(self._ids, dY.reshape(-1, self.output_dim), self.grads["weight"], get_num_threads())
        return None

    def compute_mask(self, X: NDArray[Any]) -> NDArray[np.bool_]:
        X = self._as_ids(X)
        M = self._batch_buffers(X.shape, lambda _: np.empty(X.shape, dtype=bool), tag="mask")
        np.not_equal(X, 0, out=M)
        return M

    def get_config(self) -> Config:
        return {"name": self.name, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "mask_zero": self.mask_zero, "embeddings_init": self.embeddings_init.get_config()}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        config = dict(config)
        init = config.pop("embeddings_init", "uniform")
        if isinstance(init, dict):
            init = initializers.from_config(init)
        return cls(embeddings_init=init, **config)

    def extra_repr(self) -> str:
        return f"{self.input_dim}, {self.output_dim}" + (", mask_zero=True" if self.mask_zero else "")


class Masking(Layer):
    """Mask the steps of float sequences (N, T, F) whose features all equal ``mask_value`` (Keras' Masking).

    The output is the input with the masked steps set to 0 (as Keras does), and the layer makes the (N, T) mask
    (True = a real step) that the layers after it hand on or use (recurrent layers skip masked steps) and the
    loss honours.  The gradient at masked steps is 0.

    Args:
        mask_value: the value that marks a padded step (default 0.0).
        name: the layer's name.

    Shape: input (N, T, F...) (sequences: at least one feature axis after the time axis), output the same.
    """

    produces_mask = True

    def __init__(self, mask_value: float = 0.0, name: str | None = None) -> None:
        super().__init__(name)
        self.mask_value = check_number(self.name, "mask_value", mask_value)
        # the last forward's keep mask (broadcastable to X), its (N, T) mask and its input
        self._keep: NDArray[np.bool_] | None = None
        self._M: NDArray[np.bool_] | None = None
        self._src: NDArray[Any] | None = None

    def mask_description(self) -> str:
        return f"mask_value={self.mask_value}"

    def _build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: Masking takes sequences (N, T, features), got a feature shape "
                             f"{tuple(input_shape)}")
        return input_shape

    def _mask(self, X):
        n, t = X.shape[:2]

        def make(_):
            return (np.empty(X.shape, dtype=bool), np.empty((n, t), dtype=bool), np.empty(X.shape, dtype=self.dtype))

        diff, M, Y = self._batch_buffers(X.shape, make)
        np.not_equal(X, self.mask_value, out=diff)
        np.any(diff.reshape(n, t, -1), axis=2, out=M)
        return M, Y

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        M, Y = self._mask(X)
        keep = M.reshape(M.shape + (1,) * (X.ndim - 2))
        np.multiply(X, keep, out=Y)
        self._keep, self._M, self._src = keep, M, X
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        if not self.need_input_grad:
            return None
        dX = self._batch_buffers(dY.shape, lambda _: np.empty(dY.shape, dtype=self.dtype), tag="grad")
        if self._keep is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        np.multiply(dY, self._keep, out=dX)
        return dX

    def compute_mask(self, X: NDArray[Any]) -> NDArray[np.bool_]:
        if X is self._src and self._M is not None:     # the forward's, when asked right after it
            return self._M
        return self._mask(X)[0]

    def get_config(self) -> Config:
        return {"name": self.name, "mask_value": self.mask_value}

    def extra_repr(self) -> str:
        return f"mask_value={self.mask_value}"
