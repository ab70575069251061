"""What the key-group actor decides besides applying events: the silence
window of a customer, the calendar of value windows, and the signals of a
value-window close (decline, at risk, health drop).

Silence itself is timed by the native table (``native/table.pyx``): it
keeps each customer's deadline and fires it when the watermark passes.

Decline has two detectors, chosen by ``decline.method``:

- ``consecutive`` (the default): the CLV fell in N consecutive windows
  (``decline.windows``, 3), each time by at least ``decline.min_drop``
  (5 %) of the window before. One signal per run of falls; a window that
  does not fall enough starts the count again.
- ``cusum``: a one-sided CUSUM of the relative falls,
  ``S = max(0, S + fall - slack)``, signals when S reaches
  ``decline.cusum_threshold`` and starts again from 0. One large fall, or
  several small ones, add up; a noisy series that rises as often as it
  falls stays below the threshold because each window pays the slack.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from operators.clv import CustomerValue
from operators.health import Health

ValueWindow = Literal["week", "month", "quarter"]
DeclineMethod = Literal["consecutive", "cusum"]
BANDS = ("red", "yellow", "green")
NO_VALUE = -1.0


class SilenceOverride(msgspec.Struct, frozen=True):
    """A silence window for the customers that match every given field."""

    window_ms: int
    tenant: str | None = None
    segment: str | None = None
    channel: int | None = None  # code in operators.events.CHANNELS


class SilenceWindows:
    """The silence window of a customer: the first matching override, or
    the default. Called by the table with the tenant, the segment and the
    channel of the last inbound touch."""

    def __init__(self, default_ms: int, overrides: tuple[SilenceOverride, ...]):
        self.default_ms = default_ms
        self.overrides = overrides

    def __call__(self, tenant: str, segment: str | None, channel: int) -> int:
        for rule in self.overrides:
            if (
                (rule.tenant is None or rule.tenant == tenant)
                and (rule.segment is None or rule.segment == segment)
                and (rule.channel is None or rule.channel == channel)
            ):
                return rule.window_ms
        return self.default_ms


class DecisionSettings(msgspec.Struct, frozen=True):
    """How silence, decline and risk are decided."""

    silence_window_ms: int = 48 * 3_600_000
    silence_overrides: tuple[SilenceOverride, ...] = ()
    value_window: ValueWindow = "quarter"
    decline_method: DeclineMethod = "consecutive"
    decline_windows: int = 3
    decline_min_drop: float = 0.05
    cusum_slack: float = 0.02
    cusum_threshold: float = 0.15
    p_alive_below: float = 0.5

    def silence_windows(self) -> SilenceWindows | None:
        if not self.silence_overrides:
            return None
        return SilenceWindows(self.silence_window_ms, self.silence_overrides)


def boundary_after(ts_ms: int, window: ValueWindow, time_zone: str) -> int:
    """The first value-window boundary strictly after `ts_ms`: the start of
    the next week (Monday), month or calendar quarter in `time_zone`."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(time_zone)
    local = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(zone)
    if window == "week":
        start = datetime(local.year, local.month, local.day, tzinfo=zone)
        start -= timedelta(days=start.weekday())
        following = start + timedelta(days=7)
        # Walk in calendar days so that a DST change keeps local midnight.
        following = datetime(
            following.year, following.month, following.day, tzinfo=zone
        )
    else:
        months = 1 if window == "month" else 3
        first_month = (local.month - 1) // months * months + 1
        index = local.year * 12 + first_month - 1 + months
        following = datetime(index // 12, index % 12 + 1, 1, tzinfo=zone)
    return round(following.timestamp() * 1000)


class WindowState(msgspec.Struct):
    """A customer's value-window state, as kept in the table row."""

    window_clv: float = NO_VALUE
    decline_run: int = 0
    decline_cusum: float = 0.0
    at_risk: int = 0
    health_band: int = -1


def close_window(
    state: WindowState,
    value: CustomerValue,
    health: Health | None,
    settings: DecisionSettings,
) -> list[tuple[str, dict[str, float]]]:
    """Update `state` with the value at a window close; return the signals
    ``(kind, details)`` it gives, in a fixed order."""
    signals: list[tuple[str, dict[str, float]]] = []
    previous = state.window_clv
    clv = value.clv

    if previous > 0:
        fall = (previous - clv) / previous
        details = {"previous_clv": previous, "clv": clv, "drop": fall}
        if settings.decline_method == "consecutive":
            state.decline_run = (
                state.decline_run + 1 if fall >= settings.decline_min_drop else 0
            )
            if state.decline_run == settings.decline_windows:
                details["windows"] = float(state.decline_run)
                signals.append(("decline", details))
        else:
            state.decline_cusum = max(
                0.0, state.decline_cusum + fall - settings.cusum_slack
            )
            state.decline_run = state.decline_run + 1 if fall > 0 else 0
            if state.decline_cusum >= settings.cusum_threshold:
                details["windows"] = float(state.decline_run)
                details["cusum"] = state.decline_cusum
                signals.append(("decline", details))
                state.decline_cusum = 0.0
    state.window_clv = clv

    if value.p_alive < settings.p_alive_below:
        if not state.at_risk:
            details = {"p_alive": value.p_alive, "threshold": settings.p_alive_below}
            signals.append(("at_risk", details))
        state.at_risk = 1
    else:
        state.at_risk = 0

    if health is not None:
        band = BANDS.index(health.band)
        if 0 <= band < state.health_band:
            signals.append(
                (
                    "health_drop",
                    {
                        "previous_band": float(state.health_band),
                        "band": float(band),
                        "health": health.score,
                    },
                )
            )
        state.health_band = band
    return signals
