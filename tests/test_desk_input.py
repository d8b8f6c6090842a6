"""Hostile input to the desk over a real HTTP server: JSON bodies and Host headers.

The world is `test_desk_api`'s (its registry, users and alarms, real SQLite files).
"""

from desk.jsonbody import MAX_DEPTH, nesting_depth
from tests import test_desk_api
from tests.test_desk_api import (PASSWORD, client, logged_in, run, serving)

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures


async def post_raw(session, server, path: str, data: bytes) -> tuple[int, dict]:
    async with session.post(server.make_url(path), data=data,
                            headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


BAD_BODIES = {
    "nested 30,000 deep": (deep(30_000), "nests deeper than"),
    "an object nested 10,000 deep": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
                                     "nests deeper than"),
    "one level too deep": (deep(MAX_DEPTH + 1), "nests deeper than"),
    "cut short": (b'{"user": "city", "password": ', "not valid JSON at line 1"),
    "not UTF-8": (b'{"user": "\xff"}', "UTF-8"),
    "an array": (b"[1, 2]", "must be a JSON object"),
    "empty": (b"", "not valid JSON"),
}


def test_bad_json_bodies_are_400_with_a_clear_error_on_login_and_alarm_actions(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "city") as city, \
                client() as anonymous:
            for path, session in (("/api/login", anonymous), ("/api/alarms/a1/ack", city),
                                  ("/api/alarms/a1/resolve", city)):
                for name, (body, says) in BAD_BODIES.items():
                    status, answer = await post_raw(session, server, path, body)
                    assert status == 400, (path, name, answer)
                    assert says in answer["error"] and "\n" not in answer["error"], name
            status, answer = await post_raw(anonymous, server, "/api/login",
                                            b'{"note": "' + b"x" * 70_000 + b'"}')
            assert status == 413 and "at most 64 KiB" in answer["error"]
            # deep but allowed, brackets inside strings do not count: judged as usual
            fine = b'{"note": "' + b"[" * 500 + b'", "x": ' + deep(MAX_DEPTH - 1) + b"}"
            status, answer = await post_raw(city, server, "/api/alarms/a1/ack", fine)
            assert status == 200 and answer["status"] == "acknowledged"
            status, answer = await post_raw(
                anonymous, server, "/api/login",
                f'{{"user": "city", "password": "{PASSWORD}"}}'.encode())
            assert status == 200
            async with anonymous.get(server.make_url("/metrics")) as r:
                text = await r.text()
            assert 'geofence_desk_http_requests_total{route="/api/login",status="400"} ' \
                   f'{len(BAD_BODIES)}.0' in text
    run(scenario())


def test_nesting_depth_skips_strings_and_escapes():
    assert nesting_depth('{"a": [1, {"b": "]]]{{{\\"[["}]}') == 3
    assert nesting_depth("") == 0
    assert nesting_depth('"\\\\"[[]]') == 2

