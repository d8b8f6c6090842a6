"""Locate requests and handset status in the desk (SPEC §14), over a real HTTP server and
real SQLite files.

The world is `test_desk_api`'s (S1 at town1, S2 at town2, S3 at town3, S4 at town3
delegated to town1). Nothing sends requests to carriers here: the tests play the ingest
process's part by writing `mark_sent`, `answer` and `expire` into the real
locate.sqlite, and status rows into the real fix store.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from carriers.locate_store import LocateStore
from desk.users import UserStore
from engine.config import Carriers
from ingest.fixes import FixColumns
from ingest.protocol import STATE0, STATES
from ingest.store import BatchRecord, Store
from tests import test_desk_api
from tests.test_desk_api import (PASSWORD, T1, Clock, get, logged_in, next_event,
                                 post, run, serving)

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures

MINUTE_MS = 60_000


@pytest.fixture
def desk_world(world):
    settings, paths = world
    with UserStore(paths.desk_db) as users:
        users.add("viewer402", "370402", PASSWORD, role="viewer")
    return settings, paths


def audit_rows(paths, action_prefix: str = "locate.") -> list[tuple]:
    """(user, action, subject, detail) of the locate entries, oldest first."""
    with UserStore(paths.desk_db) as users:
        return [(e.user, e.action, e.subject, e.detail)
                for _, e in users.audit.entries(newest_first=False)
                if e.action.startswith(action_prefix)]


def stored(paths, request_id: str):
    store = LocateStore(paths.locate_db)
    try:
        return store.get(request_id)
    finally:
        store.close()


def as_ingest(paths, fn):
    """Play the ingest process: `fn(store)` on its own connection to locate.sqlite."""
    store = LocateStore(paths.locate_db)
    try:
        return fn(store)
    finally:
        store.close()


# -- asking ------------------------------------------------------------------------------

def test_an_officer_asks_gets_202_and_the_request_is_stored_listed_read_and_audited(
        desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town1") as town1:
            status, doc = await post(town1, server, "/api/subjects/S1/locate", {"alarm": "a1"})
            assert status == 202, doc
            assert doc["request"].startswith("L") and doc["subject"] == "S1"
            assert (doc["office"], doc["reason"], doc["requested_by"], doc["state"]) == \
                (T1, "desk", "town1", "pending")
            assert doc["fix"] is None and doc["handset"] is None
            assert "13800000001" not in json.dumps(doc)      # never the phone number
            status, again = await get(town1, server, f"/api/locate/{doc['request']}")
            assert status == 200 and again == doc      # pending: the asker's own action
            status, listed = await get(town1, server, "/api/subjects/S1/locates")
            assert status == 200 and listed["requests"] == [doc]
            as_ingest(paths, lambda s: s.answer([(doc["request"], doc["requested_at"] + 900,
                                                  doc["requested_at"] + 500, "gps",
                                                  117.55, 34.86, 12.0)]))
            status, answered = await get(town1, server, f"/api/locate/{doc['request']}")
            assert status == 200 and answered["fix"]["lon"] == 117.55   # a position: audited
            return doc["request"]

    request_id = run(scenario())
    row = stored(paths, request_id)
    assert (row.subject, row.device, row.office, row.reason, row.requested_by) == \
        ("S1", "13800000001", T1, "desk", "town1")
    assert audit_rows(paths) == [
        ("town1", "locate.request", "S1", f"{request_id} alarm a1"),
        ("town1", "locate.list", "S1", ""),
        ("town1", "locate.read", "S1", request_id)]


def test_viewers_403_outside_the_subtree_404_and_bad_bodies_400(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "viewer402", "town2", "town1") as (viewer, town2, town1):
            assert (await post(viewer, server, "/api/subjects/S1/locate"))[0] == 403
            outside = await post(town2, server, "/api/subjects/S1/locate")
            missing = await post(town2, server, "/api/subjects/nobody/locate")
            assert outside == missing == (404, {"error": "no such subject"})
            status, body = await post(town1, server, "/api/subjects/S1/locate",
                                      {"alarm": "a1", "why": "x"})
            assert status == 400 and '"why"' in body["error"]
            status, body = await post(town1, server, "/api/subjects/S1/locate", {"alarm": 7})
            assert status == 400
            # an alarm of another person, or one the user does not see, is refused
            assert (await post(town1, server, "/api/subjects/S1/locate", {"alarm": "a4"}))[0] \
                == 400
            assert (await post(town1, server, "/api/subjects/S1/locate", {"alarm": "a2"}))[0] \
                == 400
            status, doc = await post(town1, server, "/api/subjects/S1/locate")
            assert status == 202
            # the request is read like the person: 404 outside, as for a missing one
            assert await get(town2, server, f"/api/locate/{doc['request']}") == \
                await get(town2, server, "/api/locate/Lnothing") == \
                (404, {"error": "no such locate request"})
            assert (await get(town2, server, "/api/subjects/S1/locates"))[0] == 404
            status, read = await get(viewer, server, f"/api/locate/{doc['request']}")
            assert status == 200 and read["request"] == doc["request"]

    run(scenario())
    assert [(u, a) for u, a, _, _ in audit_rows(paths)] == [("town1", "locate.request")], \
        "a pending request holds no position: its reads are not audited"


def test_a_delegated_person_is_asked_for_by_the_delegate_office(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town3") as town3:
            status, doc = await post(town3, server, "/api/subjects/S4/locate")
            assert status == 202 and doc["office"] == T1   # where S4's alarms go now
            assert stored(paths, doc["request"]).device == "13800000004"

    run(scenario())


def test_no_phone_or_supervision_ended_is_409_with_the_reason(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "town1", "town2") as (town1, town2):
            status, _ = await send_patch(town2, server, "/api/subjects/S2", {"devices": []})
            assert status == 200
            status, body = await post(town2, server, "/api/subjects/S2/locate")
            assert status == 409 and "no phone" in body["error"]
            assert (await post(town1, server, "/api/subjects/S1/end", {"note": "期满"}))[0] \
                == 200
            status, body = await post(town1, server, "/api/subjects/S1/locate")
            assert status == 409 and "ended" in body["error"]

    run(scenario())
    assert audit_rows(paths) == []


async def send_patch(session, server, path, body):
    async with session.patch(server.make_url(path), json=body) as r:
        return r.status, await r.json()


def test_one_request_per_person_per_window_and_so_many_per_user_an_hour_else_429(desk_world):
    settings, paths = desk_world
    settings = replace(settings, carriers=Carriers(locate_subject_every_s=60,
                                                   locate_user_per_hour=2,
                                                   locate_timeout_s=60))
    clock = Clock()

    async def scenario():
        async with serving(settings, paths, clock) as server, \
                logged_in(server, "town1", "county402") as (town1, county):
            assert (await post(town1, server, "/api/subjects/S1/locate"))[0] == 202
            clock.t += 20
            async with county.post(server.make_url("/api/subjects/S1/locate"), json={}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "40"   # whoever asks
                assert "60 s" in (await r.json())["error"]
            clock.t += 40
            assert (await post(county, server, "/api/subjects/S1/locate"))[0] == 202
            clock.t += 100
            assert (await post(town1, server, "/api/subjects/S1/locate"))[0] == 202
            clock.t += 60   # town1's third request within the hour
            async with town1.post(server.make_url("/api/subjects/S4/locate"), json={}) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == str(3600 - 220)   # its first drops out
            clock.t += 3600 - 220
            assert (await post(town1, server, "/api/subjects/S4/locate"))[0] == 202

    run(scenario())
    assert [u for u, a, _, _ in audit_rows(paths)] == ["town1", "county402", "town1", "town1"]


def test_a_person_with_a_request_still_open_is_not_asked_for_again(desk_world):
    """One request at a time per person (the carrier bills each): a second before the first
    is answered or timed out is 429 until its timeout; once answered, the next may go."""
    settings, paths = desk_world
    settings = replace(settings, carriers=Carriers(locate_subject_every_s=10,
                                                   locate_timeout_s=120))
    clock = Clock()

    async def scenario():
        async with serving(settings, paths, clock) as server, \
                logged_in(server, "town1") as town1:
            _, doc = await post(town1, server, "/api/subjects/S1/locate")
            clock.t += 30
            async with town1.post(server.make_url("/api/subjects/S1/locate"), json={}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "90"
                assert "still open" in (await r.json())["error"]
            as_ingest(paths, lambda s: s.answer([(doc["request"], doc["requested_at"] + 900,
                                                  doc["requested_at"] + 500, "gps",
                                                  117.55, 34.86, 12.0)]))
            assert (await post(town1, server, "/api/subjects/S1/locate"))[0] == 202

    run(scenario())


# -- the live stream ---------------------------------------------------------------------

async def next_locate(stream) -> dict:
    """The next `locate` event's document; it carries no id."""
    while True:
        event = await next_event(stream)
        if event["event"] == "locate":
            assert "id" not in event
            return json.loads(event["data"])


def test_each_change_of_a_request_is_a_locate_event_for_the_offices_above_it_only(
        desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "town1", "town2", "city") as (town1, town2, city):
            async with town1.get(server.make_url("/api/events")) as s1, \
                    town2.get(server.make_url("/api/events")) as s2, \
                    city.get(server.make_url("/api/events")) as s_city:
                _, doc = await post(town1, server, "/api/subjects/S1/locate")
                request_id = doc["request"]
                for stream in (s1, s_city):
                    event = await next_locate(stream)
                    assert (event["request"], event["state"]) == (request_id, "pending")
                as_ingest(paths, lambda s: s.mark_sent(request_id, "carrierA",
                                                       doc["requested_at"] + 30))
                assert (await next_locate(s1))["state"] == "sent"
                as_ingest(paths, lambda s: s.answer([(request_id, doc["requested_at"] + 900,
                                                      doc["requested_at"] + 500, "gps",
                                                      117.55, 34.86, 12.0)]))
                answered = await next_locate(s1)
                assert answered["state"] == "answered" and answered["latency_ms"] == 900
                assert answered["fix"] == {"t": doc["requested_at"] + 500, "lon": 117.55,
                                           "lat": 34.86, "acc": 12.0, "src": "gps"}
                assert [(await next_locate(s_city))["state"] for _ in range(2)] == \
                    ["sent", "answered"]
                # town2 saw none of it: its first locate event is its own person's
                _, other = await post(town2, server, "/api/subjects/S2/locate")
                assert (await next_locate(s2))["request"] == other["request"]
                as_ingest(paths, lambda s: s.expire(other["requested_at"] + 120_000, 120_000))
                timed_out = await next_locate(s2)
                assert (timed_out["request"], timed_out["state"]) == (other["request"],
                                                                      "timed_out")
                # an alarm change still comes with its seq as the id
                await post(city, server, "/api/alarms/a1/ack", {"note": "x"})
                event = await next_event(s1)
                while event["event"] != "alarm":
                    event = await next_event(s1)
                seq = int(event["id"])
            # resuming after that alarm replays no locate event and misses no alarm
            async with town1.get(server.make_url("/api/events"),
                                 headers={"Last-Event-ID": str(seq - 1)}) as resumed:
                event = await next_event(resumed)
                assert (event["event"], event["id"]) == ("alarm", str(seq))
                await post(town1, server, "/api/alarms/a1/resolve", {"note": "done"})
                assert (await next_event(resumed))["event"] == "alarm"

    run(scenario())


def test_a_handset_answer_is_an_event_with_the_state_and_no_fix(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, logged_in(server, "town1") as town1:
            async with town1.get(server.make_url("/api/events")) as stream:
                _, doc = await post(town1, server, "/api/subjects/S1/locate")
                await next_locate(stream)
                as_ingest(paths, lambda s: s.answer([(doc["request"], doc["requested_at"] + 40,
                                                      doc["requested_at"] + 20, "off", None,
                                                      None, None)]))
                answered = await next_locate(stream)
                assert (answered["state"], answered["handset"], answered["fix"]) == \
                    ("answered", "off", None)

    run(scenario())


# -- handset status in the track and on the person ---------------------------------------

def write_rows(paths, subject_index: int, rows: list[tuple[int, int]], received_ms: int,
               batch: int) -> None:
    """One stored batch of one subject's rows: (t_ms, src code) each; a src of STATE0 or
    above is a handset status, stored as the ingest stores it (lon, lat, acc NaN)."""
    n = len(rows)
    src = np.array([s for _, s in rows], np.int8)
    status = src >= STATE0
    fixes = FixColumns(
        device=np.zeros(n, np.int32), subject=np.full(n, subject_index, np.int32),
        t_ms=np.array([t for t, _ in rows], np.int64),
        lon=np.where(status, np.nan, 117.55), lat=np.where(status, np.nan, 34.86),
        acc_m=np.where(status, np.nan, 25.0).astype(np.float32), src=src)
    with Store(paths.fixes_db) as store:
        store.commit([BatchRecord("test", batch, received_ms, fixes, "ok")])


def subject_index(paths, subject_id: str) -> int:
    from alerts.registry import RegistryStore
    store = RegistryStore(paths.registry_db)
    try:
        return store.load().subjects[subject_id].index
    finally:
        store.close()


def test_status_rows_are_track_entries_without_a_position_and_the_newest_is_on_the_person(
        desk_world):
    settings, paths = desk_world
    clock = Clock()
    now = int(clock.t * 1000)
    off, unreachable = STATE0 + STATES.index("off"), STATE0 + STATES.index("unreachable")
    s1, s3 = subject_index(paths, "S1"), subject_index(paths, "S3")
    write_rows(paths, s1, [(now - 30 * MINUTE_MS, 0), (now - 20 * MINUTE_MS, unreachable),
                           (now - 15 * MINUTE_MS, off)], now - 14 * MINUTE_MS, 1)
    write_rows(paths, s1, [(now - 5 * MINUTE_MS, off)], now - 4 * MINUTE_MS, 2)
    write_rows(paths, s3, [(now - 20 * MINUTE_MS, off), (now - 10 * MINUTE_MS, 1)],
               now - 4 * MINUTE_MS, 3)

    async def scenario():
        async with serving(settings, paths, clock) as server, \
                logged_in(server, "town1", "town3") as (town1, town3):
            async with town1.get(server.make_url("/api/subjects/S1/track")) as r:
                text = await r.text()
            assert r.status == 200 and "NaN" not in text
            assert json.loads(text)["fixes"] == [
                {"t": now - 30 * MINUTE_MS, "lon": 117.55, "lat": 34.86, "acc": 25.0,
                 "src": "gps"},
                {"t": now - 20 * MINUTE_MS, "handset": "unreachable"},
                {"t": now - 15 * MINUTE_MS, "handset": "off"},
                {"t": now - 5 * MINUTE_MS, "handset": "off"}]
            status, doc = await get(town1, server, "/api/subjects/S1")
            assert status == 200
            assert doc["handset"] == {"state": "off", "since": now - 15 * MINUTE_MS}
            status, doc = await get(town3, server, "/api/subjects/S3")   # a position since
            assert status == 200 and "handset" not in doc
            status, doc = await get(town3, server, "/api/subjects/S4")   # nothing stored
            assert status == 200 and "handset" not in doc

    run(scenario())
