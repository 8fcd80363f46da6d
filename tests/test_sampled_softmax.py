"""Classification at scale: sampled softmax (kernel, sampler, engine, accuracy, save/load) and multi-label
prediction with sigmoid outputs (``Model.predict_classes``)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._core import sampled as _k

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:
    from _gradcheck import assert_grad_close, numeric_grad


def _reference(X, W, b, labels, sampled, leq_t, leq_s):
    """numpy oracle: per-row loss of the true class against the sampled candidates (accidental hits out)."""
    t = np.einsum("ij,ji->i", X, W[:, labels]) + b[labels] - leq_t
    Z = X @ W[:, sampled] + b[sampled] - leq_s
    Z = np.where(sampled[None, :] == labels[:, None], -np.inf, Z)
    A = np.concatenate([t[:, None], Z], axis=1)
    m = A.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(A - m).sum(axis=1)) + m[:, 0] - t))


def _problem(dtype=np.float64, n=7, n_in=5, k=11, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(dtype)
    W = rng.normal(size=(n_in, k)).astype(dtype)
    b = rng.normal(size=k).astype(dtype)
    labels = rng.integers(0, k, n).astype(np.intp)
    labels[0] = 3                                    # row 0's label is sampled: an accidental hit
    sampled = np.array([3, 8, 0, 5], dtype=np.intp)
    leq_t = rng.normal(size=n).astype(dtype) * 0.3
    leq_s = rng.normal(size=sampled.size).astype(dtype) * 0.3
    return X, W, b, labels, sampled, leq_t, leq_s


def _run(X, W, b, labels, sampled, leq_t, leq_s, grad=True, SW=None, n_threads=1):
    n, n_in = X.shape
    k, s = W.shape[1], sampled.size
    dt = X.dtype
    bufs = (np.empty((n_in, s), dt), np.empty((n, s), dt), np.empty(n, dt), np.empty((n_in, s), dt))
    dW, db, dX = (np.full((n_in, k), 7, dt), np.full(k, 7, dt), np.empty((n, n_in), dt)) if grad else (None,) * 3
    loss, correct = _k.sampled_softmax(X, W, b, labels, sampled, leq_t, leq_s, *bufs, dW, db, dX, SW, n_threads)
    return loss, correct, dW, db, dX


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_value_matches_reference(dtype):
    args = _problem(dtype)
    loss, _, _, _, _ = _run(*args)
    ref = _reference(*(a.astype(np.float64) if a.dtype.kind == "f" else a for a in args))
    assert loss == pytest.approx(ref, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_kernel_gradient_matches_finite_differences():
    X, W, b, labels, sampled, leq_t, leq_s = _problem()
    _, _, dW, db, dX = _run(X, W, b, labels, sampled, leq_t, leq_s)

    def value(_):
        return _run(X, W, b, labels, sampled, leq_t, leq_s, grad=False)[0]

    assert_grad_close(dW, numeric_grad(value, W), rtol=1e-6, atol=1e-9)
    assert_grad_close(db, numeric_grad(value, b), rtol=1e-6, atol=1e-9)
    assert_grad_close(dX, numeric_grad(value, X), rtol=1e-6, atol=1e-9)
    # columns that are neither sampled nor a label get exactly zero (dW was filled with 7 before the call)
    untouched = np.setdiff1d(np.arange(W.shape[1]), np.concatenate([sampled, labels]))
    assert untouched.size and not dW[:, untouched].any() and not db[untouched].any()


def test_kernel_sample_weights_and_threads():
    X, W, b, labels, sampled, leq_t, leq_s = _problem(n=40, n_in=6, k=30, seed=1)
    SW = np.random.default_rng(2).uniform(0, 2, 40)
    one = _run(X, W, b, labels, sampled, leq_t, leq_s, SW=SW, n_threads=1)
    two = _run(X, W, b, labels, sampled, leq_t, leq_s, SW=SW, n_threads=2)
    assert one[0] == pytest.approx(two[0], rel=1e-12) and one[1] == two[1]
    for a, c in zip(one[2:], two[2:]):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)

    def value(_):
        return _run(X, W, b, labels, sampled, leq_t, leq_s, grad=False, SW=SW)[0]

    assert_grad_close(one[2], numeric_grad(value, W), rtol=1e-6, atol=1e-9)
    # duplicated rows weigh as the weight: rows with weight 2 == the row twice
    w2 = np.ones(40)
    w2[:5] = 2.0
    dup = np.concatenate([np.arange(40), np.arange(5)])
    a = _run(X, W, b, labels, sampled, leq_t, leq_s, SW=w2)[0]
    c = _run(X[dup].copy(), W, b, labels[dup].copy(), sampled, leq_t[dup].copy(), leq_s)[0]
    assert a == pytest.approx(c, rel=1e-12)


def test_log_uniform_probabilities_and_draws():
    loss = fnn.losses.SampledSoftmax(num_sampled=5, sampler="log_uniform")
    k = 20
    p = loss.probabilities(k)
    c = np.arange(k)
    np.testing.assert_allclose(p, np.log((c + 2) / (c + 1)) / np.log(k + 1), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0, abs=1e-12) and np.all(np.diff(p) < 0)
    draws = loss._draw(np.random.default_rng(0), k, 200_000)
    freq = np.bincount(draws, minlength=k) / draws.size
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p.max() / draws.size))
    uni = fnn.losses.SampledSoftmax(num_sampled=5, sampler="uniform")
    np.testing.assert_allclose(uni.probabilities(k), np.full(k, 1 / k))


def test_sampler_unique_and_expected_counts():
    loss = fnn.losses.SampledSoftmax(num_sampled=8)
    k = 50
    sampled, tries = loss.sample(np.random.default_rng(0), k)
    assert sampled.size == 8 and np.unique(sampled).size == 8 and tries >= 8
    p = loss.probabilities(k)
    np.testing.assert_allclose(loss.expected_counts(sampled, k, tries), 1 - (1 - p[sampled]) ** tries)
    # the expected count is the inclusion probability: check it empirically for the log-uniform sampler
    rng, hits, tries_list = np.random.default_rng(1), np.zeros(k), []
    for _ in range(3000):
        s, t = loss.sample(rng, k)
        hits[s] += 1
        tries_list.append(t)
    assert hits[0] / 3000 == pytest.approx(np.mean(loss.expected_counts(np.array([0]), k, np.array(tries_list))),
                                           abs=0.03)
    uni = fnn.losses.SampledSoftmax(num_sampled=8, sampler="uniform")
    np.testing.assert_allclose(uni.expected_counts(sampled, k, 12), 8 / k)
    every, tries = fnn.losses.SampledSoftmax(num_sampled=49).sample(np.random.default_rng(0), k)
    assert tries is None and np.array_equal(every, np.arange(k))


def _twins(loss, k=20, seed=3, lr=0.1):
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(k)], input_dim=8, seed=seed,
                       dtype="float64")
    return m.compile(loss, fnn.optim.SGD(lr=lr))


def test_all_classes_equals_full_softmax():
    """num_sampled = k - 1 (every class but the true one): loss, gradients and the trained weights equal
    those of the full softmax cross-entropy."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 8)), rng.integers(0, 20, 30)
    a, b = _twins(fnn.losses.SampledSoftmax(num_sampled=19)), _twins("cross_entropy")
    for _ in range(3):
        la, lb = a.train_on_batch(X, y), b.train_on_batch(X, y)
        assert la == pytest.approx(lb, rel=1e-12)
        np.testing.assert_allclose(a.gradients, b.gradients, rtol=1e-9, atol=1e-13)
    assert np.abs(b.gradients).max() > 1e-3
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-9, atol=1e-13)
    assert a.evaluate(X, y)["loss"] == pytest.approx(b.evaluate(X, y)["loss"], rel=1e-12)


def test_model_gradient_matches_finite_differences_for_a_fixed_sample():
    """Through the engine (hidden layer + sampled output): the model's flat gradient against central
    differences of the sampled loss with the sample held fixed."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(6, 8)), rng.integers(0, 20, 6)
    loss = fnn.losses.SampledSoftmax(num_sampled=5, seed=7)
    m = _twins(loss, lr=0.0)
    m.train_on_batch(X, y)                              # lr 0: the weights stay, gradients are those of a sample
    analytic = m.gradients.copy()
    def value(_):
        m.trainer.sampled.rng = np.random.Generator(np.random.PCG64(7))    # replay the loss's generator: same sample
        return m.trainer.sampled.forward_backward(X, y.astype(np.intp), None, "gradcheck")[0]

    assert_grad_close(analytic, numeric_grad(value, m.parameters), rtol=1e-5, atol=1e-9)


def test_training_is_reproducible_and_output_layer_checked():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 20, 64)
    runs = []
    for _ in range(2):
        m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(20, activation="softmax")],
                           input_dim=8, seed=5)
        m.compile(fnn.losses.SampledSoftmax(num_sampled=6), "adam")
        m.fit(X, y, epochs=2, batch_size=16)
        runs.append(m.parameters.copy())
        p = m.predict(X)
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)     # predict: the full softmax
    np.testing.assert_array_equal(runs[0], runs[1])
    bad = fnn.Sequential([fnn.layers.Dense(20, activation="relu")], input_dim=8)
    with pytest.raises(ValueError, match="sampled_softmax needs a Dense output layer"):
        bad.compile(fnn.losses.SampledSoftmax(num_sampled=4))
    with pytest.raises(ValueError, match="integer labels"):
        m.fit(X, np.eye(20)[y])
    with pytest.raises(ValueError, match="metrics other than accuracy"):
        m.fit(X, y, metrics=["top_k_accuracy"])
    assert m.evaluate(X, y, metrics=["top_k_accuracy"])["top_k_accuracy"] > 0
    with pytest.raises(ValueError, match="sampler"):
        fnn.losses.SampledSoftmax(sampler="zipf")


def test_save_load_keeps_the_loss_config(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 20, 64)
    m = fnn.Sequential([fnn.layers.Dense(16, activation="relu"), fnn.layers.Dense(20)], input_dim=8, seed=5)
    m.compile(fnn.losses.SampledSoftmax(num_sampled=6, sampler="uniform", seed=3), "adam")
    m.fit(X, y, epochs=1, batch_size=16)
    m.save(tmp_path / "m.npz")
    r = fnn.load(tmp_path / "m.npz")
    assert isinstance(r.loss, fnn.losses.SampledSoftmax)
    assert r.loss.get_config() == {"name": "sampled_softmax", "num_sampled": 6, "sampler": "uniform", "seed": 3}
    np.testing.assert_array_equal(r.predict(X), m.predict(X))
    r.fit(X, y, epochs=2, initial_epoch=1, batch_size=16)     # trains through the sampled path after loading
    assert r.trainer.sampled is not None


@pytest.fixture
def one_thread():
    prev = fnn.get_num_threads()
    fnn.set_num_threads(1)      # the machines running the suite are small and shared: no oversubscription
    yield
    fnn.set_num_threads(prev)


def test_5000_classes_accuracy_comparable_to_full_softmax(one_thread):
    """Synthetic task: 5,000 classes, each a Gaussian blob around a random prototype in 32 dimensions, a
    linear softmax model.  'Comparable': sampled softmax (128 uniform samples, twice the epochs of the full
    softmax, still several times less compute) reaches a test accuracy within 3 points of the full softmax."""
    k, d = 5000, 32
    rng = np.random.default_rng(0)
    P = rng.normal(size=(k, d)).astype(np.float32)

    def draw(per):
        y = np.repeat(np.arange(k), per)
        return (P[y] + 0.5 * rng.normal(size=(y.size, d))).astype(np.float32), y

    (Xtr, ytr), (Xte, yte) = draw(2), draw(1)
    acc = {}
    for name, loss, epochs in (("full", "cross_entropy", 3),
                               ("sampled", fnn.losses.SampledSoftmax(num_sampled=128, sampler="uniform"), 6)):
        m = fnn.Sequential([fnn.layers.Dense(k)], input_dim=d, seed=0)
        m.compile(loss, fnn.optim.Adam(lr=0.02))
        m.fit(Xtr, ytr, epochs=epochs, batch_size=256)
        acc[name] = m.evaluate(Xte, yte)["accuracy"]
    assert acc["full"] > 0.9, acc
    assert acc["sampled"] >= acc["full"] - 0.03, acc


def test_multilabel_binary_cross_entropy_and_predict_classes():
    """One-vs-all on k sigmoid outputs: (n, k) 0/1 targets train with binary_cross_entropy, and
    predict_classes thresholds the probabilities."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 10)).astype(np.float32)
    Wt = rng.normal(size=(10, 4))
    Y = (X @ Wt > 0.3).astype(np.float32)                    # 4 overlapping labels per sample
    assert 0 < Y.mean() < 1 and (Y.sum(axis=1) > 1).any()
    for last in (fnn.layers.Dense(4, activation="sigmoid"), fnn.layers.Dense(4)):
        m = fnn.Sequential([fnn.layers.Dense(32, activation="relu"), last], input_dim=10, seed=0)
        m.compile("binary_cross_entropy", fnn.optim.Adam(lr=0.01))
        m.fit(X[:500], Y[:500], epochs=30, batch_size=32)
        pred = m.predict_classes(X[500:])
        assert pred.shape == (100, 4) and pred.dtype == np.int8 and set(np.unique(pred)) <= {0, 1}
        assert (pred == Y[500:]).mean() > 0.9
        assert m.evaluate(X[500:], Y[500:])["accuracy"] == pytest.approx((pred == Y[500:]).mean(), abs=0.011)
        p = m.predict(X[500:]) if last.fusable == "sigmoid" else 1 / (1 + np.exp(-m.predict(X[500:])))
        np.testing.assert_array_equal(m.predict_classes(X[500:], threshold=0.8), (p > 0.8).astype(np.int8))
        assert not m.predict_classes(X[500:], threshold=1.0).any()
    m1 = fnn.Sequential([fnn.layers.Dense(1, activation="sigmoid")], input_dim=10, seed=0)
    m1.compile("binary_cross_entropy")
    assert m1.predict_classes(X[:5]).shape == (5,)
    mc = fnn.Sequential([fnn.layers.Dense(3, activation="softmax")], input_dim=10, seed=0)
    np.testing.assert_array_equal(mc.predict_classes(X[:7]), mc.predict(X[:7]).argmax(axis=1))
