"""How the demo's planted events fared: the truth (`sim.scenario`) against the alarms.

An alarm's id derives from (subject, type, triggering fix time) (`alerts.alarms.alarm_id`),
and the alarm store remembers every raised id, also those folded into an open alarm of
the same subject and type (`AlarmStore.raised_ids`). So an expected alarm is found when
the id of one of the fixes that could have triggered it was raised: exact, whatever the
folding, whatever the order the workers took the fixes in.
"""

from collections import Counter

import numpy as np

from alerts.alarms import alarm_id
from sim.movement import MINUTE_MS

FIX_RULES = ("zone_exit", "zone_return", "exclusion_entry", "signal_restored",
             "possible_exit", "possible_exclusion")
KIND_LABELS = {"exit": "exits", "permitted_trip": "permitted trips", "overstay": "overstays",
               "silence": "silences", "breach": "injunction breaches",
               "delegation_exit": "delegation exits", "outage": "carrier outage"}


def alarm_table(alarms) -> dict[str, dict]:
    """Alarm id → {type, office, copy_to, t} of every stored alarm."""
    return {a.id: {"type": a.type, "office": a.office, "t": a.t_ms, "copy_to": list(a.copies)}
            for a in alarms.query(limit=10**9)}


def score(scenario, raised: dict[str, str], alarms: dict[str, dict]) -> dict:
    """Planted events against raised alarms.

    `raised`: every raised alarm id → the stored alarm it opened or was folded into
    (`AlarmStore.raised_ids`); `alarms`: stored alarm id → {type, office, copy_to, t}.
    An alarm's id derives from (subject, type, triggering fix time) (`alerts.alarms`), so
    an expected alarm is found when the id of one of the fixes that could trigger it was
    raised: the subject's fixes in the window for the fix rules, the last fixes before a
    silence for signal_lost, the permit's end for permit_overstay, the carrier's last
    fixes for feed_outage. Counted as side alarms, not as others: possible_exit during a
    planted exit, possible_exclusion around a breach.
    """
    fixes = scenario.fixes
    index = {sid: k for k, sid in enumerate(scenario.ids)}
    order = np.argsort(fixes.subject, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(fixes.subject,
                                                        minlength=len(scenario.ids)))])

    def times(sid: str, start: int, end: int) -> list[int]:
        mine = fixes.t_ms[order[bounds[index[sid]]:bounds[index[sid] + 1]]]
        return mine[(mine >= start) & (mine <= end)].tolist()

    def carrier_times(name: str, start: int, end: int) -> list[int]:
        mine = scenario.carrier_of(fixes.subject) == scenario.carriers.index(name)
        t = fixes.t_ms[mine]
        return t[(t >= start) & (t <= end)].tolist()

    def ids(key: str, kind: str, ts) -> set[str]:
        return {alarm_id(key, kind, int(t)) for t in ts}

    matched: set[str] = set()
    side: set[str] = set()
    rows = []
    for r in scenario.truth:
        sid, kind, start, end = r["subject"], r["expect"], r["start_ms"], r["end_ms"]
        if kind is None:   # a permitted trip: no exit of any kind, no overstay
            wrong = (ids(sid, "zone_exit", times(sid, start, end))
                     | ids(sid, "possible_exit", times(sid, start, end))
                     | ids(sid, "permit_overstay", [r["permit_end_ms"]])) & raised.keys()
            rows.append({**r, "found": not wrong, "alarms": sorted(wrong)})
            continue
        if kind in FIX_RULES:
            candidates = ids(sid, kind, times(sid, start, end))
        elif kind == "signal_lost":
            candidates = ids(sid, kind, times(sid, start - 15 * MINUTE_MS, start))
        elif kind == "permit_overstay":
            candidates = ids(sid, kind, [r["permit_end_ms"]])
        else:   # feed_outage: keyed by carrier, at the carrier's newest fix when recognised
            candidates = ids(f"carrier:{r['carrier']}", kind,
                             carrier_times(r["carrier"], start - 15 * MINUTE_MS, end))
        hits = candidates & raised.keys()
        matched |= hits
        row = {**r, "found": bool(hits), "alarms": sorted(hits)}
        if "copy_to" in r and hits:   # delegated: to the delegate office, copy to the origin
            stored = [alarms.get(raised[h], {}) for h in hits]
            row["routed"] = any(a.get("office") == r["office"] and a.get("copy_to") == r["copy_to"]
                                for a in stored)
        rows.append(row)
        if kind == "zone_exit":
            side |= ids(sid, "possible_exit", times(sid, start, end))
        elif kind == "exclusion_entry":
            side |= ids(sid, "possible_exclusion", times(sid, start - 15 * MINUTE_MS, end))
    outage = next((r for r in scenario.truth if r["kind"] == "outage"), None)
    outage_lost = 0
    if outage is not None:
        k = scenario.carriers.index(outage["carrier"])
        for sid in scenario.ids:
            if index[sid] % len(scenario.carriers) == k:
                lost = ids(sid, "signal_lost", times(sid, outage["start_ms"] - 60 * MINUTE_MS,
                                                     outage["end_ms"]))
                outage_lost += len(lost & raised.keys())
    others = Counter()
    day_end = scenario.end_ms
    for rid, aid in raised.items():
        if rid in matched or rid in side:
            continue
        alarm = alarms.get(aid)
        if alarm is not None and alarm["t"] <= day_end:
            others[alarm["type"]] += 1
    kinds: dict[tuple[str, str | None], list[int]] = {}
    for row in rows:
        tally = kinds.setdefault((row["kind"], row["expect"]), [0, 0])
        tally[0] += row["found"]
        tally[1] += 1
    return {"rows": rows, "by_kind": {f"{k}/{e or 'none'}": v for (k, e), v in kinds.items()},
            "side": len(side & raised.keys()), "others": dict(others),
            "outage_signal_lost": outage_lost}


def summary_lines(summary: dict) -> list[str]:
    """The summary as printed: one line per planted kind, then the others."""
    lines = ["demo: planted events against the alarms raised (found / planted):"]
    grouped: dict[str, list[str]] = {kind: [] for kind in KIND_LABELS}
    for key, (found, planted) in summary["by_kind"].items():
        kind, expect = key.split("/")
        text = (f"{found}/{planted} without an alarm" if expect == "none"
                else f"{found}/{planted} {expect}")
        grouped.setdefault(kind, []).append(text)
    for kind, parts in grouped.items():
        if not parts:
            continue
        extra = ""
        if kind == "delegation_exit":
            exits = [r for r in summary["rows"]
                     if r["kind"] == kind and r["expect"] == "zone_exit"]
            routed = sum(1 for r in exits if r.get("routed"))
            extra = (f"; {routed}/{len(exits)} exits to the delegate office, copy to the "
                     "origin")
        if kind == "outage":
            extra = f" (signal_lost among its people: {summary['outage_signal_lost']})"
        lines.append(f"  {KIND_LABELS.get(kind, kind):20} " + ", ".join(parts) + extra)
    others = summary["others"]
    listed = ", ".join(f"{k} {n}" for k, n in sorted(others.items(), key=lambda x: -x[1]))
    lines.append(f"  other alarms: {sum(others.values())}" + (f" ({listed})" if listed else "")
                 + f"; possible_exit/possible_exclusion beside planted events: {summary['side']}")
    return lines
