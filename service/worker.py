"""An evaluation worker: reads stored batches, runs the verdict core, records results.

Worker k of N evaluates the fixes of subjects with ``subject % N == k``, so one subject's
fixes always meet the same worker, in store order. It warms every kernel before it
takes traffic, resumes after its checkpoint on start (nothing acknowledged is skipped,
nothing recorded twice), and reports each checkpoint to the ingest process, which turns
the reports into metrics and flow control.
"""

import logging
import time

import msgpack
import numpy as np
import zmq

import geofence
from alerts.registry import RegistryStore
from ingest.store import StoreReader
from service.config import Settings
from service.evaluation_store import EvaluationStore
from service.layers import load_layers
from service.paths import EnginePaths

log = logging.getLogger("geofence.worker")

READ_BATCHES = 64
IDLE_POLL_MS = 200
REGISTRY_POLL_S = 1.0


class SubjectAreas:
    """Each subject's allowed-area id (home codes; permits join with the rules engine)."""

    def __init__(self, engine: geofence.VerdictEngine, registry_store: RegistryStore):
        self.engine = engine
        self.registry_store = registry_store
        self.version = -1
        self.area_of = np.zeros(0, np.int32)
        self._next_poll = 0.0

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + REGISTRY_POLL_S
        if self.registry_store.version() == self.version:
            return
        registry = self.registry_store.load()
        size = max((s.index for s in registry.subjects.values()), default=-1) + 1
        area_of = np.zeros(size, np.int32)
        for s in registry.subjects.values():
            area_of[s.index] = self.engine.area_id(s.home)
        self.area_of, self.version = area_of, registry.version

    def of(self, subjects: np.ndarray) -> np.ndarray:
        if len(subjects) and subjects.max() >= len(self.area_of):
            self.refresh(force=True)
        return self.area_of[subjects]


def run_worker(settings: Settings, index: int, count: int, should_stop) -> None:
    paths = EnginePaths.create(settings.storage.path)
    geofence.warm_up()
    jurisdictions, zones = load_layers(settings)
    engine = geofence.VerdictEngine(jurisdictions, zones, settings.rules.exit_margin_m)
    areas = SubjectAreas(engine, RegistryStore(paths.registry_db))
    areas.refresh(force=True)
    results = EvaluationStore(paths.worker_db(index, count), settings.storage.sync)
    ctx = zmq.Context.instance()
    report = ctx.socket(zmq.PUSH)
    report.setsockopt(zmq.LINGER, 1000)
    report.setsockopt(zmq.SNDHWM, 10_000)
    report.connect(paths.done_endpoint)
    wake = ctx.socket(zmq.SUB)
    wake.setsockopt(zmq.LINGER, 0)
    wake.setsockopt(zmq.CONFLATE, 1)
    wake.setsockopt(zmq.SUBSCRIBE, b"")
    wake.connect(paths.notify_endpoint)
    reader = _open_reader(paths, should_stop)
    done = results.checkpoint()
    report.send(msgpack.packb({"worker": index, "seq": done}))
    log.info("worker %d/%d ready, resuming after seq %d", index, count, done)
    while not should_stop():
        if reader is None:
            reader = _open_reader(paths, should_stop)
            continue
        batches = reader.read_batches(done, READ_BATCHES)
        if not batches:
            if wake.poll(IDLE_POLL_MS):
                wake.recv()
            areas.refresh()
            continue
        rows = []
        totals = np.zeros(3, np.int64)
        kernel_s = 0.0
        for seq, cols in batches:
            mine = cols.take(cols.subject % count == index)
            counts = np.zeros(3, np.int64)
            if len(mine):
                started = time.perf_counter()
                verdicts = engine.verdicts(mine.lon, mine.lat, mine.acc_m.astype(np.float64),
                                           areas.of(mine.subject))
                kernel_s += time.perf_counter() - started
                counts = np.bincount(verdicts.verdict, minlength=3)
            rows.append((seq, len(mine), *map(int, counts), int(time.time() * 1000)))
            totals += counts
        results.commit(rows)
        done = rows[-1][0]
        report.send(msgpack.packb({"worker": index, "seq": done,
                                   "verdicts": totals.tolist(), "kernel_s": kernel_s}))
    report.close()
    wake.close()


def _open_reader(paths: EnginePaths, should_stop) -> StoreReader | None:
    """The fixes store, once the ingest process has created it."""
    while not should_stop():
        if paths.fixes_db.exists():
            try:
                return StoreReader(paths.fixes_db)
            except Exception:  # created but not yet set up: try again shortly
                pass
        time.sleep(0.1)
    return None
