"""Sources: input files split into raw records, the ordering step, and the
bytewax partitioned source that emits them in batches.

A raw record is ``(position, bytes)``: the position is the 1-based line of a
text record, or the byte offset of a MessagePack map. Every partition can
resume from a byte offset (its snapshot).
"""

from __future__ import annotations

import csv
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.decode import Decoder, Format
from state.routing import key_group

RawRecord = tuple[int, bytes]
_FRAME = struct.Struct("<QI")
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"

# Fields of any size are read; the decode step rejects a record over
# max_record_bytes with its size, rather than the csv module failing.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class RawBatch:
    """One batch read by one source partition; `behind` when the partition
    had more to read than the batch holds (a full batch), so that a pause
    before the next one is the reader's, not the input's idleness."""

    partition: int
    records: list[RawRecord]
    final: bool
    behind: bool = False


class CatchUp:
    """Whether a source partition is behind: its last read filled a whole
    batch. The first read that finds nothing after that says the partition
    caught up, with an empty batch, so that key groups time idleness from
    then. It starts behind, so a first empty read also reaches key groups
    resumed from a checkpoint when nothing new comes."""

    def __init__(self) -> None:
        self.behind = True

    def batches(
        self, partition: int, records: list[RawRecord], batch_size: int
    ) -> list[RawBatch]:
        """What a read of `records` sends on: nothing when it found
        nothing and has nothing to say."""
        if records:
            self.behind = len(records) >= batch_size
            return [RawBatch(partition, records, False, behind=self.behind)]
        if self.behind:
            self.behind = False
            return [RawBatch(partition, [], False)]
        return []


# Splitting files into raw records.


def read_records(
    path: Path, fmt: Format, offset: int = 0
) -> Iterator[tuple[RawRecord, int]]:
    """Yield each raw record of a file with the byte offset after it."""
    with path.open("rb") as file:
        if fmt == "msgpack":
            yield from _msgpack_records(file, offset)
        elif fmt == "csv":
            yield from _csv_records(file, offset)
        else:
            yield from _line_records(file, offset, skip_header=fmt == "cdnow")


def _line_records(
    file: BinaryIO, offset: int, *, skip_header: bool
) -> Iterator[tuple[RawRecord, int]]:
    line_no = 0
    if offset:
        # Count the lines before the resume offset to keep positions.
        line_no = file.read(offset).count(b"\n")
    for line in iter(file.readline, b""):
        line_no += 1
        offset += len(line)
        if line_no == 1:
            line = line.removeprefix(_BOM)
            if skip_header and _is_cdnow_header(line):
                continue
        if line.strip():
            yield (line_no, line.rstrip(b"\r\n")), offset


def _is_cdnow_header(line: bytes) -> bool:
    return line.split(maxsplit=1)[:1] == [b"customer_id"]


def read_csv_header(path: Path) -> tuple[str, ...]:
    """Return the header row of a CSV file."""
    with path.open("rb") as file:
        first = file.readline().decode("utf-8-sig", "replace")
    return tuple(next(csv.reader([first]), []))


def _csv_records(file: BinaryIO, offset: int) -> Iterator[tuple[RawRecord, int]]:
    # The csv module decides where a record ends (a quoted field may span
    # lines); the raw record is the exact bytes of the lines it read.
    line_no = 0
    if offset:
        line_no = file.read(offset).count(b"\n")
    else:
        header = file.readline()
        line_no, offset = 1, len(header)
    consumed: list[bytes] = []

    def lines() -> Iterator[str]:
        for line in iter(file.readline, b""):
            consumed.append(line)
            yield line.decode("utf-8", "replace")

    reader = csv.reader(lines())
    while True:
        try:
            next(reader)
        except StopIteration:
            break
        except csv.Error:
            pass  # the decode step rejects the record with the reason
        raw = b"".join(consumed)
        consumed.clear()
        start = line_no + 1
        line_no += raw.count(b"\n") + (not raw.endswith(b"\n"))
        offset += len(raw)
        if raw.strip():
            yield (start, raw.rstrip(b"\r\n")), offset


def _msgpack_records(file: BinaryIO, offset: int) -> Iterator[tuple[RawRecord, int]]:
    file.seek(offset)
    unpacker = msgpack.Unpacker(max_buffer_size=1 << 30)
    buffer = bytearray()
    buffer_start = consumed = offset
    while chunk := file.read(_CHUNK):
        unpacker.feed(chunk)
        buffer += chunk
        while True:
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                break
            except Exception:  # noqa: BLE001 - msgpack raises several kinds
                # The stream cannot be split past a malformed object: the
                # rest of the file becomes one record, rejected downstream.
                buffer += file.read()
                rest = bytes(buffer[consumed - buffer_start :])
                yield (consumed, rest), buffer_start + len(buffer)
                return
            end = offset + unpacker.tell()
            yield (
                (consumed, bytes(buffer[consumed - buffer_start : end - buffer_start])),
                end,
            )
            consumed = end
        del buffer[: consumed - buffer_start]
        buffer_start = consumed
    if buffer:
        yield (consumed, bytes(buffer)), consumed + len(buffer)


# The ordering step: spool files of time-ordered records, one per partition.


def write_spool(path: Path, records: list[RawRecord]) -> None:
    with path.open("wb") as file:
        for position, raw in records:
            file.write(_FRAME.pack(position, len(raw)))
            file.write(raw)


def read_spool(path: Path, offset: int = 0) -> Iterator[tuple[RawRecord, int]]:
    with path.open("rb") as file:
        file.seek(offset)
        while header := file.read(_FRAME.size):
            position, size = _FRAME.unpack(header)
            raw = file.read(size)
            offset += _FRAME.size + size
            yield (position, raw), offset


def order_records(
    path: Path,
    fmt: Format,
    decoder: Decoder,
    key_groups: int,
    partitions: int,
    spool_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Path], int]:
    """Sort a file's records by event time, ties by position, into spools.

    Records go to partition ``key_group % partitions``, so each key group
    reads from one time-ordered partition. A record whose time or customer
    cannot be read goes first in partition 0, to be rejected by the decode
    step with its reason. Returns the spool paths and the record count.
    """
    keyed: list[list[tuple[int, int, bytes]]] = [[] for _ in range(partitions)]
    count = 0
    for (position, raw), offset in read_records(path, fmt):
        count += 1
        if progress is not None and count % 4096 == 0:
            progress(offset)
        key = decoder.sort_key(position, raw)
        if key is None:
            keyed[0].append((-1, position, raw))
            continue
        ts_ms, tenant, customer_id = key
        part = key_group(tenant, customer_id, key_groups) % partitions
        keyed[part].append((ts_ms, position, raw))
    spools = []
    for part, items in enumerate(keyed):
        items.sort(key=lambda item: (item[0], item[1]))
        spool = spool_dir / f"partition-{part}.spool"
        write_spool(spool, [(position, raw) for _, position, raw in items])
        spools.append(spool)
    return spools, count


# The bytewax source.


@dataclass(frozen=True)
class PartitionSpec:
    """Where one source partition reads: a spool, or the input file itself.

    With `follow`, the file is read as it grows (line formats only) until
    the source's stop event is set.
    """

    path: Path
    fmt: Format | None  # None: a spool file of the ordering step
    follow: bool = False


class RecordSource(FixedPartitionedSource[RawBatch, int]):
    """A fixed set of partitions, each emitting batches of raw records.

    Each partition's last batch is marked ``final`` so that the decode step
    can carry the end of input to every key group. `progress`, when given,
    is a shared counter of bytes read, for the progress bar.
    """

    def __init__(
        self,
        specs: list[PartitionSpec],
        batch_size: int,
        progress: Any = None,
        stop: Any = None,
    ) -> None:
        self.specs = specs
        self.batch_size = batch_size
        self.progress = progress
        self.stop = stop

    def list_parts(self) -> list[str]:
        return [str(index) for index in range(len(self.specs))]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[RawBatch, int]:
        index = int(for_part)
        spec = self.specs[index]
        if spec.follow:
            return FollowPartition(
                index, spec, self.batch_size, resume_state or 0, self.stop
            )
        return RecordPartition(
            index, spec, self.batch_size, resume_state or 0, self.progress
        )


class RecordPartition(StatefulSourcePartition[RawBatch, int]):
    """Reads one file or spool from a byte offset, a batch at a time."""

    def __init__(
        self,
        index: int,
        spec: PartitionSpec,
        batch_size: int,
        offset: int,
        progress: Any,
    ) -> None:
        self.index = index
        self.batch_size = batch_size
        self.offset = offset
        self.progress = progress
        if spec.fmt is None:
            self._records = read_spool(spec.path, offset)
        else:
            self._records = read_records(spec.path, spec.fmt, offset)
        self._done = False

    def next_batch(self) -> list[RawBatch]:
        if self._done:
            raise StopIteration
        records: list[RawRecord] = []
        start = self.offset
        for record, offset in self._records:
            records.append(record)
            self.offset = offset
            if len(records) >= self.batch_size:
                break
        else:
            self._done = True
        if self.progress is not None:
            with self.progress.get_lock():
                self.progress.value += self.offset - start
        return [RawBatch(self.index, records, self._done)]

    def snapshot(self) -> int:
        return self.offset


class FollowPartition(StatefulSourcePartition[RawBatch, int]):
    """Reads a line file as it grows: each complete line once, a partial
    last line when its newline arrives. Ends, after what is complete, once
    `stop` (a multiprocessing event) is set.
    """

    POLL_S = 0.05

    def __init__(
        self, index: int, spec: PartitionSpec, batch_size: int, offset: int, stop: Any
    ) -> None:
        self.index = index
        self.batch_size = batch_size
        self.offset = offset
        self.stop = stop
        self.skip_header = spec.fmt == "cdnow"
        self.file = spec.path.open("rb")
        self.line_no = self.file.read(offset).count(b"\n") if offset else 0
        self.file.seek(offset)
        self._idle = False
        self.catch_up = CatchUp()

    def next_batch(self) -> list[RawBatch]:
        stopping = self.stop is not None and self.stop.is_set()
        records: list[RawRecord] = []
        while len(records) < self.batch_size:
            line = self.file.readline()
            if not line.endswith(b"\n"):
                # Nothing more, or a line still being written: read it again.
                self.file.seek(self.offset)
                break
            self.offset += len(line)
            self.line_no += 1
            if self.line_no == 1:
                line = line.removeprefix(_BOM)
                if self.skip_header and _is_cdnow_header(line):
                    continue
            if line.strip():
                records.append((self.line_no, line.rstrip(b"\r\n")))
        self._idle = not records
        batches = self.catch_up.batches(self.index, records, self.batch_size)
        if batches:
            return batches
        if stopping:
            self.file.close()
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        if self._idle:
            return datetime.now(UTC) + timedelta(seconds=self.POLL_S)
        return None

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self.file.close()
