"""The open-loop generator of ``touchstream load``.

Batches are due on a fixed schedule (``batch_size / rate`` apart, the rate
of the step in force) and each is sent when it is due, whatever became of
the ones before: a slow server never slows the arrivals, it only gathers
requests in flight. Latency is measured from the moment a batch was due,
not from when it left, which corrects for coordinated omission: when the
generator itself falls behind, the wait counts against the system. The
time from sending to the ack (the service time alone) is kept beside it.

A batch is dropped, not sent, when ``max_in_flight`` requests are already
waiting: the report counts it, so an overloaded run shows as one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from hdrh.histogram import HdrHistogram
from touchstream.v1 import ingest_pb2, ingest_pb2_grpc

from load_tests.load import Step
from load_tests.subscriber import latency_histogram
from load_tests.traffic import Traffic


@dataclass(frozen=True)
class GeneratorPlan:
    steps: Sequence[Step]
    duration_s: float
    batch_size: int = 500
    max_in_flight: int = 256
    timeout_s: float = 30.0


@dataclass
class GeneratorResult:
    batches_due: int = 0
    batches_sent: int = 0
    batches_dropped: int = 0
    batches_by_status: dict[str, int] = field(default_factory=dict)
    events_due: int = 0
    events_sent: int = 0
    events_accepted: int = 0
    events_rejected: dict[str, int] = field(default_factory=dict)
    events_failed: dict[str, int] = field(default_factory=dict)
    max_behind_ms: float = 0.0
    ack: HdrHistogram = field(default_factory=latency_histogram)
    service: HdrHistogram = field(default_factory=latency_histogram)
    ack_by_second: dict[int, HdrHistogram] = field(default_factory=dict)
    due_by_second: dict[int, int] = field(default_factory=dict)
    accepted_by_second: dict[int, int] = field(default_factory=dict)
    # Returns accepted by the ingest: event id to due time (microseconds).
    returns: dict[str, int] = field(default_factory=dict)


class Generator:
    def __init__(
        self,
        plan: GeneratorPlan,
        traffic: Traffic,
        address: str,
        tokens: Sequence[str],
    ) -> None:
        self.plan = plan
        self.traffic = traffic
        self.address = address
        self.tokens = tokens
        self.result = GeneratorResult()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, start_mono_s: float, start_wall_s: float) -> GeneratorResult:
        """Send until the plan's duration has passed, then wait for what is
        in flight; `start_*` are the same instant on both clocks."""
        channels = [
            grpc.aio.insecure_channel(
                self.address,
                options=[("grpc.max_send_message_length", 64 << 20)],
            )
            for _ in self.tokens
        ]
        stubs = [ingest_pb2_grpc.IngestStub(channel) for channel in channels]
        metadata = [(("authorization", f"Bearer {token}"),) for token in self.tokens]
        plan = self.plan
        result = self.result
        size = plan.batch_size
        due_s = 0.0  # into the run
        for index in itertools.count():
            rate = _rate_at(plan.steps, due_s)
            if due_s >= plan.duration_s:
                break
            wait_s = start_mono_s + due_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            else:
                result.max_behind_ms = max(result.max_behind_ms, -wait_s * 1000)
            second = int(due_s)
            result.batches_due += 1
            result.events_due += size
            result.due_by_second[second] = result.due_by_second.get(second, 0) + size
            if len(self._in_flight) >= plan.max_in_flight:
                result.batches_dropped += 1
            else:
                due_us = int((start_wall_s + due_s) * 1e6)
                returns: dict[str, int] = {}
                payload, _ = self.traffic.batch(size, due_us, returns)
                connection = index % len(stubs)
                task = asyncio.create_task(
                    self._send(
                        stubs[connection],
                        metadata[connection],
                        ingest_pb2.EventBatch(batch_id=str(index), json_lines=payload),
                        start_mono_s + due_s,
                        second,
                        size,
                        returns,
                    )
                )
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            due_s += size / rate
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        for channel in channels:
            await channel.close()
        return result

    async def _send(
        self,
        stub: ingest_pb2_grpc.IngestStub,
        metadata: tuple[tuple[str, str], ...],
        batch: ingest_pb2.EventBatch,
        due_mono_s: float,
        second: int,
        size: int,
        returns: dict[str, int],
    ) -> None:
        result = self.result
        result.batches_sent += 1
        result.events_sent += size
        sent_s = time.monotonic()
        status = "OK"
        try:
            ack = await stub.PublishBatch(
                batch, metadata=metadata, timeout=self.plan.timeout_s
            )
        except grpc.aio.AioRpcError as ex:
            status = ex.code().name
            result.events_failed[status] = result.events_failed.get(status, 0) + size
        else:
            result.events_accepted += ack.accepted
            accepted = result.accepted_by_second
            accepted[second] = accepted.get(second, 0) + ack.accepted
            refused = set()
            for rejected in ack.rejected:
                code = rejected.code
                result.events_rejected[code] = result.events_rejected.get(code, 0) + 1
                refused.add(rejected.event_id)
            for event_id, due_us in returns.items():
                if event_id not in refused:
                    result.returns[event_id] = due_us
        done_s = time.monotonic()
        by_status = result.batches_by_status
        by_status[status] = by_status.get(status, 0) + 1
        latency_us = int((done_s - due_mono_s) * 1e6)
        result.ack.record_value(max(1, latency_us))
        result.service.record_value(max(1, int((done_s - sent_s) * 1e6)))
        histogram = result.ack_by_second.get(second)
        if histogram is None:
            histogram = result.ack_by_second[second] = latency_histogram(2)
        histogram.record_value(max(1, latency_us))


def _rate_at(steps: Sequence[Step], at_s: float) -> float:
    rate = steps[0].rate
    for step in steps:
        if step.start_s <= at_s:
            rate = step.rate
    return rate
