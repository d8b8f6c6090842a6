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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.database import Schema, connect, run_script, transaction
from geofence.errors import GeofenceError
from geofence.known_keys import unknown_keys
from ingest.protocol import MAX_DEVICE_CHARS

RISKS = ("normal", "key")
CATEGORIES = ("probation", "parole", "medical_parole", "control")
KINDS = ("offices", "subjects", "permits", "delegations")
# The keys an entry of each kind may have (SPEC §3); any other is refused, never ignored.
ENTRY_KEYS = {
    "offices": ("code", "name", "parent"),
    "subjects": ("id", "devices", "office", "home", "exclusions", "risk", "category"),
    "permits": ("id", "subject", "start", "end", "destinations", "office"),
    "delegations": ("id", "subject", "start", "end", "office", "home"),
}


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


@dataclass(frozen=True)
class Permit:
    id: str
    subject: str
    start_ms: int
    end_ms: int
    destinations: tuple[str, ...]
    office: str


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
    version: int = 0

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
            "subjects": [_clean({k: v for k, v in asdict(s).items() if k != "index"})
                         for s in self.subjects.values()],
            "permits": [_clean({"id": p.id, "subject": p.subject, "start": _rfc3339(p.start_ms),
                                "end": _rfc3339(p.end_ms), "destinations": list(p.destinations),
                                "office": p.office}) for p in self.permits.values()],
            "delegations": [_clean({"id": d.id, "subject": d.subject,
                                    "start": _rfc3339(d.start_ms),
                                    "end": _rfc3339(d.end_ms) if d.end_ms is not None else None,
                                    "office": d.office, "home": list(d.home)})
                            for d in self.delegations.values()],
        }


def parse_document(doc: Any, current: Registry, is_place: Callable[[str], bool],
                   is_zone: Callable[[str], bool]) -> Registry:
    """The registry after upserting `doc` into `current`, or RegistryError with every problem.

    `is_place(code)`: a jurisdiction code of the layer (any level); `is_zone(code)`: a zone.
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise RegistryError(["the document is not a JSON object"])
    problems += unknown_keys(doc, KINDS, "the document")
    offices = dict(current.offices)
    subjects = dict(current.subjects)
    permits = dict(current.permits)
    delegations = dict(current.delegations)
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
        subject = Subject(sid or "", tuple(devices), _text(raw, "office", where, problems) or "",
                          tuple(_codes(raw, "home", where, problems)),
                          tuple(_codes(raw, "exclusions", where, problems, required=False)),
                          risk, category,
                          subjects[sid].index if sid in subjects else -1)
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
                        _text(raw, "office", where, problems) or "")
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

    problems += _check_references(offices, subjects, permits, delegations, is_place, is_zone)
    if problems:
        raise RegistryError(problems)
    next_index = max((s.index for s in subjects.values()), default=-1) + 1
    for sid in sorted(s for s, subj in subjects.items() if subj.index < 0):
        subjects[sid] = _with_index(subjects[sid], next_index)
        next_index += 1
    return Registry(offices, subjects, permits, delegations, current.version + 1)


def _check_references(offices, subjects, permits, delegations, is_place, is_zone) -> list[str]:
    problems = []
    for o in offices.values():
        if o.parent and o.parent not in offices:
            problems.append(f"office {o.code}: unknown parent office {o.parent!r}")
    problems += [f"offices: parent cycle through {c!r}" for c in _office_cycles(offices)]
    owner: dict[str, str] = {}
    for s in subjects.values():
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
        for d in s.devices:
            if d in owner and owner[d] != s.id:
                problems.append(f"device {d!r} is claimed by subjects {owner[d]} and {s.id}")
            owner.setdefault(d, s.id)
    for p in permits.values():
        if p.subject not in subjects:
            problems.append(f"permit {p.id}: unknown subject {p.subject!r}")
        if p.office not in offices:
            problems.append(f"permit {p.id}: unknown office {p.office!r}")
        for code in p.destinations:
            if not (is_place(code) or is_zone(code)):
                problems.append(f"permit {p.id}: unknown jurisdiction or zone code {code!r}")
    for d in delegations.values():
        if d.subject not in subjects:
            problems.append(f"delegation {d.id}: unknown subject {d.subject!r}")
        if d.office not in offices:
            problems.append(f"delegation {d.id}: unknown office {d.office!r}")
        for code in d.home:
            if not is_place(code):
                problems.append(f"delegation {d.id}: unknown jurisdiction code {code!r} in home")
    return problems


def _office_cycles(offices: dict[str, Office]) -> list[str]:
    cycles, done = [], set()
    for start in offices:
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


def _once(seen: set, key: str, where: str, problems: list[str]) -> bool:
    if key in seen:
        problems.append(f"{where}: {key!r} appears twice in the document")
        return False
    seen.add(key)
    return True


def _with_index(s: Subject, index: int) -> Subject:
    return Subject(s.id, s.devices, s.office, s.home, s.exclusions, s.risk, s.category, index)


def _rfc3339(ms: int) -> str:
    from datetime import timezone
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def _clean(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}


def _version_1(db: sqlite3.Connection) -> None:
    """One JSON document per entity, and the registry's version in `meta`."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS registry (kind TEXT, key TEXT, doc TEXT,
            PRIMARY KEY (kind, key));
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)""")


SCHEMA = Schema("registry", marker="registry", steps=(_version_1,))


class RegistryStore:
    """The registry in its own SQLite file: one JSON document per entity, imported atomically."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._db = connect(self.path, SCHEMA, sync="full")   # imports are rare: fsync them

    def close(self) -> None:
        self._db.close()

    def version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return int(row[0]) if row else 0

    def load(self) -> Registry:
        docs: dict[str, list[Any]] = {k: [] for k in KINDS}
        for kind, doc in self._db.execute("SELECT kind, doc FROM registry ORDER BY rowid"):
            docs[kind].append(json.loads(doc))
        subjects = {d["id"]: Subject(d["id"], tuple(d["devices"]), d["office"], tuple(d["home"]),
                                     tuple(d["exclusions"]), d["risk"], d["category"], d["index"])
                    for d in docs["subjects"]}
        return Registry(
            {d["code"]: Office(d["code"], d["name"], d["parent"]) for d in docs["offices"]},
            subjects,
            {d["id"]: Permit(d["id"], d["subject"], d["start_ms"], d["end_ms"],
                             tuple(d["destinations"]), d["office"]) for d in docs["permits"]},
            {d["id"]: Delegation(d["id"], d["subject"], d["start_ms"], d["end_ms"], d["office"],
                                 tuple(d["home"])) for d in docs["delegations"]},
            self.version())

    def import_document(self, doc: Any, is_place, is_zone) -> Registry:
        """Upsert `doc`; raises RegistryError (nothing changed) on any problem."""
        with transaction(self._db) as db:
            new = parse_document(doc, self.load(), is_place, is_zone)
            rows = [("offices", o.code, asdict(o)) for o in new.offices.values()]
            rows += [("subjects", s.id, asdict(s)) for s in new.subjects.values()]
            rows += [("permits", p.id, asdict(p)) for p in new.permits.values()]
            rows += [("delegations", d.id, asdict(d)) for d in new.delegations.values()]
            db.executemany("INSERT OR REPLACE INTO registry VALUES (?, ?, ?)",
                           [(k, key, json.dumps(v, ensure_ascii=False)) for k, key, v in rows])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (new.version,))
        return new
