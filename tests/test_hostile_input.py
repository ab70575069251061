"""Hostile and odd input: every record is accounted for, nothing crashes."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson
import pytest

from operators.dedupe import Deduper
from stream.config import Config
from stream.replay import ReplayOptions, run_replay
from tests.helpers_unit import make_touch
from tests.support import event, read_jsonl, touchstream, write_jsonl

DAY_MS = 86_400_000
HEADER = "event_id,tenant,customer_id,source,channel,kind,direction,ts,amount\n"


def replay(source: Path, fmt: str, out: Path, **options: object):
    return run_replay(ReplayOptions(input=source, format=fmt, out=out, **options))


def accounted(summary) -> int:  # type: ignore[no-untyped-def]
    counts = summary.counts
    return (
        counts.applied + counts.duplicates + counts.after_as_of + counts.rejected_total
    )


def test_a_stray_quote_inside_a_csv_field_loses_no_later_row(tmp_path: Path) -> None:
    source = tmp_path / "q.csv"
    row = "{},t,{},erp,store,order,inbound,2020-01-01T00:00:00Z,10\n"
    source.write_text(
        HEADER
        + row.format("a1", "c1")
        + row.format("a2", 'c2 "vip')
        + row.format("a3", "c3")
        + row.format("a4", "c4")
    )

    summary = replay(source, "csv", tmp_path / "o")

    assert summary.counts.read == 4
    assert summary.counts.applied == 4
    ids = [c["customer_id"] for c in read_jsonl(tmp_path / "o" / "customers.jsonl")]
    assert ids == ["c1", 'c2 "vip', "c3", "c4"]


def test_a_huge_csv_field_is_rejected_as_too_large_with_its_line(
    tmp_path: Path,
) -> None:
    source = tmp_path / "big.csv"
    row = "a{0},t,c{0},erp,store,order,inbound,2020-01-01T00:00:00Z,10\n"
    source.write_text(
        HEADER
        + row.format(1)
        + f'a2,t,"{"x" * 200_000}",erp,store,order,inbound,2020-01-01T00:00:00Z,1\n'
        + row.format(3)
    )

    summary = replay(source, "csv", tmp_path / "o")

    assert summary.counts.read == 3
    assert summary.counts.applied == 2
    (entry,) = read_jsonl(tmp_path / "o" / "rejected.jsonl")
    assert (entry["line"], entry["code"]) == (3, "too_large")
    assert len(entry["excerpt"]) < 100


def test_a_csv_rejection_shows_the_csv_text_and_the_value_found(
    tmp_path: Path,
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(
        HEADER + "a1,t,c1,erp,store,order,inbound,2020-01-01T00:00:00Z,-3\n"
    )

    replay(source, "csv", tmp_path / "o")

    (entry,) = read_jsonl(tmp_path / "o" / "rejected.jsonl")
    assert entry["excerpt"].startswith("a1,t,c1,erp,store,order")
    assert entry["reason"].endswith('got "-3"')


def test_unicode_digits_in_a_csv_timestamp_are_rejected_not_a_crash(
    tmp_path: Path,
) -> None:
    source = tmp_path / "u.csv"
    source.write_text(HEADER + "a1,t,c1,erp,store,order,inbound,\u00b2,10\n")

    summary = replay(source, "csv", tmp_path / "o")

    assert summary.counts.rejected == {"invalid_field": 1}


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_a_deeply_nested_record_is_rejected_and_the_run_goes_on(
    tmp_path: Path, fmt: str
) -> None:
    nested: object = []
    for _ in range(3_000):
        nested = [nested]
    bad = {**event(event_id="deep"), "attributes": {"a": nested}}
    good = event(event_id="fine")
    source = tmp_path / f"deep.{fmt}"
    if fmt == "jsonl":
        source.write_bytes(
            b'{"event_id":"deep","attributes":{"a":'
            + b"[" * 3_000
            + b"]" * 3_000
            + b"}}\n"
            + orjson.dumps(good)
            + b"\n"
        )
    else:
        source.write_bytes(
            b"\x82\xa8event_id\xa4deep\xaaattributes\x81\xa1a"
            + b"\x91" * 3_000
            + b"\x90"
            + msgspec.msgpack.encode(good)
        )
    del bad

    summary = replay(source, fmt, tmp_path / "o")

    if fmt == "jsonl":
        assert summary.counts.read == 2
        assert summary.counts.applied == 1
    else:
        # A MessagePack stream cannot be split past an object its reader
        # refuses: the rest of the file is one rejected record (README).
        assert summary.counts.read == 1
        assert summary.counts.applied == 0
    assert summary.counts.rejected_total == 1


def test_a_cdnow_file_whose_first_row_has_a_letter_keeps_that_row(
    tmp_path: Path,
) -> None:
    source = tmp_path / "cd.txt"
    source.write_bytes(b"A0001 19970101 1 3.00\nA0002 19970102 1 4.00\n")

    summary = replay(source, "cdnow", tmp_path / "o")

    assert summary.counts.read == summary.counts.applied == 2


def test_cdnow_ids_that_are_not_utf8_are_rejected_not_merged(tmp_path: Path) -> None:
    source = tmp_path / "cd.txt"
    source.write_bytes(b"0001\xff 19970101 1 3.00\n0001\xfe 19970102 1 4.00\n")

    summary = replay(source, "cdnow", tmp_path / "o")

    assert summary.counts.rejected == {"invalid_field": 2}


def test_a_byte_order_mark_before_the_first_json_line_is_ignored(
    tmp_path: Path,
) -> None:
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(event()) + b"\n")

    summary = replay(source, "jsonl", tmp_path / "o")

    assert summary.counts.applied == 1


def test_the_tenant_currency_written_out_is_the_same_event_as_none(
    tmp_path: Path,
) -> None:
    source = write_jsonl(
        tmp_path / "e.jsonl", [event(), event(currency="USD"), event(amount=10)]
    )

    summary = replay(source, "jsonl", tmp_path / "o")

    assert (summary.counts.applied, summary.counts.duplicates) == (1, 2)


def test_an_amount_out_of_range_after_conversion_is_rejected(tmp_path: Path) -> None:
    config = msgspec.convert(
        {"tenant_defaults": {"currency": "USD", "rates": {"EUR": 1e300}}}, Config
    )
    source = write_jsonl(tmp_path / "e.jsonl", [event(currency="EUR", amount=1e10)])

    summary = replay(source, "jsonl", tmp_path / "o", config=config)

    assert summary.counts.rejected == {"invalid_field": 1}


def test_dedupe_verdicts_do_not_depend_on_when_memory_is_freed() -> None:
    first = make_touch(event_id="x", ts_ms=0, digest=1)
    eight_days_on = make_touch(event_id="x", ts_ms=8 * DAY_MS + 1, digest=2)
    kept, freed = Deduper(7 * DAY_MS), Deduper(7 * DAY_MS)
    kept.check(first)
    freed.check(first)
    freed.forget_before(8 * DAY_MS)

    assert kept.check(eight_days_on)[0] == freed.check(eight_days_on)[0] == "new"


def test_a_tiny_batch_size_gives_the_same_bytes_on_1_and_2_workers(
    tmp_path: Path,
) -> None:
    t0 = 1_700_000_000_000
    source = write_jsonl(
        tmp_path / "e.jsonl",
        [
            event(event_id="x", customer_id="C0", ts=t0, amount=10),
            event(event_id="f", customer_id="C1", ts=t0 + 7 * DAY_MS + DAY_MS // 2),
            event(event_id="g", customer_id="C2", ts=t0 + 8 * DAY_MS),
            event(event_id="x", customer_id="C0", ts=t0 + 8 * DAY_MS + 1, amount=11),
        ],
    )
    config = Config(batch_size=1)

    one = replay(source, "jsonl", tmp_path / "one", config=config, workers=1)
    two = replay(source, "jsonl", tmp_path / "two", config=config, workers=2)
    default = replay(source, "jsonl", tmp_path / "default")

    assert one.counts.applied == two.counts.applied == default.counts.applied == 4
    for name in ("customers.jsonl", "rejected.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (
            tmp_path / "two" / name
        ).read_bytes()


def test_every_record_is_accounted_for_in_a_file_of_odd_lines(tmp_path: Path) -> None:
    source = tmp_path / "odd.jsonl"
    source.write_bytes(
        b"[1, 2]\n"
        b"42\n"
        b"null\n"
        b'"a string"\n'
        b"\xff\xfe not utf-8\n"
        b'{"event_id": "nul\\u0000"}\n'
        + orjson.dumps(event(ts=2**62)).replace(b"4611686018427387904", b"9" * 22)
        + b"\n"
        + orjson.dumps(event(ts=1.5))
        + b"\n"
        + orjson.dumps(event(ts="2024-03-01T10:00:00"))
        + b"\n"
        + orjson.dumps(event(attributes={str(i): "v" for i in range(1000)}))
        + b"\n"
        + orjson.dumps(event(event_id="ok"))
    )

    summary = replay(source, "jsonl", tmp_path / "o")

    assert summary.counts.read == 11
    assert summary.counts.applied == 1
    assert accounted(summary) == 11
    rejected = read_jsonl(tmp_path / "o" / "rejected.jsonl")
    assert [entry["line"] for entry in rejected] == list(range(1, 11))


def test_log_level_and_as_of_in_epoch_ms_are_accepted_after_the_command(
    tmp_path: Path,
) -> None:
    source = write_jsonl(
        tmp_path / "e.jsonl", [event(ts=1_000), event(event_id="2", ts=3_000)]
    )

    result = touchstream(
        "replay", source, "--format", "jsonl", "--as-of", "2000", "--json",
        "--log-level", "warning", "--out", tmp_path / "o",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary = orjson.loads(result.stdout)
    assert (summary["applied"], summary["after_as_of"]) == (1, 1)


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        ('[columns]\ncustomr_id = "client"\n', "customr_id"),
        ('[constants]\nchannel = "fax"\n', "fax"),
        ('[columns]\nattributes = "client"\n', "attributes"),
    ],
)
def test_a_wrong_csv_map_is_bad_usage_naming_the_key(
    tmp_path: Path, mapping: str, named: str
) -> None:
    source = tmp_path / "e.csv"
    source.write_text("client,ts\nc1,1000\n")
    (tmp_path / "map.toml").write_text(mapping)

    result = touchstream(
        "replay", source, "--format", "csv", "--csv-map", tmp_path / "map.toml",
        "--out", tmp_path / "o",
    )  # fmt: skip

    assert result.returncode == 2
    assert named in result.stderr
