"""A worker's own SQLite file: how far it has evaluated, and what, committed together.

Each evaluation worker owns one file (no writer contention between workers). The
checkpoint and the batch's results go in one transaction, so after a kill -9 a worker
resumes right after the last batch whose results were committed: every batch is
evaluated, and its results are recorded exactly once (`evaluated.seq` is the key).
"""

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER);
CREATE TABLE IF NOT EXISTS evaluated (seq INTEGER PRIMARY KEY, fixes INTEGER,
    verdict_in INTEGER, verdict_unsure INTEGER, verdict_out INTEGER, evaluated_ms INTEGER);
INSERT OR IGNORE INTO checkpoint VALUES (0, 0);
"""


class EvaluationStore:
    def __init__(self, path: str | Path, sync: str = "normal"):
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(SCHEMA)

    def checkpoint(self) -> int:
        return self._db.execute("SELECT seq FROM checkpoint").fetchone()[0]

    def start_after(self, seq: int) -> None:
        """Begin a new partition's evaluation after `seq` (everything before it is done)."""
        self._db.execute("UPDATE checkpoint SET seq = ?", (seq,))

    def commit(self, results: list[tuple[int, int, int, int, int, int]]) -> None:
        """Record (seq, fixes, in, unsure, out, evaluated_ms) rows and move the checkpoint."""
        if not results:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO evaluated VALUES (?, ?, ?, ?, ?, ?)", results)
            self._db.execute("UPDATE checkpoint SET seq = ?", (results[-1][0],))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def totals(self) -> dict:
        row = self._db.execute("SELECT count(*), coalesce(sum(fixes), 0), coalesce(sum(verdict_in), 0),"
                               " coalesce(sum(verdict_unsure), 0), coalesce(sum(verdict_out), 0)"
                               " FROM evaluated").fetchone()
        return dict(zip(("batches", "fixes", "in", "unsure", "out"), row))

    def close(self) -> None:
        self._db.close()
