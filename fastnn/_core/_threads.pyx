# cython: boundscheck=False, wraparound=False, cdivision=True
"""Thread control for the OpenMP kernels and OpenBLAS as one knob, and a memoryview twin of gemm for tests."""

from fastnn._core._common cimport floating
from fastnn._core cimport _blas

cdef extern from "fnn_threads.h" nogil:
    int fnn_have_openmp()
    int fnn_omp_max_threads()
    void fnn_threads_init()
    void fnn_set_num_threads(int n)
    int fnn_use_shared_pool(int on)
    int fnn_in_forked_child()

cdef extern from "cblas.h" nogil:
    int scipy_openblas_get_num_threads()
    char *scipy_openblas_get_config()
    char *scipy_openblas_get_corename()

# The ISA path of the runtime dispatch, by the checks the dispatch itself makes: FNN_CLONES's target_clones
# resolver takes the avx512f clone (not in an FNN_CLONES_MAX_AVX2 build), else the avx2 one, else the baseline
# (fnn_dispatch.h); the hand-written FMA kernels take fnn_fma_isa's path, which FASTNN_MAX_CPU_ISA may cap below
# the loops' (then the loops' path follows in parentheses).
cdef extern from *:
    """
    #include <stdio.h>
    #include <string.h>
    #include "fnn_dispatch.h"
    static const char *fnn_isa_path(void) {
    #if FNN_HAVE_CLONES
        static char buf[64];
        static const char *const paths[] = {"baseline", "avx2", "avx512f"};
        const char *loops = paths[fnn_cpu_isa()], *kernels;
        int k = fnn_fma_isa();
        /* the kernels' path, and the loops' width that goes with it */
        const char *width = k == 2 ? "avx512f" : k == 1 ? "avx2" : "baseline";
        kernels = k == 2 ? "avx512f" : k == 1 ? "avx2+fma" : "baseline";
        if (k == 0 && strcmp(loops, "avx2") == 0 && !__builtin_cpu_supports("fma")) kernels = width = "avx2";
        int capped_build = 0;     /* an FNN_CLONES_MAX_AVX2 build on a CPU with AVX-512F */
    #ifdef FNN_CLONES_MAX_AVX2
        capped_build = __builtin_cpu_supports("avx512f") != 0;
    #endif
        int other_loops = strcmp(width, loops) != 0;
        if (!other_loops && !capped_build) return kernels;
        snprintf(buf, sizeof buf, "%s (%s%s%s%s)", kernels, other_loops ? "loops " : "", other_loops ? loops : "",
                 other_loops && capped_build ? "; " : "", capped_build ? "AVX2 build" : "");
        return buf;
    #else
        return "baseline (no runtime dispatch in this build)";
    #endif
    }
    """
    const char *fnn_isa_path()
    int fnn_isa_env_cap()

cdef int _n_threads = 1
cdef int _default_threads = 1     # the count at import: OpenMP's default (the cores, or OMP_NUM_THREADS)
cdef bint _adaptive = False       # fit may run chunks on fewer threads when that measures faster (``adaptive``)


def _init():
    """Put OpenBLAS's jobs on the OpenMP team, start both at the same thread count, and install the fork
    handlers (``_after_fork_in_child``)."""
    global _n_threads, _default_threads, _adaptive
    fnn_threads_init()
    n = fnn_omp_max_threads()
    _n_threads = _default_threads = n if n > 0 else 1
    fnn_set_num_threads(_n_threads)
    import os
    # a thread count the user chose (OMP_NUM_THREADS, or set_num_threads(n) later) stays fixed
    _adaptive = "OMP_NUM_THREADS" not in os.environ
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    if fnn_isa_env_cap() < 0:
        import warnings
        warnings.warn(f"FASTNN_MAX_CPU_ISA={os.environ.get('FASTNN_MAX_CPU_ISA')!r} is not one of 'avx512f', "
                      f"'avx2', 'baseline': ignored, the kernels take the CPU's path ({isa_path()})", RuntimeWarning,
                      stacklevel=2)


def _after_fork_in_child():
    """In a child made by fork: run single-threaded (fastnn's kernels and its BLAS).

    GNU OpenMP's thread pool does not survive fork: the child has the parent's pool bookkeeping but not its
    threads, and its first parallel region of more than one thread would wait for them forever.  As PyTorch
    does, the child starts at one thread (the C handler in csrc/fnn_threads.h has already set OpenMP's count).
    ``set_num_threads`` in the child then refuses more than one thread."""
    global _n_threads, _adaptive
    _n_threads = 1
    _adaptive = False
    fnn_set_num_threads(1)


def in_forked_child():
    """Whether this process was made by fork from a process that had loaded fastnn (it runs single-threaded)."""
    return bool(fnn_in_forked_child())


def set_num_threads(n):
    """Set the number of threads of fastnn's kernels and of its BLAS (one pool for both).

    n: a count >= 1, fixed from then on (the reproducible choice: with a fixed count, training gives the same
    weights run after run); or "auto", the default at import (the cores, unless OMP_NUM_THREADS fixes the
    count): up to that many threads, and ``fit`` measures now and then
    whether one thread trains faster (another busy process on the cores stalls a team that waits for all its
    threads) and runs on one thread while it does.  Different thread counts can differ in the last bits, so an
    "auto" run on a machine whose load changes is not bitwise reproducible.

    In a child made by fork (os.fork, multiprocessing's "fork" method) fastnn runs on one thread and only
    ``set_num_threads(1)`` is accepted (RuntimeError otherwise): see ``_after_fork_in_child``."""
    global _n_threads, _adaptive
    if isinstance(n, str) and n == "auto":
        if fnn_in_forked_child():
            return
        _n_threads = _default_threads
        _adaptive = True
        fnn_set_num_threads(_n_threads)
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int or \"auto\", got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > 1 and fnn_in_forked_child():
        raise RuntimeError(f"set_num_threads: this process was made by fork, after which GNU OpenMP's thread "
                           f"pool cannot run more than one thread (a parallel region would wait forever for the "
                           f"parent's threads); fastnn runs single-threaded here.  For {n} threads per worker, "
                           f"start the workers with multiprocessing's 'spawn' or 'forkserver' method")
    _n_threads = n
    _adaptive = False
    fnn_set_num_threads(n)


def adaptive():
    """Whether the thread count is "auto" (``set_num_threads``): fit may then train on fewer threads than
    get_num_threads() while that measures faster."""
    return bool(_adaptive) and _n_threads > 1


def set_active_threads(int n):
    """Run the kernels and the BLAS on n threads until the next call, without changing the count set by
    set_num_threads (fit's thread tuner: a chunk of batches on fewer threads, then back)."""
    fnn_set_num_threads(max(1, n))


def get_num_threads():
    """The number of threads fastnn's kernels use (the BLAS uses the same).

    That is the count given to set_num_threads, or less while an OpenMP limit is lower (e.g. inside
    ``threadpoolctl.threadpool_limits(1)``, which limits OpenMP through omp_set_num_threads).
    """
    cdef int omp = fnn_omp_max_threads()
    return omp if 0 < omp < _n_threads else _n_threads


def blas_num_threads():
    """The thread count OpenBLAS reports (threadpoolctl may change it behind fastnn's back)."""
    return scipy_openblas_get_num_threads()


def blas_config():
    """OpenBLAS's build description (version, kernel, threading)."""
    return scipy_openblas_get_config().decode()


def blas_corename() -> str:
    """The kernel family OpenBLAS chose for this CPU at load time (its DYNAMIC_ARCH core type, e.g. "Haswell",
    "SkylakeX", "Zen")."""
    return scipy_openblas_get_corename().decode()


def isa_path() -> str:
    """The instruction-set path fastnn's runtime dispatch takes on this CPU: "avx512f" (the AVX-512 clones of the
    FNN_CLONES loops and the AVX-512 hand-written kernels), "avx2+fma" (the AVX2 clones and the AVX2+FMA kernels),
    "avx2" (AVX2 clones, the BLAS where the kernels would run), or "baseline" (SSE2; also every build without
    runtime dispatch: another compiler, system or architecture, or FNN_NO_CLONES).

    The environment variable ``FASTNN_MAX_CPU_ISA`` ("avx2" or "baseline") caps the hand-written kernels; the loops
    keep the CPU's path, which then follows in parentheses: "avx2+fma (loops avx512f)".  A build made with
    ``FASTNN_BUILD_MAX_ISA=avx2`` says "(AVX2 build)" on a CPU with AVX-512F."""
    return fnn_isa_path().decode()


def use_shared_pool(bint on=True):
    """Run OpenBLAS's parallel jobs on fastnn's OpenMP team (True, the default) or on OpenBLAS's own pool.

    Only for measuring what the shared pool buys (benchmarks/threads.py); returns whether it is in use.
    """
    return bool(fnn_use_shared_pool(on))


def have_openmp():
    """Whether the compiled core was built with OpenMP."""
    return bool(fnn_have_openmp())


def gemm(bint trans_a, bint trans_b, double alpha, const floating[:, ::1] A, const floating[:, ::1] B,
         double beta, floating[:, ::1] C):
    """C := alpha * op(A).op(B) + beta * C (row-major, through the library's BLAS).  Shapes are checked here."""
    cdef int M = A.shape[1] if trans_a else A.shape[0]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    cdef int KB = B.shape[1] if trans_b else B.shape[0]
    cdef int N = B.shape[0] if trans_b else B.shape[1]
    if K != KB or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"gemm: op(A) is {M}x{K}, op(B) is {KB}x{N}, C is {C.shape[0]}x{C.shape[1]}")
    cdef Py_ssize_t i, j
    if M == 0 or N == 0:
        return
    if K == 0:  # op(A).op(B) is all zeros; BLAS would reject the leading dimensions
        for i in range(M):
            for j in range(N):
                C[i, j] = <floating>(beta * C[i, j]) if beta != 0 else 0
        return
    with nogil:
        _blas.gemm(trans_a, trans_b, M, N, K, <floating>alpha, &A[0, 0], A.shape[1],
                   &B[0, 0], B.shape[1], <floating>beta, &C[0, 0], C.shape[1])
