"""Handset status reports (SPEC §14): a carrier says a phone is off, suspended or unreachable.

A status report is a stored row like a fix, with `src` one of `ingest.protocol.STATES`
(src codes `STATE0` and up) and no position (lon, lat, acc NaN). The workers split such
rows out of each batch before any verdict (`split_reports`): they never get a verdict,
never count as a position, and never put a NaN into an alarm.

Per subject the rules state keeps the handset state (`HANDSET_FIELDS`): the state code
(`OFF`, `SUSPENDED`, `UNREACHABLE`, or `NO_HANDSET`; the newest report's), since when it
holds (the first report of the current run: `off` and `suspended` are one run, see
`run_class`) and the newest report's time. A position fix
newer than the report clears the state; a report not newer than the subject's newest
position fix or newest report changes nothing (it is late, like a late fix).

What the clock rules make of it (`alerts.clock_rules`): `off` and `suspended` stop the
silence clock (no signal_lost) and raise `phone_off` after `phone_off_after_s`;
`unreachable` is kept and shown but changes no clock. Any report is the carrier speaking,
so it counts as heard for feed_outage.
"""

from dataclasses import dataclass

import numpy as np

from alerts import _rules_kernel as rk
from ingest.protocol import STATE0, STATES

OFF, SUSPENDED, UNREACHABLE = (STATES.index(name) for name in ("off", "suspended",
                                                                 "unreachable"))
NO_HANDSET = -1
NO_TIME = rk.NO_TIME

# (name, dtype, value before any report), appended to the rules state and its snapshot.
HANDSET_FIELDS = (
    ("handset", np.int8, NO_HANDSET),          # index into protocol.STATES, or NO_HANDSET
    ("handset_since_ms", np.int64, NO_TIME),   # first report of the current state
    ("report_t_ms", np.int64, NO_TIME),        # newest status report taken
)


def run_class(state: np.ndarray) -> np.ndarray:
    """Reports of one class make one run, whose start is the state's `since`: `off` and
    `suspended` are one class (the phone cannot be reached by anyone: a carrier alternating
    the two must not restart the phone_off clock each time), `unreachable` another."""
    state = np.asarray(state)
    return np.where(state < 0, -1, np.where(state == UNREACHABLE, 1, 0))


def split_reports(src: np.ndarray) -> np.ndarray:
    """Per stored row: a handset status report (True) rather than a position."""
    return np.asarray(src) >= STATE0


@dataclass(frozen=True)
class FoldedReports:
    """What one batch of reports does to the state: `late` (batch indices, ascending), and
    for each subject whose state it changes, the new state."""

    late: np.ndarray
    subject: np.ndarray      # int32, ascending
    state: np.ndarray        # int8, index into STATES
    since_ms: np.ndarray     # int64
    report_t_ms: np.ndarray   # int64: the subject's newest report


def fold_reports(order: np.ndarray, subject: np.ndarray, t_ms: np.ndarray, state: np.ndarray,
                 newest_t_ms: np.ndarray, report_t_ms: np.ndarray, handset: np.ndarray,
                 since_ms: np.ndarray) -> FoldedReports:
    """Fold reports (batch arrays `subject`, `t_ms`, `state`, and `order` sorting them by
    (subject, t), ties in batch order) into the per-subject arrays `newest_t_ms` (position
    fixes), `report_t_ms`, `handset`, `since_ms`; nothing is written, numpy throughout.

    A report is late when not newer than both its subject's newest position fix and newest
    report, or when an earlier report of the batch has the same subject and time."""
    s, t, c = subject[order], t_ms[order], state[order]
    same = np.r_[False, s[1:] == s[:-1]]
    taken = (t > np.maximum(newest_t_ms[s], report_t_ms[s])) & ~(same & (t == np.r_[t[:1],
                                                                                     t[:-1]]))
    s, t, c = s[taken], t[taken], c[taken]
    if not len(s):
        empty = np.zeros(0, np.int64)
        return FoldedReports(np.sort(order[~taken]), empty.astype(np.int32),
                             empty.astype(np.int8), empty, empty)
    first = np.r_[True, s[1:] != s[:-1]]
    before = np.where(first, handset[s], np.r_[c[:1], c[:-1]])   # the state each one follows
    starts = run_class(c) != run_class(before)                   # begins a new run
    run = np.maximum.accumulate(np.where(starts | first, np.arange(len(s)), -1))
    last = np.r_[s[1:] != s[:-1], True]
    who, begun = s[last], run[last]
    since = np.where(starts[begun], t[begun], since_ms[who])
    return FoldedReports(np.sort(order[~taken]), who.astype(np.int32), c[last].astype(np.int8),
                         since.astype(np.int64), t[last].astype(np.int64))
