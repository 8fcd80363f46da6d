"""Diagnostics along time: the rules on recurrent layers' per-step gradient norms (find_time_problems) and the
recording during fit / diagnose."""
import math

import numpy as np

from fastnn import diagnostics as D


def _kinds(stats):
    return [(k, n) for k, n, _ in D.find_problems(stats)]


def test_vanishing_along_time_is_first_step_below_1e_3_of_the_largest():
    g = list(np.geomspace(1e-6, 1.0, 50))            # grows toward the last step, where the loss enters
    assert _kinds({"simple_rnn_1": {"step_grad_norms": g}}) == [("vanishing along time", "simple_rnn_1")]
    msg = D.find_time_problems({"simple_rnn_1": {"step_grad_norms": g}})[0][2]
    assert "first step is 1.00e-06" in msg and "50 steps" in msg
    # 1e-3 of the largest is the boundary; a peak in the middle (masked batches) is the reference, not the last
    assert _kinds({"lstm_1": {"step_grad_norms": [2e-3, 1.0, 0.5]}}) == []
    assert _kinds({"lstm_1": {"step_grad_norms": [5e-4, 1.0, 0.01]}}) == [("vanishing along time", "lstm_1")]


def test_exploding_along_time_and_not_finite():
    g = list(np.geomspace(1e4, 1.0, 20))
    assert _kinds({"gru_1": {"step_grad_norms": g}}) == [("exploding along time", "gru_1")]
    assert _kinds({"gru_1": {"step_grad_norms": [1.0, math.inf, 1.0]}}) == [("exploding along time", "gru_1")]
    assert _kinds({"gru_1": {"step_grad_norms": [math.nan, 1.0]}}) == [("exploding along time", "gru_1")]


def test_healthy_or_too_short_records_are_no_problem():
    assert D.find_time_problems({"lstm_1": {"step_grad_norms": [0.3, 0.5, 1.0]}}) == []
    assert D.find_time_problems({"lstm_1": {"step_grad_norms": [1e-9]}}) == []       # one step: nothing to compare
    assert D.find_time_problems({"lstm_1": {"step_grad_norms": [0.0, 0.0]}}) == []   # no gradient at all
    assert D.find_time_problems({"dense_1": {"grad_norm": 1.0}}) == []


def test_step_norms_accumulate_means_over_batches_of_different_lengths():
    class Rec:
        name = "lstm_9"
        record_step_grad_norms = False
        step_grad_norms = None

    class M:
        layers = [Rec()]

    acc = D._StepNorms(M)
    assert M.layers[0].record_step_grad_norms is True
    M.layers[0].step_grad_norms = np.array([1.0, 2.0])
    acc.add()
    M.layers[0].step_grad_norms = np.array([3.0, 4.0, 6.0])
    acc.add()
    assert acc.means() == {"lstm_9": {"step_grad_norms": [2.0, 3.0, 6.0]}}
    acc.reset()
    assert acc.means() == {}
    acc.close()
    assert M.layers[0].record_step_grad_norms is False


def test_a_bidirectional_records_both_directions_and_each_is_checked():
    class Rec:
        record_step_grad_norms = False
        step_grad_norms = None

    class Bi:
        name = "bidirectional_1"

        def __init__(self):
            self.layer, self.backward_layer = Rec(), Rec()

    class M:
        layers = [Bi()]

    acc = D._StepNorms(M)
    bi = M.layers[0]
    assert bi.layer.record_step_grad_norms is True and bi.backward_layer.record_step_grad_norms is True
    bi.layer.step_grad_norms = np.array([0.5, 1.0])
    bi.backward_layer.step_grad_norms = np.array([1e-5, 1.0])
    acc.add()
    stats = acc.means()
    assert stats == {"bidirectional_1": {"step_grad_norms": [0.5, 1.0], "backward_step_grad_norms": [1e-5, 1.0]}}
    assert _kinds(stats) == [("vanishing along time", "bidirectional_1 (backward)")]
    acc.close()
    assert bi.layer.record_step_grad_norms is False and bi.backward_layer.record_step_grad_norms is False
