/* fnn_act.h: the elementwise activation kernels (0 identity, 1 ReLU, 2 leaky ReLU, 3 sigmoid, 4 tanh): forward
 * with the bias added in the same pass, and backward, over rows [r0, r1) of C-contiguous (rows, n_cols)
 * blocks, float and double.
 *
 * In C rather than Cython so that every loop vectorizes: `#pragma omp simd` states what holds (an output
 * element depends only on the inputs at its own index, so Y may be Z and dZ may be dY), which gcc cannot prove
 * for possibly aliasing pointers, and the selects are ?: expressions that it turns into blends.  The Cython
 * version of the ReLU backward compiled to a branch per element, mispredicted about half the time on ReLU's
 * sign pattern (~4 ns per element, 10% of a W1 step).  FNN_CLONES: runtime ISA dispatch (fnn_dispatch.h).
 * Softmax (a reduction over each row) stays in activations.pyx. */
#ifndef FNN_ACT_H
#define FNN_ACT_H
#include <stddef.h>
#include "fnn_math.h"
#include "fnn_dispatch.h"

/* one row: v = z[j] (+ bias[j]); z[j] = v; y[j] = EXPR(v) */
#define FNN_ACT_ROW(T, ADD, EXPR)                                                                         \
    _Pragma("omp simd")                                                                                  \
    for (j = 0; j < n_cols; j++) {                                                                        \
        T v = z[j] ADD;                                                                                   \
        z[j] = v;                                                                                         \
        y[j] = EXPR;                                                                                      \
    }

#define FNN_ACT_KINDS(T, ADD, SIGMOID, TANH)                                                              \
    switch (kind) {                                                                                       \
    case 1: FNN_ACT_ROW(T, ADD, v > 0 ? v : (T)0) break;                                                  \
    case 2: FNN_ACT_ROW(T, ADD, v > 0 ? v : alpha * v) break;                                             \
    case 3: FNN_ACT_ROW(T, ADD, SIGMOID(v)) break;                                                        \
    case 4: FNN_ACT_ROW(T, ADD, TANH(v)) break;                                                           \
    default: FNN_ACT_ROW(T, ADD, v) break;                                                                \
    }

#define FNN_ACT_FWD(NAME, T, SIGMOID, TANH)                                                               \
FNN_CLONES static void NAME(int kind, T *Z, T *Y, const T *bias, ptrdiff_t r0, ptrdiff_t r1,              \
                            ptrdiff_t n_cols, T alpha) {                                                  \
    ptrdiff_t i, j;                                                                                       \
    for (i = r0; i < r1; i++) {                                                                           \
        T *z = Z + i * n_cols;                                                                            \
        T *y = Y + i * n_cols;                                                                            \
        if (bias != NULL) {                                                                               \
            FNN_ACT_KINDS(T, + bias[j], SIGMOID, TANH)                                                    \
        } else {                                                                                          \
            FNN_ACT_KINDS(T, , SIGMOID, TANH)                                                             \
        }                                                                                                 \
    }                                                                                                     \
}

/* dz = dy * act'(z) over the whole block (elementwise: one loop over rows r0..r1 at once) */
#define FNN_ACT_BWD(NAME, T)                                                                              \
FNN_CLONES static void NAME(int kind, const T *Z, const T *Y, const T *dY, T *dZ, ptrdiff_t r0,           \
                            ptrdiff_t r1, ptrdiff_t n_cols, T alpha) {                                    \
    ptrdiff_t j, n = (r1 - r0) * n_cols, o = r0 * n_cols;                                                 \
    const T *z = Z + o, *y = Y + o, *dy = dY + o;                                                         \
    T *dz = dZ + o;                                                                                       \
    switch (kind) {                                                                                       \
    case 1:                                                                                               \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = z[j] > 0 ? dy[j] : (T)0;                                          \
        break;                                                                                            \
    case 2:                                                                                               \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = z[j] > 0 ? dy[j] : alpha * dy[j];                                 \
        break;                                                                                            \
    case 3:                                                                                               \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = dy[j] * y[j] * ((T)1 - y[j]);                                     \
        break;                                                                                            \
    case 4:                                                                                               \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = dy[j] * ((T)1 - y[j] * y[j]);                                     \
        break;                                                                                            \
    default:                                                                                              \
        _Pragma("omp simd")                                                                              \
        for (j = 0; j < n; j++) dz[j] = dy[j];                                                            \
        break;                                                                                            \
    }                                                                                                     \
}

FNN_ACT_FWD(fnn_act_fwd_f, float, fnn_sigmoid_f, fnn_tanh_f)
FNN_ACT_FWD(fnn_act_fwd_d, double, fnn_sigmoid_d, tanh)
FNN_ACT_BWD(fnn_act_bwd_f, float)
FNN_ACT_BWD(fnn_act_bwd_d, double)
#endif
