"""Supervision levels in the running engine (SPEC §11): a strict (严管) subject's single
`out` fix raises zone_exit where a normal one's does not, and a strict subject is lost
after 30 minutes of silence (`[rules.strict]` built-in defaults). Beside them, a phone
its carrier reports off (SPEC §14, a status row through the wire) raises phone_off after
`phone_off_after_s`, and no signal_lost.

Real processes, sockets and files: `geofence serve` with the feed clock (`[rules] clock =
"feed"`), fixes sent through the wire protocol by a carrier, the registry imported with
`geofence registry import`, alarms read from the worker's evaluation file.
"""

import sqlite3
import time
from contextlib import closing

import numpy as np
import shapely

from alerts.alarms import alarm_id
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from tests.engine_harness import Carrier, Engine, import_registry, population_document, write_config
from tests.test_engine_alarms import all_alarms, wait_for_alarm

MIN_MS = 60_000
FAR = (115.5, 33.5)   # 100+ km from Zaozhuang


def test_strict_subject_exits_on_one_out_fix_and_is_lost_after_30_minutes_of_feed_time(
        tmp_path):
    config = write_config(tmp_path, rules={"clock": "feed", "phone_off_after_s": 1200})
    doc = population_document(20)
    strict, normal, off = [s for s in doc["subjects"] if s["risk"] == "normal"][:3]
    strict["level"] = "strict"
    import_registry(config, doc)
    layer = Layer.from_geojson(zaozhuang_geojson())
    homes = {s["id"]: shapely.union_all(layer.geometries[layer.features_under(s["home"][0])])
             .representative_point() for s in (strict, normal)}
    t0 = int(time.time() * 1000) - 3 * 60 * MIN_MS    # a replayed morning: the feed's time

    def batch(k: int, rows: list[tuple[dict, int, object]]) -> bytes:
        """Batch number k: (subject, minute after t0, "HOME" or (lon, lat)) rows."""
        xy = [(homes[s["id"]].x, homes[s["id"]].y) if p == "HOME" else p for s, _, p in rows]
        return encode_cols("cmcc", k, np.array([int(s["devices"][0]) for s, _, _ in rows]),
                           np.array([t0 + m * MIN_MS for _, m, _ in rows]),
                           np.array([x for x, _ in xy]), np.array([y for _, y in xy]),
                           np.full(len(rows), 20.0))

    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        assert carrier.request(batch(0, [(strict, 0, "HOME"), (normal, 0, "HOME")]))[
            "status"] == "ok"
        reported_off = encode_cols("cmcc", 100, [int(off["devices"][0])], [t0], [np.nan],
                                   [np.nan], src=["off"])   # 关机: a status, no position
        assert carrier.request(reported_off)["status"] == "ok"
        wait_for_a_clock_check(engine)   # both watched from here (about t0), see clock_rules
        assert carrier.request(batch(1, [(strict, 1, FAR), (normal, 1, FAR)]))[
            "status"] == "ok"            # one `out` fix each
        wait_for_alarm(engine, "zone_exit")
        for k, minute in ((2, 10), (3, 32)):   # the feed's time moves on: 31 min after
            assert carrier.request(batch(k, [(normal, minute, "HOME")]))["status"] == "ok"
        lost = wait_for_alarm(engine, "signal_lost")
    finally:
        carrier.close()
        engine.stop()
    alarms = all_alarms(engine)
    assert [(a["type"], a["subject"]) for a in alarms] == [
        ("zone_exit", strict["id"]), ("phone_off", off["id"]), ("signal_lost", strict["id"])
    ], alarms
    phone_off = alarms[1]
    assert (phone_off["severity"], phone_off["fix"]) == ("high", None)
    # 20 min after the report, or after the worker began watching if that came later (the
    # report and the first clock check race, by a few feed seconds)
    assert t0 + 20 * MIN_MS <= phone_off["t"] <= t0 + 21 * MIN_MS
    assert phone_off["details"]["handset"] == "off" and phone_off["details"]["since"] == t0
    exit_ = alarms[0]
    assert exit_["id"] == alarm_id(strict["id"], "zone_exit", t0 + MIN_MS)   # its one out fix
    assert exit_["severity"] == "high" and exit_["t"] == t0 + MIN_MS
    assert lost["t"] == t0 + 31 * MIN_MS, "silent from its newest fix, lost 30 min later"
    assert lost["details"]["silent_since"] == t0 + MIN_MS


def wait_for_a_clock_check(engine, timeout_s: float = 60) -> None:
    """Until worker 0 has run its clock rules once: its file's rules snapshot (written
    every 2 s) records how far they have checked, NULL before their first check."""
    deadline = time.monotonic() + timeout_s
    uri = f"file:{engine.paths.worker_db(0, 1)}?mode=ro"
    while time.monotonic() < deadline:
        try:
            with closing(sqlite3.connect(uri, uri=True)) as db:
                row = db.execute("SELECT checked_until_ms FROM rule_state").fetchone()
        except sqlite3.OperationalError:   # not created yet
            row = None
        if row is not None and row[0] is not None:
            return
        time.sleep(0.1)
    raise AssertionError("the worker's clock rules never ran")
