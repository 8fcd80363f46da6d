/* fnn_rows.h: Z (m x N) = X (m x K) . W (K x N), row-major, for a few rows (1 <= m <= 4): the forward products
 * of small networks at prediction (one sample) and of tiny batches.
 *
 * OpenBLAS is slow for them on some CPUs: with its Haswell kernels (AVX2 machines, AMD Zen included) sgemm with
 * one row packs W before every call and took ~4x its sgemv on the 784x256 layer of the W4 network, and its
 * sgemv runs each row on its own, streaming W once per row.  This kernel streams W once for all m rows: for each
 * group of KS rows of W, the m output rows (kept in L1, in column panels when they are long) get
 * z[r][j] += x[r][k] W[k][j] for the KS k in order, AVX-512 (16 floats, 8 doubles a vector) or AVX2+FMA (8, 4),
 * with a masked head up to W's first aligned column and a masked tail.  Every element is the same chain of fused
 * multiply-adds in k order on both ISAs, whatever W's alignment and the column split (threads), so they all
 * give the same bits; against the BLAS, the last bits may differ (as between OpenBLAS's own kernels).
 *
 * One row reads each weight once: the kernel runs at about the speed of reading W (on a 2-core Xeon VM, 784x256
 * floats: ~9-12 us, a plain read ~9-15 us, busy machine); misaligned W rows cost ~1.8x before the masked head.
 *
 * The CPU is asked once (__builtin_cpu_supports); without AVX2+FMA (or outside gcc on x86-64) the fnn_rows_*
 * entry points return 0 and the caller runs the BLAS.  fnn_rows_set_isa caps the path (tests, measurements). */
#ifndef FNN_ROWS_H
#define FNN_ROWS_H
#include <stddef.h>
#include <string.h>

#include "fnn_dispatch.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
#include <immintrin.h>
#define FNN_ROWS_HAVE_SIMD 1
#else
#define FNN_ROWS_HAVE_SIMD 0
#endif

#define FNN_ROWS_MAX 4          /* rows per call */
#ifndef FNN_ROWS_KS
#define FNN_ROWS_KS 8           /* rows of W per pass over Z (4: 1.3-1.5x slower on the W4 layers) */
#endif
#define FNN_ROWS_PANEL 2048     /* columns of Z per panel: m x 2048 floats (32 KB at m = 4) stay in L1/L2 */

/* 0: none (the caller's BLAS); 1: AVX2+FMA; 2: AVX-512 (the CPU's, fnn_fma_isa, capped by fnn_rows_set_isa) */
static int fnn_rows_isa_cap_ = 2;
static int fnn_rows_isa(void) {
    int isa = FNN_ROWS_HAVE_SIMD ? fnn_fma_isa() : 0;
    return isa < fnn_rows_isa_cap_ ? isa : fnn_rows_isa_cap_;
}
/* cap the kernel (0: always the BLAS; 1: at most AVX2+FMA; 2: the best); returns the path now in use */
static int fnn_rows_set_isa(int cap) { fnn_rows_isa_cap_ = cap < 0 ? 0 : (cap > 2 ? 2 : cap); return fnn_rows_isa(); }

#if FNN_ROWS_HAVE_SIMD
/* One body per (type, ISA, m): the m loops have a constant trip count, unrolled, the 4m broadcasts in registers.
 * Each pass over Z adds the products of KS rows of W (loaded once for the m rows of Z), in k order. */
#define FNN_ROWS_BODY(NAME, TARGET, T, V, LANES, LOADU, STOREU, FMADD, SET1, MASK_T, MASK, MLOAD, MSTORE)    \
__attribute__((target(TARGET), always_inline))                                                                  \
static inline void NAME##_body(const int M, ptrdiff_t N, ptrdiff_t K, const T *X, ptrdiff_t ldx,                \
                               const T *W, ptrdiff_t ldw, T *Z, ptrdiff_t ldz) {                                \
    ptrdiff_t j0, k, j, r, q;                                                                                   \
    for (j0 = 0; j0 < N; j0 += FNN_ROWS_PANEL) {                                                                \
        const ptrdiff_t j1 = N - j0 < FNN_ROWS_PANEL ? N : j0 + FNN_ROWS_PANEL;                                 \
        /* columns [j0, jh): a masked head up to the first vector-aligned column of W's rows (all of them when  \
         * ldw is a multiple of LANES; misaligned rows split every load over two cache lines: one row took      \
         * ~1.8x as long); [jh, jv): whole vectors; [jv, j1): a masked tail */                                  \
        const ptrdiff_t al = (ptrdiff_t)((((size_t)0 - (size_t)(W + j0)) / sizeof(T)) % LANES);                 \
        const ptrdiff_t jh = j0 + (al < j1 - j0 ? al : j1 - j0);                                                \
        const ptrdiff_t jv = jh + (j1 - jh) / LANES * LANES;                                                    \
        const MASK_T head = MASK(jh - j0), tail = MASK(j1 - jv);                                                \
        for (r = 0; r < M; r++) memset(Z + r * ldz + j0, 0, (size_t)(j1 - j0) * sizeof(T));                     \
        for (k = 0; k < K; k += FNN_ROWS_KS) {                                                                  \
            const int ks = K - k < FNN_ROWS_KS ? (int)(K - k) : FNN_ROWS_KS;                                    \
            const T *w = W + k * ldw;                                                                           \
            V a[FNN_ROWS_MAX][FNN_ROWS_KS], b[FNN_ROWS_KS];                                                     \
            if (ks == FNN_ROWS_KS) {                                                                            \
                for (r = 0; r < M; r++)                                                                         \
                    for (q = 0; q < FNN_ROWS_KS; q++) a[r][q] = SET1(X[r * ldx + k + q]);                       \
                if (j0 < jh) {                                                                                  \
                    for (q = 0; q < FNN_ROWS_KS; q++) b[q] = MLOAD(w + q * ldw + j0, head);                     \
                    for (r = 0; r < M; r++) {                                                                   \
                        V v = MLOAD(Z + r * ldz + j0, head);                                                    \
                        for (q = 0; q < FNN_ROWS_KS; q++) v = FMADD(a[r][q], b[q], v);                          \
                        MSTORE(Z + r * ldz + j0, head, v);                                                      \
                    }                                                                                           \
                }                                                                                               \
                for (j = jh; j < jv; j += LANES) {                                                              \
                    for (q = 0; q < FNN_ROWS_KS; q++) b[q] = LOADU(w + q * ldw + j);                            \
                    for (r = 0; r < M; r++) {                                                                   \
                        V v = LOADU(Z + r * ldz + j);                                                           \
                        for (q = 0; q < FNN_ROWS_KS; q++) v = FMADD(a[r][q], b[q], v);                          \
                        STOREU(Z + r * ldz + j, v);                                                             \
                    }                                                                                           \
                }                                                                                               \
                if (jv < j1) {                                                                                  \
                    for (q = 0; q < FNN_ROWS_KS; q++) b[q] = MLOAD(w + q * ldw + jv, tail);                     \
                    for (r = 0; r < M; r++) {                                                                   \
                        V v = MLOAD(Z + r * ldz + jv, tail);                                                    \
                        for (q = 0; q < FNN_ROWS_KS; q++) v = FMADD(a[r][q], b[q], v);                          \
                        MSTORE(Z + r * ldz + jv, tail, v);                                                      \
                    }                                                                                           \
                }                                                                                               \
            } else {                    /* the last ks < KS rows of W, one at a time */                         \
                for (q = 0; q < ks; q++)                                                                        \
                    for (r = 0; r < M; r++) {                                                                   \
                        const V x = SET1(X[r * ldx + k + q]);                                                   \
                        T *z = Z + r * ldz;                                                                     \
                        if (j0 < jh)                                                                            \
                            MSTORE(z + j0, head, FMADD(x, MLOAD(w + q * ldw + j0, head), MLOAD(z + j0, head))); \
                        for (j = jh; j < jv; j += LANES)                                                        \
                            STOREU(z + j, FMADD(x, LOADU(w + q * ldw + j), LOADU(z + j)));                      \
                        if (jv < j1)                                                                            \
                            MSTORE(z + jv, tail, FMADD(x, MLOAD(w + q * ldw + jv, tail), MLOAD(z + jv, tail))); \
                    }                                                                                           \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
}                                                                                                               \
__attribute__((target(TARGET)))                                                                                 \
static void NAME(int m, ptrdiff_t N, ptrdiff_t K, const T *X, ptrdiff_t ldx, const T *W, ptrdiff_t ldw,         \
                 T *Z, ptrdiff_t ldz) {                                                                         \
    switch (m) {                                                                                                \
    case 1: NAME##_body(1, N, K, X, ldx, W, ldw, Z, ldz); break;                                                \
    case 2: NAME##_body(2, N, K, X, ldx, W, ldw, Z, ldz); break;                                                \
    case 3: NAME##_body(3, N, K, X, ldx, W, ldw, Z, ldz); break;                                                \
    default: NAME##_body(4, N, K, X, ldx, W, ldw, Z, ldz); break;                                               \
    }                                                                                                           \
}

/* tail masks: the first n lanes */
__attribute__((target("avx512f"))) static inline __mmask16 fnn_rows_m16(ptrdiff_t n) {
    return (__mmask16)((1u << n) - 1u); }
__attribute__((target("avx512f"))) static inline __mmask8 fnn_rows_m8(ptrdiff_t n) {
    return (__mmask8)((1u << n) - 1u); }
__attribute__((target("avx2"))) static inline __m256i fnn_rows_m256(ptrdiff_t n, int lanes) {
    /* lanes 8 (floats): one int32 per lane; lanes 4 (doubles): one int64 per lane */
    return lanes == 8 ? _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
                      : _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
#define FNN_ROWS_M8F(n) fnn_rows_m256(n, 8)
#define FNN_ROWS_M4D(n) fnn_rows_m256(n, 4)
#define FNN_ROWS_ML512F(p, m) _mm512_maskz_loadu_ps(m, p)
#define FNN_ROWS_ML512D(p, m) _mm512_maskz_loadu_pd(m, p)

FNN_ROWS_BODY(fnn_rows_avx512_f, "avx512f,avx2,fma", float, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps,
              _mm512_fmadd_ps, _mm512_set1_ps, __mmask16, fnn_rows_m16, FNN_ROWS_ML512F, _mm512_mask_storeu_ps)
FNN_ROWS_BODY(fnn_rows_avx512_d, "avx512f,avx2,fma", double, __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd,
              _mm512_fmadd_pd, _mm512_set1_pd, __mmask8, fnn_rows_m8, FNN_ROWS_ML512D, _mm512_mask_storeu_pd)
FNN_ROWS_BODY(fnn_rows_avx2_f, "avx2,fma", float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
              _mm256_fmadd_ps, _mm256_set1_ps, __m256i, FNN_ROWS_M8F, _mm256_maskload_ps, _mm256_maskstore_ps)
FNN_ROWS_BODY(fnn_rows_avx2_d, "avx2,fma", double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd,
              _mm256_fmadd_pd, _mm256_set1_pd, __m256i, FNN_ROWS_M4D, _mm256_maskload_pd, _mm256_maskstore_pd)
#undef FNN_ROWS_BODY
#endif

/* Z (m x N) = X (m x K) . W (K x N), row-major (leading dimensions ldx, ldw, ldz); 1 <= m <= 4, N, K >= 0.
 * Returns 1 when done, 0 when this CPU (or build) has no kernel, or m is out of range: the caller runs the BLAS. */
static int fnn_rows_f(int m, ptrdiff_t N, ptrdiff_t K, const float *X, ptrdiff_t ldx, const float *W,
                      ptrdiff_t ldw, float *Z, ptrdiff_t ldz) {
#if FNN_ROWS_HAVE_SIMD
    int isa = fnn_rows_isa();
    if (m < 1 || m > FNN_ROWS_MAX || isa == 0) return 0;
    if (isa == 2) fnn_rows_avx512_f(m, N, K, X, ldx, W, ldw, Z, ldz);
    else fnn_rows_avx2_f(m, N, K, X, ldx, W, ldw, Z, ldz);
    return 1;
#else
    (void)m; (void)N; (void)K; (void)X; (void)ldx; (void)W; (void)ldw; (void)Z; (void)ldz;
    return 0;
#endif
}
static int fnn_rows_d(int m, ptrdiff_t N, ptrdiff_t K, const double *X, ptrdiff_t ldx, const double *W,
                      ptrdiff_t ldw, double *Z, ptrdiff_t ldz) {
#if FNN_ROWS_HAVE_SIMD
    int isa = fnn_rows_isa();
    if (m < 1 || m > FNN_ROWS_MAX || isa == 0) return 0;
    if (isa == 2) fnn_rows_avx512_d(m, N, K, X, ldx, W, ldw, Z, ldz);
    else fnn_rows_avx2_d(m, N, K, X, ldx, W, ldw, Z, ldz);
    return 1;
#else
    (void)m; (void)N; (void)K; (void)X; (void)ldx; (void)W; (void)ldw; (void)Z; (void)ldz;
    return 0;
#endif
}

#endif
