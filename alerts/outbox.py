"""The webhook outbox: deliveries waiting in the alarms SQLite file until accepted (SPEC §7).

Whoever stores an alarm enqueues its deliveries with `enqueue`, on the same connection and
in the same transaction: the alarm and its deliveries are committed together or not at all,
so an alarm is never stored without its deliveries, nor delivered without being stored.
One row per (alarm id, office, key); `key` names the occasion ("raised", "copy",
"escalated-1"), so a replay after a crash enqueues nothing twice, and a later occasion of
the same alarm is a delivery of its own.

The sender (`alerts.webhooks.WebhookSender`) opens an `Outbox` on the same file (WAL: several
processes may have it open) and takes due rows oldest first. A row stays until accepted:
it is never given up, whatever its age or number of attempts (at-least-once; receivers
de-duplicate by the alarm `id`). `delivered` and `failed` update the row and the persistent
counters in `delivery_stats` in one transaction, so the counters survive restarts and the
metrics endpoint, in another process, reads them (`alerts.alarm_metrics`).

Counters: `delivered` (attempts accepted), `failures` (attempts not accepted), `retries`
(attempts that were not a row's first). Every attempt is exactly one of delivered or failed:
attempts made = delivered + failures, and retries = attempts made - rows attempted.

Stored errors are a status code or an exception class with a short fixed reason, never a
body, a URL or anything a receiver sent: the bodies carry personal data.
"""

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

BUSY_TIMEOUT_S = 30
MAX_ERROR_CHARS = 200
STAT_NAMES = ("delivered", "retries", "failures")

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL,
    office TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_ms INTEGER,
    last_error TEXT,
    delivered_ms INTEGER,
    UNIQUE (alarm_id, office, key));
CREATE INDEX IF NOT EXISTS outbox_pending_office ON outbox (office, next_attempt_ms)
    WHERE delivered_ms IS NULL;
CREATE INDEX IF NOT EXISTS outbox_pending_created ON outbox (created_ms)
    WHERE delivered_ms IS NULL;
CREATE TABLE IF NOT EXISTS delivery_stats (name TEXT PRIMARY KEY, n INTEGER NOT NULL)
    WITHOUT ROWID
"""

_COLUMNS = "id, alarm_id, office, key, body, attempts, created_ms, next_attempt_ms"


@dataclass(frozen=True)
class Delivery:
    """One pending delivery: the alarm `body` (JSON, UTF-8) for `office`."""

    id: int
    alarm_id: str
    office: str
    key: str
    body: bytes = b""
    attempts: int = 0           # failed attempts so far
    created_ms: int = 0
    next_attempt_ms: int = 0

    def __repr__(self) -> str:  # never the body: personal data
        return (f"Delivery(id={self.id}, alarm_id={self.alarm_id!r}, office={self.office!r}, "
                f"key={self.key!r}, attempts={self.attempts})")


def create_tables(conn: sqlite3.Connection) -> None:
    """Create the outbox tables if missing. DDL only, statement by statement (never
    `executescript`, which would commit the caller's open transaction)."""
    for statement in OUTBOX_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def enqueue(conn: sqlite3.Connection, alarm_id: str, office: str, key: str, body: bytes,
            now_ms: int) -> bool:
    """Add a delivery on the caller's connection, inside the caller's transaction (neither
    begins nor commits). Returns True if new, False if (alarm_id, office, key) is queued or
    was delivered already."""
    for name, value in (("alarm_id", alarm_id), ("office", office), ("key", key)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"outbox enqueue: {name} must be a non-empty string")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"outbox enqueue: body must be bytes, not {type(body).__name__}")
    return conn.execute(
        "INSERT OR IGNORE INTO outbox (alarm_id, office, key, body, created_ms, next_attempt_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (alarm_id, office, key, bytes(body), int(now_ms), int(now_ms))).rowcount == 1


class Outbox:
    """The sender's own connection to the outbox: opens the file in WAL mode and creates
    the tables if missing. One thread at a time may use it (not necessarily the opener:
    a metrics collector is called from the scraping thread)."""

    def __init__(self, path: str | os.PathLike, *, sync: str = "normal"):
        self.path = os.fspath(path)
        if sync not in ("normal", "full"):
            raise ValueError(f"outbox sync must be one of normal, full; not {sync!r}")
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            create_tables(self._db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def due(self, now_ms: int, limit: int, office: str | None = None) -> list[Delivery]:
        """Undelivered rows with next_attempt_ms <= now, oldest first; of one office if given."""
        where, args = "delivered_ms IS NULL AND next_attempt_ms <= ?", [int(now_ms)]
        if office is not None:
            where += " AND office = ?"
            args.append(office)
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE {where} ORDER BY id LIMIT ?",
                                (*args, int(limit))).fetchall()
        return [Delivery(*row) for row in rows]

    def due_offices(self, now_ms: int) -> list[str]:
        """The offices with at least one due row."""
        return [office for (office,) in self._db.execute(
            "SELECT DISTINCT office FROM outbox WHERE delivered_ms IS NULL AND "
            "next_attempt_ms <= ?", (int(now_ms),))]

    def delivered(self, delivery_id: int, now_ms: int) -> None:
        """Mark accepted; counts a delivery (and a retry if it was not the first attempt).
        A row already delivered is left alone and not counted again."""
        with self._transaction() as db:
            row = db.execute("SELECT attempts FROM outbox WHERE id = ? AND delivered_ms IS NULL",
                             (delivery_id,)).fetchone()
            if row is None:
                return
            db.execute("UPDATE outbox SET delivered_ms = ?, last_attempt_ms = ? WHERE id = ?",
                       (int(now_ms), int(now_ms), delivery_id))
            _count(db, "delivered")
            if row[0] > 0:
                _count(db, "retries")

    def failed(self, delivery_id: int, now_ms: int, next_attempt_ms: int, error: str) -> None:
        """Record a failed attempt (attempts += 1) and when to try again; counts a failure
        (and a retry if it was not the first attempt). `error`: a status code or an exception
        class and short reason, no personal data (cut to MAX_ERROR_CHARS)."""
        with self._transaction() as db:
            row = db.execute("SELECT attempts FROM outbox WHERE id = ? AND delivered_ms IS NULL",
                             (delivery_id,)).fetchone()
            if row is None:
                return
            db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?, "
                       "last_attempt_ms = ?, last_error = ? WHERE id = ?",
                       (int(next_attempt_ms), int(now_ms), str(error)[:MAX_ERROR_CHARS],
                        delivery_id))
            _count(db, "failures")
            if row[0] > 0:
                _count(db, "retries")

    def oldest_pending_age_ms(self, now_ms: int) -> int:
        """Age of the oldest undelivered row (from its enqueueing); 0 when none."""
        oldest, = self._db.execute(
            "SELECT min(created_ms) FROM outbox WHERE delivered_ms IS NULL").fetchone()
        return 0 if oldest is None else max(0, int(now_ms) - oldest)

    def pending(self) -> int:
        return self._db.execute("SELECT count(*) FROM outbox WHERE delivered_ms IS NULL"
                                ).fetchone()[0]

    def pending_by_office(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT office, count(*) FROM outbox "
                                     "WHERE delivered_ms IS NULL GROUP BY office"))

    def stats(self) -> dict[str, int]:
        """{"delivered", "retries", "failures"}: persistent counters, since the file was made."""
        counts = dict(self._db.execute("SELECT name, n FROM delivery_stats"))
        return {name: int(counts.get(name, 0)) for name in STAT_NAMES}

    def purge_delivered(self, older_than_ms: int) -> int:
        """Delete rows delivered before `older_than_ms`; returns how many. Pending rows are
        never purged. A purged (alarm, office, key) enqueued again is delivered again."""
        with self._transaction() as db:
            return db.execute("DELETE FROM outbox WHERE delivered_ms IS NOT NULL AND "
                              "delivered_ms < ?", (int(older_than_ms),)).rowcount

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:   # SQLite may already have rolled back (disk full, I/O)
                db.execute("ROLLBACK")
            raise


def _count(db: sqlite3.Connection, name: str) -> None:
    db.execute("INSERT INTO delivery_stats VALUES (?, 1) ON CONFLICT (name) DO UPDATE "
               "SET n = n + 1", (name,))

