"""``python -m fastnn demo --model cnn``: the CNN on the digits as 8x8x1 images reaches 0.985 test accuracy on the
MLP demo's split; its augmentation moves each image by one pixel."""
import re

import numpy as np
import pytest

import fastnn as fnn
from fastnn import __main__ as cli


@pytest.fixture
def restore_threads():
    prev = fnn.get_num_threads()
    yield
    fnn.set_num_threads(prev)


def test_shifted_moves_each_image_one_pixel_each_way():
    X = np.arange(2 * 16, dtype=np.float64).reshape(2, 16) + 1
    y = np.array([3, 7])
    S, t = cli.shifted(X, y, side=4)
    assert S.shape == (10, 16) and np.array_equal(t, [3, 7] * 5)
    img, moved = X.reshape(2, 4, 4), S.reshape(10, 4, 4)
    np.testing.assert_array_equal(moved[:2], img)
    np.testing.assert_array_equal(moved[2:4, 1:, :], img[:, :-1, :])       # down: row 0 comes in as zeros
    np.testing.assert_array_equal(moved[2:4, 0, :], 0)
    np.testing.assert_array_equal(moved[4:6, :-1, :], img[:, 1:, :])       # up
    np.testing.assert_array_equal(moved[6:8, :, 1:], img[:, :, :-1])       # right
    np.testing.assert_array_equal(moved[8:10, :, :-1], img[:, :, 1:])      # left
    np.testing.assert_array_equal(moved[8:10, :, -1], 0)


def test_cnn_demo_reaches_its_accuracy(capsys, restore_threads):
    """The command itself, with its defaults (one thread: the machine running the suite is shared)."""
    rc = cli.main(["demo", "--model", "cnn", "--threads", "1"])
    out = capsys.readouterr().out
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert "8x8x1" in out and "4 epochs" in out
    assert acc >= 0.985 and rc == 0, out


def test_demo_rejects_an_unknown_model():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--model", "resnet"])
