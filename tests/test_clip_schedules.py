"""Gradient clipping, learning-rate schedules, the max-norm constraint, and weight decay (with torch parity)."""
import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn import schedules
from fastnn._core import clip as _clip
from fastnn.layers import BatchNorm, Dense, ReLU


# ------------------------------------------------------------------------------------------ clipping kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_clip_by_norm_equals_limit_above_and_untouched_below(dtype, threads):
    g0 = np.random.default_rng(0).standard_normal(100_000).astype(dtype)
    norm = float(np.linalg.norm(g0.astype(np.float64)))
    g = g0.copy()
    got = _clip.clip_gradients(g, -1.0, norm / 4, threads)
    assert got == pytest.approx(norm, rel=1e-6)
    assert float(np.linalg.norm(g.astype(np.float64))) == pytest.approx(norm / 4, rel=1e-5)
    np.testing.assert_allclose(g, g0 * (norm / 4) / (norm + 1e-6), rtol=1e-5)
    g = g0.copy()
    _clip.clip_gradients(g, -1.0, norm * 1.01, threads)
    np.testing.assert_array_equal(g, g0)                  # below the limit: untouched, bit for bit


@pytest.mark.parametrize("threads", [1, 2])
def test_clip_by_value_then_norm(threads):
    g0 = np.random.default_rng(1).standard_normal(50_000) * 3
    g = g0.copy()
    norm = _clip.clip_gradients(g, 1.5, -1.0, threads)
    np.testing.assert_array_equal(g, np.clip(g0, -1.5, 1.5))
    assert norm == pytest.approx(np.linalg.norm(np.clip(g0, -1.5, 1.5)), rel=1e-12)
    g = g0.copy()
    _clip.clip_gradients(g, 1.5, 10.0, threads)
    assert np.linalg.norm(g) == pytest.approx(10.0, rel=1e-6)


def test_clip_norm_in_training_and_compile_errors():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 10)).astype(np.float32), rng.standard_normal((32, 2)).astype(np.float32) * 50
    model = fnn.Sequential([Dense(16, activation="tanh"), Dense(2)], input_dim=10, seed=0)
    model.compile("l2", fnn.optim.SGD(lr=0.0), clip_norm=0.5)
    model.train_on_batch(X, y)
    assert model.grad_norm > 0.5
    assert np.linalg.norm(model.gradients.astype(np.float64)) == pytest.approx(0.5, rel=1e-5)
    model.compile("l2", fnn.optim.SGD(lr=0.0), clip_norm=1e9)
    model.train_on_batch(X, y)
    assert np.linalg.norm(model.gradients.astype(np.float64)) == pytest.approx(model.grad_norm, rel=1e-5)
    for kw, exc in (({"clip_norm": -1}, ValueError), ({"clip_value": 0}, ValueError),
                    ({"clip_norm": "1"}, TypeError), ({"lr_schedule": 0.1}, TypeError)):
        with pytest.raises(exc):
            model.compile("l2", "sgd", **kw)


# ------------------------------------------------------------------------------------------ schedules
CLOSED = [
    (schedules.Constant(), lambda t, b: b),
    (schedules.Step(3, gamma=0.5), lambda t, b: b * 0.5 ** (t // 3)),
    (schedules.Exponential(0.9), lambda t, b: b * 0.9 ** t),
    (schedules.Cosine(total_epochs=8, eta_min=0.01),
     lambda t, b: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * t / 8)) / 2),
    (schedules.LinearWarmup(4), lambda t, b: b * min(t + 1, 4) / 4),
    (schedules.LinearWarmup(2, after=schedules.Exponential(0.5)),
     lambda t, b: b * (t + 1) / 2 if t < 2 else b * 0.5 ** (t - 2)),
]


class _RecordingSGD(fnn.optim.SGD):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def step(self):
        self.seen.append(self.lr)
        super().step()


@pytest.mark.parametrize("sched,formula", CLOSED, ids=lambda v: type(v).__name__)
def test_schedule_per_epoch_matches_closed_form_in_fit(sched, formula):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)), rng.integers(0, 2, 20)
    model = fnn.Sequential([Dense(2)], input_dim=3, seed=0)
    opt = _RecordingSGD(lr=0.2)
    model.compile("cross_entropy", opt, lr_schedule=sched)
    model.fit(X, y, epochs=10, batch_size=10)                # 2 steps per epoch
    want = [formula(t, 0.2) for t in range(10)]
    np.testing.assert_allclose(opt.seen[::2], want, rtol=1e-12)
    np.testing.assert_allclose(opt.seen[1::2], want, rtol=1e-12)
    assert opt.seen[0] == pytest.approx(formula(0, 0.2))


def test_schedule_per_step():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)), rng.integers(0, 2, 20)
    model = fnn.Sequential([Dense(2)], input_dim=3, seed=0)
    opt = _RecordingSGD(lr=0.1)
    model.compile("cross_entropy", opt, lr_schedule=schedules.Cosine(12, per_step=True))
    model.fit(X, y, epochs=3, batch_size=5)                  # 4 steps per epoch, 12 steps
    np.testing.assert_allclose(opt.seen, [0.05 * (1 + math.cos(math.pi * t / 12)) for t in range(12)], rtol=1e-12)


def test_schedules_match_torch_schedulers():
    torch = pytest.importorskip("torch")
    pairs = [(schedules.Step(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (schedules.Exponential(0.8), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
             (schedules.Cosine(7, eta_min=0.001), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.001))]
    for ours, make in pairs:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        sch = make(opt)
        for t in range(7):
            assert ours(t, 0.3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10), (ours, t)
            opt.step()
            sch.step()


def test_schedule_errors_and_configs():
    with pytest.raises(ValueError):
        schedules.Step(0)
    with pytest.raises(TypeError):
        schedules.Cosine("10")
    with pytest.raises(TypeError):
        schedules.LinearWarmup(3, after=0.5)
    with pytest.raises(TypeError):
        fnn.optim.SGD(lr=0.1).lr = "0.2"
    for s, _ in CLOSED:
        assert schedules.from_config(s.get_config()).get_config() == s.get_config()


# ------------------------------------------------------------------------------------------ max-norm
def test_max_norm_constraint_after_each_step():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 10)).astype(np.float32) * 3, rng.integers(0, 4, 64)
    dense = Dense(32, activation="relu", max_norm=0.8, kernel_init="he_normal")
    model = fnn.Sequential([dense, Dense(4)], input_dim=10, seed=0)
    model.compile("cross_entropy", fnn.optim.SGD(lr=1.0))
    w0 = dense.weight
    model.train_on_batch(X, y)
    norms = np.linalg.norm(dense.weight, axis=0)
    assert norms.max() <= 0.8 * (1 + 1e-6) and np.isclose(norms.max(), 0.8, rtol=1e-5)
    scratch = dense.constraint._norms
    model.fit(X, y, epochs=2, batch_size=16)
    assert dense.constraint._norms is scratch and dense.weight is w0     # no allocation, same views
    assert np.linalg.norm(dense.weight, axis=0).max() <= 0.8 * (1 + 1e-6)
    # columns below the limit are left alone
    W = np.array([[3.0, 0.1], [4.0, 0.2]])
    fnn.constraints.MaxNorm(1.0)(W)
    np.testing.assert_allclose(W, [[0.6, 0.1], [0.8, 0.2]])
    assert Dense.from_config(dense.get_config()).constraint.max_value == 0.8
    assert "max_norm" not in Dense(3).get_config()
    with pytest.raises(ValueError):
        Dense(3, max_norm=0)
    with pytest.raises(TypeError):
        Dense(3, max_norm="1")


# ------------------------------------------------------------------------------------------ torch parity
def test_sgd_weight_decay_clipping_and_batchnorm_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    model = fnn.Sequential([Dense(8), BatchNorm(), ReLU(), Dense(3)], input_dim=6, seed=0, dtype="float64")
    model.compile("cross_entropy", fnn.optim.SGD(lr=0.2, momentum=0.9, weight_decay=0.05), clip_norm=0.3)
    d1, bn, _, d2 = model.layers
    bn.weight = rng.uniform(0.5, 1.5, 8)
    bn.bias = rng.standard_normal(8)
    t1, tbn, t2 = torch.nn.Linear(6, 8).double(), torch.nn.BatchNorm1d(8).double(), torch.nn.Linear(8, 3).double()
    with torch.no_grad():
        for ours, theirs in ((d1, t1), (d2, t2)):
            theirs.weight.copy_(torch.from_numpy(ours.weight.T.copy()))
            theirs.bias.copy_(torch.from_numpy(ours.bias))
        tbn.weight.copy_(torch.from_numpy(bn.weight))
        tbn.bias.copy_(torch.from_numpy(bn.bias))
    net = torch.nn.Sequential(t1, tbn, torch.nn.ReLU(), t2)
    decay = [t1.weight, t2.weight]                          # fastnn's default: weights only
    rest = [t1.bias, tbn.weight, tbn.bias, t2.bias]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                          lr=0.2, momentum=0.9)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(tX), ty)
        loss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.3)
        opt.step()
        ours_loss = model.train_on_batch(X, y)
        assert ours_loss == pytest.approx(loss.item(), rel=1e-10)
        assert model.grad_norm == pytest.approx(tnorm.item(), rel=1e-10)
    for ours, theirs in ((d1, t1), (d2, t2)):
        np.testing.assert_allclose(ours.weight, theirs.weight.detach().numpy().T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.bias, theirs.bias.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.weight, tbn.weight.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-10)
    net.eval()
    np.testing.assert_allclose(model.predict(X), net(tX).detach().numpy(), rtol=1e-9, atol=1e-12)


def test_adamw_decoupled_decay_excludes_norm_params_unless_asked():
    for decay_bias in (False, True):
        model = fnn.Sequential([Dense(4), BatchNorm()], input_dim=3, seed=0, dtype="float64")
        model.compile("mse", fnn.optim.AdamW(lr=0.1, weight_decay=0.5, decay_bias=decay_bias))
        bn = model.layers[1]
        bn.weight = [2.0, 2.0, 2.0, 2.0]
        w0 = model.layers[0].weight.copy()
        model.gradients[...] = 0.0
        model.optimizer.step()                               # zero gradient: only the decay moves parameters
        np.testing.assert_allclose(model.layers[0].weight, w0 * (1 - 0.1 * 0.5))
        np.testing.assert_allclose(bn.weight, 2.0 * (1 - 0.05) if decay_bias else 2.0)
