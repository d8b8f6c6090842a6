"""Leave requests and approvals on the desk (SPEC §12).

    POST /api/leaves                          file a request -> 201 (pending)
    GET  /api/leaves?status=&subject=&office=  leaves of the user's subtree
    GET  /api/leaves/{id}                     one leave with its history
    POST /api/leaves/{id}/approve|reject|cancel|close {note}
    GET  /api/subjects/{id}/leaves?year=YYYY  {leaves, days_used, max_days_per_year}

Who may do what (the rules themselves: `supervision.leave_rules`):
- A user sees the leaves of the people their subtree sees (`desk.scope`); anything
  else answers 404 as if it did not exist.
- Request, cancel, close: users of the subject's supervising office or above (a delegate
  office that sees the person: 403).
- Approve, reject: users of the approver office or above; with `four_eyes` an approval
  is by another user than the one who filed it (a rejection may be by anyone with the
  authority: it allows nothing).
- Every refusal of authority is 403; of the caps 422 with every reason; a step that does
  not fit the state (approve a rejected leave) 409.
- A viewer reads and gets 403 on every step (`desk.http`'s viewer middleware, and here).
- Imported permits show as approved leaves "permit:<id>" with source "import":
  read-only here (409), changed by a registry import.
Every step, and every read of one person's leaves, is written to the audit log.
"""

from dataclasses import replace

from aiohttp import web

from alerts.registry import RegistryError
from desk import audit
from desk.context import SESSION, ApiError, desk_of
from desk.http import json_response
from desk.jsonbody import json_body
from geofence.known_keys import unknown_keys
from supervision.leave import IMPORTED_PREFIX, STATUSES, Leave, imported_leave, imported_leaves
from supervision.leave_request import read_request
from supervision.leave_rules import (Limits, approver_office, authority_refusal, cap_refusals,
                                     chained_days, days_used, four_eyes_refusal, local_date,
                                     may_approve)
from supervision.leave_store import LeaveError, LeaveRefusedError, LeaveStore

NO_LEAVE = "no such leave"
NO_SUBJECT = "no such subject"
NOT_SUPERVISING = ("只有监管司法所及其上级可以办理 / only users of the supervising office or "
                   "above may do this")
READ_ONLY = "只读用户不能办理请假 / a viewer cannot change leaves"
IMPORTED = ("导入的外出审批为只读，请通过登记导入修改 / an imported permit is read-only here: "
            "change it with a registry import")
ENDED = "社区矫正已解除 / this person's supervision has ended"
INVALID = "请假申请有误 / the leave request is invalid"
NOTE_KEYS = ("note",)
MAX_NOTE_CHARS = 2_000
MAX_ID_CHARS = 128
DEFAULT_LIMIT = 200
MAX_LIMIT = 1_000


# -- reading -----------------------------------------------------------------------------

async def list_leaves(request: web.Request) -> web.Response:
    desk, session, q = desk_of(request), request[SESSION], request.query
    status = q.get("status", "")
    if status and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
    subject_id, office = q.get("subject", ""), q.get("office", "")
    limit = _limit(q.get("limit", ""))
    now = desk.now_ms()
    limits = Limits.of(desk.settings.leave)

    def read():
        scope = desk.stores.scope()
        subtree = scope.subtree(session.office)
        subjects = {s.id: s for s in scope.visible_subjects(subtree, now)}
        if subject_id:
            subjects = {subject_id: subjects[subject_id]} if subject_id in subjects else {}
        if office:
            narrow = scope.subtree(office) if office in subtree else frozenset()
            subjects = {k: s for k, s in subjects.items() if s.office in narrow}
        store = LeaveStore(desk.stores.registry)
        found = store.query(subjects, status or None)
        if status in ("", "approved"):
            found += imported_leaves(scope.registry, set(subjects))
        found.sort(key=lambda leave: (leave.start_ms, leave.id), reverse=True)
        return [_document(store, scope, session, leave, limits) for leave in found[:limit]]

    leaves = await desk.stores.run(read)
    if subject_id and leaves:
        await audit.record(request, "leave.list", subject=subject_id)
    return json_response({"leaves": leaves})


async def get_leave(request: web.Request) -> web.Response:
    desk, session, leave_id = desk_of(request), request[SESSION], _leave_id(request)
    limits = Limits.of(desk.settings.leave)
    now = desk.now_ms()

    def read():
        scope = desk.stores.scope()
        store = LeaveStore(desk.stores.registry)
        leave = _visible(store, scope, session, leave_id, now)
        return leave.subject, _document(store, scope, session, leave, limits)

    subject, doc = await desk.stores.run(read)
    await audit.record(request, "leave.read", subject=subject, detail=leave_id)
    return json_response(doc)


async def subject_leaves(request: web.Request) -> web.Response:
    desk, session = desk_of(request), request[SESSION]
    subject_id = request.match_info["id"]
    now = desk.now_ms()
    year = _year(request.query.get("year", ""), int(local_date(now)[:4]))
    limits = Limits.of(desk.settings.leave)

    def read():
        scope = desk.stores.scope()
        subject = scope.registry.subjects.get(subject_id)
        if subject is None or not scope.sees_subject(scope.subtree(session.office), subject,
                                                     now):
            raise ApiError(404, NO_SUBJECT)
        store = LeaveStore(desk.stores.registry)
        leaves = store.query([subject_id]) + imported_leaves(scope.registry, {subject_id})
        in_year = [leave for leave in leaves if _touches(leave, year)]
        in_year.sort(key=lambda leave: (leave.start_ms, leave.id), reverse=True)
        used = days_used(year, store.approved_spans(subject_id, scope.registry))
        return {"subject": subject_id, "year": year, "days_used": used,
                "max_days_per_year": limits.max_days_per_year,
                "leaves": [_document(store, scope, session, leave, limits)
                           for leave in in_year]}

    doc = await desk.stores.run(read)
    await audit.record(request, "leave.list", subject=subject_id, detail=str(year))
    return json_response(doc)


# -- steps -------------------------------------------------------------------------------

async def request_leave(request: web.Request) -> web.Response:
    desk, session = desk_of(request), request[SESSION]
    _no_viewer(session)
    body = await json_body(request)
    checkers = await desk.checkers()
    limits = Limits.of(desk.settings.leave)
    now = desk.now_ms()
    wanted, problems = read_request(body, *checkers, now, desk.settings.leave.record_past)
    if wanted is None:
        return _invalid(problems)

    def write():
        scope = desk.stores.scope()
        subtree = scope.subtree(session.office)
        subject = scope.registry.subjects.get(wanted.subject)
        if subject is None or not scope.sees_subject(subtree, subject, now):
            raise ApiError(404, NO_SUBJECT)
        if subject.office not in subtree:
            raise ApiError(403, NOT_SUPERVISING)
        if not subject.supervised_at(now):
            raise LeaveRefusedError([ENDED])
        standing = wanted.recurring is not None
        store = LeaveStore(desk.stores.registry)
        leave = Leave("", subject.id, subject.office, wanted.destinations, wanted.start_ms,
                      wanted.end_ms, wanted.reason, wanted.recurring, "pending", "",
                      session.user, now)
        days = chained_days(leave.span(), _neighbours(store, scope, subject.id))
        leave = replace(leave, approver=approver_office(subject.office, _parent_of(scope),
                                                        days, standing, limits))
        refusals = cap_refusals(leave.span(), store.approved_spans(subject.id, scope.registry),
                                limits)
        if refusals:
            raise LeaveRefusedError(refusals)
        filed = store.request(leave, session.user, session.office, now)
        return _document(store, scope, session, filed, limits)

    try:
        doc = await desk.stores.run(write)
    except LeaveRefusedError as e:
        return _invalid(e.problems)
    await audit.record(request, "leave.create", subject=doc["subject"], detail=doc["id"])
    return json_response(doc, 201)


async def approve(request: web.Request) -> web.Response:
    return await _step(request, "approve")


async def reject(request: web.Request) -> web.Response:
    return await _step(request, "reject")


async def cancel(request: web.Request) -> web.Response:
    return await _step(request, "cancel")


async def close(request: web.Request) -> web.Response:
    return await _step(request, "close")


async def _step(request: web.Request, action: str) -> web.Response:
    desk, session, leave_id = desk_of(request), request[SESSION], _leave_id(request)
    note = _note(await json_body(request))
    checkers = await desk.checkers()
    limits = Limits.of(desk.settings.leave)
    now = desk.now_ms()

    def write():
        scope = desk.stores.scope()
        store = LeaveStore(desk.stores.registry)
        leave = _visible(store, scope, session, leave_id, now)
        _no_viewer(session)
        if leave.source == "import":
            raise ApiError(409, IMPORTED)
        subtree = scope.subtree(session.office)
        if action in ("approve", "reject"):
            # who approves is decided again now: leaves filed since may have joined this
            # one into a longer absence (`chained_days`)
            days = chained_days(leave.span(), _neighbours(store, scope, leave.subject))
            required = approver_office(scope.registry.subjects[leave.subject].office,
                                       _parent_of(scope), days, leave.standing, limits)
            for office in dict.fromkeys((leave.approver, required)):
                if not may_approve(subtree, office):
                    raise ApiError(403, authority_refusal(
                        office, scope.office_name(office), days, leave.standing, limits))
            refusal = four_eyes_refusal(leave.requested_by, session.user, limits) \
                if action == "approve" else None
            if refusal:
                raise ApiError(403, refusal)
            if action == "approve" and \
                    not scope.registry.subjects[leave.subject].supervised_at(now):
                raise LeaveRefusedError([ENDED])
        elif scope.registry.subjects[leave.subject].office not in subtree:
            raise ApiError(403, NOT_SUPERVISING)
        who = (session.user, session.office, note, now)
        if action == "approve":
            done = store.approve(leave_id, *who, checkers, limits)
        elif action == "reject":
            done = store.reject(leave_id, *who)
        elif action == "cancel":
            done = store.cancel(leave_id, *who, checkers)
        else:
            done = store.close_leave(leave_id, *who, checkers)
        return _document(store, desk.stores.scope(), session, done, limits)

    try:
        doc = await desk.stores.run(write)
    except LeaveRefusedError as e:
        return _invalid(e.problems)
    except RegistryError as e:
        return _invalid(e.problems)
    except LeaveError as e:
        raise ApiError(e.status, NO_LEAVE if e.status == 404 else str(e)) from None
    await audit.record(request, f"leave.{action}", subject=doc["subject"], detail=leave_id)
    return json_response(doc)


# -- on the database thread --------------------------------------------------------------

def _neighbours(store: LeaveStore, scope, subject_id: str) -> list:
    """The subject's other leaves that count as one absence with a new one: approved,
    closed, imported and pending."""
    pending = [leave.span() for leave in store.query([subject_id], "pending")]
    return store.approved_spans(subject_id, scope.registry) + pending


def _visible(store: LeaveStore, scope, session, leave_id: str, now_ms: int) -> Leave:
    """The leave if the user sees its subject; ApiError 404 otherwise."""
    try:
        if leave_id.startswith(IMPORTED_PREFIX):
            permit = scope.registry.permits.get(leave_id[len(IMPORTED_PREFIX):])
            if permit is None or permit.source.startswith("leave:"):
                raise ApiError(404, NO_LEAVE)
            leave = imported_leave(scope.registry, permit)
        else:
            leave = store.get(leave_id)
    except LeaveError:
        raise ApiError(404, NO_LEAVE) from None
    subject = scope.registry.subjects.get(leave.subject)
    if subject is None or not scope.sees_subject(scope.subtree(session.office), subject, now_ms):
        raise ApiError(404, NO_LEAVE)
    return leave


def _document(store: LeaveStore, scope, session, leave: Leave, limits: Limits) -> dict:
    can = (leave.status == "pending" and _role(session) != "viewer"
           and may_approve(scope.subtree(session.office), leave.approver)
           and four_eyes_refusal(leave.requested_by, session.user, limits) is None)
    history = store.history(leave.id) if leave.source == "desk" else []
    return leave.to_document(can, history)


def _parent_of(scope):
    def parent(code: str) -> str | None:
        office = scope.registry.offices.get(code)
        return office.parent if office else None
    return parent


def _touches(leave: Leave, year: int) -> bool:
    """Whether the leave's time lies partly in `year` (UTC+8)."""
    first, last = int(local_date(leave.start_ms)[:4]), int(local_date(leave.end_ms - 1)[:4])
    return first <= year <= last


# -- input -------------------------------------------------------------------------------

def _role(session) -> str:
    return getattr(session, "role", "officer")


def _no_viewer(session) -> None:
    if _role(session) == "viewer":
        raise ApiError(403, READ_ONLY)


def _leave_id(request: web.Request) -> str:
    leave_id = request.match_info["id"]
    if not 0 < len(leave_id) <= MAX_ID_CHARS:
        raise ApiError(404, NO_LEAVE)
    return leave_id


def _note(body: dict) -> str:
    problems = unknown_keys(body, NOTE_KEYS, "the body")
    if problems:
        raise ApiError(400, "; ".join(problems))
    note = body.get("note")
    if note is None:
        return ""
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ApiError(400, f"note must be text of at most {MAX_NOTE_CHARS} characters")
    return note.strip()


def _limit(text: str) -> int:
    if text == "":
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number in 1..{MAX_LIMIT}")
    return int(text)


def _year(text: str, default: int) -> int:
    if text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) == 4):
        raise ApiError(400, "year must be a year such as 2026")
    return int(text)


def _invalid(problems: list[str]) -> web.Response:
    """A refusal by the rules or the registry: 422 with every reason."""
    return json_response({"error": f"{INVALID}: {'; '.join(problems)}",
                          "problems": problems}, 422)
