"""Approval latency: from a leave's approval on the desk (HTTP 200) to the first fix
judged with the new allowed area.

Everything is real: `geofence serve` (ingest, 2 workers, dispatcher, desk; `tests.
engine_harness.Engine`) on the built-in Zaozhuang layer with a registry of `subjects`
people (100,000; quick: 3,000), each supervised by its county office with its county as
home; two desk users of the city office, one who files leaves and one who approves them
(four eyes); `[rules] return_fixes = 1`, so the first fix judged `in` after an approval
raises `zone_return` at once.

For each of `approvals` people in turn (each a different person; the destination is the
next county, so the home ∪ destination areas a live change needs are built as they come):
1. a carrier sends the person's fix from a point well inside the destination county
   every `INTERVAL_MS` (GPS, 10 m; `t` = the wall clock when sent), and the person's
   `zone_exit` is awaited on the PUB socket: they are out, without leave;
2. the clerk files the leave (`POST /api/leaves`, the window from a minute ago to two days
   ahead), the approver approves it (`POST /api/leaves/{id}/approve`); the wall clock at
   the approval's HTTP 200 is the start;
3. the person's `zone_return` arrives on the PUB socket; its triggering fix's `t` (when
   that fix was sent) is the first fix judged with the new area. Latency = that `t` -
   the start. Fixes keep coming every `INTERVAL_MS`, so the figure is accurate to it.
p50, p99 and max over all approvals; target (issue 11): p99 <= 1 s at 100,000 subjects.
"""

import http.cookiejar
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import shapely
import zmq

from benchmarks.common import Report, log
from desk.users import UserStore
from engine.config import Settings, load as load_settings
from engine.layers import load_layers
from engine.messages import decode_alarm_frames
from engine.paths import EnginePaths
from ingest.protocol import encode_rows
from tests.engine_harness import Carrier, Engine, import_registry, write_config

FULL = {"subjects": 100_000, "approvals": 100}
QUICK = {"subjects": 3_000, "approvals": 10}
INTERVAL_MS = 25
CARRIER = "cmcc"
CITY = "3704"
PASSWORD = "bench-password-1"
DAY_MS = 86_400_000
WAIT_S = 20.0


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("approval_latency", {**sizes, "interval_ms": INTERVAL_MS, "workers": 2,
                                      "layer": "built-in Zaozhuang", "return_fixes": 1})
    jurisdictions, _ = load_layers(Settings())
    counties = sorted({str(p) for p in jurisdictions.parents if p})
    inside = {c: _inside_point(jurisdictions, c) for c in counties}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, desk=True, rules={"return_fixes": 1})
        log(f"approval_latency: importing {sizes['subjects']:,} subjects")
        import_registry(config, _registry(sizes["subjects"], counties))
        paths = EnginePaths.create(load_settings(str(config)).storage.path)
        with UserStore(paths.desk_db) as users:
            users.add("clerk", CITY, PASSWORD)
            users.add("chief", CITY, PASSWORD)
        engine = Engine(config, 2)
        try:
            latencies = _measure(engine, sizes, counties, inside)
        finally:
            engine.stop()
    ms = np.array(latencies)
    group = f"{sizes['subjects']:,} subjects, {sizes['approvals']} approvals"
    rep.add(group, "approval to first fix judged in, p50", np.percentile(ms, 50), "ms")
    rep.add(group, "approval to first fix judged in, p99", np.percentile(ms, 99), "ms",
            at_most=1000)
    rep.add(group, "  max", ms.max(), "ms")
    rep.add(group, "  registry poll interval (worker)", 200, "ms")
    return rep


def _measure(engine: Engine, sizes: dict, counties: list[str], inside: dict) -> list[float]:
    settings = load_settings(str(engine.config))
    desk_url = engine.status.endpoints.desk
    clerk, chief = _Session(desk_url, "clerk"), _Session(desk_url, "chief")
    alarms = _Alarms(settings.alerts.publish)
    carrier = Carrier(engine.endpoint)
    latencies = []
    try:
        time.sleep(0.5)   # PUB is live only: let the subscription reach it
        step = max(1, sizes["subjects"] // sizes["approvals"])
        for k in range(sizes["approvals"]):
            i = k * step
            home = counties[i % len(counties)]
            destination = counties[(i + 1) % len(counties)]
            feed = _Feed(carrier, str(13_000_000_000 + i), inside[destination], batch=k << 20)
            feed.start()
            try:
                alarms.wait(f"S{i:07d}", "zone_exit")
                now = int(time.time() * 1000)
                leave = clerk.post("/api/leaves", {
                    "subject": f"S{i:07d}", "destinations": [destination],
                    "start_ms": now - 60_000, "end_ms": now + 2 * DAY_MS,
                    "reason": "benchmark"})
                chief.post(f"/api/leaves/{leave['id']}/approve", {"note": "ok"})
                approved_ms = time.time() * 1000
                back = alarms.wait(f"S{i:07d}", "zone_return")
                latencies.append(back["fix"]["t"] - approved_ms)
            finally:
                feed.stop()
            if home == destination:
                raise AssertionError("a leave to the home county measures nothing")
            if k % 10 == 9:
                log(f"approval_latency: {k + 1} approvals, last {latencies[-1]:.0f} ms")
    finally:
        carrier.close()
        alarms.close()
    return latencies


def _registry(n: int, counties: list[str]) -> dict:
    offices = [{"code": CITY, "name": "枣庄市"}] + [
        {"code": c, "name": c, "parent": CITY} for c in counties]
    return {"offices": offices,
            "subjects": [{"id": f"S{i:07d}", "devices": [str(13_000_000_000 + i)],
                          "office": counties[i % len(counties)],
                          "home": [counties[i % len(counties)]]} for i in range(n)]}


def _inside_point(layer, county: str) -> tuple[float, float]:
    """A point well inside the county: the centre of the largest inscribed circle of its
    largest township (far from every border, so a 10 m fix there is `in` or `out`)."""
    features = layer.features_under(county)
    biggest = max(features, key=lambda f: shapely.area(layer.geometries[f]))
    centre = shapely.maximum_inscribed_circle(layer.geometries[biggest]).coords[0]
    return float(centre[0]), float(centre[1])


class _Session:
    """A logged-in desk user (cookie jar), speaking JSON."""

    def __init__(self, url: str, user: str):
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.post("/api/login", {"user": user, "password": PASSWORD})

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())


class _Feed(threading.Thread):
    """One person's fixes from one place every INTERVAL_MS, until stopped."""

    def __init__(self, carrier: Carrier, device: str, point: tuple[float, float], batch: int):
        super().__init__(daemon=True)
        self.carrier, self.device, self.point, self.batch = carrier, device, point, batch
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = int(time.time() * 1000)
            self.carrier.request(encode_rows(CARRIER, self.batch, [self.device], [t],
                                             [self.point[0]], [self.point[1]], [10.0],
                                             ["gps"]))
            self.batch += 1
            self._halt.wait(INTERVAL_MS / 1000)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class _Alarms:
    """The PUB socket, read in the caller's thread: the next alarm of a subject and type."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)

    def wait(self, subject: str, kind: str) -> dict:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                _, alarm = decode_alarm_frames(self.sock.recv_multipart())
                if alarm["subject"] == subject and alarm["type"] == kind:
                    return alarm
        raise TimeoutError(f"no {kind} for {subject} within {WAIT_S:.0f} s")

    def close(self) -> None:
        self.sock.close()
