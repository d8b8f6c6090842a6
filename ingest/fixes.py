"""Accepted fixes as typed columns, and their compact blob for the durable store.

Ingest validates a batch into a `FixColumns`, the store keeps it as one blob per batch,
and the evaluation workers read it back. The blob is the columns' raw little-endian
bytes behind a 16-byte header, so writing is one `tobytes` per column and reading is
`np.frombuffer` views over the blob: no per-fix Python and no copies on either side::

    offset 0   magic  b"GFXC"
           4   uint16 version (1)
           6   uint16 number of columns (7)
           8   uint64 n, the number of fixes
          16   t_ms   int64[n]   lon float64[n]   lat float64[n]
               device int32[n]   subject int32[n] acc_m float32[n]   src int8[n]

Wide columns come first so every column stays aligned to its item size when the blob
itself is 8-byte aligned (Python `bytes` are), which keeps the views fast. The length is
fully determined by n, so a truncated or padded blob is detected before any view is made.
"""

import struct
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from geofence.errors import GeofenceError

BLOB_MAGIC = b"GFXC"
BLOB_VERSION = 1
_HEADER = struct.Struct("<4sHHQ")

# (field, dtype) in blob order: widest first, for alignment. Little-endian on the wire.
_BLOB_COLUMNS = (
    ("t_ms", np.dtype("<i8")),
    ("lon", np.dtype("<f8")),
    ("lat", np.dtype("<f8")),
    ("device", np.dtype("<i4")),
    ("subject", np.dtype("<i4")),
    ("acc_m", np.dtype("<f4")),
    ("src", np.dtype("i1")),
)
_DTYPES = dict(_BLOB_COLUMNS)
BYTES_PER_FIX = sum(dt.itemsize for _, dt in _BLOB_COLUMNS)


class FixBlobError(GeofenceError, ValueError):
    """A stored fix blob is truncated or corrupt; the store file is damaged or not ours."""


@dataclass(frozen=True, eq=False)
class FixColumns:
    """Equal-length columns of fixes; one row per fix.

    `device` is the engine's device index (not the carrier's string), `subject` the
    subject index, `t_ms` unix milliseconds (UTC), `lon`/`lat` WGS-84 degrees, `acc_m`
    the accuracy radius in metres, `src` an index into `protocol.SOURCES` (-1 unknown).
    Arrays are checked, never converted: build them with the right dtypes. Arrays made
    by `from_bytes` are read-only views of the blob. Compare with `equals` (`==` on
    arrays is element-wise, so the dataclass does not define it).
    """

    device: np.ndarray   # int32
    subject: np.ndarray  # int32
    t_ms: np.ndarray     # int64
    lon: np.ndarray      # float64
    lat: np.ndarray      # float64
    acc_m: np.ndarray    # float32
    src: np.ndarray      # int8

    def __post_init__(self) -> None:
        n = len(self.t_ms) if isinstance(self.t_ms, np.ndarray) else -1
        for f in fields(self):
            col = getattr(self, f.name)
            want = _DTYPES[f.name]
            if not isinstance(col, np.ndarray) or col.dtype != want or col.ndim != 1:
                got = (f"{col.dtype}[{col.ndim}d]" if isinstance(col, np.ndarray)
                       else type(col).__name__)
                raise ValueError(f"FixColumns.{f.name} must be a 1-d {want.name} array, "
                                 f"got {got}")
            if len(col) != n:
                raise ValueError(f"FixColumns columns differ in length: {f.name} has "
                                 f"{len(col)}, t_ms {n}")

    def __len__(self) -> int:
        return len(self.t_ms)

    @classmethod
    def empty(cls) -> "FixColumns":
        """No fixes (a batch whose every fix was rejected)."""
        return cls(**{name: np.empty(0, dt) for name, dt in _BLOB_COLUMNS})

    def take(self, mask_or_index: np.ndarray) -> "FixColumns":
        """The rows selected by a boolean mask or an integer index array (a copy)."""
        return FixColumns(**{f.name: getattr(self, f.name)[mask_or_index] for f in fields(self)})

    @classmethod
    def concat(cls, parts: Sequence["FixColumns"]) -> "FixColumns":
        """All rows of `parts`, in order."""
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})

    def equals(self, other: "FixColumns") -> bool:
        """Same rows, bit for bit (NaN equals NaN)."""
        return len(self) == len(other) and all(
            np.array_equal(getattr(self, name), getattr(other, name), equal_nan=dt.kind == "f")
            for name, dt in _BLOB_COLUMNS)

    def to_bytes(self) -> bytes:
        """The blob: header, then each column's little-endian bytes (see module docstring)."""
        header = _HEADER.pack(BLOB_MAGIC, BLOB_VERSION, len(_BLOB_COLUMNS), len(self))
        return b"".join([header] + [getattr(self, name).astype(dt, copy=False).tobytes()
                                    for name, dt in _BLOB_COLUMNS])

    @classmethod
    def from_bytes(cls, buf: bytes | bytearray | memoryview) -> "FixColumns":
        """Views over a blob made by `to_bytes`; no copy. Raises FixBlobError if it is damaged.

        The arrays share memory with `buf`: keep it unchanged while they live (the store
        hands out immutable `bytes`, whose views are read-only).
        """
        size = memoryview(buf).nbytes
        if size < _HEADER.size:
            raise FixBlobError(f"fix blob truncated: {size} bytes, the header alone is "
                               f"{_HEADER.size}")
        magic, version, ncols, n = _HEADER.unpack_from(buf, 0)
        if magic != BLOB_MAGIC:
            raise FixBlobError(f"not a fix blob: magic {magic!r}, expected {BLOB_MAGIC!r}")
        if version != BLOB_VERSION or ncols != len(_BLOB_COLUMNS):
            raise FixBlobError(f"fix blob version {version} with {ncols} columns; this code "
                               f"reads version {BLOB_VERSION} with {len(_BLOB_COLUMNS)}")
        expected = _HEADER.size + n * BYTES_PER_FIX
        if size != expected:
            raise FixBlobError(f"fix blob of {n} fixes must be {expected} bytes, got {size} "
                               f"({'truncated' if size < expected else 'trailing bytes'})")
        columns, offset = {}, _HEADER.size
        for name, dt in _BLOB_COLUMNS:
            columns[name] = np.frombuffer(buf, dt, count=n, offset=offset)
            offset += n * dt.itemsize
        return cls(**columns)
