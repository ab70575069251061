"""Pure-Python twin of ``native/table.pyx``: the same state, the same rows.

Used where the extension is not built, and by the tests, which run every
kernel test against both implementations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

KIND_ORDER = 6
KIND_REFUND = 7
KIND_TICKET_OPENED = 8
KIND_TICKET_RESOLVED = 9
KIND_COMPLAINT = 10
KIND_NPS = 11
N_CHANNELS = 8
NO_TIME = -1

KIND_CODES = {
    "order": KIND_ORDER,
    "refund": KIND_REFUND,
    "ticket_opened": KIND_TICKET_OPENED,
    "ticket_resolved": KIND_TICKET_RESOLVED,
    "complaint": KIND_COMPLAINT,
    "nps": KIND_NPS,
}
CHANNEL_COUNT = N_CHANNELS
ROW_FORMAT = 1
# The fields of a row, in order; the pure record keeps them as attributes.
ROW_FIELDS = (
    "tenant",
    "customer_id",
    "segment",
    "first_purchase_ms",
    "last_purchase_ms",
    "first_purchase_day",
    "last_purchase_day",
    "repeat_purchases",
    "orders",
    "late_orders",
    "first_day_spend",
    "repeat_spend",
    "refund_total",
    "last_inbound_ms",
    "last_event_ms",
    "last_touch_ms",
    "inbound_touches",
    "outbound_touches",
    "open_tickets",
    "complaints",
    "last_nps",
    "last_nps_ms",
)

Row = tuple[Any, ...]


class CustomerRecord:
    """State of one customer."""

    __slots__ = ROW_FIELDS

    def __init__(self, tenant: str, customer_id: str) -> None:
        self.tenant = tenant
        self.customer_id = customer_id
        self.segment: str | None = None
        self.first_purchase_ms = NO_TIME
        self.last_purchase_ms = NO_TIME
        self.first_purchase_day = 0
        self.last_purchase_day = 0
        self.repeat_purchases = 0
        self.orders = 0
        self.late_orders = 0
        self.first_day_spend = 0.0
        self.repeat_spend = 0.0
        self.refund_total = 0.0
        self.last_inbound_ms = NO_TIME
        self.last_event_ms = NO_TIME
        self.last_touch_ms = [NO_TIME] * N_CHANNELS
        self.inbound_touches = [0] * N_CHANNELS
        self.outbound_touches = [0] * N_CHANNELS
        self.open_tickets = 0
        self.complaints = 0
        self.last_nps = -1
        self.last_nps_ms = NO_TIME

    def purchase(self, ts_ms: int, day: int, amount: float) -> None:
        # Orders on one calendar day are one transaction, timed by its
        # earliest order. A transaction's value is the sum of its orders.
        if self.orders == 0:
            self.first_purchase_day = day
            self.last_purchase_day = day
            self.first_purchase_ms = ts_ms
            self.last_purchase_ms = ts_ms
            self.first_day_spend = amount
        elif day == self.last_purchase_day:
            if day == self.first_purchase_day:
                self.first_day_spend += amount
                self.first_purchase_ms = min(self.first_purchase_ms, ts_ms)
            else:
                self.repeat_spend += amount
            self.last_purchase_ms = min(self.last_purchase_ms, ts_ms)
        elif day > self.last_purchase_day:
            self.repeat_purchases += 1
            self.repeat_spend += amount
            self.last_purchase_day = day
            self.last_purchase_ms = ts_ms
        elif day == self.first_purchase_day:
            self.late_orders += 1
            self.first_day_spend += amount
            self.first_purchase_ms = min(self.first_purchase_ms, ts_ms)
        elif day < self.first_purchase_day:
            # A late order before the first transaction becomes the first;
            # the old first transaction becomes a repeat one.
            self.late_orders += 1
            self.repeat_purchases += 1
            self.repeat_spend += self.first_day_spend
            self.first_day_spend = amount
            self.first_purchase_day = day
            self.first_purchase_ms = ts_ms
        else:
            # Strictly between the first and last purchase days: counted as
            # a repeat transaction of its own (see README, "Late orders").
            self.late_orders += 1
            self.repeat_purchases += 1
            self.repeat_spend += amount
        self.orders += 1

    def touch(self, ts_ms: int, channel: int, inbound: bool) -> None:
        if ts_ms > self.last_touch_ms[channel]:
            self.last_touch_ms[channel] = ts_ms
        if inbound:
            self.inbound_touches[channel] += 1
            if ts_ms > self.last_inbound_ms:
                self.last_inbound_ms = ts_ms
        else:
            self.outbound_touches[channel] += 1

    def row(self) -> Row:
        """Return the whole state as a plain tuple (``ROW_FIELDS`` order)."""
        return (
            self.tenant,
            self.customer_id,
            self.segment,
            self.first_purchase_ms,
            self.last_purchase_ms,
            self.first_purchase_day,
            self.last_purchase_day,
            self.repeat_purchases,
            self.orders,
            self.late_orders,
            self.first_day_spend,
            self.repeat_spend,
            self.refund_total,
            self.last_inbound_ms,
            self.last_event_ms,
            tuple(self.last_touch_ms),
            tuple(self.inbound_touches),
            tuple(self.outbound_touches),
            self.open_tickets,
            self.complaints,
            self.last_nps,
            self.last_nps_ms,
        )

    def load_row(self, row: Row) -> None:
        """Set the state from a tuple made by :meth:`row`."""
        (
            _tenant,
            _customer_id,
            self.segment,
            self.first_purchase_ms,
            self.last_purchase_ms,
            self.first_purchase_day,
            self.last_purchase_day,
            self.repeat_purchases,
            self.orders,
            self.late_orders,
            self.first_day_spend,
            self.repeat_spend,
            self.refund_total,
            self.last_inbound_ms,
            self.last_event_ms,
            last_touch_ms,
            inbound_touches,
            outbound_touches,
            self.open_tickets,
            self.complaints,
            self.last_nps,
            self.last_nps_ms,
        ) = row
        self.first_day_spend = float(self.first_day_spend)
        self.repeat_spend = float(self.repeat_spend)
        self.refund_total = float(self.refund_total)
        self.last_touch_ms = list(last_touch_ms)
        self.inbound_touches = list(inbound_touches)
        self.outbound_touches = list(outbound_touches)


class CustomerTable:
    """The customer records of one key group, by (tenant, customer_id)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], CustomerRecord] = {}

    def __len__(self) -> int:
        return len(self.records)

    def apply(self, touches: list[Any]) -> int:
        """Apply decoded touches in order; return how many were applied."""
        records = self.records
        for touch in touches:
            channel = touch.channel
            if not 0 <= channel < N_CHANNELS:
                msg = f"channel code {channel} out of range"
                raise ValueError(msg)
            key = (touch.tenant, touch.customer_id)
            record = records.get(key)
            if record is None:
                record = CustomerRecord(touch.tenant, touch.customer_id)
                records[key] = record
            ts_ms = touch.ts_ms
            kind = touch.kind

            if touch.segment is not None:
                record.segment = touch.segment
            if ts_ms > record.last_event_ms:
                record.last_event_ms = ts_ms
            record.touch(ts_ms, channel, touch.inbound)

            if kind == KIND_ORDER:
                record.purchase(ts_ms, touch.day, touch.amount)
            elif kind == KIND_REFUND:
                record.refund_total += touch.amount
            elif kind == KIND_TICKET_OPENED:
                record.open_tickets += 1
            elif kind == KIND_TICKET_RESOLVED:
                if record.open_tickets > 0:
                    record.open_tickets -= 1
            elif kind == KIND_COMPLAINT:
                record.complaints += 1
            elif kind == KIND_NPS and ts_ms >= record.last_nps_ms:
                record.last_nps = touch.score
                record.last_nps_ms = ts_ms
        return len(touches)

    def rows(self) -> list[Row]:
        """Return every record's row, sorted by (tenant, customer_id)."""
        return [self.records[key].row() for key in sorted(self.records)]

    def get_row(self, tenant: str, customer_id: str) -> Row | None:
        """Return one customer's row, or None."""
        record = self.records.get((tenant, customer_id))
        return None if record is None else record.row()

    def load_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Replace the table's content with rows made by :meth:`rows`."""
        self.records = {}
        for row in rows:
            record = CustomerRecord(row[0], row[1])
            record.load_row(tuple(row))
            self.records[(row[0], row[1])] = record
