"""The webhook outbox: deliveries waiting in the alarms SQLite file until accepted (SPEC §7).

Whoever stores an alarm enqueues its deliveries with `enqueue`, on the same connection and
in the same transaction: the alarm and its deliveries are committed together or not at all,
so an alarm is never stored without its deliveries, nor delivered without being stored.
One row per (alarm id, office, key); `key` names the occasion ("raised", "copy",
"escalated-1"), so a replay after a crash enqueues nothing twice, and a later occasion of
the same alarm is a delivery of its own.

The tables are created and upgraded with the rest of the alarms file by its owner,
`alerts.alarm_store`. The sender (`alerts.webhooks.WebhookSender`) opens an `Outbox` over
its own connection to that file (WAL: several processes may have it open) and takes due
rows oldest first. A row stays until accepted:
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

import sqlite3
from dataclasses import dataclass

from engine.database import transaction

MAX_ERROR_CHARS = 200
STAT_NAMES = ("delivered", "retries", "failures")
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
    """The outbox queries over a connection to the alarms file, which its owner opens,
    creates and upgrades (`alerts.alarm_store.connect_alarms`); this class runs no DDL.
    One thread at a time may use it (not necessarily the opener: a metrics collector is
    called from the scraping thread). `close` closes the connection."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

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

    def _transaction(self):
        return transaction(self._db)


def _count(db: sqlite3.Connection, name: str) -> None:
    db.execute("INSERT INTO delivery_stats VALUES (?, 1) ON CONFLICT (name) DO UPDATE "
               "SET n = n + 1", (name,))

