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


# ------------------------------------------------------------------ readers of engine.values: pruning
@pytest.fixture
def heads():
    from fastnn.layers import REGISTRY
    from tests.test_graph_protocol import Heads
    had = "Heads" in REGISTRY
    REGISTRY["Heads"] = Heads             # pruning rebuilds the model from its snapshot
    yield Heads
    if not had:
        del REGISTRY["Heads"]


def _heads_model(heads):
    x = fnn.Input(4)
    d0 = Dense(6, activation="relu", name="d0")(x)
    a, _ = heads(name="heads")(d0)        # output 1 unused
    d1 = Dense(5, activation="relu", name="d1")(a)
    model = fnn.Model(x, Dense(3, name="out")(d1), seed=0, dtype="float64")
    model.compile("cross_entropy", "adam")
    return model


def test_prune_after_a_multi_output_layer(heads):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    model = _heads_model(heads)
    model.fit(X, y, epochs=1, batch_size=10)
    d1 = model.layers[2]
    # the activation score reads the Dense's own value (an array), after the multi-output layer
    H = np.maximum(2.0 * np.maximum(X @ model.layers[0].weight + model.layers[0].bias, 0) @ d1.weight + d1.bias, 0)
    want = np.sort(np.argsort(np.abs(H).mean(axis=0), kind="stable")[:2])
    np.testing.assert_array_equal(fnn.prune.select(model, "d1", amount=2, criterion="activation", X=X), want)
    small = fnn.prune.neurons(model, "d1", amount=2, criterion="activation", X=X)
    assert small.layers[2].units == 3 and small.graph.picks == model.graph.picks
    keep = np.setdiff1d(np.arange(5), want)
    np.testing.assert_allclose(small.predict(X), (H[:, keep] @ model.layers[3].weight[keep]) + model.layers[3].bias,
                               rtol=1e-12, atol=1e-12)


def test_prune_refuses_a_layer_feeding_a_multi_output_layer(heads):
    model = _heads_model(heads)
    with pytest.raises(ValueError, match=r"cannot prune layer d0: its units feed heads \(Heads\)"):
        fnn.prune.neurons(model, "d0", amount=1)


def _masked_model(dtype="float64", units=4):
    m = fnn.Sequential([Embedding(10, 4, mask_zero=True, name="emb"), Dense(units, activation="relu", name="h"),
                        Dense(3, name="o")], seed=0, dtype=dtype)
    m.compile("cross_entropy", "sgd")
    return m


def test_prune_activation_scores_only_the_real_steps():
    rng = np.random.default_rng(2)
    X = _padded_ids(rng, 12, 8, 10)
    X[:, 4:] = 0                              # half the steps are padding at least
    m = _masked_model()
    m.trainer.check_X(X, "test")
    emb, h = m.layers[0], m.layers[1]
    emb.weight[0] = [1000.0, 0, 0, 0]         # the padding id drives unit 0 hard
    emb.weight[1:] = rng.uniform(0.5, 1.0, (9, 4))
    h.weight[...] = np.diag([0.01, 1.0, 1.0, 1.0])
    h.bias[...] = 0
    H = np.maximum(emb.weight[X] @ h.weight, 0)
    real = H[X != 0]
    assert np.argmin(real.mean(axis=0)) == 0 and np.argmin(H.reshape(-1, 4).mean(axis=0)) != 0
    np.testing.assert_array_equal(fnn.prune.select(m, "h", amount=1, criterion="activation", X=X), [0])


# ------------------------------------------------------------------ gradcheck on a masked model
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_of_a_masked_model(dtype):
    rng = np.random.default_rng(3)
    X = _padded_ids(rng, 6, 5, 10)
    y = rng.integers(0, 3, (6, 5))
    m = fnn.Sequential([Embedding(10, 3, mask_zero=True), Dense(3)], seed=0, dtype=dtype)
    m.compile("cross_entropy", "sgd")
    report = fnn.diagnostics.gradcheck(m, X, y, max_per_param=30)
    assert report.passed, report
    assert report.max_error < 1e-4, report
