"""The slow, obvious locate that the compiled index must match bit for bit (tests only).

Every edge of every feature is tested with the engine's own `edge_counts`, so the answers
follow the same boundary policy (`geofence._algorithms.crossing`) with no index at all.
"""

import numpy as np

from geofence._algorithms.crossing import edge_counts
from geofence._jit import kernel
from geofence.index import LocateIndex, as_points


@kernel
def _first_odd_feature(coords, edges, feature_edge_offsets, xs, ys, out):
    """First feature (lowest index) whose edges give odd parity, else -1; O(points x edges)."""
    n_features = feature_edge_offsets.shape[0] - 1
    for p in range(xs.shape[0]):
        out[p] = -1
        for f in range(n_features):
            inside = False
            for k in range(feature_edge_offsets[f], feature_edge_offsets[f + 1]):
                if edge_counts(coords, edges[k], xs[p], ys[p]):
                    inside = not inside
            if inside:
                out[p] = f
                break


def locate_bruteforce(index: LocateIndex, lon, lat) -> np.ndarray:
    """Feature index per point (int32, -1 for none) by testing every edge of every feature."""
    xs, ys = as_points(lon, lat)
    out = np.empty(len(xs), np.int32)
    _first_odd_feature(index.geometry.coords, index.edges, index.feature_edge_offsets, xs, ys,
                       out)
    return out
