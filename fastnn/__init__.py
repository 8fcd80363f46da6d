"""fastnn: neural networks on the CPU, with compiled Cython/C kernels (OpenMP + BLAS) under a small Python API.

>>> import fastnn as fnn
>>> model = fnn.Sequential([fnn.layers.Dense(32, activation="relu"), fnn.layers.Dense(10)], input_dim=64)
>>> model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3))
"""
# Loads the BLAS (libscipy_openblas) into the process before the extensions that link it.
import scipy_openblas32 as _scipy_openblas32  # noqa: F401  (imported for its side effect)

try:
    from fastnn._core import _threads as _threads
except ImportError as exc:  # pragma: no cover - only a broken or source-only tree gets here
    raise ImportError(
        "fastnn's compiled core could not be loaded (" + str(exc) + "). Install the package with "
        "`pip install .` (or `pip install -e .`) so that the extensions are built; importing the source "
        "tree without building does not work."
    ) from exc

_threads._init()

from fastnn import (  # noqa: E402  (the modules import the compiled core: after the BLAS and thread setup)
    callbacks,
    constraints,
    datasets,
    diagnostics,
    initializers,
    layers,
    losses,
    metrics,
    onnx,
    optim,
    prune,
    schedules,
)
from fastnn._core._threads import get_num_threads, set_num_threads  # noqa: E402  (after the core setup)
from fastnn._version import __version__  # noqa: E402  (after the core setup)
from fastnn.diagnostics import gradcheck  # noqa: E402  (after the core setup)
from fastnn.io import load  # noqa: E402  (after the core setup)
from fastnn.model import History, Input, Model, NonFiniteError, Sequential  # noqa: E402  (after the core setup)

__all__ = [
    "Input", "Model", "Sequential", "History", "NonFiniteError", "load", "set_num_threads", "get_num_threads",
    "initializers", "layers", "losses", "optim", "datasets", "metrics", "callbacks", "schedules", "constraints",
    "diagnostics", "prune", "gradcheck", "onnx", "__version__",
]
