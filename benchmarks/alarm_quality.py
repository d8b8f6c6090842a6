"""Alarm quality: precision and recall of zone_exit against planted truth, the naive rule beside it.

Zaozhuang layer, the 6 counties as allowed areas (``engine.area_id([code])``). One seeded
population (`sim.population.make_population`: 2,032 subjects, 5 % key) and consecutive days
of fixes (`make_day`, a different seed each day, 2 % of subjects a day make a planted
excursion 0.5-20 km beyond their county's border for 15 min-6 h). Every fix gets the
verdict of its subject's county (`VerdictEngine.verdicts`), then all fixes go through one
`RuleState` (default `engine.config.Rules()`, no exclusion zones) in time order, in
batches of `BATCH`, and the zone_exit events are collected.

Truth, from what `make_day` planted:
- an excursion is the subject's fixes flagged `away` on one day: its interval runs from
  the first to the last of them, its duration is that span, and how far it went is the
  median over those fixes of the distance from the true position to the county
  (``engine.areas.distance_m``; 0 for a true position inside the county);
- a fix is *really out* when its true position is outside the subject's county
  (``layer.locate`` of true_lon/true_lat): short walks across a border near home count.

An alarm (a zone_exit, or a naive one) is *true* if its fix lies within a planted
excursion interval of its subject, or the fix is really out. Precision: true alarms /
alarms. Recall: share of planted excursions that went >= 1 km beyond the border for
>= 20 min with an alarm of that subject inside the excursion interval.

Naive rule: per subject, an alarm each time a measured fix point lies outside the home
county (or outside the layer) after one inside it (subjects start inside). Alarms per true
event are given per planted excursion and per "real departure": a run of really-out fixes
of one subject, most of them single fixes of people living near a border.
"""

import time

import numpy as np

from alerts.rules import EVENT_TYPES, RuleState, warm_up
from benchmarks.common import Report, log
from geofence import IN, OUT, UNSURE, Layer, VerdictEngine
from geofence.builtin import zaozhuang_geojson
from sim.movement import DAY_MS, make_day
from sim.population import make_population
from sim.zaozhuang import ZAOZHUANG_COUNTIES
from engine.config import Rules

SEED = 20240612
BATCH = 10_000
EXCURSION_SHARE = 0.02
MIN_BEYOND_M = 1_000.0
MIN_DURATION_MS = 20 * 60_000
FULL = {"subjects": 2032, "days": 6}
QUICK = {"subjects": 2032, "days": 1}
ZONE_EXIT = EVENT_TYPES.index("zone_exit")


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    counties = list(ZAOZHUANG_COUNTIES)
    rep = Report("alarm_quality", {"seed": SEED, **sizes, "excursion_share": EXCURSION_SHARE,
                                   "batch": BATCH, "rules": "engine.config.Rules() defaults",
                                   "qualifying excursion": ">= 1 km beyond, >= 20 min"})
    warm_up()
    layer = Layer.from_geojson(zaozhuang_geojson())
    engine = VerdictEngine(layer)
    area_ids = np.array([engine.area_id([c]) for c in counties], np.int32)
    county_of_feature = np.full(len(layer), -1, np.int32)
    for k, code in enumerate(counties):
        county_of_feature[layer.features_under(code)] = k

    rng = np.random.default_rng(SEED)
    people = make_population(layer, counties, sizes["subjects"], rng)
    home = np.searchsorted(counties, people.county).astype(np.int32)  # codes are sorted
    assert (np.array(counties)[home] == people.county).all()
    key = people.risk == "key"

    state = RuleState(sizes["subjects"], Rules())
    exits, naive, excursions, departures = [], [], [], 0
    n_fixes, verdict_counts, rules_s = 0, np.zeros(3, np.int64), 0.0
    prev_inside = np.ones(sizes["subjects"], bool)
    prev_out = np.zeros(sizes["subjects"], bool)
    for day in range(sizes["days"]):
        start = time.perf_counter()
        feed = make_day(layer, people, np.random.default_rng([SEED, day]), day * DAY_MS,
                        EXCURSION_SHARE)
        s = feed.subject
        area = area_ids[home[s]]
        v = engine.verdicts(feed.lon, feed.lat, feed.acc_m, area)
        verdict_counts += np.bincount(v.verdict, minlength=3)
        inside = _in_county(v.where, county_of_feature, home[s])
        true_where = layer.locate(feed.true_lon, feed.true_lat)
        really_out = ~_in_county(true_where, county_of_feature, home[s])
        day_exc = _excursions(engine, feed, area, really_out, day)
        excursions += day_exc
        intervals = _by_subject(day_exc)

        t0 = time.perf_counter()
        no_zone_v, no_zone = np.full(BATCH, OUT, np.int8), np.full(BATCH, -1, np.int32)
        for lo in range(0, len(feed), BATCH):
            hi = min(lo + BATCH, len(feed))
            ev = state.apply(s[lo:hi], feed.t_ms[lo:hi], v.verdict[lo:hi],
                             no_zone_v[:hi - lo], no_zone[:hi - lo], key)
            assert ev.n_late == 0
            for j in np.flatnonzero(ev.type == ZONE_EXIT):
                f = lo + int(ev.fix[j])
                exits.append(_alarm(f, feed, really_out, intervals))
        rules_s += time.perf_counter() - t0

        naive_fixes, prev_inside = _naive(s, inside, prev_inside)
        naive += [_alarm(f, feed, really_out, intervals) for f in naive_fixes]
        n_runs, prev_out = _runs(s, really_out, prev_out)
        departures += n_runs
        n_fixes += len(feed)
        log(f"alarm_quality: day {day + 1}/{sizes['days']}: {len(feed):,} fixes, "
            f"{len(day_exc)} planted excursions, {time.perf_counter() - start:.1f} s")

    group = "feed"
    rep.add(group, "fixes", n_fixes, "fixes")
    for code, name in ((IN, "in"), (UNSURE, "unsure"), (OUT, "out")):
        rep.add(group, f"  share {name}", verdict_counts[code] / n_fixes, "fraction")
    rep.add(group, "rules stage, batches of 10,000", n_fixes / rules_s / 1e6, "M fixes/s")
    rep.add("truth", "planted excursions", len(excursions), "excursions", at_least=200
            if not quick else None)
    qualifying = [e for e in excursions if e["beyond_m"] >= MIN_BEYOND_M
                  and e["t1"] - e["t0"] >= MIN_DURATION_MS]
    rep.add("truth", f"  >= {MIN_BEYOND_M / 1000:g} km beyond, >= 20 min", len(qualifying),
            "excursions")
    rep.add("truth", "real departures (runs of really-out fixes)", departures, "events")

    for name, alarms, targets in (("zone_exit (default rules)", exits, True),
                                  ("naive: any fix outside home", naive, False)):
        true = sum(a[1] for a in alarms)
        found = int(_found(alarms, qualifying).sum())
        rep.add(name, "alarms", len(alarms), "alarms")
        rep.add(name, "  true", true, "alarms")
        rep.add(name, "    within a planted excursion", sum(a[3] for a in alarms), "alarms")
        rep.add(name, "    else really out (walk over a border)",
                sum(a[1] and not a[3] for a in alarms), "alarms")
        rep.add(name, "  false", len(alarms) - true, "alarms")
        rep.add(name, "precision", 100 * true / max(len(alarms), 1), "%",
                at_least=90 if targets else None)
        rep.add(name, f"qualifying excursions found (of {len(qualifying)})", found, "excursions")
        rep.add(name, "recall", 100 * found / max(len(qualifying), 1), "%",
                at_least=99 if targets else None)
        rep.add(name, "alarms per planted excursion", len(alarms) / max(len(excursions), 1), "")
        rep.add(name, "alarms per real departure", len(alarms) / max(departures, 1), "")
    missed = [e for e, hit in zip(qualifying, _found(exits, qualifying)) if not hit]
    for e in missed[:10]:
        rep.notes.append(f"missed: subject {e['subject']} day {e['day'] + 1}, "
                         f"{(e['t1'] - e['t0']) / 60_000:.0f} min, {e['beyond_m']:,.0f} m "
                         f"beyond, {e['fixes']} away fixes")
    rep.notes.append("excursion duration is the span of its away fixes (the planted one is "
                     "longer by up to one reporting interval, 1-10 min); excursions with no "
                     "fix during them cannot be seen and are not counted")
    return rep


def _in_county(where, county_of_feature, home) -> np.ndarray:
    """Whether each located point lies in its subject's home county (-1: off the layer)."""
    return np.where(where >= 0, county_of_feature[np.maximum(where, 0)], -1) == home


def _excursions(engine, feed, area, really_out, day) -> list[dict]:
    """Planted excursions of one day: subject, interval, median distance beyond, fixes."""
    out = []
    for s in np.unique(feed.subject[feed.away]):
        idx = np.flatnonzero((feed.subject == s) & feed.away)
        d = engine.areas.distance_m(int(area[idx[0]]), feed.true_lon[idx], feed.true_lat[idx])
        d = np.where(really_out[idx], d, 0.0)
        out.append({"subject": int(s), "day": day, "t0": int(feed.t_ms[idx[0]]),
                    "t1": int(feed.t_ms[idx[-1]]), "beyond_m": float(np.median(d)),
                    "fixes": len(idx)})
    return out


def _by_subject(excursions) -> dict:
    by = {}
    for e in excursions:
        by.setdefault(e["subject"], []).append((e["t0"], e["t1"]))
    return by


def _alarm(f: int, feed, really_out, intervals) -> tuple[int, bool, int, bool]:
    """(subject, true?, t, within a planted excursion?) of an alarm raised on fix f."""
    s, t = int(feed.subject[f]), int(feed.t_ms[f])
    planted = any(t0 <= t <= t1 for t0, t1 in intervals.get(s, ()))
    return s, bool(planted or really_out[f]), t, planted


def _naive(subject, inside, prev_inside):
    """Fixes (time order) where a subject's point is outside home after an inside one."""
    order = np.argsort(subject, kind="stable")  # per subject, still in time order
    s, ins = subject[order], inside[order]
    first = np.r_[True, s[1:] != s[:-1]]
    before = np.where(first, prev_inside[s], np.r_[True, ins[:-1]])
    alarms = np.sort(order[~ins & before])
    last = np.r_[s[1:] != s[:-1], True]
    prev_inside = prev_inside.copy()
    prev_inside[s[last]] = ins[last]
    return alarms, prev_inside


def _runs(subject, flag, prev_flag):
    """(runs of flagged fixes per subject started in this feed, last flag per subject)."""
    order = np.argsort(subject, kind="stable")
    s, f = subject[order], flag[order]
    first = np.r_[True, s[1:] != s[:-1]]
    before = np.where(first, prev_flag[s], np.r_[False, f[:-1]])
    last = np.r_[s[1:] != s[:-1], True]
    prev_flag = prev_flag.copy()
    prev_flag[s[last]] = f[last]
    return int((f & ~before).sum()), prev_flag


def _found(alarms, qualifying) -> np.ndarray:
    """Per excursion: an alarm of its subject lies within its interval."""
    by = {}
    for s, _, t, _ in alarms:
        by.setdefault(s, []).append(t)
    by = {s: np.sort(ts) for s, ts in by.items()}
    found = np.zeros(len(qualifying), bool)
    for i, e in enumerate(qualifying):
        ts = by.get(e["subject"])
        if ts is not None:
            k = np.searchsorted(ts, e["t0"])
            found[i] = k < len(ts) and ts[k] <= e["t1"]
    return found
