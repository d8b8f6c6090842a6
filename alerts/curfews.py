"""curfew_breach (宵禁, issue 13): during a subject's curfew window, not in the curfew zone.

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


class CurfewWatch:
    """curfew_breach over one partition's fixes (the rows of subjects with curfews)."""

    def __init__(self, engine, book, rules_settings):
        self.engine, self.book = engine, book
        self.need = int(rules_settings.curfew_fixes)
        self._version = None
        self._rows: list[tuple[Subject, Curfew]] = []
        self.newest = np.zeros(0, np.int64)
        self.counted = np.zeros(0, np.int64)
        self.outs = np.zeros(0, np.int16)
        self.raised = np.zeros(0, np.int64)

    def _table(self) -> None:
        """Rebuild the curfew rows when the registry changed (subjects with curfews only)."""
        book = self.book
        n = book.size
        if len(self.newest) < n:
            grow = n - len(self.newest)
            self.newest = np.concatenate([self.newest, np.full(grow, NO_TIME, np.int64)])
            self.counted = np.concatenate([self.counted, np.full(grow, NO_WINDOW, np.int64)])
            self.outs = np.concatenate([self.outs, np.zeros(grow, np.int16)])
            self.raised = np.concatenate([self.raised, np.full(grow, NO_WINDOW, np.int64)])
        if self._version == book.version:
            return
        self._version = book.version
        self.first = np.zeros(n, np.int64)
        self.count = np.zeros(n, np.int64)
        rows = []
        for s in sorted(book.curfew_subjects.values(), key=lambda s: s.index):
            self.first[s.index], self.count[s.index] = len(rows), len(s.curfews)
            rows += [(s, c) for c in s.curfews]
        self._rows = rows
        self.from_min = np.array([c.from_min for _, c in rows], np.int64)
        self.to_min = np.array([c.to_min for _, c in rows], np.int64)
        self.day_mask = np.array([sum(1 << d for d in c.days) for _, c in rows], np.int64)
        self.row_area = np.array([HOME if c.zone is None else self.engine.area_id((c.zone,))
                                  for _, c in rows], np.int32)

    def check(self, fixes, places) -> list[Alarm]:
        """The curfew breaches `fixes` (this partition's position fixes of one batch) show;
        `places` maps a jurisdiction index to its Place (the alarm's `where`)."""
        self._table()
        if not self._rows or not len(fixes):
            return []
        has = self.count[np.minimum(fixes.subject, len(self.count) - 1)] > 0
        has &= fixes.subject < len(self.count)
        if not has.any():
            return []
        pick = np.flatnonzero(has)
        subject = np.ascontiguousarray(fixes.subject[pick], np.int64)
        t_ms = np.ascontiguousarray(fixes.t_ms[pick], np.int64)
        window = np.empty(len(pick), np.int64)
        row = np.empty(len(pick), np.int64)
        _windows(subject, t_ms, self.first, self.count, self.from_min, self.to_min,
                 self.day_mask, self.row_area, LOCAL_UTC_OFFSET_MS, DAY_MS, window, row)
        inside = row >= 0
        verdict = np.full(len(pick), UNSURE, np.int8)
        where = np.full(len(pick), -1, np.int64)
        if inside.any():
            sel = np.flatnonzero(inside)
            area = self.row_area[row[sel]]
            home = area == HOME
            if home.any():
                area[home] = self.book.schedule.home_areas_at(
                    subject[sel][home].astype(np.int32), t_ms[sel][home])
            judged = self.engine.verdicts(fixes.lon[pick][sel], fixes.lat[pick][sel],
                                          fixes.acc_m[pick][sel].astype(np.float64), area)
            verdict[sel], where[sel] = judged.verdict, judged.where
        order = sort_batch(subject, t_ms)
        events = np.empty(len(pick), np.int64)
        n = _walk(order, subject, t_ms, window, verdict, self.need, self.newest,
                  self.counted, self.outs, self.raised, events)
        return [self._alarm(fixes, int(pick[i]), int(window[i]), self._rows[int(row[i])],
                            places[int(where[i])]) for i in events[:n].tolist()]

    def _alarm(self, fixes, i: int, window_ms: int, row, where) -> Alarm:
        subject, curfew = row
        t = int(fixes.t_ms[i])
        fix = AlarmFix.of(t, fixes.lon[i], fixes.lat[i], fixes.acc_m[i], fixes.src[i])
        return new_alarm("curfew_breach", subject=subject,
                         route=self.book.schedule.routing_at(subject.id, t), t_ms=t,
                         trigger_t_ms=window_ms, fix=fix, where=where,
                         raised_at_ms=int(time.time() * 1000), details={"curfew": curfew.to_document(),
                                                  "window_start": window_ms,
                                                  "outside_fixes": self.need})
