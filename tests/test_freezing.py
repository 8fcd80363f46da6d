"""Freezing layers (``layer.trainable = False``, applied at compile, Keras semantics) and strict layer attributes."""
import pickle

import numpy as np
import pytest

import fastnn as fnn
from fastnn import layers as L
from fastnn.layers import Dense

OPTIMIZERS = [
    ("sgd-momentum", lambda: fnn.optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("adam", lambda: fnn.optim.Adam(lr=1e-2)),
    ("adamw-amsgrad", lambda: fnn.optim.AdamW(lr=1e-2, amsgrad=True)),
    ("rmsprop", lambda: fnn.optim.RMSprop(lr=1e-2, momentum=0.5)),
    ("adagrad", lambda: fnn.optim.Adagrad(lr=0.1, initial_accumulator_value=0.1)),
]


def _data(n=96, d=7, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


def _chain(seed=0, dtype="float32"):
    """A chain the compiled plan takes: dense_a, dense_b (the one frozen below), dense_c."""
    return fnn.Sequential([Dense(12, activation="tanh", name="a"), Dense(10, activation="relu", name="b"),
                           Dense(4, activation="softmax", name="c")], input_dim=7, seed=seed, dtype=dtype)


def _snapshot(layer):
    return {k: v.copy() for k, v in layer.params.items()}


def _fit(m, compiled, epochs=2, **kw):
    m.trainer.compiled_plan = compiled
    X, y = _data()
    return m.fit(X, y, epochs=epochs, batch_size=16, **kw)


# ---------------------------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("compiled", [True, False], ids=["plan", "per-layer"])
@pytest.mark.parametrize("opt_id,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_frozen_weights_are_bitwise_unchanged(opt_id, make_opt, compiled):
    m = _chain()
    a, b, c = m.layers
    b.trainable = False
    m.compile("cross_entropy", make_opt())
    before = {l.name: _snapshot(l) for l in m.layers}
    _fit(m, compiled)
    uses_plan = compiled          # every optimizer here runs on the compiled plan
    assert (m.trainer.train_plan is not None) == uses_plan
    for name, arr in b.params.items():
        np.testing.assert_array_equal(arr, before["b"][name])
    for layer in (a, c):          # the trainable layers around it did learn
        assert not np.array_equal(layer.params["weight"], before[layer.name]["weight"])
    # the optimizer's buffers and state cover the trainable parameters only
    n = m.table.n_trainable
    assert n == m.count_params(trainable=True) == m.count_params() - b.weight.size - b.bias.size
    assert m.optimizer._params.size == n and m.trainer.guard_backup.size == n
    for state in m.optimizer.state.values():
        assert state.shape == (n,)
    assert all(r.trainable == (r.layer is not b) for r in m.table.rows)
    assert all(r.offset >= n for r in m.table.rows if not r.trainable)


def test_layout_trainable_decayed_then_trainable_then_frozen():
    m = fnn.Sequential([Dense(4, name="d1"), L.BatchNorm(name="bn"), Dense(3, name="d2")], input_dim=5, seed=0)
    m.layers[0].trainable = False         # built before: the layout follows at compile
    assert m.table.trainable_changed() and m.table.n_trainable == m.count_params()
    m.compile("mse", fnn.optim.SGD(lr=0.1, weight_decay=0.1))
    assert [(r.layer.name, r.name) for r in m.table.rows] == [
        ("d2", "weight"), ("bn", "weight"), ("bn", "bias"), ("d2", "bias"), ("d1", "weight"), ("d1", "bias")]
    assert m.table.n_decay == 12 and m.table.n_trainable == 12 + 4 + 4 + 3
    assert m.optimizer._n_decay == 12
    assert m.table.locate(m.table.n_trainable) == "d1.weight[0, 0]"
    # the initial values do not depend on the flags (drawn in graph order)
    ref = fnn.Sequential([Dense(4), L.BatchNorm(), Dense(3)], input_dim=5, seed=0)
    np.testing.assert_array_equal(m.layers[0].weight, ref.layers[0].weight)
    np.testing.assert_array_equal(m.layers[2].weight, ref.layers[2].weight)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("frozen", ["a", "b", "c", "ac"])
def test_plan_and_per_layer_path_agree_with_frozen_layers(frozen, dtype, restore_threads):
    fnn.set_num_threads(1)
    runs = []
    for compiled in (True, False):
        m = _chain(seed=2, dtype=dtype)
        for layer in m.layers:
            layer.trainable = layer.name not in frozen
        m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2, weight_decay=1e-3), clip_norm=1.0)
        h = _fit(m, compiled, epochs=3)
        assert (m.trainer.train_plan is not None) == compiled
        runs.append((m, h))
    (a, ha), (b, hb) = runs
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=tol, atol=tol)
    for k in b.optimizer.state:
        np.testing.assert_allclose(a.optimizer.state[k], b.optimizer.state[k], rtol=tol, atol=tol)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=tol)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)


def test_a_frozen_middle_layer_passes_gradients_to_earlier_layers():
    m = fnn.Sequential([Dense(8, activation="tanh"), L.BatchNorm(), Dense(8, activation="tanh"), Dense(4)],
                       input_dim=7, seed=1)
    first, bn, middle, last = m.layers
    bn.trainable = middle.trainable = False
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.1))
    w0 = first.weight.copy()
    X, y = _data()
    loss0 = m.evaluate(X, y)["loss"]
    m.fit(X, y, epochs=5, batch_size=16)
    assert not np.array_equal(first.weight, w0)
    assert np.abs(first.weight_grad).sum() > 0
    assert m.evaluate(X, y)["loss"] < loss0


def test_unfreeze_and_compile_resumes_training_with_the_state_carried():
    m = _chain(seed=3)
    a, b, c = m.layers
    b.trainable = False
    opt = fnn.optim.Adam(lr=1e-2)
    m.compile("cross_entropy", opt)
    _fit(m, True)
    state_a = m.table.view(opt.state["exp_avg"], m.table.row(a, "weight")).copy()
    state_c = m.table.view(opt.state["exp_avg_sq"], m.table.row(c, "bias")).copy()
    values = {l.name: _snapshot(l) for l in m.layers}
    steps = opt.step_count
    old_buffer = m.parameters

    b.trainable = True
    with pytest.raises(RuntimeError, match=r"trainable was changed on b .*compile"):
        _fit(m, True)
    with pytest.raises(RuntimeError, match="trainable was changed on b"):
        m.train_on_batch(*_data(n=8))
    m.compile("cross_entropy", opt)         # the same optimizer: its state follows the parameters
    assert m.parameters is not old_buffer and m.table.n_trainable == m.count_params()
    for layer in m.layers:                  # values kept, views rebound
        for k, v in layer.params.items():
            np.testing.assert_array_equal(v, values[layer.name][k])
            assert np.shares_memory(v, m.parameters)
    assert opt.step_count == steps and opt._params is m.parameters
    np.testing.assert_array_equal(m.table.view(opt.state["exp_avg"], m.table.row(a, "weight")), state_a)
    np.testing.assert_array_equal(m.table.view(opt.state["exp_avg_sq"], m.table.row(c, "bias")), state_c)
    assert not m.table.view(opt.state["exp_avg"], m.table.row(b, "weight")).any()   # fresh for b
    _fit(m, True)
    assert m.trainer.train_plan is not None
    assert not np.array_equal(b.weight, values["b"]["weight"])
    # and freezing again with a new optimizer: fresh state, sized to the new trainable part
    a.trainable = False
    m.compile("cross_entropy", "sgd")
    assert m.optimizer.state == {} and m.optimizer._params.size == m.count_params() - a.weight.size - a.bias.size


def test_a_flag_flipped_back_before_fit_is_no_change():
    m = _chain()
    m.compile("cross_entropy", "adam")
    m.layers[1].trainable = False
    m.layers[1].trainable = True
    _fit(m, True, epochs=1)
    assert m.table.n_trainable == m.count_params()


def test_frozen_batchnorm_runs_in_inference_mode():
    m = fnn.Sequential([Dense(6, activation="relu"), L.BatchNorm(momentum=0.3), Dense(4)], input_dim=7, seed=0)
    X, y = _data()
    m.compile("cross_entropy", "adam")
    m.fit(X, y, epochs=1, batch_size=16)          # trainable: the running statistics move
    bn = m.layers[1]
    assert not np.allclose(bn.running_mean, 0)
    bn.trainable = False
    m.compile("cross_entropy", "adam")
    stats = {k: v.copy() for k, v in bn.buffers.items()}
    params = _snapshot(bn)
    m.fit(X, y, epochs=2, batch_size=16)
    for k, v in bn.buffers.items():
        np.testing.assert_array_equal(v, stats[k])
    for k, v in bn.params.items():
        np.testing.assert_array_equal(v, params[k])
    # its training-mode output is the inference output (running statistics, Keras 3)
    h = m.layers[0].forward(X[:16].astype(np.float32), False).copy()
    np.testing.assert_array_equal(bn.forward(h, training=True).copy(), bn.forward(h, training=False))


def test_residual_propagates_trainable_and_freezes_its_block(tmp_path):
    block = [Dense(6, activation="tanh"), L.BatchNorm()]
    res = L.Residual(block)
    m = fnn.Sequential([Dense(6), res, Dense(3)], input_dim=5, seed=0)
    res.trainable = False
    assert not block[0].trainable and not block[1].trainable
    block[1].trainable = True                 # inside a frozen container: still frozen
    m.compile("cross_entropy", "adam")
    frozen = {r.layer.name for r in m.table.rows if not r.trainable}
    assert frozen == {block[0].name, block[1].name}
    assert block[1]._frozen
    before = {l.name: _snapshot(l) for l in block}
    X, y = _data(d=5, k=3)
    m.fit(X, y, epochs=2, batch_size=16)
    for l in block:
        for k, v in l.params.items():
            np.testing.assert_array_equal(v, before[l.name][k])
    # saved and loaded: the flags, the layout and the training that follows
    m.save(tmp_path / "m.npz")
    m2 = fnn.load(tmp_path / "m.npz")
    assert [l.trainable for l in m2.graph.layers] == [l.trainable for l in m.graph.layers] == \
        [True, False, True, False, True]
    assert [(r.layer.name, r.name, r.trainable) for r in m2.table.rows] == \
        [(r.layer.name, r.name, r.trainable) for r in m.table.rows]
    res.trainable = True
    assert block[0].trainable and block[1].trainable
    m.compile("cross_entropy", m.optimizer)
    assert m.table.n_trainable == m.count_params()


@pytest.mark.parametrize("compiled", [True, False], ids=["plan", "per-layer"])
def test_save_load_of_a_partly_frozen_model_continues_identically(tmp_path, compiled, restore_threads):
    fnn.set_num_threads(1)
    m = _chain(seed=5)
    m.layers[0].trainable = False
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    _fit(m, compiled)
    m.save(tmp_path / "m.npz")
    m2 = fnn.load(tmp_path / "m.npz")
    assert [l.trainable for l in m2.layers] == [False, True, True]
    assert m2.table.n_trainable == m.table.n_trainable
    for k in m.optimizer.state:
        np.testing.assert_array_equal(m2.optimizer.state[k], m.optimizer.state[k])
    frozen = _snapshot(m.layers[0])
    _fit(m, compiled)
    _fit(m2, compiled)
    np.testing.assert_array_equal(m2.parameters, m.parameters)
    for k, v in m2.layers[0].params.items():
        np.testing.assert_array_equal(v, frozen[k])


def test_save_with_a_pending_change_applies_it_at_load(tmp_path):
    m = _chain(seed=1)
    m.compile("cross_entropy", "adam")
    _fit(m, True, epochs=1)
    m.layers[2].trainable = False             # not compiled: the file holds the flag, the state of all three
    m.save(tmp_path / "m.npz")
    m2 = fnn.load(tmp_path / "m.npz")         # compiled at load: the flag takes effect
    assert [r.trainable for r in m2.table.rows if r.layer.name == "c"] == [False, False]
    n = m2.table.n_trainable
    by_name = {l.name: l for l in m.layers}
    np.testing.assert_array_equal(m2.optimizer.state["exp_avg"], np.concatenate(
        [m.table.view(m.optimizer.state["exp_avg"], m.table.row(by_name[r.layer.name], r.name)).ravel()
         for r in m2.table.rows if r.trainable]))
    assert m2.optimizer.state["exp_avg"].shape == (n,)
    m2.layers[2].trainable = True
    m2.save(tmp_path / "m2.npz")              # and back: c is trainable again, its state starts fresh
    m3 = fnn.load(tmp_path / "m2.npz")
    assert m3.table.n_trainable == m3.count_params()
    assert not m3.table.view(m3.optimizer.state["exp_avg"], m3.table.row(m3.layers[2], "weight")).any()


def test_guard_and_clipping_see_only_the_trainable_gradients():
    m = _chain(seed=4)
    m.layers[1].trainable = False
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.0), clip_norm=1e9)
    m.trainer.compiled_plan = False
    X, y = _data(n=16)
    m.train_on_batch(X, y)
    n = m.table.n_trainable
    assert np.abs(m.gradients[n:]).sum() > 0               # the frozen layer's gradient is computed...
    expected = np.sqrt(np.sum(m.gradients[:n].astype(np.float64) ** 2))
    assert m.grad_norm == pytest.approx(expected, rel=1e-5)  # ...but clipping (and the guard) see the prefix
    m.trainer.compiled_plan = True
    m.fit(X, y, epochs=1, batch_size=16)
    assert m.trainer.train_plan is not None
    assert m.grad_norm == pytest.approx(np.sqrt(np.sum(m.gradients[:n].astype(np.float64) ** 2)), rel=1e-5)


@pytest.mark.parametrize("compiled", [True, False], ids=["plan", "per-layer"])
def test_nan_guard_rolls_back_the_trainable_part(compiled):
    m = _chain(seed=6)
    m.layers[0].trainable = False
    m.compile("mse", fnn.optim.SGD(lr=1e38))            # the update overflows float32
    m.trainer.compiled_plan = compiled
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((32, 7)), rng.standard_normal((32, 4)) * 1e3
    before = m.parameters.copy()
    with pytest.raises(fnn.NonFiniteError, match="the update made"):
        m.fit(X, Y, epochs=1, batch_size=32)
    assert (m.trainer.train_plan is not None) == compiled
    np.testing.assert_array_equal(m.parameters, before)
    assert m.optimizer.step_count == 0


def test_everything_frozen_trains_nothing():
    m = _chain()
    for layer in m.layers:
        layer.trainable = False
    m.compile("cross_entropy", "adam")
    before = m.parameters.copy()
    h = _fit(m, True)
    assert m.trainer.train_plan is None and m.table.n_trainable == 0 and m.count_params(trainable=True) == 0
    np.testing.assert_array_equal(m.parameters, before)
    assert len(h.history["loss"]) == 2


def test_summary_and_counts():
    m = fnn.Sequential([Dense(4, name="d1"), L.BatchNorm(name="bn"), Dense(3, name="d2")], input_dim=5)
    m.layers[0].trainable = False
    assert m.count_params(trainable=False) == 24 and m.count_params(trainable=True) == 8 + 12 + 3
    import io
    out = io.StringIO()
    m.summary(file=out)
    text = out.getvalue()
    assert "24 (frozen)" in text and "total parameters: 47" in text
    assert "trainable parameters: 23, non-trainable parameters: 24, buffer values (e.g. running statistics): 8" in text
    with pytest.raises(TypeError, match="count_params"):
        m.count_params(trainable="yes")


def test_trainable_takes_a_bool():
    layer = Dense(3)
    with pytest.raises(TypeError, match="trainable must be a bool"):
        layer.trainable = 0
    assert layer.trainable is True
    layer.trainable = np.bool_(False)
    assert layer.trainable is False


def test_frozen_before_build_and_keras_style_transfer():
    """The Keras recipe: freeze a trained base, train a new head, unfreeze, fine-tune."""
    X, y = _data(n=128)
    base = [Dense(16, activation="relu", name="base1"), Dense(16, activation="relu", name="base2")]
    m = fnn.Sequential(base + [Dense(4, activation="softmax", name="head")], seed=0)   # built at fit
    for layer in base:
        layer.trainable = False
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    m.fit(X, y, epochs=2)
    assert m.table.n_trainable == 16 * 4 + 4
    w = base[0].weight.copy()
    for layer in base:
        layer.trainable = True
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-3))
    m.fit(X, y, epochs=1)
    assert not np.array_equal(base[0].weight, w)


# ---------------------------------------------------------------------------------------------- strict attributes
def _instances():
    """One instance of every registered layer class (constructed, not built)."""
    out = []
    for cls in fnn.layers.REGISTRY.values():
        if cls is L.Residual:
            out.append(L.Residual([Dense(3)]))
        elif cls is L.Reshape:
            out.append(L.Reshape((2, -1)))
        elif cls is L.Permute:
            out.append(L.Permute((2, 1)))
        elif cls is Dense:
            out.append(Dense(3))
        elif cls in (L.SimpleRNN, L.LSTM, L.GRU):
            out.append(cls(3))
        elif cls is L.Bidirectional:
            out.append(L.Bidirectional(L.LSTM(3)))
        elif cls is L.Embedding:
            out.append(L.Embedding(4, 3))
        elif cls in (L.Conv1D, L.Conv2D):
            out.append(cls(3, 2))
        else:
            out.append(cls())
    return out


@pytest.mark.parametrize("layer", _instances(), ids=lambda l: type(l).__name__)
def test_a_misspelled_setting_raises_with_a_suggestion(layer):
    with pytest.raises(AttributeError, match=rf"{layer.name}: .*'trainabel'; did you mean 'trainable'\?"):
        layer.trainabel = False
    with pytest.raises(AttributeError, match=rf"{layer.name}: {type(layer).__name__} has no attribute 'zzz_qq'"):
        layer.zzz_qq = 1
    assert "trainabel" not in vars(layer) and "zzz_qq" not in vars(layer)
    layer.trainable = False                   # a defined setting
    layer._anything = 3                       # private names are free
    layer.name = layer.name                   # an attribute set in the constructor
    assert layer._anything == 3 and not layer.trainable
    del layer._anything
    # still picklable (the sklearn wrappers pickle their models)
    copy = pickle.loads(pickle.dumps(layer))
    assert type(copy) is type(layer) and copy.name == layer.name
    with pytest.raises(AttributeError, match="did you mean 'trainable'"):
        copy.trainabel = True


def test_dense_misspelling_and_defined_settings():
    d = Dense(4, activation="relu")
    with pytest.raises(AttributeError, match=r"has no attribute 'activaton'; did you mean 'activation'"):
        d.activaton = "relu"
    with pytest.raises(AttributeError, match="did you mean 'use_bias'"):
        d.use_bais = False
    d.use_bias = False                          # defined settings work as before
    d.units = 5
    assert d.units == 5 and not d.use_bias


def test_a_subclass_sets_its_own_attributes_in_init():
    class Scaled(L.Identity):
        def __init__(self, factor=2.0, name=None):
            super().__init__(name)
            self.factor = factor                 # after super().__init__: still constructing

    s = Scaled(3.0)
    s.factor = 4.0
    assert s.factor == 4.0
    with pytest.raises(AttributeError, match="did you mean 'factor'"):
        s.facter = 1.0


def test_forward_and_backward_rebind_no_public_attribute():
    """Training writes only private attributes (the C fast path of the strict setter): every public attribute
    of every layer is the same object before and after a training step and an inference pass."""
    x = fnn.Input(5)
    h = Dense(6, activation="relu")(x)
    a = L.BatchNorm()(L.Dense(6)(h))
    b = L.Dropout(0.3)(L.LayerNorm()(L.Dense(6, activation="tanh")(h)))
    h = L.Add()([h, a, b])
    h = L.Concatenate()([h, L.Sigmoid()(L.Dense(2)(h))])
    h = L.Residual([Dense(8, activation="tanh"), L.LeakyReLU(0.1)], survival_prob=0.5)(h)
    h = L.Reshape((4, 2))(h)
    h = L.Flatten()(L.Tanh()(L.Dense(3)(h)))
    m = fnn.Model(x, Dense(3, activation="softmax")(L.ReLU()(L.Identity()(h))), seed=0)
    m.compile("cross_entropy", "adam")
    X, y = _data(n=20, d=5, k=3)
    m.train_on_batch(X, y)             # buffers made
    public = {id(l): {k: id(v) for k, v in vars(l).items() if not k.startswith("_")} for l in m.graph.layers}
    for _ in range(3):
        m.train_on_batch(X, y)
        m.predict(X)
    assert {id(l): {k: id(v) for k, v in vars(l).items() if not k.startswith("_")} for l in m.graph.layers} == public
