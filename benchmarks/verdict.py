"""Verdict: fixes per second of `VerdictEngine.verdicts`, with shapely measured in the same run.

Zaozhuang layer; the allowed areas are its 6 counties (``engine.area_id([code])``, built
once and timed apart). Seeded fixes uniform over the city's bounding box, half GPS
(accuracy 5-50 m) and half cell (200-3000 m), each given a random county. Timed: best of
`REPEAT` calls of ``engine.verdicts`` on one core, which includes locating the fixes.
Compile time apart: fresh interpreters with an empty and with the warm Numba cache time
the layer and area builds and the first call.

Baseline (on a subset of the same fixes): the same verdict written with shapely, fixes
grouped per county, all vectorized. Each county is the union of its townships projected to
a local metric frame at the city's centre latitude (x * kx, y * ky, from
`geofence.metric.metres_per_degree`) and prepared (not timed, like our area build);
``contains_xy`` gives `in`, then ``out`` if d > max(accuracy, 200 m) else ``unsure``, with
d from ``shapely.distance`` (slow: timed once on a smaller subset) or, faster, the
threshold test itself by ``shapely.dwithin``. The fastest is "shapely best". It does not
locate the township, so ours does more work per fix. Agreement: verdicts should differ only
where d is within the projection error (one frame for the whole city: < 1 %) of the threshold.
"""


import numpy as np
import shapely

from benchmarks.common import Report, best_of, cold_and_warm
from geofence import EXIT_MARGIN_M, IN, OUT, UNSURE, Layer, VerdictEngine
from geofence.metric import metres_per_degree
from geofence.builtin import zaozhuang_geojson
from sim.zaozhuang import ZAOZHUANG_COUNTIES

SEED = 20240602
REPEAT = 5
FULL = {"fixes": 2_000_000, "shapely_fixes": 200_000, "slow_fixes": 20_000}
QUICK = {"fixes": 200_000, "shapely_fixes": 50_000, "slow_fixes": 5_000}
PROJECTION_TOLERANCE = 0.01  # relative: a single frame for the city, |error| < 0.6 %

FIRST_CALLS = """
t = time.perf_counter()
import numpy as np
import geofence
from geofence.builtin import zaozhuang_geojson
from sim.zaozhuang import ZAOZHUANG_COUNTIES
out['import_s'] = time.perf_counter() - t
source = zaozhuang_geojson()
t = time.perf_counter(); layer = geofence.Layer.from_geojson(source)
out['layer_s'] = time.perf_counter() - t
t = time.perf_counter(); engine = geofence.VerdictEngine(layer)
ids = [engine.area_id([code]) for code in ZAOZHUANG_COUNTIES]
out['areas_s'] = time.perf_counter() - t
t = time.perf_counter()
engine.verdicts(np.array([117.2, 117.5]), np.array([34.9, 35.1]), np.array([10.0, 900.0]),
                np.array(ids[:2], np.int32))
out['first_s'] = time.perf_counter() - t
"""


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("verdict", {"seed": SEED, "repeat": REPEAT, **sizes,
                             "counties": list(ZAOZHUANG_COUNTIES)})
    first_calls(rep)
    layer = Layer.from_geojson(zaozhuang_geojson())
    engine = VerdictEngine(layer)
    t, ids = best_of(lambda: [engine.area_id([c]) for c in ZAOZHUANG_COUNTIES], 1)
    rep.add("setup", "ours: 6 county areas", t, "s")
    t, (areas_m, kx, ky) = best_of(lambda: shapely_areas(layer), 1)
    rep.add("setup", "shapely: union, project, prepare", t, "s")

    n, k = sizes["fixes"], sizes["shapely_fixes"]
    xs, ys, acc, county = fixes(layer.bounds, n, len(ids))
    area_of = np.asarray(ids, np.int32)[county]
    engine.verdicts(xs[:100], ys[:100], acc[:100], area_of[:100])  # loaded already; be sure
    t, ours = best_of(lambda: engine.verdicts(xs, ys, acc, area_of), REPEAT)
    ours_mps = rep.add("Zaozhuang", "ours, 1 core (locate included)", n / t / 1e6, "M fixes/s",
                       at_least=10)
    for v, name in ((IN, "in"), (UNSURE, "unsure"), (OUT, "out")):
        rep.add("Zaozhuang", f"  share {name}", float((ours.verdict == v).mean()), "fraction")

    best, theirs = 0.0, None
    for name, near, m, repeat in (("distance", _near_by_distance, sizes["slow_fixes"], 1),
                                  ("dwithin", _near_dwithin, k, REPEAT)):
        t, got = best_of(lambda: shapely_verdicts(areas_m, kx, ky, xs[:m], ys[:m], acc[:m],
                                                  county[:m], near), repeat)
        rep.add("Zaozhuang", f"shapely with shapely.{name}", m / t / 1e6, "M fixes/s")
        if m / t / 1e6 > best:
            best, theirs = m / t / 1e6, got
    rep.add("Zaozhuang", "ours / shapely best", ours_mps / best, "x", at_least=20)
    k = len(theirs)
    agreement(rep, areas_m, kx, ky, xs[:k], ys[:k], acc[:k], county[:k], ours.verdict[:k], theirs)
    return rep


def first_calls(rep: Report) -> None:
    for label, res in cold_and_warm(FIRST_CALLS):
        group = f"first calls, {label}"
        rep.add(group, "layer build", res["layer_s"], "s")
        rep.add(group, "6 county areas", res["areas_s"], "s")
        rep.add(group, "first verdicts call", res["first_s"], "s")


def fixes(bounds, n: int, n_areas: int):
    """Seeded fixes: lon, lat, accuracy (m; half GPS 5-50, half cell 200-3000), county."""
    rng = np.random.default_rng(SEED)
    x0, y0, x1, y1 = bounds
    xs, ys = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    gps = rng.permutation(n) < n // 2
    acc = np.where(gps, rng.uniform(5, 50, n), rng.uniform(200, 3000, n))
    return xs, ys, acc, rng.integers(0, n_areas, n)


def shapely_areas(layer: Layer):
    """Per county, the union of its townships in the metric frame at the city's centre."""
    kx, ky = metres_per_degree.py_func((layer.bounds[1] + layer.bounds[3]) / 2)
    areas = []
    for code in ZAOZHUANG_COUNTIES:
        union = shapely.union_all(layer.geometries[layer.features_under(code)])
        areas.append(shapely.transform(union, lambda xy: xy * (kx, ky)))
    areas = np.array(areas, dtype=object)
    shapely.prepare(areas)
    return areas, kx, ky


def _near_by_distance(area, x, y, limit):
    return shapely.distance(area, shapely.points(x, y)) <= limit


def _near_dwithin(area, x, y, limit):
    return shapely.dwithin(area, shapely.points(x, y), limit)


def shapely_verdicts(areas_m, kx, ky, xs, ys, acc, county, near) -> np.ndarray:
    """IN / UNSURE / OUT per fix, fixes grouped per county, vectorized per group."""
    verdict = np.empty(len(xs), np.int8)
    order = np.argsort(county, kind="stable")
    starts = np.searchsorted(county[order], np.arange(len(areas_m) + 1))
    px, py = xs * kx, ys * ky
    for c, area in enumerate(areas_m):
        group = order[starts[c]:starts[c + 1]]
        inside = shapely.contains_xy(area, px[group], py[group])
        outside = group[~inside]
        limit = np.maximum(acc[outside], EXIT_MARGIN_M)
        verdict[group[inside]] = IN
        verdict[outside] = np.where(near(area, px[outside], py[outside], limit), UNSURE, OUT)
    return verdict


def agreement(rep: Report, areas_m, kx, ky, xs, ys, acc, county, ours, theirs) -> None:
    diff = np.flatnonzero(ours != theirs)
    rep.add("agreement", f"same verdict (of {len(xs):,} fixes)", 1 - len(diff) / len(xs),
            "", fmt=".4%")
    d = shapely.distance(areas_m[county[diff]], shapely.points(xs[diff] * kx, ys[diff] * ky))
    limit = np.maximum(acc[diff], EXIT_MARGIN_M)
    near_threshold = np.abs(d - limit) <= PROJECTION_TOLERANCE * limit
    on_boundary = d < 0.01
    rep.add("agreement", "differing verdicts", len(diff), "fixes")
    rep.add("agreement", "  of which not within 1 % of the threshold",
            int((~near_threshold & ~on_boundary).sum()), "fixes", at_most=0)
