"""Weights in memory: get_weights / set_weights (Keras), state_dict / load_state_dict (torch), clone, and the
in-memory snapshots that io, prune and diagnostics use instead of temp files."""
import tempfile

import numpy as np
import pytest

import fastnn as fnn
from fastnn import io as fio
from fastnn import layers as L
from fastnn.layers import Dense


def _activations():
    """Every activation layer class, one after the other (Softmax last, with cross-entropy)."""
    classes = [c for c in L.activations.CLASSES.values() if c is not L.Softmax]
    return [c() for c in classes] + [L.Softmax()]


def _mlp(dtype="float32"):
    return fnn.Sequential([Dense(8, activation="relu"), Dense(3, activation="softmax")], input_dim=5, seed=1,
                          dtype=dtype)


def _activation_chain():
    return fnn.Sequential([Dense(6)] + _activations()[:-1] + [Dense(3), L.Softmax()], input_dim=5, seed=2)


def _norm_dropout():
    return fnn.Sequential([Dense(8, activation="tanh", use_bias=False), L.BatchNorm(momentum=0.3), L.Dropout(0.2),
                           L.LayerNorm(), Dense(3, max_norm=2.0)], input_dim=5, seed=3, dtype="float64")


def _residual():
    return fnn.Sequential([
        Dense(8, activation="relu"),
        L.Residual([Dense(8, activation="tanh"), L.BatchNorm()], survival_prob=0.7),
        L.Residual(L.Residual([Dense(8), L.ReLU()])),         # nested
        Dense(3)], input_dim=5, seed=4)


def _graph():
    x = fnn.Input(5)
    h = Dense(8, activation="relu")(x)
    a = L.BatchNorm()(Dense(8)(h))
    b = L.Dropout(0.3, mode="weight_scaling")(Dense(8, activation="tanh")(h))
    h = L.Add()([h, a, b])
    h = L.Concatenate()([h, L.LayerNorm()(Dense(4)(h))])
    return fnn.Model(x, Dense(3, activation="softmax")(h), seed=5, name="graph")


def _sequence():
    """(n, 5) -> (n, 5, 1) -> per-step Dense, BatchNorm over (n*T, C), LayerNorm -> Flatten -> (n, 3)."""
    return fnn.Sequential([L.Reshape((5, -1)), Dense(4, activation="tanh"), L.BatchNorm(momentum=0.2),
                           L.LayerNorm(), L.Flatten(), Dense(3)], input_dim=5, seed=6)


def _image():
    """(n, 5) -> (n, 1, 5, 1) image, channels-last Dense and BatchNorm (torch BatchNorm2d), Flatten."""
    return fnn.Sequential([L.Reshape((1, 5, 1)), Dense(2), L.BatchNorm(), L.ReLU(), L.Flatten(), Dense(3)],
                          input_dim=5, seed=7)


def _pooling():
    """(n, 5) -> (n, 4, 4, 3) permuted images and (n, 16, 3) sequences through every pooling layer -> (n, 3)."""
    x = fnn.Input(5)
    img = L.Permute((2, 1, 3))(L.Reshape((4, 4, 3))(Dense(48)(x)))
    a = L.GlobalMaxPooling2D()(L.AvgPool2D(2, strides=1, padding="same")(L.MaxPool2D(2, padding="same")(img)))
    s = L.AvgPool1D(2)(L.MaxPool1D(3, strides=2, padding="same")(L.Reshape((16, 3))(img)))
    h = L.Concatenate()([a, L.GlobalAveragePooling2D()(img), L.GlobalAveragePooling1D()(s),
                         L.GlobalMaxPooling1D()(s)])
    return fnn.Model(x, Dense(3)(h), seed=8, name="pooling")


def _conv():
    """(n, 5) -> a sequence through Conv1D -> an image through Conv2D -> Flatten -> (n, 3)."""
    return fnn.Sequential([L.Reshape((5, 1)), L.Conv1D(4, 3, padding="same", activation="relu"),
                           L.Reshape((5, 4, 1)), L.Conv2D(2, 2, padding="same"), L.Flatten(), Dense(3)],
                          input_dim=5, seed=8)


def _recurrent():
    """(n, 5) -> (n, 5, 1) sequences -> SimpleRNN, bidirectional LSTM, LSTM, GRU (last state) -> (n, 3)."""
    return fnn.Sequential([L.Reshape((5, -1)), L.SimpleRNN(4, return_sequences=True),
                           L.Bidirectional(L.LSTM(3, return_sequences=True)), L.LSTM(3, return_sequences=True),
                           L.GRU(4), Dense(3)],
                          input_dim=5, seed=8)


CASES = [("mlp", _mlp), ("mlp-float64", lambda: _mlp("float64")), ("activations", _activation_chain),
         ("norm-dropout", _norm_dropout), ("residual", _residual), ("graph", _graph), ("sequence", _sequence),
         ("image", _image), ("pooling", _pooling), ("conv", _conv), ("recurrent", _recurrent)]
IDS = [c[0] for c in CASES]


def test_every_registered_layer_is_covered():
    covered = set()
    for _, make in CASES:
        covered.update(type(l).__name__ for l in make().graph.layers)
    # the sequence-input layers take integer ids / sequences, not these cases' (n, 5) floats: their save/load and
    # weights round trips are in tests/test_embedding.py and tests/test_masking.py
    covered.update({"Embedding", "Masking"})
    assert set(fnn.layers.REGISTRY) <= covered


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n)


def _trained(make, epochs=2):
    """A model trained a little (BatchNorm statistics, optimizer state and generators moved)."""
    m = make()
    m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    X, y = _data()
    m.fit(X, y, epochs=epochs, batch_size=16)
    return m


def _entries(m):
    return [(l.name, n) for l in m.graph.layers for n in list(l.params) + list(l.buffers)]


def _all_arrays(m):
    out = [v for l in m.graph.layers for v in list(l.params.values()) + list(l.buffers.values())]
    out += [m.parameters, m.gradients] + list(m.optimizer.state.values() if m.optimizer else [])
    return out


# ---------------------------------------------------------------------------------------------- get / set
@pytest.mark.parametrize("name,make", CASES, ids=IDS)
def test_get_set_weights_round_trip(name, make):
    src = _trained(make)
    weights = src.get_weights()
    # the documented order: graph order, parameters (ParamSpec order) then buffers, copies
    expected = [a for l in src.graph.layers for a in list(l.params.values()) + list(l.buffers.values())]
    assert len(weights) == len(expected)
    for w, a in zip(weights, expected):
        np.testing.assert_array_equal(w, a)
        assert not np.shares_memory(w, a)
    weights[0][...] = 123.0                      # a copy: the model does not change
    assert not np.any(expected[0] == 123.0)
    dst = make()                                  # same architecture, other weights (another seed would do too)
    dst.set_weights(src.get_weights())
    for a, b in zip(src.get_weights(), dst.get_weights()):
        np.testing.assert_array_equal(a, b)
    X, _ = _data()
    np.testing.assert_array_equal(dst.predict(X), src.predict(X))


def test_get_weights_order_for_dense_and_batchnorm():
    m = fnn.Sequential([Dense(4), L.BatchNorm(), Dense(2, use_bias=False)], input_dim=3)
    assert [w.shape for w in m.get_weights()] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 2)]
    d, bn, d2 = m.layers
    assert _entries(m) == [(d.name, "weight"), (d.name, "bias"), (bn.name, "weight"), (bn.name, "bias"),
                           (bn.name, "running_mean"), (bn.name, "running_var"), (d2.name, "weight")]
    d.trainable = False                           # freezing does not change the order
    m.compile("mse", "adam")
    assert [w.shape for w in m.get_weights()] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 2)]
    np.testing.assert_array_equal(m.get_weights()[5], np.ones(4))     # running_var


def _bad_weight_lists(m):
    w = m.get_weights()
    wrong_shape = list(w)
    wrong_shape[2] = np.zeros((9, 9))
    nan = [a.copy() for a in w]
    nan[-1].flat[0] = np.nan
    text = list(w)
    text[0] = np.full(w[0].shape, "x")
    return [
        (w[:-1], ValueError, rf"has {len(w)} weight arrays \(.*\), got {len(w) - 1}"),
        (w + [w[0]], ValueError, f"got {len(w) + 1}"),
        (wrong_shape, ValueError, r"entry 2 \(\w+\.\w+\) must have shape \(\d+,( \d+)?\), got \(9, 9\)"),
        (nan, ValueError, r"entry \d+ \(\w+\.\w+\) contains NaN"),
        (text, TypeError, "must hold real numbers"),
        (np.zeros(3), TypeError, "expected a list"),
        ({"a": 1}, TypeError, "expected a list"),
    ]


@pytest.mark.parametrize("name,make", [CASES[0], CASES[3], CASES[4]], ids=[IDS[0], IDS[3], IDS[4]])
def test_set_weights_errors_change_nothing(name, make):
    m = _trained(make)
    before = m.get_weights()
    for bad, exc, match in _bad_weight_lists(m):
        with pytest.raises(exc, match=match):
            m.set_weights(bad)
        for a, b in zip(before, m.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_set_weights_casts_and_names_the_parameter():
    m = fnn.Sequential([Dense(2, name="out")], input_dim=3, dtype="float64")
    m.set_weights([np.arange(6, dtype=np.int32).reshape(3, 2), [1.5, 2.5]])
    assert m.layers[0].weight.dtype == np.float64 and m.layers[0].bias.tolist() == [1.5, 2.5]
    with pytest.raises(ValueError, match=r"entry 0 \(out\.weight\) must have shape \(3, 2\), got \(2, 3\)"):
        m.set_weights([np.zeros((2, 3)), np.zeros(2)])


# ---------------------------------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("name,make", CASES, ids=IDS)
def test_state_dict_round_trip(name, make):
    src = _trained(make)
    sd = src.state_dict()
    assert list(sd) == [f"{l}.{n}" for l, n in _entries(src)]
    for k, a in zip(sd, src.get_weights()):
        np.testing.assert_array_equal(sd[k], a)
    assert not any(np.shares_memory(v, a) for v in sd.values() for a in _all_arrays(src))
    dst = make()
    # layer names differ between two instances (auto names): map by position, as a user renaming would
    renamed = dict(zip(dst.state_dict(), sd.values()))
    result = dst.load_state_dict(renamed)
    assert result.missing_keys == [] and result.unexpected_keys == []
    X, _ = _data()
    np.testing.assert_array_equal(dst.predict(X), src.predict(X))


def test_state_dict_names_batchnorm_buffers_like_torch():
    m = fnn.Sequential([Dense(4, name="fc"), L.BatchNorm(name="bn")], input_dim=3)
    assert list(m.state_dict()) == ["fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                    "bn.running_var"]


def test_load_state_dict_matches_torch_batchnorm():
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    tm.train()
    tm(torch.randn(16, 3, dtype=torch.float64))            # running statistics move
    tm.eval()
    m = fnn.Sequential([Dense(4, name="0"), L.BatchNorm(name="1")], input_dim=3, dtype="float64")
    sd = {k: v.numpy() for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["0.weight"] = sd["0.weight"].T                        # torch Linear stores (out, in)
    m.load_state_dict(sd)
    X = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(m.predict(X), tm(torch.from_numpy(X)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_load_state_dict_errors_change_nothing():
    m = _trained(_norm_dropout)
    before = m.state_dict()
    bn = m.layers[1].name
    d = m.layers[0].name
    cases = [
        ({k: v for k, v in before.items() if k != f"{bn}.running_var"}, ValueError,
         rf"missing \['{bn}\.running_var'\], unexpected \[\]"),
        ({**before, "ghost.weight": np.zeros(2)}, ValueError, r"missing \[\], unexpected \['ghost\.weight'\]"),
        ({**before, f"{d}.weight": np.zeros((8, 5))}, ValueError, rf"'{d}\.weight' must have shape \(5, 8\), got "
                                                                  r"\(8, 5\)"),
        ({**before, f"{bn}.running_mean": np.full(8, np.inf)}, ValueError, "contains NaN or infinity"),
        ({**before, f"{bn}.bias": np.array(["a"] * 8)}, TypeError, "must hold real numbers"),
        ([1, 2], TypeError, "expected a mapping"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            m.load_state_dict(bad)
        after = m.state_dict()
        assert list(after) == list(before)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k])
    # all or nothing: every earlier key is valid and would have been written, the last one is bad
    changed = {k: v + 1 for k, v in before.items()}
    changed[list(before)[-1]] = np.zeros(7)
    with pytest.raises(ValueError, match="must have shape"):
        m.load_state_dict(changed)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_not_strict():
    m = fnn.Sequential([Dense(4, name="fc"), L.BatchNorm(name="bn")], input_dim=3)
    res = m.load_state_dict({"fc.weight": np.ones((3, 4)), "extra": np.zeros(1)}, strict=False)
    assert res.missing_keys == ["fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    assert res.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(m.layers[0].weight, np.ones((3, 4)))
    with pytest.raises(ValueError, match="must have shape"):      # shapes are checked when not strict too
        m.load_state_dict({"fc.weight": np.ones((4, 3))}, strict=False)


def test_duplicate_layer_names_are_refused():
    x = fnn.Input(3)
    m = fnn.Model(x, Dense(2, name="same")(Dense(4, name="same")(x)))
    with pytest.raises(ValueError, match="two layers .* named 'same'"):
        m.state_dict()
    with pytest.raises(ValueError, match="two layers .* named 'same'"):
        m.load_state_dict({})
    m.set_weights(m.get_weights())                  # positional: fine


# ---------------------------------------------------------------------------------------------- clone
@pytest.mark.parametrize("name,make", CASES, ids=IDS)
def test_clone_is_independent_and_trains_identically(name, make, restore_threads):
    fnn.set_num_threads(1)
    m = _trained(make)
    c = m.clone()
    assert type(c) is type(m) and c.name == m.name and c.dtype == m.dtype and c.epochs_trained == 2
    assert [l.get_config() for l in c.graph.layers] == [l.get_config() for l in m.graph.layers]
    for a, b in zip(m.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert c.optimizer.get_config() == m.optimizer.get_config() and c.optimizer.step_count == m.optimizer.step_count
    for k in m.optimizer.state:
        np.testing.assert_array_equal(c.optimizer.state[k], m.optimizer.state[k])
    for g in ("init_rng", "rng", "layer_rng"):
        assert getattr(c, g).bit_generator.state == getattr(m, g).bit_generator.state
        assert getattr(c, g) is not getattr(m, g)
    assert not any(np.shares_memory(a, b) for a in _all_arrays(m) for b in _all_arrays(c))
    # training the clone leaves the original unchanged
    before = m.get_weights()
    X, y = _data(seed=1)
    c.fit(X, y, epochs=1, batch_size=16)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    # and the original, trained the same way, gets bitwise the same weights, state and history
    h = m.fit(X, y, epochs=1, batch_size=16)
    for a, b in zip(m.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(a, b)
    for k in m.optimizer.state:
        np.testing.assert_array_equal(c.optimizer.state[k], m.optimizer.state[k])
    assert c.history.history["loss"] == h.history["loss"]


@pytest.mark.parametrize("compiled", [True, False], ids=["plan", "per-layer"])
def test_clone_keeps_settings_and_frozen_layers(compiled, restore_threads):
    fnn.set_num_threads(1)
    m = fnn.Sequential([Dense(8, activation="tanh"), Dense(8, activation="relu"), Dense(3)], input_dim=5, seed=0)
    m.layers[1].trainable = False
    m.compile("cross_entropy", fnn.optim.SGD(lr=0.1, momentum=0.9), clip_norm=0.5,
              lr_schedule=fnn.schedules.Step(step_size=1, gamma=0.5), nan_guard=False)
    m.trainer.compiled_plan = compiled
    X, y = _data()
    m.fit(X, y, epochs=2, batch_size=16)
    c = m.clone()
    assert c.clip_norm == 0.5 and c.nan_guard is False and c.trainer.compiled_plan is compiled
    assert type(c.lr_schedule) is type(m.lr_schedule) and c.lr_schedule is not m.lr_schedule
    assert c.trainer.base_lr == m.trainer.base_lr == 0.1 and c.optimizer.lr == m.optimizer.lr
    assert [l.trainable for l in c.layers] == [True, False, True]
    assert c.table.n_trainable == m.table.n_trainable
    for model in (m, c):
        model.fit(X, y, epochs=4, initial_epoch=2, batch_size=16)
    np.testing.assert_array_equal(c.parameters, m.parameters)
    assert (c.trainer.train_plan is not None) == compiled


def test_clone_uncompiled_and_unbuilt():
    m = fnn.Sequential([Dense(3)], input_dim=4, seed=0)
    c = m.clone()
    assert c.loss is None and c.optimizer is None
    np.testing.assert_array_equal(c.parameters, m.parameters)
    with pytest.raises(ValueError, match="clone: .* not built"):
        fnn.Sequential([Dense(3)]).clone()


def test_clone_sampled_softmax_carries_its_sampler():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 6)), rng.integers(0, 40, 64)
    m = fnn.Sequential([Dense(8, activation="relu"), Dense(40)], input_dim=6, seed=0)
    m.compile(fnn.losses.SampledSoftmax(num_sampled=8, seed=3), "adam")
    m.fit(X, y, epochs=1, batch_size=16)
    c = m.clone()
    m.fit(X, y, epochs=1, batch_size=16)
    c.fit(X, y, epochs=1, batch_size=16)
    np.testing.assert_array_equal(c.parameters, m.parameters)


# ---------------------------------------------------------------------------------------------- no temp files
@pytest.fixture
def no_temp_files(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a temporary file was made")
    for name in ("mkstemp", "mkdtemp", "TemporaryDirectory", "NamedTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_clone_prune_and_gradcheck_use_memory_only(no_temp_files):
    m = _trained(lambda: fnn.Sequential([Dense(16, activation="relu"), L.BatchNorm(), Dense(3)], input_dim=5,
                                        seed=0))
    m.clone()
    small = fnn.prune.neurons(m, layer=0, amount=0.25)
    assert small.layers[0].units == 12
    report = fnn.gradcheck(m, *_data(n=8))
    assert report.passed


def test_snapshot_build_equals_save_load(tmp_path):
    m = _trained(_residual)
    header, arrays = fio.snapshot(m)
    m.save(tmp_path / "m.npz")
    h2, a2 = fio.read(tmp_path / "m.npz")
    assert h2.pop("arrays").keys() == arrays.keys()
    assert h2 == header
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], a2[k])
    b = fio.build(header, arrays)
    np.testing.assert_array_equal(b.parameters, m.parameters)
    assert not np.shares_memory(b.parameters, m.parameters)
