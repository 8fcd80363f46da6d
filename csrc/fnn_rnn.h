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
 * (The float32 packed path below does the products, and on AVX-512 the weight gradients, per step instead.)
 *
 * Threads (the packed path): the batch's sorted rows are split into one contiguous range per thread, each run
 * through all the steps in one parallel region with no barrier per step (a row's state depends only on its own
 * past); the per-step weight gradients go to per-thread accumulators, summed in thread order at the end.  The
 * BLAS path (float64, no AVX2) runs each step's GEMM on the BLAS's threads, or on one below FNN_RNN_SERIAL_STEP.
 *
 * Subnormals: the kernels set MXCSR's flush-to-zero and denormals-are-zero on entry and restore it on exit
 * (x86; elsewhere nothing), so tiny gate values cannot slow the loop down by an order of magnitude. */
#ifndef FNN_RNN_H
#define FNN_RNN_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <cblas.h>
#include "fnn_math.h"
#include "fnn_dispatch.h"
#include "fnn_exp.h"
#ifdef _OPENMP
#include <omp.h>
#endif

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
 * x = n ln2 + r, |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r (the constants of csrc/fnn_exp.h, whose
 * vector exponentials the losses use), 2^n put in the exponent bits.  x is clamped to [-87, 88] (e^88 < FLT_MAX,
 * e^-87 > FLT_MIN: the result is never subnormal nor infinite); NaN stays NaN.  Error within 2 ulp of expf on
 * the clamped range. */
static inline float fnn_exp_f(float a) {
    float x = a > 88.0f ? 88.0f : a;
    x = x < -87.0f ? -87.0f : x;
    /* n = round(x / ln2), by the 1.5 * 2^23 trick (round to nearest, no SSE4.1 roundps needed) */
    float t = x * FNN_EXPF_LOG2E + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * FNN_EXPF_C1;
    r = r - n * FNN_EXPF_C2;
    float p = FNN_EXPF_P0;
    p = p * r + FNN_EXPF_P1;
    p = p * r + FNN_EXPF_P2;
    p = p * r + FNN_EXPF_P3;
    p = p * r + FNN_EXPF_P4;
    p = p * r + FNN_EXPF_P5;
    p = p * (r * r) + r + 1.0f;
    union { float f; int i; } s;
    s.i = ((int)n + 127) << 23;
    return p * s.f;
}
/* sigmoid(x) = 1 / (1 + e^-x) from fnn_exp_f: within a few ulp of the exact value for x >= -87 (below, where the
 * exact value is under 1.7e-38, it returns ~1.6e-38: flushed to zero or not, an absolute error below FLT_MIN) */
static inline float fnn_sigmoid_vec_f(float x) { return 1.0f / (1.0f + fnn_exp_f(-x)); }

#if defined(__GNUC__) || defined(__clang__)
#define FNN_RNN_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define FNN_RNN_PREFETCH(p) ((void)(p))
#endif
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
    /* An Embedding feeding the layer (the compiled plan; NULL for the per-layer layer): X's row of (row o, time
     * t) is row ids[o * steps + t] of the table emb (vocab, n_in).  The float32 packed forward then multiplies
     * the table once (xtab (vocab, G units) = emb . W_ih, scratch) and reads each step's input projection from
     * it instead of multiplying X's rows per step: the same kernel on the same rows, so the same bits. */
    const int64_t *ids;
    const void *emb;
    ptrdiff_t vocab;
    void *xtab;
} fnn_rnn_dims;

/* the forward reads its input projections from an Embedding's table (fnn_rnn_dims: float32, packed W_ih only),
 * when the table fits in L2 beside the packed weights (fnn_rnn_use_xtab, after fnn_rnn_l2_budget below): R3's
 * 10000-row table (16 MB) read at random ids cost as much as the per-step products it saved, R1's 65 rows
 * (133 KB) made R1 and R2 5% faster */
static inline int fnn_rnn_has_xtab(const fnn_rnn_dims *d) {
    return d->xtab != NULL && d->ids != NULL && d->emb != NULL && d->vocab > 0;
}

/* The BLAS path's per-step GEMMs are small (up to a million multiply-adds): split over threads they pay a fork
 * and a join per step, and on a loaded machine a worker the OS has descheduled stalls the step (on a 2-core
 * machine at load 8, one 2-thread GEMM of 640 x 64 x 64 took 20-50 ms against 0.05 ms on one thread).  Below
 * this many per step the time loop runs the BLAS on one thread; the count is set back to n_threads (fastnn's,
 * not a saved value, so that two kernels running at once cannot leave it at 1). */
#define FNN_RNN_SERIAL_STEP (1L << 20)
static inline void fnn_rnn_blas_threads(int n) { if (n >= 1) scipy_openblas_set_num_threads(n); }

/* ---- threads: the packed time loops split the batch's (sorted) rows between the threads ----
 * A row's state depends on its own earlier states only: each thread runs its contiguous range of rows through all
 * the steps, with no barrier per step (on a loaded machine a descheduled thread would stall every step of a loop
 * that waits for it); the per-step weight gradients go to per-thread accumulators, summed once at the end. */
static inline int fnn_rnn_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static inline int fnn_rnn_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
/* the threads of a packed time loop: fnn's count, at most one per 4 rows (a thread's products on 1 to 4 rows cost
 * one 4-row tile: fewer rows save nothing, and each thread past the first adds a sum of the weight gradients) */
static inline int fnn_rnn_loop_threads(const fnn_rnn_dims *d) {
#ifdef _OPENMP
    const ptrdiff_t most = d->n / 4;
    return d->n_threads < 2 || most < 2 ? 1 : (most < d->n_threads ? (int)most : d->n_threads);
#else
    (void)d;
    return 1;
#endif
}
/* the first sorted row of thread t of nt (t = nt: n): contiguous ranges of about equal work, the work of the rows
 * [0, i) being the row-steps they run, W(i) = sum_s min(i, n_active[s]) (without a length plan: i * steps) */
static ptrdiff_t fnn_rnn_thread_rows(const fnn_rnn_dims *d, int t, int nt) {
    ptrdiff_t lo = 0, hi = d->n, s;
    double total = 0, target;
    if (t <= 0) return 0;
    if (t >= nt) return d->n;
    for (s = 0; s < d->steps; s++) total += (double)d->n_active[s];
    if (total <= 0) return d->n * t / nt;
    target = total * t / nt;
    while (lo < hi) {                              /* the least i with W(i) >= target (W is non-decreasing) */
        const ptrdiff_t mid = lo + (hi - lo) / 2;
        double w = 0;
        for (s = 0; s < d->steps; s++) w += (double)(mid < d->n_active[s] ? mid : d->n_active[s]);
        if (w >= target) hi = mid; else lo = mid + 1;
    }
    return lo;
}

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

/* ---- the packed per-step GEMM (float32, x86-64 with gcc): W_hh packed ONCE per sequence ----
 * OpenBLAS repacks its B operand on every call; the per-step products (32 x 128 by 128 x 512 at hidden 128)
 * are small enough that the repacking and the call overhead are a large part of them.  Here the forward packs
 * W_hh (U, GU) and the backward W_hh^T (GU, U) once per call into column panels of FNN_RNN_NR floats, K deep,
 * zero padded (Bp[p][k][0..NR)), and a register-blocked micro-kernel streams them: AVX-512 8 rows x 32
 * columns (16 zmm accumulators), AVX2+FMA 3 rows x 32 (12 ymm).  The row blocks are fused with the gate pass:
 * the gates of a block of rows are applied as soon as its products are done, while they are in L1.  The CPU is
 * asked once (__builtin_cpu_supports); elsewhere, without AVX2+FMA and for float64 the BLAS runs as before.  The micro-kernels use FMA (as OpenBLAS's own kernels do), so their float32
 * products may differ from the BLAS path in the last bits. */
#define FNN_RNN_NR 32
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
#include <immintrin.h>
#include <unistd.h>
#define FNN_RNN_HAVE_PK 1
#else
#define FNN_RNN_HAVE_PK 0
#endif

/* 0: BLAS; 1: AVX2+FMA; 2: AVX-512 (the CPU's, fnn_fma_isa; fnn_rnn_set_isa caps it, for the tests) */
FNN_ISA_CAPPED(fnn_rnn, FNN_RNN_HAVE_PK)
static inline ptrdiff_t fnn_rnn_panels(ptrdiff_t n) { return (n + FNN_RNN_NR - 1) / FNN_RNN_NR; }
/* bytes of packed weights that one step may stream per row block and keep in L2: half the L2 (glibc's sysconf;
 * 1 MB where it does not say).  Above it the input projection stays one large GEMM before the time loop (hidden
 * 256 LSTM on a 2 MB L2: W_hh and W_ih packed, 2 MB, made the fused forward 1.4x slower). */
static long fnn_rnn_l2_budget_ = -1;
static long fnn_rnn_l2_budget(void) {
    if (fnn_rnn_l2_budget_ < 0) {
        long l2 = 0;
#if FNN_RNN_HAVE_PK && defined(__GLIBC__) && defined(_SC_LEVEL2_CACHE_SIZE)
        l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        fnn_rnn_l2_budget_ = l2 > 0 ? l2 / 2 : (1L << 20);
    }
    return fnn_rnn_l2_budget_;
}
/* the Embedding table (fnn_rnn_has_xtab) with the packed W_hh and W_ih (GU columns, U + F rows) within the budget */
static inline int fnn_rnn_use_xtab(const fnn_rnn_dims *d, ptrdiff_t GU, ptrdiff_t U, ptrdiff_t F) {
    return fnn_rnn_has_xtab(d)
           && ((double)fnn_rnn_panels(GU) * FNN_RNN_NR * (U + F) + (double)d->vocab * GU) * sizeof(float)
                  <= (double)fnn_rnn_l2_budget();
}
/* rows gathered before the per-step weight gradients run (fnn_rnn_wgrad_f), and at most */
#define FNN_RNN_WMIN 128
#define FNN_RNN_WMAX 256
/* floats of the scratch of the per-step weight gradients (fnn_rnn_wgrad_f): two packed gradient groups, and the
 * larger of x's and h's packed transposes */
static ptrdiff_t fnn_rnn_wscratch(ptrdiff_t F, ptrdiff_t U, ptrdiff_t GU) {
    ptrdiff_t m = (F > U ? F : U) + 7;
    return (2 * fnn_rnn_panels(GU) * FNN_RNN_NR + m / 8 * 8) * FNN_RNN_WMAX;
}
/* floats of the packing buffer of a layer run on n_threads threads: the forward's W_hh then W_ih, the backward's
 * W_hh^T then W_ih^T (the forward's packing is dead once its time loop is done, so the two share it), then the
 * backward's scratch for the per-step weight gradients: thread 0's, then for each other thread its own and its
 * accumulators of dW_ih, dW_hh, db_ih, db_hh ((n_in + U + 2) * GU floats) */
static ptrdiff_t fnn_rnn_packed_size(int cell, ptrdiff_t F, ptrdiff_t U, int n_threads) {
    ptrdiff_t GU = (cell == FNN_RNN_LSTM ? 4 : (cell == FNN_RNN_GRU ? 3 : 1)) * U;
    ptrdiff_t a = fnn_rnn_panels(GU) * FNN_RNN_NR * (U + F),
              b = (fnn_rnn_panels(U) + fnn_rnn_panels(F)) * FNN_RNN_NR * GU + fnn_rnn_wscratch(F, U, GU);
    if (n_threads > 1) b += (ptrdiff_t)(n_threads - 1) * (fnn_rnn_wscratch(F, U, GU) + (F + U + 2) * GU);
    return a > b ? a : b;
}
/* Bp <- panels of B (K, N): B[k][n] = src[k * ld + n], or with trans src[n * ld + k] */
static void fnn_rnn_pack_f(int trans, ptrdiff_t K, ptrdiff_t N, const float *src, ptrdiff_t ld, float *Bp) {
    ptrdiff_t p, k, c, np = fnn_rnn_panels(N);
    for (p = 0; p < np; p++)
        for (k = 0; k < K; k++) {
            float *dst = Bp + (p * K + k) * FNN_RNN_NR;
            for (c = 0; c < FNN_RNN_NR; c++) {
                ptrdiff_t col = p * FNN_RNN_NR + c;
                dst[c] = col >= N ? 0.0f : (trans ? src[col * ld + k] : src[k * ld + col]);
            }
        }
}

#if FNN_RNN_HAVE_PK
/* the masks of a panel's first nr <= 32 columns: its two vectors of 16 */
__attribute__((target("avx512f,avx2,fma")))
static inline void fnn_rnn_masks32(ptrdiff_t nr, __mmask16 *m0, __mmask16 *m1) {
    *m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
    *m1 = nr >= 32 ? (__mmask16)0xFFFF : (nr <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nr - 16)) - 1u));
}

/* C[r][col : col + nr] (+)= cs[2r], cs[2r + 1] for the tile's mr rows (the micro-kernels' last step) */
__attribute__((target("avx512f,avx2,fma")))
static inline void fnn_rnn_store_avx512(const __m512 *cs, ptrdiff_t mr, ptrdiff_t nr, float *const *C,
                                        ptrdiff_t col, int acc) {
    __mmask16 m0, m1;
    ptrdiff_t r;
    fnn_rnn_masks32(nr, &m0, &m1);
    for (r = 0; r < mr; r++) {
        float *cr = C[r] + col;
        __m512 v0 = cs[2 * r], v1 = cs[2 * r + 1];
        if (acc) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, v0);
        _mm512_mask_storeu_ps(cr + 16, m1, v1);
    }
}

/* C[0:mr, 0:nr] (+)= A[0:mr, 0:K] . panel (K, 32); mr <= 8, nr <= 32; A: 8 row pointers (past mr: any row) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_mk_avx512(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t K, const float *const *A,
                              const float *Bp, float *const *C, ptrdiff_t col, int acc) {
    const float *a0 = A[0], *a1 = A[1], *a2 = A[2], *a3 = A[3], *a4 = A[4], *a5 = A[5], *a6 = A[6], *a7 = A[7];
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    ptrdiff_t k;
    for (k = 0; k < K; k++) {
        const __m512 b0 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR), b1 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR + 16);
        __m512 x;
#define FNN_RNN_MK(r) x = _mm512_set1_ps(a##r[k]); c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0); \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
        FNN_RNN_MK(0) FNN_RNN_MK(1) FNN_RNN_MK(2) FNN_RNN_MK(3) FNN_RNN_MK(4) FNN_RNN_MK(5) FNN_RNN_MK(6)
        FNN_RNN_MK(7)
#undef FNN_RNN_MK
    }
    {
        __m512 cs[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
        fnn_rnn_store_avx512(cs, mr, nr, C, col, acc);
    }
}

/* the same for the last rows of a block: mr <= 4 (half the multiply-adds of an 8-row tile on 1 to 4 rows) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_mk4_avx512(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t K, const float *const *A,
                               const float *Bp, float *const *C, ptrdiff_t col, int acc) {
    const float *a0 = A[0], *a1 = A[1], *a2 = A[2], *a3 = A[3];
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    ptrdiff_t k;
    for (k = 0; k < K; k++) {
        const __m512 b0 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR), b1 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR + 16);
        __m512 x;
#define FNN_RNN_MK(r) x = _mm512_set1_ps(a##r[k]); c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0); \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
        FNN_RNN_MK(0) FNN_RNN_MK(1) FNN_RNN_MK(2) FNN_RNN_MK(3)
#undef FNN_RNN_MK
    }
    {
        __m512 cs[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
        fnn_rnn_store_avx512(cs, mr, nr, C, col, acc);
    }
}

/* The weight gradients per group of steps (one thread, AVX-512): dW[f][col] += sum_k A[k][f] B[k][col] over the K
 * rows gathered (A[k]: the row's input x or state h, B[k]: its gate gradient), while the gate gradients of the
 * last steps are in L2, instead of two large GEMMs after the time loop (OpenBLAS spent a third of their time
 * copying the (steps * n, G * units) gradient arrays from memory).  The K rows are packed first (A^T in tiles
 * of 8 rows of dW, K deep; B in panels of 32 columns, K deep), so that the micro-kernel streams both
 * contiguously (on the gathered rows directly it waited on L2 misses and ran at half the step kernel's speed). */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_wk_avx512(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t K, const float *Ap, const float *Bp,
                              float *C, ptrdiff_t ldc) {
    __mmask16 m0, m1;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    ptrdiff_t k, r;
    fnn_rnn_masks32(nr, &m0, &m1);
    for (k = 0; k < K; k++) {
        const float *a = Ap + k * 8;
        const __m512 b0 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR), b1 = _mm512_loadu_ps(Bp + k * FNN_RNN_NR + 16);
        __m512 x;
#define FNN_RNN_MK(r) x = _mm512_set1_ps(a[r]); c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0); \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
        FNN_RNN_MK(0) FNN_RNN_MK(1) FNN_RNN_MK(2) FNN_RNN_MK(3) FNN_RNN_MK(4) FNN_RNN_MK(5) FNN_RNN_MK(6)
        FNN_RNN_MK(7)
#undef FNN_RNN_MK
    }
    {
        __m512 cs[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
        for (r = 0; r < mr; r++) {
            float *cr = C + r * ldc;
            _mm512_mask_storeu_ps(cr, m0, _mm512_add_ps(cs[2 * r], _mm512_maskz_loadu_ps(m0, cr)));
            _mm512_mask_storeu_ps(cr + 16, m1, _mm512_add_ps(cs[2 * r + 1], _mm512_maskz_loadu_ps(m1, cr + 16)));
        }
    }
}

/* Bp <- the K rows B[k][0:N] in panels of 32 columns (zero padded), db += sum_k B[k] */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_wpackb_avx512(ptrdiff_t N, ptrdiff_t K, const float *const *B, float *Bp, float *db) {
    ptrdiff_t p, k, np = fnn_rnn_panels(N);
    for (p = 0; p < np; p++) {
        ptrdiff_t nr = N - p * FNN_RNN_NR;
        nr = nr > FNN_RNN_NR ? FNN_RNN_NR : nr;
        const __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u),
                        m1 = nr >= 32 ? (__mmask16)0xFFFF
                                      : (nr <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nr - 16)) - 1u));
        __m512 s0 = _mm512_setzero_ps(), s1 = s0;
        float *dst = Bp + p * K * FNN_RNN_NR;
        for (k = 0; k < K; k++) {
            const float *b = B[k] + p * FNN_RNN_NR;
            const __m512 v0 = _mm512_maskz_loadu_ps(m0, b), v1 = _mm512_maskz_loadu_ps(m1, b + 16);
            _mm512_storeu_ps(dst + k * FNN_RNN_NR, v0);
            _mm512_storeu_ps(dst + k * FNN_RNN_NR + 16, v1);
            s0 = _mm512_add_ps(s0, v0);
            s1 = _mm512_add_ps(s1, v1);
        }
        float *d = db + p * FNN_RNN_NR;
        _mm512_mask_storeu_ps(d, m0, _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m0, d)));
        _mm512_mask_storeu_ps(d + 16, m1, _mm512_add_ps(s1, _mm512_maskz_loadu_ps(m1, d + 16)));
    }
}

/* Ap <- A^T of the K rows A[k][0:M] in tiles of 8 rows of dW, K deep (zero padded): ceil(M / 8) * 8 * K floats */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_wpacka_avx512(ptrdiff_t M, ptrdiff_t K, const float *const *A, float *Ap) {
    ptrdiff_t f, k, r;
    for (f = 0; f < M; f += 8) {
        const ptrdiff_t mr = M - f < 8 ? M - f : 8;
        float *dst = Ap + f * K;
        if (mr == 8)
            for (k = 0; k < K; k++) _mm256_storeu_ps(dst + k * 8, _mm256_loadu_ps(A[k] + f));
        else
            for (k = 0; k < K; k++) for (r = 0; r < 8; r++) dst[k * 8 + r] = r < mr ? A[k][f + r] : 0.0f;
    }
}

/* dW (M, N) += Ap^T Bp (both packed, K deep): panel by panel, so that a panel of Bp stays in L1 while every tile
 * of Ap streams past it (tile by tile, the whole Bp streamed from L2 for each tile) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_wgrad_avx512_(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *Ap, const float *Bp,
                                  float *dW) {
    ptrdiff_t p, f, np = fnn_rnn_panels(N);
    for (p = 0; p < np; p++) {
        ptrdiff_t nr = N - p * FNN_RNN_NR;
        nr = nr > FNN_RNN_NR ? FNN_RNN_NR : nr;
        for (f = 0; f < M; f += 8)
            fnn_rnn_wk_avx512(M - f < 8 ? M - f : 8, nr, K, Ap + f * K, Bp + p * K * FNN_RNN_NR,
                              dW + f * N + p * FNN_RNN_NR, N);
    }
}

/* the same with AVX2+FMA: mr <= 3 rows, 4 ymm per row */
__attribute__((target("avx2,fma")))
static void fnn_rnn_mk_avx2(ptrdiff_t mr, ptrdiff_t nr, ptrdiff_t K, const float *const *A,
                            const float *Bp, float *const *C, ptrdiff_t col, int acc) {
    const float *a0 = A[0], *a1 = A[1], *a2 = A[2];
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
           c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00;
    ptrdiff_t k;
    for (k = 0; k < K; k++) {
        const float *b = Bp + k * FNN_RNN_NR;
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), b2 = _mm256_loadu_ps(b + 16),
                     b3 = _mm256_loadu_ps(b + 24);
        __m256 x;
#define FNN_RNN_MK(r) x = _mm256_broadcast_ss(a##r + k); c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0); \
        c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1); c##r##2 = _mm256_fmadd_ps(x, b2, c##r##2); \
        c##r##3 = _mm256_fmadd_ps(x, b3, c##r##3);
        FNN_RNN_MK(0) FNN_RNN_MK(1) FNN_RNN_MK(2)
#undef FNN_RNN_MK
    }
    {
        float tile[3 * FNN_RNN_NR];
        ptrdiff_t r, j;
        _mm256_storeu_ps(tile, c00); _mm256_storeu_ps(tile + 8, c01); _mm256_storeu_ps(tile + 16, c02);
        _mm256_storeu_ps(tile + 24, c03); _mm256_storeu_ps(tile + 32, c10); _mm256_storeu_ps(tile + 40, c11);
        _mm256_storeu_ps(tile + 48, c12); _mm256_storeu_ps(tile + 56, c13); _mm256_storeu_ps(tile + 64, c20);
        _mm256_storeu_ps(tile + 72, c21); _mm256_storeu_ps(tile + 80, c22); _mm256_storeu_ps(tile + 88, c23);
        for (r = 0; r < mr; r++) {
            float *cr = C[r] + col;
            const float *tr = tile + r * FNN_RNN_NR;
            if (acc) for (j = 0; j < nr; j++) cr[j] += tr[j];
            else for (j = 0; j < nr; j++) cr[j] = tr[j];
        }
    }
}
/* ---- the float32 forward gate rows with AVX-512 (the packed path on AVX-512 CPUs) ----
 * The same math as lstm_fwd_row / gru_fwd_row with fnn_exp_f / fnn_tanh_f, 16 units per vector, the polynomials
 * in fused multiply-adds and each division as a 14-bit reciprocal estimate refined by one Newton step (relative
 * error ~2^-27, against a division's 2^-24 rounding): the generic rows, compiled without FMA contraction
 * (-std=c99) and dividing five times per LSTM unit, spent more time in the gate math than in its products. */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_rnn_rcp16(__m512 d) {
    __m512 y = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.0f)));
}
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_rnn_exp16(__m512 a) {            /* fnn_exp_f; the polynomial: fnn_exp.h's */
    const __m512 x = _mm512_max_ps(_mm512_min_ps(a, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(FNN_EXPF_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FNN_EXPF_C1), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FNN_EXPF_C2), r);
    return _mm512_scalef_ps(fnn_exp16_poly(r), n);
}
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_rnn_sigmoid16(__m512 x) {         /* fnn_sigmoid_vec_f */
    return fnn_rnn_rcp16(_mm512_add_ps(_mm512_set1_ps(1.0f), fnn_rnn_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_rnn_tanh16(__m512 a) {            /* fnn_tanh_f */
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 x = _mm512_max_ps(_mm512_min_ps(a, _mm512_set1_ps(9.0f)), _mm512_set1_ps(-9.0f));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.76076847742355e-16f), _mm512_set1_ps(2.00018790482477e-13f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-8.60467152213735e-11f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(5.12229709037114e-08f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(1.48572235717979e-05f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(6.37261928875436e-04f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(4.89352455891786e-03f));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(1.19825839466702e-06f), _mm512_set1_ps(1.18534705686654e-04f));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(2.26843463243900e-03f));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(4.89352518554385e-03f));
    __m512 r = _mm512_mul_ps(p, fnn_rnn_rcp16(q));
    r = _mm512_max_ps(_mm512_min_ps(r, one), _mm512_sub_ps(_mm512_setzero_ps(), one));
    /* tanh(a) = a for |a| < 4e-4 (keeps -0 and tiny values exact) */
    const __mmask16 tiny = _mm512_cmp_ps_mask(_mm512_abs_ps(a), _mm512_set1_ps(4e-4f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(tiny, r, a);
}
/* lstm_fwd_row (float) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_lstm_fwd_row_avx512(ptrdiff_t U, const float *xp, const float *hp, const float *bi,
                                        const float *bh, const float *cp, float *g, float *c, float *h) {
    ptrdiff_t j;
    for (j = 0; j < U; j += 16) {
        const __mmask16 m = U - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (U - j)) - 1u);
#define FNN_RNN_PRE(q) _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(m, xp + q * U + j), \
        _mm512_maskz_loadu_ps(m, bi + q * U + j)), _mm512_add_ps(_mm512_maskz_loadu_ps(m, hp + q * U + j), \
        _mm512_maskz_loadu_ps(m, bh + q * U + j)))
        const __m512 ig = fnn_rnn_sigmoid16(FNN_RNN_PRE(0)), fg = fnn_rnn_sigmoid16(FNN_RNN_PRE(1)),
                     gg = fnn_rnn_tanh16(FNN_RNN_PRE(2)), og = fnn_rnn_sigmoid16(FNN_RNN_PRE(3));
#undef FNN_RNN_PRE
        const __m512 cn = _mm512_fmadd_ps(fg, _mm512_maskz_loadu_ps(m, cp + j), _mm512_mul_ps(ig, gg));
        _mm512_mask_storeu_ps(g + j, m, ig);
        _mm512_mask_storeu_ps(g + U + j, m, fg);
        _mm512_mask_storeu_ps(g + 2 * U + j, m, gg);
        _mm512_mask_storeu_ps(g + 3 * U + j, m, og);
        _mm512_mask_storeu_ps(c + j, m, cn);
        _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(og, fnn_rnn_tanh16(cn)));
    }
}
/* gru_fwd_row (float) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_gru_fwd_row_avx512(ptrdiff_t U, const float *xp, const float *hp, const float *bi,
                                       const float *bh, const float *hprev, float *g, float *h) {
    ptrdiff_t j;
    for (j = 0; j < U; j += 16) {
        const __mmask16 m = U - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (U - j)) - 1u);
#define FNN_RNN_LD(a, q) _mm512_maskz_loadu_ps(m, a + q * U + j)
        const __m512 r = fnn_rnn_sigmoid16(_mm512_add_ps(_mm512_add_ps(FNN_RNN_LD(xp, 0), FNN_RNN_LD(bi, 0)),
                                                         _mm512_add_ps(FNN_RNN_LD(hp, 0), FNN_RNN_LD(bh, 0))));
        const __m512 z = fnn_rnn_sigmoid16(_mm512_add_ps(_mm512_add_ps(FNN_RNN_LD(xp, 1), FNN_RNN_LD(bi, 1)),
                                                         _mm512_add_ps(FNN_RNN_LD(hp, 1), FNN_RNN_LD(bh, 1))));
        const __m512 hn = _mm512_add_ps(FNN_RNN_LD(hp, 2), FNN_RNN_LD(bh, 2));
        const __m512 nn = fnn_rnn_tanh16(_mm512_fmadd_ps(r, hn, _mm512_add_ps(FNN_RNN_LD(xp, 2), FNN_RNN_LD(bi, 2))));
        const __m512 hv = _mm512_maskz_loadu_ps(m, hprev + j);
#undef FNN_RNN_LD
        _mm512_mask_storeu_ps(g + j, m, r);
        _mm512_mask_storeu_ps(g + U + j, m, z);
        _mm512_mask_storeu_ps(g + 2 * U + j, m, nn);
        _mm512_mask_storeu_ps(g + 3 * U + j, m, hn);
        /* (1 - z) n + z h = n + z (h - n) */
        _mm512_mask_storeu_ps(h + j, m, _mm512_fmadd_ps(z, _mm512_sub_ps(hv, nn), nn));
    }
}

/* simple_fwd_row, tanh (float) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_rnn_tanh_fwd_row_avx512(ptrdiff_t U, const float *xp, const float *hp, const float *bi,
                                        const float *bh, float *h) {
    ptrdiff_t j;
    for (j = 0; j < U; j += 16) {
        const __mmask16 m = U - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (U - j)) - 1u);
        const __m512 v = _mm512_add_ps(
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, xp + j), _mm512_maskz_loadu_ps(m, bi + j)),
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, hp + j), _mm512_maskz_loadu_ps(m, bh + j)));
        _mm512_mask_storeu_ps(h + j, m, fnn_rnn_tanh16(v));
    }
}
#endif

/* Rows of one block: the gate pass of a block runs once its products are done (while they are in L1/L2), and
 * inside the block pgemm runs every row tile against one K-chunk of a panel before the next, so that the chunk is
 * read from L2 once per block and then from L1 (8-row tiles one after another, each streaming the panels from L2,
 * spent a third of the step on L2 traffic at hidden 128). */
#define FNN_RNN_RBMAX 32
#define FNN_RNN_KC 128      /* K-chunk: 128 x 32 floats (16 KB) of a panel stay in L1 for the whole block */
static inline ptrdiff_t fnn_rnn_block_rows(int isa) { return isa == 2 ? 32 : 24; }

/* C[0:M, 0:N] (+)= A[0:M, 0:K] . Bp (packed by fnn_rnn_pack_f); A's rows are A[r * lda], or with rows != NULL
 * (gathered rows) rows[r]; C's rows C[r * ldc], or with crows != NULL crows[r] (scattered);
 * M <= fnn_rnn_block_rows(isa), isa >= 1.  Loops: K-chunk, panel, row tile (8 or 4 rows AVX-512, 3 AVX2). */
/* (no loop-to-memcpy: gcc made the 8-pointer setup of each tile a rep movsq, 2% of a GRU backward) */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
static void fnn_rnn_pgemm_f(int isa, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *A, ptrdiff_t lda,
                            const float *const *rows, const float *Bp, float *C, ptrdiff_t ldc,
                            float *const *crows, int acc) {
#if FNN_RNN_HAVE_PK
    const ptrdiff_t np = fnn_rnn_panels(N), mt = isa == 2 ? 8 : 3;
    ptrdiff_t p, r, r0, k0 = 0;
    const float *a[8];
    float *c[8];
    if (M <= 0) return;
    do {                                           /* once with K = 0: C = 0 (or kept, acc) */
        const ptrdiff_t kc = K - k0 < FNN_RNN_KC ? K - k0 : FNN_RNN_KC;
        const int ac = acc || k0 > 0;
        for (p = 0; p < np; p++) {
            const float *bp = Bp + (p * K + k0) * FNN_RNN_NR;
            ptrdiff_t nr = N - p * FNN_RNN_NR;
            nr = nr > FNN_RNN_NR ? FNN_RNN_NR : nr;
            for (r0 = 0; r0 < M; r0 += mt) {
                const ptrdiff_t mr = M - r0 < mt ? M - r0 : mt;
                for (r = 0; r < mt; r++) {
                    ptrdiff_t q = r0 + (r < mr ? r : mr - 1);
                    a[r] = (rows != NULL ? rows[q] : A + q * lda) + k0;
                    c[r] = crows != NULL ? crows[q] : C + q * ldc;
                }
                if (isa == 2) {
                    if (mr <= 4) fnn_rnn_mk4_avx512(mr, nr, kc, a, bp, c, p * FNN_RNN_NR, ac);
                    else fnn_rnn_mk_avx512(mr, nr, kc, a, bp, c, p * FNN_RNN_NR, ac);
                } else fnn_rnn_mk_avx2(mr, nr, kc, a, bp, c, p * FNN_RNN_NR, ac);
            }
        }
        k0 += FNN_RNN_KC;
    } while (k0 < K);
#else
    (void)isa; (void)M; (void)N; (void)K; (void)A; (void)lda; (void)rows; (void)Bp; (void)C; (void)ldc;
    (void)crows; (void)acc;
#endif
}

/* The weight and bias gradients of a group of K rows (AVX-512 only; the caller checks the ISA): dWih += sum_k
 * x_k^T go_k, dWhh += sum_k h_k^T gt_k, dbih += sum_k go_k, dbhh += sum_k gt_k; go == gt (same pointers): one
 * packing.  scratch: fnn_rnn_wscratch(F, U, GU) floats. */
static void fnn_rnn_wgrad_f(ptrdiff_t F, ptrdiff_t U, ptrdiff_t GU, ptrdiff_t K, const float *const *x,
                            const float *const *h, const float *const *go, const float *const *gt, float *dWih,
                            float *dWhh, float *dbih, float *dbhh, float *scratch) {
#if FNN_RNN_HAVE_PK
    float *Bt = scratch, *Bo = Bt + fnn_rnn_panels(GU) * FNN_RNN_NR * FNN_RNN_WMAX,
          *Ap = Bo + fnn_rnn_panels(GU) * FNN_RNN_NR * FNN_RNN_WMAX;
    ptrdiff_t j;
    fnn_rnn_wpackb_avx512(GU, K, gt, Bt, dbhh);
    if (go != gt) fnn_rnn_wpackb_avx512(GU, K, go, Bo, dbih);
    else { Bo = Bt; for (j = 0; j < GU; j++) dbih[j] = dbhh[j]; }   /* equal at every group's end: copy */
    fnn_rnn_wpacka_avx512(U, K, h, Ap);
    fnn_rnn_wgrad_avx512_(U, GU, K, Ap, Bt, dWhh);
    fnn_rnn_wpacka_avx512(F, K, x, Ap);
    fnn_rnn_wgrad_avx512_(F, GU, K, Ap, Bo, dWih);
#else
    (void)F; (void)U; (void)GU; (void)K; (void)x; (void)h; (void)go; (void)gt; (void)dWih; (void)dWhh; (void)dbih;
    (void)dbhh; (void)scratch;
#endif
}

/* the float32 forward gate rows of the packed path: AVX-512 (isa 2) or the generic ones (return 0) */
static int fnn_rnn_fwd_row_f(int isa, int cell, ptrdiff_t U, const float *xp, const float *hp, const float *bi,
                             const float *bh, const float *prev_c_or_h, float *g, float *c, float *h) {
#if FNN_RNN_HAVE_PK
    if (isa == 2 && cell == FNN_RNN_LSTM) {
        fnn_rnn_lstm_fwd_row_avx512(U, xp, hp, bi, bh, prev_c_or_h, g, c, h);
        return 1;
    }
    if (isa == 2 && cell == FNN_RNN_GRU) {
        fnn_rnn_gru_fwd_row_avx512(U, xp, hp, bi, bh, prev_c_or_h, g, h);
        return 1;
    }
    if (isa == 2 && cell == FNN_RNN_TANH) {
        fnn_rnn_tanh_fwd_row_avx512(U, xp, hp, bi, bh, h);
        return 1;
    }
#endif
    (void)isa; (void)cell; (void)U; (void)xp; (void)hp; (void)bi; (void)bh; (void)prev_c_or_h; (void)g; (void)c;
    (void)h;
    return 0;
}

#define FNN_RNN_PASS 1
#define T float
#define SFX _f
#define SIGMOID fnn_sigmoid_vec_f
#define TANH fnn_tanh_f
#define GEMM scipy_cblas_sgemm
#define PACKED 1
#include "fnn_rnn.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH
#undef GEMM
#undef PACKED
#define T double
#define SFX _d
#define SIGMOID fnn_sigmoid_d
#define TANH tanh
#define GEMM scipy_cblas_dgemm
#define PACKED 0
#include "fnn_rnn.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH
#undef GEMM
#undef PACKED
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
                                         const T *restrict cp, T *restrict dh, T *restrict dc, T *restrict dg) {
    ptrdiff_t j;
#pragma omp simd
    for (j = 0; j < U; j++) {
        T ig = g[j], fg = g[U + j], gg = g[2 * U + j], og = g[3 * U + j];
        T tc = TANH(c[j]);
        T dhj = dh[j];
        T dct = dc[j] + dhj * og * ((T)1 - tc * tc);
        T di = dct * gg * ig * ((T)1 - ig);
        T df = dct * cp[j] * fg * ((T)1 - fg);
        T dgg = dct * ig * ((T)1 - gg * gg);
        T dO = dhj * tc * og * ((T)1 - og);
        dg[j] = di; dg[U + j] = df; dg[2 * U + j] = dgg; dg[3 * U + j] = dO;
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
                                           T *restrict dg) {
    ptrdiff_t j;
    if (relu) {
#pragma omp simd
        for (j = 0; j < U; j++) { T d = h[j] > 0 ? dh[j] : (T)0; dg[j] = d; dh[j] = (T)0; }
    } else {
#pragma omp simd
        for (j = 0; j < U; j++) { T d = dh[j] * ((T)1 - h[j] * h[j]); dg[j] = d; dh[j] = (T)0; }
    }
}

/* The time loop of the forward over the sorted rows [lo, hi): a thread's share of the batch (the whole batch on
 * one thread).  A row's state depends on its own earlier states only, so the threads run their rows through all
 * the steps with no barrier; each streams the packed weights (Wp: W_hh, Wpi: W_ih or NULL) from its own L2, and
 * with Wpi uses XP's rows [lo, lo + RB) for the input projection of its row blocks. */
static void RFN(forward_rows)(const fnn_rnn_dims *d, ptrdiff_t lo, ptrdiff_t hi, int isa, const T *Wp,
                              const T *Wpi, const T *X, const T *Whh, const T *bih, const T *bhh, T *XP, T *HP,
                              T *Hs, T *Cs, T *Gs, T *Y) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM, gru = cell == FNN_RNN_GRU;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U, SV = fnn_rnn_saved(cell) * U;
    ptrdiff_t i, s;
#if PACKED
    const ptrdiff_t RB = isa ? fnn_rnn_block_rows(isa) : N;
    const float *xrows[FNN_RNN_RBMAX];
    /* the embedding table's input projections (fnn_rnn_dims), made by the forward once Wpi is packed */
    const float *xtab = Wpi != NULL && fnn_rnn_use_xtab(d, fnn_rnn_gates(d->cell) * d->units, d->units, d->n_in)
                        ? (const float *)d->xtab : NULL;
#else
    const ptrdiff_t RB = N;
    (void)Wp; (void)Wpi; (void)F;
#endif
    for (s = 0; s < S; s++) {
        const ptrdiff_t t = d->reverse ? S - 1 - s : s, na = d->n_active[s] < hi ? d->n_active[s] : hi;
        const T *hprev = Hs + s * N * U;
        T *hnew = Hs + (s + 1) * N * U;
        const T *cprev = lstm ? Cs + s * N * U : NULL;
        T *cnew = lstm ? Cs + (s + 1) * N * U : NULL;
        ptrdiff_t i0, i1;
        if (!isa && na > lo) RFN(gemm)(0, 0, na - lo, GU, U, hprev + lo * U, U, Whh, GU, (T)0, HP + lo * GU, GU);
        for (i0 = lo; i0 < na; i0 += RB) {           /* packed: the products of a block of rows, then its gates */
          i1 = i0 + RB < na ? i0 + RB : na;
#if PACKED
          if (xtab != NULL)          /* the block's table rows (random ids: no hardware prefetch), during its product */
              for (i = i0; i < i1; i++) {
                  const float *xr = xtab + d->ids[d->perm[i] * S + t] * GU;
                  for (ptrdiff_t j = 0; j < GU; j += 16) FNN_RNN_PREFETCH(xr + j);
              }
          if (isa) fnn_rnn_pgemm_f(isa, i1 - i0, GU, U, hprev + i0 * U, U, NULL, Wp, HP + i0 * GU, GU, NULL, 0);
          if (Wpi != NULL && xtab == NULL) {
              for (i = i0; i < i1; i++) {
                  const float *x = X + (d->perm[i] * S + t) * F;
                  xrows[i - i0] = x;
                  if (s + 1 < S)                     /* the row's next step (see the backward's dY) */
                      for (ptrdiff_t j = 0; j < F; j += 16) FNN_RNN_PREFETCH(d->reverse ? x - F + j : x + F + j);
              }
              fnn_rnn_pgemm_f(isa, i1 - i0, GU, F, NULL, 0, xrows, Wpi, XP + lo * GU, GU, NULL, 0);
          }
#endif
          for (i = i0; i < i1; i++) {
            const ptrdiff_t o = d->perm[i];
#if PACKED
            const T *xp = xtab != NULL ? xtab + d->ids[o * S + t] * GU
                          : Wpi != NULL ? XP + (lo + i - i0) * GU : XP + (o * S + t) * GU, *hp = HP + i * GU;
#else
            const T *xp = XP + (o * S + t) * GU, *hp = HP + i * GU;
#endif
            if (d->mask != NULL && !d->mask[o * S + t]) {          /* masked step: the state carries over */
                memcpy(hnew + i * U, hprev + i * U, U * sizeof(T));
                if (lstm) memcpy(cnew + i * U, cprev + i * U, U * sizeof(T));
                continue;
            }
#if PACKED
            if (isa && fnn_rnn_fwd_row_f(isa, cell, U, xp, hp, bih, bhh, lstm ? cprev + i * U : hprev + i * U,
                                         Gs + (s * N + i) * SV, lstm ? cnew + i * U : NULL, hnew + i * U))
                continue;
#endif
            if (lstm) RFN(lstm_fwd_row)(U, xp, hp, bih, bhh, cprev + i * U, Gs + (s * N + i) * SV, cnew + i * U,
                                        hnew + i * U);
            else if (gru) RFN(gru_fwd_row)(U, xp, hp, bih, bhh, hprev + i * U, Gs + (s * N + i) * SV, hnew + i * U);
            else RFN(simple_fwd_row)(U, cell == FNN_RNN_RELU, xp, hp, bih, bhh, hnew + i * U);
          }
        }
        if (na < hi) {                   /* the rows that ended: a contiguous tail, unchanged */
            const ptrdiff_t e = na > lo ? na : lo;
            memcpy(hnew + e * U, hprev + e * U, (hi - e) * U * sizeof(T));
            if (lstm) memcpy(cnew + e * U, cprev + e * U, (hi - e) * U * sizeof(T));
        }
        if (Y != NULL)
            for (i = lo; i < hi; i++) memcpy(Y + (d->perm[i] * S + s) * U, hnew + i * U, U * sizeof(T));
    }
}

/* Forward over the whole sequence.  IN: X (n, steps, n_in), Wih (n_in, GU), Whh (U, GU), bih, bhh (GU), h0, c0
 * ((n, U) original order, or NULL: zeros).  SCRATCH: XP (n, steps, GU), HP (n, GU).  OUT (kept for backward): Hs,
 * Cs (LSTM), Gs; Y (n, steps, U) or NULL (output at position s = state after step s), hout, cout ((n, U), cout
 * LSTM only, may be NULL). */
static void RFN(forward)(const fnn_rnn_dims *d, const T *X, const T *Wih, const T *Whh, const T *bih,
                         const T *bhh, const T *h0, const T *c0, T *XP, T *HP, T *Hs, T *Cs, T *Gs, T *Y,
                         T *hout, T *cout, T *Wp) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U;
    ptrdiff_t i;
    unsigned int csr = fnn_ftz_enter();
#if PACKED
    const int isa = Wp != NULL ? fnn_rnn_isa() : 0;
    /* packed: the rows split between the threads (fnn_rnn_thread_rows), one parallel region for the whole loop */
    const int nth = isa ? fnn_rnn_loop_threads(d) : 1;
    const int serial = !isa && d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    /* packed W_hh and W_ih within the L2 budget: the input projection too is done per step and row block (W_ih
     * packed after W_hh), into the first RB rows of the thread's rows of XP, so that X . W_ih is never written out
     * and read back (N * steps * GU floats) */
    float *Wpi = isa && (double)fnn_rnn_panels(GU) * FNN_RNN_NR * (U + F) * sizeof(float)
                        <= (double)fnn_rnn_l2_budget()
                 ? Wp + fnn_rnn_panels(GU) * FNN_RNN_NR * U : NULL;
    if (isa) fnn_rnn_pack_f(0, U, GU, Whh, GU, Wp);
    if (Wpi != NULL) {
        fnn_rnn_pack_f(0, F, GU, Wih, GU, Wpi);
        if (fnn_rnn_use_xtab(d, GU, U, F)) {      /* an Embedding's table: every id's input projection, once */
            const ptrdiff_t RB = fnn_rnn_block_rows(isa);
            for (i = 0; i < d->vocab; i += RB)
                fnn_rnn_pgemm_f(isa, d->vocab - i < RB ? d->vocab - i : RB, GU, F, (const float *)d->emb + i * F,
                                F, NULL, Wpi, (float *)d->xtab + i * GU, GU, NULL, 0);
        }
    } else
#else
    const int isa = 0, nth = 1;
    const int serial = d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    T *Wpi = NULL;
#endif
    RFN(gemm)(0, 0, N * S, GU, F, X, F, Wih, GU, (T)0, XP, GU);
    if (serial) fnn_rnn_blas_threads(1);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (h0 != NULL) memcpy(Hs + i * U, h0 + o * U, U * sizeof(T)); else memset(Hs + i * U, 0, U * sizeof(T));
        if (lstm) {
            if (c0 != NULL) memcpy(Cs + i * U, c0 + o * U, U * sizeof(T)); else memset(Cs + i * U, 0, U * sizeof(T));
        }
    }
    if (nth > 1) {
#pragma omp parallel num_threads(nth)
        {
            const int t = fnn_rnn_thread_num(), nt = fnn_rnn_num_threads();
            const unsigned int tcsr = fnn_ftz_enter();           /* MXCSR is per thread */
            RFN(forward_rows)(d, fnn_rnn_thread_rows(d, t, nt), fnn_rnn_thread_rows(d, t + 1, nt), isa, Wp, Wpi,
                              X, Whh, bih, bhh, XP, HP, Hs, Cs, Gs, Y);
            fnn_ftz_exit(tcsr);
        }
    } else RFN(forward_rows)(d, 0, N, isa, Wp, Wpi, X, Whh, bih, bhh, XP, HP, Hs, Cs, Gs, Y);
    if (serial) fnn_rnn_blas_threads(d->n_threads);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        memcpy(hout + o * U, Hs + (S * N + i) * U, U * sizeof(T));
        if (lstm && cout != NULL) memcpy(cout + o * U, Cs + (S * N + i) * U, U * sizeof(T));
    }
    fnn_ftz_exit(csr);
}

/* The time loop of the backward over the sorted rows [lo, hi) (a thread's share, or the whole batch): like the
 * forward's, the rows need no barrier.  With wstep (AVX-512) the thread gathers groups of its own rows and adds
 * their weight and bias gradients into its own accumulators dWih, dWhh, dbih, dbhh (the outputs on thread 0),
 * with its own scratch Wsc; its step slots of dGt are its rows of the wslots slots.  norms only on one thread. */
static void RFN(backward_rows)(const fnn_rnn_dims *d, ptrdiff_t lo, ptrdiff_t hi, int isa, int wstep,
                               int need_dgo, const T *Wp, const T *Wpi, T *Wsc, const T *X, const T *Whh,
                               const T *Hs, const T *Cs, const T *Gs, const T *dY, T *dH, T *dC, T *dGt, T *dGo,
                               T *dX, T *dWih, T *dWhh, T *dbih, T *dbhh, double *norms) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM, gru = cell == FNN_RNN_GRU;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U, SV = fnn_rnn_saved(cell) * U;
    ptrdiff_t i, j, s, ws = 0;
#if PACKED
    const ptrdiff_t RB = isa ? fnn_rnn_block_rows(isa) : N;
    const float *xrows[FNN_RNN_RBMAX];
    float *dxrows[FNN_RNN_RBMAX];
    const float *wx[FNN_RNN_WMAX], *wh[FNN_RNN_WMAX], *wgo[FNN_RNN_WMAX], *wgt[FNN_RNN_WMAX];
    ptrdiff_t wn = 0;
    /* with the per-step weight gradients nothing reads a step's gate gradients after its group: they cycle through
     * wslots step slots of dGt (and of dGo for GRU), which stay in cache instead of claiming new lines from memory
     * every step (a group that reaches wslots steps, possible when the mask leaves few rows running, runs early) */
    const ptrdiff_t wslots = wstep ? (FNN_RNN_WMIN + (hi - lo) - 1) / (hi > lo ? hi - lo : 1) + 1 : S;
#else
    const ptrdiff_t RB = N, wslots = S;
    (void)Wp; (void)Wpi; (void)Wsc; (void)X; (void)F; (void)dX; (void)dWih; (void)dWhh; (void)dbih; (void)dbhh;
    (void)wslots;
#endif
    for (s = S - 1; s >= 0; s--) {
        const ptrdiff_t t = d->reverse ? S - 1 - s : s, na = d->n_active[s] < hi ? d->n_active[s] : hi;
        const ptrdiff_t slot = wstep ? ws : s;          /* the step's rows in dGt (and time-major dGo) */
        T *dgt = dGt + slot * N * GU;
        if (dY != NULL)
            for (i = lo; i < hi; i++) {
                const T *dy = dY + (d->perm[i] * S + s) * U;
                T *dh = dH + i * U;
                for (j = 0; j < U; j++) dh[j] += dy[j];
                /* the row's next step: one row every steps * U values, too far apart for the hardware prefetcher */
                if (s > 0) for (j = 0; j < U; j += 64 / (ptrdiff_t)sizeof(T)) FNN_RNN_PREFETCH(dy - U + j);
            }
        if (norms != NULL) {
            double acc = 0;
            for (j = lo * U; j < hi * U; j++) acc += (double)dH[j] * (double)dH[j];
            norms[s] = sqrt(acc);
        }
        ptrdiff_t i0, i1;
        for (i0 = lo; i0 < hi; i0 += RB) {   /* packed: the gate derivatives of a block of rows, then its product */
          i1 = i0 + RB < hi ? i0 + RB : hi;
          for (i = i0; i < i1; i++) {
            const ptrdiff_t o = d->perm[i];
            T *dgo = dGo + (need_dgo ? o * S + t : slot * N + i) * GU, *dg = dgt + i * GU;
            if (i >= na || (d->mask != NULL && !d->mask[o * S + t])) {   /* not run: no gradient, state passes */
                memset(dg, 0, GU * sizeof(T));
                if (need_dgo || gru) memset(dgo, 0, GU * sizeof(T));
                continue;
            }
            if (lstm) RFN(lstm_bwd_row)(U, Gs + (s * N + i) * SV, Cs + ((s + 1) * N + i) * U, Cs + (s * N + i) * U,
                                        dH + i * U, dC + i * U, dg);
            else if (gru) RFN(gru_bwd_row)(U, Gs + (s * N + i) * SV, Hs + (s * N + i) * U, dH + i * U, dg, dgo);
            else RFN(simple_bwd_row)(U, cell == FNN_RNN_RELU, Hs + ((s + 1) * N + i) * U, dH + i * U, dg);
            if (need_dgo && !gru) memcpy(dgo, dg, GU * sizeof(T));
#if PACKED
            if (wstep) {                 /* the row joins the group of the weight gradients */
                wx[wn] = X + (o * S + t) * F;
                wh[wn] = Hs + (s * N + i) * U;
                wgt[wn] = dg;
                wgo[wn] = gru ? dgo : dg;
                if (++wn == FNN_RNN_WMAX) {
                    fnn_rnn_wgrad_f(F, U, GU, wn, wx, wh, wgo, wgt, dWih, dWhh, dbih, dbhh, Wsc);
                    wn = 0;
                }
            }
#endif
          }
#if PACKED
          if (isa && i0 < na) fnn_rnn_pgemm_f(isa, (i1 < na ? i1 : na) - i0, U, GU, dgt + i0 * GU, GU, NULL, Wp,
                                              dH + i0 * U, U, NULL, 1);
          if (Wpi != NULL) {             /* dX rows of the block (all rows: a row not run gets zeros) */
              for (i = i0; i < i1; i++) {
                  xrows[i - i0] = !gru ? dgt + i * GU
                                  : dGo + (need_dgo ? d->perm[i] * S + t : slot * N + i) * GU;
                  dxrows[i - i0] = dX + (d->perm[i] * S + t) * F;
              }
              fnn_rnn_pgemm_f(isa, i1 - i0, F, GU, NULL, 0, xrows, Wpi, NULL, 0, dxrows, 0);
          }
#endif
        }
        if (!isa && na > lo) RFN(gemm)(0, 1, na - lo, U, GU, dgt + lo * GU, GU, Whh, GU, (T)1, dH + lo * U, U);
#if PACKED
        if (wstep && (wn >= FNN_RNN_WMIN || s == 0 || ws + 1 == wslots)) {
            if (wn > 0) fnn_rnn_wgrad_f(F, U, GU, wn, wx, wh, wgo, wgt, dWih, dWhh, dbih, dbhh, Wsc);
            wn = 0;
            ws = 0;
        } else ws++;
#endif
    }
}

/* Backward through time.  IN: the forward's X, Wih, Whh, Hs, Cs, Gs; dY (n, steps, U) or NULL, dhout, dcout
 * ((n, U) original order, or NULL: zero).  SCRATCH: dH, dC (n, U), dGt (steps, n, GU), dGo (n, steps, GU).
 * OUT: dX (n, steps, n_in) or NULL, dWih, dWhh, dbih, dbhh (overwritten), dh0, dc0 ((n, U) or NULL), norms
 * ((steps,) or NULL: the L2 norm over the batch of the gradient reaching the state after step s). */
static void RFN(backward)(const fnn_rnn_dims *d, const T *X, const T *Wih, const T *Whh, const T *Hs,
                          const T *Cs, const T *Gs, const T *dY, const T *dhout, const T *dcout, T *dH, T *dC,
                          T *dGt, T *dGo, T *dX, T *dWih, T *dWhh, T *dbih, T *dbhh, T *dh0, T *dc0,
                          double *norms, T *Wp) {
    const ptrdiff_t N = d->n, S = d->steps, F = d->n_in, U = d->units;
    const int cell = d->cell, lstm = cell == FNN_RNN_LSTM;
    const ptrdiff_t GU = fnn_rnn_gates(cell) * U;
    ptrdiff_t i, j;
    unsigned int csr = fnn_ftz_enter();
#if PACKED
    const int isa = Wp != NULL ? fnn_rnn_isa() : 0;
    /* packed: the rows split between the threads as in the forward (the step norms, a sum over all rows, keep
     * one thread) */
    const int nth = isa && norms == NULL ? fnn_rnn_loop_threads(d) : 1;
    const int serial = !isa && d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    /* packed W_hh^T and W_ih^T within the L2 budget: dX = dGo . W_ih^T per step and row block too, while the
     * block's gate derivatives are in L1 (W_ih^T packed after W_hh^T) */
    float *Wpi = isa && dX != NULL && F > 0
                 && (double)(fnn_rnn_panels(U) + fnn_rnn_panels(F)) * FNN_RNN_NR * GU * sizeof(float)
                    <= (double)fnn_rnn_l2_budget()
                 ? Wp + fnn_rnn_panels(U) * FNN_RNN_NR * GU : NULL;
    /* AVX-512: the weight and bias gradients per group of steps (>= FNN_RNN_WMIN rows of a thread, at most
     * FNN_RNN_WMAX), from the rows' x, h and gate gradients while they are in L2 (fnn_rnn_wgrad_avx512); several
     * threads: each into its own accumulators (thread 0: the outputs), summed in thread order at the end */
    const int wstep = isa == 2;
    float *Wsc = Wp + (fnn_rnn_panels(U) + fnn_rnn_panels(F)) * FNN_RNN_NR * GU;   /* past W_hh^T and W_ih^T */
    if (isa) fnn_rnn_pack_f(1, GU, U, Whh, GU, Wp);
    if (Wpi != NULL) fnn_rnn_pack_f(1, GU, F, Wih, GU, Wpi);
#else
    const int isa = 0, wstep = 0, nth = 1;
    const int serial = d->n_threads > 1 && N * GU * U < FNN_RNN_SERIAL_STEP;
    T *Wpi = NULL, *Wsc = NULL;
#endif
    /* dGo (batch-major, the ih side) is needed by the GEMMs after the loop; for LSTM and SimpleRNN its rows equal
     * dGt's, which the per-step products read instead; GRU's (its n-gate differs) are then stored time-major like
     * dGt's (a row written where the next steps' rows follow, not one row every steps * GU floats) */
    const int need_dgo = !wstep || (dX != NULL && Wpi == NULL);
    if (serial) fnn_rnn_blas_threads(1);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (dhout != NULL) memcpy(dH + i * U, dhout + o * U, U * sizeof(T)); else memset(dH + i * U, 0, U * sizeof(T));
        if (lstm) {
            if (dcout != NULL) memcpy(dC + i * U, dcout + o * U, U * sizeof(T));
            else memset(dC + i * U, 0, U * sizeof(T));
        }
    }
    if (nth > 1) {
#if PACKED
#pragma omp parallel num_threads(nth)
        {
            const int t = fnn_rnn_thread_num(), nt = fnn_rnn_num_threads();
            const unsigned int tcsr = fnn_ftz_enter();           /* MXCSR is per thread */
            const ptrdiff_t wsz = fnn_rnn_wscratch(F, U, GU), stride = wsz + (F + U + 2) * GU;
            float *sc = Wsc + (t == 0 ? 0 : wsz + (t - 1) * stride), *acc = sc + wsz;
            float *aih = t == 0 ? dWih : acc, *ahh = t == 0 ? dWhh : acc + F * GU,
                  *bi = t == 0 ? dbih : acc + (F + U) * GU, *bh = t == 0 ? dbhh : acc + (F + U + 1) * GU;
            if (wstep) {
                memset(aih, 0, F * GU * sizeof(T)); memset(ahh, 0, U * GU * sizeof(T));
                memset(bi, 0, GU * sizeof(T)); memset(bh, 0, GU * sizeof(T));
            }
            RFN(backward_rows)(d, fnn_rnn_thread_rows(d, t, nt), fnn_rnn_thread_rows(d, t + 1, nt), isa, wstep,
                               need_dgo, Wp, Wpi, sc, X, Whh, Hs, Cs, Gs, dY, dH, dC, dGt, dGo, dX, aih, ahh, bi,
                               bh, NULL);
            if (wstep && nt > 1) {       /* out += the other threads' sums, in thread order: each a slice */
#pragma omp barrier
                float *out[4] = {dWih, dWhh, dbih, dbhh};
                const ptrdiff_t len[4] = {F * GU, U * GU, GU, GU}, off[4] = {0, F * GU, (F + U) * GU, (F + U + 1) * GU};
                int a, q;
                for (a = 0; a < 4; a++) {
                    const ptrdiff_t k0 = len[a] * t / nt, k1 = len[a] * (t + 1) / nt;
                    for (q = 1; q < nt; q++) {
                        const float *src = Wsc + wsz + (q - 1) * stride + wsz + off[a];
                        float *dst = out[a];
                        ptrdiff_t k;
                        for (k = k0; k < k1; k++) dst[k] += src[k];
                    }
                }
            }
            fnn_ftz_exit(tcsr);
        }
#endif
    } else {
        if (wstep) {
            memset(dWih, 0, F * GU * sizeof(T)); memset(dWhh, 0, U * GU * sizeof(T));
            memset(dbih, 0, GU * sizeof(T)); memset(dbhh, 0, GU * sizeof(T));
        }
        RFN(backward_rows)(d, 0, N, isa, wstep, need_dgo, Wp, Wpi, Wsc, X, Whh, Hs, Cs, Gs, dY, dH, dC, dGt, dGo,
                           dX, dWih, dWhh, dbih, dbhh, norms);
    }
    if (serial) fnn_rnn_blas_threads(d->n_threads);
    for (i = 0; i < N; i++) {
        const ptrdiff_t o = d->perm[i];
        if (dh0 != NULL) memcpy(dh0 + o * U, dH + i * U, U * sizeof(T));
        if (lstm && dc0 != NULL) memcpy(dc0 + o * U, dC + i * U, U * sizeof(T));
    }
    if (!wstep) {
        RFN(gemm)(1, 0, U, GU, S * N, Hs, U, dGt, GU, (T)0, dWhh, GU);
        RFN(gemm)(1, 0, F, GU, N * S, X, F, dGo, GU, (T)0, dWih, GU);
        for (j = 0; j < GU; j++) { dbih[j] = 0; dbhh[j] = 0; }
        for (i = 0; i < N * S; i++) {
            const T *a = dGo + i * GU, *b = dGt + i * GU;
            for (j = 0; j < GU; j++) { dbih[j] += a[j]; dbhh[j] += b[j]; }
        }
    }
    if (Wpi == NULL && dX != NULL) RFN(gemm)(0, 1, N * S, F, GU, dGo, GU, Wih, GU, (T)0, dX, F);
    fnn_ftz_exit(csr);
}

#endif  /* FNN_RNN_PASS */
#endif  /* FNN_RNN_H */
