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


# ------------------------------------------------------------------------------------------- defect 8
def _resume_model():
    L = fnn.layers
    return fnn.Sequential([L.Dense(8, activation="tanh"), L.Dropout(0.2), L.Dense(3)], input_dim=5, seed=3,
                          dtype="float64")


RESUME_CASES = [
    ("cosine-clip-norm", lambda: fnn.schedules.Cosine(total_epochs=6, eta_min=1e-3), 0.5, None),
    ("step-clip-value", lambda: fnn.schedules.Step(step_size=2, gamma=0.5), None, 0.05),
    ("warmup-per-step", lambda: fnn.schedules.LinearWarmup(
        7, after=fnn.schedules.Exponential(0.97, per_step=True), per_step=True), 1.0, 0.2),
]


@pytest.mark.parametrize("name,schedule,clip_norm,clip_value", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_from_a_checkpoint_is_faithful(tmp_path, restore_threads, name, schedule, clip_norm, clip_value):
    """ModelCheckpoint's recipe: a run saved after epoch k, loaded and continued with initial_epoch gives the
    weights of the run that was never interrupted (float64, one thread: bitwise)."""
    fnn.set_num_threads(1)
    X, y = _data(60)
    kw = dict(batch_size=16)

    def compiled():
        m = _resume_model()
        m.compile("cross_entropy", fnn.optim.Adam(lr=0.05), clip_norm=clip_norm, clip_value=clip_value,
                  lr_schedule=schedule())
        return m

    whole = compiled()
    whole.fit(X, y, epochs=6, **kw)
    part = compiled()
    ckpt = fnn.callbacks.ModelCheckpoint(tmp_path / "ckpt.fnn")
    part.fit(X, y, epochs=3, callbacks=[ckpt], **kw)
    resumed = fnn.load(ckpt.last_path)
    assert (resumed.clip_norm, resumed.clip_value) == (clip_norm, clip_value)
    assert resumed.lr_schedule.get_config() == part.lr_schedule.get_config()
    assert resumed.trainer.base_lr == 0.05 and resumed.optimizer.lr == part.optimizer.lr
    resumed.fit(X, y, epochs=6, initial_epoch=resumed.epochs_trained, **kw)
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)


def test_a_schedule_that_cannot_be_saved_is_refused(tmp_path):
    class Half(fnn.schedules.Schedule):
        def _lr(self, t, base_lr):
            return base_lr / 2

    m = _resume_model()
    m.compile("mse", "sgd", lr_schedule=Half())
    with pytest.raises(ValueError, match="lr_schedule .* cannot be saved"):
        m.save(tmp_path / "m.fnn")
    assert not os.path.exists(tmp_path / "m.fnn")
    assert m.clone().lr_schedule is not None          # in memory, any schedule is copied


@pytest.mark.parametrize("edit,field", [
    (("training", "clip_norm", -1.0), "training.clip_norm"),
    (("training", "clip_value", 0), "training.clip_value"),
    (("training", "base_lr", float("nan")), "training.base_lr"),
    (("training", "lr_schedule", "Cosine"), "training.lr_schedule"),
])
def test_training_options_in_the_header_are_checked(saved, tmp_path, edit, field):
    _, path = saved
    p = tmp_path / "bad.fnn"
    _rewrite_header(path, p, _set(*edit))
    with pytest.raises(ValueError, match=f"header field {field.replace('.', '[.]')}"):
        fnn.load(p)
    _rewrite_header(path, p, _set("training", "lr_schedule", {"name": "Cosine", "total_epochs": -1}))
    with pytest.raises(ValueError, match="training.lr_schedule: invalid"):
        fnn.load(p)


# ------------------------------------------------------------------------------------------- defect 7
class _Diverge(fnn.callbacks.Callback):
    """Makes the model diverge at the start of epoch `at` (0-based), as a huge step with the guard off does."""

    def __init__(self, at, where="parameters"):
        self.at, self.where = at, where

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            if self.where == "parameters":
                self.model.parameters[3] = np.nan
            else:
                self.model.layers[1].buffers["running_var"][0] = np.inf


@pytest.mark.parametrize("where", ["parameters", "buffers"])
def test_save_refuses_what_load_would_refuse(tmp_path, where):
    L = fnn.layers
    m = fnn.Sequential([L.Dense(6), L.BatchNorm(), L.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", "adam", nan_guard=False)
    X, y = _data()
    path = tmp_path / "m.fnn"
    m.save(path)
    good = path.read_bytes()
    m.fit(X, y, epochs=1, callbacks=[_Diverge(0, where)])
    with pytest.raises(ValueError, match="holds NaN or infinity .* nothing was written"):
        m.save(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["m.fnn"]
    with pytest.raises(ValueError, match="holds NaN or infinity"):
        m.save(tmp_path / "new.fnn")
    assert not os.path.exists(tmp_path / "new.fnn")
    fnn.load(path)


def test_model_checkpoint_keeps_the_last_loadable_file(tmp_path):
    m = fnn.Sequential([fnn.layers.Dense(6), fnn.layers.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", "adam", nan_guard=False)
    X, y = _data()
    path = tmp_path / "ckpt.fnn"
    ckpt = fnn.callbacks.ModelCheckpoint(path)
    m.fit(X, y, epochs=2, callbacks=[ckpt])
    weights = m.parameters.copy()
    with pytest.warns(RuntimeWarning, match="NaN or infinity .* not written"):
        m.fit(X, y, epochs=4, initial_epoch=2, callbacks=[_Diverge(2), ckpt])
    assert ckpt.last_path == os.fspath(path)
    back = fnn.load(path)
    np.testing.assert_array_equal(back.parameters, weights)
    assert back.epochs_trained == 2


# ------------------------------------------------------------------------------------------- defect 11
def _small():
    return fnn.Sequential([fnn.layers.Dense(3)], input_dim=5, seed=0)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    _small().save(tmp_path / "m.fnn")
    assert stat.S_IMODE(os.stat(tmp_path / "m.fnn").st_mode) == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "m.fnn"
    _small().save(path)
    os.chmod(path, 0o640)
    _small().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symlinks")
def test_saving_through_a_symlink_writes_its_target(tmp_path):
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    target = real_dir / "model-v1.fnn"
    link = tmp_path / "latest.fnn"
    os.symlink(target, link)                           # dangling at first: the save creates the target
    a, b = _small(), fnn.Sequential([fnn.layers.Dense(3)], input_dim=5, seed=1)
    a.save(link)
    assert os.path.islink(link) and target.is_file()
    b.save(link)
    assert os.path.islink(link) and os.readlink(link) == os.fspath(target)
    np.testing.assert_array_equal(fnn.load(target).parameters, b.parameters)
    assert sorted(os.listdir(tmp_path)) == ["latest.fnn", "store"] and os.listdir(real_dir) == ["model-v1.fnn"]


_KILLED_SAVE = """
import os, signal, sys
import fastnn as fnn
def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)            # kill -9 between the write and the rename
os.replace = die
fnn.Sequential([fnn.layers.Dense(3)], input_dim=5, seed=1).save(sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="kill -9")
def test_a_temporary_left_by_kill_9_is_removed_by_the_next_save(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "m.fnn"
    _small().save(path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(
        fnn.__file__)), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, os.fspath(path)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = [n for n in os.listdir(tmp_path) if n != "m.fnn"]
    assert len(left) == 1 and left[0].startswith(".m.fnn.") and left[0].endswith(fio.TMP_SUFFIX)
    assert path.read_bytes() == before                 # the old file is intact
    # a temporary of a live process (a save in progress elsewhere) and another target's are left alone
    live = tmp_path / f".m.fnn.{os.getppid()}.abc{fio.TMP_SUFFIX}"
    other = tmp_path / f".other.fnn.999999999.abc{fio.TMP_SUFFIX}"
    live.write_bytes(b"x")
    other.write_bytes(b"x")
    _small().save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.fnn", live.name, other.name])


# ------------------------------------------------------------------------------------------- defect 9
def _peak_bytes(fn):
    """Peak memory traced while fn() runs (numpy reports its array buffers to tracemalloc)."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("units", [5_000_000, 10 ** 12])
def test_declared_layer_sizes_are_checked_before_allocating(saved, tmp_path, units):
    _, path = saved
    p = tmp_path / "big.fnn"
    _rewrite_header(path, p, lambda h: h["model"]["nodes"][1]["config"].update({"units": units}))
    assert p.stat().st_size < 16 << 10

    def load():
        with pytest.raises(ValueError, match=r"node 1 \(Dense\): parameter 'weight' needs shape \(6, "):
            fnn.load(p)
    assert _peak_bytes(load) < 8 << 20                # Dense(5_000_000) alone would be 114 MiB


def _bomb(path, out, key, extra):
    """`path` with member `key` followed by `extra` bytes of zeros: a small deflate member that expands to far
    more than its header declares (its zip CRC is right)."""
    arrays = _members(path)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            with zf.open(k + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a)
                if k == key:
                    zeros = bytes(1 << 20)
                    for _ in range(extra >> 20):
                        f.write(zeros)


def test_decompression_is_bounded_by_the_declared_sizes(saved, tmp_path):
    m, path = saved
    ok = tmp_path / "deflated.fnn"
    _bomb(path, ok, "param/0/weight", 0)
    np.testing.assert_array_equal(fnn.load(ok).parameters, m.parameters)   # a compressed file is fine
    p = tmp_path / "bomb.fnn"
    _bomb(path, p, "param/0/weight", 48 << 20)
    assert p.stat().st_size < 1 << 20

    def load():
        with pytest.raises(ValueError, match="'param/0/weight' declares 120 bytes of data, its zip member holds "
                                             "50331768"):
            fnn.load(p)
    assert _peak_bytes(load) < 8 << 20
    # a member shorter than its .npy header says, and an unreadable .npy header
    arrays = _members(path)
    with zipfile.ZipFile(p, "w") as zf:
        for k, a in arrays.items():
            data = np.lib.format.header_data_from_array_1_0(a)
            with zf.open(k + ".npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, data)
                f.write(a.tobytes()[:-4] if k == "param/1/bias" else a.tobytes())
    with pytest.raises(ValueError, match="'param/1/bias' declares 12 bytes of data, its zip member holds 8"):
        fnn.load(p)
    # a zip directory that records the declared size while the compressed data holds more: zipfile stops at the
    # recorded size, and the CRC (over all the data) then fails
    _bomb(path, p, "param/0/weight", 8 << 20)
    data = p.read_bytes()
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("param/0/weight.npy")
    for width in (8, 4):                               # zip64 and plain size fields
        data = data.replace(info.file_size.to_bytes(width, "little"),
                            (info.file_size - (8 << 20)).to_bytes(width, "little"))
    p.write_bytes(bytes(data))
    with zipfile.ZipFile(p) as zf:
        assert zf.getinfo("param/0/weight.npy").file_size == info.file_size - (8 << 20)

    def load_lying():
        with pytest.raises(ValueError, match="CRC-32 for file 'param/0/weight.npy'|'param/0/weight' holds more"):
            fnn.load(p)
    assert _peak_bytes(load_lying) < 8 << 20


def test_load_is_linear_in_the_number_of_layers(tmp_path):
    """Function calls (a deterministic measure of the work) grow 4x for 4x the layers (was 11x: quadratic)."""
    import cProfile
    import pstats

    def calls(n):
        m = fnn.Sequential([fnn.layers.Dense(2)] + [fnn.layers.ReLU() for _ in range(n)], input_dim=2, seed=0)
        m.save(tmp_path / f"{n}.fnn")
        prof = cProfile.Profile()
        prof.enable()
        back = fnn.load(tmp_path / f"{n}.fnn")
        prof.disable()
        assert len(back.layers) == n + 1
        return pstats.Stats(prof).total_calls
    assert calls(1200) / calls(300) < 5


def test_deeply_nested_containers_are_a_value_error(tmp_path):
    """A header nesting Residuals thousands deep (each the block of the next) gives a ValueError, not a
    RecursionError."""
    L = fnn.layers
    path = tmp_path / "n.fnn"
    fnn.Sequential([L.Residual(L.Dense(2))], input_dim=2, seed=0).save(path)

    def nest(h):
        nodes = h["model"]["nodes"]
        for i in range(2, 5000):
            nodes.append({"class": "Residual", "config": {**nodes[1]["config"], "name": f"r{i}",
                                                          "block": {"nodes": [i - 1]}}, "inputs": [-1, i - 1]})
    p = tmp_path / "deep.fnn"
    _rewrite_header(path, p, nest)
    with pytest.raises(ValueError, match="invalid model description"):
        fnn.load(p)


def test_model_checkpoint_best_only_keeps_the_best_that_was_written(tmp_path):
    """With save_best_only, an epoch whose model cannot be saved (finite loss, an infinite BatchNorm
    statistic) does not become the best: the next finite improvement over the written one is saved."""
    L = fnn.layers
    m = fnn.Sequential([L.Dense(6), L.BatchNorm(), L.Dense(3)], input_dim=5, seed=0)
    m.compile("cross_entropy", "adam", nan_guard=False)
    X, y = _data()
    ckpt = fnn.callbacks.ModelCheckpoint(tmp_path / "best.fnn", monitor="loss", save_best_only=True)
    m.fit(X, y, epochs=1, callbacks=[ckpt])
    first = ckpt.best
    ckpt.on_epoch_end(1, {"loss": first / 2})           # same weights, a better loss: saved
    assert ckpt.best == first / 2
    m.layers[1].buffers["running_var"][0] = np.inf
    with pytest.warns(RuntimeWarning, match="not written"):
        ckpt.on_epoch_end(2, {"loss": first / 4})
    assert ckpt.best == first / 2
    m.layers[1].buffers["running_var"][0] = 1.0
    ckpt.on_epoch_end(3, {"loss": first / 3})
    assert ckpt.best == first / 3 and fnn.load(tmp_path / "best.fnn").epochs_trained == 1
