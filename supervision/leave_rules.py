"""The rules of law for leave (外出请假, SPEC §12): pure functions, no storage, no HTTP.

社区矫正法实施办法 art. 27-28: up to `township_max_days` days the subject's supervising
office (司法所) approves; longer, and every standing permit (经常性跨市县活动), the
county (县级社区矫正机构: the supervising office's parent). A user may approve for the
approver office or any office above it. Caps: one leave lasts at most `max_days`; the
approved days of a calendar year stay within `max_days_per_year`; two approved leaves of
one person never overlap; a standing permit runs at most `standing_max_days`.

How days are counted: a leave from start to end lasts ceil((end - start) / 24 h) days,
counted from its start: day k is [start + k·24 h, start + (k+1)·24 h), so 2 h is one day
and 24 h 1 ms is two. A closed leave (销假) counts the days actually used: from its start
to the close (at least one day). Each day belongs to the calendar year (local time, UTC+8)
in which it begins, so a leave across New Year counts in both years and never twice.

Standing permits (recurring weekly hours for work travel until a date) are approved and
capped on their own: they do not count toward the yearly days, and they do not overlap
with ordinary leaves (a person with a work permit may still take a family trip).

Every refusal is one line an officer understands: Chinese first, then English.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

DAY_MS = 86_400_000
LOCAL_TIME = timezone(timedelta(hours=8))   # China Standard Time: calendar years and dates


@dataclass(frozen=True)
class Limits:
    """The `[leave]` settings the rules need (engine.config.Leave has the same fields)."""

    township_max_days: int = 7
    max_days: int = 30
    max_days_per_year: int = 60
    standing_max_days: int = 183
    four_eyes: bool = True
    record_past: bool = False     # a leave already over may be filed and approved (补录)

    @classmethod
    def of(cls, settings) -> "Limits":
        return cls(settings.township_max_days, settings.max_days, settings.max_days_per_year,
                   settings.standing_max_days, settings.four_eyes, settings.record_past)


@dataclass(frozen=True)
class Span:
    """An approved (or requested) leave as the caps see it: [start_ms, end_ms), where a
    closed leave ends at its close; `standing` for a recurring permit."""

    id: str
    start_ms: int
    end_ms: int
    standing: bool = False


def leave_days(start_ms: int, end_ms: int) -> int:
    """Whole days from start to end, counted up (at least 1)."""
    return max(1, -(-(end_ms - start_ms) // DAY_MS))


def days_by_year(start_ms: int, end_ms: int) -> dict[int, int]:
    """{calendar year (UTC+8): days of the leave beginning in it}; the values sum to
    `leave_days(start_ms, end_ms)`."""
    n = leave_days(start_ms, end_ms)
    first = int(local_date(start_ms)[:4])
    last = int(local_date(start_ms + (n - 1) * DAY_MS)[:4])
    years: dict[int, int] = {}
    for year in range(first, last + 1):   # days k with start + k·24 h in [year, year + 1)
        lo = max(0, _ceil_div(_year_start_ms(year) - start_ms, DAY_MS))
        hi = min(n, _ceil_div(_year_start_ms(year + 1) - start_ms, DAY_MS))
        if hi > lo:
            years[year] = hi - lo
    return years


def _year_start_ms(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=LOCAL_TIME).timestamp()) * 1000


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def local_date(t_ms: int) -> str:
    """"YYYY-MM-DD" of `t_ms` in local time (UTC+8)."""
    return datetime.fromtimestamp(t_ms / 1000, LOCAL_TIME).strftime("%Y-%m-%d")


def local_minute(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, LOCAL_TIME).strftime("%Y-%m-%d %H:%M")


# -- who approves -------------------------------------------------------------------------

def approver_office(subject_office: str, parent_of: Callable[[str], str | None], days: int,
                    standing: bool, limits: Limits) -> str:
    """The office that must approve: the supervising office up to `township_max_days`,
    else (and for a standing permit) its parent; an office without a parent (the top of
    the tree supervising someone directly) approves everything itself."""
    if days <= limits.township_max_days and not standing:
        return subject_office
    return parent_of(subject_office) or subject_office


CHAIN_GAP_MS = DAY_MS   # leaves less than a day apart are one absence for who approves it


def chained_days(leave: Span, others: Iterable[Span]) -> int:
    """Days of the absence `leave` belongs to: with the subject's ordinary leaves that
    overlap it or lie less than CHAIN_GAP_MS before or after it, transitively. Four
    back-to-back leaves of 7 days are an absence of 28, approved by the county, not four
    absences the township may approve one by one."""
    ordinary = [o for o in others if not o.standing and o.id != leave.id]
    lo, hi = leave.start_ms, leave.end_ms
    grown = True
    while grown:
        grown = False
        for o in ordinary:
            near = o.start_ms < hi + CHAIN_GAP_MS and o.end_ms > lo - CHAIN_GAP_MS
            if near and (o.start_ms < lo or o.end_ms > hi):
                lo, hi, grown = min(lo, o.start_ms), max(hi, o.end_ms), True
    return leave_days(lo, hi)


def may_approve(user_subtree: Iterable[str], approver: str) -> bool:
    """A user may approve for the approver office or any office above it: the approver
    lies in the user's subtree."""
    return approver in user_subtree


def authority_refusal(approver: str, approver_name: str, days: int, standing: bool,
                      limits: Limits) -> str:
    what = "长期外出许可" if standing else f"{days}天的请假"
    why = "a standing permit" if standing else f"a leave of {days} day(s)"
    if not standing and days > limits.township_max_days:
        why += f" (more than {limits.township_max_days})"
    return (f"{what}须由{approver_name}（{approver}）或上级审批 / "
            f"{why} is approved by {approver} or above")


def four_eyes_refusal(requested_by: str, approver_user: str, limits: Limits) -> str | None:
    """A refusal when four eyes are required and the approver is the requester."""
    if limits.four_eyes and requested_by == approver_user:
        return ("审批人不能是申请人本人（双人审核） / four eyes: the approver must be "
                "another user than the one who filed the request")
    return None


# -- caps ---------------------------------------------------------------------------------

def cap_refusals(leave: Span, approved: Iterable[Span], limits: Limits) -> list[str]:
    """Why `leave` may not be approved next to the subject's `approved` leaves (itself
    excluded by id); [] when it may."""
    approved = [a for a in approved if a.id != leave.id]
    days = leave_days(leave.start_ms, leave.end_ms)
    if leave.standing:
        refusals = []
        if days > limits.standing_max_days:
            refusals.append(f"长期外出许可最长{limits.standing_max_days}天，本次{days}天 / a "
                            f"standing permit runs at most {limits.standing_max_days} days "
                            f"(this one: {days})")
        refusals += _overlaps(leave, [a for a in approved if a.standing])
        return refusals
    refusals = []
    if days > limits.max_days:
        refusals.append(f"单次请假最长{limits.max_days}天，本次{days}天 / one leave lasts at "
                        f"most {limits.max_days} days (this one: {days})")
    ordinary = [a for a in approved if not a.standing]
    used: dict[int, int] = {}
    for a in ordinary:
        for year, n in days_by_year(a.start_ms, a.end_ms).items():
            used[year] = used.get(year, 0) + n
    for year, n in sorted(days_by_year(leave.start_ms, leave.end_ms).items()):
        if used.get(year, 0) + n > limits.max_days_per_year:
            refusals.append(
                f"{year}年已批准外出{used.get(year, 0)}天，再加本次{n}天将超过全年"
                f"{limits.max_days_per_year}天上限 / {used.get(year, 0)} approved day(s) in "
                f"{year} plus {n} would pass the yearly limit of {limits.max_days_per_year}")
    return refusals + _overlaps(leave, ordinary)


def _overlaps(leave: Span, others: list[Span]) -> list[str]:
    return [f"与已批准的请假 {o.id}（{local_minute(o.start_ms)} 至 {local_minute(o.end_ms)}）"
            f"时间重叠 / overlaps approved leave {o.id} ({local_minute(o.start_ms)} to "
            f"{local_minute(o.end_ms)}, UTC+8)"
            for o in sorted(others, key=lambda o: (o.start_ms, o.id))
            if o.start_ms < leave.end_ms and leave.start_ms < o.end_ms]


def days_used(year: int, approved: Iterable[Span]) -> int:
    """Approved days of ordinary leave in `year` (UTC+8), closed ones as used."""
    return sum(days_by_year(a.start_ms, a.end_ms).get(year, 0)
               for a in approved if not a.standing)
