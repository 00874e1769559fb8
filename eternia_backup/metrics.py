"""Prometheus metrics, read from the state file: the textfile and the embedded /metrics endpoint.

One collector serves both. It reads the state file each time it is collected,
so the endpoint (``metrics.listen``, while the scheduler runs) answers with
what the last command recorded, and the textfile (``metrics.textfile``, for
node_exporter's textfile collector) is written atomically after every command
that changes the state (``BackupManager.write_metrics``). Nothing here lists a
target: per-target counts come from the inventory the last listing recorded.
The metric names are documented in docs/monitoring.md.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__
from .config import parse_listen
from .errors import ConfigError
from .timefmt import parse_iso

log = logging.getLogger("eternia_backup.metrics")

_LABELS = ["name", "environment"]
_TARGET_LABELS = [*_LABELS, "target"]


def _seconds(text) -> float | None:
    try:
        return parse_iso(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


class StateCollector:
    """A prometheus_client collector over ``read_state()`` (the state file's mapping)."""

    def __init__(self, read_state: Callable[[], dict], *, name: str, environment: str, targets: list[str],
                 clock: Callable[[], float] = time.time):
        self.read_state, self.name, self.environment = read_state, name, environment
        self.targets, self.clock = list(targets), clock

    def collect(self):
        state = self.read_state()
        now = self.clock()
        ours = [self.name, self.environment]

        def gauge(name, doc, labels=_TARGET_LABELS):
            return GaugeMetricFamily(f"eternia_backup_{name}", doc, labels=labels)

        build = gauge("build_info", "Always 1; the installed eternia-backup's version in a label",
                      [*_LABELS, "version"])
        build.add_metric([*ours, __version__], 1.0)
        yield build

        last_success = gauge("last_success_timestamp_seconds", "Time of the last successful backup, per target")
        last_failure = gauge("last_failure_timestamp_seconds", "Time of the last failed backup, per target")
        last_ok = gauge("last_run_success", "1 when the last backup run succeeded on the target, 0 when it failed")
        duration = gauge("last_duration_seconds", "Duration of the last successful backup, per target")
        size = gauge("last_size_bytes", "Archive size of the last successful backup, per target")
        warnings = gauge("last_warnings", "Warnings (files not archived faithfully) of the last successful backup")
        failures = CounterMetricFamily("eternia_backup_failures", "Backup runs that failed, per target",
                                       labels=_TARGET_LABELS)
        count = gauge("backups", "Intact backups on the target when it was last listed")
        stored = gauge("stored_bytes", "Bytes of the intact backups (archives and file indexes) on the target")
        oldest = gauge("oldest_backup_timestamp_seconds", "Creation time of the oldest intact backup on the target")
        newest = gauge("newest_backup_timestamp_seconds", "Creation time of the newest intact backup on the target")
        oldest_age = gauge("oldest_backup_age_seconds", "Age of the oldest intact backup (when collected)")
        newest_age = gauge("newest_backup_age_seconds", "Age of the newest intact backup (when collected)")
        listed = gauge("inventory_timestamp_seconds", "When the target was last listed (the backups/bytes figures)")

        per_target = state.get("targets") if isinstance(state.get("targets"), dict) else {}
        for target in self.targets:
            t = per_target.get(target)
            if not isinstance(t, dict):
                continue
            values = [*ours, target]
            success_at, failure_at = _seconds(t.get("last_success")), _seconds(t.get("last_failure"))
            if success_at is not None:
                last_success.add_metric(values, success_at)
            if failure_at is not None:
                last_failure.add_metric(values, failure_at)
            result = t.get("last_result")
            if result is None and (success_at or failure_at):  # a state file older than last_result
                result = "success" if (success_at or 0) >= (failure_at or 0) else "failure"
            if result is not None:
                last_ok.add_metric(values, 1.0 if result == "success" else 0.0)
            if success_at is not None:
                for family, key in ((duration, "last_duration_seconds"), (size, "last_size_bytes"),
                                    (warnings, "last_warning_count")):
                    if t.get(key) is not None:
                        family.add_metric(values, float(t[key]))
            failures.add_metric(values, float(t.get("failures_total", 0)))
            inventory = t.get("inventory")
            if isinstance(inventory, dict):
                count.add_metric(values, float(inventory.get("backups") or 0))
                stored.add_metric(values, float(inventory.get("bytes") or 0))
                for stamp, age, key in ((oldest, oldest_age, "oldest"), (newest, newest_age, "newest")):
                    at = _seconds(inventory.get(key))
                    if at is not None:
                        stamp.add_metric(values, at)
                        age.add_metric(values, max(0.0, now - at))
                at = _seconds(inventory.get("listed_at"))
                if at is not None:
                    listed.add_metric(values, at)
        yield from (last_success, last_failure, last_ok, duration, size, warnings, failures,
                    count, stored, oldest, newest, oldest_age, newest_age, listed)
        yield from self._drill(state.get("drill"), ours)

    def _drill(self, drill, values):
        """The last restore drill (state key ``drill``, written by the drill command)."""
        if not isinstance(drill, dict):
            return
        at = _seconds(drill.get("last_run"))
        families = []
        if at is not None:
            f = GaugeMetricFamily("eternia_backup_drill_last_run_timestamp_seconds",
                                  "Time of the last restore drill", labels=_LABELS)
            f.add_metric(values, at)
            families.append(f)
        if isinstance(drill.get("ok"), bool):
            f = GaugeMetricFamily("eternia_backup_drill_last_success",
                                  "1 when the last restore drill passed every check, 0 when it failed", labels=_LABELS)
            f.add_metric(values, 1.0 if drill["ok"] else 0.0)
            families.append(f)
        if isinstance(drill.get("duration_seconds"), (int, float)):
            f = GaugeMetricFamily("eternia_backup_drill_last_duration_seconds",
                                  "Duration of the last restore drill", labels=_LABELS)
            f.add_metric(values, float(drill["duration_seconds"]))
            families.append(f)
        if isinstance(drill.get("failed_checks"), list):
            f = GaugeMetricFamily("eternia_backup_drill_last_failed_checks",
                                  "Checks that failed in the last restore drill", labels=_LABELS)
            f.add_metric(values, float(len(drill["failed_checks"])))
            families.append(f)
        yield from families


def registry_for(collector: StateCollector) -> CollectorRegistry:
    """A registry holding only ``collector`` (not the process's default metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def write_textfile(path: Path, collector: StateCollector) -> None:
    """Write the textfile atomically (a temporary file beside it, then a rename)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry_for(collector))


class MetricsServer:
    """The embedded HTTP endpoint (``/metrics``) on a daemon thread; :meth:`stop` closes it."""

    def __init__(self, listen: str, collector: StateCollector):
        self.listen, self.collector = listen, collector
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually bound (the port is chosen by the system when 0 was asked)."""
        return self._server.server_address[:2] if self._server is not None else None

    def start(self) -> None:
        from prometheus_client import start_http_server

        host, port = parse_listen(self.listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry_for(self.collector))
        except OSError as exc:
            raise ConfigError(f"backup.metrics.listen: cannot serve metrics on {self.listen}: {exc.strerror or exc}; "
                              "choose a free port or stop what listens there") from None
        log.info("serving metrics on http://%s/metrics", self.listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
