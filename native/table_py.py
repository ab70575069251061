"""Pure-Python twin of ``native/table.pyx``: the same state, the same rows,
the same snapshot bytes.

Used where the extension is not built, and by the tests, which run every
kernel test against both implementations.

A snapshot (``TABLE_FORMAT`` 1) is little-endian and packed:

- header, 16 bytes: magic ``TSKT``, format (u16), 0 (u16), total length (u64);
- counts, 36 bytes: tenants, segments, sources (u32 each), then records,
  bytes of customer ids and channel states (u64 each), so that a reader
  allocates its arrays once;
- the names of tenants, segments and sources, in code order, each a u32
  length and UTF-8 bytes;
- each record, in the table's order: the fixed part (:data:`RECORD`, 156
  bytes; segment 0 means none, else code + 1), the customer id bytes, the
  channels used (:data:`CHANNEL`, in channel order, one bit each in the
  mask) and the spend by source (:data:`SPEND`, in order of first spend).

Names are interned in order of first use, records kept in order of
creation, by both implementations, so the same history gives the same bytes.
"""

from __future__ import annotations

import heapq
import math
import operator
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, Protocol

KIND_ORDER = 6
KIND_REFUND = 7
KIND_TICKET_OPENED = 8
KIND_TICKET_RESOLVED = 9
KIND_COMPLAINT = 10
KIND_NPS = 11
N_CHANNELS = 8
NO_TIME = -1
# Signal codes of the kernel's signal tuples (see CustomerTable.apply).
SIGNAL_SILENCE = 0
SIGNAL_SILENCE_ENDED = 1

KIND_CODES = {
    "order": KIND_ORDER,
    "refund": KIND_REFUND,
    "ticket_opened": KIND_TICKET_OPENED,
    "ticket_resolved": KIND_TICKET_RESOLVED,
    "complaint": KIND_COMPLAINT,
    "nps": KIND_NPS,
}
CHANNEL_COUNT = N_CHANNELS
# Where spend from sources past MAX_SOURCES of one table is counted.
OTHER_SOURCES = "(other sources)"
ROW_FORMAT = 3
TABLE_FORMAT = 1
SNAPSHOT_MAGIC = b"TSKT"
HEADER = struct.Struct("<4sHHQ")
COUNTS = struct.Struct("<IIIQQQ")
NAME_LENGTH = struct.Struct("<I")
RECORD = struct.Struct("<IIHBHqqqqiiidddqqiiiqqqbdidbb")
CHANNEL = struct.Struct("<qqiidd")
SPEND = struct.Struct("<Id")
# A snapshot record's fields after its five codes and counts, in order.
_RECORD_FIELDS = (
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
    "open_tickets",
    "complaints",
    "last_nps",
    "last_nps_ms",
    "silence_deadline_ms",
    "silent_since_ms",
    "last_inbound_channel",
    "window_clv",
    "decline_run",
    "decline_cusum",
    "at_risk",
    "health_band",
)
_record_fields = operator.attrgetter(*_RECORD_FIELDS)
_INT32 = (-(2**31), 2**31 - 1)
DEFAULT_SHORT_WINDOW_MS = 14 * 86_400_000.0
DEFAULT_LONG_WINDOW_MS = 90 * 86_400_000.0
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
    "engagement_ms",
    "engagement_short",
    "engagement_long",
    "spend_by_source",
    "silence_deadline_ms",
    "silent_since_ms",
    "last_inbound_channel",
    "window_clv",
    "decline_run",
    "decline_cusum",
    "at_risk",
    "health_band",
)
# The fields of the value-window state, set by CustomerTable.set_window_state.
WINDOW_FIELDS = ROW_FIELDS[-5:]

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
        self.engagement_ms = [NO_TIME] * N_CHANNELS
        self.engagement_short = [0.0] * N_CHANNELS
        self.engagement_long = [0.0] * N_CHANNELS
        self.spend_by_source: dict[str, float] = {}
        self.silence_deadline_ms = NO_TIME
        self.silent_since_ms = NO_TIME
        self.last_inbound_channel = -1
        self.window_clv = -1.0
        self.decline_run = 0
        self.decline_cusum = 0.0
        self.at_risk = 0
        self.health_band = -1

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

    def touch(
        self,
        ts_ms: int,
        channel: int,
        inbound: bool,
        short_ms: float,
        long_ms: float,
    ) -> None:
        if ts_ms > self.last_touch_ms[channel]:
            self.last_touch_ms[channel] = ts_ms
        if not inbound:
            self.outbound_touches[channel] += 1
            return
        self.inbound_touches[channel] += 1
        if ts_ms > self.last_inbound_ms:
            self.last_inbound_ms = ts_ms
        # Exponentially weighted counts of inbound touches, short and long
        # memory, anchored at the channel's latest inbound touch; a late
        # touch counts with the weight it has at that anchor.
        anchor = self.engagement_ms[channel]
        age = float(ts_ms - anchor)
        if anchor == NO_TIME or age >= 0:
            if anchor != NO_TIME:
                self.engagement_short[channel] *= math.exp(-age / short_ms)
                self.engagement_long[channel] *= math.exp(-age / long_ms)
            self.engagement_short[channel] += 1.0
            self.engagement_long[channel] += 1.0
            self.engagement_ms[channel] = ts_ms
        else:
            self.engagement_short[channel] += math.exp(age / short_ms)
            self.engagement_long[channel] += math.exp(age / long_ms)

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
            tuple(self.engagement_ms),
            tuple(self.engagement_short),
            tuple(self.engagement_long),
            tuple(sorted(self.spend_by_source.items())),
            self.silence_deadline_ms,
            self.silent_since_ms,
            self.last_inbound_channel,
            self.window_clv,
            self.decline_run,
            self.decline_cusum,
            self.at_risk,
            self.health_band,
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
            engagement_ms,
            engagement_short,
            engagement_long,
            spend_by_source,
            self.silence_deadline_ms,
            self.silent_since_ms,
            self.last_inbound_channel,
            self.window_clv,
            self.decline_run,
            self.decline_cusum,
            self.at_risk,
            self.health_band,
        ) = row
        self.window_clv = float(self.window_clv)
        self.decline_cusum = float(self.decline_cusum)
        self.first_day_spend = float(self.first_day_spend)
        self.repeat_spend = float(self.repeat_spend)
        self.refund_total = float(self.refund_total)
        self.last_touch_ms = list(last_touch_ms)
        self.inbound_touches = list(inbound_touches)
        self.outbound_touches = list(outbound_touches)
        self.engagement_ms = list(engagement_ms)
        self.engagement_short = [float(value) for value in engagement_short]
        self.engagement_long = [float(value) for value in engagement_long]
        self.spend_by_source = {source: spend for source, spend in spend_by_source}


SilenceWindow = Callable[[str, str | None, int], int]


class SignalSink(Protocol):
    """Where the table puts signals as they are decided: a list, or an
    object that acts on each at once (the key-group actor evaluates the
    customer at that moment)."""

    def append(self, signal: tuple[Any, ...], /) -> None: ...


class CustomerTable:
    """The customer records of one key group, by (tenant, customer_id), and
    the timers of their silence deadlines.

    ``silence_window_ms`` is the silence window (0 turns silence off);
    ``silence_window``, when given, returns the window of a (tenant, segment,
    channel of the last inbound touch) instead.
    """

    def __init__(
        self,
        short_window_ms: float = DEFAULT_SHORT_WINDOW_MS,
        long_window_ms: float = DEFAULT_LONG_WINDOW_MS,
        silence_window_ms: int = 0,
        silence_window: SilenceWindow | None = None,
    ) -> None:
        self.records: dict[tuple[str, str], CustomerRecord] = {}
        self.short_window_ms = short_window_ms
        self.long_window_ms = long_window_ms
        self.silence_window_ms = silence_window_ms
        self.silence_window = silence_window
        # A min-heap of (deadline, tenant, customer_id); an entry whose
        # deadline is no longer the record's is stale and skipped when popped.
        self.timers: list[tuple[int, str, str]] = []
        # How deep apply() or fire() is in a signal sink or callback.
        self._calling_out = 0
        self._forget_names()

    def _forget_names(self) -> None:
        # Codes of names in order of first use, as the native table keeps
        # them: part of the snapshot bytes.
        self.tenants: dict[str, int] = {}
        self.segments: dict[str, int] = {}
        self.sources: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def tenant_names(self) -> list[str]:
        """The tenants of the table's customers, sorted."""
        return sorted({tenant for tenant, _ in self.records})

    def memory_bytes(self) -> int:
        """A rough size of the records (the native table counts exactly)."""
        return sum(
            sys.getsizeof(record) + sum(map(sys.getsizeof, record.row()))
            for record in self.records.values()
        )

    def apply(
        self,
        touches: list[Any],
        watermark_ms: int = NO_TIME,
        ordered: bool = False,
        signals: SignalSink | None = None,
    ) -> int:
        """Apply decoded touches in order; return how many were applied.

        Touches before `watermark_ms` are late: they update aggregates but
        decide nothing. With `ordered` (the replay clock: a key group's
        touches arrive in event-time order), the deadlines before each
        touch fire first. Signals are appended to `signals` as tuples
        ``(time_ms, code, tenant, customer_id, channel, trigger_event_id,
        trigger_ts_ms, silent_ms)``.
        """
        records = self.records
        if signals is None:
            signals = []
        for touch in touches:
            channel = touch.channel
            if not 0 <= channel < N_CHANNELS:
                msg = f"channel code {channel} out of range"
                raise ValueError(msg)
            ts_ms = touch.ts_ms
            if ordered and self.timers and self.timers[0][0] < ts_ms:
                self.fire(ts_ms, False, signals)
            key = (touch.tenant, touch.customer_id)
            record = records.get(key)
            if record is None:
                record = CustomerRecord(touch.tenant, touch.customer_id)
                records[key] = record
                self.tenants.setdefault(touch.tenant, len(self.tenants))
            kind = touch.kind
            previous_inbound_ms = record.last_inbound_ms

            if touch.segment is not None:
                record.segment = touch.segment
                self.segments.setdefault(touch.segment, len(self.segments))
            if ts_ms > record.last_event_ms:
                record.last_event_ms = ts_ms
            record.touch(
                ts_ms, channel, touch.inbound, self.short_window_ms, self.long_window_ms
            )
            if touch.inbound and ts_ms >= previous_inbound_ms:
                record.last_inbound_channel = channel

            if kind == KIND_ORDER:
                record.purchase(ts_ms, touch.day, touch.amount)
                source = self._source_name(touch.source)
                spend = record.spend_by_source
                spend[source] = spend.get(source, 0.0) + touch.amount
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
            # Silence last, so that a signal sees the event applied.
            if touch.inbound and self.silence_window_ms > 0:
                self._silence(record, touch, previous_inbound_ms, watermark_ms, signals)
        return len(touches)

    def _silence(
        self,
        record: CustomerRecord,
        touch: Any,
        previous_inbound_ms: int,
        watermark_ms: int,
        signals: SignalSink,
    ) -> None:
        # An inbound touch ends a silence episode and moves the deadline;
        # a late one (before the watermark) only moves a deadline that is
        # still ahead of the watermark, and decides nothing.
        ts_ms = touch.ts_ms
        late = ts_ms < watermark_ms
        if record.silent_since_ms != NO_TIME:
            if late or ts_ms < record.silent_since_ms:
                return
            self._calling_out += 1
            try:
                signals.append(
                    (
                        ts_ms,
                        SIGNAL_SILENCE_ENDED,
                        record.tenant,
                        record.customer_id,
                        touch.channel,
                        touch.event_id,
                        ts_ms,
                        ts_ms - previous_inbound_ms,
                    )
                )
            finally:
                self._calling_out -= 1
            record.silent_since_ms = NO_TIME
        window_ms = self.silence_window_ms
        if self.silence_window is not None:
            self._calling_out += 1
            try:
                window_ms = self.silence_window(
                    record.tenant, record.segment, record.last_inbound_channel
                )
            finally:
                self._calling_out -= 1
        deadline = ts_ms + window_ms
        if deadline > record.silence_deadline_ms and deadline > watermark_ms:
            record.silence_deadline_ms = deadline
            heapq.heappush(self.timers, (deadline, record.tenant, record.customer_id))
            if len(self.timers) > 2 * len(self.records) + 1024:
                self._rebuild_timers()

    def fire(self, limit_ms: int, inclusive: bool, signals: SignalSink) -> int:
        """Fire the deadlines before `limit_ms` (or at it, when `inclusive`),
        in time order; return how many fired."""
        timers = self.timers
        fired = 0
        while timers and (
            timers[0][0] < limit_ms or (inclusive and timers[0][0] == limit_ms)
        ):
            deadline, tenant, customer_id = heapq.heappop(timers)
            record = self.records.get((tenant, customer_id))
            if record is None or record.silence_deadline_ms != deadline:
                continue
            record.silence_deadline_ms = NO_TIME
            record.silent_since_ms = deadline
            fired += 1
            self._calling_out += 1
            try:
                signals.append(
                    (
                        deadline,
                        SIGNAL_SILENCE,
                        tenant,
                        customer_id,
                        record.last_inbound_channel,
                        None,
                        NO_TIME,
                        deadline - record.last_inbound_ms,
                    )
                )
            finally:
                self._calling_out -= 1
        return fired

    def next_deadline(self) -> int:
        """The earliest pending deadline, or NO_TIME."""
        timers = self.timers
        while timers:
            deadline, tenant, customer_id = timers[0]
            record = self.records.get((tenant, customer_id))
            if record is not None and record.silence_deadline_ms == deadline:
                return deadline
            heapq.heappop(timers)
        return NO_TIME

    def _rebuild_timers(self) -> None:
        self.timers = [
            (record.silence_deadline_ms, record.tenant, record.customer_id)
            for record in self.records.values()
            if record.silence_deadline_ms != NO_TIME
        ]
        heapq.heapify(self.timers)

    def set_window_state(
        self,
        tenant: str,
        customer_id: str,
        window_clv: float,
        decline_run: int,
        decline_cusum: float,
        at_risk: int,
        health_band: int,
    ) -> None:
        """Keep a customer's value-window state (``WINDOW_FIELDS``)."""
        record = self.records[(tenant, customer_id)]
        record.window_clv = window_clv
        record.decline_run = decline_run
        record.decline_cusum = decline_cusum
        record.at_risk = at_risk
        record.health_band = health_band

    def rows(self) -> list[Row]:
        """Return every record's row, sorted by (tenant, customer_id)."""
        return [self.records[key].row() for key in sorted(self.records)]

    def get_row(self, tenant: str, customer_id: str) -> Row | None:
        """Return one customer's row, or None."""
        record = self.records.get((tenant, customer_id))
        return None if record is None else record.row()

    def load_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Replace the table's content with rows made by :meth:`rows`."""
        self._refuse_while_calling_out("load_rows")
        self.records = {}
        self._forget_names()
        for row in rows:
            record = CustomerRecord(row[0], row[1])
            record.load_row(tuple(row))
            self.records[(row[0], row[1])] = record
            self.tenants.setdefault(row[0], len(self.tenants))
            if record.segment is not None:
                self.segments.setdefault(record.segment, len(self.segments))
            spend, record.spend_by_source = record.spend_by_source, {}
            for source, amount in spend.items():
                name = self._source_name(source)
                record.spend_by_source[name] = (
                    record.spend_by_source.get(name, 0.0) + amount
                )
        self._rebuild_timers()

    def _source_name(self, source: str) -> str:
        # Interned in order of first use; past MAX_SOURCES - 1 names, every
        # new source shares the last code, as in the native table.
        if source not in self.sources:
            if len(self.sources) >= MAX_SOURCES - 1:
                source = OTHER_SOURCES
            self.sources.setdefault(source, len(self.sources))
        return source

    def _refuse_while_calling_out(self, method: str) -> None:
        # As in the native table, whose running call holds positions into
        # the records it would free.
        if self._calling_out:
            msg = (
                f"CustomerTable.{method}() was called from a signal sink or "
                "silence_window callback, inside apply() or fire()"
            )
            raise RuntimeError(msg)

    def snapshot(self) -> bytes:
        """Return the whole state as bytes (``TABLE_FORMAT``), the same bytes
        as the native table's for the same state."""
        parts = [b"", b""]
        names = (self.tenants, self.segments, self.sources)
        for table in names:
            for name in table:
                encoded = name.encode()
                parts += [NAME_LENGTH.pack(len(encoded)), encoded]
        id_bytes = channels = 0
        for record in self.records.values():
            fixed, customer_id, *rest = _record_bytes(record, self)
            parts += [fixed, customer_id, *rest]
            id_bytes += len(customer_id)
            channels += bin(fixed[10]).count("1")
        parts[1] = COUNTS.pack(*map(len, names), len(self.records), id_bytes, channels)
        size = sum(map(len, parts)) + HEADER.size
        parts[0] = HEADER.pack(SNAPSHOT_MAGIC, TABLE_FORMAT, 0, size)
        return b"".join(parts)

    def restore(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the table's content with a :meth:`snapshot` (of this
        implementation or the native one). A refused snapshot leaves it
        empty."""
        blob = bytes(data)
        self._refuse_while_calling_out("restore")
        self.load_rows([])
        try:
            check_header(blob)
            self._restore(blob)
        except BaseException:
            self.load_rows([])
            raise

    def _restore(self, blob: bytes) -> None:
        at = HEADER.size
        if len(blob) - at < COUNTS.size:
            _corrupt(at, "the counts are cut short")
        *counts, count, id_bytes, channels = COUNTS.unpack_from(blob, at)
        at += COUNTS.size
        names: list[list[str]] = []
        for kind in (self.tenants, self.segments, self.sources):
            names.append([])
            for code in range(counts[len(names) - 1]):
                if len(blob) - at < NAME_LENGTH.size:
                    _corrupt(at, "a name is cut short")
                (length,) = NAME_LENGTH.unpack_from(blob, at)
                at += NAME_LENGTH.size
                if len(blob) - at < length:
                    _corrupt(at, "a name is cut short")
                try:
                    name = blob[at : at + length].decode()
                except UnicodeDecodeError:
                    _corrupt(at, "a name is not UTF-8")
                if name in kind:
                    _corrupt(at, f"the name {name!r} is there twice")
                kind[name] = code
                names[-1].append(name)
                at += length
        if len(names[2]) > MAX_SOURCES:
            _corrupt(HEADER.size, f"{len(names[2])} sources, more than the limit")
        if count > (len(blob) - at) // RECORD.size:
            _corrupt(HEADER.size + 12, f"{count} records cannot fit")
        if id_bytes > len(blob) - at:
            _corrupt(HEADER.size + 20, f"{id_bytes} bytes of ids cannot fit")
        if channels > (len(blob) - at) // CHANNEL.size:
            _corrupt(HEADER.size + 28, f"{channels} channel states cannot fit")
        totals = [0, 0]
        for _ in range(count):
            at = self._restore_record(blob, at, names, totals)
        if at != len(blob):
            _corrupt(at, "bytes left after the last record")
        if totals != [id_bytes, channels]:
            _corrupt(HEADER.size + 20, "the counts disagree with the records")
        self._rebuild_timers()

    def _restore_record(
        self, blob: bytes, at: int, names: list[list[str]], totals: list[int]
    ) -> int:
        # One record from `at`; return where the next starts. `totals`
        # counts the bytes of ids and the channel states read.
        tenants, segments, sources = names
        offset = at
        if len(blob) - at < RECORD.size:
            _corrupt(offset, "a record is cut short")
        fixed = RECORD.unpack_from(blob, at)
        at += RECORD.size
        tenant, segment, id_length, mask, spends = fixed[:5]
        if tenant >= len(tenants):
            _corrupt(offset, f"tenant code {tenant} out of range")
        if segment > len(segments):
            _corrupt(offset, f"segment code {segment} out of range")
        for day in fixed[7:9]:
            if not _INT32[0] <= day <= _INT32[1]:
                _corrupt(offset, f"day number {day} out of range")
        if not -1 <= fixed[23] < N_CHANNELS:
            _corrupt(offset, f"channel code {fixed[23]} out of range")
        used = [channel for channel in range(N_CHANNELS) if mask & (1 << channel)]
        need = id_length + len(used) * CHANNEL.size + spends * SPEND.size
        if len(blob) - at < need:
            _corrupt(offset, "a record is cut short")
        totals[0] += id_length
        totals[1] += len(used)
        try:
            customer_id = blob[at : at + id_length].decode()
        except UnicodeDecodeError:
            _corrupt(offset, "a customer id is not UTF-8")
        at += id_length
        key = (tenants[tenant], customer_id)
        if key in self.records:
            _corrupt(offset, "a customer is there twice")
        record = CustomerRecord(*key)
        self.records[key] = record
        record.segment = None if segment == 0 else segments[segment - 1]
        for name, value in zip(_RECORD_FIELDS, fixed[5:], strict=True):
            setattr(record, name, value)
        for channel in used:
            (
                record.last_touch_ms[channel],
                record.engagement_ms[channel],
                record.inbound_touches[channel],
                record.outbound_touches[channel],
                record.engagement_short[channel],
                record.engagement_long[channel],
            ) = CHANNEL.unpack_from(blob, at)
            at += CHANNEL.size
        for _ in range(spends):
            code, spend = SPEND.unpack_from(blob, at)
            if code >= len(sources):
                _corrupt(at, f"source code {code} out of range")
            record.spend_by_source[sources[code]] = spend
            at += SPEND.size
        return at


MAX_SOURCES = 0xFFFE


def _record_bytes(record: CustomerRecord, table: CustomerTable) -> list[bytes]:
    """One record's part of a snapshot (see the module docstring)."""
    mask = 0
    channels = []
    for channel in range(N_CHANNELS):
        state = (
            record.last_touch_ms[channel],
            record.engagement_ms[channel],
            record.inbound_touches[channel],
            record.outbound_touches[channel],
            record.engagement_short[channel],
            record.engagement_long[channel],
        )
        if state != _DEFAULT_CHANNEL:
            mask |= 1 << channel
            channels.append(CHANNEL.pack(*state))
    customer_id = record.customer_id.encode()
    segment = 0 if record.segment is None else table.segments[record.segment] + 1
    fixed = RECORD.pack(
        table.tenants[record.tenant],
        segment,
        len(customer_id),
        mask,
        len(record.spend_by_source),
        *_record_fields(record),
    )
    spends = [
        SPEND.pack(table.sources[source], spend)
        for source, spend in record.spend_by_source.items()
    ]
    return [fixed, customer_id, *channels, *spends]


_DEFAULT_CHANNEL = (NO_TIME, NO_TIME, 0, 0, 0.0, 0.0)


def _corrupt(offset: int, what: str) -> NoReturn:
    msg = f"customer-table snapshot is corrupt at byte {offset}: {what}"
    raise ValueError(msg)


def check_header(data: bytes) -> int:
    """Check a snapshot's magic, format and length; return its format.

    Raise ValueError saying what is wrong: not a snapshot, a format this
    Touchstream does not read (both numbers named), truncated or too long.
    """
    if data[:4] != SNAPSHOT_MAGIC:
        msg = (
            f"not a customer-table snapshot: expected it to start with "
            f"{SNAPSHOT_MAGIC!r}, got {data[:4]!r}"
        )
        raise ValueError(msg)
    if len(data) < HEADER.size:
        msg = (
            f"customer-table snapshot is truncated: {len(data)} bytes, "
            f"shorter than its {HEADER.size}-byte header"
        )
        raise ValueError(msg)
    _, format_number, _, length = HEADER.unpack_from(data)
    if format_number != TABLE_FORMAT:
        msg = (
            f"customer-table snapshot format {format_number} is not readable "
            f"by this Touchstream (it reads format {TABLE_FORMAT})"
        )
        raise ValueError(msg)
    if len(data) < length:
        msg = (
            f"customer-table snapshot is truncated: its header says {length} "
            f"bytes, got {len(data)}"
        )
        raise ValueError(msg)
    if len(data) > length:
        msg = (
            f"customer-table snapshot has {len(data) - length} bytes after "
            f"its end at byte {length}"
        )
        raise ValueError(msg)
    return int(format_number)
