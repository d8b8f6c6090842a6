"""The config's bind addresses, parsed in one place so every process reads them alike.

Two forms: `HOST:PORT` for HTTP (`[desk] bind`, `[ingest] metrics_bind`; IPv6 as
`[::1]:8080`) and ZeroMQ endpoints (`[ingest] bind`, `[alerts] publish`:
`tcp://HOST:PORT` or `ipc://PATH`). A port is 1..65535, or 0 (`*` for ZeroMQ): any free
port, printed once the engine is ready. A bad address is refused before anything starts,
instead of a child crash-looping on it.
"""

MAX_PORT = 65535
ZMQ_ANY_PORT = "*"


def parse_host_port(text: str) -> tuple[str, int]:
    """("host", port) of "127.0.0.1:8080" or "[::1]:8080"; ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or any(c.isspace() for c in text):
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080; not {text!r}")
    return host, _port(port, text)


def check_zmq_endpoint(text: str) -> None:
    """ValueError unless `text` is `tcp://HOST:PORT` (port `*`: any) or `ipc://PATH`."""
    transport, sep, rest = text.partition("://")
    if sep and transport == "ipc" and rest and not any(c.isspace() for c in rest):
        return
    if not sep or transport != "tcp":
        raise ValueError(f"must be tcp://HOST:PORT or ipc://PATH, e.g. tcp://127.0.0.1:5555; "
                         f"not {text!r}")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or any(c.isspace() for c in rest):
        raise ValueError(f"must be tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555; not {text!r}")
    if port != ZMQ_ANY_PORT:
        _port(port, text)


def _port(port: str, text: str) -> int:
    if not port.isascii() or not port.isdigit() or int(port) > MAX_PORT:
        raise ValueError(f"port must be 1..{MAX_PORT} (0: any free port); not {text!r}")
    return int(port)
