"""Every JSON body the desk API takes is read here, within limits.

The desk's bodies are small flat objects (`{user, password}`, `{note}`), so anything
larger than MAX_BODY_BYTES or nested deeper than MAX_DEPTH is refused before the JSON
parser sees it: the parser recurses once per level, and a body nested 30,000 deep would
otherwise end in a RecursionError (a 500). Every refusal is a 400 (413 for the size) with
a one-line reason; the desk's request counter counts it by route and status.
"""

import json
import re

from aiohttp import web

from desk.context import ApiError
from geofence.known_keys import unknown_keys

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32
NOT_AN_OBJECT = "the body must be a JSON object"

_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)   # an escape, a quote or a bracket


async def json_body(request: web.Request, keys: tuple[str, ...] | None = None) -> dict:
    """The request's JSON object body; ApiError 400 (413: too large) if it is not one, or
    (with `keys`) if it has a key not among them."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the body must be at most {MAX_BODY_BYTES // 1024} KiB")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"the body must be at most {MAX_BODY_BYTES // 1024} KiB") from None
    body = parse_object(raw)
    if keys is not None:
        problems = unknown_keys(body, keys, "the body")
        if problems:
            raise ApiError(400, "; ".join(problems))
    return body


def parse_object(raw: bytes) -> dict:
    """`raw` as a JSON object, or ApiError(400) saying what is wrong with it."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body must be at most {MAX_BODY_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body must be UTF-8 JSON") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text)
    except ValueError as e:   # JSONDecodeError: where, never what (it may be a password)
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) \
            else ""
        raise ApiError(400, f"the body is not valid JSON{where}") from None
    except RecursionError:   # never with MAX_DEPTH; kept so that no body can be a 500
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, NOT_AN_OBJECT)
    return body


def nesting_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = False
    for match in _TOKEN.finditer(text):   # one pass: linear in the body's length
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
