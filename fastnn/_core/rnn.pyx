# cython: boundscheck=False, wraparound=False, cdivision=True
"""Recurrent kernels (SimpleRNN, LSTM, GRU; PyTorch's math): forward over a whole sequence and backpropagation
through time, float32 and float64.  The loops are C (csrc/fnn_rnn.h, whose header comment describes the design),
run through the nogil entry points of rnn.pxd (shared with the compiled training plan); here the sizes of every
buffer are checked once per call, so the C loops run without bounds checks.

Every array is passed flat (a C-contiguous 1-D view of the caller's buffer); the shapes are given by the
integers n, steps, n_in, units and the cell (G = 1, 4, 3 gates for SimpleRNN, LSTM, GRU; GU = G * units;
SV = 4 * units stored per row and step for LSTM and GRU, 0 for SimpleRNN):

    X (n, steps, n_in)   W_ih (n_in, GU)   W_hh (units, GU)   b_ih, b_hh (GU,)   h0, c0, hout, cout (n, units)
    XP (n, steps, GU)    HP (n, GU)        Hs, Cs (steps + 1, n, units)         Gs (steps, n, SV)
    Y, dY (n, steps, units)                dGt (steps, n, GU)   dGo (n, steps, GU)   dH, dC (n, units)
"""
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t

from fastnn._core._common cimport floating

cdef extern from "fnn_rnn.h" nogil:
    ctypedef struct fnn_rnn_dims:
        int cell
        ptrdiff_t n, steps, n_in, units
        int reverse
        const int *perm
        const int *n_active
        const unsigned char *mask
        int n_threads
        const int64_t *ids
        const void *emb
        ptrdiff_t vocab
        void *xtab
    int FNN_RNN_TANH, FNN_RNN_RELU, FNN_RNN_LSTM, FNN_RNN_GRU, FNN_HAVE_MXCSR
    int fnn_rnn_gates(int cell)
    int fnn_rnn_saved(int cell)
    int fnn_rnn_mask_plan(const unsigned char *mask, ptrdiff_t n, ptrdiff_t steps, int reverse, int *perm,
                          int *n_active, int *scratch)
    float fnn_exp_f(float x)
    float fnn_sigmoid_vec_f(float x)
    ptrdiff_t fnn_rnn_packed_size(int cell, ptrdiff_t n_in, ptrdiff_t units, int n_threads)
    int fnn_rnn_set_isa(int cap)
    unsigned int fnn_ftz_enter()
    void fnn_ftz_exit(unsigned int old)
    void fnn_rnn_forward_f(const fnn_rnn_dims *d, const float *X, const float *Wih, const float *Whh,
                           const float *bih, const float *bhh, const float *h0, const float *c0, float *XP,
                           float *HP, float *Hs, float *Cs, float *Gs, float *Y, float *hout, float *cout,
                           float *Wp)
    void fnn_rnn_forward_d(const fnn_rnn_dims *d, const double *X, const double *Wih, const double *Whh,
                           const double *bih, const double *bhh, const double *h0, const double *c0, double *XP,
                           double *HP, double *Hs, double *Cs, double *Gs, double *Y, double *hout, double *cout,
                           double *Wp)
    void fnn_rnn_backward_f(const fnn_rnn_dims *d, const float *X, const float *Wih, const float *Whh,
                            const float *Hs, const float *Cs, const float *Gs, const float *dY,
                            const float *dhout, const float *dcout, float *dH, float *dC, float *dGt,
                            float *dGo, float *dX, float *dWih, float *dWhh, float *dbih, float *dbhh,
                            float *dh0, float *dc0, double *norms, float *Wp)
    void fnn_rnn_backward_d(const fnn_rnn_dims *d, const double *X, const double *Wih, const double *Whh,
                            const double *Hs, const double *Cs, const double *Gs, const double *dY,
                            const double *dhout, const double *dcout, double *dH, double *dC, double *dGt,
                            double *dGo, double *dX, double *dWih, double *dWhh, double *dbih, double *dbhh,
                            double *dh0, double *dc0, double *norms, double *Wp)

TANH = FNN_RNN_TANH
RELU = FNN_RNN_RELU
LSTM = FNN_RNN_LSTM
GRU = FNN_RNN_GRU
HAVE_FTZ = bool(FNN_HAVE_MXCSR)


def n_gates(int cell):
    """G: 1 (SimpleRNN), 4 (LSTM), 3 (GRU)."""
    _check_cell(cell)
    return fnn_rnn_gates(cell)


def n_saved(int cell):
    """Values stored per row, step and unit for the backward (Gs): 4 for LSTM and GRU, 0 for SimpleRNN."""
    _check_cell(cell)
    return fnn_rnn_saved(cell)


cdef _check_cell(int cell):
    if cell not in (FNN_RNN_TANH, FNN_RNN_RELU, FNN_RNN_LSTM, FNN_RNN_GRU):
        raise ValueError(f"rnn: unknown cell kind {cell}")


cdef _need(str what, object arr, Py_ssize_t size):
    if arr is None:
        raise ValueError(f"rnn: {what} is required")
    if arr.shape[0] != size:
        raise ValueError(f"rnn: {what} has {arr.shape[0]} elements, expected {size}")


cdef _opt(str what, object arr, Py_ssize_t size):
    if arr is not None and arr.shape[0] != size:
        raise ValueError(f"rnn: {what} has {arr.shape[0]} elements, expected {size}")


def mask_plan(const unsigned char[:, ::1] mask, bint reverse, int[::1] perm, int[::1] n_active, int[::1] scratch):
    """The row plan of a call for a (n, steps) mask (None: no mask); returns the mode: 0 no mask, 1 general
    (blend per row and step), 2 right-padded (perm sorts the rows by length, descending; n_active[s] = rows
    running at step s).  OUT: perm (n,), n_active (steps,); scratch (n + steps + 1,).  Never allocates."""
    cdef Py_ssize_t n = perm.shape[0], steps = n_active.shape[0]
    if mask is not None and (mask.shape[0] != n or mask.shape[1] != steps):
        raise ValueError(f"rnn: mask has shape {(mask.shape[0], mask.shape[1])}, expected {(n, steps)}")
    _need("scratch", scratch, n + steps + 1)
    cdef const unsigned char *mp = &mask[0, 0] if (mask is not None and n * steps > 0) else NULL
    cdef int mode
    cdef int dummy = 0
    with nogil:
        mode = rnn_mask_plan(mp, n, steps, reverse, &perm[0] if n > 0 else &dummy,
                             &n_active[0] if steps > 0 else &dummy, &scratch[0])
    return mode


cdef int rnn_mask_plan(const unsigned char *mask, Py_ssize_t n, Py_ssize_t steps, bint reverse, int *perm,
                       int *n_active, int *scratch) noexcept nogil:
    return fnn_rnn_mask_plan(mask, n, steps, reverse, perm, n_active, scratch)


cdef fnn_rnn_dims _dims(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units, bint reverse,
                        const int[::1] perm, const int[::1] n_active, const unsigned char[:, ::1] mask,
                        int n_threads) except *:
    _check_cell(cell)
    if n < 0 or steps < 0 or n_in < 0 or units < 1:
        raise ValueError(f"rnn: bad sizes n={n} steps={steps} n_in={n_in} units={units}")
    _need("perm", perm, n)
    _need("n_active", n_active, steps)
    cdef Py_ssize_t i
    for i in range(n):
        if perm[i] < 0 or perm[i] >= n:
            raise ValueError("rnn: perm is not a permutation of the rows")
    for i in range(steps):
        if n_active[i] < 0 or n_active[i] > n:
            raise ValueError("rnn: n_active out of range")
    if mask is not None and (mask.shape[0] != n or mask.shape[1] != steps):
        raise ValueError(f"rnn: mask has shape {(mask.shape[0], mask.shape[1])}, expected {(n, steps)}")
    return _raw_dims(cell, n, steps, n_in, units, reverse, &perm[0] if n > 0 else NULL,
                     &n_active[0] if steps > 0 else NULL,
                     &mask[0, 0] if (mask is not None and n * steps > 0) else NULL, n_threads)


cdef inline const floating *_cp(const floating[::1] a) noexcept:
    return &a[0] if (a is not None and a.shape[0] > 0) else NULL


cdef inline floating *_p(floating[::1] a) noexcept:
    return &a[0] if (a is not None and a.shape[0] > 0) else NULL


cdef inline fnn_rnn_dims _raw_dims(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units,
                                   bint reverse, const int *perm, const int *n_active, const unsigned char *mask,
                                   int n_threads) noexcept nogil:
    cdef fnn_rnn_dims d
    d.cell = cell
    d.n = n
    d.steps = steps
    d.n_in = n_in
    d.units = units
    d.reverse = reverse
    d.perm = perm
    d.n_active = n_active
    d.mask = mask
    d.n_threads = n_threads
    d.ids = NULL
    d.emb = NULL
    d.vocab = 0
    d.xtab = NULL
    return d


cdef void rnn_forward_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units, bint reverse,
                          const int *perm, const int *n_active, const unsigned char *mask, int n_threads,
                          const floating *X, const floating *Wih, const floating *Whh, const floating *bih,
                          const floating *bhh, const floating *h0, const floating *c0, floating *XP, floating *HP,
                          floating *Hs, floating *Cs, floating *Gs, floating *Y, floating *hout, floating *cout,
                          floating *Wp) noexcept nogil:
    rnn_forward_emb_raw(cell, n, steps, n_in, units, reverse, perm, n_active, mask, n_threads, X, Wih, Whh, bih, bhh,
                        h0, c0, XP, HP, Hs, Cs, Gs, Y, hout, cout, Wp, NULL, NULL, 0, NULL)


cdef void rnn_forward_emb_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units,
                              bint reverse, const int *perm, const int *n_active, const unsigned char *mask,
                              int n_threads, const floating *X, const floating *Wih, const floating *Whh,
                              const floating *bih, const floating *bhh, const floating *h0, const floating *c0,
                              floating *XP, floating *HP, floating *Hs, floating *Cs, floating *Gs, floating *Y,
                              floating *hout, floating *cout, floating *Wp, const int64_t *ids, const floating *emb,
                              Py_ssize_t vocab, floating *xtab) noexcept nogil:
    cdef fnn_rnn_dims d = _raw_dims(cell, n, steps, n_in, units, reverse, perm, n_active, mask, n_threads)
    d.ids, d.emb, d.vocab, d.xtab = ids, emb, vocab, xtab
    if floating is float:
        fnn_rnn_forward_f(&d, X, Wih, Whh, bih, bhh, h0, c0, XP, HP, Hs, Cs, Gs, Y, hout, cout, Wp)
    else:
        fnn_rnn_forward_d(&d, X, Wih, Whh, bih, bhh, h0, c0, XP, HP, Hs, Cs, Gs, Y, hout, cout, NULL)


cdef void rnn_backward_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units,
                           bint reverse, const int *perm, const int *n_active, const unsigned char *mask,
                           int n_threads, const floating *X, const floating *Wih, const floating *Whh,
                           const floating *Hs, const floating *Cs, const floating *Gs, const floating *dY,
                           const floating *dhout, const floating *dcout, floating *dH, floating *dC, floating *dGt,
                           floating *dGo, floating *dX, floating *dWih, floating *dWhh, floating *dbih,
                           floating *dbhh, floating *dh0, floating *dc0, double *norms, floating *Wp) noexcept nogil:
    cdef fnn_rnn_dims d = _raw_dims(cell, n, steps, n_in, units, reverse, perm, n_active, mask, n_threads)
    if floating is float:
        fnn_rnn_backward_f(&d, X, Wih, Whh, Hs, Cs, Gs, dY, dhout, dcout, dH, dC, dGt, dGo, dX, dWih, dWhh, dbih,
                           dbhh, dh0, dc0, norms, Wp)
    else:
        fnn_rnn_backward_d(&d, X, Wih, Whh, Hs, Cs, Gs, dY, dhout, dcout, dH, dC, dGt, dGo, dX, dWih, dWhh, dbih,
                           dbhh, dh0, dc0, norms, NULL)


cdef int rnn_gates(int cell) noexcept nogil:
    return fnn_rnn_gates(cell)


cdef int rnn_saved(int cell) noexcept nogil:
    return fnn_rnn_saved(cell)


cdef Py_ssize_t rnn_packed_size(int cell, Py_ssize_t n_in, Py_ssize_t units, int n_threads) noexcept nogil:
    return fnn_rnn_packed_size(cell, n_in, units, n_threads)


def rnn_forward(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units, bint reverse,
                const int[::1] perm, const int[::1] n_active, const unsigned char[:, ::1] mask,
                const floating[::1] X, const floating[::1] W_ih, const floating[::1] W_hh,
                const floating[::1] b_ih, const floating[::1] b_hh, const floating[::1] h0,
                const floating[::1] c0, floating[::1] XP, floating[::1] HP, floating[::1] Hs, floating[::1] Cs,
                floating[::1] Gs, floating[::1] Y, floating[::1] hout, floating[::1] cout, int n_threads=1,
                floating[::1] Wp=None):
    """Forward over the sequence (see the module docstring for the shapes).  IN: X, the weights and biases,
    h0 / c0 (None: zeros), the row plan (perm, n_active, mask: mask None unless mask_plan's mode is 1).
    SCRATCH: XP, HP.  OUT: Hs, Cs (LSTM; else may be None), Gs (SimpleRNN: may be None), Y (None: not kept),
    hout, cout (LSTM; may be None).  Wp: None, or (float32) packed_size(cell, n_in, units, n_threads) floats of
    scratch for the packed per-step GEMMs (W_hh and W_ih packed once per call); float64 ignores it."""
    cdef fnn_rnn_dims d = _dims(cell, n, steps, n_in, units, reverse, perm, n_active, mask, n_threads)
    cdef Py_ssize_t GU = fnn_rnn_gates(cell) * units, SV = fnn_rnn_saved(cell) * units
    cdef bint lstm = cell == FNN_RNN_LSTM
    _need("X", X, n * steps * n_in)
    _need("W_ih", W_ih, n_in * GU)
    _need("W_hh", W_hh, units * GU)
    _need("b_ih", b_ih, GU)
    _need("b_hh", b_hh, GU)
    _opt("h0", h0, n * units)
    _opt("c0", c0, n * units)
    _need("XP", XP, n * steps * GU)
    _need("HP", HP, n * GU)
    _need("Hs", Hs, (steps + 1) * n * units)
    if lstm:
        _need("Cs", Cs, (steps + 1) * n * units)
    if SV:
        _need("Gs", Gs, steps * n * SV)
    _opt("Y", Y, n * steps * units)
    _need("hout", hout, n * units)
    _opt("cout", cout, n * units)
    if c0 is not None and not lstm:
        raise ValueError("rnn: c0 is for LSTM only")
    _opt("Wp", Wp, fnn_rnn_packed_size(cell, n_in, units, n_threads))
    cdef floating *pWp = _p(Wp) if floating is float else NULL
    cdef const floating *pX = _cp(X)
    cdef const floating *pWih = _cp(W_ih)
    cdef const floating *pWhh = _cp(W_hh)
    cdef const floating *pbih = _cp(b_ih)
    cdef const floating *pbhh = _cp(b_hh)
    cdef const floating *ph0 = _cp(h0)
    cdef const floating *pc0 = _cp(c0)
    cdef floating *pXP = _p(XP)
    cdef floating *pHP = _p(HP)
    cdef floating *pHs = _p(Hs)
    cdef floating *pCs = _p(Cs)
    cdef floating *pGs = _p(Gs)
    cdef floating *pY = _p(Y)
    cdef floating *phout = _p(hout)
    cdef floating *pcout = _p(cout)
    with nogil:
        rnn_forward_raw(cell, n, steps, n_in, units, reverse, d.perm, d.n_active, d.mask, n_threads, pX, pWih, pWhh,
                        pbih, pbhh, ph0, pc0, pXP, pHP, pHs, pCs, pGs, pY, phout, pcout, pWp)


def rnn_backward(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units, bint reverse,
                 const int[::1] perm, const int[::1] n_active, const unsigned char[:, ::1] mask,
                 const floating[::1] X, const floating[::1] W_ih, const floating[::1] W_hh,
                 const floating[::1] Hs, const floating[::1] Cs, const floating[::1] Gs,
                 const floating[::1] dY, const floating[::1] dhout, const floating[::1] dcout,
                 floating[::1] dH, floating[::1] dC, floating[::1] dGt, floating[::1] dGo, floating[::1] dX,
                 floating[::1] dW_ih, floating[::1] dW_hh, floating[::1] db_ih, floating[::1] db_hh,
                 floating[::1] dh0, floating[::1] dc0, double[::1] norms, int n_threads=1,
                 floating[::1] Wp=None):
    """Backpropagation through time of rnn_forward (same plan and stored Hs, Cs, Gs).  IN: dY (the gradient
    of Y; None: zero), dhout / dcout (of the last state; None: zero).  SCRATCH: dH, dC (LSTM), dGt, dGo.
    OUT (overwritten): dW_ih, dW_hh, db_ih, db_hh; dX, dh0, dc0 (None: not computed); norms ((steps,) float64 or
    None: the L2 norm over the batch of the gradient reaching the state after each processing step).  Wp: as in
    rnn_forward (W_hh^T is packed into it once per call)."""
    cdef fnn_rnn_dims d = _dims(cell, n, steps, n_in, units, reverse, perm, n_active, mask, n_threads)
    cdef Py_ssize_t GU = fnn_rnn_gates(cell) * units, SV = fnn_rnn_saved(cell) * units
    cdef bint lstm = cell == FNN_RNN_LSTM
    _need("X", X, n * steps * n_in)
    _need("W_ih", W_ih, n_in * GU)
    _need("W_hh", W_hh, units * GU)
    _need("Hs", Hs, (steps + 1) * n * units)
    if lstm:
        _need("Cs", Cs, (steps + 1) * n * units)
        _need("dC", dC, n * units)
    if SV:
        _need("Gs", Gs, steps * n * SV)
    _opt("dY", dY, n * steps * units)
    _opt("dhout", dhout, n * units)
    _opt("dcout", dcout, n * units)
    _need("dH", dH, n * units)
    _need("dGt", dGt, steps * n * GU)
    _need("dGo", dGo, n * steps * GU)
    _opt("dX", dX, n * steps * n_in)
    _need("dW_ih", dW_ih, n_in * GU)
    _need("dW_hh", dW_hh, units * GU)
    _need("db_ih", db_ih, GU)
    _need("db_hh", db_hh, GU)
    _opt("dh0", dh0, n * units)
    _opt("dc0", dc0, n * units)
    if norms is not None and norms.shape[0] != steps:
        raise ValueError(f"rnn: norms has {norms.shape[0]} elements, expected {steps}")
    cdef double *np_ = &norms[0] if (norms is not None and steps > 0) else NULL
    _opt("Wp", Wp, fnn_rnn_packed_size(cell, n_in, units, n_threads))
    cdef floating *pWp = _p(Wp) if floating is float else NULL
    cdef const floating *pX = _cp(X)
    cdef const floating *pWih = _cp(W_ih)
    cdef const floating *pWhh = _cp(W_hh)
    cdef const floating *pHs = _cp(Hs)
    cdef const floating *pCs = _cp(Cs)
    cdef const floating *pGs = _cp(Gs)
    cdef const floating *pdY = _cp(dY)
    cdef const floating *pdh = _cp(dhout)
    cdef const floating *pdc = _cp(dcout)
    cdef floating *pdH = _p(dH)
    cdef floating *pdC = _p(dC)
    cdef floating *pdGt = _p(dGt)
    cdef floating *pdGo = _p(dGo)
    cdef floating *pdX = _p(dX)
    cdef floating *pdWih = _p(dW_ih)
    cdef floating *pdWhh = _p(dW_hh)
    cdef floating *pdbih = _p(db_ih)
    cdef floating *pdbhh = _p(db_hh)
    cdef floating *pdh0 = _p(dh0)
    cdef floating *pdc0 = _p(dc0)
    with nogil:
        rnn_backward_raw(cell, n, steps, n_in, units, reverse, d.perm, d.n_active, d.mask, n_threads, pX, pWih,
                         pWhh, pHs, pCs, pGs, pdY, pdh, pdc, pdH, pdC, pdGt, pdGo, pdX, pdWih, pdWhh, pdbih, pdbhh,
                         pdh0, pdc0, np_, pWp)


def packed_size(int cell, Py_ssize_t n_in, Py_ssize_t units, int n_threads=1):
    """Floats of the float32 packing buffer (Wp) of a layer run with n_threads: the forward's W_hh and W_ih, then
    the backward's W_hh^T and W_ih^T, share it; past them the scratch of the per-step weight gradients, and for
    each thread past the first its own scratch and gradient accumulators."""
    _check_cell(cell)
    return fnn_rnn_packed_size(cell, n_in, units, n_threads)


def set_packed_isa(int cap):
    """Cap the packed per-step kernel (test hook): 0 always the BLAS, 1 at most AVX2+FMA, 2 the best the CPU has.
    Returns the kernel in use: 0 BLAS, 1 AVX2+FMA, 2 AVX-512."""
    return fnn_rnn_set_isa(cap)


def exp_f32(const float[::1] x, float[::1] out):
    """out = e^x with the kernels' vectorized float32 exp (test twin)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _need("out", out, n)
    with nogil:
        for i in range(n):
            out[i] = fnn_exp_f(x[i])


def sigmoid_f32(const float[::1] x, float[::1] out):
    """out = sigmoid(x) with the kernels' vectorized float32 sigmoid (test twin)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _need("out", out, n)
    with nogil:
        for i in range(n):
            out[i] = fnn_sigmoid_vec_f(x[i])
