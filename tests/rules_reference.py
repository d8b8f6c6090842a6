"""A plain reference model of the fix-driven alarm rules (SPEC §6), for tests only.

One fix at a time, state in dicts, and every rule written as it reads in the SPEC over
the subject's history of accepted fixes ("the `out` fixes since the last `in`") instead
of the run counters the compiled kernel keeps. Slow and obviously correct; the compiled
`alerts.rules.RuleState` must produce the same events and the same state (`view`,
`compiled_view`).

Episodes ("once per episode") are identified by the position in the history where they
began: a rule remembers the episode it last fired in.

Each subject has a rule class (SPEC §11: supervision level * 2 + risk key, as
`alerts.subject_book.rule_class_of` numbers them): its thresholds are those of
`rules.for_level(level)`, and the key ones apply when its key bit is set.
"""

from dataclasses import dataclass, field

from alerts import _rules_kernel as rk
from alerts.registry import LEVELS
from alerts.rules import EVENT_TYPES, NO_TIME, RuleState
from geofence.verdict import IN, OUT, UNSURE
from ingest.protocol import STATES


@dataclass(frozen=True)
class SubjectView:
    """One subject's rule state as both models can state it."""

    newest_t_ms: int | None
    verdict: int | None
    signal_lost: bool
    exit_open: bool
    exit_t_ms: int | None
    exclusion_open: bool


def compiled_view(state: RuleState, s: int) -> SubjectView:
    """Subject s of the compiled state, read from the kernel's own arrays."""
    k = state.kernel_state()
    flags = int(k.flags[s])
    return SubjectView(
        newest_t_ms=None if k.newest_t_ms[s] == NO_TIME else int(k.newest_t_ms[s]),
        verdict=None if k.verdict[s] == rk.NO_VERDICT else int(k.verdict[s]),
        signal_lost=bool(flags & rk.SIGNAL_LOST_SET),
        exit_open=bool(flags & rk.EXIT_OPEN),
        exit_t_ms=int(k.exit_t_ms[s]) if flags & rk.EXIT_OPEN else None,
        exclusion_open=bool(flags & rk.EXCLUSION_OPEN))


@dataclass
class Fix:
    t_ms: int
    verdict: int
    excl_verdict: int
    zone: int
    index: int          # position in its batch


@dataclass
class Subject:
    fixes: list[Fix] = field(default_factory=list)   # accepted fixes, oldest first
    signal_lost: bool = False
    exit_fix: Fix | None = None                       # the fix that raised the open exit
    exit_raised_at: int = -1                          # history position of that fix
    exclusion_open: bool = False
    possible_exit_episode: int = -1                   # episode start it last fired in
    possible_exclusion_episode: int = -1


# One event: (type name, subject, fix index, t_ms, linked_t_ms, zone) as in `Events`.
Event = tuple[str, int, int, int, int, int]


class ReferenceRules:
    """The rules of SPEC §6 for subjects 0..n-1, with thresholds from a `Rules`."""

    def __init__(self, n_subjects: int, rules):
        self.rules = rules
        self.subjects = [Subject() for _ in range(n_subjects)]

    def grow(self, n: int) -> None:
        self.subjects += [Subject() for _ in range(n - len(self.subjects))]

    def mark_signal_lost(self, subjects) -> None:
        for s in subjects:
            self.subjects[s].signal_lost = True

    def view(self, s: int) -> SubjectView:
        h = self.subjects[s]
        newest = h.fixes[-1] if h.fixes else None
        return SubjectView(newest_t_ms=newest.t_ms if newest else None,
                           verdict=newest.verdict if newest else None,
                           signal_lost=h.signal_lost,
                           exit_open=h.exit_fix is not None,
                           exit_t_ms=h.exit_fix.t_ms if h.exit_fix else None,
                           exclusion_open=h.exclusion_open)

    def apply(self, subject, t_ms, verdict, excl_verdict, excl_zone,
              rule_class) -> tuple[list, list]:
        """Events and late fix indices of one batch, taken in (subject, t, batch) order;
        `rule_class` per subject (level * 2 + key; a bool is the key of a normal subject)."""
        order = sorted(range(len(subject)), key=lambda i: (int(subject[i]), int(t_ms[i])))
        events: list[Event] = []
        late: list[int] = []
        for i in order:
            s = int(subject[i])
            fix = Fix(int(t_ms[i]), int(verdict[i]), int(excl_verdict[i]), int(excl_zone[i]), i)
            h = self.subjects[s]
            if h.fixes and fix.t_ms <= h.fixes[-1].t_ms:
                late.append(i)
            else:
                h.fixes.append(fix)
                level, key = divmod(int(rule_class[s]), 2)
                for name, linked, zone in self._rules(h, self.rules.for_level(LEVELS[level]),
                                                      bool(key)):
                    events.append((name, s, i, fix.t_ms, linked, zone))
        return events, sorted(late)

    def _rules(self, h: Subject, r, key: bool) -> list[tuple[str, int, int]]:
        """The events raised by the newest fix of `h` under thresholds `r`, in rule order."""
        fixes = h.fixes
        fix = fixes[-1]
        now = len(fixes) - 1
        raised = []
        if h.signal_lost:
            h.signal_lost = False
            raised.append(("signal_restored", NO_TIME, -1))

        # zone_exit: N `out` fixes since the last `in` (unsure fixes do not matter).
        # zone_return: while an exit is open, the last M fixes all `in`.
        if h.exit_fix is None:
            since_in = fixes[_after_last(fixes, lambda f: f.verdict == IN):]
            outs = sum(f.verdict == OUT for f in since_in)
            if fix.verdict == OUT and outs >= (r.exit_fixes_key if key else r.exit_fixes):
                h.exit_fix, h.exit_raised_at = fix, now
                raised.append(("zone_exit", NO_TIME, -1))
        elif _last_all(fixes, r.return_fixes, lambda f: f.verdict == IN):
            raised.append(("zone_return", h.exit_fix.t_ms, -1))
            h.exit_fix = None

        # possible_exit: the fixes since the last `in` (or since the last exit raised: that
        # ends the episode) are N or more, hold an `unsure`, and no exit is open.
        start = max(_after_last(fixes, lambda f: f.verdict == IN), h.exit_raised_at + 1)
        episode = fixes[start:]
        if (h.exit_fix is None and len(episode) >= r.possible_exit_fixes
                and any(f.verdict == UNSURE for f in episode)
                and h.possible_exit_episode != start):
            h.possible_exit_episode = start
            raised.append(("possible_exit", NO_TIME, -1))

        # exclusion_entry: the last N fixes in an exclusion zone; open until a fix out of
        # every zone. possible_exclusion: N fixes since the last one out of every zone
        # (each `unsure` or `in` for a zone), once per such episode, no entry open.
        if h.exclusion_open:
            h.exclusion_open = fix.excl_verdict != OUT
        elif _last_all(fixes, r.exclusion_fixes, lambda f: f.excl_verdict == IN):
            h.exclusion_open = True
            raised.append(("exclusion_entry", NO_TIME, fix.zone))
        start = _after_last(fixes, lambda f: f.excl_verdict == OUT)
        if (not h.exclusion_open and len(fixes) - start >= r.possible_exclusion_fixes
                and h.possible_exclusion_episode != start):
            h.possible_exclusion_episode = start
            raised.append(("possible_exclusion", NO_TIME, fix.zone))
        assert all(name in EVENT_TYPES for name, _, _ in raised)
        return raised


def _after_last(fixes: list[Fix], pred) -> int:
    """Position just after the last fix matching `pred` (0 if none does)."""
    return max((i + 1 for i, f in enumerate(fixes) if pred(f)), default=0)


def _last_all(fixes: list[Fix], n: int, pred) -> bool:
    """The last `n` fixes exist and all match `pred`."""
    return len(fixes) >= n and all(pred(f) for f in fixes[-n:])


def _run(state: int | None) -> str | None:
    """Which run a state belongs to: the phone off or suspended alike, or unreachable."""
    return None if state is None else "unreachable" if STATES[state] == "unreachable" else "off"


@dataclass
class Handset:
    state: int | None = None        # index into protocol.STATES; None: no state
    since_ms: int | None = None
    report_t_ms: int | None = None  # newest report taken


class ReferenceHandsets:
    """Handset status reports (SPEC §14) one at a time, beside a `ReferenceRules` whose
    newest position fix per subject they are judged against."""

    def __init__(self, positions: ReferenceRules):
        self.positions = positions
        self.subjects: list[Handset] = []

    def view(self, s: int) -> Handset:
        self.subjects += [Handset() for _ in range(s + 1 - len(self.subjects))]
        return self.subjects[s]

    def apply(self, subject, t_ms, state) -> list[int]:
        """Late report indices of one batch, taken in (subject, t, batch) order."""
        order = sorted(range(len(subject)), key=lambda i: (int(subject[i]), int(t_ms[i])))
        late = []
        for i in order:
            s, t, code = int(subject[i]), int(t_ms[i]), int(state[i])
            h = self.view(s)
            position = self.positions.view(s).newest_t_ms
            if (position is not None and t <= position) or (
                    h.report_t_ms is not None and t <= h.report_t_ms):
                late.append(i)
                continue
            if _run(h.state) != _run(code):   # off and suspended: one run
                h.since_ms = t
            h.state = code
            h.report_t_ms = t
        return sorted(late)

    def positions_taken(self) -> None:
        """After a batch of position fixes: a fix newer than a subject's newest report ends
        its state; one between the state's start and that report restarts it there."""
        for s in range(len(self.positions.subjects)):
            h = self.view(s)
            newest = self.positions.view(s).newest_t_ms
            if h.state is None or newest is None:
                continue
            if newest > h.report_t_ms:
                h.state = h.since_ms = None
            elif newest > h.since_ms:
                h.since_ms = h.report_t_ms
