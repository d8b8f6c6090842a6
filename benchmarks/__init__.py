"""Benchmarks of geofence-engine, one module per pipeline stage: `python -m benchmarks`.

Each stage module has a docstring saying what it measures and how, and a
``run(quick: bool) -> common.Report``. Registering a new stage is one line below.
"""

STAGES = {  # stage name -> module with run(quick) -> Report
    "locate": "benchmarks.locate",
    "verdict": "benchmarks.verdict",
    "ingest": "benchmarks.ingest",
    "rules": "benchmarks.rules",
    "alarm_quality": "benchmarks.alarm_quality",
    "alarm_trust": "benchmarks.alarm_trust",
    "alarm_latency": "benchmarks.alarm_latency",
    "soak": "benchmarks.soak",
    "registry_change": "benchmarks.registry_change",
    "approval_latency": "benchmarks.approval_latency",
    "locate_roundtrip": "benchmarks.locate_roundtrip",
    "connector": "benchmarks.connector",
    "gathering": "benchmarks.gathering",
}
