"""Threads and fork (issue 13, defects 2-4): inference from many threads on one model, predict while fit runs,
and children made by fork after fastnn has run on two threads.  Kept fast: small models, a few seconds."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn as fnn

L = fnn.layers

# ---------------------------------------------------------------------------------------------------- fork
_FORK_SETUP = """
import os, sys, time, numpy as np, fastnn as fnn
L = fnn.layers
fnn.set_num_threads(2)                         # the parent runs OpenMP (and the BLAS on its team) at 2 threads
model = fnn.Sequential([L.Dense(128, activation="relu"), L.Dense(10)], input_dim=32, seed=0)
model.compile("cross_entropy")
X = np.random.default_rng(0).normal(size=(512, 32)).astype(np.float32)
y = np.arange(512) % 10
model.fit(X, y, epochs=1, batch_size=256)
ref = model.predict(X)


def work(i):
    # first predict and fit in a forked child: they hung before the fix
    out = model.predict(X)
    model.clone().fit(X, y, epochs=1, batch_size=128)     # a clone: a pool worker runs several tasks
    return bool(np.allclose(out, ref, rtol=1e-5, atol=1e-6)), fnn.get_num_threads()
"""


def _run(code, timeout=60):
    r = subprocess.run([sys.executable, "-c", _FORK_SETUP + textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_os_fork_child_predicts_and_fits():
    out = _run("""
        pid = os.fork()
        if pid == 0:
            ok, n = work(0)
            try:
                fnn.set_num_threads(2)                   # more threads cannot work in the child: a clear error
                refused = False
            except RuntimeError as exc:
                refused = "fork" in str(exc)
            fnn.set_num_threads(1)
            os._exit(0 if ok and n == 1 and refused and fnn._threads.in_forked_child() else 3)
        deadline = time.monotonic() + 20           # a hang fails the test instead of hanging it
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            sys.exit("the forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert fnn.get_num_threads() == 2 and not fnn._threads.in_forked_child()   # the parent is untouched
        model.fit(X, y, epochs=1, batch_size=128)
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="the 'fork' start method")
def test_multiprocessing_fork_pool():
    out = _run("""
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(2)
        try:
            res = pool.map_async(work, range(4)).get(timeout=20)     # a hang fails instead of hanging
        finally:
            pool.terminate()
            pool.join()
        assert res == [(True, 1)] * 4, res
        print("ok")
    """)
    assert out.strip() == "ok"


# ---------------------------------------------------------------------------------------------------- threads
def _mlp():        # a chain of Dense/activation layers: the compiled inference plan
    return fnn.Sequential([L.Dense(64, activation="relu"), L.Dense(64, activation="tanh"),
                           L.Dense(5, activation="softmax")], input_dim=16, seed=0)


def _bn():         # BatchNorm and Dropout on (4, 4) features (Reshape): the per-layer path and its executors
    return fnn.Sequential([L.Reshape((4, 4)), L.Dense(16, activation="relu"), L.Flatten(),
                           L.Dense(64, activation="relu"), L.BatchNorm(), L.Dropout(0.2),
                           L.Dense(5, activation="softmax")], input_dim=16, seed=0)


def _bn_compiled():   # the same layers on feature vectors: the compiled plan, BatchNorm and Dropout included
    return fnn.Sequential([L.Dense(64, activation="relu"), L.BatchNorm(), L.Dropout(0.2),
                           L.Dense(5, activation="softmax")], input_dim=16, seed=0)


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16)).astype(np.float32), rng.integers(0, 5, n)


def _in_threads(fn, n_threads):
    """Run fn(i) on n_threads threads started together; re-raise the first exception."""
    import threading
    barrier = threading.Barrier(n_threads)
    errors = []

    def run(i):
        try:
            barrier.wait(timeout=10)
            fn(i)
        except BaseException as exc:       # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("make", [_mlp, _bn], ids=["compiled", "per-layer"])
@pytest.mark.parametrize("rows", [1, 64, 300])
def test_predict_from_many_threads_is_correct(make, rows):
    # 4 threads predicting on one model with inputs of the same row count: before the fix they shared the
    # compiled plan's (or the layers') buffers, and 27-34 of 60 results were wrong
    model = make()
    X, y = _data()
    model.compile("cross_entropy").fit(X, y, epochs=1, batch_size=32)
    inputs = [np.random.default_rng(10 + i).normal(size=(rows, 16)).astype(np.float32) for i in range(8)]
    want = [model.predict(x) for x in inputs]
    wrong = []

    def work(i):
        for k in range(25):
            j = (i + k) % len(inputs)
            got = model.predict(inputs[j])
            if not np.array_equal(got, want[j]):
                wrong.append((i, k))

    _in_threads(work, 4)
    assert not wrong, f"{len(wrong)} wrong results"
    assert model.training is False


def test_evaluate_from_many_threads_is_correct():
    model = _bn().compile("cross_entropy")
    X, y = _data()
    model.fit(X, y, epochs=1, batch_size=32)
    want = model.evaluate(X, y)
    got = []
    _in_threads(lambda i: got.extend(model.evaluate(X, y) for _ in range(10)), 3)
    assert got == [want] * 30


@pytest.mark.parametrize("make", [_bn, _mlp, _bn_compiled], ids=["per-layer", "compiled", "compiled-bn"])
def test_predict_during_fit_does_not_change_training(make):
    # before the fix predict wrote the layer buffers and forward state that fit's backward read (BatchNorm)
    X, y = _data(512)
    prev = fnn.get_num_threads()
    fnn.set_num_threads(1)          # bitwise-reproducible training to compare with
    try:
        alone = make().compile("cross_entropy", optimizer="adam")
        alone.fit(X, y, epochs=3, batch_size=16)
        model = make().compile("cross_entropy", optimizer="adam")
        import threading
        done = threading.Event()
        outputs = []

        def fit(i):
            try:
                if i == 0:
                    model.fit(X, y, epochs=3, batch_size=16)
                else:
                    while not done.is_set():
                        outputs.append(model.predict(X[:64]))
            finally:
                done.set()

        _in_threads(fit, 2)
    finally:
        fnn.set_num_threads(prev)
    assert len(outputs) > 0
    assert all(o.shape == (64, 5) and np.isfinite(o).all() for o in outputs)
    for a, b in zip(alone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(alone.predict(X), model.predict(X))


@pytest.mark.parametrize("make", [_bn, _mlp], ids=["per-layer", "compiled"])
def test_training_from_a_second_thread_is_a_clear_error(make):
    import threading
    model = make().compile("cross_entropy")
    X, y = _data(64)
    errors, inner = [], []

    class Probe(fnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            def other():
                for call in (lambda: model.fit(X, y), lambda: model.train_on_batch(X[:8], y[:8])):
                    try:
                        call()
                    except RuntimeError as exc:
                        errors.append(str(exc))
            t = threading.Thread(target=other)
            t.start()
            t.join(timeout=30)
            inner.append(float(model.train_on_batch(X[:8], y[:8])))    # the training thread itself may

    before = model.get_weights()
    model.fit(X, y, epochs=1, batch_size=16, callbacks=[Probe()])
    assert len(errors) == 2 and all("being trained on another thread" in e and model.name in e for e in errors)
    assert len(inner) == 1 and any((a != b).any() for a, b in zip(before, model.get_weights()))
    model.fit(X, y, epochs=1)            # released afterwards, also after an error inside fit
    with pytest.raises(ValueError):
        model.fit(X[:, :3], y)
    model.train_on_batch(X[:8], y[:8])


def test_inference_pools_stay_small_and_follow_the_model():
    model = _bn().compile("cross_entropy")
    X, y = _data()
    model.fit(X, y, epochs=1, batch_size=32)
    _in_threads(lambda i: [model.predict(X[:64]) for _ in range(5)], 6)
    assert 1 <= len(model.engine._free) <= model.engine._max_free
    # a relayout (freezing at compile) gives the layers new parameter views: the inference copies follow them
    model.layers[0].trainable = False
    model.compile("cross_entropy")
    model.set_weights([w * 0.5 if w.ndim == 2 else w for w in model.get_weights()])
    want = model.engine.forward(X[:64], False).copy()
    np.testing.assert_array_equal(model.predict(X[:64]), want)
    mlp = _mlp().compile("cross_entropy")
    _in_threads(lambda i: [mlp.predict(X[:64]) for _ in range(5)], 6)
    assert 1 <= len(mlp.trainer.infer_plans[1][(64, False)]) <= 4


def test_inference_on_a_large_input_holds_a_bounded_amount_of_memory():
    """predict / evaluate without a batch size run a large X in chunks (fastnn.engine.inference_rows), so what the
    layers keep afterwards is a few MiB, not X's whole activations, whatever the row counts of the calls
    (issue 13, defect 12)."""
    import tracemalloc
    L = fnn.layers
    model = fnn.Sequential([L.Dense(256, activation="relu"), L.BatchNorm(), L.Dense(10)], input_dim=64, seed=0)
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 64)).astype(np.float32)          # 5 MiB; 20 MiB per 256-wide activation
    y = rng.integers(0, 10, 20000)
    model.predict(X[:100])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for n in (20000, 19999, 15001, 10000):
            out = model.predict(X[:n])
            del out
        model.evaluate(X, y)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 16 * 2**20, f"{held / 2**20:.0f} MiB kept after inference"
    np.testing.assert_allclose(model.predict(X[:5000]), model.predict(X[:5000], batch_size=5000), rtol=1e-5,
                               atol=1e-6)


def test_inference_chunks_grow_where_the_weights_outweigh_the_activations():
    """An image model ending in a large Dense reads the Dense's weights once per inference chunk: its chunks hold
    more images than the activation budget alone gives (engine.chunk_rows), the compiled predict takes the nearest
    pool size, and the answer is the per-layer path's; a model with small weights keeps the activation budget."""
    from fastnn.engine import INFERENCE_CHUNK_ELEMENTS, chunk_rows
    L = fnn.layers
    big = fnn.Sequential([L.Conv2D(32, 3, activation="relu"), L.Conv2D(64, 3, activation="relu"), L.MaxPool2D(2),
                          L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)], input_shape=(28, 28, 1),
                         seed=0)
    small = fnn.Sequential([L.Conv2D(16, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
                            L.Dense(10)], input_shape=(32, 32, 16), seed=0)
    budget = INFERENCE_CHUNK_ELEMENTS // (24 * 24 * 64)
    rows = chunk_rows(big.graph, (28, 28, 1))
    assert budget < 8 and 32 <= rows <= 16 * budget          # 9216 x 128 Dense weights, 7 images by activations
    assert chunk_rows(small.graph, (32, 32, 16)) == INFERENCE_CHUNK_ELEMENTS // (32 * 32 * 16)
    X = np.random.default_rng(0).standard_normal((150, 28, 28, 1)).astype(np.float32)
    got = big.predict(X)
    assert (64, False) in big.trainer.infer_plans[1]
    np.testing.assert_allclose(got, big.engine.forward(X, False), rtol=1e-4, atol=1e-5)


def test_evaluate_with_sample_weights_on_sequence_outputs_from_many_threads():
    """cross_entropy's per-position weights (a sample's weight over its positions) live in a buffer of the calling
    thread: threads evaluating one model with different weights at once each get their own answer."""
    import threading
    L = fnn.layers
    model = fnn.Sequential([L.Dense(16, activation="tanh"), L.Dense(5)], input_shape=(30, 8), seed=0,
                           dtype="float64").compile("cross_entropy", "sgd")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 30, 8))
    y = rng.integers(0, 5, (64, 30))
    weights = [rng.random(64) for _ in range(4)]
    want = [model.evaluate(X, y, sample_weight=w)["loss"] for w in weights]
    got, errors = [[] for _ in weights], []

    def work(i):
        try:
            for _ in range(60):
                got[i].append(model.evaluate(X, y, sample_weight=weights[i])["loss"])
        except Exception as exc:    # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert got[i] == [want[i]] * 60
