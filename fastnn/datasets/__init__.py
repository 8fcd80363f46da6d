"""Datasets that ship inside the package (no download).

``load_digits()``: the UCI ML hand-written digits, test set (1,797 images of 8x8 pixels, 10 classes), by
E. Alpaydin and C. Kaynak, from the UCI Machine Learning Repository ("Optical Recognition of Handwritten
Digits", https://doi.org/10.24432/C50P49), licensed CC BY 4.0.  Stored as data/digits.npz (pixels 0..16).
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
