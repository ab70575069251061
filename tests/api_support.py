"""A real `touchstream serve` on loopback for the API tests: a server on a
thread of the test process (or a process of its own), tokens of two
tenants and three roles, and stubs that send them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from touchstream.v1 import (
    customers_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    interventions_pb2,
    interventions_pb2_grpc,
)

from stream.auth import token_digest
from stream.config import load_config
from stream.server import ServeOptions, Server, run_in_thread
from stream.store import INTERVENTIONS_FILE, InterventionLog

# name: (token, tenant, role)
TOKENS = {
    "acme-admin": ("token-acme-admin", "acme", "admin"),
    "acme-sales": ("token-acme-sales", "acme", "sales"),
    "acme-finance": ("token-acme-finance", "acme", "finance"),
    "beta-admin": ("token-beta-admin", "beta", "admin"),
}

# Silence after one second without an inbound touch, decided within a few
# hundred milliseconds of the wall clock passing it.
LIVE_CONFIG = """
default_tenant = "acme"
[silence]
window = "1s"
[clock]
allowed_lateness = "100ms"
idle_timeout = "200ms"
"""


def write_tokens(path: Path) -> Path:
    lines = []
    for name, (token, tenant, role) in TOKENS.items():
        lines += [
            "[[token]]",
            f'name = "{name}"',
            f'sha256 = "{token_digest(token)}"',
            f'tenant = "{tenant}"',
            f'role = "{role}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(folder: Path, server: dict[str, Any], extra: str = "") -> Path:
    """A configuration with the test tokens and these [server] settings."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = write_tokens(folder / "tokens.toml")
    settings = {"tokens": str(tokens), **server}
    body = "\n".join(
        f"{key} = {orjson.dumps(value).decode()}" for key, value in settings.items()
    )
    path = folder / "touchstream.toml"
    path.write_text(f"{LIVE_CONFIG}\n{extra}\n[server]\n{body}\n")
    return path


@dataclass
class Api:
    """Stubs on one channel to a running server, for any of the tokens."""

    address: str
    data: Path
    channel: grpc.Channel
    server: Server | None = None

    def md(self, name: str = "acme-admin") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {TOKENS[name][0]}"),)

    @property
    def ingest(self) -> Any:
        return ingest_pb2_grpc.IngestStub(self.channel)

    @property
    def interventions(self) -> Any:
        return interventions_pb2_grpc.InterventionsStub(self.channel)

    @property
    def customers(self) -> Any:
        return customers_pb2_grpc.CustomersStub(self.channel)

    def log(self) -> InterventionLog:
        return InterventionLog(self.data / INTERVENTIONS_FILE)


@contextlib.contextmanager
def running_api(
    folder: Path,
    *,
    engine: bool = False,
    extra: str = "",
    metrics: bool = False,
    **server: Any,
) -> Iterator[Api]:
    """A server on a thread of this process (the engine, when asked for,
    in its own process) with the test tokens."""
    config_path = write_config(folder, server, extra)
    options = ServeOptions(
        config=load_config(config_path),
        data=folder / "data",
        listen="127.0.0.1:0",
        config_path=config_path,
        engine=engine,
        metrics_listen="127.0.0.1:0" if metrics else None,
    )
    started, stop = run_in_thread(options)
    address = f"127.0.0.1:{started.port}"
    channel = grpc.insecure_channel(address)
    try:
        yield Api(address, options.data, channel, started)
    finally:
        channel.close()
        stop()


@contextlib.contextmanager
def serve_process(
    folder: Path, *, extra: str = "", args: tuple[str | Path, ...] = (), **server: Any
) -> Iterator[tuple[Api, subprocess.Popen[str]]]:
    """`touchstream serve` as a user starts it, in a process of its own."""
    config_path = write_config(folder, server, extra)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "serve",
            "--config",
            str(config_path),
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(folder / "data"),
            *map(str, args),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stderr is not None
    port = None
    deadline = time.monotonic() + 60
    lines = []
    while port is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"Serve: listening .* port=(\d+)", line)
        if found:
            port = int(found.group(1))
    assert port is not None, "".join(lines)
    # Keep reading its logs, so that a full pipe never blocks the server.
    drain = threading.Thread(
        target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True
    )
    drain.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Api(f"127.0.0.1:{port}", folder / "data", channel), process
    finally:
        channel.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        if process.poll() is None:
            process.kill()
            process.wait()
        drain.join(timeout=10)
        process.stderr.close()


def wait_for(
    check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05
) -> Any:
    """Poll `check` until it returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            msg = f"not true within {timeout} s: {check}"
            raise AssertionError(msg)
        time.sleep(every)


def intervention(number: int, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    """An intervention as the engine logs it, with a money amount of its own."""
    base: dict[str, Any] = {
        "intervention_id": f"{tenant}-{number:06d}",
        "tenant": tenant,
        "customer_id": f"c{number % 7}",
        "rule": "silent_care" if number % 2 else "win_back_regular",
        "action": "care_task" if number % 2 else "win_back_offer",
        "params": {},
        "signal": "silence",
        "priority": 7 if number % 2 else 4,
        "reason": f"silent for 3 days; CLV {1000 + number}.25 USD",
        "reason_redacted": "silent for 3 days; CLV [redacted]",
        "event_time": "2026-01-01T00:00:00.000Z",
        "emitted_at": "2026-01-01T00:00:00.000Z",
        "trigger_event_id": None,
        "trigger_ts": None,
        "channel": "wechat",
        "segment": "gold" if number % 3 == 0 else None,
        "clv": 1000.25 + number,
        "value_band": 4,
        "health": 55.5,
        "health_band": "yellow",
    }
    base.update(fields)
    return base


def inbound(number: int, customer: str, **fields: Any) -> dict[str, Any]:
    base = {
        "event_id": f"e{number}",
        "tenant": "acme",
        "customer_id": customer,
        "source": "wecom",
        "channel": "wechat",
        "kind": "message",
        "direction": "inbound",
        "ts": int(time.time() * 1000),
    }
    base.update(fields)
    return base


def json_batch(events: list[dict[str, Any]], batch_id: str = "b") -> Any:
    lines = b"\n".join(orjson.dumps(event) for event in events)
    return ingest_pb2.EventBatch(batch_id=batch_id, json_lines=lines)


def read_messages(stream: Any, count: int) -> list[Any]:
    """The next `count` non-heartbeat messages of a stream."""
    messages = []
    for message in stream:
        if not message.heartbeat:
            messages.append(message)
        if len(messages) == count:
            break
    return messages


def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def subscribe(
    api: Api, count: int, name: str = "acme-admin", **request: Any
) -> list[Any]:
    """Open a subscription, take its next `count` interventions, close it."""
    stream = api.interventions.Subscribe(
        interventions_pb2.SubscribeRequest(**request),
        metadata=api.md(name),
        timeout=60,
    )
    got = read_messages(stream, count)
    stream.cancel()
    return got
