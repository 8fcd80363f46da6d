"""Losses: value and gradient from one compiled kernel, defined as torch defines them.

| name | definition | torch equivalent |
|---|---|---|
| "l2" | sum over the batch of (yhat - y)^2, no 1/2 | MSELoss(reduction="sum") |
| "mse" | mean over all elements of (yhat - y)^2 | MSELoss() |
| "mae" | mean over all elements of abs(yhat - y) | L1Loss() |
| "cross_entropy" | softmax cross-entropy on logits, mean over the batch; integer labels (n,) or probability rows (n, k) | CrossEntropyLoss() |
| "binary_cross_entropy" | sigmoid cross-entropy on logits, mean over all elements (yes/no, one-vs-all, multi-label) | BCEWithLogitsLoss() |

A model whose output layer ends in softmax (``Softmax()`` or ``Dense(..., activation="softmax")``) hands
its logits to "cross_entropy" (fused, stable); likewise a final sigmoid with "binary_cross_entropy".
Otherwise the model's output is taken as the logits, as torch does.

Sample weights (``fit(sample_weight=..., class_weight=...)``): every loss takes optional per-sample weights
w_i >= 0 and becomes the weighted mean sum_i w_i l_i / sum_i w_i, torch's definition for
``CrossEntropyLoss(weight=...)`` (Keras divides by the batch size instead); the per-element means divide by
k * sum_i w_i, and "l2" stays a sum, sum_i w_i l_i.  A batch whose weights sum to 0 has loss 0 and gradient 0.
"""
import numpy as np

from fastnn._core import losses as _k


class Loss:
    """Base class.  ``__call__(out, targets, grad=None, weights=None) -> (loss, n_correct)``; ``grad`` (OUT) gets
    d loss / d out; ``weights`` (n,) are per-sample weights in the model dtype, or None."""
    name = None
    fuses = None              # "softmax" / "sigmoid": the output function this loss absorbs
    classification = False    # whether accuracy applies
    sums = False              # True: the loss sums over samples (evaluate adds batch losses instead of averaging)

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        """Check the targets `y` for `n` samples against the model output shape; return them in kernel form."""
        raise NotImplementedError

    def n_predictions(self, n, out_shape):
        """How many predictions `n_correct` counts for `n` samples (the accuracy's denominator)."""
        return n

    def __call__(self, out, targets, grad=None, weights=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


def _float_targets(owner, y, n, out_shape, dtype):
    arr = np.asarray(y)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{owner}: targets must be numeric, got dtype {arr.dtype}")
    want = (n,) + tuple(out_shape)
    if arr.shape != want:
        if arr.shape == (n,) and tuple(out_shape) == (1,):
            arr = arr.reshape(n, 1)
        else:
            raise ValueError(f"{owner}: targets must have shape {want} to match the model output, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{owner}: targets contain NaN or infinity")
    return arr.reshape(n, int(np.prod(out_shape)))   # not (n, -1): that fails for n = 0


class _Regression(Loss):
    kind = None

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        return _float_targets(owner, y, n, out_shape, dtype)

    def __call__(self, out, targets, grad=None, weights=None):
        o = out.reshape(out.shape[0], -1)
        return _k.regression_loss(self.kind, o, targets, None if grad is None else grad.reshape(o.shape), weights)


class L2(_Regression):
    """Sum over the batch of squared errors (no 1/2): torch's MSELoss(reduction="sum")."""
    name = "l2"
    kind = 0
    sums = True


class MSE(_Regression):
    """Mean squared error over all elements: torch's MSELoss()."""
    name = "mse"
    kind = 1


class MAE(_Regression):
    """Mean absolute error over all elements: torch's L1Loss() (gradient sign(yhat - y) / N, 0 at equality)."""
    name = "mae"
    kind = 2


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits, mean over the batch: torch's CrossEntropyLoss().

    Targets: integer class labels of shape (n,) in [0, k), or probability rows of shape (n, k).
    """
    name = "cross_entropy"
    fuses = "softmax"
    classification = True

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        if len(out_shape) != 1:
            raise ValueError(f"{owner}: cross_entropy needs outputs of shape (n, classes), got (n, {out_shape})")
        k = out_shape[0]
        arr = np.asarray(y)
        if arr.ndim == 1:
            if arr.shape[0] != n:
                raise ValueError(f"{owner}: labels must have shape ({n},), got {arr.shape}")
            if arr.dtype.kind == "f":
                whole = np.isfinite(arr) & (arr == np.round(arr))
                if not whole.all():
                    i = int(np.flatnonzero(~whole)[0])
                    raise ValueError(f"{owner}: float labels must be whole numbers (class indices), "
                                     f"got {arr[i]} at index {i}")
            elif arr.dtype.kind not in "iu":
                raise TypeError(f"{owner}: labels must be integers, got dtype {arr.dtype}")
            labels = np.ascontiguousarray(arr, dtype=np.intp)
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                bad = labels[(labels < 0) | (labels >= k)][0]
                raise ValueError(f"{owner}: label {bad} is out of range for {k} classes (expected 0..{k - 1})")
            return labels
        if arr.ndim == 2:
            return _float_targets(owner, arr, n, out_shape, dtype)
        raise ValueError(f"{owner}: cross_entropy targets must be labels (n,) or probabilities (n, {k}), "
                         f"got shape {arr.shape}")

    def __call__(self, out, targets, grad=None, weights=None):
        if targets.ndim == 1:
            return _k.softmax_cross_entropy(out, targets, grad, weights)
        return _k.softmax_cross_entropy_soft(out, targets, grad, weights)


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits, mean over all elements: torch's BCEWithLogitsLoss().

    Targets have the output's shape ((n,) accepted for one output), values in [0, 1]; accuracy counts
    elements whose logit sign agrees with target > 0.5.
    """
    name = "binary_cross_entropy"
    fuses = "sigmoid"
    classification = True

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        arr = _float_targets(owner, y, n, out_shape, dtype)
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{owner}: binary_cross_entropy targets must be in [0, 1], "
                             f"got values in [{arr.min()}, {arr.max()}]")
        return arr

    def n_predictions(self, n, out_shape):
        return n * int(np.prod(out_shape))

    def __call__(self, out, targets, grad=None, weights=None):
        o = out.reshape(out.shape[0], -1)
        return _k.sigmoid_binary_cross_entropy(o, targets, None if grad is None else grad.reshape(o.shape),
                                               weights)


REGISTRY = {cls.name: cls for cls in (L2, MSE, MAE, CrossEntropy, BinaryCrossEntropy)}


def get(spec):
    """A Loss from a name (REGISTRY) or a Loss instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        cls = REGISTRY.get(spec.lower())
        if cls is None:
            raise ValueError(f"compile: unknown loss {spec!r}; known: {sorted(REGISTRY)}")
        return cls()
    raise TypeError(f"compile: loss must be a name or a fastnn.losses.Loss, got {type(spec).__name__}")
