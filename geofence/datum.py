"""Conversions between the map datums used in China: WGS-84, GCJ-02 and BD-09.

Devices report WGS-84 (GPS); maps and feeds from Chinese providers use GCJ-02 ("Mars
coordinates", the state-mandated obfuscation, shifted by up to ~700 m) or BD-09 (Baidu's
further offset of GCJ-02). A zone drawn in one datum must be compared with fixes in the
same datum, hence these batch conversions.

- GCJ-02 is the published Krasovsky-ellipsoid polynomial. Points outside the rough China
  box (lon 72.004..137.8347, lat 0.8293..55.8271) are left unchanged, the standard
  behaviour of every implementation; so the offset drops from hundreds of metres to zero
  at the box edge (which lies outside China's land border everywhere).
- BD-09 is Baidu's polar tweak of GCJ-02 and applies everywhere (also outside China).
- Neither forward transform has a closed-form inverse. Both inverses iterate a fixed point
  from the classic one-step inverse (which alone is off by up to ~5 m for GCJ-02, ~0.2 m
  for BD-09) until a step is below 1e-10 degrees, at most 10 steps: a round trip over
  China comes back within micrometres. Only within ~1 km of the box edge can the GCJ-02
  inverse straddle the edge and miss by up to the offset itself.
"""

import math

import numpy as np

from geofence._jit import serial
from geofence.errors import InputArrayError

DATUMS = ("wgs84", "gcj02", "bd09")

_A = 6378245.0  # Krasovsky 1940 semi-major axis, metres
_EE = 0.00669342162296594323  # its first eccentricity squared
_X_PI = math.pi * 3000.0 / 180.0
_TOL = 1e-10  # degrees, ~10 micrometres: stop iterating the inverses below this step
_MAX_ITER = 10  # each step shrinks the error ~100-fold; 10 is ample


@serial
def _wgs_to_gcj(lon, lat):
    """The published GCJ-02 forward; identity outside the China box."""
    if lon < 72.004 or lon > 137.8347 or lat < 0.8293 or lat > 55.8271:
        return lon, lat
    x, y = lon - 105.0, lat - 35.0
    xp, yp = x * math.pi, y * math.pi
    common = 20.0 * math.sin(6.0 * xp) + 20.0 * math.sin(2.0 * xp)
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += (common + 20.0 * math.sin(yp) + 40.0 * math.sin(yp / 3.0)
             + 160.0 * math.sin(yp / 12.0) + 320.0 * math.sin(yp / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += (common + 20.0 * math.sin(xp) + 40.0 * math.sin(xp / 3.0)
             + 150.0 * math.sin(xp / 12.0) + 300.0 * math.sin(xp / 30.0)) * 2.0 / 3.0
    rad = lat / 180.0 * math.pi
    magic = 1.0 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = dlat * 180.0 / (_A * (1.0 - _EE) / (magic * sqrt_magic) * math.pi)
    dlon = dlon * 180.0 / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


@serial
def _gcj_to_wgs(lon, lat):
    """Fixed point w <- w - (gcj(w) - g) from w = g, whose first step is the classic
    one-step inverse; it converges because the offset varies slowly."""
    wlon, wlat = lon, lat
    for _ in range(_MAX_ITER):
        glon, glat = _wgs_to_gcj(wlon, wlat)
        dlon, dlat = glon - lon, glat - lat
        wlon, wlat = wlon - dlon, wlat - dlat
        if abs(dlon) < _TOL and abs(dlat) < _TOL:
            break
    return wlon, wlat


@serial
def _gcj_to_bd(lon, lat):
    z = math.sqrt(lon * lon + lat * lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _X_PI)
    return z * math.cos(theta) + 0.0065, z * math.sin(theta) + 0.006


@serial
def _bd_to_gcj(lon, lat):
    """Baidu's approximate inverse (off by up to ~0.2 m), then the same fixed point."""
    x, y = lon - 0.0065, lat - 0.006
    z = math.sqrt(x * x + y * y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    glon, glat = z * math.cos(theta), z * math.sin(theta)
    for _ in range(_MAX_ITER):
        blon, blat = _gcj_to_bd(glon, glat)
        dlon, dlat = blon - lon, blat - lat
        glon, glat = glon - dlon, glat - dlat
        if abs(dlon) < _TOL and abs(dlat) < _TOL:
            break
    return glon, glat


# One batch kernel with a direction code instead of six copies of the same loop; the
# per-point branch on `code` is perfectly predicted. Code 0 is the identity (wgs84 -> wgs84).
_CODES = {("wgs84", "gcj02"): 1, ("gcj02", "wgs84"): 2, ("gcj02", "bd09"): 3,
          ("bd09", "gcj02"): 4, ("wgs84", "bd09"): 5, ("bd09", "wgs84"): 6}


@serial
def _convert_point(code, lon, lat):
    if code == 1:
        return _wgs_to_gcj(lon, lat)
    if code == 2:
        return _gcj_to_wgs(lon, lat)
    if code == 3:
        return _gcj_to_bd(lon, lat)
    if code == 4:
        return _bd_to_gcj(lon, lat)
    if code == 5:
        return _gcj_to_bd(*_wgs_to_gcj(lon, lat))
    if code == 6:
        return _gcj_to_wgs(*_bd_to_gcj(lon, lat))
    return lon, lat


@serial
def _convert_kernel(code, lon, lat, out_lon, out_lat):
    """Convert every point in direction `code` into the caller's output arrays."""
    for i in range(lon.shape[0]):
        out_lon[i], out_lat[i] = _convert_point(code, lon[i], lat[i])


def _as_float64(name, values):
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        raise InputArrayError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64, order="C")  # keeps 0-d, unlike ascontiguousarray


def _convert(src, dst, lon, lat):
    """Validate, run the kernel over the flattened arrays, give back the input shape."""
    for datum in (src, dst):
        if datum not in DATUMS:
            raise InputArrayError(f"unknown datum {datum!r}; expected one of {', '.join(DATUMS)}")
    lon_a, lat_a = _as_float64("lon", lon), _as_float64("lat", lat)
    if lon_a.shape != lat_a.shape:
        raise InputArrayError(f"lon and lat differ in shape: {lon_a.shape} vs {lat_a.shape}")
    out_lon, out_lat = np.empty(lon_a.size), np.empty(lon_a.size)
    _convert_kernel(_CODES.get((src, dst), 0), lon_a.ravel(), lat_a.ravel(), out_lon, out_lat)
    return out_lon.reshape(lon_a.shape), out_lat.reshape(lon_a.shape)


def wgs84_to_gcj02(lon, lat):
    """WGS-84 to GCJ-02; points outside the China box come back unchanged."""
    return _convert("wgs84", "gcj02", lon, lat)


def gcj02_to_wgs84(lon, lat):
    """GCJ-02 to WGS-84 by iteration, to micrometres over China (see the module doc)."""
    return _convert("gcj02", "wgs84", lon, lat)


def gcj02_to_bd09(lon, lat):
    """GCJ-02 to BD-09."""
    return _convert("gcj02", "bd09", lon, lat)


def bd09_to_gcj02(lon, lat):
    """BD-09 to GCJ-02 by iteration, to micrometres."""
    return _convert("bd09", "gcj02", lon, lat)


def wgs84_to_bd09(lon, lat):
    """WGS-84 to BD-09 (through GCJ-02)."""
    return _convert("wgs84", "bd09", lon, lat)


def bd09_to_wgs84(lon, lat):
    """BD-09 to WGS-84 (through GCJ-02), both steps iterated."""
    return _convert("bd09", "wgs84", lon, lat)


def to_wgs84(lon, lat, datum: str):
    """Convert from `datum` (one of DATUMS) to WGS-84; always returns new arrays."""
    return _convert(datum, "wgs84", lon, lat)


def from_wgs84(lon, lat, datum: str):
    """Convert from WGS-84 to `datum` (one of DATUMS); always returns new arrays."""
    return _convert("wgs84", datum, lon, lat)


def warm_up() -> None:
    """Compile or load from cache every kernel now, so the first real batch is not slow."""
    lon, lat = np.array([116.4]), np.array([39.9])
    for code in range(7):
        _convert_kernel(code, lon, lat, np.empty(1), np.empty(1))
