"""Losses: value and gradient from one compiled kernel, defined as torch defines them.

| name | definition | torch equivalent |
|---|---|---|
| "l2" | sum over the batch of (yhat - y)^2, no 1/2 | MSELoss(reduction="sum") |
| "mse" | mean over all elements of (yhat - y)^2 | MSELoss() |
| "mae" | mean over all elements of abs(yhat - y) | L1Loss() |
| "cross_entropy" | softmax cross-entropy on logits, mean over the batch (and positions); integer labels (n, ...) or probabilities (n, ..., k) | CrossEntropyLoss() |
| "binary_cross_entropy" | sigmoid cross-entropy on logits, mean over all elements (yes/no, one-vs-all, multi-label) | BCEWithLogitsLoss() |
| "sampled_softmax" | training: softmax cross-entropy over the true class and a sample of others (``SampledSoftmax``); evaluation: "cross_entropy" | tf.nn.sampled_softmax_loss |

Keras' names are accepted as aliases (``ALIASES``): "sparse_categorical_crossentropy" and
"categorical_crossentropy" are "cross_entropy", "binary_crossentropy" is "binary_cross_entropy",
"mean_squared_error" and "mean_absolute_error" are "mse" and "mae".

A model whose output layer ends in softmax (``Softmax()`` or ``Dense(..., activation="softmax")``) hands
its logits to "cross_entropy" (fused, stable); likewise a final sigmoid with "binary_cross_entropy".
Otherwise the model's output is taken as the logits, as torch does.

N-D outputs (channels-last: classes or features on the last axis): an output (n, ..., k) (a sequence
(n, T, k), an image (n, H, W, k)) is k scores at each of the P positions of a sample.  "cross_entropy" takes
labels (n, ...) (one per position) or probabilities (n, ..., k) and averages over all n*P positions, as torch's
``CrossEntropyLoss`` does on (n, k, d1, ...) with labels (n, d1, ...); the elementwise losses average over all
elements as for 2-D.  Accuracy counts positions (``n_predictions``).

Sample weights (``fit(sample_weight=..., class_weight=...)``): every loss takes optional per-sample weights
w_i >= 0 and becomes the weighted mean sum_i w_i l_i / sum_i w_i, torch's definition for
``CrossEntropyLoss(weight=...)`` (Keras divides by the batch size instead); the per-element means divide by
k * sum_i w_i, and "l2" stays a sum, sum_i w_i l_i.  A batch whose weights sum to 0 has loss 0 and gradient 0.
Weights are per sample: with N-D outputs each of a sample's positions carries its sample's weight (the mean
becomes sum_i w_i sum_p l_ip / (P sum_i w_i)).

Masks (issue 12): when an (N, T) mask travels with the model's output (N, T, ...) (an Embedding with
mask_zero=True or a Masking layer upstream, handed on by per-step layers), ``Loss.masked`` computes the loss
over the real steps only: step t of sample i weighs w_i * mask[i, t], so the masked steps count neither in the
mean (it divides by the summed weights of the real steps: sum_it w_i m_it l_it / sum_it w_i m_it, per element
for the elementwise losses) nor in accuracy, and their gradient is exactly 0.  A batch without a real step
(or whose weights on its real steps sum to 0) has loss 0 and gradient 0.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastnn._core import losses as _k
from fastnn._core.kinds import LOSS
from fastnn._typing import ArrayLike, Config, DTypeLike, NDArray

_per_thread = threading.local()     # per-thread scratch of the losses (CrossEntropy's per-position weights)


def _scratch(tag, shape, dtype):
    """A buffer of `shape` and `dtype` for `tag`, reused by the calling thread (the losses' per-step scratch, so
    that a steady training step makes no new array and threads evaluating one model at once do not share one)."""
    bufs = getattr(_per_thread, "scratch", None)
    if bufs is None:
        bufs = _per_thread.scratch = {}
    dtype = np.dtype(dtype)
    key = (tag, shape, dtype.str)
    buf = bufs.get(key)
    if buf is None:
        if len(bufs) >= 32:
            bufs.clear()
        buf = bufs[key] = np.empty(shape, dtype=dtype)
    return buf


def _step_weights(mask, weights, dtype):
    """The per-step weights (N * T,) of a masked output: mask[i, t] * weights[i] (mask[i, t] without weights),
    written into a reused buffer."""
    n, steps = mask.shape
    w = _scratch("wstep", (n * steps,), dtype)
    if weights is None:
        np.copyto(w, mask.reshape(-1))
    else:        # not np.multiply(mask, weights[:, None]): a ufunc buffers the cast and the broadcast (a 32 kB array)
        w.fill(0)
        np.copyto(w.reshape(n, steps), weights[:, None], where=mask)
    return w


def _argmax_rows(a, tag):
    """np.argmax(a, axis=1) of a 2-D array into a reused buffer."""
    out = _scratch(tag, (a.shape[0],), np.intp)
    if a.shape[0]:
        np.argmax(a, axis=1, out=out)
    return out


class Loss:
    """Base class.  ``__call__(out, targets, grad=None, weights=None) -> (loss, n_correct)``; ``grad`` (OUT) gets
    d loss / d out; ``weights`` (n,) are per-sample weights in the model dtype, or None."""
    name: str | None = None
    fuses: str | None = None  # "softmax" / "sigmoid": the output function this loss absorbs
    classification = False    # whether accuracy applies
    sums = False              # True: the loss sums over samples (evaluate adds batch losses instead of averaging)

    def prepare_targets(self, y: ArrayLike, n: int, out_shape: Sequence[int], dtype: DTypeLike,
                        owner: str = "loss") -> NDArray[Any]:
        """Check the targets `y` for `n` samples against the model output shape; return them in kernel form."""
        raise NotImplementedError

    def n_predictions(self, n: int, out_shape: Sequence[int]) -> int:
        """How many predictions `n_correct` counts for `n` samples (the accuracy's denominator)."""
        return n

    def __call__(self, out: NDArray[Any], targets: NDArray[Any], grad: NDArray[Any] | None = None,
                 weights: NDArray[Any] | None = None) -> tuple[float, int]:
        raise NotImplementedError

    def masked(self, out: NDArray[Any], targets: NDArray[Any], mask: NDArray[np.bool_],
               grad: NDArray[Any] | None = None, weights: NDArray[Any] | None = None) -> tuple[float, int]:
        """(loss, n_correct) over the real steps of an output (N, T, ...) with its (N, T) bool `mask`: the
        weighted loss with weight weights[i] * mask[i, t] per step (see the module docstring); ``n_correct``
        counts the real positions only.  `grad` (OUT) gets 0 at the masked steps."""
        n, steps = self._check_mask(out, mask)
        w = _step_weights(mask, weights, out.dtype)
        rows = n * steps
        o = out.reshape(rows, -1)
        g = None if grad is None else grad.reshape(rows, -1)
        value, _ = self.__call__(o, targets.reshape(rows, -1), g, w)
        return value, 0

    @staticmethod
    def _check_mask(out, mask):
        if out.ndim < 3 or mask.shape != out.shape[:2]:
            raise ValueError(f"loss: the mask of the output must have shape (N, T) = {out.shape[:2]} for an output "
                             f"(N, T, ...), got a mask {mask.shape} for an output {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("loss: a masked output must be C-contiguous")
        return mask.shape

    def get_config(self) -> Config:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _float_targets(owner, y, n, out_shape, dtype):
    arr = np.asarray(y)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{owner}: targets must be numeric, got dtype {arr.dtype}")
    want = (n,) + tuple(out_shape)
    if arr.shape != want:
        if out_shape[-1:] == (1,) and arr.shape == want[:-1]:     # one output per position: the 1 may be left out
            arr = arr.reshape(want)
        else:
            raise ValueError(f"{owner}: targets must have shape {want} to match the model output, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{owner}: targets contain NaN or infinity")
    return arr.reshape(n, math.prod(out_shape))   # not (n, -1): that fails for n = 0


class _Regression(Loss):
    kind = None       # a LOSS member: the compiled kernel's kind (csrc/fnn_kinds.h)

    def prepare_targets(self, y: ArrayLike, n: int, out_shape: Sequence[int], dtype: DTypeLike,
                        owner: str = "loss") -> NDArray[Any]:
        return _float_targets(owner, y, n, out_shape, dtype)

    def __call__(self, out: NDArray[Any], targets: NDArray[Any], grad: NDArray[Any] | None = None,
                 weights: NDArray[Any] | None = None) -> tuple[float, int]:
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
    """Softmax cross-entropy on logits (classes on the last axis), mean over the batch: torch's
    CrossEntropyLoss().

    Targets for outputs (n, k): integer class labels of shape (n,) in [0, k), or probability rows (n, k).
    For N-D outputs (n, ..., k): labels (n, ...) or probabilities (n, ..., k), one per position; the mean is
    over every position (torch's CrossEntropyLoss on (n, k, d1, ...) with labels (n, d1, ...)), and accuracy
    counts positions.  Per-sample weights apply to each of the sample's positions.
    """
    name = "cross_entropy"
    kind = LOSS.CROSS_ENTROPY      # the compiled plan's kind (integer labels)
    fuses = "softmax"
    classification = True

    def prepare_targets(self, y: ArrayLike, n: int, out_shape: Sequence[int], dtype: DTypeLike,
                        owner: str = "loss") -> NDArray[Any]:
        out_shape = tuple(out_shape)
        if len(out_shape) < 1:
            raise ValueError(f"{owner}: cross_entropy needs outputs of shape (n, ..., classes), got (n,)")
        k = out_shape[-1]
        lab_shape = (n,) + out_shape[:-1]
        arr = np.asarray(y)
        if arr.ndim == len(lab_shape):
            if arr.shape != lab_shape:
                raise ValueError(f"{owner}: labels must have shape {lab_shape}, got {arr.shape}")
            if arr.dtype.kind == "f":
                whole = np.isfinite(arr) & (arr == np.round(arr))
                if not whole.all():
                    i = int(np.flatnonzero(~whole)[0])
                    at = i if arr.ndim == 1 else tuple(int(j) for j in np.unravel_index(i, arr.shape))
                    raise ValueError(f"{owner}: float labels must be whole numbers (class indices), "
                                     f"got {arr.reshape(-1)[i]} at index {at}")
            elif arr.dtype.kind not in "iu":
                raise TypeError(f"{owner}: labels must be integers, got dtype {arr.dtype}")
            labels = np.ascontiguousarray(arr, dtype=np.intp)
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                bad = labels[(labels < 0) | (labels >= k)][0]
                raise ValueError(f"{owner}: label {bad} is out of range for {k} classes (expected 0..{k - 1})")
            return labels
        if arr.ndim == len(lab_shape) + 1:
            return _float_targets(owner, arr, n, out_shape, dtype).reshape((n,) + out_shape)
        raise ValueError(f"{owner}: cross_entropy targets must be labels {lab_shape} or probabilities "
                         f"{(n,) + out_shape}, got shape {arr.shape}")

    def n_predictions(self, n: int, out_shape: Sequence[int]) -> int:
        return n * math.prod(tuple(out_shape)[:-1])

    def _row_weights(self, weights, n, rows):
        """Per-sample weights (n,) as per-row weights (rows,): each sample's weight over its rows // n positions
        (a buffer reused by the calling thread, so that threads evaluating one model at once do not share it; the
        weights themselves when each sample is one row)."""
        if weights is None or rows == n:
            return weights
        bufs = getattr(_per_thread, "wrows", None)
        if bufs is None:
            bufs = _per_thread.wrows = {}
        key = (rows, weights.dtype.str)
        buf = bufs.get(key)
        if buf is None:
            if len(bufs) >= 8:
                bufs.clear()
            buf = bufs[key] = np.empty(rows, dtype=weights.dtype)
        if n:
            np.copyto(buf.reshape(n, rows // n), weights[:, None])
        return buf

    def __call__(self, out: NDArray[Any], targets: NDArray[Any], grad: NDArray[Any] | None = None,
                 weights: NDArray[Any] | None = None) -> tuple[float, int]:
        if out.ndim == 2:
            o, g, n = out, grad, out.shape[0]
        else:     # N-D: one row of k scores per position (views, no copy)
            k = out.shape[-1]
            if not out.flags.c_contiguous or not (grad is None or grad.flags.c_contiguous):
                raise ValueError("cross_entropy: outputs and gradient buffer must be C-contiguous")
            o, n = out.reshape(-1, k), out.shape[0]
            g = None if grad is None else grad.reshape(-1, k)
        w = self._row_weights(weights, n, o.shape[0])
        if targets.dtype.kind in "iu":
            return _k.softmax_cross_entropy(o, targets.reshape(-1), g, w)
        return _k.softmax_cross_entropy_soft(o, targets.reshape(o.shape), g, w)

    def masked(self, out: NDArray[Any], targets: NDArray[Any], mask: NDArray[np.bool_],
               grad: NDArray[Any] | None = None, weights: NDArray[Any] | None = None) -> tuple[float, int]:
        n, steps = self._check_mask(out, mask)
        k = out.shape[-1]
        w = _step_weights(mask, weights, out.dtype)
        o = out.reshape(-1, k)
        rows = o.shape[0]
        per_step = rows // max(n * steps, 1)          # positions per step (1 for (N, T, k))
        real = mask.reshape(-1)
        if per_step != 1:      # each step's weight and mask over its positions (buffers, broadcast in place)
            wp = _scratch("wpos", (rows,), w.dtype)
            np.copyto(wp.reshape(n * steps, per_step), w[:, None])
            rp = _scratch("rpos", (rows,), np.bool_)
            np.copyto(rp.reshape(n * steps, per_step), real[:, None])
            w, real = wp, rp
        g = None if grad is None else grad.reshape(-1, k)
        if targets.dtype.kind in "iu":
            lab = targets.reshape(-1)
            value, _ = _k.softmax_cross_entropy(o, lab, g, w)
        else:
            t = targets.reshape(o.shape)
            value, _ = _k.softmax_cross_entropy_soft(o, t, g, w)
            lab = _argmax_rows(t, "tlab")
        if not rows:
            return value, 0
        hit = _scratch("hit", (rows,), np.bool_)       # real positions whose argmax is the label
        np.equal(_argmax_rows(o, "pred"), lab, out=hit)
        np.logical_and(hit, real, out=hit)
        return value, int(np.count_nonzero(hit))


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits, mean over all elements: torch's BCEWithLogitsLoss().

    Targets have the output's shape (n, ...) (a trailing axis of 1 output may be left out: (n,) for (n, 1)),
    values in [0, 1]; accuracy counts elements whose logit sign agrees with target > 0.5.  N-D outputs (n, T, k)
    average over all elements as torch does; per-sample weights apply to all of a sample's elements.
    """
    name = "binary_cross_entropy"
    fuses = "sigmoid"
    classification = True

    def prepare_targets(self, y: ArrayLike, n: int, out_shape: Sequence[int], dtype: DTypeLike,
                        owner: str = "loss") -> NDArray[Any]:
        arr = _float_targets(owner, y, n, out_shape, dtype)
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{owner}: binary_cross_entropy targets must be in [0, 1], "
                             f"got values in [{arr.min()}, {arr.max()}]")
        return arr

    def n_predictions(self, n: int, out_shape: Sequence[int]) -> int:
        return n * math.prod(out_shape)

    def __call__(self, out: NDArray[Any], targets: NDArray[Any], grad: NDArray[Any] | None = None,
                 weights: NDArray[Any] | None = None) -> tuple[float, int]:
        o = out.reshape(out.shape[0], -1)
        return _k.sigmoid_binary_cross_entropy(o, targets, None if grad is None else grad.reshape(o.shape),
                                               weights)

    def masked(self, out: NDArray[Any], targets: NDArray[Any], mask: NDArray[np.bool_],
               grad: NDArray[Any] | None = None, weights: NDArray[Any] | None = None) -> tuple[float, int]:
        value, _ = super().masked(out, targets, mask, grad, weights)
        n, steps = mask.shape
        o = out.reshape(n * steps, -1)
        hit = _scratch("bhit", o.shape, np.bool_)          # real elements whose logit sign matches the target
        tgt = _scratch("btgt", o.shape, np.bool_)
        np.greater(o, 0, out=hit)
        np.greater(targets.reshape(o.shape), 0.5, out=tgt)
        np.equal(hit, tgt, out=hit)
        np.logical_and(hit, mask.reshape(-1, 1), out=hit)
        return value, int(np.count_nonzero(hit))


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
    sampled = True            # the model trains through fastnn.training.sampled (see Trainer.attach)

    def __init__(self, num_sampled: int = 64, sampler: str = "log_uniform", seed: int | None = None) -> None:
        from fastnn._validation import check_number
        self.num_sampled = check_number("SampledSoftmax", "num_sampled", num_sampled, low=1, integer=True)
        if sampler not in ("log_uniform", "uniform"):
            raise ValueError(f"SampledSoftmax: sampler must be 'log_uniform' or 'uniform', got {sampler!r}")
        self.sampler = sampler
        self.seed = None if seed is None else check_number("SampledSoftmax", "seed", seed, low=0, integer=True)

    def prepare_targets(self, y: ArrayLike, n: int, out_shape: Sequence[int], dtype: DTypeLike,
                        owner: str = "loss") -> NDArray[Any]:
        if len(out_shape) != 1:
            raise ValueError(f"{owner}: sampled_softmax needs outputs of shape (n, classes), got "
                             f"(n, {', '.join(map(str, out_shape))})")
        arr = np.asarray(y)
        if arr.ndim != 1:
            raise ValueError(f"{owner}: sampled_softmax takes integer labels of shape ({n},), got {arr.shape}")
        return super().prepare_targets(arr, n, out_shape, dtype, owner)

    def probabilities(self, k: int) -> NDArray[np.float64]:
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

    def sample(self, rng: np.random.Generator, k: int) -> tuple[NDArray[np.intp], int | None]:
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

    def expected_counts(self, classes: NDArray[np.intp], k: int, tries: int | None) -> NDArray[np.float64]:
        """The expected number of times each of `classes` is in a sample taken with `tries` draws:
        1 - (1 - p)^tries (TensorFlow's formula for unique sampling), exactly num_sampled / k for the uniform
        sampler, and 1 when every class is taken (tries None)."""
        if tries is None:
            return np.ones(len(classes))
        if self.sampler == "uniform":
            return np.full(len(classes), self.num_sampled / k)
        p = self.probabilities(k)[classes]
        return -np.expm1(tries * np.log1p(-p))

    def get_config(self) -> Config:
        return {"name": self.name, "num_sampled": self.num_sampled, "sampler": self.sampler, "seed": self.seed}

    def __repr__(self) -> str:
        return f"SampledSoftmax(num_sampled={self.num_sampled}, sampler={self.sampler!r})"


REGISTRY = {cls.name: cls for cls in (L2, MSE, MAE, CrossEntropy, BinaryCrossEntropy, SampledSoftmax)}

# Keras' names for the same losses (compile accepts them; a model keeps and saves the fastnn name).  Keras'
# crossentropies default to from_logits=False, outputs that are probabilities: a model ending in softmax (or
# sigmoid for "binary_crossentropy") gives exactly Keras' loss, fused here with the output layer; a model without
# one is taken as giving logits, Keras' from_logits=True.  Both train the same network; predict returns what the
# last layer outputs (probabilities after a softmax, logits otherwise).
ALIASES = {
    "sparse_categorical_crossentropy": "cross_entropy",     # integer labels (n,)
    "categorical_crossentropy": "cross_entropy",            # one-hot or probability rows (n, k)
    "binary_crossentropy": "binary_cross_entropy",
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
}


def from_config(config: Mapping[str, Any]) -> Loss:
    """A Loss from ``loss.get_config()`` (the name and the constructor's arguments)."""
    config = dict(config)
    cls = REGISTRY.get(str(config.pop("name")).lower())
    if cls is None:
        raise ValueError(f"unknown loss in {config!r}")
    return cls(**config)


def get(spec: str | Loss) -> Loss:
    """A Loss from a name (REGISTRY, or one of Keras' names in ALIASES) or a Loss instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        cls = REGISTRY.get(ALIASES.get(key, key))
        if cls is None:
            raise ValueError(f"compile: unknown loss {spec!r}; known: {sorted(REGISTRY)}, and Keras' names "
                             f"{sorted(ALIASES)}")
        return cls()
    raise TypeError(f"compile: loss must be a name or a fastnn.losses.Loss, got {type(spec).__name__}")
