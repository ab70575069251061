"""The live traffic of ``touchstream load``: events created at the moment
they are due, as JSON lines ready for ``Ingest.PublishBatch``.

Customers are picked by a Zipf law of their rank, so a few make most of
the traffic. A share of them go quiet on a schedule of their own: quiet for
two silence windows out of every four, so the engine sees them fall
silent, and the first event after a quiet spell is an inbound message on
time, which must end the silence (``silence_ended``). Those returns are
the interventions a run can expect for certain; the others (the long tail
that the Zipf law leaves silent) come as they come.

An event's id carries the wall-clock microsecond it was due,
``ld<seed>.<due_us>.<seq>``: a subscriber reads the end-to-end latency of
the intervention an event triggers from its ``trigger_event_id`` alone.
Event times lag the due time by up to half the allowed lateness, so events
arrive out of order but never late; a return is stamped with its due time.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from load_tests.generate import CHANNEL_WEIGHTS, KIND_MIX
from operators.events import CHANNELS

TENANT = "load"
# Engagement, service and NPS kinds and their direction (None: either), by
# weight: the offline generator's mix less orders and refunds, which
# --order-share sets.
ENGAGEMENT = tuple(kind for kind in KIND_MIX if kind[0] not in ("order", "refund"))
DEFAULT_CHANNEL_MIX = dict(zip(CHANNELS, CHANNEL_WEIGHTS, strict=True))
SOURCES = ("wecom", "exchange", "zoom", "pbx", "app", "web", "live", "pos")
# A quiet customer is quiet for QUIET_WINDOWS silence windows of every
# PERIOD_WINDOWS: long enough for its silence to fire, whatever the phase.
PERIOD_WINDOWS = 4
QUIET_WINDOWS = 2


def parse_mix(text: str) -> dict[str, float]:
    """``wechat=25,email=15,...``: a weight for each channel named (the
    others get none)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or name not in CHANNELS:
            msg = (
                f"expected CHANNEL=WEIGHT with a channel of {', '.join(CHANNELS)}"
                f" - got {part.strip()!r}"
            )
            raise ValueError(msg)
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not 0 <= value < math.inf:
            msg = f"expected a finite weight of 0 or more for {name} - got {weight!r}"
            raise ValueError(msg) from None
        if name in mix:
            msg = f"expected each channel once - got {name} twice"
            raise ValueError(msg)
        mix[name] = value
    if not sum(mix.values()) > 0:
        msg = "expected at least one channel with a weight above 0"
        raise ValueError(msg)
    return mix


@dataclass(frozen=True)
class TrafficSettings:
    customers: int = 20_000
    zipf_exponent: float = 1.1
    quiet_share: float = 0.1
    order_share: float = 0.15
    channel_mix: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_CHANNEL_MIX)
    )
    silence_window_ms: int = 10_000
    allowed_lateness_ms: int = 2_000
    seed: int = 1


class Traffic:
    """Makes the events due at a given wall-clock time; remembers the
    returns it made, by event id, until they are claimed."""

    def __init__(self, settings: TrafficSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        count = settings.customers
        self.cumulative = list(
            itertools.accumulate(
                (rank + 1) ** -settings.zipf_exponent for rank in range(count)
            )
        )
        # Every `quiet_every`-th customer by rank is a quiet one, so that
        # quiet customers are found among the popular and the rare alike.
        share = settings.quiet_share
        self.quiet_every = round(1 / share) if share > 0 else 0
        self.period_ms = PERIOD_WINDOWS * settings.silence_window_ms
        self.quiet_ms = QUIET_WINDOWS * settings.silence_window_ms
        self.last_phase = [-1] * count
        self.had_inbound = bytearray(count)
        self.ids = [f"C{rank:07d}" for rank in range(count)]
        channels = [name for name, weight in settings.channel_mix.items() if weight]
        self.channels = channels
        self.channel_weights = list(
            itertools.accumulate(settings.channel_mix[name] for name in channels)
        )
        self.kinds = [kind for kind, _, _ in ENGAGEMENT]
        self.kind_weights = list(
            itertools.accumulate(weight for _, weight, _ in ENGAGEMENT)
        )
        self.directions = [direction for _, _, direction in ENGAGEMENT]
        self.seq = 0
        self.prefix = f"ld{settings.seed}"

    def is_quiet(self, rank: int) -> bool:
        return self.quiet_every > 0 and rank % self.quiet_every == 0

    def _offset_ms(self, rank: int) -> int:
        return zlib.crc32(self.ids[rank].encode()) % self.period_ms

    def _phase(self, rank: int, due_ms: int) -> tuple[int, bool]:
        """A quiet customer's period number at `due_ms`, and whether it is
        quiet then."""
        since = due_ms - self._offset_ms(rank)
        return since // self.period_ms, since % self.period_ms < self.quiet_ms

    def _customer(self, due_ms: int) -> int:
        draws = self.cumulative
        for _ in range(8):
            rank = min(
                bisect.bisect(draws, self.rng.random() * draws[-1]), len(draws) - 1
            )
            if not self.is_quiet(rank) or not self._phase(rank, due_ms)[1]:
                return rank
        # Eight quiet draws in a row: take the next customer, never quiet.
        return rank + 1 if rank + 1 < len(draws) else rank - 1

    def batch(
        self, count: int, due_us: int, returns: dict[str, int]
    ) -> tuple[bytes, list[str]]:
        """`count` events due at `due_us` (wall clock, microseconds), as JSON
        lines, and their ids; returns made are added to `returns` (event
        id to due time)."""
        rng = self.rng
        settings = self.settings
        due_ms = due_us // 1000
        jitter_ms = settings.allowed_lateness_ms // 2
        lines: list[str] = []
        ids: list[str] = []
        for _ in range(count):
            rank = self._customer(due_ms)
            self.seq += 1
            event_id = f"{self.prefix}.{due_us}.{self.seq}"
            ts_ms = due_ms - rng.randrange(jitter_ms + 1)
            amount = ""
            if self.is_quiet(rank):
                phase, _ = self._phase(rank, due_ms)
                returning = phase > self.last_phase[rank] >= 0
                self.last_phase[rank] = phase
                if returning and self.had_inbound[rank]:
                    returns[event_id] = due_us
                    kind, direction, ts_ms = "message", "inbound", due_ms
                    channel = self.channels[0]
                    lines.append(
                        self._line(event_id, rank, channel, kind, direction, ts_ms)
                    )
                    ids.append(event_id)
                    continue
            channel = self.channels[
                bisect.bisect(
                    self.channel_weights, rng.random() * self.channel_weights[-1]
                )
            ]
            if rng.random() < settings.order_share:
                kind, direction = "order", "inbound"
                amount = f',"amount":{rng.lognormvariate(3.5, 0.8):.2f}'
            else:
                pick = bisect.bisect(
                    self.kind_weights, rng.random() * self.kind_weights[-1]
                )
                kind = self.kinds[pick]
                direction = self.directions[pick] or rng.choice(("inbound", "outbound"))
                if kind == "nps":
                    amount = f',"score":{rng.randrange(11)}'
            lines.append(
                self._line(event_id, rank, channel, kind, direction, ts_ms, amount)
            )
            ids.append(event_id)
        return ("\n".join(lines) + "\n").encode(), ids

    def _line(
        self,
        event_id: str,
        rank: int,
        channel: str,
        kind: str,
        direction: str,
        ts_ms: int,
        extra: str = "",
    ) -> str:
        if direction == "inbound":
            self.had_inbound[rank] = 1
        source = SOURCES[CHANNELS.index(channel)]
        return (
            f'{{"event_id":"{event_id}","tenant":"{TENANT}",'
            f'"customer_id":"{self.ids[rank]}","source":"{source}",'
            f'"channel":"{channel}","kind":"{kind}","direction":"{direction}",'
            f'"ts":{ts_ms}{extra}}}'
        )


def due_us_of(event_id: str) -> int | None:
    """The wall-clock microsecond an event of this traffic was due, from its
    id; None for an id of another kind."""
    parts = event_id.split(".")
    if len(parts) != 3 or not parts[0].startswith("ld"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None
