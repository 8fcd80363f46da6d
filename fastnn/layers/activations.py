"""Activation layers.  Each is one row in REGISTRY and one compiled kind (fastnn/_core/activations.pyx).

Elementwise activations apply to batches of any shape; Softmax normalizes over the last axis.
"""
import numpy as np

from fastnn._core import activations as _k
from fastnn._validation import check_number
from fastnn.layers.base import Layer, get_num_threads


class Activation(Layer):
    """Base of the activation layers: ``Y = f(X)`` with the compiled kernel of kind ``kind``."""
    kind = None
    alpha = 0.0
    _act_counts = None   # (n_slots, n_features) int64 buffer for the unit counters (fastnn.diagnostics), or None

    def _build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: input must have at least one feature axis, got shape {input_shape}")
        return input_shape

    def _rows(self, X):
        # softmax is over the last axis; elementwise kinds may use any 2-D view
        return X.reshape(-1, X.shape[-1]) if X.ndim != 2 else X

    def forward(self, X, training=False, logits=False):
        """Y = f(X).  With logits=True (the output layer of a fused loss), return X itself."""
        self._X = X
        self._logits = logits
        if logits:
            return X
        Y = self._batch_buffers(X.shape[0], lambda n: np.empty((n,) + X.shape[1:], dtype=X.dtype))
        if X.size:
            _k.activation_forward(self.kind, self._rows(X), self._rows(Y), self.alpha, get_num_threads(),
                                  self._act_counts)
        self._Y = Y
        return Y

    def backward(self, dY):
        if self._logits:
            return dY
        X = self._X
        dX = self._batch_buffers(-1 - X.shape[0], lambda n: np.empty(X.shape, dtype=X.dtype))
        if X.size:
            _k.activation_backward(self.kind, self._rows(X), self._rows(self._Y), self._rows(dY), self._rows(dX),
                                   self.alpha, get_num_threads())
        return dX

class Identity(Activation):
    """f(x) = x."""
    kind = 0


class ReLU(Activation):
    """f(x) = max(x, 0); the derivative at 0 is taken as 0 (as torch does)."""
    kind = 1


class LeakyReLU(Activation):
    """f(x) = x for x > 0, alpha * x otherwise (torch.nn.LeakyReLU's negative_slope)."""
    kind = 2

    def __init__(self, alpha=0.01, name=None):
        super().__init__(name)
        self.alpha = check_number(type(self).__name__, "alpha", alpha)

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Sigmoid(Activation):
    """f(x) = 1 / (1 + exp(-x)), computed without overflow; fused with "binary_cross_entropy" at the output."""
    kind = 3
    fusable = "sigmoid"


class Tanh(Activation):
    """f(x) = tanh(x)."""
    kind = 4


class Softmax(Activation):
    """Softmax over the last axis; fused with "cross_entropy" when it is the model's output layer."""
    kind = 5
    fusable = "softmax"


# name -> class, for Dense(activation="name"); the one list to extend with a new activation
REGISTRY = {"identity": Identity, "linear": Identity, "relu": ReLU, "leaky_relu": LeakyReLU,
            "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}

# class name -> class (saving, loading, the compiled plan), derived from REGISTRY
CLASSES = {cls.__name__: cls for cls in REGISTRY.values()}


def get(spec, owner="activation"):
    """An activation layer instance from a name (REGISTRY), None (identity) or an Activation instance."""
    if spec is None:
        return Identity()
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        cls = REGISTRY.get(spec.lower())
        if cls is None:
            raise ValueError(f"{owner}: unknown activation {spec!r}; known: {sorted(REGISTRY)}")
        return cls()
    raise TypeError(f"{owner}: activation must be a name, None or an activation layer, got {type(spec).__name__}")
