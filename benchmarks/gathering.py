"""Gathering: fixes per second of the gathering rule's join on one core (`alerts.gathering`).

700,000 subjects (quick: 100,000) with homes uniform over a 300 km x 300 km box at 35° N
(one province). Linked share, stated: 5 % key persons (one link group), and 20 % in
co-offender cases (同案犯) of 2-4 people; half the cases live within 150 m of each other
(so their pairs are together all the time: the rule's pair state is full, not empty).
Seeded windows of 100,000 fixes, one a minute of event time: subjects at random (one fix
each per 7 minutes on average), each within 40 m of home, accuracy 60 % GPS (5-30 m),
25 % Wi-Fi (30-120 m), 15 % cell (500-1,500 m, left out by `gathering_max_acc_m`).
Default settings (`engine.config.Rules()`). Warm kernel first (not timed).

Timed per window, over all windows, best of `REPEAT` passes on fresh state:
- ``GatheringRule.apply``: every fix of the window in (the unlinked and inaccurate ones
  filtered out there), carried-over fixes, the join, the pair state, the alarms due;
- the join alone: `join_window` on the same windows' kept fixes, no carried ones.
"""

import time

import numpy as np

from alerts.gathering import GatheringRule, GatheringSettings, warm_up
from alerts.gathering_join import CaseNumbers, Links, join_window
from benchmarks.common import Report
from engine.config import Rules

SEED = 20261203
REPEAT = 3
WINDOW = 100_000
KEY_SHARE = 0.05
CASE_SHARE = 0.20
COLOCATED_CASES = 0.5
FULL = {"subjects": 700_000, "windows": 20}
QUICK = {"subjects": 100_000, "windows": 6}
BOX_DEG = (116.0, 33.6, 119.3, 36.3)   # ~300 km a side
M_PER_DEG_LAT = 111_195.0


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    n, n_windows = sizes["subjects"], sizes["windows"]
    rep = Report("gathering", {"seed": SEED, "repeat": REPEAT, "window": WINDOW, **sizes,
                               "key_share": KEY_SHARE, "case_share": CASE_SHARE,
                               "colocated_cases": COLOCATED_CASES,
                               "rules": "engine.config.Rules() defaults"})
    warm_up()
    rng = np.random.default_rng(SEED)
    links, home_lon, home_lat = population(rng, n)
    windows = [window(rng, n, k, home_lon, home_lat) for k in range(n_windows)]
    total = n_windows * WINDOW
    settings = GatheringSettings.of(Rules())

    best_apply = best_join = np.inf
    raised = pairs = kept = 0
    for _ in range(REPEAT):
        rule = GatheringRule(settings)
        rule.grow(n)   # once, as a worker does when the registry grows
        seconds, raised = 0.0, 0
        for w in windows:
            start = time.perf_counter()
            raised += len(rule.apply(*w, links))
            seconds += time.perf_counter() - start
        best_apply, pairs = min(best_apply, seconds), len(rule.together())
        seconds, kept = 0.0, 0
        for s, t, lon, lat, acc, _ in windows:
            keep = links.linked[s] & (acc <= settings.join.max_acc_m)
            kept += int(keep.sum())
            args = (lon[keep], lat[keep], t[keep], acc[keep], s[keep],
                    np.ones(int(keep.sum()), np.bool_), links, settings.join)
            start = time.perf_counter()
            join_window(*args)
            seconds += time.perf_counter() - start
        best_join = min(best_join, seconds)
    group = f"{n:,} subjects, 1 core"
    rep.add(group, "GatheringRule.apply (all fixes in)", total / best_apply / 1e6, "M fixes/s",
            at_least=2)
    rep.add(group, "  join alone (kept fixes)", kept / best_join / 1e6, "M fixes/s")
    rep.add(group, "  apply per window of 100,000", best_apply / n_windows * 1e3, "ms")
    rep.add("load", "linked subjects", int(links.linked.sum()), "subjects")
    rep.add("load", "fixes kept (linked, accurate)", kept / total * 100, "%")
    rep.add("load", "pairs together at the end", pairs, "pairs")
    rep.add("load", "gatherings raised (last pass)", raised, "gatherings")
    return rep


def population(rng, n: int):
    """Links (key persons, cases of 2-4) and homes; half the cases live together."""
    x0, y0, x1, y1 = BOX_DEG
    home_lon, home_lat = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    numbers, groups = CaseNumbers(), {}
    key = rng.random(n) < KEY_SHARE
    for s in np.flatnonzero(key).tolist():
        groups[s] = numbers.groups([], True)
    members = rng.permutation(n)[:int(n * CASE_SHARE)]
    at, case = 0, 0
    while at < len(members):
        size = int(rng.integers(2, 5))
        people = members[at:at + size].tolist()
        at += size
        case += 1
        for s in people:
            groups.setdefault(s, []).extend(numbers.groups([f"case-{case}"], False))
        if rng.random() < COLOCATED_CASES:
            lead = people[0]
            for s in people[1:]:
                home_lon[s] = home_lon[lead] + rng.uniform(-1, 1) * 100 / 91_000
                home_lat[s] = home_lat[lead] + rng.uniform(-1, 1) * 100 / M_PER_DEG_LAT
    return Links.build(n, groups, numbers.names), home_lon, home_lat


def window(rng, n: int, k: int, home_lon, home_lat):
    """Window k: random subjects near home, t in [k, k + 1) minutes, the accuracy mix."""
    s = rng.integers(0, n, WINDOW).astype(np.int64)
    t = (k * 60_000 + rng.integers(0, 60_000, WINDOW)).astype(np.int64)
    lon = home_lon[s] + rng.uniform(-1, 1, WINDOW) * 40 / 91_000
    lat = home_lat[s] + rng.uniform(-1, 1, WINDOW) * 40 / M_PER_DEG_LAT
    kind = rng.random(WINDOW)
    acc = np.where(kind < 0.6, rng.uniform(5, 30, WINDOW),
                   np.where(kind < 0.85, rng.uniform(30, 120, WINDOW),
                            rng.uniform(500, 1500, WINDOW)))
    return s, t, lon, lat, acc, np.zeros(WINDOW, np.int8)
