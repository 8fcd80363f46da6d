"""Bad inputs: each raises ValueError/TypeError (RuntimeError for a missing compile) with a message that names the
argument and says what was expected and what was given, and leaves the model exactly as it was: parameters,
gradients' owner, optimizer state and step count, and the shuffling generator, compared bitwise.

Also: a loss that explodes stops fit with a FloatingPointError that names the epoch and the batch, and leaves
the weights finite (those from before the failing batch).
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense

N, D, K = 10, 4, 3


def _model(loss, n_out, out_act=None, optimizer=None):
    model = fnn.Sequential([Dense(6, activation="tanh"), Dense(n_out, activation=out_act)], input_dim=D, seed=0)
    model.compile(loss=loss, optimizer=optimizer or fnn.optim.Adam(lr=0.01, amsgrad=True))
    return model


def _good_data(kind, rng):
    X = rng.normal(size=(N, D))
    if kind == "ce":
        return X, rng.integers(0, K, N)
    if kind == "reg":
        return X, rng.normal(size=(N, 2))
    if kind == "bce":
        return X, (rng.uniform(size=(N, 2)) > 0.5).astype(float)
    raise ValueError(kind)


@pytest.fixture(params=["ce", "reg", "bce"])
def trained(request):
    """A compiled model that has taken a few steps (so the optimizer state is not all zeros), and its data."""
    kind = request.param
    rng = np.random.default_rng(0)
    model = {"ce": lambda: _model("cross_entropy", K),
             "reg": lambda: _model("mse", 2),
             "bce": lambda: _model("binary_cross_entropy", 2, out_act="sigmoid")}[kind]()
    X, y = _good_data(kind, rng)
    model.fit(X, y, epochs=2, batch_size=4)
    return kind, model, X, y


def snapshot(model):
    opt = model.optimizer
    return {
        "parameters": model.parameters.copy(),
        "parameters_id": id(model.parameters),
        "state": {k: v.copy() for k, v in opt.state.items()} if opt is not None else None,
        "step_count": opt.step_count if opt is not None else None,
        "lr": opt.lr if opt is not None else None,
        "rng": model.rng.bit_generator.state,
        "loss": model.loss,
        "optimizer": opt,
        "built": model.built,
    }


def assert_unchanged(model, snap):
    assert id(model.parameters) == snap["parameters_id"]
    assert model.parameters.tobytes() == snap["parameters"].tobytes(), "the parameters changed"
    opt = model.optimizer
    assert opt is snap["optimizer"] and model.loss is snap["loss"]
    if opt is not None:
        assert opt.step_count == snap["step_count"], "the optimizer's step count changed"
        assert opt.lr == snap["lr"]
        assert set(opt.state) == set(snap["state"])
        for k, v in snap["state"].items():
            assert opt.state[k].tobytes() == v.tobytes(), f"optimizer state {k!r} changed"
    assert model.rng.bit_generator.state == snap["rng"], "the shuffling generator moved"
    assert model.built == snap["built"]


def _strings(shape):
    return np.full(shape, "1.0")


def _objects(shape):
    a = np.empty(shape, dtype=object)
    a[...] = 1.0
    return a


def _with(value, where=(2, 1)):
    def make(X):
        X = X.copy()
        X[where] = value
        return X
    return make


# (id, make bad X from good X, exception, regex on the message)
BAD_X = [
    ("features", lambda X: X[:, :3], ValueError, r"X.*\(n, 4\).*\(10, 3\)"),
    ("features_more", lambda X: np.hstack([X, X]), ValueError, r"X.*\(n, 4\).*\(10, 8\)"),
    ("1d", lambda X: X[:, 0], ValueError, r"X.*\(10,\)"),
    ("3d", lambda X: X[:, :, None], ValueError, r"X.*\(10, 4, 1\)"),
    ("scalar", lambda X: 1.0, ValueError, r"X.*\(\)"),
    ("nan", _with(np.nan), ValueError, r"X.*NaN.*\(2, 1\)"),
    ("inf", _with(np.inf), ValueError, r"X.*infinity.*\(2, 1\)"),
    ("neg_inf", _with(-np.inf, (0, 0)), ValueError, r"X.*infinity.*\(0, 0\)"),
    ("strings", lambda X: _strings(X.shape), TypeError, r"X.*real numbers.*<U3"),
    ("str", lambda X: "abc", TypeError, r"X.*numeric.*str"),
    ("objects", lambda X: _objects(X.shape), TypeError, r"X.*real numbers.*object"),
    ("ragged", lambda X: [[1.0, 2.0, 3.0, 4.0], [1.0]], (TypeError, ValueError), r"X"),
    ("complex", lambda X: X.astype(np.complex128), TypeError, r"X.*real numbers.*complex128"),
    ("bool", lambda X: X > 0, TypeError, r"X.*real numbers.*bool"),
    ("none", lambda X: None, TypeError, r"X.*NoneType"),
]


def _call(method, model, X, y):
    if method == "fit":
        return model.fit(X, y, epochs=1, batch_size=4)
    if method == "train_on_batch":
        return model.train_on_batch(X, y)
    if method == "evaluate":
        return model.evaluate(X, y)
    if method == "predict":
        return model.predict(X)
    if method == "fit_validation":
        return model.fit(model._good_X, model._good_y, epochs=1, validation_data=(X, y))
    raise ValueError(method)


METHODS = ["fit", "train_on_batch", "evaluate", "predict", "fit_validation"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,make,exc,match", BAD_X, ids=[b[0] for b in BAD_X])
def test_bad_X(trained, method, name, make, exc, match):
    kind, model, X, y = trained
    bad = make(X)
    model._good_X, model._good_y = X, y
    snap = snapshot(model)
    owner = "fit" if method == "fit_validation" else method
    with pytest.raises(exc, match=owner) as info:
        _call(method, model, bad, y)
    assert info.match(match)
    assert_unchanged(model, snap)


def _bad_targets(kind):
    """(id, make bad y from good y, exception, regex) for the model kind."""
    rows = [
        ("short", lambda y: y[:-1], ValueError, r"y.*\(10.*\(9"),
        ("long", lambda y: np.concatenate([y, y[:1]]), ValueError, r"y.*\(10.*\(11"),
        ("strings", lambda y: np.full(y.shape, "a"), TypeError, r"y.*dtype.*<U1"),
        ("complex", lambda y: y.astype(np.complex128), TypeError, r"y.*complex128"),
        ("objects", lambda y: _objects(y.shape), TypeError, r"y.*object"),
        ("none", lambda y: None, (TypeError, ValueError), r"y"),
    ]
    if kind == "ce":
        rows += [
            ("negative_label", lambda y: np.where(np.arange(N) == 3, -1, y), ValueError,
             r"y.*label -1.*3 classes.*0\.\.2"),
            ("label_k", lambda y: np.where(np.arange(N) == 3, K, y), ValueError, r"y.*label 3.*3 classes.*0\.\.2"),
            ("label_huge", lambda y: np.where(np.arange(N) == 0, 10 ** 9, y), ValueError, r"y.*label 1000000000"),
            ("fractional", lambda y: np.where(np.arange(N) == 4, 1.5, y.astype(float)), ValueError,
             r"y.*whole numbers.*1\.5"),
            ("float_nan_label", lambda y: np.where(np.arange(N) == 4, np.nan, y.astype(float)), ValueError,
             r"y.*nan"),
            ("prob_wide", lambda y: np.full((N, K + 1), 1.0 / (K + 1)), ValueError, r"y.*\(10, 3\).*\(10, 4\)"),
            ("prob_narrow", lambda y: np.full((N, K - 1), 0.5), ValueError, r"y.*\(10, 3\).*\(10, 2\)"),
            ("prob_short", lambda y: np.full((N - 1, K), 1.0 / K), ValueError, r"y.*\(10, 3\).*\(9, 3\)"),
            ("prob_nan", lambda y: np.where(np.arange(K) == 1, np.nan, np.full((N, K), 0.5)), ValueError,
             r"y.*NaN"),
            ("3d", lambda y: np.zeros((N, K, 1)), ValueError, r"y.*\(10, 3, 1\)"),
            ("bool_labels", lambda y: y > 0, TypeError, r"y.*bool"),
        ]
    if kind in ("reg", "bce"):
        rows += [
            ("flat", lambda y: y[:, 0], ValueError, r"y.*\(10, 2\).*\(10,\)"),
            ("wide", lambda y: np.hstack([y, y]), ValueError, r"y.*\(10, 2\).*\(10, 4\)"),
            ("transposed", lambda y: np.ascontiguousarray(y.T), ValueError, r"y.*\(10, 2\).*\(2, 10\)"),
            ("nan", lambda y: np.where(np.arange(2) == 1, np.nan, y), ValueError, r"y.*NaN"),
            ("inf", lambda y: np.where(np.arange(2) == 1, np.inf, y), ValueError, r"y.*infinity"),
        ]
    if kind == "bce":
        rows += [
            ("above_1", lambda y: np.where(np.arange(2) == 1, 1.5, y), ValueError, r"y.*\[0, 1\].*1\.5"),
            ("below_0", lambda y: np.where(np.arange(2) == 0, -0.5, y), ValueError, r"y.*\[0, 1\].*-0\.5"),
        ]
    return rows


ALL_KINDS = ["ce", "reg", "bce"]
TARGET_CASES = [(kind,) + row for kind in ALL_KINDS for row in _bad_targets(kind)]


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate", "fit_validation"])
@pytest.mark.parametrize("kind,name,make,exc,match", TARGET_CASES, ids=[f"{c[0]}-{c[1]}" for c in TARGET_CASES])
def test_bad_targets(kind, name, make, exc, match, method):
    rng = np.random.default_rng(1)
    model = {"ce": lambda: _model("cross_entropy", K),
             "reg": lambda: _model("mse", 2),
             "bce": lambda: _model("binary_cross_entropy", 2, out_act="sigmoid")}[kind]()
    X, y = _good_data(kind, rng)
    model.fit(X, y, epochs=1, batch_size=4)
    model._good_X, model._good_y = X, y
    bad = make(y)
    snap = snapshot(model)
    owner = "fit" if method == "fit_validation" else method
    with pytest.raises(exc, match=owner) as info:
        _call(method, model, X, bad)
    assert info.match(match)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate"])
def test_empty_batch(trained, method):
    kind, model, X, y = trained
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"{method}.*(empty|no samples)"):
        _call(method, model, X[:0], y[:0])
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate"])
def test_before_compile(method):
    model = fnn.Sequential([Dense(3)], input_dim=D, seed=0)
    X, y = np.zeros((N, D)), np.zeros(N, dtype=int)
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match=rf"compile.*{method}"):
        _call(method, model, X, y)
    assert_unchanged(model, snap)
    # predict needs no compile
    assert model.predict(X).shape == (N, 3)


def test_fit_before_compile_on_a_deferred_model_does_not_build_it():
    model = fnn.Sequential([Dense(3)], seed=0)
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((N, D)), np.zeros(N, dtype=int))
    assert not model.built


BAD_COUNTS = [(0, ValueError, r">= 1, got 0"), (-1, ValueError, r">= 1, got -1"),
              (2.5, TypeError, r"int, got float 2\.5"), ("32", TypeError, r"int, got str '32'"),
              (None, TypeError, r"int, got NoneType"), (True, TypeError, r"int, got bool"),
              (float("nan"), TypeError, r"int, got float nan")]


@pytest.mark.parametrize("arg", ["epochs", "batch_size"])
@pytest.mark.parametrize("value,exc,match", BAD_COUNTS, ids=[repr(b[0]) for b in BAD_COUNTS])
def test_bad_epochs_and_batch_size(trained, arg, value, exc, match):
    kind, model, X, y = trained
    snap = snapshot(model)
    with pytest.raises(exc, match=rf"fit: {arg} must be .*{match}"):
        model.fit(X, y, **{arg: value})
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"validation_data": (np.zeros((2, D)),)}, TypeError, "validation_data"),
    ({"validation_data": np.zeros((2, D))}, TypeError, "validation_data"),
    ({"verbose": 5}, ValueError, "verbose"),
    ({"verbose": "yes"}, TypeError, "verbose"),
])
def test_bad_fit_options(trained, kwargs, exc, match):
    kind, model, X, y = trained
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        model.fit(X, y, epochs=1, **kwargs)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("value,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("8", TypeError)])
@pytest.mark.parametrize("method", ["predict", "evaluate"])
def test_bad_inference_batch_size(trained, method, value, exc):
    kind, model, X, y = trained
    snap = snapshot(model)
    with pytest.raises(exc, match=rf"{method}: batch_size"):
        if method == "predict":
            model.predict(X, batch_size=value)
        else:
            model.evaluate(X, y, batch_size=value)
    assert_unchanged(model, snap)


def test_deferred_model_rejects_bad_X_without_building():
    model = fnn.Sequential([Dense(3)], seed=0)
    model.compile("cross_entropy", "sgd")
    for bad in (np.zeros(5), np.full((4, 2), np.nan), np.full((4, 2), "x")):
        with pytest.raises((TypeError, ValueError), match="X"):
            model.fit(bad, np.zeros(len(bad), dtype=int))
    assert not model.built


# ---------------------------------------------------------------------------------------- exploding loss
EXPLODING = {
    # the loss overflows (float64), or the gradients do while the loss (summed in double) is still finite
    "sgd_1e6": lambda: fnn.optim.SGD(lr=1e6, momentum=0.5),
    # finite gradients, but the update overflows the weights: AdamW multiplies them by 1 - lr * wd = -9 per step
    "adamw_1e3": lambda: fnn.optim.AdamW(lr=1e3, weight_decay=0.01),
}


def _exploding(dtype, act="tanh", optimizer="sgd_1e6"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5))
    y = X @ rng.normal(size=(5, 1)) + 1
    model = fnn.Sequential([Dense(8, activation=act), Dense(1)], input_dim=5, seed=0, dtype=dtype)
    model.compile(loss="mse", optimizer=EXPLODING[optimizer]())
    return model, X, y


@pytest.mark.parametrize("optimizer", list(EXPLODING))
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exploding_loss_stops_fit_with_finite_weights(dtype, act, optimizer):
    model, X, y = _exploding(dtype, act, optimizer)
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+") as info:
        model.fit(X, y, epochs=250, batch_size=16)
    assert "lower the learning rate" in str(info.value)
    assert np.all(np.isfinite(model.parameters)), "fit left non-finite weights"
    for k, v in model.optimizer.state.items():
        assert np.all(np.isfinite(v)), f"fit left non-finite optimizer state {k}"


@pytest.mark.parametrize("optimizer", list(EXPLODING))
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exploding_loss_in_train_on_batch_keeps_the_weights_from_before_the_batch(dtype, act, optimizer):
    model, X, y = _exploding(dtype, act, optimizer)
    for step in range(1000):
        snap = snapshot(model)
        try:
            model.train_on_batch(X[(step % 4) * 16:(step % 4 + 1) * 16], y[(step % 4) * 16:(step % 4 + 1) * 16])
        except FloatingPointError as exc:
            assert "train_on_batch" in str(exc)
            assert_unchanged(model, snap)
            assert np.all(np.isfinite(model.parameters))
            break
    else:
        pytest.fail("the loss never exploded: the test does not test anything")


# ---------------------------------------------------------------- issue 13, defect 14: unclear errors
def _ce_trained():
    rng = np.random.default_rng(0)
    model = _model("cross_entropy", K)
    X, y = _good_data("ce", rng)
    model.fit(X, y, epochs=1, batch_size=4)
    return model, X, y


@pytest.mark.parametrize("metric", ["r2", "mae", "mse"])
def test_evaluate_with_a_regression_metric_on_a_classifier_names_the_metric(metric):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"evaluate: metric '{metric}' applies to regression losses"):
        model.evaluate(X, y, metrics=[metric])
    with pytest.raises(ValueError, match=r"evaluate: unknown metric 'nope'"):
        model.evaluate(X, y, metrics="nope")
    assert_unchanged(model, snap)


def test_evaluate_with_accuracy_on_a_regressor_names_the_metric():
    model = _model("mse", 2)
    X, y = _good_data("reg", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"evaluate: metric 'accuracy' applies to classification losses"):
        model.evaluate(X, y, metrics=["accuracy"])


@pytest.mark.parametrize("key", [K, 10**9, 2**70])
def test_class_weight_for_a_class_the_model_does_not_have(key):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"class_weight has a weight for class {key}, but the model has {K} "
                                         rf"classes \(0 \.\. {K - 1}\)"):
        model.fit(X, y, class_weight={0: 2.0, key: 1.0})
    assert_unchanged(model, snap)


def test_class_weight_of_a_sigmoid_output_has_classes_0_and_1():
    model = _model("binary_cross_entropy", 1, out_act="sigmoid")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(N, D)), (rng.uniform(size=(N, 1)) > 0.5).astype(float)
    model.fit(X, y, class_weight={0: 1.0, 1: 3.0})
    with pytest.raises(ValueError, match=r"class 2, but the model has 2 classes"):
        model.fit(X, y, class_weight={2: 1.0})


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 2**70, "initial_epoch": 2**70}, None),          # an int beyond 2**64 is a valid (empty) range
    ({"validation_split": 2**1100}, r"validation_split must be a finite real number, got an integer too large"),
    ({"class_weight": {0: 10**400}}, r"class_weight\[0\] must be a finite real number, got an integer too large"),
])
def test_integers_beyond_64_bits_in_arguments(kwargs, match):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    if match is None:
        model.fit(X, y, **kwargs)
    else:
        with pytest.raises(ValueError, match=match):
            model.fit(X, y, **kwargs)
    assert_unchanged(model, snap)


def test_integers_beyond_64_bits_in_inputs():
    model, X, y = _ce_trained()
    snap = snapshot(model)
    Xbig = X.tolist()
    Xbig[1][2] = 2**70
    for call in (lambda: model.fit(Xbig, y), lambda: model.predict(Xbig), lambda: model.evaluate(Xbig, y)):
        with pytest.raises(TypeError, match=r"X holds integers too large for a 64-bit integer"):
            call()
    with pytest.raises(ValueError, match=r"epochs must be >= 1"):
        model.fit(X, y, epochs=-2**70)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("units, match", [
    (10**12, r"dense_big: parameter 'weight' would have shape \(6, 1000000000000\): an axis above 2147483647"),
    (10**30, r"dense_big: parameter 'weight' would have shape \(6, 10{30}\)"),
    (2**31 - 1, r"dense_big: parameter 'weight' of shape \(6, 2147483647\) \(12884901882 values\): the model's "
                r"\d+ parameters and their gradients would take \d+ GiB, more than this machine's memory"),
])
def test_a_huge_dense_layer_is_refused_before_allocating_and_named(units, match):
    import fastnn.params as _params
    if units == 2**31 - 1 and (_params.physical_memory() or 0) >= 2 * 4 * 13 * 2**30:
        pytest.skip("this machine has the memory for it")
    with pytest.raises(ValueError, match=match):
        fnn.Sequential([Dense(6), Dense(units, name="dense_big")], input_dim=D, seed=0)


def test_a_failed_parameter_allocation_names_the_layer(monkeypatch):
    import fastnn.params as _params
    monkeypatch.setattr(_params, "physical_memory", lambda: None)        # the size check cannot tell
    real_zeros = np.zeros

    def zeros(n, dtype=float):
        if n > 10**6:
            raise MemoryError("Unable to allocate")
        return real_zeros(n, dtype=dtype)

    monkeypatch.setattr(_params.np, "zeros", zeros)
    with pytest.raises(MemoryError, match=r"dense_wide: parameter 'weight' of shape \(6, 1000000\)"):
        fnn.Sequential([Dense(6), Dense(10**6, name="dense_wide")], input_dim=D, seed=0)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"eps": 0}, ValueError, r"gradcheck: eps must be > 0.0, got 0"),
    ({"eps": -1e-6}, ValueError, r"gradcheck: eps must be > 0.0"),
    ({"eps": float("nan")}, ValueError, r"gradcheck: eps must be finite, got nan"),
    ({"eps": float("inf")}, ValueError, r"gradcheck: eps must be finite"),
    ({"eps": "1e-6"}, TypeError, r"gradcheck: eps must be a real number"),
    ({"atol": 0.0}, ValueError, r"gradcheck: atol must be > 0.0"),
    ({"tol": float("nan")}, ValueError, r"gradcheck: tol must be finite"),
    ({"max_per_param": 0}, ValueError, r"gradcheck: max_per_param must be >= 1"),
    ({"max_per_param": 2.5}, TypeError, r"gradcheck: max_per_param must be an int"),
])
def test_gradcheck_checks_its_arguments(kwargs, exc, match):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        fnn.gradcheck(model, X, y, **kwargs)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("path", ["{val_loss:.3f}.fnn", "m-{epoch}-{val_accuracy}.fnn"])
def test_checkpoint_with_a_validation_field_and_no_validation_data_fails_before_training(tmp_path, path):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    ckpt = fnn.callbacks.ModelCheckpoint(str(tmp_path / path))
    with pytest.raises(ValueError, match=r"ModelCheckpoint: filepath .* uses \{val_.*\}, but fit has no validation"):
        model.fit(X, y, epochs=1, callbacks=[ckpt])
    assert_unchanged(model, snap)
    assert list(tmp_path.iterdir()) == []
    model.fit(X, y, epochs=1, validation_split=0.2, callbacks=[ckpt])       # with validation data: saved
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("path, match", [("m-{}.fnn", "positional field"), ("m-{epoch.fnn", "not a valid format")])
def test_checkpoint_with_a_malformed_path_fails_before_training(tmp_path, path, match):
    model, X, y = _ce_trained()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, epochs=1, callbacks=[fnn.callbacks.ModelCheckpoint(str(tmp_path / path))])
    assert_unchanged(model, snap)


def test_batchnorm_one_sample_last_batch_is_refused_before_any_update():
    model = fnn.Sequential([Dense(6), fnn.layers.BatchNorm(name="bn"), Dense(K)], input_dim=D, seed=0)
    model.compile("cross_entropy", fnn.optim.Adam(lr=0.01))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, D)), rng.integers(0, K, 9)
    model.fit(X[:8], y[:8], epochs=1, batch_size=4)
    snap = snapshot(model)
    stats = model.layers[1].running_mean.copy(), model.layers[1].running_var.copy()
    for n, bs in ((9, 4), (9, 8), (1, 10)):         # a last batch of one sample; one sample in all
        with pytest.raises(ValueError, match=r"fit: bn: a training batch of 1 sample would have 1 value per "
                                             r"channel.*choose a batch_size"):
            model.fit(X[:n], y[:n], epochs=1, batch_size=bs, shuffle=False)
        assert_unchanged(model, snap)
        np.testing.assert_array_equal(model.layers[1].running_mean, stats[0])
        np.testing.assert_array_equal(model.layers[1].running_var, stats[1])
    model.fit(X, y, epochs=1, batch_size=3)         # batches of 3: fine
    model.layers[1].trainable = False               # frozen: inference mode, a one-sample batch is fine
    model.compile("cross_entropy", fnn.optim.Adam(lr=0.01))
    model.fit(X, y, epochs=1, batch_size=4)
    seq = fnn.Sequential([fnn.layers.BatchNorm()], input_shape=(3, 2), seed=0)     # 3 values per channel
    seq.compile("mse", "sgd")
    seq.fit(rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2)), batch_size=4)
