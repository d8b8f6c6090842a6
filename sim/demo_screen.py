"""What the demo prints: the banner with endpoints and logins, and the progress line.

Counts, endpoints and logins only: never a person, a phone or a position. The engine's own
log lines go to its log file (the banner says where), not here.
"""

import time
from collections import Counter
from pathlib import Path

from sim.movement import DAY_MS, MINUTE_MS


def banner(out, root: Path, scenario, logins, endpoints, log_file: Path, resume: bool,
           speed: float) -> None:
    offices = {o["code"]: o["name"] for o in scenario.offices}
    planted = scenario.planted
    permits = len(scenario.permits)
    overstays = sum(1 for r in scenario.truth if r["expect"] == "permit_overstay")
    never = sum(1 for r in scenario.truth if r["expect"] == "permit_overstay" and not r["back"])
    barred = sum(1 for s in scenario.subjects if s.get("exclusions"))
    outage = next(r for r in scenario.truth if r["kind"] == "outage")
    out(f"geofence demo: {len(scenario.ids):,} supervised people in Zaozhuang (6 counties, "
        f"66 townships), seed {scenario.seed}; files in {root}")
    out(f"  desk:     {endpoints.desk or '(not configured)'}")
    for user, password, office in logins:
        out(f"            log in as {user} / {password}  ({office} {offices.get(office, '')})")
    out(f"  alarms:   ZeroMQ PUB on {endpoints.publish} (topics are office paths: "
        "3704/370402/...)")
    out(f"  carriers: {endpoints.ingest} (3 simulated: cmcc, cucc in GCJ-02, ctcc)")
    out(f"  metrics:  {endpoints.metrics}")
    out(f"  logs:     {log_file}")
    if resume:
        out("  kept the last run's data: no replay, straight to the live feed; Ctrl-C stops")
        return
    out(f"  planted:  {planted.get('exit', 0)} exits; {permits} permits "
        f"({overstays} overstay, {never} of them not back); {len(scenario.delegations)} "
        f"delegations ({planted.get('delegation_exit', 0)} leave); {barred} under injunction "
        f"({planted.get('breach', 0)} breaches); {planted.get('silence', 0)} silences; "
        f"{outage['carrier']} down {(outage['end_ms'] - outage['start_ms']) // MINUTE_MS} min")
    out(f"  replaying the last 24 h at {speed:g}x ({duration(DAY_MS / 1000 / speed)}), then a live "
        "feed; Ctrl-C stops")


def progress(feeder, alarms) -> str:
    """Where the replay is and the alarms raised so far, by type."""
    counts = Counter()
    for (kind, _severity), n in alarms.raised_counts().items():
        counts[kind] += n
    raised = ", ".join(f"{kind} {n:,}" for kind, n in counts.most_common()) or "none yet"
    if not feeder.replay_done:
        at = time.localtime(feeder.feed_now_ms() / 1000)
        day = "" if at.tm_yday == time.localtime().tm_yday else " yesterday"
        sent = sum(feeder.sent)
        where = (f"replay at {time.strftime('%H:%M', at)}{day} "
                 f"({sent / max(feeder.total, 1):.0%}), {sent:,} fixes sent")
    else:
        where = f"live feed, {sum(feeder.live_sent):,} fixes sent"
    return f"demo: {where}; alarms raised: {raised}"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
