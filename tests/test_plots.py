"""Plots (issue 14): History.plot into the user's axes or a pyplot figure, any recorded per-epoch number ("lr"
included), integer epoch ticks."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import callbacks as C

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def plt():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.close("all")
    yield plt
    plt.close("all")


def _history(epochs=3, lr_schedule=True):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 5))
    y = rng.integers(0, 3, 48)
    m = fnn.Sequential([fnn.layers.Dense(6, activation="tanh"), fnn.layers.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.1))
    cbs = [C.LearningRateScheduler(lambda e, lr: 0.1 * 0.5 ** e)] if lr_schedule else []
    return m.fit(X, y, epochs=epochs, batch_size=16, validation_split=0.25, callbacks=cbs, verbose=0)


def _visible_xticks(ax):
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


# ---------------------------------------------------------------------------------------------------- History.plot
def test_history_plot_draws_into_the_given_axes_and_creates_nothing(plt):
    h = _history()
    fig, ax = plt.subplots()
    assert h.plot("loss", ax=ax) is fig
    assert plt.get_fignums() == [fig.number]
    train, val = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(train.get_ydata(), h.history["loss"])
    np.testing.assert_allclose(val.get_ydata(), h.history["val_loss"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]

    # one Axes per key (a numpy array from plt.subplots is accepted as it is)
    fig2, axes = plt.subplots(1, 2)
    h.plot(["loss", "lr"], ax=axes)
    assert len(axes[0].get_lines()) == 2 and len(axes[1].get_lines()) == 1
    assert axes[1].get_title() == "lr"
    # several keys into one Axes: each line named by its key
    fig3, one = plt.subplots()
    h.plot(["loss", "accuracy"], ax=one)
    assert [ln.get_label() for ln in one.get_lines()] == ["loss", "val_loss", "accuracy", "val_accuracy"]
    assert plt.get_fignums() == [fig.number, fig2.number, fig3.number]


def test_history_plot_refuses_axes_that_do_not_match(plt):
    h = _history()
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="3 axes given for 2 keys"):
        h.plot(["loss", "lr"], ax=axes)
    with pytest.raises(TypeError, match="matplotlib Axes"):
        h.plot("loss", ax="not axes")


def test_history_plot_without_ax_is_a_pyplot_figure(plt):
    h = _history()
    fig = h.plot()
    assert plt.get_fignums() == [fig.number] and plt.gcf() is fig        # h.plot(); plt.show() shows it
    assert [a.get_title() for a in fig.axes] == ["loss", "accuracy"]     # not "time" nor "lr" by default


def test_history_plot_lr_and_any_numeric_key(plt):
    h = _history()
    fig = h.plot("lr")
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.1, 0.05, 0.025])
    fig = h.plot(["val_loss", "time"])
    assert [a.get_title() for a in fig.axes] == ["val_loss", "time"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), h.history["val_loss"])


@pytest.mark.parametrize("epochs, ticks", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3])])
def test_history_plot_epoch_ticks_are_integers(plt, epochs, ticks):
    fig = _history(epochs, lr_schedule=False).plot()
    for ax in fig.axes:
        assert _visible_xticks(ax) == ticks


def test_history_plot_unknown_or_non_numeric_keys(plt):
    h = _history()
    with pytest.raises(ValueError, match=r"\['acc'\]; recorded: \['loss', 'accuracy', 'val_loss'.*'lr'\]"):
        h.plot(["loss", "acc"])
    h.history["diagnostics"] = [{"dense_1": {}}] * len(h.epoch)
    with pytest.raises(ValueError, match="'diagnostics' is not a per-epoch number"):
        h.plot("diagnostics")
    h.history["partial"] = [1.0]
    with pytest.raises(ValueError, match="'partial' has 1 values for 3 epochs"):
        h.plot("partial")
    with pytest.raises(ValueError, match="nothing recorded"):
        C.History().plot()
    assert plt.get_fignums() == []                                       # no figure left behind by a refusal
