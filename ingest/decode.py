"""Batch frames (SPEC §4) into typed columns: `decode_batch`, and its slow reference.

`decode_batch` runs the compiled parser of `ingest._decode` (no Python object per
fix); `reference_decode` is the obvious version over ``msgpack.unpackb`` that the
tests hold it to. Both give the same `DecodedBatch` for every frame.

Whole-batch verdicts, first match wins:

1. TOO_LARGE: a frame over 16 MiB (not parsed at all).
2. MALFORMED: not msgpack as ``unpackb(raw=False, strict_map_key=True)`` reads it, an
   ext value anywhere (the timestamp ext too), trailing bytes, containers nested more
   than 64 deep; the top is not a map with at most 64 str keys, none repeated.
3. BAD_VERSION: ``v`` is an int other than 1 (checked before the other header fields,
   which a later version may change).
4. MALFORMED: ``v`` missing or not an int; ``carrier``, ``batch``, ``datum`` missing
   (datum may be) or mistyped; ``request`` (optional: the locate request this batch
   answers, SPEC §14) not a str of 1..64 of ``[A-Za-z0-9_.-]``; both or neither of ``fixes`` and ``cols``; a row that is
   not an array of 4..6 items; ``cols`` not a map of at most 64 str keys, none repeated,
   with ``device``, ``t``, ``lon``, ``lat``; a column that is not an array (or a bin,
   except ``src``), a bin whose length is not a multiple of 8, columns of unequal length.
5. TOO_LARGE: more than 100,000 fixes.

Per fix (`reason`, first failing): DEVICE, TIME, LON, LAT, NO_POSITION, ACC, SRC; see
SPEC §4 and `ingest._decode.fix_reasons`. A handset status row (`src` one of
`protocol.STATES`: off, suspended, unreachable) is checked for DEVICE and TIME only: its
lon, lat and acc are not read. A float t counts when it is integral and
within int64; booleans are not numbers; nil fails a required number. In a float64 bin
column of ``acc``, NaN is the bin's way of saying nil (not given).

Values in the columns are meaningful for the fields a fix passed: all of them for an
OK fix, the ones before its reason otherwise.
"""

import math
import re
from dataclasses import dataclass

import msgpack
import numpy as np

from geofence.datum import DATUMS
from ingest import _decode as D
from ingest.protocol import (ACC, BAD_VERSION, CARRIER_PATTERN, DEFAULT_MAX_FIX_AGE_MS,
                             DEVICE, FUTURE_TOLERANCE_MS, LAT, LON, MALFORMED, MAX_DEPTH,
                             MAX_DEVICE_CHARS, MAX_FIXES, MAX_FRAME_BYTES, MAX_HEADER_KEYS,
                             NO_ERROR, NO_POSITION, NO_SOURCE, OK, SRC, SRC_NAMES, STATE0, TIME,
                             TOO_LARGE, VERSION)

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_CARRIER = re.compile(CARRIER_PATTERN)
_CARRIER_BYTES = re.compile(CARRIER_PATTERN.encode())
_COLUMNS = ("device", "t", "lon", "lat", "acc", "src")
_REQUIRED = ("device", "t", "lon", "lat")
_EMPTY_I64 = np.zeros(0, np.int64)
_ABSENT = object()
_INVALID = object()     # a header field given but not valid (`request`)


@dataclass(frozen=True, eq=False)
class DecodedBatch:
    """One batch as columns. With an error, n is 0 and the header fields that were
    readable and valid on their own are still given (the ack needs ``batch``); datum is
    then "wgs84" unless a valid one was read."""

    error: int                  # NO_ERROR or a code of protocol.ERRORS
    version: int | None
    carrier: str | None
    batch: int | None
    datum: str                  # "wgs84" when not given
    n: int
    t_ms: np.ndarray            # int64
    lon: np.ndarray             # float64
    lat: np.ndarray             # float64
    acc_m: np.ndarray           # float64, NaN: not given
    src: np.ndarray             # int8 index of SOURCES, -1: not given
    reason: np.ndarray          # int8 index of REASONS, OK so far: 0
    device_numeric: bool        # devices came as an int64 bin: device_num, else spans
    device_num: np.ndarray | None   # int64 numeric ids (their decimal string is the id)
    device_off: np.ndarray | None   # int64 offsets into buffer of the UTF-8 device ids
    device_len: np.ndarray | None   # int64 byte lengths; -1 where the device is invalid
    buffer: np.ndarray          # uint8, read-only: the frame
    request: str | None = None  # the locate request this batch answers (SPEC §14)

    def device_strings(self, indices) -> list[str | None]:
        """The device ids of a few fixes (None where invalid): for messages and tests."""
        out = []
        for i in np.asarray(indices, np.int64).tolist():
            if self.device_numeric:
                num = int(self.device_num[i])
                out.append(str(num) if num >= 0 else None)
            elif self.device_len[i] < 0:
                out.append(None)
            else:
                off, n = int(self.device_off[i]), int(self.device_len[i])
                out.append(self.buffer[off:off + n].tobytes().decode())
        return out


def _failed(error, version=None, carrier=None, batch=None, datum="wgs84") -> DecodedBatch:
    f, i = np.zeros(0), np.zeros(0, np.int8)
    return DecodedBatch(error, version, carrier, batch, datum, 0, _EMPTY_I64, f, f, f, i, i,
                        False, None, _EMPTY_I64, _EMPTY_I64, np.zeros(0, np.uint8))


def _time_window(now_ms: int, max_fix_age_ms: int) -> tuple[int, int]:
    """(lo, hi) accepted t, clamped to int64."""
    lo = max(_I64_MIN, int(now_ms) - int(max_fix_age_ms))
    hi = min(_I64_MAX, int(now_ms) + FUTURE_TOLERANCE_MS)
    return lo, hi


# ---------------------------------------------------------------- compiled path


def _slot(hdr, base):
    return int(hdr[base]), int(hdr[base + 1]), int(hdr[base + 2])


def _header_fields(buf, hdr):
    """(version, carrier, batch, datum or None if invalid, request: None if not given,
    `_INVALID` if invalid) from the scanned header."""
    kind, a, b = _slot(hdr, 3 * D.K_V)
    version = a if kind == D.INT else a + (1 << 64) if kind == D.UINT else None
    kind, a, b = _slot(hdr, 3 * D.K_CARRIER)
    carrier = None
    if kind == D.STR and _CARRIER_BYTES.fullmatch(buf[a:a + b].tobytes()):
        carrier = buf[a:a + b].tobytes().decode()
    kind, a, b = _slot(hdr, 3 * D.K_BATCH)
    batch = a if kind == D.INT and a >= 0 else None
    kind, a, b = _slot(hdr, 3 * D.K_DATUM)
    datum = "wgs84" if kind == D.ABSENT else None
    if kind == D.STR and buf[a:a + b].tobytes().decode() in DATUMS:
        datum = buf[a:a + b].tobytes().decode()
    kind, a, b = _slot(hdr, 3 * D.K_REQUEST)
    request = None if kind == D.ABSENT else _INVALID
    if kind == D.STR and _CARRIER_BYTES.fullmatch(buf[a:a + b].tobytes()):
        request = buf[a:a + b].tobytes().decode()
    return version, carrier, batch, datum, request


def _layout(hdr):
    """(error, n, columns) of the fixes; columns: {name: (kind, a, b)} for cols, None for rows."""
    fixes, cols = _slot(hdr, 3 * D.K_FIXES), _slot(hdr, 3 * D.K_COLS)
    if (fixes[0] == D.ABSENT) == (cols[0] == D.ABSENT):
        return MALFORMED, 0, None
    if fixes[0] != D.ABSENT:
        if fixes[0] != D.ARRAY or hdr[D.H_ROWS_BAD]:
            return MALFORMED, 0, None
        return NO_ERROR, fixes[2], None
    if cols[0] != D.MAP or hdr[D.H_COLS_BAD]:
        return MALFORMED, 0, None
    columns, lengths = {}, set()
    for c, name in enumerate(_COLUMNS):
        kind, a, b = _slot(hdr, D.H_COL + 3 * c)
        if kind == D.ABSENT and name not in _REQUIRED:
            continue
        if kind == D.ARRAY:
            lengths.add(b)
        elif kind == D.BIN and name != "src" and b % 8 == 0:
            lengths.add(b // 8)
        else:
            return MALFORMED, 0, None
        columns[name] = (kind, a, b)
    if len(lengths) != 1:
        return MALFORMED, 0, None
    return NO_ERROR, lengths.pop(), columns


def decode_batch(frame: bytes, now_ms: int,
                 max_fix_age_ms: int = DEFAULT_MAX_FIX_AGE_MS) -> DecodedBatch:
    """Decode and check one batch frame (any bytes-like object) against the clock now_ms."""
    buf = np.frombuffer(frame, np.uint8)
    if len(buf) > MAX_FRAME_BYTES:
        return _failed(TOO_LARGE)
    buf.flags.writeable = False         # one Numba type for bytes and bytearray frames
    hdr = np.empty(D.HDR_SIZE, np.int64)
    stack = np.empty(D.STACK_SIZE, np.int64)
    if D.scan_frame(buf, hdr, stack, np.empty(D.KEYS_SIZE, np.int64)) != NO_ERROR:
        return _failed(MALFORMED)
    version, carrier, batch, datum, request = _header_fields(buf, hdr)
    header = (version, carrier, batch, datum or "wgs84")
    if version is None:
        return _failed(MALFORMED, *header)
    if version != VERSION:
        return _failed(BAD_VERSION, *header)
    if carrier is None or batch is None or datum is None or request is _INVALID:
        return _failed(MALFORMED, *header)
    error, n, columns = _layout(hdr)
    if error == NO_ERROR and n > MAX_FIXES:
        error = TOO_LARGE
    if error != NO_ERROR:
        return _failed(error, *header)

    t_ms, lon, lat = np.empty(n, np.int64), np.empty(n), np.empty(n)
    acc, src = np.full(n, np.nan), np.full(n, NO_SOURCE, np.int8)
    reason = np.zeros(n, np.int8)
    numeric = columns is not None and columns["device"][0] == D.BIN
    dev_num, dev_off, dev_len = None, _EMPTY_I64, _EMPTY_I64
    if not numeric:
        dev_off, dev_len = np.empty(n, np.int64), np.empty(n, np.int64)
    outs = (dev_off, dev_len, t_ms, lon, lat, acc, src, reason)
    if columns is None:
        status = D.fill_rows(buf, hdr[3 * D.K_FIXES + 1], n, *outs, stack)
    else:
        status = NO_ERROR
        for field, name in enumerate(_COLUMNS):
            kind, a, b = columns.get(name, (D.ABSENT, 0, 0))
            if kind == D.ARRAY:
                status |= D.fill_column(buf, a, n, field, *outs, stack)
            elif kind == D.BIN:             # numpy reads little-endian bins at any alignment
                values = buf[a:a + b].view("<i8" if name in ("device", "t") else "<f8")
                if name == "device":
                    dev_num = values.astype(np.int64)
                else:
                    {"t": t_ms, "lon": lon, "lat": lat, "acc": acc}[name][:] = values
    if status != NO_ERROR:              # cannot happen after scan_frame: a guard, not a path
        return _failed(MALFORMED, *header)
    lo, hi = _time_window(now_ms, max_fix_age_ms)
    D.fix_reasons(dev_num if numeric else dev_len, t_ms, lon, lat, acc, src, lo, hi, reason)
    return DecodedBatch(NO_ERROR, version, carrier, batch, datum, n, t_ms, lon, lat, acc, src,
                        reason, numeric, dev_num, None if numeric else dev_off,
                        None if numeric else dev_len, buf, request)


def warm_up() -> None:
    """Compile (or load from the cache) every decoding kernel: rows, array and bin columns."""
    from ingest.protocol import encode_cols, encode_rows
    one = (["13800138000"], np.array([0]), np.array([117.5]), np.array([34.8]))
    for frame in (encode_rows("w", 0, *one, acc=np.array([10.0]), src=np.array([0])),
                  encode_cols("w", 0, *one, src=np.array([1]), binary=False),
                  encode_cols("w", 0, np.array([13800138000]), *one[1:], acc=np.array([5.0]))):
        decode_batch(frame, 0)


# ---------------------------------------------------------------- the reference


class _Map(list):
    """A msgpack map kept as its (key, value) pairs, so repeated keys stay visible."""


def _refuse_ext(code, data):
    raise ValueError(f"ext type {code} is not part of the protocol")


def _unpack(frame):
    """The frame's object tree as msgpack-python reads untrusted input, or None."""
    try:
        # unpackb has no max_buffer_size; its max_*_len limits default to len(frame),
        # which the size check above bounds, so no declared length can make it allocate
        # more than the frame could hold.
        top = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                              object_pairs_hook=_Map)
    except Exception:                   # anything the unpacker raises: not our msgpack
        return None
    todo = [(top, 1)]
    while todo:                         # the timestamp ext bypasses ext_hook; depth limit
        obj, depth = todo.pop()
        if isinstance(obj, msgpack.Timestamp):
            return None
        if isinstance(obj, list):
            if depth > MAX_DEPTH:
                return None
            items = [v for pair in obj for v in pair] if isinstance(obj, _Map) else obj
            todo.extend((v, depth + 1) for v in items)
    return top


def _str_map(obj):
    """The map as a dict if it has at most 64 keys, all str, none repeated; else None."""
    if not isinstance(obj, _Map) or len(obj) > MAX_HEADER_KEYS:
        return None
    keys = [k for k, _ in obj]
    if not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        return None
    return dict(obj)


def _ref_number(x):
    return float(x) if type(x) in (int, float) else math.nan


def _ref_columns(m):
    """([device, t, lon, lat, acc, src] value lists, n, numeric ids or None), or None."""
    if "fixes" in m:
        rows = m["fixes"]
        if type(rows) is not list or any(type(r) is not list or not 4 <= len(r) <= 6
                                         for r in rows):
            return None
        cols = [[r[c] if c < len(r) else None for r in rows] for c in range(6)]
        return cols, len(rows), None
    cols = _str_map(m["cols"])
    if cols is None or any(name not in cols for name in _REQUIRED):
        return None
    out, lengths, nums = [], set(), None
    for name in _COLUMNS:
        col = cols.get(name, _ABSENT)
        if col is _ABSENT:
            out.append(None)
            continue
        if type(col) is bytes and name != "src" and len(col) % 8 == 0:
            col = np.frombuffer(col, "<i8" if name in ("device", "t") else "<f8").tolist()
            if name == "device":
                nums = np.array(col, np.int64)
                col = [("num", v) for v in col]
            elif name == "acc":             # NaN is a bin's nil
                col = [None if math.isnan(v) else v for v in col]
        elif type(col) is not list:
            return None
        lengths.add(len(col))
        out.append(col)
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    return [c if c is not None else [None] * n for c in out], n, nums


def _ref_fix(device, t, lon, lat, acc, src, lo, hi):
    """(reason, device str or None, t, lon, lat, acc, src) of one fix, plainly."""
    if type(device) is tuple:           # a numeric id from a bin
        dev = str(device[1]) if device[1] >= 0 else None
    else:
        dev = device if type(device) is str and 1 <= len(device) <= MAX_DEVICE_CHARS else None
    t_ok = (type(t) is int and _I64_MIN <= t <= _I64_MAX
            or type(t) is float and t.is_integer() and -2.0**63 <= t < 2.0**63)
    t_val = int(t) if t_ok else 0
    x, y = _ref_number(lon), _ref_number(lat)
    a = math.nan if acc is None else _ref_number(acc)
    acc_ok = acc is None or (math.isfinite(a) and a >= 0)
    s = NO_SOURCE if src is None else (SRC_NAMES.index(src) if type(src) is str
                                       and src in SRC_NAMES else None)
    if dev is None:
        reason = DEVICE
    elif not t_ok or not lo <= t_val <= hi:
        reason = TIME
    elif s is not None and s >= STATE0:   # a handset status: no position to check
        reason = OK
    elif not -180 <= x <= 180:
        reason = LON
    elif not -90 <= y <= 90:
        reason = LAT
    elif x == 0 and y == 0:
        reason = NO_POSITION
    elif not acc_ok:
        reason = ACC
    elif s is None:
        reason = SRC
    else:
        reason = OK
    return reason, dev, t_val, x, y, a, NO_SOURCE if s is None else s


def reference_decode(frame: bytes, now_ms: int,
                     max_fix_age_ms: int = DEFAULT_MAX_FIX_AGE_MS) -> DecodedBatch:
    """`decode_batch`, the slow and obvious way: msgpack-python objects, plain checks.

    Device ids land in a buffer of their own (the joined UTF-8 of the valid ones), so
    `device_strings` agrees with the compiled result though the offsets differ.
    """
    frame = bytes(frame)
    if len(frame) > MAX_FRAME_BYTES:
        return _failed(TOO_LARGE)
    m = _str_map(_unpack(frame))
    if m is None:
        return _failed(MALFORMED)
    v, carrier, batch = m.get("v"), m.get("carrier"), m.get("batch")
    version = v if type(v) is int else None
    carrier = carrier if type(carrier) is str and _CARRIER.fullmatch(carrier) else None
    batch = batch if type(batch) is int and 0 <= batch <= _I64_MAX else None
    datum = m.get("datum", "wgs84")
    datum = datum if type(datum) is str and datum in DATUMS else None
    request = m.get("request")
    request_ok = "request" not in m or type(request) is str and _CARRIER.fullmatch(request)
    header = (version, carrier, batch, datum or "wgs84")
    if version is None:
        return _failed(MALFORMED, *header)
    if version != VERSION:
        return _failed(BAD_VERSION, *header)
    if (carrier is None or batch is None or datum is None or not request_ok
            or ("fixes" in m) == ("cols" in m)):
        return _failed(MALFORMED, *header)
    parsed = _ref_columns(m)
    if parsed is None:
        return _failed(MALFORMED, *header)
    cols, n, nums = parsed
    if n > MAX_FIXES:
        return _failed(TOO_LARGE, *header)

    lo, hi = _time_window(now_ms, max_fix_age_ms)
    fixes = [_ref_fix(*item, lo, hi) for item in zip(*cols)]
    reason, devs, t, x, y, a, s = (list(c) for c in zip(*fixes)) if fixes else ([],) * 7
    numeric = nums is not None
    encoded = [d.encode() if d is not None else b"" for d in devs]
    lens = np.array([len(e) if d is not None else -1 for e, d in zip(encoded, devs)], np.int64)
    offs = np.concatenate(([0], np.cumsum([len(e) for e in encoded])[:-1])).astype(np.int64)
    return DecodedBatch(
        NO_ERROR, version, carrier, batch, datum, n, np.array(t, np.int64), np.array(x, float),
        np.array(y, float), np.array(a, float), np.array(s, np.int8), np.array(reason, np.int8),
        numeric, nums, None if numeric else offs[:n], None if numeric else lens,
        np.frombuffer(b"".join(encoded), np.uint8), request)
