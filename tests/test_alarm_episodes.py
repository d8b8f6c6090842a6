"""Alarm episodes (SPEC §6 as amended, `alerts.episodes`) in a real alarm store: repeats
fold only while their episode runs, a closing event ends it, what follows is a new alarm
with its own time; replays after a crash change nothing; an older store upgrades."""

import sqlite3

import pytest

from alerts import alarm_store
from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from engine.database import Schema, connect, schema_version

TOWN = ("3704", "370402", "370402001")
SEVERITY = {"zone_exit": "high", "zone_return": "info", "possible_exit": "medium",
            "exclusion_entry": "critical", "possible_exclusion": "medium",
            "signal_lost": "high", "signal_restored": "info", "phone_off": "high",
            "permit_overstay": "high", "feed_outage": "critical"}


def alarm(aid, kind, t, subject="S00001", **details):
    doc = {"id": aid, "type": kind, "severity": SEVERITY[kind], "subject": subject,
           "office": TOWN[-1], "t": t, "raised_at": t, "fix": None, "where": None,
           "home": ["370402"], "status": "open", "details": details}
    return Incoming(Alarm.from_document(doc), (TOWN,))


@pytest.fixture
def store(tmp_path):
    s = AlarmStore(tmp_path / "alarms.sqlite", escalation_s={"critical": 600, "high": 1800})
    yield s
    s.close()


def ids(store, kind=None):
    return sorted(a.id for a in store.query(type=kind))


def test_an_exit_after_its_return_is_a_new_alarm_with_its_own_time(store):
    assert store.add([alarm("x1", "zone_exit", 1_000)], now_ms=1_000) == ["x1"]
    assert store.add([alarm("x2", "zone_exit", 2_000)], now_ms=2_000) == []  # still out
    assert store.episode("x1") == {}
    assert store.add([alarm("r1", "zone_return", 3_000, exit_id="x1")], now_ms=3_000) == ["r1"]
    assert store.episode("x1") == {"ended": 3_000, "ended_by": "r1"}
    assert store.add([alarm("x3", "zone_exit", 9_000)], now_ms=9_000) == ["x3"]
    first, second = store.get("x1"), store.get("x3")
    assert (first.t_ms, first.status, first.details["repeats"]) == (1_000, "open", 1)
    assert (second.t_ms, second.status, second.details) == (9_000, "open", {})
    assert [a.id for a in store.query(type="zone_exit")] == ["x3", "x1"]   # the desk: both
    assert store.episode("x3") == {}
    assert store.add([alarm("x4", "zone_exit", 9_500)], now_ms=9_500) == []  # folds into x3
    assert store.get("x3").details["repeats"] == 1 and store.get("x1").details["repeats"] == 1


def test_a_return_naming_a_folded_exit_ends_and_links_the_alarm_it_was_folded_into(store):
    store.add([alarm("x1", "zone_exit", 1_000), alarm("x2", "zone_exit", 2_000)], now_ms=2_000)
    store.add([alarm("r2", "zone_return", 3_000, exit_id="x2")], now_ms=3_000)
    assert store.episode("r2") == {"exit": "x1"}
    assert store.get("r2").details == {"exit_id": "x2", "exit_alarm": "x1"}  # for PUB, hooks
    assert store.episode("x1") == {"ended": 3_000, "ended_by": "r2"}
    # each return is its own alarm, shown with its own exit
    store.add([alarm("x5", "zone_exit", 5_000),
               alarm("r5", "zone_return", 6_000, exit_id="x5")], now_ms=6_000)
    assert ids(store, "zone_return") == ["r2", "r5"]
    assert store.episode("r5") == {"exit": "x5"}
    assert store.get("r5").details == {"exit_id": "x5"}                  # as it came
    assert store.episode("x5") == {"ended": 6_000, "ended_by": "r5"}
    assert store.episode("x1") == {"ended": 3_000, "ended_by": "r2"}   # not moved


def test_a_return_of_another_subject_ends_nothing(store):
    store.add([alarm("x1", "zone_exit", 1_000),
               alarm("r9", "zone_return", 2_000, subject="S9", exit_id="x9")], now_ms=2_000)
    assert store.episode("x1") == {} and store.episode("r9") == {}
    assert store.add([alarm("x2", "zone_exit", 3_000)], now_ms=3_000) == []


@pytest.mark.parametrize("lost", ["signal_lost", "phone_off"])
def test_silence_ends_with_signal_restored(store, lost):
    store.add([alarm("l1", lost, 1_000)], now_ms=1_000)
    assert store.add([alarm("l2", lost, 2_000)], now_ms=2_000) == []
    store.add([alarm("s1", "signal_restored", 3_000, after=lost)], now_ms=3_000)
    assert store.episode("l1") == {"ended": 3_000, "ended_by": "s1"}
    assert store.add([alarm("l3", lost, 8_000)], now_ms=8_000) == ["l3"]
    assert ids(store, lost) == ["l1", "l3"]
    assert store.add([alarm("s2", "signal_restored", 9_000, after=lost)], now_ms=9_000) \
        == ["s2"]                                              # not folded into s1
    assert store.episode("l3") == {"ended": 9_000, "ended_by": "s2"}


@pytest.mark.parametrize("kind", ["possible_exit", "exclusion_entry", "possible_exclusion",
                                  "permit_overstay", "zone_return", "signal_restored"])
def test_types_the_rules_raise_once_an_episode_never_fold(store, kind):
    assert store.add([alarm("a1", kind, 1_000)], now_ms=1_000) == ["a1"]
    assert store.add([alarm("a2", kind, 5_000)], now_ms=5_000) == ["a2"]
    assert [(a.id, a.t_ms, a.status) for a in store.query(type=kind)] == \
        [("a2", 5_000, "open"), ("a1", 1_000, "open")]
    assert "repeats" not in store.get("a1").details


def test_a_feed_outage_folds_until_somebody_takes_it_up(store):
    def outage(aid, t):
        return Incoming(Alarm.from_document({
            "id": aid, "type": "feed_outage", "severity": "critical", "subject": None,
            "office": "3704", "t": t, "raised_at": t, "fix": None, "where": None,
            "home": [], "status": "open", "details": {"carrier": "cmcc"}}), (("3704",),))
    store.add([outage("o1", 1_000)], now_ms=1_000)
    assert store.add([outage("o2", 2_000)], now_ms=2_000) == []
    store.acknowledge("o1", "admin", "3704", "", now_ms=2_500)
    assert store.add([outage("o3", 3_000)], now_ms=3_000) == ["o3"]


STREAM = [alarm("x1", "zone_exit", 1_000), alarm("x2", "zone_exit", 2_000),
          alarm("p1", "possible_exit", 2_500),
          alarm("r1", "zone_return", 3_000, exit_id="x2"),
          alarm("l1", "signal_lost", 4_000),
          alarm("s1", "signal_restored", 5_000, after="signal_lost"),
          alarm("x3", "zone_exit", 6_000), alarm("x4", "zone_exit", 6_500),
          alarm("r3", "zone_return", 7_000, exit_id="x3"),
          alarm("x5", "zone_exit", 8_000), alarm("l2", "signal_lost", 9_000)]


def dump(path):
    """Every table that says what the desk sees and what a replay must not change."""
    db = sqlite3.connect(path)
    try:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("raised", "raised_counts")} | {
            "alarms": db.execute("SELECT id, type, t_ms, status, ended_ms, ended_by, doc "
                                 "FROM alarms ORDER BY id").fetchall(),
            "changes": db.execute("SELECT alarm_id, action FROM changes ORDER BY seq").fetchall()}
    finally:
        db.close()


def test_reprocessing_after_a_crash_gives_the_same_alarms(tmp_path):
    once = tmp_path / "once.sqlite"
    store = AlarmStore(once)
    for k, incoming in enumerate(STREAM):
        store.add([incoming], now_ms=10_000 + k, positions={"w0": k + 1})
    store.close()
    expected = dump(once)
    assert [(row[0], row[2]) for row in expected["alarms"] if row[1] == "zone_exit"] == \
        [("x1", 1_000), ("x3", 6_000), ("x5", 8_000)]
    assert [(row[0], row[4], row[5]) for row in expected["alarms"]] == [
        ("l1", 5_000, "s1"), ("l2", None, None), ("p1", None, None), ("r1", None, None),
        ("r3", None, None), ("s1", None, None), ("x1", 3_000, "r1"), ("x3", 7_000, "r3"),
        ("x5", None, None)]

    # Crashed after the 7th alarm: the worker's file is read again from the saved position
    # by a restarted dispatcher, and then everything once more from the start.
    crashed = tmp_path / "crashed.sqlite"
    store = AlarmStore(crashed)
    for k, incoming in enumerate(STREAM[:7]):
        store.add([incoming], now_ms=10_000 + k, positions={"w0": k + 1})
    store.close()
    store = AlarmStore(crashed)
    start = store.position("w0")
    assert start == 7
    store.add(STREAM[start - 3:], now_ms=10_000 + start)   # a batch overlapping the last
    store.add(STREAM, now_ms=20_000)                       # and a full replay
    store.close()
    replayed = dump(crashed)
    assert replayed["raised"] == expected["raised"]
    assert replayed["raised_counts"] == expected["raised_counts"]
    assert [row[:6] for row in replayed["alarms"]] == [row[:6] for row in expected["alarms"]]
    assert replayed["changes"] == expected["changes"]


def test_an_older_store_upgrades_with_the_episodes_its_returns_ended(tmp_path):
    path = tmp_path / "alarms.sqlite"
    old = Schema("alarm store", marker="alarms", steps=alarm_store.SCHEMA.steps[:1])
    db = connect(path, old)
    rows = [  # as version 1 left them: r1 folded a later return (its exit hid inside x1)
        ("x1", "zone_exit", 1_000, {"repeats": 1, "last": {"id": "x2", "t": 5_000}}),
        ("r1", "zone_return", 2_000, {"exit_id": "x1", "repeats": 1,
                                      "last": {"id": "r2", "t": 6_000}}),
        ("l1", "signal_lost", 3_000, {}), ("l9", "signal_lost", 3_000, {}),
        ("s1", "signal_restored", 4_000, {"after": "signal_lost"})]
    for aid, kind, t, details in rows:
        a = alarm(aid, kind, t, subject="S9" if aid == "l9" else "S00001", **details).alarm
        db.execute("INSERT INTO alarms VALUES (?, ?, ?, ?, ?, ?, '[\"370402001\"]', ?, ?, "
                   "'open', NULL, ?, ?)", (a.id, a.type, a.severity, a.fold_key, a.subject,
                                           a.office, a.t_ms, t, t, a.to_json()))
        db.execute("INSERT INTO raised VALUES (?, ?)", (aid, aid))
    db.execute("INSERT INTO raised VALUES ('x2', 'x1'), ('r2', 'r1')")
    db.close()

    store = AlarmStore(path)
    assert schema_version(store._db) == 2
    assert store.episode("x1") == {"ended": 6_000, "ended_by": "r1"}
    assert store.episode("l1") == {"ended": 4_000, "ended_by": "s1"}
    assert store.episode("l9") == {}                     # another subject's silence runs on
    assert store.add([alarm("x7", "zone_exit", 7_000)], now_ms=7_000) == ["x7"]
    assert store.add([alarm("l8", "signal_lost", 8_000, subject="S9")], now_ms=8_000) == []
    store.close()
