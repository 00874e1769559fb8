"""Log lines on stderr as a log shipper reads them: --log-format json (or log.format in the config)
gives one JSON object per line with an offset time; the text format carries the offset too;
secrets stay masked in both (docs/monitoring.md, "Logs")."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from conftest import run_cli

SECRET = "hunter2-SECRET-value-7f3a"
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def write_section(app: Path, **over) -> Path:
    section = {
        "storage_path": "backups",
        "sources": [{"type": "command", "name": "dump", "command": "${DUMP:-echo dump}"}],
        "targets": [{"name": "nas", "url": "nas", "options": {"secret": "${APP_SECRET:-}"}}],
        "schedule": {"timezone": "UTC", "catch_up": False},
    }
    section.update(over)
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def json_lines(stderr: str) -> list[dict]:
    """Every stderr line as JSON (fails on any other line), each with the documented keys."""
    records = []
    for line in stderr.splitlines():
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert JSON_TIME.match(record["time"]), record["time"]
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None
        records.append(record)
    return records


def test_log_format_json_gives_one_parsable_object_per_line(app):
    config = write_section(app)
    proc = run_cli("--log-format", "json", "-v", "create", config=config)
    assert proc.returncode == 0, proc.stderr
    records = json_lines(proc.stderr)
    assert any(r["level"] == "INFO" and r["logger"] == "eternia_backup.backup" for r in records)
    backup_id = Path(proc.stdout.strip()).name.split("-", 2)[2].split(".")[0]
    assert any(r.get("backup_id") == backup_id for r in records)  # the backup being made
    assert proc.stdout.strip().endswith(".tar.zst")  # stdout is the command's own output, as before

    # after the command name too; a failure is an ERROR record with the error's code and exit status
    proc = run_cli("create", "--log-format", "json", config=config, env={"DUMP": "exit 5"})
    assert proc.returncode == 1
    [error] = [r for r in json_lines(proc.stderr) if r["level"] == "ERROR"]
    assert "exited with status 5" in error["message"] and error["exit_status"] == 1 and error["error_code"]

    # a usage error too
    proc = run_cli("--log-format", "json", "restore", config=config)
    assert proc.returncode == 2 and json_lines(proc.stderr)[0]["exit_status"] == 2


def test_log_format_json_keeps_the_summary_a_plain_run_prints(app):
    """The summary line a terminal shows is, in JSON mode, a record even without -v (one per backup,
    for the log shipper); -q silences it."""
    config = write_section(app)
    proc = run_cli("--log-format", "json", "create", config=config)
    [summary] = [r for r in json_lines(proc.stderr) if "stored (ratio" in r["message"]]
    assert summary["level"] == "INFO" and summary["logger"] == "eternia_backup.cli"
    quiet = run_cli("-q", "--log-format", "json", "create", config=config)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_log_format_json_from_the_config_and_the_command_line_wins(app):
    config = write_section(app, log={"format": "json"})
    proc = run_cli("-v", "create", config=config)
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stderr)
    proc = run_cli("-v", "--log-format", "text", "create", config=config)
    assert proc.returncode == 0 and not proc.stderr.lstrip().startswith("{"), proc.stderr

    bad = write_section(app, log={"format": "xml"})
    proc = run_cli("config", "check", config=bad)
    assert proc.returncode == 2 and "backup.log.format: expected text or json, got 'xml'" in proc.stderr


def test_text_lines_carry_the_utc_offset(app):
    proc = run_cli("-v", "create", config=write_section(app))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO " in line]
    assert lines
    for line in lines:
        stamp = line.split(" ", 1)[0]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$", stamp), line
        assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").utcoffset() is not None


def test_secrets_stay_masked_in_json_logs(app):
    config = write_section(app)
    env = {"APP_SECRET": SECRET, "DUMP": 'echo "cannot log in with $APP_SECRET" >&2; exit 3'}
    proc = run_cli("--log-format", "json", "-vv", "create", config=config, env=env)
    assert proc.returncode == 1
    records = json_lines(proc.stderr)
    assert SECRET not in proc.stderr
    [error] = [r for r in records if r["level"] == "ERROR"]
    assert "exited with status 3: cannot log in with" in error["message"] and "********" in error["message"]


def test_exception_text_and_extras_are_masked_too():
    from eternia_backup import redact
    from eternia_backup.logformat import make_handler

    stream = io.StringIO()
    logger = logging.getLogger("eternia_backup.test_logging_format")
    handler = make_handler("json", stream)
    logger.addHandler(handler)
    logger.propagate = False
    redact.remember(SECRET)
    try:
        try:
            raise RuntimeError("cannot reach s3://user:pw-in-url@host/bucket")
        except RuntimeError:
            logger.error("upload failed", exc_info=True, extra={"url": f"https://x/?token={SECRET}"})
    finally:
        logger.removeHandler(handler)
        redact._known.discard(SECRET)
    [record] = json_lines(stream.getvalue())
    assert record["message"].startswith("upload failed") and record["level"] == "ERROR"
    assert "pw-in-url" not in stream.getvalue() and SECRET not in stream.getvalue()
    assert record["url"] == "https://x/?token=********"


def test_the_daemon_logs_json_and_stops_on_sigterm(app):
    config = write_section(app, log={"format": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        first = proc.stderr.readline()
        while "next run" not in first and time.monotonic() < deadline:
            first = proc.stderr.readline()
        assert "next run" in json.loads(first)["message"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    records = json_lines(first + err)
    assert any(r["message"].startswith("stopping") for r in records)
