"""A replay: one input file through the dataflow at full speed, on event
time, into output files.

The run is planned here (ordering step, partitions, settings), executed by
worker processes that each run a bytewax worker of the same dataflow, and
finished here: the workers' part files are merged into sorted output files,
so that the same input gives the same bytes with any number of workers.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import msgspec
import orjson
from bytewax.testing import cluster_main
from tqdm import tqdm

import native
from operators.clv import ValueSettings
from operators.decode import CsvLayout, DecodeSettings, Format, TenantRule
from operators.events import CHANNELS, DIRECTIONS, KINDS, Event
from operators.health import HealthSettings
from operators.keygroup import ClockSettings, Counts, KeyGroupSettings
from stream.config import (
    Config,
    CsvMap,
    decision_settings,
    parse_duration,
    parse_time,
    rules_path,
)
from stream.errors import RunError, UsageError
from stream.flow import LiveOutput, build_flow, rejected_entry, set_error_log
from stream.rulebook import RuleBook
from stream.sources import PartitionSpec, RecordSource, order_records, read_csv_header

log = logging.getLogger(__name__)

CUSTOMERS_FILE = "customers.jsonl"
REJECTED_FILE = "rejected.jsonl"
INTERVENTIONS_FILE = "interventions.jsonl"
LINEAGE_FILE = "lineage.jsonl"
OUTPUT_FILES = (CUSTOMERS_FILE, REJECTED_FILE, INTERVENTIONS_FILE, LINEAGE_FILE)
_WORK_DIR = ".touchstream-work"
_STOP_GRACE_S = 2.0
_PR_SET_PDEATHSIG = 1
_PEER_PANIC = "PanicException"


@dataclass(frozen=True)
class ReplayOptions:
    """What `touchstream replay` was asked to do."""

    input: Path
    format: Format
    out: Path
    config: Config = field(default_factory=Config)
    as_of: str | None = None
    presorted: bool = False
    csv_map: CsvMap | None = None
    workers: int = 1
    progress: bool = False
    value: ValueSettings | None = None
    value_source: str | None = None
    health: HealthSettings | None = None
    follow: bool = False


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did, for the summary and for tests."""

    input: Path
    format: Format
    workers: int
    implementation: str
    counts: Counts
    customers: int
    interventions: int
    seconds: float
    value_source: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.counts.read / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "format": self.format,
            "workers": self.workers,
            "kernel": self.implementation,
            "params": self.value_source,
            "read": self.counts.read,
            "applied": self.counts.applied,
            "rejected": self.counts.rejected_total,
            "rejected_by_reason": dict(sorted(self.counts.rejected.items())),
            "duplicates": self.counts.duplicates,
            "after_as_of": self.counts.after_as_of,
            "late": self.counts.late,
            "customers": self.customers,
            "interventions": self.interventions,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s),
        }


def run_replay(options: ReplayOptions) -> ReplaySummary:
    """Plan, run and finish a replay; raise UsageError or RunError."""
    if not options.input.is_file():
        msg = f"input file {options.input} does not exist or is not a file"
        raise UsageError(msg)
    if options.workers < 1:
        msg = f"expected --workers to be 1 or more - got {options.workers}"
        raise UsageError(msg)
    if options.out.exists() and not options.out.is_dir():
        msg = f"--out {options.out} is a file; expected a folder (made if missing)"
        raise UsageError(msg)
    outputs = {options.out / name for name in OUTPUT_FILES}
    if any(options.input.resolve() == path.resolve() for path in outputs):
        msg = f"the input {options.input} is one of the files the replay writes"
        raise UsageError(msg)
    for path in sorted(outputs):
        # Checked before the run: found while moving the outputs into
        # place, it would leave some of them new and some old.
        if path.exists() and not path.is_file():
            msg = f"{path} is in the way of an output file; expected a file there"
            raise UsageError(msg)
    if options.workers > options.config.key_groups:
        log.warning(
            "Replay: more workers than key groups workers=%d key_groups=%d; "
            "the extra workers only read and decode",
            options.workers,
            options.config.key_groups,
        )
    if options.follow:
        _check_follow(options)
    decode = decode_settings(options)
    started = time.perf_counter()
    log.info(
        "Replay: started input=%s format=%s workers=%d kernel=%s clock=%s",
        options.input,
        options.format,
        options.workers,
        native.implementation(),
        "live" if options.follow else "event-time",
    )

    work = _work_dir(options.out)
    try:
        specs = _partitions(options, decode, work)
        actor = actor_settings(options, len(specs))
        _run_workers(options, specs, decode, actor, work)
        counts, customers = _merge(options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - started
    summary = ReplaySummary(
        options.input,
        options.format,
        options.workers,
        native.implementation(),
        counts,
        customers,
        counts.interventions,
        seconds,
        options.value_source,
    )
    log.info(
        "Replay: finished read=%d applied=%d rejected=%d took_ms=%d",
        counts.read,
        counts.applied,
        counts.rejected_total,
        round(seconds * 1000),
    )
    return summary


def _check_follow(options: ReplayOptions) -> None:
    """--follow reads one growing line file on the live clock."""
    problem = None
    if options.format not in ("jsonl", "cdnow"):
        problem = f"reads line formats (jsonl, cdnow) - got --format {options.format}"
    elif options.workers != 1:
        problem = f"runs on one worker - got --workers {options.workers}"
    elif options.as_of is not None:
        problem = "runs on the live clock, which has no as-of time"
    elif options.presorted:
        problem = "never orders its input, so --presorted does not apply"
    if problem is not None:
        msg = f"--follow {problem}"
        raise UsageError(msg)


def _work_dir(out: Path) -> Path:
    """Make this run's scratch folder in `out`, clearing abandoned ones.

    Each run has its own (named by its process id), so that workers of a
    killed run can never write into a later run's files.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_WORK_DIR}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    work = out / f"{_WORK_DIR}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "parts").mkdir(parents=True)
    return work


def decode_settings(options: ReplayOptions) -> DecodeSettings:
    """The decode step's settings for a replay."""
    config = options.config

    def rule(tenant: Any) -> TenantRule:
        as_of_ms = None
        if options.as_of is not None:
            as_of_ms = parse_time(options.as_of, tenant.time_zone)
        return TenantRule(
            tenant.currency, tenant.time_zone, dict(tenant.rates), as_of_ms
        )

    layout = None
    if options.format == "csv":
        layout = _csv_layout(options.input, options.csv_map or CsvMap())
    return DecodeSettings(
        format=options.format,
        input_name=options.input.name,
        default_tenant=config.default_tenant,
        tenant_defaults=rule(config.tenant_defaults),
        tenants={name: rule(tenant) for name, tenant in config.tenants.items()},
        max_record_bytes=config.max_record_bytes,
        csv=layout,
        allowed_skew_ms=(
            parse_duration(config.clock.allowed_skew) if options.follow else None
        ),
    )


def _csv_layout(path: Path, mapping: CsvMap) -> CsvLayout:
    header = read_csv_header(path)
    known = set(header)
    for section, names in (
        ("columns", mapping.columns.values()),
        ("attributes", mapping.attributes.values()),
    ):
        for name in names:
            if name not in known:
                msg = (
                    f"column {name!r} of [{section}] in the CSV map is not in "
                    f"the header of {path.name} (columns: {', '.join(header)})"
                )
                raise UsageError(msg)
    fields = [name for name in Event.__struct_fields__ if name != "attributes"]
    for section, keys in (
        ("columns", list(mapping.columns)),
        ("constants", list(mapping.constants)),
    ):
        for name in keys:
            if name not in fields:
                msg = (
                    f"[{section}] key {name!r} in the CSV map is not an event "
                    f"field; expected one of {', '.join(fields)} (attributes go "
                    "in [attributes])"
                )
                raise UsageError(msg)
    for name, allowed in (
        ("channel", CHANNELS),
        ("kind", KINDS),
        ("direction", DIRECTIONS),
    ):
        value = mapping.constants.get(name)
        if value is not None and value not in allowed:
            msg = (
                f"[constants] {name} = {value!r} in the CSV map: expected one "
                f"of {', '.join(allowed)}"
            )
            raise UsageError(msg)
    return CsvLayout(header, mapping.columns, mapping.constants, mapping.attributes)


def _partitions(
    options: ReplayOptions, decode: DecodeSettings, work: Path
) -> list[PartitionSpec]:
    if options.follow:
        return [PartitionSpec(options.input, options.format, follow=True)]
    if options.presorted:
        return [PartitionSpec(options.input, options.format)]
    started = time.perf_counter()
    with tqdm(
        total=options.input.stat().st_size,
        unit="B",
        unit_scale=True,
        desc="ordering",
        disable=not options.progress,
        leave=False,
    ) as bar:
        spools, count = order_records(
            options.input,
            options.format,
            decode.build(),
            options.config.key_groups,
            options.workers,
            work,
            progress=lambda offset: bar.update(offset - bar.n),
        )
    log.info(
        "Ordering: sorted records=%d partitions=%d took_ms=%d",
        count,
        len(spools),
        round((time.perf_counter() - started) * 1000),
    )
    return [PartitionSpec(spool, None) for spool in spools]


def actor_settings(options: ReplayOptions, partitions: int) -> KeyGroupSettings:
    """The key-group actor's settings for a replay over `partitions`."""
    config = options.config
    as_of_ms: dict[str, int] = {}
    default_as_of_ms = None
    if options.as_of is not None:
        as_of_ms = {
            name: parse_time(options.as_of, tenant.time_zone)
            for name, tenant in config.tenants.items()
        }
        default_as_of_ms = parse_time(options.as_of, config.tenant_defaults.time_zone)
    clock = ClockSettings()
    if options.follow:
        clock = ClockSettings(
            live=True,
            allowed_lateness_ms=parse_duration(config.clock.allowed_lateness),
            idle_timeout_ms=parse_duration(config.clock.idle_timeout),
        )
    return KeyGroupSettings(
        partitions=partitions,
        dedupe_span_ms=config.dedupe_span_ms,
        as_of_ms=as_of_ms,
        default_as_of_ms=default_as_of_ms,
        position_name="offset" if options.format == "msgpack" else "line",
        value=options.value,
        health=options.health,
        decisions=decision_settings(config),
        rules=RuleBook(rules_path(config), watch=options.follow),
        clock=clock,
        time_zones={name: tenant.time_zone for name, tenant in config.tenants.items()},
        default_time_zone=config.tenant_defaults.time_zone,
        currencies={name: tenant.currency for name, tenant in config.tenants.items()},
        default_currency=config.tenant_defaults.currency,
    )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(
    options: ReplayOptions,
    specs: list[PartitionSpec],
    decode: DecodeSettings,
    actor: KeyGroupSettings,
    work: Path,
) -> None:
    """Run one bytewax worker process per --workers, and wait for them all.

    If one worker fails, or the run is interrupted, the others are stopped
    too: a bytewax worker whose peer died waits for it forever.
    """
    context = multiprocessing.get_context("fork")
    progress = context.Value("q", 0)
    stop = context.Event()
    total = sum(spec.path.stat().st_size for spec in specs)
    source = RecordSource(specs, options.config.batch_size, progress, stop)
    live = None
    if options.follow:
        # Decisions are appended to the output files as they are made.
        live = LiveOutput(
            options.out / INTERVENTIONS_FILE,
            options.out / REJECTED_FILE,
            options.input.name,
            "line",
        )
        for path in (live.interventions, live.rejected):
            path.write_bytes(b"")
    flow = build_flow(
        source,
        decode,
        options.config.key_groups,
        actor,
        work / "parts",
        live=live,
    )
    addresses = []
    if options.workers > 1:
        addresses = [f"127.0.0.1:{port}" for port in _free_ports(options.workers)]

    processes = [
        context.Process(
            target=_worker_main,
            args=(flow, addresses, index, work),
            name=f"worker {index}",
        )
        for index in range(options.workers)
    ]
    for process in processes:
        process.start()
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="replay",
        disable=not options.progress,
        leave=False,
    )
    aborted = True
    try:
        while any(process.is_alive() for process in processes):
            bar.update(progress.value - bar.n)
            if any(process.exitcode not in (None, 0) for process in processes):
                break
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                # Following ends cleanly on the first Ctrl-C or SIGTERM: the
                # source stops, the key groups report, the run completes.
                if not options.follow or stop.is_set():
                    raise
                log.info("Follow: stopping input=%s", options.input)
                stop.set()
        bar.update(progress.value - bar.n)
        aborted = False
    finally:
        bar.close()
        _stop(processes, aborted)
    failed = [process for process in processes if process.exitcode != 0]
    if failed:
        raise RunError(_failure(failed, work))


def _failure(failed: Sequence[BaseProcess], work: Path) -> str:
    """Say why the run failed, from the worker that failed first.

    When one worker dies, its peers fail too (bytewax panics on the lost
    connection): a worker killed by a signal, or else the earliest error
    that is not such a panic, is the cause, and only its error is shown.
    """
    killed = [p for p in failed if (p.exitcode or 0) < 0 and p.exitcode != -15]
    if killed:
        name = signal.Signals(-(killed[0].exitcode or 0)).name
        return f"replay failed: {killed[0].name} was killed by {name}"
    errors = sorted(
        (_PEER_PANIC in text, path.stat().st_mtime_ns, path.stem, text)
        for path in work.glob("worker-*.error")
        if (text := path.read_text())
    )
    if not errors:
        first = failed[0]
        return f"replay failed: {first.name} exited with code {first.exitcode}"
    _, _, stem, text = errors[0]
    return f"replay failed in {stem.replace('-', ' ')}:\n{text.rstrip()}"


def _stop(processes: Sequence[BaseProcess], interrupted: bool) -> None:
    """Wait for the workers; stop those still running after a short grace.

    After a failure the others get the grace to end by themselves and say
    why; a bytewax worker whose peer died may instead wait forever, so it is
    then terminated. After an interrupt all are terminated at once.
    """
    if interrupted:
        for process in processes:
            if process.is_alive():
                process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=_STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()


def _worker_main(flow: Any, addresses: list[str], index: int, work: Path) -> None:
    # Workers print nothing of their own; bytewax's connection retries and
    # errors belong with the logs on standard error, not in the summary.
    os.dup2(2, 1)
    if sys.platform == "linux":
        # Die with the parent, even on SIGKILL, rather than run on orphaned.
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent handles Ctrl-C and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    error = work / f"worker-{index}.error"
    set_error_log(error)
    try:
        cluster_main(flow, addresses, index, worker_count_per_proc=1)  # type: ignore[no-untyped-call]
    except BaseException:
        # The parent shows the cause; a step's own error, when one was
        # recorded, is more telling than bytewax's panic.
        if not error.exists():
            error.write_text(traceback.format_exc())
        os._exit(1)


def _merge(options: ReplayOptions, work: Path) -> tuple[Counts, int]:
    """Merge the workers' part files into the sorted output files.

    The files are written in the scratch folder and moved into place only
    once all are complete, so a run that fails leaves the old outputs. The
    moves are one rename each, one after another: only a crash between two
    of them could leave a mix.
    """
    parts = work / "parts"
    counts = Counts()
    for path in sorted(parts.glob("*.counts.json")):
        counts.add(msgspec.json.decode(path.read_bytes(), type=Counts))

    customers = _merge_sorted(parts, "customers", work / CUSTOMERS_FILE)
    _merge_sorted(parts, "lineage", work / LINEAGE_FILE)

    if options.follow:
        # The decisions were appended to the output files as they came.
        for name in (CUSTOMERS_FILE, LINEAGE_FILE):
            os.replace(work / name, options.out / name)
        return counts, customers

    position_name = "offset" if options.format == "msgpack" else "line"
    rejected: list[dict[str, Any]] = []
    for path in sorted(parts.glob("*.rejected.jsonl")):
        rejected.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    rejected.sort(key=lambda entry: entry["position"])
    with (work / REJECTED_FILE).open("wb") as file:
        for entry in rejected:
            row = rejected_entry(entry, options.input.name, position_name)
            file.write(orjson.dumps(row) + b"\n")

    # Interventions in event time, then by id: the same bytes for any run.
    interventions: list[tuple[str, str, bytes]] = []
    for path in sorted(parts.glob("*.interventions.jsonl")):
        for line in path.read_bytes().splitlines():
            entry = orjson.loads(line)
            interventions.append((entry["event_time"], entry["intervention_id"], line))
    interventions.sort()
    with (work / INTERVENTIONS_FILE).open("wb") as file:
        for _, _, line in interventions:
            file.write(line + b"\n")
    for name in OUTPUT_FILES:
        os.replace(work / name, options.out / name)
    return counts, customers


def _merge_sorted(parts: Path, kind: str, target: Path) -> int:
    """Merge per-worker JSON lines of customers into one file, sorted."""
    records: list[dict[str, Any]] = []
    for path in sorted(parts.glob(f"*.{kind}.jsonl")):
        records.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    records.sort(key=lambda record: (record["tenant"], record["customer_id"]))
    with target.open("wb") as file:
        for record in records:
            file.write(orjson.dumps(record) + b"\n")
    return len(records)
