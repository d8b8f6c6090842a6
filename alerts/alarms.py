"""Alarm documents (SPEC §6) from rule events: stable ids, routing, the stored form.

An alarm's id is derived from its subject, type and triggering fix time (for the clock
rules: the newest fix before the silence, the permit's end, the carrier's newest fix), so
the same fixes evaluated again after a crash give the same id, and storing with "insert
or ignore" keeps exactly one alarm.
"""

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from alerts.registry import Subject
from alerts.rules import EVENT_TYPES, NO_TIME, severity

SOURCE_NAMES = ("gps", "wifi", "cell")
# (subject id, t) -> supervising office, copies, home codes (a delegation changes all three)
Route = Callable[[str, int], tuple[str, tuple[str, ...], tuple[str, ...]]]


def alarm_id(subject_id: str, kind: str, t_ms: int) -> str:
    """Stable id: the same subject, type and triggering fix always give the same id."""
    return hashlib.sha256(f"{subject_id}|{kind}|{t_ms}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Alarm:
    id: str
    type: str
    severity: str
    subject: str | None
    office: str
    t_ms: int
    document: dict
    received_ms: int | None = None   # when ingest received the triggering fix

    def json(self) -> str:
        return json.dumps(self.document, ensure_ascii=False, separators=(",", ":"))


def fix_document(t_ms, lon, lat, acc_m, src) -> dict | None:
    """The alarm's `fix` member; None when the subject never sent one."""
    if int(t_ms) == NO_TIME:
        return None
    src = int(src)
    return {"t": int(t_ms), "lon": float(lon), "lat": float(lat), "acc": float(acc_m),
            "src": SOURCE_NAMES[src] if 0 <= src < 3 else None}


def make_alarm(kind: str, subject: Subject | None, route: tuple | None, t_ms: int,
               id_t_ms: int, fix: dict | None, where: dict | None, raised_at_ms: int,
               details: dict, received_ms: int | None = None, office: str = "") -> Alarm:
    """One alarm document. `route` is (office, copies, home) of the subject at the event
    (None: no subject, then `office`); `id_t_ms` the time its id derives from (the trigger)."""
    office, copies, home = route if route is not None else (office, (), ())
    key = subject.id if subject is not None else f"carrier:{details.get('carrier', '')}"
    details = dict(details)
    if copies:
        details["copy_to"] = list(copies)
    doc = {
        "id": alarm_id(key, kind, id_t_ms),
        "type": kind,
        "severity": severity(kind, subject is not None and subject.risk == "key"),
        "subject": subject.id if subject is not None else None,
        "office": office,
        "t": int(t_ms),
        "raised_at": int(raised_at_ms),
        "fix": fix,
        "where": where,
        "home": list(home),
        "status": "open",
        "details": details,
    }
    return Alarm(doc["id"], kind, doc["severity"], doc["subject"], office, doc["t"], doc,
                 received_ms)


def alarms_from_events(events, fixes, subjects: list[Subject | None], route: Route,
                       where: Mapping[int, dict | None], raised_at_ms: int,
                       received_ms: int | None = None, zone_codes=None) -> list[Alarm]:
    """One alarm per event. `fixes` are the batch's FixColumns (events index them),
    `subjects` by subject index, `where` maps each triggering fix's batch index to its
    jurisdiction {code, name} (None outside every jurisdiction), `zone_codes` the zone layer's codes (exclusion events name their zone)."""
    alarms = []
    for k in range(len(events)):
        kind = EVENT_TYPES[int(events.type[k])]
        i = int(events.fix[k])
        t = int(events.t_ms[k])
        subject = subjects[int(events.subject[k])]
        details = {}
        if int(events.linked_t_ms[k]) != NO_TIME:
            details["exit_id"] = alarm_id(subject.id, "zone_exit", int(events.linked_t_ms[k]))
        if int(events.zone[k]) >= 0:
            zone = int(events.zone[k])
            details["zone"] = str(zone_codes[zone]) if zone_codes is not None else zone
        fix = fix_document(fixes.t_ms[i], fixes.lon[i], fixes.lat[i], fixes.acc_m[i],
                           fixes.src[i])
        alarms.append(make_alarm(kind, subject, route(subject.id, t), t, t, fix, where[i],
                                 raised_at_ms, details, received_ms))
    return alarms
