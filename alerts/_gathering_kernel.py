"""Compiled spatial join of one window of fixes: linked people seen together (聚集).

The caller hashes every fix into a metric grid cell (`cell_keys`) and sorts the fixes by
cell key; `pairs_together` then walks, for each fresh fix only, the 3 x 3 cells around
its own (three runs of the sorted keys, one binary search each), so every pair of fixes
in neighbouring cells with a fresh one among them is looked at exactly once (two fresh
ones: by the first in key order). Carried-over fixes, most of a window's input, cost a
place in the sort and nothing more. Nothing loops over all pairs of subjects.

Two fixes count as together when
- their subjects differ and are *linked*: they share a link group (a case id, or the key
  group every key person is in; `link_start`/`link_groups`, groups sorted per subject);
- at least one of them is `fresh` (from this window: pairs of carried-over fixes were
  judged in an earlier window);
- they are at most `max_dt_ms` apart in time;
- their centres are at most ``radius_m + acc_k * sqrt(acc_i**2 + acc_j**2)`` apart
  (boundary policy: exactly at the distance counts as together), the distance
  equirectangular about the pair's mean latitude (under 0.1 m off at these distances).

The grid is sound as long as the cell is at least the largest such distance: the y axis
is exact, and the x axis is scaled by the cosine of the window's largest |latitude|, never
more than the pair's own, so a grid distance never exceeds the true one.
"""

import math

import numpy as np

from geofence._jit import body, kernel

EARTH_RADIUS_M = 6_371_008.8
KEY_OFFSET = 1 << 30            # cell coordinates shifted positive before packing
CELL_BITS = 32


@body
def _distance_m(lon1, lat1, lon2, lat2):
    """Equirectangular distance in metres between two points given in radians."""
    dx = (lon1 - lon2) * math.cos(0.5 * (lat1 + lat2))
    dy = lat1 - lat2
    return EARTH_RADIUS_M * math.sqrt(dx * dx + dy * dy)


@body
def _shared_group(a, b, link_start, link_groups):
    """The smallest link group subjects `a` and `b` share, or -1 (both lists sorted)."""
    i, i_end = link_start[a], link_start[a + 1]
    j, j_end = link_start[b], link_start[b + 1]
    while i < i_end and j < j_end:
        ga, gb = link_groups[i], link_groups[j]
        if ga == gb:
            return ga
        if ga < gb:
            i += 1
        else:
            j += 1
    return -1


@body
def _first_at_least(keys, value, lo):
    """The first position >= lo with keys[pos] >= value (keys ascending)."""
    hi = keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@kernel
def pairs_together(order, keys, fresh_at, lon, lat, t_ms, acc_m, subject, fresh, radius_m,
                   acc_k, max_dt_ms, link_start, link_groups, out_i, out_j, out_group):
    """Write the pairs of fixes together (indices into the fix arrays, the fresh one or
    the first in key order as `i`, and their shared group) into `out_*`; returns how
    many there are. If that is more than the outputs hold, the first ones are written and
    the rest only counted: the caller grows the outputs and calls again.

    `order` sorts the fixes by cell key, `keys` are the sorted keys (`cell_keys`) and
    `fresh_at` the positions in that order of the fresh fixes. lon and lat in radians.
    """
    n = order.shape[0]
    cap = out_i.shape[0]
    found = 0
    one = np.int64(1)
    for p in fresh_at:
        i = order[p]
        key = keys[p]
        cx = key >> CELL_BITS
        cy = key & ((one << CELL_BITS) - 1)
        for dx in range(-1, 2):
            lo_key = ((cx + dx) << CELL_BITS) | (cy - 1)
            hi_key = ((cx + dx) << CELL_BITS) | (cy + 1)
            q = _first_at_least(keys, lo_key, 0)
            while q < n and keys[q] <= hi_key:
                j = order[q]
                q += 1
                if fresh[j] and q - 1 <= p:   # two fresh fixes: taken from the first
                    continue
                if subject[i] == subject[j] or abs(t_ms[i] - t_ms[j]) > max_dt_ms:
                    continue
                limit = radius_m + acc_k * math.sqrt(acc_m[i] * acc_m[i] + acc_m[j] * acc_m[j])
                if _distance_m(lon[i], lat[i], lon[j], lat[j]) > limit:
                    continue
                group = _shared_group(subject[i], subject[j], link_start, link_groups)
                if group < 0:
                    continue
                if found < cap:
                    out_i[found] = i
                    out_j[found] = j
                    out_group[found] = group
                found += 1
    return found


def cell_keys(lon_rad: np.ndarray, lat_rad: np.ndarray, cell_m: float) -> np.ndarray:
    """Each point's grid cell packed as ``(cx + KEY_OFFSET) << 32 | (cy + KEY_OFFSET)``;
    x scaled by the cosine of the largest |latitude| (see the module docstring)."""
    if len(lat_rad) == 0:
        return np.zeros(0, np.int64)
    cos_ref = max(math.cos(float(np.abs(lat_rad).max())), 1e-6)
    cx = np.floor(lon_rad * (EARTH_RADIUS_M * cos_ref / cell_m)).astype(np.int64)
    cy = np.floor(lat_rad * (EARTH_RADIUS_M / cell_m)).astype(np.int64)
    return ((cx + KEY_OFFSET) << CELL_BITS) | (cy + KEY_OFFSET)


@kernel
def remember_newest(subject, t_ms, lon, lat, acc_m, src, last_t, last_lon, last_lat,
                    last_acc, last_src):
    """Keep each subject's newest fix (strictly newer than the one kept wins)."""
    for k in range(subject.shape[0]):
        s = subject[k]
        if t_ms[k] > last_t[s]:
            last_t[s] = t_ms[k]
            last_lon[s] = lon[k]
            last_lat[s] = lat[k]
            last_acc[s] = acc_m[k]
            last_src[s] = src[k]
