"""The desk's data endpoints (SPEC §8): alarms, people, tracks, the map, the live stream.

Every answer is cut to the user's office subtree (`desk.scope`). Anything outside
it answers 404 exactly as a missing id does, so nobody can learn that it exists.
Reading one person's data (an alarm's detail, a track) and every write is recorded in
the audit log (`desk.audit`) once it succeeded; lists are not.
"""

import asyncio

from aiohttp import web

from alerts.alarm_store import AlarmStateError, UnknownAlarmError
from alerts.alarms import STATUSES
from alerts.rules import ENGINE_TYPES, EVENT_TYPES, ORDER_TYPES, PAIR_TYPES
from desk import audit, events, tracks
from desk.context import HEALTH, SESSION, ApiError, desk_of
from desk.http import json_response
from desk.jsonbody import json_body
from desk.mapdata import build_map_layer
from desk.metrics import CONTENT_TYPE

DEFAULT_LIMIT = 200
MAX_LIMIT = 1_000
MAX_NOTE_CHARS = 2_000
MAX_ID_CHARS = 128
MAX_MS = 2**53
NO_ALARM = "no such alarm"
NO_SUBJECT = "no such subject"


def _int(query, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    text = query.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be in {lo}..{hi}")
    return value


def _choice(query, name: str, allowed) -> str | None:
    value = query.get(name, "")
    if value and value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}")
    return value or None


# -- alarms ------------------------------------------------------------------------------

async def list_alarms(request: web.Request) -> web.Response:
    desk, session, q = desk_of(request), request[SESSION], request.query
    status = _choice(q, "status", STATUSES)
    kind = _choice(q, "type", EVENT_TYPES + ENGINE_TYPES + ORDER_TYPES + PAIR_TYPES)
    since = _int(q, "since", 0, MAX_MS)
    limit = _int(q, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    office = q.get("office", "")

    def read():
        alarms = desk.stores.alarms
        seq = alarms.last_change()   # before the query: a change in between is sent twice,
        scope = desk.stores.scope()  # never lost, to a page that follows ?after=seq
        subtree = scope.subtree(session.office)
        if office and office not in subtree:
            return [], seq
        offices = scope.subtree(office) if office else subtree
        fetch = limit
        while True:   # a delegate's alarms outside its windows are cut: fetch more
            found = alarms.query(status=status, type=kind, offices=offices, since_ms=since,
                                 limit=fetch)
            shown = [a for a in found if scope.in_window(subtree, a)]
            if len(shown) >= limit or len(found) < fetch:
                return shown[:limit], seq
            fetch *= 2

    found, seq = await desk.stores.run(read)
    return json_response({"alarms": [a.to_document() for a in found], "seq": seq})


def _visible(desk, session, alarm_id: str) -> bool:
    """Database thread: whether the alarm exists and the user may see it."""
    scope = desk.stores.scope()
    subtree = scope.subtree(session.office)
    offices = desk.stores.alarms.offices_of(alarm_id)
    return any(code in subtree for code in offices) and \
        scope.in_window(subtree, desk.stores.alarms.get(alarm_id))


def _alarm_id(request: web.Request) -> str:
    alarm_id = request.match_info["id"]
    if not 0 < len(alarm_id) <= MAX_ID_CHARS:
        raise ApiError(404, NO_ALARM)
    return alarm_id


async def get_alarm(request: web.Request) -> web.Response:
    desk, session, alarm_id = desk_of(request), request[SESSION], _alarm_id(request)

    def read():
        if not _visible(desk, session, alarm_id):
            raise ApiError(404, NO_ALARM)
        return _with_history(desk, desk.stores.alarms.get(alarm_id))

    doc = await desk.stores.run(read)
    await audit.record(request, "alarm.read", subject=doc.get("subject"), detail=alarm_id)
    return json_response(doc)


def _with_history(desk, alarm) -> dict:
    """Database thread: the alarm document, every step taken on it and where it stands
    in its episode (`AlarmStore.episode`: when it ended and by which alarm; a return's
    own exit alarm)."""
    return {**alarm.to_document(), "history": desk.stores.alarms.history(alarm.id),
            "episode": desk.stores.alarms.episode(alarm.id)}


async def acknowledge(request: web.Request) -> web.Response:
    return await _act(request, "acknowledge", "alarm.ack")


async def resolve(request: web.Request) -> web.Response:
    return await _act(request, "resolve", "alarm.resolve")


async def _act(request: web.Request, action: str, audit_action: str) -> web.Response:
    desk, session, alarm_id = desk_of(request), request[SESSION], _alarm_id(request)
    body = await json_body(request)
    note = body.get("note", "")
    if note is None:
        note = ""
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ApiError(400, f"note must be text of at most {MAX_NOTE_CHARS} characters")
    now = desk.now_ms()

    def write():
        if not _visible(desk, session, alarm_id):
            raise ApiError(404, NO_ALARM)
        act = getattr(desk.stores.alarms, action)
        return _with_history(desk, act(alarm_id, session.user, session.office, note.strip(),
                                       now))

    try:
        doc = await desk.stores.run(write)
    except UnknownAlarmError:
        raise ApiError(404, NO_ALARM) from None
    except AlarmStateError as e:
        raise ApiError(409, str(e)) from None
    await audit.record(request, audit_action, subject=doc.get("subject"), detail=alarm_id)
    return json_response(doc)


# -- subjects ----------------------------------------------------------------------------

async def track(request: web.Request) -> web.Response:
    desk, session, q = desk_of(request), request[SESSION], request.query
    subject_id = request.match_info["id"]
    now = desk.now_ms()
    until = _int(q, "until", 0, MAX_MS, now)
    since = _int(q, "since", 0, MAX_MS, until - tracks.DEFAULT_WINDOW_MS)
    if since > until:
        raise ApiError(400, "since must not be after until")
    if until - since > tracks.MAX_WINDOW_MS:
        raise ApiError(400, f"a track spans at most {tracks.MAX_WINDOW_MS // 86_400_000} days")

    def subject_windows():   # a delegate office sees its delegations' windows only
        scope = desk.stores.scope()
        subject = scope.registry.subjects.get(subject_id)
        if subject is None:
            return None, ()
        return subject.index, scope.track_windows(scope.subtree(session.office), subject, now)

    index, windows = await desk.stores.run(subject_windows)
    if not windows:
        raise ApiError(404, NO_SUBJECT)
    async with desk.track_reads:
        fixes, truncated = await asyncio.get_running_loop().run_in_executor(
            None, tracks.read_windows, desk.paths.fixes_db, index, since, until, windows)
    await audit.record(request, "track.read", subject=subject_id, detail=f"{since}..{until}")
    return json_response({"subject": subject_id, "since": since, "until": until,
                          "fixes": fixes, "truncated": truncated})


# -- the map -----------------------------------------------------------------------------

async def layer(request: web.Request) -> web.Response:
    desk, session = desk_of(request), request[SESSION]
    if desk.map_layer is None:
        async with desk.map_lock:
            if desk.map_layer is None:
                desk.map_layer = await asyncio.get_running_loop().run_in_executor(
                    None, _build_map, desk.settings)
    map_layer = desk.map_layer
    zones: list[str] = []
    if map_layer.zone_layer is not None:
        now = desk.now_ms()

        def exclusions():
            scope = desk.stores.scope()
            return {code for s in scope.visible_subjects(scope.subtree(session.office), now)
                    for code in s.exclusions}

        zones = map_layer.zone_features_for(await desk.stores.run(exclusions))
    response = web.Response(text=map_layer.geojson(zones), content_type="application/json")
    response.enable_compression()
    return response


def _build_map(settings):
    from engine.layers import load_layers

    return build_map_layer(*load_layers(settings))


# -- the live stream ---------------------------------------------------------------------

async def event_stream(request: web.Request) -> web.StreamResponse:
    desk, session = desk_of(request), request[SESSION]
    subtree = await desk.stores.run(lambda: desk.stores.scope().subtree(session.office))
    client = events.Client(subtree, session.token_hash)

    def still_live() -> bool:   # the session, and the scope the stream was opened with
        office = desk.stores.users.touch(session.token_hash, desk.settings.desk.session_hours,
                                         desk.now_ms())
        return office == session.office and desk.stores.scope().subtree(office) == subtree

    async def is_live() -> bool:
        return await desk.stores.run(still_live)

    return await events.stream(request, desk.feed, client, is_live)


async def health(request: web.Request) -> web.Response:
    """200 {"status": "ok"}; 503 with every storage fault of any engine process while
    one lasts (read from the health board in shared memory, never from the data
    directory, which may be the fault)."""
    board = request.app.get(HEALTH)
    faults = board.faults() if board is not None else []
    if not faults:
        return json_response({"status": "ok"})
    return json_response({"status": "fault", "faults": [f.to_dict() for f in faults]}, 503)


async def metrics(request: web.Request) -> web.Response:
    desk = desk_of(request)
    body = await desk.stores.run(desk.metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
