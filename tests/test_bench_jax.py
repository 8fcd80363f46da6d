"""The benchmark's JAX peers: they train to fastnn's weights from the same start, they are skipped with a note
without jax, and fastnn imports jax nowhere else (no timings checked)."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import bench


def test_the_header_names_jax_and_the_table_its_ratios():
    row = {"workload": "W3", "unit": "samples/s", "higher_is_better": True, "median": {"fastnn": 2.0, "jax-scan": 1.0},
           "min": {"fastnn": 2.0, "jax-scan": 1.0}, "max": {"fastnn": 2.0, "jax-scan": 1.0}, "target": "", "note": ""}
    result = {"rows": [row], "date": "d", "threads": 1, "repeats": 1, "machine": "m", "numpy": "n", "torch": None,
              "jax": "0.10.2"}
    table = bench.format_table(result)
    assert table.splitlines()[0].endswith("m; numpy n, torch None, jax 0.10.2")
    assert "| fastnn vs jax-scan |" in table and "| 2.00x |" in table
    del result["jax"]                                   # a result saved before the JAX peers (or without jax)
    assert "jax" not in bench.format_table(result).splitlines()[0]


def test_fastnn_never_imports_jax_outside_the_peer():
    code = ("import sys, fastnn, fastnn.bench as b; b._torch = lambda: None; b.machine_info(); "
            "b.training_peers('W2', b._spec('W2', False), "
            "b.make_data(dict(b._spec('W2', False), n=4))[0], 1, lambda s: None); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_peers_skip_jax_with_a_note_when_it_does_not_import(monkeypatch):
    monkeypatch.setattr(bench, "_JAX_STATE", {})
    monkeypatch.setitem(sys.modules, "jax", None)           # import jax raises ImportError
    lines = []
    spec = dict(bench._spec("W3", False), n=8)
    peers = bench.training_peers("W3", spec, bench.make_data(spec)[0], 1, lines.append)
    assert not set(bench.JAX_PEERS) & set(peers) and "fastnn" in peers and "numpy" in peers
    assert len(lines) == 1 and "jax peers skipped" in lines[0] and "pip install jax" in lines[0]
    assert bench._jax_version() is None


TINY = {"W1": dict(sizes=(20, 16, 8, 5), act="relu", loss="cross_entropy", opt=("adam", {"lr": 1e-3}), batch=8,
                   n=60),
        "W3": dict(sizes=(6, 8, 8, 1), act="tanh", loss="mse", opt=("sgd", {"lr": 1e-2}), batch=8, n=60)}


@pytest.mark.parametrize("wid", ["W1", "W3"])
def test_jax_peers_train_to_fastnns_weights(wid):
    """One epoch (7 full batches of 8, one of 4) from the same weights, in fastnn's batch order: both JAX peers
    end at fastnn's weights (the hand-written Adam is torch's, as fastnn's; two epochs check the step count)."""
    pytest.importorskip("jax")
    spec = TINY[wid]
    weights, X, y = bench.make_data(spec)
    model = bench.fastnn_model(spec, weights)
    order = copy.deepcopy(model.rng)                     # the generator fastnn's fit draws its permutations from
    nets = {}
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    for name, scan in zip(bench.JAX_PEERS, (False, True)):
        nets[name] = bench.JaxMLP(spec, weights, scan=scan)
        assert bench.jax_train(nets[name], X, y, spec, 2, copy.deepcopy(order)) > 0
    if affinity is not None:                             # a peer pinned to one CPU gives the others back
        assert os.sched_getaffinity(0) == affinity
    model.fit(X, y, epochs=2, batch_size=spec["batch"])
    moved = max(np.abs(layer.weight - W).max() for layer, W in zip(model.layers, weights))
    assert moved > 1e-3                                  # the epochs changed the weights
    for name, net in nets.items():
        for layer, (W, b) in zip(model.layers, net.weights()):
            np.testing.assert_allclose(W, layer.weight, rtol=0, atol=1e-4, err_msg=name)
            np.testing.assert_allclose(b, layer.bias, rtol=0, atol=1e-4, err_msg=name)


def test_at_one_thread_xlas_threads_share_one_cpu():
    """A fresh process imports jax through the peer at one thread: every thread the import made (XLA's pool) runs
    on the one CPU the peers train on; the calling thread keeps its CPUs."""
    pytest.importorskip("jax")
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity here")
    code = ("import os, fastnn.bench as b; tasks = lambda: {int(t) for t in os.listdir('/proc/self/task')}; "
            "before = tasks(); mask = os.sched_getaffinity(0); b._jax(1); cpu = b._JAX_STATE['cpu']; "
            "new = tasks() - before; print(cpu in mask, len(new) > 0, "
            "all(os.sched_getaffinity(t) == {cpu} for t in new), os.sched_getaffinity(0) == mask, "
            "os.environ['JAX_PLATFORMS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "True", "cpu"], out.stdout + out.stderr


def test_pinned_restores_the_threads_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity here")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with bench._pinned(cpu):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with bench._pinned(None):
        assert os.sched_getaffinity(0) == before


def test_jax_peer_refuses_an_optimizer_it_does_not_write():
    pytest.importorskip("jax")
    spec = bench._spec("W2", False)
    with pytest.raises(ValueError, match="JAX peer"):
        bench.JaxMLP(spec, bench.make_data(dict(spec, n=4))[0])
