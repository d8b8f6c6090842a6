"""A worker's own SQLite file: how far it has evaluated, and the alarms it raised,
committed together.

Each evaluation worker owns one file (no writer contention between workers). The
checkpoint, the alarms a batch raised and the rules state go in one transaction, so after
a kill -9 a worker resumes right after the last committed batch: every batch is evaluated,
and its alarms are recorded exactly once (`alarms.id` is a key; a replay from an older
rules snapshot inserts nothing new).

The dispatcher reads the alarms through an `EvaluationReader` (read-only), from the row
after the last it imported; `file_id` tells a file from its successor at the same path.
"""

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from engine.database import Schema, connect, run_script, transaction

UNREAD_ALARM_COLUMNS = ("type", "severity", "subject", "office", "t_ms", "seq")


def _version_1(db: sqlite3.Connection) -> None:
    """The tables; a file of the unversioned engine also loses its `evaluated` table and
    the alarm columns nobody read (the document carries them)."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER);
        INSERT OR IGNORE INTO checkpoint VALUES (0, 0);
        CREATE TABLE IF NOT EXISTS alarms (id TEXT PRIMARY KEY, received_ms INTEGER, doc TEXT);
        CREATE TABLE IF NOT EXISTS rule_state (id INTEGER PRIMARY KEY CHECK (id = 0),
            seq INTEGER, state BLOB, checked_until_ms INTEGER);
        CREATE TABLE IF NOT EXISTS carriers (name TEXT PRIMARY KEY, id INTEGER,
            newest_t_ms INTEGER);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
        DROP TABLE IF EXISTS evaluated""")
    columns = {row[1] for row in db.execute("PRAGMA table_info(alarms)")}
    for column in UNREAD_ALARM_COLUMNS:
        if column in columns:   # rowids are kept: they are the dispatcher's reading positions
            db.execute(f"ALTER TABLE alarms DROP COLUMN {column}")
    # A name for this file that a new file of the same path never shares (the dispatcher
    # keeps its reading position per file, and files are retired when the worker count
    # changes).
    db.execute("INSERT OR IGNORE INTO meta VALUES ('file_id', ?)", (uuid.uuid4().hex,))


SCHEMA = Schema("evaluation file", marker="checkpoint", steps=(_version_1,))


class RaisedAlarm(Protocol):
    """What the store keeps of an alarm (`alerts.alarms.Alarm`): its id, when ingest
    received the triggering fix, and its JSON document, stored as text as it is."""

    id: str
    received_ms: int | None

    def to_json(self) -> str: ...


class StoredAlarm(NamedTuple):
    rowid: int              # grows in commit order: the dispatcher's reading position
    json_text: str
    received_ms: int | None


class EvaluationReader:
    """A read-only connection to a worker's file (the dispatcher, tools, tests).
    NotReadyError until the worker has created it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = connect(self.path, SCHEMA, read_only=True)

    def checkpoint(self) -> int:
        """The seq of the last batch evaluated (0: none)."""
        return self._db.execute("SELECT seq FROM checkpoint").fetchone()[0]

    def file_id(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = 'file_id'").fetchone()[0]

    def alarms_after(self, rowid: int, limit: int) -> list[StoredAlarm]:
        """Up to `limit` alarms stored after row `rowid`, in commit order."""
        return [StoredAlarm(*row) for row in self._db.execute(
            "SELECT rowid, doc, received_ms FROM alarms WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit))]

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EvaluationStore(EvaluationReader):
    """The worker's writer (also `geofence serve` when it starts new partitions)."""

    def __init__(self, path: str | Path, sync: str = "normal"):
        self.path = Path(path)
        self._db = connect(self.path, SCHEMA, sync=sync)

    def start_after(self, seq: int) -> None:
        """Begin a new partition's evaluation after `seq` (everything before it is done),
        with fresh rules state (the old partitions' state is not carried over)."""
        with transaction(self._db) as db:
            db.execute("UPDATE checkpoint SET seq = ?", (seq,))
            db.execute("INSERT OR REPLACE INTO rule_state VALUES (0, ?, NULL, NULL)", (seq,))

    def rule_snapshot(self) -> tuple[int, bytes | None, int | None]:
        """(seq, rules state, clock rules checked until) of the last snapshot;
        (0, None, None) before the first."""
        row = self._db.execute("SELECT seq, state, checked_until_ms FROM rule_state").fetchone()
        return (row[0], row[1], row[2]) if row else (0, None, None)

    def carriers(self) -> list[tuple[str, int, int]]:
        """(name, id, newest fix t) of every carrier seen."""
        return self._db.execute("SELECT name, id, newest_t_ms FROM carriers").fetchall()

    def commit(self, done: int | None, alarms: Sequence[RaisedAlarm] = (),
               snapshot: bytes | None = None, carriers=(), checked_until_ms: int | None = None,
               position: int | None = None) -> None:
        """In one transaction: the alarms raised, the checkpoint moved to `done` (the seq
        of the last batch evaluated; None: no batch this time) and, with a `snapshot`, the
        rules state as of `position` (default `done`) with the clock rules' progress and
        the carriers seen (name, id, newest fix t)."""
        if done is None and not alarms and snapshot is None:
            return
        with transaction(self._db) as db:
            db.executemany("INSERT OR IGNORE INTO alarms VALUES (?, ?, ?)",
                           [(a.id, a.received_ms, a.to_json()) for a in alarms])
            if snapshot is not None:
                db.execute("INSERT OR REPLACE INTO rule_state VALUES (0, ?, ?, ?)",
                           (done if position is None else position, snapshot, checked_until_ms))
                db.executemany("INSERT OR REPLACE INTO carriers VALUES (?, ?, ?)", carriers)
            if done is not None:
                db.execute("UPDATE checkpoint SET seq = max(seq, ?)", (done,))
