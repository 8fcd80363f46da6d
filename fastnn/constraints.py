"""Weight constraints, applied to a layer's weights after every optimizer step.

``Dense(..., max_norm=3.0)`` (or ``max_norm=fnn.constraints.MaxNorm(3.0)``) keeps the L2 norm of every unit's
incoming weight vector (a column of the (n_in, n_out) weight) at most 3 (Srivastava et al., 2014, with
dropout; Keras' ``MaxNorm``).  The rescaling is one compiled pass over the layer's weight view, with a scratch
vector made once: no allocation per step.
"""
import numpy as np

from fastnn._core import clip as _k
from fastnn._core._threads import get_num_threads
from fastnn._validation import check_number


class MaxNorm:
    """Rescale each column of a (n_in, n_out) weight whose L2 norm exceeds ``max_value`` to norm ``max_value``."""

    def __init__(self, max_value):
        self.max_value = check_number("MaxNorm", "max_value", max_value, low=0.0, low_open=True)
        self._norms = None

    def __call__(self, W):
        """Apply in place to W (C-contiguous, 2-D); returns W."""
        if self._norms is None or self._norms.shape[0] != W.shape[1] or self._norms.dtype != W.dtype:
            self._norms = np.empty(W.shape[1], dtype=W.dtype)
        _k.max_norm_columns(W, self._norms, self.max_value, get_num_threads())
        return W

    def get_config(self):
        return {"name": "MaxNorm", "max_value": self.max_value}

    def __repr__(self):
        return f"MaxNorm({self.max_value})"


def get(spec, owner="constraint"):
    """A MaxNorm from a positive number, a MaxNorm instance, or None."""
    if spec is None or isinstance(spec, MaxNorm):
        return spec
    if isinstance(spec, (bool, np.bool_)) or not isinstance(spec, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: max_norm must be a positive number or a fastnn.constraints.MaxNorm, got "
                        f"{type(spec).__name__}")
    return MaxNorm(spec)
