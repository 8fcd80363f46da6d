"""Saving and loading models: one file, an uncompressed ``.npz`` (a zip of ``.npy`` arrays), no pickle.

Format (version 1).  Arrays, each a plain numeric ``.npy`` member:

| key | content |
|---|---|
| ``__fastnn__`` | uint8: the UTF-8 JSON header below |
| ``param/<i>/<name>`` | parameter ``<name>`` of node ``<i>`` (e.g. ``param/0/weight``), model dtype |
| ``buffer/<i>/<name>`` | non-trainable state of node ``<i>`` (``layer.buffers``, e.g. BatchNorm statistics) |
| ``optim/<state>/<i>/<name>`` | optimizer state ``<state>`` (e.g. ``exp_avg``) for that parameter |

The JSON header::

    {"format": "fastnn-model", "version": 1,
     "model": {"class": "Sequential" | "Model", "name", "seed", "dtype", "input_shape",
               "nodes": [{"class": "Dense", "config": {...}, "inputs": [-1]}, ...]},
     "loss": {"name": "cross_entropy"} | null, "optimizer": {"name": "Adam", ...config} | null,
     "optimizer_state": {"step_count": 120, "names": ["exp_avg", ...]} | null,
     "training": {"epochs_trained": 5, "nan_guard": true, "clip_norm": 1.0 | null, "clip_value": null,
                  "base_lr": 0.001, "lr_schedule": {"name": "Cosine", ...config} | null},
     "rng": {"init": <numpy bit-generator state>, "shuffle": ..., "layer": ...},
     "arrays": {"<key>": {"shape": [...], "dtype": "<f4", "sha256": "..."}}}

Nodes are listed in execution (topological) order; ``inputs`` are indices of earlier nodes, -1 for the
model input; a layer is rebuilt as ``fastnn.layers.REGISTRY[class].from_config(config)`` and called on its
inputs with ``Layer.call_on`` (a list for multi-input layers, and for a layer called with extra inputs
such as initial states), so any layer that follows the Layer conventions (``get_config`` / ``from_config``,
parameters from ``param_specs``, state in ``layer.buffers``) is saved without changes here.  A node fed by a
multi-output layer also lists ``outputs``, per input the index of the output it reads (null: a single-output
source); ``model.output_index`` is present when the model's output is one output of a multi-output layer.
A node's config also holds the layer's ``trainable`` flag (absent: True), set on the rebuilt layer before
the model is built.  Parameters and optimizer state are stored per parameter, not as the flat buffer, so the
file does not depend on the buffer's layout; the optimizer state covers the trainable parameters (a frozen
one has none), and a parameter that is trainable when loaded but has no saved state starts with fresh state,
as it would at a ``compile`` that unfreezes it.

In memory: ``snapshot(model)`` gives the (header, arrays) pair that ``save`` writes (without the checksums),
``build(header, arrays)`` makes a model from one (what ``load`` does after ``read``), and ``clone(model)`` is
``build(snapshot(model))``: an independent copy with nothing written to disk.  Pruning and the diagnostics'
float64 copies go through the same two functions.

Safety: loading never executes code: no pickle (a member whose ``.npy`` header has an object dtype is
refused before anything else), layer classes only from the registry, JSON only.  A file costs what it
declares, and what it declares is checked before it is allocated: the JSON header is read first (at most
``MAX_HEADER_BYTES``) and every value's type and range is checked (``check_header``: e.g. a step count in
[0, 2**53]; the error names the field); each member's ``.npy`` header must give the shape and dtype the JSON
header lists, and the zip's record of its size must match; each array is then read into an array of that
size, decompressing no more than its bytes (zipfile stops at the recorded size; the member's CRC is checked at
its end) and compared with its SHA-256;
and the parameter shapes that the layer configs imply are compared with the stored arrays before the model
allocates its buffers.  Loading is linear in the number of layers and arrays.  A truncated, corrupted,
foreign, wrong-version or pickle-bearing file, or a header naming an unknown layer, raises ValueError; the
model is built completely before it is returned, so there is never a half-loaded model.

Writes are atomic: a temporary file in the same directory, flushed and fsync'ed, then ``os.replace`` onto the
target (and the directory fsync'ed), so a crash leaves either the old file or the new one.  Saving through a
symlink writes the link's target; a new file gets mode 0666 less the umask, a replaced file keeps its mode.
A temporary is named ``.<name>.<pid>.<random>.fastnn-tmp``; one left by a killed process (``kill -9``
between the write and the rename) is removed by the next save to the same target from a process on the same
machine.  ``save`` refuses a model holding NaN or infinity (``nonfinite_array``), which ``load`` would refuse.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import secrets
import stat
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn._typing import NDArray

if TYPE_CHECKING:
    from fastnn.model import Model

#: a model file's JSON header (the module docstring's layout) and its arrays by key
Header = dict[str, Any]
Arrays = dict[str, NDArray[Any]]

FORMAT = "fastnn-model"
VERSION = 1
HEADER_KEY = "__fastnn__"


# ---------------------------------------------------------------------------------------------- save
def _nodes(model):
    """The layers of the graph's nodes, in the order they run (a Residual's block layers are nodes too)."""
    return model.graph.layers


def _rng_state(gen):
    return gen.bit_generator.state


def _architecture(model, owner):
    from fastnn.layers import REGISTRY
    from fastnn.model import Model, Sequential
    if type(model) not in (Sequential, Model):
        raise ValueError(f"{owner}: only fastnn.Model and fastnn.Sequential can be saved, got {type(model).__name__}")
    nodes = []
    index = {id(layer): i for i, (layer, _) in enumerate(model.graph.nodes)}
    for layer, src in model.graph.nodes:
        cls = type(layer).__name__
        if REGISTRY.get(cls) is not type(layer):
            raise ValueError(f"{owner}: layer {layer.name} has class {cls}, which is not in fastnn.layers.REGISTRY; "
                             "register it to make it saveable")
        config = {**layer.get_config(), "trainable": bool(layer.trainable)}
        subs = layer.sublayers()
        if subs:
            # a container's layers (a Residual's block) are nodes of their own: refer to them, not repeat them
            config[layer.sublayers_key] = {"nodes": [index[id(b)] for b in subs]}
        entry = {"class": cls, "config": config, "inputs": [int(s) for s in src]}
        pick = model.graph.picks[len(nodes)]
        if pick is not None:       # which output of a multi-output source each input reads (null: its only one)
            entry["outputs"] = [None if k is None else int(k) for k in pick]
        nodes.append(entry)
    arch = {"class": type(model).__name__, "name": model.name, "seed": model.seed,
            "dtype": np.dtype(model.dtype).name, "input_shape": list(model.input_shape), "nodes": nodes}
    if model.graph.output_index is not None:
        arch["output_index"] = int(model.graph.output_index)
    return arch


def snapshot(model: Model, include_optimizer: bool = True, owner: str = "save") -> tuple[Header, Arrays]:
    """The model in memory as ``save`` writes it: (header, arrays), the JSON-able header of the module
    docstring (without its ``arrays`` checksums) and {key: array}.  The arrays are views of the model's
    buffers, not copies: ``build`` copies them into a new model, ``save`` writes them; copy them before
    changing the model if you keep them.  Errors name `owner`."""
    from fastnn import losses as _losses
    from fastnn import optim as _optim
    if not model.built:
        raise ValueError(f"{owner}: {model.name} is not built yet (give input_dim, or fit/predict once)")
    header = {"format": FORMAT, "version": VERSION, "model": _architecture(model, owner)}
    arrays = {}
    table = model.table
    for i, layer in enumerate(_nodes(model)):
        for name, view in layer.params.items():
            arrays[f"param/{i}/{name}"] = view
        for name, buf in layer.buffers.items():
            arrays[f"buffer/{i}/{name}"] = np.asarray(buf)
    header["loss"] = None
    if model.loss is not None:
        if _losses.REGISTRY.get(model.loss.name) is not type(model.loss):
            raise ValueError(f"{owner}: the loss {model.loss!r} is not in fastnn.losses.REGISTRY")
        header["loss"] = model.loss.get_config()
    header["optimizer"] = header["optimizer_state"] = None
    opt = model.optimizer
    if opt is not None:
        cfg = opt.get_config()
        if _optim.REGISTRY.get(cfg["name"].lower()) is not type(opt):
            raise ValueError(f"{owner}: the optimizer {type(opt).__name__} is not in fastnn.optim.REGISTRY")
        header["optimizer"] = cfg
        if include_optimizer and opt._params is table.trainable_parameters:
            header["optimizer_state"] = {"step_count": int(opt.step_count), "names": sorted(opt.state)}
            for sname, flat in opt.state.items():
                for i, layer in enumerate(_nodes(model)):
                    for r in table.rows_of(layer):
                        if r.trainable:     # the state covers the trainable prefix, where their rows lie
                            arrays[f"optim/{sname}/{i}/{r.name}"] = table.view(flat, r)
    header["training"] = {"epochs_trained": int(model.epochs_trained), "nan_guard": bool(model.nan_guard)}
    if model.loss is not None:
        # what compile was given, so that "load, then fit(initial_epoch=...)" trains as the run would have
        header["training"].update(
            clip_norm=model.clip_norm, clip_value=model.clip_value,
            base_lr=None if model.trainer.base_lr is None else float(model.trainer.base_lr),
            lr_schedule=_schedule_config(model.lr_schedule))
    header["rng"] = {"init": _rng_state(model.init_rng), "shuffle": _rng_state(model.rng),
                     "layer": _rng_state(model.layer_rng)}
    return header, arrays


def _schedule_config(schedule):
    """The schedule's config when it (and any schedule inside it) is a ``fastnn.schedules`` class, which
    ``schedules.from_config`` rebuilds; None otherwise (no schedule, or a user's subclass)."""
    from fastnn import schedules as _schedules
    s = schedule
    while s is not None:
        if _schedules.CLASSES.get(type(s).__name__) is not type(s):
            return None
        s = getattr(s, "after", None)
    return None if schedule is None else schedule.get_config()


def nonfinite_array(model: Model, include_optimizer: bool = True) -> str | None:
    """The key of the first array that ``save`` would write holding NaN or infinity (a diverged model: weights,
    buffers or optimizer state), or None.  ``load`` refuses such files, so ``save`` refuses to write them."""
    _, arrays = snapshot(model, include_optimizer)
    return _first_nonfinite(arrays)


def _first_nonfinite(arrays):
    for k, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return k
    return None


# extensions of other libraries' formats: a fastnn file under one of these names would mislead whoever opens it
FOREIGN_EXTENSIONS = {
    ".keras": "Keras", ".h5": "HDF5 (Keras)", ".hdf5": "HDF5 (Keras)", ".pt": "PyTorch", ".pth": "PyTorch",
    ".onnx": "ONNX", ".pkl": "pickle", ".pickle": "pickle", ".joblib": "joblib", ".safetensors": "safetensors",
    ".tflite": "TensorFlow Lite", ".pb": "TensorFlow",
}


def check_extension(path: str | os.PathLike[str], owner: str = "save") -> None:
    """Refuse (ValueError naming `owner`) a path whose extension is another library's format (``FOREIGN_EXTENSIONS``:
    ".keras", ".h5", ".pt", ".onnx", ".pkl", ...): fastnn writes its own format (an ``.npz``; ".fnn" by
    convention, ".npz" or any other name, with or without an extension, are fine)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    fmt = FOREIGN_EXTENSIONS.get(ext)
    if fmt is None:
        return
    hint = ("; to write ONNX, use fnn.onnx.export(model, path)" if ext == ".onnx"
            else "; fastnn cannot write that format")
    raise ValueError(f"{owner}: {os.fspath(path)!r} has the extension {ext!r} of the {fmt} format, but fastnn "
                     f"saves its own format (a zip of .npy arrays with a JSON header, read by fnn.load): name the "
                     f"file '.fnn' (or '.npz'){hint}")


def save(model: Model, path: str | os.PathLike[str], include_optimizer: bool = True) -> None:
    """Write `model` to `path` atomically (see the module docstring for the format): ``snapshot``, the
    checksums, then the atomic write.  A model holding NaN or infinity (``nonfinite_array``) is refused with a
    ValueError before anything is written, as ``load`` would refuse the file.  So is a path with another
    library's extension (``check_extension``: ".keras", ".h5", ".pt", ".onnx", ".pkl", ...)."""
    from fastnn import schedules as _schedules
    check_extension(path, "save")
    header, arrays = snapshot(model, include_optimizer)
    bad = _first_nonfinite(arrays)
    if bad is not None:
        raise ValueError(f"save: array {bad!r} of {model.name} holds NaN or infinity (the model diverged); "
                         f"nothing was written to {os.fspath(path)!r} (load refuses such files)")
    if model.loss is not None and model.lr_schedule is not None and header["training"]["lr_schedule"] is None:
        raise ValueError(f"save: the lr_schedule {model.lr_schedule!r} is not made of fastnn.schedules classes "
                         f"({sorted(_schedules.CLASSES)}), so it cannot be saved")
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str,
                            "sha256": hashlib.sha256(v.tobytes()).hexdigest()} for k, v in arrays.items()}
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    _atomic_savez(os.fspath(path), {HEADER_KEY: blob, **arrays})


def clone(model: Model) -> Model:
    """An independent copy of a built model: ``build(snapshot(model))`` in memory.

    The copy has the same architecture (layer names, configs, ``trainable`` flags), weights, layer buffers,
    dtype, loss, optimizer with its state and step count, clipping, learning-rate schedule (a copy), NaN-guard
    setting, generator states (initialization, shuffling, random layers, a SampledSoftmax loss's own sampler),
    ``epochs_trained`` and mode; it shares no memory with `model`.  Training one leaves the other unchanged,
    and both, trained the same way from here, give the same weights (bitwise with one thread).
    """
    header, arrays = snapshot(model, include_optimizer=True, owner="clone")
    new = build(copy.deepcopy(header), arrays, compile=True)
    new.clip_norm, new.clip_value = model.clip_norm, model.clip_value
    new.lr_schedule = copy.deepcopy(model.lr_schedule)
    new.trainer.base_lr = model.trainer.base_lr
    new.trainer.compiled_plan = model.trainer.compiled_plan
    new.training = model.training
    old_sampled, new_sampled = model.trainer.sampled, new.trainer.sampled
    if old_sampled is not None and new_sampled is not None and old_sampled.rng is not None:
        new_sampled.rng.bit_generator.state = copy.deepcopy(old_sampled.rng.bit_generator.state)
    return new


TMP_SUFFIX = ".fastnn-tmp"     # temporaries are ".<target name>.<pid>.<random>.fastnn-tmp" beside the target


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except PermissionError:       # another user's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def _remove_stale_temporaries(directory, base):
    """Remove the temporaries of earlier saves to the same target whose process is gone (a ``kill -9`` or
    power loss between the write and the rename); a live process's (another save in progress) stays."""
    prefix = f".{base}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for name in entries:
        if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(TMP_SUFFIX)].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _atomic_savez(path, arrays):
    """Write the .npz atomically: a temporary beside the target, flushed and fsync'ed, then renamed onto it.
    Through a symlink, the link's target is written (the link stays).  The file gets the mode of the file it
    replaces, or a new file's (0666 less the umask, applied by the kernel when it is created)."""
    target = os.path.realpath(path)
    d, base = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    _remove_stale_temporaries(d, base)
    while True:
        tmp = os.path.join(d, f".{base}.{os.getpid()}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:   # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- load
def _bad(path, why):
    return ValueError(f"load: {path!r} is not a valid fastnn model file: {why}")


# Bounds on the header's numbers: what a real model can hold, far below what breaks the arithmetic that uses
# them (the optimizer's bias corrections, Python ints passed to C, numpy's allocation sizes).
MAX_COUNT = 2 ** 53           # step_count, epochs_trained: exact in a double
MAX_DIM = 2 ** 31 - 1         # one dimension of an input shape or an array
_DTYPES = ("float32", "float64")
_HEX = frozenset("0123456789abcdef")


def _field_error(field, want, value):
    text = repr(value)
    return ValueError(f"header field {field} must be {want}, got {text[:80]}{'...' if len(text) > 80 else ''}")


def _int_field(field, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _field_error(field, f"an integer in [{low}, {high}]", value)
    return value


def _number_field(field, value, low=0.0, low_open=False):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(float(value))
            or (value <= low if low_open else value < low)):
        raise _field_error(field, f"a finite number {'>' if low_open else '>='} {low}", value)
    return value


def _typed(field, value, kind, want):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _field_error(field, want, value)
    return value


def _check_rng(field, state):
    _typed(field, state, dict, "a PCG64 generator state")
    if state.get("bit_generator") != "PCG64" or set(state) != {"bit_generator", "state", "has_uint32", "uinteger"}:
        raise _field_error(field, "a PCG64 generator state", state)
    inner = _typed(f"{field}.state", state["state"], dict, "an object {state, inc}")
    if set(inner) != {"state", "inc"}:
        raise _field_error(f"{field}.state", "an object {state, inc}", inner)
    _int_field(f"{field}.state.state", inner["state"], 0, 2 ** 128 - 1)
    _int_field(f"{field}.state.inc", inner["inc"], 0, 2 ** 128 - 1)
    _int_field(f"{field}.has_uint32", state["has_uint32"], 0, 1)
    _int_field(f"{field}.uinteger", state["uinteger"], 0, 2 ** 32 - 1)


def check_header(header: Any) -> Header:
    """Check the types and ranges of every value of a model file's JSON header (the module docstring's
    layout); ValueError naming the field (e.g. ``optimizer_state.step_count``) otherwise.  The layer, loss,
    optimizer and schedule configs are checked by their constructors when ``build`` makes them."""
    _typed("(the header)", header, dict, "an object")
    spec = _typed("model", header.get("model"), dict, "an object")
    if spec.get("class") not in ("Sequential", "Model"):
        raise _field_error("model.class", "'Sequential' or 'Model'", spec.get("class"))
    if not isinstance(spec.get("name"), str) or len(spec["name"]) > 4096:
        raise _field_error("model.name", "a string", spec.get("name"))
    if spec.get("seed") is not None:
        _int_field("model.seed", spec.get("seed"), 0, 2 ** 128 - 1)
    if spec.get("dtype") not in _DTYPES:
        raise _field_error("model.dtype", "'float32' or 'float64'", spec.get("dtype"))
    shape = _typed("model.input_shape", spec.get("input_shape"), list, "a list")
    if not 1 <= len(shape) <= 32:
        raise _field_error("model.input_shape", "a list of 1 to 32 dimensions", shape)
    for d in shape:
        if d is not None:
            _int_field("model.input_shape[]", d, 1, MAX_DIM)
    nodes = _typed("model.nodes", spec.get("nodes"), list, "a list")
    for i, node in enumerate(nodes):
        f = f"model.nodes[{i}]"
        _typed(f, node, dict, "an object {class, config, inputs}")
        _typed(f"{f}.class", node.get("class"), str, "a layer class name")
        _typed(f"{f}.config", node.get("config"), dict, "an object")
        inputs = _typed(f"{f}.inputs", node.get("inputs"), list, "a list")
        if not inputs:
            raise _field_error(f"{f}.inputs", "a non-empty list", inputs)
        for s in inputs:
            _int_field(f"{f}.inputs[]", s, -1, i - 1)
        outs = node.get("outputs")
        if outs is not None:
            _typed(f"{f}.outputs", outs, list, "a list")
            if len(outs) != len(inputs):
                raise _field_error(f"{f}.outputs", f"a list of {len(inputs)} output indices or nulls", outs)
            for k in outs:
                if k is not None:
                    _int_field(f"{f}.outputs[]", k, 0, 1024)
    if spec.get("output_index") is not None:
        _int_field("model.output_index", spec.get("output_index"), 0, 1024)
    for key in ("loss", "optimizer"):
        cfg = header.get(key)
        if cfg is not None:
            _typed(key, cfg, dict, "an object or null")
            _typed(f"{key}.name", cfg.get("name"), str, "a name")
    st = header.get("optimizer_state")
    if st is not None:
        _typed("optimizer_state", st, dict, "an object or null")
        _int_field("optimizer_state.step_count", st.get("step_count"), 0, MAX_COUNT)
        names = _typed("optimizer_state.names", st.get("names"), list, "a list of state names")
        if any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise _field_error("optimizer_state.names", "a list of distinct state names", names)
    training = _typed("training", header.get("training"), dict, "an object")
    _int_field("training.epochs_trained", training.get("epochs_trained"), 0, MAX_COUNT)
    _typed("training.nan_guard", training.get("nan_guard"), bool, "true or false")
    if training.get("clip_norm") is not None:
        _number_field("training.clip_norm", training["clip_norm"])
    if training.get("clip_value") is not None:
        _number_field("training.clip_value", training["clip_value"], low_open=True)
    if training.get("base_lr") is not None:
        _number_field("training.base_lr", training["base_lr"])
    sched, depth = training.get("lr_schedule"), 0
    while sched is not None:
        _typed("training.lr_schedule", sched, dict, "a schedule config or null")
        _typed("training.lr_schedule.name", sched.get("name"), str, "a schedule name")
        depth += 1
        if depth > 16:
            raise _field_error("training.lr_schedule", "at most 16 nested schedules", "...")
        sched = sched.get("after")
    rng = _typed("rng", header.get("rng"), dict, "an object {init, shuffle, layer}")
    for key in ("init", "shuffle", "layer"):
        _check_rng(f"rng.{key}", rng.get(key))
    meta = _typed("arrays", header.get("arrays"), dict, "an object")
    for key, m in meta.items():
        f = f"arrays[{key!r}]"
        _typed(f, m, dict, "an object {shape, dtype, sha256}")
        shape = _typed(f"{f}.shape", m.get("shape"), list, "a list")
        if len(shape) > 32:
            raise _field_error(f"{f}.shape", "a list of at most 32 dimensions", shape)
        for d in shape:
            _int_field(f"{f}.shape[]", d, 0, MAX_DIM)
        if m.get("dtype") not in ("<f4", "<f8"):
            raise _field_error(f"{f}.dtype", "'<f4' or '<f8'", m.get("dtype"))
        sha = m.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _HEX:
            raise _field_error(f"{f}.sha256", "a SHA-256 hex digest", sha)
    return header


MAX_HEADER_BYTES = 64 << 20   # the JSON header member
_CHUNK = 1 << 20


def _npy_header(f):
    """(shape, fortran_order, dtype) of a .npy stream, reading only its header (bounded by numpy)."""
    from numpy.lib import format as npf
    major, _ = npf.read_magic(f)
    if major == 1:
        return npf.read_array_header_1_0(f)
    if major == 2:
        return npf.read_array_header_2_0(f)
    raise ValueError(f".npy version {major}")


def _read_member(zf, info, shape, dtype, path, key, offset):
    """The array of one .npy member, read into a new array of the declared shape and dtype: at most the bytes
    it needs are decompressed, a member whose data is longer or shorter than declared is refused, and the
    zip CRC is checked when the member's end is reached."""
    a = np.empty(shape, dtype=dtype)
    flat = a.reshape(-1).view(np.uint8)
    with zf.open(info) as f:
        if len(f.read(offset)) != offset:      # the .npy header, parsed before
            raise _bad(path, f"array {key!r} is truncated")
        pos, n = 0, flat.size
        while pos < n:
            chunk = f.read(min(_CHUNK, n - pos))
            if not chunk:
                raise _bad(path, f"array {key!r} is shorter than its declared shape {list(shape)}")
            flat[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
        if f.read(1):
            raise _bad(path, f"array {key!r} holds more data than its declared shape {list(shape)}")
    return a


def read(path: str | os.PathLike[str]) -> tuple[Header, Arrays]:
    """(header dict, {key: array}) from a model file, with every check on the container done (magic bytes, no
    pickle, header format, version and values, each member's declared shape and dtype, CRCs, each array's
    checksum); ValueError otherwise.  The header is read and checked first, then each array is read into an
    array of the size the header declares, decompressing no more than that: a file costs what it declares."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise _bad(path, "not a fastnn .npz archive (wrong magic bytes; foreign or truncated file)")
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_zip(zf, path)
    except ValueError:
        raise
    except Exception as exc:   # BadZipFile (CRC), zlib/struct errors, EOF: a truncated or corrupted archive
        raise _bad(path, f"corrupted or truncated archive ({type(exc).__name__}: {exc})") from None


def _read_zip(zf, path):
    infos = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy") or info.filename[:-4] in infos:
            raise _bad(path, f"unexpected or repeated member {info.filename!r}")
        infos[info.filename[:-4]] = info
    npy = {}
    for key, info in infos.items():      # every member's .npy header first: no pickle, whatever else is wrong
        with zf.open(info) as f:
            try:
                shape, fortran, dtype = _npy_header(f)
                offset = f.tell()
            except ValueError as exc:
                raise _bad(path, f"array {key!r} has an unreadable .npy header ({exc})") from None
        if dtype.hasobject:
            raise _bad(path, "it holds pickled objects, which fastnn never loads")
        if fortran and len(shape) > 1:
            raise _bad(path, f"array {key!r} is in Fortran order, which fastnn never writes")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != offset + nbytes:      # the zip's own record of the member's size
            raise _bad(path, f"array {key!r} declares {nbytes} bytes of data, its zip member holds "
                             f"{info.file_size - offset}")
        npy[key] = (tuple(shape), dtype, offset)
    if HEADER_KEY not in infos:
        raise _bad(path, "no fastnn header (a foreign .npz)")
    shape, dtype, offset = npy.pop(HEADER_KEY)
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
        raise _bad(path, "malformed header")
    blob = _read_member(zf, infos[HEADER_KEY], shape, dtype, path, HEADER_KEY, offset)
    try:
        header = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"malformed JSON header ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, "the header is not a fastnn model header")
    if header.get("version") != VERSION:
        raise ValueError(f"load: {path!r} has fastnn format version {header.get('version')!r}; this fastnn "
                         f"reads version {VERSION}")
    try:
        check_header(header)
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    meta = header["arrays"]
    if set(meta) != set(npy):
        raise _bad(path, "the arrays do not match the header's list")
    for k, (shape, dtype, _) in npy.items():
        if list(shape) != meta[k]["shape"] or dtype.str != meta[k]["dtype"]:
            raise _bad(path, f"array {k!r} does not match its checksum, shape or dtype")
    arrays = {}
    for k, (shape, dtype, offset) in npy.items():
        a = _read_member(zf, infos[k], shape, dtype, path, k, offset)
        if hashlib.sha256(a.data).hexdigest() != meta[k]["sha256"]:
            raise _bad(path, f"array {k!r} does not match its checksum, shape or dtype")
        arrays[k] = a
    return header, arrays


def load(path: str | os.PathLike[str], compile: bool = True) -> Model:
    """A model from a file written by ``model.save`` (or a ModelCheckpoint): the same layers, weights,
    buffers, dtype, loss, optimizer with its state, generator states and ``epochs_trained``.

    Args:
        compile: restore the loss and optimizer (when saved); False loads an uncompiled model.

    Raises ValueError for anything that is not a valid file of this format version (see fastnn.io).
    """
    path = os.fspath(path)
    header, arrays = read(path)
    try:
        return build(header, arrays, compile)
    except ValueError as exc:
        raise ValueError(f"load: {path!r}: {exc}") from None
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        raise ValueError(f"load: {path!r}: invalid model description ({type(exc).__name__}: {exc})") from None


def _restore_rng(gen, state):
    if not isinstance(state, dict) or state.get("bit_generator") != type(gen.bit_generator).__name__:
        raise ValueError("invalid generator state")
    gen.bit_generator.state = state


def _check_param_shapes(layers, arrays):
    """Every parameter the layers (built for their input shapes, nothing allocated yet) will need has an array
    of its shape: the model's buffers are then no larger than the arrays given (a file's declared layer sizes
    are checked against what it stores before anything of that size is allocated)."""
    for i, layer in enumerate(layers):
        for spec in layer.param_specs():
            key = f"param/{i}/{spec.name}"
            a = arrays.get(key)
            if a is None:
                raise ValueError(f"array {key!r} is missing")
            if any(d is None for d in spec.shape):
                continue            # the model refuses a variable axis in a parameter before allocating
            if tuple(a.shape) != tuple(int(d) for d in spec.shape):
                raise ValueError(f"node {i} ({type(layer).__name__}): parameter {spec.name!r} needs shape "
                                 f"{tuple(int(d) for d in spec.shape)}, the array {key!r} has {tuple(a.shape)}")


def build(header: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], compile: bool = True) -> Model:
    """A new model from (header, arrays) as ``snapshot`` makes them or ``read`` returns them: the layers are
    rebuilt from the registry and their configs, the arrays are copied into the new model's buffers (it shares
    no memory with them), and with `compile` the loss and optimizer (with its state) are restored.  Raises
    ValueError (or TypeError / KeyError for a malformed header, which ``load`` reports as ValueError) when
    they do not describe a model; nothing is returned half-built."""
    from fastnn import losses as _losses
    from fastnn import optim as _optim
    from fastnn import schedules as _schedules
    from fastnn.graph import Input, Tensor
    from fastnn.layers import REGISTRY
    from fastnn.model import Model, Sequential
    spec = header["model"]
    kind = spec["class"]
    if kind not in ("Sequential", "Model"):
        raise ValueError(f"unknown model class {kind!r}")
    nodes = spec["nodes"]
    layers: list[Any]                 # the Layer of each node, None until made
    in_block: set[int]
    layers, in_block, trainable = [None] * len(nodes), set(), [True] * len(nodes)

    def make(i, seen=()):
        """The layer of node i, a Residual made with the layers of its block's nodes (made first)."""
        if layers[i] is not None:
            return layers[i]
        node = nodes[i]
        cls = REGISTRY.get(node["class"])
        if cls is None:
            raise ValueError(f"node {i}: unknown layer class {node['class']!r} (known: {sorted(REGISTRY)})")
        if not isinstance(node["config"], dict):
            raise ValueError(f"node {i}: the layer config must be an object")
        config = dict(node["config"])
        flag = config.pop("trainable", True)
        if not isinstance(flag, bool):
            raise ValueError(f"node {i}: trainable must be true or false, got {flag!r}")
        trainable[i] = flag
        try:
            key = cls.sublayers_key
            if key is not None and isinstance(config.get(key), dict):
                refs = config.pop(key).get("nodes")
                if (not isinstance(refs, list) or not refs or
                        any(not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < i or j in seen or
                            j in in_block for j in refs)):
                    raise ValueError(f"{key} must list earlier nodes once, got {refs!r}")
                in_block.update(refs)
                layers[i] = cls(**{key: [make(j, seen + (i,)) for j in refs]}, **config)
            else:
                layers[i] = cls.from_config(config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"node {i}: invalid {node['class']} config ({exc})") from None
        return layers[i]

    for i in range(len(nodes)):
        make(i)
    # containers come after their block's nodes: set them first (a container's flag propagates to its block),
    # then each block layer its own flag
    for i in reversed(range(len(nodes))):
        layers[i].trainable = trainable[i]
    input_shape = tuple(None if d is None else int(d) for d in spec["input_shape"])
    seed, dtype, name = spec["seed"], spec["dtype"], spec["name"]
    model: Model
    if kind == "Sequential":
        # the user's list: every node that is not inside a Residual's block (which expands it again)
        top = [layer for i, layer in enumerate(layers) if i not in in_block]
        x = Input(input_shape)
        for layer in top:         # shapes only: the arrays are checked before the model allocates its buffers
            x = layer(x)
        _check_param_shapes(layers, arrays)
        for layer in layers:
            layer._in_graph = False
        model = Sequential(top, input_dim=input_shape, seed=seed, dtype=dtype, name=name)
    else:
        x = Input(input_shape)
        tensors: list[Any] = []       # the output of each node: a Tensor, or a list of them
        for i, (layer, node) in enumerate(zip(layers, nodes)):
            srcs = [int(s) for s in node["inputs"]]
            if not srcs or any(s < -1 or s >= i for s in srcs):
                raise ValueError(f"node {i}: inputs {srcs} must name earlier nodes")
            outs = node.get("outputs") or [None] * len(srcs)
            ins = []
            for s, k in zip(srcs, outs):
                t: Any = x if s < 0 else tensors[s]      # a Tensor, or a multi-output node's list
                if isinstance(t, list) != (k is not None) or (k is not None and k >= len(t)):
                    raise ValueError(f"node {i}: input {s} output {k} does not match node {s}'s outputs")
                ins.append(t if k is None else t[k])
            if layer.sublayers():      # a container (Residual): its sublayers' nodes are already in the graph
                tensors.append(Tensor.from_layer(layer, ins))
            else:
                tensors.append(layer.call_on(ins))
        _check_param_shapes(layers, arrays)
        out = tensors[-1]
        k = spec.get("output_index")
        if isinstance(out, list) != (k is not None) or (k is not None and k >= len(out)):
            raise ValueError(f"model.output_index {k} does not match the last node's outputs")
        model = Model(x, out if k is None else out[k], seed=seed, dtype=dtype, name=name)
    # the rebuilt graph must run the nodes in the saved order
    if [type(layer).__name__ for layer in _nodes(model)] != [n["class"] for n in spec["nodes"]] or \
            [list(src) for _, src in model.graph.nodes] != [list(n["inputs"]) for n in spec["nodes"]] or \
            [list(p) if p is not None else None for p in model.graph.picks] != \
            [n.get("outputs") for n in spec["nodes"]]:
        raise ValueError("the rebuilt graph does not match the saved node order")

    used = set()

    def take(key, like):
        a = arrays.get(key)
        if a is None:
            raise ValueError(f"array {key!r} is missing")
        if a.shape != like.shape or a.dtype != like.dtype:
            raise ValueError(f"array {key!r} has shape {a.shape} {a.dtype}, expected {like.shape} {like.dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"array {key!r} holds NaN or infinity")
        used.add(key)
        return a

    for i, layer in enumerate(_nodes(model)):
        for pname, view in layer.params.items():
            view[...] = take(f"param/{i}/{pname}", view)
        for bname, buf in layer.buffers.items():
            np.copyto(buf, take(f"buffer/{i}/{bname}", np.asarray(buf)))

    if compile and header.get("loss") is not None:
        loss = _losses.from_config(header["loss"])
        opt = None
        ocfg = header.get("optimizer")
        if ocfg is not None:
            ocfg = dict(ocfg)
            ocls = _optim.REGISTRY.get(str(ocfg.pop("name")).lower())
            if ocls is None:
                raise ValueError(f"unknown optimizer {header['optimizer']['name']!r}")
            if "betas" in ocfg:
                ocfg["betas"] = tuple(ocfg["betas"])
            opt = ocls(**ocfg)
        training = header.get("training", {})
        schedule = training.get("lr_schedule")
        if schedule is not None:
            try:
                schedule = _schedules.from_config(schedule)
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"training.lr_schedule: invalid schedule config ({exc})") from None
        model.compile(loss, opt if opt is not None else "adam", clip_norm=training.get("clip_norm"),
                      clip_value=training.get("clip_value"), lr_schedule=schedule,
                      nan_guard=bool(training.get("nan_guard", True)))
        if training.get("base_lr") is not None:
            # the optimizer's lr is the scheduled one of the last epoch; the schedule's base is compile's lr
            model.trainer.base_lr = float(training["base_lr"])
        st = header.get("optimizer_state")
        if opt is not None and st is not None:
            if sorted(opt.state) != sorted(st["names"]):
                raise ValueError(f"optimizer state {st['names']} does not match {type(opt).__name__}'s "
                                 f"{sorted(opt.state)}")
            table = model.table
            for sname, flat in opt.state.items():
                for i, layer in enumerate(_nodes(model)):
                    for r in table.rows_of(layer):
                        key = f"optim/{sname}/{i}/{r.name}"
                        if key not in arrays:
                            # frozen when saved (the flag was changed and not compiled before the save), trainable
                            # now: fresh state, as at a compile that unfreezes it
                            continue
                        a = take(key, layer.params[r.name])
                        if r.trainable:  # (saved trainable, frozen now: no state to keep)
                            table.view(flat, r)[...] = a
            opt.step_count = int(st["step_count"])
    else:
        used.update(k for k in arrays if k.startswith("optim/"))
    extra = set(arrays) - used
    if extra:
        raise ValueError(f"arrays {sorted(extra)[:3]} do not belong to the saved architecture")
    training = header.get("training", {})
    model.epochs_trained = int(training.get("epochs_trained", 0))
    rng = header["rng"]
    _restore_rng(model.init_rng, rng["init"])
    _restore_rng(model.rng, rng["shuffle"])
    _restore_rng(model.layer_rng, rng["layer"])
    return model
