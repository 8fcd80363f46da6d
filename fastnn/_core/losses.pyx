# cython: boundscheck=False, wraparound=False, cdivision=True
"""Loss kernels: value and gradient in one pass, float32 and float64, defined as torch defines them.

Each function takes the network's output (logits for the classification losses), the targets, and an
optional gradient buffer (None: value only).  Each returns ``(loss, n_correct)``: the loss (Python float,
accumulated in double) and, for classification losses, how many predictions were right in the same pass
(argmax for softmax; per element, logit > 0 against target > 0.5 for sigmoid), else 0.

- softmax cross-entropy, integer labels:  mean_i [logsumexp(z_i) - z_i[y_i]] (each exp computed once)
- softmax cross-entropy, probability rows: mean_i sum_k t_ik [logsumexp(z_i) - z_ik]
      gradient (softmax(z_i) * sum_k t_ik - t_i) / n, as torch.nn.CrossEntropyLoss with soft targets
- sigmoid binary cross-entropy on logits:  mean over all elements of log(1 + e^z) - t z
- "l2": sum (yhat - y)^2  (MSELoss(reduction="sum"), no 1/2); "mse": its mean over all elements;
  "mae": mean |yhat - y|, gradient sign(yhat - y) / N with sign(0) = 0 (torch.nn.L1Loss)

Sample weights: every function takes an optional ``W`` (n,) of non-negative per-sample weights and then
computes the weighted mean as torch does for ``CrossEntropyLoss(weight=...)``: sum_i w_i l_i / sum_i w_i
(for the per-element means, sum_i w_i sum_j l_ij / (k sum_i w_i); "l2" stays a sum: sum_i w_i sum_j d_ij^2),
and the gradient of that.  A batch whose weights sum to 0 has loss 0 and gradient 0.  W=None is the
unweighted definition above (W = 1).

Every logsumexp is shifted by the row max, and log(1 + e^z) is computed as max(z, 0) + log1p(e^-|z|):
finite at logits of +-1000.  The softmax cross-entropies take a row's max and its e^(z - max) with the vectorized
exponentials of csrc/fnn_exp.h (AVX-512 or AVX2+FMA chosen at run time, libm in double on other CPUs): within
1 ulp of e^x in float and double, float rows at the exact difference z - max; the row sums are kept in double.
"""
from libc.math cimport log, log1p, fabs, NAN

from fastnn._core._common cimport floating
from fastnn._core.kinds cimport FNN_LOSS_L2, FNN_LOSS_MSE, FNN_LOSS_MAE
from fastnn._core.kinds import LOSS

cdef extern from "fnn_exp.h" nogil:
    int fnn_exp_isa()
    int fnn_exp_set_isa(int cap)
    float fnn_rowmax_f(int isa, const float *z, Py_ssize_t k, Py_ssize_t *am)
    double fnn_rowmax_d(int isa, const double *z, Py_ssize_t k, Py_ssize_t *am)
    double fnn_expsum_f(int isa, const float *z, Py_ssize_t k, float m, float *e)
    double fnn_expsum_d(int isa, const double *z, Py_ssize_t k, double m, double *e)
    void fnn_exparr_f(int isa, const float *x, Py_ssize_t n, float *out)
    void fnn_exparr_d(int isa, const double *x, Py_ssize_t n, double *out)


def set_exp_isa(int cap):
    """Cap the vectorized exponentials of the softmax cross-entropy (test hook): 0 libm, 1 at most AVX2+FMA, 2 the
    best the CPU has.  Returns the path in use: 0 libm, 1 AVX2+FMA, 2 AVX-512F."""
    return fnn_exp_set_isa(cap)


def exp_twin(const floating[::1] x, floating[::1] out):
    """out = e^x with the losses' exponential on the current path (test twin of csrc/fnn_exp.h)."""
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"exp_twin: out has {out.shape[0]} elements, x has {x.shape[0]}")
    if x.shape[0] == 0:
        return
    cdef int isa = fnn_exp_isa()
    with nogil:
        if floating is float:
            fnn_exparr_f(isa, &x[0], x.shape[0], &out[0])
        else:
            fnn_exparr_d(isa, &x[0], x.shape[0], &out[0])


cdef inline floating _rowmax(int isa, const floating *z, Py_ssize_t k, Py_ssize_t *am) noexcept nogil:
    """max(z[0..k)) and its first index (csrc/fnn_exp.h)."""
    if floating is float:
        return fnn_rowmax_f(isa, z, k, am)
    else:
        return fnn_rowmax_d(isa, z, k, am)


cdef inline void _exparr(int isa, const floating *x, Py_ssize_t n, floating *out) noexcept nogil:
    """out[i] = e^x[i] (csrc/fnn_exp.h; out may be x)."""
    if floating is float:
        fnn_exparr_f(isa, x, n, out)
    else:
        fnn_exparr_d(isa, x, n, out)


cdef inline double _expsum(int isa, const floating *z, Py_ssize_t k, floating m, floating *e) noexcept nogil:
    """e[j] = e^(z[j] - m) (e may be NULL); returns their sum in double (csrc/fnn_exp.h)."""
    if floating is float:
        return fnn_expsum_f(isa, z, k, m, e)
    else:
        return fnn_expsum_d(isa, z, k, m, e)


cdef double _inv_weight_sum(str fn, const floating[::1] W, Py_ssize_t n, double per_row) except? -1:
    """1 / (per_row * sum(W)), or 1 / (per_row * n) without weights; 0 when the weights sum to 0."""
    cdef double s = 0.0
    cdef Py_ssize_t i
    if W is None:
        return 1.0 / (per_row * n)
    if W.shape[0] != n:
        raise ValueError(f"{fn}: sample weights have {W.shape[0]} elements, the batch has {n} rows")
    with nogil:
        for i in range(n):
            s += W[i]
    return 1.0 / (per_row * s) if s > 0 else 0.0


cdef _same(str fn, str a, tuple sa, str b, tuple sb):
    if sa != sb:
        raise ValueError(f"{fn}: {a} has shape {sa} but {b} has shape {sb}")


def weight_sum(const floating[::1] W):
    """sum(W) in double, added in row order: a batch's weight as the loss kernels (_inv_weight_sum) and the
    compiled plan take it, so the per-layer history weighs batches with the same bits."""
    cdef double s = 0.0
    cdef Py_ssize_t i
    with nogil:
        for i in range(W.shape[0]):
            s += W[i]
    return s


def softmax_cross_entropy(const floating[:, ::1] Z, const Py_ssize_t[::1] labels, floating[:, ::1] dZ=None,
                          const floating[::1] W=None):
    """Mean softmax cross-entropy of logits Z (n, k) against integer labels (n,) in [0, k); dZ (OUT) or None;
    W (n,) per-sample weights or None."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    _same("softmax_cross_entropy", "logits", (n, k), "labels", (labels.shape[0], k))
    if dZ is not None:
        _same("softmax_cross_entropy", "logits", (n, k), "gradient", (dZ.shape[0], dZ.shape[1]))
    if n == 0:
        return float("nan"), 0
    if k == 0:
        raise ValueError("softmax_cross_entropy: logits have 0 classes")
    cdef double inv_n = _inv_weight_sum("softmax_cross_entropy", W, n, 1.0)
    cdef Py_ssize_t n_correct = 0, bad = -1
    cdef double total
    cdef floating *g = &dZ[0, 0] if dZ is not None else NULL
    cdef const floating *wp = &W[0] if W is not None else NULL
    with nogil:
        total = ce_labels_core(&Z[0, 0], &labels[0], g, wp, n, k, inv_n, &n_correct, &bad)
    if bad >= 0:
        raise ValueError(f"softmax_cross_entropy: label {labels[bad]} at row {bad} is outside [0, {k})")
    return total, n_correct


cdef double ce_labels_core(const floating *Z, const Py_ssize_t *labels, floating *dZ, const floating *W,
                           Py_ssize_t n, Py_ssize_t k, double inv_n, Py_ssize_t *n_correct,
                           Py_ssize_t *bad) noexcept nogil:
    """Mean (weighted) softmax cross-entropy of Z (n, k) against labels; the gradient into dZ (or NULL).

    One pass per row for the max and argmax, one for the exponentials (vectorized, csrc/fnn_exp.h; each
    computed once: kept in dZ when the gradient is wanted), one to scale them.  Returns the loss
    (total * inv_n); a label outside [0, k) stops with *bad set to its row.
    """
    cdef Py_ssize_t i, j, lab, am
    cdef const floating *z
    cdef floating *g = NULL
    cdef double s, li, wi = 1.0, total = 0.0
    cdef floating m, c
    cdef int isa = fnn_exp_isa()
    for i in range(n):
        if W != NULL:
            wi = W[i]
        lab = labels[i]
        if lab < 0 or lab >= k:
            bad[0] = i
            return 0.0
        z = Z + i * k
        m = _rowmax(isa, z, k, &am)
        n_correct[0] += am == lab
        if dZ != NULL:
            g = dZ + i * k
        s = _expsum(isa, z, k, m, g)
        li = log(s) + m - z[lab]
        total += wi * li if W != NULL else li
        if dZ != NULL:
            c = <floating>(wi * inv_n / s)
            for j in range(k):
                g[j] = g[j] * c
            g[lab] -= <floating>(wi * inv_n)
    return total * inv_n


def softmax_cross_entropy_soft(const floating[:, ::1] Z, const floating[:, ::1] T, floating[:, ::1] dZ=None,
                               const floating[::1] W=None):
    """Mean softmax cross-entropy of logits Z (n, k) against probability rows T (n, k); dZ (OUT) or None;
    W (n,) per-sample weights or None."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    _same("softmax_cross_entropy", "logits", (n, k), "targets", (T.shape[0], T.shape[1]))
    if dZ is not None:
        _same("softmax_cross_entropy", "logits", (n, k), "gradient", (dZ.shape[0], dZ.shape[1]))
    if n == 0:
        return float("nan"), 0
    if k == 0:
        raise ValueError("softmax_cross_entropy: logits have 0 classes")
    cdef double inv_n = _inv_weight_sum("softmax_cross_entropy", W, n, 1.0)
    cdef Py_ssize_t n_correct = 0
    cdef double total
    cdef floating *g = &dZ[0, 0] if dZ is not None else NULL
    cdef const floating *wp = &W[0] if W is not None else NULL
    with nogil:
        total = ce_soft_core(&Z[0, 0], &T[0, 0], g, wp, n, k, inv_n, &n_correct)
    return total, n_correct


cdef double ce_soft_core(const floating *Z, const floating *T, floating *dZ, const floating *W, Py_ssize_t n,
                         Py_ssize_t k, double inv_n, Py_ssize_t *n_correct) noexcept nogil:
    """Mean (weighted) softmax cross-entropy of Z (n, k) against probability rows T (n, k); the gradient into dZ
    (or NULL); *n_correct += rows whose argmax matches the target's.  Returns total * inv_n."""
    cdef bint grad = dZ != NULL, weighted = W != NULL
    cdef Py_ssize_t i, j, am, at
    cdef const floating *z
    cdef const floating *t
    cdef floating *g = NULL
    cdef double s, lse, tsum, li, wi = 1.0, total = 0.0
    cdef floating m
    cdef int isa = fnn_exp_isa()
    for i in range(n):
        if weighted:
            wi = W[i]
        z = Z + i * k
        t = T + i * k
        m = _rowmax(isa, z, k, &am)
        _rowmax(isa, t, k, &at)
        n_correct[0] += am == at
        if grad:
            g = dZ + i * k
        s = _expsum(isa, z, k, m, g)          # the exponentials kept in g for the gradient
        lse = log(s) + m
        tsum = 0.0
        li = 0.0
        for j in range(k):
            tsum += t[j]
            if t[j] != 0:
                li += t[j] * (lse - z[j])
        total += wi * li
        if grad:
            s = 1.0 / s
            for j in range(k):
                g[j] = <floating>((g[j] * s * tsum - t[j]) * (wi * inv_n))
    return total * inv_n


def sigmoid_binary_cross_entropy(const floating[:, ::1] Z, const floating[:, ::1] T, floating[:, ::1] dZ=None,
                                 const floating[::1] W=None):
    """Mean over all elements of log(1 + e^z) - t z (BCEWithLogitsLoss); dZ = (sigmoid(z) - t) / N (OUT) or None;
    W (n,) per-sample weights (each row's k elements weighted by w_i) or None."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1], N = n * k
    _same("binary_cross_entropy", "logits", (n, k), "targets", (T.shape[0], T.shape[1]))
    if dZ is not None:
        _same("binary_cross_entropy", "logits", (n, k), "gradient", (dZ.shape[0], dZ.shape[1]))
    if N == 0:
        return float("nan"), 0
    cdef double inv_n = _inv_weight_sum("binary_cross_entropy", W, n, <double>k)
    cdef Py_ssize_t n_correct = 0
    cdef double total
    cdef floating *g = &dZ[0, 0] if dZ is not None else NULL
    cdef const floating *wp = &W[0] if W is not None else NULL
    with nogil:
        total = bce_core(&Z[0, 0], &T[0, 0], g, wp, n, k, inv_n, &n_correct)
    return total, n_correct


cdef double bce_core(const floating *z, const floating *t, floating *g, const floating *W, Py_ssize_t n,
                     Py_ssize_t k, double inv_n, Py_ssize_t *n_correct) noexcept nogil:
    """Mean (weighted) sigmoid cross-entropy of logits z against targets t (n, k); the gradient into g (or NULL);
    *n_correct += elements whose logit sign agrees with target > 0.5.  Returns total * inv_n."""
    cdef bint grad = g != NULL, weighted = W != NULL
    cdef Py_ssize_t i, r, j0, q, cnt, end
    cdef double li, e, zi, wi = 1.0, total = 0.0
    cdef floating ebuf[256]
    cdef int isa = fnn_exp_isa()
    for r in range(n):
        if weighted:
            wi = W[r]
        li = 0.0
        end = r * k + k
        for j0 in range(r * k, end, 256):
            cnt = min(256, end - j0)
            for q in range(cnt):
                ebuf[q] = -fabs(z[j0 + q])
            _exparr(isa, ebuf, cnt, ebuf)            # e^-|z|, vectorized: the softplus and the sigmoid share it
            for q in range(cnt):
                i = j0 + q
                zi = z[i]
                e = ebuf[q]
                li += (zi if zi > 0 else 0.0) + log1p(e) - <double>t[i] * zi
                n_correct[0] += (z[i] > 0) == (t[i] > 0.5)
                if grad:
                    g[i] = <floating>(((1.0 if zi >= 0 else e) / (1.0 + e) - t[i]) * (wi * inv_n))
        total += wi * li
    return total * inv_n


def regression_loss(int kind, const floating[:, ::1] P, const floating[:, ::1] T, floating[:, ::1] dP=None,
                    const floating[::1] W=None):
    """kind LOSS.L2 "l2" (sum of squares), LOSS.MSE "mse" (mean of squares), LOSS.MAE "mae" (mean absolute);
    dP (OUT) or None; W (n,) per-sample weights (each row's k elements weighted by w_i) or None."""
    cdef Py_ssize_t n = P.shape[0], k = P.shape[1], N = n * k
    if kind != FNN_LOSS_L2 and kind != FNN_LOSS_MSE and kind != FNN_LOSS_MAE:
        raise ValueError(f"regression_loss: unknown kind {kind!r}; known: {int(LOSS.L2)} l2, {int(LOSS.MSE)} mse, "
                         f"{int(LOSS.MAE)} mae")
    _same("regression_loss", "predictions", (n, k), "targets", (T.shape[0], T.shape[1]))
    if dP is not None:
        _same("regression_loss", "predictions", (n, k), "gradient", (dP.shape[0], dP.shape[1]))
    if N == 0:
        return (0.0 if kind == FNN_LOSS_L2 else float("nan")), 0
    cdef double inv = 1.0 if kind == FNN_LOSS_L2 else _inv_weight_sum("regression_loss", W, n, <double>k)
    if kind == FNN_LOSS_L2 and W is not None:
        _inv_weight_sum("regression_loss", W, n, 1.0)     # checks the length of W
    cdef floating *g = &dP[0, 0] if dP is not None else NULL
    cdef const floating *wp = &W[0] if W is not None else NULL
    cdef double total
    with nogil:
        total = regression_core(kind, &P[0, 0], &T[0, 0], g, wp, n, k, inv)
    return total, 0


cdef double regression_core(int kind, const floating *P, const floating *T, floating *dP, const floating *W,
                            Py_ssize_t n, Py_ssize_t k, double inv) noexcept nogil:
    """l2 / mse / mae of P against T (n, k), (weighted), gradient into dP (or NULL); returns total * inv.  kind
    is FNN_LOSS_L2, _MSE or _MAE (the callers check it); any other kind computes nothing and returns NaN."""
    cdef bint grad = dP != NULL, weighted = W != NULL
    if kind != FNN_LOSS_L2 and kind != FNN_LOSS_MSE and kind != FNN_LOSS_MAE:
        return NAN
    cdef const floating *p = P
    cdef const floating *t = T
    cdef floating *g = dP
    cdef double total = 0.0, d, li, wi = 1.0, scale
    cdef Py_ssize_t i, r
    cdef floating fd
    for r in range(n):
        if weighted:
            wi = W[r]
        li = 0.0
        if kind == FNN_LOSS_MAE:
            scale = wi * inv
            for i in range(r * k, r * k + k):
                fd = p[i] - t[i]
                li += fabs(fd)
                if grad:
                    g[i] = <floating>(scale if fd > 0 else (-scale if fd < 0 else 0.0))
        else:
            scale = 2.0 * wi * inv
            for i in range(r * k, r * k + k):
                fd = p[i] - t[i]
                d = fd
                li += d * d
                if grad:
                    g[i] = <floating>(scale * d)
        total += wi * li if weighted else li
    return total * inv
