"""The example third-party plugins (examples/plugins), installed as a user would, driven through the CLI.

``make setup`` installs them from their directories, not editable, so these
tests see what ``pip install`` gives: entry points, no import of the checkout.
Their own conformance tests (examples/plugins/*/tests) run in the suite too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from conftest import run_cli

APP = '''\
import json, os, pathlib
STATE = pathlib.Path(__file__).with_name("inventory.json")

def snapshot():
    return json.loads(STATE.read_text())

def restore(data):
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, STATE)
'''

ORIGINAL = {"items": {"apple": 3, "pear": 5}, "version": 1}
CHANGED = {"items": {"apple": 0}, "version": 2}


@pytest.fixture
def world(tmp_path) -> dict:
    """An app (a module and its state file, a directory of files) and a config using both example plugins."""
    app = tmp_path / "app"
    (app / "files").mkdir(parents=True)
    (app / "files" / "notes.txt").write_text("kept beside the inventory\n")
    module = f"inventory_{uuid.uuid4().hex[:8]}"
    (app / f"{module}.py").write_text(APP)
    state = app / "inventory.json"
    state.write_text(json.dumps(ORIGINAL))
    store = tmp_path / "vault" / "backups.sqlite"
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "name": "shop",
        "state_dir": str(tmp_path / "state"),
        "sources": [
            {"type": "callable", "name": "inventory", "target": f"{module}:snapshot",
             "restore": f"{module}:restore", "python_path": [str(app)]},
            {"type": "directory", "name": "files", "path": "files"},
        ],
        "targets": [{"name": "vault", "url": f"sqlitestore://{store}"}],
        "retention": {"keep_last": 1},
    }}))
    return {"app": app, "config": config, "state": state, "store": store}


def cli_ok(*args, config, env=None) -> subprocess.CompletedProcess:
    proc = run_cli(*args, config=config, env=env)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_examples_are_installed_plugins_not_the_checkout():
    proc = run_cli("plugins")
    assert proc.returncode == 0
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["source", "callable", "callable", "eternia-backup-callable", "0.1.0"] in rows
    assert ["target", "sqlitestore", "sqlitestore", "eternia-backup-sqlitestore", "0.1.0"] in rows
    import eternia_backup_callable
    import eternia_backup_sqlitestore

    for module in (eternia_backup_callable, eternia_backup_sqlitestore):
        assert "site-packages" in module.__file__, module.__file__  # installed, not editable


def test_backup_list_verify_restore_cleanup_through_the_cli(world):
    config = world["config"]
    first = json.loads(cli_ok("--json", "create", config=config).stdout)
    assert world["store"].is_file()
    listed = json.loads(cli_ok("--json", "list", config=config).stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [first["backup_id"]]
    assert listed["backups"][0]["copies"][0]["url"].startswith("sqlitestore://")
    cli_ok("verify", "latest", config=config)

    world["state"].write_text(json.dumps(CHANGED))
    (world["app"] / "files" / "notes.txt").write_text("changed")
    cli_ok("restore", "latest", "--yes", config=config)
    assert json.loads(world["state"].read_text()) == ORIGINAL
    assert (world["app"] / "files" / "notes.txt").read_text() == "kept beside the inventory\n"

    to = world["app"].parent / "restored"
    cli_ok("restore", "latest", "--to", str(to), "--yes", config=config)
    assert json.loads((to / "inventory" / "snapshot.json").read_text()) == ORIGINAL

    time.sleep(1.1)  # backup ids have whole seconds
    second = json.loads(cli_ok("--json", "create", config=config).stdout)
    cleaned = json.loads(cli_ok("--json", "cleanup", config=config).stdout)
    assert cleaned["ok"] and cleaned["deleted_count"] == 1
    listed = json.loads(cli_ok("--json", "list", config=config).stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [second["backup_id"]]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_third_party_restore_plan_killed_mid_commit_is_finished_by_the_next_run(world, tmp_path):
    config = world["config"]
    cli_ok("create", config=config)
    world["state"].write_text(json.dumps(CHANGED))
    marker = tmp_path / "in-commit"
    cmd = [sys.executable, "-m", "eternia_backup", "--config", str(config), "restore", "latest", "--yes"]
    proc = subprocess.Popen(cmd, env={**os.environ, "EXAMPLE_CALLABLE_PAUSE_IN_COMMIT": str(marker)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the restore never reached the plan's commit"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(world["state"].read_text()) == CHANGED  # killed before the restore function ran
    status = json.loads(run_cli("--json", "status", config=config).stdout)
    assert status["interrupted_restore"] and "inventory" in status["interrupted_restore"]

    cli_ok("create", config=config)  # finishes the restore first, then backs up the restored state
    assert json.loads(world["state"].read_text()) == ORIGINAL
    status = json.loads(run_cli("--json", "status", config=config).stdout)
    assert status["interrupted_restore"] is None
    listed = json.loads(cli_ok("--json", "list", config=config).stdout)
    assert len(listed["backups"]) == 2

