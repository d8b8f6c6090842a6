"""Ending at once the open streams of sessions ended outside the desk.

`geofence user disable NAME` (and `user add --replace`) delete the user's sessions from
another process: the next request is 401 at once, but an open event stream only checks
its session every `events.HEARTBEAT_S`. This watch asks SQLite every POLL_S whether
another connection wrote desk.sqlite (`PRAGMA data_version`: one cheap call, no read of
any table) and only then which streaming sessions are gone, and ends their streams.
"""

import asyncio
import logging

from desk.events import cancel_task

log = logging.getLogger("geofence.desk")

POLL_S = 0.5


class RevocationWatch:
    """Ends the streams (`events.ChangeFeed`) of sessions deleted by another process."""

    def __init__(self, stores, feed, poll_s: float = POLL_S):
        self.stores = stores
        self.feed = feed
        self.poll_s = poll_s
        self._version: int | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="desk-revocations")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            streaming = {client.session for client in self.feed.clients}
            try:
                gone = await self.stores.run(self._gone, streaming)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # a locked file: the heartbeat check still holds
                log.warning("session revocation watch: %s", type(e).__name__)
                continue
            for session in gone:
                self.feed.end_session(session)

    def _gone(self, streaming: set[bytes]) -> set[bytes]:
        """Database thread: the streaming sessions deleted since the last look, if
        another connection wrote the file since then."""
        users = self.stores.users
        version = users.data_version()
        if version == self._version:
            return set()
        self._version = version
        return streaming - users.live_sessions(streaming) if streaming else set()
