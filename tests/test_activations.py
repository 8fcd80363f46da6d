"""The activations of the kind table against torch.nn.functional and at extreme inputs; the kind table itself.

Table-driven over the elementwise kinds of csrc/fnn_kinds.h (the Python mirror ``fastnn._core.kinds.ACT``):
forward and backward against torch (skipped without torch), float32 and float64; no NaN, overflow or FP warning
at |x| up to 1e4 and at the float32 extremes; the layer classes (names, aliases, configs) and the checks that an
unknown kind is an error everywhere it can enter.
"""
import math
import os
import sys
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _reference as ref
from fastnn._core import activations as K
from fastnn._core import kinds
from fastnn._core.kinds import ACT
from fastnn.layers import activations as A

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:  # run from elsewhere than the repository root
    sys.path.insert(0, os.path.dirname(__file__))
    from _gradcheck import assert_grad_close, numeric_grad

# kind -> (alpha, torch.nn.functional call) for every elementwise kind
TORCH = {
    ACT.IDENTITY: (0.0, lambda F, t: t),
    ACT.RELU: (0.0, lambda F, t: F.relu(t)),
    ACT.LEAKY_RELU: (0.1, lambda F, t: F.leaky_relu(t, 0.1)),
    ACT.SIGMOID: (0.0, lambda F, t: F.sigmoid(t)),
    ACT.TANH: (0.0, lambda F, t: F.tanh(t)),
    ACT.GELU: (0.0, lambda F, t: F.gelu(t)),
    ACT.GELU_TANH: (0.0, lambda F, t: F.gelu(t, approximate="tanh")),
    ACT.SILU: (0.0, lambda F, t: F.silu(t)),
    ACT.ELU: (0.7, lambda F, t: F.elu(t, 0.7)),
    ACT.SELU: (0.0, lambda F, t: F.selu(t)),
    ACT.SOFTPLUS: (0.0, lambda F, t: F.softplus(t)),
    ACT.MISH: (0.0, lambda F, t: F.mish(t)),
}
KINDS = sorted(TORCH)
IDS = [k.label for k in KINDS]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _run(kind, Z, alpha, n_threads=1):
    Y = np.full_like(Z, np.nan)
    dZ = np.full_like(Z, np.nan)
    K.activation_forward(kind, Z, Y, alpha, n_threads)
    K.activation_backward(kind, Z, Y, np.ones_like(Z), dZ, alpha, n_threads)
    return Y, dZ


def test_every_elementwise_kind_has_a_row():
    assert set(TORCH) == set(kinds.ACT_ELEMENTWISE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_matches_torch(kind, dtype):
    torch = pytest.importorskip("torch")
    alpha, fn = TORCH[kind]
    rng = np.random.default_rng(int(kind))
    # a spread of scales, the kinks and thresholds (0, 20, 40) and both sides of them
    z = np.concatenate([rng.standard_normal(500) * 3, rng.uniform(-60, 60, 500),
                        [0.0, -0.0, 19.99, 20.01, 40.5, -40.5]])
    Z = z[np.abs(z) > 1e-3].astype(dtype).reshape(1, -1)       # relu's kink: torch and fastnn both take f'(0)=0
    Y, dZ = _run(kind, Z, alpha)
    t = torch.from_numpy(Z.copy()).requires_grad_(True)
    out = fn(torch.nn.functional, t)
    out.backward(torch.ones_like(out))
    tol = TOL[dtype]
    np.testing.assert_allclose(Y, out.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dZ, t.grad.numpy(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_gradcheck_over_a_wide_range(kind):
    """float64 central differences over |z| in [0.05, 25] (the tails, both sides of softplus' threshold 20 and of
    the clamps), away from the kinks: the kernel's backward is the derivative of its forward."""
    alpha = TORCH[kind][0]
    rng = np.random.default_rng(7)
    Z = (rng.choice([-1.0, 1.0], size=(3, 12)) * np.exp(rng.uniform(math.log(0.05), math.log(25.0), (3, 12))))
    Z = np.where(np.abs(np.abs(Z) - 20.0) < 1e-3, 19.5, Z)     # not within eps of softplus' threshold
    R = rng.standard_normal(Z.shape)

    def f(z):
        y = np.empty_like(z)
        K.activation_forward(kind, z, y, alpha)
        return np.sum(R * y)

    Y = np.empty_like(Z)
    K.activation_forward(kind, Z, Y, alpha)
    dZ = np.full_like(Z, np.nan)
    K.activation_backward(kind, Z, Y, R, dZ, alpha)
    assert_grad_close(dZ, numeric_grad(f, Z), rtol=1e-6, atol=1e-7)


EXTREME = [-1e4, -1e3, -745.0, -100.0, -88.0, -40.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 40.0, 88.0, 100.0, 710.0,
           1e3, 1e4]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_extreme_inputs_are_finite_and_match_the_reference(kind, dtype):
    alpha = TORCH[kind][0]
    big = np.finfo(dtype).max / 4
    Z = np.array([EXTREME + [-big, big]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Y, dZ = _run(kind, Z, alpha, n_threads=2)
    assert np.isfinite(Y).all() and np.isfinite(dZ).all(), (Y, dZ)
    Zr = np.array([EXTREME], dtype=dtype)         # the reference (float64 math) at the moderate part
    Yr, dZr = np.empty_like(Zr), np.empty_like(Zr)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ref.activation_forward(kind, Zr, Yr, alpha)
        ref.activation_backward(kind, Zr, Yr, np.ones_like(Zr), dZr, alpha)
    tol = TOL[dtype]
    np.testing.assert_allclose(Y[:, :len(EXTREME)], Yr, rtol=tol, atol=tol)
    np.testing.assert_allclose(dZ[:, :len(EXTREME)], dZr, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_nan_passes_through(kind):
    """A NaN input gives a NaN output (the clamps before exp keep NaN): the NaN guard sees it.  ReLU, whose
    select maps NaN to 0 (as it always did), is the one exception."""
    Z = np.array([[np.nan, 1.0]])
    Y, dZ = _run(kind, Z, TORCH[kind][0])
    if kind != ACT.RELU:
        assert np.isnan(Y[0, 0])
    assert np.isfinite(Y[0, 1])


def test_gelu_and_elu_values():
    """Hand values: gelu(1) = Phi(1), elu(-1) = alpha (e^-1 - 1), selu(1) = scale, softplus(0) = log 2."""
    cases = [(ACT.GELU, 0.0, 1.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))),
             (ACT.ELU, 2.0, -1.0, 2.0 * (math.exp(-1.0) - 1.0)),
             (ACT.SELU, 0.0, 1.0, 1.0507009873554805),
             (ACT.SOFTPLUS, 0.0, 0.0, math.log(2.0)),
             (ACT.SOFTPLUS, 0.0, 25.0, 25.0),
             (ACT.SILU, 0.0, 2.0, 2.0 / (1.0 + math.exp(-2.0))),
             (ACT.MISH, 0.0, 1.0, math.tanh(math.log1p(math.e)))]
    for kind, alpha, x, want in cases:
        Y, _ = _run(kind, np.array([[x]]), alpha)
        assert Y[0, 0] == pytest.approx(want, rel=1e-15), kind.label


# ---------------------------------------------------------------------------------------------- the layers
def test_layer_classes_names_and_aliases():
    assert A.REGISTRY["gelu"] is A.GELU and A.REGISTRY["silu"] is A.SiLU and A.REGISTRY["swish"] is A.SiLU
    assert A.REGISTRY["elu"] is A.ELU and A.REGISTRY["selu"] is A.SELU
    assert A.REGISTRY["softplus"] is A.Softplus and A.REGISTRY["mish"] is A.Mish
    assert fnn.layers.GELU().kind == ACT.GELU and fnn.layers.GELU(approximate="tanh").kind == ACT.GELU_TANH
    assert fnn.layers.ELU().alpha == 1.0 and fnn.layers.ELU(0.5).alpha == 0.5
    assert fnn.layers.Dense(3, activation="swish").activation.kind == ACT.SILU
    # every kind of the table is reachable from a layer
    reach = {cls.kind for cls in A.CLASSES.values()} | {A.GELU(approximate="tanh").kind}
    assert reach == set(ACT)


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="approximate"):
        fnn.layers.GELU(approximate="erf")
    with pytest.raises(TypeError, match="alpha"):
        fnn.layers.ELU(alpha="1")
    with pytest.raises(ValueError, match="unknown activation 'gelu_fast'"):
        fnn.layers.Dense(3, activation="gelu_fast")


def test_gelu_tanh_survives_save_and_load(tmp_path):
    m = fnn.Sequential([fnn.layers.Dense(4, activation=fnn.layers.GELU(approximate="tanh")), fnn.layers.ELU(0.3),
                        fnn.layers.Dense(2)], input_dim=3, seed=0)
    m.save(tmp_path / "m.npz")
    back = fnn.load(tmp_path / "m.npz")
    assert back.layers[0].activation.approximate == "tanh" and back.layers[1].alpha == 0.3
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))


# ---------------------------------------------------------------------------------------------- the table
def test_the_mirror_is_the_c_table():
    """Numbers and names come from C: consecutive from 0, names unique, labels round-trip."""
    for table in (kinds.ACT, kinds.LOSS, kinds.OPT, kinds.PLAN_LAYER, kinds.PLAN_STATUS):
        assert [int(m) for m in table] == list(range(len(table)))
        labels = [m.label for m in table]
        assert len(set(labels)) == len(labels)
        assert all(table.from_label(m.label) is m and m.name == m.label.upper() for m in table)
    assert ACT.IDENTITY == 0       # Dense's "no activation"
    assert kinds.ACT_ELEMENTWISE == set(ACT) - {ACT.SOFTMAX}


def test_unknown_kinds_are_errors():
    with pytest.raises(ValueError, match="unknown ACT kind 99"):
        kinds.check(ACT, 99, "here")
    with pytest.raises(ValueError, match="unknown LOSS name 'hinge'"):
        kinds.LOSS.from_label("hinge")
    Z = np.zeros((2, 2))
    for bad in (-1, len(ACT), 1000):
        with pytest.raises(ValueError, match="activation_forward: unknown ACT kind"):
            K.activation_forward(bad, Z, Z.copy())
        with pytest.raises(ValueError, match="activation_backward: unknown ACT kind"):
            K.activation_backward(bad, Z, Z, Z, Z.copy())
    with pytest.raises(ValueError, match="Bogus"):
        type("Bogus", (A.Activation,), {"kind": len(ACT)})
    with pytest.raises(ValueError, match="taken"):
        type("Relu2", (A.Activation,), {"kind": ACT.RELU})


def test_every_table_row_has_a_layer_class():
    """Each activation row of the kind table has a class (hand-written or made from the row), registered under the
    row's name, so that a new parameterless activation needs only its row and its math in C."""
    from fastnn.layers import activations as A
    assert A._COVERED == set(ACT)
    for kind in ACT:
        if kind in (ACT.GELU_TANH,):
            continue                     # GELU(approximate="tanh") stands for it
        cls = A.REGISTRY[kind.label]
        assert cls.kind == kind and A.CLASSES[cls.__name__] is cls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_class_made_from_a_row_runs_its_kernel(dtype):
    """The class the table would give a row without a hand-written one (here mish's) computes the row's kernel."""
    from fastnn.layers import activations as A
    cls = A._plain_class(ACT.MISH)
    assert cls.__name__ == "Mish" and "mish" in cls.__doc__ and cls.kind == ACT.MISH
    assert A._plain_class(ACT.LEAKY_RELU).__name__ == "LeakyRelu"
    X = np.random.default_rng(0).standard_normal((5, 7)).astype(dtype)
    made, hand = cls(), fnn.layers.Mish()
    for layer in (made, hand):
        layer.build((7,))
        layer.dtype = dtype
    np.testing.assert_array_equal(made.forward(X), hand.forward(X))
    dY = np.ones_like(X)
    np.testing.assert_array_equal(made.backward(dY), hand.backward(dY))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("units", [1, 6, 31, 32])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_bias_and_activation_over_narrow_rows(dtype, units, act):
    """The fused bias + activation pass: rows narrower than 32 values run k rows at a time against a repeated
    bias (csrc/fnn_act.h), wider ones row by row.  Row counts that leave a remainder of the groups, and the bias
    of every column, must come out as Z @ W + b then f, elementwise."""
    rng = np.random.default_rng(units)
    for n in (1, 5, 43, 300):
        model = fnn.Sequential([fnn.layers.Dense(units, activation=act)], input_shape=(3,), seed=0, dtype=dtype)
        layer = model.layers[0]
        layer.params["bias"][...] = rng.standard_normal(units)
        X = rng.standard_normal((n, 3)).astype(dtype)
        Z = X.astype(np.float64) @ layer.params["weight"].astype(np.float64) + layer.params["bias"]
        want = np.empty_like(Z)
        ref.activation_forward(getattr(ACT, act.upper()), Z, want)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(model.predict(X), want, rtol=tol, atol=tol)
