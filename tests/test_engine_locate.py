"""Locate requests through a running engine (SPEC §14): a request written to locate.sqlite
goes to the DEALER connection of the carrier that carries the device, the carrier's
answering batch closes it (by its `request` key, or by device and time), and a request no
connection can take times out. Real `geofence serve`, real ZeroMQ on loopback, the real
carrier client; one engine for the module, each test on phones of its own."""

import time

import pytest
import zmq

from carriers.locate_store import LocateStore
from ingest.carrier import CarrierClient
from ingest.protocol import decode_ack, encode_rows
from tests.engine_harness import Engine, import_registry, population_document, write_config

TIMEOUT_S = 6             # [carriers] locate_timeout_s of this engine
WAIT_S = 60               # a guard against hanging, never a timing claim
LON, LAT = 117.3, 34.8


def phone(k: int) -> str:
    return str(13900000000 + k)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("locate")
    config = write_config(root, carriers={"locate_timeout_s": TIMEOUT_S})
    import_registry(config, population_document(20))
    engine = Engine(config)
    yield engine
    engine.stop()


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def requests(engine):
    store = LocateStore(engine.paths.locate_db)
    yield store
    store.close()


_batches = iter(range(int(time.time() * 1000) * 1000, 1 << 62))


def batch(carrier: str, device: str, t_ms: int, src="gps", request=None, lon=LON,
          lat=LAT) -> tuple[bytes, int]:
    number = next(_batches)
    return encode_rows(carrier, number, [device], [t_ms], [lon], [lat], [20.0], [src],
                       request=request), number


def deliver(client: CarrierClient, *frame) -> None:
    """Send one batch and wait for its ack (the engine answers requests before it acks)."""
    client.send(*frame)
    client.drain()


def ask(requests: LocateStore, device: str, reason="desk"):
    return requests.request("S-test", device, "370405104", reason, "officer",
                            int(time.time() * 1000))


def wait_for_request(client: CarrierClient) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        taken = client.take_locate_requests()
        if taken:
            assert len(taken) == 1, taken
            return taken[0]
        client.idle(0.05)
    raise AssertionError("no locate request reached the carrier")


def wait_state(requests: LocateStore, request_id: str, state: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        r = requests.get(request_id)
        if r.state == state:
            return r
        time.sleep(0.05)
    raise AssertionError(f"request stayed {requests.get(request_id).state}, not {state}")


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_request_reaches_the_carrier_of_the_device_and_its_answer_closes_it(
        engine, ctx, requests):
    with CarrierClient(ctx, engine.endpoint, "cmcc") as cmcc, \
            CarrierClient(ctx, engine.endpoint, "ctcc") as ctcc:
        deliver(cmcc, *batch("cmcc", phone(0), now_ms() - 60_000))
        deliver(ctcc, *batch("ctcc", phone(1), now_ms() - 60_000))
        asked = ask(requests, phone(0))
        got = wait_for_request(cmcc)
        assert got == {"request": asked.id, "device": phone(0), "reason": "desk"}
        assert wait_state(requests, asked.id, "sent").carrier == "cmcc"
        # a replaying carrier answers in its own time: with the key, any time will do
        replayed = now_ms() - 3_600_000
        deliver(cmcc, *batch("cmcc", phone(0), replayed, request=asked.id, lon=117.31))
        done = requests.get(asked.id)
        assert done.state == "answered"
        assert (done.answer_t_ms, done.answer_src, done.answer_lon, done.answer_lat,
                done.answer_acc) == (replayed, "gps", 117.31, LAT, 20.0)
        assert 0 <= done.latency_ms == done.answered_ms - asked.requested_ms
        assert done.to_document()["fix"]["t"] == replayed
        ctcc.idle(0.2)
        assert ctcc.take_locate_requests() == []     # not the other carrier's phone
    metrics = engine.metrics()
    assert metrics['geofence_locate_requests_total{outcome="answered",reason="desk"}'] >= 1
    assert metrics["geofence_locate_seconds_count"] >= 1


def test_without_the_key_a_fix_of_the_device_made_since_the_request_answers_it(
        engine, ctx, requests):
    with CarrierClient(ctx, engine.endpoint, "cmcc") as cmcc:
        deliver(cmcc, *batch("cmcc", phone(2), now_ms() - 60_000))
        asked = ask(requests, phone(2), reason="unsure")
        assert wait_for_request(cmcc)["request"] == asked.id
        deliver(cmcc, *batch("cmcc", phone(2), asked.requested_ms - 30_000))   # too old
        assert requests.get(asked.id).state == "sent"
        deliver(cmcc, *batch("cmcc", phone(3), asked.requested_ms + 1))        # another phone
        assert requests.get(asked.id).state == "sent"
        t = asked.requested_ms + 500
        deliver(cmcc, *batch("cmcc", phone(2), t, src="cell", lon=117.32))
        done = requests.get(asked.id)
        assert (done.state, done.answer_t_ms, done.answer_src, done.answer_lon) == (
            "answered", t, "cell", 117.32)


def test_a_status_row_answers_with_the_handset_state(engine, ctx, requests):
    with CarrierClient(ctx, engine.endpoint, "cmcc") as cmcc:
        deliver(cmcc, *batch("cmcc", phone(4), now_ms() - 60_000))
        asked = ask(requests, phone(4))
        assert wait_for_request(cmcc)["request"] == asked.id
        deliver(cmcc, *batch("cmcc", phone(4), now_ms(), src="off", request=asked.id,
                             lon=float("nan"), lat=float("nan")))
    done = requests.get(asked.id)
    assert (done.state, done.answer_src, done.answer_lon, done.answer_lat) == (
        "answered", "off", None, None)
    assert done.to_document()["handset"] == "off" and done.to_document()["fix"] is None
    assert engine.metrics()['geofence_handset_reports_total{state="off"}'] >= 1


def test_a_vanished_connection_is_skipped_for_a_live_one_of_the_same_carrier(
        engine, ctx, requests):
    with CarrierClient(ctx, engine.endpoint, "cmcc") as older:
        deliver(older, *batch("cmcc", phone(5), now_ms() - 60_000))
        newer = CarrierClient(ctx, engine.endpoint, "cmcc")
        deliver(newer, *batch("cmcc", phone(5), now_ms() - 50_000))   # the newest connection
        newer.close()
        time.sleep(1.0)   # let the engine's ROUTER see the connection close
        asked = ask(requests, phone(5))
        assert wait_for_request(older)["request"] == asked.id
        assert wait_state(requests, asked.id, "sent").carrier == "cmcc"


def test_with_no_connection_that_can_take_it_a_request_times_out(engine, ctx, requests):
    req = ctx.socket(zmq.REQ)                       # a REQ carrier takes no unasked frame
    req.setsockopt(zmq.LINGER, 0)
    req.connect(engine.endpoint)

    def req_batch(t):
        req.send(batch("req-co", phone(6), t)[0])
        assert req.poll(WAIT_S * 1000)
        return decode_ack(req.recv())

    assert req_batch(now_ms() - 60_000)["status"] == "ok"
    with CarrierClient(ctx, engine.endpoint, "gone-co") as gone:
        deliver(gone, *batch("gone-co", phone(7), now_ms() - 60_000))
    time.sleep(1.0)   # let the engine's ROUTER see the connection close
    to_req, to_gone = ask(requests, phone(6)), ask(requests, phone(7))
    for asked in (to_req, to_gone):
        done = wait_state(requests, asked.id, "timed_out")
        assert (done.sent_ms, done.carrier, done.answered_ms) == (None, None, None)
    assert req_batch(now_ms() - 50_000)["status"] == "ok"     # its next reply is the ack
    req.close()
    assert engine.metrics()[
        'geofence_locate_requests_total{outcome="timed_out",reason="desk"}'] >= 2


def test_garbage_and_unknown_carriers_leave_requests_alone(engine, ctx, requests):
    """A peer that sends garbage is answered `malformed` and is no carrier connection; a
    request for a phone whose carrier is unknown goes (no CURVE) to every live carrier."""
    garbage = ctx.socket(zmq.DEALER)
    garbage.setsockopt(zmq.LINGER, 0)
    garbage.connect(engine.endpoint)
    garbage.send(b"\xc1 not msgpack")
    assert garbage.poll(WAIT_S * 1000)
    assert decode_ack(garbage.recv())["error"] == "malformed"
    with CarrierClient(ctx, engine.endpoint, "cmcc") as cmcc:
        deliver(cmcc, *batch("cmcc", phone(8), now_ms() - 60_000))
        asked = ask(requests, phone(9))        # never delivered by anyone
        got = wait_for_request(cmcc)
        assert got["request"] == asked.id
        deliver(cmcc, *batch("cmcc", phone(9), now_ms(), request=asked.id))
        assert requests.get(asked.id).state == "answered"
    assert not garbage.poll(200)               # nothing ever went to the garbage peer
    garbage.close()


def test_geofence_simulate_answers_locate_requests(engine, requests):
    """`geofence simulate`'s carriers (the same seeded people as the registry) answer with a
    GPS-grade or a cell fix, carrying the request, at the wall clock; some not at all."""
    import threading

    from sim.simulate import build_feeds, simulate

    carriers = ("cmcc", "cucc", "ctcc")
    feeds, _ = build_feeds(20, 1, carriers, ("cucc",))
    total = sum(len(f) for f in feeds)

    def received() -> float:
        metrics = engine.metrics()
        return sum(metrics.get(f'geofence_fixes_received_total{{carrier="{c}"}}', 0)
                   for c in carriers)

    before = received()
    stop, lines, result = threading.Event(), [], {}
    run = threading.Thread(target=lambda: result.update(simulate(
        engine.endpoint, 20, 0, seed=1, carriers=carriers, linger_s=WAIT_S, stop=stop,
        progress_s=3600, out=lines.append)), daemon=True)
    run.start()
    deadline = time.monotonic() + WAIT_S
    while received() - before < total:              # the day is in: every phone has a place
        assert time.monotonic() < deadline and run.is_alive(), lines
        time.sleep(0.2)
    asked = [ask(requests, phone(k)) for k in range(10, 20)]
    closed = []
    for a in asked:
        deadline = time.monotonic() + WAIT_S
        while (r := requests.get(a.id)).state in ("pending", "sent"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        closed.append(r)
    stop.set()
    run.join(WAIT_S)
    answered = [r for r in closed if r.state == "answered"]
    assert answered, [r.state for r in closed]
    for r in answered:
        low, high = {"gps": (5, 30), "cell": (500, 2000)}[r.answer_src]
        assert low <= r.answer_acc <= high
        assert r.requested_ms - 10_000 <= r.answer_t_ms <= r.answered_ms
        assert 116.5 < r.answer_lon < 118.5 and 34.0 < r.answer_lat < 35.8   # Zaozhuang
    drawn = result["locate_answers"]
    assert drawn.get("gps", 0) + drawn.get("cell", 0) == len(answered)
    assert drawn.get("none", 0) == len(closed) - len(answered)
