"""AcceptedFixes: every accepted (device, t) within the window is refused `duplicate`.

The compiled set is checked against a Python set of the fixes accepted so far, through
batches stored or not, the clock moving on (expiry passes, growth) and restarts that
refill it from a real store file.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.dedup import (CLOCK_SLACK_MS, MAX_DEVICES, MAX_WINDOW_MS, REBUILT_LOAD,
                          AcceptedFixes, exact_window_ms, remember_stored)
from ingest.fixes import FixColumns
from ingest.protocol import DUPLICATE, LON, OK
from ingest.store import BatchRecord, Store

NOW = 1_780_000_000_000          # 2026-05-28
MINUTE = 60_000
WEEK = 7 * 24 * 3600 * 1000


def mark(fixes, devices, times, reasons=None, now=NOW):
    reason = np.array(reasons if reasons is not None else [OK] * len(devices), np.int8)
    fixes.mark(np.array(devices, np.int32), np.array(times, np.int64), reason, now)
    return reason.tolist()


def columns(devices, times) -> FixColumns:
    n = len(times)
    return FixColumns(np.asarray(devices, np.int32), np.zeros(n, np.int32),
                      np.asarray(times, np.int64), np.full(n, 117.3), np.full(n, 34.8),
                      np.full(n, 30.0, np.float32), np.zeros(n, np.int8))


def test_duplicates_within_a_batch_keep_the_first_copy():
    fixes = AcceptedFixes(WEEK)
    t = NOW - 10
    assert mark(fixes, [0, 0, 1, 0, 0], [t, t, t, t + 1, t]) == \
        [OK, DUPLICATE, OK, OK, DUPLICATE]


def test_an_earlier_refused_copy_does_not_count():
    fixes = AcceptedFixes(WEEK)
    assert mark(fixes, [0, 0, 0], [NOW] * 3, [LON, OK, OK]) == [LON, OK, DUPLICATE]


def test_unknown_devices_are_skipped():
    fixes = AcceptedFixes(WEEK)
    assert mark(fixes, [-1, -1], [NOW, NOW]) == [OK, OK]
    assert len(fixes) == 0


def test_a_resend_behind_any_number_of_later_fixes_is_refused():
    fixes = AcceptedFixes(WEEK)
    times = NOW - WEEK + MINUTE * np.arange(10_000)         # a week of a fix a minute
    assert mark(fixes, [7] * len(times), times) == [OK] * len(times)
    assert mark(fixes, [7, 7, 8], [times[0], times[5000], times[0]]) == [DUPLICATE, DUPLICATE, OK]


def test_forget_takes_out_exactly_the_fixes_given():
    fixes = AcceptedFixes(WEEK, slots=16)
    times = NOW - np.arange(12)
    mark(fixes, [1] * 12, times)
    fixes.forget(np.array([1, 1, 2]), np.array([times[3], times[9], times[0]]))
    assert len(fixes) == 10
    expected = [DUPLICATE] * 12
    expected[3] = expected[9] = OK
    assert mark(fixes, [1] * 12, times) == expected


def test_grows_and_finds_every_key():
    fixes = AcceptedFixes(WEEK, slots=16)
    rng = np.random.default_rng(3)
    devices = rng.integers(0, 5000, 200_000)
    times = NOW - rng.integers(0, WEEK, 200_000)
    first = mark(fixes, devices, times)
    assert fixes.nbytes >= 8 * len(fixes) / 0.7
    assert mark(fixes, devices, times) == [DUPLICATE] * len(times)
    assert first.count(OK) == len(fixes)


def test_expired_fixes_are_swept_and_memory_stays_bounded():
    """A fix a minute for 6 devices over 8 simulated weeks, a batch an hour: the table
    holds about one window's worth; the last window is still remembered whole."""
    fixes = AcceptedFixes(WEEK, slots=16)
    now, peak = NOW, 0
    for hour in range(8 * 7 * 24):
        now = NOW + hour * 3_600_000
        times = np.repeat(now - MINUTE * np.arange(60), 6)
        devices = np.tile(np.arange(6), 60)
        assert mark(fixes, devices, times, now=now) == [OK] * len(times)
        peak = max(peak, fixes.nbytes)
    per_window = 6 * (WEEK + CLOCK_SLACK_MS) // MINUTE
    assert fixes.sweeps >= 5
    assert len(fixes) <= 2 * per_window
    assert peak <= 8 * per_window / REBUILT_LOAD * 1.1    # not 8 weeks' worth
    week = np.repeat(now - MINUTE * np.arange(WEEK // MINUTE), 6)
    assert mark(fixes, np.tile(np.arange(6), len(week) // 6), week, now=now) == \
        [DUPLICATE] * len(week)


def test_stays_exact_through_many_sweeps_and_forgets_in_a_small_table():
    """A small, crowded table (long clusters that wrap around its end): every round the
    clock moves on, new fixes come, some are forgotten, and every accepted fix still
    within the window must be found."""
    rng = np.random.default_rng(8)
    window = 20 * MINUTE
    fixes, accepted, now = AcceptedFixes(window, slots=16), {}, NOW
    for _ in range(3000):
        now += int(rng.integers(0, 2 * MINUTE))
        new = {(int(d), now - int(a)) for d, a in zip(rng.integers(0, 6, 8),
                                                        rng.integers(0, window, 8))}
        new -= accepted.keys()
        new = sorted(new)
        assert mark(fixes, [d for d, _ in new], [t for _, t in new], now=now) == [OK] * len(new)
        dropped = [f for f in new if rng.random() < 0.3]
        fixes.forget(np.array([d for d, _ in dropped], np.int64),
                     np.array([t for _, t in dropped], np.int64))
        accepted.update((f, True) for f in new if f not in dropped)
        accepted = {f: True for f in accepted if f[1] >= now - window}
        live = sorted(accepted)
        assert mark(fixes, [d for d, _ in live], [t for _, t in live], now=now) == \
            [DUPLICATE] * len(live)
        assert mark(fixes, [d for d, _ in dropped], [t for _, t in dropped], now=now) == \
            [OK] * len(dropped)
        fixes.forget(np.array([d for d, _ in dropped], np.int64),
                     np.array([t for _, t in dropped], np.int64))
    assert fixes.sweeps > 20 and fixes.nbytes <= 8 * 1024


def test_fixes_older_than_the_window_are_left_alone():
    fixes = AcceptedFixes(WEEK)
    old = NOW - WEEK - CLOCK_SLACK_MS - 1
    assert mark(fixes, [1, 1], [old, old]) == [OK, OK]   # refused `time` before this
    assert len(fixes) == 0


def test_refuses_bad_arguments():
    fixes = AcceptedFixes(WEEK)
    with pytest.raises(ValueError):
        fixes.mark(np.zeros(2, np.int32), np.zeros(3, np.int64), np.zeros(2, np.int8), NOW)
    with pytest.raises(ValueError):
        fixes.mark(np.zeros(2, np.int32), np.zeros(2, np.int64), np.zeros(2, np.int64), NOW)
    with pytest.raises(ValueError, match="device index"):
        mark(fixes, [MAX_DEVICES], [NOW])
    with pytest.raises(ValueError, match="2020"):
        mark(fixes, [1], [10], now=10)


def test_the_window_is_no_longer_than_the_store_keeps_fixes():
    assert exact_window_ms(WEEK, 3 * 24 * 3600 * 1000) == 3 * 24 * 3600 * 1000
    assert exact_window_ms(WEEK, 30 * 24 * 3600 * 1000) == WEEK
    assert exact_window_ms(10 * 52 * WEEK, 10 * 52 * WEEK) == MAX_WINDOW_MS


def test_a_restart_refills_from_the_batches_within_the_window(tmp_path):
    with Store(tmp_path / "fixes.sqlite") as store:
        store.commit([BatchRecord("c", 1, NOW - WEEK - 3_600_000, columns([1], [NOW - WEEK - 3_600_000]), "ok"),
                      BatchRecord("c", 2, NOW - 60_000, columns([1, 2], [NOW - 60_000, NOW - 1]), "ok")])
        fixes = AcceptedFixes(WEEK)
        assert remember_stored(fixes, store, NOW) == 2      # batch 1 arrived before the window
        assert mark(fixes, [1, 2, 2], [NOW - 60_000, NOW - 1, NOW]) == [DUPLICATE, DUPLICATE, OK]


WINDOW = 30 * MINUTE


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_a_set_of_the_accepted_fixes(data):
    """Random batches, each stored or not; resends of any earlier accepted fix within
    the window; the clock moving on; restarts refilled from a real store file."""
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "fixes.sqlite") as store:
        fixes, accepted, now = AcceptedFixes(WINDOW, slots=16), set(), NOW
        for batch in range(data.draw(st.integers(1, 14))):
            action = data.draw(st.sampled_from(["batch"] * 4 + ["later", "restart"]))
            if action == "later":
                now += data.draw(st.integers(0, 3 * WINDOW))
                continue
            if action == "restart":
                fixes = AcceptedFixes(WINDOW, slots=16)
                remember_stored(fixes, store, now)
                continue
            live = sorted(f for f in accepted if f[1] >= now - WINDOW)
            batch_fixes = [data.draw(st.sampled_from(live)) if live and data.draw(st.booleans())
                           else (data.draw(st.integers(-1, 4)),
                                 now - data.draw(st.integers(0, 30)) * MINUTE)
                           for _ in range(data.draw(st.integers(0, 40)))]
            reasons = [data.draw(st.sampled_from([OK, OK, OK, LON])) for _ in batch_fixes]
            want, seen = [], set()
            for fix, reason in zip(batch_fixes, reasons):
                if fix[0] >= 0 and reason == OK and (fix in accepted or fix in seen):
                    reason = DUPLICATE
                elif fix[0] >= 0 and reason == OK:
                    seen.add(fix)
                want.append(reason)
            devices = [d for d, _ in batch_fixes]
            times = [t for _, t in batch_fixes]
            assert mark(fixes, devices, times, reasons, now) == want
            new = sorted(seen)
            cols = columns([d for d, _ in new], [t for _, t in new])
            if data.draw(st.booleans()):
                store.commit([BatchRecord("c", batch, now, cols, "ok")])
                accepted |= seen
            else:
                fixes.forget(cols.device, cols.t_ms)
