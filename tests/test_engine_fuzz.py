"""Hostile carriers against the running engine: every frame gets an answer with a reason,
the counters add up, and the engine stays up (SPEC §4: no crash from any frame)."""

import json
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.protocol import ERRORS, REASONS, STATUSES, encode_cols, encode_rows
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, population_document, write_config

SUBJECTS = 50


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    config = write_config(root)
    registry = root / "registry.json"
    registry.write_text(json.dumps(population_document(SUBJECTS), ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    running = Engine(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def carrier(engine):
    c = Carrier(engine.endpoint)
    yield c
    c.close()


def metrics(engine: Engine) -> dict[str, float]:
    return engine.metrics()


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=30)
field_names = st.sampled_from(["v", "carrier", "batch", "datum", "fixes", "cols", "junk"])


@st.composite
def hostile_batches(draw) -> bytes:
    """Well-formed msgpack shaped like a batch, with any field possibly wrong."""
    n = draw(st.integers(0, 20))
    now = int(time.time() * 1000)
    device = draw(st.lists(st.one_of(st.sampled_from([str(13900000000 + i) for i in range(5)]),
                                     values), min_size=n, max_size=n))
    rows = [[device[i], draw(st.one_of(st.just(now - 1000 * i), values)),
             draw(st.one_of(st.floats(116, 118), values)),
             draw(st.one_of(st.floats(34, 36), values)),
             draw(st.one_of(st.floats(0, 5000), values)),
             draw(st.one_of(st.sampled_from(["gps", "wifi", "cell", None]), values))][
                 :draw(st.integers(3, 7))] for i in range(n)]
    batch = {"v": draw(st.one_of(st.just(1), values)),
             "carrier": draw(st.one_of(st.just("fuzz"), values)),
             "batch": draw(st.one_of(st.integers(0, 2**63 - 1), values)),
             "fixes": rows}
    for name in draw(st.lists(field_names, max_size=3)):
        batch[name] = draw(values)
    return msgpack.packb(batch, use_bin_type=True)


frames = st.one_of(st.binary(max_size=300), hostile_batches(),
                   values.map(lambda v: msgpack.packb(v, use_bin_type=True)))


def check_ack(ack: dict) -> None:
    assert ack is not None, "a frame got no answer"
    assert ack["status"] in STATUSES
    assert ack["error"] in ERRORS
    if ack["status"] == "rejected" and ack["error"] is None:
        assert ack["accepted"] == 0 and ack["rejected"]
    for index, reason in ack["rejected"]:
        assert isinstance(index, int) and reason in REASONS[1:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames)
def test_every_frame_gets_an_answer(carrier, frame):
    check_ack(carrier.request(frame, timeout_ms=10_000))


def test_counters_add_up_and_engine_stays_up(engine, carrier):
    before = metrics(engine)
    rng = np.random.default_rng(3)
    sent = 0
    for k in range(30):
        frame = rng.bytes(int(rng.integers(0, 200))) if k % 3 == 0 else encode_rows(
            "fuzz", 10_000 + k, ["13900000001", "nope", ""], [int(time.time() * 1000) - k] * 3,
            [117.3, 200.0, 117.3], [34.8, 34.8, 34.8])
        check_ack(carrier.request(frame))
        sent += 1
    after = metrics(engine)
    assert total(after, "geofence_batches_total") - total(before, "geofence_batches_total") == sent
    received = total(after, "geofence_fixes_received_total") - total(
        before, "geofence_fixes_received_total")
    taken = (total(after, "geofence_fixes_accepted_total")
             + total(after, "geofence_fixes_rejected_total")
             - total(before, "geofence_fixes_accepted_total")
             - total(before, "geofence_fixes_rejected_total"))
    assert received == taken
    ok = carrier.request(encode_cols("fuzz", 99_999, np.array([13900000002]),
                                     np.array([int(time.time() * 1000)]), np.array([117.3]),
                                     np.array([34.8])))
    assert ok["status"] == "ok" and engine.proc.poll() is None


def test_a_req_peer_gets_its_ack_through_the_envelope(engine):
    import zmq

    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(engine.endpoint)
    try:
        req.send(encode_cols("req-carrier", 1, np.array([13900000003]),
                             np.array([int(time.time() * 1000)]), np.array([117.3]),
                             np.array([34.8])))
        assert req.poll(10_000)
        from ingest.protocol import decode_ack
        ack = decode_ack(req.recv())
        assert ack["status"] == "ok" and ack["batch"] == 1
    finally:
        req.close()
        ctx.term()


def test_simulate_command_feeds_the_running_engine(engine, capsys):
    # the fixture registered population_document(SUBJECTS) with seed 1: register the
    # simulator's own population (seed 7) too, then replay a day for it
    assert cli(["--config", str(engine.config), "simulate", "--register", "--subjects", "30",
                "--connect", engine.endpoint]) == 0
    out = capsys.readouterr().out
    accepted = int(out.split("accepted ")[1].split(";")[0].replace(",", ""))
    sent = int(out.split("sent ")[1].split(" of")[0].replace(",", ""))
    assert sent > 0 and accepted > 0.99 * sent
