# Types and small helpers shared by every kernel module.
# Kernels take caller-owned C-contiguous memoryviews (inputs const), never allocate, run nogil, take n_threads.

ctypedef fused floating:
    float
    double

cdef extern from "fnn_math.h" nogil:
    double fnn_sigmoid_d(double x)
    float fnn_sigmoid_f(float x)
    double fnn_log1pexp_d(double x)
    float fnn_log1pexp_f(float x)


# Below this many elements of work per thread a parallel region costs more than it saves.
cdef enum:
    FNN_MIN_PER_THREAD = 16384
    # Activations (bias + activation after a GEMM, and their backward) split earlier: the GEMM before them ran
    # on every thread, so a single thread would first pull the other cores' parts of Z through the cache (at 2
    # threads, W1's 64x256 bias + ReLU took 12 us on one thread against 4 us at 1 thread, 8 us split).
    FNN_MIN_ACT_PER_THREAD = 4096
    # The plan's batch gather: copying random rows is bound by memory latency, so two threads fetch twice
    # the rows at a time (W1: 64 rows of 784 floats, 24 -> 15 us).
    FNN_MIN_GATHER_PER_THREAD = 8192


cdef inline int threads_for(Py_ssize_t work, int n_threads, Py_ssize_t min_per_thread) noexcept nogil:
    """How many threads to give `work` units: at most n_threads, at least min_per_thread units each."""
    cdef Py_ssize_t t = work // min_per_thread
    if t < 1:
        return 1
    if t < n_threads:
        return <int>t
    return n_threads if n_threads > 0 else 1


cdef inline floating f_sigmoid(floating x) noexcept nogil:
    if floating is float:
        return fnn_sigmoid_f(x)
    else:
        return fnn_sigmoid_d(x)


cdef inline floating f_log1pexp(floating x) noexcept nogil:
    if floating is float:
        return fnn_log1pexp_f(x)
    else:
        return fnn_log1pexp_d(x)
