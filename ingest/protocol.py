"""The carrier feed's wire format (SPEC §4): one place that defines it.

Frames on the engine's ROUTER socket (a carrier connects a DEALER, or a REQ)::

    carrier -> engine   [identity] [b"" if REQ] [batch: msgpack map]
    engine  -> carrier  [identity] [b"" if REQ] [ack:   msgpack map]

Everything before the last frame is the envelope and goes back unchanged, so DEALER and
REQ peers both work. One ack per batch; a carrier resends after a timeout (Lazy Pirate)
and the (carrier, batch) idempotency key makes the resend harmless.

Batch (msgpack map, string keys; unknown keys are ignored)::

    {"v": 1, "carrier": "cmcc-sd", "batch": 17, "datum": "gcj02",      # datum optional
     "fixes": [[device, t_ms, lon, lat, acc_m, src], ...]}            # acc, src optional
    {"v": 1, "carrier": ..., "batch": ..., "cols": {"device": [...] | bin int64 LE,
     "t": [...] | bin int64 LE, "lon": [...] | bin f64 LE, "lat": ..., "acc": ..., "src": [...]}}

A row may report the handset's state instead of a position (SPEC §14): `src` is one of
`STATES` (off 关机, suspended 停机, unreachable 无法接通) and lon, lat, acc are nil::

    [device, t_ms, None, None, None, "off"]       # cols: lon/lat nil (or NaN in a bin)

Locate request (engine -> carrier, unasked, on a DEALER connection; SPEC §14)::

    {"v": 1, "kind": "locate", "request": "L5f0c...", "device": "13800138000",
     "reason": "desk"}                                                 # or "unsure"

The carrier answers with an ordinary batch, best with `"request": "L5f0c..."` in the batch
map: its first accepted row of the device answers the request, whatever its time. Without
that key, any accepted row of the device made at or after the request (less 10 s of clock
skew) answers it.

Ack (msgpack map)::

    {"v": 1, "batch": 17, "status": "partial", "accepted": 9998,
     "rejected": [[3, "lon"], [40, "duplicate"]], "error": None}

Reason and status codes travel as the strings below; inside the engine they are the
small integers of the same tuples (index = code), so kernels can write them.
"""

import math

import msgpack
import numpy as np

VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_FIXES = 100_000
MAX_DEVICE_CHARS = 32
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
DEFAULT_MAX_FIX_AGE_MS = 7 * 24 * 3600 * 1000
CARRIER_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
MAX_DEPTH = 64          # containers nested deeper (the batch map is depth 1): malformed
MAX_HEADER_KEYS = 64    # keys in the batch map or in `cols`: more is malformed

# Per-fix outcome; index 0 is "accepted".
REASONS = ("ok", "device", "unknown_device", "time", "lon", "lat", "acc", "src",
           "no_position", "duplicate")
OK, DEVICE, UNKNOWN_DEVICE, TIME, LON, LAT, ACC, SRC, NO_POSITION, DUPLICATE = range(10)

# Whole-batch refusal; index 0 is "none".
ERRORS = (None, "malformed", "version", "too_large", "unauthorized")
NO_ERROR, MALFORMED, BAD_VERSION, TOO_LARGE, UNAUTHORIZED = range(5)

STATUSES = ("ok", "partial", "rejected", "duplicate", "busy")

SOURCES = ("gps", "wifi", "cell")   # src codes 0, 1, 2; -1 is nil (unknown)
NO_SOURCE = -1
# Handset status instead of a position (关机, 停机, 无法接通): a row whose `src` is one of
# these carries no position (lon, lat and acc are not read; send nil). src codes 3, 4, 5.
STATES = ("off", "suspended", "unreachable")
STATE0 = len(SOURCES)
SRC_NAMES = SOURCES + STATES

# Engine -> carrier, unasked, on the carrier's DEALER connection (SPEC §14): "give me a
# fresh position of `device`". The carrier answers with an ordinary batch; the engine takes
# any accepted row of that device (a fix, or a handset status) made at or after the
# request as its answer. Acks never carry `kind`, so a carrier tells the two apart by it.
LOCATE = "locate"
LOCATE_REASONS = ("desk", "unsure")


# ---------------------------------------------------------------- frames, in plain Python
# For carriers (the simulator), the tests and acks: the engine decodes batches with
# `ingest.decode.decode_batch`, never with these.


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _batch_header(carrier: str, batch: int, datum: str | None, request: str | None) -> dict:
    header = {"v": VERSION, "carrier": carrier, "batch": int(batch)}
    if datum is not None:
        header["datum"] = datum
    if request is not None:
        header["request"] = request
    return header


def _device_strs(device) -> list[str]:
    return [str(d) for d in np.asarray(device).tolist()]


def _acc_values(acc) -> list:
    """acc in metres, NaN (not given) as nil."""
    return [None if math.isnan(a) else a for a in np.asarray(acc, np.float64).tolist()]


def _src_values(src) -> list:
    """src as strings or nil: from codes (index of SRC_NAMES, -1 nil) or from strings/None."""
    src = np.asarray(src)
    if src.dtype.kind in "iu":
        return [SRC_NAMES[s] if s >= 0 else None for s in src.tolist()]
    return [None if s is None else str(s) for s in src.tolist()]


def _coordinates(values) -> list:
    """lon or lat as numbers, NaN (a handset status row's missing position) as nil."""
    return [None if math.isnan(v) else v for v in np.asarray(values, np.float64).tolist()]


def encode_rows(carrier: str, batch: int, device, t_ms, lon, lat, acc=None, src=None,
                datum: str | None = None, request: str | None = None) -> bytes:
    """A batch in the `fixes` (rows) form. Rows carry acc and src only if given; a NaN acc,
    lon or lat and a src code of -1 (or None) travel as nil. Devices are sent as their str.
    `request`: the locate request the batch answers (SPEC §14), as a `request` key."""
    cols = [_device_strs(device), np.asarray(t_ms, np.int64).tolist(),
            _coordinates(lon), _coordinates(lat)]
    if acc is not None or src is not None:
        cols.append(_acc_values(acc) if acc is not None else [None] * len(cols[0]))
    if src is not None:
        cols.append(_src_values(src))
    return _pack({**_batch_header(carrier, batch, datum, request),
                  "fixes": [list(r) for r in zip(*cols)]})


def encode_cols(carrier: str, batch: int, device, t_ms, lon, lat, acc=None, src=None,
                datum: str | None = None, binary: bool = True,
                request: str | None = None) -> bytes:
    """A batch in the `cols` form. binary=True: t, lon, lat, acc as little-endian bins
    (acc NaN = not given) and an integer device array as an int64 bin; else arrays."""
    device = np.asarray(device)
    if binary:
        cols = {"device": (np.asarray(device, "<i8").tobytes() if device.dtype.kind in "iu"
                           else _device_strs(device)),
                "t": np.asarray(t_ms, "<i8").tobytes(),
                "lon": np.asarray(lon, "<f8").tobytes(), "lat": np.asarray(lat, "<f8").tobytes()}
        if acc is not None:
            cols["acc"] = np.asarray(acc, "<f8").tobytes()
    else:
        cols = {"device": _device_strs(device), "t": np.asarray(t_ms, np.int64).tolist(),
                "lon": _coordinates(lon), "lat": _coordinates(lat)}
        if acc is not None:
            cols["acc"] = _acc_values(acc)
    if src is not None:
        cols["src"] = _src_values(src)
    return _pack({**_batch_header(carrier, batch, datum, request), "cols": cols})


def rejections(reason) -> list[list]:
    """The ack's `rejected` list from a batch's reason codes: [index, reason] per refusal."""
    reason = np.asarray(reason)
    refused = np.flatnonzero(reason != OK)
    return [[i, REASONS[r]] for i, r in zip(refused.tolist(), reason[refused].tolist())]


def encode_ack(batch: int | None, status: str, accepted: int, rejected: list,
               error: str | None = None) -> bytes:
    """An ack frame. rejected: [index, reason] pairs, reason a string of REASONS (or its code)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    if error not in ERRORS:
        raise ValueError(f"error {error!r} is not one of {ERRORS}")
    pairs = [[int(i), REASONS[r] if isinstance(r, (int, np.integer)) else r] for i, r in rejected]
    if any(r not in REASONS for _, r in pairs):
        raise ValueError(f"a rejection reason is not one of {REASONS}")
    return _pack({"v": VERSION, "batch": batch, "status": status, "accepted": int(accepted),
                  "rejected": pairs, "error": error})


def encode_locate(request: str, device: str, reason: str) -> bytes:
    """A locate request frame (engine -> carrier)."""
    if reason not in LOCATE_REASONS:
        raise ValueError(f"reason {reason!r} is not one of {LOCATE_REASONS}")
    return _pack({"v": VERSION, "kind": LOCATE, "request": str(request), "device": str(device),
                  "reason": reason})


def is_locate(message: dict) -> bool:
    """Whether a frame the engine sent a carrier (as msgpack unpacked it) is a locate
    request rather than an ack."""
    return isinstance(message, dict) and message.get("kind") == LOCATE


def decode_locate(frame: bytes) -> dict:
    """A locate request frame as {v, kind, request, device, reason}; ValueError if not one."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except Exception as e:
        raise ValueError(f"not a locate request: {e}") from e
    keys = ("v", "kind", "request", "device", "reason")
    if (not is_locate(message) or set(message) != set(keys)
            or not all(isinstance(message[k], str) for k in keys[2:])
            or message["reason"] not in LOCATE_REASONS):
        raise ValueError(f"a locate request is a map with exactly the keys {keys}")
    return message


def _refuse_ext(code, data):
    raise ValueError(f"ext type {code} is not part of the protocol")


def decode_ack(frame: bytes) -> dict:
    """An ack frame as a dict with the six keys of SPEC §4; ValueError if it is not one."""
    try:
        ack = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except Exception as e:
        raise ValueError(f"not an ack frame: {e}") from e
    keys = ("v", "batch", "status", "accepted", "rejected", "error")
    if not isinstance(ack, dict) or any(k not in ack for k in keys):
        raise ValueError(f"an ack is a map with the keys {keys}")
    if ack["status"] not in STATUSES or ack["error"] not in ERRORS:
        raise ValueError(f"unknown ack status {ack['status']!r} or error {ack['error']!r}")
    rejected = ack["rejected"]
    if not isinstance(rejected, list) or not all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and p[1] in REASONS
            for p in rejected):
        raise ValueError("an ack's rejected is a list of [index, reason]")
    if type(ack["accepted"]) is not int:
        raise ValueError("an ack's accepted is an int")
    return {k: ack[k] for k in keys}
