"""The alarm store: one open alarm per subject and type, people's actions kept, escalation
up the office tree, replays adding nothing, webhook deliveries enqueued with the alarm."""

import sqlite3

import pytest

from alerts.alarm_store import AlarmStateError, AlarmStore, Incoming, UnknownAlarmError
from alerts.alarms import Alarm
from engine.messages import topic

CITY, COUNTY, TOWN = ("3704",), ("3704", "370402"), ("3704", "370402", "370402001")
PARENTS = {"370402001": COUNTY, "370402": CITY, "3704": None}
MIN = 60_000


def alarm(n, kind="zone_exit", severity="high", subject="S00001", t=1_000, offices=(TOWN,),
          received=None):
    doc = {"id": f"a{n}", "type": kind, "severity": severity, "subject": subject,
           "office": offices[0][-1], "t": t, "raised_at": t, "fix": None, "where": None,
           "home": ["370402"], "status": "open", "details": {}}
    return Incoming(Alarm.from_document(doc, received), offices)


@pytest.fixture
def store(tmp_path):
    s = AlarmStore(tmp_path / "alarms.sqlite",
                   escalation_s={"critical": 600, "high": 1800, "medium": 7200})
    yield s
    s.close()


def parent_path(office):
    return PARENTS.get(office)


def test_second_exit_while_the_first_is_unresolved_is_folded_not_a_new_alarm(store):
    assert store.add([alarm(1, t=1_000)], now_ms=1_000) == ["a1"]
    assert store.add([alarm(2, t=5_000)], now_ms=5_000) == []
    folded = store.get("a1")
    assert folded.details["repeats"] == 1 and folded.details["last"]["id"] == "a2"
    assert [a.id for a in store.query()] == ["a1"]
    assert store.raised_ids() == {"a1": "a1", "a2": "a1"}
    store.resolve("a1", "wang", "370402001", "called him: back home", now_ms=6_000)
    assert store.add([alarm(3, t=9_000)], now_ms=9_000) == ["a3"]   # a new episode
    assert store.add([alarm(4, kind="signal_lost", t=9_500)], now_ms=9_500) == ["a4"]  # other type


def test_a_new_event_after_an_acknowledgement_is_a_new_alarm_that_reaches_people(store):
    store.add([alarm(1, severity="critical", kind="exclusion_entry")], now_ms=0)
    store.acknowledge("a1", "li", "370402001", "calling him", now_ms=MIN)
    assert store.add([alarm(2, severity="critical", kind="exclusion_entry", t=9_000)],
                     now_ms=60 * MIN, webhook_offices={"370402001"}) == ["a2"]
    assert store.get("a2").status == "open"
    assert store.escalate_due(70 * MIN, parent_path) == 1          # its own timer runs


def test_after_a_transfer_a_new_event_goes_to_the_new_office_not_into_the_old_alarm(store):
    store.add([alarm(1)], now_ms=0)                                        # at 370402001
    elsewhere = (("3704", "370481", "370481001"),)
    assert store.add([alarm(2, t=5_000, offices=elsewhere)], now_ms=5_000) == ["a2"]
    assert store.offices_of("a2") == ["370481001"]
    assert store.get("a1").details == {}                                # nothing leaked


def test_a_replay_after_a_crash_adds_nothing(store):
    store.add([alarm(1), alarm(2, kind="zone_return", severity="info")], now_ms=1_000)
    before = (store.last_change(), store.raised_counts())
    store.add([alarm(1), alarm(2, kind="zone_return", severity="info")], now_ms=2_000)
    assert (store.last_change(), store.raised_counts()) == before
    assert store.get("a1").details == {}


def test_acknowledge_and_resolve_are_kept_with_who_when_and_note(store):
    store.add([alarm(1)], now_ms=1_000)
    store.acknowledge("a1", "li", "370402001", "calling", now_ms=2_000)
    with pytest.raises(AlarmStateError):
        store.acknowledge("a1", "li", "370402001", "again", now_ms=2_500)
    store.resolve("a1", "li", "370402001", "at his mother's, inside the county", now_ms=3_000)
    with pytest.raises(AlarmStateError):
        store.resolve("a1", "li", "370402001", "twice", now_ms=3_500)
    with pytest.raises(UnknownAlarmError):
        store.resolve("nope", "li", "370402001", "", now_ms=3_500)
    assert store.get("a1").status == "resolved"
    assert [(h["action"], h["user"], h["at"], h["note"]) for h in store.history("a1")] == [
        ("raised", None, 1_000, None), ("acknowledged", "li", 2_000, "calling"),
        ("resolved", "li", 3_000, "at his mother's, inside the county")]
    assert [c.action for c in store.changes_after(0)] == ["raised", "acknowledged", "resolved"]


def test_unacknowledged_alarms_escalate_up_the_tree_on_their_timers(store):
    store.add([alarm(1, severity="critical"), alarm(2, subject="S2", severity="high"),
               alarm(3, subject="S3", kind="zone_return", severity="info")], now_ms=0)
    assert store.escalate_due(10 * MIN - 1, parent_path) == 0
    assert store.escalate_due(10 * MIN, parent_path) == 1
    critical = store.get("a1")
    assert critical.status == "escalated"
    assert critical.details["escalated_to"] == "370402"
    assert store.changes_after(0)[-1].topics == (topic(COUNTY),)
    store.escalate_due(20 * MIN, parent_path)
    assert store.get("a1").details["escalated_to"] == "3704"   # and on up
    store.escalate_due(300 * MIN, parent_path)
    assert store.get("a1").details["escalation_level"] == 2     # the root is the end
    assert store.get("a2").details["escalated_to"] == "370402"  # high: after 30 min
    assert store.get("a3").status == "open"                     # info never escalates
    assert store.offices_of("a1") == ["370402001", "370402", "3704"]


def test_an_acknowledged_alarm_does_not_escalate(store):
    store.add([alarm(1, severity="critical")], now_ms=0)
    store.acknowledge("a1", "li", "370402001", "", now_ms=MIN)
    assert store.escalate_due(60 * MIN, parent_path) == 0
    assert store.get("a1").status == "acknowledged"


def test_webhooks_are_enqueued_with_the_alarm_for_offices_that_have_one(store, tmp_path):
    delegated = alarm(1, offices=(("3704", "370481", "370481001"), TOWN))  # copy to origin
    store.add([delegated], now_ms=0, webhook_offices={"370481001", "370402001", "370402"})
    store.add([alarm(2, subject="S2", severity="critical")], now_ms=0, webhook_offices={"370402"})
    store.escalate_due(10 * MIN, parent_path, webhook_offices={"370402"})
    with sqlite3.connect(tmp_path / "alarms.sqlite") as db:
        rows = sorted(db.execute("SELECT alarm_id, office, key FROM outbox"))
    db.close()
    assert rows == [("a1", "370402001", "copy"), ("a1", "370481001", "raised"),
                    ("a2", "370402", "escalated-1")]
    assert store.outbox().pending() == 3


def test_query_filters_and_office_scoping(store):
    store.add([alarm(1, t=1), alarm(2, subject="S2", kind="signal_lost", t=2),
               alarm(3, subject="S3", t=3, offices=(("3704", "370403", "370403001"),))],
              now_ms=10)
    assert [a.id for a in store.query()] == ["a3", "a2", "a1"]        # newest first
    assert [a.id for a in store.query(type="signal_lost")] == ["a2"]
    assert [a.id for a in store.query(offices=["370403001"])] == ["a3"]
    assert store.query(offices=[]) == []
    assert [a.id for a in store.query(limit=1)] == ["a3"]


def test_raised_counts_and_latency_survive_a_reopen(tmp_path):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path)
    store.add([alarm(1, received=1_000), alarm(2, subject="S2", received=1_000)], now_ms=1_030)
    store.close()
    store = AlarmStore(path)
    assert store.raised_counts() == {("zone_exit", "high"): 2}
    buckets, total = store.latency_histogram()
    assert dict(buckets)[0.05] == 2 and dict(buckets)[0.02] == 0 and total == pytest.approx(0.06)
    store.close()
