"""A CRM subscriber for ``touchstream load``, in a process of its own so
that the generator's work never delays what it measures.

It follows ``Interventions.Subscribe``, acks its cursor as it goes, and
keeps what a run is judged by: every intervention id received (and how
often), the triggering event of each, and the end-to-end latency from
that event's due time (read from its id) to the moment the intervention
arrived, in HdrHistogram, in total and per second of the run. A stream
that breaks is opened again after the last cursor received, as a CRM
would; whatever comes twice is counted, not hidden.

A stalling subscriber (``stall_after``) stops reading after that many
interventions, until told to go on: the slow-subscriber scenario.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram
from touchstream.v1 import interventions_pb2, interventions_pb2_grpc

from load_tests.orphans import stop_with_parent
from load_tests.traffic import due_us_of

# Latencies in microseconds, up to an hour, three significant digits.
LATENCY_MAX_US = 3_600_000_000
ACK_EVERY = 200


def latency_histogram(digits: int = 3) -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, digits)


@dataclass(frozen=True)
class SubscriberPlan:
    address: str
    token: str
    subscriber_id: str
    start_wall_s: float
    stall_after: int | None = None


@dataclass
class SubscriberResult:
    """What a subscriber saw; histograms encoded (HdrHistogram's own
    compressed form) to cross the process boundary."""

    received: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    id_counts: dict[str, int] = field(default_factory=dict)
    trigger_counts: dict[str, int] = field(default_factory=dict)
    silence_keys: dict[str, int] = field(default_factory=dict)
    e2e: str = ""
    e2e_by_second: dict[int, str] = field(default_factory=dict)
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_at_s: float | None = None
    last_at_s: float | None = None


class _Follower:
    def __init__(self, plan: SubscriberPlan, stop: Event, go_on: Event) -> None:
        self.plan = plan
        self.stop = stop
        self.go_on = go_on
        self.result = SubscriberResult()
        self.e2e = latency_histogram()
        self.e2e_by_second: dict[int, HdrHistogram] = {}
        self.cursor = ""
        self.call: Any = None

    def run(self) -> SubscriberResult:
        watcher = threading.Thread(target=self._cancel_on_stop, daemon=True)
        watcher.start()
        channel = grpc.insecure_channel(self.plan.address)
        stub = interventions_pb2_grpc.InterventionsStub(channel)
        metadata = (("authorization", f"Bearer {self.plan.token}"),)
        unacked = 0
        while not self.stop.is_set():
            request = interventions_pb2.SubscribeRequest(
                subscriber_id=self.plan.subscriber_id, resume_after=self.cursor
            )
            try:
                self.call = stub.Subscribe(request, metadata=metadata)
                for message in self.call:
                    self.cursor = message.cursor
                    if message.heartbeat:
                        continue
                    self._take(message.intervention)
                    unacked += 1
                    if unacked >= ACK_EVERY:
                        self._ack(stub, metadata)
                        unacked = 0
                    self._maybe_stall()
            except grpc.RpcError as ex:
                if self.stop.is_set():
                    break
                code = ex.code().name
                self.result.errors[code] = self.result.errors.get(code, 0) + 1
                self.result.reconnects += 1
                time.sleep(0.2)
        with contextlib.suppress(grpc.RpcError):
            self._ack(stub, metadata)
        channel.close()
        self.result.e2e = self.e2e.encode().decode()
        self.result.e2e_by_second = {
            second: histogram.encode().decode()
            for second, histogram in self.e2e_by_second.items()
        }
        return self.result

    def _take(self, item: Any) -> None:
        now_s = time.time()
        result = self.result
        result.received += 1
        result.by_action[item.action] = result.by_action.get(item.action, 0) + 1
        ident = item.intervention_id
        result.id_counts[ident] = result.id_counts.get(ident, 0) + 1
        if result.first_at_s is None:
            result.first_at_s = now_s
        result.last_at_s = now_s
        trigger = item.trigger_event_id
        if not trigger:
            # A silence: one per customer and deadline, whatever its id.
            key = f"{item.customer_id}@{item.event_time}/{item.action}"
            result.silence_keys[key] = result.silence_keys.get(key, 0) + 1
            return
        key = f"{trigger}/{item.action}"
        result.trigger_counts[key] = result.trigger_counts.get(key, 0) + 1
        due_us = due_us_of(trigger)
        if due_us is None:
            return
        latency_us = max(1, min(int(now_s * 1e6) - due_us, LATENCY_MAX_US))
        self.e2e.record_value(latency_us)
        second = int(now_s - self.plan.start_wall_s)
        histogram = self.e2e_by_second.get(second)
        if histogram is None:
            histogram = self.e2e_by_second[second] = latency_histogram(2)
        histogram.record_value(latency_us)

    def _ack(self, stub: Any, metadata: Any) -> None:
        if self.cursor:
            stub.Ack(
                interventions_pb2.AckRequest(
                    subscriber_id=self.plan.subscriber_id, cursor=self.cursor
                ),
                metadata=metadata,
                timeout=10,
            )

    def _maybe_stall(self) -> None:
        stall_after = self.plan.stall_after
        if stall_after is None or self.result.received != stall_after:
            return
        while not self.go_on.wait(0.1):
            if self.stop.is_set():
                return

    def _cancel_on_stop(self) -> None:
        self.stop.wait()
        call = self.call
        if call is not None:
            call.cancel()


def follow(plan: SubscriberPlan, stop: Event, go_on: Event, out: Connection) -> None:
    """The subscriber process: follow until `stop`, then send the result."""
    stop_with_parent()
    out.send(_Follower(plan, stop, go_on).run())
    out.close()
