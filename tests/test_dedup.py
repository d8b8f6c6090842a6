"""RecentFixes: (device, t) duplicates within a batch and across batches, within the window.

The compiled marking is checked against a plain model of the documented semantics: a
fix still OK is a duplicate if its t is among the device's last K remembered fixes, or
among the device's last K still-OK fixes earlier in the batch.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.dedup import RecentFixes
from ingest.protocol import DUPLICATE, LON, OK


def mark(recent, devices, times, reasons=None):
    reason = np.array(reasons if reasons is not None else [OK] * len(devices), np.int8)
    recent.mark_duplicates(np.array(devices, np.int32), np.array(times, np.int64), reason)
    return reason.tolist()


def test_duplicates_within_a_batch():
    recent = RecentFixes()
    assert mark(recent, [0, 0, 1, 0, 0], [10, 10, 10, 20, 10]) == \
        [OK, DUPLICATE, OK, OK, DUPLICATE]


def test_an_earlier_refused_copy_does_not_count():
    recent = RecentFixes()
    assert mark(recent, [0, 0, 0], [10, 10, 10], [LON, OK, OK]) == [LON, OK, DUPLICATE]


def test_unknown_devices_are_skipped():
    recent = RecentFixes()
    assert mark(recent, [-1, -1], [10, 10]) == [OK, OK]


def test_duplicates_across_batches():
    recent = RecentFixes()
    devices, times = np.array([0, 1, 2]), np.array([10, 10, 10])
    recent.remember(devices, times, np.array([True, True, False]))
    # device 2's fix was not accepted (not stored): its resend is not a duplicate
    assert mark(recent, [0, 1, 2, 0], [10, 10, 10, 11]) == [DUPLICATE, DUPLICATE, OK, OK]


def test_window_limit():
    recent = RecentFixes(window=3)
    recent.remember(np.zeros(4, np.int64), np.array([1, 2, 3, 4]), np.ones(4, bool))
    # t=1 was pushed out by 2, 3, 4: a copy that old is not caught
    assert mark(recent, [0, 0, 0, 0], [1, 2, 3, 4]) == [OK, DUPLICATE, DUPLICATE, DUPLICATE]
    # within a batch too: only the device's last 3 fixes earlier in the batch are looked at
    assert mark(recent, [0] * 5, [5, 6, 7, 8, 5]) == [OK, OK, OK, OK, OK]
    assert mark(recent, [0] * 4, [5, 6, 7, 5]) == [OK, OK, OK, DUPLICATE]


def test_grows_with_the_device_book():
    recent = RecentFixes(window=2, devices=4)
    recent.remember(np.array([1000]), np.array([7]), np.array([True]))
    assert mark(recent, [1000, 3], [7, 7]) == [DUPLICATE, OK]


def test_refuses_mismatched_arrays():
    recent = RecentFixes()
    with pytest.raises(ValueError):
        recent.mark_duplicates(np.zeros(2, np.int32), np.zeros(3, np.int64),
                               np.zeros(2, np.int8))
    with pytest.raises(ValueError):
        recent.mark_duplicates(np.zeros(2, np.int32), np.zeros(2, np.int64),
                               np.zeros(2, np.int64))


def model_mark(history, window, devices, times, reasons):
    out, earlier = list(reasons), {}
    for i, (d, t) in enumerate(zip(devices, times)):
        if d < 0 or out[i] != OK:
            continue
        seen = earlier.setdefault(d, [])
        if t in history.get(d, [])[-window:] or t in seen[-window:]:
            out[i] = DUPLICATE
        else:
            seen.append(t)
    return out


BATCH = st.lists(st.tuples(st.integers(-1, 3), st.integers(0, 6), st.sampled_from([OK, OK, LON])),
                 max_size=30)


@given(st.integers(1, 4), st.lists(st.tuples(BATCH, st.lists(st.booleans(), min_size=30,
                                                             max_size=30)), max_size=4))
def test_matches_the_model(window, batches):
    recent, history = RecentFixes(window=window, devices=1), {}
    for batch, stored in batches:
        devices = [d for d, _, _ in batch]
        times = [t for _, t, _ in batch]
        reasons = [r for _, _, r in batch]
        want = model_mark(history, window, devices, times, reasons)
        assert mark(recent, devices, times, reasons) == want
        accepted = [w == OK and s for w, s in zip(want, stored)]
        recent.remember(np.array(devices, np.int64), np.array(times), np.array(accepted, bool))
        for d, t, a in zip(devices, times, accepted):
            if a and d >= 0:
                history.setdefault(d, []).append(t)
