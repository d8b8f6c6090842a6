"""The engine's built-in layer: Zaozhuang's 66 real townships on generated shapes.

Real township boundaries cannot ship with the code, yet the engine, its demo and its tests
must run on data that behaves like them: wiggly borders with hundreds to thousands of
vertices, borders shared bitwise between neighbours (no gaps, no overlaps), multipolygons
and an enclave. This generator builds such a layer from a seed alone (`sim.lattice`):
hexagons grouped into the 6 real counties by weighted growth from their rough centres
(areas in proportion to the real ones), then into the real townships of each (codes and
names from `sim/data/zaozhuang-townships.csv`), inside a rough outline of the city.

The engine does not run this generator: it loads the file it wrote
(`geofence/data/zaozhuang.geojson.gz`, read by `geofence.builtin`), and a test checks that
the file is exactly what the generator makes. After changing the generator, regenerate it:

    python -m sim.zaozhuang
"""

import copy
import csv
import gzip
import heapq
import io
import json
import math
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import shapely

from geofence.builtin import BUILTIN_LAYER_PATH
from sim.lattice import JITTER_FRACTION, SyntheticLayer, fractal_edges, warp

ZAOZHUANG_EXTENT_DEG = (116.8, 34.4, 117.8, 35.3)  # lon_min, lat_min, lon_max, lat_max
ZAOZHUANG_HEX_RADIUS_DEG = 0.015  # hexagon centre-to-corner, in degrees of latitude (~1.7 km)
ZAOZHUANG_SEGMENTS_PER_EDGE = 64
ZAOZHUANG_SEED = 3704
ZAOZHUANG_LON_SCALE = 0.82  # cos(34.85 deg): km per degree of lon / km per degree of lat
# Rough city outline (lon, lat): wide Tengzhou/Shanting north, narrowing to Taierzhuang (SE).
ZAOZHUANG_OUTLINE_DEG = (
    (116.84, 35.20), (116.97, 35.28), (117.20, 35.26), (117.45, 35.28), (117.66, 35.22),
    (117.77, 35.05), (117.71, 34.86), (117.79, 34.66), (117.78, 34.42), (117.52, 34.42),
    (117.42, 34.56), (117.24, 34.62), (117.08, 34.72), (116.90, 34.90), (116.82, 35.05),
)  # fmt: skip
ZAOZHUANG_CITY = {"code": "3704", "name": "枣庄市", "parent": None}
# county code: (name, rough centre (lon, lat), area in km^2 used as growth quota)
ZAOZHUANG_COUNTIES = {
    "370402": ("市中区", (117.56, 34.86), 380.0),
    "370403": ("薛城区", (117.24, 34.74), 429.0),
    "370404": ("峄城区", (117.56, 34.68), 628.0),
    "370405": ("台儿庄区", (117.67, 34.52), 538.0),
    "370406": ("山亭区", (117.48, 35.12), 1019.0),
    "370481": ("滕州市", (117.08, 35.06), 1485.0),
}
URBAN_QUOTA_WEIGHT = 0.6  # subdistricts (街道) and development zones are smaller than towns


def zaozhuang_layer_arrays() -> SyntheticLayer:
    """The 66 real Zaozhuang township codes and names on generated shapes, as ragged arrays.

    Built once per process; every call returns a fresh copy that the caller may mutate.
    """
    return copy.deepcopy(_zaozhuang_layer())


def builtin_layer_json() -> bytes:
    """The generated layer as compact UTF-8 GeoJSON with `units`: what the engine's built-in
    layer file holds (`geofence.builtin`), gzip aside."""
    doc = _zaozhuang_layer().to_geojson()
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_builtin_layer(path: Path = BUILTIN_LAYER_PATH) -> None:
    """Write `builtin_layer_json()` gzipped to `path`, atomically, the same bytes every run."""
    data = gzip.compress(builtin_layer_json(), compresslevel=9, mtime=0)
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)


@cache
def _zaozhuang_layer() -> SyntheticLayer:
    text = (files("sim") / "data" / "zaozhuang-townships.csv").read_text(encoding="utf-8")
    towns = list(csv.DictReader(io.StringIO(text)))
    centres, edges = _hex_mesh(np.random.default_rng(ZAOZHUANG_SEED))
    labels = _zaozhuang_labels(towns, centres)
    polygons = [_township_polygons(labels, t, edges) for t in range(len(towns))]
    rings = [ring for poly in polygons for part in poly for ring in part]
    counts = ([len(r) for r in rings], [len(part) for poly in polygons for part in poly],
              [len(poly) for poly in polygons])  # fmt: skip
    offsets = tuple(np.concatenate([[0], np.cumsum(n)]).astype(np.int64) for n in counts)
    units = [dict(ZAOZHUANG_CITY)] + [
        {"code": code, "name": name, "parent": ZAOZHUANG_CITY["code"]}
        for code, (name, _, _) in ZAOZHUANG_COUNTIES.items()
    ]
    codes, names, parents = ([t[key] for t in towns] for key in ("code", "name", "areaCode"))
    return SyntheticLayer(np.concatenate(rings), offsets, codes, names, parents, units)


def _hex_neighbours(r: int, c: int) -> list[tuple[int, int]]:
    """Neighbours of a pointy-top hexagon (odd rows shifted east), counter-clockwise from east."""
    p = r & 1
    return [(r, c + 1), (r + 1, c + p), (r + 1, c + p - 1),
            (r, c - 1), (r - 1, c + p - 1), (r - 1, c + p)]  # fmt: skip


def _hex_mesh(rng) -> tuple[np.ndarray, np.ndarray]:
    """Centres (ny, nx, 2) and owned edges (ny, nx, 3, n+1, 2) of a jittered hexagonal lattice.

    Each hexagon owns its east (corner 330->30 deg), north-east (30->90) and north-west
    (90->150) edges; the other three are its neighbours' (reversed). Corners are the N and S
    nodes of the hexagons around them.
    """
    x0, y0, x1, y1 = ZAOZHUANG_EXTENT_DEG
    s = ZAOZHUANG_HEX_RADIUS_DEG
    w = math.sqrt(3.0) * s / ZAOZHUANG_LON_SCALE  # column spacing, degrees of longitude
    nx, ny = int((x1 - x0) / w - 0.5), int((y1 - y0 - 2 * s) / (1.5 * s)) + 1
    rr, cc = np.meshgrid(np.arange(-1, ny + 1), np.arange(-1, nx + 1), indexing="ij")  # padded
    centre = np.stack([x0 + (cc + 0.5 + 0.5 * (rr & 1)) * w, y0 + s + 1.5 * s * rr], -1)
    scale = JITTER_FRACTION * np.array([w / math.sqrt(3.0), s])
    north = centre + (0.0, s) + rng.uniform(-1, 1, centre.shape) * scale
    south = centre - (0.0, s) + rng.uniform(-1, 1, centre.shape) * scale
    r, c = rr[1:-1, 1:-1] + 1, cc[1:-1, 1:-1] + 1  # padded indices of the real hexagons
    p = (r - 1) & 1
    n330, s30 = north[r - 1, c + p], south[r + 1, c + p]  # corners at 330 and 30 degrees
    n90, s150 = north[r, c], south[r + 1, c + p - 1]
    n_seg = ZAOZHUANG_SEGMENTS_PER_EDGE
    owned = [fractal_edges(a.reshape(-1, 2), b.reshape(-1, 2), n_seg, rng)
             for a, b in ((n330, s30), (s30, n90), (n90, s150))]  # fmt: skip
    edges = np.stack(owned, axis=1).reshape(ny, nx, 3, n_seg + 1, 2)
    edges = warp(edges, ZAOZHUANG_EXTENT_DEG, (nx, ny), np.array([w, 1.5 * s]), rng)
    return centre[1:-1, 1:-1], edges


def _zaozhuang_labels(towns: list[dict], centres: np.ndarray) -> np.ndarray:
    """(ny, nx) township index per hexagon, -1 outside: grow counties, then townships in each."""
    outline = shapely.Polygon(ZAOZHUANG_OUTLINE_DEG)
    inside = shapely.contains_xy(outline, centres[..., 0], centres[..., 1])
    inside[[0, -1]], inside[:, [0, -1]] = False, False  # outer borders stay inside the extent
    squash = np.array([ZAOZHUANG_LON_SCALE, 1.0])
    xy = centres * squash  # ~isotropic plane for distances

    def nearest(cells: np.ndarray, lonlat) -> tuple[int, int]:
        dist = ((xy[tuple(cells.T)] - lonlat * squash) ** 2).sum(1)
        return tuple(cells[np.argmin(dist)].tolist())

    county_codes = list(ZAOZHUANG_COUNTIES)
    seeds = [nearest(np.argwhere(inside), ZAOZHUANG_COUNTIES[q][1]) for q in county_codes]
    county = _grow(inside, seeds, [ZAOZHUANG_COUNTIES[q][2] for q in county_codes], xy)
    labels = np.full(inside.shape, -1)
    for k, q in enumerate(county_codes):
        members = [i for i, t in enumerate(towns) if t["areaCode"] == q]
        urban = [i for i in members if towns[i]["code"][6] != "1"]  # 街道 0xx, 开发区 4xx
        members = urban + [i for i in members if i not in urban]
        own = np.argwhere(county == k)
        seeds = _spread_seeds(own, len(members), nearest(own, ZAOZHUANG_COUNTIES[q][1]), xy)
        quotas = [URBAN_QUOTA_WEIGHT if i in urban else 1.0 for i in members]
        grown = _grow(county == k, seeds, quotas, xy)
        labels[grown >= 0] = np.asarray(members)[grown[grown >= 0]]
    return _make_exclave(labels)


def _spread_seeds(cells: np.ndarray, k: int, centre, xy) -> list[tuple[int, int]]:
    """k spread-out seed cells (farthest-point sampling + 3 Lloyd steps), nearest centre first."""
    pts, cell_list = xy[tuple(cells.T)], [tuple(cell) for cell in cells.tolist()]
    chosen = [cell_list.index(centre)]
    dist = ((pts - pts[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, ((pts - pts[chosen[-1]]) ** 2).sum(1))
    means = pts[chosen]
    for _ in range(3):
        nearest = np.argmin(((pts[:, None] - means[None]) ** 2).sum(2), axis=1)
        means = np.array([pts[nearest == j].mean(0) if np.any(nearest == j) else means[j]
                          for j in range(k)])  # fmt: skip
    seeds: list[tuple[int, int]] = []
    for m in means:  # snap to distinct cells
        order = np.argsort(((pts - m) ** 2).sum(1), kind="stable")
        seeds.append(next(cell_list[i] for i in order if cell_list[i] not in seeds))
    return sorted(seeds, key=lambda cell: (((xy[cell] - xy[centre]) ** 2).sum(), cell))


def _grow(mask: np.ndarray, seeds, quotas, xy) -> np.ndarray:
    """Label mask cells by growing all regions at once, nearest (distance^2 / quota) first.

    The result is a weighted Voronoi partition in which every region stays connected.
    """
    labels = np.full(mask.shape, -1)
    heap = [(0.0, k, seed) for k, seed in enumerate(seeds)]
    while heap:
        _, k, cell = heapq.heappop(heap)
        if labels[cell] >= 0:
            continue
        labels[cell] = k
        for nb in _hex_neighbours(*cell):
            if _at(mask, nb, False) and labels[nb] < 0:
                dist = float(((xy[nb] - xy[seeds[k]]) ** 2).sum()) / quotas[k]
                heapq.heappush(heap, (dist, k, nb))
    return labels


def _make_exclave(labels: np.ndarray) -> np.ndarray:
    """Give one fully surrounded hexagon to a nearby township: an exclave that fills a hole."""
    for cell in map(tuple, np.argwhere(labels >= 0).tolist()):
        ring1 = _hex_neighbours(*cell)
        if all(_at(labels, nb, -1) == labels[cell] for nb in ring1):
            ring2 = {nb for nb1 in ring1 for nb in _hex_neighbours(*nb1)}
            near = sorted({int(_at(labels, nb, -1)) for nb in ring2} - {-1, int(labels[cell])})
            if near:
                labels[cell] = near[0]
                return labels
    raise RuntimeError("no fully surrounded hexagon for an exclave")


def _township_polygons(labels: np.ndarray, t: int, edges: np.ndarray) -> list[list[np.ndarray]]:
    """[[shell, *holes], ...] of township t, largest first, by chaining its border edges."""
    step = {}  # start point -> edge points; lattice nodes have 3 edges, so starts are unique
    for r, c in np.argwhere(labels == t).tolist():
        for k, (a, b) in enumerate(_hex_neighbours(r, c)):
            if _at(labels, (a, b), -1) != t:
                pts = edges[r, c, k] if k < 3 else edges[a, b, k - 3, ::-1]
                step[tuple(pts[0].tolist())] = pts
    shells, holes = [], []
    while step:
        start = key = min(step)
        parts = []
        while not parts or key != start:
            parts.append(step.pop(key))
            key = tuple(parts[-1][-1].tolist())
        ring = np.concatenate([pts[:-1] for pts in parts] + [parts[0][:1]])
        (shells if _signed_area(ring) > 0 else holes).append(ring)
    shells.sort(key=_signed_area, reverse=True)
    polygons = [[shell] for shell in shells]
    for hole in holes:
        inside = [shapely.contains_xy(shapely.Polygon(shell), *hole[0]) for shell in shells]
        polygons[inside.index(True) if len(shells) > 1 else 0].append(hole)
    return polygons


def _at(grid: np.ndarray, cell: tuple[int, int], default):
    """grid[cell], or `default` outside the grid."""
    inside = 0 <= cell[0] < grid.shape[0] and 0 <= cell[1] < grid.shape[1]
    return grid[cell] if inside else default


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring, positive when counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


if __name__ == "__main__":
    write_builtin_layer()
    print(f"wrote {BUILTIN_LAYER_PATH}")
