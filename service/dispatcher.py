"""The dispatcher: takes the alarms workers raised and delivers them (SPEC §6, §7).

Workers store alarms in their own SQLite files and nudge this process over an ipc socket;
it also polls, so a lost nudge only costs a few milliseconds. For each new alarm it

1. imports it into the engine's alarm store (`alerts.alarm_store`): routing to the
   supervising office and its copies, folding repeats into the open alarm of the same
   subject and type within one episode (`alerts.episodes`: an exit after its return is a
   new alarm), enqueueing webhook deliveries: one transaction, together with how
   far each worker file has been read, so an alarm is stored before it goes anywhere;
2. publishes every change on the ZeroMQ PUB socket, two frames: the topic (the office
   path from the root, ``3704/370402/370402001/``: a county subscribes to its whole
   subtree with a prefix) and the msgpack alarm. How far publishing got is kept too, so a
   restart resumes there (at most the last few changes twice: receivers de-duplicate by
   id and status). PUB is live only; a subscriber that was away catches up over HTTP.
   With `[alerts] curve_keys`, only subscribers with an allowed key connect (CURVE).

About once a second it escalates alarms nobody acknowledged in time (SPEC §6 timers) to
the parent office. It also raises a critical `engine_fault` alarm to the root office for
every storage fault on the health board (`alerts.engine_fault`, `engine.health`), its own
included: at once, or, while the alarm store cannot take it, as soon as it can.

Its own store faults (alarms.sqlite moved away or deleted, disk full, read-only, I/O) pause
everything (nothing imported, escalated or published: an alarm is stored before it goes
anywhere); it says so once, retries about once a second and goes on when the store works.
Webhooks are posted by `alerts.webhooks.WebhookSender` threads from the
durable outbox, retried with backoff until the receiver accepts.
"""

import logging
import sqlite3
import time
from pathlib import Path

import zmq

from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from alerts.engine_fault import engine_fault_alarm, occurrence
from engine.messages import encode_alarm_frames
from alerts.registry import Registry, RegistryStore
from alerts.webhooks import WebhookSender, parse_webhooks
from engine.config import Settings
from engine.database import NotReadyError
from engine.health import FileIdentity, HealthBoard, fault_of, is_storage_error
from engine.paths import EnginePaths
from service.evaluation_store import EvaluationReader

log = logging.getLogger("geofence.dispatcher")

POLL_MS = 20
READ_ALARMS = 500
ESCALATE_EVERY_S = 1.0
FAULTS_EVERY_S = 0.25    # how often the health board is read for engine_fault alarms
PUBLISHED = "published"
ZAP_DOMAIN = "geofence.alarms"


class Dispatcher:
    def __init__(self, paths: EnginePaths, ctx: zmq.Context, settings: Settings,
                 pub_socket: zmq.Socket | None = None, health: HealthBoard | None = None):
        self.paths = paths
        rules = settings.rules
        self.alarms = AlarmStore(paths.alarms_db, settings.storage.sync, {
            "critical": rules.escalate_critical_s, "high": rules.escalate_high_s,
            "medium": rules.escalate_medium_s})
        self.identity = FileIdentity(paths.alarms_db)
        self.health = health or HealthBoard.private("dispatcher")
        self.store_fault = self.health.reporter("dispatcher").watch("alarms")
        self._faults_seen: set[tuple[str, str, int]] = set()   # raised (or offered) already
        self._faults_waiting: dict = {}    # occurrence -> BoardFault, not stored yet
        self._next_faults = 0.0
        self.registry_store = RegistryStore(paths.registry_db)
        self.registry = Registry()
        self.authenticator = None
        self.pub = pub_socket or self._bind_pub(ctx, settings)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.nudges = ctx.socket(zmq.PULL)
        self.nudges.setsockopt(zmq.LINGER, 0)
        self.nudges.bind(paths.alarms_endpoint)
        self.webhooks = parse_webhooks(settings.alerts.webhooks)
        self.sender = WebhookSender(paths.alarms_db, self.webhooks)
        self._sources: dict[tuple[str, int], EvaluationReader] = {}
        self._published = self.alarms.position(PUBLISHED)
        self._next_escalation = 0.0

    def run(self, should_stop) -> None:
        self.sender.start()
        try:
            while not should_stop():
                if self.nudges.poll(POLL_MS):
                    while self.nudges.poll(0):
                        self.nudges.recv()
                if self.store_fault.due():
                    self.guarded_step()
        finally:
            self.sender.stop()

    def guarded_step(self) -> None:
        """`step`, unless the alarm store is at fault: then report it and retry later."""
        found = self.identity.check()
        if found is None:
            try:
                self.step()
            except sqlite3.Error as e:
                if not is_storage_error(e):
                    raise
                found = fault_of(e, self.paths.alarms_db)
        if found is None:
            self.store_fault.ok()
        else:
            self.store_fault.failed(found)
            self.raise_engine_faults(force=True)   # remember it while it is on the board

    def step(self) -> int:
        """Import, escalate, publish; returns how many changes were published."""
        self._refresh_registry()
        self.raise_engine_faults()
        while self.import_new() == READ_ALARMS:
            pass
        now = time.monotonic()
        if now >= self._next_escalation:
            self._next_escalation = now + ESCALATE_EVERY_S
            self.alarms.escalate_due(_wall_ms(), self._parent_path, set(self.webhooks))
        return self.publish_changes()

    def import_new(self) -> int:
        """Import alarms workers stored since the last call; returns how many were read."""
        read = 0
        # Retired files too (a change of the worker count retires them): alarms committed
        # in a worker's last moments may not have been imported yet.
        for evaluation in self.paths.evaluation_files():
            source = self._source(evaluation.path)
            if source is None:
                continue
            file_id = source.file_id()
            stored = source.alarms_after(self.alarms.position(file_id), READ_ALARMS)
            if not stored:
                continue
            incoming = [self._incoming(Alarm.from_json(a.json_text, a.received_ms))
                        for a in stored]
            self.alarms.add(incoming, _wall_ms(), set(self.webhooks),
                            positions={file_id: stored[-1].rowid})
            read = max(read, len(stored))
        return read

    def raise_engine_faults(self, force: bool = False) -> None:
        """An `engine_fault` alarm to the root office for every new fault occurrence on
        the health board; one the alarm store cannot take now waits here (with its start
        time) and is stored as soon as it can (`force`: only note them, do not store)."""
        now = time.monotonic()
        if now < self._next_faults and not force:
            return
        self._next_faults = now + FAULTS_EVERY_S
        for fault in self.health.faults():
            key = occurrence(fault)
            if key not in self._faults_seen:
                self._faults_seen.add(key)
                self._faults_waiting[key] = fault
        root = self.registry.root_office()
        if force or not self._faults_waiting or not root:
            return
        wall = _wall_ms()
        alarms = [engine_fault_alarm(f, root, wall) for f in self._faults_waiting.values()]
        self.alarms.add([self._incoming(a) for a in alarms], wall, set(self.webhooks))
        self._faults_waiting.clear()

    def publish_changes(self) -> int:
        sent = 0
        while True:
            changes = self.alarms.changes_after(self._published)
            if not changes:
                return sent
            for change in changes:
                document = change.alarm.to_document()
                for topic in change.topics:
                    self.pub.send_multipart(encode_alarm_frames(topic, document))
            self._published = changes[-1].seq
            self.alarms.set_position(PUBLISHED, self._published)
            sent += len(changes)

    def _incoming(self, alarm: Alarm) -> Incoming:
        offices = (alarm.office, *alarm.copies)
        return Incoming(alarm, tuple(tuple(self.registry.office_path(o)) for o in offices))

    def _parent_path(self, office: str) -> tuple[str, ...] | None:
        parent = self.registry.offices.get(office)
        if parent is None or not parent.parent:
            return None
        return tuple(self.registry.office_path(parent.parent))

    def _refresh_registry(self) -> None:
        if self.registry_store.version() != self.registry.version:
            self.registry = self.registry_store.load()

    def _source(self, path: Path) -> EvaluationReader | None:
        """The reader of a worker's file; None while the worker has not set it up yet."""
        try:
            key = (path.name, path.stat().st_ino)   # a retired file's successor is new
        except OSError:                             # retired between listing and stat
            return None
        if key not in self._sources:
            try:
                self._sources[key] = EvaluationReader(path)
            except NotReadyError:
                return None
        return self._sources[key]

    def _bind_pub(self, ctx: zmq.Context, settings: Settings) -> zmq.Socket:
        """The PUB socket; with `[alerts] curve_keys`, a CURVE server admitting only the
        subscribers whose public keys are in `curve_subscribers` (fail-closed ZAP)."""
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        if settings.alerts.curve_keys:
            from ingest.auth import CarrierAuthenticator, secure_router
            from ingest.keys import load_allowed_carriers, load_server_keys

            keys = load_server_keys(settings.alerts.curve_keys)
            allowed = load_allowed_carriers(settings.alerts.curve_subscribers)
            self.authenticator = CarrierAuthenticator(ctx, allowed, domain=ZAP_DOMAIN)
            self.authenticator.start()
            secure_router(pub, self.authenticator, keys)
        pub.bind(settings.alerts.publish)
        return pub

    def close(self) -> None:
        self.pub.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.nudges.close(linger=0)
        for source in self._sources.values():
            source.close()
        self.alarms.close()
        self.registry_store.close()


def _wall_ms() -> int:
    return int(time.time() * 1000)
