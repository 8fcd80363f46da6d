"""Parity with PyTorch (skipped where torch is not installed), float64 throughout.

A 3-layer MLP is built in fastnn; torch.nn.Linear layers get the same weights (torch's weight is fastnn's
weight transposed).  Then: the forward outputs agree; for every loss the loss value and the gradient of every
parameter agree; and 1 and 3 steps of every optimizer (each step on a different batch) leave the same
parameters and give the same losses as torch.optim.

Weight decay: fastnn decays weights only by default; ``decay_bias=True`` decays every parameter, as torch does
when given ``model.parameters()``.  Both are checked: decay_bias=True against torch with all parameters, and
fastnn's default against torch with two param groups (weights decayed, biases with weight_decay=0).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)   # tiny tensors; and no second OpenMP pool spinning against fastnn's on few cores

import fastnn as fnn  # noqa: E402  (after pytest.importorskip)
from fastnn.layers import Dense  # noqa: E402  (after pytest.importorskip)

RTOL, ATOL = 1e-10, 1e-12
N_IN, N_OUT = 5, 4

TORCH_ACT = {
    None: lambda t: t,
    "identity": lambda t: t,
    "relu": torch.relu,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda t: torch.softmax(t, dim=-1),
}


class TorchMLP(torch.nn.Module):
    def __init__(self, fnn_model, acts):
        super().__init__()
        dense = [layer for layer in fnn_model.layers if isinstance(layer, Dense)]
        self.linears = torch.nn.ModuleList()
        for layer in dense:
            n_in, n_out = layer.weight.shape
            lin = torch.nn.Linear(n_in, n_out, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer.weight.T)))
                lin.bias.copy_(torch.from_numpy(layer.bias.copy()))
            self.linears.append(lin)
        self.acts = [TORCH_ACT[a] for a in acts]

    def forward(self, x, logits=False):
        last = len(self.linears) - 1
        for i, (lin, act) in enumerate(zip(self.linears, self.acts)):
            x = lin(x)
            if not (logits and i == last):
                x = act(x)
        return x

    def weights(self):
        return [lin.weight for lin in self.linears]

    def biases(self):
        return [lin.bias for lin in self.linears]


def make_pair(acts=("relu", "tanh", None), seed=0):
    hidden = (8, 6)
    layers = [Dense(h, activation=a) for h, a in zip(hidden, acts[:2])] + [Dense(N_OUT, activation=acts[2])]
    model = fnn.Sequential(layers, input_dim=N_IN, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    for layer in model.layers:
        layer.bias = rng.normal(scale=0.3, size=layer.bias.shape)     # non-zero biases
    return model, TorchMLP(model, acts)


def assert_same_params(model, tmodel, rtol=RTOL, atol=ATOL):
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    for i, (layer, lin) in enumerate(zip(dense, tmodel.linears)):
        np.testing.assert_allclose(layer.weight, lin.weight.detach().numpy().T, rtol=rtol, atol=atol,
                                   err_msg=f"layer {i} weight")
        np.testing.assert_allclose(layer.bias, lin.bias.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"layer {i} bias")


# ------------------------------------------------------------------------------------------------ forward
FORWARD = [
    ("relu", "tanh", None),
    ("sigmoid", "leaky_relu", "identity"),
    ("tanh", "relu", "softmax"),
    ("leaky_relu", "sigmoid", "sigmoid"),
    ("softmax", "tanh", "relu"),
]


@pytest.mark.parametrize("acts", FORWARD, ids=["-".join(map(str, a)) for a in FORWARD])
def test_forward_matches_torch(acts):
    model, tmodel = make_pair(acts)
    X = np.random.default_rng(1).normal(size=(11, N_IN))
    want = tmodel(torch.from_numpy(X)).detach().numpy()
    got = model.predict(X)
    assert got.shape == want.shape == (11, N_OUT)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------- gradients
def _targets(kind, rng, n):
    if kind == "labels":
        return rng.integers(0, N_OUT, n)
    if kind == "probabilities":
        return rng.dirichlet(np.ones(N_OUT), size=n)
    if kind == "binary":
        return (rng.uniform(size=(n, N_OUT)) > 0.5).astype(float)
    if kind == "soft":
        return rng.uniform(size=(n, N_OUT))
    if kind == "regression":
        return rng.normal(size=(n, N_OUT))
    raise ValueError(kind)


LOSSES = [  # (fastnn loss, output activation, targets, torch loss on the output (logits when fused))
    ("cross_entropy", None, "labels", lambda o, t: F.cross_entropy(o, t)),
    ("cross_entropy", "softmax", "labels", lambda o, t: F.cross_entropy(o, t)),
    ("cross_entropy", None, "probabilities", lambda o, t: F.cross_entropy(o, t)),
    ("cross_entropy", "softmax", "probabilities", lambda o, t: F.cross_entropy(o, t)),
    ("binary_cross_entropy", None, "binary", lambda o, t: F.binary_cross_entropy_with_logits(o, t)),
    ("binary_cross_entropy", "sigmoid", "soft", lambda o, t: F.binary_cross_entropy_with_logits(o, t)),
    ("mse", None, "regression", lambda o, t: torch.nn.MSELoss()(o, t)),
    ("l2", None, "regression", lambda o, t: torch.nn.MSELoss(reduction="sum")(o, t)),
    ("mae", None, "regression", lambda o, t: torch.nn.L1Loss()(o, t)),
    ("mse", "sigmoid", "soft", lambda o, t: torch.nn.MSELoss()(torch.sigmoid(o), t)),
]
LOSS_IDS = [f"{a}-{b}-{c}" for a, b, c, _ in LOSSES]


def _torch_target(t):
    return torch.from_numpy(t) if t.dtype.kind == "f" else torch.from_numpy(t.astype(np.int64))


def _torch_loss(tmodel, torch_loss, X, t):
    return torch_loss(tmodel(torch.from_numpy(X), logits=True), _torch_target(t))


@pytest.mark.parametrize("n", [1, 9])
@pytest.mark.parametrize("loss,out_act,targets,torch_loss", LOSSES, ids=LOSS_IDS)
def test_gradients_match_torch(loss, out_act, targets, torch_loss, n):
    model, tmodel = make_pair(("relu", "tanh", out_act))
    rng = np.random.default_rng(2)
    X, t = rng.normal(size=(n, N_IN)), _targets(targets, rng, n)
    model.compile(loss=loss, optimizer=fnn.optim.SGD(lr=0.0))
    got_loss = model.train_on_batch(X, t)
    tl = _torch_loss(tmodel, torch_loss, X, t)
    tl.backward()
    assert got_loss == pytest.approx(tl.item(), rel=RTOL, abs=ATOL)
    assert model.evaluate(X, t)["loss"] == pytest.approx(tl.item(), rel=RTOL, abs=ATOL)
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    for i, (layer, lin) in enumerate(zip(dense, tmodel.linears)):
        assert np.any(layer.weight_grad != 0)
        np.testing.assert_allclose(layer.weight_grad, lin.weight.grad.numpy().T, rtol=1e-9, atol=ATOL,
                                   err_msg=f"layer {i} weight gradient")
        np.testing.assert_allclose(layer.bias_grad, lin.bias.grad.numpy(), rtol=1e-9, atol=ATOL,
                                   err_msg=f"layer {i} bias gradient")


# --------------------------------------------------------------------------------------------- optimizers
O, TO = fnn.optim, torch.optim
OPTIMIZERS = [  # (id, fastnn optimizer, torch optimizer on params)
    ("sgd", lambda: O.SGD(lr=0.1), lambda p: TO.SGD(p, lr=0.1)),
    ("sgd_defaults", lambda: O.SGD(), lambda p: TO.SGD(p, lr=1e-3)),
    ("sgd_momentum", lambda: O.SGD(lr=0.1, momentum=0.9), lambda p: TO.SGD(p, lr=0.1, momentum=0.9)),
    ("sgd_dampening", lambda: O.SGD(lr=0.1, momentum=0.8, dampening=0.3),
     lambda p: TO.SGD(p, lr=0.1, momentum=0.8, dampening=0.3)),
    ("sgd_nesterov", lambda: O.SGD(lr=0.1, momentum=0.9, nesterov=True),
     lambda p: TO.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", lambda: O.SGD(lr=0.1, weight_decay=0.05, decay_bias=True),
     lambda p: TO.SGD(p, lr=0.1, weight_decay=0.05)),
    ("sgd_nesterov_weight_decay", lambda: O.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05,
                                                decay_bias=True),
     lambda p: TO.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("adagrad", lambda: O.Adagrad(lr=0.1), lambda p: TO.Adagrad(p, lr=0.1)),
    ("adagrad_all", lambda: O.Adagrad(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.03,
                                      eps=1e-6, decay_bias=True),
     lambda p: TO.Adagrad(p, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.03, eps=1e-6)),
    ("rmsprop", lambda: O.RMSprop(lr=0.01), lambda p: TO.RMSprop(p, lr=0.01)),
    ("rmsprop_centered_momentum", lambda: O.RMSprop(lr=0.01, centered=True, momentum=0.9),
     lambda p: TO.RMSprop(p, lr=0.01, centered=True, momentum=0.9)),
    ("rmsprop_all", lambda: O.RMSprop(lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.5,
                                      weight_decay=0.02, decay_bias=True),
     lambda p: TO.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.5, weight_decay=0.02)),
    ("adam", lambda: O.Adam(lr=0.01), lambda p: TO.Adam(p, lr=0.01)),
    ("adam_defaults", lambda: O.Adam(), lambda p: TO.Adam(p)),
    ("adam_betas_wd", lambda: O.Adam(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05, decay_bias=True),
     lambda p: TO.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    ("adam_amsgrad", lambda: O.Adam(lr=0.01, amsgrad=True), lambda p: TO.Adam(p, lr=0.01, amsgrad=True)),
    ("adamw", lambda: O.AdamW(lr=0.01, weight_decay=0.1, decay_bias=True),
     lambda p: TO.AdamW(p, lr=0.01, weight_decay=0.1)),
    ("adamw_defaults", lambda: O.AdamW(decay_bias=True), lambda p: TO.AdamW(p)),
    ("adamw_amsgrad", lambda: O.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True, decay_bias=True),
     lambda p: TO.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True)),
]


def _run_both(model, tmodel, fnn_opt, torch_opt, loss, torch_loss, steps, targets):
    model.compile(loss=loss, optimizer=fnn_opt)
    rng = np.random.default_rng(3)
    for step in range(steps):
        n = 7 + step                      # a different batch (and batch size) every step
        X, t = rng.normal(size=(n, N_IN)), _targets(targets, rng, n)
        got = model.train_on_batch(X, t)
        torch_opt.zero_grad()
        tl = _torch_loss(tmodel, torch_loss, X, t)
        tl.backward()
        torch_opt.step()
        assert got == pytest.approx(tl.item(), rel=RTOL, abs=ATOL), f"loss at step {step + 1}"
    assert model.optimizer.step_count == steps


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name,make_fnn,make_torch", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_steps_match_torch(name, make_fnn, make_torch, steps):
    model, tmodel = make_pair(("relu", "tanh", None))
    start = model.parameters.copy()
    _run_both(model, tmodel, make_fnn(), make_torch(tmodel.parameters()), "cross_entropy",
              lambda o, t: F.cross_entropy(o, t), steps, "labels")
    assert not np.array_equal(model.parameters, start)
    assert_same_params(model, tmodel)


@pytest.mark.parametrize("loss,torch_loss,targets", [
    ("mse", lambda o, t: F.mse_loss(o, t), "regression"),
    ("binary_cross_entropy", lambda o, t: F.binary_cross_entropy_with_logits(o, t), "binary"),
])
def test_adam_steps_match_torch_on_other_losses(loss, torch_loss, targets):
    model, tmodel = make_pair(("tanh", "sigmoid", None))
    _run_both(model, tmodel, O.Adam(lr=0.01, amsgrad=True), TO.Adam(tmodel.parameters(), lr=0.01, amsgrad=True),
              loss, torch_loss, 3, targets)
    assert_same_params(model, tmodel)


WEIGHT_DECAY = [  # fastnn's default (biases not decayed) against torch with param groups
    ("sgd", lambda: O.SGD(lr=0.1, weight_decay=0.05), lambda g: TO.SGD(g, lr=0.1)),
    ("sgd_momentum", lambda: O.SGD(lr=0.1, momentum=0.9, weight_decay=0.05),
     lambda g: TO.SGD(g, lr=0.1, momentum=0.9)),
    ("adagrad", lambda: O.Adagrad(lr=0.1, weight_decay=0.05), lambda g: TO.Adagrad(g, lr=0.1)),
    ("rmsprop", lambda: O.RMSprop(lr=0.01, centered=True, momentum=0.5, weight_decay=0.05),
     lambda g: TO.RMSprop(g, lr=0.01, centered=True, momentum=0.5)),
    ("adam", lambda: O.Adam(lr=0.01, weight_decay=0.05), lambda g: TO.Adam(g, lr=0.01)),
    ("adam_amsgrad", lambda: O.Adam(lr=0.01, weight_decay=0.05, amsgrad=True),
     lambda g: TO.Adam(g, lr=0.01, amsgrad=True)),
    ("adamw", lambda: O.AdamW(lr=0.01, weight_decay=0.05), lambda g: TO.AdamW(g, lr=0.01)),
]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name,make_fnn,make_torch", WEIGHT_DECAY, ids=[w[0] for w in WEIGHT_DECAY])
def test_default_weight_decay_spares_biases_like_torch_param_groups(name, make_fnn, make_torch, steps):
    model, tmodel = make_pair(("relu", "tanh", None))
    opt = make_fnn()
    assert not opt.decay_bias and opt.weight_decay == 0.05
    groups = [{"params": tmodel.weights(), "weight_decay": 0.05}, {"params": tmodel.biases(), "weight_decay": 0.0}]
    _run_both(model, tmodel, opt, make_torch(groups), "cross_entropy", lambda o, t: F.cross_entropy(o, t), steps,
              "labels")
    assert_same_params(model, tmodel)


def test_decay_bias_makes_a_difference():
    # the param-group test above must be able to fail: with decay on the biases too, the biases differ
    a, _ = make_pair()
    b, _ = make_pair()
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(8, N_IN)), rng.integers(0, N_OUT, 8)
    a.compile("cross_entropy", O.SGD(lr=0.1, weight_decay=0.5))
    b.compile("cross_entropy", O.SGD(lr=0.1, weight_decay=0.5, decay_bias=True))
    a.train_on_batch(X, y)
    b.train_on_batch(X, y)
    np.testing.assert_array_equal(a.layers[0].weight, b.layers[0].weight)
    assert not np.allclose(a.layers[0].bias, b.layers[0].bias)
