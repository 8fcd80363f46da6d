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

