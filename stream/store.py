"""The embedded server's durable logs, in SQLite files under ``--data``.

* :class:`IngestLog` (``ingest.sqlite``): every event the gRPC ingest
  accepted, in arrival order, with its offset; the engine reads it as its
  source partition. Events the ingest refused are kept beside them with
  their reasons.
* :class:`InterventionLog` (``interventions.sqlite``): every intervention
  the engine decided, once per ``intervention_id``, with a cursor that only
  grows; the subscribers' committed cursors and the outcomes they report.
  Entries older than the retention period are trimmed by the time they
  were appended.
* :class:`CustomerStore` (``customers.sqlite``): the latest record and
  lineage of every customer, and a history of CLV for ``TopMovers``.

The engine process writes the last two, the server process the first; each
connection belongs to one thread. WAL mode lets readers run beside the one
writer, and ``synchronous=FULL`` makes a committed append survive a power
cut, which is what an ingest ack promises.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

INGEST_FILE = "ingest.sqlite"
INTERVENTIONS_FILE = "interventions.sqlite"
CUSTOMERS_FILE = "customers.sqlite"
OUTCOMES = ("accepted", "dismissed", "done", "converted")
HOUR_MS = 3_600_000


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, its lock taken at once (BEGIN IMMEDIATE, so a
    busy writer is waited for here, not in the middle); committed when the
    block ends, rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    db.commit()


def connect(path: Path) -> sqlite3.Connection:
    """Open one of the files for this thread, waiting on a busy writer."""
    # Each connection is used by one thread at a time; the server closes
    # its threads' connections from another one when they are done.
    connection = sqlite3.connect(
        path, timeout=30.0, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


class IngestLog:
    """The accepted events, in the order they were acknowledged."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS events (
                offset INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant TEXT NOT NULL,
                received_ms INTEGER NOT NULL,
                body BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS rejected (
                received_ms INTEGER NOT NULL,
                tenant TEXT NOT NULL,
                batch_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                event_id TEXT,
                code TEXT NOT NULL,
                reason TEXT NOT NULL
            );
            """
        )

    def append(
        self,
        tenant: str,
        bodies: Sequence[bytes],
        received_ms: int,
        rejected: Iterable[tuple[str, int, str | None, str, str]] = (),
    ) -> int:
        """Append events of one batch (and its rejections) in one durable
        transaction; return the offset of the last event, or 0."""
        db = self.db
        with transaction(db):
            db.executemany(
                "INSERT INTO events (tenant, received_ms, body) VALUES (?, ?, ?)",
                [(tenant, received_ms, body) for body in bodies],
            )
            db.executemany(
                "INSERT INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(received_ms, tenant, *row) for row in rejected],
            )
            last = db.execute("SELECT MAX(offset) FROM events").fetchone()[0] or 0
        return int(last) if bodies else 0

    def read_after(self, offset: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` events after `offset`, in offset order."""
        rows = self.db.execute(
            "SELECT offset, body FROM events WHERE offset > ? ORDER BY offset LIMIT ?",
            (offset, limit),
        ).fetchall()
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def tenants_at(self, offsets: Iterable[int]) -> dict[int, str]:
        """The tenant of the event at each of these offsets."""
        wanted = sorted(set(offsets))
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self.db.execute(
                    f"SELECT offset, tenant FROM events WHERE offset IN ({marks})",
                    chunk,
                ).fetchall()
            )
        return found

    def rejected_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0])

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class LogEntry:
    """One intervention of the log, as JSON, with its cursor."""

    cursor: int
    tenant: str
    appended_ms: int
    body: bytes


@dataclass(frozen=True)
class Filters:
    """What a subscription keeps: these actions and segments (none: all),
    from this priority up."""

    actions: frozenset[str] = frozenset()
    min_priority: int = 0
    segments: frozenset[str] = frozenset()

    def admit(self, action: str, priority: int, segment: str | None) -> bool:
        return (
            (not self.actions or action in self.actions)
            and priority >= self.min_priority
            and (not self.segments or segment in self.segments)
        )


ALL = Filters()


@dataclass(frozen=True)
class SubscriberLag:
    """A subscriber's committed cursor against the end of its log."""

    subscriber_id: str
    committed: int
    latest: int
    entries_behind: int
    at_least: bool
    seconds_behind: float


class CursorExpired(Exception):
    """A cursor whose next entries were trimmed by the retention period."""

    def __init__(self, cursor: int, earliest: int) -> None:
        super().__init__(cursor, earliest)
        self.cursor = cursor
        self.earliest = earliest


class InterventionLog:
    """The interventions in the order they were appended, per tenant."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS log (
                cursor INTEGER PRIMARY KEY AUTOINCREMENT,
                intervention_id TEXT NOT NULL,
                tenant TEXT NOT NULL,
                rule TEXT NOT NULL,
                action TEXT NOT NULL,
                priority INTEGER NOT NULL,
                segment TEXT,
                appended_ms INTEGER NOT NULL,
                body BLOB NOT NULL,
                UNIQUE (tenant, intervention_id)
            );
            CREATE INDEX IF NOT EXISTS log_by_tenant ON log (tenant, cursor);
            CREATE INDEX IF NOT EXISTS log_by_time ON log (appended_ms);
            CREATE TABLE IF NOT EXISTS trimmed (
                only INTEGER PRIMARY KEY CHECK (only = 0),
                through INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS cursors (
                tenant TEXT NOT NULL,
                subscriber_id TEXT NOT NULL,
                cursor INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, subscriber_id)
            );
            CREATE TABLE IF NOT EXISTS outcomes (
                tenant TEXT NOT NULL,
                intervention_id TEXT NOT NULL,
                rule TEXT NOT NULL,
                outcome TEXT NOT NULL,
                subscriber_id TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, intervention_id, outcome)
            );
            """
        )

    # Writing (the engine).

    def append(self, interventions: Sequence[dict[str, Any]], now_ms: int) -> int:
        """Append the interventions not logged before; return how many were
        new. An id already in the log (decided again after a restart) keeps
        its first entry and cursor."""
        rows = [
            (
                item["intervention_id"],
                item["tenant"],
                item["rule"],
                item["action"],
                item["priority"],
                item["segment"],
                now_ms,
                orjson.dumps(item),
            )
            for item in interventions
        ]
        db = self.db
        before = db.total_changes
        with transaction(db):
            db.executemany(
                "INSERT OR IGNORE INTO log (intervention_id, tenant, rule, action, "
                "priority, segment, appended_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return db.total_changes - before

    def trim(self, before_ms: int) -> int:
        """Drop the entries appended before `before_ms`; return how many."""
        db = self.db
        with transaction(db):
            last = db.execute(
                "SELECT MAX(cursor) FROM log WHERE appended_ms < ?", (before_ms,)
            ).fetchone()[0]
            if last is None:
                return 0
            # Appends are in time order, so the trimmed entries are a prefix.
            deleted = db.execute("DELETE FROM log WHERE cursor <= ?", (last,)).rowcount
            db.execute(
                "INSERT INTO trimmed VALUES (0, ?) ON CONFLICT (only) "
                "DO UPDATE SET through = MAX(through, excluded.through)",
                (last,),
            )
        return int(deleted)

    # Reading (the subscriptions).

    def trimmed_through(self, tenant: str = "") -> int:
        """The last cursor trimmed (one log for every tenant here)."""
        row = self.db.execute("SELECT through FROM trimmed").fetchone()
        return 0 if row is None else int(row[0])

    def latest_cursor(self, tenant: str = "") -> int:
        row = self.db.execute("SELECT MAX(cursor) FROM log").fetchone()
        return max(int(row[0] or 0), self.trimmed_through())

    def read_after(
        self,
        tenant: str,
        cursor: int,
        limit: int,
        filters: Filters = ALL,
    ) -> tuple[list[LogEntry], int]:
        """The tenant's entries after `cursor` that pass the filters, and the
        cursor that the read reached (past entries filtered out).

        Raises :class:`CursorExpired` when entries after `cursor` were
        trimmed: resuming there would skip them.
        """
        db = self.db
        trimmed = self.trimmed_through()
        if cursor < trimmed:
            raise CursorExpired(cursor, trimmed)
        rows = db.execute(
            "SELECT cursor, action, priority, segment, appended_ms, body FROM log "
            "WHERE tenant = ? AND cursor > ? ORDER BY cursor LIMIT ?",
            (tenant, cursor, limit),
        ).fetchall()
        if len(rows) < limit:
            # Everything up to the end of the log was seen for this tenant.
            reached = max(cursor, self.latest_cursor())
        else:
            reached = int(rows[-1][0])
        entries = [
            LogEntry(int(row[0]), tenant, int(row[4]), bytes(row[5]))
            for row in rows
            if filters.admit(row[1], row[2], row[3])
        ]
        return entries, reached

    def entry_rule(self, tenant: str, intervention_id: str) -> str | None:
        row = self.db.execute(
            "SELECT rule FROM log WHERE tenant = ? AND intervention_id = ?",
            (tenant, intervention_id),
        ).fetchone()
        return None if row is None else str(row[0])

    # Subscribers.

    def committed(self, tenant: str, subscriber_id: str) -> int | None:
        row = self.db.execute(
            "SELECT cursor FROM cursors WHERE tenant = ? AND subscriber_id = ?",
            (tenant, subscriber_id),
        ).fetchone()
        return None if row is None else int(row[0])

    def commit(
        self, tenant: str, subscriber_id: str, cursor: int, now_ms: int, *, reset: bool
    ) -> int:
        """Store a subscriber's cursor; an ack never moves it back, a reset
        may. Return the committed cursor."""
        update = "excluded.cursor" if reset else "MAX(cursor, excluded.cursor)"
        self.db.execute(
            "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT "
            f"(tenant, subscriber_id) DO UPDATE SET cursor = {update}, "
            "updated_ms = excluded.updated_ms",
            (tenant, subscriber_id, cursor, now_ms),
        )
        committed = self.committed(tenant, subscriber_id)
        assert committed is not None
        return committed

    def lags(self, tenant: str, cap: int) -> list[SubscriberLag]:
        """How far behind the end of the tenant's log each subscriber is."""
        db = self.db
        last = db.execute(
            "SELECT cursor, appended_ms FROM log WHERE tenant = ? "
            "ORDER BY cursor DESC LIMIT 1",
            (tenant,),
        ).fetchone()
        latest = self.latest_cursor(tenant)
        lags = []
        for subscriber, committed in db.execute(
            "SELECT subscriber_id, cursor FROM cursors WHERE tenant = ? "
            "ORDER BY subscriber_id",
            (tenant,),
        ).fetchall():
            behind = db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM log WHERE tenant = ? "
                "AND cursor > ? LIMIT ?)",
                (tenant, committed, cap + 1),
            ).fetchone()[0]
            seconds = 0.0
            if behind and last is not None:
                seen = db.execute(
                    "SELECT appended_ms FROM log WHERE tenant = ? AND cursor > ? "
                    "ORDER BY cursor LIMIT 1",
                    (tenant, committed),
                ).fetchone()
                seconds = (last[1] - seen[0]) / 1000
            lags.append(
                SubscriberLag(
                    subscriber,
                    committed,
                    latest,
                    min(behind, cap),
                    behind > cap,
                    seconds,
                )
            )
        return lags

    def record_outcome(
        self,
        tenant: str,
        intervention_id: str,
        rule: str,
        outcome: str,
        subscriber_id: str,
        now_ms: int,
    ) -> None:
        """Count an outcome once per intervention (a repeated ack is not a
        second outcome)."""
        self.db.execute(
            "INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, intervention_id, rule, outcome, subscriber_id, now_ms),
        )

    def outcome_counts(self, tenant: str) -> dict[str, dict[str, int]]:
        """Outcomes per rule of a tenant: ``{rule: {outcome: count}}``."""
        counts: dict[str, dict[str, int]] = {}
        for rule, outcome, count in self.db.execute(
            "SELECT rule, outcome, COUNT(*) FROM outcomes WHERE tenant = ? "
            "GROUP BY rule, outcome ORDER BY rule",
            (tenant,),
        ):
            counts.setdefault(rule, dict.fromkeys(OUTCOMES, 0))[outcome] = count
        return counts

    def close(self) -> None:
        self.db.close()


class CustomerStore:
    """The latest published record of each customer, and CLV history: the
    last value of each customer in each hour it changed, so the history
    grows with hours, not with events."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS customers (
                tenant TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                evaluated_ms INTEGER NOT NULL,
                record BLOB NOT NULL,
                lineage BLOB NOT NULL,
                PRIMARY KEY (tenant, customer_id)
            );
            CREATE TABLE IF NOT EXISTS clv_history (
                tenant TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                hour INTEGER NOT NULL,
                at_ms INTEGER NOT NULL,
                clv REAL,
                value_band INTEGER,
                PRIMARY KEY (tenant, customer_id, hour)
            );
            CREATE INDEX IF NOT EXISTS history_by_time ON clv_history (at_ms);
            """
        )

    def publish(
        self,
        records: Sequence[dict[str, Any]],
        lineage: Sequence[dict[str, Any]],
        now_ms: int,
    ) -> None:
        """Replace the records of these customers and note their CLV."""
        db = self.db
        with transaction(db):
            db.executemany(
                "INSERT OR REPLACE INTO customers VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        record["tenant"],
                        record["customer_id"],
                        now_ms,
                        orjson.dumps(record),
                        orjson.dumps(explained),
                    )
                    for record, explained in zip(records, lineage, strict=True)
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO clv_history VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        record["tenant"],
                        record["customer_id"],
                        now_ms // HOUR_MS,
                        now_ms,
                        record.get("clv"),
                        record.get("value_band"),
                    )
                    for record in records
                ],
            )

    def forget_history(self, before_ms: int) -> None:
        """Drop CLV points older than any window a query may ask for, but
        the last one of each customer before then (its value at the start
        of such a window)."""
        self.db.execute(
            "DELETE FROM clv_history WHERE at_ms < ? AND at_ms < ("
            "SELECT MAX(at_ms) FROM clv_history AS later WHERE "
            "later.tenant = clv_history.tenant AND "
            "later.customer_id = clv_history.customer_id AND later.at_ms < ?)",
            (before_ms, before_ms),
        )

    def get(self, tenant: str, customer_id: str) -> tuple[dict[str, Any], Any] | None:
        """The record and lineage of one customer, or None."""
        row = self.db.execute(
            "SELECT record, lineage FROM customers WHERE tenant = ? "
            "AND customer_id = ?",
            (tenant, customer_id),
        ).fetchone()
        if row is None:
            return None
        return orjson.loads(row[0]), orjson.loads(row[1])

    def movers(
        self, tenant: str, since_ms: int, limit: int
    ) -> list[tuple[str, float | None, float | None, int | None, int | None]]:
        """The customers whose CLV changed most since `since_ms`: id, CLV and
        value band before (the last value at or before `since_ms`, to the
        hour; None: first seen since) and now, largest absolute change
        first, ties by id."""
        rows = self.db.execute(
            """
            WITH moves AS (
                SELECT customer_id,
                       json_extract(record, '$.clv') AS clv_now,
                       json_extract(record, '$.value_band') AS band_now,
                       (SELECT h.at_ms FROM clv_history AS h
                        WHERE h.tenant = c.tenant AND h.customer_id = c.customer_id
                          AND h.at_ms <= :since
                        ORDER BY h.hour DESC LIMIT 1) AS before_ms
                FROM customers AS c WHERE tenant = :tenant
            )
            SELECT moves.customer_id, h.clv, moves.clv_now, h.value_band,
                   moves.band_now
            FROM moves LEFT JOIN clv_history AS h
              ON h.tenant = :tenant AND h.customer_id = moves.customer_id
             AND h.at_ms = moves.before_ms
            WHERE moves.clv_now IS NOT NULL
              AND ABS(moves.clv_now - COALESCE(h.clv, 0)) > 0
            ORDER BY ABS(moves.clv_now - COALESCE(h.clv, 0)) DESC, moves.customer_id
            LIMIT :limit
            """,
            {"tenant": tenant, "since": since_ms, "limit": limit},
        ).fetchall()
        return [tuple(row) for row in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM customers").fetchone()[0])

    def close(self) -> None:
        self.db.close()
