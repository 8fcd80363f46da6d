/* fnn_update.h: the SGD, Adam/AdamW, RMSprop and Adagrad element updates over a range, float and double, the
 * only implementation of each (optim.pyx's *_step functions and the compiled plan both run them).  restrict
 * pointers and omp simd so that gcc vectorizes them (the Adam loop written in Cython stayed scalar: five pointers
 * that may alias defeat gcc's runtime alias checks; ~3 ns per element against ~0.5 here; RMSprop's likewise, ~4
 * ns); FNN_CLONES: runtime ISA dispatch. */
#ifndef FNN_UPDATE_H
#define FNN_UPDATE_H
#include <math.h>
#include <stddef.h>

#include "fnn_dispatch.h"

/* Adam / AdamW over [i0, i1): p = p * decay_factor; g' = g + wd p; m, v (and vmax) updated;
 * p -= step_size m / (sqrt(v) / bc2_sqrt + eps).  The loop also raises mx[0..3] to the largest |p|, |m|, v and
 * vmax it writes, reductions in registers (the NaN guard of the compiled training plan carries them to the next
 * step instead of reading the arrays again; other callers pass a scratch mx).  The maxima ignore NaN (a
 * comparison with NaN is false); the plan relies on them only for steps proved finite. */
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

/* SGD (torch.optim.SGD) over [i0, i1): g' = g + wd p; with a buffer, buf = g' (first step) or
 * momentum buf + (1 - dampening) g', the step g' + momentum buf (nesterov) or buf; p -= lr step.  The buffer's
 * (1 - dampening) g' term is computed in double, as the Cython loop this replaced did (Cython wrote its
 * `1 - dampening` with a double literal), so trained weights did not change.  Raises mx[0] to max |p| and
 * mx[1] to max |buf| written.  One loop per case, the flags hoisted out of it, so that each vectorizes. */
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
/* RMSprop over [i0, i1): g' = g + wd p; sq = sq alpha + (1 - alpha) g' g'; centered (gavg != NULL):
 * gavg += (1 - alpha)(g' - gavg), a = sqrt(sq - gavg^2) + eps, else a = sqrt(sq) + eps; with momentum (buf !=
 * NULL): buf = buf momentum + g' / a, p -= lr buf; else p -= lr g' / a (torch.optim.RMSprop's single-tensor
 * update).  One loop per case, so that each vectorizes. */
#define FNN_RMSPROP_BODY(T, SQRT, CENTERED, MOMENTUM)                                                     \
    _Pragma("omp simd")                                                                                   \
    for (i = i0; i < i1; i++) {                                                                           \
        T gi = g[i] + wd * p[i];                                                                          \
        T si = sq[i] * alpha + (1 - alpha) * gi * gi;                                                     \
        T avg;                                                                                            \
        sq[i] = si;                                                                                       \
        if (CENTERED) {                                                                                   \
            T ga = gavg[i] + (1 - alpha) * (gi - gavg[i]);                                                \
            gavg[i] = ga;                                                                                 \
            avg = SQRT(si - ga * ga) + eps;                                                               \
        } else {                                                                                          \
            avg = SQRT(si) + eps;                                                                         \
        }                                                                                                 \
        if (MOMENTUM) {                                                                                   \
            T b = buf[i] * momentum + gi / avg;                                                           \
            buf[i] = b;                                                                                   \
            p[i] = p[i] - lr * b;                                                                         \
        } else {                                                                                          \
            p[i] = p[i] - lr * gi / avg;                                                                  \
        }                                                                                                 \
    }

#define FNN_RMSPROP_RANGE(NAME, T, SQRT)                                                                  \
FNN_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict sq, T *restrict gavg,         \
                            T *restrict buf, ptrdiff_t i0, ptrdiff_t i1, T lr, T alpha, T eps, T wd,      \
                            T momentum) {                                                                 \
    ptrdiff_t i;                                                                                          \
    if (gavg == NULL && buf == NULL) {                                                                    \
        FNN_RMSPROP_BODY(T, SQRT, 0, 0)                                                                   \
    } else if (gavg == NULL) {                                                                            \
        FNN_RMSPROP_BODY(T, SQRT, 0, 1)                                                                   \
    } else if (buf == NULL) {                                                                             \
        FNN_RMSPROP_BODY(T, SQRT, 1, 0)                                                                   \
    } else {                                                                                              \
        FNN_RMSPROP_BODY(T, SQRT, 1, 1)                                                                   \
    }                                                                                                     \
}

/* Adagrad over [i0, i1) with the step's rate clr: g' = g + wd p; s += g' g'; p -= clr g' / (sqrt(s) + eps). */
#define FNN_ADAGRAD_RANGE(NAME, T, SQRT)                                                                  \
FNN_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict s, ptrdiff_t i0, ptrdiff_t i1,  \
                            T clr, T wd, T eps) {                                                         \
    ptrdiff_t i;                                                                                          \
    _Pragma("omp simd")                                                                                   \
    for (i = i0; i < i1; i++) {                                                                           \
        T gi = g[i] + wd * p[i];                                                                          \
        T si = s[i] + gi * gi;                                                                            \
        s[i] = si;                                                                                        \
        p[i] = p[i] - clr * gi / (SQRT(si) + eps);                                                        \
    }                                                                                                     \
}

FNN_RMSPROP_RANGE(fnn_rmsprop_range_f, float, sqrtf)
FNN_RMSPROP_RANGE(fnn_rmsprop_range_d, double, sqrt)
FNN_ADAGRAD_RANGE(fnn_adagrad_range_f, float, sqrtf)
FNN_ADAGRAD_RANGE(fnn_adagrad_range_d, double, sqrt)

#endif
