"""Restore drills: ``eternia-backup drill`` and ``BackupManager.drill()``.

A drill restores a real backup of the example app (a directory and a SQLite
database) into a private scratch directory, runs the configured checks and
removes the copy. What a user checks: the exit status and message, ``--json``,
``status`` afterwards, that the live state and the storage are untouched and
that no scratch copy is left anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import default_section
from eternia_backup import BackupManager
from eternia_backup.errors import ConfigError

UTC = timezone.utc


def section(**drill) -> dict:
    return {**default_section(), "drill": drill}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (storage, live state) with its sha256 and mode."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(*roots: Path) -> list[str]:
    """Scratch copies (and restore staging) anywhere under ``roots``."""
    return [str(p) for root in roots for p in root.rglob("*") if ".drill" in p.name or ".restore" in p.name]


def corrupt_sqlite(db: Path) -> None:
    """A database whose table and index disagree: it opens, and integrity_check fails.

    One indexed value is changed in place (same length), the way a bad sector or a
    buggy writer damages a page; the sqlite source's backup API copies pages as they are.
    """
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT)")
    conn.execute("CREATE INDEX events_kind ON events(kind)")
    conn.executemany("INSERT INTO events(kind) VALUES (?)", [(f"kind-{i:05d}",) for i in range(300)])
    conn.commit()
    conn.close()
    data = db.read_bytes()
    assert data.count(b"kind-00150") == 2  # once in the table, once in the index
    db.write_bytes(data.replace(b"kind-00150", b"kind-99999", 1))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    conn.close()


def test_a_drill_of_the_example_app_passes_and_leaves_nothing_behind(write_config, app, cli, tmp_path):
    marker = tmp_path / "drill-saw"
    config = write_config(section(checks={
        "files": {"files": {"min_count": 10, "sample": 5},
                  "command": f'stat -c "%a %n" "$(dirname "$RESTORE_DIR")" > {marker}; '
                             'test "$ETERNIA_SOURCE" = files && test -d "$RESTORE_DIR"'},
        "db": {"sql": ["SELECT count(*) > 0 FROM events", "SELECT 1"]},
    }))
    mgr = BackupManager.from_config(config)
    backup = mgr.create_backup()
    live, storage = tree_digest(app / "state"), tree_digest(app / "backups")

    result = mgr.drill()

    assert result.ok, result.describe_failure()
    assert result.backup_id == backup.backup_id
    got = {(c.source, c.name): c for c in result.checks}
    assert set(got) == {("", "restore"), ("files", "entries"), ("files", "min_count"), ("files", "sample_sha256"),
                        ("files", "command"), ("db", "integrity_check"), ("db", "sql[0]"), ("db", "sql[1]")}
    assert "5 sampled file(s)" in got["files", "sample_sha256"].detail
    # the scratch directory was private, in the state directory, and is gone
    mode, scratch = marker.read_text().split()
    assert mode == "700" and Path(scratch) == mgr.drill_scratch_path
    assert Path(scratch).parent == mgr.state.path.parent  # not the system temp directory
    assert not mgr.drill_scratch_path.exists()
    assert leftovers(app, mgr.state.path.parent) == []
    # the live state and the storage are untouched
    assert tree_digest(app / "state") == live
    assert tree_digest(app / "backups") == storage
    # recorded, with exactly the keys status and the metrics read
    drill = json.loads(mgr.state.path.read_text())["drill"]
    assert set(drill) == {"last_run", "backup_id", "ok", "duration_seconds", "failed_checks", "error"}
    assert drill["backup_id"] == backup.backup_id and drill["ok"] is True and drill["failed_checks"] == []
    assert drill["error"] is None and drill["last_run"].endswith("Z")

    out = cli("status", "--json", config=config)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)["drill"]
    assert status["ok"] is True and status["backup_id"] == backup.backup_id and status["overdue"] is False
    out = cli("status", config=config)
    assert "last drill:" in out.stdout and backup.backup_id in out.stdout


def test_a_corrupted_sqlite_in_the_backup_fails_the_drill(write_config, app, cli):
    config = write_config(section())
    corrupt_sqlite(app / "state" / "app.db")
    mgr = BackupManager.from_config(config)
    backup = mgr.create_backup()  # the backup API copies the damaged pages as they are
    live = tree_digest(app / "state")

    out = cli("drill", "--json", config=config)

    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["backup_id"] == backup.backup_id
    assert doc["failed_checks"] == ["db:integrity_check"]
    [failed] = [c for c in doc["checks"] if not c["ok"]]
    assert failed["source"] == "db" and "integrity_check" in failed["detail"]
    # the directory source restored and checked fine beside it
    assert {c["name"] for c in doc["checks"] if c["source"] == "files" and c["ok"]} == {"entries", "sample_sha256"}
    assert "check 'integrity_check' of source 'db' failed" in out.stderr
    assert not mgr.drill_scratch_path.exists() and leftovers(app, mgr.state.path.parent) == []
    assert tree_digest(app / "state") == live

    out = cli("status", config=config)
    assert out.returncode == 1
    assert "FAILED: db:integrity_check" in out.stdout
    status = json.loads(cli("status", "--json", config=config).stdout)["drill"]
    assert status["ok"] is False and status["failed_checks"] == ["db:integrity_check"]


def test_a_failing_command_check_names_its_source_and_fails_the_cli(write_config, app, cli):
    config = write_config(section(checks={
        "files": {"command": 'test -e "$RESTORE_DIR/no-such-file" || { echo "config.json missing" >&2; exit 3; }'},
        "db": {"command": "sleep 30", "timeout": 0.5},
    }))
    BackupManager.from_config(config).create_backup()

    out = cli("drill", config=config)

    assert out.returncode == 1
    assert "FAILED  files: command: drill.checks.files.command exited with status 3: config.json missing" in out.stdout
    assert "FAILED  db: command: drill.checks.db.command ran longer than its timeout of 0.5 s" in out.stdout
    assert "check 'command' of source 'files' failed" in out.stderr
    assert "check 'command' of source 'db' failed" in out.stderr
    state = json.loads(BackupManager.from_config(config).state.path.read_text())["drill"]
    assert state["failed_checks"] == ["files:command", "db:command"] and state["ok"] is False


def test_a_damaged_archive_fails_the_restore_check(write_config, app, cli):
    config = write_config(section())
    mgr = BackupManager.from_config(config)
    backup = mgr.create_backup()
    archive = app / "backups" / backup.manifest.archive.file
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    out = cli("drill", backup.backup_id, "--json", config=config)

    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["failed_checks"] == ["restore"] and "sha256" in doc["error"]
    assert not mgr.drill_scratch_path.exists() and leftovers(app, mgr.state.path.parent) == []


def test_a_leftover_of_a_killed_drill_is_removed_by_the_next(write_config, app):
    mgr = BackupManager.from_config(write_config(section()))
    mgr.create_backup()
    left = mgr.drill_scratch_path / "files" / "locked"
    left.mkdir(parents=True)
    (left / "secret.txt").write_text("restored data a killed drill left")
    left.chmod(0o500)  # as a restored read-only directory would be

    assert mgr.drill().ok
    assert not mgr.drill_scratch_path.exists()


def test_an_incremental_backup_drills_with_its_whole_tree(write_config, app):
    mgr = BackupManager.from_config(write_config(section(checks={"files": {"files": {"sample": 100}}}),
                                                 archive={"incremental": {"enabled": True}}))
    mgr.create_backup()
    changed = sorted(p for p in (app / "state" / "files").rglob("*") if p.is_file() and not p.is_symlink())[0]
    changed.write_text("changed after the full backup")
    (app / "state" / "files" / "new.txt").write_text("added after the full backup")
    with open(app / "state" / "files" / "app.log", "ab") as log:  # a log, stored as what was appended
        log.write(b"line\n" * 300_000)
    second = mgr.create_backup()
    with open(app / "state" / "files" / "app.log", "ab") as log:
        log.write(b"more\n" * 1000)
    third = mgr.create_backup()
    assert second.manifest.is_incremental and third.manifest.sources[0].increment["appended"] == 1

    result = mgr.drill()

    assert result.ok, result.describe_failure()
    entries = next(c for c in result.checks if c.name == "entries")
    files = sum(1 for _ in (app / "state" / "files").rglob("*")) + 1
    assert entries.detail.startswith(f"{files} entries restored")


def test_status_fails_when_drills_are_overdue(write_config, app, cli):
    config = write_config(section(schedule="0 5 * * *"))
    mgr = BackupManager.from_config(config)
    mgr.create_backup()

    out = cli("status", config=config)  # a drill schedule, and never a drill
    assert out.returncode == 1
    assert "DRILL OVERDUE" in out.stdout and "last drill: never" in out.stdout
    status = json.loads(cli("status", "--json", config=config).stdout)["drill"]
    assert status["overdue"] is True and status["schedule"] == "0 5 * * *"
    assert status["overdue_after_seconds"] == 2 * 86400 and status["next_run"].endswith("T05:00:00Z")

    assert mgr.drill().ok
    assert cli("status", config=config).returncode == 0

    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mgr.state.update(lambda data: data["drill"].__setitem__("last_run", old))
    out = cli("status", "--json", config=config)
    assert out.returncode == 1 and json.loads(out.stdout)["drill"]["overdue"] is True


def test_without_drills_status_says_nothing_about_them(write_config, app, cli):
    config = write_config()
    BackupManager.from_config(config).create_backup()
    out = cli("status", config=config)
    assert out.returncode == 0 and "drill" not in out.stdout
    status = json.loads(cli("status", "--json", config=config).stdout)["drill"]
    assert status == {"schedule": None, "next_run": None, "last_run": None, "backup_id": None, "ok": None,
                      "duration_seconds": None, "failed_checks": [], "error": None, "overdue": False,
                      "overdue_after_seconds": None}


@pytest.mark.parametrize("drill, message", [
    ({"checks": {"nope": {"command": "true"}}}, "backup.drill.checks.nope: no source is named 'nope'"),
    ({"checks": {"files": {"integrity_check": True}}},
     "backup.drill.checks.files.integrity_check: a directory source has no such check; it has: files, command"),
    ({"checks": {"db": {"files": {"sample": 3}}}}, "backup.drill.checks.db.files: a sqlite source has no such check"),
    ({"schedule": "every sunday"}, "backup.drill.schedule: expected a 5-field cron expression"),
    ({"checks": {"db": {"sql": 5}}}, "backup.drill.checks.db.sql"),
    ({"checks": {"db": {"restore": True}}}, "backup.drill.checks.db.restore: a sqlite source has no such check"),
    ({"checks": {"db": {"sql": {"app": "SELECT 1"}}}},
     "backup.drill.checks.db.sql: a sqlite source checks one database; write its queries as a list"),
    ({"checks": {"db": {"restore": False, "sql": "SELECT 1"}}},
     "backup.drill.checks.db.sql: the queries run in the restored scratch database, and restore is false"),
    ({"checks": {"db": {"timeout": 0}}}, "backup.drill.checks.db.timeout"),
])
def test_bad_drill_config_is_refused_with_the_key(write_config, app, drill, message):
    with pytest.raises(ConfigError) as exc:
        BackupManager.from_config(write_config(section(**drill)))
    assert message in str(exc.value)


def test_a_drill_waits_for_no_backup_it_is_locked_out_like_a_restore(write_config, app, cli):
    config = write_config(section())
    mgr = BackupManager.from_config(config)
    mgr.create_backup()
    with mgr.lock.acquire("backup"):
        other = BackupManager.from_config(config)
        out = cli("drill", config=config)
        assert out.returncode == 11, out.stderr
        assert not other.drill_scratch_path.exists()
    assert "drill" not in json.loads(mgr.state.path.read_text())


def test_the_scheduler_runs_drills_after_the_slots_backup(write_config, app):
    from test_scheduler import VirtualClock, wait_for

    config = write_config(section(schedule="30 5 * * *", checks={"db": {"sql": "SELECT count(*) FROM events"}}),
                          schedule={"cron": "0 5 * * *", "timezone": "UTC"})
    mgr = BackupManager.from_config(config)
    clock = VirtualClock((datetime.now(UTC) + timedelta(days=2)).replace(hour=6, minute=0, second=0, microsecond=0))
    mgr.start_scheduler(clock=clock, wait=clock.wait)
    try:
        wait_for(lambda: mgr.scheduler.drill_outcomes, what="a scheduled drill")
    finally:
        mgr.stop_scheduler()
    [backup] = mgr.list_backups()
    [outcome] = mgr.scheduler.drill_outcomes
    assert outcome.status == "ok", outcome.message
    drill = json.loads(mgr.state.path.read_text())["drill"]
    assert drill["ok"] is True and drill["backup_id"] == backup.backup_id  # the slot's backup came first
    assert not mgr.drill_scratch_path.exists()


def test_the_readme_drill_example_passes_on_the_example_app(app, cli):
    import re

    from conftest import ROOT

    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S) if "drill:" in b]
    config = app / "eternia-backup.yaml"
    config.write_text(block)
    assert cli("create", config=config).returncode == 0
    out = cli("drill", "--json", config=config)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {(c["source"], c["name"]) for c in json.loads(out.stdout)["checks"]}
    assert {("files", "min_count"), ("files", "command"), ("db", "sql[0]"), ("db", "integrity_check")} <= names


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a tree as another user; needs root to hand it over")
def test_a_restored_read_only_tree_is_removed_by_a_user_who_is_not_root(tmp_path):
    """Root may remove anything, so the 0500 test above passes as root whatever remove_tree does;
    an ordinary user cannot delete what a read-only directory holds without opening it up first."""
    import shutil
    import subprocess
    import tempfile

    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="eternia-ro-"))
    try:
        os.chmod(base, 0o755)
        tree = base / "scratch"
        (tree / "files" / "locked").mkdir(parents=True)
        (tree / "files" / "locked" / "a.txt").write_text("restored")
        (tree / "outside-kept").mkdir()
        for p in [tree, *tree.rglob("*")]:
            os.chown(p, nobody, nobody)
        (tree / "files" / "locked").chmod(0o500)
        (tree / "files").chmod(0o555)
        # the test's interpreter lives where that user may not go: the system's runs fsutil by its path
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None:
            pytest.skip("no system python3 for another user")
        fsutil = base / "fsutil.py"
        shutil.copy(Path(__file__).parent.parent / "eternia_backup" / "fsutil.py", fsutil)
        os.chmod(fsutil, 0o644)
        code = ("import sys, importlib.util as u; from pathlib import Path; "
                "s = u.spec_from_file_location('fsutil', sys.argv[1]); m = u.module_from_spec(s); "
                "s.loader.exec_module(m); m.remove_tree(Path(sys.argv[2]))")
        proc = subprocess.run([python, "-c", code, str(fsutil), str(tree / "files")], user=nobody,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(base)})
        assert proc.returncode == 0, proc.stderr
        assert not (tree / "files").exists()
        assert (tree / "outside-kept").is_dir()
        assert (tree.stat().st_mode & 0o777) == 0o755  # the parent outside the removed tree keeps its mode
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
