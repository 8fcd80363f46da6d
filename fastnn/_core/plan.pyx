# cython: boundscheck=False, wraparound=False, cdivision=True
"""The compiled training plan: whole runs of mini-batches (an epoch, or a chunk of one) without Python per batch.

For a chain of compiled layers (Dense with its fused activation, activation layers), one call runs, for each
batch, all ``nogil``: the gather of the batch from the epoch's permutation, the forward pass (GEMM, then
bias + activation in one pass), the loss and its gradient (softmax cross-entropy fused), the backward pass,
the NaN/inf guard, clipping and the optimizer update over the flat parameter buffer.  It runs the same
kernels, in the same order, on the same buffers as the per-layer path (fastnn/model.py ``_step``), so the
two give the same weights.

Layers are described by rows of ``spec`` (int64): [kind, act, n_in, n_out, w_off, b_off, need_dx] (kind 0
Dense, 1 activation layer; b_off -1 without bias; for a fused output, a Dense layer's act is 0 and an
activation layer's -1, a pass-through) and by the addresses of their buffers ``bufs`` [Z, Y, dZ, dX, OUT]
(bs x n_out, bs x n_out, bs x n_out, bs x n_in, and which of Z / Y holds the layer's output; made and kept
alive by the caller).

Return: (status, batches_done, bad_index, value).  status 0: all batches done; 1: non-finite loss (before the
backward pass, weights untouched); 2: non-finite gradient at bad_index (before the update); 3: the update made
parameter bad_index non-finite (its value in `value`; parameters and optimizer state restored from the copy);
4: the update made optimizer state bad_index (0, 1, 2: s0, s1, s2) non-finite (restored).  batches_done counts completed updates.
"""
from libc.string cimport memcpy, memset

from fastnn._core._common cimport floating
from fastnn._core cimport _blas
from fastnn._core.activations cimport act_forward, act_backward
from fastnn._core.losses cimport ce_labels_core, regression_core
from fastnn._core.optim cimport _sgd_range, _adam_range
from fastnn._core.clip cimport clip_core
from fastnn._core.guard cimport _first_nonfinite
from fastnn._core.bound cimport Bounds, scan_max, sgd_safe, adam_safe
from cython.parallel cimport prange
from fastnn._core._common cimport threads_for, FNN_MIN_PER_THREAD, FNN_MIN_GATHER_PER_THREAD
from fastnn._core.kinds cimport FNN_ACT_IDENTITY, FNN_LOSS_L2

cdef enum:
    _BLOCK = 2048
    _MAX_T = 256
    OPT_SGD = 0
    OPT_ADAM = 1
    LOSS_CE = 0          # softmax cross-entropy, integer labels
    LOSS_REG = 1         # l2 / mse / mae (reg_kind)


cdef void _gemm_few_rows(Py_ssize_t m, Py_ssize_t nout, Py_ssize_t nin, const floating *x, const floating *W,
                         floating *Z, int n_threads) noexcept nogil:
    """Z (m, nout) = x (m, nin) . W (nin, nout).  For a few rows of a large layer, OpenBLAS keeps the product on
    one thread; split the output columns over the OpenMP team instead (blocks aligned to 16 elements), each
    thread running its own small single-threaded GEMM on its block."""
    cdef int nt = n_threads
    cdef Py_ssize_t t, c0, c1
    if nt > 1 and m <= 4 and nin * nout >= 65536 and nout >= 32 * nt:
        for t in prange(nt, num_threads=nt, schedule="static"):
            c0 = (t * nout // nt) // 16 * 16
            c1 = nout if t == nt - 1 else ((t + 1) * nout // nt) // 16 * 16
            _blas.gemm(False, False, <int>m, <int>(c1 - c0), <int>nin, <floating>1, x, <int>nin, W + c0,
                       <int>nout, <floating>0, Z + c0, <int>nout)
    else:
        _blas.gemm(False, False, <int>m, <int>nout, <int>nin, <floating>1, x, <int>nin, W, <int>nout,
                   <floating>0, Z, <int>nout)


cdef const floating *_forward_chain(const floating *x, Py_ssize_t m, const long long[:, ::1] spec,
                                    const double[::1] alphas, const long long[:, ::1] bufs, const floating *prm,
                                    int n_threads) noexcept nogil:
    """The forward pass of a plan's chain for the m rows at x, through the plan's buffers; returns the output rows.

    A Dense layer is a GEMM (columns split over threads for a few rows of a large layer), then bias and
    activation in one pass; an activation layer with act < 0 (an output activation fused with the loss) lets
    the logits through."""
    cdef Py_ssize_t l, nin, nout
    cdef int kind, act
    cdef floating *Z
    cdef floating *Y
    for l in range(spec.shape[0]):
        kind, act = <int>spec[l, 0], <int>spec[l, 1]
        nin, nout = spec[l, 2], spec[l, 3]
        Z = <floating *><size_t>bufs[l, 0]
        Y = <floating *><size_t>bufs[l, 1]
        if kind == 0:
            if nin == 0:
                memset(Z, 0, m * nout * sizeof(floating))
            else:
                _gemm_few_rows(m, nout, nin, x, prm + spec[l, 4], Z, n_threads)
            act_forward(act, Z, Y if act != FNN_ACT_IDENTITY else Z, prm + spec[l, 5] if spec[l, 5] >= 0 else NULL,
                        m, nout, alphas[l], n_threads)
            x = Y if act != FNN_ACT_IDENTITY else Z
        elif act >= 0:
            act_forward(act, <floating *>x, Y, NULL, m, nout, alphas[l], n_threads)
            x = Y
    return x


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef inline void _update_range(int opt, floating *p, const floating *g, floating *s0, floating *s1, floating *s2,
                               Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t n_decay, const double *h,
                               const double *adam, double *mx) noexcept nogil:
    """The update of elements [i0, i1), exactly as optim.sgd_step / optim.adam_step do it (weight decay on
    [0, n_decay) only).  h: the hyperparameters (see run_batches); adam: step_size, bc2_sqrt, wd_c, dfac, first.
    mx (may be NULL): raised to the maxima of |p| and of each state written (mx[0..3])."""
    cdef Py_ssize_t c = min(max(i0, n_decay), i1)
    if opt == OPT_SGD:     # h: lr, momentum, dampening, weight_decay, nesterov
        _sgd_range(p, g, s0, i0, c, <floating>h[0], <floating>h[1], <floating>h[2], <floating>h[3],
                   h[4] != 0, adam[4] != 0, mx)
        _sgd_range(p, g, s0, c, i1, <floating>h[0], <floating>h[1], <floating>h[2], <floating>0,
                   h[4] != 0, adam[4] != 0, mx)
    else:                  # h: lr, beta1, beta2, eps, weight_decay, decoupled
        _adam_range(p, g, s0, s1, s2, i0, c, <floating>adam[0], <floating>h[1], <floating>h[2],
                    <floating>h[3], <floating>adam[1], <floating>adam[2], <floating>adam[3], mx)
        _adam_range(p, g, s0, s1, s2, c, i1, <floating>adam[0], <floating>h[1], <floating>h[2],
                    <floating>h[3], <floating>adam[1], <floating>0, <floating>1, mx)


cdef inline bint _bad_block(const floating *x, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    cdef int acc = 0
    if x == NULL:
        return 0
    for i in range(i0, i1):
        v = x[i] - x[i]
        acc |= v != 0
    return acc != 0


cdef inline void _copy_block(floating *dst, const floating *src, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    if src != NULL:
        memcpy(dst + i0, src + i0, (i1 - i0) * sizeof(floating))


cdef int _guarded_range(int opt, floating *p, const floating *g, floating *s0, floating *s1, floating *s2,
                        floating *B, floating *B0, floating *B1, floating *B2, Py_ssize_t a, Py_ssize_t b,
                        Py_ssize_t n_decay, const double *h, const double *adam) noexcept nogil:
    """The guarded update of elements [a, b), block by block (backup copy, update, check while in cache)."""
    cdef Py_ssize_t i0 = a, i1
    cdef int bad = 0
    while i0 < b:
        i1 = min(i0 + _BLOCK, b)
        _copy_block(B, p, i0, i1)
        _copy_block(B0, s0, i0, i1)
        _copy_block(B1, s1, i0, i1)
        _copy_block(B2, s2, i0, i1)
        _update_range(opt, p, g, s0, s1, s2, i0, i1, n_decay, h, adam, NULL)
        bad |= _bad_block(p, i0, i1) | _bad_block(s0, i0, i1) | _bad_block(s1, i0, i1) | _bad_block(s2, i0, i1)
        i0 = i1
    return bad


cdef bint _update(int opt, floating *p, const floating *g, floating *s0, floating *s1, floating *s2,
                  floating *B, floating *B0, floating *B1, floating *B2,
                  Py_ssize_t n, Py_ssize_t n_decay, const double *h, Py_ssize_t step, int n_threads,
                  Bounds *mx) noexcept nogil:
    """One optimizer step (step >= 1: the count after it).  With backups (B != NULL: the NaN guard could not prove
    the step finite), the update runs block by block: each block of the parameters and state is copied into the
    backups just before it is updated and checked for NaN/inf just after, while it is in cache, instead of three
    separate passes over the whole buffers.  Returns whether some updated parameter or state element is
    non-finite (the caller then restores from the backups, which hold the whole buffers from before the step).
    Without backups and with mx != NULL, *mx receives the maxima of |p| and of each state after the update."""
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD)
    cdef Py_ssize_t t
    cdef double adam[5]
    cdef int bad[_MAX_T]
    cdef double part[_MAX_T][4]
    cdef bint any_bad = 0
    if nt > _MAX_T:
        nt = _MAX_T
    adam[4] = step == 1
    if opt == OPT_ADAM:
        adam[0] = h[0] / (1.0 - h[1] ** step)
        adam[1] = (1.0 - h[2] ** step) ** 0.5
        adam[2] = 0.0 if h[5] != 0 else h[4]
        adam[3] = 1.0 - h[0] * h[4] if h[5] != 0 else 1.0
    if B == NULL:      # the update kernels track the maxima anyway: collect them per thread, keep them if asked
        if nt <= 1:
            part[0][0] = part[0][1] = part[0][2] = part[0][3] = 0.0
            _update_range(opt, p, g, s0, s1, s2, 0, n, n_decay, h, adam, &part[0][0])
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                part[t][0] = part[t][1] = part[t][2] = part[t][3] = 0.0
                _update_range(opt, p, g, s0, s1, s2, _lo(t, nt, n), _lo(t + 1, nt, n), n_decay, h, adam,
                              &part[t][0])
        if mx != NULL:
            mx.P, mx.S0, mx.S1, mx.S2 = part[0][0], part[0][1], part[0][2], part[0][3]
            for t in range(1, nt):
                mx.P = max(mx.P, part[t][0])
                mx.S0 = max(mx.S0, part[t][1])
                mx.S1 = max(mx.S1, part[t][2])
                mx.S2 = max(mx.S2, part[t][3])
        return 0
    if nt <= 1:        # no parallel region for one thread (GOMP_parallel costs ~1 us per step even then)
        return _guarded_range(opt, p, g, s0, s1, s2, B, B0, B1, B2, 0, n, n_decay, h, adam)
    for t in prange(nt, num_threads=nt, schedule="static"):
        bad[t] = _guarded_range(opt, p, g, s0, s1, s2, B, B0, B1, B2, _lo(t, nt, n), _lo(t + 1, nt, n), n_decay,
                                h, adam)
    for t in range(nt):
        any_bad |= bad[t] != 0
    return any_bad


cdef bint _refresh(Bounds *bd, const floating *p, const floating *s0, const floating *s1, const floating *s2,
                   Py_ssize_t n, int n_threads) noexcept nogil:
    """Fresh bounds from one read pass over the parameters and each state array; 0 when a value is NaN/inf or
    a square average (s1, Adam's exp_avg_sq) is negative: nothing can be proved then."""
    cdef double lo
    cdef int bad = scan_max(p, n, n_threads, &bd.P, &lo)
    bd.S0 = bd.S1 = bd.S2 = 0.0
    if s0 != NULL:
        bad |= scan_max(s0, n, n_threads, &bd.S0, &lo)
    if s1 != NULL:
        bad |= scan_max(s1, n, n_threads, &bd.S1, &lo)
        bad |= not (lo >= 0)
    if s2 != NULL:
        bad |= scan_max(s2, n, n_threads, &bd.S2, &lo)
    return not bad


cdef inline bint _proved(int opt, bint dbl, const Bounds *bd, double G, const double *h, bint has_s0,
                         bint amsgrad, Py_ssize_t step) noexcept nogil:
    """bound.sgd_safe / adam_safe with the plan's hyperparameters h (see run_batches)."""
    if opt == OPT_SGD:
        return sgd_safe(dbl, bd, G, has_s0, h[0], h[1], h[2], h[3], h[4] != 0, step == 1)
    return adam_safe(dbl, bd, G, amsgrad, h[0], h[1], h[2], h[3], h[4], h[5] != 0, step)


cdef inline floating *_ptr(floating[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] > 0 else NULL


def run_batches(const floating[:, ::1] X, object targets, const Py_ssize_t[::1] perm,
                Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t bs,
                const long long[:, ::1] spec, const double[::1] alphas, const long long[:, ::1] bufs,
                floating[::1] params, floating[::1] grads, floating[:, ::1] Xb, object Tb, floating[:, ::1] dout,
                int loss_kind, int reg_kind, int opt, const double[::1] hyper, Py_ssize_t step,
                Py_ssize_t n_decay, floating[::1] s0, floating[::1] s1, floating[::1] s2,
                bint guard, floating[::1] backup, floating[::1] bs0, floating[::1] bs1, floating[::1] bs2,
                double clip_value, double max_norm, double[::1] stats, int n_threads):
    """Run batches b0 .. b1-1 of an epoch over X (n, n_in) (rows perm[b*bs : (b+1)*bs], or in order when perm
    is None).  targets: int labels (n,) for LOSS_CE, floating (n, k) for LOSS_REG; Tb the batch buffer of the
    same kind.  step: the optimizer's step count before the first batch.  stats (IN/OUT, double):
    [sum of loss * batch size, correct predictions, samples, last gradient norm (with clipping), guarded steps
    that took the backup (the others were proved finite by bound.pyx)].

    The NaN guard (guard=True): each step's gradient is scanned once for NaN/inf (status 2, nothing updated) and
    for G = max |g|; the update then runs without any copy when bound.pyx proves from G and bounds of |p| and of
    the state (one scan when the call starts, then carried from step to step) that it stays finite, and
    otherwise the old way: block by block, backup copy, update, check, and a restore of everything on failure."""
    cdef Py_ssize_t n = X.shape[0], n_in0 = X.shape[1], L = spec.shape[0], P = params.shape[0]
    cdef Py_ssize_t k = dout.shape[1]
    cdef const Py_ssize_t[::1] lab
    cdef Py_ssize_t[::1] labb
    cdef const floating[:, ::1] T
    cdef floating[:, ::1] Tbf
    cdef const Py_ssize_t *labp = NULL
    cdef Py_ssize_t *labbp = NULL
    cdef const floating *Tp = NULL
    cdef floating *Tbp = NULL
    if loss_kind == LOSS_CE:
        lab = targets
        labb = Tb
        labp, labbp = &lab[0], &labb[0]
    else:
        T = targets
        Tbf = Tb
        Tp, Tbp = &T[0, 0], &Tbf[0, 0]
    if (Xb.shape[0] < bs or Xb.shape[1] != n_in0 or dout.shape[0] < bs or spec.shape[1] < 7 or bufs.shape[0] != L
            or bufs.shape[1] < 5 or hyper.shape[0] < 6 or stats.shape[0] < 5 or (guard and backup is None)):
        raise ValueError("run_batches: buffers do not match the plan")
    cdef const Py_ssize_t *pp = &perm[0] if perm is not None else NULL
    cdef floating *prm = &params[0]
    cdef floating *grd = &grads[0]
    cdef floating *xb = &Xb[0, 0]
    cdef floating *dy0 = &dout[0, 0]
    cdef floating *S0 = _ptr(s0)
    cdef floating *S1 = _ptr(s1)
    cdef floating *S2 = _ptr(s2)
    cdef floating *B = _ptr(backup) if guard else NULL
    cdef floating *B0 = _ptr(bs0)
    cdef floating *B1 = _ptr(bs1)
    cdef floating *B2 = _ptr(bs2)
    cdef const double *h = &hyper[0]
    cdef Py_ssize_t b, start, m, i, j, r, l, src, nin, nout, bad = -1, n_correct
    cdef int status = 0, kind, act, nt
    cdef double loss = 0.0, value = 0.0, inv
    cdef const floating *x
    cdef const floating *Wp
    cdef floating *Z
    cdef floating *Y
    cdef floating *dZ
    cdef floating *dX
    cdef floating *g
    cdef floating *dbp
    cdef floating *dy
    cdef const floating *out
    cdef size_t row_x = n_in0 * sizeof(floating)
    cdef Bounds bd
    cdef bint dbl = floating is double, trusted = 0, fresh = 0, fallback = 0, backup_step = 0
    cdef double G = 0.0, gmin
    cdef Py_ssize_t n_backups = 0
    with nogil:
        if guard:
            trusted = fresh = _refresh(&bd, prm, S0, S1, S2, P, n_threads)
        for b in range(b0, b1):
            start = b * bs
            m = min(start + bs, n) - start
            # ---- gather the batch
            nt = threads_for(m * n_in0, n_threads, FNN_MIN_GATHER_PER_THREAD)
            if nt > 1:
                for i in prange(m, num_threads=nt, schedule="static"):
                    memcpy(xb + i * n_in0, &X[pp[start + i] if pp != NULL else start + i, 0], row_x)
            for i in range(m):
                r = pp[start + i] if pp != NULL else start + i
                if nt <= 1:
                    memcpy(xb + i * n_in0, &X[r, 0], row_x)
                if loss_kind == LOSS_CE:
                    labbp[i] = labp[r]
                else:
                    memcpy(Tbp + i * k, Tp + r * k, k * sizeof(floating))
            # ---- forward
            x = _forward_chain(xb, m, spec, alphas, bufs, prm, n_threads)
            out = x
            # ---- loss and its gradient
            n_correct = 0
            if loss_kind == LOSS_CE:
                loss = ce_labels_core(out, labbp, dy0, <const floating *>NULL, m, k, 1.0 / (1.0 * m),
                                      &n_correct, &bad)
            else:
                inv = 1.0 if reg_kind == FNN_LOSS_L2 else 1.0 / (<double>k * m)
                loss = regression_core(reg_kind, out, Tbp, dy0, <const floating *>NULL, m, k, inv)
            if guard and not (loss - loss == 0):
                status = 1
                break
            # ---- backward (reverse order)
            dy = dy0
            for l in range(L - 1, -1, -1):
                kind, act = <int>spec[l, 0], <int>spec[l, 1]
                nin, nout = spec[l, 2], spec[l, 3]
                Z = <floating *><size_t>bufs[l, 0]
                Y = <floating *><size_t>bufs[l, 1]
                dZ = <floating *><size_t>bufs[l, 2]
                dX = <floating *><size_t>bufs[l, 3]
                x = xb if l == 0 else <const floating *><size_t>bufs[l - 1, 4]
                if kind == 0:
                    if act == FNN_ACT_IDENTITY:
                        g = dy
                    else:
                        g = dZ
                        act_backward(act, Z, Y, dy, g, m, nout, alphas[l], n_threads)
                    if nin > 0:
                        _blas.gemm(True, False, <int>nin, <int>nout, <int>m, <floating>1, x, <int>nin,
                                   g, <int>nout, <floating>0, grd + spec[l, 4], <int>nout)
                    if spec[l, 5] >= 0:
                        dbp = grd + spec[l, 5]
                        memset(dbp, 0, nout * sizeof(floating))
                        for i in range(m):
                            for j in range(nout):
                                dbp[j] = dbp[j] + g[i * nout + j]
                    if spec[l, 6]:
                        _blas.gemm(False, True, <int>m, <int>nin, <int>nout, <floating>1, g, <int>nout,
                                   prm + spec[l, 4], <int>nout, <floating>0, dX, <int>nin)
                        dy = dX
                else:
                    if act >= 0:
                        act_backward(act, x, Y, dy, dX, m, nout, alphas[l], n_threads)
                        dy = dX
            # ---- guard, clipping, update
            if guard:
                # before clipping: a NaN norm would spread everywhere; G = max |g| also bounds the clipped gradient
                if scan_max(grd, P, n_threads, &G, &gmin):
                    bad = _first_nonfinite(grd, P)
                    status = 2
                    break
            if clip_value > 0 or max_norm >= 0:
                stats[3] = clip_core(grd, P, clip_value, max_norm, n_threads)
            step += 1
            # the guard's backup is needed only for a step the bound cannot prove finite (bound.pyx), from G and
            # the maxima of |p| and the state, which the previous proved update tracked (or a scan found); when
            # fresh maxima do not prove it either, back up for the rest of this call
            backup_step = guard
            if guard and not fallback:
                if trusted and _proved(opt, dbl, &bd, G, h, S0 != NULL, S2 != NULL, step):
                    backup_step = 0
                elif not fresh and _refresh(&bd, prm, S0, S1, S2, P, n_threads) and _proved(
                        opt, dbl, &bd, G, h, S0 != NULL, S2 != NULL, step):
                    backup_step = 0
                else:
                    fallback = 1
                trusted = not backup_step
                fresh = 0
            n_backups += backup_step
            if _update(opt, prm, grd, S0, S1, S2, B if backup_step else NULL, B0, B1, B2, P, n_decay, h, step,
                       n_threads, &bd if trusted else NULL):
                # cold path: a non-finite gradient (it always makes its parameter non-finite) or an overflowing
                # update; classify as the per-layer path does, then restore parameters and state
                step -= 1
                bad = _first_nonfinite(grd, P)
                if bad >= 0:
                    status = 2
                else:
                    bad = _first_nonfinite(prm, P)
                    if bad >= 0:
                        value = prm[bad]
                        status = 3
                    elif S0 != NULL and _first_nonfinite(S0, P) >= 0:
                        status, bad = 4, 0
                    elif S1 != NULL and _first_nonfinite(S1, P) >= 0:
                        status, bad = 4, 1
                    else:
                        status, bad = 4, 2
                memcpy(prm, B, P * sizeof(floating))
                if S0 != NULL:
                    memcpy(S0, B0, P * sizeof(floating))
                if S1 != NULL:
                    memcpy(S1, B1, P * sizeof(floating))
                if S2 != NULL:
                    memcpy(S2, B2, P * sizeof(floating))
                break
            stats[0] += loss if (loss_kind == LOSS_REG and reg_kind == FNN_LOSS_L2) else loss * m    # l2 sums
            stats[1] += n_correct
            stats[2] += m
    stats[4] += n_backups
    if status == 1:
        value = loss
    return status, b - b0 if status else b1 - b0, bad, value


def forward_rows(const floating[:, ::1] X, floating[:, ::1] out, const long long[:, ::1] spec,
                 const double[::1] alphas, const long long[:, ::1] bufs, const floating[::1] params,
                 Py_ssize_t bs, int n_threads):
    """Inference through the plan (spec and bufs as for run_batches, made for `bs` rows, no fused output):
    out (OUT, (n, n_out)) = the network's output for X (IN, (n, n_in)), in chunks of bs rows.  Returns the
    index of the first non-finite element of X (nothing computed), or -1."""
    cdef Py_ssize_t n = X.shape[0], n_in0 = X.shape[1], L = spec.shape[0], k = out.shape[1]
    cdef Py_ssize_t s, m, l, nin, nout, bad
    cdef int kind, act
    cdef const floating *x
    cdef floating *Z
    cdef floating *Y
    cdef const floating *prm = &params[0]
    if out.shape[0] != n or bufs.shape[0] != L or spec.shape[0] == 0 or spec[0, 2] != n_in0 or spec[L - 1, 3] != k:
        raise ValueError("forward_rows: arrays do not match the plan")
    if n == 0:
        return -1
    with nogil:
        bad = _first_nonfinite(&X[0, 0], n * n_in0)
        if bad < 0:
            s = 0
            while s < n:
                m = min(bs, n - s)
                x = _forward_chain(&X[s, 0], m, spec, alphas, bufs, prm, n_threads)
                memcpy(&out[s, 0], x, m * k * sizeof(floating))
                s += m
    return bad


def tracked_update(int opt, floating[::1] params, const floating[::1] grads, floating[::1] s0, floating[::1] s1,
                   floating[::1] s2, const double[::1] hyper, Py_ssize_t step, Py_ssize_t n_decay, int n_threads):
    """One unguarded update exactly as run_batches makes a proved one (opt 0 SGD, 1 Adam; hyper and step as
    there): params and the states (IN/OUT, None when absent) are updated in place; returns the maxima it tracked,
    (max |p|, max |s0|, max |s1|, max |s2|), 0.0 for an absent state.  For tests."""
    cdef Bounds mx
    cdef Py_ssize_t n = params.shape[0]
    if grads.shape[0] != n or hyper.shape[0] < 6 or step < 1 or n == 0:
        raise ValueError("tracked_update: bad arguments")
    if ((s0 is not None and s0.shape[0] != n) or (s1 is not None and s1.shape[0] != n)
            or (s2 is not None and s2.shape[0] != n)):
        raise ValueError("tracked_update: a state does not match the parameters")
    cdef floating *p0 = _ptr(s0)
    cdef floating *p1 = _ptr(s1)
    cdef floating *p2 = _ptr(s2)
    with nogil:
        _update(opt, &params[0], &grads[0], p0, p1, p2, NULL, NULL, NULL, NULL, n, max(0, min(n_decay, n)),
                &hyper[0], step, n_threads, &mx)
    return mx.P, mx.S0, mx.S1, mx.S2
