"""Key periods (重大活动/敏感节点, issue 13): a city office declares from, to, which offices
(with their subtrees) and levels; during it those subjects are judged by the strict rules and
signal_lost comes after `key_period_signal_lost_after_s`; its end restores their own level.

Worker level, as tests/test_worker_rules.py: a real layer, a real registry in SQLite, the
worker's classes fed by hand, the clock told the time as the worker tells it.
"""

from alerts.subject_book import REGISTRY_POLL_S
from engine.config import Rules
from tests import test_worker_rules as worker
from tests.test_worker_rules import CITY, XUECHENG, minutes, only, rfc3339, subject, types

engine, places, world = worker.engine, worker.places, worker.world   # the shared fixtures


def period(pid: str, start_m: float, end_m: float, offices=(CITY,), levels=None) -> dict:
    doc = {"id": pid, "name": "全国两会", "start": rfc3339(minutes(start_m)),
           "end": rfc3339(minutes(end_m)), "offices": list(offices)}
    return doc if levels is None else {**doc, "levels": levels}


def test_a_key_period_judges_a_normal_subject_by_the_strict_rules_until_it_ends(world):
    w = world([subject("s1")], rules=Rules(key_period_signal_lost_after_s=900))
    w.register({"key_periods": [period("kp1", 100, 200)]})
    w.book.refresh(force=True)
    w.clock(minutes(0))
    assert w.fix("s1", minutes(1), "XUECHENG") == [], "before: a normal subject, two fixes"
    assert types(w.fix("s1", minutes(2), "XUECHENG")) == ["zone_exit"]
    w.fix("s1", minutes(3), "HOME")
    assert types(w.fix("s1", minutes(4), "HOME")) == ["zone_return"]

    w.fix("s1", minutes(99), "HOME")
    w.clock(minutes(100))
    assert w.book.in_key_period[w.book.index_of["s1"]]
    assert types(w.fix("s1", minutes(101), "XUECHENG")) == ["zone_exit"], "strict: one fix"
    w.fix("s1", minutes(102), "HOME")
    w.fix("s1", minutes(103), "HOME")
    assert w.clock(minutes(117)) == [], "14 minutes of silence"
    lost = only(w.clock(minutes(119)), "signal_lost")
    assert lost.to_document()["t"] == minutes(118), "the key period's 15 minutes, not 60"

    w.fix("s1", minutes(190), "HOME")
    w.clock(minutes(200))
    assert not w.book.in_key_period[w.book.index_of["s1"]]
    assert w.fix("s1", minutes(201), "XUECHENG") == [], "after: normal again, two fixes"
    assert types(w.fix("s1", minutes(202), "XUECHENG")) == ["zone_exit"]
    assert w.clock(minutes(250)) == [], "after: signal_lost after the normal hour again"


def test_a_key_period_covers_only_its_offices_subtrees_and_levels(world):
    w = world([subject("s1"), subject("s2", level="loose"), subject("s3", level="strict")])
    w.register({"key_periods": [period("only-xuecheng", 0, 100, offices=(XUECHENG,)),
                                period("loose-only", 0, 100, levels=["loose"])]})
    w.book.refresh(force=True)
    w.clock(minutes(10))
    index = w.book.index_of
    assert not w.book.in_key_period[index["s1"]], "another county's period, a normal level"
    assert w.book.in_key_period[index["s2"]] and w.book.rule_class[index["s2"]] == 4 - 2
    assert not w.book.in_key_period[index["s3"]]
    assert w.book.base_class[index["s2"]] == 4, "the subject's own class is kept"


def test_a_key_period_declared_while_running_reaches_the_worker_at_its_next_poll(world):
    """The worker polls the registry every REGISTRY_POLL_S (0.2 s): the poll alone applies
    a new period, at the time the clock last told, with no clock tick in between."""
    assert REGISTRY_POLL_S < 1
    w = world([subject("s1")])
    w.clock(minutes(0))
    assert w.book.rule_class[w.book.index_of["s1"]] == 0
    w.register({"key_periods": [period("kp1", -10, 100)]})
    w.book.refresh(force=True)          # the next poll
    assert w.book.rule_class[w.book.index_of["s1"]] == 2
    w.register({"key_periods": [period("kp1", -10, 0.5)]})   # ended early, on the desk
    w.book.refresh(force=True)
    w.clock(minutes(1))
    assert w.book.rule_class[w.book.index_of["s1"]] == 0


def test_a_book_kept_by_changes_applies_periods_as_one_built_afresh(world):
    """Subjects moved between offices and levels, periods declared and ended: after each
    change the book kept by the change log has the classes a fresh book has."""
    from alerts.subject_book import SubjectBook

    w = world([subject("s1"), subject("s2", level="loose"), subject("s3", office="370403001",
                                                                      home=XUECHENG)])
    steps = [
        {"key_periods": [period("kp1", 0, 100, offices=("370402",))]},
        {"subjects": [subject("s3", office="370402001")]},
        {"key_periods": [period("kp2", 0, 100, levels=["loose"])]},
        {"subjects": [subject("s2", level="strict", risk="key")]},
        {"key_periods": [period("kp1", 0, 5, offices=("370402",))]},
        {"subjects": [subject("s4", level="loose")]},
    ]
    for step in steps:
        w.register(step)
        w.book.refresh(force=True)
        w.clock(minutes(10))
        fresh = SubjectBook(w.engine, w.store)
        fresh.refresh(force=True)
        fresh.key_periods_at(minutes(10))
        assert fresh.rule_class.tolist() == w.book.rule_class.tolist(), step
        assert fresh.in_key_period.tolist() == w.book.in_key_period.tolist(), step
    assert w.book.rule_class.tolist() == [0, 3, 0, 2], "s4 loose, raised by kp2"
