"""Refusing (device, t) duplicates: a resent fix must never be stored twice.

SPEC §4: a fix is a `duplicate` when it has the same device and t as an accepted fix.
`AcceptedFixes` remembers EVERY fix accepted within the acceptance window (`window_ms`,
`[ingest] max_fix_age_s`), so a resend of any of them, however late, is refused; a fix
older than the window is refused `time` before it gets here, so nothing older is needed.

The set is one preallocated open-addressing table of int64 keys (linear probing):

- a key packs (device index, t): ``device << 40 | (t_ms - EPOCH_MS)``. 40 bits of
  milliseconds reach from 2020 to 2054, 23 bits of device index hold 8.4 million devices
  (the book's indices, one per registered phone); a key is never negative, -1 is empty;
- the slot of a key is a 64-bit mix of it scaled to the table's size (any size below
  2^32, not just powers of two: a rebuild sizes it to its keys); a batch is one compiled
  call that looks each fix up and inserts it when new, so the first copy of a (device, t)
  in a batch is accepted and the later ones are refused, as across batches;
- expiry: when the table is 70 % full, one compiled pass removes the keys older than
  the window (less `CLOCK_SLACK_MS`, so that a wall clock stepped back a little does not
  let a swept fix back in) and re-homes only the keys of clusters it opened holes in (the
  pass is skipped while no key can be that old, as in the first week); if the table is
  still more than 50 % full it is rebuilt at 35 %. So 8 bytes a slot, 11-23 bytes per
  remembered fix (`nbytes / len`, measured in benchmarks/ingest.py).

A batch's fixes are inserted when it is validated, before the store commit (a later
batch of the same group must see them); when a batch is not stored after all, its
accepted fixes are taken out again with `forget`. On start the set is refilled from the
store (`remember_stored`): every batch received within the window, which the store keeps
as long as `[storage] keep_fixes_days` is at least the window (see `exact_window_ms`).
"""

import numpy as np

from geofence._jit import body, kernel
from ingest.protocol import DUPLICATE, FUTURE_TOLERANCE_MS, OK

EPOCH_MS = 1_577_836_800_000          # 2020-01-01T00:00:00Z
T_BITS = 40
DEVICE_BITS = 23
T_LIMIT = 1 << T_BITS                 # t_ms - EPOCH_MS must be below this (2054-11)
MAX_DEVICES = 1 << DEVICE_BITS
EMPTY = -1
CLOCK_SLACK_MS = 10 * 60 * 1000       # kept this long past the window
MAX_WINDOW_MS = 3 * 365 * 24 * 3600 * 1000   # so that now - window stays after EPOCH_MS
# Linear probing slows down sharply above ~70 % (measured: 8 M inserts/s filling a table
# to 80 %, 13 M to 70 %, 17 M to 50 %), so:
SWEEP_LOAD = 0.7                      # a pass removes the expired keys at this load ...
GROW_LOAD = 0.5                       # ... and the table is rebuilt larger if still above this
REBUILT_LOAD = 0.35                   # the load right after a rebuild (it grows 2x or more)
MIN_SLOTS = 16
MAX_SLOTS = (1 << 32) - 1             # `_home` scales 32 bits of hash (32 GiB of table)
_T_MASK = T_LIMIT - 1
_NO_KEY = (1 << 63) - 1


@body
def _home(key, size):
    """The first slot for `key`: splitmix64's finalizer, then the top 32 bits scaled to
    the table size (Lemire's multiply-shift, exact for sizes below 2^32)."""
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.int64(((x >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


@body
def _place(table, key):
    """Insert a key known to be absent (a free slot is known to exist)."""
    size = len(table)
    j = _home(key, size)
    while table[j] != EMPTY:
        j += 1
        if j == size:
            j = 0
    table[j] = key


@kernel
def _mark(device_idx, t_ms, reason, table, oldest_ms, homes):
    """For each fix still OK with t >= oldest_ms: DUPLICATE if its key is in the table,
    else insert it. Returns (marked, inserted, the smallest t inserted, a checksum), marked
    -1 at a key out of range.

    A first pass computes every home slot and reads it: those reads do not depend on each
    other, so the CPU overlaps their cache misses (the table is far larger than the cache;
    measured 1.3-1.7x faster than probing fix by fix). The checksum only keeps the reads."""
    size = len(table)
    touched = np.int64(0)
    for i in range(len(reason)):
        d = device_idx[i]
        t = t_ms[i]
        homes[i] = -1
        if d < 0 or reason[i] != OK or t < oldest_ms:
            continue
        rel = t - EPOCH_MS
        if d >= MAX_DEVICES or rel < 0 or rel >= T_LIMIT:
            return -1, 0, np.int64(_NO_KEY), touched
        homes[i] = _home((np.int64(d) << T_BITS) | rel, size)
        touched ^= table[homes[i]]
    marked = 0
    inserted = 0
    floor = np.int64(_NO_KEY)
    for i in range(len(reason)):
        j = homes[i]
        if j < 0:
            continue
        key = (np.int64(device_idx[i]) << T_BITS) | (t_ms[i] - EPOCH_MS)
        while True:
            k = table[j]
            if k == EMPTY:
                table[j] = key
                inserted += 1
                floor = min(floor, t_ms[i])
                break
            if k == key:
                reason[i] = DUPLICATE
                marked += 1
                break
            j += 1
            if j == size:
                j = 0
    return marked, inserted, floor, touched


@kernel
def _forget(device_idx, t_ms, table):
    """Remove each (device, t) present (backward-shift deletion: no tombstones)."""
    size = len(table)
    removed = 0
    for i in range(len(t_ms)):
        rel = t_ms[i] - EPOCH_MS
        if device_idx[i] < 0 or rel < 0 or rel >= T_LIMIT or device_idx[i] >= MAX_DEVICES:
            continue
        key = (np.int64(device_idx[i]) << T_BITS) | rel
        j = _home(key, size)
        while table[j] != EMPTY and table[j] != key:
            j += 1
            if j == size:
                j = 0
        if table[j] == EMPTY:
            continue
        removed += 1
        hole = j
        table[hole] = EMPTY
        k = hole + 1 if hole + 1 < size else 0
        while table[k] != EMPTY:
            from_home = k - _home(table[k], size)
            if from_home < 0:
                from_home += size
            to_hole = k - hole
            if to_hole < 0:
                to_hole += size
            if from_home >= to_hole:     # its home is at or before the hole: move it back
                table[hole] = table[k]
                table[k] = EMPTY
                hole = k
            k = k + 1 if k + 1 < size else 0
    return removed


@kernel
def _sweep(table, oldest_rel):
    """Remove keys with t - EPOCH_MS < oldest_rel in one pass; returns how many.

    Starts after a slot that is empty, so no probe sequence crosses the start. Within a
    cluster, once a key was removed the keys after it are re-inserted (each lands at or
    before where it was, in the part already passed); a cluster untouched stays as is."""
    size = len(table)
    start = 0
    while table[start] != EMPTY:
        start += 1
    removed = 0
    dirty = False
    i = start
    for _ in range(size - 1):
        i += 1
        if i == size:
            i = 0
        key = table[i]
        if key == EMPTY:
            dirty = False
        elif (key & _T_MASK) < oldest_rel:
            table[i] = EMPTY
            removed += 1
            dirty = True
        elif dirty:
            table[i] = EMPTY
            _place(table, key)
    return removed


@kernel
def _rehash(old, new, oldest_rel):
    """Copy the keys not older than oldest_rel into the (empty) new table; returns how many."""
    kept = 0
    for i in range(len(old)):
        key = old[i]
        if key != EMPTY and (key & _T_MASK) >= oldest_rel:
            _place(new, key)
            kept += 1
    return kept


class AcceptedFixes:
    """Every accepted (device index, t) within the last `window_ms`, exactly.

    Not for concurrent use: the ingest loop's one thread marks, forgets and refills."""

    def __init__(self, window_ms: int, slots: int = 1 << 16):
        if window_ms <= 0:
            raise ValueError("the window must be positive")
        self.window_ms = int(window_ms)
        self._table = np.full(max(int(slots), MIN_SLOTS), EMPTY, np.int64)
        self._count = 0
        self._floor_ms = _NO_KEY   # no key is older than this
        self.sweeps = 0         # expiry passes so far (for benchmarks and tests)

    def __len__(self) -> int:
        """Keys held (expired ones count until a pass removes them)."""
        return self._count

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def _oldest_ms(self, now_ms: int) -> int:
        """The oldest t still remembered at `now_ms`."""
        oldest = int(now_ms) - self.window_ms - CLOCK_SLACK_MS
        if oldest < EPOCH_MS or int(now_ms) + FUTURE_TOLERANCE_MS >= EPOCH_MS + T_LIMIT:
            raise ValueError(f"now_ms {now_ms} less the window is outside the keys' time range "
                             f"(2020 .. 2054)")
        return oldest

    def _make_room(self, n: int, oldest_ms: int) -> None:
        """Before inserting up to n keys: expire those older than `oldest_ms`, or grow."""
        size = len(self._table)
        if self._count + n <= SWEEP_LOAD * size:
            return
        if self._floor_ms < oldest_ms:       # some key may have expired
            self._count -= _sweep(self._table, oldest_ms - EPOCH_MS)
            self.sweeps += 1
            self._floor_ms = oldest_ms
        if self._count + n > GROW_LOAD * size:
            slots = max(MIN_SLOTS, int((self._count + n) / REBUILT_LOAD) + 1)
            if slots > MAX_SLOTS:
                raise MemoryError(f"the duplicate filter would need {slots:,} slots; shorten "
                                  "[ingest] max_fix_age_s")
            new = np.full(slots, EMPTY, np.int64)
            self._count = _rehash(self._table, new, oldest_ms - EPOCH_MS)
            self._table = new
            self._floor_ms = max(self._floor_ms, oldest_ms)

    def mark(self, device_idx, t_ms, reason, now_ms: int) -> int:
        """Set DUPLICATE (in place, on the int8 reason array) on each fix still OK whose
        (device, t) is remembered or came earlier in this batch, and remember the others
        (the caller stores them, or calls `forget`); returns how many were marked.

        Device index -1 (unknown) and fixes older than the window are skipped."""
        if reason.dtype != np.int8 or not reason.flags.c_contiguous:
            raise ValueError("reason must be a contiguous int8 array")
        device_idx = np.ascontiguousarray(device_idx, np.int64)
        t_ms = np.ascontiguousarray(t_ms, np.int64)
        if len(device_idx) != len(t_ms) or len(t_ms) != len(reason):
            raise ValueError("device_idx, t_ms and reason must have equal lengths")
        oldest = self._oldest_ms(now_ms)
        self._make_room(len(reason), oldest)
        marked, inserted, floor, _ = _mark(device_idx, t_ms, reason, self._table, oldest,
                                           np.empty(len(reason), np.int64))
        self._count += inserted
        self._floor_ms = min(self._floor_ms, int(floor))
        if marked < 0:
            raise ValueError(f"a fix with a device index of {DEVICE_BITS} bits or more, or a "
                             f"t outside 2020 .. 2054, cannot be remembered")
        return marked

    def forget(self, device_idx, t_ms) -> None:
        """Take out fixes `mark` remembered whose batch was not stored after all."""
        device_idx = np.ascontiguousarray(device_idx, np.int64)
        t_ms = np.ascontiguousarray(t_ms, np.int64)
        if len(device_idx) != len(t_ms):
            raise ValueError("device_idx and t_ms must have equal lengths")
        self._count -= _forget(device_idx, t_ms, self._table)


def exact_window_ms(max_fix_age_ms: int, keep_fixes_ms: int) -> int:
    """The acceptance window over which duplicates are refused exactly, also across a
    restart: the refill reads the fixes back from the store, so the window cannot be
    longer than the store keeps them, nor reach back before the keys' epoch (it is at
    most MAX_WINDOW_MS). Fixes older than this are refused `time`."""
    return min(int(max_fix_age_ms), int(keep_fixes_ms), MAX_WINDOW_MS)


def remember_stored(fixes: AcceptedFixes, store, now_ms: int, page: int = 256,
                    carriers=None) -> int:
    """Refill `fixes` from every stored batch received within the window (a fix is
    received at most FUTURE_TOLERANCE_MS before its t) and stored with recorded device
    indices (after an upgrade, resends of older fixes are not caught for one window);
    returns the fixes read. `carriers(carrier, device_indices)`, if given, is called per
    batch in store order (the locate router learns which carrier carries which device)."""
    since = now_ms - fixes.window_ms - CLOCK_SLACK_MS - FUTURE_TOLERANCE_MS
    first = store.first_seq_received_at(since)
    if first is None:
        return 0
    first = max(first, store.devices_recorded_after() + 1)   # older indices may mean others
    read, after = 0, first - 1
    while batches := (store.read_batches(after, page) if carriers is None else
                      [(b.seq, b) for b in store.read_records(after, page)]):
        for seq, cols in batches:
            if carriers is not None:
                carriers(cols.carrier, cols.fixes.device)
                cols = cols.fixes
            fixes.mark(cols.device, cols.t_ms, np.zeros(len(cols), np.int8), now_ms)
            read += len(cols)
            after = seq
    return read


def warm_up() -> None:
    """Compile (or load) the dedup kernels."""
    fixes = AcceptedFixes(window_ms=1000, slots=MIN_SLOTS)
    now = EPOCH_MS + 365 * 24 * 3600 * 1000
    device, t = np.zeros(1, np.int64), np.full(1, now, np.int64)
    fixes.mark(device, t, np.zeros(1, np.int8), now)
    fixes.forget(device, t)
    fixes.mark(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), now)
    _sweep(fixes._table, 0)
    _rehash(fixes._table, np.full(MIN_SLOTS, EMPTY, np.int64), 0)
