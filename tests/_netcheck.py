"""Helpers for the graph / layer tests: gradient checks of whole models and of layers used on their own."""
import numpy as np

try:
    from tests._gradcheck import assert_grad_close, numeric_grad
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from _gradcheck import assert_grad_close, numeric_grad


def check_model_grads(model, X, seed=0, rtol=1e-6, atol=1e-8, training=True):
    """Check model.gradients (after one backward of L = sum(out * R)) against central differences over
    model.parameters, in float64.  The model must be deterministic in the chosen mode."""
    assert model.dtype == np.float64
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((X.shape[0],) + tuple(model.output_shape))

    def f(_):
        return float(np.sum(model.engine.forward(X, training) * R))

    model.engine.forward(X, training)
    model.engine.backward(R.copy())
    analytic = model.gradients.copy()
    numeric = numeric_grad(f, model.parameters)
    assert_grad_close(analytic, numeric, rtol=rtol, atol=atol)
    return analytic


def standalone(layer, input_shape, dtype=np.float64, seed=0):
    """Build `layer` outside a model: parameters from its ParamSpecs in private arrays."""
    rng = np.random.default_rng(seed)
    layer.build(input_shape)
    params, grads = {}, {}
    for spec in layer.param_specs():
        params[spec.name] = np.ascontiguousarray(spec.initialize(rng), dtype=dtype)
        grads[spec.name] = np.zeros(spec.shape, dtype=dtype)
    layer._bind(params, grads, dtype)
    return layer
