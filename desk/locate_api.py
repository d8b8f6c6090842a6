"""Locate requests from the desk (点名, 主动定位, SPEC §14): ask a carrier for a person's
position now, and read what came of it.

    POST /api/subjects/{id}/locate  {} or {"alarm": id}   -> 202 the request document
    GET  /api/locate/{request}                            -> the request document
    GET  /api/subjects/{id}/locates                       -> {"requests": [...]}, newest first

The desk only records the request (`carriers.locate_store`, state `pending`); the ingest
process gives it to a carrier connection of the device and records the answer or the
timeout; every change reaches the page as a `locate` event on /api/events
(`desk.locate_events`).

Who may ask: an officer (a viewer's POST is 403 in `desk.http`) who sees the person now
(else 404, as if they did not exist). A person without a phone, or whose supervision
has ended, is 409. The request goes to the office that supervises the person now (the
delegate's during a delegation, as alarms are routed: `Scope.delegation`), which is who
sees its events, and to the person's first phone in the registry.

Rate limits (`[carriers]`), 429 with Retry-After (whole seconds): one request per person
per `locate_subject_every_s`, whoever asks (a carrier bills each positioning, and a
second request while one is out learns nothing new), and at most `locate_user_per_hour`
requests by one user in any hour. Every request is audited (`locate.request`, with the
alarm that prompted it in the detail), and so is every read of one (`locate.read`,
`locate.list`): the answer holds a position.

A delegate office sees the requests made within its delegations' windows, as it sees
the track.
"""

import math

from aiohttp import web

from carriers.locate_store import OPEN_STATES
from desk import audit
from desk.context import SESSION, ApiError, desk_of
from desk.http import json_response
from desk.jsonbody import json_body
from desk.subjects_api import _subject_id, _visible

LOCATE_KEYS = ("alarm",)
MAX_ID_CHARS = 128
HOUR_MS = 3600 * 1000
LIST_WINDOW_MS = 24 * HOUR_MS     # GET /api/subjects/{id}/locates: the last day's
LIST_LIMIT = 50
NO_REQUEST = "no such locate request"
NO_DEVICE = "this person has no phone in the registry: there is nothing to locate"
ENDED = "supervision of this person has ended: no more locate requests"


async def request_locate(request: web.Request) -> web.Response:
    """202 with the new request; 409 without a phone or after the end; 429 too often."""
    desk, session, subject_id = desk_of(request), request[SESSION], _subject_id(request)
    body = await json_body(request, LOCATE_KEYS)
    alarm_id = body.get("alarm")
    if alarm_id is not None and (not isinstance(alarm_id, str)
                                 or not 0 < len(alarm_id) <= MAX_ID_CHARS):
        raise ApiError(400, f"alarm must be an alarm id of at most {MAX_ID_CHARS} characters")
    limits = desk.settings.carriers
    now = desk.now_ms()

    def write():
        scope = desk.stores.scope()
        subject = _visible(scope, session, subject_id, now)
        if not subject.supervised_at(now):
            raise ApiError(409, ENDED)
        if not subject.devices:
            raise ApiError(409, NO_DEVICE)
        if alarm_id is not None:
            _check_alarm(desk, scope, session, alarm_id, subject_id)
        _check_rates(desk.stores.locates, subject_id, session.user, limits, now)
        delegation = scope.delegation(subject.id, now)
        office = delegation.office if delegation is not None else subject.office
        return desk.stores.locates.request(subject.id, subject.devices[0], office, "desk",
                                           session.user, now)

    located = await desk.stores.run(write)
    detail = located.id if alarm_id is None else f"{located.id} alarm {alarm_id}"
    await audit.record(request, "locate.request", subject=subject_id, detail=detail)
    return json_response(located.to_document(), 202)


async def get_locate(request: web.Request) -> web.Response:
    """One request, for whoever sees its person at the time it was made."""
    desk, session = desk_of(request), request[SESSION]
    request_id = request.match_info["request"]
    if not 0 < len(request_id) <= MAX_ID_CHARS:
        raise ApiError(404, NO_REQUEST)
    now = desk.now_ms()

    def read():
        located = desk.stores.locates.get(request_id)
        if located is None or not _sees(desk.stores.scope(), session, located, now):
            raise ApiError(404, NO_REQUEST)
        return located

    located = await desk.stores.run(read)
    if located.state == "answered":   # the answer is the person's position: on record; a
        # pending request is the asker's own action (a page polls it until it closes)
        await audit.record(request, "locate.read", subject=located.subject, detail=located.id)
    return json_response(located.to_document())


async def subject_locates(request: web.Request) -> web.Response:
    """The person's requests of the last day (at most LIST_LIMIT), newest first."""
    desk, session, subject_id = desk_of(request), request[SESSION], _subject_id(request)
    now = desk.now_ms()

    def read():
        scope = desk.stores.scope()
        _visible(scope, session, subject_id, now)
        found = desk.stores.locates.for_subject(subject_id, now - LIST_WINDOW_MS, LIST_LIMIT)
        return [r for r in found if _sees(scope, session, r, now)]

    found = await desk.stores.run(read)
    await audit.record(request, "locate.list", subject=subject_id)
    return json_response({"subject": subject_id,
                          "requests": [r.to_document() for r in found]})


# -- on the database thread --------------------------------------------------------------

def _sees(scope, session, located, now_ms: int) -> bool:
    """Whether the user sees the request's person, at the time the request was made."""
    subject = scope.registry.subjects.get(located.subject)
    if subject is None:
        return False
    windows = scope.track_windows(scope.subtree(session.office), subject, now_ms)
    return any(lo <= located.requested_ms < hi for lo, hi in windows)


def _check_alarm(desk, scope, session, alarm_id: str, subject_id: str) -> None:
    """The alarm named in the body must be one of this person's that the user sees."""
    alarm = desk.stores.alarms.get(alarm_id)
    subtree = scope.subtree(session.office)
    if alarm is None or alarm.subject != subject_id or not scope.sees_alarm(
            subtree, alarm, desk.stores.alarms.offices_of(alarm_id)):
        raise ApiError(400, "alarm is not an alarm of this person that you can see")


def _check_rates(locates, subject_id: str, user: str, limits, now_ms: int) -> None:
    """ApiError 429 with Retry-After when the person has a request still open (answered or
    timed out by the ingest within `locate_timeout_s`: one at a time, the carrier bills
    each), or the person or the user has asked too often."""
    every_ms = limits.locate_subject_every_s * 1000
    if every_ms > 0:
        last = locates.for_subject(subject_id, now_ms - every_ms + 1, 1)
        if last:
            _too_many(f"this person was asked for less than {limits.locate_subject_every_s} s "
                      "ago: wait for that answer", last[0].requested_ms + every_ms - now_ms)
    timeout_ms = limits.locate_timeout_s * 1000
    open_ = [r for r in locates.for_subject(subject_id, now_ms - timeout_ms + 1, 10)
             if r.state in OPEN_STATES]
    if open_:
        _too_many("a locate request for this person is still open: wait for its answer "
                  "or its timeout", open_[0].requested_ms + timeout_ms - now_ms)
    times = locates.user_request_times(user, now_ms - HOUR_MS + 1)
    if len(times) >= limits.locate_user_per_hour:
        frees_at = times[len(times) - limits.locate_user_per_hour] + HOUR_MS
        _too_many(f"at most {limits.locate_user_per_hour} locate requests an hour per user",
                  frees_at - now_ms)


def _too_many(message: str, wait_ms: int) -> None:
    raise ApiError(429, message, {"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))})

