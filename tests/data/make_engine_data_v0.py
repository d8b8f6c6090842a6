"""Make `engine-data-v0/`: a data directory written by the engine before its files had
schema versions (commit adef123), for `tests/test_upgrade.py`.

Run it with that commit's code first on the path (its harness and CLI), as README.md says.
It imports 20 people, adds the desk user `old-desk` (office 3704, password below), runs a
real `geofence serve` with the desk, sends two people out of their county (two
`zone_exit` alarms) and one of them back (`zone_return`), acknowledges the first exit as
that user, waits until the rules snapshot has caught up with the checkpoint, stops the
engine and compacts every file (WAL checkpoint, VACUUM).
"""

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from geofence import Layer
from geofence.synthetic import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, population_document, write_config

USER, PASSWORD, OFFICE = "old-desk", "old-desk-password", "3704"
FAR = (115.5, 33.5)   # 100+ km from Zaozhuang


def main(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp())
    config = write_config(tmp, desk=True)
    doc = population_document(20)
    (tmp / "registry.json").write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(tmp / "registry.json")]) == 0
    subprocess.run([sys.executable, "-m", "service.cli", "--config", str(config), "user", "add",
                    USER, "--office", OFFICE], input=PASSWORD + "\n", text=True, check=True)
    layer = Layer.from_geojson(zaozhuang_geojson())
    normal = [s for s in doc["subjects"] if s["risk"] == "normal"]
    first, second = normal[0], normal[1]
    home = shapely.union_all(layer.geometries[layer.features_under(first["home"][0])])
    inside = home.representative_point()
    t0 = int(time.time() * 1000) - 600_000
    batch = iter(range(1000))

    def fix(subject, k, lon, lat):
        return encode_cols("cmcc", next(batch), np.array([int(subject["devices"][0])]),
                           np.array([t0 + 60_000 * k]), np.array([lon]), np.array([lat]),
                           np.array([20.0]))

    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        for k in range(3):
            assert carrier.request(fix(first, k, *FAR))["status"] == "ok"
            assert carrier.request(fix(second, k, *FAR))["status"] == "ok"
        for k in range(3, 6):
            assert carrier.request(fix(first, k, inside.x, inside.y))["status"] == "ok"
        store = engine.alarm_store()
        deadline = time.monotonic() + 60
        while len(store.query(limit=10)) < 3:
            assert time.monotonic() < deadline, "alarms not stored"
            time.sleep(0.1)
        exit_id = next(a["id"] for a in store.query(type="zone_exit", limit=10)
                       if a["subject"] == first["id"])
        store.acknowledge(exit_id, USER, OFFICE, "called, on the way back", int(time.time() * 1000))
        store.close()
        time.sleep(5)   # the rules snapshot catches up with the checkpoint (every 2 s)
    finally:
        carrier.close()
        engine.stop()
    data = tmp / "data"
    for path in data.glob("*.sqlite"):
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("VACUUM")
        db.close()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in data.glob("*.sqlite"):
        shutil.copy(path, out / path.name)
    (out / "expected.json").write_text(json.dumps({
        "user": USER, "password": PASSWORD, "office": OFFICE, "acknowledged": exit_id,
        "subjects": [first["id"], second["id"]]}, indent=1) + "\n")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
