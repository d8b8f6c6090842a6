"""Webhooks per office (SPEC §7): the config, the signature, the sender that drains the outbox.

Each delivery is one POST of the alarm JSON (the bytes stored in the outbox, unchanged):

    POST <url>
    Content-Type: application/json; charset=utf-8
    X-Geofence-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the office's secret>
    X-Geofence-Alarm: <alarm id>           receivers de-duplicate by it (at-least-once)
    X-Geofence-Delivery: <outbox row id>   the same on every retry of one delivery

A 2xx answer accepts the delivery; anything else (another status, a timeout, a refused or
reset connection, a TLS error) is a failed attempt, retried after `backoff_ms` (1 s doubling
up to 300 s, jittered). A delivery is never given up. Redirects are not followed, and no
proxy from the environment is used.

Scheduling, so that a slow or dead receiver never holds up the others: posts run on a pool
of `concurrency` threads; a healthy office has at most `per_office` posts in flight, and an
office whose last attempt failed has one, and none until its own backoff has passed
(one probe at a time instead of its whole backlog). Offices take turns, least recently
served first. Only the loop thread touches the database; a row is in flight at most once.

Rows for an office with no webhook in the current config (the config changed) stay pending:
they count in the outbox's pending total and oldest age, are logged once per office, and are
not looked at again until the config has the office.

Logs name the office and the delivery id, never a body (personal data) or a URL (it may
hold a token).
"""

import hashlib
import hmac
import http.client
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from alerts.alarm_store import connect_alarms
from alerts.outbox import Delivery, Outbox
from geofence.errors import GeofenceError

log = logging.getLogger("geofence.webhooks")

FIRST_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 300_000
BACKOFF_JITTER_SHARE = 0.2        # a backoff is 80-100 % of its exponential ceiling
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 120.0
MAX_RESPONSE_BYTES = 64 * 1024    # read (and ignore) at most this much of an answer
UNROUTED_CHECK_S = 10.0           # how often rows of unconfigured offices are counted
PURGE_EVERY_S = 3600.0
KEEP_DELIVERED_S = 7 * 24 * 3600.0
DB_RETRY_S = 1.0                  # pause after a database error (locked, I/O) before retrying
WEBHOOK_KEYS = ("url", "secret", "timeout_s")


class WebhookConfigError(GeofenceError, ValueError):
    """An [alerts.webhooks."<office>"] table is invalid; the message says which key. Fix it."""


@dataclass(frozen=True)
class Webhook:
    office: str
    url: str
    secret: str = field(repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S


def parse_webhooks(raw: dict) -> dict[str, Webhook]:
    """Webhooks by office code, from the TOML tables

        [alerts.webhooks."370402001"]
        url = "https://example.org/hook"    # http:// or https://
        secret = "..."                      # HMAC key, required
        timeout_s = 5.0                     # optional, 0 < timeout_s <= 120

    Raises WebhookConfigError (a ValueError) with one line naming the office and the key.
    Never echoes a secret, nor a URL (it may hold a token).
    """
    if not isinstance(raw, dict):
        raise WebhookConfigError("webhooks must be a table of offices, e.g. "
                                 '[alerts.webhooks."370402001"]')
    hooks = {}
    for office, table in raw.items():
        if not isinstance(office, str) or not office or not office.isprintable() \
                or any(c.isspace() or c == "/" for c in office):
            raise WebhookConfigError(f"webhook office {office!r} must be an office code")
        where = f'webhook "{office}":'
        if not isinstance(table, dict):
            raise WebhookConfigError(f"{where} must be a table with url and secret")
        unknown = sorted(set(table) - set(WEBHOOK_KEYS))
        if unknown:
            raise WebhookConfigError(f"{where} unknown key {unknown[0]!r} "
                                     f"(known: {', '.join(WEBHOOK_KEYS)})")
        hooks[office] = Webhook(office, _check_url(where, table.get("url")),
                                _check_secret(where, table.get("secret")),
                                _check_timeout(where, table.get("timeout_s", DEFAULT_TIMEOUT_S)))
    return hooks


def _check_url(where: str, url) -> str:
    if not isinstance(url, str) or not url:
        raise WebhookConfigError(f"{where} url is missing")
    try:
        parts = urlsplit(url)
        _ = parts.port   # raises ValueError on a bad port
    except ValueError as e:
        raise WebhookConfigError(f"{where} url is not a valid URL") from e
    if parts.scheme not in ("http", "https"):
        raise WebhookConfigError(f"{where} url must start with http:// or https:// "
                                 f"(scheme is {parts.scheme or 'missing'!r})")
    if not parts.hostname or any(c.isspace() for c in url):
        raise WebhookConfigError(f"{where} url must name a host and have no spaces")
    if parts.username is not None or parts.password is not None:
        raise WebhookConfigError(f"{where} url must not hold credentials (the secret signs)")
    return url


def _check_secret(where: str, secret) -> str:
    if not isinstance(secret, str) or not secret.strip():
        raise WebhookConfigError(f"{where} secret is missing or empty")
    return secret


def _check_timeout(where: str, timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise WebhookConfigError(f"{where} timeout_s must be a number of seconds in "
                                 f"(0, {MAX_TIMEOUT_S:g}], not {timeout!r}")
    return float(timeout)


def signature(secret: str, body: bytes) -> str:
    """The X-Geofence-Signature value: "sha256=" and the hex HMAC-SHA256 of the body, keyed
    with the secret's UTF-8 bytes. Receivers compare with `hmac.compare_digest`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def backoff_ms(attempts: int, rng) -> int:
    """Wait before the next attempt after `attempts` failed ones: the ceiling is 1 s doubled
    per further failure, capped at 300 s; the wait is 80-100 % of it (jitter, so receivers
    back up together do not get all their retries at once). `rng`: a `random.Random`."""
    ceiling = min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** min(max(attempts, 1) - 1, 30))
    return max(1, int(ceiling * (1.0 - BACKOFF_JITTER_SHARE * rng.random())))


def post(webhook: Webhook, delivery: Delivery) -> str | None:
    """POST one delivery; None if accepted (2xx), else a short error without personal data."""
    parts = urlsplit(webhook.url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=webhook.timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "geofence-engine",
        "X-Geofence-Signature": signature(webhook.secret, delivery.body),
        "X-Geofence-Alarm": delivery.alarm_id,
        "X-Geofence-Delivery": str(delivery.id),
    }
    try:
        conn.request("POST", target, body=delivery.body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        status = response.status
    except TimeoutError:
        return "TimeoutError: timed out"
    except OSError as e:  # refused, reset, unreachable, TLS (ssl.SSLError is an OSError)
        reason = e.strerror or getattr(e, "reason", None)
        return f"{type(e).__name__}: {reason}" if isinstance(reason, str) else type(e).__name__
    except http.client.HTTPException as e:  # a malformed answer: its text is not ours to keep
        return type(e).__name__
    finally:
        conn.close()
    return None if 200 <= status < 300 else f"HTTP {status}"


@dataclass
class _Office:
    in_flight: int = 0
    failures: int = 0          # consecutive failed attempts; > 0: one probe at a time
    hold_until_ms: int = 0     # no new attempt before this
    served_ms: int = 0         # when a post last started (least recently served go first)


class WebhookSender:
    """Drains one outbox file to the configured webhooks; see the module docstring.

    `backoff(attempts) -> ms` replaces `backoff_ms` (tests use a short one); `clock` gives
    seconds; `per_office` caps a healthy office's posts in flight (default half the pool);
    rows delivered more than `keep_delivered_s` ago are purged hourly. `stop()` (or `should_stop()` becoming true) lets the posts in flight finish,
    each within its webhook's timeout, and records them before returning.
    """

    def __init__(self, outbox_path, webhooks: dict[str, Webhook], *, concurrency: int = 4,
                 clock: Callable[[], float] = time.time, poll_s: float = 0.2,
                 backoff: Callable[[int], int] | None = None, per_office: int | None = None,
                 keep_delivered_s: float = KEEP_DELIVERED_S, sync: str = "normal"):
        if concurrency < 1:
            raise ValueError(f"webhook concurrency must be at least 1, not {concurrency}")
        self.outbox_path = outbox_path
        self.webhooks = dict(webhooks)
        self.concurrency = int(concurrency)
        self.per_office = max(1, per_office or self.concurrency // 2)
        self.clock = clock
        self.poll_s = poll_s
        rng = random.Random()
        self.backoff = backoff or (lambda attempts: backoff_ms(attempts, rng))
        self.keep_delivered_s = keep_delivered_s
        self.sync = sync
        self.unrouted: dict[str, int] = {}   # pending rows of offices without a webhook
        self._offices: dict[str, _Office] = {}
        self._in_flight: dict[Future, Delivery] = {}
        self._logged_unrouted: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- running ----------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Deliver until `should_stop()` is true, then finish the posts in flight."""
        outbox = Outbox(connect_alarms(self.outbox_path, self.sync))
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="geofence-webhook")
        try:
            next_unrouted = next_purge = 0.0
            while not should_stop():
                try:
                    self._record_done(outbox)
                    self._dispatch(outbox, pool)
                    if time.monotonic() >= next_unrouted:
                        next_unrouted = time.monotonic() + UNROUTED_CHECK_S
                        self._count_unrouted(outbox)
                    if time.monotonic() >= next_purge:
                        next_purge = time.monotonic() + PURGE_EVERY_S
                        outbox.purge_delivered(self._now_ms() - int(self.keep_delivered_s * 1000))
                except sqlite3.OperationalError as e:   # locked past the timeout, disk, I/O
                    log.warning("webhook outbox %s: %s; retrying", type(e).__name__, e)
                    self._stop.wait(DB_RETRY_S)
                    continue
                if self._in_flight:
                    wait(list(self._in_flight), timeout=self.poll_s, return_when=FIRST_COMPLETED)
                else:
                    self._stop.wait(self.poll_s)
        finally:
            pool.shutdown(wait=True)
            try:
                self._record_done(outbox)
            finally:
                self._in_flight.clear()
                self._offices.clear()
                outbox.close()

    def start(self) -> None:
        """Run in a background thread until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("webhook sender already started")
        Outbox(connect_alarms(self.outbox_path, self.sync)).close()   # fail here, not in the thread
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run_in_thread, name="geofence-webhooks",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread; re-raises what ended it, if it died."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run_in_thread(self) -> None:
        try:
            self.run(self._stop.is_set)
        except BaseException as e:
            log.exception("webhook sender stopped by an error")
            self._error = e

    # -- one turn ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _dispatch(self, outbox: Outbox, pool: ThreadPoolExecutor) -> None:
        """Start posts on the free threads, offices taking turns."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return
        now = self._now_ms()
        busy = {d.id for d in self._in_flight.values()}
        queues = []
        for office in outbox.due_offices(now):
            if office not in self.webhooks:
                self._note_unrouted(office)
                continue
            state = self._offices.setdefault(office, _Office())
            room = (1 if state.failures else self.per_office) - state.in_flight
            if room <= 0 or now < state.hold_until_ms:
                continue
            rows = [d for d in outbox.due(now, state.in_flight + room, office) if d.id not in busy]
            if rows:
                queues.append((state.served_ms, office, rows[:room]))
        queues.sort(key=lambda q: (q[0], q[1]))
        while free > 0 and queues:
            for _, office, rows in queues:
                if free > 0 and rows:
                    self._start(pool, rows.pop(0), now)
                    free -= 1
            queues = [q for q in queues if q[2]]

    def _start(self, pool: ThreadPoolExecutor, delivery: Delivery, now: int) -> None:
        state = self._offices[delivery.office]
        state.in_flight += 1
        state.served_ms = now
        self._in_flight[pool.submit(post, self.webhooks[delivery.office], delivery)] = delivery

    def _record_done(self, outbox: Outbox) -> None:
        for future in [f for f in self._in_flight if f.done()]:
            delivery = self._in_flight.pop(future)
            state = self._offices[delivery.office]
            state.in_flight -= 1
            error = future.exception()
            if error is not None:   # a bug in `post`: count it as a failed attempt
                log.error("webhook post for office %s raised %s", delivery.office,
                          type(error).__name__)
            error = "internal: " + type(error).__name__ if error else future.result()
            now = self._now_ms()
            if error is None:
                outbox.delivered(delivery.id, now)
                if state.failures:
                    log.info("webhook of office %s accepts again after %d failed attempts",
                             delivery.office, state.failures)
                state.failures, state.hold_until_ms = 0, 0
                continue
            attempts = delivery.attempts + 1
            outbox.failed(delivery.id, now, now + self.backoff(attempts), error)
            state.failures += 1
            state.hold_until_ms = max(state.hold_until_ms, now + self.backoff(state.failures))
            level = logging.WARNING if state.failures == 1 else logging.DEBUG
            log.log(level, "webhook of office %s: delivery %d attempt %d failed (%s)",
                    delivery.office, delivery.id, attempts, error)

    def _note_unrouted(self, office: str) -> None:
        if office not in self._logged_unrouted:
            self._logged_unrouted.add(office)
            log.warning("webhook deliveries for office %s wait: no webhook configured for it",
                        office)

    def _count_unrouted(self, outbox: Outbox) -> None:
        self.unrouted = {office: n for office, n in outbox.pending_by_office().items()
                         if office not in self.webhooks}
        for office in self.unrouted:
            self._note_unrouted(office)
