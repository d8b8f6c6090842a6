"""A uniform grid over the layer that answers most points with one array read.

Each cell is *solid* (no edge touches it: one owner feature, or -1 for none) or
*mixed* (edges touch it: a short ascending list of candidate features, tested with the
row buckets of `rows.py`). Cell value ``v``: ``v >= -1`` is the owner, ``v <= -2``
means mixed cell number ``-2 - v``.

Classification is conservative, so the grid never changes an answer of the crossing
rule: an edge marks every cell its segment touches, with cells widened by a millionth
of their size against rounding; the owner of an untouched cell comes from an exact
sweep of its row's centre line. A mixed cell's candidates are the features that touch
it plus any feature that covers it whole (from the same sweep), in ascending order, so
the first hit is the lowest index: the overlap rule.
"""

import math

import numba
import numpy as np

from geofence._algorithms.rows import point_in_feature
from geofence._jit import body, kernel, parallel, serial

_WIDEN = 1e-6  # fraction of a cell by which cells are widened when edges mark them


@serial
def _segment_touches_box(x1, y1, x2, y2, bx0, by0, bx1, by1):
    """Liang-Barsky: does the segment meet the closed box?"""
    t0 = 0.0
    t1 = 1.0
    dx = x2 - x1
    dy = y2 - y1
    for side in range(4):
        if side == 0:
            p, q = -dx, x1 - bx0
        elif side == 1:
            p, q = dx, bx1 - x1
        elif side == 2:
            p, q = -dy, y1 - by0
        else:
            p, q = dy, by1 - y1
        if p == 0.0:
            if q < 0.0:
                return False
        else:
            t = q / p
            if p < 0.0:
                if t > t1:
                    return False
                t0 = max(t0, t)
            else:
                if t < t0:
                    return False
                t1 = min(t1, t)
    return True


@serial
def _cell_span(lo, hi, origin, size, n):
    a = math.floor((lo - origin) / size - _WIDEN)
    b = math.floor((hi - origin) / size + _WIDEN)
    return max(0, a), min(n - 1, b)


@serial
def touched_cell_features(coords, edges, edge_feature, n_features, grid):
    """Sorted unique keys ``cell * n_features + feature`` for every cell an edge touches."""
    gx0, gy0, cw, ch, nx, ny = grid[0], grid[1], grid[2], grid[3], int(grid[4]), int(grid[5])
    wx = cw * _WIDEN
    wy = ch * _WIDEN
    count = 0
    keys = np.empty(edges.shape[0] * 3 + 16, np.int64)
    for k in range(edges.shape[0]):
        i = edges[k]
        x1, y1, x2, y2 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
        i0, i1 = _cell_span(min(x1, x2), max(x1, x2), gx0, cw, nx)
        j0, j1 = _cell_span(min(y1, y2), max(y1, y2), gy0, ch, ny)
        small = (i1 - i0 + 1) * (j1 - j0 + 1) <= 2
        for j in range(j0, j1 + 1):
            for ii in range(i0, i1 + 1):
                if not small:
                    bx0 = gx0 + ii * cw - wx
                    by0 = gy0 + j * ch - wy
                    if not _segment_touches_box(x1, y1, x2, y2, bx0, by0,
                                                bx0 + cw + 2 * wx, by0 + ch + 2 * wy):
                        continue
                if count == keys.shape[0]:
                    grown = np.empty(keys.shape[0] * 2, np.int64)
                    grown[:count] = keys[:count]
                    keys = grown
                keys[count] = (j * nx + ii) * n_features + edge_feature[k]
                count += 1
    return np.unique(keys[:count])


@serial
def _edges_by_grid_row(coords, edges, grid):
    """CSR of the edges crossing each grid row's centre line (half-open in y)."""
    gy0, ch, ny = grid[1], grid[3], int(grid[5])
    counts = np.zeros(ny + 1, np.int64)
    offsets = np.zeros(ny + 1, np.int64)
    for pass_no in range(2):
        if pass_no == 1:
            for j in range(ny):
                offsets[j + 1] = offsets[j] + counts[j]
            out = np.empty(offsets[ny], np.int64)
            fill = offsets[:-1].copy()
        for k in range(edges.shape[0]):
            i = edges[k]
            ylo = min(coords[i, 1], coords[i + 1, 1])
            yhi = max(coords[i, 1], coords[i + 1, 1])
            j0 = max(0, math.floor((ylo - gy0) / ch - 0.5) - 1)
            j1 = min(ny - 1, math.floor((yhi - gy0) / ch - 0.5) + 1)
            for j in range(j0, j1 + 1):
                yc = gy0 + (j + 0.5) * ch
                if ylo <= yc < yhi:
                    if pass_no == 0:
                        counts[j] += 1
                    else:
                        out[fill[j]] = k
                        fill[j] += 1
    return offsets, out


@body
def _lowest_odd(parity, features, n, odd_count, odd_sum):
    """Lowest feature with odd parity (the overlap rule), -1 for none."""
    if odd_count == 0:
        return -1
    if odd_count == 1:
        return odd_sum
    best = -1
    for k in range(n):
        f = features[k]
        if parity[f] and (best < 0 or f < best):
            best = f
    return best


@serial
def classify_cells(coords, edges, edge_feature, n_features, grid, keys):
    """Cell values and the mixed cells' candidate lists (see the module docstring)."""
    gx0, gy0, cw, ch, nx, ny = grid[0], grid[1], grid[2], grid[3], int(grid[4]), int(grid[5])
    cells = np.full(nx * ny, -1, np.int32)
    row_off, row_edges = _edges_by_grid_row(coords, edges, grid)
    parity = np.zeros(n_features, np.bool_)
    cand = np.empty(keys.shape[0] + 1024, np.int32)
    cand_offsets = [0]
    n_cand = 0
    key_end = keys.shape[0]
    key_cells = keys // n_features
    for j in range(ny - 1, -1, -1):
        yc = gy0 + (j + 0.5) * ch
        m = row_off[j + 1] - row_off[j]
        xints = np.empty(m, np.float64)
        feats = np.empty(m, np.int32)
        for t in range(m):
            k = row_edges[row_off[j] + t]
            i = edges[k]
            x1, y1, x2, y2 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
            if y1 > y2:
                x1, y1, x2, y2 = x2, y2, x1, y1
            xints[t] = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
            feats[t] = edge_feature[k]
        order = np.argsort(xints)
        ptr = m - 1
        odd_count = 0
        odd_sum = 0
        for ii in range(nx - 1, -1, -1):
            xr = gx0 + (ii + 1) * cw
            while ptr >= 0 and xints[order[ptr]] > xr:
                f = feats[order[ptr]]
                parity[f] = not parity[f]
                odd_count += 1 if parity[f] else -1
                odd_sum += f if parity[f] else -f
                ptr -= 1
            cell = j * nx + ii
            key_start = key_end
            while key_start > 0 and key_cells[key_start - 1] == cell:
                key_start -= 1
            if key_start == key_end:
                cells[cell] = _lowest_odd(parity, feats, m, odd_count, odd_sum)
                continue
            # mixed: touching features (ascending) merged with features covering it whole
            need = n_cand + (key_end - key_start) + odd_count
            if need > cand.shape[0]:
                grown = np.empty(max(need, cand.shape[0] * 2), np.int32)
                grown[:n_cand] = cand[:n_cand]
                cand = grown
            first = n_cand
            for q in range(key_start, key_end):
                cand[n_cand] = keys[q] - cell * n_features
                n_cand += 1
            for t in range(m):
                f = feats[t]
                if parity[f]:
                    seen = False
                    for q in range(first, n_cand):
                        if cand[q] == f:
                            seen = True
                            break
                    if not seen:
                        cand[n_cand] = f
                        n_cand += 1
            for q in range(first + 1, n_cand):  # insertion sort: lists are short
                v = cand[q]
                r = q - 1
                while r >= first and cand[r] > v:
                    cand[r + 1] = cand[r]
                    r -= 1
                cand[r + 1] = v
            cells[cell] = -2 - (len(cand_offsets) - 1)
            cand_offsets.append(n_cand)
            key_end = key_start
        for t in range(m):
            parity[feats[t]] = False
    # Mixed cells were numbered from the top-right corner; lists are in that order.
    return cells, np.array(cand_offsets, np.int64), cand[:n_cand].copy()


@body
def _locate_point(cells, cand_offsets, cand, grid, coords, row_params, row_index,
                  row_offsets, row_edges, x, y):
    # One exit only: Numba's inliner turns early returns into a slow loop body (8x).
    fx = (x - grid[0]) * grid[6]
    fy = (y - grid[1]) * grid[7]
    nx = int(grid[4])
    found = -1
    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < grid[5]:
        v = cells[int(fy) * nx + int(fx)]
        if v >= -1:
            found = v
        else:
            m = -2 - v
            for k in range(cand_offsets[m], cand_offsets[m + 1]):
                if point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                    cand[k], x, y):
                    found = cand[k]
                    break
    return found


@body
def _cell_value(cells, grid, x, y):
    """The cell's value, or -1 outside the grid (NaN included)."""
    fx = (x - grid[0]) * grid[6]
    fy = (y - grid[1]) * grid[7]
    nx = int(grid[4])
    v = -1
    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < grid[5]:
        v = cells[int(fy) * nx + int(fx)]
    return v


@kernel
def locate_points(cells, cand_offsets, cand, grid, coords, row_params, row_index,
                  row_offsets, row_edges, xs, ys, out):
    """Feature index of each point (or -1), one core.

    Two passes: the first only reads cells, a loop short enough for the processor to
    keep many cache misses in flight on a large grid; the second resolves mixed cells.
    """
    for p in range(xs.shape[0]):
        out[p] = _cell_value(cells, grid, xs[p], ys[p])
    for p in range(xs.shape[0]):
        v = out[p]
        if v <= -2:
            found = -1
            for k in range(cand_offsets[-2 - v], cand_offsets[-1 - v]):
                if point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                    cand[k], xs[p], ys[p]):
                    found = cand[k]
                    break
            out[p] = found


@parallel
def locate_points_parallel(cells, cand_offsets, cand, grid, coords, row_params, row_index,
                           row_offsets, row_edges, xs, ys, out):
    """Feature index of each point (or -1), on every core."""
    for p in numba.prange(xs.shape[0]):
        out[p] = _locate_point(cells, cand_offsets, cand, grid, coords, row_params,
                               row_index, row_offsets, row_edges, xs[p], ys[p])


@kernel
def points_in_feature_batch(coords, row_params, row_index, row_offsets, row_edges, f,
                            xs, ys, out):
    """Whether each point is inside feature f (the crossing rule, row buckets)."""
    for p in range(xs.shape[0]):
        out[p] = point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                  f, xs[p], ys[p])
