"""Seeded, deterministic synthetic jurisdiction layers for tests, demos and benchmarks.

Why: real township boundaries cannot ship with the code, yet the engine must be exercised on
data that behaves like them: wiggly borders with hundreds to thousands of vertices, borders
shared bitwise between neighbours (no gaps, no overlaps), multipolygons and enclaves, and at
national scale tens of thousands of townships with over ten million vertices. These generators
build such layers from a seed alone, identically on every run and machine (seeded PCG64 and
plain IEEE arithmetic only, no libm or BLAS calls; nothing depends on hash-randomized order).

Construction: a jittered lattice (hexagons for Zaozhuang, quads for the national layer). Every
lattice edge is fractalized once by midpoint displacement perpendicular to its chord, clipped to
a thin rhombus around the chord so edges never cross; then the whole plane is bent by a smooth
one-to-one warp. A township is a set of cells; its rings chain the edges separating it from
other townships or the outside, and both neighbours reuse the very same edge array (one of them
reversed), so shared borders are identical by construction. Coordinates are rounded to 7
decimals like real data.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import heapq
import io
import json
import math
import os
from functools import cache
from importlib.resources import files

import numpy as np
import shapely

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

NATIONAL_EXTENT_DEG = (75.0, 18.0, 134.0, 53.0)
NATIONAL_COUNTY_CELLS = 4  # a county is a 4 x 4 block of townships (real mean: ~14)
NATIONAL_PROVINCE_GRID = (7, 5)  # at most 7 x 5 provinces
NATIONAL_COUNTRY = {"code": "100000", "name": "全国（合成）", "parent": None}

COORD_DECIMALS = 7
JITTER_FRACTION = 0.15  # node jitter, fraction of the cell size (quad corners stay > 43 deg)
EDGE_SLOPE_MAX = 0.36  # |offset| <= slope * distance to the nearer end (tan 19.8 deg)
DISPLACEMENT_FRACTION = 0.15  # first-level midpoint displacement, fraction of the chord
ROUGHNESS = 0.6  # displacement ratio from one level to the next
WARP_SPACING_CELLS = 5  # smooth warp: control points about every 5 cells, ...
WARP_FRACTION = 0.6  # ... each displaced up to 0.6 cell (warp gradient <= ~0.4: one-to-one)


@dataclasses.dataclass(frozen=True)
class SyntheticLayer:
    """A layer in shapely's ragged-array form for MULTIPOLYGON (no shapely objects needed).

    `coords` (N, 2) float64 lon/lat, rings closed, outer rings counter-clockwise, holes clockwise;
    `offsets` = (ring offsets into coords, polygon offsets into rings, feature offsets into
    polygons), as `shapely.to_ragged_array` returns and `shapely.from_ragged_array` accepts.
    `units` are the {code, name, parent} ancestors (counties up to the root) of the features.
    """

    coords: np.ndarray
    offsets: tuple[np.ndarray, np.ndarray, np.ndarray]
    codes: list[str]
    names: list[str]
    parents: list[str]
    units: list[dict]

    def __len__(self) -> int:
        return len(self.codes)

    def geometries(self) -> np.ndarray:
        """The features as an array of shapely MultiPolygons."""
        kind = shapely.GeometryType.MULTIPOLYGON
        return shapely.from_ragged_array(kind, self.coords, self.offsets)

    def to_geojson(self) -> dict:
        """An RFC 7946 FeatureCollection with a `units` member (meant for small layers)."""
        rings, polys, feats = (o.tolist() for o in self.offsets)
        ring = [self.coords[a:b].tolist() for a, b in zip(rings[:-1], rings[1:])]
        features = []
        for i, (code, name, parent) in enumerate(zip(self.codes, self.names, self.parents)):
            parts = [ring[polys[p] : polys[p + 1]] for p in range(feats[i], feats[i + 1])]
            geometry = {"type": "MultiPolygon", "coordinates": parts}
            if len(parts) == 1:
                geometry = {"type": "Polygon", "coordinates": parts[0]}
            props = {"code": code, "name": name, "parent": parent}
            features.append({"type": "Feature", "properties": props, "geometry": geometry})
        units = [dict(u) for u in self.units]
        return {"type": "FeatureCollection", "units": units, "features": features}


# ---------------------------------------------------------------- edges shared by both layers


def _fractal_edges(p0: np.ndarray, p1: np.ndarray, n_seg: int, rng) -> np.ndarray:
    """(E, n_seg+1, 2) wiggly polylines from p0 to p1 (E, 2) by midpoint displacement.

    Offsets are perpendicular to the chord (each edge is a graph over its chord: simple) and
    clipped to |offset| <= EDGE_SLOPE_MAX * distance to the nearer end (a rhombus around the
    chord), so edges meeting at a node at more than 40 degrees can never cross.
    """
    if n_seg < 1 or n_seg & (n_seg - 1):
        raise ValueError(f"segments per edge must be a power of two, got {n_seg}")
    offset = np.zeros((len(p0), n_seg + 1))
    step, amp = n_seg, DISPLACEMENT_FRACTION
    while step > 1:
        half = step // 2
        mid = np.arange(half, n_seg, step)
        noise = rng.uniform(-amp, amp, (len(p0), mid.size))
        offset[:, mid] = 0.5 * (offset[:, mid - half] + offset[:, mid + half]) + noise
        step, amp = half, amp * ROUGHNESS
    t = np.linspace(0.0, 1.0, n_seg + 1)
    envelope = EDGE_SLOPE_MAX * np.minimum(t, 1.0 - t)
    np.clip(offset, -envelope, envelope, out=offset)
    chord = p1 - p0
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1)
    pts = p0[:, None] + t[None, :, None] * chord[:, None] + offset[:, :, None] * normal[:, None]
    pts[:, 0], pts[:, -1] = p0, p1  # exact shared nodes
    return pts


def _warp(pts: np.ndarray, extent, cells: tuple[int, int], cell, rng) -> np.ndarray:
    """pts bent by a smooth random warp (smoothstep-blended control grid), rounded.

    Arithmetic only, so equal inputs give bitwise-equal outputs anywhere; the frame of the
    extent stays put and the gradient stays well below 1, so curves that did not cross still
    do not.
    """
    cols, rows = (-(-n // WARP_SPACING_CELLS) + 1 for n in cells)
    control = rng.uniform(-WARP_FRACTION, WARP_FRACTION, (rows, cols, 2)) * cell
    control[[0, -1]], control[:, [0, -1]] = 0.0, 0.0
    x0, y0, x1, y1 = extent
    u = np.clip((pts[..., 0] - x0) / (x1 - x0), 0.0, 1.0) * (cols - 1)
    v = np.clip((pts[..., 1] - y0) / (y1 - y0), 0.0, 1.0) * (rows - 1)
    i, j = np.minimum(u.astype(np.int64), cols - 2), np.minimum(v.astype(np.int64), rows - 2)
    su, sv = u - i, v - j
    su, sv = (su * su * (3.0 - 2.0 * su))[..., None], (sv * sv * (3.0 - 2.0 * sv))[..., None]
    flat, k = control.reshape(-1, 2), j * cols + i
    bottom = flat.take(k, axis=0) * (1.0 - su) + flat.take(k + 1, axis=0) * su
    top = flat.take(k + cols, axis=0) * (1.0 - su) + flat.take(k + cols + 1, axis=0) * su
    return np.round(pts + bottom * (1.0 - sv) + top * sv, COORD_DECIMALS)


# ---------------------------------------------------------------- national layer


def national_layer(
    n_townships: int = 41000, vertices_per_border_side: int = 64, seed: int = 0
) -> SyntheticLayer:
    """A national-scale partition of lon 75-134, lat 18-53 into quad-like wiggly townships.

    Exactly `n_townships` features when n has a factor pair giving cells within 2:1 of square
    (41000 = 250 x 164), else the nearest nx * ny. Each feature is one ring of
    4 * vertices_per_border_side + 1 coordinates (a power of two per side): 10.5 million at the
    defaults. Townships form 4 x 4 counties, counties at most 7 x 5 provinces. Fully vectorized.
    """
    nx, ny = _grid_shape(n_townships, NATIONAL_EXTENT_DEG)
    x0, y0, x1, y1 = NATIONAL_EXTENT_DEG
    cell = np.array([(x1 - x0) / nx, (y1 - y0) / ny])
    rng = np.random.default_rng(seed)
    nodes = np.stack(np.meshgrid(np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1)), -1)
    nodes[1:-1, 1:-1] += rng.uniform(-JITTER_FRACTION, JITTER_FRACTION, (ny - 1, nx - 1, 2)) * cell
    s = vertices_per_border_side
    # h[r, c] runs node (r, c) -> (r, c+1); v[r, c] runs node (r, c) -> (r+1, c)
    h = _fractal_edges(nodes[:, :-1].reshape(-1, 2), nodes[:, 1:].reshape(-1, 2), s, rng)
    v = _fractal_edges(nodes[:-1].reshape(-1, 2), nodes[1:].reshape(-1, 2), s, rng)
    hv = _warp(np.concatenate([h, v]), NATIONAL_EXTENT_DEG, (nx, ny), cell, rng)  # one warp
    h, v = hv[: len(h)].reshape(ny + 1, nx, s + 1, 2), hv[len(h) :].reshape(ny, nx + 1, s + 1, 2)
    r, c = np.divmod(np.arange(nx * ny), nx)
    south, east, north, west = h[r, c], v[r, c + 1], h[r + 1, c, ::-1], v[r, c, ::-1]
    ring = [south[:, :s], east[:, :s], north[:, :s], west[:, :s], south[:, :1]]
    coords = np.concatenate(ring, axis=1).reshape(-1, 2)  # counter-clockwise, closed
    one = np.arange(nx * ny + 1, dtype=np.int64)
    codes, parents, units = _national_codes(r, c, nx, ny)
    names = [f"合成镇{code}" for code in codes]
    offsets = (one * (4 * s + 1), one, one.copy())
    return SyntheticLayer(coords, offsets, codes, names, parents, units)


def _grid_shape(n: int, extent) -> tuple[int, int]:
    """(nx, ny) with nx * ny == n and near-square cells if possible, else nx * ny ~= n."""
    if n < 1:
        raise ValueError(f"n_townships must be positive, got {n}")
    width, height = extent[2] - extent[0], extent[3] - extent[1]
    aspect = {ny: width * ny / (height * (n // ny)) for ny in range(1, n + 1) if n % ny == 0}
    skew = {ny: max(q, 1.0 / q) for ny, q in aspect.items()}  # cell width/height or inverse
    ny = min(skew, key=skew.get)
    if skew[ny] > 2.0:
        ny = max(1, round(math.sqrt(n * height / width)))
    return max(1, round(n / ny)), ny


def _national_codes(r: np.ndarray, c: np.ndarray, nx: int, ny: int):
    """9-digit township codes: province (2 digits) + county in province (4) + township (3)."""
    k, (pcols, prows) = NATIONAL_COUNTY_CELLS, NATIONAL_PROVINCE_GRID
    pw, ph = -(-nx // (k * pcols)), -(-ny // (k * prows))  # counties per province, each way
    crow, ccol = r // k, c // k
    province = 11 + (crow // ph) * pcols + ccol // pw
    county = (crow % ph) * pw + ccol % pw + 1
    town = (r % k) * k + c % k + 1
    triples = zip(province.tolist(), county.tolist(), town.tolist())
    codes = [f"{p:02d}{q:04d}{t:03d}" for p, q, t in triples]  # like 370481101
    parents = [code[:6] for code in codes]
    counties = sorted(set(parents))
    units = [dict(NATIONAL_COUNTRY)]
    units += [{"code": p, "name": f"合成省{p}", "parent": NATIONAL_COUNTRY["code"]}
              for p in sorted({q[:2] for q in counties})]  # fmt: skip
    units += [{"code": q, "name": f"合成县{q}", "parent": q[:2]} for q in counties]
    return codes, parents, units


# ---------------------------------------------------------------- Zaozhuang


def zaozhuang_layer_arrays() -> SyntheticLayer:
    """The 66 real Zaozhuang township codes and names on generated shapes, as ragged arrays.

    Built once per process; every call returns a fresh copy that the caller may mutate.
    """
    return copy.deepcopy(_zaozhuang_layer())


def zaozhuang_geojson() -> dict:
    """The Zaozhuang layer as a FeatureCollection with `units` (city, counties); a fresh dict."""
    return _zaozhuang_layer().to_geojson()


def write_zaozhuang_geojson(path: str | os.PathLike) -> None:
    """Write `zaozhuang_geojson()` to `path` as UTF-8 JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(zaozhuang_geojson(), f, ensure_ascii=False)


@cache
def _zaozhuang_layer() -> SyntheticLayer:
    text = (files("geofence") / "data" / "zaozhuang-townships.csv").read_text(encoding="utf-8")
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
    owned = [_fractal_edges(a.reshape(-1, 2), b.reshape(-1, 2), n_seg, rng)
             for a, b in ((n330, s30), (s30, n90), (n90, s150))]  # fmt: skip
    edges = np.stack(owned, axis=1).reshape(ny, nx, 3, n_seg + 1, 2)
    edges = _warp(edges, ZAOZHUANG_EXTENT_DEG, (nx, ny), np.array([w, 1.5 * s]), rng)
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
