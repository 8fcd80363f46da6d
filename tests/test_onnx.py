"""ONNX export (fastnn.onnx): every registry layer, in several configurations, and the README's example models run in
onnxruntime with the results of ``model.predict`` (max abs difference <= 1e-5 in float32), at batch sizes 1 and
> 1, with masks padded at the end, in the middle and at both ends; plus the refusals."""
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn._core.kinds import ACT

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

L = fnn.layers
TOL = 1e-5


# ---------------------------------------------------------------------------------------------- helpers
def _randomize(model, seed=0):
    """Biases, normalization parameters and running statistics drawn at random (positive running variances), so
    that none is trivially 0 or 1 and the export must carry each of them; the weight matrices keep their random
    initialization (its scale keeps float32 outputs and 100-step recurrences well conditioned)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, value.shape)
        elif key.endswith("running_mean"):
            state[key] = rng.normal(0.0, 0.5, value.shape)
        elif value.ndim <= 1:
            state[key] = value + rng.normal(0.0, 0.3, value.shape)
    model.load_state_dict(state, strict=False)
    return model


def _run(model, X, tmp_path, **kw):
    """Export `model`, run the file in onnxruntime on X; returns (onnx output, fastnn's predict)."""
    path = tmp_path / "model.onnx"
    proto = fnn.onnx.export(model, path, **kw)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    assert names == ([kw.get("input_name", "input")], [kw.get("output_name", "output")])
    assert proto.producer_name == "fastnn"
    return sess.run(None, {names[0][0]: X})[0], model.predict(X)


def _check(model, X, tmp_path, tol=TOL, **kw):
    got, want = _run(model, X, tmp_path, **kw)
    assert got.shape == want.shape
    assert got.dtype == np.dtype(kw.get("dtype") or "float32")
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= tol, f"max abs difference {err:.3g} > {tol}"


def floats(*shape, scale=1.0):
    """Inputs of a sample shape: make(n, rng) -> float32 (n, *shape)."""
    return lambda n, rng: (scale * rng.normal(size=(n,) + shape)).astype(np.float32)


# the padding patterns of masked rows (True: a real step), for T steps: row 0 (the batch-1 case) padded in the
# middle, then both ends, right, left, nothing, and everything masked
def _pattern(k, T):
    m = np.ones(T, bool)
    [lambda: m.__setitem__(slice(2, 4), False), lambda: (m.__setitem__(0, False), m.__setitem__(T - 1, False)),
     lambda: m.__setitem__(slice(T - 2, T), False), lambda: m.__setitem__(slice(0, 2), False), lambda: None,
     lambda: m.__setitem__(slice(None), False)][k % 6]()
    return m


def padded_floats(T, F, value=0.0):
    """Float sequences (n, T, F) whose padded steps all equal `value` (for Masking)."""
    def make(n, rng):
        X = rng.normal(size=(n, T, F)).astype(np.float32)
        for i in range(n):
            X[i, ~_pattern(i, T)] = value
        return X
    return make


def padded_ids(T, vocab):
    """Id sequences (n, T) in [1, vocab) with 0 at the padded steps (for Embedding(mask_zero=True))."""
    def make(n, rng):
        X = rng.integers(1, vocab, size=(n, T))
        for i in range(n):
            X[i, ~_pattern(i, T)] = 0
        return X.astype(np.int64)
    return make


def ids(*shape, vocab):
    return lambda n, rng: rng.integers(0, vocab, size=(n,) + shape).astype(np.int64)


# ---------------------------------------------------------------------------------------------- the cases
ACTIVATIONS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "elu", "selu",
               "softplus", "mish"]


def _dense_cases():
    for act in ACTIVATIONS + [L.GELU(approximate="tanh"), L.LeakyReLU(0.3), L.ELU(alpha=0.5)]:
        name = act if isinstance(act, str) else repr(act)
        yield (f"dense-{name}", lambda act=act: fnn.Sequential(
            [L.Dense(7, activation=act), L.Dense(3, activation=act, use_bias=False)], input_dim=5, seed=1),
            floats(5, scale=3.0))
    yield ("dense-rank3", lambda: fnn.Sequential([L.Dense(4, activation="relu"), L.Dense(2)], input_shape=(3, 5)),
           floats(3, 5))


def _activation_cases():
    """Each activation layer alone on inputs up to +-60: past softplus' threshold 20, gelu_tanh's clamp 20 and
    mish's 40."""
    layers = [(L.Identity, {}), (L.ReLU, {}), (L.LeakyReLU, {}), (L.LeakyReLU, {"alpha": 0.2}), (L.Sigmoid, {}),
              (L.Tanh, {}), (L.Softmax, {}), (L.GELU, {}), (L.GELU, {"approximate": "tanh"}), (L.SiLU, {}),
              (L.ELU, {}), (L.ELU, {"alpha": 0.3}), (L.SELU, {}), (L.Softplus, {}), (L.Mish, {})]
    for cls, kw in layers:
        yield (f"layer-{cls.__name__}{''.join(f'-{v}' for v in kw.values())}",
               lambda cls=cls, kw=kw: fnn.Sequential([cls(**kw)], input_shape=(4, 6)), floats(4, 6, scale=20.0))


def _core_cases():
    def graph():
        x = fnn.Input(5)
        h = L.Dense(8, activation="relu")(x)
        a = L.BatchNorm()(L.Dense(8)(h))
        b = L.Dropout(0.3, mode="weight_scaling")(L.Dense(8, activation="tanh")(h))
        h = L.Add()([h, a, b])                                     # three inputs, h fans out
        h = L.Concatenate()([h, L.LayerNorm()(L.Dense(4)(h)), L.Dropout(0.0, mode="weight_scaling")(h)])
        h = L.Residual([L.Dense(20, activation="relu"), L.Dense(20)], survival_prob=0.8)(h)
        return fnn.Model(x, L.Dense(3, activation="softmax")(h), seed=6)

    yield ("graph-merge-residual", graph, floats(5))
    yield ("sequential-norm-dropout-residual", lambda: fnn.Sequential([
        L.Dense(8, activation="relu"), L.BatchNorm(eps=1e-3), L.Dropout(0.5),
        L.Residual([L.Dense(8, activation="tanh"), L.LayerNorm(eps=1e-3)], survival_prob=0.7),
        L.Residual(L.Residual([L.Dense(8), L.ReLU()])),         # nested
        L.Dense(3)], input_dim=5, seed=5), floats(5))
    yield ("shapes", lambda: fnn.Sequential([
        L.Reshape((5, -1)), L.Dense(4, activation="tanh"), L.BatchNorm(), L.Permute((2, 1)), L.Reshape((2, 10)),
        L.LayerNorm(), L.Flatten(), L.Dense(3)], input_dim=10, seed=7), floats(10))
    yield ("permute-3d", lambda: fnn.Sequential([L.Permute((3, 1, 2)), L.Flatten(), L.Dense(2)],
                                                input_shape=(2, 3, 4)), floats(2, 3, 4))
    yield ("layernorm-large-mean", lambda: fnn.Sequential([L.LayerNorm()], input_shape=(4, 16)),
           lambda n, rng: (300.0 + rng.normal(size=(n, 4, 16))).astype(np.float32))
    yield ("batchnorm-image", lambda: fnn.Sequential([L.BatchNorm(momentum=0.2)], input_shape=(3, 4, 2)),
           floats(3, 4, 2))


def _conv_cases():
    c1 = [dict(padding="valid"), dict(padding="same"), dict(padding="causal", dilation_rate=2),
          dict(padding=(2, 1), strides=2), dict(padding="same", strides=3, dilation_rate=2),
          dict(groups=2, padding="same", activation="relu"), dict(groups=4, activation="softmax", use_bias=False)]
    for k, cfg in enumerate(c1):
        filters = 4 if cfg.get("groups", 1) != 4 else 8
        yield (f"conv1d-{k}", lambda cfg=cfg, f=filters: fnn.Sequential([L.Conv1D(f, 3, **cfg)], input_shape=(9, 4)),
               floats(9, 4))
    yield ("conv1d-variable-length-same", lambda: fnn.Sequential(
        [L.Conv1D(3, 4, padding="same", strides=2, dilation_rate=2, activation="tanh"),
         L.Conv1D(2, 2, padding="causal", dilation_rate=2), L.Conv1D(2, 2, padding=(1, 2)), L.Conv1D(2, 2)],
        input_shape=(None, 2)), lambda n, rng: rng.normal(size=(n, 9 + n, 2)).astype(np.float32))
    yield ("conv2d-variable-size-same", lambda: fnn.Sequential(
        [L.Conv2D(3, (3, 2), padding="same", strides=(2, 1), dilation_rate=(1, 2), activation="relu"),
         L.MaxPool2D(2, padding="same"), L.GlobalAveragePooling2D()], input_shape=(None, None, 2)),
        lambda n, rng: rng.normal(size=(n, 5 + n, 9 - n // 2, 2)).astype(np.float32))     # sizes vary with n
    c2 = [dict(padding="valid"), dict(padding="same", strides=2), dict(padding=((1, 0), (0, 2))),
          dict(padding=1, dilation_rate=(2, 1)), dict(padding="same", strides=(2, 3), dilation_rate=2),
          dict(groups=2, activation="gelu"), dict(groups=4, padding="same", activation="selu")]   # depthwise last
    for k, cfg in enumerate(c2):
        yield (f"conv2d-{k}", lambda cfg=cfg: fnn.Sequential([L.Conv2D(4, (3, 2), **cfg)], input_shape=(7, 8, 4)),
               floats(7, 8, 4))


def _pool_cases():
    for cls in (L.MaxPool1D, L.AvgPool1D):
        for cfg in (dict(), dict(pool_size=3, strides=2), dict(pool_size=3, strides=2, padding="same"),
                    dict(pool_size=4, padding="same")):
            yield (f"{cls.__name__}-{cfg}", lambda cls=cls, cfg=cfg: fnn.Sequential([cls(**cfg)], input_shape=(9, 3)),
                   floats(9, 3))
        for pad in ("same", "valid"):
            yield (f"{cls.__name__}-variable-{pad}", lambda cls=cls, pad=pad: fnn.Sequential(
                [cls(3, strides=2, padding=pad)], input_shape=(None, 3)),
                lambda n, rng: rng.normal(size=(n, 8 + n, 3)).astype(np.float32))
    yield ("pools-2d-variable-valid", lambda: fnn.Sequential(
        [L.MaxPool2D((2, 3)), L.AvgPool2D(2, strides=1), L.GlobalMaxPooling2D(keepdims=True)],
        input_shape=(None, None, 2)), lambda n, rng: rng.normal(size=(n, 5 + n, 12 - n, 2)).astype(np.float32))
    for cls in (L.MaxPool2D, L.AvgPool2D):
        for cfg in (dict(), dict(pool_size=(3, 2), strides=(2, 1)), dict(pool_size=3, strides=2, padding="same"),
                    dict(pool_size=(2, 4), padding="same")):
            yield (f"{cls.__name__}-{cfg}", lambda cls=cls, cfg=cfg: fnn.Sequential([cls(**cfg)],
                                                                                    input_shape=(7, 9, 2)),
                   floats(7, 9, 2))
    for cls in (L.GlobalMaxPooling1D, L.GlobalAveragePooling1D):
        for keep in (False, True):
            yield (f"{cls.__name__}-{keep}", lambda cls=cls, keep=keep: fnn.Sequential(
                [cls(keepdims=keep)], input_shape=(6, 3)), floats(6, 3))
    for cls in (L.GlobalMaxPooling2D, L.GlobalAveragePooling2D):
        for keep in (False, True):
            yield (f"{cls.__name__}-{keep}", lambda cls=cls, keep=keep: fnn.Sequential(
                [cls(keepdims=keep)], input_shape=(5, 4, 3)), floats(5, 4, 3))


def _sequence_input_cases():
    yield ("embedding", lambda: fnn.Sequential([L.Embedding(11, 4), L.Flatten(), L.Dense(2)], input_shape=(5,)),
           ids(5, vocab=11))
    yield ("embedding-mask-gru", lambda: fnn.Sequential(
        [L.Embedding(13, 4, mask_zero=True), L.Dense(5, activation="relu"), L.GRU(3)], input_shape=(None,)),
        padded_ids(7, 13))
    yield ("masking-lstm-sequences", lambda: fnn.Sequential(
        [L.Masking(), L.LSTM(4, return_sequences=True), L.Dense(2)], input_shape=(7, 3)), padded_floats(7, 3))
    yield ("masking-per-step-layers-lstm", lambda: fnn.Sequential(
        [L.Masking(), L.Residual([L.Dense(3, activation="relu"), L.LayerNorm()], survival_prob=0.9), L.Dropout(0.2),
         L.Tanh(), L.LSTM(4, go_backwards=True)], input_shape=(7, 3)), padded_floats(7, 3))
    yield ("masking-value-images", lambda: fnn.Sequential(
        [L.Masking(mask_value=-1.0), L.Dense(2)], input_shape=(6, 2, 3)),
        lambda n, rng: padded_floats(6, 6, value=-1.0)(n, rng).reshape(n, 6, 2, 3))


def _recurrent_cases():
    rnns = [lambda **k: L.SimpleRNN(4, **k), lambda **k: L.SimpleRNN(3, activation="relu", **k),
            lambda **k: L.LSTM(4, **k), lambda **k: L.GRU(3, **k)]
    names = ["simplernn-tanh", "simplernn-relu", "lstm", "gru"]
    for name, make in zip(names, rnns):
        for flags in (dict(), dict(return_sequences=True), dict(go_backwards=True),
                      dict(return_sequences=True, go_backwards=True)):
            tag = "-".join(k for k in flags) or "last"
            yield (f"{name}-{tag}", lambda make=make, flags=flags: fnn.Sequential(
                [make(**flags)], input_shape=(None, 3)), floats(6, 3))
            yield (f"{name}-{tag}-masked", lambda make=make, flags=flags: fnn.Sequential(
                [L.Masking(), make(**flags)], input_shape=(6, 3)), padded_floats(6, 3))

        def states(make=make, masked=False):
            """return_state feeding initial_state; the model's output is a state (multi-output node, picked)."""
            x = fnn.Input((6, 3))
            h = L.Masking()(x) if masked else x
            outs = make(return_sequences=True, return_state=True)(h)
            y = make(return_sequences=True, go_backwards=True)(outs[0], initial_state=outs[1:])
            last = make(return_state=True)(y)
            return fnn.Model(x, last[-1])           # the last state (LSTM: c)
        yield (f"{name}-states", states, floats(6, 3))
        yield (f"{name}-states-masked", lambda states=states: states(masked=True), padded_floats(6, 3))
    for mode in ("concat", "sum", "mul", "ave"):
        for seq in (False, True):
            yield (f"bidirectional-{mode}-{seq}", lambda mode=mode, seq=seq: fnn.Sequential(
                [L.Masking(), L.Bidirectional(L.LSTM(3, return_sequences=seq), merge_mode=mode)],
                input_shape=(6, 2)), padded_floats(6, 2))

    def bidi_none(pick, inner):
        x = fnn.Input((6, 2))
        outs = L.Bidirectional(inner, merge_mode=None)(L.Masking()(x))
        return fnn.Model(x, L.Dense(2)(outs[pick]))
    yield ("bidirectional-none-forward", lambda: bidi_none(0, L.GRU(3, return_sequences=True)), padded_floats(6, 2))
    yield ("bidirectional-none-backward", lambda: bidi_none(1, L.SimpleRNN(3, go_backwards=True)),
           padded_floats(6, 2))
    yield ("bidirectional-unmasked-variable", lambda: fnn.Sequential(
        [L.Bidirectional(L.GRU(3, return_sequences=True, go_backwards=True))], input_shape=(None, 2)), floats(5, 2))

    def two_masks():
        """Two mask producers meeting at a Concatenate (the AND of their masks) before a recurrent layer: one masks
        the steps whose features are all <= 0, the other those all >= 0 (padding steps both)."""
        x = fnn.Input((6, 3))
        pos, neg = L.Dense(3, use_bias=False), L.Dense(3, use_bias=False)
        a = L.Masking()(L.ReLU()(pos(x)))
        b = L.Masking()(L.ReLU()(neg(x)))
        model = fnn.Model(x, L.GRU(3)(L.Concatenate()([a, b])))
        pos.weight, neg.weight = np.eye(3), -np.eye(3)
        return model
    yield ("two-masks-and", two_masks, padded_floats(6, 3))


CASES = (list(_dense_cases()) + list(_activation_cases()) + list(_core_cases()) + list(_conv_cases()) +
         list(_pool_cases()) + list(_sequence_input_cases()) + list(_recurrent_cases()))


# the README's example models (README.md: "Data layout", "Convolutional networks", "Recurrent networks",
# "Masking and variable-length sequences", the docstrings' quick start)
def _readme_cases():
    D = L.Dense
    yield ("readme-mlp", lambda: fnn.Sequential([D(128, activation="relu"), D(10)], input_dim=64), floats(64))
    yield ("readme-ova", lambda: fnn.Sequential([D(64, activation="relu"), D(5, activation="sigmoid")],
                                                input_dim=20), floats(20))
    yield ("readme-layout", lambda: fnn.Sequential(
        [L.Dense(32, activation="gelu"), L.LayerNorm(), L.Flatten(), L.Dense(10)], input_shape=(20, 8), seed=0),
        floats(20, 8))

    def per_step():
        x = fnn.Input((None, 8))
        return fnn.Model(x, L.Dense(5)(L.Dense(16, activation="relu")(x)))
    yield ("readme-per-step", per_step, floats(9, 8))
    yield ("readme-cnn", lambda: fnn.Sequential([
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPool2D(2),
        L.Conv2D(64, 3, strides=1, padding="valid", activation="relu"), L.GlobalAveragePooling2D(), D(10),
    ], input_shape=(28, 28, 1), seed=0), floats(28, 28, 1))
    yield ("readme-permute-nchw", lambda: fnn.Sequential(
        [L.Permute((2, 3, 1)), L.MaxPool2D(2), L.Flatten(), L.Dense(10)], input_shape=(3, 8, 8)), floats(3, 8, 8))
    yield ("readme-embedding-lstm", lambda: fnn.Sequential(
        [L.Embedding(10000, 32, mask_zero=True), L.LSTM(100), L.Dense(1)], input_shape=(None,), seed=0),
        padded_ids(8, 10000))

    def states():
        x = fnn.Input((None, 8))
        out, h, c = L.LSTM(32, return_sequences=True, return_state=True)(x)
        y = L.GRU(32)(out, initial_state=[h])
        return fnn.Model(x, L.Dense(1)(y))
    yield ("readme-lstm-states-gru", states, floats(7, 8))
    yield ("readme-adding-problem", lambda: fnn.Sequential([L.SimpleRNN(32), L.Dense(1)], input_shape=(100, 2),
                                                           seed=0),
           lambda n, rng: fnn.datasets.adding_problem(max(n, 2), 100, seed=0)[0][:n].astype(np.float32))


README_CASES = list(_readme_cases())
ALL = CASES + README_CASES


def _layer_classes(model):
    for layer in model.graph.layers:
        yield layer
        for attr in ("activation", "layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if isinstance(inner, fnn.layers.Layer):
                yield inner


def test_every_registry_layer_and_activation_kind_has_a_case():
    """Fails when a layer class joins fastnn.layers.REGISTRY (or a kind joins the activation table) without an
    export case here."""
    classes, kinds = set(), set()
    for _, make, _ in ALL:
        for layer in _layer_classes(make()):
            classes.add(type(layer).__name__)
            if isinstance(layer, L.Activation):
                kinds.add(layer.kind)
    assert set(fnn.layers.REGISTRY) - classes == set()
    assert set(ACT) - kinds == set()


@pytest.mark.parametrize("name,make,inputs", ALL, ids=[c[0] for c in ALL])
def test_export_matches_predict(tmp_path, name, make, inputs):
    model = _randomize(make())
    rng = np.random.default_rng(1)
    for n in (1, 6):
        _check(model, inputs(n, rng), tmp_path)


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("name", ["masking-value-images", "GlobalAveragePooling2D-True", "lstm-states-masked",
                                  "shapes"])
def test_other_opsets(tmp_path, opset, name):
    """The reductions take their axes as an input from opset 18: the same results."""
    _, make, inputs = next(c for c in ALL if c[0] == name)
    _check(_randomize(make()), inputs(3, np.random.default_rng(2)), tmp_path, opset=opset)


def test_float64_export(tmp_path):
    """dtype="float64": the file computes in double (onnxruntime has double kernels for these operators)."""
    x = fnn.Input((6, 3))
    h = L.Dense(4, activation="mish")(L.Masking()(x))
    h = L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="ave")(h)
    model = _randomize(fnn.Model(x, L.Dense(2, activation="softmax")(L.GRU(3)(L.LayerNorm()(h))), dtype="float64"))
    X = padded_floats(6, 3)(5, np.random.default_rng(3)).astype(np.float64)
    _check(model, X, tmp_path, tol=1e-10, dtype="float64")
    got, want = _run(model, X.astype(np.float32), tmp_path)      # a float64 model exported as float32
    assert np.max(np.abs(got - want)) <= TOL


def test_fixed_batch_and_names(tmp_path):
    model = _randomize(fnn.Sequential([L.Masking(), L.GRU(3, return_sequences=True)], input_shape=(None, 2)))
    proto = fnn.onnx.export(model, str(tmp_path / "m.onnx"), batch_size=4, input_name="x", output_name="y")
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, "x_d1", 2]
    assert proto.opset_import[0].version == fnn.onnx.DEFAULT_OPSET
    X = padded_floats(5, 2)(4, np.random.default_rng(4))
    _check(model, X, tmp_path, batch_size=4, input_name="x", output_name="y")


def test_empty_batch(tmp_path):
    model = _randomize(fnn.Sequential([L.Dense(3, activation="relu")], input_dim=4))
    got, want = _run(model, np.zeros((0, 4), np.float32), tmp_path)
    assert got.shape == want.shape == (0, 3)


# ---------------------------------------------------------------------------------------------- refusals
class _Twice(fnn.layers.Layer):
    """A user-written layer: not in the registry."""
    mask_support = "pass"

    def forward(self, X, training=False):
        return 2 * X

    def backward(self, dY):
        return 2 * dY


class _MyDense(L.Dense):
    """A subclass of a registry layer: its forward may differ, so it is refused too."""


@pytest.mark.parametrize("layer", [_Twice, lambda: _MyDense(3)], ids=["user-layer", "subclass"])
def test_unknown_layer_is_refused(tmp_path, layer):
    layer = layer()
    model = fnn.Sequential([L.Dense(3), layer], input_dim=4)
    with pytest.raises(ValueError, match=f"{layer.name}.*cannot be exported.*REGISTRY"):
        fnn.onnx.export(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("path", [None, 3, 3.5, ["m.onnx"]])
def test_bad_path_type(path):
    model = fnn.Sequential([L.Dense(3)], input_dim=4)
    with pytest.raises(TypeError, match="path must be a str or an os.PathLike"):
        fnn.onnx.export(model, path)


@pytest.mark.parametrize("kw,match", [
    (dict(opset=12), "opset must be an int in"), (dict(opset=10 ** 6), "opset must be an int in"),
    (dict(opset="17"), "opset must be"), (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    (dict(dtype="nonsense"), "dtype must be"), (dict(batch_size=0), "batch_size must be None"),
    (dict(batch_size=True), "batch_size"), (dict(input_name=""), "input_name"),
    (dict(input_name="a", output_name="a"), "must differ")])
def test_bad_arguments(tmp_path, kw, match):
    model = fnn.Sequential([L.Dense(3)], input_dim=4)
    with pytest.raises(ValueError, match=match):
        fnn.onnx.export(model, tmp_path / "m.onnx", **kw)


def test_not_a_model_or_not_built(tmp_path):
    with pytest.raises(TypeError, match="must be a fastnn Model"):
        fnn.onnx.export(L.Dense(3), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not built"):
        fnn.onnx.export(fnn.Sequential([L.Dense(3)]), tmp_path / "m.onnx")


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)           # `import onnx` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fastnn\[onnx\]"'):
        fnn.onnx.export(fnn.Sequential([L.Dense(3)], input_dim=4), tmp_path / "m.onnx")


def test_core_never_imports_onnx():
    code = "import sys, fastnn; fastnn.onnx.export; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
