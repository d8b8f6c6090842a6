"""The point-location index of a layer: row buckets per feature plus a solid/mixed grid.

Built once per layer from flat, Arrow-style geometry (shapely's ragged-array form of
a MultiPolygon array), then queried per batch with no Python per point.
"""

from dataclasses import dataclass

import numba
import numpy as np

from geofence._algorithms import grid, grid_build, rows
from geofence.errors import InputArrayError

EDGES_PER_ROW = 2          # row height per feature: about this many edges per row
# Grid resolution, cells per polygon edge. On the national test layer (10.4 M edges)
# 2 / 3 / 4 gave 45 / 49 / 50 M points/s on one core for a 354 / 418 / 480 MB index:
# mixed cells are cheap now, so finer grids buy little.
GRID_CELLS_PER_EDGE = 3.0
GRID_MIN_CELLS = 4096
GRID_MAX_CELLS = 1 << 26   # 64 Mi cells (256 MiB) for the largest layers
RECORD_WORDS_PER_EDGE = 8  # first guess at the size of the records (3.1 used nationally)
RECORD_MIN_WORDS = 1 << 16


@dataclass(frozen=True)
class FlatGeometry:
    """Closed rings in one coordinate array, with ring, part and feature offsets."""

    coords: np.ndarray            # (n_vertices, 2) float64, lon/lat
    ring_offsets: np.ndarray      # into coords, per ring
    part_offsets: np.ndarray      # into rings, per polygon part
    feature_offsets: np.ndarray   # into parts, per feature

    @classmethod
    def from_ragged(cls, coords, offsets) -> "FlatGeometry":
        """From ``shapely.to_ragged_array`` output of a MultiPolygon array."""
        ring, part, feature = (np.ascontiguousarray(o, dtype=np.int64) for o in offsets)
        xy = np.ascontiguousarray(np.asarray(coords, dtype=np.float64)[:, :2])
        return cls(xy, ring, part, feature)

    @classmethod
    def empty(cls) -> "FlatGeometry":
        """A layer with no features (a zone layer with no zones yet)."""
        return cls(np.zeros((0, 2)), *(np.zeros(1, np.int64) for _ in range(3)))

    @property
    def n_features(self) -> int:
        return len(self.feature_offsets) - 1

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Edge ids (first vertex index) grouped by feature, and each feature's edge offsets."""
        ring_start = self.ring_offsets[:-1]
        ring_len = np.diff(self.ring_offsets)
        edges_per_ring = np.maximum(ring_len - 1, 0)
        ring_edge_offsets = np.concatenate([[0], np.cumsum(edges_per_ring)])
        n_edges = int(ring_edge_offsets[-1])
        ring_of_edge = np.repeat(np.arange(len(ring_start)), edges_per_ring)
        edges = (ring_start[ring_of_edge]
                 + np.arange(n_edges) - ring_edge_offsets[ring_of_edge]).astype(np.int32)
        feature_ring = self.part_offsets[self.feature_offsets]
        feature_edge_offsets = ring_edge_offsets[feature_ring].astype(np.int64)
        return edges, feature_edge_offsets


def _grid_params(coords: np.ndarray, n_edges: int) -> np.ndarray:
    """Grid over the bounding box (widened by one cell), cells square in metres."""
    lo = coords.min(axis=0)
    hi = coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    x_metres_per_degree = max(np.cos(np.radians((lo[1] + hi[1]) / 2)), 0.05)
    n_cells = int(np.clip(n_edges * GRID_CELLS_PER_EDGE, GRID_MIN_CELLS, GRID_MAX_CELLS))
    area = span[0] * x_metres_per_degree * span[1]
    cell_h = np.sqrt(area / n_cells)
    cell_w = cell_h / x_metres_per_degree
    params = np.empty(grid.N_GRID_PARAMS)
    params[grid.G_X0], params[grid.G_Y0] = lo[0] - cell_w, lo[1] - cell_h
    params[grid.G_CW], params[grid.G_CH] = cell_w, cell_h
    params[grid.G_NX] = int(np.ceil(span[0] / cell_w)) + 2
    params[grid.G_NY] = int(np.ceil(span[1] / cell_h)) + 2
    params[grid.G_ICW], params[grid.G_ICH] = 1.0 / cell_w, 1.0 / cell_h
    return params


@dataclass(frozen=True)
class LocateIndex:
    """Everything `locate` reads; arrays only, so kernels take them as they are."""

    geometry: FlatGeometry
    edges: np.ndarray
    feature_edge_offsets: np.ndarray
    row_params: np.ndarray
    row_index: np.ndarray
    row_offsets: np.ndarray
    row_edges: np.ndarray
    grid: np.ndarray              # parameters, slots `grid.G_*`
    cells: np.ndarray
    records: np.ndarray           # mixed cells, self-contained (see `grid`)

    @classmethod
    def build(cls, geometry: FlatGeometry) -> "LocateIndex":
        coords = geometry.coords
        edges, feature_edge_offsets = geometry.edges()
        edge_feature = np.repeat(np.arange(geometry.n_features, dtype=np.int32),
                                 np.diff(feature_edge_offsets))
        row_params, row_index, row_offsets, row_edges = rows.build_feature_rows(
            coords, edges, feature_edge_offsets, EDGES_PER_ROW)
        params = _grid_params(coords, len(edges))
        nx, ny = int(params[grid.G_NX]), int(params[grid.G_NY])
        cells = np.full(nx * ny, -1, np.int32)
        # Pages never written are never mapped: room to spare costs address space only.
        records = np.empty(RECORD_WORDS_PER_EDGE * len(edges) + RECORD_MIN_WORDS, np.int32)
        row = used = 0
        while True:
            row, used = grid_build.build_cells(coords, edges, edge_feature, geometry.ring_offsets,
                                         geometry.n_features, params, row_params, row_index,
                                         row_offsets, row_edges, cells, records, row, used)
            if row == ny:
                break
            grown = np.empty(2 * len(records), np.int32)
            grown[:used] = records[:used]
            records = grown
        records.resize(max(used, 1), refcheck=False)  # shrinks in place (realloc)
        return cls(geometry, edges, feature_edge_offsets, row_params, row_index,
                   row_offsets, row_edges, params, cells, records)

    def locate(self, lon, lat, out=None, parallel: bool = False) -> np.ndarray:
        """Feature index per point (int32, -1 for none). See `crossing` for the boundary rule."""
        xs, ys = as_points(lon, lat)
        out = _out_array(out, len(xs))
        coords = self.geometry.coords
        if parallel:
            scratch = np.empty((numba.get_num_threads(), grid.CHUNK), np.int64)
            grid.locate_points_parallel(self.cells, self.records, self.grid, coords,
                                        self.row_params, self.row_index, self.row_offsets,
                                        self.row_edges, xs, ys, out, scratch)
        else:
            grid.locate_range(self.cells, self.records, self.grid, coords, self.row_params,
                              self.row_index, self.row_offsets, self.row_edges, xs, ys, out,
                              0, len(xs), np.empty(grid.CHUNK, np.int64))
        return out

    def contains(self, feature: int, lon, lat) -> np.ndarray:
        """Whether each point is inside one feature, under the same boundary rule."""
        xs, ys = as_points(lon, lat)
        out = np.empty(len(xs), np.bool_)
        grid.points_in_feature_batch(self.geometry.coords, self.row_params, self.row_index,
                                     self.row_offsets, self.row_edges, feature, xs, ys, out)
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.edges, self.row_params, self.row_index,
                                      self.row_offsets, self.row_edges, self.cells,
                                      self.records))

    def stats(self) -> dict:
        n_cells = len(self.cells)
        starts = -2 - self.cells[self.cells <= -2].astype(np.int64)
        n_cand = self.records[starts + grid.SUB_WORDS] if len(starts) else np.zeros(1)
        sub = self.records[starts[:, None] + np.arange(grid.SUB_WORDS)].view(np.uint8)
        return {"grid": (int(self.grid[grid.G_NX]), int(self.grid[grid.G_NY])), "cells": n_cells,
                "mixed_fraction": len(starts) / n_cells, "index_bytes": self.nbytes,
                "mean_candidates": float(n_cand.mean()),
                "test_subcell_fraction": float((sub == grid.SUB_TEST).mean()) if sub.size else 0.0}


def as_points(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert a batch of coordinates to contiguous float64 arrays."""
    xs = np.ascontiguousarray(lon, dtype=np.float64).reshape(-1)
    ys = np.ascontiguousarray(lat, dtype=np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise InputArrayError(f"lon and lat differ in length: {xs.shape[0]} and {ys.shape[0]}")
    return xs, ys


def _out_array(out, n: int) -> np.ndarray:
    if out is None:
        return np.empty(n, np.int32)
    if out.dtype != np.int32 or out.shape != (n,) or not out.flags.c_contiguous:
        raise InputArrayError(f"out must be a contiguous int32 array of length {n}")
    return out
