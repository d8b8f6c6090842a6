"""A delegate office sees a person only within the delegation's window (the real desk).

The world is `test_desk_api`'s, plus S5 and S6, both supervised by 370403001 (town3):
S5 delegated to 370402001 (town1) two hours ago and still is, S6 delegated to town1
from 10 to 5 hours ago. Their fixes, and alarms as the dispatcher routed them, are in
real SQLite files; town1's county (county402) is on the delegate's side too, the city
and town3 on the origin's.
"""

import json
import time

from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from alerts.registry import RegistryStore
from tests import test_desk_api
from tests.test_desk_api import (C402, C403, PATHS, T1, T3, code_checkers, get, logged_in,
                                 next_event, run, serving, write_fixes)

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures

HOUR_MS = 3600_000
NOW = int(time.time() * 1000)
S5_START = NOW - 2 * HOUR_MS
S6_WINDOW = (NOW - 10 * HOUR_MS, NOW - 5 * HOUR_MS)
FIXES = {"S5": [NOW - 4 * HOUR_MS, NOW - 3 * HOUR_MS, NOW - HOUR_MS, NOW - HOUR_MS // 2],
         "S6": [NOW - 12 * HOUR_MS, NOW - 8 * HOUR_MS, NOW - 6 * HOUR_MS, NOW - 3 * HOUR_MS]}
# alarm id -> (subject, type, event time, offices it went to); types differ, so none folds
ALARMS = {
    "b1": ("S5", "zone_exit", NOW - 3 * HOUR_MS, (T3,)),   # before the delegation: origin
    "b2": ("S5", "zone_exit", NOW - HOUR_MS, (T1, T3)),    # during it: delegate, copy origin
    "b3": ("S5", "possible_exit", NOW - 150 * 60_000, (T1, T3)),   # routed under a start
                                                                   # since corrected
    "b4": ("S6", "zone_exit", NOW - 7 * HOUR_MS, (T1, T3)),   # in the past window
    "b5": ("S6", "zone_exit", NOW - 4 * HOUR_MS, (T3,)),      # after it ended
}


def rfc3339(t_ms: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t_ms / 1000, timezone.utc).isoformat()


def incoming(alarm_id: str, subject: str, kind: str, t_ms: int, offices) -> Incoming:
    doc = {"id": alarm_id, "type": kind, "severity": "high", "subject": subject,
           "office": offices[0], "t": t_ms, "raised_at": t_ms,
           "fix": {"t": t_ms, "lon": 117.55, "lat": 34.86, "acc": 30.0, "src": "gps"},
           "where": None, "home": [C402], "status": "open",
           "details": {"copy_to": list(offices[1:])} if len(offices) > 1 else {}}
    return Incoming(Alarm.from_document(doc), tuple(PATHS[o] for o in offices))


def delegations(world):
    settings, paths = world
    registry = RegistryStore(paths.registry_db)
    registry.import_document({
        "subjects": [{"id": s, "devices": [f"1380000000{k}"], "office": T3, "home": [C403]}
                     for k, s in ((5, "S5"), (6, "S6"))],
        "delegations": [
            {"subject": "S5", "start": rfc3339(S5_START), "office": T1, "home": [C402]},
            {"subject": "S6", "start": rfc3339(S6_WINDOW[0]), "end": rfc3339(S6_WINDOW[1]),
             "office": T1, "home": [C402]}]}, *code_checkers())
    index_of = {s.id: s.index for s in registry.load().subjects.values()}
    registry.close()
    write_fixes(paths, index_of, [(s, t) for s, ts in FIXES.items() for t in ts], NOW, 1)
    store = AlarmStore(paths.alarms_db)
    store.add([incoming(a, *row) for a, row in ALARMS.items()], now_ms=NOW)
    store.close()
    return settings, paths


async def track_times(session, server, subject: str, **params) -> tuple[int, list[int]]:
    status, body = await get(session, server, f"/api/subjects/{subject}/track", **params)
    return status, [f["t"] for f in body["fixes"]] if status == 200 else []


def test_a_delegate_sees_the_track_from_the_delegation_start_and_the_origin_all_of_it(world):
    async def scenario():
        async with serving(*delegations(world)) as server, \
                logged_in(server, "town1", "county402", "town3", "city") as (
                    town1, county, town3, city):
            s5_window = [t for t in FIXES["S5"] if t >= S5_START]
            for delegate in (town1, county):
                assert await track_times(delegate, server, "S5") == (200, s5_window)
                assert await track_times(delegate, server, "S5", since=str(NOW - 5 * HOUR_MS),
                                         until=str(NOW)) == (200, s5_window)
                assert await track_times(delegate, server, "S5", since=str(NOW - 5 * HOUR_MS),
                                         until=str(S5_START - 1)) == (200, [])
            for origin in (town3, city):
                assert await track_times(origin, server, "S5") == (200, FIXES["S5"])
                assert await track_times(origin, server, "S6") == (200, FIXES["S6"])
    run(scenario())


def test_after_the_delegation_ended_its_office_keeps_only_the_window(world):
    async def scenario():
        async with serving(*delegations(world)) as server, \
                logged_in(server, "town1", "town2") as (town1, town2):
            in_window = [t for t in FIXES["S6"] if S6_WINDOW[0] <= t < S6_WINDOW[1]]
            assert await track_times(town1, server, "S6") == (200, in_window)
            assert await track_times(town1, server, "S6", since=str(NOW - 13 * HOUR_MS),
                                     until=str(NOW)) == (200, in_window)
            assert (await track_times(town2, server, "S6"))[0] == 404
            _, body = await get(town1, server, "/api/subjects")
            assert {"S5"} <= {s["id"] for s in body["subjects"]}
            assert "S6" not in {s["id"] for s in body["subjects"]}   # not theirs any more
    run(scenario())


def test_a_delegate_gets_404_for_alarms_outside_the_window_everywhere(world):
    async def scenario():
        async with serving(*delegations(world)) as server, \
                logged_in(server, "town1", "county402", "town3") as (town1, county, town3):
            for delegate in (town1, county):
                for alarm_id, expected in (("b1", 404), ("b2", 200), ("b3", 404),
                                           ("b4", 200), ("b5", 404)):
                    status, _ = await get(delegate, server, f"/api/alarms/{alarm_id}")
                    assert status == expected, (alarm_id, status)
                async with delegate.post(server.make_url("/api/alarms/b3/ack"),
                                         json={"note": "x"}) as r:
                    assert r.status == 404
            for alarm_id in ALARMS:
                assert (await get(town3, server, f"/api/alarms/{alarm_id}"))[0] == 200
            _, body = await get(town1, server, "/api/alarms")
            ids = {a["id"] for a in body["alarms"]}
            assert {"b2", "b4"} <= ids and not ids & {"b1", "b3", "b5"}
            for limit in range(1, 6):   # the hidden ones never shorten a page
                _, page = await get(town1, server, "/api/alarms", limit=str(limit))
                assert [a["id"] for a in page["alarms"]] == \
                    [a["id"] for a in body["alarms"]][:limit]

            async with town1.get(server.make_url("/api/events"),
                                 params={"after": "0"}) as stream:
                seen = set()
                for _ in range(len(ids)):   # the replay: the same alarms, no others
                    seen.add(json.loads((await next_event(stream))["data"])["id"])
                assert seen == ids
                store = AlarmStore(world[1].alarms_db)
                store.add([incoming("b6", "S5", "exclusion_entry", S5_START - 60_000, (T1, T3)),
                           incoming("b7", "S5", "possible_exclusion", NOW, (T1, T3))],
                          now_ms=NOW)
                store.close()
                event = await next_event(stream)
                assert '"id":"b7"' in event["data"]   # b6, before the window, never sent
    run(scenario())
