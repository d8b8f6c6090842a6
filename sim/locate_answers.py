"""A simulated carrier's answers to locate requests (SPEC §14), for `geofence simulate`
and the demo's carriers (`sim.replay`).

The engine sends a request (`{request, device, reason}`) on the carrier's connection; the
carrier client queues it (`CarrierClient.take_locate_requests`). A carrier thread calls
`pump(client, batch, t_ms)` between its own batches: after `delay_s` (the positioning's
own latency) each request gets, drawn from the carrier's seeded generator,

- GPS_SHARE of the time a GPS-grade fix (acc 5-30 m) near where the subject is now,
- CELL_SHARE a cell fix (acc 500-2000 m), spread as far as its accuracy says,
- else nothing (the phone did not answer the positioning),

one batch per answer carrying `request`, in the carrier's datum, at `t_ms`: the carrier's
own clock (wall time for `simulate`, the replay clock while the demo replays its day, so
an answer never moves the demo's feed clock). "Where the subject is now" is the true
position of the subject's newest fix this carrier has sent (`saw`); a phone the carrier has
not sent a fix of (another carrier's, or none yet) gets no answer. A carrier that has sent
nothing for `keepalive_s` sends an empty batch, so the engine knows its connection (it
only sends requests on a connection that has sent a batch).
"""

import math
import time
from collections import Counter

import numpy as np

from geofence.datum import from_wgs84
from ingest.protocol import encode_rows

GPS_SHARE, CELL_SHARE = 0.8, 0.1      # the rest: no answer
GPS_ACC_M = (5.0, 30.0)
CELL_ACC_M = (500.0, 2000.0)
KEEPALIVE_S = 30.0
MAX_WAITING = 10_000                  # requests taken and not yet answered; older ones drop
M_PER_DEG_LAT = 111_320.0


class LocateAnswers:
    """One carrier's answering machine; used from the carrier's thread only."""

    def __init__(self, carrier: str, phones, datum: str | None, *, delay_s: float = 0.0,
                 seed=0, keepalive_s: float = KEEPALIVE_S, gps_share: float = GPS_SHARE,
                 cell_share: float = CELL_SHARE):
        if delay_s < 0 or keepalive_s <= 0 or not 0 <= gps_share <= gps_share + cell_share <= 1:
            raise ValueError("delay_s >= 0, keepalive_s > 0, shares in 0..1 summing to <= 1")
        self.carrier, self.datum, self.delay_s = carrier, datum, delay_s
        self.keepalive_s, self.gps_share, self.cell_share = keepalive_s, gps_share, cell_share
        phones = np.asarray(phones)
        self._subject_of = {str(p): i for i, p in enumerate(phones.tolist())}
        self._lon = np.full(len(phones), np.nan)
        self._lat = np.full(len(phones), np.nan)
        self._rng = np.random.default_rng(seed)
        self._waiting: list[tuple[float, dict]] = []
        self._last_send = time.monotonic()
        self.answered: Counter = Counter()    # gps, cell, none (drawn), unknown (no phone here)

    def saw(self, fixes) -> None:
        """The carrier sent these fixes (`sim.fixes.Fixes`, time order): its subjects are
        now where the newest of them says (the true position, WGS-84)."""
        if len(fixes) == 0:
            return
        subject = np.asarray(fixes.subject)
        _, last_from_end = np.unique(subject[::-1], return_index=True)
        newest = len(subject) - 1 - last_from_end
        self._lon[subject[newest]] = fixes.true_lon[newest]
        self._lat[subject[newest]] = fixes.true_lat[newest]
        self.sent()

    def sent(self) -> None:
        """The carrier sent a batch now (no keepalive needed for a while)."""
        self._last_send = time.monotonic()

    def pump(self, client, batch: int, t_ms: int) -> int:
        """Take new requests, send the answers that are due and a keepalive if idle;
        returns the next free batch number."""
        now = time.monotonic()
        for request in client.take_locate_requests():
            self._waiting.append((now + self.delay_s, request))
        del self._waiting[:max(0, len(self._waiting) - MAX_WAITING)]
        due = [r for at, r in self._waiting if at <= now]
        self._waiting = [(at, r) for at, r in self._waiting if at > now]
        for request in due:
            frame = self._answer(request, batch, t_ms)
            if frame is not None:
                client.send(frame, batch)
                batch += 1
                self.sent()
        if time.monotonic() - self._last_send >= self.keepalive_s:
            client.send(encode_rows(self.carrier, batch, [], [], [], []), batch)
            batch += 1
            self.sent()
        return batch

    def _answer(self, request: dict, batch: int, t_ms: int) -> bytes | None:
        subject = self._subject_of.get(request["device"])
        if subject is None or math.isnan(self._lon[subject]):
            self.answered["unknown"] += 1
            return None
        draw = self._rng.random()
        if draw < self.gps_share:
            kind, acc = "gps", self._rng.uniform(*GPS_ACC_M)
        elif draw < self.gps_share + self.cell_share:
            kind, acc = "cell", self._rng.uniform(*CELL_ACC_M)
        else:
            self.answered["none"] += 1
            return None
        self.answered[kind] += 1
        east, north = self._rng.normal(0.0, acc / 2, 2)
        lat = self._lat[subject] + north / M_PER_DEG_LAT
        lon = self._lon[subject] + east / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
        lon, lat = np.array([lon]), np.array([lat])
        if self.datum is not None:
            lon, lat = from_wgs84(lon, lat, self.datum)
        return encode_rows(self.carrier, batch, [request["device"]], [int(t_ms)], lon, lat,
                           [round(acc, 1)], [kind], datum=self.datum,
                           request=request["request"])
