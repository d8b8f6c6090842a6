"""An evaluation worker: stored batches in, verdicts, rules and alarms committed.

Worker k of N evaluates the fixes of subjects with ``subject % N == k``, so one subject's
fixes always meet the same worker, in store order. One round of its loop, each a method
of `Worker`:

    read          up to READ_BATCHES stored batches after its position (`ingest.store`)
    evaluate      this partition's share of each: verdicts, then the fix-driven rules
                  (`alerts.evaluation`); handset status rows (src >= STATE0, no
                  position) are split out by mask there, get no verdict and are not
                  counted among the verdicts reported, but they do count as the
                  carrier's newest row (feed_outage, the feed clock)
    gather        worker 0 only: the whole batch's fixes of linked people through the
                  gathering rule (`alerts.gathering.GatheringStage` says why one worker)
    check_clock   about once a second, fixes or not: signal_lost, feed_outage,
                  permit_overstay (`alerts.clock_rules`)
    commit        alarms, checkpoint and (every few seconds) the rules state, in
                  one transaction of its own file (`service.evaluation_store`)
    announce      nudge the dispatcher when alarms were stored, report progress to the
                  ingest process (`engine.messages`)

It warms every kernel before it takes traffic and resumes after its checkpoint on start
(nothing acknowledged is skipped, nothing recorded twice). Rules state is saved every
SNAPSHOT_EVERY_S (less often for large registries); batches after the snapshot are
evaluated again after a crash, and their alarms, already stored, are not inserted twice.
Registry changes reach it within a second, without a restart.

Storage faults of its own file (moved away or deleted, disk full, read-only, I/O error;
`engine.health`): the round that could not be committed is kept and committed again about
once a second, nothing new is read meanwhile (so nothing is committed twice or skipped);
the fault is logged once and shown on the health board until the commit succeeds.
"""

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

import geofence
from alerts.alarms import Alarm
from alerts.clock_rules import Carriers, ClockRules, RulesClock
from alerts.evaluation import Evaluation
from alerts.gathering import GatheringStage
from alerts.registry import RegistryStore
from alerts.subject_book import SubjectBook
from engine.config import Settings
from engine.database import is_damage
from engine.health import FileIdentity, HealthBoard, HealthReporter, fault_of, is_storage_error
from engine.layers import load_layers
from engine.messages import ALARMS_STORED, WorkerReport
from engine.paths import EnginePaths
from ingest.store import StoredBatch, StoreError, StoreReader
from service.evaluation_store import EvaluationStore

log = logging.getLogger("geofence.worker")

READ_BATCHES = 64
IDLE_POLL_MS = 200
SNAPSHOT_EVERY_S = 2.0
SNAPSHOT_BYTES_PER_S = 4 * 1024 * 1024   # beyond ~180,000 subjects, snapshots space out so
                                         # that saving state costs at most ~4 MB/s of writes
RESUME_WITHIN_MS = 10 * 60 * 1000   # a restart this soon after the last clock check resumes
                                    # silence counting; after longer, it starts afresh


@dataclass
class Round:
    """What one pass of the loop produced, until it is committed and announced."""

    last_seq: int | None = None     # the last batch evaluated (None: none this round)
    alarms: list[Alarm] = field(default_factory=list)
    verdicts: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    kernel_s: float = 0.0
    late: int = 0


class Worker:
    """Evaluation worker `index` of `count`; see the module docstring for its steps."""

    def __init__(self, settings: Settings, index: int, count: int, restarts: int = 0,
                 health: HealthReporter | None = None):
        self.settings = settings
        self.index, self.count, self.restarts = index, count, restarts
        self.paths = EnginePaths.create(settings.storage.path)
        jurisdictions, zones = load_layers(settings)
        self.engine = geofence.VerdictEngine(jurisdictions, zones, settings.rules.exit_margin_m)
        self.book = SubjectBook(self.engine, RegistryStore(self.paths.registry_db))
        self.book.refresh(force=True)
        self.results = EvaluationStore(self.paths.worker_db(index, count),
                                       settings.storage.sync)
        self.identity = FileIdentity(self.results.path)
        health = health or HealthBoard.private(f"worker-{index}").reporter(f"worker-{index}")
        self.store_fault = health.watch("evaluation")
        self.read_fault = health.watch("fixes")
        self._unsaved: Round | None = None   # evaluated, not yet committed (store at fault)
        snapshot_seq, snapshot, self.checked_until = self.results.rule_snapshot()
        self.evaluation = Evaluation(self.engine, self.book, settings.rules, snapshot)
        self.clock_rules = ClockRules(self.engine, self.book, settings.rules, index, count)
        self.gathering = GatheringStage(self.book, settings.rules) if index == 0 else None
        self.carriers = Carriers(self.results.carriers())
        self.clock = RulesClock(settings.rules.clock)
        for _, _, t in self.carriers.rows():
            self.clock.observe(t)
        self.done = self.results.checkpoint()
        self.position = min(snapshot_seq, self.done)   # replay from the rules snapshot
        self.check_every_s = float(settings.rules.check_every_s)
        self.reader: StoreReader | None = None
        self._next_clock = 0.0
        self._next_snapshot = 0.0
        self._first_check = True
        self._report = self._nudge = self._wake = None

    # -- start and stop --------------------------------------------------------------------

    def connect(self, ctx: zmq.Context) -> None:
        """Sockets to the ingest process (reports, new-fix signals) and the dispatcher."""
        self._report = ctx.socket(zmq.PUSH)
        self._report.setsockopt(zmq.LINGER, 1000)
        self._report.setsockopt(zmq.SNDHWM, 10_000)
        self._report.connect(self.paths.done_endpoint)
        self._nudge = ctx.socket(zmq.PUSH)   # wakes the dispatcher; it also polls
        self._nudge.setsockopt(zmq.LINGER, 0)
        self._nudge.setsockopt(zmq.SNDHWM, 16)
        self._nudge.connect(self.paths.alarms_endpoint)
        self._wake = ctx.socket(zmq.SUB)
        self._wake.setsockopt(zmq.LINGER, 0)
        self._wake.setsockopt(zmq.CONFLATE, 1)
        self._wake.setsockopt(zmq.SUBSCRIBE, b"")
        self._wake.connect(self.paths.notify_endpoint)
        self._report.send(WorkerReport(self.index, self.done, restarts=self.restarts).encode())

    def close(self) -> None:
        for sock in (self._report, self._nudge, self._wake):
            if sock is not None:
                sock.close()
        if self.reader is not None:
            self.reader.close()
        self.results.close()

    def open_store(self, should_stop: Callable[[], bool]) -> None:
        """Wait for the fixes store (the ingest process creates it)."""
        while self.reader is None and not should_stop():
            if self.paths.fixes_db.exists():
                try:
                    self.reader = StoreReader(self.paths.fixes_db)
                    return
                except Exception as e:  # created but not yet set up: try again shortly
                    if is_damage(e):  # but no wait heals a damaged file
                        raise
            time.sleep(0.1)

    def run(self, should_stop: Callable[[], bool]) -> None:
        self.open_store(should_stop)
        while not should_stop():
            if not self.step() and self._wake.poll(min(IDLE_POLL_MS,
                                                       int(self.check_every_s * 1000))):
                self._wake.recv()

    # -- one round -------------------------------------------------------------------------

    def step(self) -> bool:
        """One round of the loop; returns whether any stored batch was read."""
        if self._unsaved is not None:   # its file was at fault: commit that round first
            return self.store_fault.due() and self.save(self._unsaved)
        self.book.refresh()
        batches = self.read()
        round_ = self.evaluate(batches)
        round_.alarms += self.check_clock(time.monotonic())
        return self.save(round_) and bool(batches)

    def save(self, round_: Round) -> bool:
        """Commit and announce a round; at a storage fault keep it for the next try."""
        found = self.identity.check()
        if found is None:
            try:
                self.commit(round_, time.monotonic())
            except sqlite3.Error as e:
                if not is_storage_error(e):
                    raise
                found = fault_of(e, self.results.path)
        if found is not None:
            self.store_fault.failed(found)
            self._unsaved = round_
            return False
        self.store_fault.ok()
        self._unsaved = None
        self.announce(round_)
        return True

    def read(self) -> list[StoredBatch]:
        if not self.read_fault.due():
            return []
        try:
            batches = self.reader.read_records(self.position, READ_BATCHES)
        except StoreError as e:
            if is_damage(e):   # no retry heals it: stops the engine (engine.store_check)
                raise
            self.read_fault.failed(fault_of(e.__cause__ or e, self.reader.path))
            return []
        self.read_fault.ok()
        return batches

    def evaluate(self, batches: list[StoredBatch]) -> Round:
        """Verdicts and fix-driven rules for this partition's share of each batch."""
        round_ = Round()
        for batch in batches:
            fixes = batch.fixes
            carrier = self.carriers.id_of(batch.carrier)
            if len(fixes):
                newest = int(fixes.t_ms.max())
                self.carriers.saw(carrier, newest)
                self.clock.observe(newest)
            if len(fixes) and fixes.subject.max() >= self.book.size:
                self.book.refresh(force=True)    # a subject newer than the book
            mine = fixes.take((fixes.subject % self.count == self.index)
                              & self.book.supervised(fixes.subject, fixes.t_ms))
            counts = np.zeros(3, np.int64)
            if len(mine):
                result = self.evaluation.run(mine, carrier, batch.received_ms)
                counts = result.verdicts
                round_.alarms += result.alarms
                round_.kernel_s += result.kernel_s
                round_.late += result.late
            if self.gathering is not None:
                round_.alarms += self.gathering.run(fixes)
            round_.last_seq = batch.seq
            round_.verdicts += counts
        return round_

    def check_clock(self, now: float) -> list[Alarm]:
        """The clock-driven rules, every `check_every_s`; nothing before a feed clock has
        seen its first fix. After a short stop, silence keeps counting from each subject's
        newest fix (a restart postpones nobody's signal_lost)."""
        if now < self._next_clock:
            return []
        self._next_clock = now + self.check_every_s
        now_ms = self.clock.now_ms()
        if now_ms is None:
            return []
        if self.checked_until is None:    # the first check ever: permits from now on
            self.checked_until = now_ms
        elif self._first_check and now_ms - self.checked_until <= RESUME_WITHIN_MS:
            self.clock_rules.silence.resume(self.checked_until)
        self._first_check = False
        self.evaluation.grow()
        alarms = self.clock_rules.check(self.evaluation.rules, now_ms, self.checked_until,
                                        self.carriers)
        self.checked_until = max(self.checked_until, now_ms)
        return alarms

    def commit(self, round_: Round, now: float) -> None:
        """Alarms, checkpoint and a due snapshot: one transaction."""
        evaluated = round_.last_seq is not None
        snapshot = None
        if now >= self._next_snapshot or (round_.alarms and not evaluated):
            snapshot = self.evaluation.rules.snapshot()
            self._next_snapshot = now + snapshot_interval_s(len(snapshot))
        self.results.commit(round_.last_seq, round_.alarms, snapshot, self.carriers.rows(),
                            self.checked_until,
                            position=round_.last_seq if evaluated else self.position)
        if evaluated:
            self.position = round_.last_seq

    def announce(self, round_: Round) -> None:
        """Nudge the dispatcher for new alarms; report a new checkpoint to the ingest."""
        if round_.alarms:
            try:
                self._nudge.send(ALARMS_STORED, zmq.NOBLOCK)
            except zmq.Again:
                pass
        if round_.last_seq is not None and self.position > self.done:
            self.done = self.position
            self._report.send(WorkerReport(
                self.index, self.done, round_.late, tuple(int(v) for v in round_.verdicts),
                round_.kernel_s, self.restarts).encode())


def warm_up() -> None:
    """Compile or load every kernel a worker runs, before it takes traffic."""
    from alerts.curfews import warm_up as warm_curfews
    from alerts.gathering import warm_up as warm_gathering
    from alerts.rules import warm_up as warm_rules
    from alerts.schedule import warm_up as warm_schedule

    geofence.warm_up()
    warm_rules()
    warm_schedule()
    warm_curfews()
    warm_gathering()


def run_worker(settings: Settings, index: int, count: int, should_stop,
               on_ready: Callable[[], None] = lambda: None, restarts: int = 0,
               health: HealthReporter | None = None) -> None:
    warm_up()
    worker = Worker(settings, index, count, restarts, health)
    worker.open_store(should_stop)
    worker.connect(zmq.Context.instance())
    log.info("worker %d/%d ready, resuming after seq %d (rules from seq %d)",
             index, count, worker.done, worker.position)
    on_ready()
    try:
        worker.run(should_stop)
    finally:
        worker.close()


def snapshot_interval_s(size_bytes: int) -> float:
    """Every 2 s, or less often when the state is large (1,000,000 subjects: 46 MB, 11 s)."""
    return max(SNAPSHOT_EVERY_S, size_bytes / SNAPSHOT_BYTES_PER_S)
