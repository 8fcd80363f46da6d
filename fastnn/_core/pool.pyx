# cython: boundscheck=False, wraparound=False, cdivision=True
"""Pooling kernels, channels-last, float32 and float64: 2-D max and average pooling, forward and backward.

Shapes: X, dX (N, H, W, C); Y, dY (N, OH, OW, C); argmax (N, OH, OW, C) int32 (max pooling: the index
ih * W + iw in its image of each output's first maximum).  Window (oh, ow) covers rows oh*sh - pt .. + ph and
columns ow*sw - pw .. + pw clipped to the image: padded positions are never read (max ignores them, average
divides by the real inputs only, Keras' "same").  1-D pooling is the H = 1 case; global pooling is one window
over the whole image.  The loops are C (csrc/fnn_pool.h), vectorized over C.

Shapes are validated here once, so that the C loops index without checks: OH, OW >= 1 (unless the batch or the
channels are empty), 0 <= pt < ph, 0 <= pl < pw, and the last window starts inside the image, so that every
window holds at least one real input.  Forwards split the N*OH output rows between threads, backwards the N
images (each zeroes its images of dX first: overlapping windows add into the same inputs).
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t

from fastnn._core._common cimport floating, threads_for, FNN_MIN_PER_THREAD

cdef extern from "fnn_pool.h" nogil:
    void fnn_maxpool_fwd_f(const float *X, float *Y, int32_t *A, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t r1)
    void fnn_maxpool_fwd_d(const double *X, double *Y, int32_t *A, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t r1)
    void fnn_maxpool_bwd_f(const float *dY, const int32_t *A, float *dX, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t n0, Py_ssize_t n1)
    void fnn_maxpool_bwd_d(const double *dY, const int32_t *A, double *dX, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh,
                           Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t n0, Py_ssize_t n1)
    void fnn_avgpool_fwd_f(const float *X, float *Y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t r1)
    void fnn_avgpool_fwd_d(const double *X, double *Y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t r1)
    void fnn_avgpool_bwd_f(const float *dY, float *dX, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t n0, Py_ssize_t n1)
    void fnn_avgpool_bwd_d(const double *dY, double *dX, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t n0, Py_ssize_t n1)


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t nt, Py_ssize_t n) noexcept nogil:
    return t * n // nt


cdef inline tuple _s(Py_ssize_t *shape):
    return (shape[0], shape[1], shape[2], shape[3])


cdef int check_geometry(str fn, tuple xshape, tuple yshape, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh,
                        Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl) except -1:
    """Raise ValueError unless X (N, H, W, C) and Y (N, OH, OW, C) fit the window geometry (see the module)."""
    cdef Py_ssize_t N = xshape[0], H = xshape[1], W = xshape[2], C = xshape[3]
    cdef Py_ssize_t OH = yshape[1], OW = yshape[2]
    if ph < 1 or pw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"{fn}: pool sizes and strides must be >= 1, got pool ({ph}, {pw}), strides ({sh}, {sw})")
    if not (0 <= pt < ph and 0 <= pl < pw):
        raise ValueError(f"{fn}: padding must satisfy 0 <= pad < pool size, got pads ({pt}, {pl}) for pool "
                         f"({ph}, {pw})")
    if yshape[0] != N or yshape[3] != C:
        raise ValueError(f"{fn}: X has shape {xshape} and Y {yshape}: batch and channels must match")
    if H * W >= 2 ** 31:
        raise ValueError(f"{fn}: an image of {H}x{W} positions does not fit the int32 argmax")
    if N == 0 or C == 0:
        return 0
    if H < 1 or W < 1:
        raise ValueError(f"{fn}: an input of {H}x{W} positions has nothing to pool")
    if OH < 1 or OW < 1 or (OH - 1) * sh - pt > H - 1 or (OW - 1) * sw - pl > W - 1:
        raise ValueError(f"{fn}: output {OH}x{OW} does not fit an input of {H}x{W} with pool ({ph}, {pw}), "
                         f"strides ({sh}, {sw}), pads ({pt}, {pl}): a window would hold no input")
    return 0


def max_pool2d_forward(const floating[:, :, :, ::1] X, floating[:, :, :, ::1] Y, int32_t[:, :, :, ::1] argmax,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                       int n_threads=1):
    """Y[n, oh, ow, c] = max of X[n, window(oh, ow), c] (OUT); argmax (OUT, int32) = ih * W + iw of its first
    maximum in row-major window order (a NaN counts as the largest value: the first NaN wins)."""
    check_geometry("max_pool2d_forward", _s(X.shape), _s(Y.shape), ph, pw, sh, sw, pt, pl)
    if _s(argmax.shape) != _s(Y.shape):
        raise ValueError(f"max_pool2d_forward: argmax must have Y's shape {_s(Y.shape)}, got "
                         f"{_s(argmax.shape)}")
    with nogil:
        pool_forward(True, &X[0, 0, 0, 0], &Y[0, 0, 0, 0], &argmax[0, 0, 0, 0], X.shape[0], X.shape[1], X.shape[2],
                     X.shape[3], Y.shape[1], Y.shape[2], ph, pw, sh, sw, pt, pl, n_threads)


def max_pool2d_backward(const floating[:, :, :, ::1] dY, const int32_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dX, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, int n_threads=1):
    """dX (OUT) = zeros, plus dY[n, oh, ow, c] at the position argmax[n, oh, ow, c] of window (oh, ow)."""
    check_geometry("max_pool2d_backward", _s(dX.shape), _s(dY.shape), ph, pw, sh, sw, pt, pl)
    if _s(argmax.shape) != _s(dY.shape):
        raise ValueError(f"max_pool2d_backward: argmax must have dY's shape {_s(dY.shape)}, got "
                         f"{_s(argmax.shape)}")
    with nogil:
        pool_backward(True, &dY[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dX[0, 0, 0, 0], dX.shape[0], dX.shape[1],
                      dX.shape[2], dX.shape[3], dY.shape[1], dY.shape[2], ph, pw, sh, sw, pt, pl, n_threads)


def avg_pool2d_forward(const floating[:, :, :, ::1] X, floating[:, :, :, ::1] Y, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int n_threads=1):
    """Y[n, oh, ow, c] (OUT) = the mean of X[n, window(oh, ow), c] over the window's real (unpadded) inputs,
    summed in row-major window order."""
    check_geometry("avg_pool2d_forward", _s(X.shape), _s(Y.shape), ph, pw, sh, sw, pt, pl)
    with nogil:
        pool_forward(False, &X[0, 0, 0, 0], &Y[0, 0, 0, 0], NULL, X.shape[0], X.shape[1], X.shape[2], X.shape[3],
                     Y.shape[1], Y.shape[2], ph, pw, sh, sw, pt, pl, n_threads)


def avg_pool2d_backward(const floating[:, :, :, ::1] dY, floating[:, :, :, ::1] dX, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int n_threads=1):
    """dX (OUT) = zeros, plus dY[n, oh, ow, c] / count(oh, ow) at every real input of window (oh, ow)."""
    check_geometry("avg_pool2d_backward", _s(dX.shape), _s(dY.shape), ph, pw, sh, sw, pt, pl)
    with nogil:
        pool_backward(False, &dY[0, 0, 0, 0], NULL, &dX[0, 0, 0, 0], dX.shape[0], dX.shape[1], dX.shape[2],
                      dX.shape[3], dY.shape[1], dY.shape[2], ph, pw, sh, sw, pt, pl, n_threads)


cdef void pool_forward(bint is_max, const floating *X, floating *Y, int32_t *A, Py_ssize_t N, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int n_threads) noexcept nogil:
    """The forwards on raw pointers (see pool.pxd): the N*OH output rows split over the threads."""
    cdef Py_ssize_t rows = N * OH, t
    if rows == 0 or OW == 0 or C == 0:
        return
    cdef int nt = threads_for(rows * OW * C * ph * pw, n_threads, FNN_MIN_PER_THREAD)
    if nt > rows:
        nt = <int>rows
    for t in prange(nt, num_threads=nt, schedule="static"):
        if is_max:
            if floating is float:
                fnn_maxpool_fwd_f(X, Y, A, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, rows),
                                  _lo(t + 1, nt, rows))
            else:
                fnn_maxpool_fwd_d(X, Y, A, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, rows),
                                  _lo(t + 1, nt, rows))
        else:
            if floating is float:
                fnn_avgpool_fwd_f(X, Y, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, rows),
                                  _lo(t + 1, nt, rows))
            else:
                fnn_avgpool_fwd_d(X, Y, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, rows),
                                  _lo(t + 1, nt, rows))


cdef void pool_backward(bint is_max, const floating *dY, const int32_t *A, floating *dX, Py_ssize_t N,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph,
                        Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        int n_threads) noexcept nogil:
    """The backwards on raw pointers (see pool.pxd): the N images split over the threads, each zeroing its
    images of dX first."""
    cdef Py_ssize_t t
    if N == 0 or C == 0:
        return
    cdef int nt = threads_for(N * OH * OW * C * ph * pw, n_threads, FNN_MIN_PER_THREAD)
    if nt > N:
        nt = <int>N
    for t in prange(nt, num_threads=nt, schedule="static"):
        if is_max:
            if floating is float:
                fnn_maxpool_bwd_f(dY, A, dX, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, N),
                                  _lo(t + 1, nt, N))
            else:
                fnn_maxpool_bwd_d(dY, A, dX, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, N),
                                  _lo(t + 1, nt, N))
        else:
            if floating is float:
                fnn_avgpool_bwd_f(dY, dX, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, N),
                                  _lo(t + 1, nt, N))
            else:
                fnn_avgpool_bwd_d(dY, dX, H, W, C, OH, OW, ph, pw, sh, sw, pt, pl, _lo(t, nt, N),
                                  _lo(t + 1, nt, N))
