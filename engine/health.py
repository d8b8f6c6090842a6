"""Storage faults: noticing them, saying so once, and the health board every process shares.

A store whose file was removed, whose disk is full, failing or read-only must never look
healthy: a writer that carried on would acknowledge what it cannot keep. Each store owner
(`ingest.store.Store`, `service.evaluation_store.EvaluationStore`,
`alerts.alarm_store.AlarmStore`) checks

- the identity of its files (`FileIdentity`: st_dev/st_ino of the database, -wal and -shm
  at the path against the ones it opened; a few µs of stat calls) before each write, and
- the result of every write (`fault_of` names what a sqlite3/OS error means).

Its process then pauses that store's work, retries about once a second (`RETRY_S`) and
goes on by itself when the fault is gone. A removed file never comes back by itself: the
owner stays at fault and never creates a new empty file in its place.

The health board is how the other processes learn of it. It is NOT a file in the data
directory (that directory may be the fault) but one block of shared memory that `serve`
(the supervisor) creates before it starts any child and passes to each (spawn arguments;
a restarted child gets the same block, so a fault outlives the process that saw it):

    slot k (SLOT_BYTES)  = the k-th child in serve's list, written only by that child:
                           version (8 bytes), length (4), JSON {"process",
                           "faults": {store: {kind, reason, since_ms}},
                           "counts": {"store|kind": onsets}}

Only its own child writes a slot (`HealthReporter`), so writers never wait for each
other, and there is no lock a process killed at the wrong moment could leave taken: each
slot starts with a version that its writer makes odd while it writes and even again after,
and a reader copies a slot again until it read the same even version before and after
(`HealthBoard.faults`, a seqlock). Readers: the desk's /healthz (503 while any fault lasts), the
ingest's /metrics (`geofence_storage_fault`, `geofence_storage_faults_total`) and the
dispatcher, which raises one critical `engine_fault` alarm to the root office per fault
occurrence. A process started without a board (tools, tests) gets a private one.
"""

import ctypes
import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from engine.database import is_damage

SLOT_BYTES = 4096
_VERSION = 8                      # bytes of a slot's version, then 4 of length, then JSON
READ_TRIES = 1000                 # a writer takes microseconds; a dead one never finishes
RETRY_S = 1.0
SUFFIXES = ("", "-wal", "-shm")   # the files of a WAL database

# What each kind means for people: the reason's second half (the first names the file).
ADVICE = {
    "missing": "was removed or moved while the engine ran; put it back (with its -wal "
               "and -shm files) or stop the engine and restore from a backup; the engine "
               "will not create a new empty store in its place",
    "replaced": "is not the file the engine opened (replaced while it ran); stop the "
                "engine, check the file, then start it again",
    "disk_full": "cannot be written: the file system is full; free space there",
    "read_only": "cannot be written: the file system is read-only; make it writable again",
    "io_error": "cannot be written: disk I/O error; check the disk and the kernel log",
    "other": "cannot be written",
}


@dataclass(frozen=True)
class StorageFault:
    """What is wrong with one store, for logs, /healthz and the engine_fault alarm."""

    kind: str      # a key of ADVICE
    reason: str    # one line: which file, what happened, what to do


def fault(kind: str, path: str | os.PathLike, detail: str = "") -> StorageFault:
    extra = f" ({detail})" if detail else ""
    return StorageFault(kind, f"{os.fspath(path)} {ADVICE[kind]}{extra}")


def fault_of(error: BaseException, path: str | os.PathLike) -> StorageFault:
    """The storage fault a failed write means (sqlite3 and OS errors)."""
    text = str(error).lower()
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC or "disk is full" in text:
        return fault("disk_full", path)
    if code == errno.EROFS or "readonly" in text or "read-only" in text:
        return fault("read_only", path)
    if code == errno.EIO or "i/o error" in text:
        return fault("io_error", path)
    if code == errno.ENOENT:
        return fault("missing", path)
    return fault("other", path, str(error)[:200])


class FileIdentity:
    """The (st_dev, st_ino) of a database's files when its owner opened them.

    `check` says whether the files at the path are still those: SQLite goes on writing
    into a file that was moved or deleted (the open descriptor keeps it), so without this
    a removed store takes writes that are lost. A -wal/-shm created after opening is
    recorded when first seen.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._ids = {suffix: _identity(self.path + suffix) for suffix in SUFFIXES}
        if self._ids[""] is None:
            raise FileNotFoundError(errno.ENOENT, "store file vanished as it was opened",
                                    self.path)

    def check(self) -> StorageFault | None:
        for suffix, known in self._ids.items():
            now = _identity(self.path + suffix)
            if known is None:
                self._ids[suffix] = now
            elif now is None:
                return fault("missing", self.path)
            elif now != known:
                return fault("replaced", self.path)
        return None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:      # e.g. the directory itself is gone or unreadable
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class BoardFault:
    """One fault on the board: which process, which store, what, since when (wall ms)."""

    process: str
    store: str
    kind: str
    reason: str
    since_ms: int

    def to_dict(self) -> dict:
        return {"process": self.process, "store": self.store, "kind": self.kind,
                "reason": self.reason, "since": self.since_ms}


class HealthBoard:
    """Shared memory with one slot per engine process; see the module docstring."""

    def __init__(self, block, names: list[str]):
        self._block = block
        self.names = list(names)

    @classmethod
    def create(cls, ctx, names: list[str]) -> "HealthBoard":
        """A board for these process names; `ctx` is a multiprocessing context (serve's
        "spawn"), so the block can be handed to the children it starts."""
        return cls(ctx.RawArray(ctypes.c_char, SLOT_BYTES * len(names)), names)

    @classmethod
    def private(cls, process: str) -> "HealthBoard":
        """A board nobody else reads (a process started without serve: tools, tests)."""
        import multiprocessing
        return cls.create(multiprocessing.get_context("spawn"), [process])

    def reporter(self, process: str) -> "HealthReporter":
        return HealthReporter(self, process)

    def _version(self, k: int) -> int:
        return int.from_bytes(self._block[k * SLOT_BYTES:k * SLOT_BYTES + _VERSION], "little")

    def _read(self, k: int) -> dict:
        start = k * SLOT_BYTES
        for _ in range(READ_TRIES):
            before = self._version(k)
            raw = self._block[start + _VERSION:start + SLOT_BYTES]
            if before % 2 == 0 and self._version(k) == before:
                break
            time.sleep(0)
        size = int.from_bytes(raw[:4], "little")
        if 0 < size <= SLOT_BYTES - _VERSION - 4:
            try:
                return json.loads(raw[4:4 + size])
            except ValueError:   # torn by a writer that died mid-write: its successor rewrites
                pass
        return {"faults": {}, "counts": {}}

    def _write(self, k: int, slot: dict) -> None:
        room = SLOT_BYTES - _VERSION - 4
        data = json.dumps(slot, ensure_ascii=False).encode()
        if len(data) > room:   # one line per store: only a very long path gets here
            for entry in slot["faults"].values():
                entry["reason"] = entry["reason"].encode()[:SLOT_BYTES // 8].decode(
                    errors="ignore")
            data = json.dumps(slot, ensure_ascii=False).encode()
        if len(data) > room:
            raise ValueError(f"health slot of {self.names[k]} overflows ({len(data)} bytes)")
        start = k * SLOT_BYTES
        version = self._version(k)
        version += version % 2        # a writer killed mid-write left it odd
        self._block[start:start + _VERSION] = (version + 1).to_bytes(_VERSION, "little")
        end = start + _VERSION + 4 + len(data)
        self._block[start + _VERSION:end] = len(data).to_bytes(4, "little") + data
        self._block[start:start + _VERSION] = (version + 2).to_bytes(_VERSION, "little")

    def slots(self) -> list[tuple[str, dict]]:
        return [(name, self._read(k)) for k, name in enumerate(self.names)]

    def faults(self) -> list[BoardFault]:
        """Every fault that lasts now, oldest first."""
        found = [BoardFault(name, store, f["kind"], f["reason"], f["since_ms"])
                 for name, slot in self.slots() for store, f in slot["faults"].items()]
        return sorted(found, key=lambda f: (f.since_ms, f.process, f.store))

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(process, store, kind) -> how many faults began, since serve started."""
        out = {}
        for name, slot in self.slots():
            for key, n in slot["counts"].items():
                store, _, kind = key.partition("|")
                out[(name, store, kind)] = n
        return out


class HealthReporter:
    """One process's writer of its slot; logs each onset and recovery once."""

    def __init__(self, board: HealthBoard, process: str):
        if process not in board.names:
            raise ValueError(f"no health slot for process {process!r}")
        self.board, self.process = board, process
        self._k = board.names.index(process)
        self.log = logging.getLogger("geofence.health")

    def watch(self, store: str) -> "FaultWatch":
        return FaultWatch(self, store)

    def _current(self, store: str) -> StorageFault | None:
        entry = self.board._read(self._k)["faults"].get(store)
        return None if entry is None else StorageFault(entry["kind"], entry["reason"])

    def _update(self, store: str, found: StorageFault | None) -> None:
        """Set (keeping its start time) or clear `store`'s fault; count each onset."""
        slot = self.board._read(self._k)
        slot["process"] = self.process
        old = slot["faults"].get(store)
        if found is None:
            slot["faults"].pop(store, None)
        else:
            since = old["since_ms"] if old else int(time.time() * 1000)
            slot["faults"][store] = {"kind": found.kind, "reason": found.reason,
                                     "since_ms": since}
            if old is None:
                key = f"{store}|{found.kind}"
                slot["counts"][key] = slot["counts"].get(key, 0) + 1
        self.board._write(self._k, slot)


class FaultWatch:
    """One store of one process: `failed` on every failed check, `ok` on success.

    Logs one ERROR line at onset (the reason says what to do) and one INFO line at
    recovery, never one per attempt. A fault that lasts across a restart of the process
    keeps its start time (the slot outlives the process).
    """

    def __init__(self, reporter: HealthReporter, store: str):
        self.reporter, self.store = reporter, store
        self.fault: StorageFault | None = reporter._current(store)   # left by a restart
        self.retry_at = 0.0

    @property
    def active(self) -> bool:
        return self.fault is not None

    def due(self) -> bool:
        """Whether a retry is due (about once every RETRY_S while at fault)."""
        return self.fault is None or time.monotonic() >= self.retry_at

    def failed(self, found: StorageFault) -> None:
        self.reporter._update(self.store, found)
        if self.fault is None:
            self.reporter.log.error("%s: %s store fault: %s", self.reporter.process,
                                    self.store, found.reason)
        self.fault = found
        self.retry_at = time.monotonic() + RETRY_S

    def ok(self) -> None:
        if self.fault is None:
            return
        self.reporter._update(self.store, None)
        self.reporter.log.info("%s: %s store works again (%s fault over)",
                               self.reporter.process, self.store, self.fault.kind)
        self.fault = None


def is_storage_error(error: BaseException) -> bool:
    """Errors a storage fault raises (not programming errors such as a bad query, and not a
    damaged file, which no retry heals: that stops the engine, `engine.store_check`)."""
    return isinstance(error, (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)) and \
        not isinstance(error, (sqlite3.ProgrammingError, sqlite3.IntegrityError)) and \
        not is_damage(error)
