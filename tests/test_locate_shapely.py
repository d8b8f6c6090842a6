"""`Layer.locate` against shapely and against the brute-force reference.

Three properties, on random layers drawn by hypothesis:
(a) away from boundaries (farther than 1e-9 degrees from every one), `locate` answers the
    lowest-index feature that `shapely.contains_xy` puts the point in, else -1, and
    `contains` agrees with shapely feature by feature;
(b) in a gap-free partition (Voronoi cells of a box), a point belongs to exactly one
    feature if a step right and up puts it in the box (west and south edges in, east and
    north edges out), else to none: shared edges and vertices never fall in a crack or in
    two cells; repeated and parallel calls agree;
(c) `locate` equals `tests.locate_reference.locate_bruteforce` bit for bit everywhere: on
    vertices, edge midpoints and points one ulp away from vertices too.

Random layers are star-shaped polygons (sorted angles, drawn radii), with holes, grouped
into MultiPolygons, overlapping each other; and Voronoi partitions clipped by GEOS to a box.
All randomness comes from `draw`.
"""

import math

import numpy as np
import pytest
import shapely
from hypothesis import assume, given
from hypothesis import strategies as st

from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from tests.locate_reference import locate_bruteforce

BASE_LON, BASE_LAT = 117.3, 34.8  # Zaozhuang
CELL = 0.01                      # degrees; parts of one feature sit in different cells
GRID = 3                         # GRID x GRID cells
BOUNDARY_EPS_DEG = 1e-9          # (a) compares with shapely only farther than this


# ---------------------------------------------------------------- strategies


def coordinate(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def star_ring(draw, cx, cy, radius):
    """A ring star-shaped about (cx, cy): vertices in angle order, every angular gap under
    pi (gap weights in [1, 3], at least 5 of them), so the ring is simple."""
    n = draw(st.integers(5, 24))
    gaps = np.array(draw(st.lists(st.floats(1.0, 3.0), min_size=n, max_size=n)))
    start = draw(st.floats(0.0, 2 * math.pi))
    scale = np.array(draw(st.lists(st.floats(0.3, 1.0), min_size=n, max_size=n)))
    angles = start + 2 * math.pi * np.cumsum(gaps) / gaps.sum()
    xy = np.column_stack([cx + radius * scale * np.cos(angles),
                          cy + radius * scale * np.sin(angles)])
    return np.round(xy, 7)  # like real files


@st.composite
def star_polygon(draw, cx, cy, radius):
    """A star, maybe with a star-shaped hole about the same centre, inside its inner disc."""
    shell = shapely.Polygon(draw(star_ring(cx, cy, radius)))
    if not draw(st.booleans()):
        return shell
    inner_radius = shapely.distance(shapely.Point(cx, cy), shell.exterior)
    hole = draw(star_ring(cx, cy, inner_radius * draw(st.floats(0.3, 0.9))))
    return shapely.Polygon(shell.exterior.coords, [hole])


@st.composite
def star_feature(draw):
    """A Polygon or MultiPolygon of 1-3 stars, each in its own cell of the grid."""
    cells = draw(st.lists(st.tuples(st.integers(0, GRID - 1), st.integers(0, GRID - 1)),
                          min_size=1, max_size=3, unique=True))
    parts = []
    for i, j in cells:
        cx = BASE_LON + (i + 0.5 + draw(st.floats(-0.1, 0.1))) * CELL
        cy = BASE_LAT + (j + 0.5 + draw(st.floats(-0.1, 0.1))) * CELL
        parts.append(draw(star_polygon(cx, cy, draw(st.floats(0.15, 0.38)) * CELL)))
    geometry = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    assume(shapely.is_valid(geometry))
    return geometry


# Features may overlap one another (they share cells): the lowest index must win.
star_layers = st.lists(star_feature(), min_size=1, max_size=5)


@st.composite
def voronoi_partitions(draw):
    """Voronoi cells of 2-25 drawn sites: a gap-free partition of a box (GEOS clips the
    outer cells to it), neighbours sharing their edges vertex for vertex."""
    sites = draw(st.lists(st.tuples(coordinate(BASE_LON, BASE_LON + 0.1),
                                    coordinate(BASE_LAT, BASE_LAT + 0.1)),
                          min_size=2, max_size=25, unique=True))
    extent = shapely.box(BASE_LON, BASE_LAT, BASE_LON + 0.1, BASE_LAT + 0.1)
    try:
        diagram = shapely.voronoi_polygons(shapely.MultiPoint(sites), extend_to=extent)
    except shapely.errors.GEOSException:  # GEOS gives up on some near-collinear sites
        assume(False)
    cells = shapely.get_parts(diagram)
    assume(len(cells) >= 2 and shapely.is_valid(cells).all()
           and shapely.coverage_is_valid(cells))
    return list(cells)


# ---------------------------------------------------------------- helpers


def layer_of(geometries) -> Layer:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": f"F{i}", "name": f"feature {i}"},
         "geometry": shapely.geometry.mapping(g)} for i, g in enumerate(geometries)]}
    return Layer.from_geojson(doc, warn=False)  # overlaps are drawn on purpose


def vertices_and_midpoints(geometries) -> np.ndarray:
    """Every ring vertex and the midpoint of every ring edge, as (n, 2) lon/lat."""
    rings = shapely.get_rings(shapely.get_parts(np.asarray(geometries, dtype=object)))
    out = []
    for ring in rings:
        xy = shapely.get_coordinates(ring)
        out += [xy, (xy[:-1] + xy[1:]) / 2]
    return np.concatenate(out)


def nudged(xy: np.ndarray) -> np.ndarray:
    """Each point moved one ulp in each of the four directions."""
    x, y = xy[:, 0], xy[:, 1]
    moves = [(np.nextafter(x, np.inf), y), (np.nextafter(x, -np.inf), y),
             (x, np.nextafter(y, np.inf)), (x, np.nextafter(y, -np.inf))]
    return np.concatenate([np.column_stack(m) for m in moves])


def points_in_box(geometries, n_max=60):
    """A strategy of points in the layer's bounding box widened by a tenth on each side."""
    x0, y0, x1, y1 = shapely.total_bounds(geometries)
    dx, dy = (x1 - x0) / 10, (y1 - y0) / 10
    return st.lists(st.tuples(coordinate(x0 - dx, x1 + dx), coordinate(y0 - dy, y1 + dy)),
                    max_size=n_max)


def lattice(geometries, offset, n=40) -> np.ndarray:
    """An n x n lattice over the bounding box, shifted by `offset` (fractions of a step)."""
    x0, y0, x1, y1 = shapely.total_bounds(geometries)
    fx, fy = offset
    xs = x0 + (np.arange(n) + fx) * (x1 - x0) / n
    ys = y0 + (np.arange(n) + fy) * (y1 - y0) / n
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def probe_points(data, geometries) -> np.ndarray:
    """Points drawn in the box, a lattice at a drawn offset, every vertex and edge midpoint,
    and those nudged by an ulp."""
    drawn = np.asarray(data.draw(points_in_box(geometries)), dtype=np.float64).reshape(-1, 2)
    offset = data.draw(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)))
    special = vertices_and_midpoints(geometries)
    return np.concatenate([drawn, lattice(geometries, offset), special, nudged(special)])


def shapely_locate(geometries, x, y) -> np.ndarray:
    """Lowest index of a feature whose interior holds the point, else -1."""
    inside = np.array([shapely.contains_xy(g, x, y) for g in geometries])
    return np.where(inside.any(axis=0), inside.argmax(axis=0), -1)


def boundary_distance(geometries, x, y) -> np.ndarray:
    """Degrees from each point to the nearest boundary of any feature."""
    points = shapely.points(x, y)
    return np.min([shapely.distance(shapely.boundary(g), points) for g in geometries], axis=0)


# ---------------------------------------------------------------- (a) against shapely


@given(data=st.data(), geometries=star_layers)
def test_locate_matches_shapely_away_from_boundaries(data, geometries):
    layer = layer_of(geometries)
    xy = probe_points(data, geometries)
    far = boundary_distance(geometries, xy[:, 0], xy[:, 1]) > BOUNDARY_EPS_DEG
    x, y = xy[far, 0], xy[far, 1]
    np.testing.assert_array_equal(layer.locate(x, y), shapely_locate(geometries, x, y))
    for code, g in zip(layer.codes, geometries):
        np.testing.assert_array_equal(layer.contains(code, x, y), shapely.contains_xy(g, x, y))


# ---------------------------------------------------------------- (b) gap-free partitions


def belongs_under_half_open_rule(box, x, y) -> np.ndarray:
    """Whether a point moved an infinitesimal step right and up is inside the box."""
    x0, y0, x1, y1 = box
    return (x0 <= x) & (x < x1) & (y0 <= y) & (y < y1)


@given(data=st.data(), cells=voronoi_partitions())
def test_partition_gives_every_point_of_the_union_exactly_one_feature(data, cells):
    layer = layer_of(cells)
    box = shapely.total_bounds(cells)
    assert shapely.equals(shapely.union_all(cells), shapely.box(*box))  # no gaps
    xy = probe_points(data, cells)
    x, y = xy[:, 0], xy[:, 1]

    found = layer.locate(x, y)
    held = np.sum([layer.contains(code, x, y) for code in layer.codes], axis=0)
    belongs = belongs_under_half_open_rule(box, x, y)
    np.testing.assert_array_equal(found >= 0, belongs)
    np.testing.assert_array_equal(held, belongs.astype(int))  # one owner, never two
    owned = found >= 0  # by a cell that touches the point (up to rounding in the rule)
    gap = shapely.distance(np.asarray(cells, dtype=object)[found[owned]],
                           shapely.points(x[owned], y[owned]))
    assert (gap <= BOUNDARY_EPS_DEG).all()

    np.testing.assert_array_equal(layer.locate(x, y), found)
    np.testing.assert_array_equal(layer.locate(x, y, parallel=True), found)


def shared_edge_points(geometries) -> np.ndarray:
    """Midpoints of the edges two features share, and those edges' endpoints that lie on
    no unshared edge: points of the union that are not on its outline."""
    rings = shapely.get_rings(shapely.get_parts(np.asarray(geometries, dtype=object)))
    segments = np.concatenate([np.hstack([xy[:-1], xy[1:]])
                               for xy in map(shapely.get_coordinates, rings)])
    a, b = segments[:, :2], segments[:, 2:]
    swap = (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & (a[:, 1] > b[:, 1]))
    canonical = np.where(swap[:, None], np.hstack([b, a]), segments)
    unique, counts = np.unique(canonical, axis=0, return_counts=True)
    shared, outline = unique[counts == 2], unique[counts == 1]
    on_outline = {tuple(p) for p in np.vstack([outline[:, :2], outline[:, 2:]]).tolist()}
    ends = np.unique(np.vstack([shared[:, :2], shared[:, 2:]]), axis=0)
    inner_ends = ends[[tuple(p) not in on_outline for p in ends.tolist()]]
    return np.vstack([(shared[:, :2] + shared[:, 2:]) / 2, inner_ends])


def test_zaozhuang_shared_vertices_and_midpoints_belong_to_exactly_one_township():
    layer = Layer.from_geojson(zaozhuang_geojson())
    x, y = shared_edge_points(layer.geometries).T
    assert len(x) > 10_000
    held = np.sum([layer.contains(code, x, y) for code in layer.codes], axis=0)
    np.testing.assert_array_equal(held, 1)  # never none, never two
    found = layer.locate(x, y)
    np.testing.assert_array_equal(layer.contains(layer.codes[0], x, y), found == 0)
    np.testing.assert_array_equal(layer.locate(x, y, parallel=True), found)
    every = max(1, len(x) // 3000)  # brute force is O(points x edges): a sample
    np.testing.assert_array_equal(locate_bruteforce(layer.index, x[::every], y[::every]),
                                  found[::every])


# ---------------------------------------------------------------- (c) against brute force


@given(data=st.data(), geometries=star_layers)
def test_locate_equals_bruteforce_on_star_layers_everywhere(data, geometries):
    layer = layer_of(geometries)
    xy = probe_points(data, geometries)
    x, y = xy[:, 0], xy[:, 1]
    np.testing.assert_array_equal(layer.locate(x, y), locate_bruteforce(layer.index, x, y))


@given(data=st.data(), cells=voronoi_partitions())
def test_locate_equals_bruteforce_on_partitions_everywhere(data, cells):
    layer = layer_of(cells)
    xy = probe_points(data, cells)
    x, y = xy[:, 0], xy[:, 1]
    expected = locate_bruteforce(layer.index, x, y)
    np.testing.assert_array_equal(layer.locate(x, y), expected)
    for i, code in enumerate(layer.codes):
        np.testing.assert_array_equal(layer.contains(code, x, y), expected == i)


NOT_PLACES = [(np.nan, BASE_LAT), (BASE_LON, np.nan), (np.nan, np.nan), (np.inf, BASE_LAT),
              (-np.inf, BASE_LAT), (BASE_LON, np.inf), (BASE_LON, -np.inf), (-500.0, 0.0)]


@pytest.mark.parametrize("lon, lat", NOT_PLACES)
def test_points_that_are_not_places_are_in_no_feature(lon, lat):
    """The policy of `Layer.locate`: NaN or infinite coordinates are in no feature (-1),
    never an error, on every path; the point beside them in the batch is unaffected."""
    layer = layer_of([shapely.box(BASE_LON - 1, BASE_LAT - 1, BASE_LON + 1, BASE_LAT + 1)])
    x, y = np.array([lon, BASE_LON]), np.array([lat, BASE_LAT])
    assert layer.locate(x, y).tolist() == [-1, 0]
    assert layer.locate(x, y, parallel=True).tolist() == [-1, 0]
    assert locate_bruteforce(layer.index, x, y).tolist() == [-1, 0]
    assert layer.contains(layer.codes[0], x, y).tolist() == [False, True]
