"""feed_outage in a replay (`[rules] clock = "feed"`): one alarm per outage of a carrier.

Two real workers (partitions 0 and 1 of 2) read a real fixes store filled as `sim.replay`
fills it: three carriers' batches in arrival order, a minute of feed time at a time; the
alarms they commit go into a real alarm store as the dispatcher puts them there. Found
by reproducing a replay's 41 repeats of one feed_outage: a carrier whose batches arrive
more than `feed_outage_silence_s` of feed time behind the others' looks down to the feed
clock, and each of its later batches used to end the outage (any fix newer than the one
at its recognition), so it was recognised again 15 minutes later with a new id, folded
into the open alarm as one more repeat, again and again.
"""

import time

import numpy as np
import pytest
import zmq

from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from alerts.registry import RegistryStore
from engine.config import Rules, Settings, Storage
from engine.layers import code_checkers, load_layers
from engine.paths import EnginePaths
from ingest.fixes import FixColumns
from ingest.store import BatchRecord, Store
from service.worker import Worker

MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
T0 = int(time.time() * 1000) - 3 * 24 * HOUR_MS   # a replayed day: older than the wall clock
CARRIERS = ("cmcc", "cucc", "ctcc")
PER_CARRIER = 24
HOME = (117.56, 34.86)   # inside 370402, the subjects' home
CITY, OFFICE = "3704", "370402001"


@pytest.fixture
def replay(tmp_path):
    """The data directory, two workers with the feed clock, and a way to feed them."""
    settings = Settings(storage=Storage(path=str(tmp_path / "data")),
                        rules=Rules(clock="feed"))
    paths = EnginePaths.create(settings.storage.path)
    registry = RegistryStore(paths.registry_db)
    registry.import_document({
        "offices": [{"code": CITY, "name": "枣庄市司法局"},
                    {"code": "370402", "name": "市中区司法局", "parent": CITY},
                    {"code": OFFICE, "name": "中心街街道司法所", "parent": "370402"}],
        "subjects": [{"id": f"S{k:03d}", "devices": [f"139{k:08d}"], "office": OFFICE,
                      "home": ["370402"]} for k in range(len(CARRIERS) * PER_CARRIER)]},
        *code_checkers(*load_layers(settings)))
    registry.close()
    ctx = zmq.Context()
    sinks = [ctx.socket(zmq.PULL) for _ in range(2)]   # the ingest's and dispatcher's ends
    sinks[0].bind(paths.done_endpoint)
    sinks[1].bind(paths.alarms_endpoint)
    feeder = Replay(settings, paths, ctx)
    yield feeder
    feeder.close()
    for sock in sinks:
        sock.close(0)
    ctx.destroy(0)


class Replay:
    def __init__(self, settings, paths, ctx):
        self.paths = paths
        self.store = Store(paths.fixes_db)
        self.workers = [Worker(settings, k, 2) for k in range(2)]
        for worker in self.workers:
            worker.open_store(lambda: False)
            worker.connect(ctx)
        self.batch = 0
        self.alarms = AlarmStore(paths.alarms_db)

    def close(self):
        for worker in self.workers:
            worker.close()
        self.store.close()
        self.alarms.close()

    def send(self, carrier: str, t_ms: int) -> None:
        """One batch of `carrier`: a fix of each of its subjects at `t_ms`."""
        c = CARRIERS.index(carrier)
        subjects = np.arange(c, len(CARRIERS) * PER_CARRIER, len(CARRIERS), dtype=np.int32)
        n = len(subjects)
        fixes = FixColumns(device=subjects.copy(), subject=subjects,
                           t_ms=np.full(n, t_ms, np.int64), lon=np.full(n, HOME[0]),
                           lat=np.full(n, HOME[1]), acc_m=np.full(n, 20.0, np.float32),
                           src=np.zeros(n, np.int8))
        self.batch += 1
        self.store.commit([BatchRecord(carrier, self.batch, int(time.time() * 1000), fixes,
                                       "ok")])

    def evaluate(self) -> None:
        """Each worker reads what is stored and runs its clock rules (as about once a
        second), and the dispatcher stores what they raised."""
        for worker in self.workers:
            worker._next_clock = 0.0
            worker.step()
        self._dispatch()

    def minutes(self, start_min: int, end_min: int, lag_min: dict[str, int] | None = None,
                silent: tuple[str, ...] = ()) -> None:
        """Replay feed minutes [start, end): each carrier sends its minute `lag` behind."""
        lag_min = lag_min or {}
        for m in range(start_min, end_min):
            for carrier in CARRIERS:
                behind = m - lag_min.get(carrier, 0)
                if carrier not in silent and behind >= 0:
                    self.send(carrier, T0 + behind * MIN_MS)
            self.evaluate()

    def _dispatch(self) -> None:
        for worker in self.workers:
            raised = [Alarm.from_json(a.json_text)
                      for a in worker.results.alarms_after(0, 10_000)]
            incoming = [Incoming(a, ((CITY,),)) for a in raised if a.type == "feed_outage"]
            self.alarms.add(incoming, now_ms=int(time.time() * 1000))

    def outages(self) -> list[dict]:
        """The feed_outage alarms as the desk shows them (repeats folded in)."""
        return [a.to_document() for a in self.alarms.query(type="feed_outage",
                                                           offices={CITY}, limit=100)]

    def raised(self) -> set[str]:
        """Every feed_outage id any worker raised."""
        return {a.id for w in self.workers for a in
                (Alarm.from_json(r.json_text) for r in w.results.alarms_after(0, 10_000))
                if a.type == "feed_outage"}


def test_a_carrier_lagging_behind_the_feed_clock_is_one_outage_not_a_repeat_every_15_min(
        replay):
    replay.minutes(0, 60)
    assert replay.outages() == []
    replay.minutes(60, 8 * 60, lag_min={"cucc": 25})   # cucc's batches arrive 25 min late
    (outage,) = replay.outages()
    assert outage["details"]["carrier"] == "cucc"
    assert outage["details"].get("repeats", 0) <= 1, "one per partition at most, folded"
    raised = replay.raised()
    assert len(raised) <= 2
    replay.minutes(8 * 60, 10 * 60)                    # caught up: the outage is over
    assert replay.raised() == raised
    assert replay.workers[0].clock_rules.silence.down == {}


def test_a_silent_carrier_is_one_alarm_with_one_id_and_a_later_outage_is_a_new_one(replay):
    replay.minutes(0, 60)
    replay.minutes(60, 100, silent=("cucc",))          # 40 min without a cucc fix
    replay.minutes(100, 200)                           # back, then 100 min of feed
    (first,) = replay.outages()
    assert len(replay.raised()) == 1, "both partitions raise the same id"
    assert "repeats" not in first["details"]
    replay.minutes(200, 230, silent=("cucc",))         # down again: a second outage
    replay.minutes(230, 240)
    ids = replay.raised()
    assert len(ids) == 2 and first["id"] in ids
