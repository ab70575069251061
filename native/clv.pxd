cdef double log_gamma(double x) noexcept nogil
cdef double digamma(double x) noexcept nogil
cdef double bgnbd_ll_one(double x, double t_x, double T, double r,
                         double alpha, double a, double b) noexcept nogil
cdef double p_alive_c(double x, double t_x, double T, double r,
                      double alpha, double a, double b) noexcept nogil
