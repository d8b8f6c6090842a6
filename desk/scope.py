"""Who may see what: a desk user sees their office's subtree, and nothing else (SPEC §8).

An office's subtree is the office and every office below it by `parent` in the
registry. An alarm is visible iff any office it went to (supervising office, copies
such as the origin office during a delegation, escalation targets) lies in the user's
subtree. A subject is visible iff its supervising office, or the delegate office of a
delegation active now, lies in it: during a delegation both the delegate and the
origin office see the person. Anything outside answers exactly as if it did not exist.
"""

from collections import defaultdict
from collections.abc import Iterable

from alerts.registry import Delegation, Registry, Subject, active_delegation


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

    @staticmethod
    def sees_alarm(subtree: frozenset[str], offices: Iterable[str]) -> bool:
        """Whether an alarm that went to `offices` is visible from `subtree`."""
        return any(code in subtree for code in offices)

    # -- subjects --------------------------------------------------------------------------

    def delegation(self, subject_id: str, now_ms: int) -> Delegation | None:
        """The delegation in force at `now_ms` (as alarm routing decides it)."""
        return active_delegation(self._delegations.get(subject_id, ()), now_ms)

    def sees_subject(self, subtree: frozenset[str], subject: Subject, now_ms: int) -> bool:
        if subject.office in subtree:
            return True
        delegation = self.delegation(subject.id, now_ms)
        return delegation is not None and delegation.office in subtree

    def visible_subjects(self, subtree: frozenset[str], now_ms: int) -> list[Subject]:
        return [s for s in self.registry.subjects.values()
                if self.sees_subject(subtree, s, now_ms)]

    def subject_document(self, subject: Subject, now_ms: int) -> dict:
        """What the desk shows of a person: never their devices (phone numbers).

        During a delegation `office` and `home` are the delegate's, and `origin` names
        the origin office."""
        doc = {"id": subject.id, "office": subject.office, "home": list(subject.home),
               "risk": subject.risk, "category": subject.category,
               "exclusions": list(subject.exclusions)}
        delegation = self.delegation(subject.id, now_ms)
        if delegation is not None:
            doc.update(office=delegation.office, home=list(delegation.home),
                       origin=subject.office)
        return doc
