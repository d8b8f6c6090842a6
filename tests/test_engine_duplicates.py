"""SPEC §4 against the running engine: a fix with the device and t of an accepted fix is
refused `duplicate`, however many fixes of its device came in between, and after the
ingest restarted (its filter is refilled from the store by device index, and a device
keeps its index when the registry changes); nothing is stored twice, nothing new refused."""

import time

import numpy as np
import pytest

from ingest.protocol import encode_cols
from ingest.store import StoreReader
from tests.engine_harness import (Carrier, Engine, import_registry, population_document,
                                  write_config)

SUBJECTS = 20
FIRST = 13900000000          # the phones of the test population's subjects 0 and 3
DEVICE = 13900000000 + 3
REPLACEMENT = 13911111111
MINUTE = 60_000


@pytest.fixture
def engine_dir(tmp_path):
    config = write_config(tmp_path)
    import_registry(config, population_document(SUBJECTS))
    return config


def send(carrier: Carrier, batch: int, times, device: int = DEVICE) -> dict:
    times = np.asarray(times, np.int64)
    n = len(times)
    frame = encode_cols("cmcc", batch, np.full(n, device), times, np.full(n, 117.3),
                        np.full(n, 34.8), np.full(n, 30.0))
    ack = carrier.request(frame, timeout_ms=30_000)
    assert ack is not None and ack["batch"] == batch
    return ack


def stored_fixes(engine: Engine) -> int:
    with StoreReader(engine.paths.fixes_db) as store:
        return store.stats()["fixes"]


def test_a_resend_after_100_fixes_of_its_device_and_a_restart_is_refused(engine_dir):
    t = int(time.time() * 1000) - 3 * 3600_000 + MINUTE * np.arange(103)
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    try:
        assert send(carrier, 1, t[:1], device=FIRST)["status"] == "ok"
        assert send(carrier, 2, t[:1])["status"] == "ok"
        assert send(carrier, 3, t[1:101])["accepted"] == 100
        ack = send(carrier, 4, [t[0], t[101], t[101]])   # the old one, a new one twice
        assert (ack["status"], ack["accepted"]) == ("partial", 1)
        assert ack["rejected"] == [[0, "duplicate"], [2, "duplicate"]]
        assert stored_fixes(engine) == 103
        assert engine.metrics()[
            'geofence_fixes_rejected_total{carrier="cmcc",reason="duplicate"}'] == 2
    finally:
        carrier.close()
        engine.stop()
    # the first subject changes phones: the new one must not inherit the old one's fixes
    document = population_document(SUBJECTS)
    document["subjects"][0]["devices"] = [str(REPLACEMENT)]
    import_registry(engine_dir, document)
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    try:
        assert send(carrier, 5, t[:1], device=REPLACEMENT)["status"] == "ok"
        ack = send(carrier, 6, [t[0], t[50], t[101], t[102]])
        assert (ack["status"], ack["accepted"]) == ("partial", 1)
        assert ack["rejected"] == [[0, "duplicate"], [1, "duplicate"], [2, "duplicate"]]
        assert stored_fixes(engine) == 105
        assert any("duplicate filter: 103 stored fixes read back" in line
                   for line in engine.lines)
    finally:
        carrier.close()
        engine.stop()


def test_fixes_older_than_the_store_keeps_are_refused_time(tmp_path):
    """keep_fixes_days shorter than max_fix_age_s: resends of older fixes could not be
    recognised after a restart, so such fixes are refused `time`, and the log says so."""
    config = write_config(tmp_path, storage={"keep_fixes_days": 1}, max_fix_age_s=7 * 86_400)
    import_registry(config, population_document(SUBJECTS))
    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        now = int(time.time() * 1000)
        ack = send(carrier, 1, [now - 2 * 86_400_000, now - 3_600_000])
        assert (ack["status"], ack["rejected"]) == ("partial", [[0, "time"]])
        assert any("fixes older than 1.0 days are refused `time`" in line
                   for line in engine.lines)
    finally:
        carrier.close()
        engine.stop()
