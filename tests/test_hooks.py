"""Global hooks (``backup.hooks``): once around all sources, with env and a timeout; per-source hook timeouts.

What a user checks: a writer paused by ``before_backup`` and resumed by
``after_backup`` gives two sources from one moment; a failing or hanging hook
fails the backup with a message naming it, quickly, and ``after_backup`` still
lets the application resume; ``on_error`` hears about failures; ``env:`` values
reach the commands but never ``config show`` or argv.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup.errors import EterniaBackupError, SourceError
from eternia_backup.manager import BackupManager

WRITER = textwrap.dedent("""
    import os, signal, sys, time
    a, b, ack = sys.argv[1], sys.argv[2], sys.argv[3]
    paused = False

    def pause(*_):
        global paused
        paused = True

    def resume(*_):
        global paused
        paused = False

    signal.signal(signal.SIGUSR1, pause)  # pause after the current pair of writes, and say so
    signal.signal(signal.SIGUSR2, resume)
    n = 0
    while True:
        if paused:
            open(ack, "w").close()
            while paused:
                time.sleep(0.005)
            continue
        n += 1
        for path in (a, b):  # the same counter in both sources: one moment has them equal
            with open(path, "a") as f:
                f.write(f"{n}\\n")
        time.sleep(0.001)
""")



def make_config(tmp_path: Path, hooks: dict, *, sources=("one", "two"), extra: dict | None = None) -> Path:
    for s in sources:
        (tmp_path / s).mkdir(exist_ok=True)
    section = {
        "name": "app",
        "storage_path": str(tmp_path / "backups"),
        "sources": [{"type": "directory", "name": s, "path": str(tmp_path / s)} for s in sources],
        "hooks": hooks,
        **(extra or {}),
    }
    path = tmp_path / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def last_line(path: Path) -> str:
    return path.read_text().splitlines()[-1]


def test_a_writer_paused_by_the_hooks_gives_every_source_from_one_moment(tmp_path):
    make_config(tmp_path, {})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "one" / "log"),
                               str(tmp_path / "two" / "log"), str(tmp_path / "paused")])
    try:
        (tmp_path / "writer.pid").write_text(str(writer.pid))
        time.sleep(0.3)
        # the documented way: ask the writer to pause at a consistent point, wait until it says it has
        cfg = make_config(tmp_path, {
            "before_backup": 'kill -USR1 "$(cat writer.pid)"; while [ ! -e paused ]; do sleep 0.01; done',
            "after_backup": 'rm -f paused; kill -USR2 "$(cat writer.pid)"'})
        mgr = BackupManager.from_config(cfg)
        for n in range(3):
            result = mgr.create_backup()
            mgr.restore_backup(result.backup_id, to=tmp_path / f"r{n}")
            one, two = (tmp_path / f"r{n}" / s / "log" for s in ("one", "two"))
            assert one.read_text().splitlines()[-1] == two.read_text().splitlines()[-1], f"backup {n}"
            time.sleep(0.2)
        # resumed after each backup: the writer went on
        assert int(last_line(tmp_path / "one" / "log")) > int(last_line(tmp_path / "r2" / "one" / "log"))
    finally:
        writer.kill()
        writer.wait()


def test_a_failing_before_backup_fails_the_backup_and_still_runs_after_and_on_error(tmp_path):
    cfg = make_config(tmp_path, {
        "before_backup": "echo paused > paused; echo 'cannot reach the app' >&2; exit 3",
        "after_backup": "rm -f paused; echo resumed > resumed",
        "on_error": 'printf "%s" "$ETERNIA_ERROR" > error.txt; printf "%s" "$ETERNIA_BACKUP_ID" > id.txt',
    })
    mgr = BackupManager.from_config(cfg)
    with pytest.raises(SourceError, match="hooks.before_backup command exited with status 3: cannot reach the app"):
        mgr.create_backup()
    assert not (tmp_path / "paused").exists() and (tmp_path / "resumed").exists()
    assert "before_backup" in (tmp_path / "error.txt").read_text()
    assert (tmp_path / "id.txt").read_text()
    assert mgr.list_backups() == []


def test_a_hanging_hook_is_stopped_at_its_timeout(tmp_path):
    cfg = make_config(tmp_path, {"before_backup": "sleep 60", "timeout": 1})
    mgr = BackupManager.from_config(cfg)
    started = time.monotonic()
    with pytest.raises(SourceError, match="hooks.before_backup command ran longer than its timeout of 1 s"):
        mgr.create_backup()
    assert time.monotonic() - started < 15


def test_a_failing_after_backup_fails_the_backup(tmp_path):
    cfg = make_config(tmp_path, {"after_backup": "exit 1", "on_error": "touch on-error-ran"})
    mgr = BackupManager.from_config(cfg)
    with pytest.raises(EterniaBackupError, match="hooks.after_backup command exited with status 1"):
        mgr.create_backup()
    assert (tmp_path / "on-error-ran").exists()
    assert mgr.list_backups() == []


def test_on_error_hears_of_a_failed_target(tmp_path):
    cfg = make_config(tmp_path, {"on_error": 'printf "%s" "$ETERNIA_ERROR" > error.txt'},
                      extra={"targets": [{"name": "gone", "url": "/proc/no-such-dir/backups"}]})
    mgr = BackupManager.from_config(cfg)
    with pytest.raises(EterniaBackupError):
        mgr.create_backup()
    assert "gone" in (tmp_path / "error.txt").read_text()


def test_a_source_hook_has_a_timeout_too(tmp_path):
    (tmp_path / "one").mkdir()
    section = {"name": "app", "storage_path": str(tmp_path / "backups"),
               "sources": [{"type": "directory", "name": "one", "path": str(tmp_path / "one"),
                            "before": "sleep 60", "hook_timeout": 1}]}
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    started = time.monotonic()
    with pytest.raises(SourceError, match="source 'one': before command ran longer than its timeout of 1 s"):
        BackupManager.from_config(cfg).create_backup()
    assert time.monotonic() - started < 15


def test_hook_env_reaches_the_command_but_not_argv_or_config_show(tmp_path, monkeypatch, cli):
    secret = "s3cr3t-hook-value-4711"
    monkeypatch.setenv("APP_TOKEN", secret)
    probe = ('printf "%s" "$TOKEN" > token.txt; '
             'for p in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$p"; echo; done > cmdlines.txt 2>/dev/null')
    cfg = make_config(tmp_path, {"before_backup": probe, "env": {"TOKEN": "${APP_TOKEN}", "PLAIN": "visible?"}})
    BackupManager.from_config(cfg).create_backup()
    assert (tmp_path / "token.txt").read_text() == secret
    assert secret not in (tmp_path / "cmdlines.txt").read_text()
    shown = cli("config", "show", "--json", config=cfg)
    assert shown.returncode == 0
    assert secret not in shown.stdout and "visible?" not in shown.stdout
    hooks = json.loads(shown.stdout)["config"]["hooks"] if "config" in json.loads(shown.stdout) \
        else json.loads(shown.stdout)["hooks"]
    assert set(hooks["env"]) == {"TOKEN", "PLAIN"}
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "backups").glob("*.json"))
    assert secret not in stored
