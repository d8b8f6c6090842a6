"""The rules of law for leave (supervision.leave_rules): who approves, the caps, the days."""

from datetime import datetime

import pytest

from supervision.leave_rules import (DAY_MS, LOCAL_TIME, Limits, Span, approver_office,
                                     cap_refusals, days_by_year, days_used, four_eyes_refusal,
                                     leave_days, may_approve)

HOUR_MS = 3_600_000
PARENTS = {"370402001": "370402", "370402": "3704", "3704": None}
LIMITS = Limits()


def at(text: str) -> int:
    """Milliseconds of a local (UTC+8) time "YYYY-MM-DD HH:MM"."""
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=LOCAL_TIME)
               .timestamp()) * 1000


@pytest.mark.parametrize("hours, days", [(1, 1), (24, 1), (25, 2), (24 * 7, 7),
                                         (24 * 7 + 1, 8), (24 * 30, 30)])
def test_days_are_the_duration_counted_up(hours, days):
    start = at("2026-03-01 09:00")
    assert leave_days(start, start + hours * HOUR_MS) == days
    assert leave_days(start, start + hours * HOUR_MS + 1) == days + (hours % 24 == 0)


def test_a_leave_across_new_year_counts_each_day_in_the_year_it_begins():
    start = at("2026-12-30 12:00")                       # days begin 12-30, 12-31, 01-01 12:00
    assert days_by_year(start, start + 3 * DAY_MS) == {2026: 2, 2027: 1}
    assert days_by_year(at("2026-12-31 23:00"), at("2027-01-01 01:00")) == {2026: 1}
    assert days_by_year(at("2027-01-01 00:00"), at("2027-01-02 00:00")) == {2027: 1}
    # in UTC+8: 2026-12-31 20:00 UTC is already 2027 locally
    assert days_by_year(at("2027-01-01 04:00"), at("2027-01-01 05:00")) == {2027: 1}


def test_up_to_seven_days_the_township_approves_longer_and_standing_the_county():
    assert approver_office("370402001", PARENTS.get, 7, False, LIMITS) == "370402001"
    assert approver_office("370402001", PARENTS.get, 8, False, LIMITS) == "370402"
    assert approver_office("370402001", PARENTS.get, 1, True, LIMITS) == "370402"
    assert approver_office("370402001", PARENTS.get, 3, False,
                           Limits(township_max_days=2)) == "370402"
    assert approver_office("3704", PARENTS.get, 20, False, LIMITS) == "3704"   # the top


def test_the_approver_office_or_any_office_above_it_may_approve():
    county_subtree = {"370402", "370402001", "370402002"}
    assert may_approve(county_subtree, "370402")
    assert may_approve(county_subtree, "370402001")
    assert not may_approve({"370402001"}, "370402")          # a township: not its county's


def test_four_eyes_refuses_the_requester_unless_switched_off():
    assert four_eyes_refusal("town1", "town1", LIMITS)
    assert four_eyes_refusal("town1", "town1b", LIMITS) is None
    assert four_eyes_refusal("town1", "town1", Limits(four_eyes=False)) is None


def test_a_leave_longer_than_max_days_is_refused_with_the_numbers():
    start = at("2026-03-01 08:00")
    refusals = cap_refusals(Span("n", start, start + 31 * DAY_MS), [], LIMITS)
    assert len(refusals) == 1 and "30" in refusals[0] and "31" in refusals[0]
    assert cap_refusals(Span("n", start, start + 30 * DAY_MS), [], LIMITS) == []


def test_the_yearly_cap_counts_approved_days_of_that_year_only():
    approved = [Span("a", at("2026-02-01 08:00"), at("2026-03-01 08:00")),    # 28 days
                Span("b", at("2026-05-01 08:00"), at("2026-05-31 08:00")),    # 30 days
                Span("c", at("2025-06-01 08:00"), at("2025-06-21 08:00"))]    # 2025: 20 days
    assert days_used(2026, approved) == 58 and days_used(2025, approved) == 20
    two = Span("n", at("2026-08-01 08:00"), at("2026-08-03 08:00"))
    three = Span("n", at("2026-08-01 08:00"), at("2026-08-03 09:00"))
    assert cap_refusals(two, approved, LIMITS) == []
    refusals = cap_refusals(three, approved, LIMITS)
    assert len(refusals) == 1 and "58" in refusals[0] and "60" in refusals[0]
    assert cap_refusals(Span("n", at("2027-01-05 08:00"), at("2027-01-20 08:00")),
                        approved, LIMITS) == []              # a new year starts afresh


def test_an_overlap_with_an_approved_leave_is_refused_and_touching_ends_are_not():
    approved = [Span("7", at("2026-04-10 08:00"), at("2026-04-12 08:00"))]
    overlapping = Span("n", at("2026-04-11 20:00"), at("2026-04-13 08:00"))
    refusals = cap_refusals(overlapping, approved, LIMITS)
    assert len(refusals) == 1 and "7" in refusals[0] and "2026-04-10 08:00" in refusals[0]
    after = Span("n", at("2026-04-12 08:00"), at("2026-04-13 08:00"))
    assert cap_refusals(after, approved, LIMITS) == []
    assert cap_refusals(Span("7", *at_pair("2026-04-10 08:00", "2026-04-12 08:00")),
                        approved, LIMITS) == []              # itself is no overlap


def at_pair(a: str, b: str) -> tuple[int, int]:
    return at(a), at(b)


def test_standing_permits_have_their_own_cap_and_neither_count_nor_clash_with_leaves():
    standing = Span("s", at("2026-03-01 00:00"), at("2026-08-01 00:00"), standing=True)
    assert cap_refusals(standing, [], LIMITS) == []          # 153 days, within 183
    too_long = Span("s", at("2026-03-01 00:00"), at("2026-10-01 00:00"), standing=True)
    assert "183" in cap_refusals(too_long, [], LIMITS)[0]
    trip = Span("t", at("2026-04-01 08:00"), at("2026-04-05 08:00"))
    assert cap_refusals(trip, [standing], LIMITS) == []
    assert days_used(2026, [standing, trip]) == 4
    second = Span("s2", at("2026-07-01 00:00"), at("2026-09-01 00:00"), standing=True)
    assert len(cap_refusals(second, [standing, trip], LIMITS)) == 1   # two standing overlap


def test_every_reason_is_given_at_once():
    approved = [Span("a", at("2026-01-05 08:00"), at("2026-02-04 08:00")),       # 30 days
                Span("b", at("2026-03-01 08:00"), at("2026-03-21 08:00"))]       # 20 days
    both = Span("n", at("2026-03-20 08:00"), at("2026-04-25 08:00"))             # 36 days
    refusals = cap_refusals(both, approved, LIMITS)
    assert len(refusals) == 3                                # too long, the year, overlap


def test_the_leave_section_of_the_config_is_checked_and_read_into_limits():
    from engine.config import ConfigError, from_mapping

    settings = from_mapping({"leave": {"township_max_days": 5, "four_eyes": False}})
    assert Limits.of(settings.leave) == Limits(township_max_days=5, four_eyes=False)
    assert Limits.of(from_mapping({}).leave) == Limits()       # the defaults agree
    with pytest.raises(ConfigError) as bad:
        from_mapping({"leave": {"max_days": 0, "max_days_per_year": 400, "four_eyes": "yes",
                                "max_day": 3}})
    text = str(bad.value)
    assert "[leave] max_days" in text and "max_days_per_year" in text
    assert "four_eyes" in text and 'did you mean "max_days"' in text
