"""The desk's Prometheus metrics (`GET /metrics`): alarms and the desk's own counters.

One `CollectorRegistry` per application (no global state): the alarm collector
(`alerts.alarm_metrics.AlarmMetrics`, read from the alarm store at scrape time) plus
logins by result, connected event streams, and HTTP requests by route template and
status. Labels never carry a user, a subject, an alarm id or a position: routes are
templates such as ``/api/alarms/{id}``.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from alerts.alarm_metrics import AlarmMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DeskMetrics:
    def __init__(self, alarms_db):
        self.registry = CollectorRegistry(auto_describe=True)
        self.alarms = AlarmMetrics(alarms_db)
        self.registry.register(self.alarms)
        self.logins = Counter("geofence_desk_logins", "Desk login attempts by result "
                              "(ok, failed: wrong user or password, limited: too many "
                              "failures)", ["result"], registry=self.registry)
        for result in ("ok", "failed", "limited"):
            self.logins.labels(result)
        self.sse_clients = Gauge("geofence_desk_sse_clients",
                                 "Connected live alarm streams", registry=self.registry)
        self.refused_hosts = Counter("geofence_desk_refused_hosts", "Requests refused for a "
                                     "host name not in [desk] hosts (DNS rebinding)",
                                     registry=self.registry)
        self.requests = Counter("geofence_desk_http_requests", "Desk HTTP requests by route "
                                "template and status", ["route", "status"],
                                registry=self.registry)

    def render(self) -> bytes:
        """The exposition text; reads the alarm store (call it on the database thread)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Close the alarm collector's connections (opened on the first scrape)."""
        for name in ("_store", "_outbox"):
            conn = getattr(self.alarms, name, None)
            if conn is not None:
                conn.close()
                setattr(self.alarms, name, None)
