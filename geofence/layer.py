"""A jurisdiction or zone layer: validated features, their hierarchy and a locate index.

Feature ``i`` is ``layer.codes[i]``; `Layer.locate` answers a batch of points with
feature indices (``-1`` for none) under one boundary policy, the half-open crossing rule
of `geofence._algorithms.crossing`: a point on a shared edge or vertex belongs to exactly
one feature, the one to its upper right. Where features overlap, a point belongs to the
one that comes first in the file (lowest index).
"""

import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import shapely

from geofence.errors import InputArrayError, LayerWarning, UnknownCodeError
from geofence.geojson import LayerData, Unit, layer_to_geojson, parse_layer
from geofence.hierarchy import Hierarchy
from geofence.index import FlatGeometry, LocateIndex
from geofence.quality import LayerReport, check_layer


class Layer:
    """Features with codes, names and parents, and the compiled index that locates points."""

    def __init__(self, codes: Sequence[str], names: Sequence[str],
                 parents: Sequence[str | None], units: Iterable[Unit],
                 geometry: FlatGeometry, geometries: np.ndarray | None = None):
        self.codes = np.array(codes, dtype=str)
        self.names = np.array(names, dtype=str)
        self.parents = tuple(parents)
        self.units = tuple(units)
        self.geometry = geometry
        self._geometries = geometries
        self.hierarchy = Hierarchy(list(codes), list(parents), self.units, list(names))
        self._index_of = {code: i for i, code in enumerate(codes)}
        self.index = LocateIndex.build(geometry)

    @classmethod
    def from_geojson(cls, source: "str | Mapping[str, Any]", *, warn: bool = True) -> "Layer":
        """Load and validate a FeatureCollection (path or mapping); warn about overlaps/gaps."""
        data = parse_layer(source)
        layer = cls.from_data(data)
        if warn and len(data):
            problems = check_layer(data).problems
            if problems:
                warnings.warn(LayerWarning("; ".join(problems)), stacklevel=2)
        return layer

    @classmethod
    def from_data(cls, data: LayerData) -> "Layer":
        multi = np.array([g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
                          for g in data.geometries], dtype=object)
        if len(multi):
            _, coords, offsets = shapely.to_ragged_array(multi)
            geometry = FlatGeometry.from_ragged(coords, offsets)
        else:
            geometry = FlatGeometry.empty()
        return cls(data.codes, data.names, data.parents, data.units, geometry, data.geometries)

    @classmethod
    def from_arrays(cls, coords, offsets, codes, names, parents=None, units=()) -> "Layer":
        """From flat MultiPolygon arrays (shapely's ragged form), trusted as valid.

        For generated layers too large to pass through GeoJSON and shapely objects.
        """
        parents = parents if parents is not None else [None] * len(codes)
        n_features = len(offsets[2]) - 1
        counts = {"codes": len(codes), "names": len(names), "parents": len(parents)}
        wrong = [f"{k} has {v} entries" for k, v in counts.items() if v != n_features]
        if wrong:
            raise InputArrayError(f"the geometry has {n_features} features but "
                                  + ", ".join(wrong))
        units = tuple(u if isinstance(u, Unit) else Unit(u["code"], u["name"], u.get("parent"))
                      for u in units)
        return cls(codes, names, parents, units, FlatGeometry.from_ragged(coords, offsets))

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def geometries(self) -> np.ndarray:
        """Shapely geometries, one per feature: as loaded (Polygon or MultiPolygon) for GeoJSON
        layers, MultiPolygons built on first use for array layers."""
        if self._geometries is None:
            g = self.geometry
            self._geometries = shapely.from_ragged_array(
                shapely.GeometryType.MULTIPOLYGON, g.coords,
                (g.ring_offsets, g.part_offsets, g.feature_offsets))
        return self._geometries

    @cached_property
    def data(self) -> LayerData:
        return LayerData(tuple(self.codes), tuple(self.names), self.parents, self.units,
                         self.geometries, "wgs84")

    def locate(self, lon, lat, out: np.ndarray | None = None, *,
               parallel: bool = False) -> np.ndarray:
        """Feature index (int32) of each point, -1 where no feature holds it.

        A NaN or infinite coordinate is not a place: such a point is in no feature (-1),
        never an error, so one bad fix cannot fail its batch. Callers that must refuse
        them check first (ingest does). `contains` answers False for them likewise.
        """
        return self.index.locate(lon, lat, out, parallel=parallel)

    def contains(self, code: str, lon, lat) -> np.ndarray:
        """Whether each point lies in the feature with this code (same boundary rule)."""
        return self.index.contains(self.index_of(code), lon, lat)

    def index_of(self, code: str) -> int:
        try:
            return self._index_of[code]
        except KeyError:
            raise UnknownCodeError(f"no feature with code {code!r} in this layer") from None

    def features_under(self, code: str) -> np.ndarray:
        """Indices of the feature with this code and every feature below it."""
        return self.hierarchy.features_under(code)

    def chain(self, code: str) -> list[tuple[str, str]]:
        """(code, name) from the root down to this code."""
        return self.hierarchy.chain(code)

    def check(self) -> LayerReport:
        return check_layer(self.data)

    def to_geojson(self) -> dict:
        return layer_to_geojson(self.data)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xy = self.geometry.coords
        if not len(xy):
            return (np.nan,) * 4
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)
