"""The carrier endpoint (SPEC §4): a ROUTER that validates, stores, then acknowledges.

One loop in one process, the store's only writer::

    carriers ──ROUTER──▶ drain a group of frames ─▶ decode + validate each (compiled)
                         ─▶ ONE store commit for the group ─▶ send the group's acks
                         ─▶ PUB the new last seq to the evaluation workers

Locate requests (SPEC §14) go out on the same ROUTER to carriers' DEALER connections;
a group's rows are matched to open requests after its commit, before its acks
(`ingest/locate_router.py`).

An ack is sent only after its fixes are committed, so an acknowledged fix survives a
kill -9 of this process; workers evaluate from the store, not from this process's memory.
Nothing is queued in memory beyond one group: when the workers fall behind by more than
`max_backlog_fixes`, new batches are answered `busy` (nothing taken) and the carrier
resends later, so memory stays flat at any offered load.

A storage fault (`engine.health`: the store moved away or deleted, the disk full, failing
or read-only) is answered the same way: while it lasts every new batch is answered `busy`
(nothing taken), duplicates of stored batches still get their first answer when the
store can read it; the fault is logged once, shown on the health board (/healthz 503,
metrics, the `engine_fault` alarm), and a probe write about once a second notices when
the store works again.
"""

import logging
import time
from typing import NamedTuple
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq

from engine.database import is_damage
from engine.health import HealthBoard, HealthReporter, fault_of
from engine.messages import MessageError, WorkerReport, encode_new_fixes
from geofence.datum import to_wgs84
from ingest import protocol as p
from ingest.auth import carrier_of
from ingest.decode import decode_batch
from ingest.dedup import AcceptedFixes, exact_window_ms, remember_stored
from ingest.devices import DeviceBook, mark_unknown
from ingest.fixes import FixColumns
from ingest.locate_router import LocateRouter
from ingest.metrics import IngestMetrics
from ingest.store import BatchRecord, Store, StoreError, StoreFaultError

log = logging.getLogger("geofence.ingest")

GROUP_MAX_FRAMES = 64            # frames drained into one store commit
GROUP_MAX_BYTES = 64 * 1024 * 1024
OVERLOADED_ACCEPT_FRAMES = 8     # while frames queue behind full groups, take this many a group
ROUTER_MAX_FRAME_BYTES = 2 * 16 * 1024 * 1024  # bigger frames drop the peer (2x the protocol's
                                               # limit, so a frame a bit over gets `too_large`)
BACKLOG_REFRESH_S = 0.05
DEVICES_REFRESH_S = 1.0
ACK_PURGE_EVERY_S = 600.0
PURGE_BATCHES_PER_PASS = 5_000
ROUTER_RCVHWM = 32               # frames queued per carrier before ZeroMQ pushes back


@dataclass(frozen=True)
class IngestOptions:
    bind: str = "tcp://127.0.0.1:5555"
    max_fix_age_ms: int = p.DEFAULT_MAX_FIX_AGE_MS
    max_backlog_fixes: int = 2_000_000
    default_acc_m: tuple[float, float, float, float] = (30.0, 80.0, 1500.0, 1500.0)  # gps, wifi, cell, none
    workers: int = 1
    keep_fixes_ms: int = 7 * 24 * 3600 * 1000   # evaluated fixes older than this are purged
    locate_db: str | None = None        # locate.sqlite (SPEC §14); None: no locate requests
    locate_timeout_ms: int = 120_000    # [carriers] locate_timeout_s
    connection_idle_s: float = 300.0    # [carriers] connection_idle_s


class DevicesUpdate(NamedTuple):
    """What `devices_source(since_version)` returns: the device table at `version`, whole
    (`full`: every device with its subject index) or as the change since `since_version`
    (devices added or moved, with their subjects; `removed` devices no longer anyone's)."""

    version: int
    full: bool
    devices: list[str]
    subjects: list[int]
    removed: list[str] = []


class IngestServer:
    """The ROUTER loop. Construct, `bind()` (reads the store), then `run(should_stop)`,
    all in this process."""

    def __init__(self, ctx: zmq.Context, store: Store, devices_source: Callable[[int], DevicesUpdate],
                 options: IngestOptions, metrics: IngestMetrics, notify_endpoint: str,
                 done_endpoint: str, authenticator=None, server_keys=None,
                 health: HealthReporter | None = None):
        self.ctx = ctx
        self.store = store
        self.store_fault = (health or HealthBoard.private("ingest").reporter("ingest")).watch(
            "fixes")
        self.options = options
        self.metrics = metrics
        self._devices_source = devices_source
        self._devices_version = -1
        self.devices = DeviceBook()
        # SPEC §4's `duplicate`, exact over the acceptance window (ingest/dedup.py)
        self.max_fix_age_ms = exact_window_ms(options.max_fix_age_ms, options.keep_fixes_ms)
        self.accepted_fixes = AcceptedFixes(self.max_fix_age_ms)
        self._curve = authenticator is not None
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        self.router.setsockopt(zmq.SNDHWM, ROUTER_RCVHWM)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished carrier's ack is dropped
        self.router.setsockopt(zmq.MAXMSGSIZE, ROUTER_MAX_FRAME_BYTES)
        if self._curve:
            from ingest.auth import secure_router
            secure_router(self.router, authenticator, server_keys)
        self.notify = ctx.socket(zmq.PUB)
        self.notify.setsockopt(zmq.LINGER, 0)
        self.notify.setsockopt(zmq.SNDHWM, 16)
        self.notify.bind(notify_endpoint)
        self.done = ctx.socket(zmq.PULL)
        self.done.setsockopt(zmq.LINGER, 0)
        self.done.setsockopt(zmq.RCVHWM, 10_000)
        self.done.bind(done_endpoint)
        self._checkpoints: dict[int, int] = {}
        self._restarts: dict[int, int] = {}     # per worker, the restarts reported so far
        self._backlog = 0
        self._overloaded = False  # the last group was full and more frames were waiting
        self._group_fixes = 0     # fixes accepted so far in the group being served
        self._next_backlog_s = 0.0
        self._next_devices_s = 0.0
        self._recorded_devices = 0   # device ids stored so far (ids of indices below this)
        self._next_purge_s = 0.0
        self.endpoint = ""
        # locate requests to carriers' DEALER connections (ingest/locate_router.py)
        self.locator = None if options.locate_db is None else LocateRouter(
            options.locate_db, timeout_ms=options.locate_timeout_ms,
            idle_s=options.connection_idle_s, keep_ms=options.keep_fixes_ms, curve=self._curve,
            metrics=metrics, send=self._send_unasked, index_of=self._device_index)

    def bind(self) -> str:
        """Load the device table and refill the duplicate filter, then bind the ROUTER (so
        `ready` means answering); returns the endpoint bound (port 0 picks a free one)."""
        self._load_device_ids()
        try:
            self._refresh_devices(force=True)
        except StoreFaultError as e:   # started at fault (disk full...): ids recorded later
            self._store_failed(e)
        self._refill_accepted_fixes()
        if self.locator is not None:
            self.locator.open()
        self.router.bind(self.options.bind)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def close(self) -> None:
        if self.locator is not None:
            self.locator.close()
        for s in (self.router, self.notify, self.done):
            s.close(linger=0)

    # -- the loop -----------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.done, zmq.POLLIN)
        while not should_stop():
            events = dict(poller.poll(100))
            if self.done in events:
                self._take_done_reports()
            now = time.monotonic()
            self._housekeeping(now)
            if self.router in events:
                self._check_store()
                self._serve_group(self._drain())

    def _drain(self) -> list[list[zmq.Frame]]:
        group, size = [], 0
        while len(group) < GROUP_MAX_FRAMES and size < GROUP_MAX_BYTES:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._overloaded = False
                return group
            group.append(frames)
            size += len(frames[-1].buffer)
        self._overloaded = bool(self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        return group

    def _serve_group(self, group: list[list[zmq.Frame]]) -> None:
        arrived = time.perf_counter()
        now_ms = int(time.time() * 1000)
        replies: list[tuple[list, bytes | None]] = []
        pending: list[tuple[int, BatchRecord]] = []
        answering: list[str | None] = []     # per pending record, its batch's `request`
        # Behind: take a few frames and answer the rest `busy` at once, so carriers back
        # off instead of queueing (their acks would come seconds late, then time out).
        take = OVERLOADED_ACCEPT_FRAMES if self._overloaded else len(group)
        self._group_fixes = 0
        for n, frames in enumerate(group):
            envelope, body = split_envelope(frames)
            if body is None:
                outcome = self._refuse(None, p.MALFORMED)
            else:
                outcome = self._prepare(body, now_ms, shed=n >= take, envelope=envelope)
            if isinstance(outcome, bytes):
                replies.append((envelope, outcome))
            else:
                outcome, request = outcome
                pending.append((len(replies), outcome))
                answering.append(request)
                replies.append((envelope, None))
                self._group_fixes += outcome.accepted
        if pending:
            started = time.perf_counter()
            try:
                self._record_device_ids()
                committed = self.store.commit([r for _, r in pending])
            except StoreFaultError as e:
                self._store_failed(e)
                committed = None
            except BaseException:
                self._forget_unstored(r for _, r in pending)
                raise
            if committed is None:
                self._forget_unstored(r for _, r in pending)
            else:
                self._forget_unstored(r for (_, r), c in zip(pending, committed)
                                      if c.duplicate)
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            for slot, record in pending:   # nothing of the group is stored: nothing acked
                if committed is None:
                    replies[slot] = (replies[slot][0], self._busy(record.batch))
            for (slot, record), result in zip(pending, committed or ()):
                replies[slot] = (replies[slot][0], self._answer(record, result))
            if committed is not None:
                self.notify.send(encode_new_fixes(self.store.last_seq()))
                if self.locator is not None:
                    for (_, record), result, request in zip(pending, committed, answering):
                        if not result.duplicate:
                            self.locator.committed(record.carrier, record.fixes, request,
                                                   now_ms)
        for envelope, ack in replies:
            try:
                self.router.send_multipart([*envelope, ack], zmq.NOBLOCK)
            except zmq.ZMQError:  # the carrier is gone or not reading: it will resend
                pass
        elapsed = time.perf_counter() - arrived
        for _ in replies:
            self.metrics.ack_seconds.observe(elapsed)

    def _prepare(self, frame: zmq.Frame, now_ms: int, shed: bool = False,
                 envelope: list[bytes] = ()):
        """An immediate ack (bytes), or (the record to commit, its `request`) for a new batch.

        `shed`: answer a new batch `busy` (nothing taken) because this loop is behind.
        `envelope`: where it came from (a DEALER's may be sent locate requests)."""
        payload = frame.buffer
        if len(payload) > p.MAX_FRAME_BYTES:
            return self._refuse(None, p.TOO_LARGE)
        dec = decode_batch(payload, now_ms, self.max_fix_age_ms)
        if dec.error:
            return self._refuse(dec.batch, dec.error)
        if self._curve and carrier_of(frame) != dec.carrier:
            return self._refuse(dec.batch, p.UNAUTHORIZED)
        if self.locator is not None:
            self.locator.seen(dec.carrier, envelope, time.monotonic())
        try:
            first = self.store.lookup_ack(dec.carrier, dec.batch)
        except StoreError as e:   # cannot tell a resend from a new batch: take nothing
            self._store_failed(e)
            return self._busy(dec.batch)
        if first is not None:
            self.metrics.batches.labels("duplicate").inc()
            return p.encode_ack(dec.batch, "duplicate", first.accepted, list(first.rejected))
        if (shed or self.store_fault.active
                or self._backlog + self._group_fixes > self.options.max_backlog_fixes):
            return self._busy(dec.batch)
        return self._validate(dec, now_ms), dec.request

    def _busy(self, batch: int) -> bytes:
        self.metrics.batches.labels("busy").inc()
        return p.encode_ack(batch, "busy", 0, [])

    # -- storage faults -------------------------------------------------------------

    def _check_store(self) -> None:
        """Before a group: are the store's files still the ones it writes? (a few stats)"""
        if not self.store_fault.active:
            found = self.store.identity.check()
            if found is not None:
                self.store_fault.failed(found)

    def _store_failed(self, error: StoreError) -> None:
        """A read or write failed: at fault until a probe succeeds (a damaged file: no
        retry heals it, the error goes on and stops the engine, `engine.store_check`)."""
        if is_damage(error):
            raise error
        self.store_fault.failed(error.fault if isinstance(error, StoreFaultError)
                                else fault_of(error, self.store.path))

    def _retry_store(self) -> None:
        try:
            self.store.probe()
        except StoreError as e:
            self._store_failed(e)
        else:
            self.store_fault.ok()

    def _validate(self, dec, now_ms: int):
        reason = np.array(dec.reason, np.int8)
        device = self.devices.lookup(dec)
        mark_unknown(device, reason)
        self.accepted_fixes.mark(device, dec.t_ms, reason, now_ms)
        ok = reason == p.OK
        lon, lat = dec.lon[ok], dec.lat[ok]
        src = dec.src[ok]
        acc = dec.acc_m[ok]
        status = src >= p.STATE0      # handset status rows: stored with no position
        if status.any():
            lon, lat, acc = (np.where(status, np.nan, col) for col in (lon, lat, acc))
            counts = np.bincount(src[status] - p.STATE0, minlength=len(p.STATES))
            for state, count in zip(p.STATES, counts.tolist()):
                if count:
                    self.metrics.handset_reports.labels(state).inc(count)
        positioned = ~status
        if dec.datum != "wgs84" and positioned.any():
            if status.any():
                lon, lat = lon.copy(), lat.copy()
                lon[positioned], lat[positioned] = to_wgs84(lon[positioned], lat[positioned],
                                                            dec.datum)
            else:
                lon, lat = to_wgs84(lon, lat, dec.datum)
        missing = np.isnan(acc) & positioned
        if missing.any():
            acc = np.where(missing, np.asarray(self.options.default_acc_m)[
                np.where(positioned, src, -1)], acc)
        dev = device[ok]
        fixes = FixColumns(dev, self.devices.subject_of[dev].astype(np.int32), dec.t_ms[ok],
                           np.ascontiguousarray(lon, np.float64),
                           np.ascontiguousarray(lat, np.float64), acc.astype(np.float32), src)
        n_ok = int(ok.sum())
        status = "ok" if n_ok == dec.n else ("partial" if n_ok else "rejected")
        label = self.metrics.carrier_label(dec.carrier)
        self.metrics.fixes_received.labels(label).inc(dec.n)
        if n_ok:
            self.metrics.fixes_accepted.labels(label).inc(n_ok)
        refused = reason[~ok]
        if len(refused):
            for code, count in zip(*np.unique(refused, return_counts=True)):
                self.metrics.fixes_rejected.labels(label, p.REASONS[code]).inc(int(count))
                if code == p.NO_POSITION:
                    self.metrics.no_position.inc(int(count))
        record = BatchRecord(dec.carrier, dec.batch, now_ms, fixes, status,
                             [tuple(r) for r in p.rejections(reason)])
        return record

    def _answer(self, record: BatchRecord, result) -> bytes:
        if result.duplicate:
            first = result.first
            self.metrics.batches.labels("duplicate").inc()
            return p.encode_ack(record.batch, "duplicate", first.accepted, list(first.rejected))
        self.metrics.batches.labels(record.status).inc()
        if result.seq is not None:
            self._backlog += record.accepted
        return p.encode_ack(record.batch, record.status, record.accepted, list(record.rejected))

    def _refuse(self, batch: int | None, error: int) -> bytes:
        self.metrics.batches.labels("rejected").inc()
        self.metrics.batch_errors.labels(p.ERRORS[error]).inc()
        return p.encode_ack(batch, "rejected", 0, [], p.ERRORS[error])

    # -- bookkeeping ----------------------------------------------------------------

    def _take_done_reports(self) -> None:
        while True:
            try:
                report = WorkerReport.decode(self.done.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except MessageError as e:
                log.warning("worker report dropped: %s", e)
                continue
            self._checkpoints[report.worker] = report.seq
            for outcome, count in zip(("in", "unsure", "out"), report.verdicts):
                if count:
                    self.metrics.verdicts.labels(outcome).inc(count)
            self.metrics.evaluated.inc(sum(report.verdicts))
            if report.kernel_s is not None:
                self.metrics.kernel_seconds.observe(report.kernel_s)
            if report.late:
                self.metrics.late_fixes.inc(report.late)
            restarted = report.restarts - self._restarts.get(report.worker, 0)
            if restarted > 0:
                self.metrics.worker_restarts.inc(restarted)
                self._restarts[report.worker] = report.restarts

    def evaluated_seq(self) -> int:
        """Every worker has evaluated every batch up to this seq (0 until all reported)."""
        if len(self._checkpoints) < self.options.workers:
            return 0
        return min(self._checkpoints.values())

    def _housekeeping(self, now: float) -> None:
        if self.locator is not None:      # on its own file: goes on through a fixes fault
            self.locator.housekeeping(now)
        if self.store_fault.active:
            if self.store_fault.due():
                self._retry_store()
            return
        try:
            self._keep_store(now)
            if now >= self._next_devices_s:
                self._refresh_devices()
        except StoreError as e:
            self._store_failed(e)

    def _keep_store(self, now: float) -> None:
        if now >= self._next_backlog_s:
            self._backlog = self.store.fixes_after(self.evaluated_seq())
            self.metrics.backlog.set(self._backlog)
            self.metrics.duplicate_filter_fixes.set(len(self.accepted_fixes))
            self.metrics.duplicate_filter_bytes.set(self.accepted_fixes.nbytes)
            self._next_backlog_s = now + BACKLOG_REFRESH_S
        if now >= self._next_purge_s:
            now_ms = int(time.time() * 1000)
            self.store.purge_acks(now_ms - 2 * 24 * 3600 * 1000)
            # Fixes every worker has evaluated, older than the retention (the desk's tracks
            # read the last 24 h): a few thousand batches per pass keep the loop responsive.
            # A batch may hold fixes up to FUTURE_TOLERANCE_MS newer than its arrival: kept
            # that much longer, the duplicate filter can be refilled from it (dedup.py).
            self.store.purge_batches_before(
                now_ms - self.options.keep_fixes_ms - p.FUTURE_TOLERANCE_MS,
                self.evaluated_seq(), PURGE_BATCHES_PER_PASS)
            self._next_purge_s = now + ACK_PURGE_EVERY_S

    def _refresh_devices(self, force: bool = False) -> None:
        """Follow the registry: a change touching a few people costs a few devices, not a
        rebuild of the table (a national registry holds about a million phones)."""
        self._next_devices_s = time.monotonic() + DEVICES_REFRESH_S
        update = self._devices_source(-1 if force else self._devices_version)
        if update.version == self._devices_version and not force:
            return
        if update.full:
            known = set(update.devices)
            gone = [d for d in self._known_devices if d not in known]
            self._known_devices = known
        else:
            moved = set(update.devices)
            gone = [d for d in update.removed if d in self._known_devices and d not in moved]
            self._known_devices.difference_update(gone)
            self._known_devices.update(update.devices)
        if gone:
            self.devices.deactivate(gone)
        if update.devices:
            self.devices.add(update.devices, update.subjects)
        self._devices_version = update.version
        self._record_device_ids()
        if update.full:
            log.info("device table: %d devices (registry version %d)", len(update.devices),
                     update.version)

    def _record_device_ids(self) -> None:
        """Store the ids of devices new to the book, before any fix of theirs is committed
        (`_serve_group` calls it before each commit, so a failed try is made again)."""
        if self._recorded_devices < len(self.devices):
            self.store.add_device_ids(self._recorded_devices,
                                      self.devices.ids(self._recorded_devices, len(self.devices)))
            self._recorded_devices = len(self.devices)

    def _load_device_ids(self) -> None:
        """Every device keeps the index its fixes were stored under (inactive until the
        registry names it again): the duplicate filter's refill reads fixes by index."""
        ids = self.store.device_ids()
        if ids:
            self.devices.add(ids, np.full(len(ids), -1, np.int32))
            self.devices.deactivate(ids)
        self._known_devices = set(ids)
        self._recorded_devices = len(ids)

    def _refill_accepted_fixes(self) -> None:
        """Refill the duplicate filter from the store's batches within the window (it
        lives in memory)."""
        if self.max_fix_age_ms < self.options.max_fix_age_ms:
            log.warning("fixes older than %.1f days are refused `time`: [ingest] max_fix_age_s "
                        "is longer than [storage] keep_fixes_days (or 3 years), and resends of "
                        "older fixes could not be recognised", self.max_fix_age_ms / 86_400_000)
        started = time.perf_counter()
        read = remember_stored(self.accepted_fixes, self.store, int(time.time() * 1000),
                               carriers=None if self.locator is None
                               else self.locator.carriers.learn)
        log.info("duplicate filter: %d stored fixes read back in %.1f s", read,
                 time.perf_counter() - started)

    def _send_unasked(self, identity: bytes, frame: bytes) -> str:
        """One frame the peer did not ask for (a locate request) to one DEALER identity:
        "sent", "gone" (no such connection any more: ROUTER_MANDATORY says so instead of
        dropping it) or "full" (its queue is full)."""
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self.router.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            return "gone" if e.errno == zmq.EHOSTUNREACH else "full"
        finally:
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        return "sent"

    def _device_index(self, devices: list[str]) -> np.ndarray:
        """Device indices of locate requests' devices (-1: not in the book)."""
        try:
            return self.devices.index_of(devices)
        except ValueError:      # an id that is not UTF-8: the others one by one
            found = np.full(len(devices), -1, np.int32)
            for k, device in enumerate(devices):
                try:
                    found[k] = self.devices.index_of([device])[0]
                except ValueError:
                    pass
            return found

    def _forget_unstored(self, records) -> None:
        """Take a batch's fixes out of the duplicate filter when it was not stored."""
        for record in records:
            self.accepted_fixes.forget(record.fixes.device, record.fixes.t_ms)


def split_envelope(frames: list[zmq.Frame]) -> tuple[list[bytes], zmq.Frame | None]:
    """(the envelope to answer on, the one body frame or None if there is not exactly one).

    The ROUTER hands over [identity, body] from a DEALER and [identity, b"", body] from a
    REQ; anything else (a DEALER sending several frames) is answered `malformed`."""
    if len(frames) == 2:
        return [frames[0].bytes], frames[1]
    delimited = len(frames) >= 2 and len(frames[1].buffer) == 0
    if delimited and len(frames) == 3:
        return [frames[0].bytes, b""], frames[2]
    return [f.bytes for f in frames[:2 if delimited else 1]], None
