"""Locate requests (点名, SPEC §14): asked by the desk (or a worker), sent and answered by
carriers through the ingest process. One SQLite file, locate.sqlite, three writers:

    desk       `request`       a new request, `pending`
    ingest     `mark_sent`     given to a carrier connection of the device, `sent`
               `answer`        an accepted row of the device at or after the request:
                               `answered`, with the fix (or the handset status) and latency
               `expire`        not answered within `[carriers] locate_timeout_s`: `timed_out`
    desk       `changes_since` every change in order (`version`), for /api/events

`version` is a counter over the whole table, bumped by every write (inside the write's
transaction, so two writers never give the same number): a reader that remembers the last
version it saw misses nothing and reads nothing twice. Rows older than the fixes'
retention are purged by the ingest process.

The answer keeps the fix's position: personal data, read through the desk like a track.
"""

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from engine.database import Schema, connect, run_script, transaction

STATES = ("pending", "sent", "answered", "timed_out")
OPEN_STATES = ("pending", "sent")
REASONS = ("desk", "unsure")


def _version_1(db: sqlite3.Connection) -> None:
    run_script(db, """
        CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, version INTEGER NOT NULL,
            subject TEXT NOT NULL, device TEXT NOT NULL, office TEXT NOT NULL,
            reason TEXT NOT NULL, requested_by TEXT, requested_ms INTEGER NOT NULL,
            state TEXT NOT NULL, carrier TEXT, sent_ms INTEGER, answered_ms INTEGER,
            answer_t_ms INTEGER, answer_src TEXT, answer_lon REAL, answer_lat REAL,
            answer_acc REAL);
        CREATE INDEX IF NOT EXISTS requests_version ON requests (version);
        CREATE INDEX IF NOT EXISTS requests_open ON requests (state, requested_ms);
        CREATE INDEX IF NOT EXISTS requests_subject ON requests (subject, requested_ms);
        CREATE INDEX IF NOT EXISTS requests_user ON requests (requested_by, requested_ms)""")


SCHEMA = Schema("locate store", marker="requests", steps=(_version_1,))


@dataclass(frozen=True)
class LocateRequest:
    id: str
    version: int
    subject: str
    device: str
    office: str              # the subject's supervising office when asked (who may see it)
    reason: str              # "desk" or "unsure"
    requested_by: str | None
    requested_ms: int
    state: str
    carrier: str | None = None
    sent_ms: int | None = None
    answered_ms: int | None = None
    answer_t_ms: int | None = None
    answer_src: str | None = None     # gps, wifi, cell, or a handset state (off, ...)
    answer_lon: float | None = None
    answer_lat: float | None = None
    answer_acc: float | None = None

    @property
    def latency_ms(self) -> int | None:
        """From the request to its answer arriving."""
        return None if self.answered_ms is None else self.answered_ms - self.requested_ms

    def to_document(self) -> dict:
        """The request as the desk shows it (no device id: that is a phone number)."""
        fix = handset = None
        if self.state == "answered":
            if self.answer_lon is None:
                handset = self.answer_src
            else:
                fix = {"t": self.answer_t_ms, "lon": self.answer_lon, "lat": self.answer_lat,
                       "acc": self.answer_acc, "src": self.answer_src}
        return {"request": self.id, "subject": self.subject, "office": self.office,
                "reason": self.reason, "requested_by": self.requested_by,
                "requested_at": self.requested_ms, "state": self.state,
                "carrier": self.carrier, "sent_at": self.sent_ms,
                "answered_at": self.answered_ms, "latency_ms": self.latency_ms,
                "fix": fix, "handset": handset}


_COLUMNS = ("id, version, subject, device, office, reason, requested_by, requested_ms, state, "
            "carrier, sent_ms, answered_ms, answer_t_ms, answer_src, answer_lon, answer_lat, "
            "answer_acc")


class LocateStore:
    """locate.sqlite; one connection, used from one thread."""

    def __init__(self, path: str | Path, sync: str = "normal", read_only: bool = False,
                 busy_timeout_s: float | None = None):
        """busy_timeout_s: wait at most this long for another writer's lock (the ingest
        loop must not wait the default 30 s for the desk); then sqlite3.OperationalError."""
        self.path = Path(path)
        self._db = connect(self.path, SCHEMA, sync=sync, read_only=read_only)
        if busy_timeout_s is not None:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")

    def close(self) -> None:
        self._db.close()

    def _next_version(self) -> int:
        return self._db.execute("SELECT coalesce(max(version), 0) + 1 FROM requests").fetchone()[0]

    def _rows(self, sql: str, args=()) -> list[LocateRequest]:
        return [LocateRequest(*row) for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM requests {sql}", args)]

    # -- writes -----------------------------------------------------------------------

    def request(self, subject: str, device: str, office: str, reason: str,
                requested_by: str | None, now_ms: int) -> LocateRequest:
        """A new pending request; its id is random (`L` and 16 hex digits)."""
        if reason not in REASONS:
            raise ValueError(f"reason {reason!r} is not one of {REASONS}")
        request_id = "L" + secrets.token_hex(8)
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO requests (id, version, subject, device, office, reason, "
                "requested_by, requested_ms, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (request_id, self._next_version(), subject, device, office, reason,
                 requested_by, int(now_ms)))
        return self.get(request_id)

    def mark_sent(self, request_id: str, carrier: str, now_ms: int) -> None:
        """Given to a connection of `carrier` (again, after a connection went away)."""
        with transaction(self._db):
            self._db.execute(
                "UPDATE requests SET state = 'sent', carrier = ?, sent_ms = ?, version = ? "
                "WHERE id = ? AND state IN ('pending', 'sent')",
                (carrier, int(now_ms), self._next_version(), request_id))

    def answer(self, answers: list[tuple]) -> int:
        """Record answers: (request id, answered_ms, t_ms, src, lon, lat, acc), lon/lat/acc
        None for a handset status. Only open requests take one; returns how many did."""
        done = 0
        with transaction(self._db):
            version = self._next_version()
            for request_id, answered_ms, t_ms, src, lon, lat, acc in answers:
                done += self._db.execute(
                    "UPDATE requests SET state = 'answered', answered_ms = ?, answer_t_ms = ?, "
                    "answer_src = ?, answer_lon = ?, answer_lat = ?, answer_acc = ?, "
                    "version = ? WHERE id = ? AND state IN ('pending', 'sent')",
                    (int(answered_ms), int(t_ms), src, lon, lat, acc, version,
                     request_id)).rowcount
                version += 1
        return done

    def expire(self, now_ms: int, timeout_ms: int) -> list[LocateRequest]:
        """Open requests older than `timeout_ms`: timed out. Returns them as they were."""
        cutoff = int(now_ms) - int(timeout_ms)
        with transaction(self._db):
            due = self._rows("WHERE state IN ('pending', 'sent') AND requested_ms <= ? "
                             "ORDER BY requested_ms", (cutoff,))
            version = self._next_version()
            for k, r in enumerate(due):
                self._db.execute("UPDATE requests SET state = 'timed_out', version = ? "
                                 "WHERE id = ?", (version + k, r.id))
        return due

    def purge_before(self, before_ms: int) -> int:
        """Forget closed requests made before `before_ms` (the fixes' retention). The row
        holding the newest version stays, whatever its age: the counter is max(version),
        and readers that remember a version must never see it go back."""
        with transaction(self._db):
            return self._db.execute(
                "DELETE FROM requests WHERE requested_ms < ? AND state NOT IN "
                "('pending', 'sent') AND version < (SELECT max(version) FROM requests)",
                (int(before_ms),)).rowcount

    # -- reads ------------------------------------------------------------------------

    def get(self, request_id: str) -> LocateRequest | None:
        rows = self._rows("WHERE id = ?", (request_id,))
        return rows[0] if rows else None

    def open_requests(self) -> list[LocateRequest]:
        """Pending and sent requests, oldest first."""
        return self._rows("WHERE state IN ('pending', 'sent') ORDER BY requested_ms")

    def pending(self, after_version: int = 0) -> list[LocateRequest]:
        """Requests not yet given to a carrier, written after `after_version`."""
        return self._rows("WHERE state = 'pending' AND version > ? ORDER BY version",
                          (int(after_version),))

    def changes_since(self, version: int, limit: int = 1000) -> list[LocateRequest]:
        """Every request whose last change is after `version`, in change order."""
        return self._rows("WHERE version > ? ORDER BY version LIMIT ?", (int(version), limit))

    def last_version(self) -> int:
        return self._db.execute("SELECT coalesce(max(version), 0) FROM requests").fetchone()[0]

    def for_subject(self, subject: str, since_ms: int, limit: int = 50) -> list[LocateRequest]:
        """The subject's requests made since `since_ms`, newest first."""
        return self._rows("WHERE subject = ? AND requested_ms >= ? ORDER BY requested_ms DESC "
                          "LIMIT ?", (subject, int(since_ms), limit))

    def count_by_user(self, user: str, since_ms: int) -> int:
        """Requests `user` made since `since_ms` (the desk's per-user rate limit)."""
        return self._db.execute("SELECT count(*) FROM requests WHERE requested_by = ? AND "
                                "requested_ms >= ?", (user, int(since_ms))).fetchone()[0]

    def user_request_times(self, user: str, since_ms: int) -> list[int]:
        """When `user` made each request since `since_ms`, oldest first (when the desk's
        per-user limit frees a slot: its Retry-After)."""
        return [row[0] for row in self._db.execute(
            "SELECT requested_ms FROM requests WHERE requested_by = ? AND requested_ms >= ? "
            "ORDER BY requested_ms", (user, int(since_ms)))]
