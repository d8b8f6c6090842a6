"""Carriers replaying a day of fixes to the engine faster than real time, then live.

One thread and one `CarrierClient` per carrier. A replay clock runs from the day's start
at `speed` times real time; every TICK_S each carrier sends, in batches of up to
BATCH_FIXES, its fixes up to the clock, so the carriers stay within a few seconds of
feed time of each other (the engine's clock rules then see no carrier lag behind), and
a carrier with nothing to send in a stretch of the day (an outage) sends nothing. The
day should end when the replay does (start + 24 h / speed): its fixes are then never in
the engine's future.

After the day, `live(carrier, after_ms, upto_ms)` (if given) is asked every LIVE_TICK_S
for the carrier's fixes with times in (after, upto], sent as they come, until `stop`.
Batch numbers start at the wall clock in milliseconds times 1000, as `sim.simulate`'s
do, so a later run never collides with an earlier one in the engine's memory.

Every carrier answers the engine's locate requests (SPEC §14, `sim.locate_answers`)
between its batches, after `locate_delay_s`: at the replay clock while it replays the day
(the demo runs `[rules] clock = "feed"`, and a wall-clock answer would move its feed clock
a day ahead), at the wall clock once live.

Counters (`sent`, `live_sent`, `done`) are plain ints and bools written by the carriers'
threads and read by anyone without a lock; a carrier's failure (`CarrierError` after its
retries) is kept in `error` and stops the others.
"""

import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from ingest.carrier import CarrierClient
from sim.carriers import CarrierFeed
from sim.locate_answers import LocateAnswers

TICK_S = 0.1          # how often a carrier sends what the replay clock allows
LIVE_TICK_S = 1.0
BATCH_FIXES = 5000
LIVE_CATCH_UP_MS = 60_000   # after a slow start, live fixes begin at most this far back
LOCATE_SEED_SALT = 0x10CA7

LiveSource = Callable[[int, int, int], CarrierFeed]


class Replay:
    """The carriers' threads; `start()`, then read the counters, `stop` and `join()`."""

    def __init__(self, feeds: list[CarrierFeed], endpoint: str, start_ms: int, end_ms: int,
                 speed: float, stop: threading.Event, live: LiveSource | None = None, *,
                 seed: int = 0, ctx: zmq.Context | None = None, timeout_ms: float = 5000,
                 retries: int = 12, locate_delay_s: float = 0.0):
        if speed <= 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        self.feeds, self.endpoint, self.speed, self.stop = feeds, endpoint, speed, stop
        self.start_ms, self.end_ms = start_ms, end_ms
        self.live, self.seed = live, seed
        self.ctx = ctx if ctx is not None else zmq.Context.instance()
        self.client_options = {"timeout_ms": timeout_ms, "retries": retries, "window": 8}
        self.total = sum(len(f) for f in feeds)
        self.answers = [LocateAnswers(f.name, f.phones, f.datum, delay_s=locate_delay_s,
                                      seed=[seed, k, LOCATE_SEED_SALT])
                        for k, f in enumerate(feeds)]
        self.sent = [0] * len(feeds)
        self.live_sent = [0] * len(feeds)
        self.done = [False] * len(feeds)
        self.acked = [(0, 0)] * len(feeds)   # (accepted, rejected) of the day, per carrier
        self.error: BaseException | None = None
        self.replayed_s = 0.0
        self._started = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._started = time.monotonic()
        for k, feed in enumerate(self.feeds):
            thread = threading.Thread(target=self._carrier, args=(k,), daemon=True,
                                      name=f"geofence-replay-{feed.name}")
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def feed_now_ms(self) -> int:
        """The replay clock: the day's start plus the wall time since, times speed."""
        elapsed_ms = (time.monotonic() - self._started) * self.speed * 1000
        return min(self.start_ms + int(elapsed_ms), self.end_ms)

    @property
    def replay_done(self) -> bool:
        """Every carrier has sent its day and had every batch acknowledged."""
        return all(self.done)

    @property
    def replay_acked(self) -> tuple[int, int]:
        """(accepted, rejected) fixes of the day, over the carriers that finished it."""
        return sum(a for a, _ in self.acked), sum(r for _, r in self.acked)

    def _carrier(self, k: int) -> None:
        feed, answers = self.feeds[k], self.answers[k]
        batch = int(time.time() * 1000) * 1000
        try:
            with CarrierClient(self.ctx, self.endpoint, feed.name, seed=self.seed + k,
                               **self.client_options) as client:
                i = 0
                while i < len(feed) and not self.stop.is_set():
                    feed_now = self.feed_now_ms()
                    upto = int(np.searchsorted(feed.fixes.t_ms, feed_now, side="right"))
                    while i < upto and not self.stop.is_set():
                        j = min(upto, i + BATCH_FIXES)
                        client.send(feed.frame(i, j, batch), batch)
                        answers.saw(feed.fixes.take(slice(i, j)))
                        self.sent[k] += j - i
                        i, batch = j, batch + 1
                    client.idle(TICK_S)
                    batch = answers.pump(client, batch, feed_now)
                if self.stop.is_set():
                    return
                client.drain()
                self.acked[k] = (client.stats.fixes_accepted, client.stats.fixes_rejected_total)
                self.done[k] = True
                if all(self.done):
                    self.replayed_s = time.monotonic() - self._started
                if self.live is not None:
                    self._live(k, client, batch)
        except BaseException as e:  # handed to the main thread
            self.error = e
            self.stop.set()

    def _live(self, k: int, client: CarrierClient, batch: int) -> None:
        last = max(self.end_ms, _wall_ms() - LIVE_CATCH_UP_MS)
        while not self.stop.is_set():
            now = _wall_ms()
            feed = self.live(k, last, now)
            if len(feed):
                client.send(feed.frame(0, len(feed), batch), batch)
                self.answers[k].saw(feed.fixes)
                self.live_sent[k] += len(feed)
                batch += 1
            last = now
            end = time.monotonic() + LIVE_TICK_S
            while not self.stop.is_set() and time.monotonic() < end:
                client.idle(min(TICK_S, max(0.0, end - time.monotonic())))
                batch = self.answers[k].pump(client, batch, _wall_ms())


def _wall_ms() -> int:
    return int(time.time() * 1000)
