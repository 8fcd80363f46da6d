/* fnn_dispatch.h: FNN_CLONES, runtime ISA dispatch for the hot C loops.
 *
 * The wheel is built for the baseline ISA (x86-64: SSE2, 4 floats per vector).  A function marked FNN_CLONES
 * is compiled once per listed ISA and the dynamic loader picks the best one for the CPU at load time (gcc's
 * target_clones, through an ifunc: glibc only), so that its loops run 8 (AVX2) or 16 (AVX-512) wide where
 * the CPU can.  Every variant computes the same values: the loops use only IEEE operations that round
 * exactly whatever the vector width (+, -, *, /, sqrt, comparisons), and -std=c99 turns FMA contraction off.
 * Elsewhere (clang, other systems, other architectures) FNN_CLONES is empty: the baseline build. */
#ifndef FNN_DISPATCH_H
#define FNN_DISPATCH_H
#include <math.h>       /* defines __GLIBC__ on glibc */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) \
    && !defined(FNN_NO_CLONES)
#define FNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define FNN_HAVE_CLONES 1
#else
#define FNN_CLONES
#define FNN_HAVE_CLONES 0
#endif

/* The widest path of the hand-written FMA kernels (fnn_rows.h, fnn_rnn.h) on this CPU, asked once: 2 AVX-512F,
 * 1 AVX2 with FMA, 0 neither (and always 0 where they are not built: not gcc on x86-64, or FNN_NO_CLONES). */
static int fnn_fma_isa(void) {
    static int isa = -1;
    if (isa < 0) {
        int found = 0;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) found = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) found = 1;
#endif
        isa = found;
    }
    return isa;
}

/* FNN_ISA_CAPPED(NAME, HAVE): a family of hand-written kernels whose path tests and measurements may cap:
 * NAME##_isa() is fnn_fma_isa() (0 where HAVE is 0: the family is not built) at most the cap, and
 * NAME##_set_isa(cap) sets the cap (0: the family's fallback, 1: at most AVX2+FMA, 2: the best) and returns the
 * path now in use.  One cap per family and per extension module (each includes the header). */
#define FNN_ISA_CAPPED(NAME, HAVE)                                                                        \
    static int NAME##_isa_cap_ = 2;                                                                       \
    static int NAME##_isa(void) {                                                                         \
        int isa = (HAVE) ? fnn_fma_isa() : 0;                                                             \
        return isa < NAME##_isa_cap_ ? isa : NAME##_isa_cap_;                                             \
    }                                                                                                     \
    static int NAME##_set_isa(int cap) {                                                                  \
        NAME##_isa_cap_ = cap < 0 ? 0 : (cap > 2 ? 2 : cap);                                              \
        return NAME##_isa();                                                                              \
    }

#endif
