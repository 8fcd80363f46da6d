"""Learning checks of the recurrent layers that are too long for the test suite (issue 12's "Done when").

* the adding problem (Hochreiter and Schmidhuber, 1997; ``fastnn.datasets.adding_problem``) at T = 100: LSTM and
  GRU trained until the test MSE is below 0.01 (predicting the mean gives about 0.167), reporting the epochs and
  seconds it took; a SimpleRNN on the same data, with ``diagnostics=True``, reports its gradient vanishing along
  time;
* the UCI digits read as sequences of 8 rows of 8 pixels: an LSTM and a GRU to >= 0.97 test accuracy.

    python benchmarks/rnn_learning.py [--tasks adding,digits] [--threads 1] [--max-epochs 40] [--units 32]

Each run stops at the first epoch whose test score reaches the target (a measure of how long learning takes, not
model selection).  Adam (adding: lr 3e-3, clip norm 1, batch 50, 10,000 training and 1,000 test sequences;
digits: lr 5e-3, batch 32, the stratified 80/20 split of fastnn.datasets.stratified_split).  Prints one line per
epoch and a summary; exits 1 when a target is missed.  (The test suite runs smaller versions:
tests/test_rnn_learning.py.)
"""
import argparse
import sys
import time
import warnings

import numpy as np

import fastnn as fnn
from fastnn.datasets import adding_problem, load_digits, stratified_split


class StopAt(fnn.callbacks.Callback):
    """Stops the fit once ``test(model)`` reaches the goal; records the epoch and the time."""

    def __init__(self, measure, goal, lower_is_better, label):
        self.measure, self.goal, self.lower, self.label = measure, goal, lower_is_better, label
        self.epoch = None
        self.t0 = time.perf_counter()
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        v = self.measure(self.model)
        self.values.append(v)
        secs = time.perf_counter() - self.t0
        print(f"  {self.label} epoch {epoch + 1}: train loss {logs.get('loss', float('nan')):.4f}, test {v:.4f} "
              f"({secs:.1f} s)", flush=True)
        if (v < self.goal) if self.lower else (v >= self.goal):
            self.epoch, self.secs = epoch + 1, secs
            self.model.stop_training = True


def adding(kind, units, max_epochs, T=100, n_train=10000, n_test=1000, batch=50, lr=3e-3, seed=0):
    X, y = adding_problem(n_train, T, seed=seed)
    Xt, yt = adding_problem(n_test, T, seed=seed + 1)
    L = fnn.layers
    model = fnn.Sequential([getattr(L, kind)(units), L.Dense(1)], input_shape=(T, 2), seed=seed)
    model.compile("mse", fnn.optim.Adam(lr=lr), clip_norm=1.0)
    stop = StopAt(lambda m: float(np.mean((m.predict(Xt) - yt) ** 2)), 0.01, True, f"adding T={T} {kind}({units})")
    model.fit(X, y, epochs=max_epochs, batch_size=batch, callbacks=[stop])
    return stop


def adding_simple_rnn_vanishes(units, T=100, n_train=2000, epochs=2, seed=0):
    X, y = adding_problem(n_train, T, seed=seed)
    L = fnn.layers
    model = fnn.Sequential([L.SimpleRNN(units), L.Dense(1)], input_shape=(T, 2), seed=seed)
    model.compile("mse", fnn.optim.Adam(lr=1e-3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, y, epochs=epochs, batch_size=50, diagnostics=True)
    g = history.history["diagnostics"][-1][model.layers[0].name]["step_grad_norms"]
    msgs = [str(w.message) for w in caught if "along time" in str(w.message)]
    print(f"  SimpleRNN({units}) T={T}: gradient norm at the first step {g[0]:.2e}, last {g[-1]:.2e}, "
          f"ratio {g[0] / max(g):.1e}; warning: {msgs[0] if msgs else 'NONE'}")
    return bool(msgs)


def digits(kind, units, max_epochs, seed=0, lr=5e-3):
    X, y = load_digits(flatten=False)                    # (1797, 8, 8): 8 steps of 8 pixels
    Xtr, ytr, Xte, yte = stratified_split(X, y, test_fraction=0.2, seed=seed)
    L = fnn.layers
    model = fnn.Sequential([getattr(L, kind)(units), L.Dense(10)], input_shape=(8, 8), seed=seed)
    model.compile("cross_entropy", fnn.optim.Adam(lr=lr))
    stop = StopAt(lambda m: m.evaluate(Xte, yte)["accuracy"], 0.97, False, f"digits {kind}({units})")
    model.fit(Xtr, ytr, epochs=max_epochs, batch_size=32, callbacks=[stop])
    return stop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="adding,digits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--units", type=int, default=32)
    args = p.parse_args(argv)
    fnn.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    summary, ok = [], True
    if "adding" in tasks:
        for kind in ("LSTM", "GRU"):
            s = adding(kind, args.units, args.max_epochs)
            reached = s.epoch is not None
            ok &= reached
            summary.append(f"adding T=100 {kind}({args.units}): " + (
                f"test MSE {s.values[-1]:.4f} < 0.01 after {s.epoch} epochs of 10,000 sequences, {s.secs:.1f} s"
                if reached else f"NOT reached in {args.max_epochs} epochs (best {min(s.values):.4f})"))
        vanished = adding_simple_rnn_vanishes(args.units)
        ok &= vanished
        summary.append(f"adding T=100 SimpleRNN({args.units}): vanishing gradient along time "
                       f"{'reported' if vanished else 'NOT reported'}")
    if "digits" in tasks:
        for kind in ("LSTM", "GRU"):
            s = digits(kind, args.units, args.max_epochs)
            reached = s.epoch is not None
            ok &= reached
            summary.append(f"digits as 8 rows of 8 pixels, {kind}({args.units}): " + (
                f"test accuracy {s.values[-1]:.4f} >= 0.97 after {s.epoch} epochs, {s.secs:.1f} s"
                if reached else f"NOT reached in {args.max_epochs} epochs (best {max(s.values):.4f})"))
    print(f"\nfastnn {fnn.__version__}, {fnn.get_num_threads()} threads")
    print("\n".join(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
