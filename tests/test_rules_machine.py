"""Alarm rules (SPEC §6): the compiled `RuleState` against the plain reference, step by step.

A hypothesis state machine feeds both models batches of fixes for a few subjects (random
verdicts; times that are often late or equal; a rule class per subject: supervision
level and risk key, with small per-level thresholds too), marks signals lost,
adds subjects, feeds handset status reports (SPEC §14) against a plain reference of
them, marks phones off, and round-trips the compiled state through a snapshot; after
every step the events, the late fixes and reports, each subject's observable state and
its handset state must be identical. Small
thresholds make every rule fire often; tiny event capacities force the resume path.
Plus direct checks of the kernel's stop-and-resume, snapshots and input errors.
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from alerts import _rules_kernel as rk
from alerts.rules import (BYTES_PER_SUBJECT, EVENT_TYPES, RuleState, RulesError, SnapshotError,
                          event_columns, sort_batch)
from engine.config import Rules
from geofence.verdict import IN, OUT, UNSURE
from tests.rules_reference import ReferenceHandsets, ReferenceRules, SubjectView, compiled_view
from tests.warm_up_check import assert_warm_up_prepares

VERDICTS = st.sampled_from([IN, UNSURE, OUT])
CLASSES = st.integers(0, rk.N_CLASSES - 1)      # level * 2 + key
LEVEL_TABLE = st.dictionaries(st.sampled_from(rk.LIMIT_NAMES), st.integers(1, 4), max_size=4)
SMALL_RULES = st.builds(
    Rules, exit_fixes=st.integers(1, 3), exit_fixes_key=st.integers(1, 2),
    return_fixes=st.integers(1, 3), possible_exit_fixes=st.integers(1, 4),
    exclusion_fixes=st.integers(1, 2), possible_exclusion_fixes=st.integers(1, 3),
    strict=LEVEL_TABLE, loose=LEVEL_TABLE)


def rows(events):
    return [(EVENT_TYPES[k], int(s), int(f), int(t), int(lt), int(z)) for k, s, f, t, lt, z
            in zip(events.type, events.subject, events.fix, events.t_ms, events.linked_t_ms,
                   events.zone)]


class RulesMachine(RuleBasedStateMachine):
    @initialize(rules=st.one_of(st.just(Rules()), SMALL_RULES),
                classes=st.lists(CLASSES, min_size=3, max_size=3))
    def start(self, rules, classes):
        self.rules = rules
        self.classes = np.array(classes, np.int8)
        self.compiled = RuleState(len(classes), rules)
        self.reference = ReferenceRules(len(classes), rules)
        self.handsets = ReferenceHandsets(self.reference)
        self.phone_off: set[int] = set()
        self.clock_ms = 1_700_000_000_000

    @rule(data=st.data())
    def batch(self, data):
        n_subjects = len(self.classes)
        fixes = data.draw(st.lists(st.tuples(
            st.integers(0, n_subjects - 1), st.integers(-3, 4), VERDICTS, VERDICTS,
            st.integers(0, 2)), max_size=12))
        subject = np.array([f[0] for f in fixes], np.int32)
        t_ms = self.clock_ms + np.array([f[1] for f in fixes], np.int64) * 1000
        verdict = np.array([f[2] for f in fixes], np.int8)
        excl_verdict = np.array([f[3] for f in fixes], np.int8)
        excl_zone = np.where(excl_verdict == OUT, -1, [f[4] for f in fixes]).astype(np.int32)
        capacity = data.draw(st.one_of(st.none(), st.integers(0, 4)))
        got = self.compiled.apply(subject, t_ms, verdict, excl_verdict, excl_zone, self.classes,
                                  capacity=capacity)
        want, want_late = self.reference.apply(subject, t_ms, verdict, excl_verdict,
                                               excl_zone, self.classes)
        assert rows(got) == want
        assert got.late.tolist() == want_late
        restored = got.subject[got.type == rk.SIGNAL_RESTORED].tolist()
        assert got.after[got.type == rk.SIGNAL_RESTORED].tolist() == [
            rk.PHONE_OFF if s in self.phone_off else rk.SIGNAL_LOST for s in restored]
        assert (got.after[got.type != rk.SIGNAL_RESTORED] == -1).all()
        self.phone_off -= set(restored)
        self.handsets.positions_taken()
        self.clock_ms += data.draw(st.integers(0, 5)) * 1000

    @rule(data=st.data())
    def reports(self, data):
        reports = data.draw(st.lists(st.tuples(
            st.integers(0, len(self.classes) - 1), st.integers(-3, 4), st.integers(0, 2)),
            max_size=8))
        subject = np.array([r[0] for r in reports], np.int32)
        t_ms = self.clock_ms + np.array([r[1] for r in reports], np.int64) * 1000
        state = np.array([r[2] for r in reports], np.int8)
        late = self.compiled.apply_reports(subject, t_ms, state, carrier=1)
        assert late.tolist() == self.handsets.apply(subject, t_ms, state)
        self.clock_ms += data.draw(st.integers(0, 5)) * 1000

    @rule(data=st.data())
    def phone_off(self, data):
        subjects = data.draw(st.lists(st.integers(0, len(self.classes) - 1), max_size=2))
        self.compiled.mark_phone_off(subjects)
        self.reference.mark_signal_lost(subjects)
        self.phone_off |= set(subjects)

    @rule(data=st.data())
    def lose_signal(self, data):
        subjects = data.draw(st.lists(st.integers(0, len(self.classes) - 1), max_size=3))
        self.compiled.mark_signal_lost(subjects)
        self.reference.mark_signal_lost(subjects)

    @rule(rule_class=CLASSES)
    def add_subject(self, rule_class):
        n = len(self.classes) + 1
        self.classes = np.append(self.classes, np.int8(rule_class))
        self.compiled.grow(n)
        self.reference.grow(n)

    @rule()
    def restart(self):
        data = self.compiled.snapshot()
        self.compiled = RuleState(0, self.rules)
        self.compiled.restore(data)
        assert self.compiled.snapshot() == data

    @invariant()
    def same_state(self):
        if hasattr(self, "compiled"):
            assert self.compiled.n_subjects == len(self.classes)
            for s in range(len(self.classes)):
                assert compiled_view(self.compiled, s) == self.reference.view(s)
                h = self.handsets.view(s)
                assert compiled_handset(self.compiled, s) == (
                    h.state, h.since_ms, h.report_t_ms if h.state is not None else None)


def compiled_handset(state: RuleState, s: int) -> tuple:
    """(state, since, newest report) of subject s while a state holds, else Nones."""
    code = int(state.handset[s])
    if code < 0:
        return None, None, None
    return code, int(state.handset_since_ms[s]), int(state.heard_t_ms[s])


# At least 200 runs even in the quick local profile: some rule slips show only with the
# small thresholds and need a few hundred runs to turn up (about 6 s).
RulesMachine.TestCase.settings = settings(
    settings(), max_examples=max(settings().max_examples, 200), deadline=None,
    stateful_step_count=30)
TestRulesMachine = RulesMachine.TestCase


def test_kernel_stops_and_resumes_without_losing_or_repeating_events():
    """Outputs too small: the kernel stops at a fix boundary and continues where it stopped."""
    rng = np.random.default_rng(5)
    n, subjects = 400, 20
    s = rng.integers(0, subjects, n).astype(np.int32)
    t = rng.integers(0, 50, n).astype(np.int64) * 1000
    v = rng.choice(np.array([IN, UNSURE, OUT], np.int8), n)
    xv = rng.choice(np.array([IN, UNSURE, OUT], np.int8), n)
    xz = np.where(xv == OUT, -1, 1).astype(np.int32)
    whole = RuleState(subjects, Rules())
    whole.mark_signal_lost(np.arange(subjects))
    want = whole.apply(s, t, v, xv, xz)
    pieces = RuleState(subjects, Rules())
    pieces.mark_signal_lost(np.arange(subjects))
    got = pieces.apply(s, t, v, xv, xz, capacity=0)
    assert rows(got) == rows(want) and got.late.tolist() == want.late.tolist()
    assert pieces.snapshot() == whole.snapshot()

    # The raw kernel with outputs of 5: never writes past them, returns -1, then resumes.
    state = RuleState(subjects, Rules())
    order = sort_batch(s, t)
    out = event_columns(5)
    late = np.zeros(n, np.uint8)
    progress = np.zeros(rk.N_PROGRESS, np.int64)
    batch = rk.SortedBatch(s[order], t[order], order, v[order], xv[order], xz[order])
    collected = []
    while True:
        r = rk.apply_batch(state.kernel_state(), batch, np.zeros(subjects, np.int8),
                           state.limits, out, late, progress)
        written = progress[rk.PROGRESS_EVENTS]
        assert written <= 5
        collected += list(zip(*(a[:written].tolist() for a in out)))
        if r >= 0:
            break
        progress[rk.PROGRESS_EVENTS] = 0
    assert progress[rk.PROGRESS_FIX] == n and progress[rk.PROGRESS_LATE] == len(want.late)
    assert len(collected) == len(want) - subjects  # no signal_restored in this run


def test_snapshot_rejects_damage_and_foreign_bytes():
    state = RuleState(4, Rules())
    state.apply([0, 1], [1, 2], [OUT, IN], [IN, OUT], [3, -1])
    data = state.snapshot()
    assert len(data) == 4 * BYTES_PER_SUBJECT + 24
    fresh = RuleState(0, Rules())
    for bad, message in [(data[:-1], "truncated"), (b"x" * 40, "magic"), (b"", "too short"),
                         (data[:30] + bytes([data[30] ^ 1]) + data[31:], "checksum"),
                         (data[:8] + b"\x09" + data[9:], "version")]:
        with pytest.raises(SnapshotError, match=message):
            fresh.restore(bad)
    assert fresh.n_subjects == 0
    fresh.restore(data)
    assert [compiled_view(fresh, i) for i in range(4)] == [
        compiled_view(state, i) for i in range(4)]
    assert [compiled_view(fresh, i).exclusion_open for i in range(4)] == [
        True, False, False, False]


def test_bad_batches_and_settings_are_refused():
    state = RuleState(2, Rules())
    ok = ([0], [1], [IN], [OUT], [-1])
    for i, bad, message in [(0, [2], "subject indices"), (1, [1.5], "integers"),
                            (2, [3], "verdict"), (3, [-1], "excl_verdict"),
                            (4, [-2], "excl_zone"), (1, [1, 2], "same length")]:
        args = list(ok)
        args[i] = bad
        with pytest.raises(RulesError, match=message):
            state.apply(*args)
    with pytest.raises(RulesError, match="one entry per subject"):
        state.apply(*ok, rule_class=[True])
    for bad in ([6, 0], [-1, 0], [0.5, 1.0]):   # subject 0 is the one in the batch
        with pytest.raises(RulesError, match=r"classes 0\.\.5"):
            state.apply(*ok, rule_class=bad)
    with pytest.raises(RulesError, match="exit_fixes must be an integer in 1..255"):
        RuleState(1, Rules(exit_fixes=0))
    assert compiled_view(state, 0).newest_t_ms is None  # nothing applied


def test_sort_batch_keeps_batch_order_for_ties_and_handles_wide_spans():
    s = np.array([1, 0, 1, 0, 1], np.int32)
    t = np.array([5, 9, 5, 2, 1], np.int64)
    assert sort_batch(s, t).tolist() == [3, 1, 4, 0, 2]
    wide = t.copy()
    wide[0] = 2**40
    assert sort_batch(s, wide).tolist() == np.lexsort((wide, s)).tolist()
    assert len(sort_batch(np.zeros(0, np.int32), np.zeros(0, np.int64))) == 0


def test_state_fits_the_budget():
    assert BYTES_PER_SUBJECT <= 64
    assert [rk.ZONE_EXIT, rk.SIGNAL_RESTORED, rk.FEED_OUTAGE] == [
        EVENT_TYPES.index(n) for n in ("zone_exit", "signal_restored", "feed_outage")]


def test_warm_up_loads_the_kernel_a_worker_needs():
    assert_warm_up_prepares(
        "from alerts import rules\nrules.warm_up()", "rules.rk.apply_fixes",
        "import numpy as np\n"
        "from engine.config import Rules\n"
        "state = rules.RuleState(3, Rules())\n"
        "state.apply(np.array([0, 2], np.int32), np.array([5, 6]), np.array([0, 2], np.int8),\n"
        "            np.array([2, 1], np.int8), np.array([-1, 0], np.int32), np.zeros(3, np.int8))")


V2_SNAPSHOT = Path(__file__).parent / "data" / "rules-snapshot-v2.bin"


def test_a_version_2_snapshot_restores_with_no_handset_state():
    """tests/data/rules-snapshot-v2.bin, written by the build before handset state
    (tests/data/make_rules_snapshot_v2.py): subject 0 two fixes out (exit open), subject
    1 one fix in and marked lost, subject 2 no fix."""
    old = V2_SNAPSHOT.read_bytes()
    assert old[8:10] == (2).to_bytes(2, "little")
    state = RuleState(0, Rules())
    state.restore(old)
    t0 = 1_700_000_000_000
    assert [compiled_view(state, s) for s in range(3)] == [
        SubjectView(t0 + 60_000, OUT, False, True, t0 + 60_000, False),
        SubjectView(t0, IN, True, False, None, False),
        SubjectView(None, None, False, False, None, False)]
    assert state.handset.tolist() == [-1, -1, -1]
    assert (state.handset_since_ms == rk.NO_TIME).all()
    assert state.heard_t_ms.tolist() == state.newest_t_ms.tolist()
    # it goes on as a version-3 state: reports, and a snapshot of the new version
    state.apply_reports([2], [t0 + 5_000], [0])
    again = RuleState(0, Rules())
    again.restore(state.snapshot())
    assert again.snapshot() == state.snapshot()
    assert again.handset.tolist() == [-1, -1, 0]
    assert again.snapshot()[8:10] == (3).to_bytes(2, "little")
    assert len(again.snapshot()) == 3 * BYTES_PER_SUBJECT + 24


def test_handset_state_round_trips_through_a_snapshot():
    state = RuleState(3, Rules())
    state.apply([0], [1_000], [IN], [OUT], [-1])
    assert state.apply_reports([0, 1, 1, 2], [2_000, 5_000, 7_000, 9_000], [0, 1, 1, 2],
                               carrier=4).tolist() == []
    state.mark_phone_off([1])
    data = state.snapshot()
    fresh = RuleState(0, Rules())
    fresh.restore(data)
    assert fresh.handset.tolist() == [0, 1, 2]
    assert fresh.handset_since_ms.tolist() == [2_000, 5_000, 9_000]
    assert fresh.heard_t_ms.tolist() == [2_000, 7_000, 9_000]
    assert fresh.carrier.tolist() == [4, 4, 4]
    assert fresh.flags[1] & rk.PHONE_OFF_SET and fresh.flags[1] & rk.SIGNAL_LOST_SET
    events = fresh.apply([1], [8_000], [IN], [OUT], [-1])
    assert EVENT_TYPES[events.type[0]] == "signal_restored"
    assert events.after.tolist() == [rk.PHONE_OFF]
    assert fresh.handset[1] == -1 and not fresh.flags[1] & rk.PHONE_OFF_SET


def test_bad_reports_are_refused():
    state = RuleState(2, Rules())
    with pytest.raises(RulesError, match="handset states 0..2"):
        state.apply_reports([0], [1], [3])
    with pytest.raises(RulesError, match="same length"):
        state.apply_reports([0, 1], [1], [0])
    with pytest.raises(RulesError, match="subject indices"):
        state.apply_reports([2], [1], [0])
    assert state.handset.tolist() == [-1, -1]
