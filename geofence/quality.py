"""Quality report of a loaded layer: sizes, bounds, overlaps, gaps and slivers.

Real boundary data is drawn by hand, digitised from paper maps and shifted between
datums; neighbouring townships rarely share edges exactly. Such flaws are not load
errors (SPEC §3): `check_layer` reports them, for `geofence layer check FILE` and as a
warning on load, so the data owner can decide whether they matter.

Definitions:
- overlap: two features whose interiors intersect with an area of at least
  `MIN_AREA_M2` (smaller pieces are floating-point noise along shared edges). The
  engine's rule, stated in the report: a point in an overlap belongs to the feature that
  comes first in the file (the lower index).
- gap: a hole of the union of all features, i.e. an enclosed area that no feature covers
  (a gap open to the outside of the layer cannot be told from the layer's edge and is
  not reported). A feature's own hole filled by another feature (an enclave) is no gap.
- sliver: an overlap or gap thinner than `SLIVER_WIDTH_M`, thickness being 2·area /
  perimeter (the width of a long strip, the radius of a disc). Slivers are usually
  digitising noise; wide overlaps and gaps are usually data errors.

Areas and lengths are measured in a local metric frame per piece: degrees times the
WGS-84 ellipsoid's metres per degree at the piece's mid latitude (`geofence.metric`), the
engine's own scale, accurate to a fraction of a percent over a township-sized piece.
"""

from dataclasses import asdict, dataclass

import numpy as np
import shapely

from geofence.geojson import LayerData
from geofence.metric import metres_per_degree_at

SLIVER_WIDTH_M = 10.0
MIN_AREA_M2 = 0.01  # 10 cm x 10 cm: below this an intersection is rounding, not data
OVERLAP_RULE = "a point in an overlap belongs to the feature that comes first in the file"
_LISTED = 20  # detail lines per kind in to_lines()


@dataclass(frozen=True)
class Overlap:
    """Features `index_a` < `index_b` overlap; (`lon`, `lat`) is a point inside the overlap."""

    index_a: int
    index_b: int
    code_a: str
    code_b: str
    area_m2: float
    width_m: float
    lon: float
    lat: float

    @property
    def sliver(self) -> bool:
        return self.width_m < SLIVER_WIDTH_M


@dataclass(frozen=True)
class Gap:
    """An enclosed area no feature covers; (`lon`, `lat`) is a point inside it."""

    area_m2: float
    width_m: float
    lon: float
    lat: float

    @property
    def sliver(self) -> bool:
        return self.width_m < SLIVER_WIDTH_M


@dataclass(frozen=True)
class LayerReport:
    """Counts and flaws of one layer. Vertices count closing positions, as stored."""

    features: int
    units: int
    parts: int
    rings: int
    holes: int
    vertices: int
    bounds: tuple[float, float, float, float]  # minlon, minlat, maxlon, maxlat
    vertices_min: int
    vertices_median: float
    vertices_max: int
    overlaps: tuple[Overlap, ...]  # largest first
    gaps: tuple[Gap, ...]  # largest first

    @property
    def slivers(self) -> tuple[Overlap | Gap, ...]:
        return tuple(x for x in self.overlaps + self.gaps if x.sliver)

    @property
    def problems(self) -> list[str]:
        """One summary line per kind of flaw; empty for a clean layer."""
        out = []
        if self.overlaps:
            top = self.overlaps[0]
            out.append(
                f"{len(self.overlaps)} overlapping feature pairs, {_sum_m2(self.overlaps)} in all; "
                f"largest {top.code_a} / {top.code_b}, {_m2(top.area_m2)} near "
                f"{top.lon:.5f}, {top.lat:.5f} ({OVERLAP_RULE})"
            )
        if self.gaps:
            top = self.gaps[0]
            out.append(
                f"{len(self.gaps)} gaps not covered by any feature, {_sum_m2(self.gaps)} in all; "
                f"largest {_m2(top.area_m2)} near {top.lon:.5f}, {top.lat:.5f}"
            )
        slivers = self.slivers
        if slivers:
            n_overlaps = sum(isinstance(s, Overlap) for s in slivers)
            out.append(
                f"{len(slivers)} slivers thinner than {SLIVER_WIDTH_M:g} m "
                f"({n_overlaps} overlaps, {len(slivers) - n_overlaps} gaps)"
            )
        return out

    def to_lines(self) -> list[str]:
        """A human summary: sizes, bounds, then each flaw (the largest few)."""
        minlon, minlat, maxlon, maxlat = self.bounds
        lines = [
            f"features: {self.features} ({self.units} units without polygons)",
            f"parts: {self.parts}, rings: {self.rings}, holes: {self.holes}",
            f"vertices: {self.vertices} (per feature min {self.vertices_min}, "
            f"median {self.vertices_median:g}, max {self.vertices_max})",
            f"bounds: lon {minlon:.6f} .. {maxlon:.6f}, lat {minlat:.6f} .. {maxlat:.6f}",
        ]
        lines += self.problems or ["no overlaps or gaps"]
        for o in self.overlaps[:_LISTED]:
            lines.append(
                f"  overlap {o.code_a} / {o.code_b}: {_m2(o.area_m2)}, {o.width_m:.1f} m thick, "
                f"near {o.lon:.5f}, {o.lat:.5f}; belongs to {o.code_a} (first in the file)"
            )
        for g in self.gaps[:_LISTED]:
            lines.append(
                f"  gap: {_m2(g.area_m2)}, {g.width_m:.1f} m thick, near {g.lon:.5f}, {g.lat:.5f}"
            )
        hidden = max(0, len(self.overlaps) - _LISTED) + max(0, len(self.gaps) - _LISTED)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return lines

    def as_dict(self) -> dict:
        """JSON-ready: every field, plus the summary problems and the overlap rule."""
        out = asdict(self)
        out["bounds"] = [None if np.isnan(b) else b for b in self.bounds]  # NaN: no features
        out["problems"] = self.problems
        out["overlap_rule"] = OVERLAP_RULE
        out["sliver_width_m"] = SLIVER_WIDTH_M
        return out


def check_layer(data: LayerData) -> LayerReport:
    """Measure a layer and find its overlaps and gaps (STRtree: scales to thousands)."""
    geoms = data.geometries
    parts = shapely.get_parts(geoms)
    holes = int(shapely.get_num_interior_rings(parts).sum())
    per_feature = shapely.get_num_coordinates(geoms)
    bounds = shapely.total_bounds(geoms) if len(geoms) else np.full(4, np.nan)
    clean = _is_valid_coverage(geoms)
    return LayerReport(
        features=len(geoms),
        units=len(data.units),
        parts=len(parts),
        rings=len(parts) + holes,
        holes=holes,
        vertices=int(per_feature.sum()),
        bounds=tuple(float(b) for b in bounds),
        vertices_min=int(per_feature.min()) if len(geoms) else 0,
        vertices_median=float(np.median(per_feature)) if len(geoms) else 0.0,
        vertices_max=int(per_feature.max()) if len(geoms) else 0,
        overlaps=() if clean else _overlaps(data),
        gaps=_gaps(geoms, clean),
    )


def _overlaps(data: LayerData) -> tuple[Overlap, ...]:
    geoms = data.geometries
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    a, b = a[a < b], b[a < b]
    inner = shapely.relate_pattern(geoms[a], geoms[b], "2********")  # interiors meet in 2-D
    a, b = a[inner], b[inner]  # neighbours that only touch cost no overlay
    keep, area, width, lon, lat = _measure(shapely.intersection(geoms[a], geoms[b]))
    found = [
        Overlap(int(i), int(j), data.codes[i], data.codes[j], *map(float, (s, w, x, y)))
        for i, j, s, w, x, y in zip(a[keep], b[keep], area, width, lon, lat)
    ]
    return tuple(sorted(found, key=lambda o: -o.area_m2))


def _gaps(geoms: np.ndarray, clean: bool) -> tuple[Gap, ...]:
    union = shapely.coverage_union_all(geoms) if clean else shapely.union_all(geoms)
    union = shapely.get_parts(union)
    holes = [shapely.Polygon(ring) for polygon in union for ring in polygon.interiors]
    _, area, width, lon, lat = _measure(np.array(holes, dtype=object))
    found = [Gap(*map(float, row)) for row in zip(area, width, lon, lat)]
    return tuple(sorted(found, key=lambda g: -g.area_m2))


def _measure(pieces: np.ndarray):
    """For the pieces of at least MIN_AREA_M2: their indices, area (m²), thickness
    2·area/perimeter (m) and a point inside (lon, lat)."""
    keep = np.flatnonzero(shapely.area(_local_metres(pieces)) >= MIN_AREA_M2)
    if not keep.size:
        return keep, *(np.empty(0),) * 4
    polygonal = np.array([_polygonal(p) for p in pieces[keep]], dtype=object)
    metric = _local_metres(polygonal)
    area = shapely.area(metric)
    width = 2 * area / shapely.length(metric)
    inside = shapely.get_coordinates(shapely.point_on_surface(polygonal))
    return keep, area, width, inside[:, 0], inside[:, 1]


def _is_valid_coverage(geoms: np.ndarray) -> bool:
    """True if no two features overlap and shared edges match vertex for vertex: then
    there are no overlaps to look for and the much faster coverage union is exact.
    (GEOS >= 3.12, shapely >= 2.1; older versions take the general path.)"""
    check = getattr(shapely, "coverage_is_valid", None)
    return bool(len(geoms)) and check is not None and bool(check(geoms))


def _polygonal(piece):
    """The polygons of an intersection, without the shared edges that come with them
    (they would lengthen the perimeter and make an overlap look thin)."""
    if isinstance(piece, shapely.GeometryCollection):
        parts = shapely.get_parts(piece)
        return shapely.union_all(parts[shapely.get_dimensions(parts) == 2])
    return piece


def _local_metres(pieces: np.ndarray) -> np.ndarray:
    """Each piece in metres, scaled about its own mid latitude (see the module docstring)."""
    coords, index = shapely.get_coordinates(pieces, return_index=True)
    box = shapely.bounds(pieces)
    mid_lat = np.nan_to_num((box[:, 1] + box[:, 3]) / 2)
    kx, ky = metres_per_degree_at(mid_lat)
    coords[:, 0] *= kx[index]
    coords[:, 1] *= ky[index]
    return shapely.set_coordinates(pieces.copy(), coords)


def _m2(value: float) -> str:
    return f"{value:,.0f} m²" if value >= 1 else f"{value:.2f} m²"


def _sum_m2(items) -> str:
    return _m2(sum(x.area_m2 for x in items))
