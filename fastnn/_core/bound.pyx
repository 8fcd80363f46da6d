# cython: boundscheck=False, wraparound=False, cdivision=True
"""The NaN guard's update bound: proves, before an optimizer step runs, that it cannot make a parameter or an
optimizer state value non-finite, so that the compiled training plan (plan.pyx) can skip the guard's backup
copy of the parameters and optimizer state for that step.

The plan knows max |p| and max |s| of each state array: from one read pass over the arrays (``scan_max``) when
a call starts (the user may have changed the weights between calls), and afterwards from the update itself,
which tracks the maxima of what it writes in registers (csrc/fnn_update.h).  Each step it reads its gradient
once (``scan_max``: a NaN/inf, or G = max |g|).  ``sgd_safe`` / ``adam_safe`` return 1 ("proved") only when,
with these maxima and the hyperparameters, every value the update computes is provably finite.  Otherwise the
guard does what it always did (backup, update, check, restore on failure): a wrong "not proved" only costs
time, never correctness.

Soundness (both functions follow the same argument):

* Each function mirrors its kernel's arithmetic (csrc/fnn_update.h) operation by operation, with the
  hyperparameters rounded to the model dtype exactly as the plan casts them (``_c``).  For every intermediate
  x of an element's update it computes an upper bound on |x| from upper bounds of the operands' magnitudes
  (|a + b| <= A + B, |ab| <= AB, |a / b| <= A / b_min with b_min a proved lower bound of the divisor, sqrt
  monotone, a convex combination (1 - c) a + c b with c in [0, 1] bounded by max(A, B)), and requires every
  such bound <= LIM = (largest finite value of the dtype) / 16.  One IEEE operation without overflow gives
  |fl(x)| <= |x| (1 + u) (u = 2^-24 or 2^-53; a fused multiply-add rounds once and obeys the same bound), so
  after the at most ~12 dependent roundings of one element the computed values are <= bound (1 + u)^12 <
  2 LIM < the largest finite value: no intermediate overflows.  (The bounds are computed in double: their own
  rounding, 2^-50 relative at most, and an overflow to inf, which fails the test, are covered the same way.)
* Finite operands and no overflow leave NaN only from 0/0, 0 * inf, inf - inf or sqrt(negative).  No value is
  infinite (above).  Divisors are eps + (something >= 0) and the rounding of a sum is monotone, so a divisor
  is >= eps; eps, and Adam's bias correction sqrt(1 - beta2^t), also a divisor, must be normal numbers (so that
  not even a flush-to-zero mode makes them 0).  Adam takes square roots of exp_avg_sq (or max_exp_avg_sq >= it),
  which the plan's scan requires to be >= 0 elementwise and which the update keeps >= 0 (beta2 v + (1 - beta2)
  g g with beta2, 1 - beta2 in [0, 1] is a sum of non-negative products, and rounding keeps it >= 0).
* Weight decay applies to a prefix of the buffer only; the bounds take the larger of the two ranges
  (|wd| P >= 0 * P; max(|1 - lr wd|, 1) for AdamW's factor).
* Clipping after the gradient scan only makes gradients smaller in magnitude (clamping, or scaling by a factor
  < 1), so G still bounds them.
* RMSprop and Adagrad: their kernels (optim.pyx) track no maxima, so ``rmsprop_safe`` / ``adagrad_safe`` also
  return the bounds that hold after the step (the plan carries them to the next step instead of measured
  maxima; they only grow, and when they no longer prove a step the plan scans the buffers again).  Their
  divisors are sqrt(s) + eps with s >= 0 (square_avg: alpha s + (1 - alpha) g g with alpha, 1 - alpha in
  [0, 1]; Adagrad's sum: s + g g), so >= eps, which must be normal; the quotient g / (sqrt(s) + eps) is bounded
  by G / eps.
* Centered RMSprop is never proved: it takes sqrt(square_avg - grad_avg^2), which is >= 0 in exact arithmetic
  (Cauchy-Schwarz over the exponential weights) but is a difference of nearly equal numbers when the gradients
  are nearly constant, so its rounded value can be negative and the square root NaN.  No bound of the maxima
  excludes that (it would take the elementwise minimum of the difference), so every centered step keeps the
  guard's backup and check.
"""
from libc.math cimport sqrt, fabs, INFINITY
from libc.float cimport FLT_MAX, DBL_MAX, FLT_MIN, DBL_MIN
from cython.parallel cimport prange

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD

cdef extern from "fnn_scan.h" nogil:
    int fnn_scan_range_f(const float *x, Py_ssize_t i0, Py_ssize_t i1, double *amax, double *amin)
    int fnn_scan_range_d(const double *x, Py_ssize_t i0, Py_ssize_t i1, double *amax, double *amin)

cdef enum:
    _MAX_THREADS = 256


cdef inline int _scan_range(const floating *x, Py_ssize_t i0, Py_ssize_t i1, double *amax,
                            double *amin) noexcept nogil:
    if floating is float:
        return fnn_scan_range_f(x, i0, i1, amax, amin)
    else:
        return fnn_scan_range_d(x, i0, i1, amax, amin)


cdef int scan_max(const floating *x, Py_ssize_t n, int n_threads, double *amax, double *amin) noexcept nogil:
    """One read pass over x[0:n]: *amax = max |x| (0 when empty), *amin = min x (inf when empty); returns 1 when
    some element is NaN or infinite (the two values are then meaningless).  Split over threads when large."""
    cdef int nt = threads_for(n, n_threads, FNN_MIN_PER_THREAD), flag = 0
    cdef Py_ssize_t t
    cdef double hi[_MAX_THREADS]
    cdef double lo[_MAX_THREADS]
    cdef int fl[_MAX_THREADS]
    amax[0] = 0.0
    amin[0] = INFINITY
    if n <= 0:
        return 0
    if nt > _MAX_THREADS:
        nt = _MAX_THREADS
    if nt <= 1:             # no parallel region for one thread (entering one costs microseconds)
        return _scan_range(x, 0, n, amax, amin)
    for t in prange(nt, num_threads=nt, schedule="static"):
        hi[t] = 0.0
        lo[t] = INFINITY
        fl[t] = _scan_range(x, t * n // nt, (t + 1) * n // nt, &hi[t], &lo[t])
    for t in range(nt):
        flag |= fl[t]
        if hi[t] > amax[0]:
            amax[0] = hi[t]
        if lo[t] < amin[0]:
            amin[0] = lo[t]
    return flag


cdef inline double _c(double x, bint dbl) noexcept nogil:
    """x as the kernel sees it: rounded to float32 unless dbl (inf when the cast would overflow)."""
    if dbl:
        return x
    if not (fabs(x) <= FLT_MAX):
        return INFINITY
    return <double><float>x


cdef inline double _lim(bint dbl) noexcept nogil:
    return (DBL_MAX if dbl else FLT_MAX) / 16.0


cdef inline bint _normal(double x, bint dbl) noexcept nogil:
    """x (already cast) is a positive normal number: a divisor x + (y >= 0) is then >= x > 0."""
    return x >= (DBL_MIN if dbl else FLT_MIN) and x <= _lim(dbl)


cdef inline double _max(double a, double b) noexcept nogil:
    return a if a > b else b


cdef bint sgd_safe(bint dbl, const Bounds *b, double G, bint has_buf, double lr, double momentum,
                   double dampening, double wd, bint nesterov, bint first) noexcept nogil:
    """SGD (fnn_sgd_range_max): g' = g + wd p; buf = g' (first step) or momentum buf + (1 - dampening) g';
    d = g' + momentum buf (nesterov) or buf (or g' without a buffer); p = p - lr d.
    b.P, b.S0: max |p|, |momentum_buffer| (S0 unused without a buffer or at the first step)."""
    cdef double L = _lim(dbl), P = b.P, B = b.S0, Gp, Bn = 0.0, D, Pn
    lr, momentum, wd = fabs(_c(lr, dbl)), fabs(_c(momentum, dbl)), fabs(_c(wd, dbl))
    cdef double omd = fabs(1.0 - _c(dampening, dbl))
    if not (G <= L and P <= L and lr <= L and momentum <= L and wd <= L and omd <= L):
        return 0
    if has_buf and not first and not (B <= L):
        return 0
    Gp = G + wd * P
    D = Gp
    if has_buf:
        Bn = Gp if first else momentum * B + omd * Gp
        D = Gp + momentum * Bn if nesterov else Bn
    Pn = P + lr * D
    return Gp <= L and Bn <= L and D <= L and Pn <= L


cdef bint adam_safe(bint dbl, const Bounds *b, double G, bint amsgrad, double lr, double beta1, double beta2,
                    double eps, double wd, bint decoupled, Py_ssize_t step) noexcept nogil:
    """Adam / AdamW at `step` (the count after this update, >= 1), as fnn_adam_range_max with the constants the
    plan passes: p' = p dfac; g' = g + wd_c p'; m = m + (1 - beta1)(g' - m); v = beta2 v + (1 - beta2) g' g';
    vm = max(v, vmax) (amsgrad) or v; p = p' - (step_size m) / (sqrt(vm) / bc2 + eps), with step_size =
    lr / (1 - beta1^step), bc2 = sqrt(1 - beta2^step), dfac = 1 - lr wd and wd_c = 0 (AdamW) or dfac = 1 and
    wd_c = wd (Adam).  b.P, b.S0, b.S1, b.S2: max |p|, |exp_avg|, exp_avg_sq (all >= 0), |max_exp_avg_sq|."""
    cdef double L = _lim(dbl), ss, bc2, dfac, wdc, b1, b2, F, Pi, Gp, Dm, Mn, G2, Vn, VMn, r, den, num, Pn
    if step < 1:
        return 0
    if not (lr == lr and beta1 >= 0 and beta1 < 1 and beta2 >= 0 and beta2 < 1 and wd == wd):
        return 0
    ss = fabs(_c(lr / (1.0 - beta1 ** step), dbl))
    bc2 = _c((1.0 - beta2 ** step) ** 0.5, dbl)
    dfac = fabs(_c(1.0 - lr * wd if decoupled else 1.0, dbl))
    wdc = fabs(_c(0.0 if decoupled else wd, dbl))
    b1, b2, eps = _c(beta1, dbl), _c(beta2, dbl), _c(eps, dbl)
    if not (G <= L and b.P <= L and b.S0 <= L and b.S1 <= L and (not amsgrad or b.S2 <= L)
            and b1 >= 0 and b1 <= 1 and b2 >= 0 and b2 <= 1 and ss <= L and dfac <= L and wdc <= L
            and _normal(bc2, dbl) and bc2 <= 1 and _normal(eps, dbl)):
        return 0
    F = _max(dfac, 1.0)          # the decaying prefix multiplies by dfac, the rest by 1
    Pi = b.P * F
    Gp = G + wdc * Pi
    Dm = Gp + b.S0               # g' - m
    Mn = _max(b.S0, Gp)          # m + c (g' - m) = (1 - c) m + c g', c = 1 - beta1 in [0, 1]
    G2 = Gp * Gp
    Vn = _max(b.S1, G2)          # beta2 v + (1 - beta2) g'^2: a convex combination (to a rounding)
    VMn = _max(Vn, b.S2) if amsgrad else Vn
    r = sqrt(VMn) / bc2
    den = r + eps                # >= eps
    num = ss * Mn
    Pn = Pi + num / eps
    return (Pi <= L and Gp <= L and Dm <= L and Mn <= L and G2 <= L and Vn <= L and VMn <= L and r <= L
            and den <= L and num <= L and num / eps <= L and Pn <= L)


cdef inline double _up(double x) noexcept nogil:
    """A carried bound raised by 2^-16 relative: the computed value exceeds the exact one by the rounding of a few
    operations at most ((1 + 2^-24)^12 < 1 + 2^-16 in float32), so that carried bounds do not drift below the
    values from step to step."""
    return x * (1.0 + 2.0 ** -16)


cdef bint rmsprop_safe(bint dbl, const Bounds *b, double G, bint centered, bint has_buf, double lr, double alpha,
                       double eps, double wd, double momentum, Bounds *nb) noexcept nogil:
    """RMSprop (optim.pyx _rmsprop_range), not centered: g' = g + wd p; s = s alpha + ((1 - alpha) g') g';
    a = sqrt(s) + eps; buf = buf momentum + g' / a and p = p - lr buf (with momentum), or p = p - (lr g') / a.
    b.P, b.S0, b.S2: max |p|, square_avg (all >= 0), |momentum_buffer|.  Centered: 0 (not provable, see the module
    docstring).  When proved, *nb holds bounds of |p|, square_avg and |momentum_buffer| after the step."""
    cdef double L = _lim(dbl), a, c, Gp, G2, S, Q, Bn = 0.0, num, Pn
    if centered:
        return 0
    lr, wd, momentum, eps = fabs(_c(lr, dbl)), fabs(_c(wd, dbl)), fabs(_c(momentum, dbl)), _c(eps, dbl)
    a = _c(alpha, dbl)
    c = _c(1.0 - a, dbl)         # (1 - alpha) as the kernel computes it in the model dtype
    if not (a >= 0 and a <= 1 and c >= 0 and c <= 1 and G <= L and b.P <= L and b.S0 <= L
            and (not has_buf or b.S2 <= L) and lr <= L and wd <= L and momentum <= L and _normal(eps, dbl)):
        return 0
    Gp = G + wd * b.P
    G2 = Gp * Gp                 # ((1 - alpha) g') g' <= g'^2
    S = _max(b.S0, G2)           # a convex combination (to a rounding), >= 0
    Q = Gp / eps                 # |g' / a|, a >= eps
    num = lr * Gp
    if has_buf:
        Bn = momentum * b.S2 + Q
        Pn = b.P + lr * Bn
    else:
        Pn = b.P + num / eps
    if not (Gp <= L and G2 <= L and S <= L and sqrt(S) + eps <= L and Q <= L and Bn <= L and num <= L
            and lr * Bn <= L and Pn <= L):
        return 0
    nb.P, nb.S0, nb.S1, nb.S2 = _up(Pn), _up(S), 0.0, _up(Bn)
    return 1


cdef bint adagrad_safe(bint dbl, const Bounds *b, double G, double clr, double wd, double eps,
                       Bounds *nb) noexcept nogil:
    """Adagrad (optim.pyx _adagrad_range) with the step's rate clr: g' = g + wd p; s = s + g' g';
    p = p - (clr g') / (sqrt(s) + eps).  b.P, b.S0: max |p|, sum (all >= 0).  When proved, *nb holds bounds of
    |p| and the sum after the step."""
    cdef double L = _lim(dbl), Gp, G2, S, num, Pn
    clr, wd, eps = fabs(_c(clr, dbl)), fabs(_c(wd, dbl)), _c(eps, dbl)
    if not (G <= L and b.P <= L and b.S0 <= L and clr <= L and wd <= L and _normal(eps, dbl)):
        return 0
    Gp = G + wd * b.P
    G2 = Gp * Gp
    S = b.S0 + G2                # s + g'^2 >= 0
    num = clr * Gp
    Pn = b.P + num / eps
    if not (Gp <= L and G2 <= L and S <= L and sqrt(S) + eps <= L and num <= L and num / eps <= L and Pn <= L):
        return 0
    nb.P, nb.S0, nb.S1, nb.S2 = _up(Pn), _up(S), 0.0, 0.0
    return 1


# ------------------------------------------------------------------ Python entry points (tests)
def scan(const floating[::1] x, int n_threads=1):
    """(nonfinite, max |x|, min x) of x (IN), by scan_max."""
    cdef double amax, amin
    cdef int flag
    with nogil:
        flag = scan_max(&x[0] if x.shape[0] > 0 else NULL, x.shape[0], n_threads, &amax, &amin)
    return bool(flag), amax, amin


def sgd(bint dbl, double G, double P, double B, bint has_buf, double lr, double momentum, double dampening,
        double wd, bint nesterov, bint first):
    """sgd_safe (see there): True when this SGD step provably keeps every value finite."""
    cdef Bounds b
    b.P, b.S0, b.S1, b.S2 = P, B, 0.0, 0.0
    return bool(sgd_safe(dbl, &b, G, has_buf, lr, momentum, dampening, wd, nesterov, first))


def adam(bint dbl, double G, double P, double M, double V, double VM, bint amsgrad, double lr, double beta1,
         double beta2, double eps, double wd, bint decoupled, Py_ssize_t step):
    """adam_safe (see there): True when this Adam / AdamW step provably keeps every value finite."""
    cdef Bounds b
    b.P, b.S0, b.S1, b.S2 = P, M, V, VM
    return bool(adam_safe(dbl, &b, G, amsgrad, lr, beta1, beta2, eps, wd, decoupled, step))


def rmsprop(bint dbl, double G, double P, double S, double B, bint centered, bint has_buf, double lr, double alpha,
            double eps, double wd, double momentum):
    """rmsprop_safe (see there): None when not proved, else the bounds after the step (max |p|, square_avg,
    max |momentum_buffer|)."""
    cdef Bounds b, nb
    b.P, b.S0, b.S1, b.S2 = P, S, 0.0, B
    if not rmsprop_safe(dbl, &b, G, centered, has_buf, lr, alpha, eps, wd, momentum, &nb):
        return None
    return nb.P, nb.S0, nb.S2


def adagrad(bint dbl, double G, double P, double S, double clr, double wd, double eps):
    """adagrad_safe (see there): None when not proved, else the bounds after the step (max |p|, sum)."""
    cdef Bounds b, nb
    b.P, b.S0, b.S1, b.S2 = P, S, 0.0, 0.0
    if not adagrad_safe(dbl, &b, G, clr, wd, eps, &nb):
        return None
    return nb.P, nb.S0
