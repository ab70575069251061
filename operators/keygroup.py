"""The key-group actor: the stateful step that owns a table of customers.

Each key group (a bytewax key) receives, for every raw batch of every source
partition, one :class:`KeyGroupBatch`: that batch's touches for its customers
(maybe none) and the partition's high event time. The actor dedupes the
touches, applies the fresh ones to its native table in order, and tracks the
watermark (the lowest high time over partitions). At the end of the input it
reports its customers, evaluated at the end time: the tenant's as-of time, or
the last event time of the whole input.
"""

from __future__ import annotations

from typing import Any

import msgspec

from native import load
from operators.clv import CustomerValue, ValueSettings
from operators.decode import Rejection
from operators.dedupe import Deduper
from operators.events import Touch
from operators.health import HealthSettings, evaluate_health
from state.lineage import lineage_json
from state.record import Row, customer_json, purchase_summary

_table = load("table")

SNAPSHOT_FORMAT = 2


class KeyGroupBatch(msgspec.Struct, gc=False, array_like=True):
    """One source batch's share for one key group, with the watermark input."""

    partition: int
    touches: list[Touch]
    high_ms: int
    final: bool


class Counts(msgspec.Struct):
    """Where input records ended up; the four outcomes add up to ``read``."""

    read: int = 0
    applied: int = 0
    duplicates: int = 0
    after_as_of: int = 0
    rejected: dict[str, int] = {}

    def add(self, other: Counts) -> None:
        self.read += other.read
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.after_as_of += other.after_as_of
        for code, count in other.rejected.items():
            self.rejected[code] = self.rejected.get(code, 0) + count

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Report(msgspec.Struct, gc=False):
    """What a step hands to the run's outputs."""

    counts: Counts
    rejections: list[Rejection] = []
    customers: list[dict[str, Any]] = []
    lineage: list[dict[str, Any]] = []


class KeyGroupSettings(msgspec.Struct, frozen=True):
    """Settings of the key-group actor; :meth:`build` makes the logic."""

    partitions: int
    dedupe_span_ms: int = 7 * 86_400_000
    as_of_ms: dict[str, int] = {}
    default_as_of_ms: int | None = None
    position_name: str = "line"
    value: ValueSettings | None = None
    health: HealthSettings | None = None

    def build(self, resume_state: bytes | None = None) -> KeyGroupActor:
        return KeyGroupActor(self, resume_state)


class KeyGroupActor:
    """Owns the customer table of one key group."""

    def __init__(self, settings: KeyGroupSettings, resume_state: bytes | None) -> None:
        self.settings = settings
        health = settings.health
        self.table = (
            _table.CustomerTable()
            if health is None
            else _table.CustomerTable(health.short_window_ms, health.long_window_ms)
        )
        self.deduper = Deduper(settings.dedupe_span_ms)
        self.partition_high_ms: dict[int, int] = {}
        self.value_model = None if settings.value is None else settings.value.build()
        if resume_state is not None:
            self._restore(resume_state)

    @property
    def watermark_ms(self) -> int:
        """The lowest high event time over all source partitions, or -1."""
        if len(self.partition_high_ms) < self.settings.partitions:
            return -1
        return min(self.partition_high_ms.values())

    def on_batch(self, batches: list[KeyGroupBatch]) -> list[Report]:
        """Apply the batches in order; report duplicates and conflicts."""
        counts = Counts()
        rejections: list[Rejection] = []
        high = self.partition_high_ms

        for batch in batches:
            if batch.high_ms > high.get(batch.partition, -1):
                high[batch.partition] = batch.high_ms
            elif batch.partition not in high:
                high[batch.partition] = -1
            if not batch.touches:
                continue
            fresh = self._dedupe(batch.touches, counts, rejections)
            counts.applied += self.table.apply(fresh)
        self.deduper.forget_before(self.watermark_ms)

        if counts.applied == counts.duplicates == 0 and not rejections:
            return []
        if rejections:
            counts.rejected = {"conflict": len(rejections)}
        return [Report(counts, rejections)]

    def on_eof(self) -> list[Report]:
        """Report every customer, evaluated at the end time."""
        last_event_ms = max(self.partition_high_ms.values(), default=-1)
        settings = self.settings
        customers = []
        lineage = []
        horizon_days = None if settings.value is None else settings.value.horizon_days
        for row in self.table.rows():
            end_ms = settings.as_of_ms.get(row[0], settings.default_as_of_ms)
            if end_ms is None:
                end_ms = last_event_ms
            value = self._value(row, end_ms)
            health = None
            if settings.health is not None:
                health = evaluate_health(
                    row, end_ms, value, horizon_days, settings.health
                )
            customers.append(customer_json(row, end_ms, value, health))
            lineage.append(lineage_json(row, end_ms, self.value_model, value, health))
        if not customers:
            return []
        return [Report(Counts(), customers=customers, lineage=lineage)]

    def _value(self, row: Row, end_ms: int) -> CustomerValue | None:
        purchases = purchase_summary(row, end_ms)
        if self.value_model is None or purchases is None:
            return None
        return self.value_model.evaluate(*purchases)

    def _dedupe(
        self, touches: list[Touch], counts: Counts, rejections: list[Rejection]
    ) -> list[Touch]:
        fresh = []
        for touch in touches:
            verdict, first_position = self.deduper.check(touch)
            if verdict == "new":
                fresh.append(touch)
            elif verdict == "duplicate":
                counts.duplicates += 1
            else:
                reason = (
                    f"conflict: `event_id` {touch.event_id!r} from source "
                    f"`{touch.source}` was first seen at "
                    f"{self.settings.position_name} {first_position} with a "
                    "different payload; a repeated id must carry the same event"
                )
                rejections.append(
                    Rejection(touch.position, "conflict", reason, touch.event_id)
                )
        return fresh

    def snapshot(self) -> bytes:
        """Return the whole state as versioned MessagePack bytes."""
        return msgspec.msgpack.encode(
            {
                "format": SNAPSHOT_FORMAT,
                "rows": self.table.rows(),
                "dedupe": self.deduper.snapshot(),
                "partition_high_ms": sorted(self.partition_high_ms.items()),
            }
        )

    def _restore(self, data: bytes) -> None:
        state = msgspec.msgpack.decode(data)
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = (
                f"key-group snapshot format {state.get('format')!r} is not "
                f"readable by this Touchstream (expected {SNAPSHOT_FORMAT})"
            )
            raise ValueError(msg)
        self.table.load_rows(state["rows"])
        self.deduper.restore(state["dedupe"])
        self.partition_high_ms = dict(state["partition_high_ms"])
