/* fnn_norm.h: the per-element loops of batch norm and dropout (fastnn/_core/norm.pyx, dropout.pyx), compiled per
 * ISA (FNN_CLONES, fnn_dispatch.h).
 *
 * Batch norm works on blocks of up to FNN_NORM_COLS columns: its sums run down the rows of the block in double,
 * one accumulator per column, so a vector holds several columns and each column's sum is added in row order
 * whatever the vector width: every ISA variant gives the bits of the scalar loop.  A block of 64, 32 or 16 columns
 * (a convolution's channels, or a full block) has a constant width, which the compiler keeps in registers; 64
 * columns make a row of a 64-channel image one contiguous read of each pass (16-column blocks took four strided
 * passes over the image per statistic).  FNN_NORM_DISPATCH picks the width.
 *
 * Dropout draws element i's keep bit from fnn_rng_u64(seed, offset + i) (fnn_rng.h): a counter-based generator,
 * vectorized across elements.
 *
 * Each function exists as _f (float) and _d (double); the expressions and their types are those of the Cython
 * loops they replace, so the values are the same. */
#ifndef FNN_NORM_H
#define FNN_NORM_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fnn_dispatch.h"
#include "fnn_rng.h"

#define FNN_NORM_COLS 64

/* BODY(T, W, R) with W a constant where the block's width w is 64, 32 or 16, else w itself (R passed on). */
#define FNN_NORM_DISPATCH(BODY, T, w, R)                                                                  \
    if ((w) == 64) { BODY(T, 64, R) }                                                                     \
    else if ((w) == 32) { BODY(T, 32, R) }                                                                \
    else if ((w) == 16) { BODY(T, 16, R) }                                                                \
    else { BODY(T, w, R) }

/* A ReLU fused after the batch norm (R = 1; the compiled plan's BatchNorm -> ReLU pair): the forward stores
 * relu(y) = y > 0 ? y : 0 for y, and the backward takes the gradient of the ReLU's output with that output A,
 * the norm's output gradient being dy where A > 0, else 0.  These are fnn_act.h's relu_fwd and relu_bwd (A > 0
 * exactly where y > 0), so the pair gives the bits of the two layers run one after the other. */
#define FNN_BN_RELU(T, R, v) ((R) ? ((v) > 0 ? (v) : (T)0) : (v))
#define FNN_BN_DZ(T, R, dy, a, j) ((R) ? ((a)[j] > 0 ? (dy)[j] : (T)0) : (dy)[j])

/* Xhat and Y of rows [i0, i1) and columns [c0, c0 + W) of X (n, C), given each column's mean m[j] and inverse
 * deviation s[j] in double (j = column - c0): the forward's last pass, also run alone on a thread's rows by the
 * row split (fnn_bn_norm_block). */
#define FNN_BN_NORM_LOOP(T, W, R)                                                                         \
    {                                                                                                     \
        T g_[FNN_NORM_COLS], b_[FNN_NORM_COLS];                                                           \
        double m_[FNN_NORM_COLS], s_[FNN_NORM_COLS];                                                      \
        for (j = 0; j < (W); j++) { g_[j] = gamma[c0 + j]; b_[j] = beta[c0 + j]; m_[j] = m[j]; s_[j] = s[j]; }\
        for (i = i0; i < i1; i++) {                                                                       \
            const T *restrict x = X + i * C + c0;                                                         \
            T *restrict y = Y + i * C + c0;                                                               \
            T *restrict xh = Xhat + i * C + c0;                                                           \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) {                                                                   \
                T h = (T)((x[j] - m_[j]) * s_[j]);                                                        \
                T v = h * g_[j] + b_[j];                                                                  \
                xh[j] = h;                                                                                \
                y[j] = FNN_BN_RELU(T, R, v);                                                              \
            }                                                                                             \
        }                                                                                                 \
    }

#define FNN_BN_NORM(NAME, T)                                                                              \
FNN_CLONES static void NAME(const T *X, T *Y, T *Xhat, const T *gamma, const T *beta, const double *m,      \
                            const double *s, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t C, ptrdiff_t c0,         \
                            ptrdiff_t c1, int relu)                                                       \
{                                                                                                         \
    ptrdiff_t i, j, w = c1 - c0;                                                                          \
    if (relu) {                                                                                           \
        FNN_NORM_DISPATCH(FNN_BN_NORM_LOOP, T, w, 1)                                                      \
    } else {                                                                                              \
        FNN_NORM_DISPATCH(FNN_BN_NORM_LOOP, T, w, 0)                                                      \
    }                                                                                                     \
}

/* Batch norm forward on columns [c0, c0 + W) of X (n, C): statistics (training: the batch's, running ones
 * updated when rmean != NULL; else the running ones), Xhat and Y (relu: max(Y, 0), FNN_BN_RELU). */
#define FNN_BN_FWD_BODY(T, W, R)                                                                          \
    double m[FNN_NORM_COLS], s[FNN_NORM_COLS], v;                                                         \
    ptrdiff_t i, j;                                                                                       \
    if (training) {                                                                                       \
        for (j = 0; j < (W); j++) { m[j] = 0; s[j] = 0; }                                                 \
        for (i = 0; i < n; i++) {                                                                         \
            const T *x = X + i * C + c0;                                                                  \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) m[j] += x[j];                                                       \
        }                                                                                                 \
        for (j = 0; j < (W); j++) m[j] = m[j] / n;                                                        \
        for (i = 0; i < n; i++) {                                                                         \
            const T *x = X + i * C + c0;                                                                  \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) { double d = x[j] - m[j]; s[j] += d * d; }                          \
        }                                                                                                 \
        for (j = 0; j < (W); j++) {                                                                       \
            v = s[j] / n;                   /* biased: normalizes the batch */                            \
            mean[c0 + j] = (T)m[j];                                                                       \
            s[j] = 1.0 / sqrt(v + eps);                                                                   \
            invstd[c0 + j] = (T)s[j];                                                                     \
            if (rmean != NULL) {                                                                          \
                rmean[c0 + j] = (T)((1 - momentum) * rmean[c0 + j] + momentum * m[j]);                    \
                rvar[c0 + j] = (T)((1 - momentum) * rvar[c0 + j] + momentum * v * n / (n - 1));           \
            }                                                                                             \
        }                                                                                                 \
    } else {                                                                                              \
        for (j = 0; j < (W); j++) {                                                                       \
            m[j] = rmean[c0 + j];                                                                         \
            s[j] = 1.0 / sqrt((double)rvar[c0 + j] + eps);                                                \
            mean[c0 + j] = (T)m[j];                                                                       \
            invstd[c0 + j] = (T)s[j];                                                                     \
        }                                                                                                 \
    }                                                                                                     \
    {                                                                                                     \
        ptrdiff_t i0 = 0, i1 = n;                                                                         \
        FNN_BN_NORM_LOOP(T, W, R)                                                                         \
    }

#define FNN_BN_FWD(NAME, T)                                                                               \
FNN_CLONES static void NAME(const T *X, T *Y, T *Xhat, const T *gamma, const T *beta, T *mean, T *invstd,    \
                            T *rmean, T *rvar, ptrdiff_t n, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1,         \
                            int training, double momentum, double eps, int relu)                             \
{                                                                                                         \
    ptrdiff_t w = c1 - c0;                                                                                \
    if (relu) {                                                                                           \
        FNN_NORM_DISPATCH(FNN_BN_FWD_BODY, T, w, 1)                                                       \
    } else {                                                                                              \
        FNN_NORM_DISPATCH(FNN_BN_FWD_BODY, T, w, 0)                                                       \
    }                                                                                                     \
}

/* sum_dy[c] = sum_i dZ[i, c], sum_dy_xhat[c] = sum_i dZ[i, c] * Xhat[i, c] (the product rounded to T, as the
 * Cython loop), for c in [c0, c0 + W); dZ = dY, or FNN_BN_DZ of dY and A (R = 1: A not NULL). */
#define FNN_COL_SUMS_BODY(T, W, R)                                                                        \
    double a[FNN_NORM_COLS], b[FNN_NORM_COLS];                                                            \
    ptrdiff_t i, j;                                                                                       \
    for (j = 0; j < (W); j++) { a[j] = 0; b[j] = 0; }                                                     \
    for (i = 0; i < n; i++) {                                                                             \
        const T *dy = dY + i * C + c0;                                                                    \
        const T *xh = Xhat + i * C + c0;                                                                  \
        const T *ar = (R) ? A + i * C + c0 : dy;                                                          \
        _Pragma("omp simd")                                                                               \
        for (j = 0; j < (W); j++) {                                                                       \
            T dz = FNN_BN_DZ(T, R, dy, ar, j);                                                            \
            a[j] += dz;                                                                                   \
            b[j] += (T)(dz * xh[j]);                                                                      \
        }                                                                                                 \
    }                                                                                                     \
    for (j = 0; j < (W); j++) { sum_dy[c0 + j] = (T)a[j]; sum_dy_xhat[c0 + j] = (T)b[j]; }

#define FNN_COL_SUMS(NAME, T)                                                                             \
FNN_CLONES static void NAME(const T *dY, const T *Xhat, const T *A, ptrdiff_t n, ptrdiff_t C, ptrdiff_t c0,  \
                            ptrdiff_t c1, T *sum_dy, T *sum_dy_xhat)                                         \
{                                                                                                         \
    ptrdiff_t w = c1 - c0;                                                                                \
    if (A != NULL) {                                                                                      \
        FNN_NORM_DISPATCH(FNN_COL_SUMS_BODY, T, w, 1)                                                     \
    } else {                                                                                              \
        FNN_NORM_DISPATCH(FNN_COL_SUMS_BODY, T, w, 0)                                                     \
    }                                                                                                     \
}

/* The input gradient of batch norm on rows [i0, i1) and columns [c0, c1) of n rows, after the column sums dbeta =
 * sum dZ and dgamma = sum dZ Xhat: batch_stats: dX = gamma invstd (dZ - (dbeta + Xhat dgamma) / n), else gamma
 * invstd dZ (dZ as in FNN_COL_SUMS_BODY). */
#define FNN_BN_DX_LOOP(T, W, R)                                                                           \
    {                                                                                                     \
        double k[FNN_NORM_COLS];                                                                          \
        T db_[FNN_NORM_COLS], dg_[FNN_NORM_COLS];                                                         \
        for (j = 0; j < (W); j++) {                                                                       \
            k[j] = (double)gamma[c0 + j] * invstd[c0 + j];                                                \
            db_[j] = dbeta[c0 + j];                                                                       \
            dg_[j] = dgamma[c0 + j];                                                                      \
        }                                                                                                 \
        for (i = i0; i < i1; i++) {                                                                       \
            const T *restrict dy = dY + i * C + c0;                                                       \
            const T *restrict xh = Xhat + i * C + c0;                                                     \
            const T *restrict ar = (R) ? A + i * C + c0 : dy;                                             \
            T *restrict dx = dX + i * C + c0;                                                             \
            if (batch_stats) {                                                                            \
                _Pragma("omp simd")                                                                       \
                for (j = 0; j < (W); j++)                                                                 \
                    dx[j] = (T)(k[j] * (FNN_BN_DZ(T, R, dy, ar, j) - (db_[j] + xh[j] * dg_[j]) / n));     \
            } else {                                                                                      \
                _Pragma("omp simd")                                                                       \
                for (j = 0; j < (W); j++) dx[j] = (T)(k[j] * FNN_BN_DZ(T, R, dy, ar, j));                 \
            }                                                                                             \
        }                                                                                                 \
    }

#define FNN_BN_DX(NAME, T)                                                                                \
FNN_CLONES static void NAME(const T *dY, const T *Xhat, const T *A, const T *gamma, const T *invstd, T *dX,   \
                            const T *dgamma, const T *dbeta, ptrdiff_t n, ptrdiff_t i0, ptrdiff_t i1,        \
                            ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, int batch_stats)                        \
{                                                                                                         \
    ptrdiff_t i, j, w = c1 - c0;                                                                          \
    if (A != NULL) {                                                                                      \
        FNN_NORM_DISPATCH(FNN_BN_DX_LOOP, T, w, 1)                                                        \
    } else {                                                                                              \
        FNN_NORM_DISPATCH(FNN_BN_DX_LOOP, T, w, 0)                                                        \
    }                                                                                                     \
}

/* Dropout over elements [i0, i1): keep element i when the top 53 bits of fnn_rng_u64(seed, i + offset) are
 * >= threshold; mask[i] = keep, Y[i] = X[i] * (keep * scale). */
#define FNN_DROPOUT_FWD(NAME, T)                                                                          \
FNN_CLONES static void NAME(const T *X, T *Y, unsigned char *mask, ptrdiff_t i0, ptrdiff_t i1, uint64_t seed,  \
                            uint64_t threshold, T scale, uint64_t offset)                                    \
{                                                                                                         \
    ptrdiff_t i;                                                                                          \
    for (i = i0; i < i1; i++) {                                                                           \
        unsigned char keep = (fnn_rng_u64(seed, (uint64_t)i + offset) >> 11) >= threshold;                \
        mask[i] = keep;                                                                                   \
        Y[i] = X[i] * (keep * scale);                                                                     \
    }                                                                                                     \
}

#define FNN_DROPOUT_BWD(NAME, T)                                                                          \
FNN_CLONES static void NAME(const T *dY, const unsigned char *mask, T *dX, ptrdiff_t i0, ptrdiff_t i1, T scale) \
{                                                                                                         \
    ptrdiff_t i;                                                                                          \
    for (i = i0; i < i1; i++) dX[i] = dY[i] * (mask[i] * scale);                                          \
}

FNN_BN_NORM(fnn_bn_norm_block_f, float)
FNN_BN_NORM(fnn_bn_norm_block_d, double)
FNN_BN_FWD(fnn_bn_fwd_block_f, float)
FNN_BN_FWD(fnn_bn_fwd_block_d, double)
FNN_COL_SUMS(fnn_col_sums_f, float)
FNN_COL_SUMS(fnn_col_sums_d, double)
FNN_BN_DX(fnn_bn_dx_block_f, float)
FNN_BN_DX(fnn_bn_dx_block_d, double)
FNN_DROPOUT_FWD(fnn_dropout_fwd_f, float)
FNN_DROPOUT_FWD(fnn_dropout_fwd_d, double)
FNN_DROPOUT_BWD(fnn_dropout_bwd_f, float)
FNN_DROPOUT_BWD(fnn_dropout_bwd_d, double)

/* Batch norm split by rows, for few columns and several threads (a convolution's 16 channels over 128x32x32
 * pixels: one block of columns, so the column split above leaves all but one thread idle).  Each thread sums its
 * rows [i0, i1) into double partials acc[0..C) (zeroed by the caller); the caller adds the partials in thread
 * order, so the bits depend on the thread count (not on the ISA).  Each thread sums into a copy on its own
 * stack: the partials of two threads can share a cache line, and adding into them row by row made the lines
 * bounce between the cores.  The per-element passes are the block kernels' own (fnn_bn_norm_block, fnn_bn_dx_block)
 * on each thread's rows. */
#define FNN_BN_SUM_ROWS_BODY(T, W, R)                                                                     \
    {                                                                                                     \
        double la[FNN_NORM_COLS];                                                                         \
        for (j = 0; j < (W); j++) la[j] = acc[c0 + j];                                                    \
        for (i = i0; i < i1; i++) {                                                                       \
            const T *x = X + i * C + c0;                                                                  \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) la[j] += x[j];                                                      \
        }                                                                                                 \
        for (j = 0; j < (W); j++) acc[c0 + j] = la[j];                                                    \
    }
#define FNN_BN_SQ_ROWS_BODY(T, W, R)                                                                      \
    {                                                                                                     \
        double la[FNN_NORM_COLS], lm[FNN_NORM_COLS];                                                      \
        for (j = 0; j < (W); j++) { la[j] = acc[c0 + j]; lm[j] = m[c0 + j]; }                             \
        for (i = i0; i < i1; i++) {                                                                       \
            const T *x = X + i * C + c0;                                                                  \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) { double d = x[j] - lm[j]; la[j] += d * d; }                        \
        }                                                                                                 \
        for (j = 0; j < (W); j++) acc[c0 + j] = la[j];                                                    \
    }
#define FNN_BN_COLSUM_ROWS_BODY(T, W, R)                                                                  \
    {                                                                                                     \
        double la[FNN_NORM_COLS], lb[FNN_NORM_COLS];                                                      \
        for (j = 0; j < (W); j++) { la[j] = a[c0 + j]; lb[j] = b[c0 + j]; }                               \
        for (i = i0; i < i1; i++) {                                                                       \
            const T *dy = dY + i * C + c0, *xh = Xhat + i * C + c0;                                       \
            const T *ar = (R) ? A + i * C + c0 : dy;                                                      \
            _Pragma("omp simd")                                                                           \
            for (j = 0; j < (W); j++) {                                                                   \
                T dz = FNN_BN_DZ(T, R, dy, ar, j);                                                        \
                la[j] += dz;                                                                              \
                lb[j] += (T)(dz * xh[j]);                                                                 \
            }                                                                                             \
        }                                                                                                 \
        for (j = 0; j < (W); j++) { a[c0 + j] = la[j]; b[c0 + j] = lb[j]; }                               \
    }

/* Each block of up to FNN_NORM_COLS columns in turn: the rows stay in cache across the blocks. */
#define FNN_BN_ROWS_BLOCKS(BODY, T, R)                                                                    \
    ptrdiff_t i, j, c0, w;                                                                                \
    for (c0 = 0; c0 < C; c0 += FNN_NORM_COLS) {                                                           \
        w = C - c0 < FNN_NORM_COLS ? C - c0 : FNN_NORM_COLS;                                              \
        FNN_NORM_DISPATCH(BODY, T, w, R)                                                                  \
    }

#define FNN_BN_ROWS(SUF, T)                                                                               \
FNN_CLONES static void fnn_bn_sum_rows_##SUF(const T *X, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t C,          \
                                             double *restrict acc) {                                     \
    FNN_BN_ROWS_BLOCKS(FNN_BN_SUM_ROWS_BODY, T, 0)                                                        \
}                                                                                                         \
FNN_CLONES static void fnn_bn_sq_rows_##SUF(const T *X, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t C,           \
                                            const double *m, double *restrict acc) {                     \
    FNN_BN_ROWS_BLOCKS(FNN_BN_SQ_ROWS_BODY, T, 0)                                                         \
}                                                                                                         \
FNN_CLONES static void fnn_bn_colsum_rows_##SUF(const T *dY, const T *Xhat, const T *A, ptrdiff_t i0,      \
                                                ptrdiff_t i1, ptrdiff_t C, double *restrict a,           \
                                                double *restrict b) {                                    \
    if (A != NULL) {                                                                                      \
        FNN_BN_ROWS_BLOCKS(FNN_BN_COLSUM_ROWS_BODY, T, 1)                                                 \
    } else {                                                                                              \
        FNN_BN_ROWS_BLOCKS(FNN_BN_COLSUM_ROWS_BODY, T, 0)                                                 \
    }                                                                                                     \
}

FNN_BN_ROWS(f, float)
FNN_BN_ROWS(d, double)

#endif
