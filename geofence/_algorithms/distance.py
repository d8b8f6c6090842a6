"""Distance fields: which cells boundary segments touch, and each cell's distance to them.

An allowed area's verdicts need "is the boundary farther than the accuracy radius?",
not the distance itself. A grid whose cells know the distance from their centre to the
nearest boundary-touched cell answers that with one read for almost every fix: a point
in a cell whose centre lies ``e`` metres from the nearest touched cell is between
``e - diag`` and ``e + diag`` metres from the boundary (``diag``: a cell's diagonal).
"""

import math

import numpy as np

from geofence._algorithms.grid_build import _segment_touches_box
from geofence._jit import body, serial

_FAR = 1e20  # "no touched cell in this line yet", finite so differences stay finite


@body
def _bbox_cells(x1, y1, x2, y2, gx0, gy0, cw, ch, nx, ny):
    """Column and row ranges (i0, i1, j0, j1) of the cells a segment's bbox covers."""
    i0 = max(0, math.floor((min(x1, x2) - gx0) / cw))
    i1 = min(nx - 1, math.floor((max(x1, x2) - gx0) / cw))
    j0 = max(0, math.floor((min(y1, y2) - gy0) / ch))
    j1 = min(ny - 1, math.floor((max(y1, y2) - gy0) / ch))
    return i0, i1, j0, j1


@serial
def touched_cells(segs, gx0, gy0, cw, ch, nx, ny):
    """Boolean grid (ny, nx): cells that a segment (x1, y1, x2, y2) touches."""
    touched = np.zeros((ny, nx), np.bool_)
    for s in range(segs.shape[0]):
        x1, y1, x2, y2 = segs[s, 0], segs[s, 1], segs[s, 2], segs[s, 3]
        i0, i1, j0, j1 = _bbox_cells(x1, y1, x2, y2, gx0, gy0, cw, ch, nx, ny)
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                bx = gx0 + i * cw
                by = gy0 + j * ch
                if _segment_touches_box(x1, y1, x2, y2, bx, by, bx + cw, by + ch):
                    touched[j, i] = True
    return touched


@serial
def _edt_1d(f, n, step, out, v, z):
    """Felzenszwalb-Huttenlocher lower envelope: squared distance transform of one line."""
    k = 0
    v[0] = 0
    z[0] = -np.inf
    z[1] = np.inf
    for q in range(1, n):
        p = v[k]
        s = ((f[q] + (q * step) ** 2) - (f[p] + (p * step) ** 2)) / (2.0 * step * (q - p))
        while s <= z[k]:  # z[0] is -inf: stops at k == 0
            k -= 1
            p = v[k]
            s = ((f[q] + (q * step) ** 2) - (f[p] + (p * step) ** 2)) / (2.0 * step * (q - p))
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = np.inf
    k = 0
    for q in range(n):
        while z[k + 1] < q * step:
            k += 1
        out[q] = (q - v[k]) ** 2 * step * step + f[v[k]]


@serial
def distance_to_touched_m(touched, cell_w_m, cell_h_m):
    """Metres from each cell centre to the nearest touched cell centre (float32 grid)."""
    ny, nx = touched.shape
    n = max(nx, ny)
    sq = np.where(touched, 0.0, _FAR)
    line = np.empty(n, np.float64)
    res = np.empty(n, np.float64)
    v = np.empty(n, np.int64)
    z = np.empty(n + 1, np.float64)
    for i in range(nx):
        for j in range(ny):
            line[j] = sq[j, i]
        _edt_1d(line, ny, cell_h_m, res, v, z)
        for j in range(ny):
            sq[j, i] = res[j]
    for j in range(ny):
        for i in range(nx):
            line[i] = sq[j, i]
        _edt_1d(line, nx, cell_w_m, res, v, z)
        for i in range(nx):
            sq[j, i] = res[i]
    return np.sqrt(sq).astype(np.float32)


@serial
def bucket_segments(segs, gx0, gy0, cw, ch, nx, ny):
    """CSR of segment ids per cell of a bucket grid (a segment is listed in every cell of its bbox)."""
    counts = np.zeros(nx * ny + 1, np.int64)
    for pass_no in range(2):
        if pass_no == 1:
            offsets = np.zeros(nx * ny + 1, np.int64)
            for c in range(nx * ny):
                offsets[c + 1] = offsets[c] + counts[c]
            ids = np.empty(offsets[nx * ny], np.int32)
            fill = offsets[:-1].copy()
        for s in range(segs.shape[0]):
            x1, y1, x2, y2 = segs[s, 0], segs[s, 1], segs[s, 2], segs[s, 3]
            i0, i1, j0, j1 = _bbox_cells(x1, y1, x2, y2, gx0, gy0, cw, ch, nx, ny)
            for j in range(j0, j1 + 1):
                for i in range(i0, i1 + 1):
                    if pass_no == 0:
                        counts[j * nx + i] += 1
                    else:
                        ids[fill[j * nx + i]] = s
                        fill[j * nx + i] += 1
    return offsets, ids
