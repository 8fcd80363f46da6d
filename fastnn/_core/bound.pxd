# The NaN guard's update bound (bound.pyx), used by the compiled training plan (plan.pyx).
from fastnn._core._common cimport floating

cdef struct Bounds:
    double P        # max |p| over the parameter buffer (an upper bound of it is enough)
    double S0       # max |s0| (SGD: momentum_buffer; Adam: exp_avg; RMSprop: square_avg, Adagrad: sum, both >= 0)
    double S1       # max |s1| (Adam: exp_avg_sq, whose elements are also known to be >= 0; RMSprop: grad_avg)
    double S2       # max |s2| (Adam, amsgrad: max_exp_avg_sq; RMSprop: momentum_buffer)

cdef int scan_max(const floating *x, Py_ssize_t n, int n_threads, double *amax, double *amin) noexcept nogil
cdef bint sgd_safe(bint dbl, const Bounds *b, double G, bint has_buf, double lr, double momentum,
                   double dampening, double wd, bint nesterov, bint first) noexcept nogil
cdef bint adam_safe(bint dbl, const Bounds *b, double G, bint amsgrad, double lr, double beta1, double beta2,
                    double eps, double wd, bint decoupled, Py_ssize_t step) noexcept nogil
cdef bint rmsprop_safe(bint dbl, const Bounds *b, double G, bint centered, bint has_buf, double lr, double alpha,
                       double eps, double wd, double momentum, Bounds *nb) noexcept nogil
cdef bint adagrad_safe(bint dbl, const Bounds *b, double G, double clr, double wd, double eps,
                       Bounds *nb) noexcept nogil
