"""Threads: 1 and 2 threads give the same results (to float tolerance), and fastnn's BLAS is visible to and
controllable by threadpoolctl.  No timing assertions.

The sizes are chosen so that the kernels really split work over 2 threads: the kernels need at least
2 x 16384 elements (FNN_MIN_PER_THREAD) before they use a second thread; a batch of 256 rows through a
256-unit layer is 65536 elements, and the parameter buffer (~84k) is split by the optimizers.
"""
import os

import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import _threads
from fastnn.layers import Dense


@pytest.fixture
def threads(restore_threads):
    """Tests that change the thread count (restored afterwards by conftest's restore_threads).  They need a
    build with OpenMP: without it (FASTNN_NO_OPENMP=1) every kernel runs on one thread by design."""
    if not _threads.have_openmp():
        pytest.skip("fastnn was built without OpenMP: one thread only")
    yield


def _fit(n_threads, dtype, optimizer, loss="cross_entropy"):
    fnn.set_num_threads(n_threads)
    assert fnn.get_num_threads() == n_threads
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 64))
    y = rng.integers(0, 10, 512) if loss == "cross_entropy" else rng.normal(size=(512, 10))
    model = fnn.Sequential([Dense(256, activation="relu"), Dense(256, activation="tanh"), Dense(10)],
                           input_dim=64, seed=0, dtype=dtype)
    assert model.count_params() > 2 * 16384
    model.compile(loss=loss, optimizer=optimizer())
    hist = model.fit(X, y, epochs=2, batch_size=256)
    return model.parameters.copy(), model.predict(X), hist.history["loss"]


OPTIMIZERS = [
    ("adam", lambda: fnn.optim.Adam(lr=1e-3, weight_decay=1e-3)),
    ("sgd_nesterov", lambda: fnn.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("rmsprop", lambda: fnn.optim.RMSprop(lr=1e-3, centered=True, momentum=0.5)),
    ("adagrad", lambda: fnn.optim.Adagrad(lr=1e-2)),
]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 2e-3)])
@pytest.mark.parametrize("name,optimizer", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_one_and_two_threads_agree(threads, dtype, rtol, name, optimizer):
    p1, out1, h1 = _fit(1, dtype, optimizer)
    p2, out2, h2 = _fit(2, dtype, optimizer)
    assert np.all(np.isfinite(p1))
    scale = np.abs(p1).max()
    np.testing.assert_allclose(p2, p1, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(out2, out1, rtol=rtol, atol=rtol * np.abs(out1).max())
    np.testing.assert_allclose(h2, h1, rtol=rtol)


def test_one_and_two_threads_agree_regression(threads):
    p1, out1, h1 = _fit(1, "float64", lambda: fnn.optim.Adam(lr=1e-3), loss="mse")
    p2, out2, h2 = _fit(2, "float64", lambda: fnn.optim.Adam(lr=1e-3), loss="mse")
    np.testing.assert_allclose(p2, p1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h2, h1, rtol=1e-9)


def test_set_num_threads_sets_the_blas_too(threads):
    for n in (1, 2, 1):
        fnn.set_num_threads(n)
        assert fnn.get_num_threads() == n
        assert _threads.blas_num_threads() == n


# ------------------------------------------------------------------------------------------- threadpoolctl
def _fastnn_blas(info):
    """The threadpoolctl entries of fastnn's BLAS (scipy-openblas32's libscipy_openblas), not numpy's."""
    import scipy_openblas32
    pkg = os.path.realpath(os.path.dirname(scipy_openblas32.__file__))
    return [m for m in info if "scipy_openblas" in m["filepath"]
            and os.path.realpath(m["filepath"]).startswith(pkg + os.sep)]


def test_threadpoolctl_sees_and_limits_fastnns_blas(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fnn.set_num_threads(2)
    info = threadpoolctl.threadpool_info()
    ours = _fastnn_blas(info)
    assert len(ours) == 1, f"fastnn's BLAS is not in threadpool_info(): {[m['filepath'] for m in info]}"
    assert ours[0]["user_api"] == "blas" and ours[0]["internal_api"] == "openblas"
    assert ours[0]["num_threads"] == _threads.blas_num_threads() == 2
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert _threads.blas_num_threads() == 1
        assert _fastnn_blas(threadpoolctl.threadpool_info())[0]["num_threads"] == 1
        # fastnn still runs, and gives the same answer, while its BLAS is limited
        model = fnn.Sequential([Dense(64, activation="relu"), Dense(3)], input_dim=32, seed=0, dtype="float64")
        X = np.random.default_rng(0).normal(size=(300, 32))
        limited = model.predict(X)
    assert _threads.blas_num_threads() == 2
    np.testing.assert_allclose(model.predict(X), limited, rtol=1e-12, atol=1e-12)


def test_threadpoolctl_limits_fastnns_blas_by_prefix(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fnn.set_num_threads(2)
    before = _threads.blas_num_threads()
    with threadpoolctl.threadpool_limits(limits={"libscipy_openblas": 1}):
        assert _threads.blas_num_threads() == 1
    assert _threads.blas_num_threads() == before


def test_threadpoolctl_openmp_limit_reaches_fastnns_kernels(threads):
    """threadpool_limits(1) limits OpenMP too: fastnn's kernels follow it, and the count comes back after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fnn.set_num_threads(2)
    with threadpoolctl.threadpool_limits(1):
        assert fnn.get_num_threads() == 1
    assert fnn.get_num_threads() == 2


# ------------------------------------------------------------------------------------- the "auto" thread count
class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _drive(tuner, clock, seconds_per_batch, chunks, chunk=40):
    """Run `chunks` chunks through the tuner with the given per-batch time of each thread count."""
    used = []
    for _ in range(chunks):
        nt, size = tuner.next(chunk)
        dt = size * seconds_per_batch[nt]
        clock.t += dt
        tuner.record(nt, size, dt)
        used.append((nt, size))
    return used


def test_the_tuner_keeps_all_threads_on_a_quiet_machine():
    from fastnn.training.compiled import ThreadTuner
    clock = _Clock()
    tuner = ThreadTuner(2, clock)
    used = _drive(tuner, clock, {2: 1e-3, 1: 1.6e-3}, 400)
    assert tuner.cur == 2
    probes = [u for u in used if u[0] == 1]
    # a few short probes, ever rarer: at most ~1% of the batches on one thread
    assert 0 < len(probes) < 12 and sum(s for _, s in probes) < 0.02 * sum(s for _, s in used)
    assert all(2 <= s <= 10 for _, s in probes)          # a quarter of a chunk, or of its time


def test_the_tuner_drops_to_one_thread_when_the_team_stalls_and_comes_back():
    from fastnn.training.compiled import ThreadTuner
    clock = _Clock()
    tuner = ThreadTuner(2, clock)
    _drive(tuner, clock, {2: 1e-3, 1: 1.6e-3}, 20)
    busy = _drive(tuner, clock, {2: 20e-3, 1: 1.8e-3}, 200)       # another process on the cores
    assert tuner.cur == 1
    assert sum(1 for nt, _ in busy[:6] if nt == 2) <= 3            # it leaves the stalled team at once
    stalled = sum(s for nt, s in busy if nt == 2)
    assert stalled < 0.05 * sum(s for _, s in busy)                # probes of the team: short ones
    _drive(tuner, clock, {2: 1e-3, 1: 1.6e-3}, 200)                # quiet again
    assert tuner.cur == 2


def test_the_tuner_does_not_flip_on_close_timings():
    from fastnn.training.compiled import ThreadTuner
    clock = _Clock()
    tuner = ThreadTuner(2, clock)
    used = _drive(tuner, clock, {2: 1e-3, 1: 0.95e-3}, 300)       # one thread 5% faster: not worth a switch
    assert tuner.cur == 2 and sum(1 for nt, _ in used if nt == 1) < 12


def test_auto_threads_and_a_fixed_count(restore_threads, monkeypatch):
    from fastnn._core import _threads
    from fastnn.training import compiled
    fnn.set_num_threads(2)
    assert not _threads.adaptive()
    fnn.set_num_threads("auto")
    assert _threads.adaptive() == (fnn.get_num_threads() > 1)
    with pytest.raises(TypeError, match='"auto"'):
        fnn.set_num_threads("all")
    if fnn.get_num_threads() < 2:
        pytest.skip("one core: nothing to tune")
    # a fit with "auto" runs chunks at the tuner's counts (forced here to one thread) and trains as usual
    seen = []
    real = compiled._k.run_batches
    monkeypatch.setattr(compiled._k, "run_batches", lambda *a: seen.append((a[7], fnn.get_num_threads())) or real(*a))
    monkeypatch.setattr(compiled.ThreadTuner, "next", lambda self, chunk: (1, chunk))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 8)), rng.integers(0, 3, 300)
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(3)], input_dim=8, seed=0)
    m.compile("cross_entropy", "adam")
    m.fit(X, y, epochs=2, batch_size=32)
    assert seen and all(s == (1, 1) for s in seen)
    assert fnn.get_num_threads() == restore_threads or fnn.get_num_threads() > 1    # the count is back after fit
    # a fixed count is never tuned
    fnn.set_num_threads(2)
    seen.clear()
    m.fit(X, y, epochs=1, batch_size=32)
    assert seen and all(s[0] == 2 for s in seen)


def test_auto_threads_on_the_per_layer_path(restore_threads, monkeypatch):
    from fastnn.training import compiled
    from fastnn.training.trainer import Trainer
    fnn.set_num_threads("auto")
    if fnn.get_num_threads() < 2:
        pytest.skip("one core: nothing to tune")
    n = fnn.get_num_threads()
    seen = []
    real = Trainer.step
    monkeypatch.setattr(Trainer, "step",
                        lambda self, *a, **k: seen.append(fnn.get_num_threads()) or real(self, *a, **k))
    picks = iter([1, n] * 1000)
    monkeypatch.setattr(compiled.ThreadTuner, "next", lambda self, chunk: (next(picks), 3))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((320, 8)), rng.integers(0, 3, 320)
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(3)], input_dim=8, seed=0)
    m.compile("cross_entropy", "adam")
    m.trainer.compiled_plan = False
    m.fit(X, y, epochs=1, batch_size=32)           # 10 batches: chunks of 3 at 1, n, 1 threads, then 1 at n
    assert seen == [1, 1, 1, n, n, n, 1, 1, 1, n]
    assert fnn.get_num_threads() == n              # given back after the epoch
