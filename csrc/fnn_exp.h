/* fnn_exp.h: vectorized e^x (float and double, AVX-512 and AVX2+FMA, chosen at run time) and the row kernels of
 * the softmax cross-entropy built on it (fastnn/_core/losses.pyx): a row's max and first argmax, and
 * e_j = e^(z_j - m) with their sum in double.
 *
 * The exponential.  Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in a short high part, so
 * that n * hi is exact, and a low part), a polynomial for e^r in fused multiply-adds, then r * 2^n: one
 * correctly rounded scaling (AVX-512's scalef; AVX2 multiplies by 2^(n/2) and 2^(n - n/2), two normal powers
 * of two, exact until the last product), so that results in the subnormal range are rounded once, below it
 * they are 0, above ln(max) they are +inf.  x is clamped to [lo, hi] just outside those limits, NaN kept (the
 * clamps take x as their second operand: MINPS/MAXPS return it when either is NaN).
 *   float:  Cephes' degree-6 polynomial (shared with the recurrent kernels' fnn_exp_f, csrc/fnn_rnn.h),
 *           within 2 ulp of e^x over the whole range (tests/test_losses_exp.py measures it);
 *   double: a degree-11 minimax polynomial (SLEEF's xexp), within 1 ulp.
 * Both ISA paths compute the same operations in the same order: their results are bit-identical.
 *
 * The row kernels take isa (fnn_exp_isa(): 2 AVX-512F, 1 AVX2+FMA, 0 neither: libm in double, the accurate
 * scalar fallback).  For float rows e^(z - m) is taken at the exact difference: z - m is rounded to float and
 * its rounding error (TwoSum) is added to the reduced argument, so that |z - m| up to ~100 does not cost 100
 * ulp of relative error.  The sum of a row's e_j is kept in double in 16 (float) or 8 (double) lanes added in
 * one fixed order, the same on both ISAs. */
#ifndef FNN_EXP_H
#define FNN_EXP_H
#include <stddef.h>
#include <math.h>
#include "fnn_dispatch.h"

/* Cephes expf: ln2 = C1 + C2 (C1 = 355/512: n * C1 exact), e^r = 1 + r + r^2 P(r) */
#define FNN_EXPF_LOG2E 1.44269504088896341f
#define FNN_EXPF_C1 0.693359375f
#define FNN_EXPF_C2 -2.12194440e-4f
#define FNN_EXPF_P0 1.9875691500e-4f
#define FNN_EXPF_P1 1.3981999507e-3f
#define FNN_EXPF_P2 8.3334519073e-3f
#define FNN_EXPF_P3 4.1665795894e-2f
#define FNN_EXPF_P4 1.6666665459e-1f
#define FNN_EXPF_P5 5.0000001201e-1f
/* the clamps: e^-104 < 2^-150 (half the least subnormal: rounds to 0), e^89 > FLT_MAX */
#define FNN_EXPF_LO -104.0f
#define FNN_EXPF_HI 89.0f
/* SLEEF's exp: ln2 = L2U + L2L (L2U's low 11+ bits zero: n * L2U exact), e^r = 1 + r + r^2 P(r) */
#define FNN_EXPD_LOG2E 1.442695040888963407359924681001892137
#define FNN_EXPD_L2U .69314718055966295651160180568695068359375
#define FNN_EXPD_L2L .28235290563031577122588448175013436025525412068e-12
#define FNN_EXPD_P0 2.08860621107283687536341e-09
#define FNN_EXPD_P1 2.51112930892876518610661e-08
#define FNN_EXPD_P2 2.75573911234900471893338e-07
#define FNN_EXPD_P3 2.75572362911928827629423e-06
#define FNN_EXPD_P4 2.4801587159235472998791e-05
#define FNN_EXPD_P5 0.000198412698960509205564975
#define FNN_EXPD_P6 0.00138888888889774492207962
#define FNN_EXPD_P7 0.00833333333331652721664984
#define FNN_EXPD_P8 0.0416666666666665047591422
#define FNN_EXPD_P9 0.166666666666666851703837
#define FNN_EXPD_P10 0.5
/* e^-746 < 2^-1075 (rounds to 0), e^710 > DBL_MAX */
#define FNN_EXPD_LO -746.0
#define FNN_EXPD_HI 710.0

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
#include <immintrin.h>
#define FNN_EXP_HAVE_VEC 1
#else
#define FNN_EXP_HAVE_VEC 0
#endif

/* 0: libm; 1: AVX2+FMA; 2: AVX-512F (the CPU's, fnn_fma_isa; fnn_exp_set_isa caps it, for the tests) */
FNN_ISA_CAPPED(fnn_exp, FNN_EXP_HAVE_VEC)

/* the sum of 8 lane sums, in one fixed order (a float row's 16 lanes are first added pairwise, l[i] + l[i + 8]) */
static inline double fnn_exp_lanes8(const double *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ---- scalar (isa 0): libm in double, as the kernels computed before the vector paths ---- */
static float fnn_rowmax_s_f(const float *z, ptrdiff_t k, ptrdiff_t *am) {
    float m = z[0];
    ptrdiff_t j, a = 0;
    for (j = 1; j < k; j++)
        if (z[j] > m) { m = z[j]; a = j; }
    *am = a;
    return m;
}
static double fnn_rowmax_s_d(const double *z, ptrdiff_t k, ptrdiff_t *am) {
    double m = z[0];
    ptrdiff_t j, a = 0;
    for (j = 1; j < k; j++)
        if (z[j] > m) { m = z[j]; a = j; }
    *am = a;
    return m;
}
static double fnn_expsum_s_f(const float *z, ptrdiff_t k, float m, float *e) {
    double s = 0.0, v;
    ptrdiff_t j;
    for (j = 0; j < k; j++) {
        v = exp((double)z[j] - (double)m);
        if (e != NULL) e[j] = (float)v;
        s += v;
    }
    return s;
}
static double fnn_expsum_s_d(const double *z, ptrdiff_t k, double m, double *e) {
    double s = 0.0, v;
    ptrdiff_t j;
    for (j = 0; j < k; j++) {
        v = exp(z[j] - m);
        if (e != NULL) e[j] = v;
        s += v;
    }
    return s;
}

#if FNN_EXP_HAVE_VEC
/* ================================================================ AVX-512F */
/* e^r for |r| <= ln2 / 2 (float): the polynomial of fnn_exp_f */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_exp16_poly(__m512 r) {
    __m512 p = _mm512_set1_ps(FNN_EXPF_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FNN_EXPF_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FNN_EXPF_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FNN_EXPF_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FNN_EXPF_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FNN_EXPF_P5));
    return _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
}
/* e^(a + lo) over the whole float range; lo: a correction far below a's ulp (0 for e^a), ignored where a is
 * clamped */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_exp16(__m512 a, __m512 lo) {
    const __m512 x = _mm512_max_ps(_mm512_set1_ps(FNN_EXPF_LO), _mm512_min_ps(_mm512_set1_ps(FNN_EXPF_HI), a));
    const __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FNN_EXPF_LO), _CMP_GT_OQ);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(FNN_EXPF_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FNN_EXPF_C1), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FNN_EXPF_C2), r);
    r = _mm512_mask_add_ps(r, in, r, lo);
    return _mm512_scalef_ps(fnn_exp16_poly(r), n);
}
/* the double twins: e^r for |r| <= ln2 / 2, e^a over the whole range */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512d fnn_exp8d_poly(__m512d r) {
    __m512d p = _mm512_set1_pd(FNN_EXPD_P0);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P1));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P2));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P3));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P4));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P6));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P7));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P8));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P9));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FNN_EXPD_P10));
    return _mm512_add_pd(_mm512_fmadd_pd(p, _mm512_mul_pd(r, r), r), _mm512_set1_pd(1.0));
}
__attribute__((target("avx512f,avx2,fma")))
static inline __m512d fnn_exp8d(__m512d a) {
    const __m512d x = _mm512_max_pd(_mm512_set1_pd(FNN_EXPD_LO), _mm512_min_pd(_mm512_set1_pd(FNN_EXPD_HI), a));
    const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(FNN_EXPD_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(FNN_EXPD_L2U), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(FNN_EXPD_L2L), r);
    return _mm512_scalef_pd(fnn_exp8d_poly(r), n);
}

/* the masks of the first q < 16 (or 8) lanes */
#define FNN_EXP_M16(q) ((__mmask16)((1u << (q)) - 1u))
#define FNN_EXP_M8(q) ((__mmask8)((1u << (q)) - 1u))

/* the row's max (a NaN after z[0] skipped, as the scalar loop's `z[j] > m`; z[0] NaN: NaN) and its first index */
__attribute__((target("avx512f,avx2,fma")))
static float fnn_rowmax16_f(const float *z, ptrdiff_t k, ptrdiff_t *am) {
    ptrdiff_t j;
    __m512 acc = _mm512_set1_ps(-INFINITY);
    float m;
    *am = 0;
    if (z[0] != z[0]) return z[0];
    for (j = 0; j + 16 <= k; j += 16) acc = _mm512_max_ps(_mm512_loadu_ps(z + j), acc);
    if (j < k) acc = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), FNN_EXP_M16(k - j), z + j), acc);
    m = _mm512_reduce_max_ps(acc);
    const __m512 mv = _mm512_set1_ps(m);
    for (j = 0; j < k; j += 16) {
        __mmask16 hit = _mm512_mask_cmp_ps_mask(k - j >= 16 ? (__mmask16)0xFFFF : FNN_EXP_M16(k - j),
                                                _mm512_maskz_loadu_ps(k - j >= 16 ? (__mmask16)0xFFFF
                                                                                  : FNN_EXP_M16(k - j), z + j),
                                                mv, _CMP_EQ_OQ);
        if (hit) { *am = j + __builtin_ctz((unsigned)hit); break; }
    }
    return m;
}
__attribute__((target("avx512f,avx2,fma")))
static double fnn_rowmax8_d(const double *z, ptrdiff_t k, ptrdiff_t *am) {
    ptrdiff_t j;
    __m512d acc = _mm512_set1_pd(-INFINITY);
    double m;
    *am = 0;
    if (z[0] != z[0]) return z[0];
    for (j = 0; j + 8 <= k; j += 8) acc = _mm512_max_pd(_mm512_loadu_pd(z + j), acc);
    if (j < k) acc = _mm512_max_pd(_mm512_mask_loadu_pd(_mm512_set1_pd(-INFINITY), FNN_EXP_M8(k - j), z + j), acc);
    m = _mm512_reduce_max_pd(acc);
    const __m512d mv = _mm512_set1_pd(m);
    for (j = 0; j < k; j += 8) {
        __mmask8 q = k - j >= 8 ? (__mmask8)0xFF : FNN_EXP_M8(k - j);
        __mmask8 hit = _mm512_mask_cmp_pd_mask(q, _mm512_maskz_loadu_pd(q, z + j), mv, _CMP_EQ_OQ);
        if (hit) { *am = j + __builtin_ctz((unsigned)hit); break; }
    }
    return m;
}

/* e^(z - m) of 16 floats at the exact difference: TwoSum's error of t = z - m goes into the reduced argument */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 fnn_expdiff16(__m512 v, __m512 mv, __m512 nmv) {
    const __m512 t = _mm512_sub_ps(v, mv);
    const __m512 bb = _mm512_sub_ps(t, v);
    const __m512 err = _mm512_add_ps(_mm512_sub_ps(v, _mm512_sub_ps(t, bb)), _mm512_sub_ps(nmv, bb));
    return fnn_exp16(t, err);
}
/* e[j] = e^(z[j] - m) (e may be NULL); returns their sum, in double */
__attribute__((target("avx512f,avx2,fma")))
static double fnn_expsum16_f(const float *z, ptrdiff_t k, float m, float *e) {
    const __m512 mv = _mm512_set1_ps(m), nmv = _mm512_set1_ps(-m);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    double lanes[8];
    ptrdiff_t j;
    for (j = 0; j + 16 <= k; j += 16) {
        const __m512 x = fnn_expdiff16(_mm512_loadu_ps(z + j), mv, nmv);
        if (e != NULL) _mm512_storeu_ps(e + j, x);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
    }
    if (j < k) {
        const __mmask16 q = FNN_EXP_M16(k - j);
        const __m512 x = _mm512_maskz_mov_ps(q, fnn_expdiff16(_mm512_maskz_loadu_ps(q, z + j), mv, nmv));
        if (e != NULL) _mm512_mask_storeu_ps(e + j, q, x);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
    }
    _mm512_storeu_pd(lanes, _mm512_add_pd(a0, a1));
    return fnn_exp_lanes8(lanes);
}
__attribute__((target("avx512f,avx2,fma")))
static double fnn_expsum8_d(const double *z, ptrdiff_t k, double m, double *e) {
    const __m512d mv = _mm512_set1_pd(m);
    __m512d a0 = _mm512_setzero_pd();
    double lanes[8];
    ptrdiff_t j;
    for (j = 0; j + 8 <= k; j += 8) {
        const __m512d x = fnn_exp8d(_mm512_sub_pd(_mm512_loadu_pd(z + j), mv));
        if (e != NULL) _mm512_storeu_pd(e + j, x);
        a0 = _mm512_add_pd(a0, x);
    }
    if (j < k) {
        const __mmask8 q = FNN_EXP_M8(k - j);
        const __m512d x = _mm512_maskz_mov_pd(q, fnn_exp8d(_mm512_sub_pd(_mm512_maskz_loadu_pd(q, z + j), mv)));
        if (e != NULL) _mm512_mask_storeu_pd(e + j, q, x);
        a0 = _mm512_add_pd(a0, x);
    }
    _mm512_storeu_pd(lanes, a0);
    return fnn_exp_lanes8(lanes);
}
/* out[i] = e^x[i] (the test twin of the vector exponential) */
__attribute__((target("avx512f,avx2,fma")))
static void fnn_exparr16_f(const float *x, ptrdiff_t n, float *out) {
    ptrdiff_t j;
    for (j = 0; j < n; j += 16) {
        const __mmask16 q = n - j >= 16 ? (__mmask16)0xFFFF : FNN_EXP_M16(n - j);
        _mm512_mask_storeu_ps(out + j, q, fnn_exp16(_mm512_maskz_loadu_ps(q, x + j), _mm512_setzero_ps()));
    }
}
__attribute__((target("avx512f,avx2,fma")))
static void fnn_exparr8_d(const double *x, ptrdiff_t n, double *out) {
    ptrdiff_t j;
    for (j = 0; j < n; j += 8) {
        const __mmask8 q = n - j >= 8 ? (__mmask8)0xFF : FNN_EXP_M8(n - j);
        _mm512_mask_storeu_pd(out + j, q, fnn_exp8d(_mm512_maskz_loadu_pd(q, x + j)));
    }
}

/* ================================================================ AVX2 + FMA: the same operations, 8 floats or
 * 4 doubles per vector, two vectors per AVX-512 one (so that the lane sums add in the same order) */
__attribute__((target("avx2,fma")))
static inline __m256 fnn_exp8_poly(__m256 r) {
    __m256 p = _mm256_set1_ps(FNN_EXPF_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FNN_EXPF_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FNN_EXPF_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FNN_EXPF_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FNN_EXPF_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FNN_EXPF_P5));
    return _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
}
/* p 2^n for integral n in [-150, 128], rounded once: p 2^h is exact (normal), then times 2^(n - h) */
__attribute__((target("avx2,fma")))
static inline __m256 fnn_exp8_scale(__m256 p, __m256 n) {
    const __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
__attribute__((target("avx2,fma")))
static inline __m256 fnn_exp8(__m256 a, __m256 lo) {
    const __m256 x = _mm256_max_ps(_mm256_set1_ps(FNN_EXPF_LO), _mm256_min_ps(_mm256_set1_ps(FNN_EXPF_HI), a));
    const __m256 in = _mm256_cmp_ps(x, _mm256_set1_ps(FNN_EXPF_LO), _CMP_GT_OQ);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(FNN_EXPF_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FNN_EXPF_C1), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FNN_EXPF_C2), r);
    r = _mm256_blendv_ps(r, _mm256_add_ps(r, lo), in);
    return fnn_exp8_scale(fnn_exp8_poly(r), n);
}
__attribute__((target("avx2,fma")))
static inline __m256d fnn_exp4d_poly(__m256d r) {
    __m256d p = _mm256_set1_pd(FNN_EXPD_P0);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P1));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P2));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P4));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P6));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P7));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P8));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P9));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FNN_EXPD_P10));
    return _mm256_add_pd(_mm256_fmadd_pd(p, _mm256_mul_pd(r, r), r), _mm256_set1_pd(1.0));
}
/* p 2^n for integral n in [-1076, 1024], rounded once (as fnn_exp8_scale) */
__attribute__((target("avx2,fma")))
static inline __m256d fnn_exp4d_scale(__m256d p, __m256d n) {
    const __m128i ni = _mm256_cvtpd_epi32(n), h = _mm_srai_epi32(ni, 1);
    const __m256i bias = _mm256_set1_epi64x(1023);
    const __m256d s1 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(h), bias), 52));
    const __m256d s2 = _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm_sub_epi32(ni, h)), bias), 52));
    return _mm256_mul_pd(_mm256_mul_pd(p, s1), s2);
}
__attribute__((target("avx2,fma")))
static inline __m256d fnn_exp4d(__m256d a) {
    const __m256d x = _mm256_max_pd(_mm256_set1_pd(FNN_EXPD_LO), _mm256_min_pd(_mm256_set1_pd(FNN_EXPD_HI), a));
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(FNN_EXPD_LOG2E)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(FNN_EXPD_L2U), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(FNN_EXPD_L2L), r);
    return fnn_exp4d_scale(fnn_exp4d_poly(r), n);
}
/* lane masks of the first q lanes (q <= 8 floats, q <= 4 doubles; negative q: none) */
__attribute__((target("avx2,fma")))
static inline __m256i fnn_exp_m8(ptrdiff_t q) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(q > 8 ? 8 : (q < 0 ? 0 : q))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
__attribute__((target("avx2,fma")))
static inline __m256i fnn_exp_m4(ptrdiff_t q) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(q > 4 ? 4 : (q < 0 ? 0 : q)), _mm256_setr_epi64x(0, 1, 2, 3));
}

__attribute__((target("avx2,fma")))
static float fnn_rowmax8_f(const float *z, ptrdiff_t k, ptrdiff_t *am) {
    ptrdiff_t j;
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 acc = ninf;
    float lanes[8], m;
    *am = 0;
    if (z[0] != z[0]) return z[0];
    for (j = 0; j + 8 <= k; j += 8) acc = _mm256_max_ps(_mm256_loadu_ps(z + j), acc);
    if (j < k) {
        const __m256i q = fnn_exp_m8(k - j);
        acc = _mm256_max_ps(_mm256_blendv_ps(ninf, _mm256_maskload_ps(z + j, q), _mm256_castsi256_ps(q)), acc);
    }
    _mm256_storeu_ps(lanes, acc);
    m = lanes[0];
    for (j = 1; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    const __m256 mv = _mm256_set1_ps(m);
    for (j = 0; j < k; j += 8) {
        const __m256i q = fnn_exp_m8(k - j);
        int hit = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(_mm256_maskload_ps(z + j, q), mv, _CMP_EQ_OQ),
                                                   _mm256_castsi256_ps(q)));
        if (hit) { *am = j + __builtin_ctz((unsigned)hit); break; }
    }
    return m;
}
__attribute__((target("avx2,fma")))
static double fnn_rowmax4_d(const double *z, ptrdiff_t k, ptrdiff_t *am) {
    ptrdiff_t j;
    const __m256d ninf = _mm256_set1_pd(-INFINITY);
    __m256d acc = ninf;
    double lanes[4], m;
    *am = 0;
    if (z[0] != z[0]) return z[0];
    for (j = 0; j + 4 <= k; j += 4) acc = _mm256_max_pd(_mm256_loadu_pd(z + j), acc);
    if (j < k) {
        const __m256i q = fnn_exp_m4(k - j);
        acc = _mm256_max_pd(_mm256_blendv_pd(ninf, _mm256_maskload_pd(z + j, q), _mm256_castsi256_pd(q)), acc);
    }
    _mm256_storeu_pd(lanes, acc);
    m = lanes[0];
    for (j = 1; j < 4; j++) m = lanes[j] > m ? lanes[j] : m;
    const __m256d mv = _mm256_set1_pd(m);
    for (j = 0; j < k; j += 4) {
        const __m256i q = fnn_exp_m4(k - j);
        int hit = _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(_mm256_maskload_pd(z + j, q), mv, _CMP_EQ_OQ),
                                                   _mm256_castsi256_pd(q)));
        if (hit) { *am = j + __builtin_ctz((unsigned)hit); break; }
    }
    return m;
}

__attribute__((target("avx2,fma")))
static inline __m256 fnn_expdiff8(__m256 v, __m256 mv, __m256 nmv) {      /* fnn_expdiff16 */
    const __m256 t = _mm256_sub_ps(v, mv);
    const __m256 bb = _mm256_sub_ps(t, v);
    const __m256 err = _mm256_add_ps(_mm256_sub_ps(v, _mm256_sub_ps(t, bb)), _mm256_sub_ps(nmv, bb));
    return fnn_exp8(t, err);
}
/* fnn_expsum16_f, 16 floats per step as two vectors of 8 (lane sums 0-3, 4-7, 8-11, 12-15) */
__attribute__((target("avx2,fma")))
static double fnn_expsum8_f(const float *z, ptrdiff_t k, float m, float *e) {
    const __m256 mv = _mm256_set1_ps(m), nmv = _mm256_set1_ps(-m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    double lanes[8];
    ptrdiff_t j;
    for (j = 0; j < k; j += 16) {
        __m256 x, y;
        if (j + 16 <= k) {
            x = fnn_expdiff8(_mm256_loadu_ps(z + j), mv, nmv);
            y = fnn_expdiff8(_mm256_loadu_ps(z + j + 8), mv, nmv);
            if (e != NULL) { _mm256_storeu_ps(e + j, x); _mm256_storeu_ps(e + j + 8, y); }
        } else {
            const __m256i q0 = fnn_exp_m8(k - j), q1 = fnn_exp_m8(k - j - 8);
            x = _mm256_and_ps(fnn_expdiff8(_mm256_maskload_ps(z + j, q0), mv, nmv), _mm256_castsi256_ps(q0));
            y = _mm256_and_ps(fnn_expdiff8(_mm256_maskload_ps(z + j + 8, q1), mv, nmv), _mm256_castsi256_ps(q1));
            if (e != NULL) { _mm256_maskstore_ps(e + j, q0, x); _mm256_maskstore_ps(e + j + 8, q1, y); }
        }
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
        a2 = _mm256_add_pd(a2, _mm256_cvtps_pd(_mm256_castps256_ps128(y)));
        a3 = _mm256_add_pd(a3, _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)));
    }
    _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a2));
    _mm256_storeu_pd(lanes + 4, _mm256_add_pd(a1, a3));
    return fnn_exp_lanes8(lanes);
}
/* fnn_expsum8_d, 8 doubles per step as two vectors of 4 */
__attribute__((target("avx2,fma")))
static double fnn_expsum4_d(const double *z, ptrdiff_t k, double m, double *e) {
    const __m256d mv = _mm256_set1_pd(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    double lanes[8];
    ptrdiff_t j;
    for (j = 0; j < k; j += 8) {
        __m256d x, y;
        if (j + 8 <= k) {
            x = fnn_exp4d(_mm256_sub_pd(_mm256_loadu_pd(z + j), mv));
            y = fnn_exp4d(_mm256_sub_pd(_mm256_loadu_pd(z + j + 4), mv));
            if (e != NULL) { _mm256_storeu_pd(e + j, x); _mm256_storeu_pd(e + j + 4, y); }
        } else {
            const __m256i q0 = fnn_exp_m4(k - j), q1 = fnn_exp_m4(k - j - 4);
            x = _mm256_and_pd(fnn_exp4d(_mm256_sub_pd(_mm256_maskload_pd(z + j, q0), mv)), _mm256_castsi256_pd(q0));
            y = _mm256_and_pd(fnn_exp4d(_mm256_sub_pd(_mm256_maskload_pd(z + j + 4, q1), mv)),
                              _mm256_castsi256_pd(q1));
            if (e != NULL) { _mm256_maskstore_pd(e + j, q0, x); _mm256_maskstore_pd(e + j + 4, q1, y); }
        }
        a0 = _mm256_add_pd(a0, x);
        a1 = _mm256_add_pd(a1, y);
    }
    _mm256_storeu_pd(lanes, a0);
    _mm256_storeu_pd(lanes + 4, a1);
    return fnn_exp_lanes8(lanes);
}
__attribute__((target("avx2,fma")))
static void fnn_exparr8_f(const float *x, ptrdiff_t n, float *out) {
    ptrdiff_t j;
    for (j = 0; j < n; j += 8) {
        const __m256i q = fnn_exp_m8(n - j);
        _mm256_maskstore_ps(out + j, q, fnn_exp8(_mm256_maskload_ps(x + j, q), _mm256_setzero_ps()));
    }
}
__attribute__((target("avx2,fma")))
static void fnn_exparr4_d(const double *x, ptrdiff_t n, double *out) {
    ptrdiff_t j;
    for (j = 0; j < n; j += 4) {
        const __m256i q = fnn_exp_m4(n - j);
        _mm256_maskstore_pd(out + j, q, fnn_exp4d(_mm256_maskload_pd(x + j, q)));
    }
}
#endif  /* FNN_EXP_HAVE_VEC */

/* ---- the dispatch (isa: fnn_exp_isa(), taken once per call by the caller); k >= 1 ---- */
/* the max of z[0..k) and its first index (NaN and index 0 if z[0] is NaN; later NaNs are skipped) */
static inline float fnn_rowmax_f(int isa, const float *z, ptrdiff_t k, ptrdiff_t *am) {
#if FNN_EXP_HAVE_VEC
    if (isa == 2) return fnn_rowmax16_f(z, k, am);
    if (isa == 1) return fnn_rowmax8_f(z, k, am);
#endif
    (void)isa;
    return fnn_rowmax_s_f(z, k, am);
}
static inline double fnn_rowmax_d(int isa, const double *z, ptrdiff_t k, ptrdiff_t *am) {
#if FNN_EXP_HAVE_VEC
    if (isa == 2) return fnn_rowmax8_d(z, k, am);
    if (isa == 1) return fnn_rowmax4_d(z, k, am);
#endif
    (void)isa;
    return fnn_rowmax_s_d(z, k, am);
}
/* e[j] = e^(z[j] - m) for j < k (e NULL: not stored); returns sum_j e^(z[j] - m) in double */
static inline double fnn_expsum_f(int isa, const float *z, ptrdiff_t k, float m, float *e) {
#if FNN_EXP_HAVE_VEC
    if (isa == 2) return fnn_expsum16_f(z, k, m, e);
    if (isa == 1) return fnn_expsum8_f(z, k, m, e);
#endif
    (void)isa;
    return fnn_expsum_s_f(z, k, m, e);
}
static inline double fnn_expsum_d(int isa, const double *z, ptrdiff_t k, double m, double *e) {
#if FNN_EXP_HAVE_VEC
    if (isa == 2) return fnn_expsum8_d(z, k, m, e);
    if (isa == 1) return fnn_expsum4_d(z, k, m, e);
#endif
    (void)isa;
    return fnn_expsum_s_d(z, k, m, e);
}
/* out[i] = e^x[i], i < n (the test twins; isa 0: libm) */
static void fnn_exparr_f(int isa, const float *x, ptrdiff_t n, float *out) {
    ptrdiff_t i;
#if FNN_EXP_HAVE_VEC
    if (isa == 2) { fnn_exparr16_f(x, n, out); return; }
    if (isa == 1) { fnn_exparr8_f(x, n, out); return; }
#endif
    for (i = 0; i < n; i++) out[i] = expf(x[i]);
}
static void fnn_exparr_d(int isa, const double *x, ptrdiff_t n, double *out) {
    ptrdiff_t i;
#if FNN_EXP_HAVE_VEC
    if (isa == 2) { fnn_exparr8_d(x, n, out); return; }
    if (isa == 1) { fnn_exparr4_d(x, n, out); return; }
#endif
    for (i = 0; i < n; i++) out[i] = exp(x[i]);
}

#endif
