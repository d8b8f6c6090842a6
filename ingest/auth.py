"""Who may push fixes: CURVE with a ZAP handler that fails closed (SPEC §4 Security).

A CURVE server socket encrypts, but on its own it admits any client key: libzmq asks the
ZAP handler bound at `inproc://zeromq.zap.01` in the socket's context, and with no handler
there it lets everyone in. So, in the engine's one context:

    auth = CarrierAuthenticator(ctx, keys.load_allowed_carriers(cfg.curve_carriers))
    auth.start()                                   # the context's ZAP handler, a thread
    router = ctx.socket(zmq.ROUTER)
    secure_router(router, auth, keys.load_server_keys(cfg.curve_keys))
    router.bind(cfg.bind)
    ...
    frames = router.recv_multipart(copy=False)
    carrier_of(frames[-1])       # the authenticated carrier: compare with the batch's field
    ...
    router.close(); auth.stop()

Failing closed, step by step:
- `secure_router` refuses a socket already bound, or an authenticator that is not
  running in the socket's context, and sets ZAP_ENFORCE_DOMAIN where libzmq offers it:
  then a connection is refused even if the handler is gone.
- The handler admits only the CURVE mechanism, only the ZAP domain it serves, only the
  keys in its allowed map. Every other request is answered "400" and counted. A failure
  inside the handler answers "500", never "200", and the thread carries on.
- Handshakes libzmq refuses before ZAP (a NULL client at a CURVE socket, a client with
  the wrong server key) are counted too, from the socket's monitor.

The carrier name goes back to libzmq as the ZAP User-Id, so every frame received from
that connection carries it (`frame.get("User-Id")`, receiving with copy=False). Keys are
checked once per connection: a key removed with `set_allowed` is refused on its next
connection, while a connection already open stays open until it drops.

Logs name the carrier, the peer address and the reason, never a key.
"""

import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from geofence.errors import GeofenceError
from ingest.keys import KeyPair, check_carrier_name

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
ZAP_DOMAIN = "geofence.ingest"
REFUSAL_REASONS = (
    "unknown_key",       # CURVE key not in the allowed carriers' directory
    "wrong_mechanism",   # NULL or PLAIN where CURVE is required
    "bad_handshake",     # CURVE handshake failed: wrong server key, garbage, ...
    "wrong_domain",      # a socket of another ZAP domain asked this handler
    "zap_error",         # malformed ZAP request, or a failure inside the handler
)
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_MS = 5000
REFUSAL_LOG_EVERY_S = 60.0   # a misconfigured carrier reconnects ~10 times a second
LOCAL_TRANSPORTS = ("ipc", "inproc")
NETWORK_TRANSPORTS = ("tcp", "ws", "wss", "udp")
_HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_MONITOR_STOPPED
_monitor_ids = itertools.count()


class InsecureBindError(GeofenceError, ValueError):
    """Binding a non-loopback address without CURVE; configure CURVE or pass --insecure."""


class AuthenticatorError(GeofenceError, RuntimeError):
    """The ZAP handler is not running (or not in the socket's context), or a socket was
    bound before it was secured; start the authenticator, then secure, then bind."""


def is_loopback(endpoint: str) -> bool:
    """True if a bind to `endpoint` is reachable from this machine only.

    Local: ipc:// and inproc://, and tcp/ws/wss/udp on 127.0.0.0/8, ::1 (also as
    ::ffff:127.x) or `localhost`. Everything else is not: `*`, 0.0.0.0, ::, other
    addresses, interface names (even `lo`: a name is resolved by the OS, not by us),
    other transports, and anything that does not parse.
    """
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if transport in LOCAL_TRANSPORTS:
        return True
    if transport not in NETWORK_TRANSPORTS:
        return False
    host, colon, port = rest.split("/", 1)[0].rpartition(":")
    if not colon or not port:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_bind_allowed(endpoint: str, curve_configured: bool, insecure: bool) -> None:
    """Raise InsecureBindError unless `endpoint` is loopback, CURVE is on, or `insecure`."""
    if curve_configured or insecure or is_loopback(endpoint):
        return
    raise InsecureBindError(
        f"refusing to bind {endpoint} without CURVE: it is not a loopback address, so anyone "
        "who can reach it could push fixes as any carrier. Configure CURVE ([ingest] "
        "curve_keys and curve_carriers, keys from `geofence keys generate DIR`) or pass "
        "--insecure.")


class CarrierAuthenticator:
    """The context's ZAP handler: admits allowed carrier keys, names them, counts the rest.

    One per context (libzmq allows one handler per context; a second `start` fails). It
    runs in its own thread, which stops on `stop()` or when the context is terminated.
    `on_refusal(reason)` is called in that thread for every refusal (a hook for metrics);
    it should be quick, and its exceptions are logged, not raised.
    """

    def __init__(self, context: zmq.Context, allowed: Mapping[bytes, str], *,
                 domain: str = ZAP_DOMAIN,
                 on_refusal: Callable[[str], None] | None = None):
        self.context = context
        self.domain = domain
        self._domain_bytes = domain.encode()
        self._on_refusal = on_refusal
        self._allowed: dict[bytes, str] = {}
        self.set_allowed(allowed)
        self._counts = dict.fromkeys(REFUSAL_REASONS, 0)
        self._counts_lock = threading.Lock()
        self._control_lock = threading.Lock()   # guards the caller's end of the pipe
        self._control_endpoint = f"inproc://geofence.zap.control.{id(self)}"
        self._pipe: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: zmq.ZMQError | None = None
        self._last_logged: dict[str, float] = {}   # touched by the handler thread only
        self._unlogged = dict.fromkeys(REFUSAL_REASONS, 0)

    # -- the caller's side -----------------------------------------------------------

    def start(self) -> None:
        """Bind the ZAP endpoint and start answering; raise if that is impossible."""
        with self._control_lock:
            if self._thread is not None:
                raise AuthenticatorError("the authenticator is already started")
            self._pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
            self._pipe.linger = 0
            self._pipe.bind(self._control_endpoint)
            self._ready.clear()
            self._start_error = None
            self._thread = threading.Thread(target=self._run, name="geofence-zap", daemon=True)
            self._thread.start()
            started = self._ready.wait(START_TIMEOUT_S)
            if started and self._start_error is None:
                return
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
            self._pipe.close()
            self._pipe = None
        reason = self._start_error or "timed out"
        raise AuthenticatorError(f"cannot start the ZAP handler at {ZAP_ENDPOINT} ({reason}); "
                                 "is another authenticator running in this context?")

    def stop(self) -> None:
        """Stop the handler thread and close its sockets. Close the CURVE sockets first:
        where libzmq cannot enforce ZAP, a socket without a handler admits any key."""
        with self._control_lock:
            if self._thread is None:
                return
            try:
                self._pipe.send(b"STOP", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass   # the thread is gone already (context terminated)
            self._thread.join(STOP_TIMEOUT_S)
            alive = self._thread.is_alive()
            self._thread = None
            self._pipe.close()
            self._pipe = None
        if alive:
            raise AuthenticatorError("the ZAP handler thread did not stop")

    def is_alive(self) -> bool:
        """True while the handler answers ZAP requests."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "CarrierAuthenticator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_allowed(self, allowed: Mapping[bytes, str]) -> None:
        """Replace the allowed map {z85 public key: carrier}; new connections see it."""
        checked = {}
        for key, carrier in allowed.items():
            if not isinstance(key, bytes) or len(key) != 40:
                raise ValueError(f"allowed key for carrier {carrier!r} is not 40 z85 bytes")
            checked[key] = check_carrier_name(carrier)
        self._allowed = checked   # one reference swap: the handler reads either map whole

    def refusals(self) -> dict[str, int]:
        """Refused connections so far, by reason (every reason present, zero or more)."""
        with self._counts_lock:
            return dict(self._counts)

    def watch(self, socket: zmq.Socket) -> None:
        """Count the handshakes `socket` refuses before ZAP is asked (wrong mechanism, bad
        CURVE handshake). Installs the socket's monitor: libzmq allows one per socket."""
        endpoint = f"inproc://geofence.zap.monitor.{id(self)}.{next(_monitor_ids)}"
        with self._control_lock:
            if self._thread is None:
                raise AuthenticatorError("start the authenticator before watching a socket")
            socket.monitor(endpoint, _HANDSHAKE_EVENTS)
            self._pipe.send_multipart([b"WATCH", endpoint.encode()])
            if not self._pipe.poll(CONTROL_TIMEOUT_MS):
                raise AuthenticatorError("the ZAP handler did not answer")
            self._pipe.recv()

    # -- the handler thread ----------------------------------------------------------

    def _run(self) -> None:
        zap = self.context.socket(zmq.REP, socket_class=zmq.Socket)
        zap.linger = 0
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            zap.close()
            self._start_error = e
            self._ready.set()
            return
        pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        pipe.linger = 0
        pipe.connect(self._control_endpoint)
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        monitors: list[zmq.Socket] = []
        self._ready.set()
        try:
            while True:
                events = dict(poller.poll())
                if zap in events:
                    zap.send_multipart(self._answer(zap.recv_multipart()))
                for monitor in [m for m in monitors if m in events]:
                    if not self._on_monitor_event(monitor.recv_multipart()):
                        poller.unregister(monitor)
                        monitors.remove(monitor)
                        monitor.close()
                if pipe in events:
                    command = pipe.recv_multipart()
                    if command[0] == b"STOP":
                        return
                    monitor = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
                    monitor.linger = 0
                    monitor.connect(command[1].decode())
                    poller.register(monitor, zmq.POLLIN)
                    monitors.append(monitor)
                    pipe.send(b"OK")
        except zmq.ContextTerminated:
            pass
        finally:
            for socket in (zap, pipe, *monitors):
                socket.close()

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one request; never raises, never admits by accident."""
        request_id = request[1] if len(request) > 1 else b""
        try:
            if len(request) < 6 or request[0] != ZAP_VERSION:
                return self._refuse(request_id, "zap_error", "malformed ZAP request")
            domain, address, _identity, mechanism, *credentials = request[2:]
            peer = address.decode("ascii", "replace")
            if mechanism != b"CURVE":
                return self._refuse(request_id, "wrong_mechanism", "CURVE required", peer)
            if domain != self._domain_bytes:
                return self._refuse(request_id, "wrong_domain", "unknown ZAP domain", peer)
            if len(credentials) != 1 or len(credentials[0]) != 32:
                return self._refuse(request_id, "zap_error", "malformed CURVE credentials", peer)
            carrier = self._allowed.get(z85.encode(credentials[0]))
            if carrier is None:
                return self._refuse(request_id, "unknown_key", "unknown carrier key", peer)
            log.debug("carrier %s authenticated from %s", carrier, peer)
            return [ZAP_VERSION, request_id, b"200", b"OK", carrier.encode(), b""]
        except Exception:
            log.exception("ZAP handler failed; refusing the connection")
            self._count("zap_error")
            return [ZAP_VERSION, request_id, b"500", b"internal error", b"", b""]

    def _refuse(self, request_id: bytes, reason: str, text: str, peer: str = "") -> list[bytes]:
        self._count(reason, text + (f" from {peer}" if peer else ""))
        return [ZAP_VERSION, request_id, b"400", text.encode(), b"", b""]

    def _on_monitor_event(self, message: list[bytes]) -> bool:
        """Count a handshake failure; False when the watched socket has closed."""
        event = parse_monitor_message(message)
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            return False
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self._count("wrong_mechanism", "client without CURVE (mechanism mismatch)")
            else:
                self._count("bad_handshake", "CURVE handshake failed (wrong server key?)")
        return True

    def _count(self, reason: str, text: str = "") -> None:
        with self._counts_lock:
            self._counts[reason] += 1
        self._log_refusal(reason, text or reason)
        if self._on_refusal is not None:
            try:
                self._on_refusal(reason)
            except Exception:
                log.exception("on_refusal hook failed")

    def _log_refusal(self, reason: str, text: str) -> None:
        """A warning per reason at most every REFUSAL_LOG_EVERY_S, with the count between."""
        now = time.monotonic()
        last = self._last_logged.get(reason)
        if last is not None and now - last < REFUSAL_LOG_EVERY_S:
            self._unlogged[reason] += 1
            return
        more = self._unlogged[reason]
        log.warning("refused a carrier connection: %s%s", text,
                    f" (and {more} more since the last report)" if more else "")
        self._last_logged[reason] = now
        self._unlogged[reason] = 0


def secure_router(socket: zmq.Socket, authenticator: CarrierAuthenticator,
                  server: KeyPair) -> None:
    """Make `socket` a CURVE server guarded by `authenticator`; call before bind.

    Sets curve_server, curve_secretkey, curve_publickey, zap_domain and, where libzmq
    supports it, ZAP_ENFORCE_DOMAIN (no handler: refuse, rather than admit anyone).
    """
    if not authenticator.is_alive():
        raise AuthenticatorError("start the authenticator before securing a socket: "
                                 "a CURVE socket without a ZAP handler admits any key")
    if authenticator.context is not socket.context:
        raise AuthenticatorError("the authenticator runs in another context than the socket; "
                                 "ZAP handlers serve their own context only")
    if socket.get(zmq.LAST_ENDPOINT):
        raise AuthenticatorError("secure the socket before binding it")
    socket.curve_server = True
    socket.curve_secretkey = server.secret
    socket.curve_publickey = server.public
    socket.zap_domain = authenticator.domain.encode()
    try:
        socket.set(zmq.ZAP_ENFORCE_DOMAIN, 1)
    except (AttributeError, zmq.ZMQError):
        log.warning("this libzmq cannot enforce ZAP: keep the authenticator running for as "
                    "long as the socket is open")
    authenticator.watch(socket)


def configure_client(socket: zmq.Socket, server_public: bytes, client_public: bytes,
                     client_secret: bytes) -> None:
    """Make `socket` (a carrier's DEALER or REQ) a CURVE client of the engine; before
    connect. Keys as z85 bytes: `keys.load_keypair("<carrier>.key_secret")` and
    `keys.load_public_key("server.key")`."""
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret


def carrier_of(frame: zmq.Frame) -> str | None:
    """The authenticated carrier of a received frame (its ZAP User-Id); None if the socket
    has no authentication (an --insecure engine), and the batch's own field must serve."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user_id or None
