"""A data directory written by the engine before its files had schema versions
(tests/data/engine-data-v0: 9 batches, two exits and a return, the first exit acknowledged,
a desk user; see its README) opens with today's `geofence serve`: every file is upgraded,
the old alarms and login work on the desk, nothing is evaluated or imported twice, and new
fixes are evaluated."""

import json
import shutil
import sqlite3
import time
import urllib.request
from contextlib import closing
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np

from alerts import alarm_store, registry
from alerts.registry import RegistryStore
from desk import users
from engine.database import schema_version
from ingest import store
from ingest.protocol import encode_cols
from service import evaluation_store
from service.evaluation_store import EvaluationReader
from tests.engine_harness import Carrier, Engine, write_config

OLD = Path(__file__).parent / "data" / "engine-data-v0"
OLD_LAST_SEQ = 9
FAR = (115.5, 33.5)   # 100+ km from Zaozhuang


class Desk:
    def __init__(self, url: str, user: str, password: str):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        body = json.dumps({"user": user, "password": password}).encode()
        request = urllib.request.Request(url + "/api/login", body,
                                         {"Content-Type": "application/json"})
        assert self.opener.open(request, timeout=10).status == 200

    def get(self, path: str):
        return json.loads(self.opener.open(self.url + path, timeout=10).read())

    def alarms(self) -> list[dict]:
        return self.get("/api/alarms?limit=500")["alarms"]


def wait_until(condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


def test_a_data_directory_of_the_unversioned_engine_opens_upgraded(tmp_path):
    shutil.copytree(OLD, tmp_path / "data")
    expected = json.loads((OLD / "expected.json").read_text())
    config = write_config(tmp_path, desk=True)
    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        url = engine.wait_for("geofence: desk on ").split("desk on ")[1].split()[0]
        engine.wait_for("geofence: ready")
        paths = engine.paths
        for path, schema in ((paths.fixes_db, store.SCHEMA),
                             (paths.worker_db(0, 1), evaluation_store.SCHEMA),
                             (paths.alarms_db, alarm_store.SCHEMA),
                             (paths.registry_db, registry.SCHEMA),
                             (paths.desk_db, users.SCHEMA)):
            with closing(sqlite3.connect(path)) as db:
                assert schema_version(db) == schema.version, path.name
        with EvaluationReader(paths.worker_db(0, 1)) as reader:
            assert reader.checkpoint() == OLD_LAST_SEQ   # resumes after the old batches
        with store.StoreReader(paths.fixes_db) as reader:   # the old engine numbered its
            assert reader.devices_recorded_after() == OLD_LAST_SEQ   # devices otherwise
        with closing(RegistryStore(paths.registry_db)) as registry_store:
            newcomer = next(s for s in registry_store.load().subjects.values()
                            if s.risk == "normal" and s.id not in expected["subjects"])

        desk = Desk(url, expected["user"], expected["password"])   # the old login
        old = desk.alarms()
        assert sorted(a["type"] for a in old) == ["zone_exit", "zone_exit", "zone_return"]
        acknowledged = desk.get(f"/api/alarms/{expected['acknowledged']}")
        assert acknowledged["status"] == "acknowledged"
        assert [(h["action"], h["user"], h["note"]) for h in acknowledged["history"]] == [
            ("raised", None, None), ("acknowledged", expected["user"], "called, on the way back")]

        device = np.array([int(newcomer.devices[0])])
        t0 = int(time.time() * 1000) - 600_000
        for k in range(3):   # batch numbers the old engine never used
            frame = encode_cols("cmcc", 1000 + k, device, np.array([t0 + 60_000 * k]),
                                np.array([FAR[0]]), np.array([FAR[1]]), np.array([20.0]))
            assert carrier.request(frame)["status"] == "ok"
        new = wait_until(lambda: [a for a in desk.alarms() if a["subject"] == newcomer.id])
        assert [a["type"] for a in new] == ["zone_exit"]
        with EvaluationReader(paths.worker_db(0, 1)) as reader:
            wait_until(lambda: reader.checkpoint() == OLD_LAST_SEQ + 3)
        # only the three new fixes were evaluated (the old nine not again) ...
        wait_until(lambda: engine.metrics().get("geofence_fixes_evaluated_total") == 3)
        time.sleep(0.5)
        assert engine.metrics()["geofence_fixes_evaluated_total"] == 3
        # ... and every old alarm is still there once, the acknowledged one untouched
        after = desk.alarms()
        assert sorted(a["id"] for a in after) == sorted([a["id"] for a in old] + [new[0]["id"]])
        assert desk.get(f"/api/alarms/{expected['acknowledged']}") == acknowledged
    finally:
        carrier.close()
        engine.stop()
    assert "geofence: stopped" in engine.lines
