"""geofence.datum: published reference values, round trips over China, dispatch, input errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import datum
from geofence.errors import InputArrayError
from tests.warm_up_check import assert_warm_up_prepares

CHINA_LON = st.floats(73.0, 135.0)
CHINA_LAT = st.floats(18.0, 53.0)


def metres(lon_a, lat_a, lon_b, lat_b):
    """Distance on a local flat scale, good to a fraction of a percent at these ranges."""
    dx = (np.asarray(lon_a) - lon_b) * 111320.0 * np.cos(np.radians(lat_b))
    dy = (np.asarray(lat_a) - lat_b) * 110574.0
    return np.hypot(dx, dy)


def china_grid():
    lon, lat = np.meshgrid(np.linspace(73.0, 135.0, 311), np.linspace(18.0, 53.0, 176))
    return lon.ravel(), lat.ravel()


# --- reference values -----------------------------------------------------------------


def test_published_tiananmen_vector():
    lon, lat = datum.wgs84_to_gcj02(116.397428, 39.90923)
    assert lon == pytest.approx(116.403671, abs=1e-5)
    assert lat == pytest.approx(39.910629, abs=1e-5)


def test_coordtransform_reference_values():
    # The example outputs of the widely used coordTransform libraries for (116.404, 39.915);
    # also checked against an independent scalar transcription of the published formulas.
    lon, lat = datum.wgs84_to_gcj02(116.404, 39.915)
    assert (lon, lat) == pytest.approx((116.41024449916938, 39.91640428150164), abs=1e-9)
    lon, lat = datum.gcj02_to_bd09(116.404, 39.915)
    assert (lon, lat) == pytest.approx((116.41036949371029, 39.92133699351021), abs=1e-9)


def test_offset_over_china_is_typically_hundreds_of_metres():
    lon, lat = china_grid()
    d = metres(*datum.wgs84_to_gcj02(lon, lat), lon, lat)
    assert 100.0 < np.median(d) and d.max() < 1000.0


# --- round trips --------------------------------------------------------------------


@given(CHINA_LON, CHINA_LAT)
def test_gcj02_round_trip_within_1m(lon, lat):
    w = datum.gcj02_to_wgs84(*datum.wgs84_to_gcj02(lon, lat))
    assert metres(*w, lon, lat) < 1.0
    g = datum.wgs84_to_gcj02(*datum.gcj02_to_wgs84(lon, lat))
    assert metres(*g, lon, lat) < 1.0


@given(CHINA_LON, CHINA_LAT)
def test_bd09_round_trips_within_1m(lon, lat):
    g = datum.bd09_to_gcj02(*datum.gcj02_to_bd09(lon, lat))
    assert metres(*g, lon, lat) < 1.0
    b = datum.gcj02_to_bd09(*datum.bd09_to_gcj02(lon, lat))
    assert metres(*b, lon, lat) < 1.0
    w = datum.bd09_to_wgs84(*datum.wgs84_to_bd09(lon, lat))
    assert metres(*w, lon, lat) < 1.0
    b = datum.wgs84_to_bd09(*datum.bd09_to_wgs84(lon, lat))
    assert metres(*b, lon, lat) < 1.0


def test_iterated_inverses_reach_a_millimetre_where_one_step_misses_a_metre():
    lon, lat = china_grid()
    glon, glat = datum.wgs84_to_gcj02(lon, lat)
    # The classic one-step inverse: w = g - (gcj(g) - g).
    flon, flat = datum.wgs84_to_gcj02(glon, glat)
    one_step = metres(2 * glon - flon, 2 * glat - flat, lon, lat)
    assert one_step.max() > 1.0
    assert metres(*datum.gcj02_to_wgs84(glon, glat), lon, lat).max() < 1e-3
    blon, blat = datum.gcj02_to_bd09(glon, glat)
    assert metres(*datum.bd09_to_gcj02(blon, blat), glon, glat).max() < 1e-3


def test_composed_directions_match_two_steps():
    lon, lat = china_grid()
    np.testing.assert_array_equal(
        datum.wgs84_to_bd09(lon, lat), datum.gcj02_to_bd09(*datum.wgs84_to_gcj02(lon, lat))
    )
    np.testing.assert_array_equal(
        datum.bd09_to_wgs84(lon, lat), datum.gcj02_to_wgs84(*datum.bd09_to_gcj02(lon, lat))
    )


# --- outside China --------------------------------------------------------------------

OUTSIDE = st.one_of(
    st.tuples(st.floats(-180.0, 72.0), st.floats(-90.0, 90.0)),
    st.tuples(st.floats(137.84, 180.0), st.floats(-90.0, 90.0)),
    st.tuples(st.floats(72.0, 138.0), st.floats(-90.0, 0.82)),
    st.tuples(st.floats(72.0, 138.0), st.floats(55.83, 90.0)),
)


@given(OUTSIDE)
def test_gcj02_leaves_points_outside_china_unchanged(point):
    lon, lat = point
    assert datum.wgs84_to_gcj02(lon, lat) == (lon, lat)
    assert datum.gcj02_to_wgs84(lon, lat) == (lon, lat)


# --- batches, shapes, dispatch ------------------------------------------------------------


@settings(max_examples=50)
@given(st.lists(st.tuples(CHINA_LON, CHINA_LAT), min_size=1, max_size=20))
def test_batch_equals_point_by_point(points):
    lon = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    for convert in (datum.wgs84_to_gcj02, datum.gcj02_to_wgs84, datum.bd09_to_wgs84):
        out_lon, out_lat = convert(lon, lat)
        for i, (x, y) in enumerate(points):
            assert (out_lon[i], out_lat[i]) == convert(x, y)


def test_shapes_dtypes_and_fresh_outputs():
    lon, lat = datum.wgs84_to_gcj02(116.4, 39.9)
    assert lon.shape == () and lat.dtype == np.float64
    lon, lat = datum.gcj02_to_wgs84([[116, 117], [118, 119]], np.full((2, 2), 30.0))
    assert lon.shape == (2, 2) and lon.dtype == np.float64
    src = np.array([116.4, 121.5]), np.array([39.9, 31.2])
    out = datum.to_wgs84(*src, "wgs84")
    np.testing.assert_array_equal(out, src)
    assert not np.shares_memory(out[0], src[0]) and not np.shares_memory(out[1], src[1])
    empty = datum.wgs84_to_bd09(np.empty(0), np.empty(0))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


@pytest.mark.parametrize(
    ("name", "to_fn", "from_fn"),
    [
        ("gcj02", datum.gcj02_to_wgs84, datum.wgs84_to_gcj02),
        ("bd09", datum.bd09_to_wgs84, datum.wgs84_to_bd09),
    ],
)
def test_dispatch_matches_direct_functions(name, to_fn, from_fn):
    lon, lat = china_grid()
    np.testing.assert_array_equal(datum.to_wgs84(lon, lat, name), to_fn(lon, lat))
    np.testing.assert_array_equal(datum.from_wgs84(lon, lat, name), from_fn(lon, lat))


def test_every_datum_converts_both_ways_and_only_wgs84_is_the_identity():
    """Every name in DATUMS has conversions of its own: a name added without them would be
    passed through unchanged and fail here."""
    lon, lat = china_grid()
    for name in datum.DATUMS:
        there = datum.from_wgs84(lon, lat, name)
        assert metres(*datum.to_wgs84(*there, name), lon, lat).max() < 1e-3, name
        shift = metres(*there, lon, lat)
        if name == "wgs84":
            assert shift.max() == 0.0
        else:
            assert np.median(shift) > 100.0, name
    shifted = [datum.from_wgs84(lon, lat, name) for name in datum.DATUMS]
    assert len({(x.tobytes(), y.tobytes()) for x, y in shifted}) == len(datum.DATUMS)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [datum.to_wgs84, datum.from_wgs84])
@pytest.mark.parametrize("bad", ["WGS84", "bd-09", "cgcs2000", ""])
def test_unknown_datum_lists_allowed_values(convert, bad):
    with pytest.raises(InputArrayError) as info:
        convert([116.4], [39.9], bad)
    assert isinstance(info.value, ValueError)
    for name in datum.DATUMS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "convert",
    [datum.wgs84_to_gcj02, datum.bd09_to_gcj02, lambda lon, lat: datum.to_wgs84(lon, lat, "gcj02")],
)
def test_mismatched_lengths_raise(convert):
    with pytest.raises(InputArrayError, match="shape"):
        convert(np.zeros(3), np.zeros(2))


def test_non_numeric_input_raises():
    with pytest.raises(InputArrayError, match="lat"):
        datum.wgs84_to_gcj02([116.4], ["north"])
    with pytest.raises(InputArrayError, match="lon"):
        datum.wgs84_to_gcj02(np.array([1 + 2j]), [39.9])


def test_warm_up_loads_the_kernel_a_conversion_needs():
    assert_warm_up_prepares(
        "from geofence import datum\ndatum.warm_up()", "datum._convert_kernel",
        "import numpy as np\n"
        "datum.to_wgs84(np.array([116.4, 117.1]), np.array([39.9, 34.8]), 'gcj02')\n"
        "datum.wgs84_to_bd09(116.4, 39.9)")
