"""A uniform grid over the layer that answers most points with one array read.

Each cell is *solid* (no edge touches it: one owner feature, or -1 for none) or
*mixed*. Cell value ``v``: ``v >= -1`` is the owner, ``v <= -2`` means the mixed cell's
record starts at ``records[-2 - v]``. Classification is conservative, so the grid never
changes an answer of the crossing rule: an edge marks every cell its segment touches,
with cells widened by a millionth of their size against rounding (those edges are the
cell's set T); the owner of an untouched cell comes from an exact sweep of its row's
centre line.

A mixed cell's record is self-contained, so a point in it reads two or three cache lines
instead of walking each candidate's row buckets (five dependent misses a candidate).
Record layout, in int32 words:

- SUB_WORDS words: a SUB x SUB table of sub-cells, one byte each (row-major, low byte
  first): the position of the candidate owning it, SUB_NONE, or SUB_TEST (T crosses it);
- n, then the n candidate features, ascending (first odd parity wins: the overlap rule);
- per candidate an entry: ``B | chains << 1``, then per chain its first vertex s and
  ``edges << 2 | flip at s << 1 | flip at the last vertex``. A chain is a run of T edges
  that are consecutive in ``coords``, read in place. A candidate with more than
  CHAIN_EDGES_MAX edges in the cell (a detailed coastline) is the single word ROWS
  instead, and is tested with its row buckets: that costs a few misses, not hundreds
  of edges.

Why ``parity_f(P) = B ^ (T edges of f counting for P) ^ (flips at or below P)`` is exact
for every P in the cell. Let X be just right of the cell and Y0 just below it (half a
widening away). An edge outside T misses the widened cell, so it cannot cross the
segment from P to (X, y): it counts for P as it counts for (X, y). Along the line x = X
the non-T edges change their count only at vertex heights; at a vertex whose two edges
are both outside T they change together (a run of horizontal edges between them lies
wholly right or left of the cell, or it would touch it). So the non-T sum at (X, y) is
its value at (X, Y0) flipped once per *junction* vertex u (a T edge meeting a non-T
edge in ring order, the closing vertex included) lying right of X with Y0 < y_u <= y.
B is that sum at (X, Y0): the exact row-bucket test there minus T's own share. Every
build-time comparison has the widening as margin, far above floating-point rounding,
and the query evaluates each edge with `edge_counts` itself, so answers are
bit-identical to the reference.

An entry only has to be right when every earlier candidate is even. So a candidate whose
T edges and flips equal the previous one's (in a partition, the neighbour across the
border: 98% of two-candidate cells) is a constant, with no chains (see `_twins`). A
sub-cell that T does not touch (widened again) has one parity per feature over its
whole area, so its owner is settled at build time.
"""


import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from geofence._algorithms.crossing import edge_counts
from geofence._algorithms.rows import point_in_feature
from geofence._jit import body, kernel, parallel

_WIDEN = 1e-6   # fraction of a cell (sub-cell) by which it is widened when edges mark it
SUB = 4         # sub-cells per side of a mixed cell (a power of two: exact index math)
SUB_WORDS = SUB * SUB // 4   # the sub-cell table: one byte per sub-cell in int32 words
SUB_NONE = 254  # sub-cell byte: no feature; below it, the owning candidate's position
SUB_TEST = 255  # sub-cell byte: edges cross it, test the candidates
CHAIN_EDGES_MAX = 32  # a candidate with more edges in a cell is tested with its row buckets
ROWS = -1            # ... and its entry is this one word
_TWIN_ITEMS = 128  # no twin check past this many edges and flips in an entry (quadratic)
_USED = -(1 << 62)  # an item of `_twins` already matched
_MAX_RECORDS = (1 << 31) - 3  # record offsets are stored as int32 cell values
# Slots of the grid's parameter vector (float64): origin, cell size, cell counts, and the
# inverse cell size (a multiplication instead of a division on the hot path).
G_X0, G_Y0, G_CW, G_CH, G_NX, G_NY, G_ICW, G_ICH = range(8)
N_GRID_PARAMS = 8
CHUNK = 1024       # points per block in `locate_range`: the mixed list stays in L1
CELL_AHEAD = 48    # points between prefetching a cell and reading it (+25% on 41 M cells)
RECORD_AHEAD = 16  # mixed points between prefetching a record and reading it


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the cache to load ``arr[idx]``: overlaps the DRAM misses of mixed points."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, types.intp), codegen


@body
def _candidate_parity(records, pos, coords, x, y):
    """Parity of the (chains) entry at ``pos`` for (x, y), and where the next entry starts."""
    head = records[pos]
    inside = (head & 1) == 1
    pos += 1
    for _ in range(head >> 1):
        s = records[pos]
        w = records[pos + 1]
        pos += 2
        e = s + (w >> 2)
        for i in range(s, e):
            if edge_counts(coords, i, x, y):
                inside = not inside
        if (w & 2) != 0 and coords[s, 1] <= y:
            inside = not inside
        if (w & 1) != 0 and coords[e, 1] <= y:
            inside = not inside
    return inside, pos


@body
def _first_odd(records, rec, coords, row_params, row_index, row_offsets, row_edges, x, y):
    """Position of the first candidate with odd parity at (x, y), or -1.

    An entry is a candidate's parity *given that every earlier one is even*: that is all
    the overlap rule needs, and it lets a twin be stored as a constant (see `_twins`).
    A ROWS entry is tested with the feature's row buckets instead.
    """
    n = records[rec + SUB_WORDS]
    base = rec + SUB_WORDS + 1
    pos = base + n
    found = -1
    for c in range(n):
        if records[pos] == ROWS:
            inside = point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                      records[base + c], x, y)
            pos += 1
        else:
            inside, pos = _candidate_parity(records, pos, coords, x, y)
        if inside:
            found = c
            break
    return found


@body
def _cell_value(cells, grid, x, y):
    """The cell's value, or -1 outside the grid (NaN included)."""
    fx = (x - grid[G_X0]) * grid[G_ICW]
    fy = (y - grid[G_Y0]) * grid[G_ICH]
    nx = int(grid[G_NX])
    v = -1
    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < grid[G_NY]:
        v = cells[int(fy) * nx + int(fx)]
    return v


@body
def _prefetch_cell(cells, grid, x, y):
    """Prefetch the cell of (x, y), if it is in the grid."""
    fx = (x - grid[G_X0]) * grid[G_ICW]
    fy = (y - grid[G_Y0]) * grid[G_ICH]
    nx = int(grid[G_NX])
    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < grid[G_NY]:
        _prefetch(cells, int(fy) * nx + int(fx))


@body
def _resolve(records, grid, coords, row_params, row_index, row_offsets, row_edges, rec, x, y):
    """The answer for (x, y) in the mixed cell whose record starts at ``rec``."""
    # One exit only: Numba's inliner turns early returns into a slow loop body (8x).
    fx = (x - grid[G_X0]) * grid[G_ICW]
    fy = (y - grid[G_Y0]) * grid[G_ICH]
    sub = int((fy - int(fy)) * SUB) * SUB + int((fx - int(fx)) * SUB)
    code = (records[rec + (sub >> 2)] >> ((sub & 3) << 3)) & 0xFF
    base = rec + SUB_WORDS + 1
    found = -1
    if code < SUB_NONE:
        found = records[base + code]
    elif code == SUB_TEST:
        c = _first_odd(records, rec, coords, row_params, row_index, row_offsets, row_edges,
                       x, y)
        if c >= 0:
            found = records[base + c]
    return found


@kernel
def locate_range(cells, records, grid, coords, row_params, row_index, row_offsets, row_edges,
                 xs, ys, out, lo, hi, mixed):
    """Feature index (or -1) of points lo..hi, one core; ``mixed`` is CHUNK scratch.

    Per block of CHUNK points: a first loop only reads cells (short enough for the
    processor to keep many cache misses in flight, and prefetching CELL_AHEAD points
    early keeps more) and lists the points in mixed cells; a second resolves those,
    prefetching each record RECORD_AHEAD points early so that its DRAM miss overlaps too.
    """
    for start in range(lo, hi, CHUNK):
        stop = min(start + CHUNK, hi)
        n = 0
        for p in range(start, stop):
            if p + CELL_AHEAD < hi:
                _prefetch_cell(cells, grid, xs[p + CELL_AHEAD], ys[p + CELL_AHEAD])
            v = _cell_value(cells, grid, xs[p], ys[p])
            out[p] = v
            mixed[n] = p
            n += v <= -2
        for q in range(n):
            if q + RECORD_AHEAD < n:
                _prefetch(records, -2 - out[mixed[q + RECORD_AHEAD]])
            p = mixed[q]
            out[p] = _resolve(records, grid, coords, row_params, row_index, row_offsets,
                              row_edges, -2 - out[p], xs[p], ys[p])


@parallel
def locate_points_parallel(cells, records, grid, coords, row_params, row_index, row_offsets,
                           row_edges, xs, ys, out, scratch):
    """Feature index of each point (or -1), on every core: one slice per scratch row."""
    n_slices = scratch.shape[0]
    n = xs.shape[0]
    for b in numba.prange(n_slices):
        locate_range(cells, records, grid, coords, row_params, row_index, row_offsets,
                     row_edges, xs, ys, out, b * n // n_slices, (b + 1) * n // n_slices,
                     scratch[b])


@kernel
def points_in_feature_batch(coords, row_params, row_index, row_offsets, row_edges, f,
                            xs, ys, out):
    """Whether each point is inside feature f (the crossing rule, row buckets)."""
    for p in range(xs.shape[0]):
        out[p] = point_in_feature(coords, row_params, row_index, row_offsets, row_edges,
                                  f, xs[p], ys[p])
