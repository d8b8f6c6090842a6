"""Locate requests on the live stream: one `locate` event per change of a request.

One shared task follows locate.sqlite's change counter (`LocateStore.changes_since`,
every POLL_S) and hands each change to the open streams (`desk.events.ChangeFeed`'s
clients) whose subtree holds the request's office: the office supervising the person
when it was asked (the delegate's during a delegation)::

    event: locate
    data: <the request document, one line of JSON>

The event has no `id:` line, on purpose: an SSE client resumes with the id of the last
event that had one (`Last-Event-ID`), which must stay an alarm change seq, or a resume
would replay alarms from a number that means something else. Locate events are not
replayed: a page that reconnects reads its open requests again
(`GET /api/locate/{request}`). The poll is the event's latency on top of the carrier's:
POLL_S (0.2 s) at most, which keeps POST -> fix on the stream within the issue's 1 s.
"""

import asyncio
import logging

from carriers.locate_store import LocateRequest
from desk.events import POLL_S, ChangeFeed, cancel_task
from desk.http import json_dumps

log = logging.getLogger("geofence.desk")

PAGE = 500


class LocateFollower:
    """Follows the locate requests' changes and feeds them to the change feed's clients."""

    def __init__(self, feed: ChangeFeed, poll_s: float = POLL_S):
        self.feed = feed
        self.stores = feed.stores
        self.poll_s = poll_s
        self.position = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.position = await self.stores.run(lambda: self.stores.locates.last_version())
        self._task = asyncio.create_task(self._follow(), name="desk-locate-feed")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def _follow(self) -> None:
        while True:
            try:
                changes = await self.stores.run(
                    lambda: self.stores.locates.changes_since(self.position, PAGE))
            except asyncio.CancelledError:
                raise
            except Exception as e:   # a locked or briefly missing file: try again
                log.warning("locate change feed: %s", type(e).__name__)
                changes = []
            for located in changes:
                self.dispatch(located)
            if len(changes) < PAGE:
                await asyncio.sleep(self.poll_s)

    def dispatch(self, located: LocateRequest) -> None:
        """Hand one change to every stream whose subtree holds the request's office."""
        self.position = max(self.position, located.version)
        data = locate_event(located)
        for client in list(self.feed.clients):
            if not client.ended and located.office in client.subtree:
                self.feed.deliver(client, None, data)


def locate_event(located: LocateRequest) -> bytes:
    """One SSE event without an id (see the module's docstring)."""
    return f"event: locate\ndata: {json_dumps(located.to_document())}\n\n".encode()
