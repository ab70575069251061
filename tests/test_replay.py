"""End-to-end: real bytewax replays over real files, on 1 and 2 workers."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import date
from pathlib import Path

import msgspec
import pytest

from stream.replay import ReplayOptions, run_replay
from tests.support import (
    CDNOW_MASTER,
    CDNOW_SAMPLE,
    CDNOW_SUMMARY,
    event,
    read_jsonl,
    write_jsonl,
)

AS_OF = date(1997, 9, 30)


def replay(tmp_path: Path, source: Path, fmt: str, name: str, **options: object):
    out = tmp_path / name
    summary = run_replay(ReplayOptions(input=source, format=fmt, out=out, **options))
    return summary, out


def cdnow_by_hand(path: Path, as_of: date | None) -> dict[str, dict[str, float]]:
    """Per-customer statistics computed directly from the CDNOW text."""
    days: dict[str, dict[date, float]] = defaultdict(lambda: defaultdict(float))
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        stamp = parts[-3]
        day = date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:]))
        if as_of is None or day <= as_of:
            days[parts[0]][day] += float(parts[-1])
    end = as_of or max(max(spend) for spend in days.values())
    expected = {}
    for customer, spend in days.items():
        ordered = sorted(spend)
        repeats = len(ordered) - 1
        expected[customer] = {
            "repeat_purchases": repeats,
            "recency_days": (ordered[-1] - ordered[0]).days,
            "age_days": (end - ordered[0]).days,
            "monetary_mean": (
                sum(spend[day] for day in ordered[1:]) / repeats if repeats else None
            ),
        }
    return expected


@pytest.mark.parametrize("workers", [1, 2])
def test_cdnow_as_of_gives_customer_00004_two_repeats_213_and_272_days(
    tmp_path: Path, workers: int
) -> None:
    summary, out = replay(
        tmp_path, CDNOW_MASTER, "cdnow", "out", as_of="1997-09-30", workers=workers
    )

    customers = {c["customer_id"]: c for c in read_jsonl(out / "customers.jsonl")}
    record = customers["00004"]
    assert record["repeat_purchases"] == 2
    assert record["recency_days"] == 213
    assert record["age_days"] == 272
    assert record["first_purchase_at"] == "1997-01-01T00:00:00.000Z"
    assert record["last_purchase_at"] == "1997-08-02T00:00:00.000Z"
    # (29.73 + 14.96) / 2, the two repeat transactions
    assert record["monetary_mean"] == pytest.approx(22.345)
    assert summary.counts.read == 69_659
    assert summary.counts.read == summary.counts.applied + summary.counts.after_as_of


@pytest.mark.slow
def test_full_cdnow_history_matches_a_direct_count_for_every_customer(
    tmp_path: Path,
) -> None:
    summary, out = replay(tmp_path, CDNOW_MASTER, "cdnow", "out")

    expected = cdnow_by_hand(CDNOW_MASTER, None)
    records = read_jsonl(out / "customers.jsonl")
    assert summary.counts.read == summary.counts.applied == 69_659
    assert summary.customers == len(records) == len(expected) == 23_570
    for record in records:
        want = expected[record["customer_id"]]
        assert record["repeat_purchases"] == want["repeat_purchases"]
        assert record["recency_days"] == want["recency_days"]
        assert record["age_days"] == want["age_days"]
        if want["monetary_mean"] is None:
            assert record["monetary_mean"] is None
        else:
            assert record["monetary_mean"] == pytest.approx(want["monetary_mean"])


def test_cdnow_sample_reproduces_the_published_calibration_summary(
    tmp_path: Path,
) -> None:
    _, out = replay(tmp_path, CDNOW_SAMPLE, "cdnow", "out", as_of="1997-09-30")

    # The published summary is keyed by the id in the sample, column two.
    sample_ids = {}
    for line in CDNOW_SAMPLE.read_text().splitlines():
        customer_id, sample_id = line.split()[:2]
        sample_ids[str(int(sample_id))] = customer_id
    records = {c["customer_id"]: c for c in read_jsonl(out / "customers.jsonl")}
    with CDNOW_SUMMARY.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(records) == 2_357
    for row in rows:
        record = records[sample_ids[row["ID"]]]
        assert record["repeat_purchases"] == int(row["x"])
        # The summary gives weeks to two decimals.
        assert record["recency_days"] / 7 == pytest.approx(float(row["t_x"]), abs=0.006)
        assert record["age_days"] / 7 == pytest.approx(float(row["T"]), abs=0.006)
        if int(row["x"]):
            assert record["monetary_mean"] == pytest.approx(
                float(row["zbar"]), abs=0.006
            )


def mixed_file(path: Path) -> Path:
    """Valid events with one of each kind of bad record, on known lines."""
    huge = "x" * (10 * 1024 * 1024)
    return write_jsonl(
        path,
        [
            event(event_id="a1", customer_id="00004", ts="2024-03-01T10:00:00Z"),  # 1
            b'{"event_id": "broken", ',  # 2: malformed JSON
            event(event_id="a2", amount="ten"),  # 3: wrong type
            event(event_id="a3", channel="fax"),  # 4: unknown channel
            event(event_id="a4", customer_id=""),  # 5: empty customer id
            event(event_id="a5", ts="2150-01-01T00:00:00Z"),  # 6: out of range
            event(event_id="a6", customer_id=huge),  # 7: a 10 MB string
            event(event_id="a1", customer_id="00004", ts="2024-03-01T10:00:00Z"),  # 8
            event(event_id="a7", customer_id="4", ts="2024-03-02T10:00:00Z"),  # 9
            event(event_id="a1", customer_id="00004", ts="2024-03-01T10:00:00Z"),  # 10
            event(  # 11: same id, other payload: a conflict
                event_id="a1", customer_id="00004", ts="2024-03-01T10:00:00Z", amount=99
            ),
            event(  # 12
                event_id="m1",
                customer_id="00004",
                kind="message",
                channel="wechat",
                amount=None,
                ts=1_709_460_000_000,
            ),
        ],
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_of_mixed_bad_records_completes_and_accounts_for_every_line(
    tmp_path: Path, workers: int
) -> None:
    source = mixed_file(tmp_path / "mixed.jsonl")

    summary, out = replay(tmp_path, source, "jsonl", "out", workers=workers)

    counts = summary.counts
    assert counts.read == 12
    assert counts.applied == 3  # lines 1, 9 and 12
    assert counts.duplicates == 2  # lines 8 and 10
    assert counts.after_as_of == 0
    assert counts.rejected == {
        "conflict": 1,  # line 11
        "invalid_field": 2,  # lines 3 and 5
        "invalid_value": 1,  # line 4
        "malformed": 1,  # line 2
        "too_large": 1,  # line 7
        "ts_out_of_range": 1,  # line 6
    }
    assert counts.applied + counts.duplicates + counts.rejected_total == counts.read

    rejected = read_jsonl(out / "rejected.jsonl")
    assert [entry["line"] for entry in rejected] == [2, 3, 4, 5, 6, 7, 11]
    by_line = {entry["line"]: entry for entry in rejected}
    assert "malformed" in by_line[2]["reason"]
    assert "$.amount" in by_line[3]["reason"]
    assert 'got "fax"' in by_line[4]["reason"]
    assert (
        "wechat, email, meeting, phone, app, web, livestream, store"
        in (by_line[4]["reason"])
    )
    assert "$.customer_id" in by_line[5]["reason"]
    assert "over the limit" in by_line[7]["reason"]
    assert "2100-01-01" in by_line[6]["reason"]
    assert by_line[11]["code"] == "conflict" and "line 1" in by_line[11]["reason"]
    for line in (out / "rejected.jsonl").read_bytes().splitlines():
        assert len(line) < 1_000, "a rejection must not echo a huge value"

    customers = {c["customer_id"]: c for c in read_jsonl(out / "customers.jsonl")}
    assert set(customers) == {"00004", "4"}, "00004 and 4 are different customers"
    assert customers["00004"]["orders"] == 1, "a duplicate is applied once"
    assert customers["00004"]["total_spend"] == 10.0
    assert customers["00004"]["channels"]["wechat"]["inbound"] == 1


def test_replay_output_is_the_same_bytes_on_1_and_2_workers(tmp_path: Path) -> None:
    source = mixed_file(tmp_path / "mixed.jsonl")
    _, one = replay(tmp_path, source, "jsonl", "one", workers=1)
    _, two = replay(tmp_path, source, "jsonl", "two", workers=2)
    _, cdnow_one = replay(tmp_path, CDNOW_SAMPLE, "cdnow", "c1", workers=1)
    _, cdnow_two = replay(tmp_path, CDNOW_SAMPLE, "cdnow", "c2", workers=2)

    for name in ("customers.jsonl", "rejected.jsonl", "interventions.jsonl"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
        assert (cdnow_one / name).read_bytes() == (cdnow_two / name).read_bytes()


def test_unsorted_input_is_ordered_by_event_time_before_it_is_applied(
    tmp_path: Path,
) -> None:
    # Written out of order: the late first purchase must still be the first.
    events = [
        event(event_id="3", ts="2024-03-20T09:00:00Z", amount=30.0),
        event(event_id="1", ts="2024-03-01T09:00:00Z", amount=10.0),
        event(event_id="2", ts="2024-03-10T09:00:00Z", amount=20.0),
    ]
    source = write_jsonl(tmp_path / "unsorted.jsonl", events)
    presorted = write_jsonl(
        tmp_path / "sorted.jsonl", sorted(events, key=lambda e: str(e["ts"]))
    )

    _, out = replay(tmp_path, source, "jsonl", "a")
    _, out_presorted = replay(tmp_path, presorted, "jsonl", "b", presorted=True)

    (record,) = read_jsonl(out / "customers.jsonl")
    assert record["late_orders"] == 0
    assert record["repeat_purchases"] == 2
    assert record["recency_days"] == 19
    assert record["monetary_mean"] == 25.0
    assert (out / "customers.jsonl").read_bytes() == (
        out_presorted / "customers.jsonl"
    ).read_bytes()


def test_jsonl_msgpack_and_csv_inputs_give_the_same_customers(tmp_path: Path) -> None:
    events = [
        event(event_id=f"e{i}", customer_id=f"c{i % 3}", ts=1_709_280_000_000 + i * 9e7)
        for i in range(12)
    ]
    for item in events:
        item["ts"] = int(item["ts"])
    jsonl = write_jsonl(tmp_path / "events.jsonl", events)
    packed = tmp_path / "events.msgpack"
    packed.write_bytes(b"".join(msgspec.msgpack.encode(item) for item in events))
    table = tmp_path / "events.csv"
    with table.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(events[0]))
        writer.writeheader()
        writer.writerows(events)

    outputs = [
        replay(tmp_path, jsonl, "jsonl", "j")[1],
        replay(tmp_path, packed, "msgpack", "m")[1],
        replay(tmp_path, table, "csv", "c")[1],
    ]

    first = (outputs[0] / "customers.jsonl").read_bytes()
    assert len(read_jsonl(outputs[0] / "customers.jsonl")) == 3
    for out in outputs[1:]:
        assert (out / "customers.jsonl").read_bytes() == first


def test_a_truncated_msgpack_file_rejects_the_broken_tail_by_offset(
    tmp_path: Path,
) -> None:
    good = msgspec.msgpack.encode(event(event_id="ok"))
    broken = msgspec.msgpack.encode(event(event_id="cut"))[:-5]
    source = tmp_path / "events.msgpack"
    source.write_bytes(good + broken)

    summary, out = replay(tmp_path, source, "msgpack", "out")

    assert summary.counts.read == 2
    assert summary.counts.applied == 1
    (entry,) = read_jsonl(out / "rejected.jsonl")
    assert entry["offset"] == len(good)
    assert entry["code"] == "malformed"


def test_a_generated_stream_of_all_channels_is_applied_whole_on_1_and_2_workers(
    tmp_path: Path,
) -> None:
    from load_tests.generate import generate_events

    events = list(generate_events(3_000, 400, seed=7))
    source = write_jsonl(tmp_path / "generated.jsonl", events)

    summary_one, one = replay(tmp_path, source, "jsonl", "one", workers=1)
    summary_two, two = replay(tmp_path, source, "jsonl", "two", workers=2)

    assert summary_one.counts.applied == summary_two.counts.applied == 3_000
    assert (one / "customers.jsonl").read_bytes() == (
        two / "customers.jsonl"
    ).read_bytes()
    records = read_jsonl(one / "customers.jsonl")
    inbound = sum(
        channel["inbound"]
        for record in records
        for channel in record["channels"].values()
    )
    outbound = sum(
        channel["outbound"]
        for record in records
        for channel in record["channels"].values()
    )
    assert inbound + outbound == 3_000
    assert inbound == sum(1 for e in events if e["direction"] == "inbound")
    orders = sum(record["orders"] for record in records)
    assert orders == sum(1 for e in events if e["kind"] == "order")


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_inside_a_worker_fails_the_run_and_names_its_cause(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operators.keygroup import KeyGroupActor
    from stream.errors import RunError

    def broken(self: object, batches: object) -> None:
        msg = "the table is on fire"
        raise RuntimeError(msg)

    monkeypatch.setattr(KeyGroupActor, "on_batch", broken)
    source = write_jsonl(tmp_path / "e.jsonl", [event()])
    out = tmp_path / "out"
    out.mkdir()
    (out / "customers.jsonl").write_bytes(b"previous\n")

    with pytest.raises(RunError, match="the table is on fire") as failure:
        run_replay(
            ReplayOptions(input=source, format="jsonl", out=out, workers=workers)
        )

    assert "replay failed in worker" in str(failure.value)
    assert (out / "customers.jsonl").read_bytes() == b"previous\n"
    assert not list(out.glob(".touchstream-work*"))
