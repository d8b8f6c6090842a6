"""The compiled gathering join against a plain pairwise reference."""

import math

from hypothesis import given, settings, strategies as st

from alerts.gathering_join import CaseNumbers, JoinSettings, Links, join_window

R = 6_371_008.8
SETTINGS = JoinSettings(radius_m=200.0, acc_k=0.5, max_acc_m=300.0, max_dt_ms=300_000)


def reference(lon, lat, t, acc, subject, fresh, groups_of, s: JoinSettings) -> set:
    """Every pair of fixes, one by one: the obvious definition."""
    found = set()
    for i in range(len(lon)):
        for j in range(i + 1, len(lon)):
            if subject[i] == subject[j] or not (fresh[i] or fresh[j]):
                continue
            if abs(t[i] - t[j]) > s.max_dt_ms:
                continue
            shared = set(groups_of.get(subject[i], ())) & set(groups_of.get(subject[j], ()))
            if not shared:
                continue
            la1, la2 = math.radians(lat[i]), math.radians(lat[j])
            dx = math.radians(lon[i] - lon[j]) * math.cos((la1 + la2) / 2)
            d = R * math.hypot(dx, la1 - la2)
            if d <= s.radius_m + s.acc_k * math.hypot(acc[i], acc[j]):
                found.add((min(i, j), max(i, j), min(shared)))
    return found


def joined(lon, lat, t, acc, subject, fresh, links, s) -> set:
    got = join_window(lon, lat, t, acc, subject, fresh, links, s)
    pairs = {(min(i, j), max(i, j), g) for i, j, g in zip(got.i.tolist(), got.j.tolist(),
                                                          got.group.tolist())}
    assert len(pairs) == len(got)   # each pair once
    return pairs


@st.composite
def windows(draw):
    n_subjects = draw(st.integers(2, 12))
    numbers = CaseNumbers()
    groups_of = {}
    for s in range(n_subjects):
        cases = draw(st.lists(st.sampled_from(["A", "B", "C"]), max_size=2))
        key = draw(st.booleans())
        g = numbers.groups(cases, key)
        if g:
            groups_of[s] = sorted(set(g))
    n = draw(st.integers(0, 40))
    # Around a grid corner at a high-ish latitude, within ~2 km: cells edges are crossed.
    lat0 = draw(st.sampled_from([0.0, 34.8, 35.0, 60.0, -45.0]))
    lon0 = draw(st.sampled_from([117.0, 117.5, -0.001, 179.0]))
    span = draw(st.sampled_from([0.001, 0.005, 0.02]))
    coord = st.floats(-span, span, allow_nan=False)
    lon = [lon0 + draw(coord) for _ in range(n)]
    lat = [lat0 + draw(coord) for _ in range(n)]
    t = [draw(st.integers(0, 900_000)) for _ in range(n)]
    acc = [draw(st.sampled_from([0.0, 5.0, 30.0, 120.0, 300.0])) for _ in range(n)]
    subject = [draw(st.integers(0, n_subjects - 1)) for _ in range(n)]
    fresh = [draw(st.booleans()) for _ in range(n)]
    return (lon, lat, t, acc, subject, fresh, groups_of,
            Links.build(n_subjects, groups_of, numbers.names))


@settings(max_examples=300, deadline=None)
@given(windows())
def test_join_matches_the_pairwise_reference(window):
    lon, lat, t, acc, subject, fresh, groups_of, links = window
    assert joined(lon, lat, t, acc, subject, fresh, links, SETTINGS) == reference(
        lon, lat, t, acc, subject, fresh, groups_of, SETTINGS)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 400.0), st.floats(0.0, 1.0))
def test_pairs_across_cell_edges_and_at_the_limit(offset_m, fraction):
    """Two people of one case along a meridian, `offset_m` apart, wherever the cell edge
    falls: found exactly when within the radius plus the accuracy term."""
    s = JoinSettings(radius_m=200.0, acc_k=0.0, max_acc_m=100.0, max_dt_ms=60_000)
    lat0 = 35.0 + fraction * s.cell_m / R * 180 / math.pi
    lat = [lat0, lat0 + math.degrees(offset_m / R)]
    lon = [117.0, 117.0]
    links = Links.build(2, {0: [1], 1: [1]}, ["key", "A"])
    got = joined(lon, lat, [0, 0], [10.0, 10.0], [0, 1], [True, True], links, s)
    assert got == reference(lon, lat, [0, 0], [10.0, 10.0], [0, 1], [True, True],
                            {0: [1], 1: [1]}, s)
    assert (len(got) == 1) == (offset_m < 199.99) or 199.99 <= offset_m <= 200.01


def test_unlinked_stale_and_far_in_time_pairs_are_not_together():
    links = Links.build(4, {0: [1], 1: [1], 2: [0], 3: [0]}, ["key", "A"])
    lon, lat = [117.0] * 4, [35.0] * 4
    # 0-1 share case A, 2-3 are both key; 0-2 share nothing.
    got = joined(lon, lat, [0, 0, 0, 400_000], [5.0] * 4, [0, 1, 2, 3],
                 [True, False, True, True], links, SETTINGS)
    assert got == {(0, 1, 1)}   # 2-3 are 400 s apart; 0-2 and 1-2 unlinked
    got = joined(lon, lat, [0, 0, 0, 0], [5.0] * 4, [0, 1, 2, 3],
                 [False, False, True, False], links, SETTINGS)
    assert got == {(2, 3, 0)}   # 0-1 both carried over: judged in an earlier window
