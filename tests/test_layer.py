"""Layer: loading, codes, the locate boundary policy, overlaps, hierarchy, array input.

The hand-made layer (`small_layer`) is three townships of two counties of one city:

    LAT+2S  +-----------------------+
            |   370403001 (north)   |        370403001 is a MultiPolygon: the north strip
    LAT+S   +-----------+-----------+        and an enclave filling the hole of 370402002.
            | 370402001 | 370402002 |
            |           |  [hole]   |
    LAT     +-----------+-----------+
           LON        LON+S       LON+2S

Boundary policy under test (`geofence._algorithms.crossing`): a point on a shared edge or
vertex belongs to exactly one feature, the one to its upper right; a point in an overlap
belongs to the feature that comes first in the file.
"""

import json

import numpy as np
import pytest
import shapely

from geofence import InputArrayError, Layer, LayerError, LayerWarning, UnknownCodeError
from geofence.builtin import zaozhuang_geojson
from sim.zaozhuang import ZAOZHUANG_COUNTIES, zaozhuang_layer_arrays
from tests.locate_reference import locate_bruteforce

LON, LAT, S = 117.5, 34.8, 0.01
X1, X2 = LON + S, LON + 2 * S            # the grid lines, computed once and reused bitwise
Y1, Y2 = LAT + S, LAT + 2 * S
HOLE = (LON + 1.3 * S, LAT + 0.3 * S, LON + 1.7 * S, LAT + 0.7 * S)
HX0, HY0, HX1, HY1 = HOLE
MID_Y = LAT + 0.5 * S


# ---------------------------------------------------------------- helpers


def feature(code, geometry, parent=None, name=None):
    props = {"code": code, "name": name or f"name of {code}", "parent": parent}
    return {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geometry)}


def collection(*features, units=()):
    return {"type": "FeatureCollection", "units": list(units), "features": list(features)}


def small_collection():
    west = shapely.box(LON, LAT, X1, Y1)
    east = shapely.Polygon(shapely.box(X1, LAT, X2, Y1).exterior.coords,
                           [shapely.box(*HOLE).exterior.coords])
    north = shapely.MultiPolygon([shapely.box(LON, Y1, X2, Y2), shapely.box(*HOLE)])
    return collection(
        feature("370402001", west, parent="370402", name="West town"),
        feature("370402002", east, parent="370402", name="East town"),
        feature("370403001", north, parent="370403", name="North town"),
        units=[{"code": "3704", "name": "City", "parent": None},
               {"code": "370402", "name": "County A", "parent": "3704"},
               {"code": "370403", "name": "County B", "parent": "3704"}],
    )


@pytest.fixture(scope="module")
def small_layer():
    return Layer.from_geojson(small_collection())


@pytest.fixture(scope="module")
def zaozhuang():
    return Layer.from_geojson(zaozhuang_geojson())


def overlapping_squares(first="A", second="B"):
    """Square `first` at (0..2)², square `second` at (1..3)²: they overlap in (1..2)²."""
    squares = {"A": shapely.box(LON, LAT, LON + 2 * S, LAT + 2 * S),
               "B": shapely.box(LON + S, LAT + S, LON + 3 * S, LAT + 3 * S)}
    return collection(feature(first, squares[first]), feature(second, squares[second]))


def locate_one(layer, lon, lat):
    return int(layer.locate(np.array([lon]), np.array([lat]))[0])


def ragged(layer_collection):
    """The collection's geometry as shapely's ragged MultiPolygon arrays (coords, offsets)."""
    geoms = [shapely.geometry.shape(f["geometry"]) for f in layer_collection["features"]]
    multi = np.array([g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
                      for g in geoms], dtype=object)
    _, coords, offsets = shapely.to_ragged_array(multi)
    return coords, offsets


# ---------------------------------------------------------------- loading and codes


def test_codes_and_names_in_file_order(small_layer):
    assert small_layer.codes.tolist() == ["370402001", "370402002", "370403001"]
    assert small_layer.names.tolist() == ["West town", "East town", "North town"]
    assert len(small_layer) == 3
    assert small_layer.index_of("370403001") == 2


def test_loads_from_a_file_path(tmp_path):
    path = tmp_path / "layer.geojson"
    path.write_text(json.dumps(small_collection()), encoding="utf-8")
    layer = Layer.from_geojson(str(path))
    assert layer.codes.tolist() == ["370402001", "370402002", "370403001"]


def test_zaozhuang_loads_clean_with_every_township(zaozhuang):
    doc = zaozhuang_geojson()
    assert zaozhuang.codes.tolist() == [f["properties"]["code"] for f in doc["features"]]
    assert len(zaozhuang) == 66
    assert zaozhuang.check().problems == []  # shared borders match: no LayerWarning either


def test_zaozhuang_every_township_locates_its_own_inner_point(zaozhuang):
    inner = shapely.get_coordinates(shapely.point_on_surface(zaozhuang.geometries))
    found = zaozhuang.locate(inner[:, 0], inner[:, 1])
    np.testing.assert_array_equal(found, np.arange(len(zaozhuang)))


# ---------------------------------------------------------------- locate and contains


def test_locate_returns_int32_indices_and_minus_one_outside(small_layer):
    points = {  # name: (lon, lat, expected feature)
        "inside west": (LON + 0.5 * S, MID_Y, 0),
        "inside east, beside the hole": (LON + 1.15 * S, MID_Y, 1),
        "in the hole: the enclave of north": (LON + 1.5 * S, MID_Y, 2),
        "inside the north strip": (LON + S, LAT + 1.5 * S, 2),
        "south of the layer": (LON + S, LAT - S, -1),
        "far away": (0.0, 0.0, -1),
    }
    lon, lat, expected = map(np.array, zip(*points.values()))
    found = small_layer.locate(lon, lat)
    assert found.dtype == np.int32
    assert dict(zip(points, found.tolist())) == dict(zip(points, expected.tolist()))


@pytest.mark.parametrize("where, lon, lat, expected", [
    ("west/east shared edge", X1, MID_Y, 1),
    ("west/north shared edge", LON + 0.5 * S, Y1, 2),
    ("vertex shared by all three", X1, Y1, 2),
    ("outer west edge", LON, MID_Y, 0),
    ("outer south edge", LON + 1.5 * S, LAT, 1),
    ("outer south-west corner", LON, LAT, 0),
    ("outer east edge", X2, MID_Y, -1),
    ("outer north edge", LON + S, Y2, -1),
    ("outer north-west corner", LON, Y2, -1),
    ("west edge of the hole", HX0, MID_Y, 2),
    ("east edge of the hole", HX1, MID_Y, 1),
    ("south edge of the hole", LON + 1.5 * S, HY0, 2),
    ("north edge of the hole", LON + 1.5 * S, HY1, 1),
    ("south-west corner of the hole", HX0, HY0, 2),
])
def test_boundary_points_belong_to_the_feature_to_their_upper_right(
        small_layer, where, lon, lat, expected):
    assert locate_one(small_layer, lon, lat) == expected, where
    assert int(locate_bruteforce(small_layer.index, [lon], [lat])[0]) == expected, where


def test_locate_writes_into_a_given_out_array_and_parallel_agrees(small_layer):
    rng = np.random.default_rng(7)
    lon = rng.uniform(LON - S, X2 + S, 2000)
    lat = rng.uniform(LAT - S, Y2 + S, 2000)
    out = np.full(2000, 99, np.int32)
    assert small_layer.locate(lon, lat, out) is out
    np.testing.assert_array_equal(out, small_layer.locate(lon, lat, parallel=True))
    np.testing.assert_array_equal(out, locate_bruteforce(small_layer.index, lon, lat))


def test_contains_agrees_with_locate_in_a_layer_without_overlaps(small_layer):
    rng = np.random.default_rng(8)
    lon = np.concatenate([rng.uniform(LON - S, X2 + S, 2000), [X1, HX0, HX1, LON, X2]])
    lat = np.concatenate([rng.uniform(LAT - S, Y2 + S, 2000), [Y1, MID_Y, MID_Y, LAT, Y2]])
    where = small_layer.locate(lon, lat)
    for i, code in enumerate(small_layer.codes):
        np.testing.assert_array_equal(small_layer.contains(code, lon, lat), where == i, code)


def test_contains_and_index_of_refuse_an_unknown_code(small_layer):
    with pytest.raises(UnknownCodeError, match="370499"):
        small_layer.contains("370499", [LON], [LAT])
    with pytest.raises(UnknownCodeError):
        small_layer.index_of("370499")


# ---------------------------------------------------------------- hierarchy


def test_features_under_a_unit_a_county_and_a_township(small_layer):
    assert small_layer.features_under("3704").tolist() == [0, 1, 2]
    assert small_layer.features_under("370402").tolist() == [0, 1]
    assert small_layer.features_under("370403").tolist() == [2]
    assert small_layer.features_under("370402002").tolist() == [1]
    with pytest.raises(UnknownCodeError):
        small_layer.features_under("370499")


def test_chain_runs_from_the_city_down_to_the_township(small_layer):
    assert small_layer.chain("370402002") == [
        ("3704", "City"), ("370402", "County A"), ("370402002", "East town")]
    assert small_layer.chain("3704") == [("3704", "City")]


def test_zaozhuang_counties_partition_the_townships(zaozhuang):
    under = [zaozhuang.features_under(county).tolist() for county in ZAOZHUANG_COUNTIES]
    flat = sorted(i for county in under for i in county)
    assert flat == list(range(len(zaozhuang)))
    assert zaozhuang.features_under("3704").tolist() == flat
    for county, indices in zip(ZAOZHUANG_COUNTIES, under):
        for i in indices:
            assert [code for code, _ in zaozhuang.chain(zaozhuang.codes[i])] == [
                "3704", county, zaozhuang.codes[i]]


# ---------------------------------------------------------------- overlaps


def test_overlapping_layer_loads_with_a_layer_warning_naming_the_pair():
    with pytest.warns(LayerWarning, match=r"overlapping.*A / B"):
        Layer.from_geojson(overlapping_squares())


def test_clean_layer_loads_without_warning(recwarn):
    Layer.from_geojson(small_collection())
    assert not [w for w in recwarn if issubclass(w.category, LayerWarning)]


def test_warn_false_silences_the_overlap_warning(recwarn):
    Layer.from_geojson(overlapping_squares(), warn=False)
    assert not [w for w in recwarn if issubclass(w.category, LayerWarning)]


@pytest.mark.parametrize("order", [("A", "B"), ("B", "A")])
def test_point_in_an_overlap_belongs_to_the_feature_first_in_the_file(order):
    with pytest.warns(LayerWarning):
        layer = Layer.from_geojson(overlapping_squares(*order))
    index = {code: i for i, code in enumerate(layer.codes)}
    in_overlap = (LON + 1.5 * S, LAT + 1.5 * S)
    only_a = (LON + 0.5 * S, LAT + 0.5 * S)
    only_b = (LON + 2.5 * S, LAT + 2.5 * S)
    overlap_corner = (LON + S, LAT + S)  # B's corner, inside A: both claim it
    lon, lat = np.array([in_overlap, only_a, only_b, overlap_corner]).T
    found = layer.locate(lon, lat).tolist()
    assert found == [0, index["A"], index["B"], 0]
    assert locate_bruteforce(layer.index, lon, lat).tolist() == found


# ---------------------------------------------------------------- loading errors


def bowtie():
    return shapely.Polygon([(LON, LAT), (X1, Y1), (X1, LAT), (LON, Y1)])


def test_invalid_features_raise_one_layer_error_naming_each():
    doc = collection(
        feature("370402001", shapely.box(LON, LAT, X1, Y1)),
        feature("370402002", bowtie()),
        {"type": "Feature", "properties": {"code": "370402003", "name": "point"},
         "geometry": {"type": "Point", "coordinates": [LON, LAT]}},
        feature("370402001", shapely.box(X1, LAT, X2, Y1)),
    )
    with pytest.raises(LayerError) as info:
        Layer.from_geojson(doc)
    message = str(info.value)
    assert "feature #1 (code '370402002')" in message and "Self-intersection" in message
    assert "feature #2 (code '370402003')" in message and "'Point'" in message
    assert "duplicate code '370402001': feature #0, feature #3" in message
    assert len(info.value.problems) == 3
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("doc, expected", [
    ({"type": "Feature"}, "not a GeoJSON FeatureCollection"),
    (collection(feature("", shapely.box(LON, LAT, X1, Y1))), "feature #0: code is missing"),
    (collection(feature("370402001", shapely.box(LON, LAT, X1, Y1), parent="370402001")),
     "parent cycle"),
])
def test_refused_collections_say_why(doc, expected):
    with pytest.raises(LayerError, match=expected):
        Layer.from_geojson(doc)


# ---------------------------------------------------------------- from_arrays


def assert_same_layer(a: Layer, b: Layer, lon, lat):
    assert a.codes.tolist() == b.codes.tolist()
    assert a.names.tolist() == b.names.tolist()
    assert a.parents == b.parents
    assert a.units == b.units
    np.testing.assert_array_equal(a.geometry.coords, b.geometry.coords)
    for name in ("ring_offsets", "part_offsets", "feature_offsets"):
        np.testing.assert_array_equal(getattr(a.geometry, name), getattr(b.geometry, name))
    assert shapely.equals(a.geometries, b.geometries).all()  # Polygon or 1-part MultiPolygon
    np.testing.assert_array_equal(a.locate(lon, lat), b.locate(lon, lat))
    assert a.hierarchy.roots() == b.hierarchy.roots()
    for root in a.hierarchy.roots():
        assert a.features_under(root).tolist() == b.features_under(root).tolist()


def test_from_arrays_equals_from_geojson_on_the_small_layer(small_layer):
    doc = small_collection()
    coords, offsets = ragged(doc)
    props = [f["properties"] for f in doc["features"]]
    layer = Layer.from_arrays(coords, offsets, [p["code"] for p in props],
                              [p["name"] for p in props], [p["parent"] for p in props],
                              doc["units"])
    rng = np.random.default_rng(9)
    lon = np.concatenate([rng.uniform(LON - S, X2 + S, 1000), [X1, HX0, LON]])
    lat = np.concatenate([rng.uniform(LAT - S, Y2 + S, 1000), [Y1, HY0, LAT]])
    assert_same_layer(layer, small_layer, lon, lat)


def test_from_arrays_equals_from_geojson_on_zaozhuang(zaozhuang):
    arrays = zaozhuang_layer_arrays()
    layer = Layer.from_arrays(arrays.coords, arrays.offsets, arrays.codes, arrays.names,
                              arrays.parents, arrays.units)
    x0, y0, x1, y1 = zaozhuang.bounds
    rng = np.random.default_rng(10)
    lon = np.concatenate([rng.uniform(x0, x1, 20_000), arrays.coords[::7, 0]])
    lat = np.concatenate([rng.uniform(y0, y1, 20_000), arrays.coords[::7, 1]])
    assert_same_layer(layer, zaozhuang, lon, lat)


# ---------------------------------------------------------------- bad input arrays


def test_locate_refuses_lon_and_lat_of_different_lengths(small_layer):
    with pytest.raises(InputArrayError, match="3 and 2"):
        small_layer.locate(np.zeros(3), np.zeros(2))
    with pytest.raises(InputArrayError):
        small_layer.contains("370402001", np.zeros(3), np.zeros(2))
    with pytest.raises(InputArrayError):
        locate_bruteforce(small_layer.index, np.zeros(3), np.zeros(2))


@pytest.mark.parametrize("out", [
    np.zeros(3, np.int64), np.zeros(4, np.int32), np.zeros(6, np.int32)[::2]],
    ids=["int64", "wrong length", "not contiguous"])
def test_locate_refuses_a_bad_out_array(small_layer, out):
    with pytest.raises(InputArrayError, match="int32"):
        small_layer.locate(np.zeros(3), np.zeros(3), out)


def small_arrays():
    doc = small_collection()
    coords, offsets = ragged(doc)
    props = [f["properties"] for f in doc["features"]]
    return (coords, offsets, [p["code"] for p in props], [p["name"] for p in props],
            [p["parent"] for p in props], doc["units"])


@pytest.mark.parametrize("short", [("codes", "names", "parents"), ("names",)],
                         ids=["labels one short of the features", "names one short of codes"])
def test_from_arrays_refuses_labels_that_do_not_match_the_features(short):
    coords, offsets, *labels, units = small_arrays()
    codes, names, parents = (
        values[:-1] if kind in short else values
        for kind, values in zip(("codes", "names", "parents"), labels))
    with pytest.raises(InputArrayError):
        Layer.from_arrays(coords, offsets, codes, names, parents, units)
