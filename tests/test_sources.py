"""Source partitions: splitting files into records, and resuming from offsets."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from stream.sources import PartitionSpec, RecordPartition, read_records
from tests.support import event, write_jsonl


def drain(partition: RecordPartition) -> list[tuple[int, bytes]]:
    records = []
    while True:
        try:
            (batch,) = partition.next_batch()
        except StopIteration:
            return records
        records.extend(batch.records)


def make_file(tmp_path: Path, fmt: str) -> Path:
    events = [event(event_id=f"e{i}", ts=1_700_000_000_000 + i) for i in range(7)]
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "e.jsonl", events)
    if fmt == "msgpack":
        path = tmp_path / "e.msgpack"
        path.write_bytes(b"".join(msgspec.msgpack.encode(e) for e in events))
        return path
    if fmt == "csv":
        path = tmp_path / "e.csv"
        rows = ["event_id,customer_id,note"] + [
            f'e{i},c{i},"two\nlines {i}"' for i in range(7)
        ]
        path.write_text("\n".join(rows) + "\n")
        return path
    path = tmp_path / "e.txt"
    rows = [" customer_id  date number_of_cds  dollar_value"]
    rows += [f" {i:05d} 19970101  1   11.77" for i in range(7)]
    path.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack", "csv", "cdnow"])
def test_a_partition_resumed_from_its_snapshot_continues_where_it_stopped(
    tmp_path: Path, fmt: str
) -> None:
    path = make_file(tmp_path, fmt)
    spec = PartitionSpec(path, fmt)  # type: ignore[arg-type]
    everything = drain(RecordPartition(0, spec, 3, 0, None))

    first = RecordPartition(0, spec, 3, 0, None)
    (batch,) = first.next_batch()
    resumed = RecordPartition(0, spec, 3, first.snapshot(), None)
    rest = drain(resumed)

    assert len(everything) == 7
    assert batch.records + rest == everything


def test_text_positions_are_line_numbers_and_skip_blank_lines_and_the_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e.txt"
    path.write_bytes(
        b" customer_id  date number_of_cds  dollar_value\r\n"
        b" 00001 19970101  1   11.77\r\n"
        b"\r\n"
        b" 00002 19970112  1   12.00"
    )

    records = [record for record, _ in read_records(path, "cdnow")]

    assert records == [
        (2, b" 00001 19970101  1   11.77"),
        (4, b" 00002 19970112  1   12.00"),
    ]


def test_a_csv_record_spanning_lines_keeps_its_first_line_as_position(
    tmp_path: Path,
) -> None:
    path = make_file(tmp_path, "csv")

    records = [record for record, _ in read_records(path, "csv")]

    assert [position for position, _ in records] == [2, 4, 6, 8, 10, 12, 14]
    assert records[0][1] == b'e0,c0,"two\nlines 0"'


def test_msgpack_positions_are_byte_offsets(tmp_path: Path) -> None:
    first = msgspec.msgpack.encode(event(event_id="a"))
    second = msgspec.msgpack.encode(event(event_id="bb"))
    path = tmp_path / "e.msgpack"
    path.write_bytes(first + second)

    records = [record for record, _ in read_records(path, "msgpack")]

    assert records == [(0, first), (len(first), second)]


def test_the_last_batch_of_a_partition_is_marked_final(tmp_path: Path) -> None:
    path = make_file(tmp_path, "jsonl")
    partition = RecordPartition(0, PartitionSpec(path, "jsonl"), 5, 0, None)

    (first,) = partition.next_batch()
    (second,) = partition.next_batch()

    assert (len(first.records), first.final) == (5, False)
    assert (len(second.records), second.final) == (2, True)
    with pytest.raises(StopIteration):
        partition.next_batch()
