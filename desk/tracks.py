"""A subject's track for the desk's map: their stored fixes in a time window.

The fixes store (`ingest.store`) keeps accepted fixes as one blob of columns per batch,
in arrival order (`seq`), with the batch's arrival time `received_ms`; it has no index
by subject or by fix time. A track is therefore read as a range of batches:

- fixes of [since, until] arrive from 5 minutes before `since` (the protocol refuses
  fixes further in the future) to whenever a carrier delivers them late; the desk reads
  batches received in [since − 1 day, until + 1 day], so a fix delivered more than a day
  late is not drawn (it is still evaluated and stored);
- `received_ms` grows with `seq` (ingest stamps a group of frames and commits it in
  order), so the first batch of the range is found by a binary search over the primary
  key (about 20 point lookups), never a table scan; the scan stops at the first batch
  received after the range;
- each blob is mapped without copying (`FixColumns.from_bytes`) and filtered with numpy
  on the subject index and the time window; at most MAX_FIXES fixes are returned, the
  newest.

Cost: the read is proportional to the whole feed in the range, not to the subject's
fixes. The default window (the last 24 h) spans two days of batches. For the demo
population (2,032 subjects, a fix every 5 minutes: ~585,000 fixes, ~22 MB a day), two
days are 1.17 M fixes; measured on the 2-core dev VM with a warm page cache: 0.04 s when
carriers send batches of 2,000 fixes (586 batches), 0.8 s with batches of 20 (58,522
batches: ~13 µs of Python per batch, mostly `FixColumns.from_bytes`). The desk runs at
most TRACK_READS_AT_ONCE reads at a time, off the event loop. A per-subject index in the
fixes store would make this constant; it is not needed at this scale.
"""

import os
import sqlite3
from pathlib import Path

import numpy as np

from ingest.fixes import FixColumns
from ingest.protocol import SOURCES

MAX_FIXES = 5_000
LATE_MARGIN_MS = 24 * 3600 * 1000      # batches read either side of the window
DEFAULT_WINDOW_MS = 24 * 3600 * 1000
MAX_WINDOW_MS = 7 * 24 * 3600 * 1000   # longer windows are refused (400): cost
TRACK_READS_AT_ONCE = 2
_PAGE_BATCHES = 64


def read_track(fixes_db: str | os.PathLike, subject_index: int, since_ms: int, until_ms: int,
               limit: int = MAX_FIXES) -> tuple[list[dict], bool]:
    """(fixes of one subject with since_ms <= t <= until_ms in time order, truncated).

    At most `limit` fixes, the newest; `truncated` says whether older ones were left out.
    A missing store (nothing received yet) is an empty track.
    """
    if not Path(fixes_db).exists() or subject_index < 0:
        return [], False
    db = sqlite3.connect(Path(fixes_db).absolute().as_uri() + "?mode=ro", uri=True,
                         isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        parts, kept, dropped = [], 0, False
        start = _first_seq_received_at(db, since_ms - LATE_MARGIN_MS)
        last_received = until_ms + LATE_MARGIN_MS
        while start is not None:
            rows = db.execute("SELECT seq, received_ms, fixes FROM batches WHERE seq >= ? "
                              "ORDER BY seq LIMIT ?", (start, _PAGE_BATCHES)).fetchall()
            start = rows[-1][0] + 1 if len(rows) == _PAGE_BATCHES else None
            for _seq, received_ms, blob in rows:
                if received_ms > last_received:
                    start = None
                    break
                part = _select(FixColumns.from_bytes(blob), subject_index, since_ms, until_ms)
                if part is not None:
                    parts.append(part)
                    kept += len(part[0])
            if kept > 4 * limit:   # bound memory on long windows: keep the newest only
                parts, dropped = [_newest(parts, limit)], True
                kept = len(parts[0][0])
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):   # created but not yet set up by ingest
            return [], False
        raise
    finally:
        db.close()
    if not parts:
        return [], False
    t, lon, lat, acc, src = _newest(parts, limit)
    truncated = dropped or kept > limit
    names = [SOURCES[s] if 0 <= s < len(SOURCES) else None for s in src.tolist()]
    return [{"t": int(a), "lon": round(float(b), 7), "lat": round(float(c), 7),
             "acc": round(float(d), 1), "src": e}
            for a, b, c, d, e in zip(t.tolist(), lon.tolist(), lat.tolist(), acc.tolist(),
                                     names)], truncated


def _first_seq_received_at(db: sqlite3.Connection, received_ms: int) -> int | None:
    """The smallest seq whose batch was received at or after `received_ms` (binary search
    over the primary key; relies on received_ms growing with seq), None if there is none."""
    lo, hi = db.execute("SELECT min(seq), max(seq) FROM batches").fetchone()
    if lo is None:
        return None
    hi += 1   # hi: a seq known to be "after" (past the end)
    while lo < hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT seq, received_ms FROM batches WHERE seq >= ? ORDER BY seq "
                         "LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= received_ms:
            hi = mid
        else:
            lo = row[0] + 1
    row = db.execute("SELECT seq FROM batches WHERE seq >= ? ORDER BY seq LIMIT 1",
                     (lo,)).fetchone()
    return row[0] if row else None


def _select(fixes: FixColumns, subject_index: int, since_ms: int, until_ms: int):
    mask = fixes.subject == subject_index
    if not mask.any():
        return None
    mask &= (fixes.t_ms >= since_ms) & (fixes.t_ms <= until_ms)
    if not mask.any():
        return None
    return (fixes.t_ms[mask], fixes.lon[mask], fixes.lat[mask], fixes.acc_m[mask],
            fixes.src[mask])


def _newest(parts, limit: int):
    """The `limit` newest rows of all parts, in time order (stable: arrival order breaks
    ties)."""
    columns = [np.concatenate([p[k] for p in parts]) for k in range(5)]
    order = np.argsort(columns[0], kind="stable")[-limit:]
    return tuple(col[order] for col in columns)
