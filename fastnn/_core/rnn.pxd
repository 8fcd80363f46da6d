# The recurrent kernels on raw pointers (fastnn/_core/rnn.pyx), for the def wrappers there and for the compiled
# training plan (fastnn/_core/plan.pyx): both run these, so the two paths share one code path (the kernels of
# csrc/fnn_rnn.h compiled once, in rnn.pyx's extension, with its ISA setting).  The sizes and the row plan are
# those of rnn.pyx's module docstring; the caller has checked every buffer's size (rnn_forward / rnn_backward do,
# the plan sizes its buffers once when it is built).  NULL stands for an optional array left out (None).

from libc.stdint cimport int64_t

from fastnn._core._common cimport floating

# the forward over the sequence (rnn.pyx rnn_forward); Wp: the float32 packing scratch of rnn_packed_size
# elements for n_threads threads, or NULL (float64 ignores it)
cdef void rnn_forward_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units, bint reverse,
                          const int *perm, const int *n_active, const unsigned char *mask, int n_threads,
                          const floating *X, const floating *Wih, const floating *Whh, const floating *bih,
                          const floating *bhh, const floating *h0, const floating *c0, floating *XP, floating *HP,
                          floating *Hs, floating *Cs, floating *Gs, floating *Y, floating *hout, floating *cout,
                          floating *Wp) noexcept nogil
# the same with an Embedding feeding the layer (the compiled plan): X's row of (row o, time t) is row ids[o * steps +
# t] of emb (vocab, n_in); the float32 packed forward multiplies the table into xtab (vocab * G * units scratch)
# once and reads each step's input projection from it (the same bits as from X's rows); NULLs: rnn_forward_raw
cdef void rnn_forward_emb_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units,
                              bint reverse, const int *perm, const int *n_active, const unsigned char *mask,
                              int n_threads, const floating *X, const floating *Wih, const floating *Whh,
                              const floating *bih, const floating *bhh, const floating *h0, const floating *c0,
                              floating *XP, floating *HP, floating *Hs, floating *Cs, floating *Gs, floating *Y,
                              floating *hout, floating *cout, floating *Wp, const int64_t *ids, const floating *emb,
                              Py_ssize_t vocab, floating *xtab) noexcept nogil
# backpropagation through time (rnn.pyx rnn_backward)
cdef void rnn_backward_raw(int cell, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t n_in, Py_ssize_t units,
                           bint reverse, const int *perm, const int *n_active, const unsigned char *mask,
                           int n_threads, const floating *X, const floating *Wih, const floating *Whh,
                           const floating *Hs, const floating *Cs, const floating *Gs, const floating *dY,
                           const floating *dhout, const floating *dcout, floating *dH, floating *dC, floating *dGt,
                           floating *dGo, floating *dX, floating *dWih, floating *dWhh, floating *dbih,
                           floating *dbhh, floating *dh0, floating *dc0, double *norms, floating *Wp) noexcept nogil
# the row plan of a call for an (n, steps) uint8 mask (NULL: none) into perm (n,), n_active (steps,), scratch
# (n + steps + 1,): returns the mode (rnn.pyx mask_plan: 0 no mask, 1 general, 2 right-padded)
cdef int rnn_mask_plan(const unsigned char *mask, Py_ssize_t n, Py_ssize_t steps, bint reverse, int *perm,
                       int *n_active, int *scratch) noexcept nogil
# G (1, 4, 3) and the values stored per row, step and unit (0 or 4) of a cell; the float32 packing scratch size
cdef int rnn_gates(int cell) noexcept nogil
cdef int rnn_saved(int cell) noexcept nogil
cdef Py_ssize_t rnn_packed_size(int cell, Py_ssize_t n_in, Py_ssize_t units, int n_threads) noexcept nogil
