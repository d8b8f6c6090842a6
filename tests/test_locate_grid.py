"""`LocateIndex.locate` (grid + self-contained mixed cells) answers exactly as the reference.

The grid must never change an answer of the crossing rule: every point gets the same
feature as `tests.locate_reference.locate_bruteforce`, bit for bit. Points that stress the
grid are probed on purpose: vertices and edge midpoints (on the boundaries), corners of
mixed cells and points on their right and top borders (where the mixed-cell parity is
anchored), lines of the sub-cell tables, and each of those nudged by one ulp either way.
"""

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence._algorithms import grid
from geofence.index import FlatGeometry, LocateIndex
from tests.locate_reference import locate_bruteforce

CORNER_AND_CELL = [grid.G_X0, grid.G_Y0, grid.G_CW, grid.G_CH]  # slots of the grid's parameters

SEEDS = st.integers(0, 2**32 - 1)


def flat(features) -> FlatGeometry:
    """FlatGeometry from features given as lists of parts, each a list of rings (xy arrays)."""
    coords, rings, parts, feats = [], [0], [0], [0]
    for feature in features:
        for part in feature:
            for ring in part:
                ring = np.asarray(ring, np.float64)
                if not np.array_equal(ring[0], ring[-1]):
                    ring = np.vstack([ring, ring[:1]])
                coords.append(ring)
                rings.append(rings[-1] + len(ring))
            parts.append(len(rings) - 1)
        feats.append(len(parts) - 1)
    return FlatGeometry(np.ascontiguousarray(np.vstack(coords)), np.array(rings),
                        np.array(parts), np.array(feats))


def from_shapely(geoms) -> FlatGeometry:
    polys = [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in geoms]
    _, coords, offsets = shapely.to_ragged_array(np.array(polys, dtype=object))
    return FlatGeometry.from_ragged(coords, offsets)


def segmentize(ring, step):
    """Split every edge into pieces of at most ``step``, with points computed from the
    lexicographically smaller endpoint so that two features sharing an edge get the
    very same points (shapely.segmentize depends on direction, leaving ulp-wide gaps)."""
    out = [ring[:1]]
    for a, b in zip(ring[:-1], ring[1:]):
        k = int(np.ceil(np.hypot(*(b - a)) / step))
        lo, hi = (a, b) if tuple(a) <= tuple(b) else (b, a)
        t = np.arange(1, k)[:, None] / k
        mid = lo + t * (hi - lo)
        out += [mid if lo is a else mid[::-1], b[None]]
    return np.vstack(out)


def voronoi_partition(rng, n, step):
    """A gap-free partition: Voronoi cells (shared vertices exact), segmentized alike."""
    seeds = shapely.multipoints(rng.uniform(0, 1, (n, 2)))
    cells = shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=shapely.box(0, 0, 1, 1)))
    rings = [shapely.get_coordinates(c.exterior) for c in cells]
    return flat([[[segmentize(r, step)]] for r in rings])


def probe_points(index: LocateIndex, rng, n_random=3000):
    """Random points plus every point where the grid could plausibly go wrong."""
    g = index.geometry
    xy = g.coords
    gx0, gy0, cw, ch = index.grid[CORNER_AND_CELL]
    nx = int(index.grid[grid.G_NX])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = (hi - lo) * 0.05
    pts = [xy]
    mixed = np.flatnonzero(index.cells <= -2)
    cell = rng.choice(mixed, min(len(mixed), 400), replace=False) if len(mixed) else mixed
    i, j = cell % nx, cell // nx
    for di in (0, 1):
        for dj in (0, 1):  # corners, computed as the builder computes cell borders
            pts.append(np.c_[gx0 + (i + di) * cw, gy0 + (j + dj) * ch])
    t = rng.uniform(0, 1, len(cell))
    pts.append(np.c_[gx0 + (i + 1) * cw, gy0 + (j + t) * ch])     # right borders
    pts.append(np.c_[gx0 + (i + t) * cw, gy0 + (j + 1) * ch])     # top borders
    k = rng.integers(0, grid.SUB + 1, (2, len(cell)))
    pts.append(np.c_[(gx0 + i * cw) + k[0] * (cw / grid.SUB),     # sub-cell corners
                     (gy0 + j * ch) + k[1] * (ch / grid.SUB)])
    p = np.vstack(pts)
    p = np.vstack([p, np.nextafter(p, np.inf), np.nextafter(p, -np.inf),  # one ulp off
                   rng.uniform(lo - pad, hi + pad, (n_random, 2)), (xy[:-1] + xy[1:]) / 2])
    return p[:, 0].copy(), p[:, 1].copy()


def assert_exact(index: LocateIndex, xs, ys):
    got = index.locate(xs, ys)
    want = locate_bruteforce(index, xs, ys)
    bad = np.flatnonzero(got != want)
    assert not len(bad), (f"{len(bad)} of {len(xs)} differ, e.g. ({xs[bad[0]]!r}, "
                          f"{ys[bad[0]]!r}): locate {got[bad[0]]}, reference {want[bad[0]]}")
    np.testing.assert_array_equal(index.locate(xs, ys, parallel=True), got)
    return got


@settings(max_examples=12, deadline=None)
@given(seed=SEEDS, n=st.integers(2, 60), step=st.sampled_from([0.004, 0.01, 0.03, 1.0]))
def test_voronoi_partition_matches_reference_and_covers_once(seed, n, step):
    rng = np.random.default_rng(seed)
    index = LocateIndex.build(voronoi_partition(rng, n, step))
    xs, ys = probe_points(index, rng)
    assert_exact(index, xs, ys)
    # inside the union, each vertex and midpoint has odd parity for exactly one feature
    xy = index.geometry.coords
    hi = xy.max(axis=0)
    p = np.vstack([xy, (xy[:-1] + xy[1:]) / 2])
    p = p[(p[:, 0] < hi[0]) & (p[:, 1] < hi[1])]
    owners = index.locate(p[:, 0], p[:, 1])
    assert (owners >= 0).all()
    hits = sum(index.contains(f, p[:, 0], p[:, 1]).astype(int)
               for f in range(index.geometry.n_features))
    assert (hits == 1).all()


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS, n=st.integers(4, 40))
def test_vertices_and_edges_on_grid_lines(seed, n):
    """Snap vertices onto the cell and sub-cell lines of the layer's own grid (same bbox and
    edge count, so the same grid): edges then run along cell borders and through corners."""
    rng = np.random.default_rng(seed)
    layer = voronoi_partition(rng, n, 0.01)
    gx0, gy0, cw, ch = LocateIndex.build(layer).grid[CORNER_AND_CELL]
    xy = layer.coords.copy()
    lo, hi = xy.min(axis=0), xy.max(axis=0)

    def snap(v, origin, size, lo, hi):
        f = (v - origin) / size
        cell = np.floor(f)
        sub = np.round((f - cell) * grid.SUB)
        line = (origin + cell * size) + sub * (size / grid.SUB)
        near = np.abs(line - v) < 0.3 * size / grid.SUB
        inner = (v > lo + size) & (v < hi - size)
        return np.where(near & inner, line, v)

    xy[:, 0] = snap(xy[:, 0], gx0, cw, lo[0], hi[0])
    xy[:, 1] = snap(xy[:, 1], gy0, ch, lo[1], hi[1])
    snapped = FlatGeometry(xy, layer.ring_offsets, layer.part_offsets, layer.feature_offsets)
    index = LocateIndex.build(snapped)
    np.testing.assert_array_equal(index.grid[CORNER_AND_CELL], [gx0, gy0, cw, ch])
    assert (xy != layer.coords).any()
    assert_exact(index, *probe_points(index, rng))


def _blob(rng, centre, radius):
    return shapely.Point(centre).buffer(radius, quad_segs=int(rng.integers(2, 12)))


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, n=st.integers(1, 25))
def test_overlaps_holes_and_multipolygons(seed, n):
    """Overlapping features (lowest index wins), holes, nested features, several parts,
    and one feature covering everything (a candidate with no edges in many cells)."""
    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(n):
        c = rng.uniform(0, 1, 2)
        r = rng.uniform(0.02, 0.3)
        shape = _blob(rng, c, r)
        kind = rng.integers(0, 4)
        if kind == 1:      # with a hole, sometimes with a feature inside the hole
            shape = shape.difference(_blob(rng, c, r * rng.uniform(0.2, 0.8)))
        elif kind == 2:    # several parts
            other = _blob(rng, rng.uniform(0, 1, 2), rng.uniform(0.02, 0.2))
            shape = shapely.MultiPolygon([shape, other.difference(shape)]
                                         if not other.difference(shape).is_empty else [shape])
        elif kind == 3:
            shape = shapely.box(*np.sort(rng.uniform(0, 1, 2)), *np.sort(rng.uniform(0, 1, 2)))
        if shape.is_empty or shape.area == 0:
            shape = _blob(rng, c, r)
        if shape.geom_type == "GeometryCollection":
            shape = shapely.MultiPolygon([g for g in shape.geoms if g.geom_type == "Polygon"])
        geoms.append(shape)
    geoms.insert(int(rng.integers(0, len(geoms) + 1)), shapely.box(-0.5, -0.5, 1.5, 1.5))
    geoms.insert(int(rng.integers(0, len(geoms) + 1)), _blob(rng, (0.5, 0.5), 0.05))
    index = LocateIndex.build(from_shapely(geoms))
    assert_exact(index, *probe_points(index, rng))


def test_raw_rings_with_degenerate_edges():
    """Duplicate vertices, horizontal runs, a spike and a self-touching ring, built raw."""
    square = [(0, 0), (1, 0), (1, 0), (2, 0), (2, 1), (2, 1), (1.5, 1), (1, 1), (1, 3), (1, 1),
              (0, 1)]
    bowtie = [(2, 2), (3, 3), (3, 2), (2, 3)]
    nested = [[[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)],
               [(0.4, 0.4), (0.4, 0.6), (0.6, 0.6), (0.6, 0.4)]],
              [[(2.2, 0.2), (2.8, 0.2), (2.5, 0.9)]]]
    index = LocateIndex.build(flat([[[square]], [[bowtie]], nested]))
    rng = np.random.default_rng(0)
    assert_exact(index, *probe_points(index, rng, n_random=20000))


def test_cell_with_hundreds_of_candidates():
    """A fan of 300 triangles round one point: its cell lists more candidates than a
    sub-cell byte can name, so every point there is tested against them in order."""
    angles = np.linspace(0, 2 * np.pi, 301)[:-1]
    rim = np.c_[np.cos(angles), np.sin(angles)]
    fans = [[[np.array([(0.0, 0.0), rim[k], rim[(k + 1) % 300]])]] for k in range(300)]
    index = LocateIndex.build(flat(fans))
    assert index.stats()["mixed_fraction"] > 0
    rng = np.random.default_rng(1)
    xs, ys = probe_points(index, rng)
    near = rng.normal(0, 1e-3, (5000, 2))
    got = assert_exact(index, np.r_[xs, near[:, 0]], np.r_[ys, near[:, 1]])
    assert (got[-5000:] >= 0).all()


def test_outside_and_nan_points_are_none():
    index = LocateIndex.build(voronoi_partition(np.random.default_rng(3), 10, 0.05))
    xs = np.array([np.nan, 0.5, -10.0, 10.0, np.inf, -np.inf])
    ys = np.array([0.5, np.nan, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(index.locate(xs, ys), -1)
    np.testing.assert_array_equal(index.locate(xs, ys, parallel=True), -1)


@pytest.mark.parametrize("n", [0, 1, grid.CHUNK - 1, grid.CHUNK + 1, 3 * grid.CHUNK + 7])
def test_batch_sizes_and_out_array(n):
    """Chunk edges of the kernels; ``out`` is filled in place and returned."""
    index = LocateIndex.build(voronoi_partition(np.random.default_rng(4), 30, 0.01))
    rng = np.random.default_rng(n)
    xs, ys = rng.uniform(0, 1, (2, n))
    out = np.full(n, 7, np.int32)
    assert index.locate(xs, ys, out=out) is out
    np.testing.assert_array_equal(out, locate_bruteforce(index, xs, ys))
    np.testing.assert_array_equal(index.locate(xs, ys, parallel=True), out)


def _entry_heads(index: LocateIndex) -> list[int]:
    """The head word of every candidate entry of every mixed cell (see `grid`)."""
    heads = []
    for v in index.cells[index.cells <= -2]:
        rec = -2 - int(v)
        n = int(index.records[rec + grid.SUB_WORDS])
        pos = rec + grid.SUB_WORDS + 1 + n
        for _ in range(n):
            head = int(index.records[pos])
            heads.append(head)
            pos += 1 if head == grid.ROWS else 1 + 2 * (head >> 1)
    return heads


def test_detailed_boundary_in_a_coarse_grid(monkeypatch):
    """Candidates with more than CHAIN_EDGES_MAX edges in a cell fall back to row buckets;
    the others, in the same cells, keep their chains; twins still pair up."""
    monkeypatch.setattr("geofence.index.GRID_CELLS_PER_EDGE", 1e-3)
    monkeypatch.setattr("geofence.index.GRID_MIN_CELLS", 64)
    t = np.linspace(0, 2 * np.pi, 3000, endpoint=False)
    r = 0.35 + 0.01 * np.sin(40 * t)
    coast = np.c_[0.5 + r * np.cos(t), 0.5 + r * np.sin(t)]
    square = [(0, 0), (1, 0), (1, 1), (0, 1)]
    halves = [[(0, 0), (0.5, 0), (0.5, 1), (0, 1)], [(0.5, 0), (1, 0), (1, 1), (0.5, 1)]]
    index = LocateIndex.build(flat([[[square, coast]], [[coast]], [[halves[0]]],
                                    [[halves[1]]]]))
    heads = _entry_heads(index)
    assert grid.ROWS in heads and any(h > 1 for h in heads) and any(h in (0, 1) for h in heads)
    assert_exact(index, *probe_points(index, np.random.default_rng(5)))


def test_records_grown_mid_build_are_the_same(monkeypatch):
    """When the first guess at the records' size is short, the build resumes row by row."""
    layer = voronoi_partition(np.random.default_rng(6), 40, 0.01)
    whole = LocateIndex.build(layer)
    monkeypatch.setattr("geofence.index.RECORD_WORDS_PER_EDGE", 0)
    monkeypatch.setattr("geofence.index.RECORD_MIN_WORDS", 16)
    grown = LocateIndex.build(layer)
    np.testing.assert_array_equal(grown.cells, whole.cells)
    np.testing.assert_array_equal(grown.records, whole.records)
