"""A real HTTP positioning API for tests and the connector benchmark (aiohttp, port 0),
and a real ZeroMQ ROUTER that acks batches like the engine (`RouterStub`).

`GET /locate?msisdn=DEVICE` (or POST with {"msisdn": DEVICE}) answers what `behave(device,
n)` says, n being how many times this device was asked before: a `Reply` (status,
JSON document or raw bytes, headers, delay; or a body written in `pieces` with a pause
between them, as a slow provider's answer arrives). Every request is recorded with its time, so
a test can check what the connector asked for and when (after a 429, say).
"""

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import zmq
from aiohttp import web

from ingest.protocol import encode_ack


@dataclass(frozen=True)
class Reply:
    status: int = 200
    doc: object = None            # sent as JSON unless `raw` is given
    raw: bytes | None = None
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    pieces: tuple[bytes, ...] = ()   # the body in these writes (chunked), `pause_s` apart
    pause_s: float = 0.05


def position(lon: float, lat: float, t_ms: int, *, acc: float = 50.0, datum: str = "wgs84",
             source: str = "LBS") -> dict:
    """The provider's answer form the tests configure the connector to read."""
    return {"code": 0, "data": {"loc": {"lng": lon, "lat": lat}, "radius": acc,
                                "ts": t_ms, "coord": datum, "type": source}}


class FakeProvider:
    """Serves on 127.0.0.1:<port> from a thread of its own until `stop()`."""

    def __init__(self, behave, token: str | None = None):
        self.behave = behave
        self.token = token            # when set, a request without the bearer gets 401
        self.asked: Counter = Counter()
        self.log: list[tuple[float, str, int]] = []     # (monotonic s, device, status)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FakeProvider":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fake provider did not start")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/locate?msisdn={{device}}"

    def requests_for(self, device: str) -> list[tuple[float, int]]:
        return [(t, status) for t, d, status in list(self.log) if d == device]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/locate", self._answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            device = str((await request.json()).get("msisdn", ""))
        else:
            device = request.query.get("msisdn", "")
        if self.token is not None and request.headers.get("Authorization") != \
                f"Bearer {self.token}":
            self.log.append((time.monotonic(), device, 401))
            return web.Response(status=401)
        n = self.asked[device]
        self.asked[device] += 1
        reply = self.behave(device, n)
        self.log.append((time.monotonic(), device, reply.status))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.pieces:
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            response.content_type = "application/json"
            await response.prepare(request)
            for k, piece in enumerate(reply.pieces):
                if k:
                    await asyncio.sleep(reply.pause_s)
                await response.write(piece)
            await response.write_eof()
            return response
        body = reply.raw if reply.raw is not None else json.dumps(reply.doc).encode()
        return web.Response(status=reply.status, body=body, headers=reply.headers,
                            content_type="application/json")


def connector_table(url: str, **overrides) -> dict:
    """A [connect.http.NAME] table reading `position`'s answer form."""
    table = {"carrier": "fake-lbs", "url": url, "lon": "data.loc.lng", "lat": "data.loc.lat",
             "accuracy": "data.radius", "time": "data.ts", "time_format": "unix_ms",
             "source_path": "data.type", "source_names": {"GPS": "gps", "LBS": "cell"},
             "datum_path": "data.coord", "code_path": "code",
             "codes": {"0": "ok", "1001": "off", "1002": "suspended", "1003": "unreachable",
                       "2001": "error"}}
    table.update(overrides)
    return table


def toml_table(name: str, table: dict) -> str:
    """`table` as a [connect.http.NAME] TOML section (inline tables for dicts)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)
    return "\n".join([f"[connect.http.{name}]"] + [f"{k} = {value(v)}" for k, v in table.items()])


class RouterStub:
    """A real ROUTER on loopback: acks every batch, keeps them, sends locate requests.
    `acking = False`: an engine that is away (batches received and never answered)."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.batches: list[dict] = []
        self.outbox: list[bytes] = []
        self.identity = None
        self.acking = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self.sock.poll(20):
                identity, frame = self.sock.recv_multipart()
                batch = msgpack.unpackb(frame, raw=False)
                self.identity = identity
                if not self.acking:
                    continue
                self.batches.append(batch)
                fixes = batch.get("fixes", [])
                self.sock.send_multipart([identity, encode_ack(batch["batch"], "ok",
                                                               len(fixes), [])])
            while self.outbox and self.identity is not None:
                self.sock.send_multipart([self.identity, self.outbox.pop(0)])

    def rows(self) -> list[tuple[dict, list]]:
        return [(b, row) for b in list(self.batches) for row in b.get("fixes", [])]

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.ctx.term()
