"""Pruning benchmark: inference and training-step time of a wide MLP before and after removing units.

Trains a 64-1024-1024-10 ReLU network on the digits for a few epochs, removes `--amount` of the units of both
hidden layers by L2 norm (fastnn.prune.neurons), and times predict on a large batch and one epoch of training,
reporting medians and the speed-up.  No timing is asserted anywhere; this is for reading.

``--model cnn``: the same with the CNN of ``python -m fastnn demo --model cnn`` (digits as 8x8x1 images, made
wider: 64 and 128 filters), removing `--amount` of the filters of both convolutions (their BatchNorm channels,
the next convolution's input channels and the Dense rows after the Flatten go with them).

    python benchmarks/prune.py [--model mlp|cnn] [--amount 0.75] [--repeats 7] [--threads 1]
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn


def median_time(fn, repeats):
    fn()                                        # warm up (buffers, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    args = p.parse_args(argv)
    if args.threads:
        fnn.set_num_threads(args.threads)
    X, y = fnn.datasets.load_digits()
    Xtr, ytr, Xte, yte = fnn.datasets.stratified_split(X, y, test_fraction=0.2, seed=0)
    L = fnn.layers
    if args.model == "cnn":
        Xtr, Xte = Xtr.reshape(-1, 8, 8, 1), Xte.reshape(-1, 8, 8, 1)
        model = fnn.Sequential([
            L.Conv2D(64, 3, padding="same", use_bias=False), L.BatchNorm(), L.ReLU(),
            L.Conv2D(128, 3, padding="same", use_bias=False), L.BatchNorm(), L.ReLU(), L.MaxPool2D(2),
            L.Flatten(), L.Dropout(0.3), L.Dense(64, activation="relu", kernel_init="he_normal"), L.Dense(10)],
            input_shape=(8, 8, 1), seed=0)
        prunable = (0, 3)
    else:
        model = fnn.Sequential([L.Dense(1024, activation="relu", kernel_init="he_normal"),
                                L.Dense(1024, activation="relu", kernel_init="he_normal"), L.Dense(10)],
                               input_dim=64, seed=0)
        prunable = (0, 1)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3))
    model.fit(Xtr, ytr, epochs=3, batch_size=64)
    pruned = model
    for i in prunable:
        pruned = fnn.prune.neurons(pruned, i, amount=args.amount)
    pruned.fit(Xtr, ytr, epochs=2, batch_size=64)
    big = np.ascontiguousarray(np.tile(Xte, (16,) + (1,) * (Xte.ndim - 1)))          # ~5,700 samples
    what = "convolution's filters" if args.model == "cnn" else "hidden layer's units"
    print(f"threads {fnn.get_num_threads()}, {args.model}: remove {args.amount:.0%} of each {what}")
    print(f"{'':10s} {'params':>9s} {'predict (ms)':>13s} {'epoch (ms)':>11s} {'test acc':>9s}")
    rows = []
    for name, m in (("full", model), ("pruned", pruned)):
        tp = median_time(lambda m=m: m.predict(big), args.repeats)
        tf = median_time(lambda m=m: m.fit(Xtr, ytr, epochs=1, batch_size=64), max(3, args.repeats // 2))
        acc = float(np.mean(np.argmax(m.predict(Xte), 1) == yte))
        rows.append((tp, tf))
        print(f"{name:10s} {m.count_params():9d} {tp * 1e3:13.2f} {tf * 1e3:11.2f} {acc:9.4f}")
    print(f"speed-up: predict x{rows[0][0] / rows[1][0]:.2f}, training epoch x{rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
