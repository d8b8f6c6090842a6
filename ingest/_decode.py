"""Compiled msgpack parsing of a batch frame (SPEC §4) into typed columns.

Why hand-written: msgpack-python makes a Python object of every value, some ten per
fix, and checking them costs more again; this walks the frame's bytes in Numba and
writes numpy columns, so no per-fix Python object ever exists.

The bytes come from a peer we do not trust and Numba does not check indices, so every
read is preceded by a length check (`_head` is the one place that reads a value's
header), nothing recurses (`_skip` keeps its own bounded stack) and nothing raises.
The per-value helpers are inlined (``body``); the loops that validate whole subtrees
(`_skip`, `_utf8_chars`, `_scan_rows`, `_scan_cols`) are called, not inlined: inlining
them everywhere took the first compile from 26 s to over 70 s, for no measurable gain.

Two passes:

1. `scan_frame` checks the whole frame as ``msgpack.unpackb(raw=False,
   strict_map_key=True)`` with ext types refused would (every str valid UTF-8, every
   map key a str or bin, no ext, no 0xc1, nothing truncated, no trailing bytes), plus
   our limits (nesting depth `MAX_DEPTH`, at most `MAX_HEADER_KEYS` keys in the top
   map, all str, none repeated). It records what it saw where (the ``H_*`` slots of
   ``hdr``) and decides nothing about meaning: `ingest.decode` does.
2. `fill_rows` / `fill_column` parse the fixes into the columns; `fix_reasons` then
   gives each fix its first failing check.

Columns between the passes say "not given" and "invalid" in-band, so that `fix_reasons`
is one branch-light loop for rows, array columns and bin columns alike:
``dev_key < 0`` bad device (byte length -1, or a negative numeric id); ``reason ==
TIME`` before `fix_reasons`: t was not an integer; lon/lat NaN: not a number; acc NaN:
not given, -inf: given but not a finite number >= 0; src -1: not given, `BAD_SOURCE`:
given but not a known source.
"""

import math

import numpy as np

from geofence._jit import body, kernel
from ingest.protocol import (ACC, DEVICE, LAT, LON, MALFORMED, MAX_DEPTH, MAX_DEVICE_CHARS,
                             MAX_HEADER_KEYS, NO_ERROR, NO_POSITION, NO_SOURCE, OK, SOURCES, SRC,
                             STATE0, STATES, TIME)

# What `_head` found at a position. ABSENT (0) is what a zeroed header slot says.
ABSENT, BAD, NIL, BOOL, INT, UINT, FLOAT, STR, BIN, ARRAY, MAP, EXT = range(12)
_F32, _F64, _U, _S = 100, 101, 102, 103   # internal: fixed-width tails still to convert

# Names the parser knows, by id: header keys 0..6, column keys 7..12, sources 13..15 and
# handset states 16..18 (`src` codes 0..5, protocol.SOURCES + protocol.STATES).
_NAME_LIST = (b"v", b"carrier", b"batch", b"datum", b"fixes", b"cols", b"request",
              b"device", b"t", b"lon", b"lat", b"acc", b"src", b"gps", b"wifi", b"cell",
              b"off", b"suspended", b"unreachable")
_NAMES = np.frombuffer(b"".join(_NAME_LIST), np.uint8).copy()
_NAME_LEN = np.array([len(s) for s in _NAME_LIST], np.int64)
_NAME_OFF = np.concatenate(([0], np.cumsum(_NAME_LEN)[:-1])).astype(np.int64)
K_V, K_CARRIER, K_BATCH, K_DATUM, K_FIXES, K_COLS, K_REQUEST = range(7)
C_DEVICE, C_T, C_LON, C_LAT, C_ACC, C_SRC = range(6)   # also the item order of a row
_COL0, _SRC0 = 7, 13
N_SRC_NAMES = len(SOURCES) + len(STATES)
BAD_SOURCE = N_SRC_NAMES   # src code of a given but unknown source (fails SRC)

# hdr slots: per header key k, hdr[3k:3k+3] = (kind, a, b); per column c,
# hdr[H_COL + 3c : ...] likewise. a = value (INT, UINT bits, BOOL) or offset (STR, BIN:
# payload; ARRAY, MAP: first item); b = byte length (STR, BIN) or item count.
H_ROWS_BAD = 3 * _COL0  # 1: some element of `fixes` is not an array of 4..6 items
H_COL = H_ROWS_BAD + 1
H_COLS_BAD = H_COL + 3 * (_SRC0 - _COL0)  # 1: `cols` has a non-str key, a repeated key,
                                          # or too many keys
HDR_SIZE = H_COLS_BAD + 1
STACK_SIZE = 2 * MAX_DEPTH
KEYS_SIZE = 6 * MAX_HEADER_KEYS

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_I64_MAX = np.uint64(0x7FFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO63 = 9.223372036854775808e18
_F64_MAX = 1.7976931348623157e308


# ---------------------------------------------------------------- reading values


@body
def _be(buf, pos, nbytes):
    """The big-endian unsigned integer of `nbytes` bytes at pos (bounds checked by caller)."""
    v = np.uint64(0)
    for k in range(nbytes):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return v


@body
def _head(buf, pos, end):
    """(kind, ival, fval, size, nxt) of the msgpack value at pos; kind BAD if it does not fit.

    INT: ival = value; UINT (above int64): ival = its bits; FLOAT: fval; BOOL: ival 0/1;
    STR/BIN: ival = payload offset, size = bytes, nxt = after the payload; ARRAY/MAP:
    ival = nxt = first item, size = items (entries). A container whose count cannot fit
    in the rest of the frame is BAD at once (msgpack-python refuses it too).
    """
    kind = BAD
    ival = np.int64(0)
    fval = 0.0
    size = np.int64(0)
    nxt = end
    if pos >= 0 and pos < end:
        b = np.int64(buf[pos])
        p = pos + 1
        width = 0
        if b <= 0x7F:
            kind, ival, nxt = INT, b, p
        elif b >= 0xE0:
            kind, ival, nxt = INT, b - 256, p
        elif b <= 0x8F:
            kind, size, nxt = MAP, b & 0x0F, p
        elif b <= 0x9F:
            kind, size, nxt = ARRAY, b & 0x0F, p
        elif b <= 0xBF:
            kind, size, ival, nxt = STR, b & 0x1F, p, p + (b & 0x1F)
        elif b == 0xC0:
            kind, nxt = NIL, p
        elif b == 0xC2 or b == 0xC3:
            kind, ival, nxt = BOOL, b - 0xC2, p
        elif b >= 0xC4 and b <= 0xC6:
            kind, width = BIN, 1 << (b - 0xC4)
        elif b == 0xCA:
            kind, width = _F32, 4
        elif b == 0xCB:
            kind, width = _F64, 8
        elif b >= 0xCC and b <= 0xCF:
            kind, width = _U, 1 << (b - 0xCC)
        elif b >= 0xD0 and b <= 0xD3:
            kind, width = _S, 1 << (b - 0xD0)
        elif b >= 0xD9 and b <= 0xDB:
            kind, width = STR, 1 << (b - 0xD9)
        elif b == 0xDC or b == 0xDD:
            kind, width = ARRAY, 2 << (b - 0xDC)
        elif b == 0xDE or b == 0xDF:
            kind, width = MAP, 2 << (b - 0xDE)
        elif b != 0xC1:
            kind = EXT          # c7..c9, d4..d8: refused whatever they hold
        if width > 0:
            if p + width > end:
                kind = BAD
            else:
                u = _be(buf, p, width)
                q = p + width
                nxt = q
                if kind == STR or kind == BIN:
                    size = np.int64(u)
                    ival = q
                    nxt = q + size
                elif kind == ARRAY or kind == MAP:
                    size = np.int64(u)
                elif kind == _F32:
                    kind, fval = FLOAT, np.float64(np.uint32(u & _LOW32).view(np.float32))
                elif kind == _F64:
                    kind, fval = FLOAT, np.uint64(u).view(np.float64)
                elif kind == _U:
                    kind, ival = (UINT if u > _I64_MAX else INT), np.uint64(u).view(np.int64)
                else:           # sign-extend a width-byte two's complement
                    shift = 64 - 8 * width
                    kind, ival = INT, (np.uint64(u).view(np.int64) << shift) >> shift
        if kind == ARRAY or kind == MAP:
            ival = nxt
            if size * (1 + (kind == MAP)) > end - nxt:
                kind = BAD
        elif (kind == STR or kind == BIN) and nxt > end:
            kind = BAD
    return kind, ival, fval, size, nxt


@kernel
def _utf8_chars(buf, off, n):
    """Characters in the n bytes at off if they are valid UTF-8 (as Python decodes it:
    no overlongs, surrogates or code points above U+10FFFF), else -1."""
    i = off
    end = off + n
    chars = 0
    ok = True
    while ok and i < end:
        b = buf[i]
        if b < 0x80:
            i += 1
        else:
            need = 0
            lo = 0x80
            hi = 0xBF
            if b >= 0xC2 and b <= 0xDF:
                need = 1
            elif b == 0xE0:
                need, lo = 2, 0xA0
            elif b == 0xED:
                need, hi = 2, 0x9F
            elif b >= 0xE1 and b <= 0xEF:
                need = 2
            elif b == 0xF0:
                need, lo = 3, 0x90
            elif b >= 0xF1 and b <= 0xF3:
                need = 3
            elif b == 0xF4:
                need, hi = 3, 0x8F
            ok = need > 0 and i + need < end
            if ok:
                ok = buf[i + 1] >= lo and buf[i + 1] <= hi
                for k in range(2, need + 1):
                    ok = ok and buf[i + k] >= 0x80 and buf[i + k] <= 0xBF
            i += need + 1
        chars += 1
    result = chars if ok else -1
    return result


@kernel
def _skip(buf, pos, end, depth, stack):
    """Position after the value at pos, or -1 if msgpack-python would refuse it or it
    nests deeper than MAX_DEPTH. `depth` is the depth of the container holding it.

    Iterative: stack[2j] = items still to read in the j-th open container (map entries
    count twice), stack[2j + 1] = 1 for a map (its even-numbered items are keys).
    """
    top = 0
    ok = True
    more = True
    while more:
        is_key = False
        if top > 0:
            is_key = stack[2 * top - 1] == 1 and stack[2 * top - 2] % 2 == 0
        kind, ival, fval, size, nxt = _head(buf, pos, end)
        container = kind == ARRAY or kind == MAP
        if kind == BAD or kind == EXT:
            ok = False
        elif is_key and kind != STR and kind != BIN:
            ok = False
        elif kind == STR and _utf8_chars(buf, ival, size) < 0:
            ok = False
        elif container and depth + top + 1 > MAX_DEPTH:
            ok = False
        if ok:
            if top > 0:
                stack[2 * top - 2] -= 1
            pos = nxt
            if container and size > 0:
                stack[2 * top] = size * 2 if kind == MAP else size
                stack[2 * top + 1] = 1 if kind == MAP else 0
                top += 1
            while top > 0 and stack[2 * top - 2] == 0:
                top -= 1
        more = ok and top > 0
    result = pos if ok else -1
    return result


@body
def fnv1a(buf, off, n):
    """FNV-1a (64 bit) of n bytes at off: the device hash, and the key-repeat filter."""
    h = _FNV_OFFSET
    for k in range(off, off + n):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@body
def _name_id(buf, off, n, first, last):
    """Id in [first, last) of the known name equal to the n bytes at off, else -1."""
    found = -1
    for k in range(first, last):
        if found < 0 and _NAME_LEN[k] == n:
            same = True
            base = _NAME_OFF[k]
            for j in range(n):
                same = same and buf[off + j] == _NAMES[base + j]
            if same:
                found = k
    return found


@body
def _repeated(buf, keys, base, count, off, n):
    """Is the key at (off, n) equal to one of the `count` keys recorded at keys[base:]?
    Records it as the next one. Hash first, bytes only on a hash match."""
    h = np.uint64(fnv1a(buf, off, n)).view(np.int64)
    seen = False
    for j in range(count):
        r = base + 3 * j
        if not seen and keys[r + 2] == h and keys[r + 1] == n:
            same = True
            for k in range(n):
                same = same and buf[keys[r] + k] == buf[off + k]
            seen = same
    r = base + 3 * count
    keys[r], keys[r + 1], keys[r + 2] = off, n, h
    return seen


# ---------------------------------------------------------------- pass 1: the frame


@kernel
def _scan_cols(buf, pos, end, count, hdr, stack, keys):
    """Walk the `cols` map at pos (count entries), recording the known columns.
    Returns the position after it, or -1 if msgpack-python would refuse it."""
    if count > MAX_HEADER_KEYS:
        hdr[H_COLS_BAD] = 1
    e = 0
    while pos >= 0 and e < count:
        kind, koff, fval, klen, nxt = _head(buf, pos, end)
        if kind == STR and _utf8_chars(buf, koff, klen) >= 0:
            if e < MAX_HEADER_KEYS and _repeated(buf, keys, 3 * MAX_HEADER_KEYS, e, koff, klen):
                hdr[H_COLS_BAD] = 1
            c = _name_id(buf, koff, klen, _COL0, _SRC0)
            vkind, a, fval, b, vnext = _head(buf, nxt, end)
            if c >= 0:
                s = H_COL + 3 * (c - _COL0)
                hdr[s], hdr[s + 1], hdr[s + 2] = vkind, a, b
            pos = _skip(buf, nxt, end, 2, stack)
        elif kind == BIN:               # msgpack allows a bin key; our protocol does not
            hdr[H_COLS_BAD] = 1
            pos = _skip(buf, nxt, end, 2, stack)
        else:
            pos = -1
        e += 1
    return pos


@kernel
def _scan_rows(buf, pos, end, count, hdr, stack):
    """Walk the `fixes` array at pos; flag any element that is not an array of 4..6."""
    r = 0
    while pos >= 0 and r < count:
        kind, ival, fval, size, nxt = _head(buf, pos, end)
        if kind != ARRAY or size < 4 or size > 6:
            hdr[H_ROWS_BAD] = 1
        pos = _skip(buf, pos, end, 2, stack)
        r += 1
    return pos


@kernel
def scan_frame(buf, hdr, stack, keys):
    """Check the frame and fill `hdr`; NO_ERROR or MALFORMED (see the module docstring).

    stack: int64[STACK_SIZE], keys: int64[KEYS_SIZE] scratch; hdr: int64[HDR_SIZE].
    """
    end = len(buf)
    for k in range(len(hdr)):
        hdr[k] = 0
    kind, ival, fval, count, pos = _head(buf, 0, end)
    ok = (kind == MAP and count <= MAX_HEADER_KEYS and len(hdr) >= HDR_SIZE
          and len(stack) >= STACK_SIZE and len(keys) >= KEYS_SIZE)
    e = 0
    while ok and e < count:
        kind, koff, fval, klen, nxt = _head(buf, pos, end)
        ok = (kind == STR and _utf8_chars(buf, koff, klen) >= 0
              and not _repeated(buf, keys, 0, e, koff, klen))
        if ok:
            k = _name_id(buf, koff, klen, 0, _COL0)
            vkind, a, fval, b, vnext = _head(buf, nxt, end)
            if k >= 0:
                hdr[3 * k], hdr[3 * k + 1], hdr[3 * k + 2] = vkind, a, b
            if k == K_FIXES and vkind == ARRAY:
                pos = _scan_rows(buf, vnext, end, b, hdr, stack)
            elif k == K_COLS and vkind == MAP:
                pos = _scan_cols(buf, vnext, end, b, hdr, stack, keys)
            else:
                pos = _skip(buf, nxt, end, 1, stack)
            ok = pos >= 0
        e += 1
    ok = ok and pos == end
    return NO_ERROR if ok else MALFORMED


# ---------------------------------------------------------------- pass 2: the fixes


@body
def _number(kind, ival, fval):
    """An int or float item as float64; NaN if it is not a number (nil, bool, str...)."""
    x = np.nan
    if kind == INT:
        x = np.float64(ival)
    elif kind == UINT:
        x = np.float64(np.int64(ival).view(np.uint64))
    elif kind == FLOAT:
        x = fval
    return x


@body
def _store_item(buf, field, i, kind, ival, fval, size,
                dev_off, dev_len, t_ms, lon, lat, acc, src, reason):
    """Write item `field` (C_DEVICE..C_SRC) of fix i into its column, in-band encoded."""
    if field == C_DEVICE:
        n = -1
        if kind == STR and size <= 4 * MAX_DEVICE_CHARS:
            chars = _utf8_chars(buf, ival, size)
            if chars >= 1 and chars <= MAX_DEVICE_CHARS:
                n = size
        dev_off[i] = ival
        dev_len[i] = n
    elif field == C_T:
        t = np.int64(0)
        good = kind == INT
        if good:
            t = ival
        elif kind == FLOAT and fval >= -_TWO63 and fval < _TWO63 and fval == math.floor(fval):
            t = np.int64(fval)
            good = True
        t_ms[i] = t
        reason[i] = OK if good else TIME
    elif field == C_LON:
        lon[i] = _number(kind, ival, fval)
    elif field == C_LAT:
        lat[i] = _number(kind, ival, fval)
    elif field == C_ACC:
        a = np.nan
        if kind != NIL:
            x = _number(kind, ival, fval)
            a = x if x >= 0.0 and x <= _F64_MAX else -np.inf
        acc[i] = a
    else:
        s = NO_SOURCE
        if kind != NIL:
            s = BAD_SOURCE
            if kind == STR:
                k = _name_id(buf, ival, size, _SRC0, _SRC0 + N_SRC_NAMES)
                if k >= 0:
                    s = k - _SRC0
        src[i] = s


@body
def _after(buf, pos, end, kind, nxt, stack):
    """Position after an item whose head was read: containers are skipped (depth 3)."""
    p = nxt
    if kind == ARRAY or kind == MAP:
        p = _skip(buf, pos, end, 3, stack)
    elif kind == BAD or kind == EXT:
        p = -1
    return p


@kernel
def fill_rows(buf, pos, n, dev_off, dev_len, t_ms, lon, lat, acc, src, reason, stack):
    """Parse n rows starting at pos into the columns (acc and src pre-set to not given).

    NO_ERROR, or MALFORMED if the rows are not what `scan_frame` accepted."""
    end = len(buf)
    ok = True
    i = 0
    while ok and i < n:
        kind, ival, fval, size, pos = _head(buf, pos, end)
        ok = kind == ARRAY and size >= 4 and size <= 6
        j = 0
        while ok and j < size:
            kind, ival, fval, isize, nxt = _head(buf, pos, end)
            _store_item(buf, j, i, kind, ival, fval, isize,
                        dev_off, dev_len, t_ms, lon, lat, acc, src, reason)
            pos = _after(buf, pos, end, kind, nxt, stack)
            ok = pos >= 0
            j += 1
        i += 1
    return NO_ERROR if ok else MALFORMED


@kernel
def fill_column(buf, pos, n, field, dev_off, dev_len, t_ms, lon, lat, acc, src, reason,
                stack):
    """Parse the n items of array column `field` at pos into its column."""
    end = len(buf)
    ok = True
    i = 0
    while ok and i < n:
        kind, ival, fval, size, nxt = _head(buf, pos, end)
        _store_item(buf, field, i, kind, ival, fval, size,
                    dev_off, dev_len, t_ms, lon, lat, acc, src, reason)
        pos = _after(buf, pos, end, kind, nxt, stack)
        ok = pos >= 0
        i += 1
    return NO_ERROR if ok else MALFORMED


@kernel
def fix_reasons(dev_key, t_ms, lon, lat, acc, src, t_lo, t_hi, reason):
    """Each fix's first failing check, in SPEC order: device, time (t_lo <= t <= t_hi),
    lon, lat, no position, acc, src. A handset status row (src `STATE0` and up) has no
    position: only device and time are checked. On entry reason holds TIME where t was
    not an integer, OK elsewhere."""
    for i in range(len(reason)):
        r = OK
        t = t_ms[i]
        x = lon[i]
        y = lat[i]
        a = acc[i]
        if dev_key[i] < 0:
            r = DEVICE
        elif reason[i] == TIME or t < t_lo or t > t_hi:
            r = TIME
        elif src[i] >= STATE0 and src[i] < BAD_SOURCE:
            r = OK
        elif not (x >= -180.0 and x <= 180.0):
            r = LON
        elif not (y >= -90.0 and y <= 90.0):
            r = LAT
        elif x == 0.0 and y == 0.0:
            r = NO_POSITION
        elif not (np.isnan(a) or (a >= 0.0 and a <= _F64_MAX)):
            r = ACC
        elif src[i] >= BAD_SOURCE:
            r = SRC
        reason[i] = r
