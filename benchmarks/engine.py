"""The compiled engine against the per-layer path and PyTorch eager (issue 16), side by side in one run.

    python benchmarks/engine.py [--threads 1] [--repeats 5] [--samples 8000] [--models w1-rmsprop,residual]

Each model trains one epoch of `--samples` random MNIST-shaped samples (784 features, 10 classes) through
fastnn's compiled plan, through its per-layer path (``model.trainer.compiled_plan = False``: same kernels and
weights, Python between the layers) and, when torch is installed, through the same network in PyTorch eager with
the same optimizer; the three run in turn, `--repeats` times, after a warm-up epoch each.  Printed: the CPU, the
median samples/s of each and the ratios of the medians.  A last row measures ``fit(verbose=1,
metrics=["accuracy"], validation_data=...)`` (400 samples) against ``fit(verbose=0)`` on the compiled plan, the
progress bar drawn into a stream that says it is a terminal.

Models (784 inputs, 10 classes):
  w1-rmsprop   784-256-128-10 ReLU, RMSprop(lr=1e-3), batch 64 (W1's network)
  residual     784-256, 3 x Residual([Dense 256 relu, BatchNorm, Dropout 0.1]), 10; Adam(lr=1e-3), batch 128
  layernorm    784-256 LayerNorm ReLU, 128 LayerNorm ReLU, 10; AdamW(lr=1e-3), batch 64
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np

import fastnn as fnn
from fastnn.bench import cpu_model
from fastnn.layers import BatchNorm, Dense, Dropout, LayerNorm, Residual


def _fastnn_model(name):
    if name == "w1-rmsprop":
        layers = [Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10, activation="softmax")]
        return layers, fnn.optim.RMSprop(lr=1e-3), 64
    if name == "residual":
        layers = ([Dense(256)] + [Residual([Dense(256, activation="relu"), BatchNorm(), Dropout(0.1)])
                                  for _ in range(3)] + [Dense(10, activation="softmax")])
        return layers, fnn.optim.Adam(lr=1e-3), 128
    if name == "layernorm":
        layers = [Dense(256), LayerNorm(), fnn.layers.ReLU(), Dense(128), LayerNorm(), fnn.layers.ReLU(),
                  Dense(10, activation="softmax")]
        return layers, fnn.optim.AdamW(lr=1e-3), 64
    raise ValueError(f"unknown model {name!r}")


def _torch_model(name):
    import torch
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.BatchNorm1d(256), nn.Dropout(0.1))

        def forward(self, x):
            return x + self.f(x)

    if name == "w1-rmsprop":
        net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        return net, torch.optim.RMSprop(net.parameters(), lr=1e-3), 64
    if name == "residual":
        net = nn.Sequential(nn.Linear(784, 256), Block(), Block(), Block(), nn.Linear(256, 10))
        return net, torch.optim.Adam(net.parameters(), lr=1e-3), 128
    net = nn.Sequential(nn.Linear(784, 256), nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 128), nn.LayerNorm(128),
                        nn.ReLU(), nn.Linear(128, 10))
    return net, torch.optim.AdamW(net.parameters(), lr=1e-3), 64


def _fastnn_rate(name, X, y, compiled, **fit_kw):
    layers, opt, bs = _fastnn_model(name)
    m = fnn.Sequential(layers, input_dim=X.shape[1], seed=0)
    m.compile("cross_entropy", opt)
    m.trainer.compiled_plan = compiled
    m.fit(X[:1024], y[:1024], epochs=1, batch_size=bs)
    t = time.perf_counter()
    m.fit(X, y, epochs=1, batch_size=bs, **fit_kw)
    dt = time.perf_counter() - t
    assert (m.trainer.train_plan is not None) == compiled, "the model did not take the path asked for"
    return X.shape[0] / dt


def _torch_rate(name, X, y):
    import torch
    net, opt, bs = _torch_model(name)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    lossf = torch.nn.CrossEntropyLoss()

    def epoch(n):
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            lossf(net(Xt[idx]), yt[idx]).backward()
            opt.step()

    net.train()
    epoch(1024)
    t = time.perf_counter()
    epoch(X.shape[0])
    return X.shape[0] / (time.perf_counter() - t)


class _TTY(io.StringIO):
    def isatty(self):
        return True


def _verbose_rate(X, y, verbose):
    kw = {}
    if verbose:
        kw = dict(verbose=1, metrics=["accuracy"], validation_data=(X[:400], y[:400]))
    with contextlib.redirect_stdout(_TTY()):
        return _fastnn_rate("w1-rmsprop", X, y, True, **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--models", default="w1-rmsprop,residual,layernorm")
    args = ap.parse_args(argv)
    fnn.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.samples)
    print(f"CPU: {cpu_model()}; ISA path {fnn._core._threads.isa_path()}, OpenBLAS "
          f"{fnn._core._threads.blas_corename()}; {args.threads} thread(s); {args.samples} samples, "
          f"{args.repeats} repeats, medians of samples/s", flush=True)
    print(f"{'model':<12} {'compiled':>10} {'per-layer':>10} {'torch':>10} {'vs per-layer':>13} {'vs torch':>9}")
    for name in args.models.split(","):
        runs = {"compiled": [], "per-layer": [], "torch": []}
        for _ in range(args.repeats):
            runs["compiled"].append(_fastnn_rate(name, X, y, True))
            runs["per-layer"].append(_fastnn_rate(name, X, y, False))
            if torch is not None:
                runs["torch"].append(_torch_rate(name, X, y))
        med = {k: float(np.median(v)) if v else float("nan") for k, v in runs.items()}
        print(f"{name:<12} {med['compiled']:>10,.0f} {med['per-layer']:>10,.0f} {med['torch']:>10,.0f} "
              f"{med['compiled'] / med['per-layer']:>12.2f}x {med['compiled'] / med['torch']:>8.2f}x", flush=True)
    ratios = []
    for _ in range(args.repeats):
        quiet = _verbose_rate(X, y, False)
        shown = _verbose_rate(X, y, True)
        ratios.append(quiet / shown)
    print(f"fit(verbose=1, metrics=[accuracy], validation_data=400 samples) time / fit(verbose=0) time, "
          f"w1-rmsprop: median {np.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
