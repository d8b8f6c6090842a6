"""Key periods on the desk (重大活动/敏感节点, issue 13).

    GET  /api/key-periods               the periods that concern the user's subtree
    POST /api/key-periods               {id?, name, start, end, offices, levels?} -> 201
    POST /api/key-periods/{id}/end      ends it now -> 200

During a period the subjects of its offices (and their subtrees) at its levels are judged
by the strict rules and signal_lost comes sooner (`alerts.subject_book`). Who may declare
or end one: an officer whose subtree covers every office the period names (the city for
the city, a county for its own county; SPEC §11: authority follows the office tree); a
viewer reads only (403, `desk.http`'s viewer middleware). A period is a registry entry
(kind `key_periods`): it is validated as an import validates it (422 with every problem,
nothing written) and reaches the workers as any registry change does. Creating and ending
are audited.
"""

from datetime import datetime, timezone

from aiohttp import web

from alerts.registry import ENTRY_KEYS, KeyPeriod, RegistryError, parse_document
from alerts.subject_book import covered_offices
from desk import audit
from desk.context import SESSION, ApiError, desk_of
from desk.http import json_response
from desk.jsonbody import json_body
from geofence.known_keys import unknown_keys

NO_PERIOD = "no such key period"
NOT_COVERED = ("重点时期须由覆盖其全部单位的上级单位设立 / only an office whose subtree covers "
               "every office of the period may declare or end it")
ID_IN_USE = "this key period id is already in use"
OVER = "this key period is already over"
MAX_ID_CHARS = 128


def _document(period: KeyPeriod, now_ms: int) -> dict:
    return {**period.to_document(), "active": period.active_at(now_ms),
            "over": period.end_ms <= now_ms}


async def list_periods(request: web.Request) -> web.Response:
    """The periods covering any office of the user's subtree, by start."""
    desk, session = desk_of(request), request[SESSION]
    now = desk.now_ms()

    def read():
        scope = desk.stores.scope()
        subtree = scope.subtree(session.office)
        periods = [p for p in scope.registry.key_periods.values()
                   if covered_offices(scope.registry, p.offices) & subtree]
        return [_document(p, now) for p in sorted(periods, key=lambda p: (p.start_ms, p.id))]

    return json_response({"key_periods": await desk.stores.run(read)})


async def create(request: web.Request) -> web.Response:
    desk, session = desk_of(request), request[SESSION]
    body = await json_body(request)
    problems = unknown_keys(body, ENTRY_KEYS["key_periods"], "the body")
    now = desk.now_ms()
    entry = {"id": f"kp-{now}", **body}
    if not isinstance(entry["id"], str) or not 0 < len(entry["id"]) <= MAX_ID_CHARS \
            or "/" in entry["id"]:
        problems.append(f"the body: id must be text of 1..{MAX_ID_CHARS} characters, no \"/\"")
    checkers = await desk.checkers()

    def write():
        scope = desk.stores.scope()
        offices = body.get("offices")
        if isinstance(offices, list):
            _may_act(scope, session, [str(c) for c in offices])
        if not problems and entry["id"] in scope.registry.key_periods:
            raise ApiError(409, ID_IN_USE)
        return _import(desk, entry, problems, checkers, now)

    try:
        doc = await desk.stores.run(write)
    except RegistryError as e:
        return _invalid(e.problems)
    await audit.record(request, "key_period.create", detail=doc["id"])
    return json_response(doc, 201)


async def end(request: web.Request) -> web.Response:
    """Ends the period now (one not begun yet: cancelled, it never applies)."""
    desk, session, pid = desk_of(request), request[SESSION], request.match_info["id"]
    now = desk.now_ms()
    checkers = await desk.checkers()

    def write():
        scope = desk.stores.scope()
        period = scope.registry.key_periods.get(pid)
        if period is None or not covered_offices(scope.registry, period.offices) \
                & scope.subtree(session.office):
            raise ApiError(404, NO_PERIOD)
        _may_act(scope, session, period.offices)
        if period.end_ms <= now:
            raise ApiError(409, OVER)
        entry = {**period.to_document(), "end": _rfc3339(max(now, period.start_ms + 1))}
        return _import(desk, entry, [], checkers, now)

    try:
        doc = await desk.stores.run(write)
    except RegistryError as e:
        return _invalid(e.problems)
    await audit.record(request, "key_period.end", detail=pid)
    return json_response(doc)


def _may_act(scope, session, offices) -> None:
    subtree = scope.subtree(session.office)
    if not all(code in subtree for code in offices):
        raise ApiError(403, NOT_COVERED)


def _import(desk, entry: dict, problems: list[str], checkers, now_ms: int) -> dict:
    store = desk.stores.registry
    entry = {k: v for k, v in entry.items() if k in ENTRY_KEYS["key_periods"]}
    if problems:   # the body's own: with the registry's, and nothing written
        try:
            parse_document({"key_periods": [entry]}, store.load(), *checkers)
        except RegistryError as e:
            problems = problems + e.problems
        raise RegistryError(problems)
    registry = store.import_document({"key_periods": [entry]}, *checkers)
    return _document(registry.key_periods[entry["id"]], now_ms)


def _invalid(problems: list[str]) -> web.Response:
    return json_response({"error": f"the key period was not saved: {len(problems)} "
                                   "problem(s)", "problems": problems}, 422)


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
