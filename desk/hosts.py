"""Which host names the desk answers to (`[desk] hosts`), against DNS rebinding.

A page on another site can point its own name at 127.0.0.1 (DNS rebinding) and then
read the desk as if it were same-origin: the browser sends that name in `Host`. So the
desk answers only requests whose host name (the `Host` header without its port; with
`[desk] trust_forwarded_for`, the last `X-Forwarded-Host` entry when the proxy sets one)
is one it was configured for; any other gets 421 with a one-line error, and is counted
(`geofence_desk_refused_hosts_total`; the name itself is never logged or labelled).

Default, bound to loopback: the bind host plus localhost, 127.0.0.1 and ::1. Bound to
any other address: that address. Bound to all addresses (0.0.0.0, ::) the desk cannot
know its names: `[desk] hosts` must list them. /healthz and /metrics answer whatever the
host (probes and scrapers use addresses; neither holds anything personal).
"""

import ipaddress
import re

from aiohttp import web

from desk.context import ApiError, desk_of
from desk.http import last_entry
from engine.config import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = ("0.0.0.0", "::", "")
ANY_HOST_PATHS = frozenset({"/healthz", "/metrics"})
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
REFUSED = "this desk does not answer to that host name (see [desk] hosts)"


def host_name(value: str) -> str:
    """The host name of a `Host` value ("desk.example:8080", "[::1]:8080"), lower case,
    without a trailing dot; "" if there is none."""
    value = value.strip().lower()
    if value.startswith("["):
        name = value[1:value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        name = value.partition(":")[0]
    else:
        name = value   # a name, or a bare IPv6 address
    return name.rstrip(".")


def configured_hosts(desk_settings) -> frozenset[str]:
    """The host names the desk of these `[desk]` settings answers to (ConfigError: see
    `allowed_hosts`); `geofence serve` checks it before it starts anything."""
    return allowed_hosts(desk_settings.bind.rpartition(":")[0].strip("[]"),
                         desk_settings.hosts)


def allowed_hosts(bind_host: str, configured: list) -> frozenset[str]:
    """The host names the desk answers to; ConfigError when there is no sensible default
    (bound to every address) or an entry is not a host name."""
    if configured:
        names = set()
        for entry in configured:
            name = _entry_name(entry)
            if name is None:
                raise ConfigError(f"[desk] hosts entries must be host names or addresses "
                                  f"without a port, e.g. \"desk.example.org\"; not {entry!r}")
            names.add(name)
        return frozenset(names)
    if bind_host in ANY_HOST:
        raise ConfigError("[desk] hosts must list the names the desk is reached by when it "
                          f"binds every address ({bind_host or 'all'}), e.g. "
                          "hosts = [\"desk.example.org\"]")
    bind_host = host_name(bind_host)
    if _is_loopback(bind_host):
        return frozenset({bind_host, *LOOPBACK_NAMES})
    return frozenset({bind_host})


def _entry_name(entry) -> str | None:
    """A `[desk] hosts` entry as `host_name` gives it, None if it is not a bare host
    name or address ("desk.example.org", "192.0.2.7", "::1" or "[::1]")."""
    if not isinstance(entry, str):
        return None
    name = entry.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if _HOST_NAME.fullmatch(name):
        return name
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_host(request: web.Request, trust_forwarded_for: bool) -> str:
    """The host the client asked for: `Host`, or behind a trusted proxy the last
    X-Forwarded-Host entry when there is one."""
    forwarded = last_entry(request, "X-Forwarded-Host") if trust_forwarded_for else ""
    return forwarded or request.headers.get("Host", "")


@web.middleware
async def host_middleware(request: web.Request, handler) -> web.StreamResponse:
    """421 for a request to a host name the desk was not configured for."""
    desk = desk_of(request)
    if request.path not in ANY_HOST_PATHS and host_name(
            request_host(request, desk.settings.desk.trust_forwarded_for)) not in desk.hosts:
        desk.metrics.refused_hosts.inc()
        raise ApiError(421, REFUSED)
    return await handler(request)
