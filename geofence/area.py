"""Allowed areas: unions of jurisdictions and zones, each with a distance grid.

Many subjects share one allowed area (their county), so everything a verdict needs is
precomputed per distinct area, never per fix: which jurisdiction features belong to it,
which zones, its boundary segments (edges shared by two of its features dropped), a grid
of distances to the boundary, and a coarse bucket grid of the segments for the few fixes
the distance grid cannot decide. All areas live in flat arrays the kernels read by id.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from geofence._algorithms import distance
from geofence._algorithms import verdict as vk
from geofence.errors import UnknownCodeError
from geofence.layer import Layer
from geofence.metric import distance_m as _pair_distance_m

PAD_M = 5_000.0                # distance grid reaches this far beyond the area
CELL_MIN_M = 25.0              # finest distance-grid cell
MAX_CELLS_PER_AREA = 4_000_000  # caps memory at 16 MB per area
LIVE_MAX_CELLS = 1_000_000      # areas first needed by a live registry change (an approved
                                # leave): a coarser grid builds 4x faster; verdicts stay exact
BUCKET_M = 500.0               # cells of the segment buckets for exact distances


@dataclass(frozen=True)
class _Area:
    member: np.ndarray   # bool per jurisdiction feature
    zones: np.ndarray    # zone feature indices
    segs: np.ndarray     # (n, 4) boundary segments, lon/lat
    params: np.ndarray   # one row, columns as in _algorithms.verdict
    coarse: np.ndarray   # float32 (lo, hi) metres per block of BLOCK x BLOCK cells
    edt: np.ndarray      # float32 metres, distance grid flattened
    bucket_offsets: np.ndarray
    bucket_ids: np.ndarray


class AreaTables(NamedTuple):
    """Every area's tables end to end, as `_algorithms.verdict.area_verdicts` reads them by id.

    Per area `a`: `member[a]` its jurisdiction features; its zones
    ``zone_ids[zone_offsets[a]:zone_offsets[a + 1]]``; `params[a]` its parameter row (columns
    `P_*` of `_algorithms.verdict`); its coarse bounds, distance grid and segment buckets
    start at `coarse_base[a]`, `edt_base[a]` and `bucket_base[a]`; `bucket_ids` index `segs`.
    """

    member: np.ndarray          # bool (areas, jurisdiction features)
    zone_offsets: np.ndarray    # int64, areas + 1
    zone_ids: np.ndarray        # int32 zone feature indices
    params: np.ndarray          # float64 (areas, N_PARAMS)
    coarse: np.ndarray          # float32 (lo, hi) per block of distance cells
    coarse_base: np.ndarray     # int64 per area
    edt: np.ndarray             # float32 distance grids, flattened
    edt_base: np.ndarray        # int64 per area
    bucket_base: np.ndarray     # int64 per area, into bucket_offsets
    bucket_offsets: np.ndarray  # int64, into bucket_ids
    bucket_ids: np.ndarray      # int64 segment indices
    segs: np.ndarray            # float64 (segments, 4) boundary segments


class AreaSet:
    """Every distinct allowed area in use, by id, with the flat tables the kernels read."""

    def __init__(self, jurisdictions: Layer, zones: Layer | None = None):
        self.jurisdictions = jurisdictions
        self.zones = zones
        self._ids: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        self._areas: list[_Area] = []
        self._tables = _TableBuffers(len(jurisdictions))
        self._appended = 0
        # Cells of a new area's distance grid at most; `live()` lowers it once the areas
        # known at start are built, so that one a live change needs is ready sooner.
        self.max_cells = MAX_CELLS_PER_AREA

    def live(self) -> None:
        """From now on new areas are built for a running engine: sooner, coarser grid."""
        self.max_cells = LIVE_MAX_CELLS

    def __len__(self) -> int:
        return len(self._areas)

    def resolve(self, codes: Iterable[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Jurisdiction feature and zone indices covered by codes (any level of either layer)."""
        feats: set[int] = set()
        zones: set[int] = set()
        for code in codes:
            if self.jurisdictions.hierarchy.is_known(code):
                feats.update(self.jurisdictions.features_under(code).tolist())
            elif self.zones is not None and self.zones.hierarchy.is_known(code):
                zones.update(self.zones.features_under(code).tolist())
            else:
                raise UnknownCodeError(f"unknown jurisdiction or zone code {code!r}")
        return tuple(sorted(feats)), tuple(sorted(zones))

    def area_id(self, codes: Iterable[str]) -> int:
        """Id of the area made of these codes; built on first use, then shared."""
        key = self.resolve(codes)
        if key not in self._ids:
            self._areas.append(self._build(*key))
            self._ids[key] = len(self._areas) - 1
        return self._ids[key]

    def _build(self, feats: tuple[int, ...], zones: tuple[int, ...]) -> _Area:
        member = np.zeros(len(self.jurisdictions), np.bool_)
        member[list(feats)] = True
        segs = boundary_segments(self.jurisdictions, feats)
        if zones:
            segs = np.concatenate([segs, boundary_segments(self.zones, zones, dissolve=False)])
        params = np.zeros(vk.N_PARAMS)
        params[vk.P_PAD_M] = PAD_M
        if not len(segs):
            return _Area(member, np.array(zones, np.int32), segs, params, np.zeros(0, np.float32),
                         np.zeros(0, np.float32), np.zeros(1, np.int64), np.zeros(0, np.int32))
        lo = np.minimum(segs[:, [0, 1]], segs[:, [2, 3]]).min(axis=0)
        hi = np.maximum(segs[:, [0, 1]], segs[:, [2, 3]]).max(axis=0)
        kx, ky = _metres_per_degree((lo[1] + hi[1]) / 2)
        pad = np.array([PAD_M / kx, PAD_M / ky])
        lo, hi = lo - pad, hi + pad
        width_m, height_m = (hi[0] - lo[0]) * kx, (hi[1] - lo[1]) * ky
        cell_m = max(CELL_MIN_M, math.sqrt(width_m * height_m / self.max_cells))
        nx, ny = math.ceil(width_m / cell_m), math.ceil(height_m / cell_m)
        cw, ch = cell_m / kx, cell_m / ky
        touched = distance.touched_cells(segs, lo[0], lo[1], cw, ch, nx, ny)
        edt = distance.distance_to_touched_m(touched, cell_m, cell_m)
        coarse = _block_bounds(edt, cell_m * math.sqrt(2))
        bnx, bny = math.ceil(width_m / BUCKET_M), math.ceil(height_m / BUCKET_M)
        bw, bh = BUCKET_M / kx, BUCKET_M / ky
        offsets, ids = distance.bucket_segments(segs, lo[0], lo[1], bw, bh, bnx, bny)
        params[[vk.P_GX0, vk.P_GY0, vk.P_CW, vk.P_CH, vk.P_NX, vk.P_NY, vk.P_DIAG_M]] = (
            lo[0], lo[1], cw, ch, nx, ny, cell_m * math.sqrt(2))
        params[[vk.P_BX0, vk.P_BY0, vk.P_BW, vk.P_BH, vk.P_BNX, vk.P_BNY]] = (
            lo[0], lo[1], bw, bh, bnx, bny)
        params[[vk.P_BLOCK, vk.P_CNX]] = vk.BLOCK, math.ceil(nx / vk.BLOCK)
        params[[vk.P_ICW, vk.P_ICH]] = 1.0 / cw, 1.0 / ch  # multiplications on the hot path
        params[vk.P_SLACK] = _frame_slack(lo[1], hi[1], (lo[1] + hi[1]) / 2)
        return _Area(member, np.array(zones, np.int32), segs, params, coarse, edt.reshape(-1),
                     offsets, ids)

    def tables(self) -> AreaTables:
        """The areas end to end for the kernels; a new area is appended (amortised O(its
        size)), never the whole set copied again."""
        while self._appended < len(self._areas):
            self._tables.append(self._areas[self._appended])
            self._appended += 1
        return self._tables.view()

    def distance_m(self, area_id: int, lon, lat) -> np.ndarray:
        """Exact distance in metres from each point to the area's boundary (for alarm details)."""
        segs = self._areas[area_id].segs
        lon = np.atleast_1d(np.asarray(lon, np.float64))
        lat = np.atleast_1d(np.asarray(lat, np.float64))
        return np.array([_segments_distance_m(segs, x, y) for x, y in zip(lon, lat)])


class _Growing:
    """An array that grows at its end, doubling its capacity (rows for 2-D)."""

    def __init__(self, dtype, width: int | None = None):
        shape = (16,) if width is None else (16, width)
        self.data = np.zeros(shape, dtype)
        self.n = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self.data):
            grown = np.zeros((max(need, 2 * len(self.data)),) + self.data.shape[1:],
                             self.data.dtype)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:need] = rows
        self.n = need

    def view(self) -> np.ndarray:
        return self.data[:self.n]


class _TableBuffers:
    """`AreaTables` kept as growing buffers: each area's offsets shifted by what precedes."""

    def __init__(self, n_features: int):
        self.member = _Growing(np.bool_, n_features)
        self.zone_offsets = _Growing(np.int64)
        self.zone_offsets.extend(np.zeros(1, np.int64))
        self.zone_ids = _Growing(np.int32)
        self.params = _Growing(np.float64, vk.N_PARAMS)
        self.coarse, self.coarse_base = _Growing(np.float32), _Growing(np.int64)
        self.edt, self.edt_base = _Growing(np.float32), _Growing(np.int64)
        self.bucket_base, self.bucket_offsets = _Growing(np.int64), _Growing(np.int64)
        self.bucket_ids = _Growing(np.int64)
        self.segs = _Growing(np.float64, 4)

    def append(self, a: _Area) -> None:
        self.member.extend(a.member[None, :])
        self.zone_ids.extend(a.zones)
        self.zone_offsets.extend(np.array([self.zone_ids.n], np.int64))
        self.params.extend(a.params[None, :])
        self.coarse_base.extend(np.array([self.coarse.n], np.int64))
        self.coarse.extend(a.coarse)
        self.edt_base.extend(np.array([self.edt.n], np.int64))
        self.edt.extend(a.edt)
        self.bucket_base.extend(np.array([self.bucket_offsets.n], np.int64))
        self.bucket_offsets.extend(a.bucket_offsets.astype(np.int64) + self.bucket_ids.n)
        self.bucket_ids.extend(a.bucket_ids.astype(np.int64) + self.segs.n)
        self.segs.extend(a.segs)

    def view(self) -> AreaTables:
        return AreaTables(*(getattr(self, name).view() for name in AreaTables._fields))


def boundary_segments(layer: Layer, features: Iterable[int], dissolve: bool = True) -> np.ndarray:
    """Segments (x1, y1, x2, y2) of the features' rings; with `dissolve`, edges that two of
    them share (the inner borders of a county made of townships) are left out."""
    idx = layer.index
    edges = [idx.edges[idx.feature_edge_offsets[f]:idx.feature_edge_offsets[f + 1]]
             for f in features]
    if not edges:
        return np.zeros((0, 4))
    first = np.concatenate(edges)
    xy = layer.geometry.coords
    segs = np.hstack([xy[first], xy[first + 1]])
    segs = segs[(segs[:, 0] != segs[:, 2]) | (segs[:, 1] != segs[:, 3])]
    if dissolve and len(segs):
        a, b = segs[:, :2], segs[:, 2:]
        swap = (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & (a[:, 1] > b[:, 1]))
        canon = np.where(swap[:, None], np.hstack([b, a]), segs)
        _, inverse, counts = np.unique(canon, axis=0, return_inverse=True, return_counts=True)
        segs = segs[counts[inverse.reshape(-1)] == 1]
    return np.ascontiguousarray(segs)


def _frame_slack(lat_min: float, lat_max: float, lat0: float) -> float:
    """Relative error of distances measured in a frame scaled at lat0, anywhere between
    lat_min and lat_max (plus a margin for the rest of the projection): the grid's
    bounds are widened by it, so they hold even for an area spread over many degrees."""
    kx0, ky0 = _metres_per_degree(lat0)
    worst = 0.0
    for lat in np.linspace(lat_min, lat_max, 33):
        kx, ky = _metres_per_degree(float(lat))
        worst = max(worst, abs(kx0 / kx - 1), abs(kx / kx0 - 1), abs(ky0 / ky - 1),
                    abs(ky / ky0 - 1))
    return worst + 0.005


def _block_bounds(edt: np.ndarray, diag_m: float) -> np.ndarray:
    """Per block of BLOCK x BLOCK cells: the lowest and highest distance bound in it."""
    b = vk.BLOCK
    ny, nx = edt.shape
    cny, cnx = -(-ny // b), -(-nx // b)
    padded = np.full((cny * b, cnx * b), np.nan, np.float32)
    padded[:ny, :nx] = edt
    blocks = padded.reshape(cny, b, cnx, b)
    lo = np.maximum(np.nanmin(blocks, axis=(1, 3)) - diag_m, 0)
    hi = np.nanmax(blocks, axis=(1, 3)) + diag_m
    return np.stack([lo, hi], axis=-1).astype(np.float32).reshape(-1)


def _metres_per_degree(lat: float) -> tuple[float, float]:
    kx = float(_pair_distance_m(0.0, lat, 1e-3, lat)) * 1e3
    ky = float(_pair_distance_m(0.0, lat - 5e-4, 0.0, lat + 5e-4)) * 1e3
    return kx, ky


def _segments_distance_m(segs: np.ndarray, x: float, y: float) -> float:
    if not len(segs):
        return math.inf
    kx, ky = _metres_per_degree(y)
    a = (segs[:, :2] - (x, y)) * (kx, ky)
    b = (segs[:, 2:] - (x, y)) * (kx, ky)
    d = b - a
    length2 = (d * d).sum(axis=1)
    t = np.clip(-(a * d).sum(axis=1) / np.where(length2 > 0, length2, 1), 0, 1)
    c = a + t[:, None] * d
    return float(np.sqrt((c * c).sum(axis=1)).min())
