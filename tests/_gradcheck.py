"""Gradient checking: central differences in float64, and a comparison that refuses an all-zero gradient.

    numeric = numeric_grad(lambda x: loss_of(x), x)    # perturbs x in place, one element at a time
    assert_grad_close(analytic, numeric)

A broken backward that writes zeros (or nothing into a zero-filled buffer) would match the numeric gradient
of a function that happens to be flat; ``assert_grad_close`` therefore fails on an all-zero analytic
gradient, so every test must pick inputs where the gradient is not identically zero.
"""
import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for every element i of x.

    ``x`` must be a contiguous float64 array; ``f(x)`` returns a float.  x is perturbed in place, one
    element at a time, and restored exactly, so f may also read x through a closure.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64 or not x.flags.c_contiguous:
        raise TypeError("numeric_grad: x must be a C-contiguous float64 numpy array")
    grad = np.empty_like(x)
    flat = x.reshape(-1)            # a view: x is perturbed through it
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = float(f(x))
        flat[i] = old - eps
        f_minus = float(f(x))
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def assert_grad_close(analytic, numeric, rtol=1e-6, atol=1e-8):
    """Assert analytic == numeric within tolerance, and that the analytic gradient is not all zeros."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, f"gradient shapes differ: {analytic.shape} vs {numeric.shape}"
    assert analytic.size > 0, "empty gradient: nothing was checked"
    assert np.all(np.isfinite(analytic)), "analytic gradient has non-finite values"
    assert np.any(analytic != 0), "analytic gradient is all zeros (a broken backward must not pass)"
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)
