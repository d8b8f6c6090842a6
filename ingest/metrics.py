"""Prometheus metrics of ingest and evaluation (SPEC §10), in one registry per engine.

Labels carry carriers, reasons, statuses and outcomes only: never a subject, a device or
a coordinate. Carrier names come from the network, so at most `MAX_CARRIER_LABELS`
distinct names get their own label (an unauthenticated peer could otherwise invent
names to blow up the series count); the rest are counted as "other".
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_CARRIER_LABELS = 64
_LOCATE_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class IngestMetrics:
    """The counters, gauges and histograms of one engine."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.fixes_received = Counter("geofence_fixes_received", "Fixes received, by carrier",
                                      ["carrier"], registry=r)
        self.fixes_accepted = Counter("geofence_fixes_accepted", "Fixes accepted and stored",
                                      ["carrier"], registry=r)
        self.fixes_rejected = Counter("geofence_fixes_rejected", "Fixes refused, by reason",
                                      ["carrier", "reason"], registry=r)
        self.no_position = Counter("geofence_no_position_fixes",
                                   "Fixes at exactly 0,0: failed positioning", registry=r)
        self.batches = Counter("geofence_batches", "Batches answered, by status",
                               ["status"], registry=r)
        self.batch_errors = Counter("geofence_batch_errors", "Whole batches refused, by error",
                                    ["error"], registry=r)
        self.auth_refusals = Counter("geofence_auth_refusals",
                                     "Carrier connections refused by CURVE/ZAP, by reason",
                                     ["reason"], registry=r)
        self.ack_seconds = Histogram("geofence_ack_seconds",
                                     "From a frame's arrival to its ack being sent",
                                     buckets=_SECONDS_BUCKETS, registry=r)
        self.commit_seconds = Histogram("geofence_store_commit_seconds",
                                        "One group commit to the store",
                                        buckets=_SECONDS_BUCKETS, registry=r)
        self.backlog = Gauge("geofence_backlog_fixes",
                             "Fixes stored and acknowledged but not yet evaluated", registry=r)
        self.duplicate_filter_fixes = Gauge(
            "geofence_duplicate_filter_fixes",
            "Accepted (device, t) remembered to refuse resends as duplicate", registry=r)
        self.duplicate_filter_bytes = Gauge(
            "geofence_duplicate_filter_bytes", "Memory of the duplicate filter's table",
            registry=r)
        self.verdicts = Counter("geofence_verdicts", "Verdicts of evaluated fixes, by outcome",
                                ["outcome"], registry=r)
        self.kernel_seconds = Histogram("geofence_check_kernel_seconds",
                                        "Verdict kernel time per evaluated batch",
                                        buckets=_SECONDS_BUCKETS, registry=r)
        self.evaluated = Counter("geofence_fixes_evaluated", "Fixes run through the verdicts",
                                 registry=r)
        self.late_fixes = Counter("geofence_late_fixes",
                                  "Fixes older than their subject's newest evaluated fix: stored, "
                                  "never change rule state", registry=r)
        self.worker_restarts = Counter("geofence_worker_restarts",
                                       "Engine processes restarted after they died", registry=r)
        self.locate_requests = Counter(
            "geofence_locate_requests", "Locate requests to carriers (SPEC §14), by reason "
            "(desk, unsure) and outcome (sent, answered, timed_out)", ["reason", "outcome"],
            registry=r)
        self.locate_seconds = Histogram("geofence_locate_seconds",
                                        "From a locate request to the fix that answers it",
                                        buckets=_LOCATE_BUCKETS, registry=r)
        self.locate_open = Gauge("geofence_locate_open_requests",
                                 "Locate requests neither answered nor timed out", registry=r)
        self.handset_reports = Counter("geofence_handset_reports",
                                       "Handset status rows accepted (off, suspended, "
                                       "unreachable), by state", ["state"], registry=r)
        self._carriers: set[str] = set()

    def carrier_label(self, carrier: str | None) -> str:
        """The carrier's own label while there are few; "other" beyond the cap."""
        if carrier is None:
            return "unknown"
        if carrier in self._carriers:
            return carrier
        if len(self._carriers) < MAX_CARRIER_LABELS:
            self._carriers.add(carrier)
            return carrier
        return "other"


class StorageFaultCollector:
    """`geofence_storage_fault{process,store}` (1 while a fault lasts) and
    `geofence_storage_faults_total{process,store,kind}` (faults begun since serve started),
    read from the health board (`engine.health`) at each scrape: every process's faults,
    though only the ingest serves /metrics. Labels are process, store and kind names only."""

    def __init__(self, board):
        self.board = board

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        active = GaugeMetricFamily("geofence_storage_fault",
                                   "1 while a store of this process cannot be written safely",
                                   labels=["process", "store"])
        now = {(f.process, f.store) for f in self.board.faults()}
        counts = self.board.counts()
        for process, store in sorted(now | {(p, s) for p, s, _ in counts}):
            active.add_metric([process, store], int((process, store) in now))
        total = CounterMetricFamily("geofence_storage_faults",
                                    "Storage faults begun (file removed or replaced, disk full, "
                                    "read-only, I/O error)", labels=["process", "store", "kind"])
        for (process, store, kind), n in sorted(counts.items()):
            total.add_metric([process, store, kind], n)
        return [active, total]
