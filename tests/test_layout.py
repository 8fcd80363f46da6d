"""The layout of the split model: services reach a Model through public members only."""
import ast
import pathlib

import numpy as np

import fastnn as fnn
from fastnn.layers import Dense, Residual

ROOT = pathlib.Path(fnn.__file__).parent
MODEL_NAMES = {"model", "m", "new", "net", "seq"}     # how the modules name a model they are handed


def _private_model_members():
    """Every underscore name a Model / Sequential has (class attributes and the instance's own)."""
    x = fnn.Input(2)
    models = [fnn.Sequential([Dense(3), Residual(Dense(3))], input_dim=3), fnn.Model(x, Dense(1)(x))]
    models[0].compile("mse")
    names = set()
    for m in models:
        for cls in type(m).__mro__:
            names.update(vars(cls))
        names.update(vars(m))
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def _accesses(tree):
    """(attribute, line) for `<model>._x` and `self.model._x` in a module's AST."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.endswith("__"):
            continue
        v = node.value
        if (isinstance(v, ast.Name) and v.id in MODEL_NAMES) or (isinstance(v, ast.Attribute) and v.attr == "model"):
            yield node.attr, node.lineno


def test_no_module_but_model_py_touches_a_models_private_members():
    private = _private_model_members()
    assert {"_init_common", "_build_graph", "_build_from_data", "_layers"} <= private   # the check can fail
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "model.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for attr, line in _accesses(tree):
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: .{attr}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: .{node.attr} (a Model member)")
    assert not bad, "\n".join(bad)


def test_the_detector_finds_an_access():
    tree = ast.parse("def f(model):\n    return model._plan, self.model._fused, model.loss\n")
    assert sorted(_accesses(tree)) == [("_fused", 2), ("_plan", 2)]


def test_layers_do_not_import_the_model():
    for path in sorted((ROOT / "layers").glob("*.py")) + [ROOT / "graph.py", ROOT / "params.py",
                                                          ROOT / "engine.py"]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "fastnn.model", f"{path.name} imports fastnn.model"
                assert not (node.module == "fastnn" and any(a.name == "model" for a in node.names)), path.name


def test_layer_capabilities_have_defaults():
    from fastnn.layers import BatchNorm, Dropout, ReLU
    plain = [ReLU(), BatchNorm(), Dense(3)]
    for layer in plain:
        assert layer.sublayers() == [] and layer.sublayers_key is None
        assert layer.has_constraint is False
        assert layer.attach_rng(object()) is None and layer.apply_constraint() is None
    inner = [Dense(3), ReLU()]
    res = Residual(inner)
    assert res.sublayers() == inner and res.sublayers() is not res.block and res.sublayers_key == "block"
    drop = Dropout(0.5)
    gen = fnn.Sequential([Dense(3), drop, res], input_dim=3, seed=1).layer_rng
    assert drop._rng is gen and res._rng is gen                 # the model attached its layer generator


def test_dense_constraint_capability():
    d = Dense(2, max_norm=0.5)
    m = fnn.Sequential([d], input_dim=3)
    assert d.has_constraint and not Dense(2).has_constraint
    m.parameters[:] = 10.0
    d.apply_constraint()
    np.testing.assert_allclose(np.linalg.norm(d.weight, axis=0), 0.5, rtol=1e-5)
    m.compile("mse")
    assert m.trainer.constrained == [d]


def test_public_names_keep_their_homes():
    from fastnn import engine, errors, graph, model, params
    from fastnn.training import compiled, sampled, trainer
    assert fnn.NonFiniteError is model.NonFiniteError is errors.NonFiniteError
    assert fnn.Input is model.Input is graph.Input and model.Tensor is graph.Tensor
    assert fnn.History is model.History is fnn.callbacks.History
    m = fnn.Sequential([Dense(2)], input_dim=3)
    assert isinstance(m.graph, graph.Graph) and isinstance(m.table, params.ParameterTable)
    assert isinstance(m.engine, engine.Executor) and isinstance(m.trainer, trainer.Trainer)
    assert callable(compiled.fit_epoch) and sampled.SampledOutput
