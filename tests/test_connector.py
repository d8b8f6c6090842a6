"""The HTTP pull connector (SPEC §14): config, answer mapping, schedule, budget, back-off,
and the whole loop against a real HTTP provider (aiohttp on port 0), a real ZeroMQ ROUTER
that acks like the engine, and a real engine (one start) whose store must hold the fixes.
"""

import json
import math
import threading
import time
import urllib.request

import numpy as np
import pytest
from hypothesis import strategies as st

from connect.budget import Backoff, BudgetFile, DailyBudget
from connect.config import ConnectConfigError, HttpConnector, parse_connectors
from connect.mapping import MISSING, build_request, map_answer, parse_retry_after, read_path
from connect.runner import Connector, engine_endpoint
from connect.schedule import PollSchedule
from engine.config import ConfigError, from_mapping
from ingest.protocol import STATE0, encode_locate
from tests.fake_provider import (FakeProvider, Reply, RouterStub, connector_table, position,
                                 toml_table)

T0_MS = 1_788_000_000_000
# Zaozhuang (枣庄): a GCJ-02 answer lies a few hundred metres from its WGS-84 point.
LON, LAT = 117.55, 34.86
COUNTY = "370405"


def registry_document(devices: dict[str, tuple[str, str]]) -> dict:
    """Subjects S0.. with one device each: device -> (level, risk)."""
    offices = [{"code": "3704", "name": "枣庄市司法局"},
               {"code": COUNTY, "name": "司法局", "parent": "3704"}]
    subjects = [{"id": f"S{k}", "devices": [device], "office": COUNTY, "home": [COUNTY],
                 "level": level, "risk": risk}
                for k, (device, (level, risk)) in enumerate(devices.items())]
    return {"offices": offices, "subjects": subjects}


def _import(path, document) -> None:
    from alerts.registry import RegistryStore
    from engine.config import Settings
    from engine.layers import code_checkers, load_layers

    store = RegistryStore(path)
    store.import_document(document, *code_checkers(*load_layers(Settings())))
    store.close()


def registry_store(path, devices):
    """A registry file holding `registry_document(devices)`; its path."""
    _import(path, registry_document(devices))
    return path


# -- config -----------------------------------------------------------------------------


def test_config_reports_every_problem_and_never_a_credential():
    raw = {"connect": {"http": {
        "amap": {"carrier": "amap", "url": "https://lbs.example/l?d={device}&key=SEKRIT1",
                 "lon": "data.lon", "lat": "data..lat", "headers": {"X-Key": 123},
                 "every_strict_s": 0, "datum": "gcj", "colour": "red",
                 "statuses": {"99": "off"}, "codes": {"7": "maybe"}},
        "bare": {"url": "ftp://x"}}}}
    with pytest.raises(ConfigError) as e:
        from_mapping(raw, "t.toml")
    text = str(e.value)
    for expected in ('connector "amap": unknown key "colour"', "lat must be a dotted JSON path",
                     "every_strict_s must be a whole number in 1..", "datum must be one of",
                     '"99": must be an HTTP status', '"7": must be one of ok, off',
                     'headers "X-Key": must be one line of text',
                     'connector "bare": carrier is missing', 'connector "bare": lon is missing',
                     "url must be an http:// or https:// URL"):
        assert expected in text
    assert "SEKRIT1" not in text and "123" not in text
    assert len(e.value.problems) == 12   # and: bare has no {device}


def test_config_defaults_and_environment():
    settings = from_mapping({"connect": {"http": {"lbs": {
        "carrier": "cmcc-lbs", "url": "https://lbs.example/v1?msisdn={device}&k=${LBS_KEY}",
        "lon": "result[0].x", "lat": "result[0].y", "headers": {"Authorization": "Bearer ${TOK}"},
        "method": "POST", "body": '{"phone": "{device}", "app": "${TOK}"}'}}}}, "t.toml")
    c = settings.connect.http["lbs"]
    assert isinstance(c, HttpConnector)
    assert (c.every_s("strict", False), c.every_s("normal", False), c.every_s("loose", False),
            c.every_s("loose", True), c.every_s("normal", True)) == (300, 900, 3600, 300, 300)
    assert "LBS_KEY" not in repr(c) and "Bearer" not in repr(c)
    with pytest.raises(ConnectConfigError) as e:
        Connector(c, "tcp://127.0.0.1:1", None, env={"TOK": "t0k"})
    assert str(e.value) == 'connector "lbs": environment variable LBS_KEY is not set'
    request = build_request(c, '1380"0', {"TOK": "t0k", "LBS_KEY": "k&y"})
    assert request.url == "https://lbs.example/v1?msisdn=1380%220&k=k&y"
    assert request.headers["Authorization"] == "Bearer t0k"
    assert json.loads(request.body) == {"phone": '1380"0', "app": "t0k"}
    with pytest.raises(ConnectConfigError, match='body is sent with method = "POST" only'):
        parse_connectors({"x": {"carrier": "x", "url": "http://h/{device}", "lon": "a",
                                "lat": "b", "body": "{}"}})
    with pytest.raises(ConnectConfigError, match=r"url \(or body\) must hold the \{device\}"):
        parse_connectors({"x": {"carrier": "x", "url": "http://h/", "lon": "a", "lat": "b"}})
    posted = parse_connectors({"x": {"carrier": "x", "url": "http://h/", "lon": "a", "lat": "b",
                                     "method": "POST", "body": '{"m": "{device}"}'}})["x"]
    assert build_request(posted, "139", {}).body == b'{"m": "139"}'


def test_engine_endpoint_defaults_to_the_ingest_bind_on_loopback():
    c = parse_connectors({"x": connector_table("http://h/{device}")})["x"]
    assert engine_endpoint(c, "tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert engine_endpoint(c, "tcp://127.0.0.1:6000") == "tcp://127.0.0.1:6000"


# -- reading answers ----------------------------------------------------------------------


def test_read_path():
    doc = {"data": {"loc": {"lon": 1.5}}, "result": [{"x": 2}, {"x": 3}], "n": None}
    assert read_path(doc, "data.loc.lon") == 1.5
    assert read_path(doc, "result[1].x") == 3
    assert read_path([{"a": 1}], "[0].a") == 1
    for missing in ("data.loc.lat", "result[2].x", "data[0]", "result.x", "n.x"):
        assert read_path(doc, missing) is MISSING


def _connector(url: str = "http://h/{device}", **overrides) -> HttpConnector:
    return parse_connectors({"t": connector_table(url, **overrides)})["t"]


@pytest.mark.parametrize("status, doc, expected", [
    (200, position(LON, LAT, T0_MS, datum="gcj02", source="GPS"),
     ("position", LON, LAT, 50.0, T0_MS, "gps", "gcj02", None)),
    (200, {"code": 1001}, ("state", None, None, None, 99, None, "wgs84", "off")),
    (200, {"code": 1002}, ("state", None, None, None, 99, None, "wgs84", "suspended")),
    (200, {"code": 2001}, ("error",) + (None,) * 7),
    (200, {"code": 77}, ("error",) + (None,) * 7),                       # unknown code
    (200, {"code": 0, "data": {"loc": {"lng": "x"}}}, ("malformed",) + (None,) * 7),
    (200, {"code": 0, "data": {"loc": {"lng": 1, "lat": 2}, "ts": "soon"}},
     ("malformed",) + (None,) * 7),
    (200, [1, 2], ("malformed",) + (None,) * 7),
    (503, None, ("retry",) + (None,) * 7),
    (404, None, ("error",) + (None,) * 7),
])
def test_map_answer(status, doc, expected):
    answer = map_answer(_connector(), status, json.dumps(doc).encode(), 99)
    kind, lon, lat, acc, t_ms, src, datum, state = expected
    assert answer.kind == kind
    if kind == "position":
        assert (answer.lon, answer.lat, answer.acc_m, answer.t_ms, answer.src,
                answer.datum) == (lon, lat, acc, t_ms, src, datum)
    if kind == "state":
        assert (answer.state, answer.t_ms) == (state, t_ms)


def test_map_answer_statuses_time_formats_and_garbage():
    c = _connector(statuses={"404": "unreachable", "410": "suspended", "502": "error"},
                   time="data.at", time_format="rfc3339", accuracy="")
    assert map_answer(c, 404, b"", 5).state == "unreachable"
    assert map_answer(c, 410, b"", 5).state == "suspended"
    assert map_answer(c, 502, b"", 5).kind == "error"
    ok = map_answer(c, 200, json.dumps({"code": 0, "data": {
        "loc": {"lng": "117.5", "lat": 34.8}, "at": "2026-12-03T08:00:00+08:00",
        "coord": "GCJ-02", "type": "WIFI?"}}).encode(), 5)
    assert (ok.kind, ok.t_ms, ok.lon, ok.datum, ok.src) == (
        "position", 1_796_256_000_000, 117.5, "gcj02", None)
    assert math.isnan(ok.acc_m)
    naive = json.dumps({"code": 0, "data": {"loc": {"lng": 1, "lat": 2},
                                            "at": "2026-12-03T08:00:00", "coord": "wgs84"}})
    assert map_answer(c, 200, naive.encode(), 5).kind == "malformed"
    for garbage in (b"\xff\xfe", b"{" * 100_000, b"nan", b'{"code": 0, "data": 1}'):
        assert map_answer(c, 200, garbage, 5).kind == "malformed"
    limited = map_answer(c, 429, b"", 5, retry_after="7")
    assert (limited.kind, limited.retry_after_s) == ("rate_limited", 7.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_numbers_past_floats_range_and_odd_retry_after_are_read_not_raised():
    huge = int("9" * 400)   # a JSON integer float() cannot hold (math.isfinite overflowed)
    for path in (("data", "loc", "lng"), ("data", "ts"), ("data", "radius")):
        doc = position(LON, LAT, T0_MS)
        _place(doc, path, huge)
        assert map_answer(_connector(), 200, json.dumps(doc).encode(), 5).kind == "malformed"
    for odd, expected in (("\u00b2", None), ("\u0661\u0662", None), ("9" * 5000, 86_400.0),
                          ("86401", 86_400.0), ("1 Jan 99999999999999999999 00:00:00 GMT", None),
                          ("Mon, 99 Jan 2020 00:00:00 GMT", None)):
        for status in (429, 503):
            answer = map_answer(_connector(), status, b"", 5, retry_after=odd)
            assert answer.retry_after_s == expected, odd[:20]
            assert answer.kind == ("rate_limited" if status == 429 else "retry")


_PATHS = {"code": ("code",), "lon": ("data", "loc", "lng"), "lat": ("data", "loc", "lat"),
          "accuracy": ("data", "radius"), "time": ("data", "ts"), "source": ("data", "type"),
          "datum": ("data", "coord")}
_JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
                 | st.integers(min_value=10**300, max_value=10**600)
                 | st.integers(min_value=-10**600, max_value=-10**300)
                 | st.text(max_size=30)
                 | st.sampled_from(["0", "1001", "117.5", "-0", "1e999", "nan", "GCJ-02", "LBS",
                                    "2026-12-03T08:00:00+08:00", "0001-01-01T00:00:00+14:00",
                                    "9999-12-31T23:59:59-12:00", "\u00b2", "1_000"]))
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                            max_leaves=6)


def _place(doc: dict, path: tuple, value) -> None:
    """`value` at `path` in `doc` (no path is another's prefix: the dicts on the way stay)."""
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


@pytest.mark.parametrize("time_format", ["unix_ms", "unix_s", "rfc3339"])
def test_map_answer_never_raises_whatever_the_provider_puts_at_its_paths(time_format):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hst

    from connect.mapping import KINDS

    connector = _connector(time_format=time_format)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hst.dictionaries(hst.sampled_from(sorted(_PATHS)), _JSON_VALUES),
           hst.sampled_from([200, 200, 200, 404, 429, 503]),
           hst.none() | hst.text(max_size=40) | hst.just("9" * 5000))
    def check(values, status, retry_after):
        doc = {"code": 0}
        for name, value in values.items():
            _place(doc, _PATHS[name], value)
        body = json.dumps(doc).encode()            # NaN and Infinity too: json.loads reads them
        answer = map_answer(connector, status, body, 5, retry_after)
        assert answer.kind in KINDS
        if answer.kind == "position":
            assert math.isfinite(answer.lon) and math.isfinite(answer.lat)

    check()


# -- schedule, budget, back-off -----------------------------------------------------------


def _registry(subjects, version=1):
    """A registry snapshot (`alerts.registry.Registry`) of (id, devices, level, risk, ended)."""
    from alerts.registry import Registry, Subject

    return Registry(subjects={sid: Subject(sid, tuple(devices), COUNTY, (COUNTY,), level=level,
                                           risk=risk, ended_ms=ended)
                              for sid, devices, level, risk, ended in subjects},
                    version=version)


def test_schedule_per_level_and_key_and_prefixes():
    c = _connector(every_strict_s=10, every_normal_s=30, every_loose_s=100, every_key_s=5)
    schedule = PollSchedule(c.every_s, prefixes=("139",))
    schedule.update(_registry([("a", ["13900000001"], "strict", "normal", None),
                               ("b", ["13900000002"], "loose", "key", None),
                               ("c", ["13900000003"], "loose", "normal", None),
                               ("d", ["13800000004"], "normal", "normal", None),
                               ("e", ["13900000005"], "normal", "normal", 1)]), 1.0)
    assert len(schedule) == 3          # d: another prefix; e: supervision ended
    polls = []
    for second in range(1, 201):
        for device in schedule.due(float(second), 100):
            polls.append(device)
            schedule.polled(device, float(second))
    counts = {d: polls.count(d) for d in set(polls)}
    assert counts == {"13900000001": 20, "13900000002": 40, "13900000003": 2}
    # a level change is taken at once: loose -> strict polls within the new interval
    schedule.update(_registry([("c", ["13900000003"], "strict", "normal", None)], 2), 201.0)
    assert len(schedule) == 1 and schedule.due(211.0, 10) == ["13900000003"]


def test_budget_stops_polls_keeps_a_desk_reserve_and_renews_daily():
    budget = DailyBudget(limit=5, reserve=2)
    day = 1_796_227_200.0            # 2026-12-03 00:00 UTC+8
    assert [budget.take(day + k, desk=False) for k in range(6)] == [True] * 5 + [False]
    assert budget.remaining(day + 10) == 0
    assert [budget.take(day + 11, desk=True) for _ in range(3)] == [True, True, False]
    assert budget.renews_at(day + 11) == day + 86_400
    assert budget.take(day + 86_400, desk=False) and budget.remaining(day + 86_400) == 4
    warn = DailyBudget(limit=10)
    seen = []
    for k in range(10):
        warn.take(day, desk=False)
        seen.append(warn.warning_due(day))
    assert seen == [False] * 7 + [True, False, False]
    assert DailyBudget(0).take(day, False) and DailyBudget(0).remaining(day) == math.inf


def test_budget_file_keeps_the_days_count_across_restarts(tmp_path):
    day = 1_796_227_200.0
    first = DailyBudget(limit=10)
    for _ in range(4):
        first.take(day, desk=False)
    file = BudgetFile(tmp_path / "connect-t.budget.json")
    file.save(*first.state(day))
    again = DailyBudget(limit=10)
    again.restore(*file.load(), day + 60)
    assert again.remaining(day + 60) == 6
    tomorrow = DailyBudget(limit=10)
    tomorrow.restore(*file.load(), day + 86_400)
    assert tomorrow.remaining(day + 86_400) == 10
    for garbage in ("", "{", '{"day": "x", "spent": 1}', '{"day": 1, "spent": -5}', "[]"):
        file.path.write_text(garbage)
        assert file.load() is None


def test_backoff_holds_after_failures_in_a_row_or_a_429_and_honours_retry_after():
    b = Backoff(1.0, 8.0, seed=1)
    waits = [b.failed(100.0) for _ in range(7)]
    assert waits[:2] == [0.0, 0.0]              # isolated failures hold nobody back
    assert all(0.8 * c <= w <= c for w, c in zip(waits[2:], (1, 2, 4, 8, 8)))
    b.succeeded()
    assert b.failed(200.0) == 0.0
    assert b.failed(200.0, rate_limited=True, retry_after_s=60) == 60
    assert b.wait_s(200.0) == 60
    b.succeeded()
    assert 0.8 <= b.failed(300.0, rate_limited=True) <= 1.0   # a 429 holds at once


# -- the loop, against a provider and a ROUTER that acks like the engine ---------------------


def wait_until(condition, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A Connector in a thread (asyncio.run), stopped on exit."""

    def __init__(self, connector: Connector):
        import asyncio

        self.connector = connector
        self.stopping = False
        self.ready = threading.Event()
        self.error = None

        def run():
            try:
                asyncio.run(connector.run(lambda: self.stopping, self.ready.set))
            except BaseException as e:   # shown by __exit__
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        return self.connector

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def sample(connector: Connector, name: str, **labels) -> float:
    from prometheus_client import REGISTRY  # noqa: F401  (the connector has its own)

    value = connector.metrics.registry.get_sample_value(name, {"connector": "t", **labels})
    return value or 0.0


def test_locate_requests_go_first_name_their_request_and_use_the_desk_reserve(tmp_path):
    devices = {f"1390000000{k}": ("normal", "normal") for k in range(4)}
    registry = registry_store(tmp_path / "registry.sqlite", devices)
    provider = FakeProvider(lambda device, n: Reply(doc=position(LON, LAT, T0_MS + n),
                                                    delay_s=0.01)).start()
    router = RouterStub()
    config = _connector(url=provider.url, every_normal_s=1, daily_budget=6, desk_reserve=1,
                        concurrency=2)
    budget_file = BudgetFile(tmp_path / "connect-t.budget.json")
    connector = Connector(config, router.endpoint, registry, env={}, idle_batch_s=0.5,
                          budget_file=budget_file)
    try:
        with Running(connector):
            wait_until(lambda: sum(provider.asked.values()) >= 6, what="the daily budget used")
            wait_until(lambda: sample(connector, "geofence_connect_skipped_total",
                                      why="budget") > 0, what="a poll refused by the budget")
            assert sum(provider.asked.values()) == 6          # polling stopped at the budget
            assert sample(connector, "geofence_connect_budget_remaining") == 0
            router.outbox += [encode_locate("L-unsure", "13900000001", "unsure"),
                              encode_locate("L-desk", "13900000002", "desk")]
            wait_until(lambda: any(b.get("request") == "L-desk" for b in router.batches),
                       what="the desk's answer")
            wait_until(lambda: sample(connector, "geofence_connect_skipped_total",
                                      why="locate_budget") == 1, what="the unsure refused")
            assert sample(connector, "geofence_connect_locate_requests_total",
                          reason="unsure") == 1
            assert sum(provider.asked.values()) == 7          # the reserve: desk only
            answer = [b for b in router.batches if b.get("request") == "L-desk"][0]
            assert [row[0] for row in answer["fixes"]] == ["13900000002"]
            assert answer["carrier"] == "fake-lbs"
            assert not any(b.get("request") == "L-unsure" for b in router.batches)
            wait_until(lambda: sample(connector, "geofence_connect_rows_accepted_total") == 7,
                       what="every answer acked")
            last = router.batches[-1]["batch"]   # idle from now on: an empty batch comes
            wait_until(lambda: any(b["fixes"] == [] and b["batch"] > last
                                   for b in router.batches), what="an idle batch")
            assert router.batches[0]["fixes"] == []     # the hello
    finally:
        router.close()
        provider.stop()
    assert sorted(b["batch"] for b in router.batches) == [b["batch"] for b in router.batches]
    assert budget_file.load()[1] == 7          # saved at stop: a restart spends no more


def test_locate_requests_jump_the_queue_of_scheduled_polls(tmp_path):
    import asyncio

    devices = {f"139000001{k:02d}": ("strict", "normal") for k in range(40)}
    registry = registry_store(tmp_path / "registry.sqlite", devices)
    config = _connector(url="http://127.0.0.1:9/{device}", every_strict_s=1, concurrency=4)
    connector = Connector(config, "tcp://127.0.0.1:9", registry, env={})

    async def queued():
        connector._jobs = asyncio.PriorityQueue()
        connector.plan(1000.0)                 # the registry read: 40 devices
        assert connector.plan(1002.0) == 8     # due, but only what the askers can take
        connector._take_locate({"request": "L1", "device": "13800000000", "reason": "desk"})
        connector._take_locate({"request": "L2", "device": "13800000001", "reason": "unsure"})
        return [connector._jobs.get_nowait()[2] for _ in range(connector._jobs.qsize())]

    jobs = asyncio.run(queued())
    assert [j.request for j in jobs[:2]] == ["L1", "L2"]
    assert all(j.request is None for j in jobs[2:]) and len(jobs) == 10


def test_provider_errors_back_off_retry_after_is_honoured_and_bad_answers_are_counted(tmp_path):
    devices = {"13900000011": ("strict", "normal"), "13900000012": ("strict", "normal"),
               "13900000013": ("strict", "normal")}
    registry = registry_store(tmp_path / "registry.sqlite", devices)

    def behave(device, n):
        if device == "13900000014":
            return Reply(doc=position(LON, LAT, T0_MS + n))
        if device == "13900000011":   # 5xx twice, then fine
            return Reply(503) if n < 2 else Reply(doc=position(LON, LAT, T0_MS + n))
        if device == "13900000012":   # 429 with Retry-After: 1 once
            return Reply(429, headers={"Retry-After": "1"}) if n == 0 else \
                Reply(doc=position(LON, LAT, T0_MS + n))
        return Reply(raw=b"<html>gateway</html>")   # malformed, always

    provider = FakeProvider(behave, token="t0k").start()
    router = RouterStub()
    config = _connector(url=provider.url, every_strict_s=2, backoff_first_s=0.05,
                        backoff_max_s=0.2, headers={"Authorization": "Bearer ${T}"})
    connector = Connector(config, router.endpoint, registry, env={"T": "t0k"})
    try:
        with Running(connector):
            wait_until(lambda: {row[0] for _, row in router.rows()} >=
                       {"13900000011", "13900000012"}, what="fixes after errors")
            wait_until(lambda: sample(connector, "geofence_connect_requests_total",
                                      outcome="malformed") >= 1, what="a malformed answer")
            _import(registry, {"subjects": [{"id": "S-new", "devices": ["13900000014"],
                                             "office": COUNTY, "home": [COUNTY],
                                             "level": "strict"}]})
            wait_until(lambda: provider.asked["13900000014"] > 0, what="a new subject polled")
    finally:
        router.close()
        provider.stop()
    assert sample(connector, "geofence_connect_requests_total", outcome="retry") >= 2
    assert sample(connector, "geofence_connect_requests_total", outcome="rate_limited") == 1
    assert all(status != 401 for _, _, status in provider.log)    # the header's ${T}
    limited = provider.requests_for("13900000012")
    first_429 = next(t for t, status in limited if status == 429)
    after = [t for t, _ in limited if t > first_429]
    assert after and min(after) - first_429 >= 1.0                 # Retry-After: 1
    # nobody at all was asked within the second after the 429
    assert all(not (first_429 < t < first_429 + 0.99) for t, _, _ in provider.log)
    timed = sample(connector, "geofence_connect_provider_latency_seconds_count")
    assert len(provider.log) - config.concurrency <= timed <= len(provider.log)   # in flight
    assert not any(row[0] == "13900000013" for _, row in router.rows())


def test_an_answer_sent_in_pieces_is_read_whole_and_an_odd_retry_after_is_a_429(tmp_path):
    from connect.mapping import MAX_ANSWER_BYTES

    pieces, big, odd = "13900000041", "13900000042", "13900000043"
    registry = registry_store(tmp_path / "registry.sqlite",
                              {d: ("strict", "normal") for d in (pieces, big, odd)})
    whole = json.dumps(position(LON, LAT, T0_MS)).encode()
    filler = b" " * (MAX_ANSWER_BYTES // 3)

    def behave(device, n):
        if device == pieces:    # the body in three writes, 50 ms apart
            return Reply(pieces=(whole[:20], whole[20:40], whole[40:]))
        if device == big:       # over the limit only once its last piece is in
            return Reply(pieces=(whole[:-1], filler, filler, filler, whole[-1:]))
        return Reply(429, headers={"Retry-After": "\u00b2"})   # was int('²'): "transport"

    provider = FakeProvider(behave).start()
    router = RouterStub()
    config = _connector(url=provider.url, every_strict_s=1, backoff_first_s=0.05,
                        backoff_max_s=0.05)
    connector = Connector(config, router.endpoint, registry, env={})
    try:
        with Running(connector):
            wait_until(lambda: any(row[0] == pieces for _, row in router.rows()),
                       what="the answer sent in pieces")
            wait_until(lambda: sample(connector, "geofence_connect_requests_total",
                                      outcome="malformed") >= 1, what="the big one refused")
            wait_until(lambda: provider.asked[odd] >= 1 and sample(
                connector, "geofence_connect_requests_total", outcome="rate_limited") >= 1,
                what="the 429 counted")
    finally:
        router.close()
        provider.stop()
    row = [row for _, row in router.rows() if row[0] == pieces][0]
    assert (row[2], row[3]) == (LON, LAT)
    assert len([r for _, r in router.rows() if r[0] == pieces]) >= provider.asked[pieces] - 1
    assert sample(connector, "geofence_connect_requests_total", outcome="transport") == 0
    assert not any(row[0] == big for _, row in router.rows())


class FailingOnce(Connector):
    """A Connector whose handling of an answer fails once per device (a bug's stand-in):
    the failure must not lose the phone's polls nor a locate request."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed: set[str] = set()

    def settle(self, job, answer, outcome, now_s):
        if job.device not in self.failed:
            self.failed.add(job.device)
            raise RuntimeError("a bug in settle")
        super().settle(job, answer, outcome, now_s)


def test_a_failure_inside_the_connector_puts_the_poll_and_the_locate_request_back(tmp_path):
    polled, located = "13900000051", "13900000052"
    registry = registry_store(tmp_path / "registry.sqlite",
                              {polled: ("strict", "normal"), located: ("loose", "normal")})
    provider = FakeProvider(lambda device, n: Reply(doc=position(LON, LAT, T0_MS + n))).start()
    router = RouterStub()
    config = _connector(url=provider.url, every_strict_s=1, every_loose_s=86_400,
                        backoff_first_s=0.05)
    connector = FailingOnce(config, router.endpoint, registry, env={}, idle_batch_s=0.2)
    try:
        with Running(connector):
            wait_until(lambda: any(row[0] == polled for _, row in router.rows()),
                       what="the failed poll asked again")
            wait_until(lambda: router.identity is not None, what="the hello")
            router.outbox.append(encode_locate("L-1", located, "desk"))
            wait_until(lambda: any(b.get("request") == "L-1" for b in router.batches),
                       what="the failed locate request tried again")
    finally:
        router.close()
        provider.stop()
    assert provider.asked[polled] >= 2 and provider.asked[located] == 2
    assert sample(connector, "geofence_connect_failures_total") == 2


def test_while_the_engine_is_away_requests_pause_and_the_backlog_stays_bounded(tmp_path):
    devices = [f"139000006{k:02d}" for k in range(30)]
    registry = registry_store(tmp_path / "registry.sqlite",
                              {d: ("strict", "normal") for d in devices})
    provider = FakeProvider(lambda device, n: Reply(doc=position(LON, LAT, T0_MS + n))).start()
    router = RouterStub()
    router.acking = False                  # the engine is away from the start
    config = _connector(url=provider.url, every_strict_s=1, concurrency=2)
    bound = 10
    connector = Connector(config, router.endpoint, registry, env={}, idle_batch_s=0.5,
                          max_backlog_rows=bound)
    try:
        with Running(connector):
            wait_until(lambda: sample(connector, "geofence_connect_paused") == 1,
                       what="requests paused")
            asked = sum(provider.asked.values())
            backlog = connector.feed.backlog()
            assert bound < backlog <= bound + config.concurrency   # and what was in flight
            # every phone is due each second: a few seconds without a single request
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert sum(provider.asked.values()) <= asked + config.concurrency
                assert connector.feed.backlog() <= bound + config.concurrency
                time.sleep(0.05)
            for _ in range(3):   # the client reconnects (a new identity) every timeout
                router.outbox.append(encode_locate("L-away", devices[0], "desk"))
                try:
                    wait_until(lambda: sample(connector, "geofence_connect_locate_requests_total",
                                              reason="desk") >= 1, 3, "the locate request in")
                    break
                except AssertionError:
                    continue
            assert sum(provider.asked.values()) <= asked + config.concurrency
            router.acking = True           # back: the client's resends are acked
            wait_until(lambda: sample(connector, "geofence_connect_paused") == 0, 30,
                       "requests resumed")
            wait_until(lambda: any(b.get("request") == "L-away" for b in router.batches),
                       what="the locate request answered")
            wait_until(lambda: {row[0] for _, row in router.rows()} == set(devices),
                       what="every phone polled again")
    finally:
        router.close()
        provider.stop()
    assert sample(connector, "geofence_connect_engine_backlog_rows") <= bound


# -- through a real engine ---------------------------------------------------------------


def test_connector_in_the_serve_tree_stores_positions_and_handset_states(tmp_path):
    from ingest.store import StoreReader
    from tests.engine_harness import Engine, free_port, import_registry, write_config

    from geofence.datum import to_wgs84

    wgs, gcj, off, bad = "13900000021", "13900000022", "13900000023", "13900000024"
    t_answer = int(time.time() * 1000) - 60_000

    def behave(device, n):
        t = t_answer + n * 1000
        if device == wgs:
            return Reply(doc=position(LON, LAT, t, source="GPS"), delay_s=0.02)
        if device == gcj:
            return Reply(doc=position(LON, LAT, t, datum="gcj02"), delay_s=0.02)
        if device == off:
            return Reply(doc={"code": 1001, "data": None})
        return Reply(doc={"code": 0, "data": {"loc": {"lng": None}}})

    provider = FakeProvider(behave).start()
    metrics_port = free_port()
    config = write_config(tmp_path)
    table = connector_table(provider.url, every_normal_s=1, every_key_s=1,
                            metrics_bind=f"127.0.0.1:{metrics_port}")
    config.write_text(config.read_text() + toml_table("t", table) + "\n")
    import_registry(config, registry_document({d: ("normal", "normal")
                                               for d in (wgs, gcj, off, bad)}))
    engine = Engine(config)
    try:
        assert any(line == "geofence: connector t feeding the ingest" for line in engine.lines)

        def stored():
            with StoreReader(engine.paths.fixes_db) as store:
                ids = store.device_ids()
                rows = [(ids[d], lon, lat, src)
                        for _, cols in store.read_batches(0, 10_000)
                        for d, lon, lat, src in zip(cols.device.tolist(), cols.lon.tolist(),
                                                    cols.lat.tolist(), cols.src.tolist())]
            return rows

        wait_until(lambda: {r[0] for r in stored()} >= {wgs, gcj, off}, 60,
                   "positions and a state in the store")
        rows = stored()
        lon, lat = [(r[1], r[2]) for r in rows if r[0] == wgs][0]
        assert (lon, lat) == (LON, LAT)
        expected = to_wgs84(np.array([LON]), np.array([LAT]), "gcj02")
        lon, lat = [(r[1], r[2]) for r in rows if r[0] == gcj][0]
        assert lon == pytest.approx(expected[0][0], abs=1e-9)
        assert lat == pytest.approx(expected[1][0], abs=1e-9)
        assert abs(lon - LON) > 1e-3                      # converted, not stored as given
        state = [r for r in rows if r[0] == off][0]
        assert state[3] == STATE0 and math.isnan(state[1]) and math.isnan(state[2])
        assert not any(r[0] == bad for r in rows)
        def metric(series: str) -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                          timeout=10).read().decode()
            assert "13900000" not in text                  # no device in any label
            found = [line for line in text.splitlines() if line.startswith(series + " ")]
            return float(found[0].split()[-1]) if found else 0.0

        wait_until(lambda: metric('geofence_connect_requests_total{connector="t",'
                                  'outcome="malformed"}') >= 1, 30, "a malformed answer counted")
        wait_until(lambda: metric('geofence_connect_rows_accepted_total{connector="t"}') >= 3,
                   30, "the engine's acks counted")
    finally:
        engine.stop()
        provider.stop()


def test_cli_names_the_connector_to_run(tmp_path, capsys):
    from service.cli import main

    config = tmp_path / "geofence.toml"
    tables = [toml_table(n, connector_table("http://127.0.0.1:9/{device}", carrier=n))
              for n in ("a", "b")]
    config.write_text(f'[storage]\npath = "{tmp_path / "data"}"\n' + "\n".join(tables) + "\n")
    assert main(["connect", "http", "--config", str(config)]) == 2
    assert "--name is needed: " in capsys.readouterr().err
    assert main(["connect", "http", "--config", str(config), "--name", "c"]) == 2
    assert "no connector 'c'" in capsys.readouterr().err
    assert main(["connect", "http", "--config", str(config), "--name", "a"]) == 2
    assert "no registry at" in capsys.readouterr().err


def test_serve_refuses_a_connector_that_cannot_start(tmp_path, monkeypatch):
    from service.preflight import StartError, preflight

    monkeypatch.delenv("LBS_TOKEN_T", raising=False)
    table = connector_table("http://127.0.0.1:9/{device}",
                            headers={"Authorization": "Bearer ${LBS_TOKEN_T}"},
                            curve_keys=str(tmp_path / "nokeys"))
    settings = from_mapping({"storage": {"path": str(tmp_path / "data")},
                             "connect": {"http": {"t": table}}}, "t.toml")
    with pytest.raises(StartError) as e:
        preflight(settings)
    assert e.value.problems[0] == ('t.toml: [connect] http: connector "t": environment '
                                   'variable LBS_TOKEN_T is not set')
    assert e.value.problems[1].startswith("t.toml: [connect.http.t] curve_keys: ")
    assert len(e.value.problems) == 2


def test_connect_http_command_feeds_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    from engine.paths import EnginePaths

    provider = FakeProvider(lambda device, n: Reply(doc=position(LON, LAT, T0_MS + n))).start()
    router = RouterStub()
    data = tmp_path / "data"
    data.mkdir()
    registry_store(EnginePaths(data).registry_db, {"13900000031": ("strict", "normal")})
    table = connector_table(provider.url, endpoint=router.endpoint, every_strict_s=1,
                            daily_budget=1000)
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{data}"\n' + toml_table("t", table) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "connect", "http",
                             "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "geofence: connector t running\n" in lines, what="the running line")
        wait_until(lambda: any(row[0] == "13900000031" for _, row in router.rows()),
                   what="a fix fed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(10)
        log = "".join(lines)
        assert "13900000031" not in log and "msisdn" not in log    # nothing personal, no URL
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        proc.stdout.close()
        router.close()
        provider.stop()
    spent = BudgetFile(data / "connect-t.budget.json").load()[1]
    asked = len(provider.log)
    assert asked >= 1 and asked <= spent <= asked + 8   # requests cut short at SIGTERM
