"""Verdict kernels (SPEC §5): inside the allowed area, outside it, or unsure.

For a fix at p with accuracy radius a and threshold ``T = max(a, exit margin)``:
``in`` if p is in the area; ``out`` if the distance d from p to the area exceeds T;
``unsure`` otherwise (the accuracy disk reaches the area). Most fixes are decided by
the area's distance grid (bounds ``lo <= d <= hi``); only fixes whose bounds straddle T
measure d exactly, over the boundary segments bucketed near p.

Exclusion zones: ``in`` when the whole accuracy disk lies inside the zone, ``unsure``
when the disk touches the zone, ``out`` otherwise.
"""

import math

import numpy as np

from geofence._algorithms.rows import point_in_feature
from geofence._jit import body, kernel
from geofence.metric import metres_per_degree, point_segment_m

IN = 0
UNSURE = 1
OUT = 2

# Columns of an area's parameter row.
P_GX0, P_GY0, P_CW, P_CH, P_NX, P_NY, P_DIAG_M = 0, 1, 2, 3, 4, 5, 6
P_BX0, P_BY0, P_BW, P_BH, P_BNX, P_BNY, P_PAD_M = 7, 8, 9, 10, 11, 12, 13
P_BLOCK, P_CNX, P_SLACK, P_ICW, P_ICH = 14, 15, 16, 17, 18
N_PARAMS = 19
BLOCK = 16  # a coarse cell covers BLOCK x BLOCK distance cells


@body
def _distance_bounds(params, coarse, coarse_base, edt, edt_base, area, x, y, limit):
    """(lo, hi) bounds in metres on the distance from (x, y) to the area's boundary.

    A coarse cell (small enough to stay in cache) holds the bounds of its whole block and
    settles most fixes; only fixes near the threshold read the fine grid.
    """
    nx = int(params[area, P_NX])
    lo = np.inf
    hi = np.inf
    if nx > 0:
        fx = (x - params[area, P_GX0]) * params[area, P_ICW]
        fy = (y - params[area, P_GY0]) * params[area, P_ICH]
        if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < params[area, P_NY]:
            ix = int(fx)
            iy = int(fy)
            c = coarse_base[area] + 2 * ((iy // BLOCK) * int(params[area, P_CNX]) + ix // BLOCK)
            slack = params[area, P_SLACK]
            lo = coarse[c] * (1.0 - slack)
            hi = coarse[c + 1] * (1.0 + slack)
            if lo <= limit < hi:
                e = edt[edt_base[area] + iy * nx + ix]
                diag = params[area, P_DIAG_M]
                lo = max(0.0, (e - diag) * (1.0 - slack))
                hi = (e + diag) * (1.0 + slack)
        else:
            lo = params[area, P_PAD_M] * (1.0 - params[area, P_SLACK])
    return lo, hi


@body
def _nearest_within(params, bucket_base, bucket_offsets, bucket_ids, segs, area, x, y, limit,
                    search):
    """Distance to the nearest boundary segment, exact, or any distance <= `limit`.

    Scans the buckets within `search` metres (the caller knows the boundary is no
    farther) and stops at the first segment within `limit`: callers ask "is d <= limit?"
    and want d itself only when it is not.
    """
    best = np.inf
    bnx = int(params[area, P_BNX])
    bny = int(params[area, P_BNY])
    if bnx > 0:
        kx, ky = metres_per_degree(y)
        rx = search / kx
        ry = search / ky
        bw = params[area, P_BW]
        bh = params[area, P_BH]
        i0 = 0
        i1 = bnx - 1
        j0 = 0
        j1 = bny - 1
        if search < np.inf:
            i0 = max(0, math.floor((x - rx - params[area, P_BX0]) / bw))
            i1 = min(bnx - 1, math.floor((x + rx - params[area, P_BX0]) / bw))
            j0 = max(0, math.floor((y - ry - params[area, P_BY0]) / bh))
            j1 = min(bny - 1, math.floor((y + ry - params[area, P_BY0]) / bh))
        base = bucket_base[area]
        j = j0
        while j <= j1 and best > limit:
            for i in range(i0, i1 + 1):
                c = base + j * bnx + i
                for k in range(bucket_offsets[c], bucket_offsets[c + 1]):
                    s = bucket_ids[k]
                    d = point_segment_m(x, y, segs[s, 0], segs[s, 1], segs[s, 2], segs[s, 3],
                                        kx, ky)
                    best = min(best, d)
                if best <= limit:
                    break
            j += 1
    return best


@kernel
def area_verdicts(xs, ys, acc, where, area_of, margin_m, member, zone_offsets, zone_ids,
                  z_coords, z_row_params, z_row_index, z_row_offsets, z_row_edges,
                  params, coarse, coarse_base, edt, edt_base, bucket_base, bucket_offsets,
                  bucket_ids, segs, out_verdict, out_distance):
    """Verdict and deciding distance of each fix against its subject's allowed area."""
    for p in range(xs.shape[0]):
        area = area_of[p]
        x = xs[p]
        y = ys[p]
        inside = where[p] >= 0 and member[area, where[p]]
        for k in range(zone_offsets[area], zone_offsets[area + 1]):
            if not inside and point_in_feature(z_coords, z_row_params, z_row_index,
                                               z_row_offsets, z_row_edges, zone_ids[k], x, y):
                inside = True
        verdict = IN
        distance = 0.0
        if not inside:
            limit = max(acc[p], margin_m)
            lo, hi = _distance_bounds(params, coarse, coarse_base, edt, edt_base, area, x, y,
                                      limit)
            if lo > limit:
                verdict = OUT
                distance = lo
            elif hi <= limit:
                verdict = UNSURE
                distance = hi
            else:
                d = _nearest_within(params, bucket_base, bucket_offsets, bucket_ids, segs,
                                    area, x, y, limit, hi)
                verdict = UNSURE if d <= limit else OUT
                distance = d
        out_verdict[p] = verdict
        out_distance[p] = distance


@kernel
def exclusion_verdicts(xs, ys, acc, pair_fix, pair_zone, z_coords, z_row_params,
                       z_row_index, z_row_offsets, z_row_edges, z_edges, z_edge_offsets,
                       z_bounds, out_verdict, out_distance):
    """Verdict of each (fix, zone) pair and the distance to the zone's boundary.

    For pairs clearly away from the zone the distance is a lower bound (to its bbox).
    """
    for q in range(pair_fix.shape[0]):
        p = pair_fix[q]
        z = pair_zone[q]
        x = xs[p]
        y = ys[p]
        a = acc[p]
        kx, ky = metres_per_degree(y)
        # distance from p to the zone's bounding box: a cheap "clearly away"
        gx = max(z_bounds[z, 0] - x, 0.0, x - z_bounds[z, 2]) * kx
        gy = max(z_bounds[z, 1] - y, 0.0, y - z_bounds[z, 3]) * ky
        verdict = OUT
        distance = math.sqrt(gx * gx + gy * gy)
        if distance <= a:
            inside = point_in_feature(z_coords, z_row_params, z_row_index, z_row_offsets,
                                      z_row_edges, z, x, y)
            distance = np.inf
            for k in range(z_edge_offsets[z], z_edge_offsets[z + 1]):
                i = z_edges[k]
                distance = min(distance, point_segment_m(
                    x, y, z_coords[i, 0], z_coords[i, 1], z_coords[i + 1, 0],
                    z_coords[i + 1, 1], kx, ky))
            if inside:
                verdict = IN if distance >= a else UNSURE
            elif distance <= a:
                verdict = UNSURE
        out_verdict[q] = verdict
        out_distance[q] = distance
