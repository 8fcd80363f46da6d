/* fnn_rnn.h: the recurrent kernel (SimpleRNN, LSTM, GRU with PyTorch's math), forward and backpropagation
 * through time, float and double from one source (the body at the end of this file is included twice, with
 * T = float and T = double).
 *
 * Layout.  X (n, steps, n_in) and the output sequence Y (n, steps, units) are the caller's, batch-major in the
 * original row order.  Inside, the states are time-major in "sorted" row order: Hs (steps+1, n, units) with
 * Hs[0] = h0, Hs[s+1] = the state after processing step s; Cs likewise (LSTM); Gs (steps, n, S) what the
 * backward needs per step (LSTM: i, f, g, o activated, S = 4 units; GRU: r, z, n and W_hn h + b_hn, S = 4 units;
 * SimpleRNN: nothing, h is in Hs).  perm[i] is the original row of sorted row i.
 *
 * Forward: XP = X . W_ih as ONE GEMM over all n*steps rows; then per step s the recurrent GEMM
 * HP[:na] = Hs[s][:na] . W_hh on the na = n_active[s] rows still running, and one fused pass per row over the
 * gates (both biases added there, vectorized sigmoid / tanh, state update, what backward needs stored).  A
 * right-padded mask takes this fast path with the rows sorted by length (descending): the rows that ended are a
 * contiguous tail whose state is copied unchanged.  Any other mask (general path, perm the identity, na = n)
 * is blended per row and step: a masked step leaves the state unchanged and is skipped.
 *
 * Backward: per step (reverse order) dH += dY at that step, the fused gate-derivative pass, then
 * dH[:na] += dG[:na] . W_hh^T; after the loop the weight gradients as large GEMMs over all n*steps rows:
 * dW_hh = Hs[0:steps]^T . dGt (time-major, sorted), dW_ih = X^T . dGo (batch-major, original order; for GRU the
 * two differ in the n-gate: dGt holds dn_pre * r), the bias gradients as their column sums, dX = dGo . W_ih^T.
 *
 * Subnormals: the kernels set MXCSR's flush-to-zero and denormals-are-zero on entry and restore it on exit
 * (x86; elsewhere nothing), so tiny gate values cannot slow the loop down by an order of magnitude. */
#ifndef FNN_RNN_H
#define FNN_RNN_H
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <cblas.h>
#include "fnn_math.h"
#include "fnn_dispatch.h"

#define FNN_RNN_TANH 0
#define FNN_RNN_RELU 1
#define FNN_RNN_LSTM 2
#define FNN_RNN_GRU 3

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#define FNN_HAVE_MXCSR 1
/* set FTZ (bit 15) and DAZ (bit 6); returns the previous control word */
static inline unsigned int fnn_ftz_enter(void) {
    unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
}
static inline void fnn_ftz_exit(unsigned int old) { _mm_setcsr(old); }
#else
#define FNN_HAVE_MXCSR 0
static inline unsigned int fnn_ftz_enter(void) { return 0; }
static inline void fnn_ftz_exit(unsigned int old) { (void)old; }
#endif

/* e^x for float32 without a libm call, branch-free so that loops using it vectorize: Cody-Waite reduction
 * x = n ln2 + r, |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r, 2^n put in the exponent bits.  x is clamped
 * to [-87, 88] (e^88 < FLT_MAX, e^-87 > FLT_MIN: the result is never subnormal nor infinite); NaN stays NaN.
 * Error within 2 ulp of expf on the clamped range. */
static inline float fnn_exp_f(float a) {
    float x = a > 88.0f ? 88.0f : a;
    x = x < -87.0f ? -87.0f : x;
    /* n = round(x / ln2), by the 1.5 * 2^23 trick (round to nearest, no SSE4.1 roundps needed) */
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { float f; int i; } s;
    s.i = ((int)n + 127) << 23;
    return p * s.f;
}
/* sigmoid(x) = 1 / (1 + e^-x) from fnn_exp_f: within a few ulp of the exact value for x >= -87 (below, where the
 * exact value is under 1.7e-38, it returns ~1.6e-38: flushed to zero or not, an absolute error below FLT_MIN) */
static inline float fnn_sigmoid_vec_f(float x) { return 1.0f / (1.0f + fnn_exp_f(-x)); }

#define FNN_RNN_CAT_(a, b) a##b
#define FNN_RNN_CAT(a, b) FNN_RNN_CAT_(a, b)
#define RFN(name) FNN_RNN_CAT(fnn_rnn_##name, SFX)

/* sizes and the row plan of one call */
typedef struct {
    int cell;                      /* FNN_RNN_* */
    ptrdiff_t n, steps, n_in, units;
    int reverse;                   /* go_backwards: step s reads input time steps-1-s */
    const int *perm;               /* (n,) sorted row -> original row */
    const int *n_active;           /* (steps,) rows running at step s (sorted order: a prefix) */
    const unsigned char *mask;     /* (n, steps) original order, indexed by input time; NULL: no per-row blend */
    int n_threads;                 /* fastnn's thread count: the BLAS's count for the large GEMMs */
} fnn_rnn_dims;

/* The per-step GEMMs are small (up to a million multiply-adds): split over threads they pay a fork and a join
 * per step, and on a loaded machine a worker the OS has descheduled stalls the step (on a 2-core machine at load
 * 8, one 2-thread GEMM of 640 x 64 x 64 took 20-50 ms against 0.05 ms on one thread).  Below this many per step
 * the time loop runs the BLAS on one thread; the count is set back to n_threads (fastnn's, not a saved value,
 * so that two kernels running at once cannot leave it at 1). */
#define FNN_RNN_SERIAL_STEP (1L << 20)
static inline void fnn_rnn_blas_threads(int n) { if (n >= 1) scipy_openblas_set_num_threads(n); }

static inline int fnn_rnn_gates(int cell) { return cell == FNN_RNN_LSTM ? 4 : (cell == FNN_RNN_GRU ? 3 : 1); }
/* the per-step stored values of one row: LSTM i, f, g, o; GRU r, z, n, hn; SimpleRNN none */
static inline int fnn_rnn_saved(int cell) { return cell == FNN_RNN_LSTM || cell == FNN_RNN_GRU ? 4 : 0; }

/* The row plan for a mask (n, steps) (NULL: none).  Returns 0 (no mask: identity, all rows every step), 2 (every
 * row a prefix of True and not reverse: perm sorts the rows by length, descending and stable, n_active[s] = the
 * rows longer than s) or 1 (general: identity, all rows, the kernel blends by the mask).  scratch: n + steps + 1
 * ints. */
static int fnn_rnn_mask_plan(const unsigned char *mask, ptrdiff_t n, ptrdiff_t steps, int reverse, int *perm,
                             int *n_active, int *scratch) {
    ptrdiff_t i, s;
    int prefix = 1;
    int *len = scratch, *pos = scratch + n;
    if (mask != NULL && !reverse) {
        for (i = 0; i < n && prefix; i++) {
            const unsigned char *m = mask + i * steps;
            ptrdiff_t l = 0;
            while (l < steps && m[l]) l++;
            for (s = l; s < steps; s++) if (m[s]) { prefix = 0; break; }
            len[i] = (int)l;
        }
    }
    if (mask == NULL || reverse || !prefix) {
        for (i = 0; i < n; i++) perm[i] = (int)i;
        for (s = 0; s < steps; s++) n_active[s] = (int)n;
        return mask == NULL ? 0 : 1;
    }
    for (s = 0; s <= steps; s++) pos[s] = 0;
    for (i = 0; i < n; i++) pos[len[i]]++;
    /* pos[l] := rows longer than l = the first sorted position of a row of length l */
    {
        int above = 0;
        for (s = steps; s >= 0; s--) { int c = pos[s]; pos[s] = above; above += c; }
    }
    for (s = 0; s < steps; s++) n_active[s] = pos[s];
    for (i = 0; i < n; i++) perm[pos[len[i]]++] = (int)i;
    return 2;
}

#define FNN_RNN_PASS 1
#define T float
#define SFX _f
#define SIGMOID fnn_sigmoid_vec_f
#define TANH fnn_tanh_f
#define GEMM scipy_cblas_sgemm
#include "fnn_rnn.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH
#undef GEMM
#define T double
#define SFX _d
#define SIGMOID fnn_sigmoid_d
#define TANH tanh
#define GEMM scipy_cblas_dgemm
#include "fnn_rnn.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH
#undef GEMM
#undef FNN_RNN_PASS

#else  /* FNN_RNN_H: the body, once per element type */
#ifdef FNN_RNN_PASS

/* C (M, N) = alpha op(A) op(B) + beta C, row-major; nothing to multiply (K = 0) scales C by beta */
static void RFN(gemm)(int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *A, ptrdiff_t lda,
                      const T *B, ptrdiff_t ldb, T beta, T *C, ptrdiff_t ldc) {
    ptrdiff_t i, j;
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (i = 0; i < M; i++) for (j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? (T)0 : beta * C[i * ldc + j];
        return;
    }
    GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
         (T)1, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* ---- forward of one row at one step (xp: X.W_ih of the row, hp: h.W_hh, both without biases) ---- */
FNN_CLONES static void RFN(lstm_fwd_row)(ptrdiff_t U, const T *restrict xp, const T *restrict hp,
                                         const T *restrict bi, const T *restrict bh, const T *restrict cp,
                                         T *restrict g, T *restrict c, T *restrict h) {
    ptrdiff_t j;
#pragma omp simd
    for (j = 0; j < U; j++) {
        T ig = SIGMOID(xp[j] + bi[j] + (hp[j] + bh[j]));
        T fg = SIGMOID(xp[U + j] + bi[U + j] + (hp[U + j] + bh[U + j]));
        T gg = TANH(xp[2 * U + j] + bi[2 * U + j] + (hp[2 * U + j] + bh[2 * U + j]));
        T og = SIGMOID(xp[3 * U + j] + bi[3 * U + j] + (hp[3 * U + j] + bh[3 * U + j]));
        T cn = fg * cp[j] + ig * gg;
        g[j] = ig; g[U + j] = fg; g[2 * U + j] = gg; g[3 * U + j] = og;
        c[j] = cn;
        h[j] = og * TANH(cn);
    }
}

FNN_CLONES static void RFN(gru_fwd_row)(ptrdiff_t U, const T *restrict xp, const T *restrict hp,
                                        const T *restrict bi, const T *restrict bh, const T *restrict hprev,
                                        T *restrict g, T *restrict h) {
    ptrdiff_t j;
#pragma omp simd
    for (j = 0; j < U; j++) {
        T r = SIGMOID(xp[j] + bi[j] + (hp[j] + bh[j]));
        T z = SIGMOID(xp[U + j] + bi[U + j] + (hp[U + j] + bh[U + j]));
        T hn = hp[2 * U + j] + bh[2 * U + j];
        T nn = TANH(xp[2 * U + j] + bi[2 * U + j] + r * hn);
        g[j] = r; g[U + j] = z; g[2 * U + j] = nn; g[3 * U + j] = hn;
        h[j] = ((T)1 - z) * nn + z * hprev[j];
    }
}

FNN_CLONES static void RFN(simple_fwd_row)(ptrdiff_t U, int relu, const T *restrict xp, const T *restrict hp,
                                           const T *restrict bi, const T *restrict bh, T *restrict h) {
    ptrdiff_t j;
    if (relu) {
#pragma omp simd
        for (j = 0; j < U; j++) { T v = xp[j] + bi[j] + (hp[j] + bh[j]); h[j] = v > 0 ? v : (T)0; }
    } else {
#pragma omp simd
        for (j = 0; j < U; j++) h[j] = TANH(xp[j] + bi[j] + (hp[j] + bh[j]));
    }
}

/* ---- backward of one row at one step: dh, dc (in: the gradient reaching h_t, c_t; out: the part carried to
 * h_{t-1}, c_{t-1} outside the recurrent GEMM), dgt (hh side), dgo (ih side) ---- */
FNN_CLONES static void RFN(lstm_bwd_row)(ptrdiff_t U, const T *restrict g, const T *restrict c,
                                         const T *restrict cp, T *restrict dh, T *restrict dc, T *restrict dgt,
                                         T *restrict dgo) {
    ptrdiff_t j;
#pragma omp simd
    for (j = 0; j < U; j++) {
        T ig = g[j], fg = g[U + j], gg = g[2 * U + j], og = g[3 * U + j];
        T tc = TANH(c[j]);
        T dhj = dh[j];
        T dct = dc[j] + dhj * og * ((T)1 - tc * tc);
        T di = dct * gg * ig * ((T)1 - ig);
        T df = dct * cp[j] * fg * ((T)1 - fg);
        T dg = dct * ig * ((T)1 - gg * gg);
        T dO = dhj * tc * og * ((T)1 - og);
        dgt[j] = di; dgt[U + j] = df; dgt[2 * U + j] = dg; dgt[3 * U + j] = dO;
        dgo[j] = di; dgo[U + j] = df; dgo[2 * U + j] = dg; dgo[3 * U + j] = dO;
        dc[j] = dct * fg;
        dh[j] = (T)0;
    }
}

FNN_CLONES static void RFN(gru_bwd_row)(ptrdiff_t U, const T *restrict g, const T *restrict hprev,
                                        T *restrict dh, T *restrict dgt, T *restrict dgo) {
    ptrdiff_t j;
#pragma omp simd
    for (j = 0; j < U; j++) {
        T r = g[j], z = g[U + j], nn = g[2 * U + j], hn = g[3 * U + j];
        T dhj = dh[j];
        T dnp = dhj * ((T)1 - z) * ((T)1 - nn * nn);
        T drp = dnp * hn * r * ((T)1 - r);
        T dzp = dhj * (hprev[j] - nn) * z * ((T)1 - z);
        dgo[j] = drp; dgo[U + j] = dzp; dgo[2 * U + j] = dnp;
        dgt[j] = drp; dgt[U + j] = dzp; dgt[2 * U + j] = dnp * r;
        dh[j] = dhj * z;
    }
}

FNN_CLONES static void RFN(simple_bwd_row)(ptrdiff_t U, int relu, const T *restrict h, T *restrict dh,
                                           T *restrict dgt, T *restrict dgo) {
    ptrdiff_t j;
    if (relu) {
#pragma omp simd
        for (j = 0; j < U; j++) { T d = h[j] > 0 ? dh[j] : (T)0; dgt[j] = d; dgo[j] = d; dh[j] = (T)0; }
    } else {
#pragma omp simd
        for (j = 0; j < U; j++) { T d = dh[j] * ((T)1 - h[j] * h[j]); dgt[j] = d; dgo[j] = d; dh[j] = (T)0; }
    }
}

/* Forward over the whole sequence.  IN: X (n, steps, n_in), Wih (n_in, GU), Whh (U, GU), bih, bhh (GU), h0, c0
 * ((n, U) original order, or NULL: zeros).  SCRATCH: XP (n, steps, GU), HP (n, GU).  OUT (kept for backward): Hs,
 * Cs (LSTM), Gs; Y (n, steps, U) or NULL (output at position s = state after step s), hout, cout ((n, U), cout
 * LSTM only, may be NULL). */
static void RFN(forward)(const fnn_rnn_dims *d, const T *X, const T *Wih, const T *Whh, const T *bih,
                         const T *bhh, const T *h0, const T *c0, T *XP, T *HP, T *Hs, T *Cs, T *Gs, T *Y,
                         T *hout, T *cout) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM, gru = cell == FNN_RNN_GRU;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U, SV = fnn_rnn_saved(cell) * U;
    ptrdiff_t i, s;
    unsigned int csr = fnn_ftz_enter();
    const int serial = d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    RFN(gemm)(0, 0, N * S, GU, F, X, F, Wih, GU, (T)0, XP, GU);
    if (serial) fnn_rnn_blas_threads(1);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (h0 != NULL) memcpy(Hs + i * U, h0 + o * U, U * sizeof(T)); else memset(Hs + i * U, 0, U * sizeof(T));
        if (lstm) {
            if (c0 != NULL) memcpy(Cs + i * U, c0 + o * U, U * sizeof(T)); else memset(Cs + i * U, 0, U * sizeof(T));
        }
    }
    for (s = 0; s < S; s++) {
        const ptrdiff_t t = d->reverse ? S - 1 - s : s, na = d->n_active[s];
        const T *hprev = Hs + s * N * U;
        T *hnew = Hs + (s + 1) * N * U;
        const T *cprev = lstm ? Cs + s * N * U : NULL;
        T *cnew = lstm ? Cs + (s + 1) * N * U : NULL;
        RFN(gemm)(0, 0, na, GU, U, hprev, U, Whh, GU, (T)0, HP, GU);
        for (i = 0; i < na; i++) {
            const ptrdiff_t o = d->perm[i];
            const T *xp = XP + (o * S + t) * GU, *hp = HP + i * GU;
            if (d->mask != NULL && !d->mask[o * S + t]) {          /* masked step: the state carries over */
                memcpy(hnew + i * U, hprev + i * U, U * sizeof(T));
                if (lstm) memcpy(cnew + i * U, cprev + i * U, U * sizeof(T));
                continue;
            }
            if (lstm) RFN(lstm_fwd_row)(U, xp, hp, bih, bhh, cprev + i * U, Gs + (s * N + i) * SV, cnew + i * U,
                                        hnew + i * U);
            else if (gru) RFN(gru_fwd_row)(U, xp, hp, bih, bhh, hprev + i * U, Gs + (s * N + i) * SV, hnew + i * U);
            else RFN(simple_fwd_row)(U, cell == FNN_RNN_RELU, xp, hp, bih, bhh, hnew + i * U);
        }
        if (na < N) {                    /* the rows that ended: a contiguous tail, unchanged */
            memcpy(hnew + na * U, hprev + na * U, (N - na) * U * sizeof(T));
            if (lstm) memcpy(cnew + na * U, cprev + na * U, (N - na) * U * sizeof(T));
        }
        if (Y != NULL)
            for (i = 0; i < N; i++) memcpy(Y + (d->perm[i] * S + s) * U, hnew + i * U, U * sizeof(T));
    }
    if (serial) fnn_rnn_blas_threads(d->n_threads);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        memcpy(hout + o * U, Hs + (S * N + i) * U, U * sizeof(T));
        if (lstm && cout != NULL) memcpy(cout + o * U, Cs + (S * N + i) * U, U * sizeof(T));
    }
    fnn_ftz_exit(csr);
}

/* Backward through time.  IN: the forward's X, Wih, Whh, Hs, Cs, Gs; dY (n, steps, U) or NULL, dhout, dcout
 * ((n, U) original order, or NULL: zero).  SCRATCH: dH, dC (n, U), dGt (steps, n, GU), dGo (n, steps, GU).
 * OUT: dX (n, steps, n_in) or NULL, dWih, dWhh, dbih, dbhh (overwritten), dh0, dc0 ((n, U) or NULL), norms
 * ((steps,) or NULL: the L2 norm over the batch of the gradient reaching the state after step s). */
static void RFN(backward)(const fnn_rnn_dims *d, const T *X, const T *Wih, const T *Whh, const T *Hs,
                          const T *Cs, const T *Gs, const T *dY, const T *dhout, const T *dcout, T *dH, T *dC,
                          T *dGt, T *dGo, T *dX, T *dWih, T *dWhh, T *dbih, T *dbhh, T *dh0, T *dc0,
                          double *norms) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM, gru = cell == FNN_RNN_GRU;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U, SV = fnn_rnn_saved(cell) * U;
    ptrdiff_t i, j, s;
    const int serial = d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    unsigned int csr = fnn_ftz_enter();
    if (serial) fnn_rnn_blas_threads(1);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (dhout != NULL) memcpy(dH + i * U, dhout + o * U, U * sizeof(T)); else memset(dH + i * U, 0, U * sizeof(T));
        if (lstm) {
            if (dcout != NULL) memcpy(dC + i * U, dcout + o * U, U * sizeof(T));
            else memset(dC + i * U, 0, U * sizeof(T));
        }
    }
    for (s = S - 1; s >= 0; s--) {
        const ptrdiff_t t = d->reverse ? S - 1 - s : s, na = d->n_active[s];
        T *dgt = dGt + s * N * GU;
        if (dY != NULL)
            for (i = 0; i < N; i++) {
                const T *dy = dY + (d->perm[i] * S + s) * U;
                T *dh = dH + i * U;
                for (j = 0; j < U; j++) dh[j] += dy[j];
            }
        if (norms != NULL) {
            double acc = 0;
            for (j = 0; j < N * U; j++) acc += (double)dH[j] * (double)dH[j];
            norms[s] = sqrt(acc);
        }
        for (i = 0; i < N; i++) {
            const ptrdiff_t o = d->perm[i];
            T *dgo = dGo + (o * S + t) * GU;
            if (i >= na || (d->mask != NULL && !d->mask[o * S + t])) {   /* not run: no gradient, state passes */
                memset(dgt + i * GU, 0, GU * sizeof(T));
                memset(dgo, 0, GU * sizeof(T));
                continue;
            }
            if (lstm) RFN(lstm_bwd_row)(U, Gs + (s * N + i) * SV, Cs + ((s + 1) * N + i) * U, Cs + (s * N + i) * U,
                                        dH + i * U, dC + i * U, dgt + i * GU, dgo);
            else if (gru) RFN(gru_bwd_row)(U, Gs + (s * N + i) * SV, Hs + (s * N + i) * U, dH + i * U,
                                           dgt + i * GU, dgo);
            else RFN(simple_bwd_row)(U, cell == FNN_RNN_RELU, Hs + ((s + 1) * N + i) * U, dH + i * U,
                                     dgt + i * GU, dgo);
        }
        RFN(gemm)(0, 1, na, U, GU, dgt, GU, Whh, GU, (T)1, dH, U);
    }
    if (serial) fnn_rnn_blas_threads(d->n_threads);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (dh0 != NULL) memcpy(dh0 + o * U, dH + i * U, U * sizeof(T));
        if (lstm && dc0 != NULL) memcpy(dc0 + o * U, dC + i * U, U * sizeof(T));
    }
    RFN(gemm)(1, 0, U, GU, S * N, Hs, U, dGt, GU, (T)0, dWhh, GU);
    RFN(gemm)(1, 0, F, GU, N * S, X, F, dGo, GU, (T)0, dWih, GU);
    for (j = 0; j < GU; j++) { dbih[j] = 0; dbhh[j] = 0; }
    for (i = 0; i < N * S; i++) {
        const T *a = dGo + i * GU, *b = dGt + i * GU;
        for (j = 0; j < GU; j++) { dbih[j] += a[j]; dbhh[j] += b[j]; }
    }
    if (dX != NULL) RFN(gemm)(0, 1, N * S, F, GU, dGo, GU, Wih, GU, (T)0, dX, F);
    fnn_ftz_exit(csr);
}

#endif  /* FNN_RNN_PASS */
#endif  /* FNN_RNN_H */
