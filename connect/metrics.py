"""The connector's own Prometheus registry (no device or subject labels, ever).

Served on the connector's `metrics_bind` when set. `connector` is the config's name.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("position", "state", "retry", "error", "malformed", "rate_limited", "timeout",
            "transport")


class ConnectorMetrics:
    def __init__(self, name: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "geofence_connect_requests", "Requests to the positioning API, by outcome",
            ["connector", "outcome"], registry=r)
        self.answers = Counter(
            "geofence_connect_answers_sent", "Rows handed to the engine: positions or "
            "handset states", ["connector", "kind"], registry=r)
        self.accepted = Counter(
            "geofence_connect_rows_accepted", "Rows the engine acknowledged as accepted",
            ["connector"], registry=r)
        self.rejected = Counter(
            "geofence_connect_rows_rejected", "Rows the engine refused, by reason",
            ["connector", "reason"], registry=r)
        self.locates = Counter(
            "geofence_connect_locate_requests", "Locate requests received from the engine",
            ["connector", "reason"], registry=r)
        self.skipped = Counter(
            "geofence_connect_skipped", "Requests not made: the daily budget was spent (budget, "
            "locate_budget), the device is not this connector's (not_served)",
            ["connector", "why"], registry=r)
        self.budget = Gauge(
            "geofence_connect_budget_remaining", "Scheduled requests left today "
            "(+Inf: no limit)", ["connector"], registry=r)
        self.latency = Histogram(
            "geofence_connect_provider_latency_seconds", "Positioning API response time",
            ["connector"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.served = Gauge(
            "geofence_connect_devices_served", "Devices on the poll schedule",
            ["connector"], registry=r)
        self.failures = Counter(
            "geofence_connect_failures", "Requests that failed inside the connector (a bug, "
            "logged by its type): the phone is asked again", ["connector"], registry=r)
        self.backlog = Gauge(
            "geofence_connect_engine_backlog_rows", "Rows handed to the engine feed and not "
            "yet acknowledged", ["connector"], registry=r)
        self.paused = Gauge(
            "geofence_connect_paused", "1 while requests wait for the engine to take the "
            "rows it has", ["connector"], registry=r)
        self.name = name
        for outcome in OUTCOMES:
            self.requests.labels(name, outcome)

    def request(self, outcome: str, seconds: float | None = None) -> None:
        self.requests.labels(self.name, outcome).inc()
        if seconds is not None:
            self.latency.labels(self.name).observe(seconds)
