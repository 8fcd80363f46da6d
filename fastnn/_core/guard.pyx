# cython: boundscheck=False, wraparound=False, cdivision=True
"""The NaN/inf guard: one pass over a flat buffer (the model's gradients or parameters), float32 and float64.

``first_nonfinite(x)`` returns the index of the first NaN or infinity in ``x``, or -1 when every element is
finite.  The pass runs over blocks of ``_BLOCK`` elements; inside a block it only ORs ``(v - v) != 0``
(0 for a finite v, NaN otherwise), a branch-free loop the compiler can vectorize, and only the block that
holds a bad value is scanned again element by element.  It reads the buffer once and never allocates.
``_first_nonfinite`` (guard.pxd) is the same scan on a raw pointer, ``noexcept nogil``, cimported by the
compiled training and inference plans (plan.pyx).
"""
from fastnn._core._common cimport floating

cdef enum:
    _BLOCK = 2048


cdef Py_ssize_t _first_nonfinite(const floating *p, Py_ssize_t n) noexcept nogil:
    """Index of the first non-finite element of p[0:n], or -1: blocks ORing (v - v) != 0, rescanned only when
    one is bad."""
    cdef Py_ssize_t i0 = 0, i1, i
    cdef floating v
    cdef int acc
    while i0 < n:
        i1 = i0 + _BLOCK
        if i1 > n:
            i1 = n
        acc = 0
        for i in range(i0, i1):
            v = p[i] - p[i]
            acc |= v != 0
        if acc:
            for i in range(i0, i1):
                v = p[i] - p[i]
                if v != 0:
                    return i
        i0 = i1
    return -1


def first_nonfinite(const floating[::1] x):
    """Index of the first non-finite element of x (IN), or -1 if all are finite."""
    cdef Py_ssize_t n = x.shape[0], bad
    if n == 0:
        return -1
    with nogil:
        bad = _first_nonfinite(&x[0], n)
    return bad
