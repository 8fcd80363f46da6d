"""The sequence datasets: the shipped text (load_text and its helpers) and the generated adding problem."""
import os

import numpy as np
import pytest

from fastnn import datasets


def test_shakespeare_ships_and_is_small_ascii():
    path = os.path.join(os.path.dirname(datasets.__file__), "data", "shakespeare.txt")
    assert os.path.getsize(path) <= 200 * 1024
    text, vocab = datasets.load_text("shakespeare")
    assert len(text) == os.path.getsize(path) == 199994
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert vocab == "".join(sorted(set(text))) and len(vocab) == 62
    assert all(ord(c) < 128 for c in vocab)


def test_package_data_declares_the_text():
    root = os.path.dirname(os.path.dirname(datasets.__file__))
    repo = os.path.dirname(root)
    pyproject = os.path.join(repo, "pyproject.toml")
    if not os.path.exists(pyproject):
        pytest.skip("not run from a source tree")
    with open(pyproject) as f:
        assert '"data/*.txt"' in f.read()
    with open(os.path.join(repo, "MANIFEST.in")) as f:
        assert "recursive-include fastnn/datasets/data *.npz *.txt" in f.read()


def test_load_text_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown text 'hamlet'.*shakespeare"):
        datasets.load_text("hamlet")


def test_encode_decode_round_trip_and_windows():
    text, vocab = datasets.load_text()
    ids = datasets.encode_text(text[:1000], vocab)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < len(vocab)
    assert datasets.decode_text(ids, vocab) == text[:1000]
    X, Y = datasets.text_windows(ids, 50)
    assert X.shape == Y.shape == ((1000 - 1 - 50) // 50 + 1, 50)
    np.testing.assert_array_equal(X[:, 1:], Y[:, :-1])
    np.testing.assert_array_equal(X[3], ids[150:200])
    np.testing.assert_array_equal(Y[-1], ids[len(X) * 50 - 49:len(X) * 50 + 1])
    X2, _ = datasets.text_windows(ids, 10, step=3)
    np.testing.assert_array_equal(X2[2], ids[6:16])
    assert datasets.text_windows(ids[:5], 10)[0].shape == (0, 10)
    with pytest.raises(ValueError, match="'~' is not in the vocabulary"):
        datasets.encode_text("ab~", vocab)
    with pytest.raises(ValueError, match="seq_len and step"):
        datasets.text_windows(ids, 0)


@pytest.mark.parametrize("T", [2, 7, 100])
def test_adding_problem_has_two_markers_one_per_half_and_the_sum_as_target(T):
    X, y = datasets.adding_problem(500, T, seed=3)
    assert X.shape == (500, T, 2) and y.shape == (500, 1) and X.dtype == y.dtype == np.float32
    assert ((X[:, :, 0] >= 0) & (X[:, :, 0] <= 1)).all()
    marks = X[:, :, 1]
    assert set(np.unique(marks)) <= {0.0, 1.0}
    np.testing.assert_array_equal(marks.sum(axis=1), 2)
    np.testing.assert_array_equal(marks[:, :T // 2].sum(axis=1), 1)
    np.testing.assert_allclose(y[:, 0], (X[:, :, 0] * marks).sum(axis=1), rtol=1e-6)
    X2, y2 = datasets.adding_problem(500, T, seed=3)
    np.testing.assert_array_equal(X, X2)
    assert not np.array_equal(X, datasets.adding_problem(500, T, seed=4)[0])


def test_adding_problem_baseline_mse_is_about_a_sixth():
    _, y = datasets.adding_problem(20000, 50, seed=0, dtype="float64")
    assert y.dtype == np.float64
    assert abs(float(np.mean((y - 1.0) ** 2)) - 1 / 6) < 0.01


def test_adding_problem_refuses_bad_sizes():
    with pytest.raises(ValueError, match="T >= 2"):
        datasets.adding_problem(10, 1)
    assert datasets.adding_problem(0, 5)[0].shape == (0, 5, 2)
