"""``touchstream serve``: the gRPC API over the embedded logs, with the
engine in a process of its own.

::

    Ingest ──► ingest.sqlite ──► engine (dataflow, live clock)
                                   ├─► interventions.sqlite ──► Interventions
                                   └─► customers.sqlite ──────► Customers

The server validates and acknowledges events once they are durable in the
ingest log; subscriptions read the intervention log from a cursor and follow
it as it grows. SQLite calls run on threads, off the event loop (uvloop):
one thread writes, a few read, each with its own connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import functools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
import msgpack
import msgspec
import orjson
import uvloop
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from touchstream.v1 import (
    customers_pb2,
    customers_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    interventions_pb2,
    interventions_pb2_grpc,
)

from operators.decode import DecodeSettings
from operators.events import CHANNELS
from stream.auth import Identity, Tokens, for_role, new_token, token_digest
from stream.config import Config, ServerConfig, parse_address, parse_duration
from stream.engine import EngineOptions, now_ms, start_engine
from stream.errors import UsageError
from stream.explain import format_lineage
from stream.metrics import ServerMetrics
from stream.replay import ReplayOptions, decode_settings
from stream.store import (
    CUSTOMERS_FILE,
    INGEST_FILE,
    INTERVENTIONS_FILE,
    OUTCOMES,
    CursorExpired,
    CustomerStore,
    Filters,
    IngestLog,
    InterventionLog,
    LogEntry,
)
from stream.wire import (
    customer_message,
    event_json,
    intervention_message,
    json_struct,
    unknown_field_numbers,
)

log = logging.getLogger(__name__)
audit = logging.getLogger("stream.audit")

T = TypeVar("T")
SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    interventions_pb2.DESCRIPTOR.services_by_name["Interventions"].full_name,
    customers_pb2.DESCRIPTOR.services_by_name["Customers"].full_name,
)
MAX_ID_CHARS = 128
MAX_CURSOR_DIGITS = 19
MAX_CURSOR = 2**63 - 1  # SQLite's largest integer
MAX_MOVERS = 1_000
DEFAULT_MOVERS = 20
MIN_WINDOW_MS = 1_000
MAX_WINDOW_MS = 3650 * 86_400_000
ADMIN_TOKEN_FILE = "admin.token"
# The health service name that tells whether the engine process runs.
ENGINE_HEALTH = "touchstream.engine"
REDIS_HEALTH = "touchstream.redis"
TOKENS_FILE = "tokens.toml"
LOCK_FILE = "serve.lock"
# Where the engine process names its metrics port (with --metrics-listen).
ENGINE_METRICS_PORT_FILE = "engine-metrics.port"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime(_TIME_FORMAT, time.gmtime(seconds)) + f".{millis:03d}Z"


@dataclass(frozen=True)
class ServeOptions:
    """What `touchstream serve` was asked to do."""

    config: Config
    data: Path
    listen: str
    config_path: Path | None = None
    params_path: Path | None = None
    horizon: str | None = None
    log_level: str = "INFO"
    # Tests run the engine themselves or not at all.
    engine: bool = True
    metrics_listen: str | None = None


@dataclass
class Limits:
    """The server settings as numbers."""

    retention_ms: int
    heartbeat_s: float
    poll_s: float
    keepalive_ms: int
    shutdown_grace_s: float
    movers_history_ms: int
    server: ServerConfig

    @classmethod
    def of(cls, server: ServerConfig) -> Limits:
        return cls(
            parse_duration(server.retention),
            parse_duration(server.heartbeat) / 1000,
            parse_duration(server.poll_interval) / 1000,
            parse_duration(server.keepalive),
            parse_duration(server.shutdown_grace) / 1000,
            parse_duration(server.movers_history),
            server,
        )


class Stores:
    """The logs (the data folder's SQLite files, or Redis), used from
    threads: one writer thread, a few reader threads, each with connections
    of its own. The Redis classes answer the same calls (stream/redis_store)."""

    READERS = 4

    def __init__(self, data: Path, config: Config | None = None) -> None:
        self.data = data
        self.config = config or Config()
        self._local = threading.local()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._readers = ThreadPoolExecutor(
            self.READERS, thread_name_prefix="store-reader"
        )
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _open(self) -> tuple[IngestLog, InterventionLog, CustomerStore]:
        stores = getattr(self._local, "stores", None)
        if stores is None:
            stores = self._connect()
            self._local.stores = stores
            with self._lock:
                self._opened.extend(stores)
        return stores

    def intervention_log(self) -> Any:
        """A connection to the intervention log of its own, for a caller
        outside these threads (the metrics' scrapes)."""
        url = self.config.redis.url
        if url is None:
            return InterventionLog(self.data / INTERVENTIONS_FILE)
        from stream.redis_io import RedisSettings
        from stream.redis_store import RedisInterventionLog

        redis = self.config.redis
        return RedisInterventionLog(RedisSettings(url, redis.prefix, redis.partitions))

    def _connect(self) -> tuple[Any, Any, Any]:
        url = self.config.redis.url
        if url is None:
            return (
                IngestLog(self.data / INGEST_FILE),
                InterventionLog(self.data / INTERVENTIONS_FILE),
                CustomerStore(self.data / CUSTOMERS_FILE),
            )
        from stream.redis_io import RedisSettings
        from stream.redis_store import (
            RedisCustomerStore,
            RedisIngestLog,
            RedisInterventionLog,
        )

        redis = self.config.redis
        settings = RedisSettings(url, redis.prefix, redis.partitions)
        return (
            RedisIngestLog(settings, self.config.key_groups),
            RedisInterventionLog(settings),
            RedisCustomerStore(settings),
        )

    async def write(
        self, work: Callable[[IngestLog, InterventionLog, CustomerStore], T]
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, lambda: self._run(work))

    async def read(
        self, work: Callable[[IngestLog, InterventionLog, CustomerStore], T]
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: self._run(work))

    def _run(self, work: Callable[[IngestLog, InterventionLog, CustomerStore], T]) -> T:
        if self.config.redis.url is None:
            return work(*self._open())
        from stream.redis_io import retrying

        # An unreachable Redis is waited for: a call in progress takes
        # longer, none fails for it (health says so meanwhile).
        return retrying("serve", lambda: work(*self._open()))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()


class Gate:
    """Authenticates calls and counts the streams each tenant holds open."""

    def __init__(
        self, tokens: Tokens, max_streams_per_tenant: int, metrics: ServerMetrics
    ) -> None:
        self.tokens = tokens
        self.max_streams = max_streams_per_tenant
        self.metrics = metrics
        self.streams: collections.Counter[str] = collections.Counter()

    async def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    token = None
        if not token:
            await self._unauthenticated(
                context,
                "no_token",
                "missing credentials: send metadata `authorization: Bearer TOKEN`",
            )
        identity = self.tokens.identify(token or "")
        if identity is None:
            await self._unauthenticated(
                context, "unknown_token", "the bearer token is not known to this server"
            )
        assert identity is not None
        return identity

    async def _unauthenticated(
        self, context: grpc.aio.ServicerContext, reason: str, message: str
    ) -> None:
        """Count, audit (the reason, never the token) and refuse a call."""
        self.metrics.auth_failures.labels(reason).inc()
        audit.warning(
            "Audit: denied method=%s peer=%s reason=%s",
            _method(context),
            context.peer(),
            reason.replace("_", " "),
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def require_admin(
        self, identity: Identity, context: grpc.aio.ServicerContext
    ) -> None:
        if identity.role != "admin":
            self.metrics.auth_failures.labels("role").inc()
            audit.warning(
                "Audit: denied method=%s caller=%s role=%s reason=admin only",
                _method(context),
                identity.name,
                identity.role,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{_method(context)} needs role admin; this token has role "
                f"{identity.role}",
            )

    @contextlib.asynccontextmanager
    async def stream_slot(
        self, identity: Identity, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        if self.streams[identity.tenant] >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tenant {identity.tenant!r} already holds {self.max_streams} "
                "open streams (server.max_streams_per_tenant); close one first",
            )
        self.streams[identity.tenant] += 1
        gauge = self.metrics.streams.labels(identity.tenant)
        gauge.inc()
        try:
            yield
        finally:
            self.streams[identity.tenant] -= 1
            gauge.dec()


def _method(context: grpc.aio.ServicerContext) -> str:
    return _CALLED_METHOD.get()


# The full method name of the call being handled, for audit lines.
_CALLED_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar(
    "touchstream_method", default="?"
)


class _MethodNames(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps each call's method name where its handler can read it."""

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        _CALLED_METHOD.set(details.method)
        return await continuation(details)


class BadBatch(Exception):
    """A batch refused whole: nothing of it is written."""


class IngestService(ingest_pb2_grpc.IngestServicer):  # type: ignore[misc]
    def __init__(
        self, gate: Gate, stores: Stores, decode: DecodeSettings, limits: Limits
    ) -> None:
        self.gate = gate
        self.stores = stores
        self.limits = limits
        self.json_decoder = decode.build()
        self.msgpack_decoder = _with_format(decode, "msgpack").build()

    async def PublishBatch(
        self, request: ingest_pb2.EventBatch, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.PublishAck:
        identity = await self.gate.identify(context)
        return await self._publish(identity, request, context)

    async def Publish(
        self,
        requests: AsyncIterator[ingest_pb2.EventBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.PublishAck]:
        identity = await self.gate.identify(context)
        async with self.gate.stream_slot(identity, context):
            async for request in requests:
                yield await self._publish(identity, request, context)

    async def _publish(
        self,
        identity: Identity,
        batch: ingest_pb2.EventBatch,
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.PublishAck:
        metrics = self.gate.metrics
        started = time.perf_counter()
        try:
            records = self._records(batch, identity.tenant)
        except BadBatch as ex:
            self._count_batch(identity, "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        try:
            ack = await self.stores.write(
                lambda ingest, _, __: self._append(ingest, identity, batch, records)
            )
        except Exception:
            self._count_batch(identity, "UNKNOWN")  # gRPC's status for it
            raise
        self._count_batch(identity, "OK")
        took_s = time.perf_counter() - started
        metrics.ack_seconds.labels(identity.tenant).observe(took_s)
        metrics.integration_ack_seconds.labels(identity.name).observe(took_s)
        return ack

    def _count_batch(self, identity: Identity, status: str) -> None:
        metrics = self.gate.metrics
        metrics.batches.labels(identity.tenant, status).inc()
        metrics.integration_batches.labels(identity.name, status).inc()

    def _records(
        self, batch: ingest_pb2.EventBatch, tenant: str
    ) -> list[tuple[int, bytes]]:
        """The batch's events as numbered raw records, or BadBatch."""
        where = f"batch {batch.batch_id!r}: " if batch.batch_id else ""
        unknown = unknown_field_numbers(batch)
        if unknown:
            msg = (
                f"{where}fields {sorted(set(unknown))} are not in touchstream.v1 "
                "(a client built from a newer .proto?); nothing was accepted"
            )
            raise BadBatch(msg)
        which = batch.WhichOneof("payload")
        if which == "events":
            # An event message without a tenant is of the caller's tenant.
            records = [
                (index, orjson.dumps({"tenant": tenant} | event_json(event)))
                for index, event in enumerate(batch.events.events, 1)
            ]
        elif which == "json_lines":
            records = _json_lines(batch.json_lines)
        elif which == "msgpack":
            records = _msgpack_maps(batch.msgpack, where)
        else:
            msg = f"{where}no events: set one of `events`, `json_lines`, `msgpack`"
            raise BadBatch(msg)
        limit = self.limits.server.max_batch_events
        if len(records) > limit:
            msg = (
                f"{where}{len(records)} events in one batch; at most {limit} "
                "(server.max_batch_events): split it, nothing was accepted"
            )
            raise BadBatch(msg)
        return records

    def _append(
        self,
        ingest: IngestLog,
        identity: Identity,
        batch: ingest_pb2.EventBatch,
        records: list[tuple[int, bytes]],
    ) -> ingest_pb2.PublishAck:
        msgpack_payload = batch.WhichOneof("payload") == "msgpack"
        decoder = self.msgpack_decoder if msgpack_payload else self.json_decoder
        decoded = decoder.decode_batch(records)
        rejected = [
            (item.position, item.event_id, item.code, item.reason)
            for item in decoded.rejections
        ]
        by_position = dict(records)
        # Counted per channel and source once a batch, not once an event.
        accepted: collections.Counter[tuple[int, str]] = collections.Counter()
        bodies = []
        for touch in decoded.touches:
            if touch.tenant != identity.tenant:
                rejected.append(
                    (
                        touch.position,
                        touch.event_id,
                        "wrong_tenant",
                        f"expected `tenant` to be {identity.tenant!r}, the tenant of "
                        f"this token - got {touch.tenant!r}",
                    )
                )
                continue
            accepted[touch.channel, touch.source] += 1
            body = by_position[touch.position]
            if msgpack_payload:
                body = orjson.dumps(msgpack.unpackb(body))
            bodies.append(body)
        rejected.sort()
        foreign = sum(1 for row in rejected if row[2] == "wrong_tenant")
        if foreign:
            audit.warning(
                "Audit: refused events of another tenant caller=%s tenant=%s events=%d",
                identity.name,
                identity.tenant,
                foreign,
            )
        last = ingest.append(
            identity.tenant,
            bodies,
            now_ms(),
            [(batch.batch_id, *row) for row in rejected],
        )
        # Counted once written: a write tried again (Redis) counts once.
        self._count_events(identity, accepted, rejected)
        return ingest_pb2.PublishAck(
            batch_id=batch.batch_id,
            accepted=len(bodies),
            rejected=[
                ingest_pb2.Rejected(
                    index=position, event_id=event_id or "", code=code, reason=reason
                )
                for position, event_id, code, reason in rejected
            ],
            last_offset=str(last) if bodies else "",
        )

    def _count_events(
        self,
        identity: Identity,
        accepted: collections.Counter[tuple[int, str]],
        rejected: list[tuple[int, str | None, str, str]],
    ) -> None:
        metrics = self.gate.metrics
        events = metrics.events
        for (channel, source), count in accepted.items():
            events.labels(identity.tenant, CHANNELS[channel], source, "accepted").inc(
                count
            )
        codes = collections.Counter(code for _, _, code, _ in rejected)
        for code, count in codes.items():
            metrics.rejected.labels(identity.tenant, code).inc(count)
        if rejected:
            # The channel and source of a rejected event may be what was
            # wrong with it: these count by tenant only.
            events.labels(identity.tenant, "", "", "rejected").inc(len(rejected))
        by_integration = metrics.integration_events
        for outcome, count in (
            ("accepted", sum(accepted.values())),
            ("rejected", len(rejected)),
        ):
            if count:
                by_integration.labels(identity.name, outcome).inc(count)


def _with_format(decode: DecodeSettings, fmt: Any) -> DecodeSettings:
    return msgspec.structs.replace(decode, format=fmt)


def _json_lines(data: bytes) -> list[tuple[int, bytes]]:
    lines = data.split(b"\n")
    return [
        (number, line.rstrip(b"\r"))
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]


def _msgpack_maps(data: bytes, where: str) -> list[tuple[int, bytes]]:
    """Split concatenated MessagePack values; a value that does not end
    (cut off, or not MessagePack) refuses the batch."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    records = []
    start = 0
    index = 0
    while start < len(data):
        index += 1
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            msg = (
                f"{where}`msgpack` is cut off: value {index} starting at byte "
                f"{start} of {len(data)} does not end; nothing was accepted"
            )
            raise BadBatch(msg) from None
        except msgpack.StackError:
            msg = (
                f"{where}`msgpack` value {index} (byte {start}) is nested deeper "
                "than the decoder allows; nothing was accepted"
            )
            raise BadBatch(msg) from None
        except (ValueError, msgpack.FormatError) as ex:
            msg = (
                f"{where}`msgpack` is not MessagePack at value {index} (byte "
                f"{start}): {ex}; nothing was accepted"
            )
            raise BadBatch(msg) from None
        end = unpacker.tell()
        records.append((index, data[start:end]))
        start = end
    return records


def _cursor(text: str, field_name: str) -> int | None:
    """A cursor as given in a request: empty, or the decimal digits of one."""
    if not text:
        return None
    plain = text.isascii() and text.isdigit() and len(text) <= MAX_CURSOR_DIGITS
    if not plain or int(text) > MAX_CURSOR:
        msg = (
            f"expected `{field_name}` to be a cursor from a message (decimal "
            f"digits) - got {text[:40]!r}"
        )
        raise ValueError(msg)
    return int(text)


def _expired(ex: CursorExpired) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason="CURSOR_EXPIRED",
        domain="touchstream.v1",
        metadata={"earliest_cursor": str(ex.earliest), "cursor": str(ex.cursor)},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.OUT_OF_RANGE,
            message=(
                f"cursor {ex.cursor} is older than the retention period: the "
                f"entries after it were trimmed; resume after {ex.earliest}, "
                "the earliest cursor (status details: ErrorInfo)"
            ),
            details=[detail],
        )
    )


@dataclass
class _StreamEnd:
    """What a subscription sent, and why it ended, for its closing line."""

    sent: int = 0
    last: int = 0
    reason: str = ""


@dataclass
class _InFlight:
    """The cursors sent to a subscriber and not yet acknowledged."""

    sent: collections.deque[int] = field(default_factory=collections.deque)

    def settle(self, committed: int) -> None:
        while self.sent and self.sent[0] <= committed:
            self.sent.popleft()


class InterventionsService(interventions_pb2_grpc.InterventionsServicer):  # type: ignore[misc]
    def __init__(
        self, gate: Gate, stores: Stores, limits: Limits, stopping: asyncio.Event
    ) -> None:
        self.gate = gate
        self.stores = stores
        self.limits = limits
        self.stopping = stopping

    async def Subscribe(
        self,
        request: interventions_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[interventions_pb2.InterventionMessage]:
        identity = await self.gate.identify(context)
        await _check_subscriber(request.subscriber_id, context)
        async with self.gate.stream_slot(identity, context):
            async for message in self._follow(identity, request, context):
                yield message

    async def _follow(
        self,
        identity: Identity,
        request: interventions_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[interventions_pb2.InterventionMessage]:
        tenant, subscriber = identity.tenant, request.subscriber_id
        try:
            cursor = _cursor(request.resume_after, "resume_after")
        except ValueError as ex:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        if cursor is None:
            cursor = await self.stores.read(
                lambda _, log_, __: _start_cursor(
                    log_, tenant, subscriber, request.from_latest
                )
            )
        else:
            await self._check_not_past_end(tenant, cursor, "resume_after", context)
        log.info(
            "Subscribe: opened tenant=%s subscriber=%s after=%d",
            tenant,
            subscriber,
            cursor,
        )
        stream = _StreamEnd()
        try:
            async for message in self._send(identity, request, cursor, stream, context):
                yield message
        except (asyncio.CancelledError, GeneratorExit):
            stream.reason = "client_gone"
            raise
        except BaseException:
            stream.reason = stream.reason or "error"
            raise
        finally:
            log.info(
                "Subscribe: closed tenant=%s subscriber=%s sent=%d last=%d reason=%s",
                tenant,
                subscriber,
                stream.sent,
                stream.last,
                stream.reason or "ended",
            )

    async def _send(
        self,
        identity: Identity,
        request: interventions_pb2.SubscribeRequest,
        cursor: int,
        stream: _StreamEnd,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[interventions_pb2.InterventionMessage]:
        """The messages after `cursor`: the log a page at a time, held while
        the subscriber has the most unacknowledged messages it may, with
        heartbeats when idle; UNAVAILABLE once the server stops."""
        tenant, subscriber = identity.tenant, request.subscriber_id
        limits = self.limits
        page = limits.server.page_size
        sent = self.gate.metrics.sent
        in_flight = _InFlight()
        last_sent = time.monotonic()
        stream.last = cursor
        filters = Filters(
            frozenset(request.actions),
            request.min_priority,
            frozenset(request.segments),
        )
        while not self.stopping.is_set():
            try:
                entries, reached = await self.stores.read(
                    functools.partial(_read_page, tenant, cursor, page, filters)
                )
            except CursorExpired as ex:
                stream.reason = "cursor_expired"
                status = _expired(ex)
                await context.abort(
                    status.code, status.details, status.trailing_metadata
                )
            for entry in entries:
                async for heartbeat in self._held(identity, subscriber, in_flight):
                    yield heartbeat
                if self.stopping.is_set():
                    break
                item = for_role(orjson.loads(entry.body), identity)
                yield intervention_message(
                    entry.cursor, item, format_ms(entry.appended_ms)
                )
                sent.labels(tenant, item.get("action", "")).inc()
                in_flight.sent.append(entry.cursor)
                stream.sent += 1
                stream.last = entry.cursor
                last_sent = time.monotonic()
            cursor = reached
            if entries:
                continue
            if time.monotonic() - last_sent >= limits.heartbeat_s:
                yield interventions_pb2.InterventionMessage(
                    cursor=str(cursor), heartbeat=True
                )
                last_sent = time.monotonic()
            await _sleep_or(self.stopping, limits.poll_s)
        last = in_flight.sent[-1] if in_flight.sent else cursor
        stream.reason = "server_stopping"
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the server is stopping; resume after cursor {last}, the last one "
            "this stream sent",
        )

    async def _held(
        self, identity: Identity, subscriber: str, in_flight: _InFlight
    ) -> AsyncIterator[interventions_pb2.InterventionMessage]:
        """Hold the stream while the subscriber has the most unacknowledged
        messages it may, with heartbeats (the last cursor sent); its acks
        release it."""
        limit = self.limits.server.max_unacked
        last_beat = time.monotonic()
        while len(in_flight.sent) >= limit and not self.stopping.is_set():
            committed = await self.stores.read(
                lambda _, log_, __: log_.committed(identity.tenant, subscriber)
            )
            in_flight.settle(committed or 0)
            if len(in_flight.sent) < limit:
                return
            if time.monotonic() - last_beat >= self.limits.heartbeat_s:
                yield interventions_pb2.InterventionMessage(
                    cursor=str(in_flight.sent[-1]), heartbeat=True
                )
                last_beat = time.monotonic()
            await _sleep_or(self.stopping, self.limits.poll_s)

    async def _check_not_past_end(
        self,
        tenant: str,
        cursor: int,
        field_name: str,
        context: grpc.aio.ServicerContext,
    ) -> None:
        latest = await self.stores.read(lambda _, log_, __: log_.latest_cursor(tenant))
        if cursor > latest:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"`{field_name}` {cursor} is past the end of the log (the latest "
                f"cursor is {latest}); a cursor comes from a message",
            )

    async def Ack(
        self, request: interventions_pb2.AckRequest, context: grpc.aio.ServicerContext
    ) -> interventions_pb2.AckResponse:
        identity = await self.gate.identify(context)
        await _check_subscriber(request.subscriber_id, context)
        try:
            cursor = _cursor(request.cursor, "cursor")
        except ValueError as ex:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        if cursor is not None:
            await self._check_not_past_end(identity.tenant, cursor, "cursor", context)
        outcomes = []
        known = set(interventions_pb2.Outcome.values())
        for item in request.outcomes:
            if item.outcome not in known or not item.outcome:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"expected the outcome of {item.intervention_id!r} to be one of "
                    f"{', '.join(OUTCOMES)} - got {item.outcome}",
                )
            name = interventions_pb2.Outcome.Name(item.outcome).lower()
            outcomes.append((item.intervention_id, name))
        tenant, subscriber = identity.tenant, request.subscriber_id

        def ack(log_: InterventionLog) -> tuple[int | None, list[str]]:
            missing = []
            at_ms = now_ms()
            for intervention_id, outcome in outcomes:
                rule = log_.entry_rule(tenant, intervention_id)
                if rule is None:
                    missing.append(intervention_id)
                    continue
                log_.record_outcome(
                    tenant, intervention_id, rule, outcome, subscriber, at_ms
                )
            committed = log_.committed(tenant, subscriber)
            if cursor is not None:
                committed = log_.commit(tenant, subscriber, cursor, at_ms, reset=False)
            return committed, missing

        committed, missing = await self.stores.write(lambda _, log_, __: ack(log_))
        if missing:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no intervention {missing[0]!r} in this tenant's log (or it was "
                "trimmed); the other outcomes and the cursor were recorded",
            )
        return interventions_pb2.AckResponse(
            committed_cursor="" if committed is None else str(committed)
        )

    async def ResetCursor(
        self,
        request: interventions_pb2.ResetCursorRequest,
        context: grpc.aio.ServicerContext,
    ) -> interventions_pb2.ResetCursorResponse:
        identity = await self.gate.identify(context)
        await self.gate.require_admin(identity, context)
        await _check_subscriber(request.subscriber_id, context)
        try:
            cursor = _cursor(request.cursor, "cursor")
        except ValueError as ex:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        if cursor is not None:
            await self._check_not_past_end(identity.tenant, cursor, "cursor", context)
        tenant, subscriber = identity.tenant, request.subscriber_id

        def reset(log_: InterventionLog) -> int:
            target = log_.trimmed_through(tenant) if cursor is None else cursor
            return log_.commit(tenant, subscriber, target, now_ms(), reset=True)

        committed = await self.stores.write(lambda _, log_, __: reset(log_))
        audit.info(
            "Audit: cursor reset caller=%s tenant=%s subscriber=%s cursor=%d",
            identity.name,
            tenant,
            subscriber,
            committed,
        )
        return interventions_pb2.ResetCursorResponse(committed_cursor=str(committed))

    async def Lag(
        self, request: interventions_pb2.LagRequest, context: grpc.aio.ServicerContext
    ) -> interventions_pb2.LagResponse:
        identity = await self.gate.identify(context)
        lags = await self.stores.read(
            lambda _, log_, __: log_.lags(identity.tenant, LAG_CAP)
        )
        return interventions_pb2.LagResponse(
            subscribers=[
                interventions_pb2.SubscriberLag(
                    subscriber_id=lag.subscriber_id,
                    committed_cursor=str(lag.committed),
                    latest_cursor=str(lag.latest),
                    entries_behind=lag.entries_behind,
                    at_least=lag.at_least,
                    seconds_behind=lag.seconds_behind,
                )
                for lag in lags
            ]
        )

    async def OutcomeCounts(
        self,
        request: interventions_pb2.OutcomeCountsRequest,
        context: grpc.aio.ServicerContext,
    ) -> interventions_pb2.OutcomeCountsResponse:
        identity = await self.gate.identify(context)
        counts = await self.stores.read(
            lambda _, log_, __: log_.outcome_counts(identity.tenant)
        )
        return interventions_pb2.OutcomeCountsResponse(
            rules=[
                interventions_pb2.RuleOutcomes(rule=rule, **by_outcome)
                for rule, by_outcome in counts.items()
            ]
        )


def _read_page(
    tenant: str,
    after: int,
    limit: int,
    filters: Filters,
    _: IngestLog,
    log_: InterventionLog,
    __: CustomerStore,
) -> tuple[list[LogEntry], int]:
    return log_.read_after(tenant, after, limit, filters)


LAG_CAP = 100_000


def _start_cursor(
    log_: InterventionLog, tenant: str, subscriber: str, from_latest: bool
) -> int:
    committed = log_.committed(tenant, subscriber)
    if committed is not None:
        return committed
    if from_latest:
        return log_.latest_cursor(tenant)
    return log_.trimmed_through(tenant)


async def _check_subscriber(subscriber: str, context: grpc.aio.ServicerContext) -> None:
    if not 1 <= len(subscriber) <= MAX_ID_CHARS or not subscriber.strip():
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"expected `subscriber_id` of 1 to {MAX_ID_CHARS} characters, not "
            f"all blank - got {subscriber[:40]!r} ({len(subscriber)} characters)",
        )


async def _sleep_or(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class CustomersService(customers_pb2_grpc.CustomersServicer):  # type: ignore[misc]
    def __init__(self, gate: Gate, stores: Stores) -> None:
        self.gate = gate
        self.stores = stores

    async def _find(
        self,
        request: customers_pb2.GetCustomerRequest,
        context: grpc.aio.ServicerContext,
    ) -> tuple[Identity, dict[str, Any], Any]:
        identity = await self.gate.identify(context)
        customer_id = request.customer_id
        if not 1 <= len(customer_id) <= MAX_ID_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected `customer_id` of 1 to {MAX_ID_CHARS} characters - got "
                f"{len(customer_id)}",
            )
        found = await self.stores.read(
            lambda _, __, customers: customers.get(identity.tenant, customer_id)
        )
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no customer {customer_id!r} in tenant {identity.tenant!r}",
            )
        assert found is not None
        return identity, found[0], found[1]

    async def Get(
        self,
        request: customers_pb2.GetCustomerRequest,
        context: grpc.aio.ServicerContext,
    ) -> customers_pb2.Customer:
        identity, record, _ = await self._find(request, context)
        return customer_message(for_role(record, identity))

    async def Explain(
        self,
        request: customers_pb2.GetCustomerRequest,
        context: grpc.aio.ServicerContext,
    ) -> customers_pb2.Explanation:
        identity, _, lineage = await self._find(request, context)
        shown = for_role(lineage, identity)
        text = format_lineage(lineage) if identity.sees_money else ""
        return customers_pb2.Explanation(
            customer_id=request.customer_id, lineage=json_struct(shown), text=text
        )

    async def TopMovers(
        self, request: customers_pb2.TopMoversRequest, context: grpc.aio.ServicerContext
    ) -> customers_pb2.TopMoversResponse:
        identity = await self.gate.identify(context)
        try:
            window_ms = parse_duration(request.window or "1d")
        except UsageError as ex:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"`window`: {ex}")
        if not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected `window` from 1s to 3650d - got {request.window!r}",
            )
        limit = request.limit or DEFAULT_MOVERS
        if limit > MAX_MOVERS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected `limit` of at most {MAX_MOVERS} - got {limit}",
            )
        end_ms = now_ms()
        start_ms = end_ms - window_ms
        rows = await self.stores.read(
            lambda _, __, customers: customers.movers(identity.tenant, start_ms, limit)
        )
        movers = []
        for customer_id, before, after, band_before, band_now in rows:
            mover = customers_pb2.Mover(
                customer_id=customer_id,
                value_band_before=band_before or 0,
                value_band_now=band_now or 0,
                direction="up" if (after or 0) >= (before or 0) else "down",
            )
            if identity.sees_money:
                mover.clv_before = before or 0.0
                mover.clv_now = after or 0.0
                mover.change = (after or 0.0) - (before or 0.0)
            movers.append(mover)
        return customers_pb2.TopMoversResponse(
            window_start=format_ms(start_ms),
            window_end=format_ms(end_ms),
            movers=movers,
        )


# The server's life.


def tokens_for(options: ServeOptions) -> Tokens:
    """The tokens file of the configuration; without one, the data folder's,
    made on first start with one admin token of the default tenant (written
    to `admin.token`, readable by its owner only)."""
    configured = options.config.server.tokens
    if configured is not None:
        return Tokens.load(Path(configured))
    path = options.data / TOKENS_FILE
    if not path.exists():
        token = new_token()
        token_path = options.data / ADMIN_TOKEN_FILE
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        path.write_text(
            "# Tokens of this server (README, Security); `touchstream token`\n"
            "# makes more.\n"
            "[[token]]\n"
            'name = "admin"\n'
            f'sha256 = "{token_digest(token)}"\n'
            f'tenant = "{options.config.default_tenant}"\n'
            'role = "admin"\n'
        )
        log.info("Serve: made an admin token path=%s", token_path)
    return Tokens.load(path)


def _lock_data(data: Path) -> IO[str]:
    """Hold the data folder for this server alone (two engines on one set
    of logs would decide everything twice)."""
    lock = (data / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        msg = f"another touchstream serve (pid {holder}) uses the data folder {data}"
        raise UsageError(msg) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _credentials(server: ServerConfig) -> grpc.ServerCredentials | None:
    if server.tls_cert is None and server.tls_key is None:
        if server.tls_client_ca is not None:
            msg = (
                "server.tls_client_ca (mutual TLS) needs server.tls_cert and "
                "server.tls_key as well"
            )
            raise UsageError(msg)
        return None
    if server.tls_cert is None or server.tls_key is None:
        msg = "server.tls_cert and server.tls_key go together; set both"
        raise UsageError(msg)
    try:
        key = Path(server.tls_key).read_bytes()
        cert = Path(server.tls_cert).read_bytes()
        client_ca = (
            None
            if server.tls_client_ca is None
            else Path(server.tls_client_ca).read_bytes()
        )
    except OSError as ex:
        msg = f"cannot read a TLS file {ex.filename}: {ex.strerror}"
        raise UsageError(msg) from None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class Server:
    """The gRPC server and the engine process, started and stopped together."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.limits = Limits.of(options.config.server)
        options.data.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_data(options.data)
        try:
            self.tokens = tokens_for(options)
            self.credentials = _credentials(options.config.server)
        except BaseException:
            self._lock.close()
            raise
        if not len(self.tokens):
            log.warning("Serve: the tokens file admits no one; every call will fail")
        self.stores = Stores(options.data, options.config)
        if options.config.redis.url is None:
            # The files exist before the engine or a call opens them.
            for store in (
                IngestLog(options.data / INGEST_FILE),
                InterventionLog(options.data / INTERVENTIONS_FILE),
                CustomerStore(options.data / CUSTOMERS_FILE),
            ):
                store.close()
        self.stopping = asyncio.Event()
        self.metrics = ServerMetrics()
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._engine: subprocess.Popen[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _engine_options(self) -> EngineOptions:
        options = self.options
        return EngineOptions(
            options.data,
            options.config_path,
            options.params_path,
            options.horizon,
            options.log_level,
            metrics_port_file=self._engine_port_file(),
        )

    def _engine_port_file(self) -> Path | None:
        if self.options.metrics_listen is None:
            return None
        return self.options.data / ENGINE_METRICS_PORT_FILE

    def _start_engine(self) -> subprocess.Popen[bytes]:
        port_file = self._engine_port_file()
        if port_file is not None:
            # The last engine's port is no one's now; the new one names its own.
            port_file.unlink(missing_ok=True)
        return start_engine(self._engine_options())

    def _decode(self) -> DecodeSettings:
        replay = ReplayOptions(
            input=self.options.data / INGEST_FILE,
            format="jsonl",
            out=self.options.data,
            config=self.options.config,
            follow=True,
        )
        return decode_settings(replay)

    async def start(self) -> int:
        server_config = self.options.config.server
        limits = self.limits
        self.grpc = grpc.aio.server(
            interceptors=[_MethodNames()],
            options=[
                # Refuse a port another server holds (gRPC shares it by default).
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", server_config.max_message_bytes),
                ("grpc.max_send_message_length", server_config.max_message_bytes),
                ("grpc.keepalive_time_ms", limits.keepalive_ms),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        gate = Gate(self.tokens, server_config.max_streams_per_tenant, self.metrics)
        ingest_pb2_grpc.add_IngestServicer_to_server(
            IngestService(gate, self.stores, self._decode(), limits), self.grpc
        )
        interventions_pb2_grpc.add_InterventionsServicer_to_server(
            InterventionsService(gate, self.stores, limits, self.stopping), self.grpc
        )
        customers_pb2_grpc.add_CustomersServicer_to_server(
            CustomersService(gate, self.stores), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        try:
            parse_address(self.options.listen, "--listen")
        except UsageError:
            self.stores.close()
            self._lock.close()
            raise
        try:
            if self.credentials is None:
                self.port = self.grpc.add_insecure_port(self.options.listen)
            else:
                self.port = self.grpc.add_secure_port(
                    self.options.listen, self.credentials
                )
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            self.stores.close()
            self._lock.close()
            msg = (
                f"cannot listen on {self.options.listen!r}: expected HOST:PORT of "
                "this machine with the port free"
            )
            if self.credentials is not None:
                msg += (
                    ", and server.tls_cert and server.tls_key a PEM certificate "
                    "and its private key"
                )
            raise UsageError(msg)
        if self.options.metrics_listen is not None:
            self._watch_with_metrics()
            self.metrics_port = self.metrics.serve(self.options.metrics_listen)
        await self.grpc.start()
        for name in (*SERVICE_NAMES, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [asyncio.create_task(self._trim_forever())]
        if self.options.config.redis.url is not None:
            # Until the first look, within a second.
            await self.health.set(
                REDIS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING
            )
            self._tasks.append(asyncio.create_task(self._watch_redis()))
        if self.options.engine:
            self._engine = self._start_engine()
            await self.health.set(ENGINE_HEALTH, health_pb2.HealthCheckResponse.SERVING)
            self._tasks.append(asyncio.create_task(self._supervise_engine()))
        log.info(
            "Serve: listening address=%s port=%d data=%s tls=%s tokens=%d",
            self.options.listen,
            self.port,
            self.options.data,
            self.credentials is not None,
            len(self.tokens),
        )
        return self.port

    def _watch_with_metrics(self) -> None:
        """What the metrics work out when scraped: subscriber lag and, with
        the engine, the engine's own metrics."""
        self.metrics.watch_subscribers(
            self.tokens.tenants(), self.stores.intervention_log, LAG_CAP
        )
        port_file = self._engine_port_file()
        if self.options.engine and port_file is not None:
            self.metrics.watch_engine(port_file)

    async def _trim_forever(self) -> None:
        every_s = min(60.0, max(0.1, self.limits.retention_ms / 4000))
        limits = self.limits

        def trim(log_: InterventionLog, customers: CustomerStore) -> int:
            customers.forget_history(now_ms() - limits.movers_history_ms)
            return log_.trim(now_ms() - limits.retention_ms)

        while not self.stopping.is_set():
            trimmed = await self.stores.write(lambda _, log_, c: trim(log_, c))
            if trimmed:
                log.info("Retention: trimmed entries=%d", trimmed)
            await _sleep_or(self.stopping, every_s)

    async def stop(self) -> None:
        """Stop serving: health goes NOT_SERVING, streams end, calls in
        progress get the grace period, then the engine stops."""
        log.info("Serve: stopping grace_s=%.1f", self.limits.shutdown_grace_s)
        await self.health.enter_graceful_shutdown()
        self.stopping.set()
        await self.grpc.stop(self.limits.shutdown_grace_s)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._engine is not None:
            self._engine.terminate()  # SIGTERM: it ends after what it has read
            await asyncio.get_running_loop().run_in_executor(
                None, _join_engine, self._engine
            )
        self.stores.close()
        self.metrics.close()
        self._lock.close()
        log.info("Serve: stopped")

    async def _watch_redis(self) -> None:
        """In Redis mode, the health of `touchstream.redis` says whether
        Redis answers (looked at every second)."""
        import redis

        url = self.options.config.redis.url
        assert url is not None
        client = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        serving = health_pb2.HealthCheckResponse.SERVING
        up: bool | None = None
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            try:
                await loop.run_in_executor(None, client.ping)
                now_up = True
            except (redis.ConnectionError, redis.TimeoutError):
                now_up = False
            if now_up != up:
                if up is not None:
                    log.log(
                        logging.INFO if now_up else logging.WARNING,
                        "Redis: %s url=%s",
                        "reachable again" if now_up else "unreachable",
                        url.split("@")[-1],
                    )
                status = (
                    serving if now_up else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set(REDIS_HEALTH, status)
                up = now_up
            await _sleep_or(self.stopping, 1.0)
        client.close()

    async def _supervise_engine(self) -> None:
        """Keep the engine running: one that exits before the server stops
        is started again after a pause that doubles up to 30 s; meanwhile
        the health of `touchstream.engine` is NOT_SERVING (the API keeps
        taking events, which wait in the ingest log)."""
        pause_s = 1.0
        while not self.stopping.is_set():
            engine = self._engine
            assert engine is not None
            if engine.poll() is None:
                await _sleep_or(self.stopping, 0.2)
                continue
            log.error(
                "Engine: exited code=%s restarting_in_s=%.0f",
                engine.returncode,
                pause_s,
            )
            await self.health.set(
                ENGINE_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await _sleep_or(self.stopping, pause_s)
            if self.stopping.is_set():
                return
            pause_s = min(30.0, pause_s * 2)
            self.metrics.engine_restarts.inc()
            self._engine = self._start_engine()
            await self.health.set(ENGINE_HEALTH, health_pb2.HealthCheckResponse.SERVING)


def _join_engine(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log.warning("Engine: did not stop in 30 s; killing it")
        process.kill()
        process.wait()


async def _serve(options: ServeOptions) -> int:
    server = Server(options)
    await server.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop()
    return 0


def serve(options: ServeOptions) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code."""
    return uvloop.run(_serve(options))


def run_in_thread(options: ServeOptions) -> tuple[Server, Callable[[], None]]:
    """Start a server on a loop of its own thread (for tests and tools);
    return it and a function that stops it."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        loop = uvloop.new_event_loop()
        holder["loop"] = loop
        try:
            server = Server(options)
            holder["server"] = server
            loop.run_until_complete(server.start())
        except BaseException as ex:  # shown by the caller
            holder["error"] = ex
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name="touchstream-serve", daemon=True)
    thread.start()
    if not ready.wait(60):
        msg = "the server did not start within 60 s"
        raise RuntimeError(msg)
    if "error" in holder:
        thread.join()
        raise holder["error"]

    def stop() -> None:
        loop = holder["loop"]
        future = asyncio.run_coroutine_threadsafe(holder["server"].stop(), loop)
        future.result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)

    return holder["server"], stop
