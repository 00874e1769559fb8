"""Prometheus metrics as an operator reads them: the textfile and the embedded /metrics endpoint,
parsed with prometheus_client's own parser (docs/monitoring.md names every metric)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from eternia_backup import __version__
from eternia_backup.errors import ConfigError
from eternia_backup.manager import BackupManager


def write_section(app: Path, **over) -> Path:
    section = {
        "storage_path": "backups",
        "sources": [{"type": "command", "name": "dump", "command": "${DUMP:-echo dump}"}],
        "schedule": {"timezone": "UTC", "catch_up": False},
        "metrics": {"textfile": "metrics/eternia-backup.prom"},
    }
    section.update(over)
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def parse(text: str) -> dict[tuple[str, str | None], float]:
    """{(sample name, target label): value}; also checks every family has help text."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for s in family.samples:
            out[(s.name, s.labels.get("target"))] = s.value
    return out


def textfile(app: Path) -> dict:
    return parse((app / "metrics" / "eternia-backup.prom").read_text())


def stored_manifests(storage: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(storage.glob("*.manifest.json"))]


def test_a_failed_run_keeps_the_last_success_figures_and_records_the_failure(app, cli):
    config = write_section(app)
    before = time.time()
    assert cli("create", config=config).returncode == 0
    after_success = textfile(app)
    [manifest] = stored_manifests(app / "backups")
    assert after_success[("eternia_backup_last_size_bytes", "local")] == manifest["archive"]["size"]
    assert after_success[("eternia_backup_last_run_success", "local")] == 1
    assert before - 1 <= after_success[("eternia_backup_last_success_timestamp_seconds", "local")] <= time.time() + 1
    assert ("eternia_backup_last_failure_timestamp_seconds", "local") not in after_success
    assert after_success[("eternia_backup_last_warnings", "local")] == 0
    # the first backup to a target lists it once: counts are there without `list`
    assert after_success[("eternia_backup_backups", "local")] == 1

    failed_at = time.time()
    assert cli("create", config=config, env={"DUMP": "exit 5"}).returncode == 1
    m = textfile(app)
    for name in ("eternia_backup_last_duration_seconds", "eternia_backup_last_size_bytes",
                 "eternia_backup_last_success_timestamp_seconds"):
        assert m[(name, "local")] == after_success[(name, "local")], name  # as they were
    assert m[("eternia_backup_last_run_success", "local")] == 0
    assert failed_at - 1 <= m[("eternia_backup_last_failure_timestamp_seconds", "local")] <= time.time() + 1
    assert m[("eternia_backup_failures_total", "local")] == 1
    assert m[("eternia_backup_build_info", None)] == 1
    assert f'version="{__version__}"' in (app / "metrics" / "eternia-backup.prom").read_text()

    # status --json says the same
    target = json.loads(cli("status", "--json", config=config).stdout)["targets"]["local"]
    assert target["last_result"] == "failure" and target["last_size_bytes"] == manifest["archive"]["size"]
    assert target["last_duration_seconds"] == m[("eternia_backup_last_duration_seconds", "local")]


def test_per_target_counts_ages_and_bytes_follow_list_backups_and_cleanup(app, cli):
    config = write_section(app, targets=[{"name": "nas", "url": "nas"}], retention={"keep_last": 1})
    for _ in range(3):
        assert cli("create", config=config).returncode == 0
        time.sleep(1.1)  # backup ids have one-second resolution
    assert cli("list", config=config).returncode == 0
    m = textfile(app)
    manifests = stored_manifests(app / "backups")
    sizes = sum(x["archive"]["size"] for x in manifests)
    assert len(manifests) == 3
    for target in ("local", "nas"):
        assert m[("eternia_backup_backups", target)] == 3
        assert m[("eternia_backup_stored_bytes", target)] == sizes
        assert m[("eternia_backup_oldest_backup_age_seconds", target)] >= m[("eternia_backup_newest_backup_age_seconds", target)] + 2
        assert m[("eternia_backup_newest_backup_timestamp_seconds", target)] <= time.time()
        assert time.time() - m[("eternia_backup_inventory_timestamp_seconds", target)] < 60

    # cleanup records what is left, without another listing for the metrics
    assert cli("cleanup", config=config).returncode == 0
    m = textfile(app)
    [kept] = stored_manifests(app / "backups")
    for target in ("local", "nas"):
        assert m[("eternia_backup_backups", target)] == 1
        assert m[("eternia_backup_stored_bytes", target)] == kept["archive"]["size"]
        assert m[("eternia_backup_oldest_backup_timestamp_seconds", target)] == \
            m[("eternia_backup_newest_backup_timestamp_seconds", target)]

    # a backup made since is counted without listing
    assert cli("create", config=config).returncode == 0
    assert textfile(app)[("eternia_backup_backups", "nas")] == 2


def test_the_last_drill_is_in_the_metrics(app):
    mgr = BackupManager.from_config(write_section(app))
    assert mgr.write_metrics() == app / "metrics" / "eternia-backup.prom"
    assert not any(name.startswith("eternia_backup_drill") for name, _ in textfile(app))

    def drill(ok, checks):
        def change(state):
            state["drill"] = {"last_run": "2026-12-07T10:00:00Z", "backup_id": "20261207T020000Z-3f2a1c", "ok": ok,
                              "duration_seconds": 4.5, "failed_checks": checks, "error": None}
        mgr.state.update(change)
        mgr.write_metrics()
        return textfile(app)

    m = drill(True, [])
    assert m[("eternia_backup_drill_last_success", None)] == 1
    assert m[("eternia_backup_drill_last_run_timestamp_seconds", None)] == 1796637600  # 2026-12-07T10:00:00Z
    assert m[("eternia_backup_drill_last_duration_seconds", None)] == 4.5
    assert m[("eternia_backup_drill_last_failed_checks", None)] == 0
    m = drill(False, [{"source": "db", "name": "integrity_check", "detail": "malformed"}])
    assert m[("eternia_backup_drill_last_success", None)] == 0
    assert m[("eternia_backup_drill_last_failed_checks", None)] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def test_the_embedded_endpoint_serves_the_state_on_each_scrape_and_stops_with_the_scheduler(app):
    port = free_port()
    mgr = BackupManager.from_config(write_section(app, metrics={"listen": f"127.0.0.1:{port}"}))
    mgr.start_scheduler()
    try:
        assert mgr.metrics_address == ("127.0.0.1", port)
        m = scrape(port)
        assert m[("eternia_backup_build_info", None)] == 1
        assert ("eternia_backup_last_success_timestamp_seconds", "local") not in m
        result = mgr.create_backup()  # the textfile is not configured: the scrape reads the state itself
        m = scrape(port)
        assert m[("eternia_backup_last_size_bytes", "local")] == result.size
        assert m[("eternia_backup_last_run_success", "local")] == 1
        assert not any(name.startswith(("process_", "python_")) for name, _ in m)  # only ours
    finally:
        mgr.stop_scheduler()
    assert mgr.metrics_address is None
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    mgr.start_scheduler()  # and again after a stop
    try:
        assert scrape(port)[("eternia_backup_backups", "local")] == 1
    finally:
        mgr.stop_scheduler()


@pytest.mark.parametrize("listen", ["9101", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":9101"])
def test_a_bad_listen_address_is_a_config_error_naming_the_key(app, cli, listen):
    config = write_section(app, metrics={"listen": listen})
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2
    assert "backup.metrics.listen: expected host:port such as 127.0.0.1:9101" in proc.stderr
    assert repr(listen) in proc.stderr


def test_a_port_in_use_is_a_clear_error_and_nothing_is_left_running(app):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mgr = BackupManager.from_config(write_section(app, metrics={"listen": f"127.0.0.1:{port}"}))
        with pytest.raises(ConfigError, match=rf"backup.metrics.listen: cannot serve metrics on 127.0.0.1:{port}: "
                                              r"Address already in use; choose a free port"):
            mgr.start_scheduler()
    assert mgr.scheduler is None and mgr.metrics_address is None
