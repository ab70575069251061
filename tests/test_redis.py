"""Redis mode on a real redis-server: the engine on Redis ingest partitions
on the replay clock, through SIGKILLs and a Redis restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.redis_io import ingest_partition
from tests.api_support import inbound, json_batch, subscribe
from tests.redis_support import RedisServer
from tests.support import ROOT

DAY_MS = 86_400_000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CHANNELS = ("wechat", "email", "meeting", "phone", "app", "web", "livestream", "store")


def events(count: int, customers: int, seed: int) -> list[dict[str, Any]]:
    """A year of touches and orders in event-time order: popular customers
    touch often, some go quiet for weeks (silence), some buy less and less."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(customers)]
    ids = rng.choices(range(customers), weights=weights, k=count)
    times = sorted(START_MS + rng.randrange(365 * DAY_MS) for _ in range(count))
    rows = []
    for number, (customer, ts) in enumerate(zip(ids, times, strict=True)):
        order = rng.random() < 0.25
        row: dict[str, Any] = {
            "event_id": f"e{number}",
            "tenant": "acme" if customer % 5 else "beta",
            "customer_id": f"c{customer:05d}",
            "source": "erp" if order else "crm",
            "channel": "store" if order else rng.choice(CHANNELS),
            "kind": "order" if order else "message",
            "direction": "inbound" if order or rng.random() < 0.6 else "outbound",
            "ts": ts,
        }
        if order:
            row["amount"] = round(rng.uniform(5, 500), 2)
        rows.append(row)
    return rows


def write_config(folder: Path, url: str, prefix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}.toml"
    path.write_text(
        f'key_groups = 16\n[redis]\nurl = "{url}"\nprefix = "{prefix}"\n'
        'partitions = 3\n[checkpoint]\ninterval = "300ms"\n'
    )
    return path


def publish(server: RedisServer, prefix: str, rows: list[dict[str, Any]]) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for index, row in enumerate(rows, 1):
        partition = ingest_partition(row["tenant"], row["customer_id"], 16, 3)
        pipe.xadd(f"{prefix}:ingest:{partition}", {"event": orjson.dumps(row)})
        if index % 5_000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()


def start_engine(config: Path, data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "engine",
            "--config",
            str(config),
            "--data",
            str(data),
            "--until-drained",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-3000:]


def state(server: RedisServer, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """Every customer record, and the intervention ids in log order."""
    client = server.client()
    customers = {}
    ids = []
    for tenant in ("acme", "beta"):
        for customer, record in client.hgetall(f"{prefix}:customers:{tenant}").items():
            customers[f"{tenant}/{customer.decode()}"] = orjson.loads(record)
        entries = client.xrange(f"{prefix}:interventions:{tenant}")
        ids += [fields[b"id"].decode() for _, fields in entries]
    client.close()
    return customers, ids


@pytest.mark.slow
def test_sigkill_five_times_ends_in_the_state_of_an_uninterrupted_run(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    rows = events(200_000, 20_000, seed=7)
    for prefix in ("calm", "killed"):
        publish(redis_server, prefix, rows)

    calm = write_config(tmp_path, redis_server.url, "calm")
    finish(start_engine(calm, tmp_path / "calm-data"))
    expected_customers, expected_ids = state(redis_server, "calm")
    assert len(expected_customers) == len(
        {(row["tenant"], row["customer_id"]) for row in rows}
    )
    assert len(expected_ids) > 1_000
    assert len(set(expected_ids)) == len(expected_ids)

    killed = write_config(tmp_path, redis_server.url, "killed")
    rng = random.Random(11)
    kills = 0
    for _ in range(5):
        process = start_engine(killed, tmp_path / "killed-data")
        # Short enough that the fifth start still has work left (a whole
        # run takes some 15 s here).
        time.sleep(rng.uniform(1.0, 3.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
    assert kills == 5  # each while it was running
    finish(start_engine(killed, tmp_path / "killed-data"))
    customers, ids = state(redis_server, "killed")

    assert customers == expected_customers
    assert sorted(ids) == sorted(expected_ids)  # each once, no other


def test_a_redis_restart_mid_run_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    rows = events(60_000, 5_000, seed=3)
    for prefix in ("calm", "bumpy"):
        publish(redis_server, prefix, rows)
    finish(
        start_engine(write_config(tmp_path, redis_server.url, "calm"), tmp_path / "c")
    )
    expected = state(redis_server, "calm")

    process = start_engine(
        write_config(tmp_path, redis_server.url, "bumpy"), tmp_path / "b"
    )
    time.sleep(3.0)
    redis_server.stop()
    time.sleep(2.0)  # the engine waits and retries meanwhile
    redis_server.start()
    finish(process)
    customers, ids = state(redis_server, "bumpy")
    assert customers == expected[0]
    assert sorted(ids) == sorted(expected[1])


def publish_batch(api: Any, rows: list[dict[str, Any]]) -> Any:
    return api.ingest.PublishBatch(json_batch(rows), metadata=api.md())


def redis_extra(server: RedisServer, prefix: str = "api") -> str:
    return (
        f'[redis]\nurl = "{server.url}"\nprefix = "{prefix}"\n'
        'partitions = 2\n[checkpoint]\ninterval = "300ms"\n'
    )


def test_the_server_in_redis_mode_ingests_decides_and_resumes_subscribers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from touchstream.v1 import customers_pb2, interventions_pb2

    from tests.api_support import running_api

    extra = redis_extra(redis_server)
    with running_api(tmp_path, engine=True, extra=extra, heartbeat="100ms") as api:
        ack = publish_batch(api, [inbound(n, f"c{n % 3}") for n in range(6)])
        assert (ack.accepted, list(ack.rejected)) == (6, [])
        first = subscribe(api, 2, subscriber_id="crm")
        api.interventions.Ack(
            interventions_pb2.AckRequest(subscriber_id="crm", cursor=first[-1].cursor),
            metadata=api.md(),
        )
        record = api.customers.Get(
            customers_pb2.GetCustomerRequest(customer_id="c1"), metadata=api.md()
        )
        assert record.last_inbound_channel == "wechat"
        # While the subscriber is away, more customers fall silent.
        publish_batch(api, [inbound(n, f"d{n}") for n in range(10, 12)])
        time.sleep(3)
    client = redis_server.client()
    assert client.hget("api:cursors:acme", "crm") is not None
    logged = [
        fields[b"id"].decode() for _, fields in client.xrange("api:interventions:acme")
    ]
    client.close()
    assert len(logged) == 10 and len(set(logged)) == 10  # 5 customers x 2 actions

    # A new server on the same Redis: the committed cursor is where it was.
    with running_api(tmp_path / "again", engine=True, extra=extra) as api:
        rest = subscribe(api, 8, subscriber_id="crm")
    ids = [m.intervention.intervention_id for m in first + rest]
    assert ids == logged
    cursors = [int(m.cursor) for m in first + rest]
    assert cursors == sorted(cursors)


def test_redis_retention_trims_by_age_and_expired_cursors_are_out_of_range(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from touchstream.v1 import interventions_pb2

    from stream.redis_io import RedisSettings, position_of
    from tests.api_support import intervention, running_api, wait_for

    client = redis_server.client()
    settings = RedisSettings(redis_server.url, "api", 2)
    old_ms = int(time.time() * 1000) - 60_000
    for number in range(3):
        item = intervention(number)
        client.xadd(
            settings.interventions_key("acme"),
            {
                "id": item["intervention_id"],
                "rule": item["rule"],
                "action": item["action"],
                "priority": item["priority"],
                "segment": item["segment"] or "",
                "body": orjson.dumps(item),
            },
            id=f"{old_ms + number}-0",
        )
    fresh = client.xadd(
        settings.interventions_key("acme"),
        {
            "id": "fresh",
            "rule": "r",
            "action": "care_task",
            "priority": 5,
            "segment": "",
            "body": orjson.dumps(intervention(9, intervention_id="fresh")),
        },
    )
    with running_api(tmp_path, extra=redis_extra(redis_server), retention="10s") as api:
        wait_for(lambda: client.xlen(settings.interventions_key("acme")) == 1)
        with pytest.raises(grpc.RpcError) as caught:
            subscribe(
                api,
                1,
                subscriber_id="late",
                resume_after=str(position_of(f"{old_ms}-0")),
            )
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        earliest = info.metadata["earliest_cursor"]
        assert earliest == str(position_of(f"{old_ms + 2}-0"))
        [only] = subscribe(api, 1, subscriber_id="late", resume_after=earliest)
        assert only.cursor == str(position_of(fresh))
        del interventions_pb2
    client.close()


def test_the_api_waits_for_an_unreachable_redis_and_says_so_in_health(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.api_support import running_api, wait_for

    with running_api(tmp_path, extra=redis_extra(redis_server)) as api:
        health = health_pb2_grpc.HealthStub(api.channel)
        request = health_pb2.HealthCheckRequest(service="touchstream.redis")
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: health.Check(request).status == serving)
        redis_server.stop()
        wait_for(lambda: health.Check(request).status != serving)
        acks: list[Any] = []
        publisher = threading.Thread(
            target=lambda: acks.append(publish_batch(api, [inbound(1, "c1")]))
        )
        publisher.start()
        time.sleep(1.5)
        assert acks == []  # held while Redis is away, not refused
        redis_server.start()
        publisher.join(timeout=60)
        assert acks[0].accepted == 1
        wait_for(lambda: health.Check(request).status == serving)
    client = redis_server.client()
    stored = [
        orjson.loads(fields[b"event"])["event_id"]
        for part in range(2)
        for _, fields in client.xrange(f"api:ingest:{part}")
    ]
    client.close()
    assert stored == ["e1"]


def test_top_movers_in_redis_mode_rank_by_how_far_clv_moved(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from touchstream.v1 import customers_pb2

    from stream.redis_io import RedisSettings, add_history
    from tests.api_support import running_api

    settings = RedisSettings(redis_server.url, "api", 2)
    client = redis_server.client()
    now = int(time.time() * 1000)

    def publish(customer: str, clv: float, band: int, at_ms: int) -> None:
        record = {"tenant": "acme", "customer_id": customer, "clv": clv}
        record["value_band"] = band
        pipe = client.pipeline()
        pipe.hset(settings.customers_key("acme"), customer, orjson.dumps(record))
        add_history(pipe, settings, record, at_ms)
        pipe.execute()

    publish("x", 10.0, 1, now - 2 * DAY_MS)
    publish("z", 30.0, 3, now - 3 * DAY_MS)
    publish("w", 20.0, 2, now - 2 * DAY_MS)
    publish("x", 50.0, 4, now - 1000)
    publish("y", 5.0, 1, now - 1000)
    publish("z", 28.0, 3, now - 500)
    with running_api(tmp_path, extra=redis_extra(redis_server)) as api:
        board = api.customers.TopMovers(
            customers_pb2.TopMoversRequest(window="1d"), metadata=api.md("acme-finance")
        )
    client.close()
    assert [
        (m.customer_id, m.clv_before, m.clv_now, m.change, m.direction)
        for m in board.movers
    ] == [
        ("x", 10.0, 50.0, 40.0, "up"),
        ("y", 0.0, 5.0, 5.0, "up"),
        ("z", 30.0, 28.0, -2.0, "down"),
    ]
    assert (board.movers[0].value_band_before, board.movers[0].value_band_now) == (1, 4)
