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

Storage faults (`engine.health`): the writer checks its files' identity before every
write and each write's result. A store moved away, deleted, or on a full, failing or
read-only file system raises `StoreFaultError` (nothing of the group stored, no ack may be
sent); `probe` says when writing works again. It never re-creates a removed file.

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
import numpy as np

from engine.database import Schema, connect, run_script, schema_version, transaction
from engine.health import FileIdentity, StorageFault, fault_of, is_storage_error
from geofence.errors import GeofenceError
from ingest.fixes import FixColumns

FIRST_STATUSES = ("ok", "partial", "rejected")  # what a first answer can be (SPEC §4)
ACK_MEMORY_MS = 24 * 3600 * 1000                 # SPEC minimum; purge_acks no earlier
# Measured on a 2-core dev VM (ext4): 4 KiB pages (SQLite's default) beat 16/64 KiB for
# small batches (a 64 KiB page half-wasted by a 37 KB blob) and are within noise for
# 10,000-fix batches. SQLite's own checkpoints copy the WAL into the database inside some
# commit, stalling the ingest loop 20-50 ms (hundreds on a busy machine): the ack and
# fix-to-alarm tails. So the writer never checkpoints; a thread with its own connection
# runs a PASSIVE checkpoint (which never blocks the writer) every second: each copies
# what the last second wrote (2 MB at 50,000 fixes/s), and the WAL stays small.
CHECKPOINT_EVERY_S = 1.0
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024    # truncate the WAL file back after a checkpoint
# Tracks: fixes of [since, until] arrive from 5 minutes before `since` (the protocol
# refuses fixes further in the future) to whenever a carrier delivers them late; a track
# reads the batches received up to this long either side of its window.
TRACK_LATE_MARGIN_MS = 24 * 3600 * 1000
_TRACK_PAGE_BATCHES = 64


def _version_1(db: sqlite3.Connection) -> None:
    """The tables as the unversioned store had them (which kept its version in `meta`)."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS batches (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            carrier TEXT NOT NULL, batch INTEGER NOT NULL, received_ms INTEGER NOT NULL,
            n INTEGER NOT NULL, fixes BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS acks (
            carrier TEXT NOT NULL, batch INTEGER NOT NULL, at_ms INTEGER NOT NULL,
            status TEXT NOT NULL, accepted INTEGER NOT NULL, rejected BLOB NOT NULL,
            PRIMARY KEY (carrier, batch)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS acks_at_ms ON acks (at_ms);
        DROP TABLE IF EXISTS meta""")


def _version_2(db: sqlite3.Connection) -> None:
    """The device id behind each index in the fixes' `device` column, so that an index
    means the same phone after a restart (the duplicate filter is refilled by index)."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS devices (
            idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
        -- batches up to this seq were stored before indices were recorded: the process
        -- that stored them may have numbered devices otherwise
        CREATE TABLE IF NOT EXISTS devices_recorded_after (seq INTEGER NOT NULL);
        INSERT INTO devices_recorded_after
            SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0)""")


SCHEMA = Schema("fixes store", marker="batches", steps=(_version_1, _version_2))


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    carrier: str
    received_ms: int     # when ingest received the frame (fix-to-alarm latency starts here)
    fixes: FixColumns


def last_seq_of(path: str | os.PathLike) -> int:
    """The highest seq the fixes store file at `path` ever assigned (0 for none), whatever
    its schema version: what `serve` compares the workers' checkpoints with before any
    process has upgraded the file."""
    db = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
    except sqlite3.OperationalError:   # no AUTOINCREMENT table yet: nothing stored
        row = None
    finally:
        db.close()
    return row[0] if row else 0


class StoreError(GeofenceError):
    """The store file cannot be read or written; the message says why (disk, damage).
    Opening it raises `engine.database.DatabaseError` (`NotReadyError` before ingest has
    created it)."""


class StoreFaultError(StoreError):
    """A write was refused or failed for a storage fault (`fault`: which, and what to do);
    nothing of it was stored."""

    def __init__(self, fault: StorageFault):
        super().__init__(fault.reason)
        self.fault = fault


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


@contextmanager
def _sqlite_errors(path: str, doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise StoreError(f"store {path}: {doing} failed: {e}") from e


class StoreReader:
    """A read-only connection for evaluation workers, the desk's tracks and tools.

    Opens an existing store (the ingest's `Store` creates it); SQLite's WAL lets any
    number of readers run beside the one writer, each query seeing committed data only.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._pid = os.getpid()
        self._db = connect(self.path, SCHEMA, read_only=True)

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

    def device_ids(self) -> list[str]:
        """The device id of every index ever stored, by index (0, 1, ...)."""
        with _sqlite_errors(self.path, "device_ids"):
            return [row[0] for row in self._conn().execute("SELECT id FROM devices ORDER BY idx")]

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

    def track(self, subject_index: int, since_ms: int, until_ms: int,
              limit: int) -> tuple[FixColumns, bool]:
        """(one subject's fixes with since_ms <= t <= until_ms in time order, truncated).

        At most `limit` fixes, the newest; `truncated` says whether older ones were left
        out. The store has no index by subject or fix time, so a track is read as a range
        of batches:

        - the batches received in [since - TRACK_LATE_MARGIN_MS, until + the margin]: a
          fix delivered more than a day late is not in its track (it is still evaluated);
        - `received_ms` grows with `seq` (ingest stamps a group of frames and commits it
          in order), so the first batch of the range is found by a binary search over the
          primary key (about 20 point lookups), never a table scan; the scan stops at the
          first batch received after the range;
        - each blob is mapped without copying (`FixColumns.from_bytes`) and filtered with
          numpy on the subject index and the time window.

        Cost: proportional to the whole feed in the range, not to the subject's fixes. For
        2,032 subjects with a fix every 5 minutes (~585,000 fixes, ~22 MB a day), two days
        of batches are 1.17 M fixes; measured on the 2-core dev VM with a warm page cache:
        0.04 s when carriers send batches of 2,000 fixes (586 batches), 0.8 s with batches
        of 20 (58,522 batches: ~13 µs of Python per batch, mostly `from_bytes`). A
        per-subject index would make this constant; it is not needed at this scale.
        """
        parts, kept, dropped = [], 0, False
        with _sqlite_errors(self.path, "track"):
            db = self._conn()
            start = self.first_seq_received_at(since_ms - TRACK_LATE_MARGIN_MS)
            last_received = until_ms + TRACK_LATE_MARGIN_MS
            while start is not None:
                rows = db.execute("SELECT seq, received_ms, fixes FROM batches WHERE seq >= ? "
                                  "ORDER BY seq LIMIT ?", (start, _TRACK_PAGE_BATCHES)).fetchall()
                start = rows[-1][0] + 1 if len(rows) == _TRACK_PAGE_BATCHES else None
                for _seq, received_ms, blob in rows:
                    if received_ms > last_received:
                        start = None
                        break
                    fixes = FixColumns.from_bytes(blob)
                    mask = fixes.subject == subject_index
                    if mask.any():
                        mask &= (fixes.t_ms >= since_ms) & (fixes.t_ms <= until_ms)
                    if mask.any():
                        parts.append(fixes.take(mask))
                        kept += len(parts[-1])
                if kept > 4 * limit:   # bound memory on long windows: keep the newest only
                    parts, dropped = [_newest(parts, limit)], True
                    kept = len(parts[0])
        if not parts:
            return FixColumns.empty(), False
        return _newest(parts, limit), dropped or kept > limit

    def devices_recorded_after(self) -> int:
        """Batches after this seq name devices by recorded index (`device_ids`); older ones
        were stored by an engine that did not record them."""
        with _sqlite_errors(self.path, "devices_recorded_after"):
            return self._conn().execute("SELECT seq FROM devices_recorded_after").fetchone()[0]

    def first_seq_received_at(self, received_ms: int) -> int | None:
        """The smallest seq whose batch was received at or after `received_ms` (binary
        search over the primary key; relies on received_ms growing with seq), None if
        there is none."""
        db = self._conn()
        lo, hi = db.execute("SELECT min(seq), max(seq) FROM batches").fetchone()
        if lo is None:
            return None
        hi += 1   # hi: a seq known to be "after" (past the end)
        while lo < hi:
            mid = (lo + hi) // 2
            row = db.execute("SELECT seq, received_ms FROM batches WHERE seq >= ? ORDER BY seq "
                             "LIMIT 1", (mid,)).fetchone()
            if row is None or row[1] >= received_ms:
                hi = mid
            else:
                lo = row[0] + 1
        row = db.execute("SELECT seq FROM batches WHERE seq >= ? ORDER BY seq LIMIT 1",
                         (lo,)).fetchone()
        return row[0] if row else None

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
    writer (there should be none) waits up to `engine.database.BUSY_TIMEOUT_S` for the lock.
    """

    def __init__(self, path: str | os.PathLike, sync: str = "normal"):
        self.path = os.fspath(path)
        self.sync = sync
        self._pid = os.getpid()
        self._db = db = connect(self.path, SCHEMA, sync=sync)
        try:
            db.execute("PRAGMA wal_autocheckpoint = 0")   # `_Checkpointer` does it, off the loop
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        except BaseException:
            db.close()
            raise
        self.identity = FileIdentity(self.path)
        self._checkpointer = _Checkpointer(self.path)

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on the files this store opened: StoreFaultError if they
        are gone or replaced (checked before, and again after the commit: a file moved
        while it committed took the write, but nothing of it may be acknowledged), or if
        the write fails for the disk."""
        found = self.identity.check()
        if found is not None:
            raise StoreFaultError(found)
        try:
            with transaction(self._conn()) as db:
                yield db
        except sqlite3.Error as e:
            if is_storage_error(e):
                raise StoreFaultError(fault_of(e, self.path)) from e
            raise StoreError(f"store {self.path}: {doing} failed: {e}") from e
        found = self.identity.check()
        if found is not None:
            raise StoreFaultError(found)

    def probe(self) -> None:
        """Write one page (the schema version, unchanged) and commit it: StoreFaultError
        while the store cannot take writes; returns once it can again."""
        with self._writing("probe") as db:
            db.execute(f"PRAGMA user_version = {schema_version(db)}")

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
        with self._writing("commit") as db:
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

    def add_device_ids(self, first_index: int, ids: Sequence[str]) -> None:
        """Record the ids of device indices first_index, first_index + 1, ... (before any
        fix with those indices is committed). ValueError if that does not follow on from
        the ids recorded so far, or an id is there already."""
        with self._writing("add_device_ids") as db:
            count, = db.execute("SELECT count(*) FROM devices").fetchone()
            if first_index != count:
                raise ValueError(f"device index {first_index} does not follow the "
                                 f"{count} recorded")
            try:
                db.executemany("INSERT INTO devices VALUES (?, ?)",
                               enumerate(ids, start=first_index))
            except sqlite3.IntegrityError as e:
                raise ValueError(f"a device id is recorded already: {e}") from e

    def purge_acks(self, older_than_ms: int) -> int:
        """Forget acks first given before `older_than_ms`; returns how many.

        SPEC §4 requires remembering them 24 h: pass at most now - ACK_MEMORY_MS. A batch
        resent after that is taken as new.
        """
        with self._writing("purge_acks") as db:
            return db.execute("DELETE FROM acks WHERE at_ms < ?", (older_than_ms,)).rowcount

    def purge_batches(self, up_to_seq: int) -> int:
        """Delete the fixes of batches with seq <= up_to_seq; returns how many batches.

        Only call it with the lowest checkpoint of EVERY evaluation worker: a batch
        purged before a worker evaluated it is lost to that worker. Seqs are never
        reused. The file does not shrink; SQLite reuses the freed pages.
        """
        with self._writing("purge_batches") as db:
            return db.execute("DELETE FROM batches WHERE seq <= ?", (up_to_seq,)).rowcount

    def purge_batches_before(self, received_before_ms: int, up_to_seq: int, limit: int) -> int:
        """Delete up to `limit` batches received before `received_before_ms` with
        seq <= up_to_seq (the lowest checkpoint of every worker); returns how many."""
        with self._writing("purge_batches") as db:
            return db.execute(
                "DELETE FROM batches WHERE seq IN (SELECT seq FROM batches WHERE seq <= ? "
                "AND received_ms < ? ORDER BY seq LIMIT ?)",
                (up_to_seq, received_before_ms, limit)).rowcount


class _Checkpointer:
    """PASSIVE WAL checkpoints on a thread of their own, so commits never wait for one."""

    def __init__(self, path: str):
        self._db = connect(path, SCHEMA, check_same_thread=False)
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


def _newest(parts: list[FixColumns], limit: int) -> FixColumns:
    """The `limit` newest fixes of all parts, in time order (stable: arrival order breaks
    ties)."""
    fixes = FixColumns.concat(parts)
    return fixes.take(np.argsort(fixes.t_ms, kind="stable")[-limit:])


def _ack_from_row(row: tuple) -> StoredAck:
    carrier, batch, at_ms, status, accepted, rejected = row
    pairs = msgpack.unpackb(rejected, raw=False)
    return StoredAck(carrier, batch, at_ms, status, accepted,
                     tuple((int(i), str(reason)) for i, reason in pairs))
