"""Convolutional models on the compiled plan (issue 16, issue 11): Conv2D / Conv1D, max / average / global pooling,
BatchNorm over the channels of (N, H, W, C), Dropout and Add on images, Flatten, against the per-layer path.

The plan runs the per-layer path's kernels (conv.pyx's conv_forward / conv_backward, pool.pyx's pool_forward /
pool_backward: the same code the def wrappers run) in the same order on the same values, with scratch buffers of
the per-layer path's sizes (the same split over the threads), so the tests ask for the same bits.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import bench_cnn
from fastnn.training import compiled as _plan

try:
    from tests.test_plan import OPTIMIZERS
    from tests.test_plan_graph import _assert_same, _train_both
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from test_plan import OPTIMIZERS
    from test_plan_graph import _assert_same, _train_both

L = fnn.layers


def _lenet(dtype):
    """Padding same and valid, strides 1 and 2, max pooling, Dropout on an image, a Residual block of convolutions
    with stochastic depth, Flatten."""
    return fnn.Sequential([L.Conv2D(4, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                           L.Residual([L.Conv2D(4, 3, padding="same", activation="relu"), L.Dropout(0.1)],
                                      survival_prob=0.7),
                           L.Conv2D(6, 3, strides=2, activation="tanh"), L.Dropout(0.2), L.Flatten(),
                           L.Dense(5, activation="softmax")], input_shape=(9, 9, 2), seed=3, dtype=dtype)


def _resnet(dtype):
    """ResNet-8's shapes in small: BatchNorm over the channels, a block with a 1x1 stride-2 projection shortcut,
    Add of two images, a ReLU layer on an image, global average pooling."""
    x = fnn.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNorm()(L.Conv2D(6, 3, padding=1, use_bias=False)(x)))
    a = L.ReLU()(L.BatchNorm()(L.Conv2D(8, 3, strides=2, padding=1, use_bias=False)(h)))
    a = L.BatchNorm(momentum=0.3)(L.Conv2D(8, 3, padding="same", use_bias=False)(a))
    s = L.BatchNorm()(L.Conv2D(8, 1, strides=2, use_bias=False)(h))
    y = L.ReLU()(L.Add()([a, s]))
    return fnn.Model(x, L.Dense(5)(L.GlobalAveragePooling2D()(y)), seed=3, dtype=dtype)


def _grouped(dtype):
    """Grouped and depthwise convolutions, dilation, explicit padding, average pooling with "same" padding, a
    row-wise activation (softmax over the channels) and LayerNorm on an image, global max pooling."""
    return fnn.Sequential([L.Conv2D(8, 3, groups=2, activation="elu"), L.AvgPool2D(2, padding="same"),
                           L.Conv2D(8, 3, groups=8, dilation_rate=(1, 2), padding=((1, 2), (2, 1))),
                           L.Softmax(), L.LayerNorm(), L.MaxPool2D(3, strides=2, padding="same"),
                           L.GlobalMaxPooling2D(), L.Dense(5)], input_shape=(11, 10, 4), seed=3, dtype=dtype)


def _conv1d(dtype):
    """Conv1D (causal and dilated, strided), 1-D max and average pooling, global pooling of a sequence."""
    return fnn.Sequential([L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"), L.MaxPool1D(2),
                           L.Conv1D(6, 3, strides=2, padding="same"), L.BatchNorm(), L.AvgPool1D(2),
                           L.GlobalAveragePooling1D(), L.Dense(5)], input_shape=(16, 3), seed=3, dtype=dtype)


def _reshaped(dtype):
    """Feature vectors reshaped to images (the inference plan takes this model too), GlobalAveragePooling with
    keepdims, Flatten of a 4-D output."""
    return fnn.Sequential([L.Reshape((6, 6, 2)), L.Conv2D(5, 3, activation="sigmoid"),
                           L.GlobalAveragePooling2D(keepdims=True), L.Flatten(), L.Dense(5)],
                          input_dim=72, seed=3, dtype=dtype)


MODELS = {"lenet": _lenet, "resnet": _resnet, "grouped": _grouped, "conv1d": _conv1d, "reshaped": _reshaped}


def _data(make, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = make("float64").input_shape
    return rng.standard_normal((n,) + tuple(shape)), rng.integers(0, 5, n)


def _pair(make, make_opt=lambda: fnn.optim.Adam(lr=3e-3), dtype="float32", epochs=2, bs=8, n=37, threads=1,
          loss="cross_entropy"):
    """The same model trained through the plan and through the per-layer path."""
    X, y = _data(make, n)
    return (*_train_both(make, X, y, loss, make_opt, dtype, epochs, bs, threads), X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_conv_models_give_the_weights_of_the_per_layer_path(name, dtype):
    a, ha, b, hb, X = _pair(MODELS[name], dtype=dtype)
    _assert_same(a, ha, b, hb)


@pytest.mark.parametrize("opt_id,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_every_optimizer_on_a_conv_model(opt_id, make_opt):
    _assert_same(*_pair(_lenet, make_opt, "float64", epochs=1)[:4])


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_two_threads_give_the_weights_of_the_per_layer_path_at_two_threads(name):
    _assert_same(*_pair(MODELS[name], n=64, bs=32, threads=2)[:4])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_relu_pairs_run_fused(dtype):
    """A ReLU node fed only by a BatchNorm runs inside it (a pass fewer each way) with the per-layer path's bits;
    a BatchNorm that feeds an Add, and a ReLU after an Add, stay apart."""
    a, ha, b, hb, X = _pair(_resnet, dtype=dtype)
    _assert_same(a, ha, b, hb)
    core = a.trainer.train_plan.core
    assert core.fuse_relu and len(core.fused_nodes) == 2


def test_batches_of_one():
    # every batch one image (no BatchNorm: one value per channel), and a last batch of one image for a model
    # whose BatchNorm normalizes 8x8 positions per channel
    _assert_same(*_pair(_lenet, n=5, bs=1)[:4])
    _assert_same(*_pair(_resnet, n=17, bs=8)[:4])


def test_the_bench_cnn_models_run_on_the_plan():
    for wid in ("C1", "C2", "C3", "C4"):
        spec = bench_cnn._spec(wid, scale=8)
        m = bench_cnn.fastnn_model(spec, bench_cnn.make_weights(spec))
        assert _plan._compiles(m, True), wid


def test_a_nan_stops_a_conv_model_with_the_last_good_state(restore_threads):
    fnn.set_num_threads(1)
    X, y = _data(_resnet, 48)
    X[35] = 3e38            # in batch 3 (1-based) of 16, in order: it overflows the first convolution (float32)
    out, what = [], []
    for compiled in (True, False):
        m = _resnet("float32")
        m.compile("cross_entropy", fnn.optim.SGD(lr=0.01, momentum=0.9))
        m.trainer.compiled_plan = compiled
        with pytest.raises(fnn.NonFiniteError) as ei:
            m.fit(X, y, epochs=1, batch_size=16, shuffle=False)
        assert (ei.value.epoch, ei.value.batch) == (1, 3) and m.optimizer.step_count == 2
        assert (m.trainer.train_plan is not None) == compiled
        out.append(m)
        what.append(ei.value.what)
    assert what[0] == what[1]
    clean = _resnet("float32")
    clean.compile("cross_entropy", fnn.optim.SGD(lr=0.01, momentum=0.9))
    clean.fit(X[:32], y[:32], epochs=1, batch_size=16, shuffle=False)
    for m in out:
        np.testing.assert_array_equal(m.parameters, clean.parameters)
        for k, v in clean.optimizer.state.items():
            np.testing.assert_array_equal(m.optimizer.state[k], v)
        for la, lb in zip(m.graph.layers, clean.graph.layers):
            for k in lb.buffers:
                np.testing.assert_array_equal(la.buffers[k], lb.buffers[k])


def test_max_norm_on_convolutions():
    def make(dtype):
        return fnn.Sequential([L.Conv2D(6, 3, activation="relu", max_norm=0.3), L.MaxPool2D(2),
                               L.Conv2D(4, 2, groups=2, max_norm=0.2), L.Flatten(),
                               L.Dense(5, max_norm=0.5)], input_shape=(9, 9, 2), seed=3, dtype=dtype)
    a, ha, b, hb, _ = _pair(make, lambda: fnn.optim.SGD(lr=0.5, momentum=0.9))
    _assert_same(a, ha, b, hb)
    for layer in a.layers[:3:2]:
        W = layer.params["weight"]
        norms = np.sqrt((W.astype(np.float64) ** 2).reshape(-1, W.shape[-1]).sum(axis=0))
        assert norms.max() <= layer.constraint.max_value * (1 + 1e-6) and norms.max() > 0.9 * layer.constraint.max_value


class MyMaxNorm(fnn.constraints.MaxNorm):      # a subclass may constrain otherwise: the per-layer path runs it
    pass


def test_layers_the_plan_does_not_cover_keep_the_per_layer_path():
    X, y = _data(_lenet, 16)
    for make in [
        # a Dense on every pixel (an image out of a Dense), a Permute, a convolution constrained by a MaxNorm subclass
        lambda: fnn.Sequential([L.Conv2D(4, 3), L.Dense(3), L.Flatten(), L.Dense(5)], input_shape=(9, 9, 2)),
        lambda: fnn.Sequential([L.Permute((2, 1, 3)), L.Conv2D(4, 3), L.Flatten(), L.Dense(5)], input_shape=(9, 9, 2)),
        lambda: fnn.Sequential([L.Conv2D(4, 3, max_norm=MyMaxNorm(2.0)), L.Flatten(), L.Dense(5)],
                               input_shape=(9, 9, 2)),
    ]:
        m = make()
        m.compile("cross_entropy", "adam")
        m.fit(X, y, epochs=1, batch_size=8)
        assert m.trainer.train_plan is None
    # an image out of the model: the plan's loss takes feature vectors
    m = fnn.Sequential([L.Conv2D(4, 3, padding="same")], input_shape=(9, 9, 2))
    m.compile("mse", "adam")
    assert not _plan._compiles(m, True)


def test_inference_plan_of_a_conv_model(restore_threads):
    fnn.set_num_threads(1)
    a, _, b, _, X = _pair(_reshaped, n=100, bs=16)
    X = X.astype(np.float32)
    out = a.predict(X)
    assert a.trainer.infer_plans[1]         # made and used
    np.testing.assert_array_equal(out, b.engine.forward(X, False))


def test_a_larger_thread_count_makes_a_new_plan(restore_threads):
    # the convolutions' workspace is sized for the thread count the plan was made at, as the per-layer buffers are
    X, y = _data(_lenet, 16)
    m = _lenet("float32").compile("cross_entropy", "adam")
    fnn.set_num_threads(1)
    m.fit(X, y, epochs=1, batch_size=8)
    plan = m.trainer.train_plan
    assert plan is not None and plan.threads == 1
    fnn.set_num_threads(2)
    m.fit(X, y, epochs=1, batch_size=8)
    assert m.trainer.train_plan is not plan and m.trainer.train_plan.threads == 2
    fnn.set_num_threads(1)
    m.fit(X, y, epochs=1, batch_size=8)       # enough scratch for fewer threads: the plan is kept
    assert m.trainer.train_plan.threads == 2


@pytest.mark.parametrize("name", ["lenet", "resnet", "conv1d"])
def test_predict_and_evaluate_on_images_use_the_inference_plan(name, restore_threads):
    # (n, H, W, C) and (n, T, C) inputs: the compiled inference plan reads them as (n, features) views and gives
    # the executor's bits, for one image, a few and more than a chunk; evaluate takes the same path
    fnn.set_num_threads(1)
    a, _, b, _, X = _pair(MODELS[name], n=70, bs=16)
    X = X.astype(np.float32)
    for part in (X[:1], X[:5], X):
        a.trainer.infer_plans = None
        out = a.predict(part)
        assert a.trainer.infer_plans[1], "the inference plan was not used"
        assert out.shape == (len(part), 5)
        np.testing.assert_array_equal(out, b.engine.forward(part, False))
    y = np.arange(len(X)) % 5
    assert a.evaluate(X, y, verbose=0) == b.evaluate(X, y, verbose=0)
    bad = X.copy()
    bad[3, 0, 0] = np.nan                 # a NaN input: the general path and its error, as before
    with pytest.raises(ValueError, match="NaN|nan|finite"):
        a.predict(bad)
