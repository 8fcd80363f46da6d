/* fnn_conv_direct.h: register-blocked direct convolution, float32, AVX-512F or AVX2+FMA chosen at run time
 * (fastnn/_core/conv.pyx routes the 3x3-style layers here, see _path; the rest keep im2col + sgemm).
 *
 * Layout as in fnn_conv.h: X (N, H, W, C), weight (kh, kw, Cg, F), Z (N, OH, OW, F), rows r = (n OH + oy) OW + ox.
 *
 * Forward (oneDNN / libxsmm style): the weight is packed once per call into blocks of VL filters (16 floats for
 * AVX-512, 8 for AVX2), P[q][fb][ky][kx][c][VL], the last block of each group zero-padded.  For each output row
 * and each pair of filter blocks (NV = 2 vectors, or 1 for the last odd block), a run of RW output pixels keeps
 * RW x NV accumulators in registers over every tap and input channel: per input channel, NV weight vectors are
 * loaded and each pixel's input is broadcast and multiplied into its accumulators (RW <= 12 / NV = 2 and RW <= 16
 * / NV = 1 on AVX-512's 32 registers; 6 / 12 on AVX2's 16).  The rows of taps a pixel loses to the padding are
 * skipped by clamping the kh range per output row; an output row with border pixels (whose kw window leaves the
 * image) reads its input rows with their zero padding from a ring of padded rows in the thread's work (each
 * input row copied once, not once per output row that reads it), so that every row runs as the same nearly
 * equal blocks of at most RW pixels, all taps each (a first version ran the border pixels one at a time with
 * clamped kw ranges: 1 + 2 loads per 2 FMAs, a quarter of the pixels of an 8x8 image).  Filters past the group's
 * last (F not a multiple of VL) are stored through a mask.  The bias and a ReLU (or no activation) are applied to
 * the accumulators before the store (fnn_convd_epi: Z and Y from one pass, 5% of a C2 step when done as a pass
 * over the rows just written); other activations are left to the caller's pass over those rows.
 *
 * Backward-to-weights: dW[ky][kx][c][f] += sum over the output pixels of X[pixel's tap (ky, kx)][c] dZ[pixel][f].
 * For each tap, a block of CB input channels and a pair of filter blocks keep CB x NV accumulators in registers
 * over all the pixels of the rows given (a range inside one image at a time): per pixel, NV vectors of dZ are
 * loaded (masked for the group's last block) and CB inputs broadcast; then the block is added into dW.  The
 * caller gives each thread whole images and its own dW, as for the GEMM path.
 *
 * Every element is a chain of fused multiply-adds in a fixed order (taps, then channels; for dW the pixels of a
 * tile in order, then the tile's sum added) that does not depend on the thread split of the forward or on the
 * ISA; the weights' pass sums the threads' private accumulators at the end.  Without AVX2+FMA (or outside gcc on
 * x86-64) the kernels are not built: fnn_convd_isa() returns 0 and conv.pyx keeps the GEMM path.
 * fnn_convd_set_isa caps the kernel (tests, measurements). */
#ifndef FNN_CONV_DIRECT_H
#define FNN_CONV_DIRECT_H
#include <stddef.h>
#include <string.h>
#include "fnn_conv.h"
#include "fnn_dispatch.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
#include <immintrin.h>
#define FNN_CONVD_HAVE_SIMD 1
#else
#define FNN_CONVD_HAVE_SIMD 0
#endif

#define FNN_CONVD_MAX_VL 16     /* the widest vector (floats): the packed weight is sized for it */
#define FNN_CONVD_MAX_SPAN 64   /* the most input rows one output row reads, (kh - 1) dh + 1 (conv.pyx routes
                                 * taller windows to im2col) */

/* 0: none (the caller's GEMM path); 1: AVX2+FMA; 2: AVX-512F (the CPU's, capped by fnn_convd_set_isa) */
FNN_ISA_CAPPED(fnn_convd, FNN_CONVD_HAVE_SIMD)

/* The forward's fused epilogue (the layer's bias and a ReLU or no activation, applied to each block of outputs
 * in registers instead of a pass over the rows just written): Z = conv + bias (bias NULL: none), and where Y is
 * not NULL, Y = max(Z, 0) (relu) or Z.  The values are those of fnn_act.h's pass (z + b, then v > 0 ? v : 0). */
typedef struct {
    const float *bias;
    float *Y;
    int relu;
} fnn_convd_epi;

/* floor(a / b), ceil(a / b) for b > 0 and any sign of a */
static inline ptrdiff_t fnn_convd_floordiv(ptrdiff_t a, ptrdiff_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static inline ptrdiff_t fnn_convd_ceildiv(ptrdiff_t a, ptrdiff_t b) { return -fnn_convd_floordiv(-a, b); }
static inline ptrdiff_t fnn_convd_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t fnn_convd_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

/* floats of the packed weight of geometry g (any ISA): G groups of ceil(Fg / 16) blocks of kh kw Cg 16 */
static ptrdiff_t fnn_convd_packed_size(const fnn_conv_geom *g) {
    const ptrdiff_t Fg = g->F / g->G, nfb = (Fg + FNN_CONVD_MAX_VL - 1) / FNN_CONVD_MAX_VL;
    return g->G * nfb * FNN_CONVD_MAX_VL * g->kh * g->kw * (g->C / g->G);
}

/* the input columns one output row reads: (OW - 1) sw + (kw - 1) dw + 1 */
static inline ptrdiff_t fnn_convd_span(const fnn_conv_geom *g) { return (g->OW - 1) * g->sw + (g->kw - 1) * g->dw + 1; }

/* the input rows one output row's window spans: (kh - 1) dh + 1 */
static inline ptrdiff_t fnn_convd_rows(const fnn_conv_geom *g) { return (g->kh - 1) * g->dh + 1; }

/* floats of one thread's work in the forward: a ring of fnn_convd_rows(g) zero-padded input rows */
static ptrdiff_t fnn_convd_work(const fnn_conv_geom *g) { return fnn_convd_rows(g) * fnn_convd_span(g) * g->C; }

/* P (OUT) = the weight of geometry g packed for an ISA (1: blocks of 8 filters, 2: of 16), from
 * flip == 0: W (kh, kw, Cg, F), g's own weight;
 * flip == 1: W (kh, kw, Fg, C), the weight of the stride-1 convolution whose backward-to-data g is (g is its
 *            transposed geometry: conv.pyx's _transposed), read flipped in space and transposed, as _flip_weight. */
static void fnn_convd_pack_f(const fnn_conv_geom *g, const float *W, int flip, int isa, float *P) {
    const ptrdiff_t VL = isa == 2 ? 16 : 8, G = g->G, Cg = g->C / G, Fg = g->F / G, kh = g->kh, kw = g->kw;
    const ptrdiff_t nfb = (Fg + VL - 1) / VL;
    ptrdiff_t q, fb, ky, kx, c, l;
    for (q = 0; q < G; q++)
        for (fb = 0; fb < nfb; fb++)
            for (ky = 0; ky < kh; ky++)
                for (kx = 0; kx < kw; kx++)
                    for (c = 0; c < Cg; c++) {
                        float *p = P + ((((q * nfb + fb) * kh + ky) * kw + kx) * Cg + c) * VL;
                        for (l = 0; l < VL; l++) {
                            const ptrdiff_t f = fb * VL + l;
                            if (f >= Fg) { p[l] = 0; continue; }
                            p[l] = flip ? W[(((kh - 1 - ky) * kw + (kw - 1 - kx)) * Fg + f) * g->C + q * Cg + c]
                                        : W[((ky * kw + kx) * Cg + c) * g->F + q * Fg + f];
                        }
                    }
}

#if FNN_CONVD_HAVE_SIMD
/* the register blocks, by constant size K (1..16), as a switch; CALL(NAME, K, NV) is the call of one block */
#define FNN_CONVD_SWITCH12(KV, CALL, NAME, NV)                                                                 \
    switch (KV) {                                                                                              \
    case 1: CALL(NAME, 1, NV); break;   case 2: CALL(NAME, 2, NV); break;   case 3: CALL(NAME, 3, NV); break;  \
    case 4: CALL(NAME, 4, NV); break;   case 5: CALL(NAME, 5, NV); break;   case 6: CALL(NAME, 6, NV); break;  \
    case 7: CALL(NAME, 7, NV); break;   case 8: CALL(NAME, 8, NV); break;   case 9: CALL(NAME, 9, NV); break;  \
    case 10: CALL(NAME, 10, NV); break; case 11: CALL(NAME, 11, NV); break; default: CALL(NAME, 12, NV); break; \
    }
#define FNN_CONVD_SWITCH16(KV, CALL, NAME, NV)                                                                 \
    switch (KV) {                                                                                              \
    case 1: CALL(NAME, 1, NV); break;   case 2: CALL(NAME, 2, NV); break;   case 3: CALL(NAME, 3, NV); break;  \
    case 4: CALL(NAME, 4, NV); break;   case 5: CALL(NAME, 5, NV); break;   case 6: CALL(NAME, 6, NV); break;  \
    case 7: CALL(NAME, 7, NV); break;   case 8: CALL(NAME, 8, NV); break;   case 9: CALL(NAME, 9, NV); break;  \
    case 10: CALL(NAME, 10, NV); break; case 11: CALL(NAME, 11, NV); break; case 12: CALL(NAME, 12, NV); break; \
    case 13: CALL(NAME, 13, NV); break; case 14: CALL(NAME, 14, NV); break; case 15: CALL(NAME, 15, NV); break; \
    default: CALL(NAME, 16, NV); break;                                                                        \
    }
#define FNN_CONVD_SWITCH6(KV, CALL, NAME, NV)                                                                  \
    switch (KV) {                                                                                              \
    case 1: CALL(NAME, 1, NV); break;   case 2: CALL(NAME, 2, NV); break;   case 3: CALL(NAME, 3, NV); break;  \
    case 4: CALL(NAME, 4, NV); break;   case 5: CALL(NAME, 5, NV); break;   default: CALL(NAME, 6, NV); break; \
    }
/* one forward block of K pixels */
#define FNN_CONVD_FWD_CALL(NAME, K, NV)                                                                        \
    NAME##_blk(K, NV, scv, g, xb, roff, wb, wstep, ox, ky0, ky1, cofs, zr + ox * F + zc, m0, m1, ep, zc,      \
               yr != NULL ? yr + ox * F + zc : NULL)
/* the blocks with the input's pixel stride sC a constant where it is 16, 32 or 64 floats (the broadcasts' offsets
 * become displacements: with RW offsets in registers, RW = 16 ran out of them and moved some through vector
 * registers, on the FMA port), else as it comes */
#define FNN_CONVD_BY_STRIDE(SW, NAME, NV)                                                                      \
    if (sC == 16) { const ptrdiff_t scv = 16; SW(rw, FNN_CONVD_FWD_CALL, NAME, NV) }                           \
    else if (sC == 32) { const ptrdiff_t scv = 32; SW(rw, FNN_CONVD_FWD_CALL, NAME, NV) }                      \
    else if (sC == 64) { const ptrdiff_t scv = 64; SW(rw, FNN_CONVD_FWD_CALL, NAME, NV) }                      \
    else { const ptrdiff_t scv = sC; SW(rw, FNN_CONVD_FWD_CALL, NAME, NV) }
#define FNN_CONVD_DW_CALL(NAME, K, NV)                                                                         \
    NAME##_dwblk(K, NV, g, xn, dzn, oy0, oy1, oxl, oxh, p0, p1, ky, kx, cofs + c0, zc, m0, m1, full,         \
                 dW + ((ky * g->kw + kx) * Cg + c0) * F + zc)

/* One ISA: V its vector, VL floats; RW2 / RW1 the most pixels of a forward block with 2 / 1 filter vectors (the
 * forward switch SW2 / SW1), CB2 / CB1 the most input channels of a weights' block (switch SC2 / SC1) */
#define FNN_CONVD_ISA(NAME, TARGET, V, VL, LOADU, FMADD, SET1, ZERO, ADD, MAX, MASK_T, MASK, MLOAD, MSTORE,    \
                      RW2, SW2, RW1, SW1, CB2, SC2, CB1, SC1)                                                   \
__attribute__((target(TARGET), always_inline))                                                                  \
static inline void NAME##_blk(const int RW, const int NV, const ptrdiff_t sC, const fnn_conv_geom *g,          \
                              const float *xb, const ptrdiff_t *roff, const float *wb, ptrdiff_t wstep,         \
                              ptrdiff_t ox0, ptrdiff_t ky0, ptrdiff_t ky1, ptrdiff_t cofs, float *z, MASK_T m0,  \
                              MASK_T m1, const fnn_convd_epi *ep, ptrdiff_t zc, float *y) {                     \
    const ptrdiff_t C = g->C, Cg = C / g->G, F = g->F;                                                          \
    V acc[16][2];                                                                                               \
    ptrdiff_t ky, kx, c;                                                                                        \
    int j;                                                                                                      \
    for (j = 0; j < RW; j++) { acc[j][0] = ZERO(); acc[j][1] = ZERO(); }                                        \
    for (ky = ky0; ky < ky1; ky++) {                                                                            \
        const float *xr = xb + roff[ky] + ox0 * sC + cofs;                                                      \
        const float *wr = wb + ky * g->kw * Cg * VL;                                                            \
        for (kx = 0; kx < g->kw; kx++) {                                                                        \
            const float *xp = xr + kx * g->dw * C;                                                              \
            const float *wp = wr + kx * Cg * VL;                                                                \
            for (c = 0; c < Cg; c++) {                                                                          \
                const V w0 = LOADU(wp + c * VL);                                                                \
                const V w1 = NV == 2 ? LOADU(wp + wstep + c * VL) : w0;                                         \
                for (j = 0; j < RW; j++) {                                                                      \
                    const V b = SET1(xp[j * sC + c]);                                                           \
                    acc[j][0] = FMADD(b, w0, acc[j][0]);                                                        \
                    if (NV == 2) acc[j][1] = FMADD(b, w1, acc[j][1]);                                           \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    if (ep == NULL) {                                                                                           \
        for (j = 0; j < RW; j++) {                                                                              \
            MSTORE(z + j * F, m0, acc[j][0]);                                                                   \
            if (NV == 2) MSTORE(z + j * F + VL, m1, acc[j][1]);                                                 \
        }                                                                                                       \
        return;                                                                                                 \
    }                                                                                                           \
    /* the epilogue: v = acc + bias, Z = v, Y = relu(v) or v (max(v, 0) gives 0 for NaN and +0 for -0, as  \
     * fnn_act.h's v > 0 ? v : 0) */                                                                         \
    const V zero = ZERO();                                                                                      \
    const V b0 = ep->bias != NULL ? MLOAD(ep->bias + zc, m0) : zero;                                           \
    const V b1 = ep->bias != NULL && NV == 2 ? MLOAD(ep->bias + zc + VL, m1) : zero;                           \
    for (j = 0; j < RW; j++) {                                                                                  \
        const V v0 = ep->bias != NULL ? ADD(acc[j][0], b0) : acc[j][0];                                        \
        MSTORE(z + j * F, m0, v0);                                                                              \
        if (y != NULL) MSTORE(y + j * F, m0, ep->relu ? MAX(v0, zero) : v0);                                   \
        if (NV == 2) {                                                                                          \
            const V v1 = ep->bias != NULL ? ADD(acc[j][1], b1) : acc[j][1];                                    \
            MSTORE(z + j * F + VL, m1, v1);                                                                     \
            if (y != NULL) MSTORE(y + j * F + VL, m1, ep->relu ? MAX(v1, zero) : v1);                          \
        }                                                                                                       \
    }                                                                                                           \
}                                                                                                               \
                                                                                                                \
/* Z (OUT) rows [r0, r1) = conv(X, W) (no bias), P the weight packed by fnn_convd_pack_f for this ISA; work:     \
 * fnn_convd_work(g) floats (the zero-padded input rows of an output row with border pixels) */                 \
__attribute__((target(TARGET)))                                                                                \
static void NAME##_forward(const fnn_conv_geom *g, const float *X, const float *P, ptrdiff_t r0, ptrdiff_t r1,   \
                           float *Z, float *work, const fnn_convd_epi *ep) {                                    \
    const ptrdiff_t OW = g->OW, OH = g->OH, F = g->F, G = g->G, C = g->C, Cg = C / G, Fg = F / G;               \
    const ptrdiff_t nfb = (Fg + VL - 1) / VL, wstep = g->kh * g->kw * Cg * VL, Wp = fnn_convd_span(g);          \
    const ptrdiff_t sC = g->sw * C;                                                                             \
    /* output pixels whose whole kw window lies inside the image: [ia, ib) */                                   \
    const ptrdiff_t ia = fnn_convd_ceildiv(g->pl, g->sw);                                                       \
    const ptrdiff_t ib = fnn_convd_floordiv(g->W - 1 + g->pl - (g->kw - 1) * g->dw, g->sw) + 1;                 \
    /* the columns of a padded row that hold input pixels: [ua, ub) (column u is input pixel u - pl) */         \
    const ptrdiff_t ua = fnn_convd_min(Wp, fnn_convd_max(0, g->pl));                                            \
    const ptrdiff_t ub = fnn_convd_max(ua, fnn_convd_min(Wp, g->W + g->pl));                                    \
    /* the padded rows in the work: slot iy mod S holds input row tag[slot] = n H + iy (-1: none), so that the  \
     * kh output rows that read an input row copy it once */                                                  \
    const ptrdiff_t S = fnn_convd_rows(g);                                                                      \
    ptrdiff_t roff[FNN_CONVD_MAX_SPAN], tag[FNN_CONVD_MAX_SPAN];                                                \
    ptrdiff_t row, q, fb, i, ky;                                                                                \
    for (i = 0; i < S; i++) tag[i] = -1;                                                                        \
    for (row = r0 / OW; row * OW < r1; row++) {                                                                 \
        const ptrdiff_t n = row / OH, oy = row - n * OH;                                                        \
        const ptrdiff_t lo = r0 > row * OW ? r0 - row * OW : 0, hi = r1 < (row + 1) * OW ? r1 - row * OW : OW;  \
        const ptrdiff_t ky0 = fnn_convd_max(0, fnn_convd_ceildiv(g->pt - oy * g->sh, g->dh));                   \
        const ptrdiff_t ky1 = fnn_convd_max(ky0, fnn_convd_min(g->kh,                                           \
                                    fnn_convd_floordiv(g->H - 1 + g->pt - oy * g->sh, g->dh) + 1));             \
        const float *xn = X + n * g->H * g->W * C, *xb = xn;                                                    \
        float *zr = Z + row * OW * F;                                                                           \
        float *yr = ep != NULL && ep->Y != NULL ? ep->Y + row * OW * F : NULL;                                  \
        if (lo >= ia && hi <= ib) {        /* every pixel inside: read X itself */                              \
            for (ky = ky0; ky < ky1; ky++) roff[ky] = ((oy * g->sh - g->pt + ky * g->dh) * g->W - g->pl) * C;   \
        } else {                           /* border pixels: the rows with their zero padding, from the ring */ \
            xb = work;                                                                                          \
            for (ky = ky0; ky < ky1; ky++) {                                                                    \
                const ptrdiff_t iy = oy * g->sh - g->pt + ky * g->dh, slot = iy % S;                            \
                const float *src = xn + iy * g->W * C;                                                          \
                float *dst = work + slot * Wp * C;                                                              \
                roff[ky] = slot * Wp * C;                                                                       \
                if (tag[slot] == n * g->H + iy) continue;                                                       \
                tag[slot] = n * g->H + iy;                                                                      \
                memset(dst, 0, (size_t)(ua * C) * sizeof(float));                                               \
                memcpy(dst + ua * C, src + (ua - g->pl) * C, (size_t)((ub - ua) * C) * sizeof(float));          \
                memset(dst + ub * C, 0, (size_t)((Wp - ub) * C) * sizeof(float));                               \
            }                                                                                                   \
        }                                                                                                       \
        for (q = 0; q < G; q++) {                                                                               \
            const ptrdiff_t cofs = q * Cg;                                                                      \
            for (fb = 0; fb < nfb; fb += 2) {                                                                   \
                const int nv = nfb - fb >= 2 ? 2 : 1;                                                           \
                const ptrdiff_t rem = Fg - fb * VL, zc = q * Fg + fb * VL;                                      \
                const MASK_T m0 = MASK(rem < VL ? rem : VL), m1 = MASK(rem - VL < VL ? rem - VL : VL);          \
                const float *wb = P + (q * nfb + fb) * wstep;                                                   \
                /* the row's pixels in nearly equal blocks of at most RW */                                     \
                const ptrdiff_t L = hi - lo, rwmax = nv == 2 ? RW2 : RW1, nb = (L + rwmax - 1) / rwmax;         \
                for (i = 0; i < nb; i++) {                                                                      \
                    const ptrdiff_t s0 = L * i / nb, rw = L * (i + 1) / nb - s0, ox = lo + s0;                  \
                    if (nv == 2) { FNN_CONVD_BY_STRIDE(SW2, NAME, 2) }                                          \
                    else { FNN_CONVD_BY_STRIDE(SW1, NAME, 1) }                                                  \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
}                                                                                                               \
                                                                                                                \
/* dw (IN/OUT, rows of F floats, the block's first channel and filter) += the products of tap (ky, kx) of the   \
 * CB channels at cx of X with the filters of dZ at zc, over the pixels [p0, p1) of one image (xn, dzn),        \
 * rows oy0..oy1-1, columns [oxl, oxh) (the pixels whose tap lies in the image) */                               \
__attribute__((target(TARGET), always_inline))                                                                  \
static inline void NAME##_dwblk(const int CB, const int NV, const fnn_conv_geom *g, const float *xn,            \
                                const float *dzn, ptrdiff_t oy0, ptrdiff_t oy1, ptrdiff_t oxl, ptrdiff_t oxh,    \
                                ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t ky, ptrdiff_t kx, ptrdiff_t cx,           \
                                ptrdiff_t zc, MASK_T m0, MASK_T m1, int full, float *dw) {                      \
    const ptrdiff_t C = g->C, sC = g->sw * C, F = g->F, OW = g->OW;                                             \
    V acc[16][2];                                                                                               \
    ptrdiff_t oy, ox;                                                                                           \
    int i;                                                                                                      \
    for (i = 0; i < CB; i++) { acc[i][0] = ZERO(); acc[i][1] = ZERO(); }                                        \
    for (oy = oy0; oy < oy1; oy++) {                                                                            \
        const ptrdiff_t lo = fnn_convd_max(oxl, p0 - oy * OW), hi = fnn_convd_min(oxh, p1 - oy * OW);           \
        if (lo >= hi) continue;                                                                                 \
        const float *xp = xn + ((oy * g->sh - g->pt + ky * g->dh) * g->W + lo * g->sw - g->pl + kx * g->dw) * C + cx; \
        const float *dp = dzn + (oy * OW + lo) * F + zc;                                                        \
        for (ox = lo; ox < hi; ox++, xp += sC, dp += F) {                                                       \
            /* plain loads where the block is whole (AVX2's masked load costs an extra uop on the FMA ports) */ \
            const V d0 = full ? LOADU(dp) : MLOAD(dp, m0);                                                      \
            const V d1 = NV == 2 ? (full ? LOADU(dp + VL) : MLOAD(dp + VL, m1)) : d0;                           \
            for (i = 0; i < CB; i++) {                                                                          \
                const V b = SET1(xp[i]);                                                                        \
                acc[i][0] = FMADD(b, d0, acc[i][0]);                                                            \
                if (NV == 2) acc[i][1] = FMADD(b, d1, acc[i][1]);                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    for (i = 0; i < CB; i++) {                                                                                  \
        MSTORE(dw + i * F, m0, ADD(MLOAD(dw + i * F, m0), acc[i][0]));                                          \
        if (NV == 2) MSTORE(dw + i * F + VL, m1, ADD(MLOAD(dw + i * F + VL, m1), acc[i][1]));                   \
    }                                                                                                           \
}                                                                                                               \
                                                                                                                \
/* dW (IN/OUT, kh kw Cg F) += the products over output rows [r0, r1) (any range: cut at image borders) */       \
__attribute__((target(TARGET)))                                                                                \
static void NAME##_dw(const fnn_conv_geom *g, const float *X, const float *dZ, ptrdiff_t r0, ptrdiff_t r1,       \
                      float *dW) {                                                                              \
    const ptrdiff_t OW = g->OW, OH = g->OH, P = OH * OW, F = g->F, G = g->G, C = g->C, Cg = C / G, Fg = F / G;  \
    const ptrdiff_t nfb = (Fg + VL - 1) / VL;                                                                   \
    ptrdiff_t r = r0, q, ky, kx, c0, fb, i;                                                                     \
    while (r < r1) {                                                                                            \
        const ptrdiff_t n = r / P, p0 = r - n * P, p1 = fnn_convd_min(P, r1 - n * P);                           \
        const float *xn = X + n * g->H * g->W * C, *dzn = dZ + n * P * F;                                       \
        for (ky = 0; ky < g->kh; ky++) {                                                                        \
            /* rows whose tap ky lies in the image, within the range */                                         \
            const ptrdiff_t oy0 = fnn_convd_max(p0 / OW, fnn_convd_ceildiv(g->pt - ky * g->dh, g->sh));         \
            const ptrdiff_t oy1 = fnn_convd_min((p1 + OW - 1) / OW,                                            \
                                    fnn_convd_floordiv(g->H - 1 + g->pt - ky * g->dh, g->sh) + 1);              \
            if (oy0 >= oy1) continue;                                                                           \
            for (kx = 0; kx < g->kw; kx++) {                                                                    \
                const ptrdiff_t oxl = fnn_convd_max(0, fnn_convd_ceildiv(g->pl - kx * g->dw, g->sw));           \
                const ptrdiff_t oxh = fnn_convd_min(OW, fnn_convd_floordiv(g->W - 1 + g->pl - kx * g->dw, g->sw) + 1); \
                if (oxl >= oxh) continue;                                                                       \
                for (q = 0; q < G; q++) {                                                                       \
                    const ptrdiff_t cofs = q * Cg;                                                              \
                    for (fb = 0; fb < nfb; fb += 2) {                                                           \
                        const int nv = nfb - fb >= 2 ? 2 : 1;                                                   \
                        const ptrdiff_t rem = Fg - fb * VL, zc = q * Fg + fb * VL;                              \
                        const MASK_T m0 = MASK(rem < VL ? rem : VL), m1 = MASK(rem - VL < VL ? rem - VL : VL);  \
                        const int full = rem >= nv * VL;                                                        \
                        const ptrdiff_t cbmax = nv == 2 ? CB2 : CB1, nb = (Cg + cbmax - 1) / cbmax;             \
                        for (i = 0; i < nb; i++) {                                                              \
                            const ptrdiff_t cb = Cg * (i + 1) / nb - Cg * i / nb;                               \
                            c0 = Cg * i / nb;                                                                   \
                            if (nv == 2) { SC2(cb, FNN_CONVD_DW_CALL, NAME, 2) }                                \
                            else { SC1(cb, FNN_CONVD_DW_CALL, NAME, 1) }                                        \
                        }                                                                                       \
                    }                                                                                           \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        r = n * P + p1;                                                                                         \
    }                                                                                                           \
}

/* tail masks: the first n lanes (n <= 0: none) */
__attribute__((target("avx512f"))) static inline __mmask16 fnn_convd_m16(ptrdiff_t n) {
    return n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u); }
__attribute__((target("avx2"))) static inline __m256i fnn_convd_m8(ptrdiff_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
#define FNN_CONVD_ML512(p, m) _mm512_maskz_loadu_ps(m, p)

FNN_CONVD_ISA(fnn_convd_avx512, "avx512f,avx2,fma", __m512, 16, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_set1_ps,
              _mm512_setzero_ps, _mm512_add_ps, _mm512_max_ps, __mmask16, fnn_convd_m16, FNN_CONVD_ML512, _mm512_mask_storeu_ps,
              12, FNN_CONVD_SWITCH12, 16, FNN_CONVD_SWITCH16, 12, FNN_CONVD_SWITCH12, 16, FNN_CONVD_SWITCH16)
FNN_CONVD_ISA(fnn_convd_avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_set1_ps,
              _mm256_setzero_ps, _mm256_add_ps, _mm256_max_ps, __m256i, fnn_convd_m8, _mm256_maskload_ps, _mm256_maskstore_ps,
              6, FNN_CONVD_SWITCH6, 12, FNN_CONVD_SWITCH12, 6, FNN_CONVD_SWITCH6, 12, FNN_CONVD_SWITCH12)
#undef FNN_CONVD_ISA
#endif

/* Z (OUT) rows [r0, r1) = conv(X, W), P = fnn_convd_pack_f(g, W, ., isa): the kernel of `isa` (1 or 2, as
 * fnn_convd_isa() gave when packing); work: fnn_convd_work(g) floats; ep: the fused epilogue (NULL: none) */
static void fnn_convd_forward_f(const fnn_conv_geom *g, int isa, const float *X, const float *P, ptrdiff_t r0,
                                ptrdiff_t r1, float *Z, float *work, const fnn_convd_epi *ep) {
#if FNN_CONVD_HAVE_SIMD
    if (isa == 2) fnn_convd_avx512_forward(g, X, P, r0, r1, Z, work, ep);
    else if (isa == 1) fnn_convd_avx2_forward(g, X, P, r0, r1, Z, work, ep);
#else
    (void)g; (void)isa; (void)X; (void)P; (void)r0; (void)r1; (void)Z; (void)work; (void)ep;
#endif
}

/* dW (IN/OUT, kh kw Cg F) += the weight gradient of output rows [r0, r1) */
static void fnn_convd_dw_f(const fnn_conv_geom *g, int isa, const float *X, const float *dZ, ptrdiff_t r0,
                           ptrdiff_t r1, float *dW) {
#if FNN_CONVD_HAVE_SIMD
    if (isa == 2) fnn_convd_avx512_dw(g, X, dZ, r0, r1, dW);
    else if (isa == 1) fnn_convd_avx2_dw(g, X, dZ, r0, r1, dW);
#else
    (void)g; (void)isa; (void)X; (void)dZ; (void)r0; (void)r1; (void)dW;
#endif
}
#endif
