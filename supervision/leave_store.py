"""Leaves and their steps, kept in registry.sqlite beside the permits they become.

Tables `leaves` and `leave_steps` (schema step 3 of `alerts.registry.SCHEMA`). A step
that changes what the engine allows is one `RegistryStore.import_document` call whose
`also` hook writes the leave's new status and step: the permit and the leave commit
together or not at all, and the state and the caps are checked again inside that
transaction, so two approvals never both pass a cap meant for one.

    approve  pending -> approved; the permit "leave-<id>" over the leave's window
    reject   pending -> rejected (no permit ever existed)
    cancel   pending -> cancelled; approved and not begun -> cancelled, its permit moved
             to 1970 where it allows nothing (`supervision.leave`); begun: close it instead
    close    approved and begun -> closed (销假); the permit ends now
"""

import json
import sqlite3
from collections.abc import Callable, Iterable

from alerts.registry import Recurring, Registry, RegistryStore
from engine.database import transaction
from geofence.errors import GeofenceError
from supervision.leave import NEVER, Leave, imported_leaves, permit_document, permit_id
from supervision.leave_rules import Limits, Span, cap_refusals

_COLUMNS = ("id, subject, office, destinations, start_ms, end_ms, reason, recurring, status, "
            "approver, requested_by, requested_ms, closed_ms, permit")
MAX_SUBJECTS_IN_QUERY = 500   # more: read the leaves and keep those of the subjects
MIN_PERMIT_MS = 1000   # a permit closed in its first second still lasts one (end > start)


class LeaveError(GeofenceError):
    """A leave step that cannot be taken; `status` is the HTTP answer it deserves."""

    status = 400


class UnknownLeaveError(LeaveError, KeyError):
    """No such leave (or one the user may not see): answer 404."""

    status = 404

    def __str__(self) -> str:
        return "no such leave"


class LeaveStateError(LeaveError):
    """The step does not fit the leave's state (approve a rejected leave, ...): 409."""

    status = 409


class LeaveRefusedError(LeaveError, ValueError):
    """The rules of law refuse it (caps, overlap): 422 with every reason in `problems`."""

    status = 422

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class LeaveStore:
    """The leaves of one registry file, read and written through the RegistryStore's own
    connection (so use it from that store's thread): one connection to the file, and a
    step without a permit change cannot interleave with an import. Cheap to make."""

    def __init__(self, registry: RegistryStore):
        self.registry = registry
        self._db = registry._db

    # -- reading --------------------------------------------------------------------------

    def get(self, leave_id: str) -> Leave:
        return _get(self._db, leave_id)

    def history(self, leave_id: str) -> list[dict]:
        rows = self._db.execute("SELECT action, user, office, at_ms, note FROM leave_steps "
                                "WHERE leave_id = ? ORDER BY seq", (_number(leave_id),))
        return [{"action": a, "user": u, "office": o, "at_ms": t, "note": n}
                for a, u, o, t, n in rows]

    def query(self, subjects: Iterable[str] | None = None,
              status: str | None = None) -> list[Leave]:
        """Desk leaves, newest request first: of `subjects` (all if None), in `status`."""
        sql, args = f"SELECT {_COLUMNS} FROM leaves", []
        where = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        wanted = None if subjects is None else set(subjects)
        if wanted is not None and len(wanted) <= MAX_SUBJECTS_IN_QUERY:
            if not wanted:
                return []
            where.append(f"subject IN ({','.join('?' * len(wanted))})")
            args += sorted(wanted)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._db.execute(sql + " ORDER BY id DESC", args)
        return [_leave_of(row) for row in rows if wanted is None or row[1] in wanted]

    def approved_spans(self, subject: str, registry: Registry) -> list[Span]:
        """What the caps weigh a new leave of `subject` against: its approved and closed
        desk leaves and its imported permits."""
        return _approved_spans(self._db, subject, registry)

    # -- steps ----------------------------------------------------------------------------

    def request(self, leave: Leave, user: str, office: str, at_ms: int, note: str = "") -> Leave:
        """File `leave` (pending); its id is assigned here."""
        with transaction(self._db) as db:
            cur = db.execute(
                "INSERT INTO leaves (subject, office, destinations, start_ms, end_ms, reason, "
                "recurring, status, approver, requested_by, requested_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (leave.subject, leave.office, json.dumps(list(leave.destinations)),
                 leave.start_ms, leave.end_ms, leave.reason, _recurring_json(leave.recurring),
                 leave.approver, user, at_ms))
            leave_id = str(cur.lastrowid)
            _step(db, leave_id, "request", user, office, at_ms, note)
        return self.get(leave_id)

    def approve(self, leave_id: str, user: str, office: str, note: str, now_ms: int,
                checkers: tuple[Callable, Callable], limits: Limits) -> Leave:
        """pending -> approved, the permit written with it; LeaveRefusedError if a cap
        refuses it now, RegistryError if the registry refuses the permit."""
        leave = self._expect(leave_id, ("pending",), "approve")
        if leave.end_ms <= now_ms and not limits.record_past:
            raise LeaveRefusedError(["请假期间已过，无法批准 / the leave's time is over: it "
                                     "can no longer be approved"])

        def write(db: sqlite3.Connection, registry: Registry) -> None:
            current = _expect_in(db, leave_id, ("pending",), "approve")
            refusals = cap_refusals(current.span(), _approved_spans(db, current.subject,
                                                                    registry), limits)
            if refusals:
                raise LeaveRefusedError(refusals)
            _set(db, leave_id, "approved", permit=permit_id(leave_id))
            _step(db, leave_id, "approve", user, office, now_ms, note)

        self.registry.import_document(permit_document(leave, office), *checkers, also=write)
        return self.get(leave_id)

    def reject(self, leave_id: str, user: str, office: str, note: str, now_ms: int) -> Leave:
        with transaction(self._db) as db:
            _expect_in(db, leave_id, ("pending",), "reject")
            _set(db, leave_id, "rejected")
            _step(db, leave_id, "reject", user, office, now_ms, note)
        return self.get(leave_id)

    def cancel(self, leave_id: str, user: str, office: str, note: str, now_ms: int,
               checkers: tuple[Callable, Callable]) -> Leave:
        leave = self._expect(leave_id, ("pending", "approved"), "cancel")
        if leave.status == "pending":
            with transaction(self._db) as db:
                _expect_in(db, leave_id, ("pending",), "cancel")
                _set(db, leave_id, "cancelled")
                _step(db, leave_id, "cancel", user, office, now_ms, note)
            return self.get(leave_id)
        if now_ms >= leave.start_ms:
            raise LeaveStateError("请假已开始，请销假 / the leave has begun: close it (销假) "
                                  "instead of cancelling it")

        def write(db: sqlite3.Connection, _registry: Registry) -> None:
            _expect_in(db, leave_id, ("approved",), "cancel")
            _set(db, leave_id, "cancelled")
            _step(db, leave_id, "cancel", user, office, now_ms, note)

        self.registry.import_document(permit_document(leave, self._permit_office(leave), NEVER),
                                      *checkers, also=write)
        return self.get(leave_id)

    def close_leave(self, leave_id: str, user: str, office: str, note: str, now_ms: int,
                    checkers: tuple[Callable, Callable]) -> Leave:
        """销假: the person reported back; the permit ends now (kept to the second)."""
        leave = self._expect(leave_id, ("approved",), "close")
        if now_ms < leave.start_ms:
            raise LeaveStateError("请假尚未开始，请撤销 / the leave has not begun: cancel it "
                                  "instead of closing it")
        closed = max(leave.start_ms + MIN_PERMIT_MS, now_ms // 1000 * 1000)
        end = min(leave.end_ms, closed)

        def write(db: sqlite3.Connection, _registry: Registry) -> None:
            _expect_in(db, leave_id, ("approved",), "close")
            _set(db, leave_id, "closed", closed_ms=end)
            _step(db, leave_id, "close", user, office, now_ms, note)

        self.registry.import_document(
            permit_document(leave, self._permit_office(leave), (leave.start_ms, end)),
            *checkers, also=write)
        return self.get(leave_id)

    def _permit_office(self, leave: Leave) -> str:
        """The office that approved the leave's permit (kept when the permit changes)."""
        permit = self.registry.load().permits.get(permit_id(leave.id))
        return permit.office if permit is not None else leave.approver

    def _expect(self, leave_id: str, states: tuple[str, ...], action: str) -> Leave:
        return _expect_in(self._db, leave_id, states, action)


# -- rows ----------------------------------------------------------------------------------

_STATE_NAMES = {"pending": "待审批", "approved": "已批准", "rejected": "已驳回",
                "cancelled": "已撤销", "closed": "已销假"}
_ACTION_NAMES = {"approve": ("批准", "approved"), "reject": ("驳回", "rejected"),
                 "cancel": ("撤销", "cancelled"), "close": ("销假", "closed")}


def _expect_in(db: sqlite3.Connection, leave_id: str, states: tuple[str, ...],
               action: str) -> Leave:
    leave = _get(db, leave_id)
    if leave.status not in states:
        chinese, english = _ACTION_NAMES[action]
        raise LeaveStateError(f"{_STATE_NAMES[leave.status]}的请假不能{chinese} / a leave "
                              f"that is {leave.status} cannot be {english}")
    return leave


def _get(db: sqlite3.Connection, leave_id: str) -> Leave:
    row = db.execute(f"SELECT {_COLUMNS} FROM leaves WHERE id = ?",
                     (_number(leave_id),)).fetchone()
    if row is None:
        raise UnknownLeaveError(leave_id)
    return _leave_of(row)


def _number(leave_id: str) -> int:
    if not (leave_id.isascii() and leave_id.isdigit()) or len(leave_id) > 18:
        raise UnknownLeaveError(leave_id)
    return int(leave_id)


def _set(db: sqlite3.Connection, leave_id: str, status: str, **columns) -> None:
    sets = ", ".join(["status = ?", *(f"{k} = ?" for k in columns)])
    db.execute(f"UPDATE leaves SET {sets} WHERE id = ?",
               (status, *columns.values(), _number(leave_id)))


def _step(db: sqlite3.Connection, leave_id: str, action: str, user: str, office: str,
          at_ms: int, note: str) -> None:
    db.execute("INSERT INTO leave_steps (leave_id, action, user, office, at_ms, note) "
               "VALUES (?, ?, ?, ?, ?, ?)", (_number(leave_id), action, user, office, at_ms, note))


def _approved_spans(db: sqlite3.Connection, subject: str, registry: Registry) -> list[Span]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM leaves WHERE subject = ? AND status IN "
                      "('approved', 'closed')", (subject,))
    return [_leave_of(row).span() for row in rows] + \
        [leave.span() for leave in imported_leaves(registry, {subject})]


def _leave_of(row) -> Leave:
    (leave_id, subject, office, destinations, start, end, reason, recurring, status, approver,
     requested_by, requested_ms, closed_ms, permit) = row
    return Leave(str(leave_id), subject, office, tuple(json.loads(destinations)), start, end,
                 reason, _recurring_of(recurring), status, approver, requested_by, requested_ms,
                 "desk", closed_ms, permit)


def _recurring_json(recurring: Recurring | None) -> str | None:
    if recurring is None:
        return None
    return json.dumps({"days": list(recurring.days), "from_min": recurring.from_min,
                       "to_min": recurring.to_min})


def _recurring_of(text: str | None) -> Recurring | None:
    if text is None:
        return None
    d = json.loads(text)
    return Recurring(tuple(d["days"]), d["from_min"], d["to_min"])

