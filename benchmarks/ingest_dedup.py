"""The duplicate filter (ingest/dedup.py) in process: speed and memory of the exact set
against the ring filter it replaced (benchmarks/dedup_ring.py), on the same feed in the
same run, and the time to refill it from the store when ingest starts.

Feed: `subjects` devices, a fix a minute each (at a random millisecond of the minute) for
`days` days ending now, in time order, in batches of `BATCH_FIXES` as a carrier sends
them. Both filters' kernels are compiled before any timing.

The exact filter's window is the feed's `days`; its clock is each batch's newest t.

1. First pass: every batch marked and remembered (all new, nothing refused; the table
   grows from empty).
2. Resend pass: every batch again. The exact filter refuses every fix; the ring catches a
   resend only within its device's last 16 fixes.
3. The next day: new fixes with the window full, so the old ones expire (the steady
   state of a running engine). Memory is taken after it.
4. Refill: the feed stored in a real `Store` (one commit per 64 batches, received at the
   batch's newest t), then `remember_stored` into a fresh filter at the feed's end. The
   time is extrapolated linearly to 100,000 people (its memory too, by the bytes per fix).
"""

import time
from pathlib import Path

import numpy as np

from benchmarks.common import Report, log
from benchmarks.dedup_ring import RecentFixes
from ingest.dedup import AcceptedFixes, remember_stored
from ingest.fixes import FixColumns
from ingest.protocol import DUPLICATE
from ingest.store import BatchRecord, Store

MINUTE = 60_000
DAY = 24 * 3600 * 1000
LARGE_SUBJECTS = 100_000
LARGE_DAYS = 7                     # `[ingest] max_fix_age_s`'s default
COMMIT_BATCHES = 64


def feed(subjects: int, days: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(device index, t) of a fix a minute per device, in time order within each minute."""
    minutes = days * 24 * 60
    start = int(time.time() * 1000) - days * DAY
    rng = np.random.default_rng(seed)
    t = (start + MINUTE * np.arange(minutes, dtype=np.int64)[:, None]
         + rng.integers(0, MINUTE, (minutes, subjects)))
    device = np.broadcast_to(np.arange(subjects, dtype=np.int32), (minutes, subjects))
    return np.ascontiguousarray(device).reshape(-1), t.reshape(-1)


def _passes(device, t, batch, run) -> tuple[float, int]:
    """(seconds, fixes refused) of `run(device, t, reason)` over the feed's batches."""
    refused, started = 0, time.perf_counter()
    for i in range(0, len(t), batch):
        reason = np.zeros(min(batch, len(t) - i), np.int8)
        run(device[i:i + batch], t[i:i + batch], reason)
        refused += int(np.count_nonzero(reason == DUPLICATE))
    return time.perf_counter() - started, refused


def compare(rep: Report, subjects: int, days: int, batch: int, workdir: Path) -> None:
    all_device, all_t = feed(subjects, days + 1)
    n = days * 24 * 60 * subjects
    device, t = all_device[:n], all_t[:n]
    window = days * DAY
    exact, ring = AcceptedFixes(window), RecentFixes(devices=subjects)

    def run_exact(d, tt, reason):
        exact.mark(d, tt, reason, int(tt[-1]))

    def run_ring(d, tt, reason):
        ring.mark_duplicates(d, tt, reason)
        ring.remember(d, tt, reason == 0)

    _warm(subjects, t[-1])
    ring_bytes = ring._times.nbytes + ring._count.nbytes
    runs = {}
    for name, fn in (("exact set", run_exact), ("ring of 16 (before)", run_ring)):
        first_s, first_refused = _passes(device, t, batch, fn)
        again_s, caught = _passes(device, t, batch, fn)
        later_s, _ = _passes(all_device[n:], all_t[n:], batch, fn)
        runs[name] = (first_s, first_refused, again_s, caught, later_s)
        log(f"ingest dedup: {name}: {n / first_s / 1e6:.1f} M fixes/s new, "
            f"{n / again_s / 1e6:.1f} M/s resent, {caught:,} of {n:,} resends caught, "
            f"{(len(all_t) - n) / later_s / 1e6:.1f} M/s the next day")
    g = f"duplicate filter in process: {subjects:,} devices, a fix a minute, {days} days, " \
        f"batches of {batch:,}"
    rep.add(g, "fixes in the feed", n, "fixes")
    for name, (first_s, first_refused, again_s, caught, later_s) in runs.items():
        rep.add(g, f"{name}: new fixes, marked and remembered", n / first_s / 1e6, "M fixes/s",
                fmt=".1f")
        rep.add(g, f"{name}: the same fixes resent", n / again_s / 1e6, "M fixes/s", fmt=".1f")
        rep.add(g, f"{name}: the next day (window full, expiring)",
                (len(all_t) - n) / later_s / 1e6, "M fixes/s", fmt=".1f")
        rep.add(g, f"{name}: resends refused", caught / n, "", fmt=".1%")
        rep.add(g, f"{name}: new fixes wrongly refused", first_refused, "fixes", at_most=0)
    rep.add(g, "exact set: memory per remembered fix", exact.nbytes / len(exact), "bytes",
            fmt=".1f")
    rep.add(g, "exact set: table", exact.nbytes / 2**20, "MiB", fmt=".0f")
    rep.add(g, "exact set: expiry passes", exact.sweeps, "passes")
    rep.add(g, "ring of 16 (before): memory, whatever the window", ring_bytes / 2**20, "MiB",
            fmt=".2f")
    refill(rep, device, t, batch, window, subjects, days, workdir,
           exact.nbytes / len(exact))


def refill(rep: Report, device, t, batch: int, window: int, subjects: int, days: int,
           workdir: Path, bytes_per_fix: float) -> None:
    path = workdir / "dedup-refill.sqlite"
    started = time.perf_counter()
    with Store(path) as store:
        records = []
        for k, i in enumerate(range(0, len(t), batch)):
            d, tt = device[i:i + batch], t[i:i + batch]
            m = len(tt)
            cols = FixColumns(d, d, tt, np.full(m, 117.3), np.full(m, 34.8),
                              np.full(m, 30.0, np.float32), np.zeros(m, np.int8))
            records.append(BatchRecord("bench", k, int(tt[-1]), cols, "ok"))
            if len(records) == COMMIT_BATCHES:
                store.commit(records)
                records = []
        store.commit(records)
        log(f"ingest dedup: {len(t):,} fixes stored in {time.perf_counter() - started:.1f} s "
            f"({path.stat().st_size / 2**30:.2f} GiB)")
        fixes = AcceptedFixes(window)
        started = time.perf_counter()
        read = remember_stored(fixes, store, int(t[-1]))
        took = time.perf_counter() - started
    path.unlink()
    g = f"refill at start from the store: {subjects:,} people, a fix a minute, {days} days"
    rep.add(g, "stored fixes read back", read, "fixes")
    rep.add(g, "refill time", took, "s", fmt=".1f")
    rep.add(g, "refill rate", read / took / 1e6, "M fixes/s", fmt=".1f")
    scale = LARGE_SUBJECTS / subjects * LARGE_DAYS / days
    rep.add(g, f"extrapolated: {LARGE_SUBJECTS:,} people, {LARGE_DAYS} days", took * scale, "s",
            fmt=".0f")
    rep.add(g, f"extrapolated: {LARGE_SUBJECTS:,} people, {LARGE_DAYS} days, memory",
            read * scale * bytes_per_fix / 2**30, "GiB", fmt=".1f")


def _warm(subjects: int, now: int) -> None:
    reason = np.zeros(1, np.int8)
    AcceptedFixes(DAY).mark(np.zeros(1, np.int32), np.full(1, now), reason, int(now))
    ring = RecentFixes(devices=subjects)
    ring.mark_duplicates(np.zeros(1, np.int32), np.full(1, now), reason)
    ring.remember(np.zeros(1, np.int32), np.full(1, now), reason == 0)
