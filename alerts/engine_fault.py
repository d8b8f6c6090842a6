"""The `engine_fault` alarm: an engine process cannot keep its store safely (SPEC §6).

Raised by the dispatcher, which owns the alarm store, from the health board
(`engine.health`): critical, to the root office (the one with no parent, as
`feed_outage`), no subject. One alarm per fault occurrence: its id derives from (process,
store, the fault's start time), and the start time stays the same while the fault lasts
(across restarts of the process that saw it too), so offering it again, after a restart of
the dispatcher as well, adds nothing (the alarm store's `raised` table). `t` is when the
fault began, also when the alarm could only be stored later (the alarm store itself was
at fault). Details name the process, the store, the kind and the reason (a file path and
what to do): no personal data.
"""

from alerts.alarms import Alarm, alarm_id
from alerts.rules import severity
from engine.health import BoardFault

TYPE = "engine_fault"


def engine_fault_alarm(fault: BoardFault, office: str, raised_at_ms: int) -> Alarm:
    details = {"process": fault.process, "store": fault.store, "kind": fault.kind,
               "reason": fault.reason}
    return Alarm(alarm_id(f"engine:{fault.process}/{fault.store}", TYPE, fault.since_ms),
                 TYPE, severity(TYPE, False), None, office, fault.since_ms, raised_at_ms,
                 None, None, (), "open", details)


def occurrence(fault: BoardFault) -> tuple[str, str, int]:
    """What tells one fault occurrence from another (a key for "already raised")."""
    return fault.process, fault.store, fault.since_ms
