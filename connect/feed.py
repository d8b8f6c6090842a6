"""The connector's way into the engine: a `CarrierClient` in a thread of its own.

`CarrierClient` is synchronous: `send` blocks while its window is full, and acks and
locate requests arrive only while it pumps. Run on the connector's event loop it would
stall every HTTP request whenever the engine is slow; so it runs here, in one thread that
owns the ZeroMQ socket, and the event loop talks to it through two thread-safe hand-offs:
`put(row)` (a queue.Queue) in, and `on_locate(request)` out (the caller makes it
loop-safe, with `call_soon_threadsafe`). Same validation, durability and acks as any
carrier: the rows travel as ordinary batches and stay in the client's window until acked.

Rows are gathered for up to `linger_s` into batches of at most `max_rows`, one batch per
datum; a row answering a locate request goes in a batch of its own that names the
request (`"request"` in the batch map). When nothing was sent for `idle_batch_s`, an
empty batch goes, so the engine knows the connection and can send it locate requests.

The backlog (rows put and not yet acknowledged: queued, framed, in the client's window) is
bounded by the connector, not here: while `full()` it asks for nothing, so an engine that
is away costs no budget and no memory beyond `max_backlog_rows` and the requests in flight.
Rows are never dropped for it: they wait until the engine acks them (or the feed stops).
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass

import zmq

from ingest.carrier import CarrierClient, CarrierError, ClientCurve
from ingest.protocol import encode_rows

log = logging.getLogger("geofence.connect")

IDLE_BATCH_S = 30.0
MAX_BACKLOG_ROWS = 10_000  # rows without an ack before the connector pauses its requests
LINGER_S = 0.05
MAX_ROWS = 500
PUMP_S = 0.05
STOP_DRAIN_S = 3.0       # at stop: how long queued rows and unacked batches may take


@dataclass(frozen=True)
class Row:
    """One answer for the engine: a position (lon/lat in `datum`) or a handset state
    (`src` one of the states, lon/lat NaN). `request`: the locate request it answers."""

    device: str
    t_ms: int
    lon: float
    lat: float
    acc_m: float
    src: str | None
    datum: str = "wgs84"
    request: str | None = None


class EngineFeed:
    """See the module docstring. `metrics`: a ConnectorMetrics (accepted/rejected rows)."""

    def __init__(self, endpoint: str, carrier: str, metrics, on_locate, *,
                 curve: ClientCurve | None = None, ctx: zmq.Context | None = None,
                 idle_batch_s: float = IDLE_BATCH_S, max_rows: int = MAX_ROWS,
                 timeout_ms: float = 2500, batch_base: int | None = None,
                 max_backlog_rows: int = MAX_BACKLOG_ROWS):
        self.endpoint, self.carrier, self.curve = endpoint, carrier, curve
        self.metrics, self.on_locate = metrics, on_locate
        self.ctx = ctx or zmq.Context.instance()
        self.idle_batch_s, self.max_rows, self.timeout_ms = idle_batch_s, max_rows, timeout_ms
        # batch numbers above any an earlier run of this carrier used (microseconds now):
        # the engine remembers (carrier, batch) and would call a reused number a duplicate
        self._batch = batch_base if batch_base is not None else time.time_ns() // 1000
        self.max_backlog_rows = max_backlog_rows
        self._rows: queue.Queue[Row] = queue.Queue()
        self._sizes: dict[int, int] = {}   # batch number -> rows, until acknowledged
        self._unacked = 0                  # rows put and not yet acknowledged
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{carrier}", daemon=True)
        self._counted = (0, {})
        self.batches_sent = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def put(self, row: Row) -> None:
        with self._count_lock:
            self._unacked += 1
        self._rows.put(row)

    def backlog(self) -> int:
        """Rows put and not yet acknowledged by the engine."""
        return self._unacked

    def full(self) -> bool:
        return self.backlog() > self.max_backlog_rows

    def stop(self) -> None:
        """Send what is queued, wait up to STOP_DRAIN_S for its acks, close. Rows left
        unacknowledged are dropped: their phones are asked again on schedule."""
        self._stopping.set()
        self._thread.join(STOP_DRAIN_S + 5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with CarrierClient(self.ctx, self.endpoint, self.carrier, curve=self.curve,
                               timeout_ms=self.timeout_ms) as client:
                self._loop(client)
        except Exception as e:   # a bug: the runner sees the thread gone and stops
            self.error = e
            log.exception("connector feed stopped")

    def _loop(self, client: CarrierClient) -> None:
        unsent: list[tuple[int, bytes]] = [self._frame([])]   # hello: the engine knows us
        last_sent = time.monotonic()
        stop_by = None
        while True:
            stopping = self._stopping.is_set()
            if stopping and stop_by is None:
                stop_by = time.monotonic() + STOP_DRAIN_S
            rows = self._take(0 if unsent else LINGER_S)
            unsent += self._frames(rows)
            self._count_acked(client, unsent)
            if not unsent and time.monotonic() - last_sent >= self.idle_batch_s:
                unsent.append(self._frame([]))
            try:
                while unsent:
                    client.send(unsent[0][1], unsent[0][0])
                    unsent.pop(0)
                    last_sent = time.monotonic()
                client.idle(0 if rows else PUMP_S)
            except CarrierError as e:   # the engine is away: the window keeps its batches
                log.warning("connector feed: %s", e)
            self._hand_over(client)
            self._count_acked(client, unsent)
            if stopping and ((not unsent and self._rows.empty())
                             or time.monotonic() >= stop_by):
                break
        try:
            while client.unacknowledged() and time.monotonic() < stop_by:
                client.idle(PUMP_S)
        except CarrierError as e:
            log.warning("connector feed: stopped with batches unacknowledged: %s", e)
        self._hand_over(client)

    def _take(self, wait_s: float) -> list[Row]:
        rows = []
        try:
            rows.append(self._rows.get(timeout=wait_s) if wait_s else self._rows.get_nowait())
            end = time.monotonic() + LINGER_S
            while len(rows) < self.max_rows * 8 and time.monotonic() < end:
                rows.append(self._rows.get_nowait())
        except queue.Empty:
            pass
        return rows

    def _frames(self, rows: list[Row]) -> list[tuple[int, bytes]]:
        groups: dict[tuple[str, str | None], list[Row]] = {}
        for row in rows:
            groups.setdefault((row.datum, row.request), []).append(row)
        frames = []
        for (datum, request), group in groups.items():
            for k in range(0, len(group), self.max_rows):
                frames.append(self._frame(group[k:k + self.max_rows], datum, request))
        return frames

    def _frame(self, rows: list[Row], datum: str = "wgs84", request: str | None = None):
        self._batch += 1
        self.batches_sent += 1
        if rows:
            self._sizes[self._batch] = len(rows)
        frame = encode_rows(self.carrier, self._batch, [r.device for r in rows],
                            [r.t_ms for r in rows], [r.lon for r in rows],
                            [r.lat for r in rows], [r.acc_m for r in rows],
                            [r.src for r in rows],
                            datum=None if datum == "wgs84" else datum, request=request)
        return self._batch, frame

    def _count_acked(self, client: CarrierClient, unsent: list[tuple[int, bytes]]) -> None:
        """Take the rows of acknowledged batches (neither unsent nor in the client's
        window) off the backlog."""
        waiting = set(client.unacknowledged()).union(batch for batch, _ in unsent)
        acked = [b for b in self._sizes if b not in waiting]
        if acked:
            with self._count_lock:
                self._unacked -= sum(self._sizes.pop(b) for b in acked)

    def _hand_over(self, client: CarrierClient) -> None:
        """Locate requests to the event loop; the acks' counts to the metrics."""
        for request in client.take_locate_requests():
            self.on_locate(request)
        stats = client.stats
        accepted, rejected = self._counted
        m = self.metrics
        if stats.fixes_accepted > accepted:
            m.accepted.labels(m.name).inc(stats.fixes_accepted - accepted)
        for reason, n in stats.fixes_rejected.items():
            if n > rejected.get(reason, 0):
                m.rejected.labels(m.name, reason).inc(n - rejected.get(reason, 0))
        self._counted = (stats.fixes_accepted, dict(stats.fixes_rejected))
