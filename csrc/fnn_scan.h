/* fnn_scan.h: the NaN guard's read pass over a range, float and double: max |x|, min x and whether some
 * element is NaN/inf, in one branch-free loop that vectorizes (omp simd reductions).  NaN compares false, so
 * it never enters hi/lo; the (v - v) != 0 flag (0 for a finite v, NaN otherwise) catches it and infinities. */
#ifndef FNN_SCAN_H
#define FNN_SCAN_H
#include <math.h>
#include <stddef.h>
#include "fnn_dispatch.h"

#define FNN_SCAN_RANGE(NAME, T, FABS)                                                                     \
FNN_CLONES static int NAME(const T *restrict x, ptrdiff_t i0, ptrdiff_t i1, double *amax, double *amin) {    \
    T hi = 0, lo = 0;                                                                                     \
    int acc = 0;                                                                                          \
    ptrdiff_t i;                                                                                          \
    if (i1 <= i0) return 0;                                                                               \
    lo = (T)INFINITY;                                                                                     \
    _Pragma("omp simd reduction(max:hi) reduction(min:lo) reduction(|:acc)")                              \
    for (i = i0; i < i1; i++) {                                                                           \
        T v = x[i];                                                                                       \
        T a = FABS(v);                                                                                    \
        hi = a > hi ? a : hi;                                                                             \
        lo = v < lo ? v : lo;                                                                             \
        acc |= (v - v) != 0;                                                                              \
    }                                                                                                     \
    if ((double)hi > *amax) *amax = (double)hi;                                                           \
    if ((double)lo < *amin) *amin = (double)lo;                                                           \
    return acc;                                                                                           \
}

FNN_SCAN_RANGE(fnn_scan_range_f, float, fabsf)
FNN_SCAN_RANGE(fnn_scan_range_d, double, fabs)
#endif
