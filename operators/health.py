"""Customer health: a weighted score from 0 to 100, and its band.

Components, each from 0 (bad) to 1 (good):

- ``p_alive``: BG/NBD's probability that the customer is still active;
- ``recency``: 0.5 ** (days since the last inbound touch / half-life);
- ``engagement_trend``: the channel-weighted rate of inbound touches over
  the short window against the long one (exponentially weighted), capped
  at 1: a customer who touches as often as usual, or more, scores 1;
- ``service``: 1 less a penalty per open ticket and per complaint;
- ``nps``: the latest NPS answer / 10;
- ``value_trend``: the expected purchase rate over the horizon against the
  customer's past rate ((x + 1) / T), capped at 1.

The score is 100 * sum(weight * value) / sum(weight) over the components
the customer has data for. Weights come from an industry template
(``stream/templates/``); the bands are red below ``red_below``, green from
``green_from``, yellow between.
"""

from __future__ import annotations

import math

import msgspec

from operators.clv import CustomerValue
from operators.events import CHANNELS
from state.record import NO_TIME, ROW_FIELDS, Row

DAY_MS = 86_400_000
COMPONENTS = (
    "p_alive",
    "recency",
    "engagement_trend",
    "service",
    "nps",
    "value_trend",
)
_FIELD = {name: index for index, name in enumerate(ROW_FIELDS)}


class HealthTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Weights and parameters of one industry's health score."""

    name: str
    weights: dict[str, float]
    channel_weights: tuple[float, ...]
    recency_half_life_ms: float
    open_ticket_penalty: float
    complaint_penalty: float


class HealthSettings(msgspec.Struct, frozen=True):
    """The templates per tenant, the windows and the band cut-offs."""

    default: HealthTemplate
    tenants: dict[str, HealthTemplate] = {}
    short_window_ms: float = 14 * DAY_MS
    long_window_ms: float = 90 * DAY_MS
    red_below: float = 40.0
    green_from: float = 70.0

    def template(self, tenant: str) -> HealthTemplate:
        return self.tenants.get(tenant, self.default)


class Component(msgspec.Struct, frozen=True):
    """One part of the score: its value (0 to 1) and its weight."""

    name: str
    value: float
    weight: float


class Health(msgspec.Struct, frozen=True):
    """A customer's health at one time, with what it is made of."""

    score: float
    band: str
    template: str
    components: list[Component]


def evaluate_health(
    row: Row,
    end_ms: int,
    value: CustomerValue | None,
    horizon_days: float | None,
    settings: HealthSettings,
) -> Health:
    """The health of the customer in `row` at `end_ms`."""
    template = settings.template(row[_FIELD["tenant"]])
    values: dict[str, float] = {}

    if value is not None:
        values["p_alive"] = value.p_alive
    last_inbound = row[_FIELD["last_inbound_ms"]]
    if last_inbound != NO_TIME:
        idle_ms = max(0, end_ms - last_inbound)
        values["recency"] = 0.5 ** (idle_ms / template.recency_half_life_ms)
        trend = _engagement_trend(row, end_ms, template, settings)
        if trend is not None:
            values["engagement_trend"] = trend
    penalty = (
        template.open_ticket_penalty * row[_FIELD["open_tickets"]]
        + template.complaint_penalty * row[_FIELD["complaints"]]
    )
    values["service"] = max(0.0, 1.0 - penalty)
    if row[_FIELD["last_nps"]] >= 0:
        values["nps"] = row[_FIELD["last_nps"]] / 10.0
    trend = _value_trend(row, end_ms, value, horizon_days)
    if trend is not None:
        values["value_trend"] = trend

    components = [
        Component(name, values[name], template.weights.get(name, 0.0))
        for name in COMPONENTS
        if name in values
    ]
    total_weight = sum(component.weight for component in components)
    score = 0.0
    if total_weight > 0:
        weighted = sum(c.value * c.weight for c in components)
        score = 100.0 * weighted / total_weight
    return Health(score, band(score, settings), template.name, components)


def band(score: float, settings: HealthSettings) -> str:
    """red, yellow or green."""
    if score < settings.red_below:
        return "red"
    if score >= settings.green_from:
        return "green"
    return "yellow"


def _engagement_trend(
    row: Row, end_ms: int, template: HealthTemplate, settings: HealthSettings
) -> float | None:
    short_rate = long_rate = 0.0
    anchors = row[_FIELD["engagement_ms"]]
    for channel in range(len(CHANNELS)):
        anchor = anchors[channel]
        if anchor == NO_TIME:
            continue
        age = max(0, end_ms - anchor)
        weight = template.channel_weights[channel]
        short = row[_FIELD["engagement_short"]][channel]
        long = row[_FIELD["engagement_long"]][channel]
        short_rate += weight * short * math.exp(-age / settings.short_window_ms)
        long_rate += weight * long * math.exp(-age / settings.long_window_ms)
    if long_rate <= 0:
        return None
    # Counts over each window's memory, as rates per day.
    ratio = (short_rate / settings.short_window_ms) / (
        long_rate / settings.long_window_ms
    )
    return min(1.0, ratio)


def _value_trend(
    row: Row, end_ms: int, value: CustomerValue | None, horizon_days: float | None
) -> float | None:
    first = row[_FIELD["first_purchase_ms"]]
    if value is None or not horizon_days or first == NO_TIME or end_ms <= first:
        return None
    age_days = (end_ms - first) / DAY_MS
    past_rate = (row[_FIELD["repeat_purchases"]] + 1) / age_days
    expected_rate = value.expected_purchases / horizon_days
    return min(1.0, float(expected_rate / past_rate))
