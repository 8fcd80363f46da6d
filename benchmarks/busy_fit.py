"""A 20-epoch fit of W1's network beside busy processes: the "auto" thread count against fixed counts (issue 16).

    python benchmarks/busy_fit.py [--busy 1] [--repeats 3] [--epochs 20]

Trains W1's network (784-256-128-10 ReLU, Adam, batch 64) on 4,000 random samples for `--epochs` epochs, each
configuration in a fresh subprocess: the default "auto" thread count, a fixed ``set_num_threads(1)`` and a fixed
count of all cores, first on the machine as it is, then beside `--busy` processes that spin a core each (``while
True: pass``).  Prints the CPU, the median seconds of each configuration, and the busy/quiet ratio of "auto".
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

_CHILD = r"""
import sys, time, numpy as np, fastnn as fnn
from fastnn.layers import Dense
mode, epochs = sys.argv[1], int(sys.argv[2])
if mode != "auto":
    fnn.set_num_threads(int(mode))
rng = np.random.default_rng(0)
X = rng.standard_normal((4000, 784)).astype(np.float32)
y = rng.integers(0, 10, 4000)
m = fnn.Sequential([Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10, activation="softmax")],
                   input_dim=784, seed=0)
m.compile("cross_entropy", "adam")
t = time.perf_counter()
m.fit(X, y, epochs=epochs, batch_size=64)
print(time.perf_counter() - t)
"""


def _run(mode, epochs, timeout):
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(epochs)], capture_output=True, text=True,
                             timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return float("inf")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=1, help="spinning processes beside the busy runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as inf")
    args = ap.parse_args(argv)
    from fastnn.bench import cpu_model
    cores = os.cpu_count() or 1
    modes = ["auto", "1", str(cores)]
    print(f"CPU: {cpu_model()}, {cores} cores; {args.epochs} epochs of W1's network on 4,000 samples; medians of "
          f"{args.repeats} runs, seconds", flush=True)
    results = {}
    for phase in ("quiet", "busy"):
        spinners = []
        if phase == "busy":
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            time.sleep(0.5)
        try:
            runs = {m: [] for m in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    runs[mode].append(_run(mode, args.epochs, args.timeout))
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        results[phase] = {m: statistics.median(v) for m, v in runs.items()}
        label = phase if phase == "quiet" else f"beside {args.busy} busy process(es)"
        print(f"{label:<28} " + "  ".join(f"{'auto' if m == 'auto' else m + ' thr'}: {results[phase][m]:.2f}"
                                          for m in modes), flush=True)
    print(f'"auto" busy / quiet: {results["busy"]["auto"] / results["quiet"]["auto"]:.2f}x (target <= 2.5x)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
