"""The engine of ``touchstream serve``: the dataflow on the live clock, fed
by the ingest log and writing into the intervention log and the customer
store (``stream/store.py``).

It runs in a process of its own, so that the gRPC server's event loop and
the dataflow never share a GIL. Its state is checkpointed with bytewax
recovery (``DATA/recovery``) every ``checkpoint.interval``: the ingest log
offset and every key group's table. After a crash it resumes from the last
checkpoint and reads the ingest log on from that offset; interventions
decided again carry the ids they had, which the log keeps once.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from operators.keygroup import Report
from stream.config import Config, health_settings, load_config, parse_duration
from stream.engine_metrics import EngineMetrics, MeteredSink, write_port_file
from stream.flow import build_flow, reporting
from stream.params import ParamsBook, load_params, value_settings
from stream.replay import ReplayOptions, actor_settings, decode_settings
from stream.sources import CatchUp, RawBatch, RawRecord
from stream.store import (
    CUSTOMERS_FILE,
    INGEST_FILE,
    INTERVENTIONS_FILE,
    CustomerStore,
    IngestLog,
    InterventionLog,
)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
RECOVERY_DIR = "recovery"


@dataclass(frozen=True)
class EngineOptions:
    """What the engine process needs: plain paths, so that a fresh
    interpreter can build everything from them.

    In Redis mode (``redis.url`` set) it reads the ingest partitions and
    writes to Redis; `data` then holds its checkpoints only. `clock` is
    ``live`` (the server's) or ``event`` (the replay clock); `drain` ends
    the run once every partition has been read to its end. Its metrics are
    served on a free loopback port named in `metrics_port_file` (the
    server's way), or on `metrics_listen` (HOST:PORT).
    """

    data: Path
    config_path: Path | None = None
    params_path: Path | None = None
    horizon: str | None = None
    log_level: str = "INFO"
    clock: str = "live"
    drain: bool = False
    supervised: bool = True
    metrics_port_file: Path | None = None
    metrics_listen: str | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestLogSource(FixedPartitionedSource[RawBatch, int]):
    """The ingest log as one source partition, read as it grows; it ends,
    after what is there, once `stop` is set."""

    def __init__(self, path: Path, batch_size: int, poll_s: float, stop: Any) -> None:
        self.path = path
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.stop = stop

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> IngestLogPartition:
        return IngestLogPartition(self, resume_state or 0)


class IngestLogPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, source: IngestLogSource, offset: int) -> None:
        self.source = source
        self.log = IngestLog(source.path)
        self.offset = offset
        self._idle = False
        self.catch_up = CatchUp()

    def next_batch(self) -> list[RawBatch]:
        stopping = self.source.stop.is_set()
        rows = self.log.read_after(self.offset, self.source.batch_size)
        self._idle = not rows
        if rows:
            self.offset = rows[-1][0]
        records: list[RawRecord] = rows
        batches = self.catch_up.batches(0, records, self.source.batch_size)
        if batches:
            return batches
        if stopping:
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        if self._idle:
            return datetime.now(UTC) + timedelta(seconds=self.source.poll_s)
        return None

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self.log.close()


class StoreSink(DynamicSink[Report]):
    """Writes the engine's reports into the data folder's logs."""

    def __init__(self, data: Path) -> None:
        self.data = data

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StorePartition:
        return StorePartition(self.data)


class StorePartition(StatelessSinkPartition[Report]):
    def __init__(self, data: Path) -> None:
        self.interventions = InterventionLog(data / INTERVENTIONS_FILE)
        self.customers = CustomerStore(data / CUSTOMERS_FILE)
        self.ingest = IngestLog(data / INGEST_FILE)
        self.appended = 0

    def write_batch(self, items: list[Report]) -> None:
        with reporting("write"):
            self._write(items)

    def _write(self, items: list[Report]) -> None:
        interventions: list[dict[str, Any]] = []
        customers: list[dict[str, Any]] = []
        lineage: list[dict[str, Any]] = []
        rejected: list[tuple[str, int, str | None, str, str]] = []
        for report in items:
            interventions.extend(msgspec.to_builtins(report.interventions))
            customers.extend(report.customers)
            lineage.extend(report.lineage)
            rejected.extend(
                ("engine", item.position, item.event_id, item.code, item.reason)
                for item in report.rejections
            )
        at_ms = now_ms()
        if rejected:
            # Decided by the engine (a conflicting repeated id): the ingest
            # accepted these, so they are recorded where its refusals are,
            # under the tenant of the event at that offset.
            tenants = self.ingest.tenants_at(row[1] for row in rejected)
            by_tenant: dict[str, list[tuple[str, int, str | None, str, str]]] = {}
            for row in rejected:
                by_tenant.setdefault(tenants.get(row[1], ""), []).append(row)
            for tenant, rows in sorted(by_tenant.items()):
                self.ingest.append(tenant, [], at_ms, rows)
        # Interventions first: subscribers wait on them, readers of
        # customer records on nothing.
        if interventions:
            self.appended += self.interventions.append(interventions, at_ms)
        if customers:
            self.customers.publish(customers, lineage, at_ms)

    def close(self) -> None:
        self.interventions.close()
        self.customers.close()
        self.ingest.close()


def build_engine(
    options: EngineOptions, stop: Any, metrics: EngineMetrics | None = None
) -> tuple[Any, Config]:
    """The engine's dataflow, and its configuration; `metrics` counts what
    it does."""
    config = load_config(options.config_path)
    params, source = load_params(options.params_path)
    value = value_settings(params, config, options.horizon, options.config_path)
    live = options.clock == "live"
    replay = ReplayOptions(
        input=options.data / INGEST_FILE,
        format="jsonl",
        out=options.data,
        config=config,
        value=value,
        value_source=source,
        health=health_settings(config),
        follow=live,
    )
    decode = msgspec.structs.replace(decode_settings(replay), input_name="ingest")
    poll_s = parse_duration(config.server.poll_interval) / 1000
    redis_url = config.redis.url
    source_step: FixedPartitionedSource[RawBatch, Any]
    sink: DynamicSink[Report]
    if redis_url is None:
        source_step = IngestLogSource(
            options.data / INGEST_FILE, config.batch_size, poll_s, stop
        )
        sink = StoreSink(options.data)
        partitions = 1
    else:
        from stream.redis_io import RedisIngestSource, RedisSettings, RedisSink

        settings = RedisSettings(
            redis_url, config.redis.prefix, config.redis.partitions
        )
        source_step = RedisIngestSource(
            settings, config.batch_size, poll_s, drain=options.drain, stop=stop
        )
        sink = RedisSink(settings, live)
        partitions = settings.partitions
    actor = msgspec.structs.replace(
        actor_settings(replay, partitions=partitions),
        position_name="offset" if redis_url is None else "position",
        publish_customers=live,
        publish_every_ms=parse_duration(config.server.customers_interval),
        value_source=ParamsBook(options.params_path, value),
    )
    flow = build_flow(
        source_step,
        decode,
        config.key_groups,
        actor,
        options.data,
        keep_snapshots=config.checkpoint.enabled,
        sink=sink if metrics is None else MeteredSink(sink, metrics),
        observer=metrics,
    )
    return flow, config


def recovery_config(data: Path, config: Config) -> RecoveryConfig | None:
    """Where the engine keeps its checkpoints (made on first use), or None
    when checkpoints are off: then every start reads the whole ingest log."""
    if not config.checkpoint.enabled:
        return None
    folder = data / RECOVERY_DIR
    if not folder.exists():
        scratch = data / f"{RECOVERY_DIR}.new"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        init_db_dir(scratch, 1)  # type: ignore[no-untyped-call]
        scratch.rename(folder)  # whole or not at all, even if killed here
    return RecoveryConfig(str(folder))  # type: ignore[no-untyped-call]


def engine_main(options: EngineOptions) -> None:
    """The engine process: run the dataflow until SIGTERM or SIGINT, then
    end after what the ingest log holds."""
    logging.basicConfig(
        level=options.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if options.supervised and sys.platform == "linux":
        # Die with the server, even on SIGKILL, rather than run on orphaned.
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    metrics = EngineMetrics()
    flow, config = build_engine(options, stop, metrics)
    recovery = recovery_config(options.data, config)
    interval_ms = parse_duration(config.checkpoint.interval)
    metrics_port = _serve_metrics(options, metrics)
    log.info(
        "Engine: started data=%s checkpoints=%s interval_ms=%d metrics_port=%s",
        options.data,
        "on" if recovery is not None else "off",
        interval_ms,
        metrics_port or "-",
    )
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            epoch_interval=timedelta(milliseconds=interval_ms),
            recovery_config=recovery,
        )
    finally:
        metrics.close()
    log.info("Engine: stopped data=%s", options.data)


def _serve_metrics(options: EngineOptions, metrics: EngineMetrics) -> int | None:
    """Serve the engine's metrics where asked; return the port."""
    if options.metrics_listen is not None:
        return metrics.serve(options.metrics_listen, "--metrics-listen")
    if options.metrics_port_file is None:
        return None
    port = metrics.serve("127.0.0.1:0", "--metrics-port-file")
    write_port_file(options.metrics_port_file, port)
    return port


def start_engine(options: EngineOptions) -> subprocess.Popen[bytes]:
    """Start the engine as a process of its own (`python -m stream.engine`);
    SIGTERM stops it cleanly."""
    command = [sys.executable, "-m", "stream.engine", "--data", str(options.data)]
    for flag, value in (
        ("--config", options.config_path),
        ("--params", options.params_path),
        ("--horizon", options.horizon),
        ("--metrics-port-file", options.metrics_port_file),
    ):
        if value is not None:
            command += [flag, str(value)]
    command += ["--log-level", options.log_level]
    return subprocess.Popen(command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stream.engine")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--params", type=Path)
    parser.add_argument("--horizon")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--metrics-port-file", type=Path)
    args = parser.parse_args(argv)
    engine_main(
        EngineOptions(
            args.data,
            args.config,
            args.params,
            args.horizon,
            args.log_level,
            metrics_port_file=args.metrics_port_file,
        )
    )


if __name__ == "__main__":
    main()
