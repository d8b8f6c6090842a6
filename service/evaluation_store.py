"""A worker's own SQLite file: how far it has evaluated, and what, committed together.

Each evaluation worker owns one file (no writer contention between workers). The
checkpoint, the batch's results and the alarms they raised go in one transaction, so
after a kill -9 a worker resumes right after the last committed batch: every batch is
evaluated, and its results and alarms are recorded exactly once (`evaluated.seq` and
`alarms.id` are keys; a replay from an older rules snapshot inserts nothing new).
"""

import sqlite3
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER);
CREATE TABLE IF NOT EXISTS evaluated (seq INTEGER PRIMARY KEY, fixes INTEGER,
    verdict_in INTEGER, verdict_unsure INTEGER, verdict_out INTEGER, evaluated_ms INTEGER);
INSERT OR IGNORE INTO checkpoint VALUES (0, 0);
CREATE TABLE IF NOT EXISTS alarms (id TEXT PRIMARY KEY, type TEXT, severity TEXT,
    subject TEXT, office TEXT, t_ms INTEGER, seq INTEGER, received_ms INTEGER, doc TEXT);
CREATE TABLE IF NOT EXISTS rule_state (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER,
    state BLOB, checked_until_ms INTEGER);
CREATE TABLE IF NOT EXISTS carriers (name TEXT PRIMARY KEY, id INTEGER, newest_t_ms INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""


class EvaluationStore:
    def __init__(self, path: str | Path, sync: str = "normal"):
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(SCHEMA)
        # A name for this file that a new file of the same path never shares (the
        # dispatcher keeps its reading position per file, and files are retired when the
        # worker count changes).
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('file_id', ?)",
                         (uuid.uuid4().hex,))

    def checkpoint(self) -> int:
        return self._db.execute("SELECT seq FROM checkpoint").fetchone()[0]

    def start_after(self, seq: int) -> None:
        """Begin a new partition's evaluation after `seq` (everything before it is done),
        with fresh rules state (the old partitions' state is not carried over)."""
        self._db.execute("UPDATE checkpoint SET seq = ?", (seq,))
        self._db.execute("INSERT OR REPLACE INTO rule_state VALUES (0, ?, NULL, NULL)", (seq,))

    def rule_snapshot(self) -> tuple[int, bytes | None, int | None]:
        """(seq, rules state, clock rules checked until) of the last snapshot;
        (0, None, None) before the first."""
        row = self._db.execute("SELECT seq, state, checked_until_ms FROM rule_state").fetchone()
        return (row[0], row[1], row[2]) if row else (0, None, None)

    def carriers(self) -> list[tuple[str, int, int]]:
        """(name, id, newest fix t) of every carrier seen."""
        return self._db.execute("SELECT name, id, newest_t_ms FROM carriers").fetchall()

    def commit(self, results: list[tuple[int, int, int, int, int, int]], alarms=(),
               snapshot: bytes | None = None, carriers=(), checked_until_ms: int | None = None,
               position: int | None = None) -> None:
        """Record (seq, fixes, in, unsure, out, evaluated_ms) rows and the alarms raised
        (pairs of seq and `alerts.alarms.Alarm`), move the checkpoint; optionally save the
        rules state (as of `position`, default the last row's seq) with the clock rules'
        progress and the carriers seen."""
        if not results and not alarms and snapshot is None:
            return
        last = results[-1][0] if results else position
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR IGNORE INTO evaluated VALUES (?, ?, ?, ?, ?, ?)",
                                 results)
            self._db.executemany(
                "INSERT OR IGNORE INTO alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a.id, a.type, a.severity, a.subject, a.office, a.t_ms, seq, a.received_ms,
                  a.to_json()) for seq, a in alarms])
            if snapshot is not None:
                self._db.execute("INSERT OR REPLACE INTO rule_state VALUES (0, ?, ?, ?)",
                                 (last, snapshot, checked_until_ms))
                self._db.executemany("INSERT OR REPLACE INTO carriers VALUES (?, ?, ?)", carriers)
            if results:
                self._db.execute("UPDATE checkpoint SET seq = max(seq, ?)", (last,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def alarms(self) -> list[dict]:
        import json
        return [json.loads(doc) for (doc,) in
                self._db.execute("SELECT doc FROM alarms ORDER BY t_ms, id")]

    def totals(self) -> dict:
        row = self._db.execute("SELECT count(*), coalesce(sum(fixes), 0), coalesce(sum(verdict_in), 0),"
                               " coalesce(sum(verdict_unsure), 0), coalesce(sum(verdict_out), 0)"
                               " FROM evaluated").fetchone()
        return dict(zip(("batches", "fixes", "in", "unsure", "out"), row))

    def close(self) -> None:
        self._db.close()
