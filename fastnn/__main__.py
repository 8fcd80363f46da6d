"""Command line: ``python -m fastnn demo`` trains an MLP on the bundled digits and reports test accuracy;
``python -m fastnn bench`` runs the side-by-side benchmark (fastnn, PyTorch when installed, plain numpy)."""
import argparse
import sys
import time

import numpy as np


def demo(args):
    import fastnn as fnn
    from fastnn.datasets import load_digits, train_test_split, DIGITS_CITATION

    if args.threads:
        fnn.set_num_threads(args.threads)
    X, y = load_digits()
    X_train, y_train, X_test, y_test = train_test_split(X, y, test_fraction=0.2, seed=args.seed)
    X_train, y_train, X_val, y_val = train_test_split(X_train, y_train, test_fraction=0.125, seed=args.seed)
    print(f"fastnn {fnn.__version__} demo: UCI hand-written digits, {len(X_train)} train / {len(X_val)} validation"
          f" / {len(X_test)} test samples, {fnn.get_num_threads()} threads")
    print(f"data: {DIGITS_CITATION}")
    model = fnn.Sequential([
        fnn.layers.Dense(128, activation="relu", kernel_init="he_normal"),
        fnn.layers.Dense(64, activation="tanh"),
        fnn.layers.Dense(10),
    ], input_dim=64, seed=args.seed, dtype=args.dtype)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=args.lr))
    t0 = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              validation_data=(X_val, y_val), verbose=1)
    train_time = time.perf_counter() - t0
    scores = model.evaluate(X_test, y_test)
    print(f"trained {args.epochs} epochs in {train_time:.2f}s; "
          f"test loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.4f}")
    return 0 if scores["accuracy"] >= 0.96 else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train an MLP on the bundled UCI digits and report the test accuracy")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="threads for kernels and BLAS (0: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    b = sub.add_parser("bench", help="benchmark fastnn against PyTorch (if installed) and plain numpy")
    b.add_argument("--workloads", default="", help="comma-separated subset of W1,W2,W3,W4,mnist,digits (default: these) and of "
                   "the CNN workloads C1,C2,C3,C4,Clayers,Cinfer,Cfirst (cnn: all of them)")
    b.add_argument("--repeats", type=int, default=3, help="interleaved repeats per workload (medians reported)")
    b.add_argument("--threads", type=int, default=2, help="threads for every peer (fastnn, torch, numpy's BLAS)")
    b.add_argument("--full", action="store_true", help="the issue's full units (whole 60k/100k epochs, 40 W2 steps)")
    b.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    b.add_argument("--png", default=None, metavar="PATH", help="also draw a bar chart (needs matplotlib)")
    b.add_argument("--rss", action="store_true",
                   help="also measure the peak RSS of W1 training per peer, each in a fresh subprocess "
                        "(alone, without --workloads: only that)")
    b.add_argument("--quiet", action="store_true", help="no per-repeat progress on stderr")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args)
    if args.command == "bench":
        if args.repeats < 1 or args.threads < 1:
            parser.error("--repeats and --threads must be >= 1")
        from fastnn import bench
        return bench.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
