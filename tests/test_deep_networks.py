"""Deep networks on the bundled digits: the issue's residual network with BatchNorm, dropout, clipping, weight
decay and a cosine schedule reaches >= 0.97 test accuracy; skip connections make a 20-layer tanh stack train."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Add, BatchNorm, Dense, Dropout, ReLU, Residual


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests measure learning, not threading (the kernel tests cover 1 vs 2 threads).  On one thread they
    stay fast when other processes hold the cores, where a 2-thread OpenMP/BLAS pool can slow down 10x."""
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.datasets.load_digits()
    return fnn.datasets.stratified_split(X, y, test_fraction=0.2, seed=0)   # X_train, y_train, X_test, y_test


def test_residual_network_with_batchnorm_reaches_097(digits):
    Xtr, ytr, Xte, yte = digits
    x = fnn.Input(64)
    h = Dense(128, activation="relu")(x)
    r = Dense(128, activation="relu")(h)
    r = BatchNorm()(r)
    h = Add()([h, r])
    h = Dropout(0.3)(h)
    out = Dense(10)(h)
    model = fnn.Model(x, out, seed=0)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4),
                  clip_norm=1.0, lr_schedule=fnn.schedules.Cosine(total_epochs=30))
    model.fit(Xtr, ytr, epochs=30, batch_size=64)
    assert model.training is False
    assert model.optimizer.lr == pytest.approx(0.1 * (1 + np.cos(np.pi * 29 / 30)) / 2)
    acc = model.evaluate(Xte, yte)["accuracy"]
    assert acc >= 0.97, acc
    p1, p2 = model.predict(Xte), model.predict(Xte)             # inference: no dropout, running statistics
    np.testing.assert_array_equal(p1, p2)


def test_stochastic_depth_stack_trains(digits):
    Xtr, ytr, Xte, yte = digits
    blocks = [[Dense(64), BatchNorm(), ReLU(), Dense(64), BatchNorm()] for _ in range(3)]
    model = fnn.Sequential([Dense(64, activation="relu")] + fnn.layers.residual_stack(blocks, 0.8) + [Dense(10)],
                           input_dim=64, seed=0)
    model.compile("cross_entropy", fnn.optim.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
                  lr_schedule=fnn.schedules.LinearWarmup(2, after=fnn.schedules.Cosine(18)))
    model.fit(Xtr, ytr, epochs=20, batch_size=64)
    assert model.evaluate(Xte, yte)["accuracy"] >= 0.95


def _tanh_stack(skip, seed=0):
    layers = [Dense(32, activation="tanh")]
    for _ in range(18):
        block = Dense(32, activation="tanh")
        layers.append(Residual(block) if skip else block)
    layers.append(Dense(10))                                      # 20 Dense layers either way
    model = fnn.Sequential(layers, input_dim=64, seed=seed)
    model.compile("cross_entropy", fnn.optim.SGD(lr=0.01))
    return model


def test_skip_connections_make_a_deep_tanh_stack_train(digits):
    Xtr, ytr, _, _ = digits
    plain, skip = _tanh_stack(False), _tanh_stack(True)
    assert plain.count_params() == skip.count_params()
    # the gradient reaching the first layer vanishes through 19 tanh layers without skips
    g = []
    for m in (plain, skip):
        m.train_on_batch(Xtr[:64], ytr[:64])
        g.append(np.linalg.norm(m.graph.layers[0].weight_grad))
    assert g[1] > 10 * g[0], g
    lp = plain.fit(Xtr, ytr, epochs=8, batch_size=64).history["loss"][-1]
    ls = skip.fit(Xtr, ytr, epochs=8, batch_size=64).history["loss"][-1]
    assert ls < 0.5 * lp, (ls, lp)
    assert ls < 0.5
