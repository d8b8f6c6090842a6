"""Disk faults under a real `geofence serve`: nothing acknowledged unless it is stored, and
people are told (issue 10). Each fault is made for real: the fixes store moved away and
back, a tmpfs storage path that fills up, an ext4 storage path the kernel turns read-only
(as on a disk error; a `mount -o remount,ro` is refused while SQLite has the files open
for writing, and such a file system stays read-only until unmounted, so recovery from a
read-only file system is tested at the store with the same error injected), the data
directory deleted. While it lasts, new
batches are answered `busy`, /healthz answers 503 with the reason, the metrics count it,
the log says it once and a critical `engine_fault` alarm reaches the root office's desk
user; once it is gone, batches are taken again and every fix acknowledged before, during
and after is in the store exactly once."""

import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import shapely

from geofence import Layer
from geofence.builtin import zaozhuang_geojson

from ingest.protocol import encode_cols
from ingest.store import StoreReader
from service.cli import main as cli
from service.evaluation_store import EvaluationReader
from tests.engine_harness import Carrier, Engine, population_document, write_config
from tests.test_upgrade import Desk, wait_until
from tests.filesystems import ext4_image, fill, small_tmpfs, turn_read_only
from tests.heavy import heavy

PASSWORD = "correct horse battery staple"
T0 = int(time.time() * 1000) - 3_600_000
WAL_FILES = ("", "-wal", "-shm")
DOCUMENT = population_document(20)
SUBJECT = next(s for s in DOCUMENT["subjects"] if s["risk"] == "normal")
FAR = (115.5, 33.5)   # 100+ km from Zaozhuang: out of everybody's area


def home_point() -> tuple[float, float]:
    layer = Layer.from_geojson(zaozhuang_geojson())
    home = shapely.union_all(layer.geometries[layer.features_under(SUBJECT["home"][0])])
    inside = home.representative_point()
    return inside.x, inside.y


def move(path, aside) -> None:
    for suffix in WAL_FILES:
        if os.path.exists(f"{path}{suffix}"):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")


class RootDesk(Desk):
    """The root office's desk user, logged in; and /healthz, which needs no login."""

    def __init__(self, url: str):
        super().__init__(url, "city", PASSWORD)

    def alarms_of(self, kind: str) -> list[dict]:
        return self.get(f"/api/alarms?type={kind}")["alarms"]

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


class Feed:
    """A carrier sending numbered batches of one device; remembers what was acked."""

    def __init__(self, engine: Engine, device: str, fixes_per_batch: int = 1,
                 at: tuple[float, float] = (117.5, 34.8)):
        self.carrier = Carrier(engine.endpoint)
        self.at = at
        self.device = np.array([int(device)] * fixes_per_batch)
        self.n = fixes_per_batch
        self.acked: dict[int, str] = {}

    def send(self, batch: int) -> str:
        t = T0 + (batch * self.n + np.arange(self.n)) * 10   # every fix its own (device, t)
        frame = encode_cols("cmcc", batch, self.device, t, np.full(self.n, self.at[0]),
                            np.full(self.n, self.at[1]), np.full(self.n, 20.0))
        ack = self.carrier.request(frame, 10_000)
        status = ack["status"] if ack else "timeout"
        if status in ("ok", "partial"):
            self.acked[batch] = status
        return status

    def close(self) -> None:
        self.carrier.close()


def start(tmp_path) -> tuple[Engine, RootDesk, Feed, str]:
    config = write_config(tmp_path, desk=True)
    doc = DOCUMENT
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    root = next(o["code"] for o in doc["offices"] if not o["parent"])
    terminal, sys.stdin = sys.stdin, io.StringIO(PASSWORD + "\n")   # the password
    try:
        assert cli(["--config", str(config), "user", "add", "city", "--office", root]) == 0
    finally:
        sys.stdin = terminal
    engine = Engine(config)
    desk = RootDesk(engine.status.endpoints.desk)
    feed = Feed(engine, SUBJECT["devices"][0])
    return engine, desk, feed, root


def stored_batches(engine: Engine) -> list[int]:
    with StoreReader(engine.paths.fixes_db) as reader:
        return [b for b, in reader._conn().execute(
            "SELECT batch FROM batches WHERE carrier = 'cmcc' ORDER BY batch")]


def fault_lines(engine: Engine) -> tuple[list[str], list[str]]:
    return ([line for line in engine.lines if "store fault:" in line],
            [line for line in engine.lines if "store works again" in line])


def test_fixes_store_moved_away_and_back(tmp_path):
    engine, desk, feed, root = start(tmp_path)
    fixes = engine.paths.fixes_db
    try:
        assert [feed.send(b) for b in range(3)] == ["ok"] * 3
        assert desk.health() == (200, {"status": "ok"})
        move(fixes, tmp_path / "aside")
        assert [feed.send(b) for b in range(3, 6)] == ["busy"] * 3
        assert feed.send(1) == "duplicate"       # a stored batch still gets its first answer
        status, body = desk.health()
        assert status == 503 and body["status"] == "fault"
        [shown] = body["faults"]
        assert (shown["process"], shown["store"], shown["kind"]) == ("ingest", "fixes", "missing")
        assert str(fixes) in shown["reason"] and "put it back" in shown["reason"]
        metrics = engine.metrics()
        assert metrics['geofence_storage_fault{process="ingest",store="fixes"}'] == 1
        assert metrics['geofence_storage_faults_total{kind="missing",process="ingest",'
                       'store="fixes"}'] == 1
        [alarm] = wait_until(lambda: desk.alarms_of("engine_fault"))
        assert alarm["severity"] == "critical" and alarm["office"] == root
        assert alarm["subject"] is None and alarm["t"] == shown["since"]
        assert alarm["details"]["process"] == "ingest" and alarm["details"]["store"] == "fixes"

        move(tmp_path / "aside", fixes)
        wait_until(lambda: desk.health()[0] == 200)
        assert [feed.send(b) for b in range(3, 8)] == ["ok"] * 5   # the refused ones resent
        assert len(desk.alarms_of("engine_fault")) == 1
    finally:
        feed.close()
        engine.stop()
    onsets, recoveries = fault_lines(engine)
    assert len(onsets) == 1 and "ERROR" in onsets[0] and len(recoveries) == 1
    assert stored_batches(engine) == sorted(feed.acked) == list(range(8))


def test_storage_that_fills_up_then_has_room_again(tmp_path):
    data = tmp_path / "data"
    with small_tmpfs(data, 48 * 1024):
        engine, desk, small, root = start(tmp_path)
        small.close()
        feed = Feed(engine, small.device[0], fixes_per_batch=2000)
        try:
            assert feed.send(0) == "ok"
            ballast = fill(data)
            batch = 1
            while (status := feed.send(batch)) == "ok":   # the WAL's free room first
                batch += 1
                assert batch < 2000, "the store never noticed the full disk"
            assert status == "busy"
            status, body = desk.health()
            assert status == 503
            assert ("ingest", "fixes", "disk_full") in {
                (f["process"], f["store"], f["kind"]) for f in body["faults"]}
            assert feed.send(batch + 1) == "busy"
            ballast.unlink()
            wait_until(lambda: feed.send(batch) == "ok")
            assert feed.send(batch + 1) == "ok"
            wait_until(lambda: desk.health()[0] == 200)
            alarms = wait_until(lambda: desk.alarms_of("engine_fault"))
            assert {"ingest"} <= {a["details"]["process"] for a in alarms}
            assert all(a["details"]["kind"] == "disk_full" for a in alarms)
        finally:
            feed.close()
            engine.stop()
        onsets, recoveries = fault_lines(engine)
        assert sum("ingest: fixes" in line for line in onsets) == 1
        assert sum("ingest: fixes" in line for line in recoveries) == 1
        assert stored_batches(engine) == sorted(feed.acked) == list(range(batch + 2))


def refused_after(tmp_path, make_fault) -> tuple[Engine, dict]:
    """Three batches taken, then `make_fault(engine)`: the next ones are answered busy,
    /healthz is 503, the ingest logs it once, nothing is acknowledged after it. Returns
    the engine (stopped) and the faults shown, {(process, store): kind}."""
    engine, desk, feed, _ = start(tmp_path)
    try:
        assert [feed.send(b) for b in range(3)] == ["ok"] * 3
        make_fault(engine)
        assert [feed.send(b) for b in range(3, 8)] == ["busy"] * 5
        status, body = desk.health()
        assert status == 503
    finally:
        feed.close()
        engine.stop()
    onsets, _ = fault_lines(engine)
    assert sum("ingest: fixes" in line for line in onsets) == 1
    assert sorted(feed.acked) == [0, 1, 2]
    return engine, {(f["process"], f["store"]): f["kind"] for f in body["faults"]}


def test_data_directory_deleted(tmp_path):
    engine, faults = refused_after(tmp_path, lambda engine: shutil.rmtree(engine.root))
    assert faults[("ingest", "fixes")] == "missing"
    assert not engine.paths.fixes_db.exists()   # no new empty store in its place


def test_storage_turned_read_only(tmp_path):
    data = tmp_path / "data"
    with ext4_image(data, tmp_path / "fs.img", size_mib=64):
        _, faults = refused_after(tmp_path, lambda engine: turn_read_only(data))
    assert faults[("ingest", "fixes")] in ("read_only", "io_error")


def test_worker_and_dispatcher_files_moved_away_and_back(tmp_path):
    """The worker keeps the round it could not commit and the dispatcher stores nothing
    while their files are away; back, every fix is evaluated once and every alarm is
    stored once, and each fault has its engine_fault alarm (the dispatcher's own raised
    once its store works again, with the fault's start time)."""
    engine, desk, feed, root = start(tmp_path)
    evaluation, alarms = engine.paths.worker_db(0, 1), engine.paths.alarms_db
    feed.at = FAR
    since = {}
    try:
        assert feed.send(0) == "ok"
        wait_until(lambda: engine.evaluated_fixes() == 1)
        move(evaluation, tmp_path / "evaluation")
        assert [feed.send(b) for b in (1, 2)] == ["ok", "ok"]   # the fixes store is fine
        body = wait_until(lambda: desk.health()[1].get("faults"))
        [shown] = body
        assert (shown["process"], shown["store"], shown["kind"]) == ("worker-0", "evaluation",
                                                                    "missing")
        since["worker-0"] = shown["since"]
        move(tmp_path / "evaluation", evaluation)
        wait_until(lambda: desk.health()[0] == 200)
        wait_until(lambda: desk.alarms_of("zone_exit"))

        move(alarms, tmp_path / "alarms")
        body = wait_until(lambda: desk.health()[1].get("faults"))
        [shown] = body
        assert (shown["process"], shown["store"]) == ("dispatcher", "alarms")
        since["dispatcher"] = shown["since"]
        feed.at = home_point()
        assert [feed.send(b) for b in (3, 4)] == ["ok", "ok"]
        wait_until(lambda: engine.evaluated_fixes() == 5)   # the worker is not held up
        assert not alarms.exists()
        move(tmp_path / "alarms", alarms)
        wait_until(lambda: desk.health()[0] == 200)
        wait_until(lambda: desk.alarms_of("zone_return"))
        faults = wait_until(lambda: len(desk.alarms_of("engine_fault")) == 2
                            and desk.alarms_of("engine_fault"))
    finally:
        feed.close()
        engine.stop()
    assert {a["details"]["process"]: a["t"] for a in faults} == since
    assert all(a["office"] == root and a["severity"] == "critical" for a in faults)
    store = engine.alarm_store()
    kinds = sorted(a.type for a in store.query(limit=100))
    store.close()
    assert kinds == ["engine_fault", "engine_fault", "zone_exit", "zone_return"]
    with EvaluationReader(evaluation) as reader:
        assert reader.checkpoint() == 5
        assert len(reader.alarms_after(0, 100)) == 2


@pytest.mark.parametrize("process, store", [
    ("ingest", lambda paths: paths.fixes_db),
    pytest.param("dispatcher", lambda paths: paths.alarms_db, marks=heavy),   # the same
    pytest.param("worker-0", lambda paths: paths.worker_db(0, 1), marks=heavy)],  # rule, its
    ids=["ingest", "dispatcher", "worker"])                      # own store: --slow
def test_a_process_restarted_without_its_store_never_starts_a_new_one(tmp_path, process,
                                                                       store):
    """A store moved away, then its process killed: a new empty store would restart the
    engine's history (a fixes store numbering batches from 1 again, below the workers'
    checkpoints; an alarm store without its acknowledgements). The restarted process finds
    no store, and the engine stops saying so."""
    engine, desk, feed, _ = start(tmp_path)
    path = store(engine.paths)
    try:
        assert [feed.send(b) for b in range(3)] == ["ok"] * 3
        move(path, tmp_path / "aside.sqlite")
        engine.kill9(process)
        assert engine.proc.wait(120) != 0
    finally:
        feed.close()
        engine.stop()
    assert not path.exists()
    assert any(f"{process} could not start" in line and f"{path.name} is missing" in line
               for line in engine.lines), engine.lines[-10:]
    assert sorted(feed.acked) == [0, 1, 2]
