"""The live alarm stream (`GET /api/events`, Server-Sent Events).

It also carries `locate` events (`desk.locate_events`), which have no id and so never
move a client's resume point.

One shared task follows the alarm store's change log (`AlarmStore.changes_after`, every
POLL_S) for all clients, and hands each change to the clients allowed to see it (any
office the alarm went to lies in the client's subtree). Each client has a bounded queue;
a client that falls QUEUE_SIZE changes behind is disconnected rather than buffered
without limit: its browser reconnects with `Last-Event-ID` and resumes from the store.

Wire format, per change a user may see::

    event: alarm
    id: <change seq>
    data: <the alarm document, one line of JSON>

and a comment line when nothing was sent for HEARTBEAT_S. The session is checked again
every HEARTBEAT_S, however busy the stream: a stream ends once its session was logged
out, expired or revoked (the user reset), or once the user's office or its subtree
(fixed when the stream opened) changed; the browser then reconnects with the new scope.
An open stream counts as use of the session (it slides), so a patrol screen that only
watches stays logged in. A session has at most STREAMS_PER_SESSION open streams; one
more is refused with 429.

A stream's slot is freed as soon as its client goes away, so a reload never meets a 429:
a stream whose connection closed no longer counts (its transport is watched: a closed
one ends the stream within WATCH_S even when nothing is sent, and a failed write ends
it at once), and a new stream at the limit waits up to SLOT_WAIT_S for one of its
session's streams to end (a reload closes the old connection just before it opens the
new one, and the close may reach the desk a moment after the new request).

A client names where to resume with the `Last-Event-ID` header (or `?after=` on a
fresh connection, e.g. the `seq` of `GET /api/alarms`); otherwise it starts at the end.
Resuming replays the missed changes from the store first, then joins the live feed
without a gap or a repeat: the client is registered before the replay and skips the
live changes the replay already covered. A client more than MAX_REPLAY_CHANGES behind
is not replayed: it starts at the end and gets one event first that says to reload the
list (`GET /api/alarms`)::

    event: reset
    id: <change seq it starts after>
    data: {}
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from alerts.alarms import Alarm
from desk.scope import Scope

log = logging.getLogger("geofence.desk")

POLL_S = 0.2
HEARTBEAT_S = 15.0
QUEUE_SIZE = 1_000
REPLAY_PAGE = 500
RETRY_MS = 3_000
MAX_REPLAY_CHANGES = 10_000
STREAMS_PER_SESSION = 4
WATCH_S = 0.5       # a stream notices its closed connection within this, sending or not
SLOT_WAIT_S = 1.0   # a new stream at the limit waits this long for a slot to free
SLOT_POLL_S = 0.02
_IDLE = object()    # a queue wait that timed out



async def cancel_task(task: asyncio.Task | None) -> None:
    """Cancel a background task of the desk and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

@dataclass(eq=False)
class Client:
    subtree: frozenset[str]
    session: bytes
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    ended: str | None = None   # why the stream must end: "slow", "logout", "shutdown"
    gone: Callable[[], bool] = lambda: False   # whether its connection has closed

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            try:
                self.queue.put_nowait(None)   # wake the writer
            except asyncio.QueueFull:
                pass                          # it is not waiting: the queue is full


class ChangeFeed:
    """The shared follower of the change log and its clients."""

    def __init__(self, stores, on_clients: Callable[[int], None] = lambda n: None,
                 poll_s: float = POLL_S):
        self.stores = stores
        self.poll_s = poll_s
        self.position = 0
        self.clients: set[Client] = set()
        self._on_clients = on_clients
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.position = await self.stores.run(lambda: self.stores.alarms.last_change())
        self._task = asyncio.create_task(self._follow(), name="desk-change-feed")

    async def stop(self) -> None:
        for client in list(self.clients):
            client.end("shutdown")
        await cancel_task(self._task)
        self._task = None

    def add(self, client: Client) -> int:
        """Register a client; returns the position it will be fed after."""
        self.clients.add(client)
        self._on_clients(len(self.clients))
        return self.position

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self._on_clients(len(self.clients))

    def streams_of(self, session: bytes) -> int:
        """The session's streams whose connection is still open."""
        return sum(client.session == session and not client.gone() for client in self.clients)

    async def slot_for(self, session: bytes) -> bool:
        """Whether the session may open one more stream, waiting up to SLOT_WAIT_S for
        one of its streams to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOT_WAIT_S
        while self.streams_of(session) >= STREAMS_PER_SESSION:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SLOT_POLL_S)
        return True

    def end_session(self, session: bytes) -> None:
        for client in list(self.clients):
            if client.session == session:
                client.end("logout")

    async def _follow(self) -> None:
        while True:
            try:
                scope, changes = await self.stores.run(_changes_with_offices, self.stores,
                                                       self.position, REPLAY_PAGE)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # a locked or briefly missing file: try again
                log.warning("alarm change feed: %s", type(e).__name__)
                changes = []
            for seq, offices, alarm in changes:
                self.dispatch(seq, offices, alarm, scope)
            if len(changes) < REPLAY_PAGE:
                await asyncio.sleep(self.poll_s)

    def dispatch(self, seq: int, offices: list[str], alarm: Alarm, scope: Scope) -> None:
        """Hand one change to every client that may see it; drop clients that lag."""
        self.position = seq
        data = _event(seq, alarm)
        for client in list(self.clients):
            if client.ended or not scope.sees_alarm(client.subtree, alarm, offices):
                continue
            self.deliver(client, seq, data)

    def deliver(self, client: Client, seq: int | None, data: bytes) -> None:
        """Queue one event for a client (`seq` None: an event without an id, such as
        `locate`); a client QUEUE_SIZE events behind is dropped."""
        try:
            client.queue.put_nowait((seq, data))
        except asyncio.QueueFull:
            log.info("event stream dropped: client %d changes behind", QUEUE_SIZE)
            self.remove(client)
            client.end("slow")


def _changes_with_offices(stores, after: int, limit: int
                          ) -> tuple[Scope, list[tuple[int, list[str], Alarm]]]:
    """The registry's scope, and the changes after `after` with the offices each alarm has
    gone to (database thread)."""
    return stores.scope(), [(c.seq, stores.alarms.offices_of(c.alarm_id), c.alarm)
                            for c in stores.alarms.changes_after(after, limit)]


def _event(seq: int, alarm: Alarm) -> bytes:
    """One SSE event: the alarm's stored JSON text as it is (one line: compact JSON)."""
    return f"event: alarm\nid: {seq}\ndata: {alarm.to_json()}\n\n".encode()


def connection_gone(request: web.Request) -> Callable[[], bool]:
    """A check of whether the request's connection has closed (its transport is gone)."""
    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()
    return gone


def resume_point(request: web.Request) -> int | None:
    """The seq to resume after (Last-Event-ID, else ?after=), None to start at the end."""
    text = request.headers.get("Last-Event-ID") or request.query.get("after")
    if text is None or not text.strip().isdigit() or len(text) > 18:
        return None
    return int(text)


async def stream(request: web.Request, feed: ChangeFeed, client: Client,
                 is_live: Callable[[], Awaitable[bool]]) -> web.StreamResponse:
    """Serve one client until it goes, lags, logs out or the desk stops.

    `is_live()` checks (and slides) the session, and that its scope is still the
    client's, every HEARTBEAT_S."""
    if not await feed.slot_for(client.session):
        raise web.HTTPTooManyRequests(reason="too many open streams for this session")
    client.gone = connection_gone(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})
    after = resume_point(request)
    position = feed.add(client)
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n: connected\n\n".encode())
        if after is not None and position - after > MAX_REPLAY_CHANGES:
            after = None
            await response.write(f"event: reset\nid: {position}\ndata: {{}}\n\n".encode())
        replayed = position if after is None or after > position else after
        while replayed < position:   # replay what the client missed, from the store
            scope, page = await feed.stores.run(_changes_with_offices, feed.stores, replayed,
                                                REPLAY_PAGE)
            page = [change for change in page if change[0] <= position]
            if not page:
                break
            for seq, offices, alarm in page:
                if scope.sees_alarm(client.subtree, alarm, offices):
                    await response.write(_event(seq, alarm))
            replayed = page[-1][0]
        sent = position   # the queue holds the changes after it
        loop = asyncio.get_running_loop()
        check_at = loop.time() + HEARTBEAT_S
        while client.ended is None:
            wait_s = min(WATCH_S, max(0.0, check_at - loop.time()))
            try:
                item = await asyncio.wait_for(client.queue.get(), wait_s)
            except asyncio.TimeoutError:
                item = _IDLE
            if client.gone():
                break
            if loop.time() >= check_at:   # busy or not
                if not await is_live():
                    break
                check_at = loop.time() + HEARTBEAT_S
                if item is _IDLE:
                    await response.write(b": keepalive\n\n")
            if item is None:
                break
            if item is _IDLE:
                continue
            seq, data = item
            if seq is None:   # a locate event (desk.locate_events): no id, never replayed
                await response.write(data)
            elif seq > sent:
                await response.write(data)
                sent = seq
    except ConnectionError:
        pass   # the client went away (a failed write)
    finally:
        feed.remove(client)
    return response
