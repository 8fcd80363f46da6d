"""Suite-wide checks: the compiled core must be the one under test, and the header says what it is.

The suite must never pass against a tree whose extensions did not load (fastnn/__init__ raises then, but a
stray pure-Python shadow module would not): every compiled module is asserted to come from a shared library.
"""
import importlib
import os

import numpy as np
import pytest

import fastnn

CORE_MODULES = ["_threads", "dense", "activations", "losses", "optim", "sampled"]


def _core_files():
    files = {}
    for name in CORE_MODULES:
        mod = importlib.import_module(f"fastnn._core.{name}")
        files[name] = getattr(mod, "__file__", None) or ""
    return files


def _check_core():
    bad = {name: f for name, f in _core_files().items() if not f.endswith((".so", ".pyd"))}
    if bad:
        raise RuntimeError(f"fastnn's compiled core did not load: these modules are not extensions: {bad}")


def _check_installed():
    """FASTNN_TEST_INSTALLED=1 (tools/check_release.sh sets it): the suite must test an installed fastnn (a wheel
    or an sdist in site-packages), never a source tree that happens to be on the path."""
    if os.environ.get("FASTNN_TEST_INSTALLED", "") == "1":
        where = os.path.abspath(fastnn.__file__)
        if os.sep + "site-packages" + os.sep not in where:
            raise RuntimeError(f"FASTNN_TEST_INSTALLED=1 but fastnn was imported from {where}, not site-packages")


def pytest_configure(config):
    # fail loudly, before collection, when the compiled core is missing
    try:
        _check_core()
        _check_installed()
    except Exception as exc:  # ImportError from a missing .so as well
        raise pytest.UsageError(f"fastnn's compiled core is not usable: {exc}") from exc
    # a fixed thread count: the "auto" count's tuner would make runs that compare bits depend on the machine's
    # load (tests/test_threads.py tests the tuner itself)
    fastnn.set_num_threads(fastnn.get_num_threads())


def pytest_report_header(config):
    from fastnn._core import _threads
    return [
        f"fastnn {fastnn.__version__} from {fastnn.__file__}",
        f"fastnn threads: {fastnn.get_num_threads()}, have_openmp: {_threads.have_openmp()}, "
        f"blas threads: {_threads.blas_num_threads()}",
        f"blas: {_threads.blas_config()}",
    ]


@pytest.fixture
def restore_threads():
    """Restore fastnn's thread count after a test that changes it."""
    n = fastnn.get_num_threads()
    yield n
    fastnn.set_num_threads(n)


@pytest.fixture
def saved(tmp_path):
    """A small trained model (Dense 5-6-3, Adam) and the path it was saved to (the io tests' subject)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    m = fastnn.Sequential([fastnn.layers.Dense(6, activation="relu"), fastnn.layers.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", fastnn.optim.Adam(lr=1e-2))
    m.fit(X, y, epochs=1)
    path = tmp_path / "m.fnn"
    m.save(path)
    return m, path
