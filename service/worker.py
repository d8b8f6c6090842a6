"""An evaluation worker: reads stored batches, runs the verdict core and the rules,
records results and alarms.

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
SNAPSHOT_EVERY_S = 2.0


class SubjectAreas:
    """Per subject index: allowed-area id (home codes), exclusion set, key flag, id."""

    def __init__(self, engine: geofence.VerdictEngine, registry_store: RegistryStore):
        self.engine = engine
        self.registry_store = registry_store
        self.version = -1
        self.registry = None
        self.area_of = np.zeros(0, np.int32)
        self.exclusions_of = np.zeros(0, np.int32)
        self.key = np.zeros(0, np.bool_)
        self.ids: list[str] = []
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
        exclusions_of = np.zeros(size, np.int32)
        key = np.zeros(size, np.bool_)
        ids = [""] * size
        for s in registry.subjects.values():
            area_of[s.index] = self.engine.area_id(s.home)
            exclusions_of[s.index] = self.engine.exclusion_set_id(s.exclusions)
            key[s.index] = s.risk == "key"
            ids[s.index] = s.id
        self.area_of, self.exclusions_of, self.key, self.ids = area_of, exclusions_of, key, ids
        self.registry, self.version = registry, registry.version

    def of(self, subjects: np.ndarray) -> np.ndarray:
        if len(subjects) and subjects.max() >= len(self.area_of):
            self.refresh(force=True)
        return self.area_of[subjects]


class Evaluation:
    """Verdicts, then rules, for one partition's share of a batch."""

    def __init__(self, engine: geofence.VerdictEngine, areas: SubjectAreas, rules_settings,
                 snapshot: bytes | None):
        from alerts.rules import RuleState

        self.engine = engine
        self.areas = areas
        self.rules = RuleState(max(len(areas.area_of), 1), rules_settings)
        if snapshot is not None:
            self.rules.restore(snapshot)
        layer = engine.jurisdictions
        self._codes = [str(c) for c in layer.codes]
        self._names = [str(n) for n in layer.names]

    def run(self, seq: int, mine):
        """(verdict counts, alarms of this batch, kernel seconds)."""
        from geofence import OUT
        from alerts.alarms import alarms_from_events

        started = time.perf_counter()
        area = self.areas.of(mine.subject)
        lon, lat, acc = mine.lon, mine.lat, mine.acc_m.astype(np.float64)
        verdicts = self.engine.verdicts(lon, lat, acc, area)
        sets = self.areas.exclusions_of[mine.subject]
        if sets.any():
            worst, zone = self.engine.exclusion_verdicts(lon, lat, acc, sets).worst()
        else:
            worst, zone = np.full(len(mine), OUT, np.int8), np.full(len(mine), -1, np.int32)
        if self.rules.n_subjects < len(self.areas.area_of):
            self.rules.grow(len(self.areas.area_of))
        events = self.rules.apply(mine.subject, mine.t_ms, verdicts.verdict, worst, zone,
                                  self.areas.key)
        kernel_s = time.perf_counter() - started
        alarms = []
        if len(events):
            where = verdicts.where
            codes = [self._codes[w] if w >= 0 else None for w in where[events.fix]]
            names = [self._names[w] if w >= 0 else None for w in where[events.fix]]
            sub = mine.take(events.fix)
            remapped = _Reindexed(events, np.arange(len(events.fix)))
            alarms = [(seq, a) for a in alarms_from_events(
                remapped, sub, self.areas.ids, self.areas.registry, codes, names,
                int(time.time() * 1000))]
        return np.bincount(verdicts.verdict, minlength=3), alarms, kernel_s


class _Reindexed:
    """Events whose `fix` points into a sub-batch of the triggering fixes only."""

    def __init__(self, events, fix):
        self.type, self.subject, self.t_ms = events.type, events.subject, events.t_ms
        self.linked_t_ms, self.zone, self.fix = events.linked_t_ms, events.zone, fix

    def __len__(self) -> int:
        return len(self.fix)


def run_worker(settings: Settings, index: int, count: int, should_stop) -> None:
    paths = EnginePaths.create(settings.storage.path)
    geofence.warm_up()
    jurisdictions, zones = load_layers(settings)
    engine = geofence.VerdictEngine(jurisdictions, zones, settings.rules.exit_margin_m)
    areas = SubjectAreas(engine, RegistryStore(paths.registry_db))
    areas.refresh(force=True)
    results = EvaluationStore(paths.worker_db(index, count), settings.storage.sync)
    snapshot_seq, snapshot = results.rule_snapshot()
    evaluation = Evaluation(engine, areas, settings.rules, snapshot)
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
    # Rules state is saved every SNAPSHOT_EVERY_S: batches after the snapshot are evaluated
    # again (their results and alarms are already stored and are not inserted twice).
    position = min(snapshot_seq, done)
    next_snapshot = 0.0
    log.info("worker %d/%d ready, resuming after seq %d (rules from seq %d)",
             index, count, done, position)
    while not should_stop():
        if reader is None:
            reader = _open_reader(paths, should_stop)
            continue
        batches = reader.read_batches(position, READ_BATCHES)
        if not batches:
            if wake.poll(IDLE_POLL_MS):
                wake.recv()
            areas.refresh()
            continue
        rows, alarms = [], []
        totals = np.zeros(3, np.int64)
        kernel_s = 0.0
        for seq, cols in batches:
            mine = cols.take(cols.subject % count == index)
            counts = np.zeros(3, np.int64)
            if len(mine):
                counts, raised, seconds = evaluation.run(seq, mine)
                alarms += raised
                kernel_s += seconds
            rows.append((seq, len(mine), *map(int, counts), int(time.time() * 1000)))
            totals += counts
        now = time.monotonic()
        snapshot = None
        if now >= next_snapshot:
            snapshot, next_snapshot = evaluation.rules.snapshot(), now + SNAPSHOT_EVERY_S
        results.commit(rows, alarms, snapshot)
        position = rows[-1][0]
        if position > done:
            done = position
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
