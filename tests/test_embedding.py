"""Embedding the scheduler in an application: temporary files, signals, finding the config.

The scenario of issue #13: an application server that called ``start_scheduler()``
got SIGTERM during a backup and left a full copy of its database (0644) in /tmp.
Here real servers (uvicorn with FastAPI's lifespan; wsgiref) run a real backup
that is still going when SIGTERM arrives; the system temporary directory is
private to the test (TMPDIR), so "nothing in /tmp" is checked exactly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from eternia_backup import BackupManager, api, scratch
from eternia_backup.api import hookimpl
from eternia_backup.builtin.sqlite import SqliteSource


def _write(path: Path, section: dict) -> Path:
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def _state_tmp(app: Path) -> Path:
    return app / ".backups.eternia" / "tmp"


# -- temporary files ----------------------------------------------------------------------


class _Recording:
    """A plugin whose sqlite source records where the consistent copy was and its modes."""

    seen: list[tuple[Path, int]] = []

    class Source(SqliteSource):
        type_name = "recorded-sqlite"

        def backup(self, writer):
            outer = self

            class Writer:
                def __getattr__(self, name):
                    return getattr(writer, name)

                def add_file(self, relpath, path, **kw):
                    _Recording.seen.append((path, stat.S_IMODE(os.stat(path.parent).st_mode)))
                    return writer.add_file(relpath, path, **kw)

            SqliteSource.backup(outer, Writer())

    @hookimpl
    def eternia_register_sources(self, register):
        register(_Recording.Source)


def test_the_sqlite_copy_is_private_in_the_state_directory_and_gone_after(app, tmp_path):
    from eternia_backup.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(_Recording(), name="test-recording")
    try:
        _write(app / "eternia-backup.yaml", {"storage_path": "backups",
                                             "sources": [{"type": "recorded-sqlite", "name": "db",
                                                          "path": "state/app.db"}]})
        os.chmod(app / "state" / "app.db", 0o644)
        _Recording.seen.clear()
        old_umask = os.umask(0o022)
        try:
            BackupManager.from_config(app / "eternia-backup.yaml", plugin_manager=pm).create_backup()
        finally:
            os.umask(old_umask)
    finally:
        pm.unregister(name="test-recording")
    [(copy, dir_mode)] = _Recording.seen
    assert copy.parent.parent == _state_tmp(app)
    assert copy.parent.name.startswith(f"sqlite-{os.getpid()}@")
    assert dir_mode == 0o700
    assert stat.S_IMODE(os.stat(_state_tmp(app)).st_mode) == 0o700
    assert list(_state_tmp(app).iterdir()) == []


def test_the_consistent_copy_is_made_0600_whatever_the_umask(app, tmp_path):
    from eternia_backup.builtin.sqlite import snapshot

    old_umask = os.umask(0o022)
    try:
        snapshot(app / "state" / "app.db", tmp_path / "copy.db")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "copy.db").stat().st_mode) == 0o600


_HOLDER = textwrap.dedent("""
    import os, sys, time
    from eternia_backup import BackupManager, api
    from eternia_backup.builtin.sqlite import snapshot
    m = BackupManager.from_config(sys.argv[1])
    with m.scratch_space():
        d = api.scratch_dir("sqlite")  # what the sqlite source does, stopped in the middle
        snapshot(m.sources["db"].path, d / "copy.db")
        f = api.scratch_file("spool")
        f.write(b"more")
        print(d, flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold(config: Path, seconds: float) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(config), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_dead_process_leftover_is_removed_by_the_next_backup_and_a_live_one_is_kept(app):
    config = _write(app / "eternia-backup.yaml", {"storage_path": "backups",
                                                  "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]})
    live, kept = _hold(config, 60)
    killed, left = _hold(config, 60)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        assert left.is_dir() and stat.S_IMODE(left.stat().st_mode) == 0o700
        assert stat.S_IMODE((left / "copy.db").stat().st_mode) == 0o600
        # an unnamed file: nothing of it is listed, even after SIGKILL
        assert sorted(p.name for p in _state_tmp(app).iterdir()) == sorted([left.name, kept.name])

        result = run_cli("create", "-v", config=config)
        assert result.returncode == 0, result.stderr
        assert not left.exists()
        assert f"removed the temporary {left}" in result.stderr
        assert (kept / "copy.db").is_file()  # its process is alive: not ours to remove
    finally:
        live.kill()
        live.wait()
    assert run_cli("create", config=config).returncode == 0
    assert list(_state_tmp(app).iterdir()) == []


def test_a_reused_pid_does_not_keep_a_leftover(tmp_path):
    root = tmp_path / "tmp"
    with scratch.using(root):
        mine = scratch.make_dir("x")
    # an entry of a pid that is alive now (pid 1) but started after the entry was made
    reused = root / f"sqlite-1@{scratch._host()}~abc"
    reused.mkdir()
    os.utime(reused, (0, 0))
    other_host = root / "sqlite-1@elsewhere~abc"
    other_host.mkdir()
    not_ours = root / "notes.txt"
    not_ours.write_text("kept")
    removed = scratch.remove_stale(root)
    assert removed == [reused] or (scratch._started(1) is None and removed == [])
    assert mine.exists() and other_host.exists() and not_ours.exists()
    os.utime(other_host, (0, 0))
    assert scratch.remove_stale(root) == [other_host]


def test_scratch_outside_an_operation_is_the_system_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    d = api.scratch_dir("conformance")
    assert d.parent == tmp_path and stat.S_IMODE(d.stat().st_mode) == 0o700


# -- signals ------------------------------------------------------------------------------


def test_start_scheduler_installs_no_signal_handler_unless_asked(app):
    config = _write(app / "eternia-backup.yaml", {"storage_path": "backups", "schedule": {"cron": "0 0 1 1 *"},
                                                  "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]})
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    m = BackupManager.from_config(config)
    (app / "backups").mkdir()
    m.create_backup()  # nothing to catch up
    m.start_scheduler()
    try:
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        m.stop_scheduler(timeout=5)
    m.start_scheduler(handle_signals=True)
    try:
        assert signal.getsignal(signal.SIGTERM) not in before
    finally:
        m.stop_scheduler(timeout=5)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# -- finding the config ---------------------------------------------------------------------


def test_from_dict_resolves_paths_against_base_dir(app, tmp_path, monkeypatch):
    monkeypatch.setenv("APP_BACKUPS", "backups")
    monkeypatch.chdir(tmp_path.parent)
    m = BackupManager.from_dict({"backup": {"storage_path": "${APP_BACKUPS}",
                                            "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]},
                                 "other_app_settings": {"debug": True}}, base_dir=app)
    assert m.targets[0].root_path == app / "backups"
    assert m.sources["db"].path == app / "state" / "app.db"
    assert m.create_backup().location.startswith(str(app / "backups"))
    # the section alone works too
    m2 = BackupManager.from_dict({"storage_path": "b2"}, base_dir=app)
    assert m2.targets[0].root_path == app / "b2"


def test_from_dict_reports_bad_keys_like_a_file(app):
    with pytest.raises(api.ConfigError, match="backup.retention_days"):
        BackupManager.from_dict({"retention_days": "often"}, base_dir=app)


def test_the_config_is_found_beside_the_application_from_another_cwd(app, tmp_path):
    _write(app / "eternia-backup.yaml", {"storage_path": "backups"})
    script = app / "myapp.py"
    script.write_text("from eternia_backup import BackupManager, backup_manager\n"
                      "print(BackupManager.from_config().config.path)\n"
                      "print(backup_manager.config.base_dir)\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, str(script)], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(app / "eternia-backup.yaml"), str(app)]
    # the current directory's file comes first; $ETERNIA_BACKUP_CONFIG before both
    _write(elsewhere / "eternia-backup.yaml", {"storage_path": "b"})
    out = subprocess.run([sys.executable, str(script)], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[0] == str(elsewhere / "eternia-backup.yaml")
    env = {**os.environ, "ETERNIA_BACKUP_CONFIG": str(app / "eternia-backup.yaml")}
    out = subprocess.run([sys.executable, str(script)], cwd=elsewhere, capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.stdout.split()[0] == str(app / "eternia-backup.yaml")


def test_base_dir_and_a_clear_error(app, tmp_path, monkeypatch):
    _write(app / "eternia-backup.yaml", {"storage_path": "backups"})
    monkeypatch.chdir(tmp_path.parent)
    assert BackupManager.from_config(base_dir=app).config.path == app / "eternia-backup.yaml"
    assert BackupManager.from_config("eternia-backup.yaml", base_dir=app).config.base_dir == app
    with pytest.raises(api.ConfigError, match=r"config file not found: .*nowhere.*ETERNIA_BACKUP_CONFIG"):
        BackupManager.from_config(base_dir=tmp_path / "nowhere")


# -- real servers under SIGTERM ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_app(app: Path, tmp_path: Path) -> dict:
    """Config: a sqlite source, then a dump command that says it started and sleeps (the backup in progress)."""
    db = app / "state" / "app.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE IF NOT EXISTS big (x BLOB)")
        c.executemany("INSERT INTO big VALUES (randomblob(65536))", [()] * 200)  # 13 MB
    started = tmp_path / "dump-started"
    _write(app / "eternia-backup.yaml", {
        "storage_path": "backups",
        "schedule": {"cron": "0 3 * * *", "catch_up": True},  # no backup yet: one runs at start
        "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"},
                    {"type": "command", "name": "slow", "command": f"touch {started}; sleep 120; echo done"}],
    })
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    return {"started": started, "systmp": systmp,
            "env": {**os.environ, "TMPDIR": str(systmp), "PYTHONUNBUFFERED": "1"}}


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"server ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _get(port: int) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _assert_nothing_left(app: Path, setup: dict) -> None:
    assert list(setup["systmp"].iterdir()) == []  # nothing in the system temporary directory
    assert list(_state_tmp(app).iterdir()) == []
    listed = run_cli("list", "--json", config=app / "eternia-backup.yaml")
    assert json.loads(listed.stdout)["backups"] == []
    storage = app / "backups"
    assert not storage.exists() or list(storage.iterdir()) == []  # nothing half-written either


FASTAPI_APP = """
import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from eternia_backup import BackupManager

manager = BackupManager.from_config(base_dir=Path(__file__).parent)  # uvicorn's main script is not ours


@asynccontextmanager
async def lifespan(app):
    manager.start_scheduler()
    yield
    # a running backup gets 5 s to finish, then is abandoned without a trace
    await asyncio.to_thread(manager.stop_scheduler, 5)


app = FastAPI(lifespan=lifespan)


@app.get("/")
def index():
    return {"ok": True}
"""


@pytest.mark.slow
def test_fastapi_lifespan_stops_the_scheduler_on_sigterm_during_a_backup(app, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    setup = _server_app(app, tmp_path)
    (app / "webapp.py").write_text(FASTAPI_APP)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "webapp:app", "--app-dir", str(app),
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path / "systmp", env=setup["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(setup["started"], proc)
        assert json.loads(_get(port)) == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn shuts down (the lifespan's end stops the scheduler), then re-raises the signal
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "abandoning the running backup" in out and "Application shutdown complete" in out, out
    assert "retry" not in out
    _assert_nothing_left(app, setup)
    _next_run_is_clean(app, setup)


WSGI_APP = """
import sys
from wsgiref.simple_server import make_server

from eternia_backup import BackupManager

manager = BackupManager.from_config()  # found beside this script, whatever the current directory


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


if __name__ == "__main__":
    # wsgiref has no shutdown hook: let the scheduler stop itself on SIGTERM/SIGINT
    manager.start_scheduler(handle_signals=True, grace=5)
    with make_server("127.0.0.1", int(sys.argv[1]), app) as server:
        server.serve_forever()
"""


@pytest.mark.slow
def test_a_wsgi_server_under_sigterm_during_a_backup_leaves_nothing(app, tmp_path):
    setup = _server_app(app, tmp_path)
    (app / "wsgiapp.py").write_text(WSGI_APP)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(app / "wsgiapp.py"), str(port)], cwd=tmp_path / "systmp",
                            env=setup["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(setup["started"], proc)
        assert _get(port) == b"ok"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # stopped cleanly first, then ended by the signal as it would have been without the scheduler
    assert proc.returncode == -signal.SIGTERM, out
    assert "abandoning the running backup" in out, out
    _assert_nothing_left(app, setup)
    _next_run_is_clean(app, setup)


def _next_run_is_clean(app: Path, setup: dict) -> None:
    config = yaml.safe_load((app / "eternia-backup.yaml").read_text())
    config["backup"]["sources"][1]["command"] = "echo done"
    (app / "eternia-backup.yaml").write_text(yaml.safe_dump(config))
    made = run_cli("create", config=app / "eternia-backup.yaml", env={"TMPDIR": str(setup["systmp"])}, timeout=180)
    assert made.returncode == 0, made.stderr
    assert list(setup["systmp"].iterdir()) == []
    assert list(_state_tmp(app).iterdir()) == []
    listed = json.loads(run_cli("list", "--json", config=app / "eternia-backup.yaml").stdout)["backups"]
    assert len(listed) == 1
