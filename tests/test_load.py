"""`touchstream load`: the traffic it makes, what it counts as lost and
duplicated, the correction for coordinated omission, and whole runs
against a real server, with the engine killed and a subscriber stalled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import uvloop
from touchstream.v1 import ingest_pb2, ingest_pb2_grpc

from load_tests.generator import Generator, GeneratorPlan
from load_tests.load import Step
from load_tests.report import deliveries
from load_tests.subscriber import SubscriberResult
from load_tests.traffic import Traffic, TrafficSettings, due_us_of
from tests.support import touchstream

WINDOW_MS = 1_000


def _events(
    traffic: Traffic, seconds: float, every_ms: int
) -> tuple[list[Any], dict[str, int]]:
    returns: dict[str, int] = {}
    events = []
    start_us = 1_800_000_000_000_000
    for step in range(int(seconds * 1000 / every_ms)):
        payload, ids = traffic.batch(1, start_us + step * every_ms * 1000, returns)
        events += [orjson.loads(line) for line in payload.splitlines()]
    return events, returns


def test_a_quiet_customer_returns_after_every_quiet_spell_and_only_then() -> None:
    settings = TrafficSettings(
        customers=40,
        quiet_share=0.25,
        silence_window_ms=WINDOW_MS,
        allowed_lateness_ms=400,
        seed=3,
    )
    traffic = Traffic(settings)
    events, returns = _events(traffic, 30, 5)
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_customer.setdefault(event["customer_id"], []).append(event)
    quiet = [f"C{rank:07d}" for rank in range(0, 40, 4)]
    checked = 0
    for customer in quiet:
        seen_inbound = False
        previous = None
        for event in by_customer.get(customer, []):
            due_ms = due_us_of(event["event_id"]) // 1000
            if previous is not None:
                # A quiet spell is two windows long and nothing falls in it,
                # so a gap that long is a spell; any shorter gap is not.
                spell = due_ms - previous >= 2 * WINDOW_MS
                assert (event["event_id"] in returns) == (spell and seen_inbound)
                checked += int(spell and seen_inbound)
            previous = due_ms
            seen_inbound = seen_inbound or event["direction"] == "inbound"
    assert checked == len(returns) > 10
    for event in events:
        due_ms = due_us_of(event["event_id"]) // 1000
        if event["event_id"] in returns:
            assert (event["kind"], event["direction"], event["ts"]) == (
                "message",
                "inbound",
                due_ms,
            )
        else:
            assert due_ms - 200 <= event["ts"] <= due_ms


def test_orders_and_channels_follow_the_mix_asked_for() -> None:
    settings = TrafficSettings(
        customers=500,
        quiet_share=0.0,
        order_share=0.3,
        channel_mix={"wechat": 3.0, "store": 1.0},
        seed=5,
    )
    events, returns = _events(Traffic(settings), 20, 1)
    assert not returns
    orders = sum(event["kind"] == "order" for event in events)
    assert orders / len(events) == pytest.approx(0.3, abs=0.02)
    assert all(event["amount"] > 0 for event in events if event["kind"] == "order")
    wechat = sum(event["channel"] == "wechat" for event in events)
    assert {event["channel"] for event in events} == {"wechat", "store"}
    assert wechat / len(events) == pytest.approx(0.75, abs=0.02)
    # Zipf popularity of exponent 1.1: rank k against rank 0, 1 / (k+1)^1.1.
    counts: dict[str, int] = {}
    for event in events:
        counts[event["customer_id"]] = counts.get(event["customer_id"], 0) + 1
    assert counts["C0000009"] / counts["C0000000"] == pytest.approx(10**-1.1, rel=0.15)


def test_lost_counts_returns_without_their_intervention_and_copies_are_extra() -> None:
    seen = SubscriberResult(
        received=7,
        id_counts={"a": 2, "b": 1, "c": 1, "d": 3},
        trigger_counts={"r1/notify_rep": 1, "r2/notify_rep": 2, "r2/other": 1},
        silence_keys={"C1@t/care_task": 1, "C2@t/care_task": 2},
    )
    figures = deliveries(seen, {"r1": 1, "r2": 2, "r3": 3, "r4": 4})
    assert figures["expected_returns"] == 4
    assert figures["lost"] == 2 and figures["lost_examples"] == ["r3", "r4"]
    assert figures["duplicated"] == {"same_id": 3, "same_trigger": 1, "same_silence": 1}
    assert figures["distinct_ids"] == 4


class _Ingest(ingest_pb2_grpc.IngestServicer):  # type: ignore[misc]
    """Acks at once, or holds every call until released."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.hold = hold
        self.calls = 0

    async def PublishBatch(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        return ingest_pb2.PublishAck(accepted=request.json_lines.count(b"\n"))


async def _generate(
    servicer: _Ingest,
    plan: GeneratorPlan,
    traffic: Traffic,
    release_after_s: float | None = None,
) -> Any:
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        generator = Generator(plan, traffic, f"127.0.0.1:{port}", ["token"])
        if release_after_s is not None and servicer.hold is not None:
            asyncio.get_running_loop().call_later(release_after_s, servicer.hold.set)
        return await generator.run(time.monotonic(), time.time())
    finally:
        await server.stop(None)


class _StallingTraffic(Traffic):
    """Blocks the generator's loop once, as a busy generator would."""

    def __init__(self, settings: TrafficSettings, stall_at: int, stall_s: float):
        super().__init__(settings)
        self.calls = 0
        self.stall_at = stall_at
        self.stall_s = stall_s

    def batch(
        self, count: int, due_us: int, returns: dict[str, int]
    ) -> tuple[bytes, list[str]]:
        self.calls += 1
        if self.calls == self.stall_at:
            time.sleep(self.stall_s)
        return super().batch(count, due_us, returns)


def test_latency_counts_from_the_due_time_when_the_generator_falls_behind() -> None:
    # A batch every 20 ms; the loop stalls 600 ms at the tenth. The batches
    # due meanwhile go late: from their due time they waited up to 600 ms,
    # while the server answered each at once.
    plan = GeneratorPlan([Step(0.0, 500.0)], 2.0, batch_size=10)
    traffic = _StallingTraffic(TrafficSettings(customers=50), 10, 0.6)
    result = uvloop.run(_generate(_Ingest(), plan, traffic))
    assert result.batches_sent == result.batches_due == 100
    assert result.ack.get_max_value() >= 550_000
    # Due in the first 300 ms of the stall (180 to 480 ms): 16 batches
    # over 300 ms late.
    late = sum(count for value, count in _counts(result.ack) if value >= 300_000)
    assert 12 <= late <= 17
    assert result.service.get_value_at_percentile(99) < 300_000


def _counts(histogram: Any) -> list[tuple[int, int]]:
    return [
        (item.value_iterated_to, item.count_added_in_this_iter_step)
        for item in histogram.get_recorded_iterator()
    ]


def test_batches_due_past_the_in_flight_limit_are_dropped_not_delayed() -> None:
    plan = GeneratorPlan([Step(0.0, 1000.0)], 1.0, batch_size=50, max_in_flight=3)
    servicer = _Ingest(asyncio.Event())

    async def run() -> Any:
        servicer.hold = asyncio.Event()
        return await _generate(
            servicer, plan, Traffic(TrafficSettings(customers=50)), 1.5
        )

    result = uvloop.run(run())
    assert result.batches_due == 20
    assert result.batches_sent == 3 and servicer.calls == 3
    assert result.batches_dropped == 17
    assert result.events_accepted == 150


def _load(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "report"
    done = touchstream(
        "load",
        "--rate",
        "800",
        "--batch-size",
        "100",
        "--customers",
        "300",
        "--quiet-share",
        "0.5",
        "--silence-window",
        "1s",
        "--allowed-lateness",
        "200ms",
        "--out",
        str(out),
        *args,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report: dict[str, Any] = orjson.loads((out / "report.json").read_bytes())
    return report


def test_a_run_with_the_engine_killed_reports_every_figure_and_loses_nothing(
    tmp_path: Path,
) -> None:
    report = _load(
        tmp_path, "--duration", "8s", "--scenario", "kill-engine", "--fault-at", "4s"
    )
    assert report["rate"]["target"] == 800
    assert report["events"]["accepted"] == report["events"]["due"] == 6400
    assert report["requests"]["by_status"] == {"OK": 64}
    assert report["requests"]["dropped"] == report["requests"]["failed"] == 0
    for name in ("ack", "ack_service", "end_to_end"):
        figures = report["latency_ms"][name]
        assert set(figures) >= {"p50", "p90", "p99", "p99.9", "max", "count"}
        assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"]
    assert {"server", "engine"} <= set(report["server"])
    for figures in report["server"].values():
        assert figures["rss_mib_max"] > 0 and figures["cpu_percent_mean"] is not None
    assert [fault["kind"] for fault in report["faults"]] == ["kill-engine"]
    assert report["drain"]["sentinels_seen"] == report["drain"]["sentinels"] == 1
    assert report["interventions"]["drained"] is True
    deliveries = report["interventions"]
    assert deliveries["expected_returns"] > 20
    assert deliveries["lost"] == 0
    assert deliveries["duplicated"]["same_id"] == 0
    assert deliveries["duplicated"]["same_trigger"] == 0
    assert len(report["timeline"]) == 8


def test_a_stalled_subscriber_gets_everything_once_it_reads_again(
    tmp_path: Path,
) -> None:
    report = _load(tmp_path, "--duration", "6s", "--scenario", "slow-subscriber")
    slow = report["slow_subscriber"]
    assert slow["expected_returns"] == report["interventions"]["expected_returns"] > 10
    assert slow["lost"] == 0 and slow["duplicated"]["same_id"] == 0
    assert report["interventions"]["lost"] == 0


def test_a_redis_restart_during_a_run_fails_no_request_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    report = _load(
        tmp_path, "--redis", "--duration", "10s", "--scenario", "restart-redis",
        "--fault-at", "3s", "--silence-window", "5s", "--allowed-lateness", "2s",
        "--drain-timeout", "60s",
    )  # fmt: skip
    assert [fault["kind"] for fault in report["faults"]] == ["restart-redis"]
    assert report["requests"]["by_status"] == {"OK": 80}
    assert report["events"]["accepted"] == 8000
    # Acks waited for Redis: up to the 3 s it was down.
    assert report["latency_ms"]["ack"]["max"] >= 1000
    assert "redis" in report["server"]
    deliveries = report["interventions"]
    assert deliveries["received"] > 0
    assert deliveries["duplicated"]["same_id"] == 0
    # TODO(partitions read one after another): after an outage each Redis
    # ingest partition's backlog is read in a batch of its own, so the first
    # one read is applied while the others hold time back; a silence due in
    # that gap fires after the return that should end it, and such returns
    # count as lost here (0 to a few in 30). Lost is not asserted until the
    # partitions are read in append-time step.


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "inf"], "--rate"),
        (["--rate", "0"], "--rate"),
        (["--channel-mix", "wechat=inf"], "finite weight"),
        (["--channel-mix", "fax=1"], "expected CHANNEL=WEIGHT"),
        (["--channel-mix", "wechat=1,wechat=2"], "each channel once"),
        (["--silence-window", "0s"], "--silence-window"),
        (["--poll-interval", "0s"], "--poll-interval"),
        (["--zipf", "nan"], "--zipf"),
        (["--ramp", "--ramp-factor", "1"], "--ramp-factor"),
        (["--ramp", "--steps", "100,200"], "--ramp and --steps"),
        (["--scenario", "kill-engine", "--fault-at", "10s", "--duration", "3s"],
         "--fault-at"),
        (["--fault-at", "1s"], "--fault-at needs"),
        (["--quiet-share", "2"], "--quiet-share"),
        (["--scenario", "restart-redis"], "needs --redis"),
    ],
)  # fmt: skip
def test_a_bad_option_is_refused_in_one_line_before_anything_starts(
    args: list[str], message: str
) -> None:
    done = touchstream("load", *args, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
