"""Recurrent networks learn (small, fast versions of benchmarks/rnn_learning.py), the diagnostics see the
vanishing gradient along time of a SimpleRNN, and ``python -m fastnn demo --model lstm`` runs."""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn.datasets import adding_problem, load_digits, stratified_split
from fastnn.diagnostics import TrainingHealthWarning

L = fnn.layers
# the folder that holds the fastnn under test (the clone, or site-packages when the suite runs against an install)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    before = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(before)


def test_simple_rnn_on_the_adding_problem_at_T_100_reports_gradients_vanishing_along_time():
    X, y = adding_problem(256, 100, seed=0)
    model = fnn.Sequential([L.SimpleRNN(32), L.Dense(1)], input_shape=(100, 2), seed=0)
    model.compile("mse", fnn.optim.Adam(lr=1e-3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, y, epochs=1, batch_size=64, diagnostics=True)
    rnn = model.layers[0]
    g = history.history["diagnostics"][-1][rnn.name]["step_grad_norms"]
    assert len(g) == 100 and all(v >= 0 for v in g)
    assert g[0] < 1e-3 * max(g)                          # a SimpleRNN's gradient dies within ~20 tanh steps
    assert g[-1] > 0
    time_warnings = [w for w in caught if issubclass(w.category, TrainingHealthWarning)
                     and "along time" in str(w.message)]
    assert len(time_warnings) == 1
    assert f"gradients vanish along time in layer {rnn.name}" in str(time_warnings[0].message)
    assert rnn.record_step_grad_norms is False                # switched off again after fit
    report = model.diagnose(X[:64], y[:64], verbose=False)
    assert report[rnn.name]["step_grad_norms"][0] < 1e-3 * max(report[rnn.name]["step_grad_norms"])
    assert ("vanishing along time", rnn.name) in [(k, n) for k, n, _ in report.problems]
    assert "along time (100 steps" in report.table()


def test_no_warning_along_time_when_the_gradient_reaches_the_first_step():
    # at initialization an LSTM's forget gates are near 0.5, so its gradient halves per step; over 5 steps it
    # still reaches the first one (over 100 it does not: benchmarks/rnn_learning.py shows the record recover as
    # the gates learn to carry)
    X, y = adding_problem(128, 5, seed=1)
    model = fnn.Sequential([L.LSTM(16), L.Dense(1)], input_shape=(5, 2), seed=0)
    model.compile("mse", fnn.optim.Adam(lr=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingHealthWarning)
        history = model.fit(X, y, epochs=1, batch_size=64, diagnostics=True)
    g = history.history["diagnostics"][-1][model.layers[0].name]["step_grad_norms"]
    assert len(g) == 5 and g[0] > 1e-3 * max(g)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_adding_problem_T_20_is_learned(kind):
    # the T = 100 target (MSE < 0.01) takes a minute or more: benchmarks/rnn_learning.py; here a short version
    X, y = adding_problem(2000, 20, seed=0)
    Xt, yt = adding_problem(500, 20, seed=1)
    model = fnn.Sequential([getattr(L, kind)(24), L.Dense(1)], input_shape=(20, 2), seed=0)
    model.compile("mse", fnn.optim.Adam(lr=1e-2), clip_norm=1.0)
    model.fit(X, y, epochs=8, batch_size=32)
    mse = float(np.mean((model.predict(Xt) - yt) ** 2))
    assert mse < 0.02, mse                                # the mean predictor: ~0.167


def test_digits_as_sequences_of_rows_reach_97_percent():
    X, y = load_digits(flatten=False)                     # (1797, 8, 8): 8 steps of 8 pixels
    Xtr, ytr, Xte, yte = stratified_split(X, y, test_fraction=0.2, seed=0)
    model = fnn.Sequential([L.GRU(64), L.Dense(10)], input_shape=(8, 8), seed=0)
    model.compile("cross_entropy", fnn.optim.Adam(lr=5e-3))
    model.fit(Xtr, ytr, epochs=25, batch_size=32)
    assert model.evaluate(Xte, yte)["accuracy"] >= 0.97


def test_demo_lstm_prints_a_falling_loss_and_a_sample():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "fastnn", "demo", "--model", "lstm", "--epochs", "2",
                           "--max-chars", "20000", "--hidden", "32", "--embed", "8", "--seq-len", "32",
                           "--sample-len", "40", "--threads", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "character LSTM on 20,000 characters" in out and "Shakespeare" in out
    assert out.count("epoch ") >= 2 and "val_loss" in out
    assert "validation loss" in out and "->" in out
    # the loss falls: "validation loss A -> B (train loss C -> D)" with B < A and D < C
    val = re.search(r"validation loss ([0-9.]+) -> ([0-9.]+) \(train loss ([0-9.]+) -> ([0-9.]+)\)", out)
    assert val is not None, out
    a, b, c, d = map(float, val.groups())
    assert b < a and d < c, out
    sample = out.split("sample (temperature 0.8")[1].split("\n", 1)[1]
    assert len(sample.rstrip("\n")) >= 40 - sample.count("\n")


def test_sample_text_draws_from_the_model():
    from fastnn.__main__ import sample_text
    vocab = "ab"
    model = fnn.Sequential([L.Embedding(2, 4), L.LSTM(4, return_sequences=True), L.Dense(2)],
                           input_shape=(None,), seed=0)
    for layer in model.layers:                            # logits always favour "b" by far
        if isinstance(layer, L.Dense):
            layer.weight = np.zeros_like(layer.weight)
            layer.bias = np.array([-20.0, 20.0], dtype=layer.bias.dtype)
    assert sample_text(model, vocab, "ab", 10, seq_len=3) == "b" * 10
