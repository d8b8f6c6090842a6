"""Key periods on the desk (issue 13) over a real HTTP server and real SQLite files.

The world is `test_desk_api`'s: the city 3704 above counties 370402 (townships T1, T2) and
370403 (township T3). A period is a registry entry: the registry file is read back.
"""

import sqlite3
import time
from datetime import datetime, timezone

from alerts.registry import RegistryStore
from desk.audit import AuditLog
from desk.users import UserStore
from tests import test_desk_api
from tests.test_desk_api import C402, C403, CITY, PASSWORD, get, logged_in, post, run, serving

template, world = test_desk_api.template, test_desk_api.world   # the shared fixtures
HOUR_MS = 3_600_000


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def period(pid: str, offices, start_h: float = -1, end_h: float = 24, **more) -> dict:
    now = int(time.time() * 1000)
    return {"id": pid, "name": "全国两会", "start": rfc3339(now + int(start_h * HOUR_MS)),
            "end": rfc3339(now + int(end_h * HOUR_MS)), "offices": list(offices), **more}


def key_periods_of(world) -> dict:
    store = RegistryStore(world[1].registry_db)
    try:
        return store.load().key_periods
    finally:
        store.close()


def actions(world) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(world[1].desk_db)
    try:
        return [(e.action, e.user, e.detail) for _, e in AuditLog(db).entries(newest_first=False)
                if e.action.startswith("key_period.")]
    finally:
        db.close()


def test_the_city_declares_lists_and_ends_a_period_and_each_step_is_audited(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "city", "town1", "town3") as (city, town1, town3):
            status, doc = await post(city, server, "/api/key-periods",
                                     period("kp-1", [C402], levels=["normal", "strict"]))
            assert status == 201, doc
            assert (doc["id"], doc["offices"], doc["levels"], doc["active"]) == (
                "kp-1", [C402], ["normal", "strict"], True)
            status, listed = await get(town1, server, "/api/key-periods")
            assert status == 200 and [p["id"] for p in listed["key_periods"]] == ["kp-1"]
            status, listed = await get(town3, server, "/api/key-periods")
            assert listed["key_periods"] == [], "another county's period"
            status, ended = await post(city, server, "/api/key-periods/kp-1/end")
            assert status == 200 and ended["active"] is False and ended["over"] is True
            assert (await post(city, server, "/api/key-periods/kp-1/end"))[0] == 409
    run(scenario())
    stored = key_periods_of(world)["kp-1"]
    assert stored.end_ms <= int(time.time() * 1000) and stored.offices == (C402,)
    assert actions(world) == [("key_period.create", "city", "kp-1"),
                              ("key_period.end", "city", "kp-1")]


def test_only_an_office_covering_every_named_office_may_declare_or_end(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "county402", "town1", "city") as (county, town1, city):
            status, doc = await post(county, server, "/api/key-periods",
                                     period("kp-1", [C402, C403]))
            assert status == 403, doc
            status, doc = await post(town1, server, "/api/key-periods", period("kp-2", [C402]))
            assert status == 403, doc
            status, doc = await post(county, server, "/api/key-periods", period("kp-3", [C402]))
            assert status == 201, doc
            assert (await post(town1, server, "/api/key-periods/kp-3/end"))[0] == 403
            status, doc = await post(city, server, "/api/key-periods", period("kp-3", [CITY]))
            assert status == 409, doc
    run(scenario())
    assert set(key_periods_of(world)) == {"kp-3"}


def test_every_problem_is_reported_at_once_and_nothing_is_written(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "city") as city:
            bad = {**period("kp-1", [CITY], start_h=2, end_h=1), "levels": ["harsh"],
                   "colour": "red"}
            del bad["name"]
            status, doc = await post(city, server, "/api/key-periods", bad)
            assert status == 422, doc
            problems = " | ".join(doc["problems"])
            for text in ('unknown key "colour"', "name is missing", "end is not after start",
                         "levels must be"):
                assert text in problems, (text, problems)
    run(scenario())
    assert key_periods_of(world) == {}


def test_a_viewer_reads_periods_but_cannot_declare_one(world):
    with UserStore(world[1].desk_db) as users:
        users.add("procurator", CITY, PASSWORD, role="viewer")

    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "city", "procurator") as (city, viewer):
            assert (await post(city, server, "/api/key-periods", period("kp-1", [CITY])))[0] \
                == 201
            status, listed = await get(viewer, server, "/api/key-periods")
            assert status == 200 and [p["id"] for p in listed["key_periods"]] == ["kp-1"]
            assert (await post(viewer, server, "/api/key-periods",
                               period("kp-2", [CITY])))[0] == 403
            assert (await post(viewer, server, "/api/key-periods/kp-1/end"))[0] == 403
    run(scenario())
    assert set(key_periods_of(world)) == {"kp-1"}
