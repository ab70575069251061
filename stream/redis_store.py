"""The server's logs in Redis mode: the same calls as ``stream/store.py``
over the keys of ``stream/redis_io.py``.

A cursor is the position of a stream entry: its id ``MS-SEQ`` as the
integer ``MS * 1,000,000 + SEQ``, so it grows with the time the entry was
appended and trimming by age (``XTRIM MINID``) keeps the retention period
exactly. Committed cursors live in ``P:cursors:TENANT`` (zero-padded, so
that a script can compare them as text), outcomes in ``P:outcomes:TENANT``
and their counts per rule in ``P:outcome-counts:TENANT``, the CLV history
of each customer in a sorted set ``P:clv-history:TENANT:CUSTOMER`` (one
point an hour), and the trimmed end of each log in ``P:trimmed:TENANT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis

from stream.redis_io import (
    RedisSettings,
    history_key,
    ingest_partition,
    position_of,
    retrying,
    stream_id_of,
)
from stream.store import (
    ALL,
    OUTCOMES,
    CursorExpired,
    Filters,
    LogEntry,
    SubscriberLag,
)

_SPAN = 1_000_000
_WIDTH = 19

# Move a committed cursor forward only (reset: anywhere); return it.
_COMMIT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' or not current or current < ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return current
"""

# Count an outcome once per intervention.
_OUTCOME = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return 0
"""


def _padded(cursor: int) -> str:
    return f"{cursor:0{_WIDTH}d}"


class RedisIngestLog:
    """The gRPC ingest's side of the ingest partitions."""

    def __init__(self, settings: RedisSettings, key_groups: int) -> None:
        self.settings = settings
        self.key_groups = key_groups
        # redis-py types its replies loosely (bytes | str | None); they are bytes.
        self.client: Any = settings.client()

    def append(
        self,
        tenant: str,
        bodies: Sequence[bytes],
        received_ms: int,
        rejected: Iterable[tuple[str, int, str | None, str, str]] = (),
    ) -> int:
        settings = self.settings
        pipe = self.client.pipeline(transaction=True)
        for body in bodies:
            customer = orjson.loads(body)["customer_id"]
            partition = ingest_partition(
                tenant, customer, self.key_groups, settings.partitions
            )
            pipe.xadd(settings.ingest_key(partition), {"event": body})
        for batch_id, position, event_id, code, reason in rejected:
            entry = {
                "tenant": tenant,
                "event_id": event_id,
                "code": code,
                "reason": reason,
            }
            pipe.hset(
                f"{settings.prefix}:ingest-rejected",
                f"{received_ms}:{batch_id}:{position}",
                orjson.dumps(entry),
            )
        results = retrying("ingest append", pipe.execute)
        ids = results[: len(bodies)]
        return max((position_of(entry_id) for entry_id in ids), default=0)

    def close(self) -> None:
        self.client.close()


class RedisInterventionLog:
    """The subscriptions' side of the per-tenant intervention streams."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        # redis-py types its replies loosely (bytes | str | None); they are bytes.
        self.client: Any = settings.client()
        self._commit = self.client.register_script(_COMMIT)
        self._outcome = self.client.register_script(_OUTCOME)

    def _key(self, kind: str, tenant: str) -> str:
        return f"{self.settings.prefix}:{kind}:{tenant}"

    def trimmed_through(self, tenant: str = "") -> int:
        value = self.client.get(self._key("trimmed", tenant))
        return 0 if value is None else int(value)

    def latest_cursor(self, tenant: str = "") -> int:
        try:
            info = self.client.xinfo_stream(self.settings.interventions_key(tenant))
        except redis.ResponseError:  # no such stream yet
            return self.trimmed_through(tenant)
        return max(position_of(info["last-generated-id"]), self.trimmed_through(tenant))

    def read_after(
        self,
        tenant: str,
        cursor: int,
        limit: int,
        filters: Filters = ALL,
    ) -> tuple[list[LogEntry], int]:
        trimmed = self.trimmed_through(tenant)
        if cursor < trimmed:
            raise CursorExpired(cursor, trimmed)
        rows = self.client.xrange(
            self.settings.interventions_key(tenant),
            min=f"({stream_id_of(cursor)}",
            count=limit,
        )
        if len(rows) < limit:
            reached = max(cursor, self.latest_cursor(tenant))
        else:
            reached = position_of(rows[-1][0])
        entries = []
        for entry_id, fields in rows:
            action = fields[b"action"].decode()
            segment = fields[b"segment"].decode() or None
            if filters.admit(action, int(fields[b"priority"]), segment):
                position = position_of(entry_id)
                entries.append(
                    LogEntry(position, tenant, position // _SPAN, fields[b"body"])
                )
        return entries, reached

    def entry_rule(self, tenant: str, intervention_id: str) -> str | None:
        entry_id = self.client.hget(self.settings.ids_key(tenant), intervention_id)
        if entry_id is None:
            return None
        rows = self.client.xrange(
            self.settings.interventions_key(tenant), min=entry_id, max=entry_id
        )
        return rows[0][1][b"rule"].decode() if rows else None

    def lags(self, tenant: str, cap: int) -> list[SubscriberLag]:
        latest = self.latest_cursor(tenant)
        key = self.settings.interventions_key(tenant)
        raw = self.client.hgetall(self._key("cursors", tenant))
        lags = []
        for subscriber, value in sorted(raw.items()):
            committed = int(value)
            after = self.client.xrange(
                key, min=f"({stream_id_of(committed)}", count=cap + 1
            )
            seconds = 0.0
            if after:
                last = self.client.xrevrange(key, count=1)
                seconds = (position_of(last[0][0]) - position_of(after[0][0])) / (
                    _SPAN * 1000
                )
            lags.append(
                SubscriberLag(
                    subscriber.decode(),
                    committed,
                    latest,
                    min(len(after), cap),
                    len(after) > cap,
                    seconds,
                )
            )
        return lags

    def committed(self, tenant: str, subscriber_id: str) -> int | None:
        value = self.client.hget(self._key("cursors", tenant), subscriber_id)
        return None if value is None else int(value)

    def commit(
        self, tenant: str, subscriber_id: str, cursor: int, now_ms: int, *, reset: bool
    ) -> int:
        value = self._commit(
            keys=[self._key("cursors", tenant)],
            args=[subscriber_id, _padded(cursor), "1" if reset else "0"],
        )
        return int(value)

    def record_outcome(
        self,
        tenant: str,
        intervention_id: str,
        rule: str,
        outcome: str,
        subscriber_id: str,
        now_ms: int,
    ) -> None:
        self._outcome(
            keys=[self._key("outcomes", tenant), self._key("outcome-counts", tenant)],
            args=[f"{intervention_id}:{outcome}", f"{rule}:{outcome}", subscriber_id],
        )

    def outcome_counts(self, tenant: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        raw = self.client.hgetall(self._key("outcome-counts", tenant))
        for key, count in sorted(raw.items()):
            rule, _, outcome = key.decode().rpartition(":")
            counts.setdefault(rule, dict.fromkeys(OUTCOMES, 0))[outcome] = int(count)
        return counts

    def trim(self, before_ms: int) -> int:
        """Drop every tenant's entries appended before `before_ms`."""
        trimmed = 0
        pattern = self.settings.interventions_key("*")
        for key in self.client.scan_iter(match=pattern):
            tenant = key.decode().split(":", 2)[2]
            old = self.client.xrange(key, max=f"({before_ms}-0")
            if not old:
                continue
            last = position_of(old[-1][0])
            pipe = self.client.pipeline(transaction=True)
            pipe.set(
                self._key("trimmed", tenant), max(last, self.trimmed_through(tenant))
            )
            pipe.hdel(
                self.settings.ids_key(tenant), *(fields[b"id"] for _, fields in old)
            )
            pipe.xtrim(key, minid=f"{before_ms}-0", approximate=False)
            pipe.execute()
            trimmed += len(old)
        return trimmed

    def close(self) -> None:
        self.client.close()


class RedisCustomerStore:
    """The Customers API's side of the customer hashes."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        # redis-py types its replies loosely (bytes | str | None); they are bytes.
        self.client: Any = settings.client()

    def get(self, tenant: str, customer_id: str) -> tuple[dict[str, Any], Any] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.settings.customers_key(tenant), customer_id)
        pipe.hget(self.settings.lineage_key(tenant), customer_id)
        record, lineage = pipe.execute()
        if record is None:
            return None
        return orjson.loads(record), orjson.loads(lineage or b"{}")

    def movers(
        self, tenant: str, since_ms: int, limit: int
    ) -> list[tuple[str, float | None, float | None, int | None, int | None]]:
        records = self.client.hgetall(self.settings.customers_key(tenant))
        ids = sorted(key.decode() for key in records)
        pipe = self.client.pipeline(transaction=False)
        for customer_id in ids:
            pipe.zrevrangebyscore(
                history_key(self.settings, tenant, customer_id),
                since_ms,
                "-inf",
                start=0,
                num=1,
            )
        befores = pipe.execute()
        moves = []
        for customer_id, before in zip(ids, befores, strict=True):
            record = orjson.loads(records[customer_id.encode()])
            now_clv, now_band = record.get("clv"), record.get("value_band")
            if now_clv is None:
                continue
            if before:
                _, clv, band = orjson.loads(before[0])
            else:
                clv, band = None, None
            change = now_clv - (clv or 0.0)
            if change:
                moves.append((customer_id, clv, now_clv, band, now_band, change))
        moves.sort(key=lambda move: (-abs(move[5]), move[0]))
        return [move[:5] for move in moves[:limit]]

    def forget_history(self, before_ms: int) -> None:
        """Points older than `before_ms` go, but each customer's last one
        before then (its value at the start of any window asked for)."""
        pattern = history_key(self.settings, "*", "*")
        for key in self.client.scan_iter(match=pattern, count=1000):
            older = self.client.zrangebyscore(key, "-inf", f"({before_ms}")
            if len(older) > 1:
                self.client.zrem(key, *older[:-1])

    def close(self) -> None:
        self.client.close()
