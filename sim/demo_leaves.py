"""The demo's leaves on the desk: half of the day's planted trips are filed by the demo
clerk and approved by the city's patrol desk user through the desk's API, as officers do
it (the other half stay imported permits, shown as approved leaves of source "import").
One more request, for a trip tomorrow, is left pending for whoever logs in.

The replayed day has passed when the demo starts, so the demo's config sets `[leave]
record_past` (a leave recorded after the fact); the rules see the approved leaves as
permits before the replay reaches their trips.
"""

import json
import urllib.error

from sim.desk_client import DeskClient

REASONS = ("探亲", "就医", "务工", "处理家庭事务")    # visiting family, medical, work, family
DAY_MS = 86_400_000


def desk_trips(permits: list[dict]) -> list[dict]:
    """The planted permits the demo files on the desk (every second one)."""
    return permits[1::2]


def file_leaves(desk_url: str, clerk: tuple[str, str], approver: tuple[str, str],
                trips: list[dict], now_ms: int) -> tuple[int, int, list[str]]:
    """File and approve a leave for each trip; file one more for tomorrow and leave it
    pending. Returns (approved, pending, the desk's reasons for any refused)."""
    filing, approving = DeskClient(desk_url, *clerk), DeskClient(desk_url, *approver)
    approved, refused = 0, []
    for n, trip in enumerate(trips):
        try:
            leave = filing.post("/api/leaves", _request(trip, REASONS[n % len(REASONS)]))
            approving.post(f"/api/leaves/{leave['id']}/approve", {"note": "同意 / approved"})
        except urllib.error.HTTPError as e:   # the desk said why: the demo goes on
            refused.append(json.loads(e.read() or b"{}").get("error", str(e)))
            continue
        approved += 1
    pending = 0
    if trips:
        tomorrow = dict(trips[0], start_ms=now_ms + DAY_MS, end_ms=now_ms + DAY_MS + 8 * 3600_000)
        filing.post("/api/leaves", _request(tomorrow, "探亲"))
        pending = 1
    return approved, pending, refused


def _request(trip: dict, reason: str) -> dict:
    return {"subject": trip["subject"], "destinations": list(trip["destinations"]),
            "start_ms": trip["start_ms"], "end_ms": trip["end_ms"], "reason": reason}
