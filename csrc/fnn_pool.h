/* fnn_pool.h: 2-D max and average pooling, channels-last, float and double from one source (macros).
 *
 * Layout: X (N, H, W, C), Y (N, OH, OW, C), the max-pooling argmax A (N, OH, OW, C) int32, all C-contiguous.
 * Window of output (oh, ow): rows oh*sh - pt .. + ph, columns ow*sw - pl .. + pw, clipped to the image (padded
 * positions are never read: max pooling ignores them, average pooling divides by the real inputs it covers,
 * as Keras does).  The caller (fastnn/_core/pool.pyx) has checked that every window holds a real input.
 * Pooling acts per channel: every inner loop runs over C, the contiguous axis (omp simd, FNN_CLONES dispatch).
 *
 * Max: the first maximum of the window in row-major scan order wins (a later equal value does not replace it).
 * NaN: a NaN is greater than everything, so a window holding a NaN gives NaN (as torch) and its gradient goes
 * to the window's first NaN.  A[...] = ih * W + iw, the winner's index in its image.
 * The backward of max pooling needs no scatter: for each window position it adds dY where A names that
 * position (a compare and a blend, vectorized over C); a corrupt A can only lose gradient, never write outside.
 *
 * Forward functions do output rows [r0, r1) of the flattened (N * OH) rows; backward functions do images
 * [n0, n1) (windows may overlap: threads own whole images).  Backward: when windows do not overlap (stride >=
 * pool) each input is stored once instead of accumulated, and when they also tile the image (stride == pool,
 * the last window reaching the bottom/right edge: MaxPool2D(2) on even sizes) dX is not zeroed first. */
#ifndef FNN_POOL_H
#define FNN_POOL_H
#include <stddef.h>
#include <string.h>
#include <stdint.h>

#include "fnn_dispatch.h"

/* the window's clipped range [lo, hi) along one axis of length n, for output o */
static inline void fnn_pool_range(ptrdiff_t o, ptrdiff_t s, ptrdiff_t p, ptrdiff_t k, ptrdiff_t n,
                                  ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t a = o * s - p, b = a + k;
    *lo = a < 0 ? 0 : a;
    *hi = b > n ? n : b;
}

#define FNN_POOL_DEFINE(SUF, T)                                                                           \
FNN_CLONES static void fnn_maxpool_fwd_##SUF(const T *restrict X, T *restrict Y, int32_t *restrict A,       \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0, ptrdiff_t r1) {                \
    ptrdiff_t r, ow, ih, iw, c, h0, h1, w0, w1;                                                           \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / OH, oh = r % OH;                                                                \
        const T *img = X + n * H * W * C;                                                                 \
        fnn_pool_range(oh, sh, pt, ph, H, &h0, &h1);                                                      \
        for (ow = 0; ow < OW; ow++) {                                                                     \
            T *restrict y = Y + (r * OW + ow) * C;                                                        \
            int32_t *restrict a = A + (r * OW + ow) * C;                                                  \
            fnn_pool_range(ow, sw, pl, pw, W, &w0, &w1);                                                  \
            {                                                                                             \
                const T *x = img + (h0 * W + w0) * C;                                                     \
                int32_t k0 = (int32_t)(h0 * W + w0);                                                      \
                _Pragma("omp simd")                                                                       \
                for (c = 0; c < C; c++) { y[c] = x[c]; a[c] = k0; }                                       \
            }                                                                                             \
            for (ih = h0; ih < h1; ih++) {                                                                \
                for (iw = w0; iw < w1; iw++) {                                                            \
                    const T *restrict x = img + (ih * W + iw) * C;                                        \
                    int32_t k = (int32_t)(ih * W + iw);                                                   \
                    if (ih == h0 && iw == w0) continue;                                                   \
                    _Pragma("omp simd")                                                                   \
                    for (c = 0; c < C; c++) {                                                             \
                        T v = x[c], b = y[c];                                                             \
                        int take = (v > b) | ((v != v) & (b == b));                                       \
                        y[c] = take ? v : b;                                                              \
                        a[c] = take ? k : a[c];                                                           \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
FNN_CLONES static void fnn_maxpool_bwd_##SUF(const T *restrict dY, const int32_t *restrict A, T *restrict dX,\
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t n0, ptrdiff_t n1) {                \
    ptrdiff_t n, oh, ow, ih, iw, c, h0, h1, w0, w1;                                                       \
    int store = sh >= ph && sw >= pw;   /* windows do not overlap: each input is written at most once */  \
    int covers = sh == ph && sw == pw && OH * sh - pt >= H && OW * sw - pl >= W;   /* ... and once */     \
    for (n = n0; n < n1; n++) {                                                                           \
        T *img = dX + n * H * W * C;                                                                      \
        if (!store || !covers) memset(img, 0, (size_t)(H * W * C) * sizeof(T));                           \
        for (oh = 0; oh < OH; oh++) {                                                                     \
            fnn_pool_range(oh, sh, pt, ph, H, &h0, &h1);                                                  \
            for (ow = 0; ow < OW; ow++) {                                                                 \
                const T *restrict dy = dY + ((n * OH + oh) * OW + ow) * C;                                \
                const int32_t *restrict a = A + ((n * OH + oh) * OW + ow) * C;                            \
                fnn_pool_range(ow, sw, pl, pw, W, &w0, &w1);                                              \
                for (ih = h0; ih < h1; ih++) {                                                            \
                    for (iw = w0; iw < w1; iw++) {                                                        \
                        T *restrict dx = img + (ih * W + iw) * C;                                         \
                        int32_t k = (int32_t)(ih * W + iw);                                               \
                        if (store) {                                                                      \
                            _Pragma("omp simd")                                                           \
                            for (c = 0; c < C; c++) dx[c] = a[c] == k ? dy[c] : (T)0;                     \
                        } else {                                                                          \
                            _Pragma("omp simd")                                                           \
                            for (c = 0; c < C; c++) dx[c] += a[c] == k ? dy[c] : (T)0;                    \
                        }                                                                                 \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
FNN_CLONES static void fnn_avgpool_fwd_##SUF(const T *restrict X, T *restrict Y,                            \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0, ptrdiff_t r1) {                \
    ptrdiff_t r, ow, ih, iw, c, h0, h1, w0, w1;                                                           \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / OH, oh = r % OH;                                                                \
        const T *img = X + n * H * W * C;                                                                 \
        fnn_pool_range(oh, sh, pt, ph, H, &h0, &h1);                                                      \
        for (ow = 0; ow < OW; ow++) {                                                                     \
            T *restrict y = Y + (r * OW + ow) * C;                                                        \
            T count;                                                                                      \
            fnn_pool_range(ow, sw, pl, pw, W, &w0, &w1);                                                  \
            count = (T)((h1 - h0) * (w1 - w0));                                                           \
            _Pragma("omp simd")                                                                           \
            for (c = 0; c < C; c++) y[c] = 0;                                                             \
            for (ih = h0; ih < h1; ih++) {                                                                \
                for (iw = w0; iw < w1; iw++) {                                                            \
                    const T *restrict x = img + (ih * W + iw) * C;                                        \
                    _Pragma("omp simd")                                                                   \
                    for (c = 0; c < C; c++) y[c] += x[c];                                                 \
                }                                                                                         \
            }                                                                                             \
            _Pragma("omp simd")                                                                           \
            for (c = 0; c < C; c++) y[c] = y[c] / count;                                                  \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
FNN_CLONES static void fnn_avgpool_bwd_##SUF(const T *restrict dY, T *restrict dX,                          \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t n0, ptrdiff_t n1) {                \
    ptrdiff_t n, oh, ow, ih, iw, c, h0, h1, w0, w1;                                                       \
    int store = sh >= ph && sw >= pw;   /* windows do not overlap: each input is written at most once */  \
    int covers = sh == ph && sw == pw && OH * sh - pt >= H && OW * sw - pl >= W;   /* ... and once */     \
    for (n = n0; n < n1; n++) {                                                                           \
        T *img = dX + n * H * W * C;                                                                      \
        if (!store || !covers) memset(img, 0, (size_t)(H * W * C) * sizeof(T));                           \
        for (oh = 0; oh < OH; oh++) {                                                                     \
            fnn_pool_range(oh, sh, pt, ph, H, &h0, &h1);                                                  \
            for (ow = 0; ow < OW; ow++) {                                                                 \
                const T *restrict dy = dY + ((n * OH + oh) * OW + ow) * C;                                \
                T count;                                                                                  \
                fnn_pool_range(ow, sw, pl, pw, W, &w0, &w1);                                              \
                count = (T)((h1 - h0) * (w1 - w0));                                                       \
                for (ih = h0; ih < h1; ih++) {                                                            \
                    for (iw = w0; iw < w1; iw++) {                                                        \
                        T *restrict dx = img + (ih * W + iw) * C;                                         \
                        if (store) {                                                                      \
                            _Pragma("omp simd")                                                           \
                            for (c = 0; c < C; c++) dx[c] = dy[c] / count;                                \
                        } else {                                                                          \
                            _Pragma("omp simd")                                                           \
                            for (c = 0; c < C; c++) dx[c] += dy[c] / count;                               \
                        }                                                                                 \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}

FNN_POOL_DEFINE(f, float)
FNN_POOL_DEFINE(d, double)
#endif
