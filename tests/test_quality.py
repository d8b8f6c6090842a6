"""Layer quality report: counts, bounds, overlaps, gaps, slivers, at a realistic scale."""

import json

import numpy as np
import pytest

from geofence.geojson import parse_layer
from geofence.metric import metres_per_degree
from geofence.quality import OVERLAP_RULE, SLIVER_WIDTH_M, check_layer

LON, LAT = 117.5, 34.8


def box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def layer(*geometries, units=()):
    features = [
        {"type": "Feature", "properties": {"code": f"f{i}", "name": f"F{i}"}, "geometry": g}
        for i, g in enumerate(geometries)
    ]
    return parse_layer({"type": "FeatureCollection", "features": features, "units": list(units)})


def polygon(*rings):
    return {"type": "Polygon", "coordinates": list(rings)}


def m2(x0, y0, x1, y1):
    """The documented area rule, computed independently for a lon/lat box."""
    kx, ky = metres_per_degree.py_func((y0 + y1) / 2)
    return (x1 - x0) * (y1 - y0) * kx * ky


def test_counts_bounds_and_vertices():
    data = layer(
        polygon(box(LON, LAT, LON + 0.01, LAT + 0.01)),
        polygon(
            box(LON + 0.01, LAT, LON + 0.02, LAT + 0.01),
            box(LON + 0.013, LAT + 0.003, LON + 0.017, LAT + 0.007),
        ),
        {
            "type": "MultiPolygon",
            "coordinates": [
                [box(LON, LAT + 0.02, LON + 0.01, LAT + 0.03)],
                [box(LON + 0.03, LAT + 0.02, LON + 0.04, LAT + 0.03)],
            ],
        },
        units=[{"code": "c", "name": "County"}],
    )
    report = check_layer(data)
    counts = (report.features, report.units, report.parts, report.rings, report.holes)
    assert counts == (3, 1, 4, 5, 1)
    assert report.vertices == 25
    assert (report.vertices_min, report.vertices_median, report.vertices_max) == (5, 10, 10)
    assert report.bounds == pytest.approx((LON, LAT, LON + 0.04, LAT + 0.03))
    # the hole of f1 is not filled by any feature: a gap; f1 touches f0 along an edge only
    assert report.overlaps == ()
    assert len(report.gaps) == 1
    assert report.gaps[0].area_m2 == pytest.approx(m2(0, LAT + 0.003, 0.004, LAT + 0.007), rel=1e-3)


def test_known_overlap_and_gap_with_their_areas():
    data = layer(
        polygon(box(LON, LAT, LON + 0.01, LAT + 0.01)),
        polygon(box(LON + 0.009, LAT, LON + 0.02, LAT + 0.01)),  # 0.001 degree into f0
        # a ring of two U-shapes leaving a 0.01 x 0.01 degree hole between them
        polygon(box(LON + 1, LAT, LON + 1.03, LAT + 0.01)),
        polygon(box(LON + 1, LAT + 0.02, LON + 1.03, LAT + 0.03)),
        polygon(box(LON + 1, LAT + 0.01, LON + 1.01, LAT + 0.02)),
        polygon(box(LON + 1.02, LAT + 0.01, LON + 1.03, LAT + 0.02)),
    )
    report = check_layer(data)
    [overlap] = report.overlaps
    assert (overlap.index_a, overlap.index_b, overlap.code_a, overlap.code_b) == (0, 1, "f0", "f1")
    assert overlap.area_m2 == pytest.approx(m2(LON + 0.009, LAT, LON + 0.01, LAT + 0.01), rel=1e-3)
    assert LON + 0.009 < overlap.lon < LON + 0.01 and LAT < overlap.lat < LAT + 0.01
    assert not overlap.sliver  # about 91 m wide
    [gap] = report.gaps
    expected = m2(LON + 1.01, LAT + 0.01, LON + 1.02, LAT + 0.02)
    assert gap.area_m2 == pytest.approx(expected, rel=1e-3)
    assert LON + 1.01 < gap.lon < LON + 1.02
    problems = report.problems
    assert len(problems) == 2
    assert "1 overlapping feature pairs" in problems[0] and "f0 / f1" in problems[0]
    assert OVERLAP_RULE in problems[0]
    assert "1 gaps" in problems[1]


def test_enclave_filling_a_hole_is_no_gap():
    hole = box(LON + 0.01, LAT + 0.01, LON + 0.02, LAT + 0.02)
    outer = polygon(box(LON, LAT, LON + 0.03, LAT + 0.03), hole)
    inner = polygon(hole)
    report = check_layer(layer(outer, inner))
    assert report.overlaps == () and report.gaps == () and report.problems == []
    assert "no overlaps or gaps" in report.to_lines()


def test_contained_feature_is_an_overlap():
    big = polygon(box(LON, LAT, LON + 0.03, LAT + 0.03))
    small = polygon(box(LON + 0.01, LAT + 0.01, LON + 0.02, LAT + 0.02))
    report = check_layer(layer(big, small))
    assert [(o.code_a, o.code_b) for o in report.overlaps] == [("f0", "f1")]


def test_thin_overlaps_and_gaps_are_slivers():
    eps = 0.00003  # about 2.7 m of longitude at this latitude
    # a U-shaped feature, a block in its notch leaving a thin slit, a bar closing the top
    slit = layer(
        polygon([[LON, LAT], [LON + 0.03, LAT], [LON + 0.03, LAT + 0.02], [LON + 0.02, LAT + 0.02],
                 [LON + 0.02, LAT + 0.01], [LON + 0.01, LAT + 0.01], [LON + 0.01, LAT + 0.02],
                 [LON, LAT + 0.02], [LON, LAT]]),
        polygon(box(LON + 0.01 + eps, LAT + 0.01, LON + 0.02, LAT + 0.02)),
        polygon(box(LON, LAT + 0.02, LON + 0.03, LAT + 0.03)),
    )
    report = check_layer(slit)
    [gap] = report.gaps
    assert gap.sliver and gap.width_m < SLIVER_WIDTH_M
    expected = m2(LON + 0.01, LAT + 0.01, LON + 0.01 + eps, LAT + 0.02)
    assert gap.area_m2 == pytest.approx(expected, rel=1e-3)

    overlap_layer = layer(
        polygon(box(LON, LAT, LON + 0.01, LAT + 0.01)),
        polygon(box(LON + 0.01 - eps, LAT, LON + 0.02, LAT + 0.01)),
    )
    report = check_layer(overlap_layer)
    [overlap] = report.overlaps
    assert overlap.sliver and 2 < overlap.width_m < 3
    assert report.slivers == (overlap,)
    assert any("1 slivers thinner than 10 m (1 overlaps, 0 gaps)" in p for p in report.problems)


def test_shared_edge_with_an_extra_vertex_is_no_overlap():
    """Neighbours digitised separately: one has a vertex in the middle of the shared edge."""
    left = box(LON, LAT, LON + 0.01, LAT + 0.01)
    left.insert(2, [LON + 0.01, LAT + 0.00333])
    left = polygon(left)
    right = polygon(box(LON + 0.01, LAT, LON + 0.02, LAT + 0.01))
    report = check_layer(layer(left, right))
    assert report.overlaps == () and report.gaps == ()


def test_report_text_and_dict():
    data = layer(
        polygon(box(LON, LAT, LON + 0.01, LAT + 0.01)),
        polygon(box(LON + 0.005, LAT, LON + 0.02, LAT + 0.01)),
    )
    report = check_layer(data)
    lines = report.to_lines()
    assert lines[0] == "features: 2 (0 units without polygons)"
    assert any(line.startswith("bounds: lon 117.500000 .. 117.520000") for line in lines)
    overlap_lines = [line for line in lines if "overlap f0 / f1" in line]
    assert len(overlap_lines) == 1 and "belongs to f0 (first in the file)" in overlap_lines[0]
    as_dict = json.loads(json.dumps(report.as_dict()))
    assert as_dict["features"] == 2 and as_dict["overlap_rule"] == OVERLAP_RULE
    assert as_dict["overlaps"][0]["code_a"] == "f0"
    assert as_dict["problems"] == report.problems


def test_empty_layer():
    report = check_layer(layer())
    assert report.features == 0 and report.overlaps == () and report.gaps == ()
    lines = report.to_lines()
    assert lines[0] == "features: 0 (0 units without polygons)"
    assert lines[-1] == "no overlaps or gaps" and report.problems == []


def test_thousands_of_features_scale():
    """A 40 x 40 grid sharing edges exactly, one cell nudged to overlap, one cell missing."""
    xs = LON + np.arange(41) * 0.01
    ys = LAT + np.arange(41) * 0.01
    geometries = []
    for i in range(40):
        for j in range(40):
            if (i, j) == (20, 20):
                continue  # a hole in the middle of the grid
            x1 = xs[i + 1] + (0.002 if (i, j) == (5, 5) else 0.0)
            geometries.append(polygon(box(xs[i], ys[j], x1, ys[j + 1])))
    data = layer(*geometries)
    report = check_layer(data)
    [overlap] = report.overlaps
    nudged, east = 5 * 40 + 5, 6 * 40 + 5  # cells (5, 5) and (6, 5), both before the hole
    assert (overlap.index_a, overlap.index_b) == (nudged, east)
    assert (overlap.code_a, overlap.code_b) == (f"f{nudged}", f"f{east}")
    assert overlap.area_m2 == pytest.approx(m2(xs[6], ys[5], xs[6] + 0.002, ys[6]), rel=1e-3)
    assert xs[6] < overlap.lon < xs[6] + 0.002 and ys[5] < overlap.lat < ys[6]
    assert not overlap.sliver
    [gap] = report.gaps
    assert gap.area_m2 == pytest.approx(m2(xs[20], ys[20], xs[21], ys[21]), rel=1e-3)
    assert xs[20] < gap.lon < xs[21] and ys[20] < gap.lat < ys[21]


def test_bulge_thickness_ignores_the_shared_edge():
    """Neighbours share an edge and one bulges 0.001 degree into the other: the shared edge
    comes back with the intersection but must not make the bulge look like a sliver."""
    d = 0.001
    x = LON + 0.01  # the shared edge
    right = [[x, LAT], [x + 0.01, LAT], [x + 0.01, LAT + 0.01], [x, LAT + 0.01], [x, LAT + 0.006],
             [x - d, LAT + 0.006], [x - d, LAT + 0.005], [x, LAT + 0.005], [x, LAT]]
    report = check_layer(layer(polygon(box(LON, LAT, LON + 0.01, LAT + 0.01)), polygon(right)))
    [overlap] = report.overlaps
    kx, ky = metres_per_degree.py_func(LAT + 0.0055)
    a, b = d * kx, d * ky  # the bulge, in m
    assert overlap.area_m2 == pytest.approx(a * b, rel=1e-3)
    assert overlap.width_m == pytest.approx(a * b / (a + b), rel=1e-3)  # 2·area/perimeter
    assert not overlap.sliver
