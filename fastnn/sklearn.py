"""scikit-learn estimators over fastnn: ``MLPClassifier`` and ``MLPRegressor``.

They take the parameters of ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` that carry over
(hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate_init, max_iter, shuffle,
random_state, tol, verbose, warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction,
beta_1, beta_2, epsilon, n_iter_no_change) and three of their own: ``dropout`` (the rate of a Dropout layer
after each hidden layer), ``batch_norm`` (a BatchNorm between each hidden Dense and its activation) and
``dtype`` ("float32" or "float64", the network's precision).  They pass scikit-learn's estimator checks (in
float32 all but check_methods_subset_invariance: a few rows and a large batch take different GEMM routes, so a
row's prediction may differ in its last bit, as in numpy and PyTorch) and work in Pipeline, GridSearchCV,
cross_val_score, clone and pickle.

Definitions, as scikit-learn's MLP:
- ``alpha`` is an L2 penalty 0.5 * alpha * ||W||^2 / batch_size on the weights (not the biases), applied as
  coupled weight decay alpha / batch_size; ``batch_size="auto"`` is min(200, n_samples).
- Classification: two classes train one logistic output (binary cross-entropy), more classes a softmax
  (cross-entropy), a multi-label indicator matrix y (n, k) k logistic outputs; ``predict_proba`` returns
  (n, n_classes) probabilities ((n, k) for multi-label).  Regression: squared error, one output per target
  column (multi-output).
- ``loss_curve_[i]`` is the mean training loss of epoch i, measured during the epoch (the data term; for the
  regressor half the mean squared error, scikit-learn's squared loss), without the L2 term.
- Stopping: without early stopping, training stops when the training loss has not improved by at least
  ``tol`` for ``n_iter_no_change`` consecutive epochs; with it, when the validation score (accuracy, R^2) has
  not, and the best weights are restored, BatchNorm's running statistics with them.  ``max_iter`` epochs
  without stopping warn with a ConvergenceWarning.
- ``batch_norm=True``: a last batch of one sample (whose batch statistics are undefined) is avoided by lowering
  the batch size by the fewest samples that do (201 samples, batch 200: 199); the weight decay keeps the
  nominal batch size.
- ``warm_start=True``: ``fit`` continues from the current weights; a ``y`` with other classes than the previous
  fit is a ValueError (as scikit-learn's), and leaves the estimator as it was.

``partial_fit`` runs one epoch over the given data (``classes=`` on the first call for the classifier) and
keeps the optimizer state between calls.  scikit-learn is an optional dependency: this module needs it,
``fastnn`` itself never imports it.
"""
from __future__ import annotations

import numbers
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn._typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from typing_extensions import Self

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:     # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fastnn.sklearn needs scikit-learn (>= 1.3): pip install 'fastnn[sklearn]' or "
                      "pip install scikit-learn") from exc

try:                                         # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:                          # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

import fastnn as fnn

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}
_SOLVERS = ("adam", "sgd", "adagrad", "rmsprop")


class _BaseMLP(BaseEstimator):
    """The shared machinery; see the module docstring."""

    def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: int | str = "auto", learning_rate_init: float = 0.001,
                 max_iter: int = 200, shuffle: bool = True, random_state: int | np.random.RandomState | None = None,
                 tol: float = 1e-4, verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 dropout: float = 0.0, batch_norm: bool = False, dtype: str = "float32") -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.dtype = dtype

    # ------------------------------------------------------------------ checks and construction
    def _check_params(self):
        hs = self.hidden_layer_sizes
        hs = [hs] if isinstance(hs, numbers.Integral) else list(hs)
        if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hs):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {list(_SOLVERS)}, got {self.solver!r}")
        for name, low in (("alpha", 0.0), ("learning_rate_init", None), ("tol", 0.0), ("dropout", 0.0),
                          ("momentum", 0.0), ("epsilon", None)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or (low is None and v <= 0) or \
                    (low is not None and v < low):
                raise ValueError(f"{name} must be a {'non-negative' if low is not None else 'positive'} number, "
                                 f"got {v!r}")
        if not self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("max_iter", "n_iter_no_change"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if not (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1):
            raise ValueError(f"beta_1 and beta_2 must be in [0, 1), got {self.beta_1!r}, {self.beta_2!r}")
        if self.dtype not in ("float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        bs = self.batch_size
        if not (bs == "auto" or (isinstance(bs, numbers.Integral) and not isinstance(bs, bool))):
            raise ValueError(f"batch_size must be 'auto' or an int, got {bs!r}")
        return hs

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size < 1 or self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          stacklevel=4)
        return int(np.clip(self.batch_size, 1, n))

    def _fit_batch_size(self, bs, n):
        """The batch size fit runs with: `bs`, except that with batch_norm a last batch of one sample (whose
        batch statistics are undefined) is avoided by the smallest reduction of the batch size that does."""
        if not self.batch_norm:
            return bs
        if n < 2:
            raise ValueError(f"batch_norm=True needs at least 2 training samples, got {n}")
        b = bs
        while b >= 2 and n % b == 1:
            b -= 1
        return b if b >= 2 else n         # n odd and bs 2: one batch of all n

    def _seed(self):
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            return int(rs) % (2 ** 32)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _make_optimizer(self, batch_size):
        decay = self.alpha / batch_size          # scikit-learn's penalty 0.5 alpha ||W||^2 / batch_size
        lr = self.learning_rate_init
        if self.solver == "adam":
            return fnn.optim.Adam(lr=lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon, weight_decay=decay)
        if self.solver == "sgd":
            return fnn.optim.SGD(lr=lr, momentum=self.momentum,
                                 nesterov=bool(self.nesterovs_momentum and self.momentum > 0), weight_decay=decay)
        if self.solver == "adagrad":
            return fnn.optim.Adagrad(lr=lr, weight_decay=decay)
        return fnn.optim.RMSprop(lr=lr, weight_decay=decay)

    def _build(self, hidden, n_in, n_out, loss, batch_size):
        act = _ACTIVATIONS[self.activation]
        layers = []
        for h in hidden:
            if self.batch_norm:
                layers += [fnn.layers.Dense(h), fnn.layers.BatchNorm(), _activation_layer(act)]
            else:
                layers.append(fnn.layers.Dense(h, activation=act))
            if self.dropout > 0:
                layers.append(fnn.layers.Dropout(self.dropout))
        layers.append(fnn.layers.Dense(n_out))
        model = fnn.Sequential(layers, input_dim=n_in, seed=self._seed(), dtype=np.dtype(self.dtype).name)
        model.compile(loss, self._make_optimizer(batch_size))
        return model

    # ------------------------------------------------------------------ training
    def _fit(self, X, Y, incremental):
        """Train on checked arrays: X (n, d) in the model dtype, Y in the loss's form."""
        hidden = self._check_params()
        n = X.shape[0]
        bs = self._batch_size(n)
        fresh = not hasattr(self, "model_") or not (incremental or self.warm_start)
        if fresh:
            self.model_ = self._build(hidden, X.shape[1], self._n_outputs, self._loss_name, bs)
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = np.inf
            self._no_improvement_count = 0
            self.validation_scores_ = None
            self.best_validation_score_ = None
        early = self.early_stopping and not incremental
        Xv = yv = None
        if early:
            stratify = self._stratify(Y)
            split_rs = self.random_state if isinstance(self.random_state, numbers.Integral) else \
                check_random_state(self.random_state)
            X, Xv, Y, yv = train_test_split(X, Y, test_size=self.validation_fraction, random_state=split_rs,
                                            stratify=stratify)
            n = X.shape[0]
            if self.validation_scores_ is None:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            best_weights = self.model_.get_weights()      # parameters and layer buffers (BatchNorm statistics)
        model = self.model_
        model.optimizer.weight_decay = self.alpha / min(bs, n)
        fit_bs = self._fit_batch_size(min(bs, n), n)
        epochs = 1 if incremental else self.max_iter
        stopped = False
        for _ in range(epochs):
            hist = model.fit(X, Y, epochs=1, batch_size=fit_bs, shuffle=bool(self.shuffle))
            loss = float(hist.history["loss"][0]) * self._loss_scale
            if not np.isfinite(loss):
                raise ValueError("training diverged (non-finite loss); lower learning_rate_init")
            self.n_iter_ += 1
            self.t_ += n
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            if early:
                score = self._score_arrays(Xv, yv)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if score < self.best_validation_score_ + self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_weights = model.get_weights()
            else:
                if loss > self.best_loss_ - self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                self.best_loss_ = min(self.best_loss_, loss)
            if incremental:
                break
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early else "Training loss"
                if self.verbose:
                    print(f"{what} did not improve more than tol={self.tol} for {self.n_iter_no_change} "
                          "consecutive epochs. Stopping.")
                stopped = True
                break
        if early:
            model.set_weights(best_weights)
        if not incremental and not stopped:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def _logits(self, X):
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.model_.predict(np.asarray(X, dtype=self.model_.dtype)).astype(np.float64)

    def _check_X(self, X, y, reset, **kw):
        X, y = _validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32), multi_output=True, **kw)
        return np.ascontiguousarray(X, dtype=np.dtype(self.dtype)), y

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        if model is not None:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.npz")
                model.save(path)                    # fastnn's checked format: weights, optimizer, generators
                with open(path, "rb") as f:
                    state["_model_bytes"] = f.read()
        return state

    def __setstate__(self, state):
        state = dict(state)
        blob = state.pop("_model_bytes", None)
        self.__dict__.update(state)
        if blob is not None:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.npz")
                with open(path, "wb") as f:
                    f.write(blob)
                self.model_ = fnn.load(path)


def _activation_layer(name):
    return {"relu": fnn.layers.ReLU, "tanh": fnn.layers.Tanh, "sigmoid": fnn.layers.Sigmoid,
            "identity": fnn.layers.Identity}[name]()


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on fastnn (see the module docstring for the parameters).

    Attributes: ``classes_``, ``loss_curve_``, ``n_iter_``, ``n_features_in_`` (and ``feature_names_in_``),
    ``best_loss_``, ``validation_scores_`` / ``best_validation_score_`` (early stopping), ``t_`` (samples
    seen), ``model_`` (the fastnn model; its output is the logits).

    Example::

        from fastnn.sklearn import MLPClassifier
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)
        clf.predict_proba(X[:3])
    """
    _loss_scale = 1.0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):                 # the same for scikit-learn < 1.6
        return {"multioutput": True, "multilabel": True}

    def _prepare_targets(self, y, classes=None, warm=False):
        """The targets in the loss's form.  warm: a warm-start fit, which must see the classes of the previous fit
        (checked before anything changes, as scikit-learn does)."""
        if getattr(y, "ndim", 1) == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if classes is not None or not hasattr(self, "_label_binarizer") or not self._partial:
            lb = LabelBinarizer()
            lb.fit(y if classes is None else classes)
            if classes is None and lb.classes_.size < 2 and lb.y_type_ != "multilabel-indicator":
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, but the "
                                 f"data contains only one class: {lb.classes_[0]!r}")
            old = getattr(self, "_label_binarizer", None)
            if warm and old is not None and (lb.y_type_ != old.y_type_ or
                                             not np.array_equal(lb.classes_, old.classes_)):
                raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous "
                                 f"call to fit. Previously got {old.classes_}, `y` has {lb.classes_}")
            self._label_binarizer = lb
            self.classes_ = lb.classes_
        lb = self._label_binarizer
        if lb.y_type_ == "multilabel-indicator":
            if type_of_target(y) != "multilabel-indicator" or y.shape[1] != self.classes_.size:
                raise ValueError(f"y must be a multi-label indicator matrix with {self.classes_.size} columns")
            self._n_outputs, self._loss_name = self.classes_.size, "binary_cross_entropy"
            return np.asarray(y, dtype=np.dtype(self.dtype))
        if not np.isin(unique_labels(y), self.classes_).all():
            raise ValueError(f"y has labels {np.setdiff1d(unique_labels(y), self.classes_)} that are not in "
                             f"classes {self.classes_}")
        idx = np.searchsorted(self.classes_, y)
        if self.classes_.size <= 2:
            self._n_outputs, self._loss_name = 1, "binary_cross_entropy"
            return (idx == 1).astype(np.dtype(self.dtype)).reshape(-1, 1)
        self._n_outputs, self._loss_name = self.classes_.size, "cross_entropy"
        return idx.astype(np.intp)

    def _stratify(self, Y):
        if Y.ndim == 1:
            return Y if np.bincount(Y).min() >= 2 else None
        if Y.shape[1] == 1:
            return Y[:, 0] if min(Y.sum(), len(Y) - Y.sum()) >= 2 else None
        return None

    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Train from scratch (or from the current weights with warm_start=True) for up to max_iter epochs."""
        warm = bool(self.warm_start) and hasattr(self, "model_")
        X, y = self._check_X(X, y, reset=not warm)
        self._partial = False
        Y = self._prepare_targets(y, warm=warm)
        return self._fit(X, Y, incremental=False)

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None) -> Self:
        """One epoch over (X, y).  ``classes`` (all the labels) is required on the first call."""
        first = not hasattr(self, "model_")
        if first and classes is None:
            yy = np.asarray(y) if not hasattr(y, "shape") else y
            if type_of_target(yy) != "multilabel-indicator":
                raise ValueError("classes must be passed on the first call to partial_fit.")
        X, y = self._check_X(X, y, reset=first)
        if first:
            self._partial = False
            Y = self._prepare_targets(y, None if classes is None else unique_labels(classes))
            self._partial = True
        else:
            if classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
                raise ValueError(f"`classes={classes!r}` is not the same as on the first call to partial_fit "
                                 f"(classes_={self.classes_!r})")
            self._partial = True
            Y = self._prepare_targets(y)
        return self._fit(X, Y, incremental=True)

    def _score_arrays(self, X, Y):
        logits = self.model_.predict(X).astype(np.float64)
        if Y.ndim == 1:
            return accuracy_score(Y, logits.argmax(axis=1))
        return accuracy_score(Y > 0.5, logits > 0)

    def predict_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Class probabilities, (n, n_classes) float64 ((n, k) for multi-label: one probability per label)."""
        z = self._logits(X)
        if self._loss_name == "binary_cross_entropy":
            p = _sigmoid(z)
            return np.hstack([1 - p, p]) if self._n_outputs == 1 else p
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict_log_proba(self, X: ArrayLike) -> NDArray[Any]:
        """log of predict_proba."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Predicted classes (n,) (an (n, k) indicator matrix for multi-label)."""
        p = self.predict_proba(X)
        if self._n_outputs == 1:
            p = p[:, 1:]
        return self._label_binarizer.inverse_transform(p)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on fastnn (squared error; see the module docstring).

    Attributes: ``loss_curve_`` (half the mean squared error per epoch, scikit-learn's squared loss),
    ``n_iter_``, ``n_features_in_``, ``best_loss_``, ``validation_scores_``, ``t_``, ``model_``.
    """
    _loss_scale = 0.5
    _loss_name = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):                 # the same for scikit-learn < 1.6
        return {"multioutput": True}

    def _prepare(self, X, y, reset):
        X, y = self._check_X(X, y, reset=reset, y_numeric=True)
        y = np.asarray(y, dtype=np.dtype(self.dtype))
        Y = y.reshape(-1, 1) if y.ndim == 1 else np.ascontiguousarray(y)
        if not reset and hasattr(self, "model_") and Y.shape[1] != self._n_outputs:
            raise ValueError(f"y has {Y.shape[1]} targets, the model was fitted with {self._n_outputs}")
        self._n_outputs = Y.shape[1]
        return X, Y

    def _stratify(self, Y):
        return None

    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Train from scratch (or from the current weights with warm_start=True) for up to max_iter epochs."""
        X, Y = self._prepare(X, y, reset=not (self.warm_start and hasattr(self, "model_")))
        return self._fit(X, Y, incremental=False)

    def partial_fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """One epoch over (X, y), continuing from the current weights and optimizer state."""
        X, Y = self._prepare(X, y, reset=not hasattr(self, "model_"))
        return self._fit(X, Y, incremental=True)

    def _score_arrays(self, X, Y):
        return r2_score(Y, self.model_.predict(X).astype(np.float64))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Predictions (n,) for one target, (n, n_targets) for several; float64."""
        z = self._logits(X)
        return z.ravel() if z.shape[1] == 1 else z


def _sigmoid(z):
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out
