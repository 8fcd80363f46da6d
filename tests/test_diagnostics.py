"""Training-health diagnostics: the kernels' unit counters against numpy, the warnings of fit(diagnostics=True)
on networks known to be sick (and silence on a healthy one), diagnose, and gradcheck."""
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import activations as _act
from fastnn._core import dense as _dense
from fastnn._core.kinds import ACT
from fastnn.diagnostics import TrainingHealthWarning, find_problems

L = fnn.layers

# kind -> what a unit counts for (numpy oracle on the activation's output Y)
COUNTED = {
    ACT.RELU: lambda Y: Y > 0,                            # relu: active
    ACT.LEAKY_RELU: lambda Y: Y > 0,                      # leaky relu: active
    ACT.SIGMOID: lambda Y: (Y < 0.01) | (Y > 0.99),       # sigmoid: saturated
    ACT.TANH: lambda Y: np.abs(Y) > 0.99,                 # tanh: saturated
}


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.datasets.load_digits()
    return X[:600], y[:600]


# ---------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", list(ACT), ids=[k.label for k in ACT])     # every other kind counts nothing
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_activation_counters_match_numpy(kind, dtype, n_threads):
    rng = np.random.default_rng(int(kind))
    Z = (rng.standard_normal((9000, 5)) * 3).astype(dtype)    # big enough to be split over 2 threads
    Y_plain = np.empty_like(Z)
    _act.activation_forward(kind, Z, Y_plain, 0.1, n_threads)
    Y = np.empty_like(Z)
    counts = np.full((n_threads, 5), 7, dtype=np.int64)      # the kernel adds to what is there
    _act.activation_forward(kind, Z, Y, 0.1, n_threads, counts)
    np.testing.assert_array_equal(Y, Y_plain)                # counting does not change the output
    want = COUNTED[kind](Y).sum(axis=0) if kind in COUNTED else np.zeros(5, np.int64)
    np.testing.assert_array_equal(counts.sum(axis=0) - 7 * n_threads, want)


@pytest.mark.parametrize("kind", sorted(COUNTED))
def test_dense_counters_match_numpy(kind):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8))
    W = rng.standard_normal((8, 6))
    b = rng.standard_normal(6)
    Z, Y = np.empty((300, 6)), np.empty((300, 6))
    counts = np.zeros((2, 6), dtype=np.int64)
    _dense.dense_forward(X, W, b, Z, Y, kind, 0.1, 2, counts)
    np.testing.assert_array_equal(counts.sum(axis=0), COUNTED[kind](Y).sum(axis=0))


def test_counter_buffer_is_checked():
    Z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="counts"):
        _act.activation_forward(ACT.RELU, Z, Z.copy(), 0.0, 1, np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="counts"):
        _dense.dense_forward(np.zeros((4, 2)), np.zeros((2, 3)), None, Z, Z.copy(), 1, 0.0, 1,
                             np.zeros((0, 3), np.int64))


# ---------------------------------------------------------------------------------------------- networks
def _deep_sigmoid():
    m = fnn.Sequential([L.Dense(32, activation="sigmoid") for _ in range(10)] + [L.Dense(10)], input_dim=64,
                       seed=0)
    return m.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))


def _dead_relu():
    m = fnn.Sequential([L.Dense(64, activation="relu", bias_init=fnn.initializers.Constant(-20.0)),
                        L.Dense(32, activation="relu", kernel_init="he_normal"), L.Dense(10)], input_dim=64, seed=0)
    return m.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3))


def _healthy():
    m = fnn.Sequential([L.Dense(64, activation="relu", kernel_init="he_normal"),
                        L.Dense(32, activation="tanh"), L.Dense(10)], input_dim=64, seed=0)
    return m.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3))


def test_deep_sigmoid_stack_is_reported_as_vanishing(digits):
    X, y = digits
    model = _deep_sigmoid()
    with pytest.warns(TrainingHealthWarning, match="vanish") as rec:
        hist = model.fit(X, y, epochs=2, batch_size=64, diagnostics=True)
    msgs = [str(w.message) for w in rec if issubclass(w.category, TrainingHealthWarning)]
    assert len([m for m in msgs if "vanish" in m]) == 1                      # once, not every epoch
    assert any(f"layer {l.name} " in m for l in model.layers[:-1] for m in msgs)      # names a hidden layer
    diag = hist.history["diagnostics"]
    assert len(diag) == 2
    first, last = model.layers[0].name, model.layers[-1].name
    assert diag[-1][first]["grad_norm"] < 1e-3 * diag[-1][last]["grad_norm"]
    assert set(diag[-1][first]) >= {"grad_norm", "weight_norm", "update_ratio", "saturated_fraction"}


def test_large_negative_bias_is_reported_as_dead_relus(digits):
    X, y = digits
    model = _dead_relu()
    name = model.layers[0].name
    with pytest.warns(TrainingHealthWarning) as rec:
        hist = model.fit(X, y, epochs=1, batch_size=64, diagnostics=True)
    # the layer after it gets only zeros, so its ReLUs (bias 0) are dead too: both are named
    msgs = [str(w.message) for w in rec]
    assert any(f"100% of the ReLU units of layer {name} are dead" in m for m in msgs), msgs
    assert hist.history["diagnostics"][0][name]["dead_fraction"] == 1.0
    d = model.diagnose(X, y, verbose=False)
    assert d[name]["dead_fraction"] == 1.0
    assert any(kind == "dead" and layer == name for kind, layer, _ in d.problems)
    # a dead layer's zero gradient is reported as dead, not (also) as vanishing
    assert not any(kind == "vanishing" for kind, _, _ in d.problems)


def test_healthy_network_raises_no_warning(digits):
    X, y = digits
    model = _healthy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hist = model.fit(X, y, epochs=3, batch_size=64, diagnostics=True)
        d = model.diagnose(X, y, verbose=False)
    assert d.problems == []
    assert len(hist.history["diagnostics"]) == 3
    for epoch in hist.history["diagnostics"]:
        for entry in epoch.values():
            assert all(np.isfinite(v) for k, v in entry.items() if k != "activation")
    # the monitor is detached after fit: the kernels run without counters again
    assert all(l._act_counts is None for l in model.layers) and model.trainer.monitor is None
    assert all(getattr(l, "_act_counts", None) is None for l in model.layers)


def test_fit_diagnostics_match_a_numpy_computation(digits):
    """One full batch per epoch: the recorded numbers are the gradient/update of that step and the counters
    of its forward pass."""
    X, y = digits
    model = _healthy()
    before = model.parameters.copy()
    # the gradient the step uses, computed beforehand with diagnose (inference = training here: no dropout/BN)
    grads = model.diagnose(X, y, verbose=False)
    h1 = model.layers[0].weight.astype(np.float64)
    a1 = np.maximum(X @ h1 + model.layers[0].bias, 0)
    h2 = np.tanh(a1 @ model.layers[1].weight + model.layers[1].bias)
    hist = model.fit(X, y, epochs=1, batch_size=len(X), shuffle=False, diagnostics=True)
    rec = hist.history["diagnostics"][0]
    n0, n1 = model.layers[0].name, model.layers[1].name
    assert rec[n0]["dead_fraction"] == pytest.approx(np.mean(~(a1 > 0).any(axis=0)))
    assert rec[n1]["saturated_fraction"] == pytest.approx(np.mean(np.abs(h2) > 0.99), abs=2e-3)
    for name in (n0, n1):
        assert rec[name]["grad_norm"] == pytest.approx(grads[name]["grad_norm"], rel=1e-4)
    w0 = model.layers[0]
    upd = np.sqrt(np.sum((w0.weight - before[:w0.weight.size].reshape(w0.weight.shape)) ** 2.0)
                  + np.sum((w0.bias - 0.0) ** 2.0))
    wn = np.sqrt(np.sum(w0.weight.astype(np.float64) ** 2) + np.sum(w0.bias.astype(np.float64) ** 2))
    assert rec[n0]["update_ratio"] == pytest.approx(upd / wn, rel=1e-3)
    assert rec[n0]["weight_norm"] == pytest.approx(wn, rel=1e-5)


def test_diagnose_prints_a_table_and_changes_nothing(digits, capsys):
    X, y = digits
    model = fnn.Sequential([L.Dense(32, activation="relu"), L.BatchNorm(), L.Dropout(0.3), L.Dense(10)],
                           input_dim=64, seed=0).compile(loss="cross_entropy", optimizer="adam")
    model.fit(X, y, epochs=1, batch_size=100)
    state = (model.parameters.copy(), model.gradients.copy(), model.optimizer.step_count,
             {k: v.copy() for k, v in model.optimizer.state.items()}, model.layers[1].running_mean.copy(),
             model.layer_rng.bit_generator.state)
    d = model.diagnose(X, y, batch_size=128)
    out = capsys.readouterr().out
    assert "grad norm" in out and model.layers[0].name in out and "dead" in out
    assert set(d) == {model.layers[0].name, model.layers[1].name, model.layers[3].name}
    assert d.n_samples == len(X) and np.isfinite(d.loss)
    np.testing.assert_array_equal(model.parameters, state[0])
    np.testing.assert_array_equal(model.gradients, state[1])
    assert model.optimizer.step_count == state[2]
    for k, v in model.optimizer.state.items():
        np.testing.assert_array_equal(v, state[3][k])
    np.testing.assert_array_equal(model.layers[1].running_mean, state[4])
    assert model.layer_rng.bit_generator.state == state[5]
    assert all(l._act_counts is None for l in model.layers if hasattr(l, "_act_counts"))


def test_find_problems_exploding():
    stats = {"a": {"grad_norm": 5e3}, "b": {"grad_norm": 1.0}}
    assert [p[:2] for p in find_problems(stats)] == [("exploding", "a")]
    grown = {"a": {"grad_norm": 3e3}, "b": {"grad_norm": 5e3}}
    assert [p[:2] for p in find_problems(grown, first={"a": {"grad_norm": 1.0}, "b": {"grad_norm": 1.0}})] == \
        [("exploding", "a")]
    assert find_problems(grown) == []
    assert find_problems({"a": {"grad_norm": float("nan")}, "b": {"grad_norm": 1.0}})[0][0] == "exploding"
    assert find_problems({"a": {"grad_norm": 0.5}, "b": {"grad_norm": 1.0}}) == []


# ---------------------------------------------------------------------------------------------- gradcheck
def _small(dtype):
    x = fnn.Input(12)
    h = L.Dense(8, activation="tanh")(x)
    h = L.BatchNorm()(L.Dense(6)(h))
    h = L.Dropout(0.25)(L.Sigmoid()(h))
    return fnn.Model(x, L.Dense(3)(h), seed=1, dtype=dtype).compile(loss="cross_entropy", optimizer="adam")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_correct_model_has_small_errors(dtype, training):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 12)), rng.integers(0, 3, 16)
    model = _small(dtype)
    before = (model.parameters.copy(), model.layer_rng.bit_generator.state, model.layers[2].running_mean.copy())
    report = fnn.gradcheck(model, X, y, training=training)
    assert report.passed, str(report)
    assert report.max_error < 1e-4
    assert set(report.errors) == {f"{l.name}.{p}" for l in model.layers for p in l.params}
    assert not [k for k in report.zero if not k.startswith(model.layers[1].name)]   # bias before BN: 0
    np.testing.assert_array_equal(model.parameters, before[0])
    assert model.layer_rng.bit_generator.state == before[1]
    np.testing.assert_array_equal(model.layers[2].running_mean, before[2])
    assert model.dtype == np.dtype(dtype)


def test_gradcheck_finds_a_broken_backward(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 12)), rng.integers(0, 3, 16)
    model = _small("float64")
    sig = model.layers[3]
    assert isinstance(sig, L.Sigmoid)
    good = sig.backward
    monkeypatch.setattr(sig, "backward", lambda dY: good(dY) * 1.5)      # a wrong derivative
    report = fnn.gradcheck(model, X, y)
    assert not report.passed
    first = model.layers[0].name
    assert report.errors[f"{first}.weight"] > 0.1                      # everything before the sigmoid is off
    assert report.errors[f"{model.layers[-1].name}.weight"] < 1e-4      # after it, still right
    assert "FAILED" in str(report)


def test_gradcheck_on_a_float32_model_checks_a_float64_copy(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 12))
    # a broken class method reaches the copy too (the copy is rebuilt from the layers' configs)
    good = L.Tanh.backward
    monkeypatch.setattr(L.Tanh, "backward", lambda self, dY: good(self, dY) * 0.0)
    model = fnn.Sequential([L.Dense(5), L.Tanh(), L.Dense(3)], input_dim=12, seed=0, dtype="float32")
    model.compile(loss="mse")
    report = fnn.gradcheck(model, X, rng.standard_normal((16, 3)))
    assert report.errors[f"{model.layers[0].name}.weight"] == pytest.approx(1.0)
    assert f"{model.layers[0].name}.weight" in report.zero


def test_monitor_detaches_when_fit_fails(digits):
    X, y = digits

    class Boom(fnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    model = _healthy()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(X, y, epochs=2, batch_size=200, diagnostics=True, callbacks=Boom())
    assert model.trainer.monitor is None
    assert all(getattr(l, "_act_counts", None) is None for l in model.layers)
    with pytest.raises(ValueError, match="batch_size"):
        model.diagnose(X, y, batch_size=0)


def test_warning_points_at_the_fit_call(digits):
    X, y = digits
    with pytest.warns(TrainingHealthWarning) as rec:
        _dead_relu().fit(X, y, epochs=1, batch_size=200, diagnostics=True)
    assert all(w.filename == __file__ for w in rec)


def test_saturation_of_an_nd_dense_counts_every_position():
    """A Dense on (N, T, F): each (sample, position, unit) output is one count of the saturated fraction."""
    L = fnn.layers
    model = fnn.Sequential([L.Dense(6, activation="tanh"), L.Flatten(),
                            L.Dense(2)], input_shape=(5, 4), seed=0, dtype="float64").compile("mse", "sgd")
    rng = np.random.default_rng(0)
    X, y = 3 * rng.standard_normal((30, 5, 4)), rng.standard_normal((30, 2))
    d = model.diagnose(X, y, verbose=False)
    Y = np.tanh(X @ model.layers[0].weight + model.layers[0].bias)
    expected = float(np.mean(np.abs(Y) > 0.99))
    assert 0.05 < expected < 0.95
    assert d[model.layers[0].name]["saturated_fraction"] == pytest.approx(expected)


def test_conv_channels_are_the_units_of_the_counters():
    """A Conv2D(relu)'s unit is a channel, dead when 0 at every position of every sample; a Conv1D(tanh)'s
    saturated fraction counts every (sample, position, channel); fit(diagnostics=True) reports both."""
    L = fnn.layers
    model = fnn.Sequential([L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPool2D(2), L.Flatten(),
                            L.Dense(3)], input_shape=(6, 6, 2), seed=0, dtype="float64").compile("cross_entropy",
                                                                                                 "sgd")
    b = model.layers[0].bias.copy()
    b[[0, 3, 5]] = -1e4
    model.layers[0].bias = b
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 6, 6, 2)), np.arange(20) % 3
    d = model.diagnose(X, y, verbose=False)
    assert d[model.layers[0].name]["dead_fraction"] == pytest.approx(3 / 8)
    hist = model.fit(X, y, epochs=1, batch_size=10, diagnostics=True)
    assert hist.history["diagnostics"][-1][model.layers[0].name]["dead_fraction"] >= 3 / 8
    assert model.layers[0]._act_counts is None

    seq = fnn.Sequential([L.Conv1D(5, 3, padding="causal", activation="tanh"), L.GlobalAveragePooling1D(),
                          L.Dense(2)], input_shape=(7, 3), seed=1, dtype="float64").compile("mse", "sgd")
    S, t = 3 * rng.standard_normal((16, 7, 3)), rng.standard_normal((16, 2))
    d = seq.diagnose(S, t, verbose=False)
    Y = seq.layers[0].forward(S, False)
    expected = float(np.mean(np.abs(Y) > 0.99))
    assert 0.05 < expected < 0.95
    assert d[seq.layers[0].name]["saturated_fraction"] == pytest.approx(expected)
