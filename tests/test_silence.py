"""Silence timers of the key-group table, compiled and pure-Python.

A deadline is the last inbound touch plus the silence window; it fires once
per episode, when event time passes it, and the next inbound touch ends the
episode. Every test runs against both ``native.table`` and
``native.table_py``; one feeds both the same random stream and compares
their signals.
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import native.table
import native.table_py
from tests.helpers_unit import make_touch

HOUR_MS = 3_600_000
WINDOW_MS = 48 * HOUR_MS
NO_TIME = -1
SILENCE, SILENCE_ENDED = 0, 1
WECHAT, EMAIL = 0, 1


def touch(ts_ms: int, event_id: str, **fields: Any) -> Any:
    fields.setdefault("channel", WECHAT)
    return make_touch(ts_ms=ts_ms, event_id=event_id, **fields)


def test_silence_fires_exactly_at_the_last_inbound_touch_plus_the_window(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    signals: list[tuple[Any, ...]] = []
    table.apply([touch(10 * HOUR_MS, "m1")], NO_TIME, True, signals)

    table.fire(58 * HOUR_MS, False, signals)  # strictly before: not yet
    assert signals == []
    table.fire(58 * HOUR_MS, True, signals)

    assert signals == [
        (58 * HOUR_MS, SILENCE, "acme", "c1", WECHAT, None, NO_TIME, WINDOW_MS)
    ]


def test_an_outbound_touch_inside_the_window_does_not_delay_it(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    signals: list[tuple[Any, ...]] = []
    table.apply(
        [
            touch(0, "m1"),
            touch(20 * HOUR_MS, "rep", inbound=False, channel=EMAIL),
            touch(60 * HOUR_MS, "other", customer_id="c2"),
        ],
        NO_TIME,
        True,
        signals,
    )

    # The touch of c2 at 60 h passed c1's deadline at 48 h on the way.
    assert [(s[0], s[1], s[3]) for s in signals] == [(WINDOW_MS, SILENCE, "c1")]


def test_it_fires_once_per_episode_and_the_next_inbound_touch_ends_it(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    signals: list[tuple[Any, ...]] = []
    table.apply([touch(0, "m1")], NO_TIME, True, signals)
    table.fire(100 * HOUR_MS, False, signals)
    table.fire(500 * HOUR_MS, False, signals)  # no second silence
    table.apply([touch(70 * HOUR_MS + 5, "m2", channel=EMAIL)], NO_TIME, True, signals)

    assert signals == [
        (WINDOW_MS, SILENCE, "acme", "c1", WECHAT, None, NO_TIME, WINDOW_MS),
        (
            70 * HOUR_MS + 5,
            SILENCE_ENDED,
            "acme",
            "c1",
            EMAIL,
            "m2",
            70 * HOUR_MS + 5,
            70 * HOUR_MS + 5,
        ),
    ]
    assert table.next_deadline() == 70 * HOUR_MS + 5 + WINDOW_MS


def test_a_late_touch_updates_the_record_but_never_fires_or_ends_anything(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    signals: list[tuple[Any, ...]] = []
    table.apply([touch(0, "m1")], NO_TIME, False, signals)
    table.fire(60 * HOUR_MS, False, signals)  # the watermark is at 60 h
    assert len(signals) == 1

    # Late (before the watermark): after the silence, and long before it.
    table.apply([touch(50 * HOUR_MS, "m2")], 60 * HOUR_MS, False, signals)
    table.apply(
        [touch(5 * HOUR_MS, "m3", customer_id="c2")], 60 * HOUR_MS, False, signals
    )
    table.fire(1000 * HOUR_MS, False, signals)

    assert len(signals) == 1
    row = dict(
        zip(native.table_py.ROW_FIELDS, table.get_row("acme", "c1"), strict=True)
    )
    assert row["last_inbound_ms"] == 50 * HOUR_MS
    assert row["inbound_touches"][WECHAT] == 2


def test_a_late_touch_still_moves_a_deadline_that_is_ahead_of_the_watermark(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    signals: list[tuple[Any, ...]] = []
    table.apply([touch(0, "m1")], NO_TIME, False, signals)
    table.apply([touch(10 * HOUR_MS, "m2")], 20 * HOUR_MS, False, signals)

    assert table.next_deadline() == 58 * HOUR_MS
    assert signals == []


def test_a_window_per_tenant_segment_and_channel_comes_from_the_resolver(
    table_module: ModuleType,
) -> None:
    def window(tenant: str, segment: str | None, channel: int) -> int:
        return 2 * HOUR_MS if (segment, channel) == ("vip", EMAIL) else WINDOW_MS

    table = table_module.CustomerTable(
        silence_window_ms=WINDOW_MS, silence_window=window
    )
    table.apply(
        [
            touch(0, "a", segment="vip", channel=EMAIL),
            touch(0, "b", customer_id="c2", segment="vip"),
            touch(0, "c", customer_id="c3", channel=EMAIL),
        ]
    )

    assert table.next_deadline() == 2 * HOUR_MS
    signals: list[tuple[Any, ...]] = []
    table.fire(WINDOW_MS, True, signals)
    assert [(s[0], s[3]) for s in signals] == [
        (2 * HOUR_MS, "c1"),
        (WINDOW_MS, "c2"),
        (WINDOW_MS, "c3"),
    ]


def test_pending_deadlines_survive_a_snapshot_of_the_rows(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    table.apply([touch(0, "m1"), touch(HOUR_MS, "m2", customer_id="c2")])
    restored = table_module.CustomerTable(silence_window_ms=WINDOW_MS)
    restored.load_rows(table.rows())

    signals: list[tuple[Any, ...]] = []
    restored.fire(WINDOW_MS + HOUR_MS, True, signals)

    assert [(s[0], s[3]) for s in signals] == [
        (WINDOW_MS, "c1"),
        (WINDOW_MS + HOUR_MS, "c2"),
    ]


def test_native_and_pure_tables_give_the_same_signals_on_a_random_stream() -> None:
    rng = random.Random(7)
    batches = []
    clock = 0
    for _ in range(60):
        batch = []
        for _ in range(rng.randint(0, 30)):
            clock += rng.randint(0, 4 * HOUR_MS)
            batch.append(
                touch(
                    clock,
                    f"e{clock}",
                    customer_id=f"c{rng.randint(1, 40)}",
                    inbound=rng.random() < 0.7,
                    channel=rng.randint(0, 7),
                )
            )
        batches.append(batch)

    results = []
    for module in (native.table_py, native.table):
        table = module.CustomerTable(silence_window_ms=30 * HOUR_MS)
        signals: list[tuple[Any, ...]] = []
        for batch in batches:
            table.apply(batch, NO_TIME, True, signals)
        table.fire(clock, True, signals)
        results.append((signals, table.rows()))

    assert len(results[0][0]) > 20
    assert results[0] == results[1]
