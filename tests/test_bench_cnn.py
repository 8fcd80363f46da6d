"""The CNN workloads of the benchmark (fastnn/bench_cnn.py) on tiny sizes: every peer builds the same network
from the same weights (checked against torch when installed), and every row kind runs and is formatted."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import bench, bench_cnn


@pytest.fixture
def one_thread():
    prev = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(prev)


@pytest.mark.parametrize("wid", bench_cnn.TRAINING)
def test_fastnn_and_torch_build_the_same_network(wid, one_thread):
    torch = pytest.importorskip("torch")
    spec = bench_cnn._spec(wid, scale=16)
    weights = bench_cnn.make_weights(spec)
    X, _ = bench_cnn.make_data(spec)
    model = bench_cnn.fastnn_model(spec, weights)
    assert model.count_params() == sum(w.size for d in weights for w in d.values())
    ours = model.predict(X[:4])
    for cl in (False, True):
        net = bench_cnn.torch_model(spec, weights, channels_last=cl)[0].eval()
        with torch.no_grad():
            theirs = net(bench_cnn.torch_input(X[:4], cl)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4 * np.abs(theirs).max())


def test_training_flops_of_lenet():
    spec = bench_cnn._spec("C1")
    # forward multiply-adds: conv1 28*28*6*25, conv2 10*10*16*150, dense 400*120 + 120*84 + 84*10
    macs = [28 * 28 * 6 * 25, 10 * 10 * 16 * 150, 400 * 120, 120 * 84, 84 * 10]
    assert bench_cnn.train_flops(spec) == 2 * (2 * macs[0] + 3 * sum(macs[1:]))


def test_every_cnn_row_runs_on_tiny_sizes(one_thread, monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)          # no pause between the timed segments
    rows = []

    def add(wid, unit, samples, higher_better=True, target=None, note=""):
        rows.append({"workload": wid, "unit": unit, "higher_is_better": higher_better,
                     "median": {k: bench._median(v) for k, v in samples.items()},
                     "min": {k: min(v) for k, v in samples.items()}, "max": {k: max(v) for k, v in samples.items()},
                     "samples": samples, "target": target or "", "note": note})

    bench_cnn.run(list(bench_cnn.WORKLOADS), 1, False, lambda s: None, add, scale=64)
    names = [r["workload"] for r in rows]
    assert names[0].startswith("sgemm peak") and rows[0]["median"]["fastnn"] > 0
    for wid in bench_cnn.TRAINING:
        row = next(r for r in rows if r["workload"].startswith(f"{wid} training"))
        assert row["median"]["fastnn"] > 0 and "GFLOP/s" in row["note"]
    layer_rows = [r for r in rows if r["unit"] == "GFLOP/s" and not r["workload"].startswith("sgemm")]
    assert len(layer_rows) == 3 * len(bench_cnn._layer_cases())
    assert {"forward", "backward-data", "backward-weights"} == {r["workload"].rsplit(" ", 1)[1] for r in layer_rows}
    assert any(r["workload"] == "C2 single image" for r in rows)
    assert sum(r["workload"].endswith("first step / steady step") for r in rows) == 2
    text = bench.format_table({"rows": rows, "date": "d", "threads": 1, "repeats": 1, "machine": "m",
                               "numpy": np.__version__, "torch": None})
    assert "C4 training" in text and "of sgemm peak" in text


def test_cli_expands_the_cnn_group(monkeypatch, capsys):
    from fastnn import __main__ as cli
    seen = []
    monkeypatch.setattr(bench_cnn, "run", lambda wl, repeats, full, log, add: seen.extend(wl))
    assert cli.main(["bench", "--workloads", "cnn", "--threads", "1", "--repeats", "1", "--quiet"]) == 0
    assert seen == list(bench_cnn.WORKLOADS)
    assert cli.main(["bench", "--workloads", "C9", "--quiet"]) == 2


def test_rss_of_a_cnn_workload_is_passed_through_and_formatted(monkeypatch, capsys):
    from fastnn import __main__ as cli
    seen = {}

    def fake(threads, full, log, workload="W1"):
        seen["args"] = (threads, full, workload)
        return {"fastnn": {"imports": 40.0, "data": 50.0, "peak": 100.0},
                "torch NCHW": {"imports": 200.0, "data": 210.0, "peak": 400.0}}
    monkeypatch.setattr(bench, "measure_rss", fake)
    assert cli.main(["bench", "--rss", "--rss-workload", "C2", "--threads", "1", "--quiet"]) == 0
    assert seen["args"] == (1, False, "C2")
    out = capsys.readouterr().out
    assert "C2 training: one epoch of 256 samples" in out and "25% of torch NCHW's" in out
