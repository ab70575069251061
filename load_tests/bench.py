"""Benchmark: Touchstream's replay pipeline side by side with its baselines.

Generates one seeded event stream (eight channels, Zipf-skewed customer
popularity, orders mixed with engagement, arrivals out of order within the
allowed lateness), writes it presorted as JSON lines and MessagePack, and
measures on those same events, each case in a subprocess of its own:

- ``replay``: ``touchstream replay --presorted``, native kernel, 1 and 2
  worker processes, from JSON lines and from MessagePack, and once more with
  a silence window longer than the stream, so that nothing is decided;
- ``ordering``: the ordering step alone on the unsorted file, and a whole
  replay of the unsorted file;
- ``pure``: the replay with the pure-Python twin (``TOUCHSTREAM_PURE=1``);
- ``naive``: a bytewax flow keyed by customer with ``stateful_map`` doing the
  same per-customer updates, silence noticed at the customer's next event;
- ``steps``: the replay's own steps (decode, route, key-group actors with
  the default rules) called in one process without bytewax, to show what of
  the replay's time is the engine and what is Touchstream's Python;
- ``decode``: the decode step alone (``Decoder.decode_batch``), both formats,
  to show what of the replay's time is decoding;
- ``kernel``: ``CustomerTable.apply`` alone on pre-decoded events;
- ``memory``: resident bytes per customer of a table filled with
  ``--memory-customers`` customers (native, pure, naive dict state), and the
  snapshot and restore time of the whole key-group state.

    python -m load_tests.bench [--quick] [--events N] [--customers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import operator
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from load_tests.generate import generate_events
from operators.decode import Format
from stream.errors import RunError, UsageError

CASE_GROUPS = (
    "replay",
    "ordering",
    "pure",
    "naive",
    "steps",
    "decode",
    "kernel",
    "memory",
)
UNSORTED_FILE = "events.jsonl"
SORTED_FILES = {"jsonl": "sorted.jsonl", "msgpack": "sorted.msgpack"}
# A silence window longer than the stream: the replay then decides nothing,
# which shows what the signals and their decisions cost.
QUIET_CONFIG = "quiet.toml"
FULL = {"events": 1_000_000, "customers": 100_000, "memory_customers": 1_000_000}
QUICK = {"events": 20_000, "customers": 2_000, "memory_customers": 5_000}
ZIPF_EXPONENT = 1.0
# The default allowed lateness of the live clock: arrivals lag by up to it.
DISORDER_MS = 5_000
# Any size of stream spans four weeks, so that silences (48 h) happen in a
# quick run too.
SPAN_MS = 28 * 86_400_000
BATCH_SIZE = 2_048
SILENCE_WINDOW_MS = 48 * 3_600_000
DAY_MS = 86_400_000

# The performance targets: (figure key, comparison, threshold, text).
TARGETS = (
    ("kernel_native", ">=", 2_000_000, "kernel alone, native: >= 2,000,000 ev/s"),
    ("replay_jsonl_1w", ">=", 500_000, "replay JSON lines, 1 worker: >= 500,000 ev/s"),
    (
        "replay_msgpack_1w",
        ">=",
        600_000,
        "replay MessagePack, 1 worker: >= 600,000 ev/s",
    ),
    ("vs_naive_jsonl_1w", ">=", 5.0, "replay JSON lines, 1 worker: >= 5x naive"),
    ("scaling_jsonl_2w", ">=", 1.5, "2 workers: >= 1.5x 1 worker (JSON lines)"),
    ("scaling_msgpack_2w", ">=", 1.5, "2 workers: >= 1.5x 1 worker (MessagePack)"),
    ("memory_native_bytes", "<=", 400, "memory at 1M customers: <= 400 bytes each"),
    ("snapshot_restore_ms", "<", 1_000, "snapshot + restore of 1M customers: < 1 s"),
)


_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, shared by ``touchstream bench``."""
    parser.add_argument(
        "--events",
        type=int,
        metavar="N",
        help=f"events to generate (default {FULL['events']:,})",
    )
    parser.add_argument(
        "--customers",
        type=int,
        metavar="N",
        help=f"customers in the stream (default {FULL['customers']:,})",
    )
    parser.add_argument(
        "--memory-customers",
        type=int,
        metavar="N",
        help=(
            "customers in the tables of the memory and snapshot cases "
            f"(default {FULL['memory_customers']:,})"
        ),
    )
    parser.add_argument("--seed", type=int, default=1, help="the stream's seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"a small run: {QUICK['events']:,} events, {QUICK['customers']:,} "
            f"customers, {QUICK['memory_customers']:,} in the memory case"
        ),
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASE_GROUPS),
        metavar="LIST",
        help=f"comma-separated cases to run (default all: {','.join(CASE_GROUPS)})",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every figure to FILE"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="write the data files into DIR"
    )
    # One case inside its own subprocess; the parent reads its JSON output.
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench",
        description=(__doc__ or "").split("\n\n")[0],
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UsageError as ex:
        parser.exit(2, f"bench: error: {ex}\n")
    except RunError as ex:
        print(f"bench: {ex}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or, with ``--case``, one case) from parsed options."""
    if args.case is not None:
        sys.stdout.write(json.dumps(_run_case(args)) + "\n")
        return 0
    size = QUICK if args.quick else FULL
    events = args.events or size["events"]
    customers = args.customers or size["customers"]
    memory_customers = args.memory_customers or size["memory_customers"]
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(cases) - set(CASE_GROUPS))
    if unknown:
        msg = (
            f"unknown case {', '.join(unknown)}; expected some of "
            f"{', '.join(CASE_GROUPS)}"
        )
        raise UsageError(msg)
    for name, value in (
        ("--events", events),
        ("--customers", customers),
        ("--memory-customers", memory_customers),
    ):
        if value < 1:
            msg = f"expected {name} to be 1 or more - got {value}"
            raise UsageError(msg)

    with tempfile.TemporaryDirectory(prefix="touchstream-bench-") as scratch:
        data = args.keep or Path(scratch)
        data.mkdir(parents=True, exist_ok=True)
        _progress(f"generating {events:,} events over {customers:,} customers")
        stream = write_stream(data, events, customers, args.seed)
        results: dict[str, dict[str, Any]] = {}
        for name, command in _plan(cases, data, memory_customers):
            _progress(f"running {name}")
            results[name] = command()
    report = summarise(
        {
            "events": events,
            "customers": customers,
            "memory_customers": memory_customers,
            "seed": args.seed,
            "cases": cases,
            **stream,
        },
        results,
    )
    sys.stdout.write(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# The event stream.


def write_stream(
    folder: Path, events: int, customers: int, seed: int
) -> dict[str, Any]:
    """Write the unsorted stream, and presorted JSON lines and MessagePack."""
    generated = list(
        generate_events(
            events,
            customers,
            seed=seed,
            mean_gap_ms=max(1, SPAN_MS // max(1, events)),
            disorder_ms=DISORDER_MS,
            zipf_exponent=ZIPF_EXPONENT,
        )
    )
    json_lines = [msgspec.json.encode(event) for event in generated]
    with (folder / UNSORTED_FILE).open("wb") as file:
        file.writelines(line + b"\n" for line in json_lines)
    # Event-time order, ties by arrival, as the ordering step would sort.
    order = sorted(range(len(generated)), key=lambda index: generated[index]["ts"])
    late = sum(
        1
        for before, after in zip(generated, generated[1:], strict=False)
        if after["ts"] < before["ts"]
    )
    with (folder / SORTED_FILES["jsonl"]).open("wb") as file:
        file.writelines(json_lines[index] + b"\n" for index in order)
    encode = msgspec.msgpack.encode
    with (folder / SORTED_FILES["msgpack"]).open("wb") as file:
        file.writelines(encode(generated[index]) for index in order)
    orders = sum(1 for event in generated if event["kind"] == "order")
    times = [event["ts"] for event in generated]
    return {
        "customers_seen": len({event["customer_id"] for event in generated}),
        "orders": orders,
        "out_of_order": late,
        "span_days": round((max(times) - min(times)) / 86_400_000, 1),
        "zipf_exponent": ZIPF_EXPONENT,
        "disorder_ms": DISORDER_MS,
        "file_bytes": {
            name: (folder / path).stat().st_size
            for name, path in (("unsorted_jsonl", UNSORTED_FILE),)
            + tuple(SORTED_FILES.items())
        },
    }


# The plan: which subprocess measures which case.


Case = Callable[[], dict[str, Any]]


def _plan(
    cases: list[str], data: Path, memory_customers: int
) -> Iterator[tuple[str, Case]]:
    """Name and measure each case, in order; runs one at a time, so that
    no case shares the two cores with another."""
    sorted_jsonl = data / SORTED_FILES["jsonl"]
    sorted_msgpack = data / SORTED_FILES["msgpack"]
    if "replay" in cases:
        for fmt, path in (("jsonl", sorted_jsonl), ("msgpack", sorted_msgpack)):
            for workers in (1, 2):
                yield (
                    f"replay_{fmt}_{workers}w",
                    partial(_replay, path, fmt, workers, presorted=True),
                )
        (data / QUIET_CONFIG).write_text('[silence]\nwindow = "3650d"\n')
        yield (
            "replay_quiet_jsonl_1w",
            partial(
                _replay,
                sorted_jsonl,
                "jsonl",
                1,
                presorted=True,
                config=data / QUIET_CONFIG,
            ),
        )
    if "ordering" in cases:
        yield "ordering", partial(_case, "ordering", data)
        yield (
            "replay_unsorted_jsonl_1w",
            partial(_replay, data / UNSORTED_FILE, "jsonl", 1, presorted=False),
        )
    if "pure" in cases:
        yield (
            "pure_replay_jsonl_1w",
            partial(_replay, sorted_jsonl, "jsonl", 1, presorted=True, pure=True),
        )
    if "naive" in cases:
        yield "naive_jsonl_1w", partial(_case, "naive", data)
    if "steps" in cases:
        yield "steps_jsonl", partial(_case, "steps", data)
    if "decode" in cases:
        for fmt in SORTED_FILES:
            yield f"decode_{fmt}", partial(_case, f"decode_{fmt}", data)
    if "kernel" in cases:
        yield "kernel_native", partial(_case, "kernel", data)
        yield "kernel_pure", partial(_case, "kernel", data, pure=True)
    if "memory" in cases:
        for impl in ("native", "pure", "naive"):
            yield (
                f"memory_{impl}",
                partial(
                    _case,
                    f"memory_{impl}",
                    data,
                    pure=impl == "pure",
                    extra=["--memory-customers", str(memory_customers)],
                ),
            )


def _environment(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TOUCHSTREAM_PURE", None)
    env.pop("TOUCHSTREAM_REQUIRE_NATIVE", None)
    # A native case must never measure the twin by a silent fallback.
    env["TOUCHSTREAM_PURE" if pure else "TOUCHSTREAM_REQUIRE_NATIVE"] = "1"
    return env


def _subprocess(command: list[str], pure: bool) -> str:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_environment(pure),
        check=False,
    )
    if result.returncode != 0:
        msg = (
            f"`{' '.join(command)}` exited with {result.returncode}:\n"
            f"{result.stderr.strip()}"
        )
        raise RunError(msg)
    return result.stdout


def _replay(
    path: Path,
    fmt: str,
    workers: int,
    *,
    presorted: bool,
    pure: bool = False,
    config: Path | None = None,
) -> dict[str, Any]:
    """A real ``touchstream replay``, its summary and its outputs' digests."""
    with tempfile.TemporaryDirectory(prefix="touchstream-bench-out-") as out:
        command = [
            sys.executable,
            "-m",
            "stream",
            "--log-level",
            "warning",
            "replay",
            str(path),
            "--format",
            fmt,
            "--workers",
            str(workers),
            "--json",
            "--progress",
            "never",
            "--out",
            out,
        ]
        if presorted:
            command.append("--presorted")
        if config is not None:
            command += ["--config", str(config)]
        started = time.perf_counter()
        summary = json.loads(_subprocess(command, pure))
        wall_s = time.perf_counter() - started
        digests = {
            name: hashlib.sha256((Path(out) / name).read_bytes()).hexdigest()
            for name in ("customers.jsonl", "interventions.jsonl")
        }
    return {
        "events_per_s": summary["events_per_s"],
        "seconds": summary["seconds"],
        "process_seconds": round(wall_s, 3),
        "read": summary["read"],
        "applied": summary["applied"],
        "customers": summary["customers"],
        "interventions": summary["interventions"],
        "kernel": summary["kernel"],
        "workers": workers,
        "format": fmt,
        "customers_sha256": digests["customers.jsonl"],
        "interventions_sha256": digests["interventions.jsonl"],
    }


def _case(
    name: str, data: Path, *, pure: bool = False, extra: list[str] | None = None
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "load_tests.bench",
        "--case",
        name,
        "--data",
        str(data),
        *(extra or []),
    ]
    result: dict[str, Any] = json.loads(_subprocess(command, pure))
    return result


# The cases that run inside their own subprocess.


def _run_case(args: argparse.Namespace) -> dict[str, Any]:
    data: Path = args.data
    if args.case == "ordering":
        return _ordering(data / UNSORTED_FILE)
    if args.case == "naive":
        return _naive(data / SORTED_FILES["jsonl"])
    if args.case == "kernel":
        return _kernel(data / SORTED_FILES["jsonl"])
    if args.case == "steps":
        return _steps(data / SORTED_FILES["jsonl"])
    if args.case == "decode_jsonl":
        return _decode(data / SORTED_FILES["jsonl"], "jsonl")
    if args.case == "decode_msgpack":
        return _decode(data / SORTED_FILES["msgpack"], "msgpack")
    if args.case.startswith("memory_"):
        customers = args.memory_customers or QUICK["memory_customers"]
        return _memory(args.case.removeprefix("memory_"), customers)
    msg = f"unknown case {args.case}"
    raise UsageError(msg)


def _decoder(fmt: Format = "jsonl") -> Any:
    from operators.decode import DecodeSettings

    return DecodeSettings(format=fmt, input_name="bench").build()


def _raw_batches(path: Path, fmt: Format) -> list[list[tuple[int, bytes]]]:
    """The file's raw records in batches of the replay's size, read before
    any clock starts."""
    from stream.sources import read_records

    records = [record for record, _ in read_records(path, fmt)]
    return [
        records[start : start + BATCH_SIZE]
        for start in range(0, len(records), BATCH_SIZE)
    ]


def _ordering(path: Path) -> dict[str, Any]:
    """The ordering step of an unsorted replay, on its own, one partition."""
    from state.routing import DEFAULT_KEY_GROUPS
    from stream.sources import order_records

    decoder = _decoder()
    with tempfile.TemporaryDirectory(prefix="touchstream-bench-spool-") as spool:
        started = time.perf_counter()
        _, count = order_records(
            path, "jsonl", decoder, DEFAULT_KEY_GROUPS, 1, Path(spool)
        )
        seconds = time.perf_counter() - started
    return {"events_per_s": round(count / seconds), "seconds": round(seconds, 3)}


def _decode(path: Path, fmt: Format) -> dict[str, Any]:
    """The decode step alone, on records split from the file beforehand."""
    batches = _raw_batches(path, fmt)
    decoder = _decoder(fmt)
    gc.collect()
    started = time.perf_counter()
    touches = sum(len(decoder.decode_batch(batch).touches) for batch in batches)
    seconds = time.perf_counter() - started
    return {
        "events_per_s": round(sum(map(len, batches)) / seconds),
        "seconds": round(seconds, 3),
        "applied": touches,
    }


def _steps(path: Path) -> dict[str, Any]:
    """The replay's steps without bytewax: each raw batch decoded and split
    by the decode step, each share given to its key-group actor (built with
    the settings a `touchstream replay` without options uses), then the end
    of input. Records are split from the file before the clock starts."""
    from operators.keygroup import KeyGroupActor
    from stream.config import health_settings, load_config
    from stream.flow import REPORT_KEY, DecodeStep
    from stream.params import load_params, value_settings
    from stream.replay import ReplayOptions, actor_settings, decode_settings
    from stream.sources import RawBatch

    config = load_config(None)
    options = ReplayOptions(
        input=path,
        format="jsonl",
        out=path.parent,
        config=config,
        presorted=True,
        value=value_settings(load_params(None)[0], config),
        health=health_settings(config),
    )
    decode = decode_settings(options)
    settings = actor_settings(options, 1)
    batches = [RawBatch(0, records, False) for records in _raw_batches(path, "jsonl")]
    step = DecodeStep(decode, config.key_groups)
    actors: dict[str, KeyGroupActor] = {}
    interventions = 0
    gc.collect()
    started = time.perf_counter()
    for batch in batches:
        for key, item in step(batch):
            if key == REPORT_KEY:
                continue
            actor = actors.get(key)
            if actor is None:
                actor = actors[key] = settings.build()
            for report in actor.on_batch([item]):
                interventions += len(report.interventions)
    for actor in actors.values():
        for report in actor.on_eof():
            interventions += len(report.interventions)
    seconds = time.perf_counter() - started
    return {
        "events_per_s": round(sum(len(batch.records) for batch in batches) / seconds),
        "seconds": round(seconds, 3),
        "interventions": interventions,
    }


def _decoded_batches(path: Path) -> list[list[Any]]:
    decoder = _decoder()
    return [
        decoder.decode_batch(records).touches for records in _raw_batches(path, "jsonl")
    ]


def _kernel(path: Path) -> dict[str, Any]:
    """``CustomerTable.apply`` alone, one table, event-time order, with the
    silence timers on, over events decoded before the clock starts."""
    import native

    table_module = native.load("table")
    batches = _decoded_batches(path)
    table = table_module.CustomerTable(silence_window_ms=SILENCE_WINDOW_MS)
    signals: list[Any] = []
    gc.collect()
    started = time.perf_counter()
    applied = 0
    for batch in batches:
        applied += table.apply(batch, -1, True, signals)
    seconds = time.perf_counter() - started
    return {
        "events_per_s": round(applied / seconds),
        "seconds": round(seconds, 3),
        "applied": applied,
        "customers": len(table),
        "signals": len(signals),
        "kernel": native.implementation(),
    }


# The naive baseline: one bytewax key per customer, a dict of state each.


def naive_update(
    state: dict[str, Any] | None, event: Any
) -> tuple[dict[str, Any], Any]:
    """Update one customer's state with one event, as a per-key
    ``stateful_map`` can: purchases merged by day, touches and engagement per
    channel, service counters, and silence noticed only now, when the next
    inbound event shows that the last one is more than a window ago."""
    ts_ms = event.ts if isinstance(event.ts, int) else _epoch_ms(event.ts)
    if state is None:
        state = {
            "orders": 0,
            "repeat_purchases": 0,
            "first_day": -1,
            "last_day": -1,
            "spend": 0.0,
            "repeat_spend": 0.0,
            "refunds": 0.0,
            "open_tickets": 0,
            "complaints": 0,
            "last_nps": -1,
            "last_inbound_ms": -1,
            "last_event_ms": -1,
            "segment": None,
            "channels": {},
            "spend_by_source": {},
        }
    signal = None
    kind = event.kind
    if event.segment is not None:
        state["segment"] = event.segment
    state["last_event_ms"] = max(state["last_event_ms"], ts_ms)
    channel = state["channels"].setdefault(
        event.channel,
        {"last_touch_ms": -1, "inbound": 0, "outbound": 0, "short": 0.0, "long": 0.0},
    )
    channel["last_touch_ms"] = max(channel["last_touch_ms"], ts_ms)
    if event.direction == "inbound":
        channel["inbound"] += 1
        age = ts_ms - channel["last_touch_ms"]
        channel["short"] = channel["short"] * math.exp(-age / (14 * DAY_MS)) + 1.0
        channel["long"] = channel["long"] * math.exp(-age / (90 * DAY_MS)) + 1.0
        last = state["last_inbound_ms"]
        if last != -1 and ts_ms - last > SILENCE_WINDOW_MS:
            signal = ("silence", last + SILENCE_WINDOW_MS)
        state["last_inbound_ms"] = max(last, ts_ms)
    else:
        channel["outbound"] += 1
    if kind == "order":
        day = ts_ms // DAY_MS
        amount = event.amount or 0.0
        if state["orders"] == 0:
            state["first_day"] = state["last_day"] = day
        elif day > state["last_day"]:
            state["repeat_purchases"] += 1
            state["repeat_spend"] += amount
            state["last_day"] = day
        state["orders"] += 1
        state["spend"] += amount
        by_source = state["spend_by_source"]
        by_source[event.source] = by_source.get(event.source, 0.0) + amount
    elif kind == "refund":
        state["refunds"] += event.amount or 0.0
    elif kind == "ticket_opened":
        state["open_tickets"] += 1
    elif kind == "ticket_resolved":
        state["open_tickets"] = max(0, state["open_tickets"] - 1)
    elif kind == "complaint":
        state["complaints"] += 1
    elif kind == "nps":
        state["last_nps"] = event.score
    return state, signal


def _epoch_ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def _naive(path: Path) -> dict[str, Any]:
    """A bytewax flow keyed by customer: decode, ``stateful_map``, count."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from operators.events import Event
    from stream.sources import PartitionSpec, RawBatch, RecordSource

    decoder = msgspec.json.Decoder(Event)
    seen = {"events": 0, "signals": 0}

    def decode(batch: RawBatch) -> list[tuple[str, Any]]:
        events = [decoder.decode(raw) for _, raw in batch.records]
        return [(f"{event.tenant}\x1f{event.customer_id}", event) for event in events]

    def count(item: tuple[str, Any]) -> None:
        seen["events"] += 1
        if item[1] is not None:
            seen["signals"] += 1

    flow = Dataflow("naive_per_customer")
    raw = op.input("read", flow, RecordSource([PartitionSpec(path, "jsonl")], 2048))
    keyed = op.flat_map("decode", raw, decode)
    updated = op.stateful_map("update", keyed, naive_update)
    op.inspect("count", updated, lambda _step, item: count(item))
    started = time.perf_counter()
    run_main(flow)  # type: ignore[no-untyped-call]
    seconds = time.perf_counter() - started
    events = seen["events"]
    return {
        "events_per_s": round(events / seconds),
        "seconds": round(seconds, 3),
        "applied": events,
        "signals": seen["signals"],
    }


# Memory and snapshots.


def _resident_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Start the high-water mark again from the resident size now, so that
    the imports' transient memory does not hide the fill's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass  # an older kernel: the peak then counts from the imports on


def _peak_resident_bytes() -> int:
    """The process's high-water mark of resident memory.

    Read from VmHWM rather than ``ru_maxrss``, which survives ``exec`` and
    so would still hold the peak of the parent the subprocess forked from.
    """
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _resident_bytes()


def _fill_touches(start: int, end: int) -> list[Any]:
    """Three touches per customer: an order, an inbound message, an outbound
    e-mail, so each record holds purchases, two channels and a timer."""
    from operators.events import Touch

    base_ms = 1_704_067_200_000
    touches = []
    for index in range(start, end):
        customer_id = f"C{index:07d}"
        ts_ms = base_ms + index
        for offset, (kind, channel, inbound, amount) in enumerate(
            ((6, 7, True, 25.0), (0, 0, True, 0.0), (0, 1, False, 0.0))
        ):
            touches.append(
                Touch(
                    index * 3 + offset,
                    ts_ms + offset,
                    (ts_ms + offset) // DAY_MS,
                    "demo",
                    customer_id,
                    "erp",
                    f"m{index}-{offset}",
                    0,
                    channel,
                    kind,
                    inbound,
                    amount,
                    None,
                    -1,
                )
            )
    return touches


def _fill_events(start: int, end: int) -> list[Any]:
    from operators.events import Event

    base_ms = 1_704_067_200_000
    events = []
    for index in range(start, end):
        customer_id = f"C{index:07d}"
        for offset, (kind, channel, direction, amount) in enumerate(
            (
                ("order", "store", "inbound", 25.0),
                ("message", "wechat", "inbound", None),
                ("message", "email", "outbound", None),
            )
        ):
            events.append(
                Event(
                    f"m{index}-{offset}",
                    "demo",
                    customer_id,
                    "erp",
                    channel,  # type: ignore[arg-type]
                    kind,  # type: ignore[arg-type]
                    direction,  # type: ignore[arg-type]
                    base_ms + index + offset,
                    amount=amount,
                )
            )
    return events


def _memory(impl: str, customers: int) -> dict[str, Any]:
    """Resident bytes per customer of a filled state and, for the tables,
    the key-group actor's snapshot and restore of the whole state."""
    import native
    from operators.keygroup import KeyGroupSettings

    chunk = 10_000
    settings = KeyGroupSettings(partitions=1)
    actor = settings.build()
    naive: dict[str, Any] = {}
    gc.collect()
    _reset_peak()
    before = _resident_bytes()
    peak_before = _peak_resident_bytes()
    for start in range(0, customers, chunk):
        end = min(customers, start + chunk)
        if impl == "naive":
            for event in _fill_events(start, end):
                key = f"{event.tenant}\x1f{event.customer_id}"
                naive[key] = naive_update(naive.get(key), event)[0]
        else:
            actor.table.apply(_fill_touches(start, end), -1, True, [])
    gc.collect()
    after = _resident_bytes()
    peak_after = _peak_resident_bytes()
    result: dict[str, Any] = {
        "customers": customers,
        "bytes_per_customer": round((after - before) / customers),
        "peak_bytes_per_customer": round(
            max(0, peak_after - max(peak_before, before)) / customers
        ),
    }
    if impl == "naive":
        return result

    started = time.perf_counter()
    snapshot = actor.snapshot()
    middle = time.perf_counter()
    restored = settings.build(snapshot)
    ended = time.perf_counter()
    write_ms = _checkpoint_write_ms(snapshot)
    probe = [("demo", f"C{index:07d}") for index in (0, customers // 2, customers - 1)]
    same = len(restored.table) == customers and all(
        restored.table.get_row(*key) == actor.table.get_row(*key) for key in probe
    )
    result.update(
        {
            "kernel": native.implementation(),
            "snapshot_ms": round((middle - started) * 1000, 1),
            "restore_ms": round((ended - middle) * 1000, 1),
            "snapshot_bytes": len(snapshot),
            "checkpoint_write_ms": write_ms,
            "restored_identically": same,
        }
    )
    return result


def _checkpoint_write_ms(snapshot: bytes) -> float:
    """How long committing a snapshot to a recovery partition takes: one
    row in a SQLite file, synced, as bytewax recovery stores it."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(Path(folder) / "part-0.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, ser BLOB)")
        started = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO snaps VALUES ('key_groups', 'all', ?)", (snapshot,))
        db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
    return round(elapsed * 1000, 1)


# The report.


def summarise(
    config: dict[str, Any], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Add ratios, the machine and the performance targets to the figures."""
    naive = results.get("naive_jsonl_1w", {}).get("events_per_s")
    for name, result in results.items():
        rate = result.get("events_per_s")
        if rate is None:
            continue
        if naive and name.startswith(("replay_", "pure_", "kernel_")):
            result["vs_naive"] = round(rate / naive, 2)
        if name.endswith("_2w"):
            single = results.get(name.removesuffix("_2w") + "_1w", {})
            if single.get("events_per_s"):
                result["vs_1_worker"] = round(rate / single["events_per_s"], 2)

    replays = [
        result
        for name, result in results.items()
        if "replay" in name and "quiet" not in name
    ]
    digests = {(r["customers_sha256"], r["interventions_sha256"]) for r in replays}
    figures = _target_figures(results)
    targets = []
    for key, comparison, threshold, text in TARGETS:
        figure = figures.get(key)
        met = None if figure is None else _COMPARE[comparison](figure, threshold)
        entry = {"target": text, "figure": figure, "met": met}
        if key in ("memory_native_bytes", "snapshot_restore_ms"):
            entry["customers"] = config["memory_customers"]
        targets.append(entry)
    return {
        "config": config,
        "machine": machine(),
        "results": results,
        "outputs_agree": len(digests) <= 1,
        "targets": targets,
    }


def _target_figures(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    figures: dict[str, float] = {}

    def take(key: str, case: str, field: str) -> None:
        value = results.get(case, {}).get(field)
        if value is not None:
            figures[key] = value

    take("kernel_native", "kernel_native", "events_per_s")
    take("replay_jsonl_1w", "replay_jsonl_1w", "events_per_s")
    take("replay_msgpack_1w", "replay_msgpack_1w", "events_per_s")
    take("vs_naive_jsonl_1w", "replay_jsonl_1w", "vs_naive")
    take("scaling_jsonl_2w", "replay_jsonl_2w", "vs_1_worker")
    take("scaling_msgpack_2w", "replay_msgpack_2w", "vs_1_worker")
    take("memory_native_bytes", "memory_native", "bytes_per_customer")
    memory = results.get("memory_native", {})
    if "snapshot_ms" in memory:
        figures["snapshot_restore_ms"] = round(
            memory["snapshot_ms"] + memory["restore_ms"], 1
        )
    return figures


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


_LABELS = {
    "replay_jsonl_1w": "replay, JSON lines, native, 1 worker",
    "replay_jsonl_2w": "replay, JSON lines, native, 2 workers",
    "replay_msgpack_1w": "replay, MessagePack, native, 1 worker",
    "replay_msgpack_2w": "replay, MessagePack, native, 2 workers",
    "replay_quiet_jsonl_1w": "replay, JSON lines, native, 1 worker, no silence",
    "ordering": "ordering step alone (unsorted JSON lines)",
    "replay_unsorted_jsonl_1w": "replay, unsorted JSON lines, native, 1 worker",
    "pure_replay_jsonl_1w": "replay, JSON lines, pure Python, 1 worker",
    "naive_jsonl_1w": "naive bytewax stateful_map per customer",
    "steps_jsonl": "replay's steps without bytewax, JSON lines, native",
    "decode_jsonl": "decode alone (Decoder.decode_batch), JSON lines",
    "decode_msgpack": "decode alone (Decoder.decode_batch), MessagePack",
    "kernel_native": "kernel alone (CustomerTable.apply), native",
    "kernel_pure": "kernel alone (CustomerTable.apply), pure",
}


def format_report(report: dict[str, Any]) -> str:
    """The readable table of a run."""
    config, results, box = report["config"], report["results"], report["machine"]
    lines = [
        f"Touchstream benchmark: {config['events']:,} events, "
        f"{config['customers']:,} customers ({config['customers_seen']:,} seen), "
        f"seed {config['seed']}",
        f"machine: {box['cpus']} CPUs, {box['cpu_model']}, Python {box['python']}",
        "",
        f"{'case':<48}{'events/s':>12}{'vs naive':>10}{'vs 1 worker':>13}"
        f"{'seconds':>9}",
    ]
    for name, label in _LABELS.items():
        result = results.get(name)
        if result is None:
            continue
        naive = result.get("vs_naive")
        scale = result.get("vs_1_worker")
        lines.append(
            f"{label:<48}{result['events_per_s']:>12,}"
            f"{'' if naive is None else f'{naive:.2f}x':>10}"
            f"{'' if scale is None else f'{scale:.2f}x':>13}"
            f"{result['seconds']:>9.2f}"
        )
    memory = [(name, results[name]) for name in results if name.startswith("memory")]
    if memory:
        title = f"state of {config['memory_customers']:,} customers"
        lines += [
            "",
            f"{title:<48}"
            f"{'bytes/cust':>12}{'peak b/c':>10}{'snapshot ms':>13}{'restore ms':>11}",
        ]
        for name, result in memory:
            snapshot = result.get("snapshot_ms")
            restore = result.get("restore_ms")
            lines.append(
                f"{name.removeprefix('memory_'):<48}"
                f"{result['bytes_per_customer']:>12,}"
                f"{result['peak_bytes_per_customer']:>10,}"
                f"{'' if snapshot is None else f'{snapshot:,.0f}':>13}"
                f"{'' if restore is None else f'{restore:,.0f}':>11}"
            )
    if any(name.startswith(("replay", "pure")) for name in results):
        agree = "yes" if report["outputs_agree"] else "NO"
        lines += [
            "",
            f"every replay wrote the same customers and interventions: {agree}",
        ]
    lines += ["", "targets:"]
    if config["events"] < FULL["events"]:
        lines.append(
            "  (a small run: start-up dominates its rates; the targets are for "
            f"{FULL['events']:,} events)"
        )
    for target in report["targets"]:
        met = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        figure = target["figure"]
        shown = "" if figure is None else f"{figure:,}"
        scale = target.get("customers")
        if scale is not None and scale != FULL["memory_customers"]:
            met += f" (measured at {scale:,} customers)"
        lines.append(f"  {target['target']:<52}{shown:>12}  {met}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
