"""Simulated carriers' feeds: whose fixes each carrier sends, in which datum, as which frames.

Subject i's phone is with carriers[i % len(carriers)]. A GCJ-02 carrier converts its
fixes from WGS-84 and labels its batches `datum: gcj02`, as Chinese carriers often do.
A feed is sent in time order as binary `cols` batches or `fixes` rows (SPEC §4,
`ingest.protocol`), the device id being the subject's phone number.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from geofence.datum import from_wgs84
from ingest.protocol import SOURCES, encode_cols, encode_rows
from sim.fixes import Fixes

FORMS = ("cols", "rows")
UNKNOWN_SOURCE = len(SOURCES)   # a src code for a source no engine knows, sent as "sat"
_SOURCE_NAMES = np.array([*SOURCES, "sat"], object)


@dataclass(frozen=True, eq=False)
class CarrierFeed:
    """One carrier's fixes as it sends them: lon/lat already in its datum, time order."""

    name: str
    datum: str | None    # None: WGS-84, the protocol's default, left unsaid
    phones: np.ndarray   # int64 phone number of each subject index (the device id)
    fixes: Fixes

    def __len__(self) -> int:
        return len(self.fixes)

    def frame(self, i: int, j: int, batch: int, form: str = "cols") -> bytes:
        """Fixes i:j as one batch: binary `cols`, or `rows`."""
        f = self.fixes.take(slice(i, j))
        args = (self.name, batch, self.phones[f.subject], f.t_ms, f.lon, f.lat, f.acc_m,
                _SOURCE_NAMES[f.src])
        if form == "cols":
            return encode_cols(*args, datum=self.datum, binary=True)
        return encode_rows(*args, datum=self.datum)

    def batches(self, form: str, batch_fixes: int,
                batch_base: int) -> Iterator[tuple[int, bytes, int]]:
        """(batch number, frame, fixes) for the whole feed, encoded lazily, in time order."""
        for k, lo in enumerate(range(0, len(self), batch_fixes)):
            hi = min(lo + batch_fixes, len(self))
            yield batch_base + k, self.frame(lo, hi, batch_base + k, form), hi - lo


def split_by_carrier(fixes: Fixes, phones: np.ndarray, carriers,
                     gcj02_carriers=()) -> list[CarrierFeed]:
    """Each carrier's share of `fixes` (WGS-84, time order), converted to its datum."""
    if not carriers or len(set(carriers)) != len(carriers):
        raise ValueError("carriers must be distinct names, at least one")
    carrier_of = fixes.subject % len(carriers)
    feeds = []
    for k, name in enumerate(carriers):
        mine = fixes.take(carrier_of == k)
        datum = "gcj02" if name in gcj02_carriers else None
        if datum is not None and len(mine):
            lon, lat = from_wgs84(mine.lon, mine.lat, datum)
            mine = replace(mine, lon=lon, lat=lat)
        feeds.append(CarrierFeed(name, datum, phones, mine))
    return feeds
