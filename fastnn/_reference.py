"""Plain-numpy versions of fastnn's compiled kernels: the test oracle.

Every function here (but the recurrent-layer pair at the end, see there) has the same name, signature and
semantics as its twin in ``fastnn._core`` (the same arguments, the same OUT buffers written in place, the same
return values, the same ``ValueError`` on bad shapes), but is written straight from the math with whole-array
numpy operations rather than by copying the Cython loops, so that the tests can compare the two. ``n_threads`` is
accepted and ignored.

Nothing in the library calls this module; it is slow on purpose (clarity over speed) and not a public API.

Precision: the forward, backward and loss math is done in float64 and the result is rounded once to the
dtype of the OUT buffer, so for float32 this is the correctly rounded answer that the kernels approximate.
The optimizer updates are done in the dtype of the buffers, as torch.optim does.

Numerics: every log-sum-exp is shifted by its row max, the sigmoid is evaluated through ``exp(-|z|)`` and
softplus as ``max(z, 0) + log1p(exp(-|z|))``, so logits of +-1000 give finite values and no warnings.

Kinds: the numbers of the kind table (csrc/fnn_kinds.h, read through its Python mirror fastnn._core.kinds):
    activations (ACT): identity, relu, leaky_relu (slope ``alpha`` below 0), sigmoid, tanh, gelu, gelu_tanh, silu,
                 elu (``alpha``), selu, softplus, mish, softmax (over each row); the definitions of
                 torch.nn.functional, from their textbook forms (erf, tanh, exp), overflow kept out by clamps only
    regression_loss (LOSS): "l2" (sum of squares, no 1/2), "mse" (mean of squares), "mae" (mean absolute)
Only the numbering is shared with the kernels; the math here is written independently.
"""
import math

import numpy as np

from fastnn._core.kinds import ACT, LOSS

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, SOFTMAX = (ACT.IDENTITY, ACT.RELU, ACT.LEAKY_RELU, ACT.SIGMOID, ACT.TANH,
                                                      ACT.SOFTMAX)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
L2, MSE, MAE = LOSS.L2, LOSS.MSE, LOSS.MAE

__all__ = [
    "activation_forward", "activation_backward", "dense_forward", "dense_backward", "conv2d_forward",
    "conv2d_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_soft", "sigmoid_binary_cross_entropy", "regression_loss",
    "sgd_step", "adagrad_step", "rmsprop_step", "adam_step", "gemm",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "rnn_layer_forward", "rnn_layer_backward",
]


# ------------------------------------------------------------------------------------------- helpers
def _shape_check(fn, what, got, want):
    if tuple(got) != tuple(want):
        raise ValueError(f"{fn}: {what} has shape {tuple(got)}, expected {tuple(want)}")


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _sigmoid(z):
    """1 / (1 + e^-z) without overflow: e^-|z| never exceeds 1."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(z):
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|)."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _logsumexp_rows(z):
    """log sum_j e^z_ij for each row i, shifted by the row max."""
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def _softmax_rows(z):
    """e^z_ij / sum_j e^z_ij for each row, shifted by the row max."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _erf(z):
    """erf elementwise (math.erf: numpy has none)."""
    return np.vectorize(math.erf, otypes=[np.float64])(z) if z.size else z.copy()


def _gelu_tanh_parts(z):
    """t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) and x, for x = z clipped to +-50 (t is +-1 there already)."""
    x = np.clip(z, -50.0, 50.0)
    return np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)), x


def _neg(z):
    """min(z, 0): the argument of exp in the negative branch of elu / selu (no overflow in the other branch)."""
    return np.minimum(z, 0.0)


# kind -> (f(z, alpha), dz(z, y, dy, alpha)) for the activations beyond the five above, straight from the formulas
_MORE = {
    ACT.GELU: (lambda z, a: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0))),
               lambda z, y, dy, a: dy * (0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
                                         + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))),
    ACT.GELU_TANH: (lambda z, a: 0.5 * z * (1.0 + _gelu_tanh_parts(z)[0]),
                    lambda z, y, dy, a: dy * _gelu_tanh_grad(z)),
    ACT.SILU: (lambda z, a: z * _sigmoid(z),
               lambda z, y, dy, a: dy * (_sigmoid(z) + z * _sigmoid(z) * (1.0 - _sigmoid(z)))),
    ACT.ELU: (lambda z, a: np.where(z > 0, z, a * np.expm1(_neg(z))),
              lambda z, y, dy, a: np.where(z > 0, dy, dy * a * np.exp(_neg(z)))),
    ACT.SELU: (lambda z, a: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(_neg(z))),
               lambda z, y, dy, a: SELU_SCALE * np.where(z > 0, dy, dy * SELU_ALPHA * np.exp(_neg(z)))),
    ACT.SOFTPLUS: (lambda z, a: np.where(z > 20.0, z, _softplus(z)),
                   lambda z, y, dy, a: np.where(z > 20.0, dy, dy * _sigmoid(z))),
    ACT.MISH: (lambda z, a: z * np.tanh(_softplus(z)),
               lambda z, y, dy, a: dy * (np.tanh(_softplus(z))
                                         + z * _sigmoid(z) * (1.0 - np.tanh(_softplus(z)) ** 2))),
}


def _gelu_tanh_grad(z):
    t, x = _gelu_tanh_parts(z)
    k = math.sqrt(2.0 / math.pi)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)


def _check_kind(kind):
    if kind not in set(ACT):
        raise ValueError(f"unknown activation kind {kind}")


def _act(kind, z, alpha):
    """act(z) in float64, z a float64 (n, k) array."""
    if kind == IDENTITY:
        return z.copy()
    if kind == RELU:
        return np.where(z > 0, z, 0.0)
    if kind == LEAKY_RELU:
        return np.where(z > 0, z, alpha * z)
    if kind == SIGMOID:
        return _sigmoid(z)
    if kind == TANH:
        return np.tanh(z)
    if kind in _MORE:
        return _MORE[kind][0](z, alpha)
    if kind == SOFTMAX:
        return z.copy() if z.shape[1] == 0 else _softmax_rows(z)
    raise ValueError(f"unknown activation kind {kind}")


def _act_grad(kind, z, y, dy, alpha):
    """dL/dz given dL/dy = dy, the forward's input z and output y (float64)."""
    if kind == IDENTITY:
        return dy.copy()
    if kind == RELU:
        return np.where(z > 0, dy, 0.0)
    if kind == LEAKY_RELU:
        return np.where(z > 0, dy, alpha * dy)
    if kind == SIGMOID:      # sigma' = sigma (1 - sigma)
        return dy * y * (1.0 - y)
    if kind == TANH:         # tanh' = 1 - tanh^2
        return dy * (1.0 - y * y)
    if kind in _MORE:
        return _MORE[kind][1](z, y, dy, alpha)
    if kind == SOFTMAX:      # J = diag(y) - y y^T (symmetric), so dz = J dy = y * (dy - <y, dy>)
        return y * (dy - (y * dy).sum(axis=1, keepdims=True))
    raise ValueError(f"unknown activation kind {kind}")


# --------------------------------------------------------------------------------------- activations
def activation_forward(kind, Z, Y, alpha=0.0, n_threads=1):
    """Y = act(Z) (OUT), row-wise for softmax.  Z and Y have the same shape; Y may be Z."""
    _check_kind(kind)
    _shape_check("activation_forward", "Y", Y.shape, Z.shape)
    Y[...] = _act(kind, _f64(Z), alpha)


def activation_backward(kind, Z, Y, dY, dZ, alpha=0.0, n_threads=1):
    """dZ = dY * act'(Z) (OUT); Z, Y are the forward's input and output, dY the gradient w.r.t. Y."""
    _check_kind(kind)
    for name, a in (("Y", Y), ("dY", dY), ("dZ", dZ)):
        _shape_check("activation_backward", name, a.shape, Z.shape)
    dZ[...] = _act_grad(kind, _f64(Z), _f64(Y), _f64(dY), alpha)


# --------------------------------------------------------------------------------------------- dense
def dense_forward(X, W, b, Z, Y, act=IDENTITY, alpha=0.0, n_threads=1):
    """Z = X.W + b (OUT), Y = act(Z) (OUT; may be Z for the identity).  b may be None."""
    _check_kind(act)
    n, n_in = X.shape
    n_out = W.shape[1]
    _shape_check("dense", "W", W.shape, (n_in, n_out))
    _shape_check("dense", "Z", Z.shape, (n, n_out))
    _shape_check("dense", "Y", Y.shape, (n, n_out))
    if b is not None:
        _shape_check("dense", "b", b.shape, (n_out,))
    z = _f64(X) @ _f64(W)
    if b is not None:
        z = z + _f64(b)
    Z[...] = z
    Y[...] = _act(act, _f64(Z), alpha)


def dense_backward(X, W, Z, Y, dY, dZ, dX, dW, db, act=IDENTITY, alpha=0.0, n_threads=1):
    """Backward of dense_forward: dZ = dY * act'(Z) (OUT, not written for the identity), dW = X^T dZ,
    db = column sums of dZ (None: no bias), dX = dZ W^T (None: not needed)."""
    _check_kind(act)
    n, n_in = X.shape
    n_out = W.shape[1]
    _shape_check("dense", "W", W.shape, (n_in, n_out))
    _shape_check("dense", "dW", dW.shape, (n_in, n_out))
    for name, a in (("Z", Z), ("Y", Y), ("dY", dY), ("dZ", dZ)):
        _shape_check("dense", name, a.shape, (n, n_out))
    if dX is not None:
        _shape_check("dense", "dX", dX.shape, (n, n_in))
    if db is not None:
        _shape_check("dense", "db", db.shape, (n_out,))
    if act == IDENTITY:
        g = _f64(dY)
    else:
        dZ[...] = _act_grad(act, _f64(Z), _f64(Y), _f64(dY), alpha)
        g = _f64(dZ)
    dW[...] = _f64(X).T @ g
    if db is not None:
        db[...] = g.sum(axis=0)
    if dX is not None:
        dX[...] = g @ _f64(W).T


# ---------------------------------------------------------------------------------------------- conv
def _conv_check(fn, X, W, Z, strides, dilation, padding, groups):
    """The output size of the convolution, checked as conv.pyx checks it."""
    n, h, w, c = X.shape
    kh, kw, cg, f = W.shape
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = strides, dilation, padding
    if c % groups or f % groups or cg != c // groups:
        raise ValueError(f"{fn}: W has shape {W.shape}, expected {(kh, kw, c // groups, f)} "
                         f"(channels {c}, filters {f}, groups {groups})")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    _shape_check(fn, "Z", Z.shape, (n, oh, ow, f))
    return oh, ow


def _conv_taps(X, kh, kw, strides, dilation, padding, oh, ow):
    """[(ky, kx, Xs)]: Xs (n, oh, ow, c) is the input pixel that tap (ky, kx) of every output pixel reads, taken
    from the zero-padded input by strided slicing (float64)."""
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = strides, dilation, padding
    Xp = np.pad(_f64(X), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return [(ky, kx, Xp[:, ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw, :])
            for ky in range(kh) for kx in range(kw)]


def conv2d_forward(X, W, b, Z, Y, strides, dilation, padding, groups, scratch, act=IDENTITY, alpha=0.0,
                   n_threads=1, counts=None):
    """Z = conv(X, W) + b (OUT), Y = act(Z) (OUT): X (N, H, W, C), W (kh, kw, C/groups, F), padding
    (top, bottom, left, right) of zeros; output channel f of group q = f // (F/groups) sums over the input
    channels of group q.  scratch and counts are accepted and ignored (no workspace here; no unit counters)."""
    _check_kind(act)
    oh, ow = _conv_check("conv2d_forward", X, W, Z, strides, dilation, padding, groups)
    kh, kw, cg, f = W.shape
    fg = f // groups
    z = np.zeros(Z.shape)
    for ky, kx, Xs in _conv_taps(X, kh, kw, strides, dilation, padding, oh, ow):
        for q in range(groups):
            z[..., q * fg:(q + 1) * fg] += Xs[..., q * cg:(q + 1) * cg] @ _f64(W[ky, kx, :, q * fg:(q + 1) * fg])
    if b is not None:
        z = z + _f64(b)
    Z[...] = z
    Y[...] = _act(act, z.reshape(-1, f), alpha).reshape(Z.shape)


def conv2d_backward(X, W, Z, Y, dY, dZ, dX, dW, db, strides, dilation, padding, groups, scratch, act=IDENTITY,
                    alpha=0.0, n_threads=1):
    """Backward of conv2d_forward: dZ = dY * act'(Z) (OUT, not written for the identity), dW, db (None: no
    bias), dX (None: not needed), each the adjoint of the forward's sums."""
    _check_kind(act)
    oh, ow = _conv_check("conv2d_backward", X, W, Z, strides, dilation, padding, groups)
    kh, kw, cg, f = W.shape
    fg = f // groups
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = strides, dilation, padding
    if act == IDENTITY:
        g = _f64(dY)
    else:
        dZ[...] = _act_grad(act, _f64(Z).reshape(-1, f), _f64(Y).reshape(-1, f), _f64(dY).reshape(-1, f),
                            alpha).reshape(Z.shape)
        g = _f64(dZ)
    n, h, w, c = X.shape
    dXp = np.zeros((n, h + pt + pb, w + pl + pr, c))
    dw_ = np.zeros(W.shape)
    for ky, kx, Xs in _conv_taps(X, kh, kw, strides, dilation, padding, oh, ow):
        sl = (slice(None), slice(ky * dh, ky * dh + (oh - 1) * sh + 1, sh),
              slice(kx * dw, kx * dw + (ow - 1) * sw + 1, sw))
        for q in range(groups):
            gq = g[..., q * fg:(q + 1) * fg].reshape(-1, fg)
            dw_[ky, kx, :, q * fg:(q + 1) * fg] = Xs[..., q * cg:(q + 1) * cg].reshape(-1, cg).T @ gq
            dXp[sl + (slice(q * cg, (q + 1) * cg),)] += (gq @ _f64(W[ky, kx, :, q * fg:(q + 1) * fg]).T).reshape(
                n, oh, ow, cg)
    dW[...] = dw_
    if db is not None:
        db[...] = g.reshape(-1, f).sum(axis=0)
    if dX is not None:
        dX[...] = dXp[:, pt:pt + h, pl:pl + w, :]


def gemm(trans_a, trans_b, alpha, A, B, beta, C):
    """C := alpha * op(A).op(B) + beta * C (OUT), the twin of fastnn._core._threads.gemm."""
    a = _f64(A).T if trans_a else _f64(A)
    b = _f64(B).T if trans_b else _f64(B)
    if a.shape[1] != b.shape[0] or C.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"gemm: op(A) is {a.shape}, op(B) is {b.shape}, C is {C.shape}")
    c = alpha * (a @ b)
    if beta != 0:       # as in BLAS, beta = 0 means C is not read (NaN in C does not propagate)
        c = c + beta * _f64(C)
    C[...] = c


# -------------------------------------------------------------------------------------------- losses
def _loss_shapes(fn, a_name, A, b_name, B_shape, grad):
    if tuple(A.shape) != tuple(B_shape):
        raise ValueError(f"{fn}: {a_name} has shape {tuple(A.shape)} but {b_name} has shape {tuple(B_shape)}")
    if grad is not None and grad.shape != A.shape:
        raise ValueError(f"{fn}: {a_name} has shape {tuple(A.shape)} but gradient has shape {grad.shape}")


def softmax_cross_entropy(Z, labels, dZ=None):
    """mean_i [logsumexp(z_i) - z_i[y_i]] of logits Z (n, k), integer labels (n,) in [0, k).

    dZ (OUT, or None) = (softmax(z_i) - onehot(y_i)) / n.  Returns (loss, number of rows whose argmax is
    the label); (nan, 0) for n = 0.
    """
    n, k = Z.shape
    labels = np.asarray(labels)
    _loss_shapes("softmax_cross_entropy", "logits", Z, "labels", (labels.shape[0], k), dZ)
    if n == 0:
        return float("nan"), 0
    if k == 0:
        raise ValueError("softmax_cross_entropy: logits have 0 classes")
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"softmax_cross_entropy: label {labels[i]} at row {i} is outside [0, {k})")
    z = _f64(Z)
    rows = np.arange(n)
    lse = _logsumexp_rows(z)
    loss = float(np.mean(lse - z[rows, labels]))
    if dZ is not None:
        g = _softmax_rows(z)
        g[rows, labels] -= 1.0
        dZ[...] = g / n
    return loss, int(np.sum(np.argmax(z, axis=1) == labels))


def softmax_cross_entropy_soft(Z, T, dZ=None):
    """mean_i sum_k t_ik [logsumexp(z_i) - z_ik] against probability rows T (n, k).

    dZ (OUT, or None) = (softmax(z_i) * sum_k t_ik - t_i) / n (torch's soft-target CrossEntropyLoss).
    Terms with t_ik = 0 contribute exactly 0.  n_correct: rows where argmax z = argmax t.
    """
    n, k = Z.shape
    _loss_shapes("softmax_cross_entropy", "logits", Z, "targets", T.shape, dZ)
    if n == 0:
        return float("nan"), 0
    if k == 0:
        raise ValueError("softmax_cross_entropy: logits have 0 classes")
    z, t = _f64(Z), _f64(T)
    lse = _logsumexp_rows(z)
    terms = np.where(t != 0, t * (lse[:, None] - z), 0.0)
    loss = float(terms.sum() / n)
    if dZ is not None:
        dZ[...] = (_softmax_rows(z) * t.sum(axis=1, keepdims=True) - t) / n
    return loss, int(np.sum(np.argmax(z, axis=1) == np.argmax(t, axis=1)))


def sigmoid_binary_cross_entropy(Z, T, dZ=None):
    """mean over all N elements of softplus(z) - t z (BCEWithLogitsLoss); dZ (OUT, or None) = (sigmoid(z) - t) / N.

    n_correct: elements where (z > 0) == (t > 0.5).  (nan, 0) when N = 0.
    """
    _loss_shapes("binary_cross_entropy", "logits", Z, "targets", T.shape, dZ)
    N = Z.size
    if N == 0:
        return float("nan"), 0
    z, t = _f64(Z), _f64(T)
    loss = float(np.mean(_softplus(z) - t * z))
    if dZ is not None:
        dZ[...] = (_sigmoid(z) - t) / N
    return loss, int(np.sum((z > 0) == (t > 0.5)))


def regression_loss(kind, P, T, dP=None):
    """kind 0 "l2": sum (p - t)^2, gradient 2 (p - t); 1 "mse": mean (p - t)^2, gradient 2 (p - t) / N;
    2 "mae": mean |p - t|, gradient sign(p - t) / N with sign(0) = 0.  Returns (loss, 0); for N = 0 the
    loss is 0.0 for "l2" and nan otherwise."""
    if kind not in (L2, MSE, MAE):
        raise ValueError(f"regression_loss: unknown kind {kind}")
    _loss_shapes("regression_loss", "predictions", P, "targets", T.shape, dP)
    N = P.size
    if N == 0:
        return (0.0 if kind == L2 else float("nan")), 0
    d = _f64(P) - _f64(T)
    if kind == L2:
        loss, grad = np.sum(d * d), 2.0 * d
    elif kind == MSE:
        loss, grad = np.mean(d * d), 2.0 * d / N
    else:
        loss, grad = np.mean(np.abs(d)), np.sign(d) / N
    if dP is not None:
        dP[...] = grad
    return float(loss), 0


# ---------------------------------------------------------------------------------------- optimizers
def _opt_sizes(fn, p, arrays):
    for name, a in arrays.items():
        if a is not None and a.shape[0] != p.shape[0]:
            raise ValueError(f"{fn}: {name} has {a.shape[0]} elements, the parameters have {p.shape[0]}")


def _decayed_grad(p, g, weight_decay, n_decay):
    """g + weight_decay * p on elements [0, n_decay), g elsewhere (a new array)."""
    d = np.array(g, copy=True)
    nd = max(0, min(int(n_decay), p.shape[0]))
    d[:nd] += weight_decay * p[:nd]
    return d


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first, n_decay, n_threads=1):
    """torch.optim.SGD, one step.  p (IN/OUT), g (IN), buf (IN/OUT momentum buffer, None: no momentum).

    d = g + wd p;  buf = d on the first step, else momentum buf + (1 - dampening) d;
    d = d + momentum buf (nesterov) or buf;  p -= lr d.
    """
    _opt_sizes("sgd_step", p, {"g": g, "buf": buf})
    d = _decayed_grad(p, g, weight_decay, n_decay)
    if buf is not None:
        if first:
            buf[...] = d
        else:
            buf[...] = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf.copy()
    p[...] = p - lr * d


def adagrad_step(p, g, state_sum, clr, weight_decay, eps, n_decay, n_threads=1):
    """torch.optim.Adagrad, one step at the decayed rate clr = lr / (1 + (step - 1) lr_decay).

    d = g + wd p;  state_sum += d^2;  p -= clr d / (sqrt(state_sum) + eps).
    """
    _opt_sizes("adagrad_step", p, {"g": g, "state_sum": state_sum})
    d = _decayed_grad(p, g, weight_decay, n_decay)
    state_sum[...] = state_sum + d * d
    p[...] = p - clr * d / (np.sqrt(state_sum) + eps)


def rmsprop_step(p, g, square_avg, grad_avg, buf, lr, alpha, eps, weight_decay, momentum, n_decay,
                 n_threads=1):
    """torch.optim.RMSprop, one step.  grad_avg: None unless centered; buf: None unless momentum > 0.

    d = g + wd p;  v = alpha v + (1 - alpha) d^2;  centered: a = alpha a + (1 - alpha) d, den = sqrt(v - a^2) + eps,
    else den = sqrt(v) + eps;  momentum: buf = momentum buf + d / den, p -= lr buf;  else p -= lr d / den.
    """
    _opt_sizes("rmsprop_step", p, {"g": g, "square_avg": square_avg, "grad_avg": grad_avg, "buf": buf})
    d = _decayed_grad(p, g, weight_decay, n_decay)
    square_avg[...] = alpha * square_avg + (1 - alpha) * d * d
    if grad_avg is not None:
        grad_avg[...] = alpha * grad_avg + (1 - alpha) * d
        den = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        den = np.sqrt(square_avg) + eps
    if buf is not None:
        buf[...] = momentum * buf + d / den
        p[...] = p - lr * buf
    else:
        p[...] = p - lr * d / den


def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step,
              n_decay, n_threads=1):
    """torch.optim.Adam (decoupled=False: d = g + wd p) or AdamW (decoupled=True: p *= 1 - lr wd), one step
    at step number ``step`` >= 1.  max_exp_avg_sq: None unless amsgrad.

    m = beta1 m + (1 - beta1) d;  v = beta2 v + (1 - beta2) d^2;  amsgrad: vmax = max(vmax, v), use vmax;
    p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
    """
    _opt_sizes("adam_step", p, {"g": g, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                                "max_exp_avg_sq": max_exp_avg_sq})
    if step < 1:
        raise ValueError(f"adam_step: step must be >= 1, got {step}")
    if decoupled:
        nd = max(0, min(int(n_decay), p.shape[0]))
        p[:nd] = p[:nd] * (1 - lr * weight_decay)
        d = np.array(g, copy=True)
    else:
        d = _decayed_grad(p, g, weight_decay, n_decay)
    exp_avg[...] = beta1 * exp_avg + (1 - beta1) * d
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * d * d
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    p[...] = p - (lr / bias_correction1) * exp_avg / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)


# ------------------------------------------------------------------------------------------------ pooling
def _pool_windows(fn, xshape, yshape, ph, pw, sh, sw, pt, pl):
    """Each output position's window as (oh, ow, row slice, column slice), clipped to the image: the padded
    positions (pt rows at the top, pl columns at the left, the rest at the bottom/right) are left out."""
    N, H, W, C = xshape
    if yshape[0] != N or yshape[3] != C:
        raise ValueError(f"{fn}: X has shape {tuple(xshape)} and Y {tuple(yshape)}: batch and channels must match")
    if not (0 <= pt < ph and 0 <= pl < pw):
        raise ValueError(f"{fn}: padding must satisfy 0 <= pad < pool size, got pads ({pt}, {pl}) for pool "
                         f"({ph}, {pw})")
    out = []
    for oh in range(yshape[1]):
        rows = slice(max(oh * sh - pt, 0), min(oh * sh - pt + ph, H))
        for ow in range(yshape[2]):
            cols = slice(max(ow * sw - pl, 0), min(ow * sw - pl + pw, W))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                raise ValueError(f"{fn}: window ({oh}, {ow}) holds no input")
            out.append((oh, ow, rows, cols))
    return out


def max_pool2d_forward(X, Y, argmax, ph, pw, sh, sw, pt, pl, n_threads=1):
    """Channels-last max pooling: Y[n, oh, ow, c] = the max of the window's real inputs; argmax = ih * W + iw of
    the first maximum in row-major window order (np.argmax: the first of equal values, and the first NaN)."""
    N, H, W, C = X.shape
    for oh, ow, rows, cols in _pool_windows("max_pool2d_forward", X.shape, Y.shape, ph, pw, sh, sw, pt, pl):
        win = np.asarray(X[:, rows, cols, :]).reshape(N, -1, C)
        k = np.argmax(win, axis=1)                                   # (N, C), into the clipped window
        ncols = cols.stop - cols.start
        Y[:, oh, ow, :] = np.take_along_axis(win, k[:, None, :], axis=1)[:, 0, :]
        argmax[:, oh, ow, :] = (rows.start + k // ncols) * W + cols.start + k % ncols


def max_pool2d_backward(dY, argmax, dX, ph, pw, sh, sw, pt, pl, n_threads=1):
    """dX = zeros plus each dY at its window's argmax position (np.add.at: overlapping windows add)."""
    N, H, W, C = dX.shape
    grad = np.zeros((N, H * W, C), dtype=np.float64)
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for oh, ow, _, _ in _pool_windows("max_pool2d_backward", dX.shape, dY.shape, ph, pw, sh, sw, pt, pl):
        np.add.at(grad, (n_idx, argmax[:, oh, ow, :], c_idx), dY[:, oh, ow, :])
    dX[...] = grad.reshape(N, H, W, C)


def avg_pool2d_forward(X, Y, ph, pw, sh, sw, pt, pl, n_threads=1):
    """Channels-last average pooling over each window's real inputs only (Keras' "same"; count_include_pad=False)."""
    for oh, ow, rows, cols in _pool_windows("avg_pool2d_forward", X.shape, Y.shape, ph, pw, sh, sw, pt, pl):
        Y[:, oh, ow, :] = _f64(X[:, rows, cols, :]).mean(axis=(1, 2))


def avg_pool2d_backward(dY, dX, ph, pw, sh, sw, pt, pl, n_threads=1):
    """dX = the sum over the windows holding each input of dY / (the window's count of real inputs)."""
    grad = np.zeros(dX.shape, dtype=np.float64)
    for oh, ow, rows, cols in _pool_windows("avg_pool2d_backward", dX.shape, dY.shape, ph, pw, sh, sw, pt, pl):
        count = (rows.stop - rows.start) * (cols.stop - cols.start)
        grad[:, rows, cols, :] += _f64(dY[:, oh, ow, :])[:, None, None, :] / count
    dX[...] = grad


# ------------------------------------------------------------------------------------------- recurrent layers
# Unlike the functions above these are not twins of a kernel entry point: they take a whole recurrent layer's
# arguments (as SimpleRNN / LSTM / GRU hold them) and return new float64 arrays.  cell: "rnn", "lstm" or "gru".
# PyTorch's math, with a = x W_ih + b_ih and b = h W_hh + b_hh split into G column blocks of `units`:
#     rnn   h' = act(a + b)                                   (act "tanh" or "relu")
#     lstm  i, f, g, o = sig(a+b)[0], sig(a+b)[1], tanh(a+b)[2], sig(a+b)[3];  c' = f c + i g;  h' = o tanh(c')
#     gru   r, z = sig(a+b)[0], sig(a+b)[1];  n = tanh(a[2] + r b[2]);  h' = (1 - z) n + z h
# Processing step s reads time t = s (T-1-s with go_backwards); Y[:, s] is the state after step s (a
# go_backwards sequence is returned reversed, as Keras).  mask (N, T) bool: at a masked (row, time) the state is
# carried unchanged (Y holds the carried state) and the step gets no gradient.
_RNN_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _rnn_step(cell, act, x, h, c, W_ih, W_hh, b_ih, b_hh):
    """One cell step on a batch: returns (h', c', cache) (c' None unless lstm)."""
    a = x @ W_ih + b_ih
    b = h @ W_hh + b_hh
    if cell == "rnn":
        h_new = np.tanh(a + b) if act == "tanh" else np.maximum(a + b, 0.0)
        return h_new, None, (x, h, h_new, a + b)
    if cell == "lstm":
        i, f, g, o = np.split(a + b, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return h_new, c_new, (x, h, c, i, f, g, o, c_new)
    a_r, a_z, a_n = np.split(a, 3, axis=1)
    b_r, b_z, b_n = np.split(b, 3, axis=1)
    r, z = _sigmoid(a_r + b_r), _sigmoid(a_z + b_z)
    n = np.tanh(a_n + r * b_n)
    return (1.0 - z) * n + z * h, None, (x, h, r, z, n, b_n)


def _rnn_step_backward(cell, act, cache, dh, dc, W_ih, W_hh):
    """Backward of one step given dL/dh' (and dL/dc'): returns (dx, dh, dc, da, db), da / db the gradients of the
    pre-activations a = x W_ih + b_ih and b = h W_hh + b_hh (dc None unless lstm)."""
    if cell == "rnn":
        x, h, h_new, pre = cache
        da = dh * (1.0 - h_new ** 2) if act == "tanh" else dh * (pre > 0)
        db, dc_prev, dh_direct = da, None, 0.0
    elif cell == "lstm":
        x, h, c, i, f, g, o, c_new = cache
        tc = np.tanh(c_new)
        dc_tot = dc + dh * o * (1.0 - tc ** 2)
        di, df, dg, do = dc_tot * g, dc_tot * c, dc_tot * i, dh * tc
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)], axis=1)
        db, dc_prev, dh_direct = da, dc_tot * f, 0.0
    else:
        x, h, r, z, n, b_n = cache
        dn = dh * (1.0 - z) * (1.0 - n ** 2)          # gradient of n's pre-activation a_n + r b_n
        dz = dh * (h - n) * z * (1.0 - z)
        dr = dn * b_n * r * (1.0 - r)
        da = np.concatenate([dr, dz, dn], axis=1)
        db = np.concatenate([dr, dz, dn * r], axis=1)
        dc_prev, dh_direct = None, dh * z           # h' also holds z h directly
    dx = da @ W_ih.T
    dh_prev = db @ W_hh.T + dh_direct
    return dx, dh_prev, dc_prev, da, db


def _rnn_run(cell, X, W_ih, W_hh, b_ih, b_hh, h0, c0, mask, go_backwards, activation):
    X, W_ih, W_hh, b_ih, b_hh = map(_f64, (X, W_ih, W_hh, b_ih, b_hh))
    if cell not in _RNN_GATES:
        raise ValueError(f"rnn_layer: cell must be 'rnn', 'lstm' or 'gru', got {cell!r}")
    N, T, F = X.shape
    U = W_hh.shape[0]
    G = _RNN_GATES[cell]
    for what, arr, shape in (("W_ih", W_ih, (F, G * U)), ("W_hh", W_hh, (U, G * U)), ("b_ih", b_ih, (G * U,)),
                             ("b_hh", b_hh, (G * U,))):
        _shape_check("rnn_layer", what, arr.shape, shape)
    h = np.zeros((N, U)) if h0 is None else _f64(h0).copy()
    c = (np.zeros((N, U)) if c0 is None else _f64(c0).copy()) if cell == "lstm" else None
    m_all = np.ones((N, T), bool) if mask is None else np.asarray(mask, bool)
    times = list(range(T))[::-1] if go_backwards else list(range(T))
    Y = np.zeros((N, T, U))
    steps = []                                                   # (t, row mask (N, 1), cache) per step
    for s, t in enumerate(times):
        h_new, c_new, cache = _rnn_step(cell, activation, X[:, t], h, c, W_ih, W_hh, b_ih, b_hh)
        m = m_all[:, t][:, None]
        h = np.where(m, h_new, h)
        if cell == "lstm":
            c = np.where(m, c_new, c)
        Y[:, s] = h
        steps.append((t, m, cache))
    return Y, h, c, steps, (X, W_ih, W_hh)


def rnn_layer_forward(cell, X, W_ih, W_hh, b_ih, b_hh, h0=None, c0=None, mask=None, go_backwards=False,
                      activation="tanh"):
    """A recurrent layer's forward pass over X (N, T, F): returns (Y, h_last, c_last), Y (N, T, units) the state
    after each processing step, h_last / c_last (N, units) the final states (c_last None unless lstm)."""
    Y, h, c, _, _ = _rnn_run(cell, X, W_ih, W_hh, b_ih, b_hh, h0, c0, mask, go_backwards, activation)
    return Y, h, c


def rnn_layer_backward(cell, X, W_ih, W_hh, b_ih, b_hh, dY, dh_last=None, dc_last=None, h0=None, c0=None,
                       mask=None, go_backwards=False, activation="tanh"):
    """Backpropagation through time of rnn_layer_forward for the loss sum(Y * dY) + sum(h_last * dh_last)
    (+ sum(c_last * dc_last)); dY (N, T, units) or None.  Returns (dX, dW_ih, dW_hh, db_ih, db_hh, dh0, dc0),
    dc0 None unless lstm."""
    Y, h, c, steps, (X, W_ih, W_hh) = _rnn_run(cell, X, W_ih, W_hh, b_ih, b_hh, h0, c0, mask, go_backwards,
                                               activation)
    N, T, _ = X.shape
    dY = np.zeros(Y.shape) if dY is None else _f64(dY)
    dh = np.zeros(h.shape) if dh_last is None else _f64(dh_last).copy()
    dc = (np.zeros(h.shape) if dc_last is None else _f64(dc_last).copy()) if cell == "lstm" else None
    dX, dW_ih, dW_hh = np.zeros(X.shape), np.zeros(W_ih.shape), np.zeros(W_hh.shape)
    db_ih, db_hh = np.zeros(W_ih.shape[1]), np.zeros(W_hh.shape[1])
    for s in range(T - 1, -1, -1):
        t, m, cache = steps[s]
        dh = dh + dY[:, s]
        # state = m * cell output + (1 - m) * previous state: a masked row passes its gradient straight through
        dh_cell, dc_cell = np.where(m, dh, 0.0), (np.where(m, dc, 0.0) if cell == "lstm" else None)
        dx, dh_prev, dc_prev, da, db = _rnn_step_backward(cell, activation, cache, dh_cell, dc_cell, W_ih, W_hh)
        x, h_prev = cache[0], cache[1]
        dX[:, t] = dx
        dW_ih += x.T @ da
        dW_hh += h_prev.T @ db
        db_ih += da.sum(axis=0)
        db_hh += db.sum(axis=0)
        dh = np.where(m, dh_prev, dh)
        if cell == "lstm":
            dc = np.where(m, dc_prev, dc)
    return dX, dW_ih, dW_hh, db_ih, db_hh, dh, dc
