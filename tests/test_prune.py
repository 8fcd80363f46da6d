"""Neuron pruning: dead units go without changing predictions, 50% by norm recovers with fine-tuning, the optimizer
state follows the weights, pruned models save and load, and what cannot be pruned consistently is refused."""
import numpy as np
import pytest

import fastnn as fnn

L = fnn.layers


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.datasets.load_digits()
    return fnn.datasets.stratified_split(X, y, test_fraction=0.2, seed=0)


@pytest.fixture
def one_thread():
    """Training-heavy tests run on one thread: on a loaded 2-core machine two OpenMP threads spin against each
    other (the accuracy tested does not depend on the thread count)."""
    prev = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(prev)


def _accuracy(model, X, y):
    return float(np.mean(np.argmax(model.predict(X), axis=1) == y))


def _with_dead_units(digits, relu_first=False):
    """A trained model whose first layer has 12 dead units (every 4th).  Default: Dense -> BatchNorm -> ReLU ->
    Dropout, killed through BatchNorm's shift.  relu_first: Dense(relu) -> BatchNorm -> Dropout, killed through
    the Dense bias; a dead unit then sends BatchNorm's non-zero constant on, which pruning folds into the next
    bias."""
    Xtr, ytr, _, _ = digits
    first = [L.Dense(48, activation="relu"), L.BatchNorm()] if relu_first else [L.Dense(48), L.BatchNorm(), L.ReLU()]
    model = fnn.Sequential(first + [L.Dropout(0.2), L.Dense(24), L.ReLU(), L.Dense(10, activation="softmax")],
                           input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=3e-3))
    model.fit(Xtr, ytr, epochs=3, batch_size=64)
    (model.layers[0] if relu_first else model.layers[1]).bias[::4] = -100.0
    model.fit(Xtr, ytr, epochs=1, batch_size=64)         # trained on with them dead
    return model


@pytest.mark.parametrize("relu_first", [False, True])
def test_pruning_dead_units_keeps_predictions(digits, relu_first):
    Xtr, _, Xte, _ = digits
    model = _with_dead_units(digits, relu_first)
    dead = fnn.prune.select(model, 0, criterion="dead", X=Xtr)
    assert dead.size >= 12 and np.all(np.isin(np.arange(0, 48, 4), dead))
    params_before = model.parameters.copy()
    pruned = fnn.prune.neurons(model, model.layers[0], criterion="dead", X=Xtr)
    np.testing.assert_array_equal(model.parameters, params_before)        # the original is not touched
    nxt = 3 if relu_first else 4
    assert pruned.layers[0].units == 48 - dead.size
    assert pruned.layers[1].weight.shape == (48 - dead.size,)
    assert pruned.layers[1].running_mean.shape == (48 - dead.size,)
    assert pruned.layers[nxt].weight.shape == (48 - dead.size, 24)
    assert pruned.count_params() < model.count_params()
    # dead units add exact zeros (or a constant folded into the next bias): the same predicted probabilities up
    # to float32 rounding of sums taken in another order by the GEMM
    for X in (Xte, Xtr):
        np.testing.assert_allclose(pruned.predict(X), model.predict(X), atol=1e-6, rtol=0)
    assert np.mean(np.argmax(pruned.predict(Xte), 1) == np.argmax(model.predict(Xte), 1)) == 1.0
    assert [l.name for l in pruned.layers] == [l.name for l in model.layers]


def test_prune_half_by_norm_then_fine_tune_recovers_accuracy(digits, one_thread):
    Xtr, ytr, Xte, yte = digits
    model = fnn.Sequential([L.Dense(128, activation="relu", kernel_init="he_normal"),
                            L.Dense(64, activation="relu", kernel_init="he_normal"), L.Dense(10)],
                           input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3))
    model.fit(Xtr, ytr, epochs=30, batch_size=64)
    base = _accuracy(model, Xte, yte)
    assert base > 0.95
    pruned = fnn.prune.neurons(model, 0, amount=0.5, criterion="l2")
    pruned = fnn.prune.neurons(pruned, 1, amount=0.5, criterion="l2")
    assert (pruned.layers[0].units, pruned.layers[1].units) == (64, 32)
    assert pruned.count_params() < 0.55 * model.count_params()
    pruned.fit(Xtr, ytr, epochs=8, batch_size=64)
    assert _accuracy(pruned, Xte, yte) >= base - 0.01


def test_l2_and_activation_criteria_pick_the_weakest_units(digits):
    Xtr, ytr, _, _ = digits
    model = fnn.Sequential([L.Dense(20), L.Tanh(), L.Dense(10)], input_dim=64, seed=3)
    W = model.layers[0].weight
    norms = np.sqrt((W.astype(np.float64) ** 2).sum(axis=0))
    np.testing.assert_array_equal(fnn.prune.select(model, 0, amount=5), np.sort(np.argsort(norms)[:5]))
    act = np.abs(np.tanh(Xtr @ W.astype(np.float64) + model.layers[0].bias)).mean(axis=0)
    np.testing.assert_array_equal(fnn.prune.select(model, 0, amount=0.25, criterion="activation", X=Xtr),
                                  np.sort(np.argsort(act)[:5]))


def test_optimizer_state_is_pruned_and_training_continues_identically(digits):
    Xtr, ytr, _, _ = digits
    model = fnn.Sequential([L.Dense(16, activation="relu"), L.BatchNorm(), L.Dense(12, activation="tanh"),
                            L.Dense(10)], input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-2, weight_decay=1e-3))
    model.fit(Xtr[:256], ytr[:256], epochs=2, batch_size=64)
    remove = fnn.prune.select(model, "dense_" + model.layers[0].name.split("_")[1], amount=0.25)
    keep = np.setdiff1d(np.arange(16), remove)
    pruned = fnn.prune.neurons(model, 0, amount=0.25)
    opt, popt = model.optimizer, pruned.optimizer
    assert popt is not opt and popt.step_count == opt.step_count and sorted(popt.state) == sorted(opt.state)

    def state_of(m, layer, pname, key):
        base = m.parameters.__array_interface__["data"][0]
        view = layer.params[pname]
        off = (view.__array_interface__["data"][0] - base) // m.parameters.itemsize
        return m.optimizer.state[key][off:off + view.size].reshape(view.shape)

    for key in opt.state:
        np.testing.assert_array_equal(state_of(pruned, pruned.layers[0], "weight", key),
                                      state_of(model, model.layers[0], "weight", key)[:, keep])
        np.testing.assert_array_equal(state_of(pruned, pruned.layers[0], "bias", key),
                                      state_of(model, model.layers[0], "bias", key)[keep])
        for p in ("weight", "bias"):
            np.testing.assert_array_equal(state_of(pruned, pruned.layers[1], p, key),
                                          state_of(model, model.layers[1], p, key)[keep])
        np.testing.assert_array_equal(state_of(pruned, pruned.layers[2], "weight", key),
                                      state_of(model, model.layers[2], "weight", key)[keep, :])
    np.testing.assert_array_equal(pruned.layers[1].running_var, model.layers[1].running_var[keep])

    # a model built at the smaller size, given the same weights, buffers and optimizer state
    small = fnn.Sequential([L.Dense(keep.size, activation="relu"), L.BatchNorm(), L.Dense(12, activation="tanh"),
                            L.Dense(10)], input_dim=64, seed=5)
    small.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-2, weight_decay=1e-3))
    for a, b in zip(small.layers, pruned.layers):
        for name in a.params:
            a.params[name][...] = b.params[name]
        for name in a.buffers:
            a.buffers[name][...] = b.buffers[name]
        for key in small.optimizer.state:
            for name in a.params:
                state_of(small, a, name, key)[...] = state_of(pruned, b, name, key)
    small.optimizer.step_count = popt.step_count
    for start in range(0, 192, 64):
        la = pruned.train_on_batch(Xtr[start:start + 64], ytr[start:start + 64])
        lb = small.train_on_batch(Xtr[start:start + 64], ytr[start:start + 64])
        assert la == lb
    for a, b in zip(small.layers, pruned.layers):
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])


def test_pruned_model_saves_and_loads(digits, tmp_path):
    Xtr, ytr, Xte, _ = digits
    model = _with_dead_units(digits)
    pruned = fnn.prune.neurons(model, 4, amount=0.5, criterion="activation", X=Xtr)
    assert pruned.layers[4].units == 12 and pruned.layers[6].weight.shape == (12, 10)
    path = tmp_path / "pruned.npz"
    pruned.save(path)
    back = fnn.load(path)
    np.testing.assert_array_equal(back.predict(Xte), pruned.predict(Xte))
    assert back.optimizer.step_count == pruned.optimizer.step_count
    back.fit(Xtr[:128], ytr[:128], epochs=1, batch_size=64)       # and it trains


def test_refusals_name_the_layer():
    x = fnn.Input(8)
    a = L.Dense(6, activation="relu", name="feeds_add")(x)
    s = L.Add()([a, L.Dense(6, name="branch")(a)])
    c = L.Concatenate()([s, L.Dense(4, name="feeds_cat")(s)])
    r = L.Residual([L.Dense(10, activation="relu", name="in_block"), L.Dense(10, name="block_out")])(c)
    h = L.Dense(5, name="to_softmax")(r)
    out = L.Dense(3, name="out")(L.Dense(4, name="pre_out")(L.Softmax()(h)))
    model = fnn.Model(x, out)
    for name in ("feeds_add", "branch", "feeds_cat", "block_out", "to_softmax", "out"):
        with pytest.raises(ValueError, match=name):
            fnn.prune.neurons(model, name, amount=1)
    pruned = fnn.prune.neurons(model, "in_block", amount=3)          # Dense -> Dense inside a block is fine
    assert pruned.layers[[l.name for l in pruned.layers].index("in_block")].units == 7
    seq = fnn.Sequential([L.Dense(6, name="d1"), L.LayerNorm(name="ln"), L.Dense(2, name="d2")], input_dim=8)
    X = np.random.default_rng(0).standard_normal((10, 8))
    with pytest.raises(ValueError, match="ln.*only Dense"):
        fnn.prune.neurons(seq, "ln")
    with pytest.raises(ValueError, match="criterion"):
        fnn.prune.neurons(seq, "d1", criterion="random")
    with pytest.raises(ValueError, match="needs the data X"):
        fnn.prune.neurons(seq, "d1", criterion="activation")
    with pytest.raises(ValueError, match="needs a ReLU after layer d1"):
        fnn.prune.neurons(seq, "d1", criterion="dead", X=X)
    with pytest.raises(ValueError, match="do not give amount"):
        fnn.prune.neurons(seq, "d1", criterion="dead", X=X, amount=0.5)
    for bad in (1.0, -0.1, 6, -1):
        with pytest.raises(ValueError, match="amount|units of layer d1"):
            fnn.prune.neurons(seq, "d1", amount=bad)
    with pytest.raises(TypeError, match="amount"):
        fnn.prune.neurons(seq, "d1", amount="half")
    with pytest.raises(ValueError, match="no layer named"):
        fnn.prune.neurons(seq, "nope")
    with pytest.raises(ValueError, match="out of range"):
        fnn.prune.neurons(seq, 7)
    assert fnn.prune.neurons(seq, "d1", amount=2).layers[1].weight.shape == (4,)      # LayerNorm pruned too


def test_pruning_a_per_step_dense_keeps_the_predictions_of_dead_units():
    """A Dense on (N, T, F) sequences: the units go along each parameter's unit axis (ParamSpec.unit_axis), the
    BatchNorm after it loses the same channels, and removing units dead on X changes no prediction."""
    L = fnn.layers
    model = fnn.Sequential([L.Dense(8, activation="relu"), L.BatchNorm(), L.Dense(3)], input_shape=(5, 6), seed=0,
                           dtype="float64").compile("mse", "adam")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5, 6))
    model.fit(X, rng.standard_normal((40, 5, 3)), epochs=2, batch_size=8)
    dense = model.layers[0]
    b = dense.bias.copy()
    b[[1, 4, 6]] = -1e3                                   # these units never fire
    dense.bias = b
    small = fnn.prune.neurons(model, layer=0, criterion="dead", X=X)
    assert small.layers[0].weight.shape == (6, 5) and small.layers[1].params["weight"].shape == (5,)
    assert small.layers[1].buffers["running_mean"].shape == (5,) and small.layers[2].weight.shape == (5, 3)
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)
    keep = [0, 2, 3, 5, 7]
    np.testing.assert_array_equal(small.layers[0].weight, dense.weight[:, keep])
    st = small.optimizer.state["exp_avg"]
    assert st.shape == small.parameters.shape


def test_pruning_through_a_flatten_takes_the_channel_at_every_position():
    """Units before a Flatten are channels of a (T, C) output: the next Dense loses rows c, c + C, c + 2C, ...
    (channels-last flattening), a BatchNorm after the Flatten loses the same features, and a dead unit's
    non-zero constant (ReLU -> BatchNorm) is folded into the next bias: the same predictions."""
    model = fnn.Sequential([L.Dense(8, activation="relu"), L.BatchNorm(), L.Flatten(), L.Dropout(0.1),
                            L.BatchNorm(), L.Dense(3)], input_shape=(5, 6), seed=0, dtype="float64")
    model.compile("mse", "adam")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5, 6))
    model.fit(X, rng.standard_normal((40, 3)), epochs=2, batch_size=8)
    b = model.layers[0].bias.copy()
    b[[1, 4, 6]] = -1e3
    model.layers[0].bias = b
    assert np.array_equal(fnn.prune.select(model, 0, criterion="dead", X=X), [1, 4, 6])
    small = fnn.prune.neurons(model, 0, criterion="dead", X=X)
    keep = np.array([0, 2, 3, 5, 7])
    feats = (np.arange(5)[:, None] * 8 + keep).ravel()
    assert small.layers[0].weight.shape == (6, 5) and small.layers[1].params["weight"].shape == (5,)
    assert small.layers[4].params["weight"].shape == (25,) and small.layers[4].buffers["running_var"].shape == (25,)
    np.testing.assert_array_equal(small.layers[4].buffers["running_mean"],
                                  model.layers[4].buffers["running_mean"][feats])
    np.testing.assert_array_equal(small.layers[5].weight, model.layers[5].weight[feats])
    assert not np.array_equal(small.layers[5].bias, model.layers[5].bias)        # the constants were folded
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)
    # by norm: the same features go from the optimizer state
    pruned = fnn.prune.neurons(model, 0, amount=2)
    gone = fnn.prune.select(model, 0, amount=2)
    kept = (np.arange(5)[:, None] * 8 + np.setdiff1d(np.arange(8), gone)).ravel()
    np.testing.assert_array_equal(pruned.layers[5].weight, model.layers[5].weight[kept])
    assert pruned.optimizer.state["exp_avg"].shape == pruned.parameters.shape


def test_a_dead_constant_without_a_bias_to_fold_into_is_refused():
    model = fnn.Sequential([L.Dense(4, activation="relu"), L.BatchNorm(), L.Dense(2, use_bias=False)],
                           input_dim=3, seed=0, dtype="float64")
    b = model.layers[0].bias.copy()
    b[0] = -1e3
    model.layers[0].bias = b
    model.layers[1].params["bias"][0] = 0.5           # the dead unit sends 0.5 on
    X = np.random.default_rng(1).standard_normal((20, 3))
    with pytest.raises(ValueError, match="dense_.*no bias to fold"):
        fnn.prune.neurons(model, 0, criterion="dead", X=X)


# ------------------------------------------------------------------------------------------- convolutions
def _images(n=24, shape=(8, 8, 2), seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + shape)


def _kill(layer, filters):
    """Make these filters of a ReLU layer dead on any input: a bias far below what the weights can reach."""
    b = layer.bias.copy()
    b[filters] = -1e4
    layer.bias = b


def _state(model, layer, pname, key):
    row = model.table.row(layer, pname)
    return model.table.view(model.optimizer.state[key], row)


@pytest.mark.parametrize("bn_after_relu", [False, True])
def test_dead_conv_filters_go_without_changing_predictions(bn_after_relu):
    """Conv2D(relu) [-> BatchNorm] -> MaxPool2D -> Conv2D (valid): the dead filters' weights, the BatchNorm's
    channels (parameters and running statistics), the next convolution's input channels and their optimizer
    state go; predictions stay (a dead channel sends 0, or BatchNorm's constant, folded into the next bias)."""
    mid = [L.BatchNorm()] if bn_after_relu else []
    model = fnn.Sequential([L.Conv2D(8, 3, padding="same", activation="relu")] + mid +
                           [L.MaxPool2D(2), L.Conv2D(5, 3, activation="relu"), L.Flatten(), L.Dense(3)],
                           input_shape=(8, 8, 2), seed=0, dtype="float64")
    model.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
    X = _images()
    y = np.arange(24) % 3
    model.fit(X, y, epochs=2, batch_size=8)
    conv, nxt = model.layers[0], model.layers[2 + len(mid)]
    _kill(conv, [1, 4, 6])
    assert np.array_equal(fnn.prune.select(model, 0, criterion="dead", X=X), [1, 4, 6])
    small = fnn.prune.neurons(model, 0, criterion="dead", X=X)
    keep = [0, 2, 3, 5, 7]
    s_conv, s_nxt = small.layers[0], small.layers[2 + len(mid)]
    assert s_conv.filters == 5 and s_conv.weight.shape == (3, 3, 2, 5) and s_nxt.weight.shape == (3, 3, 5, 5)
    np.testing.assert_array_equal(s_conv.weight, conv.weight[..., keep])
    np.testing.assert_array_equal(s_nxt.weight, nxt.weight[:, :, keep, :])
    if bn_after_relu:
        for name in ("running_mean", "running_var"):
            np.testing.assert_array_equal(small.layers[1].buffers[name], model.layers[1].buffers[name][keep])
        assert not np.array_equal(s_nxt.bias, nxt.bias)            # BatchNorm's constant was folded in
    else:
        np.testing.assert_array_equal(s_nxt.bias, nxt.bias)
    for key in model.optimizer.state:
        np.testing.assert_array_equal(_state(small, s_conv, "weight", key),
                                      _state(model, conv, "weight", key)[..., keep])
        np.testing.assert_array_equal(_state(small, s_nxt, "weight", key),
                                      _state(model, nxt, "weight", key)[:, :, keep, :])
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)
    assert small.count_params() < model.count_params()
    small.fit(X, y, epochs=1, batch_size=8)                       # and it trains on


def test_conv_filters_before_a_flatten_and_a_global_pooling():
    """Conv2D -> ReLU -> Flatten -> Dense: the Dense loses rows c, c + F, c + 2F, ... of each removed filter c;
    Conv2D -> GlobalAveragePooling2D -> Dense: rows c."""
    X = _images(shape=(6, 6, 3))
    flat = fnn.Sequential([L.Conv2D(4, 3), L.ReLU(), L.Dropout(0.2), L.Flatten(), L.Dense(2)],
                          input_shape=(6, 6, 3), seed=1, dtype="float64").compile("mse", "sgd")
    _kill(flat.layers[0], [2])
    small = fnn.prune.neurons(flat, 0, criterion="dead", X=X)
    rows = (np.arange(16)[:, None] * 4 + np.array([0, 1, 3])).ravel()
    np.testing.assert_array_equal(small.layers[4].weight, flat.layers[4].weight[rows])
    np.testing.assert_allclose(small.predict(X), flat.predict(X), rtol=1e-12, atol=1e-12)
    gap = fnn.Sequential([L.Conv2D(6, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
                          L.Dense(2)], input_shape=(6, 6, 3), seed=2, dtype="float64").compile("mse", "sgd")
    remove = fnn.prune.select(gap, 0, amount=0.5)
    norms = np.sqrt((gap.layers[0].weight ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_array_equal(remove, np.sort(np.argsort(norms)[:3]))       # l2 over every tap and channel
    keep = np.setdiff1d(np.arange(6), remove)
    small = fnn.prune.neurons(gap, 0, amount=0.5)
    np.testing.assert_array_equal(small.layers[2].weight, gap.layers[2].weight[keep])
    # activation criterion: a channel's mean |output| over every sample and position
    act = np.abs(gap.layers[0].forward(X, False)).mean(axis=(0, 1, 2))
    np.testing.assert_array_equal(fnn.prune.select(gap, 0, amount=2, criterion="activation", X=X),
                                  np.sort(np.argsort(act)[:2]))


def test_conv1d_filters_and_the_next_conv1d():
    X = _images(shape=(10, 3))
    model = fnn.Sequential([L.Conv1D(6, 3, activation="relu"), L.MaxPool1D(2), L.Conv1D(4, 2),
                            L.GlobalMaxPooling1D(), L.Dense(2)], input_shape=(10, 3), seed=0, dtype="float64")
    model.compile("mse", "adam")
    _kill(model.layers[0], [0, 5])
    small = fnn.prune.neurons(model, 0, criterion="dead", X=X)
    assert small.layers[0].weight.shape == (3, 3, 4) and small.layers[2].weight.shape == (2, 4, 4)
    np.testing.assert_array_equal(small.layers[2].weight, model.layers[2].weight[:, [1, 2, 3, 4], :])
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)


def test_conv_pruning_refusals_name_the_layer():
    X = _images(shape=(6, 6, 4))
    grouped = fnn.Sequential([L.Conv2D(4, 3, groups=2, name="grouped"), L.Conv2D(4, 1, groups=4, name="dw"),
                              L.Flatten(), L.Dense(2)], input_shape=(6, 6, 4), seed=0)
    with pytest.raises(ValueError, match="grouped.*groups=2"):
        fnn.prune.neurons(grouped, "grouped", amount=1)
    plain = fnn.Sequential([L.Conv2D(4, 3, name="c1"), L.Conv2D(4, 1, groups=4, name="dw"), L.Flatten(),
                            L.Dense(2)], input_shape=(6, 6, 4), seed=0)
    with pytest.raises(ValueError, match="c1.*dw.*groups=4"):
        fnn.prune.neurons(plain, "c1", amount=1)
    # a dead channel's non-zero constant cannot be folded into a padded convolution
    padded = fnn.Sequential([L.Conv2D(4, 3, activation="relu", name="c1"), L.BatchNorm(),
                             L.Conv2D(3, 3, padding="same", name="c2"), L.Flatten(), L.Dense(2)],
                            input_shape=(6, 6, 4), seed=0, dtype="float64")
    _kill(padded.layers[0], [1])
    padded.layers[1].params["bias"][1] = 0.5
    with pytest.raises(ValueError, match="c1.*c2.*padding"):
        fnn.prune.neurons(padded, "c1", criterion="dead", X=X)
    assert fnn.prune.neurons(padded, "c1", amount=1).layers[2].weight.shape == (3, 3, 3, 3)   # by norm: fine
