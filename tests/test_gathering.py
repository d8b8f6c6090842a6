"""The gathering rule over time, its alarms, and subjects' cases in the registry."""

import math

import pytest

from alerts.gathering import GatheringRule, GatheringSettings, gathering_alarms, gathering_id
from alerts.gathering_join import CaseNumbers, Links
from alerts.registry import Registry, RegistryError, Subject, parse_document
from alerts.schedule import Route
from engine.config import Rules

MIN = 60_000
LON, LAT = 117.3, 34.8
GPS = 0


def metres_north(m: float) -> float:
    return LAT + math.degrees(m / 6_371_008.8)


def rule_and_links(**changes):
    numbers = CaseNumbers()
    groups = {0: numbers.groups(["C1"], False), 1: numbers.groups(["C1"], False),
              2: numbers.groups([], True), 3: numbers.groups([], True),
              4: numbers.groups([], False)}
    links = Links.build(5, {s: g for s, g in groups.items() if g}, numbers.names)
    return GatheringRule(GatheringSettings.of(Rules(**changes))), links


def feed(rule, links, minutes, *, a=0, b=1, apart_at=(), step=1):
    """Fixes of `a` and `b` each minute (b 30 s after a), 50 m apart, or 2 km apart in the
    minutes `apart_at`; one window a minute. Returns the gatherings raised, by minute."""
    raised = {}
    for m in range(0, minutes + 1, step):
        far = m in apart_at
        got = rule.apply([a, b], [m * MIN, m * MIN + 30_000], [LON, LON],
                         [LAT, metres_north(2000 if far else 50)], [10.0, 10.0], [GPS, GPS],
                         links)
        if got:
            raised[m] = got
    return raised


def test_together_29_minutes_raises_nothing():
    rule, links = rule_and_links()
    assert feed(rule, links, 29) == {}
    assert rule.together() == [(0, 1)]   # still together


def test_together_31_minutes_raises_one_gathering():
    rule, links = rule_and_links()
    raised = feed(rule, links, 31)
    assert list(raised) == [30]
    (r,) = raised[30]
    assert (r.a, r.b, r.since_ms, links.names[r.group]) == (0, 1, 30_000, "C1")


def test_apart_then_together_again_raises_a_new_one():
    rule, links = rule_and_links()
    raised = feed(rule, links, 75, apart_at={40})
    assert list(raised) == [30, 71]
    assert raised[71][0].since_ms == 41 * MIN + 30_000


def test_a_long_silence_ends_the_pair():
    rule, links = rule_and_links(gathering_gap_s=600)
    feed(rule, links, 20)
    assert rule.apply([0], [40 * MIN], [LON], [LAT], [10.0], [GPS], links) == []
    assert rule.together() == []   # 20 min without seeing them together: the pair is gone


def test_key_persons_link_unlinked_people_do_not():
    rule, links = rule_and_links()
    raised = feed(rule, links, 31, a=2, b=3)
    assert links.names[raised[30][0].group] == "key"
    rule, links = rule_and_links()
    assert feed(rule, links, 31, a=0, b=4) == {} and feed(rule, links, 31, a=2, b=4) == {}
    assert rule.together() == []


def test_inaccurate_fixes_and_status_rows_say_nothing():
    rule, links = rule_and_links()
    for m in range(40):
        assert rule.apply([0, 1], [m * MIN, m * MIN], [LON, LON], [LAT, LAT], [10.0, 1500.0],
                          [GPS, GPS], links) == []
    from ingest.protocol import STATE0
    for m in range(40):
        assert rule.apply([0, 1], [m * MIN, m * MIN], [LON, LON], [LAT, LAT], [10.0, 10.0],
                          [GPS, STATE0], links) == []
    assert rule.together() == []


def test_fixes_in_different_windows_still_meet():
    """a's fix in one window, b's in the next: the carried-over fix meets the new one."""
    rule, links = rule_and_links()
    raised = []
    for m in range(32):
        who = m % 2
        raised += rule.apply([who], [m * MIN], [LON], [LAT], [10.0], [GPS], links)
    assert [(r.a, r.b, r.since_ms) for r in raised] == [(0, 1, 1 * MIN)]


def test_two_alarms_one_for_each_office_with_stable_ids():
    rule, links = rule_and_links()
    (r,) = feed(rule, links, 31)[30]
    subjects = [Subject("p0", ("d0",), "A", ("h",), index=0, cases=("C1",)),
                Subject("p1", ("d1",), "B", ("h",), index=1, cases=("C1",))]
    routes = {"p0": Route("A", (), ("h",)), "p1": Route("B", ("C",), ("h",))}
    alarms = gathering_alarms([r], subjects, lambda sid, t: routes[sid], links.names, 5)
    assert [(x.subject, x.office, x.copies, x.severity, x.type) for x in alarms] == [
        ("p0", "A", (), "high", "gathering"), ("p1", "B", ("C",), "high", "gathering")]
    assert alarms[0].details["other"] == "p1" and alarms[1].details["other"] == "p0"
    assert alarms[0].details["case"] == "C1" and alarms[0].details["since"] == 30_000
    assert alarms[0].id == gathering_id(subjects[0], subjects[1], 30_000) != alarms[1].id
    again = gathering_alarms([r], subjects, lambda sid, t: routes[sid], links.names, 9)
    assert [x.id for x in again] == [x.id for x in alarms]


def parse(doc, current=Registry()):
    return parse_document(doc, current, lambda c: True, lambda c: True)


def subject(sid="p1", **extra):
    return {"id": sid, "devices": [f"d-{sid}"], "office": "o", "home": ["h"], **extra}


def test_cases_are_checked_all_at_once_and_exported():
    base = {"offices": [{"code": "o", "name": "O"}]}
    reg = parse({**base, "subjects": [subject(cases=["C2", "C1"])]})
    assert reg.subjects["p1"].cases == ("C1", "C2")
    doc = reg.to_document()
    assert doc["subjects"][0]["cases"] == ["C1", "C2"]
    assert parse(doc).subjects["p1"].cases == ("C1", "C2")
    assert "cases" not in parse({**base, "subjects": [subject()]}).to_document()["subjects"][0]
    with pytest.raises(RegistryError) as e:
        parse({**base, "subjects": [subject(cases="C1 ".split(" ")),
                                    subject("p2", cases=["A", "A"]),
                                    subject("p3", cases=[{"x": 1}]),
                                    subject("p4", cases=["x" * 129])]})
    problems = e.value.problems
    assert len(problems) == 4, problems
    assert "subjects[0]" in problems[0] and "cases" in problems[0]
    assert "twice" in problems[1] and "array of codes" in problems[2]
    assert "1..128" in problems[3]
