"""The demo's locate requests (点名, SPEC §14): once the day is evaluated, the city's patrol
desk user asks for a fresh position of a few people with open exit alarms, as an officer does
from an alarm with 立即定位, and the demo prints what came back. The simulated carriers
answer most requests with a GPS fix, some with a cell fix, and ignore a few (those time
out after `[carriers] locate_timeout_s`, visible on the page).
"""

import json
import time
import urllib.error

from sim.desk_client import DeskClient

ASK = 5            # people asked for
WAIT_S = 15.0      # how long the demo waits for answers before it goes on


def ask_locates(desk_url: str, officer: tuple[str, str],
                wait_s: float = WAIT_S) -> list[str]:
    """Ask for up to ASK people with open alarms; the lines to print."""
    desk = DeskClient(desk_url, *officer)
    alarms = desk.get(f"/api/alarms?status=open&type=zone_exit&limit={ASK * 10}")
    subjects = list(dict.fromkeys(a["subject"] for a in _listed(alarms) if a.get("subject")))
    asked, refused = {}, []
    for subject in subjects[:ASK]:
        try:
            asked[subject] = desk.post(f"/api/subjects/{subject}/locate", {})["request"]
        except urllib.error.HTTPError as e:   # the desk said why: the demo goes on
            refused.append(json.loads(e.read() or b"{}").get("error", str(e)))
    if not asked:
        return [f"demo: no locate request made ({'; '.join(refused) or 'no open alarms'})"]
    answers = _await(desk, list(asked.values()), wait_s)
    fixes = [a for a in answers if a["state"] == "answered" and a.get("fix")]
    states = [a for a in answers if a["state"] == "answered" and a.get("handset")]
    waiting = len(asked) - len(fixes) - len(states)
    latency = sorted(a["latency_ms"] for a in fixes + states)
    lines = [f"demo: {len(asked)} locate requests (立即定位) by {officer[0]}: "
             f"{len(fixes)} answered with a fix"
             + (f" (median {latency[len(latency) // 2]} ms)" if latency else "")
             + (f", {len(states)} with a handset state" if states else "")
             + (f", {waiting} not answered yet (timed out after [carriers] "
                "locate_timeout_s)" if waiting else "")]
    for reason in refused:
        lines.append(f"demo: the desk refused a locate request: {reason}")
    return lines


def _listed(answer) -> list[dict]:
    return answer.get("alarms", []) if isinstance(answer, dict) else answer


def _await(desk: DeskClient, requests: list[str], wait_s: float) -> list[dict]:
    """The requests' documents once all are closed, or as they are after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        documents = [desk.get(f"/api/locate/{r}") for r in requests]
        if all(d["state"] in ("answered", "timed_out") for d in documents):
            return documents
        if time.monotonic() >= deadline:
            return documents
        time.sleep(0.5)
