"""`Fixes`: simulated fixes as one table of columns, with the truth behind each.

The one fix table of `sim`: a simulated day (`sim.movement`), the demo's day
(`sim.scenario`) and each carrier's feed (`sim.carriers`) are all `Fixes`. Beside what a
phone reported (`lon`, `lat`, `acc_m`, `src`) it keeps where the person really was
(`true_lon`, `true_lat`) and whether that was during a planted excursion (`away`), so the
alarms can be scored against the truth. (The engine's own table, `ingest.fixes.FixColumns`,
holds what a worker needs instead: device indices, float32 accuracies, no truth.)
"""

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True, eq=False)
class Fixes:
    """Equal-length columns, one row per fix, in time order. `lon`/`lat` are WGS-84, except
    in a carrier's feed, where they are in that carrier's datum."""

    subject: np.ndarray   # int32 index into the population
    t_ms: np.ndarray      # int64 unix milliseconds
    lon: np.ndarray       # float64, as reported
    lat: np.ndarray
    acc_m: np.ndarray     # float64 reported accuracy radius
    src: np.ndarray       # int8 index into ingest.protocol.SOURCES (sim.carriers: or UNKNOWN_SOURCE)
    true_lon: np.ndarray  # float64 WGS-84: where the person really was
    true_lat: np.ndarray
    away: np.ndarray      # bool: during a planted excursion

    def __len__(self) -> int:
        return len(self.t_ms)

    def take(self, index) -> "Fixes":
        """The rows picked by a mask, indices or a slice (copies, except for a slice)."""
        return Fixes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concat(cls, parts: list["Fixes"]) -> "Fixes":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})
