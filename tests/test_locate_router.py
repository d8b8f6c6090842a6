"""The ingest process's locate requests (ingest/locate_router.py): its bounded memory of
carrier connections and of which carrier carries a device, and an ingest loop (real
IngestServer, real SQLite files, real ZeroMQ on loopback, in this process) that goes on
taking fixes while locate.sqlite is locked by another writer, and records the answer once
the file can be written again."""

import logging
import queue
import sqlite3
import threading
import time

import numpy as np
import pytest
import zmq

from carriers.locate_store import LocateStore
from ingest.carrier import CarrierClient
from ingest.locate_router import CarrierConnections, DeviceCarriers
from ingest.metrics import IngestMetrics
from ingest.protocol import encode_rows
from ingest.server import DevicesUpdate, IngestOptions, IngestServer
from ingest.store import Store

WAIT_S = 60
DEVICES = ["13900000000", "13900000001"]


def test_connections_are_newest_first_bounded_and_forgotten_when_idle():
    conns = CarrierConnections(idle_s=10, per_carrier=2, max_carriers=2)
    assert conns.seen("a", b"1", 0.0) and conns.seen("a", b"2", 1.0)
    assert not conns.seen("a", b"1", 2.0)           # known: now the newest
    assert conns.live("a", 2.0) == [b"1", b"2"]
    conns.seen("a", b"3", 3.0)                      # the oldest goes beyond the cap
    assert conns.live("a", 3.0) == [b"3", b"1"]
    conns.seen("b", b"4", 4.0)
    assert not conns.seen("c", b"5", 5.0)           # no room for a third carrier
    assert conns.carriers(5.0) == ["b", "a"]
    assert conns.live("a", 12.5) == [b"3"]          # 1 was last heard at 2.0
    conns.forget_idle(13.5)                         # a's last (3.0) is idle, b's (4.0) not
    assert conns.carriers(13.5) == ["b"] and len(conns) == 1
    assert conns.seen("c", b"5", 13.6)              # room again
    conns.drop("b", b"4")
    assert conns.carriers(13.6) == ["c"]


def test_the_carrier_of_a_device_is_the_last_that_delivered_it():
    carriers = DeviceCarriers(max_carriers=2)
    assert carriers.of(0) is None and carriers.of(-1) is None
    carriers.learn("a", np.array([0, 5000], np.int32))
    carriers.learn("b", np.array([5000], np.int32))
    carriers.learn("c", np.array([1], np.int32))     # past the cap: not remembered
    assert [carriers.of(i) for i in (0, 1, 5000, 5001)] == ["a", None, "b", None]


@pytest.fixture
def ingest(tmp_path):
    """start(**options): an IngestServer on loopback in a thread of its own (its SQLite
    connections live there) on the files of tmp_path; returns (endpoint, locate.sqlite
    path, halt: stops this one). All stopped at the end."""
    locate_db = tmp_path / "locate.sqlite"
    LocateStore(locate_db).close()
    ready, halts = queue.Queue(), []

    def serve(options, stop):
        ctx = zmq.Context.instance()
        store = Store(tmp_path / "fixes.sqlite")
        server = IngestServer(
            ctx, store, lambda since: DevicesUpdate(1, since != 1, DEVICES, [0, 1]), options,
            IngestMetrics(), f"inproc://notify-{id(stop)}", f"inproc://done-{id(stop)}")
        try:
            ready.put(server.bind())
            server.run(stop.is_set)
        finally:
            server.close()
            store.close()

    def start(**options):
        options = IngestOptions("tcp://127.0.0.1:0", locate_db=str(locate_db),
                                locate_timeout_ms=600_000, **options)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(options, stop), daemon=True)
        thread.start()

        def halt():
            stop.set()
            thread.join(WAIT_S)

        halts.append(halt)
        return ready.get(timeout=WAIT_S), locate_db, halt

    yield start
    for halt in halts:
        halt()


def test_fixes_go_on_while_locate_sqlite_is_locked_and_the_answer_is_written_later(
        ingest, caplog):
    endpoint, locate_db, _ = ingest()
    caplog.set_level(logging.INFO, "geofence.ingest.locate")
    requests = LocateStore(locate_db)
    ctx = zmq.Context()
    # one ack timeout and the client gives up: a loop waiting on the lock would fail this
    client = CarrierClient(ctx, endpoint, "cmcc", timeout_ms=2500, retries=1)
    now = int(time.time() * 1000)
    batch = iter(range(1, 1000))

    def send(t, **kw):
        n = next(batch)
        assert client.send_one(encode_rows("cmcc", n, [DEVICES[0]], [t], [117.3], [34.8],
                                           [20.0], ["gps"], **kw))["status"] == "ok"

    send(now - 60_000)
    asked = requests.request("S0", DEVICES[0], "x", "desk", "officer", now)
    deadline = time.monotonic() + WAIT_S
    while not (taken := client.take_locate_requests()):
        assert time.monotonic() < deadline
        client.idle(0.05)
    assert taken[0]["request"] == asked.id
    blocker = sqlite3.connect(locate_db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")              # another writer holds the lock
    send(now - 30_000, request=asked.id)            # the answer: taken, not yet recorded
    for k in range(5):
        send(now - 20_000 + k)
    assert requests.get(asked.id).state in ("pending", "sent")
    blocker.execute("ROLLBACK")
    deadline = time.monotonic() + WAIT_S
    while (done := requests.get(asked.id)).state != "answered":
        assert time.monotonic() < deadline, done
        client.idle(0.1)
    assert done.answer_t_ms == now - 30_000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "locate.sqlite" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)
    client.close()
    requests.close()
    blocker.close()
    ctx.term()


def test_a_busy_carrier_still_gets_its_acks_and_requests_apart(ingest):
    """Past the backlog limit every new batch is answered `busy`; the connection still
    counts as live, and the carrier tells the request from the ack by `kind`."""
    from ingest.protocol import decode_ack, decode_locate

    endpoint, locate_db, _ = ingest(max_backlog_fixes=0)   # no worker: the first fix fills it
    requests = LocateStore(locate_db)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    now = int(time.time() * 1000)
    statuses = []
    for n in (1, 2):
        dealer.send(encode_rows("cmcc", n, [DEVICES[1]], [now - 60_000 + n], [117.3], [34.8]))
        assert dealer.poll(WAIT_S * 1000)
        statuses.append(decode_ack(dealer.recv())["status"])
    assert statuses == ["ok", "busy"]
    asked = requests.request("S1", DEVICES[1], "x", "unsure", None, now)
    assert dealer.poll(WAIT_S * 1000)
    assert decode_locate(dealer.recv())["request"] == asked.id
    dealer.send(encode_rows("cmcc", 3, [DEVICES[1]], [now], [117.3], [34.8], request=asked.id))
    assert dealer.poll(WAIT_S * 1000)
    assert decode_ack(dealer.recv())["status"] == "busy"      # nothing taken: no answer
    assert requests.get(asked.id).state == "sent"
    dealer.close()
    requests.close()
    ctx.term()


def test_the_demo_carriers_answer_in_the_replayed_time(ingest):
    """A replaying carrier (sim.replay, as the demo's) answers with its replay clock, never
    the wall clock that would move a feed-clock engine a day ahead; the key matches it."""
    from sim.carriers import CarrierFeed
    from sim.fixes import Fixes
    from sim.replay import Replay

    endpoint, locate_db, _ = ingest()
    requests = LocateStore(locate_db)
    now = int(time.time() * 1000)
    start, end = now - 3_600_000, now
    t = np.arange(start, end, 60_000, dtype=np.int64)
    n = len(t)
    lon, lat = np.full(n, 117.3), np.full(n, 34.8)
    fixes = Fixes(np.zeros(n, np.int32), t, lon, lat, np.full(n, 20.0), np.zeros(n, np.int8),
                  lon, lat, np.zeros(n, bool))
    feed = CarrierFeed("cmcc", None, np.array([int(DEVICES[0]), int(DEVICES[1])]), fixes)
    stop = threading.Event()
    replay = Replay([feed], endpoint, start, end, speed=360.0, stop=stop)   # 10 s for the hour
    replay.answers[0].gps_share = 1.0                  # every request answered, by GPS
    replay.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while replay.sent[0] == 0:
            assert time.monotonic() < deadline and replay.error is None
            time.sleep(0.05)
        asked = requests.request("S0", DEVICES[0], "x", "desk", "officer",
                                 int(time.time() * 1000))
        while (done := requests.get(asked.id)).state != "answered":
            assert time.monotonic() < deadline and replay.error is None, done
            time.sleep(0.05)
    finally:
        stop.set()
        replay.join()
    assert start <= done.answer_t_ms < asked.requested_ms - 60_000    # replayed, not now
    assert done.answer_src == "gps" and 5 <= done.answer_acc <= 30
    requests.close()


def test_after_a_restart_requests_go_again_to_the_carrier_the_store_says(ingest):
    """A restarted ingest knows each device's carrier from the stored batches (no
    broadcast to another carrier), and sends again a request its last run had sent."""
    endpoint, locate_db, halt = ingest()
    requests = LocateStore(locate_db)
    ctx = zmq.Context()
    now = int(time.time() * 1000)
    numbers = iter(range(1, 1000))

    def deliver(client, carrier, devices=(), t=()):
        n = next(numbers)
        frame = encode_rows(carrier, n, list(devices), list(t), [117.3] * len(t),
                            [34.8] * len(t))
        assert client.send_one(frame)["status"] == "ok"

    def request_for(client):
        deadline = time.monotonic() + WAIT_S
        while not (taken := client.take_locate_requests()):
            assert time.monotonic() < deadline
            client.idle(0.05)
        return [r["request"] for r in taken]

    with CarrierClient(ctx, endpoint, "cmcc") as before:
        deliver(before, "cmcc", [DEVICES[0]], [now - 60_000])
        asked = requests.request("S0", DEVICES[0], "x", "desk", "officer", now)
        assert request_for(before) == [asked.id]
    halt()
    endpoint, _, _ = ingest()
    with CarrierClient(ctx, endpoint, "ctcc") as other, \
            CarrierClient(ctx, endpoint, "cmcc") as after:
        deliver(other, "ctcc")              # the first live carrier: not this phone's
        deliver(after, "cmcc")              # empty batches: "here I am"
        assert request_for(after) == [asked.id]
        other.idle(0.3)
        assert other.take_locate_requests() == []
    requests.close()
    ctx.term()


def test_only_the_carrier_a_request_went_to_answers_it(ingest):
    """Once sent to cmcc, a row of the phone from ctcc (with the request's key, or just
    fresh) neither answers nor closes the request; cmcc's answer does."""
    endpoint, locate_db, _ = ingest()
    requests = LocateStore(locate_db)
    ctx = zmq.Context()
    now = int(time.time() * 1000)
    numbers = iter(range(1, 1000))

    def deliver(client, carrier, t, lon, **kw):
        frame = encode_rows(carrier, next(numbers), [DEVICES[0]], [t], [lon], [34.8], **kw)
        assert client.send_one(frame)["status"] == "ok"

    with CarrierClient(ctx, endpoint, "cmcc") as cmcc, \
            CarrierClient(ctx, endpoint, "ctcc") as ctcc:
        deliver(cmcc, "cmcc", now - 60_000, 117.3)
        asked = requests.request("S0", DEVICES[0], "x", "desk", "officer", now)
        deadline = time.monotonic() + WAIT_S
        while not cmcc.take_locate_requests():
            assert time.monotonic() < deadline
            cmcc.idle(0.05)
        deliver(ctcc, "ctcc", now + 1_000, 100.0, request=asked.id)
        deliver(ctcc, "ctcc", now + 2_000, 100.0)
        ctcc.idle(0.5)
        assert requests.get(asked.id).state == "sent"
        deliver(cmcc, "cmcc", now + 3_000, 117.31, request=asked.id)
        while (done := requests.get(asked.id)).state != "answered":
            assert time.monotonic() < deadline, done
            cmcc.idle(0.05)
        assert (done.answer_lon, done.answer_t_ms) == (117.31, now + 3_000)
    requests.close()
    ctx.term()
