"""AreaSchedule: allowed area, home area and supervising office over time.

`area_id` is faked by a dict from frozensets of codes to ints, so the schedule's answers
can be read back as code sets and compared with the SPEC wording directly.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.registry import Delegation, Office, Permit, Registry, Subject
from alerts.schedule import AreaSchedule, ScheduleError
from tests.warm_up_check import assert_warm_up_prepares

ZHONGQU, XUECHENG, TENGZHOU, SHANTING = "370402", "370403", "370481", "370406"
HOUR_MS = 3_600_000
T0 = 1_700_000_000_000


class FakeAreas:
    """area_id as a dict of code sets; records every call to check the dedup contract."""

    def __init__(self):
        self.ids: dict[frozenset, int] = {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, codes) -> int:
        codes = tuple(codes)
        self.calls.append(codes)
        return self.ids.setdefault(frozenset(codes), len(self.ids))

    def codes(self, area: int) -> frozenset:
        return next(k for k, v in self.ids.items() if v == area)


def registry(subjects=(), permits=(), delegations=()) -> Registry:
    offices = {c: Office(c, c) for c in (ZHONGQU, XUECHENG, TENGZHOU, SHANTING)}
    return Registry(offices, {s.id: s for s in subjects}, {p.id: p for p in permits},
                    {d.id: d for d in delegations}, 1)


def subject(sid="s1", index=0, home=(ZHONGQU,), office=ZHONGQU) -> Subject:
    return Subject(sid, (f"dev-{sid}",), office, home, index=index)


def build(*args, **kwargs) -> tuple[AreaSchedule, FakeAreas]:
    areas = FakeAreas()
    return AreaSchedule.build(registry(*args, **kwargs), areas), areas


def area_codes(schedule, areas, t_ms, index=0, home=False) -> frozenset:
    at = schedule.home_areas_at if home else schedule.areas_at
    return areas.codes(int(at(np.array([index], np.int32), np.array([t_ms], np.int64))[0]))


# --- Cases a supervisor recognises -----------------------------------------------------


def test_no_permits_is_home():
    schedule, areas = build([subject()])
    assert schedule.n_subjects == 1
    assert len(schedule.starts) == 0
    assert area_codes(schedule, areas, T0) == {ZHONGQU}
    assert schedule.routing_at("s1", T0)[:2] == (ZHONGQU, ())


def test_permit_to_xuecheng_counts_only_while_active():
    permit = Permit("p1", "s1", T0, T0 + 2 * HOUR_MS, (XUECHENG,), ZHONGQU)
    schedule, areas = build([subject()], [permit])
    expected = {T0 - 1: {ZHONGQU}, T0: {ZHONGQU, XUECHENG},
                T0 + 2 * HOUR_MS - 1: {ZHONGQU, XUECHENG}, T0 + 2 * HOUR_MS: {ZHONGQU}}
    for t, codes in expected.items():
        assert area_codes(schedule, areas, t) == codes, t
        assert area_codes(schedule, areas, t, home=True) == {ZHONGQU}, t


def test_overlapping_permits_give_the_union():
    permits = [Permit("p1", "s1", T0, T0 + 3 * HOUR_MS, (XUECHENG,), ZHONGQU),
               Permit("p2", "s1", T0 + HOUR_MS, T0 + 4 * HOUR_MS, (SHANTING,), ZHONGQU)]
    schedule, areas = build([subject()], permits)
    assert area_codes(schedule, areas, T0) == {ZHONGQU, XUECHENG}
    assert area_codes(schedule, areas, T0 + HOUR_MS) == {ZHONGQU, XUECHENG, SHANTING}
    assert area_codes(schedule, areas, T0 + 3 * HOUR_MS) == {ZHONGQU, SHANTING}
    assert area_codes(schedule, areas, T0 + 4 * HOUR_MS) == {ZHONGQU}


def test_delegation_to_tengzhou_replaces_home_and_routes_alarms():
    delegation = Delegation("d1", "s1", T0, T0 + 24 * HOUR_MS, TENGZHOU, (TENGZHOU,))
    schedule, areas = build([subject()], delegations=[delegation])
    assert area_codes(schedule, areas, T0 - 1) == {ZHONGQU}
    assert area_codes(schedule, areas, T0) == {TENGZHOU}
    assert area_codes(schedule, areas, T0, home=True) == {TENGZHOU}
    assert area_codes(schedule, areas, T0 + 24 * HOUR_MS) == {ZHONGQU}
    assert schedule.routing_at("s1", T0 - 1)[:2] == (ZHONGQU, ())
    assert schedule.routing_at("s1", T0)[:2] == (TENGZHOU, (ZHONGQU,))
    assert schedule.routing_at("s1", T0 + 24 * HOUR_MS)[:2] == (ZHONGQU, ())


def test_open_ended_delegation_never_ends():
    delegation = Delegation("d1", "s1", T0, None, TENGZHOU, (TENGZHOU,))
    schedule, areas = build([subject()], delegations=[delegation])
    far = T0 + 100 * 365 * 24 * HOUR_MS
    assert area_codes(schedule, areas, far) == {TENGZHOU}
    assert schedule.routing_at("s1", far)[:2] == (TENGZHOU, (ZHONGQU,))


def test_later_delegation_wins_while_both_are_active():
    delegations = [Delegation("d1", "s1", T0, None, TENGZHOU, (TENGZHOU,)),
                   Delegation("d2", "s1", T0 + HOUR_MS, T0 + 2 * HOUR_MS, XUECHENG, (XUECHENG,))]
    schedule, areas = build([subject()], delegations=delegations)
    assert area_codes(schedule, areas, T0 + HOUR_MS) == {XUECHENG}
    assert schedule.routing_at("s1", T0 + HOUR_MS)[:2] == (XUECHENG, (ZHONGQU,))
    assert area_codes(schedule, areas, T0 + 2 * HOUR_MS) == {TENGZHOU}


def test_delegations_starting_together_resolve_alike_for_alarms_and_the_desk():
    """Two delegations of one person starting at the same instant: the larger id wins,
    and the desk shows the person under the office their alarms go to."""
    from desk.scope import Scope

    delegations = [Delegation("d-b", "s1", T0, None, XUECHENG, (XUECHENG,)),
                   Delegation("d-a", "s1", T0, None, TENGZHOU, (TENGZHOU,))]
    for order in (delegations, delegations[::-1]):
        reg = registry([subject()], delegations=order)
        schedule = AreaSchedule.build(reg, lambda codes: len(codes))
        assert schedule.routing_at("s1", T0).office == XUECHENG
        assert Scope(reg).delegation("s1", T0).id == "d-b"
        assert Scope(reg).subject_document(reg.subjects["s1"], T0)["office"] == XUECHENG


def test_permit_during_delegation_adds_to_the_delegation_home():
    delegation = Delegation("d1", "s1", T0, None, TENGZHOU, (TENGZHOU,))
    permit = Permit("p1", "s1", T0 + HOUR_MS, T0 + 2 * HOUR_MS, (XUECHENG,), TENGZHOU)
    schedule, areas = build([subject()], [permit], [delegation])
    assert area_codes(schedule, areas, T0 + HOUR_MS) == {TENGZHOU, XUECHENG}
    assert area_codes(schedule, areas, T0 + HOUR_MS, home=True) == {TENGZHOU}


def test_permits_ending_window_is_after_exclusive_upto_inclusive():
    permits = [Permit(f"p{i}", "s1", T0, T0 + end, (XUECHENG,), ZHONGQU)
               for i, end in enumerate([HOUR_MS, 2 * HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS])]
    schedule, _ = build([subject()], permits)
    ids = [p.id for p in schedule.permits_ending(T0 + HOUR_MS, T0 + 2 * HOUR_MS)]
    assert ids == ["p1", "p2"]
    assert [p.id for p in schedule.permits_ending(T0, T0 + HOUR_MS)] == ["p0"]
    assert schedule.permits_ending(T0 + 3 * HOUR_MS, T0 + 9 * HOUR_MS) == []


def test_equal_code_sets_share_one_id_and_area_id_gets_sorted_unique_codes():
    subjects = [subject("s1", 0, (XUECHENG, ZHONGQU)), subject("s2", 1, (ZHONGQU, XUECHENG,
                                                                         ZHONGQU))]
    permits = [Permit("p1", "s1", T0, T0 + HOUR_MS, (ZHONGQU,), ZHONGQU)]
    schedule, areas = build(subjects, permits)
    assert list(schedule.base) == [0, 0]
    assert len(schedule.starts) == 0  # the permit adds nothing: no piece is kept
    assert areas.calls == [(ZHONGQU, XUECHENG)]


def test_gaps_in_subject_indices_and_bad_input():
    schedule, areas = build([subject("s1", 0), subject("s3", 2, (TENGZHOU,))])
    assert schedule.n_subjects == 3
    got = schedule.areas_at(np.array([2, 1, 0], np.int32), np.full(3, T0, np.int64))
    assert areas.codes(int(got[0])) == {TENGZHOU} and got[1] == -1
    with pytest.raises(ScheduleError, match="subject index 3"):
        schedule.areas_at(np.array([0, 3]), np.array([T0, T0]))
    with pytest.raises(ScheduleError, match="subject index -1"):
        schedule.areas_at(np.array([-1]), np.array([T0]))
    with pytest.raises(ScheduleError, match="length"):
        schedule.areas_at(np.array([0]), np.array([T0, T0]))
    with pytest.raises(ScheduleError, match="integers"):
        schedule.areas_at(np.array([0]), np.array([1.5]))
    with pytest.raises(ScheduleError, match="unknown subject"):
        schedule.routing_at("nobody", T0)[:2]
    assert schedule.areas_at(np.zeros(0, np.int32), np.zeros(0, np.int64)).dtype == np.int32


def test_empty_registry():
    schedule, _ = build()
    assert schedule.n_subjects == 0
    assert len(schedule.areas_at(np.zeros(0, np.int32), np.zeros(0, np.int64))) == 0
    with pytest.raises(ScheduleError):
        schedule.areas_at(np.array([0]), np.array([T0]))


def test_warm_up_loads_the_kernel_a_worker_needs():
    assert_warm_up_prepares(
        "from alerts import schedule\nschedule.warm_up()", "schedule._pieces_values",
        "import numpy as np\n"
        "from tests.test_schedule import T0, build, subject\n"
        "book, _ = build([subject()])\n"
        "book.areas_at(np.array([0, 0], np.int32), np.array([T0, T0 + 1]))")


# --- Against a plain reference ----------------------------------------------------------

CODES = (ZHONGQU, XUECHENG, TENGZHOU, SHANTING, "370404", "370405")
# A small range, and a few favourite instants, so starts, ends and queries collide often.
times = st.integers(0, 40) | st.sampled_from((0, 10, 20))


def reference(reg: Registry, sid: str, t: int) -> tuple[frozenset, frozenset, tuple]:
    """(allowed codes, home codes, routing) straight from the SPEC wording."""
    s = reg.subjects[sid]
    active = [d for d in reg.delegations.values() if d.subject == sid and d.start_ms <= t
              and (d.end_ms is None or t < d.end_ms)]
    winner = max(active, key=lambda d: (d.start_ms, d.id), default=None)
    home = frozenset(winner.home if winner else s.home)
    allowed = set(home)
    for p in reg.permits.values():
        if p.subject == sid and p.start_ms <= t < p.end_ms:
            allowed |= set(p.destinations)
    routing = (winner.office, (s.office,)) if winner else (s.office, ())
    return frozenset(allowed), home, routing


@st.composite
def registries(draw) -> Registry:
    indices = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4, unique=True))
    subjects = [subject(f"s{i}", i, tuple(draw(st.lists(st.sampled_from(CODES), min_size=1,
                                                        max_size=2))),
                        draw(st.sampled_from(CODES[:4])))
                for i in indices]
    sids = [s.id for s in subjects]
    permits, delegations = [], []
    for n in range(draw(st.integers(0, 6))):
        start = draw(times)
        permits.append(Permit(f"p{n}", draw(st.sampled_from(sids)), start,
                              start + draw(st.integers(1, 15)),
                              tuple(draw(st.lists(st.sampled_from(CODES), min_size=1,
                                                  max_size=2))), ZHONGQU))
    for n in range(draw(st.integers(0, 4))):
        start = draw(times)
        length = draw(st.none() | st.integers(1, 15))
        delegations.append(Delegation(f"d{draw(st.integers(0, 9))}{n}",
                                      draw(st.sampled_from(sids)), start,
                                      None if length is None else start + length,
                                      draw(st.sampled_from(CODES[:4])),
                                      tuple(draw(st.lists(st.sampled_from(CODES), min_size=1,
                                                          max_size=2)))))
    return registry(subjects, permits, delegations)


@given(reg=registries(), data=st.data())
def test_matches_reference(reg, data):
    areas = FakeAreas()
    schedule = AreaSchedule.build(reg, areas)
    by_index = {s.index: s.id for s in reg.subjects.values()}
    queries = data.draw(st.lists(st.tuples(st.sampled_from(sorted(by_index)),
                                           st.integers(-1, 60)), max_size=30))
    edges = {e for x in [*reg.permits.values(), *reg.delegations.values()]
             for e in (x.start_ms, x.end_ms) if e is not None}
    queries += [(i, e + k) for i in sorted(by_index) for e in sorted(edges) for k in (-1, 0)]
    subj = np.array([q[0] for q in queries], np.int32)
    t = np.array([q[1] for q in queries], np.int64)
    allowed, home = schedule.areas_at(subj, t), schedule.home_areas_at(subj, t)
    for i, (index, when) in enumerate(queries):
        want_allowed, want_home, routing = reference(reg, by_index[index], when)
        assert areas.codes(int(allowed[i])) == want_allowed, (index, when)
        assert areas.codes(int(home[i])) == want_home, (index, when)
        assert schedule.routing_at(by_index[index], when)[:2] == routing, (index, when)
    assert len(areas.calls) == len(areas.ids)  # each distinct code set asked for once
    after, upto = sorted(data.draw(st.lists(st.integers(-1, 60), min_size=2, max_size=2)))
    want = sorted((p for p in reg.permits.values() if after < p.end_ms <= upto),
                  key=lambda p: (p.end_ms, p.id))
    assert schedule.permits_ending(after, upto) == want
