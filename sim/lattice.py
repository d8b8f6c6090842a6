"""Wiggly lattices: the building blocks of the synthetic layers, and their ragged form.

Construction: a jittered lattice (hexagons for Zaozhuang, quads for the national layer).
Every lattice edge is fractalized once by midpoint displacement perpendicular to its chord,
clipped to a thin rhombus around the chord so edges never cross; then the whole plane is
bent by a smooth one-to-one warp. A township is a set of cells; its rings chain the edges
separating it from other townships or the outside, and both neighbours reuse the very same
edge array (one of them reversed), so shared borders are identical by construction.
Coordinates are rounded to 7 decimals like real data.

Deterministic: seeded PCG64 and plain IEEE arithmetic only (no libm or BLAS calls, nothing
depending on hash-randomized order), so a seed gives the same bytes on every machine.
"""

import dataclasses

import numpy as np
import shapely

COORD_DECIMALS = 7
JITTER_FRACTION = 0.15  # node jitter, fraction of the cell size (quad corners stay > 43 deg)
EDGE_SLOPE_MAX = 0.36  # |offset| <= slope * distance to the nearer end (tan 19.8 deg)
DISPLACEMENT_FRACTION = 0.15  # first-level midpoint displacement, fraction of the chord
ROUGHNESS = 0.6  # displacement ratio from one level to the next
WARP_SPACING_CELLS = 5  # smooth warp: control points about every 5 cells, ...
WARP_FRACTION = 0.6  # ... each displaced up to 0.6 cell (warp gradient <= ~0.4: one-to-one)


@dataclasses.dataclass(frozen=True)
class SyntheticLayer:
    """A layer in shapely's ragged-array form for MULTIPOLYGON (no shapely objects needed).

    `coords` (N, 2) float64 lon/lat, rings closed, outer rings counter-clockwise, holes clockwise;
    `offsets` = (ring offsets into coords, polygon offsets into rings, feature offsets into
    polygons), as `shapely.to_ragged_array` returns and `shapely.from_ragged_array` accepts.
    `units` are the {code, name, parent} ancestors (counties up to the root) of the features.
    """

    coords: np.ndarray
    offsets: tuple[np.ndarray, np.ndarray, np.ndarray]
    codes: list[str]
    names: list[str]
    parents: list[str]
    units: list[dict]

    def __len__(self) -> int:
        return len(self.codes)

    def geometries(self) -> np.ndarray:
        """The features as an array of shapely MultiPolygons."""
        kind = shapely.GeometryType.MULTIPOLYGON
        return shapely.from_ragged_array(kind, self.coords, self.offsets)

    def to_geojson(self) -> dict:
        """An RFC 7946 FeatureCollection with a `units` member (meant for small layers)."""
        rings, polys, feats = (o.tolist() for o in self.offsets)
        ring = [self.coords[a:b].tolist() for a, b in zip(rings[:-1], rings[1:])]
        features = []
        for i, (code, name, parent) in enumerate(zip(self.codes, self.names, self.parents)):
            parts = [ring[polys[p] : polys[p + 1]] for p in range(feats[i], feats[i + 1])]
            geometry = {"type": "MultiPolygon", "coordinates": parts}
            if len(parts) == 1:
                geometry = {"type": "Polygon", "coordinates": parts[0]}
            props = {"code": code, "name": name, "parent": parent}
            features.append({"type": "Feature", "properties": props, "geometry": geometry})
        units = [dict(u) for u in self.units]
        return {"type": "FeatureCollection", "units": units, "features": features}


def fractal_edges(p0: np.ndarray, p1: np.ndarray, n_seg: int, rng) -> np.ndarray:
    """(E, n_seg+1, 2) wiggly polylines from p0 to p1 (E, 2) by midpoint displacement.

    Offsets are perpendicular to the chord (each edge is a graph over its chord: simple) and
    clipped to |offset| <= EDGE_SLOPE_MAX * distance to the nearer end (a rhombus around the
    chord), so edges meeting at a node at more than 40 degrees can never cross.
    """
    if n_seg < 1 or n_seg & (n_seg - 1):
        raise ValueError(f"segments per edge must be a power of two, got {n_seg}")
    offset = np.zeros((len(p0), n_seg + 1))
    step, amp = n_seg, DISPLACEMENT_FRACTION
    while step > 1:
        half = step // 2
        mid = np.arange(half, n_seg, step)
        noise = rng.uniform(-amp, amp, (len(p0), mid.size))
        offset[:, mid] = 0.5 * (offset[:, mid - half] + offset[:, mid + half]) + noise
        step, amp = half, amp * ROUGHNESS
    t = np.linspace(0.0, 1.0, n_seg + 1)
    envelope = EDGE_SLOPE_MAX * np.minimum(t, 1.0 - t)
    np.clip(offset, -envelope, envelope, out=offset)
    chord = p1 - p0
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1)
    pts = p0[:, None] + t[None, :, None] * chord[:, None] + offset[:, :, None] * normal[:, None]
    pts[:, 0], pts[:, -1] = p0, p1  # exact shared nodes
    return pts


def warp(pts: np.ndarray, extent, cells: tuple[int, int], cell, rng) -> np.ndarray:
    """pts bent by a smooth random warp (smoothstep-blended control grid), rounded.

    Arithmetic only, so equal inputs give bitwise-equal outputs anywhere; the frame of the
    extent stays put and the gradient stays well below 1, so curves that did not cross still
    do not.
    """
    cols, rows = (-(-n // WARP_SPACING_CELLS) + 1 for n in cells)
    control = rng.uniform(-WARP_FRACTION, WARP_FRACTION, (rows, cols, 2)) * cell
    control[[0, -1]], control[:, [0, -1]] = 0.0, 0.0
    x0, y0, x1, y1 = extent
    u = np.clip((pts[..., 0] - x0) / (x1 - x0), 0.0, 1.0) * (cols - 1)
    v = np.clip((pts[..., 1] - y0) / (y1 - y0), 0.0, 1.0) * (rows - 1)
    i, j = np.minimum(u.astype(np.int64), cols - 2), np.minimum(v.astype(np.int64), rows - 2)
    su, sv = u - i, v - j
    su, sv = (su * su * (3.0 - 2.0 * su))[..., None], (sv * sv * (3.0 - 2.0 * sv))[..., None]
    flat, k = control.reshape(-1, 2), j * cols + i
    bottom = flat.take(k, axis=0) * (1.0 - su) + flat.take(k + 1, axis=0) * su
    top = flat.take(k + cols, axis=0) * (1.0 - su) + flat.take(k + cols + 1, axis=0) * su
    return np.round(pts + bottom * (1.0 - sv) + top * sv, COORD_DECIMALS)
