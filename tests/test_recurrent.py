"""Recurrent layers (SimpleRNN, LSTM, GRU, Bidirectional) and their compiled kernel (fastnn._core.rnn).

Float64 parity with torch.nn.RNN/LSTM/GRU (outputs, final states, gradients of every parameter, of the input and
of the initial states) for stacks of 1-3 layers, bidirectional, masked sequences against torch on each sequence's
real steps; the numpy oracle (fastnn._reference.rnn_layer_forward / _backward, no torch needed); central
differences; float32 against float64; edge cases; errors; the vectorized float32 sigmoid; flush-to-zero. Layers
are driven directly (built and bound to their own arrays) unless a model is the subject.
"""
import time

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _reference as ref
from fastnn._core import rnn as _k
from fastnn.layers import GRU, LSTM, Bidirectional, SimpleRNN
from tests._gradcheck import assert_grad_close, numeric_grad

CELLS = [  # (name, constructor, torch class name, torch kwargs)
    ("rnn_tanh", lambda u, **kw: SimpleRNN(u, **kw), "RNN", {}),
    ("rnn_relu", lambda u, **kw: SimpleRNN(u, activation="relu", **kw), "RNN", {"nonlinearity": "relu"}),
    ("lstm", lambda u, **kw: LSTM(u, **kw), "LSTM", {}),
    ("gru", lambda u, **kw: GRU(u, **kw), "GRU", {}),
]
CELL_IDS = [c[0] for c in CELLS]


def bind(layer, shape, dtype=np.float64, seed=0, scale=0.5):
    """Build `layer` for feature shape `shape` and bind it to fresh parameter / gradient arrays."""
    layer.build(shape)
    rng = np.random.default_rng(seed)
    params = {s.name: rng.uniform(-scale, scale, s.shape).astype(dtype) for s in layer.param_specs()}
    grads = {s.name: np.full(s.shape, np.nan, dtype) for s in layer.param_specs()}
    layer._bind(params, grads, np.dtype(dtype))
    return layer


def torch_cell(torch, tname, tkw, n_in, units, layers=1, bidirectional=False):
    return getattr(torch.nn, tname)(n_in, units, num_layers=layers, bidirectional=bidirectional, batch_first=True,
                                    **tkw).double()


def load_torch(torch, tm, layer, suffix):
    with torch.no_grad():
        for ours, theirs in (("weight_ih", "weight_ih"), ("weight_hh", "weight_hh"), ("bias_ih", "bias_ih"),
                             ("bias_hh", "bias_hh")):
            v = layer.params[ours]
            getattr(tm, theirs + suffix).copy_(torch.tensor(v.T if v.ndim == 2 else v))


def torch_grad(tm, name, suffix):
    g = getattr(tm, name + suffix).grad.numpy()
    return g.T if g.ndim == 2 else g


# ---------------------------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_stack_matches_torch(cell, n_layers, with_state):
    torch = pytest.importorskip("torch")
    _, make, tname, tkw = cell
    N, T, F, U = 3, 6, 4, 5
    lstm = tname == "LSTM"
    layers = [bind(make(U, return_sequences=True, return_state=True), (T, F if k == 0 else U), seed=k)
              for k in range(n_layers)]
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N, T, F))
    n_states = 2 if lstm else 1
    init = [[rng.normal(size=(N, U)) for _ in range(n_states)] for _ in range(n_layers)] if with_state else None
    if with_state:
        for layer in layers:
            layer.n_inputs = 1 + n_states
            layer.input_shape = [layer.input_shape] + [(U,)] * n_states
    h, outs = X, []
    for k, layer in enumerate(layers):
        res = layer.forward([h] + init[k] if with_state else h)
        outs.append([r.copy() for r in res])
        h = res[0]
    dY = rng.normal(size=h.shape)
    dstates = [[rng.normal(size=(N, U)) for _ in range(n_states)] for _ in range(n_layers)]
    # backward through the stack
    g = dY
    grads_in = [None] * n_layers
    for k in reversed(range(n_layers)):
        res = layers[k].backward([g] + dstates[k])
        grads_in[k] = res
        g = res[0] if with_state else res

    tm = torch_cell(torch, tname, tkw, F, U, n_layers)
    for k, layer in enumerate(layers):
        load_torch(torch, tm, layer, f"_l{k}")
    xt = torch.tensor(X, requires_grad=True)
    args = [xt]
    if with_state:
        h0 = torch.tensor(np.stack([init[k][0] for k in range(n_layers)]), requires_grad=True)
        if lstm:
            c0 = torch.tensor(np.stack([init[k][1] for k in range(n_layers)]), requires_grad=True)
            args.append((h0, c0))
        else:
            args.append(h0)
    y, st = tm(*args)
    hn, cn = st if lstm else (st, None)
    np.testing.assert_allclose(outs[-1][0], y.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.stack([o[1] for o in outs]), hn.detach().numpy(), rtol=1e-10, atol=1e-12)
    if lstm:
        np.testing.assert_allclose(np.stack([o[2] for o in outs]), cn.detach().numpy(), rtol=1e-10, atol=1e-12)
    loss = (y * torch.tensor(dY)).sum() + (hn * torch.tensor(np.stack([d[0] for d in dstates]))).sum()
    if lstm:
        loss = loss + (cn * torch.tensor(np.stack([d[1] for d in dstates]))).sum()
    loss.backward()
    dX = grads_in[0][0] if with_state else grads_in[0]
    np.testing.assert_allclose(dX, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for k, layer in enumerate(layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            np.testing.assert_allclose(layer.grads[name], torch_grad(tm, name, f"_l{k}"), rtol=1e-9, atol=1e-11,
                                       err_msg=f"layer {k} {name}")
    if with_state:
        np.testing.assert_allclose(np.stack([grads_in[k][1] for k in range(n_layers)]), h0.grad.numpy(),
                                   rtol=1e-9, atol=1e-11)
        if lstm:
            np.testing.assert_allclose(np.stack([grads_in[k][2] for k in range(n_layers)]), c0.grad.numpy(),
                                       rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("n_layers", [1, 2])
def test_bidirectional_matches_torch(cell, n_layers):
    torch = pytest.importorskip("torch")
    _, make, tname, tkw = cell
    N, T, F, U = 2, 5, 3, 4
    layers = []
    for k in range(n_layers):
        bi = Bidirectional(make(U, return_sequences=True))
        layers.append(bind(bi, (T, F if k == 0 else 2 * U), seed=k))
    X = np.random.default_rng(3).normal(size=(N, T, F))
    h = X
    for layer in layers:
        h = layer.forward(h).copy()
    dY = np.random.default_rng(4).normal(size=h.shape)
    g = dY
    for layer in reversed(layers):
        g = layer.backward(g)
    tm = torch_cell(torch, tname, tkw, F, U, n_layers, bidirectional=True)
    for k, bi in enumerate(layers):
        load_torch(torch, tm, bi.layer, f"_l{k}")
        load_torch(torch, tm, bi.backward_layer, f"_l{k}_reverse")
    xt = torch.tensor(X, requires_grad=True)
    y = tm(xt)[0]
    np.testing.assert_allclose(h, y.detach().numpy(), rtol=1e-10, atol=1e-12)
    (y * torch.tensor(dY)).sum().backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for k, bi in enumerate(layers):
        for inner, suffix in ((bi.layer, f"_l{k}"), (bi.backward_layer, f"_l{k}_reverse")):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                np.testing.assert_allclose(inner.grads[name], torch_grad(tm, name, suffix), rtol=1e-9, atol=1e-11)


def _masked_case(kind):
    """A (5, 7) mask: right-padded ("prefix", the sorted fast path, lengths out of order and one of 0), holes
    ("holes", the general path)."""
    if kind == "prefix":
        lengths = [3, 7, 0, 5, 3]
        return np.array([[t < L for t in range(7)] for L in lengths])
    rng = np.random.default_rng(11)
    m = rng.random((5, 7)) < 0.6
    m[:, 0] = False
    m[1, :] = True
    return m


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("kind", ["prefix", "holes"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_masked_matches_torch_on_real_steps(cell, kind, go_backwards):
    """A masked step leaves the state unchanged: each row equals torch run on its real steps alone (reversed for
    go_backwards); outputs at masked steps carry the state; gradients summed over the rows."""
    torch = pytest.importorskip("torch")
    _, make, tname, tkw = cell
    lstm = tname == "LSTM"
    N, T, F, U = 5, 7, 3, 4
    mask = _masked_case(kind)
    layer = bind(make(U, return_sequences=True, return_state=True, go_backwards=go_backwards), (None, F))
    rng = np.random.default_rng(5)
    X = rng.normal(size=(N, T, F))
    res = [r.copy() for r in layer.forward(X, mask=mask)]
    dY = rng.normal(size=(N, T, U))
    dh = rng.normal(size=(N, U))
    dc = rng.normal(size=(N, U))
    dX = layer.backward([dY, dh] + ([dc] if lstm else [])).copy()
    tm = torch_cell(torch, tname, tkw, F, U)
    load_torch(torch, tm, layer, "_l0")
    tX = np.zeros_like(X)
    for i in range(N):
        steps = np.flatnonzero(mask[i])
        order = steps[::-1] if go_backwards else steps
        pos = T - 1 - order if go_backwards else order        # output position of each real step
        h_prev = np.zeros(U)
        if len(order):
            xt = torch.tensor(X[i:i + 1, order], requires_grad=True)
            y, st = tm(xt)
            hn = st[0] if lstm else st
            np.testing.assert_allclose(res[0][i, pos], y[0].detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(res[1][i], hn[0, 0].detach().numpy(), rtol=1e-10, atol=1e-12)
            loss = (y[0] * torch.tensor(dY[i, pos])).sum() + (hn[0, 0] * torch.tensor(dh[i])).sum()
            # outputs at masked positions carry the state reached before them: their gradient flows there too
            ys = y[0]
            carried = 0
            for p in range(T):
                if p in set(pos.tolist()):
                    continue
                k = int(np.sum(pos < p))          # real steps processed before position p
                if k > 0:
                    carried = carried + (ys[k - 1] * torch.tensor(dY[i, p])).sum()
            loss = loss + carried
            if lstm:
                loss = loss + (st[1][0, 0] * torch.tensor(dc[i])).sum()
            loss.backward()
            tX[i, order] = xt.grad.numpy()[0]
        else:
            np.testing.assert_array_equal(res[1][i], h_prev)
        np.testing.assert_allclose(dX[i], tX[i], rtol=1e-9, atol=1e-11)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(layer.grads[name], torch_grad(tm, name, "_l0"), rtol=1e-9, atol=1e-11,
                                   err_msg=name)


def test_prefix_mask_runs_sorted_fast_path_and_general_path_agrees():
    """A right-padded mask takes the sorted path (mode 2); the same mask with a hole elsewhere the blend path:
    on the rows they share, both give the same values."""
    mask = _masked_case("prefix")
    n, T = mask.shape
    perm, n_active, scratch = np.empty(n, np.intc), np.empty(T, np.intc), np.empty(n + T + 1, np.intc)
    assert _k.mask_plan(mask.astype(np.uint8), False, perm, n_active, scratch) == 2
    lengths = mask.sum(1)
    assert list(lengths[perm]) == sorted(lengths, reverse=True)
    assert list(n_active) == [int((lengths > s).sum()) for s in range(T)]
    assert _k.mask_plan(mask.astype(np.uint8), True, perm, n_active, scratch) == 1
    assert _k.mask_plan(None, False, perm, n_active, scratch) == 0
    m2 = mask.copy()
    m2[2, 4] = True          # row 2 (length 0) gets one real step at t = 4: not a prefix
    X = np.random.default_rng(0).normal(size=(n, T, 3))
    a = bind(LSTM(4, return_sequences=True), (None, 3))
    b = bind(LSTM(4, return_sequences=True), (None, 3))
    ya = a.forward(X, mask=mask).copy()
    yb = b.forward(X, mask=m2).copy()
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(ya[keep], yb[keep], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------- numpy oracle
ORACLE_CELL = {"rnn_tanh": ("rnn", "tanh"), "rnn_relu": ("rnn", "relu"), "lstm": ("lstm", "tanh"),
               "gru": ("gru", "tanh")}


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("setting", ["plain", "initial_state", "masked_holes", "go_backwards",
                                     "masked_backwards_state"])
def test_matches_numpy_oracle(cell, setting):
    """Float64 outputs, final states and every gradient (input, both weights, both biases, initial states) equal
    fastnn._reference.rnn_layer_forward / rnn_layer_backward (no torch needed)."""
    cid, make, tname, _ = cell
    ocell, act = ORACLE_CELL[cid]
    lstm = tname == "LSTM"
    n_states = 2 if lstm else 1
    N, T, F, U = 5, 7, 3, 4
    with_state = setting in ("initial_state", "masked_backwards_state")
    go_backwards = setting in ("go_backwards", "masked_backwards_state")
    mask = _masked_case("holes") if setting.startswith("masked") else None
    layer = bind(make(U, return_sequences=True, return_state=True, go_backwards=go_backwards), (T, F), seed=3)
    if with_state:
        layer.n_inputs = 1 + n_states
        layer.input_shape = [layer.input_shape] + [(U,)] * n_states
    rng = np.random.default_rng(4)
    X = rng.normal(size=(N, T, F))
    init = [rng.normal(size=(N, U)) for _ in range(n_states)] if with_state else []
    dY = rng.normal(size=(N, T, U))
    dstates = [rng.normal(size=(N, U)) for _ in range(n_states)]
    res = [r.copy() for r in layer.forward([X] + init if with_state else X, mask=mask)]
    back = layer.backward([dY] + dstates)
    back = [b.copy() for b in back] if with_state else [back.copy()]

    p = {k: layer.params[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    args = (ocell, X, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    kw = dict(h0=init[0] if with_state else None, c0=init[1] if (with_state and lstm) else None, mask=mask,
              go_backwards=go_backwards, activation=act)
    Y, h, c = ref.rnn_layer_forward(*args, **kw)
    dX, dW_ih, dW_hh, db_ih, db_hh, dh0, dc0 = ref.rnn_layer_backward(
        *args, dY=dY, dh_last=dstates[0], dc_last=dstates[1] if lstm else None, **kw)

    def close(got, want, what):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{cid} {setting}: {what}")

    close(res[0], Y, "output")
    close(res[1], h, "h_last")
    if lstm:
        close(res[2], c, "c_last")
    close(back[0], dX, "dX")
    for name, want in (("weight_ih", dW_ih), ("weight_hh", dW_hh), ("bias_ih", db_ih), ("bias_hh", db_hh)):
        close(layer.grads[name], want, name)
    if with_state:
        close(back[1], dh0, "dh0")
        if lstm:
            close(back[2], dc0, "dc0")
    if mask is not None:      # the oracle itself: fully masked time steps get no input gradient
        assert not np.any(dX[~mask])


# ---------------------------------------------------------------------------------------------- numeric checks
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("setting", ["seq", "last_reverse_masked"])
def test_finite_differences(cell, setting):
    _, make, tname, _ = cell
    seq = setting == "seq"
    layer = bind(make(3, return_sequences=seq, go_backwards=not seq), (4, 2), seed=1)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2, 4, 2))
    mask = None if seq else np.array([[True, True, False, True], [True, True, True, False]])
    dY = rng.normal(size=(2, 4, 3) if seq else (2, 3))

    def loss(_=None):
        return float((layer.forward(X, mask=mask) * dY).sum())

    loss()
    dX = layer.backward(dY).copy()
    grads = {k: v.copy() for k, v in layer.grads.items()}
    assert_grad_close(dX, numeric_grad(loss, X), rtol=1e-5, atol=1e-8)
    for name, p in layer.params.items():
        assert_grad_close(grads[name], numeric_grad(loss, p), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_float32_matches_float64(cell):
    _, make, _, _ = cell
    l64 = bind(make(16, return_sequences=True), (12, 8), np.float64, seed=3)
    l32 = bind(make(16, return_sequences=True), (12, 8), np.float32, seed=3)
    X = np.random.default_rng(1).normal(size=(5, 12, 8))
    mask = np.arange(12)[None, :] < np.array([12, 3, 7, 12, 1])[:, None]
    y64 = l64.forward(X, mask=mask)
    y32 = l32.forward(X.astype(np.float32), mask=mask)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=2e-5)
    dY = np.random.default_rng(2).normal(size=y64.shape)
    d64 = l64.backward(dY)
    d32 = l32.backward(dY.astype(np.float32))
    np.testing.assert_allclose(d32, d64, rtol=1e-3, atol=1e-4)
    for name in l64.grads:
        np.testing.assert_allclose(l32.grads[name], l64.grads[name], rtol=1e-3, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("n, steps, n_in, units", [(11, 9, 5, 37), (40, 6, 70, 45), (300, 3, 9, 5), (1, 7, 3, 33),
                                                   (20, 30, 4, 9)],
                         ids=["tails", "blocks", "wide-batch", "batch1", "long"])
def test_float32_packed_step_kernel_matches_blas(cell, n, steps, n_in, units):
    """The float32 per-step products run in the packed micro-kernels (AVX-512, AVX2+FMA) where the CPU has them:
    every kernel the CPU can run agrees with the BLAS path, with a prefix mask (the active rows shrink; one row
    running most steps) and general ones (a suffix, random holes: blended); at 1 thread (the input projection also
    per step and row block, from gathered rows of X, and the weight gradients per group of steps) and at 2 (the
    same, the rows split between the threads, the weight gradients summed per thread).  Shapes: partial row tiles
    and panels (units 37: G*37 is not a multiple of the 32-float panel); two row blocks and K-chunks (40 rows,
    n_in 70, 4 * 45 gates); 300 rows, more than a group of the weight gradients holds; batch 1; 30 steps of few
    rows (groups end on their step count)."""
    _, make, _, _ = cell
    best = _k.set_packed_isa(2)
    threads = fnn.get_num_threads()
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, steps, n_in)).astype(np.float32)
    dY = rng.normal(size=(n, steps, units)).astype(np.float32)
    lengths = rng.integers(0, steps + 1, n)
    lengths[0] = steps
    masks = [None, np.arange(steps)[None, :] < lengths[:, None]]
    masks.append(masks[1][:, ::-1].copy())
    masks.append(rng.random((n, steps)) < 0.7)
    # one row runs every step, the others only the first: few rows per step (the weight gradients' groups of
    # steps then end on their step count, not their row count)
    masks.append(np.arange(steps)[None, :] < np.where(np.arange(n) == 0, steps, 1)[:, None])
    try:
        for mask, nt in [(m, nt) for m in masks for nt in (1, 2)]:
            fnn.set_num_threads(nt)
            res = {}
            for isa in range(best + 1):
                assert _k.set_packed_isa(isa) == isa
                layer = bind(make(units, return_sequences=True), (steps, n_in), np.float32, seed=3)
                y = layer.forward(X, mask=mask).copy()
                dX = layer.backward(dY)
                res[isa] = [y, dX.copy()] + [layer.grads[k].copy() for k in sorted(layer.grads)]
            for isa in range(1, best + 1):
                for a, b in zip(res[isa], res[0]):
                    # float32 sums in another order: an element that cancels carries the rounding of its terms,
                    # which may be as large as the array's largest (measured: 2.7e-5 at an element of 0.033 of
                    # rnn_relu's "blocks" case, the AVX2 kernel against OpenBLAS's Haswell one)
                    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(b).max())))
    finally:
        _k.set_packed_isa(2)
        fnn.set_num_threads(threads)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_one_sequence_equals_its_row_in_a_batch(cell):
    _, make, _, _ = cell
    layer = bind(make(6, return_sequences=True), (None, 3))
    X = np.random.default_rng(0).normal(size=(4, 5, 3))
    full = layer.forward(X).copy()
    one = layer.forward(X[2:3]).copy()
    np.testing.assert_allclose(one[0], full[2], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_empty_batch_and_zero_steps(cell):
    _, make, tname, _ = cell
    layer = bind(make(4, return_state=True), (None, 3))
    res = layer.forward(np.zeros((0, 5, 3)))
    assert res[0].shape == (0, 4)
    dX = layer.backward([np.zeros((0, 4))] + [np.zeros((0, 4))] * (len(res) - 1))
    assert dX.shape == (0, 5, 3)
    for g in layer.grads.values():
        np.testing.assert_array_equal(g, 0)
    # no time steps: the state is the initial one (zeros), nothing flows to the weights
    res = layer.forward(np.zeros((2, 0, 3)))
    np.testing.assert_array_equal(res[1], 0)
    dX = layer.backward([np.ones((2, 4))] + [np.ones((2, 4))] * (len(res) - 1))
    assert dX.shape == (2, 0, 3)
    np.testing.assert_array_equal(layer.grads["weight_hh"], 0)


def test_step_grad_norms():
    layer = bind(SimpleRNN(4, return_sequences=False), (6, 2))
    X = np.random.default_rng(0).normal(size=(3, 6, 2))
    layer.forward(X)
    layer.backward(np.ones((3, 4)))
    assert layer.step_grad_norms is None
    layer.record_step_grad_norms = True
    y = layer.forward(X)
    dY = np.ones((3, 4))
    layer.backward(dY)
    norms = layer.step_grad_norms
    assert norms.shape == (6,)
    assert norms[-1] == pytest.approx(np.linalg.norm(dY))
    assert np.all(norms > 0) and np.all(np.isfinite(norms))
    # the last step's gradient reaching h_{T-2}: dh . (1 - h^2) W_hh^T
    Wt = layer.params["weight_hh"]
    g = (dY * (1 - y ** 2)) @ Wt.T
    assert norms[-2] == pytest.approx(np.linalg.norm(g))


# ---------------------------------------------------------------------------------------------- the kernel's math
def test_vectorized_sigmoid_and_exp_accuracy():
    x = np.concatenate([np.linspace(-87, 88, 200001), np.array([0.0, -0.0, 1e-30, -1e-30])]).astype(np.float32)
    out = np.empty_like(x)
    _k.exp_f32(x, out)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out - exact) / ulp) <= 2.5
    _k.sigmoid_f32(x, out)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out - exact) / ulp) <= 4
    far = np.array([-200.0, -88.0, 100.0, np.inf, -np.inf], np.float32)
    _k.sigmoid_f32(far, out[:5])
    assert np.all(np.abs(out[:3] - np.array([0, 0, 1])) < 2e-38)
    assert out[3] == 1.0 and out[4] < 2e-38
    _k.sigmoid_f32(np.array([np.nan], np.float32), out[:1])
    assert np.isnan(out[0])


@pytest.mark.skipif(not _k.HAVE_FTZ, reason="flush-to-zero is x86 only")
def test_subnormals_flushed_and_not_slow():
    """Values that would be subnormal in float32 are flushed to zero inside the kernel (and only there), so a
    loop that produces them runs about as fast as one on normal values."""
    layer = bind(SimpleRNN(64, activation="relu", return_sequences=True), (40, 64), np.float32)
    layer.params["weight_hh"][...] = np.eye(64, dtype=np.float32) * 0.5
    layer.params["weight_ih"][...] = np.eye(64, dtype=np.float32)
    layer.params["bias_ih"][...] = 0
    layer.params["bias_hh"][...] = 0
    tiny = np.full((16, 40, 64), 1e-39, np.float32)      # subnormal inputs: read as 0 (DAZ)
    y = layer.forward(tiny)
    assert np.all(y == 0)
    small = np.zeros((16, 40, 64), np.float32)
    small[:, 0] = 1e-36                                  # normal, halves each step: subnormal after a few
    y = layer.forward(small)
    assert y[0, 0, 0] == np.float32(1e-36)
    assert y[0, 4, 0] == np.float32(1e-36) / 16          # 6.25e-38: still normal
    assert y[0, 7, 0] == 0                               # 1e-36 / 128 = 7.8e-39 < FLT_MIN: flushed
    assert np.float32(1e-39) * np.float32(1) != 0        # numpy outside the kernel is unaffected
    normal = np.random.default_rng(0).random((16, 40, 64)).astype(np.float32)

    def best(X):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            layer.forward(X)
            layer.backward(np.ones((16, 40, 64), np.float32))
            ts.append(time.perf_counter() - t0)
        return min(ts)

    n_threads = fnn.get_num_threads()
    fnn.set_num_threads(1)          # one thread: a busy machine's scheduling noise stays out of the ratio
    try:
        best(normal)
        assert best(small) < 4 * best(normal) + 1e-3
    finally:
        fnn.set_num_threads(n_threads)


# ---------------------------------------------------------------------------------------------- models, config, errors
@pytest.mark.parametrize("make", [lambda: LSTM(5, go_backwards=True), lambda: GRU(5, return_sequences=True),
                                  lambda: Bidirectional(SimpleRNN(5, activation="relu"), merge_mode="ave"),
                                  lambda: Bidirectional(LSTM(5, return_sequences=True), merge_mode="mul")])
def test_config_round_trip_and_save_load(make, tmp_path):
    L = fnn.layers
    model = fnn.Sequential([make(), L.Flatten(), L.Dense(2)], input_shape=(6, 3), seed=0)
    layer = model.layers[0]
    X = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    path = str(tmp_path / "m.fnn")
    model.save(path)
    loaded = fnn.load(path)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    cfg = layer.get_config()
    again = type(layer).from_config(cfg)
    assert again.get_config() == cfg


def test_model_trains_and_gradients_flow():
    L = fnn.layers
    model = fnn.Sequential([L.GRU(8, return_sequences=True), L.LSTM(8), L.Dense(1)], input_shape=(None, 2), seed=0)
    model.compile(loss="mse", optimizer=fnn.optim.Adam(lr=0.02))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5, 2)).astype(np.float32)
    y = X[:, :, 0].sum(1, keepdims=True)
    first = model.evaluate(X, y)
    model.fit(X, y, epochs=15, batch_size=16, verbose=0)
    last = model.evaluate(X, y)
    first, last = (v["loss"] if isinstance(v, dict) else v for v in (first, last))
    assert last < 0.3 * first


def _bad(fn, exc, *words):
    with pytest.raises(exc) as e:
        fn()
    for w in words:
        assert w in str(e.value), str(e.value)


def test_errors():
    _bad(lambda: LSTM(0), ValueError, "units")
    _bad(lambda: LSTM(2.5), TypeError, "units")
    _bad(lambda: GRU(3, return_sequences=1), TypeError, "return_sequences")
    _bad(lambda: SimpleRNN(3, activation="sigmoid"), ValueError, "activation")
    _bad(lambda: Bidirectional(fnn.layers.Dense(3)), TypeError, "SimpleRNN")
    _bad(lambda: Bidirectional(LSTM(3), merge_mode="max"), ValueError, "merge_mode")
    _bad(lambda: Bidirectional(LSTM(3, return_state=True)), ValueError, "return_state")
    layer = LSTM(4, name="lstm_x")
    _bad(lambda: layer.build((5,)), ValueError, "lstm_x", "(n, steps, features)")
    _bad(lambda: LSTM(4).build((5, 3, 2)), ValueError, "rank 4")
    layer = bind(LSTM(4, name="lstm_y"), (5, 3))
    _bad(lambda: layer.forward(np.zeros((2, 5, 4))), ValueError, "lstm_y", "(n, T, 3)")
    _bad(lambda: layer.forward(np.zeros((2, 3))), ValueError, "(n, T, 3)")
    _bad(lambda: layer.forward(np.zeros((2, 6, 3))), ValueError, "5 time steps")
    _bad(lambda: layer.forward(np.zeros((2, 5, 3), np.float32)), TypeError, "float32", "float64")
    _bad(lambda: layer.forward(np.zeros((2, 5, 3)), mask=np.ones((2, 4), bool)), ValueError, "mask")
    _bad(lambda: layer.forward(np.zeros((2, 5, 3)), mask=np.ones((2, 5), int)), ValueError, "mask")
    _bad(lambda: layer.backward(np.zeros((2, 4))), RuntimeError, "before forward")
    layer.forward(np.zeros((2, 5, 3)))
    _bad(lambda: layer.backward(np.zeros((3, 4))), ValueError, "(2, 4)")
    _bad(lambda: LSTM(3)(fnn.Input((5, 2)), initial_state=[fnn.Input((3,))]), ValueError, "[h0, c0]")
    x = fnn.Input((5, 2))
    _bad(lambda: GRU(3)(x, initial_state=[fnn.Input((4,))]), ValueError, "initial state 0", "(3,)")


# ---------------------------------------------------------------------------------------------- through fnn.Model
from tests._netcheck import check_model_grads  # noqa: E402  (the tests below this line use it)


class _PadMask(fnn.layers.Layer):
    """Test mask producer: a step is real where its first feature is not 0 (padding rows are all zeros)."""
    produces_mask = True

    def forward(self, X, training=False):
        return X

    def backward(self, dY):
        return dY

    def compute_mask(self, X):
        return X[..., 0] != 0


def test_model_with_initial_state_and_return_state(tmp_path):
    """lstm(x, initial_state=[h0, c0]) with return_state inside a graph: gradients reach the layers that made the
    states (finite differences through the model), the unused sequence output gets no gradient, save/load."""
    L = fnn.layers
    x = fnn.Input((5, 3))
    h0 = L.Dense(4, activation="tanh")(L.Flatten()(x))
    c0 = L.Dense(4)(L.Flatten()(x))
    out, h, c = L.LSTM(4, return_sequences=True, return_state=True)(x, initial_state=[h0, c0])
    _, g = L.GRU(3, return_state=True)(out, initial_state=[L.Dense(3)(h)])
    y = L.Dense(2)(L.Concatenate()([g, c]))
    model = fnn.Model(x, y, seed=0, dtype="float64")
    X = np.random.default_rng(0).normal(size=(3, 5, 3))
    check_model_grads(model, X)
    path = str(tmp_path / "m.fnn")
    model.save(path)
    np.testing.assert_array_equal(fnn.load(path).predict(X), model.predict(X))


def test_model_bidirectional_two_outputs():
    L = fnn.layers
    x = fnn.Input((4, 2))
    f, b = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=None)(x)
    y = L.Dense(2)(L.Flatten()(L.Add()([f, b])))
    model = fnn.Model(x, y, seed=1, dtype="float64")
    check_model_grads(model, np.random.default_rng(1).normal(size=(3, 4, 2)))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_model_mask_equals_truncated_sequences(bidirectional):
    """With a mask producer before it, the model's output on a padded row equals its output on the row cut to its
    real length (the sorted fast path inside), and the gradients match finite differences."""
    L = fnn.layers
    x = fnn.Input((None, 2))
    rnn = L.LSTM(3)
    h = _PadMask()(x)
    h = L.Bidirectional(rnn)(h) if bidirectional else rnn(h)
    model = fnn.Model(x, L.Dense(2)(h), seed=2, dtype="float64")
    rng = np.random.default_rng(3)
    lengths = [6, 2, 4]
    X = rng.normal(size=(3, 6, 2)) + 3.0           # first feature never 0 on real steps
    for i, n in enumerate(lengths):
        X[i, n:] = 0
    full = model.predict(X)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(full[i], model.predict(X[i:i + 1, :n])[0], rtol=1e-12, atol=1e-14)
    check_model_grads(model, X)


def test_embedding_mask_zero_to_lstm_contract():
    """The issue's contract: Embedding(mask_zero=True) - LSTM - Dense on padded token ids: a padded row predicts
    what its unpadded ids predict, and the model trains (the sorted fast path under fit)."""
    L = fnn.layers
    model = fnn.Sequential([L.Embedding(20, 4, mask_zero=True), L.LSTM(5), L.Dense(1)], input_shape=(None,), seed=0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, 32)
    ids = np.zeros((32, 8), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, 20, n)
    full = model.predict(ids)
    for i in (0, 5, 17):
        np.testing.assert_allclose(full[i], model.predict(ids[i:i + 1, :lengths[i]])[0], rtol=1e-5, atol=1e-6)
    y = (lengths / 8.0)[:, None]
    model.compile(loss="mse", optimizer=fnn.optim.Adam(lr=0.02))
    first = model.evaluate(ids, y)["loss"]
    model.fit(ids, y, epochs=20, batch_size=8, verbose=0)
    assert model.evaluate(ids, y)["loss"] < 0.5 * first


def test_blas_thread_count_restored_and_threads_agree():
    """The time loop runs small per-step GEMMs on one BLAS thread and sets the count back afterwards; 1 and 2
    threads give the same values."""
    from fastnn._core import _threads
    n_threads = fnn.get_num_threads()
    layer = bind(GRU(8, return_sequences=True), (6, 3))
    X = np.random.default_rng(0).normal(size=(40, 6, 3))
    try:
        out = {}
        for n in (1, 2):
            fnn.set_num_threads(n)
            y = layer.forward(X).copy()
            dx = layer.backward(np.ones_like(y)).copy()
            assert _threads.blas_num_threads() == n
            out[n] = (y, dx, layer.grads["weight_hh"].copy())
        for a, b in zip(out[1], out[2]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    finally:
        fnn.set_num_threads(n_threads)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("n, units", [(1, 21), (3, 37), (9, 21), (33, 45), (50, 20)],
                         ids=["n1", "n3", "n9", "n33", "n50"])
def test_float32_two_threads_match_one_thread_and_oracle(cell, n, units):
    """Float32, packed kernels: on 2 threads the time loops split the (sorted) rows between the threads and the
    per-step weight gradients go to per-thread accumulators summed at the end.  Outputs, last states, dX, dh0 and
    every parameter gradient agree with 1 thread at float32 rounding and with the float64 numpy oracle, for odd
    batches (1 and 3 rows: one thread, at least 4 rows each; 9, 33: uneven halves), unit counts that are not
    multiples of 16 and masks
    without (None), right-padded (rows sorted by length: the split balances the row-steps) and with holes
    (blended), forwards and go_backwards; 2 threads give the same bits on every run."""
    cid, make, tname, _ = cell
    ocell, act = ORACLE_CELL[cid]
    lstm = tname == "LSTM"
    steps, n_in = 9, 13
    rng = np.random.default_rng(n + units)
    X = rng.normal(size=(n, steps, n_in)).astype(np.float32)
    dY = rng.normal(size=(n, steps, units)).astype(np.float32)
    dh = rng.normal(size=(n, units)).astype(np.float32)
    h0 = rng.normal(size=(n, units)).astype(np.float32) * 0.5
    lengths = rng.integers(1, steps + 1, n)
    lengths[-1] = steps
    holes = rng.random((n, steps)) < 0.7
    holes[:, -1] = True
    cases = [(None, False), (np.arange(steps)[None, :] < lengths[:, None], False), (holes, False), (holes, True)]
    threads = fnn.get_num_threads()
    try:
        for mask, back in cases:
            res = {}
            for nt in (1, 2, 2):
                fnn.set_num_threads(nt)
                layer = bind(make(units, return_sequences=True, return_state=True, go_backwards=back),
                             (steps, n_in), np.float32, seed=3)
                layer.n_inputs = 2
                layer.input_shape = [(steps, n_in), (units,)]
                if lstm:    # h0 only: c0 starts at zero
                    layer.n_inputs = 3
                    layer.input_shape.append((units,))
                init = [h0] + ([np.zeros_like(h0)] if lstm else [])
                out = [np.array(o, copy=True) for o in layer.forward([X] + init, mask=mask)]
                grads = [dY, dh] + ([np.zeros_like(dh)] if lstm else [])
                back_ = [np.array(b, copy=True) for b in layer.backward(grads)]
                got = out + back_[:2] + [layer.grads[k].copy() for k in sorted(layer.grads)]
                if nt in res:                        # the same thread count: the same bits
                    for a, b in zip(got, res[nt]):
                        np.testing.assert_array_equal(a, b)
                res[nt] = got
            for a, b in zip(res[2], res[1]):    # sums in another order: float32 rounding of the largest term
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())),
                                           err_msg=f"{cid} n={n} U={units}")
            p = {k: layer.params[k].astype(np.float64) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            args = (ocell, X.astype(np.float64), p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            kw = dict(h0=h0.astype(np.float64), c0=np.zeros((n, units)) if lstm else None, mask=mask,
                      go_backwards=back, activation=act)
            Y, h, _ = ref.rnn_layer_forward(*args, **kw)
            dX, dW_ih, dW_hh, db_ih, db_hh, dh0, _ = ref.rnn_layer_backward(
                *args, dY=dY.astype(np.float64), dh_last=dh.astype(np.float64),
                dc_last=np.zeros((n, units)) if lstm else None, **kw)
            want = [Y, h] + ([None] if lstm else []) + [dX, dh0] + [db_hh, db_ih, dW_hh, dW_ih]
            for a, b in zip(res[2], want):
                if b is not None:
                    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(b).max())),
                                               err_msg=f"{cid} n={n} U={units}")
    finally:
        fnn.set_num_threads(threads)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_float32_avx512_gate_rows_match_generic(cell):
    """On AVX-512 the packed path's forward gate rows are vectorized by hand (FMA polynomials, reciprocal estimates
    refined by a Newton step): one step from large and tiny pre-activations (the clamps of exp at -87 / 88 and of
    tanh at +-9, tanh(x) = x below 4e-4) agrees with the generic rows (the AVX2 cap) to float32 rounding, for unit
    counts with a partial vector (units 21, 4 * 21 gates) and a whole one (units 32)."""
    _, make, _, _ = cell
    if _k.set_packed_isa(2) < 2:
        pytest.skip("no AVX-512 on this CPU")
    threads = fnn.get_num_threads()
    try:
        fnn.set_num_threads(1)
        for units in (21, 32):
            res = {}
            for isa in (1, 2):
                _k.set_packed_isa(isa)
                layer = bind(make(units, return_sequences=True, return_state=True), (1, 3), np.float32, seed=5,
                             scale=30.0)
                X = np.concatenate([np.random.default_rng(0).normal(size=(6, 1, 3)) * 10.0,
                                    np.random.default_rng(1).normal(size=(6, 1, 3)) * 1e-6]).astype(np.float32)
                h0 = np.random.default_rng(2).normal(size=(12, units)).astype(np.float32)
                states = [h0] + ([h0 * 0.5] if len(layer.state_shapes) > 1 else [])
                layer.n_inputs = 1 + len(states)
                layer.input_shape = [(1, 3)] + [(units,)] * len(states)
                out = layer.forward([X] + states)
                res[isa] = [np.array(o, copy=True) for o in out]
            for a, b in zip(res[2], res[1]):
                np.testing.assert_allclose(a, b, rtol=3e-6, atol=3e-7)
    finally:
        _k.set_packed_isa(2)
        fnn.set_num_threads(threads)
