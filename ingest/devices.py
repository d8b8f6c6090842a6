"""Known devices: device id -> device index -> subject index, for a whole batch at once.

Carriers name a fix's phone by its id, as a str or (bin columns) as an int64 whose
decimal string is the id. `DeviceBook.lookup` turns a decoded batch's ids into device
indices in one kernel call, reading the ids where the decoder left them (spans in the
frame, or the numbers), so no per-fix Python and no str is made on the hot path.

Why indices: everything downstream (dedup windows, subjects, state) keys on a small int.
A device keeps its index for the life of the book, even when removed (`deactivate`):
history stored under an index never silently moves to another phone.

Layout (append-only columns, capacity doubled as needed):
- ``_blob`` the UTF-8 bytes of every id, ``_span`` their (offset, length) pairs;
- ``_hash`` FNV-1a 64 of those bytes; ``_num`` the id's value when it is the canonical
  decimal of a non-negative int64 (no sign, no leading zero), else -1. A numeric id is
  hashed over its decimal digits and compared by value, so 13800138000 from a bin finds
  the device added as "13800138000" without ever printing the number;
- ``_slots`` an open-addressing table (linear probing, power-of-two size, rebuilt twice
  as large when more than half full). A slot is a record of four int64: the hash; the
  ref (index if active, -2 - index if inactive, -1 empty); the span (offset << 8 |
  length); the numeric value. A lookup thus reads one slot and, for a str id, its bytes
  in the blob: two cache misses on a large book, not five. ``_active``, ``_subject``.
The table is filled from the registry, not from the feed: a peer sending made-up ids
only probes it and cannot lengthen its chains.
"""

import numpy as np

from geofence._jit import body, kernel
from ingest._decode import fnv1a
from ingest.protocol import DEVICE, MAX_DEVICE_CHARS, OK, UNKNOWN_DEVICE

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_I64_MAX = (1 << 63) - 1
RECORD, HASH, REF, SPAN, NUM = 4, 0, 1, 2, 3   # a table slot: four int64


@body
def _home(h, mask):
    """First slot for hash h: fold the high bits in, FNV's low bits alone mix poorly."""
    return np.int64((h ^ (h >> np.uint64(32))) & mask)


@body
def _digits_hash(x):
    """FNV-1a over the decimal digits of x >= 0: equal to fnv1a of str(x).encode()."""
    p = np.int64(1)
    while p <= x // 10:
        p *= 10
    h = _FNV_OFFSET
    while p > 0:
        h = (h ^ np.uint64(48 + (x // p) % 10)) * _FNV_PRIME
        p //= 10
    return h


@kernel
def _hash_spans(blob, off, length, out):
    for i in range(len(off)):
        out[i] = fnv1a(blob, off[i], length[i])


@body
def _found(ref, only_active):
    """The device index a slot's ref names (-1 if inactive and only active ones count)."""
    idx = ref
    if ref < -1:
        idx = -1 if only_active else -2 - ref
    return idx


@kernel
def _insert(first, last, hashes, spans, nums, active, slots):
    """Put device indices first..last-1 into the table (which has room)."""
    size = len(slots) // RECORD
    mask = np.uint64(size - 1)
    for idx in range(first, last):
        s = _home(hashes[idx], mask)
        while slots[RECORD * s + REF] != -1:
            s = (s + 1) & (size - 1)
        r = RECORD * s
        slots[r + HASH] = np.uint64(hashes[idx]).view(np.int64)
        slots[r + REF] = idx if active[idx] else -2 - idx
        slots[r + SPAN] = spans[idx]
        slots[r + NUM] = nums[idx]


@kernel
def _set_refs(indices, hashes, active, slots):
    """Rewrite the refs of the given (present) devices after their active flag changed."""
    size = len(slots) // RECORD
    mask = np.uint64(size - 1)
    for idx in indices:
        s = _home(hashes[idx], mask)
        while _found(slots[RECORD * s + REF], False) != idx:
            s = (s + 1) & (size - 1)
        slots[RECORD * s + REF] = idx if active[idx] else -2 - idx


@kernel
def _lookup_spans(buf, off, length, blob, slots, only_active, out):
    """out[i] = index of the device whose bytes are buf[off[i]:off[i] + length[i]]; -1 if
    unknown, if length[i] < 0 (an invalid id), or inactive when only_active."""
    size = len(slots) // RECORD
    mask = np.uint64(size - 1)
    for i in range(len(off)):
        n = length[i]
        found = -1
        if n >= 0:
            o = off[i]
            h = fnv1a(buf, o, n)
            hi = np.uint64(h).view(np.int64)
            s = _home(h, mask)
            probing = True
            while probing:
                r = RECORD * s
                ref = slots[r + REF]
                if ref == -1:
                    probing = False
                elif slots[r + HASH] == hi and (slots[r + SPAN] & 0xFF) == n:
                    same = True
                    base = slots[r + SPAN] >> 8
                    for k in range(n):
                        same = same and blob[base + k] == buf[o + k]
                    if same:
                        found = _found(ref, only_active)
                        probing = False
                if probing:
                    s = (s + 1) & (size - 1)
        out[i] = found


@kernel
def _lookup_numbers(num, slots, out):
    """out[i] = index of the active device whose id is the decimal string of num[i]."""
    size = len(slots) // RECORD
    mask = np.uint64(size - 1)
    for i in range(len(num)):
        x = num[i]
        found = -1
        if x >= 0:
            h = _digits_hash(x)
            hi = np.uint64(h).view(np.int64)
            s = _home(h, mask)
            probing = True
            while probing:
                r = RECORD * s
                ref = slots[r + REF]
                if ref == -1:
                    probing = False
                elif slots[r + HASH] == hi and slots[r + NUM] == x:
                    found = _found(ref, True)
                    probing = False
                else:
                    s = (s + 1) & (size - 1)
        out[i] = found


@kernel
def mark_unknown(device_idx, reason):
    """reason UNKNOWN_DEVICE where the id was valid but unknown (device_idx -1). It ranks
    second in REASONS, so it replaces any later reason (an unknown phone's bad time
    counts as unknown_device); DEVICE stays. Returns how many were marked."""
    marked = 0
    for i in range(len(reason)):
        if device_idx[i] < 0 and reason[i] != DEVICE:
            marked += reason[i] == OK
            reason[i] = UNKNOWN_DEVICE
    return marked


def _canonical_number(device: str) -> int:
    """The id's value if it is the decimal string of a non-negative int64, else -1."""
    if device.isascii() and device.isdigit() and (device == "0" or device[0] != "0"):
        value = int(device)
        return value if value <= _I64_MAX else -1
    return -1


def _grown(array: np.ndarray, size: int, fill=0) -> np.ndarray:
    """array with room for `size` items (doubling), the new part set to fill."""
    if size <= len(array):
        return array
    out = np.full(max(size, 2 * len(array)), fill, array.dtype)
    out[:len(array)] = array
    return out


class DeviceBook:
    """Append-only table: device id (str) -> device index (int) -> subject index (int32).

    Lookups may run while nothing adds; `add` and `deactivate` replace arrays and are
    for the single thread that owns the book (the registry import)."""

    def __init__(self, capacity: int = 1024):
        cap = max(16, int(capacity))
        self._n = 0
        self._blob = np.zeros(16 * cap, np.uint8)
        self._bytes = 0
        self._hash = np.zeros(cap, np.uint64)
        self._span = np.zeros(cap, np.int64)        # offset << 8 | length
        self._num = np.zeros(cap, np.int64)
        self._active = np.zeros(cap, np.uint8)
        self._subject = np.zeros(cap, np.int32)
        self._slots = _empty_table(2 * cap)

    def __len__(self) -> int:
        """Device indices handed out, active or not."""
        return self._n

    @property
    def subject_of(self) -> np.ndarray:
        """int32 subject index per device index (read-only view)."""
        view = self._subject[:self._n]
        view.flags.writeable = False
        return view

    @property
    def active(self) -> np.ndarray:
        """bool per device index: False once deactivated."""
        return self._active[:self._n] != 0

    def lookup(self, decoded) -> np.ndarray:
        """int32 device index per fix of a DecodedBatch; -1 for an unknown, inactive or
        invalid id. One kernel call."""
        out = np.empty(decoded.n, np.int32)
        if decoded.n == 0:
            return out
        if decoded.device_numeric:
            _lookup_numbers(decoded.device_num, self._slots, out)
        else:
            _lookup_spans(decoded.buffer, decoded.device_off, decoded.device_len, self._blob,
                          self._slots, True, out)
        return out

    def index_of(self, devices) -> np.ndarray:
        """int32 index of each id (str), active or not; -1 if it was never added."""
        blob, off, length = _spans(list(devices))
        out = np.empty(len(off), np.int32)
        _lookup_spans(blob, off, length, self._blob, self._slots, False, out)
        return out

    def add(self, devices, subjects) -> np.ndarray:
        """Add or update ids with their subjects; returns their int32 indices.

        A new id gets the next index; a known one keeps its index, becomes active again
        and takes the given subject. ValueError (nothing changed) for an id that is not a
        str of 1..32 characters (a NUL never: the wire cannot carry it faithfully), or one given twice with different subjects."""
        devices = list(devices)
        subjects = np.asarray(subjects, np.int32).reshape(-1)
        if len(subjects) != len(devices):
            raise ValueError(f"{len(devices)} devices but {len(subjects)} subjects")
        bad = [d for d in devices if type(d) is not str or not 1 <= len(d) <= MAX_DEVICE_CHARS
               or "\x00" in d]
        if bad:
            raise ValueError(f"device ids must be str of 1..{MAX_DEVICE_CHARS} characters, "
                             f"no NUL: {bad[:5]!r}")
        subject_by_device = {}
        for d, s in zip(devices, subjects.tolist()):
            if subject_by_device.setdefault(d, s) != s:
                raise ValueError(f"device {d!r} given with subjects {subject_by_device[d]} and {s}")
        idx = self.index_of(devices)
        new = list(dict.fromkeys(d for d, i in zip(devices, idx.tolist()) if i < 0))
        self._append(new)
        idx = self.index_of(devices)
        self._subject[idx] = subjects
        self._set_active(idx, 1)
        return idx

    def ids(self, start: int, stop: int) -> list[str]:
        """The ids of indices start .. stop - 1."""
        return [bytes(self._blob[span >> 8:(span >> 8) + (span & 0xFF)]).decode()
                for span in self._span[start:stop].tolist()]

    def deactivate(self, devices) -> None:
        """Mark ids removed: lookups give -1, the index stays theirs. KeyError (nothing
        changed) if one was never added."""
        devices = list(devices)
        idx = self.index_of(devices)
        if (idx < 0).any():
            unknown = [d for d, i in zip(devices, idx.tolist()) if i < 0]
            raise KeyError(f"unknown devices: {unknown[:5]!r}")
        self._set_active(idx, 0)

    def _set_active(self, idx: np.ndarray, flag: int) -> None:
        idx = np.unique(idx).astype(np.int64)
        changed = idx[self._active[idx] != flag]
        self._active[changed] = flag
        _set_refs(changed, self._hash, self._active, self._slots)

    def _append(self, devices: list[str]) -> None:
        """New ids (not in the book, none repeated) at the next indices, inactive."""
        if not devices:
            return
        blob, off, length = _spans(devices)
        first, last = self._n, self._n + len(devices)
        self._blob = _grown(self._blob, self._bytes + len(blob))
        self._blob[self._bytes:self._bytes + len(blob)] = blob
        for name in ("_hash", "_span", "_num", "_active", "_subject"):
            setattr(self, name, _grown(getattr(self, name), last))
        self._span[first:last] = (off + self._bytes) << 8 | length
        _hash_spans(blob, off, length, self._hash[first:last])
        self._num[first:last] = [_canonical_number(d) for d in devices]
        self._active[first:last] = 0
        self._bytes += len(blob)
        self._n = last
        if 2 * last > len(self._slots) // RECORD:   # keep the load at most one half
            self._slots = _empty_table(4 * last)
            first = 0
        _insert(first, last, self._hash, self._span, self._num, self._active, self._slots)


def _empty_table(size: int) -> np.ndarray:
    """A table of at least `size` slots (a power of two), all empty (ref -1)."""
    slots = np.zeros(RECORD * (1 << (size - 1).bit_length()), np.int64)
    slots[REF::RECORD] = -1
    return slots


def _spans(devices: list[str]):
    """(uint8 blob, int64 offsets, int64 lengths) of the UTF-8 of each id; length -1 for
    anything that is not a str."""
    encoded = [d.encode() if type(d) is str else b"" for d in devices]
    length = np.array([len(e) if type(d) is str else -1 for e, d in zip(encoded, devices)],
                      np.int64)
    off = np.zeros(len(encoded), np.int64)
    if encoded:
        np.cumsum([len(e) for e in encoded[:-1]], out=off[1:])
    return np.frombuffer(b"".join(encoded) or b"\0", np.uint8), off, length


def warm_up() -> None:
    """Compile (or load) the lookup kernels."""
    from ingest.decode import decode_batch
    from ingest.protocol import encode_cols, encode_rows
    book = DeviceBook()
    book.add(["13800138000"], [0])
    one = (np.array([0]), np.array([117.5]), np.array([34.8]))
    for device in (["13800138000"], np.array([13800138000])):
        frame = (encode_rows if isinstance(device, list) else encode_cols)("w", 0, device, *one)
        decoded = decode_batch(frame, 0)
        mark_unknown(book.lookup(decoded), decoded.reason)
