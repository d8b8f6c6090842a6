"""Alarms raised by the running engine: a person leaves their county, comes back and
leaves again (two exits, each its own alarm with its own time: SPEC §6 episodes).

Real processes and files: the worker runs verdicts and the compiled rules, and stores each
alarm with its batch's checkpoint, so a kill -9 between the exit and the return leaves
exactly one exit alarm and one return linked to it.
"""

import json
import time

import msgpack
import numpy as np
import shapely
import zmq

from alerts.alarms import alarm_id
from engine.database import NotReadyError
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from service.evaluation_store import EvaluationReader
from tests.engine_harness import Carrier, Engine, population_document, write_config


def test_exit_return_and_exit_again_raise_their_own_alarms_even_across_a_worker_kill(
        tmp_path):
    config = write_config(tmp_path)
    doc = population_document(20)
    subject = next(s for s in doc["subjects"] if s["risk"] == "normal")
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    layer = Layer.from_geojson(zaozhuang_geojson())
    home = shapely.union_all(layer.geometries[layer.features_under(subject["home"][0])])
    inside = home.representative_point()
    device = np.array([int(subject["devices"][0])])
    t0 = int(time.time() * 1000) - 600_000

    def fix(batch, k, lon, lat):
        return encode_cols("cmcc", batch, device, np.array([t0 + 60_000 * k]),
                           np.array([lon]), np.array([lat]), np.array([20.0]))

    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    publish = config.read_text().split('publish = "')[1].split('"')[0]
    county_topic = f"3704/{subject['home'][0]}/".encode()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, county_topic)  # the county's whole subtree
    sub.connect(publish)
    time.sleep(0.5)  # PUB is live only: be connected before the alarm is published
    try:
        far = (115.5, 33.5)  # 100+ km from Zaozhuang, GPS accuracy
        for k in range(3):
            assert carrier.request(fix(k, k, *far))["status"] == "ok"
        exit_alarm = wait_for_alarm(engine, "zone_exit")
        engine.kill9("worker-0")
        for k in range(3, 6):
            assert carrier.request(fix(k, k, inside.x, inside.y))["status"] == "ok"
        back = wait_for_alarm(engine, "zone_return")
        received = []
        while len(received) < 2 and sub.poll(10_000):
            topic, body = sub.recv_multipart()
            received.append((topic, msgpack.unpackb(body)))
        # Out again while nobody has handled the first exit: a new episode (SPEC §6 as
        # amended), so a new alarm with its own time, not a repeat of the old one.
        for k in range(6, 9):
            assert carrier.request(fix(k, k, *far))["status"] == "ok"
        store = engine.alarm_store()
        try:
            exits = wait_for_stored(store, "zone_exit", 2)
            returns = store.query(type="zone_return")
            episodes = {a.id: store.episode(a.id) for a in exits + returns}
        finally:
            store.close()
    finally:
        sub.close()
        ctx.term()
        carrier.close()
        engine.stop()
    assert [doc["type"] for _, doc in received] == ["zone_exit", "zone_return"]
    assert all(topic == f"3704/{subject['home'][0]}/{subject['office']}/".encode()
               for topic, _ in received)
    alarms = all_alarms(engine)
    assert [a["type"] for a in alarms] == ["zone_exit", "zone_return", "zone_exit"]
    assert exit_alarm["id"] == alarm_id(subject["id"], "zone_exit", t0 + 60_000)  # 2nd out fix
    assert exit_alarm["severity"] == "high" and exit_alarm["office"] == subject["office"]
    assert exit_alarm["where"] is None and exit_alarm["home"] == subject["home"]
    assert back["details"]["exit_id"] == exit_alarm["id"]
    second, first = exits
    assert first.id == exit_alarm["id"] and first.t_ms == t0 + 60_000
    assert second.id == alarm_id(subject["id"], "zone_exit", t0 + 7 * 60_000)
    assert second.t_ms == t0 + 7 * 60_000 and second.fix.t_ms == t0 + 7 * 60_000
    assert (first.status, second.status) == ("open", "open")
    assert "repeats" not in first.details and "repeats" not in second.details
    [ret] = returns
    assert episodes[first.id] == {"ended": ret.t_ms, "ended_by": ret.id}
    assert episodes[ret.id] == {"exit": first.id} and episodes[second.id] == {}


def all_alarms(engine: Engine) -> list[dict]:
    found = []
    for evaluation in engine.paths.evaluation_files():
        try:
            reader = EvaluationReader(evaluation.path)
        except NotReadyError:   # its worker is creating it
            continue
        with reader:
            found += [json.loads(a.json_text) for a in reader.alarms_after(0, 10_000)]
    return sorted(found, key=lambda a: a["t"])


def wait_for_stored(store, kind: str, n: int, timeout_s: float = 60) -> list:
    """The dispatcher's alarms of a type (newest first) once there are `n` of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = store.query(type=kind)
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} {kind} alarms in the alarm store")


def wait_for_alarm(engine: Engine, kind: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for alarm in all_alarms(engine):
            if alarm["type"] == kind:
                return alarm
        time.sleep(0.1)
    raise AssertionError(f"no {kind} alarm")
