"""Thread-pool check: a loop alternating a parallel elementwise kernel and a GEMM, at 1 and 2 threads.

The trap it measures (see the build notes): after an OpenMP region, libgomp's idle workers spin on the cores
that OpenBLAS's own workers need, and the reverse.  fastnn runs OpenBLAS's jobs on the OpenMP team (one pool);
this script times that against 1 thread and against two separate pools, repeating and reporting medians.

    python benchmarks/threads.py [--repeats 15] [--iters 200]
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn._core import _threads, activations


def loop_time(Z, Y, A, B, C, iters):
    nt = fnn.get_num_threads()
    t0 = time.perf_counter()
    for _ in range(iters):
        activations.activation_forward(1, Z, Y, 0.0, nt)        # ReLU, split over threads
        _threads.gemm(False, False, 1.0, A, B, 0.0, C)
    return (time.perf_counter() - t0) / iters * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--iters", type=int, default=200)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((128, 512)).astype(np.float32)
    Y = np.empty_like(Z)
    A = rng.standard_normal((128, 512)).astype(np.float32)
    B = rng.standard_normal((512, 512)).astype(np.float32)
    C = np.empty((128, 512), np.float32)
    configs = [("1 thread", 1, True), ("2 threads, one shared pool", 2, True),
               ("2 threads, separate pools", 2, False)]
    times = {name: [] for name, _, _ in configs}
    before = fnn.get_num_threads()
    try:
        for _ in range(args.repeats):                  # interleaved, so that noise hits every config alike
            for name, nt, shared in configs:
                fnn.set_num_threads(nt)
                _threads.use_shared_pool(shared)
                times[name].append(loop_time(Z, Y, A, B, C, args.iters))
    finally:
        _threads.use_shared_pool(True)
        fnn.set_num_threads(before)
    base = statistics.median(times["1 thread"])
    print(f"ReLU 128x512 + sgemm 128x512x512, us per iteration, median of {args.repeats} (min-max); "
          f"OpenMP: {_threads.have_openmp()}")
    for name, _, _ in configs:
        t = times[name]
        print(f"  {name:<28} {statistics.median(t):9.1f}  ({min(t):.1f}-{max(t):.1f})  "
              f"speed-up vs 1 thread {base / statistics.median(t):.2f}x")


if __name__ == "__main__":
    main()
