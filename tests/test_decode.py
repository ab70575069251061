"""Decoding raw records of every format into touches, or into rejections."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import msgspec
import orjson
import pytest

from operators.decode import (
    CsvLayout,
    DecodedBatch,
    DecodeSettings,
    Rejection,
    TenantRule,
)
from operators.events import Touch

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# 1997-01-01 is day 9862 since 1970-01-01 (27 years of 365 days and the 7 leap
# days of 1972 to 1996), so it starts at 9862 * 86_400_000 ms.
JAN_1_1997 = 9862
JAN_1_1997_MS = 852_076_800_000
TEN_AM_MS = JAN_1_1997_MS + 10 * HOUR_MS  # 1997-01-01T10:00:00Z

# 2100-01-01 is day 47482: 130 years of 365 days and 32 leap days (1972 to
# 2096; 2100 itself is not a leap year).
YEAR_2100_MS = 47_482 * DAY_MS
assert YEAR_2100_MS == 4_102_444_800_000

# Codes by hand: positions in operators.events.CHANNELS and KINDS.
STORE, ORDER, NPS = 7, 6, 11

CHANNEL_LIST = "wechat, email, meeting, phone, app, web, livestream, store"


def event(**fields: Any) -> dict[str, Any]:
    """A valid inbound store order at 1997-01-01T10:00:00Z; None drops a field."""
    base: dict[str, Any] = {
        "event_id": "e1",
        "tenant": "acme",
        "customer_id": "c1",
        "source": "erp",
        "channel": "store",
        "kind": "order",
        "direction": "inbound",
        "ts": "1997-01-01T10:00:00Z",
        "amount": 10.0,
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def jsonl(**fields: Any) -> bytes:
    return orjson.dumps(event(**fields))


def decode(raw: bytes, position: int = 1, **settings: Any) -> DecodedBatch:
    settings.setdefault("format", "jsonl")
    settings.setdefault("input_name", "in")
    return DecodeSettings(**settings).build().decode_batch([(position, raw)])


def only_touch(batch: DecodedBatch) -> Touch:
    assert batch.rejections == []
    assert len(batch.touches) == 1
    return batch.touches[0]


def only_rejection(batch: DecodedBatch) -> Rejection:
    assert batch.touches == []
    assert len(batch.rejections) == 1
    return batch.rejections[0]


# Formats


def test_a_json_line_becomes_a_touch() -> None:
    touch = only_touch(decode(jsonl(segment="gold"), position=12))

    assert touch.position == 12
    assert touch.ts_ms == TEN_AM_MS
    assert touch.day == JAN_1_1997
    assert (touch.tenant, touch.customer_id) == ("acme", "c1")
    assert (touch.source, touch.event_id) == ("erp", "e1")
    assert (touch.channel, touch.kind, touch.inbound) == (STORE, ORDER, True)
    assert touch.amount == 10.0
    assert touch.segment == "gold"
    assert touch.score == -1


def test_a_msgpack_map_becomes_the_same_touch_as_its_json_line() -> None:
    from_msgpack = only_touch(decode(msgspec.msgpack.encode(event()), format="msgpack"))
    from_json = only_touch(decode(jsonl()))

    assert from_msgpack == from_json


def test_decode_batch_keeps_the_order_and_positions_of_its_records() -> None:
    decoder = DecodeSettings(format="jsonl", input_name="in").build()

    batch = decoder.decode_batch(
        [(3, jsonl(event_id="a")), (4, b"{"), (5, jsonl(event_id="b"))]
    )

    assert [(t.position, t.event_id) for t in batch.touches] == [(3, "a"), (5, "b")]
    assert [r.position for r in batch.rejections] == [4]
    assert batch.max_ts_ms == TEN_AM_MS


CSV_LAYOUT = CsvLayout(
    header=("order_no", "client", "created", "what", "total", "area"),
    columns={
        "event_id": "order_no",
        "customer_id": "client",
        "ts": "created",
        "kind": "what",
        "amount": "total",
    },
    constants={"source": "shop", "channel": "store", "direction": "inbound"},
    attributes={"region": "area"},
)


def csv_row(*cells: str) -> bytes:
    """One CSV record as the source splits it: the row's own text."""
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(cells)
    return text.getvalue().encode()


def test_a_csv_row_maps_its_columns_and_constants_to_event_fields() -> None:
    raw = csv_row("o1", "00004", "1997-01-01T10:00:00Z", "order", "12.5", "north")

    touch = only_touch(
        decode(raw, format="csv", csv=CSV_LAYOUT, default_tenant="shopco")
    )

    assert touch.customer_id == "00004"
    assert touch.event_id == "o1"
    assert touch.ts_ms == TEN_AM_MS
    assert touch.amount == 12.5
    assert touch.tenant == "shopco"
    assert (touch.source, touch.channel, touch.kind) == ("shop", STORE, ORDER)


def test_a_csv_row_takes_epoch_milliseconds_and_names_itself_without_an_id() -> None:
    raw = csv_row("", "00004", str(TEN_AM_MS), "order", "12.5", "")

    touch = only_touch(decode(raw, position=7, format="csv", csv=CSV_LAYOUT))

    assert touch.ts_ms == TEN_AM_MS
    assert touch.event_id == "in:7"
    assert touch.tenant == "default"


def test_a_csv_row_with_another_column_count_is_an_invalid_row() -> None:
    raw = csv_row("o1", "00004", str(TEN_AM_MS), "order", "12.5")

    rejection = only_rejection(decode(raw, format="csv", csv=CSV_LAYOUT))

    assert rejection.code == "invalid_row"
    assert "expected 6 columns" in rejection.reason
    assert "got 5" in rejection.reason


def test_the_csv_format_needs_a_layout() -> None:
    with pytest.raises(ValueError, match="CsvLayout"):
        DecodeSettings(format="csv", input_name="in").build()


@pytest.mark.parametrize(
    "raw",
    [b" 00004 19970101  2   29.33", b" 00004 0001 19970101  2   29.33"],
    ids=["master-4-columns", "sample-5-columns"],
)
def test_a_cdnow_row_is_an_inbound_store_order_at_midnight_utc(raw: bytes) -> None:
    touch = only_touch(decode(raw, position=3, format="cdnow", input_name="master"))

    assert touch.customer_id == "00004"
    assert touch.ts_ms == JAN_1_1997_MS
    assert touch.day == JAN_1_1997
    assert touch.amount == 29.33
    assert (touch.tenant, touch.source) == ("default", "cdnow")
    assert touch.event_id == "master:3"
    assert (touch.channel, touch.kind, touch.inbound) == (STORE, ORDER, True)


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b" 00004 19970101  2", "invalid_row", "got 3"),
        (b" 00004 1997010x  2   29.33", "invalid_field", "'1997010x'"),
        (b" 00004 19970101  2   abc", "invalid_field", "'abc'"),
        (b" 00004 19970101  2   -3", "invalid_field", "'-3'"),
        (b" 00004 19970101  2   nan", "invalid_field", "'nan'"),
        (b" 00004 19970101  2   1e13", "invalid_field", "'1e13'"),
        (b" 00004 19970231  2   29.33", "invalid_field", "'19970231'"),
        (b" 00004 1997011  2   29.33", "invalid_field", "'1997011'"),
        (b" " + b"9" * 129 + b" 19970101  2   29.33", "invalid_field", "129"),
    ],
    ids=[
        "three-columns",
        "bad-date",
        "bad-dollars",
        "negative-dollars",
        "nan-dollars",
        "dollars-over-1e12",
        "february-31",
        "seven-digit-date",
        "customer-id-over-128",
    ],
)
def test_a_bad_cdnow_row_is_rejected_with_what_was_wrong(
    raw: bytes, code: str, words: str
) -> None:
    rejection = only_rejection(decode(raw, format="cdnow"))

    assert rejection.code == code
    assert words in rejection.reason


# Time


def test_rfc3339_with_an_offset_and_epoch_ms_give_the_same_time() -> None:
    shanghai = only_touch(decode(jsonl(ts="1997-01-01T18:00:00+08:00")))
    zulu = only_touch(decode(jsonl(ts="1997-01-01T10:00:00Z")))
    epoch = only_touch(decode(jsonl(ts=TEN_AM_MS)))

    assert shanghai.ts_ms == zulu.ts_ms == epoch.ts_ms == TEN_AM_MS


@pytest.mark.parametrize(
    ("ts", "ts_ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        (0, 0),
        (YEAR_2100_MS - 1, YEAR_2100_MS - 1),
        ("2099-12-31T23:59:59.999Z", YEAR_2100_MS - 1),
    ],
)
def test_times_from_1970_up_to_2100_are_accepted(ts: str | int, ts_ms: int) -> None:
    assert only_touch(decode(jsonl(ts=ts))).ts_ms == ts_ms


@pytest.mark.parametrize(
    "ts",
    [-1, "1969-12-31T23:59:59Z", YEAR_2100_MS, "2100-01-01T00:00:00Z"],
)
def test_times_outside_1970_to_2100_are_out_of_range(ts: str | int) -> None:
    rejection = only_rejection(decode(jsonl(ts=ts)))

    assert rejection.code == "ts_out_of_range"
    assert "1970-01-01" in rejection.reason
    assert rejection.event_id == "e1"


def test_a_time_without_an_offset_is_an_invalid_field() -> None:
    rejection = only_rejection(decode(jsonl(ts="1997-01-01T10:00:00")))

    assert rejection.code == "invalid_field"
    assert "`$.ts`" in rejection.reason


@pytest.mark.parametrize(
    ("ts", "utc_day", "shanghai_day"),
    [
        # 20:00 UTC is 04:00 the next morning in Shanghai (UTC+8).
        ("1997-01-01T20:00:00Z", JAN_1_1997, JAN_1_1997 + 1),
        ("1997-01-01T15:59:59Z", JAN_1_1997, JAN_1_1997),
        ("1997-01-01T16:00:00Z", JAN_1_1997, JAN_1_1997 + 1),
    ],
)
def test_the_day_is_the_calendar_day_in_the_tenants_time_zone(
    ts: str, utc_day: int, shanghai_day: int
) -> None:
    shanghai = TenantRule(time_zone="Asia/Shanghai")

    in_shanghai = only_touch(decode(jsonl(ts=ts), tenants={"acme": shanghai}))
    in_utc = only_touch(decode(jsonl(ts=ts)))

    assert in_shanghai.day == shanghai_day
    assert in_utc.day == utc_day
    assert in_shanghai.ts_ms == in_utc.ts_ms


def test_a_time_zone_set_as_the_tenant_default_applies_to_every_tenant() -> None:
    batch = decode(
        jsonl(ts="1997-01-01T20:00:00Z", tenant="other"),
        tenant_defaults=TenantRule(time_zone="Asia/Shanghai"),
    )

    assert only_touch(batch).day == JAN_1_1997 + 1


def test_events_after_the_tenants_as_of_time_are_counted_not_applied() -> None:
    decoder = DecodeSettings(
        format="jsonl",
        input_name="in",
        tenants={"acme": TenantRule(as_of_ms=TEN_AM_MS)},
    ).build()

    batch = decoder.decode_batch(
        [
            (1, jsonl(event_id="at", ts=TEN_AM_MS)),
            (2, jsonl(event_id="after", ts=TEN_AM_MS + 1)),
            (3, jsonl(event_id="other", ts=TEN_AM_MS + 1, tenant="beta")),
        ]
    )

    assert [touch.event_id for touch in batch.touches] == ["at", "other"]
    assert batch.after_as_of == 1
    assert batch.rejections == []
    assert batch.max_ts_ms == TEN_AM_MS + 1


# Rejections


@pytest.mark.parametrize(
    ("fmt", "raw"),
    [
        ("jsonl", b"{not json"),
        ("jsonl", b""),
        ("msgpack", b"\xc1"),
        # Cut off after a key the contract does not have: still malformed.
        ("jsonl", b'{"colour":'),
        ("msgpack", b"\x82\xa6colour\x01"),
    ],
)
def test_a_record_that_cannot_be_parsed_is_malformed(fmt: str, raw: bytes) -> None:
    rejection = only_rejection(decode(raw, position=9, format=fmt))

    assert rejection.code == "malformed"
    assert rejection.reason.startswith(f"malformed {fmt} record")
    assert rejection.position == 9


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_an_unknown_channel_is_an_invalid_value_listing_the_eight(fmt: str) -> None:
    fields = event(channel="fax")
    raw = orjson.dumps(fields) if fmt == "jsonl" else msgspec.msgpack.encode(fields)

    rejection = only_rejection(decode(raw, format=fmt))

    assert rejection.code == "invalid_value"
    assert rejection.reason == (
        f'expected `channel` to be one of {CHANNEL_LIST} - got "fax"'
    )


def test_an_unknown_channel_in_a_csv_row_is_reported_with_its_value() -> None:
    layout = CsvLayout(
        header=("event_id", "customer_id", "ts", "kind", "amount", "channel"),
        constants={"source": "shop", "direction": "inbound"},
    )
    raw = csv_row("o1", "c1", str(TEN_AM_MS), "order", "12.5", "fax")

    rejection = only_rejection(decode(raw, format="csv", csv=layout))

    assert rejection.code == "invalid_value"
    assert rejection.reason == (
        f'expected `channel` to be one of {CHANNEL_LIST} - got "fax"'
    )


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"amount": "ten"}, "`$.amount`"),
        ({"customer_id": ""}, "`$.customer_id`"),
        ({"score": 11, "kind": "nps"}, "`$.score`"),
        ({"currency": "euro"}, "`$.currency`"),
        ({"amount": -1.0}, "`$.amount`"),
    ],
    ids=["wrong-type", "empty-id", "score-11", "bad-currency", "negative-amount"],
)
def test_a_field_of_the_wrong_type_or_shape_is_an_invalid_field(
    fields: dict[str, Any], path: str
) -> None:
    rejection = only_rejection(decode(jsonl(**fields)))

    assert rejection.code == "invalid_field"
    assert path in rejection.reason


def test_an_empty_customer_id_is_reported_with_its_value() -> None:
    rejection = only_rejection(decode(jsonl(customer_id="")))

    assert (
        rejection.reason == 'expected `str` of length >= 1 at `$.customer_id` - got ""'
    )


def test_an_unknown_field_is_rejected_by_name() -> None:
    rejection = only_rejection(decode(jsonl(colour="red")))

    assert rejection.code == "unknown_field"
    assert "`colour`" in rejection.reason


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"amount": None}, "`amount`"),
        ({"kind": "refund", "amount": None}, "`amount`"),
        ({"kind": "nps", "amount": None}, "`score`"),
        ({"event_id": None}, "`event_id`"),
        ({"ts": None}, "`ts`"),
    ],
    ids=["order-amount", "refund-amount", "nps-score", "event-id", "ts"],
)
def test_a_required_field_left_out_is_a_missing_field(
    fields: dict[str, Any], missing: str
) -> None:
    rejection = only_rejection(decode(jsonl(**fields)))

    assert rejection.code == "missing_field"
    assert missing in rejection.reason


def test_a_message_needs_no_amount_and_an_nps_answer_keeps_its_score() -> None:
    message = only_touch(decode(jsonl(kind="message", amount=None)))
    answer = only_touch(decode(jsonl(kind="nps", amount=None, score=0)))

    assert message.amount == 0.0
    assert (answer.kind, answer.score) == (NPS, 0)


def test_a_foreign_currency_without_a_rate_is_rejected() -> None:
    rejection = only_rejection(decode(jsonl(currency="EUR")))

    assert rejection.code == "currency"
    assert "USD" in rejection.reason
    assert "EUR" in rejection.reason
    assert "`acme`" in rejection.reason


def test_a_foreign_currency_with_a_rate_is_converted() -> None:
    rule = TenantRule(currency="USD", rates={"EUR": 1.25})

    touch = only_touch(
        decode(jsonl(amount=8.0, currency="EUR"), tenants={"acme": rule})
    )

    assert touch.amount == 10.0  # 8 EUR at 1.25 USD each


@pytest.mark.parametrize("currency", ["USD", None])
def test_the_tenants_own_currency_or_none_is_taken_as_is(currency: str | None) -> None:
    rule = TenantRule(currency="USD", rates={"EUR": 1.25})

    touch = only_touch(
        decode(jsonl(amount=8.0, currency=currency), tenants={"acme": rule})
    )

    assert touch.amount == 8.0


def test_a_record_over_the_size_limit_is_too_large_without_its_content() -> None:
    raw = jsonl(segment="SECRETSEGMENT")
    size = len(raw)

    rejection = only_rejection(decode(raw, position=4, max_record_bytes=size - 1))

    assert rejection.code == "too_large"
    assert rejection.position == 4
    assert str(size) in rejection.reason
    assert str(size - 1) in rejection.reason
    assert "SECRETSEGMENT" not in rejection.reason
    assert "acme" not in rejection.reason


def test_a_record_exactly_at_the_size_limit_is_accepted() -> None:
    raw = jsonl()

    only_touch(decode(raw, max_record_bytes=len(raw)))


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize(
    "fields",
    [
        {"customer_id": "x" * TEN_MB},
        {"channel": "x" * TEN_MB},
        {"kind": "x" * TEN_MB},
        {"ts": "x" * TEN_MB},
        {"segment": "x" * TEN_MB},
        {"currency": "x" * TEN_MB},
        {"attributes": {"note": "x" * TEN_MB}},
    ],
    ids=["customer_id", "channel", "kind", "ts", "segment", "currency", "attribute"],
)
def test_a_huge_value_is_never_echoed_in_the_reason(fields: dict[str, Any]) -> None:
    raw = jsonl(**fields)

    rejection = only_rejection(decode(raw, max_record_bytes=2 * TEN_MB))

    assert len(rejection.reason) < 300
    assert "x" * 100 not in rejection.reason


def test_a_huge_unknown_field_name_is_never_echoed_in_the_reason() -> None:
    raw = orjson.dumps({**event(), "x" * TEN_MB: 1})

    rejection = only_rejection(decode(raw, max_record_bytes=2 * TEN_MB))

    assert rejection.code == "unknown_field"
    assert len(rejection.reason) < 300


@pytest.mark.parametrize(
    "attributes",
    [{"note": "x" * 300}, {"k" * 65: "v"}],
    ids=["value-too-long", "key-too-long"],
)
def test_a_bad_attribute_is_not_described_as_an_object(
    attributes: dict[str, str],
) -> None:
    rejection = only_rejection(decode(jsonl(attributes=attributes)))

    assert rejection.code == "invalid_field"
    assert "an object of" not in rejection.reason


@pytest.mark.parametrize(
    ("fields", "event_id"),
    [
        ({"customer_id": ""}, "e1"),
        ({"score": 11, "kind": "nps"}, "e1"),
        ({"ts": "1997-01-01T10:00:00"}, "e1"),
        ({"event_id": "x" * 129, "customer_id": ""}, None),
        ({"event_id": 7, "customer_id": ""}, None),
    ],
    ids=["empty customer", "score", "naive time", "id too long", "id not text"],
)
def test_a_rejection_keeps_the_event_id_when_it_is_readable(
    fields: dict[str, Any], event_id: str | None
) -> None:
    for fmt, raw in (
        ("jsonl", jsonl(**fields)),
        ("msgpack", msgspec.msgpack.encode(event(**fields))),
    ):
        rejection = only_rejection(decode(raw, format=fmt))

        assert rejection.event_id == event_id, fmt


# Digest and sort key


def test_the_digest_ignores_key_order_and_how_the_time_is_written() -> None:
    fields = event()
    reordered = dict(reversed(list({**fields, "ts": TEN_AM_MS}.items())))

    first = only_touch(decode(orjson.dumps(fields)))
    second = only_touch(decode(orjson.dumps(reordered)))

    assert list(reordered)[0] == "amount"
    assert first.digest == second.digest


def test_the_digest_of_a_converted_amount_is_that_of_the_amount_it_became() -> None:
    rule = TenantRule(currency="USD", rates={"EUR": 1.25})

    in_euros = only_touch(
        decode(jsonl(currency="EUR", amount=8.0), tenant_defaults=rule)
    )
    in_dollars = only_touch(decode(jsonl(ts=TEN_AM_MS), tenant_defaults=rule))

    assert in_euros.amount == in_dollars.amount == 10.0
    assert in_euros.digest == in_dollars.digest


def test_the_digest_is_the_same_for_json_and_msgpack() -> None:
    from_json = only_touch(decode(jsonl()))
    from_msgpack = only_touch(decode(msgspec.msgpack.encode(event()), format="msgpack"))

    assert from_json.digest == from_msgpack.digest


@pytest.mark.parametrize(
    "change",
    [{"amount": 10.5}, {"segment": "gold"}, {"ts": TEN_AM_MS + 1}],
    ids=["amount", "segment", "ts"],
)
def test_the_digest_differs_when_the_payload_differs(change: dict[str, Any]) -> None:
    same = only_touch(decode(jsonl()))
    changed = only_touch(decode(jsonl(**change)))

    assert same.digest != changed.digest


def test_sort_key_is_time_tenant_and_customer() -> None:
    decoder = DecodeSettings(format="jsonl", input_name="in").build()

    key = decoder.sort_key(
        1, jsonl(ts="1997-01-01T18:00:00+08:00", customer_id="00004")
    )

    assert key == (TEN_AM_MS, "acme", "00004")


def test_sort_key_of_a_cdnow_row_keeps_the_customer_id_as_written() -> None:
    decoder = DecodeSettings(format="cdnow", input_name="in").build()

    key = decoder.sort_key(1, b" 00004 19970101  2   29.33")

    assert key == (JAN_1_1997_MS, "default", "00004")


@pytest.mark.parametrize(
    "raw",
    [b"{not json", orjson.dumps(event(channel="fax")), b"{}"],
    ids=["malformed", "invalid", "empty-object"],
)
def test_sort_key_of_a_bad_record_is_none(raw: bytes) -> None:
    decoder = DecodeSettings(format="jsonl", input_name="in").build()

    assert decoder.sort_key(1, raw) is None


def test_sort_key_of_a_too_large_record_is_none() -> None:
    raw = jsonl()
    decoder = DecodeSettings(
        format="jsonl", input_name="in", max_record_bytes=len(raw) - 1
    ).build()

    assert decoder.sort_key(1, raw) is None


def test_on_the_live_clock_an_event_too_far_ahead_of_the_wall_clock_is_rejected() -> (
    None
):
    now_ms = time.time_ns() // 1_000_000
    ahead = decode(jsonl(ts=now_ms + 3_600_000), allowed_skew_ms=300_000)
    near = decode(jsonl(ts=now_ms + 60_000), allowed_skew_ms=300_000)

    rejection = only_rejection(ahead)
    assert rejection.code == "ts_out_of_range"
    assert "at most 300 s ahead of the wall clock (clock.allowed_skew)" in (
        rejection.reason
    )
    assert only_touch(near).ts_ms == now_ms + 60_000
