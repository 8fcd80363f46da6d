"""Model files that a hostile (or broken) writer made: every header value checked with an error naming the
field, sizes checked before anything is allocated, decompression bounded, load linear in the layers; and what
``save`` writes, ``load`` reads back, with the permissions and links of a normal file write."""
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import fastnn as fnn
from fastnn import io as fio


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n)


@pytest.fixture
def saved(tmp_path):
    m = fnn.Sequential([fnn.layers.Dense(6, activation="relu"), fnn.layers.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    m.fit(*_data(), epochs=1)
    path = tmp_path / "m.fnn"
    m.save(path)
    return m, path


def _members(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write(out, arrays):
    with open(out, "wb") as f:
        np.savez(f, **arrays)


def _rewrite_header(path, out, edit):
    arrays = _members(path)
    header = json.loads(arrays["__fastnn__"].tobytes())
    edit(header)
    arrays["__fastnn__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    _write(out, arrays)


def _set(*keys_value):
    *keys, value = keys_value

    def edit(h):
        d = h
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


# ------------------------------------------------------------------------------------------- defect 10
BAD_FIELDS = [
    (("optimizer_state", "step_count", -1), "optimizer_state.step_count"),
    (("optimizer_state", "step_count", 10 ** 30), "optimizer_state.step_count"),
    (("optimizer_state", "step_count", 1.5), "optimizer_state.step_count"),
    (("optimizer_state", "step_count", True), "optimizer_state.step_count"),
    (("optimizer_state", "names", "exp_avg"), "optimizer_state.names"),
    (("training", "epochs_trained", -3), "training.epochs_trained"),
    (("training", "epochs_trained", 10 ** 30), "training.epochs_trained"),
    (("training", "nan_guard", "yes"), "training.nan_guard"),
    (("model", "seed", -1), "model.seed"),
    (("model", "seed", "0"), "model.seed"),
    (("model", "dtype", "int8"), "model.dtype"),
    (("model", "name", 7), "model.name"),
    (("model", "input_shape", [0]), "model.input_shape"),
    (("model", "input_shape", [10 ** 12]), "model.input_shape"),
    (("model", "input_shape", "5"), "model.input_shape"),
    (("model", "nodes", {}), "model.nodes"),
    (("model", "class", "Evil"), "model.class"),
    (("rng", "init", {"bit_generator": "MT19937"}), "rng.init"),
    (("rng", "shuffle", "state", "state", -1), "rng.shuffle.state.state"),
    (("rng", "layer", "has_uint32", 7), "rng.layer.has_uint32"),
    (("loss", "name", 3), "loss.name"),
    (("optimizer", []), "optimizer"),
]


@pytest.mark.parametrize("edit,field", BAD_FIELDS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_FIELDS)])
def test_every_header_value_is_checked(saved, tmp_path, edit, field):
    _, path = saved
    p = tmp_path / "bad.fnn"
    _rewrite_header(path, p, _set(*edit))
    with pytest.raises(ValueError, match=f"header field {field.replace('.', '[.]')}"):
        fnn.load(p)


def test_node_inputs_and_array_metadata_are_checked(saved, tmp_path):
    _, path = saved
    p = tmp_path / "bad.fnn"
    _rewrite_header(path, p, lambda h: h["model"]["nodes"][1].update({"inputs": [5]}))
    with pytest.raises(ValueError, match=r"header field model\.nodes\[1\]\.inputs"):
        fnn.load(p)
    _rewrite_header(path, p, lambda h: h["arrays"]["param/0/weight"].update({"shape": [-1, 5]}))
    with pytest.raises(ValueError, match=r"header field arrays\['param/0/weight'\]\.shape"):
        fnn.load(p)
    _rewrite_header(path, p, lambda h: h["arrays"]["param/0/weight"].update({"dtype": "|O"}))
    with pytest.raises(ValueError, match=r"header field arrays\['param/0/weight'\]\.dtype"):
        fnn.load(p)


def test_a_valid_step_count_still_trains(saved, tmp_path):
    _, path = saved
    p = tmp_path / "ok.fnn"
    _rewrite_header(path, p, _set("optimizer_state", "step_count", 1000))
    m = fnn.load(p)
    assert m.optimizer.step_count == 1000
    m.fit(*_data(), epochs=1)
    assert np.isfinite(m.parameters).all()
