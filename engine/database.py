"""How every engine process opens its SQLite files, writes to them and upgrades them.

Each file has one owning module (`ingest.store`, `service.evaluation_store`,
`alerts.alarm_store`, `alerts.registry`, `desk.users`) holding its `Schema`, its writer
and its reader; they all open connections with `connect`, write inside `transaction`, and
their files are upgraded by `migrate`, so every file behaves the same way:

- WAL journal: readers in other processes never block the writer, nor it them;
- `sync` ("normal" or "full", `[storage] sync`): what a commit survives (SPEC §9);
- a busy timeout, so a second writer waits for the lock instead of failing at once;
- a schema version in `PRAGMA user_version`: a writer upgrades the file step by step when
  it opens it; a reader never changes it and waits until its writer has; a file newer
  than the code, or another program's file, is refused and left as it is.

File-level operations on any of them live here too: the fast start-up look at a file
(`file_problem`), the full check (`integrity_problems`), telling damage from other errors
(`is_damage`) and the online copy a backup takes (`copy_online`).
"""

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from geofence.errors import GeofenceError

SYNC_MODES = ("normal", "full")
BUSY_TIMEOUT_S = 30.0
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
MAX_PROBLEMS = 20               # integrity_check lines kept per file
_DAMAGE_CODES = (11, 26)        # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)

Migration = Callable[[sqlite3.Connection], None]


class DatabaseError(GeofenceError):
    """A SQLite file cannot be opened, upgraded or used; the message names the file."""


class NotReadyError(DatabaseError):
    """The file does not exist yet, or its writer has not brought it to this code's schema
    version yet (a reader opened it first): try again later."""


class SyncModeError(DatabaseError, ValueError):
    """`[storage] sync` is not one of SYNC_MODES; fix the config."""


@dataclass(frozen=True)
class Schema:
    """A file's schema history.

    `steps[k]` turns version k into k+1 (so the current version is len(steps)). Step 1
    accepts what the engine wrote before its files had versions: an empty file, or the
    unversioned tables, created `IF NOT EXISTS`. `marker` is a table every version has: a
    version-0 file with tables but not this one is another program's, and is refused.
    """

    name: str                       # for messages: "fixes store", "alarm store", ...
    marker: str
    steps: tuple[Migration, ...]

    @property
    def version(self) -> int:
        return len(self.steps)


def check_sync_mode(sync: str) -> str:
    """`sync` if it is one of SYNC_MODES; SyncModeError naming the allowed values otherwise."""
    if sync not in SYNC_MODES:
        raise SyncModeError(f"[storage] sync must be one of {', '.join(SYNC_MODES)}; got {sync!r}")
    return sync


_EXISTING_ONLY: set[Path] = set()


def existing_stores_only(directory: str | os.PathLike) -> None:
    """From now on this process opens the stores in `directory` but never creates one.

    `geofence serve` creates every store before it starts a process; a process restarted
    after one was deleted must not start a new empty one over the engine's history (a new
    fixes store would number batches from 1 again, below the workers' checkpoints; a new
    alarm store would forget every acknowledgement). It stops instead, saying so."""
    _EXISTING_ONLY.add(Path(directory).absolute())


def connect(path: str | os.PathLike, schema: Schema, *, sync: str = "normal",
            read_only: bool = False, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection (autocommit: write with `transaction`) to a file at `schema.version`.

    A writer creates the file if missing (not in a directory of `existing_stores_only`:
    DatabaseError), puts it in WAL mode with `synchronous = sync` and migrates it. A reader (`read_only`) opens an existing file read-only: NotReadyError
    if there is none or it is older than the code (its writer will upgrade it).
    """
    check_sync_mode(sync)
    path = Path(path)
    where = f"{schema.name} {path}"
    if read_only and not path.exists():
        raise NotReadyError(f"{where} does not exist yet")
    if path.absolute().parent in _EXISTING_ONLY and not path.exists():
        raise DatabaseError(f"{where} is missing: put it back or restore the storage path "
                            f"from a backup (geofence restore); a new empty one would lose "
                            f"track of what is stored and evaluated")
    try:
        if read_only:
            db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True,
                                 isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                 check_same_thread=check_same_thread)
        else:
            db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                 check_same_thread=check_same_thread)
    except sqlite3.Error as e:
        raise DatabaseError(f"{where}: open failed: {e}") from e
    try:
        _refuse_foreign(db, schema, where)
        if read_only:
            require_version(db, schema, where)
        else:
            mode, = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode.lower() != "wal":
                raise DatabaseError(f"{where}: cannot use WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {sync.upper()}")
            migrate(db, schema, where)
    except sqlite3.Error as e:
        db.close()
        raise DatabaseError(f"{where}: open failed: {e}") from e
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error; inside another transaction on
    the same connection it joins the outer one (which commits or rolls back everything)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:   # SQLite may already have rolled back (disk full, I/O)
            db.execute("ROLLBACK")
        raise


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection, schema: Schema, where: str = "") -> None:
    """Bring the file to `schema.version`, one step per transaction (the step and its new
    version number commit together, so a crash leaves a whole version). A file at a
    higher version was written by newer code: DatabaseError, nothing changed."""
    where = where or schema.name
    found = schema_version(db)
    if found > schema.version:
        raise DatabaseError(f"{where} has schema version {found}; this code knows up to "
                            f"version {schema.version} (written by a newer engine?)")
    for version in range(found + 1, schema.version + 1):
        with transaction(db):
            if schema_version(db) != version - 1:   # another process upgraded it meanwhile
                continue
            schema.steps[version - 1](db)
            db.execute(f"PRAGMA user_version = {version}")


def require_version(db: sqlite3.Connection, schema: Schema, where: str = "") -> None:
    """For readers, which never upgrade: NotReadyError while the file is older than
    `schema.version` (its writer upgrades it on start), DatabaseError if it is newer."""
    where = where or schema.name
    found = schema_version(db)
    if found < schema.version:
        raise NotReadyError(f"{where} has schema version {found}; its writer has not yet "
                            f"brought it to version {schema.version}")
    if found > schema.version:
        raise DatabaseError(f"{where} has schema version {found}; this code reads version "
                            f"{schema.version} (written by a newer engine?)")


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated DDL statement by statement (never `executescript`, which would
    commit the caller's open transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _refuse_foreign(db: sqlite3.Connection, schema: Schema, where: str) -> None:
    """Change nothing in another program's file (checked before WAL mode is set)."""
    if schema_version(db):
        return
    tables = {name for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and schema.marker not in tables:
        raise DatabaseError(f"{where} is not a geofence {schema.name} (it has tables "
                            f"{', '.join(sorted(tables))})")


def _open_existing(path: Path, read_only: bool = True) -> sqlite3.Connection:
    """A plain connection to an existing file, never creating one (tools, not the engine)."""
    mode = "ro" if read_only else "rw"
    return sqlite3.connect(path.absolute().as_uri() + f"?mode={mode}", uri=True,
                           isolation_level=None, timeout=BUSY_TIMEOUT_S)


def file_problem(path: str | os.PathLike) -> str | None:
    """What makes `path` unusable as a SQLite file at a glance, or None: the header (magic,
    page size, a file shorter than its header says), then the schema and version read.
    Fast on any size (a few pages); the whole file is `integrity_problems`' job."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        return "its header is not a SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header has an impossible page size ({page_size})"
    pages = int.from_bytes(header[28:32], "big")
    header_counts = pages > 0 and header[24:28] == header[92:96]   # the count is current
    wal = path.with_name(path.name + "-wal")
    wal_empty = not wal.exists() or wal.stat().st_size == 0   # else pages may be there
    if header_counts and wal_empty and size < pages * page_size:
        return f"it is truncated ({size:,} bytes of {pages * page_size:,})"
    try:
        db = _open_existing(path)
        try:
            db.execute("SELECT name, sql FROM sqlite_master").fetchall()
            db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        return f"its schema cannot be read: {e}"
    return None


def integrity_problems(path: str | os.PathLike, quick: bool = False) -> list[str]:
    """SQLite's own check of every page of `path` (`quick`: quick_check, without the
    index-against-table cross check); [] when sound, else its first MAX_PROBLEMS lines."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        db = _open_existing(Path(path))
        try:
            rows = db.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        return [str(e)]
    lines = [str(row[0]) for row in rows]
    return [] if lines == ["ok"] else lines


def is_damage(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is SQLite finding a damaged file
    (SQLITE_CORRUPT, SQLITE_NOTADB): a fault no retry heals, unlike busy or I/O errors."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _DAMAGE_CODES:
            return True
        error = error.__cause__ or error.__context__
    return False


def copy_online(path: str | os.PathLike, target: str | os.PathLike) -> None:
    """A consistent copy of `path` into the new file `target`, while its writer runs.

    SQLite's backup API in ONE step (pages=-1): the whole copy is made inside one read
    transaction, so it is the file as of one commit, and WAL lets the writer go on
    meanwhile (a copy made in several steps restarts whenever another connection writes,
    forever under a busy writer). The copy is a self-contained file (rollback journal, no
    -wal beside it); the engine puts it back in WAL mode when it opens it.
    """
    path, target = Path(path), Path(target)
    try:
        source = _open_existing(path)
        try:
            copy = sqlite3.connect(target, isolation_level=None)
            try:
                source.backup(copy, pages=-1)
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as e:
        raise DatabaseError(f"{path}: copy to {target} failed: {e}") from e
