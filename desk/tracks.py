"""A subject's track for the desk's map: their stored fixes in a time window.

The fixes store reads them (`ingest.store.StoreReader.track`, which explains its cost:
proportional to the whole feed in the window, 0.04-0.8 s for a day of the demo's
population); the desk bounds what it asks for: windows of at most MAX_WINDOW_MS, at most
MAX_FIXES fixes, TRACK_READS_AT_ONCE reads at a time, off the event loop.

A stored row may be a handset status instead of a position (src >= STATE0: off 关机,
suspended 停机, unreachable 无法接通; lon/lat NaN): it is a track entry `{t, handset}`
without a position, never NaN in JSON. `handset_status` says whether a subject's newest
row is one, and since when.
"""

import os

from engine.database import NotReadyError
from ingest.protocol import SOURCES, SRC_NAMES, STATE0
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
    return [_entry(*row) for row in zip(fixes.t_ms.tolist(), fixes.lon.tolist(),
                                        fixes.lat.tolist(), fixes.acc_m.tolist(),
                                        fixes.src.tolist())], truncated


def _entry(t: int, lon: float, lat: float, acc: float, src: int) -> dict:
    """One track entry: a fix `{t, lon, lat, acc, src}` or a handset status `{t, handset}`."""
    if src >= STATE0 or lon != lon or lat != lat:   # a status (a NaN position: never shown)
        return {"t": int(t), "handset": SRC_NAMES[src] if STATE0 <= src < len(SRC_NAMES)
                else None}
    return {"t": int(t), "lon": round(lon, 7), "lat": round(lat, 7), "acc": round(acc, 1),
            "src": SOURCES[src] if 0 <= src < len(SOURCES) else None}


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


STATUS_LOOKBACK_ROWS = 200   # how far back `handset_status` follows one unbroken status


def handset_status(fixes_db: str | os.PathLike, subject_index: int, since_ms: int,
                   until_ms: int, windows) -> dict | None:
    """`{state, since}` when the subject's newest row in the window is a handset status:
    its state, and the time of the first row of the unbroken run of that state before it
    (among the newest STATUS_LOOKBACK_ROWS); None when it is a position or there is none."""
    rows, _ = read_windows(fixes_db, subject_index, since_ms, until_ms, windows,
                           STATUS_LOOKBACK_ROWS)
    if not rows or "handset" not in rows[-1]:
        return None
    state, since = rows[-1]["handset"], rows[-1]["t"]
    for row in reversed(rows):
        if row.get("handset") != state:
            break
        since = row["t"]
    return {"state": state, "since": since}
