"""The customer record as users see it: rows of the key-group table turned
into the JSON objects of ``customers.jsonl``.

A row is the plain tuple a table gives (``native/table.pyx`` or its twin);
its fields are :data:`ROW_FIELDS`, the same for both. Times are epoch
milliseconds inside, RFC 3339 in UTC with milliseconds outside.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from native import table_py
from operators.events import CHANNELS

if TYPE_CHECKING:
    from operators.clv import CustomerValue
    from operators.health import Health

DAY_MS = 86_400_000
NO_TIME = -1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ROW_FIELDS = table_py.ROW_FIELDS
Row = tuple[Any, ...]
_FIRST_PURCHASE = ROW_FIELDS.index("first_purchase_ms")
_LAST_PURCHASE = ROW_FIELDS.index("last_purchase_ms")
_REPEATS = ROW_FIELDS.index("repeat_purchases")
_REPEAT_SPEND = ROW_FIELDS.index("repeat_spend")


def format_time(ts_ms: int) -> str | None:
    """Format epoch milliseconds as RFC 3339 in UTC with milliseconds."""
    if ts_ms == NO_TIME:
        return None
    day, ms = divmod(ts_ms, DAY_MS)
    second, ms = divmod(ms, 1000)
    return f"{_date_text(day)}T{_clock_text(second)}.{ms:03d}Z"


# Every intervention formats several times: the texts of days and of
# seconds of the day are kept rather than built each time.
@functools.lru_cache(maxsize=65_536)
def _date_text(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).date().isoformat()


@functools.lru_cache(maxsize=65_536)
def _clock_text(second: int) -> str:
    minutes, seconds = divmod(second, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def _days(ms: int) -> float:
    return round(ms / DAY_MS, 6)


def purchase_summary(
    row: Row, end_ms: int
) -> tuple[int, float, float, float | None] | None:
    """(x, t_x in days, T in days, mean repeat value), or None without orders."""
    first_ms = row[_FIRST_PURCHASE]
    if first_ms == NO_TIME:
        return None
    repeats = row[_REPEATS]
    return (
        repeats,
        (row[_LAST_PURCHASE] - first_ms) / DAY_MS,
        max(0, end_ms - first_ms) / DAY_MS,
        row[_REPEAT_SPEND] / repeats if repeats else None,
    )


def customer_json(
    row: Row,
    end_ms: int,
    value: CustomerValue | None = None,
    health: Health | None = None,
) -> dict[str, Any]:
    """Return the public view of one customer, evaluated at `end_ms`."""
    fields = dict(zip(ROW_FIELDS, row, strict=True))
    first_ms = fields["first_purchase_ms"]
    last_ms = fields["last_purchase_ms"]
    bought = first_ms != NO_TIME
    repeats = fields["repeat_purchases"]
    channels = {
        name: {
            "last_touch_at": format_time(fields["last_touch_ms"][code]),
            "inbound": fields["inbound_touches"][code],
            "outbound": fields["outbound_touches"][code],
        }
        for code, name in enumerate(CHANNELS)
        if fields["last_touch_ms"][code] != NO_TIME
    }
    return {
        "tenant": fields["tenant"],
        "customer_id": fields["customer_id"],
        "segment": fields["segment"],
        "repeat_purchases": repeats,
        "first_purchase_at": format_time(first_ms),
        "last_purchase_at": format_time(last_ms),
        "recency_days": _days(last_ms - first_ms) if bought else None,
        "age_days": _days(end_ms - first_ms) if bought else None,
        "monetary_mean": fields["repeat_spend"] / repeats if repeats else None,
        "total_spend": fields["first_day_spend"] + fields["repeat_spend"],
        "orders": fields["orders"],
        "late_orders": fields["late_orders"],
        "refund_total": fields["refund_total"],
        "last_inbound_at": format_time(fields["last_inbound_ms"]),
        "last_event_at": format_time(fields["last_event_ms"]),
        "open_tickets": fields["open_tickets"],
        "complaints": fields["complaints"],
        "last_nps": None if fields["last_nps"] < 0 else fields["last_nps"],
        "channels": channels,
        "p_alive": None if value is None else value.p_alive,
        "expected_purchases": None if value is None else value.expected_purchases,
        "expected_order_value": None if value is None else value.expected_order_value,
        "clv": None if value is None else value.clv,
        "value_band": None if value is None else value.value_band,
        "health": None if health is None else round(health.score, 2),
        "health_band": None if health is None else health.band,
        "evaluated_at": format_time(end_ms),
    }
