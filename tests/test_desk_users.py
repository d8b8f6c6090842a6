"""Desk users: scrypt password hashes, failed-login limits per name and address, and
`geofence user add/list` on the command line (password from stdin or a prompt)."""

import hashlib
import io
import sqlite3

import pytest

from alerts.registry import RegistryStore
from service import cli
from engine.paths import EnginePaths
from desk.users import (ADDRESS_ATTEMPTS_FACTOR, LOGIN_WINDOW_S, SALT_BYTES,
                                UserError, UserStore, hash_password, verify_password)

OFFICES = {"offices": [{"code": "3704", "name": "枣庄市社区矫正中心"},
                       {"code": "370402001", "name": "中心街司法所", "parent": "3704"}]}


def test_passwords_are_stored_as_salted_scrypt_and_only_the_right_one_verifies(tmp_path):
    with UserStore(tmp_path / "desk.sqlite") as users:
        users.add("wang", "370402001", "correct horse", now_ms=1)
        users.add("li", "370402001", "correct horse", now_ms=1)
    db = sqlite3.connect(tmp_path / "desk.sqlite")
    rows = {name: (salt, key, n, r, p) for name, salt, key, n, r, p in
            db.execute("SELECT name, salt, hash, n, r, p FROM users")}
    db.close()
    salt, key, n, r, p = rows["wang"]
    assert (n, r, p, len(salt)) == (2**14, 8, 1, SALT_BYTES)
    assert key == hashlib.scrypt(b"correct horse", salt=salt, n=n, r=r, p=p, dklen=len(key))
    assert b"correct horse" not in salt + key
    assert rows["li"][:2] != rows["wang"][:2]                    # a salt of its own
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("Correct horse", stored)


def test_names_and_passwords_are_checked(tmp_path):
    with UserStore(tmp_path / "desk.sqlite") as users:
        for name, password in (("", "long enough"), ("two words", "long enough"),
                               ("wang", ""), ("wang", "short")):
            with pytest.raises(UserError):
                users.add(name, "370402001", password)
        users.add("wang", "370402001", "long enough")
        with pytest.raises(UserError, match="exists"):
            users.add("wang", "370402001", "another one")
        assert [u.name for u in users.list()] == ["wang"]


def test_failures_are_limited_per_name_and_address_and_success_clears_that_pair(tmp_path):
    window_ms = LOGIN_WINDOW_S * 1000
    with UserStore(tmp_path / "desk.sqlite") as users:
        users.add("wang", "370402001", "long enough")
        for k in range(3):   # one name from one address
            assert users.begin_login("wang", "10.0.0.1", 3, now_ms=1_000 + k)[0] == 0
        wait_s, _ = users.begin_login("wang", "10.0.0.1", 3, now_ms=2_000)
        assert wait_s == 899   # seconds until the first failure (t=1 s) leaves the window
        # nobody else is locked out: the name from elsewhere, other names from there
        assert users.begin_login("wang", "10.0.0.2", 3, now_ms=2_000)[0] == 0
        assert users.begin_login("li", "10.0.0.1", 3, now_ms=2_000)[0] == 0
        # the window passes: allowed again; a success clears that name's failures from
        # that address only
        later = 1_000 + window_ms + 3
        assert users.begin_login("wang", "10.0.0.1", 3, now_ms=later)[0] == 0
        users.login_succeeded("wang", "10.0.0.1", 12, now_ms=later)
        for _ in range(3):
            assert users.begin_login("wang", "10.0.0.1", 3, now_ms=later)[0] == 0
        for _ in range(2):
            assert users.begin_login("wang", "10.0.0.2", 3, now_ms=later)[0] == 0
        users.login_succeeded("wang", "10.0.0.1", 12, now_ms=later)
        assert users.begin_login("wang", "10.0.0.2", 3, now_ms=later)[0] > 0


def test_users_behind_one_proxy_do_not_lock_each_other_out_but_spraying_is_capped(tmp_path):
    with UserStore(tmp_path / "desk.sqlite") as users:
        users.add("city_desk", "3704", "correct horse", now_ms=0)
        for k in range(5):   # five users' typos, all through the proxy at 127.0.0.1
            assert users.begin_login(f"user{k}", "127.0.0.1", 5, now_ms=1_000 + k)[0] == 0
        assert users.begin_login("city_desk", "127.0.0.1", 5, now_ms=2_000)[0] == 0
        ceiling = 5 * ADDRESS_ATTEMPTS_FACTOR
        for k in range(ceiling):   # one guess at each of many names, from one address
            assert users.begin_login(f"spray{k}", "10.6.6.6", 5, now_ms=3_000)[0] == 0
        assert users.begin_login("city_desk", "10.6.6.6", 5, now_ms=3_000)[0] > 0
        assert users.begin_login("city_desk", "127.0.0.1", 5, now_ms=3_000)[0] == 0


def test_a_session_token_is_stored_only_as_its_hash(tmp_path):
    with UserStore(tmp_path / "desk.sqlite") as users:
        users.add("wang", "370402001", "long enough")
        token, session = users.login_succeeded("wang", "10.0.0.1", 12, now_ms=0)
        live = users.session(token, 12, now_ms=1)
        assert (live.user, live.office, live.token_hash) == ("wang", "370402001",
                                                             session.token_hash)
        db = sqlite3.connect(tmp_path / "desk.sqlite")
        (stored,), = db.execute("SELECT token_hash FROM sessions").fetchall()
        db.close()
        assert stored == hashlib.sha256(token.encode()).digest() and token.encode() != stored
        assert users.session("x" + token, 12, now_ms=1) is None
        assert users.session(token, 12, now_ms=13 * 3600_000) is None   # expired


# -- the command line --------------------------------------------------------------------

@pytest.fixture
def engine(tmp_path):
    """An engine directory with two offices, and a config pointing at it."""
    config = tmp_path / "geofence.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "data"}"\n')
    (tmp_path / "data").mkdir()
    registry = RegistryStore(EnginePaths(tmp_path / "data").registry_db)
    registry.import_document(OFFICES, lambda code: True, lambda code: False)
    registry.close()
    return config


class FakeStdin(io.StringIO):
    def __init__(self, text: str, tty: bool = False):
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def geofence(monkeypatch, capsys, stdin: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", FakeStdin(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_user_add_reads_the_password_from_stdin_and_user_list_shows_it(engine, monkeypatch,
                                                                       capsys):
    code, out, err = geofence(monkeypatch, capsys, "s3cret pass\n", "--config", str(engine),
                              "user", "add", "wang", "--office", "370402001")
    assert (code, err) == (0, "") and "wang" in out and "中心街司法所" in out
    code, out, _ = geofence(monkeypatch, capsys, "", "--config", str(engine), "user", "list")
    assert code == 0 and out.startswith("wang\t370402001\t")
    with UserStore(EnginePaths(engine.parent / "data").desk_db) as users:
        assert verify_password("s3cret pass", users.password_hash("wang"))
    code, _, err = geofence(monkeypatch, capsys, "other pass\n", "--config", str(engine),
                            "user", "add", "wang", "--office", "3704")
    assert code == 2 and "exists" in err
    code, _, _ = geofence(monkeypatch, capsys, "other pass\n", "--config", str(engine),
                          "user", "add", "wang", "--office", "3704", "--replace")
    assert code == 0


@pytest.mark.parametrize("stdin, argv, reason", [
    ("s3cret pass\n", ["--office", "999"], "unknown office '999'"),
    ("\n", ["--office", "3704"], "the password is empty"),
    ("", ["--office", "3704"], "the password is empty"),
    ("short\n", ["--office", "3704"], "at least 8 characters"),
])
def test_user_add_refuses_bad_input_with_one_line_and_exit_2(engine, monkeypatch, capsys,
                                                             stdin, argv, reason):
    code, out, err = geofence(monkeypatch, capsys, stdin, "--config", str(engine), "user",
                              "add", "wang", *argv)
    assert code == 2 and out == ""
    assert err.startswith("geofence: error: ") and reason in err and err.count("\n") == 1
    with UserStore(EnginePaths(engine.parent / "data").desk_db) as users:
        assert users.list() == []


def test_user_add_on_a_terminal_asks_twice(engine, monkeypatch, capsys):
    answers = iter(["first pass", "other pass", "same pass1", "same pass1"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr("sys.stdin", FakeStdin("", tty=True))
    assert cli.main(["--config", str(engine), "user", "add", "wang", "--office", "3704"]) == 2
    assert "differ" in capsys.readouterr().err
    assert cli.main(["--config", str(engine), "user", "add", "wang", "--office", "3704"]) == 0


# -- roles, disabled users, schema version 2 ---------------------------------------------

def test_a_version_1_desk_file_gets_roles_disabled_and_the_audit_log_keeping_its_rows(
        tmp_path):
    from engine.database import Schema, connect, schema_version
    from desk import users as users_module

    path = tmp_path / "desk.sqlite"
    version_1 = Schema("desk store", marker="users", steps=(users_module._version_1,))
    db = connect(path, version_1)
    hashed = hash_password("correct horse")
    db.execute("INSERT INTO users VALUES ('wang', '370402001', ?, ?, ?, ?, ?, 5)",
               (hashed.salt, hashed.key, hashed.n, hashed.r, hashed.p))
    db.execute("INSERT INTO sessions VALUES (?, 'wang', 0, ?)",
               (hashlib.sha256(b"token").digest(), 10**13))
    db.close()
    with UserStore(path) as users:
        (wang,) = users.list()
        assert (wang.name, wang.office, wang.created_ms, wang.role, wang.disabled) == (
            "wang", "370402001", 5, "officer", False)
        session = users.session("token", 12, now_ms=1)   # the v1 session still works
        assert (session.user, session.role) == ("wang", "officer")
        assert users.audit.entries() == []
    db = sqlite3.connect(path)
    try:
        assert schema_version(db) == 2
        names = {name for name, in db.execute("SELECT name FROM sqlite_master")}
        assert {"audit", "audit_subject", "audit_user", "audit_at", "audit_no_update",
                "audit_no_delete"} <= names
    finally:
        db.close()


def test_roles_are_checked_and_replace_keeps_a_disabled_user_disabled(tmp_path):
    with UserStore(tmp_path / "desk.sqlite") as users:
        with pytest.raises(UserError, match="officer, viewer"):
            users.add("wang", "370402001", "long enough", role="admin")
        users.add("jian", "3704", "long enough", role="viewer")
        token, session = users.login_succeeded("jian", "10.0.0.1", 12, now_ms=0)
        assert session.role == "viewer" and users.session(token, 12, 1).role == "viewer"
        assert users.disable("jian", now_ms=7).disabled_ms == 7
        assert users.session(token, 12, 2) is None                   # ended at once
        assert users.login_succeeded("jian", "10.0.0.1", 12, now_ms=8) is None
        assert users.disable("jian", now_ms=9).disabled_ms == 7      # since when, kept
        replaced = users.add("jian", "370402001", "long enough", role="officer",
                             replace=True)
        assert (replaced.role, replaced.disabled_ms) == ("officer", 7)
        assert users.enable("jian").disabled_ms is None
        assert users.login_succeeded("jian", "10.0.0.1", 12, now_ms=10) is not None
        with pytest.raises(UserError, match="no user"):
            users.disable("nobody")


def test_user_add_role_list_and_disable_on_the_command_line(engine, monkeypatch, capsys):
    code, out, _ = geofence(monkeypatch, capsys, "s3cret pass\n", "--config", str(engine),
                            "user", "add", "jian", "--office", "3704", "--role", "viewer")
    assert code == 0 and "role viewer" in out
    geofence(monkeypatch, capsys, "s3cret pass\n", "--config", str(engine), "user", "add",
             "wang", "--office", "370402001")
    code, out, _ = geofence(monkeypatch, capsys, "", "--config", str(engine), "user",
                            "disable", "wang")
    assert code == 0 and "disabled" in out
    code, out, _ = geofence(monkeypatch, capsys, "", "--config", str(engine), "user", "list")
    rows = [line.split("\t") for line in out.splitlines()]
    assert [row[:3] for row in rows] == [["jian", "3704", "viewer"],
                                         ["wang", "370402001", "officer"]]
    assert rows[0][3] == "active" and rows[1][3].startswith("disabled 20")
    code, _, err = geofence(monkeypatch, capsys, "", "--config", str(engine), "user",
                            "disable", "nobody")
    assert code == 2 and "no user 'nobody'" in err
    with pytest.raises(SystemExit):   # argparse: exit 2 and the allowed roles
        geofence(monkeypatch, capsys, "s3cret pass\n", "--config", str(engine), "user",
                 "add", "li", "--office", "3704", "--role", "admin")
    assert "officer" in capsys.readouterr().err


def test_an_audit_action_must_be_a_dotted_lower_case_word(tmp_path):
    from desk.audit import AuditEntry

    with UserStore(tmp_path / "desk.sqlite") as users:
        for action in ("alarm.ack", "leave.approve", "subject.update", "user.login"):
            users.audit.append(AuditEntry(1, "wang", "3704", "officer", action, None, "::1"))
        for action in ("ack", "Alarm.Ack", "alarm.", "alarm ack", "alarm.ack; drop"):
            with pytest.raises(ValueError, match="<what>.<verb>"):
                users.audit.append(AuditEntry(1, "wang", "3704", "officer", action, None,
                                              "::1"))
        assert len(users.audit.entries()) == 4
