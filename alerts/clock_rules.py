"""The clock-driven rules of SPEC §6: signal_lost, feed_outage, permit_overstay.

They fire on the passing of time, not on a fix, so a worker runs them about once a second
even when no fix arrives at all. They read the fix-driven state (`alerts.rules.RuleState`:
newest fix time, position, carrier and flags) and run as numpy over all subjects at once.

Silence (失联) is counted from the subject's newest fix, or from when this worker started
watching the subject (after a start or a registration), whichever is later: a start after
a long stop never raises a flood for people whose last fix predates it, and a subject who
never reported is lost `signal_lost_after_s` after the worker first saw them. After a
short stop (`resume`: the worker's last clock check was minutes ago) silence keeps
counting from the newest fix, so a restart postpones no one's alarm.

A carrier that stops pushing would make all its subjects silent together. The outage is
recognised early, when at least `feed_outage_share` of the carrier's subjects (and at least
`feed_outage_min_subjects`) have had no fix for `feed_outage_silence_s`: one feed_outage to
the root office, and the carrier's silent subjects are marked so that they raise no
signal_lost of their own. When the carrier's fixes flow again, the marks are cleared and
silence counts afresh from that moment. Subjects are attributed to the carrier of their
newest fix.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from alerts import _rules_kernel as rk
from alerts.rules import NO_TIME, RuleState
from geofence.verdict import IN


@dataclass(frozen=True)
class Outage:
    carrier: int        # carrier id (the worker's numbering)
    newest_t_ms: int    # the carrier's newest fix when the outage was recognised
    silent: int         # its subjects (in this partition) silent at that moment
    subjects: int       # its subjects in this partition


@dataclass(frozen=True)
class SilenceEvents:
    signal_lost: np.ndarray     # subject indices that just became lost (already marked)
    since_ms: np.ndarray        # for each, when its silence began (newest fix or watch start)
    outages: list[Outage]       # carriers whose feed just went down


class SilenceWatch:
    """signal_lost and feed_outage over one partition's subjects."""

    def __init__(self, rules, partitions: int = 1):
        """`partitions`: how many workers share the subjects (each sees about 1/N of a
        carrier's subjects, so the minimum for an outage is divided among them)."""
        self.lost_after_ms = int(rules.signal_lost_after_s) * 1000
        self.outage_silence_ms = int(rules.feed_outage_silence_s) * 1000
        self.outage_share = float(rules.feed_outage_share)
        self.outage_min = max(1, -(-int(rules.feed_outage_min_subjects) // partitions))
        self.watch_ms = np.zeros(0, np.int64)
        self.down: dict[int, int] = {}   # carrier id -> its newest fix t when it went down
        # Set by a worker that restarts soon after its last check (`resume`): silence then
        # keeps counting from each subject's newest fix instead of from the restart.
        self.resume_ms: int | None = None

    def resume(self, last_check_ms: int) -> None:
        """This partition was watched until `last_check_ms` (shortly before a restart)."""
        self.resume_ms = int(last_check_ms)

    def check(self, state: RuleState, mine: np.ndarray, now_ms: int,
              carrier_newest_ms: dict[int, int]) -> SilenceEvents:
        """Mark and return what the clock says now; `mine`: per subject, watched here."""
        n = state.n_subjects
        if len(self.watch_ms) < n:
            fill = np.full(n - len(self.watch_ms), now_ms, np.int64)
            if self.resume_ms is not None:   # back after a short stop: nothing postponed
                newest = state.newest_t_ms[len(self.watch_ms):n]
                fill = np.where(newest == NO_TIME, self.resume_ms, NO_TIME)
                self.resume_ms = None
            self.watch_ms = np.concatenate([self.watch_ms, fill])
        mine = np.asarray(mine[:n], np.bool_)
        carrier = state.carrier
        self._feeds_back(state, carrier, mine, now_ms, carrier_newest_ms)
        self._forget_stale_outages(state, carrier, mine, now_ms)
        since = np.maximum(state.newest_t_ms, self.watch_ms[:n])
        quiet_for = now_ms - since
        outages = self._outages(carrier, mine, quiet_for, carrier_newest_ms)
        for c in self.down:
            silenced = np.flatnonzero(mine & (carrier == c) & (quiet_for > self.outage_silence_ms))
            state.set_flags(silenced, rk.OUTAGE_SILENT)
        held = (state.flags & (rk.SIGNAL_LOST_SET | rk.OUTAGE_SILENT)) != 0
        lost = np.flatnonzero(mine & ~held & (quiet_for > self.lost_after_ms))
        state.mark_signal_lost(lost)
        return SilenceEvents(lost, since[lost], outages)

    def _feeds_back(self, state, carrier, mine, now_ms, carrier_newest_ms) -> None:
        for c, t_down in list(self.down.items()):
            if carrier_newest_ms.get(c, NO_TIME) > t_down:
                del self.down[c]
                waiting = np.flatnonzero(mine & (carrier == c)
                                         & ((state.flags & rk.OUTAGE_SILENT) != 0))
                state.clear_flags(waiting, rk.OUTAGE_SILENT)
                self.watch_ms[waiting] = now_ms

    def _forget_stale_outages(self, state, carrier, mine, now_ms) -> None:
        """Marks whose outage this watch does not know of (it was restarted, and the list
        of carriers down is not kept) are cleared, silence counting afresh from now; an
        outage still going on is recognised again after `feed_outage_silence_s`, well
        before anyone's signal_lost."""
        marked = mine & ((state.flags & rk.OUTAGE_SILENT) != 0)
        if self.down:
            marked &= ~np.isin(carrier, list(self.down))
        stale = np.flatnonzero(marked)
        if len(stale):
            state.clear_flags(stale, rk.OUTAGE_SILENT)
            self.watch_ms[stale] = now_ms

    def _outages(self, carrier, mine, quiet_for, carrier_newest_ms) -> list[Outage]:
        known = mine & (carrier >= 0)
        if not known.any():
            return []
        size = int(carrier[known].max()) + 1
        subjects = np.bincount(carrier[known], minlength=size)
        quiet = np.bincount(carrier[known & (quiet_for > self.outage_silence_ms)], minlength=size)
        outages = []
        for c in np.flatnonzero((subjects >= self.outage_min)
                                & (quiet >= self.outage_share * subjects)):
            c = int(c)
            if c not in self.down:
                self.down[c] = carrier_newest_ms.get(c, NO_TIME)
                outages.append(Outage(c, self.down[c], int(quiet[c]), int(subjects[c])))
        return outages


def permit_overstays(permits: Iterable, subject_index: Callable[[str], int | None],
                     state: RuleState, verdict_now: Callable[[int, dict, object], int]) -> list:
    """Permits (already ended `permit_overstay_after_s` ago) whose subject is not back.

    `subject_index(id)` is the subject's index if this worker watches it, else None;
    `verdict_now(index, last_fix, permit)` the verdict of the newest fix against the area
    the subject may be in *now* (home, plus any permit still active: an extension that
    follows the first permit is not an overstay). A subject with no fix at all is not
    known to be home: overstay.
    """
    over = []
    for permit in permits:
        s = subject_index(permit.subject)
        if s is None or s >= state.n_subjects:
            continue
        last = {k: v[0] for k, v in state.last_fix([s]).items()}
        if last["t_ms"] == NO_TIME or verdict_now(s, last, permit) != IN:
            over.append((permit, s))
    return over
