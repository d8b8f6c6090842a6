"""Webhook delivery from the durable outbox (SPEC §7): real HTTP receivers on 127.0.0.1
port 0 and a real SQLite file in tmp_path.

Receivers are scripted (500s, a timeout, a hang until released); the sender runs with a
20 ms backoff and a short poll, and every wait has a deadline: no assertion on timings.
"""

import hashlib
import hmac
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts import outbox
from alerts.alarm_store import connect_alarms
from alerts.outbox import Outbox
from alerts.webhooks import (Webhook, WebhookConfigError, WebhookSender, backoff_ms,
                             parse_webhooks, signature)
from engine.database import transaction

SECRET_A = "secret-of-370402001"
SECRET_B = "secret-of-370403001"
OFFICE_A = "370402001"
OFFICE_B = "370403001"
DEADLINE_S = 10.0
FAST = {"backoff": lambda attempts: 20, "poll_s": 0.01}


def wait_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class _Server(ThreadingHTTPServer):
    daemon_threads = False   # server_close() joins the handler threads: nothing left running


class Receiver:
    """A webhook receiver. `script[n]` answers the n-th request: a status code, "timeout"
    (answer 200 after `hang_s`, well past the sender's timeout) or "block" (answer 200 once
    `release` is set); requests beyond the script get 200."""

    def __init__(self, script=(), hang_s: float = 2.0):
        self.script = list(script)
        self.hang_s = hang_s
        self.release = threading.Event()
        self.requests: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append((dict(self.headers), body))
                action = receiver.script[n] if n < len(receiver.script) else 200
                if action == "timeout":
                    time.sleep(receiver.hang_s)
                    action = 200
                elif action == "block":
                    receiver.release.wait(DEADLINE_S)
                    action = 200
                try:
                    self.send_response(action)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:   # the sender gave up waiting and closed the connection
                    pass

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?office=x"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02})
        self.thread.start()

    def alarm_ids(self) -> set[str]:
        with self.lock:
            return {json.loads(body)["id"] for _, body in self.requests}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receivers():
    made = []

    def make(*args, **kwargs):
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def senders():
    made = []

    def make(*args, **kwargs):
        made.append(WebhookSender(*args, **kwargs))
        made[-1].start()
        return made[-1]

    yield make
    for s in made:
        s.stop()


def dead_url() -> str:
    """A port nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def body_of(alarm_id: str, office: str) -> bytes:
    doc = {"id": alarm_id, "type": "zone_exit", "severity": "high", "subject": "S-1",
           "office": office, "where": {"code": office, "name": "市中区中心街街道"}}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def enqueue_alarms(path, office: str, ids: list[str], now_ms: int | None = None) -> None:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    with closing(connect_alarms(path)) as conn, transaction(conn):
        for alarm_id in ids:
            assert outbox.enqueue(conn, alarm_id, office, "raised", body_of(alarm_id, office),
                                  now_ms)


def open_outbox(path) -> Outbox:
    return Outbox(connect_alarms(path))


def stats(path) -> dict[str, int]:
    with open_outbox(path) as box:
        return box.stats()


def pending(path) -> int:
    with open_outbox(path) as box:
        return box.pending()


# -- delivery ------------------------------------------------------------------------------

def test_retries_through_errors_and_a_timeout_until_everything_arrives(tmp_path, receivers,
                                                                        senders):
    path = tmp_path / "alarms.sqlite"
    receiver = receivers([500, 500, 500, "timeout"])
    ids = [f"alarm-{k}" for k in range(6)]
    enqueue_alarms(path, OFFICE_A, ids)
    sender = senders(path, {OFFICE_A: Webhook(OFFICE_A, receiver.url, SECRET_A, 0.5)}, **FAST)

    assert wait_until(lambda: pending(path) == 0), stats(path)
    sender.stop()
    receiver.close()   # joins the handler still sleeping on the timed-out request

    assert receiver.alarm_ids() == set(ids)
    delivery_ids = set()
    for headers, body in receiver.requests:
        assert hmac.compare_digest(headers["X-Geofence-Signature"],
                                   "sha256=" + hmac.new(SECRET_A.encode(), body,
                                                        hashlib.sha256).hexdigest())
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert headers["X-Geofence-Alarm"] == json.loads(body)["id"]
        delivery_ids.add(int(headers["X-Geofence-Delivery"]))
    assert len(delivery_ids) == len(ids)

    seen = len(receiver.requests)
    counted = stats(path)
    assert counted["failures"] == 4                        # three 500s and one timeout
    assert counted["delivered"] == len(ids)
    assert counted["delivered"] + counted["failures"] == seen
    assert counted["retries"] == seen - len(ids)            # every attempt but each row's first



def test_pending_deliveries_survive_a_restart(tmp_path, receivers, senders):
    path = tmp_path / "alarms.sqlite"
    ids = [f"alarm-{k}" for k in range(5)]
    enqueue_alarms(path, OFFICE_A, ids)

    first = senders(path, {OFFICE_A: Webhook(OFFICE_A, dead_url(), SECRET_A, 0.5)}, **FAST)
    assert wait_until(lambda: stats(path)["failures"] >= 3)
    first.stop()
    before = stats(path)
    assert before["delivered"] == 0 and pending(path) == len(ids)

    receiver = receivers()
    second = senders(path, {OFFICE_A: Webhook(OFFICE_A, receiver.url, SECRET_A)}, **FAST)
    assert wait_until(lambda: receiver.alarm_ids() == set(ids))
    assert wait_until(lambda: pending(path) == 0)
    second.stop()
    after = stats(path)
    assert after["delivered"] == len(ids)
    assert after["failures"] == before["failures"]          # counters persist across restarts
    assert after["retries"] >= 1                            # a row tried before, delivered now


@pytest.mark.parametrize("dead", ["refused", "hanging"])
def test_a_dead_receiver_does_not_hold_up_another_office(tmp_path, receivers, senders, dead):
    path = tmp_path / "alarms.sqlite"
    ids_b = [f"b-{k}" for k in range(12)]
    ids_a = [f"a-{k}" for k in range(5)]
    enqueue_alarms(path, OFFICE_B, ids_b)      # the dead office's rows are the oldest
    enqueue_alarms(path, OFFICE_A, ids_a)
    good = receivers()
    if dead == "refused":
        url_b = dead_url()
    else:
        hanging = receivers(["block"] * len(ids_b))
        url_b = hanging.url
    sender = senders(path, {OFFICE_A: Webhook(OFFICE_A, good.url, SECRET_A),
                            OFFICE_B: Webhook(OFFICE_B, url_b, SECRET_B, 30.0)},
                     concurrency=4, **FAST)

    # Would time out if office B's rows took every thread (hanging) or every turn (refused).
    assert wait_until(lambda: good.alarm_ids() == set(ids_a))
    if dead == "refused":
        assert wait_until(lambda: stats(path)["failures"] >= 2)
        assert wait_until(lambda: pending(path) == len(ids_b))   # A's recorded as delivered
        assert stats(path)["delivered"] == len(ids_a)
    else:
        assert wait_until(lambda: len(hanging.requests) >= 1)
        with hanging.lock:
            held = [int(h["X-Geofence-Delivery"]) for h, _ in hanging.requests]
        assert 1 <= len(held) <= sender.per_office
        assert len(set(held)) == len(held)      # a row is never in flight twice
        hanging.release.set()
        assert wait_until(lambda: hanging.alarm_ids() == set(ids_b))
        assert wait_until(lambda: pending(path) == 0)


def test_rows_of_an_office_without_webhook_wait_and_are_logged_once(tmp_path, receivers,
                                                                     senders, caplog):
    path = tmp_path / "alarms.sqlite"
    enqueue_alarms(path, "370499999", ["orphan-1", "orphan-2"])
    enqueue_alarms(path, OFFICE_A, ["a-1"])
    receiver = receivers()
    with caplog.at_level(logging.WARNING, logger="geofence.webhooks"):
        sender = senders(path, {OFFICE_A: Webhook(OFFICE_A, receiver.url, SECRET_A)}, **FAST)
        assert wait_until(lambda: receiver.alarm_ids() == {"a-1"})
        assert wait_until(lambda: sender.unrouted == {"370499999": 2})
        time.sleep(0.1)   # a few more turns: still one warning
        sender.stop()
    assert pending(path) == 2
    warnings = [r for r in caplog.records if "370499999" in r.getMessage()]
    assert len(warnings) == 1


# -- the outbox table -----------------------------------------------------------------------

def test_enqueue_joins_the_callers_transaction(tmp_path):
    path = tmp_path / "alarms.sqlite"
    with closing(connect_alarms(path)) as conn:     # the alarm store creates the tables
        conn.execute("BEGIN IMMEDIATE")
        assert outbox.enqueue(conn, "a-1", OFFICE_A, "raised", b"{}", 1000)
        conn.execute("ROLLBACK")
        assert pending(path) == 0

        conn.execute("BEGIN IMMEDIATE")
        assert outbox.enqueue(conn, "a-1", OFFICE_A, "raised", b"{}", 1000)
        assert not outbox.enqueue(conn, "a-1", OFFICE_A, "raised", b"{}", 2000)
        assert outbox.enqueue(conn, "a-1", OFFICE_A, "escalated-1", b"{}", 2000)
        assert outbox.enqueue(conn, "a-1", OFFICE_B, "copy", b"{}", 2000)
        conn.execute("COMMIT")
    assert pending(path) == 3


def test_outbox_due_failed_delivered_age_purge(tmp_path):
    path = tmp_path / "alarms.sqlite"
    with open_outbox(path) as box:
        with closing(sqlite3.connect(path)) as conn:
            outbox.enqueue(conn, "a-1", OFFICE_A, "raised", b"1", 1_000)
            outbox.enqueue(conn, "a-2", OFFICE_A, "raised", b"2", 2_000)
            outbox.enqueue(conn, "b-1", OFFICE_B, "raised", b"3", 3_000)
            conn.commit()
        assert box.oldest_pending_age_ms(5_000) == 4_000
        first, second, third = box.due(5_000, 10)
        assert [d.alarm_id for d in (first, second, third)] == ["a-1", "a-2", "b-1"]
        assert "body" not in repr(first) and "b'1'" not in repr(first)
        assert [d.alarm_id for d in box.due(5_000, 10, OFFICE_B)] == ["b-1"]
        assert sorted(box.due_offices(5_000)) == [OFFICE_A, OFFICE_B]

        box.failed(first.id, 5_000, 9_000, "HTTP 503")
        assert [d.alarm_id for d in box.due(6_000, 10)] == ["a-2", "b-1"]
        retried, = [d for d in box.due(9_000, 10) if d.id == first.id]
        assert retried.attempts == 1
        box.delivered(first.id, 9_500)
        box.delivered(first.id, 9_600)                # counted once
        box.delivered(second.id, 9_500)
        assert box.stats() == {"delivered": 2, "retries": 1, "failures": 1}
        assert box.oldest_pending_age_ms(10_000) == 7_000
        assert box.pending() == 1 and box.pending_by_office() == {OFFICE_B: 1}

        assert box.purge_delivered(9_000) == 0
        assert box.purge_delivered(10_000) == 2
        box.delivered(third.id, 11_000)
        assert box.oldest_pending_age_ms(12_000) == 0 and box.pending() == 0


# -- config, signature, backoff -------------------------------------------------------------

def test_parse_webhooks():
    hooks = parse_webhooks({OFFICE_A: {"url": "https://example.org/h", "secret": "s"},
                            OFFICE_B: {"url": "http://10.0.0.1:8000/", "secret": "t",
                                       "timeout_s": 2}})
    assert hooks[OFFICE_A] == Webhook(OFFICE_A, "https://example.org/h", "s", 5.0)
    assert hooks[OFFICE_B].timeout_s == 2.0
    assert "secret" not in repr(hooks[OFFICE_A]) and "'s'" not in repr(hooks[OFFICE_A])
    assert parse_webhooks({}) == {}


@pytest.mark.parametrize("table, message", [
    ({"url": "ftp://example.org/h", "secret": "s"}, "http:// or https://"),
    ({"url": "example.org/h", "secret": "s"}, "http:// or https://"),
    ({"url": "https:///h", "secret": "s"}, "host"),
    ({"url": "https://u:p@example.org/", "secret": "s"}, "credentials"),
    ({"secret": "s"}, "url is missing"),
    ({"url": "https://example.org/h"}, "secret is missing or empty"),
    ({"url": "https://example.org/h", "secret": "  "}, "secret is missing or empty"),
    ({"url": "https://example.org/h", "secret": "s", "retries": 3}, "unknown key 'retries'"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": 0}, "timeout_s"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": -1.0}, "timeout_s"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": "5"}, "timeout_s"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": True}, "timeout_s"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": float("inf")}, "timeout_s"),
    ({"url": "https://example.org/h", "secret": "s", "timeout_s": 1000}, "timeout_s"),
    ("https://example.org/h", "must be a table"),
])
def test_parse_webhooks_errors(table, message):
    with pytest.raises(WebhookConfigError, match=message) as caught:
        parse_webhooks({OFFICE_A: table})
    assert isinstance(caught.value, ValueError)
    text = str(caught.value)
    assert "\n" not in text and OFFICE_A in text
    assert "u:p" not in text and "'s'" not in text       # never a secret or credentials


def test_parse_webhooks_rejects_bad_office_codes_and_non_tables():
    with pytest.raises(WebhookConfigError, match="office code"):
        parse_webhooks({"3704 02": {"url": "https://example.org/", "secret": "s"}})
    with pytest.raises(WebhookConfigError, match="table of offices"):
        parse_webhooks(["https://example.org/"])


def test_signature_known_answers():
    body = '{"id":"0f3a9c","type":"zone_exit","office":"370402001","where":"中心街"}'.encode()
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert signature("k3y", body) == "sha256=" + expected
    # RFC 4231 test case 2
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_backoff_doubles_from_one_second_up_to_five_minutes_with_jitter():
    import random
    rng = random.Random(7)
    for attempts, ceiling in [(0, 1_000), (1, 1_000), (2, 2_000), (3, 4_000), (9, 256_000),
                              (10, 300_000), (10_000, 300_000)]:
        waits = [backoff_ms(attempts, rng) for _ in range(200)]
        assert all(0.8 * ceiling <= w <= ceiling for w in waits), (attempts, min(waits))
        assert len(set(waits)) > 1
