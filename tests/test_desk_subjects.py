"""People in the desk (SPEC §11) over a real HTTP server and real SQLite files.

The world is `test_desk_api`'s (the city above counties 370402 and 370403 above three
township offices; S1 at town1, S2 at town2, S3 at town3, S4 at town3 delegated to
town1), with an injunction zone layer of two zones, Z1 and Z2. Every write goes through
the registry's import, so the registry file is read back to see what changed, and what
did not.
"""

import json
import shutil
import sqlite3
import time
from datetime import datetime, timezone

import pytest

from alerts.registry import RegistryStore
from desk.audit import AuditLog
from desk.users import UserStore
from engine.config import Desk, Layers, Settings, Storage
from engine.paths import EnginePaths
from tests import test_desk_api
from tests.test_desk_api import (C402, C403, PASSWORD, T1, T2, T3, get, logged_in, post,
                                 run, serving)

template = test_desk_api.template   # the desk world's files, built once

ZONES = {"Z1": ("实验小学", (117.52, 34.84)), "Z2": ("夜色酒吧", (117.30, 34.79))}
HALF_SIDE_DEG = 0.002


def zone_layer() -> dict:
    """Two small squares (about 400 m a side), Z1 in 市中区 and Z2 in 薛城区."""
    features = []
    for code, (name, (lon, lat)) in ZONES.items():
        d = HALF_SIDE_DEG
        ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
                [lon - d, lat - d]]
        features.append({"type": "Feature", "properties": {"code": code, "name": name},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": features}


@pytest.fixture
def world(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    zones = tmp_path / "zones.geojson"
    zones.write_text(json.dumps(zone_layer(), ensure_ascii=False))
    settings = Settings(storage=Storage(path=str(root)), desk=Desk(bind="127.0.0.1:0"),
                        layers=Layers(zones=str(zones)))
    return settings, EnginePaths.create(str(root))


def registry_of(world):
    store = RegistryStore(world[1].registry_db)
    try:
        return store.load()
    finally:
        store.close()


def audit_of(world, subject: str) -> list[tuple[str, str, str]]:
    """(action, user, detail) of the entries about `subject`, oldest first."""
    db = sqlite3.connect(world[1].desk_db)
    try:
        return [(e.action, e.user, e.detail)
                for _, e in AuditLog(db).entries(subject=subject, newest_first=False)]
    finally:
        db.close()


async def send(session, server, method: str, path: str, body):
    async with session.request(method, server.make_url(path), json=body) as r:
        return r.status, await r.json()


NEW = {"id": "S9", "devices": ["13900000009"], "office": T1, "home": [C402],
       "exclusions": ["Z1"], "risk": "key", "category": "parole", "level": "strict"}


# -- reading -----------------------------------------------------------------------------

def test_a_persons_record_shows_devices_only_to_the_supervising_side(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "county402", "city", "town3", "town2") as users:
            town1, county402, city, town3, town2 = users
            for session in (town1, county402, city):
                status, doc = await get(session, server, "/api/subjects/S1")
                assert status == 200
                assert doc == {"id": "S1", "office": T1, "home": [C402], "risk": "normal",
                               "category": "probation", "exclusions": [], "level": "normal",
                               "ended": None, "devices": ["13800000001"], "cases": []}
            # S4 is town3's, delegated to town1: the delegate sees the person, not the phone
            status, doc = await get(town1, server, "/api/subjects/S4")
            assert status == 200 and "devices" not in doc
            assert (doc["office"], doc["origin"], doc["home"]) == (T1, T3, [C402])
            status, doc = await get(town3, server, "/api/subjects/S4")
            assert doc["devices"] == ["13800000004"]
            # another township's person answers exactly as one who does not exist
            outside = await get(town2, server, "/api/subjects/S1")
            missing = await get(town2, server, "/api/subjects/nobody")
            assert outside == missing == (404, {"error": "no such subject"})
            status, body = await get(city, server, "/api/subjects")
            assert status == 200 and {s["id"] for s in body["subjects"]} == {"S1", "S2", "S3",
                                                                            "S4"}
            assert all(s["level"] == "normal" and s["ended"] is None for s in body["subjects"])
            assert "1380000000" not in json.dumps(body)   # never a phone number in a list
    run(scenario())
    assert [a for a, _, _ in audit_of(world, "S1")] == ["subject.read"] * 3
    assert [u for _, u, _ in audit_of(world, "S4")] == ["town1", "town3"]


# -- onboarding --------------------------------------------------------------------------

def test_onboarding_creates_the_person_with_a_new_index_and_everything_given(world):
    before = registry_of(world)

    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            status, doc = await post(town1, server, "/api/subjects", NEW)
            assert status == 201, doc
            assert doc == {**{k: v for k, v in NEW.items()}, "ended": None, "cases": []}
            status, listed = await get(town1, server, "/api/subjects")
            assert "S9" in {s["id"] for s in listed["subjects"]}
            assert all("devices" not in s for s in listed["subjects"])
    run(scenario())
    after = registry_of(world)
    s9 = after.subjects["S9"]
    assert after.version == before.version + 1
    assert (s9.devices, s9.office, s9.home, s9.exclusions, s9.risk, s9.category, s9.level,
            s9.ended_ms) == (("13900000009",), T1, (C402,), ("Z1",), "key", "parole",
                             "strict", None)
    assert s9.index == before.next_index and after.device_owner["13900000009"] == "S9"
    assert audit_of(world, "S9") == [("subject.create", "town1", "")]


def test_onboarding_needs_the_office_in_the_users_subtree(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "county402") as (town1, county402):
            status, body = await post(town1, server, "/api/subjects", {**NEW, "office": T2})
            assert status == 403 and T2 in body["error"]
            status, _ = await post(town1, server, "/api/subjects",
                                   {**NEW, "office": C402})     # the office above: not his
            assert status == 403
            status, _ = await post(county402, server, "/api/subjects",
                                   {**NEW, "office": T3, "home": [C403]})   # other county
            assert status == 403
            status, _ = await post(town1, server, "/api/subjects",
                                   {**NEW, "id": "X1", "office": int(T3)})   # as a number
            assert status == 403
            status, doc = await post(county402, server, "/api/subjects", {**NEW, "office": T2})
            assert status == 201 and doc["office"] == T2
    run(scenario())
    registry = registry_of(world)
    assert registry.subjects["S9"].office == T2
    assert "X1" not in registry.subjects


def test_a_phone_held_elsewhere_is_never_traced_to_its_holder(world):
    """Not by an id crafted to look like the registry's message, and not by a delegate
    office, which sees the person but never their phones."""
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town2", "town1") as (
                town2, town1):
            crafted = "q is claimed by subjects S2 and z"
            status, body = await post(town2, server, "/api/subjects",
                                      {**NEW, "office": T2, "id": crafted,
                                       "devices": ["13800000003"]})
            assert status == 422 and not any("S3" in p for p in body["problems"])
            status, body = await post(town2, server, "/api/subjects",
                                      {**NEW, "office": T2, "devices": ["13800000003"]})
            assert status == 422 and not any("S3" in p for p in body["problems"])
            status, body = await post(town1, server, "/api/subjects",   # S4's delegate
                                      {**NEW, "devices": ["13800000004"]})
            assert status == 422 and not any("S4" in p for p in body["problems"])
            assert body["problems"] == [
                "device '13800000004' of subject S9 is held by a subject outside your offices"]
    run(scenario())


def test_every_problem_of_an_onboarding_is_reported_at_once_and_nothing_changes(world):
    before = registry_of(world)
    bad = {"id": "S9", "devices": ["13800000001"], "office": T1, "home": ["999999"],
           "exclusions": ["Z7"], "level": "severe", "exclusion": ["Z1"]}

    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            status, body = await post(town1, server, "/api/subjects", bad)
            assert status == 422
            problems = body["problems"]
            assert len(problems) == 5, problems
            assert any('unknown key "exclusion"; did you mean "exclusions"' in p
                       for p in problems)
            assert any("'999999' in home" in p for p in problems)
            assert any("'Z7' in exclusions" in p for p in problems)
            assert any("level 'severe'" in p for p in problems)
            assert any("device '13800000001' is claimed by subjects S1 and S9" in p
                       for p in problems)   # S1 is town1's own
            # a phone held by someone town1 does not see: refused without saying whose
            status, body = await post(town1, server, "/api/subjects",
                                      {**NEW, "devices": ["13800000003"]})
            assert status == 422 and body["problems"] == [
                "device '13800000003' of subject S9 is held by a subject outside your offices"]
            status, body = await post(town1, server, "/api/subjects", {"id": "S9"})
            assert status == 422   # registry import's words: each missing key named
            for key in ("devices", "office", "home"):
                assert any(f"{key} is missing" in p or f"{key} must be" in p
                           for p in body["problems"]), key
            assert (await get(town1, server, "/api/subjects/S9"))[0] == 404
            for unreachable in ("S/9", "S" * 129):   # an id the path could not name
                status, body = await post(town1, server, "/api/subjects",
                                          {**NEW, "id": unreachable})
                assert status == 422 and len(body["problems"]) == 1, body
    run(scenario())
    after = registry_of(world)
    assert after.version == before.version and "S9" not in after.subjects
    assert audit_of(world, "S9") == []


def test_an_id_in_use_is_409_whoever_holds_it_and_a_body_that_is_not_an_object_400(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            for taken in ("S1", "S3"):   # town1's own, and town3's (never seen by town1)
                status, body = await post(town1, server, "/api/subjects", {**NEW, "id": taken})
                assert status == 409 and taken not in body["error"]
            async with town1.post(server.make_url("/api/subjects"), json=[NEW]) as r:
                assert r.status == 400
    run(scenario())
    assert registry_of(world).subjects["S3"].office == T3


# -- editing -----------------------------------------------------------------------------

def test_an_edit_changes_only_the_keys_given(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            status, doc = await send(town1, server, "PATCH", "/api/subjects/S1",
                                     {"exclusions": ["Z1"], "level": "strict",
                                      "devices": ["13800000001", "13900000001"]})
            assert status == 200, doc
            assert (doc["exclusions"], doc["level"], doc["devices"], doc["home"],
                    doc["office"]) == (["Z1"], "strict", ["13800000001", "13900000001"],
                                       [C402], T1)
    run(scenario())
    s1 = registry_of(world).subjects["S1"]
    assert (s1.exclusions, s1.level, s1.risk, s1.category, s1.home) == (
        ("Z1",), "strict", "normal", "probation", (C402,))
    assert audit_of(world, "S1") == [("subject.update", "town1", "")]


def test_cases_are_edited_shown_and_checked_like_an_import(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            status, doc = await send(town1, server, "PATCH", "/api/subjects/S1",
                                     {"cases": ["(2025)鲁0402刑初12号"]})
            assert status == 200, doc
            assert doc["cases"] == ["(2025)鲁0402刑初12号"]
            status, body = await send(town1, server, "PATCH", "/api/subjects/S1",
                                      {"cases": ["A", "A"], "level": "nonsense"})
            assert status == 422 and len(body["problems"]) == 2, body
            status, doc = await get(town1, server, "/api/subjects/S1")
            assert doc["cases"] == ["(2025)鲁0402刑初12号"]
    run(scenario())
    assert registry_of(world).subjects["S1"].cases == ("(2025)鲁0402刑初12号",)


def test_a_new_home_is_for_the_county_not_the_township_alone(world):
    """Widening a home to another county would be a permanent leave: like a long leave,
    the supervising office's parent decides it (变更执行地)."""
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "county402") as (town1, county402):
            status, body = await send(town1, server, "PATCH", "/api/subjects/S1",
                                      {"home": [C402, C403]})
            assert status == 403 and C402 in body["error"]
            status, doc = await send(town1, server, "PATCH", "/api/subjects/S1",
                                     {"home": [C402], "level": "strict"})   # the same home
            assert status == 200 and doc["level"] == "strict"
            status, doc = await send(county402, server, "PATCH", "/api/subjects/S1",
                                     {"home": [C402, C403]})
            assert status == 200 and doc["home"] == [C402, C403]
    run(scenario())
    assert registry_of(world).subjects["S1"].home == (C402, C403)


def test_an_edit_is_for_the_supervising_side_and_validated_like_an_import(world):
    before = registry_of(world)

    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "town2") as (town1, town2):
            outside = await send(town2, server, "PATCH", "/api/subjects/S1", {"level": "loose"})
            missing = await send(town2, server, "PATCH", "/api/subjects/nobody",
                                 {"level": "loose"})
            assert outside == missing == (404, {"error": "no such subject"})
            # the delegate office sees S4 but does not supervise them
            status, _ = await send(town1, server, "PATCH", "/api/subjects/S4", {"level": "loose"})
            assert status == 403
            status, body = await send(town1, server, "PATCH", "/api/subjects/S1",
                                      {"office": T2, "home": [], "risk": "high",
                                       "devices": ["13800000002"]})
            assert status == 422, body
            assert len(body["problems"]) == 4, body["problems"]   # office is not editable
            assert any('unknown key "office"' in p for p in body["problems"])
            status, _ = await send(town1, server, "PATCH", "/api/subjects/S1", {})
            assert status == 400
    run(scenario())
    after = registry_of(world)
    assert after.version == before.version and after.subjects == before.subjects


# -- ending supervision ------------------------------------------------------------------

def test_ending_supervision_keeps_the_record_releases_the_phones_and_freezes_it(world):
    async def scenario():
        async with serving(*world) as server, \
                logged_in(server, "town1", "town2") as (town1, town2):
            assert (await post(town2, server, "/api/subjects/S1/end"))[0] == 404
            assert (await post(town1, server, "/api/subjects/S4/end"))[0] == 403
            asked_ms = int(time.time() * 1000)
            status, doc = await post(town1, server, "/api/subjects/S1/end",
                                     {"note": "矫正期满"})
            assert status == 200, doc
            assert asked_ms <= doc["ended"] <= time.time() * 1000   # now, to the ms
            assert doc["devices"] == []
            ended_at = doc["ended"]
            _, listed = await get(town1, server, "/api/subjects")
            assert {s["id"] for s in listed["subjects"]} == {"S4"}
            _, listed = await get(town1, server, "/api/subjects", ended="1")
            assert [(s["id"], s["ended"]) for s in listed["subjects"]] == [("S1", ended_at)]
            assert (await get(town1, server, "/api/subjects", ended="2"))[0] == 400
            status, doc = await get(town1, server, "/api/subjects/S1")   # the record is kept
            assert (status, doc["home"], doc["ended"]) == (200, [C402], ended_at)
            assert (await send(town1, server, "PATCH", "/api/subjects/S1",
                               {"level": "loose"}))[0] == 409
            assert (await post(town1, server, "/api/subjects/S1/end"))[0] == 409
            assert (await post(town1, server, "/api/subjects", {**NEW, "id": "S1"}))[0] == 409
            # the released phone number may be given to a new case
            status, doc = await post(town1, server, "/api/subjects",
                                     {**NEW, "devices": ["13800000001"]})
            assert status == 201, doc
            status, body = await post(town1, server, "/api/subjects/S2/end", {"notes": "x"})
            assert status == 400 and "notes" in body["error"]
    run(scenario())
    registry = registry_of(world)
    assert registry.subjects["S1"].ended_ms is not None
    assert not registry.subjects["S1"].supervised_at(registry.subjects["S1"].ended_ms)
    assert registry.device_owner["13800000001"] == "S9"
    assert [(a, d) for a, _, d in audit_of(world, "S1")] == [("subject.end", "矫正期满"),
                                                             ("subject.read", "")]


# -- viewers -----------------------------------------------------------------------------

def test_a_viewer_reads_a_record_with_its_phones_and_changes_nothing(world):
    with UserStore(world[1].desk_db) as users:
        users.add("viewer402", C402, PASSWORD, role="viewer")
    before = registry_of(world)

    async def scenario():
        async with serving(*world) as server, logged_in(server, "viewer402") as viewer:
            status, doc = await get(viewer, server, "/api/subjects/S1")
            assert (status, doc["devices"]) == (200, ["13800000001"])
            assert (await get(viewer, server, "/api/subjects/S3"))[0] == 404   # other county
            for method, path, body in (("POST", "/api/subjects", NEW),
                                       ("PATCH", "/api/subjects/S1", {"level": "loose"}),
                                       ("POST", "/api/subjects/S1/end", {})):
                assert (await send(viewer, server, method, path, body))[0] == 403, path
    run(scenario())
    assert registry_of(world).subjects == before.subjects
    assert audit_of(world, "S1") == [("subject.read", "viewer402", "")]


def test_an_end_still_ahead_is_kept_by_an_edit_and_brought_forward_by_end(world):
    ahead_ms = int(time.time() * 1000) + 30 * 86_400_000   # 矫正期满 in 30 days, imported
    store = RegistryStore(world[1].registry_db)
    try:
        store.import_document({"subjects": [
            {"id": "S7", "devices": ["13800000007"], "office": T1, "home": [C402],
             "ended": datetime.fromtimestamp(ahead_ms / 1000, timezone.utc).isoformat()}]},
            *test_desk_api.code_checkers())
    finally:
        store.close()

    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as town1:
            _, listed = await get(town1, server, "/api/subjects")
            assert "S7" in {s["id"] for s in listed["subjects"]}   # still supervised
            status, doc = await send(town1, server, "PATCH", "/api/subjects/S7",
                                     {"level": "strict"})
            assert (status, doc["level"], doc["ended"]) == (200, "strict", ahead_ms)
            status, doc = await post(town1, server, "/api/subjects/S7/end")
            assert status == 200 and doc["ended"] < ahead_ms - 29 * 86_400_000
    run(scenario())
