"""The key-group table, compiled and pure-Python: same state, same rows.

Every test runs against ``native.table`` and ``native.table_py`` (the
``table_module`` fixture); one property test feeds both the same random
touches and compares their rows.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

import native.table
import native.table_py
import operators.events
from state.record import ROW_FIELDS
from tests.helpers_unit import generated_touches, make_touch

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
NO_TIME = -1

# 1997-01-01 is day 9862 since 1970-01-01: 27 years of 365 days and the
# 7 leap days of 1972 to 1996.
JAN_1_1997 = 9862

# Kind and channel codes, by hand: positions in the KINDS / CHANNELS tuples.
MESSAGE, ORDER, REFUND = 0, 6, 7
TICKET_OPENED, TICKET_RESOLVED, COMPLAINT, NPS = 8, 9, 10, 11
WECHAT, EMAIL, PHONE, STORE = 0, 1, 3, 7


def at(day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch milliseconds of `hour`:`minute` UTC on day number `day`."""
    return day * DAY_MS + hour * HOUR_MS + minute * 60_000


def fields(table: Any, tenant: str = "acme", customer_id: str = "c1") -> dict[str, Any]:
    row = table.get_row(tenant, customer_id)
    assert row is not None
    return dict(zip(ROW_FIELDS, row, strict=True))


def order(day: int, amount: float, hour: int = 12, **kwargs: Any) -> Any:
    return make_touch(ts_ms=at(day, hour), kind=ORDER, amount=amount, **kwargs)


# Purchases


def test_orders_on_one_day_merge_into_one_transaction_timed_by_the_earliest(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    first_day, second_day = JAN_1_1997, JAN_1_1997 + 1

    table.apply(
        [
            order(first_day, 10.0, hour=10),
            order(first_day, 5.5, hour=8),
            order(second_day, 20.0, hour=12),
            order(second_day, 1.0, hour=9),
        ]
    )

    record = fields(table)
    assert record["orders"] == 4
    assert record["repeat_purchases"] == 1
    assert record["first_purchase_day"] == first_day
    assert record["last_purchase_day"] == second_day
    assert record["first_purchase_ms"] == at(first_day, 8)
    assert record["last_purchase_ms"] == at(second_day, 9)
    assert record["first_day_spend"] == 15.5
    assert record["repeat_spend"] == 21.0
    assert record["late_orders"] == 0


def test_repeat_purchases_count_distinct_days_after_the_first(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    days = [0, 0, 3, 3, 3, 7]

    table.apply([order(JAN_1_1997 + day, 1.0) for day in days])

    record = fields(table)
    assert record["orders"] == 6
    assert record["repeat_purchases"] == 2  # days 3 and 7
    assert record["first_day_spend"] == 2.0
    assert record["repeat_spend"] == 4.0
    assert record["last_purchase_day"] == JAN_1_1997 + 7


def test_first_day_spend_and_repeat_spend_split_the_order_values(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()

    table.apply(
        [
            order(JAN_1_1997, 10.0),
            order(JAN_1_1997 + 1, 20.0),
            order(JAN_1_1997 + 2, 30.0),
        ]
    )

    record = fields(table)
    assert record["first_day_spend"] == 10.0
    assert record["repeat_spend"] == 50.0
    assert record["repeat_purchases"] == 2


def test_a_late_order_before_the_first_day_becomes_the_first_purchase(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    table.apply([order(JAN_1_1997 + 5, 10.0), order(JAN_1_1997 + 9, 20.0)])

    table.apply([order(JAN_1_1997 + 2, 7.0, hour=15)])

    record = fields(table)
    assert record["first_purchase_day"] == JAN_1_1997 + 2
    assert record["first_purchase_ms"] == at(JAN_1_1997 + 2, 15)
    assert record["first_day_spend"] == 7.0
    # The old first transaction (day 5) is now a repeat one, like day 9.
    assert record["repeat_purchases"] == 2
    assert record["repeat_spend"] == 30.0
    assert record["last_purchase_day"] == JAN_1_1997 + 9
    assert record["last_purchase_ms"] == at(JAN_1_1997 + 9, 12)
    assert record["late_orders"] == 1
    assert record["orders"] == 3


def test_a_late_order_on_the_first_day_joins_the_first_transaction(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    table.apply([order(JAN_1_1997 + 5, 10.0, hour=12), order(JAN_1_1997 + 9, 20.0)])

    table.apply([order(JAN_1_1997 + 5, 4.0, hour=8)])

    record = fields(table)
    assert record["first_purchase_day"] == JAN_1_1997 + 5
    assert record["first_purchase_ms"] == at(JAN_1_1997 + 5, 8)
    assert record["first_day_spend"] == 14.0
    assert record["repeat_purchases"] == 1
    assert record["repeat_spend"] == 20.0
    assert record["late_orders"] == 1
    assert record["orders"] == 3


def test_a_late_order_between_first_and_last_day_is_a_repeat_of_its_own(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    table.apply([order(JAN_1_1997 + 2, 10.0), order(JAN_1_1997 + 9, 20.0)])

    table.apply([order(JAN_1_1997 + 5, 3.0)])

    record = fields(table)
    assert record["repeat_purchases"] == 2
    assert record["repeat_spend"] == 23.0
    assert record["late_orders"] == 1
    assert record["first_purchase_day"] == JAN_1_1997 + 2
    assert record["first_day_spend"] == 10.0
    assert record["last_purchase_day"] == JAN_1_1997 + 9
    assert record["last_purchase_ms"] == at(JAN_1_1997 + 9, 12)


def test_a_customer_who_never_bought_keeps_the_no_time_marks(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()

    table.apply([make_touch(ts_ms=at(JAN_1_1997, 9), kind=MESSAGE, channel=EMAIL)])

    record = fields(table)
    assert record["first_purchase_ms"] == NO_TIME
    assert record["last_purchase_ms"] == NO_TIME
    assert record["orders"] == 0
    assert record["first_day_spend"] == 0.0
    assert record["last_nps"] == -1
    assert record["last_nps_ms"] == NO_TIME
    assert record["last_event_ms"] == at(JAN_1_1997, 9)


# Touches and service events


def test_touches_count_inbound_and_outbound_per_channel(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    t1, t2, t3, t4 = (at(JAN_1_1997, hour) for hour in (10, 11, 9, 12))

    table.apply(
        [
            make_touch(ts_ms=t1, channel=WECHAT, inbound=True),
            make_touch(ts_ms=t2, channel=EMAIL, inbound=False),
            # Out of time order: counted, but moves no "last" time back.
            make_touch(ts_ms=t3, channel=WECHAT, inbound=True),
            make_touch(ts_ms=t4, channel=WECHAT, inbound=False),
        ]
    )

    record = fields(table)
    assert record["inbound_touches"] == (2, 0, 0, 0, 0, 0, 0, 0)
    assert record["outbound_touches"] == (1, 1, 0, 0, 0, 0, 0, 0)
    assert record["last_touch_ms"] == (t4, t2, -1, -1, -1, -1, -1, -1)
    assert record["last_inbound_ms"] == t1
    assert record["last_event_ms"] == t4


def test_open_tickets_go_up_and_down_but_never_below_zero(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    kinds = [
        TICKET_RESOLVED,  # nothing open: stays 0
        TICKET_OPENED,
        TICKET_OPENED,
        TICKET_RESOLVED,
        TICKET_RESOLVED,
        TICKET_RESOLVED,  # again nothing open
        TICKET_OPENED,
    ]

    table.apply(
        [
            make_touch(ts_ms=at(JAN_1_1997, hour), kind=kind, channel=PHONE)
            for hour, kind in enumerate(kinds)
        ]
    )

    assert fields(table)["open_tickets"] == 1


def test_complaints_are_counted(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()

    table.apply(
        [make_touch(ts_ms=at(JAN_1_1997, hour), kind=COMPLAINT) for hour in (1, 2, 3)]
    )

    assert fields(table)["complaints"] == 3


def test_the_latest_nps_by_event_time_wins(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()
    early, late = at(JAN_1_1997, 8), at(JAN_1_1997, 17)

    table.apply([make_touch(ts_ms=late, kind=NPS, score=9)])
    table.apply([make_touch(ts_ms=early, kind=NPS, score=3)])
    record = fields(table)
    assert (record["last_nps"], record["last_nps_ms"]) == (9, late)

    # An answer at the same time as the kept one replaces it.
    table.apply([make_touch(ts_ms=late, kind=NPS, score=5)])
    record = fields(table)
    assert (record["last_nps"], record["last_nps_ms"]) == (5, late)


def test_the_latest_segment_given_wins_and_a_touch_without_one_keeps_it(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()

    table.apply([make_touch(ts_ms=at(JAN_1_1997, 8), segment="silver")])
    table.apply([make_touch(ts_ms=at(JAN_1_1997, 9), segment="gold")])
    table.apply([make_touch(ts_ms=at(JAN_1_1997, 10), segment=None)])

    assert fields(table)["segment"] == "gold"


def test_refunds_add_up_without_touching_purchases(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()

    table.apply(
        [
            order(JAN_1_1997, 20.0),
            make_touch(ts_ms=at(JAN_1_1997 + 1), kind=REFUND, amount=5.0),
            make_touch(ts_ms=at(JAN_1_1997 + 2), kind=REFUND, amount=2.5),
        ]
    )

    record = fields(table)
    assert record["refund_total"] == 7.5
    assert record["orders"] == 1
    assert record["first_day_spend"] == 20.0
    assert record["repeat_spend"] == 0.0


# The table as a whole


def test_apply_returns_how_many_touches_it_applied(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()

    applied = table.apply([make_touch(ts_ms=at(JAN_1_1997, h)) for h in range(3)])

    assert applied == 3
    assert table.apply([]) == 0


def test_rows_are_sorted_by_tenant_then_customer_id(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()
    keys = [("beta", "1"), ("acme", "2"), ("acme", "10"), ("acme", "1")]

    table.apply(
        [
            make_touch(ts_ms=at(JAN_1_1997), tenant=tenant, customer_id=customer_id)
            for tenant, customer_id in keys
        ]
    )

    # customer ids are strings: "10" sorts before "2"
    expected = [("acme", "1"), ("acme", "10"), ("acme", "2"), ("beta", "1")]
    assert [row[:2] for row in table.rows()] == expected
    assert len(table) == 4
    assert table.get_row("acme", "10") is not None
    assert table.get_row("acme", "3") is None
    assert table.get_row("gamma", "1") is None


def _history(start_day: int, end_day: int) -> list[Any]:
    touches = []
    for day in range(start_day, end_day):
        for customer_id in ("c1", "c2"):
            touches += [
                order(JAN_1_1997 + day, 10.0 + day, customer_id=customer_id),
                make_touch(
                    ts_ms=at(JAN_1_1997 + day, 13),
                    customer_id=customer_id,
                    channel=day % 8,
                    inbound=day % 2 == 0,
                    kind=NPS if day % 3 == 0 else COMPLAINT,
                    score=day % 11,
                    segment=f"s{day}",
                ),
            ]
    return touches


def test_load_rows_of_rows_continues_exactly_like_the_original(
    table_module: ModuleType,
) -> None:
    original = table_module.CustomerTable()
    original.apply(_history(0, 5))

    restored = table_module.CustomerTable()
    restored.load_rows(original.rows())
    assert restored.rows() == original.rows()

    # Late and on-time orders after the restore land the same way in both.
    later = _history(5, 9) + [order(JAN_1_1997 - 3, 4.0), order(JAN_1_1997 + 2, 1.0)]
    original.apply(later)
    restored.apply(later)
    assert restored.rows() == original.rows()


def test_load_rows_accepts_rows_that_went_through_msgpack(
    table_module: ModuleType,
) -> None:
    original = table_module.CustomerTable()
    original.apply(_history(0, 4))
    # MessagePack turns tuples into lists, as in a key-group snapshot.
    rows = msgspec.msgpack.decode(msgspec.msgpack.encode(original.rows()))

    restored = table_module.CustomerTable()
    restored.load_rows(rows)

    assert restored.rows() == original.rows()


def test_load_rows_replaces_what_the_table_held(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()
    table.apply([make_touch(ts_ms=at(JAN_1_1997), customer_id="old")])
    other = table_module.CustomerTable()
    other.apply([make_touch(ts_ms=at(JAN_1_1997), customer_id="new")])

    table.load_rows(other.rows())

    assert [row[1] for row in table.rows()] == ["new"]


@pytest.mark.parametrize("channel", [8, -1])
def test_a_channel_code_out_of_range_raises_value_error(
    table_module: ModuleType, channel: int
) -> None:
    table = table_module.CustomerTable()

    with pytest.raises(ValueError, match=f"channel code {channel} out of range"):
        table.apply([make_touch(ts_ms=at(JAN_1_1997), channel=channel)])


def test_a_refused_touch_leaves_no_customer_behind(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()

    with pytest.raises(ValueError):
        table.apply([make_touch(ts_ms=at(JAN_1_1997), channel=8, customer_id="ghost")])

    assert table.get_row("acme", "ghost") is None
    assert len(table) == 0


def test_kind_codes_match_the_event_contract(table_module: ModuleType) -> None:
    kinds = ("order", "refund", "ticket_opened", "ticket_resolved", "complaint", "nps")

    assert set(table_module.KIND_CODES) == set(kinds)
    for kind in kinds:
        assert table_module.KIND_CODES[kind] == operators.events.KIND_CODES[kind]


def test_the_table_has_one_slot_per_channel(table_module: ModuleType) -> None:
    assert table_module.CHANNEL_COUNT == len(operators.events.CHANNELS) == 8


def test_both_implementations_are_really_different_modules() -> None:
    assert native.table.__file__ is not None
    assert native.table.__file__.endswith(".so")
    assert native.table_py.__file__ is not None
    assert native.table_py.__file__.endswith("table_py.py")


# Native and pure agree


def _touches() -> st.SearchStrategy[Any]:
    return st.builds(
        make_touch,
        ts_ms=st.integers(at(JAN_1_1997 - 3), at(JAN_1_1997 + 30)),
        kind=st.integers(0, 14),
        channel=st.integers(0, 7),
        inbound=st.booleans(),
        amount=st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
        tenant=st.sampled_from(["acme", "beta"]),
        customer_id=st.sampled_from(["1", "2", "10"]),
        segment=st.sampled_from([None, "gold", "silver"]),
        score=st.integers(0, 10),
    )


@settings(deadline=None, max_examples=200)
@given(touches=st.lists(_touches(), max_size=60), split=st.integers(0, 60))
def test_native_and_pure_tables_give_identical_rows(
    touches: list[Any], split: int
) -> None:
    pure = native.table_py.CustomerTable()
    compiled = native.table.CustomerTable()

    for table in (pure, compiled):
        table.apply(touches[:split])
        table.apply(touches[split:])

    assert compiled.rows() == pure.rows()
    assert len(compiled) == len(pure)

    # Each can resume from the other's rows.
    swapped = native.table.CustomerTable()
    swapped.load_rows(pure.rows())
    assert swapped.rows() == pure.rows()


# Snapshots

SILENCE_MS = 6 * HOUR_MS


def _two_tenants(touches: list[Any]) -> list[Any]:
    # A second tenant, and ids that are not ASCII, so that interning and
    # the order of names are exercised.
    return [
        msgspec.structs.replace(
            touch, tenant="ßeta", customer_id=touch.customer_id + "é"
        )
        if touch.position % 5 == 0
        else touch
        for touch in touches
    ]


def _run(table: Any, touches: list[Any]) -> list[tuple[Any, ...]]:
    signals: list[tuple[Any, ...]] = []
    for start in range(0, len(touches), 97):
        table.apply(touches[start : start + 97], NO_TIME, True, signals)
    return signals


def test_native_and_pure_give_identical_rows_signals_and_snapshot_bytes() -> None:
    touches = _two_tenants(generated_touches(6_000, 300))
    pure = native.table_py.CustomerTable(silence_window_ms=SILENCE_MS)
    compiled = native.table.CustomerTable(silence_window_ms=SILENCE_MS)

    assert _run(compiled, touches) == _run(pure, touches)
    assert compiled.rows() == pure.rows()
    assert compiled.snapshot() == pure.snapshot()
    # Some customers have more sources than the inline slots hold.
    spend = ROW_FIELDS.index("spend_by_source")
    assert max(len(row[spend]) for row in pure.rows()) > 2


@pytest.mark.parametrize("writer", ["native.table_py", "native.table"])
def test_a_restored_snapshot_continues_exactly_like_the_original(
    table_module: ModuleType, writer: str
) -> None:
    touches = _two_tenants(generated_touches(6_000, 300))
    before, after = touches[:3_000], touches[3_000:]
    original = importlib.import_module(writer).CustomerTable(
        silence_window_ms=SILENCE_MS
    )
    _run(original, before)

    restored = table_module.CustomerTable(silence_window_ms=SILENCE_MS)
    restored.restore(original.snapshot())
    assert restored.rows() == original.rows()
    assert restored.next_deadline() == original.next_deadline()
    assert len(restored) == len(original)

    assert _run(restored, after) == _run(original, after)
    assert restored.rows() == original.rows()
    assert restored.snapshot() == original.snapshot()


def test_a_snapshot_of_an_empty_table_restores_empty(table_module: ModuleType) -> None:
    table = table_module.CustomerTable()
    data = table.snapshot()

    restored = table_module.CustomerTable()
    restored.apply([make_touch(ts_ms=at(JAN_1_1997))])
    restored.restore(data)

    assert data[:4] == table_module.SNAPSHOT_MAGIC
    assert (len(restored), restored.rows()) == (0, [])


def _snapshot(table_module: ModuleType) -> bytes:
    table = table_module.CustomerTable(silence_window_ms=SILENCE_MS)
    table.apply(_history(0, 3))
    data: bytes = table.snapshot()
    return data


def _with_format(data: bytes, number: int) -> bytes:
    return data[:4] + number.to_bytes(2, "little") + data[6:]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda data: b"{" + data[1:], r"not a customer-table snapshot.*TSKT"),
        (lambda data: data[:10], r"truncated: 10 bytes, shorter than its 16"),
        (lambda data: _with_format(data, 2), r"format 2 is not readable.*format 1"),
        (lambda data: _with_format(data, 0), r"format 0 is not readable.*format 1"),
        (lambda data: data[:-7], r"truncated: its header says \d+ bytes, got"),
        (lambda data: data + b"\0", r"has 1 bytes after its end"),
        # The first record's tenant code: after the header (16 bytes), the
        # counts (36) and the names acme, s0, s1, s2 and erp (33).
        (
            lambda data: data[:85] + b"\x09" + data[86:],
            r"corrupt at byte 85: tenant code 9 out of range",
        ),
        (
            lambda data: data[:44] + b"\x01" + data[45:],
            r"corrupt at byte 36: the counts disagree with the records",
        ),
    ],
    ids=[
        "magic",
        "header",
        "newer",
        "older",
        "truncated",
        "longer",
        "tenant",
        "counts",
    ],
)
def test_a_bad_snapshot_is_refused_saying_what_is_wrong(
    table_module: ModuleType, spoil: Any, message: str
) -> None:
    data = _snapshot(table_module)
    table = table_module.CustomerTable()
    table.apply([make_touch(ts_ms=at(JAN_1_1997), customer_id="before")])

    with pytest.raises(ValueError, match=message):
        table.restore(spoil(data))

    # Nothing half-restored is left behind.
    assert len(table) == 0


def test_a_record_cut_short_inside_the_snapshot_is_refused(
    table_module: ModuleType,
) -> None:
    data = _snapshot(table_module)
    # The header's length agrees, but the last record lost its tail.
    cut = data[:8] + (len(data) - 9).to_bytes(8, "little") + data[16:-9]

    with pytest.raises(ValueError, match=r"corrupt at byte \d+: .*cut short"):
        table_module.CustomerTable().restore(cut)


def test_a_snapshot_holding_a_customer_twice_is_refused(
    table_module: ModuleType,
) -> None:
    data = _snapshot(table_module)
    assert data.count(b"c2") == 1

    with pytest.raises(ValueError, match=r"corrupt.*there twice"):
        table_module.CustomerTable().restore(data.replace(b"c2", b"c1"))


def test_touches_of_any_type_with_the_fields_apply_like_touch_structs(
    table_module: ModuleType,
) -> None:
    touches = _two_tenants(generated_touches(2_000, 100))
    # The native kernel reads a Struct's slots directly and anything else by
    # attribute; a batch may mix both.
    mixed = [
        SimpleNamespace(**msgspec.structs.asdict(touch)) if index % 3 else touch
        for index, touch in enumerate(touches)
    ]
    structs = table_module.CustomerTable(silence_window_ms=SILENCE_MS)
    others = table_module.CustomerTable(silence_window_ms=SILENCE_MS)

    assert _run(others, mixed) == _run(structs, touches)
    assert others.rows() == structs.rows()


class _ResettingSink:
    """A signal sink that tries to replace the table's content."""

    def __init__(self, table: Any, how: str) -> None:
        self.table, self.how, self.errors = table, how, []

    def append(self, signal: tuple[Any, ...], /) -> None:
        try:
            if self.how == "restore":
                self.table.restore(self.table.snapshot())
            else:
                self.table.load_rows([])
        except RuntimeError as ex:
            self.errors.append(str(ex))


@pytest.mark.parametrize("how", ["restore", "load_rows"])
def test_a_signal_sink_cannot_replace_the_table_under_a_running_apply(
    table_module: ModuleType, how: str
) -> None:
    table = table_module.CustomerTable(silence_window_ms=HOUR_MS)
    sink = _ResettingSink(table, how)
    touches = [
        make_touch(ts_ms=at(0, hour), customer_id=f"c{hour}", event_id=f"e{hour}")
        for hour in range(0, 10, 2)
    ]

    table.apply(touches, ordered=True, signals=sink)
    table.fire(at(1), True, sink)

    # Four deadlines fire inside apply() and one in fire(); each refused.
    assert len(sink.errors) == 5
    assert f"CustomerTable.{how}()" in sink.errors[0]
    assert len(table) == 5
    table.load_rows(table.rows())


def test_a_silence_window_callback_cannot_replace_the_table(
    table_module: ModuleType,
) -> None:
    refused: list[str] = []

    def window(tenant: str, segment: str | None, channel: int) -> int:
        try:
            table.load_rows([])
        except RuntimeError as ex:
            refused.append(str(ex))
        return HOUR_MS

    table = table_module.CustomerTable(silence_window_ms=HOUR_MS, silence_window=window)
    table.apply([make_touch(ts_ms=at(0)), make_touch(ts_ms=at(0, 1), event_id="e2")])

    assert len(refused) == 2
    assert len(table) == 1


def test_adding_tenants_one_by_one_keeps_rows_and_ties_in_name_order(
    table_module: ModuleType,
) -> None:
    names = [f"t{(index * 7919) % 3000:04d}" for index in range(3000)]
    table = table_module.CustomerTable(silence_window_ms=HOUR_MS)
    signals: list[tuple[Any, ...]] = []

    table.apply([make_touch(ts_ms=at(0), tenant=name) for name in names])
    table.fire(at(1), True, signals)

    assert [row[0] for row in table.rows()] == sorted(names)
    # Equal deadlines fire in (tenant, customer) order, as tuples sort.
    assert [signal[2] for signal in signals] == sorted(names)


def test_sources_past_the_limit_share_one_and_lose_no_spend(
    table_module: ModuleType,
) -> None:
    limit = native.table_py.MAX_SOURCES
    touches = [
        make_touch(ts_ms=at(0), kind=ORDER, amount=1.0, source=f"s{index}")
        for index in range(limit + 10)
    ]
    table = table_module.CustomerTable()

    table.apply(touches)
    spend = dict(fields(table)["spend_by_source"])
    restored = table_module.CustomerTable()
    restored.restore(table.snapshot())

    assert len(spend) == limit
    assert spend[table_module.OTHER_SOURCES] == 11.0
    assert sum(spend.values()) == limit + 10
    assert restored.rows() == table.rows()


@pytest.mark.parametrize(
    "ids",
    [(b"x\xc3\xa9", b"x\xff\xa9"), (b"\xc3\xa9y", b"\xa9yy")],
    ids=["bad byte", "starts inside a character"],
)
def test_a_snapshot_with_a_customer_id_that_is_not_utf8_is_refused(
    table_module: ModuleType, ids: tuple[bytes, bytes]
) -> None:
    # The arena holds "xé" then "éy"; the second case makes them "xx\xc3" and
    # "\xa9yy", which only together read as UTF-8.
    table = table_module.CustomerTable()
    table.apply(
        [
            make_touch(ts_ms=at(0), customer_id="xé"),
            make_touch(ts_ms=at(0), customer_id="éy", event_id="e2"),
        ]
    )
    blob = table.snapshot()
    if ids[0] == b"x\xc3\xa9":
        blob = blob.replace(*ids)
    else:
        blob = blob.replace(b"x\xc3\xa9", b"xx\xc3").replace(*ids)

    with pytest.raises(ValueError, match="a customer id is not UTF-8"):
        table_module.CustomerTable().restore(blob)


def test_tenant_names_are_those_of_the_customers_sorted(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    table.apply(
        [
            make_touch(ts_ms=at(0), tenant="globex"),
            make_touch(ts_ms=at(0), tenant="acme", customer_id="c2"),
            make_touch(ts_ms=at(0), tenant="globex", customer_id="c3"),
        ]
    )
    restored = table_module.CustomerTable()
    restored.restore(table.snapshot())

    assert table.tenant_names() == restored.tenant_names() == ["acme", "globex"]
    assert table_module.CustomerTable().tenant_names() == []
