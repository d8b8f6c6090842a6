"""The carrier client and the simulator against a fake engine on real loopback sockets.

The fake is a ROUTER (port chosen by the OS) answered from a thread with `encode_ack`,
deduplicating by (carrier, batch) as SPEC §4 asks of the engine; knobs make it drop
replies, answer `busy`, or hold replies and answer newest first. It is a stand-in for
the real engine, which is written elsewhere: the client is what is under test.

Every socket has LINGER 0, every wait has a timeout and every thread is joined, so a
failure shows as a failed assertion, never a hung run.
"""

import math
import re
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from ingest import keys
from ingest.auth import CarrierAuthenticator, secure_router
from ingest.carrier import CarrierClient, CarrierError, CarrierStats, load_curve
from ingest.decode import reference_decode
from ingest.protocol import FUTURE_TOLERANCE_MS, SOURCES, encode_ack, encode_rows, rejections
from sim.movement import DAY_MS
from sim.simulate import SPOILS, TokenBucket, simulate

POLL_MS = 20
HOLD_FLUSH_S = 0.2     # a held reply goes out after this long without new batches
JOIN_TIMEOUT_S = 5.0


class FakeEngine:
    """A ROUTER that answers every batch, in a thread, as the engine would.

    drop_first: that many replies are computed, then not sent (a lost ack).
    busy_first: that many fresh batches are answered `busy` (and not remembered).
    hold: replies wait until `hold` are pending (or HOLD_FLUSH_S passes), then go newest
    first, so acks arrive out of order. repeat: each reply is sent that many times (a
    confused engine, or a network duplicating). judge(frame) -> (accepted, rejected pairs) of a
    fresh batch; the default accepts every fix.
    """

    def __init__(self, ctx, *, drop_first=0, busy_first=0, hold=1, repeat=1, judge=None,
                 setup=None):
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)   # a vanished peer's ack is dropped
        self.socket.setsockopt(zmq.SNDHWM, 1000)
        self.socket.setsockopt(zmq.RCVHWM, 1000)
        if setup is not None:
            setup(self.socket)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.drop_first, self.busy_first, self.hold = drop_first, busy_first, hold
        self.repeat = repeat
        self.judge = judge or _accept_all
        self.received = []        # (monotonic time, batch map or None, raw frame)
        self.answers = {}         # (carrier, batch) -> first final ack's fields
        self.replies_sent = 0
        self.max_outstanding = 0
        self._held = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-engine", daemon=True)
        self._thread.start()

    def stop(self):
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT_S)
        assert not self._thread.is_alive()
        self.socket.close(linger=0)

    def batch_numbers(self):
        return [b["batch"] for _, b, _ in self.received if b is not None]

    def _run(self):
        last = time.monotonic()
        while not self._stop.is_set():
            if self.socket.poll(POLL_MS, zmq.POLLIN):
                frames = self.socket.recv_multipart()
                last = time.monotonic()
                self._held.append((frames[:-1], self._answer(frames[-1])))
                outstanding = len(self.received) - self.replies_sent
                self.max_outstanding = max(self.max_outstanding, outstanding)
            if self._held and (len(self._held) >= self.hold
                               or time.monotonic() - last > HOLD_FLUSH_S):
                for envelope, reply in reversed(self._held):
                    self.replies_sent += 1
                    if self.drop_first > 0:
                        self.drop_first -= 1
                    else:
                        for _ in range(self.repeat):
                            self.socket.send_multipart(envelope + [reply])
                self._held.clear()

    def _answer(self, frame):
        try:
            batch = msgpack.unpackb(frame, raw=False)
            key = (batch["carrier"], batch["batch"])
        except Exception:
            self.received.append((time.monotonic(), None, frame))
            return encode_ack(None, "rejected", 0, [], "malformed")
        self.received.append((time.monotonic(), batch, frame))
        if key in self.answers:
            return encode_ack(key[1], "duplicate", *self.answers[key])
        if self.busy_first > 0:
            self.busy_first -= 1
            return encode_ack(key[1], "busy", 0, [])
        accepted, rejected = self.judge(frame)
        self.answers[key] = (accepted, rejected)
        return encode_ack(key[1], "partial" if rejected else "ok", accepted, rejected)


def _fixes_in(frame):
    batch = msgpack.unpackb(frame, raw=False)
    if "fixes" in batch:
        return len(batch["fixes"])
    t = batch["cols"]["t"]
    return len(t) // 8 if isinstance(t, bytes) else len(t)


def _accept_all(frame):
    return _fixes_in(frame), []


def _judge_like_the_engine(frame):
    """The engine's own slow reference decoder, minus the registry: realistic reasons."""
    decoded = reference_decode(frame, int(time.time() * 1000))
    return int((decoded.reason == 0).sum()), rejections(decoded.reason)


def _frame(batch_no, n=3, carrier="cmcc"):
    t0 = int(time.time() * 1000) - 60_000
    return encode_rows(carrier, batch_no, [f"1390000{i:04d}" for i in range(n)],
                       np.arange(n) * 1000 + t0, np.full(n, 117.5), np.full(n, 34.8),
                       acc=np.full(n, 20.0), src=np.zeros(n, np.int8))


def _until(predicate, timeout_s=JOIN_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _refuses_sends(socket):
    """Whether a DEALER has no pipe to take a message (an empty probe frame otherwise)."""
    try:
        socket.send(b"", zmq.NOBLOCK)
    except zmq.Again:
        return True
    return False


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def engines(ctx):
    """Start fake engines with `engines(**knobs)`; all are stopped after the test."""
    started = []

    def start(**knobs):
        started.append(FakeEngine(ctx, **knobs))
        return started[-1]

    yield start
    for engine in started:
        engine.stop()


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test():
    yield
    alive = [t.name for t in threading.enumerate()
             if t.name.startswith(("fake-engine", "geofence-simulate"))]
    assert not alive


# -- the client ---------------------------------------------------------------------

def test_window_fills_and_out_of_order_acks_find_their_batches(ctx, engines):
    engine = engines(hold=4)   # answers only when 4 are waiting, newest first
    with CarrierClient(ctx, engine.endpoint, "cmcc", window=4, timeout_ms=2000) as client:
        stats = client.submit_many((100 + k, _frame(100 + k)) for k in range(10))
    assert engine.max_outstanding == 4                       # the window, never more
    assert engine.batch_numbers()[:4] == [100, 101, 102, 103]
    assert sorted(engine.batch_numbers()) == list(range(100, 110))   # each sent once
    assert stats.batches == stats.sends == 10 and stats.resends == 0
    assert stats.acks == {"ok": 10} and stats.stale_acks == 0 and stats.timeouts == 0
    assert stats.fixes_accepted == 30
    assert len(stats.latency_ms) == 10
    assert client.unacknowledged() == []


def test_a_lost_ack_is_recovered_by_resending_the_same_batch(ctx, engines):
    engine = engines(drop_first=1)
    with CarrierClient(ctx, engine.endpoint, "cmcc", timeout_ms=200, retries=3) as client:
        client.send(_frame(7, n=5), 7)
        client.send(_frame(8, n=4), 8)
        client.drain()
    # batch 7's ack vanished: 7 alone was still in flight at the timeout and went again
    assert engine.batch_numbers() == [7, 8, 7]
    first, again = [raw for _, b, raw in engine.received if b is not None and b["batch"] == 7]
    assert first == again                                   # byte for byte
    stats = client.stats
    assert stats.timeouts == 1 and stats.reconnects == 1
    assert stats.resends == 1 and stats.batches == 2 and stats.sends == 3
    assert stats.acks == {"ok": 1, "duplicate": 1} and stats.resends_acknowledged == 1
    assert stats.fixes_accepted == 9                        # each batch counted once
    assert stats.stale_acks == 0


def test_busy_backs_off_then_resends(ctx, engines):
    engine = engines(busy_first=3)
    with CarrierClient(ctx, engine.endpoint, "cmcc", backoff_ms=40, backoff_max_ms=60,
                       timeout_ms=1000, seed=1) as client:
        ack = client.send_one(_frame(5))
    assert ack["status"] == "ok" and ack["batch"] == 5
    times = [t for t, _, _ in engine.received]
    assert len(times) == 4
    gaps = np.diff(times)
    assert gaps[0] >= 0.020 and gaps[1] >= 0.030 and gaps[2] >= 0.030   # half the cap, at least
    assert gaps.max() < 0.5
    stats = client.stats
    assert stats.acks == {"busy": 3, "ok": 1} and stats.resends == 3 and stats.timeouts == 0


def test_backoff_doubles_and_is_capped(ctx):
    with CarrierClient(ctx, "tcp://127.0.0.1:9", "cmcc", backoff_ms=10, backoff_max_ms=100,
                       seed=3) as client:
        waits = [client._backoff() for _ in range(8)]
    caps = [0.010, 0.020, 0.040, 0.080, 0.100, 0.100, 0.100, 0.100]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps))
    assert len(set(waits)) == len(waits)                     # jittered


def test_a_dead_endpoint_raises_after_the_retries_in_bounded_time(ctx):
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)                                   # nobody listens there now
    client = CarrierClient(ctx, f"tcp://127.0.0.1:{port}", "cmcc", timeout_ms=100, retries=3)
    start = time.monotonic()
    client.send(_frame(1), 1)
    with pytest.raises(ValueError, match="empty window"):
        client.send_one(_frame(2))                          # REQ-style means one at a time
    with pytest.raises(CarrierError, match="3 tries"):
        client.drain()
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.0
    assert client.stats.timeouts == 3 and client.stats.resends == 2
    assert client.unacknowledged() == [1]                    # kept for another try
    client.close()
    with pytest.raises(ValueError):
        client.send(_frame(2), 2)


def test_a_client_that_gave_up_tries_again_on_drain(ctx, engines):
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    with CarrierClient(ctx, f"tcp://127.0.0.1:{port}", "cmcc", timeout_ms=100,
                       retries=2) as client:
        client.send(_frame(1), 1)
        with pytest.raises(CarrierError):
            client.drain()
        with pytest.raises(CarrierError):                   # a fresh round, again bounded
            client.drain()
        assert client.stats.timeouts == 4


def test_send_one_is_request_reply(ctx, engines):
    engine = engines()
    with CarrierClient(ctx, engine.endpoint, "cmcc", timeout_ms=1000) as client:
        ack = client.send_one(_frame(42, n=6))
        assert ack == {"v": 1, "batch": 42, "status": "ok", "accepted": 6, "rejected": [],
                       "error": None}
        assert client.send_one(_frame(42, n=6))["status"] == "duplicate"
        garbage = client.send_one(b"\xc1 not msgpack")         # no batch number: matched alone
        assert garbage["status"] == "rejected" and garbage["error"] == "malformed"
        assert client.stats.batch_errors == {"malformed": 1}


def test_a_repeated_ack_is_stale_and_ignored(ctx, engines):
    engine = engines(repeat=2)
    with CarrierClient(ctx, engine.endpoint, "cmcc", timeout_ms=1000) as client:
        assert client.send_one(_frame(3))["status"] == "ok"
        client.send(_frame(4), 4)       # its ack comes after batch 3's second copy
        client.drain()                  # (and batch 4's second copy may come in the same sweep)
    assert client.stats.stale_acks in (1, 2) and client.stats.acks == {"ok": 2}
    assert client.stats.fixes_accepted == 6


def test_curve_client_is_admitted_and_a_wrong_key_gives_up(ctx, engines, tmp_path):
    keys.generate(tmp_path / "keys", ["cmcc", "rogue"])
    allowed = {keys.load_public_key(tmp_path / "keys" / "cmcc.key"): "cmcc"}
    auth = CarrierAuthenticator(ctx, allowed)
    auth.start()
    try:
        server = keys.load_server_keys(tmp_path / "keys")
        engine = engines(setup=lambda s: secure_router(s, auth, server))
        with CarrierClient(ctx, engine.endpoint, "cmcc", timeout_ms=1000,
                           curve=load_curve(tmp_path / "keys", "cmcc")) as client:
            assert client.send_one(_frame(1))["status"] == "ok"
        rogue = load_curve(tmp_path / "keys", "rogue")
        assert "secret" not in repr(rogue)
        with CarrierClient(ctx, engine.endpoint, "rogue", timeout_ms=150, retries=2,
                           curve=rogue) as client:
            with pytest.raises(CarrierError):
                client.send_one(_frame(2, carrier="rogue"))
        engine.stop()                           # the ROUTER closes before its ZAP handler
    finally:
        auth.stop()


def test_a_key_refused_before_the_first_send_still_gives_up(ctx, engines, tmp_path):
    """libzmq ends a connection whose key ZAP refused for good: no reconnect, no pipe, so
    every send is refused. A client held up between connecting and sending (a loaded
    machine: the hang once seen under two pytest workers) finds exactly that, and must
    still give up after its retries. Here the refusal is awaited before the first send."""
    keys.generate(tmp_path / "keys", ["cmcc", "rogue"])
    auth = CarrierAuthenticator(ctx, {keys.load_public_key(tmp_path / "keys" / "cmcc.key"):
                                      "cmcc"})
    auth.start()
    outcome = []
    try:
        engine = engines(setup=lambda s: secure_router(s, auth,
                                                       keys.load_server_keys(tmp_path / "keys")))
        client = CarrierClient(ctx, engine.endpoint, "rogue", timeout_ms=150, retries=2,
                               curve=load_curve(tmp_path / "keys", "rogue"))
        monitor = client._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:   # the client's end of the refused handshake is over once it reports this
            assert monitor.poll(JOIN_TIMEOUT_S * 1000), "the refused handshake never ended"
        finally:
            client._socket.disable_monitor()
            monitor.close(linger=0)
        assert _until(lambda: _refuses_sends(client._socket)), "the pipe outlived its connection"

        def give_up():
            try:
                client.send_one(_frame(2, carrier="rogue"))
            except CarrierError as e:
                outcome.append(e)

        sender = threading.Thread(target=give_up, name="rogue-carrier", daemon=True)
        sender.start()
        sender.join(JOIN_TIMEOUT_S)
        assert not sender.is_alive(), "the client kept trying a socket that takes nothing"
        client.close()
        assert len(outcome) == 1 and client.stats.timeouts == 2
        assert client.stats.sends <= 1      # the first socket took nothing, as arranged
        assert client.unacknowledged() == [2]
        engine.stop()
    finally:
        auth.stop()
    assert auth.refusals()["unknown_key"] >= 1


def test_stats_combine_and_percentiles():
    a, b = CarrierStats(), CarrierStats()
    a.latency_ms.extend(range(1, 51))
    b.latency_ms.extend(range(51, 101))
    a.acks["ok"], b.acks["ok"], b.acks["busy"] = 2, 3, 1
    a.fixes_rejected["lon"], b.fixes_rejected["lon"] = 1, 2
    total = CarrierStats.combined([a, b])
    assert total.acks == {"ok": 5, "busy": 1} and total.fixes_rejected == {"lon": 3}
    assert total.latency_percentile(50) == 50 and total.latency_percentile(99) == 99
    assert CarrierStats().latency_percentile(50) is None


# -- the simulator ------------------------------------------------------------------

def _columns(batch):
    """t, lon, lat, acc (NaN: nil) and src (list) of a batch map, either form."""
    if "fixes" in batch:
        rows = batch["fixes"]
        return {"t": np.array([r[1] for r in rows], np.int64),
                "lon": np.array([r[2] for r in rows], float),
                "lat": np.array([r[3] for r in rows], float),
                "acc": np.array([np.nan if r[4] is None else r[4] for r in rows], float),
                "src": [r[5] for r in rows]}
    cols = batch["cols"]
    assert isinstance(cols["device"], bytes)                # numeric ids: an int64 bin
    return {"t": np.frombuffer(cols["t"], "<i8"), "lon": np.frombuffer(cols["lon"], "<f8"),
            "lat": np.frombuffer(cols["lat"], "<f8"), "acc": np.frombuffer(cols["acc"], "<f8"),
            "src": cols["src"]}


def _all_columns(batches):
    parts = [_columns(b) for b in batches]
    return {k: (sum((p[k] for p in parts), []) if k == "src"
                else np.concatenate([p[k] for p in parts])) for k in parts[0]}


@pytest.mark.parametrize("form", ["cols", "rows"])
def test_simulate_sends_every_fix_with_datum_and_spoiled_fixes(ctx, engines, form):
    engine = engines(judge=_judge_like_the_engine)
    lines = []
    bad_share, zero_share = 0.01, 0.005
    now_ms = int(time.time() * 1000)
    stats = simulate(engine.endpoint, 50, 0, seed=11, form=form, batch_fixes=2000,
                     bad_share=bad_share, zero_share=zero_share, ctx=ctx, out=lines.append)
    batches = [b for _, b, _ in engine.received]
    assert all(b is not None for b in batches)
    fixes = _all_columns(batches)
    n = len(fixes["t"])
    assert n == stats["fixes"] == stats["fixes_sent"] > 10_000
    assert stats["fixes_accepted"] + sum(stats["fixes_rejected"].values()) == n
    assert stats["batches"] == len(batches) and stats["resends"] == 0
    assert max(len(_columns(b)["t"]) for b in batches) <= 2000

    by_carrier = {}
    for b in batches:
        by_carrier.setdefault(b["carrier"], []).append(b)
    assert set(by_carrier) == {"cmcc", "cucc", "ctcc"}
    for name, mine in by_carrier.items():
        assert all(b.get("datum") == ("gcj02" if name == "cucc" else None) for b in mine)
        numbers = [b["batch"] for b in mine]
        assert numbers == sorted(set(numbers))              # distinct, in order
        t = _all_columns(mine)["t"]
        assert (np.diff(t) >= 0).all()                      # time order
        assert t.min() >= now_ms - DAY_MS - 120_000 and t.max() <= now_ms + FUTURE_TOLERANCE_MS

    bad = (~(np.abs(fixes["lon"]) <= 180)).sum() + (fixes["acc"] < 0).sum() \
        + sum(s not in SOURCES for s in fixes["src"])
    zero = ((fixes["lon"] == 0) & (fixes["lat"] == 0)).sum()
    assert math.isclose(bad / n, bad_share, rel_tol=0.05)
    assert math.isclose(zero / n, zero_share, rel_tol=0.05)
    injected = stats["injected"]
    assert sum(injected["bad"].values()) == bad and injected["zero"] == zero
    assert set(injected["bad"]) == set(SPOILS) and all(injected["bad"].values())
    # the engine's own (reference) decoder refuses exactly the spoiled fixes, as planted
    assert stats["fixes_rejected"] == {
        "lon": injected["bad"]["lon_nan"] + injected["bad"]["lon_range"],
        "acc": injected["bad"]["acc"], "src": injected["bad"]["src"],
        "no_position": injected["zero"]}
    assert set(stats["batches_by_status"]) <= {"ok", "partial"}

    text = "\n".join(lines)
    assert "accepted" in text and "p50" in text and "cucc" in text
    assert not re.search(r"1\d{10}", text.replace(",", ""))  # no phone number
    assert not re.search(r"\d\.\d{3}", text)                # no coordinate (nor any
    # number with 3+ decimals: counts, rates and milliseconds are printed with at most 1)


def test_simulate_converts_gcj02_carriers_only(ctx, engines):
    engine = engines()
    simulate(engine.endpoint, 30, 0, seed=5, carriers=("a", "b"), gcj02_carriers=("b",),
             bad_share=0, zero_share=0, ctx=ctx, out=lambda line: None)
    engine2 = engines()
    simulate(engine2.endpoint, 30, 0, seed=5, carriers=("a", "b"), gcj02_carriers=(),
             bad_share=0, zero_share=0, ctx=ctx, out=lambda line: None)

    def lon_of(e, name):
        return _all_columns([b for _, b, _ in e.received if b["carrier"] == name])["lon"]

    assert np.array_equal(lon_of(engine, "a"), lon_of(engine2, "a"))
    shift = lon_of(engine, "b") - lon_of(engine2, "b")
    assert (np.abs(shift) > 1e-4).all() and (np.abs(shift) < 1e-2).all()   # ~10..1000 m


def test_simulate_holds_the_rate_and_the_duration(ctx, engines):
    engine = engines()
    start = time.monotonic()
    stats = simulate(engine.endpoint, 50, 2000, seed=3, duration_s=1.0, ctx=ctx,
                     out=lambda line: None)
    elapsed = time.monotonic() - start
    assert stats["fixes_sent"] < stats["fixes"]
    # one second of burst, then 2000/s until the deadline: a batch (capped at the rate,
    # 2000 fixes) is sent only if its tokens come before the deadline
    assert 2000 <= stats["fixes_sent"] <= 2 * 2000
    assert max(len(_columns(b)["t"]) for _, b, _ in engine.received) <= 2000
    assert elapsed < 10


def test_simulate_raises_when_the_engine_is_gone(ctx):
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    lines = []
    start = time.monotonic()
    with pytest.raises(CarrierError):
        simulate(f"tcp://127.0.0.1:{port}", 20, 0, seed=1, timeout_ms=100, retries=2,
                 ctx=ctx, out=lines.append)
    assert time.monotonic() - start < 5
    assert any("stopped" in line for line in lines)


def test_token_bucket_paces_callers():
    bucket = TokenBucket(1000)
    waits = [bucket.reserve(500) for _ in range(4)]   # 2000 tokens: 1000 burst, then debt
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(0.5, abs=0.05) and waits[3] == pytest.approx(1.0, abs=0.05)
    assert TokenBucket(0).reserve(10**9) == 0.0       # no limit
    late = TokenBucket(100)
    assert late.reserve(100) == 0.0                   # the burst
    assert late.reserve(100, deadline=time.monotonic() + 0.5) is None   # would need 1 s
    assert late.reserve(100, deadline=time.monotonic() + 2) == pytest.approx(1.0, abs=0.05)


def test_idle_reads_acks_while_the_sender_waits(ctx, engines):
    engine = engines()
    with CarrierClient(ctx, engine.endpoint, "cmcc", timeout_ms=1000) as client:
        client.send(_frame(1), 1)
        client.idle(0.3)
        assert client.unacknowledged() == []          # the ack was read during the wait
        assert client.stats.latency_percentile(50) < 100
