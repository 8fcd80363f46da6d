/* fnn_threads.h: the OpenMP shim and the single thread pool.
 *
 * fastnn's kernels use OpenMP; OpenBLAS (scipy-openblas32) has its own pthread pool.  Two pools on the same
 * cores spin against each other (25x slowdowns measured, see shared BUILD_NOTES).  We therefore hand OpenBLAS
 * a callback that runs its parallel jobs on the OpenMP team: one pool for the whole process.
 * Everything compiles without OpenMP too: then kernels and the callback run on one thread. */
#ifndef FNN_THREADS_H
#define FNN_THREADS_H
#include <stddef.h>
#include <pthread.h>
#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int fnn_have_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int fnn_omp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void fnn_omp_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* OpenBLAS calls this with `numjobs` jobs that may wait on each other: each needs a thread of its own. */
static void fnn_blas_threads_callback(int sync, openblas_dojob_callback dojob, int numjobs,
                                      size_t jobdata_elsize, void *jobdata, int dojob_data) {
    (void)sync;
    int i;
#ifdef _OPENMP
#pragma omp parallel for num_threads(numjobs) schedule(static, 1)
#endif
    for (i = 0; i < numjobs; i++) {
        dojob(i, (char *)jobdata + (size_t)i * jobdata_elsize, dojob_data);
    }
}

/* Fork: GNU OpenMP's thread pool does not survive fork(); a child that opens a parallel region of more than
 * one thread waits forever for the parent's workers.  As PyTorch does, the child starts single-threaded: this
 * handler (every fork, also one made from C) sets the child's OpenMP thread count to 1 and raises the flag; the
 * Python side (fastnn/_core/_threads.pyx, os.register_at_fork) also puts OpenBLAS at 1 thread, whose parallel
 * jobs would otherwise open a region of several threads through the callback above. */
static volatile int fnn_forked_child = 0;

static void fnn_atfork_child(void) {
    fnn_forked_child = 1;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
}

static int fnn_in_forked_child(void) { return fnn_forked_child; }

/* Install the callback (OpenMP builds only) and allow one nested level, so that a threaded BLAS call made
 * from inside a parallel region cannot deadlock; register the fork handler once. */
static void fnn_threads_init(void) {
    static int registered = 0;
    if (!registered) {
        registered = 1;
        pthread_atfork(NULL, NULL, fnn_atfork_child);
    }
#ifdef _OPENMP
    omp_set_max_active_levels(2);
    scipy_openblas_set_threads_callback_function(fnn_blas_threads_callback);
#endif
}

/* 1: OpenBLAS's jobs run on the OpenMP team (the default); 0: OpenBLAS uses its own pthread pool.
 * Returns whether the shared pool is in use afterwards (always 0 without OpenMP). */
static int fnn_use_shared_pool(int on) {
#ifdef _OPENMP
    scipy_openblas_set_threads_callback_function(on ? fnn_blas_threads_callback : NULL);
    return on != 0;
#else
    (void)on;
    return 0;
#endif
}

static void fnn_set_num_threads(int n) {
    fnn_omp_set_threads(n);
    scipy_openblas_set_num_threads(n);
}
#endif
