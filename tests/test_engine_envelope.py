"""The carrier endpoint's framing: a DEALER's message is [body], a REQ's is [body] behind
its empty delimiter; exactly one body frame, else the peer gets `malformed` (counted) and
the engine carries on. Real DEALER and REQ sockets against a running engine."""

import time

import numpy as np
import pytest
import zmq

from ingest.protocol import decode_ack, encode_cols
from tests.engine_harness import Engine, import_registry, population_document, write_config

DEVICE = 13900000000
TIMEOUT_MS = 30_000
T0 = int(time.time() * 1000) - 600_000


@pytest.fixture
def engine(tmp_path):
    config = write_config(tmp_path)
    import_registry(config, population_document(5))
    engine = Engine(config)
    yield engine
    engine.stop()


def frame(batch: int) -> bytes:
    """Batch `batch`: three fixes of one phone, at times no other batch uses."""
    t = T0 + batch * 10 + np.arange(3)
    return encode_cols("cmcc", batch, np.full(3, DEVICE), t, np.full(3, 117.3),
                       np.full(3, 34.8), np.full(3, 30.0))


def exchange(sock: zmq.Socket, parts: list[bytes]) -> list[bytes]:
    sock.send_multipart(parts)
    assert sock.poll(TIMEOUT_MS), "no answer"
    return sock.recv_multipart()


def malformed_batches(engine: Engine) -> float:
    return engine.metrics().get('geofence_batch_errors_total{error="malformed"}', 0)


def test_dealer_and_req_framing(engine):
    ctx = zmq.Context()
    dealer, req = ctx.socket(zmq.DEALER), ctx.socket(zmq.REQ)
    try:
        for sock in (dealer, req):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(engine.endpoint)
        # two body frames from a DEALER: answered malformed, not echoed back
        reply = exchange(dealer, [frame(1), frame(2)])
        assert len(reply) == 1
        ack = decode_ack(reply[0])
        assert (ack["status"], ack["error"], ack["batch"]) == ("rejected", "malformed", None)
        # an empty frame only
        assert decode_ack(exchange(dealer, [b""])[0])["error"] == "malformed"
        # the empty delimiter and two frames (a REQ-like envelope with two bodies)
        reply = exchange(dealer, [b"", frame(3), frame(4)])
        assert reply[0] == b"" and decode_ack(reply[1])["error"] == "malformed"
        assert malformed_batches(engine) == 3
        # the engine carries on: a DEALER's batch and a REQ's batch are taken
        ack = decode_ack(exchange(dealer, [frame(5)])[0])
        assert (ack["status"], ack["accepted"]) == ("ok", 3)
        ack = decode_ack(exchange(req, [frame(6)])[0])
        assert (ack["status"], ack["batch"], ack["accepted"]) == ("ok", 6, 3)
        # a REQ sending two frames gets its one reply, malformed
        ack = decode_ack(exchange(req, [frame(7), frame(8)])[0])
        assert ack["error"] == "malformed"
        assert decode_ack(exchange(req, [frame(6)])[0])["status"] == "duplicate"
        assert engine.proc.poll() is None
        assert not [line for line in engine.lines if "Traceback" in line], engine.lines
    finally:
        dealer.close()
        req.close()
        ctx.term()
