"""Metrics that ``fit`` and ``evaluate`` report next to the loss: "accuracy", "top_k_accuracy", "mae", "mse", "r2".

A metric accumulates over the batches of an epoch (``reset``, ``update(out, targets)`` per batch,
``result()``) and is reported under its ``name``; on the validation data as ``"val_" + name``.  Training
metrics are measured on each batch's forward pass while the model trains (as Keras does); they are not
weighted by ``sample_weight`` / ``class_weight`` (Keras' ``metrics``, not ``weighted_metrics``).

- "accuracy": for classification losses; fit reports it for them anyway, from the loss kernel's own count.
  With N-D outputs (n, ..., classes) each position (a time step, a pixel) is one prediction: accuracy and
  top-k count positions, and the elementwise metrics average over all elements.
- ``TopKAccuracy(k)`` / "top_k_accuracy" (k=5): the label is among the k largest outputs ("cross_entropy").
- "mae", "mse": mean absolute / squared error over all output elements (regression losses).
- "r2": the coefficient of determination per output column over the whole epoch, averaged over columns
  (sklearn's ``r2_score`` with ``multioutput="uniform_average"``); a constant target column counts 0.

Regression metrics need a regression loss ("l2", "mse", "mae") and the accuracies a classification loss,
so that they always see predictions in the space of the targets; a mismatch is a ValueError in ``fit`` and
``evaluate``, raised before anything runs.

Keras' metric names are accepted as aliases (reported under fastnn's names):

- "sparse_categorical_accuracy", "categorical_accuracy": "accuracy" of a "cross_entropy" loss (the argmax of
  the output against integer labels, or against the argmax of one-hot / probability rows: the loss takes both);
  with another loss a ValueError.
- "binary_accuracy": "accuracy" of a "binary_cross_entropy" loss, per element: probability > 0.5 (a model ending
  in sigmoid), or logit > 0 (a model without one: the same decision) against target > 0.5; with another loss a
  ValueError.
- "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy": ``TopKAccuracy(5)``.
- "mean_absolute_error", "mean_squared_error": "mae", "mse".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fastnn._typing import NDArray

if TYPE_CHECKING:
    from fastnn.losses import Loss


class Metric:
    """Base class: ``reset()``, ``update(out, targets)`` per batch, ``result()`` -> float."""
    name: str | None = None
    kind: ClassVar[str | None] = None    # "classification" or "regression": the losses it applies to

    def reset(self) -> None:
        raise NotImplementedError

    def check_loss(self, loss: Loss, owner: str) -> None:
        """Raise a ValueError naming `owner` if this metric does not apply to `loss` (a regression metric for a
        classification loss, or the reverse)."""
        want = "classification" if loss.classification else "regression"
        if self.kind != want:
            raise ValueError(f"{owner}: metric {self.name!r} applies to {self.kind} losses, the loss "
                             f"{loss.name!r} is not one")

    def update(self, out: NDArray[Any], targets: NDArray[Any]) -> None:
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The running state since ``reset()`` as {name: value}: the metric's additive accumulators (counts and
        sums: its private numbers and arrays, None before a first update), so that the states of metrics that saw
        disjoint parts of the data add up to the state of one that saw all of it (``merge_states``)."""
        return {k: v for k, v in vars(self).items()
                if k.startswith("_") and not isinstance(v, bool)
                and (v is None or isinstance(v, (int, float, np.ndarray, np.number)))}

    def merge_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Set the state to the sum of `states` (``state()`` dicts, e.g. of the ranks of a data-parallel fit)."""
        for k in self.state():
            vals = [st[k] for st in states if st[k] is not None]
            setattr(self, k, None if not vals else sum(vals[1:], vals[0]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Fraction of correct predictions; fit takes the count from the loss kernel (no extra pass).

    With "cross_entropy" the argmax of the output is compared with the label (or the argmax of a one-hot /
    probability row); with "binary_cross_entropy" every element counts, logit > 0 (probability > 0.5) against
    target > 0.5."""
    name = "accuracy"
    kind = "classification"
    #: Keras' name this accuracy was asked for (the subclasses), and the output function (``Loss.fuses``) of the
    #: loss it is defined for; None: any classification loss
    alias: ClassVar[str | None] = None
    loss_fuses: ClassVar[str | None] = None

    def check_loss(self, loss: Loss, owner: str) -> None:
        super().check_loss(loss, owner)
        if self.loss_fuses is not None and loss.fuses != self.loss_fuses:
            want = "binary_cross_entropy" if self.loss_fuses == "sigmoid" else "cross_entropy"
            raise ValueError(f"{owner}: metric {self.alias!r} is the accuracy of a {want!r} loss, the loss is "
                             f"{loss.name!r}; use 'accuracy' (reported for every classification loss)")


class SparseCategoricalAccuracy(Accuracy):
    """Keras' "sparse_categorical_accuracy": "accuracy" of a cross-entropy loss (reported as "accuracy")."""
    alias = "sparse_categorical_accuracy"
    loss_fuses = "softmax"


class CategoricalAccuracy(Accuracy):
    """Keras' "categorical_accuracy": "accuracy" of a cross-entropy loss with one-hot or probability targets
    (integer labels too); reported as "accuracy"."""
    alias = "categorical_accuracy"
    loss_fuses = "softmax"


class BinaryAccuracy(Accuracy):
    """Keras' "binary_accuracy" (threshold 0.5): "accuracy" of a binary cross-entropy loss, per element
    probability > 0.5 (logit > 0) against target > 0.5; reported as "accuracy"."""
    alias = "binary_accuracy"
    loss_fuses = "sigmoid"


class TopKAccuracy(Metric):
    """Fraction of predictions whose label is among the k largest outputs (integer labels or probability rows).
    For N-D outputs (n, ..., classes) every position is one prediction (labels (n, ...))."""
    kind = "classification"

    def __init__(self, k: int = 5, name: str | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"TopKAccuracy: k must be a positive int, got {k!r}")
        self.k = int(k)
        self.name = name or ("top_k_accuracy" if self.k == 5 else f"top_{self.k}_accuracy")
        self.reset()

    def reset(self) -> None:
        self._hits = 0
        self._n = 0

    def update(self, out: NDArray[Any], targets: NDArray[Any]) -> None:
        c = out.shape[-1]
        scores = out.reshape(-1, c)                  # one row per prediction (a sample, or a position of one)
        if targets.dtype.kind in "iu":
            labels = targets.reshape(-1)
        else:
            labels = np.argmax(targets.reshape(-1, c), axis=1)
        n = scores.shape[0]
        if self.k >= c:
            self._hits += n
        else:
            # the label's score beats all but fewer than k others (ties counted in its favour, as Keras)
            lab_score = scores[np.arange(n), labels]
            above = (scores > lab_score[:, None]).sum(axis=1)
            self._hits += int((above < self.k).sum())
        self._n += n

    def result(self) -> float:
        return self._hits / self._n if self._n else float("nan")

    def __repr__(self) -> str:
        return f"TopKAccuracy(k={self.k})"


class _Elementwise(Metric):
    kind = "regression"

    @staticmethod
    def _reduce(d: NDArray[Any]) -> Any:
        """The sum over all elements of the differences `d` (float64), which it may overwrite."""
        raise NotImplementedError

    def reset(self) -> None:
        self._sum = 0.0
        self._n = 0

    def update(self, out: NDArray[Any], targets: NDArray[Any]) -> None:
        d = out.reshape(targets.shape) - targets
        self._sum += float(self._reduce(d))
        self._n += d.size

    def result(self) -> float:
        return self._sum / self._n if self._n else float("nan")


class MeanAbsoluteError(_Elementwise):
    """Mean |yhat - y| over all output elements."""
    name = "mae"

    @staticmethod
    def _reduce(d: NDArray[Any]) -> Any:
        return np.abs(d, out=d).sum(dtype=np.float64)


class MeanSquaredError(_Elementwise):
    """Mean (yhat - y)^2 over all output elements."""
    name = "mse"

    @staticmethod
    def _reduce(d: NDArray[Any]) -> Any:
        return np.einsum("ij,ij->", d, d, dtype=np.float64)


class R2Score(Metric):
    """Coefficient of determination, 1 - SS_res / SS_tot per output column, averaged over the columns."""
    name = "r2"
    kind = "regression"

    def reset(self) -> None:
        self._n = 0
        self._s: NDArray[np.float64] | None = None      # per column: sum of y, sum of y^2, sum of residuals^2
        self._ss: NDArray[np.float64] | None = None
        self._res: NDArray[np.float64] | None = None

    def update(self, out: NDArray[Any], targets: NDArray[Any]) -> None:
        t = targets.astype(np.float64)
        d = out.reshape(targets.shape) - t
        if self._s is None:
            self._s = np.zeros(t.shape[1])
            self._ss = np.zeros(t.shape[1])
            self._res = np.zeros(t.shape[1])
        self._s += t.sum(axis=0)
        self._ss += (t * t).sum(axis=0)
        self._res += (d * d).sum(axis=0)
        self._n += t.shape[0]

    def result(self) -> float:
        if not self._n or self._s is None or self._ss is None or self._res is None:
            return float("nan")
        tot = self._ss - self._s * self._s / self._n
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(tot > 0, 1.0 - self._res / np.where(tot > 0, tot, 1.0),
                          np.where(self._res == 0, 1.0, 0.0))
        return float(r2.mean())


REGISTRY: dict[str, type[Metric]] = {
    "accuracy": Accuracy, "acc": Accuracy, "top_k_accuracy": TopKAccuracy, "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError, "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "r2": R2Score, "r2_score": R2Score,
    # Keras' names
    "sparse_categorical_accuracy": SparseCategoricalAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy, "top_k_categorical_accuracy": TopKAccuracy,
    "sparse_top_k_categorical_accuracy": TopKAccuracy}


def get(spec: str | Metric, owner: str = "fit") -> Metric:
    """A Metric from a name (REGISTRY) or a Metric instance; errors name `owner` (the calling function)."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        cls = REGISTRY.get(spec.lower())
        if cls is None:
            raise ValueError(f"{owner}: unknown metric {spec!r}; known: {sorted(REGISTRY)}")
        return cls()
    raise TypeError(f"{owner}: a metric must be a name or a fastnn.metrics.Metric, got {type(spec).__name__}")
