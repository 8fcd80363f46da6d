"""fit: validation, metrics, initial_epoch, progress output, resume from a checkpoint, determinism."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn

# the folder that holds the fastnn under test (the clone, or site-packages when the suite runs against an install)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__)))


def _clf(seed=0, lr=0.05, opt=None):
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(5)], input_dim=8, seed=seed)
    m.compile("cross_entropy", opt or fnn.optim.SGD(lr=lr))
    return m


def _clf_data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 5, n)


def test_validation_split_holds_out_the_last_samples():
    X, y = _clf_data()
    m = _clf(lr=0.0)
    h = m.fit(X, y, epochs=2, batch_size=16, validation_split=0.2)
    ev = m.evaluate(X[80:], y[80:])
    assert h.history["val_loss"] == pytest.approx([ev["loss"]] * 2, rel=1e-6)
    assert h.history["val_accuracy"] == pytest.approx([ev["accuracy"]] * 2)
    # validation_data wins over validation_split (as Keras)
    h = m.fit(X, y, epochs=1, validation_split=0.2, validation_data=(X[:10], y[:10]))
    assert h.history["val_loss"][0] == pytest.approx(m.evaluate(X[:10], y[:10])["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(X, y, validation_split=1.0)


def test_classification_metrics_against_numpy():
    X, y = _clf_data()
    m = _clf(lr=0.0)            # no learning: training metrics equal the metrics of the fixed model
    h = m.fit(X, y, epochs=1, batch_size=32, metrics=["accuracy", "top_k_accuracy",
                                                      fnn.metrics.TopKAccuracy(2)],
              validation_data=(X, y))
    out = m.predict(X)
    rank = (out > out[np.arange(len(y)), y][:, None]).sum(axis=1)
    assert h.history["accuracy"][0] == pytest.approx(np.mean(out.argmax(1) == y))
    assert h.history["top_2_accuracy"][0] == pytest.approx(np.mean(rank < 2))
    assert h.history["val_top_2_accuracy"][0] == pytest.approx(np.mean(rank < 2))
    assert h.history["top_k_accuracy"][0] == 1.0          # k=5 of 5 classes
    with pytest.raises(ValueError, match="regression"):
        m.fit(X, y, metrics=["mae"])


def test_regression_metrics_against_numpy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    Y = X @ rng.normal(size=(4, 2)) + rng.normal(size=(60, 2)) * 0.1 + [3.0, -1.0]
    m = fnn.Sequential([fnn.layers.Dense(2)], input_dim=4, seed=0, dtype="float64")
    m.compile("mse", fnn.optim.SGD(lr=0.0))
    h = m.fit(X, Y, epochs=1, batch_size=7, metrics=["mae", "mse", "r2"], validation_data=(X, Y))
    P = m.predict(X)
    r2 = np.mean(1 - ((P - Y) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0))
    for key in ("", "val_"):
        assert h.history[key + "mae"][0] == pytest.approx(np.abs(P - Y).mean(), rel=1e-10)
        assert h.history[key + "mse"][0] == pytest.approx(((P - Y) ** 2).mean(), rel=1e-10)
        assert h.history[key + "r2"][0] == pytest.approx(r2, rel=1e-10)
    assert h.history["loss"][0] == pytest.approx(((P - Y) ** 2).mean(), rel=1e-10)
    with pytest.raises(ValueError, match="classification"):
        m.fit(X, Y, metrics=["accuracy"])


def test_initial_epoch_and_epochs_trained():
    X, y = _clf_data()
    m = _clf()
    h = m.fit(X, y, epochs=5, initial_epoch=3)
    assert h.epoch == [3, 4] and m.epochs_trained == 5 and m.history is h
    assert m.fit(X, y, epochs=2, initial_epoch=3).epoch == []


def _train(m, X, y, **kw):
    return m.fit(X, y, batch_size=16, **kw)


def test_same_seed_is_bitwise_identical_with_one_thread():
    X, y = _clf_data()
    n0 = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        a, b = _clf(opt=fnn.optim.Adam(lr=1e-2)), _clf(opt=fnn.optim.Adam(lr=1e-2))
        _train(a, X, y, epochs=3)
        _train(b, X, y, epochs=3)
        assert np.array_equal(a.parameters, b.parameters)
        c = _clf(seed=1, opt=fnn.optim.Adam(lr=1e-2))
        _train(c, X, y, epochs=3)
        assert not np.array_equal(a.parameters, c.parameters)
    finally:
        fnn.set_num_threads(n0)


@pytest.mark.parametrize("opt", [lambda: fnn.optim.Adam(lr=1e-2), lambda: fnn.optim.SGD(lr=0.05, momentum=0.9)])
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, opt):
    X, y = _clf_data(200)
    n0 = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        full = _clf(opt=opt())
        ck = fnn.callbacks.ModelCheckpoint(tmp_path / "e{epoch}.fnn")
        _train(full, X, y, epochs=6, validation_split=0.1, callbacks=[ck])
        # "crash" after epoch 3: resume from its checkpoint
        resumed = fnn.load(tmp_path / "e3.fnn")
        assert resumed.epochs_trained == 3
        h = _train(resumed, X, y, epochs=6, initial_epoch=resumed.epochs_trained, validation_split=0.1)
        assert h.epoch == [3, 4, 5]
        assert np.array_equal(resumed.parameters, full.parameters)
        for k in full.optimizer.state:
            assert np.array_equal(resumed.optimizer.state[k], full.optimizer.state[k])
        assert resumed.rng.bit_generator.state == full.rng.bit_generator.state
    finally:
        fnn.set_num_threads(n0)


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_verbose_output(capsys, monkeypatch):
    X, y = _clf_data()
    m = _clf()
    m.fit(X, y, epochs=3, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(X, y, epochs=3, verbose=2, validation_split=0.2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(l.startswith(f"epoch {i + 1}/3 - loss ") for i, l in enumerate(lines))
    assert "val_loss" in lines[0]
    # verbose=1 on something that is not a terminal (capsys): one line per epoch
    m.fit(X, y, epochs=2, verbose=1)
    assert len(capsys.readouterr().out.splitlines()) == 2
    # verbose=1 on a terminal: a live bar with ETA and running loss, then the epoch line
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    m.fit(X, y, epochs=2, batch_size=10, verbose=1)
    monkeypatch.undo()
    text = tty.getvalue()
    assert "\r" in text and "ETA" in text and "10/10" in text and "loss" in text
    assert text.count("\n") == 2


def test_a_pipe_gets_one_line_per_epoch():
    code = ("import numpy as np, fastnn as fnn\n"
            "X = np.random.default_rng(0).normal(size=(50, 4)); y = np.arange(50) % 2\n"
            "m = fnn.Sequential([fnn.layers.Dense(2)], input_dim=4); m.compile('cross_entropy', 'sgd')\n"
            "m.fit(X, y, epochs=4, batch_size=5, verbose=1)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 4 and "\r" not in out.stdout.decode()
    assert lines[-1].startswith("epoch 4/4 - loss")


@pytest.mark.parametrize("make", [lambda: fnn.metrics.TopKAccuracy(2), lambda: fnn.metrics.MeanAbsoluteError(),
                                  lambda: fnn.metrics.R2Score()], ids=["top2", "mae", "r2"])
def test_metric_states_of_two_halves_merge_into_the_whole(make):
    """Metric.state / merge_states (what a data-parallel fit sums over ranks): two metrics over the halves of the
    data, merged, give the result of one metric over all of it."""
    rng = np.random.default_rng(0)
    out = rng.normal(size=(20, 3))
    t = rng.integers(0, 3, 20) if isinstance(make(), fnn.metrics.TopKAccuracy) else rng.normal(size=(20, 3))
    whole, a, b = make(), make(), make()
    for m in (whole, a, b):
        m.reset()
    whole.update(out, t)
    a.update(out[:7], t[:7])
    b.update(out[7:], t[7:])
    merged = make()
    merged.reset()
    merged.merge_states([a.state(), b.state()])
    assert merged.result() == pytest.approx(whole.result(), rel=1e-12)
