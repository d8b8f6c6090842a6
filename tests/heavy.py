"""Heavy or load-sensitive runs: only with `scripts/test --slow` (GEOFENCE_SLOW=1), so the
default suite stays under 10 minutes on 2 cores and steady on a busy machine. Mark a test
`@heavy_test`, or a parameter `pytest.param(..., marks=heavy)`."""

import os

import pytest

heavy = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("GEOFENCE_SLOW"), reason="heavy; set GEOFENCE_SLOW=1 (scripts/test --slow)")]


def heavy_test(fn):
    """Decorate a test as heavy (both marks of `heavy`)."""
    for mark in reversed(heavy):
        fn = mark(fn)
    return fn
