"""BatchNorm and LayerNorm: finite differences in float64, a numpy reference at both dtypes and thread counts,
running statistics, inference mode, errors, and parity with torch.nn.BatchNorm1d / LayerNorm."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm, Dense, LayerNorm

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
    from tests._netcheck import check_model_grads, standalone
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad
    from _netcheck import check_model_grads, standalone


def _ref_norm(X, w, b, eps, axis):
    mean = X.mean(axis=axis, keepdims=True)
    var = X.var(axis=axis, keepdims=True)
    return (X - mean) / np.sqrt(var + eps) * w + b


def _layer(cls, shape, dtype=np.float64, seed=0, **kw):
    layer = standalone(cls(**kw), shape, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, layer.params["weight"].shape)
    layer.params["bias"][...] = rng.standard_normal(layer.params["bias"].shape)
    return layer


@pytest.mark.parametrize("cls,shape,training", [(BatchNorm, (5,), True), (BatchNorm, (5,), False),
                                                (LayerNorm, (6,), True), (LayerNorm, (2, 3), True)])
def test_gradients_float64(cls, shape, training):
    layer = _layer(cls, shape)
    if cls is BatchNorm:
        layer.running_mean[...] = 0.3
        layer.running_var[...] = 2.0
        layer.momentum = 0.0        # keep the running statistics fixed while differencing in inference mode
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7,) + shape) * 2 + 1
    R = rng.standard_normal(X.shape)

    def f(_):
        return float(np.sum(layer.forward(X, training) * R))

    layer.forward(X, training)
    dX = layer.backward(R).copy()
    dW, db = layer.weight_grad.copy(), layer.bias_grad.copy()
    assert_grad_close(dX, numeric_grad(f, X), rtol=1e-6, atol=1e-8)
    assert_grad_close(dW, numeric_grad(f, layer.params["weight"]), rtol=1e-6, atol=1e-8)
    assert_grad_close(db, numeric_grad(f, layer.params["bias"]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,C", [(9, 3), (600, 70), (9000, 5), (4100, 16), (1500, 32), (1100, 64), (1200, 48)])
def test_kernels_match_numpy(dtype, tol, threads, n, C):
    """(600, 70) splits batch norm's columns (blocks of 64) between 2 threads; the others with over 1,000 rows
    have one block of columns and split its rows (partial sums per thread: a convolution's few channels over many
    pixels).  16, 32 and 64 columns take the constant-width loops, 48 and 70 the general ones."""
    from fastnn._core import norm as K
    assert K.row_split_threads(n, C, threads) == (2 if threads == 2 and C <= 64 and n > 1000 else 0)
    fnn.set_num_threads(threads)
    try:
        rng = np.random.default_rng(n)
        X = (rng.standard_normal((n, C)) * 3 + 2).astype(dtype)
        R = rng.standard_normal((n, C)).astype(dtype)
        bn = _layer(BatchNorm, (C,), dtype=dtype)
        w, b = bn.weight.astype(np.float64), bn.bias.astype(np.float64)
        Y = bn.forward(X, True)
        np.testing.assert_allclose(Y, _ref_norm(X.astype(np.float64), w, b, 1e-5, 0), rtol=tol, atol=tol * 10)
        X64 = X.astype(np.float64)
        np.testing.assert_allclose(bn.running_mean, 0.1 * X64.mean(0), rtol=tol, atol=tol)
        np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * X64.var(0, ddof=1), rtol=tol, atol=tol)
        dX = bn.backward(R)
        xhat = (X64 - X64.mean(0)) / np.sqrt(X64.var(0) + 1e-5)
        g = R * w
        ref = (g - g.mean(0) - xhat * (g * xhat).mean(0)) / np.sqrt(X64.var(0) + 1e-5)
        np.testing.assert_allclose(dX, ref, rtol=tol * 10, atol=tol * 10)
        np.testing.assert_allclose(bn.weight_grad, (R * xhat).sum(0), rtol=tol * 10, atol=tol * 100)
        np.testing.assert_allclose(bn.bias_grad, R.astype(np.float64).sum(0), rtol=tol * 10, atol=tol * 100)

        ln = _layer(LayerNorm, (C,), dtype=dtype)
        w, b = ln.weight.astype(np.float64), ln.bias.astype(np.float64)
        np.testing.assert_allclose(ln.forward(X, True), _ref_norm(X64, w, b, 1e-5, 1), rtol=tol, atol=tol * 10)
        dX = ln.backward(R)
        xhat = (X64 - X64.mean(1, keepdims=True)) / np.sqrt(X64.var(1, keepdims=True) + 1e-5)
        g = R * w
        ref = (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True)) / \
            np.sqrt(X64.var(1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(dX, ref, rtol=tol * 10, atol=tol * 10)
        np.testing.assert_allclose(ln.weight_grad, (R * xhat).sum(0), rtol=tol * 10, atol=tol * 100)
    finally:
        fnn.set_num_threads(2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("C", [16, 40, 64, 100, 150])
def test_batchnorm_kernel_row_split_blocks_and_bits(dtype, C):
    """More threads than column blocks split the rows, one block of 64 columns after another (C = 100, 150 at 8
    threads), and match float64 numpy; at one thread each column's sums run in row order whatever the width."""
    from fastnn._core import norm as K
    n = 4000
    rng = np.random.default_rng(C)
    X = (rng.standard_normal((n, C)) * 3 + 2).astype(dtype)
    dY = rng.standard_normal((n, C)).astype(dtype)
    g, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)

    def run(threads):
        out = [np.empty((n, C), dtype) for _ in range(3)] + [np.empty(C, dtype) for _ in range(4)]
        Y, Xh, dX, mean, inv, dg, db = out
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        K.batchnorm_forward(X, g, b, Y, Xh, mean, inv, rm, rv, True, 0.1, 1e-5, threads)
        K.batchnorm_backward(dY, Xh, g, inv, dX, dg, db, True, threads)
        return Y, Xh, dX, mean, inv, dg, db, rm, rv

    assert K.row_split_threads(n, C, 8) > 0 and K.row_split_threads(n, C, 1) == 0
    one, eight = run(1), run(8)
    X64 = X.astype(np.float64)
    m, v = X64.mean(0), X64.var(0)
    xhat = (X64 - m) / np.sqrt(v + 1e-5)
    gg = dY * g.astype(np.float64)
    want = [xhat * g + b, xhat, (gg - gg.mean(0) - xhat * (gg * xhat).mean(0)) / np.sqrt(v + 1e-5), m,
            1 / np.sqrt(v + 1e-5), (dY * xhat).sum(0), dY.astype(np.float64).sum(0)]
    tol = 1e-4 if dtype == "float32" else 1e-10
    for got in (one, eight):
        for a, w in zip(got, want):
            np.testing.assert_allclose(a, w, rtol=tol, atol=tol * 100)
    # each column's sums run in row order in double, whatever the width: the mean and dbeta are bit-exact
    # sequential sums at one thread (np.add.accumulate adds in order)
    np.testing.assert_array_equal(one[3], (np.add.accumulate(X64, axis=0)[-1] / n).astype(dtype))
    np.testing.assert_array_equal(one[6], np.add.accumulate(dY.astype(np.float64), axis=0)[-1].astype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("C,threads", [(7, 1), (16, 1), (48, 1), (64, 2), (100, 8), (130, 2)])
def test_batchnorm_with_a_fused_relu_gives_the_bits_of_two_passes(dtype, C, threads):
    """relu=True (the compiled plan's BatchNorm -> ReLU pair) equals batch norm then the ReLU kernel, forward and
    backward (the gradient masked by the ReLU's output), bit for bit: column blocks, row split, training and
    inference, with ties and outputs of exactly 0 (a constant column with bias 0)."""
    from fastnn._core import activations as act
    from fastnn._core import norm as K
    n = 3000
    rng = np.random.default_rng(C + threads)
    X = (rng.standard_normal((n, C)) * 2 + 0.5).astype(dtype)
    X[::7] = X[0]
    X[:, 0] = 1.25
    dA = rng.standard_normal((n, C)).astype(dtype)
    g, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    b[0] = 0
    relu = int(act.ACT.RELU)
    for training in (True, False):
        outs = []
        for fused in (False, True):
            Y, Xh, dX = (np.empty((n, C), dtype) for _ in range(3))
            mean, inv, dg, db = (np.empty(C, dtype) for _ in range(4))
            rm, rv = np.full(C, 0.2, dtype), np.full(C, 1.5, dtype)
            K.batchnorm_forward(X, g, b, Y, Xh, mean, inv, rm, rv, training, 0.1, 1e-5, threads, relu=fused)
            if fused:
                A = Y
                K.batchnorm_backward(dA, Xh, g, inv, dX, dg, db, training, threads, A=A)
            else:
                A, dZ = np.empty_like(Y), np.empty_like(Y)
                act.activation_forward(relu, Y, A, 0.0, threads)
                act.activation_backward(relu, Y, A, dA, dZ, 0.0, threads)
                K.batchnorm_backward(dZ, Xh, g, inv, dX, dg, db, training, threads)
            outs.append((A, Xh, dX, mean, inv, dg, db, rm, rv))
        if training:
            assert np.all(outs[1][0][:, 0] == 0) and (outs[1][0] > 0).any()
        for u, v in zip(*outs):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="A has shape"):
        K.batchnorm_backward(dA, Xh, g, inv, dX, dg, db, True, 1, A=np.empty((n, C + 1), dtype))


def test_running_statistics_converge_and_are_used_at_inference():
    rng = np.random.default_rng(0)
    mu, sigma = np.array([3.0, -1.0, 0.5]), np.array([2.0, 0.5, 1.0])
    x = fnn.Input(3)
    bn = BatchNorm()
    model = fnn.Model(x, bn(x), dtype="float64")
    for _ in range(300):
        model.engine.forward(mu + sigma * rng.standard_normal((64, 3)), True)
    np.testing.assert_allclose(bn.running_mean, mu, atol=0.1)
    np.testing.assert_allclose(bn.running_var, sigma ** 2, rtol=0.1)
    bn.weight = [1.0, 2.0, 3.0]
    bn.bias = [0.0, 1.0, -1.0]
    X = rng.standard_normal((4, 3))
    want = (X - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.weight + bn.bias
    before = bn.running_mean.copy()
    np.testing.assert_allclose(model.predict(X), want, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, before)          # inference leaves the statistics alone
    assert not np.allclose(model.train().engine.forward(X, True), want)          # training mode uses the batch's


def test_batch_of_one_in_training_is_an_error_like_torch():
    x = fnn.Input(3)
    bn = BatchNorm(name="bn")
    model = fnn.Model(x, Dense(2)(bn(x)))
    model.compile("mse", fnn.optim.SGD(lr=0.1))
    before = model.parameters.copy()
    stats = bn.running_mean.copy()
    with pytest.raises(ValueError, match="bn.*more than 1"):
        model.train_on_batch(np.ones((1, 3)), np.ones((1, 2)))
    np.testing.assert_array_equal(model.parameters, before)
    np.testing.assert_array_equal(bn.running_mean, stats)
    assert model.predict(np.ones((1, 3))).shape == (1, 2)             # inference on one sample is fine


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(momentum=1.5)
    with pytest.raises(TypeError, match="eps"):
        LayerNorm(eps="1e-5")
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(eps=0)
    with pytest.raises(ValueError, match=r"bn.*last axis.*axis=1"):        # channels-first: not supported
        BatchNorm(axis=1, name="bn")(fnn.Input((2, 3)))
    with pytest.raises(ValueError, match="bn.*batch axis"):
        BatchNorm(axis=0, name="bn")
    with pytest.raises(TypeError, match="bn.*axis"):
        BatchNorm(axis=1.0, name="bn")
    assert BatchNorm(axis=2)(fnn.Input((2, 3))).shape == (2, 3)         # the last axis by its index


def test_in_a_model_gradients_and_no_weight_decay():
    x = fnn.Input(4)
    h = Dense(6)(x)
    h = BatchNorm()(h)
    h = fnn.layers.Tanh()(h)
    h = LayerNorm()(Dense(5)(h))
    model = fnn.Model(x, Dense(3)(h), seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, (BatchNorm, LayerNorm)):
            layer.weight = rng.uniform(0.5, 1.5, layer.weight.shape)
            layer.bias = rng.standard_normal(layer.bias.shape)
    check_model_grads(model, rng.standard_normal((8, 4)))
    # normalization parameters sit after the decayed prefix: weight decay skips them by default
    n_dense_w = sum(l.weight.size for l in model.layers if isinstance(l, Dense))
    assert model.table.n_decay == n_dense_w
    for layer in model.layers:
        if isinstance(layer, (BatchNorm, LayerNorm)):
            assert model.table.offset(layer, "weight") >= model.table.n_decay


def test_configs_roundtrip():
    for layer in (BatchNorm(momentum=0.2, eps=1e-3), LayerNorm(eps=1e-6)):
        cls = fnn.layers.REGISTRY[type(layer).__name__]
        assert cls.from_config(layer.get_config()).get_config() == layer.get_config()


def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    C = 5
    bn = _layer(BatchNorm, (C,), momentum=0.3)
    tbn = torch.nn.BatchNorm1d(C, momentum=0.3).double()
    ln = _layer(LayerNorm, (C,), eps=1e-3)
    tln = torch.nn.LayerNorm(C, eps=1e-3).double()
    with torch.no_grad():
        for a, b in ((bn, tbn), (ln, tln)):
            b.weight.copy_(torch.from_numpy(a.weight))
            b.bias.copy_(torch.from_numpy(a.bias))
    for step in range(3):
        X = rng.standard_normal((10, C)) * 3 + step
        R = rng.standard_normal((10, C))
        for ours, theirs in ((bn, tbn), (ln, tln)):
            tx = torch.from_numpy(X.copy()).requires_grad_(True)
            theirs.zero_grad()
            ty = theirs.train()(tx)
            (ty * torch.from_numpy(R)).sum().backward()
            y = ours.forward(X, True)
            dX = ours.backward(R)
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dX, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ours.weight_grad, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ours.bias_grad, theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12)
    X = rng.standard_normal((4, C))
    np.testing.assert_allclose(bn.forward(X, False), tbn.eval()(torch.from_numpy(X)).detach().numpy(), rtol=1e-10)
    with pytest.raises(ValueError):
        tbn.train()(torch.zeros(1, C, dtype=torch.float64))
    with pytest.raises(ValueError):
        bn.forward(np.zeros((1, C)), True)
