"""Gatherings in a running engine with two workers: a pair split across the partitions
(one person's index even, the other's odd) raises one alarm for each, from worker 0.

Real `geofence serve`, fixes over the carrier protocol, alarms read from the workers'
files. Short thresholds (`gathering_after_s` = 60) keep it quick; event times are the
wall clock, so no fix is too old for the ingest.
"""

import time

import numpy as np

from ingest.protocol import encode_cols
from tests.engine_harness import Carrier, Engine, import_registry, population_document, \
    write_config
from tests.test_engine_alarms import all_alarms

DEADLINE_S = 120


def test_a_pair_across_two_workers_raises_one_gathering_each(tmp_path):
    doc = population_document(8, seed=3)
    for s in doc["subjects"]:
        s["risk"] = "normal"                  # only the case links anybody here
    first, second = doc["subjects"][0], doc["subjects"][1]   # indices 0 and 1
    first["cases"] = second["cases"] = ["(2025)鲁0402刑初12号"]
    config = write_config(tmp_path, rules={"gathering_after_s": 60, "gathering_max_dt_s": 60})
    import_registry(config, doc)
    engine = Engine(config, workers=2)
    carrier = Carrier(engine.endpoint)
    lon, lat = 117.55, 34.86
    try:
        start = int(time.time() * 1000) - 100_000
        for k in range(11):   # 100 s together, a fix of each every 10 s
            t = start + k * 10_000
            ack = carrier.request(encode_cols(
                "cmcc", k + 1, [first["devices"][0], second["devices"][0]], [t, t + 2_000],
                [lon, lon + 0.0005], [lat, lat], np.array([15.0, 25.0])))
            assert ack is not None and ack["accepted"] == 2, ack
        deadline = time.monotonic() + DEADLINE_S
        while len(found := [a for a in all_alarms(engine) if a["type"] == "gathering"]) < 2:
            assert time.monotonic() < deadline, "no gathering alarms"
            time.sleep(0.1)
        time.sleep(0.5)   # anything more would show now
        found = [a for a in all_alarms(engine) if a["type"] == "gathering"]
    finally:
        carrier.close()
        engine.stop()
    assert sorted((a["subject"], a["details"]["other"]) for a in found) == sorted(
        [(first["id"], second["id"]), (second["id"], first["id"])])
    by_subject = {a["subject"]: a for a in found}
    assert by_subject[first["id"]]["office"] == first["office"]
    assert by_subject[second["id"]]["office"] == second["office"]
    assert {a["details"]["case"] for a in found} == {"(2025)鲁0402刑初12号"}
    assert {a["severity"] for a in found} == {"high"}
    assert len({a["details"]["since"] for a in found}) == 1
