"""The Prometheus textfile: per-target figures from the state file.

Written with prometheus_client (atomically: a temporary file, then a rename)
for node_exporter's textfile collector, after every backup run.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _StateCollector:
    def __init__(self, state: dict, name: str, environment: str):
        self.state, self.name, self.environment = state, name, environment

    def collect(self):
        labels = ["name", "environment", "target"]
        last_success = GaugeMetricFamily("eternia_backup_last_success_timestamp_seconds",
                                         "Time of the last successful backup, per target", labels=labels)
        duration = GaugeMetricFamily("eternia_backup_last_duration_seconds",
                                     "Duration of the last backup run, per target", labels=labels)
        size = GaugeMetricFamily("eternia_backup_last_size_bytes",
                                 "Size of the last successful backup's archive, per target", labels=labels)
        failures = CounterMetricFamily("eternia_backup_failures",
                                       "Backup runs that failed, per target", labels=labels)
        for target, t in sorted((self.state.get("targets") or {}).items()):
            values = [self.name, self.environment, target]
            if t.get("last_success"):
                last_success.add_metric(values, datetime.fromisoformat(t["last_success"]).timestamp())
            if t.get("last_duration_seconds") is not None:
                duration.add_metric(values, float(t["last_duration_seconds"]))
            if t.get("last_size_bytes") is not None:
                size.add_metric(values, float(t["last_size_bytes"]))
            failures.add_metric(values, float(t.get("failures_total", 0)))
        yield from (last_success, duration, size, failures)


def write_metrics(path: Path, state: dict, *, name: str, environment: str) -> None:
    registry = CollectorRegistry()
    registry.register(_StateCollector(state, name, environment))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
