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
        time.sleep(rng.uniform(2.0, 6.0))
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
