"""Batch verdicts (SPEC §5): arrays of fixes in, arrays of verdicts out, no Python per fix.

A caller (the rules engine) registers each distinct allowed area once (`area_id`: a
subject's home codes plus the destinations of its active permits) and each distinct set
of exclusion zones once (`exclusion_set_id`), keeps the ids per subject, and then calls
`verdicts` / `exclusion_verdicts` per batch with an id per fix.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from geofence._algorithms import verdict as vk
from geofence.area import AreaSet
from geofence.errors import InputArrayError, UnknownCodeError
from geofence.index import as_points
from geofence.layer import Layer

IN, UNSURE, OUT = vk.IN, vk.UNSURE, vk.OUT
VERDICT_NAMES = ("in", "unsure", "out")
EXIT_MARGIN_M = 200.0  # an `out` needs the fix this far beyond the area at least


@dataclass(frozen=True)
class Verdicts:
    """Per fix: jurisdiction feature (-1: none), verdict (IN/UNSURE/OUT) and distance.

    `distance_m` is 0 for `in`; otherwise the distance to the area that decided the
    verdict: exact when it had to be measured, else a bound (a lower bound above the
    threshold for a clear `out`, an upper bound within it for a clear `unsure`).
    `AreaSet.distance_m` gives exact figures for the few fixes that raise alarms.
    """

    where: np.ndarray
    verdict: np.ndarray
    distance_m: np.ndarray


@dataclass(frozen=True)
class ExclusionVerdicts:
    """Per (fix, zone) pair, fixes' pairs contiguous: ``offsets[i]:offsets[i+1]`` are fix i's."""

    offsets: np.ndarray
    zone: np.ndarray
    verdict: np.ndarray
    distance_m: np.ndarray

    def worst(self) -> tuple[np.ndarray, np.ndarray]:
        """Per fix the most severe verdict over its zones (IN > UNSURE > OUT; OUT when none),
        and that zone's index (-1 when none)."""
        n = len(self.offsets) - 1
        severity = np.where(self.verdict == IN, 2, np.where(self.verdict == UNSURE, 1, 0))
        best = np.full(n, OUT, np.int8)
        zone = np.full(n, -1, np.int32)
        fix = np.repeat(np.arange(n), np.diff(self.offsets))
        order = np.lexsort((severity, fix))  # per fix, most severe last
        last = np.r_[fix[order][1:] != fix[order][:-1], True] if len(order) else order
        chosen = order[last]
        best[fix[chosen]] = self.verdict[chosen]
        zone[fix[chosen]] = np.where(self.verdict[chosen] == OUT, -1, self.zone[chosen])
        return best, zone


class VerdictEngine:
    """Verdicts of fixes against allowed areas and exclusion zones of one pair of layers."""

    def __init__(self, jurisdictions: Layer, zones: Layer | None = None,
                 exit_margin_m: float = EXIT_MARGIN_M):
        self.jurisdictions = jurisdictions
        self.zones = zones
        self.exit_margin_m = float(exit_margin_m)
        self.areas = AreaSet(jurisdictions, zones)
        self._zone_sets: dict[tuple[int, ...], int] = {(): 0}
        self._zone_set_list: list[tuple[int, ...]] = [()]
        self._zones = ZoneTables.of(zones)

    def area_id(self, codes: Iterable[str]) -> int:
        """Id of the allowed area made of these jurisdiction and zone codes."""
        return self.areas.area_id(codes)

    def exclusion_set_id(self, zone_codes: Iterable[str]) -> int:
        """Id of a set of exclusion zones (0 is the empty set)."""
        codes = list(zone_codes)
        if codes and self.zones is None:
            raise UnknownCodeError(f"no zone layer loaded for zone codes {codes!r}")
        key = tuple(sorted({int(self.zones.index_of(c)) for c in codes})) if codes else ()
        if key not in self._zone_sets:
            self._zone_sets[key] = len(self._zone_set_list)
            self._zone_set_list.append(key)
        return self._zone_sets[key]

    def verdicts(self, lon, lat, acc_m, area_ids, where=None) -> Verdicts:
        """Verdicts of a batch; `where` may be passed if the caller located the fixes already."""
        xs, ys = as_points(lon, lat)
        acc = _accuracies(acc_m, len(xs))
        area_of = _ids(area_ids, len(xs), len(self.areas), "area_ids")
        if where is None:
            where = self.jurisdictions.locate(xs, ys)
        verdict = np.empty(len(xs), np.int8)
        dist = np.empty(len(xs), np.float64)
        a, z = self.areas.tables(), self._zones
        vk.area_verdicts(xs, ys, acc, where, area_of, self.exit_margin_m,
                         a.member, a.zone_offsets, a.zone_ids,
                         z.coords, z.row_params, z.row_index, z.row_offsets, z.row_edges,
                         a.params, a.coarse, a.coarse_base, a.edt, a.edt_base, a.bucket_base,
                         a.bucket_offsets, a.bucket_ids, a.segs, verdict, dist)
        return Verdicts(where, verdict, dist)

    def exclusion_verdicts(self, lon, lat, acc_m, set_ids) -> ExclusionVerdicts:
        """Verdict of every fix against every zone of its exclusion set."""
        xs, ys = as_points(lon, lat)
        acc = _accuracies(acc_m, len(xs))
        sets = _ids(set_ids, len(xs), len(self._zone_set_list), "set_ids")
        sizes = np.array([len(s) for s in self._zone_set_list], np.int64)[sets]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        pair_fix = np.repeat(np.arange(len(xs), dtype=np.int64), sizes)
        members = [np.array(s, np.int32) for s in self._zone_set_list]
        pair_zone = (np.concatenate([members[s] for s in sets[sizes > 0]])
                     if len(pair_fix) else np.zeros(0, np.int32))
        verdict = np.empty(len(pair_fix), np.int8)
        dist = np.empty(len(pair_fix), np.float64)
        if len(pair_fix):
            z = self._zones
            vk.exclusion_verdicts(xs, ys, acc, pair_fix, pair_zone, z.coords, z.row_params,
                                  z.row_index, z.row_offsets, z.row_edges, z.edges,
                                  z.edge_offsets, z.bounds, verdict, dist)
        return ExclusionVerdicts(offsets, pair_zone, verdict, dist)


class ZoneTables(NamedTuple):
    """What the verdict kernels read of the zone layer: its geometry, row buckets, edges
    (first vertex index, grouped by zone: ``edges[edge_offsets[z]:edge_offsets[z + 1]]``)
    and each zone's bounding box (lon0, lat0, lon1, lat1)."""

    coords: np.ndarray
    row_params: np.ndarray
    row_index: np.ndarray
    row_offsets: np.ndarray
    row_edges: np.ndarray
    edges: np.ndarray
    edge_offsets: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, zones: Layer | None) -> "ZoneTables":
        if zones is None or not len(zones):
            no_offsets = np.zeros(1, np.int64)
            return cls(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2), np.int64),
                       no_offsets, np.zeros(0, np.int32), np.zeros(0, np.int32), no_offsets,
                       np.zeros((0, 4)))
        ix = zones.index
        bounds = np.array([g.bounds for g in zones.geometries], np.float64).reshape(-1, 4)
        return cls(ix.geometry.coords, ix.row_params, ix.row_index, ix.row_offsets,
                   ix.row_edges, ix.edges, ix.feature_edge_offsets, bounds)


def _accuracies(acc_m, n: int) -> np.ndarray:
    acc = np.ascontiguousarray(np.broadcast_to(np.asarray(acc_m, np.float64), (n,)))
    if not np.isfinite(acc).all() or (acc < 0).any():
        raise InputArrayError("accuracy radii must be finite and >= 0 metres")
    return acc


def _ids(ids, n: int, known: int, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.broadcast_to(np.asarray(ids), (n,)), dtype=np.int32)
    if n and (arr.min() < 0 or arr.max() >= known):
        raise InputArrayError(f"{name} must be ids returned by this engine (0..{known - 1})")
    return arr
