"""The conventions Keras, PyTorch and scikit-learn users bring (issue 14): arguments fastnn accepts for them, the
Keras loss names, Keras 3 model construction, ``model(X)``, ``get_layer``, clear errors on an unbuilt model,
``LambdaCallback`` and plain functions as callbacks, scikit-learn's ``train_test_split`` and the refusal of
foreign file extensions."""
import numpy as np
import pytest

import fastnn as fnn

L = fnn.layers


def _data(n=60, f=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)).astype(np.float32)
    y = rng.integers(0, k, n)
    return X, y


def _clf(f=4, k=3, **compile_kw):
    m = fnn.Sequential([L.Dense(8, activation="relu"), L.Dense(k)], input_dim=f, seed=0)
    return m.compile("cross_entropy", "adam", **compile_kw)


# ---------------------------------------------------------------------------------------------- predict / evaluate
@pytest.mark.parametrize("verbose", [0, 1, 2, "auto", False, True])
def test_predict_accepts_verbose_and_prints_nothing(verbose, capsys):
    X, _ = _data()
    m = _clf()
    want = m.predict(X)
    np.testing.assert_array_equal(m.predict(X, verbose=verbose), want)
    np.testing.assert_array_equal(m.predict(X[:1], verbose=verbose), want[:1])      # the compiled fast path
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("bad, exc", [(3, ValueError), (-1, ValueError), ("yes", TypeError), (1.5, TypeError)])
def test_bad_verbose_is_refused(bad, exc):
    X, y = _data()
    m = _clf()
    for call in (lambda: m.predict(X, verbose=bad), lambda: m.evaluate(X, y, verbose=bad),
                 lambda: m.fit(X, y, verbose=bad)):
        with pytest.raises(exc, match="verbose"):
            call()


def test_evaluate_verbose_prints_one_line(capsys):
    X, y = _data()
    m = _clf()
    logs = m.evaluate(X, y)
    assert capsys.readouterr().out == ""
    assert m.evaluate(X, y, verbose=0) == logs and capsys.readouterr().out == ""
    for v in (1, 2, "auto"):
        assert m.evaluate(X, y, verbose=v) == logs
        out = capsys.readouterr().out
        assert out == f"evaluate - loss {logs['loss']:.4f} - accuracy {logs['accuracy']:.4f}\n"


def test_evaluate_return_forms():
    X, y = _data()
    m = _clf()
    logs = m.evaluate(X, y)
    assert isinstance(logs, dict) and list(logs) == ["loss", "accuracy"]      # fastnn's default: a dict
    assert m.evaluate(X, y, return_dict=True) == logs
    assert m.evaluate(X, y, return_dict=False) == [logs["loss"], logs["accuracy"]]     # Keras' list
    with_metric = m.evaluate(X, y, metrics=["top_k_accuracy"], return_dict=False)
    assert with_metric == list(m.evaluate(X, y, metrics=["top_k_accuracy"]).values()) and len(with_metric) == 3
    # a regression loss without metrics: Keras returns the scalar loss
    r = fnn.Sequential([L.Dense(1)], input_dim=4, seed=0).compile("mse", "sgd")
    Y = X[:, :1] * 2.0
    loss = r.evaluate(X, Y, return_dict=False)
    assert isinstance(loss, float) and loss == r.evaluate(X, Y)["loss"]
    assert r.evaluate(X, Y, metrics=["mae"], return_dict=False) == list(r.evaluate(X, Y, metrics=["mae"]).values())
    with pytest.raises(TypeError, match="return_dict"):
        m.evaluate(X, y, return_dict="yes")


# ---------------------------------------------------------------------------------------------- compile(metrics=)
def test_compile_metrics_are_fit_and_evaluate_defaults():
    X, y = _data(90)
    m = _clf(metrics=["top_k_accuracy"])
    assert m.compile_metrics == ["top_k_accuracy"]
    h = m.fit(X[:60], y[:60], epochs=2, validation_data=(X[60:], y[60:]))
    for key in ("loss", "accuracy", "top_k_accuracy", "val_loss", "val_accuracy", "val_top_k_accuracy"):
        assert len(h.history[key]) == 2, key
    assert "top_k_accuracy" in m.evaluate(X, y)
    # explicit arguments win, [] included
    assert "top_k_accuracy" not in m.evaluate(X, y, metrics=[])
    h = m.fit(X, y, epochs=1, metrics=[])
    assert "top_k_accuracy" not in h.history
    # the same numbers as giving the metric to each call
    ref = _clf()
    ref.fit(X[:60], y[:60], epochs=2, validation_data=(X[60:], y[60:]), metrics=["top_k_accuracy"])
    m2 = _clf(metrics="top_k_accuracy")
    h2 = m2.fit(X[:60], y[:60], epochs=2, validation_data=(X[60:], y[60:]))
    assert h2.history["val_top_k_accuracy"] == ref.history.history["val_top_k_accuracy"]
    assert m2.evaluate(X, y) == ref.evaluate(X, y, metrics=["top_k_accuracy"])


def test_compile_accuracy_metric_keeps_the_compiled_plan(monkeypatch):
    from fastnn.training import compiled
    X, y = _data()
    m = _clf(metrics=["accuracy"])
    calls = []
    real = compiled.fit_epoch
    monkeypatch.setattr(compiled, "fit_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    h = m.fit(X, y, epochs=2)
    assert calls == [1, 1] and len(h.history["accuracy"]) == 2


def test_compile_metrics_checked_at_compile():
    m = fnn.Sequential([L.Dense(2)], input_dim=4, seed=0)
    with pytest.raises(ValueError, match="compile: metric 'mae' applies to regression"):
        m.compile("cross_entropy", metrics=["mae"])
    assert m.loss is None and m.compile_metrics == []          # nothing changed
    with pytest.raises(ValueError, match="unknown metric"):
        m.compile("mse", metrics=["nope"])
    with pytest.raises(TypeError, match="metrics"):
        m.compile("mse", metrics=3)
    m.compile("mse", metrics=["mae", fnn.metrics.R2Score()])
    X = np.zeros((5, 4), np.float32)
    assert set(m.evaluate(X, np.zeros((5, 2)))) == {"loss", "mae", "r2"}
    m.optimizer = fnn.optim.SGD(lr=0.1)            # re-compiles with the same metrics
    assert set(m.evaluate(X, np.zeros((5, 2)))) == {"loss", "mae", "r2"}
    assert set(m.clone().evaluate(X, np.zeros((5, 2)))) == {"loss", "mae", "r2"}


# ---------------------------------------------------------------------------------------------- Keras loss names
@pytest.mark.parametrize("alias, cls", [
    ("sparse_categorical_crossentropy", fnn.losses.CrossEntropy),
    ("categorical_crossentropy", fnn.losses.CrossEntropy),
    ("binary_crossentropy", fnn.losses.BinaryCrossEntropy),
    ("mean_squared_error", fnn.losses.MSE), ("MSE", fnn.losses.MSE),
    ("mean_absolute_error", fnn.losses.MAE), ("mae", fnn.losses.MAE),
])
def test_keras_loss_names(alias, cls):
    loss = fnn.losses.get(alias)
    assert type(loss) is cls and loss.get_config() == {"name": cls.name}     # saved under fastnn's name


def test_keras_crossentropy_on_a_softmax_model_is_keras_loss():
    """Keras' from_logits=False on softmax outputs: -mean(log p[label]) of the probabilities predict returns; the
    one-hot form ("categorical_crossentropy") gives the same."""
    X, y = _data(40, k=4)
    m = fnn.Sequential([L.Dense(6, activation="tanh"), L.Dense(4, activation="softmax")], input_dim=4, seed=0,
                       dtype="float64")
    m.compile("sparse_categorical_crossentropy", "sgd")
    p = m.predict(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)                  # probabilities, as Keras
    want = -np.mean(np.log(p[np.arange(len(y)), y]))
    assert m.evaluate(X, y)["loss"] == pytest.approx(want, rel=1e-10)
    m.compile("categorical_crossentropy", "sgd")
    assert m.evaluate(X, np.eye(4)[y])["loss"] == pytest.approx(want, rel=1e-10)


def test_keras_binary_crossentropy_on_a_sigmoid_model_is_keras_loss():
    X, _ = _data(40)
    t = (X[:, :2] > 0).astype(np.float64)
    m = fnn.Sequential([L.Dense(2, activation="sigmoid")], input_dim=4, seed=0, dtype="float64")
    m.compile("binary_crossentropy", "sgd")
    p = m.predict(X)
    want = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert m.evaluate(X, t)["loss"] == pytest.approx(want, rel=1e-10)


def test_unknown_loss_lists_keras_names():
    with pytest.raises(ValueError, match="unknown loss 'huber'.*sparse_categorical_crossentropy"):
        fnn.losses.get("huber")


# ---------------------------------------------------------------------------------------------- Keras 3 inputs
def _same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_sequential_with_input_first():
    ref = fnn.Sequential([L.Dense(8, activation="relu"), L.Dense(3)], input_dim=64, seed=0)
    m = fnn.Sequential([fnn.Input(64), L.Dense(8, activation="relu"), L.Dense(3)], seed=0)
    assert m.built and m.input_shape == (64,) and len(m.layers) == 2
    assert _same_weights(m, ref)
    seq = fnn.Sequential([fnn.Input((None, 5)), L.LSTM(4), L.Dense(1)], seed=0)
    assert seq.input_shape == (None, 5) and seq.output_shape == (1,)
    m2 = fnn.Sequential(seed=0)                 # Keras 3: model.add(keras.Input(shape))
    m2.add(fnn.Input(64))
    m2.add(L.Dense(8, activation="relu"))
    m2.add(L.Dense(3))
    assert m2.count_params() == ref.count_params() and m2.built
    assert _same_weights(m2, ref)
    # the same shape given twice is fine; two different ones are not
    fnn.Sequential([fnn.Input(64), L.Dense(3)], input_dim=64)
    with pytest.raises(ValueError, match=r"fnn.Input has shape \(64,\).*\(32,\)"):
        fnn.Sequential([fnn.Input(64), L.Dense(3)], input_dim=32)


def test_sequential_input_misplaced():
    with pytest.raises(ValueError, match="can only come first"):
        fnn.Sequential([L.Dense(3), fnn.Input(64)])
    x = fnn.Input(4)
    with pytest.raises(TypeError, match="output tensor of"):
        fnn.Sequential([L.Dense(3)(x)])
    with pytest.raises(TypeError, match="list of layers"):
        fnn.Sequential(L.Dense(3))


def test_first_layer_input_shape():
    ref = fnn.Sequential([L.Dense(8, activation="relu"), L.Dense(3)], input_dim=64, seed=0)
    for kw in ({"input_shape": (64,)}, {"input_dim": 64}, {"input_shape": 64}):
        m = fnn.Sequential([L.Dense(8, activation="relu", **kw), L.Dense(3)], seed=0)
        assert m.built and m.input_shape == (64,) and _same_weights(m, ref)
    conv = fnn.Sequential([L.Conv2D(4, 3, input_shape=(8, 8, 1)), L.Flatten(), L.Dense(2)], seed=0)
    assert conv.input_shape == (8, 8, 1) and conv.output_shape == (2,)
    # through add(): the model is built when first used, from the declared shape
    m = fnn.Sequential(seed=0)
    m.add(L.Dense(8, activation="relu", input_shape=(64,)))
    m.add(L.Dense(3))
    assert not m.built
    assert m.count_params() == ref.count_params() and m.built
    assert _same_weights(m, ref)
    m = fnn.Sequential(seed=0)
    m.add(L.Dense(3, input_dim=4))
    m.compile("mse")
    with pytest.raises(ValueError, match=r"X must have shape \(n, 4\)"):
        m.fit(np.zeros((5, 6), np.float32), np.zeros((5, 3)))
    assert m.input_shape == (4,)


def test_input_shape_conflicts():
    with pytest.raises(ValueError, match=r"dense_c: was given input_shape=\(32,\), but its input has shape \(64,\)"):
        fnn.Sequential([L.Dense(3, input_shape=(32,), name="dense_c")], input_dim=64)
    with pytest.raises(ValueError, match="dense_later: was given input_shape=\\(5,\\).*later layers"):
        fnn.Sequential([L.Dense(8), L.Dense(3, input_shape=(5,), name="dense_later")], input_dim=4)
    # agreeing on a later layer is accepted (Keras ignores it), and a None axis matches any size
    fnn.Sequential([L.Dense(8), L.Dense(3, input_shape=(8,))], input_dim=4)
    fnn.Sequential([L.Dense(8, input_shape=(None, 4)), L.Dense(3, input_shape=(None, 8))], input_shape=(7, 4))
    # the functional API checks it too
    x = fnn.Input(6)
    with pytest.raises(ValueError, match="was given input_shape"):
        L.Dense(2, input_dim=5)(x)
    with pytest.raises(ValueError, match="input_shape or input_dim, not both"):
        L.Dense(2, input_dim=5, input_shape=(5,))
    with pytest.raises(ValueError, match="input_shape"):
        L.Dense(2, input_shape=(0,))


def test_embedding_input_dim_is_still_the_vocabulary():
    e = L.Embedding(input_dim=50, output_dim=4)
    assert e.input_dim == 50 and e.declared_input_shape is None
    m = fnn.Sequential([L.Embedding(50, 4, input_shape=(None,)), L.LSTM(3)], seed=0)
    assert m.input_shape == (None,)


# ---------------------------------------------------------------------------------------------- unbuilt models
@pytest.mark.parametrize("call", [
    lambda m: m.summary(), lambda m: m.count_params(), lambda m: m.count_params(True), lambda m: m.get_weights(),
    lambda m: m.set_weights([]), lambda m: m.state_dict(), lambda m: m.load_state_dict({}), lambda m: m.clone(),
    lambda m: m.save("unbuilt.fnn"), lambda m: m.build(),
], ids=["summary", "count_params", "count_params_trainable", "get_weights", "set_weights", "state_dict",
        "load_state_dict", "clone", "save", "build"])
def test_unbuilt_model_says_how_to_build_it(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = fnn.Sequential([L.Dense(3)])
    with pytest.raises(ValueError, match=r"is not built yet: its input shape is unknown.*input_shape=.*"
                                         r"model.build\(\(None, 64\)\), or fit / predict once"):
        call(m)
    assert not m.built and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["parameters", "gradients", "input_shape", "output_shape"])
def test_unbuilt_model_attributes(name):
    m = fnn.Sequential([L.Dense(3)])
    with pytest.raises(AttributeError, match=f"{name}: sequential.* is not built yet"):
        getattr(m, name)
    assert not hasattr(m, name)          # still an AttributeError, for hasattr / getattr(..., default)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = m.nonexistent
    m2 = fnn.Sequential(seed=0)
    m2.add(L.Dense(3, input_dim=4))
    assert getattr(m2, name) is not None and m2.built       # a declared input shape builds it


def test_build_takes_keras_batch_shape():
    m = fnn.Sequential([L.Dense(8), L.Dense(3)], seed=0)
    assert m.build((None, 64)) is m and m.built and m.input_shape == (64,)
    assert _same_weights(m, fnn.Sequential([L.Dense(8), L.Dense(3)], input_dim=64, seed=0))
    m.build((32, 64))                                    # built: only checked
    with pytest.raises(ValueError, match=r"built for inputs \(None, 64\)"):
        m.build((None, 65))
    c = fnn.Sequential([L.Conv2D(2, 3), L.GlobalAveragePooling2D()]).build([None, 8, 8, 1])
    assert c.input_shape == (8, 8, 1)
    for bad in ((64,), 64, "x"):
        with pytest.raises(ValueError, match="batch axis first"):
            fnn.Sequential([L.Dense(3)]).build(bad)
    d = fnn.Sequential()
    d.add(L.Dense(3, input_dim=4))
    with pytest.raises(ValueError, match="declares the input shape"):
        d.build((None, 5))
    assert not d.built
    x = fnn.Input(4)
    f = fnn.Model(x, L.Dense(2)(x))
    assert f.build((None, 4)) is f and f.build() is f


# ---------------------------------------------------------------------------------------------- model(X), get_layer
def test_model_call_is_predict():
    X, y = _data()
    m = fnn.Sequential([L.Dense(8, activation="relu"), L.Dropout(0.5), L.Dense(3)], input_dim=4, seed=0)
    m.compile("cross_entropy").fit(X, y, epochs=1)
    out = m(X)
    assert isinstance(out, np.ndarray) and out.shape == (60, 3)
    np.testing.assert_array_equal(out, m.predict(X))             # inference mode: dropout off
    np.testing.assert_array_equal(m(X, training=False), out)
    np.testing.assert_array_equal(m(X.tolist(), training=None), out)
    with pytest.raises(ValueError, match="training=True"):
        m(X, training=True)
    with pytest.raises(TypeError, match="symbolic tensor"):
        m(fnn.Input(4))
    u = fnn.Sequential([L.Dense(2)], seed=0)                     # unbuilt: built from X, as predict
    assert u(X).shape == (60, 2) and u.built


def test_get_layer():
    x = fnn.Input(4)
    h = L.Dense(8, name="hidden")(x)
    r = L.Residual([L.Dense(8, name="inner")], name="res")(h)
    m = fnn.Model(x, L.Dense(2, name="out")(r))
    assert m.get_layer("hidden").name == "hidden" and m.get_layer(name="out") is m.layers[-1]
    assert m.get_layer("inner").name == "inner"                 # nested in the Residual
    assert m.get_layer(index=0) is m.layers[0] and m.get_layer(index=-1) is m.layers[-1]
    with pytest.raises(ValueError, match="no layer named 'nope'; its layers: hidden, .*out"):
        m.get_layer("nope")
    with pytest.raises(ValueError, match="out of range"):
        m.get_layer(index=len(m.layers))
    with pytest.raises(ValueError, match="one of the two"):
        m.get_layer()
    with pytest.raises(ValueError, match="one of the two"):
        m.get_layer("hidden", 0)
    with pytest.raises(TypeError, match="index must be an int"):
        m.get_layer(index=1.0)
    s = fnn.Sequential([L.Dense(3, name="a"), L.Dense(2, name="b")])          # unbuilt Sequential
    assert s.get_layer("b") is s.layers[1] and s.get_layer(index=0).name == "a"


# ---------------------------------------------------------------------------------------------- LambdaCallback
def _count_compiled_epochs(monkeypatch):
    from fastnn.training import compiled
    calls = []
    real = compiled.fit_epoch
    monkeypatch.setattr(compiled, "fit_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_lambda_callback_hooks_and_signatures(monkeypatch):
    X, y = _data(50)
    m = _clf()
    seen = []
    cb = fnn.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append(("train_begin",)),
        on_epoch_begin=lambda epoch, logs: seen.append(("epoch_begin", epoch)),
        on_batch_begin=lambda batch, logs: seen.append(("batch_begin", batch, logs["size"])),
        on_batch_end=lambda batch, logs: seen.append(("batch_end", batch, np.isfinite(logs["loss"]))),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda logs: seen.append(("train_end", sorted(logs))))
    calls = _count_compiled_epochs(monkeypatch)
    m.fit(X, y, epochs=2, batch_size=20, callbacks=[cb])
    assert calls == [1, 1]                               # batch hooks keep the compiled plan, one batch per call
    epoch = [("epoch_begin", 0), ("batch_begin", 0, 20), ("batch_end", 0, True), ("batch_begin", 1, 20),
             ("batch_end", 1, True), ("batch_begin", 2, 10), ("batch_end", 2, True)]
    assert seen == ([("train_begin",)] + epoch + [("epoch_end", 0, ["accuracy", "loss", "time"])]
                    + [(e[0], 1) + e[2:] if e[0] == "epoch_begin" else e for e in epoch]
                    + [("epoch_end", 1, ["accuracy", "loss", "time"]), ("train_end", ["accuracy", "loss", "time"])])
    assert cb.model is m


def test_epoch_hooks_keep_the_compiled_plan(monkeypatch):
    X, y = _data(50)
    m = _clf()
    ends = []
    calls = _count_compiled_epochs(monkeypatch)
    cb = fnn.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: None,
                                      on_epoch_end=lambda epoch, logs: ends.append(epoch),
                                      on_train_begin=lambda logs: None, on_train_end=lambda logs: None)
    m.fit(X, y, epochs=3, callbacks=[cb])
    assert calls == [1, 1, 1] and ends == [0, 1, 2]


def test_plain_function_is_an_epoch_end_callback(monkeypatch):
    X, y = _data(50)
    m = _clf()
    got = []

    def record(epoch, logs):
        got.append((epoch, round(logs["loss"], 12)))
        logs["twice_loss"] = 2 * logs["loss"]          # keys it adds are recorded, as any callback's

    calls = _count_compiled_epochs(monkeypatch)
    h = m.fit(X, y, epochs=2, callbacks=[record])
    assert calls == [1, 1]
    assert got == [(e, round(v, 12)) for e, v in zip(h.epoch, h.history["loss"])]
    assert h.history["twice_loss"] == [2 * v for v in h.history["loss"]]
    h = m.fit(X, y, epochs=1, callbacks=record, diagnostics=True)    # one function alone, as one Callback
    assert len(got) == 3


def test_lambda_callback_before_checkpoint_may_add_val_keys(tmp_path):
    X, y = _data(50)
    m = _clf()
    add = fnn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_score=0.5))
    ck = fnn.callbacks.ModelCheckpoint(str(tmp_path / "m-{val_score:.1f}.fnn"))
    m.fit(X, y, epochs=1, callbacks=[add, ck])
    assert (tmp_path / "m-0.5.fnn").exists()


def test_bad_callbacks():
    X, y = _data(50)
    m = _clf()
    with pytest.raises(TypeError, match="LambdaCallback: on_epoch_end must be a function"):
        fnn.callbacks.LambdaCallback(on_epoch_end=3)
    with pytest.raises(TypeError, match=r"Callback instances or functions f\(epoch, logs\).*got int"):
        m.fit(X, y, callbacks=[3])
    with pytest.raises(TypeError, match="a class: pass an instance"):
        m.fit(X, y, callbacks=[fnn.callbacks.TerminateOnNaN])
    assert m.epochs_trained == 0
    assert "on_epoch_end=" in repr(fnn.callbacks.LambdaCallback(on_epoch_end=print))


# ---------------------------------------------------------------------------------------------- train_test_split
@pytest.mark.parametrize("kw", [
    {}, {"test_size": 0.2}, {"test_size": 7}, {"train_size": 0.5}, {"train_size": 30, "test_size": 10},
    {"test_size": 0.3, "shuffle": False}, {"test_size": 0.25, "stratify": True}, {"train_size": 0.6, "stratify": True},
    {"test_size": 9, "stratify": True},
])
@pytest.mark.parametrize("random_state", [0, 42])
def test_train_test_split_is_sklearns(kw, random_state):
    sk = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((47, 3))
    y = rng.integers(0, 3, 47)
    w = list(range(47))
    kw = dict(kw)
    if kw.pop("stratify", False):
        kw["stratify"] = y
    ours = fnn.datasets.train_test_split(X, y, w, random_state=random_state, **kw)
    theirs = sk.train_test_split(X, y, w, random_state=random_state, **kw)
    assert len(ours) == 6
    for a, b in zip(ours, theirs):
        assert type(a) is type(b)
        np.testing.assert_array_equal(a, b)


def test_train_test_split_order_sizes_and_stratify():
    X = np.arange(100).reshape(50, 2)
    y = np.repeat([0, 1], [40, 10])
    X_train, X_test, y_train, y_test = fnn.datasets.train_test_split(X, y, test_size=0.2, random_state=0,
                                                                     stratify=y)
    assert X_train.shape == (40, 2) and X_test.shape == (10, 2) and y_train.shape == (40,) and y_test.shape == (10,)
    np.testing.assert_array_equal(y[X_train[:, 0] // 2], y_train)                  # rows stay paired
    assert sorted(np.concatenate([X_train[:, 0], X_test[:, 0]]) // 2) == list(range(50))
    assert np.bincount(y_test).tolist() == [8, 2]                                  # the class shares kept
    a, b = fnn.datasets.train_test_split(X)                                        # one array, 0.25 by default
    assert len(a) == 37 and len(b) == 13
    rs = np.random.RandomState(3)
    first = fnn.datasets.train_test_split(X, random_state=rs)[1]
    assert not np.array_equal(first, fnn.datasets.train_test_split(X, random_state=rs)[1])   # the state advances


@pytest.mark.parametrize("kw, exc, match", [
    ({"test_size": 1.5}, ValueError, "test_size=1.5 should be"),
    ({"test_size": 50}, ValueError, "test_size=50 should be"),
    ({"train_size": 0.6, "test_size": 0.6}, ValueError, "should be in the"),
    ({"test_size": "a"}, ValueError, "test_size must be"),
    ({"shuffle": False, "stratify": np.zeros(50)}, ValueError, "stratify needs shuffle=True"),
    ({"random_state": np.random.default_rng(0)}, ValueError, "random_state"),
    ({"stratify": np.arange(50)}, ValueError, "only 1 member"),
    ({"test_fraction": 0.2, "seed": 0}, TypeError, "is now fastnn.datasets.stratified_split"),
])
def test_train_test_split_errors(kw, exc, match):
    X = np.zeros((50, 2))
    with pytest.raises(exc, match=match):
        fnn.datasets.train_test_split(X, np.zeros(50), **kw)


def test_train_test_split_needs_arrays_of_one_length():
    with pytest.raises(ValueError, match=r"different numbers of samples: \[5, 4\]"):
        fnn.datasets.train_test_split(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="at least one array"):
        fnn.datasets.train_test_split()


def test_stratified_split_is_the_former_split():
    X, y = fnn.datasets.load_digits()
    X_train, y_train, X_test, y_test = fnn.datasets.stratified_split(X, y, test_fraction=0.2, seed=0)
    assert len(X_test) + len(X_train) == len(X) and y_train.dtype == y.dtype
    counts = np.bincount(y)
    np.testing.assert_array_equal(np.bincount(y_test), np.round(counts * 0.2).astype(int))


# ---------------------------------------------------------------------------------------------- foreign extensions
@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.weights.h5", "M.HDF5", "m.pt", "m.pth", "m.onnx", "m.pkl",
                                  "m.pickle", "m.joblib", "m.safetensors", "m.tflite", "m.pb"])
def test_save_refuses_foreign_extensions(name, tmp_path):
    m = _clf()
    ext = "." + name.rsplit(".", 1)[1].lower()
    for save in (lambda p: m.save(p), lambda p: fnn.io.save(m, p)):
        with pytest.raises(ValueError, match=rf"extension '\{ext}' of the .* fastnn saves its own format.*'\.fnn'"):
            save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="ModelCheckpoint:.*extension"):
        fnn.callbacks.ModelCheckpoint(str(tmp_path / name))


def test_onnx_extension_points_to_the_exporter(tmp_path):
    with pytest.raises(ValueError, match=r"fnn\.onnx\.export\(model, path\)"):
        _clf().save(tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["m.fnn", "m.npz", "model", "m.ckpt", "m.keras.fnn", "dir.h5/m.fnn"])
def test_save_accepts_fastnn_names(name, tmp_path):
    X, _ = _data()
    m = _clf()
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    m.save(path)
    np.testing.assert_array_equal(fnn.load(path).predict(X), m.predict(X))


# ---------------------------------------------------------------------------------------------- Keras metric names
def _softmax_clf(k=3):
    m = fnn.Sequential([L.Dense(8, activation="relu"), L.Dense(k, activation="softmax")], input_dim=4, seed=0)
    return m.compile("categorical_crossentropy")


@pytest.mark.parametrize("alias", ["sparse_categorical_accuracy", "categorical_accuracy"])
def test_keras_categorical_accuracy_names(alias):
    X, y = _data(90)
    m = _softmax_clf()
    m.fit(X, y, epochs=2, metrics=[alias])
    pred = m.predict(X).argmax(axis=1)
    want = float((pred == y).mean())
    # integer labels and one-hot rows: the same accuracy, fastnn's "accuracy", checked against the argmax
    for targets in (y, np.eye(3, dtype=np.float32)[y]):
        logs = m.evaluate(X, targets, metrics=[alias])
        assert set(logs) == {"loss", "accuracy"}
        assert logs["accuracy"] == pytest.approx(want, abs=1e-12)
    m2 = _softmax_clf().compile("cross_entropy", metrics=alias)      # compile takes it as well
    h = m2.fit(X, np.eye(3)[y], epochs=1, validation_split=0.2)
    assert set(h.history) >= {"accuracy", "val_accuracy"}


@pytest.mark.parametrize("sigmoid", [True, False])
def test_keras_binary_accuracy_name(sigmoid):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    Y = (rng.random((40, 2)) > 0.5).astype(np.float32)
    m = fnn.Sequential([L.Dense(2, activation="sigmoid" if sigmoid else None)], input_dim=4, seed=0)
    m.compile("binary_crossentropy", metrics=["binary_accuracy"])
    logs = m.evaluate(X, Y)
    out = m.predict(X)
    decision = out > 0.5 if sigmoid else out > 0           # probabilities, or logits of a model without sigmoid
    assert set(logs) == {"loss", "accuracy"}
    assert logs["accuracy"] == pytest.approx(float((decision == (Y > 0.5)).mean()), abs=1e-12)


def test_keras_accuracy_names_refuse_the_other_loss():
    m = fnn.Sequential([L.Dense(2)], input_dim=4, seed=0)
    with pytest.raises(ValueError, match="'binary_accuracy' is the accuracy of a 'binary_cross_entropy' loss"):
        m.compile("cross_entropy", metrics=["binary_accuracy"])
    assert m.loss is None
    for alias in ("categorical_accuracy", "sparse_categorical_accuracy"):
        with pytest.raises(ValueError, match=f"'{alias}' is the accuracy of a 'cross_entropy' loss"):
            m.compile("binary_cross_entropy", metrics=[alias])
    with pytest.raises(ValueError, match="applies to classification losses"):
        m.compile("mse", metrics=["categorical_accuracy"])
    m.compile("binary_cross_entropy")
    X, Y = np.zeros((3, 4), np.float32), np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="evaluate: metric 'categorical_accuracy'"):
        m.evaluate(X, Y, metrics=["categorical_accuracy"])


@pytest.mark.parametrize("alias", ["top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"])
def test_keras_top_k_names(alias):
    met = fnn.metrics.get(alias)
    assert isinstance(met, fnn.metrics.TopKAccuracy) and met.k == 5
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 4)).astype(np.float32)
    y = rng.integers(0, 8, 50)
    m = fnn.Sequential([L.Dense(8)], input_dim=4, seed=0).compile("cross_entropy")
    out = m.predict(X)
    rank = (out > out[np.arange(50), y][:, None]).sum(axis=1)     # outputs above the label's
    logs = m.evaluate(X, y, metrics=[alias])
    assert logs["top_k_accuracy"] == pytest.approx(float((rank < 5).mean()), abs=1e-12)


@pytest.mark.parametrize("alias, cls", [("mean_absolute_error", fnn.metrics.MeanAbsoluteError),
                                        ("mae", fnn.metrics.MeanAbsoluteError),
                                        ("mean_squared_error", fnn.metrics.MeanSquaredError),
                                        ("mse", fnn.metrics.MeanSquaredError)])
def test_keras_regression_metric_names(alias, cls):
    assert type(fnn.metrics.get(alias)) is cls
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 4)).astype(np.float32)
    Y = rng.standard_normal((30, 2)).astype(np.float32)
    m = fnn.Sequential([L.Dense(2)], input_dim=4, seed=0).compile("mse", metrics=[alias])
    d = m.predict(X).astype(np.float64) - Y
    want = np.abs(d).mean() if cls is fnn.metrics.MeanAbsoluteError else (d * d).mean()
    assert m.evaluate(X, Y)[cls.name] == pytest.approx(want, rel=1e-6)
