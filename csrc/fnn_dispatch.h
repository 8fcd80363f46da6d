/* fnn_dispatch.h: FNN_CLONES, runtime ISA dispatch for the hot C loops.
 *
 * The wheel is built for the baseline ISA (x86-64: SSE2, 4 floats per vector).  A function marked FNN_CLONES
 * is compiled once per listed ISA and the dynamic loader picks the best one for the CPU at load time (gcc's
 * target_clones, through an ifunc: glibc only), so that its loops run 8 (AVX2) or 16 (AVX-512) wide where
 * the CPU can.  Every variant computes the same values: the loops use only IEEE operations that round
 * exactly whatever the vector width (+, -, *, /, sqrt, comparisons), and -std=c99 turns FMA contraction off.
 * Elsewhere (clang, other systems, other architectures) FNN_CLONES is empty: the baseline build.
 *
 * Two caps, for measuring the AVX2 path on an AVX-512 machine and for pinning a path (as oneDNN's
 * ONEDNN_MAX_CPU_ISA does):
 * - at run time, the environment variable FASTNN_MAX_CPU_ISA ("avx512f", "avx2" or "baseline", read once per
 *   extension module at its first kernel) caps the hand-written FMA kernels (fnn_fma_isa below: the few-row
 *   products, the packed recurrent steps, the direct convolutions, the vectorized exponentials).  The
 *   FNN_CLONES loops are chosen by the dynamic loader before any code of fastnn runs and keep the CPU's path;
 * - at build time, FNN_CLONES_MAX_AVX2 (setup.py: FASTNN_BUILD_MAX_ISA=avx2) leaves the AVX-512 clone out and
 *   caps the FMA kernels at AVX2 as well: a build that runs what an AVX2 CPU runs. */
#ifndef FNN_DISPATCH_H
#define FNN_DISPATCH_H
#include <math.h>       /* defines __GLIBC__ on glibc */
#include <stdlib.h>     /* getenv */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) \
    && !defined(FNN_NO_CLONES)
#ifdef FNN_CLONES_MAX_AVX2
#define FNN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#define FNN_HAVE_CLONES 1
#else
#define FNN_CLONES
#define FNN_HAVE_CLONES 0
#endif

/* The cap FASTNN_MAX_CPU_ISA sets: 2 none (unset, empty, "avx512f" or "avx512"), 1 "avx2", 0 "baseline" (any
 * case); -1 any other value, which caps nothing either (fastnn's import warns about it). */
static int fnn_isa_env_cap(void) {
    static const char *const names[] = {"baseline", "avx2", "avx512f", "avx512"};
    static const int caps[] = {0, 1, 2, 2};
    const char *s = getenv("FASTNN_MAX_CPU_ISA");
    if (s == NULL || *s == 0) return 2;
    for (int k = 0; k < 4; k++) {
        const char *a = s, *b = names[k];
        while (*a && *b && ((*a >= 'A' && *a <= 'Z') ? *a - 'A' + 'a' : *a) == *b) { a++; b++; }
        if (*a == 0 && *b == 0) return caps[k];
    }
    return -1;
}

/* The widest vector ISA of this CPU that this build runs, the FNN_CLONES loops' path: 2 AVX-512F (never in an
 * FNN_CLONES_MAX_AVX2 build), 1 AVX2, 0 neither (and always 0 outside gcc on x86-64, or with FNN_NO_CLONES). */
static int fnn_cpu_isa(void) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
    __builtin_cpu_init();
#ifndef FNN_CLONES_MAX_AVX2
    if (__builtin_cpu_supports("avx512f")) return 2;
#endif
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

/* The widest path of the hand-written FMA kernels (fnn_rows.h, fnn_rnn.h, fnn_conv_direct.h, fnn_exp.h) on this
 * CPU, asked once: 2 AVX-512F, 1 AVX2 with FMA, 0 neither (fnn_cpu_isa; AVX2 without FMA gives 0); at most
 * FASTNN_MAX_CPU_ISA's cap. */
static int fnn_fma_isa(void) {
    static int isa = -1;
    if (isa < 0) {
        int found = fnn_cpu_isa(), cap = fnn_isa_env_cap();
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FNN_NO_CLONES)
        if (found == 1 && !__builtin_cpu_supports("fma")) found = 0;
#endif
        if (cap < 0) cap = 2;
        isa = found < cap ? found : cap;
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
