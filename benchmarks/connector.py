"""Connector: what the HTTP pull connector delivers per second, and what it costs.

Set-up: a fake positioning API (aiohttp, `tests.fake_provider`) and a ZeroMQ ROUTER that
acks every batch like the engine's ingest, both in one child process (one core); the
connector (`connect.runner.Connector`: its asyncio askers and its carrier-client thread)
in this process (the other core). SUBJECTS subjects of the built-in Zaozhuang layer, one
phone each, are polled every second, more than the connector can ask for, so it runs
flat out. The provider answers after LATENCY_S with a seeded mix: 2 % HTTP 503, 1 % a
phone that is off (a status row), 1 % a malformed answer, the rest a GCJ-02 position.
After a warm-up, for MEASURE_S seconds: rows the ROUTER acknowledged per second
(positions and states), requests per second, requests per row delivered (the 503s are
asked again, the malformed answers are lost) and the connector process's CPU.

Cost, computed from the default schedule (`HttpConnector` defaults: strict or key every
5 min, normal 15, loose 60) for a stated mix of levels: requests per day per 1,000
subjects, and the same times the measured requests per row (what the billing sees when
the provider fails as above).
"""

import asyncio
import multiprocessing as mp
import resource
import tempfile
import threading
import time
import zlib

from benchmarks.common import Report, log

SEED = 20261203
QUICK = {"subjects": 2_000, "warm_up_s": 2.0, "measure_s": 5.0}
FULL = {"subjects": 20_000, "warm_up_s": 5.0, "measure_s": 20.0}
LATENCY_S = 0.02
CONCURRENCY = 64
# Supervision levels of a community-corrections population (assumed: most are 普管;
# 严管 and 宽管 a minority), and key persons among each level.
LEVEL_MIX = {"strict": 0.10, "normal": 0.75, "loose": 0.15}
KEY_SHARE = 0.05
DAY_S = 86_400


def _behave(device: str, n: int):
    from tests.fake_provider import Reply, position

    draw = zlib.crc32(f"{SEED}:{device}:{n}".encode()) % 1000
    if draw < 20:
        return Reply(503, delay_s=LATENCY_S)
    if draw < 30:
        return Reply(doc={"code": 1001}, delay_s=LATENCY_S)
    if draw < 40:
        return Reply(raw=b"<html>busy</html>", delay_s=LATENCY_S)
    return Reply(doc=position(117.55, 34.86, int(time.time() * 1000) - 1000, datum="gcj02"),
                 delay_s=LATENCY_S)


def _fakes(pipe) -> None:
    """Child process: the provider and the acking ROUTER until told to stop."""
    from tests.fake_provider import FakeProvider, RouterStub

    provider = FakeProvider(_behave).start()
    router = RouterStub()
    pipe.send((provider.url, router.endpoint))
    pipe.recv()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send({"requests": len(provider.log), "rows": len(router.rows()),
               "cpu_s": usage.ru_utime + usage.ru_stime})
    router.close()
    provider.stop()


def run(quick: bool) -> Report:
    from connect.config import parse_connectors
    from connect.runner import Connector
    from tests.fake_provider import connector_table

    sizes = QUICK if quick else FULL
    n = sizes["subjects"]
    rep = Report("connector", {"seed": SEED, **sizes, "provider_latency_ms": LATENCY_S * 1000,
                               "concurrency": CONCURRENCY, "poll_every_s": 1,
                               "provider_mix": "2% 503, 1% off, 1% malformed, 96% GCJ-02 fix"})
    spawn = mp.get_context("spawn")
    ours, theirs = spawn.Pipe()
    child = spawn.Process(target=_fakes, args=(theirs,), daemon=True)
    child.start()
    try:
        url, endpoint = ours.recv()
        with tempfile.TemporaryDirectory() as tmp:
            registry_db = _registry(f"{tmp}/registry.sqlite", n)
            config = parse_connectors({"bench": connector_table(
                url, every_normal_s=1, every_strict_s=1, every_loose_s=1, every_key_s=1,
                concurrency=CONCURRENCY, backoff_first_s=0.2, timeout_s=5.0)})["bench"]
            connector = Connector(config, endpoint, registry_db, env={})
            figures = _measure(connector, sizes["warm_up_s"], sizes["measure_s"])
        ours.send("stop")
        totals = ours.recv()
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    group = f"{n:,} phones due every second, 2 cores"
    rep.add(group, "rows delivered (acked) per second", figures["rows_per_s"], "rows/s")
    rep.add(group, "  of which positions per second", figures["positions_per_s"], "fixes/s")
    rep.add(group, "requests per second", figures["requests_per_s"], "req/s")
    rep.add(group, "requests per row delivered", figures["requests_per_row"], "req/row")
    rep.add(group, "connector process CPU", figures["cpu_cores"], "cores")
    rep.add(group, "fake provider and ROUTER process CPU, whole run", totals["cpu_s"], "s")
    rep.add(group, "rows the ROUTER acked, whole run", totals["rows"], "rows")
    rep.add(group, "requests the provider answered, whole run", totals["requests"], "req")
    per_subject = _default_requests_per_subject_day(config)
    rep.add("cost at the default schedule", "requests per day per 1,000 subjects",
            per_subject * 1000, "req/day")
    rep.add("cost at the default schedule", "  with the measured requests per row",
            per_subject * 1000 * figures["requests_per_row"], "req/day")
    rep.notes.append("level mix: " + ", ".join(f"{k} {v:.0%}" for k, v in LEVEL_MIX.items())
                     + f"; key persons {KEY_SHARE:.0%} of each level (every 5 min)")
    return rep


def _default_requests_per_subject_day(config) -> float:
    from connect.config import HttpConnector

    default = HttpConnector("default", config.carrier, config.url)
    return sum(share * DAY_S * ((1 - KEY_SHARE) / default.every_s(level, False)
                                + KEY_SHARE / default.every_s(level, True))
               for level, share in LEVEL_MIX.items())


def _registry(path: str, n: int) -> str:
    from alerts.registry import RegistryStore
    from benchmarks.registry_change import national_registry
    from engine.config import Settings
    from engine.layers import code_checkers, load_layers

    jurisdictions, zones = load_layers(Settings())
    counties = sorted({str(p) for p in jurisdictions.parents if p})
    store = RegistryStore(path)
    doc = national_registry(n, counties)
    doc["permits"] = []
    store.import_document(doc, *code_checkers(jurisdictions, zones))
    store.close()
    return path


def _measure(connector, warm_up_s: float, measure_s: float) -> dict:
    stopping = []
    ready = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(connector.run(
        lambda: bool(stopping), ready.set)), daemon=True)
    thread.start()
    ready.wait(60)
    log(f"connector: warming up {warm_up_s:g} s")
    time.sleep(warm_up_s)
    before, cpu0, t0 = _counts(connector), _cpu_s(), time.monotonic()
    log(f"connector: measuring {measure_s:g} s")
    time.sleep(measure_s)
    after, cpu1, t1 = _counts(connector), _cpu_s(), time.monotonic()
    stopping.append(1)
    thread.join(60)
    wall = t1 - t0
    delta = {k: after[k] - before[k] for k in after}
    return {"rows_per_s": delta["rows"] / wall, "positions_per_s": delta["positions"] / wall,
            "requests_per_s": delta["requests"] / wall,
            "requests_per_row": delta["requests"] / max(delta["rows"], 1),
            "cpu_cores": (cpu1 - cpu0) / wall}


def _counts(connector) -> dict:
    registry, name = connector.metrics.registry, connector.config.name

    def value(metric, **labels):
        return registry.get_sample_value(metric, {"connector": name, **labels}) or 0.0

    requests = sum(s.value for m in registry.collect() if m.name == "geofence_connect_requests"
                   for s in m.samples if s.name.endswith("_total"))
    return {"rows": value("geofence_connect_rows_accepted_total"),
            "positions": value("geofence_connect_answers_sent_total", kind="position"),
            "requests": requests}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
