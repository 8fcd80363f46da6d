/* fnn_conv.h: the data movement of the channels-last convolution (fastnn/_core/conv.pyx drives it and calls
 * the BLAS), float and double from one macro template.
 *
 * Layout: X (N, H, W, C), weight (kh, kw, Cg, F) with Cg = C / G input channels per group, Z (N, OH, OW, F).
 * An output pixel is a "row" r = (n * OH + oy) * OW + ox of the (N*OH*OW, F) output matrix; tap (ky, kx) of row
 * r reads input pixel (oy*sh - pt + ky*dh, ox*sw - pl + kx*dw), zero outside the image (the padding).
 *
 * im2col of rows [r0, r1) writes a column tile laid out group-major, [G][R][kh][kw][Cg] (R = r1 - r0), so that
 * group g's patch matrix is one (R, kh*kw*Cg) row-major block: the weight seen as (kh*kw*Cg, F) multiplies it
 * (the group's F/G columns).  col2im is its adjoint: it adds a tile of the same layout into dX.
 *
 * Depthwise (Cg == 1, G == C, multiplier M = F / C): direct loops, no GEMM (a per-group GEMM would have
 * K = kh*kw and N = M, far too small for a BLAS call); output channel f reads input channel f / M.
 *
 * Every function works on a row range and touches only its own outputs, so the caller splits ranges over
 * threads; col2im and the depthwise backward add into dX, so their callers give each thread whole images. */
#ifndef FNN_CONV_H
#define FNN_CONV_H
#include <stddef.h>
#include <string.h>
#include <pthread.h>
#include <cblas.h>
#include "fnn_dispatch.h"

typedef struct {
    ptrdiff_t N, H, W, C;        /* batch, input height, width, channels */
    ptrdiff_t OH, OW, F;         /* output height, width, filters */
    ptrdiff_t kh, kw;            /* kernel */
    ptrdiff_t sh, sw;            /* strides */
    ptrdiff_t dh, dw;            /* dilation */
    ptrdiff_t pt, pl;            /* zero padding at the top and the left (bottom/right follow from OH, OW) */
    ptrdiff_t G;                 /* groups */
} fnn_conv_geom;

/* Single-threaded BLAS while a parallel region of conv.pyx runs one GEMM per thread: OpenBLAS would otherwise
 * thread each call again (through the OpenMP callback of fnn_threads.h: a nested team per thread, measured:
 * every 256x32x288 sgemm inside a 2-thread region opened its own team).  The first caller in saves OpenBLAS's
 * count and sets 1; the last one out restores it (a counter, so that concurrent callers, e.g. predict from
 * several threads, cannot leave OpenBLAS at one thread).  A set costs ~0.01 us. */
static pthread_mutex_t fnn_conv_blas_lock = PTHREAD_MUTEX_INITIALIZER;
static int fnn_conv_blas_depth = 0;
static int fnn_conv_blas_saved = 1;

static void fnn_conv_blas_serial_begin(void) {
    pthread_mutex_lock(&fnn_conv_blas_lock);
    if (fnn_conv_blas_depth++ == 0) {
        fnn_conv_blas_saved = scipy_openblas_get_num_threads();
        if (fnn_conv_blas_saved != 1) scipy_openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&fnn_conv_blas_lock);
}

static void fnn_conv_blas_serial_end(void) {
    pthread_mutex_lock(&fnn_conv_blas_lock);
    if (--fnn_conv_blas_depth == 0 && fnn_conv_blas_saved != 1) scipy_openblas_set_num_threads(fnn_conv_blas_saved);
    pthread_mutex_unlock(&fnn_conv_blas_lock);
}

/* gcc turns the gather's short copy loops into memmove calls (its loop-distribution pass), which cost more
 * than the copies themselves for the 5-float spans of a first layer: off for the gather */
#if defined(__GNUC__) && !defined(__clang__)
#define FNN_CONV_NO_MEMCPY_IDIOM __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define FNN_CONV_NO_MEMCPY_IDIOM
#endif

/* the input pixel of tap (ky, kx) of output pixel (oy, ox); 0 if it lies in the padding */
#define FNN_CONV_PIXEL(g, oy, ox, ky, kx, iy, ix)                                                         \
    ptrdiff_t iy = (oy) * (g)->sh - (g)->pt + (ky) * (g)->dh;                                             \
    ptrdiff_t ix = (ox) * (g)->sw - (g)->pl + (kx) * (g)->dw;                                             \
    int inside = iy >= 0 && iy < (g)->H && ix >= 0 && ix < (g)->W;

#define FNN_CONV_DEFS(T, SFX)                                                                             \
/* d[0..n) = s[0..n): a plain loop for the short spans of the gather (a memcpy call per 5-float span of a \
 * first layer cost more than the copy); memcpy for long ones */                                          \
FNN_CONV_NO_MEMCPY_IDIOM static inline void fnn_conv_copy##SFX(T *restrict d, const T *restrict s, ptrdiff_t n) {                 \
    ptrdiff_t j;                                                                                          \
    if (n >= 64) { memcpy(d, s, (size_t)n * sizeof(T)); return; }                                         \
    for (j = 0; j + 4 <= n; j += 4) { d[j] = s[j]; d[j + 1] = s[j + 1]; d[j + 2] = s[j + 2]; d[j + 3] = s[j + 3]; } \
    for (; j < n; j++) d[j] = s[j];                                                                       \
}                                                                                                         \
FNN_CONV_NO_MEMCPY_IDIOM static inline void fnn_conv_zero##SFX(T *d, ptrdiff_t n) {                       \
    ptrdiff_t j;                                                                                          \
    if (n >= 64) { memset(d, 0, (size_t)n * sizeof(T)); return; }                                         \
    for (j = 0; j < n; j++) d[j] = 0;                                                                     \
}                                                                                                         \
                                                                                                          \
/* col (OUT, [G][R][kh][kw][Cg]) = the patches of output rows [r0, r1) of X, one run of pixels of an output \
 * row at a time */                                                                                       \
FNN_CONV_NO_MEMCPY_IDIOM static void fnn_conv_im2col##SFX(const fnn_conv_geom *g, const T *X, ptrdiff_t r0, ptrdiff_t r1, T *col) { \
    const ptrdiff_t P = g->OH * g->OW, C = g->C, G = g->G, Cg = C / G, Kg = g->kh * g->kw * Cg;           \
    const ptrdiff_t R = r1 - r0, kh = g->kh, kw = g->kw, H = g->H, W = g->W, sw = g->sw, dw = g->dw;      \
    ptrdiff_t r = r0, ky, kx, q, c, j;                                                                    \
    while (r < r1) {                                                                                      \
        ptrdiff_t n = r / P, p = r - n * P, oy = p / g->OW, ox0 = p - oy * g->OW;                         \
        ptrdiff_t run = g->OW - ox0 < r1 - r ? g->OW - ox0 : r1 - r;                                      \
        const T *xn = X + n * H * W * C;                                                                  \
        T *dst0 = col + (r - r0) * Kg;                                                                    \
        for (ky = 0; ky < kh; ky++) {                                                                     \
            ptrdiff_t iy = oy * g->sh - g->pt + ky * g->dh;                                               \
            T *d = dst0 + ky * kw * Cg;                                                                   \
            if (iy < 0 || iy >= H) {                                                                      \
                for (j = 0; j < run; j++, d += Kg)                                                        \
                    for (q = 0; q < G; q++) fnn_conv_zero##SFX(d + q * R * Kg, kw * Cg);                  \
                continue;                                                                                 \
            }                                                                                             \
            const T *srow = xn + iy * W * C;                                                              \
            for (j = 0; j < run; j++, d += Kg) {                                                          \
                ptrdiff_t ix0 = (ox0 + j) * sw - g->pl;                                                   \
                if (G == 1 && dw == 1 && ix0 >= 0 && ix0 + kw <= W) {   /* one span of kw*C inputs */     \
                    fnn_conv_copy##SFX(d, srow + ix0 * C, kw * C);                                        \
                    continue;                                                                             \
                }                                                                                         \
                for (kx = 0; kx < kw; kx++) {                                                             \
                    ptrdiff_t ix = ix0 + kx * dw;                                                         \
                    T *dk = d + kx * Cg;                                                                  \
                    if (ix < 0 || ix >= W) {                                                              \
                        for (q = 0; q < G; q++) fnn_conv_zero##SFX(dk + q * R * Kg, Cg);                  \
                    } else if (G == 1) {                                                                  \
                        fnn_conv_copy##SFX(dk, srow + ix * C, C);                                         \
                    } else {                                                                              \
                        const T *src = srow + ix * C;                                                     \
                        for (q = 0; q < G; q++)                                                           \
                            for (c = 0; c < Cg; c++) dk[q * R * Kg + c] = src[q * Cg + c];                \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        r += run;                                                                                         \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* d[0..n) += s[0..n) (elementwise: every clone adds the same values) */                                  \
FNN_CLONES static void fnn_conv_addto##SFX(T *restrict d, const T *restrict s, ptrdiff_t n) {             \
    ptrdiff_t j;                                                                                          \
    _Pragma("omp simd")                                                                                   \
    for (j = 0; j < n; j++) d[j] += s[j];                                                                 \
}                                                                                                         \
                                                                                                          \
/* dX (IN/OUT) += col2im(col): the adjoint of im2col over output rows [r0, r1).  Without groups and dilation\
 * a kernel row's kw taps whose pixels lie inside the image are one span of kw*C values in both col and dX,\
 * added in one vector loop (a 5x5 kernel over 6 channels: 5 adds of 30 values instead of 25 of 6); each dX element\
 * gets its terms in the same order either way (output rows, then taps) */                                \
static void fnn_conv_col2im##SFX(const fnn_conv_geom *g, const T *col, ptrdiff_t r0, ptrdiff_t r1, T *dX) {\
    const ptrdiff_t P = g->OH * g->OW, C = g->C, G = g->G, Cg = C / G, Kg = g->kh * g->kw * Cg;           \
    const ptrdiff_t R = r1 - r0, kw = g->kw;                                                              \
    const int span = G == 1 && g->dw == 1;                                                                \
    ptrdiff_t r, ky, kx, q, c;                                                                            \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / P, p = r - n * P, oy = p / g->OW, ox = p - oy * g->OW;                          \
        T *dxn = dX + n * g->H * g->W * C;                                                                \
        const T *src = col + (r - r0) * Kg;                                                               \
        const ptrdiff_t ix0 = ox * g->sw - g->pl;                                                         \
        for (ky = 0; ky < g->kh; ky++) {                                                                  \
            const ptrdiff_t iy = oy * g->sh - g->pt + ky * g->dh;                                         \
            if (iy < 0 || iy >= g->H) { src += kw * Cg; continue; }                                       \
            if (span && ix0 >= 0 && ix0 + kw <= g->W) {                                                   \
                fnn_conv_addto##SFX(dxn + (iy * g->W + ix0) * C, src, kw * C);                            \
                src += kw * Cg;                                                                           \
                continue;                                                                                 \
            }                                                                                             \
            for (kx = 0; kx < kw; kx++, src += Cg) {                                                      \
                const ptrdiff_t ix = ix0 + kx * g->dw;                                                    \
                if (ix < 0 || ix >= g->W) continue;                                                       \
                T *dst = dxn + (iy * g->W + ix) * C;                                                      \
                for (q = 0; q < G; q++) {                                                                 \
                    T *d = dst + q * Cg;                                                                  \
                    const T *s = src + q * R * Kg;                                                        \
                    for (c = 0; c < Cg; c++) d[c] += s[c];                                                \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* depthwise forward over rows [r0, r1): Z[r, f] = sum over taps of X[pixel, f / M] * Wt[tap, f] (no bias) */ \
static void fnn_conv_dw_forward##SFX(const fnn_conv_geom *g, const T *X, const T *Wt, ptrdiff_t r0,       \
                                     ptrdiff_t r1, T *Z) {                                                \
    const ptrdiff_t P = g->OH * g->OW, C = g->C, F = g->F, M = F / C;                                     \
    ptrdiff_t r, ky, kx, c, j;                                                                            \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / P, p = r - n * P, oy = p / g->OW, ox = p - oy * g->OW;                          \
        const T *xn = X + n * g->H * g->W * C;                                                            \
        T *z = Z + r * F;                                                                                 \
        memset(z, 0, (size_t)F * sizeof(T));                                                              \
        for (ky = 0; ky < g->kh; ky++) {                                                                  \
            for (kx = 0; kx < g->kw; kx++) {                                                              \
                FNN_CONV_PIXEL(g, oy, ox, ky, kx, iy, ix)                                                 \
                if (!inside) continue;                                                                    \
                const T *x = xn + (iy * g->W + ix) * C, *w = Wt + (ky * g->kw + kx) * F;                  \
                if (M == 1) {                                                                             \
                    for (c = 0; c < C; c++) z[c] += x[c] * w[c];                                          \
                } else {                                                                                  \
                    for (c = 0; c < C; c++)                                                               \
                        for (j = 0; j < M; j++) z[c * M + j] += x[c] * w[c * M + j];                      \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* depthwise backward over rows [r0, r1) (whole images when dX is given): dX[pixel, c] += sum_j           \
 * dZ[r, cM+j] Wt[tap, cM+j] (dX NULL: skipped); dWt[tap, f] += X[pixel, f / M] dZ[r, f] */               \
static void fnn_conv_dw_backward##SFX(const fnn_conv_geom *g, const T *X, const T *Wt, const T *dZ,       \
                                      ptrdiff_t r0, ptrdiff_t r1, T *dX, T *dWt) {                        \
    const ptrdiff_t P = g->OH * g->OW, C = g->C, F = g->F, M = F / C;                                     \
    ptrdiff_t r, ky, kx, c, j;                                                                            \
    for (r = r0; r < r1; r++) {                                                                           \
        ptrdiff_t n = r / P, p = r - n * P, oy = p / g->OW, ox = p - oy * g->OW;                          \
        const T *xn = X + n * g->H * g->W * C;                                                            \
        const T *dz = dZ + r * F;                                                                         \
        for (ky = 0; ky < g->kh; ky++) {                                                                  \
            for (kx = 0; kx < g->kw; kx++) {                                                              \
                FNN_CONV_PIXEL(g, oy, ox, ky, kx, iy, ix)                                                 \
                if (!inside) continue;                                                                    \
                ptrdiff_t o = (iy * g->W + ix) * C, t = (ky * g->kw + kx) * F;                            \
                const T *x = xn + o, *w = Wt + t;                                                         \
                T *dw = dWt + t;                                                                          \
                if (M == 1) {                                                                             \
                    for (c = 0; c < C; c++) dw[c] += x[c] * dz[c];                                        \
                    if (dX != NULL) {                                                                     \
                        T *dx = dX + n * g->H * g->W * C + o;                                             \
                        for (c = 0; c < C; c++) dx[c] += dz[c] * w[c];                                    \
                    }                                                                                     \
                } else {                                                                                  \
                    for (c = 0; c < C; c++)                                                               \
                        for (j = 0; j < M; j++) dw[c * M + j] += x[c] * dz[c * M + j];                    \
                    if (dX != NULL) {                                                                     \
                        T *dx = dX + n * g->H * g->W * C + o;                                             \
                        for (c = 0; c < C; c++) {                                                         \
                            T s = 0;                                                                      \
                            for (j = 0; j < M; j++) s += dz[c * M + j] * w[c * M + j];                    \
                            dx[c] += s;                                                                   \
                        }                                                                                 \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}

FNN_CONV_DEFS(float, _f)
FNN_CONV_DEFS(double, _d)
#undef FNN_CONV_DEFS

/* ---- the small-channel direct path (first layers: G == 1, C <= FNN_CONV_SMALL_C, see conv.pyx) ----------------
 * No im2col: each image's rows are copied once, channel by channel, into zero-padded "planes" of L elements
 * (plane[(iy*C + c)*L + ...] holds X[n, iy, j - pl, c] for the padded columns j, 0 in the padding, j split
 * into sw stride phases, below), so that tap (ky, kx, c) of FNN_CONV_LANES consecutive output pixels reads
 * consecutive plane elements without a bounds check.  The output pixels of a row are the vector axis (two
 * blocks of FNN_CONV_LANES: the row is padded up to OWp), the taps loop inside, the filters are unrolled (7 per pass):
 * the forward keeps 2 x F lane blocks in registers over every tap of a row; backward-to-weights accumulates
 * dW[tap, f] in FNN_CONV_LANES partial sums per entry (`lanes`, K*F*LANES) with the row's dZ blocks in
 * registers, summed in a fixed order at the end.  Every loop is elementwise over the lanes, so every ISA clone
 * (FNN_CLONES) computes the same values. */
#define FNN_CONV_LANES 16
#define FNN_CONV_SMALL_C 4
#define FNN_CONV_SMALL_F 7                /* filters per unrolled pass */
#define FNN_CONV_SMALL_MAX_F 8            /* filters at most: from 16 on, the GEMMs (N = F) were as fast or faster */
#define FNN_CONV_SMALL_TAPS 256           /* kh*kw*C at most (the tap lists live on the stack) */

static inline ptrdiff_t fnn_conv_small_owp(const fnn_conv_geom *g) {
    return (g->OW + 2 * FNN_CONV_LANES - 1) / (2 * FNN_CONV_LANES) * (2 * FNN_CONV_LANES);   /* 2 blocks */
}
/* a plane holds sw phases of Ls elements: element j of the padded input row is at (j % sw) * Ls + j / sw, so
 * that the taps of FNN_CONV_LANES consecutive output pixels are consecutive at every stride */
static inline ptrdiff_t fnn_conv_small_ls(const fnn_conv_geom *g) {
    return fnn_conv_small_owp(g) + ((g->kw - 1) * g->dw) / g->sw;
}
static inline ptrdiff_t fnn_conv_small_len(const fnn_conv_geom *g) { return g->sw * fnn_conv_small_ls(g); }
/* scratch elements of one thread: the planes (forward), + the transposed dZ rows and the lanes (backward) */
static inline ptrdiff_t fnn_conv_small_work(const fnn_conv_geom *g, int backward) {
    ptrdiff_t n = g->H * g->C * fnn_conv_small_len(g);
    if (backward) n += g->OH * g->F * fnn_conv_small_owp(g) + g->kh * g->kw * g->C * g->F * FNN_CONV_LANES;
    return n;
}

/* fnn_conv_small_dw's call of a block of TB_ taps by its nf filters (a constant after the switch) */
#define FNN_CONV_SMALL_DWNF(SFX, TB_)                                                                          \
    switch (nf) {                                                                                         \
    case 1: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 1); break;\
    case 2: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 2); break;\
    case 3: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 3); break;\
    case 4: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 4); break;\
    case 5: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 5); break;\
    default: fnn_conv_small_dwblk##SFX(F, f, pl0, rstep, dzt, oy0, oy1, off + t0, wrow + t0, OWp, lanes, TB_, 6); break;\
    }

/* V##SFX: FNN_CONV_LANES elements as one GNU vector (the compiler splits it into the clone's registers: 1 x 16
 * floats on AVX-512, 2 x 8 on AVX2, 4 x 4 on SSE2, the same values on each); unaligned loads through memcpy
 * (no vector-valued functions: their ABI differs per clone) */
#define FNN_CONV_SMALL_DEFS(T, SFX)                                                                       \
typedef T fnn_conv_v##SFX __attribute__((vector_size(FNN_CONV_LANES * sizeof(T))));                       \
/* the planes of image n, one per input row and channel (plane + (iy*C + c)*L) */                         \
static void fnn_conv_small_image##SFX(const fnn_conv_geom *g, const T *X, ptrdiff_t n, T *plane) {        \
    const ptrdiff_t C = g->C, W = g->W, sw = g->sw, Ls = fnn_conv_small_ls(g), L = sw * Ls;               \
    ptrdiff_t iy, c, ph, m;                                                                               \
    for (iy = 0; iy < g->H; iy++) {                                                                       \
        const T *xr = X + ((n * g->H + iy) * W) * C;                                                      \
        for (c = 0; c < C; c++) {                                                                         \
            T *pl = plane + (iy * C + c) * L;                                                             \
            for (ph = 0; ph < sw; ph++) {                                                                 \
                /* m in [m0, m1): ix = m*sw + ph - pl inside [0, W) */                                    \
                ptrdiff_t a = g->pl - ph, m0 = a <= 0 ? 0 : (a + sw - 1) / sw;                            \
                ptrdiff_t b = W + g->pl - ph, m1 = b <= 0 ? 0 : (b + sw - 1) / sw;                        \
                if (m0 > Ls) m0 = Ls;                                                                     \
                if (m1 > Ls) m1 = Ls;                                                                     \
                if (m1 < m0) m1 = m0;                                                                     \
                T *d = pl + ph * Ls;                                                                      \
                for (m = 0; m < m0; m++) d[m] = 0;                                                        \
                for (; m < m1; m++) d[m] = xr[(m * sw + ph - g->pl) * C + c];                             \
                for (; m < Ls; m++) d[m] = 0;                                                             \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
/* kxo (OUT, kw): the offset in a plane of tap kx's first lane, (j % sw) Ls + j / sw for j = kx dw (once  \
 * per call: the divisions per tap and row cost a fifth of a first layer's time) */                       \
static void fnn_conv_small_kxo##SFX(const fnn_conv_geom *g, ptrdiff_t *kxo) {                             \
    const ptrdiff_t sw = g->sw, Ls = fnn_conv_small_ls(g);                                                \
    ptrdiff_t kx;                                                                                         \
    for (kx = 0; kx < g->kw; kx++) kxo[kx] = ((kx * g->dw) % sw) * Ls + (kx * g->dw) / sw;                \
}                                                                                                         \
/* the kernel rows [*klo, *khi) of output row oy inside the image (an interval: iy grows with ky) */      \
static inline void fnn_conv_small_rows##SFX(const fnn_conv_geom *g, ptrdiff_t oy, ptrdiff_t *klo,         \
                                            ptrdiff_t *khi) {                                             \
    const ptrdiff_t iy0 = oy * g->sh - g->pt;                                                             \
    ptrdiff_t a = 0, b = g->kh;                                                                           \
    while (a < b && iy0 + a * g->dh < 0) a++;                                                             \
    while (b > a && iy0 + (b - 1) * g->dh >= g->H) b--;                                                   \
    *klo = a; *khi = b;                                                                                   \
}                                                                                                         \
/* taps (OUT) of kernel rows [klo, khi): for every (ky, kx, c), the offset of its first lane in the image's\
 * planes relative to the planes of the first input row read (kernel row klo: the caller adds its offset),\
 * and its weight row ((ky*kw + kx)*C + c); returns their number.  Rows whose kernel rows                 \
 * inside the image are the same share the list (each row recomputing it cost a tenth of a first layer) */\
static ptrdiff_t fnn_conv_small_taps##SFX(const fnn_conv_geom *g, ptrdiff_t klo, ptrdiff_t khi,           \
                                          const ptrdiff_t *kxo, ptrdiff_t *off, ptrdiff_t *wrow) {        \
    const ptrdiff_t C = g->C, L = fnn_conv_small_len(g), kw = g->kw, dh = g->dh;                          \
    ptrdiff_t ky, kx, c, nt = 0;                                                                          \
    for (ky = klo; ky < khi; ky++)                                                                        \
        for (kx = 0; kx < kw; kx++)                                                                       \
            for (c = 0; c < C; c++, nt++) {                                                               \
                off[nt] = ((ky - klo) * dh * C + c) * L + kxo[kx];                                        \
                wrow[nt] = (ky * kw + kx) * C + c;                                                        \
            }                                                                                             \
    return nt;                                                                                            \
}                                                                                                         \
                                                                                                          \
/* one output row's pixels [lo, hi) of filters [f, f + NF), NF <= FNN_CONV_SMALL_F a constant after inlining   \
 * (the switch below): 2 x NF lane blocks stay in registers over every tap, each input load serves NF filters */ \
static inline __attribute__((always_inline)) void fnn_conv_small_fwd_row##SFX(                            \
        const T *Wt, ptrdiff_t F, ptrdiff_t f, const T *work, const ptrdiff_t *off, const ptrdiff_t *wrow,\
        ptrdiff_t nt, ptrdiff_t OWp, ptrdiff_t lo, ptrdiff_t hi, T *zr, const int NF) {                   \
    T out[FNN_CONV_SMALL_F][2 * FNN_CONV_LANES];                                                          \
    ptrdiff_t o, t, l;                                                                                    \
    int e;                                                                                                \
    for (o = 0; o < OWp; o += 2 * FNN_CONV_LANES) {                                                       \
        fnn_conv_v##SFX s[FNN_CONV_SMALL_F][2];                                                           \
        for (e = 0; e < NF; e++) { s[e][0] = (fnn_conv_v##SFX){0}; s[e][1] = (fnn_conv_v##SFX){0}; }      \
        for (t = 0; t < nt; t++) {                                                                        \
            const T *w = Wt + wrow[t] * F + f;                                                            \
            fnn_conv_v##SFX x0, x1;                                                                       \
            memcpy(&x0, work + off[t] + o, sizeof x0);                                                    \
            memcpy(&x1, work + off[t] + o + FNN_CONV_LANES, sizeof x1);                                   \
            for (e = 0; e < NF; e++) { s[e][0] += w[e] * x0; s[e][1] += w[e] * x1; }                      \
        }                                                                                                 \
        for (e = 0; e < NF; e++) {                                                                        \
            memcpy(out[e], &s[e][0], sizeof s[e][0]);                                                     \
            memcpy(out[e] + FNN_CONV_LANES, &s[e][1], sizeof s[e][1]);                                    \
        }                                                                                                 \
        for (l = (lo > o ? lo - o : 0); l < 2 * FNN_CONV_LANES && o + l < hi; l++)                        \
            for (e = 0; e < NF; e++) zr[(o + l) * F + f + e] = out[e][l];                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* Z (OUT) rows [r0, r1) = conv(X, Wt) (no bias); work: fnn_conv_small_work(g, 0) elements */             \
FNN_CLONES static void fnn_conv_small_forward##SFX(const fnn_conv_geom *g, const T *X, const T *Wt,       \
                                                 ptrdiff_t r0, ptrdiff_t r1, T *Z, T *work) {             \
    const ptrdiff_t OW = g->OW, OH = g->OH, F = g->F, OWp = fnn_conv_small_owp(g);                        \
    ptrdiff_t off[FNN_CONV_SMALL_TAPS], wrow[FNN_CONV_SMALL_TAPS];                                        \
    ptrdiff_t q, f, cur = -1;                                                                             \
    ptrdiff_t kxo[FNN_CONV_SMALL_TAPS];                                                                   \
    fnn_conv_small_kxo##SFX(g, kxo);                                                                      \
    ptrdiff_t nt = 0, tlo = -1, thi = -1;                                                                 \
    for (q = r0 / OW; q * OW < r1; q++) {                                                                 \
        const ptrdiff_t n = q / OH, oy = q - n * OH;                                                      \
        const ptrdiff_t lo = (r0 > q * OW ? r0 - q * OW : 0), hi = (r1 < (q + 1) * OW ? r1 - q * OW : OW);\
        ptrdiff_t klo, khi;                                                                               \
        fnn_conv_small_rows##SFX(g, oy, &klo, &khi);                                                      \
        if (klo != tlo || khi != thi) {                                                                   \
            nt = fnn_conv_small_taps##SFX(g, klo, khi, kxo, off, wrow);                                   \
            tlo = klo; thi = khi;                                                                         \
        }                                                                                                 \
        const T *wrk = work + (oy * g->sh - g->pt + klo * g->dh) * g->C * fnn_conv_small_len(g);          \
        if (n != cur) { fnn_conv_small_image##SFX(g, X, n, work); cur = n; }                              \
        T *zr = Z + q * OW * F;                                                                           \
        for (f = 0; f < F; f += FNN_CONV_SMALL_F) {                                                       \
            switch (F - f < FNN_CONV_SMALL_F ? F - f : FNN_CONV_SMALL_F) {                                \
            case 1: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 1); break; \
            case 2: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 2); break; \
            case 3: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 3); break; \
            case 4: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 4); break; \
            case 5: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 5); break; \
            case 6: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 6); break; \
            default: fnn_conv_small_fwd_row##SFX(Wt, F, f, wrk, off, wrow, nt, OWp, lo, hi, zr, 7); break;\
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* d (OUT, F rows of OWp) = the transpose of the dZ row's pixels [lo, hi) (src: OW x F), 0 elsewhere; F a \
 * constant after inlining (the loop over a pixel's filters unrolled: a strided scalar loop per filter took\
 * a third of the weights' pass) */                                                                       \
static inline __attribute__((always_inline)) void fnn_conv_small_tr##SFX(const T *restrict src, T *restrict d,\
        ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t OWp, const int F) {                                         \
    ptrdiff_t o;                                                                                          \
    int e;                                                                                                \
    for (e = 0; e < F; e++) {                                                                             \
        for (o = 0; o < lo; o++) d[e * OWp + o] = 0;                                                      \
        for (o = hi; o < OWp; o++) d[e * OWp + o] = 0;                                                    \
    }                                                                                                     \
    for (o = lo; o < hi; o++)                                                                             \
        for (e = 0; e < F; e++) d[e * OWp + o] = src[o * F + e];                                          \
}                                                                                                         \
/* lanes (IN/OUT) += the products of TB taps (offsets off[0..TB) in the planes of kernel row ky's first input\
 * row, weight rows wrow[0..TB)) with filters [f, f + NF) of the transposed dZ rows oy0..oy1-1, over all lane\
 * blocks of each row: TB x NF lane blocks stay in registers over the whole image, so each load of a tap's\
 * input serves NF filters and each load of dZ serves TB taps (TB, NF constants after inlining) */        \
static inline __attribute__((always_inline)) void fnn_conv_small_dwblk##SFX(                              \
        ptrdiff_t F, ptrdiff_t f, const T *plane, ptrdiff_t rstep, const T *dzt, ptrdiff_t oy0, ptrdiff_t oy1,\
        const ptrdiff_t *off, const ptrdiff_t *wrow, ptrdiff_t OWp, T *lanes, const int TB, const int NF) {\
    fnn_conv_v##SFX acc[3][6];                                                                            \
    ptrdiff_t oy, o;                                                                                      \
    int t, e;                                                                                             \
    for (t = 0; t < TB; t++)                                                                              \
        for (e = 0; e < NF; e++) acc[t][e] = (fnn_conv_v##SFX){0};                                        \
    for (oy = oy0; oy < oy1; oy++) {                                                                      \
        const T *xr = plane + (oy - oy0) * rstep, *dr = dzt + (oy * F + f) * OWp;                         \
        for (o = 0; o < OWp; o += FNN_CONV_LANES) {                                                       \
            fnn_conv_v##SFX x[3], d[6];                                                                   \
            for (t = 0; t < TB; t++) memcpy(&x[t], xr + off[t] + o, sizeof x[t]);                         \
            for (e = 0; e < NF; e++) memcpy(&d[e], dr + e * OWp + o, sizeof d[e]);                        \
            for (t = 0; t < TB; t++)                                                                      \
                for (e = 0; e < NF; e++) acc[t][e] += x[t] * d[e];                                        \
        }                                                                                                 \
    }                                                                                                     \
    for (t = 0; t < TB; t++)                                                                              \
        for (e = 0; e < NF; e++) {                                                                        \
            T *p = lanes + (wrow[t] * F + f + e) * FNN_CONV_LANES;                                        \
            fnn_conv_v##SFX a;                                                                            \
            memcpy(&a, p, sizeof a);                                                                      \
            a += acc[t][e];                                                                               \
            memcpy(p, &a, sizeof a);                                                                      \
        }                                                                                                 \
}                                                                                                         \
/* lanes (IN/OUT, K*F*LANES, K = kh*kw*C) += the partial sums of dW = col^T.dZ over rows [r0, r1), an image at\
 * a time: its planes and its transposed dZ rows (OH x F x OWp, zero outside the range) are made once, then for\
 * each kernel row ky, the output rows whose input row lies inside the image, and blocks of taps (kx, c) x\
 * filters, one fnn_conv_small_dwblk (3 x 6 blocks on AVX-512's 32 registers, 2 x 3 on AVX2's 16, where a lane\
 * block is two registers).  work: fnn_conv_small_work(g, 1) elements (planes, dZ rows; the lanes may be its\
 * end).  Each lane's sum runs over the same terms in the same order on every ISA */                      \
FNN_CLONES static void fnn_conv_small_dw##SFX(const fnn_conv_geom *g, const T *X, const T *dZ, ptrdiff_t r0,\
                                            ptrdiff_t r1, T *work, T *lanes) {                            \
    const ptrdiff_t OW = g->OW, OH = g->OH, F = g->F, OWp = fnn_conv_small_owp(g), P = OH * OW, C = g->C; \
    const ptrdiff_t Lp = fnn_conv_small_len(g), rstep = g->sh * C * Lp, kw = g->kw;                       \
    const int wide = fnn_fma_isa() == 2;                                                                  \
    const ptrdiff_t TBm = wide ? 3 : 2, NFm = wide ? 6 : 3;                                               \
    T *dzt = work + g->H * C * Lp;                                                                        \
    ptrdiff_t off[FNN_CONV_SMALL_TAPS], wrow[FNN_CONV_SMALL_TAPS], kxo[FNN_CONV_SMALL_TAPS];              \
    ptrdiff_t r = r0, oy, ky, kx, c, t0, f;                                                        \
    fnn_conv_small_kxo##SFX(g, kxo);                                                                      \
    while (r < r1) {                                                                                      \
        const ptrdiff_t n = r / P, p0 = r - n * P, p1 = P < r1 - n * P ? P : r1 - n * P;                  \
        const ptrdiff_t oya = p0 / OW, oyb = (p1 + OW - 1) / OW;                                          \
        fnn_conv_small_image##SFX(g, X, n, work);                                                         \
        for (oy = oya; oy < oyb; oy++) {                                                                  \
            const ptrdiff_t lo = p0 > oy * OW ? p0 - oy * OW : 0, hi = p1 < (oy + 1) * OW ? p1 - oy * OW : OW;\
            const T *dzr = dZ + (n * P + oy * OW) * F;                                                    \
            T *d = dzt + oy * F * OWp;                                                                    \
            switch (F) {       /* F <= FNN_CONV_SMALL_MAX_F: a constant in each case */                   \
            case 1: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 1); break;                                \
            case 2: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 2); break;                                \
            case 3: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 3); break;                                \
            case 4: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 4); break;                                \
            case 5: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 5); break;                                \
            case 6: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 6); break;                                \
            case 7: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 7); break;                                \
            default: fnn_conv_small_tr##SFX(dzr, d, lo, hi, OWp, 8); break;                               \
            }                                                                                             \
        }                                                                                                 \
        for (ky = 0; ky < g->kh; ky++) {                                                                  \
            /* the rows oy of [oya, oyb) whose input row iy = oy sh - pt + ky dh lies in [0, H) */        \
            const ptrdiff_t a = g->pt - ky * g->dh, b = g->H - 1 + g->pt - ky * g->dh;                    \
            ptrdiff_t oy0 = a <= 0 ? 0 : (a + g->sh - 1) / g->sh, oy1 = b < 0 ? 0 : b / g->sh + 1;        \
            if (oy0 < oya) oy0 = oya;                                                                     \
            if (oy1 > oyb) oy1 = oyb;                                                                     \
            if (oy0 >= oy1) continue;                                                                     \
            const T *pl0 = work + (oy0 * g->sh - g->pt + ky * g->dh) * C * Lp;                            \
            ptrdiff_t nt = 0;                                                                             \
            for (kx = 0; kx < kw; kx++)                                                                   \
                for (c = 0; c < C; c++, nt++) {                                                           \
                    off[nt] = c * Lp + kxo[kx];                                                           \
                    wrow[nt] = (ky * kw + kx) * C + c;                                                    \
                }                                                                                         \
            for (t0 = 0; t0 < nt; t0 += TBm) {                                                            \
                const ptrdiff_t tb = nt - t0 < TBm ? nt - t0 : TBm;                                       \
                for (f = 0; f < F; f += NFm) {                                                            \
                    const ptrdiff_t nf = F - f < NFm ? F - f : NFm;                                       \
                    if (tb == 1) { FNN_CONV_SMALL_DWNF(SFX, 1) }                                               \
                    else if (tb == 2) { FNN_CONV_SMALL_DWNF(SFX, 2) }                                          \
                    else { FNN_CONV_SMALL_DWNF(SFX, 3) }                                                       \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        r = n * P + p1;                                                                                   \
    }                                                                                                     \
}                                                                                                         \
/* dW (IN/OUT, K*F) += the sums of the lanes, lane 0 first */                                             \
static void fnn_conv_small_reduce##SFX(const fnn_conv_geom *g, const T *lanes, T *dW) {                   \
    const ptrdiff_t n = g->kh * g->kw * g->C * g->F;                                                      \
    ptrdiff_t e, l;                                                                                       \
    for (e = 0; e < n; e++) {                                                                             \
        T s = 0;                                                                                          \
        for (l = 0; l < FNN_CONV_LANES; l++) s += lanes[e * FNN_CONV_LANES + l];                          \
        dW[e] += s;                                                                                       \
    }                                                                                                     \
}

/* db (IN/OUT, F) += the column sums of dz (m, F).  With few columns the flat array is summed in blocks of
 * 16 rows (F*16 elements, elementwise, so every clone vectorizes it and computes the same values), the 16
 * partial sums of each column added in order at the end; with 16 columns or more, row after row */
#define FNN_CONV_COLSUM_DEF(T, SFX)                                                                       \
FNN_CLONES static void fnn_conv_colsum##SFX(const T *restrict dz, ptrdiff_t m, ptrdiff_t F, T *restrict db) { \
    ptrdiff_t i, j, k;                                                                                    \
    if (F >= 16) {                                                                                        \
        for (i = 0; i < m; i++)                                                                           \
            for (j = 0; j < F; j++) db[j] += dz[i * F + j];                                               \
        return;                                                                                           \
    }                                                                                                     \
    T s[16 * 16];                                                                                         \
    const ptrdiff_t B = 16 * F, nb = m / 16;                                                              \
    for (k = 0; k < B; k++) s[k] = 0;                                                                     \
    for (i = 0; i < nb; i++)                                                                              \
        for (k = 0; k < B; k++) s[k] += dz[i * B + k];                                                    \
    for (j = 0; j < F; j++) {                                                                             \
        T t = 0;                                                                                          \
        for (k = 0; k < 16; k++) t += s[k * F + j];                                                       \
        for (i = nb * 16; i < m; i++) t += dz[i * F + j];                                                 \
        db[j] += t;                                                                                       \
    }                                                                                                     \
}
FNN_CONV_COLSUM_DEF(float, _f)
FNN_CONV_COLSUM_DEF(double, _d)
#undef FNN_CONV_COLSUM_DEF

FNN_CONV_SMALL_DEFS(float, _f)
FNN_CONV_SMALL_DEFS(double, _d)
#undef FNN_CONV_SMALL_DEFS
#undef FNN_CONV_SMALL_DWNF
#endif
