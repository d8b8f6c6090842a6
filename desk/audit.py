"""The audit log (SPEC §11): who read one person's data or changed anything, and when.

Every read of one person's data (an alarm's detail, a track, a subject) and every write
(acknowledge, resolve, log in and out, leave steps, subject changes) appends one entry:
time, user, office, role, action, subject (None for an action about nobody), the
client's address and a short detail. Handlers call

    await audit.record(request, "alarm.ack", subject="S1", detail="a1")

after the action succeeded. The entries live in desk.sqlite, table `audit`: SQLite
triggers refuse every UPDATE and DELETE, so not even the desk can rewrite what it wrote
(only a new file would lose them, and a backup keeps them). Actions are short dotted
words: "<what>.<verb>" ("subject.read", "track.read", "alarm.read", "alarm.ack",
"alarm.resolve", "user.login", "user.logout", "leave.create", "leave.approve", ...).

Who reads the log (`GET /api/audit`): an entry about a subject is shown to users of the
subject's supervising office or above; an entry about nobody, to users whose subtree
holds the office of the user who acted.
"""

import re
import sqlite3
from dataclasses import asdict, dataclass

from engine.database import run_script, transaction

MAX_DETAIL_CHARS = 500
# "<what>.<verb>", lower case: a misspelt action fails the handler's own tests at once
ACTION = re.compile(r"[a-z][a-z_]{0,30}(\.[a-z][a-z_]{0,30}){1,2}")


def create_tables(db: sqlite3.Connection) -> None:
    """The audit table, its indexes and the triggers that keep it append-only (a schema
    step of desk.sqlite: `desk.users.SCHEMA`)."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms INTEGER NOT NULL, user TEXT NOT NULL, office TEXT NOT NULL,
            role TEXT NOT NULL, action TEXT NOT NULL, subject TEXT, address TEXT NOT NULL,
            detail TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, at_ms);
        CREATE INDEX IF NOT EXISTS audit_user ON audit (user, at_ms);
        CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms)""")
    for verb in ("UPDATE", "DELETE"):   # one statement each: run_script splits at ';'
        db.execute(f"CREATE TRIGGER IF NOT EXISTS audit_no_{verb.lower()} BEFORE {verb} "
                   "ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END")


@dataclass(frozen=True)
class AuditEntry:
    at_ms: int
    user: str
    office: str
    role: str
    action: str
    subject: str | None
    address: str
    detail: str = ""

    def to_document(self) -> dict:
        return asdict(self)


_COLUMNS = "at_ms, user, office, role, action, subject, address, detail"


class AuditLog:
    """The audit table of one desk.sqlite connection (use it from that connection's
    thread)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def append(self, entry: AuditEntry) -> None:
        if not ACTION.fullmatch(entry.action):
            raise ValueError(f"an audit action is <what>.<verb> in lower case, like "
                             f"alarm.ack; got {entry.action!r}")
        with transaction(self._db):
            self._db.execute(f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (entry.at_ms, entry.user, entry.office, entry.role,
                              entry.action, entry.subject, entry.address,
                              entry.detail[:MAX_DETAIL_CHARS]))

    def entries(self, *, subject: str | None = None, user: str | None = None,
                since_ms: int | None = None, before_seq: int | None = None,
                after_seq: int | None = None, limit: int = 1000,
                newest_first: bool = True) -> list[tuple[int, AuditEntry]]:
        """(seq, entry) pairs matching every filter given, newest first (or oldest first
        for an export); `before_seq` / `after_seq` page past entries already read."""
        where, args = [], []
        for clause, value in (("subject = ?", subject), ("user = ?", user),
                              ("at_ms >= ?", since_ms), ("seq < ?", before_seq),
                              ("seq > ?", after_seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT seq, {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        return [(row[0], AuditEntry(*row[1:]))
                for row in self._db.execute(sql, (*args, limit))]


async def record(request, action: str, subject: str | None = None, detail: str = "",
                 session=None) -> None:
    """Append one entry for the request's user (or `session`: a login has none on the
    request yet), written on the desk's database thread."""
    from desk.context import SESSION, desk_of
    from desk.http import client_address

    desk = desk_of(request)
    session = session if session is not None else request[SESSION]
    entry = AuditEntry(at_ms=desk.now_ms(), user=session.user, office=session.office,
                       role=session.role, action=action, subject=subject,
                       address=client_address(request, desk.settings.desk.trust_forwarded_for),
                       detail=detail)
    await desk.stores.run(desk.stores.users.audit.append, entry)
