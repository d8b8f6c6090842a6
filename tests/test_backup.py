"""`geofence backup` and `geofence restore`: an online copy taken mid-stream from a running
engine under a simulated carrier, restored into a fresh directory, resumes without losing
or repeating anything; and every refusal (a non-empty target, a damaged, tampered or
unfinished backup, a running engine)."""

import itertools
import json
import sqlite3
import threading
import time

import numpy as np
import shapely

from alerts.alarm_store import AlarmStore
from alerts.alarms import alarm_id
from engine.backup import backup
from engine.database import schema_version
from engine.paths import EnginePaths
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from ingest.store import StoreReader
from service.cli import main as cli
from service.evaluation_store import EvaluationReader
from sim.simulate import simulate
from tests.engine_harness import Carrier, Engine, population_document, write_config
from tests.test_engine_delivery import wait_for
from tests.test_store_check import garbage_pages, geofence, make_storage
from tests.heavy import heavy_test

FAR = (115.5, 33.5)          # 100+ km from Zaozhuang
STEP_MS = 60_000
PLAN = "iiooo" + "i" * 7     # per planted subject: in, in, out x3, in x7
SIM_SUBJECTS = 150
SEED = 3


@heavy_test
def test_backup_mid_stream_restores_into_an_engine_that_resumes_without_repeats(tmp_path):
    """The engine moves on between every two files copied (planted fixes evaluated, their
    alarms imported), as a busy engine may: every cursor of the restored files must still
    point at data in the restored files, and the restored engine, fed the planted
    carrier's resends, must raise every planted alarm exactly once."""
    doc = population_document(SIM_SUBJECTS, seed=SEED)      # the simulated carrier's people
    planted = [dict(s, id=f"S9{k:04d}", devices=[str(15800000000 + k)])
               for k, s in enumerate(doc["subjects"][:8])]  # fixes only from the test
    doc["subjects"] += planted
    live = tmp_path / "live"
    live.mkdir()
    config = write_config(live)
    (tmp_path / "registry.json").write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import",
                str(tmp_path / "registry.json")]) == 0
    frame = PlantedFrames(planted)
    exits = {alarm_id(s["id"], "zone_exit", frame.t0 + (2 if s["risk"] == "key" else 3) * STEP_MS)
             for s in planted}
    expected = exits | {alarm_id(s["id"], "zone_return", frame.t0 + 6 * STEP_MS) for s in planted}
    backup_dir = tmp_path / "backup"

    engine = Engine(config)
    sim = SimulatedCarrier(engine.endpoint)
    try:
        wait_for(lambda: last_seq(engine.paths), lambda seq: seq >= 3)   # the feed flows
        carrier = Carrier(engine.endpoint)
        steps = iter(range(len(PLAN)))

        def advance(copied: str = "") -> None:
            """Two planted steps (while there are any), evaluated and their alarms imported."""
            for step in itertools.islice(steps, 2):
                assert carrier.request(frame(step))["status"] == "ok"
            sent = last_seq(engine.paths)
            wait_for(lambda: caught_up(engine.paths), lambda seq: seq >= sent)

        advance()
        advance()                                  # steps 0-3: every exit raised
        assert exits <= set(raised(engine.paths))
        acked_seq = last_seq(engine.paths)         # every fix acknowledged so far is <= this
        acked_batches = batches(engine.paths, acked_seq)
        stored_alarms = raised(engine.paths)
        copied = backup(engine.paths, backup_dir, out=advance)   # steps 4-11 between copies
        assert [f.name for f in copied] == ["alarms.sqlite", "evaluation-0-of-1.sqlite",
                                            "fixes.sqlite", "registry.sqlite", "desk.sqlite"]
        assert expected <= set(raised(engine.paths))
        refused = geofence("--config", str(config), "restore", str(backup_dir))
        assert refused.returncode == 2
        assert refused.stderr.startswith(f"geofence: error: an engine (pid {engine.proc.pid}) "
                                         f"runs on {engine.paths.root}")
        carrier.close()
        sim.join()
        live_last_seq = last_seq(engine.paths)
    finally:
        sim.join()
        engine.stop()
    assert sim.error is None, sim.error

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restored_config = write_config(fresh)
    done = geofence("--config", str(restored_config), "restore", str(backup_dir))
    assert done.returncode == 0, done.stderr
    paths = EnginePaths(fresh / "data")
    restored_seq = last_seq(paths)
    # Mid-stream: the simulated carrier's batches kept coming after the fixes were copied
    # (beyond the four planted batches sent after that copy).
    assert live_last_seq - restored_seq > 4
    assert batches(paths, acked_seq) == acked_batches      # every acknowledged fix
    assert stored_alarms.items() <= raised(paths).items()  # every stored alarm, as it was
    with EvaluationReader(paths.worker_db(0, 1)) as evaluation:
        assert evaluation.checkpoint() <= restored_seq     # no fix skipped on resuming
        alarms = AlarmStore(paths.alarms_db, read_only=True)
        try:    # the dispatcher resumes within the rows the evaluation file has
            assert alarms.position(evaluation.file_id()) <= max(
                a.rowid for a in evaluation.alarms_after(0, 1_000_000))
        finally:
            alarms.close()

    engine = Engine(restored_config)
    try:
        carrier = Carrier(engine.endpoint)
        for step in range(len(PLAN)):   # the planted carrier resends everything
            status = carrier.request(frame(step))["status"]
            assert status == ("duplicate" if step < 8 else "ok"), step   # 8-11: after the fixes
        carrier.close()
        after = wait_for(lambda: raised(engine.paths), lambda r: expected <= set(r))
        store = AlarmStore(engine.paths.alarms_db, read_only=True)
        try:
            ids = {s["id"] for s in planted}
            of_planted = {a for a, opened in after.items() if store.get(opened).subject in ids}
        finally:
            store.close()
    finally:
        engine.stop()
    assert of_planted == expected                      # each planted event alarmed once
    assert all(after[a] == a for a in expected)        # none folded into another
    assert all(after[a] == opened for a, opened in stored_alarms.items())


def test_backup_refuses_a_directory_in_use_and_restore_every_bad_backup(tmp_path):
    config, paths = make_storage(tmp_path)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "note.txt").write_text("mine")
    done = geofence("--config", str(config), "backup", str(taken))
    assert (done.returncode, done.stderr) == (2, f"geofence: error: {taken} is not an empty "
                                                 "directory: back up into a new or empty directory\n")
    backup_dir = tmp_path / "backup"
    assert geofence("--config", str(config), "backup", str(backup_dir)).returncode == 0
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [p.name for p in paths.store_files()]
    assert [f["schema_version"] for f in manifest["files"]] == [
        version_of(p) for p in paths.store_files()]

    done = geofence("--config", str(config), "restore", str(backup_dir))   # onto live data
    assert done.returncode == 2 and "is not an empty directory: restore into an empty" in done.stderr

    def restore_into_fresh(name: str):
        (tmp_path / name).mkdir()
        return geofence("--config", str(write_config(tmp_path / name)), "restore",
                        str(backup_dir))

    original = (backup_dir / "registry.sqlite").read_bytes()
    garbage_pages(backup_dir / "registry.sqlite", first=3, count=1)
    done = restore_into_fresh("tampered")
    assert done.returncode == 2
    assert done.stderr == (f"geofence: error: {backup_dir / 'registry.sqlite'} differs from the "
                           "manifest (size or SHA-256): the backup is damaged\n")
    assert not (tmp_path / "tampered" / "data").exists()     # nothing restored

    (backup_dir / "registry.sqlite").write_bytes(original)
    (backup_dir / "manifest.json").unlink()
    done = restore_into_fresh("unfinished")
    assert done.returncode == 2
    assert done.stderr == (f"geofence: error: {backup_dir} has no manifest.json: not a "
                           "finished geofence backup\n")

    (backup_dir / "manifest.json").write_text(json.dumps(manifest))
    done = restore_into_fresh("good")
    assert done.returncode == 0, done.stderr
    restored = EnginePaths(tmp_path / "good" / "data")
    assert [p.name for p in restored.store_files()] == [p.name for p in paths.store_files()]
    check = geofence("--config", str(tmp_path / "good" / "geofence.toml"), "store", "check")
    assert check.returncode == 0, check.stdout


class PlantedFrames:
    """The planted subjects' frames: step k puts each at home or far away (PLAN)."""

    def __init__(self, planted: list[dict]):
        layer = Layer.from_geojson(zaozhuang_geojson())
        self.points = {}
        for s in planted:
            code = s["home"][0]
            if code not in self.points:
                p = shapely.union_all(
                    layer.geometries[layer.features_under(code)]).representative_point()
                self.points[code] = (p.x, p.y)
        self.planted = planted
        self.devices = np.array([int(s["devices"][0]) for s in planted])
        self.t0 = int(time.time() * 1000) - 12 * STEP_MS

    def __call__(self, step: int) -> bytes:
        points = [FAR if PLAN[step] == "o" else self.points[s["home"][0]] for s in self.planted]
        lon, lat = np.array(points).T
        n = len(self.devices)
        return encode_cols("planted", step, self.devices,
                           np.full(n, self.t0 + step * STEP_MS), lon, lat, np.full(n, 20.0))


class SimulatedCarrier:
    """`geofence simulate`'s carriers on a thread: a realistic feed while the test works."""

    def __init__(self, endpoint: str):
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str) -> None:
        try:
            simulate(endpoint, SIM_SUBJECTS, 1000, seed=SEED, duration_s=60,
                     out=lambda line: None)
        except Exception as e:   # handed to the test
            self.error = e

    def join(self) -> None:
        self.thread.join(120)


def last_seq(paths: EnginePaths) -> int:
    if not paths.fixes_db.exists():
        return 0
    with StoreReader(paths.fixes_db) as store:
        return store.last_seq()


def batches(paths: EnginePaths, up_to_seq: int) -> list[tuple[int, int, int]]:
    """(seq, fixes, sum of fix times) of every stored batch up to `up_to_seq`."""
    found = []
    with StoreReader(paths.fixes_db) as store:
        for seq, fixes in store.read_batches(0, 1_000_000):
            if seq <= up_to_seq:
                found.append((seq, len(fixes.t_ms), int(np.sum(fixes.t_ms))))
    return found


def caught_up(paths: EnginePaths) -> int:
    """The last seq evaluated and whose alarms the dispatcher has imported (0 before)."""
    with EvaluationReader(paths.worker_db(0, 1)) as evaluation:
        rows = evaluation.alarms_after(0, 1_000_000)
        store = AlarmStore(paths.alarms_db, read_only=True)
        try:
            imported = not rows or store.position(evaluation.file_id()) >= rows[-1].rowid
        finally:
            store.close()
        return evaluation.checkpoint() if imported else 0


def raised(paths: EnginePaths) -> dict[str, str]:
    if not paths.alarms_db.exists():
        return {}
    store = AlarmStore(paths.alarms_db, read_only=True)
    try:
        return store.raised_ids()
    finally:
        store.close()


def version_of(path) -> int:
    """The schema version a store file says it has."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return schema_version(db)
    finally:
        db.close()
