"""Carrier authentication: key files, the fail-closed ZAP handler, the bind policy.

Real sockets on loopback (port chosen by the OS), a real ROUTER and real DEALER/REQ
carriers. Every wait is a poll with a timeout and every socket has LINGER 0, so a
failure shows as a failed assertion, never a hung run. Fixtures stop the authenticator
after closing the ROUTER, and destroy the context last.
"""

import logging
import os
import shutil
import stat
import threading
import time

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from ingest import keys
from ingest.auth import (
    REFUSAL_REASONS,
    AuthenticatorError,
    CarrierAuthenticator,
    InsecureBindError,
    carrier_of,
    check_bind_allowed,
    configure_client,
    is_loopback,
    secure_router,
)

REPLY_TIMEOUT_MS = 3000     # an admitted carrier's round trip: handshake plus echo
REFUSED_WAIT_MS = 500       # how long a refused carrier is watched for a (wrong) reply
COUNT_TIMEOUT_S = 3.0


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture
def key_dir(tmp_path):
    """Keys for carriers cmcc, unicom and telecom; only cmcc and unicom are allowed."""
    generated = tmp_path / "keys"
    keys.generate(generated, ["cmcc", "unicom", "telecom"])
    allowed = tmp_path / "carriers"
    allowed.mkdir()
    for name in ("cmcc", "unicom"):
        shutil.copy(generated / f"{name}.key", allowed / f"{name}.key")
    return generated, allowed


@pytest.fixture(autouse=True)
def no_handler_thread_outlives_its_test():
    yield
    assert not [t for t in threading.enumerate() if t.name == "geofence-zap"]


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def refused():
    return []


@pytest.fixture
def auth(ctx, key_dir, refused):
    authenticator = CarrierAuthenticator(ctx, keys.load_allowed_carriers(key_dir[1]),
                                         on_refusal=refused.append)
    authenticator.start()
    yield authenticator
    authenticator.stop()
    assert not authenticator.is_alive()


@pytest.fixture
def router(ctx, auth, key_dir):
    """A secured ROUTER on 127.0.0.1 and the address carriers connect to."""
    socket = ctx.socket(zmq.ROUTER)
    socket.linger = 0
    socket.router_mandatory = True
    secure_router(socket, auth, keys.load_server_keys(key_dir[0]))
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close()


def carrier_socket(ctx, address, key_dir, name=None, kind=zmq.DEALER, server_public=None):
    """A carrier's socket: CURVE with `name`'s generated keys, or NULL if name is None."""
    socket = ctx.socket(kind)
    socket.linger = 0
    if name is not None:
        pair = keys.load_keypair(key_dir[0] / f"{name}.key_secret")
        server = server_public or keys.load_public_key(key_dir[0] / "server.key")
        configure_client(socket, server, pair.public, pair.secret)
    socket.connect(address)
    return socket


def round_trip(router_socket, client, timeout_ms=REPLY_TIMEOUT_MS):
    """Send a batch from `client`, echo it from the ROUTER; (User-Id, reply) or None."""
    client.send(b"batch")
    if not router_socket.poll(timeout_ms):
        return None
    frames = router_socket.recv_multipart(copy=False)
    user_id = carrier_of(frames[-1])
    router_socket.send_multipart([f.bytes for f in frames[:-1]] + [b"ack"])
    assert client.poll(timeout_ms), "the admitted carrier got no reply"
    return user_id, client.recv()


def libzmq_enforces_zap(ctx):
    probe = ctx.socket(zmq.ROUTER)
    try:
        probe.set(zmq.ZAP_ENFORCE_DOMAIN, 1)
        return True
    except (AttributeError, zmq.ZMQError):
        return False
    finally:
        probe.close()


def wait_for(predicate, timeout_s=COUNT_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- the ZAP handler, over real sockets ------------------------------------------------

@pytest.mark.parametrize("kind", [zmq.DEALER, zmq.REQ], ids=["dealer", "req"])
def test_allowed_carrier_gets_replies_named_by_its_key(ctx, router, key_dir, kind):
    socket, address = router
    client = carrier_socket(ctx, address, key_dir, "cmcc", kind)
    try:
        assert round_trip(socket, client) == ("cmcc", b"ack")
        assert round_trip(socket, client) == ("cmcc", b"ack")
    finally:
        client.close()


def test_each_connection_carries_its_own_carrier(ctx, router, key_dir, auth):
    socket, address = router
    cmcc = carrier_socket(ctx, address, key_dir, "cmcc")
    unicom = carrier_socket(ctx, address, key_dir, "unicom")
    try:
        assert round_trip(socket, unicom) == ("unicom", b"ack")
        assert round_trip(socket, cmcc) == ("cmcc", b"ack")
        assert round_trip(socket, unicom) == ("unicom", b"ack")
    finally:
        cmcc.close()
        unicom.close()
    assert sum(auth.refusals().values()) == 0


def test_unknown_key_is_refused_and_counted(ctx, router, key_dir, auth, refused):
    socket, address = router
    client = carrier_socket(ctx, address, key_dir, "telecom")   # keys made, not allowed
    try:
        assert round_trip(socket, client, timeout_ms=REFUSED_WAIT_MS) is None
        assert wait_for(lambda: auth.refusals()["unknown_key"] >= 1)
    finally:
        client.close()
    assert set(refused) == {"unknown_key"}
    assert auth.refusals()["unknown_key"] == len(refused)


def test_client_without_curve_is_refused_and_counted(ctx, router, key_dir, auth, refused):
    socket, address = router
    client = carrier_socket(ctx, address, key_dir, name=None)   # NULL mechanism
    try:
        assert round_trip(socket, client, timeout_ms=REFUSED_WAIT_MS) is None
        assert wait_for(lambda: auth.refusals()["wrong_mechanism"] >= 1)
    finally:
        client.close()
    assert set(refused) == {"wrong_mechanism"}


def test_client_with_wrong_server_key_is_refused_and_counted(ctx, router, key_dir, auth):
    socket, address = router
    stranger_public, _ = zmq.curve_keypair()
    client = carrier_socket(ctx, address, key_dir, "cmcc", server_public=stranger_public)
    try:
        assert round_trip(socket, client, timeout_ms=REFUSED_WAIT_MS) is None
        assert wait_for(lambda: auth.refusals()["bad_handshake"] >= 1)
    finally:
        client.close()


def test_null_socket_with_zap_domain_is_refused_by_the_handler(ctx, auth, key_dir):
    """Any socket of the context that asks ZAP about NULL is refused: only CURVE passes."""
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    server.zap_domain = auth.domain.encode()
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = carrier_socket(ctx, f"tcp://127.0.0.1:{port}", key_dir, name=None)
    try:
        assert round_trip(server, client, timeout_ms=REFUSED_WAIT_MS) is None
        assert wait_for(lambda: auth.refusals()["wrong_mechanism"] >= 1)
    finally:
        client.close()
        server.close()


def test_revoked_key_is_refused_on_its_next_connection(ctx, router, key_dir, auth):
    socket, address = router
    auth.set_allowed({k: v for k, v in keys.load_allowed_carriers(key_dir[1]).items()
                      if v != "cmcc"})
    client = carrier_socket(ctx, address, key_dir, "cmcc")
    try:
        assert round_trip(socket, client, timeout_ms=REFUSED_WAIT_MS) is None
        assert wait_for(lambda: auth.refusals()["unknown_key"] >= 1)
    finally:
        client.close()


def test_handler_survives_a_failing_hook(ctx, key_dir):
    def broken_hook(reason):
        raise RuntimeError("metrics are down")

    with CarrierAuthenticator(ctx, keys.load_allowed_carriers(key_dir[1]),
                              on_refusal=broken_hook) as authenticator:
        socket = ctx.socket(zmq.ROUTER)
        socket.linger = 0
        secure_router(socket, authenticator, keys.load_server_keys(key_dir[0]))
        address = f"tcp://127.0.0.1:{socket.bind_to_random_port('tcp://127.0.0.1')}"
        stranger = carrier_socket(ctx, address, key_dir, "telecom")
        allowed = carrier_socket(ctx, address, key_dir, "cmcc")
        try:
            assert round_trip(socket, stranger, timeout_ms=REFUSED_WAIT_MS) is None
            assert wait_for(lambda: authenticator.refusals()["unknown_key"] >= 1)
            assert round_trip(socket, allowed) == ("cmcc", b"ack")
        finally:
            stranger.close()
            allowed.close()
            socket.close()


def test_no_handler_means_no_entry(ctx, key_dir):
    """Fail closed: with the handler gone, even an allowed key is refused."""
    if not libzmq_enforces_zap(ctx):
        pytest.skip("this libzmq cannot enforce ZAP")
    socket = ctx.socket(zmq.ROUTER)
    socket.linger = 0
    try:
        with CarrierAuthenticator(ctx, keys.load_allowed_carriers(key_dir[1])) as authenticator:
            secure_router(socket, authenticator, keys.load_server_keys(key_dir[0]))
        assert socket.get(zmq.ZAP_ENFORCE_DOMAIN), "secure_router left ZAP enforcement off"
        address = f"tcp://127.0.0.1:{socket.bind_to_random_port('tcp://127.0.0.1')}"
        client = carrier_socket(ctx, address, key_dir, "cmcc")
        try:
            assert round_trip(socket, client, timeout_ms=REFUSED_WAIT_MS) is None
        finally:
            client.close()
    finally:
        socket.close()


def test_secure_router_refuses_to_run_unguarded(ctx, key_dir):
    server = keys.load_server_keys(key_dir[0])
    authenticator = CarrierAuthenticator(ctx, {})
    socket = ctx.socket(zmq.ROUTER)
    socket.linger = 0
    try:
        with pytest.raises(AuthenticatorError, match="start the authenticator"):
            secure_router(socket, authenticator, server)
        other = zmq.Context()
        try:
            with CarrierAuthenticator(other, {}) as elsewhere:
                with pytest.raises(AuthenticatorError, match="another context"):
                    secure_router(socket, elsewhere, server)
        finally:
            other.destroy(linger=0)
        with authenticator:
            socket.bind_to_random_port("tcp://127.0.0.1")
            with pytest.raises(AuthenticatorError, match="before binding"):
                secure_router(socket, authenticator, server)
    finally:
        socket.close()


def test_one_handler_per_context(ctx, auth):
    with pytest.raises(AuthenticatorError, match="another authenticator"):
        CarrierAuthenticator(ctx, {}).start()
    assert auth.is_alive()


def test_refusals_list_every_reason_from_zero(ctx):
    assert CarrierAuthenticator(ctx, {}).refusals() == dict.fromkeys(REFUSAL_REASONS, 0)


def test_logs_never_contain_keys(ctx, router, key_dir, auth, caplog):
    caplog.set_level(logging.DEBUG)
    socket, address = router
    stranger = carrier_socket(ctx, address, key_dir, "telecom")
    allowed = carrier_socket(ctx, address, key_dir, "cmcc")
    try:
        assert round_trip(socket, stranger, timeout_ms=REFUSED_WAIT_MS) is None
        assert round_trip(socket, allowed) == ("cmcc", b"ack")
        assert wait_for(lambda: auth.refusals()["unknown_key"] >= 1)
    finally:
        stranger.close()
        allowed.close()
    assert "unknown carrier key" in caplog.text
    for name in ("telecom", "cmcc", "server"):
        pair = keys.load_keypair(key_dir[0] / f"{name}.key_secret")
        for key in (pair.public, pair.secret):
            assert key.decode() not in caplog.text
            assert z85.decode(key).hex() not in caplog.text


def test_carrier_of_is_none_without_authentication(ctx):
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    client = ctx.socket(zmq.DEALER)
    client.linger = 0
    try:
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"batch")
        assert server.poll(REPLY_TIMEOUT_MS)
        assert carrier_of(server.recv_multipart(copy=False)[-1]) is None
    finally:
        client.close()
        server.close()


# -- key files -------------------------------------------------------------------------

def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_writes_loadable_pairs_with_private_secrets(tmp_path):
    out = tmp_path / "new" / "keys"
    created = keys.generate(out, ["cmcc", "unicom"])
    names = sorted(p.name for p in created)
    assert names == ["cmcc.key", "cmcc.key_secret", "server.key", "server.key_secret",
                     "unicom.key", "unicom.key_secret"]
    assert sorted(p.name for p in out.iterdir()) == names   # no staging left behind
    assert mode(out) == 0o700
    for path in created:
        public, secret = zmq.auth.load_certificate(path)
        assert len(public) == 40
        if path.suffix == ".key_secret":
            assert mode(path) == 0o600
            assert zmq.curve_public(secret) == public
        else:
            assert secret is None
            assert not mode(path) & 0o022
    server = keys.load_server_keys(out)
    assert server.public == keys.load_public_key(out / "server.key")
    assert server.secret.decode() not in repr(server)


def test_generate_refuses_to_overwrite_unless_forced(tmp_path):
    keys.generate(tmp_path, ["cmcc"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(keys.KeysExistError, match="cmcc.key"):
        keys.generate(tmp_path, ["unicom", "cmcc"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # nothing written

    created = keys.generate(tmp_path, ["unicom"])     # adding a carrier keeps the server
    assert sorted(p.name for p in created) == ["unicom.key", "unicom.key_secret"]
    assert (tmp_path / "server.key_secret").read_bytes() == before["server.key_secret"]

    keys.generate(tmp_path, ["cmcc"], force=True)     # replaces the server and cmcc
    for name in ("server.key_secret", "cmcc.key_secret"):
        assert (tmp_path / name).read_bytes() != before[name]
        assert mode(tmp_path / name) == 0o600


def test_generate_refuses_half_a_server_pair(tmp_path):
    keys.generate(tmp_path, [])
    (tmp_path / "server.key").unlink()
    with pytest.raises(keys.KeyFileError, match="server.key is missing"):
        keys.generate(tmp_path, ["cmcc"])


@pytest.mark.parametrize("name", ["", "server", "a b", "../etc", "x" * 65, "中国移动", "a/b"])
def test_generate_rejects_bad_carrier_names_and_writes_nothing(tmp_path, name):
    with pytest.raises(keys.CarrierNameError):
        keys.generate(tmp_path / "keys", ["cmcc", name])
    assert not (tmp_path / "keys").exists()


def test_generate_rejects_a_name_given_twice(tmp_path):
    with pytest.raises(keys.CarrierNameError, match="twice"):
        keys.generate(tmp_path, ["cmcc", "cmcc"])


def test_allowed_carriers_are_named_by_file_stem(key_dir):
    allowed = keys.load_allowed_carriers(key_dir[1])
    assert sorted(allowed.values()) == ["cmcc", "unicom"]
    assert allowed[keys.load_public_key(key_dir[0] / "cmcc.key")] == "cmcc"


@pytest.mark.parametrize("damage, message", [
    (lambda d, g: shutil.copy(g / "cmcc.key", d / "cmcc-again.key"), "same key as"),
    (lambda d, g: (d / "broken.key").write_text("metadata\ncurve\n"), "broken.key: not a cert"),
    (lambda d, g: (d / "short.key").write_text('curve\n    public-key = "abc"\n'),
     "short.key: the public key is not"),
    (lambda d, g: shutil.copy(g / "telecom.key", d / "bad name.key"), "bad name.key"),
    (lambda d, g: shutil.copy(g / "telecom.key", d / "server.key"), "reserved"),
    (lambda d, g: shutil.copy(g / "telecom.key_secret", d / "telecom.key"), "holds a secret"),
    (lambda d, g: shutil.copy(g / "server.key_secret", d), "must hold only"),
    (lambda d, g: (d / "dir.key").mkdir(), "dir.key"),
])
def test_allowed_carriers_reject_bad_files_naming_them(key_dir, damage, message):
    generated, allowed = key_dir
    damage(allowed, generated)
    with pytest.raises(keys.KeyFileError, match=message):
        keys.load_allowed_carriers(allowed)


def test_allowed_carriers_ignore_other_files_and_need_the_directory(key_dir, tmp_path):
    (key_dir[1] / "README.txt").write_text("public keys of our carriers")
    assert len(keys.load_allowed_carriers(key_dir[1])) == 2
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.load_allowed_carriers(tmp_path / "missing")


def test_server_keys_must_be_a_matching_pair(key_dir):
    generated = key_dir[0]
    other = keys.load_keypair(generated / "cmcc.key_secret")
    text = (generated / "server.key_secret").read_text()
    secret = zmq.auth.load_certificate(generated / "server.key_secret")[1].decode()
    (generated / "server.key_secret").write_text(text.replace(secret, other.secret.decode()))
    with pytest.raises(keys.KeyFileError, match="does not belong"):
        keys.load_server_keys(generated)
    with pytest.raises(keys.KeyFileError, match="no secret key"):
        keys.load_keypair(generated / "cmcc.key")
    with pytest.raises(keys.KeyFileError, match="no such"):
        keys.load_server_keys(generated / "missing")


# -- the bind policy -------------------------------------------------------------------

LOCAL = ["tcp://127.0.0.1:5555", "tcp://127.1.2.3:5555", "tcp://127.0.0.1:*",
         "tcp://[::1]:5555", "tcp://localhost:5555", "tcp://LOCALHOST:5555",
         "tcp://[::ffff:127.0.0.1]:5555", "ws://127.0.0.1:8081/feed",
         "ipc:///run/geofence/ingest.sock", "inproc://ingest"]
EXPOSED = ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://10.1.2.3:5555",
           "tcp://192.168.0.7:5555", "tcp://[2001:db8::1]:5555", "tcp://eth0:5555",
           "tcp://lo:5555", "tcp://ingest.example.net:5555", "tcp://127.0.0.1", "tcp://:5555",
           "ws://0.0.0.0:8081/feed", "pgm://eth0;239.192.1.1:5555", "127.0.0.1:5555", ""]


@pytest.mark.parametrize("endpoint", LOCAL)
def test_loopback_and_local_endpoints_bind_without_curve(endpoint):
    assert is_loopback(endpoint)
    check_bind_allowed(endpoint, curve_configured=False, insecure=False)


@pytest.mark.parametrize("endpoint", EXPOSED)
def test_exposed_endpoints_need_curve_or_insecure(endpoint):
    assert not is_loopback(endpoint)
    with pytest.raises(InsecureBindError, match="Configure CURVE .* or pass --insecure"):
        check_bind_allowed(endpoint, curve_configured=False, insecure=False)
    check_bind_allowed(endpoint, curve_configured=True, insecure=False)
    check_bind_allowed(endpoint, curve_configured=False, insecure=True)


def test_insecure_bind_error_is_a_value_error():
    assert issubclass(InsecureBindError, ValueError)
