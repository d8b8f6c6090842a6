"""CURVE on the carrier feed (SPEC §4 Security): only known keys get in, each carrier
speaks only for itself, and the engine will not listen off-machine unauthenticated.
The alarm PUB socket takes CURVE the same way: only allowed subscribers hear alarms."""

import json
import shutil
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from ingest.auth import configure_client
from ingest.keys import generate, load_keypair, load_public_key
from ingest.protocol import decode_ack, encode_cols
from service.cli import main as cli
from tests.engine_harness import Engine, population_document, write_config


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve")
    keys = root / "keys"
    generate(keys, ["cmcc", "ctcc", "intruder"])
    allowed = root / "carriers"
    allowed.mkdir()
    for name in ("cmcc", "ctcc"):                          # intruder's key is not allowed
        shutil.copy(keys / f"{name}.key", allowed / f"{name}.key")
    config = write_config(root, curve_keys=str(keys), curve_carriers=str(allowed))
    registry = root / "registry.json"
    registry.write_text(json.dumps(population_document(20), ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    engine = Engine(config)
    yield engine, keys
    engine.stop()


def ask(endpoint, frame, keys=None, name=None, timeout_ms=3000):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        me = load_keypair(keys / f"{name}.key_secret")
        configure_client(sock, load_public_key(keys / "server.key"), me.public, me.secret)
    sock.connect(endpoint)
    sock.send(frame)
    ack = decode_ack(sock.recv()) if sock.poll(timeout_ms) else None
    sock.close()
    ctx.term()
    return ack


def batch(carrier: str, number: int) -> bytes:
    now = int(time.time() * 1000)
    return encode_cols(carrier, number, np.array([13900000001]), np.array([now]),
                       np.array([117.3]), np.array([34.8]))


def test_an_allowed_carrier_is_served(secured):
    engine, keys = secured
    assert ask(engine.endpoint, batch("cmcc", 1), keys, "cmcc")["status"] == "ok"


def test_a_carrier_cannot_speak_for_another(secured):
    engine, keys = secured
    ack = ask(engine.endpoint, batch("cucc", 2), keys, "cmcc")
    assert ack["status"] == "rejected" and ack["error"] == "unauthorized"


@pytest.mark.parametrize("who", ["intruder", None], ids=["unknown key", "no CURVE"])
def test_unknown_or_missing_keys_get_no_answer(secured, who):
    engine, keys = secured
    assert ask(engine.endpoint, batch("cmcc", 3), keys if who else None, who,
               timeout_ms=1500) is None


def test_locate_requests_go_to_the_authenticated_carrier_of_the_device_only(secured):
    """ctcc carries phone 5: a request for it goes to ctcc, never to cmcc, even after cmcc
    sent a batch in ctcc's name (refused); a phone no carrier has delivered yet waits
    until its carrier is known (no request is broadcast under CURVE)."""
    from carriers.locate_store import LocateStore
    from ingest.carrier import CarrierClient, load_curve

    engine, keys = secured
    ctx = zmq.Context()
    requests = LocateStore(engine.paths.locate_db)
    now = int(time.time() * 1000)

    def fix(carrier, number, device, t):
        return encode_cols(carrier, number, np.array([device]), np.array([t]),
                           np.array([117.3]), np.array([34.8])), number

    def request_for(client):
        deadline = time.monotonic() + 60
        while not (taken := client.take_locate_requests()):
            assert time.monotonic() < deadline, "no locate request reached the carrier"
            client.idle(0.05)
        return [r["request"] for r in taken]

    with CarrierClient(ctx, engine.endpoint, "cmcc", curve=load_curve(keys, "cmcc")) as cmcc, \
            CarrierClient(ctx, engine.endpoint, "ctcc", curve=load_curve(keys, "ctcc")) as ctcc:
        ctcc.send(*fix("ctcc", 100, 13900000005, now - 60_000))
        ctcc.drain()
        cmcc.send(*fix("ctcc", 101, 13900000005, now - 50_000))    # not its name: refused
        cmcc.send(*fix("cmcc", 102, 13900000006, now - 50_000))
        cmcc.drain()
        assert dict(cmcc.stats.batch_errors) == {"unauthorized": 1}
        asked = requests.request("S00005", "13900000005", "x", "desk", "officer", now)
        unknown = requests.request("S00009", "13900000009", "x", "desk", "officer", now)
        assert request_for(ctcc) == [asked.id]
        ctcc.send(*fix("ctcc", 103, 13900000005, int(time.time() * 1000)))
        ctcc.drain()
        assert requests.get(asked.id).state == "answered"
        assert requests.get(unknown.id).state == "pending"
        cmcc.idle(0.3)
        assert cmcc.take_locate_requests() == []
        cmcc.send(*fix("cmcc", 104, 13900000009, now - 3_600_000))  # now its carrier is known
        cmcc.drain()
        assert request_for(cmcc) == [unknown.id]
        ctcc.idle(0.3)
        assert ctcc.take_locate_requests() == []
    requests.close()
    ctx.term()


def test_refuses_a_public_bind_without_curve(tmp_path):
    config = write_config(tmp_path, port=0)
    text = config.read_text().replace("tcp://127.0.0.1:0", "tcp://0.0.0.0:5599")
    config.write_text(text)
    done = subprocess.run([sys.executable, "-m", "service.cli", "--config", str(config), "serve"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--insecure" in done.stderr and done.stderr.count("\n") == 1


def test_refusals_are_counted(secured):
    from tests.test_engine_fuzz import metrics, total

    engine, keys = secured
    before = total(metrics(engine), "geofence_auth_refusals_total")
    assert ask(engine.endpoint, batch("cmcc", 4), keys, "intruder", timeout_ms=1500) is None
    deadline = time.monotonic() + 10
    while total(metrics(engine), "geofence_auth_refusals_total") <= before:
        assert time.monotonic() < deadline, "refusal not counted"
        time.sleep(0.1)


def test_alarms_on_a_curve_pub_socket_reach_allowed_subscribers_only(tmp_path):
    keys = tmp_path / "keys"
    generate(keys, ["desk", "stranger"])
    allowed = tmp_path / "subscribers"
    allowed.mkdir()
    shutil.copy(keys / "desk.key", allowed / "desk.key")
    config = write_config(tmp_path, alerts={"curve_keys": str(keys),
                                            "curve_subscribers": str(allowed)})
    doc = population_document(20)
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import", str(registry)]) == 0
    publish = config.read_text().split('publish = "')[1].split('"')[0]
    subject = doc["subjects"][0]
    engine = Engine(config)
    ctx = zmq.Context()
    subscribers = {}
    try:
        for name in ("desk", "stranger"):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            me = load_keypair(keys / f"{name}.key_secret")
            configure_client(sub, load_public_key(keys / "server.key"), me.public, me.secret)
            sub.setsockopt(zmq.SUBSCRIBE, b"3704/")
            sub.connect(publish)
            subscribers[name] = sub
        time.sleep(0.5)
        t = int(time.time() * 1000) - 60_000
        frame = encode_cols("cmcc", 1, np.array([int(subject["devices"][0])] * 2),
                            np.array([t, t + 1000]), np.array([115.5, 115.5]),
                            np.array([33.5, 33.5]), np.array([20.0, 20.0]))
        assert ask(engine.endpoint, frame)["status"] == "ok"
        assert subscribers["desk"].poll(30_000)
        topic, body = subscribers["desk"].recv_multipart()
        assert msgpack.unpackb(body)["type"] == "zone_exit"
        assert not subscribers["stranger"].poll(1000)
    finally:
        for sub in subscribers.values():
            sub.close()
        ctx.term()
        engine.stop()
