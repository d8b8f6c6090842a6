"""curfew_breach (宵禁, issue 13), worker level as tests/test_worker_rules.py: a real layer,
a real registry in SQLite, the worker's classes fed by hand.

Times are local (UTC+8). T0 is Wednesday 2023-11-15 06:13 local; the curfew is 22:00-06:00
(crossing midnight), so "night 0" is Wednesday 22:00 to Thursday 06:00.
"""

from datetime import datetime, timedelta, timezone

from alerts.alarms import alarm_id
from engine.config import Rules
from tests import test_worker_rules as worker
from tests.test_worker_rules import subject, types

engine, places, world = worker.engine, worker.places, worker.world   # the shared fixtures
CHINA = timezone(timedelta(hours=8))
NIGHT = {"from": "22:00", "to": "06:00"}


def local(day: int, hhmm: str) -> int:
    """Unix ms of `hhmm` local on 2023-11-15 + `day` days."""
    h, m = map(int, hhmm.split(":"))
    return int(datetime(2023, 11, 15 + day, h, m, tzinfo=CHINA).timestamp() * 1000)


def with_curfews(sid: str, *curfews) -> dict:
    return {**subject(sid), "curfews": list(curfews)}


def breaches(alarms) -> list:
    return [a for a in alarms if a.type == "curfew_breach"]


def test_two_fixes_away_in_the_window_raise_one_breach_a_night(world):
    w = world([with_curfews("s1", NIGHT)])
    assert breaches(w.fix("s1", local(0, "21:40"), "FAR")) == []
    assert breaches(w.fix("s1", local(0, "21:50"), "FAR")) == [], "before the window"
    assert breaches(w.fix("s1", local(0, "22:10"), "FAR")) == [], "one fix away is not yet"
    [alarm] = breaches(w.fix("s1", local(0, "22:20"), "FAR"))
    doc = alarm.to_document()
    assert (doc["severity"], doc["subject"], doc["t"]) == ("high", "s1", local(0, "22:20"))
    assert doc["details"]["curfew"] == {"from": "22:00", "to": "06:00",
                                        "days": [1, 2, 3, 4, 5, 6, 7]}
    assert alarm.id == alarm_id("s1", "curfew_breach", local(0, "22:00"))
    assert breaches(w.fix("s1", local(0, "23:30"), "FAR")) == [], "one alarm a night"
    assert breaches(w.fix("s1", local(1, "05:50"), "FAR")) == [], "the same night"
    assert breaches(w.fix("s1", local(1, "06:10"), "FAR")) == [], "the window is over"


def test_a_window_crossing_midnight_counts_across_it_and_a_late_fix_changes_nothing(world):
    w = world([with_curfews("s1", NIGHT)])
    w.fix("s1", local(1, "23:50"), "HOME")
    assert breaches(w.fix("s1", local(2, "00:10"), "XUECHENG")) == []
    assert breaches(w.fix("s1", local(2, "00:05"), "FAR")) == [], "late: neither counts"
    [alarm] = breaches(w.fix("s1", local(2, "00:20"), "XUECHENG"))
    assert alarm.id == alarm_id("s1", "curfew_breach", local(1, "22:00")), \
        "the night that began before midnight"


def test_a_fix_at_home_resets_the_count(world):
    w = world([with_curfews("s1", NIGHT)])
    w.fix("s1", local(0, "22:10"), "FAR")
    w.fix("s1", local(0, "22:20"), "HOME")
    assert breaches(w.fix("s1", local(0, "22:30"), "FAR")) == []
    assert len(breaches(w.fix("s1", local(0, "22:40"), "FAR"))) == 1


def test_a_curfew_on_some_days_and_more_fixes_by_config(world):
    w = world([with_curfews("s1", {**NIGHT, "days": [4]})], rules=Rules(curfew_fixes=3))
    for m in ("22:10", "22:20", "22:30"):
        assert breaches(w.fix("s1", local(0, m), "FAR")) == [], "Wednesday: no curfew"
    w.fix("s1", local(1, "22:10"), "FAR")
    assert breaches(w.fix("s1", local(1, "22:20"), "FAR")) == [], "Thursday: three fixes"
    assert len(breaches(w.fix("s1", local(1, "22:30"), "FAR"))) == 1


def test_a_curfew_added_while_running_is_judged_at_the_next_poll(world):
    w = world([subject("s1")])
    w.fix("s1", local(0, "22:10"), "FAR")
    w.fix("s1", local(0, "22:20"), "FAR")
    w.register({"subjects": [with_curfews("s1", NIGHT)]})
    w.book.refresh(force=True)
    w.fix("s1", local(0, "22:30"), "FAR")
    assert types(breaches(w.fix("s1", local(0, "22:40"), "FAR"))) == ["curfew_breach"]


# --- night_absence (昼伏夜出) --------------------------------------------------------------


def away_at_night(w, night: int, place="XUECHENG") -> list:
    """Two fixes away on night `night` (23:00 and 23:10 local): the night counts as away."""
    w.fix("s1", local(night, "23:00"), place)
    return [a for a in w.fix("s1", local(night, "23:10"), place) if a.type == "night_absence"]


def test_three_nights_away_of_the_last_seven_raise_night_absence_once_a_day(world):
    w = world([{**subject("s1"), "night_watch": True}])
    assert away_at_night(w, 0) == [] and away_at_night(w, 2) == []
    w.fix("s1", local(3, "12:00"), "FAR")             # by day: not a night
    w.fix("s1", local(3, "12:10"), "FAR")
    w.fix("s1", local(3, "23:00"), "HOME")
    assert away_at_night(w, 3, "HOME") == [], "a night at home"
    [alarm] = away_at_night(w, 4)
    doc = alarm.to_document()
    assert (doc["severity"], doc["type"]) == ("medium", "night_absence")
    assert doc["details"]["nights_away"] == 3
    assert alarm.id == alarm_id("s1", "night_absence", local(4, "22:00"))
    assert [a for a in w.fix("s1", local(5, "01:00"), "FAR")
            if a.type == "night_absence"] == [], "the same night: once"
    assert len(away_at_night(w, 5)) == 1, "the next night still 3 of 7 (4): again, once"


def test_nights_older_than_seven_drop_out_and_unwatched_subjects_raise_nothing(world):
    w = world([{**subject("s1"), "night_watch": True}, subject("s2")])
    assert away_at_night(w, 0) == [] and away_at_night(w, 1) == []
    assert away_at_night(w, 8) == [], "nights 0 and 1 are more than 7 nights back"
    for night in (0, 1, 2):
        w.fix("s2", local(night, "23:00"), "FAR")
        assert not [a for a in w.fix("s2", local(night, "23:10"), "FAR")
                    if a.type == "night_absence"], "no night_watch: not watched"


def test_after_a_restart_the_same_fixes_give_the_same_breach_id(world):
    """The curfew state is not in the snapshot: a restarted worker replaying the window's
    fixes raises the breach again with the same id, which the alarm store keeps once."""
    w = world([with_curfews("s1", NIGHT)])
    w.fix("s1", local(0, "22:10"), "FAR")
    [first] = breaches(w.fix("s1", local(0, "22:20"), "FAR"))
    w.restart()
    w.fix("s1", local(0, "22:10"), "FAR")
    [again] = breaches(w.fix("s1", local(0, "22:20"), "FAR"))
    assert again.id == first.id
