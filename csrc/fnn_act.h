/* fnn_act.h: the elementwise activation kernels, one per row of FNN_ACT_ELEMENTWISE (csrc/fnn_kinds.h): forward
 * with the bias added in the same pass, and backward, over rows [r0, r1) of C-contiguous (rows, n_cols)
 * blocks, float and double.
 *
 * The math of an activation is two inline functions below, written once for both types (T: the element type;
 * FN(x): fnn_x_f or fnn_x_d; EXP, EXPM1, LOG1P, ERF, TANH, SIGMOID: the functions of that type):
 *     fnn_<name>_fwd(v, alpha)        = f(v)
 *     fnn_<name>_bwd(z, y, dy, alpha) = dy * f'(z), given the forward's input z and output y.
 * The kernels switch on the kind once per call, with one case per table row, each case a loop that gcc can
 * vectorize (the math is branch-free: ?: selects, clamps before exp so that nothing overflows, and NaN passes
 * through every clamp: `x > c ? c : x` keeps a NaN x).  alpha is the kind's one parameter (leaky ReLU's slope,
 * ELU's alpha); the others ignore it.
 *
 * In C rather than Cython so that every loop vectorizes: `#pragma omp simd` states what holds (an output
 * element depends only on the inputs at its own index, so Y may be Z and dZ may be dY), which gcc cannot prove
 * for possibly aliasing pointers, and the selects are ?: expressions that it turns into blends.  The Cython
 * version of the ReLU backward compiled to a branch per element, mispredicted about half the time on ReLU's
 * sign pattern (~4 ns per element, 10% of a W1 step).  FNN_CLONES: runtime ISA dispatch (fnn_dispatch.h).
 * Softmax (a reduction over each row) stays in activations.pyx.
 *
 * A kind outside FNN_ACT_ELEMENTWISE is not computed: the kernels then return FNN_ERR_KIND (their callers in
 * activations.pyx check it; they also validate every kind where it enters the compiled core). */
#ifndef FNN_ACT_H
#define FNN_ACT_H
#include <stddef.h>
#include "fnn_math.h"
#include "fnn_dispatch.h"
#include "fnn_kinds.h"

#define FNN_SQRT1_2 0.70710678118654752440            /* 1 / sqrt(2) */
#define FNN_INV_SQRT_2PI 0.39894228040143267794       /* 1 / sqrt(2 pi) */
#define FNN_SQRT_2_OVER_PI 0.79788456080286535588     /* sqrt(2 / pi) */
#define FNN_GELU_KAPPA 0.044715
#define FNN_SELU_ALPHA 1.6732632423543772848170429916717
#define FNN_SELU_SCALE 1.0507009873554804934193349852946

#define FNN_CAT_(a, b) a##b
#define FNN_CAT(a, b) FNN_CAT_(a, b)
#define FN(name) FNN_CAT(fnn_##name, SFX)

/* the math, one pair per elementwise kind (expanded below for float and for double) */
#define FNN_ACT_MATH                                                                                      \
/* identity: f(v) = v */                                                                                  \
static inline T FN(identity_fwd)(T v, T a) { return v; }                                                  \
static inline T FN(identity_bwd)(T z, T y, T dy, T a) { return dy; }                                      \
/* relu: max(v, 0); f'(0) = 0 as in torch */                                                              \
static inline T FN(relu_fwd)(T v, T a) { return v > 0 ? v : (T)0; }                                       \
static inline T FN(relu_bwd)(T z, T y, T dy, T a) { return z > 0 ? dy : (T)0; }                          \
/* leaky_relu: v for v > 0, a v otherwise */                                                              \
static inline T FN(leaky_relu_fwd)(T v, T a) { return v > 0 ? v : a * v; }                                \
static inline T FN(leaky_relu_bwd)(T z, T y, T dy, T a) { return z > 0 ? dy : a * dy; }                   \
/* sigmoid: 1 / (1 + e^-v); f' = y (1 - y) */                                                             \
static inline T FN(sigmoid_fwd)(T v, T a) { return SIGMOID(v); }                                          \
static inline T FN(sigmoid_bwd)(T z, T y, T dy, T a) { return dy * y * ((T)1 - y); }                      \
/* tanh; f' = 1 - y^2 */                                                                                  \
static inline T FN(tanh_fwd)(T v, T a) { return TANH(v); }                                                \
static inline T FN(tanh_bwd)(T z, T y, T dy, T a) { return dy * ((T)1 - y * y); }                         \
/* gelu: v Phi(v) = v (1 + erf(v / sqrt 2)) / 2; f' = Phi(z) + z phi(z) (torch.nn.GELU()) */                  \
static inline T FN(gelu_fwd)(T v, T a) { return (T)0.5 * v * ((T)1 + ERF(v * (T)FNN_SQRT1_2)); }          \
static inline T FN(gelu_bwd)(T z, T y, T dy, T a) {                                                       \
    T cdf = (T)0.5 * ((T)1 + ERF(z * (T)FNN_SQRT1_2));                                                    \
    T pdf = EXP((T)-0.5 * z * z) * (T)FNN_INV_SQRT_2PI;                                                   \
    return dy * (cdf + z * pdf);                                                                          \
}                                                                                                         \
/* gelu_tanh: v (1 + tanh(u)) / 2, u = sqrt(2/pi) (v + 0.044715 v^3) (torch's approximate="tanh"); beyond    \
 * |v| = 20, tanh(u) is +-1 to the last bit in both types: v is clamped there so that v^3 cannot overflow */  \
static inline T FN(gelu_tanh_fwd)(T v, T a) {                                                             \
    T x = v > (T)20 ? (T)20 : v;                                                                          \
    x = x < (T)-20 ? (T)-20 : x;                                                                          \
    T t = TANH((T)FNN_SQRT_2_OVER_PI * (x + (T)FNN_GELU_KAPPA * (x * x * x)));                            \
    return (T)0.5 * v * ((T)1 + t);                                                                       \
}                                                                                                         \
static inline T FN(gelu_tanh_bwd)(T z, T y, T dy, T a) {                                                  \
    T x = z > (T)20 ? (T)20 : z;                                                                          \
    x = x < (T)-20 ? (T)-20 : x;                                                                          \
    T x2 = x * x;                                                                                         \
    T t = TANH((T)FNN_SQRT_2_OVER_PI * (x + (T)FNN_GELU_KAPPA * (x2 * x)));                               \
    T left_d = (T)0.5 * ((T)1 + t);                                                                       \
    T right_d = (T)0.5 * x * ((T)1 - t * t) * (T)FNN_SQRT_2_OVER_PI * ((T)1 + (T)(3 * FNN_GELU_KAPPA) * x2); \
    return dy * (left_d + right_d);                                                                       \
}                                                                                                         \
/* silu (swish): v sigmoid(v); f' = s (1 + z (1 - s)), s = sigmoid(z) */                                   \
static inline T FN(silu_fwd)(T v, T a) { return v * SIGMOID(v); }                                         \
static inline T FN(silu_bwd)(T z, T y, T dy, T a) {                                                       \
    T s = SIGMOID(z);                                                                                     \
    return dy * s * ((T)1 + z * ((T)1 - s));                                                              \
}                                                                                                         \
/* elu: v for v > 0, a (e^v - 1) otherwise; f' = 1 or a e^z (exp of min(v, 0): no overflow) */             \
static inline T FN(elu_fwd)(T v, T a) { return v > 0 ? v : a * EXPM1(v > 0 ? (T)0 : v); }                 \
static inline T FN(elu_bwd)(T z, T y, T dy, T a) { return z > 0 ? dy : dy * a * EXP(z > 0 ? (T)0 : z); }  \
/* selu: scale * elu(v) with torch's alpha and scale */                                                   \
static inline T FN(selu_fwd)(T v, T a) {                                                                  \
    return v > 0 ? (T)FNN_SELU_SCALE * v                                                                  \
                 : (T)(FNN_SELU_SCALE * FNN_SELU_ALPHA) * EXPM1(v > 0 ? (T)0 : v);                        \
}                                                                                                         \
static inline T FN(selu_bwd)(T z, T y, T dy, T a) {                                                       \
    return z > 0 ? dy * (T)FNN_SELU_SCALE                                                                 \
                 : dy * (T)(FNN_SELU_SCALE * FNN_SELU_ALPHA) * EXP(z > 0 ? (T)0 : z);                     \
}                                                                                                         \
/* softplus (beta 1, threshold 20, as torch): log(1 + e^v), v itself above 20; f' = e^z / (1 + e^z) */     \
static inline T FN(softplus_fwd)(T v, T a) { return v > (T)20 ? v : LOG1P(EXP(v > (T)20 ? (T)20 : v)); } \
static inline T FN(softplus_bwd)(T z, T y, T dy, T a) {                                                   \
    T e = EXP(z > (T)20 ? (T)20 : z);                                                                     \
    return z > (T)20 ? dy : dy * e / (e + (T)1);                                                          \
}                                                                                                         \
/* mish: v tanh(softplus(v)).  With e = e^v and n = e (e + 2): tanh(log(1 + e)) = n / (n + 2) and            \
 * 1 - tanh^2 = 4 (n + 1) / (n + 2)^2, one exp and no cancellation; e^v is taken at min(v, 40), where the     \
 * tanh is 1 to the last bit (and n = e^80 still fits a float); f' = tanh(sp) + z sigmoid(z) (1 - tanh^2) */  \
static inline T FN(mish_fwd)(T v, T a) {                                                                  \
    T e = EXP(v > (T)40 ? (T)40 : v);                                                                     \
    T n = e * (e + (T)2);                                                                                 \
    return v * (n / (n + (T)2));                                                                          \
}                                                                                                         \
static inline T FN(mish_bwd)(T z, T y, T dy, T a) {                                                       \
    T x = z > (T)40 ? (T)40 : z;                                                                          \
    T e = EXP(x);                                                                                         \
    T n = e * (e + (T)2);                                                                                 \
    T t = n / (n + (T)2);                                                                                 \
    T sech2 = (T)4 * ((n + (T)1) / (n + (T)2)) / (n + (T)2);                                              \
    return dy * (t + x * (e / (e + (T)1)) * sech2);                                                       \
}                                                                                                         \

#define T float
#define SFX _f
#define EXP expf
#define EXPM1 expm1f
#define LOG1P log1pf
#define ERF erff
#define TANH fnn_tanh_f
#define SIGMOID fnn_sigmoid_f
FNN_ACT_MATH
#undef T
#undef SFX
#undef EXP
#undef EXPM1
#undef LOG1P
#undef ERF
#undef TANH
#undef SIGMOID
#define T double
#define SFX _d
#define EXP exp
#define EXPM1 expm1
#define LOG1P log1p
#define ERF erf
#define TANH tanh
#define SIGMOID fnn_sigmoid_d
FNN_ACT_MATH
#undef T
#undef SFX
#undef EXP
#undef EXPM1
#undef LOG1P
#undef ERF
#undef TANH
#undef SIGMOID

#define FNN_ACT_NARROW 32      /* rows narrower than this (with a bias) are done k at a time */
#define FNN_ACT_REP 256        /* the repeated bias of the narrow rows: at most this many values */

/* one row of the forward: v = z[j] (+ bias[j]); z[j] = v; y[j] = F(v) */
#define FNN_ACT_FWD_ROW(T, F)                                                                             \
    if (bias != NULL) {                                                                                   \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n_cols; j++) {                                                                    \
            T v = z[j] + bias[j];                                                                         \
            z[j] = v;                                                                                     \
            y[j] = F(v, alpha);                                                                           \
        }                                                                                                 \
    } else {                                                                                              \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n_cols; j++) {                                                                    \
            T v = z[j];                                                                                   \
            z[j] = v;                                                                                     \
            y[j] = F(v, alpha);                                                                           \
        }                                                                                                 \
    }

/* the block [r0, r1): without a bias one loop over all its elements; with a bias and narrow rows (a
 * convolution's few channels: rows of 6 values leave vectors mostly empty and pay a loop per row) groups of
 * k rows against the bias repeated k times (rep), so that the loop runs over k * n_cols values; else row by
 * row.  Every element gets the same expression either way. */
#define FNN_ACT_FWD_BLOCK(T, F)                                                                           \
    if (bias == NULL) {                                                                                   \
        ptrdiff_t q, m = (r1 - r0) * n_cols;                                                              \
        z = Z + r0 * n_cols; y = Y + r0 * n_cols;                                                         \
        _Pragma("omp simd")                                                                              \
        for (q = 0; q < m; q++) y[q] = F(z[q], alpha);                                                    \
    } else if (n_cols >= FNN_ACT_NARROW || n_cols <= 0) {                                                 \
        for (i = r0; i < r1; i++) { z = Z + i * n_cols; y = Y + i * n_cols; FNN_ACT_FWD_ROW(T, F) }       \
    } else {                                                                                              \
        T rep[FNN_ACT_REP];                                                                               \
        ptrdiff_t q, k = FNN_ACT_REP / n_cols, m = k * n_cols;                                            \
        for (q = 0; q < m; q++) rep[q] = bias[q % n_cols];                                                \
        for (i = r0; i + k <= r1; i += k) {                                                               \
            z = Z + i * n_cols; y = Y + i * n_cols;                                                       \
            _Pragma("omp simd")                                                                          \
            for (q = 0; q < m; q++) {                                                                     \
                T v = z[q] + rep[q];                                                                      \
                z[q] = v;                                                                                 \
                y[q] = F(v, alpha);                                                                       \
            }                                                                                             \
        }                                                                                                 \
        for (; i < r1; i++) { z = Z + i * n_cols; y = Y + i * n_cols; FNN_ACT_FWD_ROW(T, F) }             \
    }

#define FNN_ACT_FWD_CASE_F(ID, NAME)                                                                      \
    case FNN_ACT_##ID: FNN_ACT_FWD_BLOCK(float, fnn_##NAME##_fwd_f) break;
#define FNN_ACT_FWD_CASE_D(ID, NAME)                                                                      \
    case FNN_ACT_##ID: FNN_ACT_FWD_BLOCK(double, fnn_##NAME##_fwd_d) break;

/* Z += bias (if not NULL), Y = f(Z) over rows [r0, r1); 0, or FNN_ERR_KIND for a kind not elementwise */
#define FNN_ACT_FWD(NAME, T, CASE)                                                                        \
FNN_CLONES static int NAME(int kind, T *Z, T *Y, const T *bias, ptrdiff_t r0, ptrdiff_t r1,               \
                           ptrdiff_t n_cols, T alpha) {                                                   \
    ptrdiff_t i, j;                                                                                       \
    T *z, *y;                                                                                             \
    switch (kind) {                                                                                       \
    FNN_ACT_ELEMENTWISE(CASE)                                                                             \
    default: return FNN_ERR_KIND;                                                                         \
    }                                                                                                     \
    return 0;                                                                                             \
}

#define FNN_ACT_BWD_CASE_F(ID, NAME)                                                                      \
    case FNN_ACT_##ID:                                                                                    \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = fnn_##NAME##_bwd_f(z[j], y[j], dy[j], alpha);                     \
        break;
#define FNN_ACT_BWD_CASE_D(ID, NAME)                                                                      \
    case FNN_ACT_##ID:                                                                                    \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = fnn_##NAME##_bwd_d(z[j], y[j], dy[j], alpha);                     \
        break;

/* dz = dy * f'(z) over the whole block (elementwise: one loop over rows r0..r1 at once); 0 or FNN_ERR_KIND */
#define FNN_ACT_BWD(NAME, T, CASE)                                                                        \
FNN_CLONES static int NAME(int kind, const T *Z, const T *Y, const T *dY, T *dZ, ptrdiff_t r0,            \
                           ptrdiff_t r1, ptrdiff_t n_cols, T alpha) {                                     \
    ptrdiff_t j, n = (r1 - r0) * n_cols, o = r0 * n_cols;                                                 \
    const T *z = Z + o, *y = Y + o, *dy = dY + o;                                                         \
    T *dz = dZ + o;                                                                                       \
    switch (kind) {                                                                                       \
    FNN_ACT_ELEMENTWISE(CASE)                                                                             \
    default: return FNN_ERR_KIND;                                                                         \
    }                                                                                                     \
    return 0;                                                                                             \
}

FNN_ACT_FWD(fnn_act_fwd_f, float, FNN_ACT_FWD_CASE_F)
FNN_ACT_FWD(fnn_act_fwd_d, double, FNN_ACT_FWD_CASE_D)
FNN_ACT_BWD(fnn_act_bwd_f, float, FNN_ACT_BWD_CASE_F)
FNN_ACT_BWD(fnn_act_bwd_d, double, FNN_ACT_BWD_CASE_D)
#undef FN
#endif
