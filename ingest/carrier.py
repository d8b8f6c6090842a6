"""The carrier's end of the feed (SPEC §4): a Lazy Pirate client with a window of batches.

One DEALER socket to the engine's ROUTER. Up to `window` batches are in flight at once;
each ack carries its batch number, which is how an ack finds its batch (the engine may
answer out of order). The engine deduplicates by (carrier, batch), so a resend is
harmless, and that is what makes the recovery rules below simple:

- ack timeout (no ack for an in-flight batch within `timeout_ms`): the connection is
  presumed broken. Close the socket (LINGER 0: queued frames go), open a new one (a new
  identity, so late acks for the old one cannot arrive) and resend every batch still in
  flight, byte for byte, with the same batch numbers. An ack of `duplicate` then repeats
  the first answer, which never reached us: its counts are counted now, once.
- `retries` ack timeouts in a row with no ack in between: `CarrierError`. The batches
  stay in the window (`unacknowledged()`); `drain()` tries again, `close()` gives up.
- `busy`: the engine took nothing. The batch waits an exponential, capped, jittered
  delay (jitter so that carriers told `busy` together do not come back together), then
  goes again; it keeps its place in the window, so a busy engine slows the sender down.

Everything is bounded: the window holds at most `window` batches, the socket's HWMs are
sized to the window, latency samples are the last LATENCY_SAMPLES. Not thread-safe: one
client per thread (the zmq.Context is shared).

    with CarrierClient(ctx, "tcp://127.0.0.1:5555", "cmcc-sd") as client:
        for n, frame in enumerate(frames):
            client.send(frame, base + n)
        client.drain()
        print(client.stats.as_dict())
"""

import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from geofence.errors import GeofenceError
from ingest.auth import configure_client
from ingest.keys import PUBLIC_SUFFIX, SECRET_SUFFIX, SERVER, load_keypair, load_public_key
from ingest.protocol import decode_ack, decode_locate

LATENCY_SAMPLES = 10_000     # the most recent ack latencies kept for percentiles
BACKOFF_FIRST_MS = 50.0      # first wait after `busy`; doubles per `busy` in a row
BACKOFF_MAX_MS = 5_000.0     # cap of the wait after `busy`
LOCATE_QUEUE = 10_000        # locate requests received and not yet taken; older ones drop


class CarrierError(GeofenceError, ConnectionError):
    """The engine stopped answering: `retries` ack timeouts in a row. Check that the engine
    runs at the endpoint and that the CURVE keys match; the batches not acknowledged are
    still in the client's window (`unacknowledged()`), and `drain()` tries again."""


@dataclass(frozen=True)
class ClientCurve:
    """What a carrier's socket needs for CURVE: the engine's public key and its own pair
    (z85 bytes). The secret is left out of repr()."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)


def load_curve(directory: str | os.PathLike, carrier: str) -> ClientCurve:
    """CURVE keys of `carrier` from a directory `geofence keys generate` wrote (or one laid
    out like it): `server.key` (the engine's public key) and `<carrier>.key_secret`."""
    folder = Path(directory)
    pair = load_keypair(folder / (carrier + SECRET_SUFFIX))
    return ClientCurve(load_public_key(folder / (SERVER + PUBLIC_SUFFIX)), pair.public, pair.secret)


@dataclass
class CarrierStats:
    """What a client did and what the engine answered. Counts are per batch unless named
    `fixes_*`; `acks` counts every ack by status, `busy` included."""

    batches: int = 0            # distinct batches handed to send()
    sends: int = 0              # frames put on the wire: first sends plus resends
    resends: int = 0            # after a timeout or after `busy`
    timeouts: int = 0
    reconnects: int = 0
    acks: Counter = field(default_factory=Counter)          # status -> batches
    resends_acknowledged: int = 0   # `duplicate` acks: a resend found its first answer
    batch_errors: Counter = field(default_factory=Counter)  # ack `error` -> batches
    fixes_accepted: int = 0
    fixes_rejected: Counter = field(default_factory=Counter)  # reason -> fixes
    fixes_rejected_total: int = 0
    stale_acks: int = 0         # acks for no batch in flight (late or repeated)
    bad_acks: int = 0           # replies that are neither acks nor locate requests
    locate_requests: int = 0    # locate requests the engine sent (SPEC §14)
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def latency_percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100, nearest rank) of the recent ack latencies, in ms:
        from the send an ack answers to the ack. None without samples."""
        return _percentile(self.latency_ms, q)

    def as_dict(self) -> dict:
        """Plain numbers and dicts: for printing, JSON and tests."""
        return {"batches": self.batches, "sends": self.sends, "resends": self.resends,
                "timeouts": self.timeouts, "reconnects": self.reconnects,
                "acks": dict(self.acks), "resends_acknowledged": self.resends_acknowledged,
                "batch_errors": dict(self.batch_errors),
                "fixes_accepted": self.fixes_accepted,
                "fixes_rejected": dict(self.fixes_rejected),
                "stale_acks": self.stale_acks, "bad_acks": self.bad_acks,
                "locate_requests": self.locate_requests,
                "latency_ms": {"p50": self.latency_percentile(50),
                               "p99": self.latency_percentile(99)}}

    @classmethod
    def combined(cls, parts: Iterable["CarrierStats"]) -> "CarrierStats":
        """The sum of several clients' statistics (latency samples pooled, still bounded)."""
        total = cls()
        for s in parts:
            for name in ("batches", "sends", "resends", "timeouts", "reconnects",
                         "resends_acknowledged", "fixes_accepted", "fixes_rejected_total",
                         "stale_acks", "bad_acks", "locate_requests"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.acks.update(s.acks)
            total.batch_errors.update(s.batch_errors)
            total.fixes_rejected.update(s.fixes_rejected)
            total.latency_ms.extend(s.latency_ms)
        return total


def _percentile(samples, q: float) -> float | None:
    values = sorted(samples)
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def batch_number(frame: bytes) -> int | None:
    """The `batch` field of a batch frame, or None if the frame has no readable one."""
    try:
        batch = msgpack.unpackb(frame, raw=False).get("batch")
    except Exception:  # any unreadable frame: the caller sends it anyway
        return None
    return batch if type(batch) is int else None


@dataclass
class _Flight:
    """A batch in the window: on the wire since `sent_at`, or waiting until `resend_at`."""

    frame: bytes
    sent_at: float | None = None     # monotonic seconds of the last send
    resend_at: float | None = None   # monotonic seconds; set while backing off after `busy`
    unsent_since: float | None = None   # refused by the socket since (no connection yet)


SEND_RETRY_S = 0.002  # after a send refused by a full pipe


class CarrierClient:
    """A carrier's connection to the engine; see the module docstring for the rules.

    timeout_ms: how long an in-flight batch may wait for its ack before the connection is
    presumed broken. retries: ack timeouts in a row tolerated; the last one raises, so a
    dead engine is given up after about retries * timeout_ms. window: batches in flight.
    curve: a ClientCurve (`load_curve`) for an engine with CURVE. seed: of the jitter.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, carrier: str, *,
                 timeout_ms: float = 2500, retries: int = 5, window: int = 8,
                 curve: ClientCurve | None = None, backoff_ms: float = BACKOFF_FIRST_MS,
                 backoff_max_ms: float = BACKOFF_MAX_MS, seed: int | None = None):
        if timeout_ms <= 0 or retries < 1 or window < 1 or backoff_ms <= 0:
            raise ValueError("timeout_ms and backoff_ms must be > 0, retries and window >= 1")
        self.ctx, self.endpoint, self.carrier = ctx, endpoint, carrier
        self.timeout_s = timeout_ms / 1000
        self.retries, self.window, self.curve = retries, window, curve
        self.backoff_s, self.backoff_max_s = backoff_ms / 1000, backoff_max_ms / 1000
        self.stats = CarrierStats()
        self._rng = random.Random(seed)
        self._pending: dict[int | None, _Flight] = {}   # in send order
        self._timeouts_in_row = 0
        self._busy_in_row = 0
        self._socket: zmq.Socket | None = None
        self._locates: deque[dict] = deque(maxlen=LOCATE_QUEUE)
        self._closed = False
        self._socket = self._open_socket()

    # -- the caller's side -----------------------------------------------------------

    def send(self, frame: bytes, batch_no: int | None) -> None:
        """Put one batch in the window; waits (handling acks) while the window is full."""
        self._enqueue(frame, batch_no)
        self._pump(until=time.monotonic())   # take the acks already here: true latencies

    def idle(self, seconds: float) -> None:
        """Handle acks, resends and timeouts for `seconds`: how a sender waits (for its
        rate limit, say) without leaving acks unread and timeouts unnoticed."""
        self._check_open()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._pump(until=end)

    def submit_many(self, batches: Iterable[tuple[int, bytes]]) -> CarrierStats:
        """Send every (batch_no, frame), keeping the window full, then drain."""
        for batch_no, frame in batches:
            self.send(frame, batch_no)
        self.drain()
        return self.stats

    def drain(self) -> None:
        """Wait until every batch in the window has its final ack (not `busy`)."""
        self._check_open()
        while self._pending:
            self._pump()

    def send_one(self, frame: bytes, batch_no: int | None = None) -> dict:
        """Send one batch and wait for its final ack; the ack as `decode_ack` gives it.

        REQ-style use and tests: the window must be empty. batch_no defaults to the frame's
        own `batch`; a frame without a readable one is matched to an ack without one (the
        engine's `malformed` answer), which works because it is alone in flight."""
        if self._pending:
            raise ValueError("send_one needs an empty window: drain() first")
        key = batch_number(frame) if batch_no is None else batch_no
        self._enqueue(frame, key)
        while key in self._pending:   # ends with the ack, or CarrierError after the retries
            for done, ack in self._pump():
                if done == key:
                    return ack
        raise AssertionError("batch left the window without its ack")  # a bug, not a state

    def _enqueue(self, frame: bytes, batch_no: int | None) -> None:
        self._check_open()
        if batch_no in self._pending:
            raise ValueError(f"batch {batch_no} is already in the window")
        while len(self._pending) >= self.window:
            self._pump()
        flight = _Flight(bytes(frame))
        self._pending[batch_no] = flight
        self.stats.batches += 1
        self._transmit(flight, resend=False)

    def take_locate_requests(self) -> list[dict]:
        """Locate requests (SPEC §14) received so far, oldest first, each once: dicts with
        `request`, `device` and `reason`. They arrive while the client handles acks (in
        `send`, `idle`, `drain`); the engine sends them only on a connection that has sent
        a batch, so an idle carrier that wants them sends an empty batch now and then.
        Answer with an ordinary batch holding a fix (or a handset status) of the device."""
        taken = list(self._locates)
        self._locates.clear()
        return taken

    def unacknowledged(self) -> list[int | None]:
        """Batch numbers in the window without a final ack, in send order."""
        return list(self._pending)

    def close(self) -> None:
        """Close the socket (LINGER 0); unacknowledged batches are abandoned."""
        self._closed = True
        self._close_socket()

    def __enter__(self) -> "CarrierClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the socket ------------------------------------------------------------------

    def _open_socket(self) -> zmq.Socket:
        socket = self.ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)              # a presumed-dead connection goes now
        # The window is the real bound. ZeroMQ counts a pipe's HWM loosely (messages still
        # in the I/O thread count too), so an HWM of window + 1 refused sends under load.
        socket.setsockopt(zmq.SNDHWM, 4 * self.window + 16)
        socket.setsockopt(zmq.RCVHWM, 4 * self.window + 16)
        socket.setsockopt(zmq.IMMEDIATE, 0)           # queue while connecting: no blocked send
        if self.curve is not None:
            configure_client(socket, self.curve.server_public, self.curve.public,
                             self.curve.secret)
        socket.connect(self.endpoint)
        return socket

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the carrier client is closed")
        if self._socket is None:   # given up after a CarrierError: a fresh round of retries
            self._reconnect()

    def _reconnect(self) -> None:
        """New socket, new identity; everything that was on the wire goes again."""
        self._close_socket()
        self._socket = self._open_socket()
        self.stats.reconnects += 1
        now = time.monotonic()
        for flight in self._pending.values():
            if flight.unsent_since is not None:
                flight.unsent_since = now     # a fresh socket gets a whole timeout to connect
            if flight.sent_at is not None:
                self._transmit(flight, resend=True)

    def _transmit(self, flight: _Flight, resend: bool) -> None:
        try:
            self._socket.send(flight.frame, zmq.NOBLOCK)
        except zmq.Again:   # the pipe is full for now: try again shortly, never drop it
            now = time.monotonic()
            flight.sent_at, flight.resend_at = None, now + SEND_RETRY_S
            if flight.unsent_since is None:
                flight.unsent_since = now
            return
        flight.sent_at, flight.resend_at, flight.unsent_since = time.monotonic(), None, None
        self.stats.sends += 1
        self.stats.resends += resend

    # -- the loop --------------------------------------------------------------------

    def _pump(self, until: float | None = None) -> list[tuple[int | None, dict]]:
        """Wait for acks until the next deadline (or `until`, if sooner); handle them, due
        resends and a timeout. Returns the batches that got their final ack, with it."""
        deadline = self._next_deadline() if until is None else min(until, self._next_deadline())
        wait_s = max(0.0, deadline - time.monotonic())
        done = []
        if self._socket.poll(math.ceil(wait_s * 1000), zmq.POLLIN):
            while True:
                try:
                    reply = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                finished = self._on_reply(reply[-1])   # a REQ-style envelope is ignored
                if finished is not None:
                    done.append(finished)
        now = time.monotonic()
        for flight in self._pending.values():
            if flight.resend_at is not None and flight.resend_at <= now:
                self._transmit(flight, resend=True)
        self._check_timeout(now)
        return done

    def _next_deadline(self) -> float:
        due = [f.sent_at + self.timeout_s if f.sent_at is not None else f.resend_at
               for f in self._pending.values()]
        return min(due, default=time.monotonic() + self.timeout_s)

    def _on_reply(self, frame: bytes) -> tuple[int | None, dict] | None:
        try:
            ack = decode_ack(frame)
        except ValueError:
            try:
                request = decode_locate(frame)
            except ValueError:
                self.stats.bad_acks += 1
            else:
                self.stats.locate_requests += 1
                self._locates.append({k: request[k] for k in ("request", "device", "reason")})
            return None
        key = ack["batch"]
        flight = self._pending.get(key)
        if flight is None and key is None and len(self._pending) == 1:
            key, flight = next(iter(self._pending.items()))   # an unreadable batch, alone
        if flight is None or flight.sent_at is None:
            self.stats.stale_acks += 1
            return None
        now = time.monotonic()
        self._timeouts_in_row = 0
        self.stats.acks[ack["status"]] += 1
        self.stats.latency_ms.append((now - flight.sent_at) * 1000)
        if ack["status"] == "busy":
            flight.sent_at, flight.resend_at = None, now + self._backoff()
            return None
        self._busy_in_row = 0
        del self._pending[key]
        self._count(ack)
        return key, ack

    def _backoff(self) -> float:
        """Seconds to wait after a `busy`: doubling per busy in a row, capped, and drawn
        from the upper half so the spread never collapses to zero."""
        self._busy_in_row += 1
        cap = min(self.backoff_max_s, self.backoff_s * 2.0 ** min(self._busy_in_row - 1, 30))
        return self._rng.uniform(cap / 2, cap)

    def _count(self, ack: dict) -> None:
        self.stats.resends_acknowledged += ack["status"] == "duplicate"
        self.stats.fixes_accepted += ack["accepted"]
        self.stats.fixes_rejected.update(reason for _, reason in ack["rejected"])
        self.stats.fixes_rejected_total += len(ack["rejected"])
        if ack["error"] is not None:
            self.stats.batch_errors[ack["error"]] += 1

    def _check_timeout(self, now: float) -> None:
        late = any((f.sent_at is not None and now - f.sent_at >= self.timeout_s)
                   or (f.unsent_since is not None and now - f.unsent_since >= self.timeout_s)
                   for f in self._pending.values())   # a socket that never takes it (no
                                                      # connection, a stalled handshake) too
        if not late:
            return
        self.stats.timeouts += 1
        self._timeouts_in_row += 1
        if self._timeouts_in_row >= self.retries:
            self._timeouts_in_row = 0
            self._close_socket()
            raise CarrierError(
                f"carrier {self.carrier}: no ack from {self.endpoint} in {self.retries} "
                f"tries of {self.timeout_s * 1000:.0f} ms each; {len(self._pending)} "
                "batches unacknowledged")
        self._reconnect()
