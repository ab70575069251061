"""A seeded generator of realistic touchpoint events.

Eight channels, a skewed customer popularity (a few customers make most of
the traffic: a power of a uniform draw, or a Zipf law by rank), orders mixed
with engagement and service events, both directions, and arrivals out of
order within a bound. The same seed gives the same events.

    python -m load_tests.generate --events 100000 --customers 5000 out.jsonl
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from operators.events import CHANNELS

# (kind, weight, direction or None for either)
KIND_MIX = (
    ("message", 30, None),
    ("content_view", 18, "inbound"),
    ("visit", 8, "inbound"),
    ("call", 8, None),
    ("inquiry", 6, "inbound"),
    ("order", 15, "inbound"),
    ("meeting", 3, "outbound"),
    ("quote_sent", 3, "outbound"),
    ("ticket_opened", 2, "inbound"),
    ("ticket_resolved", 2, "outbound"),
    ("complaint", 1, "inbound"),
    ("nps", 2, "inbound"),
    ("refund", 1, "inbound"),
    ("stage_change", 1, "outbound"),
)
CHANNEL_WEIGHTS = (25, 15, 5, 10, 15, 15, 5, 10)
SEGMENTS = ("smb", "mid", "enterprise")


def generate_events(
    count: int,
    customers: int,
    *,
    seed: int = 1,
    start_ms: int = 1_704_067_200_000,
    mean_gap_ms: int = 2_000,
    disorder_ms: int = 5_000,
    tenant: str = "demo",
    zipf_exponent: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield `count` events over `customers` customers.

    With `zipf_exponent` s, customer k (from 0) is picked with a weight of
    1 / (k + 1) ** s; without it, as a power of a uniform draw.
    `disorder_ms` bounds how far an event's time lags the arrival clock.
    """
    rng = random.Random(seed)
    cumulative: list[float] = []
    if zipf_exponent is not None:
        cumulative = list(
            itertools.accumulate((k + 1) ** -zipf_exponent for k in range(customers))
        )
    kinds = [kind for kind, _, _ in KIND_MIX]
    kind_weights = [weight for _, weight, _ in KIND_MIX]
    directions = {kind: direction for kind, _, direction in KIND_MIX}
    clock_ms = start_ms

    for index in range(count):
        clock_ms += int(rng.expovariate(1 / mean_gap_ms))
        if cumulative:
            draw = rng.random() * cumulative[-1]
            customer = min(bisect.bisect(cumulative, draw), customers - 1)
        else:
            # A power of a uniform draw: low ids are far more popular.
            customer = int(customers * rng.random() ** 3)
        kind = rng.choices(kinds, kind_weights)[0]
        direction = directions[kind] or rng.choice(("inbound", "outbound"))
        event: dict[str, Any] = {
            "event_id": f"g{seed}-{index}",
            "tenant": tenant,
            "customer_id": f"C{customer:07d}",
            "source": rng.choice(("erp", "crm", "chat", "web")),
            "channel": rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0],
            "kind": kind,
            "direction": direction,
            "ts": max(start_ms, clock_ms - rng.randrange(disorder_ms + 1)),
        }
        if kind in ("order", "refund"):
            event["amount"] = round(rng.lognormvariate(3.5, 0.8), 2)
        if kind == "nps":
            event["score"] = rng.randrange(11)
        if rng.random() < 0.02:
            event["segment"] = rng.choice(SEGMENTS)
        yield event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", type=Path, help="the file to write")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=("jsonl", "msgpack"), default="jsonl")
    parser.add_argument(
        "--zipf",
        type=float,
        metavar="S",
        help="pick customers by a Zipf law of exponent S (default: a power law)",
    )
    args = parser.parse_args(argv)

    encode = msgspec.json.encode if args.format == "jsonl" else msgspec.msgpack.encode
    suffix = b"\n" if args.format == "jsonl" else b""
    with args.out.open("wb") as file:
        for event in generate_events(
            args.events, args.customers, seed=args.seed, zipf_exponent=args.zipf
        ):
            file.write(encode(event) + suffix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
