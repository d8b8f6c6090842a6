"""A leave request's body (`POST /api/leaves`) read into checked values, every problem at
once, before anything is written.

    {subject, destinations: [codes], start_ms, end_ms, reason,
     recurring?: {days: [1-7], from: "HH:MM", to: "HH:MM"}, until_ms?}

An ordinary leave runs from `start_ms` to `end_ms`. A standing permit (`recurring`) runs
from `start_ms` until `until_ms` within its weekly hours (local time, UTC+8); `end_ms`
may be left out or must equal `until_ms`. Times are epoch milliseconds and are kept to the
whole second (rounded down): the registry's permits carry RFC 3339 times of whole seconds.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from alerts.registry import Recurring
from geofence.known_keys import unknown_keys

KEYS = ("subject", "destinations", "start_ms", "end_ms", "reason", "recurring", "until_ms")
RECURRING_KEYS = ("days", "from", "to")
MAX_REASON_CHARS = 2_000
MAX_DESTINATIONS = 50
MAX_CODE_CHARS = 64
MAX_MS = 2**53
WITHIN_MS = 2 * 366 * 86_400_000   # a leave's times lie within two years of now: further is
                                   # a typo (and the calendar-year counts need a real year)


@dataclass(frozen=True)
class LeaveRequest:
    subject: str
    destinations: tuple[str, ...]
    start_ms: int
    end_ms: int
    reason: str
    recurring: Recurring | None


def read_request(body: Mapping, is_place: Callable[[str], bool],
                 is_zone: Callable[[str], bool], now_ms: int, record_past: bool = False
                 ) -> tuple[LeaveRequest | None, list[str]]:
    """(the request, []) or (None, every problem of the body). A leave already over is
    refused unless `record_past` (`[leave] record_past`: recorded after the fact)."""
    problems = unknown_keys(body, KEYS, "the body")
    subject = body.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        problems.append("subject: 必填 / required: the subject's id")
        subject = ""
    destinations = _destinations(body.get("destinations"), is_place, is_zone, problems)
    start = _time(body, "start_ms", problems)
    recurring = _recurring(body.get("recurring"), problems)
    if body.get("recurring") is None:
        end = _time(body, "end_ms", problems)
        if body.get("until_ms") is not None:
            problems.append("until_ms: 仅用于长期外出许可 / only for a standing permit "
                            "(with recurring)")
    else:
        end = _time(body, "until_ms", problems)
        if body.get("end_ms") is not None and end is not None and \
                _time(body, "end_ms", problems) != end:
            problems.append("end_ms: 长期外出许可以 until_ms 为止 / a standing permit ends at "
                            "until_ms: leave end_ms out or give the same time")
    for key, value in (("start_ms", start), ("end_ms", end)):
        if value is not None and abs(value - now_ms) > WITHIN_MS:
            problems.append(f"{key}: 须在两年之内 / must lie within two years of now")
    if start is not None and end is not None and max(abs(start - now_ms),
                                                     abs(end - now_ms)) > WITHIN_MS:
        start = end = None   # reported above; the caps below need real dates
    if start is not None and end is not None:
        if end <= start:
            problems.append("结束时间须晚于开始时间 / the end must be after the start")
        elif end <= now_ms and not record_past:
            problems.append("请假时间已过 / the leave's end is already past")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        problems.append("reason: 请填写外出事由 / required: why the person travels")
        reason = ""
    elif len(reason) > MAX_REASON_CHARS:
        problems.append(f"reason: 最多{MAX_REASON_CHARS}字 / at most {MAX_REASON_CHARS} "
                        "characters")
    if problems:
        return None, problems
    return LeaveRequest(subject.strip(), destinations, start, end, reason.strip(),
                        recurring), []


def _destinations(value, is_place, is_zone, problems) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_DESTINATIONS or not all(
            isinstance(v, str) and 0 < len(v.strip()) <= MAX_CODE_CHARS for v in value):
        problems.append(f"destinations: 须为1至{MAX_DESTINATIONS}个行政区划或区域代码 / "
                        f"must be an array of 1..{MAX_DESTINATIONS} jurisdiction or zone codes")
        return ()
    codes = tuple(dict.fromkeys(v.strip() for v in value))
    for code in codes:
        if not (is_place(code) or is_zone(code)):
            problems.append(f"destinations: 未知的行政区划或区域代码 {code!r} / unknown "
                            f"jurisdiction or zone code {code!r}")
    return codes


def _time(body, key, problems) -> int | None:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MS:
        problems.append(f"{key}: 须为毫秒时间戳 / must be a time in epoch milliseconds")
        return None
    return value // 1000 * 1000


def _recurring(value, problems) -> Recurring | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append("recurring: 须为 {days, from, to} / must be an object {days, from, to}")
        return None
    problems += unknown_keys(value, RECURRING_KEYS, "recurring")
    days = value.get("days")
    if not isinstance(days, list) or not days or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in days):
        problems.append("recurring days: 须为星期1至7 / must be weekdays 1 (Monday) .. 7 "
                        "(Sunday)")
        days = None
    start, end = _minutes(value.get("from"), "from", problems), \
        _minutes(value.get("to"), "to", problems)
    if start is not None and end is not None and end <= start:
        problems.append("recurring: 结束时刻须晚于开始时刻 / to must be after from")
        return None
    if days is None or start is None or end is None:
        return None
    return Recurring(tuple(sorted(set(days))), start, end)


def _minutes(value, key, problems) -> int | None:
    """Minutes after local midnight of "HH:MM" (00:00 .. 24:00)."""
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
            raise ValueError
        total = int(hours) * 60 + int(minutes)
        if int(minutes) < 60 and total <= 24 * 60:
            return total
    except (AttributeError, ValueError):
        pass
    problems.append(f"recurring {key}: 须为\"HH:MM\" / must be a time \"HH:MM\"")
    return None
