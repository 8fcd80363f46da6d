/* fnn_update.h: optimizer element updates over a range, float and double, with restrict pointers so that gcc
 * vectorizes them.  First the Adam/AdamW update (the same loop written in Cython stayed scalar: five pointers
 * that may alias defeat gcc's runtime alias checks; ~3 ns per element against ~0.5 here); below, the Adam and
 * SGD updates that also track the maxima of what they write, for the compiled plan's NaN guard. */
#ifndef FNN_UPDATE_H
#define FNN_UPDATE_H
#include <math.h>
#include <stddef.h>

#include "fnn_dispatch.h"

#define FNN_ADAM_RANGE(NAME, T, SQRT)                                                                     \
FNN_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,               \
                        T *restrict vmax, ptrdiff_t i0, ptrdiff_t i1, T step_size, T beta1, T beta2,     \
                        T eps, T bc2_sqrt, T wd, T decay_factor) {                                        \
    ptrdiff_t i;                                                                                          \
    if (vmax == NULL) {                                                                                   \
        _Pragma("omp simd")                                                                              \
        for (i = i0; i < i1; i++) {                                                                       \
            T pi = p[i] * decay_factor;                                                                   \
            T gi = g[i] + wd * pi;                                                                        \
            T mi = m[i] + (1 - beta1) * (gi - m[i]);                                                      \
            T vi = v[i] * beta2 + (1 - beta2) * gi * gi;                                                  \
            m[i] = mi;                                                                                    \
            v[i] = vi;                                                                                    \
            p[i] = pi - step_size * mi / (SQRT(vi) / bc2_sqrt + eps);                                     \
        }                                                                                                 \
    } else {                                                                                              \
        _Pragma("omp simd")                                                                              \
        for (i = i0; i < i1; i++) {                                                                       \
            T pi = p[i] * decay_factor;                                                                   \
            T gi = g[i] + wd * pi;                                                                        \
            T mi = m[i] + (1 - beta1) * (gi - m[i]);                                                      \
            T vi = v[i] * beta2 + (1 - beta2) * gi * gi;                                                  \
            T vm = vi > vmax[i] ? vi : vmax[i];                                                           \
            m[i] = mi;                                                                                    \
            v[i] = vi;                                                                                    \
            vmax[i] = vm;                                                                                 \
            p[i] = pi - step_size * mi / (SQRT(vm) / bc2_sqrt + eps);                                     \
        }                                                                                                 \
    }                                                                                                     \
}

FNN_ADAM_RANGE(fnn_adam_range_f, float, sqrtf)
FNN_ADAM_RANGE(fnn_adam_range_d, double, sqrt)

/* The same updates (same arithmetic, same order: the values written are identical) that also raise mx[0..3] to
 * the largest |p|, |m|, v and vmax written, reductions in registers inside the loop (the NaN guard of the
 * compiled training plan carries them to the next step instead of reading the arrays again).  The maxima
 * ignore NaN (a comparison with NaN is false); the plan calls these only for steps proved finite. */
#define FNN_ADAM_RANGE_MAX(NAME, T, SQRT, FABS)                                                           \
FNN_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,               \
                        T *restrict vmax, ptrdiff_t i0, ptrdiff_t i1, T step_size, T beta1, T beta2,     \
                        T eps, T bc2_sqrt, T wd, T decay_factor, double *mx) {                            \
    ptrdiff_t i;                                                                                          \
    T hp = 0, hm = 0, hv = 0, hx = 0;                                                                     \
    if (vmax == NULL) {                                                                                   \
        _Pragma("omp simd reduction(max:hp, hm, hv)")                                                     \
        for (i = i0; i < i1; i++) {                                                                       \
            T pi = p[i] * decay_factor;                                                                   \
            T gi = g[i] + wd * pi;                                                                        \
            T mi = m[i] + (1 - beta1) * (gi - m[i]);                                                      \
            T vi = v[i] * beta2 + (1 - beta2) * gi * gi;                                                  \
            T pn = pi - step_size * mi / (SQRT(vi) / bc2_sqrt + eps);                                     \
            m[i] = mi;                                                                                    \
            v[i] = vi;                                                                                    \
            p[i] = pn;                                                                                    \
            hp = FABS(pn) > hp ? FABS(pn) : hp;                                                           \
            hm = FABS(mi) > hm ? FABS(mi) : hm;                                                           \
            hv = vi > hv ? vi : hv;                                                                       \
        }                                                                                                 \
    } else {                                                                                              \
        _Pragma("omp simd reduction(max:hp, hm, hv, hx)")                                                 \
        for (i = i0; i < i1; i++) {                                                                       \
            T pi = p[i] * decay_factor;                                                                   \
            T gi = g[i] + wd * pi;                                                                        \
            T mi = m[i] + (1 - beta1) * (gi - m[i]);                                                      \
            T vi = v[i] * beta2 + (1 - beta2) * gi * gi;                                                  \
            T vm = vi > vmax[i] ? vi : vmax[i];                                                           \
            T pn = pi - step_size * mi / (SQRT(vm) / bc2_sqrt + eps);                                     \
            m[i] = mi;                                                                                    \
            v[i] = vi;                                                                                    \
            vmax[i] = vm;                                                                                 \
            p[i] = pn;                                                                                    \
            hp = FABS(pn) > hp ? FABS(pn) : hp;                                                           \
            hm = FABS(mi) > hm ? FABS(mi) : hm;                                                           \
            hv = vi > hv ? vi : hv;                                                                       \
            hx = FABS(vm) > hx ? FABS(vm) : hx;                                                           \
        }                                                                                                 \
    }                                                                                                     \
    if ((double)hp > mx[0]) mx[0] = (double)hp;                                                           \
    if ((double)hm > mx[1]) mx[1] = (double)hm;                                                           \
    if ((double)hv > mx[2]) mx[2] = (double)hv;                                                           \
    if ((double)hx > mx[3]) mx[3] = (double)hx;                                                           \
}

FNN_ADAM_RANGE_MAX(fnn_adam_range_max_f, float, sqrtf, fabsf)
FNN_ADAM_RANGE_MAX(fnn_adam_range_max_d, double, sqrt, fabs)

/* SGD (optim._sgd_range, same arithmetic and order, including the double (1.0 - dampening) term that Cython
 * writes for its `(1 - dampening)`) raising mx[0] to max |p| and mx[1] to max |buf| written. */
#define FNN_SGD_LOOP_MAX(T, FABS, BI, DI)                                                                  \
    _Pragma("omp simd reduction(max:hp, hb)")                                                             \
    for (i = i0; i < i1; i++) {                                                                           \
        T gi = g[i] + wd * p[i];                                                                          \
        T bi = BI;                                                                                        \
        T pn = p[i] - lr * (DI);                                                                          \
        buf[i] = bi;                                                                                      \
        p[i] = pn;                                                                                        \
        hp = FABS(pn) > hp ? FABS(pn) : hp;                                                               \
        hb = FABS(bi) > hb ? FABS(bi) : hb;                                                               \
    }

#define FNN_SGD_RANGE_MAX(NAME, T, FABS)                                                                  \
FNN_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict buf, ptrdiff_t i0, ptrdiff_t i1,  \
                        T lr, T momentum, T dampening, T wd, int nesterov, int first, double *mx) {       \
    ptrdiff_t i;                                                                                          \
    T hp = 0, hb = 0;                                                                                     \
    if (buf == NULL) {                                                                                    \
        _Pragma("omp simd reduction(max:hp)")                                                             \
        for (i = i0; i < i1; i++) {                                                                       \
            T gi = g[i] + wd * p[i];                                                                      \
            T pn = p[i] - lr * gi;                                                                        \
            p[i] = pn;                                                                                    \
            hp = FABS(pn) > hp ? FABS(pn) : hp;                                                           \
        }                                                                                                 \
    } else if (first && nesterov) {                                                                       \
        FNN_SGD_LOOP_MAX(T, FABS, gi, gi + momentum * bi)                                                 \
    } else if (first) {                                                                                   \
        FNN_SGD_LOOP_MAX(T, FABS, gi, bi)                                                                 \
    } else if (nesterov) {                                                                                \
        FNN_SGD_LOOP_MAX(T, FABS, (T)(momentum * buf[i] + (1.0 - dampening) * gi), gi + momentum * bi)    \
    } else {                                                                                              \
        FNN_SGD_LOOP_MAX(T, FABS, (T)(momentum * buf[i] + (1.0 - dampening) * gi), bi)                    \
    }                                                                                                     \
    if ((double)hp > mx[0]) mx[0] = (double)hp;                                                           \
    if ((double)hb > mx[1]) mx[1] = (double)hb;                                                           \
}

FNN_SGD_RANGE_MAX(fnn_sgd_range_max_f, float, fabsf)
FNN_SGD_RANGE_MAX(fnn_sgd_range_max_d, double, fabs)
#endif
