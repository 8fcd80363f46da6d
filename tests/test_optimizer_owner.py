"""One optimizer, one model (issue 13, defect 1): an optimizer object given to a second model was rebound to it,
and the first model's fit then ran against the second's state arrays (a heap overflow on the compiled plan,
a silent update of the other model on the per-layer path)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn as fnn

L = fnn.layers


def _mlp(width, seed=0, bn=False):
    layers = [L.Dense(width, activation="relu")] + ([L.BatchNorm()] if bn else []) + [L.Dense(3)]
    return fnn.Sequential(layers, input_dim=4, seed=seed)


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("opt_cls", [fnn.optim.Adam, fnn.optim.SGD, fnn.optim.RMSprop])
@pytest.mark.parametrize("bn", [False, True])       # the compiled plan and the per-layer path
def test_second_model_is_refused_and_neither_model_changes(opt_cls, bn):
    a, b = _mlp(64, bn=bn), _mlp(4, seed=1, bn=bn)
    opt = opt_cls(lr=0.1) if opt_cls is not fnn.optim.SGD else opt_cls(lr=0.1, momentum=0.9)
    a.compile("cross_entropy", optimizer=opt)
    b_before = b.get_weights()
    with pytest.raises(ValueError, match=r"already the optimizer of model 'sequential'.*own optimizer"):
        b.compile("cross_entropy", optimizer=opt)
    assert b.optimizer is None and b.loss is None       # b is unchanged
    assert opt.owner() is a
    X, y = _data()
    a.fit(X, y, epochs=2, batch_size=16)                 # a trains its own state ...
    assert opt.state and all(s.shape == a.parameters.shape for s in opt.state.values())
    for w0, w1 in zip(b_before, b.get_weights()):        # ... and never touches b's memory
        np.testing.assert_array_equal(w0, w1)


def test_a_released_optimizer_can_move_to_another_model():
    a, b = _mlp(8), _mlp(5)
    opt = fnn.optim.Adam()
    a.compile("cross_entropy", optimizer=opt)
    a.compile("cross_entropy", optimizer="sgd")           # a no longer uses opt
    b.compile("cross_entropy", optimizer=opt)
    assert opt.owner() is b
    X, y = _data()
    b.fit(X, y, epochs=1)
    a.fit(X, y, epochs=1)
    assert opt.state["exp_avg"].shape == b.parameters.shape


def test_recompiling_the_same_model_keeps_the_optimizer():
    a = _mlp(8)
    opt = fnn.optim.Adam()
    a.compile("cross_entropy", optimizer=opt)
    X, y = _data()
    a.fit(X, y, epochs=1)
    a.compile("cross_entropy", optimizer=opt)
    assert opt.owner() is a and opt.step_count > 0


def test_unbuilt_model_claims_at_compile():
    # a Sequential without input_dim binds at its first fit: the claim is made at compile all the same
    a = fnn.Sequential([L.Dense(16, activation="relu"), L.Dense(3)])
    b = _mlp(4)
    opt = fnn.optim.Adam()
    a.compile("cross_entropy", optimizer=opt)
    with pytest.raises(ValueError, match="already the optimizer"):
        b.compile("cross_entropy", optimizer=opt)
    X, y = _data()
    a.fit(X, y, epochs=1)
    assert opt.state["exp_avg"].shape == a.parameters.shape


@pytest.mark.parametrize("bn", [False, True])
def test_another_models_optimizer_assigned_is_refused_and_changes_nothing(bn):
    a, b = _mlp(64, bn=bn), _mlp(4, seed=1, bn=bn)
    b.compile("cross_entropy", optimizer="adam")
    a.compile("cross_entropy", optimizer="adam")
    mine = a.optimizer
    with pytest.raises(ValueError, match="already the optimizer of model"):
        a.optimizer = b.optimizer           # compile's check: an optimizer trains one model
    assert a.optimizer is mine and b.optimizer.owner() is b
    X, y = _data()
    b_before = b.get_weights()
    a.fit(X, y, epochs=1)
    for w0, w1 in zip(b_before, b.get_weights()):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("bn", [False, True])
def test_an_optimizer_rebound_behind_the_models_back_is_refused_by_fit(bn):
    # the trainer's own check, for an optimizer bound elsewhere without compile (private API)
    a, b = _mlp(64, bn=bn), _mlp(4, seed=1, bn=bn)
    b.compile("cross_entropy", optimizer="adam")
    a.compile("cross_entropy", optimizer="adam")
    a._optimizer = b.optimizer
    X, y = _data()
    b_before = b.get_weights()
    with pytest.raises(RuntimeError, match="not bound to its parameters"):
        a.fit(X, y, epochs=1)
    with pytest.raises(RuntimeError, match="not bound to its parameters"):
        a.train_on_batch(X, y)
    for w0, w1 in zip(b_before, b.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_shared_optimizer_does_not_crash_the_interpreter():
    # the reported reproduction, in a child process: it ended with SIGSEGV (exit code 139) before the fix
    code = textwrap.dedent("""
        import numpy as np, fastnn as fnn
        L = fnn.layers
        a = fnn.Sequential([L.Dense(512, activation="relu"), L.Dense(3)], input_dim=64, seed=0)
        b = fnn.Sequential([L.Dense(2), L.Dense(3)], input_dim=64, seed=0)
        opt = fnn.optim.Adam()
        a.compile("cross_entropy", optimizer=opt)
        try:
            b.compile("cross_entropy", optimizer=opt)
        except ValueError:
            pass
        X = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
        a.fit(X, np.arange(256) % 3, epochs=3)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_a_bound_optimizer_pickles_without_its_owner():
    import pickle
    a = _mlp(8)
    opt = fnn.optim.Adam(lr=0.01)
    a.compile("cross_entropy", optimizer=opt)
    X, y = _data()
    a.fit(X, y, epochs=1)
    copy = pickle.loads(pickle.dumps(opt))
    assert copy.owner() is None and copy.lr == 0.01 and copy.step_count == opt.step_count
    b = _mlp(8, seed=1)
    b.compile("cross_entropy", optimizer=copy)      # the copy is free to train another model
    assert copy.owner() is b and opt.owner() is a


@pytest.mark.parametrize("fresh", [lambda: fnn.optim.Adam(), lambda: fnn.optim.SGD(lr=0.1, momentum=0.9)])
def test_a_fresh_optimizer_assigned_after_compile_is_bound_like_compile(fresh):
    # issue 13, defect 14: a KeyError later (Adam), or SGD's momentum silently ignored; assigning now re-compiles
    # with it: the same weights as compiling with it
    a, b = _mlp(8), _mlp(8)
    for m in (a, b):
        m.compile("cross_entropy", optimizer="sgd", clip_norm=1.0)
    a.optimizer = fresh()
    b.compile("cross_entropy", optimizer=fresh(), clip_norm=1.0)
    assert a.optimizer.owner() is a and a.clip_norm == 1.0
    X, y = _data()
    for m in (a, b):
        m.fit(X, y, epochs=2, shuffle=False)
    for w0, w1 in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    fresh_model = _mlp(8)
    with pytest.raises(ValueError, match="no loss yet"):
        fresh_model.optimizer = fresh()
    with pytest.raises(TypeError):
        a.optimizer = 3
