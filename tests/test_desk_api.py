"""The patrol desk's API over a real HTTP server (127.0.0.1, port 0) and real SQLite files.

The world: the city 3704 above two counties (370402, 370403) above three township
offices; S1 is supervised by 370402001, S2 by 370402002, S3 by 370403001, and S4 by
370403001 but delegated to 370402001 (its alarms go to the delegate with a copy to the
origin). Scoping comes first: nobody reads, lists, acknowledges, resolves, streams or
tracks anything outside their office's subtree.
"""

import asyncio
import json
import re
import shutil
import sqlite3
import threading
import time
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import cache

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from alerts.registry import Registry, RegistryStore
from ingest.fixes import FixColumns
from ingest.store import BatchRecord, Store
from engine.config import Desk, Settings, Storage
from desk import events, make_app, run_desk
from desk.scope import Scope
from desk.tracks import read_track
from desk.users import UserStore
from engine.paths import EnginePaths

PASSWORD = "correct horse"
CITY, C402, C403 = "3704", "370402", "370403"
T1, T2, T3 = "370402001", "370402002", "370403001"
PATHS = {CITY: (CITY,), C402: (CITY, C402), C403: (CITY, C403),
         T1: (CITY, C402, T1), T2: (CITY, C402, T2), T3: (CITY, C403, T3)}
USERS = {"city": CITY, "county402": C402, "town1": T1, "town2": T2, "town3": T3}
HOUR_S = 3600

REGISTRY = {
    "offices": [
        {"code": CITY, "name": "枣庄市社区矫正中心"},
        {"code": C402, "name": "市中区司法局", "parent": CITY},
        {"code": C403, "name": "薛城区司法局", "parent": CITY},
        {"code": T1, "name": "中心街司法所", "parent": C402},
        {"code": T2, "name": "光明路司法所", "parent": C402},
        {"code": T3, "name": "临城司法所", "parent": C403},
    ],
    "subjects": [
        {"id": "S1", "devices": ["13800000001"], "office": T1, "home": [C402]},
        {"id": "S2", "devices": ["13800000002"], "office": T2, "home": [C402], "risk": "key"},
        {"id": "S3", "devices": ["13800000003"], "office": T3, "home": [C403]},
        {"id": "S4", "devices": ["13800000004"], "office": T3, "home": [C403],
         "category": "parole"},
    ],
    "delegations": [{"subject": "S4", "start": "2020-01-01T00:00:00+08:00", "office": T1,
                     "home": [C402]}],
}
# alarm id -> (subject, offices it went to: supervising first, then copies)
ALARMS = {"a1": ("S1", (T1,)), "a2": ("S2", (T2,)), "a3": ("S3", (T3,)),
          "a4": ("S4", (T1, T3)), "a5": (None, (CITY,))}
VISIBLE = {"city": {"a1", "a2", "a3", "a4", "a5"}, "county402": {"a1", "a2", "a4"},
           "town1": {"a1", "a4"}, "town2": {"a2"}, "town3": {"a3", "a4"}}
SUBJECTS = {"city": {"S1", "S2", "S3", "S4"}, "county402": {"S1", "S2", "S4"},
            "town1": {"S1", "S4"}, "town2": {"S2"}, "town3": {"S3", "S4"}}


def alarm(alarm_id: str, t_ms: int) -> Incoming:
    subject, offices = ALARMS[alarm_id]
    doc = {"id": alarm_id, "type": "feed_outage" if subject is None else "zone_exit",
           "severity": "critical" if subject is None else "high", "subject": subject,
           "office": offices[0], "t": t_ms, "raised_at": t_ms,
           "fix": {"t": t_ms, "lon": 117.55, "lat": 34.86, "acc": 30.0, "src": "gps"},
           "where": None, "home": [C402], "status": "open",
           "details": {"copy_to": list(offices[1:])} if len(offices) > 1 else {}}
    return Incoming(Alarm.from_document(doc), tuple(PATHS[o] for o in offices))


@cache
def code_checkers():
    from engine.layers import code_checkers, load_layers
    return code_checkers(*load_layers(Settings()))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The world's files, built once (scrypt and the layer are slow), copied per test."""
    root = tmp_path_factory.mktemp("desk-template")
    paths = EnginePaths.create(str(root))
    registry = RegistryStore(paths.registry_db)
    registry.import_document(REGISTRY, *code_checkers())
    registry.close()
    with UserStore(paths.desk_db) as users:
        for name, office in USERS.items():
            users.add(name, office, PASSWORD)
    store = AlarmStore(paths.alarms_db)
    now = int(time.time() * 1000)
    store.add([alarm(a, now - 60_000 * n) for n, a in enumerate(ALARMS)], now_ms=now)
    store.close()
    return root


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    settings = Settings(storage=Storage(path=str(root)), desk=Desk(bind="127.0.0.1:0"))
    return settings, EnginePaths.create(str(root))


@asynccontextmanager
async def serving(settings, paths, clock=None):
    app = make_app(settings, paths, **({"clock": clock} if clock else {}))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@asynccontextmanager
async def logged_in(server, *names):
    """One session per user name, logged in; all closed at the end."""
    sessions = []
    try:
        for name in names:
            session = client()
            sessions.append(session)
            async with session.post(server.make_url("/api/login"),
                                    json={"user": name, "password": PASSWORD}) as r:
                assert r.status == 200, await r.text()
        yield sessions[0] if len(sessions) == 1 else sessions
    finally:
        for session in sessions:
            await session.close()


async def get(session, server, path, **params):
    async with session.get(server.make_url(path), params=params) as r:
        return r.status, await r.json()


async def post(session, server, path, body=None):
    async with session.post(server.make_url(path), json=body or {}) as r:
        return r.status, (await r.json() if r.status != 204 else None)


def run(coro):
    return asyncio.run(coro)


# -- scoping -----------------------------------------------------------------------------

def test_each_user_lists_exactly_the_alarms_and_subjects_of_their_subtree(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, *USERS) as sessions:
            for name, session in zip(USERS, sessions):
                status, body = await get(session, server, "/api/alarms")
                assert status == 200
                assert {a["id"] for a in body["alarms"]} == VISIBLE[name], name
                times = [a["t"] for a in body["alarms"]]
                assert times == sorted(times, reverse=True)   # newest first
                status, body = await get(session, server, "/api/subjects")
                assert {s["id"] for s in body["subjects"]} == SUBJECTS[name], name
                assert all("devices" not in s for s in body["subjects"])
                assert "138000000" not in json.dumps(body)     # never a phone number
    run(scenario())


def test_the_office_filter_narrows_within_the_subtree_and_never_widens_it(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "city", "town1") as (city, town1):
            _, body = await get(city, server, "/api/alarms", office=C402)
            assert {a["id"] for a in body["alarms"]} == {"a1", "a2", "a4"}
            _, body = await get(city, server, "/api/alarms", office=T3)
            assert {a["id"] for a in body["alarms"]} == {"a3", "a4"}
            for outside in (C403, C402, CITY, T2, "nope"):   # elsewhere, or above the user
                status, body = await get(town1, server, "/api/alarms", office=outside)
                assert (status, body["alarms"]) == (200, []), outside
            _, body = await get(town1, server, "/api/alarms", office=T1)
            assert {a["id"] for a in body["alarms"]} == {"a1", "a4"}
    run(scenario())


def test_outside_the_subtree_answers_404_exactly_like_a_missing_id(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "city") as (town1, city):
            missing = await get(town1, server, "/api/alarms/no-such-id")
            assert missing[0] == 404 and set(missing[1]) == {"error"}
            for other in ("a2", "a3", "a5"):
                assert await get(town1, server, f"/api/alarms/{other}") == missing
                assert await post(town1, server, f"/api/alarms/{other}/ack",
                                  {"note": "x"}) == missing
                assert await post(town1, server, f"/api/alarms/{other}/resolve",
                                  {"note": "x"}) == missing
            _, doc = await get(city, server, "/api/alarms/a2")
            assert doc["status"] == "open" and len(doc["history"]) == 1   # untouched
            no_subject = await get(town1, server, "/api/subjects/S0/track")
            assert no_subject[0] == 404
            for other in ("S2", "S3"):
                assert await get(town1, server, f"/api/subjects/{other}/track") == no_subject
            assert (await get(town1, server, "/api/subjects/S1/track"))[0] == 200
    run(scenario())


def test_a_delegated_subject_is_seen_by_the_delegate_and_the_origin_office(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "town3", "town2") as (town1, town3, town2):
            for session in (town1, town3):
                status, doc = await get(session, server, "/api/alarms/a4")
                assert status == 200 and doc["subject"] == "S4"
                assert (await get(session, server, "/api/subjects/S4/track"))[0] == 200
            assert (await get(town2, server, "/api/alarms/a4"))[0] == 404
            _, body = await get(town1, server, "/api/subjects")
            s4 = next(s for s in body["subjects"] if s["id"] == "S4")
            assert s4 == {"id": "S4", "office": T1, "home": [C402], "risk": "normal",
                          "category": "parole", "exclusions": [], "level": "normal",
                          "ended": None, "origin": T3, "cases": []}
            status, doc = await post(town3, server, "/api/alarms/a4/ack", {"note": "origin"})
            assert status == 200 and doc["history"][-1]["office"] == T3
    run(scenario())


def test_an_exit_after_its_return_is_listed_beside_the_first_and_the_return_links_it(world):
    settings, paths = world
    store = AlarmStore(paths.alarms_db)
    first = store.get("a1")
    later = [replace(alarm("a1", first.t_ms + 60_000).alarm, id=i, type=kind, t_ms=t,
                     details=details, _json=None)
             for i, kind, t, details in (
                 ("r1", "zone_return", first.t_ms + 60_000, {"exit_id": "a1"}),
                 ("a6", "zone_exit", first.t_ms + 120_000, {}))]
    assert store.add([Incoming(a, (PATHS[T1],)) for a in later], now_ms=first.t_ms) == \
        ["r1", "a6"]
    store.close()

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town1") as town1:
            _, body = await get(town1, server, "/api/alarms", type="zone_exit")
            exits = [(a["id"], a["t"]) for a in body["alarms"] if a["subject"] == "S1"]
            assert exits == [("a6", first.t_ms + 120_000), ("a1", first.t_ms)]
            _, doc = await get(town1, server, "/api/alarms/a1")
            assert doc["episode"] == {"ended": first.t_ms + 60_000, "ended_by": "r1"}
            assert doc["status"] == "open"
            _, doc = await get(town1, server, "/api/alarms/r1")
            assert doc["episode"] == {"exit": "a1"}
            _, doc = await get(town1, server, "/api/alarms/a6")
            assert doc["episode"] == {}
    run(scenario())


def test_the_county_sees_its_townships_and_the_city_sees_everything(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "county402", "city") as (county, city):
            assert (await get(county, server, "/api/alarms/a2"))[0] == 200
            assert (await get(county, server, "/api/alarms/a3"))[0] == 404
            status, doc = await post(county, server, "/api/alarms/a2/ack", {"note": "seen"})
            assert status == 200 and doc["history"][-1]["user"] == "county402"
            for alarm_id in ALARMS:
                assert (await get(city, server, f"/api/alarms/{alarm_id}"))[0] == 200
            _, me = await get(county, server, "/api/me")
            assert [o["code"] for o in me["offices"]] == [C402, T1, T2]
            assert me["office_name"] == "市中区司法局"
    run(scenario())


# -- acting on alarms --------------------------------------------------------------------

def test_ack_and_resolve_record_who_when_and_note_and_a_second_resolve_is_409(world):
    clock = Clock()

    async def scenario():
        async with serving(*world, clock=clock) as server, logged_in(server, "town1") as town1:
            clock.t += 60
            status, doc = await post(town1, server, "/api/alarms/a1/ack",
                                     {"note": "calling him"})
            assert status == 200 and doc["status"] == "acknowledged"
            acked_at = int(clock.t * 1000)
            clock.t += 60
            status, doc = await post(town1, server, "/api/alarms/a1/resolve",
                                     {"note": "at his mother's, inside the county"})
            assert status == 200 and doc["status"] == "resolved"
            assert [(h["action"], h["user"], h["office"], h["note"])
                    for h in doc["history"]] == [
                ("raised", None, T1, None), ("acknowledged", "town1", T1, "calling him"),
                ("resolved", "town1", T1, "at his mother's, inside the county")]
            assert doc["history"][1]["at"] == acked_at
            assert doc["history"][2]["at"] == int(clock.t * 1000)
            status, body = await post(town1, server, "/api/alarms/a1/resolve", {"note": "2"})
            assert status == 409 and set(body) == {"error"}
            status, body = await post(town1, server, "/api/alarms/a1/ack", {})
            assert status == 409
            status, body = await post(town1, server, "/api/alarms/a4/ack",
                                      {"note": "x" * 2001})
            assert status == 400 and set(body) == {"error"}
            status, body = await post(town1, server, "/api/alarms/a4/ack", {"note": 5})
            assert status == 400
            async with town1.post(server.make_url("/api/alarms/a4/ack"), data=b"{nope",
                                  headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and set(await r.json()) == {"error"}
            _, listed = await get(town1, server, "/api/alarms", status="resolved")
            assert [a["id"] for a in listed["alarms"]] == ["a1"]
    run(scenario())


def test_bad_parameters_are_400_with_a_one_line_error(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "city") as city:
            for params in ({"status": "closed"}, {"type": "nope"}, {"limit": "0"},
                           {"limit": "1001"}, {"limit": "ten"}, {"since": "-1"},
                           {"since": "yesterday"}):
                status, body = await get(city, server, "/api/alarms", **params)
                assert status == 400 and set(body) == {"error"}, params
                assert "\n" not in body["error"]
            _, body = await get(city, server, "/api/alarms", limit="2", status="open",
                                type="zone_exit", since="0")
            assert len(body["alarms"]) == 2 and isinstance(body["seq"], int)
            status, _ = await get(city, server, "/api/subjects/S1/track", since="10",
                                  until="5")
            assert status == 400
            status, _ = await get(city, server, "/api/subjects/S1/track", since="0",
                                  until=str(30 * 86_400_000))
            assert status == 400   # more than a week of fixes at once
    run(scenario())


# -- sessions ----------------------------------------------------------------------------

def test_everything_under_api_needs_a_session_but_health_and_metrics_do_not(world):
    async def scenario():
        async with serving(*world) as server, client() as anonymous:
            for path in ("/api/me", "/api/alarms", "/api/alarms/a1", "/api/subjects",
                         "/api/subjects/S1/track", "/api/events", "/api/layer",
                         "/api/no-such-thing"):
                async with anonymous.get(server.make_url(path)) as r:
                    assert r.status == 401, path
                    assert set(await r.json()) == {"error"}
            for path in ("/api/alarms/a1/ack", "/api/logout"):
                async with anonymous.post(server.make_url(path), json={}) as r:
                    assert r.status == 401, path
            async with anonymous.get(server.make_url("/api/me"),
                                     cookies={"geofence_session": "forged"}) as r:
                assert r.status == 401
            assert await get(anonymous, server, "/healthz") == (200, {"status": "ok"})
            async with logged_in(server, "town1") as town1:
                await get(town1, server, "/api/alarms/a1")
                await get(town1, server, "/api/subjects/S2/track")
            async with anonymous.get(server.make_url("/metrics")) as r:
                assert r.status == 200 and r.content_type == "text/plain"
                text = await r.text()
            assert 'geofence_desk_logins_total{result="ok"} 1.0' in text
            assert 'geofence_alarms_raised_total{severity="high",type="zone_exit"} 4.0' in text
            assert "geofence_desk_sse_clients 0.0" in text
            assert 'route="/api/alarms/{id}",status="200"' in text
            assert 'route="/api/subjects/{id}/track",status="404"' in text
            assert not re.search(r"S\d|a\d\b|1380000|town1", text)   # no personal data
    run(scenario())


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(world):
    async def scenario():
        async with serving(*world) as server, client() as session:
            async with session.post(server.make_url("/api/login"),
                                    json={"user": "town1", "password": PASSWORD}) as r:
                assert r.status == 200
                assert await r.json() == {"user": "town1", "office": T1,
                                          "office_name": "中心街司法所", "role": "officer"}
                cookie = r.headers["Set-Cookie"]
            token = re.match(r"geofence_session=([^;]+);", cookie).group(1)
            assert len(token) >= 43                               # 32 random bytes
            flags = {f.strip().lower() for f in cookie.split(";")[1:]}
            assert {"httponly", "samesite=strict", "path=/"} <= flags
            assert "secure" not in flags
            status, me = await get(session, server, "/api/me")
            assert status == 200 and me["user"] == "town1" and me["role"] == "officer"
            assert me["offices"] == [
                {"code": T1, "name": "中心街司法所", "parent": C402}]
            assert await post(session, server, "/api/logout") == (204, None)
            async with client() as replay:                        # the old token is dead
                async with replay.get(server.make_url("/api/me"),
                                      cookies={"geofence_session": token}) as r:
                    assert r.status == 401
            assert (await get(session, server, "/api/me"))[0] == 401
    run(scenario())


def test_cross_site_requests_and_posts_that_are_not_json_are_refused(world):
    settings, paths = world
    json_type = {"Content-Type": "application/json"}

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town1") as town1:
            own = f"http://{server.host}:{server.port}"

            async def ack(headers):
                async with town1.post(server.make_url("/api/alarms/a1/ack"),
                                      data=b'{"note": "x"}', headers=headers) as r:
                    return r.status, set(await r.json())

            # what a cross-site form or a fetch without preflight can send
            for headers in ({"Content-Type": "text/plain"}, {},
                            {"Content-Type": "application/x-www-form-urlencoded"},
                            {"Content-Type": "multipart/form-data; boundary=x"}):
                assert await ack(headers) == (415, {"error"}), headers
            for headers in ({"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"},
                            {"Origin": own, "Sec-Fetch-Site": "same-site"},
                            {"Sec-Fetch-Site": "cross-site"}):
                assert await ack({**json_type, **headers}) == (403, {"error"}), headers
            assert (await get(town1, server, "/api/alarms/a1"))[1]["status"] == "open"
            async with town1.get(server.make_url("/api/events"),
                                 headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 403
            # the page's own requests
            status, _ = await ack({"Content-Type": "application/json; charset=utf-8",
                                   "Origin": own, "Sec-Fetch-Site": "same-origin"})
            assert status == 200
            assert (await get(town1, server, "/api/alarms/a1"))[1]["status"] == "acknowledged"
            async with client() as anonymous:
                async with anonymous.post(server.make_url("/api/login"), data=json.dumps(
                        {"user": "town1", "password": PASSWORD}).encode()) as r:
                    assert r.status == 415 and "Set-Cookie" not in r.headers
            async with town1.post(server.make_url("/api/logout")) as r:
                assert r.status == 415
            async with town1.post(server.make_url("/api/logout"), headers=json_type) as r:
                assert r.status == 204

    async def behind_a_tls_proxy(trusted: bool) -> int:
        desk = replace(settings.desk, trust_forwarded_for=trusted,
                       hosts=["desk.example", "127.0.0.1"])
        async with serving(replace(settings, desk=desk), paths) as server, \
                client() as session:
            async with session.post(server.make_url("/api/login"),
                                    json={"user": "town1", "password": PASSWORD},
                                    headers={"Origin": "https://desk.example",
                                             "X-Forwarded-Proto": "https",
                                             "X-Forwarded-Host": "desk.example"}) as r:
                return r.status

    run(scenario())
    assert run(behind_a_tls_proxy(trusted=True)) == 200
    assert run(behind_a_tls_proxy(trusted=False)) == 403


def test_cookie_secure_adds_the_secure_flag(world):
    settings, paths = world
    settings = replace(settings, desk=replace(settings.desk, cookie_secure=True))

    async def scenario():
        async with serving(settings, paths) as server, client() as session:
            async with session.post(server.make_url("/api/login"),
                                    json={"user": "town1", "password": PASSWORD}) as r:
                assert r.status == 200
                assert "secure" in r.headers["Set-Cookie"].lower().split("; ")
    run(scenario())


def test_unknown_user_and_wrong_password_get_the_same_401(world):
    async def scenario():
        async with serving(*world) as server, client() as session:
            answers = []
            for user, password in (("town1", "wrong password"), ("nobody", PASSWORD)):
                async with session.post(server.make_url("/api/login"),
                                        json={"user": user, "password": password}) as r:
                    answers.append((r.status, await r.json(), "Set-Cookie" in r.headers))
            assert answers[0] == answers[1] == (401, answers[0][1], False)
            assert set(answers[0][1]) == {"error"}
            status, _ = await post(session, server, "/api/login", {"user": "town1"})
            assert status == 400
    run(scenario())


def test_too_many_failures_are_429_even_with_the_right_password_and_after_a_restart(world):
    clock = Clock()

    async def attempt(server, session, user, password):
        async with session.post(server.make_url("/api/login"),
                                json={"user": user, "password": password}) as r:
            return r.status, r.headers.get("Retry-After")

    async def scenario():
        async with serving(*world, clock=clock) as server, client() as session:
            for n in range(5):
                assert (await attempt(server, session, "town1", f"guess {n}"))[0] == 401
            status, retry = await attempt(server, session, "town1", PASSWORD)
            assert status == 429 and 0 < int(retry) <= 15 * 60
            # the same address (say, everyone's reverse proxy), another user: not locked out
            assert (await attempt(server, session, "town2", PASSWORD))[0] == 200
        async with serving(*world, clock=clock) as server, client() as session:
            assert (await attempt(server, session, "town1", PASSWORD))[0] == 429
            clock.t += 15 * 60 + 1
            assert (await attempt(server, session, "town1", PASSWORD))[0] == 200
            async with session.get(server.make_url("/metrics")) as r:
                text = await r.text()
            assert 'geofence_desk_logins_total{result="limited"} 1.0' in text
    run(scenario())


def test_a_name_is_limited_per_client_address_which_a_trusted_proxy_may_name(world):
    settings, paths = world

    async def attempt(server, session, user, password, forwarded_for):
        async with session.post(server.make_url("/api/login"),
                                json={"user": user, "password": password},
                                headers={"X-Forwarded-For": forwarded_for}) as r:
            return r.status

    async def scenario(trusted: bool):
        desk = replace(settings.desk, trust_forwarded_for=trusted,
                       hosts=["desk.example", "127.0.0.1"])
        async with serving(replace(settings, desk=desk), paths) as server, \
                client() as session:
            for n in range(5):       # someone at 198.51.100.7 guesses town1's password
                assert await attempt(server, session, "town1", f"guess {n}",
                                     f"10.1.1.1, 198.51.100.{n if not trusted else 7}") == 401
            limited = await attempt(server, session, "town1", PASSWORD, "198.51.100.7")
            elsewhere = await attempt(server, session, "town1", PASSWORD,
                                      "10.1.1.1, 203.0.113.9")
            return limited, elsewhere

    # behind a proxy: the guesser is locked out, the real town1 elsewhere still logs in
    assert run(scenario(trusted=True)) == (429, 200)
    # not trusted: X-Forwarded-For is ignored, so varying it does not escape the limit
    assert run(scenario(trusted=False)) == (429, 429)


def test_sessions_expire_after_session_hours_unused_and_slide_with_use(world):
    clock = Clock()

    async def scenario():
        async with serving(*world, clock=clock) as server, logged_in(server, "town1") as town1:
            for _ in range(3):                      # used every 11 h: stays alive
                clock.t += 11 * HOUR_S
                assert (await get(town1, server, "/api/me"))[0] == 200
            clock.t += 12 * HOUR_S + 1
            assert (await get(town1, server, "/api/me"))[0] == 401
    run(scenario())


# -- the live stream ---------------------------------------------------------------------

async def next_event(response, timeout=5.0) -> dict:
    """The next `event:` block of an SSE response as {field: value}."""
    fields: dict = {}
    while True:
        line = (await asyncio.wait_for(response.content.readline(), timeout)).decode()
        if line == "":
            raise EOFError("stream ended")
        line = line.rstrip("\n")
        if not line:
            if "event" in fields:
                return fields
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value


def test_sse_sends_visible_changes_made_after_connecting_and_resumes_from_last_event_id(world):
    settings, paths = world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "town1", "town2", "city") as (town1, town2, city):
            async with town1.get(server.make_url("/api/events")) as stream1, \
                    town2.get(server.make_url("/api/events")) as stream2:
                assert stream1.status == 200
                assert stream1.content_type == "text/event-stream"
                status, _ = await post(city, server, "/api/alarms/a3/ack", {"note": "x"})
                status, _ = await post(city, server, "/api/alarms/a1/ack", {"note": "seen"})
                status, _ = await post(city, server, "/api/alarms/a2/ack", {"note": "y"})
                event = await next_event(stream1)        # a3 is not town1's: a1 comes first
                assert event["event"] == "alarm"
                doc = json.loads(event["data"])
                assert doc["id"] == "a1" and doc["status"] == "acknowledged"
                first_seq = int(event["id"])
                event2 = await next_event(stream2)       # town2 sees only a2
                assert json.loads(event2["data"])["id"] == "a2"
                assert int(event2["id"]) > first_seq
            # a new change while disconnected, then resume after the a1 event
            await post(city, server, "/api/alarms/a4/ack", {"note": "z"})
            async with town1.get(server.make_url("/api/events"),
                                 headers={"Last-Event-ID": str(first_seq)}) as resumed:
                event = await next_event(resumed)
                assert json.loads(event["data"])["id"] == "a4"
                assert int(event["id"]) > first_seq
                await post(city, server, "/api/alarms/a1/resolve", {"note": "done"})
                event = await next_event(resumed)        # then live, without a gap
                assert json.loads(event["data"])["id"] == "a1"
                assert json.loads(event["data"])["status"] == "resolved"
            async with town1.get(server.make_url("/api/events"),
                                 headers={"Last-Event-ID": "0"}) as replay:
                seen = [json.loads((await next_event(replay))["data"])["id"]
                        for _ in range(5)]               # raised a1, a4; acks; resolve
                assert set(seen) <= {"a1", "a4"}
    run(scenario())


def test_logout_ends_the_users_open_streams(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            async with town1.get(server.make_url("/api/events")) as stream:
                assert stream.status == 200
                await post(town1, server, "/api/logout")
                with pytest.raises(EOFError):
                    await next_event(stream)
    run(scenario())


def test_a_stream_sends_heartbeats_and_ends_when_its_session_expires(world, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.05)
    clock = Clock()

    async def scenario():
        async with serving(*world, clock=clock) as server, logged_in(server, "town1") as town1:
            async with town1.get(server.make_url("/api/events")) as stream:
                async def heartbeat():
                    while await asyncio.wait_for(stream.content.readline(), 5) != \
                            b": keepalive\n":
                        pass
                await heartbeat()
                for _ in range(2):             # heartbeats keep a watched session alive
                    clock.t += 11 * HOUR_S
                    await heartbeat()
                    await heartbeat()
                assert (await get(town1, server, "/api/me"))[0] == 200
                clock.t += 13 * HOUR_S         # then nobody watched for longer than 12 h
                with pytest.raises(EOFError):
                    await next_event(stream)
    run(scenario())


def visible_to_town1(k: int) -> Incoming:
    """A new alarm of a new subject of township T1 (so it never folds into another)."""
    base = alarm("a1", int(time.time() * 1000))
    return Incoming(replace(base.alarm, id=f"n{k}", subject=f"X{k}", _json=None), base.offices)


def test_a_busy_stream_ends_when_its_session_is_revoked_or_the_users_office_changes(
        world, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.3)
    settings, paths = world
    counter = iter(range(10_000))

    async def events_until_the_end(stream, writer) -> int:
        """Raise an alarm the stream shows every 0.1 s; how many came before it ended."""
        for n in range(30):                   # 3 s: ten times HEARTBEAT_S
            writer.add([visible_to_town1(next(counter))], int(time.time() * 1000))
            await asyncio.sleep(0.1)
            try:
                await next_event(stream, timeout=2)
            except EOFError:
                return n
        raise AssertionError("the stream outlived its session")

    async def scenario():
        writer = AlarmStore(paths.alarms_db)  # the dispatcher keeps raising alarms
        try:
            async with serving(settings, paths) as server, \
                    logged_in(server, "city", "town1") as (city, town1):
                async with city.get(server.make_url("/api/events")) as stream:
                    with UserStore(paths.desk_db) as users:   # geofence user add --replace
                        users.add("city", CITY, "a-new-password", replace=True)
                    assert (await get(city, server, "/api/me"))[0] == 401
                    assert await events_until_the_end(stream, writer) < 6
                async with town1.get(server.make_url("/api/events")) as stream:
                    with sqlite3.connect(paths.desk_db) as db:  # town1 moves to T2
                        db.execute("UPDATE users SET office = ? WHERE name = 'town1'", (T2,))
                    assert (await get(town1, server, "/api/me"))[1]["office"] == T2
                    assert await events_until_the_end(stream, writer) < 6
        finally:
            writer.close()
    run(scenario())


def test_a_resume_from_too_far_back_starts_at_the_end_with_one_reset_event(world,
                                                                           monkeypatch):
    monkeypatch.setattr(events, "MAX_REPLAY_CHANGES", 3)

    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "city") as (town1, city):
            end = (await get(city, server, "/api/alarms"))[1]["seq"]   # 5 alarms raised
            async with town1.get(server.make_url("/api/events"),
                                 headers={"Last-Event-ID": "0"}) as stream:
                event = await next_event(stream)
                assert (event["event"], event["id"], event["data"]) == ("reset", str(end), "{}")
                await post(city, server, "/api/alarms/a4/ack", {"note": "z"})
                event = await next_event(stream)     # then live, nothing replayed
                assert json.loads(event["data"])["id"] == "a4" and int(event["id"]) > end
            async with town1.get(server.make_url("/api/events"),
                                 params={"after": str(end)}) as stream:
                event = await next_event(stream)     # near enough: replayed
                assert event["event"] == "alarm" and int(event["id"]) > end
                assert json.loads(event["data"])["id"] == "a4"
    run(scenario())


def test_a_session_has_at_most_four_open_streams(world, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.05)

    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "town1") as (tab, other_login):
            streams = [await tab.get(server.make_url("/api/events")) for _ in range(4)]
            try:
                assert [r.status for r in streams] == [200] * 4
                async with tab.get(server.make_url("/api/events")) as r:
                    assert r.status == 429 and set(await r.json()) == {"error"}
                async with other_login.get(server.make_url("/api/events")) as r:
                    assert r.status == 200                # the limit is per session
                streams.pop().close()
                for _ in range(100):                      # gone by the next heartbeat
                    async with tab.get(server.make_url("/api/events")) as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.02)
                assert r.status == 200
            finally:
                for r in streams:
                    r.close()
    run(scenario())


def test_a_client_that_falls_behind_is_dropped_instead_of_buffered():
    async def scenario():
        feed = events.ChangeFeed(stores=None)
        slow = events.Client(frozenset({T1}), b"s1", asyncio.Queue(2))
        other = events.Client(frozenset({T3}), b"s2", asyncio.Queue(2))
        feed.add(slow)
        feed.add(other)
        for seq in (1, 2, 3):
            feed.dispatch(seq, [T1], alarm("a1", 1_000).alarm, Scope(Registry()))
        assert slow.ended == "slow" and slow not in feed.clients
        assert other.ended is None and other.queue.empty()   # not its office's alarm
        assert feed.position == 3
    run(scenario())


# -- tracks and the map ------------------------------------------------------------------

def write_fixes(paths, index_of: dict[str, int], rows: list[tuple[str, int]],
                received_ms: int, batch: int) -> None:
    """One stored batch of fixes: (subject id, t_ms) each."""
    n = len(rows)
    fixes = FixColumns(
        device=np.arange(n, dtype=np.int32),
        subject=np.array([index_of[s] for s, _ in rows], np.int32),
        t_ms=np.array([t for _, t in rows], np.int64),
        lon=np.linspace(117.5, 117.6, n), lat=np.linspace(34.8, 34.9, n),
        acc_m=np.full(n, 30.0, np.float32), src=np.zeros(n, np.int8))
    with Store(paths.fixes_db) as store:
        store.commit([BatchRecord("test", batch, received_ms, fixes, "ok")])


def test_a_track_is_the_subjects_fixes_in_the_window_in_time_order(world):
    settings, paths = world
    registry = RegistryStore(paths.registry_db)
    index_of = {s.id: s.index for s in registry.load().subjects.values()}
    registry.close()
    now = int(time.time() * 1000)
    minute = 60_000
    write_fixes(paths, index_of, [("S1", now - 30 * 3600_000)], now - 30 * 3600_000, 1)
    write_fixes(paths, index_of, [("S1", now - 10 * minute), ("S2", now - 9 * minute),
                                  ("S1", now - 20 * minute)], now - 5 * minute, 2)
    write_fixes(paths, index_of, [("S1", now - 2 * minute), ("S3", now - minute)],
                now - minute, 3)

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town1") as town1:
            status, body = await get(town1, server, "/api/subjects/S1/track")
            assert status == 200 and body["subject"] == "S1" and not body["truncated"]
            assert [f["t"] for f in body["fixes"]] == [now - 20 * minute, now - 10 * minute,
                                                       now - 2 * minute]
            assert set(body["fixes"][0]) == {"t", "lon", "lat", "acc", "src"}
            assert body["fixes"][0]["src"] == "gps" and body["fixes"][0]["acc"] == 30.0
            _, body = await get(town1, server, "/api/subjects/S1/track",
                                since=str(now - 31 * 3600_000), until=str(now - 15 * minute))
            assert [f["t"] for f in body["fixes"]] == [now - 30 * 3600_000, now - 20 * minute]
    run(scenario())
    fixes, truncated = read_track(paths.fixes_db, index_of["S1"], 0, now, limit=2)
    assert truncated and [f["t"] for f in fixes] == [now - 10 * minute, now - 2 * minute]


def test_a_track_without_any_stored_fixes_is_empty(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            status, body = await get(town1, server, "/api/subjects/S4/track")
            assert status == 200 and body["fixes"] == []
    run(scenario())


def test_the_layer_has_every_township_and_each_county_dissolved(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            async with town1.get(server.make_url("/api/layer")) as r:
                assert r.status == 200
                text = await r.text()
        layer = json.loads(text)
        assert layer["type"] == "FeatureCollection"
        levels = [f["properties"]["level"] for f in layer["features"]]
        assert levels.count("township") == 66 and levels.count("county") == 6
        counties = {f["properties"]["code"]: f["properties"] for f in layer["features"]
                    if f["properties"]["level"] == "county"}
        assert counties[C402] == {"code": C402, "name": "市中区", "parent": CITY,
                                  "level": "county"}
        assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon")
                   for f in layer["features"])
        decimals = {len(d) for d in re.findall(r"\d+\.(\d+)", text.split('"features"')[1])}
        assert max(decimals) <= 5
        assert len(text) < 2_000_000
    run(scenario())


# -- the page and the process ------------------------------------------------------------

def test_the_page_is_served_and_paths_cannot_leave_its_directory(world):
    async def scenario():
        async with serving(*world) as server, client() as anonymous:
            async with anonymous.get(server.make_url("/")) as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/.hidden",
                         "/no-such-file.js"):
                async with anonymous.get(server.make_url(path)) as r:
                    assert r.status == 404, path
    run(scenario())


def test_run_desk_listens_reports_its_url_and_stops_with_an_open_stream(world):
    settings, _ = world
    urls, stop = [], threading.Event()
    thread = threading.Thread(target=run_desk, args=(settings, stop.is_set, urls.append))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not urls and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        url = urls[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            assert json.load(r) == {"status": "ok"}

        async def stream_until_stopped():
            async with client() as session:
                async with session.post(url + "/api/login",
                                        json={"user": "city", "password": PASSWORD}) as r:
                    assert r.status == 200
                async with session.get(url + "/api/events") as r:
                    assert r.status == 200
                    stop.set()
                    started = time.monotonic()
                    while await asyncio.wait_for(r.content.readline(), 10):
                        pass                                 # the desk ends the stream
                    return time.monotonic() - started

        assert run(stream_until_stopped()) < 5
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
