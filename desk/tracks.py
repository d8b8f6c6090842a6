"""A subject's track for the desk's map: their stored fixes in a time window.

The fixes store reads them (`ingest.store.StoreReader.track`, which explains its cost:
proportional to the whole feed in the window, 0.04-0.8 s for a day of the demo's
population); the desk bounds what it asks for: windows of at most MAX_WINDOW_MS, at most
MAX_FIXES fixes, TRACK_READS_AT_ONCE reads at a time, off the event loop.
"""

import os

from engine.database import NotReadyError
from ingest.protocol import SOURCES
from ingest.store import StoreReader

MAX_FIXES = 5_000
DEFAULT_WINDOW_MS = 24 * 3600 * 1000
MAX_WINDOW_MS = 7 * 24 * 3600 * 1000   # longer windows are refused (400): cost
TRACK_READS_AT_ONCE = 2


def read_track(fixes_db: str | os.PathLike, subject_index: int, since_ms: int, until_ms: int,
               limit: int = MAX_FIXES) -> tuple[list[dict], bool]:
    """(fixes of one subject with since_ms <= t <= until_ms in time order, truncated).

    At most `limit` fixes, the newest; `truncated` says whether older ones were left out.
    A store not created yet (nothing received) is an empty track.
    """
    if subject_index < 0:
        return [], False
    try:
        reader = StoreReader(fixes_db)
    except NotReadyError:
        return [], False
    with reader:
        fixes, truncated = reader.track(subject_index, since_ms, until_ms, limit)
    names = [SOURCES[s] if 0 <= s < len(SOURCES) else None for s in fixes.src.tolist()]
    return [{"t": int(a), "lon": round(float(b), 7), "lat": round(float(c), 7),
             "acc": round(float(d), 1), "src": e}
            for a, b, c, d, e in zip(fixes.t_ms.tolist(), fixes.lon.tolist(),
                                     fixes.lat.tolist(), fixes.acc_m.tolist(), names)], truncated


def read_windows(fixes_db: str | os.PathLike, subject_index: int, since_ms: int, until_ms: int,
                 windows, limit: int = MAX_FIXES) -> tuple[list[dict], bool]:
    """`read_track` cut to `windows` ([from_ms, to_ms) each, in time order, disjoint): the
    part of the track a delegate office may see. At most `limit` fixes, the newest."""
    pieces, truncated = [], False
    for lo, hi in reversed(windows):
        first, last = max(since_ms, lo), min(until_ms, hi - 1)
        if first > last:
            continue
        if limit == 0:   # full: are older fixes being left out?
            truncated = bool(read_track(fixes_db, subject_index, first, last, 1)[0])
            break
        fixes, truncated = read_track(fixes_db, subject_index, first, last, limit)
        pieces.append(fixes)
        limit -= len(fixes)
        if truncated:
            break
    return [fix for piece in reversed(pieces) for fix in piece], truncated
