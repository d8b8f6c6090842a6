"""A leave approved on the desk changes what the running engine judges (SPEC §12).

End to end through real processes: `geofence serve` with its desk, a carrier sending
fixes over the wire protocol, the leave filed by a township officer and approved by the
county over HTTP. A subject's fixes in another county raise zone_exit without a leave
(subject A) and nothing with an approved one (subject B); after `close` (销假) B's next
fixes out there raise zone_exit.

"Nothing" needs to know that the worker judged B's fixes with the approval in hand,
without asserting a time: after the approval a registry import moves a third subject's
(M's) home away, so M's fixes at its old home raise zone_exit only in a registry at least
that new. B's fixes are sent after M's exit is seen, and B's silence is read once every
fix sent has been evaluated.
"""

import asyncio
import io
import time

import aiohttp
import numpy as np
import shapely

from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, import_registry, population_document, \
    write_config
from tests.test_engine_alarms import all_alarms

PASSWORD = "correct horse"
DAY_MS = 86_400_000
WAIT_S = 60


def place_in(layer: Layer, code: str) -> tuple[float, float]:
    area = shapely.union_all(layer.geometries[layer.features_under(code)])
    point = area.representative_point()
    return point.x, point.y


def wait_until(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def exits_of(engine: Engine, subject: str) -> list[dict]:
    return [a for a in all_alarms(engine) if a["subject"] == subject and a["type"] == "zone_exit"]


async def desk_call(url: str, user: str, method: str, path: str, body=None):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{url}/api/login", json={"user": user, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
        async with http.request(method, f"{url}{path}", json=body) as r:
            return r.status, await r.json()


def call(url, user, method, path, body=None):
    return asyncio.run(desk_call(url, user, method, path, body))


def keep_sending(carrier, send, batch: int, subject: dict, t_ms: int, where, seen, what: str,
                 timeout_s: float = WAIT_S) -> int:
    """Send `subject`'s fixes at `where` two at a time, one second apart in event time from
    `t_ms` on (never ahead of the wall clock), until `seen()`: the engine picks a registry
    change up within about a second, and a fix judged before that is judged as before.
    The next free batch number."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        wait_until(lambda: time.time() * 1000 > t_ms + 2000, "the fixes' times to pass")
        send(carrier, batch, [(subject, t_ms, where), (subject, t_ms + 1000, where)])
        batch, t_ms = batch + 1, t_ms + 2000
        give_up = time.monotonic() + 2
        while time.monotonic() < give_up:
            if seen():
                return batch
            time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_an_approved_leave_allows_the_destination_until_it_is_closed(tmp_path, monkeypatch):
    doc = population_document(20, seed=3)
    normal = [s for s in doc["subjects"] if s["risk"] == "normal" and not s.get("exclusions")]
    a, b, m = normal[:3]
    counties = sorted({o["code"] for o in doc["offices"] if o["parent"] == "3704"})
    away = next(c for c in counties if c not in a["home"] + b["home"] + m["home"])
    parent = {o["code"]: o["parent"] for o in doc["offices"]}
    config = write_config(tmp_path, desk=True)
    import_registry(config, doc)
    for name, office in (("town", b["office"]), ("county", parent[b["office"]])):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        assert cli(["--config", str(config), "user", "add", name, "--office", office]) == 0

    layer = Layer.from_geojson(zaozhuang_geojson())
    there = place_in(layer, away)
    m_home = place_in(layer, m["home"][0])
    sent = 0

    def send(carrier, batch, fixes):
        """fixes: (subject, t_ms, (lon, lat)); the ack says stored."""
        nonlocal sent
        devices = [s["devices"][0] for s, _, _ in fixes]
        lon, lat = np.array([p for _, _, p in fixes]).T
        ack = carrier.request(encode_cols("cmcc", batch, devices, [t for _, t, _ in fixes],
                                          lon, lat, np.full(len(fixes), 20.0)))
        assert ack is not None and ack["status"] == "ok", ack
        sent += len(fixes)

    engine = Engine(config)
    carrier = Carrier(engine.endpoint)
    try:
        url = engine.status.endpoints.desk
        now = int(time.time() * 1000)
        status, leave = call(url, "town", "POST", "/api/leaves", {
            "subject": b["id"], "destinations": [away], "start_ms": now - 3_600_000,
            "end_ms": now + 2 * DAY_MS, "reason": "探亲"})
        assert status == 201, leave
        status, approved = call(url, "county", "POST", f"/api/leaves/{leave['id']}/approve",
                                {"note": "同意"})
        assert (status, approved["status"]) == (200, "approved"), approved

        # the marker: M's home moves to `away` in a registry newer than the approval
        import_registry(config, {"subjects": [{**m, "home": [away]}]})
        t0 = now - 600_000
        send(carrier, 1, [(a, t0, there), (a, t0 + 1000, there)])
        wait_until(lambda: exits_of(engine, a["id"]), "A's zone_exit without a leave")
        batch = keep_sending(carrier, send, 2, m, t0 + 2000, m_home,
                             lambda: exits_of(engine, m["id"]), "M's zone_exit (the marker)")

        send(carrier, batch, [(b, t0 + 60_000 * k, there) for k in range(3)])
        wait_until(lambda: engine.evaluated_fixes() >= sent, "every fix evaluated")
        assert [x for x in all_alarms(engine) if x["subject"] == b["id"]] == []

        status, closed = call(url, "town", "POST", f"/api/leaves/{leave['id']}/close",
                              {"note": "已返回报到"})
        assert (status, closed["status"]) == (200, "closed"), closed
        after = closed["closed_ms"] + 1000
        keep_sending(carrier, send, batch + 1, b, after, there,
                     lambda: exits_of(engine, b["id"]), "B's zone_exit after close")
        exit_b = exits_of(engine, b["id"])
    finally:
        carrier.close()
        engine.stop()
    assert exit_b[0]["t"] >= after
