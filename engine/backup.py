"""`geofence backup DIR` and `geofence restore DIR`: online copies of every store file.

A backup copies each SQLite file with `engine.database.copy_online` (SQLite's backup API
in one step: a file as of one commit, taken while its writer goes on; never a file copy of
a live WAL database, which can catch half a checkpoint) into a new or empty DIR, then
writes `manifest.json` (when, the engine's version, each file's name, schema version,
size and SHA-256) last: a DIR without a manifest is an unfinished backup, and restore
refuses it.

Consistency across files. Each file is copied as of its own moment, one after another,
so they are not one snapshot; what makes a restored engine correct is the ORDER. Every
file holds cursors into the files upstream of it:

    alarms.sqlite          the dispatcher's reading position in each evaluation file
                           (its row id, per file_id), and the alarms with stable ids
    evaluation-*.sqlite    the worker's checkpoint: the last fixes-store seq evaluated,
                           and the alarms it raised, with its rules state
    fixes.sqlite           the batches, by seq (never reused), and the carriers' acks

Copying downstream first (alarms, then the evaluation files, retired ones too, then the
fixes; the registry and desk users anywhere, they hold no cursor) means every cursor in a
restored file points at data that is in the restored files, copied later:

- the dispatcher's position is at most the rows the evaluation file had when it was
  copied later, so it re-reads the alarms raised since (they are not in the older alarm
  store) and never skips one; the alarm store ignores an id it has, so none is stored
  twice;
- a worker's checkpoint is at most the seqs the fixes store had when it was copied
  later, so the restored worker evaluates every batch after it and skips none; the
  alarms that re-evaluation raises were raised after the evaluation file was copied, so
  they are not in it, and stable ids (subject, type, triggering fix time) make them the
  same alarms, never a second one;
- every fix acknowledged before the backup began is in the fixes store, copied last.

Copied the other way round, a checkpoint could point past the restored fixes (new batches
would reuse those seqs and be skipped), and a reading position past an evaluation file's
rows (new alarms skipped). Fixes acknowledged after the backup began may or may not be in
it; their carriers' acks are gone with them, so a carrier's resend is taken as new. One
corner: fixes purged (received more than `keep_fixes_days` ago and evaluated by every
worker) between the copy of an evaluation file and the copy of the fixes store are not
re-evaluated after a restore; only an engine a week behind its feed has such fixes.

A restore checks the manifest, every file's size, SHA-256, schema version and SQLite
integrity, then copies the files into a staging directory beside the storage path and
renames it into place: the storage path must be missing or empty, so a running engine
(which keeps files there) is refused, and one started meanwhile makes the rename fail.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engine.database import DatabaseError, copy_online
from engine.paths import EnginePaths, is_store_name
from engine.status import EngineStatus
from engine.store_check import file_problems

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_HASH_CHUNK_BYTES = 1 << 20


class BackupError(DatabaseError):
    """A backup cannot be taken or restored (a non-empty target, a damaged or incomplete
    backup, a running engine); the message says which and what to do."""


@dataclass(frozen=True)
class CopiedFile:
    name: str
    schema_version: int
    bytes: int
    sha256: str


def backup(paths: EnginePaths, target: Path, out=print) -> list[CopiedFile]:
    """Copy every store file of `paths` into `target` (new or empty), downstream first;
    the manifest last. `out` gets one line per file."""
    files = paths.store_files()
    if not files:
        raise BackupError(f"no store files in {paths.root}: nothing to back up")
    _require_empty(target, "back up into a new or empty directory")
    target.mkdir(parents=True, exist_ok=True)
    started = time.time()
    copied = []
    for path in files:
        copy_online(path, target / path.name)
        copied.append(_describe(target / path.name))
        out(f"{path.name}: {copied[-1].bytes:,} bytes")
    _fsync_dir(target)
    _write_manifest(target, {
        "format": MANIFEST_FORMAT, "storage": str(paths.root),
        "started": _utc(started), "finished": _utc(time.time()),
        "engine_version": _engine_version(),
        "files": [vars(f) for f in copied]})
    return copied


def restore(source: Path, paths: EnginePaths, out=print) -> list[CopiedFile]:
    """Verify the backup in `source`, then put its files into `paths.root`, which must be
    missing or empty and have no engine running on it."""
    files = verify(source)
    _refuse_running(paths)
    _require_empty(paths.root, "restore into an empty storage path (move this one away)")
    staging = paths.root.with_name(f".{paths.root.name}.restoring-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for f in files:
            with open(source / f.name, "rb") as src, open(staging / f.name, "xb") as dst:
                shutil.copyfileobj(src, dst, _HASH_CHUNK_BYTES)
                dst.flush()
                os.fsync(dst.fileno())
            out(f"{f.name}: {f.bytes:,} bytes")
        _fsync_dir(staging)
        try:
            os.rename(staging, paths.root)   # replaces only a missing or empty directory
        except OSError as e:
            raise BackupError(f"{paths.root} is no longer empty (an engine started?): "
                              f"nothing restored") from e
        _fsync_dir(paths.root.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def verify(source: Path) -> list[CopiedFile]:
    """The files of the backup in `source`, each checked against the manifest and by
    SQLite's integrity_check; BackupError naming the first problem."""
    try:
        doc = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
        if doc["format"] != MANIFEST_FORMAT:
            raise BackupError(f"{source / MANIFEST} has format {doc['format']!r}; this "
                              f"engine reads format {MANIFEST_FORMAT}")
        files = [CopiedFile(str(f["name"]), int(f["schema_version"]), int(f["bytes"]),
                            str(f["sha256"])) for f in doc["files"]]
    except FileNotFoundError as e:
        raise BackupError(f"{source} has no {MANIFEST}: not a finished geofence backup") from e
    except (ValueError, KeyError, TypeError) as e:
        raise BackupError(f"{source / MANIFEST} is not a geofence backup manifest: {e!r}") from e
    if not files:
        raise BackupError(f"{source / MANIFEST} lists no files")
    for f in files:
        if not is_store_name(f.name):
            raise BackupError(f"{source / MANIFEST} lists {f.name!r}, not a store file name")
        path = source / f.name
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        found = _describe(path)
        if (found.bytes, found.sha256) != (f.bytes, f.sha256):
            raise BackupError(f"{path} differs from the manifest (size or SHA-256): the "
                              "backup is damaged")
        problems = file_problems(path) or ([] if found.schema_version == f.schema_version
                                           else ["its schema version differs from the manifest"])
        if problems:
            raise BackupError(f"{path} is damaged ({problems[0]}): use another backup")
    return files


def _describe(path: Path) -> CopiedFile:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    try:
        db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            version, = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise BackupError(f"{path}: cannot read its schema version: {e}") from e
    return CopiedFile(path.name, version, path.stat().st_size, digest.hexdigest())


def _require_empty(directory: Path, what_to_do: str) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} is not an empty directory: {what_to_do}")


def _refuse_running(paths: EnginePaths) -> None:
    try:
        status = EngineStatus.read(paths.status_file)
    except ValueError:
        status = None
    if status is not None and _alive(status.pid):
        raise BackupError(f"an engine (pid {status.pid}) runs on {paths.root}: stop it, move "
                          "the storage path away, then restore")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_manifest(target: Path, doc: dict) -> None:
    part = target / f".{MANIFEST}.part"
    with open(part, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    part.replace(target / MANIFEST)
    _fsync_dir(target)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geofence-engine")
    except PackageNotFoundError:
        return "unknown"
