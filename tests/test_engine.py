"""The running engine end to end: real processes, ZeroMQ on loopback, SQLite files.

The promise under test (SPEC §4): a fix counted in `accepted` is stored before the ack,
and evaluated exactly once even if any engine process is killed with kill -9.
"""

import json
import time

import numpy as np
import pytest

from ingest.protocol import encode_cols, encode_rows
from service.cli import main as cli
from tests.engine_harness import (Carrier, Engine, population_document, process_alive,
                                  write_config)
from tests.heavy import heavy_test

SUBJECTS = 200
BATCH_FIXES = 500


@pytest.fixture
def engine_dir(tmp_path):
    config = write_config(tmp_path)
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(population_document(SUBJECTS), ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    return config


def batch_frame(batch: int, rng, now_ms: int, rows: bool = False) -> bytes:
    devices = 13900000000 + rng.integers(0, SUBJECTS, BATCH_FIXES)
    t = now_ms - 3_600_000 + batch * BATCH_FIXES + np.arange(BATCH_FIXES)
    lon = rng.uniform(116.9, 117.7, BATCH_FIXES)
    lat = rng.uniform(34.5, 35.2, BATCH_FIXES)
    acc = rng.uniform(5, 2000, BATCH_FIXES)
    if rows:
        return encode_rows("cmcc", batch, [str(d) for d in devices], t, lon, lat, acc)
    return encode_cols("cmcc", batch, devices, t, lon, lat, acc)


def push(carrier: Carrier, frames: dict[int, bytes], acks: dict[int, dict],
         kill=None, kill_at: int = -1, deadline_s: float = 120) -> None:
    """Send every batch until it is acknowledged (resending after timeouts, Lazy Pirate)."""
    stop = time.monotonic() + deadline_s
    for batch, frame in frames.items():
        if batch == kill_at and kill is not None:
            kill()
        while batch not in acks:
            assert time.monotonic() < stop, "engine stopped answering"
            ack = carrier.request(frame, timeout_ms=2000)
            if ack is not None and ack["status"] != "busy":
                assert ack["batch"] == batch
                acks[batch] = ack


def wait_evaluated(engine: Engine, fixes: int, timeout_s: float = 120) -> int:
    """The stored fixes every worker has evaluated, once at least `fixes` (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine.evaluated_fixes() >= fixes:
            time.sleep(0.5)  # anything stored twice would show up now
            break
        time.sleep(0.2)
    return engine.evaluated_fixes()


def evaluations_counted(engine: Engine, fixes: int, timeout_s: float = 30) -> float:
    """`geofence_fixes_evaluated_total` (the workers' reports: a fix evaluated twice counts
    twice), once it reached `fixes` or the timeout ran out, and a moment after."""
    deadline = time.monotonic() + timeout_s
    while engine.metrics().get("geofence_fixes_evaluated_total", 0) < fixes:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    return engine.metrics().get("geofence_fixes_evaluated_total", 0)


def accepted(acks: dict[int, dict]) -> int:
    return sum(a["accepted"] for a in acks.values())


def test_batches_are_acknowledged_stored_and_evaluated(engine_dir):
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    try:
        rng = np.random.default_rng(5)
        now = int(time.time() * 1000)
        frames = {b: batch_frame(b, rng, now, rows=b % 2 == 1) for b in range(10)}
        acks: dict[int, dict] = {}
        push(carrier, frames, acks)
        assert all(a["status"] == "ok" for a in acks.values())
        again = carrier.request(frames[3])
        assert again["status"] == "duplicate" and again["accepted"] == acks[3]["accepted"]
        assert wait_evaluated(engine, accepted(acks)) == accepted(acks) == 10 * BATCH_FIXES
        assert evaluations_counted(engine, accepted(acks)) == accepted(acks)  # each fix once
    finally:
        carrier.close()
        engine.stop()
    assert "geofence: stopped" in engine.lines


@pytest.mark.parametrize("victim", ["ingest", "worker-0"])
def test_kill9_of_an_engine_process_loses_nothing_and_evaluates_once(engine_dir, victim):
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    try:
        rng = np.random.default_rng(11)
        now = int(time.time() * 1000)
        frames = {b: batch_frame(b, rng, now) for b in range(40)}
        acks: dict[int, dict] = {}
        push(carrier, frames, acks, kill=lambda: engine.kill9(victim), kill_at=15)
        assert wait_evaluated(engine, accepted(acks)) == accepted(acks) == 40 * BATCH_FIXES
        assert any(f"{victim} exited" in line and "restarting" in line for line in engine.lines)
        if victim.startswith("worker"):   # the restarted worker says so in its first report
            deadline = time.monotonic() + 30
            while (engine.metrics().get("geofence_worker_restarts_total") != 1
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            assert engine.metrics().get("geofence_worker_restarts_total") == 1
    finally:
        carrier.close()
        engine.stop()


@heavy_test
def test_kill9_of_the_whole_engine_then_restart_evaluates_everything_once(engine_dir):
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    acks: dict[int, dict] = {}
    rng = np.random.default_rng(13)
    now = int(time.time() * 1000)
    frames = {b: batch_frame(b, rng, now) for b in range(30)}
    try:
        push(carrier, dict(list(frames.items())[:20]), acks)
        engine.kill9("ingest")
        engine.stop(sig=9)  # the supervisor too: children notice and stop by themselves
    finally:
        carrier.close()
    time.sleep(1.0)
    engine = Engine(engine_dir)
    carrier = Carrier(engine.endpoint)
    try:
        push(carrier, frames, acks)  # resends of 0..19 answer duplicate; 20..29 are new
        assert wait_evaluated(engine, accepted(acks)) == accepted(acks) == 30 * BATCH_FIXES
    finally:
        carrier.close()
        engine.stop()


def test_busy_when_evaluation_falls_behind_and_nothing_is_lost(tmp_path):
    config = write_config(tmp_path, max_backlog_fixes=1000)
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(population_document(SUBJECTS), ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        rng = np.random.default_rng(17)
        now = int(time.time() * 1000)
        frames = {b: batch_frame(b, rng, now) for b in range(30)}
        for frame in frames.values():  # a burst: all in flight at once
            carrier.sock.send(frame)
        statuses = []
        for _ in frames:
            assert carrier.sock.poll(10_000)
            statuses.append(carrier.sock.recv())
        from ingest.protocol import decode_ack
        answers = [decode_ack(a) for a in statuses]
        assert any(a["status"] == "busy" for a in answers)
        acks = {a["batch"]: a for a in answers if a["status"] == "ok"}
        push(carrier, frames, acks)  # busy ones are resent until taken
        assert wait_evaluated(engine, accepted(acks)) == accepted(acks) == 30 * BATCH_FIXES
    finally:
        carrier.close()
        engine.stop()


def test_changing_the_worker_count_never_evaluates_a_batch_twice(engine_dir):
    engine = Engine(engine_dir, workers=1)
    carrier = Carrier(engine.endpoint)
    rng = np.random.default_rng(19)
    now = int(time.time() * 1000)
    frames = {b: batch_frame(b, rng, now) for b in range(20)}
    acks: dict[int, dict] = {}
    try:
        push(carrier, dict(list(frames.items())[:10]), acks)
        wait_evaluated(engine, accepted(acks))
    finally:
        carrier.close()
        engine.stop()
    engine = Engine(engine_dir, workers=2)
    carrier = Carrier(engine.endpoint)
    try:
        # the new partitions start after batches 0-9, everything stored so far
        assert engine.evaluated_fixes() == 10 * BATCH_FIXES
        push(carrier, frames, acks)
        assert wait_evaluated(engine, 20 * BATCH_FIXES) == 20 * BATCH_FIXES
        # batches 0-9 were not evaluated again: this engine evaluated 10-19 only
        assert evaluations_counted(engine, 10 * BATCH_FIXES) == 10 * BATCH_FIXES
    finally:
        carrier.close()
        engine.stop()


def test_sigterm_stops_every_process_cleanly_and_loses_nothing_acknowledged(engine_dir):
    engine = Engine(engine_dir, workers=2)
    engine.wait_for("geofence: ready")   # after every worker warmed its kernels
    pids = {name: engine.pid(name) for name in ("ingest", "worker-0", "worker-1", "dispatcher")}
    carrier = Carrier(engine.endpoint)
    rng = np.random.default_rng(23)
    now = int(time.time() * 1000)
    frames = {b: batch_frame(b, rng, now) for b in range(20)}
    acks: dict[int, dict] = {}
    try:
        push(carrier, frames, acks)     # and stop at once, evaluation still under way
    finally:
        carrier.close()
        engine.stop()                   # SIGTERM to the supervisor
    assert engine.proc.returncode == 0 and engine.lines[-1] == "geofence: stopped"
    for pid in pids.values():
        assert not process_alive(pid)
    engine = Engine(engine_dir, workers=2)
    try:
        assert wait_evaluated(engine, accepted(acks)) == accepted(acks) == 20 * BATCH_FIXES
    finally:
        engine.stop()

