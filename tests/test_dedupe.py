"""Dedupe by event identity within a span of event time."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from operators.dedupe import Deduper
from tests.helpers_unit import make_touch

SPAN_MS = 1_000
T0 = 852_076_800_000  # 1997-01-01T00:00:00Z


def touch(position: int, digest: int = 1, ts_ms: int = T0, **fields: Any) -> Any:
    return make_touch(position=position, digest=digest, ts_ms=ts_ms, **fields)


def test_a_first_sighting_is_new_at_its_own_position() -> None:
    deduper = Deduper(SPAN_MS)

    assert deduper.check(touch(position=4)) == ("new", 4)
    assert len(deduper) == 1


def test_the_same_identity_and_payload_again_is_a_duplicate_of_the_first() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=4))

    assert deduper.check(touch(position=9)) == ("duplicate", 4)
    assert deduper.check(touch(position=12)) == ("duplicate", 4)
    assert len(deduper) == 1


def test_the_same_identity_with_another_payload_is_a_conflict() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=4, digest=1))

    assert deduper.check(touch(position=9, digest=2)) == ("conflict", 4)
    # The conflicting record is not remembered in place of the first.
    assert deduper.check(touch(position=10, digest=1)) == ("duplicate", 4)


@pytest.mark.parametrize(
    "other",
    [
        {"customer_id": "c2"},
        {"source": "crm"},
        {"tenant": "beta"},
        {"event_id": "e2"},
    ],
    ids=["customer_id", "source", "tenant", "event_id"],
)
def test_the_identity_includes_tenant_source_customer_and_event_id(
    other: dict[str, str],
) -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, digest=1))

    assert deduper.check(touch(position=2, digest=2, **other)) == ("new", 2)
    assert len(deduper) == 2


def test_an_identity_is_forgotten_only_after_its_span_of_event_time() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, ts_ms=T0))

    deduper.forget_before(T0 + SPAN_MS)
    assert deduper.check(touch(position=2)) == ("duplicate", 1)

    deduper.forget_before(T0 + SPAN_MS + 1)
    assert len(deduper) == 0
    assert deduper.check(touch(position=3)) == ("new", 3)


def test_an_out_of_order_identity_is_kept_longer_never_forgotten_early() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, ts_ms=T0 + 500, event_id="late-first"))
    deduper.check(touch(position=2, ts_ms=T0, event_id="early-second"))

    # Past the early one's span, but not the one queued before it.
    deduper.forget_before(T0 + SPAN_MS + 1)
    assert len(deduper) == 2

    deduper.forget_before(T0 + 500 + SPAN_MS + 1)
    assert len(deduper) == 0


def test_a_snapshot_restores_into_a_deduper_that_answers_the_same() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, ts_ms=T0, event_id="a"))
    deduper.check(touch(position=2, ts_ms=T0 + 600, event_id="b", digest=7))
    deduper.check(touch(position=3, ts_ms=T0 + 600, event_id="a"))  # duplicate
    # Through MessagePack, as a key-group snapshot stores it.
    rows = msgspec.msgpack.decode(msgspec.msgpack.encode(deduper.snapshot()))

    restored = Deduper(SPAN_MS)
    restored.restore(rows)

    assert len(restored) == 2
    assert restored.check(touch(position=8, event_id="a")) == ("duplicate", 1)
    assert restored.check(touch(position=9, event_id="b", digest=8)) == (
        "conflict",
        2,
    )
    # Expiry times come back too: "a" goes first, then "b".
    restored.forget_before(T0 + SPAN_MS + 1)
    assert restored.check(touch(position=10, event_id="a")) == ("new", 10)
    assert restored.check(touch(position=11, event_id="b", digest=7)) == (
        "duplicate",
        2,
    )


def test_a_snapshot_leaves_out_what_was_forgotten() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, ts_ms=T0, event_id="old"))
    deduper.check(touch(position=2, ts_ms=T0 + 5 * SPAN_MS, event_id="new"))
    deduper.forget_before(T0 + SPAN_MS + 1)

    snapshot = deduper.snapshot()

    assert snapshot == [[T0 + 6 * SPAN_MS, ["acme", "erp", "new", "c1"], 1, 2]]


def test_restore_replaces_what_the_deduper_held() -> None:
    deduper = Deduper(SPAN_MS)
    deduper.check(touch(position=1, event_id="kept-before"))

    deduper.restore([])

    assert len(deduper) == 0
    assert deduper.check(touch(position=2, event_id="kept-before")) == ("new", 2)
