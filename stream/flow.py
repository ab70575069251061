"""The bytewax dataflow of a replay: the only module that wires operators
into bytewax.

::

    read (RecordSource) ─► decode ─┬─► key_groups (KeyGroupActor) ─┐
                                   └─► reports ───────────────────┴─► write

The decode step sends every key group one item per raw batch: its share of
the touches (maybe none) and the partition's high event time, which is how
the watermark reaches key groups that bytewax cannot broadcast to.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import bytewax.operators as op
import msgspec
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.decode import DecodeSettings
from operators.keygroup import (
    NO_TIME,
    Counts,
    KeyGroupActor,
    KeyGroupBatch,
    KeyGroupSettings,
    Report,
)
from state.routing import key_group, key_group_name
from stream.sources import RawBatch

REPORT_KEY = "report"

# Where this worker process records the first error raised in a step. In a
# cluster, bytewax reports a failed step only as a panic of its connection
# threads, so the error is kept here for the run to show (see replay.py).
_error_log: Path | None = None


def set_error_log(path: Path | None) -> None:
    """Record the first step error of this process in `path`."""
    global _error_log  # one per worker process
    _error_log = path


@contextlib.contextmanager
def reporting(step: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        if _error_log is not None and not _error_log.exists():
            _error_log.write_text(f"in step `{step}`:\n{traceback.format_exc()}")
        raise


class DecodeStep:
    """Decode a raw batch and split it into one share per key group; with
    `live` (the live clock), each share also carries the partition's high
    time just before each of its touches, with which a key group moves time
    touch by touch (operators/keygroup). The replay clock orders by event
    time and needs none."""

    def __init__(
        self, settings: DecodeSettings, key_groups: int, live: bool = False
    ) -> None:
        self.decoder = settings.build()
        self.key_groups = key_groups
        self.live = live
        self.names = [key_group_name(index) for index in range(key_groups)]

    def __call__(self, batch: RawBatch) -> list[tuple[str, Any]]:
        with reporting("decode"):
            return self._split(batch)

    def _split(self, batch: RawBatch) -> list[tuple[str, Any]]:
        decoded = self.decoder.decode_batch(batch.records)
        shares: list[list[Any]] = [[] for _ in range(self.key_groups)]
        highs: list[list[int]] = [[] for _ in range(self.key_groups)]
        if self.live:
            high_ms = NO_TIME
            for touch in decoded.touches:
                index = key_group(touch.tenant, touch.customer_id, self.key_groups)
                shares[index].append(touch)
                highs[index].append(high_ms)
                high_ms = max(high_ms, touch.ts_ms)
        else:
            for touch in decoded.touches:
                index = key_group(touch.tenant, touch.customer_id, self.key_groups)
                shares[index].append(touch)

        items: list[tuple[str, Any]] = [
            (
                name,
                KeyGroupBatch(
                    batch.partition,
                    share,
                    decoded.max_ts_ms,
                    batch.final,
                    index,
                    highs[index],
                    batch.behind,
                ),
            )
            for index, (name, share) in enumerate(zip(self.names, shares, strict=True))
        ]
        rejected: dict[str, int] = {}
        for rejection in decoded.rejections:
            rejected[rejection.code] = rejected.get(rejection.code, 0) + 1
        counts = Counts(
            read=len(batch.records), after_as_of=decoded.after_as_of, rejected=rejected
        )
        items.append((REPORT_KEY, Report(counts, decoded.rejections)))
        return items


class KeyGroupObserver(Protocol):
    """What a run learns from its key groups (the engine's metrics and
    lifecycle logs): told once a call of bytewax, never once an event."""

    def resumed(
        self,
        logic: object,
        state_bytes: int,
        watermark_ms: int,
        customers: int,
        seconds: float,
    ) -> None:
        """A key group was built from its checkpoint (its index unknown)."""

    def reported(
        self, logic: object, key_group: int, watermark_ms: int, customers: int
    ) -> None:
        """A key group handled a batch or a timer; its watermark now."""

    def snapshotted(
        self, logic: object, state_bytes: int, customers: int, seconds: float
    ) -> None:
        """A key group's state was snapshotted for a checkpoint."""


class KeyGroupLogic(StatefulBatchLogic[KeyGroupBatch, Report, bytes | None]):
    """Adapts a :class:`KeyGroupActor` to bytewax's stateful_batch."""

    def __init__(
        self,
        actor: KeyGroupActor,
        keep_snapshots: bool,
        observer: KeyGroupObserver | None = None,
    ) -> None:
        self.actor = actor
        self.keep_snapshots = keep_snapshots
        self.observer = observer
        self.key_group = -1

    def on_batch(self, values: list[KeyGroupBatch]) -> tuple[list[Report], bool]:
        with reporting("key_groups"):
            reports = self.actor.on_batch(values)
        if self.observer is not None:
            self.key_group = values[-1].key_group
            self._report(self.observer)
        return reports, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Report], bool]:
        with reporting("key_groups"):
            reports = self.actor.on_eof()
        if self.observer is not None:
            self._report(self.observer)
        return reports, StatefulBatchLogic.RETAIN

    def _report(self, observer: KeyGroupObserver) -> None:
        actor = self.actor
        observer.reported(self, self.key_group, actor.watermark_ms, len(actor.table))

    def notify_at(self) -> datetime | None:
        # The live clock's wake-up: bytewax calls on_notify at this wall time.
        at_ms = self.actor.notify_at_ms()
        if at_ms is None:
            return None
        return datetime.fromtimestamp(at_ms / 1000, tz=UTC)

    def on_notify(self) -> tuple[list[Report], bool]:
        with reporting("key_groups"):
            reports = self.actor.on_notify()
        if self.observer is not None:
            self._report(self.observer)
        return reports, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        # bytewax asks for a snapshot at every epoch even without recovery;
        # serialising the table is only worth it when recovery keeps it.
        if not self.keep_snapshots:
            return None
        started = time.perf_counter()
        state = self.actor.snapshot()
        if self.observer is not None:
            self.observer.snapshotted(
                self,
                len(state),
                len(self.actor.table),
                time.perf_counter() - started,
            )
        return state


@dataclass(frozen=True)
class LiveOutput:
    """Where a followed run appends its decisions as they are made."""

    interventions: Path
    rejected: Path
    input_name: str
    position_name: str


class ReportSink(DynamicSink[Report]):
    """Writes reports into per-worker part files, merged after the run; with
    `live`, interventions and rejections are appended to the output files at
    once instead."""

    def __init__(self, parts_dir: Path, live: LiveOutput | None = None) -> None:
        self.parts_dir = parts_dir
        self.live = live

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> ReportPartition:
        return ReportPartition(self.parts_dir, worker_index, self.live)


class ReportPartition(StatelessSinkPartition[Report]):
    def __init__(
        self, parts_dir: Path, worker_index: int, live: LiveOutput | None
    ) -> None:
        prefix = parts_dir / f"worker-{worker_index}"
        self.counts_path = prefix.with_suffix(".counts.json")
        self.customers = prefix.with_suffix(".customers.jsonl").open("wb")
        self.lineage = prefix.with_suffix(".lineage.jsonl").open("wb")
        self.live = live
        if live is None:
            self.rejected = prefix.with_suffix(".rejected.jsonl").open("wb")
            self.interventions = prefix.with_suffix(".interventions.jsonl").open("wb")
        else:
            self.rejected = live.rejected.open("ab")
            self.interventions = live.interventions.open("ab")
        self.counts = Counts()

    def write_batch(self, items: list[Report]) -> None:
        with reporting("write"):
            self._write(items)

    def _write(self, items: list[Report]) -> None:
        live = self.live
        for report in items:
            self.counts.add(report.counts)
            for rejection in report.rejections:
                if live is None:
                    self.rejected.write(msgspec.json.encode(rejection) + b"\n")
                else:
                    entry = rejected_entry(
                        msgspec.to_builtins(rejection),
                        live.input_name,
                        live.position_name,
                    )
                    self.rejected.write(orjson.dumps(entry) + b"\n")
            for intervention in report.interventions:
                self.interventions.write(msgspec.json.encode(intervention) + b"\n")
            for customer in report.customers:
                self.customers.write(orjson.dumps(customer) + b"\n")
            for lineage in report.lineage:
                self.lineage.write(orjson.dumps(lineage) + b"\n")
        if live is not None:
            self.rejected.flush()
            self.interventions.flush()

    def close(self) -> None:
        with reporting("write"):
            self.customers.close()
            self.lineage.close()
            self.rejected.close()
            self.interventions.close()
            self.counts_path.write_bytes(msgspec.json.encode(self.counts))


def rejected_entry(
    rejection: dict[str, Any], input_name: str, position_name: str
) -> dict[str, Any]:
    """A rejected record as `rejected.jsonl` shows it."""
    entry: dict[str, Any] = {
        "input": input_name,
        position_name: rejection["position"],
    }
    entry.update(
        (key, value)
        for key, value in rejection.items()
        if key != "position" and value is not None
    )
    return entry


def build_flow(
    source: FixedPartitionedSource[RawBatch, Any],
    decode: DecodeSettings,
    key_groups: int,
    actor: KeyGroupSettings,
    parts_dir: Path,
    *,
    keep_snapshots: bool = False,
    live: LiveOutput | None = None,
    sink: DynamicSink[Report] | None = None,
    observer: KeyGroupObserver | None = None,
) -> Dataflow:
    """Wire the replay dataflow; `sink`, when given, takes the reports
    instead of the part files in `parts_dir`; `observer` hears from the
    key groups."""
    flow = Dataflow("touchstream_replay")
    raw = op.input("read", flow, source)
    routed = op.flat_map(
        "decode", raw, DecodeStep(decode, key_groups, live=actor.clock.live)
    )
    split = op.branch("route", routed, lambda item: item[0] != REPORT_KEY)

    def build_logic(resume_state: bytes | None) -> KeyGroupLogic:
        if observer is None or resume_state is None:
            return KeyGroupLogic(actor.build(resume_state), keep_snapshots, observer)
        started = time.perf_counter()
        logic = KeyGroupLogic(actor.build(resume_state), keep_snapshots, observer)
        built = logic.actor
        observer.resumed(
            logic,
            len(resume_state),
            built.watermark_ms,
            len(built.table),
            time.perf_counter() - started,
        )
        return logic

    groups = op.stateful_batch("key_groups", split.trues, build_logic)
    actor_reports = op.key_rm("actor_reports", groups)
    decode_reports = op.map("decode_reports", split.falses, lambda item: item[1])
    reports = op.merge("reports", decode_reports, actor_reports)
    op.output("write", reports, sink or ReportSink(parts_dir, live))
    return flow
