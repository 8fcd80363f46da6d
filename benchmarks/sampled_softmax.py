"""Training step with 50,000 classes: sampled softmax against the full softmax cross-entropy.

A network Dense(256, relu) -> Dense(50,000) on 128 input features, batch 256, Adam.  For each loss the script
times ``train_on_batch`` (forward, loss, backward, Adam update over all parameters, NaN guard) and reports the
median over the repeats, and the ratio.  The full softmax costs three GEMMs of 256 x 256 x 50,000 per step;
the sampled one gathers the sampled columns and does GEMMs of 256 x 256 x num_sampled, so what is left is
the optimizer's pass over the 12.8 M output weights, which is the same for both: cheap for SGD, but Adam's
dense update (two moment buffers) then dominates the sampled step (a sparse / lazy Adam would remove it).

    python benchmarks/sampled_softmax.py [--classes 50000] [--num-sampled 64] [--repeats 10] [--threads N] \
        [--optimizer sgd|adam]
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn


def step_times(loss, X, y, classes, repeats, optimizer):
    model = fnn.Sequential([fnn.layers.Dense(256, activation="relu"), fnn.layers.Dense(classes)],
                           input_dim=X.shape[1], seed=0)
    model.compile(loss, optimizer)
    model.train_on_batch(X, y)                  # warm-up: buffers allocated, pages touched
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.train_on_batch(X, y)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=50_000)
    p.add_argument("--num-sampled", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--optimizer", action="append", choices=["sgd", "adam"],
                   help="repeatable; default: sgd, then adam")
    a = p.parse_args(argv)
    if a.threads:
        fnn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(a.batch, 128)).astype(np.float32)
    y = rng.integers(0, a.classes, a.batch)
    for opt in a.optimizer or ["sgd", "adam"]:
        print(f"{a.classes} classes, batch {a.batch}, {fnn.get_num_threads()} thread(s), {opt}, "
              f"median of {a.repeats} steps")
        res = {}
        for name, loss in (("full softmax", "cross_entropy"),
                           (f"sampled softmax ({a.num_sampled})",
                            fnn.losses.SampledSoftmax(num_sampled=a.num_sampled))):
            t = step_times(loss, X, y, a.classes, a.repeats, opt)
            res[name] = statistics.median(t)
            print(f"  {name:<24} {1e3 * res[name]:9.2f} ms/step   (min {1e3 * min(t):.2f}, max {1e3 * max(t):.2f})")
        full, sampled = res.values()
        print(f"  sampled softmax is {full / sampled:.1f}x faster per training step")


if __name__ == "__main__":
    main()
