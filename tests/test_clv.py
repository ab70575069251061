"""CLV models against published figures, a high-precision second
implementation (mpmath's 2F1), and each other (native and pure)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import mpmath
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native.clv
import native.clv_py
from operators.clv import ModelParams, ValueModel, period_ends
from stream.fit import FitOptions, run_fit
from stream.replay import ReplayOptions, ValueSettings, run_replay
from tests.support import CDNOW_MASTER, CDNOW_SAMPLE, ROOT, read_jsonl

PUBLISHED = (0.243, 4.414, 0.793, 2.426)  # r, alpha, a, b (FHL 2005)
PUBLISHED_FILE = ROOT / "tests" / "data" / "published_cdnow_params.json"
KERNELS = [native.clv_py, native.clv]


@pytest.fixture(params=KERNELS, ids=["pure", "native"])
def kernel(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


def reference_conditional(
    t: float, x: float, t_x: float, T: float, r: float, alpha: float, a: float, b: float
) -> float:
    """FHL (2005) eq. 10 with mpmath's 2F1 at 40 digits."""
    with mpmath.workdps(40):
        r_, alpha_, a_, b_ = map(mpmath.mpf, (r, alpha, a, b))
        z = t / (alpha_ + T + t)
        hyp = mpmath.hyp2f1(r_ + x, b_ + x, a_ + b_ + x - 1, z)
        ratio = (alpha_ + T) / (alpha_ + T + t)
        top = (a_ + b_ + x - 1) / (a_ - 1) * (1 - ratio ** (r_ + x) * hyp)
        odds = (a_ / (b_ + x - 1)) * ((alpha_ + T) / (alpha_ + t_x)) ** (r_ + x)
        return float(top / (1 + (odds if x > 0 else 0)))


def test_the_published_customer_expects_1_226_purchases_in_39_weeks(
    kernel: ModuleType,
) -> None:
    expected = kernel.conditional_expected_purchases(39, 2, 30.43, 38.86, *PUBLISHED)

    assert round(expected, 3) == 1.226


def test_a_negative_a_plus_b_minus_1_still_gives_0_5646(kernel: ModuleType) -> None:
    expected = kernel.conditional_expected_purchases(
        30, 0, 0, 1, 0.11, 2.24, 0.31, 0.50
    )

    assert round(expected, 4) == 0.5646


def test_a_thousand_purchases_long_ago_give_p_alive_0_without_fp_warnings(
    kernel: ModuleType,
) -> None:
    with np.errstate(all="raise"):
        alive = kernel.p_alive(1000, 10, 100, 0.11, 2.24, 0.31, 0.50)
        expected = kernel.conditional_expected_purchases(
            52, 1000, 10, 100, 0.11, 2.24, 0.31, 0.50
        )

    assert alive == 0.0
    assert expected == 0.0


@pytest.mark.parametrize(
    "case",
    [
        (39, 2, 30.43, 38.86, *PUBLISHED),
        (1000, 5, 10, 20, *PUBLISHED),  # a long horizon: z near 1
        (39, 100, 38, 39, *PUBLISHED),  # large x
        (39, 1000, 99, 100, *PUBLISHED),
        (5000, 0, 0, 0.01, 2.0, 0.1, 0.02, 0.05),  # a + b - 1 < 0, far horizon
        (365, 20, 300, 400, 0.5, 30.0, 3.0, 0.2),
        (1e-3, 2, 30, 38, *PUBLISHED),  # a tiny horizon
        (52, 3, 20, 40, 1.3, 7.0, 1.0 + 1e-9, 2.0),  # a close to 1
    ],
)
def test_the_conditional_expectation_matches_a_40_digit_2f1(
    kernel: ModuleType, case: tuple[float, ...]
) -> None:
    value = kernel.conditional_expected_purchases(*case)

    assert value == pytest.approx(reference_conditional(*case), rel=1e-11)


def test_expected_purchases_of_a_new_customer_matches_fhl_equation_9(
    kernel: ModuleType,
) -> None:
    r, alpha, a, b = PUBLISHED
    with mpmath.workdps(40):
        z = mpmath.mpf(52) / (alpha + 52)
        hyp = mpmath.hyp2f1(r, b, a + b - 1, z)
        want = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + 52)) ** r * hyp)

    assert kernel.expected_purchases(52, *PUBLISHED) == pytest.approx(
        float(want), rel=1e-12
    )


def test_p_alive_is_the_closed_form_by_hand(kernel: ModuleType) -> None:
    r, alpha, a, b = PUBLISHED
    x, t_x, T = 2, 30.43, 38.86
    odds = a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)

    assert kernel.p_alive(x, t_x, T, *PUBLISHED) == pytest.approx(1 / (1 + odds))
    assert kernel.p_alive(0, 0, 38.86, *PUBLISHED) == 1.0


def test_the_log_likelihood_gradient_matches_finite_differences(
    kernel: ModuleType,
) -> None:
    x = np.array([0.0, 1.0, 2.0, 7.0, 30.0])
    t_x = np.array([0.0, 5.0, 30.43, 20.0, 38.0])
    T = np.array([38.86, 38.86, 38.86, 25.0, 39.0])
    point = np.array(PUBLISHED)

    _, grad = kernel.bgnbd_sum(x, t_x, T, *point)

    for index in range(4):
        step = np.zeros(4)
        step[index] = 1e-6 * point[index]
        up, _ = kernel.bgnbd_sum(x, t_x, T, *(point + step))
        down, _ = kernel.bgnbd_sum(x, t_x, T, *(point - step))
        assert grad[index] == pytest.approx((up - down) / (2 * step[index]), rel=1e-6)


def test_the_gamma_gamma_gradient_matches_finite_differences(
    kernel: ModuleType,
) -> None:
    x = np.array([1.0, 2.0, 6.0])
    mean = np.array([12.5, 30.0, 44.1])
    point = np.array([6.25, 3.74, 15.44])

    _, grad = kernel.gamma_gamma_sum(x, mean, *point)

    for index in range(3):
        step = np.zeros(3)
        step[index] = 1e-6 * point[index]
        up, _ = kernel.gamma_gamma_sum(x, mean, *(point + step))
        down, _ = kernel.gamma_gamma_sum(x, mean, *(point - step))
        assert grad[index] == pytest.approx((up - down) / (2 * step[index]), rel=1e-6)


def test_the_sum_of_log_likelihoods_is_the_one_customer_function(
    kernel: ModuleType,
) -> None:
    total, _ = kernel.bgnbd_sum(
        np.array([2.0, 0.0]), np.array([30.43, 0.0]), np.array([38.86, 38.86]),
        *PUBLISHED,
    )  # fmt: skip

    one = kernel.bgnbd_log_likelihood(2, 30.43, 38.86, *PUBLISHED)
    zero = kernel.bgnbd_log_likelihood(0, 0, 38.86, *PUBLISHED)
    assert total == pytest.approx(one + zero)
    # x = 0: only the term of surviving to T remains, by hand.
    r, alpha, a, b = PUBLISHED
    by_hand = (
        math.lgamma(r) - math.lgamma(r) + r * math.log(alpha)
        + math.lgamma(a + b) + math.lgamma(b) - math.lgamma(b) - math.lgamma(a + b)
        - r * math.log(alpha + 38.86)
    )  # fmt: skip
    assert zero == pytest.approx(by_hand, rel=1e-13)


def test_counted_rows_sum_like_the_same_rows_repeated(kernel: ModuleType) -> None:
    x, t_x, T = np.array([2.0, 0.0]), np.array([30.43, 0.0]), np.array([38.86, 20.0])
    mean = np.array([20.0, 31.5])
    counts = np.array([3.0, 2.0])
    repeat = np.array([0, 0, 0, 1, 1])

    counted, counted_grad = kernel.bgnbd_sum(x, t_x, T, *PUBLISHED, counts)
    repeated, repeated_grad = kernel.bgnbd_sum(
        x[repeat], t_x[repeat], T[repeat], *PUBLISHED
    )
    spend, spend_grad = kernel.gamma_gamma_sum(
        np.array([2.0, 5.0]), mean, 6.25, 3.74, 15.44, counts
    )
    spend_repeated, spend_repeated_grad = kernel.gamma_gamma_sum(
        np.array([2.0, 5.0])[repeat], mean[repeat], 6.25, 3.74, 15.44
    )

    assert counted == pytest.approx(repeated, rel=1e-13)
    assert counted_grad == pytest.approx(repeated_grad, rel=1e-12)
    assert spend == pytest.approx(spend_repeated, rel=1e-13)
    assert spend_grad == pytest.approx(spend_repeated_grad, rel=1e-12)


def test_gamma_gamma_expected_value_is_the_weighted_mean_by_hand(
    kernel: ModuleType,
) -> None:
    p, q, v = 6.25, 3.74, 15.44
    population = p * v / (q - 1)  # 35.218...
    weight = p * 3 / (p * 3 + q - 1)

    value = kernel.expected_order_value(3, 20.0, p, q, v)

    assert value == pytest.approx(weight * 20.0 + (1 - weight) * population)
    assert kernel.expected_order_value(0, 0.0, p, q, v) == pytest.approx(population)


@settings(max_examples=150, deadline=None)
@given(
    x=st.integers(0, 300),
    recency=st.floats(0, 1),
    T=st.floats(0.01, 500),
    t=st.floats(0.01, 2000),
    r=st.floats(0.01, 20),
    alpha=st.floats(0.01, 100),
    a=st.floats(0.02, 20),
    b=st.floats(0.02, 20),
)
def test_native_and_pure_kernels_agree_across_the_domain(
    x: int,
    recency: float,
    T: float,
    t: float,
    r: float,
    alpha: float,
    a: float,
    b: float,
) -> None:
    t_x = recency * T if x else 0.0
    times, discounts = period_ends(t, 52.18, 0.1)

    native_terms = native.clv.value_terms(x, t_x, T, r, alpha, a, b, times, discounts)
    pure_terms = native.clv_py.value_terms(x, t_x, T, r, alpha, a, b, times, discounts)

    for left, right in zip(native_terms, pure_terms, strict=True):
        assert math.isfinite(left)
        assert left == pytest.approx(right, rel=1e-9, abs=1e-300)
    assert native.clv.bgnbd_log_likelihood(x, t_x, T, r, alpha, a, b) == pytest.approx(
        native.clv_py.bgnbd_log_likelihood(x, t_x, T, r, alpha, a, b)
    )


def test_clv_discounts_each_period_by_its_end() -> None:
    params = msgspec.json.decode(PUBLISHED_FILE.read_bytes(), type=ModelParams)
    model = ValueModel(params, 364.0, margin=0.3, annual_discount=0.1)
    x, t_x_days, T_days, mean = 2, 213.0, 272.0, 22.345

    value = model.evaluate(x, t_x_days, T_days, mean)

    # A second computation: expected purchases at each period end, by the
    # closed form, differenced and discounted by hand.
    year_weeks = 365.25 / 7
    ends = [min(k * year_weeks / 12, 52.0) for k in range(1, 13)]
    cumulative = [0.0] + [
        reference_conditional(end, x, t_x_days / 7, T_days / 7, *PUBLISHED)
        for end in ends
    ]
    discounted = sum(
        (cumulative[k + 1] - cumulative[k]) / 1.1 ** (ends[k] / year_weeks)
        for k in range(12)
    )
    order_value = native.clv.expected_order_value(x, mean, 6.25, 3.74, 15.44)
    assert value.clv == pytest.approx(0.3 * order_value * discounted, rel=1e-10)
    assert value.expected_purchases == pytest.approx(cumulative[-1], rel=1e-10)
    hand_clv = 0.3 * order_value * discounted
    assert value.value_band == 1 + sum(cut <= hand_clv for cut in params.value_bands)


def test_fit_on_the_cdnow_sample_reproduces_the_published_estimates() -> None:
    params = run_fit(
        FitOptions(input=CDNOW_SAMPLE, format="cdnow", calibration_end="1997-09-30")
    )

    bgnbd, spend = params.bgnbd, params.gamma_gamma
    published = {
        "r": (bgnbd.r, 0.243),
        "alpha": (bgnbd.alpha, 4.414),
        "a": (bgnbd.a, 0.793),
        "b": (bgnbd.b, 2.426),
        "log_likelihood": (bgnbd.log_likelihood, -9582.4),
        "p": (spend.p, 6.25),
        "q": (spend.q, 3.74),
        "v": (spend.v, 15.44),
    }
    for name, (fitted, figure) in published.items():
        assert fitted == pytest.approx(figure, rel=0.005), name
    assert (params.customers, params.repeat_customers) == (2_357, 946)
    assert params.calibration_end == "1997-09-30T00:00:00.000Z"
    assert len(params.value_bands) == 4
    assert params.value_bands == sorted(params.value_bands)


def test_replaying_cdnow_with_the_published_parameters_gives_00004_1_226(
    tmp_path: Path,
) -> None:
    params = msgspec.json.decode(PUBLISHED_FILE.read_bytes(), type=ModelParams)
    run_replay(
        ReplayOptions(
            input=CDNOW_MASTER,
            format="cdnow",
            out=tmp_path,
            as_of="1997-09-30",
            value=ValueSettings(params, horizon_days=39 * 7),
        )
    )

    record = next(
        c
        for c in read_jsonl(tmp_path / "customers.jsonl")
        if c["customer_id"] == "00004"
    )
    assert round(record["expected_purchases"], 3) == 1.226
    assert 0 < record["p_alive"] < 1
    assert record["value_band"] in range(1, 6)
