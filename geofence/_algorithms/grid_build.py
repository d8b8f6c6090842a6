"""Building the grid of `grid.py`: cell classification and mixed-cell records.

The record format, and why a record's answer is exact, are in `grid`'s docstring; this
module writes what `grid` reads. Everything here runs once per layer (serial, allocating).
"""

import math

import numpy as np

from geofence._algorithms.grid import (_MAX_RECORDS, _TWIN_ITEMS, _USED, _WIDEN,
                                       CHAIN_EDGES_MAX, G_CH, G_CW, G_NX, G_NY, G_X0, G_Y0,
                                       ROWS, SUB, SUB_NONE, SUB_TEST, SUB_WORDS,
                                       _candidate_parity, _first_odd)
from geofence._algorithms.rows import point_in_feature
from geofence._jit import body, serial


# Slots of `box`, the cell a record is written for: its lower-left corner and size, then
# X (just right of it), Y0 (just below it) and a height above every point of it.
BOX_X, BOX_Y, BOX_W, BOX_H, BOX_XRIGHT, BOX_YBELOW, BOX_YABOVE = range(7)
N_BOX = 7


# ---------------------------------------------------------------- build: touched cells

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
    """Cells (widened) that the interval [lo, hi] meets, clamped to [0, n); may be empty."""
    a = math.floor((lo - origin) / size - _WIDEN)
    b = math.floor((hi - origin) / size + _WIDEN)
    return max(0, a), min(n - 1, b)


@serial
def _edges_by_row(coords, edges, grid):
    """CSR of the edges (indices into ``edges``) whose widened y-span meets each grid row."""
    gy0, ch, ny = grid[G_Y0], grid[G_CH], int(grid[G_NY])
    counts = np.zeros(ny, np.int64)
    for k in range(edges.shape[0]):
        i = edges[k]
        j0, j1 = _cell_span(min(coords[i, 1], coords[i + 1, 1]),
                            max(coords[i, 1], coords[i + 1, 1]), gy0, ch, ny)
        for j in range(j0, j1 + 1):
            counts[j] += 1
    offsets = np.zeros(ny + 1, np.int64)
    for j in range(ny):
        offsets[j + 1] = offsets[j] + counts[j]
    out = np.empty(offsets[ny], np.int32)
    fill = offsets[:-1].copy()
    for k in range(edges.shape[0]):
        i = edges[k]
        j0, j1 = _cell_span(min(coords[i, 1], coords[i + 1, 1]),
                            max(coords[i, 1], coords[i + 1, 1]), gy0, ch, ny)
        for j in range(j0, j1 + 1):
            out[fill[j]] = k
            fill[j] += 1
    return offsets, out


@serial
def _row_touches(coords, edges, grid, j, row_ks, keys):
    """Sorted keys ``column * n_edges + k`` of the cells of row j that edge k touches."""
    gx0, gy0, cw, ch = grid[G_X0], grid[G_Y0], grid[G_CW], grid[G_CH]
    nx, ny = int(grid[G_NX]), int(grid[G_NY])
    wx = cw * _WIDEN
    wy = ch * _WIDEN
    n_edges = edges.shape[0]
    count = 0
    for t in range(row_ks.shape[0]):
        k = row_ks[t]
        i = edges[k]
        x1, y1, x2, y2 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
        i0, i1 = _cell_span(min(x1, x2), max(x1, x2), gx0, cw, nx)
        j0, j1 = _cell_span(min(y1, y2), max(y1, y2), gy0, ch, ny)
        small = (i1 - i0 + 1) * (j1 - j0 + 1) <= 2  # then the segment meets every cell
        by0 = gy0 + j * ch - wy
        for ii in range(i0, i1 + 1):
            if not small:
                bx0 = gx0 + ii * cw - wx
                if not _segment_touches_box(x1, y1, x2, y2, bx0, by0,
                                            bx0 + cw + 2 * wx, by0 + ch + 2 * wy):
                    continue
            if count == keys.shape[0]:
                grown = np.empty(keys.shape[0] * 2, np.int64)
                grown[:count] = keys[:count]
                keys = grown
            keys[count] = ii * n_edges + k
            count += 1
    return keys, np.sort(keys[:count])


# ---------------------------------------------------------------- build: mixed records

@serial
def _in_sorted(a, lo, hi, v):
    k = lo + np.searchsorted(a[lo:hi], v)
    return k < hi and a[k] == v


@serial
def _junction_flag(coords, v, xright, ybelow, yabove):
    """Whether the junction vertex v flips the non-T parity inside the cell (see top)."""
    return coords[v, 0] > xright and ybelow < coords[v, 1] <= yabove


@serial
def _write_candidate(out, w, tv, lo, hi, coords, ring_offsets, box):
    """Write one candidate's chains (T edges tv[lo:hi], sorted vertex ids) at out[w]."""
    xright, ybelow, yabove = box[BOX_XRIGHT], box[BOX_YBELOW], box[BOX_YABOVE]
    head = w
    w += 1
    n_chains = 0
    q = lo
    while q < hi:
        s = tv[q]
        t = s
        while q + 1 < hi and tv[q + 1] == t + 1:
            q += 1
            t += 1
        q += 1
        r = np.searchsorted(ring_offsets, s, side="right") - 1
        ring_start = ring_offsets[r]
        ring_end = ring_offsets[r + 1]  # the closing vertex is ring_end - 1
        flags = 0
        # the edge before s is outside T unless the chain wraps round the ring's closure
        if s > ring_start or not _in_sorted(tv, lo, hi, ring_end - 2):
            if _junction_flag(coords, s, xright, ybelow, yabove):
                flags |= 2
        if t + 2 < ring_end or not _in_sorted(tv, lo, hi, ring_start):
            if _junction_flag(coords, t + 1, xright, ybelow, yabove):
                flags |= 1
        out[w] = s
        out[w + 1] = ((t - s + 1) << 2) | flags
        w += 2
        n_chains += 1
    out[head] = n_chains << 1
    return w


@serial
def _segments_equal(coords, i, k):
    """Whether edges i and k are the same segment, in either direction."""
    a0, a1, a2, a3 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
    b0, b1, b2, b3 = coords[k, 0], coords[k, 1], coords[k + 1, 0], coords[k + 1, 1]
    return ((a0 == b0 and a1 == b1 and a2 == b2 and a3 == b3)
            or (a0 == b2 and a1 == b3 and a2 == b0 and a3 == b1))


@serial
def _twins(park, out, b, coords, items):
    """Whether the entries at park[0] and out[b] have the same edges and junction flips.

    Then their parities differ by a constant everywhere in the cell: `edge_counts` orders
    a segment's endpoints before testing it, so both copies of a shared edge give the
    same bits, and equal flip heights flip alike. In a partition nearly every cell with
    two candidates has such twins, and the second one needs no edges at all.
    """
    ea = items[0]   # edges, and flip vertices as -1 - id
    eb = items[1]
    na = _entry_items(park, 0, ea)
    nb = _entry_items(out, b, eb)
    if na != nb or na < 0:
        return False
    for q in range(nb):  # match each of b's items to an unused one of a's
        matched = False
        for r in range(na):
            if ea[r] == _USED or (ea[r] < 0) != (eb[q] < 0):
                continue
            if eb[q] >= 0:
                same = _segments_equal(coords, ea[r], eb[q])
            else:
                same = coords[-1 - ea[r], 1] == coords[-1 - eb[q], 1]
            if same:
                ea[r] = _USED
                matched = True
                break
        if not matched:
            return False
    return True


@serial
def _entry_items(out, pos, items):
    """An entry's edges (vertex ids) and flip vertices (as -1 - id); -1 if too many."""
    count = 0
    head = out[pos]
    pos += 1
    for _ in range(head >> 1):
        s = out[pos]
        w = out[pos + 1]
        pos += 2
        e = s + (w >> 2)
        if count + (e - s) + 2 > items.shape[0]:
            return -1
        for i in range(s, e):
            items[count] = i
            count += 1
        if (w & 2) != 0:
            items[count] = -1 - s
            count += 1
        if (w & 1) != 0:
            items[count] = -1 - e
            count += 1
    return count


@serial
def _fill_sub_table(out, rec, tv, coords, row_params, row_index, row_offsets, row_edges, box,
                    code, stack):
    """Mark sub-cells touched by any T edge as SUB_TEST, settle the others from a centre.

    ``code`` and ``stack`` are SUB * SUB scratch.
    """
    xl, yb, cw, ch = box[BOX_X], box[BOX_Y], box[BOX_W], box[BOX_H]
    sw = cw / SUB
    sh = ch / SUB
    wx = sw * _WIDEN
    wy = sh * _WIDEN
    code[:SUB * SUB] = -1
    for q in range(tv.shape[0]):
        i = tv[q]
        x1, y1, x2, y2 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
        i0, i1 = _cell_span(min(x1, x2), max(x1, x2), xl, sw, SUB)
        j0, j1 = _cell_span(min(y1, y2), max(y1, y2), yb, sh, SUB)
        for sj in range(j0, j1 + 1):
            for si in range(i0, i1 + 1):
                bx0 = xl + si * sw - wx
                by0 = yb + sj * sh - wy
                if code[sj * SUB + si] == -1 and _segment_touches_box(
                        x1, y1, x2, y2, bx0, by0, bx0 + sw + 2 * wx, by0 + sh + 2 * wy):
                    code[sj * SUB + si] = SUB_TEST
    # Untouched neighbours share an owner (their union is free of edges too): one test
    # per connected group of them instead of one per sub-cell.
    for first in range(SUB * SUB):
        if code[first] != -1:
            continue
        sx = first % SUB
        sy = first // SUB
        c = _first_odd(out, rec, coords, row_params, row_index, row_offsets, row_edges,
                       xl + (sx + 0.5) * sw, yb + (sy + 0.5) * sh)
        code[first] = SUB_NONE if c < 0 else c
        stack[0] = first
        top = 1
        while top > 0:
            top -= 1
            sub = stack[top]
            for step in range(4):
                nb = sub + (1, -1, SUB, -SUB)[step]
                if ((step == 0 and sub % SUB == SUB - 1) or (step == 1 and sub % SUB == 0)
                        or nb < 0 or nb >= SUB * SUB):
                    continue
                if code[nb] == -1:
                    code[nb] = code[first]
                    stack[top] = nb
                    top += 1
    for word in range(SUB_WORDS):
        value = 0
        for b in range(4):
            value |= code[word * 4 + b] << (8 * b)
        out[rec + word] = np.int32(value if value < (1 << 31) else value - (1 << 32))


@serial
def _write_record(out, w, cand_f, cand_lo, cand_hi, n, tv, coords, ring_offsets,
                  row_params, row_index, row_offsets, row_edges, box, park, scratch):
    """Append one mixed cell's record at out[w] (see the module docstring); returns its end.

    Per candidate: a ROWS entry past CHAIN_EDGES_MAX edges; else its chains, then B from
    the exact row-bucket parity at the reference point (X, Y0); then, if it is a twin of
    the previous candidate, the constant in their place. ``out`` must have room; ``park``
    holds the previous entry as written (1 + 2 * len(tv) words); ``scratch`` is 4 rows of
    int64: two for `_twins`, two for `_fill_sub_table`.
    """
    rec = w
    out[rec + SUB_WORDS] = n
    for c in range(n):
        out[rec + SUB_WORDS + 1 + c] = cand_f[c]
    w = rec + SUB_WORDS + 1 + n
    xq, yq = box[BOX_XRIGHT], box[BOX_YBELOW]  # the reference point (X, Y0)
    prev_b = -1  # the previous candidate's B; its entry as written is in park
    for c in range(n):
        head = w
        if cand_hi[c] - cand_lo[c] > CHAIN_EDGES_MAX:
            out[head] = ROWS
            w = head + 1
            prev_b = -1
            continue
        w = _write_candidate(out, w, tv, cand_lo[c], cand_hi[c], coords, ring_offsets, box)
        t_share, _ = _candidate_parity(out, head, coords, xq, yq)
        whole = point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                 cand_f[c], xq, yq)
        b = 1 if whole != t_share else 0
        out[head] |= b
        twin = prev_b >= 0 and out[head] > 1 and _twins(park, out, head, coords, scratch)
        park[:w - head] = out[head:w]
        if twin:  # reached only when the previous one is even: a constant parity
            out[head] = b ^ prev_b
            w = head + 1
        prev_b = b
    if n < SUB_NONE:
        _fill_sub_table(out, rec, tv, coords, row_params, row_index, row_offsets, row_edges,
                        box, scratch[2], scratch[3])
    else:
        for word in range(SUB_WORDS):
            out[rec + word] = -1  # every byte SUB_TEST
    return w


# ---------------------------------------------------------------- build: the sweep

@serial
def _centre_crossings(coords, edges, edge_feature, row_ks, yc):
    """x and feature of each edge of ``row_ks`` crossing the line y = yc (half-open)."""
    m = 0
    for t in range(row_ks.shape[0]):
        i = edges[row_ks[t]]
        if min(coords[i, 1], coords[i + 1, 1]) <= yc < max(coords[i, 1], coords[i + 1, 1]):
            m += 1
    xints = np.empty(m, np.float64)
    feats = np.empty(m, np.int32)
    m = 0
    for t in range(row_ks.shape[0]):
        k = row_ks[t]
        i = edges[k]
        x1, y1, x2, y2 = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
        if y1 > y2:
            x1, y1, x2, y2 = x2, y2, x1, y1
        if y1 <= yc < y2:
            xints[m] = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
            feats[m] = edge_feature[k]
            m += 1
    return xints, feats


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
def _gather_candidates(cell_keys, key_base, edges, edge_feature, parity, feats, odd_count,
                       odd_sum, tv, cand_f, cand_lo, cand_hi):
    """A mixed cell's candidates in ascending order; returns their number.

    The touching features, each with its T edges as ``tv[cand_lo:cand_hi]`` (vertex ids,
    ascending: keys sort by edge, so by feature), merged with the features covering the
    cell whole (odd at its right border, no T edges).
    """
    nt = cell_keys.shape[0]
    n = 0
    for q in range(nt):
        k = cell_keys[q] - key_base
        tv[q] = edges[k]
        f = edge_feature[k]
        if n == 0 or cand_f[n - 1] != f:
            cand_f[n] = f
            cand_lo[n] = q
            n += 1
        cand_hi[n - 1] = q + 1
    n_touch = n
    # most often one feature is odd and the running sum names it without a scan
    for t in range(feats.shape[0] if odd_count > 1 else odd_count):
        f = feats[t] if odd_count > 1 else odd_sum
        if parity[f]:
            seen = False
            for c in range(n):
                if cand_f[c] == f:
                    seen = True
                    break
            if not seen:
                cand_f[n] = f
                cand_lo[n] = nt
                cand_hi[n] = nt
                n += 1
    for c in range(n_touch, n):  # insertion sort of the few covering features
        f = cand_f[c]
        r = c - 1
        while r >= 0 and cand_f[r] > f:
            cand_f[r + 1] = cand_f[r]
            cand_lo[r + 1] = cand_lo[r]
            cand_hi[r + 1] = cand_hi[r]
            r -= 1
        cand_f[r + 1] = f
        cand_lo[r + 1] = nt
        cand_hi[r + 1] = nt
    return n


@serial
def build_cells(coords, edges, edge_feature, ring_offsets, n_features, grid,
                row_params, row_index, row_offsets, row_edges, cells, records, first_row,
                total):
    """Fill ``cells`` (nx * ny) and append the mixed cells' records to ``records``.

    Row by row: the edges touching the row's cells, sorted by cell, and a right-to-left
    sweep of the row's centre line that gives each cell the parity of every feature not
    touching it. Starts at ``first_row`` with ``total`` words of ``records`` used; returns
    (the row where ``records`` ran out of room, or ny; words used). The caller allocates
    both arrays and grows ``records`` to resume: NumPy asks the kernel for huge pages on
    large arrays, which saves TLB misses on random reads (10% of `locate`), and Numba's
    allocator does not; pages of ``records`` never written cost no memory.
    """
    gx0, gy0, cw, ch = grid[G_X0], grid[G_Y0], grid[G_CW], grid[G_CH]
    nx, ny = int(grid[G_NX]), int(grid[G_NY])
    n_edges = edges.shape[0]
    row_off, row_list = _edges_by_row(coords, edges, grid)
    parity = np.zeros(n_features, np.bool_)
    keys = np.empty(1024, np.int64)
    tv = np.empty(1024, np.int32)
    cand_f = np.empty(64, np.int32)
    cand_lo = np.empty(64, np.int64)
    cand_hi = np.empty(64, np.int64)
    box = np.empty(N_BOX, np.float64)
    park = np.empty(2048, np.int32)
    scratch = np.empty((4, max(_TWIN_ITEMS, SUB * SUB)), np.int64)
    block = np.empty(4096, np.int32)  # the row's records, then copied to ``records``
    for j in range(first_row, ny):
        yb = gy0 + j * ch
        yc = gy0 + (j + 0.5) * ch
        row_ks = row_list[row_off[j]:row_off[j + 1]]
        keys, row_keys = _row_touches(coords, edges, grid, j, row_ks, keys)
        xints, feats = _centre_crossings(coords, edges, edge_feature, row_ks, yc)
        m = xints.shape[0]
        order = np.argsort(xints)
        ptr = m - 1
        odd_count = 0
        odd_sum = 0
        used = 0
        key_end = row_keys.shape[0]
        for ii in range(nx - 1, -1, -1):
            xr = gx0 + (ii + 1) * cw
            while ptr >= 0 and xints[order[ptr]] > xr:
                f = feats[order[ptr]]
                parity[f] = not parity[f]
                odd_count += 1 if parity[f] else -1
                odd_sum += f if parity[f] else -f
                ptr -= 1
            key_start = key_end
            while key_start > 0 and row_keys[key_start - 1] // n_edges == ii:
                key_start -= 1
            if key_start == key_end:
                cells[j * nx + ii] = _lowest_odd(parity, feats, m, odd_count, odd_sum)
                continue
            nt = key_end - key_start  # mixed
            if nt > tv.shape[0]:
                tv = np.empty(2 * nt, np.int32)
            if 1 + 2 * nt > park.shape[0]:
                park = np.empty(2 + 4 * nt, np.int32)
            need = nt + odd_count
            if need > cand_f.shape[0]:
                cand_f = np.empty(2 * need, np.int32)
                cand_lo = np.empty(2 * need, np.int64)
                cand_hi = np.empty(2 * need, np.int64)
            n = _gather_candidates(row_keys[key_start:key_end], ii * n_edges, edges,
                                   edge_feature, parity, feats, odd_count, odd_sum, tv,
                                   cand_f, cand_lo, cand_hi)
            room = used + SUB_WORDS + 1 + 2 * n + 2 * nt
            if room > block.shape[0]:
                grown = np.empty(max(room, 2 * block.shape[0]), np.int32)
                grown[:used] = block[:used]
                block = grown
            box[BOX_X] = gx0 + ii * cw
            box[BOX_Y] = yb
            box[BOX_W] = cw
            box[BOX_H] = ch
            box[BOX_XRIGHT] = xr + 0.5 * cw * _WIDEN   # X: right of the cell, in the widening
            box[BOX_YBELOW] = yb - 0.5 * ch * _WIDEN   # Y0: below the cell, in the widening
            box[BOX_YABOVE] = yb + ch + 0.5 * ch * _WIDEN   # above every point of the cell
            if total + used > _MAX_RECORDS:
                raise ValueError("locate grid: mixed-cell records exceed 2**31 words")
            cells[j * nx + ii] = -2 - (total + used)
            used = _write_record(block, used, cand_f, cand_lo, cand_hi, n, tv[:nt], coords,
                                 ring_offsets, row_params, row_index, row_offsets, row_edges,
                                 box, park, scratch)
            key_end = key_start
        for t in range(m):
            parity[feats[t]] = False
        if total + used > records.shape[0]:
            return j, total
        records[total:total + used] = block[:used]
        total += used
    return ny, total


# ---------------------------------------------------------------- locate
