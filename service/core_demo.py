"""`geofence demo` until the service exists: the compiled core over a simulated day.

Builds the Zaozhuang layer, places 2,032 subjects in its six counties, simulates a day of
carrier fixes with planted excursions, runs every fix through `locate` and the verdicts
in batches, and reports what it found against the planted truth: the accuracy-aware
verdicts next to the naive rule (alarm on any fix whose point is outside home).
"""

import time

import numpy as np

import geofence
from geofence.synthetic import zaozhuang_geojson
from ingest.feed import SOURCES, make_day, make_population

COUNTIES = ["370402", "370403", "370404", "370405", "370406", "370481"]
BATCH = 10_000
EXITS_IN_A_ROW = 2  # the default zone_exit rule: two `out` fixes, `unsure` neither counts nor resets


def run(subjects: int = 2032, seed: int = 7, out=print) -> dict:
    t0 = time.perf_counter()
    geofence.warm_up()
    layer = geofence.Layer.from_geojson(zaozhuang_geojson())
    engine = geofence.VerdictEngine(layer)
    area_of_county = {c: engine.area_id([c]) for c in COUNTIES}
    stats = layer.index.stats()
    out(f"layer: {len(layer)} townships in {len(COUNTIES)} counties, "
        f"{len(layer.geometry.coords):,} vertices, grid {stats['grid'][0]}x{stats['grid'][1]} "
        f"({stats['mixed_fraction']:.1%} mixed cells), ready in {time.perf_counter() - t0:.1f} s")

    rng = np.random.default_rng(seed)
    people = make_population(layer, COUNTIES, subjects, rng)
    feed = make_day(layer, people, rng)
    by_src = np.bincount(feed.src, minlength=len(SOURCES))
    out(f"feed: {subjects:,} subjects, {len(feed):,} fixes over 24 h "
        + ", ".join(f"{s} {c:,}" for s, c in zip(SOURCES, by_src))
        + f"; {len(feed.excursions)} planted excursions")

    area = np.array([area_of_county[c] for c in people.county], np.int32)[feed.subject]
    verdict = np.empty(len(feed), np.int8)
    where = np.empty(len(feed), np.int32)
    engine.verdicts(feed.lon[:1], feed.lat[:1], feed.acc_m[:1], area[:1])  # tables ready
    t1 = time.perf_counter()
    for lo in range(0, len(feed), BATCH):
        hi = lo + BATCH
        v = engine.verdicts(feed.lon[lo:hi], feed.lat[lo:hi], feed.acc_m[lo:hi], area[lo:hi])
        verdict[lo:hi] = v.verdict
        where[lo:hi] = v.where
    seconds = time.perf_counter() - t1
    counts = np.bincount(verdict, minlength=3)
    out(f"verdicts: in {counts[0]:,}, unsure {counts[1]:,}, out {counts[2]:,} "
        f"({len(feed) / seconds / 1e6:.1f} M fixes/s in batches of {BATCH:,})")

    planted = set(feed.excursions.tolist())
    true_where = layer.locate(feed.true_lon, feed.true_lat)
    really_out = ~_in_home(true_where, layer, people, feed)
    truth = _subjects_with_sustained_exit(
        feed, np.where(really_out, geofence.OUT, geofence.IN).astype(np.int8))
    out(f"truth: {len(truth)} subjects really left their county for {EXITS_IN_A_ROW}+ fixes "
        f"({len(planted)} planted excursions, the rest short walks across a border near home)")
    naive = set(np.unique(feed.subject[~_in_home(where, layer, people, feed)]).tolist())
    aware = _subjects_with_sustained_exit(feed, verdict)
    for name, flagged in (("naive: any fix outside home", naive),
                          (f"accuracy-aware: {EXITS_IN_A_ROW} `out` in a row", aware)):
        out(f"{name:>36}: {len(flagged):4d} subjects flagged, "
            f"{len(flagged & truth):4d} really out, {len(flagged - truth):4d} false, "
            f"planted excursions found {len(flagged & planted)}/{len(planted)}")
    return {"fixes": len(feed), "verdicts": counts.tolist(), "truth": len(truth),
            "naive": len(naive), "aware": len(aware), "aware_true": len(aware & truth),
            "planted": len(planted), "planted_found": len(aware & planted)}


def _in_home(where, layer, people, feed) -> np.ndarray:
    """Whether each located fix lies in its subject's home county."""
    county_of_feature = np.array([layer.hierarchy.ancestors(c)[0] for c in layer.codes])
    located = np.where(where >= 0, county_of_feature[np.maximum(where, 0)], "")
    return located == people.county[feed.subject]


def _subjects_with_sustained_exit(feed, verdict) -> set[int]:
    order = np.lexsort((feed.t_ms, feed.subject))
    counted = order[verdict[order] != geofence.UNSURE]
    s = feed.subject[counted]
    is_out = verdict[counted] == geofence.OUT
    run_ok = np.ones(len(s) - EXITS_IN_A_ROW + 1, bool) if len(s) >= EXITS_IN_A_ROW else np.zeros(0, bool)
    for k in range(EXITS_IN_A_ROW):
        run_ok &= is_out[k:len(s) - EXITS_IN_A_ROW + 1 + k]
        run_ok &= s[k:len(s) - EXITS_IN_A_ROW + 1 + k] == s[:len(s) - EXITS_IN_A_ROW + 1]
    return set(np.unique(s[:len(run_ok)][run_ok]).tolist())
