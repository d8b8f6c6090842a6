"""Layer loading: what is accepted, what is refused (all problems at once), datum shift."""

import json
import time

import numpy as np
import pytest
import shapely

from geofence.errors import LayerError
from geofence.geojson import LayerData, Unit, layer_to_geojson, parse_layer
from tests.heavy import heavy_test

LON, LAT = 117.5, 34.8  # Zaozhuang


def square(x, y, size=0.01):
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def feature(code, geometry, name=None, parent=None, **extra):
    props = {"code": code, "name": name or f"name of {code}", **extra}
    if parent is not None:
        props["parent"] = parent
    return {"type": "Feature", "properties": props, "geometry": geometry}


def polygon(*rings):
    return {"type": "Polygon", "coordinates": list(rings)}


def collection(*features, **members):
    return {"type": "FeatureCollection", "features": list(features), **members}


def good_layer(**members):
    """Two squares side by side, one with a hole, and a two-part MultiPolygon."""
    return collection(
        feature("370402001", polygon(square(LON, LAT)), parent="370402"),
        feature(
            "370402002",
            polygon(square(LON + 0.01, LAT), square(LON + 0.013, LAT + 0.003, 0.004)),
            parent="370402",
        ),
        feature(
            370403001,  # an integer code
            {
                "type": "MultiPolygon",
                "coordinates": [[square(LON, LAT + 0.02)], [square(LON + 0.02, LAT + 0.02)]],
            },
            parent=370403,
        ),
        units=[{"code": "370402", "name": "Shizhong", "parent": "3704"}],
        **members,
    )


def problems_of(doc) -> str:
    with pytest.raises(LayerError) as info:
        parse_layer(doc)
    return str(info.value)


def test_good_layer_loads_every_field():
    data = parse_layer(good_layer())
    assert isinstance(data, LayerData) and len(data) == 3
    assert data.codes == ("370402001", "370402002", "370403001")
    assert data.names[0] == "name of 370402001"
    assert data.parents == ("370402", "370402", "370403")
    assert data.datum == "wgs84"
    # declared unit first, then the implicit roots in order of first mention
    assert data.units == (
        Unit("370402", "Shizhong", "3704"),
        Unit("370403", "370403", None),
        Unit("3704", "3704", None),
    )
    kinds = [g.geom_type for g in data.geometries]
    assert kinds == ["Polygon", "Polygon", "MultiPolygon"]
    assert len(data.geometries[1].interiors) == 1
    assert data.geometries.dtype == object and not data.geometries.flags.writeable
    assert data.geometries[0].equals(shapely.Polygon(square(LON, LAT)))


def test_reads_a_utf8_file(tmp_path):
    path = tmp_path / "layer.geojson"
    doc = good_layer()
    doc["features"][0]["properties"]["name"] = "市中区街道"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert parse_layer(path).names[0] == "市中区街道"
    assert parse_layer(str(path)).codes == parse_layer(doc).codes


def test_unreadable_file_is_a_layer_error(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(LayerError, match="bad.geojson"):
        parse_layer(path)
    with pytest.raises(LayerError, match="missing.geojson"):
        parse_layer(tmp_path / "missing.geojson")


@pytest.mark.parametrize("doc", [[], {"type": "Feature"}, {"type": "FeatureCollection"}])
def test_not_a_feature_collection(doc):
    assert "FeatureCollection" in problems_of(doc)


def test_an_item_that_is_not_a_feature_is_named_once():
    doc = collection(feature("a", polygon(square(LON, LAT))), "junk", {"type": "Polygon"})
    with pytest.raises(LayerError) as info:
        parse_layer(doc)
    assert info.value.problems == [f"feature #{i}: not a GeoJSON Feature" for i in (1, 2)]


@pytest.mark.parametrize(
    "geometry, expected",
    [
        (None, "has no geometry"),
        ({"type": "Point", "coordinates": [LON, LAT]}, "'Point' is not Polygon or MultiPolygon"),
        (polygon(), "empty geometry"),
        (polygon([]), "empty geometry"),
        ({"type": "MultiPolygon", "coordinates": []}, "empty geometry"),
        (polygon([[LON, LAT], [LON + 1, LAT + 1], [LON + 1, LAT], [LON, LAT + 1]]), "Self-inters"),
        (polygon([[LON, LAT], [LON + 1, LAT]]), "fewer than 4 positions"),
        (polygon([[LON, LAT], [LON, "x"], [LON + 1, LAT]]), "not [lon, lat] number pairs"),
        (polygon(square(LON, 95.0)), "latitude 95.0 is outside"),
        (polygon(square(-181.0, LAT)), "longitude -181.0 is outside"),
        (polygon(square(LON, LAT) + [[float("nan"), LAT]]), "not finite"),
        (polygon(square(LON, LAT), square(LON + 0.5, LAT + 0.5)), "invalid geometry: Hole lies"),
    ],
)
def test_bad_geometry_names_the_feature(geometry, expected):
    doc = collection(feature("ok", polygon(square(LON, LAT))), feature("370402009", geometry))
    message = problems_of(doc)
    assert "feature #1 (code '370402009')" in message
    assert expected in message
    assert "#0" not in message


@pytest.mark.parametrize(
    "props, expected",
    [
        ({"name": "no code"}, "feature #1: code is missing or empty"),
        ({"code": "  ", "name": "blank"}, "feature #1: code is missing or empty"),
        ({"code": 1.5, "name": "float code"}, "feature #1: code is missing or empty"),
        ({"code": "x"}, "feature #1 (code 'x'): name is missing or empty"),
        ({"code": "x", "name": ""}, "feature #1 (code 'x'): name is missing or empty"),
        ({"code": "x", "name": "X", "parent": ["a"]}, "(code 'x'): parent must be a code"),
    ],
)
def test_bad_properties_name_the_feature(props, expected):
    bad = {"type": "Feature", "properties": props, "geometry": polygon(square(LON + 1, LAT))}
    assert expected in problems_of(collection(feature("ok", polygon(square(LON, LAT))), bad))


def test_duplicate_codes_among_features_and_units():
    doc = collection(
        feature("a", polygon(square(LON, LAT))),
        feature("b", polygon(square(LON + 1, LAT))),
        feature("a", polygon(square(LON + 2, LAT))),
        units=[{"code": "b", "name": "B"}, {"code": 7, "name": "seven"}],
    )
    doc["features"][1]["properties"]["code"] = 7  # int 7 and unit "7" collide too
    message = problems_of(doc)
    assert "duplicate code 'a': feature #0, feature #2" in message
    assert "duplicate code '7': feature #1, unit #1" in message


def test_parent_cycles_name_their_codes():
    doc = collection(
        feature("a", polygon(square(LON, LAT)), parent="b"),
        feature("b", polygon(square(LON + 1, LAT)), parent="U"),
        feature("c", polygon(square(LON + 2, LAT)), parent="c"),
        units=[{"code": "U", "name": "Unit", "parent": "a"}],
    )
    message = problems_of(doc)
    assert "parent cycle: U -> a -> b -> U" in message
    assert "parent cycle: c -> c" in message


def test_unknown_datum_lists_the_choices():
    message = problems_of(good_layer(crs_datum="mars"))
    assert "unknown crs_datum 'mars'" in message and "gcj02" in message


def test_every_problem_is_reported_at_once():
    doc = collection(
        feature("a", None),
        feature("a", polygon(square(LON, LAT))),
        {"type": "Feature", "properties": {"code": "c"}, "geometry": {"type": "LineString"}},
        crs_datum="nad27",
    )
    with pytest.raises(LayerError) as info:
        parse_layer(doc)
    problems = info.value.problems
    assert any("feature #0 (code 'a'): has no geometry" in p for p in problems)
    assert any("feature #2 (code 'c'): name is missing" in p for p in problems)
    assert any("feature #2 (code 'c'): geometry type 'LineString'" in p for p in problems)
    assert any("duplicate code 'a'" in p for p in problems)
    assert any("nad27" in p for p in problems)
    assert len(problems) == 5


@pytest.mark.parametrize("datum", ["gcj02", "bd09", "BD09"])
def test_datum_converted_to_wgs84(datum):
    from geofence.datum import to_wgs84

    data = parse_layer(good_layer(crs_datum=datum))
    assert data.datum == datum.lower()
    source = parse_layer(good_layer())  # the same numbers, read as WGS-84
    xy = shapely.get_coordinates(source.geometries)
    lon, lat = to_wgs84(xy[:, 0], xy[:, 1], datum.lower())
    got = shapely.get_coordinates(data.geometries)
    np.testing.assert_allclose(got, np.column_stack([lon, lat]), rtol=0, atol=1e-12)
    shift = np.abs(got - xy).max()
    assert 1e-4 < shift < 0.02  # hundreds of metres, as GCJ-02 and BD-09 do
    assert [len(g.interiors) for g in data.geometries[:2]] == [0, 1]


def test_round_trip_through_layer_to_geojson():
    data = parse_layer(good_layer(crs_datum="gcj02"))
    doc = json.loads(json.dumps(layer_to_geojson(data)))
    again = parse_layer(doc)
    assert again.datum == "wgs84"
    assert (again.codes, again.names, again.parents) == (data.codes, data.names, data.parents)
    assert again.units == data.units
    assert all(shapely.equals_exact(again.geometries, data.geometries, tolerance=0))


def test_empty_collection_is_an_empty_layer():
    data = parse_layer(collection())
    assert len(data) == 0 and data.geometries.shape == (0,)


def test_unclosed_rings_and_altitudes_are_accepted():
    ring = [[LON, LAT, 10.0], [LON + 0.01, LAT, 10.0], [LON + 0.01, LAT + 0.01, 12.0]]
    ring.append([LON, LAT + 0.01, 9.0])  # and no closing position
    geometry = parse_layer(collection(feature("z", polygon(ring)))).geometries[0]
    assert not geometry.has_z
    assert geometry.equals(shapely.Polygon(square(LON, LAT)))


def large_layer():
    """66 townships with about 100,000 vertices in all, as the demo layer has."""
    angles = np.linspace(0, 2 * np.pi, 1500, endpoint=False)
    features = []
    for i in range(66):
        cx, cy = LON + (i % 11) * 0.1, LAT + (i // 11) * 0.1
        ring = np.column_stack([cx + 0.04 * np.cos(angles), cy + 0.04 * np.sin(angles)])
        features.append(feature(f"t{i}", polygon(np.vstack([ring, ring[:1]]).tolist()), parent="c"))
    return collection(*features, crs_datum="gcj02")


def test_large_layer_parses_whole():
    data = parse_layer(large_layer())
    assert shapely.get_num_coordinates(data.geometries).sum() > 99_000


@heavy_test
def test_large_layer_parses_quickly():
    """A timing, so behind --slow: a machine busy with other work (two pytest workers on
    two cores, say) makes it fail without any fault of the parser's."""
    doc = large_layer()
    parse_layer(doc)  # compile or load the datum kernels first
    start = time.perf_counter()
    data = parse_layer(doc)
    elapsed = time.perf_counter() - start
    assert shapely.get_num_coordinates(data.geometries).sum() > 99_000
    assert elapsed < 0.5


@pytest.mark.parametrize("layer, problem", [
    (collection(feature("370402001", polygon(square(LON, LAT)), level="township")),
     "feature #0 (code '370402001'): unknown key \"level\""),
    (collection(feature("370402001", polygon(square(LON, LAT)), parnet="370402")),
     "feature #0 (code '370402001'): unknown key \"parnet\"; did you mean \"parent\"?"),
    (collection(feature("370402001", polygon(square(LON, LAT))),
                units=[{"code": "370402", "name": "薛城区", "parnt": "3704"}]),
     "unit #0 (code '370402'): unknown key \"parnt\"; did you mean \"parent\"?"),
    (collection(feature("370402001", polygon(square(LON, LAT))), crs_datm="gcj02"),
     "the collection: unknown key \"crs_datm\"; did you mean \"crs_datum\"?"),
])
def test_a_key_outside_the_contract_is_refused_with_the_near_one(layer, problem):
    with pytest.raises(LayerError) as e:
        parse_layer(layer)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_unknown_keys_come_with_every_other_problem_of_the_layer():
    layer = collection(feature("370402001", polygon(square(LON, LAT)), area_km2=3.2),
                       feature("370402001", polygon(square(LON + 1, LAT)), name=" "))
    with pytest.raises(LayerError) as e:
        parse_layer(layer)
    text = "\n".join(e.value.problems)
    assert 'unknown key "area_km2"' in text and "duplicate code" in text
    assert "name is missing" in text


def test_gdal_and_rfc_7946_collection_members_are_accepted():
    layer = good_layer(name="townships", bbox=[LON, LAT, LON + 1, LAT + 1])
    assert len(parse_layer(layer)) == len(good_layer()["features"])
