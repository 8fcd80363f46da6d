"""Losses: value and gradient from one compiled kernel, defined as torch defines them.

| name | definition | torch equivalent |
|---|---|---|
| "l2" | sum over the batch of (yhat - y)^2, no 1/2 | MSELoss(reduction="sum") |
| "mse" | mean over all elements of (yhat - y)^2 | MSELoss() |
| "mae" | mean over all elements of abs(yhat - y) | L1Loss() |
| "cross_entropy" | softmax cross-entropy on logits, mean over the batch; integer labels (n,) or probability rows (n, k) | CrossEntropyLoss() |
| "binary_cross_entropy" | sigmoid cross-entropy on logits, mean over all elements (yes/no, one-vs-all, multi-label) | BCEWithLogitsLoss() |
| "sampled_softmax" | training: softmax cross-entropy over the true class and a sample of others (``SampledSoftmax``); evaluation: "cross_entropy" | tf.nn.sampled_softmax_loss |

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
from fastnn._core.kinds import LOSS


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
    kind = None       # a LOSS member: the compiled kernel's kind (csrc/fnn_kinds.h)

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        return _float_targets(owner, y, n, out_shape, dtype)

    def __call__(self, out, targets, grad=None, weights=None):
        o = out.reshape(out.shape[0], -1)
        return _k.regression_loss(self.kind, o, targets, None if grad is None else grad.reshape(o.shape), weights)


class L2(_Regression):
    """Sum over the batch of squared errors (no 1/2): torch's MSELoss(reduction="sum")."""
    name = "l2"
    kind = LOSS.L2
    sums = True


class MSE(_Regression):
    """Mean squared error over all elements: torch's MSELoss()."""
    name = "mse"
    kind = LOSS.MSE


class MAE(_Regression):
    """Mean absolute error over all elements: torch's L1Loss() (gradient sign(yhat - y) / N, 0 at equality)."""
    name = "mae"
    kind = LOSS.MAE


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits, mean over the batch: torch's CrossEntropyLoss().

    Targets: integer class labels of shape (n,) in [0, k), or probability rows of shape (n, k).
    """
    name = "cross_entropy"
    kind = LOSS.CROSS_ENTROPY      # the compiled plan's kind (integer labels)
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


class SampledSoftmax(CrossEntropy):
    """Sampled softmax (candidate sampling) for very many classes; integer labels only.

    In training, each batch draws ``num_sampled`` distinct classes from ``sampler`` and the loss of row i is
    the softmax cross-entropy over its true class and the sampled ones, each logit corrected by subtracting
    log(expected count) of its class (the sampling probability times the number of draws; see
    ``expected_counts``), so that the estimate is consistent; a sampled class equal to the row's label is
    removed from that row (TensorFlow's ``sampled_softmax_loss`` with remove_accidental_hits=True).  The
    model's output layer must be a ``Dense`` with no activation or softmax; in training it computes only the
    needed columns (fastnn._core.sampled), so a step costs O(n * n_in * num_sampled) instead of
    O(n * n_in * k).  ``evaluate``, validation and ``predict`` use the full softmax ("cross_entropy").
    The training "accuracy" counts rows whose true class beats every sampled candidate (an optimistic
    estimate); validation accuracy is exact.

    Args:
        num_sampled: classes drawn per batch (>= 1); num_sampled >= k - 1 takes every class (the full
            softmax, each with expected count 1).
        sampler: "log_uniform" (Zipfian: P(c) = log((c + 2) / (c + 1)) / log(k + 1), for classes sorted by
            decreasing frequency) or "uniform".
        seed: seeds the sampler's own generator; None (default) draws from the model's seeded generator
            ``model.layer_rng``, so that training is reproducible from the model's seed.
    """
    name = "sampled_softmax"
    sampled = True            # the model trains through fastnn._sampled (see Model._attach_training)

    def __init__(self, num_sampled=64, sampler="log_uniform", seed=None):
        from fastnn._validation import check_number
        self.num_sampled = check_number("SampledSoftmax", "num_sampled", num_sampled, low=1, integer=True)
        if sampler not in ("log_uniform", "uniform"):
            raise ValueError(f"SampledSoftmax: sampler must be 'log_uniform' or 'uniform', got {sampler!r}")
        self.sampler = sampler
        self.seed = None if seed is None else check_number("SampledSoftmax", "seed", seed, low=0, integer=True)

    def prepare_targets(self, y, n, out_shape, dtype, owner="loss"):
        arr = np.asarray(y)
        if arr.ndim != 1:
            raise ValueError(f"{owner}: sampled_softmax takes integer labels of shape ({n},), got {arr.shape}")
        return super().prepare_targets(arr, n, out_shape, dtype, owner)

    def probabilities(self, k):
        """The sampler's probability of each of k classes, (k,) float64."""
        if self.sampler == "uniform":
            return np.full(k, 1.0 / k)
        c = np.arange(k, dtype=np.float64)
        return (np.log(c + 2.0) - np.log(c + 1.0)) / np.log(k + 1.0)

    def _draw(self, rng, k, size):
        if self.sampler == "uniform":
            return rng.integers(0, k, size=size, dtype=np.intp)
        # inverse transform of the log-uniform distribution (TensorFlow's LogUniformSampler)
        v = np.floor(np.exp(rng.random(size) * np.log(k + 1.0))).astype(np.intp) - 1
        return np.clip(v, 0, k - 1, out=v)

    def sample(self, rng, k):
        """(sampled classes (s,) intp, number of draws): distinct classes drawn with replacement from the
        sampler until num_sampled are distinct, as TensorFlow's samplers with unique=True."""
        if self.num_sampled >= k - 1:
            return np.arange(k, dtype=np.intp), None
        s = self.num_sampled
        draws = np.empty(0, dtype=np.intp)
        while True:
            draws = np.concatenate([draws, self._draw(rng, k, max(2 * s, 64))])
            _, first = np.unique(draws, return_index=True)
            if first.size >= s:
                pos = np.sort(first)[:s]
                return draws[pos], int(pos[-1]) + 1

    def expected_counts(self, classes, k, tries):
        """The expected number of times each of `classes` is in a sample taken with `tries` draws:
        1 - (1 - p)^tries (TensorFlow's formula for unique sampling), exactly num_sampled / k for the uniform
        sampler, and 1 when every class is taken (tries None)."""
        if tries is None:
            return np.ones(len(classes))
        if self.sampler == "uniform":
            return np.full(len(classes), self.num_sampled / k)
        p = self.probabilities(k)[classes]
        return -np.expm1(tries * np.log1p(-p))

    def get_config(self):
        return {"name": self.name, "num_sampled": self.num_sampled, "sampler": self.sampler, "seed": self.seed}

    def __repr__(self):
        return f"SampledSoftmax(num_sampled={self.num_sampled}, sampler={self.sampler!r})"


REGISTRY = {cls.name: cls for cls in (L2, MSE, MAE, CrossEntropy, BinaryCrossEntropy, SampledSoftmax)}


def from_config(config):
    """A Loss from ``loss.get_config()`` (the name and the constructor's arguments)."""
    config = dict(config)
    cls = REGISTRY.get(str(config.pop("name")).lower())
    if cls is None:
        raise ValueError(f"unknown loss in {config!r}")
    return cls(**config)


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
