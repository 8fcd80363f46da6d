"""The compiled training plan (fastnn/training/compiled.py, fastnn/_core/plan.pyx) against the per-layer path."""
import io
import re
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense
from fastnn.training import compiled as _plan

LOSSES = ["cross_entropy", "mse", "l2", "mae"]
OPTIMIZERS = [
    ("sgd", lambda: fnn.optim.SGD(lr=0.05)),
    ("sgd-momentum", lambda: fnn.optim.SGD(lr=0.02, momentum=0.9, weight_decay=1e-3)),
    ("sgd-nesterov", lambda: fnn.optim.SGD(lr=0.02, momentum=0.9, nesterov=True)),
    ("adam", lambda: fnn.optim.Adam(lr=3e-3)),
    ("adam-amsgrad-wd", lambda: fnn.optim.Adam(lr=3e-3, amsgrad=True, weight_decay=1e-2)),
    ("adamw", lambda: fnn.optim.AdamW(lr=3e-3)),
    ("rmsprop", lambda: fnn.optim.RMSprop(lr=1e-3)),
    ("rmsprop-momentum-wd", lambda: fnn.optim.RMSprop(lr=1e-3, alpha=0.9, momentum=0.9, weight_decay=1e-2)),
    ("rmsprop-centered", lambda: fnn.optim.RMSprop(lr=1e-3, centered=True)),
    ("rmsprop-centered-momentum", lambda: fnn.optim.RMSprop(lr=1e-3, centered=True, momentum=0.5, eps=1e-6)),
    ("adagrad", lambda: fnn.optim.Adagrad(lr=0.05)),
    ("adagrad-decay-wd", lambda: fnn.optim.Adagrad(lr=0.05, lr_decay=0.01, weight_decay=1e-3,
                                                   initial_accumulator_value=0.1)),
]


def _layers(loss):
    out = 5 if loss == "cross_entropy" else 2
    return [Dense(16, activation="tanh"), Dense(12), fnn.layers.LeakyReLU(0.1), Dense(8, activation="relu"),
            Dense(out, activation="softmax" if loss == "cross_entropy" else None)]


def _data(loss, n=101, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 7))
    y = rng.integers(0, 5, n) if loss == "cross_entropy" else rng.standard_normal((n, 2))
    return X, y


def _train(loss, make_opt, compiled, dtype="float32", epochs=3, **compile_kw):
    m = fnn.Sequential(_layers(loss), input_dim=7, seed=3, dtype=dtype)
    m.compile(loss, make_opt(), **compile_kw)
    m.trainer.compiled_plan = compiled
    X, y = _data(loss)
    h = m.fit(X, y, epochs=epochs, batch_size=16)
    return m, h


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_id,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("loss", LOSSES)
def test_plan_gives_the_weights_of_the_per_layer_path(loss, opt_id, make_opt, dtype):
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        a, ha = _train(loss, make_opt, True, dtype)
        b, hb = _train(loss, make_opt, False, dtype)
    finally:
        fnn.set_num_threads(before)
    assert a.trainer.train_plan is not None and b.trainer.train_plan is None
    tol = 1e-5 if dtype == "float32" else 1e-12
    if opt_id.startswith(("rmsprop", "adagrad")):      # the same kernels on the same values: bitwise
        np.testing.assert_array_equal(a.parameters, b.parameters)
        for k in b.optimizer.state:
            np.testing.assert_array_equal(a.optimizer.state[k], b.optimizer.state[k])
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.gradients, b.gradients, rtol=tol, atol=tol)
    for k in b.optimizer.state:
        np.testing.assert_allclose(a.optimizer.state[k], b.optimizer.state[k], rtol=tol, atol=tol)
    assert a.optimizer.step_count == b.optimizer.step_count == 3 * 7
    for key in hb.history:
        if key != "time":
            np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=tol)


@pytest.mark.parametrize("kw", [dict(clip_norm=0.1), dict(clip_value=0.01), dict(clip_norm=0.5, clip_value=0.2)])
def test_plan_with_clipping_matches(kw):
    a, _ = _train("cross_entropy", lambda: fnn.optim.Adam(lr=1e-2), True, **kw)
    b, _ = _train("cross_entropy", lambda: fnn.optim.Adam(lr=1e-2), False, **kw)
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-5, atol=1e-6)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)


def test_plan_is_used_only_when_supported():
    X, y = _data("cross_entropy")
    m = fnn.Sequential(_layers("cross_entropy"), input_dim=7, seed=0)
    m.compile("cross_entropy", "adam")
    m.fit(X, y, epochs=1)
    assert m.trainer.train_plan is not None
    # unsupported: layers on more than one feature axis, other optimizers -> the per-layer path (weight constraints:
    # tests/test_plan_graph.py)
    for make, kw in [
        (lambda: fnn.Sequential([fnn.layers.Reshape((7, 1)), Dense(8, activation="relu"), fnn.layers.Flatten(),
                                 Dense(5)], input_dim=7), {}),
    ]:
        m = make()
        m.compile("cross_entropy", "adam")
        m.fit(X, y, epochs=1, **kw)
        assert m.trainer.train_plan is None
    class MyAdam(fnn.optim.Adam):        # a subclass may change the update: the per-layer path runs it
        pass
    m = fnn.Sequential([Dense(5)], input_dim=7)
    m.compile("cross_entropy", MyAdam())
    m.fit(X, y, epochs=1)
    assert m.trainer.train_plan is None
    for name in ("rmsprop", "adagrad"):
        m = fnn.Sequential([Dense(5)], input_dim=7)
        m.compile("cross_entropy", name)
        m.fit(X, y, epochs=1)
        assert m.trainer.train_plan is not None


def test_plan_resume_is_exact(tmp_path):
    X, y = _data("cross_entropy", n=200)
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        full = fnn.Sequential(_layers("cross_entropy"), input_dim=7, seed=1)
        full.compile("cross_entropy", "adam")
        full.fit(X, y, epochs=4, batch_size=32)
        part = fnn.Sequential(_layers("cross_entropy"), input_dim=7, seed=1)
        part.compile("cross_entropy", "adam")
        part.fit(X, y, epochs=2, batch_size=32)
        part.save(tmp_path / "m.npz")
        resumed = fnn.load(tmp_path / "m.npz")
        resumed.fit(X, y, epochs=4, batch_size=32, initial_epoch=2)
    finally:
        fnn.set_num_threads(before)
    np.testing.assert_array_equal(resumed.parameters, full.parameters)


@pytest.mark.parametrize("n", [1, 3, 64, 65, 2500])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_fast_path_matches_the_per_layer_forward(n, dtype):
    m = fnn.Sequential(_layers("cross_entropy"), input_dim=7, seed=0, dtype=dtype)
    m.compile("cross_entropy", "adam")
    X = np.random.default_rng(1).standard_normal((n, 7)).astype(dtype)
    fast = m.predict(X)
    assert m.trainer.infer_plans[1]                      # the compiled inference plan ran
    slow = m.predict(X, batch_size=n)             # batch_size given: the per-layer path
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(fast, slow, rtol=tol, atol=tol)
    np.testing.assert_allclose(fast.sum(axis=1), 1.0, rtol=tol)    # probabilities, not logits
    m.layers[0].weight = np.zeros((7, 16))        # weights changed in place: the plan sees them
    np.testing.assert_allclose(m.predict(X), m.predict(X, batch_size=n), rtol=tol, atol=tol)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.predict(bad)


def _net_alloc(fn, repeats):
    import tracemalloc
    fn()
    fn()                                          # warm-up: buffers, plans, caches
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


def _wide(loss="cross_entropy"):
    # layers wide enough that any per-step array (64 x 256 float32 = 64 kB) would stand out from the small
    # transient Python objects (memoryview handles, tuples) a step creates and frees
    return [Dense(256, activation="relu"), Dense(256), fnn.layers.Tanh(), Dense(10 if loss == "cross_entropy" else 2)]


def test_steady_state_training_step_allocates_nothing():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 7)).astype(np.float32), rng.integers(0, 10, 64)
    m = fnn.Sequential(_wide(), input_dim=7, seed=0)
    m.compile("cross_entropy", "adam", clip_norm=1.0)
    T = m.loss.prepare_targets(y, 64, m.output_shape, m.dtype)
    net, peak = _net_alloc(lambda: m.trainer.step(X, T, (0, 0)), 30)
    assert net <= 256, net            # nothing retained over 30 steps
    assert peak <= 16384, peak        # no array-sized temporary (the smallest batch array is 2.5 kB, most 64 kB)


def test_compiled_plan_epoch_allocates_nothing_but_the_permutation():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4096, 7)).astype(np.float32), rng.integers(0, 10, 4096)
    m = fnn.Sequential(_wide(), input_dim=7, seed=0)
    m.compile("cross_entropy", "adam")
    net, peak = _net_alloc(lambda: m.fit(X, y, epochs=1, batch_size=64), 3)
    assert m.trainer.train_plan is not None
    # per epoch: the permutation (4096 x 8 bytes = 32 kB) and the small History/logs objects; the 64 batches
    # ran without any per-batch allocation (one 64 x 256 float32 buffer alone is 64 kB)
    assert net <= 4096, net
    assert peak <= 4096 * 8 + 16384, peak


def test_diagnostics_use_the_per_layer_path(monkeypatch):
    """fit(diagnostics=True) needs the per-layer path (gradient hook, kernel unit counters): no compiled plan."""
    from fastnn.training import compiled as _plan
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(3)], input_dim=8, seed=0)
    m.compile("cross_entropy", "adam")
    used = []
    orig = _plan.fit_epoch
    monkeypatch.setattr(_plan, "fit_epoch", lambda *a, **k: (used.append(1), orig(*a, **k))[1])
    hist = m.fit(X, y, epochs=2, batch_size=16, diagnostics=True)
    assert used == []
    last = hist.history["diagnostics"][-1]
    assert all(np.isfinite(last[name]["grad_norm"]) and last[name]["grad_norm"] > 0 for name in last)
    m.fit(X, y, epochs=1, batch_size=16)      # the same model without diagnostics does take the plan
    assert used == [1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_inference_plan_few_rows_of_a_large_layer(restore_threads, dtype, n_threads):
    """1-4 rows through layers large enough that the inference plan splits their columns over threads."""
    fnn.set_num_threads(n_threads)
    rng = np.random.default_rng(1)
    m = fnn.Sequential([Dense(300, activation="relu"), Dense(250, activation="tanh"), Dense(7)],
                       input_dim=260, seed=2, dtype=dtype)
    X = rng.normal(size=(4, 260)).astype(dtype)
    for n in (1, 2, 3, 4):
        fast = m.predict(X[:n])
        ref = m.engine.forward(X[:n], False).copy()
        np.testing.assert_allclose(fast, ref, rtol=1e-6 if dtype == "float32" else 1e-13, atol=1e-6)


PLAN_ACTIVATIONS = ["gelu", "gelu_tanh", "silu", "elu", "selu", "softplus", "mish", "sigmoid", "leaky_relu"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", PLAN_ACTIVATIONS)
def test_plan_picks_up_every_activation(act, dtype):
    """Every activation of the kind table trains through the compiled plan (fused in Dense and as a layer) and
    gives the per-layer path's weights; the inference plan gives its predictions."""
    from fastnn.layers.activations import get
    make = (lambda: fnn.layers.GELU(approximate="tanh")) if act == "gelu_tanh" else (
        (lambda: fnn.layers.ELU(0.6)) if act == "elu" else (lambda: get(act)))
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        models = []
        for compiled in (True, False):
            m = fnn.Sequential([Dense(12, activation=make()), Dense(8), make(), Dense(5)], input_dim=7, seed=3,
                               dtype=dtype)
            m.compile("cross_entropy", fnn.optim.Adam(lr=3e-3))
            m.trainer.compiled_plan = compiled
            X, y = _data("cross_entropy")
            m.fit(X, y, epochs=2, batch_size=16)
            models.append(m)
    finally:
        fnn.set_num_threads(before)
    a, b = models
    assert a.trainer.train_plan is not None and b.trainer.train_plan is None
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=tol, atol=tol)
    X = _data("cross_entropy", n=9, seed=1)[0].astype(dtype)
    np.testing.assert_allclose(a.predict(X), a.predict(X, batch_size=9), rtol=tol, atol=tol)
    assert a.trainer.infer_plans[1]


def test_plan_state_checks_its_arguments():
    """The compiled plan's setters reject what the nogil loops could not survive: kinds outside the table,
    arrays of another dtype or shape, offsets outside the parameters, an incomplete chain."""
    from fastnn._core import plan as KP
    from fastnn._core.kinds import ACT, LOSS
    p, g = np.zeros(30), np.zeros(30)
    core = KP.Plan(p, g, 4, 2)

    def Z(*s):
        return np.zeros(s)

    with pytest.raises(ValueError, match="unknown ACT kind"):
        core.dense(0, len(ACT), 3, 5, 0, 15, False, 0.0, Z(4, 5), Z(4, 5), Z(4, 5), Z(4, 3))
    with pytest.raises(ValueError, match="unknown ACT kind"):
        core.activation(1, -1, 5, 0.0, Z(4, 5), Z(4, 5))
    with pytest.raises(ValueError, match="offsets"):
        core.dense(0, ACT.RELU, 3, 5, 20, -1, False, 0.0, Z(4, 5), Z(4, 5), Z(4, 5), Z(4, 3))
    with pytest.raises(ValueError, match="float64"):
        core.dense(0, ACT.RELU, 3, 5, 0, 15, False, 0.0, Z(4, 5).astype(np.float32), Z(4, 5), Z(4, 5), Z(4, 3))
    with pytest.raises(ValueError, match="shape"):
        core.dense(0, ACT.RELU, 3, 5, 0, 15, False, 0.0, Z(4, 5), Z(4, 6), Z(4, 5), Z(4, 3))
    core.dense(0, ACT.GELU, 3, 5, 0, 15, False, 0.0, Z(4, 5), Z(4, 5), Z(4, 5), Z(4, 3))
    with pytest.raises(ValueError, match="every layer"):
        core.batch_buffers(Z(4, 3), np.zeros(4, np.intp), Z(4, 5), Z(4, 5))
    core.activation(1, ACT.SOFTMAX, 5, 0.0, Z(4, 5), Z(4, 5), passthrough=True)
    core.batch_buffers(Z(4, 3), np.zeros(4, np.intp), Z(4, 5), Z(4, 5))
    with pytest.raises(ValueError, match="unknown LOSS kind"):
        core.loss(len(LOSS))
    with pytest.raises(ValueError, match="no optimizer"):
        core.loss(LOSS.CROSS_ENTROPY)
        KP.run_batches(core, Z(8, 3), np.zeros(8, np.intp), None, 0, 2, 0, 1)
    with pytest.raises(ValueError, match="exactly"):
        core.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, False, Z(30), Z(30), None, 30)
        core.guard(True, Z(30))
    with pytest.raises(ValueError, match="backup"):
        core.guard(True)
    with pytest.raises(ValueError, match="the plan is float64"):
        KP.run_batches(core, Z(8, 3).astype(np.float32), np.zeros(8, np.intp), None, 0, 2, 0, 1)
    core.guard(False)
    # a trainable prefix: the states and backups are sized to it, the layers' offsets to the whole buffer
    with pytest.raises(ValueError, match="n_update"):
        KP.Plan(p, g, 4, 2, 31)
    part = KP.Plan(p, g, 4, 2, 20)
    part.dense(0, ACT.RELU, 3, 5, 0, 15, False, 0.0, Z(4, 5), Z(4, 5), Z(4, 5), Z(4, 3))   # offsets past 20
    with pytest.raises(ValueError, match=r"shape \(20,\)"):
        part.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, False, Z(30), Z(30), None, 30)
    part.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, False, Z(20), Z(20), None, 20)
    with pytest.raises(ValueError, match=r"shape \(20,\)"):
        part.guard(True, Z(30), Z(20), Z(20))
    part.guard(True, Z(20), Z(20), Z(20))
    status, done, bad, value = KP.run_batches(core, Z(8, 3), np.zeros(8, np.intp), None, 0, 2, 0, 1)
    assert (status, done) == (0, 2) and core.stats["n_samples"] == 8


# ---------------------------------------------------------------- Ctrl-C during a compiled epoch (issue 13, 5)
def _interruptible(seed=0):
    m = fnn.Sequential([Dense(1024, activation="relu"), Dense(1024, activation="relu"), Dense(10)], input_dim=64,
                       seed=seed)
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-3))
    return m


def test_ctrl_c_stops_a_compiled_epoch_at_a_batch_boundary_with_a_consistent_state(restore_threads):
    import os
    import signal
    import threading
    import time
    fnn.set_num_threads(1)       # steady batch times on a loaded machine
    rng = np.random.default_rng(0)
    bs, n = 64, 64 * 400         # seconds of batches
    X, y = rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n)
    m = _interruptible()
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, interrupt)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, y, epochs=1, batch_size=bs, shuffle=False)
        arrived = time.perf_counter()
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert m.trainer.train_plan is not None and sent
    assert arrived - sent[0] < 0.5, arrived - sent[0]       # chunks of ~0.05 s: well under the epoch
    steps = m.optimizer.step_count
    assert 0 < steps < n // bs
    assert m.epochs_trained == 0 and m.history.history == {}
    # the weights and Adam's moments hold exactly `steps` updates: those of a run of exactly those batches
    ref = _interruptible()
    ref.fit(X[:steps * bs], y[:steps * bs], epochs=1, batch_size=bs, shuffle=False)
    assert ref.optimizer.step_count == steps
    np.testing.assert_array_equal(m.parameters, ref.parameters)
    for k, v in ref.optimizer.state.items():
        np.testing.assert_array_equal(m.optimizer.state[k], v)
    # and training continues from there
    m.fit(X[:2 * bs], y[:2 * bs], epochs=1, batch_size=bs, shuffle=False)
    assert m.optimizer.step_count == steps + 2 and m.epochs_trained == 1


def test_epoch_chunks_do_not_change_the_weights(monkeypatch, restore_threads):
    fnn.set_num_threads(1)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((1000, 7)).astype(np.float32), rng.integers(0, 10, 1000)
    ref = fnn.Sequential(_wide(), input_dim=7, seed=0)
    ref.compile("cross_entropy", "adam", clip_norm=1.0)
    ref.fit(X, y, epochs=2, batch_size=32)
    m = fnn.Sequential(_wide(), input_dim=7, seed=0)
    m.compile("cross_entropy", "adam", clip_norm=1.0)
    calls = []
    run = _plan._k.run_batches
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 0.0)      # one batch per call
    monkeypatch.setattr(_plan._k, "run_batches", lambda *a: calls.append(a[4:6]) or run(*a))
    m.fit(X, y, epochs=2, batch_size=32)
    assert len(calls) == 2 * 32 and all(b1 == b0 + 1 for b0, b1 in calls)
    assert m.optimizer.step_count == ref.optimizer.step_count == 64
    np.testing.assert_array_equal(m.parameters, ref.parameters)
    for k, v in ref.optimizer.state.items():
        np.testing.assert_array_equal(m.optimizer.state[k], v)


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _fit_on_a_terminal(monkeypatch, compiled, **kw):
    """fit(verbose=1) with sys.stdout a terminal; returns (model, the text written)."""
    X, y = _data("cross_entropy", n=203)
    m = fnn.Sequential(_layers("cross_entropy"), input_dim=7, seed=3, dtype="float64")
    m.compile("cross_entropy", fnn.optim.Adam(lr=3e-3))
    m.trainer.compiled_plan = compiled
    tty = _FakeTTY()
    with monkeypatch.context() as mp:
        mp.setattr(sys, "stdout", tty)
        m.fit(X, y, epochs=3, batch_size=16, verbose=1, metrics=["accuracy"], validation_data=(X[:40], y[:40]),
              **kw)
    return m, tty.getvalue()


def test_progress_bar_keeps_fit_on_the_compiled_plan(monkeypatch, restore_threads):
    """verbose=1 on a terminal with metrics=["accuracy"] and validation data: the epochs run on the compiled plan
    (the bar is drawn between its chunks, not from a batch hook), with the per-layer path's weights and logs."""
    import re
    fnn.set_num_threads(1)
    assert fnn.callbacks.CallbackList([fnn.callbacks.ProgressBar(3, 13)], None).batch_hooks is False
    used = []
    orig = _plan.fit_epoch
    monkeypatch.setattr(_plan, "fit_epoch", lambda *a, **k: (used.append(1), orig(*a, **k))[1])
    # the bar redrawn after every chunk of one batch: then both paths draw it at the same points
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 0.0)
    bar = fnn.callbacks.ProgressBar
    monkeypatch.setattr(fnn.callbacks, "ProgressBar", lambda epochs, n: bar(epochs, n, interval=0.0))
    a, text_a = _fit_on_a_terminal(monkeypatch, True)
    assert used == [1, 1, 1] and a.trainer.train_plan is not None
    b, text_b = _fit_on_a_terminal(monkeypatch, False)
    assert used == [1, 1, 1] and b.trainer.train_plan is None
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-12, atol=1e-12)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(a.history.history[k], b.history.history[k], rtol=1e-12)

    def masked(text):       # the ETA and the epoch's time are timings
        return re.sub(r" - [0-9.]+s\n", " - Ts\n", re.sub(r"ETA [0-9.]+s", "ETA Ts", text))
    assert masked(text_a) == masked(text_b)
    draws = text_a.split("\n")[0].split("\r")[1:]
    assert len(draws) == 13 + 1          # one per batch, then the epoch's line
    assert draws[0].startswith("epoch 1/3 [>.") and " 1/13 - ETA " in draws[0] and " - loss " in draws[0]
    assert draws[12].startswith("epoch 1/3 [========================] 13/13 - ETA 0.0s - loss ")
    assert draws[13].startswith("epoch 1/3 - loss ") and "val_accuracy" in draws[13]
    assert text_a.count("\n") == 3


def test_progress_bar_in_default_chunks(monkeypatch):
    """With the default chunks and interval the bar still ends every epoch at n/n with the epoch's running loss."""
    m, text = _fit_on_a_terminal(monkeypatch, True)
    assert m.trainer.train_plan is not None
    epochs = text.split("\n")[:3]
    for e, line in enumerate(epochs):
        draws = line.split("\r")[1:]
        last_bar, epoch_line = draws[-2], draws[-1]
        assert last_bar.startswith(f"epoch {e + 1}/3 [========================] 13/13 - ETA 0.0s - loss ")
        loss = m.history.history["loss"][e]
        assert last_bar.rstrip().endswith(f"loss {loss:.4f}")
        assert epoch_line.startswith(f"epoch {e + 1}/3 - loss {loss:.4f} - accuracy ")


def test_progress_bar_draws_as_before():
    """ProgressBar.on_progress(batches, running loss) draws the line the per-batch hook drew."""
    f = io.StringIO()
    pb = fnn.callbacks.ProgressBar(2, 10, file=f, interval=0.0, width=24)
    pb.on_epoch_begin(1)
    pb.on_progress(5, 0.123456)
    pb.on_progress(10, 0.25)
    pb.on_epoch_end(1, {"loss": 0.25, "time": 0.5})
    parts = f.getvalue().split("\r")[1:]
    assert parts[0].startswith("epoch 2/2 [===========>............] 5/10 - ETA ")
    assert parts[0].endswith("s - loss 0.1235")
    assert parts[1] == "epoch 2/2 [========================] 10/10 - ETA 0.0s - loss 0.2500"
    assert parts[2] == "epoch 2/2 - loss 0.2500 - 0.500s".ljust(len(parts[1])) + "\n"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_id,make_opt", OPTIMIZERS[6:], ids=[o[0] for o in OPTIMIZERS[6:]])
def test_a_nan_stops_the_plan_with_the_last_good_state(opt_id, make_opt, dtype, restore_threads):
    """RMSprop and Adagrad on the plan: a huge target (a non-finite loss, or an update that overflows) stops
    training at its batch with the weights, the state and the step count of the batches before it, as on the
    per-layer path."""
    from fastnn.errors import NonFiniteError
    fnn.set_num_threads(1)
    X, y = _data("mse", n=96)
    y[70, 0] = float(np.finfo(dtype).max) / 2      # in batch 4 (0-based) of 16 rows, in order
    out, what = [], []
    for compiled in (True, False):
        m = fnn.Sequential(_layers("mse"), input_dim=7, seed=3, dtype=dtype)
        m.compile("mse", make_opt())
        m.trainer.compiled_plan = compiled
        with pytest.raises(NonFiniteError) as ei:
            m.fit(X, y, epochs=1, batch_size=16, shuffle=False)
        assert (ei.value.epoch, ei.value.batch) == (1, 5) and m.optimizer.step_count == 4
        assert (m.trainer.train_plan is not None) == compiled
        out.append(m)
        what.append((ei.value.what, re.sub(r"dense_\d+", "dense", str(ei.value))))
    assert what[0] == what[1]
    clean = fnn.Sequential(_layers("mse"), input_dim=7, seed=3, dtype=dtype)
    clean.compile("mse", make_opt())
    clean.fit(X[:64], y[:64], epochs=1, batch_size=16, shuffle=False)
    for m in out:
        np.testing.assert_array_equal(m.parameters, clean.parameters)
        for k, v in clean.optimizer.state.items():
            np.testing.assert_array_equal(m.optimizer.state[k], v)


@pytest.mark.parametrize("kind", ["conv", "lstm", "gru_embedding"])
def test_conv_and_recurrent_epochs_on_the_plan_allocate_nothing_but_the_permutation(kind, restore_threads):
    """Issues 11 and 12 ("no allocation in a steady step"): a convolutional model (Conv2D with a fused ReLU,
    BatchNorm -> ReLU, pooling, Dropout, Dense) and recurrent ones (a stacked LSTM; an Embedding table feeding a
    GRU) train whole epochs on the compiled plan with nothing allocated per batch."""
    L = fnn.layers
    fnn.set_num_threads(2)
    rng = np.random.default_rng(0)
    n = 512
    if kind == "conv":
        m = fnn.Sequential([L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                            L.Conv2D(32, 3, use_bias=False), L.BatchNorm(), L.ReLU(), L.Dropout(0.25),
                            L.GlobalAveragePooling2D(), L.Dense(10)], input_shape=(16, 16, 1), seed=0)
        X = rng.standard_normal((n, 16, 16, 1)).astype(np.float32)
    elif kind == "lstm":
        m = fnn.Sequential([L.LSTM(32, return_sequences=True), L.LSTM(32), L.Dense(10)], input_shape=(20, 8),
                           seed=0)
        X = rng.standard_normal((n, 20, 8)).astype(np.float32)
    else:
        m = fnn.Sequential([L.Embedding(30, 8), L.GRU(32), L.Dense(10)], input_shape=(20,), seed=0)
        X = rng.integers(0, 30, (n, 20))
    y = rng.integers(0, 10, n)
    m.compile("cross_entropy", "adam")
    net, peak = _net_alloc(lambda: m.fit(X, y, epochs=1, batch_size=64), 2)
    assert m.trainer.train_plan is not None
    # per epoch: the permutation (512 x 8 bytes), the small History/logs objects and, with an Embedding, the ids
    # as floats (once per fit call: 40 kB); one 64-row activation buffer alone is 64 kB (conv), 160 kB (the LSTM's
    # sequence), 655 kB (the GRU's saved gates)
    ids = X.size * 4 if kind == "gru_embedding" else 0
    assert net <= 4096, net
    assert peak <= n * 8 + ids + 16384, peak
