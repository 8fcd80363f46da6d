"""Type aliases of the public API's annotations (``numpy.typing`` based); imported only for annotations.

Every module that uses them starts with ``from __future__ import annotations``, so the annotations are never
evaluated at run time and the ``X | None`` spelling works on Python 3.9.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

#: a float array of the model's dtype (float32 or float64)
FloatArray = NDArray[np.floating[Any]]
#: the shape of one sample, without the batch axis; None marks an axis whose size varies (a sequence length)
Shape = tuple[Optional[int], ...]
#: an int for a vector of features, or a tuple/list of ints (None for a variable axis)
ShapeLike = Union[int, Sequence[Optional[int]]]
#: a JSON-serializable configuration (``get_config()``)
Config = dict[str, Any]
#: a seed for numpy's default_rng, or a Generator
SeedLike = Union[None, int, np.random.Generator]

__all__ = ["ArrayLike", "Config", "DTypeLike", "FloatArray", "NDArray", "SeedLike", "Shape", "ShapeLike"]
