"""Dedupe by event id, within a span of event time.

An event is identified by (tenant, source, event_id, customer_id). A second
record with the same identity and the same payload is a duplicate (counted,
not applied); with a different payload it is a conflict (rejected). An
identity is remembered for ``span_ms`` of event time after the event's own
time, then forgotten.
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
        # identity -> (payload digest, position of the first record)
        self._seen: dict[Identity, tuple[int, int]] = {}
        # (expiry time, identity) in arrival order, for forgetting
        self._expiry: deque[tuple[int, Identity]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, touch: Touch) -> tuple[Verdict, int]:
        """Classify a touch; return the verdict and the first position."""
        identity = (touch.tenant, touch.source, touch.event_id, touch.customer_id)
        seen = self._seen.get(identity)
        if seen is None:
            self._seen[identity] = (touch.digest, touch.position)
            self._expiry.append((touch.ts_ms + self.span_ms, identity))
            return "new", touch.position
        digest, first_position = seen
        if digest == touch.digest:
            return "duplicate", first_position
        return "conflict", first_position

    def forget_before(self, now_ms: int) -> None:
        """Forget identities whose span ended before event time `now_ms`.

        Expiry times are nearly ordered (events arrive nearly in time order);
        one that is out of order is kept a little longer, never forgotten
        early.
        """
        expiry = self._expiry
        while expiry and expiry[0][0] < now_ms:
            _, identity = expiry.popleft()
            self._seen.pop(identity, None)

    def snapshot(self) -> list[Any]:
        return [
            [expires, list(identity), *self._seen[identity]]
            for expires, identity in self._expiry
            if identity in self._seen
        ]

    def restore(self, rows: list[Any]) -> None:
        self._seen.clear()
        self._expiry.clear()
        for expires, identity, digest, position in rows:
            key: Identity = tuple(identity)
            self._seen[key] = (digest, position)
            self._expiry.append((expires, key))
