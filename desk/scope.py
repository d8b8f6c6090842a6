"""Who may see what: a desk user sees their office's subtree, and nothing else (SPEC §8).

An office's subtree is the office and every office below it by `parent` in the
registry. An alarm is visible iff any office it went to (supervising office, copies
such as the origin office during a delegation, escalation targets) lies in the user's
subtree. A subject is visible iff its supervising office, or the delegate office of a
delegation active now, lies in it: during a delegation both the delegate and the
origin office see the person. Anything outside answers exactly as if it did not exist.

A delegate office sees a person only within its delegations' windows (start to end):
their track is cut to the windows, and their alarms are those whose event time lies in
one (routing sends nothing else there; an alarm routed under a delegation start since
corrected in the registry is cut too). After a delegation ended, its office keeps its
window: the track and alarms of that time, though the person is no longer listed. The
supervising (origin) office and everything above it see everything, always.
"""

from collections import defaultdict
from collections.abc import Iterable

from alerts.alarms import Alarm
from alerts.registry import Delegation, Registry, Subject, active_delegation

Window = tuple[int, int]   # [from_ms, to_ms), in event time
ALWAYS: tuple[Window, ...] = ((0, 2**63 - 1),)


class Scope:
    """Subtrees and visibility for one registry snapshot (rebuilt when it changes)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        children: dict[str, list[str]] = defaultdict(list)
        for office in registry.offices.values():
            if office.parent:
                children[office.parent].append(office.code)
        self._children = {code: sorted(kids) for code, kids in children.items()}
        self._delegations: dict[str, list[Delegation]] = defaultdict(list)
        for d in registry.delegations.values():
            self._delegations[d.subject].append(d)
        self._subtrees: dict[str, frozenset[str]] = {}

    @property
    def version(self) -> int:
        return self.registry.version

    def subtree(self, office: str) -> frozenset[str]:
        """`office` and every office below it (just `office` if the registry lacks it)."""
        found = self._subtrees.get(office)
        if found is None:
            found = frozenset(self._preorder(office))
            self._subtrees[office] = found
        return found

    def _preorder(self, office: str) -> list[str]:
        out, stack, seen = [], [office], set()
        while stack:
            code = stack.pop()
            if code in seen:   # the registry refuses cycles; never loop on a bad file
                continue
            seen.add(code)
            out.append(code)
            stack.extend(reversed(self._children.get(code, ())))
        return out

    def offices_under(self, office: str) -> list[dict]:
        """The subtree as {code, name, parent}, the office first, then depth-first by code."""
        offices = self.registry.offices
        return [{"code": code, "name": offices[code].name if code in offices else code,
                 "parent": offices[code].parent if code in offices else None}
                for code in self._preorder(office)]

    def office_name(self, code: str) -> str:
        office = self.registry.offices.get(code)
        return office.name if office else code

    # -- alarms ----------------------------------------------------------------------------

    def sees_alarm(self, subtree: frozenset[str], alarm: Alarm, offices: Iterable[str]) -> bool:
        """Whether `alarm`, which went to `offices`, is visible from `subtree`: it went
        there, and if only as a delegate's, its time is in a delegation's window."""
        return any(code in subtree for code in offices) and self.in_window(subtree, alarm)

    def in_window(self, subtree: frozenset[str], alarm: Alarm) -> bool:
        """Whether an alarm that went to `subtree` is in a delegation's window there, or
        reached it otherwise (the supervising office's side, an alarm of no subject)."""
        subject = self.registry.subjects.get(alarm.subject) if alarm.subject else None
        if subject is None or subject.office in subtree:
            return True
        windows = self._delegated_windows(subtree, subject.id)
        return not windows or any(lo <= alarm.t_ms < hi for lo, hi in windows)

    # -- subjects --------------------------------------------------------------------------

    def delegation(self, subject_id: str, now_ms: int) -> Delegation | None:
        """The delegation in force at `now_ms` (as alarm routing decides it)."""
        return active_delegation(self._delegations.get(subject_id, ()), now_ms)

    def sees_subject(self, subtree: frozenset[str], subject: Subject, now_ms: int) -> bool:
        if subject.office in subtree:
            return True
        delegation = self.delegation(subject.id, now_ms)
        return delegation is not None and delegation.office in subtree

    def track_windows(self, subtree: frozenset[str], subject: Subject,
                      now_ms: int) -> tuple[Window, ...]:
        """The times of `subject`'s track visible from `subtree`: always for the
        supervising office's side, the delegations' windows begun by `now_ms` for a
        delegate's; () if none (the subject is not theirs)."""
        if subject.office in subtree:
            return ALWAYS
        return tuple(w for w in self._delegated_windows(subtree, subject.id) if w[0] <= now_ms)

    def _delegated_windows(self, subtree: frozenset[str], subject_id: str) -> list[Window]:
        """When the delegation in force (as routing decides it) was to an office in
        `subtree`: between consecutive starts and ends, ask `active_delegation`."""
        delegations = self._delegations.get(subject_id, ())
        if not any(d.office in subtree for d in delegations):
            return []
        points = sorted({d.start_ms for d in delegations}
                        | {d.end_ms for d in delegations if d.end_ms is not None})
        windows: list[Window] = []
        for lo, hi in zip(points, [*points[1:], ALWAYS[0][1]]):
            active = active_delegation(delegations, lo)
            if active is None or active.office not in subtree:
                continue
            if windows and windows[-1][1] == lo:
                windows[-1] = (windows[-1][0], hi)
            else:
                windows.append((lo, hi))
        return windows

    def visible_subjects(self, subtree: frozenset[str], now_ms: int) -> list[Subject]:
        return [s for s in self.registry.subjects.values()
                if self.sees_subject(subtree, s, now_ms)]

    def subject_document(self, subject: Subject, now_ms: int) -> dict:
        """What the desk shows of a person: never their devices (phone numbers).

        During a delegation `office` and `home` are the delegate's, and `origin` names
        the origin office. `ended`: when supervision ended (ms), None while supervised."""
        doc = {"id": subject.id, "office": subject.office, "home": list(subject.home),
               "risk": subject.risk, "category": subject.category,
               "exclusions": list(subject.exclusions), "level": subject.level,
               "ended": subject.ended_ms, "cases": list(subject.cases)}
        if subject.curfews:   # orders (issue 13), shown only when given
            doc["curfews"] = [c.to_document() for c in subject.curfews]
        if subject.night_watch:
            doc["night_watch"] = True
        delegation = self.delegation(subject.id, now_ms)
        if delegation is not None:
            doc.update(office=delegation.office, home=list(delegation.home),
                       origin=subject.office)
        return doc
