"""The alarm (SPEC §6): one typed value, built only in `alerts/`, with one JSON form.

An `Alarm` is made once, where a rule fires (`alarms_from_events` for the fix-driven
rules, `alerts.clock_rules` for the clock-driven ones), and then travels as its JSON text:
the worker stores the text, the dispatcher imports it into the alarm store unchanged,
webhooks post it and the desk's live stream sends it as it is. `Alarm.from_json` keeps
the text it was given, so a hop that only reads an alarm never re-encodes it; a change
of lifecycle (`with_status`, `folded`, `escalated`) makes a new value with a new text.

An alarm's id is derived from its subject, type and triggering fix time (for the clock
rules: the newest fix before the silence, the permit's end, the carrier's newest fix), so
the same fixes evaluated again after a crash give the same id, and storing with "insert
or ignore" keeps exactly one alarm.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alerts.registry import Subject
from alerts.rules import EVENT_TYPES, NO_TIME, severity
from alerts.schedule import Route
from geofence.errors import GeofenceError
from ingest.protocol import SOURCES

SEVERITIES = ("critical", "high", "medium", "info")
STATUSES = ("open", "acknowledged", "resolved", "escalated")
UNRESOLVED = ("open", "acknowledged", "escalated")


class AlarmDocumentError(GeofenceError, ValueError):
    """A stored or received alarm document is not one `Alarm.to_json` wrote; the text is
    damaged or from another program."""


# (subject id, t) -> the subject's route at t (`alerts.schedule.AreaSchedule.routing_at`)
Router = Callable[[str, int], Route]


@dataclass(frozen=True)
class AlarmFix:
    """The fix an alarm names (`fix` of the document)."""

    t_ms: int
    lon: float
    lat: float
    acc_m: float
    src: str | None

    @classmethod
    def of(cls, t_ms, lon, lat, acc_m, src) -> "AlarmFix | None":
        """From a fix table's row (src as its index into SOURCES); None: no fix at all."""
        if int(t_ms) == NO_TIME:
            return None
        src = int(src)
        return cls(int(t_ms), float(lon), float(lat), float(acc_m),
                   SOURCES[src] if 0 <= src < len(SOURCES) else None)

    def to_dict(self) -> dict:
        return {"t": self.t_ms, "lon": self.lon, "lat": self.lat, "acc": self.acc_m,
                "src": self.src}


@dataclass(frozen=True)
class Place:
    """A jurisdiction feature (`where` of the document)."""

    code: str
    name: str


class Places:
    """A layer's features as `Place`s, by feature index (-1: in none of them)."""

    def __init__(self, codes: Sequence[str], names: Sequence[str]):
        self._places = [Place(str(c), str(n)) for c, n in zip(codes, names)]

    @classmethod
    def of(cls, layer) -> "Places":
        return cls(layer.codes, layer.names)

    def __getitem__(self, feature: int) -> Place | None:
        feature = int(feature)
        return self._places[feature] if feature >= 0 else None


@dataclass(frozen=True)
class Alarm:
    """One alarm document (SPEC §6). Values are never changed in place: `details` is
    read-only by convention, and the lifecycle methods return new alarms."""

    id: str
    type: str
    severity: str
    subject: str | None
    office: str
    t_ms: int
    raised_at_ms: int
    fix: AlarmFix | None
    where: Place | None
    home: tuple[str, ...]
    status: str = "open"
    details: Mapping[str, Any] = field(default_factory=dict)
    # When ingest received the triggering fix (fix-to-alarm latency); not in the document.
    received_ms: int | None = field(default=None, compare=False)
    _json: str | None = field(default=None, compare=False, repr=False)

    @property
    def copies(self) -> tuple[str, ...]:
        """Offices that get a copy besides `office` (the origin office of a delegation)."""
        return tuple(self.details.get("copy_to", ()))

    @property
    def fold_key(self) -> str:
        """Whose alarms fold together: the subject's, a carrier's (feed_outage), or an
        engine process's store (engine_fault)."""
        if self.subject:
            return self.subject
        if "process" in self.details:
            return f"engine:{self.details['process']}/{self.details.get('store', '')}"
        return f"carrier:{self.details.get('carrier', '')}"

    # -- the one JSON form -----------------------------------------------------------------

    def to_document(self) -> dict:
        """The document as plain data (msgpack on PUB, JSON on HTTP and webhooks)."""
        return {"id": self.id, "type": self.type, "severity": self.severity,
                "subject": self.subject, "office": self.office, "t": self.t_ms,
                "raised_at": self.raised_at_ms,
                "fix": self.fix.to_dict() if self.fix is not None else None,
                "where": {"code": self.where.code, "name": self.where.name}
                if self.where is not None else None,
                "home": list(self.home), "status": self.status, "details": dict(self.details)}

    def to_json(self) -> str:
        """The document as compact UTF-8 JSON; the text it was read from, if it was."""
        if self._json is None:
            text = json.dumps(self.to_document(), ensure_ascii=False, separators=(",", ":"))
            object.__setattr__(self, "_json", text)
        return self._json

    @classmethod
    def from_json(cls, text: str | bytes, received_ms: int | None = None) -> "Alarm":
        if isinstance(text, bytes):
            text = text.decode()
        try:
            return cls.from_document(json.loads(text), received_ms, _json=text)
        except json.JSONDecodeError as e:
            raise AlarmDocumentError(f"alarm document is not JSON: {e}") from None

    @classmethod
    def from_document(cls, doc: Mapping, received_ms: int | None = None,
                      _json: str | None = None) -> "Alarm":
        try:
            fix, where = doc["fix"], doc["where"]
            return cls(
                str(doc["id"]), str(doc["type"]), str(doc["severity"]), doc["subject"],
                str(doc["office"]), int(doc["t"]), int(doc["raised_at"]),
                AlarmFix(int(fix["t"]), float(fix["lon"]), float(fix["lat"]),
                         float(fix["acc"]), fix["src"]) if fix is not None else None,
                Place(str(where["code"]), str(where["name"])) if where is not None else None,
                tuple(doc["home"]), str(doc["status"]), dict(doc["details"]),
                received_ms, _json)
        except (KeyError, TypeError, ValueError) as e:
            raise AlarmDocumentError(f"alarm document lacks or mistypes {e}") from None

    # -- lifecycle -------------------------------------------------------------------------

    def with_status(self, status: str) -> "Alarm":
        if status not in STATUSES:
            raise AlarmDocumentError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        return replace(self, status=status, _json=None)

    def folded(self, repeat: "Alarm") -> "Alarm":
        """This alarm with a repeat of it folded in (`details.repeats`, `details.last`)."""
        last = {"id": repeat.id, "t": repeat.t_ms,
                "fix": repeat.fix.to_dict() if repeat.fix is not None else None,
                "where": {"code": repeat.where.code, "name": repeat.where.name}
                if repeat.where is not None else None,
                "details": dict(repeat.details)}
        details = {**self.details, "repeats": self.details.get("repeats", 0) + 1, "last": last}
        return replace(self, details=details, _json=None)

    @property
    def escalated_to(self) -> str:
        """The office the alarm has reached by escalation (its own office before any)."""
        return self.details.get("escalated_to", self.office)

    def escalated(self, office: str) -> "Alarm":
        """Escalated one level up, to `office`."""
        level = self.details.get("escalation_level", 0) + 1
        details = {**self.details, "escalated_to": office, "escalation_level": level}
        return replace(self, status="escalated", details=details, _json=None)

    @property
    def escalation_level(self) -> int:
        return int(self.details.get("escalation_level", 0))


def alarm_id(subject_id: str, kind: str, t_ms: int) -> str:
    """Stable id: the same subject, type and triggering fix always give the same id."""
    return hashlib.sha256(f"{subject_id}|{kind}|{t_ms}".encode()).hexdigest()[:24]


def new_alarm(kind: str, *, subject: Subject | None, route: Route | None, t_ms: int,
              trigger_t_ms: int, fix: AlarmFix | None, where: Place | None,
              raised_at_ms: int, details: Mapping[str, Any] | None = None,
              received_ms: int | None = None, office: str = "") -> Alarm:
    """A newly raised alarm. `route` is where the subject's alarms go at the event (None
    for an alarm of no subject, which goes to `office`); `trigger_t_ms` is the time its id
    derives from (the triggering fix, or the clock rule's reference time)."""
    if route is None:
        route = Route(office, (), ())
    key = subject.id if subject is not None else f"carrier:{(details or {}).get('carrier', '')}"
    details = dict(details or {})
    if route.copies:
        details["copy_to"] = list(route.copies)
    return Alarm(alarm_id(key, kind, trigger_t_ms), kind,
                 severity(kind, subject is not None and subject.risk == "key"),
                 subject.id if subject is not None else None, route.office, int(t_ms),
                 int(raised_at_ms), fix, where, tuple(route.home), "open", details,
                 received_ms)


def alarms_from_events(events, fixes, subjects: Sequence[Subject | None], route: Router,
                       where: Mapping[int, Place | None], raised_at_ms: int,
                       received_ms: int | None = None, zone_codes=None) -> list[Alarm]:
    """One alarm per rule event (`alerts.rules.Events`).

    `fixes` are the batch's fix columns (events index them), `subjects` by subject index,
    `where` maps each triggering fix's batch index to its jurisdiction (None outside every
    one), `zone_codes` the zone layer's codes (exclusion events name their zone)."""
    alarms = []
    for k in range(len(events)):
        kind = EVENT_TYPES[int(events.type[k])]
        i = int(events.fix[k])
        t = int(events.t_ms[k])
        subject = subjects[int(events.subject[k])]
        details = {}
        if int(events.linked_t_ms[k]) != NO_TIME:
            details["exit_id"] = alarm_id(subject.id, "zone_exit", int(events.linked_t_ms[k]))
        if events.after is not None and int(events.after[k]) >= 0:   # signal_restored
            details["after"] = EVENT_TYPES[int(events.after[k])]
        if int(events.zone[k]) >= 0:
            zone = int(events.zone[k])
            details["zone"] = str(zone_codes[zone]) if zone_codes is not None else zone
        fix = AlarmFix.of(fixes.t_ms[i], fixes.lon[i], fixes.lat[i], fixes.acc_m[i],
                          fixes.src[i])
        alarms.append(new_alarm(kind, subject=subject, route=route(subject.id, t), t_ms=t,
                                trigger_t_ms=t, fix=fix, where=where[i],
                                raised_at_ms=raised_at_ms, details=details,
                                received_ms=received_ms))
    return alarms
