"""The recurrent group of the benchmark (fastnn/bench_rnn.py): its hooks in bench, its data, its GEMM count, and a
run of the whole group at tiny sizes (no timing is checked)."""
import numpy as np
import pytest

from fastnn import bench, bench_rnn


def test_group_names_expand_and_unknown_names_are_refused():
    assert bench.expand_workloads(["rnn"]) == ["R1", "R2", "R3", "R4"]
    assert bench.expand_workloads(["W1", "R3"]) == ["W1", "R3"]
    assert bench.expand_workloads([]) == list(bench.WORKLOADS)          # the default: the MLP workloads only
    assert bench.expand_workloads(["cnn", "R1"]) == list(bench.CNN_WORKLOADS) + ["R1"]
    with pytest.raises(ValueError, match="unknown workload 'R9'.*R4.*rnn"):
        bench.expand_workloads(["R9"])


def test_cli_refuses_an_unknown_workload(capsys):
    from fastnn import __main__ as cli
    assert cli.main(["bench", "--workloads", "R1,X", "--quiet"]) == 2
    assert "unknown workload 'X'" in capsys.readouterr().err


def test_step_flops_count_the_gemms_of_forward_and_backward():
    spec = bench_rnn._spec("R4", kind="LSTM", hidden=128)
    assert (spec["T"], spec["batch"], spec["emb"], spec["units"]) == (100, 32, 128, 128)
    # forward: T * N * (n_in + H) * 4H multiply-adds, backward twice that; 2 flops each
    assert bench_rnn.step_flops(spec) == 6.0 * 100 * 32 * 4 * 128 * 256
    assert bench_rnn.step_flops(bench_rnn._spec("R4", kind="GRU", hidden=64)) == 6.0 * 100 * 32 * 3 * 64 * 128
    assert bench_rnn.blas_limit_time(bench_rnn._spec("R4", tiny=True, kind="GRU", hidden=4), 1) > 0


def test_data_of_each_workload():
    X, y, lengths = bench_rnn.make_data(bench_rnn._spec("R1"))
    assert X.shape == y.shape == (500, 50) and X.dtype == np.int64 and lengths is None
    np.testing.assert_array_equal(X[:, 1:], y[:, :-1])
    assert X.max() < 65
    spec = bench_rnn._spec("R3", variable=True)
    X, y, lengths = bench_rnn.make_data(spec)
    assert X.shape == (256, 500) and y.shape == (256, 1)
    assert lengths.min() >= 50 and lengths.max() <= 500
    np.testing.assert_array_equal((X != 0).sum(axis=1), lengths)       # right-padded with 0, no 0 inside
    X, y, lengths = bench_rnn.make_data(bench_rnn._spec("R3"))
    assert (X != 0).all()
    X, y, _ = bench_rnn.make_data(bench_rnn._spec("R4", kind="GRU", hidden=64))
    assert X.shape == (256, 100, 64) and y.shape == (256, 100, 64)


def test_the_group_runs_at_tiny_sizes_with_equal_weights_in_both_peers(monkeypatch):
    torch = pytest.importorskip("torch")
    import fastnn as fnn
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        lines = []
        rows = []
        for wid in bench_rnn.WORKLOADS:
            rows += bench_rnn.run_workload(wid, repeats=1, log=lines.append, tiny=True)
    finally:
        fnn.set_num_threads(before)
    names = [r["workload"] for r in rows]
    assert names == ["R1 char LSTM", "R1 first/steady", "R2 char GRU", "R2 char SimpleRNN", "R3 LSTM T 500",
                     "R3 var masked/packed", "R4 LSTM h4", "R4 LSTM h6", "R4 GRU h4", "R4 GRU h6"]
    for r in rows:
        assert set(r["median"]) >= {"fastnn", "torch"} and all(v > 0 for v in r["median"].values()), r
    assert "BLAS limit" in rows[-1]["median"]
    table = bench.format_table({"rows": rows, "date": "-", "threads": 1, "repeats": 1, "machine": "-",
                                "numpy": np.__version__, "torch": torch.__version__})
    assert "| R4 GRU h6 | GFLOP/s |" in table and "| R1 char LSTM | sequences/s |" in table


@pytest.mark.parametrize("kind,variable", [("LSTM", False), ("GRU", False), ("SimpleRNN", False), ("LSTM", True)])
def test_both_peers_compute_the_same_loss_from_the_same_weights(kind, variable):
    torch = pytest.importorskip("torch")
    wid = "R3" if variable else "R1"
    spec = bench_rnn._spec(wid, tiny=True, kind=kind, variable=variable)
    spec["clip"] = None
    X, y, lengths = bench_rnn.make_data(spec)
    model = bench_rnn.fastnn_model(spec)
    net, _, lossf = bench_rnn.torch_model(spec, model)
    xb, yb = X[:spec["batch"]], y[:spec["batch"]]
    ours = model.evaluate(xb, yb)["loss"]
    with torch.no_grad():
        out = net(torch.from_numpy(xb), None if lengths is None else torch.from_numpy(lengths[:spec["batch"]]))
        if spec["loss"] == "cross_entropy":
            theirs = lossf(out.reshape(-1, out.shape[-1]), torch.from_numpy(yb).reshape(-1)).item()
        else:
            theirs = lossf(out, torch.from_numpy(yb)).item()
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_rss_of_a_recurrent_workload_is_passed_through_and_formatted(monkeypatch, capsys):
    from fastnn import __main__ as cli
    seen = {}

    def fake(threads, full, log, workload="W1"):
        seen["args"] = (threads, full, workload)
        return {"fastnn": {"imports": 40.0, "data": 50.0, "peak": 100.0},
                "torch": {"imports": 200.0, "data": 210.0, "peak": 500.0}}
    monkeypatch.setattr(bench, "measure_rss", fake)
    assert cli.main(["bench", "--rss", "--rss-workload", "R3", "--threads", "1", "--quiet"]) == 0
    assert seen["args"] == (1, False, "R3")
    out = capsys.readouterr().out
    assert "R3 training: one epoch of 256 samples" in out and "20% of torch's" in out


@pytest.mark.parametrize("peer", ["fastnn", "torch"])
def test_rss_child_trains_r4_and_reports_its_peaks(peer, capsys):
    """The child of ``--rss --rss-workload R4`` (bench._rss_child, here in-process): R4's LSTM at hidden 128,
    one epoch, the three peaks in order; R1's stand-in ids stay inside its vocabulary."""
    import json

    if peer == "torch":
        pytest.importorskip("torch")
    bench._rss_child(peer, 1, False, "R4")
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < r["imports"] <= r["data"] <= r["peak"]
    spec, (X, y, lengths) = bench_rnn.rss_data("R1", False)
    assert X.shape == y.shape == (spec["batch"] * spec["batches"], spec["T"]) and lengths is None
    assert X.dtype == np.int64 and 0 <= X.min() and X.max() < spec["vocab"]
    assert bench_rnn.rss_data("R4", False)[0]["units"] == 128
