"""The desk's people: users, their sessions and failed logins, in `<storage>/desk.sqlite`.

- Passwords are kept as scrypt hashes (n=2**14, r=8, p=1, a random 16-byte salt each,
  32-byte key), compared with `hmac.compare_digest`. The cost parameters are stored
  with each hash, so they can be raised later without breaking existing users.
- A session is a random 32-byte token in the browser's cookie; the file keeps only its
  SHA-256, so a copy of the file does not let anyone in. Sessions slide: each use moves
  the expiry `session_hours` ahead (written at most once a minute).
- Failed logins are rows (user name, client address, time). A login is refused with
  "too many attempts" once `attempts` failures for that name from that address, or
  ADDRESS_ATTEMPTS_FACTOR times as many from that address for any names (spraying),
  fall in the last LOGIN_WINDOW_S, even with the right password. Nobody elsewhere can
  lock a name out, and the users behind one proxy address do not lock each other out.
  An attempt is counted as a failure *before* its password is checked and cleared once
  it succeeds, so a burst of parallel guesses cannot slip past the limit. The rows
  survive restarts.

- A user has a role: an `officer` acts, a `viewer` (the procuratorate 检察院, an
  inspector) only reads (the desk refuses its writes: `desk.http`). A disabled user
  (`disable`) has no sessions and cannot log in; the row stays, so the audit log's names
  keep meaning someone.
- The audit log (`desk.audit`) is a table of this file too (schema version 2).

One `UserStore` is one SQLite connection: use it from one thread (the desk's database
thread, or the command line).
"""

import hashlib
import hmac
import secrets
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from desk import audit
from engine.database import Schema, connect, run_script, transaction
from geofence.errors import GeofenceError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
TOKEN_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_NAME_CHARS = 64
LOGIN_WINDOW_S = 15 * 60
ADDRESS_ATTEMPTS_FACTOR = 10     # failures from one address, for any names: this x attempts
SLIDE_EVERY_MS = 60_000          # write a session's new expiry at most this often
ROLES = ("officer", "viewer")
DEFAULT_ROLE = "officer"


def _version_1(db: sqlite3.Connection) -> None:
    """Users, sessions and failed logins, as the unversioned desk had them."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, office TEXT NOT NULL,
            salt BLOB NOT NULL, hash BLOB NOT NULL, n INTEGER NOT NULL, r INTEGER NOT NULL,
            p INTEGER NOT NULL, created_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS sessions (token_hash BLOB PRIMARY KEY, user TEXT NOT NULL,
            created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
        CREATE TABLE IF NOT EXISTS login_failures (user TEXT NOT NULL, address TEXT NOT NULL,
            at_ms INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS login_failures_user ON login_failures (user, at_ms);
        CREATE INDEX IF NOT EXISTS login_failures_address ON login_failures (address, at_ms)""")


def _version_2(db: sqlite3.Connection) -> None:
    """Roles, disabled users (`disabled`: when, in ms; NULL while enabled) and the
    append-only audit log."""
    db.execute("ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'officer'")
    db.execute("ALTER TABLE users ADD COLUMN disabled INTEGER")
    audit.create_tables(db)


SCHEMA = Schema("desk store", marker="users", steps=(_version_1, _version_2))


class UserError(GeofenceError, ValueError):
    """A user name, office or password is not acceptable; the message says which and why."""


@dataclass(frozen=True)
class User:
    name: str
    office: str
    created_ms: int = 0
    role: str = DEFAULT_ROLE
    disabled_ms: int | None = None

    @property
    def disabled(self) -> bool:
        return self.disabled_ms is not None


@dataclass(frozen=True)
class Session:
    user: str
    office: str
    token_hash: bytes
    expires_ms: int
    role: str = DEFAULT_ROLE


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    key: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P


def hash_password(password: str, salt: bytes | None = None) -> PasswordHash:
    """A new scrypt hash of `password` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    return PasswordHash(salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))


def verify_password(password: str, stored: PasswordHash) -> bool:
    """True if `password` hashes to `stored` (constant-time comparison)."""
    key = _scrypt(password, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(key, stored.key)


# Checked against when the user name is unknown, so both answers take the same time
# (scrypt runs all the same; no password gives an all-zero key).
_DUMMY = PasswordHash(b"\0" * SALT_BYTES, b"\0" * KEY_BYTES)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    data = unicodedata.normalize("NFC", password).encode("utf-8")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * r * n + 1024 * 1024)


def check_name(name: str) -> str:
    """`name` if it can be a user name: 1..64 printable characters without spaces."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS or any(
            ch.isspace() or not ch.isprintable() for ch in name):
        raise UserError(f"a user name has 1..{MAX_NAME_CHARS} printable characters and no "
                        "spaces")
    return name


def check_password(password: str) -> str:
    if not password:
        raise UserError("the password is empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"a role is one of {', '.join(ROLES)}; got {role!r}")
    return role


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class UserStore:
    """Users, sessions and failed logins in one SQLite file (created if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = connect(self.path, SCHEMA, sync="full")   # few writes: fsync them
        self.audit = audit.AuditLog(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "UserStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- users -----------------------------------------------------------------------------

    def add(self, name: str, office: str, password: str, *, role: str = DEFAULT_ROLE,
            replace: bool = False, now_ms: int | None = None) -> User:
        """Create a user (or, with `replace`, give an existing one a new office, role and
        password, ending their sessions; a disabled user stays disabled). UserError if
        the name is taken or invalid."""
        check_name(name)
        check_password(password)
        check_role(role)
        hashed = hash_password(password)
        now_ms = _now_ms() if now_ms is None else now_ms
        with transaction(self._db):
            old = self.get(name)
            if old and not replace:
                raise UserError(f"user {name!r} exists (use --replace to set a new password)")
            disabled = old.disabled_ms if old else None
            self._db.execute("INSERT OR REPLACE INTO users (name, office, salt, hash, n, r, "
                             "p, created_ms, role, disabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                             "?, ?)", (name, office, hashed.salt, hashed.key, hashed.n,
                                       hashed.r, hashed.p, now_ms, role, disabled))
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))
        return User(name, office, now_ms, role, disabled)

    def disable(self, name: str, now_ms: int | None = None) -> User:
        """Refuse the user's logins from now on and end every session of theirs (their
        next request is 401; the desk ends their open streams within a second).
        UserError if there is no such user."""
        now_ms = _now_ms() if now_ms is None else now_ms
        with transaction(self._db):
            user = self.get(name)
            if user is None:
                raise UserError(f"there is no user {name!r}")
            self._db.execute("UPDATE users SET disabled = coalesce(disabled, ?) "
                             "WHERE name = ?", (now_ms, name))
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))
        return self.get(name)

    def enable(self, name: str) -> User:
        """Let a disabled user log in again. UserError if there is no such user."""
        with transaction(self._db):
            if self.get(name) is None:
                raise UserError(f"there is no user {name!r}")
            self._db.execute("UPDATE users SET disabled = NULL WHERE name = ?", (name,))
        return self.get(name)

    _USER_COLUMNS = "name, office, created_ms, role, disabled"

    def get(self, name: str) -> User | None:
        row = self._db.execute(f"SELECT {self._USER_COLUMNS} FROM users WHERE name = ?",
                               (name,)).fetchone()
        return User(*row) if row else None

    def list(self) -> list[User]:
        return [User(*row) for row in self._db.execute(
            f"SELECT {self._USER_COLUMNS} FROM users ORDER BY office, name")]

    def password_hash(self, name: str) -> PasswordHash | None:
        row = self._db.execute("SELECT salt, hash, n, r, p FROM users WHERE name = ?",
                               (name,)).fetchone()
        return PasswordHash(*row) if row else None

    # -- logins ----------------------------------------------------------------------------

    def begin_login(self, name: str, address: str, attempts: int,
                    now_ms: int) -> tuple[int, PasswordHash]:
        """Start a login attempt: (0, hash to check) with the attempt counted as a failure
        until `login_succeeded`, or (seconds to wait, _) when the limit is reached (then
        nothing is counted). Unknown names get a dummy hash, checked all the same."""
        window_start = now_ms - LOGIN_WINDOW_S * 1000
        with transaction(self._db):
            self._db.execute("DELETE FROM login_failures WHERE at_ms < ?", (window_start,))
            wait_ms = max(self._wait_ms("user = ? AND address = ?", (name, address),
                                        attempts, window_start),
                          self._wait_ms("address = ?", (address,),
                                        attempts * ADDRESS_ATTEMPTS_FACTOR, window_start))
            if wait_ms > 0:
                return max(1, -(-wait_ms // 1000)), _DUMMY
            self._db.execute("INSERT INTO login_failures VALUES (?, ?, ?)",
                             (name, address, now_ms))
        return 0, self.password_hash(name) or _DUMMY

    def _wait_ms(self, where: str, args: tuple, attempts: int, window_start: int) -> int:
        """How long until fewer than `attempts` failures matching `where` are in the
        window (0: not limited now)."""
        n, = self._db.execute(f"SELECT count(*) FROM login_failures WHERE {where} "
                              "AND at_ms >= ?", (*args, window_start)).fetchone()
        if n < attempts:
            return 0
        # the failure whose ageing out brings the count below the limit
        at, = self._db.execute(f"SELECT at_ms FROM login_failures WHERE {where} AND "
                               "at_ms >= ? ORDER BY at_ms LIMIT 1 OFFSET ?",
                               (*args, window_start, n - attempts)).fetchone()
        return at - window_start

    def login_succeeded(self, name: str, address: str, session_hours: float,
                        now_ms: int) -> tuple[str, Session] | None:
        """Clear the name's failures from this address and open a session: (token for
        the cookie, session); None, with the attempt left counted, if the user is
        disabled (checked in the same transaction, so a disable never races a login)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        hashed = token_hash(token)
        expires = now_ms + int(session_hours * 3600_000)
        with transaction(self._db):
            user = self.get(name)
            if user is None or user.disabled:
                return None
            self._db.execute("DELETE FROM login_failures WHERE user = ? AND address = ?",
                             (name, address))
            self._db.execute("DELETE FROM sessions WHERE expires_ms < ?", (now_ms,))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                             (hashed, name, now_ms, expires))
        return token, Session(name, user.office, hashed, expires, user.role)

    # -- sessions --------------------------------------------------------------------------

    def session(self, token: str, session_hours: float, now_ms: int) -> Session | None:
        """The live session of a cookie token, its expiry slid forward; None if unknown or
        expired (an expired one is deleted)."""
        if not token or len(token) > 256:
            return None
        hashed = token_hash(token)
        row = self._db.execute(
            "SELECT s.user, u.office, s.expires_ms, u.role FROM sessions s JOIN users u "
            "ON u.name = s.user WHERE s.token_hash = ? AND u.disabled IS NULL",
            (hashed,)).fetchone()
        if row is None:
            return None
        user, office, expires, role = row
        if expires <= now_ms:
            self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (hashed,))
            return None
        slid = now_ms + int(session_hours * 3600_000)
        if slid - expires >= SLIDE_EVERY_MS:
            self._db.execute("UPDATE sessions SET expires_ms = ? WHERE token_hash = ?",
                             (slid, hashed))
            expires = slid
        return Session(user, office, hashed, expires, role)

    def touch(self, hashed: bytes, session_hours: float, now_ms: int) -> str | None:
        """The office of the session's user if the session (by token hash) is live, else
        None; slides it like `session`."""
        row = self._db.execute(
            "SELECT s.expires_ms, u.office FROM sessions s JOIN users u ON u.name = s.user "
            "WHERE s.token_hash = ? AND u.disabled IS NULL", (hashed,)).fetchone()
        if row is None or row[0] <= now_ms:
            return None
        slid = now_ms + int(session_hours * 3600_000)
        if slid - row[0] >= SLIDE_EVERY_MS:
            self._db.execute("UPDATE sessions SET expires_ms = ? WHERE token_hash = ?",
                             (slid, hashed))
        return row[1]

    def end_session(self, hashed: bytes) -> None:
        self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (hashed,))

    def live_sessions(self, hashes) -> set[bytes]:
        """Which of the session token hashes `hashes` are still sessions of an enabled
        user (expiry aside: streams check that themselves)."""
        return {hashed for hashed in hashes if self._db.execute(
            "SELECT 1 FROM sessions s JOIN users u ON u.name = s.user "
            "WHERE s.token_hash = ? AND u.disabled IS NULL", (hashed,)).fetchone()}

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file (SQLite's
        `data_version`): a cheap way to notice `geofence user disable` from the desk."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]


def _now_ms() -> int:
    return int(time.time() * 1000)
