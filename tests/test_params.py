"""The parameter table (fastnn/params.py): rows, offsets, views, locate, decay-first layout, seeded draws."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm, Dense
from fastnn.params import ParameterTable


def _model(dtype="float32"):
    return fnn.Sequential([Dense(4, activation="relu"), BatchNorm(), Dense(3)], input_dim=5, seed=3, dtype=dtype)


def test_rows_cover_the_buffer_decayed_first():
    model = _model()
    table = model.table
    assert table.parameters is model.parameters and table.gradients is model.gradients
    d1, bn, d2 = model.layers
    names = [(r.layer.name, r.name) for r in table.rows]
    # decayed parameters (the Dense weights) first, then the rest, each group in graph order
    assert names == [(d1.name, "weight"), (d2.name, "weight"), (d1.name, "bias"), (bn.name, "weight"),
                     (bn.name, "bias"), (d2.name, "bias")]
    offset = 0
    for r in table.rows:
        assert r.offset == offset and r.size == int(np.prod(r.shape)) and r.trainable
        offset += r.size
    assert offset == model.count_params() == table.size
    assert table.n_decay == 5 * 4 + 4 * 3 == sum(r.size for r in table.rows if r.decay)
    assert [r.decay for r in table.rows] == [True, True, False, False, False, False]


def test_views_are_the_layers_params_at_the_rows():
    model = _model()
    for r in model.table.rows:
        view = r.layer.params[r.name]
        assert view.shape == r.shape
        assert np.shares_memory(view, model.parameters[r.offset:r.offset + r.size])
        assert np.shares_memory(r.layer.grads[r.name], model.gradients[r.offset:r.offset + r.size])
        assert model.table.param(r.layer, r.name) is not None
        np.testing.assert_array_equal(model.table.view(model.parameters, r), view)
        assert model.table.row(r.layer, r.name) is r
        assert model.table.offset(r.layer, r.name) == r.offset
    d1 = model.layers[0]
    assert model.table.segments(d1) == [(0, 20), (32, 4)]
    assert [r.name for r in model.table.rows_of(d1)] == list(d1.params)
    with pytest.raises(KeyError, match="no parameter 'gamma'"):
        model.table.row(d1, "gamma")
    assert model.table.rows_of(fnn.layers.ReLU()) == []


def test_locate():
    model = _model()
    d1, bn, d2 = model.layers
    t = model.table
    assert t.locate(0) == f"{d1.name}.weight[0, 0]"
    assert t.locate(7) == f"{d1.name}.weight[1, 3]"
    assert t.locate(20 + 5) == f"{d2.name}.weight[1, 2]"
    assert t.locate(t.offset(bn, "bias") + 2) == f"{bn.name}.bias[2]"
    assert t.locate(t.size - 1) == f"{d2.name}.bias[2]"
    assert t.locate(t.size) == f"parameter {t.size}"


def test_initialization_is_drawn_in_graph_order_from_the_seed():
    a, b = _model(), _model()
    np.testing.assert_array_equal(a.parameters, b.parameters)
    # the same layers initialized by hand, in graph order, from the model's init generator
    layers = [Dense(4, activation="relu"), BatchNorm(), Dense(3)]
    shape = (5,)
    for layer in layers:
        shape = layer.build(shape)
    ss = np.random.SeedSequence(3)
    init_ss, _, _ = ss.spawn(3)
    table = ParameterTable(layers, np.float32, np.random.Generator(np.random.PCG64(init_ss)))
    np.testing.assert_array_equal(table.parameters, a.parameters)
    np.testing.assert_array_equal(layers[0].weight, a.layers[0].weight)


def test_float64_table():
    model = _model("float64")
    assert model.table.parameters.dtype == np.float64 and model.table.gradients.dtype == np.float64
