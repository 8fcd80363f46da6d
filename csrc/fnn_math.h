/* fnn_math.h: numerically stable scalar math shared by the kernels (float and double twins). */
#ifndef FNN_MATH_H
#define FNN_MATH_H
#include <math.h>

/* sigmoid(x) = 1 / (1 + exp(-x)), without overflow for any finite x. */
static inline double fnn_sigmoid_d(double x) {
    if (x >= 0) { return 1.0 / (1.0 + exp(-x)); }
    double e = exp(x);
    return e / (1.0 + e);
}
static inline float fnn_sigmoid_f(float x) {
    if (x >= 0) { return 1.0f / (1.0f + expf(-x)); }
    float e = expf(x);
    return e / (1.0f + e);
}

/* log(1 + exp(x)) (softplus), exact to rounding for every finite x. */
static inline double fnn_log1pexp_d(double x) {
    return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x)));
}
static inline float fnn_log1pexp_f(float x) {
    return (x > 0 ? x : 0.0f) + log1pf(expf(-fabsf(x)));
}
/* tanh for float32 without a libm call: Eigen's rational approximation (odd degree-13 numerator, even degree-6
 * denominator) on x clamped to [-9, 9], x itself for |x| < 4e-4.  Branch-free, so gcc vectorizes the loops that
 * use it (libm's tanhf costs ~12 ns per element here, this ~1 ns); error within a few ulp of tanhf. */
static inline float fnn_tanh_f(float a) {
    /* single-comparison selects only (no &&, no early return): gcc turns them into blends and vectorizes */
    float x = a > 9.0f ? 9.0f : a;
    x = x < -9.0f ? -9.0f : x;
    float x2 = x * x;
    float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = x2 * p + -8.60467152213735e-11f;
    p = x2 * p + 5.12229709037114e-08f;
    p = x2 * p + 1.48572235717979e-05f;
    p = x2 * p + 6.37261928875436e-04f;
    p = x2 * p + 4.89352455891786e-03f;
    p = x * p;
    float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = x2 * q + 2.26843463243900e-03f;
    q = x2 * q + 4.89352518554385e-03f;
    float r = p / q;
    r = r > 1.0f ? 1.0f : r;        /* the rational form overshoots 1 by an ulp or two near |x| = 9 */
    r = r < -1.0f ? -1.0f : r;
    return fabsf(a) < 4e-4f ? a : r;  /* tanh(a) = a to float precision; keeps -0 and tiny values exact; NaN -> r (NaN) */
}
#endif
