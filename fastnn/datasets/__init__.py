"""Datasets that ship inside the package (no download).

``load_digits()``: the UCI ML hand-written digits, test set (1,797 images of 8x8 pixels, 10 classes), by
E. Alpaydin and C. Kaynak, from the UCI Machine Learning Repository ("Optical Recognition of Handwritten
Digits", https://doi.org/10.24432/C50P49), licensed CC BY 4.0.  Stored as data/digits.npz (pixels 0..16).

``load_text("shakespeare")``: 199,994 characters (62 distinct, ASCII) of Shakespeare's plays, for character-level
language models: the first 199,994 bytes (cut at a blank line between two speeches: Coriolanus and the start of
Richard III) of ``data/tinyshakespeare/input.txt`` in Andrej Karpathy's char-rnn repository
(https://github.com/karpathy/char-rnn, commit 6f9487a; the whole file is 1,115,394 bytes).  Shakespeare's plays
are in the public domain; the excerpt is unchanged.  Stored as data/shakespeare.txt.

``adding_problem(n, T, seed)``: the adding problem of Hochreiter and Schmidhuber (1997), generated.

``train_test_split(*arrays, test_size=None, train_size=None, random_state=None, shuffle=True, stratify=None)``:
scikit-learn's, returning ``X_train, X_test, y_train, y_test``; ``stratified_split(X, y, test_fraction, seed)``:
fastnn's stratified split of the demo and the tests, returning ``X_train, y_train, X_test, y_test``.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from fastnn._typing import ArrayLike, DTypeLike, NDArray, SeedLike

_DATA = os.path.join(os.path.dirname(__file__), "data")

DIGITS_CITATION = ("E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
                   "Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY 4.0)")


def load_digits(dtype: DTypeLike = "float32",
                flatten: bool = True) -> tuple[NDArray[np.floating[Any]], NDArray[np.int64]]:
    """The UCI hand-written digits: X of shape (1797, 64) with pixels scaled to [0, 1], y int64 labels 0..9.

    Args:
        dtype: the dtype of X ("float32" or "float64").
        flatten: False gives images of shape (1797, 8, 8).
    """
    with np.load(os.path.join(_DATA, "digits.npz"), allow_pickle=False) as f:
        images = f["images"]
        target = f["target"]
    X = images.astype(dtype) / 16.0
    if flatten:
        X = X.reshape(len(X), -1)
    return np.ascontiguousarray(X, dtype=dtype), target.astype(np.int64)


def stratified_split(X: np.ndarray, y: np.ndarray, test_fraction: float = 0.2,
                     seed: int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle with `seed` and split into ``(X_train, y_train, X_test, y_test)`` (note the order), stratified by
    label: each class gives ``round(count * test_fraction)`` of its samples to the test part.  The split the demo,
    the tests and the benchmarks use (fastnn's ``train_test_split`` before it took scikit-learn's signature)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    test: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        test.extend(members[:int(round(len(members) * test_fraction))])
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    train_idx, test_idx = np.flatnonzero(~mask), np.flatnonzero(mask)
    rng.shuffle(train_idx)
    rng.shuffle(test_idx)
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def _split_sizes(n, test_size, train_size):
    """(n_train, n_test) as scikit-learn's ``_validate_shuffle_split`` computes them (default test_size 0.25)."""
    if test_size is None and train_size is None:
        test_size = 0.25
    sizes = {}
    for name, value in (("test_size", test_size), ("train_size", train_size)):
        kind = None if value is None else np.asarray(value).dtype.kind
        if kind is not None and kind not in "if":
            raise ValueError(f"train_test_split: {name} must be a float in (0, 1), an int or None, got {value!r}")
        if (kind == "i" and not 0 < value < n) or (kind == "f" and not 0 < value < 1):
            raise ValueError(f"train_test_split: {name}={value} should be either positive and smaller than the "
                             f"number of samples {n} or a float in the (0, 1) range")
        sizes[name] = (kind, value)
    (test_kind, test_size), (train_kind, train_size) = sizes["test_size"], sizes["train_size"]
    if test_kind == "f" and train_kind == "f" and train_size + test_size > 1:
        raise ValueError(f"train_test_split: test_size + train_size = {train_size + test_size} should be in the "
                         "(0, 1) range")
    n_test = math.ceil(test_size * n) if test_kind == "f" else test_size
    n_train = math.floor(train_size * n) if train_kind == "f" else train_size
    if train_size is None:
        n_train = n - n_test
    elif test_size is None:
        n_test = n - n_train
    if n_train + n_test > n:
        raise ValueError(f"train_test_split: train_size + test_size = {n_train + n_test} samples, more than the "
                         f"{n} given")
    if n_train == 0:
        raise ValueError(f"train_test_split: with {n} samples, test_size={test_size} and train_size={train_size}, "
                         "the train set would be empty")
    return int(n_train), int(n_test)


def _approximate_mode(class_counts, n_draws, rng):
    """scikit-learn's ``_approximate_mode``: per class, how many of `n_draws` to take (ties broken by `rng`)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            inds, = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def _take(a, idx):
    if hasattr(a, "iloc"):                  # a pandas object: by position
        return a.iloc[idx]
    if isinstance(a, (list, tuple)):        # a list stays a list (as scikit-learn)
        return [a[i] for i in idx]
    return a[idx]


def train_test_split(*arrays: Any, test_size: float | int | None = None, train_size: float | int | None = None,
                     random_state: int | np.random.RandomState | None = None, shuffle: bool = True,
                     stratify: Any = None, **unknown: Any) -> list[Any]:
    """Split arrays into random train and test subsets, scikit-learn's ``train_test_split`` (same signature,
    same sizes, same order, and the same split for the same ``random_state``).

    Args:
        *arrays: arrays (or lists, pandas objects) with the same first dimension.
        test_size: a float in (0, 1), the test fraction (rounded up), or an int, the number of test samples;
            None: the complement of train_size, or 0.25 when both are None.
        train_size: the same for the train part (a fraction rounded down); None: the complement of test_size.
        random_state: an int, a ``numpy.random.RandomState`` or None (numpy's global RandomState), as in
            scikit-learn.
        shuffle: False takes the first samples for training and the next ones for test (no stratify then).
        stratify: labels (n,) (or rows (n, k)) to split in proportion to: each class keeps its share in both parts.

    Returns:
        ``X_train, X_test, y_train, y_test, ...``: for each array its train and test parts, interleaved.

    fastnn's earlier ``train_test_split(X, y, test_fraction, seed)``, which returned ``X_train, y_train, X_test,
    y_test``, is ``stratified_split``.
    """
    if unknown:
        old = {"test_fraction", "seed"} & set(unknown)
        hint = (" (fastnn's former train_test_split(X, y, test_fraction, seed), returning X_train, y_train, X_test, "
                "y_test, is now fastnn.datasets.stratified_split)") if old else ""
        raise TypeError(f"train_test_split: unexpected keyword argument(s) {sorted(unknown)}; it takes scikit-learn's "
                        f"test_size, train_size, random_state, shuffle, stratify{hint}")
    if not arrays:
        raise ValueError("train_test_split: at least one array is required")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"train_test_split: the arrays have different numbers of samples: {lengths}")
    n = lengths[0]
    n_train, n_test = _split_sizes(n, test_size, train_size)
    if not shuffle:
        if stratify is not None:
            raise ValueError("train_test_split: stratify needs shuffle=True (as in scikit-learn)")
        train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    else:
        if random_state is None:
            rng = np.random.mtrand._rand         # numpy's global RandomState, as scikit-learn's check_random_state
        elif isinstance(random_state, np.random.RandomState):
            rng = random_state
        elif isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
            rng = np.random.RandomState(random_state)
        else:
            raise ValueError(f"train_test_split: random_state must be an int, a numpy.random.RandomState or None, "
                             f"got {random_state!r}")
        if stratify is None:
            perm = rng.permutation(n)
            test, train = perm[:n_test], perm[n_test:n_test + n_train]
        else:
            train, test = _stratified_indices(np.asarray(stratify), n, n_train, n_test, rng)
    out = []
    for a in arrays:
        out += [_take(a, train), _take(a, test)]
    return out


def _stratified_indices(y, n, n_train, n_test, rng):
    """The (train, test) indices of scikit-learn's StratifiedShuffleSplit (its first split)."""
    if len(y) != n:
        raise ValueError(f"train_test_split: stratify has {len(y)} labels for {n} samples")
    if y.ndim == 2:                           # multi-label rows: one class per distinct row
        y = np.array([" ".join(row.astype("str")) for row in y])
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"train_test_split: stratify: the classes {classes[counts < 2].tolist()} have only 1 "
                         "member; each class needs at least 2")
    for what, size in (("train", n_train), ("test", n_test)):
        if size < len(classes):
            raise ValueError(f"train_test_split: the {what} part ({size} samples) must hold at least one sample of "
                             f"each of the {len(classes)} classes")
    members = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        perm = members[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(perm[:n_i[i]])
        test.extend(perm[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


SHAKESPEARE_SOURCE = ("W. Shakespeare (public domain), the first 199,994 bytes of data/tinyshakespeare/input.txt of "
                      "https://github.com/karpathy/char-rnn (commit 6f9487a)")

_TEXTS = {"shakespeare": "shakespeare.txt"}


def load_text(name: str = "shakespeare") -> tuple[str, str]:
    """A public-domain text that ships with the package, and its character vocabulary.

    Args:
        name: "shakespeare" (the only one: 199,994 characters of Shakespeare's plays, see the module docstring).

    Returns:
        (text, vocab): ``text`` a str; ``vocab`` a str of its distinct characters in sorted order, so that
        ``vocab.index(c)`` is the id of character c (``encode_text`` / ``decode_text`` do it for whole strings).
    """
    if name not in _TEXTS:
        raise ValueError(f"load_text: unknown text {name!r}; known: {', '.join(sorted(_TEXTS))}")
    with open(os.path.join(_DATA, _TEXTS[name]), encoding="ascii", newline="") as f:
        text = f.read()
    return text, "".join(sorted(set(text)))


def encode_text(text: str, vocab: str) -> NDArray[np.int64]:
    """The ids (int64 array, ``len(text)``) of the characters of ``text`` in ``vocab``; ValueError naming the
    first character not in it."""
    table = {c: i for i, c in enumerate(vocab)}
    try:
        return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as e:
        raise ValueError(f"encode_text: the character {e.args[0]!r} is not in the vocabulary") from None


def decode_text(ids: ArrayLike, vocab: str) -> str:
    """The string of the character ids ``ids`` (any integer array-like) in ``vocab``."""
    return "".join(vocab[int(i)] for i in np.asarray(ids).ravel())


def text_windows(ids: ArrayLike, seq_len: int, step: int | None = None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Next-character training pairs from a 1-D array of ids: X (n, seq_len) the windows
    ``ids[s:s + seq_len]`` for s = 0, step, 2 * step, ..., and Y (n, seq_len) the same windows shifted by one
    (``ids[s + 1:s + seq_len + 1]``), both int64.  ``step`` defaults to ``seq_len`` (disjoint windows)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"text_windows: ids must be 1-D, got shape {ids.shape}")
    seq_len = int(seq_len)
    step = seq_len if step is None else int(step)
    if seq_len < 1 or step < 1:
        raise ValueError(f"text_windows: seq_len and step must be >= 1, got {seq_len} and {step}")
    n = max(0, (len(ids) - 1 - seq_len) // step + 1)
    starts = np.arange(n, dtype=np.int64)[:, None] * step + np.arange(seq_len, dtype=np.int64)
    return ids[starts].astype(np.int64), ids[starts + 1].astype(np.int64)


def adding_problem(n: int, T: int, seed: SeedLike = 0,
                   dtype: DTypeLike = "float32") -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]:
    """The adding problem (Hochreiter and Schmidhuber, 1997, as in Le, Jaitly and Hinton, 2015): n sequences of
    T steps of two features (a value drawn uniformly from [0, 1], a marker 0 or 1).  Exactly two steps are
    marked, one drawn uniformly from the first half (steps 0 .. T//2 - 1) and one from the second half
    (T//2 .. T - 1); the target is the sum of the two marked values.  A model must carry the first value
    across at least about T/2 steps.  Predicting the mean (1.0) gives an MSE of 1/6 (about 0.167).

    Args:
        n: the number of sequences (>= 0).
        T: the sequence length (>= 2).
        seed: the seed of numpy's default_rng.
        dtype: the dtype of X and y.

    Returns:
        X of shape (n, T, 2) and y of shape (n, 1).
    """
    n, T = int(n), int(T)
    if n < 0 or T < 2:
        raise ValueError(f"adding_problem: need n >= 0 and T >= 2, got n={n}, T={T}")
    rng = np.random.default_rng(seed)
    X = np.zeros((n, T, 2), dtype=dtype)
    X[:, :, 0] = rng.uniform(0.0, 1.0, (n, T))
    half = T // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, T, n)
    rows = np.arange(n)
    X[rows, first, 1] = 1.0
    X[rows, second, 1] = 1.0
    y = (X[rows, first, 0] + X[rows, second, 0]).reshape(n, 1)
    return X, np.ascontiguousarray(y, dtype=dtype)
