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

#endif
