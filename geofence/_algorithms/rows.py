"""Per-feature row buckets: each feature's edges sorted into horizontal slabs.

A point's crossing parity for a feature needs only the edges whose y-range holds the
point's y; bucketing each feature's edges by rows of its own bounding box cuts that to
a handful. Rows are chosen per feature (about two edges per row), an edge is listed in
every row its y-range touches, and horizontal edges are left out (they never count).

Row of y for feature f: ``floor((y - y0[f]) * scale[f])`` clamped to ``[0, nrows[f])``.
The map is monotone in y, so an edge with ``y1 <= y < y2`` is always in y's row.
"""

import math

import numpy as np

from geofence._algorithms.crossing import edge_counts
from geofence._jit import body, serial

# Columns of `row_params` (float64) and `row_index` (int64), one row per feature.
R_Y0, R_SCALE = 0, 1          # y of the first row's bottom, rows per degree
R_FIRST, R_COUNT = 0, 1       # the feature's first global row, its number of rows


@body
def _row_of(y, y0, scale, nrows):
    r = math.floor((y - y0) * scale)
    if r < 0:
        return 0
    if r >= nrows:
        return nrows - 1
    return int(r)


@serial
def build_feature_rows(coords, edges, feature_edge_offsets, edges_per_row):
    """Bucket every feature's edges into rows. Returns (row_params, row_index, row_offsets, row_edges).

    row_params[f] = (y0, scale) and row_index[f] = (first row, number of rows), columns
    named R_*; row_offsets indexes row_edges (edge ids) per global row.
    """
    n_features = feature_edge_offsets.shape[0] - 1
    row_params = np.zeros((n_features, 2), np.float64)
    row_index = np.zeros((n_features, 2), np.int64)
    total_rows = 0
    for f in range(n_features):
        lo = feature_edge_offsets[f]
        hi = feature_edge_offsets[f + 1]
        ymin = np.inf
        ymax = -np.inf
        for k in range(lo, hi):
            i = edges[k]
            ymin = min(ymin, coords[i, 1], coords[i + 1, 1])
            ymax = max(ymax, coords[i, 1], coords[i + 1, 1])
        nrows = max(1, (hi - lo) // edges_per_row)
        height = ymax - ymin
        row_params[f, R_Y0] = ymin if hi > lo else 0.0
        row_params[f, R_SCALE] = nrows / height if height > 0 else 0.0
        row_index[f, R_FIRST] = total_rows
        row_index[f, R_COUNT] = nrows
        total_rows += nrows
    counts = np.zeros(total_rows + 1, np.int64)
    for pass_no in range(2):
        if pass_no == 1:
            offsets = np.zeros(total_rows + 1, np.int64)
            for r in range(total_rows):
                offsets[r + 1] = offsets[r] + counts[r]
            row_edges = np.empty(offsets[total_rows], np.int32)
            fill = offsets[:-1].copy()
        for f in range(n_features):
            y0 = row_params[f, R_Y0]
            scale = row_params[f, R_SCALE]
            base = row_index[f, R_FIRST]
            nrows = row_index[f, R_COUNT]
            for k in range(feature_edge_offsets[f], feature_edge_offsets[f + 1]):
                i = edges[k]
                ya = coords[i, 1]
                yb = coords[i + 1, 1]
                if ya == yb:
                    continue
                r0 = _row_of(min(ya, yb), y0, scale, nrows)
                r1 = _row_of(max(ya, yb), y0, scale, nrows)
                for r in range(base + r0, base + r1 + 1):
                    if pass_no == 0:
                        counts[r] += 1
                    else:
                        row_edges[fill[r]] = i
                        fill[r] += 1
    return row_params, row_index, offsets, row_edges


@body
def point_in_feature(coords, row_params, row_index, row_offsets, row_edges, f, x, y):
    """Crossing parity of feature f for (x, y), reading only the edges of y's row."""
    r = row_index[f, R_FIRST] + _row_of(y, row_params[f, R_Y0], row_params[f, R_SCALE],
                                        row_index[f, R_COUNT])
    inside = False
    for k in range(row_offsets[r], row_offsets[r + 1]):
        if edge_counts(coords, row_edges[k], x, y):
            inside = not inside
    return inside
