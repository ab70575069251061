"""Dedupe by event id, within a span of event time.

An event is identified by (tenant, source, event_id, customer_id). A second
record with the same identity, no later than ``span_ms`` of event time after
the first, is a duplicate (counted, not applied) when its payload is the
same, and a conflict (rejected) when it differs; a later one is a new event.
Because that is judged on the two events' own times, the verdict never
depends on batching or on when memory is freed.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

from operators.events import Touch

Verdict = Literal["new", "duplicate", "conflict"]
Identity = tuple[str, str, str, str]


class Deduper:
    """Remembers recent event identities of one key group."""

    def __init__(self, span_ms: int) -> None:
        self.span_ms = span_ms
        # identity -> (payload digest, position of the first record, expiry)
        self._seen: dict[Identity, tuple[int, int, int]] = {}
        # (expiry time, identity) in arrival order, for forgetting
        self._expiry: deque[tuple[int, Identity]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, touch: Touch) -> tuple[Verdict, int]:
        """Classify a touch; return the verdict and the first position."""
        identity = (touch.tenant, touch.source, touch.event_id, touch.customer_id)
        seen = self._seen.get(identity)
        if seen is None or touch.ts_ms > seen[2]:
            expires = touch.ts_ms + self.span_ms
            self._seen[identity] = (touch.digest, touch.position, expires)
            self._expiry.append((expires, identity))
            return "new", touch.position
        digest, first_position, _ = seen
        if digest == touch.digest:
            return "duplicate", first_position
        return "conflict", first_position

    def forget_before(self, now_ms: int) -> None:
        """Free identities whose span ended before event time `now_ms`.

        Only memory is at stake: :meth:`check` already ignores an identity
        whose span has ended. Expiry times are nearly ordered (events arrive
        nearly in time order); one out of order is kept a little longer.
        """
        expiry = self._expiry
        seen = self._seen
        while expiry and expiry[0][0] < now_ms:
            expires, identity = expiry.popleft()
            entry = seen.get(identity)
            if entry is not None and entry[2] == expires:
                del seen[identity]

    def snapshot(self) -> list[Any]:
        return [
            [expires, list(identity), digest, position]
            for expires, identity in self._expiry
            for digest, position, current in [self._seen.get(identity, (0, 0, -1))]
            if current == expires
        ]

    def restore(self, rows: list[Any]) -> None:
        self._seen.clear()
        self._expiry.clear()
        for expires, identity, digest, position in rows:
            key: Identity = tuple(identity)
            self._seen[key] = (digest, position, expires)
            self._expiry.append((expires, key))
