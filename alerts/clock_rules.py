"""The clock-driven rules of SPEC §6 and §14: signal_lost, phone_off, feed_outage,
permit_overstay.

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
signal_lost of their own. The outage lasts until fewer than `feed_outage_share` of the
carrier's subjects are silent (most of them report again); then the marks are cleared
and the silence of those still missing counts afresh from that moment. Subjects are
attributed to the carrier of their newest fix. One outage is one alarm: its id derives
from the carrier's newest fix when it was recognised, the same in every partition while
the carrier is silent.

The end is judged by the carrier's subjects, not by its newest fix: a carrier whose
fixes keep coming but more than `feed_outage_silence_s` late (with `clock = "feed"`, a
carrier that lags behind the others in a replay; with the wall clock, one that delivers
late) is down for as long as it lags. Ending the outage on any newer fix made such a
carrier flap: its next batch ended the outage and cleared its subjects' marks (a fix
clears them), and the same clock check recognised it again, with a new id, once a
second (a replay's feed_outage folded 41 repeats that way).

Both per-subject thresholds, `signal_lost_after_s` and `permit_overstay_after_s`, are
those of the subject's supervision level (`engine.config.Rules.for_level`, SPEC §11): a
strict (严管) subject is lost after 30 minutes by default, a normal one after an hour.

permit_overstay: a permit ended `permit_overstay_after_s` ago and the subject's newest fix
is not `in` the area they may be in now (home, plus any permit still active: an extension
that follows the first permit is not an overstay). A fix taken after the permit ended was
already judged against that area by the fix-driven rules, and its verdict is reused; an
older fix (the person has been silent since) is judged again, all such fixes in one call.
A subject with no fix at all is not known to be home: overstay.

Handset status (SPEC §14, `alerts.handset`): a subject whose carrier's newest report says
the phone is `off` (关机) or `suspended` (停机), with no position fix since, is not
silent but accounted for: it raises no signal_lost while that lasts, and `phone_off`
(high) once the report's state has held for `phone_off_after_s` of the subject's level
(counted, like silence, from the report or from when the worker started watching the
subject, whichever is later). Its id derives from when that state began (the first
report of the run), its `t` is when the threshold ran out, its `fix` the newest position fix (or none), and its details say
`handset`, `since` and `off_for_s`. A phone_off marks the subject like a signal_lost (one
alarm for the whole episode), so its next position fix raises signal_restored with
`details.after` = "phone_off". `unreachable` (无法接通) is kept as the subject's handset
state but changes no clock: signal_lost counts on from the newest position fix.

For feed_outage every row counts as the carrier speaking, a status report as much as a
fix: a subject is silent for its carrier from its newest row of either kind, and belongs
to the carrier of that row. A phone reported off or suspended is not expected to report
at all: it counts neither as silent nor among its carrier's subjects, so a carrier that
tells us many phones are off is not taken for one that went down.

`ClockRules` turns all four into alarms; `RulesClock` says what time it is for them.
"""

import logging
import time
from dataclasses import dataclass

import numpy as np

import geofence
from alerts import _rules_kernel as rk
from alerts.alarms import Alarm, AlarmFix, Places, new_alarm
from alerts.rules import NO_TIME, RuleState, by_class
from ingest.protocol import STATES
from alerts.subject_book import SubjectBook
from geofence.verdict import IN

log = logging.getLogger("geofence.worker")

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
    after_ms: np.ndarray        # for each, the silence its level allows (signal_lost_after_s)
    outages: list[Outage]       # carriers whose feed just went down
    restored: list[int]         # carriers whose outage just ended


class SilenceWatch:
    """signal_lost and feed_outage over one partition's subjects."""

    def __init__(self, rules, partitions: int = 1):
        """`partitions`: how many workers share the subjects (each sees about 1/N of a
        carrier's subjects, so the minimum for an outage is divided among them)."""
        self.lost_after_ms = by_class(rules, "signal_lost_after_s") * 1000   # by rule class
        self.key_period_lost_ms = int(rules.key_period_signal_lost_after_s) * 1000
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
              carrier_newest_ms: dict[int, int],
              rule_class: np.ndarray | None = None,
              in_key_period: np.ndarray | None = None) -> SilenceEvents:
        """Mark and return what the clock says now; `mine`: per subject, watched here;
        `rule_class`: per subject, its level and key (None, or a subject beyond it:
        normal); `in_key_period`: per subject, a key period covers it (signal_lost after
        `key_period_signal_lost_after_s` when that is shorter than its level's)."""
        n = state.n_subjects
        if len(self.watch_ms) < n:
            fill = np.full(n - len(self.watch_ms), now_ms, np.int64)
            if self.resume_ms is not None:   # back after a short stop: nothing postponed
                newest = state.newest_t_ms[len(self.watch_ms):n]
                fill = np.where(newest == NO_TIME, self.resume_ms, NO_TIME)
                self.resume_ms = None
            self.watch_ms = np.concatenate([self.watch_ms, fill])
        mine = np.asarray(mine[:n], np.bool_)
        off = state.reported_off()
        carrier = np.where(off, -1, state.carrier)   # expected to be silent: no one's feed
        restored = self._feeds_back(state, carrier, mine, now_ms)
        self._forget_stale_outages(state, carrier, mine, now_ms)
        since = np.maximum(state.newest_t_ms, self.watch_ms[:n])
        quiet_for = now_ms - since
        unheard_for = self._unheard_for(state, now_ms)
        outages = self._outages(carrier, mine, unheard_for, carrier_newest_ms)
        for c in self.down:
            silenced = np.flatnonzero(mine & (carrier == c)
                                      & (unheard_for > self.outage_silence_ms))
            state.set_flags(silenced, rk.OUTAGE_SILENT)
        held = off | ((state.flags & (rk.SIGNAL_LOST_SET | rk.OUTAGE_SILENT)) != 0)
        # silent longer than the shortest threshold, then each by its own level's
        shortest = min(int(self.lost_after_ms.min()), self.key_period_lost_ms)
        maybe = np.flatnonzero(mine & ~held & (quiet_for > shortest))
        after_ms = self.lost_after_ms[_classes_of(rule_class, maybe)]
        if in_key_period is not None and len(maybe):
            keyed = np.zeros(len(maybe), np.bool_)
            inside = maybe < len(in_key_period)
            keyed[inside] = in_key_period[maybe[inside]]
            after_ms = np.where(keyed, np.minimum(after_ms, self.key_period_lost_ms), after_ms)
        lost_here = quiet_for[maybe] > after_ms
        lost = maybe[lost_here]
        state.mark_signal_lost(lost)
        return SilenceEvents(lost, since[lost], after_ms[lost_here], outages, restored)

    def _unheard_for(self, state, now_ms) -> np.ndarray:
        """Per subject, how long its carrier has said nothing of it (no fix and no status
        report), or since it was first watched (feed_outage)."""
        return now_ms - np.maximum(state.heard_t_ms, self.watch_ms[:state.n_subjects])

    def _silent_counts(self, carrier, mine, quiet_for) -> tuple[np.ndarray, np.ndarray]:
        """Per carrier id: its subjects here, and how many of them are silent."""
        known = mine & (carrier >= 0)
        size = int(carrier[known].max()) + 1 if known.any() else 0
        size = max(size, max(self.down, default=-1) + 1)
        subjects = np.bincount(carrier[known], minlength=size)
        quiet = np.bincount(carrier[known & (quiet_for > self.outage_silence_ms)],
                            minlength=size)
        return subjects, quiet

    def _feeds_back(self, state, carrier, mine, now_ms) -> list[int]:
        """End the outages of carriers most of whose subjects report again."""
        if not self.down:
            return []
        subjects, quiet = self._silent_counts(carrier, mine, self._unheard_for(state, now_ms))
        restored = []
        for c in list(self.down):
            if quiet[c] >= self.outage_share * subjects[c] and subjects[c] > 0:
                continue   # still down, or lagging: its fixes come, but late
            del self.down[c]
            restored.append(c)
            waiting = np.flatnonzero(mine & (carrier == c)
                                     & ((state.flags & rk.OUTAGE_SILENT) != 0))
            state.clear_flags(waiting, rk.OUTAGE_SILENT)
            self.watch_ms[waiting] = now_ms
        return restored

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
        subjects, quiet = self._silent_counts(carrier, mine, quiet_for)
        outages = []
        for c in np.flatnonzero((subjects >= self.outage_min)
                                & (quiet >= self.outage_share * subjects)):
            c = int(c)
            if c not in self.down:
                self.down[c] = carrier_newest_ms.get(c, NO_TIME)
                outages.append(Outage(c, self.down[c], int(quiet[c]), int(subjects[c])))
        return outages


class RulesClock:
    """The rules' notion of now: wall time, or (`clock = "feed"`) the newest fix time seen
    plus the wall time since it was seen, so a replay runs the clock rules in its own time."""

    def __init__(self, mode: str):
        self.mode = mode
        self.feed_t_ms = NO_TIME
        self._seen_at_ms = 0

    def observe(self, t_ms: int) -> None:
        if t_ms > self.feed_t_ms:
            self.feed_t_ms, self._seen_at_ms = t_ms, wall_ms()

    def now_ms(self) -> int | None:
        """Now, or None while a feed clock has seen no fix yet (it has no time to tell)."""
        wall = wall_ms()
        if self.mode == "wall":
            return wall
        if self.feed_t_ms == NO_TIME:
            return None
        return self.feed_t_ms + (wall - self._seen_at_ms)


class Carriers:
    """Carrier names as small ids (subjects remember the carrier of their newest fix) and
    each carrier's newest fix time (feed_outage); persisted with the worker's checkpoint."""

    def __init__(self, rows: list[tuple[str, int, int]]):
        self._ids = {name: cid for name, cid, _ in rows}
        self._names = {cid: name for name, cid, _ in rows}
        self._newest = {cid: t for _, cid, t in rows}

    def id_of(self, name: str) -> int:
        if name not in self._ids:
            cid = len(self._ids)
            self._ids[name], self._names[cid], self._newest[cid] = cid, name, NO_TIME
        return self._ids[name]

    def saw(self, cid: int, t_ms: int) -> None:
        self._newest[cid] = max(self._newest[cid], t_ms)

    def name_of(self, cid: int) -> str:
        return self._names.get(cid, "")

    def newest_by_id(self) -> dict[int, int]:
        return dict(self._newest)

    def rows(self) -> list[tuple[str, int, int]]:
        return [(name, cid, self._newest[cid]) for name, cid in self._ids.items()]


class ClockRules:
    """The clock-driven alarms of one partition (subjects with ``index % count == k``)."""

    def __init__(self, engine: geofence.VerdictEngine, book: SubjectBook, rules_settings,
                 index: int = 0, count: int = 1):
        self.engine = engine
        self.book = book
        self.index, self.count = index, count
        self.silence = SilenceWatch(rules_settings, partitions=count)
        self.overstay_after_ms = by_class(rules_settings, "permit_overstay_after_s") * 1000
        self.off_after_ms = by_class(rules_settings, "phone_off_after_s") * 1000
        self.places = Places.of(engine.jurisdictions)
        self._classes_seen: np.ndarray | None = None   # rule classes at the last check

    def check(self, state: RuleState, now_ms: int, checked_until_ms: int,
              carriers: Carriers) -> list[Alarm]:
        """signal_lost, phone_off, feed_outage and permit_overstay as of `now_ms`; permits
        that ended in (checked_until_ms, now_ms] (less the grace) are looked at once each."""
        book, n = self.book, state.n_subjects
        book.key_periods_at(now_ms)
        mine = np.zeros(n, np.bool_)
        known = min(n, book.size)
        mine[:known] = book.watched(now_ms)[:known]
        mine &= np.arange(n) % self.count == self.index
        events = self.silence.check(state, mine, now_ms, carriers.newest_by_id(),
                                    book.rule_class, book.in_key_period)
        for c in events.restored:
            log.info("feed_outage over: most of carrier %s's subjects report again "
                     "(partition %d of %d)", carriers.name_of(c), self.index, self.count)
        raised_at = wall_ms()
        alarms = []
        lost = [int(s) for s in events.signal_lost]
        fixes, places = self._newest_fixes(state, lost)
        for s, since, after, fix, where in zip(lost, events.since_ms.tolist(),
                                               events.after_ms.tolist(), fixes, places):
            subject = book.subjects[s]
            t = since + after
            alarms.append(new_alarm(
                "signal_lost", subject=subject, route=book.schedule.routing_at(subject.id, t),
                t_ms=t, trigger_t_ms=fix.t_ms if fix else 0, fix=fix, where=where,
                raised_at_ms=raised_at,
                details={"silent_since": since, "silent_for_s": (now_ms - since) // 1000}))
        alarms += self._phone_offs(state, mine, now_ms, raised_at)
        for outage in events.outages:
            alarms.append(new_alarm(
                "feed_outage", subject=None, route=None, t_ms=now_ms,
                trigger_t_ms=outage.newest_t_ms, fix=None, where=None, raised_at_ms=raised_at,
                details={"carrier": carriers.name_of(outage.carrier),
                         "silent_subjects": outage.silent, "subjects": outage.subjects,
                         "last_fix_t": outage.newest_t_ms},
                office=book.root_office()))
        return alarms + self._permit_overstays(state, now_ms, checked_until_ms, raised_at)

    def _phone_offs(self, state: RuleState, mine: np.ndarray, now_ms: int,
                    raised_at: int) -> list[Alarm]:
        """phone_off for this partition's subjects reported off or suspended, with no
        position since, for longer than their level's `phone_off_after_s`; marked so that
        it is raised once and their next fix restores. Counted like silence: from the
        report, or from when this worker started watching the subject if later (a start
        after a long stop raises no flood; `SilenceWatch.check` ran first and set it)."""
        waiting = np.flatnonzero(mine & state.reported_off()
                                 & ((state.flags & rk.PHONE_OFF_SET) == 0))
        if not len(waiting):
            return []
        since = state.handset_since_ms[waiting]
        counted = np.maximum(since, self.silence.watch_ms[waiting])   # as silence counts
        after = self.off_after_ms[_classes_of(self.book.rule_class, waiting)]
        due = now_ms - counted > after
        off, since, t_ms = waiting[due], since[due], counted[due] + after[due]
        state.mark_phone_off(off)
        handset = state.handset[off]
        fixes, places = self._newest_fixes(state, off.tolist())
        alarms = []
        for s, began, t, code, fix, where in zip(off.tolist(), since.tolist(), t_ms.tolist(),
                                                 handset.tolist(), fixes, places):
            subject = self.book.subjects[s]
            alarms.append(new_alarm(
                "phone_off", subject=subject, route=self.book.schedule.routing_at(subject.id, t),
                t_ms=t, trigger_t_ms=began, fix=fix, where=where, raised_at_ms=raised_at,
                details={"handset": STATES[code], "since": began,
                         "off_for_s": (now_ms - began) // 1000}))
        return alarms

    def _permits_ending(self, state: RuleState, now_ms: int,
                        checked_until_ms: int) -> list[tuple]:
        """(permit, subject index, grace) of this partition's permits whose grace, that of
        the subject's level, ended in (checked_until_ms, now_ms], by (grace end, permit);
        and those a level made stricter since the last check left behind it."""
        book, ending = self.book, self._regraded(state, checked_until_ms)
        for grace in sorted(set(self.overstay_after_ms.tolist())):
            for p in book.schedule.permits_ending(checked_until_ms - grace, now_ms - grace):
                s = book.index_of.get(p.subject)
                if (s is not None and s % self.count == self.index and s < state.n_subjects
                        and s < book.size
                        and self.overstay_after_ms[book.rule_class[s]] == grace):
                    ending.append((p, s, grace))
        return sorted(ending, key=lambda e: (e[0].end_ms + e[2], e[0].end_ms, e[0].id))

    def _regraded(self, state: RuleState, checked_until_ms: int) -> list[tuple]:
        """A subject whose level changed since the last check to one with a shorter grace
        (normal to strict): the permits whose old grace had not run out by then but whose
        new one has are behind the windows checked from now on; they are looked at now.
        (A longer grace may look at a permit twice: the same alarm id, stored once.)"""
        book, before = self.book, self._classes_seen
        self._classes_seen = book.rule_class.copy()
        if before is None:
            return []
        k = min(len(before), len(book.rule_class))
        ending = []
        for s in np.flatnonzero(before[:k] != book.rule_class[:k]).tolist():
            old = int(self.overstay_after_ms[before[s]])
            new = int(self.overstay_after_ms[book.rule_class[s]])
            subject = book.subjects[s]
            if (new >= old or subject is None or s % self.count != self.index
                    or s >= state.n_subjects):
                continue
            ending += [(p, s, new) for p in book.schedule.permits_ending(
                checked_until_ms - old, checked_until_ms - new) if p.subject == subject.id]
        return ending

    def _permit_overstays(self, state: RuleState, now_ms: int, checked_until_ms: int,
                          raised_at: int) -> list[Alarm]:
        book = self.book
        ending = self._permits_ending(state, now_ms, checked_until_ms)
        if not ending:
            return []
        subjects = np.array([s for _, s, _ in ending], np.int32)
        grace = np.array([g for _, _, g in ending], np.int64)
        at_ms = np.array([p.end_ms for p, _, _ in ending], np.int64) + grace
        last = state.last_fix(subjects)
        verdict = last["verdict"]
        stale = (last["t_ms"] < at_ms - grace) & (last["t_ms"] != NO_TIME)
        if stale.any():   # silent since before the permit ended: judge the newest fix again
            area = book.schedule.areas_at(subjects[stale], at_ms[stale])
            verdict[stale] = self.engine.verdicts(
                last["lon"][stale], last["lat"][stale],
                last["acc_m"][stale].astype(np.float64), area).verdict
        over = [k for k in range(len(ending))
                if last["t_ms"][k] == NO_TIME or verdict[k] != IN]
        fixes, places = self._newest_fixes(state, [ending[k][1] for k in over])
        alarms = []
        for k, fix, where in zip(over, fixes, places):
            permit, s, _ = ending[k]
            subject = book.subjects[s]
            t = int(at_ms[k])
            alarms.append(new_alarm(
                "permit_overstay", subject=subject,
                route=book.schedule.routing_at(subject.id, t), t_ms=t,
                trigger_t_ms=permit.end_ms, fix=fix, where=where, raised_at_ms=raised_at,
                details={"permit": permit.id, "destinations": list(permit.destinations),
                         "permit_end": permit.end_ms}))
        return alarms

    def _newest_fixes(self, state: RuleState, subjects: list[int]):
        """Each subject's newest fix and where it was, with one locate call for all."""
        if not subjects:
            return [], []
        last = state.last_fix(np.array(subjects, np.int32))
        fixes = [AlarmFix.of(*row) for row in zip(last["t_ms"], last["lon"], last["lat"],
                                                   last["acc_m"], last["src"])]
        has = last["t_ms"] != NO_TIME
        features = np.full(len(subjects), -1, np.int32)
        if has.any():
            features[has] = self.engine.jurisdictions.locate(last["lon"][has], last["lat"][has])
        return fixes, [self.places[f] for f in features.tolist()]


def _classes_of(rule_class: np.ndarray | None, subjects: np.ndarray) -> np.ndarray:
    """The rule class of each of `subjects` (normal when not given or beyond the array)."""
    classes = np.zeros(len(subjects), np.intp)
    if rule_class is not None:
        known = subjects < len(rule_class)
        classes[known] = rule_class[subjects[known]]
    return classes


def wall_ms() -> int:
    return int(time.time() * 1000)
