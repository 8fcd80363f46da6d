"""Recurrent models on the compiled plan (issue 16, issue 12): SimpleRNN (tanh, relu), LSTM and GRU over float
sequences and after an Embedding of token ids, return_sequences both ways, go_backwards, stacks, a Dense per step
and the cross-entropy over every step, against the per-layer path.

The plan runs the per-layer path's kernels (rnn.pyx's rnn_forward_raw / rnn_backward_raw, embedding.pyx's
embedding_gather / embedding_scatter: the code the def wrappers run) with buffers of the per-layer path's sizes
(the same packing scratch, the same split of the rows over the threads), so the tests ask for the same bits.
Bidirectional runs both directions in one node, merged as the layer merges them; an Embedding's mask reaches the
recurrent layers it feeds (the rows sorted by length when right-padded, else blended per step).  Models the plan
does not cover (a masked loss, masks into other layers, initial or returned states, Bidirectional without a
merge, a free time axis) must keep
training on the per-layer path.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.training import compiled as _plan

try:
    from tests.test_plan_graph import _assert_same, _nan_stop, _train_both
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from test_plan_graph import _assert_same, _nan_stop, _train_both

L = fnn.layers
T, F, K, VOCAB = 6, 3, 4, 11

CELLS = {
    "tanh": lambda u, **kw: L.SimpleRNN(u, **kw),
    "relu": lambda u, **kw: L.SimpleRNN(u, activation="relu", **kw),
    "lstm": lambda u, **kw: L.LSTM(u, **kw),
    "gru": lambda u, **kw: L.GRU(u, **kw),
}


def _data(n, per_step, ids=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, VOCAB, (n, T)) if ids else rng.standard_normal((n, T, F)).astype(np.float32)
    k = VOCAB if ids else K
    y = rng.integers(0, k, (n, T) if per_step else n)
    return X, y


def _stack(cell, seq, dtype):
    """Two layers of `cell`: the first reads the sequence backwards and returns it, the second returns its
    sequence (a Dense per step follows) or its last state."""
    make = CELLS[cell]
    return fnn.Sequential([make(5, return_sequences=True, go_backwards=True), make(7, return_sequences=seq),
                           L.Dense(K)], input_shape=(T, F), seed=1, dtype=dtype)


def _both(make, X, y, make_opt, dtype, threads=1, bs=8, epochs=2, loss="cross_entropy", **kw):
    a, ha, b, hb = _train_both(make, X, y, loss, make_opt, dtype, epochs, bs, threads, **kw)
    _assert_same(a, ha, b, hb)
    return a, ha


def _both_weighted(make, loss, X, y, w):
    """make() trained with sample weights w through the plan and through the per-layer path (Adam, 2 epochs,
    batches of 8): the same bits."""
    out = []
    for compiled in (True, False):
        m = make()
        m.compile(loss, fnn.optim.Adam(lr=1e-2))
        m.trainer.compiled_plan = compiled
        h = m.fit(X, y, epochs=2, batch_size=8, sample_weight=w)
        assert (m.trainer.train_plan is not None) == compiled
        out.append((m, h))
    _assert_same(out[0][0], out[0][1], out[1][0], out[1][1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seq", [False, True], ids=["last", "per_step"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_every_cell_gives_the_weights_of_the_per_layer_path(cell, seq, dtype):
    # 37 samples in batches of 8: a last batch of 5; RMSprop with R1's clipping at norm 5
    X, y = _data(37, seq)
    a, h = _both(lambda dt: _stack(cell, seq, dt), X, y, lambda: fnn.optim.RMSprop(lr=1e-2), dtype, clip_norm=5.0)
    assert np.isfinite(h.history["loss"]).all()


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_two_threads_and_a_last_batch_of_one(cell, restore_threads):
    X, y = _data(17, True)         # batches of 8, 8 and 1
    _both(lambda dt: _stack(cell, True, dt), X, y, lambda: fnn.optim.Adam(lr=1e-2), "float32", threads=2)
    _both(lambda dt: _stack(cell, False, dt), X, y[:, 0], lambda: fnn.optim.Adam(lr=1e-2), "float64", threads=2)


@pytest.mark.parametrize("make_opt", [lambda: fnn.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                      lambda: fnn.optim.Adam(lr=1e-2, amsgrad=True),
                                      lambda: fnn.optim.RMSprop(lr=1e-2, momentum=0.5, centered=True),
                                      lambda: fnn.optim.AdamW(lr=1e-2, weight_decay=0.1)],
                         ids=["sgd", "adam", "rmsprop", "adamw"])
def test_every_optimizer_on_an_lstm(make_opt):
    X, y = _data(24, True)
    _both(lambda dt: _stack("lstm", True, dt), X, y, make_opt, "float32", clip_value=0.5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_r1_shape_embedding_two_lstms_and_a_dense_per_step(dtype, restore_threads):
    # R1 in small: Embedding - LSTM - LSTM - Dense per step, cross-entropy over all steps, RMSprop, clip norm 5
    def make(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 4), L.LSTM(6, return_sequences=True),
                               L.LSTM(5, return_sequences=True), L.Dense(VOCAB)], input_shape=(T,), seed=2, dtype=dt)
    X, y = _data(21, True, ids=True)
    a, h = _both(make, X, y, lambda: fnn.optim.RMSprop(lr=2e-3), dtype, threads=2, clip_norm=5.0)
    assert _plan._compiles(a, True) and not _plan._compiles(a, False)     # inference: the per-layer path
    # an Embedding into a GRU that returns its last state, int32 ids
    def make2(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 3), L.GRU(5), L.Dense(K, activation="softmax")],
                              input_shape=(T,), seed=2, dtype=dt)
    _both(make2, X.astype(np.int32), y[:, 0] % K, lambda: fnn.optim.Adam(lr=1e-2), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_bidirectional_in_every_merge_mode(merge, dtype, restore_threads):
    # a Bidirectional GRU returning its sequence under a Bidirectional LSTM returning its last states, at 2 threads
    def make(dt):
        return fnn.Sequential([L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode=merge),
                               L.Bidirectional(L.LSTM(5), merge_mode=merge), L.Dense(K)],
                              input_shape=(T, F), seed=4, dtype=dt)
    X, y = _data(19, False)
    _both(make, X, y, lambda: fnn.optim.Adam(lr=1e-2), dtype, threads=2, clip_norm=5.0)


def test_bidirectional_per_step_after_an_embedding():
    def make(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 4), L.Bidirectional(L.SimpleRNN(5, return_sequences=True,
                                                                                  go_backwards=True)),
                               L.Dense(VOCAB)], input_shape=(T,), seed=5, dtype=dt)
    X, y = _data(13, True, ids=True)
    _both(make, X, y, lambda: fnn.optim.RMSprop(lr=1e-2), "float64")


def test_a_nan_stops_a_recurrent_model_with_the_last_good_state():
    X, _ = _data(64, False)
    y = np.random.default_rng(1).integers(0, K, (64, T))
    X[40] = 3e38                  # batch 3 of 16: a ReLU state overflows float32, and the update with it

    def make(dt):
        return fnn.Sequential([L.SimpleRNN(5, activation="relu", return_sequences=True), L.Dense(K)],
                              input_shape=(T, F), seed=1, dtype=dt)
    _, e = _nan_stop(make, lambda: fnn.optim.RMSprop(lr=1e-2), X, y)
    assert (e.what, e.batch) == ("parameters", 3)


def test_recurrent_models_the_plan_does_not_cover_keep_the_per_layer_path():
    X, y = _data(12, False)
    ids, yi = _data(12, True, ids=True)
    ids[:, 4:] = 0
    inp = fnn.Input((T, F))
    out, h = L.GRU(5, return_state=True)(inp)
    state = fnn.Model(inp, L.Dense(K)(L.Concatenate()([out, h])))
    inp3 = fnn.Input((T, F))
    inp2 = fnn.Input((T, F))
    h0 = L.Dense(5)(L.Flatten()(inp2))
    init = fnn.Model(inp2, L.Dense(K)(L.SimpleRNN(5)(inp2, initial_state=[h0])))
    cases = [
        # a mask on the output (the loss masked), masks into a Dense
        (fnn.Sequential([L.Embedding(VOCAB, 4, mask_zero=True), L.LSTM(5, return_sequences=True), L.Dense(K)],
                        input_shape=(T,)), ids, yi % K),
        (fnn.Sequential([L.Embedding(VOCAB, 4, mask_zero=True), L.Dense(3), L.LSTM(5), L.Dense(K)],
                        input_shape=(T,)), ids, y),
        (fnn.Sequential([L.Masking(0.0), L.Dense(3), L.LSTM(5), L.Dense(K)], input_shape=(T, F)), X, y),
        (fnn.Model(inp3, L.Dense(K)(L.Concatenate()(L.Bidirectional(L.LSTM(5), merge_mode=None)(inp3)))), X, y),
        (fnn.Sequential([L.LSTM(5), L.Dense(K)], input_shape=(None, F)), X, y),        # a free time axis
        (state, X, y),
        (init, X, y),
        # a per-step output with probability rows (the soft cross-entropy)
        (fnn.Sequential([L.GRU(5, return_sequences=True), L.Dense(K)], input_shape=(T, F)), X,
         np.full((12, T, K), 1.0 / K, np.float32)),
    ]
    for i, (m, Xi, yi_) in enumerate(cases):
        m.compile("cross_entropy", "adam")
        h = m.fit(Xi, yi_, epochs=1, batch_size=4)
        assert m.trainer.train_plan is None, i
        assert np.isfinite(h.history["loss"]).all(), i
    # step norms recorded: the per-layer path
    m = _stack("lstm", True, "float32")
    m.layers[1].record_step_grad_norms = True
    m.compile("cross_entropy", "adam")
    m.fit(X, _data(12, True)[1], epochs=1, batch_size=4)
    assert m.trainer.train_plan is None and m.layers[1].step_grad_norms is not None
    # ids out of range: the per-layer path's error
    m = fnn.Sequential([L.Embedding(VOCAB, 4), L.LSTM(5), L.Dense(K)], input_shape=(T,))
    m.compile("cross_entropy", "adam")
    with pytest.raises(ValueError, match="input_dim|outside"):
        m.fit(ids + VOCAB, y, epochs=1, batch_size=4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_sequences_from_an_embedding(dtype, restore_threads):
    # R3 in small: right-padded ids (the rows run sorted by length), an LSTM's last state, binary cross-entropy;
    # then padding anywhere (the per-row blend), a stack and a Bidirectional reading backwards
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, (23, T))
    lengths = rng.integers(1, T + 1, 23)
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    y = rng.integers(0, 2, (23, 1)).astype(np.float32)

    def r3(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 4, mask_zero=True), L.LSTM(5), L.Dense(1)], input_shape=(T,),
                              seed=6, dtype=dt)
    a, ha, b, hb = _train_both(r3, ids, y, "binary_cross_entropy", lambda: fnn.optim.Adam(lr=1e-2), dtype, 2, 8, 2)
    _assert_same(a, ha, b, hb)
    holes = ids.copy()
    holes[rng.random(holes.shape) < 0.3] = 0

    def stack(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 4, mask_zero=True), L.GRU(5, return_sequences=True),
                               L.Bidirectional(L.SimpleRNN(3, go_backwards=True)), L.Dense(K)], input_shape=(T,),
                              seed=7, dtype=dt)
    _both(stack, holes, rng.integers(0, K, 23), lambda: fnn.optim.RMSprop(lr=1e-2), dtype, threads=2)


def test_a_plan_built_for_two_threads_trains_at_one(restore_threads):
    # the packing scratch is sized for the plan's thread count; fewer threads use a part of it, as the per-layer
    # path's smaller buffer
    X, y = _data(20, True)
    out = []
    for compiled in (True, False):
        m = _stack("lstm", True, "float32")
        m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
        m.trainer.compiled_plan = compiled
        fnn.set_num_threads(2)
        m.fit(X, y, epochs=1, batch_size=8)
        fnn.set_num_threads(1)
        h = m.fit(X, y, epochs=1, batch_size=8)
        assert (m.trainer.train_plan is not None) == compiled
        out.append((m, h))
    _assert_same(out[0][0], out[0][1], out[1][0], out[1][1])


def test_dropout_layernorm_and_a_dense_between_recurrent_layers():
    # per-step layers of the plan's other kinds between and after recurrent layers, with Dropout's random draws
    def make(dt):
        return fnn.Sequential([L.LSTM(6, return_sequences=True), L.Dropout(0.3), L.Dense(4, activation="tanh"),
                               L.GRU(5, return_sequences=True), L.LayerNorm(), L.Dense(K, activation="softmax")],
                              input_shape=(T, F), seed=8, dtype=dt)
    X, y = _data(18, True)
    _both(make, X, y, lambda: fnn.optim.Adam(lr=1e-2), "float64")


def test_metrics_and_validation_of_a_per_step_output():
    # R1's shape with metrics over every step (the plan copies each batch's (m, T, k) output out for them) and
    # validation data (the per-layer path evaluates it), the batches shuffled
    def make(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 4), L.GRU(5, return_sequences=True), L.Dense(VOCAB)],
                              input_shape=(T,), seed=9, dtype=dt)
    X, y = _data(22, True, ids=True)
    out = []
    for compiled in (True, False):
        m = make("float32")
        m.compile("cross_entropy", fnn.optim.Adam(lr=1e-2))
        m.trainer.compiled_plan = compiled
        h = m.fit(X, y, epochs=2, batch_size=8, metrics=["top_k_accuracy", fnn.metrics.TopKAccuracy(2, name="top2")],
                  validation_data=(X[:6], y[:6]))
        assert (m.trainer.train_plan is not None) == compiled
        out.append((m, h))
    (a, ha), (b, hb) = out
    _assert_same(a, ha, b, hb)
    assert set(ha.history) >= {"loss", "accuracy", "top_k_accuracy", "top2", "val_loss"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_over_each_samples_whole_sequence(dtype):
    # R4's shape: an LSTM's sequence is the output, MSE against (n, T, units) targets; then binary cross-entropy
    # on a Dense per step with sample weights
    rng = np.random.default_rng(4)
    X, _ = _data(19, False)

    def r4(dt):
        return fnn.Sequential([L.LSTM(5, return_sequences=True)], input_shape=(T, F), seed=10, dtype=dt)
    _both(r4, X, rng.standard_normal((19, T, 5)), lambda: fnn.optim.SGD(lr=0.1), dtype, loss="mse")

    def tags(dt):
        return fnn.Sequential([L.GRU(4, return_sequences=True, go_backwards=True), L.Dense(2)], input_shape=(T, F),
                              seed=11, dtype=dt)
    y, w = rng.integers(0, 2, (19, T, 2)).astype(np.float32), rng.random(19)
    _both_weighted(lambda: tags(dtype), "binary_cross_entropy", X, y, w)


def test_per_step_cross_entropy_with_sample_weights_and_a_branching_graph(restore_threads):
    # each sample's weight on each of its steps (the loss's mean over the weighted positions); then a functional
    # graph: one LSTM's sequence read by a GRU and a SimpleRNN, their last states concatenated with a Dense of the
    # flattened input
    X, y = _data(21, True)
    # quarters: sums exact in any order (both paths now add a batch's weights in row order, losses.weight_sum)
    w = np.random.default_rng(5).integers(1, 8, 21) / 4.0
    _both_weighted(lambda: _stack("gru", True, "float64"), "cross_entropy", X, y, w)

    def make(dt):
        inp = fnn.Input((T, F))
        h = L.LSTM(5, return_sequences=True)(inp)
        parts = [L.GRU(4)(h), L.SimpleRNN(3, go_backwards=True)(h), L.Dense(4, activation="relu")(L.Flatten()(inp))]
        return fnn.Model(inp, L.Dense(K)(L.Concatenate()(parts)), seed=3, dtype=dt)
    _both(make, X, y[:, 0], lambda: fnn.optim.Adam(lr=1e-2), "float32", threads=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masking_float_sequences(dtype, restore_threads):
    # padded steps (all features mask_value) at the end of some rows and in the middle of others, a step with one
    # feature at mask_value (a real step); a stack with a Bidirectional, at 2 threads
    X, y = _data(22, False)
    X[3, 4:] = -1.0
    X[7, 1] = -1.0
    X[9, :2] = -1.0
    X[12, 2, 0] = -1.0

    def make(dt):
        return fnn.Sequential([L.Masking(-1.0), L.LSTM(5, return_sequences=True),
                               L.Bidirectional(L.GRU(4), merge_mode="sum"), L.Dense(K)], input_shape=(T, F),
                              seed=12, dtype=dt)
    _both(make, X, y, lambda: fnn.optim.Adam(lr=1e-2), dtype, threads=2)


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_an_embedding_feeds_its_recurrent_layer_through_a_table(cell, restore_threads):
    """float32, an Embedding whose table has fewer rows than half a batch's ids: the plan's forward multiplies the
    table by W_ih once per batch (Plan.rnn's emb) and reads each step's input projection from it, with the bits
    of the per-layer path (each id's row through the same kernel); both directions of a Bidirectional, a mask
    (mask_zero, right-padded rows), go_backwards, 2 threads.  float64 and a large vocabulary keep the per-step
    products."""
    make_cell = CELLS[cell]

    def make(dt, vocab=VOCAB, mask=True):
        return fnn.Sequential([L.Embedding(vocab, 4, mask_zero=mask),
                               L.Bidirectional(make_cell(5, return_sequences=True, go_backwards=True)),
                               make_cell(6), L.Dense(K)], input_shape=(T,), seed=3, dtype=dt)
    X, _ = _data(29, False, ids=True)
    X[::3, 4:] = 0                                    # right-padded rows for the mask
    y = np.random.default_rng(2).integers(0, K, 29)
    a, _ = _both(make, X, y, lambda: fnn.optim.RMSprop(lr=1e-2), "float32", threads=2, clip_norm=5.0)
    tables = a.trainer.train_plan.rnn_tables
    assert list(tables) == [1] and len(tables[1]) == 2      # the Bidirectional's two directions; not layer 2
    G = {"tanh": 1, "lstm": 4, "gru": 3}[cell]
    from fastnn._core import rnn as _k
    packed = _k.set_packed_isa(2) > 0           # the packed kernels (AVX2+FMA or AVX-512) read the table
    for xtab in tables[1]:
        assert xtab.shape == (VOCAB * G * 5,) and np.isfinite(xtab).all() and np.any(xtab != 0) == packed
    b, _ = _both(make, X, y, lambda: fnn.optim.RMSprop(lr=1e-2), "float64", clip_norm=5.0)
    assert b.trainer.train_plan.rnn_tables == {}
    c, _ = _both(lambda dt: make(dt, vocab=200, mask=False), X, y, lambda: fnn.optim.Adam(lr=1e-2), "float32")
    assert c.trainer.train_plan.rnn_tables == {}          # 2 * 200 > 8 * 6 ids per batch


def test_plan_rnn_refuses_an_emb_that_is_not_its_embedding_and_keeps_the_node(monkeypatch):
    """Plan.rnn's emb must name an Embedding node before it, of the layer's steps and features; a refused call
    raises before the node is touched, so the plan trains on with the bits of a plan that never saw it."""
    calls = {}

    class Recording(_plan._k.Plan):
        def rnn(self, l, *args, **kw):
            calls[l] = (self, args, kw)
            return super().rnn(l, *args, **kw)

    def make(dt):
        return fnn.Sequential([L.Embedding(VOCAB, 3), L.GRU(5, return_sequences=True), L.LSTM(4), L.Dense(K)],
                              input_shape=(T,), seed=4, dtype=dt)
    X, _ = _data(16, False, ids=True)
    y = np.random.default_rng(5).integers(0, K, 16)
    models = []
    for refuse in (False, True):
        monkeypatch.setattr(_plan._k, "Plan", Recording)
        m = make("float32")
        m.compile("cross_entropy", fnn.optim.Adam(1e-2))
        m.fit(X, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert m.trainer.train_plan is not None and m.trainer.train_plan.rnn_tables.keys() == {1}
        if refuse:
            core, args, kw = calls[2]
            assert kw["emb"] == -1
            for bad in (1, 2, 3, 99):                    # a GRU, itself, a node after it, no node
                with pytest.raises(ValueError, match=f"Plan.rnn: layer 2: node {bad} is not an Embedding"):
                    core.rnn(2, *args, **dict(kw, emb=bad))
            core1, args1, kw1 = calls[1]                  # the Embedding's 6 steps of 3 features; not 5 features
            bad_args = list(args1)
            bad_args[2] = 5
            with pytest.raises(ValueError, match="node 0 is not an Embedding of 6 steps of 5 features"):
                core1.rnn(1, *bad_args, **kw1)
        m.fit(X, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        models.append(m)
    np.testing.assert_array_equal(models[0].parameters, models[1].parameters)
