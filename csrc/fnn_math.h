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
#endif
