"""Locate requests (SPEC §14) in the ingest process: to the carrier that carries the
device, and back from its answering batch. The ingest loop calls four things:

    seen(carrier, envelope, now)          a batch with a valid carrier name arrived
    committed(carrier, fixes, request)    a batch's accepted rows are stored
    housekeeping(now)                     about every 0.1 s: new requests, retries, timeouts
    open()                                at bind: the requests still open

Where a request goes:
- a carrier's live connections are the DEALER identities that sent a batch of it within
  `[carriers] connection_idle_s` (with CURVE the name is the authenticated one, since the
  loop refuses a batch in another carrier's name). REQ peers (an envelope with the empty
  delimiter) cannot take an unasked frame and are never remembered;
- a device's carrier is the one that last delivered an accepted row of it (a numpy array
  by device index, refilled at start from the stored batches the duplicate filter reads);
- a request goes to the newest live connection of its device's carrier; ROUTER_MANDATORY
  for that send makes a vanished identity raise EHOSTUNREACH, so the next one is tried.
  With no known carrier or no live connection it waits (tried again when one appears)
  until it times out. Without CURVE and with the device's carrier unknown, it goes to the
  newest live connection of every live carrier (at most BROADCAST_CARRIERS): the carriers
  are all trusted alike then, and the one that has the phone answers. With CURVE it
  waits: only the authenticated carrier of the device may learn of it.

Matching an answer (after the group commit, vectorised over the batch): a batch whose
`request` names an open request answers it with its first accepted row of that request's
device, whatever its time (a replaying carrier answers in its own time); otherwise any
accepted row of the device with t >= requested_ms - ANSWER_SKEW_MS answers every open
request of the device. A status row answers with the handset state (no position). Once a
request is sent, only the carriers it was sent to answer it: another carrier's rows never
close it (with CURVE, a carrier cannot close, or fill in, another's request); a request
not sent yet takes a fresh row of its device from any carrier (a fresh position is what
was asked for).

locate.sqlite is written with a short busy timeout, and any fault of it (locked, missing,
disk) is logged once and retried later: fix ingestion never waits for it. Answers that
could not be written are kept (bounded) and written when the file works again.
"""

import logging
import math
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geofence.errors import GeofenceError
from ingest import protocol as p

log = logging.getLogger("geofence.ingest.locate")

ANSWER_SKEW_MS = 10_000          # a row this much older than the request still answers it
POLL_EVERY_S = 0.1               # new requests in locate.sqlite (an indexed read)
RETRY_WAITING_EVERY_S = 1.0      # requests waiting for a carrier connection (and at once
                                 # when a connection or a waiting device's carrier appears)
EXPIRE_EVERY_S = 1.0
PURGE_EVERY_S = 600.0
FAULT_RETRY_S = 2.0              # after a fault of locate.sqlite
BUSY_TIMEOUT_S = 0.05            # the desk holding the write lock longer: try again later
MAX_CONNECTIONS_PER_CARRIER = 16
MAX_CARRIERS = 256
BROADCAST_CARRIERS = 16
MAX_UNWRITTEN_ANSWERS = 10_000
NO_CARRIER = -1


class CarrierConnections:
    """Live DEALER identities per carrier, newest last; bounded in carriers and per carrier."""

    def __init__(self, idle_s: float, per_carrier: int = MAX_CONNECTIONS_PER_CARRIER,
                 max_carriers: int = MAX_CARRIERS):
        self.idle_s, self.per_carrier, self.max_carriers = idle_s, per_carrier, max_carriers
        self._by_carrier: dict[str, OrderedDict[bytes, float]] = {}

    def seen(self, carrier: str, identity: bytes, now: float) -> bool:
        """Remember a batch on `identity`; True if the connection is new (requests waiting
        for this carrier may go now)."""
        conns = self._by_carrier.get(carrier)
        if conns is None:
            if len(self._by_carrier) >= self.max_carriers:
                self.forget_idle(now)
                if len(self._by_carrier) >= self.max_carriers:
                    return False
            conns = self._by_carrier[carrier] = OrderedDict()
        new = identity not in conns
        conns[identity] = now
        conns.move_to_end(identity)
        while len(conns) > self.per_carrier:
            conns.popitem(last=False)
        return new

    def live(self, carrier: str, now: float) -> list[bytes]:
        """The carrier's connections heard from within idle_s, newest first."""
        conns = self._by_carrier.get(carrier, {})
        return [i for i, at in reversed(conns.items()) if now - at <= self.idle_s]

    def carriers(self, now: float) -> list[str]:
        """Carriers with a live connection, most recently heard first."""
        newest = {c: max(conns.values()) for c, conns in self._by_carrier.items() if conns}
        return [c for c in sorted(newest, key=newest.get, reverse=True)
                if now - newest[c] <= self.idle_s]

    def drop(self, carrier: str, identity: bytes) -> None:
        conns = self._by_carrier.get(carrier)
        if conns is not None:
            conns.pop(identity, None)
            if not conns:
                del self._by_carrier[carrier]

    def forget_idle(self, now: float) -> None:
        for carrier in list(self._by_carrier):
            conns = self._by_carrier[carrier]
            for identity in [i for i, at in conns.items() if now - at > self.idle_s]:
                del conns[identity]
            if not conns:
                del self._by_carrier[carrier]

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_carrier.values())


class DeviceCarriers:
    """Per device index, the carrier that last delivered an accepted row of it."""

    def __init__(self, max_carriers: int = MAX_CARRIERS):
        self.max_carriers = max_carriers
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self._of = np.full(1024, NO_CARRIER, np.int16)

    def learn(self, carrier: str, device: np.ndarray) -> None:
        """`carrier` delivered accepted rows of these device indices (vectorised)."""
        if len(device) == 0:
            return
        code = self._code.get(carrier)
        if code is None:
            if len(self.names) >= self.max_carriers:
                return
            code = self._code[carrier] = len(self.names)
            self.names.append(carrier)
        top = int(device.max())
        if top >= len(self._of):
            grown = np.full(max(top + 1, 2 * len(self._of)), NO_CARRIER, np.int16)
            grown[:len(self._of)] = self._of
            self._of = grown
        self._of[device[device >= 0]] = code

    def of(self, device_index: int) -> str | None:
        if not 0 <= device_index < len(self._of):
            return None
        code = int(self._of[device_index])
        return None if code == NO_CARRIER else self.names[code]


@dataclass
class OpenRequest:
    id: str
    device: str
    reason: str
    requested_ms: int
    index: int = -1            # device index in the ingest's DeviceBook, -1 not (yet) known
    sent: bool = False
    sent_to: tuple[str, ...] = ()   # the carriers it went to: only they may answer it


class LocateRouter:
    """Sends open locate requests to carrier connections and records their answers.

    send(identity, frame) -> "sent" | "gone" | "full": one frame on the ROUTER to one
    identity (the server's `send_unasked`). index_of(devices) -> an int array of device
    indices, -1 for a device not (yet) in the ingest's book (one call for many).
    """

    def __init__(self, store_path, *, timeout_ms: int, idle_s: float, keep_ms: int, curve: bool,
                 metrics, send: Callable[[bytes, bytes], str],
                 index_of: Callable[[list[str]], np.ndarray], open_store=None):
        self.store_path = store_path
        self.timeout_ms, self.keep_ms, self.curve = int(timeout_ms), int(keep_ms), curve
        self.metrics = metrics
        self._send, self._index_of = send, index_of
        self._open_store = open_store or _default_store
        self.connections = CarrierConnections(idle_s)
        self.carriers = DeviceCarriers()
        self.requests: dict[str, OpenRequest] = {}
        self._by_index: dict[int, list[str]] = {}
        self._open_indices = np.zeros(0, np.int32)
        self._store = None
        self._version = 0
        self._loaded = False
        self._unwritten: list[tuple] = []     # answers not yet in locate.sqlite
        self._unmarked: list[tuple] = []      # sends not yet recorded there
        self._fault_since: float | None = None
        self._retry_at = 0.0
        self._next_poll = self._next_waiting = self._next_expire = self._next_purge = 0.0
        self._waiting_changed = False

    # -- the loop's calls ------------------------------------------------------------

    def open(self) -> None:
        """Load the open requests (at bind). Requests recorded `sent` by an earlier run go
        again: the connection they went to is gone with that run."""
        self._with_store(self._load, time.monotonic())

    def seen(self, carrier: str, envelope: list[bytes], now: float) -> None:
        """A batch of `carrier` arrived on this envelope (a DEALER's is one identity)."""
        if len(envelope) != 1:
            return   # a REQ peer: it takes no frame it did not ask for
        if self.connections.seen(carrier, envelope[0], now):
            self._waiting_changed = True

    def committed(self, carrier: str, fixes, request: str | None, now_ms: int) -> None:
        """A batch's accepted rows (`ingest.fixes.FixColumns`) are stored: learn the
        carrier of their devices, answer the open requests they match."""
        if len(fixes) == 0:
            return
        device = np.asarray(fixes.device)
        self.carriers.learn(carrier, device)
        if not len(self._open_indices):
            return
        hit = np.isin(device, self._open_indices)
        if not hit.any():
            return
        rows = np.flatnonzero(hit)
        answers = []
        for index in np.unique(device[rows]).tolist():
            mine = rows[device[rows] == index]
            for request_id in list(self._by_index.get(index, ())):
                r = self.requests[request_id]
                if not r.sent:
                    self._waiting_changed = True     # its carrier may be known now
                elif carrier not in r.sent_to:
                    continue    # another carrier's row never answers (nor closes) it
                if request is not None and request == r.id:
                    row = int(mine[0])
                else:
                    late = mine[fixes.t_ms[mine] >= r.requested_ms - ANSWER_SKEW_MS]
                    if not len(late):
                        continue
                    row = int(late[0])
                answers.append(self._answer_of(r, fixes, row, now_ms))
        if answers:
            self._unwritten.extend(answers)
            for a in answers:
                self._close(a[0], "answered", latency_ms=now_ms - a[-1])
            self._write_answers(time.monotonic())

    def housekeeping(self, now: float) -> None:
        if now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            if not self._loaded:
                self._with_store(self._load, now)
            else:
                self._with_store(self._poll, now)
            if self._unmarked:
                self._write_sent(now)
            if self._unwritten:
                self._write_answers(now)
        if self._waiting_changed or now >= self._next_waiting:
            self._waiting_changed = False
            self._next_waiting = now + RETRY_WAITING_EVERY_S
            self._dispatch(now)
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY_S
            self.connections.forget_idle(now)
            self._with_store(self._expire, now)
            self.metrics.locate_open.set(len(self.requests))
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY_S
            self._with_store(lambda s: s.purge_before(_now_ms() - self.keep_ms), now)

    def close(self) -> None:
        """Write what is still held in memory (answers, sends) if the file lets us, then
        close: an answer lost here would have the request sent, and billed, again."""
        now = time.monotonic()
        self._retry_at = 0.0
        if self._unmarked:
            self._write_sent(now)
        if self._unwritten:
            self._write_answers(now)
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- requests in memory ------------------------------------------------------------

    def _add(self, r) -> None:
        if r.id in self.requests:
            return
        if r.reason not in p.LOCATE_REASONS:   # not written by LocateStore.request: it waits
            return                             # for its timeout, never sent
        req = OpenRequest(r.id, r.device, r.reason, r.requested_ms)
        self.requests[r.id] = req
        self._resolve([req])
        self._waiting_changed = True

    def _resolve(self, requests: list[OpenRequest]) -> None:
        """Find the requests' device indices (a device the registry names later: later)."""
        unknown = [r for r in requests if r.index < 0]
        if not unknown:
            return
        found = self._index_of([r.device for r in unknown]).tolist()
        for req, index in zip(unknown, found):
            if index >= 0:
                req.index = index
                self._by_index.setdefault(index, []).append(req.id)
        self._open_indices = np.fromiter(self._by_index, np.int32, len(self._by_index))

    def _close(self, request_id: str, outcome: str, latency_ms: int | None = None) -> None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        if req.index >= 0:
            ids = self._by_index[req.index]
            ids.remove(request_id)
            if not ids:
                del self._by_index[req.index]
                self._open_indices = np.fromiter(self._by_index, np.int32, len(self._by_index))
        self.metrics.locate_requests.labels(req.reason, outcome).inc()
        if latency_ms is not None:
            self.metrics.locate_seconds.observe(max(0, latency_ms) / 1000)

    @staticmethod
    def _answer_of(r: OpenRequest, fixes, row: int, now_ms: int) -> tuple:
        src = int(fixes.src[row])
        name = p.SRC_NAMES[src] if 0 <= src < len(p.SRC_NAMES) else None
        t = int(fixes.t_ms[row])
        if src >= p.STATE0 or math.isnan(float(fixes.lon[row])):
            position = (None, None, None)
        else:
            acc = float(fixes.acc_m[row])
            position = (float(fixes.lon[row]), float(fixes.lat[row]),
                        None if math.isnan(acc) else acc)
        return (r.id, now_ms, t, name, *position, r.requested_ms)

    # -- sending -------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        waiting = [r for r in self.requests.values() if not r.sent]
        if not waiting:
            return
        sent = []
        self._resolve(waiting)
        for req in waiting:
            carrier = self.carriers.of(req.index)
            if carrier is not None:
                to = [carrier] if self._give(req, carrier, now) else []
            elif self.curve:
                to = []        # only the authenticated carrier of the device may have it
            else:
                to = [c for c in self.connections.carriers(now)[:BROADCAST_CARRIERS]
                      if self._give(req, c, now)]
            if to:
                req.sent, req.sent_to = True, tuple(to)
                sent.append((req, ",".join(to)))
        if sent:
            now_ms = _now_ms()
            for req, to in sent:
                self.metrics.locate_requests.labels(req.reason, "sent").inc()
                self._unmarked.append((req.id, to, now_ms))
            self._write_sent(now)

    def _write_sent(self, now: float) -> None:
        marks = self._unmarked
        if self._with_store(lambda s: [s.mark_sent(*m) for m in marks], now) is not None:
            self._unmarked = []
        elif len(marks) > MAX_UNWRITTEN_ANSWERS:
            del marks[:len(marks) - MAX_UNWRITTEN_ANSWERS]

    def _give(self, req: OpenRequest, carrier: str, now: float) -> bool:
        """Send to the newest live connection of `carrier` that takes it."""
        frame = p.encode_locate(req.id, req.device, req.reason)
        for identity in self.connections.live(carrier, now):
            outcome = self._send(identity, frame)
            if outcome == "sent":
                return True
            if outcome == "gone":
                self.connections.drop(carrier, identity)
        return False

    # -- locate.sqlite -------------------------------------------------------------------

    def _with_store(self, work, now: float):
        """work(store)'s result (True for None); None on a fault of the file, which is
        logged once and not tried again for FAULT_RETRY_S."""
        if self._fault_since is not None and now < self._retry_at:
            return None
        try:
            if self._store is None:
                self._store = self._open_store(self.store_path)
            result = work(self._store)
        except (sqlite3.Error, OSError, GeofenceError) as e:
            if self._fault_since is None:
                log.warning("locate requests: %s is not usable (%s); fixes are taken as "
                            "usual, locate requests wait until it works again",
                            self.store_path, e)
                self._fault_since = now
            self._retry_at = now + FAULT_RETRY_S
            if self._store is not None:     # a fresh connection next time: nothing half-done
                try:
                    self._store.close()
                except sqlite3.Error:
                    pass
                self._store = None
            return None
        if self._fault_since is not None:
            log.info("locate requests: %s works again", self.store_path)
            self._fault_since = None
        return result if result is not None else True

    def _load(self, store) -> None:
        self._version = store.last_version()
        for r in store.open_requests():
            self._add(r)
        self._loaded = True
        self.metrics.locate_open.set(len(self.requests))

    def _poll(self, store) -> None:
        for r in store.pending(self._version):
            self._version = max(self._version, r.version)
            self._add(r)

    def _expire(self, store) -> None:
        for r in store.expire(_now_ms(), self.timeout_ms):
            self._close(r.id, "timed_out")

    def _write_answers(self, now: float) -> None:
        answers = self._unwritten
        if self._with_store(lambda s: s.answer([a[:-1] for a in answers]), now) is not None:
            self._unwritten = []
        elif len(answers) > MAX_UNWRITTEN_ANSWERS:
            del answers[:len(answers) - MAX_UNWRITTEN_ANSWERS]


def _default_store(path):
    from carriers.locate_store import LocateStore

    return LocateStore(path, busy_timeout_s=BUSY_TIMEOUT_S)


def _now_ms() -> int:
    return int(time.time() * 1000)
