"""Pure-Python twin of ``native/clv.pyx``: the same algorithms, operation
for operation (see that module for the method and its reasons)."""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_PERIODS = 1200

_H0 = 0.125
_H_MIN = 1.0 / 1024.0
_U_MAX = 12.0
_TOLERANCE = 1e-13
_SMALL = 1e-6
_HALF_LOG_2PI = 0.91893853320467274178


def digamma(x: float) -> float:
    """Digamma for x > 0: recurrence up to 6, then the asymptotic series."""
    result = 0.0
    while x < 6.0:
        result -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return (
        result
        + math.log(x)
        - 0.5 * inv
        - inv2
        * (
            1.0 / 12.0
            - inv2
            * (
                1.0 / 120.0
                - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 * (1.0 / 132.0)))
            )
        )
    )


def log_gamma(x: float) -> float:
    """log Gamma(x) for x > 0: recurrence up to 7, then Stirling's series."""
    shift = 1.0
    while x < 7.0:
        shift *= x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return (
        (x - 0.5) * math.log(x)
        - x
        + _HALF_LOG_2PI
        - math.log(shift)
        + inv
        * (
            1.0 / 12.0
            - inv2
            * (
                1.0 / 360.0
                - inv2
                * (
                    1.0 / 1260.0
                    - inv2
                    * (
                        1.0 / 1680.0
                        - inv2
                        * (
                            1.0 / 1188.0
                            - inv2 * (691.0 / 360360.0 - inv2 * (1.0 / 156.0))
                        )
                    )
                )
            )
        )
    )


def _log_add(left: float, right: float) -> float:
    if left < right:
        left, right = right, left
    return left + math.log1p(math.exp(right - left))


def bgnbd_log_likelihood(
    x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float:
    """Log-likelihood of one customer's (x, t_x, T) under BG/NBD."""
    lgamma, log = log_gamma, math.log
    a1 = lgamma(r + x) - lgamma(r) + r * log(alpha)
    a2 = lgamma(a + b) + lgamma(b + x) - lgamma(b) - lgamma(a + b + x)
    a3 = -(r + x) * log(alpha + T)
    if x > 0:
        a4 = log(a) - log(b + x - 1.0) - (r + x) * log(alpha + t_x)
        return a1 + a2 + _log_add(a3, a4)
    return a1 + a2 + a3


def p_alive(
    x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float:
    """P(alive at T | x, t_x, T)."""
    if x <= 0:
        return 1.0
    log = math.log
    odds = log(a) - log(b + x - 1.0) + (r + x) * (log(alpha + T) - log(alpha + t_x))
    if odds >= 0:
        return math.exp(-odds) / (1.0 + math.exp(-odds))
    return 1.0 / (1.0 + math.exp(odds))


def bgnbd_sum(
    x: Sequence[float],
    t_x: Sequence[float],
    T: Sequence[float],
    r: float,
    alpha: float,
    a: float,
    b: float,
    count: Sequence[float] | None = None,
) -> tuple[float, tuple[float, float, float, float]]:
    """Total log-likelihood and its gradient in (r, alpha, a, b).

    `count`, when given, is how many customers share each (x, t_x, T).
    """
    lgamma, log, exp = log_gamma, math.log, math.exp
    ll = d_r = d_alpha = d_a = d_b = 0.0
    psi_r, psi_b, psi_ab = digamma(r), digamma(b), digamma(a + b)
    log_alpha = log(alpha)
    for i in range(len(x)):
        xi = float(x[i])
        ci = 1.0 if count is None else float(count[i])
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
        ll += ci * (
            lgamma(r + xi)
            - lgamma(r)
            + r * log_alpha
            + lgamma(a + b)
            + lgamma(b + xi)
            - lgamma(b)
            - lgamma(a + b + xi)
            + top
        )
        d_r += ci * (digamma(r + xi) - psi_r + log_alpha - w3 * log_t - w4 * log_tx)
        d_alpha += ci * (
            r / alpha
            - w3 * (r + xi) / (alpha + T[i])
            - w4 * (r + xi) / (alpha + t_x[i])
        )
        d_a += ci * (psi_ab - digamma(a + b + xi) + w4 / a)
        d_b += ci * (
            psi_ab
            + digamma(b + xi)
            - psi_b
            - digamma(a + b + xi)
            - (w4 / (b + xi - 1.0) if xi > 0 else 0.0)
        )
    return ll, (d_r, d_alpha, d_a, d_b)


def gamma_gamma_sum(
    x: Sequence[float],
    mean_value: Sequence[float],
    p: float,
    q: float,
    v: float,
    count: Sequence[float] | None = None,
) -> tuple[float, tuple[float, float, float]]:
    """Gamma-Gamma log-likelihood over repeat customers, with its gradient."""
    lgamma, log = log_gamma, math.log
    ll = d_p = d_q = d_v = 0.0
    psi_q, log_v = digamma(q), log(v)
    for i in range(len(x)):
        xi = float(x[i])
        mi = float(mean_value[i])
        ci = 1.0 if count is None else float(count[i])
        px = p * xi
        total = xi * mi + v
        ll += ci * (
            lgamma(px + q)
            - lgamma(px)
            - lgamma(q)
            + q * log_v
            + (px - 1.0) * log(mi)
            + px * log(xi)
            - (px + q) * log(total)
        )
        d_p += (
            ci * xi * (digamma(px + q) - digamma(px) + log(mi) + log(xi) - log(total))
        )
        d_q += ci * (digamma(px + q) - psi_q + log_v - log(total))
        d_v += ci * (q / v - (px + q) / total)
    return ll, (d_p, d_q, d_v)


def expected_order_value(
    x: float, mean_value: float, p: float, q: float, v: float
) -> float:
    """Gamma-Gamma E[order value | x, mean]; the population mean for x = 0."""
    population = p * v / (q - 1.0)
    if x <= 0:
        return population
    return ((q - 1.0) * population + p * x * mean_value) / (p * x + q - 1.0)


def _h_over_p(p: float, k: float, m: float) -> float:
    # (1 - (1 + k p)^-m) / p, without cancellation for small k p.
    y = k * p
    if m * y < _SMALL:
        return m * k * (1.0 - 0.5 * (m + 1.0) * y + (m + 1.0) * (m + 2.0) / 6.0 * y * y)
    return -math.expm1(-m * math.log1p(y)) / p


def _node(
    u: float,
    a: float,
    beta: float,
    m: float,
    log_b: float,
    ks: list[float],
    discounts: list[float],
) -> tuple[float, float]:
    """The two integrands at one tanh-sinh node u, weight included."""
    s = 0.5 * math.pi * math.sinh(u)
    if s >= 0:
        log_p = -math.log1p(math.exp(-2.0 * s))
        log_q = -2.0 * s + log_p
    else:
        log_q = -math.log1p(math.exp(2.0 * s))
        log_p = 2.0 * s + log_q
    weight = math.log(math.pi * math.cosh(u)) + a * log_p + beta * log_q - log_b
    if weight < -745.0:
        return 0.0, 0.0
    weight = math.exp(weight)
    p = math.exp(log_p)
    previous = 0.0
    total = 0.0
    for k, discount in zip(ks, discounts, strict=True):
        current = _h_over_p(p, k, m)
        total += discount * (current - previous)
        previous = current
    return weight * previous, weight * total


def _sweep(
    step: float,
    offset: float,
    a: float,
    beta: float,
    m: float,
    log_b: float,
    ks: list[float],
    discounts: list[float],
    reference_plain: float,
    reference_disc: float,
) -> tuple[float, float]:
    """Sum the nodes offset + j * step on both sides, until negligible."""
    sum_plain = sum_disc = 0.0
    u = offset
    while u <= _U_MAX:
        p1, d1 = _node(u, a, beta, m, log_b, ks, discounts)
        p2, d2 = _node(-u, a, beta, m, log_b, ks, discounts)
        sum_plain += p1 + p2
        sum_disc += d1 + d2
        if (
            u > 1.0
            and p1 + p2 <= 1e-17 * abs(reference_plain + sum_plain)
            and d1 + d2 <= 1e-17 * abs(reference_disc + sum_disc)
        ):
            break
        u += step
    return sum_plain, sum_disc


def alive_expectations(
    x: float,
    T: float,
    r: float,
    alpha: float,
    a: float,
    b: float,
    times: Sequence[float],
    discounts: Sequence[float],
) -> tuple[float, float]:
    """E[Y(t_K) | alive] and E[sum_j d_j (Y(t_j) - Y(t_j-1)) | alive]."""
    if len(times) > MAX_PERIODS:
        msg = f"at most {MAX_PERIODS} periods"
        raise ValueError(msg)
    m = r + x
    beta = b + x
    log_b = log_gamma(a) + log_gamma(beta) - log_gamma(a + beta)
    ks = [float(t) / (alpha + T) for t in times]
    factors = [float(d) for d in discounts]
    if not ks or ks[-1] <= 0:
        return 0.0, 0.0

    step = _H0
    plain, discounted = _node(0.0, a, beta, m, log_b, ks, factors)
    sum_plain, sum_disc = _sweep(
        step, step, a, beta, m, log_b, ks, factors, plain, discounted
    )
    plain += sum_plain
    discounted += sum_disc
    estimate_plain = plain * step
    estimate_disc = discounted * step
    while step > _H_MIN:
        sum_plain, sum_disc = _sweep(
            step, 0.5 * step, a, beta, m, log_b, ks, factors, plain, discounted
        )
        plain += sum_plain
        discounted += sum_disc
        step *= 0.5
        new_plain = plain * step
        new_disc = discounted * step
        if abs(new_plain - estimate_plain) <= _TOLERANCE * abs(new_plain) and abs(
            new_disc - estimate_disc
        ) <= _TOLERANCE * abs(new_disc):
            return new_plain, new_disc
        estimate_plain = new_plain
        estimate_disc = new_disc
    return estimate_plain, estimate_disc


def conditional_expected_purchases(
    t: float, x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float:
    """E[purchases in (T, T+t] | x, t_x, T] under BG/NBD."""
    plain, _ = alive_expectations(x, T, r, alpha, a, b, [t], [1.0])
    return p_alive(x, t_x, T, r, alpha, a, b) * plain


def expected_purchases(t: float, r: float, alpha: float, a: float, b: float) -> float:
    """E[X(t)]: expected purchases of a new customer in (0, t]."""
    plain, _ = alive_expectations(0.0, 0.0, r, alpha, a, b, [t], [1.0])
    return plain


def value_terms(
    x: float,
    t_x: float,
    T: float,
    r: float,
    alpha: float,
    a: float,
    b: float,
    times: Sequence[float],
    discounts: Sequence[float],
) -> tuple[float, float, float]:
    """(P(alive), expected purchases by times[-1], discounted purchases)."""
    alive = p_alive(x, t_x, T, r, alpha, a, b)
    plain, discounted = alive_expectations(x, T, r, alpha, a, b, times, discounts)
    return alive, alive * plain, alive * discounted
