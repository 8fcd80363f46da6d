"""Plots (issue 14): History.plot into the user's axes or a pyplot figure, any recorded per-epoch number ("lr"
included), integer epoch ticks; the bench chart's error bars, a BLAS-limit label that never covers fastnn's value,
and "1 thread" in the bench's titles and tables."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import bench
from fastnn import callbacks as C
from fastnn.bench_rnn import _row

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


# ---------------------------------------------------------------------------------------------------- bench chart
def _result(threads=1, fastnn_at_limit=True):
    limit = [36500.0, 37500.0, 39000.0]
    fast = [37000.0, 37500.0, 38000.0] if fastnn_at_limit else [17000.0, 27000.0, 28000.0]
    rows = [_row("W1", "samples/s", {"fastnn": fast, "torch": [9900.0, 10400.0, 8400.0],
                                     "numpy": [14000.0, 14800.0, 15000.0], "BLAS limit": limit}, ""),
            _row("R4 LSTM h64", "GFLOP/s", {"fastnn": [31.0, 32.0, 33.0], "torch": [20.0, 22.0, 25.0],
                                            "BLAS limit": [32.0, 31.0, 33.5]}, ""),
            _row("W4 single", "us", {"fastnn": [9.1, 9.5, 12.0], "torch": [40.0, 42.0, 41.0]}, "", False)]
    return {"rows": rows, "threads": threads, "repeats": 3, "date": "2026-11-27 18:30", "machine": "x86_64, 2 CPUs",
            "numpy": np.__version__, "torch": None}


def _draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_bench_plot_draws_min_max_error_bars(plt, tmp_path):
    from matplotlib.container import ErrorbarContainer
    res = _result(fastnn_at_limit=False)
    fig = bench.plot(res, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []                  # drawn without pyplot: the caller's pyplot state is untouched
    for ax, row in zip(fig.axes, res["rows"]):
        (eb,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = eb.lines[2][0].get_segments()     # one vertical segment per bar, min to max
        peers = [k for k in row["median"] if k != "BLAS limit"]
        assert len(segments) == len(peers)
        for seg, k in zip(segments, peers):
            np.testing.assert_allclose(sorted(seg[:, 1]), [row["min"][k], row["max"][k]])


@pytest.mark.parametrize("at_limit", [True, False])
def test_bench_plot_labels_never_overlap(plt, at_limit):
    res = _result(fastnn_at_limit=at_limit)
    W1 = res["rows"][0]
    if at_limit:                                     # the headline case: fastnn's median equal to the limit's
        assert W1["median"]["fastnn"] == W1["median"]["BLAS limit"]
    fig = bench.plot(res)
    renderer = _draw(fig)
    fig_box = fig.bbox
    for ax in fig.axes:
        texts = [t for t in ax.texts] + [ax.title]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
        for i, (a, ba) in enumerate(boxes):
            assert fig_box.x0 <= ba.x0 and ba.x1 <= fig_box.x1 and fig_box.y0 <= ba.y0 and ba.y1 <= fig_box.y1, a
            for b, bb in boxes[i + 1:]:
                assert not ba.overlaps(bb), f"{ax.get_title()}: {a!r} overlaps {b!r}"
        for t in ax.texts:                           # the value labels are inside the panel, none clipped
            assert ax.bbox.y0 <= t.get_window_extent(renderer).y0 < t.get_window_extent(renderer).y1 <= ax.bbox.y1
        if ax.get_legend() is not None:              # the limit's label: above the panel, over no bar
            (limit_text,) = ax.get_legend().get_texts()
            assert limit_text.get_window_extent(renderer).y0 >= ax.bbox.y1
    assert len({round(ax.title.get_window_extent(renderer).y0) for ax in fig.axes}) == 1   # titles aligned
    W1_ax = fig.axes[0]
    (limit_text,) = W1_ax.get_legend().get_texts()
    share = 100 * W1["median"]["fastnn"] / W1["median"]["BLAS limit"]
    assert limit_text.get_text() == f"BLAS limit 37,500 (fastnn {share:.0f}%)"
    assert "37,500" in [t.get_text() for t in W1_ax.texts] or not at_limit


def test_bench_says_1_thread_and_2_threads(plt):
    for n, word in ((1, "1 thread,"), (2, "2 threads,")):
        res = _result(threads=n)
        assert word in bench.format_table(res)
        assert word in bench.plot(res)._suptitle.get_text()
        assert word in bench.format_rss({"fastnn": {"imports": 1.0, "data": 2.0, "peak": 3.0}}, n, False)
    assert "1 threads" not in bench.format_table(_result(threads=1))
