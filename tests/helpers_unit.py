"""Helpers shared by the unit tests of the operators and the native table."""

from __future__ import annotations

from operators.events import Touch

DAY_MS = 86_400_000

# Codes written out by hand (positions in operators.events.KINDS / CHANNELS),
# so that a test fails if the code tables move.
MESSAGE = 0
STORE = 7


def make_touch(
    *,
    ts_ms: int,
    kind: int = MESSAGE,
    channel: int = STORE,
    inbound: bool = True,
    amount: float = 0.0,
    tenant: str = "acme",
    customer_id: str = "c1",
    source: str = "erp",
    event_id: str = "e1",
    digest: int = 0,
    position: int = 0,
    segment: str | None = None,
    score: int = -1,
    day: int | None = None,
) -> Touch:
    """A touch as the decoder makes it; `day` defaults to the UTC day."""
    return Touch(
        position=position,
        ts_ms=ts_ms,
        day=ts_ms // DAY_MS if day is None else day,
        tenant=tenant,
        customer_id=customer_id,
        source=source,
        event_id=event_id,
        digest=digest,
        channel=channel,
        kind=kind,
        inbound=inbound,
        amount=amount,
        segment=segment,
        score=score,
    )


def generated_touches(count: int, customers: int, seed: int = 1) -> list[Touch]:
    """Touches of the load generator's stream, in event-time order."""
    from load_tests.generate import generate_events
    from operators.events import CHANNEL_CODES, KIND_CODES

    touches = [
        make_touch(
            position=position,
            ts_ms=event["ts"],
            kind=KIND_CODES[event["kind"]],
            channel=CHANNEL_CODES[event["channel"]],
            inbound=event["direction"] == "inbound",
            amount=event.get("amount", 0.0),
            tenant=event["tenant"],
            customer_id=event["customer_id"],
            source=event["source"],
            event_id=event["event_id"],
            segment=event.get("segment"),
            score=event.get("score", -1),
        )
        for position, event in enumerate(
            generate_events(count, customers, seed=seed, mean_gap_ms=60_000)
        )
    ]
    touches.sort(key=lambda touch: (touch.ts_ms, touch.position))
    return touches
