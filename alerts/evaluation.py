"""The fix-driven path of one partition: verdicts from the compiled core, then the rules.

A batch's share of this partition (the fixes of subjects with ``index % count == k``)
is judged against each subject's allowed area at the fix's own time (`SubjectBook`), its
exclusion zones checked, and the verdicts run through the per-subject rules
(`alerts.rules.RuleState`, with the thresholds of each subject's level and key); the
events become alarms (`alerts.alarms`). Everything is one compiled call per stage for
the whole batch; Python touches only the few events.

Handset status reports in the batch (rows with `src >= protocol.STATE0`, no position;
`alerts.handset`) are split out by a mask first: they get no verdict and are not counted
among the verdicts; after the positions, they are folded into the subjects' handset
state (`RuleState.apply_reports`), so a report is judged against every position fix of
its batch (an older one is late).
"""

import logging
import time
from dataclasses import dataclass

import numpy as np

import geofence
from alerts.alarms import Alarm, Places, alarms_from_events
from alerts.curfews import CurfewWatch
from alerts.handset import split_reports
from ingest.protocol import STATE0
from alerts.rules import RuleState, SnapshotError
from alerts.subject_book import SubjectBook

log = logging.getLogger("geofence.worker")


@dataclass(frozen=True)
class Evaluated:
    """What one batch's share gave."""

    verdicts: np.ndarray    # int64[3]: how many `in`, `unsure`, `out` (position fixes only)
    alarms: list[Alarm]
    kernel_s: float         # seconds in the verdict and rule kernels
    late: int               # fixes and status reports older than their subject's newest
                            # (stored, not judged)
    reports: int = 0        # handset status reports in the share (late ones included)


class Evaluation:
    """Verdicts, then rules, for one partition; owns the partition's rule state."""

    def __init__(self, engine: geofence.VerdictEngine, book: SubjectBook, rules_settings,
                 snapshot: bytes | None = None):
        self.engine = engine
        self.book = book
        self.rules = RuleState(max(book.size, 1), rules_settings)
        if snapshot is not None:
            try:
                self.rules.restore(snapshot)
            except SnapshotError as e:   # another build's format, or damaged: start afresh
                log.warning("rules state not restored (%s); starting with fresh state", e)
        self.places = Places.of(engine.jurisdictions)
        self.curfews = CurfewWatch(engine, book, rules_settings)
        self._zone_codes = [str(c) for c in engine.zones.codes] if engine.zones else None

    def run(self, rows, carrier: int, received_ms: int | None) -> Evaluated:
        """Judge `rows` (this partition's share of one stored batch, from `carrier`): its
        position fixes, then its handset status reports."""
        is_report = split_reports(rows.src)
        if not is_report.any():
            return self._judge(rows, carrier, received_ms)
        reports, fixes = rows.take(is_report), rows.take(~is_report)
        judged = self._judge(fixes, carrier, received_ms) if len(fixes) else Evaluated(
            np.zeros(3, np.int64), [], 0.0, 0)
        self.grow()
        late = self.rules.apply_reports(reports.subject, reports.t_ms,
                                        reports.src.astype(np.int64) - STATE0, carrier)
        return Evaluated(judged.verdicts, judged.alarms, judged.kernel_s,
                         judged.late + len(late), len(reports))

    def _judge(self, fixes, carrier: int, received_ms: int | None) -> Evaluated:
        """Verdicts, then rules, for position fixes (no status report among them)."""
        started = time.perf_counter()
        area = self.book.areas_at(fixes.subject, fixes.t_ms)
        lon, lat, acc = fixes.lon, fixes.lat, fixes.acc_m.astype(np.float64)
        verdicts = self.engine.verdicts(lon, lat, acc, area)
        sets = self.book.exclusions_of[fixes.subject]
        if sets.any():
            worst, zone = self.engine.exclusion_verdicts(lon, lat, acc, sets).worst()
        else:
            worst = np.full(len(fixes), geofence.OUT, np.int8)
            zone = np.full(len(fixes), -1, np.int32)
        self.grow()
        events = self.rules.apply(fixes.subject, fixes.t_ms, verdicts.verdict, worst, zone,
                                  self.rule_classes(), fixes=fixes, carrier=carrier)
        breaches = self.curfews.check(fixes, self.places)
        kernel_s = time.perf_counter() - started
        alarms = []
        if len(events):
            where = {int(i): self.places[verdicts.where[i]] for i in np.unique(events.fix)}
            alarms = alarms_from_events(events, fixes, self.book.subjects,
                                        self.book.schedule.routing_at, where,
                                        int(time.time() * 1000), received_ms, self._zone_codes)
        return Evaluated(np.bincount(verdicts.verdict, minlength=3), alarms + breaches, kernel_s,
                         events.n_late)

    def rule_classes(self) -> np.ndarray:
        """Each subject's rule class (level and key, `SubjectBook.rule_class`), one per
        subject of the rule state (a subject the book does not know yet: normal)."""
        classes, n = self.book.rule_class, self.rules.n_subjects
        if len(classes) != n:
            fitted = np.zeros(n, np.int8)
            fitted[:min(n, len(classes))] = classes[:n]
            classes = fitted
        return classes

    def grow(self) -> None:
        """Room in the rule state for every subject the book knows."""
        if self.rules.n_subjects < self.book.size:
            self.rules.grow(self.book.size)
