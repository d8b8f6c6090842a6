"""Verdicts (SPEC §5): a table a supervisor would recognise, a shapely reference, input checks.

For a fix at p with accuracy radius a, allowed area A and threshold T = max(a, exit margin):
`in` if p is in A; `out` if p is outside A and farther than T from it; `unsure` otherwise.
For an exclusion zone: `in` if the whole accuracy disk is inside the zone, `unsure` if the
disk touches it, `out` otherwise.

The table's layer, in metric-friendly coordinates near latitude 35 (0.1 degree is about
9.1 km east-west and 11.1 km north-south):

    35.1  +---------+---------+---------+      +---------+
          | home    | home    | next    |      | permit  |
          | town W  | town E  | county  |      | destin. |
    35.0  +---------+---------+---------+      +---------+
        117.0     117.1     117.2     117.3  117.5     117.6

Home is the county of towns W and E. Zones: a school inside town W; in the next county a
victim's street (1.2 km square) with a bar inside it near its east end, and a hospital.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from hypothesis import event, given
from hypothesis import strategies as st

from geofence import (EXIT_MARGIN_M, IN, OUT, UNSURE, VERDICT_NAMES, InputArrayError, Layer,
                      UnknownCodeError, VerdictEngine)
from geofence.builtin import zaozhuang_geojson
from tests.warm_up_check import assert_warm_up_prepares

# WGS-84, written out here so the reference does not borrow the engine's own code.
WGS84_A_M = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


def metres_per_degree(lat: float) -> tuple[float, float]:
    """(east, north) metres per degree at this latitude: N cos(phi) pi/180, M pi/180."""
    phi = math.radians(lat)
    w = math.sqrt(1 - WGS84_E2 * math.sin(phi) ** 2)
    n = WGS84_A_M / w
    m = WGS84_A_M * (1 - WGS84_E2) / w**3
    return n * math.cos(phi) * math.pi / 180, m * math.pi / 180


def moved(lon: float, lat: float, east_m: float = 0.0, north_m: float = 0.0):
    """The point this many metres east and north of (lon, lat), in the local frame."""
    kx, ky = metres_per_degree(lat)
    return lon + east_m / kx, lat + north_m / ky


def regular_polygon(lon, lat, radius_m, n=8):
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + 0.1
    kx, ky = metres_per_degree(lat)
    return shapely.Polygon(np.column_stack([lon + radius_m * np.cos(angles) / kx,
                                            lat + radius_m * np.sin(angles) / ky]).round(7))


def feature(code, geometry, parent=None):
    return {"type": "Feature", "properties": {"code": code, "name": f"name of {code}",
                                              "parent": parent},
            "geometry": shapely.geometry.mapping(geometry)}


def collection(*features, units=()):
    return {"type": "FeatureCollection", "units": list(units), "features": list(features)}


def verdict_names(codes) -> list[str]:
    return [VERDICT_NAMES[c] for c in codes]


# ---------------------------------------------------------------- (a) the table

MID = 35.05          # latitude through the middle of every township
WEST_EDGE = 117.0    # home's west edge: nothing lies west of it
SCHOOL_AT = (117.05, 35.05)
SCHOOL_HALF_M = 500.0  # the school zone is a square 1 km across
STREET_AT = (117.25, 35.05)
STREET_HALF_M = 600.0
BAR_EAST_OF_STREET_M = 400.0  # the bar (200 m square) spans 300..500 m east of the centre
HOSPITAL_AT = (117.25, 35.085)


def square_zone(centre, half_m):
    (x0, y0), (x1, y1) = (moved(*centre, -half_m, -half_m), moved(*centre, half_m, half_m))
    return shapely.box(x0, y0, x1, y1)


@pytest.fixture(scope="module")
def engine() -> VerdictEngine:
    towns = Layer.from_geojson(collection(
        feature("370001001", shapely.box(117.0, 35.0, 117.1, 35.1), parent="370001"),
        feature("370001002", shapely.box(117.1, 35.0, 117.2, 35.1), parent="370001"),
        feature("370002001", shapely.box(117.2, 35.0, 117.3, 35.1), parent="370002"),
        feature("370003001", shapely.box(117.5, 35.0, 117.6, 35.1), parent="370003"),
        units=[{"code": c, "name": f"county {c}", "parent": "3700"}
               for c in ("370001", "370002", "370003")],
    ))
    zones = Layer.from_geojson(collection(  # zones may nest: no overlap warning wanted
        feature("Z-school", square_zone(SCHOOL_AT, SCHOOL_HALF_M)),
        feature("Z-street", square_zone(STREET_AT, STREET_HALF_M)),
        feature("Z-bar", square_zone(moved(*STREET_AT, BAR_EAST_OF_STREET_M), 100.0)),
        feature("Z-hospital", square_zone(HOSPITAL_AT, 300.0)),
    ), warn=False)
    return VerdictEngine(towns, zones, exit_margin_m=EXIT_MARGIN_M)


@dataclass(frozen=True)
class Fix:
    situation: str
    lon: float
    lat: float
    acc_m: float
    allowed: tuple[str, ...]
    verdict: str
    where: str | None


HOME = ("370001",)
AREA_CASES = [
    Fix("inside home", 117.05, MID, 10, HOME, "in", "370001001"),
    Fix("inside a neighbouring township of the same county", 117.15, MID, 10, HOME,
        "in", "370001002"),
    Fix("inside home, poor cell fix", 117.05, MID, 3000, HOME, "in", "370001001"),
    Fix("outside far: 5 km beyond, acc 50 m", *moved(WEST_EDGE, MID, -5000), 50, HOME,
        "out", None),
    Fix("outside within accuracy: 300 m beyond, cell fix acc 1000 m",
        *moved(WEST_EDGE, MID, -300), 1000, HOME, "unsure", None),
    Fix("just outside, GPS, within exit margin: 50 m beyond, acc 10 m",
        *moved(WEST_EDGE, MID, -50), 10, HOME, "unsure", None),
    Fix("just past the exit margin: 250 m beyond, acc 10 m",
        *moved(WEST_EDGE, MID, -250), 10, HOME, "out", None),
    Fix("south of home, 300 m beyond, acc 100 m", *moved(117.05, 35.0, 0, -300), 100, HOME,
        "out", None),
    Fix("in the next county, 5 km beyond home", *moved(117.2, MID, 5000), 50, HOME,
        "out", "370002001"),
    Fix("in the next county, 100 m beyond home", *moved(117.2, MID, 100), 10, HOME,
        "unsure", "370002001"),
    Fix("in a permit destination (home + destination county)", 117.55, MID, 10,
        HOME + ("370003",), "in", "370003001"),
    Fix("at the permit destination, but no permit", 117.55, MID, 10, HOME, "out", "370003001"),
    Fix("near a permit destination, within accuracy", *moved(117.5, MID, -400), 500,
        HOME + ("370003",), "unsure", None),
    Fix("in a permitted hospital zone (home + zone)", *HOSPITAL_AT, 10,
        HOME + ("Z-hospital",), "in", "370002001"),
    Fix("beside the permitted hospital, far from home", *moved(*HOSPITAL_AT, 0, -1000), 50,
        HOME + ("Z-hospital",), "out", "370002001"),
    Fix("far beyond the distance grid (30 km), poor cell fix", *moved(WEST_EDGE, MID, -30_000),
        5000, HOME, "out", None),
    Fix("4.8 km beyond, within a 5 km cell fix", *moved(WEST_EDGE, MID, -4800), 5000, HOME,
        "unsure", None),
]


def area_verdicts(engine, fixes):
    lon, lat, acc = (np.array([getattr(f, k) for f in fixes]) for k in ("lon", "lat", "acc_m"))
    ids = np.array([engine.area_id(f.allowed) for f in fixes])
    return engine.verdicts(lon, lat, acc, ids)


@pytest.mark.parametrize("fix", AREA_CASES, ids=[f.situation for f in AREA_CASES])
def test_area_verdict_table(engine, fix):
    result = area_verdicts(engine, [fix])
    where = int(result.where[0])
    assert verdict_names(result.verdict) == [fix.verdict]
    assert (engine.jurisdictions.codes[where] if where >= 0 else None) == fix.where


def test_area_verdict_table_in_one_batch(engine):
    result = area_verdicts(engine, AREA_CASES)
    assert verdict_names(result.verdict) == [f.verdict for f in AREA_CASES]
    assert (result.distance_m[result.verdict == IN] == 0).all()


def test_exit_margin_is_the_engines_setting(engine):
    strict = VerdictEngine(engine.jurisdictions, engine.zones, exit_margin_m=20.0)
    fix = Fix("50 m beyond, GPS", *moved(WEST_EDGE, MID, -50), 10, HOME, "out", None)
    assert verdict_names(area_verdicts(strict, [fix]).verdict) == ["out"]
    assert verdict_names(area_verdicts(engine, [fix]).verdict) == ["unsure"]


@dataclass(frozen=True)
class ZoneFix:
    situation: str
    lon: float
    lat: float
    acc_m: float
    verdict: str


SCHOOL_WEST = SCHOOL_AT[0] - SCHOOL_HALF_M / metres_per_degree(MID)[0]
SCHOOL_CASES = [
    ZoneFix("deep inside the zone, small accuracy", *SCHOOL_AT, 20, "in"),
    ZoneFix("inside, 100 m from the edge, acc 50 m", *moved(SCHOOL_WEST, MID, 100), 50, "in"),
    ZoneFix("inside near the edge with large accuracy", *moved(SCHOOL_WEST, MID, 100), 500,
            "unsure"),
    ZoneFix("outside but the disk touches", *moved(SCHOOL_WEST, MID, -300), 500, "unsure"),
    ZoneFix("outside, disk falls short", *moved(SCHOOL_WEST, MID, -300), 100, "out"),
    ZoneFix("far", *moved(SCHOOL_WEST, MID, -3000), 50, "out"),
    ZoneFix("disk larger than the zone, centred on it", *SCHOOL_AT, 2000, "unsure"),
]


@pytest.mark.parametrize("fix", SCHOOL_CASES, ids=[f.situation for f in SCHOOL_CASES])
def test_exclusion_verdict_table(engine, fix):
    school = engine.exclusion_set_id(["Z-school"])
    result = engine.exclusion_verdicts([fix.lon], [fix.lat], [fix.acc_m], [school])
    assert result.offsets.tolist() == [0, 1]
    assert engine.zones.codes[result.zone].tolist() == ["Z-school"]
    assert verdict_names(result.verdict) == [fix.verdict]


def test_worst_exclusion_verdict_per_fix(engine):
    """Fixes against an injunction naming the school, the street and the bar."""
    street_west = moved(*STREET_AT, -STREET_HALF_M)
    fixes = [  # (situation, lon, lat, acc, worst verdict, its zone)
        ("in the school", *SCHOOL_AT, 20, "in", "Z-school"),
        ("in the street, the disk reaching the bar", *STREET_AT, 350, "in", "Z-street"),
        ("just west of the street, within accuracy", *moved(*street_west, -100), 200,
         "unsure", "Z-street"),
        ("in the next county, away from every zone", *moved(*STREET_AT, 0, -3000), 50,
         "out", None),
        ("in the school, but no injunction", *SCHOOL_AT, 20, "out", None),
    ]
    injunction = engine.exclusion_set_id(["Z-school", "Z-street", "Z-bar"])
    sets = [injunction] * (len(fixes) - 1) + [0]
    lon, lat, acc = (np.array([f[k] for f in fixes]) for k in (1, 2, 3))
    result = engine.exclusion_verdicts(lon, lat, acc, sets)
    assert np.diff(result.offsets).tolist() == [3, 3, 3, 3, 0]
    worst, zone = result.worst()
    codes = [engine.zones.codes[z] if z >= 0 else None for z in zone]
    assert list(zip(verdict_names(worst), codes)) == [(f[4], f[5]) for f in fixes]


def test_in_street_and_unsure_bar_are_both_reported(engine):
    """The second fix above, zone by zone: `worst` picked `in` over the later `unsure`."""
    injunction = engine.exclusion_set_id(["Z-school", "Z-street", "Z-bar"])
    result = engine.exclusion_verdicts([STREET_AT[0]], [STREET_AT[1]], [350], [injunction])
    by_zone = dict(zip(engine.zones.codes[result.zone], verdict_names(result.verdict)))
    assert by_zone == {"Z-school": "out", "Z-street": "in", "Z-bar": "unsure"}


def test_exclusion_set_ids_are_shared_and_order_free(engine):
    a = engine.exclusion_set_id(["Z-bar", "Z-school"])
    assert engine.exclusion_set_id(["Z-school", "Z-bar", "Z-bar"]) == a
    assert engine.exclusion_set_id([]) == 0
    assert engine.area_id(["370001001", "370001002"]) == engine.area_id(["370001"])


# ---------------------------------------------------------------- found by hypothesis


def test_out_beyond_the_grid_reports_a_distance_above_the_threshold(engine):
    fix = Fix("8 km beyond home, acc 5000 m", *moved(WEST_EDGE, MID, -8000), 5000, HOME,
              "out", None)
    result = area_verdicts(engine, [fix])
    assert verdict_names(result.verdict) == ["out"]
    assert result.distance_m[0] > 5000


def test_out_on_the_exact_path_reports_at_most_the_true_distance(zaozhuang):
    """Found by hypothesis (test_distance_m_agrees_with_the_verdict_and_shapely)."""
    engine, city = zaozhuang.engine, zaozhuang.area_ids[ZAOZHUANG_AREAS.index(("3704",))]
    lon, lat = 116.98614167754182, 34.813706723499756  # west of Tengzhou
    exact = engine.areas.distance_m(city, lon, lat)[0]
    assert exact == pytest.approx(747.2, abs=0.1)
    result = engine.verdicts([lon], [lat], [638.0], [city])
    assert verdict_names(result.verdict) == ["out"]
    assert result.distance_m[0] <= exact * 1.01  # a lower bound, or exact


def test_far_permit_destination_keeps_the_verdict_within_half_a_percent():
    layer = Layer.from_geojson(collection(
        feature("370402", shapely.box(117.2, 34.75, 117.4, 34.95)),    # home, Zaozhuang
        feature("152525", shapely.box(116.95, 45.5, 116.99, 45.54)),   # destination
    ))
    engine = VerdictEngine(layer)
    area = engine.area_id(["370402", "152525"])
    lon, lat = moved(116.99, 45.52, 3900)  # 3.9 km east of the destination, acc 4 km
    assert engine.areas.distance_m(area, lon, lat)[0] == pytest.approx(3900, rel=1e-3)
    assert verdict_names(engine.verdicts([lon], [lat], [4000], [area]).verdict) == ["unsure"]


# ---------------------------------------------------------------- (b) against shapely

ZAOZHUANG_ZONES = {  # code: (centre lon, lat, radius m, sides)
    "Z-hospital": (117.55, 34.88, 600, 8),
    "Z-school": (117.60, 34.60, 400, 6),
    "Z-bar": (117.30, 34.75, 150, 4),
}
ZAOZHUANG_AREAS = [
    ("370402",),                 # a county
    ("370481",),                 # the largest county
    ("370402001",),              # one township
    ("370405", "370481001"),     # home county + a far township (permit)
    ("370405", "Z-hospital"),    # home county + a zone elsewhere (permit)
    ("3704",),                   # the whole city
]


@dataclass(frozen=True)
class Reference:
    """Shapely answers for the engine's areas and zones, in lon/lat."""

    engine: VerdictEngine
    area_ids: list[int]
    unions: list[shapely.Geometry]   # per area of ZAOZHUANG_AREAS
    zones: list[shapely.Geometry]    # per zone feature


@pytest.fixture(scope="module", params=["built at start", "built live"])
def zaozhuang(request) -> Reference:
    """The engine's areas built as at start, or as for a live change (a coarser distance
    grid, `AreaSet.live`): the verdicts must be the same, exact, either way."""
    towns = Layer.from_geojson(zaozhuang_geojson())
    zones = Layer.from_geojson(collection(
        *(feature(code, regular_polygon(*spec)) for code, spec in ZAOZHUANG_ZONES.items())))
    engine = VerdictEngine(towns, zones)
    if request.param == "built live":
        engine.areas.live()
    unions = []
    for codes in ZAOZHUANG_AREAS:
        parts = [towns.geometries[towns.features_under(c)] if towns.hierarchy.is_known(c)
                 else zones.geometries[[zones.index_of(c)]] for c in codes]
        unions.append(shapely.union_all(np.concatenate(parts)))
    return Reference(engine, [engine.area_id(c) for c in ZAOZHUANG_AREAS], unions,
                     list(zones.geometries))


def local_frame(geometry, lon, lat):
    """The geometry in metres about (lon, lat), scaled at lat: the point is the origin."""
    kx, ky = metres_per_degree(lat)
    return shapely.transform(geometry, lambda xy: (xy - (lon, lat)) * (kx, ky))


ORIGIN = shapely.Point(0, 0)


def inside_and_distance_m(shape, lon, lat) -> tuple[bool, float]:
    """Whether the point is inside the shape, and its metres to the shape's boundary."""
    local = local_frame(shape, lon, lat)
    return bool(shapely.contains(local, ORIGIN)), float(shapely.distance(local.boundary, ORIGIN))


def reference_area_verdict(inside, distance_m, acc_m, margin_m=EXIT_MARGIN_M):
    """SPEC §5: in; out beyond max(accuracy, exit margin); unsure otherwise."""
    if inside:
        return IN
    return OUT if distance_m > max(acc_m, margin_m) else UNSURE


def reference_zone_verdict(inside, distance_m, acc_m):
    """SPEC §5: in if the accuracy disk lies inside the zone, unsure if it touches it."""
    if inside:
        return IN if distance_m >= acc_m else UNSURE
    return UNSURE if distance_m <= acc_m else OUT


def too_close_to_call(distance_m, threshold_m) -> bool:
    """The engine's grid frame and the reference differ slightly near the threshold, and
    on the boundary itself the boundary policy decides."""
    return distance_m < 1.0 or abs(distance_m - threshold_m) < 0.01 * threshold_m + 1.0


accuracies = st.one_of(
    st.just(0.0),
    st.sampled_from([5.0, 10.0, 30.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]),
    st.floats(0.0, 5000.0))
distances_m = st.one_of(st.floats(0.0, 1000.0), st.floats(0.0, 10_000.0),
                        st.floats(5000.0, 30_000.0))  # the last: mostly beyond the grid


def accuracies_for(distance_m):
    """Any accuracy, or (within 5 km) one within 10 % of the distance to the boundary, so
    the verdict hangs on the exact distance (the engine's slow path)."""
    if distance_m > 5000.0:
        return accuracies
    return st.one_of(accuracies, st.floats(0.9, 1.1).map(lambda f: f * distance_m))


@st.composite
def places_near(draw, shapes):
    """(shape index, lon, lat): a vertex of a drawn shape moved a drawn distance in a drawn
    direction, so places land inside, near and far outside."""
    k = draw(st.integers(0, len(shapes) - 1))
    coords = shapely.get_coordinates(shapes[k])
    vx, vy = coords[draw(st.integers(0, len(coords) - 1))]
    angle = draw(st.floats(0.0, 2 * math.pi))
    d = draw(distances_m)
    return (k, *moved(vx, vy, d * math.cos(angle), d * math.sin(angle)))


def draw_fixes(data, shapes):
    """Fixes near the shapes: shape index, lon, lat, accuracy, and the shapely truth
    (inside, distance in metres) about the fix's own shape."""
    places = data.draw(st.lists(places_near(shapes), min_size=1, max_size=20))
    truth = [inside_and_distance_m(shapes[k], lon, lat) for k, lon, lat in places]
    acc = [data.draw(accuracies_for(d)) for _, d in truth]
    k, lon, lat = (np.array(column) for column in zip(*places))
    return k, lon, lat, np.array(acc), truth


@given(data=st.data())
def test_area_verdicts_match_shapely_reference(zaozhuang, data):
    k, lon, lat, acc, truth = draw_fixes(data, zaozhuang.unions)
    engine = zaozhuang.engine
    result = engine.verdicts(lon, lat, acc, np.array(zaozhuang.area_ids)[k])
    np.testing.assert_array_equal(result.where, engine.jurisdictions.locate(lon, lat))
    for i, (inside, d) in enumerate(truth):
        threshold = max(acc[i], EXIT_MARGIN_M)
        if too_close_to_call(d, threshold):
            event("a fix too close to call")
            continue
        expected = VERDICT_NAMES[reference_area_verdict(inside, d, acc[i])]
        event(f"a fix {expected}")
        assert VERDICT_NAMES[result.verdict[i]] == expected, (i, d, threshold)


@given(data=st.data())
def test_distance_m_agrees_with_the_verdict_and_shapely(zaozhuang, data):
    k, lon, lat, acc, truth = draw_fixes(data, zaozhuang.unions)
    engine = zaozhuang.engine
    ids = np.array(zaozhuang.area_ids)[k]
    result = engine.verdicts(lon, lat, acc, ids)
    for i, (_, d) in enumerate(truth):
        verdict, reported = result.verdict[i], float(result.distance_m[i])
        threshold = max(acc[i], EXIT_MARGIN_M)
        if verdict == IN:
            assert reported == 0
            continue
        # Outside: on the verdict's side of the threshold; for `out` a lower bound on d (or
        # exact), for `unsure` an upper bound (or exact).
        if verdict == OUT:
            assert reported > threshold
            assert reported <= d * 1.01 + 1.0, (i, d)
        else:
            assert reported <= threshold
            assert reported >= d * 0.99 - 1.0, (i, d)
        exact = engine.areas.distance_m(ids[i], lon[i], lat[i])[0]
        assert exact == pytest.approx(d, rel=0.005, abs=0.01)


@given(data=st.data())
def test_exclusion_verdicts_match_shapely_reference(zaozhuang, data):
    _, lon, lat, acc, _ = draw_fixes(data, zaozhuang.zones)
    engine = zaozhuang.engine
    every_zone = engine.exclusion_set_id(ZAOZHUANG_ZONES)
    result = engine.exclusion_verdicts(lon, lat, acc, np.full(len(lon), every_zone))
    assert np.diff(result.offsets).tolist() == [len(zaozhuang.zones)] * len(lon)
    for i in range(len(lon)):
        for q in range(result.offsets[i], result.offsets[i + 1]):
            zone = zaozhuang.zones[result.zone[q]]
            inside, d = inside_and_distance_m(zone, lon[i], lat[i])
            if d < 1.0 or abs(d - acc[i]) < 0.005 * acc[i] + 1.0:
                continue
            expected = VERDICT_NAMES[reference_zone_verdict(inside, d, acc[i])]
            event(f"a pair {expected}")
            assert VERDICT_NAMES[result.verdict[q]] == expected, (i, result.zone[q], d)


# ---------------------------------------------------------------- (c) input validation


@pytest.mark.parametrize("acc", [-1.0, np.nan, np.inf], ids=["negative", "NaN", "infinite"])
def test_bad_accuracy_is_refused(engine, acc):
    home = engine.area_id(HOME)
    with pytest.raises(InputArrayError, match="accuracy"):
        engine.verdicts([117.05, 117.05], [MID, MID], [10.0, acc], [home, home])
    with pytest.raises(InputArrayError, match="accuracy"):
        engine.exclusion_verdicts([117.05], [MID], [acc], [0])


@pytest.mark.parametrize("area", [-1, 10_000])
def test_unknown_area_id_is_refused(engine, area):
    with pytest.raises(InputArrayError, match="area_ids"):
        engine.verdicts([117.05], [MID], [10.0], [area])


@pytest.mark.parametrize("set_id", [-1, 10_000])
def test_unknown_exclusion_set_id_is_refused(engine, set_id):
    with pytest.raises(InputArrayError, match="set_ids"):
        engine.exclusion_verdicts([117.05], [MID], [10.0], [set_id])


def test_lon_and_lat_of_different_lengths_are_refused(engine):
    home = engine.area_id(HOME)
    with pytest.raises(InputArrayError):
        engine.verdicts([117.05, 117.06], [MID], [10.0], [home])


@pytest.mark.parametrize("codes", [["370009"], ["370001", "Z-nowhere"], ["Z-school", ""]])
def test_unknown_codes_in_an_area_are_refused(engine, codes):
    with pytest.raises(UnknownCodeError):
        engine.area_id(codes)


def test_unknown_exclusion_zone_is_refused(engine):
    with pytest.raises(UnknownCodeError):
        engine.exclusion_set_id(["Z-nowhere"])
    with pytest.raises(UnknownCodeError):
        engine.exclusion_set_id(["370001"])  # a jurisdiction, not a zone


def test_zone_codes_without_a_zone_layer_are_refused(engine):
    without_zones = VerdictEngine(engine.jurisdictions)
    with pytest.raises(UnknownCodeError, match="zone"):
        without_zones.exclusion_set_id(["Z-school"])
    with pytest.raises(UnknownCodeError):
        without_zones.area_id(["370001", "Z-school"])


def test_warm_up_loads_every_kernel_a_layer_and_its_verdicts_need():
    assert_warm_up_prepares(
        "import geofence\n"
        "from geofence import datum\n"
        "from geofence._algorithms import grid, grid_build, rows, verdict as vk\n"
        "geofence.warm_up()",
        "rows.build_feature_rows, grid_build.build_cells, grid.locate_range, "
        "grid.locate_points_parallel, grid.points_in_feature_batch, vk.area_verdicts, "
        "vk.exclusion_verdicts, datum._convert_kernel",
        "import numpy as np\n"
        "import shapely\n"
        "boxes = [shapely.box(i, 0, i + 1, 2) for i in range(3)]\n"
        "doc = {'type': 'FeatureCollection', 'features': [\n"
        "    {'type': 'Feature', 'properties': {'code': c, 'name': c},\n"
        "     'geometry': shapely.geometry.mapping(b)} for c, b in zip('abc', boxes)]}\n"
        "layer = geofence.Layer.from_geojson(doc, warn=False)\n"
        "xs, ys = np.random.default_rng(1).uniform(0, 3, (2, 50))\n"
        "layer.locate(xs, ys)\n"
        "layer.locate(xs, ys, parallel=True)\n"
        "layer.contains('b', xs, ys)\n"
        "engine = geofence.VerdictEngine(layer, layer)\n"
        "acc = np.full(50, 30.0)\n"
        "engine.verdicts(xs, ys, acc, np.full(50, engine.area_id(['a', 'b'])))\n"
        "engine.exclusion_verdicts(xs, ys, acc, np.full(50, engine.exclusion_set_id(['c'])))\n"
        "datum.to_wgs84(xs, ys, 'gcj02')")
