"""The public model API: construction, parameters, compile/fit/evaluate/predict, fused losses, the functional API,
whole-model gradient checks, reproducibility, learning (XOR, digits), initializers, threads and argument checks.

Gradient checks run whole small float64 models: ``train_on_batch`` with ``SGD(lr=0)`` runs forward, loss and
backward without moving the weights, and every element of ``model.gradients`` is compared with central
differences of ``evaluate``'s loss taken over ``model.parameters`` (which the layers see through their views).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:  # run from elsewhere than the repository root
    sys.path.insert(0, os.path.dirname(__file__))
    from _gradcheck import assert_grad_close, numeric_grad

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__)))


# ---------------------------------------------------------------------------------------------- helpers
def mlp(n_in=4, hidden=(8,), n_out=3, act="tanh", out_act=None, seed=0, dtype="float32", input_dim=True):
    layers = [Dense(h, activation=act) for h in hidden] + [Dense(n_out, activation=out_act)]
    return fnn.Sequential(layers, input_dim=n_in if input_dim else None, seed=seed, dtype=dtype)


def dense_layers(model):
    return [layer for layer in model.layers if isinstance(layer, Dense)]


def np_forward_logits(model, X):
    """The pre-activation of the last Dense layer, computed in numpy from the model's weights (tanh hidden)."""
    h = np.asarray(X, dtype=np.float64)
    dl = dense_layers(model)
    for layer in dl[:-1]:
        h = np.tanh(h @ layer.weight.astype(np.float64) + layer.bias)
    return h @ dl[-1].weight.astype(np.float64) + dl[-1].bias


def np_log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


@pytest.fixture
def one_thread():
    n = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(n)


def test_compiled_core_loaded():
    from fastnn._core import _threads, activations, dense, losses, optim
    for mod in (dense, activations, losses, optim, _threads):
        assert mod.__file__.endswith((".so", ".pyd")), mod.__file__


# ------------------------------------------------------------------------------- construction, parameters
def test_sequential_is_built_at_construction_with_input_dim():
    model = mlp(n_in=5, hidden=(7,), n_out=3, seed=3)
    assert model.built
    d1, d2 = dense_layers(model)
    assert model.count_params() == 5 * 7 + 7 + 7 * 3 + 3 == model.parameters.size
    assert model.gradients.shape == model.parameters.shape
    assert d1.weight.shape == (5, 7) and d1.bias.shape == (7,)
    assert d2.weight.shape == (7, 3) and d2.bias.shape == (3,)
    for layer in (d1, d2):
        for arr, grad in ((layer.weight, layer.weight_grad), (layer.bias, layer.bias_grad)):
            assert arr.dtype == np.float32
            assert np.shares_memory(arr, model.parameters)
            assert np.shares_memory(grad, model.gradients)
        assert np.any(layer.weight != 0)                         # initialized, not left at zero
        a = np.sqrt(6.0 / sum(layer.weight.shape))               # default xavier_uniform
        assert np.abs(layer.weight).max() <= a
        np.testing.assert_array_equal(layer.bias, 0)             # default bias_init "zeros"
    # writing through the flat buffer is seen by the layer and vice versa
    model.parameters[...] = np.arange(model.parameters.size)
    assert set(np.concatenate([d1.weight.ravel(), d1.bias, d2.weight.ravel(), d2.bias])) == \
        set(np.arange(model.parameters.size, dtype=np.float32))


def test_weights_are_initialized_from_the_seed():
    a, b, c = mlp(seed=7), mlp(seed=7), mlp(seed=8)
    np.testing.assert_array_equal(a.parameters, b.parameters)
    assert not np.array_equal(a.parameters, c.parameters)


def test_parameters_are_the_same_objects_before_and_after_compile_and_fit():
    model = mlp(n_in=4, hidden=(6,), n_out=3, seed=0)
    d1, d2 = dense_layers(model)
    params, grads = model.parameters, model.gradients
    w1, b1, w2 = d1.weight, d1.bias, d2.weight
    new_w1 = np.linspace(-1, 1, w1.size).reshape(w1.shape)
    d1.weight = new_w1
    d2.bias = [0.5, -0.5, 0.25]
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
    assert model.parameters is params and model.gradients is grads
    assert d1.weight is w1 and d1.bias is b1 and d2.weight is w2
    np.testing.assert_array_equal(d1.weight, new_w1.astype(np.float32))     # compile keeps the weights
    np.testing.assert_array_equal(d2.bias, np.float32([0.5, -0.5, 0.25]))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    model.fit(X, y, epochs=2, batch_size=8)
    assert model.parameters is params and model.gradients is grads
    assert d1.weight is w1 and d1.bias is b1 and d2.weight is w2
    assert np.shares_memory(d1.weight, model.parameters)
    assert not np.array_equal(d1.weight, new_w1.astype(np.float32))         # fit trained these very arrays
    model.compile(loss="cross_entropy", optimizer="adam")                   # recompiling keeps them too
    assert model.parameters is params and d1.weight is w1


def test_weight_assignment_copies_into_the_view():
    model = mlp(n_in=3, hidden=(), n_out=2, seed=0)
    (d,) = dense_layers(model)
    view = d.weight
    new = np.ones((3, 2))
    d.weight = new
    new[0, 0] = 99.0                                    # the model holds a copy, not the caller's array
    assert d.weight is view
    np.testing.assert_array_equal(d.weight, 1.0)
    np.testing.assert_array_equal(model.parameters[:6], 1.0)
    with pytest.raises(ValueError, match=r"weight.*\(3, 2\).*\(2, 3\)"):
        d.weight = np.ones((2, 3))
    with pytest.raises(ValueError, match="bias"):
        d.bias = [np.nan, 0.0]
    np.testing.assert_array_equal(d.weight, 1.0)


# ------------------------------------------------------------------------------------ train / evaluate
def test_train_on_batch_returns_the_loss_before_the_update():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
    model = mlp(dtype="float64", seed=1)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.5))
    for _ in range(3):
        before = model.evaluate(X, y)["loss"]
        params = model.parameters.copy()
        loss = model.train_on_batch(X, y)
        assert isinstance(loss, float)
        assert loss == pytest.approx(before, rel=1e-12)
        assert not np.array_equal(params, model.parameters)
        assert model.evaluate(X, y)["loss"] < before


def test_fit_history_is_the_loss_measured_while_training():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(24, 4)), rng.integers(0, 3, 24)
    model = mlp(dtype="float64")
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
    first = model.evaluate(X, y)
    hist = model.fit(X, y, epochs=3, batch_size=24, shuffle=False)     # one full batch per epoch
    assert hist.epoch == [0, 1, 2]
    assert len(hist.history["loss"]) == 3 and len(hist.history["accuracy"]) == 3
    assert hist.history["loss"][0] == pytest.approx(first["loss"], rel=1e-12)
    assert hist.history["accuracy"][0] == pytest.approx(first["accuracy"])
    assert hist.history["loss"][2] < hist.history["loss"][0]


def test_evaluate_returns_loss_and_accuracy():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    model = mlp(dtype="float64")
    model.compile(loss="cross_entropy", optimizer="sgd")
    scores = model.evaluate(X, y)
    assert set(scores) == {"loss", "accuracy"}
    z = np_forward_logits(model, X)
    assert scores["loss"] == pytest.approx(-np_log_softmax(z)[np.arange(30), y].mean(), rel=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == y))
    assert model.evaluate(X, y, batch_size=7)["loss"] == pytest.approx(scores["loss"], rel=1e-12)
    reg = mlp(n_out=2, dtype="float64")
    reg.compile(loss="mse", optimizer="sgd")
    t = rng.normal(size=(30, 2))
    scores = reg.evaluate(X, t)
    assert set(scores) == {"loss"}
    assert scores["loss"] == pytest.approx(np.mean((np_forward_logits(reg, X) - t) ** 2), rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("softmax_as", ["activation", "layer"])
def test_softmax_output_predicts_probabilities_and_cross_entropy_is_fused(softmax_as, dtype):
    rng = np.random.default_rng(4)
    if softmax_as == "activation":
        model = mlp(n_in=4, hidden=(6,), n_out=5, out_act="softmax", dtype=dtype)
    else:
        model = fnn.Sequential([Dense(6, activation="tanh"), Dense(5), fnn.layers.Softmax()], input_dim=4,
                               dtype=dtype)
    model.compile(loss="cross_entropy", optimizer="sgd")
    dense_layers(model)[-1].weight *= 300.0    # huge logits: softmax probabilities underflow to exactly 0
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 5, 40)
    z = np_forward_logits(model, X)
    P = model.predict(X)
    assert P.shape == (40, 5) and P.dtype == np.dtype(dtype)
    assert np.all(P >= 0) and np.all(P <= 1)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(P, np.exp(np_log_softmax(z)), atol=1e-5 if dtype == "float32" else 1e-12)
    want = -np_log_softmax(z)[np.arange(40), y].mean()
    assert np.isfinite(want) and want > 10       # -log of the probabilities would be inf: only fused is right
    scores = model.evaluate(X, y)
    assert scores["loss"] == pytest.approx(want, rel=1e-4 if dtype == "float32" else 1e-10)
    assert scores["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == y))
    loss = model.train_on_batch(X, y)
    assert np.isfinite(loss) and loss == pytest.approx(want, rel=1e-4 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_output_predicts_probabilities_and_binary_cross_entropy_is_fused(dtype):
    rng = np.random.default_rng(5)
    model = mlp(n_in=4, hidden=(6,), n_out=3, out_act="sigmoid", dtype=dtype)
    model.compile(loss="binary_cross_entropy", optimizer="sgd")
    dense_layers(model)[-1].weight *= 200.0
    X = rng.normal(size=(30, 4))
    T = rng.uniform(0, 1, size=(30, 3))
    z = np_forward_logits(model, X)
    P = model.predict(X)
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-z)), atol=2e-5 if dtype == "float32" else 1e-12)
    want = np.mean(np_softplus(z) - T * z)
    scores = model.evaluate(X, T)
    assert set(scores) == {"loss", "accuracy"}
    assert scores["loss"] == pytest.approx(want, rel=1e-4 if dtype == "float32" else 1e-10)
    assert scores["accuracy"] == pytest.approx(np.mean((z > 0) == (T > 0.5)))
    # one output: targets (n,) are accepted
    one = mlp(n_in=4, hidden=(6,), n_out=1, out_act="sigmoid", dtype=dtype)
    one.compile(loss="binary_cross_entropy", optimizer="sgd")
    t = (rng.uniform(size=30) > 0.5).astype(float)
    z1 = np_forward_logits(one, X)[:, 0]
    assert one.evaluate(X, t)["loss"] == pytest.approx(np.mean(np_softplus(z1) - t * z1), rel=1e-5)


def test_cross_entropy_with_probability_targets():
    rng = np.random.default_rng(6)
    model = mlp(n_in=4, hidden=(6,), n_out=4, dtype="float64")
    model.compile(loss="cross_entropy", optimizer="sgd")
    X = rng.normal(size=(25, 4))
    T = rng.dirichlet(np.ones(4), size=25)
    z = np_forward_logits(model, X)
    scores = model.evaluate(X, T)
    assert scores["loss"] == pytest.approx(-(T * np_log_softmax(z)).sum(axis=1).mean(), rel=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == T.argmax(axis=1)))
    # one-hot rows give the same loss as the labels
    y = rng.integers(0, 4, 25)
    assert model.evaluate(X, np.eye(4)[y])["loss"] == pytest.approx(model.evaluate(X, y)["loss"], rel=1e-12)


@pytest.mark.parametrize("first_call", ["fit", "predict", "train_on_batch"])
def test_deferred_build(first_call):
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(12, 5)), rng.integers(0, 3, 12)
    model = mlp(n_in=5, hidden=(6,), n_out=3, seed=11, input_dim=False)
    ref = mlp(n_in=5, hidden=(6,), n_out=3, seed=11)
    assert not model.built
    with pytest.raises(AttributeError):
        _ = dense_layers(model)[0].weight
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
    ref.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
    if first_call == "predict":
        out = model.predict(X)
        assert out.shape == (12, 3)
    elif first_call == "fit":
        model.fit(X, y, epochs=1, batch_size=4)
        ref.fit(X, y, epochs=1, batch_size=4)
    else:
        model.train_on_batch(X, y)
        ref.train_on_batch(X, y)
    assert model.built and model.input_shape == (5,)
    assert dense_layers(model)[0].weight.shape == (5, 6)
    assert np.shares_memory(dense_layers(model)[0].weight, model.parameters)
    # built from the same seed as a model built at construction, and trained the same way
    np.testing.assert_array_equal(model.parameters, ref.parameters)


def test_functional_model_trains_exactly_like_sequential(one_thread):
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(50, 6)), rng.integers(0, 4, 50)
    seq = fnn.Sequential([Dense(10, activation="relu"), Dense(8, activation="tanh"), Dense(4)], input_dim=6,
                         seed=5)
    x = fnn.Input(6)
    h = Dense(10, activation="relu")(x)
    h = Dense(8, activation="tanh")(h)
    fun = fnn.Model(x, Dense(4)(h), seed=5)
    np.testing.assert_array_equal(fun.parameters, seq.parameters)
    for m in (seq, fun):
        m.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=0.01))
    h1 = seq.fit(X, y, epochs=3, batch_size=16)
    h2 = fun.fit(X, y, epochs=3, batch_size=16)
    np.testing.assert_array_equal(fun.parameters, seq.parameters)
    assert h1.history["loss"] == h2.history["loss"]
    np.testing.assert_array_equal(fun.predict(X), seq.predict(X))


# ------------------------------------------------------------------------------ whole-model gradient checks
def _gradcheck(model, loss, X, y, rtol=1e-6, atol=1e-8):
    """Compare model.gradients after one backward with central differences of evaluate's loss."""
    assert model.dtype == np.float64
    model.compile(loss=loss, optimizer=fnn.optim.SGD(lr=0.0))
    before = model.parameters.copy()
    model.gradients[...] = 12345.0            # a backward that skips an element cannot pass
    model.train_on_batch(X, y)
    np.testing.assert_array_equal(model.parameters, before)           # lr = 0: the weights did not move
    analytic = model.gradients.copy()
    numeric = numeric_grad(lambda p: model.evaluate(X, y)["loss"], model.parameters, eps=1e-6)
    np.testing.assert_array_equal(model.parameters, before)
    for layer in dense_layers(model):          # every layer gets a gradient, not only the last
        assert np.any(layer.weight_grad != 0), layer.name
    assert_grad_close(analytic, numeric, rtol=rtol, atol=atol)


ACTIVATIONS = [
    ("identity", lambda: "identity"),
    ("relu", lambda: "relu"),
    ("leaky_relu", lambda: "leaky_relu"),
    ("leaky_relu_0.2", lambda: fnn.layers.LeakyReLU(0.2)),
    ("sigmoid", lambda: "sigmoid"),
    ("tanh", lambda: "tanh"),
    ("softmax", lambda: "softmax"),
    ("gelu", lambda: "gelu"),
    ("gelu_tanh", lambda: fnn.layers.GELU(approximate="tanh")),
    ("silu", lambda: "silu"),
    ("swish", lambda: "swish"),
    ("elu", lambda: "elu"),
    ("elu_0.5", lambda: fnn.layers.ELU(0.5)),
    ("selu", lambda: "selu"),
    ("softplus", lambda: "softplus"),
    ("mish", lambda: "mish"),
]


def test_activation_table_covers_every_registered_name():
    """A new activation name in fastnn.layers.activations.REGISTRY needs its row in ACTIVATIONS above."""
    from fastnn.layers.activations import REGISTRY
    assert set(REGISTRY) - {"linear"} <= {a[0] for a in ACTIVATIONS}


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("name,act", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_gradcheck_activation_in_dense(name, act, n):
    rng = np.random.default_rng(9)
    model = fnn.Sequential([Dense(6, activation=act()), Dense(5, activation=act()), Dense(2)], input_dim=3,
                           seed=1, dtype="float64")
    for layer in dense_layers(model):
        layer.bias = rng.normal(scale=0.5, size=layer.bias.shape)     # non-zero biases: their gradient matters
    X, T = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    _gradcheck(model, "mse", X, T)


ACTIVATION_LAYERS = [
    ("identity", fnn.layers.Identity), ("relu", fnn.layers.ReLU), ("leaky_relu", lambda: fnn.layers.LeakyReLU(0.3)),
    ("sigmoid", fnn.layers.Sigmoid), ("tanh", fnn.layers.Tanh), ("softmax", fnn.layers.Softmax),
    ("gelu", fnn.layers.GELU), ("gelu_tanh", lambda: fnn.layers.GELU(approximate="tanh")), ("silu", fnn.layers.SiLU),
    ("elu", lambda: fnn.layers.ELU(0.7)), ("selu", fnn.layers.SELU), ("softplus", fnn.layers.Softplus),
    ("mish", fnn.layers.Mish),
]


@pytest.mark.parametrize("name,make", ACTIVATION_LAYERS, ids=[a[0] for a in ACTIVATION_LAYERS])
def test_gradcheck_activation_layer(name, make):
    """Activation layers standing alone, in the middle and at the output (unfused: the loss is mse)."""
    rng = np.random.default_rng(10)
    model = fnn.Sequential([Dense(6), make(), Dense(4), make()], input_dim=3, seed=2, dtype="float64")
    for layer in dense_layers(model):
        layer.bias = rng.normal(scale=0.5, size=layer.bias.shape)
    X, T = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    _gradcheck(model, "mse", X, T)


def _targets(kind, rng, n, k):
    if kind == "regression":
        return rng.normal(size=(n, k))
    if kind == "far":                      # |prediction - target| >= 2: no kink of |.| within eps
        return rng.choice([-1.0, 1.0], size=(n, k)) * rng.uniform(2.5, 4.0, size=(n, k))
    if kind == "labels":
        return rng.integers(0, k, n)
    if kind == "probabilities":
        return rng.dirichlet(np.ones(k), size=n)
    if kind == "binary":
        return (rng.uniform(size=(n, k)) > 0.5).astype(float)
    if kind == "soft":
        return rng.uniform(size=(n, k))
    raise ValueError(kind)


LOSSES = [  # (loss, output activation, targets)
    ("l2", None, "regression"),
    ("mse", None, "regression"),
    ("mae", None, "far"),
    ("cross_entropy", None, "labels"),
    ("cross_entropy", "softmax", "labels"),
    ("cross_entropy", None, "probabilities"),
    ("cross_entropy", "softmax", "probabilities"),
    ("binary_cross_entropy", None, "binary"),
    ("binary_cross_entropy", "sigmoid", "soft"),
    ("mse", "sigmoid", "soft"),            # a sigmoid output not fused with a loss that does not absorb it
    ("mse", "softmax", "probabilities"),
]


@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("loss,out_act,targets", LOSSES, ids=[f"{a}-{b}-{c}" for a, b, c in LOSSES])
def test_gradcheck_loss(loss, out_act, targets, n):
    rng = np.random.default_rng(11)
    model = mlp(n_in=3, hidden=(5,), n_out=4, act="tanh", out_act=out_act, seed=3, dtype="float64")
    for layer in dense_layers(model):
        layer.bias = rng.normal(scale=0.5, size=layer.bias.shape)
    X = rng.normal(size=(n, 3))
    _gradcheck(model, loss, X, _targets(targets, rng, n, 4))


def test_gradcheck_binary_cross_entropy_single_output_with_flat_targets():
    rng = np.random.default_rng(12)
    model = mlp(n_in=3, hidden=(5,), n_out=1, out_act="sigmoid", seed=4, dtype="float64")
    X = rng.normal(size=(8, 3))
    _gradcheck(model, "binary_cross_entropy", X, (rng.uniform(size=8) > 0.5).astype(float))


# ------------------------------------------------------------------------------------- edge batch sizes
def test_batches_of_one_row():
    rng = np.random.default_rng(13)
    X, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    model = mlp(dtype="float64")
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
    before = model.evaluate(X[:1], y[:1])["loss"]
    assert model.train_on_batch(X[:1], y[:1]) == pytest.approx(before, rel=1e-12)
    assert model.predict(X[:1]).shape == (1, 3)
    np.testing.assert_allclose(model.predict(X)[2:3], model.predict(X[2:3]), rtol=1e-12)
    hist = model.fit(X, y, epochs=2, batch_size=1)
    assert len(hist.history["loss"]) == 2 and np.all(np.isfinite(hist.history["loss"]))
    # batch_size that does not divide n: the last batch is smaller; and batch_size > n
    model.fit(X, y, epochs=1, batch_size=3)
    model.fit(X, y, epochs=1, batch_size=100)
    np.testing.assert_allclose(model.predict(X, batch_size=2), model.predict(X), rtol=1e-12)
    assert np.all(np.isfinite(model.parameters))


@pytest.mark.parametrize("out_act", [None, "softmax", "sigmoid"])
def test_predict_on_zero_rows(out_act):
    model = mlp(n_in=4, n_out=3, out_act=out_act)
    out = model.predict(np.zeros((0, 4)))
    assert out.shape == (0, 3) and out.dtype == np.float32
    deferred = mlp(n_in=4, n_out=3, out_act=out_act, input_dim=False)
    assert deferred.predict(np.zeros((0, 4))).shape == (0, 3)


# ---------------------------------------------------------------------------------------- reproducibility
def _train(seed, X, y):
    model = fnn.Sequential([Dense(16, activation="relu"), Dense(8, activation="tanh"), Dense(3)], input_dim=5,
                           seed=seed)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=0.01))
    model.fit(X, y, epochs=3, batch_size=8, shuffle=True)
    return model.parameters.copy()


def test_same_seed_gives_bitwise_identical_training(one_thread):
    rng = np.random.default_rng(14)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    a, b, c = _train(3, X, y), _train(3, X, y), _train(4, X, y)
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_xor_is_learned(act):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    model = fnn.Sequential([Dense(8, activation=act), Dense(2)], input_dim=2, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=0.05))
    model.fit(X, y, epochs=300, batch_size=4)
    assert model.evaluate(X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(model.predict(X).argmax(axis=1), y)


def test_digits_reach_96_percent_with_the_demo_settings():
    # the settings of `python -m fastnn demo` (fastnn/__main__.py), its defaults
    X, y = fnn.datasets.load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,) and 0 <= X.min() and X.max() <= 1
    X_train, y_train, X_test, y_test = fnn.datasets.stratified_split(X, y, test_fraction=0.2, seed=0)
    assert len(X_test) == pytest.approx(0.2 * len(X), abs=10)
    X_train, y_train, X_val, y_val = fnn.datasets.stratified_split(X_train, y_train, test_fraction=0.125, seed=0)
    model = fnn.Sequential([
        Dense(128, activation="relu", kernel_init="he_normal"),
        Dense(64, activation="tanh"),
        Dense(10),
    ], input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=2e-3))
    hist = model.fit(X_train, y_train, epochs=20, batch_size=32, validation_data=(X_val, y_val))
    assert set(hist.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert model.evaluate(X_test, y_test)["accuracy"] >= 0.96


def test_demo_command_exits_0():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "fastnn", "demo"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test accuracy" in proc.stdout


# ------------------------------------------------------------------------------------------- initializers
N_IN, N_OUT = 400, 300
INITIALIZERS = [  # (name, "uniform" limit or "normal" std, as documented in fastnn/initializers.py)
    ("glorot_bengio_uniform", "uniform", 1 / np.sqrt(N_IN)),
    ("xavier_uniform", "uniform", np.sqrt(6 / (N_IN + N_OUT))),
    ("glorot_uniform", "uniform", np.sqrt(6 / (N_IN + N_OUT))),
    ("xavier_normal", "normal", np.sqrt(2 / (N_IN + N_OUT))),
    ("glorot_normal", "normal", np.sqrt(2 / (N_IN + N_OUT))),
    ("he_normal", "normal", np.sqrt(2 / N_IN)),
    ("he_uniform", "uniform", np.sqrt(6 / N_IN)),
    ("lecun_normal", "normal", np.sqrt(1 / N_IN)),
    ("lecun_uniform", "uniform", np.sqrt(3 / N_IN)),
]


def _layer_weight(kernel_init, seed, dtype="float64"):
    model = fnn.Sequential([Dense(N_OUT, kernel_init=kernel_init)], input_dim=N_IN, seed=seed, dtype=dtype)
    return dense_layers(model)[0].weight.copy()


@pytest.mark.parametrize("name,dist,scale", INITIALIZERS, ids=[i[0] for i in INITIALIZERS])
def test_initializer_statistics(name, dist, scale):
    W = _layer_weight(name, seed=0)
    n = W.size
    if dist == "uniform":
        std = scale / np.sqrt(3)
        assert np.abs(W).max() <= scale
        assert np.abs(W).max() > 0.999 * scale               # fills the whole interval
        # a uniform's fourth moment: E[w^4] = a^4 / 5 (a normal of the same std would give 3 std^4)
        assert np.mean(W ** 4) == pytest.approx(scale ** 4 / 5, rel=0.03)
    else:
        std = scale
        assert np.abs(W).max() > 3.5 * std                     # normal tails
        assert np.mean(W ** 4) == pytest.approx(3 * std ** 4, rel=0.05)
    assert W.std() == pytest.approx(std, rel=0.01)
    assert abs(W.mean()) < 5 * std / np.sqrt(n)
    # reproducible from the seed, different for another seed; the same draw in float32
    np.testing.assert_array_equal(W, _layer_weight(name, seed=0))
    assert not np.array_equal(W, _layer_weight(name, seed=1))
    np.testing.assert_array_equal(_layer_weight(name, seed=0, dtype="float32"), W.astype(np.float32))
    # the initializer itself, called with a generator, is seeded by that generator only
    init = fnn.initializers.get(name)
    a = init((N_IN, N_OUT), np.random.default_rng(5))
    b = init((N_IN, N_OUT), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.std() == pytest.approx(std, rel=0.01)


@pytest.mark.parametrize("init,value", [("zeros", 0.0), ("ones", 1.0), (fnn.initializers.Constant(0.25), 0.25)])
def test_constant_initializers(init, value):
    model = fnn.Sequential([Dense(5, kernel_init=init, bias_init=init)], input_dim=4)
    d = dense_layers(model)[0]
    np.testing.assert_array_equal(d.weight, value)
    np.testing.assert_array_equal(d.bias, value)


def test_bias_initializer_is_used():
    model = fnn.Sequential([Dense(300, bias_init="he_uniform")], input_dim=4, seed=0)
    b = dense_layers(model)[0].bias
    assert np.abs(b).max() <= np.sqrt(6 / 300) and np.any(b != 0)


# ------------------------------------------------------------------------------------------------ threads
def test_num_threads_round_trip(restore_threads):
    from fastnn._core._threads import have_openmp
    n0 = fnn.get_num_threads()
    assert isinstance(n0, int) and n0 >= 1
    for n in (1, 3, 2, n0):
        fnn.set_num_threads(n)
        # a build without OpenMP (FASTNN_NO_OPENMP=1) runs every kernel on one thread, and says so
        assert fnn.get_num_threads() == (n if have_openmp() else 1)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError),
                                     (True, TypeError), (None, TypeError), (np.float64(2.0), TypeError)])
def test_set_num_threads_rejects_bad_values(bad, exc, restore_threads):
    n0 = fnn.get_num_threads()
    with pytest.raises(exc, match="set_num_threads"):
        fnn.set_num_threads(bad)
    assert fnn.get_num_threads() == n0


# ----------------------------------------------------------------------------- constructor argument checks
O = fnn.optim
BAD_OPTIMIZERS = [
    (lambda: O.Adam(lr=-1), ValueError, "lr"),
    (lambda: O.Adam(lr="0.1"), TypeError, "lr"),
    (lambda: O.Adam(lr=None), TypeError, "lr"),
    (lambda: O.Adam(lr=float("nan")), ValueError, "lr"),
    (lambda: O.SGD(lr=True), TypeError, "lr"),
    (lambda: O.SGD(lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: O.SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: O.SGD(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda: O.Adam(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (lambda: O.Adam(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    (lambda: O.Adam(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]"),
    (lambda: O.AdamW(betas=(0.9,)), TypeError, "betas"),
    (lambda: O.Adam(betas="ab"), TypeError, "betas"),
    (lambda: O.Adam(eps=-1e-8), ValueError, "eps"),
    (lambda: O.Adam(weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: O.Adam(amsgrad=1), TypeError, "amsgrad"),
    (lambda: O.RMSprop(alpha=-0.5), ValueError, "alpha"),
    (lambda: O.Adagrad(lr_decay=-1), ValueError, "lr_decay"),
    (lambda: O.SGD(decay_bias="yes"), TypeError, "decay_bias"),
]


@pytest.mark.parametrize("make,exc,match", BAD_OPTIMIZERS, ids=[str(i) for i in range(len(BAD_OPTIMIZERS))])
def test_optimizer_constructor_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("cls", [O.SGD, O.Adagrad, O.RMSprop, O.Adam, O.AdamW])
def test_optimizer_lr_zero_is_valid_and_keeps_weights(cls):
    opt = cls(lr=0)
    assert opt.lr == 0.0
    model = mlp(seed=0)
    model.compile(loss="cross_entropy", optimizer=opt)
    before = model.parameters.copy()
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.normal(size=(8, 4)), rng.integers(0, 3, 8))
    np.testing.assert_array_equal(model.parameters, before)     # AdamW's decay is lr * weight_decay: 0 too
    assert np.any(model.gradients != 0)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.1
    assert opt.lr == 0.0


def test_optimizer_names_and_defaults():
    model = mlp()
    for name, cls in [("sgd", O.SGD), ("adam", O.Adam), ("AdamW", O.AdamW), ("rmsprop", O.RMSprop),
                      ("adagrad", O.Adagrad)]:
        model.compile(loss="cross_entropy", optimizer=name)
        assert type(model.optimizer) is cls


BAD_NAMES = [
    (lambda: Dense(3, activation="nonsense"), ValueError, "nonsense"),
    (lambda: Dense(3, kernel_init="nope"), ValueError, "nope"),
    (lambda: Dense(3, bias_init="nope"), ValueError, "nope"),
    (lambda: Dense(3, kernel_init="constant"), ValueError, "Constant"),
    (lambda: Dense(3, activation=3), TypeError, "activation"),
    (lambda: Dense(0), ValueError, "units"),
    (lambda: Dense(2.5), TypeError, "units"),
    (lambda: mlp().compile(loss="nope"), ValueError, "nope"),
    (lambda: mlp().compile(loss="mse", optimizer="nope"), ValueError, "nope"),
    (lambda: mlp().compile(loss=None), TypeError, "loss"),
    (lambda: mlp().compile(loss="mse", optimizer=1e-3), TypeError, "optimizer"),
    (lambda: fnn.Sequential([Dense(3)], input_dim=4, dtype="int32"), ValueError, "dtype"),
    (lambda: fnn.Sequential([Dense(3)], input_dim=4, seed=-1), ValueError, "seed"),
    (lambda: fnn.Sequential([Dense(3)], input_dim=4, seed=1.5), TypeError, "seed"),
    (lambda: fnn.Sequential([Dense(3)], input_dim=0), ValueError, "shape"),
    (lambda: fnn.Sequential(["dense"], input_dim=4), TypeError, "layer"),
    (lambda: fnn.Input("4"), TypeError, "shape"),
]


@pytest.mark.parametrize("make,exc,match", BAD_NAMES, ids=[str(i) for i in range(len(BAD_NAMES))])
def test_unknown_names_and_bad_arguments_raise_at_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_compile_with_unknown_name_leaves_the_model_compiled_as_before():
    model = mlp()
    model.compile(loss="mse", optimizer="sgd")
    loss, opt = model.loss, model.optimizer
    with pytest.raises(ValueError):
        model.compile(loss="cross_entropy", optimizer="nope")
    assert model.loss is loss and model.optimizer is opt
