"""Leave on the desk (SPEC §12) over a real HTTP server and real SQLite files.

The world of tests/test_desk_api.py: the city 3704 above the counties 370402 and 370403;
S1 is supervised by the township office 370402001 (T1), S2 by 370402002 (T2), S3 by
370403001 (T3), and S4 by T3 but delegated to T1. Two officers work in T1 (town1 and
town1b) so that four eyes can be met inside one office. Times are relative to now (the
desk's clock, which some tests move); the yearly cap uses next year, wholly ahead.
"""

import json
import shutil
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

import pytest

from alerts.registry import RegistryStore
from desk.users import UserStore
from engine.config import Desk, Leave, Settings, Storage
from engine.paths import EnginePaths
from supervision.leave_rules import DAY_MS, LOCAL_TIME
from tests.test_desk_api import (C402, C403, PASSWORD, REGISTRY, T1, T2, T3, Clock, client,
                                 code_checkers, get, post, run, serving)

HOUR_MS = 3_600_000
USERS = {"city": "3704", "county402": C402, "county403": C403, "town1": T1, "town1b": T1,
         "town2": T2, "town3": T3}
IMPORTED = {"permits": [{"id": "trip-1", "subject": "S2", "start": "2020-01-01T00:00:00+08:00",
                         "end": "2020-01-03T00:00:00+08:00", "destinations": [C403],
                         "office": T2}]}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaves-template")
    paths = EnginePaths.create(str(root))
    registry = RegistryStore(paths.registry_db)
    registry.import_document(REGISTRY, *code_checkers())
    registry.import_document(IMPORTED, *code_checkers())
    registry.close()
    with UserStore(paths.desk_db) as users:
        for name, office in USERS.items():
            users.add(name, office, PASSWORD)
        users.add("inspector", C402, PASSWORD, role="viewer")   # the procuratorate
    return root


@pytest.fixture
def world(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    settings = Settings(storage=Storage(path=str(root)), desk=Desk(bind="127.0.0.1:0"))
    return settings, EnginePaths.create(str(root))


@asynccontextmanager
async def desk(world, *names, clock=None, leave=None):
    """The desk on port 0 and one logged-in session per name (a dict by name)."""
    settings, paths = world
    if leave is not None:
        settings = replace(settings, leave=leave)
    async with serving(settings, paths, clock) as server:
        sessions = {}
        try:
            for name in names:
                sessions[name] = client()
                async with sessions[name].post(server.make_url("/api/login"),
                                               json={"user": name, "password": PASSWORD}) as r:
                    assert r.status == 200
            yield server, sessions
        finally:
            for session in sessions.values():
                await session.close()


def now_ms() -> int:
    return int(datetime.now(LOCAL_TIME).timestamp()) * 1000


def next_year(month: int, day: int, hour: int = 8) -> int:
    year = datetime.now(LOCAL_TIME).year + 1
    return int(datetime(year, month, day, hour, tzinfo=LOCAL_TIME).timestamp()) * 1000


def leave_body(subject="S1", days=3.0, start=None, **more) -> dict:
    start = start if start is not None else now_ms() + DAY_MS
    return {"subject": subject, "destinations": [C403], "start_ms": start,
            "end_ms": start + int(days * DAY_MS), "reason": "探望生病的母亲", **more}


async def file(server, session, **kw) -> dict:
    status, doc = await post(session, server, "/api/leaves", leave_body(**kw))
    assert status == 201, doc
    return doc


def permits(world) -> dict:
    store = RegistryStore(world[1].registry_db)
    try:
        return {p.id: p for p in store.load().permits.values()}
    finally:
        store.close()


def registry_version(world) -> int:
    store = RegistryStore(world[1].registry_db)
    try:
        return store.version()
    finally:
        store.close()


def audit_actions(world) -> list[tuple]:
    with sqlite3.connect(world[1].desk_db) as db:
        return db.execute("SELECT user, action, subject, detail FROM audit "
                          "WHERE action LIKE 'leave.%' ORDER BY seq").fetchall()


# -- authority -----------------------------------------------------------------------------

def test_a_request_is_pending_with_the_office_that_must_approve_it(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            short = await file(server, s["town1"], days=3)
            assert (short["status"], short["approver"], short["days"]) == ("pending", T1, 3)
            assert (short["subject"], short["office"], short["source"]) == ("S1", T1, "desk")
            assert short["requested_by"] == "town1" and short["permit"] is None
            assert [h["action"] for h in short["history"]] == ["request"]
            assert short["can_approve"] is False                 # four eyes: not the filer
            _, seen = await get(s["town1b"], server, f"/api/leaves/{short['id']}")
            assert seen["can_approve"] is True
            seven = await file(server, s["town1"], days=7, start=now_ms() + 10 * DAY_MS)
            assert seven["approver"] == T1
            eight = await file(server, s["town1"], days=7.5, start=now_ms() + 20 * DAY_MS)
            assert (eight["approver"], eight["days"]) == (C402, 8)
            _, seen = await get(s["town1b"], server, f"/api/leaves/{eight['id']}")
            assert seen["can_approve"] is False                  # the county's to approve
    run(scenario())


def test_ten_days_a_township_officer_may_not_approve_and_the_county_may(world):
    async def scenario():
        async with desk(world, "town1", "town1b", "county402", "city") as (server, s):
            leave = await file(server, s["town1"], days=10)
            status, body = await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve",
                                      {"note": "同意"})
            assert status == 403 and C402 in body["error"]
            assert permits(world).get(f"leave-{leave['id']}") is None
            status, done = await post(s["county402"], server,
                                      f"/api/leaves/{leave['id']}/approve", {"note": "同意"})
            assert status == 200, done
            assert (done["status"], done["permit"]) == ("approved", f"leave-{leave['id']}")
            assert [(h["action"], h["user"], h["office"], h["note"]) for h in done["history"]] \
                == [("request", "town1", T1, ""), ("approve", "county402", C402, "同意")]
            permit = permits(world)[f"leave-{leave['id']}"]
            assert (permit.subject, permit.destinations, permit.office, permit.source) == \
                ("S1", (C403,), C402, f"leave:{leave['id']}")
            assert (permit.start_ms, permit.end_ms) == (leave["start_ms"], leave["end_ms"])
            city_leave = await file(server, s["town1"], days=9, start=now_ms() + 40 * DAY_MS)
            status, _ = await post(s["city"], server, f"/api/leaves/{city_leave['id']}/approve")
            assert status == 200                                 # above the county: also
            assert permits(world)[f"leave-{city_leave['id']}"].office == "3704"   # who did
    run(scenario())


def test_back_to_back_short_leaves_are_one_absence_for_the_county(world):
    """Four 7-day leaves one after another are 28 days away: not for the township alone."""
    async def scenario():
        async with desk(world, "town1", "town1b", "county402") as (server, s):
            start = now_ms() + DAY_MS
            first = await file(server, s["town1"], days=7, start=start)
            assert first["approver"] == T1
            status, _ = await post(s["town1b"], server, f"/api/leaves/{first['id']}/approve",
                                   {"note": "同意"})
            assert status == 200
            second = await file(server, s["town1"], days=7, start=start + 7 * DAY_MS)
            assert second["approver"] == C402        # joined to the first: 14 days
            status, body = await post(s["town1b"], server,
                                      f"/api/leaves/{second['id']}/approve", {"note": "同意"})
            assert status == 403 and C402 in body["error"]
            # filed apart while both pending: the approval decides again
            third = await file(server, s["town1"], days=5, start=start + 40 * DAY_MS)
            fourth = await file(server, s["town1"], days=5, start=start + 45 * DAY_MS + 3600_000)
            assert third["approver"] == T1 and fourth["approver"] == C402
            status, body = await post(s["town1b"], server,
                                      f"/api/leaves/{third['id']}/approve", {"note": "同意"})
            assert status == 403 and C402 in body["error"]
            status, _ = await post(s["county402"], server,
                                   f"/api/leaves/{second['id']}/approve", {"note": "同意"})
            assert status == 200
    run(scenario())


def test_the_county_of_another_branch_may_not_approve(world):
    async def scenario():
        async with desk(world, "town1", "county403") as (server, s):
            leave = await file(server, s["town1"], days=2)
            missing = await post(s["county403"], server, "/api/leaves/999999/approve")
            assert missing[0] == 404
            assert await post(s["county403"], server,
                              f"/api/leaves/{leave['id']}/approve") == missing
    run(scenario())


def test_four_eyes_the_filer_may_not_approve_unless_switched_off(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            leave = await file(server, s["town1"], days=2)
            status, body = await post(s["town1"], server, f"/api/leaves/{leave['id']}/approve")
            assert status == 403 and "four eyes" in body["error"]
            status, done = await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            assert (status, done["status"]) == (200, "approved")
        async with desk(world, "town1", leave=Leave(four_eyes=False)) as (server, s):
            leave = await file(server, s["town1"], days=2, start=now_ms() + 10 * DAY_MS)
            assert leave["can_approve"] is True
            status, done = await post(s["town1"], server, f"/api/leaves/{leave['id']}/approve")
            assert (status, done["status"]) == (200, "approved")
    run(scenario())


def test_a_standing_permit_is_the_countys_and_becomes_a_weekly_permit(world):
    async def scenario():
        async with desk(world, "town1", "town1b", "county402") as (server, s):
            start = now_ms() + DAY_MS
            body = {"subject": "S1", "destinations": [C403], "start_ms": start,
                    "until_ms": start + 90 * DAY_MS, "reason": "跨县务工",
                    "recurring": {"days": [1, 2, 3, 4, 5], "from": "08:00", "to": "19:00"}}
            status, leave = await post(s["town1"], server, "/api/leaves", body)
            assert status == 201, leave
            assert (leave["approver"], leave["end_ms"]) == (C402, start + 90 * DAY_MS)
            assert leave["recurring"] == {"days": [1, 2, 3, 4, 5], "from": "08:00", "to": "19:00"}
            status, _ = await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            assert status == 403
            status, _ = await post(s["county402"], server, f"/api/leaves/{leave['id']}/approve")
            assert status == 200
            permit = permits(world)[f"leave-{leave['id']}"]
            assert permit.recurring is not None and permit.recurring.days == (1, 2, 3, 4, 5)
            assert (permit.recurring.from_min, permit.recurring.to_min) == (8 * 60, 19 * 60)
            # not counted in the year's days, and no clash with an ordinary trip
            trip = await file(server, s["town1"], days=3, start=start + 10 * DAY_MS)
            assert trip["status"] == "pending"
            status, body = await post(s["town1"], server, "/api/leaves",
                                      {**body, "until_ms": start + 200 * DAY_MS})
            assert status == 422 and any("183" in p for p in body["problems"])
    run(scenario())


# -- caps ----------------------------------------------------------------------------------

def test_a_leave_over_thirty_days_is_refused_with_the_reason(world):
    async def scenario():
        async with desk(world, "town1") as (server, s):
            before = registry_version(world)
            status, body = await post(s["town1"], server, "/api/leaves", leave_body(days=31))
            assert status == 422
            assert any("30" in p and "31" in p for p in body["problems"])
            _, listed = await get(s["town1"], server, "/api/leaves", subject="S1")
            assert [leave for leave in listed["leaves"] if leave["source"] == "desk"] == []
            assert registry_version(world) == before
    run(scenario())


def test_sixty_approved_days_a_year_and_the_rest_is_refused(world):
    async def scenario():
        async with desk(world, "town1", "county402") as (server, s):
            for month, days in ((3, 30), (5, 28)):
                leave = await file(server, s["town1"], days=days, start=next_year(month, 1))
                status, _ = await post(s["county402"], server,
                                       f"/api/leaves/{leave['id']}/approve")
                assert status == 200
            ok = await file(server, s["town1"], days=2, start=next_year(8, 1))
            status, body = await post(s["town1"], server, "/api/leaves",
                                      leave_body(days=3, start=next_year(9, 1)))
            assert status == 422
            assert any("58" in p and "60" in p for p in body["problems"]), body
            status, _ = await post(s["county402"], server, f"/api/leaves/{ok['id']}/approve")
            assert status == 200
            year = datetime.now(LOCAL_TIME).year + 1
            status, mine = await get(s["town1"], server, "/api/subjects/S1/leaves", year=year)
            assert status == 200
            assert (mine["days_used"], mine["max_days_per_year"]) == (60, 60)
            assert len(mine["leaves"]) == 3
    run(scenario())


def test_an_overlap_is_refused_when_filed_and_again_when_approved(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            start = now_ms() + 2 * DAY_MS
            first = await file(server, s["town1"], days=3, start=start)
            second = await file(server, s["town1"], days=3, start=start + DAY_MS)  # both pending
            status, _ = await post(s["town1b"], server, f"/api/leaves/{first['id']}/approve")
            assert status == 200
            version = registry_version(world)
            status, body = await post(s["town1b"], server, f"/api/leaves/{second['id']}/approve")
            assert status == 422 and any(first["id"] in p for p in body["problems"])
            assert registry_version(world) == version           # nothing half-applied
            assert f"leave-{second['id']}" not in permits(world)
            _, still = await get(s["town1b"], server, f"/api/leaves/{second['id']}")
            assert still["status"] == "pending" and len(still["history"]) == 1
            status, body = await post(s["town1"], server, "/api/leaves",
                                      leave_body(days=1, start=start + 2 * DAY_MS))
            assert status == 422 and "overlaps" in body["error"]
    run(scenario())


def test_bad_requests_list_every_problem_and_write_nothing(world):
    async def scenario():
        async with desk(world, "town1") as (server, s):
            start = now_ms() + DAY_MS
            status, body = await post(s["town1"], server, "/api/leaves", {
                "subject": "S1", "destinations": ["999999", C403], "start_ms": start,
                "end_ms": start - 1000, "reason": "", "colour": "red"})
            assert status == 422
            text = " ".join(body["problems"])
            assert "'999999'" in text and "colour" in text and "reason" in text
            assert "after the start" in text and len(body["problems"]) == 4
            status, body = await post(s["town1"], server, "/api/leaves",
                                      leave_body(until_ms=start + DAY_MS))
            assert status == 422 and "until_ms" in body["error"]
            for times in ({"start_ms": 300_000_000_000_000, "end_ms": 300_000_086_400_000},
                          {"end_ms": 2**53}):   # far beyond any calendar the caps count in
                status, body = await post(s["town1"], server, "/api/leaves",
                                          leave_body(**times))
                assert status == 422 and "within two years" in body["error"]
            async with s["town1"].post(server.make_url("/api/leaves"), data=b"{nope",
                                       headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
            status, _ = await post(s["town1"], server, "/api/leaves",
                                   leave_body(subject="S-nobody"))
            assert status == 404
            _, listed = await get(s["town1"], server, "/api/leaves")
            assert listed["leaves"] == []
            status, _ = await post(s["town1"], server, "/api/leaves/1/approve", {"nope": 1})
            assert status == 400
    run(scenario())


def test_after_supervision_ended_nothing_is_filed_or_approved(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            leave = await file(server, s["town1"], days=2)
            store = RegistryStore(world[1].registry_db)
            try:
                s1 = next(e for e in REGISTRY["subjects"] if e["id"] == "S1")
                store.import_document({"subjects": [{**s1, "ended": "2020-01-01T00:00:00Z"}]},
                                      *code_checkers())
            finally:
                store.close()
            status, body = await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            assert status == 422 and "ended" in body["error"]
            status, body = await post(s["town1"], server, "/api/leaves", leave_body())
            assert status == 422 and "ended" in body["error"]
    run(scenario())


# -- states --------------------------------------------------------------------------------

def test_reject_and_cancel_a_pending_leave_and_no_step_fits_after(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            rejected = await file(server, s["town1"], days=2)
            status, doc = await post(s["town1b"], server, f"/api/leaves/{rejected['id']}/reject",
                                     {"note": "理由不充分"})
            assert (status, doc["status"]) == (200, "rejected")
            for action in ("approve", "reject", "cancel", "close"):
                status, body = await post(s["town1b"], server,
                                          f"/api/leaves/{rejected['id']}/{action}")
                assert status == 409, (action, body)
            cancelled = await file(server, s["town1"], days=2, start=now_ms() + 5 * DAY_MS)
            status, doc = await post(s["town1"], server,
                                     f"/api/leaves/{cancelled['id']}/cancel")
            assert (status, doc["status"]) == (200, "cancelled")
            status, _ = await post(s["town1b"], server, f"/api/leaves/{cancelled['id']}/approve")
            assert status == 409
            assert not any(p.source.startswith("leave:") for p in permits(world).values())
            assert [h["action"] for h in doc["history"]] == ["request", "cancel"]
    run(scenario())


def test_an_approved_leave_cancelled_before_it_begins_never_allows_anything(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            leave = await file(server, s["town1"], days=2, start=now_ms() + 3 * DAY_MS)
            await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            status, doc = await post(s["town1"], server, f"/api/leaves/{leave['id']}/cancel",
                                     {"note": "行程取消"})
            assert (status, doc["status"]) == (200, "cancelled")
            permit = permits(world)[f"leave-{leave['id']}"]
            assert (permit.start_ms, permit.end_ms) == (0, 1)    # 1970: allows nothing
    run(scenario())


def test_a_begun_leave_is_closed_not_cancelled_and_its_permit_ends_at_the_close(world):
    clock = Clock()

    async def scenario():
        async with desk(world, "town1", "town1b", clock=clock) as (server, s):
            start = now_ms() + 600_000
            leave = await file(server, s["town1"], days=3, start=start)
            await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            status, body = await post(s["town1"], server, f"/api/leaves/{leave['id']}/close")
            assert status == 409 and "cancel" in body["error"]  # not begun yet
            clock.t = (start + 2 * HOUR_MS + 1500) / 1000         # 2 h 1.5 s after its start
            status, body = await post(s["town1"], server, f"/api/leaves/{leave['id']}/cancel")
            assert status == 409 and "close" in body["error"]
            status, doc = await post(s["town1"], server, f"/api/leaves/{leave['id']}/close",
                                     {"note": "本人已返回报到"})
            assert (status, doc["status"], doc["days"]) == (200, "closed", 1)   # days used
            assert doc["closed_ms"] == start + 2 * HOUR_MS + 1000   # kept to the second
            permit = permits(world)[f"leave-{leave['id']}"]
            assert (permit.start_ms, permit.end_ms) == (start, start + 2 * HOUR_MS + 1000)
            status, _ = await post(s["town1"], server, f"/api/leaves/{leave['id']}/close")
            assert status == 409
            assert [h["action"] for h in doc["history"]] == ["request", "approve", "close"]
    run(scenario())


def test_a_viewer_reads_leaves_and_may_take_no_step(world):
    async def scenario():
        async with desk(world, "town1", "inspector") as (server, s):
            leave = await file(server, s["town1"], days=10)
            status, seen = await get(s["inspector"], server, f"/api/leaves/{leave['id']}")
            assert status == 200 and seen["can_approve"] is False
            _, listed = await get(s["inspector"], server, "/api/leaves", status="pending")
            assert [item["id"] for item in listed["leaves"]] == [leave["id"]]
            status, _ = await post(s["inspector"], server, "/api/leaves", leave_body())
            assert status == 403
            for action in ("approve", "reject", "cancel", "close"):
                status, _ = await post(s["inspector"], server,
                                       f"/api/leaves/{leave['id']}/{action}")
                assert status == 403, action
            _, after = await get(s["town1"], server, f"/api/leaves/{leave['id']}")
            assert after["status"] == "pending" and len(after["history"]) == 1
    run(scenario())


# -- scoping, imports, audit ---------------------------------------------------------------

def test_other_townships_see_nothing_and_a_delegate_may_not_file(world):
    async def scenario():
        async with desk(world, "town1", "town2", "town3", "county402") as (server, s):
            leave = await file(server, s["town1"], days=2)
            missing = await get(s["town2"], server, "/api/leaves/999999")
            assert missing[0] == 404
            assert await get(s["town2"], server, f"/api/leaves/{leave['id']}") == missing
            for action in ("approve", "reject", "cancel", "close"):
                status, _ = await post(s["town2"], server,
                                       f"/api/leaves/{leave['id']}/{action}")
                assert status == 404
            _, listed = await get(s["town2"], server, "/api/leaves")
            assert all(item["subject"] == "S2" for item in listed["leaves"])
            status, _ = await post(s["town2"], server, "/api/leaves", leave_body())
            assert status == 404                                 # S1 is not theirs to know
            status, _ = await get(s["town2"], server, "/api/subjects/S1/leaves")
            assert status == 404
            status, body = await post(s["town1"], server, "/api/leaves",
                                      leave_body(subject="S4"))     # T1 is S4's delegate
            assert status == 403
            await file(server, s["town3"], subject="S4")          # the supervising office
            _, county = await get(s["county402"], server, "/api/leaves", office=T1)
            assert {item["subject"] for item in county["leaves"]} == {"S1"}
            _, none = await get(s["town1"], server, "/api/leaves", office=C402)
            assert none["leaves"] == []                          # above the user: nothing
    run(scenario())


def test_imported_permits_are_approved_read_only_leaves_that_count(world):
    async def scenario():
        async with desk(world, "town2", "county402", "town1") as (server, s):
            _, listed = await get(s["town2"], server, "/api/leaves", subject="S2")
            imported = [item for item in listed["leaves"] if item["source"] == "import"]
            assert [(i["id"], i["status"], i["approver"], i["days"]) for i in imported] == \
                [("permit:trip-1", "approved", T2, 2)]
            assert imported[0]["history"] == [] and imported[0]["can_approve"] is False
            status, body = await post(s["county402"], server,
                                      "/api/leaves/permit:trip-1/cancel")
            assert status == 409 and "import" in body["error"]
            status, _ = await get(s["town1"], server, "/api/leaves/permit:trip-1")
            assert status == 404
            _, year = await get(s["town2"], server, "/api/subjects/S2/leaves", year="2020")
            assert year["days_used"] == 2 and [i["id"] for i in year["leaves"]] == \
                ["permit:trip-1"]
            _, pending = await get(s["town2"], server, "/api/leaves", status="pending")
            assert pending["leaves"] == []
    run(scenario())


def test_every_step_is_in_the_audit_log(world):
    async def scenario():
        async with desk(world, "town1", "town1b") as (server, s):
            leave = await file(server, s["town1"], days=2)
            await post(s["town1b"], server, f"/api/leaves/{leave['id']}/approve")
            await get(s["town1b"], server, f"/api/leaves/{leave['id']}")
            await post(s["town1"], server, f"/api/leaves/{leave['id']}/cancel")
            refused = await post(s["town1"], server, "/api/leaves", leave_body(days=40))
            assert refused[0] == 422
        lid = leave["id"]
        assert audit_actions(world) == [("town1", "leave.create", "S1", lid),
                                        ("town1b", "leave.approve", "S1", lid),
                                        ("town1b", "leave.read", "S1", lid),
                                        ("town1", "leave.cancel", "S1", lid)]
        assert "探望" not in json.dumps(audit_actions(world), ensure_ascii=False)
    run(scenario())
