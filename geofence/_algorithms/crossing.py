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

from geofence._jit import body


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

