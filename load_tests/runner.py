"""The run of ``touchstream load`` (``load_tests/load.py`` has its options):
a server of its own, the subscribers, the generator, the fault, the drain.

At the end it sends one return per ingest partition (customers silent
since the start) and waits for their interventions: once they arrive, the
engine has decided everything sent before them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import uvloop
from touchstream.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    interventions_pb2,
    interventions_pb2_grpc,
)

from load_tests.generator import Generator, GeneratorPlan, GeneratorResult
from load_tests.harness import SUBSCRIBER_TOKEN, LoadServer, Sampler, ServerPlan
from load_tests.load import REDIS_PARTITIONS, LoadOptions, Step
from load_tests.subscriber import SubscriberPlan, SubscriberResult, follow
from load_tests.traffic import TENANT, Traffic
from state.routing import DEFAULT_KEY_GROUPS
from stream.errors import RunError
from stream.redis_io import ingest_partition

log = logging.getLogger(__name__)


@dataclass
class LoadResult:
    options: LoadOptions
    generator: GeneratorResult
    subscriber: SubscriberResult
    slow_subscriber: SubscriberResult | None
    samples: list[Any]
    faults: list[dict[str, Any]]
    sentinels_seen: int
    sentinels: int
    drain_s: float
    started_at: float
    server_log: str


def run_load(options: LoadOptions) -> LoadResult:
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="touchstream-load-") as scratch:
        server = LoadServer(
            ServerPlan(
                options.data or Path(scratch),
                integrations=options.connections,
                silence_window_ms=options.traffic.silence_window_ms,
                allowed_lateness_ms=options.traffic.allowed_lateness_ms,
                poll_interval_ms=options.poll_interval_ms,
                redis=options.redis,
            )
        )
        server.start()
        try:
            return _run_against(server, options)
        finally:
            server_log = server.log_path.read_text(errors="replace")
            server.stop()
            (options.out / "serve.log").write_text(server_log)


def _run_against(server: LoadServer, options: LoadOptions) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    go_on = context.Event()
    start_wall_s = time.time() + 1.0
    followers: list[tuple[Any, Connection]] = []
    plans = [
        SubscriberPlan(
            server.address, server.tokens[SUBSCRIBER_TOKEN], "crm", start_wall_s
        )
    ]
    if options.scenario == "slow-subscriber":
        plans.append(
            SubscriberPlan(
                server.address,
                server.tokens[SUBSCRIBER_TOKEN],
                "crm-slow",
                start_wall_s,
                stall_after=100,
            )
        )
    for plan in plans:
        receiving, sending = context.Pipe(duplex=False)
        process = context.Process(
            target=follow, args=(plan, stop, go_on, sending), daemon=True
        )
        process.start()
        sending.close()
        followers.append((process, receiving))
    traffic = Traffic(options.traffic)
    sentinels = _sentinel_customers(options)
    tokens = [token for _, token in server.integration_tokens()]
    _publish_now(server.address, tokens[0], sentinels, "start")
    sampler = Sampler(server, start_wall_s)
    sampler.start()
    steps = options.steps or (Step(0.0, options.rate),)
    generator = Generator(
        GeneratorPlan(
            steps, options.duration_s, options.batch_size, options.max_in_flight
        ),
        traffic,
        server.address,
        tokens,
    )
    faults: list[dict[str, Any]] = []
    fault_at_s = options.fault_at_s
    if fault_at_s is None:
        fault_at_s = options.duration_s / 2
    log.info(
        "Load: started rate=%s duration_s=%.0f scenario=%s address=%s",
        "steps" if options.steps else f"{options.rate:.0f}",
        options.duration_s,
        options.scenario,
        server.address,
    )

    async def drive() -> GeneratorResult:
        start_mono_s = time.monotonic() + (start_wall_s - time.time())
        faulting = asyncio.create_task(
            _fault(options.scenario, server, start_wall_s + fault_at_s, faults)
        )
        result = await generator.run(start_mono_s, start_wall_s)
        await faulting
        return result

    generated = uvloop.run(drive())
    go_on.set()
    if options.scenario == "slow-subscriber":
        # The second subscriber stopped reading after 100 interventions and
        # reads on from now.
        faults.append(
            {"kind": "slow-subscriber", "at_s": time.time(), "stalled_after": 100}
        )
    # Every sentinel has been silent since the start: its return must end a
    # silence, which needs the silence window (and lateness) to have passed.
    ready_s = (
        start_wall_s
        + (options.traffic.silence_window_ms + 2 * options.traffic.allowed_lateness_ms)
        / 1000
        + 1.0
    )
    if time.time() < ready_s:
        time.sleep(ready_s - time.time())
    drain_start = time.time()
    returns = _publish_now(server.address, tokens[0], sentinels, "return")
    seen = _wait_for_triggers(
        server.address,
        server.tokens[SUBSCRIBER_TOKEN],
        returns,
        options.drain_timeout_s,
    )
    # What the engine wrote with the sentinels' decisions reaches the
    # subscribers within a poll or two.
    time.sleep(4 * options.poll_interval_ms / 1000 + 0.5)
    drain_s = time.time() - drain_start
    sampler.stop()
    stop.set()
    results = []
    for process, receiving in followers:
        if receiving.poll(60):
            results.append(receiving.recv())
        else:
            results.append(SubscriberResult(errors={"NO_RESULT": 1}))
        process.join(timeout=10)
    log.info(
        "Load: finished sent=%d accepted=%d interventions=%d drain_s=%.1f",
        generated.events_sent,
        generated.events_accepted,
        results[0].received,
        drain_s,
    )
    return LoadResult(
        options=options,
        generator=generated,
        subscriber=results[0],
        slow_subscriber=results[1] if len(results) > 1 else None,
        samples=sampler.samples,
        faults=faults,
        sentinels_seen=seen,
        sentinels=len(returns),
        drain_s=drain_s,
        started_at=start_wall_s,
        server_log=server.log_path.name,
    )


async def _fault(
    scenario: str, server: LoadServer, at_wall_s: float, faults: list[dict[str, Any]]
) -> None:
    if scenario not in ("kill-engine", "restart-redis"):
        return
    await asyncio.sleep(max(0.0, at_wall_s - time.time()))
    loop = asyncio.get_running_loop()
    started = time.time()
    if scenario == "kill-engine":
        pid = await loop.run_in_executor(None, server.kill_engine)
        log.info("Load: fault kind=kill-engine pid=%d", pid)
        detail: dict[str, Any] = {"pid": pid}
    else:
        await loop.run_in_executor(None, server.restart_redis, 3.0)
        log.info("Load: fault kind=restart-redis down_s=3")
        detail = {"down_s": 3.0}
    faults.append({"kind": scenario, "at_s": started, **detail})


def _sentinel_customers(options: LoadOptions) -> list[str]:
    """One customer per ingest partition, outside the traffic's ids."""
    partitions = REDIS_PARTITIONS if options.redis else 1
    found: dict[int, str] = {}
    number = 0
    while len(found) < partitions:
        customer = f"sentinel-{number}"
        part = ingest_partition(TENANT, customer, DEFAULT_KEY_GROUPS, partitions)
        found.setdefault(part, customer)
        number += 1
    return sorted(found.values())


def _publish_now(address: str, token: str, customers: list[str], tag: str) -> list[str]:
    """An inbound message from each customer, now; their event ids."""
    now_ms = time.time_ns() // 1_000_000
    ids = [f"{customer}.{tag}.{now_ms}" for customer in customers]
    lines = [
        (
            f'{{"event_id":"{event_id}","tenant":"{TENANT}",'
            f'"customer_id":"{customer}","source":"load","channel":"web",'
            f'"kind":"message","direction":"inbound","ts":{now_ms}}}'
        )
        for event_id, customer in zip(ids, customers, strict=True)
    ]
    with grpc.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        ack = stub.PublishBatch(
            ingest_pb2.EventBatch(json_lines=("\n".join(lines) + "\n").encode()),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=60,
        )
    if ack.accepted != len(lines):
        msg = f"the server refused the load run's own events: {ack.rejected}"
        raise RunError(msg)
    return ids


def _wait_for_triggers(
    address: str, token: str, trigger_ids: list[str], timeout_s: float
) -> int:
    """Follow the log (a subscriber of its own) until an intervention
    triggered by each of these events is there; how many were."""
    wanted = set(trigger_ids)
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = interventions_pb2_grpc.InterventionsStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        call = stub.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="load-drain"),
            metadata=metadata,
            timeout=timeout_s,
        )
        found = 0
        read = 0
        try:
            for message in call:
                if message.intervention.trigger_event_id in wanted:
                    wanted.discard(message.intervention.trigger_event_id)
                    found += 1
                if not wanted or time.monotonic() > deadline:
                    break
                read += 1
                if read % 1000 == 0:
                    # Past server.max_unacked unacked messages it would wait.
                    stub.Ack(
                        interventions_pb2.AckRequest(
                            subscriber_id="load-drain", cursor=message.cursor
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
        except grpc.RpcError:
            pass
        finally:
            call.cancel()
    return found
