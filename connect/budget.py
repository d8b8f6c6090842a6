"""What a provider lets us spend: a daily budget of positionings, and a back-off.

Providers bill per positioning request. `DailyBudget` counts the requests of the current
day (UTC+8 days: the providers' and the offices' calendar). Scheduled polling stops when
`daily_budget` is spent; the desk's locate requests may go on into `desk_reserve` more.
At 80 % spent the connector logs one warning a day. `BudgetFile` keeps the day's count
across restarts (saved every few seconds and at stop: a crash forgets at most those
seconds' requests).

`Backoff` holds every request back when the provider is in trouble: at once on a 429
(it asked us to slow down; its Retry-After is honoured when it asks for longer), and after
HOLD_AFTER failures in a row (5xx, timeouts, refused connections) with no success between.
An isolated failure holds nobody back (a provider failing 2 % of its requests would
otherwise stall the whole feed); its device is asked again after `first_s`. The hold is
`first_s`, doubling per further failure in a row up to `max_s`, jittered. One success
ends the run of failures.
"""

import json
import logging
import os
import random
from pathlib import Path

log = logging.getLogger("geofence.connect")

DAY_S = 86_400
UTC8_S = 8 * 3600
WARN_SHARE = 0.8
HOLD_AFTER = 3       # failures in a row (no success between) before every request waits


class DailyBudget:
    def __init__(self, limit: int, reserve: int = 0):
        self.limit, self.reserve = limit, reserve     # limit 0: no limit
        self._day = None
        self.spent = 0
        self._warned = False

    def _roll(self, now_s: float) -> None:
        day = int((now_s + UTC8_S) // DAY_S)
        if day != self._day:
            self._day, self.spent, self._warned = day, 0, False

    def take(self, now_s: float, desk: bool) -> bool:
        """Spend one request if the budget allows it (the reserve: desk requests only)."""
        self._roll(now_s)
        if self.limit and self.spent >= self.limit + (self.reserve if desk else 0):
            return False
        self.spent += 1
        return True

    def remaining(self, now_s: float) -> float:
        """Scheduled requests left today (inf without a limit; never below 0)."""
        self._roll(now_s)
        return float("inf") if not self.limit else float(max(0, self.limit - self.spent))

    def warning_due(self, now_s: float) -> bool:
        """True once a day, when 80 % of the budget is spent."""
        self._roll(now_s)
        if self.limit and not self._warned and self.spent >= WARN_SHARE * self.limit:
            self._warned = True
            return True
        return False

    def state(self, now_s: float) -> tuple[int, int]:
        """(day number, requests spent that day): what `BudgetFile` keeps."""
        self._roll(now_s)
        return self._day, self.spent

    def restore(self, day: int, spent: int, now_s: float) -> None:
        """Take a saved count, if it is today's."""
        self._roll(now_s)
        if day == self._day and spent > self.spent:
            self.spent = spent

    def renews_at(self, now_s: float) -> float:
        """When the next day's budget starts (seconds)."""
        return ((now_s + UTC8_S) // DAY_S + 1) * DAY_S - UTC8_S


class BudgetFile:
    """`connect-NAME.budget.json` in the storage path: {"day": n, "spent": k}. Written
    whole to a temporary file and renamed, so a crash leaves the old count or the new; an
    unreadable file is logged and counted as nothing spent."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> tuple[int, int] | None:
        try:
            doc = json.loads(self.path.read_text())
            day, spent = doc["day"], doc["spent"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("budget file %s unreadable (%s); counting from zero", self.path,
                        type(e).__name__)
            return None
        if type(day) is not int or type(spent) is not int or spent < 0:
            log.warning("budget file %s holds no count; counting from zero", self.path)
            return None
        return day, spent

    def save(self, day: int, spent: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"day": day, "spent": spent}))
        os.replace(temporary, self.path)


class Backoff:
    def __init__(self, first_s: float, max_s: float, seed: int | None = None):
        self.first_s, self.max_s = first_s, max(max_s, first_s)
        self.failures = 0
        self.until_s = 0.0
        self._rng = random.Random(seed)

    def failed(self, now_s: float, *, rate_limited: bool = False,
               retry_after_s: float | None = None) -> float:
        """One more failure in a row; returns the hold it starts (0: none yet)."""
        self.failures += 1
        if not rate_limited and self.failures < HOLD_AFTER:
            return 0.0
        n = max(1, self.failures - HOLD_AFTER + 1)
        ceiling = min(self.max_s, self.first_s * 2.0 ** min(n - 1, 40))
        wait = self._rng.uniform(0.8 * ceiling, ceiling)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, 24 * 3600))
        self.until_s = max(self.until_s, now_s + wait)
        return wait

    def succeeded(self) -> None:
        self.failures = 0

    def wait_s(self, now_s: float) -> float:
        """How long a request must still wait (0: go)."""
        return max(0.0, self.until_s - now_s)
