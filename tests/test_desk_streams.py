"""The live stream's per-session slots over a real HTTP server and a real HTTP client.

The world is `test_desk_api`'s. A browser reload closes its streams and opens new ones at
once; the slots of the closed ones must be free by then, not after the next heartbeat.
The desk runs as `geofence serve` runs it (`desk.app.serve_desk`): aiohttp's test server
cancels a handler whose client went away, the engine's server does not.
"""

import asyncio
import socket
import struct
from contextlib import asynccontextmanager

from yarl import URL

from desk import events
from desk.app import serve_desk
from tests import test_desk_api
from tests.test_desk_api import (logged_in, run)

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures


class Served:
    def __init__(self, url: str):
        self.url = URL(url)
        self.host, self.port = self.url.host, self.url.port

    def make_url(self, path: str) -> URL:
        return self.url.with_path(path)


@asynccontextmanager
async def serving(settings, paths):
    """The desk served by `serve_desk` on 127.0.0.1, port 0, in this event loop."""
    urls, stopping = [], asyncio.Event()
    task = asyncio.create_task(serve_desk(settings, stopping.is_set, urls.append, paths))
    while not urls:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    try:
        yield Served(urls[0])
    finally:
        stopping.set()
        await task


async def sse_clients(session, server) -> float:
    async with session.get(server.make_url("/metrics")) as r:
        text = await r.text()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("geofence_desk_sse_clients ")))


async def settled_clients(session, server, expected: int) -> float:
    """The stream gauge once it shows `expected`, or after 4 s (well before a heartbeat)."""
    for _ in range(200):
        count = await sse_clients(session, server)
        if count == expected:
            break
        await asyncio.sleep(0.02)
    return count


async def opened(session, server):
    """A stream, its first bytes read (the desk has registered it)."""
    response = await session.get(server.make_url("/api/events"))
    assert response.status == 200, await response.text()
    assert (await asyncio.wait_for(response.content.readline(), 5)).startswith(b"retry:")
    return response


def test_closing_and_reopening_streams_at_the_limit_never_gets_429(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as tab:
            streams = [await opened(tab, server) for _ in range(events.STREAMS_PER_SESSION)]
            try:
                for _ in range(30):   # reloads: close one, open one at once
                    streams.pop(0).close()
                    streams.append(await opened(tab, server))
                for k, stream in enumerate(streams):   # every one of them at once
                    stream.close()
                    streams[k] = await opened(tab, server)
                assert await settled_clients(tab, server, events.STREAMS_PER_SESSION) == \
                    events.STREAMS_PER_SESSION   # every closed one has ended
                async with tab.get(server.make_url("/api/events")) as r:
                    assert r.status == 429   # the limit still holds for open streams
            finally:
                for stream in streams:
                    stream.close()
    run(scenario())


def test_a_quiet_stream_whose_client_went_away_frees_its_slot_without_a_write(world):
    """A client that vanishes without a word: the desk sees the closed connection while
    it has nothing to send (the heartbeat is 15 s away), and the stream ends."""
    async def scenario():
        async with serving(*world) as server, logged_in(server, "town1") as tab:
            cookie = tab.cookie_jar.filter_cookies(server.make_url("/"))["geofence_session"]
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(f"GET /api/events HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                         f"Cookie: geofence_session={cookie.value}\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            while b"retry:" not in await reader.readline():
                pass
            assert await sse_clients(tab, server) == 1
            writer.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()   # an abortive close (RST), as a crashed browser's
            assert await settled_clients(tab, server, 0) == 0
    run(scenario())
