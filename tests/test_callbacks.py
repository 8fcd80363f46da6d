"""Callbacks: EarlyStopping on a scripted curve, checkpoints, LR schedules, CSV, stopping, batch hooks."""
import csv

import numpy as np
import pytest

import fastnn as fnn
from fastnn import callbacks as C


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 6))
    y = rng.integers(0, 3, 64)
    m = fnn.Sequential([fnn.layers.Dense(8, activation="tanh"), fnn.layers.Dense(3)], input_dim=6, seed=seed)
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.05, momentum=0.9))
    return m, X, y


class Scripted(C.Callback):
    """Replaces `key` in the epoch logs by a scripted curve, and keeps a copy of the weights of every epoch."""

    def __init__(self, curve, key="val_loss"):
        self.curve, self.key, self.weights = curve, key, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.curve[epoch]
        self.weights.append(self.model.parameters.copy())


CURVE = [1.0, 0.8, 0.6, 0.65, 0.7, 0.62, 0.5, 0.4, 0.3, 0.2]


def test_early_stopping_stops_at_the_right_epoch_and_restores_best():
    m, X, y = _setup()
    s = Scripted(CURVE)
    es = C.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    h = m.fit(X, y, epochs=10, batch_size=16, callbacks=[s, es])
    # best at epoch 2 (0.6); 3, 4, 5 do not improve -> stop after epoch 5
    assert es.stopped_epoch == 5 and es.best_epoch == 2 and es.best == 0.6
    assert h.epoch == [0, 1, 2, 3, 4, 5] and m.epochs_trained == 6
    np.testing.assert_array_equal(m.parameters, s.weights[2])
    assert not np.array_equal(s.weights[5], s.weights[2])


def test_early_stopping_without_restore_keeps_last_and_min_delta_and_max_mode():
    m, X, y = _setup()
    s = Scripted(CURVE)
    es = C.EarlyStopping(patience=3, min_delta=0.1)
    m.fit(X, y, epochs=10, batch_size=16, callbacks=[s, es])
    # with min_delta 0.1: 1.0 -> 0.8 -> 0.6 improve ... wait resets at epoch 2; 0.5 at epoch 6 is only 0.1 better
    assert es.stopped_epoch == 5
    np.testing.assert_array_equal(m.parameters, s.weights[5])
    m, X, y = _setup()
    s = Scripted([0.1, 0.5, 0.4, 0.3, 0.2, 0.9, 0.9], key="val_accuracy")
    es = C.EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    assert es.mode == "max"
    m.fit(X, y, epochs=7, batch_size=16, callbacks=[s, es])
    assert es.stopped_epoch == 3
    np.testing.assert_array_equal(m.parameters, s.weights[1])


def test_early_stopping_baseline():
    m, X, y = _setup()
    s = Scripted(CURVE)
    es = C.EarlyStopping(patience=2, baseline=0.5)
    m.fit(X, y, epochs=10, batch_size=16, callbacks=[s, es])
    # Keras' rule: an improvement that does not beat the baseline does not reset the wait, but the stop is
    # only checked on a non-improving epoch: epochs 0-2 improve (wait 3), epoch 3 does not -> stop
    assert es.stopped_epoch == 3


def test_model_checkpoint_best_only_and_fields(tmp_path):
    m, X, y = _setup()
    s = Scripted(CURVE)
    ck = C.ModelCheckpoint(str(tmp_path / "ckpt") + "/", save_best_only=True)
    every = C.ModelCheckpoint(tmp_path / "all" / "m-{epoch:02d}-{val_loss:.2f}.fnn")
    m.fit(X, y, epochs=5, batch_size=16, callbacks=[s, ck, every])
    best = fnn.load(tmp_path / "ckpt" / "best.fnn")
    assert best.epochs_trained == 3
    np.testing.assert_array_equal(best.parameters, s.weights[2])
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "m-01-1.00.fnn", "m-02-0.80.fnn", "m-03-0.60.fnn", "m-04-0.65.fnn", "m-05-0.70.fnn"]


def test_learning_rate_scheduler_and_reduce_on_plateau():
    m, X, y = _setup()
    h = m.fit(X, y, epochs=4, callbacks=[C.LearningRateScheduler(lambda e, lr: 0.1 / (e + 1))])
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    m, X, y = _setup()
    s = Scripted([1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    r = C.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    h = m.fit(X, y, epochs=7, callbacks=[s, r])
    # logs["lr"] is the rate used in that epoch; plateau from epoch 2: reduced after epoch 3, one epoch of
    # cooldown, reduced again after epoch 5 (to min_lr)
    assert h.history["lr"] == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.02])
    assert m.optimizer.lr == pytest.approx(0.02)


def test_csv_logger(tmp_path):
    m, X, y = _setup()
    path = tmp_path / "log.csv"
    m.fit(X, y, epochs=3, validation_split=0.25, callbacks=[C.CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    assert rows[0][:5] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    m.fit(X, y, epochs=5, initial_epoch=3, callbacks=[C.CSVLogger(path, append=True)])
    assert [r[0] for r in csv.reader(open(path))][1:] == ["0", "1", "2", "3", "4"]


def test_batch_hooks_and_stop_training():
    class Stopper(C.Callback):
        def __init__(self):
            self.calls = []

        def on_batch_end(self, batch, logs=None):
            self.calls.append((batch, logs["size"], logs["loss"]))
            if len(self.calls) == 6:
                self.model.stop_training = True

    m, X, y = _setup()
    st = Stopper()
    h = m.fit(X, y, epochs=5, batch_size=20, callbacks=[st])      # 4 batches per epoch: 20, 20, 20, 4
    assert [c[:2] for c in st.calls] == [(0, 20), (1, 20), (2, 20), (3, 4), (0, 20), (1, 20)]
    assert h.epoch == [0, 1] and m.optimizer.step_count == 6
    assert C.CallbackList([C.EarlyStopping(), C.CSVLogger("x")], m).batch_hooks is False
    assert C.CallbackList([st], m).batch_hooks is True


def test_history_plot_needs_matplotlib(monkeypatch):
    m, X, y = _setup()
    h = m.fit(X, y, epochs=2, validation_split=0.25)
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        h.plot()
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    fig = h.plot()
    assert len(fig.axes) == 2
