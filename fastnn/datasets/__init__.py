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
"""
import os

import numpy as np

_DATA = os.path.join(os.path.dirname(__file__), "data")

DIGITS_CITATION = ("E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
                   "Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY 4.0)")


def load_digits(dtype="float32", flatten=True):
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


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """Shuffle with `seed` and split into (X_train, y_train, X_test, y_test), stratified by label."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    test = []
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


SHAKESPEARE_SOURCE = ("W. Shakespeare (public domain), the first 199,994 bytes of data/tinyshakespeare/input.txt of "
                      "https://github.com/karpathy/char-rnn (commit 6f9487a)")

_TEXTS = {"shakespeare": "shakespeare.txt"}


def load_text(name="shakespeare"):
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


def encode_text(text, vocab):
    """The ids (int64 array, ``len(text)``) of the characters of ``text`` in ``vocab``; ValueError naming the
    first character not in it."""
    table = {c: i for i, c in enumerate(vocab)}
    try:
        return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as e:
        raise ValueError(f"encode_text: the character {e.args[0]!r} is not in the vocabulary") from None


def decode_text(ids, vocab):
    """The string of the character ids ``ids`` (any integer array-like) in ``vocab``."""
    return "".join(vocab[int(i)] for i in np.asarray(ids).ravel())


def text_windows(ids, seq_len, step=None):
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


def adding_problem(n, T, seed=0, dtype="float32"):
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
