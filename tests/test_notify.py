"""Notifiers (docs/monitoring.md): webhook, healthchecks-style pings and apprise, on a real loopback server.

What an operator checks: the pings arrive in the right order (start, then success
or fail), a failed backup is never reported as a success, the failure carries the
log tail, each notifier hears only the events and operations it asked for, and a
receiver that refuses or never answers costs the backup at most its timeout and
never fails it. The older ``notify: {webhook: {url, on_success}}`` form keeps its
meaning.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from eternia_backup import hookimpl
from eternia_backup.api import Source, SourceOptions
from eternia_backup.builtin.notifying import LOG_TAIL_BYTES, LogTail
from eternia_backup.cleanup import CleanupResult, TargetCleanup
from eternia_backup.config import parse_config
from eternia_backup.drill import DrillCheck, DrillResult
from eternia_backup.errors import ConfigError
from eternia_backup.manager import BackupManager
from eternia_backup.plugins import call_lifecycle, get_plugin_manager

SECRET = "hunter2-SECRET-value-7f3a"
UUID = "5f1c1c1e-0b8e-4d4e-9a53-0c2b1f0e7d11"


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(app: Path, notify: dict, command: str = "${DUMP:-echo dump}", **over) -> Path:
    section = {"storage_path": "backups",
               "sources": [{"type": "command", "name": "dump", "command": command}],
               "notify": notify, **over}
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


# -- healthchecks-style pings ---------------------------------------------------------------------


def test_healthchecks_pings_start_then_success_then_start_then_fail_with_the_log_tail(app, cli, receiver):
    config = write_config(app, {"healthchecks": {"url": f"{receiver.base}/ping/{UUID}"}})
    assert cli("create", config=config).returncode == 0
    assert receiver.paths == [f"/ping/{UUID}/start", f"/ping/{UUID}"]

    # the dump fails with exit 4: /fail, never a success ping
    proc = cli("create", config=config, env={"DUMP": 'echo "cannot reach the database" >&2; exit 4'})
    assert proc.returncode == 1
    assert receiver.paths[2:] == [f"/ping/{UUID}/start", f"/ping/{UUID}/fail"]
    method, _, _, body = receiver.requests[3]
    tail = body.decode()
    assert method == "POST" and "exited with status 4" in tail and "cannot reach the database" in tail
    assert len(body) <= LOG_TAIL_BYTES


def test_healthchecks_fail_body_holds_no_secret(app, cli, receiver):
    config = write_config(app, {"healthchecks": {"url": f"{receiver.base}/ping/{UUID}"}},
                          command='echo "password is ${DB_PASSWORD}" >&2; exit 4')
    proc = cli("create", config=config, env={"DB_PASSWORD": SECRET})
    assert proc.returncode == 1 and SECRET not in proc.stderr
    assert [p for p in receiver.paths] == [f"/ping/{UUID}/start", f"/ping/{UUID}/fail"]
    body = receiver.requests[1].body
    assert SECRET.encode() not in body and b"exited with status 4" in body


def test_log_tail_keeps_the_last_lines_within_the_cap():
    import logging

    tail = LogTail()
    logger = logging.getLogger("eternia_backup.test_notify")
    logger.addHandler(tail)
    try:
        for i in range(3000):
            logger.warning("line %d of a long run", i)
    finally:
        logger.removeHandler(tail)
    text = tail.text("the end")
    assert len(text.encode()) <= LOG_TAIL_BYTES
    assert text.endswith("the end") and "line 2999 of a long run" in text and "line 0 of" not in text


def test_healthchecks_keeps_the_query_and_a_trailing_slash_does_not_double(app, cli, receiver):
    config = write_config(app, {"healthchecks": {"url": f"{receiver.base}/ping/key/my-job/?create=1",
                                                 "events": ["start", "success"]}})
    assert cli("create", config=config).returncode == 0
    assert receiver.paths == ["/ping/key/my-job/start?create=1", "/ping/key/my-job?create=1"]


# -- the webhook's payload ------------------------------------------------------------------------


def test_webhook_sends_start_success_and_failure_with_the_documented_fields(app, cli, receiver):
    config = write_config(app, {"webhook": {"url": f"{receiver.base}/hook",
                                            "events": ["start", "success", "failure"]}})
    proc = cli("create", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    started, succeeded = receiver.events()
    common = {"version", "event", "operation", "status", "message", "name", "environment", "host", "time",
              "framework_version", "backup_id"}
    assert common <= set(started) and common <= set(succeeded)
    assert started["version"] == 1 and started["event"] == "backup.started" and started["status"] == "start"
    assert started["operation"] == "backup" and started["sources"] == ["dump"] and started["targets"] == ["local"]
    assert started["backup_id"] == succeeded["backup_id"] == created["backup_id"]
    assert succeeded["event"] == "backup.succeeded" and succeeded["status"] == "success"
    assert succeeded["size"] == created["size"] and succeeded["warning_count"] == 0
    assert succeeded["copies"][0]["target"] == "local" and succeeded["duration_seconds"] >= 0
    assert datetime.fromisoformat(succeeded["time"]).tzinfo is not None
    assert created["backup_id"] in succeeded["message"] and "succeeded" in succeeded["message"]

    proc = cli("create", config=config, env={"DUMP": "echo half; exit 4"})
    assert proc.returncode == 1
    started, failed = receiver.events()[2:]
    assert started["event"] == "backup.started" and failed["event"] == "backup.failed"
    assert failed["status"] == "failure" and failed["backup_id"] == started["backup_id"]
    assert "exited with status 4" in failed["error"] and "exited with status 4" in failed["log_tail"]
    assert failed["copies"] == [] and "failed" in failed["message"]


def test_old_webhook_form_keeps_its_meaning(app):
    config = parse_config({"notify": {"webhook": {"url": "https://hooks.example/backup", "on_success": False}}},
                          base_dir=app)
    [hook] = config.notifiers
    assert hook.events == {"failure"} and hook.operations == {"backup", "drill"}
    assert hook.wants("backup", "failure") and not hook.wants("backup", "success")
    config = parse_config({"notify": {"webhook": {"url": "https://hooks.example/backup", "on_success": True}}},
                          base_dir=app)
    assert config.notifiers[0].events == {"success", "failure"}
    assert config.notifiers[0].wants("backup", "warning")  # a backup with warnings did succeed
    assert not config.notifiers[0].wants("cleanup", "success")


def test_webhook_without_events_reports_only_failures(app, cli, receiver):
    config = write_config(app, {"webhook": {"url": f"{receiver.base}/hook"}})
    assert cli("create", config=config).returncode == 0
    assert receiver.requests == []
    assert cli("create", config=config, env={"DUMP": "exit 4"}).returncode == 1
    assert [e["event"] for e in receiver.events()] == ["backup.failed"]


# -- warnings, filters, cleanups and drills -------------------------------------------------------


class _WarnOptions(SourceOptions):
    pass


class WarningSource(Source):
    """Archives one file and skips another with a warning, as a directory source does for a vanished file."""

    type_name = "warner"
    options_model = _WarnOptions

    def backup(self, writer):
        import io

        writer.add_stream("kept.txt", io.BytesIO(b"kept"), 4, mtime=0.0)
        writer.warn("gone.txt", "vanished before it was read; skipped")

    def restore_plan(self, destination):
        raise NotImplementedError


class _WarnPlugin:
    @hookimpl
    def eternia_register_sources(self, register):
        register(WarningSource)


def manager(app: Path, notify: dict, sources=None) -> BackupManager:
    section = {"storage_path": "backups", "notify": notify,
               "sources": sources or [{"type": "warner", "name": "w"}]}
    pm = get_plugin_manager(load_entry_points=False, extra_plugins=(_WarnPlugin(),))
    return BackupManager(parse_config(section, base_dir=app), plugin_manager=pm)


def test_a_backup_with_warnings_is_a_warning_and_a_success(app, receiver):
    mgr = manager(app, {
        "webhook": [{"url": f"{receiver.base}/warning", "events": ["warning"]},
                    {"url": f"{receiver.base}/success", "events": ["success"]},
                    {"url": f"{receiver.base}/failure"}],
        "healthchecks": {"url": f"{receiver.base}/hc", "events": ["success", "failure"]}})
    result = mgr.create_backup()
    assert result.warning_count == 1
    assert sorted(receiver.paths) == ["/hc", "/success", "/warning"]
    [warned] = receiver.events("/warning")
    assert receiver.events("/success") == [warned]
    assert warned["event"] == "backup.succeeded" and warned["status"] == "warning" and warned["warning_count"] == 1
    assert warned["warnings"] == [{"source": "w", "path": "gone.txt", "problem": "vanished before it was read; skipped"}]
    hc_body = [r.body for r in receiver.requests if r.path == "/hc"][0].decode()
    assert "1 warning" in hc_body and "gone.txt" in hc_body


def test_operations_choose_what_a_notifier_hears_about(app, receiver):
    everything = ["start", "success", "warning", "failure"]
    mgr = manager(app, {"webhook": [{"url": f"{receiver.base}/default", "events": everything},
                                    {"url": f"{receiver.base}/cleanup", "events": everything,
                                     "operations": ["cleanup"]}]})
    mgr.create_backup()
    mgr.cleanup()
    assert [e["event"] for e in receiver.events("/default")] == ["backup.started", "backup.succeeded"]
    started, finished = receiver.events("/cleanup")
    assert started["event"] == "cleanup.started" and started["targets"] == ["local"]
    assert finished["event"] == "cleanup.succeeded" and finished["status"] == "success"
    assert finished["deleted_count"] == 0 and finished["backup_id"] is None

    # a deletion the target refused is a warning; a target whose listing failed is a failure
    refused = TargetCleanup("local", not_deleted=[{"name": "b1", "reason": "permission denied"}],
                            error="could not delete b1: permission denied")
    call_lifecycle(mgr.pm, "eternia_cleanup_finished", result=CleanupResult(False, [refused]))
    unlisted = TargetCleanup("nas", error="listing failed: connection refused", unlisted=True)
    call_lifecycle(mgr.pm, "eternia_cleanup_finished", result=CleanupResult(False, [unlisted]))
    warned, failed = receiver.events("/cleanup")[2:]
    assert warned["status"] == "warning" and warned["not_deleted"][0]["name"] == "b1"
    assert failed["status"] == "failure" and failed["errors"] == {"nas": "listing failed: connection refused"}


def test_drill_results_reach_webhook_and_a_drill_check(app, receiver):
    mgr = manager(app, {"webhook": {"url": f"{receiver.base}/hook", "events": ["success", "failure"]},
                        "healthchecks": [{"url": f"{receiver.base}/backups"},
                                         {"url": f"{receiver.base}/drills", "operations": ["drill"]}]})
    now = datetime.now(timezone.utc)
    passed = DrillResult("20261207T000000Z-aaaaaa", now, 1.5, [DrillCheck("db", "integrity_check", True, "ok")])
    failed = DrillResult("20261207T000000Z-bbbbbb", now, 2.0,
                         [DrillCheck("db", "integrity_check", False, "database disk image is malformed"),
                          DrillCheck("files", "count", True, "20 files")])
    for result in (passed, failed):
        mgr.pm.hook.eternia_drill_started(backup_id=result.backup_id)
        mgr.pm.hook.eternia_drill_finished(result=result)

    ok, bad = receiver.events()
    assert ok["event"] == "drill.succeeded" and ok["ok"] is True and ok["backup_id"] == passed.backup_id
    assert bad["event"] == "drill.failed" and bad["ok"] is False and bad["status"] == "failure"
    assert bad["checks"][0] == {"source": "db", "name": "integrity_check", "ok": False,
                                "detail": "database disk image is malformed"}
    assert "malformed" in bad["message"]
    # drills ping only the check that asked for them
    assert [p for p in receiver.paths if p.startswith("/backups")] == []
    assert [p for p in receiver.paths if p.startswith("/drills")] == [
        "/drills/start", "/drills", "/drills/start", "/drills/fail"]
    fail_body = [r.body for r in receiver.requests if r.path == "/drills/fail"][0]
    assert b"malformed" in fail_body


# -- receivers that refuse or hang ----------------------------------------------------------------


def test_a_refusing_receiver_never_fails_the_backup(app, cli, closed_port):
    url = f"http://127.0.0.1:{closed_port}/ping/{UUID}"
    config = write_config(app, {"healthchecks": {"url": url, "timeout_seconds": 2}})
    t0 = time.monotonic()
    proc = cli("create", config=config)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 10
    assert "notifier backup.notify.healthchecks: could not deliver backup.succeeded" in proc.stderr
    assert UUID not in proc.stderr  # a ping URL is a secret
    assert len(list((app / "backups").glob("*.manifest.json"))) == 1


def test_a_receiver_that_never_answers_costs_at_most_its_timeout(app, cli, silent_port):
    url = f"http://127.0.0.1:{silent_port}/services/T000/B000/{SECRET}"
    config = write_config(app, {"webhook": {"url": url, "events": ["start", "success", "failure"],
                                            "timeout_seconds": 1}})
    t0 = time.monotonic()
    proc = cli("create", config=config)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    # the start is queued, never waited for; the end waits 1 s at most
    assert elapsed < 1 + 3, elapsed
    assert "could not deliver backup.succeeded within 1 s" in proc.stderr
    assert SECRET not in proc.stderr
    assert len(list((app / "backups").glob("*.manifest.json"))) == 1

    proc = cli("create", config=config, env={"DUMP": "exit 4"})
    assert proc.returncode == 1 and "exited with status 4" in proc.stderr  # the backup's own outcome


# -- apprise --------------------------------------------------------------------------------------


def test_apprise_sends_through_its_json_scheme(app, cli, receiver):
    pytest.importorskip("apprise")
    port = receiver.base.rsplit(":", 1)[1]
    config = write_config(app, {"apprise": {"urls": [f"json://127.0.0.1:{port}/apprise"],
                                            "events": ["start", "success", "failure"]}})
    assert cli("create", config=config).returncode == 0
    assert cli("create", config=config, env={"DUMP": "exit 4"}).returncode == 1
    sent = receiver.events("/apprise")
    assert [m["type"] for m in sent] == ["info", "success", "info", "failure"]
    assert "backup" in sent[1]["title"] and "succeeded" in sent[1]["message"]
    assert "exited with status 4" in sent[3]["message"]


def test_apprise_defaults_to_warnings_and_failures(app, cli, receiver):
    pytest.importorskip("apprise")
    port = receiver.base.rsplit(":", 1)[1]
    config = write_config(app, {"apprise": {"urls": [f"json://127.0.0.1:{port}/apprise"]}})
    assert cli("create", config=config).returncode == 0
    assert receiver.requests == []
    assert cli("create", config=config, env={"DUMP": "exit 4"}).returncode == 1
    assert [m["type"] for m in receiver.events("/apprise")] == ["failure"]


def test_apprise_url_it_cannot_use_is_a_config_error(app, cli):
    pytest.importorskip("apprise")
    config = write_config(app, {"apprise": {"urls": ["json://127.0.0.1/x", f"nosuchservice://{SECRET}@x"]}})
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2
    assert "backup.notify.apprise.urls[1]: apprise cannot use this URL" in proc.stderr
    assert SECRET not in proc.stderr


def test_apprise_not_installed_is_a_clear_config_error(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match=r"backup\.notify\.apprise: needs the apprise package; install it with "
                                          r"`pip install 'eternia-backup\[apprise\]'`"):
        parse_config({"notify": {"apprise": {"urls": ["json://127.0.0.1/x"]}}}, base_dir=app)


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("notify, message", [
    ({"webhook": {"url": "https://h.example/x", "events": ["sucess"]}},
     "backup.notify.webhook.events[0]: expected a list of start, success, warning, failure, got 'sucess'; "
     "did you mean 'success'?"),
    ({"webhook": [{"url": "https://h.example/x"}, {"url": "ftp://h.example/x"}]},
     "backup.notify.webhook[1].url: expected an http(s) URL, got 'ftp://h.example/x'"),
    ({"healthchecks": {"url": "https:///no-host"}},
     "backup.notify.healthchecks.url: expected an http(s) ping URL, got 'https:///no-host'"),
    ({"healthchecks": {"url": "https://hc-ping.com/x", "operations": ["drills"]}},
     "backup.notify.healthchecks.operations[0]: expected a list of backup, cleanup, drill, got 'drills'; "
     "did you mean 'drill'?"),
    ({"webhook": {"url": "https://h.example/x", "on_success": True, "events": ["start"]}},
     "backup.notify.webhook: set events or on_success, not both"),
    ({"webhook": {"url": "https://h.example/x", "events": []}}, "backup.notify.webhook.events: empty"),
    ({"apprise": {"urls": []}}, "backup.notify.apprise.urls: empty; list at least one apprise URL"),
    ({"slack": {"url": "https://h.example/x"}}, "backup.notify.slack: unknown key; known keys: webhook, "
                                                 "healthchecks, apprise"),
    ({"webhook": {"url": "https://h.example/x", "timeout_seconds": 0}},
     "backup.notify.webhook.timeout_seconds: expected a number of seconds > 0, got 0"),
])
def test_config_errors_name_the_key(app, notify, message):
    with pytest.raises(ConfigError) as caught:
        parse_config({"notify": notify}, base_dir=app)
    assert message in str(caught.value)


def test_config_show_masks_notification_urls(app, cli):
    config = write_config(app, {"webhook": {"url": f"https://hooks.example/services/{SECRET}"},
                                "healthchecks": [{"url": f"https://hc-ping.com/{UUID}"},
                                                 {"url": f"https://hc-ping.com/{UUID}x", "operations": ["drill"]}]})
    proc = cli("config", "show", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout and UUID not in proc.stdout
    notify = json.loads(proc.stdout)["config"]["notify"]
    assert notify["webhook"] == [{"url": "https://hooks.example/********", "events": ["failure"],
                                  "operations": ["backup", "drill"], "timeout_seconds": 10.0}]
    assert [h["operations"] for h in notify["healthchecks"]] == [["backup"], ["drill"]]
    assert notify["healthchecks"][0]["events"] == ["start", "success", "failure"]


def test_a_notifier_kind_can_be_switched_off_like_any_plugin(app, receiver, monkeypatch):
    monkeypatch.setenv("ETERNIA_BACKUP_DISABLE_PLUGINS", "eternia_backup.builtin.webhook")
    mgr = manager(app, {"webhook": {"url": f"{receiver.base}/hook", "events": ["success"]},
                        "healthchecks": {"url": f"{receiver.base}/hc"}})
    mgr.create_backup()
    assert receiver.paths == ["/hc/start", "/hc"]


# -- Ctrl-C after the backup is made --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_success_is_notified_says_the_backup_was_made(app, signum, cli):
    """A webhook that never answers holds create after every commit; Ctrl-C or SIGTERM there said
    "nothing was committed" and status recorded a failure of a backup that was made."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4)  # accepted by the kernel, never answered
    config = write_config(app, {"webhook": {"url": f"http://127.0.0.1:{hung.getsockname()[1]}/hook",
                                            "events": ["success"]}})
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as on a terminal
    try:
        hung.settimeout(60)
        conn, _ = hung.accept()  # the success is being posted: every target has committed
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        hung.close()
    (manifest,) = (app / "backups").glob("*.manifest.json")
    backup_id = json.loads(manifest.read_text())["backup_id"]
    reason = "interrupted" if signum == signal.SIGINT else "terminated by SIGTERM"
    assert proc.returncode == 128 + signum, err
    assert err.splitlines() == [f"error: {reason} after backup {backup_id} was committed to local: the backup is "
                                "complete; what runs after a backup (notifications, hooks, the status record) "
                                "may not have finished"]
    assert cli("verify", backup_id, config=config).returncode == 0
    status = json.loads(cli("status", "--json", config=config).stdout)["targets"]["local"]
    assert status["last_backup_id"] == backup_id and status["last_success"] and not status.get("last_error")
