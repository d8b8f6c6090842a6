"""curfew_breach (宵禁) and night_absence (昼伏夜出), issue 13: orders in time windows.

curfew_breach: during a subject's curfew window, not in the curfew zone.

Until the evidence model lands, "the evidence says they are not" is `[rules] curfew_fixes`
(2) consecutive fixes of one window whose verdict against the curfew zone is not `in`;
an `unsure` fix neither counts nor resets (as for zone_exit), an `in` fix resets. A
silent handset raises nothing here: silence is signal_lost's (sooner under a key period),
and one silence should not be two alarms.

A pass after the verdicts, for the fixes of subjects with curfews only: one compiled call
finds each fix's window (local time, UTC+8; a window may cross midnight and belongs to the
day it starts on) and zone, the verdict core judges those fixes against their zone's area
(home: the subject's home at the fix, a delegation's if one is active), and a second
compiled call walks them by (subject, t). Its state is per subject in arrays of its own
(newest fix seen, the window counted, consecutive outs, the window last raised), not in
the 64-byte rules state. It is not in the worker's snapshot: after a restart counting
starts afresh, and an alarm raised again for the same window has the same id (subject,
type, window start), which the alarm store keeps once.

night_absence: for subjects with `night_watch`, the same pass judges night fixes
(`[rules] night_from_hour` .. `night_to_hour`, local) against home and keeps a 7-bit
record per subject of the last seven nights: a night counts as away with `curfew_fixes`
consecutive non-`in` fixes. When a night becomes away and `night_absence_nights` of the
last seven are, night_absence is raised (at most once a night, so once a day; its id from
the subject and the night).
"""

import time

import numpy as np

from alerts.alarms import Alarm, AlarmFix, new_alarm
from alerts.registry import Curfew, Subject
from alerts.rules import NO_TIME, sort_batch
from alerts.schedule import DAY_MS, LOCAL_UTC_OFFSET_MS
from geofence._jit import kernel
from geofence.verdict import IN, UNSURE

HOME = -2          # a curfew row's area: the subject's home at the fix
NO_WINDOW = np.iinfo(np.int64).min


@kernel
def _windows(subject, t_ms, first, count, from_min, to_min, day_mask, row_area, offset_ms,
             day_ms, out_start, out_row):
    """Per fix: the start of the curfew window it falls in (NO_WINDOW: none) and its row."""
    for i in range(subject.shape[0]):
        out_start[i] = NO_WINDOW
        out_row[i] = -1
        s = subject[i]
        if s >= count.shape[0] or count[s] == 0:
            continue
        local = t_ms[i] + offset_ms
        day = local // day_ms
        minute = (local - day * day_ms) // 60000
        for r in range(first[s], first[s] + count[s]):
            lo, hi = from_min[r], to_min[r]
            found = True
            start_day = day
            if lo < hi:
                found = lo <= minute < hi
            elif minute < hi:          # after midnight: the window began the day before
                start_day = day - 1
            elif minute < lo:
                found = False
            if found:
                weekday = (start_day + 3) % 7 + 1          # 1970-01-01: Thursday
                if day_mask[r] & (1 << weekday):
                    out_start[i] = start_day * day_ms + lo * 60000 - offset_ms
                    out_row[i] = r
                    break


@kernel
def _walk(order, subject, t_ms, window, verdict, need, newest, counted, outs, raised,
          out_fix):
    """Fixes by (subject, t): late ones change nothing; a breach is `need` consecutive
    non-`in` verdicts (unsure neither counts nor resets) in one window, raised once."""
    n_events = 0
    for k in range(order.shape[0]):
        i = order[k]
        s = subject[i]
        t = t_ms[i]
        if t <= newest[s]:
            continue
        newest[s] = t
        w = window[i]
        if w == NO_WINDOW:
            continue
        if counted[s] != w:
            counted[s] = w
            outs[s] = 0
        v = verdict[i]
        if v == IN:
            outs[s] = 0
        elif v != UNSURE:
            outs[s] += 1
            if outs[s] >= need and raised[s] != w:
                raised[s] = w
                out_fix[n_events] = i
                n_events += 1
    return n_events


@kernel
def _nights(order, subject, t_ms, window, verdict, need, nights_needed, offset_ms, day_ms,
            newest, last_night, outs, away, raised, out_fix):
    """Fixes by (subject, t): each subject's record of its last 7 nights (bit 0: the
    newest night), a night away after `need` consecutive non-`in` fixes; an event when a
    night becomes away and `nights_needed` of the seven are."""
    n_events = 0
    for k in range(order.shape[0]):
        i = order[k]
        s = subject[i]
        t = t_ms[i]
        if t <= newest[s]:
            continue
        newest[s] = t
        if window[i] == NO_WINDOW:
            continue
        night = (window[i] + offset_ms) // day_ms
        if night != last_night[s]:
            shift = night - last_night[s]
            away[s] = ((np.int64(away[s]) << shift) & 0x7F) if shift < 7 else 0
            last_night[s] = night
            outs[s] = 0
        v = verdict[i]
        if v == IN:
            outs[s] = 0
        elif v != UNSURE:
            outs[s] += 1
            if outs[s] >= need and (away[s] & 1) == 0:
                away[s] |= 1
                bits = np.int64(away[s])
                nights = 0
                while bits:
                    nights += bits & 1
                    bits >>= 1
                if nights >= nights_needed and raised[s] != night:
                    raised[s] = night
                    out_fix[n_events] = i
                    n_events += 1
    return n_events


class Table:
    """Order rows by subject index: subject s owns rows first[s] : first[s] + count[s]."""

    def __init__(self, n: int, rows: list[tuple[Subject, Curfew]], area_id):
        self.rows = rows
        self.first = np.zeros(n, np.int64)
        self.count = np.zeros(n, np.int64)
        for k, (s, _) in enumerate(rows):
            if self.count[s.index] == 0:
                self.first[s.index] = k
            self.count[s.index] += 1
        self.from_min = np.array([c.from_min for _, c in rows], np.int64)
        self.to_min = np.array([c.to_min for _, c in rows], np.int64)
        self.day_mask = np.array([sum(1 << d for d in c.days) for _, c in rows], np.int64)
        self.area = np.array([HOME if c.zone is None else area_id((c.zone,))
                              for _, c in rows], np.int32)

    def has(self, subject: np.ndarray) -> np.ndarray:
        known = subject < len(self.count)
        return known & (self.count[np.where(known, subject, 0)] > 0) if len(self.count) \
            else np.zeros(len(subject), np.bool_)


class CurfewWatch:
    """curfew_breach and night_absence over one partition's fixes (subjects with orders)."""

    def __init__(self, engine, book, rules_settings):
        self.engine, self.book = engine, book
        self.need = int(rules_settings.curfew_fixes)
        self.nights_needed = int(rules_settings.night_absence_nights)
        self.night = Curfew(int(rules_settings.night_from_hour) * 60,
                            int(rules_settings.night_to_hour) * 60)
        self._version = None
        self.curfews = self.nights = Table(0, [], engine.area_id)
        self.state = {name: np.zeros(0, dtype) for name, dtype, _ in STATE}

    def _tables(self) -> None:
        """Rebuild the order rows when the registry changed (subjects with orders only)."""
        book, n = self.book, self.book.size
        have = len(self.state["newest"])
        if have < n:
            self.state = {name: np.concatenate([self.state[name], np.full(n - have, fill,
                                                                          dtype)])
                          for name, dtype, fill in STATE}
        if self._version == book.version:
            return
        self._version = book.version
        ordered = sorted(book.curfew_subjects.values(), key=lambda s: s.index)
        self.curfews = Table(n, [(s, c) for s in ordered for c in s.curfews],
                             self.engine.area_id)
        self.nights = Table(n, [(s, self.night) for s in ordered if s.night_watch],
                            self.engine.area_id)

    def check(self, fixes, places) -> list[Alarm]:
        """The alarms `fixes` (this partition's position fixes of one batch) raise;
        `places` maps a jurisdiction index to its Place (the alarm's `where`)."""
        self._tables()
        if not len(fixes) or not (self.curfews.rows or self.nights.rows):
            return []
        alarms = []
        st = self.state
        for table, kind in ((self.curfews, "curfew_breach"), (self.nights, "night_absence")):
            pick = np.flatnonzero(table.has(fixes.subject)) if table.rows else []
            if not len(pick):
                continue
            subject = np.ascontiguousarray(fixes.subject[pick], np.int64)
            t_ms = np.ascontiguousarray(fixes.t_ms[pick], np.int64)
            window, row, verdict, where = self._judge(table, fixes, pick, subject, t_ms)
            order = sort_batch(subject, t_ms)
            events = np.empty(len(pick), np.int64)
            if kind == "curfew_breach":
                n = _walk(order, subject, t_ms, window, verdict, self.need, st["newest"],
                          st["counted"], st["outs"], st["raised"], events)
            else:
                n = _nights(order, subject, t_ms, window, verdict, self.need,
                            self.nights_needed, LOCAL_UTC_OFFSET_MS, DAY_MS,
                            st["night_newest"], st["last_night"], st["night_outs"],
                            st["away"], st["night_raised"], events)
            alarms += [self._alarm(kind, fixes, int(pick[i]), int(window[i]),
                                   table.rows[int(row[i])], places[int(where[i])],
                                   int(st["away"][subject[i]]))
                       for i in events[:n].tolist()]
        return alarms

    def _judge(self, table, fixes, pick, subject, t_ms):
        """Each picked fix's window start and row (none: NO_WINDOW, -1), and its verdict
        and jurisdiction against the window's zone (outside any window: unsure, -1)."""
        window = np.empty(len(pick), np.int64)
        row = np.empty(len(pick), np.int64)
        _windows(subject, t_ms, table.first, table.count, table.from_min, table.to_min,
                 table.day_mask, table.area, LOCAL_UTC_OFFSET_MS, DAY_MS, window, row)
        verdict = np.full(len(pick), UNSURE, np.int8)
        where = np.full(len(pick), -1, np.int64)
        sel = np.flatnonzero(row >= 0)
        if len(sel):
            area = table.area[row[sel]]
            home = area == HOME
            if home.any():
                area[home] = self.book.schedule.home_areas_at(
                    subject[sel][home].astype(np.int32), t_ms[sel][home])
            rows = pick[sel]
            judged = self.engine.verdicts(fixes.lon[rows], fixes.lat[rows],
                                          fixes.acc_m[rows].astype(np.float64), area)
            verdict[sel], where[sel] = judged.verdict, judged.where
        return window, row, verdict, where

    def _alarm(self, kind, fixes, i: int, window_ms: int, row, where, away: int) -> Alarm:
        subject, order = row
        t = int(fixes.t_ms[i])
        fix = AlarmFix.of(t, fixes.lon[i], fixes.lat[i], fixes.acc_m[i], fixes.src[i])
        if kind == "curfew_breach":
            details = {"curfew": order.to_document(), "window_start": window_ms,
                       "outside_fixes": self.need}
        else:
            details = {"night_start": window_ms, "nights_away": bin(away).count("1"),
                       "of_nights": 7}
        return new_alarm(kind, subject=subject,
                         route=self.book.schedule.routing_at(subject.id, t), t_ms=t,
                         trigger_t_ms=window_ms, fix=fix, where=where,
                         raised_at_ms=int(time.time() * 1000), details=details)


# Per-subject state (name, dtype, value before any fix), outside the rules' 64 bytes.
STATE = (("newest", np.int64, NO_TIME), ("counted", np.int64, NO_WINDOW),
         ("outs", np.int16, 0), ("raised", np.int64, NO_WINDOW),
         ("night_newest", np.int64, NO_TIME), ("last_night", np.int64, -1),
         ("night_outs", np.int16, 0), ("away", np.int16, 0), ("night_raised", np.int64, -1))


def warm_up() -> None:
    """Compile or load the curfew kernels once, on a tiny batch, before traffic."""
    one = np.zeros(1, np.int64)
    subject, t_ms = np.zeros(2, np.int64), np.array([0, 60_000], np.int64)
    window, row = np.empty(2, np.int64), np.empty(2, np.int64)
    _windows(subject, t_ms, one, one + 1, one, one + 60, one + 254, np.zeros(1, np.int32),
             LOCAL_UTC_OFFSET_MS, DAY_MS, window, row)
    order, verdict = np.arange(2, dtype=np.int64), np.zeros(2, np.int8)
    state = {name: np.full(1, fill, dtype) for name, dtype, fill in STATE}
    events = np.empty(2, np.int64)
    _walk(order, subject, t_ms, window, verdict, 2, state["newest"], state["counted"],
          state["outs"], state["raised"], events)
    _nights(order, subject, t_ms, window, verdict, 2, 3, LOCAL_UTC_OFFSET_MS, DAY_MS,
            state["night_newest"], state["last_night"], state["night_outs"], state["away"],
            state["night_raised"], events)
