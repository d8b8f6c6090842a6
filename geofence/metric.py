"""Metres from degrees: a local projection on the WGS-84 ellipsoid.

Around a latitude phi, one degree of latitude is ``M(phi) * pi/180`` metres and one
degree of longitude ``N(phi) * cos(phi) * pi/180`` (meridional and prime-vertical radii
of curvature). Scaling at the fix's own latitude keeps distances within 0.1 % of the
geodesic out to 50 km (SPEC §5 asks 0.5 %); a sphere would be off by up to 0.5 % alone.
"""

import math

import numpy as np

from geofence._jit import body, kernel

WGS84_A_M = 6378137.0
WGS84_E2 = 6.69437999014e-3


@body
def metres_per_degree(lat):
    """(metres per degree of longitude, of latitude) at this latitude."""
    phi = math.radians(lat)
    s = math.sin(phi)
    w = math.sqrt(1.0 - WGS84_E2 * s * s)
    n = WGS84_A_M / w
    m = WGS84_A_M * (1.0 - WGS84_E2) / (w * w * w)
    return n * math.cos(phi) * (math.pi / 180.0), m * (math.pi / 180.0)


@body
def point_segment_m(px, py, x1, y1, x2, y2, kx, ky):
    """Distance in metres from (px, py) to the segment, in the frame scaled by (kx, ky)."""
    ax = (x1 - px) * kx
    ay = (y1 - py) * ky
    bx = (x2 - px) * kx
    by = (y2 - py) * ky
    dx = bx - ax
    dy = by - ay
    length2 = dx * dx + dy * dy
    t = 0.0
    if length2 > 0.0:
        t = min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
    cx = ax + t * dx
    cy = ay + t * dy
    return math.sqrt(cx * cx + cy * cy)


@kernel
def _metres_per_degree_each(lat, kx, ky):
    for i in range(lat.shape[0]):
        kx[i], ky[i] = metres_per_degree(lat[i])


def metres_per_degree_at(lat) -> tuple[np.ndarray, np.ndarray]:
    """`metres_per_degree` for an array of latitudes: (per degree of longitude, of
    latitude), each shaped like `lat`. For numpy code (layer reports, simulations)."""
    lat = np.asarray(lat, dtype=np.float64)
    flat = np.ascontiguousarray(lat).reshape(-1)
    kx, ky = np.empty_like(flat), np.empty_like(flat)
    _metres_per_degree_each(flat, kx, ky)
    return kx.reshape(lat.shape), ky.reshape(lat.shape)


@kernel
def _distances_m(lon1, lat1, lon2, lat2, out):
    for i in range(lon1.shape[0]):
        kx, ky = metres_per_degree(0.5 * (lat1[i] + lat2[i]))
        dx = (lon2[i] - lon1[i]) * kx
        dy = (lat2[i] - lat1[i]) * ky
        out[i] = math.sqrt(dx * dx + dy * dy)


def distance_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Distances in metres between point pairs, in the local projection (short distances)."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (lon1, lat1, lon2, lat2)))
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = np.empty(flat[0].shape[0], np.float64)
    _distances_m(*flat, out)
    return out.reshape(arrays[0].shape)
