"""Synthetic layers (`sim.zaozhuang`, `sim.national`): the properties that tests and
benchmarks rely on.

Valid geometry, no gaps, no overlaps, bitwise-identical shared borders, realistic vertex counts,
multipolygons and enclaves, and the same bytes on every run (whatever PYTHONHASHSEED says).
The built-in layer the engine ships (`geofence.builtin`) is exactly the generator's output.
"""

import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import shapely

from geofence.builtin import BUILTIN_LAYER_PATH, zaozhuang_geojson
from sim.lattice import SyntheticLayer
from sim.national import national_layer
from sim.zaozhuang import (ZAOZHUANG_EXTENT_DEG, builtin_layer_json, write_builtin_layer,
                           zaozhuang_layer_arrays)

needs_slow = pytest.mark.skipif(
    not os.environ.get("GEOFENCE_SLOW"), reason="heavy; set GEOFENCE_SLOW=1 (scripts/test --slow)"
)

COUNTIES = {"370402", "370403", "370404", "370405", "370406", "370481"}


def csv_townships() -> list[dict]:
    text = (files("sim") / "data" / "zaozhuang-townships.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def fingerprint() -> str:
    """sha256 over everything the generators return (Zaozhuang and a small national layer)."""
    digest = hashlib.sha256()
    for layer in (zaozhuang_layer_arrays(), national_layer(300, 16, seed=7)):
        digest.update(np.ascontiguousarray(layer.coords, dtype="<f8").tobytes())
        for offsets in layer.offsets:
            digest.update(np.asarray(offsets, dtype="<i8").tobytes())
        fields = [layer.codes, layer.names, layer.parents, layer.units]
        digest.update(json.dumps(fields, ensure_ascii=False).encode())
    return digest.hexdigest()


def assert_partition(layer: SyntheticLayer) -> None:
    """Valid, overlap-free, gap-free, one outline without holes, shared borders identical."""
    geoms = layer.geometries()
    assert shapely.is_valid(geoms).all(), shapely.is_valid_reason(geoms[~shapely.is_valid(geoms)])
    areas = shapely.area(geoms)
    assert (areas > 0).all()

    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    left, right = left[left < right], right[left < right]
    assert len(left) >= len(geoms) - 1  # connected: at least a spanning tree of contacts
    assert shapely.touches(geoms[left], geoms[right]).all()  # meet on borders, never overlap
    overlap = shapely.area(shapely.intersection(geoms[left], geoms[right])).sum()
    assert overlap <= 1e-12 * areas.sum()

    union = shapely.union_all(geoms)
    assert union.geom_type == "Polygon" and len(union.interiors) == 0
    assert union.area == pytest.approx(areas.sum(), rel=1e-9)  # no gaps

    # Every segment is used by exactly two rings (both neighbours, bitwise the same points)
    # except those of the outline, used once.
    coords, rings = layer.coords, layer.offsets[0]
    starts = np.setdiff1d(np.arange(len(coords) - 1), rings[1:] - 1)
    a, b = coords[starts], coords[starts + 1]
    swap = (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & (a[:, 1] > b[:, 1]))
    segments = np.where(swap[:, None], np.hstack([b, a]), np.hstack([a, b]))
    unique, uses = np.unique(segments, axis=0, return_counts=True)
    assert set(uses.tolist()) == {1, 2}
    once = unique[uses == 1]
    outline = np.hypot(once[:, 2] - once[:, 0], once[:, 3] - once[:, 1]).sum()
    assert outline == pytest.approx(union.exterior.length, rel=1e-9)


def assert_ragged_form(layer: SyntheticLayer) -> None:
    """Exactly shapely's ragged MULTIPOLYGON form: closed rings, shells CCW, holes CW."""
    assert layer.coords.dtype == np.float64 and layer.coords.shape[1] == 2
    assert all(o.dtype == np.int64 for o in layer.offsets)
    kind, coords, offsets = shapely.to_ragged_array(layer.geometries())
    assert kind == shapely.GeometryType.MULTIPOLYGON
    assert np.array_equal(coords, layer.coords)
    assert all(np.array_equal(a, b) for a, b in zip(offsets, layer.offsets))
    rings, polys = layer.offsets[0], layer.offsets[1]
    assert np.array_equal(layer.coords[rings[:-1]], layer.coords[rings[1:] - 1])
    shell = np.zeros(len(rings) - 1, bool)
    shell[polys[:-1]] = True
    lines = shapely.from_ragged_array(shapely.GeometryType.LINESTRING, layer.coords, (rings,))
    assert np.array_equal(shapely.is_ccw(lines), shell)
    assert np.array_equal(np.round(layer.coords, 7), layer.coords)  # 7 decimals, like real data


# ---------------------------------------------------------------- Zaozhuang


def test_zaozhuang_features_are_the_real_townships():
    doc = zaozhuang_geojson()
    rows = csv_townships()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 66 == len(rows)
    props = [f["properties"] for f in doc["features"]]
    assert all(f["type"] == "Feature" for f in doc["features"])
    assert all(set(p) == {"code", "name", "parent"} for p in props)
    assert [p["code"] for p in props] == [r["code"] for r in rows]
    assert [p["name"] for p in props] == [r["name"] for r in rows]
    assert [p["parent"] for p in props] == [r["areaCode"] for r in rows]
    assert {p["parent"] for p in props} == COUNTIES
    units = {u["code"]: u for u in doc["units"]}
    assert set(units) == COUNTIES | {"3704"}
    assert units["3704"] == {"code": "3704", "name": "枣庄市", "parent": None}
    assert units["370481"]["name"] == "滕州市"
    assert all(units[c]["parent"] == "3704" for c in COUNTIES)


def test_zaozhuang_geojson_geometry():
    doc = zaozhuang_geojson()
    lon0, lat0, lon1, lat1 = ZAOZHUANG_EXTENT_DEG
    kinds = set()
    for feature in doc["features"]:
        geometry = feature["geometry"]
        kinds.add(geometry["type"])
        parts = geometry["coordinates"]
        if geometry["type"] == "Polygon":
            parts = [parts]
        for part in parts:
            for k, ring in enumerate(part):
                assert ring[0] == ring[-1] and len(ring) >= 4
                assert shapely.LinearRing(ring).is_ccw == (k == 0)  # RFC 7946 right-hand rule
                xy = np.array(ring)
                assert (xy[:, 0] > lon0).all() and (xy[:, 0] < lon1).all()
                assert (xy[:, 1] > lat0).all() and (xy[:, 1] < lat1).all()
    assert kinds == {"Polygon", "MultiPolygon"}
    assert zaozhuang_geojson() == doc and zaozhuang_geojson() is not doc


def test_zaozhuang_is_a_valid_partition():
    layer = zaozhuang_layer_arrays()
    assert_partition(layer)
    assert_ragged_form(layer)


def test_zaozhuang_vertex_counts_and_sizes_are_realistic():
    layer = zaozhuang_layer_arrays()
    geoms = layer.geometries()
    counts = shapely.get_num_coordinates(geoms)
    assert counts.min() >= 500 and counts.max() <= 4000, (counts.min(), counts.max())
    areas = shapely.area(geoms)
    assert areas.max() < 6 * areas.min()
    county_area = {c: areas[[p == c for p in layer.parents]].sum() for c in COUNTIES}
    assert max(county_area, key=county_area.get) == "370481"  # Tengzhou is the largest
    # counties sit roughly where they are: Tengzhou west of Shanting, Taierzhuang far south-east
    members = {c: geoms[[p == c for p in layer.parents]] for c in COUNTIES}
    centre = {c: shapely.union_all(g).centroid for c, g in members.items()}
    assert centre["370481"].x < centre["370406"].x
    assert centre["370405"].y == min(pt.y for pt in centre.values())
    assert centre["370405"].x == max(pt.x for pt in centre.values())


def test_zaozhuang_has_an_exclave_filling_a_hole():
    geoms = zaozhuang_layer_arrays().geometries()
    parts = [list(g.geoms) for g in geoms]
    assert any(len(p) > 1 for p in parts)  # a MultiPolygon
    holes = [(i, hole) for i, p in enumerate(parts) for poly in p for hole in poly.interiors]
    assert holes
    for owner, hole in holes:  # each hole is exactly another township's part
        hole = shapely.Polygon(hole)
        filler = [j for j, p in enumerate(parts) for poly in p if poly.equals(hole)]
        assert filler and owner not in filler


def test_zaozhuang_is_deterministic_and_copies_are_independent():
    a, b = zaozhuang_layer_arrays(), zaozhuang_layer_arrays()
    assert np.array_equal(a.coords, b.coords) and a.codes == b.codes and a.units == b.units
    a.coords[:] = 0.0
    a.codes.clear()
    c = zaozhuang_layer_arrays()
    assert np.array_equal(c.coords, b.coords) and c.codes == b.codes


def test_same_bytes_under_another_hash_seed():
    here = fingerprint()
    root, tests = Path(__file__).parents[1], str(Path(__file__).parent)
    script = f"import sys; sys.path.insert(0, {tests!r}); "
    script += "import test_synthetic as t; print(t.fingerprint())"
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = [sys.executable, "-c", script]
        run = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == here


def test_the_shipped_builtin_layer_is_the_generators_output(tmp_path):
    """The engine loads a file, not the generator: it must not drift from it (regenerate
    with `python -m sim.zaozhuang`)."""
    shipped = BUILTIN_LAYER_PATH.read_bytes()
    assert gzip.decompress(shipped) == builtin_layer_json()
    assert len(shipped) < 2 * 2**20
    path = tmp_path / "zaozhuang.geojson.gz"
    write_builtin_layer(path)
    assert gzip.decompress(path.read_bytes()) == builtin_layer_json()
    assert not list(tmp_path.glob("*.part"))
    assert json.loads(builtin_layer_json()) == zaozhuang_geojson() == (
        zaozhuang_layer_arrays().to_geojson())
    assert "枣庄市".encode() in gzip.decompress(shipped)   # UTF-8, not \\u escapes


def test_zaozhuang_is_fast():
    from sim import zaozhuang

    start = time.perf_counter()
    zaozhuang._zaozhuang_layer.__wrapped__()
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------- national


def test_national_small_is_a_valid_partition():
    layer = national_layer(400)
    assert len(layer) == 400 == len(set(layer.codes)) == len(layer.names) == len(layer.parents)
    assert len(layer.coords) == 400 * (4 * 64 + 1)
    assert_partition(layer)
    assert_ragged_form(layer)
    lon0, lat0, lon1, lat1 = shapely.total_bounds(layer.geometries())
    assert lon0 == pytest.approx(75, abs=1) and lon1 == pytest.approx(134, abs=1)
    assert lat0 == pytest.approx(18, abs=1) and lat1 == pytest.approx(53, abs=1)


def test_national_codes_and_units_form_a_tree():
    layer = national_layer(400)
    assert all(len(code) == 9 and code.isdigit() for code in layer.codes)
    assert all(code.startswith(parent) for code, parent in zip(layer.codes, layer.parents))
    parent_of = {u["code"]: u["parent"] for u in layer.units}
    assert set(layer.parents) <= set(parent_of) and not set(parent_of) & set(layer.codes)
    assert [code for code, parent in parent_of.items() if parent is None] == ["100000"]
    for code in parent_of:  # every chain reaches the root
        seen = set()
        while code is not None:
            assert code not in seen
            seen.add(code)
            code = parent_of[code]


def test_national_is_deterministic_per_seed():
    a, b, c = national_layer(400), national_layer(400), national_layer(400, seed=1)
    assert np.array_equal(a.coords, b.coords) and a.codes == b.codes
    assert all(np.array_equal(x, y) for x, y in zip(a.offsets, b.offsets))
    assert not np.array_equal(a.coords, c.coords)


def test_national_shape_options():
    assert len(national_layer(100, 16).coords) == 100 * (4 * 16 + 1)
    assert abs(len(national_layer(997, 4)) - 997) < 50  # prime: nearest grid
    with pytest.raises(ValueError):
        national_layer(100, 48)
    with pytest.raises(ValueError):
        national_layer(0)


def test_national_to_geojson():
    layer = national_layer(12, 8, seed=3)
    doc = layer.to_geojson()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 12
    assert doc["units"] == layer.units and doc["units"] is not layer.units
    for feature, code in zip(doc["features"], layer.codes):
        assert feature["properties"]["code"] == code
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 4 * 8 + 1 and ring[0] == ring[-1]


@pytest.mark.slow
@needs_slow
def test_national_default_size():
    start = time.perf_counter()
    layer = national_layer()
    elapsed = time.perf_counter() - start
    assert len(layer) == 41000 == len(set(layer.codes))
    assert len(layer.coords) >= 10_000_000
    assert elapsed < 30.0, elapsed
    assert shapely.is_valid(layer.geometries()).all()
