# The convolution kernels on raw pointers (fastnn/_core/conv.pyx), for the def wrappers there and for the compiled
# training plan (fastnn/_core/plan.pyx): both run these, so the two paths share one code path.  The caller checks
# the geometry once (conv_geometry) and gives scratch buffers of at least conv_scratch elements (fewer run on fewer
# threads, exactly as the def wrappers do with the same buffer size).

from libc.stdint cimport int64_t

from fastnn._core._common cimport floating

cdef extern from "fnn_conv.h" nogil:
    ctypedef struct fnn_conv_geom:
        Py_ssize_t N, H, W, C, OH, OW, F, kh, kw, sh, sw, dh, dw, pt, pl, G

# *g = the checked geometry of X (xs), W (ws), Z (zs) (4-tuples), strides, dilation, padding (top, bottom, left,
# right) and groups; ValueError naming `fn` on any inconsistency
cdef int conv_geometry(fnn_conv_geom *g, tuple xs, tuple ws, tuple zs, tuple strides, tuple dilation,
                       tuple padding, Py_ssize_t groups, str fn) except -1
# scratch elements conv_forward (backward 0) or conv_backward (1) needs for n_threads threads (any batch size N)
cdef Py_ssize_t conv_scratch(const fnn_conv_geom *g, Py_ssize_t itemsize, int n_threads,
                             bint backward) noexcept nogil
# Z = conv(X, W) + b, Y = act(Z) (Y may be Z for the identity); b may be NULL; scratch of `have` elements
# (NULL when 0); counts (n_slots, F) the activation's unit counters, or NULL
cdef void conv_forward(const fnn_conv_geom *g, const floating *X, const floating *W, const floating *b, floating *Z,
                       floating *Y, floating *scratch, Py_ssize_t have, int act, double alpha, int n_threads,
                       int64_t *counts, Py_ssize_t n_slots) noexcept nogil
# the backward of conv_forward: dZ = dY * act'(Z) (for a non-identity act), dW, db (NULL: no bias), dX (NULL: not
# needed); returns the activation kernel's error (0: done)
cdef int conv_backward(const fnn_conv_geom *g, const floating *X, const floating *W, const floating *Z,
                       const floating *Y, floating *dY, floating *dZ, floating *dX, floating *dW, floating *db,
                       floating *scratch, Py_ssize_t have, int act, double alpha, int n_threads) noexcept nogil
