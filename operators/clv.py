"""Customer lifetime value: BG/NBD for purchase frequency and dropout,
Gamma-Gamma for order value, fitted by maximum likelihood.

The per-customer kernels are native (``native/clv.pyx``, twin
``native/clv_py.py``); this module holds the parameter sets, the fit and the
evaluation of a customer's value at a given time.

CLV over a horizon H (in the model's time unit) is

    CLV = margin * E[order value] * sum_k d_k * (E[Y(t_k)] - E[Y(t_k-1)])

where t_k = min(k * P, H) are the ends of periods of P = one twelfth of a
year, E[Y(t)] the conditional expected purchases in the next t time units
(BG/NBD, given x, t_x and T), E[order value] the Gamma-Gamma conditional
mean, and d_k = (1 + annual_discount) ** -(t_k / one year) discounts each
period's purchases from its end. The result is in the tenant's currency.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from native import load

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

_clv = load("clv")

TimeUnit = Literal["day", "week"]
DAYS_PER_UNIT = {"day": 1.0, "week": 7.0}
DAYS_PER_YEAR = 365.25
PERIODS_PER_YEAR = 12
# The kernels evaluate at most 1200 periods (MAX_PERIODS): 100 years of months.
MAX_HORIZON_DAYS = 100 * DAYS_PER_YEAR


class BgNbd(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """BG/NBD population parameters (rates per time unit)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float | None = None


class GammaGamma(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Gamma-Gamma population parameters of order value."""

    p: float
    q: float
    v: float
    log_likelihood: float | None = None


class ModelParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fitted parameter set: what `touchstream fit` prints."""

    time_unit: TimeUnit
    calibration_end: str
    data_sha256: str
    bgnbd: BgNbd
    gamma_gamma: GammaGamma
    value_bands: list[float]
    customers: int
    repeat_customers: int


class CustomerValue(msgspec.Struct, frozen=True):
    """A customer's value evaluated at one time."""

    p_alive: float
    expected_purchases: float
    expected_order_value: float
    clv: float
    value_band: int


class ValueSettings(msgspec.Struct, frozen=True):
    """What evaluating customers' value needs; :meth:`build` makes the model."""

    params: ModelParams
    horizon_days: float = 364.0
    margin: float = 1.0
    annual_discount: float = 0.10

    def build(self) -> ValueModel:
        return ValueModel(
            self.params,
            self.horizon_days,
            margin=self.margin,
            annual_discount=self.annual_discount,
        )


class ValueModel:
    """Evaluates customers' value under one parameter set and horizon."""

    def __init__(
        self,
        params: ModelParams,
        horizon_days: float,
        *,
        margin: float = 1.0,
        annual_discount: float = 0.10,
    ) -> None:
        self.params = params
        self.margin = margin
        self.annual_discount = annual_discount
        unit_days = DAYS_PER_UNIT[params.time_unit]
        self.unit_days = unit_days
        self.horizon = horizon_days / unit_days
        self.times, self.discounts = period_ends(
            self.horizon, DAYS_PER_YEAR / unit_days, annual_discount
        )
        self._cached = functools.lru_cache(maxsize=1 << 16)(self._evaluate)
        # The quadrature depends on x and the age alone, not on recency:
        # customers of one first-purchase day and purchase count share it.
        self._expectations = functools.lru_cache(maxsize=1 << 16)(
            self._alive_expectations
        )

    def evaluate(
        self, x: float, t_x_days: float, age_days: float, mean_value: float | None
    ) -> CustomerValue:
        """Value of a customer with x repeat purchases, recency and age.

        Customers with the same history at the same time have the same
        value (all one-time buyers of a day, at a window close), so recent
        results are kept: the quadrature behind each costs tens of µs.
        """
        return self._cached(x, t_x_days, age_days, mean_value)

    def _evaluate(
        self, x: float, t_x_days: float, age_days: float, mean_value: float | None
    ) -> CustomerValue:
        model = self.params.bgnbd
        t_x = t_x_days / self.unit_days
        age = age_days / self.unit_days
        # As the kernels' value_terms computes it, in two cached halves.
        alive = _clv.p_alive(x, t_x, age, model.r, model.alpha, model.a, model.b)
        plain, discounted = self._expectations(x, age)
        purchases, discounted = alive * plain, alive * discounted
        spend = self.params.gamma_gamma
        order_value = _clv.expected_order_value(
            x, mean_value or 0.0, spend.p, spend.q, spend.v
        )
        clv = self.margin * order_value * discounted
        return CustomerValue(alive, purchases, order_value, clv, value_band(clv, self))

    def _alive_expectations(self, x: float, age: float) -> tuple[float, float]:
        model = self.params.bgnbd
        expectations: tuple[float, float] = _clv.alive_expectations(
            x, age, model.r, model.alpha, model.a, model.b, self.times, self.discounts
        )
        return expectations

    @property
    def value_bands(self) -> list[float]:
        return self.params.value_bands


def value_band(clv: float, model: ValueModel) -> int:
    """Band 1 (lowest fifth) to 5 (highest fifth) from the fit's cut-offs."""
    return 1 + bisect.bisect_right(model.value_bands, clv)


def period_ends(
    horizon: float, units_per_year: float, annual_discount: float
) -> tuple[list[float], list[float]]:
    """Period ends up to the horizon and each period's discount factor."""
    if horizon <= 0:
        return [], []
    period = units_per_year / PERIODS_PER_YEAR
    count = math.ceil(horizon / period - 1e-9)
    times = [min((k + 1) * period, horizon) for k in range(count)]
    discounts = [(1.0 + annual_discount) ** -(t / units_per_year) for t in times]
    return times, discounts


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters for (x, t_x, T) per customer."""
    import numpy as np

    arrays, counts = _distinct(x, t_x, T)
    count = float(counts.sum())
    scale = float(np.average(arrays[2], weights=counts)) or 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        r, alpha, a, b = np.exp(theta)
        ll, grad = _clv.bgnbd_sum(*arrays, r, alpha, a, b, counts)
        return -ll / count, -np.asarray(grad) * np.exp(theta) / count

    starts = [
        (1.0, scale, 1.0, 1.0),
        (0.5, scale / 4, 0.5, 2.0),
        (2.0, scale, 2.0, 5.0),
    ]
    best = _minimise(objective, starts)
    r, alpha, a, b = (float(value) for value in np.exp(best.x))
    ll, _ = _clv.bgnbd_sum(*arrays, r, alpha, a, b, counts)
    return BgNbd(r, alpha, a, b, float(ll))


def fit_gamma_gamma(x: ArrayLike, mean_value: ArrayLike) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma parameters over repeat customers."""
    import numpy as np

    arrays, counts = _distinct(x, mean_value)
    count = float(counts.sum())
    scale = float(np.average(arrays[1], weights=counts)) or 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p, q, v = np.exp(theta)
        ll, grad = _clv.gamma_gamma_sum(*arrays, p, q, v, counts)
        return -ll / count, -np.asarray(grad) * np.exp(theta) / count

    starts = [(1.0, 2.0, scale), (5.0, 3.0, scale * 2), (1.0, 1.5, scale / 2)]
    best = _minimise(objective, starts)
    p, q, v = (float(value) for value in np.exp(best.x))
    ll, _ = _clv.gamma_gamma_sum(*arrays, p, q, v, counts)
    return GammaGamma(p, q, v, float(ll))


def _distinct(*columns: ArrayLike) -> tuple[list[Any], Any]:
    """The distinct rows of the columns, and how many times each occurs.

    Customers with the same history have the same likelihood: many share
    one (x = 0 and the same first-purchase day, say), so the fit sums over
    distinct rows, weighted by their counts.
    """
    import numpy as np

    table = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    rows, counts = np.unique(table, axis=0, return_counts=True)
    arrays = [np.ascontiguousarray(rows[:, i]) for i in range(rows.shape[1])]
    return arrays, np.ascontiguousarray(counts, dtype=np.float64)


def _minimise(
    objective: Callable[[Any], tuple[float, Any]],
    starts: Sequence[Sequence[float]],
) -> Any:
    """L-BFGS-B from each start (log parameters); the best optimum wins."""
    import numpy as np
    from scipy.optimize import minimize

    best = None
    for start in starts:
        result = minimize(
            objective,
            np.log(start),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-15.0, 15.0)] * len(start),
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10},
        )
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        msg = "the likelihood could not be maximised from any start"
        raise ValueError(msg)
    return best
