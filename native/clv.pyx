"""CLV kernels: BG/NBD and Gamma-Gamma for one customer, and the sums and
gradients the maximum-likelihood fit needs.

The pure-Python twin is ``native/clv_py.py``: the same algorithms, operation
for operation, so the two agree to rounding.

BG/NBD's conditional expectation is usually written with the Gauss
hypergeometric function 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t)), whose series
fails (overflow, NaN, no convergence) for large x, long horizons or
a+b+x-1 < 0. Here it is computed from the identity it comes from: given the
customer is alive, the dropout probability p has a Beta(a, b+x) posterior and
the purchase rate a Gamma(r+x, alpha+T) one, so

    E[Y(t) | alive] = E_p[(1 - (1 + p t / (alpha+T))^-(r+x)) / p],

a one-dimensional integral over p in (0, 1), evaluated by tanh-sinh
quadrature in log space, which handles the endpoint singularities of the
Beta density for any a, b > 0.
"""

from libc.math cimport cosh, exp, expm1, fabs, log, log1p, pi, sinh

cdef enum:
    MAX_PERIODS = 1200

cdef double _H0 = 0.125
cdef double _H_MIN = 1.0 / 1024.0
cdef double _U_MAX = 12.0
cdef double _TOLERANCE = 1e-13
cdef double _SMALL = 1e-6
cdef double _HALF_LOG_2PI = 0.91893853320467274178


cdef double digamma(double x) noexcept nogil:
    """Digamma for x > 0: recurrence up to 6, then the asymptotic series."""
    cdef double result = 0.0
    cdef double inv, inv2

    while x < 6.0:
        result -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return result + log(x) - 0.5 * inv - inv2 * (
        1.0 / 12.0 - inv2 * (
            1.0 / 120.0 - inv2 * (
                1.0 / 252.0 - inv2 * (
                    1.0 / 240.0 - inv2 * (1.0 / 132.0)))))


cdef double log_gamma(double x) noexcept nogil:
    """log Gamma(x) for x > 0: recurrence up to 7, then Stirling's series.

    Written out here (and in the twin) rather than taken from libm, so that
    the native and pure-Python kernels give the same bits.
    """
    cdef double shift = 1.0
    cdef double inv, inv2

    while x < 7.0:
        shift *= x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return (
        (x - 0.5) * log(x) - x + _HALF_LOG_2PI - log(shift)
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (
            1.0 / 1260.0 - inv2 * (1.0 / 1680.0 - inv2 * (
                1.0 / 1188.0 - inv2 * (691.0 / 360360.0
                                       - inv2 * (1.0 / 156.0)))))))
    )


cdef inline double _log_add(double left, double right) noexcept nogil:
    if left < right:
        left, right = right, left
    return left + log1p(exp(right - left))


cdef double bgnbd_ll_one(double x, double t_x, double T, double r,
                         double alpha, double a, double b) noexcept nogil:
    cdef double a1, a2, a3, a4

    a1 = log_gamma(r + x) - log_gamma(r) + r * log(alpha)
    a2 = log_gamma(a + b) + log_gamma(b + x) - log_gamma(b) - log_gamma(a + b + x)
    a3 = -(r + x) * log(alpha + T)
    if x > 0:
        a4 = log(a) - log(b + x - 1.0) - (r + x) * log(alpha + t_x)
        return a1 + a2 + _log_add(a3, a4)
    return a1 + a2 + a3


cdef double p_alive_c(double x, double t_x, double T, double r,
                      double alpha, double a, double b) noexcept nogil:
    cdef double odds

    if x <= 0:
        return 1.0
    odds = (log(a) - log(b + x - 1.0)
            + (r + x) * (log(alpha + T) - log(alpha + t_x)))
    if odds >= 0:
        return exp(-odds) / (1.0 + exp(-odds))
    return 1.0 / (1.0 + exp(odds))


def bgnbd_log_likelihood(double x, double t_x, double T, double r,
                         double alpha, double a, double b):
    """Log-likelihood of one customer's (x, t_x, T) under BG/NBD."""
    return bgnbd_ll_one(x, t_x, T, r, alpha, a, b)


def p_alive(double x, double t_x, double T, double r, double alpha,
            double a, double b):
    """P(alive at T | x, t_x, T)."""
    return p_alive_c(x, t_x, T, r, alpha, a, b)


def bgnbd_sum(double[:] x, double[:] t_x, double[:] T, double r,
              double alpha, double a, double b, double[:] count=None):
    """Total log-likelihood and its gradient in (r, alpha, a, b).

    `count`, when given, is how many customers share each (x, t_x, T).
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double ll = 0.0, d_r = 0.0, d_alpha = 0.0, d_a = 0.0, d_b = 0.0
    cdef double xi, a3, a4, top, w3, w4, log_t, log_tx, ci
    cdef double psi_r = digamma(r), psi_b = digamma(b)
    cdef double psi_ab = digamma(a + b), log_alpha = log(alpha)

    for i in range(n):
        xi = x[i]
        ci = 1.0 if count is None else count[i]
        log_t = log(alpha + T[i])
        a3 = -(r + xi) * log_t
        if xi > 0:
            log_tx = log(alpha + t_x[i])
            a4 = log(a) - log(b + xi - 1.0) - (r + xi) * log_tx
            top = _log_add(a3, a4)
            w3 = exp(a3 - top)
            w4 = exp(a4 - top)
        else:
            log_tx = 0.0
            top = a3
            w3 = 1.0
            w4 = 0.0
        ll += ci * (log_gamma(r + xi) - log_gamma(r) + r * log_alpha
                    + log_gamma(a + b) + log_gamma(b + xi) - log_gamma(b)
                    - log_gamma(a + b + xi) + top)
        d_r += ci * (digamma(r + xi) - psi_r + log_alpha
                     - w3 * log_t - w4 * log_tx)
        d_alpha += ci * (r / alpha - w3 * (r + xi) / (alpha + T[i])
                         - w4 * (r + xi) / (alpha + t_x[i]))
        d_a += ci * (psi_ab - digamma(a + b + xi) + w4 / a)
        d_b += ci * (psi_ab + digamma(b + xi) - psi_b - digamma(a + b + xi)
                     - (w4 / (b + xi - 1.0) if xi > 0 else 0.0))
    return ll, (d_r, d_alpha, d_a, d_b)


def gamma_gamma_sum(double[:] x, double[:] mean_value, double p, double q,
                    double v, double[:] count=None):
    """Gamma-Gamma log-likelihood over repeat customers, with its gradient.

    `x` is the number of repeat transactions (> 0) and `mean_value` their
    mean value; `count`, when given, how many customers share each pair.
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double ll = 0.0, d_p = 0.0, d_q = 0.0, d_v = 0.0
    cdef double xi, mi, px, total, ci, psi_q = digamma(q), log_v = log(v)

    for i in range(n):
        xi = x[i]
        mi = mean_value[i]
        ci = 1.0 if count is None else count[i]
        px = p * xi
        total = xi * mi + v
        ll += ci * (log_gamma(px + q) - log_gamma(px) - log_gamma(q)
                    + q * log_v + (px - 1.0) * log(mi) + px * log(xi)
                    - (px + q) * log(total))
        d_p += ci * xi * (digamma(px + q) - digamma(px) + log(mi) + log(xi)
                          - log(total))
        d_q += ci * (digamma(px + q) - psi_q + log_v - log(total))
        d_v += ci * (q / v - (px + q) / total)
    return ll, (d_p, d_q, d_v)


def expected_order_value(double x, double mean_value, double p, double q,
                         double v):
    """Gamma-Gamma E[order value | x, mean]; the population mean for x = 0."""
    cdef double population = p * v / (q - 1.0)

    if x <= 0:
        return population
    return ((q - 1.0) * population + p * x * mean_value) / (p * x + q - 1.0)


cdef inline double _h_over_p(double p, double k, double m) noexcept nogil:
    # (1 - (1 + k p)^-m) / p, without cancellation for small k p.
    cdef double y = k * p

    if m * y < _SMALL:
        return m * k * (1.0 - 0.5 * (m + 1.0) * y
                        + (m + 1.0) * (m + 2.0) / 6.0 * y * y)
    return -expm1(-m * log1p(y)) / p


cdef struct Periods:
    double k[MAX_PERIODS]
    double discount[MAX_PERIODS]
    int count


cdef void _node(double u, double a, double beta, double m, double log_b,
                Periods* periods, double* plain, double* discounted) noexcept nogil:
    """The two integrands at one tanh-sinh node u, weight included."""
    cdef double s = 0.5 * pi * sinh(u)
    cdef double log_p, log_q, p, weight, previous, current, total
    cdef int j

    if s >= 0:
        log_p = -log1p(exp(-2.0 * s))
        log_q = -2.0 * s + log_p
    else:
        log_q = -log1p(exp(2.0 * s))
        log_p = 2.0 * s + log_q
    weight = log(pi * cosh(u)) + a * log_p + beta * log_q - log_b
    if weight < -745.0:
        plain[0] = 0.0
        discounted[0] = 0.0
        return
    weight = exp(weight)
    p = exp(log_p)
    previous = 0.0
    total = 0.0
    for j in range(periods.count):
        current = _h_over_p(p, periods.k[j], m)
        total += periods.discount[j] * (current - previous)
        previous = current
    plain[0] = weight * previous
    discounted[0] = weight * total


def alive_expectations(double x, double T, double r, double alpha, double a,
                       double b, times, discounts):
    """E[Y(t_K) | alive] and E[sum_j d_j (Y(t_j) - Y(t_j-1)) | alive]."""
    cdef Periods periods
    cdef double m = r + x, beta = b + x
    cdef double log_b = log_gamma(a) + log_gamma(beta) - log_gamma(a + beta)
    cdef double step = _H0, u, plain = 0.0, discounted = 0.0
    cdef double node_plain, node_disc, sum_plain, sum_disc
    cdef double estimate_plain, estimate_disc, new_plain, new_disc
    cdef int j

    if len(times) > MAX_PERIODS:
        raise ValueError(f"at most {<int>MAX_PERIODS} periods")
    periods.count = len(times)
    for j in range(periods.count):
        periods.k[j] = times[j] / (alpha + T)
        periods.discount[j] = discounts[j]
    if periods.count == 0 or periods.k[periods.count - 1] <= 0:
        return 0.0, 0.0

    _node(0.0, a, beta, m, log_b, &periods, &plain, &discounted)
    sum_plain, sum_disc = _sweep(step, step, a, beta, m, log_b, &periods,
                                 plain, discounted)
    plain += sum_plain
    discounted += sum_disc
    estimate_plain = plain * step
    estimate_disc = discounted * step
    while step > _H_MIN:
        sum_plain, sum_disc = _sweep(step, 0.5 * step, a, beta, m, log_b,
                                     &periods, plain, discounted)
        plain += sum_plain
        discounted += sum_disc
        step *= 0.5
        new_plain = plain * step
        new_disc = discounted * step
        if (fabs(new_plain - estimate_plain) <= _TOLERANCE * fabs(new_plain)
                and fabs(new_disc - estimate_disc)
                <= _TOLERANCE * fabs(new_disc)):
            return new_plain, new_disc
        estimate_plain = new_plain
        estimate_disc = new_disc
    return estimate_plain, estimate_disc


cdef tuple _sweep(double step, double offset, double a, double beta,
                  double m, double log_b, Periods* periods,
                  double reference_plain, double reference_disc):
    """Sum the nodes offset + j * step on both sides, until negligible."""
    cdef double sum_plain = 0.0, sum_disc = 0.0, u = offset
    cdef double p1, d1, p2, d2

    while u <= _U_MAX:
        _node(u, a, beta, m, log_b, periods, &p1, &d1)
        _node(-u, a, beta, m, log_b, periods, &p2, &d2)
        sum_plain += p1 + p2
        sum_disc += d1 + d2
        if (u > 1.0 and p1 + p2 <= 1e-17 * fabs(reference_plain + sum_plain)
                and d1 + d2 <= 1e-17 * fabs(reference_disc + sum_disc)):
            break
        u += step
    return sum_plain, sum_disc


def conditional_expected_purchases(double t, double x, double t_x, double T,
                                   double r, double alpha, double a,
                                   double b):
    """E[purchases in (T, T+t] | x, t_x, T] under BG/NBD."""
    plain, _ = alive_expectations(x, T, r, alpha, a, b, [t], [1.0])
    return p_alive_c(x, t_x, T, r, alpha, a, b) * plain


def expected_purchases(double t, double r, double alpha, double a, double b):
    """E[X(t)]: expected purchases of a new customer in (0, t]."""
    plain, _ = alive_expectations(0.0, 0.0, r, alpha, a, b, [t], [1.0])
    return plain


def value_terms(double x, double t_x, double T, double r, double alpha,
                double a, double b, times, discounts):
    """(P(alive), expected purchases by times[-1], discounted purchases).

    `times` are period ends (ascending) and `discounts` the discount factor
    applied to each period's expected purchases.
    """
    alive = p_alive_c(x, t_x, T, r, alpha, a, b)
    plain, discounted = alive_expectations(x, T, r, alpha, a, b, times,
                                            discounts)
    return alive, alive * plain, alive * discounted
