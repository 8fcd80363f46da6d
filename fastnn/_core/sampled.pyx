# cython: boundscheck=False, wraparound=False, cdivision=True
"""Sampled softmax kernel: the output Dense layer and the softmax cross-entropy over a sample of classes.

Design.  With k classes (k large) a training step of the full softmax costs three GEMMs of n x n_in x k.
Candidate sampling (Jean et al. 2015; TensorFlow's ``sampled_softmax_loss``) scores, for each row i, only its
true class y_i and a sample S of s classes shared by the batch:

    z_i      = X_i . W[:, y_i] + b[y_i] - log E[y_i]       (true logit, a dot product per row)
    z_ij     = X_i . W[:, S_j] + b[S_j] - log E[S_j]        (sampled logits: one GEMM n x n_in x s)
    loss_i   = logsumexp(z_i, z_i1 .. z_is) - z_i           (the true class is candidate 0)

where E[c] is the expected number of times class c is in the sample (the sampling probability times the
number of draws); subtracting its log makes the estimate consistent.  An "accidental hit" (S_j == y_i) is
removed from row i's softmax (its logit is -inf), as remove_accidental_hits=True does.

The gradient flows to the gathered columns only: with G (n x s) the gradient of the sampled logits and g_i
that of the true logit, dX = G . Ws^T + g_i W[:, y_i], dWs = X^T . G scatter-added into the columns S of dW
(zeroed first), and the same for db.  Sample weights give the weighted mean, as in fastnn._core.losses.
"""
from cython.parallel cimport prange
from libc.math cimport exp, log, INFINITY
from libc.string cimport memset

from fastnn._core._common cimport floating, threads_for
from fastnn._core cimport _blas


cdef _check(str what, tuple got, tuple want):
    if got != want:
        raise ValueError(f"sampled_softmax: {what} has shape {got}, expected {want}")


def sampled_softmax(const floating[:, ::1] X, const floating[:, ::1] W, const floating[::1] b,
                    const Py_ssize_t[::1] labels, const Py_ssize_t[::1] sampled,
                    const floating[::1] log_eq_true, const floating[::1] log_eq_sampled,
                    floating[:, ::1] Ws, floating[:, ::1] L, floating[::1] gt, floating[:, ::1] dWs,
                    floating[:, ::1] dW, floating[::1] db, floating[:, ::1] dX,
                    const floating[::1] SW=None, int n_threads=1):
    """Sampled softmax cross-entropy of the Dense layer X.W + b and its gradients; returns (loss, n_correct).

    IN: X (n, n_in) the layer's input, W (n_in, k), b (k,) or None, labels (n,) in [0, k), sampled (s,)
    distinct classes, log_eq_true (n,) and log_eq_sampled (s,) the log expected counts, SW (n,) sample
    weights or None.
    Scratch: Ws (n_in, s) the gathered columns, L (n, s) the sampled logits then their gradient, gt (n,) the
    gradient of the true logits, dWs (n_in, s).
    OUT: dW (n_in, k) and db (k,) (zeroed, then the scatter-add; None: the value only, and dX and db are
    ignored), dX (n, n_in) or None.
    n_correct counts the rows whose true logit beats every sampled candidate.
    """
    cdef Py_ssize_t n = X.shape[0], n_in = X.shape[1], k = W.shape[1], s = sampled.shape[0]
    cdef Py_ssize_t i, j, r, c, lab
    _check("W", (W.shape[0], W.shape[1]), (n_in, k))
    _check("labels", (labels.shape[0],), (n,))
    _check("log_eq_true", (log_eq_true.shape[0],), (n,))
    _check("log_eq_sampled", (log_eq_sampled.shape[0],), (s,))
    _check("Ws", (Ws.shape[0], Ws.shape[1]), (n_in, s))
    _check("L", (L.shape[0], L.shape[1]), (n, s))
    _check("gt", (gt.shape[0],), (n,))
    _check("dWs", (dWs.shape[0], dWs.shape[1]), (n_in, s))
    if b is not None:
        _check("b", (b.shape[0],), (k,))
    cdef bint grad = dW is not None
    if grad:
        _check("dW", (dW.shape[0], dW.shape[1]), (n_in, k))
        if db is not None:
            _check("db", (db.shape[0],), (k,))
        if dX is not None:
            _check("dX", (dX.shape[0], dX.shape[1]), (n, n_in))
    if SW is not None:
        _check("sample weights", (SW.shape[0],), (n,))
    if n == 0:
        return float("nan"), 0
    for i in range(n):
        if labels[i] < 0 or labels[i] >= k:
            raise ValueError(f"sampled_softmax: label {labels[i]} at row {i} is outside [0, {k})")
    for j in range(s):
        if sampled[j] < 0 or sampled[j] >= k:
            raise ValueError(f"sampled_softmax: sampled class {sampled[j]} is outside [0, {k})")
    cdef double wsum = 0.0
    if SW is not None:
        for i in range(n):
            wsum += SW[i]
    else:
        wsum = n
    cdef double inv = 1.0 / wsum if wsum > 0 else 0.0
    cdef bint weighted = SW is not None, has_b = b is not None
    cdef const floating *Wp = &W[0, 0] if n_in * k > 0 else NULL
    cdef const floating *Xp = &X[0, 0] if n_in > 0 else NULL
    cdef floating *Wsp = &Ws[0, 0] if n_in * s > 0 else NULL
    cdef floating *Lp = &L[0, 0] if s > 0 else NULL
    cdef floating *dWsp = &dWs[0, 0] if n_in * s > 0 else NULL
    cdef floating *dWp = NULL
    cdef floating *dXp = NULL
    cdef floating *dbp = NULL
    if grad:
        dWp = &dW[0, 0] if n_in * k > 0 else NULL
        dXp = &dX[0, 0] if (dX is not None and n_in > 0) else NULL
        dbp = &db[0] if (db is not None and k > 0) else NULL
    cdef double t, m, z, se, et, wi, total = 0.0, best
    cdef Py_ssize_t n_correct = 0
    cdef int nt

    with nogil:
        # gather the sampled columns: Ws[r, j] = W[r, S_j]
        nt = threads_for(n_in * s, n_threads, 4096)
        for r in prange(n_in, num_threads=nt, schedule="static"):
            for j in range(s):
                Wsp[r * s + j] = Wp[r * k + sampled[j]]
        # sampled logits L = X . Ws
        if s > 0:
            if n_in > 0:
                _blas.gemm(False, False, <int>n, <int>s, <int>n_in, <floating>1, Xp, <int>n_in, Wsp, <int>s,
                           <floating>0, Lp, <int>s)
            else:
                memset(Lp, 0, n * s * sizeof(floating))
        # per row: corrected logits, log-sum-exp, loss, and the gradient of the logits (written over L)
        nt = threads_for(n * (s + n_in), n_threads, 16384)
        for i in prange(n, num_threads=nt, schedule="static"):
            lab = labels[i]
            t = 0.0
            for r in range(n_in):
                t = t + Xp[i * n_in + r] * Wp[r * k + lab]
            if has_b:
                t = t + b[lab]
            t = t - log_eq_true[i]
            m = t
            best = -INFINITY
            for j in range(s):
                c = sampled[j]
                if c == lab:
                    Lp[i * s + j] = -INFINITY      # accidental hit: out of this row's softmax
                    continue
                z = Lp[i * s + j] - log_eq_sampled[j]
                if has_b:
                    z = z + b[c]
                Lp[i * s + j] = <floating>z
                if z > best:
                    best = z
            if best > m:
                m = best
            et = exp(t - m)
            se = et
            for j in range(s):
                if sampled[j] != lab:
                    se = se + exp(Lp[i * s + j] - m)
            wi = SW[i] if weighted else 1.0
            total += wi * (log(se) + m - t)
            if t >= best:
                n_correct += 1
            wi = wi * inv
            gt[i] = <floating>((et / se - 1.0) * wi)
            for j in range(s):
                if sampled[j] == lab:
                    Lp[i * s + j] = 0
                else:
                    Lp[i * s + j] = <floating>(exp(Lp[i * s + j] - m) / se * wi)
        if grad:
            # dX = G . Ws^T + gt_i W[:, y_i]
            if dXp != NULL:
                if s > 0:
                    _blas.gemm(False, True, <int>n, <int>n_in, <int>s, <floating>1, Lp, <int>s, Wsp, <int>s,
                               <floating>0, dXp, <int>n_in)
                else:
                    memset(dXp, 0, n * n_in * sizeof(floating))
                nt = threads_for(n * n_in, n_threads, 16384)
                for i in prange(n, num_threads=nt, schedule="static"):
                    lab = labels[i]
                    for r in range(n_in):
                        dXp[i * n_in + r] += gt[i] * Wp[r * k + lab]
            # dWs = X^T . G, then dW = 0 plus the scatter-add of dWs and of the true columns
            if s > 0 and n_in > 0:
                _blas.gemm(True, False, <int>n_in, <int>s, <int>n, <floating>1, Xp, <int>n_in, Lp, <int>s,
                           <floating>0, dWsp, <int>s)
            nt = threads_for(n_in * k, n_threads, 65536)
            for r in prange(n_in, num_threads=nt, schedule="static"):
                memset(&dWp[r * k], 0, k * sizeof(floating))
                for j in range(s):
                    dWp[r * k + sampled[j]] += dWsp[r * s + j]
                for i in range(n):
                    dWp[r * k + labels[i]] += gt[i] * Xp[i * n_in + r]
            if dbp != NULL:
                memset(dbp, 0, k * sizeof(floating))
                for i in range(n):
                    dbp[labels[i]] += gt[i]
                    for j in range(s):
                        dbp[sampled[j]] += Lp[i * s + j]
    return total * inv, n_correct
