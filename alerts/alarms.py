"""Alarm documents (SPEC §6) from rule events: stable ids, routing, the stored form.

An alarm's id is derived from its subject, type and triggering fix time, so the same
fixes evaluated again after a crash (replayed from a rules snapshot) give the same id, and
storing with "insert or ignore" keeps exactly one alarm.
"""

import hashlib
import json
from dataclasses import dataclass

from alerts.registry import Registry
from alerts.rules import EVENT_TYPES, NO_TIME, severity

SOURCE_NAMES = ("gps", "wifi", "cell")


def alarm_id(subject_id: str, kind: str, t_ms: int) -> str:
    """Stable id: the same subject, type and triggering fix always give the same id."""
    return hashlib.sha256(f"{subject_id}|{kind}|{t_ms}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Alarm:
    id: str
    type: str
    severity: str
    subject: str
    office: str
    office_path: str        # the PUB topic: office codes from the root, "/"-joined and ended
    t_ms: int
    document: dict

    def json(self) -> str:
        return json.dumps(self.document, ensure_ascii=False, separators=(",", ":"))


def alarms_from_events(events, fixes, subject_ids: list[str], registry: Registry,
                       where_codes: list[str | None], where_names: list[str | None],
                       raised_at_ms: int) -> list[Alarm]:
    """One alarm per event. `fixes` are the batch's FixColumns (events index them);
    `where_*` per fix of the batch (None outside every jurisdiction)."""
    alarms = []
    for k in range(len(events)):
        kind = EVENT_TYPES[int(events.type[k])]
        i = int(events.fix[k])
        subject = registry.subjects[subject_ids[int(events.subject[k])]]
        office = _supervising_office(registry, subject.id, int(events.t_ms[k]))
        path = registry.office_path(office)
        src = int(fixes.src[i])
        details = {}
        if int(events.linked_t_ms[k]) != NO_TIME:
            details["exit_id"] = alarm_id(subject.id, "zone_exit", int(events.linked_t_ms[k]))
        if int(events.zone[k]) >= 0:
            details["zone_index"] = int(events.zone[k])
        doc = {
            "id": alarm_id(subject.id, kind, int(events.t_ms[k])),
            "type": kind,
            "severity": severity(kind, subject.risk == "key"),
            "subject": subject.id,
            "office": office,
            "t": int(events.t_ms[k]),
            "raised_at": raised_at_ms,
            "fix": {"t": int(fixes.t_ms[i]), "lon": float(fixes.lon[i]),
                    "lat": float(fixes.lat[i]), "acc": float(fixes.acc_m[i]),
                    "src": SOURCE_NAMES[src] if 0 <= src < 3 else None},
            "where": ({"code": where_codes[i], "name": where_names[i]}
                      if where_codes[i] is not None else None),
            "home": list(subject.home),
            "status": "open",
            "details": details,
        }
        alarms.append(Alarm(doc["id"], kind, doc["severity"], subject.id, office,
                            "/".join(path) + "/", doc["t"], doc))
    return alarms


def _supervising_office(registry: Registry, subject_id: str, t_ms: int) -> str:
    """The delegate's office during an active delegation (异地委托), else the subject's."""
    for d in registry.delegations.values():
        if d.subject == subject_id and d.start_ms <= t_ms and (d.end_ms is None or t_ms < d.end_ms):
            return d.office
    return registry.subjects[subject_id].office
