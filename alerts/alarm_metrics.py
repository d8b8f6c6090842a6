"""Prometheus metrics of alarms and their delivery (SPEC §10), read from the alarm store.

The figures live in the alarm store's SQLite file (written by the dispatcher in the same
transactions as the alarms themselves), so they survive restarts and whichever process
serves /metrics reads them at scrape time. Labels are types, severities and statuses:
never a subject, an office's people, or a position.
"""

import sqlite3
import time
from pathlib import Path

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from alerts.alarm_store import AlarmStore
from alerts.alarms import SEVERITIES
from engine.database import NotReadyError


class AlarmMetrics:
    """A collector: register it with `registry.register(AlarmMetrics(path))`."""

    def __init__(self, alarms_db: str | Path):
        self.path = Path(alarms_db)
        self._store = None
        self._outbox = None

    def collect(self):
        store = self._open()
        if store is None:
            return
        try:
            raised = store.raised_counts()
            statuses = store.status_counts()
            buckets, total = store.latency_histogram()
            stats = self._outbox.stats()
            oldest_ms = self._outbox.oldest_pending_age_ms(int(time.time() * 1000))
        except sqlite3.Error:   # mid-creation or locked past the timeout: skip this scrape
            return
        family = CounterMetricFamily("geofence_alarms_raised", "Alarms raised by the rules "
                                     "(repeats folded into an open alarm included)",
                                     labels=["type", "severity"])
        for (kind, severity), n in sorted(raised.items()):
            family.add_metric([kind, severity], n)
        yield family
        open_ = GaugeMetricFamily("geofence_alarms_open", "Alarms not yet resolved",
                                  labels=["severity"])
        unacked = GaugeMetricFamily("geofence_alarms_unacknowledged",
                                    "Alarms nobody has acknowledged yet (open or escalated)",
                                    labels=["severity"])
        for severity in SEVERITIES:
            open_.add_metric([severity], sum(n for (st, sev), n in statuses.items()
                                             if sev == severity))
            unacked.add_metric([severity], sum(n for (st, sev), n in statuses.items()
                                               if sev == severity and st != "acknowledged"))
        yield open_
        yield unacked
        latency = HistogramMetricFamily("geofence_fix_to_alarm_seconds",
                                        "From the arrival of the triggering fix at ingest to "
                                        "the alarm stored for delivery")
        latency.add_metric([], [(_le(le), n) for le, n in buckets], total)
        yield latency
        for name, key, text in (("geofence_webhook_deliveries", "delivered",
                                 "Webhook posts the receiver accepted"),
                                ("geofence_webhook_retries", "retries",
                                 "Webhook posts that were repeats of a failed one"),
                                ("geofence_webhook_failures", "failures",
                                 "Webhook posts that failed (refused, error status, timeout)")):
            c = CounterMetricFamily(name, text)
            c.add_metric([], stats.get(key, 0))
            yield c
        g = GaugeMetricFamily("geofence_outbox_oldest_age_seconds",
                              "Age of the oldest webhook delivery not yet accepted (0: none)")
        g.add_metric([], oldest_ms / 1000.0)
        yield g

    def _open(self) -> AlarmStore | None:
        """The store, read-only (a scrape never creates nor upgrades the file); None while
        the dispatcher has not created it or brought it to this code's version."""
        if self._store is None:
            try:
                self._store = AlarmStore(self.path, read_only=True)
            except NotReadyError:
                return None
            self._outbox = self._store.outbox()
        return self._store


def _le(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))
