"""Roles, disabled users and the audit log over the real desk (SPEC §11).

The world is `test_desk_api`'s (the city 3704 above counties 370402 and 370403 above
three townships; S1..S4, alarms a1..a5), plus viewers: the procuratorate of county
370402 ("viewer402") and of the city ("viewer_city"). A viewer reads exactly what an
officer of its office reads and gets 403 on every write, on every write endpoint the
application has (found from its router, so endpoints added later are covered too).
"""

import json
import sqlite3
from dataclasses import replace

import pytest

from desk import events, make_app
from desk.users import UserStore
from service import cli
from tests import test_desk_api
from tests.test_desk_api import (C402, CITY, PASSWORD, SUBJECTS, T1, T2, VISIBLE, Clock,
                                 client, get, logged_in, next_event, post, run, serving)

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures

VIEWERS = {"viewer402": C402, "viewer_city": CITY}
READS_WITHOUT_ENTRY = ("/api/alarms", "/api/subjects", "/api/me")


@pytest.fixture
def desk_world(world):
    settings, paths = world
    with UserStore(paths.desk_db) as users:
        for name, office in VIEWERS.items():
            users.add(name, office, PASSWORD, role="viewer")
    return settings, paths


def audit_rows(paths) -> list[tuple]:
    """(user, office, role, action, subject, detail) of every entry, oldest first."""
    with UserStore(paths.desk_db) as users:
        return [(e.user, e.office, e.role, e.action, e.subject, e.detail)
                for _, e in users.audit.entries(newest_first=False)]


def write_routes(settings, paths) -> list[tuple[str, str]]:
    """(method, path) of every write endpoint of the application under /api/ except
    logging in and out, with visible ids in place of the route's variables."""
    app = make_app(settings, paths)
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if not path.startswith("/api/") or route.method in ("GET", "HEAD", "*") or \
                path in ("/api/login", "/api/logout"):
            continue
        fill = "a1" if path.startswith("/api/alarms") else "S1"
        found.add((route.method, path.replace("{id}", fill)))
    return sorted(found)


# -- viewers -----------------------------------------------------------------------------

def test_a_viewer_gets_403_on_every_write_endpoint_and_nothing_changes(desk_world):
    settings, paths = desk_world
    routes = write_routes(settings, paths)
    assert ("POST", "/api/alarms/a1/ack") in routes and ("POST", "/api/alarms/a1/resolve") \
        in routes

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "viewer402", "county402") as (viewer, officer):
            for method, path in [*routes, ("PATCH", "/api/alarms/a1"),
                                 ("DELETE", "/api/alarms/a1"), ("PUT", "/api/nowhere")]:
                async with viewer.request(method, server.make_url(path), json={}) as r:
                    assert (method, path, r.status) == (method, path, 403)
                    assert set(await r.json()) == {"error"}
            status, alarm = await get(viewer, server, "/api/alarms/a1")
            assert status == 200 and alarm["status"] == "open"
            assert [h["action"] for h in alarm["history"]] == ["raised"]
            # the same request by an officer of the same office goes through
            assert (await post(officer, server, "/api/alarms/a1/ack", {"note": "x"}))[0] == 200
            assert (await post(viewer, server, "/api/logout"))[0] == 204   # a viewer may
            assert (await get(viewer, server, "/api/me"))[0] == 401         # log out
    run(scenario())
    assert not any(row[0] == "viewer402" and row[3].startswith("alarm.") and
                   row[3] != "alarm.read" for row in audit_rows(paths))


def test_a_viewer_reads_exactly_what_an_officer_of_its_office_reads(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "viewer402", "viewer_city") as (viewer, city_viewer):
            status, me = await get(viewer, server, "/api/me")
            assert status == 200 and (me["office"], me["role"]) == (C402, "viewer")
            _, listed = await get(viewer, server, "/api/alarms")
            assert {a["id"] for a in listed["alarms"]} == VISIBLE["county402"]
            _, subjects = await get(viewer, server, "/api/subjects")
            assert {s["id"] for s in subjects["subjects"]} == SUBJECTS["county402"]
            assert (await get(viewer, server, "/api/alarms/a2"))[0] == 200
            assert (await get(viewer, server, "/api/alarms/a3"))[0] == 404
            status, track = await get(viewer, server, "/api/subjects/S1/track")
            assert status == 200 and track["subject"] == "S1"
            assert (await get(viewer, server, "/api/subjects/S3/track"))[0] == 404
            _, everything = await get(city_viewer, server, "/api/alarms")
            assert {a["id"] for a in everything["alarms"]} == VISIBLE["city"]
            async with viewer.get(server.make_url("/api/events")) as stream:
                assert stream.status == 200
    run(scenario())


# -- disabling a user --------------------------------------------------------------------

def geofence(settings, tmp_path, *argv: str) -> int:
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{settings.storage.path}"\n')
    return cli.main(["--config", str(config), *argv])


def test_disable_ends_the_users_sessions_and_streams_at_once_and_refuses_logins(
        desk_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(events, "HEARTBEAT_S", 3600.0)   # only the revocation watch ends it
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "town1", "town1", "town2") as (first, second, other):
            async with first.get(server.make_url("/api/events")) as stream:
                assert stream.status == 200
                assert geofence(settings, tmp_path, "user", "disable", "town1") == 0
                assert (await get(first, server, "/api/me"))[0] == 401   # the next request
                assert (await get(second, server, "/api/alarms"))[0] == 401
                with pytest.raises(EOFError):                # the stream ends, long before
                    await next_event(stream, timeout=60)     # its hour-long heartbeat
            assert (await get(other, server, "/api/me"))[0] == 200      # nobody else
            async with client() as again:
                async with again.post(server.make_url("/api/login"),
                                      json={"user": "town1", "password": PASSWORD}) as r:
                    assert r.status == 403 and "disabled" in (await r.json())["error"]
                    assert "geofence_session" not in r.cookies
                async with again.post(server.make_url("/api/login"),
                                      json={"user": "town1", "password": "wrong one"}) as r:
                    assert r.status == 401                   # no hint without the password
                assert geofence(settings, tmp_path, "user", "enable", "town1") == 0
                async with again.post(server.make_url("/api/login"),
                                      json={"user": "town1", "password": PASSWORD}) as r:
                    assert r.status == 200
    run(scenario())
    assert "town1: disabled" in capsys.readouterr().out


# -- what each endpoint writes to the audit log ------------------------------------------

def test_each_endpoint_writes_its_audit_entry_and_lists_and_refusals_write_none(desk_world):
    settings, paths = desk_world
    clock = Clock()

    async def scenario():
        async with serving(settings, paths, clock) as server, \
                logged_in(server, "town1", "viewer402") as (town1, viewer):
            for path in READS_WITHOUT_ENTRY:
                assert (await get(town1, server, path))[0] == 200
            assert (await get(town1, server, "/api/alarms/a1"))[0] == 200
            assert (await get(town1, server, "/api/alarms/a3"))[0] == 404     # not theirs
            assert (await get(town1, server, "/api/subjects/S1/track",
                              since=1000, until=2000))[0] == 200
            assert (await get(town1, server, "/api/subjects/S3/track"))[0] == 404
            assert (await post(town1, server, "/api/alarms/a1/ack", {"note": "n"}))[0] == 200
            assert (await post(town1, server, "/api/alarms/a1/resolve", {}))[0] == 200
            assert (await post(town1, server, "/api/alarms/a1/resolve", {}))[0] == 409
            assert (await post(viewer, server, "/api/alarms/a2/ack", {}))[0] == 403
            assert (await get(viewer, server, "/api/alarms/a2"))[0] == 200
            assert (await get(viewer, server, "/api/alarms/a5"))[0] == 404
            assert (await post(town1, server, "/api/logout"))[0] == 204
    run(scenario())
    assert audit_rows(paths) == [
        ("town1", T1, "officer", "user.login", None, ""),
        ("viewer402", C402, "viewer", "user.login", None, ""),
        ("town1", T1, "officer", "alarm.read", "S1", "a1"),
        ("town1", T1, "officer", "track.read", "S1", "1000..2000"),
        ("town1", T1, "officer", "alarm.ack", "S1", "a1"),
        ("town1", T1, "officer", "alarm.resolve", "S1", "a1"),
        ("viewer402", C402, "viewer", "alarm.read", "S2", "a2"),
        ("town1", T1, "officer", "user.logout", None, "")]
    with UserStore(paths.desk_db) as users:
        entries = [e for _, e in users.audit.entries()]
    assert {e.at_ms for e in entries} == {int(clock.t * 1000)}   # the desk's clock
    assert {e.address for e in entries} == {"127.0.0.1"}


def test_the_audit_address_is_the_proxys_forwarded_client_when_trusted(world):
    settings, paths = world
    settings = replace(settings, desk=replace(settings.desk, trust_forwarded_for=True))

    async def scenario():
        async with serving(settings, paths) as server, client() as session:
            async with session.post(server.make_url("/api/login"),
                                    json={"user": "town2", "password": PASSWORD},
                                    headers={"X-Forwarded-For": "10.1.2.3, 10.9.9.9"}) as r:
                assert r.status == 200
            async with session.get(server.make_url("/api/alarms/a2"),
                                   headers={"X-Forwarded-For": "10.4.4.4"}) as r:
                assert r.status == 200
    run(scenario())
    with UserStore(paths.desk_db) as users:
        assert [(e.action, e.address) for _, e in users.audit.entries(newest_first=False)] \
            == [("user.login", "10.9.9.9"), ("alarm.read", "10.4.4.4")]


# -- reading the audit log ---------------------------------------------------------------

def test_the_audit_log_shows_entries_of_the_subjects_office_and_above_only(desk_world):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server:
            async with logged_in(server, "town1", "town2", "town3") as (town1, town2, town3):
                await get(town1, server, "/api/alarms/a1")           # S1, supervised by T1
                await get(town1, server, "/api/subjects/S4/track")   # S4: T3's, delegated
                await get(town2, server, "/api/alarms/a2")           # S2, T2
                await get(town3, server, "/api/alarms/a3")           # S3, T3
                assert (await get(town3, server, "/api/alarms/a5"))[0] == 404   # not theirs
            async with logged_in(server, "town1", "county402", "city", "viewer402",
                                 "town2") as sessions:
                shown = {}
                for name, session in zip(("town1", "county402", "city", "viewer402"),
                                         sessions):
                    status, body = await get(session, server, "/api/audit")
                    assert status == 200
                    shown[name] = {(e["user"], e["action"], e["subject"])
                                   for e in body["entries"]}
                town2 = sessions[-1]
                assert (await get(town2, server, "/api/audit", subject="S1"))[0] == 404
                assert (await get(town2, server, "/api/audit", subject="nobody"))[0] == 404
                _, only_s2 = await get(sessions[1], server, "/api/audit", subject="S2")
                _, of_town3 = await get(sessions[1], server, "/api/audit", user="town3")
                return shown, only_s2, of_town3

    shown, only_s2, of_town3 = run(scenario())
    logins = {(name, "user.login", None) for name in ("town1", "town2", "town3")}
    reads = {("town1", "alarm.read", "S1"), ("town1", "track.read", "S4"),
             ("town2", "alarm.read", "S2"), ("town3", "alarm.read", "S3")}
    everything = logins | reads
    assert shown["city"] >= everything
    assert shown["town1"] & everything == {("town1", "user.login", None),
                                           ("town1", "alarm.read", "S1")}
    # S4 is supervised by T3: its entries are the origin's side, not the delegate's
    assert shown["county402"] & everything == {
        ("town1", "user.login", None), ("town2", "user.login", None),
        ("town1", "alarm.read", "S1"), ("town2", "alarm.read", "S2")}
    assert shown["viewer402"] & everything == shown["county402"] & everything
    assert {(e["action"], e["subject"]) for e in only_s2["entries"]} == {("alarm.read", "S2")}
    assert of_town3["entries"] == []          # town3 acts on county 403's side only
    entry = only_s2["entries"][0]
    assert set(entry) == {"seq", "at_ms", "user", "office", "role", "action", "subject",
                          "address", "detail"}
    assert (entry["user"], entry["office"], entry["role"], entry["address"]) == (
        "town2", T2, "officer", "127.0.0.1")


def test_audit_pages_newest_first_with_limit_before_and_since(desk_world):
    settings, paths = desk_world
    clock = Clock()

    async def scenario():
        async with serving(settings, paths, clock) as server, \
                logged_in(server, "town1") as town1:
            for _ in range(5):
                clock.t += 1
                await get(town1, server, "/api/alarms/a1")
            first = await get(town1, server, "/api/audit", subject="S1", limit=2)
            rest = await get(town1, server, "/api/audit", subject="S1",
                             before=first[1]["entries"][-1]["seq"])
            recent = await get(town1, server, "/api/audit", since=int(clock.t * 1000) - 1000)
            bad = [(await get(town1, server, "/api/audit", **{k: v}))[0]
                   for k, v in (("limit", "0"), ("since", "soon"), ("subject", "x" * 200))]
            return first, rest, recent, bad

    (s1, first), (s2, rest), (s3, recent), bad = run(scenario())
    assert (s1, s2, s3) == (200, 200, 200) and bad == [400, 400, 400]
    times = [e["at_ms"] for e in first["entries"] + rest["entries"]]
    assert len(times) == 5 and times == sorted(times, reverse=True)
    seqs = [e["seq"] for e in first["entries"] + rest["entries"]]
    assert seqs == sorted(set(seqs), reverse=True)
    assert [e["action"] for e in recent["entries"]] == ["audit.read", "audit.read",
                                                         "alarm.read", "alarm.read"]


def test_the_audit_table_refuses_updates_and_deletes_even_from_another_program(desk_world):
    settings, paths = desk_world
    run(_login_once(settings, paths))
    db = sqlite3.connect(paths.desk_db, isolation_level=None)
    try:
        for sql in ("UPDATE audit SET user = 'someone else'", "DELETE FROM audit",
                    "UPDATE audit SET subject = NULL WHERE action = 'user.login'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
        assert db.execute("SELECT user FROM audit").fetchall() == [("town1",)]
    finally:
        db.close()


async def _login_once(settings, paths):
    async with serving(settings, paths) as server, logged_in(server, "town1"):
        pass


def test_audit_export_prints_every_entry_oldest_first_as_jsonl_or_csv(desk_world, tmp_path,
                                                                       capsys):
    settings, paths = desk_world

    async def scenario():
        async with serving(settings, paths) as server, \
                logged_in(server, "town1", "town2") as (town1, town2):
            await get(town1, server, "/api/alarms/a1")
            await get(town2, server, "/api/alarms/a2")

    run(scenario())
    capsys.readouterr()
    assert geofence(settings, tmp_path, "audit", "export") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["user"], d["action"], d["subject"]) for d in lines] == [
        ("town1", "user.login", None), ("town2", "user.login", None),
        ("town1", "alarm.read", "S1"), ("town2", "alarm.read", "S2")]
    assert lines[0]["at"].endswith("Z") and lines[0]["address"] == "127.0.0.1"
    assert geofence(settings, tmp_path, "audit", "export", "--subject", "S2",
                    "--format", "csv") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "seq,at,at_ms,user,office,role,action,subject,address,detail"
    assert len(out) == 2 and ",town2,370402002,officer,alarm.read,S2,127.0.0.1,a2" in out[1]
    assert geofence(settings, tmp_path, "audit", "export", "--since",
                    "2999-01-01T00:00:00+08:00") == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        geofence(settings, tmp_path, "audit", "export", "--since", "yesterday")
