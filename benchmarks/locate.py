"""Locate: points per second of `Layer.locate`, with shapely measured in the same run.

1. Zaozhuang (66 townships, `Layer.from_geojson(zaozhuang_geojson())`), seeded uniform
   points over the city's bounding box. `layer.locate` into a preallocated `out`, on one
   core (serial kernel) and on all cores (``parallel=True``): best of `REPEAT` runs.
   Compile time apart: a fresh interpreter builds the layer and times the first calls,
   once with an empty Numba cache (compile) and once with the warm cache (load).
   Baselines, on a subset of the same points: every vectorized shapely path below (its
   preparation, like our index build, is not timed; a tree over the batch's points is),
   the fastest being "shapely best"; and the newcomer's loop (rtree of bounding boxes,
   then ``polygon.contains(Point)`` per candidate). Shapely runs on one thread, so ratios
   are one core against one core. The layers are partitions: any hit is the answer.
2. Agreement with shapely best: the count of differing answers, and how many of those
   lie within 1e-9 degrees of a boundary of the features involved (our half-open rule
   gives a boundary point to one feature; `contains_xy` gives it to none).
3. National (not with --quick): `national_layer()` via `Layer.from_arrays`; generation
   and index build time and peak RSS in a fresh interpreter, then the figures of 1.
4. Ready time: wall time of a fresh ``python -c "import geofence; geofence.warm_up()"``
   with the kernel cache warm (one run fills it first).
"""

import subprocess

import numpy as np
import rtree
import shapely

from benchmarks.common import (GIB, ROOT, WARM_UP, Report, best_of, cold_and_warm,
                               fill_kernel_cache, log, run_child, uniform_points)
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from sim.national import national_layer

SEED = 20240601
REPEAT = 5
FULL = {"points": 10_000_000, "shapely_points": 1_000_000, "slow_points": 100_000,
        "newcomer_points": 20_000, "shapely_repeat": 3}
QUICK = {"points": 1_000_000, "shapely_points": 200_000, "slow_points": 20_000,
         "newcomer_points": 5_000, "shapely_repeat": 3}
NATIONAL = {"points": 10_000_000, "shapely_points": 1_000_000, "slow_points": 100_000,
            "newcomer_points": 20_000, "shapely_repeat": 2}

FIRST_CALLS = """
t = time.perf_counter()
import numpy as np
import geofence
from geofence.builtin import zaozhuang_geojson
out['import_s'] = time.perf_counter() - t
source = zaozhuang_geojson()
t = time.perf_counter(); layer = geofence.Layer.from_geojson(source)
out['build_s'] = time.perf_counter() - t
xs, ys = np.array([117.2, 117.5]), np.array([34.9, 35.1])
t = time.perf_counter(); layer.locate(xs, ys); out['serial_s'] = time.perf_counter() - t
t = time.perf_counter(); layer.locate(xs, ys, parallel=True)
out['parallel_s'] = time.perf_counter() - t
"""

NATIONAL_BUILD = """
from geofence import Layer
from sim.national import national_layer
t = time.perf_counter(); nl = national_layer(); out['generate_s'] = time.perf_counter() - t
out['generate_rss_bytes'] = peak_rss_bytes()
t = time.perf_counter()
layer = Layer.from_arrays(nl.coords, nl.offsets, nl.codes, nl.names, nl.parents, nl.units)
out['build_s'] = time.perf_counter() - t
out['vertices'] = len(nl.coords); out['features'] = len(layer); out['stats'] = layer.index.stats()
"""


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("locate", {"seed": SEED, "repeat": REPEAT, "zaozhuang": sizes,
                            "national": None if quick else NATIONAL})
    first_calls(rep)
    layer = Layer.from_geojson(zaozhuang_geojson())
    throughputs(rep, "Zaozhuang", layer, sizes, target_mps=30)
    if not quick:
        national(rep)
    ready(rep)
    rep.notes.append("ratios: ours on one core / shapely or the rtree loop (single-threaded)")
    return rep


def first_calls(rep: Report) -> None:
    """Layer build and first locate calls in fresh interpreters, empty and warm cache."""
    for label, res in cold_and_warm(FIRST_CALLS):
        group = f"first calls, {label}"
        rep.add(group, "Zaozhuang layer build", res["build_s"], "s")
        rep.add(group, "first locate, serial", res["serial_s"], "s")
        rep.add(group, "first locate, parallel", res["parallel_s"], "s")


def throughputs(rep: Report, group: str, layer: Layer, sizes: dict, target_mps: float) -> None:
    n = sizes["points"]
    xs, ys = uniform_points(layer.bounds, n, SEED)
    out = np.empty(n, np.int32)
    layer.locate(xs[:100], ys[:100], parallel=True)  # compiled or loaded already; be sure
    serial, _ = best_of(lambda: layer.locate(xs, ys, out), REPEAT)
    ours = n / serial / 1e6
    rep.add(group, "ours, 1 core", ours, "M points/s", at_least=target_mps)
    parallel, _ = best_of(lambda: layer.locate(xs, ys, out, parallel=True), REPEAT)
    rep.add(group, "ours, all cores", n / parallel / 1e6, "M points/s", at_least=target_mps)
    rep.add(group, "points inside a feature", float((out >= 0).mean()), "fraction")

    polys = layer.geometries
    plain = shapely.from_wkb(shapely.to_wkb(polys))  # unprepared copies for the newcomer
    best, answer = 0.0, None
    for name, path in shapely_paths(polys).items():
        k = sizes["slow_points"] if name.endswith("'intersects')") else sizes["shapely_points"]
        t, got = best_of(lambda: path(xs[:k], ys[:k]), sizes["shapely_repeat"])
        rep.add(group, f"shapely {name}", k / t / 1e6, "M points/s")
        if k / t / 1e6 > best:
            best, answer = k / t / 1e6, got
    rep.add(group, "ours / shapely best", ours / best, "x", at_least=20)
    k = sizes["newcomer_points"]
    t, _ = best_of(lambda: newcomer(plain, xs[:k], ys[:k]), 1)
    rep.add(group, "newcomer rtree + contains loop", k / t / 1e6, "M points/s")
    rep.add(group, "ours / newcomer", ours / (k / t / 1e6), "x")
    agreement(rep, group, polys, xs[:len(answer)], ys[:len(answer)], out[:len(answer)], answer)


def shapely_paths(polys: np.ndarray) -> dict:
    """Vectorized shapely ways to find each point's polygon (-1: none), ready to time."""
    shapely.prepare(polys)
    tree = shapely.STRtree(polys)
    bounds = shapely.bounds(polys)

    def bbox_sweep(xs, ys):  # prepared contains_xy per polygon over its bbox candidates
        order = np.argsort(xs)
        sorted_x = xs[order]
        found = np.full(len(xs), -1, np.int32)
        for k, (x0, y0, x1, y1) in enumerate(bounds):
            lo, hi = np.searchsorted(sorted_x, x0, "left"), np.searchsorted(sorted_x, x1, "right")
            cand = order[lo:hi]
            cand = cand[(ys[cand] >= y0) & (ys[cand] <= y1)]
            found[cand[shapely.contains_xy(polys[k], xs[cand], ys[cand])]] = k
        return found

    def tree_pairs(xs, ys):  # STRtree bbox pairs, then one vectorized prepared contains_xy
        i, j = tree.query(shapely.points(xs, ys))
        hit = shapely.contains_xy(polys[j], xs[i], ys[i])
        return _answers(len(xs), i[hit], j[hit])

    def points_tree(xs, ys):  # a tree over the points, queried with the prepared polygons
        j, i = shapely.STRtree(shapely.points(xs, ys)).query(polys, predicate="contains")
        return _answers(len(xs), i, j)

    def tree_intersects(xs, ys):  # the documented one-liner
        return _answers(len(xs), *tree.query(shapely.points(xs, ys), predicate="intersects"))

    return {"contains_xy over bbox sweep": bbox_sweep,
            "contains_xy over STRtree pairs": tree_pairs,
            "STRtree(points).query(polys, 'contains')": points_tree,
            "STRtree(polys).query(points, 'intersects')": tree_intersects}


def _answers(n: int, point: np.ndarray, feature: np.ndarray) -> np.ndarray:
    found = np.full(n, -1, np.int32)
    found[point] = feature
    return found


def newcomer(polys: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """What a newcomer writes: an rtree of bounding boxes and a Python loop per point."""
    index = rtree.index.Index((k, b.tolist(), None) for k, b in enumerate(shapely.bounds(polys)))
    found = np.full(len(xs), -1, np.int32)
    for n, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        point = shapely.Point(x, y)
        for k in index.intersection((x, y, x, y)):
            if polys[k].contains(point):
                found[n] = k
                break
    return found


def agreement(rep: Report, group: str, polys, xs, ys, ours, theirs) -> None:
    diff = np.flatnonzero(ours != theirs)
    rep.add(group, f"answers differing from shapely (of {len(xs):,})", len(diff), "points")
    pairs = [(d, f) for d in diff.tolist() for f in {int(ours[d]), int(theirs[d])} if f >= 0]
    far = set()
    if pairs:
        p, f = np.array(pairs).T
        dist = shapely.distance(shapely.boundary(polys[f]), shapely.points(xs[p], ys[p]))
        far = set(p[dist > 1e-9].tolist())
    rep.add(group, "  of which farther than 1e-9 deg from a boundary", len(far), "points",
            at_most=0)


def national(rep: Report) -> None:
    log("locate: national layer, generate + build in a fresh interpreter")
    res = run_child(NATIONAL_BUILD)
    group = "national"
    rep.add(group, "features", res["features"], "townships")
    rep.add(group, "vertices", res["vertices"], "")
    rep.add(group, "generation", res["generate_s"], "s")
    rep.add(group, "index build", res["build_s"], "s", at_most=60)
    rep.add(group, "index size", res["stats"]["index_bytes"] / 2**20, "MiB")
    rep.add(group, "peak RSS after generation", res["generate_rss_bytes"] / GIB, "GiB")
    rep.add(group, "peak RSS after build", res["peak_rss_bytes"] / GIB, "GiB", at_most=2)
    log("locate: national layer, generate + build here for throughput")
    nl = national_layer()
    layer = Layer.from_arrays(nl.coords, nl.offsets, nl.codes, nl.names, nl.parents, nl.units)
    del nl
    throughputs(rep, group, layer, NATIONAL, target_mps=20)


def ready(rep: Report) -> None:
    fill_kernel_cache()
    t, _ = best_of(lambda: subprocess.run(WARM_UP, cwd=ROOT, check=True), 3)
    rep.add("ready", "fresh import geofence + warm_up()", t, "s", at_most=2)
