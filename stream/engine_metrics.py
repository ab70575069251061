"""Metrics and lifecycle logs of the engine process (README, "Metrics").

The engine runs apart from the server, so its figures live in a registry
of its own, served over HTTP by the engine itself: ``touchstream serve``
has it listen on a free loopback port, named in a port file, and shows
what it finds there on its own ``/metrics`` (``stream/metrics.py``);
``touchstream engine`` serves it on ``--metrics-listen``.

The key groups tell :class:`EngineMetrics` what they did once a call of
bytewax (a batch, a timer, a snapshot), never once an event; the sink's
reports carry the counts. Watermark lag and key-group sizes are worked
out when scraped, from what each key group last said. A checkpoint is a
round of snapshots, one a key group, that bytewax makes at an epoch's
close with no call at its end: a round ends when every key group has been
snapshotted, when the key groups do anything else, or after a pause, and
then makes one log line. Resuming from a checkpoint makes one line too.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from operators.keygroup import NO_TIME, Report
from state.routing import key_group_name
from stream.metrics import serve_registry

log = logging.getLogger(__name__)

# From the time an intervention was due to its append to the log.
_END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The time to snapshot every key group's table at one checkpoint.
_CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A round of snapshots with no snapshot for this long has ended.
_ROUND_PAUSE_S = 0.5


@dataclass
class _Round:
    """Snapshots (or resumes) of key groups, added up until the round ends."""

    logics: set[int]
    key_groups: int = 0
    state_bytes: int = 0
    customers: int = 0
    seconds: float = 0.0
    last_at: float = 0.0

    def add(self, state_bytes: int, customers: int, seconds: float) -> None:
        self.key_groups += 1
        self.state_bytes += state_bytes
        self.customers += customers
        self.seconds += seconds
        self.last_at = time.monotonic()


class EngineMetrics:
    """The engine process's metrics, in a registry of their own; also the
    observer of its key groups (``stream.flow.KeyGroupObserver``)."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.registry = registry
        self.events = Counter(
            "touchstream_engine_events",
            "Events the engine read, by outcome: applied to state, duplicate "
            "(a repeated event_id, dropped) or rejected",
            ["outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "touchstream_engine_rejected",
            "Events the engine rejected, by reason code (conflict: a repeated "
            "event_id with another payload; in Redis mode also what the decoder "
            "refuses)",
            ["code"],
            registry=registry,
        )
        self.late = Counter(
            "touchstream_late_events",
            "Applied events older than their key group's watermark: they "
            "updated aggregates and decided nothing (counted among applied)",
            registry=registry,
        )
        self.decided = Counter(
            "touchstream_interventions_decided",
            "Interventions the engine wrote to the intervention log, by tenant "
            "and action (one decided again after a restart counts again; the "
            "log keeps it once)",
            ["tenant", "action"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "touchstream_end_to_end_seconds",
            "From the event time an intervention was due at to its append to "
            "the intervention log, by trigger: event (the time of the event "
            "that triggered it, such as an inbound touch ending a silence) or "
            "time (the deadline or window end the watermark passed)",
            ["trigger"],
            buckets=_END_TO_END_BUCKETS,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "touchstream_checkpoint_seconds",
            "Time to snapshot the key groups' tables at one checkpoint (bytewax "
            "then writes them to the recovery store)",
            buckets=_CHECKPOINT_BUCKETS,
            registry=registry,
        )
        self.checkpoint_bytes = Gauge(
            "touchstream_checkpoint_bytes",
            "Bytes of the key groups' snapshots at the last checkpoint",
            registry=registry,
        )
        registry.register(_KeyGroupCollector(self))
        # By logic (bytewax keeps each for the run): its key group's index
        # (-1 until a batch says it), watermark and customers, as last told.
        self.key_groups: dict[int, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._checkpoint: _Round | None = None
        self._restore: _Round | None = None
        self._closer: threading.Thread | None = None
        self._http: Any = None

    # What the key groups tell (their worker thread).

    def resumed(
        self,
        logic: object,
        state_bytes: int,
        watermark_ms: int,
        customers: int,
        seconds: float,
    ) -> None:
        self.key_groups[id(logic)] = (-1, watermark_ms, customers)
        with self._lock:
            if self._restore is None:
                self._restore = _Round(set())
            self._restore.add(state_bytes, customers, seconds)
        self._start_closer()

    def reported(
        self, logic: object, key_group: int, watermark_ms: int, customers: int
    ) -> None:
        self.key_groups[id(logic)] = (key_group, watermark_ms, customers)
        if self._checkpoint is not None or self._restore is not None:
            with self._lock:
                self._close_rounds()

    def snapshotted(
        self, logic: object, state_bytes: int, customers: int, seconds: float
    ) -> None:
        with self._lock:
            self._close_restore()
            current = self._checkpoint
            if current is not None and id(logic) in current.logics:
                self._close_checkpoint()  # the next epoch's round began
                current = None
            if current is None:
                current = self._checkpoint = _Round(set())
            current.logics.add(id(logic))
            current.add(state_bytes, customers, seconds)
            # Every logic reported (or resumed) before its first snapshot.
            if len(current.logics) >= len(self.key_groups):
                self._close_checkpoint()
        self._start_closer()

    # Rounds (under the lock).

    def _close_rounds(self) -> None:
        self._close_restore()
        self._close_checkpoint()

    def _close_checkpoint(self) -> None:
        done, self._checkpoint = self._checkpoint, None
        if done is None:
            return
        self.checkpoint_seconds.observe(done.seconds)
        self.checkpoint_bytes.set(done.state_bytes)
        log.info(
            "Checkpoint: saved key_groups=%d customers=%d bytes=%d took_ms=%d",
            done.key_groups,
            done.customers,
            done.state_bytes,
            round(done.seconds * 1000),
        )

    def _close_restore(self) -> None:
        done, self._restore = self._restore, None
        if done is None:
            return
        log.info(
            "Restore: resumed key_groups=%d customers=%d bytes=%d took_ms=%d",
            done.key_groups,
            done.customers,
            done.state_bytes,
            round(done.seconds * 1000),
        )

    def _start_closer(self) -> None:
        if self._closer is not None:
            return
        with self._lock:
            if self._closer is not None:
                return
            self._closer = threading.Thread(
                target=self._close_paused_rounds,
                name="checkpoint-rounds",
                daemon=True,
            )
        self._closer.start()

    def _close_paused_rounds(self) -> None:
        """End a round that had no snapshot for a while: an idle engine
        does nothing else that would end it."""
        while True:
            time.sleep(_ROUND_PAUSE_S / 2)
            paused_before = time.monotonic() - _ROUND_PAUSE_S
            with self._lock:
                for current in (self._restore, self._checkpoint):
                    if current is not None and current.last_at < paused_before:
                        if current is self._restore:
                            self._close_restore()
                        else:
                            self._close_checkpoint()

    # What the sink writes (its worker thread).

    def count(self, reports: list[Report], appended_ms: int) -> None:
        """Count what these reports say, once their writes are done."""
        applied = duplicates = late = 0
        rejected: collections.Counter[str] = collections.Counter()
        decided: collections.Counter[tuple[str, str]] = collections.Counter()
        for report in reports:
            counts = report.counts
            applied += counts.applied
            duplicates += counts.duplicates
            late += counts.late
            rejected.update(counts.rejected)
            for item in report.interventions:
                decided[item.tenant, item.action] += 1
                due_ms = _epoch_ms(item.event_time)
                if due_ms is not None:
                    trigger = "time" if item.trigger_event_id is None else "event"
                    self.end_to_end.labels(trigger).observe(
                        max(0, appended_ms - due_ms) / 1000
                    )
        for outcome, number in (("applied", applied), ("duplicate", duplicates)):
            if number:
                self.events.labels(outcome).inc(number)
        if rejected:
            self.events.labels("rejected").inc(sum(rejected.values()))
            for code, number in rejected.items():
                self.rejected.labels(code).inc(number)
        if late:
            self.late.inc(late)
        for (tenant, action), number in decided.items():
            self.decided.labels(tenant, action).inc(number)

    # Serving.

    def serve(self, address: str, flag: str) -> int:
        """Serve ``/metrics`` on HOST:PORT; return the port."""
        self._http = serve_registry(self.registry, address, flag)
        return int(self._http.server_port)

    def close(self) -> None:
        with self._lock:
            self._close_rounds()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _KeyGroupCollector:
    """Watermark lag and key-group sizes, as the key groups last said."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        # A copy: the key groups' thread goes on writing meanwhile.
        key_groups = list(self.metrics.key_groups.copy().values())
        lag = GaugeMetricFamily(
            "touchstream_watermark_lag_seconds",
            "Wall clock minus the lowest watermark of the key groups: how far "
            "behind now the engine has decided (on the live clock, at least "
            "the allowed lateness)",
        )
        marks = [ms for _, ms, _ in key_groups if ms != NO_TIME]
        if marks:
            lag.add_metric([], max(0, time.time_ns() // 1_000_000 - min(marks)) / 1000)
        yield lag
        customers = GaugeMetricFamily(
            "touchstream_key_group_customers",
            "Customers in each key group's table",
            labels=["key_group"],
        )
        for index, _, number in sorted(key_groups):
            if index >= 0:
                customers.add_metric([key_group_name(index)], number)
        yield customers
        yield GaugeMetricFamily(
            "touchstream_customers",
            "Customers in every key group's table of this engine",
            value=sum(number for _, _, number in key_groups),
        )


class MeteredSink(DynamicSink[Report]):
    """Another sink, with its reports counted once they are written."""

    def __init__(self, inner: DynamicSink[Report], metrics: EngineMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> MeteredPartition:
        inner = self.inner.build(step_id, worker_index, worker_count)
        return MeteredPartition(inner, self.metrics)


class MeteredPartition(StatelessSinkPartition[Report]):
    def __init__(
        self, inner: StatelessSinkPartition[Report], metrics: EngineMetrics
    ) -> None:
        self.inner = inner
        self.metrics = metrics

    def write_batch(self, items: list[Report]) -> None:
        self.inner.write_batch(items)
        self.metrics.count(items, time.time_ns() // 1_000_000)

    def close(self) -> None:
        self.inner.close()


def _epoch_ms(text: str) -> int | None:
    """Epoch milliseconds of an intervention's UTC time (``...Z``)."""
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return None


def write_port_file(path: Path, port: int) -> None:
    """Name the metrics port in `path`, whole or not at all."""
    scratch = path.with_name(f"{path.name}.{os.getpid()}.new")
    scratch.write_text(f"{port}\n")
    scratch.replace(path)
