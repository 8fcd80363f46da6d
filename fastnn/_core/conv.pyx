# cython: boundscheck=False, wraparound=False, cdivision=True
"""Convolution kernels (Conv2D, and Conv1D as a height-1 Conv2D), channels-last, float32 and float64.

Shapes: X (N, H, W, C), weight (kh, kw, C/G, F) seen as the (kh*kw*C/G, F) matrix of the GEMMs, bias (F,),
Z and Y (N, OH, OW, F): the output is the (N*OH*OW, F) matrix of "rows" (output pixels).  The data movement
(im2col, col2im, the depthwise loops) is C in csrc/fnn_conv.h; this file validates every shape once per call,
splits the work over threads, calls the BLAS and the fused bias + activation.

Algorithm: tiled im2col + GEMM.  The rows are cut into tiles of R output pixels (a few hundred; R so that a
tile's patch matrix, R x kh*kw*C, stays near FNN_CONV_TILE_BYTES); each thread takes a range of rows and, per
tile, gathers the patches into its own scratch tile, multiplies it by the weight (one single-threaded GEMM per
group: OpenBLAS is held at one thread inside the region, csrc/fnn_conv.h), then adds the bias and applies the
activation on the tile while it is in cache.  Backward-to-weights: each thread owns whole images; per tile it
gathers the patches again and accumulates dW += col^T.dZ into a private accumulator (the first thread's is dW
itself; the others are summed into it at the end) and db += column sums.  Backward-to-data at stride 1 is
itself a forward convolution (the same tiled code): of dZ with the kernel flipped in space and transposed to
(kh, kw, F/G, C), padded (k-1)*d - p, so that its GEMMs have K = kh*kw*F/G and each dX row is written once.
At stride > 1, per tile of the weights' pass, dcol = dZ.W^T overwrites the patch tile and is scatter-added
into the thread's own images of dX (col2im), so no two threads write one dX row.  The col2im form is kept at
stride 1 too where the layer has fewer than 8 input channels per group and shrinks the image (OH*OW < H*W):
there the transposed convolution's GEMMs have N = C < 8 and gather the zero taps of a (k-1)-padded dZ (C1's
5x5 6->16 layer, 14x14 -> 10x10, batch 64: backward with dX 4.4-6.6 -> 2.8-3.0 ms, min of 30 interleaved calls).
Special cases: a 1x1, stride-1, unpadded, ungrouped convolution is the Dense GEMM on (N*H*W, C) with no
gather; a depthwise convolution (C/G == 1) runs direct loops (a per-group GEMM would have K = kh*kw); a first layer
(one group, C <= 4 input channels, F <= 8 filters, output rows of >= 8 pixels) runs the direct small-channel path
of fnn_conv.h for the forward and the weights' pass (no gather: the output pixels of a row are the vector axis,
2 x 16 lanes of GNU vectors, the filters unrolled, each image's rows copied once into zero-padded planes;
FNN_CLONES-dispatched), since a GEMM with N = F < 8 columns runs far below the BLAS's speed (C1's 5x5 1->6
layer, batch 64, interleaved in one process on the loaded machine, min over 30 calls: forward 3.8 -> 1.0 ms,
weights 3.6 -> 1.1 ms; a first version with one lane block, 4 filters per pass and the planes copied per output
row, tried on C3's 3->32 layer too, ran its 8 to 32 filters as fast as the GEMMs or up to 3x slower; this one,
C3's layer with 8 / 16 / 32 filters: forward 0.84 -> 0.59 / 1.16 -> 1.12 / 1.75 -> 2.07 ms, weights 0.96 -> 0.83
/ 1.29 -> 1.42 / 1.96 -> 3.26 ms, so from 9 filters on the GEMMs keep them).  Its backward-to-data at stride 2
keeps the gathered col2im (the tile is sized for both).

Why (1-thread probes on the busy 2-core build machine, an Intel Xeon (AVX-512), float32, 3x3 conv 32->32 channels
on 16x16 images, batch 32; load average 6-8 while measuring, so every number swings up to 2x): the tiled forward
ran 47-71 GFLOP/s while a 1024^3 sgemm ran 46-74 in the same runs, and one untiled (8192 x 288).(288 x 32) sgemm,
the GEMM of im2col over the whole batch before its gather is even counted, ran 45-49: tiles of patches that
stay in cache beat the whole-batch column matrix.  Backward-to-weights ran 50-84.  Backward-to-data as
dZ.W^T (K = 32) + col2im ran 13-24; as the transposed convolution, 21-69 (its pass alone 50-53 in the runs
where the sgemm made 49-53).  OpenBLAS's kernels dispatch to the CPU at run time, while the wheel's own C is
built for the baseline ISA (4 floats wide), so the arithmetic is left to the BLAS.

The blocked route (float32 only, on a CPU with AVX-512F or AVX2+FMA, >= 4 filters per group (any number of channels),
a window of at most 64 input rows; _path): register-blocked direct kernels written with intrinsics under target
attributes (csrc/fnn_conv_direct.h, chosen at run time), no gather: the weight is packed once per call into blocks
of 16 (8) filters in the shared scratch, each output row runs in blocks of up to 12 pixels x 2 filter vectors of
accumulators (16 x 1 when one block of filters is left), the bias and activation follow on the tile's rows as on the
GEMM path.  Its stride-1 backward-to-data is the same kernel on _transposed(g) (the flipped kernel packed straight
from W); its weights' pass keeps up to 12 input channels x 2 filter vectors in registers over the pixels of a tile
(whole images per thread, private accumulators as before); a strided layer's dX stays dZ.W^T + col2im per tile (no
im2col needed for it).  Why: on the same busy machine, 1 thread, ResNet-8's 3x3 layers at batch 128, interleaved in
one process against this file's im2col route (set_direct_isa(0)): forward 1.3-3x, weights' pass 1.2-2.5x, stride-1
backward-to-data 1.1-1.6x (numbers swing with the load; the route's test, tests/test_conv_direct.py, fails if a 3x3
32->32 layer silently falls back).  float64 keeps im2col + dgemm: the issue's targets are float32.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastnn._core._common cimport floating
from fastnn._core cimport _blas
from fastnn._core.activations cimport act_forward, act_forward_counted, act_backward, check_act, kernel_ok
from fastnn._core.kinds cimport FNN_ACT_IDENTITY, FNN_ACT_RELU
from fastnn._core.activations import check_counts


cdef extern from "fnn_conv.h" nogil:
    void fnn_conv_blas_serial_begin()
    void fnn_conv_blas_serial_end()
    void fnn_conv_im2col_f(const fnn_conv_geom *g, const float *X, Py_ssize_t r0, Py_ssize_t r1, float *col)
    void fnn_conv_im2col_d(const fnn_conv_geom *g, const double *X, Py_ssize_t r0, Py_ssize_t r1, double *col)
    void fnn_conv_col2im_f(const fnn_conv_geom *g, const float *col, Py_ssize_t r0, Py_ssize_t r1, float *dX)
    void fnn_conv_col2im_d(const fnn_conv_geom *g, const double *col, Py_ssize_t r0, Py_ssize_t r1, double *dX)
    void fnn_conv_dw_forward_f(const fnn_conv_geom *g, const float *X, const float *Wt, Py_ssize_t r0,
                               Py_ssize_t r1, float *Z)
    void fnn_conv_dw_forward_d(const fnn_conv_geom *g, const double *X, const double *Wt, Py_ssize_t r0,
                               Py_ssize_t r1, double *Z)
    void fnn_conv_dw_backward_f(const fnn_conv_geom *g, const float *X, const float *Wt, const float *dZ,
                                Py_ssize_t r0, Py_ssize_t r1, float *dX, float *dWt)
    void fnn_conv_dw_backward_d(const fnn_conv_geom *g, const double *X, const double *Wt, const double *dZ,
                                Py_ssize_t r0, Py_ssize_t r1, double *dX, double *dWt)
    enum: FNN_CONV_LANES
    enum: FNN_CONV_SMALL_C
    enum: FNN_CONV_SMALL_F
    enum: FNN_CONV_SMALL_MAX_F
    enum: FNN_CONV_SMALL_TAPS
    Py_ssize_t fnn_conv_small_work(const fnn_conv_geom *g, int backward)
    void fnn_conv_small_forward_f(const fnn_conv_geom *g, const float *X, const float *Wt, Py_ssize_t r0,
                                  Py_ssize_t r1, float *Z, float *work)
    void fnn_conv_small_forward_d(const fnn_conv_geom *g, const double *X, const double *Wt, Py_ssize_t r0,
                                  Py_ssize_t r1, double *Z, double *work)
    void fnn_conv_small_dw_f(const fnn_conv_geom *g, const float *X, const float *dZ, Py_ssize_t r0,
                             Py_ssize_t r1, float *work, float *lanes)
    void fnn_conv_small_dw_d(const fnn_conv_geom *g, const double *X, const double *dZ, Py_ssize_t r0,
                             Py_ssize_t r1, double *work, double *lanes)
    void fnn_conv_small_reduce_f(const fnn_conv_geom *g, const float *lanes, float *dW)
    void fnn_conv_small_reduce_d(const fnn_conv_geom *g, const double *lanes, double *dW)
    void fnn_conv_colsum_f(const float *dz, Py_ssize_t m, Py_ssize_t F, float *db)
    void fnn_conv_colsum_d(const double *dz, Py_ssize_t m, Py_ssize_t F, double *db)


cdef extern from "fnn_conv_direct.h" nogil:
    int fnn_convd_isa()
    int fnn_convd_set_isa(int cap)
    Py_ssize_t fnn_convd_packed_size(const fnn_conv_geom *g)
    Py_ssize_t fnn_convd_work(const fnn_conv_geom *g)
    enum: FNN_CONVD_MAX_SPAN
    void fnn_convd_pack_f(const fnn_conv_geom *g, const float *W, int flip, int isa, float *P)
    ctypedef struct fnn_convd_epi:
        const float *bias
        float *Y
        int relu
    void fnn_convd_forward_f(const fnn_conv_geom *g, int isa, const float *X, const float *P, Py_ssize_t r0,
                             Py_ssize_t r1, float *Z, float *work, const fnn_convd_epi *ep)
    void fnn_convd_dw_f(const fnn_conv_geom *g, int isa, const float *X, const float *dZ, Py_ssize_t r0,
                        Py_ssize_t r1, float *dW)


cdef enum:
    # the blocked route: at least FNN_CONVD_MIN_C input channels per group (first layers of 1 or 3 channels into
    # 32 filters ran 1.3x (forward) and 1.2x (weights) faster than im2col + sgemm with K = 9 or 27) ...
    FNN_CONVD_MIN_C = 1
    FNN_CONVD_MIN_F = 4              # ... and filters per group
    FNN_CONVD_ROWS = 256             # the blocked forward's rows per step (whole output rows, about this many)
    FNN_CONV_TILE_BYTES = 131072     # target size of one thread's patch tile (R x kh*kw*C elements)
    FNN_CONV_MIN_ROWS = 32           # tile rows: at least this many ...
    FNN_CONV_MAX_ROWS = 512          # ... and at most this many

# ---------------------------------------------------------------------------------------- geometry
cdef enum:
    _DIRECT = 0       # 1x1, stride 1, unpadded, one group: the GEMM reads X itself
    _DEPTHWISE = 1    # C/G == 1, G > 1: direct loops
    _GENERAL = 2      # im2col + GEMM per group
    _SMALL = 3        # one group of <= FNN_CONV_SMALL_C input channels (first layers): direct, no gather
    _BLOCKED = 4      # float32 on AVX2/AVX-512: register-blocked direct kernels (csrc/fnn_conv_direct.h)

_PATH_NAMES = {_DIRECT: "gemm1x1", _DEPTHWISE: "depthwise", _GENERAL: "im2col", _SMALL: "small",
               _BLOCKED: "blocked"}


cdef inline tuple _shape4(Py_ssize_t *s):
    return (s[0], s[1], s[2], s[3])


cdef int _path(const fnn_conv_geom *g, Py_ssize_t itemsize, int isa) noexcept nogil:
    """The kernel family of g, for elements of `itemsize` bytes, with the direct kernels of `isa` (0: none;
    fnn_convd_isa()): the one place where the routing is decided."""
    if g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0 and g.G == 1 \
            and g.OH == g.H and g.OW == g.W:
        return _DIRECT
    if g.G > 1 and g.G == g.C:
        return _DEPTHWISE
    if g.G == 1 and g.C <= FNN_CONV_SMALL_C and g.F <= FNN_CONV_SMALL_MAX_F and g.OW >= 8 \
            and g.kh * g.kw * g.C <= FNN_CONV_SMALL_TAPS:
        return _SMALL
    # float64 keeps im2col + dgemm (the issue's targets are float32; a 4-/8-double vector direct kernel would
    # need its own register blocking and the BLAS's dgemm is close to the machine's double peak there)
    if itemsize == 4 and isa > 0 and _blocked_shape(g):
        return _BLOCKED
    return _GENERAL


cdef bint _blocked_shape(const fnn_conv_geom *g) noexcept nogil:
    """Shapes the register-blocked direct kernels take (float32, AVX2/AVX-512): enough input and output
    channels per group to fill the vectors and the broadcasts, and a window of at most FNN_CONVD_MAX_SPAN input
    rows (the forward's ring of padded rows)."""
    return g.C // g.G >= FNN_CONVD_MIN_C and g.F // g.G >= FNN_CONVD_MIN_F \
        and (g.kh - 1) * g.dh + 1 <= FNN_CONVD_MAX_SPAN


cdef Py_ssize_t _tile_rows_general(const fnn_conv_geom *g, Py_ssize_t itemsize) noexcept nogil:
    """Rows of a gathered tile: R x kh*kw*C elements near FNN_CONV_TILE_BYTES."""
    cdef Py_ssize_t K = g.kh * g.kw * g.C
    cdef Py_ssize_t R = FNN_CONV_TILE_BYTES // (K * itemsize) if K > 0 else FNN_CONV_MAX_ROWS
    if R < FNN_CONV_MIN_ROWS:
        R = FNN_CONV_MIN_ROWS
    if R > FNN_CONV_MAX_ROWS:
        R = FNN_CONV_MAX_ROWS
    return R


cdef Py_ssize_t _tile_rows(const fnn_conv_geom *g, Py_ssize_t itemsize, int path) noexcept nogil:
    """Rows per tile of `path` (the small path: whole images, its kernels copy each image's rows once; the
    blocked one: whole output rows, about FNN_CONVD_ROWS, so that the bias and activation run on rows in cache)."""
    cdef Py_ssize_t P = g.OH * g.OW
    if path == _SMALL:
        return P * (FNN_CONV_MAX_ROWS // P if P < FNN_CONV_MAX_ROWS else 1)
    if path == _BLOCKED:
        return g.OW * (FNN_CONVD_ROWS // g.OW if g.OW < FNN_CONVD_ROWS else 1)
    return _tile_rows_general(g, itemsize)


cdef fnn_conv_geom _transposed(const fnn_conv_geom *g) noexcept nogil:
    """The geometry whose forward computes dX of the stride-1 convolution g: dX is the convolution of dZ (as
    the input: OH x OW pixels of F channels) with the kernel flipped in space and transposed to (kh, kw, F/G, C)
    (``_flip_weight``), at padding (kh-1)*dh - pt on the top and (kw-1)*dw - pl on the left (possibly negative:
    an offset; the gather reads only pixels inside dZ)."""
    cdef fnn_conv_geom t = g[0]
    t.H, t.W, t.C = g.OH, g.OW, g.F
    t.OH, t.OW, t.F = g.H, g.W, g.C
    t.sh = 1
    t.sw = 1
    t.pt = (g.kh - 1) * g.dh - g.pt
    t.pl = (g.kw - 1) * g.dw - g.pl
    return t


cdef bint _data_as_conv(const fnn_conv_geom *g, Py_ssize_t itemsize, int isa) noexcept nogil:
    """Backward-to-data as the forward of _transposed(g) (stride 1, gathered or blocked path), instead of
    dZ.W^T + col2im: its GEMMs have K = kh*kw*F/G instead of F/G and it writes each dX row once instead of
    scatter-adding."""
    cdef int path = _path(g, itemsize, isa)
    if not ((path == _GENERAL or path == _SMALL or path == _BLOCKED) and g.sh == 1 and g.sw == 1):
        return False
    # few input channels (the transposed convolution's GEMMs would have N = C/G < 8 columns) and an output
    # smaller than the input ("valid"): dZ.W^T + col2im does less work (no zero taps of the (k-1)-padded dZ)
    return not (g.C // g.G < 8 and g.OH * g.OW < g.H * g.W)


cdef Py_ssize_t _fwd_tile(const fnn_conv_geom *g, Py_ssize_t itemsize, int path) noexcept nogil:
    """Scratch elements of one thread's patch tile (the blocked path: padded input rows) in the forward of g on
    `path` (0: no gather)."""
    if path == _SMALL:
        return fnn_conv_small_work(g, 0)
    if path == _BLOCKED:
        return fnn_convd_work(g)
    return _tile_rows(g, itemsize, path) * g.kh * g.kw * g.C if path == _GENERAL else 0


cdef Py_ssize_t _fwd_shared(const fnn_conv_geom *g, int path) noexcept nogil:
    """Scratch elements shared by the threads of a forward of g on `path`: the packed weight of the blocked path."""
    return fnn_convd_packed_size(g) if path == _BLOCKED else 0


cdef void _bwd_sizes_isa(const fnn_conv_geom *g, Py_ssize_t itemsize, int isa, Py_ssize_t *tile,
                         Py_ssize_t *acc, Py_ssize_t *shared) noexcept nogil:
    """_bwd_sizes for the routes of `isa`."""
    cdef fnn_conv_geom t
    cdef Py_ssize_t wsize = g.kh * g.kw * (g.C // g.G) * g.F, td, gen
    cdef int path = _path(g, itemsize, isa), tpath
    cdef bint as_conv = _data_as_conv(g, itemsize, isa)
    gen = _tile_rows_general(g, itemsize) * g.kh * g.kw * g.C
    tile[0] = _fwd_tile(g, itemsize, path)
    if path == _SMALL:   # its own work (planes, dZ row, lanes), or the gathered tile where dX needs col2im
        tile[0] = fnn_conv_small_work(g, 1)
        if not as_conv and gen > tile[0]:
            tile[0] = gen
    elif path == _BLOCKED and not as_conv:    # dX by dZ.W^T + col2im (strided layers): a tile of dcol
        tile[0] = gen
    acc[0] = wsize + g.F
    shared[0] = 0
    if as_conv:
        t = _transposed(g)
        tpath = _path(&t, itemsize, isa)
        td = _fwd_tile(&t, itemsize, tpath)
        if td > tile[0]:
            tile[0] = td
        shared[0] = _fwd_shared(&t, tpath) if tpath == _BLOCKED else wsize


cdef void _bwd_sizes(const fnn_conv_geom *g, Py_ssize_t itemsize, Py_ssize_t *tile, Py_ssize_t *acc,
                     Py_ssize_t *shared) noexcept nogil:
    """Backward scratch: `shared` elements first (the flipped kernel, or the packed one, when _data_as_conv),
    then one patch tile of `tile` elements per thread, then a private (dW, db) of `acc` elements per thread but
    the first.  Sized for the routes with and without the direct kernels (the larger of each part), so that a
    buffer sized once stays large enough whatever fnn_convd_set_isa says later."""
    cdef Py_ssize_t t2, a2, s2
    _bwd_sizes_isa(g, itemsize, 0, tile, acc, shared)
    _bwd_sizes_isa(g, itemsize, 1, &t2, &a2, &s2)
    tile[0] = t2 if t2 > tile[0] else tile[0]
    acc[0] = a2 if a2 > acc[0] else acc[0]
    shared[0] = s2 if s2 > shared[0] else shared[0]


cdef void _fwd_sizes(const fnn_conv_geom *g, Py_ssize_t itemsize, Py_ssize_t *per, Py_ssize_t *shared) noexcept nogil:
    """Forward scratch: `shared` elements first (the packed weight), then `per` elements per thread (the patch
    tile); like _bwd_sizes, the larger of the routes with and without the direct kernels."""
    cdef int p0 = _path(g, itemsize, 0), p1 = _path(g, itemsize, 1)
    cdef Py_ssize_t a = _fwd_tile(g, itemsize, p0), b = _fwd_tile(g, itemsize, p1)
    per[0] = a if a > b else b
    a = _fwd_shared(g, p0)
    b = _fwd_shared(g, p1)
    shared[0] = a if a > b else b


cdef Py_ssize_t _need(const fnn_conv_geom *g, Py_ssize_t itemsize, int nt, bint backward) noexcept nogil:
    """Scratch elements for nt threads."""
    cdef Py_ssize_t tile, acc, shared
    if not backward:
        _fwd_sizes(g, itemsize, &tile, &shared)
        return shared + tile * nt
    _bwd_sizes(g, itemsize, &tile, &acc, &shared)
    return shared + tile * nt + acc * (nt - 1)


cdef fnn_conv_geom _geometry(tuple xs, tuple ws, tuple zs, tuple strides, tuple dilation, tuple padding,
                             Py_ssize_t groups, str fn):
    """The geometry of X (xs), W (ws), Z (zs), checked: ValueError naming `fn` on any inconsistency."""
    cdef fnn_conv_geom g
    if len(strides) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise ValueError(f"{fn}: strides and dilation must be pairs and padding (top, bottom, left, right), got "
                         f"{strides}, {dilation}, {padding}")
    g.N, g.H, g.W, g.C = xs
    g.kh, g.kw = ws[0], ws[1]
    g.OH, g.OW, g.F = zs[1], zs[2], zs[3]
    g.sh, g.sw = strides
    g.dh, g.dw = dilation
    g.pt, g.pl = padding[0], padding[2]
    g.G = groups
    if min(g.sh, g.sw, g.dh, g.dw, g.kh, g.kw, g.G) < 1 or min(padding) < 0:
        raise ValueError(f"{fn}: kernel, strides, dilation and groups must be >= 1 and padding >= 0, got kernel "
                         f"{(g.kh, g.kw)}, strides {strides}, dilation {dilation}, groups {groups}, padding {padding}")
    if g.C % g.G or g.F % g.G or g.C == 0 or g.F == 0:
        raise ValueError(f"{fn}: channels {g.C} and filters {g.F} must be positive multiples of groups {g.G}")
    if ws[2] != g.C // g.G or ws[3] != g.F:
        raise ValueError(f"{fn}: W has shape {ws}, expected {(g.kh, g.kw, g.C // g.G, g.F)}")
    cdef Py_ssize_t oh = (g.H + padding[0] + padding[1] - g.dh * (g.kh - 1) - 1) // g.sh + 1
    cdef Py_ssize_t ow = (g.W + padding[2] + padding[3] - g.dw * (g.kw - 1) - 1) // g.sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{fn}: the kernel {(g.kh, g.kw)} (dilation {dilation}) is larger than the padded input "
                         f"{(g.H + padding[0] + padding[1], g.W + padding[2] + padding[3])}")
    if zs != (g.N, oh, ow, g.F):
        raise ValueError(f"{fn}: the output has shape {zs}, expected {(g.N, oh, ow, g.F)}")
    return g


cdef int conv_geometry(fnn_conv_geom *g, tuple xs, tuple ws, tuple zs, tuple strides, tuple dilation,
                       tuple padding, Py_ssize_t groups, str fn) except -1:
    """*g = _geometry(...) (for the compiled plan: conv.pxd)."""
    g[0] = _geometry(xs, ws, zs, strides, dilation, padding, groups, fn)
    return 0


cdef Py_ssize_t conv_scratch(const fnn_conv_geom *g, Py_ssize_t itemsize, int n_threads,
                             bint backward) noexcept nogil:
    """Scratch elements for n_threads threads (scratch_size on a checked geometry)."""
    return _need(g, itemsize, n_threads if n_threads > 0 else 1, backward)


def scratch_size(tuple x_shape, tuple w_shape, tuple strides, tuple dilation, tuple padding, Py_ssize_t groups,
                 Py_ssize_t itemsize, int n_threads, bint backward):
    """Elements of the scratch buffer that conv2d_forward (backward=False) or conv2d_backward (True) needs to
    run on n_threads threads (a smaller buffer runs on fewer threads; 0 elements is enough for one thread of
    a forward without a gather)."""
    cdef Py_ssize_t oh = (x_shape[1] + padding[0] + padding[1] - dilation[0] * (w_shape[0] - 1) - 1) // strides[0] + 1
    cdef Py_ssize_t ow = (x_shape[2] + padding[2] + padding[3] - dilation[1] * (w_shape[1] - 1) - 1) // strides[1] + 1
    cdef fnn_conv_geom g = _geometry(tuple(x_shape), tuple(w_shape), (x_shape[0], oh, ow, w_shape[3]),
                                     strides, dilation, padding, groups, "conv scratch_size")
    return _need(&g, itemsize, n_threads if n_threads > 0 else 1, backward)


cdef int _threads_by_scratch(const fnn_conv_geom *g, Py_ssize_t itemsize, Py_ssize_t have, int nt,
                             bint backward) noexcept nogil:
    """At most nt threads whose scratch fits in `have` elements."""
    while nt > 1 and _need(g, itemsize, nt, backward) > have:
        nt -= 1
    return nt


cdef inline void _im2col(const fnn_conv_geom *g, const floating *X, Py_ssize_t r0, Py_ssize_t r1,
                         floating *col) noexcept nogil:
    if floating is float:
        fnn_conv_im2col_f(g, X, r0, r1, col)
    else:
        fnn_conv_im2col_d(g, X, r0, r1, col)


cdef inline void _col2im(const fnn_conv_geom *g, const floating *col, Py_ssize_t r0, Py_ssize_t r1,
                         floating *dX) noexcept nogil:
    if floating is float:
        fnn_conv_col2im_f(g, col, r0, r1, dX)
    else:
        fnn_conv_col2im_d(g, col, r0, r1, dX)


# ----------------------------------------------------------------------------------------- forward
cdef void _forward_rows(const fnn_conv_geom *g, int path, const floating *X, const floating *W,
                        const floating *b, floating *Z, floating *Y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t R,
                        floating *col, int act, double alpha, int64_t *counts, const floating *P,
                        int isa) noexcept nogil:
    """Rows [r0, r1), tile by tile: Z = conv(X) + b, Y = act(Z) (counts: this thread's unit counters; P, isa:
    the packed weight and the ISA of the blocked path)."""
    cdef Py_ssize_t a, m, q, F = g.F, G = g.G, Cg = g.C // g.G, Fg = g.F // g.G
    cdef Py_ssize_t Kg = g.kh * g.kw * Cg
    cdef fnn_convd_epi ep
    # the blocked kernel applies the bias and a ReLU (or no activation) as it stores (the same values as the pass)
    cdef bint fused = path == _BLOCKED and counts == NULL and (act == FNN_ACT_IDENTITY or act == FNN_ACT_RELU)
    if floating is float:
        ep.bias = b
        ep.Y = Y if Y != Z else NULL
        ep.relu = act == FNN_ACT_RELU
    a = r0
    while a < r1:
        m = R if r1 - a > R else r1 - a
        if path == _DIRECT:
            _blas.gemm(False, False, <int>m, <int>F, <int>g.C, <floating>1, X + a * g.C, <int>g.C, W, <int>F,
                       <floating>0, Z + a * F, <int>F)
        elif path == _DEPTHWISE:
            if floating is float:
                fnn_conv_dw_forward_f(g, X, W, a, a + m, Z)
            else:
                fnn_conv_dw_forward_d(g, X, W, a, a + m, Z)
        elif path == _SMALL:
            if floating is float:
                fnn_conv_small_forward_f(g, X, W, a, a + m, Z, col)
            else:
                fnn_conv_small_forward_d(g, X, W, a, a + m, Z, col)
        elif path == _BLOCKED:
            if floating is float:      # (never double: _path)
                fnn_convd_forward_f(g, isa, X, P, a, a + m, Z, col, &ep if fused else NULL)
        else:
            _im2col(g, X, a, a + m, col)
            for q in range(G):
                _blas.gemm(False, False, <int>m, <int>Fg, <int>Kg, <floating>1, col + q * m * Kg, <int>Kg,
                           W + q * Fg, <int>F, <floating>0, Z + a * F + q * Fg, <int>F)
        if counts == NULL:
            if not fused and (act != FNN_ACT_IDENTITY or b != NULL or Y != Z):
                act_forward(act, Z + a * F, Y + a * F, b, m, F, alpha, 1)
        else:
            act_forward_counted(act, Z + a * F, Y + a * F, b, m, F, alpha, 1, counts, 1)
        a += m


def conv2d_forward(const floating[:, :, :, ::1] X, const floating[:, :, :, ::1] W, const floating[::1] b,
                   floating[:, :, :, ::1] Z, floating[:, :, :, ::1] Y, tuple strides, tuple dilation,
                   tuple padding, Py_ssize_t groups, floating[::1] scratch, int act=FNN_ACT_IDENTITY,
                   double alpha=0.0, int n_threads=1, int64_t[:, ::1] counts=None):
    """Z = conv(X, W) + b (OUT), Y = act(Z) (OUT; may be Z for the identity).

    X (N, H, W, C); W (kh, kw, C/groups, F); b (F,) or None; Z, Y (N, OH, OW, F).  strides (sh, sw),
    dilation (dh, dw), padding (top, bottom, left, right) of zeros.  scratch (OUT, workspace): at least
    ``scratch_size(..., backward=False)`` elements for n_threads threads (fewer threads run with less; None
    when that size is 0).  counts (IN/OUT, optional): the activation's unit counters, (n_slots, F) int64.
    """
    check_act(act, "conv2d_forward")
    cdef fnn_conv_geom g = _geometry(_shape4(X.shape), _shape4(W.shape), _shape4(Z.shape), strides,
                                     dilation, padding, groups, "conv2d_forward")
    if _shape4(Y.shape) != _shape4(Z.shape):
        raise ValueError(f"conv2d_forward: Y has shape {_shape4(Y.shape)}, expected {_shape4(Z.shape)}")
    cdef const floating *bp = NULL
    if b is not None:
        if b.shape[0] != g.F:
            raise ValueError(f"conv2d_forward: b has shape {(b.shape[0],)}, expected {(g.F,)}")
        bp = &b[0]
    if counts is not None:
        check_counts(counts, g.F, "conv2d_forward")
    cdef Py_ssize_t rows = g.N * g.OH * g.OW
    if rows == 0:
        return
    cdef Py_ssize_t per, shared
    _fwd_sizes(&g, sizeof(floating), &per, &shared)
    cdef Py_ssize_t have = scratch.shape[0] if scratch is not None else 0
    if have < shared + per:
        raise ValueError(f"conv2d_forward: scratch has {have} elements, at least {shared + per} needed")
    cdef floating *sp = &scratch[0] if have > 0 else NULL
    cdef int64_t *cp = &counts[0, 0] if counts is not None else NULL
    cdef Py_ssize_t n_slots = counts.shape[0] if counts is not None else 0
    with nogil:
        conv_forward(&g, &X[0, 0, 0, 0], &W[0, 0, 0, 0], bp, &Z[0, 0, 0, 0], &Y[0, 0, 0, 0], sp, have, act, alpha,
                     n_threads, cp, n_slots)


cdef void conv_forward(const fnn_conv_geom *g, const floating *X, const floating *W, const floating *b, floating *Z,
                       floating *Y, floating *scratch, Py_ssize_t have, int act, double alpha, int n_threads,
                       int64_t *counts, Py_ssize_t n_slots) noexcept nogil:
    """conv2d_forward on raw pointers, its arguments checked by the caller (see conv.pxd): the rows split over
    at most n_threads threads (fewer for few tiles, few counter slots or a scratch too small for more)."""
    cdef Py_ssize_t rows = g.N * g.OH * g.OW
    if rows == 0:
        return
    cdef int isa = fnn_convd_isa()
    cdef int path = _path(g, sizeof(floating), isa)
    cdef Py_ssize_t R = _tile_rows(g, sizeof(floating), path), per, shared
    _fwd_sizes(g, sizeof(floating), &per, &shared)
    cdef int nt = n_threads if n_threads > 0 else 1
    if nt > (rows + R - 1) // R:
        nt = <int>((rows + R - 1) // R)
    if counts != NULL and nt > n_slots:
        nt = <int>n_slots
    nt = _threads_by_scratch(g, sizeof(floating), have, nt, False)
    cdef floating *sp = scratch if have > 0 else NULL
    cdef floating *tiles = sp + shared if sp != NULL else NULL    # after the packed weight (blocked path)
    cdef int t
    if path == _BLOCKED:
        if floating is float:
            fnn_convd_pack_f(g, W, 0, isa, sp)
    if nt == 1:
        _forward_rows(g, path, X, W, b, Z, Y, 0, rows, R, tiles, act, alpha, counts, sp, isa)
    else:
        fnn_conv_blas_serial_begin()
        for t in prange(nt, num_threads=nt, schedule="static"):
            _forward_rows(g, path, X, W, b, Z, Y, t * rows // nt, (t + 1) * rows // nt, R,
                          tiles + t * per if tiles != NULL else NULL, act, alpha,
                          counts + t * g.F if counts != NULL else NULL, sp, isa)
        fnn_conv_blas_serial_end()


# ---------------------------------------------------------------------------------------- backward
cdef void _flip_weight(const fnn_conv_geom *g, const floating *W, floating *Wf) noexcept nogil:
    """Wf (kh, kw, F/G, C) [ky, kx, f, q Cg + c] = W (kh, kw, C/G, F) [kh-1-ky, kw-1-kx, c, q Fg + f]: the kernel
    of the transposed convolution (``_transposed``), group by group."""
    cdef Py_ssize_t ky, kx, q, c, f, G = g.G, Cg = g.C // g.G, Fg = g.F // g.G
    cdef const floating *w
    cdef floating *o
    for ky in range(g.kh):
        for kx in range(g.kw):
            w = W + ((g.kh - 1 - ky) * g.kw + (g.kw - 1 - kx)) * Cg * g.F
            o = Wf + (ky * g.kw + kx) * Fg * g.C
            for q in range(G):
                for c in range(Cg):
                    for f in range(Fg):
                        o[f * g.C + q * Cg + c] = w[c * g.F + q * Fg + f]


cdef void _backward_rows(const fnn_conv_geom *g, int path, const floating *X, const floating *W,
                         const floating *dZ, floating *dX, floating *dW, floating *db, Py_ssize_t r0,
                         Py_ssize_t r1, Py_ssize_t R, floating *col, int isa, Py_ssize_t Rd) noexcept nogil:
    """Rows [r0, r1) (whole images): dW += col^T.dZ, db += column sums of dZ (db may be NULL), and dX (NULL:
    skipped) of these images = col2im(dZ.W^T).  dW, db and the images' dX are zeroed first.  The blocked path cuts
    its tiles of R rows into tiles of Rd rows for dcol = dZ.W^T."""
    cdef Py_ssize_t a, m, q, b, mb, F = g.F, G = g.G, Cg = g.C // g.G, Fg = g.F // g.G
    cdef Py_ssize_t Kg = g.kh * g.kw * Cg, P = g.OH * g.OW, img = g.H * g.W * g.C
    cdef const floating *dz
    cdef floating *lanes = NULL
    memset(dW, 0, g.kh * g.kw * Cg * F * sizeof(floating))
    if path == _SMALL:      # dX is NULL here (conv2d_backward): the weights' pass only
        lanes = col + fnn_conv_small_work(g, 1) - Kg * F * FNN_CONV_LANES
        memset(lanes, 0, Kg * F * FNN_CONV_LANES * sizeof(floating))
    if db != NULL:
        memset(db, 0, F * sizeof(floating))
    if dX != NULL and path != _DIRECT:
        memset(dX + (r0 // P) * img, 0, ((r1 - r0) // P) * img * sizeof(floating))
    a = r0
    while a < r1:
        m = R if r1 - a > R else r1 - a
        dz = dZ + a * F
        if path == _DIRECT:
            _blas.gemm(True, False, <int>g.C, <int>F, <int>m, <floating>1, X + a * g.C, <int>g.C, dz, <int>F,
                       <floating>1, dW, <int>F)
            if dX != NULL:
                _blas.gemm(False, True, <int>m, <int>g.C, <int>F, <floating>1, dz, <int>F, W, <int>F,
                           <floating>0, dX + a * g.C, <int>g.C)
        elif path == _DEPTHWISE:
            if floating is float:
                fnn_conv_dw_backward_f(g, X, W, dZ, a, a + m, dX, dW)
            else:
                fnn_conv_dw_backward_d(g, X, W, dZ, a, a + m, dX, dW)
        elif path == _SMALL:
            if floating is float:
                fnn_conv_small_dw_f(g, X, dZ, a, a + m, col, lanes)
            else:
                fnn_conv_small_dw_d(g, X, dZ, a, a + m, col, lanes)
        elif path == _BLOCKED:     # the direct weights' pass; dX (strided layers only) by dZ.W^T + col2im
            if floating is float:
                fnn_convd_dw_f(g, isa, X, dZ, a, a + m, dW)
            b = a
            while dX != NULL and b < a + m:
                mb = Rd if a + m - b > Rd else a + m - b
                for q in range(G):
                    _blas.gemm(False, True, <int>mb, <int>Kg, <int>Fg, <floating>1, dZ + b * F + q * Fg, <int>F,
                               W + q * Fg, <int>F, <floating>0, col + q * mb * Kg, <int>Kg)
                _col2im(g, col, b, b + mb, dX)
                b += mb
        else:
            _im2col(g, X, a, a + m, col)
            for q in range(G):
                _blas.gemm(True, False, <int>Kg, <int>Fg, <int>m, <floating>1, col + q * m * Kg, <int>Kg,
                           dz + q * Fg, <int>F, <floating>1, dW + q * Fg, <int>F)
            if dX != NULL:
                for q in range(G):
                    _blas.gemm(False, True, <int>m, <int>Kg, <int>Fg, <floating>1, dz + q * Fg, <int>F,
                               W + q * Fg, <int>F, <floating>0, col + q * m * Kg, <int>Kg)
                _col2im(g, col, a, a + m, dX)
        if db != NULL:
            if floating is float:
                fnn_conv_colsum_f(dz, m, F, db)
            else:
                fnn_conv_colsum_d(dz, m, F, db)
        a += m
    if path == _SMALL:
        if floating is float:
            fnn_conv_small_reduce_f(g, lanes, dW)
        else:
            fnn_conv_small_reduce_d(g, lanes, dW)


def conv2d_backward(const floating[:, :, :, ::1] X, const floating[:, :, :, ::1] W,
                    const floating[:, :, :, ::1] Z, const floating[:, :, :, ::1] Y, floating[:, :, :, ::1] dY,
                    floating[:, :, :, ::1] dZ, floating[:, :, :, ::1] dX, floating[:, :, :, ::1] dW,
                    floating[::1] db, tuple strides, tuple dilation, tuple padding, Py_ssize_t groups,
                    floating[::1] scratch, int act=FNN_ACT_IDENTITY, double alpha=0.0, int n_threads=1):
    """Backward of conv2d_forward.

    IN: X, W, Z, Y (the forward's), dY (gradient of the loss with respect to Y).
    OUT: dZ = dY * act'(Z) (scratch; may be dY itself, not used for the identity), dW (kh, kw, C/groups, F),
    db (F,) (None: no bias), dX (N, H, W, C) (None: not needed).  scratch (workspace): at least
    ``scratch_size(..., backward=True)`` elements for n_threads threads (fewer threads run with less).
    """
    check_act(act, "conv2d_backward")
    cdef tuple zs = _shape4(Z.shape)
    cdef fnn_conv_geom g = _geometry(_shape4(X.shape), _shape4(W.shape), zs, strides, dilation, padding,
                                     groups, "conv2d_backward")
    for name, a in (("Y", Y), ("dY", dY), ("dZ", dZ)):
        if _shape4(a.shape) != zs:
            raise ValueError(f"conv2d_backward: {name} has shape {_shape4(a.shape)}, expected {zs}")
    if _shape4(dW.shape) != _shape4(W.shape):
        raise ValueError(f"conv2d_backward: dW has shape {_shape4(dW.shape)}, expected {_shape4(W.shape)}")
    if dX is not None and _shape4(dX.shape) != _shape4(X.shape):
        raise ValueError(f"conv2d_backward: dX has shape {_shape4(dX.shape)}, expected {_shape4(X.shape)}")
    if db is not None and db.shape[0] != g.F:
        raise ValueError(f"conv2d_backward: db has shape {(db.shape[0],)}, expected {(g.F,)}")
    cdef Py_ssize_t wsize = g.kh * g.kw * (g.C // g.G) * g.F
    cdef floating *dbp = &db[0] if db is not None else NULL
    cdef floating *dXp = &dX[0, 0, 0, 0] if (dX is not None and g.N > 0) else NULL
    cdef Py_ssize_t rows = g.N * g.OH * g.OW
    if rows == 0:      # an empty batch: zero gradients
        memset(&dW[0, 0, 0, 0], 0, wsize * sizeof(floating))
        if dbp != NULL:
            memset(dbp, 0, g.F * sizeof(floating))
        return
    cdef Py_ssize_t tile, acc_, shared
    _bwd_sizes(&g, sizeof(floating), &tile, &acc_, &shared)
    cdef Py_ssize_t have = scratch.shape[0] if scratch is not None else 0
    if have < shared + tile:
        raise ValueError(f"conv2d_backward: scratch has {have} elements, at least {shared + tile} needed")
    cdef floating *sp = &scratch[0] if have > 0 else NULL
    cdef int err
    with nogil:
        err = conv_backward(&g, &X[0, 0, 0, 0], &W[0, 0, 0, 0], &Z[0, 0, 0, 0], &Y[0, 0, 0, 0], &dY[0, 0, 0, 0],
                            &dZ[0, 0, 0, 0], dXp, &dW[0, 0, 0, 0], dbp, sp, have, act, alpha, n_threads)
    kernel_ok(err, "conv2d_backward")


cdef int conv_backward(const fnn_conv_geom *g, const floating *X, const floating *W, const floating *Z,
                       const floating *Y, floating *dY, floating *dZ, floating *dX, floating *dW, floating *db,
                       floating *scratch, Py_ssize_t have, int act, double alpha, int n_threads) noexcept nogil:
    """conv2d_backward on raw pointers, its arguments checked by the caller (see conv.pxd); returns the
    activation kernel's error (0: done)."""
    cdef Py_ssize_t wsize = g.kh * g.kw * (g.C // g.G) * g.F
    cdef floating *dXp = dX if g.N > 0 else NULL
    cdef Py_ssize_t rows = g.N * g.OH * g.OW, P = g.OH * g.OW
    if rows == 0:      # an empty batch: zero gradients
        memset(dW, 0, wsize * sizeof(floating))
        if db != NULL:
            memset(db, 0, g.F * sizeof(floating))
        return 0
    cdef int isa = fnn_convd_isa()
    cdef int path = _path(g, sizeof(floating), isa)
    cdef bint as_conv = _data_as_conv(g, sizeof(floating), isa) and dXp != NULL
    if path == _SMALL and dXp != NULL and not as_conv:
        path = _GENERAL          # dX by col2im needs the gathered tile (strided first layers)
    cdef fnn_conv_geom gt = _transposed(g)
    cdef int tpath = _path(&gt, sizeof(floating), isa)
    cdef Py_ssize_t R = _tile_rows(g, sizeof(floating), path)
    cdef Py_ssize_t Rd = _tile_rows_general(g, sizeof(floating))    # the blocked path's dcol tiles (strided dX)
    cdef Py_ssize_t RT = _tile_rows(&gt, sizeof(floating), tpath)
    cdef Py_ssize_t tile, acc_, shared
    _bwd_sizes(g, sizeof(floating), &tile, &acc_, &shared)
    cdef int nt = n_threads if n_threads > 0 else 1
    cdef int ntb = nt if nt < g.N else <int>g.N          # the weights' pass: whole images per thread
    ntb = _threads_by_scratch(g, sizeof(floating), have, ntb, True)
    cdef Py_ssize_t in_rows = g.N * g.H * g.W
    cdef int ntd = nt if nt < (in_rows + RT - 1) // RT else <int>((in_rows + RT - 1) // RT)
    ntd = _threads_by_scratch(g, sizeof(floating), have, ntd, True)   # the data pass: tiles of dX rows
    cdef floating *sp = scratch if have > 0 else NULL
    cdef floating *Wf = sp                                # the flipped kernel (shared)
    cdef floating *tiles = sp + shared if sp != NULL else NULL
    cdef floating *g_ = dY
    cdef floating *base
    cdef Py_ssize_t k
    cdef int t, err = 0
    if act != FNN_ACT_IDENTITY:
        g_ = dZ
        err = act_backward(act, Z, Y, dY, g_, rows, g.F, alpha, n_threads)
    if err == 0 and as_conv:
        if tpath == _BLOCKED:      # the flipped kernel packed straight from W (Wf: the packed weight)
            if floating is float:
                fnn_convd_pack_f(&gt, W, 1, isa, Wf)
        else:
            _flip_weight(g, W, Wf)
        if ntd == 1:
            _forward_rows(&gt, tpath, g_, Wf, NULL, dXp, dXp, 0, in_rows, RT, tiles, FNN_ACT_IDENTITY, 0.0, NULL,
                          Wf, isa)
        else:
            fnn_conv_blas_serial_begin()
            for t in prange(ntd, num_threads=ntd, schedule="static"):
                _forward_rows(&gt, tpath, g_, Wf, NULL, dXp, dXp, t * in_rows // ntd, (t + 1) * in_rows // ntd,
                              RT, tiles + t * tile if tiles != NULL else NULL, FNN_ACT_IDENTITY, 0.0, NULL,
                              Wf, isa)
            fnn_conv_blas_serial_end()
    if err == 0 and ntb == 1:
        _backward_rows(g, path, X, W, g_, NULL if as_conv else dXp, dW, db, 0, rows, R, tiles, isa, Rd)
    elif err == 0:
        # thread t: images [t N / nt, (t+1) N / nt); after the shared part of the scratch, the tiles of
        # every thread, then the private accumulators (dW, db) of threads 1..nt-1
        fnn_conv_blas_serial_begin()
        for t in prange(ntb, num_threads=ntb, schedule="static"):
            _backward_rows(g, path, X, W, g_, NULL if as_conv else dXp,
                           dW if t == 0 else tiles + ntb * tile + (t - 1) * acc_,
                           db if t == 0 else (tiles + ntb * tile + (t - 1) * acc_ + wsize if db != NULL
                                              else NULL),
                           (t * g.N // ntb) * P, ((t + 1) * g.N // ntb) * P, R,
                           tiles + t * tile if tile > 0 else NULL, isa, Rd)
        fnn_conv_blas_serial_end()
        for t in range(1, ntb):
            base = tiles + ntb * tile + (t - 1) * acc_
            for k in range(wsize):
                dW[k] += base[k]
            if db != NULL:
                for k in range(g.F):
                    db[k] += base[wsize + k]
    return err


# ------------------------------------------------------------------------------------------ queries
def route(tuple x_shape, tuple w_shape, tuple strides=(1, 1), tuple dilation=(1, 1), tuple padding=(0, 0, 0, 0),
          Py_ssize_t groups=1, Py_ssize_t itemsize=4):
    """The kernel family conv2d_forward runs for these shapes now (the ISA cap included): "blocked" (the
    register-blocked direct kernels of csrc/fnn_conv_direct.h), "im2col" (tiled im2col + GEMM), "gemm1x1",
    "depthwise" or "small" (first layers).  Arguments as for scratch_size."""
    cdef Py_ssize_t oh = (x_shape[1] + padding[0] + padding[1] - dilation[0] * (w_shape[0] - 1) - 1) // strides[0] + 1
    cdef Py_ssize_t ow = (x_shape[2] + padding[2] + padding[3] - dilation[1] * (w_shape[1] - 1) - 1) // strides[1] + 1
    cdef fnn_conv_geom g = _geometry(tuple(x_shape), tuple(w_shape), (x_shape[0], oh, ow, w_shape[3]),
                                     strides, dilation, padding, groups, "conv route")
    return _PATH_NAMES[_path(&g, itemsize, fnn_convd_isa())]


def set_direct_isa(int cap):
    """Cap the register-blocked direct kernels (test hook): 0 never (im2col + GEMM), 1 at most AVX2+FMA, 2 the
    best the CPU has.  Returns the kernel in use: 0 none, 1 AVX2+FMA, 2 AVX-512F."""
    return fnn_convd_set_isa(cap)
