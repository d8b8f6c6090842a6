"""A leave (外出请假) as the desk shows it, and the registry permit it becomes.

A leave requested on the desk has a numeric id ("12") and source "desk"; a permit
imported with a registry document shows as an approved, read-only leave with id
"permit:<permit id>" and source "import". An approved desk leave is the permit
"leave-<id>" (source "leave:<id>") whose window is the leave's; a closed leave's permit
ends at the close. A cancelled leave's permit (one approved but not yet begun) is moved to
the first millisecond of 1970 (start 0, end 1 ms): the registry's imports are upserts that
cannot delete, and refuse an end equal to the start, so the permit stays on file but can
never allow anything (no fix is that old, and no `permit_overstay` looks back there).
"""

from dataclasses import dataclass
from datetime import datetime, timezone

from alerts.registry import Permit, Recurring, Registry
from supervision.leave_rules import Span, leave_days

STATUSES = ("pending", "approved", "rejected", "cancelled", "closed")
SOURCES = ("desk", "import")
IMPORTED_PREFIX = "permit:"
NEVER = (0, 1)   # a cancelled leave's permit window: [0, 1 ms) of 1970


@dataclass(frozen=True)
class Leave:
    id: str
    subject: str
    office: str                      # the subject's supervising office when requested
    destinations: tuple[str, ...]
    start_ms: int
    end_ms: int                      # as requested (a standing permit: its `until_ms`)
    reason: str
    recurring: Recurring | None
    status: str
    approver: str                    # the office that must approve (or did)
    requested_by: str | None
    requested_ms: int | None
    source: str = "desk"
    closed_ms: int | None = None     # 销假: when the person reported back
    permit: str | None = None        # the registry permit's id once approved

    @property
    def standing(self) -> bool:
        return self.recurring is not None

    @property
    def used_end_ms(self) -> int:
        """Where the leave ends in effect: the close, if it came before the end."""
        return min(self.end_ms, self.closed_ms) if self.closed_ms is not None else self.end_ms

    @property
    def days(self) -> int:
        return leave_days(self.start_ms, self.used_end_ms)

    def span(self) -> Span:
        return Span(self.id, self.start_ms, self.used_end_ms, self.standing)

    def to_document(self, can_approve: bool, history: list[dict]) -> dict:
        return {"id": self.id, "subject": self.subject, "office": self.office,
                "destinations": list(self.destinations), "start_ms": self.start_ms,
                "end_ms": self.end_ms, "days": self.days, "reason": self.reason,
                "recurring": self.recurring.to_document() if self.recurring else None,
                "status": self.status, "approver": self.approver,
                "requested_by": self.requested_by, "requested_ms": self.requested_ms,
                "closed_ms": self.closed_ms, "source": self.source, "permit": self.permit,
                "can_approve": can_approve, "history": history}


def permit_id(leave_id: str) -> str:
    return f"leave-{leave_id}"


def permit_document(leave: Leave, office: str, window: tuple[int, int] | None = None) -> dict:
    """The registry document that makes `leave` the subject's permit (over `window`,
    default the leave's own start and end); `office`: the office of the user who approved
    it (the approver office or one above it)."""
    start, end = window or (leave.start_ms, leave.end_ms)
    entry = {"id": permit_id(leave.id), "subject": leave.subject, "start": rfc3339(start),
             "end": rfc3339(end), "destinations": list(leave.destinations),
             "office": office, "source": f"leave:{leave.id}"}
    if leave.recurring is not None and window != NEVER:
        entry["recurring"] = leave.recurring.to_document()
    return {"permits": [entry]}


def rfc3339(t_ms: int) -> str:
    """UTC with milliseconds: the registry reads it back to the same millisecond when the
    time is a whole second (the desk keeps leave times to the second)."""
    moment = datetime.fromtimestamp(t_ms // 1000, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ms % 1000:03d}Z"


def imported_leaves(registry: Registry, subjects: set[str] | None = None) -> list[Leave]:
    """The permits imported with registry documents (not made by desk leaves) as approved,
    read-only leaves; only those of `subjects` when given."""
    found = []
    for p in registry.permits.values():
        if p.source.startswith("leave:") or (subjects is not None and p.subject not in subjects):
            continue
        found.append(imported_leave(registry, p))
    return found


def imported_leave(registry: Registry, p: Permit) -> Leave:
    subject = registry.subjects.get(p.subject)
    return Leave(IMPORTED_PREFIX + p.id, p.subject, subject.office if subject else p.office,
                 p.destinations, p.start_ms, p.end_ms, "", p.recurring, "approved", p.office,
                 None, None, source="import", permit=p.id)

