"""The customer record as users see it: rows of the key-group table turned
into the JSON objects of ``customers.jsonl``.

A row is the plain tuple a table gives (``native/table.pyx`` or its twin);
its fields are :data:`ROW_FIELDS`, the same for both. Times are epoch
milliseconds inside, RFC 3339 in UTC with milliseconds outside.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from native import table_py
from operators.events import CHANNELS

DAY_MS = 86_400_000
NO_TIME = -1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ROW_FIELDS = table_py.ROW_FIELDS


def format_time(ts_ms: int) -> str | None:
    """Format epoch milliseconds as RFC 3339 in UTC with milliseconds."""
    if ts_ms == NO_TIME:
        return None
    day, ms = divmod(ts_ms, DAY_MS)
    seconds, ms = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{_date_text(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}Z"


@functools.lru_cache(maxsize=65_536)
def _date_text(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).date().isoformat()


def _days(ms: int) -> float:
    return round(ms / DAY_MS, 6)


def customer_json(row: tuple[Any, ...], end_ms: int) -> dict[str, Any]:
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
        "evaluated_at": format_time(end_ms),
    }
