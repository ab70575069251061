"""Type stubs of the compiled CLV kernels (``native/clv.pyx``).

The arrays of the sums are one-dimensional float64 buffers (NumPy arrays);
the pure-Python twin ``native/clv_py.py`` accepts any sequence of floats.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

def bgnbd_log_likelihood(
    x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float: ...
def p_alive(
    x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float: ...
def bgnbd_sum(
    x: Floats,
    t_x: Floats,
    T: Floats,
    r: float,
    alpha: float,
    a: float,
    b: float,
    count: Floats | None = ...,
) -> tuple[float, tuple[float, float, float, float]]: ...
def gamma_gamma_sum(
    x: Floats,
    mean_value: Floats,
    p: float,
    q: float,
    v: float,
    count: Floats | None = ...,
) -> tuple[float, tuple[float, float, float]]: ...
def expected_order_value(
    x: float, mean_value: float, p: float, q: float, v: float
) -> float: ...
def conditional_expected_purchases(
    t: float, x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float: ...
def expected_purchases(
    t: float, r: float, alpha: float, a: float, b: float
) -> float: ...
def alive_expectations(
    x: float,
    T: float,
    r: float,
    alpha: float,
    a: float,
    b: float,
    times: Sequence[float],
    discounts: Sequence[float],
) -> tuple[float, float]: ...
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
) -> tuple[float, float, float]: ...
