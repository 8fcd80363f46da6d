"""Argument checks shared by the Python layer: clear errors that name the argument, the expected and the given."""
import numbers

import numpy as np

from fastnn._core.guard import first_nonfinite as _first_nonfinite

DTYPES = {"float32": np.float32, "float64": np.float64}


def check_number(owner, name, value, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Return `value` as a Python float (int if `integer`), or raise TypeError/ValueError naming `owner.name`.

    Strings, booleans and other objects are rejected, never parsed.  NaN and infinities are rejected.
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        want = "an int" if integer else "a real number"
        raise TypeError(f"{owner}: {name} must be {want}, got {type(value).__name__} {value!r}")
    if integer:
        value = int(value)          # any size: a Python int is exact (np.isfinite would refuse one above 2**64)
    else:
        try:
            value = float(value)
        except OverflowError:       # an int beyond the float range
            raise ValueError(f"{owner}: {name} must be a finite real number, got an integer too large for a "
                             f"float (about 2**{abs(int(value)).bit_length()})") from None
        if not np.isfinite(value):
            raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_dtype(owner, dtype):
    """The model dtype: "float32" (default) or "float64", as a numpy scalar type."""
    try:
        key = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"{owner}: dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if key not in DTYPES:
        raise ValueError(f"{owner}: dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[key]


def as_float_array(owner, name, X, dtype):
    """X as a C-contiguous array of `dtype` (a copy only when needed), numeric and finite, else a clear error."""
    if isinstance(X, (str, bytes)) or X is None:
        raise TypeError(f"{owner}: {name} must be a numeric array, got {type(X).__name__}")
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError) as exc:  # ragged nested lists, ...
        raise ValueError(f"{owner}: {name} must be a numeric array of shape (n_samples, features...), "
                         f"got {type(X).__name__} that numpy cannot convert ({exc})") from None
    if arr.dtype.kind not in "fiu":
        if (arr.dtype == object and arr.size and all(isinstance(v, numbers.Real) for v in arr.flat)
                and any(isinstance(v, numbers.Integral) and not -2**63 <= v < 2**64 for v in arr.flat)):
            raise TypeError(f"{owner}: {name} holds integers too large for a 64-bit integer (numpy keeps them as "
                            "Python objects); give a numeric array (e.g. float64)")
        raise TypeError(f"{owner}: {name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=dtype, order="C")   # not ascontiguousarray: it turns a 0-d input into 1-d
    # the guard's scan (one read, no temporary): np.isfinite(arr).all() made a bool array as large as arr / 4
    # (45 MiB for a 60k x 784 float32 training set, the largest part of fastnn's peak RSS above the data in W1)
    if arr.size and _first_nonfinite(arr.reshape(-1)) >= 0:
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{owner}: {name} contains NaN or infinity (first at index {tuple(int(i) for i in bad)})")
    return arr


def as_index_array(owner, name, X):
    """X as a C-contiguous integer array of ids (an Embedding's input): int32 and int64 kept as they are, other
    integers and floats holding whole numbers as int64; anything else (non-integer or non-finite floats, bools,
    strings) is a clear error naming the first bad value and its position.  The range is checked by the layer."""
    if isinstance(X, (str, bytes)) or X is None:
        raise TypeError(f"{owner}: {name} must be an integer array of ids, got {type(X).__name__}")
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{owner}: {name} must be an integer array of ids of shape (n_samples, steps), got "
                         f"{type(X).__name__} that numpy cannot convert ({exc})") from None
    if arr.dtype == np.int32 or arr.dtype == np.int64:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{owner}: {name} holds the id {arr.max()}, too large for an int64")
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2.0 ** 62)
        if not whole.all():
            bad = tuple(int(i) for i in np.argwhere(~whole)[0])
            raise ValueError(f"{owner}: {name} must hold integer ids; a float array must hold whole numbers, got "
                             f"{arr[bad]} at index {bad}")
        return np.ascontiguousarray(arr, dtype=np.int64)
    raise TypeError(f"{owner}: {name} must hold integer ids, got dtype {arr.dtype}")
