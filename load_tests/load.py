"""``touchstream load``: how much load Touchstream holds on this machine,
how long an event takes to become the intervention it triggers, and what
a failure costs.

One run starts a server of its own (``load_tests/harness.py``), a CRM
subscriber in a process of its own (``load_tests/subscriber.py``) and the
open-loop generator (``load_tests/generator.py``) on this process's event
loop, at a constant rate or in steps. It can do a fault while the load is
on: kill the engine, restart Redis, or stall a second subscriber. At the
end it sends one return per ingest partition (customers silent since the
start) and waits for their interventions: once they arrive, the engine has
decided everything sent before them. Then it counts what was expected and
never came, and what came twice, and writes the report as JSON and as a
picture (``load_tests/report.py``).

    touchstream load --rate 5000 --duration 60s --out out/load
    touchstream load --ramp --start-rate 2000 --p99-bound 100ms
    touchstream load --scenario kill-engine --rate 3000 --duration 40s
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from load_tests.traffic import TrafficSettings, parse_mix
from stream.config import parse_duration
from stream.errors import UsageError

log = logging.getLogger(__name__)

SCENARIOS = ("none", "kill-engine", "restart-redis", "slow-subscriber")
# Redis mode's default partition count; SQLite mode has one partition.
REDIS_PARTITIONS = 4


@dataclass(frozen=True)
class Step:
    """`rate` events per second from `start_s` into the run."""

    start_s: float
    rate: float


@dataclass(frozen=True)
class LoadOptions:
    rate: float
    duration_s: float
    traffic: TrafficSettings
    batch_size: int = 500
    connections: int = 2
    max_in_flight: int = 256
    scenario: str = "none"
    fault_at_s: float | None = None
    redis: bool = False
    poll_interval_ms: int = 50
    steps: tuple[Step, ...] = ()
    ramp: bool = False
    p99_bound_ms: float = 100.0
    drain_timeout_s: float = 120.0
    out: Path = Path("out/load")
    data: Path | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--rate",
        type=_positive_float,
        default=5000.0,
        metavar="EVENTS_PER_S",
        help="the constant arrival rate (default 5000 events/s)",
    )
    add(
        "--duration",
        default="60s",
        metavar="DURATION",
        help="how long the load runs (default 60s; 90s, 2m, ...)",
    )
    add(
        "--steps",
        metavar="RATE,RATE,...",
        help="stepped rates instead of --rate: each for --step-duration",
    )
    add(
        "--step-duration",
        default="20s",
        metavar="DURATION",
        help="the length of each step of --steps and --ramp (default 20s)",
    )
    add(
        "--ramp",
        action="store_true",
        help="raise the rate by --ramp-factor each step from --start-rate until "
        "the end-to-end p99 passes --p99-bound; report the highest rate held",
    )
    add(
        "--start-rate",
        type=_positive_float,
        default=2000.0,
        metavar="EVENTS_PER_S",
        help="the ramp's first rate (default 2000)",
    )
    add(
        "--ramp-factor",
        type=float,
        default=1.5,
        metavar="F",
        help="each ramp step's rate over the last, above 1 (default 1.5)",
    )
    add(
        "--max-steps",
        type=_positive_int,
        default=12,
        metavar="N",
        help="ramp steps at most (default 12)",
    )
    add(
        "--p99-bound",
        default="100ms",
        metavar="DURATION",
        help="the end-to-end p99 a ramp step must stay under (default 100ms)",
    )
    add(
        "--customers",
        type=_positive_int,
        default=20_000,
        metavar="N",
        help="customers in the traffic (default 20000)",
    )
    add(
        "--zipf",
        type=float,
        default=1.1,
        metavar="S",
        help="customer popularity: rank k drawn with weight 1/k^S (default 1.1)",
    )
    add(
        "--quiet-share",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="customers who go quiet for two silence windows in four (default 0.1)",
    )
    add(
        "--order-share",
        type=float,
        default=0.15,
        metavar="SHARE",
        help="orders among the events; the rest are engagement (default 0.15)",
    )
    add(
        "--channel-mix",
        type=_channel_mix,
        metavar="CHANNEL=WEIGHT,...",
        help="the channels' weights (default wechat=25,email=15,meeting=5,"
        "phone=10,app=15,web=15,livestream=5,store=10)",
    )
    add(
        "--batch-size",
        type=_positive_int,
        default=500,
        metavar="EVENTS",
        help="events per PublishBatch request (default 500)",
    )
    add(
        "--connections",
        type=_positive_int,
        default=2,
        metavar="N",
        help="gRPC connections, one upstream integration (token) each",
    )
    add(
        "--max-in-flight",
        type=_positive_int,
        default=256,
        metavar="BATCHES",
        help="requests waiting at once; a batch due beyond it is dropped",
    )
    add("--seed", type=int, default=1, help="the same seed makes the same traffic")
    add(
        "--silence-window",
        default="10s",
        metavar="DURATION",
        help="the server's silence window (default 10s)",
    )
    add(
        "--allowed-lateness",
        default="2s",
        metavar="DURATION",
        help="the server's clock.allowed_lateness (default 2s)",
    )
    add(
        "--poll-interval",
        default="50ms",
        metavar="DURATION",
        help="the server's poll interval (server.poll_interval, default 50ms)",
    )
    add(
        "--scenario",
        choices=SCENARIOS,
        default="none",
        help="a fault during the run (default none)",
    )
    add(
        "--fault-at",
        metavar="DURATION",
        help="when the fault happens (default: half way)",
    )
    add(
        "--redis",
        action="store_true",
        help="run the server in Redis mode on a redis-server of its own",
    )
    add(
        "--drain-timeout",
        default="120s",
        metavar="DURATION",
        help="how long to wait after the load for the engine to catch up "
        "(default 120s)",
    )
    add(
        "--data",
        type=Path,
        metavar="DIR",
        help="keep the server's data folder here (default: a scratch folder, "
        "removed at the end); it must not exist",
    )
    add(
        "--out",
        type=Path,
        default=Path("out/load"),
        metavar="DIR",
        help="where report.json and report.png go (default out/load)",
    )


MAX_RATE = 10_000_000.0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_RATE:
        msg = f"expected a number above 0 and at most {MAX_RATE:,.0f} - got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _channel_mix(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as ex:
        raise argparse.ArgumentTypeError(str(ex)) from None


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        msg = f"expected a whole number of 1 or more - got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _duration_s(text: str, option: str) -> float:
    try:
        return parse_duration(text) / 1000
    except ValueError as ex:
        msg = f"{option}: {ex}"
        raise UsageError(msg) from None


def options_from(args: argparse.Namespace) -> LoadOptions:
    for name in ("quiet_share", "order_share"):
        share = getattr(args, name)
        if not 0 <= share <= 1:
            flag = "--" + name.replace("_", "-")
            msg = f"{flag}: expected a share from 0 to 1 - got {share}"
            raise UsageError(msg)
    if args.data is not None and args.data.exists():
        msg = f"--data {args.data} exists; expected a new folder"
        raise UsageError(msg)
    if not math.isfinite(args.zipf) or args.zipf < 0:
        msg = f"--zipf: expected a finite exponent of 0 or more - got {args.zipf}"
        raise UsageError(msg)
    if args.ramp and not (math.isfinite(args.ramp_factor) and args.ramp_factor > 1):
        msg = f"--ramp-factor: expected a number above 1 - got {args.ramp_factor}"
        raise UsageError(msg)
    if args.ramp and args.steps:
        msg = "--ramp and --steps each set the rates: give one of them"
        raise UsageError(msg)
    if args.out.exists() and not args.out.is_dir():
        msg = f"--out {args.out} is a file; expected a folder (made if missing)"
        raise UsageError(msg)
    if args.scenario == "restart-redis" and not args.redis:
        msg = "--scenario restart-redis needs --redis"
        raise UsageError(msg)
    traffic = TrafficSettings(
        customers=args.customers,
        zipf_exponent=args.zipf,
        quiet_share=args.quiet_share,
        order_share=args.order_share,
        silence_window_ms=int(
            _duration_s(args.silence_window, "--silence-window") * 1000
        ),
        allowed_lateness_ms=int(
            _duration_s(args.allowed_lateness, "--allowed-lateness") * 1000
        ),
        seed=args.seed,
    )
    if args.channel_mix is not None:
        traffic = replace(traffic, channel_mix=args.channel_mix)
    step_s = _duration_s(args.step_duration, "--step-duration")
    duration_s = _duration_s(args.duration, "--duration")
    steps: tuple[Step, ...] = ()
    if args.ramp:
        rates = [args.start_rate * args.ramp_factor**n for n in range(args.max_steps)]
        steps = tuple(Step(n * step_s, rate) for n, rate in enumerate(rates))
        duration_s = step_s * len(steps)
    elif args.steps:
        try:
            rates = [float(part) for part in args.steps.split(",")]
        except ValueError:
            rates = []
        if not rates or not all(rate > 0 for rate in rates):
            msg = f"--steps: expected rates above 0, as 1000,2000 - got {args.steps!r}"
            raise UsageError(msg)
        steps = tuple(Step(n * step_s, rate) for n, rate in enumerate(rates))
        duration_s = step_s * len(steps)
    if not duration_s > 0:
        msg = "--duration: expected more than 0s"
        raise UsageError(msg)
    fault_at_s = None
    if args.fault_at is not None:
        if args.scenario not in ("kill-engine", "restart-redis"):
            msg = "--fault-at needs --scenario kill-engine or restart-redis"
            raise UsageError(msg)
        fault_at_s = _duration_s(args.fault_at, "--fault-at")
        if not fault_at_s < duration_s:
            msg = (
                f"--fault-at {args.fault_at} is not within the run "
                f"({duration_s:g} s); expected less"
            )
            raise UsageError(msg)
    silence_ms = int(_duration_s(args.silence_window, "--silence-window") * 1000)
    poll_ms = int(_duration_s(args.poll_interval, "--poll-interval") * 1000)
    bound_ms = _duration_s(args.p99_bound, "--p99-bound") * 1000
    for flag, value in (
        ("--silence-window", silence_ms),
        ("--poll-interval", poll_ms),
        ("--p99-bound", bound_ms),
    ):
        if not value > 0:
            msg = f"{flag}: expected more than 0s"
            raise UsageError(msg)
    return LoadOptions(
        rate=args.rate,
        duration_s=duration_s,
        traffic=traffic,
        batch_size=args.batch_size,
        connections=args.connections,
        max_in_flight=args.max_in_flight,
        scenario=args.scenario,
        fault_at_s=fault_at_s,
        redis=args.redis,
        poll_interval_ms=poll_ms,
        steps=steps,
        ramp=args.ramp,
        p99_bound_ms=bound_ms,
        out=args.out,
        data=args.data,
        drain_timeout_s=_duration_s(args.drain_timeout, "--drain-timeout"),
    )


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    # The load machinery (gRPC, uvloop, HdrHistogram, matplotlib) is
    # imported only when a load runs, so that other commands start fast.
    from load_tests import report
    from load_tests.runner import run_load

    result = run_load(options)
    body = report.build(result)
    paths = report.write(result, body, options.out)
    print(report.summary(result, body))
    print(f"report: {paths[0]}  picture: {paths[1]}")
    return 0
