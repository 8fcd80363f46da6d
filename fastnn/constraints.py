"""Weight constraints, applied to a layer's weights after every optimizer step.

``Dense(..., max_norm=3.0)`` (or ``max_norm=fnn.constraints.MaxNorm(3.0)``) keeps the L2 norm of every unit's
incoming weight vector (a column of the (n_in, n_out) weight) at most 3 (Srivastava et al., 2014, with
dropout; Keras' ``MaxNorm``).  The rescaling is one compiled pass over the layer's weight view, with a scratch
vector made once: no allocation per step.

A weight of any rank is handled through its unit axis (``ParamSpec.unit_axis``): each index along that axis
is one unit, and its incoming weights are all the elements at that index (a Dense weight (n_in, units): a
column; a channels-last conv kernel (kh, kw, C_in, C_out): the kh*kw*C_in weights of one output channel).
"""
from __future__ import annotations

import numpy as np

from fastnn._core import clip as _k
from fastnn._core._threads import get_num_threads
from fastnn._typing import Config, FloatArray
from fastnn._validation import check_number


class MaxNorm:
    """Rescale each unit's incoming weights whose L2 norm exceeds ``max_value`` to norm ``max_value``: the norm
    is taken over all axes but the unit axis (a column of a (n_in, n_out) weight)."""

    def __init__(self, max_value: float) -> None:
        self.max_value = check_number("MaxNorm", "max_value", max_value, low=0.0, low_open=True)
        self._norms: FloatArray | None = None

    def __call__(self, W: FloatArray, unit_axis: int = -1) -> FloatArray:
        """Apply in place to W (C-contiguous, rank >= 1), whose units are along `unit_axis` (default: the last
        axis, as a Dense weight's columns); returns W."""
        if not isinstance(W, np.ndarray) or not W.flags.c_contiguous or W.ndim < 1:
            raise ValueError(f"MaxNorm: W must be a C-contiguous array of rank >= 1, got "
                             f"{getattr(W, 'shape', type(W).__name__)}")
        if not -W.ndim <= unit_axis < W.ndim:
            raise ValueError(f"MaxNorm: unit_axis {unit_axis} is out of range for a weight of shape {W.shape}")
        axis = unit_axis % W.ndim
        units = W.shape[axis]
        if self._norms is None or self._norms.shape[0] != units or self._norms.dtype != W.dtype:
            self._norms = np.empty(units, dtype=W.dtype)
        before = int(np.prod(W.shape[:axis]))
        after = int(np.prod(W.shape[axis + 1:]))
        if after == 1:       # units on the last axis (up to trailing 1s): the columns of a (rows, units) view
            W2 = W.view()
            W2.shape = (before, units)
            _k.max_norm_columns(W2, self._norms, self.max_value, get_num_threads())
            return W
        # units on another axis: (before, units, after) view, norms over the outer axes, then one in-place scale
        W3 = W.view()
        W3.shape = (before, units, after)
        norms = self._norms
        np.einsum("aub,aub->u", W3, W3, out=norms)
        np.sqrt(norms, out=norms)
        np.maximum(norms, self.max_value, out=norms)
        np.divide(self.max_value, norms, out=norms)     # the scale: c / norm where norm > c, else 1
        W3 *= norms[None, :, None]
        return W

    def get_config(self) -> Config:
        return {"name": "MaxNorm", "max_value": self.max_value}

    def __repr__(self) -> str:
        return f"MaxNorm({self.max_value})"


def get(spec: float | MaxNorm | None, owner: str = "constraint") -> MaxNorm | None:
    """A MaxNorm from a positive number, a MaxNorm instance, or None."""
    if spec is None or isinstance(spec, MaxNorm):
        return spec
    if isinstance(spec, (bool, np.bool_)) or not isinstance(spec, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: max_norm must be a positive number or a fastnn.constraints.MaxNorm, got "
                        f"{type(spec).__name__}")
    return MaxNorm(spec)
