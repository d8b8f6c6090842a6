"""`[connect.http.NAME]`: one HTTP positioning API connector's settings (SPEC §14).

    [connect.http.cmcc-api]
    carrier = "cmcc-api"                       # the carrier name its batches carry
    url = "https://lbs.example/v1/locate?msisdn={device}&key=${LBS_KEY}"
    method = "GET"                             # or POST (with `body`)
    headers = { Authorization = "Bearer ${LBS_TOKEN}" }
    lon = "data.location.lng"                  # dotted JSON paths: data.loc.lon, result[0].x
    lat = "data.location.lat"
    datum = "gcj02"

`{device}` is the phone number (JSON-escaped in `body`). `${NAME}` in the URL, a header or
the body is the environment variable NAME, read when the connector starts: credentials
live in the file or the environment and are never logged nor put in an error (problems
name the key, never its value). Every key is checked, all problems at once; an unknown
key is an error with the nearest known one suggested.
"""

import math
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine.address import check_zmq_endpoint, parse_host_port
from geofence.datum import DATUMS
from geofence.errors import GeofenceError
from geofence.known_keys import quoted, unknown_keys
from ingest.protocol import CARRIER_PATTERN, SOURCES, STATES

TIME_FORMATS = ("unix_s", "unix_ms", "rfc3339")
METHODS = ("GET", "POST")
# What a provider's result code or an HTTP status may mean: a handset state (a status row
# goes to the engine), "retry" (transient: back off, ask again), "error" (counted, no row),
# "ok" (codes only: read the position).
STATUS_ACTIONS = STATES + ("retry", "error")
CODE_ACTIONS = ("ok",) + STATUS_ACTIONS
LEVEL_KEYS = ("every_strict_s", "every_normal_s", "every_loose_s", "every_key_s")
MAX_EVERY_S = 7 * 24 * 3600
MAX_TIMEOUT_S = 120.0
MAX_CONCURRENCY = 1024
MAX_BUDGET = 10**12
PATH_PATTERN = re.compile(r"^(?:[A-Za-z_][\w-]*|\[\d+\])(?:\.[A-Za-z_][\w-]*|\[\d+\])*$")
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ConnectConfigError(GeofenceError, ValueError):
    """A `[connect.http.NAME]` table is invalid (`problems`, one line each naming the key,
    never a credential); fix the file, or set the environment variable it names."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class HttpConnector:
    """One positioning API: where to ask, how to read the answer, how often, how much."""

    name: str
    carrier: str
    url: str = field(repr=False)                   # may hold a key: kept out of repr()
    method: str = "GET"
    headers: dict = field(default_factory=dict, repr=False)
    body: str = field(default="", repr=False)      # JSON template; POST only
    endpoint: str = ""                 # the engine's ingest; empty: [ingest] bind
    curve_keys: str = ""               # directory with server.key and <carrier>.key_secret
    lon: str = ""                      # JSON paths of the answer
    lat: str = ""
    accuracy: str = ""                 # empty: the engine's default for the source
    time: str = ""                     # empty: when the answer arrived
    time_format: str = "unix_ms"
    source: str = "cell"               # fixed source, unless source_path reads it
    source_path: str = ""
    source_names: dict = field(default_factory=dict)   # provider word -> gps/wifi/cell
    datum: str = "wgs84"               # fixed datum, unless datum_path reads it
    datum_path: str = ""
    code_path: str = ""                # the provider's result code
    codes: dict = field(default_factory=dict)          # code (as text) -> CODE_ACTIONS
    statuses: dict = field(default_factory=dict)       # HTTP status (text) -> STATUS_ACTIONS
    concurrency: int = 8
    timeout_s: float = 10.0
    every_strict_s: int = 300          # 严管: every 5 min
    every_normal_s: int = 900          # 普管: every 15 min
    every_loose_s: int = 3600          # 宽管: every hour
    every_key_s: int = 300             # key persons, whatever their level
    daily_budget: int = 0              # positions a day (UTC+8 days); 0: no limit
    desk_reserve: int = 0              # more a day for the desk's locate requests only
    backoff_first_s: float = 1.0       # a failed device is asked again after this; 3 errors
                                       # in a row or a 429 hold all requests this long,
                                       # doubling per further error, capped
    backoff_max_s: float = 300.0
    prefixes: tuple = ()               # serve devices starting with one of these; (): all
    metrics_bind: str = ""             # HOST:PORT of its /metrics; empty: off

    def every_s(self, level: str, key: bool) -> int:
        """Seconds between two scheduled polls of a subject of `level` (key: the key
        interval too, whichever is shorter)."""
        every = getattr(self, f"every_{level}_s", self.every_normal_s)
        return min(every, self.every_key_s) if key else every


CONNECTOR_KEYS = tuple(f for f in HttpConnector.__dataclass_fields__ if f != "name")
REQUIRED = ("carrier", "url", "lon", "lat")


def parse_connectors(raw) -> dict[str, HttpConnector]:
    """Connectors by name from the `[connect.http]` table; ConnectConfigError with every
    problem of every connector."""
    if not isinstance(raw, dict):
        raise ConnectConfigError(["must be tables, e.g. [connect.http.cmcc-api]"])
    problems, connectors = [], {}
    for name, table in raw.items():
        where = f"connector {quoted(str(name))}"
        if not re.fullmatch(CARRIER_PATTERN, str(name)):
            problems.append(f"{where}: a name is 1-64 letters, digits, '_', '.' or '-'")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        found: list[str] = []
        connector = _connector(name, table, where, found)
        problems += found
        if not found:
            connectors[name] = connector
    if problems:
        raise ConnectConfigError(problems)
    return connectors


def _connector(name: str, table: dict, where: str, problems: list[str]) -> HttpConnector:
    problems += unknown_keys(table, CONNECTOR_KEYS, where)
    default = HttpConnector(name, "", "")
    values = {}
    for key in CONNECTOR_KEYS:
        if key not in table:
            if key in REQUIRED:
                problems.append(f"{where}: {key} is missing")
            continue
        value, wrong = _typed(getattr(default, key), table[key])
        if wrong:
            problems.append(f"{where}: {key} {wrong}")
        else:
            values[key] = value
    for key, value in values.items():
        check = _CHECKS.get(key)
        if check is not None:
            problems += [f"{where}: {key} {p}" for p in check(value)]
    if "body" in values and values["body"] and values.get("method", "GET") != "POST":
        problems.append(f"{where}: body is sent with method = \"POST\" only")
    if "url" in values and "{device}" not in values["url"] + values.get("body", ""):
        problems.append(f"{where}: url (or body) must hold the {{device}} placeholder")
    values["headers"] = dict(values.get("headers", {}))
    values["prefixes"] = tuple(values.get("prefixes", ()))
    if problems:
        return default
    return HttpConnector(name, **values)


def _typed(default, value):
    """`value` as the type of `default`, or the problem, never naming the value."""
    from engine.config import _typed as typed

    return typed(default, value, show_value=False)


def _carrier(value: str) -> list[str]:
    return [] if re.fullmatch(CARRIER_PATTERN, value) else [
        "must be 1-64 letters, digits, '_', '.' or '-'"]


def _url(value: str) -> list[str]:
    probe = ENV_PATTERN.sub("x", value).replace("{device}", "13800138000")
    try:
        parts = urlsplit(probe)
        _ = parts.port
    except ValueError:
        return ["is not a valid URL"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ["must be an http:// or https:// URL naming a host"]
    if any(c.isspace() for c in probe):
        return ["must have no spaces"]
    return []


def _headers(value: dict) -> list[str]:
    problems = []
    for name, text in value.items():
        if not HEADER_NAME.match(name):
            problems.append(f"{quoted(name)}: not a valid header name")
        elif not isinstance(text, str) or any(c in text for c in "\r\n"):
            problems.append(f"{quoted(name)}: must be one line of text")
    return problems


def _body(value: str) -> list[str]:
    import json

    if not value:
        return []
    probe = ENV_PATTERN.sub("x", value).replace("{device}", "13800138000")
    try:
        json.loads(probe)
    except ValueError:
        return ["must be a JSON template ({device} and ${VAR} inside strings)"]
    return []


def _path(value: str) -> list[str]:
    if not value or PATH_PATTERN.match(value):
        return []
    return ["must be a dotted JSON path such as data.loc.lon or result[0].x"]


def _required_path(value: str) -> list[str]:
    return ["must not be empty"] if not value else _path(value)


def _one_of(choices):
    def check(value) -> list[str]:
        return [] if value in choices else [f"must be one of {', '.join(choices)}"]
    return check


def _mapping(choices, numeric: bool = False):
    def check(value: dict) -> list[str]:
        problems = []
        for key, action in value.items():
            if numeric and not (key.isdigit() and 100 <= int(key) <= 599):
                problems.append(f"{quoted(key)}: must be an HTTP status, 100..599")
            elif action not in choices:
                problems.append(f"{quoted(key)}: must be one of {', '.join(choices)}")
        return problems
    return check


def _whole(low: int, high: int):
    def check(value: int) -> list[str]:
        return [] if low <= value <= high else [f"must be a whole number in {low}..{high}"]
    return check


def _real(low: float, high: float):
    def check(value: float) -> list[str]:
        return [] if math.isfinite(value) and low < value <= high else [
            f"must be a number in ({low:g}, {high:g}]"]
    return check


def _endpoint(value: str) -> list[str]:
    if not value:
        return []
    try:
        check_zmq_endpoint(value)
    except ValueError as e:
        return [str(e)]
    return []


def _bind(value: str) -> list[str]:
    if not value:
        return []
    try:
        parse_host_port(value)
    except ValueError as e:
        return [str(e)]
    return []


def _prefixes(value: tuple) -> list[str]:
    return [] if all(isinstance(p, str) and p for p in value) else [
        "must be non-empty strings (phone-number prefixes)"]


_CHECKS = {
    "carrier": _carrier, "url": _url, "method": _one_of(METHODS), "headers": _headers,
    "body": _body, "endpoint": _endpoint, "lon": _required_path, "lat": _required_path,
    "accuracy": _path, "time": _path, "time_format": _one_of(TIME_FORMATS),
    "source": _one_of(SOURCES), "source_path": _path,
    "source_names": _mapping(SOURCES), "datum": _one_of(DATUMS), "datum_path": _path,
    "code_path": _path, "codes": _mapping(CODE_ACTIONS),
    "statuses": _mapping(STATUS_ACTIONS, numeric=True),
    "concurrency": _whole(1, MAX_CONCURRENCY), "timeout_s": _real(0, MAX_TIMEOUT_S),
    **{key: _whole(1, MAX_EVERY_S) for key in LEVEL_KEYS},
    "daily_budget": _whole(0, MAX_BUDGET), "desk_reserve": _whole(0, MAX_BUDGET),
    "backoff_first_s": _real(0, 3600), "backoff_max_s": _real(0, 24 * 3600),
    "prefixes": _prefixes, "metrics_bind": _bind,
}


def environment_names(connector: HttpConnector) -> list[str]:
    """The environment variables a connector's URL, headers and body name."""
    texts = [connector.url, connector.body, *connector.headers.values()]
    return sorted({m for text in texts for m in ENV_PATTERN.findall(text)})


def expand(text: str, env: dict) -> str:
    """`text` with every ${NAME} replaced by env[NAME] (present: `check_environment`)."""
    return ENV_PATTERN.sub(lambda m: env[m.group(1)], text)


def check_environment(connector: HttpConnector, env: dict) -> None:
    """ConnectConfigError naming every ${NAME} the connector uses that `env` lacks."""
    missing = [n for n in environment_names(connector) if n not in env]
    if missing:
        raise ConnectConfigError([f"connector {quoted(connector.name)}: environment variable "
                                  f"{n} is not set" for n in missing])
