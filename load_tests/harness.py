"""The system under load: a ``touchstream serve`` of the load tool's own
(and a redis-server for Redis runs) in a scratch folder, the faults done
to it, and a sampler of its processes' CPU and memory.

The server is started as a user starts it, from a configuration written
here: a token per upstream integration and one for the subscribers, a
short silence window so that silence happens within a run, and rules that
answer every silence and every return from one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from load_tests.orphans import stop_with_parent
from load_tests.redis_server import RedisServer, free_port
from load_tests.traffic import TENANT
from stream.auth import new_token, token_digest
from stream.errors import RunError

RULES = """\
[[rule]]
name = "silent_care"
description = "Silent past the window: open a care task"
priority = 7
[rule.when]
signal = "silence"
[[rule.then]]
action = "care_task"

[[rule]]
name = "welcome_back"
description = "Back after a silence: tell the rep"
priority = 5
[rule.when]
signal = "silence_ended"
[[rule.then]]
action = "notify_rep"
"""
SUBSCRIBER_TOKEN = "crm"


@dataclass(frozen=True)
class ServerPlan:
    folder: Path
    integrations: int = 2
    silence_window_ms: int = 10_000
    allowed_lateness_ms: int = 2_000
    poll_interval_ms: int = 50
    checkpoint_interval_s: float = 10.0
    redis: bool = False
    log_level: str = "info"


class LoadServer:
    """A running server under test; `tokens` maps a name to its token."""

    def __init__(self, plan: ServerPlan) -> None:
        self.plan = plan
        self.tokens: dict[str, str] = {}
        self.redis: RedisServer | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.metrics_address = ""
        self.log_path = plan.folder / "serve.log"

    def start(self) -> None:
        plan = self.plan
        plan.folder.mkdir(parents=True, exist_ok=True)
        if plan.redis:
            self.redis = RedisServer(plan.folder / "redis")
            self.redis.start()
        config = self._write_config()
        metrics_port = free_port()
        self.metrics_address = f"127.0.0.1:{metrics_port}"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream",
                "--log-level",
                plan.log_level,
                "serve",
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
                "--data",
                str(plan.folder / "data"),
                "--metrics-listen",
                self.metrics_address,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            preexec_fn=stop_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(
                rb"Serve: listening .* port=(\d+)", self.log_path.read_bytes()
            )
            if found:
                self.address = f"127.0.0.1:{int(found.group(1))}"
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if not self.address:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            msg = f"the server under test did not start:\n{tail}"
            raise RunError(msg)
        self.wait_for_engine()

    def _write_config(self) -> Path:
        plan = self.plan
        entries = []
        names = [f"integration-{n + 1}" for n in range(plan.integrations)]
        for name in [*names, SUBSCRIBER_TOKEN]:
            token = self.tokens[name] = new_token()
            entries.append(
                f'[[token]]\nname = "{name}"\nsha256 = "{token_digest(token)}"\n'
                f'tenant = "{TENANT}"\nrole = "admin"\n'
            )
        tokens = plan.folder / "tokens.toml"
        tokens.write_text("\n".join(entries))
        (plan.folder / "rules.toml").write_text(RULES)
        redis = ""
        if self.redis is not None:
            redis = f"[redis]\nurl = {orjson.dumps(self.redis.url).decode()}\n"
        config = plan.folder / "touchstream.toml"
        config.write_text(
            f'default_tenant = "{TENANT}"\n'
            'rules = "rules.toml"\n'
            f'[silence]\nwindow = "{plan.silence_window_ms}ms"\n'
            f'[clock]\nallowed_lateness = "{plan.allowed_lateness_ms}ms"\n'
            f'[server]\ntokens = "tokens.toml"\n'
            f'poll_interval = "{plan.poll_interval_ms}ms"\n'
            f'[checkpoint]\ninterval = "{plan.checkpoint_interval_s}s"\n'
            f"{redis}"
        )
        return config

    def integration_tokens(self) -> list[tuple[str, str]]:
        return [
            (name, token)
            for name, token in self.tokens.items()
            if name != SUBSCRIBER_TOKEN
        ]

    def server_process(self) -> psutil.Process | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return psutil.Process(self.process.pid)

    def engine_process(self) -> psutil.Process | None:
        server = self.server_process()
        if server is None:
            return None
        with contextlib.suppress(psutil.Error):
            for child in server.children():
                if "stream.engine" in child.cmdline():
                    return child
        return None

    def wait_for_engine(self, timeout_s: float = 60.0) -> psutil.Process:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            engine = self.engine_process()
            if engine is not None:
                return engine
            time.sleep(0.05)
        msg = "the server under test runs no engine"
        raise RunError(msg)

    def kill_engine(self) -> int:
        """SIGKILL the engine (the server starts another); its pid."""
        engine = self.wait_for_engine()
        engine.send_signal(signal.SIGKILL)
        return int(engine.pid)

    def restart_redis(self, down_s: float) -> None:
        """Stop Redis, leave it down for `down_s`, start it again (same
        port, same append-only file)."""
        if self.redis is None:
            msg = "restart-redis needs a Redis run (--redis)"
            raise RunError(msg)
        self.redis.stop()
        time.sleep(down_s)
        self.redis.start()

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        if self.redis is not None:
            self.redis.stop()


@dataclass(frozen=True)
class Sample:
    at_s: float
    cpu_percent: dict[str, float]
    rss_bytes: dict[str, int]


class Sampler:
    """CPU (percent of one core) and resident memory of the server, the
    engine and Redis, once a second, on a thread."""

    def __init__(self, server: LoadServer, start_s: float, every_s: float = 1.0):
        self.server = server
        self.start_s = start_s
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._watched: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _processes(self) -> dict[str, psutil.Process]:
        found: dict[str, psutil.Process] = {}
        server = self.server.server_process()
        if server is not None:
            found["server"] = server
        engine = self.server.engine_process()
        if engine is not None:
            found["engine"] = engine
        redis = self.server.redis
        if redis is not None and redis.process is not None:
            with contextlib.suppress(psutil.Error):
                found["redis"] = psutil.Process(redis.process.pid)
        # The same Process object each time, so cpu_percent measures the
        # interval since the last sample.
        for role, process in found.items():
            known = self._watched.get(process.pid)
            if known is None:
                known = self._watched[process.pid] = process
                with contextlib.suppress(psutil.Error):
                    known.cpu_percent(None)
            found[role] = known
        return found

    def _run(self) -> None:
        self._processes()
        while not self._stop.wait(self.every_s):
            cpu: dict[str, float] = {}
            rss: dict[str, int] = {}
            for role, process in self._processes().items():
                with contextlib.suppress(psutil.Error):
                    cpu[role] = process.cpu_percent(None)
                    rss[role] = process.memory_info().rss
            self.samples.append(Sample(time.time() - self.start_s, cpu, rss))
