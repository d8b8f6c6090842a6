"""People in the desk (SPEC §11): list, read, onboard, edit, end supervision.

Every write is a one-subject registry document handed to `RegistryStore.import_document`
on the desk's database thread, so it is validated exactly as `geofence registry import`
validates a file: 422 {error, problems} with every problem at once (unknown body keys
included), nothing half-applied. The workers and the ingest pick the new registry
version up as they pick up an import.

Who may do what (`desk.scope`):
- read (`GET /api/subjects/{id}`): anyone who sees the person, with `handset: {state,
  since}` when their newest row of the last day is a handset status (`desk.tracks`); the
  phone numbers (`devices`) only on the supervising side (the supervising office or
  above), never to a delegate office and never in lists.
- onboard: an officer whose subtree holds the new person's `office` (else 403).
- edit, end: an officer of the supervising office or above; a person outside the user's
  subtree answers 404, a delegate office that sees them 403.

Ending supervision is final for that id: the record is kept (office, home, level, the
end time; the fixes and alarms for their retention), the phone numbers are released
(the ingest refuses their fixes from then on, and a later onboarding may use them), and
the id cannot be edited (409) or onboarded again (409): a new supervision of the same
person is a new case, onboarded under a new id, so the old record stays with the office
that held it. An id in use answers 409 whoever asks (an id must be unique), without
saying whose it is. An end still ahead (a registry file may set one) is no end yet:
edits keep it, and `end` brings it forward to now.
"""

import asyncio
import logging
import sqlite3
from datetime import datetime, timezone

from aiohttp import web

from alerts.registry import ENTRY_KEYS, RegistryError, Subject, parse_document
from desk import audit, tracks
from desk.context import SESSION, ApiError, desk_of
from desk.http import json_response
from desk.jsonbody import json_body
from geofence.errors import GeofenceError
from geofence.known_keys import unknown_keys

log = logging.getLogger("geofence.desk")

# An import entry's keys but `ended` (only `end` ends supervision), and the editable ones
ONBOARD_KEYS = tuple(k for k in ENTRY_KEYS["subjects"] if k != "ended")
EDIT_KEYS = ("devices", "home", "level", "risk", "exclusions", "category", "curfews",
             "night_watch", "cases")
END_KEYS = ("note",)
MAX_NOTE_CHARS = 2_000
MAX_ID_CHARS = 128
NO_SUBJECT = "no such subject"
NOT_SUPERVISING = "only the supervising office or an office above it may change this person"
ENDED = "supervision of this person has ended: the record is kept and can no longer change"
ID_IN_USE = "this id is already in use: a new supervision is onboarded under a new id"
INVALID = "the subject was not saved"


# -- reads -------------------------------------------------------------------------------

async def list_subjects(request: web.Request) -> web.Response:
    """The people the user sees, by id: those supervised now, or with `?ended=1` those
    whose supervision has ended. Never their phone numbers."""
    desk, session = desk_of(request), request[SESSION]
    ended = request.query.get("ended", "0")
    if ended not in ("0", "1"):
        raise ApiError(400, "ended must be 0 or 1")
    now = desk.now_ms()

    def read():
        scope = desk.stores.scope()
        subjects = [s for s in scope.visible_subjects(scope.subtree(session.office), now)
                    if s.supervised_at(now) != (ended == "1")]
        return [scope.subject_document(s, now) for s in sorted(subjects, key=lambda s: s.id)]

    return json_response({"subjects": await desk.stores.run(read)})


async def get_subject(request: web.Request) -> web.Response:
    """One person's record; its phone numbers for the supervising side only. Audited."""
    desk, session, subject_id = desk_of(request), request[SESSION], _subject_id(request)
    now = desk.now_ms()

    def read():
        scope = desk.stores.scope()
        subject = _visible(scope, session, subject_id, now)
        windows = scope.track_windows(scope.subtree(session.office), subject, now)
        return _detail(scope, session, subject, now), subject.index, windows

    doc, index, windows = await desk.stores.run(read)
    handset = await _handset(desk, index, windows, now)
    if handset is not None:
        doc["handset"] = handset
    await _audit(request, "subject.read", subject_id)
    return json_response(doc)


async def _handset(desk, index: int, windows, now_ms: int) -> dict | None:
    """`{state, since}` when the person's newest row of the last day (in the windows the
    user sees) is a handset status (关机, 停机, 无法接通), else None. The fix store failing
    leaves it out (the record itself comes from the registry, and still answers)."""
    if index < 0 or not windows:
        return None
    async with desk.track_reads:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, tracks.handset_status, desk.paths.fixes_db, index,
                now_ms - tracks.DEFAULT_WINDOW_MS, now_ms, windows)
        except (GeofenceError, sqlite3.Error, OSError) as e:
            log.warning("a person's handset status is not shown: the fix store cannot be "
                        "read (%s)", e)
            return None


# -- writes ------------------------------------------------------------------------------

async def onboard(request: web.Request) -> web.Response:
    """201 with the new person's record."""
    desk, session = desk_of(request), request[SESSION]
    body = await json_body(request)
    problems = unknown_keys(body, ONBOARD_KEYS, "the body") + _id_problems(body.get("id"))
    entry = {k: v for k, v in body.items() if k in ONBOARD_KEYS}
    office, subject_id = entry.get("office"), entry.get("id")
    checkers = await desk.checkers()
    now = desk.now_ms()

    def write():
        scope = desk.stores.scope()
        code = _code(office)   # read exactly as the registry reads it (a number is a code)
        if code and code not in scope.subtree(session.office):
            raise ApiError(403, f"office {code} is not in your offices' subtree")
        key = _code(subject_id)
        if key and key in scope.registry.subjects:
            raise ApiError(409, ID_IN_USE)
        return _import(desk, scope, session, entry, problems, checkers, now)

    try:
        doc = await desk.stores.run(write)
    except RegistryError as e:
        return _invalid(e.problems)
    await _audit(request, "subject.create", doc["id"])
    return json_response(doc, 201)


async def edit(request: web.Request) -> web.Response:
    """200 with the record after the change; only the keys given change."""
    desk, session, subject_id = desk_of(request), request[SESSION], _subject_id(request)
    body = await json_body(request)
    if not body:
        raise ApiError(400, f"nothing to change: give any of {', '.join(EDIT_KEYS)}")
    problems = unknown_keys(body, EDIT_KEYS, "the body")
    checkers = await desk.checkers()
    now = desk.now_ms()

    def write():
        scope = desk.stores.scope()
        subject = _changeable(scope, session, subject_id, now)
        if "home" in body and _moves_home(subject, body["home"]):
            _may_move_home(scope, session, subject)
        entry = {**_entry_of(subject), **{k: v for k, v in body.items() if k in EDIT_KEYS}}
        return _import(desk, scope, session, entry, problems, checkers, now)

    try:
        doc = await desk.stores.run(write)
    except RegistryError as e:
        return _invalid(e.problems)
    await _audit(request, "subject.update", subject_id)
    return json_response(doc)


async def end(request: web.Request) -> web.Response:
    """200 with the ended record: supervision ends now, the phone numbers are released."""
    desk, session, subject_id = desk_of(request), request[SESSION], _subject_id(request)
    body = await json_body(request, END_KEYS)
    note = body.get("note") or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ApiError(400, f"note must be text of at most {MAX_NOTE_CHARS} characters")
    checkers = await desk.checkers()
    now = desk.now_ms()

    def write():
        scope = desk.stores.scope()
        subject = _changeable(scope, session, subject_id, now)
        entry = {**_entry_of(subject), "devices": [], "ended": _rfc3339(now)}
        return _import(desk, scope, session, entry, [], checkers, now)

    try:
        doc = await desk.stores.run(write)
    except RegistryError as e:
        return _invalid(e.problems)
    await _audit(request, "subject.end", subject_id, note.strip())
    return json_response(doc)


# -- on the database thread --------------------------------------------------------------

def _visible(scope, session, subject_id: str, now_ms: int) -> Subject:
    """The subject if the user sees it; ApiError 404 otherwise, as if it did not exist."""
    subject = scope.registry.subjects.get(subject_id)
    if subject is None or not scope.sees_subject(scope.subtree(session.office), subject,
                                                 now_ms):
        raise ApiError(404, NO_SUBJECT)
    return subject


def _changeable(scope, session, subject_id: str, now_ms: int) -> Subject:
    """The subject if the user may change it: 404 unseen, 403 a delegate's, 409 ended."""
    subject = _visible(scope, session, subject_id, now_ms)
    if subject.office not in scope.subtree(session.office):
        raise ApiError(403, NOT_SUPERVISING)
    if not subject.supervised_at(now_ms):   # an end still ahead (imported) is no end yet
        raise ApiError(409, ENDED)
    return subject


def _moves_home(subject: Subject, home) -> bool:
    """Whether `home` (as the body gives it) is another area than the subject's; a home
    that is no list of codes is for the import to refuse with the body's other problems."""
    if not isinstance(home, list) or not home:
        return False
    return sorted({str(_code(c)) for c in home}) != sorted(set(subject.home))


def _may_move_home(scope, session, subject: Subject) -> None:
    """A new home is a change of the place of supervision (变更执行地, 社区矫正法 art. 27):
    the parent of the supervising office (the county) or above decides it, as it decides
    a leave beyond `township_max_days`; otherwise a home widened to another county would
    be a permanent leave nobody above approved. 403 for the supervising office alone."""
    office = scope.registry.offices.get(subject.office)
    parent = office.parent if office is not None and office.parent else subject.office
    if parent not in scope.subtree(session.office):
        raise ApiError(403, f"变更居住地须由{scope.office_name(parent)}（{parent}）或上级决定 / "
                            f"a new home is decided by {parent} or above")


def _import(desk, scope, session, entry: dict, problems: list[str], checkers,
            now_ms: int) -> dict:
    """Import `entry` as a one-subject registry document and return the new record;
    RegistryError with the body's problems and the registry's together."""
    document = {"subjects": [entry]}
    store = desk.stores.registry
    try:
        if problems:   # the body's own: report the registry's with them, write nothing
            try:
                parse_document(document, store.load(), *checkers)
            except RegistryError as e:
                problems = problems + e.problems
            raise RegistryError(problems)
        registry = store.import_document(document, *checkers)
    except RegistryError as e:
        raise RegistryError(_unseen_hidden(scope, session, e.problems, entry)) from None
    subject = registry.subjects[str(entry["id"]).strip()]
    return _detail(desk.stores.scope(), session, subject, now_ms)


def _unseen_hidden(scope, session, problems: list[str], entry: dict) -> list[str]:
    """`problems`, without the id of a person whose phones the user may not know: a phone
    already held by someone outside the user's supervising side says "a subject outside
    your offices", never whose it is. Built from the registry, never parsed back out of
    the message (an id may contain anything)."""
    claimed = [p for p in problems if p.startswith("device ") and " is claimed by " in p]
    if not claimed:
        return problems
    kept = [p for p in problems if p not in claimed]
    claimant = _code(entry.get("id")) or ""
    devices = entry.get("devices") if isinstance(entry.get("devices"), list) else []
    subtree = scope.subtree(session.office)
    owner = scope.registry.device_owner
    for device in dict.fromkeys(str(d) for d in devices):
        holder = owner.get(device)
        if holder is None or holder == claimant:
            continue
        held = scope.registry.subjects.get(holder)
        if held is not None and held.office in subtree:   # the supervising side knows it
            kept.append(f"device {device!r} is claimed by subjects {holder} and {claimant}")
        else:
            kept.append(f"device {device!r} of subject {claimant} is held by a subject "
                        "outside your offices")
    return kept


def _code(value) -> str | None:
    """A code or id as the registry reads it: a string, or a whole number's digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


def _detail(scope, session, subject: Subject, now_ms: int) -> dict:
    doc = scope.subject_document(subject, now_ms)
    if subject.office in scope.subtree(session.office):   # the supervising side
        doc["devices"] = list(subject.devices)
    return doc


def _invalid(problems: list[str]) -> web.Response:
    """A registry-style refusal: 422 with every problem (`registry import`'s words)."""
    return json_response({"error": f"{INVALID}: {len(problems)} problem(s)",
                          "problems": problems}, 422)


# -- helpers -----------------------------------------------------------------------------

def _id_problems(value) -> list[str]:
    """A new id must be reachable as /api/subjects/{id}: at most MAX_ID_CHARS printable
    characters, no "/" and no spaces (the import's own checks say whether it is there)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and (len(value.strip()) > MAX_ID_CHARS or "/" in value
                                   or not value.isprintable()
                                   or any(ch.isspace() for ch in value.strip())):
        return [f"the body: id must have at most {MAX_ID_CHARS} printable characters, no "
                "spaces and no \"/\""]
    return []


def _subject_id(request: web.Request) -> str:
    subject_id = request.match_info["id"]
    if not 0 < len(subject_id) <= MAX_ID_CHARS:
        raise ApiError(404, NO_SUBJECT)
    return subject_id


def _entry_of(subject: Subject) -> dict:
    """The subject as a registry import entry (every key, so an import changes nothing;
    an end still ahead, as a file may set it, is kept)."""
    entry = {"id": subject.id, "devices": list(subject.devices), "office": subject.office,
             "home": list(subject.home), "exclusions": list(subject.exclusions),
             "risk": subject.risk, "category": subject.category, "level": subject.level,
             "curfews": [c.to_document() for c in subject.curfews],
             "night_watch": subject.night_watch, "cases": list(subject.cases)}
    if subject.ended_ms is not None:
        entry["ended"] = _rfc3339(subject.ended_ms)
    return entry


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


async def _audit(request: web.Request, action: str, subject: str, detail: str = "") -> None:
    await audit.record(request, action, subject=subject, detail=detail)
