/* fnn_pool.h: 2-D max and average pooling, channels-last, float and double from one source (macros).
 *
 * Layout: X (N, H, W, C), Y (N, OH, OW, C), the max-pooling argmax A (N, OH, OW, C) int32, all C-contiguous.
 * Window of output (oh, ow): rows oh*sh - pt .. + ph, columns ow*sw - pl .. + pw, clipped to the image (padded
 * positions are never read: max pooling ignores them, average pooling divides by the real inputs it covers,
 * as Keras does).  The caller (fastnn/_core/pool.pyx) has checked that every window holds a real input.
 * Pooling acts per channel: the inner loops run over C, the contiguous axis (omp simd, FNN_CLONES dispatch),
 * except max pooling over windows that tile the image (stride == pool, no padding) with C < 16: there the loops
 * run over whole output rows (fnn_maxpool_*_flat).  Selections are branch-free (a float compare branch on real
 * data mispredicts about half the time).
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


/* t ? x : y without a branch (t is 0 or 1): scalar code that branches on a float compare mispredicts about half
 * the time on real data, which made max pooling over a few channels cost ~100 cycles per output */
#define FNN_POOL_SEL_DEFINE(SUF, T, U)                                                                    \
static inline T fnn_pool_sel##SUF(int t, T x, T y) {                                                      \
    union { T f; U u; } a, b;                                                                             \
    U m = (U)0 - (U)t;                                                                                    \
    a.f = x; b.f = y;                                                                                     \
    a.u = (a.u & m) | (b.u & ~m);                                                                         \
    return a.f;                                                                                           \
}
FNN_POOL_SEL_DEFINE(f, float, uint32_t)
FNN_POOL_SEL_DEFINE(d, double, uint64_t)
static inline int32_t fnn_pool_seli(int t, int32_t x, int32_t y) {
    int32_t m = -(int32_t)t;
    return (x & m) | (y & ~m);
}

/* the flat paths' row buffers (on the stack): an output row of at most this many values */
#define FNN_POOL_FLAT_MAX 2048
/* few channels: vectors over C would be mostly empty */
#define FNN_POOL_FLAT_C 16
#define FNN_POOL_TILED(ph, pw, sh, sw, pt, pl, H, W, OH, OW) \
    ((sh) == (ph) && (sw) == (pw) && (pt) == 0 && (pl) == 0 && (OH) * (ph) <= (H) && (OW) * (pw) <= (W))

/* copy n values, n < FNN_POOL_FLAT_C: constant-size copies that the compiler inlines (a loop over a few values
 * becomes a call to memmove per output column otherwise) */
#define FNN_POOL_COPY_CASE(K, T) case K: memcpy(dst, src, K * sizeof(T)); break;
#define FNN_POOL_COPY_DEFINE(SUF, T)                                                                      \
static inline void fnn_pool_copy##SUF(T *restrict dst, const T *restrict src, ptrdiff_t n) {             \
    switch (n) {                                                                                          \
        FNN_POOL_COPY_CASE(1, T) FNN_POOL_COPY_CASE(2, T) FNN_POOL_COPY_CASE(3, T) FNN_POOL_COPY_CASE(4, T)   \
        FNN_POOL_COPY_CASE(5, T) FNN_POOL_COPY_CASE(6, T) FNN_POOL_COPY_CASE(7, T) FNN_POOL_COPY_CASE(8, T)   \
        FNN_POOL_COPY_CASE(9, T) FNN_POOL_COPY_CASE(10, T) FNN_POOL_COPY_CASE(11, T)                       \
        FNN_POOL_COPY_CASE(12, T) FNN_POOL_COPY_CASE(13, T) FNN_POOL_COPY_CASE(14, T)                      \
        FNN_POOL_COPY_CASE(15, T)                                                                         \
        default: memcpy(dst, src, (size_t)n * sizeof(T));                                                 \
    }                                                                                                     \
}
FNN_POOL_COPY_DEFINE(f, float)
FNN_POOL_COPY_DEFINE(d, double)

/* x beats the running best b: greater, or a NaN over a number (a NaN counts as the largest value) */
#define FNN_POOL_GT(x, b) (((x) > (b)) | (((x) != (x)) & ((b) == (b))))

#define FNN_POOL_DEFINE(SUF, T)                                                                           \
/* Tiled windows over few channels (C < 16, too few for vectors over C): each window position (dh, dw) is       \
 * gathered for a whole output row into g (a copy of C values per output column), then compared with the running \
 * best over the row's OW * C values at once: long, branch-free, vectorized loops.  kb[j] = pw * (j / C), the     \
 * window's first column for element j of an output row.  Positions are visited in row-major order and replace   \
 * only when strictly greater: the first maximum wins, as in the general kernel. */                              \
FNN_CLONES static void fnn_maxpool_fwd_flat_##SUF(const T *restrict X, T *restrict Y, int32_t *restrict A,    \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t r0, ptrdiff_t r1) {                                                                     \
    ptrdiff_t r, dh, dw, ow, c, j, M = OW * C;                                                            \
    T g[FNN_POOL_FLAT_MAX];                                                                               \
    int32_t kb[FNN_POOL_FLAT_MAX];                                                                        \
    for (ow = 0; ow < OW; ow++)                                                                           \
        for (c = 0; c < C; c++) kb[ow * C + c] = (int32_t)(ow * pw);                                      \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / OH, oh = r % OH;                                                                \
        T *restrict y = Y + r * M;                                                                        \
        int32_t *restrict a = A + r * M;                                                                  \
        for (dh = 0; dh < ph; dh++) {                                                                     \
            ptrdiff_t ih = oh * ph + dh;                                                                  \
            const T *restrict xr = X + ((n * H + ih) * W) * C;                                            \
            for (dw = 0; dw < pw; dw++) {                                                                 \
                int32_t k0 = (int32_t)(ih * W + dw);                                                      \
                T *restrict dst = (dh == 0 && dw == 0) ? y : g;                                           \
                for (ow = 0; ow < OW; ow++) {                                                             \
                    const T *restrict src = xr + (ow * pw + dw) * C;                                      \
                    fnn_pool_copy##SUF(dst + ow * C, src, C);                                             \
                }                                                                                         \
                if (dh == 0 && dw == 0) {                                                                 \
                    _Pragma("omp simd")                                                                   \
                    for (j = 0; j < M; j++) a[j] = k0 + kb[j];                                            \
                } else {                                                                                  \
                    _Pragma("omp simd")                                                                   \
                    for (j = 0; j < M; j++) {                                                             \
                        T v = g[j], b = y[j];                                                             \
                        int u = FNN_POOL_GT(v, b);                                                        \
                        y[j] = fnn_pool_sel##SUF(u, v, b);                                                \
                        a[j] = fnn_pool_seli(u, k0 + kb[j], a[j]);                                        \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* The backward of the flat path (tiled windows, C < 16): each input is written once, the inputs no window     \
 * covers (the last rows / columns of an odd size) are zeroed. */                                                 \
FNN_CLONES static void fnn_maxpool_bwd_flat_##SUF(const T *restrict dY, const int32_t *restrict A,          \
        T *restrict dX, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph,   \
        ptrdiff_t pw, ptrdiff_t n0, ptrdiff_t n1) {                                                       \
    ptrdiff_t n, oh, dh, dw, ow, c, j, M = OW * C;                                                        \
    T g[FNN_POOL_FLAT_MAX];                                                                               \
    int32_t kb[FNN_POOL_FLAT_MAX];                                                                        \
    for (ow = 0; ow < OW; ow++)                                                                           \
        for (c = 0; c < C; c++) kb[ow * C + c] = (int32_t)(ow * pw);                                      \
    for (n = n0; n < n1; n++) {                                                                           \
        T *img = dX + n * H * W * C;                                                                      \
        for (oh = 0; oh < OH; oh++) {                                                                     \
            const T *restrict dy = dY + (n * OH + oh) * M;                                                \
            const int32_t *restrict a = A + (n * OH + oh) * M;                                            \
            for (dh = 0; dh < ph; dh++) {                                                                 \
                ptrdiff_t ih = oh * ph + dh;                                                              \
                T *restrict dxr = img + ih * W * C;                                                       \
                for (dw = 0; dw < pw; dw++) {                                                             \
                    int32_t k0 = (int32_t)(ih * W + dw);                                                  \
                    _Pragma("omp simd")                                                                   \
                    for (j = 0; j < M; j++) g[j] = fnn_pool_sel##SUF(a[j] == k0 + kb[j], dy[j], (T)0);    \
                    for (ow = 0; ow < OW; ow++) {                                                         \
                        T *restrict dst = dxr + (ow * pw + dw) * C;                                       \
                        fnn_pool_copy##SUF(dst, g + ow * C, C);                                         \
                    }                                                                                     \
                }                                                                                         \
                if (OW * pw < W)                                                                          \
                    memset(dxr + OW * pw * C, 0, (size_t)((W - OW * pw) * C) * sizeof(T));                \
            }                                                                                             \
        }                                                                                                 \
        if (OH * ph < H)                                                                                  \
            memset(img + OH * ph * W * C, 0, (size_t)((H - OH * ph) * W * C) * sizeof(T));                \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* Tiled windows (stride == pool, no padding, every window inside the image: MaxPool2D(2) and the like):     \
 * one pass per window row, whole output rows at a time; within a window row the columns are scanned in order   \
 * and a later window row replaces the best only when strictly greater, which is row-major first-max order. */  \
FNN_CLONES static void fnn_maxpool_fwd_tiled_##SUF(const T *restrict X, T *restrict Y, int32_t *restrict A,   \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t r0, ptrdiff_t r1) {                                                                     \
    ptrdiff_t r, dh, ow, dw, c;                                                                           \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / OH, oh = r % OH;                                                                \
        T *restrict y = Y + r * OW * C;                                                                   \
        int32_t *restrict a = A + r * OW * C;                                                             \
        for (dh = 0; dh < ph; dh++) {                                                                     \
            ptrdiff_t ih = oh * ph + dh;                                                                  \
            const T *restrict xr = X + ((n * H + ih) * W) * C;                                            \
            for (ow = 0; ow < OW; ow++) {                                                                 \
                const T *restrict xp = xr + ow * pw * C;                                                  \
                T *restrict yp = y + ow * C;                                                              \
                int32_t *restrict ap = a + ow * C;                                                        \
                int32_t k0 = (int32_t)(ih * W + ow * pw);                                                 \
                if (pw == 2) {                                                                            \
                    _Pragma("omp simd")                                                                   \
                    for (c = 0; c < C; c++) {                                                             \
                        T v0 = xp[c], v1 = xp[C + c];                                                     \
                        int t = FNN_POOL_GT(v1, v0);                                                      \
                        T b = fnn_pool_sel##SUF(t, v1, v0);                                                                \
                        int32_t k = k0 + t;                                                               \
                        if (dh == 0) { yp[c] = b; ap[c] = k; }                                            \
                        else { int u = FNN_POOL_GT(b, yp[c]); yp[c] = fnn_pool_sel##SUF(u, b, yp[c]); ap[c] = fnn_pool_seli(u, k, ap[c]); } \
                    }                                                                                     \
                } else {                                                                                  \
                    _Pragma("omp simd")                                                                   \
                    for (c = 0; c < C; c++) {                                                             \
                        T b = xp[c];                                                                      \
                        int32_t k = k0;                                                                   \
                        for (dw = 1; dw < pw; dw++) {                                                     \
                            T v = xp[dw * C + c];                                                         \
                            int t = FNN_POOL_GT(v, b);                                                    \
                            b = fnn_pool_sel##SUF(t, v, b);                                                         \
                            k = fnn_pool_seli(t, k0 + (int32_t)dw, k);                                                 \
                        }                                                                                 \
                        if (dh == 0) { yp[c] = b; ap[c] = k; }                                            \
                        else { int u = FNN_POOL_GT(b, yp[c]); yp[c] = fnn_pool_sel##SUF(u, b, yp[c]); ap[c] = fnn_pool_seli(u, k, ap[c]); } \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
FNN_CLONES static void fnn_maxpool_fwd_##SUF(const T *restrict X, T *restrict Y, int32_t *restrict A,       \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ph, ptrdiff_t pw,       \
        ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0, ptrdiff_t r1) {                \
    ptrdiff_t r, ow, ih, iw, c, h0, h1, w0, w1;                                                           \
    if (FNN_POOL_TILED(ph, pw, sh, sw, pt, pl, H, W, OH, OW)) {                                           \
        if (C < FNN_POOL_FLAT_C && OW * C <= FNN_POOL_FLAT_MAX)                                           \
            fnn_maxpool_fwd_flat_##SUF(X, Y, A, H, W, C, OH, OW, ph, pw, r0, r1);                         \
        else                                                                                              \
            fnn_maxpool_fwd_tiled_##SUF(X, Y, A, H, W, C, OH, OW, ph, pw, r0, r1);                        \
        return;                                                                                           \
    }                                                                                                     \
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
                        y[c] = fnn_pool_sel##SUF(take, v, b);                                                         \
                        a[c] = fnn_pool_seli(take, k, a[c]);                                                           \
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
    if (FNN_POOL_TILED(ph, pw, sh, sw, pt, pl, H, W, OH, OW) && C < FNN_POOL_FLAT_C                       \
            && OW * C <= FNN_POOL_FLAT_MAX) {                                                             \
        fnn_maxpool_bwd_flat_##SUF(dY, A, dX, H, W, C, OH, OW, ph, pw, n0, n1);                           \
        return;                                                                                           \
    }                                                                                                     \
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
                            for (c = 0; c < C; c++) dx[c] = fnn_pool_sel##SUF(a[c] == k, dy[c], (T)0);                     \
                        } else {                                                                          \
                            _Pragma("omp simd")                                                           \
                            for (c = 0; c < C; c++) dx[c] += fnn_pool_sel##SUF(a[c] == k, dy[c], (T)0);                    \
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
