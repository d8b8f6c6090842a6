"""A positioning API's request built, and its answer read, from the connector's config.

The answer becomes one `Answer`: a position (lon, lat in the provider's datum; the engine
converts to WGS-84), a handset state (off, suspended, unreachable: a status row), or no
row: "retry" (transient: back off and ask again), "error" (the provider said no), or
"malformed" (an answer we cannot read). Nothing a provider sends raises: every answer
maps to one of these, and its words never reach a log (they may hold personal data).
"""

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime

from connect.config import HttpConnector, expand
from geofence.datum import DATUMS

MAX_ANSWER_BYTES = 256 * 1024      # read at most this much of an answer
RETRY_AFTER_MAX_S = 24 * 3600      # a longer Retry-After is taken as a day
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
MISSING = object()

KINDS = ("position", "state", "retry", "error", "malformed", "rate_limited")


@dataclass(frozen=True)
class Answer:
    """What one request gave. `kind`: one of KINDS; a position has lon/lat/t_ms (acc_m
    NaN when not given, src None when unknown, datum); a state has `state` and t_ms."""

    kind: str
    lon: float = math.nan
    lat: float = math.nan
    acc_m: float = math.nan
    t_ms: int = 0
    src: str | None = None
    datum: str = "wgs84"
    state: str | None = None
    why: str = ""                  # a short, fixed word for metrics: never provider text
    retry_after_s: float | None = None


def read_path(doc, path: str):
    """The value at a dotted path (`data.loc.lon`, `result[0].x`, `[1].lat`), or MISSING."""
    value = doc
    for name, index in _STEP.findall(path):
        if name:
            if not isinstance(value, dict) or name not in value:
                return MISSING
            value = value[name]
        else:
            k = int(index)
            if not isinstance(value, list) or k >= len(value):
                return MISSING
            value = value[k]
    return value


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict
    body: bytes | None


def build_request(connector: HttpConnector, device: str, env: dict) -> Request:
    """The HTTP request for `device`: ${VAR} from `env`, {device} in the URL (escaped as a
    query value) and in the body (as JSON string content)."""
    from urllib.parse import quote

    url = expand(connector.url, env).replace("{device}", quote(device, safe=""))
    headers = {name: expand(value, env) for name, value in connector.headers.items()}
    body = None
    if connector.body:
        text = expand(connector.body, env).replace("{device}", json.dumps(device)[1:-1])
        body = text.encode("utf-8")
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
    return Request(connector.method, url, headers, body)


def map_answer(connector: HttpConnector, status: int, body: bytes, now_ms: int,
               retry_after: str | None = None) -> Answer:
    """The Answer of an HTTP status and body (never raises)."""
    if status == 429:
        return Answer("rate_limited", why="http_429", retry_after_s=parse_retry_after(retry_after))
    mapped = connector.statuses.get(str(status))
    if mapped is not None:
        return _action(mapped, now_ms, f"http_{status // 100}xx")
    if status >= 500:
        return Answer("retry", why="http_5xx", retry_after_s=parse_retry_after(retry_after))
    if not 200 <= status < 300:
        return Answer("error", why=f"http_{status // 100}xx")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Answer("malformed", why="not_json")
    return read_answer(connector, doc, now_ms)


def read_answer(connector: HttpConnector, doc, now_ms: int) -> Answer:
    """The Answer of a parsed 2xx answer: its result code first, then the position."""
    if connector.code_path:
        code = read_path(doc, connector.code_path)
        if code is not MISSING:
            action = connector.codes.get(_text(code))
            if action is None:
                return Answer("error", why="unknown_code")
            if action != "ok":
                return _action(action, now_ms, "code")
    lon, lat = _number(read_path(doc, connector.lon)), _number(read_path(doc, connector.lat))
    if lon is None or lat is None:
        return Answer("malformed", why="no_position")
    acc = math.nan
    if connector.accuracy:
        value = read_path(doc, connector.accuracy)
        acc = _number(value) if value is not MISSING else math.nan
        if acc is None:
            return Answer("malformed", why="accuracy")
    t_ms = now_ms
    if connector.time:
        t_ms = _time(read_path(doc, connector.time), connector.time_format)
        if t_ms is None:
            return Answer("malformed", why="time")
    src = connector.source
    if connector.source_path:
        word = read_path(doc, connector.source_path)
        src = connector.source_names.get(_text(word), _text(word).lower())
        if src not in ("gps", "wifi", "cell"):
            src = None          # unknown: the engine assumes its unknown-source accuracy
    datum = connector.datum
    if connector.datum_path:
        datum = _text(read_path(doc, connector.datum_path)).lower().replace("-", "")
        if datum not in DATUMS:
            return Answer("malformed", why="datum")
    return Answer("position", lon, lat, acc, t_ms, src, datum)


def _action(action: str, now_ms: int, why: str) -> Answer:
    if action in ("retry", "error"):
        return Answer(action, why=why)
    return Answer("state", t_ms=now_ms, state=action, why=why)


def _text(value) -> str:
    if value is MISSING or value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _number(value) -> float | None:
    """A finite number from a JSON number or a numeric string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        try:   # an integer past float's range (JSON allows 400 digits) overflows
            value = float(value)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _time(value, time_format: str) -> int | None:
    if time_format == "rfc3339":
        if not isinstance(value, str):
            return None
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return None
        if t.tzinfo is None:
            return None    # a time without its offset is ambiguous
        return int(t.timestamp() * 1000)
    number = _number(value)
    if number is None or abs(number) > 1e15:
        return None
    return int(round(number * 1000 if time_format == "unix_s" else number))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date); None if
    absent or unreadable. Never raises: '²' is a digit to str.isdigit but not to int(),
    and thousands of digits are past int()'s limit (and a day, the most we wait)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(RETRY_AFTER_MAX_S if len(value) > 9 else min(int(value), RETRY_AFTER_MAX_S))
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):   # a year of 20 digits
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, min(when.timestamp() - datetime.now(when.tzinfo).timestamp(),
                        RETRY_AFTER_MAX_S))
