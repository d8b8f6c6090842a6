"""Point in polygon by the crossing rule, the one boundary policy of the whole engine.

Boundary policy (half-open crossing rule): an edge counts for a point P = (x, y) when,
with its endpoints ordered so that y1 < y2, ``y1 <= y < y2`` and P lies strictly left
of it (``(x - x1)*(y2 - y1) < (y - y1)*(x2 - x1)``). Horizontal edges never count.
P is inside a feature when an odd number of its edges (all rings of all parts) count.

Why this rule: it behaves like moving P an infinitesimal step right and up, so in a
layer that tiles the plane without gaps a point on a shared edge or vertex belongs to
exactly one feature (the one to its upper right), never none and never two. Both
neighbours order a shared edge the same way before testing it, so they compute the
same bits and agree. On vertices the test is exact: ``y == y1`` makes the right side 0.

Edges are stored as the index ``i`` of their first vertex: the edge runs from
``coords[i]`` to ``coords[i + 1]`` (rings are closed, first vertex repeated).
"""

from geofence._jit import body, kernel


@body
def edge_counts(coords, i, x, y):
    """True when edge i counts for the horizontal ray from (x, y) under the policy."""
    x1 = coords[i, 0]
    y1 = coords[i, 1]
    x2 = coords[i + 1, 0]
    y2 = coords[i + 1, 1]
    if y1 > y2:
        x1, y1, x2, y2 = x2, y2, x1, y1
    if y1 <= y < y2:
        return (x - x1) * (y2 - y1) < (y - y1) * (x2 - x1)
    return False


@body
def point_in_edges(coords, edges, start, stop, x, y):
    """Crossing parity of edges[start:stop] for (x, y): the slow, obvious reference."""
    inside = False
    for k in range(start, stop):
        if edge_counts(coords, edges[k], x, y):
            inside = not inside
    return inside


@kernel
def points_in_features_bruteforce(coords, edges, feature_edge_offsets, xs, ys, out):
    """Reference locate: first feature (lowest index) whose edges give odd parity, else -1.

    O(points x edges); used by tests and as the benchmark's naive baseline.
    """
    n_features = feature_edge_offsets.shape[0] - 1
    for p in range(xs.shape[0]):
        out[p] = -1
        for f in range(n_features):
            if point_in_edges(coords, edges, feature_edge_offsets[f],
                              feature_edge_offsets[f + 1], xs[p], ys[p]):
                out[p] = f
                break
