"""``touchstream publish`` and ``touchstream subscribe``: the clients that
go with ``touchstream serve``, and what a client in another language does.

Every call sends ``authorization: Bearer TOKEN``; ``--tls-ca`` switches to
TLS (with ``--tls-cert``/``--tls-key`` for mutual TLS).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import orjson
from google.protobuf import json_format
from touchstream.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    interventions_pb2,
    interventions_pb2_grpc,
)

from stream.errors import UsageError
from stream.sources import read_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connection:
    """Where a client connects and how it proves who it is."""

    address: str
    token: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = 16 << 20

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if self.tls_ca is None:
            return grpc.insecure_channel(self.address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes(),
            private_key=None if self.tls_key is None else self.tls_key.read_bytes(),
            certificate_chain=(
                None if self.tls_cert is None else self.tls_cert.read_bytes()
            ),
        )
        return grpc.secure_channel(self.address, credentials, options=options)


def read_token(token: str | None, token_file: Path | None) -> str:
    """The token from an option, a file, or TOUCHSTREAM_TOKEN."""
    if token:
        return token
    if token_file is not None:
        try:
            return token_file.read_text(encoding="utf-8").strip()
        except OSError as ex:
            msg = f"cannot read --token-file {token_file}: {ex.strerror}"
            raise UsageError(msg) from None
    env = os.environ.get("TOUCHSTREAM_TOKEN")
    if env:
        return env
    msg = "no token: give --token, --token-file or TOUCHSTREAM_TOKEN"
    raise UsageError(msg)


@dataclass
class PublishSummary:
    """What the server acknowledged; `last_batch` is where to resume."""

    batches: int = 0
    accepted: int = 0
    rejected: int = 0
    last_batch: str = ""


def file_batches(
    path: Path, fmt: str, batch_events: int
) -> Iterator[ingest_pb2.EventBatch]:
    """A JSON lines or MessagePack file as packed batches of events."""
    if fmt not in ("jsonl", "msgpack"):
        msg = f"publish reads jsonl or msgpack - got --format {fmt}"
        raise UsageError(msg)
    chunk: list[bytes] = []
    first_position = 0

    def batch() -> ingest_pb2.EventBatch:
        batch_id = f"{path.name}:{first_position}"
        if fmt == "jsonl":
            return ingest_pb2.EventBatch(
                batch_id=batch_id, json_lines=b"\n".join(chunk)
            )
        return ingest_pb2.EventBatch(batch_id=batch_id, msgpack=b"".join(chunk))

    for (position, record), _ in read_records(path, fmt):  # type: ignore[arg-type]
        if not chunk:
            first_position = position
        chunk.append(record)
        if len(chunk) >= batch_events:
            yield batch()
            chunk = []
    if chunk:
        yield batch()


def publish(
    connection: Connection,
    path: Path,
    fmt: str,
    batch_events: int,
    rejected_out: IO[str],
    summary: PublishSummary,
) -> None:
    """Stream a file's events to the server, counting into `summary` what
    it acknowledged (so that a failure leaves the count there); every
    rejection goes to `rejected_out` as a JSON line with its batch."""
    with connection.channel() as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        acks = stub.Publish(
            file_batches(path, fmt, batch_events), metadata=connection.metadata
        )
        for ack in acks:
            summary.batches += 1
            summary.last_batch = ack.batch_id
            summary.accepted += ack.accepted
            summary.rejected += len(ack.rejected)
            for item in ack.rejected:
                fields = json_format.MessageToDict(
                    item, preserving_proto_field_name=True
                )
                entry = {"batch_id": ack.batch_id, **fields}
                rejected_out.write(orjson.dumps(entry).decode() + "\n")


@dataclass(frozen=True)
class SubscribeOptions:
    subscriber_id: str
    actions: tuple[str, ...] = ()
    min_priority: int = 0
    segments: tuple[str, ...] = ()
    resume_after: str = ""
    from_latest: bool = False
    ack_every: int = 100
    limit: int | None = None


def subscribe(
    connection: Connection, options: SubscribeOptions, out: IO[str] = sys.stdout
) -> int:
    """Print each intervention as a JSON line, committing the cursor every
    `ack_every` messages and at the end; return how many were printed."""
    printed = 0
    pending = 0
    cursor = ""
    with connection.channel() as channel:
        stub = interventions_pb2_grpc.InterventionsStub(channel)
        stream = stub.Subscribe(
            interventions_pb2.SubscribeRequest(
                subscriber_id=options.subscriber_id,
                actions=options.actions,
                min_priority=options.min_priority,
                segments=options.segments,
                resume_after=options.resume_after,
                from_latest=options.from_latest,
            ),
            metadata=connection.metadata,
        )

        def commit() -> None:
            if cursor:
                stub.Ack(
                    interventions_pb2.AckRequest(
                        subscriber_id=options.subscriber_id, cursor=cursor
                    ),
                    metadata=connection.metadata,
                )

        try:
            last_commit = time.monotonic()
            for message in stream:
                cursor = message.cursor
                if not message.heartbeat:
                    entry: dict[str, Any] = json_format.MessageToDict(
                        message.intervention, preserving_proto_field_name=True
                    )
                    out.write(
                        orjson.dumps({"cursor": message.cursor, **entry}).decode()
                        + "\n"
                    )
                    out.flush()
                    printed += 1
                    pending += 1
                due = time.monotonic() - last_commit >= 1.0
                if pending >= options.ack_every or (pending and due):
                    commit()
                    pending = 0
                    last_commit = time.monotonic()
                if options.limit is not None and printed >= options.limit:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()
            commit()
    return printed
