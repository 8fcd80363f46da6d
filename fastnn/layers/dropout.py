"""Dropout: random zeroing of units in training (compiled kernel fastnn/_core/dropout.pyx)."""
from __future__ import annotations

import numpy as np

from fastnn._core import dropout as _k
from fastnn._typing import Config, FloatArray, NDArray
from fastnn._validation import check_number
from fastnn.layers.base import Layer, get_num_threads

_MODES = ("inverted", "weight_scaling")


class Dropout(Layer):
    """Drop each unit independently with probability ``rate`` in training mode (Srivastava et al., 2014).

    Args:
        rate: probability of dropping a unit, in [0, 1).
        mode: "inverted" (default, as torch.nn.Dropout): kept units are scaled by 1 / (1 - rate) in training,
            and inference is the identity.  "weight_scaling" (the paper's rule): no scaling in training, and
            outputs are multiplied by the keep probability 1 - rate at inference.  Both make the expected
            training output equal the inference output.

    The mask is drawn and applied in one compiled pass by a counter-based generator seeded, at every training
    forward, from the model's seeded ``layer_rng``: training is reproducible for a model seed, and the masks do
    not depend on the number of threads.  ``mask`` holds the last mask (uint8, 1 = kept).  In a data-parallel
    fit (fastnn.distributed) each rank draws its own rows of the global batch's mask, as one process would.

    Shape: any (n, *features); output of the same shape.
    """
    mask_support = "pass"     # per step: a mask on (N, T, ...) passes unchanged (fastnn.layers.base)
    # the rows of the global batch before this batch: a data-parallel rank skips the generator's counter ahead
    # to draw its rows' part of the global batch's mask (set per step by fastnn.distributed, 0 otherwise)
    row_offset = 0

    def __init__(self, rate: float = 0.5, mode: str = "inverted", name: str | None = None) -> None:
        super().__init__(name)
        self.rate = check_number(type(self).__name__, "rate", rate, low=0.0, high=1.0, high_open=True)
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"{self.name}: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self._rng: np.random.Generator | None = None
        self._mask: NDArray[np.uint8] | None = None

    @property
    def mask(self) -> NDArray[np.uint8] | None:
        """The mask of the last training forward (uint8, 1 = kept), or None."""
        return self._mask

    def attach_rng(self, generator: np.random.Generator) -> None:
        """Called by the model with its seeded ``layer_rng``: the source of the per-call seeds."""
        self._rng = generator

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        keep = 1.0 - self.rate
        if not training or self.rate == 0.0:
            self._scale = 1.0 if (self.mode == "inverted" or training) else keep
            self._masked = False
            if self._scale == 1.0:
                return X
            Y = self._batch_buffers(X.shape, lambda _: (np.empty(X.shape, X.dtype), np.empty(X.shape, np.uint8)))[0]
            np.multiply(X, self._scale, out=Y)
            return Y
        if self._rng is None:                       # used outside a model: fresh entropy
            self._rng = np.random.default_rng()
        Y, mask = self._batch_buffers(X.shape, lambda _: (np.empty(X.shape, X.dtype), np.empty(X.shape, np.uint8)))
        seed = int(self._rng.integers(0, 2 ** 63))
        threshold = int(round(self.rate * 2.0 ** 53))
        self._scale = 1.0 / keep if self.mode == "inverted" else 1.0
        _k.dropout_forward(X.reshape(-1), Y.reshape(-1), mask.reshape(-1), seed, threshold, self._scale,
                           get_num_threads(),
                           self.row_offset * (X.size // X.shape[0]) if X.shape[0] else 0)
        self._mask, self._masked = mask, True
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        if not self._masked and self._scale == 1.0:
            return dY
        dX = self._batch_buffers(dY.shape, lambda _: np.empty(dY.shape, dY.dtype), tag="grad")
        if self._masked and self._mask is not None:
            _k.dropout_backward(dY.reshape(-1), self._mask.reshape(-1), dX.reshape(-1), self._scale,
                                get_num_threads())
        else:
            np.multiply(dY, self._scale, out=dX)
        return dX

    def get_config(self) -> Config:
        return {"name": self.name, "rate": self.rate, "mode": self.mode}

    def extra_repr(self) -> str:
        return f"rate={self.rate}" + (f", mode={self.mode!r}" if self.mode != "inverted" else "")
