"""The key-group actor: the stateful step that owns a table of customers
and decides for them.

Each key group (a bytewax key) receives, for every raw batch of every source
partition, one :class:`KeyGroupBatch`: that batch's touches for its customers
(maybe none) and the partition's high event time. The actor dedupes the
touches, applies the fresh ones to its native table in order, and moves the
watermark: the lowest high time over partitions, less the allowed lateness
(on the live clock, a partition idle for longer than its idle timeout drops
out, and with all idle the wall clock drives it). Deadlines and value-window
closes that the watermark passes are decided in event-time order, and each
signal goes through the rules at once, with the customer evaluated at the
signal's own time. At the end of the input it reports its customers,
evaluated at the end time: the tenant's as-of time, or the last event time
of the whole input.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable
from typing import Any

import msgspec

from native import load
from operators.clv import CustomerValue, ValueModel, ValueSettings
from operators.decisions import (
    DecisionSettings,
    WindowState,
    boundary_after,
    close_window,
)
from operators.decode import Rejection
from operators.dedupe import Deduper
from operators.events import CHANNELS, Touch
from operators.health import Health, HealthSettings, evaluate_health
from operators.rules import (
    CustomerView,
    Intervention,
    RuleSet,
    Signal,
    forget_cooldowns,
)
from state.lineage import lineage_json
from state.record import ROW_FIELDS, Row, customer_json, purchase_summary

_table = load("table")

# 4: the customer table as its own binary snapshot; 3 held its rows.
SNAPSHOT_FORMAT = 4
_ROWS_FORMAT = 3
NO_TIME = -1
HOUR_MS = 3_600_000
_FIELD = {name: index for index, name in enumerate(ROW_FIELDS)}
_SIGNAL_NAMES = {
    _table.SIGNAL_SILENCE: "silence",
    _table.SIGNAL_SILENCE_ENDED: "silence_ended",
}


class KeyGroupBatch(msgspec.Struct, gc=False, array_like=True):
    """One source batch's share for one key group, with the watermark input.

    ``key_group`` is the index of the key group it is for (-1 when the
    sender does not say): bytewax does not tell a logic its key.
    """

    partition: int
    touches: list[Touch]
    high_ms: int
    final: bool
    key_group: int = -1
    # The partition's high time just before each touch, in arrival order
    # (empty: unknown, the touches before it in this share count).
    highs_ms: list[int] = []
    # The partition had more to read: it is not idle, however long the
    # next batch takes (a busy or paused engine, not a quiet input).
    behind: bool = False


class Counts(msgspec.Struct):
    """Where input records ended up; the four outcomes add up to ``read``.

    ``late`` counts applied events that came after the watermark (live
    clock only): they updated aggregates and decided nothing.
    """

    read: int = 0
    applied: int = 0
    duplicates: int = 0
    after_as_of: int = 0
    rejected: dict[str, int] = {}
    late: int = 0
    interventions: int = 0

    def add(self, other: Counts) -> None:
        self.read += other.read
        self.applied += other.applied
        self.late += other.late
        self.interventions += other.interventions
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
    interventions: list[Intervention] = []


class ClockSettings(msgspec.Struct, frozen=True):
    """The replay clock (pure event time) or the live one."""

    live: bool = False
    allowed_lateness_ms: int = 0
    idle_timeout_ms: int = 5_000


class KeyGroupSettings(msgspec.Struct, frozen=True):
    """Settings of the key-group actor; :meth:`build` makes the logic.

    ``rules`` returns the rule set in force (it may reload a changed file);
    without it, or without ``decisions``, the actor decides nothing.
    """

    partitions: int
    dedupe_span_ms: int = 7 * 86_400_000
    as_of_ms: dict[str, int] = {}
    default_as_of_ms: int | None = None
    position_name: str = "line"
    value: ValueSettings | None = None
    health: HealthSettings | None = None
    decisions: DecisionSettings | None = None
    rules: Callable[[], RuleSet] | None = None
    clock: ClockSettings = ClockSettings()
    time_zones: dict[str, str] = {}
    default_time_zone: str = "UTC"
    currencies: dict[str, str] = {}
    default_currency: str = "USD"
    # On the live clock: report the record of every customer touched since
    # the last report, evaluated at the wall time (the server's live view),
    # at most once every `publish_every_ms`: a customer touched many times
    # in between is evaluated once.
    publish_customers: bool = False
    publish_every_ms: int = 0
    # The value settings in force, when they may change while running (a
    # reloaded parameter file); otherwise ``value`` holds for the run.
    value_source: Callable[[], ValueSettings] | None = None

    def build(
        self,
        resume_state: bytes | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> KeyGroupActor:
        return KeyGroupActor(self, resume_state, wall_ms)

    def time_zone(self, tenant: str) -> str:
        return self.time_zones.get(tenant, self.default_time_zone)


def _event_time(touch: Touch) -> int:
    return touch.ts_ms


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class KeyGroupActor:
    """Owns the customer table of one key group and decides for it."""

    def __init__(
        self,
        settings: KeyGroupSettings,
        resume_state: bytes | None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.wall_ms = wall_ms or _wall_ms
        health = settings.health
        decisions = settings.decisions
        self.table = _table.CustomerTable(
            *(
                ()
                if health is None
                else (health.short_window_ms, health.long_window_ms)
            ),
            silence_window_ms=0 if decisions is None else decisions.silence_window_ms,
            silence_window=None if decisions is None else decisions.silence_windows(),
        )
        self.deduper = Deduper(settings.dedupe_span_ms)
        self.partition_high_ms: dict[int, int] = {}
        self.partition_seen_wall_ms: dict[int, int] = {}
        self.partition_behind: dict[int, bool] = {}
        self.watermark_ms = NO_TIME
        # The next value-window boundary of each time zone in use.
        self.next_boundary_ms: dict[str, int] = {}
        self.cooldowns: dict[str, int] = {}
        self._value_settings = settings.value
        self.value_model = None if settings.value is None else settings.value.build()
        self._pending: list[Intervention] = []
        self._late = 0
        self._touched: set[tuple[str, str]] = set()
        self._published_ms = NO_TIME
        self._notify_wanted_ms: int | None = None
        # The shortest silence window: no deadline a touch sets is nearer.
        self._shortest_window_ms = (
            NO_TIME
            if decisions is None
            else min(
                [
                    decisions.silence_window_ms,
                    *(rule.window_ms for rule in decisions.silence_overrides),
                ]
            )
        )
        self._forget_cooldowns_at_ms = NO_TIME
        if resume_state is not None:
            self._restore(resume_state)

    # The clock.

    def _low_mark_ms(self, excluding: int | None = None) -> int:
        """The watermark the partitions allow now, before lateness; on the
        live clock, at most the wall clock. `excluding` leaves out one
        partition (live clock only)."""
        settings = self.settings
        high = self.partition_high_ms
        if not settings.clock.live:
            if len(high) < settings.partitions:
                return NO_TIME
            return min(high.values())
        now = self.wall_ms()
        idle_after = now - settings.clock.idle_timeout_ms
        behind = self.partition_behind
        active = [
            high[part]
            for part, seen in self.partition_seen_wall_ms.items()
            if (seen > idle_after or behind.get(part, False))
            and high.get(part, NO_TIME) != NO_TIME
            and part != excluding
        ]
        if excluding is not None:
            return min([*active, now])
        return min(active, default=now)

    def _move_watermark(self) -> None:
        """Advance the watermark and decide what it passes."""
        low = self._low_mark_ms()
        if low == NO_TIME:
            return
        self._move_to(low - self.settings.clock.allowed_lateness_ms)

    def _move_to(self, mark: int) -> None:
        if mark <= self.watermark_ms:
            return
        self.watermark_ms = mark
        self._advance(mark, inclusive=False)
        self.deduper.forget_before(mark)
        rules = self._rules()
        if rules is not None and mark >= self._forget_cooldowns_at_ms:
            # A scan of every cooldown: at most once an hour of event time.
            forget_cooldowns(self.cooldowns, mark, rules.max_cooldown_ms)
            self._forget_cooldowns_at_ms = mark + HOUR_MS

    def _advance(self, limit_ms: int, inclusive: bool) -> None:
        """Close the value windows up to `limit_ms` and fire the deadlines
        before it (or at it, when `inclusive`), in time order; at one time,
        a window closes before a deadline fires."""
        if self.settings.decisions is None:
            return
        sink = _Decide(self)
        while True:
            zone, boundary = self._next_boundary(limit_ms)
            if boundary == NO_TIME or boundary > limit_ms:
                break
            self.table.fire(boundary, False, sink)
            self._close_window(zone, boundary)
            self.next_boundary_ms[zone] = boundary_after(
                boundary, self.settings.decisions.value_window, zone
            )
        self.table.fire(limit_ms, inclusive, sink)

    def _next_boundary(self, seen_ms: int) -> tuple[str, int]:
        decisions = self.settings.decisions
        assert decisions is not None
        if not self.next_boundary_ms and seen_ms != NO_TIME:
            # The first time seen starts the calendar of every zone in use.
            for zone in {
                self.settings.default_time_zone,
                *self.settings.time_zones.values(),
            }:
                self.next_boundary_ms[zone] = boundary_after(
                    seen_ms, decisions.value_window, zone
                )
        if not self.next_boundary_ms:
            return "", NO_TIME
        zone = min(
            self.next_boundary_ms, key=lambda name: (self.next_boundary_ms[name], name)
        )
        return zone, self.next_boundary_ms[zone]

    # Events.

    def on_batch(self, batches: list[KeyGroupBatch]) -> list[Report]:
        """Apply the batches in order, deciding as the watermark moves."""
        counts = Counts()
        rejections: list[Rejection] = []
        high = self.partition_high_ms
        live = self.settings.clock.live
        if live:
            self._forgive_stall()

        for batch in batches:
            high_ms = batch.high_ms
            read_high_ms = high.get(batch.partition, NO_TIME)
            if live:
                now_ms = self.wall_ms()
                self.partition_seen_wall_ms[batch.partition] = now_ms
                self.partition_behind[batch.partition] = batch.behind
                # An event ahead of the wall clock (within the allowed skew)
                # is applied, but never moves time past the wall clock: one
                # skewed source must not decide for everyone early.
                high_ms = min(high_ms, now_ms)
            if high_ms > high.get(batch.partition, NO_TIME):
                high[batch.partition] = high_ms
            elif batch.partition not in high:
                high[batch.partition] = NO_TIME
            fresh = self._dedupe(batch.touches, counts, rejections)
            if fresh:
                counts.applied += len(fresh)
                highs = batch.highs_ms
                if highs and len(fresh) != len(batch.touches):
                    kept = {id(touch) for touch in fresh}
                    highs = [
                        high_ms
                        for touch, high_ms in zip(batch.touches, highs, strict=True)
                        if id(touch) in kept
                    ]
                self._apply(fresh, batch.partition, read_high_ms, highs)
                if self.settings.publish_customers:
                    self._touched.update(
                        (touch.tenant, touch.customer_id) for touch in fresh
                    )
            self._move_watermark()

        if rejections:
            counts.rejected = {"conflict": len(rejections)}
        return self._reports(counts, rejections)

    def _apply(
        self,
        touches: list[Touch],
        partition: int,
        read_high_ms: int,
        highs_ms: list[int],
    ) -> None:
        table = self.table
        watermark = self.watermark_ms
        if self.settings.decisions is None:
            table.apply(touches, watermark)
            return
        sink = _Decide(self)
        if self.settings.clock.live:
            self._apply_live(touches, partition, read_high_ms, highs_ms, sink)
            return
        # Event-time order: before each touch, what comes before it is
        # decided; a value window closes before the first touch at or
        # after its end.
        start = 0
        while start < len(touches):
            _, boundary = self._next_boundary(touches[start].ts_ms)
            end = bisect.bisect_left(touches, boundary, start, key=_event_time)
            table.apply(touches[start:end], watermark, True, sink)
            if end < len(touches):
                self._advance(touches[end].ts_ms, inclusive=False)
            start = end

    def _apply_live(
        self,
        touches: list[Touch],
        partition: int,
        high_ms: int,
        highs_ms: list[int],
        sink: _Decide,
    ) -> None:
        """Arrival order, deciding as if the events came one at a time:
        before each touch, time moves to its partition's high time then
        (`highs_ms`, from the decode step, which saw the whole source batch;
        else the touches before it) and what that passes is decided. A batch
        is then decided alike whatever its size, such as the backlog a
        restarted engine reads in large batches, where a silence and the
        touch that ends it may arrive together."""
        lateness_ms = self.settings.clock.allowed_lateness_ms
        cap_ms = self._low_mark_ms(excluding=partition)
        highs = highs_ms or [
            NO_TIME,
            *itertools.accumulate([t.ts_ms for t in touches[:-1]], max),
        ]
        last_mark_ms = min(max(high_ms, highs[-1]), cap_ms) - lateness_ms
        due_ms = self._next_due_ms()
        # Nothing pending falls due within the batch, nor can a deadline
        # its own touches set (the shortest window after the earliest).
        if (due_ms == NO_TIME or last_mark_ms <= due_ms) and (
            last_mark_ms <= min(t.ts_ms for t in touches) + self._shortest_window_ms
        ):
            self._apply_arrived(touches, sink)
            return
        for touch, before_ms in zip(touches, highs, strict=True):
            high_ms = max(high_ms, before_ms)
            mark_ms = min(high_ms, cap_ms) - lateness_ms
            due_ms = self._next_due_ms()
            if due_ms != NO_TIME and mark_ms > due_ms:
                self._move_to(mark_ms)
            self._apply_arrived([touch], sink)

    def _apply_arrived(self, touches: list[Touch], sink: _Decide) -> None:
        # Arrival order: only the watermark fires deadlines.
        watermark = self.watermark_ms
        self._late += sum(1 for touch in touches if touch.ts_ms < watermark)
        self.table.apply(touches, watermark, False, sink)

    def _next_due_ms(self) -> int:
        """The earliest time at which something is decided: a deadline or
        a value-window end; NO_TIME when nothing is pending."""
        pending = [*self.next_boundary_ms.values(), self.table.next_deadline()]
        return min((ms for ms in pending if ms != NO_TIME), default=NO_TIME)

    def notify_at_ms(self) -> int | None:
        self._notify_wanted_ms = self._next_notify_ms()
        return self._notify_wanted_ms

    def _next_notify_ms(self) -> int | None:
        """On the live clock, the wall time at which the watermark may next
        decide something: when an active partition turns idle, or, with all
        idle, when the next deadline or window end is past the lateness; or
        when touched customers are next to be published."""
        settings = self.settings
        if not settings.clock.live or settings.decisions is None:
            return None
        now = self.wall_ms()
        timeout = settings.clock.idle_timeout_ms
        behind = self.partition_behind
        expiries = [
            seen + timeout
            for part, seen in self.partition_seen_wall_ms.items()
            if seen + timeout > now and not behind.get(part, False)
        ]
        publish = []
        if self._touched:
            publish = [self._published_ms + settings.publish_every_ms]
        if expiries:
            return min([expiry + 1 for expiry in expiries] + publish)
        due = [self.table.next_deadline(), self._next_boundary(NO_TIME)[1]]
        pending = [
            ms + settings.clock.allowed_lateness_ms + 1 for ms in due if ms != NO_TIME
        ]
        return min(pending + publish, default=None)

    def on_notify(self) -> list[Report]:
        """The wall clock moved: move the watermark with it (after forgiving
        a stall, as a batch does)."""
        self._forgive_stall()
        self._move_watermark()
        return self._reports(Counts(), [])

    def _forgive_stall(self) -> None:
        """Called back (with a batch or a wake-up) later than the wake-up
        asked for by over half the idle timeout: the engine itself was held
        up (a checkpoint, a busy machine, a store it waited for), not the
        input gone quiet. What arrived meanwhile is still to be read, so the
        partitions count as seen now rather than idle, and their events are
        decided, not late."""
        wanted_ms = self._notify_wanted_ms
        if wanted_ms is None:
            return
        now_ms = self.wall_ms()
        if now_ms - wanted_ms > self.settings.clock.idle_timeout_ms // 2:
            self.partition_seen_wall_ms = dict.fromkeys(
                self.partition_seen_wall_ms, now_ms
            )
        self._notify_wanted_ms = None

    def _reports(self, counts: Counts, rejections: list[Rejection]) -> list[Report]:
        interventions, self._pending = self._pending, []
        counts.late, self._late = self._late, 0
        counts.interventions = len(interventions)
        customers: list[dict[str, Any]] = []
        lineage: list[dict[str, Any]] = []
        now_ms = self.wall_ms()
        every_ms = self.settings.publish_every_ms
        if self._touched and now_ms - self._published_ms >= every_ms:
            customers, lineage = self._touched_customers()
            self._published_ms = now_ms
        if (
            counts.applied == counts.duplicates == counts.late == 0
            and not rejections
            and not interventions
            and not customers
        ):
            return []
        return [
            Report(
                counts,
                rejections,
                customers=customers,
                lineage=lineage,
                interventions=interventions,
            )
        ]

    def _touched_customers(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The records of the customers touched since the last report, now."""
        if not self._touched:
            return [], []
        now_ms = self.wall_ms()
        customers = []
        lineage = []
        for tenant, customer_id in sorted(self._touched):
            row = self.table.get_row(tenant, customer_id)
            assert row is not None
            value = self._value(row, now_ms)
            health = self._health(row, now_ms, value)
            customers.append(customer_json(row, now_ms, value, health))
            lineage.append(lineage_json(row, now_ms, self._model(), value, health))
        self._touched.clear()
        return customers, lineage

    def on_eof(self) -> list[Report]:
        """Decide up to the end time, then report every customer there."""
        last_event_ms = max(self.partition_high_ms.values(), default=NO_TIME)
        ends: dict[str, int] = {}
        if self.settings.clock.live:
            final_ms = self.watermark_ms
        else:
            ends = {
                tenant: self._end_ms(tenant, last_event_ms)
                for tenant in self.table.tenant_names()
            }
            final_ms = max(ends.values(), default=NO_TIME)
            if final_ms != NO_TIME:
                self._advance(final_ms, inclusive=True)
        reports = self._reports(Counts(), [])

        customers = []
        lineage = []
        for row in self.table.rows():
            end_ms = ends.get(row[0], final_ms)
            value = self._value(row, end_ms)
            health = self._health(row, end_ms, value)
            customers.append(customer_json(row, end_ms, value, health))
            lineage.append(lineage_json(row, end_ms, self._model(), value, health))
        if customers:
            reports.append(Report(Counts(), customers=customers, lineage=lineage))
        return reports

    def _end_ms(self, tenant: str, last_event_ms: int) -> int:
        end_ms = self._as_of_ms(tenant)
        return last_event_ms if end_ms is None else end_ms

    def _as_of_ms(self, tenant: str) -> int | None:
        """The tenant's as-of time: nothing is decided after it."""
        settings = self.settings
        return settings.as_of_ms.get(tenant, settings.default_as_of_ms)

    # Evaluation and decisions.

    def _value(self, row: Row, end_ms: int) -> CustomerValue | None:
        purchases = purchase_summary(row, end_ms)
        model = self._model()
        if model is None or purchases is None:
            return None
        return model.evaluate(*purchases)

    def _model(self) -> ValueModel | None:
        """The value model in force, rebuilt when its settings changed."""
        source = self.settings.value_source
        if source is not None:
            current = source()
            if current is not self._value_settings:
                self._value_settings = current
                self.value_model = current.build()
        return self.value_model

    def _health(
        self, row: Row, end_ms: int, value: CustomerValue | None
    ) -> Health | None:
        settings = self.settings
        if settings.health is None:
            return None
        horizon_days = None if settings.value is None else settings.value.horizon_days
        return evaluate_health(row, end_ms, value, horizon_days, settings.health)

    def _rules(self) -> RuleSet | None:
        return None if self.settings.rules is None else self.settings.rules()

    def _close_window(self, zone: str, boundary_ms: int) -> None:
        """Evaluate every customer with an order at a window's end."""
        settings = self.settings
        decisions = settings.decisions
        assert decisions is not None
        for row in self.table.rows():
            tenant = row[0]
            if settings.time_zone(tenant) != zone:
                continue
            as_of_ms = self._as_of_ms(tenant)
            if as_of_ms is not None and boundary_ms > as_of_ms:
                continue
            value = self._value(row, boundary_ms)
            if value is None:
                continue
            health = self._health(row, boundary_ms, value)
            state = WindowState(*row[_FIELD["window_clv"] :])
            signals = close_window(state, value, health, decisions)
            self.table.set_window_state(
                tenant,
                row[1],
                state.window_clv,
                state.decline_run,
                state.decline_cusum,
                state.at_risk,
                state.health_band,
            )
            channel = row[_FIELD["last_inbound_channel"]]
            for kind, details in signals:
                signal = Signal(
                    kind,
                    tenant,
                    row[1],
                    boundary_ms,
                    CHANNELS[channel] if channel >= 0 else None,
                    details=details,
                )
                self._decide(signal, row, value, health)

    def on_table_signal(self, raw: tuple[Any, ...]) -> None:
        """A signal of the table (silence, silence ended), decided at once."""
        time_ms, code, tenant, customer_id, channel, event_id, trigger_ms, silent = raw
        as_of_ms = self._as_of_ms(tenant)
        if as_of_ms is not None and time_ms > as_of_ms:
            return
        row = self.table.get_row(tenant, customer_id)
        assert row is not None
        details = {"silent_ms": float(silent)}
        if code == _table.SIGNAL_SILENCE:
            details["window_ms"] = float(silent)
            details["last_inbound_ms"] = float(row[_FIELD["last_inbound_ms"]])
        signal = Signal(
            _SIGNAL_NAMES[code],
            tenant,
            customer_id,
            time_ms,
            CHANNELS[channel] if channel >= 0 else None,
            event_id,
            None if trigger_ms == NO_TIME else trigger_ms,
            details,
        )
        rules = self._rules()
        segment, repeats = row[_FIELD["segment"]], row[_FIELD["repeat_purchases"]]
        if rules is None or not rules.may_match(signal, segment, repeats):
            return
        value = self._value(row, time_ms)
        self._decide(signal, row, value, self._health(row, time_ms, value))

    def _decide(
        self,
        signal: Signal,
        row: Row,
        value: CustomerValue | None,
        health: Health | None,
    ) -> None:
        rules = self._rules()
        if rules is None:
            return
        settings = self.settings
        view = CustomerView(
            segment=row[_FIELD["segment"]],
            repeat_purchases=row[_FIELD["repeat_purchases"]],
            clv=None if value is None else value.clv,
            value_band=None if value is None else value.value_band,
            p_alive=None if value is None else value.p_alive,
            health=None if health is None else round(health.score, 2),
            health_band=None if health is None else health.band,
            currency=settings.currencies.get(signal.tenant, settings.default_currency),
        )
        emitted_ms = self.wall_ms() if settings.clock.live else signal.event_time_ms
        self._pending.extend(rules.decide(signal, view, self.cooldowns, emitted_ms))

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
        """Return the whole state as versioned MessagePack bytes; the table
        is its own versioned binary snapshot inside."""
        return msgspec.msgpack.encode(
            {
                "format": SNAPSHOT_FORMAT,
                "table": self.table.snapshot(),
                "dedupe": self.deduper.snapshot(),
                "partition_high_ms": sorted(self.partition_high_ms.items()),
                "watermark_ms": self.watermark_ms,
                "next_boundary_ms": sorted(self.next_boundary_ms.items()),
                "cooldowns": sorted(self.cooldowns.items()),
            }
        )

    def _restore(self, data: bytes) -> None:
        try:
            format_number = msgspec.msgpack.decode(data, type=_Format).format
            kind = _SNAPSHOT_TYPES.get(format_number)
            if kind is None:
                msg = (
                    f"key-group snapshot format {format_number!r} is not "
                    f"readable by this Touchstream (expected {SNAPSHOT_FORMAT}, "
                    f"or {_ROWS_FORMAT} from before)"
                )
                raise ValueError(msg)
            state = msgspec.msgpack.decode(data, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as ex:
            msg = f"key-group snapshot is not readable: {ex}"
            raise ValueError(msg) from ex
        if isinstance(state, _TableSnapshot):
            self.table.restore(state.table)
        else:
            # A checkpoint of the Touchstream before binary tables.
            self.table.load_rows(state.rows)
        self.deduper.restore(state.dedupe)
        self.partition_high_ms = dict(state.partition_high_ms)
        self.watermark_ms = state.watermark_ms
        self.next_boundary_ms = dict(state.next_boundary_ms)
        self.cooldowns = dict(state.cooldowns)
        if self.settings.clock.live:
            # Resumed after a stop: what arrived meanwhile is the partitions'
            # backlog. Until each has been idle for its timeout, time follows
            # their events, so the backlog is decided, not late.
            now_ms = self.wall_ms()
            self.partition_seen_wall_ms = dict.fromkeys(self.partition_high_ms, now_ms)


class _Format(msgspec.Struct):
    """The one field every key-group snapshot has."""

    format: int


class _TableSnapshot(msgspec.Struct):
    """A key-group snapshot (``SNAPSHOT_FORMAT``), as :meth:`snapshot` writes."""

    format: int
    table: bytes
    dedupe: list[Any]
    partition_high_ms: list[tuple[int, int]]
    watermark_ms: int
    next_boundary_ms: list[tuple[str, int]]
    cooldowns: list[tuple[str, int]]


class _RowsSnapshot(msgspec.Struct):
    """A key-group snapshot of the format before binary tables."""

    format: int
    rows: list[Any]
    dedupe: list[Any]
    partition_high_ms: list[tuple[int, int]]
    watermark_ms: int
    next_boundary_ms: list[tuple[str, int]]
    cooldowns: list[tuple[str, int]]


_SNAPSHOT_TYPES: dict[int, type[_TableSnapshot] | type[_RowsSnapshot]] = {
    SNAPSHOT_FORMAT: _TableSnapshot,
    _ROWS_FORMAT: _RowsSnapshot,
}


class _Decide:
    """The table's signal sink: each signal is decided as it is made, while
    the customer's record is as it was at that moment."""

    __slots__ = ("actor",)

    def __init__(self, actor: KeyGroupActor) -> None:
        self.actor = actor

    def append(self, signal: tuple[Any, ...], /) -> None:
        self.actor.on_table_signal(signal)
