"""The batch decoder (SPEC §4): compiled `decode_batch` against the plain `reference_decode`.

- A table of cases, one per reason and per whole-batch error, to read beside the SPEC.
- Hostile but well-formed batches (hypothesis): valid and invalid fields mixed, wrong
  types, nils, bools, floats for t, huge ints, NaN/inf, float32 and 8-byte int encodings,
  rows of the wrong length, unknown keys with nested values, ext values, repeated keys,
  both or neither of fixes/cols, bins of the wrong length, 32/33-character unicode ids,
  invalid UTF-8: both decoders give the same result.
- Arbitrary bytes, and truncations, bit flips, insertions of valid frames: no crash, and
  the same result again.

Frames are built with `pack`, a small msgpack writer that can also write what
msgpack-python will not: invalid UTF-8 in a str, repeated map keys, wide encodings.
"""

import math
import os
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.decode import decode_batch, reference_decode
from ingest.protocol import (ACC, BAD_VERSION, DEFAULT_MAX_FIX_AGE_MS, DEVICE, DUPLICATE,
                             FUTURE_TOLERANCE_MS, LAT, LON, MALFORMED, MAX_FIXES, MAX_FRAME_BYTES,
                             NO_ERROR, NO_POSITION, OK, SOURCES, SRC, STATE0, TIME, TOO_LARGE,
                             decode_ack, encode_ack, encode_cols, encode_rows, rejections)

NOW = 1_700_000_000_000
LO, HI = NOW - DEFAULT_MAX_FIX_AGE_MS, NOW + FUTURE_TOLERANCE_MS
# The core properties get more examples than the rest: twice the profile's in the default
# suite (600 in CI), eight times with --slow (2,400 in CI, where 3 x 2,400 cost minutes).
EXAMPLES = settings.default.max_examples * (8 if os.environ.get("GEOFENCE_SLOW") else 2)


# ---------------------------------------------------------------- a msgpack writer


class Raw(bytes):
    """Packed as a str whose bytes are these (maybe not UTF-8)."""


class Verbatim(bytes):
    """Already msgpack: written as is."""


class F32(float):
    """Packed as a float32 (the value must be one)."""


class Wide(int):
    """Packed in 8 bytes (uint64 or int64)."""


class Pairs(list):
    """Packed as a map of these (key, value) pairs: repeated or odd keys allowed."""


def _sized(out, n, fix, fix_limit, codes):
    if n < fix_limit:
        out.append(fix | n)
    else:
        for code, fmt in codes:
            if n < 1 << (8 * struct.calcsize(fmt)):
                out += bytes([code]) + struct.pack(fmt, n)
                return


def _pack(obj, out):
    if obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, Wide):
        out += b"\xcf" + struct.pack(">Q", obj) if obj >= 0 else b"\xd3" + struct.pack(">q", obj)
    elif isinstance(obj, int):
        if -32 <= obj < 128:
            out.append(obj & 0xFF)
        else:                           # the narrowest of uint8..uint64 or int8..int64
            first, formats = (0xCC, "BHIQ") if obj >= 0 else (0xD0, "bhiq")
            for k, fmt in enumerate(formats):
                try:
                    out += bytes([first + k]) + struct.pack(">" + fmt, obj)
                    break
                except struct.error:
                    continue
    elif isinstance(obj, Verbatim):
        out += obj
    elif isinstance(obj, F32):
        out += b"\xca" + struct.pack(">f", obj)
    elif isinstance(obj, float):
        out += b"\xcb" + struct.pack(">d", obj)
    elif isinstance(obj, (Raw, str)):
        data = bytes(obj) if isinstance(obj, Raw) else obj.encode()
        _sized(out, len(data), 0xA0, 32, ((0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I")))
        out += data
    elif isinstance(obj, bytes):
        _sized(out, len(obj), 0, 0, ((0xC4, ">B"), (0xC5, ">H"), (0xC6, ">I")))
        out += obj
    elif isinstance(obj, (msgpack.ExtType, msgpack.Timestamp)):
        out += msgpack.packb(obj)
    elif isinstance(obj, (Pairs, dict)):
        items = obj if isinstance(obj, Pairs) else list(obj.items())
        _sized(out, len(items), 0x80, 16, ((0xDE, ">H"), (0xDF, ">I")))
        for k, v in items:
            _pack(k, out)
            _pack(v, out)
    else:
        _sized(out, len(obj), 0x90, 16, ((0xDC, ">H"), (0xDD, ">I")))
        for item in obj:
            _pack(item, out)


def pack(obj) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def nested(depth: int):
    """A value of `depth` nested arrays."""
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


# ---------------------------------------------------------------- comparing results

_RANK = {DEVICE: 0, TIME: 1, LON: 2, LAT: 3, NO_POSITION: 4, ACC: 5, SRC: 6, OK: 7}


def assert_same(got, want):
    """Same verdicts, and the same values for every field a fix passed."""
    head = ("error", "version", "carrier", "batch", "datum", "n", "request")
    assert [getattr(got, k) for k in head] == [getattr(want, k) for k in head]
    if got.error != NO_ERROR:
        return
    assert got.device_numeric == want.device_numeric
    np.testing.assert_array_equal(got.reason, want.reason)
    rank = np.array([_RANK[r] for r in got.reason.tolist()], int)
    ok_dev = np.flatnonzero(rank > 0)
    assert got.device_strings(ok_dev) == want.device_strings(ok_dev)
    if got.device_numeric:
        np.testing.assert_array_equal(got.device_num[ok_dev], want.device_num[ok_dev])
    status = (got.reason == OK) & (got.src >= STATE0)   # handset rows: no position read
    for field, passed in (("t_ms", 1), ("lon", 2), ("lat", 3), ("acc_m", 5), ("src", 6)):
        mask = (rank > passed) & ~(status & (field in ("lon", "lat", "acc_m")))
        np.testing.assert_array_equal(getattr(got, field)[mask], getattr(want, field)[mask],
                                      err_msg=field)
    assert got.t_ms.dtype == np.int64 and got.src.dtype == np.int8 and got.reason.dtype == np.int8


def decode_both(frame, now=NOW):
    got, want = decode_batch(frame, now), reference_decode(frame, now)
    assert_same(got, want)
    return got


# ---------------------------------------------------------------- the table of cases

GOOD = ["13800138000", NOW, 117.5, 34.8, 10.0, "gps"]


def header(**changes):
    h = {"v": 1, "carrier": "cmcc-sd", "batch": 17}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not ABSENT}


ABSENT = object()


def row_frame(*row, **head):
    return pack({**header(**head), "fixes": [list(row)]})


def with_field(i, value):
    row = list(GOOD)
    row[i] = value
    return row_frame(*row)


def cols_frame(**cols):
    base = {"device": ["13800138000"], "t": [NOW], "lon": [117.5], "lat": [34.8]}
    base.update(cols)
    return pack({**header(), "cols": {k: v for k, v in base.items() if v is not ABSENT}})


REASON_CASES = [
    ("a good fix", row_frame(*GOOD), OK),
    ("acc and src left off", row_frame(*GOOD[:4]), OK),
    ("acc and src nil", row_frame(*GOOD[:4], None, None), OK),
    ("device of 32 Chinese characters", with_field(0, "中" * 32), OK),
    ("device of 33 Chinese characters", with_field(0, "中" * 33), DEVICE),
    ("empty device", with_field(0, ""), DEVICE),
    ("device sent as an int in a row", with_field(0, 13800138000), DEVICE),
    ("device nil", with_field(0, None), DEVICE),
    ("numeric device bin, negative id", cols_frame(device=struct.pack("<q", -5)), DEVICE),
    ("numeric device bin", cols_frame(device=struct.pack("<q", 13800138000)), OK),
    ("t exactly 5 min ahead", with_field(1, HI), OK),
    ("t 5 min and 1 ms ahead", with_field(1, HI + 1), TIME),
    ("t exactly the maximum age", with_field(1, LO), OK),
    ("t older than the maximum age", with_field(1, LO - 1), TIME),
    ("t an integral float", with_field(1, float(NOW)), OK),
    ("t a fractional float", with_field(1, NOW + 0.5), TIME),
    ("t a string", with_field(1, str(NOW)), TIME),
    ("t beyond int64", with_field(1, 2**64 - 1), TIME),
    ("t nil", with_field(1, None), TIME),
    ("t true", with_field(1, True), TIME),
    ("lon 180 as an int", with_field(2, 180), OK),
    ("lon just over 180", with_field(2, 180.000001), LON),
    ("lon NaN", with_field(2, math.nan), LON),
    ("lon infinite", with_field(2, math.inf), LON),
    ("lon a string", with_field(2, "117.5"), LON),
    ("lon true (a bool is not a number)", with_field(2, True), LON),
    ("lon nil", with_field(2, None), LON),
    ("lat -90 as a float32", with_field(3, F32(-90.0)), OK),
    ("lat 90.5", with_field(3, 90.5), LAT),
    ("lat nil", with_field(3, None), LAT),
    ("position exactly 0, 0", row_frame(GOOD[0], NOW, 0, 0.0), NO_POSITION),
    ("lon 0 alone is a position", row_frame(GOOD[0], NOW, 0.0, 1.0), OK),
    ("acc 0", with_field(4, 0), OK),
    ("acc negative", with_field(4, -1.0), ACC),
    ("acc NaN in an array", with_field(4, math.nan), ACC),
    ("acc infinite", with_field(4, math.inf), ACC),
    ("acc a string", with_field(4, "10"), ACC),
    ("acc NaN in a float64 bin means not given", cols_frame(acc=struct.pack("<d", math.nan)), OK),
    ("acc -inf in a bin", cols_frame(acc=struct.pack("<d", -math.inf)), ACC),
    ("src wifi", with_field(5, "wifi"), OK),
    ("src in capitals", with_field(5, "GPS"), SRC),
    ("src as bin", with_field(5, b"gps"), SRC),
    ("src as a code", with_field(5, 0), SRC),
    ("handset off, no position", row_frame(GOOD[0], NOW, None, None, None, "off"), OK),
    ("handset suspended, position ignored", row_frame(GOOD[0], NOW, 999.0, 0, -1, "suspended"),
     OK),
    ("handset unreachable in cols", cols_frame(lon=[None], lat=[None], src=["unreachable"]), OK),
    ("handset off in bin cols", cols_frame(lon=struct.pack("<d", math.nan),
                                           lat=struct.pack("<d", math.nan), src=["off"]), OK),
    ("a handset state still needs its time", row_frame(GOOD[0], None, None, None, None, "off"),
     TIME),
    ("a handset state still needs its device", row_frame("", NOW, None, None, None, "off"),
     DEVICE),
    ("an unknown state is no position", row_frame(GOOD[0], NOW, None, None, None, "dead"), LON),
    ("device checked before time", row_frame("", None, None, None), DEVICE),
    ("time checked before position", row_frame(GOOD[0], None, 999.0, 999.0), TIME),
]


@pytest.mark.parametrize("frame, reason", [c[1:] for c in REASON_CASES],
                         ids=[c[0] for c in REASON_CASES])
def test_reason_cases(frame, reason):
    decoded = decode_both(frame)
    assert (decoded.error, decoded.n, decoded.reason.tolist()) == (NO_ERROR, 1, [reason])


def _fixes_bin(n):
    column = np.arange(n, dtype="<i8").tobytes()
    return {"device": column, "t": np.full(n, NOW, "<i8").tobytes(),
            "lon": np.full(n, 117.0, "<f8").tobytes(), "lat": np.full(n, 34.0, "<f8").tobytes()}


ERROR_CASES = [
    ("not msgpack", b"\xc1", MALFORMED),
    ("empty frame", b"", MALFORMED),
    ("not a map", pack([1, 2]), MALFORMED),
    ("truncated", row_frame(*GOOD)[:-1], MALFORMED),
    ("trailing bytes", row_frame(*GOOD) + b"\x00", MALFORMED),
    ("v missing", row_frame(*GOOD, v=ABSENT), MALFORMED),
    ("v a string", row_frame(*GOOD, v="1"), MALFORMED),
    ("v true", row_frame(*GOOD, v=True), MALFORMED),
    ("v 1 in eight bytes", row_frame(*GOOD, v=Wide(1)), NO_ERROR),
    ("v 2", row_frame(*GOOD, v=2), BAD_VERSION),
    ("v 2 is checked before the other fields", row_frame(*GOOD, v=2, carrier=ABSENT), BAD_VERSION),
    ("carrier missing", row_frame(*GOOD, carrier=ABSENT), MALFORMED),
    ("carrier with a space", row_frame(*GOOD, carrier="cm cc"), MALFORMED),
    ("carrier of 65 characters", row_frame(*GOOD, carrier="a" * 65), MALFORMED),
    ("carrier of 64 characters", row_frame(*GOOD, carrier="a" * 64), NO_ERROR),
    ("batch negative", row_frame(*GOOD, batch=-1), MALFORMED),
    ("batch 2^63", row_frame(*GOOD, batch=2**63), MALFORMED),
    ("batch 2^63 - 1", row_frame(*GOOD, batch=2**63 - 1), NO_ERROR),
    ("batch a float", row_frame(*GOOD, batch=17.0), MALFORMED),
    ("datum gcj02", row_frame(*GOOD, datum="gcj02"), NO_ERROR),
    ("datum unknown", row_frame(*GOOD, datum="WGS84"), MALFORMED),
    ("datum nil", row_frame(*GOOD, datum=None), MALFORMED),
    ("request of a locate answer", row_frame(*GOOD, request="L0123abcd"), NO_ERROR),
    ("request empty", row_frame(*GOOD, request=""), MALFORMED),
    ("request an int", row_frame(*GOOD, request=7), MALFORMED),
    ("request with a space", row_frame(*GOOD, request="L 1"), MALFORMED),
    ("both fixes and cols", pack({**header(), "fixes": [], "cols": {}}), MALFORMED),
    ("neither fixes nor cols", pack(header()), MALFORMED),
    ("no fixes at all", pack({**header(), "fixes": []}), NO_ERROR),
    ("a row of 3 items", row_frame(*GOOD[:3]), MALFORMED),
    ("a row of 7 items", row_frame(*GOOD, None), MALFORMED),
    ("a row that is a map", pack({**header(), "fixes": [{"device": "x"}]}), MALFORMED),
    ("cols of unequal length", cols_frame(lat=[34.8, 34.9]), MALFORMED),
    ("cols missing lat", cols_frame(lat=ABSENT), MALFORMED),
    ("a column that is a string", cols_frame(lon="117.5"), MALFORMED),
    ("src column as a bin", cols_frame(src=b"gps\0\0\0\0\0"), MALFORMED),
    ("a bin column of 7 bytes", cols_frame(t=b"\0" * 7), MALFORMED),
    ("an unknown column is skipped", cols_frame(speed=[3.0]), NO_ERROR),
    ("an unknown key is skipped", pack({**header(), "x": {"y": [1, {"z": None}]}, "fixes": []}),
     NO_ERROR),
    ("a repeated key", pack(Pairs([*header().items(), ("batch", 1), ("fixes", [])])), MALFORMED),
    ("64 keys", pack({**header(), "fixes": [], **{str(k): k for k in range(60)}}), NO_ERROR),
    ("65 keys", pack({**header(), "fixes": [], **{str(k): k for k in range(61)}}), MALFORMED),
    ("65 columns", cols_frame(**{str(k): [k] for k in range(61)}), MALFORMED),
    ("a bin key", pack(Pairs([*header().items(), (b"fixes", [])])), MALFORMED),
    ("an int key in a nested map", pack({**header(), "x": Pairs([(1, 2)]), "fixes": []}),
     MALFORMED),
    ("an ext value", pack({**header(), "x": msgpack.ExtType(1, b"a"), "fixes": []}), MALFORMED),
    ("a timestamp ext value", pack({**header(), "x": msgpack.Timestamp(1), "fixes": []}),
     MALFORMED),
    ("invalid UTF-8 in a device", with_field(0, Raw(b"138\xff")), MALFORMED),
    ("a UTF-8 surrogate", pack({**header(), "x": Raw(b"\xed\xa0\x80"), "fixes": []}), MALFORMED),
    ("nesting 64 deep", pack({**header(), "x": nested(63), "fixes": []}), NO_ERROR),
    ("nesting 65 deep", pack({**header(), "x": nested(64), "fixes": []}), MALFORMED),
    ("a frame over 16 MiB", b"\x00" * (MAX_FRAME_BYTES + 1), TOO_LARGE),
    ("100,000 fixes", pack({**header(), "cols": _fixes_bin(MAX_FIXES)}), NO_ERROR),
    ("100,001 fixes", pack({**header(), "cols": _fixes_bin(MAX_FIXES + 1)}), TOO_LARGE),
    ("100,001 fixes but v 2", pack({**header(v=2), "cols": _fixes_bin(MAX_FIXES + 1)}),
     BAD_VERSION),
]


@pytest.mark.parametrize("frame, error", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_cases(frame, error):
    decoded = decode_both(frame)
    assert decoded.error == error
    if error != NO_ERROR:
        assert decoded.n == 0


def test_header_survives_an_error_for_the_ack():
    decoded = decode_both(row_frame(*GOOD, v=2))
    assert (decoded.version, decoded.carrier, decoded.batch) == (2, "cmcc-sd", 17)


def test_encoders_round_trip():
    """encode_rows / encode_cols (protocol.py) decode to what they were given."""
    device = np.array([13800138000, 13900139000])
    t = np.array([NOW, NOW - 1000])
    lon, lat = np.array([117.5, 117.25]), np.array([34.8, 34.75])
    acc, src = np.array([10.0, np.nan]), np.array([2, -1])
    frames = [encode_rows("c", 1, device, t, lon, lat, acc, src, datum="gcj02"),
              encode_cols("c", 1, device, t, lon, lat, acc, src, datum="gcj02"),
              encode_cols("c", 1, device.astype(str), t, lon, lat, acc, src, datum="gcj02"),
              encode_cols("c", 1, device, t, lon, lat, acc, src, datum="gcj02", binary=False)]
    for frame, numeric in zip(frames, (False, True, False, False)):
        d = decode_both(frame)
        assert (d.error, d.datum, d.device_numeric) == (NO_ERROR, "gcj02", numeric)
        assert d.device_strings([0, 1]) == ["13800138000", "13900139000"]
        np.testing.assert_array_equal(d.t_ms, t)
        np.testing.assert_array_equal(d.lon, lon)
        np.testing.assert_array_equal(d.acc_m, acc)
        np.testing.assert_array_equal(d.src, src)
        assert (d.reason == OK).all()


def test_ack_round_trip():
    rejected = rejections(np.array([OK, LON, OK, DUPLICATE], np.int8))
    frame = encode_ack(17, "partial", 2, rejected)
    assert decode_ack(frame) == {"v": 1, "batch": 17, "status": "partial", "accepted": 2,
                                 "rejected": [[1, "lon"], [3, "duplicate"]], "error": None}
    assert decode_ack(encode_ack(None, "rejected", 0, [], "malformed"))["error"] == "malformed"
    for bad in (b"\xc1", msgpack.packb({"v": 1}), msgpack.packb([1]),
                encode_ack(1, "ok", 1, [])[:-1]):
        with pytest.raises(ValueError):
            decode_ack(bad)
    with pytest.raises(ValueError):
        encode_ack(1, "fine", 1, [])
    with pytest.raises(ValueError):
        encode_ack(1, "ok", 1, [[0, "nope"]])


def test_bytearray_and_memoryview_frames():
    frame = row_frame(*GOOD)
    for f in (bytearray(frame), memoryview(frame)):
        assert_same(decode_batch(f, NOW), reference_decode(frame, NOW))


# ---------------------------------------------------------------- hostile batches


def often(draw, good, bad, percent=80):
    return draw(good) if draw(st.integers(0, 99)) < percent else draw(bad)


JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=4),
                 st.lists(st.integers(-3, 3), max_size=2), st.just(Pairs([("a", 1)])))
DEVICES = (st.one_of(st.integers(13_000_000_000, 19_999_999_999).map(str),
                     st.sampled_from(["中" * 32, "𝄞" * 32, "x" * 32, "0"]),
                     st.text(min_size=1, max_size=32)),
           st.one_of(st.sampled_from(["", "中" * 33, "a" * 33, "𝄞" * 33]),
                     st.integers(-2**63, 2**64 - 1),
                     st.text(min_size=33, max_size=36), JUNK))
TIMES = (st.one_of(st.integers(LO, HI), st.sampled_from([LO, HI]),
                   st.integers(LO, HI).map(float), st.integers(LO, HI).map(Wide)),
         st.one_of(st.sampled_from([LO - 1, HI + 1, 2**63 - 1, 2**63, 2**64 - 1, -2**63, 0,
                                    NOW + 0.5, 2.0**63, -2.0**63, 1e300,
                                    F32(float(np.float32(NOW)))]),
                   st.floats(), JUNK))


def coordinates(limit):
    return (st.one_of(st.floats(-limit, limit), st.integers(-limit, limit), st.just(0.0),
                      st.floats(-limit, limit, width=32).map(F32)),
            st.one_of(st.floats(), st.sampled_from([limit + 1e-9, -limit - 1e-9, 2**64 - 1,
                                                    Wide(limit), -0.0]), JUNK))


LONS, LATS = coordinates(180), coordinates(90)
ACCS = (st.one_of(st.none(), st.floats(0, 5000), st.integers(0, 10**6),
                  st.floats(0, 5000, width=32).map(F32)),
        st.one_of(st.floats(), st.sampled_from([-1, -0.0, 2**64 - 1, Wide(-1)]), JUNK))
SRCS = (st.one_of(st.none(), st.sampled_from(SOURCES)),
        st.one_of(st.sampled_from(["GPS", "", "gps ", b"gps", 0, "wifi\x00"]), JUNK))
POISON = st.sampled_from([msgpack.ExtType(5, b"x"), Verbatim(b"\xc7\x03\xffabc"),
                          msgpack.Timestamp(1, 0), Raw(b"\xff"), Raw(b"\xed\xa0\x80"),
                          Raw(b"\xc0\x80"), Raw(b"\xf4\x90\x80\x80"), Raw(b"ab\xe4\xb8"),
                          Pairs([(1, 2)]), Pairs([([], 1)]), nested(64)])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=5), st.binary(max_size=5))
NESTED = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.lists(st.tuples(st.one_of(st.text(max_size=3), st.binary(max_size=2)), inner),
             max_size=3).map(Pairs)), max_leaves=8)


@st.composite
def rows(draw):
    row = [often(draw, *DEVICES), often(draw, *TIMES), often(draw, *LONS), often(draw, *LATS)]
    size = draw(st.sampled_from([4, 5, 6]))
    if size >= 5:
        row.append(often(draw, *ACCS))
    if size == 6:
        row.append(often(draw, *SRCS))
    shape = draw(st.integers(0, 99))
    if shape == 0:
        row = row[:draw(st.integers(0, 3))]
    elif shape == 1:
        row = row + [None] * draw(st.integers(7 - len(row), 8 - len(row)))
    elif shape == 2:
        row = draw(JUNK)
    return row


def _bin(draw, n, fmt, values):
    data = struct.pack(f"<{n}{fmt}", *draw(st.lists(values, min_size=n, max_size=n)))
    return data + b"\0" if draw(st.integers(0, 99)) == 0 else data


@st.composite
def columns(draw, n):
    def array(strategies):
        return [often(draw, *strategies) for _ in range(n)]

    def number_column(strategies, fmt, values):
        return _bin(draw, n, fmt, values) if draw(st.booleans()) else array(strategies)

    floats = st.one_of(st.floats(-90, 90), st.floats())
    cols = [("device", _bin(draw, n, "q", st.one_of(
                st.integers(13_000_000_000, 19_999_999_999), st.integers(-2**63, 2**63 - 1)))
             if draw(st.booleans()) else array(DEVICES)),
            ("t", number_column(TIMES, "q", st.one_of(st.integers(LO, HI),
                                                       st.integers(-2**63, 2**63 - 1)))),
            ("lon", number_column(LONS, "d", floats)),
            ("lat", number_column(LATS, "d", floats))]
    if draw(st.booleans()):
        cols.append(("acc", number_column(ACCS, "d", st.floats())))
    if draw(st.booleans()):
        cols.append(("src", array(SRCS)))
    mutation = draw(st.integers(0, 99))
    k = draw(st.integers(0, len(cols) - 1))
    if mutation < 2:                    # one column a different length
        cols[k] = (cols[k][0], cols[k][1][:-1] if mutation == 0 else
                   cols[k][1] + (b"\0" * 8 if isinstance(cols[k][1], bytes) else [1]))
    elif mutation < 4:
        del cols[k]
    elif mutation < 6:
        cols[k] = (cols[k][0], draw(JUNK))
    elif mutation < 8:
        cols.append(draw(st.sampled_from([("src", b"\0" * 8 * n), ("speed", [1] * n),
                                          (b"lon", []), ("t", [])])))
    return Pairs(draw(st.permutations(cols)))


@st.composite
def batches(draw):
    """A batch frame: mostly well-formed, with hostile parts at every level."""
    pairs = []
    for key, good, bad in (
            ("v", st.just(1), st.sampled_from([2, 0, -1, 2**64 - 1, Wide(1), True, 1.0, "1"])),
            ("carrier", st.sampled_from(["cmcc-sd", "unicom.sd_1", "a" * 64]),
             st.sampled_from(["a" * 65, "", "cm cc", "移动", 5, None])),
            ("batch", st.integers(0, 2**63 - 1), st.sampled_from([-1, 2**63, 2**64 - 1, 1.0, "1"])),
            ("datum", st.sampled_from(["wgs84", "gcj02", "bd09"]),
             st.sampled_from(["WGS84", None, 1]))):
        absent = draw(st.integers(0, 99)) < (50 if key == "datum" else 2)
        if not absent:
            pairs.append((key, often(draw, good, bad, 95)))
    n = draw(st.integers(0, 6)) if draw(st.integers(0, 9)) else draw(st.integers(15, 20))
    layout = draw(st.integers(0, 99))
    if layout < 48 or layout >= 96:
        pairs.append(("fixes", [draw(rows()) for _ in range(n)]))
    if 48 <= layout < 98:
        pairs.append(("cols", draw(columns(n))))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(st.text(max_size=6)), draw(NESTED)))
    trouble = draw(st.integers(0, 99))
    if trouble < 3 and pairs:
        pairs.append(draw(st.sampled_from(pairs)))          # a repeated key
    elif trouble < 8:
        pairs.append(("x", draw(POISON)))
    elif trouble < 10:
        for key, value in pairs:
            if key == "fixes" and value:
                value[0] = [draw(POISON), NOW, 1.0, 1.0]
    frame = pack(Pairs(draw(st.permutations(pairs))))
    return frame + b"\xc0" if trouble == 10 else frame


@given(batches())
@settings(max_examples=EXAMPLES)
def test_compiled_equals_reference_on_hostile_batches(frame):
    decode_both(frame)


@given(st.binary(max_size=300))
@settings(max_examples=EXAMPLES)
def test_arbitrary_bytes(frame):
    decode_both(frame)


@st.composite
def damaged(draw):
    frame = bytearray(draw(batches()))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["cut", "flip", "byte", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(frame) - 1)))
        if how == "cut":
            del frame[i:]
        elif how == "flip" and frame:
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "byte" and frame:
            frame[i] = draw(st.integers(0, 255))
        elif how == "insert":
            frame[i:i] = bytes([draw(st.integers(0, 255))])
        elif frame:
            del frame[i]
    return bytes(frame)


@given(damaged())
@settings(max_examples=EXAMPLES)
def test_damaged_frames(frame):
    decode_both(frame)


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                              st.floats(allow_nan=False), st.text(max_size=5),
                              st.binary(max_size=5)),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=10))
def test_pack_writes_msgpack(obj):
    """The test's writer agrees with msgpack-python on ordinary values."""
    assert msgpack.unpackb(pack(obj), raw=False) == obj
