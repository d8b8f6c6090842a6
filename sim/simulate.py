"""`geofence simulate`: carriers pushing a realistic synthetic feed to a running engine.

The feed is `sim.movement`'s day for the seeded Zaozhuang population: the same seed gives
the same subjects and phones as the registry built from it (`builtin_population`, then
`registry_document`), so the engine knows every device. The day ends now (the engine
refuses fixes more than 5 min ahead or older than its maximum age).

Subjects are split among the carriers (`sim.carriers`: subject i goes to
carriers[i % len(carriers)], GCJ-02 carriers convert). A few fixes are spoiled on purpose,
so the engine's refusals are exercised too: `bad_share` of them get a NaN or out-of-range
lon, a negative acc or an unknown src (reasons lon, acc, src), `zero_share` are exactly
0,0 (no_position). Each carrier sends its fixes in time order, in batches of
`batch_fixes`, from a thread of its own with its own `CarrierClient`; a token bucket
shared by all of them holds the total to `rate` fixes/s (0: as fast as the acks come back).

Batch numbers start at the wall clock in milliseconds times 1000, so a second run does
not collide with the first in the engine's (carrier, batch) memory and get `duplicate`
for everything. Output is counts only: never a device, subject or coordinate.

Each carrier answers the engine's locate requests (SPEC §14, `sim.locate_answers`) at the
wall clock, after `locate_delay_s`, between its batches; with `linger_s` it stays
connected that long after its day is sent, answering (and sending an empty batch now and
then, so the engine keeps its connection).
"""

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from ingest.carrier import CarrierClient, CarrierStats, load_curve
from sim.carriers import FORMS, UNKNOWN_SOURCE, CarrierFeed, split_by_carrier
from sim.locate_answers import LocateAnswers
from sim.movement import DAY_MS, make_day
from sim.population import builtin_population

SPOILS = ("lon_nan", "lon_range", "acc", "src")   # how a bad fix is bad, drawn evenly
PROGRESS_EVERY_S = 5.0
STOP_CHECK_S = 0.1           # how soon a waiting carrier notices that the run stops
END_BEFORE_NOW_MS = 60_000   # make_day adds up to 30 s of jitter past the day's end
INJECT_SEED_SALT = 0x51A7    # the spoiled fixes draw from their own stream
LOCATE_SEED_SALT = 0x10CA7   # and the locate answers from theirs
ANSWER_BATCHES = 500_000_000  # answer batch numbers: base + this + n, apart from the feed's


def build_feeds(subjects: int, seed: int, carriers, gcj02_carriers=(), *,
                bad_share: float = 0.001, zero_share: float = 0.001,
                start_ms: int | None = None) -> tuple[list[CarrierFeed], dict]:
    """The day of fixes split by carrier, converted and spoiled; and what was injected
    ({"bad": {spoil: n}, "zero": n}) so a test or a reader can check the engine's answer."""
    if not (0 <= bad_share and 0 <= zero_share and bad_share + zero_share <= 1):
        raise ValueError("bad_share and zero_share must be >= 0 and sum to at most 1")
    if start_ms is None:
        start_ms = int(time.time() * 1000) - DAY_MS - END_BEFORE_NOW_MS
    layer, people, rng = builtin_population(subjects, seed)
    feeds = split_by_carrier(make_day(layer, people, rng, start_ms), people.phones,
                             carriers, gcj02_carriers)
    inject = np.random.default_rng([seed, INJECT_SEED_SALT])
    return feeds, _spoil(feeds, bad_share, zero_share, inject)


def _spoil(feeds: list[CarrierFeed], bad_share: float, zero_share: float, rng) -> dict:
    """Spoil fixes of the feeds in place, drawn over all of them; what was done."""
    sizes = np.array([len(f) for f in feeds])
    n = int(sizes.sum())
    n_bad = round(n * bad_share)
    n_zero = min(round(n * zero_share), n - n_bad)
    chosen = rng.choice(n, n_bad + n_zero, replace=False)
    how = np.concatenate([rng.integers(len(SPOILS), size=n_bad),
                          np.full(n_zero, len(SPOILS))])   # len(SPOILS): 0,0
    ends = np.cumsum(sizes)
    owner = np.searchsorted(ends, chosen, side="right")
    index = chosen - (ends - sizes)[owner]
    for k, feed in enumerate(feeds):
        f, mine, spoil = feed.fixes, index[owner == k], how[owner == k]
        f.lon[mine[spoil == 0]] = np.nan
        f.lon[mine[spoil == 1]] = 200.0
        f.acc_m[mine[spoil == 2]] = -1.0
        f.src[mine[spoil == 3]] = UNKNOWN_SOURCE
        zero = mine[spoil == len(SPOILS)]
        f.lon[zero], f.lat[zero] = 0.0, 0.0
    return {"bad": {s: int((how[:n_bad] == i).sum()) for i, s in enumerate(SPOILS)},
            "zero": int(n_zero)}


class TokenBucket:
    """Holds its callers, together, to `rate` tokens a second, with a burst of one second.

    `reserve(n)` books n tokens at once (the balance may go negative) and says how long
    the caller must wait before using them, so the average rate holds whatever the batch
    sizes. The caller waits as it likes (a carrier keeps reading acks meanwhile). A wait
    that would end past `deadline` is refused and books nothing: a run never overshoots
    its duration by a sleep. rate 0: no limit."""

    def __init__(self, rate: float):
        self.rate = rate
        self._tokens = rate
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, n: int, deadline: float | None = None) -> float | None:
        """Seconds to wait before sending n fixes; None if the deadline comes first."""
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        if self.rate <= 0:
            return 0.0
        with self._lock:
            tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait_s = max(0.0, (n - tokens) / self.rate)
            if deadline is not None and now + wait_s > deadline:
                self._tokens = tokens
                return None
            self._tokens = tokens - n
        return wait_s


@dataclass
class _Sender:
    """One carrier's thread and what it did; `client` is read by the progress line."""

    feed: CarrierFeed
    client: CarrierClient | None = None
    fixes_sent: int = 0
    answers: LocateAnswers | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


def _send_feed(sender: _Sender, ctx, endpoint, form, batch_fixes, batch_base, bucket, stop,
               deadline, client_options, linger_s) -> None:
    """A carrier's thread: send its batches until done, stopped or past the deadline,
    answering locate requests meanwhile; linger answering; then drain the window. Any
    failure is kept for the main thread and stops the others."""
    feed, answers = sender.feed, sender.answers
    answer_batch = batch_base + ANSWER_BATCHES
    try:
        with CarrierClient(ctx, endpoint, feed.name, **client_options) as client:
            sender.client = client

            def answer() -> None:
                nonlocal answer_batch
                answer_batch = answers.pump(client, answer_batch, int(time.time() * 1000))

            for batch_no, frame, n in feed.batches(form, batch_fixes, batch_base):
                wait_s = bucket.reserve(n, deadline)
                if wait_s is None or not _idle(client, wait_s, stop, answer):
                    break                           # past the duration, or stopped
                client.send(frame, batch_no)
                answers.saw(feed.fixes.take(slice(sender.fixes_sent, sender.fixes_sent + n)))
                sender.fixes_sent += n
                answer()
            if sender.fixes_sent == len(feed) and linger_s > 0:
                _idle(client, linger_s, stop, answer)
            client.drain()
    except BaseException as e:  # handed to the main thread, which raises it
        sender.error = e
        stop.set()


def _idle(client: CarrierClient, seconds: float, stop: threading.Event,
          answer: Callable[[], None] = lambda: None) -> bool:
    """Let the client read acks (and answer locate requests) for `seconds`, in slices so
    a stop is seen; False if stopped."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return True
        client.idle(min(left, STOP_CHECK_S))
        answer()
    return False


def simulate(endpoint: str, subjects: int, rate: float, *, seed: int,
             carriers=("cmcc", "cucc", "ctcc"), gcj02_carriers=("cucc",), form: str = "cols",
             batch_fixes: int = 5000, bad_share: float = 0.001, zero_share: float = 0.001,
             curve_dir=None, duration_s: float | None = None, start_ms: int | None = None,
             batch_base: int | None = None, timeout_ms: float = 2500, retries: int = 5,
             window: int = 8, ctx: zmq.Context | None = None,
             progress_s: float = PROGRESS_EVERY_S, out: Callable[[str], None] = print,
             locate_delay_s: float = 0.0, linger_s: float = 0.0,
             stop: threading.Event | None = None) -> dict:
    """Push a day of fixes for `subjects` people to the engine at `endpoint`; the summary.

    rate: fixes per second over all carriers, 0 for as fast as the engine acks. A rate
    limit also caps a batch at one second of fixes, so the feed flows evenly.
    duration_s: stop sending new batches after this long (the window is still drained).
    curve_dir: the directory of `server.key` and each carrier's `<carrier>.key_secret`.
    ctx: the process's context (default `zmq.Context.instance()`). Raises the first
    carrier's failure (CarrierError when the engine stops answering) after the summary.
    locate_delay_s: how long a carrier takes to answer a locate request; linger_s: how
    long each carrier stays connected, answering, after its day is sent; stop: set it to
    end the run early (as Ctrl-C does).
    """
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {FORMS}")
    if subjects < 1 or rate < 0 or batch_fixes < 1:
        raise ValueError("subjects and batch_fixes must be >= 1 and rate >= 0")
    started = time.monotonic()
    feeds, injected = build_feeds(subjects, seed, tuple(carriers), tuple(gcj02_carriers),
                                  bad_share=bad_share, zero_share=zero_share,
                                  start_ms=start_ms)
    total = sum(len(f) for f in feeds)
    if rate > 0:
        batch_fixes = min(batch_fixes, max(1, int(rate)))
    if batch_base is None:
        batch_base = int(time.time() * 1000) * 1000
    ctx = ctx if ctx is not None else zmq.Context.instance()
    stop = stop if stop is not None else threading.Event()
    bucket = TokenBucket(rate)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    out(f"simulate: {subjects:,} subjects, {total:,} fixes over 24 h for "
        + ", ".join(f"{f.name} {len(f):,}" + (f" ({f.datum})" if f.datum else "") for f in feeds)
        + f"; {form} batches of up to {batch_fixes:,} to {endpoint}"
        + (f" at {rate:,.0f} fixes/s" if rate > 0 else " as fast as acked"))

    senders = [_Sender(f, answers=LocateAnswers(
        f.name, f.phones, f.datum, delay_s=locate_delay_s, seed=[seed, k, LOCATE_SEED_SALT]))
        for k, f in enumerate(feeds)]
    options = [{"timeout_ms": timeout_ms, "retries": retries, "window": window, "seed": seed + k,
                "curve": load_curve(curve_dir, f.name) if curve_dir is not None else None}
               for k, f in enumerate(feeds)]   # every key file read before a thread starts
    t0 = time.monotonic()
    for s, opts in zip(senders, options):
        s.thread = threading.Thread(
            target=_send_feed, name=f"geofence-simulate-{s.feed.name}", daemon=True,
            args=(s, ctx, endpoint, form, batch_fixes, batch_base, bucket, stop, deadline,
                  opts, linger_s))
        s.thread.start()
    try:
        _wait(senders, t0, total, progress_s, out)
    except KeyboardInterrupt:
        stop.set()
        _wait(senders, t0, total, progress_s, out)
        raise
    finally:
        stats = _summary(senders, injected, total, time.monotonic() - t0, out)
        stats["setup_seconds"] = t0 - started
    errors = [s.error for s in senders if s.error is not None]
    if errors:
        raise errors[0]
    return stats


def _wait(senders, t0, total, progress_s, out) -> None:
    """Join the carriers' threads, printing a progress line every `progress_s`."""
    next_report = t0 + progress_s
    for s in senders:
        while s.thread.is_alive():
            s.thread.join(timeout=min(0.2, max(0.0, next_report - time.monotonic())))
            if time.monotonic() >= next_report:
                out(_progress(senders, t0, total))
                next_report += progress_s


def _progress(senders, t0, total) -> str:
    """Counters another thread is updating: plain ints only, read without a lock."""
    clients = [s.client for s in senders if s.client is not None]
    sent = sum(s.fixes_sent for s in senders)
    seconds = time.monotonic() - t0
    return (f"simulate: {sent:,}/{total:,} fixes sent ({sent / max(total, 1):.0%}), "
            f"{sum(c.stats.fixes_accepted for c in clients):,} accepted, "
            f"{sum(c.stats.fixes_rejected_total for c in clients):,} rejected, "
            f"{sum(c.stats.resends for c in clients):,} resends, "
            f"{sent / max(seconds, 1e-9):,.0f} fixes/s")


def _summary(senders, injected, total, seconds, out) -> dict:
    """The final counts, printed and returned (after every thread has ended)."""
    stats = CarrierStats.combined(s.client.stats for s in senders if s.client is not None)
    sent = sum(s.fixes_sent for s in senders)
    p50, p99 = stats.latency_percentile(50), stats.latency_percentile(99)
    result = {
        "fixes": total, "fixes_sent": sent, "fixes_accepted": stats.fixes_accepted,
        "fixes_rejected": dict(stats.fixes_rejected), "batches": stats.batches,
        "batches_by_status": dict(stats.acks), "batch_errors": dict(stats.batch_errors),
        "resends": stats.resends, "resends_acknowledged": stats.resends_acknowledged,
        "locate_requests": stats.locate_requests,
        "locate_answers": dict(sum((s.answers.answered for s in senders), Counter())),
        "timeouts": stats.timeouts, "reconnects": stats.reconnects,
        "latency_ms": {"p50": p50, "p99": p99}, "seconds": seconds,
        "rate": sent / seconds if seconds > 0 else 0.0, "injected": injected,
        "carriers": {s.feed.name: {"fixes": len(s.feed), "fixes_sent": s.fixes_sent,
                                   "datum": s.feed.datum or "wgs84",
                                   "error": None if s.error is None else str(s.error)}
                     for s in senders}}
    rejected = ", ".join(f"{r} {n:,}" for r, n in sorted(stats.fixes_rejected.items()))
    statuses = ", ".join(f"{k} {n:,}" for k, n in sorted(stats.acks.items())) or "none"
    latency = ("n/a" if p50 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    out(f"simulate: sent {sent:,} of {total:,} fixes in {stats.batches:,} batches "
        f"in {seconds:.1f} s ({result['rate']:,.0f} fixes/s)")
    out(f"  accepted {stats.fixes_accepted:,}; rejected {stats.fixes_rejected_total:,}"
        + (f" ({rejected})" if rejected else ""))
    out(f"  acks: {statuses}; resends {stats.resends:,} ({stats.timeouts:,} timeouts, "
        f"{stats.resends_acknowledged:,} answered duplicate); ack latency {latency}"
        + (f"; whole batches refused: {dict(stats.batch_errors)}" if stats.batch_errors else ""))
    for s in senders:
        if s.error is not None:
            out(f"  {s.feed.name}: stopped: {s.error}")
    return result
