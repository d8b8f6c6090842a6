"""The durable store between ingest and evaluation: accepted fixes and remembered acks.

SPEC §4 promises that a fix counted in `accepted` is durably stored before the ack is
sent, that it is evaluated even if a process is killed right after, and that a resent
(carrier, batch) is answered `duplicate` with the first answer, for at least 24 h. One
SQLite file in WAL mode keeps those promises:

- The ingest process owns one `Store` (the only writer). It drains several frames,
  validates them, and calls `commit` once for the group: ONE transaction writes every
  batch's fixes and its ack, so after a crash either both are there or neither is (a
  carrier that got no ack resends, and the resend is then new or a duplicate, never
  half-stored). Only when `commit` returns does ingest send the group's acks.
- Evaluation workers, in other processes, open a `StoreReader` on the same file and poll
  `read_batches(after_seq, limit)`. WAL lets them read while the writer commits; each
  read sees whole transactions only, and `seq` grows in commit order, so a worker that
  checkpoints "done up to seq S" never misses a batch.
- `seq` is AUTOINCREMENT: SQLite never hands out a seq again, even after `purge_batches`
  empties the table, so a worker's checkpoint stays meaningful.

Durability (`[storage] sync`, SPEC §9):
- `normal` (default): a commit reaches the WAL file in the OS page cache before `commit`
  returns, and SQLite fsyncs at checkpoints. It survives any process crash (kill -9,
  OOM kill): the kernel still writes the file. A power loss or kernel crash may lose the
  last transactions (never corrupts the file), i.e. acks already sent.
- `full`: every commit is fsynced before `commit` returns; acked fixes survive a power
  loss too, at the cost of one fsync per group commit (group commit amortises it).

Measured on the 2-core dev VM (groups of 4 batches x 10,000 fixes, one commit each):
sync=normal 4-9 M fixes/s stored (p50 commit 1.5-2.4 ms), sync=full 3.4-3.6 M fixes/s
(p50 8 ms, the fsync); a commit that runs a WAL checkpoint takes 35-85 ms (p99).

SQLite connections do not cross processes: open a `Store`/`StoreReader` in the process
that uses it (after fork or spawn); using one from another process raises `StoreError`.
"""

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import msgpack

from geofence.errors import GeofenceError
from ingest.fixes import FixColumns

SYNC_MODES = ("normal", "full")
SCHEMA_VERSION = 1
FIRST_STATUSES = ("ok", "partial", "rejected")  # what a first answer can be (SPEC §4)
ACK_MEMORY_MS = 24 * 3600 * 1000                 # SPEC minimum; purge_acks no earlier
BUSY_TIMEOUT_MS = 10_000
# Measured on a 2-core dev VM (ext4): 4 KiB pages beat 16/64 KiB for small
# batches (a 64 KiB page half-wasted by a 37 KB blob) and are within noise for 10,000-fix
# batches. SQLite's own checkpoints copy the WAL into the database inside some commit,
# stalling the ingest loop 20-50 ms (hundreds on a busy machine): the ack and
# fix-to-alarm tails. So the writer never checkpoints; a thread with its own connection
# runs a PASSIVE checkpoint (which never blocks the writer) every second: each copies
# what the last second wrote (2 MB at 50,000 fixes/s), and the WAL stays small.
PAGE_SIZE_BYTES = 4096
CHECKPOINT_EVERY_S = 1.0
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024    # truncate the WAL file back after a checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    carrier TEXT NOT NULL, batch INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    n INTEGER NOT NULL, fixes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS acks (
    carrier TEXT NOT NULL, batch INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    status TEXT NOT NULL, accepted INTEGER NOT NULL, rejected BLOB NOT NULL,
    PRIMARY KEY (carrier, batch)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS acks_at_ms ON acks (at_ms);
"""


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    carrier: str
    received_ms: int     # when ingest received the frame (fix-to-alarm latency starts here)
    fixes: FixColumns


class StoreError(GeofenceError):
    """The store file cannot be opened, read or written; the message says why (disk, schema)."""


class SyncModeError(StoreError, ValueError):
    """`[storage] sync` is not one of SYNC_MODES; fix the config."""


@dataclass(frozen=True)
class StoredAck:
    """The first answer given for (carrier, batch); a resend repeats accepted and rejected."""

    carrier: str
    batch: int
    at_ms: int
    status: str
    accepted: int
    rejected: tuple[tuple[int, str], ...]   # (fix index, reason) as on the wire


@dataclass(frozen=True, eq=False)
class BatchRecord:
    """One validated batch to store: its accepted fixes and the ack that will be sent.

    `accepted` is len(fixes) by construction, so the stored count cannot disagree with
    the stored fixes. A batch with no accepted fix still records its ack.
    """

    carrier: str
    batch: int
    received_ms: int          # when the frame arrived; also the ack's at_ms, aged by purge_acks
    fixes: FixColumns
    status: str                                  # one of FIRST_STATUSES
    rejected: Sequence[tuple[int, str]] = ()

    @property
    def accepted(self) -> int:
        return len(self.fixes)


@dataclass(frozen=True)
class Committed:
    """What `commit` did with one record.

    `first` is None when the record was stored: send its own ack; `seq` is its batch
    row (None if it had no accepted fix). `first` is the earlier answer when
    (carrier, batch) was already taken (a resend that raced past `lookup_ack`, or the
    same key twice in one group): nothing of the record was stored; answer `duplicate`
    with `first.accepted` and `first.rejected`.
    """

    seq: int | None
    first: StoredAck | None = None

    @property
    def duplicate(self) -> bool:
        return self.first is not None


def check_sync_mode(sync: str) -> str:
    """`sync` if it is allowed; SyncModeError listing the allowed values otherwise."""
    if sync not in SYNC_MODES:
        raise SyncModeError(f"[storage] sync must be one of {', '.join(SYNC_MODES)}; got {sync!r}")
    return sync


@contextmanager
def _closing_on_error(db: sqlite3.Connection) -> Iterator[None]:
    """Close a half-opened connection if setting it up fails."""
    try:
        yield
    except BaseException:
        db.close()
        raise


@contextmanager
def _sqlite_errors(path: str, doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise StoreError(f"store {path}: {doing} failed: {e}") from e


class StoreReader:
    """A read-only connection for evaluation workers (and tools): reads, never writes.

    Opens an existing store (the ingest's `Store` creates it); SQLite's WAL lets any
    number of readers run beside the one writer, each query seeing committed data only.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._pid = os.getpid()
        if not os.path.exists(self.path):
            raise StoreError(f"store {self.path} does not exist; the ingest process creates it")
        with _sqlite_errors(self.path, "open"):
            self._db = sqlite3.connect(Path(self.path).absolute().as_uri() + "?mode=ro",
                                       uri=True, isolation_level=None)
            with _closing_on_error(self._db):
                self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._check_schema()

    def _check_schema(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as e:
            raise StoreError(f"store {self.path} is not a geofence store ({e})") from e
        if row is None or row[0] != SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema version {row and row[0]}; this code "
                             f"reads version {SCHEMA_VERSION}")

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            raise StoreError(f"store {self.path} was opened in process {self._pid}; open a new "
                             "one in this process (SQLite connections do not survive fork)")
        return self._db

    def lookup_ack(self, carrier: str, batch: int) -> StoredAck | None:
        """The first answer given for (carrier, batch), or None if it is new (or purged)."""
        with _sqlite_errors(self.path, "lookup_ack"):
            row = self._conn().execute(
                "SELECT carrier, batch, at_ms, status, accepted, rejected FROM acks"
                " WHERE carrier = ? AND batch = ?", (carrier, batch)).fetchone()
        return None if row is None else _ack_from_row(row)

    def read_batches(self, after_seq: int, limit: int) -> list[tuple[int, FixColumns]]:
        """Up to `limit` stored batches with seq > after_seq, in seq order.

        Seqs grow in commit order and a reader sees whole commits only, so polling with
        the last seq seen never skips a batch. Gaps appear only where batches were purged.
        """
        with _sqlite_errors(self.path, "read_batches"):
            rows = self._conn().execute(
                "SELECT seq, fixes FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()
        return [(seq, FixColumns.from_bytes(blob)) for seq, blob in rows]

    def read_records(self, after_seq: int, limit: int) -> list["StoredBatch"]:
        """As `read_batches`, with each batch's carrier and arrival time (for the rules)."""
        with _sqlite_errors(self.path, "read_records"):
            rows = self._conn().execute(
                "SELECT seq, carrier, received_ms, fixes FROM batches WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [StoredBatch(seq, carrier, received_ms, FixColumns.from_bytes(blob))
                for seq, carrier, received_ms, blob in rows]

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 for none), even if that batch was purged."""
        with _sqlite_errors(self.path, "last_seq"):
            row = self._conn().execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        return row[0] if row else 0

    def fixes_after(self, seq: int) -> int:
        """How many stored fixes have a seq above `seq` (the evaluation backlog)."""
        with _sqlite_errors(self.path, "count"):
            row = self._conn().execute("SELECT COALESCE(SUM(n), 0) FROM batches WHERE seq > ?",
                                       (seq,)).fetchone()
        return int(row[0])

    def stats(self) -> dict[str, int]:
        """Row counts, fixes held, seq range and bytes on disk (database + WAL)."""
        with _sqlite_errors(self.path, "stats"):
            db = self._conn()
            batches, fixes, first = db.execute(
                "SELECT count(*), coalesce(sum(n), 0), coalesce(min(seq), 0) FROM batches"
            ).fetchone()
            acks, = db.execute("SELECT count(*) FROM acks").fetchone()
        wal = self.path + "-wal"
        return {"batches": batches, "fixes": fixes, "acks": acks, "first_seq": first,
                "last_seq": self.last_seq(), "file_bytes": os.path.getsize(self.path),
                "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0}

    def close(self) -> None:
        if self._pid == os.getpid():   # a forked copy must not touch the parent's handle
            if getattr(self, "_checkpointer", None) is not None:
                self._checkpointer.stop()
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Store(StoreReader):
    """The writer: the ingest process's one connection. Creates the file if it is new.

    `sync` is `[storage] sync`: "normal" or "full" (see the module docstring for what
    each survives). Every write is an explicit BEGIN IMMEDIATE ... COMMIT; a second
    writer (there should be none) waits up to BUSY_TIMEOUT_MS for the lock.
    """

    def __init__(self, path: str | os.PathLike, sync: str = "normal"):
        self.path = os.fspath(path)
        self.sync = check_sync_mode(sync)
        self._pid = os.getpid()
        with _sqlite_errors(self.path, "open"):
            self._db = db = sqlite3.connect(self.path, isolation_level=None)
            with _closing_on_error(db):
                self._set_up(sync)
        self._checkpointer = _Checkpointer(self.path)

    def _set_up(self, sync: str) -> None:
        """Pragmas (per connection), then the schema if the file is new."""
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        tables = {name for name, in db.execute("SELECT name FROM sqlite_master")}
        if tables and "meta" not in tables:   # change nothing in another program's file
            raise StoreError(f"store {self.path} is not a geofence store "
                             f"(it has tables {', '.join(sorted(tables))})")
        db.execute(f"PRAGMA page_size = {PAGE_SIZE_BYTES}")   # only takes on a new file
        mode, = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise StoreError(f"store {self.path}: cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {sync.upper()}")
        db.execute("PRAGMA wal_autocheckpoint = 0")   # `_Checkpointer` does it, off the loop
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                       (SCHEMA_VERSION,))
        self._check_schema()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:   # SQLite may already have rolled back (disk full, I/O)
                db.execute("ROLLBACK")
            raise

    def commit(self, records: Sequence[BatchRecord]) -> list[Committed]:
        """Store a group of batches and their acks in ONE transaction; send acks after.

        Returns one `Committed` per record, in order. A (carrier, batch) already stored
        keeps its first answer and comes back with `.first` set: answer `duplicate`.
        When this returns, everything not duplicate is durable (per `sync`); if it
        raises, nothing of the group is stored and no ack may be sent.
        """
        if not records:
            return []
        blobs = [_check_record(r) for r in records]   # encode before taking the lock
        out = []
        with _sqlite_errors(self.path, "commit"), self._transaction() as db:
            for r, (blob, rejected) in zip(records, blobs):
                taken = db.execute(
                    "INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?, ?, ?)",
                    (r.carrier, r.batch, r.received_ms, r.status, r.accepted, rejected)).rowcount
                if not taken:
                    out.append(Committed(None, self.lookup_ack(r.carrier, r.batch)))
                elif blob is None:
                    out.append(Committed(None))
                else:
                    out.append(Committed(db.execute(
                        "INSERT INTO batches (carrier, batch, received_ms, n, fixes)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (r.carrier, r.batch, r.received_ms, r.accepted, blob)).lastrowid))
        return out

    def purge_acks(self, older_than_ms: int) -> int:
        """Forget acks first given before `older_than_ms`; returns how many.

        SPEC §4 requires remembering them 24 h: pass at most now - ACK_MEMORY_MS. A batch
        resent after that is taken as new.
        """
        with _sqlite_errors(self.path, "purge_acks"), self._transaction() as db:
            return db.execute("DELETE FROM acks WHERE at_ms < ?", (older_than_ms,)).rowcount

    def purge_batches(self, up_to_seq: int) -> int:
        """Delete the fixes of batches with seq <= up_to_seq; returns how many batches.

        Only call it with the lowest checkpoint of EVERY evaluation worker: a batch
        purged before a worker evaluated it is lost to that worker. Seqs are never
        reused. The file does not shrink; SQLite reuses the freed pages.
        """
        with _sqlite_errors(self.path, "purge_batches"), self._transaction() as db:
            return db.execute("DELETE FROM batches WHERE seq <= ?", (up_to_seq,)).rowcount

    def purge_batches_before(self, received_before_ms: int, up_to_seq: int, limit: int) -> int:
        """Delete up to `limit` batches received before `received_before_ms` with
        seq <= up_to_seq (the lowest checkpoint of every worker); returns how many."""
        with _sqlite_errors(self.path, "purge_batches"), self._transaction() as db:
            return db.execute(
                "DELETE FROM batches WHERE seq IN (SELECT seq FROM batches WHERE seq <= ? "
                "AND received_ms < ? ORDER BY seq LIMIT ?)",
                (up_to_seq, received_before_ms, limit)).rowcount


class _Checkpointer:
    """PASSIVE WAL checkpoints on a thread of their own, so commits never wait for one."""

    def __init__(self, path: str):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_EVERY_S):
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass   # busy or I/O: the next round tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()


def _check_record(r: BatchRecord) -> tuple[bytes | None, bytes]:
    """The record's fix blob (None if no fix) and packed rejected list; ValueError if invalid."""
    if r.status not in FIRST_STATUSES:
        raise ValueError(f"a stored ack's status must be one of {', '.join(FIRST_STATUSES)}; "
                         f"got {r.status!r} for ({r.carrier}, {r.batch})")
    if not 0 <= r.batch < 2**63:
        raise ValueError(f"batch number {r.batch} is outside 0 .. 2^63-1")
    rejected = msgpack.packb([[int(i), str(reason)] for i, reason in r.rejected])
    return (r.fixes.to_bytes() if len(r.fixes) else None), rejected


def _ack_from_row(row: tuple) -> StoredAck:
    carrier, batch, at_ms, status, accepted, rejected = row
    pairs = msgpack.unpackb(rejected, raw=False)
    return StoredAck(carrier, batch, at_ms, status, accepted,
                     tuple((int(i), str(reason)) for i, reason in pairs))
