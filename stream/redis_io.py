"""Redis mode: the ingest log as partition streams, the intervention log as
a stream per tenant, the customers as hashes.

Keys, under ``redis.prefix`` (default ``touchstream``):

====================================  =========================================
``P:ingest:N``                        ingest partition N (stream): field
                                      ``event``, one event as a JSON object
``P:rejected``                        what the engine refused (hash: stream
                                      id to code, reason and event id)
``P:interventions:TENANT``            the tenant's intervention log (stream):
                                      ``id``, ``rule``, ``action``,
                                      ``priority``, ``segment``, ``body``
``P:intervention-ids:TENANT``         intervention id to stream id (hash): an
                                      id decided again is not appended again
``P:customers:TENANT``                customer id to record (hash, JSON)
``P:lineage:TENANT``                  customer id to lineage (hash, JSON)
====================================  =========================================

An upstream system may ``XADD`` to the ingest partitions directly: each
event goes to partition ``crc32(tenant + "\\x1f" + customer_id) % key_groups
% partitions``, so that each key group reads one partition and, on the
replay clock, the result does not depend on how partitions interleave.
Each partition resumes from the stream id in its checkpoint.

When Redis cannot be reached, reads and writes wait and try again with a
pause that doubles up to 5 s, saying so in the log: nothing is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.keygroup import Counts, Report
from state.routing import key_group
from stream.flow import reporting
from stream.sources import CatchUp, RawBatch, RawRecord
from stream.store import HOUR_MS

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PAUSE_S = 5.0
# A stream id "MS-SEQ" as the integer position of a raw record.
_SEQ_SPAN = 1_000_000

# Append an intervention unless its id is logged already; return 1 if new.
_APPEND_ONCE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'rule', ARGV[2],
    'action', ARGV[3], 'priority', ARGV[4], 'segment', ARGV[5], 'body', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[1], entry)
return 1
"""


class RedisSettings(msgspec.Struct, frozen=True):
    url: str
    prefix: str = "touchstream"
    partitions: int = 4

    def ingest_key(self, partition: int) -> str:
        return f"{self.prefix}:ingest:{partition}"

    def interventions_key(self, tenant: str) -> str:
        return f"{self.prefix}:interventions:{tenant}"

    def ids_key(self, tenant: str) -> str:
        return f"{self.prefix}:intervention-ids:{tenant}"

    def customers_key(self, tenant: str) -> str:
        return f"{self.prefix}:customers:{tenant}"

    def lineage_key(self, tenant: str) -> str:
        return f"{self.prefix}:lineage:{tenant}"

    @property
    def rejected_key(self) -> str:
        return f"{self.prefix}:rejected"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10.0)


def ingest_partition(
    tenant: str, customer_id: str, key_groups: int, partitions: int
) -> int:
    """The ingest partition of a customer's events."""
    return key_group(tenant, customer_id, key_groups) % partitions


def position_of(stream_id: bytes | str) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) * _SEQ_SPAN + int(seq or 0)


def stream_id_of(position: int) -> str:
    return f"{position // _SEQ_SPAN}-{position % _SEQ_SPAN}"


def retrying(what: str, call: Callable[[], T]) -> T:
    """Run `call` until Redis answers, pausing longer each time."""
    pause_s = 0.1
    failures = 0
    while True:
        try:
            result = call()
        except (redis.ConnectionError, redis.TimeoutError) as ex:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "Redis: unreachable during=%s failures=%d retry_in_s=%.1f "
                    "reason=%s",
                    what,
                    failures,
                    pause_s,
                    ex,
                )
            time.sleep(pause_s)
            pause_s = min(MAX_PAUSE_S, pause_s * 2)
            continue
        if failures:
            log.info("Redis: reachable again during=%s failures=%d", what, failures)
        return result


def history_key(settings: RedisSettings, tenant: str, customer_id: str) -> str:
    return f"{settings.prefix}:clv-history:{tenant}:{customer_id}"


def add_history(
    pipe: Any, settings: RedisSettings, record: dict[str, Any], at_ms: int
) -> None:
    """Note a customer's CLV: one point an hour, the last of that hour."""
    key = history_key(settings, record["tenant"], record["customer_id"])
    hour_start = at_ms - at_ms % HOUR_MS
    pipe.zremrangebyscore(key, hour_start, hour_start + HOUR_MS - 1)
    point = orjson.dumps([at_ms, record.get("clv"), record.get("value_band")])
    pipe.zadd(key, {point: at_ms})


class RedisIngestSource(FixedPartitionedSource[RawBatch, str]):
    """The ingest partitions; with `drain`, each ends once it has nothing
    more to read (the replay clock's end of input), otherwise once `stop`
    is set."""

    def __init__(
        self,
        settings: RedisSettings,
        batch_size: int,
        poll_s: float,
        *,
        drain: bool,
        stop: Any,
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.drain = drain
        self.stop = stop

    def list_parts(self) -> list[str]:
        return [str(index) for index in range(self.settings.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> RedisIngestPartition:
        return RedisIngestPartition(self, int(for_part), resume_state or "0-0")


class RedisIngestPartition(StatefulSourcePartition[RawBatch, str]):
    def __init__(self, source: RedisIngestSource, index: int, after: str) -> None:
        self.source = source
        self.index = index
        self.key = source.settings.ingest_key(index)
        self.after = after
        self.client: Any = source.settings.client()
        self._idle = False
        self._ended = False
        self.catch_up = CatchUp()

    def next_batch(self) -> list[RawBatch]:
        if self._ended:
            raise StopIteration
        stopping = self.source.stop is not None and self.source.stop.is_set()
        entries: list[tuple[bytes, dict[bytes, bytes]]] = retrying(
            f"read {self.key}",
            lambda: self.client.xrange(
                self.key, min=f"({self.after}", count=self.source.batch_size
            ),
        )
        self._idle = not entries
        records: list[RawRecord] = []
        if entries:
            self.after = entries[-1][0].decode()
            records = [
                (position_of(entry_id), fields.get(b"event", b""))
                for entry_id, fields in entries
            ]
        batches = self.catch_up.batches(self.index, records, self.source.batch_size)
        if batches:
            return batches
        if self.source.drain or stopping:
            self._ended = True
            return [RawBatch(self.index, [], True)]
        return []

    def next_awake(self) -> datetime | None:
        if self._idle and not self._ended:
            return datetime.now(UTC) + timedelta(seconds=self.source.poll_s)
        return None

    def snapshot(self) -> str:
        return self.after

    def close(self) -> None:
        self.client.close()


class RedisSink(DynamicSink[Report]):
    """Writes the engine's reports into Redis; on the live clock, customer
    records also go into their CLV history, for TopMovers."""

    def __init__(self, settings: RedisSettings, live: bool) -> None:
        self.settings = settings
        self.live = live

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> RedisSinkPartition:
        return RedisSinkPartition(self.settings, self.live)


class RedisSinkPartition(StatelessSinkPartition[Report]):
    def __init__(self, settings: RedisSettings, live: bool) -> None:
        self.settings = settings
        self.live = live
        # redis-py types its replies loosely (bytes | str | None); they are bytes.
        self.client: Any = settings.client()
        self.append_once = self.client.register_script(_APPEND_ONCE)
        self.counts = Counts()

    def write_batch(self, items: list[Report]) -> None:
        with reporting("write"):
            retrying("write reports", lambda: self._write(items))

    def _write(self, items: list[Report]) -> None:
        # Every write is idempotent, so a batch written again after a
        # failure (or replayed after a crash) changes nothing twice.
        settings = self.settings
        at_ms = time.time_ns() // 1_000_000
        pipe = self.client.pipeline(transaction=False)
        for report in items:
            for intervention in report.interventions:
                tenant = intervention.tenant
                self.append_once(
                    keys=[settings.interventions_key(tenant), settings.ids_key(tenant)],
                    args=[
                        intervention.intervention_id,
                        intervention.rule,
                        intervention.action,
                        intervention.priority,
                        intervention.segment or "",
                        msgspec.json.encode(intervention),
                    ],
                    client=pipe,
                )
            for record, lineage in zip(report.customers, report.lineage, strict=True):
                tenant, customer_id = record["tenant"], record["customer_id"]
                if self.live:
                    add_history(pipe, settings, record, at_ms)
                pipe.hset(
                    settings.customers_key(tenant), customer_id, orjson.dumps(record)
                )
                pipe.hset(
                    settings.lineage_key(tenant), customer_id, orjson.dumps(lineage)
                )
            for rejection in report.rejections:
                entry = {
                    "code": rejection.code,
                    "reason": rejection.reason,
                    "event_id": rejection.event_id,
                }
                pipe.hset(
                    settings.rejected_key,
                    stream_id_of(rejection.position),
                    orjson.dumps(entry),
                )
            self.counts.add(report.counts)
        pipe.execute()

    def close(self) -> None:
        counts = self.counts
        log.info(
            "Engine: wrote read=%d applied=%d duplicates=%d rejected=%d "
            "interventions=%d",
            counts.read,
            counts.applied,
            counts.duplicates,
            counts.rejected_total,
            counts.interventions,
        )
        self.client.close()
