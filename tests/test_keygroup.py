"""The key-group actor: dedupe, apply, watermark, end-of-input report, snapshot.

The actor takes its table from ``native.load("table")`` at import (the
compiled one where it is built, as in CI); one test swaps in the pure-Python
twin and checks that the customers come out the same.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import native
import native.table_py
import operators.keygroup
from operators.keygroup import (
    SNAPSHOT_FORMAT,
    KeyGroupActor,
    KeyGroupBatch,
    KeyGroupSettings,
    Report,
)
from tests.helpers_unit import make_touch

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# 1997-01-01 is day 9862 (27 years of 365 days and the 7 leap days 1972-1996).
JAN_1_1997 = 9862
ORDER, MESSAGE = 6, 0
EMAIL, STORE = 1, 7


def at(day: int, hour: int = 0) -> int:
    """Epoch ms of `hour`:00 UTC, `day` days after 1997-01-01."""
    return (JAN_1_1997 + day) * DAY_MS + hour * HOUR_MS


def order(
    position: int, ts_ms: int, amount: float, event_id: str, **fields: Any
) -> Any:
    # The digest stands for the payload: equal payloads, equal digests.
    digest = fields.pop("digest", int(amount * 100))
    return make_touch(
        position=position,
        ts_ms=ts_ms,
        kind=ORDER,
        amount=amount,
        event_id=event_id,
        digest=digest,
        **fields,
    )


def batch(
    partition: int, touches: list[Any], high_ms: int, final: bool = False
) -> KeyGroupBatch:
    return KeyGroupBatch(partition, touches, high_ms, final)


def customers(actor: KeyGroupActor) -> list[dict[str, Any]]:
    reports = actor.on_eof()
    assert len(reports) == 1
    return reports[0].customers


def history() -> list[list[KeyGroupBatch]]:
    """Calls to on_batch: two partitions, two tenants, a duplicate, a conflict."""
    return [
        [
            batch(0, [order(1, at(0), 10.0, "o1")], at(0)),
            batch(1, [order(1, at(0, 9), 5.0, "b1", tenant="beta")], at(0, 9)),
        ],
        [
            batch(0, [order(2, at(0), 10.0, "o1")], at(1)),  # duplicate
            batch(1, [order(2, at(30, 12), 20.0, "o2")], at(30, 12)),
        ],
        [
            batch(0, [order(3, at(2), 99.0, "o1")], at(2)),  # conflict
            batch(
                1,
                [
                    make_touch(
                        position=3,
                        ts_ms=at(40),
                        kind=MESSAGE,
                        channel=EMAIL,
                        inbound=False,
                        event_id="m1",
                    )
                ],
                at(40),
            ),
        ],
        [batch(0, [], at(45), final=True), batch(1, [], at(40), final=True)],
    ]


def run(actor: KeyGroupActor, calls: list[list[KeyGroupBatch]]) -> list[Report]:
    reports = []
    for call in calls:
        reports += actor.on_batch(call)
    return reports


# Dedupe and conflicts


def test_a_duplicate_is_counted_once_and_applied_once() -> None:
    actor = KeyGroupSettings(partitions=1).build()

    first = actor.on_batch(
        [batch(0, [order(1, at(0), 10.0, "o1"), order(2, at(0), 10.0, "o1")], at(0))]
    )
    second = actor.on_batch([batch(0, [order(3, at(0), 10.0, "o1")], at(0))])

    assert (first[0].counts.applied, first[0].counts.duplicates) == (1, 1)
    assert (second[0].counts.applied, second[0].counts.duplicates) == (0, 1)
    (customer,) = customers(actor)
    assert customer["orders"] == 1
    assert customer["total_spend"] == 10.0


def test_a_conflict_is_rejected_naming_the_first_line() -> None:
    actor = KeyGroupSettings(partitions=1).build()
    actor.on_batch([batch(0, [order(7, at(0), 10.0, "o1")], at(0))])

    (report,) = actor.on_batch([batch(0, [order(12, at(0), 11.0, "o1")], at(0))])

    assert report.counts.applied == 0
    assert report.counts.rejected == {"conflict": 1}
    (rejection,) = report.rejections
    assert rejection.code == "conflict"
    assert rejection.position == 12
    assert rejection.event_id == "o1"
    assert "'o1'" in rejection.reason
    assert "`erp`" in rejection.reason
    assert "first seen at line 7" in rejection.reason
    assert customers(actor)[0]["total_spend"] == 10.0


def test_the_conflict_reason_uses_the_configured_position_name() -> None:
    actor = KeyGroupSettings(partitions=1, position_name="offset").build()
    actor.on_batch([batch(0, [order(7, at(0), 10.0, "o1")], at(0))])

    (report,) = actor.on_batch([batch(0, [order(8, at(0), 11.0, "o1")], at(0))])

    assert "first seen at offset 7" in report.rejections[0].reason


def test_a_batch_with_nothing_applied_reports_nothing() -> None:
    actor = KeyGroupSettings(partitions=1).build()

    assert actor.on_batch([batch(0, [], at(0))]) == []


def test_an_event_id_is_fresh_again_once_the_watermark_passes_its_span() -> None:
    actor = KeyGroupSettings(partitions=1, dedupe_span_ms=DAY_MS).build()
    actor.on_batch([batch(0, [order(1, at(0), 10.0, "o1")], at(0))])
    # The watermark moves past 1997-01-02 00:00, the end of the id's span.
    actor.on_batch([batch(0, [], at(1) + 1)])

    (report,) = actor.on_batch([batch(0, [order(2, at(0), 10.0, "o1")], at(1) + 1)])

    assert (report.counts.applied, report.counts.duplicates) == (1, 0)


# Watermark


def test_the_watermark_waits_for_every_partition_then_is_the_lowest_high() -> None:
    actor = KeyGroupSettings(partitions=3).build()
    assert actor.watermark_ms == -1

    actor.on_batch([batch(0, [], 300), batch(2, [], 100)])
    assert actor.watermark_ms == -1  # partition 1 has not reported

    actor.on_batch([batch(1, [], 200)])
    assert actor.watermark_ms == 100

    actor.on_batch([batch(2, [], 500)])
    assert actor.watermark_ms == 200


def test_a_partitions_high_time_never_moves_back() -> None:
    actor = KeyGroupSettings(partitions=2).build()
    actor.on_batch([batch(0, [], 300), batch(1, [], 400)])

    actor.on_batch([batch(0, [], 100)])

    assert actor.watermark_ms == 300


def test_a_partition_that_reported_without_events_holds_the_watermark() -> None:
    actor = KeyGroupSettings(partitions=2).build()

    actor.on_batch([batch(0, [], 300), batch(1, [], -1)])

    assert actor.watermark_ms == -1
    assert actor.partition_high_ms == {0: 300, 1: -1}


# End of input


def test_at_the_end_customers_are_evaluated_at_their_tenants_as_of_time() -> None:
    # 1997-01-01 to 1997-08-02: 31+28+31+30+31+30+31 = 212 days to August 1.
    as_of = at(213)
    actor = KeyGroupSettings(partitions=1, as_of_ms={"acme": as_of}).build()
    actor.on_batch(
        [
            batch(
                0,
                [order(1, at(0), 10.0, "o1"), order(2, at(30, 12), 20.0, "o2")],
                at(30, 12),
            )
        ]
    )

    (customer,) = customers(actor)

    assert customer["first_purchase_at"] == "1997-01-01T00:00:00.000Z"
    assert customer["last_purchase_at"] == "1997-01-31T12:00:00.000Z"
    assert customer["recency_days"] == 30.5
    assert customer["age_days"] == 213.0
    assert customer["evaluated_at"] == "1997-08-02T00:00:00.000Z"
    assert customer["repeat_purchases"] == 1
    assert customer["monetary_mean"] == 20.0
    assert customer["total_spend"] == 30.0


def test_at_the_end_other_tenants_use_the_default_as_of_time() -> None:
    settings = KeyGroupSettings(
        partitions=1, as_of_ms={"acme": at(213)}, default_as_of_ms=at(59)
    )
    actor = settings.build()
    actor.on_batch(
        [
            batch(
                0,
                [
                    order(1, at(0), 10.0, "a", tenant="acme"),
                    order(2, at(0), 10.0, "b", tenant="beta"),
                ],
                at(0),
            )
        ]
    )

    acme, beta = customers(actor)

    assert (acme["tenant"], acme["age_days"]) == ("acme", 213.0)
    # 1997-03-01 is 31 + 28 = 59 days after 1997-01-01.
    assert (beta["tenant"], beta["age_days"]) == ("beta", 59.0)
    assert beta["evaluated_at"] == "1997-03-01T00:00:00.000Z"


def test_without_an_as_of_time_the_end_is_the_highest_time_of_any_partition() -> None:
    actor = KeyGroupSettings(partitions=2).build()
    actor.on_batch(
        [
            batch(0, [order(1, at(0, 6), 10.0, "o1")], at(10)),
            batch(1, [], at(59, 6)),  # 1997-03-01T06:00Z, events of other groups
        ]
    )

    (customer,) = customers(actor)

    assert customer["age_days"] == 59.0
    assert customer["evaluated_at"] == "1997-03-01T06:00:00.000Z"


def test_an_actor_without_customers_reports_nothing_at_the_end() -> None:
    assert KeyGroupSettings(partitions=1).build().on_eof() == []


def test_the_history_counts_and_customers_by_hand() -> None:
    actor = KeyGroupSettings(partitions=2).build()

    reports = run(actor, history())

    assert sum(r.counts.applied for r in reports) == 4  # o1, b1, o2, m1
    assert sum(r.counts.duplicates for r in reports) == 1
    assert [x.position for r in reports for x in r.rejections] == [3]
    acme, beta = customers(actor)
    assert (acme["orders"], acme["total_spend"]) == (2, 30.0)
    assert acme["channels"]["email"] == {
        "last_touch_at": "1997-02-10T00:00:00.000Z",
        "inbound": 0,
        "outbound": 1,
    }
    assert acme["last_inbound_at"] == "1997-01-31T12:00:00.000Z"
    # The end is partition 0's last high time, 1997-02-15 (day 45).
    assert acme["age_days"] == 45.0
    assert (beta["orders"], beta["total_spend"]) == (1, 5.0)


# Snapshots


def test_a_snapshot_restores_into_an_actor_that_continues_identically() -> None:
    calls = history()
    settings = KeyGroupSettings(partitions=2, dedupe_span_ms=30 * DAY_MS)
    original = settings.build()
    run(original, calls[:2])

    restored = settings.build(original.snapshot())

    assert restored.watermark_ms == original.watermark_ms
    assert restored.table.rows() == original.table.rows()
    # The rest holds a conflict with an event from before the snapshot.
    assert run(restored, calls[2:]) == run(original, calls[2:])
    assert customers(restored) == customers(original)
    assert restored.snapshot() == original.snapshot()


def test_a_restored_actor_still_knows_the_event_ids_it_had_seen() -> None:
    settings = KeyGroupSettings(partitions=1)
    original = settings.build()
    original.on_batch([batch(0, [order(1, at(0), 10.0, "o1")], at(0))])

    restored = settings.build(original.snapshot())
    (report,) = restored.on_batch([batch(0, [order(2, at(0), 10.0, "o1")], at(0))])

    assert (report.counts.applied, report.counts.duplicates) == (0, 1)


def test_a_snapshot_of_another_format_is_refused_naming_both_numbers() -> None:
    actor = KeyGroupSettings(partitions=1).build()
    actor.on_batch([batch(0, [order(1, at(0), 10.0, "o1")], at(0))])
    state = msgspec.msgpack.decode(actor.snapshot())
    assert state["format"] == SNAPSHOT_FORMAT == 4
    state["format"] = 2

    with pytest.raises(ValueError, match=r"format 2 .*expected 4"):
        KeyGroupSettings(partitions=1).build(msgspec.msgpack.encode(state))


def test_a_snapshot_of_format_3_with_rows_still_restores() -> None:
    calls = history()
    settings = KeyGroupSettings(partitions=2, dedupe_span_ms=30 * DAY_MS)
    original = settings.build()
    run(original, calls[:2])
    state = msgspec.msgpack.decode(original.snapshot())
    # What the Touchstream before binary tables wrote.
    state["format"] = 3
    state["rows"] = original.table.rows()
    del state["table"]

    restored = settings.build(msgspec.msgpack.encode(state))

    assert restored.table.rows() == original.table.rows()
    assert run(restored, calls[2:]) == run(original, calls[2:])


def test_a_snapshot_with_a_damaged_table_is_refused() -> None:
    actor = KeyGroupSettings(partitions=1).build()
    actor.on_batch([batch(0, [order(1, at(0), 10.0, "o1")], at(0))])
    state = msgspec.msgpack.decode(actor.snapshot())
    state["table"] = state["table"][:-3]

    with pytest.raises(ValueError, match=r"customer-table snapshot is truncated"):
        KeyGroupSettings(partitions=1).build(msgspec.msgpack.encode(state))


def test_a_snapshot_without_a_format_is_refused() -> None:
    data = msgspec.msgpack.encode({"rows": [], "dedupe": [], "partition_high_ms": []})

    with pytest.raises(ValueError, match="missing required field `format`"):
        KeyGroupSettings(partitions=1).build(data)


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ([4, b""], "Expected `object`, got `array`"),
        ({"format": 4, "dedupe": []}, "missing required field `table`"),
        (
            {
                "format": 4,
                "table": b"",
                "dedupe": [],
                "partition_high_ms": [],
                "watermark_ms": "x",
                "next_boundary_ms": [],
                "cooldowns": [],
            },
            "Expected `int`, got `str` - at `$.watermark_ms`",
        ),
    ],
    ids=["not a map", "no table", "a time that is text"],
)
def test_a_snapshot_of_the_wrong_shape_is_refused_saying_where(
    state: Any, problem: str
) -> None:
    data = msgspec.msgpack.encode(state)

    with pytest.raises(ValueError, match="key-group snapshot is not readable") as ex:
        KeyGroupSettings(partitions=1).build(data)
    assert problem in str(ex.value)


# Implementations


def test_the_actor_uses_the_table_that_native_load_picks() -> None:
    actor = KeyGroupSettings(partitions=1).build()

    assert type(actor.table).__module__ == native.load("table").__name__


def test_the_pure_python_table_gives_the_same_customers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = KeyGroupSettings(partitions=2).build()
    default_reports = run(default, history())

    monkeypatch.setattr(operators.keygroup, "_table", native.table_py)
    pure = KeyGroupSettings(partitions=2).build()
    pure_reports = run(pure, history())

    assert isinstance(pure.table, native.table_py.CustomerTable)
    assert pure_reports == default_reports
    assert customers(pure) == customers(default)
    # A snapshot taken with one table restores into the other.
    assert customers(KeyGroupSettings(partitions=2).build(default.snapshot())) == (
        customers(default)
    )
