"""Locate round trip (点名, SPEC §14): from the desk's `POST /api/subjects/{id}/locate` to
the answered request, with its fix, arriving on the desk's `/api/events`.

Everything is real: `geofence serve` (ingest, 2 workers, dispatcher, desk; `tests.
engine_harness.Engine`) on the built-in Zaozhuang layer with Zaozhuang's 2,032 people
(quick: 300), each with one phone; one carrier, `ingest.carrier.CarrierClient` on a DEALER
in a thread of this process, which first sends one fix of every phone (so the engine knows
whose phones it carries), then answers each locate request it is sent with a fresh GPS fix
carrying the batch key `request`, after `CARRIER_DELAY_MS` (0: the figure is the engine's
own share; a real carrier adds its positioning time). A city officer posts a request for
one person after another (every person at most once: the per-subject rate limit holds),
and a second connection reads `/api/events`; latency = the `locate` event saying
`answered` arriving - the POST sent. p50/p99/max; target (issue 12): p99 <= 1 s plus the
carrier's own latency.
"""

import http.cookiejar
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import zmq

from benchmarks.common import Report, log
from desk.users import UserStore
from engine.config import Settings, load as load_settings
from engine.layers import load_layers
from engine.paths import EnginePaths
from ingest.carrier import CarrierClient
from ingest.protocol import encode_rows
from tests.engine_harness import Engine, import_registry, write_config

FULL = {"subjects": 2_032, "requests": 200}
QUICK = {"subjects": 300, "requests": 20}
CARRIER = "cmcc"
CARRIER_DELAY_MS = 0
CITY = "3704"
PASSWORD = "bench-password-1"
WAIT_S = 20.0
GAP_S = 0.05   # between one answered request and the next POST


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("locate_roundtrip", {**sizes, "workers": 2, "carrier_delay_ms":
                                      CARRIER_DELAY_MS, "layer": "built-in Zaozhuang"})
    jurisdictions, _ = load_layers(Settings())
    counties = sorted({str(p) for p in jurisdictions.parents if p})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, desk=True)
        with open(config, "a") as f:   # the per-user limit would stop a benchmark
            f.write("[carriers]\nlocate_user_per_hour = 100000\n")
        import_registry(config, _registry(sizes["subjects"], counties))
        paths = EnginePaths.create(load_settings(str(config)).storage.path)
        with UserStore(paths.desk_db) as users:
            users.add("patrol", CITY, PASSWORD)
        engine = Engine(config, 2)
        try:
            latencies = _measure(engine, sizes)
        finally:
            engine.stop()
    ms = np.array(latencies)
    group = f"{sizes['subjects']:,} subjects, {sizes['requests']} requests"
    rep.add(group, "POST locate to answered on /api/events, p50", np.percentile(ms, 50), "ms")
    rep.add(group, "POST locate to answered on /api/events, p99", np.percentile(ms, 99), "ms",
            at_most=1000 + CARRIER_DELAY_MS)
    rep.add(group, "  max", ms.max(), "ms")
    return rep


def _measure(engine: Engine, sizes: dict) -> list[float]:
    desk = engine.status.endpoints.desk
    officer = _Session(desk)
    events = _Events(desk, officer.jar)
    carrier = _AnsweringCarrier(engine.endpoint, sizes["subjects"])
    carrier.start()
    latencies = []
    try:
        carrier.ready.wait(60)
        events.connected.wait(30)
        time.sleep(0.5)   # the engine's device table has taken the first fixes' carrier
        step = max(1, sizes["subjects"] // sizes["requests"])
        for k in range(sizes["requests"]):
            subject = f"S{(k * step) % sizes['subjects']:05d}"
            started = time.monotonic()
            request = officer.post(f"/api/subjects/{subject}/locate", {})["request"]
            events.wait_answered(request)
            latencies.append((events.answered[request] - started) * 1000)
            if k % 20 == 19:
                log(f"locate_roundtrip: {k + 1} requests, last {latencies[-1]:.0f} ms")
            time.sleep(GAP_S)
    finally:
        carrier.stop()
        events.close()
    return latencies


def _registry(n: int, counties: list[str]) -> dict:
    offices = [{"code": CITY, "name": "枣庄市"}] + [
        {"code": c, "name": c, "parent": CITY} for c in counties]
    return {"offices": offices,
            "subjects": [{"id": f"S{i:05d}", "devices": [_device(i)],
                          "office": counties[i % len(counties)],
                          "home": [counties[i % len(counties)]]} for i in range(n)]}


def _device(i: int) -> str:
    return str(13_900_000_000 + i)


class _Session:
    """The officer (cookie jar), speaking JSON."""

    def __init__(self, url: str):
        self.url = url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.post("/api/login", {"user": "patrol", "password": PASSWORD})

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())


class _Events(threading.Thread):
    """`/api/events` read in a thread: when each request's `answered` event arrived."""

    def __init__(self, url: str, jar):
        super().__init__(daemon=True)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.response = opener.open(urllib.request.Request(
            url + "/api/events", headers={"Accept": "text/event-stream"}), timeout=120)
        self.answered: dict[str, float] = {}
        self.connected = threading.Event()
        self._changed = threading.Condition()
        self.start()

    def run(self) -> None:
        self.connected.set()
        kind = None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "locate":
                    document = json.loads(line[5:])
                    if document.get("state") == "answered" and document.get("fix"):
                        with self._changed:
                            self.answered.setdefault(document["request"], time.monotonic())
                            self._changed.notify_all()
                elif not line:
                    kind = None
        except (OSError, ValueError):   # closed by close()
            pass

    def wait_answered(self, request: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: request in self.answered, WAIT_S):
                raise TimeoutError(f"locate request {request} not answered on /api/events "
                                   f"within {WAIT_S:.0f} s")

    def close(self) -> None:
        self.response.close()


class _AnsweringCarrier(threading.Thread):
    """The carrier: one fix of every phone, then an answer to every request it is sent."""

    def __init__(self, endpoint: str, subjects: int):
        super().__init__(daemon=True)
        self.endpoint, self.subjects = endpoint, subjects
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        batch = 0
        with CarrierClient(ctx, self.endpoint, CARRIER, timeout_ms=5000) as client:
            now = int(time.time() * 1000)
            devices = [_device(i) for i in range(self.subjects)]
            client.send(encode_rows(CARRIER, batch, devices, [now] * len(devices),
                                    [117.32] * len(devices), [34.81] * len(devices),
                                    [1500.0] * len(devices), ["cell"] * len(devices)), batch)
            client.drain()
            self.ready.set()
            while not self._halt.is_set():
                client.idle(0.002)
                for request in client.take_locate_requests():
                    if CARRIER_DELAY_MS:
                        client.idle(CARRIER_DELAY_MS / 1000)
                    batch += 1
                    t = int(time.time() * 1000)
                    client.send(encode_rows(CARRIER, batch, [request["device"]], [t], [117.32],
                                            [34.81], [8.0], ["gps"],
                                            request=request["request"]), batch)
            client.drain()
        ctx.term()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
