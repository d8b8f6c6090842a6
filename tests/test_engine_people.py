"""People changed on the desk reach the running engine (SPEC §11): real `geofence serve`
with its desk, real HTTP, fixes over the carrier protocol, alarms read from the workers'
files.

One engine serves the module (starting it is the slow part); each test has its own
people of a small built-in population, and sends fixes with event times that only grow.
The engine picks registry changes up by polling its version, so each test sends fixes
until the change shows (with a deadline), never sleeps for a fixed time and asserts.
"""

import asyncio
import io
import json
import time

import aiohttp
import numpy as np
import pytest
import shapely

from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, population_document, write_config
from tests.test_engine_alarms import all_alarms

PASSWORD = "people-desk-pw"
PICKUP_DEADLINE_S = 60     # generous on a shared machine; the engine needs about a second
SEND_EVERY_S = 0.2
ZONE = "Z1"
ZONE_HALF_SIDE_DEG = 0.002   # about 400 m a side
NEW_DEVICE = "13912345678"
FIX_STEP_MS = 100


class World:
    """The engine, its population, its desk URL, and a clock for fixes that only grows."""

    def __init__(self, tmp_path, monkeypatch):
        self.layer = Layer.from_geojson(zaozhuang_geojson())
        self.doc = population_document(12, seed=5)
        normal = [s for s in self.doc["subjects"] if s["risk"] == "normal"]
        self.barred, self.ended, self.control = normal[:3]
        self.home = self.place_at_home(self.barred)
        self.far = self.place_elsewhere(self.barred)
        zones = tmp_path / "zones.geojson"
        zones.write_text(json.dumps(square_layer(ZONE, "实验小学", self.home)))
        self.config = write_config(tmp_path, desk=True)
        with self.config.open("a") as f:
            f.write(f'[layers]\nzones = "{zones}"\n')
        (tmp_path / "registry.json").write_text(json.dumps(self.doc, ensure_ascii=False))
        assert cli(["--config", str(self.config), "registry", "import",
                    str(tmp_path / "registry.json")]) == 0
        offices = {s["office"] for s in (self.barred, self.ended, self.control)}
        self.users = {}
        for office in offices:
            monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
            assert cli(["--config", str(self.config), "user", "add", f"u{office}",
                        "--office", office]) == 0
            self.users[office] = f"u{office}"
        self.engine = Engine(self.config)
        self.url = self.engine.wait_for("geofence: desk on ").split("desk on ")[1].split()[0]
        self.carrier = Carrier(self.engine.endpoint)
        self.t_ms = 0
        self.batch = 0
        self.accepted = 0   # fixes the ingest stored, over the module

    def place_at_home(self, subject) -> tuple[float, float]:
        inside = shapely.union_all(self.layer.geometries[
            self.layer.features_under(subject["home"][0])])
        point = inside.representative_point()
        return point.x, point.y

    def place_elsewhere(self, subject) -> tuple[float, float]:
        other = next(i for i in range(len(self.layer.codes))
                     if self.layer.parents[i] != subject["home"][0])
        point = self.layer.geometries[other].representative_point()
        return point.x, point.y

    def send(self, fixes: list[tuple[str, tuple[float, float]]]) -> dict:
        """One batch, one fix per (device, place): event times are now, each later than
        the last sent (a fix older than its subject's newest is late and never counts)."""
        self.batch += 1
        times = []
        for _ in fixes:
            self.t_ms = max(self.t_ms + FIX_STEP_MS, int(time.time() * 1000))
            times.append(self.t_ms)
        lon, lat = np.array([place for _, place in fixes]).T
        ack = self.carrier.request(encode_cols("cmcc", self.batch, [d for d, _ in fixes],
                                               times, lon, lat, np.full(len(fixes), 20.0)))
        assert ack is not None, "no ack"
        self.accepted += ack["accepted"]
        return ack

    def wait_evaluated(self) -> None:
        """Until the workers have evaluated every fix the ingest stored."""
        deadline = time.monotonic() + PICKUP_DEADLINE_S
        while self.engine.evaluated_fixes() < self.accepted:
            assert time.monotonic() < deadline, "the workers did not evaluate the fixes"
            time.sleep(0.05)

    def close(self) -> None:
        self.carrier.close()
        self.engine.stop()


def square_layer(code: str, name: str, centre: tuple[float, float]) -> dict:
    lon, lat, d = *centre, ZONE_HALF_SIDE_DEG
    ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
            [lon - d, lat - d]]
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": code, "name": name},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    w = World(tmp_path_factory.mktemp("people"), monkeypatch)
    try:
        yield w
    finally:
        w.close()
        monkeypatch.undo()


def desk(world, office: str, method: str, path: str, body=None) -> tuple[int, dict]:
    """One desk request as the user of `office` (logged in for it)."""
    async def call():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(world.url + "/api/login",
                              json={"user": world.users[office], "password": PASSWORD}) as r:
                assert r.status == 200, await r.text()
            async with s.request(method, world.url + path, json=body) as r:
                return r.status, await r.json()

    return asyncio.run(call())


def alarms_of(world, subject_id: str) -> list[dict]:
    return [a for a in all_alarms(world.engine) if a["subject"] == subject_id]


def test_an_edit_that_adds_an_exclusion_zone_raises_exclusion_entry_inside_it(world):
    s = world.barred
    device = s["devices"][0]
    ack = world.send([(device, world.home)])   # inside the zone, before it is barred
    assert ack["status"] == "ok", ack
    world.wait_evaluated()
    assert alarms_of(world, s["id"]) == []

    status, doc = desk(world, s["office"], "PATCH", f"/api/subjects/{s['id']}",
                       {"exclusions": [ZONE]})
    assert (status, doc["exclusions"]) == (200, [ZONE])
    edited_ms = world.t_ms
    deadline = time.monotonic() + PICKUP_DEADLINE_S
    while not (found := [a for a in alarms_of(world, s["id"])
                         if a["type"] == "exclusion_entry"]):
        assert time.monotonic() < deadline, "no exclusion_entry after the edit"
        assert world.send([(device, world.home)])["status"] == "ok"
        time.sleep(SEND_EVERY_S)
    [entry] = found
    assert entry["t"] > edited_ms and entry["severity"] == "critical"
    assert entry["office"] == s["office"]
    assert [a["type"] for a in alarms_of(world, s["id"])] == ["exclusion_entry"]


def test_after_end_of_supervision_fixes_far_outside_raise_nothing(world):
    ended, control = world.ended, world.control
    status, doc = desk(world, ended["office"], "POST", f"/api/subjects/{ended['id']}/end",
                       {"note": "矫正期满"})
    assert status == 200 and doc["ended"] is not None and doc["devices"] == []
    # the ingest drops the released phone from its device table within about a second
    deadline = time.monotonic() + PICKUP_DEADLINE_S
    while True:
        ack = world.send([(ended["devices"][0], world.far)])
        if ack["status"] == "rejected" and ack["rejected"] == [[0, "unknown_device"]]:
            break
        assert time.monotonic() < deadline, f"the ended person's phone is still accepted: {ack}"
        time.sleep(SEND_EVERY_S)
    # the same fixes for a supervised person raise an exit: the engine is judging them
    while not any(a["type"] == "zone_exit" for a in alarms_of(world, control["id"])):
        assert time.monotonic() < deadline, "no zone_exit for the supervised control"
        world.send([(ended["devices"][0], world.far), (control["devices"][0], world.far)])
        time.sleep(SEND_EVERY_S)
    # every batch up to the control's exit is judged: nothing for the ended person, even
    # from fixes the ingest took before it dropped the phone (judged after the end)
    assert alarms_of(world, ended["id"]) == []
    status, doc = desk(world, ended["office"], "GET", f"/api/subjects/{ended['id']}")
    assert status == 200 and doc["ended"] is not None   # the record is kept


def test_a_person_onboarded_on_the_desk_is_accepted_by_the_ingest_and_judged(world):
    office = world.control["office"]
    home = world.control["home"]
    assert world.send([(NEW_DEVICE, world.far)])["rejected"] == [[0, "unknown_device"]]
    status, doc = desk(world, office, "POST", "/api/subjects",
                       {"id": "NEW-1", "devices": [NEW_DEVICE], "office": office,
                        "home": home, "level": "strict"})
    assert status == 201, doc
    deadline = time.monotonic() + PICKUP_DEADLINE_S
    while (ack := world.send([(NEW_DEVICE, world.far)]))["status"] != "ok":
        assert ack["rejected"] == [[0, "unknown_device"]], ack
        assert time.monotonic() < deadline, "the ingest never accepted the new phone"
        time.sleep(SEND_EVERY_S)
    while not any(a["type"] == "zone_exit" for a in alarms_of(world, "NEW-1")):
        assert time.monotonic() < deadline, "no zone_exit for the new person"
        world.send([(NEW_DEVICE, world.far)])
        time.sleep(SEND_EVERY_S)
    [exit_alarm] = [a for a in alarms_of(world, "NEW-1") if a["type"] == "zone_exit"]
    assert exit_alarm["office"] == office and exit_alarm["home"] == home
