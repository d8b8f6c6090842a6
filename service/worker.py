"""An evaluation worker: reads stored batches, runs the verdict core and the rules,
records results and alarms.

Worker k of N evaluates the fixes of subjects with ``subject % N == k``, so one subject's
fixes always meet the same worker, in store order. It warms every kernel before it
takes traffic, resumes after its checkpoint on start (nothing acknowledged is skipped,
nothing recorded twice), and reports each checkpoint to the ingest process, which turns
the reports into metrics and flow control. About once a second it also runs the
clock-driven rules (`alerts.clock_rules`), whether fixes arrive or not.

Each fix is judged against the subject's allowed area *at the fix's time* (home or the
delegation's home, plus active permits: `alerts.schedule`); registry changes are picked
up within a second, without a restart.
"""

import logging
import time
from collections.abc import Callable

import msgpack
import numpy as np
import zmq

import geofence
from alerts.alarms import Alarm, alarms_from_events, fix_document, make_alarm
from alerts.clock_rules import SilenceWatch, permit_overstays
from alerts.registry import Registry, RegistryStore, Subject
from alerts.rules import NO_TIME, RuleState, SnapshotError
from alerts.schedule import AreaSchedule
from ingest.store import StoredBatch, StoreReader
from engine.config import Settings
from service.evaluation_store import EvaluationStore
from engine.layers import load_layers
from engine.paths import EnginePaths

log = logging.getLogger("geofence.worker")

READ_BATCHES = 64
IDLE_POLL_MS = 200
REGISTRY_POLL_S = 1.0
SNAPSHOT_EVERY_S = 2.0
SNAPSHOT_BYTES_PER_S = 4 * 1024 * 1024   # beyond ~180,000 subjects, snapshots space out so
                                         # that saving state costs at most ~4 MB/s of writes
RESUME_WITHIN_MS = 10 * 60 * 1000   # a restart this soon after the last clock check resumes
                                    # silence counting; after longer, it starts afresh


class SubjectBook:
    """What the worker needs of the registry, by subject index; rebuilt on every change."""

    def __init__(self, engine: geofence.VerdictEngine, registry_store: RegistryStore):
        self.engine = engine
        self.registry_store = registry_store
        self.version = -1
        self.registry = Registry()
        self.schedule = AreaSchedule.build(self.registry, engine.area_id)
        self.exclusions_of = np.zeros(0, np.int32)
        self.key = np.zeros(0, np.bool_)
        self.registered = np.zeros(0, np.bool_)
        self.subjects: list[Subject | None] = []
        self.index_of: dict[str, int] = {}
        self._next_poll = 0.0

    @property
    def size(self) -> int:
        return len(self.subjects)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + REGISTRY_POLL_S
        if self.registry_store.version() == self.version:
            return
        registry = self.registry_store.load()
        schedule = AreaSchedule.build(registry, self.engine.area_id)
        size = schedule.n_subjects
        exclusions_of = np.zeros(size, np.int32)
        key = np.zeros(size, np.bool_)
        subjects: list[Subject | None] = [None] * size
        for s in registry.subjects.values():
            exclusions_of[s.index] = self.engine.exclusion_set_id(s.exclusions)
            key[s.index] = s.risk == "key"
            subjects[s.index] = s
        self.schedule, self.exclusions_of, self.key, self.subjects = (
            schedule, exclusions_of, key, subjects)
        self.registered = np.array([s is not None for s in subjects], np.bool_)
        self.index_of = {s.id: s.index for s in registry.subjects.values()}
        self.registry, self.version = registry, registry.version

    def areas_at(self, subject: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        if len(subject) and subject.max() >= self.size:
            self.refresh(force=True)
        return self.schedule.areas_at(subject, t_ms)

    def root_office(self) -> str:
        roots = sorted(o.code for o in self.registry.offices.values() if not o.parent)
        return roots[0] if roots else ""


class RulesClock:
    """The rules' notion of now: wall time, or (`clock = "feed"`) the newest fix time seen
    plus the wall time since it was seen, so a replay runs the clock rules in its own time."""

    def __init__(self, mode: str):
        self.mode = mode
        self.feed_t_ms = NO_TIME
        self._seen_at_ms = 0

    def observe(self, t_ms: int) -> None:
        if t_ms > self.feed_t_ms:
            self.feed_t_ms, self._seen_at_ms = t_ms, _wall_ms()

    def now_ms(self) -> int | None:
        """Now, or None while a feed clock has seen no fix yet (it has no time to tell)."""
        wall = _wall_ms()
        if self.mode == "wall":
            return wall
        if self.feed_t_ms == NO_TIME:
            return None
        return self.feed_t_ms + (wall - self._seen_at_ms)


class Evaluation:
    """Verdicts, then rules, for one partition; the clock rules for the same partition."""

    def __init__(self, engine: geofence.VerdictEngine, book: SubjectBook, settings: Settings,
                 index: int, count: int, snapshot: bytes | None):
        self.engine = engine
        self.book = book
        self.rules_settings = settings.rules
        self.index, self.count = index, count
        self.rules = RuleState(max(book.size, 1), settings.rules)
        if snapshot is not None:
            try:
                self.rules.restore(snapshot)
            except SnapshotError as e:   # another build's format, or damaged: start afresh
                log.warning("rules state not restored (%s); starting with fresh state", e)
        self.silence = SilenceWatch(settings.rules, partitions=count)
        layer = engine.jurisdictions
        self._codes = [str(c) for c in layer.codes]
        self._names = [str(n) for n in layer.names]
        self._zone_codes = [str(c) for c in engine.zones.codes] if engine.zones else None

    def run(self, batch: StoredBatch, mine, carrier: int):
        """(verdict counts, alarms, kernel seconds, late fixes) of this partition's share."""
        started = time.perf_counter()
        area = self.book.areas_at(mine.subject, mine.t_ms)
        lon, lat, acc = mine.lon, mine.lat, mine.acc_m.astype(np.float64)
        verdicts = self.engine.verdicts(lon, lat, acc, area)
        sets = self.book.exclusions_of[mine.subject]
        if sets.any():
            worst, zone = self.engine.exclusion_verdicts(lon, lat, acc, sets).worst()
        else:
            worst = np.full(len(mine), geofence.OUT, np.int8)
            zone = np.full(len(mine), -1, np.int32)
        self._grow()
        events = self.rules.apply(mine.subject, mine.t_ms, verdicts.verdict, worst, zone,
                                  self.book.key, fixes=mine, carrier=carrier)
        kernel_s = time.perf_counter() - started
        alarms = []
        if len(events):
            where = {int(i): self._where(verdicts.where[i]) for i in np.unique(events.fix)}
            alarms = alarms_from_events(events, mine, self.book.subjects,
                                        self.book.schedule.routing_at,
                                        where, _wall_ms(), batch.received_ms,
                                        self._zone_codes)
        return np.bincount(verdicts.verdict, minlength=3), alarms, kernel_s, events.n_late

    def clock_rules(self, now_ms: int, checked_until_ms: int, carriers: "Carriers") -> list[Alarm]:
        """signal_lost, feed_outage and permit_overstay as of `now_ms`."""
        self._grow()
        book, rules = self.book, self.rules
        n = rules.n_subjects
        mine = np.zeros(n, np.bool_)
        mine[:book.size] = book.registered
        mine &= np.arange(n) % self.count == self.index
        events = self.silence.check(rules, mine, now_ms, carriers.newest_by_id())
        raised_at = _wall_ms()
        alarms = []
        lost_after = int(self.rules_settings.signal_lost_after_s) * 1000
        for s, since in zip(events.signal_lost, events.since_ms):
            fix, where = self._last_fix(int(s))
            subject = book.subjects[int(s)]
            t = int(since) + lost_after
            alarms.append(make_alarm("signal_lost", subject,
                                     book.schedule.routing_at(subject.id, t), t,
                                     fix["t"] if fix else 0, fix, where, raised_at,
                                     {"silent_since": int(since),
                                      "silent_for_s": (now_ms - int(since)) // 1000}))
        for outage in events.outages:
            name = carriers.name_of(outage.carrier)
            alarms.append(make_alarm(
                "feed_outage", None, None, now_ms, outage.newest_t_ms, None, None, raised_at,
                {"carrier": name, "silent_subjects": outage.silent,
                 "subjects": outage.subjects, "last_fix_t": outage.newest_t_ms},
                office=book.root_office()))
        grace = int(self.rules_settings.permit_overstay_after_s) * 1000
        ending = book.schedule.permits_ending(checked_until_ms - grace, now_ms - grace)
        for permit, s in permit_overstays(ending, self._watched, rules, self._verdict_after):
            fix, where = self._last_fix(s)
            subject = book.subjects[s]
            t = permit.end_ms + grace
            alarms.append(make_alarm("permit_overstay", subject,
                                     book.schedule.routing_at(subject.id, t), t,
                                     permit.end_ms, fix, where, raised_at,
                                     {"permit": permit.id, "destinations": list(permit.destinations),
                                      "permit_end": permit.end_ms}))
        return alarms

    def _watched(self, subject_id: str) -> int | None:
        s = self.book.index_of.get(subject_id)
        return s if s is not None and s % self.count == self.index else None

    def _verdict_after(self, s: int, last: dict, permit) -> int:
        """The newest fix judged against where the subject may be once the grace is over."""
        at = permit.end_ms + int(self.rules_settings.permit_overstay_after_s) * 1000
        area = self.book.schedule.areas_at(np.array([s], np.int32), np.array([at], np.int64))
        v = self.engine.verdicts(np.array([last["lon"]]), np.array([last["lat"]]),
                                 np.array([float(last["acc_m"])]), area)
        return int(v.verdict[0])

    def _last_fix(self, s: int) -> tuple[dict | None, dict | None]:
        last = self.rules.last_fix([s])
        fix = fix_document(last["t_ms"][0], last["lon"][0], last["lat"][0], last["acc_m"][0],
                           last["src"][0])
        if fix is None:
            return None, None
        w = self.engine.jurisdictions.locate(np.array([fix["lon"]]), np.array([fix["lat"]]))
        return fix, self._where(w[0])

    def _where(self, feature: int) -> dict | None:
        feature = int(feature)
        return {"code": self._codes[feature], "name": self._names[feature]} if feature >= 0 else None

    def _grow(self) -> None:
        if self.rules.n_subjects < self.book.size:
            self.rules.grow(self.book.size)


class Carriers:
    """Carrier names as small ids (subjects remember the carrier of their newest fix) and
    each carrier's newest fix time (feed_outage); persisted with the worker's checkpoint."""

    def __init__(self, rows: list[tuple[str, int, int]]):
        self._ids = {name: cid for name, cid, _ in rows}
        self._names = {cid: name for name, cid, _ in rows}
        self._newest = {cid: t for _, cid, t in rows}

    def id_of(self, name: str) -> int:
        if name not in self._ids:
            cid = len(self._ids)
            self._ids[name], self._names[cid], self._newest[cid] = cid, name, NO_TIME
        return self._ids[name]

    def saw(self, cid: int, t_ms: int) -> None:
        self._newest[cid] = max(self._newest[cid], t_ms)

    def name_of(self, cid: int) -> str:
        return self._names.get(cid, "")

    def newest_by_id(self) -> dict[int, int]:
        return dict(self._newest)

    def rows(self) -> list[tuple[str, int, int]]:
        return [(name, cid, self._newest[cid]) for name, cid in self._ids.items()]


def run_worker(settings: Settings, index: int, count: int, should_stop,
               on_ready: Callable[[], None] = lambda: None) -> None:
    paths = EnginePaths.create(settings.storage.path)
    geofence.warm_up()
    from alerts.rules import warm_up as warm_rules
    from alerts.schedule import warm_up as warm_schedule
    warm_rules()
    warm_schedule()
    jurisdictions, zones = load_layers(settings)
    engine = geofence.VerdictEngine(jurisdictions, zones, settings.rules.exit_margin_m)
    book = SubjectBook(engine, RegistryStore(paths.registry_db))
    book.refresh(force=True)
    results = EvaluationStore(paths.worker_db(index, count), settings.storage.sync)
    snapshot_seq, snapshot, checked_until = results.rule_snapshot()
    evaluation = Evaluation(engine, book, settings, index, count, snapshot)
    carriers = Carriers(results.carriers())
    clock = RulesClock(settings.rules.clock)
    for _, _, t in carriers.rows():
        clock.observe(t)
    ctx = zmq.Context.instance()
    report = ctx.socket(zmq.PUSH)
    report.setsockopt(zmq.LINGER, 1000)
    report.setsockopt(zmq.SNDHWM, 10_000)
    report.connect(paths.done_endpoint)
    alarms_ready = ctx.socket(zmq.PUSH)    # wakes the dispatcher; it also polls, so best effort
    alarms_ready.setsockopt(zmq.LINGER, 0)
    alarms_ready.setsockopt(zmq.SNDHWM, 16)
    alarms_ready.connect(paths.alarms_endpoint)
    wake = ctx.socket(zmq.SUB)
    wake.setsockopt(zmq.LINGER, 0)
    wake.setsockopt(zmq.CONFLATE, 1)
    wake.setsockopt(zmq.SUBSCRIBE, b"")
    wake.connect(paths.notify_endpoint)
    reader = _open_reader(paths, should_stop)
    done = results.checkpoint()
    report.send(msgpack.packb({"worker": index, "seq": done}))
    # Rules state is saved every SNAPSHOT_EVERY_S (longer for large registries, see
    # `_snapshot_interval_s`): batches after the snapshot are evaluated
    # again (their results and alarms are already stored and are not inserted twice).
    position = min(snapshot_seq, done)
    next_snapshot = 0.0
    next_clock = 0.0
    first_check = True
    check_every = float(settings.rules.check_every_s)
    log.info("worker %d/%d ready, resuming after seq %d (rules from seq %d)",
             index, count, done, position)
    on_ready()
    while not should_stop():
        if reader is None:
            reader = _open_reader(paths, should_stop)
            continue
        book.refresh()
        batches = reader.read_records(position, READ_BATCHES)
        rows, alarms = [], []
        totals = np.zeros(3, np.int64)
        kernel_s, late = 0.0, 0
        for batch in batches:
            fixes = batch.fixes
            cid = carriers.id_of(batch.carrier)
            if len(fixes):
                newest = int(fixes.t_ms.max())
                carriers.saw(cid, newest)
                clock.observe(newest)
            mine = fixes.take(fixes.subject % count == index)
            counts = np.zeros(3, np.int64)
            if len(mine):
                counts, raised, seconds, n_late = evaluation.run(batch, mine, cid)
                alarms += raised
                kernel_s += seconds
                late += n_late
            rows.append((batch.seq, len(mine), *map(int, counts), _wall_ms()))
            totals += counts
        now = time.monotonic()
        if now >= next_clock:
            next_clock = now + check_every
            now_ms = clock.now_ms()
            if now_ms is not None:
                if checked_until is None:    # the first check ever: permits from now on
                    checked_until = now_ms
                elif first_check and now_ms - checked_until <= RESUME_WITHIN_MS:
                    evaluation.silence.resume(checked_until)
                first_check = False
                alarms += evaluation.clock_rules(now_ms, checked_until, carriers)
                checked_until = max(checked_until, now_ms)
        snapshot = None
        if now >= next_snapshot or (alarms and not rows):
            snapshot = evaluation.rules.snapshot()
            next_snapshot = now + _snapshot_interval_s(len(snapshot))
        if rows or alarms or snapshot is not None:
            results.commit(rows[-1][0] if rows else None, alarms, snapshot, carriers.rows(),
                           checked_until,
                           position=rows[-1][0] if rows else position)
        if alarms:
            try:
                alarms_ready.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass
        if rows:
            position = rows[-1][0]
            if position > done:
                done = position
                report.send(msgpack.packb({"worker": index, "seq": done, "late": late,
                                           "verdicts": totals.tolist(), "kernel_s": kernel_s}))
        if not batches:
            if wake.poll(min(IDLE_POLL_MS, int(check_every * 1000))):
                wake.recv()
    report.close()
    alarms_ready.close()
    wake.close()


def _snapshot_interval_s(size_bytes: int) -> float:
    """Every 2 s, or less often when the state is large (1,000,000 subjects: 46 MB, 11 s)."""
    return max(SNAPSHOT_EVERY_S, size_bytes / SNAPSHOT_BYTES_PER_S)


def _wall_ms() -> int:
    return int(time.time() * 1000)


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
