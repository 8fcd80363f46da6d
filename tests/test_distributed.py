"""Data-parallel training over MPI (fastnn.distributed): runs tests/_mpi_train.py under ``mpiexec -n 2``.

Skipped, with the reason, where mpi4py or mpiexec are missing (install the "mpi" extra: pip install
"fastnn[mpi]"); the two-network-namespace test also needs root and ``ip netns``.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import fastnn as fnn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_mpi_train.py"


def _mpiexec():
    try:
        import mpi4py  # noqa: F401  (only whether it imports)
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install \"fastnn[mpi]\" installs mpi4py and mpich)")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("no mpiexec found (pip install mpich, or the \"mpi\" extra)")
    return exe


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["FASTNN_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd, timeout, env=None):
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    return p, time.monotonic() - t0


def _check_equiv(out):
    r0 = json.loads((out / "result0.json").read_text())
    r1 = json.loads((out / "result1.json").read_text())
    assert r0["size"] == 2
    for case in ("sgd", "adam", "bnd", "plan_sgd", "plan_adam", "plan_overlap", "masked", "conv", "rnn"):
        c = r0["cases"][case]
        # bitwise-equal parameters and optimizer state on both ranks after every step (the compiled plan's cases:
        # after every epoch; rank 1 saw the same)
        steps = 3 * (4 if case == "masked" else 5)     # masked: 80 training rows (validation_split=0.2)
        assert c["steps"] == (3 if case.startswith("plan") else steps) and r1["steps"][case] == c["steps"]
        assert c["hash_mismatches"] == 0 and r1["hash_mismatches"][case] == 0
        # 2 ranks x batch 12 == 1 process x batch 24 (float64)
        assert c["weight_diff"] < 1e-10, (case, c)
        assert c["state_diff"] < 1e-10, (case, c)
        assert c["buffer_diff"] < 1e-10, (case, c)
        assert c["history_diff"] < 1e-10, (case, c)
        assert c["history_keys"] == c["ref_history_keys"]
        assert c["step_count"] == c["ref_step_count"] == steps
    # the overlapped allreduce in buckets (plan_overlap) gives the bits of the one blocking allreduce, both ranks
    assert r0["overlap_same_as_blocking"] is True and r1["overlap_same_as_blocking"] is True
    # plan.allreduce_seconds (the bandwidth benchmark's timing of the plan's call) sums in place on both ranks
    assert r0["allreduce_seconds"] == r1["allreduce_seconds"] == {"sum_ok": True, "positive": True}
    # an infinite loss stops both ranks at the batch where one process stops, with the weights from before it
    nan = r0["nan_stop"]
    assert nan["ranks"] == [["loss", 3, True]] * 2 and nan["ref"] == ["loss", 3, True], nan
    assert nan["same_hash"] and nan["weight_diff"] < 1e-10, nan
    assert "val_loss" in r0["cases"]["adam"]["history_keys"]
    assert "top_k_accuracy" in r0["cases"]["adam"]["history_keys"]
    # CSVLogger (writes_files) ran on rank 0 only
    assert (out / "log_rank0.csv").exists() and not (out / "log_rank1.csv").exists()
    # save from the distributed run: rank 0 wrote, rank 1 did not; it loads and predicts in one process
    assert (out / "bn_rank0.fnn").exists() and not (out / "bn_rank1.fnn").exists()
    m = fnn.load(str(out / "bn_rank0.fnn"))
    X = np.random.default_rng(0).standard_normal((101, 6))
    np.testing.assert_array_equal(m.predict(X), np.load(out / "bn_pred.npy"))


def test_two_ranks_equal_one_process(tmp_path):
    """Weights bitwise equal on both ranks after every step; equal to one process with the global batch for SGD,
    Adam (with validation and a metric), BatchNorm (synchronized) + Dropout, three compiled-plan models (the plan
    calling MPI_Allreduce from C; max-norm constraints; the allreduce in buckets overlapped with the backward
    pass, which must give the bits of the blocking allreduce), a masked sequence model, a convolutional model
    (synchronized BatchNorm on images, Dropout inside a Residual) and a recurrent one (Bidirectional GRU, LSTM)."""
    exe = _mpiexec()
    p, _ = _run([exe, "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), "equiv", str(tmp_path)], 120)
    assert p.returncode == 0, p.stdout + p.stderr
    _check_equiv(tmp_path)


def test_local_batchnorm_statistics_and_checkpoints(tmp_path):
    """BatchNorm with local statistics (the default): both ranks hold the same parameters and optimizer state after
    every step, each epoch ends with the running statistics averaged over ranks (the ranks' own differed), and
    ModelCheckpoint saves on rank 0 only, after that average: the checkpoint predicts as the model does."""
    exe = _mpiexec()
    p, _ = _run([exe, "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), "localbn", str(tmp_path)], 120)
    assert p.returncode == 0, p.stdout + p.stderr
    for r in (0, 1):
        res = json.loads((tmp_path / f"localbn{r}.json").read_text())
        assert res["steps"] == 3 * 5 and res["mismatches"] == 0, res         # 101 rows, 2 x 12 per step
        assert len(res["epochs"]) == 3
        for e in res["epochs"]:
            assert e["ranks_differed"] and e["vs_mean"] < 1e-15, res
        assert res["saved"] == ["ck-r0-1.fnn", "ck-r0-2.fnn", "ck-r0-3.fnn"], res     # rank 0's only
        assert res["checkpoint_predicts_the_same"] and res["checkpoint_stats_equal"], res


def test_sharded_update_equals_the_whole_update(tmp_path):
    """DataParallel(shard_update=True) on the compiled plan (reduce-scatter, each rank updating its shard, allgather):
    parameters and optimizer state bitwise equal on both ranks after every step, equal to the unsharded update and
    to one process with the global batch, for SGD (Nesterov, weight decay), Adam with norm clipping, centered
    RMSprop with momentum and value clipping, AdamW in float32, max-norm constraints, 146 parameters (shards
    (0, 80) and (80, 146)); and an optimizer state that overflows in global batch 3 stops both ranks there with the
    same error as one process and the state before that batch restored on both."""
    exe = _mpiexec()
    p, _ = _run([exe, "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), "shard", str(tmp_path)], 120)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((tmp_path / "shard.json").read_text())
    for case, c in res.items():
        r0, r1 = c["ranks"]
        for mode in ("shard", "whole"):
            assert r0[mode][0] == r1[mode][0], (case, mode)          # the same bits on both ranks at the end
            assert r0[mode][3] == r1[mode][3] == 0, (case, mode)     # and after every step
            assert r0[mode][4] == (0 if case == "nan_state" else 8)
        assert r0["shard"][5] == [[0, 80], [80, 146]] and r0["whole"][5] == []
        tol = 1e-5 if case == "adamw32" else 1e-10
        assert c["shard_vs_whole"] < tol and c["shard_vs_ref"] < tol, (case, c)
        assert c["step_counts"][0] == c["step_counts"][1] == c["step_counts"][2], (case, c)
        if case == "nan_state":
            assert c["ref_what"] == "parameters" and c["ref_batch"][0] == 3, c
            for r in (r0, r1):
                for mode in ("shard", "whole"):
                    assert r[mode][1] == c["ref_what"] and r[mode][2] == c["ref_batch"], (r, c)
            assert "exp_avg_sq" in c["ref_batch"][1]


@pytest.mark.parametrize("how", ["plan", "layers", "raise"])
def test_failed_rank_ends_the_job(tmp_path, how):
    """A rank killed with SIGKILL mid-training (the other waiting in the compiled plan's allreduce, or in the
    per-layer path's), or raising an exception, makes the job exit with an error within seconds, never a hang."""
    exe = _mpiexec()
    p, dt = _run([exe, "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), "kill", str(tmp_path), how], 60)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert not list(tmp_path.glob("finished*"))
    if how == "raise":
        assert "rank 1 fails on purpose" in out, out      # (MPICH's "MPI_Abort" line may be cut off by the teardown)
    else:
        assert "BAD TERMINATION" in out and "signal 9" in out, out
    assert dt < 30, f"the job took {dt:.1f} s to end after a rank failed"


def _sh(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20)


def test_two_network_namespaces_tcp(tmp_path):
    """One rank in each of two network namespaces joined by a veth pair, talking TCP (no shared memory): the
    same results as above.  Needs root and `ip netns`."""
    exe = _mpiexec()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the network-namespace test needs root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("the network-namespace test needs the `ip` tool (iproute2)")
    tag = uuid.uuid4().hex[:6]
    ns = [f"fnn{tag}a", f"fnn{tag}b"]
    veth = [f"vf{tag}a", f"vf{tag}b"]
    octet = 16 + int(tag[:2], 16) % 200
    addr = [f"10.{octet}.77.1", f"10.{octet}.77.2"]
    try:
        r = _sh("ip", "netns", "add", ns[0])
        if r.returncode != 0:
            pytest.skip(f"ip netns add is not allowed here: {r.stderr.strip()}")
        steps = [("ip", "netns", "add", ns[1]),
                 ("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])]
        for i in (0, 1):
            steps += [("ip", "link", "set", veth[i], "netns", ns[i]),
                      ("ip", "-n", ns[i], "addr", "add", addr[i] + "/24", "dev", veth[i]),
                      ("ip", "-n", ns[i], "link", "set", veth[i], "up"),
                      ("ip", "-n", ns[i], "link", "set", "lo", "up")]
        for s in steps:
            r = _sh(*s)
            if r.returncode != 0:
                pytest.skip(f"could not set up the network namespaces ({' '.join(s)}): {r.stderr.strip()}")
        env = _env()
        cmd = [exe]
        for i in (0, 1):
            if i:
                cmd.append(":")
            cmd += ["-n", "1", "ip", "netns", "exec", ns[i], "env", *tcp_env(veth[i]), sys.executable, "-m",
                    "mpi4py", str(SCRIPT), "equiv", str(tmp_path)]
        p, _ = _run(cmd, 120, env)
        assert p.returncode == 0, p.stdout + p.stderr
        _check_equiv(tmp_path)
        # the ranks talked over the veth pair (the gradients of 45 steps: well over 100 KB each way)
        for i in (0, 1):
            stats = Path(f"/sys/class/net/{veth[i]}/statistics/tx_bytes")
            r = _sh("ip", "netns", "exec", ns[i], "cat", str(stats))
            assert r.returncode == 0 and int(r.stdout) > 100_000, (veth[i], r.stdout, r.stderr)
    finally:
        for n in ns:
            _sh("ip", "netns", "del", n)      # deleting a namespace deletes its veth end (and so the pair)


def tcp_env(iface):
    """The environment that makes MPICH (ch4, libfabric's tcp provider) talk TCP over `iface` only, with no
    shared memory between the ranks (MPIR_CVAR_NOLOCAL: every other rank counts as on another node)."""
    return ["MPIR_CVAR_NOLOCAL=1", "MPIR_CVAR_CH4_NETMOD=ofi", "FI_PROVIDER=tcp", f"FI_TCP_IFACE={iface}"]


def test_fit_refuses_a_distributed_that_is_not_a_dataparallel():
    """No MPI needed: a wrong `distributed` argument is refused before training (weights unchanged)."""
    m = fnn.Sequential([fnn.layers.Dense(3)], input_dim=4, seed=0)
    m.compile("mse", fnn.optim.SGD(0.1))
    before = m.parameters.copy()
    with pytest.raises(TypeError, match="distributed must be a fastnn.distributed.DataParallel"):
        m.fit(np.zeros((8, 4)), np.zeros((8, 3)), distributed="mpi")
    np.testing.assert_array_equal(m.parameters, before)


def test_core_never_imports_mpi4py():
    """Importing fastnn (and fastnn.distributed itself) leaves mpi4py unimported: only DataParallel() loads it."""
    code = ("import sys, fastnn, fastnn.distributed; import fastnn.training.trainer; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_overlap_buckets_cover_the_trainable_gradient_once():
    """No MPI needed: the compiled plan's buckets for DataParallel(overlap=True) (Plan.overlap; the MPI function
    addresses are only stored, never called here).  Every trainable gradient element is in exactly one interval,
    a node's bucket holds nothing of an earlier node (its gradients are final when it starts), frozen parameters
    (after the trainable prefix) are in none, and a large smallest bucket leaves one bucket after node 0."""
    from fastnn.training import compiled as _compiled
    L = fnn.layers
    m = fnn.Sequential([L.Dense(8, activation="relu"), L.LayerNorm(), L.Dense(6, use_bias=False), L.Tanh(),
                        L.Dense(5), L.Dense(3)], input_dim=4, seed=0)
    m.build((None, 4))
    m.layers[4].trainable = False
    m.compile("cross_entropy", "sgd")
    core = _compiled.TrainPlan(m, 4).core
    U = m.table.n_trainable
    assert U < m.parameters.size
    owned = {}
    for i, (layer, _) in enumerate(m.graph.nodes):
        for name in layer.params:
            off = m.table.offset(layer, name)
            owned.setdefault(i, []).append((off, off + layer.params[name].size))
    core.allreduce(1, 2, 3, 4, 5, -1, 0, 2)
    core.overlap(1, 1, 1, 0)
    buckets = core.buckets
    assert [b[0] for b in buckets] == [5, 2, 1, 0]          # nodes with trainable parameters, last first
    seen = np.zeros(m.parameters.size, np.int64)
    for node, ivs in buckets:
        for lo, hi in ivs:
            seen[lo:hi] += 1
            for earlier in range(node):
                assert all(hi <= a or lo >= b for a, b in owned.get(earlier, [])), (node, lo, hi, earlier)
    assert (seen[:U] == 1).all() and (seen[U:] == 0).all()
    core.overlap(1, 1, 1, U)                                 # no bucket reaches U elements before node 0
    assert core.buckets == [(0, [(0, U)])]
    core.allreduce()                                         # one process again: no overlap
    assert core.buckets == []
    with pytest.raises(ValueError, match="needs allreduce"):
        core.overlap(1, 1, 1, 0)


def test_allreduce_seconds_refuses_no_address():
    from fastnn._core import plan as cplan
    with pytest.raises(ValueError, match="allreduce_seconds"):
        cplan.allreduce_seconds(0, 0, 0, 0, -1, np.zeros(4, np.float32), 1)
    with pytest.raises(ValueError, match="iters 0"):
        cplan.allreduce_seconds(1, 0, 0, 0, -1, np.zeros(4, np.float32), 0)
