"""The ``touchstream`` command.

Exit codes: 0 when the run completed (rejected records are normal), 1 when
it failed, 2 on bad usage (an unknown option, a missing file, a wrong
configuration).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import orjson

from load_tests import bench, load
from operators.decode import FORMATS
from stream.cli_api import Handler, add_commands
from stream.config import health_settings, load_config, load_csv_map
from stream.errors import RunError, UsageError
from stream.explain import find_lineage, format_lineage
from stream.fit import FitOptions, run_fit
from stream.params import horizon_days, load_params, value_settings
from stream.replay import ReplayOptions, ReplaySummary, run_replay

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("stream.cli")
API_COMMANDS: dict[str, Handler] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="touchstream",
        description=(
            "Real-time customer value engine: touchpoint events in, customer "
            "lifetime value, health and interventions out."
        ),
    )
    _add_log_level(parser, "info")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser(
        "replay",
        help="run the dataflow over a file at full speed, in event time",
        description=(
            "Replay FILE through the dataflow at full speed on event time and "
            "write customers.jsonl, interventions.jsonl, rejected.jsonl and "
            "lineage.jsonl (read by `touchstream explain`) into --out. Records "
            "are first ordered by event time (ties by position) unless "
            "--presorted. A summary goes to standard output."
        ),
    )
    replay.add_argument("file", type=Path, metavar="FILE", help="the input file")
    _add_log_level(replay, argparse.SUPPRESS)
    replay.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help=(
            "jsonl: one JSON event per line; msgpack: concatenated MessagePack "
            "maps; csv: a header row and one event per row (see --csv-map); "
            "cdnow: the CDNOW purchase history text format"
        ),
    )
    replay.add_argument(
        "--as-of",
        metavar="TIME",
        help=(
            "apply only events with ts <= TIME and count the rest as after the "
            "as-of time; a date (1997-09-30) means 00:00 of that day in the "
            "tenant's time zone, a time needs an offset (…T12:00:00Z)"
        ),
    )
    replay.add_argument(
        "--presorted",
        action="store_true",
        help="the file is already in event-time order: skip the ordering step",
    )
    replay.add_argument(
        "--follow",
        action="store_true",
        help="keep reading FILE as it grows (jsonl or cdnow, one worker), on the "
        "live clock: interventions and rejections are appended to --out as they "
        "are decided; Ctrl-C or SIGTERM ends the run cleanly and writes the "
        "customers",
    )
    replay.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML configuration file"
    )
    replay.add_argument(
        "--csv-map",
        type=Path,
        metavar="FILE",
        help="a TOML file mapping CSV columns to event fields (--format csv)",
    )
    replay.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="the output folder, created if needed (default: out)",
    )
    replay.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes (default: 1); the output is the same for any N",
    )
    replay.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help=(
            "model parameters printed by `touchstream fit` (default: the set "
            "fitted on the bundled CDNOW history; the summary says which)"
        ),
    )
    replay.add_argument(
        "--horizon",
        metavar="DURATION",
        help="the CLV horizon, such as 39w or 273d (default: value.horizon, 52w)",
    )
    replay.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object instead of a table",
    )
    replay.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="progress bar on standard error: auto shows it on a terminal",
    )
    fit = commands.add_parser(
        "fit",
        help="fit BG/NBD and Gamma-Gamma parameters by maximum likelihood",
        description=(
            "Replay FILE as of --calibration-end and fit BG/NBD (purchase "
            "frequency and dropout) and Gamma-Gamma (order value) to its "
            "customers by maximum likelihood. Prints the parameters as JSON, "
            "the input of `touchstream replay --params`."
        ),
    )
    fit.add_argument("file", type=Path, metavar="FILE", help="the input file")
    _add_log_level(fit, argparse.SUPPRESS)
    fit.add_argument("--format", required=True, choices=FORMATS, help="as for replay")
    fit.add_argument(
        "--calibration-end",
        required=True,
        metavar="TIME",
        help="fit on events with ts <= TIME (the as-of rule of replay)",
    )
    fit.add_argument(
        "--time-unit",
        choices=["week", "day"],
        default="week",
        help="the unit of the fitted rates (default: week)",
    )
    fit.add_argument("--config", type=Path, metavar="FILE", help="as for replay")
    fit.add_argument("--csv-map", type=Path, metavar="FILE", help="as for replay")
    fit.add_argument(
        "--horizon",
        metavar="DURATION",
        help="the CLV horizon of the value bands (default: value.horizon, 52w)",
    )
    fit.add_argument(
        "--workers", type=int, default=1, metavar="N", help="as for replay"
    )
    fit.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the JSON to FILE"
    )
    explain = commands.add_parser(
        "explain",
        help="show where a customer's CLV and health come from",
        description=(
            "Explain one customer's CLV and health from the lineage.jsonl of "
            "a replay's output folder: the model inputs and parameter set, "
            "the spend per source and each health component."
        ),
    )
    explain.add_argument(
        "customer_id", metavar="CUSTOMER_ID", help="the customer_id of the events"
    )
    _add_log_level(explain, argparse.SUPPRESS)
    explain.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="the replay's output folder (default: out)",
    )
    explain.add_argument("--tenant", help="the customer's tenant, if ids repeat")
    explain.add_argument(
        "--json", action="store_true", help="print the lineage as JSON"
    )
    bench_parser = commands.add_parser(
        "bench",
        help="measure the replay pipeline against its baselines on one stream",
        description=(
            "Generate a seeded event stream and measure, side by side on it, "
            "the replay pipeline (native and pure kernels, 1 and 2 workers, "
            "JSON lines and MessagePack), the ordering step, a naive bytewax "
            "flow keyed by customer, the kernel alone, memory per customer "
            "and snapshot and restore; the same as `python -m load_tests.bench`."
        ),
    )
    _add_log_level(bench_parser, argparse.SUPPRESS)
    bench.add_arguments(bench_parser)
    load_parser = commands.add_parser(
        "load",
        help="load a server of its own: open-loop rate, latency, faults",
        description=(
            "Start a server of its own and a subscriber, send events at an "
            "open-loop rate (constant, stepped or a ramp), optionally do a "
            "fault, and report the achieved rate, ack and end-to-end latency "
            "(HdrHistogram, corrected for coordinated omission), lost and "
            "duplicated interventions and the server's CPU and memory, as "
            "report.json and report.png in --out."
        ),
    )
    _add_log_level(load_parser, argparse.SUPPRESS)
    load.add_arguments(load_parser)
    API_COMMANDS.update(
        add_commands(commands, lambda sub: _add_log_level(sub, argparse.SUPPRESS))
    )
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    # Accepted before and after the command; SUPPRESS keeps the command's
    # parser from overwriting a level given before it.
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help="lifecycle logs on standard error at this level (default: info)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        command = {
            "fit": _fit,
            "explain": _explain,
            "replay": _replay,
            "bench": bench.run,
            "load": load.run,
            **API_COMMANDS,
        }
        return command[args.command](args)
    except UsageError as ex:
        parser.exit(EXIT_USAGE, f"touchstream: error: {ex}\n")
    except RunError as ex:
        print(f"touchstream: {ex}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as ex:
        where = f" {ex.filename}" if ex.filename else ""
        print(f"touchstream: cannot use{where}: {ex.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("touchstream: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends a run like Ctrl-C: workers stopped, exit code 1.
    raise KeyboardInterrupt


def _replay(args: argparse.Namespace) -> int:
    if args.csv_map is not None and args.format != "csv":
        msg = "--csv-map goes with --format csv"
        raise UsageError(msg)
    progress = {
        "always": True,
        "never": False,
        "auto": sys.stderr.isatty(),
    }[args.progress]
    config = load_config(args.config)
    params, source = load_params(args.params)
    value = value_settings(params, config, args.horizon, args.config)
    options = ReplayOptions(
        input=args.file,
        format=args.format,
        out=args.out,
        config=config,
        as_of=args.as_of,
        presorted=args.presorted,
        csv_map=None if args.csv_map is None else load_csv_map(args.csv_map),
        workers=args.workers,
        progress=progress,
        value=value,
        value_source=source,
        health=health_settings(config),
        follow=args.follow,
    )
    summary = run_replay(options)
    if args.json:
        _emit(orjson.dumps(summary.to_json()).decode() + "\n")
    else:
        _emit(format_summary(summary, args.out))
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    lineage = find_lineage(args.out, args.customer_id, args.tenant)
    if args.json:
        _emit(orjson.dumps(lineage, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _emit(format_lineage(lineage))
    return EXIT_OK


def _fit(args: argparse.Namespace) -> int:
    if args.csv_map is not None and args.format != "csv":
        msg = "--csv-map goes with --format csv"
        raise UsageError(msg)
    if args.out is not None and args.out.is_dir():
        msg = f"--out {args.out} is a folder; expected a file path"
        raise UsageError(msg)
    if args.out is not None and not args.out.parent.is_dir():
        msg = (
            f"--out {args.out}: expected a file path in an existing folder - "
            f"{args.out.parent} does not exist"
        )
        raise UsageError(msg)
    config = load_config(args.config)
    horizon_days(args.horizon, config, args.config)
    options = FitOptions(
        input=args.file,
        format=args.format,
        calibration_end=args.calibration_end,
        time_unit=args.time_unit,
        config=config,
        csv_map=None if args.csv_map is None else load_csv_map(args.csv_map),
        workers=args.workers,
        horizon=args.horizon,
    )
    params = run_fit(options)
    text = msgspec.json.format(msgspec.json.encode(params), indent=2) + b"\n"
    if args.out is not None:
        args.out.write_bytes(text)
    _emit(text.decode())
    return EXIT_OK


def _emit(text: str) -> None:
    """Write `text` to standard output, ending quietly if no one reads it.

    A reader that stops early (`touchstream explain ... --json | head`)
    closes the pipe; as the signal module's notes on SIGPIPE advise, the
    command then exits without a word instead of reporting standard output.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes standard output again at exit: point it at devnull
        # so that flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(EXIT_OK) from None


def format_summary(summary: ReplaySummary, out: Path) -> str:
    """The human-readable summary of a replay."""
    counts = summary.counts
    rows = [
        ("read", f"{counts.read:,}"),
        ("applied", f"{counts.applied:,}"),
        ("rejected", f"{counts.rejected_total:,}"),
    ]
    rows += [
        (f"  {code}", f"{count:,}") for code, count in sorted(counts.rejected.items())
    ]
    rows += [
        ("duplicates", f"{counts.duplicates:,}"),
        ("after as-of", f"{counts.after_as_of:,}"),
        ("late", f"{counts.late:,}"),
        ("customers", f"{summary.customers:,}"),
        ("interventions", f"{summary.interventions:,}"),
        ("events/s", f"{summary.events_per_s:,.0f}"),
        ("seconds", f"{summary.seconds:.2f}"),
    ]
    worker_word = "worker" if summary.workers == 1 else "workers"
    lines = [
        f"Replay of {summary.input.name} ({summary.format}), "
        f"{summary.workers} {worker_word}, {summary.implementation} kernel",
    ]
    lines += [f"  {name:<18}{value:>14}" for name, value in rows]
    lines.append(f"  {'output':<18}{out}/")
    if summary.value_source is not None:
        lines.append(f"  {'params':<18}{summary.value_source}")
    return "\n".join(lines) + "\n"
