"""The registry (SPEC §2, §3): offices, subjects, permits, delegations.

`import_document` is an atomic upsert: every reference in the document is checked against
the document itself plus what is already stored, all problems are reported together
(`RegistryError.problems`), and on any problem nothing changes. Entities are keyed by
office `code`, subject `id`, and permit/delegation `id` (optional in the file: defaults to
``"<subject>@<start>"``). A subject's index (`Subject.index`) is assigned once, on first
import, and never reused: the compiled stages address subjects by it.
"""

import json
import sqlite3
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from functools import cached_property
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.database import Schema, connect, run_script, transaction
from geofence.errors import GeofenceError
from geofence.known_keys import unknown_keys
from ingest.protocol import MAX_DEVICE_CHARS

RISKS = ("normal", "key")
LEVELS = ("normal", "strict", "loose")   # 普管 (the default), 严管, 宽管 (SPEC §11)
CATEGORIES = ("probation", "parole", "medical_parole", "control")
KINDS = ("offices", "subjects", "permits", "delegations", "key_periods")
# The keys an entry of each kind may have (SPEC §3); any other is refused, never ignored.
ENTRY_KEYS = {
    "offices": ("code", "name", "parent"),
    "subjects": ("id", "devices", "office", "home", "exclusions", "risk", "category", "level",
                 "ended", "curfews", "night_watch", "cases"),
    "permits": ("id", "subject", "start", "end", "destinations", "office", "source",
                "recurring"),
    "delegations": ("id", "subject", "start", "end", "office", "home"),
    "key_periods": ("id", "name", "start", "end", "offices", "levels"),
}


Touched = dict[str, set[str]]   # kind -> keys of the entities a change wrote


class RegistryError(GeofenceError, ValueError):
    """A registry document has problems; `problems` lists them all. Nothing was changed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s): {shown}{more}")


@dataclass(frozen=True)
class Office:
    code: str
    name: str
    parent: str | None = None


@dataclass(frozen=True)
class Subject:
    id: str
    devices: tuple[str, ...]
    office: str
    home: tuple[str, ...]
    exclusions: tuple[str, ...] = ()
    risk: str = "normal"
    category: str = "probation"
    index: int = -1
    level: str = "normal"
    ended_ms: int | None = None     # supervision ended (no alarms from then on; data kept)
    curfews: tuple["Curfew", ...] = ()   # 宵禁: be inside a zone (home) in these hours
    night_watch: bool = False       # 昼伏夜出: watched for repeated nights away from home
    cases: tuple[str, ...] = ()     # case ids (同案犯: sharing one links two people, gathering)

    def supervised_at(self, t_ms: int) -> bool:
        return self.ended_ms is None or t_ms < self.ended_ms


@dataclass(frozen=True)
class Recurring:
    """A standing permit's weekly window: ISO weekdays (1 Monday .. 7 Sunday) and local
    hours `from_min` .. `to_min` (minutes after local midnight, from < to)."""

    days: tuple[int, ...]
    from_min: int
    to_min: int

    def to_document(self) -> dict:
        return {"days": list(self.days), "from": _hhmm(self.from_min),
                "to": _hhmm(self.to_min)}


@dataclass(frozen=True)
class Curfew:
    """A curfew (宵禁): inside `zone` (None: home) from `from_min` to `to_min` local time
    (minutes after midnight, UTC+8; to < from crosses midnight), on ISO weekdays `days`
    (the day the window starts)."""

    from_min: int
    to_min: int
    days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    zone: str | None = None

    def to_document(self) -> dict:
        return _clean({"from": _hhmm(self.from_min), "to": _hhmm(self.to_min),
                       "days": list(self.days), "zone": self.zone})


@dataclass(frozen=True)
class KeyPeriod:
    """A key period (重大活动/敏感节点): from `start_ms` to `end_ms` the subjects of
    `offices` (and their subtrees) at one of `levels` are judged by the strict rules."""

    id: str
    name: str
    start_ms: int
    end_ms: int
    offices: tuple[str, ...]
    levels: tuple[str, ...] = LEVELS

    def active_at(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < self.end_ms

    def to_document(self) -> dict:
        return {"id": self.id, "name": self.name, "start": _rfc3339(self.start_ms),
                "end": _rfc3339(self.end_ms), "offices": list(self.offices),
                "levels": list(self.levels)}


@dataclass(frozen=True)
class Permit:
    """A permit (外出审批): destinations count as home from start to end; a standing
    permit (`recurring`) only within its weekly hours. `source` says where it came from:
    "import" (a registry document) or "leave:<id>" (approved on the desk)."""

    id: str
    subject: str
    start_ms: int
    end_ms: int
    destinations: tuple[str, ...]
    office: str
    source: str = "import"
    recurring: Recurring | None = None


@dataclass(frozen=True)
class Delegation:
    id: str
    subject: str
    start_ms: int
    end_ms: int | None
    office: str
    home: tuple[str, ...]

    def active_at(self, t_ms: int) -> bool:
        """Half-open: from `start_ms` up to, not including, `end_ms` (None: no end)."""
        return self.start_ms <= t_ms and (self.end_ms is None or t_ms < self.end_ms)


def active_delegation(delegations: Iterable[Delegation], t_ms: int) -> Delegation | None:
    """The delegation of one subject in force at `t_ms`: of overlapping ones, the latest
    started; of those starting together, the larger id. Alarm routing and the desk's view
    of who supervises a person both ask this one function."""
    active = [d for d in delegations if d.active_at(t_ms)]
    return max(active, key=lambda d: (d.start_ms, d.id)) if active else None


@dataclass(frozen=True)
class Registry:
    """A consistent snapshot; `version` grows with every import."""

    offices: dict[str, Office] = field(default_factory=dict)
    subjects: dict[str, Subject] = field(default_factory=dict)
    permits: dict[str, Permit] = field(default_factory=dict)
    delegations: dict[str, Delegation] = field(default_factory=dict)
    key_periods: dict[str, KeyPeriod] = field(default_factory=dict)
    version: int = 0

    @cached_property
    def device_owner(self) -> dict[str, str]:
        """device -> the id of the subject holding it."""
        return {d: s.id for s in self.subjects.values() for d in s.devices}

    @cached_property
    def next_index(self) -> int:
        """The index the next new subject gets (indices are never reused)."""
        return max((s.index for s in self.subjects.values()), default=-1) + 1

    def root_office(self) -> str:
        """The office at the top of the tree (feed_outage and engine_fault go there)."""
        roots = sorted(o.code for o in self.offices.values() if not o.parent)
        return roots[0] if roots else ""

    def office_path(self, code: str) -> list[str]:
        """Office codes from the root down to `code` (the PUB topic of SPEC §7)."""
        path = []
        seen = set()
        while code and code not in seen:
            seen.add(code)
            path.append(code)
            code = self.offices[code].parent if code in self.offices else None
        return path[::-1]

    def to_document(self) -> dict:
        """The registry in the import format (SPEC §3)."""
        return {
            "offices": [_clean(asdict(o)) for o in self.offices.values()],
            "subjects": [_subject_document(s) for s in self.subjects.values()],
            "permits": [_clean({"id": p.id, "subject": p.subject, "start": _rfc3339(p.start_ms),
                                "end": _rfc3339(p.end_ms), "destinations": list(p.destinations),
                                "office": p.office, "source": p.source,
                                "recurring": p.recurring.to_document() if p.recurring else None})
                        for p in self.permits.values()],
            "delegations": [_clean({"id": d.id, "subject": d.subject,
                                    "start": _rfc3339(d.start_ms),
                                    "end": _rfc3339(d.end_ms) if d.end_ms is not None else None,
                                    "office": d.office, "home": list(d.home)})
                            for d in self.delegations.values()],
            "key_periods": [k.to_document() for k in self.key_periods.values()],
        }


def parse_document(doc: Any, current: Registry, is_place: Callable[[str], bool],
                   is_zone: Callable[[str], bool]) -> Registry:
    """The registry after upserting `doc` into `current`, or RegistryError with every problem.

    `is_place(code)`: a jurisdiction code of the layer (any level); `is_zone(code)`: a zone.
    """
    return parse_changes(doc, current, is_place, is_zone).applied_to(current, in_place=False)


@dataclass(frozen=True)
class Parsed:
    """A checked document: the entities it writes (`pending`, by kind and key), which keys
    those are (`touched`), and the next free subject index after it."""

    pending: dict[str, dict]
    touched: Touched
    next_index: int

    def preview(self, current: Registry) -> Registry:
        """The registry after the change, read-only, without copying: overlays of the
        pending entities on `current` (for an `also` hook inside the transaction)."""
        maps = [ChainMap(self.pending[k], getattr(current, k)) for k in KINDS]
        return Registry(*maps, current.version + 1)

    def applied_to(self, current: Registry, in_place: bool) -> Registry:
        """The registry after the change: `current` copied, or (`in_place`: a store's
        cache after its commit) updated in place, so that one change costs the same on a
        national registry as on a county's. The device index is carried over either way."""
        owner = current.device_owner if in_place else dict(current.device_owner)
        for sid in self.touched["subjects"]:
            for d in current.subjects[sid].devices if sid in current.subjects else ():
                owner.pop(d, None)
        maps = {k: getattr(current, k) if in_place else dict(getattr(current, k))
                for k in KINDS}
        for kind in KINDS:
            maps[kind].update(self.pending[kind])
        for sid in self.touched["subjects"]:
            owner.update(dict.fromkeys(maps["subjects"][sid].devices, sid))
        new = Registry(*(maps[k] for k in KINDS), current.version + 1)
        new.__dict__["device_owner"] = owner          # carried over, not rebuilt
        new.__dict__["next_index"] = self.next_index
        return new


def parse_changes(doc: Any, current: Registry, is_place: Callable[[str], bool],
                  is_zone: Callable[[str], bool]) -> Parsed:
    """Check `doc` against `current` without changing it (RegistryError with every
    problem). Only the entities it writes are checked, with what they refer to, and
    nothing is copied: one change costs the same on any registry."""
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise RegistryError(["the document is not a JSON object"])
    problems += unknown_keys(doc, KINDS, "the document")
    # Overlays: writes land in the first map, lookups fall through to the registry.
    offices = ChainMap({}, current.offices)
    subjects = ChainMap({}, current.subjects)
    permits = ChainMap({}, current.permits)
    delegations = ChainMap({}, current.delegations)
    seen: dict[str, set[str]] = {k: set() for k in KINDS}

    for where, raw in _entries(doc, "offices", problems):
        code = _text(raw, "code", where, problems)
        name = _text(raw, "name", where, problems)
        parent = _text(raw, "parent", where, problems, required=False)
        if code and _once(seen["offices"], code, where, problems):
            offices[code] = Office(code, name or code, parent)

    for where, raw in _entries(doc, "subjects", problems):
        sid = _text(raw, "id", where, problems)
        devices = _codes(raw, "devices", where, problems)
        for d in devices:
            if not 1 <= len(d) <= MAX_DEVICE_CHARS or "\x00" in d:
                problems.append(f"{where}: device {d!r} must have 1..{MAX_DEVICE_CHARS} "
                                "characters, none of them NUL")
        risk = _choice(raw, "risk", RISKS, where, problems)
        category = _choice(raw, "category", CATEGORIES, where, problems)
        level = _choice(raw, "level", LEVELS, where, problems)
        ended = _time(raw, "ended", where, problems, required=False)
        subject = Subject(sid or "", tuple(devices), _text(raw, "office", where, problems) or "",
                          tuple(_codes(raw, "home", where, problems)),
                          tuple(_codes(raw, "exclusions", where, problems, required=False)),
                          risk, category,
                          subjects[sid].index if sid in subjects else -1, level, ended,
                          _curfews(raw, where, problems), _flag(raw, "night_watch", where,
                                                                problems),
                          _cases(raw, where, problems))
        if sid and _once(seen["subjects"], sid, where, problems):
            subjects[sid] = subject

    for where, raw in _entries(doc, "permits", problems):
        sid = _text(raw, "subject", where, problems)
        start, end = _time(raw, "start", where, problems), _time(raw, "end", where, problems)
        pid = _text(raw, "id", where, problems, required=False) or f"{sid}@{raw.get('start')}"
        if start is not None and end is not None and end <= start:
            problems.append(f"{where}: end is not after start")
        permit = Permit(pid, sid or "", start or 0, end or 0,
                        tuple(_codes(raw, "destinations", where, problems)),
                        _text(raw, "office", where, problems) or "",
                        _text(raw, "source", where, problems, required=False) or "import",
                        _recurring(raw, where, problems))
        if _once(seen["permits"], pid, where, problems):
            permits[pid] = permit

    for where, raw in _entries(doc, "delegations", problems):
        sid = _text(raw, "subject", where, problems)
        start = _time(raw, "start", where, problems)
        end = _time(raw, "end", where, problems, required=False)
        did = _text(raw, "id", where, problems, required=False) or f"{sid}@{raw.get('start')}"
        if start is not None and end is not None and end <= start:
            problems.append(f"{where}: end is not after start")
        delegation = Delegation(did, sid or "", start or 0, end,
                                _text(raw, "office", where, problems) or "",
                                tuple(_codes(raw, "home", where, problems)))
        if _once(seen["delegations"], did, where, problems):
            delegations[did] = delegation

    key_periods = ChainMap({}, current.key_periods)
    for where, raw in _entries(doc, "key_periods", problems):
        period = _key_period(raw, where, problems)
        if period is not None and _once(seen["key_periods"], period.id, where, problems):
            key_periods[period.id] = period

    problems += _check_references(offices, subjects, permits, delegations, is_place, is_zone,
                                   seen, current.device_owner)
    problems += _check_key_periods(key_periods, offices, seen["key_periods"])
    if problems:
        raise RegistryError(problems)
    next_index = current.next_index
    for sid in sorted(s for s in seen["subjects"] if subjects[s].index < 0):
        subjects[sid] = _with_index(subjects[sid], next_index)
        next_index += 1
    pending = {"offices": offices.maps[0], "subjects": subjects.maps[0],
               "permits": permits.maps[0], "delegations": delegations.maps[0],
               "key_periods": key_periods.maps[0]}
    return Parsed(pending, seen, next_index)


def _check_references(offices, subjects, permits, delegations, is_place, is_zone,
                      touched: Touched, owner_before: dict[str, str]) -> list[str]:
    """Problems of the touched entities: what they name must exist, devices stay unique."""
    problems = []
    for code in sorted(touched["offices"]):
        o = offices[code]
        if o.parent and o.parent not in offices:
            problems.append(f"office {o.code}: unknown parent office {o.parent!r}")
    problems += [f"offices: parent cycle through {c!r}"
                 for c in _office_cycles(offices, touched["offices"])]
    owner: dict[str, str] = {}
    for sid in sorted(touched["subjects"]):
        s = subjects[sid]
        if s.office not in offices:
            problems.append(f"subject {s.id}: unknown office {s.office!r}")
        for code in s.home:
            if not is_place(code):
                problems.append(f"subject {s.id}: unknown jurisdiction code {code!r} in home")
        if not s.home:
            problems.append(f"subject {s.id}: home is empty")
        for code in s.exclusions:
            if not is_zone(code):
                problems.append(f"subject {s.id}: unknown zone code {code!r} in exclusions")
        for c in s.curfews:
            if c.zone is not None and not is_zone(c.zone):
                problems.append(f"subject {s.id}: unknown zone code {c.zone!r} in curfews")
        for d in s.devices:
            other = owner.get(d)
            if other is None:
                before = owner_before.get(d)
                if before is not None and before != s.id and before not in touched["subjects"]:
                    other = before
            if other is not None and other != s.id:
                problems.append(f"device {d!r} is claimed by subjects {other} and {s.id}")
            owner.setdefault(d, s.id)
    for pid in sorted(touched["permits"]):
        p = permits[pid]
        if p.subject not in subjects:
            problems.append(f"permit {p.id}: unknown subject {p.subject!r}")
        if p.office not in offices:
            problems.append(f"permit {p.id}: unknown office {p.office!r}")
        for code in p.destinations:
            if not (is_place(code) or is_zone(code)):
                problems.append(f"permit {p.id}: unknown jurisdiction or zone code {code!r}")
    for did in sorted(touched["delegations"]):
        d = delegations[did]
        if d.subject not in subjects:
            problems.append(f"delegation {d.id}: unknown subject {d.subject!r}")
        if d.office not in offices:
            problems.append(f"delegation {d.id}: unknown office {d.office!r}")
        for code in d.home:
            if not is_place(code):
                problems.append(f"delegation {d.id}: unknown jurisdiction code {code!r} in home")
    return problems


def _office_cycles(offices: dict[str, Office], starts: Iterable[str]) -> list[str]:
    """Offices on a parent cycle reachable from `starts` (a new cycle passes a touched one)."""
    cycles, done = [], set()
    for start in sorted(starts):
        path, code = [], start
        while code in offices and code not in done and code not in path:
            path.append(code)
            code = offices[code].parent
        if code in path:
            cycles.append(code)
        done.update(path)
    return cycles


def _entries(doc, kind, problems) -> Iterable[tuple[str, Mapping]]:
    """(where, entry) of each object in `doc[kind]`, where as `subjects[3] (id S-17)`;
    its unknown keys are noted as problems."""
    items = doc.get(kind, [])
    if not isinstance(items, list):
        problems.append(f"{kind} must be an array")
        return []
    good = []
    for n, raw in enumerate(items):
        if isinstance(raw, Mapping):
            where = _label(kind, n, raw)
            problems += unknown_keys(raw, ENTRY_KEYS[kind], where)
            good.append((where, raw))
        else:
            problems.append(f"{kind}[{n}] is not an object")
    return good


def _label(kind: str, n: int, raw: Mapping) -> str:
    """`subjects[3] (id S-17)`: the entry's place, and its key when it has a usable one."""
    key = "code" if kind == "offices" else "id"
    value = raw.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip() and value.isprintable() and len(value) <= 60:
        return f"{kind}[{n}] ({key} {value.strip()})"
    return f"{kind}[{n}]"


def _text(raw, key, where, problems, required=True) -> str | None:
    value = raw.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {key} is missing or not a non-empty string")
        return None
    return value.strip()


def _codes(raw, key, where, problems, required=True) -> list[str]:
    value = raw.get(key, None if required else [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                              for v in value):
        problems.append(f"{where}: {key} must be an array of codes")
        return []
    return [str(v) for v in value]


def _choice(raw, key, allowed, where, problems) -> str:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        problems.append(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")
        return allowed[0]
    return value


def _time(raw, key, where, problems, required=True) -> int | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError
        return int(moment.timestamp() * 1000)
    except (TypeError, ValueError):
        problems.append(f"{where}: {key} must be an RFC 3339 time with a zone, not {value!r}")
        return None


MAX_CASE_CHARS = 128


def _cases(raw, where, problems) -> tuple[str, ...]:
    """A subject's `cases`: distinct case ids (同案犯), each a non-empty id of at most
    MAX_CASE_CHARS characters; sorted, so that an export reads back equal."""
    cases = _codes(raw, "cases", where, problems, required=False)
    bad = [c for c in cases if not c.strip() or len(c) > MAX_CASE_CHARS or c != c.strip()]
    if bad:
        problems.append(f"{where}: cases {bad!r} must be ids of 1..{MAX_CASE_CHARS} "
                        "characters without surrounding spaces")
    if len(set(cases)) != len(cases):
        problems.append(f"{where}: cases lists a case twice")
    return tuple(sorted(set(cases)))


def _once(seen: set, key: str, where: str, problems: list[str]) -> bool:
    if key in seen:
        problems.append(f"{where}: {key!r} appears twice in the document")
        return False
    seen.add(key)
    return True


def _with_index(s: Subject, index: int) -> Subject:
    return replace(s, index=index)


RECURRING_KEYS = ("days", "from", "to")


def _recurring(raw, where, problems) -> Recurring | None:
    """A standing permit's `recurring: {days: [1-7], from: "HH:MM", to: "HH:MM"}`."""
    value = raw.get("recurring")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"{where}: recurring must be an object {{days, from, to}}")
        return None
    problems += unknown_keys(value, RECURRING_KEYS, f"{where}: recurring")
    days = value.get("days")
    if not isinstance(days, list) or not days or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in days):
        problems.append(f"{where}: recurring days must be a non-empty array of weekdays "
                        "1 (Monday) .. 7 (Sunday)")
        days = [1]
    start, end = _minutes(value.get("from"), where, "from", problems), \
        _minutes(value.get("to"), where, "to", problems)
    if start is not None and end is not None and end <= start:
        problems.append(f"{where}: recurring to is not after from")
    if start is None or end is None:
        return None
    return Recurring(tuple(sorted(set(days))), start, end)


CURFEW_KEYS = ("from", "to", "days", "zone")
KEY_PERIOD_MAX_DAYS = 366


def _curfews(raw, where, problems) -> tuple[Curfew, ...]:
    """A subject's `curfews: [{from: "HH:MM", to: "HH:MM", days?: [1-7], zone?}]`."""
    value = raw.get("curfews")
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: curfews must be an array of {{from, to, days, zone}}")
        return ()
    curfews = []
    for n, item in enumerate(value):
        at = f"{where}: curfews[{n}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at} is not an object {{from, to, days, zone}}")
            continue
        problems += unknown_keys(item, CURFEW_KEYS, at)
        days = item.get("days", [1, 2, 3, 4, 5, 6, 7])
        if not isinstance(days, list) or not days or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in days):
            problems.append(f"{at}: days must be a non-empty array of weekdays 1 (Monday) "
                            ".. 7 (Sunday)")
            days = [1]
        start = _minutes(item.get("from"), at, "from", problems, "curfew")
        end = _minutes(item.get("to"), at, "to", problems, "curfew")
        if start is not None and end is not None and start % 1440 == end % 1440:
            problems.append(f"{at}: from and to are the same time")
        zone = item.get("zone")
        if zone is not None and (not isinstance(zone, str) or not zone.strip()):
            problems.append(f"{at}: zone must be a zone code")
            zone = None
        if start is not None and end is not None:
            curfews.append(Curfew(start % 1440, end % 1440, tuple(sorted(set(days))),
                                  zone.strip() if zone else None))
    return tuple(curfews)


def _flag(raw, key, where, problems) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        problems.append(f"{where}: {key} must be true or false, not {value!r}")
        return False
    return value


def _key_period(raw, where, problems) -> KeyPeriod | None:
    """A key period `{id, name, start, end, offices, levels?}` (重大活动/敏感节点)."""
    pid = _text(raw, "id", where, problems)
    name = _text(raw, "name", where, problems)
    start, end = _time(raw, "start", where, problems), _time(raw, "end", where, problems)
    if start is not None and end is not None:
        if end <= start:
            problems.append(f"{where}: end is not after start")
        elif end - start > KEY_PERIOD_MAX_DAYS * 86_400_000:
            problems.append(f"{where}: a key period lasts at most {KEY_PERIOD_MAX_DAYS} days")
    offices = _codes(raw, "offices", where, problems)
    if "offices" in raw and not offices:
        problems.append(f"{where}: offices is empty")
    levels = raw.get("levels", list(LEVELS))
    if not isinstance(levels, list) or not levels or not all(v in LEVELS for v in levels):
        problems.append(f"{where}: levels must be a non-empty array of {', '.join(LEVELS)}")
        levels = list(LEVELS)
    if pid is None or name is None or start is None or end is None:
        return None
    return KeyPeriod(pid, name, start, end, tuple(offices),
                     tuple(v for v in LEVELS if v in levels))


def _check_key_periods(periods, offices, touched: set[str]) -> list[str]:
    return [f"key period {pid}: unknown office {code!r}" for pid in sorted(touched)
            for code in periods[pid].offices if code not in offices]


def _minutes(value, where, key, problems, what="recurring") -> int | None:
    """Minutes after midnight of "HH:MM" (00:00 .. 24:00)."""
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        total = int(hours) * 60 + int(minutes)
        if not (0 <= int(minutes) < 60 and 0 <= total <= 24 * 60):
            raise ValueError
        return total
    except (AttributeError, ValueError):
        problems.append(f"{where}: {what} {key} must be a time \"HH:MM\", not {value!r}")
        return None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _subject_document(s: Subject) -> dict:
    doc = {k: v for k, v in asdict(s).items() if k not in ("index", "ended_ms")}
    doc["ended"] = _rfc3339(s.ended_ms) if s.ended_ms is not None else None
    doc["curfews"] = [c.to_document() for c in s.curfews] or None
    doc["night_watch"] = s.night_watch or None
    doc["cases"] = s.cases or None   # none: left out, as before cases existed
    return _clean(doc)


def _rfc3339(ms: int) -> str:
    from datetime import timezone
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def _clean(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}


def _subject_of(d: dict) -> Subject:
    """A stored subject (documents written before levels existed have none)."""
    return Subject(d["id"], tuple(d["devices"]), d["office"], tuple(d["home"]),
                   tuple(d["exclusions"]), d["risk"], d["category"], d["index"],
                   d.get("level", "normal"), d.get("ended_ms"),
                   tuple(Curfew(c["from_min"], c["to_min"], tuple(c["days"]), c["zone"])
                         for c in d.get("curfews", ())), d.get("night_watch", False),
                   tuple(d.get("cases", ())))


def _permit_of(d: dict) -> Permit:
    recurring = d.get("recurring")
    return Permit(d["id"], d["subject"], d["start_ms"], d["end_ms"], tuple(d["destinations"]),
                  d["office"], d.get("source", "import"),
                  Recurring(tuple(recurring["days"]), recurring["from_min"],
                            recurring["to_min"]) if recurring else None)


def _version_1(db: sqlite3.Connection) -> None:
    """One JSON document per entity, and the registry's version in `meta`."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS registry (kind TEXT, key TEXT, doc TEXT,
            PRIMARY KEY (kind, key));
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)""")


def _version_2(db: sqlite3.Connection) -> None:
    """The change log: which entities each version changed, so that a reader holding
    version v reads only what changed since (a national registry is 700,000 subjects)."""
    run_script(db, """
        CREATE TABLE changes (version INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL);
        CREATE INDEX changes_version ON changes (version);
        INSERT OR REPLACE INTO meta
            SELECT 'changes_from', COALESCE((SELECT value FROM meta WHERE key='version'), 0)""")


def _version_3(db: sqlite3.Connection) -> None:
    """Leaves requested on the desk and every step taken on them (owned by
    `supervision.leave_store`): kept in this file so that an approval writes the leave and
    its permit in one transaction."""
    run_script(db, """
        CREATE TABLE leaves (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,
            office TEXT NOT NULL, destinations TEXT NOT NULL, start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL, recurring TEXT, reason TEXT NOT NULL,
            status TEXT NOT NULL, approver TEXT NOT NULL, requested_by TEXT NOT NULL,
            requested_ms INTEGER NOT NULL, closed_ms INTEGER, permit TEXT);
        CREATE INDEX leaves_subject ON leaves (subject, start_ms);
        CREATE INDEX leaves_status ON leaves (status);
        CREATE TABLE leave_steps (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            leave_id INTEGER NOT NULL, action TEXT NOT NULL, user TEXT NOT NULL,
            office TEXT NOT NULL, at_ms INTEGER NOT NULL, note TEXT NOT NULL);
        CREATE INDEX leave_steps_leave ON leave_steps (leave_id, seq)""")


SCHEMA = Schema("registry", marker="registry", steps=(_version_1, _version_2, _version_3))
KEEP_CHANGES = 10_000   # versions of change log kept; a reader further behind reloads all



@dataclass(frozen=True)
class RegistryChange:
    """What changed between two versions: the new snapshot and the touched keys."""

    registry: Registry
    touched: Touched

    def keys(self, kind: str) -> set[str]:
        return self.touched.get(kind, set())


class RegistryStore:
    """The registry in its own SQLite file: one JSON document per entity, imported atomically.

    The newest snapshot is cached; `load` and `changes_since` read only the entities
    changed since the cached version (the change log), never the whole file again.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._db = connect(self.path, SCHEMA, sync="full")   # imports are rare: fsync them
        self._cached: Registry | None = None

    def close(self) -> None:
        self._db.close()

    def version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return int(row[0]) if row else 0

    def load(self) -> Registry:
        """The current registry (cached; only what changed since is read)."""
        change = self.changes_since(self._cached.version if self._cached else -1)
        return change.registry if change is not None else self._cached

    def changes_since(self, version: int) -> RegistryChange | None:
        """None if the registry is still at `version`; else the registry now and the keys
        touched after `version` (every key when the log does not reach back that far)."""
        with _reading(self._db):   # version, log and rows from one snapshot
            now = self.version()
            if version == now and self._cached is not None:
                return None
            cached, covered_from = self._cached, self._log_start()
            if cached is not None and cached.version == now:
                registry = cached
            elif cached is not None and covered_from <= cached.version < now:
                registry = self._read_changes(cached, self._touched(cached.version), now)
            else:
                registry = self._read_all(now)
            self._cached = registry
            if version == now:
                return None
            if covered_from <= version < now:
                touched = self._touched(version)
            else:
                touched = {k: set(getattr(registry, k)) for k in KINDS}
            return RegistryChange(registry, touched)

    def _log_start(self) -> int:
        """The change log holds every change after this version."""
        row = self._db.execute("SELECT value FROM meta WHERE key='changes_from'").fetchone()
        return int(row[0]) if row else self.version()

    def _touched(self, after: int) -> Touched:
        touched: Touched = {k: set() for k in KINDS}
        for kind, key in self._db.execute("SELECT kind, key FROM changes WHERE version > ?",
                                          (after,)):
            touched[kind].add(key)
        return touched

    def _read_all(self, version: int) -> Registry:
        docs: dict[str, list[Any]] = {k: [] for k in KINDS}
        for kind, doc in self._db.execute("SELECT kind, doc FROM registry ORDER BY rowid"):
            docs[kind].append(json.loads(doc))
        return _registry_of(docs, {}, version)

    def _read_changes(self, cached: Registry, touched: Touched, version: int) -> Registry:
        docs: dict[str, list[Any]] = {k: [] for k in KINDS}
        for kind, keys in touched.items():
            for key in keys:
                row = self._db.execute("SELECT doc FROM registry WHERE kind=? AND key=?",
                                       (kind, key)).fetchone()
                if row is not None:
                    docs[kind].append(json.loads(row[0]))
        owner = cached.__dict__.get("device_owner")      # carried over when it was built
        if owner is not None:
            for d in docs["subjects"]:
                old = cached.subjects.get(d["id"])
                for device in old.devices if old is not None else ():
                    owner.pop(device, None)
        next_index = cached.__dict__.get("next_index")
        registry = _registry_of(docs, {k: getattr(cached, k) for k in KINDS}, version)
        if owner is not None:
            for d in docs["subjects"]:
                owner.update(dict.fromkeys(d["devices"], d["id"]))
            registry.__dict__["device_owner"] = owner
        if next_index is not None:
            registry.__dict__["next_index"] = max(
                [next_index] + [d["index"] + 1 for d in docs["subjects"]])
        return registry

    def import_document(self, doc: Any, is_place, is_zone,
                        also: Callable[[sqlite3.Connection, Registry], None] | None = None
                        ) -> Registry:
        """Upsert `doc`; raises RegistryError (nothing changed) on any problem.

        `also(db, new_registry)` runs inside the same transaction after validation (the
        leave that becomes a permit is written with it); an exception from it undoes all.
        """
        with transaction(self._db) as db:
            current = self.load()
            parsed = parse_changes(doc, current, is_place, is_zone)
            version = current.version + 1
            rows = [(kind, key, asdict(parsed.pending[kind][key]))
                    for kind, keys in parsed.touched.items() for key in sorted(keys)]
            db.executemany("INSERT OR REPLACE INTO registry VALUES (?, ?, ?)",
                           [(k, key, json.dumps(v, ensure_ascii=False)) for k, key, v in rows])
            db.executemany("INSERT INTO changes VALUES (?, ?, ?)",
                           [(version, kind, key) for kind, key, _ in rows])
            if version % 1000 == 0 and version > KEEP_CHANGES:
                trim = version - KEEP_CHANGES
                db.execute("DELETE FROM changes WHERE version <= ?", (trim,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('changes_from', ?)", (trim,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (version,))
            if also is not None:
                also(db, parsed.preview(current))
        self._cached = parsed.applied_to(current, in_place=True)   # committed: now in place
        return self._cached


@contextmanager
def _reading(db: sqlite3.Connection):
    """A read transaction (deferred: takes no write lock), or the one already open."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def _registry_of(docs: dict[str, list[Any]], base: dict[str, dict], version: int) -> Registry:
    """The stored documents `docs` over `base` (kind -> entities, updated in place; the
    registry it came from is superseded, nobody reads an old snapshot's dicts again)."""
    parsed = {
        "offices": {d["code"]: Office(d["code"], d["name"], d["parent"])
                    for d in docs["offices"]},
        "subjects": {d["id"]: _subject_of(d) for d in docs["subjects"]},
        "permits": {d["id"]: _permit_of(d) for d in docs["permits"]},
        "delegations": {d["id"]: Delegation(d["id"], d["subject"], d["start_ms"], d["end_ms"],
                                            d["office"], tuple(d["home"]))
                        for d in docs["delegations"]},
        "key_periods": {d["id"]: KeyPeriod(d["id"], d["name"], d["start_ms"], d["end_ms"],
                                           tuple(d["offices"]), tuple(d["levels"]))
                        for d in docs.get("key_periods", ())},
    }
    if not base:
        return Registry(*(parsed[k] for k in KINDS), version)
    for kind in KINDS:   # a reader's cache follows the file in place (one change: O(change))
        base[kind].update(parsed[kind])
    return Registry(*(base[k] for k in KINDS), version)
