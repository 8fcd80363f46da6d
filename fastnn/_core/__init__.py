"""fastnn's compiled kernels (Cython/C, nogil, OpenMP, BLAS).  Not a public API: use the layers and models."""
