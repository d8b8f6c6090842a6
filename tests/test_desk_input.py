"""Hostile input to the desk over a real HTTP server: JSON bodies and Host headers.

The world is `test_desk_api`'s (its registry, users and alarms, real SQLite files).
"""

import json
from dataclasses import replace

import pytest

from desk import make_app
from desk.hosts import REFUSED, configured_hosts, host_name
from desk.jsonbody import MAX_DEPTH, nesting_depth
from engine.config import ConfigError, from_mapping
from service.preflight import check_bind
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



# -- Host names (DNS rebinding) -------------------------------------------------------------

async def status_for(session, server, path: str, host: str, **headers) -> tuple[int, str]:
    async with session.get(server.make_url(path), headers={"Host": host, **headers},
                           allow_redirects=False) as r:
        return r.status, await r.text()


def refused_hosts(text: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("geofence_desk_refused_hosts_total ")))


def test_a_request_for_another_host_name_is_refused_on_the_page_and_the_api(world):
    async def scenario():
        async with serving(*world) as server, logged_in(server, "city") as city:
            port = server.port
            for path in ("/", "/static/app.js", "/api/me", "/api/alarms", "/api/events",
                         "/api/no-such-thing"):
                for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil:{port}"):
                    status, text = await status_for(city, server, path, host)
                    assert status == 421, (path, host)
                    assert json.loads(text) == {"error": REFUSED}
            async with city.post(server.make_url("/api/login"),
                                 headers={"Host": f"evil.example:{port}"},
                                 json={"user": "city", "password": PASSWORD}) as r:
                assert r.status == 421 and "set-cookie" not in r.headers
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}",
                         f"[::1]:{port}"):
                assert (await status_for(city, server, "/api/me", host))[0] == 200, host
                assert (await status_for(city, server, "/", host))[0] == 200, host
            for path in ("/healthz", "/metrics"):   # probes and scrapers use addresses
                assert (await status_for(city, server, path, "10.1.2.3:9"))[0] == 200
            _, text = await status_for(city, server, "/metrics", f"127.0.0.1:{port}")
            assert refused_hosts(text) == 6 * 3 + 1
            assert "evil" not in text
    run(scenario())


def test_configured_host_names_and_a_trusted_proxys_forwarded_host(world):
    settings, paths = world
    settings = replace(settings, desk=replace(settings.desk, hosts=["Desk.Example.org"],
                                              trust_forwarded_for=True))

    async def scenario():
        async with serving(settings, paths) as server, client() as anonymous:
            port = server.port
            assert (await status_for(anonymous, server, "/", "desk.example.org"))[0] == 200
            assert (await status_for(anonymous, server, "/", f"127.0.0.1:{port}"))[0] == 421
            proxied = {"X-Forwarded-Proto": "https"}
            for forwarded, expected in (("desk.example.org", 200), ("evil.example", 421),
                                        ("desk.example.org, evil.example", 421),
                                        ("evil.example, desk.example.org", 200)):
                status, _ = await status_for(anonymous, server, "/", f"127.0.0.1:{port}",
                                             **{"X-Forwarded-Host": forwarded}, **proxied)
                assert status == expected, forwarded
    run(scenario())


def test_binding_every_address_needs_the_list_of_names(world):
    settings, paths = world
    for bind in ("0.0.0.0:8080", "[::]:8080"):
        desk = replace(settings.desk, bind=bind)
        with pytest.raises(ConfigError, match=r"\[desk\] hosts must list"):
            make_app(replace(settings, desk=desk), paths)
        with pytest.raises(ConfigError, match=r"\[desk\] hosts must list"):
            check_bind(replace(settings, desk=desk), insecure=True)
        assert configured_hosts(replace(desk, hosts=["desk.example.org"])) == \
            {"desk.example.org"}
    assert configured_hosts(replace(settings.desk, bind="192.0.2.7:8080")) == {"192.0.2.7"}
    for bad in ("http://desk.example.org/", "desk.example.org:8080", "", "a b", 7):
        with pytest.raises(ConfigError, match="host names or addresses"):
            configured_hosts(replace(settings.desk, hosts=[bad]))
    assert configured_hosts(replace(settings.desk, hosts=["[::1]", "Desk.Example.ORG."])) == \
        {"::1", "desk.example.org"}
    config = from_mapping({"desk": {"bind": "0.0.0.0:80", "hosts": ["desk.example.org"]}})
    assert config.desk.hosts == ["desk.example.org"]


@pytest.mark.parametrize("value, name", [
    ("desk.example.org:8080", "desk.example.org"), ("Desk.Example.org.", "desk.example.org"),
    ("[::1]:8080", "::1"), ("[::1]", "::1"), ("::1", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("", ""), ("[::1", "")])
def test_host_name_of_a_host_header(value, name):
    assert host_name(value) == name
