"""The gathering rule (聚集): linked people together for `gathering_after_s` raise `gathering`.

Linked: two people sharing a case id in the registry (同案犯), or two key persons
(`alerts.gathering_join.Links`). Together: a fix of each, at most `gathering_max_dt_s`
apart in time, centres within ``gathering_radius_m + gathering_acc_k * sqrt(acc1**2 +
acc2**2)``; fixes less accurate than `gathering_max_acc_m` say nothing (a 1,500 m cell fix
cannot place two people within 200 m) and are left out.

Each window (a stored batch) is joined with one compiled call (`join_window`) over its
fixes of linked people plus each linked person's newest earlier fix still within
`gathering_max_dt_s`, so people whose fixes arrive in different batches still meet.
Per pair the rule keeps only what a pair currently together needs (`PAIR_FIELDS`): since,
when last seen together, whether raised. A pair is dropped when seen apart (both
people's newest fixes close in time and farther apart than the limit) or when not seen
together for `gathering_gap_s`; a pair seen together again later starts afresh, and
raises a new alarm with a new id. So the state holds only pairs together now.

`gathering` is raised once per pair and start when together for `gathering_after_s`
(event time); `gathering_alarms` makes one alarm for each of the two people, each routed
as that person's own alarms are (the alarm store folds and escalates per subject and
office, so each office acknowledges its own person).
"""

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np

from alerts.alarms import Alarm, AlarmFix, Router, new_alarm
from alerts._gathering_kernel import EARTH_RADIUS_M, remember_newest
from alerts.gathering_join import JoinSettings, Links, join_window
from alerts.registry import Subject
from alerts.rules import NO_TIME
from ingest.protocol import STATE0

GATHERING = "gathering"


@dataclass(frozen=True)
class GatheringSettings:
    join: JoinSettings
    after_ms: int
    gap_ms: int

    @classmethod
    def of(cls, rules) -> "GatheringSettings":
        """From `engine.config.Rules`."""
        return cls(JoinSettings(float(rules.gathering_radius_m), float(rules.gathering_acc_k),
                                float(rules.gathering_max_acc_m),
                                int(rules.gathering_max_dt_s) * 1000),
                   int(rules.gathering_after_s) * 1000, int(rules.gathering_gap_s) * 1000)


# The pair table (`GatheringRule.pairs`): one row per linked pair together now, sorted by
# `key` (a << 32 | b, subject indices a < b): since, last seen together, the group they
# share, raised yet, and the two fixes of that last moment (t, lon, lat, acc, src each).
FIX_FIELDS = (("t", np.int64), ("lon", np.float64), ("lat", np.float64), ("acc", np.float64),
              ("src", np.int8))
PAIR_FIELDS = (("key", np.int64), ("since", np.int64), ("last", np.int64),
               ("group", np.int32), ("raised", np.bool_)) + tuple(
    (f"{k}_{who}", dt) for who in "ab" for k, dt in FIX_FIELDS)


@dataclass(frozen=True)
class Raised:
    """A gathering to raise: subject indices a < b, the case group, since, and the
    moment it reached `after` (t and the two fixes)."""

    a: int
    b: int
    group: int
    since_ms: int
    t_ms: int
    fix_a: tuple
    fix_b: tuple


class GatheringRule:
    """Newest fix per linked subject (for the next window) and the pairs together."""

    def __init__(self, settings: GatheringSettings):
        self.settings = settings
        self.pairs = {name: np.zeros(0, dt) for name, dt in PAIR_FIELDS}
        self._last = _fix_columns(0)

    def together(self) -> list[tuple[int, int]]:
        """The pairs (a, b) together now, a < b."""
        key = self.pairs["key"]
        return list(zip((key >> 32).tolist(), (key & 0xFFFFFFFF).tolist()))

    def grow(self, n: int) -> None:
        extra = n - len(self._last["t"])
        if extra > 0:
            more = _fix_columns(extra)
            self._last = {k: np.concatenate([v, more[k]]) for k, v in self._last.items()}

    def apply(self, subject, t_ms, lon, lat, acc_m, src, links: Links) -> list[Raised]:
        """One window of fixes (any order; status rows are skipped): the gatherings it
        completes, by (t, a, b)."""
        self.grow(links.n_subjects)
        s = np.asarray(subject, np.int64)
        acc = np.asarray(acc_m, np.float64)
        lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        inside = s < links.n_subjects
        keep = inside & (np.asarray(src) < STATE0) & np.isfinite(lon) & np.isfinite(lat) \
            & np.isfinite(acc) & (acc <= self.settings.join.max_acc_m)
        keep[inside] &= links.linked[s[inside]]
        if not keep.any():
            return []
        fresh = {"t": np.asarray(t_ms, np.int64)[keep], "lon": lon[keep], "lat": lat[keep],
                 "acc": acc[keep], "src": np.asarray(src, np.int8)[keep], "s": s[keep]}
        window = self._with_carried(fresh)
        together = join_window(window["lon"], window["lat"], window["t"], window["acc"],
                               window["s"], window["fresh"], links, self.settings.join)
        self._remember_newest(fresh)
        now_ms = int(fresh["t"].max())
        self._fold(window, together)
        raised = self._due()
        self._drop_apart(now_ms)
        return raised

    # -- steps -----------------------------------------------------------------------------

    def _with_carried(self, fresh: dict) -> dict:
        """The window's fixes after each linked subject's newest earlier one still near
        enough in time to meet them (flagged not fresh)."""
        last = self._last
        since = int(fresh["t"].min()) - self.settings.join.max_dt_ms
        who = np.flatnonzero(last["t"] >= since)
        carried = {k: last[k][who] for k, _ in FIX_FIELDS}
        carried["s"] = who
        out = {k: np.concatenate([carried[k], fresh[k]]) for k in fresh}
        out["fresh"] = np.r_[np.zeros(len(who), np.bool_), np.ones(len(fresh["t"]), np.bool_)]
        return out

    def _remember_newest(self, fresh: dict) -> None:
        L = self._last
        remember_newest(fresh["s"], fresh["t"], fresh["lon"], fresh["lat"], fresh["acc"],
                        fresh["src"], L["t"], L["lon"], L["lat"], L["acc"], L["src"])

    def _fold(self, window: dict, together) -> None:
        """Per pair seen together in the window, its first and last moment together, into
        the pair table: a new row, a new start (not seen together for `gap_ms`), or a
        later last moment. All with numpy, per pair."""
        if not len(together):
            return
        si, sj = window["s"][together.i], window["s"][together.j]
        swap = si > sj
        first = np.where(swap, together.j, together.i)     # the fix of the smaller subject
        second = np.where(swap, together.i, together.j)
        key = (window["s"][first] << 32) | window["s"][second]
        t = np.maximum(window["t"][first], window["t"][second])
        order = np.lexsort((t, key))
        key, t, first, second = key[order], t[order], first[order], second[order]
        group = together.group[order]
        head = np.r_[True, key[1:] != key[:-1]]
        tail = np.r_[key[1:] != key[:-1], True]
        seen = {"key": key[tail], "t0": t[head], "t1": t[tail], "group": group[tail],
                "first": first[tail], "second": second[tail]}
        p = self.pairs
        at = np.searchsorted(p["key"], seen["key"])
        known = at < len(p["key"])
        known[known] = p["key"][at[known]] == seen["key"][known]
        rows = at[known]
        restart = seen["t0"][known] - p["last"][rows] > self.settings.gap_ms
        later = restart | (seen["t1"][known] >= p["last"][rows])
        update = rows[later]
        p["since"][rows[restart]] = seen["t0"][known][restart]
        p["raised"][rows[restart]] = False
        p["last"][update] = seen["t1"][known][later]
        p["group"][update] = seen["group"][known][later]
        for k, _ in FIX_FIELDS:
            p[f"{k}_a"][update] = window[k][seen["first"][known][later]]
            p[f"{k}_b"][update] = window[k][seen["second"][known][later]]
        new = ~known
        if new.any():
            rows = {"key": seen["key"][new], "since": seen["t0"][new], "last": seen["t1"][new],
                    "group": seen["group"][new], "raised": np.zeros(int(new.sum()), np.bool_)}
            for k, _ in FIX_FIELDS:
                rows[f"{k}_a"] = window[k][seen["first"][new]]
                rows[f"{k}_b"] = window[k][seen["second"][new]]
            merged = {name: np.concatenate([p[name], rows[name].astype(dt)])
                      for name, dt in PAIR_FIELDS}
            order = np.argsort(merged["key"], kind="stable")
            self.pairs = {name: column[order] for name, column in merged.items()}

    def _due(self) -> list[Raised]:
        p = self.pairs
        due = np.flatnonzero(~p["raised"] & (p["last"] - p["since"] >= self.settings.after_ms))
        if not len(due):
            return []
        p["raised"][due] = True
        raised = [Raised(int(p["key"][r] >> 32), int(p["key"][r] & 0xFFFFFFFF),
                         int(p["group"][r]), int(p["since"][r]), int(p["last"][r]),
                         _fix(p, r, "a"), _fix(p, r, "b")) for r in due.tolist()]
        return sorted(raised, key=lambda r: (r.t_ms, r.a, r.b))

    def _drop_apart(self, now_ms: int) -> None:
        """Drop pairs not seen together for `gap_ms`, and pairs whose newest fixes, close
        in time and newer than their last moment together, are too far apart."""
        p = self.pairs
        if not len(p["key"]):
            return
        a, b = p["key"] >> 32, p["key"] & 0xFFFFFFFF
        join, L = self.settings.join, self._last
        ta, tb = L["t"][a], L["t"][b]
        la1, la2 = np.radians(L["lat"][a]), np.radians(L["lat"][b])
        dx = np.radians(L["lon"][a] - L["lon"][b]) * np.cos(0.5 * (la1 + la2))
        distance = EARTH_RADIUS_M * np.hypot(dx, la1 - la2)
        limit = join.radius_m + join.acc_k * np.hypot(L["acc"][a], L["acc"][b])
        apart = (np.abs(ta - tb) <= join.max_dt_ms) & (np.maximum(ta, tb) > p["last"]) \
            & (distance > limit)
        stale = now_ms - p["last"] > self.settings.gap_ms
        drop = apart | stale
        if drop.any():
            self.pairs = {name: column[~drop] for name, column in p.items()}


def gathering_alarms(raised: list[Raised], subjects, route: Router, group_names,
                     raised_at_ms: int) -> list[Alarm]:
    """Two alarms per gathering, one for each person, each to that person's supervising
    office (and its copies); ids from the pair, its start and the person."""
    alarms = []
    for r in raised:
        a, b = subjects[r.a], subjects[r.b]
        if a is None or b is None:
            continue
        case = group_names[r.group]
        for me, other, fix in ((a, b, r.fix_a), (b, a, r.fix_b)):
            details = {"other": other.id, "case": case, "since": r.since_ms,
                       "together_s": (r.t_ms - r.since_ms) // 1000}
            alarm = new_alarm(GATHERING, subject=me, route=route(me.id, r.t_ms), t_ms=r.t_ms,
                              trigger_t_ms=r.since_ms, fix=AlarmFix.of(*fix), where=None,
                              raised_at_ms=raised_at_ms, details=details)
            alarms.append(replace(alarm, id=gathering_id(me, other, r.since_ms)))
    return alarms


def gathering_id(me: Subject, other: Subject, since_ms: int) -> str:
    """Stable: the same pair, start and person always give the same id."""
    pair = "|".join(sorted((me.id, other.id)))
    return hashlib.sha256(f"{pair}|{GATHERING}|{since_ms}|{me.id}".encode()).hexdigest()[:24]


def _fix(pairs: dict, row: int, who: str) -> tuple:
    """One pair's fix of person `who` ("a" or "b") as (t, lon, lat, acc, src)."""
    return tuple(pairs[f"{k}_{who}"][row].item() for k, _ in FIX_FIELDS)


def _fix_columns(n: int) -> dict:
    return {"t": np.full(n, NO_TIME, np.int64), "lon": np.full(n, np.nan),
            "lat": np.full(n, np.nan), "acc": np.full(n, np.nan),
            "src": np.full(n, -1, np.int8)}


class GatheringStage:
    """The gathering rule over whole stored batches, for the one worker that runs it.

    Workers split subjects by index % N, and a linked pair may span two partitions. Every
    worker reads every stored batch whole, so worker 0 alone joins all fixes of linked
    people (a small share of all fixes) and raises both alarms: no pair is seen by two
    workers, nothing needs deduplicating, and no worker waits for another's fixes.
    """

    def __init__(self, book, rules):
        self.book = book
        self.rule = GatheringRule(GatheringSettings.of(rules))

    def run(self, fixes) -> list[Alarm]:
        """Gatherings completed by one stored batch (positions of supervised people)."""
        links = self.book.links()
        if not len(fixes) or not len(links.groups):
            return []
        kept = fixes.take(self.book.supervised(fixes.subject, fixes.t_ms)
                          & (fixes.subject < self.book.size))
        if not len(kept):
            return []
        raised = self.rule.apply(kept.subject, kept.t_ms, kept.lon, kept.lat, kept.acc_m,
                                 kept.src, links)
        if not raised:
            return []
        return gathering_alarms(raised, self.book.subjects, self.book.schedule.routing_at,
                                links.names, int(time.time() * 1000))


def warm_up() -> None:
    """Compile or load the join kernel once, before traffic."""
    from engine.config import Rules

    links = Links.build(2, {0: [1], 1: [1]}, ["key", "c"])
    GatheringRule(GatheringSettings.of(Rules())).apply([0, 1], [0, 0], [117.0, 117.0],
                                                       [35.0, 35.0], [5.0, 5.0], [0, 0], links)
