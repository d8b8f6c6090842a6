"""Compiled alarm rules (SPEC §6), the fix-driven part: per-subject state and one batch kernel.

State is a struct of arrays indexed by subject (`STATE_FIELDS`, 23 bytes a subject): a
batch sorted by (subject, t) then walks every array nearly in order, so a million
subjects cost streaming reads rather than a cache miss per fix and field.

Per accepted fix the rules run in a fixed order, which is also the order of their events:
signal_restored; zone_exit or zone_return; possible_exit; exclusion_entry or
possible_exclusion. At most one event comes from each group, hence `MAX_EVENTS_PER_FIX`.

Run counters are uint8 and saturate at `RUN_MAX`; thresholds are at most `RUN_MAX`, so a
saturated counter still compares exactly as an unbounded one would.

Thresholds are a table, one row per rule class (`N_CLASSES`: supervision level * 2 + risk
key, as `alerts.subject_book.rule_class_of` numbers them), so each subject is judged by
its level's settings (SPEC §11) at the cost of one byte read per fix; the key columns
apply to the key class of each level.

Late fixes: a fix with ``t <= newest_t_ms`` of its subject changes nothing and is only
flagged. Equal times count as late too: a second device reporting the same instant adds
no new information about *when*, and taking the first one (in batch order, the sort is
stable) keeps the result independent of how fixes were split into batches.
"""

from typing import NamedTuple

import numpy as np

from geofence._jit import body, kernel
from geofence.verdict import IN, OUT, UNSURE

# Event codes: indices into `alerts.rules.EVENT_TYPES` (all SPEC §6 types, so the clock-driven
# rules share the numbering). This kernel emits the fix-driven ones and signal_restored.
ZONE_EXIT, ZONE_RETURN, POSSIBLE_EXIT, EXCLUSION_ENTRY, POSSIBLE_EXCLUSION = 0, 1, 2, 3, 4
SIGNAL_LOST, SIGNAL_RESTORED, PERMIT_OVERSTAY, FEED_OUTAGE, PHONE_OFF = 5, 6, 7, 8, 9
MAX_EVENTS_PER_FIX = 3

NO_TIME = np.iinfo(np.int64).min  # newest_t_ms before any fix; linked_t_ms of unlinked events
NO_VERDICT = -1                   # latest verdict before any fix
NO_ZONE = -1
RUN_MAX = 255

# Bits of `flags`.
SIGNAL_LOST_SET = 1       # set by the clock-driven rules; the next fix raises signal_restored
EXIT_OPEN = 2             # a zone_exit is open (until a zone_return)
NONIN_UNSURE = 4          # the current run of non-`in` fixes holds an `unsure`
POSSIBLE_EXIT_DONE = 8    # possible_exit raised in the current episode
EXCLUSION_OPEN = 16       # an exclusion_entry is open (until a fix out of every zone)
POSSIBLE_EXCL_DONE = 32   # possible_exclusion raised in the current episode
OUTAGE_SILENT = 64        # silent while its carrier's feed is down: no signal_lost of its own
PHONE_OFF_SET = 128       # set with SIGNAL_LOST_SET by phone_off (the kernel leaves it alone;
                          # `alerts.rules.RuleState.apply` clears it with the signal_restored)

# Slots of `progress` (int64[N_PROGRESS]): the next fix to apply, events written, late fixes.
PROGRESS_FIX, PROGRESS_EVENTS, PROGRESS_LATE = 0, 1, 2
N_PROGRESS = 3

# Columns of the thresholds table `limits[class]` (names as in `engine.config.Rules`).
LIMIT_NAMES = ("exit_fixes", "exit_fixes_key", "return_fixes", "possible_exit_fixes",
               "exclusion_fixes", "possible_exclusion_fixes")
L_EXIT, L_EXIT_KEY, L_RETURN, L_POSSIBLE_EXIT, L_EXCLUSION, L_POSSIBLE_EXCL = range(6)
# Rows of `limits`: rule class = level * 2 + key, levels in `alerts.registry.LEVELS` order.
N_CLASSES = 6
KEY_CLASS_BIT = 1

# (name, dtype, value before any fix), in argument and snapshot order.
STATE_FIELDS = (
    ("newest_t_ms", np.int64, NO_TIME),   # newest accepted fix (signal_lost checks)
    ("exit_t_ms", np.int64, NO_TIME),     # t of the fix that raised the open zone_exit
    ("verdict", np.int8, NO_VERDICT),     # area verdict of the newest fix (permit_overstay)
    ("flags", np.uint8, 0),
    ("out_run", np.uint8, 0),             # `out` fixes since the last `in` (unsure skipped)
    ("in_run", np.uint8, 0),              # consecutive `in` fixes while an exit is open
    ("nonin_run", np.uint8, 0),           # consecutive non-`in` fixes (possible_exit)
    ("excl_in_run", np.uint8, 0),         # consecutive fixes in an exclusion zone
    ("excl_run", np.uint8, 0),            # consecutive fixes not out of every zone
)
State = NamedTuple("State", [(name, np.ndarray) for name, _, _ in STATE_FIELDS])
State.__doc__ = "Per-subject rule state, one array per field of `STATE_FIELDS`."

# (name, dtype) of the event outputs: per event its code, subject, triggering fix (index in
# the caller's batch), that fix's t, the linked t (`NO_TIME` when none) and its zone.
EVENT_FIELDS = (("type", np.int8), ("subject", np.int32), ("fix", np.int64),
                ("t_ms", np.int64), ("linked_t_ms", np.int64), ("zone", np.int32))
EventColumns = NamedTuple("EventColumns", [(name, np.ndarray) for name, _ in EVENT_FIELDS])
EventColumns.__doc__ = "Event output arrays of `apply_fixes`, one per field of `EVENT_FIELDS`."


class SortedBatch(NamedTuple):
    """A batch sorted by (subject, t): per fix its subject, t, index in the caller's batch,
    area verdict, worst exclusion verdict and that zone (`NO_ZONE` when none)."""

    subject: np.ndarray
    t_ms: np.ndarray
    fix: np.ndarray
    verdict: np.ndarray
    excl_verdict: np.ndarray
    excl_zone: np.ndarray


def apply_batch(state: State, batch: SortedBatch, rule_class, limits, events: EventColumns,
                late, progress) -> int:
    """`apply_fixes` on named tables: the one place that lays them out as its arguments."""
    return apply_fixes(state.newest_t_ms, state.exit_t_ms, state.verdict, state.flags,
                       state.out_run, state.in_run, state.nonin_run, state.excl_in_run,
                       state.excl_run,
                       batch.subject, batch.t_ms, batch.fix, batch.verdict, batch.excl_verdict,
                       batch.excl_zone, rule_class, limits,
                       events.type, events.subject, events.fix, events.t_ms,
                       events.linked_t_ms, events.zone, late, progress)


@body
def _bump(run):
    """A run counter plus one, saturating at RUN_MAX."""
    return min(int(run) + 1, RUN_MAX)


@body
def _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone, n_ev,
          kind, s, f, t, linked, zone):
    ev_type[n_ev] = kind
    ev_subject[n_ev] = s
    ev_fix[n_ev] = f
    ev_t_ms[n_ev] = t
    ev_linked_t_ms[n_ev] = linked
    ev_zone[n_ev] = zone
    return n_ev + 1


@body
def _area_rules(exit_t_ms, out_run, in_run, nonin_run, fl, s, f, t, v, c, limits,
                ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone, n_ev):
    """zone_exit / zone_return, then possible_exit, by the thresholds of rule class `c`;
    returns (flags, events written)."""
    if fl & EXIT_OPEN:
        if v == IN:
            run = _bump(in_run[s])
            if run >= limits[c, L_RETURN]:
                n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone,
                             n_ev, ZONE_RETURN, s, f, t, exit_t_ms[s], NO_ZONE)
                fl &= ~EXIT_OPEN
                exit_t_ms[s] = NO_TIME
                run = 0
            in_run[s] = run
        else:
            in_run[s] = 0
    elif v == OUT:
        run = _bump(out_run[s])
        if run >= limits[c, L_EXIT_KEY if c & KEY_CLASS_BIT else L_EXIT]:
            n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone,
                         n_ev, ZONE_EXIT, s, f, t, NO_TIME, NO_ZONE)
            fl |= EXIT_OPEN
            exit_t_ms[s] = t
            in_run[s] = 0
            run = 0
        out_run[s] = run
    elif v == IN:
        out_run[s] = 0
    # possible_exit: an `in` ends the episode. A zone_exit ends it too: while the exit is
    # open nothing counts, and only an `in` (which resets the run) can close the exit.
    if v == IN:
        nonin_run[s] = 0
        fl &= ~(NONIN_UNSURE | POSSIBLE_EXIT_DONE)
    elif not fl & EXIT_OPEN:
        run = _bump(nonin_run[s])
        if v == UNSURE:
            fl |= NONIN_UNSURE
        if (run >= limits[c, L_POSSIBLE_EXIT] and fl & NONIN_UNSURE
                and not fl & POSSIBLE_EXIT_DONE):
            n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone,
                         n_ev, POSSIBLE_EXIT, s, f, t, NO_TIME, NO_ZONE)
            fl |= POSSIBLE_EXIT_DONE
        nonin_run[s] = run
    return fl, n_ev


@body
def _exclusion_rules(excl_in_run, excl_run, fl, s, f, t, xv, zone, c, limits,
                     ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone, n_ev):
    """exclusion_entry, then possible_exclusion, by the thresholds of rule class `c`;
    returns (flags, events written).

    An open entry closes (re-arms) on a fix out of every zone; it emits nothing then,
    the alarm itself is resolved by people. The possible_exclusion run counts `in` fixes
    as well as `unsure` ones (an `in` is at least as close), and `out` ends the episode.
    """
    if fl & EXCLUSION_OPEN:
        if xv == OUT:
            fl &= ~EXCLUSION_OPEN
    elif xv == IN:
        run = _bump(excl_in_run[s])
        if run >= limits[c, L_EXCLUSION]:
            n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone,
                         n_ev, EXCLUSION_ENTRY, s, f, t, NO_TIME, zone)
            fl |= EXCLUSION_OPEN
            run = 0
        excl_in_run[s] = run
    else:
        excl_in_run[s] = 0
    if xv == OUT:
        excl_run[s] = 0
        fl &= ~POSSIBLE_EXCL_DONE
    else:
        run = _bump(excl_run[s])
        if (run >= limits[c, L_POSSIBLE_EXCL] and not fl & EXCLUSION_OPEN
                and not fl & POSSIBLE_EXCL_DONE):
            n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone,
                         n_ev, POSSIBLE_EXCLUSION, s, f, t, NO_TIME, zone)
            fl |= POSSIBLE_EXCL_DONE
        excl_run[s] = run
    return fl, n_ev


@kernel
def apply_fixes(newest_t_ms, exit_t_ms, verdict, flags, out_run, in_run, nonin_run,
                excl_in_run, excl_run,
                subject, t_ms, fix, fix_verdict, excl_verdict, excl_zone, rule_class, limits,
                ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms, ev_zone, late, progress):
    """Apply a batch sorted by (subject, t) to the state; write events; return their count.

    Arguments: the fields of `State`, of `SortedBatch`, the per-subject rule class (int8,
    0..N_CLASSES-1), the thresholds table (a row per class, columns `L_*`), the fields of
    `EventColumns`, `late` and `progress`; call it through `apply_batch`, which passes
    them by name.

    `progress` (slots `PROGRESS_*`: next fix, events written, late fixes) is where it starts
    and, on return, where it stopped. The kernel stops before a fix whose events might not
    fit (`MAX_EVENTS_PER_FIX`) and returns -1: everything before is applied and written,
    so the caller grows the outputs (keeping the events written so far) and calls again
    to finish. `late[i]` is set to 1 for a late fix, 0 otherwise.
    """
    n = len(subject)
    capacity = len(ev_type)
    i = progress[PROGRESS_FIX]
    n_ev = progress[PROGRESS_EVENTS]
    n_late = progress[PROGRESS_LATE]
    stopped = False
    while i < n and not stopped:
        if n_ev + MAX_EVENTS_PER_FIX > capacity:
            stopped = True
        else:
            s = subject[i]
            t = t_ms[i]
            if t <= newest_t_ms[s]:
                late[i] = 1
                n_late += 1
            else:
                late[i] = 0
                f = fix[i]
                v = fix_verdict[i]
                newest_t_ms[s] = t
                verdict[s] = v
                fl = int(flags[s])
                if fl & SIGNAL_LOST_SET:
                    n_ev = _emit(ev_type, ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms,
                                 ev_zone, n_ev, SIGNAL_RESTORED, s, f, t, NO_TIME, NO_ZONE)
                    fl &= ~SIGNAL_LOST_SET
                fl &= ~OUTAGE_SILENT
                c = rule_class[s]
                fl, n_ev = _area_rules(exit_t_ms, out_run, in_run, nonin_run, fl, s, f, t,
                                       v, c, limits, ev_type, ev_subject, ev_fix,
                                       ev_t_ms, ev_linked_t_ms, ev_zone, n_ev)
                fl, n_ev = _exclusion_rules(excl_in_run, excl_run, fl, s, f, t,
                                            excl_verdict[i], excl_zone[i], c, limits, ev_type,
                                            ev_subject, ev_fix, ev_t_ms, ev_linked_t_ms,
                                            ev_zone, n_ev)
                flags[s] = fl
            i += 1
    progress[PROGRESS_FIX] = i
    progress[PROGRESS_EVENTS] = n_ev
    progress[PROGRESS_LATE] = n_late
    return -1 if stopped else n_ev
