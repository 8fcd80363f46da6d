"""Data-parallel scaling: 2 MPI ranks x 1 thread against 1 process x 2 threads, the same global batch.

    python benchmarks/distributed.py [--workloads W1,W2] [--steps 60,6] [--repeats 3] [--netns] [--overlap]
                                     [--shard-update] [--json out.json]

For W1 (784-256-128-10, Adam, global batch 64) and W2 (1024-2048-2048-1000, SGD momentum, global batch 256),
the shapes of fastnn/bench.py, float32 on random data, both on the compiled training plan:

- "1p x 2t": one process, FASTNN_NUM_THREADS=2, batch_size = the global batch;
- "2r x 1t": ``mpiexec -n 2 python -m mpi4py``, FASTNN_NUM_THREADS=1 per rank, batch_size = half of it
  (``DataParallel``: the plan calls MPI_Allreduce from C), over MPICH's shared-memory path;
- "2r x 1t, no allreduce": the ceiling of the 2 ranks, each process training its half of the global batch at the
  same time as the other, at one thread, with no communication (a barrier before each repeat only);
- with ``--netns`` (root): the same 2 ranks, one in each of two network namespaces joined by a veth pair, MPICH
  told to use TCP over it and no shared memory (the path two machines would use);
- with ``--shard-update``: also "2r x 1t shard update", ``DataParallel(shard_update=True)`` (reduce-scatter, each
  rank updating its shard of the parameters, allgather);
- with ``--overlap``: also "2r x 1t overlap", the 2 ranks with ``DataParallel(overlap=True)`` (the gradient
  allreduced in buckets with MPI_Iallreduce while the backward pass runs), over shared memory (and over TCP with
  ``--netns``).

Reported: seconds per step (median over repeats of an epoch after a warm-up epoch), the scaling efficiency
(time of 1p x 2t / time of 2r x 1t: 100% = as fast as two threads in one process), and the allreduce's share of a
step (its seconds, waits for the other rank included, over the epoch's).  Then the allreduce bandwidth for
buffers of 64 KB .. 16 MB: the plan's call (MPI_Allreduce in place through the address the plan uses, timed
in C by ``plan.allreduce_seconds`` as ``run_batches`` calls it) against mpi4py's own ``comm.Allreduce`` on a numpy
array (send and receive buffers).

The worker modes (``single``, ``rank``, ``alone``, ``bandwidth``) are what the driver launches.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = {
    "W1": dict(sizes=(784, 256, 128, 10), opt="adam", batch=64),
    "W2": dict(sizes=(1024, 2048, 2048, 1000), opt="sgd", batch=256),
}


def _model(wid):
    import fastnn as fnn
    s = SPECS[wid]
    sizes = s["sizes"]
    layers = [fnn.layers.Dense(h, activation="relu") for h in sizes[1:-1]] + [fnn.layers.Dense(sizes[-1])]
    m = fnn.Sequential(layers, input_dim=sizes[0], seed=0, dtype="float32")
    opt = fnn.optim.Adam(1e-3) if s["opt"] == "adam" else fnn.optim.SGD(1e-2, momentum=0.9)
    m.compile("cross_entropy", opt)
    return m


def _data(wid, steps):
    s = SPECS[wid]
    n = s["batch"] * steps
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, s["sizes"][0]), dtype=np.float32), rng.integers(0, s["sizes"][-1], n)


def worker(mode, wid, steps, repeats, overlap=False, shard=False):
    """Train and print one JSON line (rank 0 only): seconds per step of each repeat, allreduce seconds."""
    X, y = _data(wid, steps)
    m = _model(wid)
    glob = SPECS[wid]["batch"]
    times, shares = [], []
    if mode == "single":
        m.fit(X, y, batch_size=glob, epochs=1)          # warm-up (the plan's buffers, BLAS threads)
        for _ in range(repeats):
            h = m.fit(X, y, batch_size=glob, epochs=1)
            times.append(h.history["time"][0] / steps)
        rank = 0
    elif mode == "alone":
        # the ceiling of 2 ranks: each process trains its half of the global batch at once with the other, at one
        # thread, with no allreduce at all (the ranks do not talk but for the barrier before each repeat)
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        lo, hi = rank * len(X) // size, (rank + 1) * len(X) // size      # its shard: `steps` batches
        m.fit(X[lo:hi], y[lo:hi], batch_size=glob // size, epochs=1)
        for _ in range(repeats):
            comm.Barrier()
            h = m.fit(X[lo:hi], y[lo:hi], batch_size=glob // size, epochs=1)
            times.append(h.history["time"][0] / steps)
    else:
        from fastnn import distributed as dist
        dp = dist.DataParallel(overlap=overlap, shard_update=shard)
        rank = dp.rank
        m.fit(X, y, batch_size=glob // dp.size, epochs=1, distributed=dp)
        for _ in range(repeats):
            dp.comm.Barrier()
            h = m.fit(X, y, batch_size=glob // dp.size, epochs=1, distributed=dp)
            times.append(h.history["time"][0] / steps)
            shares.append(dp.allreduce_seconds / h.history["time"][0])
        assert m.trainer.train_plan is not None, "the compiled plan did not run"
    if rank == 0:
        print(json.dumps({"step_s": times, "allreduce_share": shares}), flush=True)


def bandwidth(repeats):
    """MPI_Allreduce as the plan calls it (in place, from C without the GIL: ``plan.allreduce_seconds``) vs
    mpi4py's comm.Allreduce on numpy arrays (from a Python loop, as a user of mpi4py calls it)."""
    from mpi4py import MPI

    from fastnn import distributed as dist
    from fastnn._core import plan as cplan
    dp = dist.DataParallel()
    hook = dp.plan_hook(np.float32)
    comm = dp.comm
    out = []
    for kb in (64, 256, 1024, 4096, 16384):
        n = kb * 1024 // 4
        a = np.ones(n, np.float32)
        r = np.empty_like(a)
        iters = max(3, min(200, 20000 // kb))
        res = {"kb": kb}
        for name in ("plan", "mpi4py"):
            best = []
            for _ in range(repeats):
                comm.Barrier()
                if name == "plan" and hook is not None:
                    best.append(cplan.allreduce_seconds(hook[0], hook[1], hook[2], hook[4], hook[5], a, iters))
                else:
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        if name == "plan":
                            comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
                        else:
                            comm.Allreduce(a, r, op=MPI.SUM)
                    best.append((time.perf_counter() - t0) / iters)
                a.fill(1.0)
            res[name + "_GBps"] = kb * 1024 / statistics.median(best) / 1e9
        res["plan_over_mpi4py"] = res["mpi4py_GBps"] and res["plan_GBps"] / res["mpi4py_GBps"]
        out.append(res)
    if dp.rank == 0:
        print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------- driver
def _mpiexec():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        sys.exit("no mpiexec: pip install \"fastnn[mpi]\"")
    return exe


def _env(threads):
    env = dict(os.environ, FASTNN_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _last_json(p):
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith(("{", "["))][-1])


def _me(*args):
    return [sys.executable, "-m", "mpi4py", os.path.abspath(__file__), *args]


class Netns:
    """Two network namespaces joined by a veth pair (10.x addresses); removed on exit."""

    def __enter__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns, self.veth = [f"fnb{tag}a", f"fnb{tag}b"], [f"vb{tag}a", f"vb{tag}b"]
        octet = 16 + int(tag[:2], 16) % 200
        steps = [["ip", "netns", "add", self.ns[0]], ["ip", "netns", "add", self.ns[1]],
                 ["ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1]]]
        for i in (0, 1):
            steps += [["ip", "link", "set", self.veth[i], "netns", self.ns[i]],
                      ["ip", "-n", self.ns[i], "addr", "add", f"10.{octet}.78.{i + 1}/24", "dev", self.veth[i]],
                      ["ip", "-n", self.ns[i], "link", "set", self.veth[i], "up"],
                      ["ip", "-n", self.ns[i], "link", "set", "lo", "up"]]
        for s in steps:
            subprocess.run(s, check=True, capture_output=True, timeout=20)
        return self

    def command(self, exe, args):
        cmd = [exe]
        for i in (0, 1):
            cmd += ([":"] if i else []) + ["-n", "1", "ip", "netns", "exec", self.ns[i], "env", "MPIR_CVAR_NOLOCAL=1",
                                           "MPIR_CVAR_CH4_NETMOD=ofi", "FI_PROVIDER=tcp",
                                           f"FI_TCP_IFACE={self.veth[i]}", *args]
        return cmd

    def __exit__(self, *exc):
        for n in self.ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="driver", choices=("driver", "single", "rank", "alone", "bandwidth"))
    p.add_argument("--workloads", default="W1,W2")
    p.add_argument("--workload", default="W1")
    p.add_argument("--steps", default="60,6", help="steps per timed epoch, per workload")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--netns", action="store_true", help="also through two network namespaces over TCP (root)")
    p.add_argument("--overlap", action="store_true", help="also the 2 ranks with the allreduce overlapped in buckets")
    p.add_argument("--shard-update", action="store_true",
                   help="also the 2 ranks with shard_update=True (reduce-scatter, shard update, allgather)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.mode in ("single", "rank", "alone"):
        return worker(a.mode, a.workload, int(a.steps), a.repeats, a.overlap, a.shard_update)
    if a.mode == "bandwidth":
        return bandwidth(a.repeats)
    exe = _mpiexec()
    wids = a.workloads.split(",")
    steps = dict(zip(wids, [int(s) for s in a.steps.split(",")] * len(wids)))
    results = {"workloads": {}, "bandwidth": {}}
    for wid in wids:
        base = [f"--workload={wid}", f"--steps={steps[wid]}", f"--repeats={a.repeats}"]
        r = {}
        one = subprocess.run([sys.executable, os.path.abspath(__file__), "single", *base], env=_env(2),
                             capture_output=True, text=True, timeout=900)
        r["1p x 2t"] = _last_json(one)
        two = subprocess.run([exe, "-n", "2", *_me("rank", *base)], env=_env(1), capture_output=True, text=True,
                             timeout=900)
        r["2r x 1t"] = _last_json(two)
        alone = subprocess.run([exe, "-n", "2", *_me("alone", *base)], env=_env(1), capture_output=True,
                               text=True, timeout=900)
        r["2r x 1t, no allreduce"] = _last_json(alone)
        if a.shard_update:
            two = subprocess.run([exe, "-n", "2", *_me("rank", *base, "--shard-update")], env=_env(1),
                                 capture_output=True, text=True, timeout=900)
            r["2r x 1t shard update"] = _last_json(two)
        if a.overlap:
            two = subprocess.run([exe, "-n", "2", *_me("rank", *base, "--overlap")], env=_env(1), capture_output=True,
                                 text=True, timeout=900)
            r["2r x 1t overlap"] = _last_json(two)
        if a.netns:
            for key, extra in [("2r x 1t tcp", [])] + ([("2r x 1t tcp overlap", ["--overlap"])] if a.overlap else []):
                with Netns() as ns:
                    tcp = subprocess.run(ns.command(exe, _me("rank", *base, *extra)), env=_env(1),
                                         capture_output=True, text=True, timeout=900)
                r[key] = _last_json(tcp)
        t1 = statistics.median(r["1p x 2t"]["step_s"])
        print(f"{wid}: 1 process x 2 threads {t1 * 1e3:.2f} ms/step (global batch {SPECS[wid]['batch']})")
        for key in [k for k in r if k.startswith("2r")]:
            t = statistics.median(r[key]["step_s"])
            r[key]["efficiency"] = t1 / t
            if r[key]["allreduce_share"]:
                share = f"allreduce share {statistics.median(r[key]['allreduce_share']):.0%}"
            else:
                share = "(the ceiling: each rank's half batch alone, concurrently)"
            print(f"{wid}: {key:<20} {t * 1e3:.2f} ms/step  efficiency {t1 / t:.0%}  {share}")
        results["workloads"][wid] = r
    bw = subprocess.run([exe, "-n", "2", *_me("bandwidth", f"--repeats={a.repeats}")], env=_env(1),
                        capture_output=True, text=True, timeout=900)
    results["bandwidth"]["shm"] = _last_json(bw)
    if a.netns:
        with Netns() as ns:
            bw = subprocess.run(ns.command(exe, _me("bandwidth", f"--repeats={a.repeats}")), env=_env(1),
                                capture_output=True, text=True, timeout=900)
        results["bandwidth"]["tcp"] = _last_json(bw)
    for path, rows in results["bandwidth"].items():
        for row in rows:
            print(f"allreduce {path} {row['kb']:>6} KB: plan {row['plan_GBps']:.2f} GB/s, mpi4py "
                  f"{row['mpi4py_GBps']:.2f} GB/s (plan / mpi4py {row['plan_over_mpi4py']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
