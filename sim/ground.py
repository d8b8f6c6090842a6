"""The ground the demo's events are planted on: counties and zones as shapes in metres.

The demo places homes, trips, zones and excursions by distance (at least 1 km inside a
county, 0.5-20 km beyond its border), so it works in a local equirectangular projection
around the city centre, scaled by the engine's own metres per degree there
(`geofence.metric`); within the city its error stays under 0.6 %.
"""

import numpy as np
import shapely

from geofence import Layer
from geofence.metric import metres_per_degree_at
from sim.population import COUNTIES

LON0, LAT0 = 117.3, 34.85          # the projection's origin (city centre)
KX_M, KY_M = (float(k) for k in metres_per_degree_at(LAT0))   # metres per degree there


def to_metres(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """A local equirectangular projection around the city (error < 0.6 % within it)."""
    return ((np.asarray(lon) - LON0) * KX_M, (np.asarray(lat) - LAT0) * KY_M)


def to_degrees(x, y) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x) / KX_M + LON0, np.asarray(y) / KY_M + LAT0


def _geometry_to_metres(geom):
    return shapely.transform(geom, lambda c: np.column_stack(to_metres(c[:, 0], c[:, 1])))


class Ground:
    """Counties and zones as shapely polygons in metres, by code, for planting and checks.

    Threshold tests use `dwithin` on prepared geometry (indexed: fast on the counties'
    thousands of vertices); exact distances are computed only for the few points kept."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.shapes: dict[str, shapely.Geometry] = {}
        self._edges: dict[str, shapely.Geometry] = {}
        for code in COUNTIES:
            self.add(code, _geometry_to_metres(
                shapely.union_all(layer.geometries[layer.features_under(code)])))

    def add(self, code: str, poly) -> None:
        shapely.prepare(poly)
        edge = poly.boundary
        shapely.prepare(edge)
        self.shapes[code], self._edges[code] = poly, edge

    def area(self, codes) -> shapely.Geometry:
        """The union of the counties and zones named by `codes`, in metres."""
        parts = [self.shapes[c] for c in codes]
        return parts[0] if len(parts) == 1 else shapely.union_all(parts)

    def distance_outside_m(self, codes, lon, lat) -> np.ndarray:
        """Distance (m) of each point from the area of `codes`; 0 inside it."""
        x, y = to_metres(lon, lat)
        return shapely.distance(self.area(codes), shapely.points(x, y))

    def near_edge(self, code: str, x, y, within_m: float) -> np.ndarray:
        """Whether each point (metres) is within `within_m` of the border of `code`."""
        return shapely.dwithin(self._edges[code], shapely.points(x, y), within_m)

    def sample_inside(self, code: str, rng, inside_m: float = 0.0, away_from=None,
                      away_m: float = 0.0) -> tuple[float, float]:
        """A point (x, y metres) at least `inside_m` inside `code`'s shape and more than
        `away_m` from `away_from` (a geometry in metres, or None)."""
        poly = self.shapes[code]
        x0, y0, x1, y1 = poly.bounds
        for _ in range(100):
            x = rng.uniform(x0, x1, 256)
            y = rng.uniform(y0, y1, 256)
            ok = shapely.contains_xy(poly, x, y)
            ok[ok] = ~self.near_edge(code, x[ok], y[ok], inside_m)
            if away_from is not None:
                ok[ok] = ~shapely.dwithin(away_from, shapely.points(x[ok], y[ok]), away_m)
            if ok.any():
                k = int(np.argmax(ok))
                return float(x[k]), float(y[k])
        raise RuntimeError("no room for a point there")   # a bug in the constants, not data

    def beyond(self, code: str, x0: float, y0: float, distance_m: float,
               rng) -> tuple[float, float, float]:
        """A point straight out from (x0, y0) more than `distance_m` outside `code`'s shape,
        and its distance from it: walking a random bearing until that far from the border."""
        steps = np.arange(0.0, 150_000.0, 100.0)
        poly = self.shapes[code]
        while True:
            bearing = rng.uniform(0, 2 * np.pi)
            x = x0 + np.cos(bearing) * steps
            y = y0 + np.sin(bearing) * steps
            far = np.flatnonzero(~shapely.dwithin(poly, shapely.points(x, y), distance_m))
            if len(far):
                k = far[0]
                return float(x[k]), float(y[k]), float(shapely.distance(poly, shapely.Point(x[k], y[k])))
