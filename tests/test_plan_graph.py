"""The compiled plan on graphs (issue 16): BatchNorm, LayerNorm, Dropout, Residual with stochastic depth, Add,
Concatenate, Flatten/Reshape, against the per-layer path, which stays the reference.

Both paths run the same kernels in the same order on the same values and take the same draws from
``model.layer_rng``, so the tests ask for the same bits: weights, optimizer state, running statistics, history,
and the generator's state after training.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import clip as _clip
from fastnn._core.kinds import LOSS
from fastnn.layers import Add, BatchNorm, Concatenate, Dense, Dropout, Flatten, LayerNorm, Reshape, Residual
from fastnn.training import compiled as _plan

try:
    from tests.test_plan import OPTIMIZERS
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from test_plan import OPTIMIZERS

L = fnn.layers


def _seq(layers, n_in=7):
    return lambda dtype: fnn.Sequential(layers(), input_dim=n_in, seed=3, dtype=dtype)


def _functional(dtype):
    """x feeds three nodes (fanout 3), an Add of three, a Concatenate, a Flatten of a feature vector."""
    x = fnn.Input(7)
    a = Dense(12, activation="tanh")(x)
    b = Dense(12)(x)
    c = L.ReLU()(Dense(12)(x))
    s = Add()([a, b, c])
    s = LayerNorm()(s)
    j = Concatenate()([s, a, Dense(4, activation="sigmoid")(b)])
    j = Flatten()(Dropout(0.25)(j))
    h = Residual([Dense(28, activation="relu"), BatchNorm()], survival_prob=0.6)(j)
    out = Dense(5, activation="softmax")(Reshape((28,))(h))
    return fnn.Model(x, out, seed=3, dtype=dtype)


MODELS = {
    "batchnorm": _seq(lambda: [Dense(16), BatchNorm(momentum=0.3), L.ReLU(), Dense(5, activation="softmax")]),
    "batchnorm-first": _seq(lambda: [BatchNorm(), Dense(9, activation="relu"), BatchNorm(eps=1e-3),
                                     Dense(5, activation="softmax")]),
    "layernorm": _seq(lambda: [Dense(16, activation="tanh"), LayerNorm(), Dense(5, activation="softmax")]),
    "dropout": _seq(lambda: [Dense(16, activation="relu"), Dropout(0.3), Dense(12), Dropout(0.0), L.ELU(),
                             Dropout(0.2, mode="weight_scaling"), Dense(5, activation="softmax")]),
    "residual": _seq(lambda: [Dense(16), Residual([Dense(16, activation="relu"), BatchNorm(), Dropout(0.1)]),
                              Residual([Dense(16, activation="relu"), LayerNorm()], survival_prob=0.5),
                              Dense(5, activation="softmax")]),
    "nested-residual": _seq(lambda: [Dense(16), Residual([Residual([Dense(16, activation="relu"), Dropout(0.2)],
                                                                   survival_prob=0.7), BatchNorm()],
                                                         survival_prob=0.6),
                                     Dense(5, activation="softmax")]),
    "functional": _functional,
}


def _data(loss, n=101, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 7))
    y = rng.integers(0, 5, n) if loss == "cross_entropy" else rng.standard_normal((n, 5))
    return X, y


def _train_both(make, X, y, loss, make_opt, dtype="float32", epochs=3, bs=16, threads=1, **compile_kw):
    """The same model trained on (X, y) through the plan and through the per-layer path, at `threads` threads:
    (plan model, its history, per-layer model, its history)."""
    out = []
    before = fnn.get_num_threads()
    fnn.set_num_threads(threads)
    try:
        for compiled in (True, False):
            m = make(dtype)
            m.compile(loss, make_opt(), **compile_kw)
            m.trainer.compiled_plan = compiled
            h = m.fit(X, y, epochs=epochs, batch_size=bs)
            out.append((m, h))
    finally:
        fnn.set_num_threads(before)
    (a, ha), (b, hb) = out
    assert a.trainer.train_plan is not None and b.trainer.train_plan is None
    return a, ha, b, hb


def _pair(make, loss, make_opt, dtype="float32", epochs=3, bs=16, n=101, **compile_kw):
    """The same model trained through the plan and through the per-layer path, at one thread."""
    X, y = _data(loss, n)
    return (*_train_both(make, X, y, loss, make_opt, dtype, epochs, bs, 1, **compile_kw), X)


def _assert_same(a, ha, b, hb):
    np.testing.assert_array_equal(a.parameters, b.parameters)
    np.testing.assert_array_equal(a.gradients, b.gradients)
    for k in b.optimizer.state:
        np.testing.assert_array_equal(a.optimizer.state[k], b.optimizer.state[k])
    assert a.optimizer.step_count == b.optimizer.step_count
    for la, lb in zip(a.graph.layers, b.graph.layers):
        for k in lb.buffers:
            np.testing.assert_array_equal(la.buffers[k], lb.buffers[k])
    assert a.layer_rng.bit_generator.state == b.layer_rng.bit_generator.state
    for key in hb.history:
        if key != "time":
            assert ha.history[key] == hb.history[key], key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_compiled_layer_gives_the_weights_of_the_per_layer_path(name, loss, dtype):
    a, ha, b, hb, X = _pair(MODELS[name], loss, lambda: fnn.optim.Adam(lr=3e-3), dtype)
    _assert_same(a, ha, b, hb)
    # inference through the compiled plan (running statistics, weight-scaling dropout, survival scaling)
    np.testing.assert_array_equal(a.predict(X), b.engine.forward(X.astype(dtype), False))


@pytest.mark.parametrize("opt_id,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_every_optimizer_on_the_residual_network(opt_id, make_opt):
    a, ha, b, hb, _ = _pair(MODELS["residual"], "cross_entropy", make_opt, "float64", epochs=2)
    _assert_same(a, ha, b, hb)


def test_clipping_and_a_last_batch_of_two():
    # 102 samples in batches of 20: the last batch has 2 rows (BatchNorm's smallest training batch)
    a, ha, b, hb, _ = _pair(MODELS["residual"], "cross_entropy", lambda: fnn.optim.SGD(lr=0.05, momentum=0.9),
                            n=102, bs=20, clip_norm=0.5)
    _assert_same(a, ha, b, hb)
    assert a.grad_norm == b.grad_norm


def test_two_threads_give_the_weights_of_the_per_layer_path_at_two_threads(restore_threads):
    X, y = _data("cross_entropy", 300)
    fnn.set_num_threads(2)
    ms = []
    for compiled in (True, False):
        m = MODELS["residual"]("float32")
        m.compile("cross_entropy", "adam")
        m.trainer.compiled_plan = compiled
        ms.append((m, m.fit(X, y, epochs=2, batch_size=64)))
    _assert_same(*ms[0], *ms[1])


def test_a_frozen_batchnorm_normalizes_with_its_running_statistics():
    def make(dtype):
        m = MODELS["batchnorm"](dtype)
        m.layers[1].running_mean = np.linspace(-1, 1, 16)
        m.layers[1].running_var = np.linspace(0.5, 2, 16)
        m.layers[1].trainable = False
        return m
    a, ha, b, hb, _ = _pair(make, "cross_entropy", lambda: fnn.optim.Adam(lr=1e-2))
    _assert_same(a, ha, b, hb)
    np.testing.assert_array_equal(a.layers[1].running_var, np.linspace(0.5, 2, 16).astype(np.float32))


def test_a_dropped_block_has_zero_gradients():
    # survival 0.5 over 7 batches: some batch drops the block; its layers' gradients are zero then
    X, y = _data("cross_entropy")
    m = MODELS["residual"]("float64")
    m.compile("cross_entropy", "sgd")
    block = m.layers[2].block
    seen = set()
    plan = None
    for i in range(0, 96, 16):
        m.fit(X[i:i + 16], y[i:i + 16], epochs=1, batch_size=16)
        plan = m.trainer.train_plan
        g = block[0].grads["weight"]
        seen.add(bool(np.any(g != 0)))
    assert plan is not None and seen == {True, False}


def test_draws_follow_the_generator_calls_of_the_per_layer_path():
    specs = [None, 0.7, None, 0.2, 1e-300]
    for bitgen in (np.random.PCG64, np.random.PCG64DXSM, np.random.SFC64, np.random.Philox, np.random.MT19937):
        rng, ref = np.random.Generator(bitgen(5)), np.random.Generator(bitgen(5))
        got = _plan._draws(rng, specs, 40)
        want = [[ref.integers(0, 2 ** 63) if p is None else ref.random() < p for p in specs] for _ in range(40)]
        np.testing.assert_array_equal(got, np.array(want, dtype=np.uint64))
        assert rng.bit_generator.random_raw() == ref.bit_generator.random_raw(), bitgen.__name__
        assert 0 < got[:, 1].sum() < 40


def _stopped(make, X, y):
    """[(model, NonFiniteError)] of a float32 fit of make's model stopped by a non-finite value, through the plan and
    through the per-layer path."""
    out = []
    for compiled in (True, False):
        m = make("float32")
        m.compile("cross_entropy", "adam")
        m.trainer.compiled_plan = compiled
        with pytest.raises(fnn.NonFiniteError) as ei:
            m.fit(X, y, epochs=1, batch_size=16, shuffle=False)
        out.append((m, ei.value))
    return out


def test_a_nan_stops_the_plan_with_the_state_and_draws_of_the_per_layer_path():
    X, y = _data("cross_entropy", 160)
    X[70] = 3e38                 # the fifth batch of 16: it overflows the first layer's output (float32)
    (a, ea), (b, eb) = _stopped(MODELS["residual"], X, y)
    assert a.trainer.train_plan is not None
    assert (ea.what, ea.epoch, ea.batch) == (eb.what, eb.epoch, eb.batch)
    assert ea.batch == 5
    np.testing.assert_array_equal(a.parameters, b.parameters)
    for la, lb in zip(a.graph.layers, b.graph.layers):
        for k in lb.buffers:
            np.testing.assert_array_equal(la.buffers[k], lb.buffers[k])
    assert a.layer_rng.bit_generator.state == b.layer_rng.bit_generator.state


def test_a_running_variance_overflow_is_a_buffer_error_naming_it():
    X, y = _data("cross_entropy", 48)
    X[40, 0] = 1e30              # batch 3 of 16: the running variance of the first BatchNorm overflows in float32
    (a, ea), (b, eb) = _stopped(MODELS["batchnorm-first"], X, y)
    assert a.trainer.train_plan is not None
    assert (ea.what, ea.batch) == (eb.what, eb.batch) == ("buffer", 3)
    assert str(ea).replace(a.layers[0].name, "bn") == str(eb).replace(b.layers[0].name, "bn")
    assert f"{a.layers[0].name}.running_var[0] inf" in str(ea)
    np.testing.assert_array_equal(a.parameters, b.parameters)
    np.testing.assert_array_equal(a.layers[0].running_var, b.layers[0].running_var)
    assert np.isfinite(a.layers[0].running_var).all()


def test_chunks_do_not_change_the_weights_or_the_draws(monkeypatch, restore_threads):
    fnn.set_num_threads(1)
    X, y = _data("cross_entropy", 300)
    ref = MODELS["functional"]("float32").compile("cross_entropy", "adam")
    ref.fit(X, y, epochs=2, batch_size=32)
    m = MODELS["functional"]("float32").compile("cross_entropy", "adam")
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 0.0)      # one batch per call
    m.fit(X, y, epochs=2, batch_size=32)
    assert m.trainer.train_plan is not None
    np.testing.assert_array_equal(m.parameters, ref.parameters)
    assert m.layer_rng.bit_generator.state == ref.layer_rng.bit_generator.state


def test_replaced_running_statistics_make_a_new_plan():
    X, y = _data("cross_entropy")
    m = MODELS["batchnorm"]("float32").compile("cross_entropy", "adam")
    m.fit(X, y, epochs=1, batch_size=16)
    plan = m.trainer.train_plan
    m.layers[1].buffers["running_mean"] = np.zeros(16, np.float32)
    m.fit(X, y, epochs=1, batch_size=16)
    assert m.trainer.train_plan is not plan
    assert np.any(m.layers[1].buffers["running_mean"] != 0)


def test_plan_graph_checks_its_arguments():
    k = _plan._k
    p = np.zeros(100, np.float32)
    bs = 4

    def plan(n):
        return k.Plan(p, np.zeros_like(p), bs, n)

    def e(*shape, dtype=np.float32):
        return np.empty(shape, dtype)

    pl = plan(2)
    pl.activation(0, 1, 3, 0.0, e(bs, 3), e(bs, 3))
    pl.add(1, 3, e(bs, 3))
    with pytest.raises(ValueError, match="has 1 sources"):       # an Add of one source
        pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    pl.link(1, (0, 0))
    with pytest.raises(ValueError, match="needs a gradient buffer"):     # node 0 read twice: no acc
        pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    pl.link(1, (0, 0), acc=None)
    pl.link(0, (-1,), acc=e(bs, 3))
    pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    for bad in [(1,), (-2,), ()]:
        with pytest.raises(ValueError, match="sources"):
            pl.link(1, bad)
    pl = plan(2)
    pl.activation(0, 1, 3, 0.0, e(bs, 3), e(bs, 3))
    pl.concat(1, 5, e(bs, 5), e(bs * 5))
    pl.link(1, (0, -1))
    with pytest.raises(ValueError, match="concatenation of the batch"):
        pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 5), e(bs, 5))
    pl = plan(2)
    pl.dropout(0, 3, 1, 2 ** 51, 2.0, 1.0, e(bs, 3), e(bs, 3, dtype=np.uint8), e(bs, 3))
    pl.activation(1, 1, 3, 0.0, e(bs, 3), e(bs, 3))
    with pytest.raises(ValueError, match="draw columns"):       # columns must be 0 .. n-1
        pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    with pytest.raises(ValueError, match="threshold"):
        pl.dropout(0, 3, 0, 2 ** 53 + 1, 2.0, 1.0, e(bs, 3), e(bs, 3, dtype=np.uint8), e(bs, 3))
    with pytest.raises(ValueError, match="survival_prob"):
        pl.residual(0, 3, 0, 0.0, e(bs, 3))
    with pytest.raises(ValueError, match="offsets"):
        pl.batchnorm(0, 3, 98, 0, True, 0.1, 1e-5, True, e(bs, 3), e(bs, 3), e(bs, 3), e(3), e(3), e(3), e(3))
    pl = plan(1)
    pl.batchnorm(0, 3, 0, 3, False, 0.1, 1e-5, True, e(bs, 3), e(bs, 3), e(bs, 3), e(3), e(3), e(3), e(3))
    pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    pl.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, False, e(100), e(100), None, 0)
    with pytest.raises(ValueError, match="backup of its running statistics"):
        pl.guard(True, e(100), e(100), e(100))
    pl = plan(1)
    pl.dropout(0, 3, 0, 2 ** 51, 2.0, 1.0, e(bs, 3), e(bs, 3, dtype=np.uint8), e(bs, 3))
    pl.batch_buffers(e(bs, 3), e(bs, dtype=np.intp), e(bs, 3), e(bs, 3))
    assert pl.draws_per_batch == 1
    pl.loss(LOSS.MSE)
    pl.sgd(0.1, 0.0, 0.0, 0.0, False, None, 0)
    with pytest.raises(ValueError, match="draws per batch"):
        k.run_batches(pl, np.zeros((8, 3), np.float32), np.zeros((8, 3), np.float32), None, 0, 2, 0, 1)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "l2", "mae"])
def test_sample_and_class_weights_on_the_plan(loss):
    rng = np.random.default_rng(7)
    sw = rng.random(101) * 2
    kw = dict(sample_weight=sw)
    if loss == "cross_entropy":
        kw["class_weight"] = "balanced"
    X, y = _data(loss)
    out = []
    for compiled in (True, False):
        m = MODELS["residual"]("float64")
        m.compile(loss, fnn.optim.RMSprop(lr=1e-3))
        m.trainer.compiled_plan = compiled
        out.append((m, m.fit(X, y, epochs=3, batch_size=16, **kw)))
    (a, ha), (b, hb) = out
    assert a.trainer.train_plan is not None and b.trainer.train_plan is None
    np.testing.assert_array_equal(a.parameters, b.parameters)
    for k in b.optimizer.state:
        np.testing.assert_array_equal(a.optimizer.state[k], b.optimizer.state[k])
    # the epoch's weighted mean loss: both paths add a batch's weights in row order (losses.weight_sum)
    assert ha.history["loss"] == hb.history["loss"]


@pytest.mark.parametrize("opt_id,make_opt", [OPTIMIZERS[i] for i in (1, 4, 5, 9, 11)],
                         ids=[OPTIMIZERS[i][0] for i in (1, 4, 5, 9, 11)])
def test_per_step_schedules_on_the_plan(opt_id, make_opt, monkeypatch):
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 0.0)      # rates across chunk boundaries too
    out = []
    for compiled in (True, False):
        m = MODELS["dropout"]("float64")
        m.compile("cross_entropy", make_opt(), lr_schedule=fnn.schedules.Cosine(20, per_step=True))
        m.trainer.compiled_plan = compiled
        out.append((m, m.fit(*_data("cross_entropy"), epochs=3, batch_size=16)))
    (a, ha), (b, hb) = out
    _assert_same(a, ha, b, hb)
    assert a.optimizer.lr == b.optimizer.lr != a.trainer.base_lr


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["binary_cross_entropy", "soft_labels"])
def test_binary_and_soft_label_cross_entropy_on_the_plan(loss, dtype):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((101, 7))
    if loss == "binary_cross_entropy":
        y, out_act, name = (rng.random((101, 5)) > 0.5).astype(dtype), "sigmoid", loss
    else:
        y, out_act, name = rng.dirichlet(np.ones(5), 101).astype(dtype), "softmax", "cross_entropy"
    for kw in ({}, {"sample_weight": rng.random(101)}):
        res = []
        for compiled in (True, False):
            m = fnn.Sequential([Dense(16), Residual([Dense(16, activation="relu"), BatchNorm(), Dropout(0.1)]),
                                Dense(5, activation=out_act)], input_dim=7, seed=3, dtype=dtype)
            m.compile(name, fnn.optim.Adam(lr=3e-3))
            m.trainer.compiled_plan = compiled
            res.append((m, m.fit(X, y, epochs=3, batch_size=16, **kw)))
        (a, ha), (b, hb) = res
        assert a.trainer.train_plan is not None and b.trainer.train_plan is None
        np.testing.assert_array_equal(a.parameters, b.parameters)
        np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6 if dtype == "float32" else 1e-13)
        assert ha.history["accuracy"] == hb.history["accuracy"]
        assert 0 < ha.history["accuracy"][-1] <= 1


class _Recorder(fnn.callbacks.Callback):
    """Batch hooks that read the model and change the learning rate and the weights, as user callbacks may."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_batch_begin(self, batch, logs=None):
        self.model.optimizer.lr = 1e-3 * (1 + batch % 3)
        if batch == 4:
            self.model.layers[0].params["weight"][...] *= 0.5

    def on_batch_end(self, batch, logs=None):
        self.seen.append((batch, logs["size"], logs["loss"], self.model.optimizer.step_count,
                          float(self.model.parameters[0])))


def test_batch_hooks_and_metrics_on_the_plan(monkeypatch):
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 1.0)      # long chunks, but hooks make each batch its own
    X, y = _data("cross_entropy", 150)
    out = []
    for compiled in (True, False):
        m = MODELS["residual"]("float64")
        m.compile("cross_entropy", fnn.optim.Adam(lr=1e-3))
        m.trainer.compiled_plan = compiled
        rec = _Recorder()
        h = m.fit(X, y, epochs=2, batch_size=16, callbacks=[rec],
                  metrics=["top_k_accuracy", fnn.metrics.TopKAccuracy(2, name="top2")])
        out.append((m, h, rec.seen))
    (a, ha, sa), (b, hb, sb) = out
    assert a.trainer.train_plan is not None and b.trainer.train_plan is None
    assert sa == sb and len(sa) == 2 * 10
    _assert_same(a, ha, b, hb)
    assert set(ha.history) >= {"loss", "accuracy", "top_k_accuracy", "top2"}


def test_metrics_on_the_plan_keep_long_chunks(monkeypatch):
    X, y = _data("mse", 400)
    out = []
    for compiled in (True, False):
        m = MODELS["layernorm"]("float32")
        m.compile("mse", "adam", metrics=["mae", "r2"])
        m.trainer.compiled_plan = compiled
        out.append((m, m.fit(X, y, epochs=3, batch_size=32, validation_data=(X[:50], y[:50]))))
    (a, ha), (b, hb) = out
    _assert_same(a, ha, b, hb)
    assert a.trainer.train_plan.chunk > 1


@pytest.mark.parametrize("name", ["residual", "functional"])
def test_evaluate_and_validation_through_the_inference_plan(name, monkeypatch):
    X, y = _data("cross_entropy", 150)
    m = MODELS[name]("float32").compile("cross_entropy", "adam", metrics=["top_k_accuracy"])
    h = m.fit(X[:100], y[:100], epochs=2, batch_size=16, validation_data=(X[100:], y[100:]))
    fast = m.evaluate(X, y, batch_size=40)
    assert m.trainer.infer_plans[1] and any(key[1] for key in m.trainer.infer_plans[1])     # a logits plan
    monkeypatch.setattr(_plan, "predict", lambda *a, **k: None)       # the per-layer forward instead
    assert m.evaluate(X, y, batch_size=40) == fast
    m2 = MODELS[name]("float32").compile("cross_entropy", "adam", metrics=["top_k_accuracy"])
    h2 = m2.fit(X[:100], y[:100], epochs=2, batch_size=16, validation_data=(X[100:], y[100:]))
    assert {k: v for k, v in h.history.items() if k != "time"} == {k: v for k, v in h2.history.items() if k != "time"}


# ---------------------------------------------------------------------------------------------- weight constraints
def _constrained(dtype, frozen=False):
    """Max-norm constraints on several layers (one inside a Residual block, the output layer), limits low enough
    that they bind from the first steps; `frozen`: the first layer is not trainable, but the per-layer path still
    constrains its weight after every update (Trainer.constrained), and so must the plan."""
    m = fnn.Sequential([Dense(16, activation="relu", max_norm=0.6),
                        Residual([Dense(16, activation="tanh", max_norm=fnn.constraints.MaxNorm(0.4)),
                                  LayerNorm()]),
                        Dense(12, max_norm=0.5), L.ELU(), Dense(5, activation="softmax", max_norm=0.8)],
                       input_dim=7, seed=3, dtype=dtype)
    if frozen:
        m.build((None, 7))
        m.layers[0].params["weight"][...] *= 4      # above its limit: the first update's constraint changes it
        m.layers[0].trainable = False
    return m


def _column_norms(m):
    return [(np.linalg.norm(layer.params["weight"].astype(np.float64), axis=0), layer.constraint.max_value)
            for layer in m.trainer.constrained]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_id,make_opt", [OPTIMIZERS[i] for i in (2, 4, 9, 11)],
                         ids=[OPTIMIZERS[i][0] for i in (2, 4, 9, 11)])
def test_max_norm_constraints_on_the_plan(opt_id, make_opt, dtype):
    a, ha, b, hb, _ = _pair(_constrained, "cross_entropy", make_opt, dtype, lr_schedule=None)
    _assert_same(a, ha, b, hb)
    tol = 1e-6 if dtype == "float32" else 1e-14
    bound = 0
    for norms, limit in _column_norms(a):       # the constraints ran, and bound
        assert norms.max() <= limit * (1 + tol)
        bound += np.any(norms >= limit * (1 - tol))
    assert bound >= 2


def test_max_norm_on_a_frozen_layer_and_in_chunks(monkeypatch, restore_threads):
    monkeypatch.setattr(_plan, "CHUNK_SECONDS", 0.0)      # one batch per call
    a, ha, b, hb, _ = _pair(lambda dt: _constrained(dt, frozen=True), "mse", lambda: fnn.optim.Adam(lr=1e-2),
                            "float32", clip_norm=1.0)
    _assert_same(a, ha, b, hb)
    w = a.layers[0].params["weight"]
    assert np.linalg.norm(w, axis=0).max() <= 0.6 * (1 + 1e-6)
    assert a.layers[0].params["weight"] is w and not a.layers[0].trainable


def test_max_norm_two_threads_and_a_changed_limit(restore_threads):
    X, y = _data("cross_entropy", 300)
    fnn.set_num_threads(2)
    ms = []
    for compiled in (True, False):
        m = _constrained("float32").compile("cross_entropy", "adam")
        m.trainer.compiled_plan = compiled
        m.fit(X, y, epochs=1, batch_size=32)
        m.layers[2].constraint.max_value = 0.2          # read again by the next fit
        m.layers[0].constraint = None                   # and a constraint taken off
        ms.append((m, m.fit(X, y, epochs=1, batch_size=32)))
    _assert_same(*ms[0], *ms[1])
    assert ms[0][0].trainer.train_plan is not None
    assert np.linalg.norm(ms[0][0].layers[2].params["weight"], axis=0).max() <= 0.2 * (1 + 1e-6)


def test_max_norm_kernel_gives_the_same_bits_at_any_thread_count():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        W = rng.standard_normal((300, 200)).astype(dtype)      # 60,000 elements: split over the threads
        W[:, 5] = 0.0
        outs = []
        for nt in (1, 2, 3):
            w, norms = W.copy(), np.empty(200, dtype)
            _clip.max_norm_columns(w, norms, 15.0, nt)
            outs.append((w, norms))
        for w, norms in outs[1:]:
            np.testing.assert_array_equal(w, outs[0][0])
            np.testing.assert_array_equal(norms, outs[0][1])
        ref = np.linalg.norm(W.astype(np.float64), axis=0)
        np.testing.assert_allclose(outs[0][1], ref, rtol=1e-5)
        want = W * np.where(ref > 15.0, 15.0 / np.maximum(ref, 1e-300), 1.0)
        np.testing.assert_allclose(outs[0][0], want, rtol=1e-5, atol=1e-6)
        assert np.array_equal(outs[0][0][:, ref <= 15.0], W[:, ref <= 15.0])


class _OtherNorm(fnn.constraints.MaxNorm):
    """A subclass may constrain differently: the plan leaves such a model to the per-layer path."""

    def __call__(self, W, unit_axis=-1):
        return super().__call__(W, unit_axis)


def test_other_constraints_take_the_per_layer_path():
    X, y = _data("cross_entropy")
    m = fnn.Sequential([Dense(8, max_norm=_OtherNorm(1.0)), Dense(5)], input_dim=7, seed=0)
    m.compile("cross_entropy", "adam").fit(X, y, epochs=1)
    assert m.trainer.train_plan is None
    # the inference plan does not care about constraints
    assert _plan._compiles(m, False) and not _plan._compiles(m, True)


def _nan_stop(make, make_opt, X, y, loss="cross_entropy"):
    out = []
    for compiled in (True, False):
        m = make("float32")
        m.compile(loss, make_opt())
        m.trainer.compiled_plan = compiled
        with pytest.raises(fnn.NonFiniteError) as ei:
            m.fit(X, y, epochs=1, batch_size=16, shuffle=False)
        out.append((m, ei.value))
    (a, ea), (b, eb) = out
    assert a.trainer.train_plan is not None
    assert (ea.what, ea.epoch, ea.batch, ea.index) == (eb.what, eb.epoch, eb.batch, eb.index)
    np.testing.assert_array_equal(a.parameters, b.parameters)
    for k in b.optimizer.state:
        np.testing.assert_array_equal(a.optimizer.state[k], b.optimizer.state[k])
    assert a.optimizer.step_count == b.optimizer.step_count
    for norms, limit in _column_norms(a):       # the last good state: constrained weights
        assert norms.max() <= limit * (1 + 1e-6)
    return a, ea


def test_a_nan_stop_keeps_the_constrained_weights():
    X, y = _data("cross_entropy", 160)
    X[70] = 3e38                 # batch 5: the forward pass overflows, the loss is not finite
    _, e = _nan_stop(_constrained, lambda: fnn.optim.Adam(lr=1e-2), X, y)
    assert (e.what, e.batch) == ("loss", 5)


def test_an_overflowing_update_restores_the_constrained_weights():
    # every weight constrained: SGD with a huge rate moves the weights far, the constraints pull them back to
    # their limits after each step, until batch 4's inputs (1e12 times larger) make lr * gradient overflow
    # float32.  The guard cannot prove that step finite: its backup holds the weights as the constraints left them
    # after batch 3, and the plan restores those, as the per-layer path does
    def make(dtype):
        return fnn.Sequential([Dense(16, use_bias=False, max_norm=0.6), Dense(5, use_bias=False, max_norm=0.8)],
                              input_dim=7, seed=3, dtype=dtype)
    X, y = _data("mse", 160)
    X[48:64] *= 1e12
    a, e = _nan_stop(make, lambda: fnn.optim.SGD(lr=1e16), X, y, "mse")
    assert (e.what, e.batch) == ("parameters", 4)
    assert a.trainer.guard_backup_steps >= 1
    for norms, limit in _column_norms(a):       # the steps before it moved every column to its limit
        np.testing.assert_allclose(norms, limit, rtol=1e-6)
