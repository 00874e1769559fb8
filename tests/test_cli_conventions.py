"""The CLI behaves like the tools users know: options anywhere, -v/-vv/-q, help with
examples, exit codes a script can trust, shell completion, a starter config.

Exit statuses (11 locked, 2 usage, 130 Ctrl-C, 143 SIGTERM) and argcomplete's environment are
checked on a real process (``run_cli``); the rest calls the CLI in this process
(``run_cli_in_process``, see conftest)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, run_cli_in_process
from eternia_backup.cli import COMMANDS
from eternia_backup.errors import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_TERMINATED, EXIT_USAGE
from eternia_backup.locks import LocalLock


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello")
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "retention_days": 7}}))
    return config


def cli_in(directory: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return run_cli_in_process(*args, cwd=directory, **kw)


def test_global_options_work_before_and_after_the_command(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("-c", str(project), "create"), ("create", "-c", str(project)),
                 ("create", "--config", str(project), "-q")):
        proc = cli_in(elsewhere, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    for args in (("--json", "-c", str(project), "list"), ("-c", str(project), "list", "--json")):
        proc = cli_in(elsewhere, *args)
        assert proc.returncode == 0 and len(json.loads(proc.stdout)["backups"]) == 3, (args, proc.stdout)


def test_v_gives_info_vv_gives_debug_records_and_q_gives_only_errors(project):
    info = run_cli_in_process("create", "-v", config=project)
    assert info.returncode == 0 and " INFO " in info.stderr and " DEBUG " not in info.stderr, info.stderr
    debug = run_cli_in_process("-v", "create", "-v", config=project)  # counted across both places
    assert debug.returncode == 0 and " DEBUG " in debug.stderr, debug.stderr
    quiet = run_cli_in_process("create", "-q", config=project)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip().endswith(".tar.zst")
    failing = run_cli_in_process("restore", "nope", "-q", config=project)
    assert failing.returncode == 1 and failing.stderr.startswith("error: "), failing.stderr


def test_the_create_summary_counts_the_files_bytes_not_the_tar_stream(tmp_path):
    """300 files of 10 bytes (and 4 directories) are 2.9 KiB of data, though their tar stream is 300 KiB of headers and padding."""
    for i in range(300):
        (tmp_path / "data" / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / f"d{i % 3}" / f"f{i}.txt").write_bytes(b"0123456789")
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "retention_days": 7}}))
    proc = run_cli_in_process("create", "-v", config=config)
    assert proc.returncode == 0, proc.stderr
    [summary] = [line for line in proc.stderr.splitlines() if "stored (ratio" in line]
    assert "304 entries, 2.9 KiB in, " in summary, summary
    stored = float(re.search(r"([\d.]+) KiB stored", summary).group(1))
    ratio = float(re.search(r"ratio ([\d.]+)", summary).group(1))
    assert ratio == pytest.approx(3000 / (stored * 1024), rel=0.05), summary


def test_log_lines_carry_the_utc_offset(project):
    proc = run_cli_in_process("create", "-v", config=project)
    first = proc.stderr.splitlines()[0]
    assert first[:19].count("-") == 2 and first[19] in "+-", first  # 2026-11-29T07:02:11+0000


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_has_a_description_and_an_example(command, capsys):
    from eternia_backup.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    line = COMMANDS[command][0]
    assert " ".join(line[1:].split()) in " ".join(out.split()), out  # the one-line description
    assert "examples:" in out and f"eternia-backup {command}" in out.split("examples:")[1]


def test_a_run_that_finds_the_lock_held_exits_11_and_does_nothing(project):
    run_cli_in_process("create", config=project)  # setup; the runs that meet the lock are real processes
    backups = project.parent / "backups"
    before = sorted(p.name for p in backups.iterdir())
    from eternia_backup import BackupManager

    lock = LocalLock(BackupManager.from_config(project).lock.path)  # what another run would hold
    with lock.acquire("test"):
        for args in (("create",), ("restore", "latest", "--to", str(project.parent / "r"), "--yes"), ("cleanup",)):
            proc = run_cli(*args, config=project)
            assert proc.returncode == EXIT_LOCKED, (args, proc.returncode, proc.stderr)
            assert "skipped" in proc.stderr and "another backup or cleanup is running" in proc.stderr
        as_json = run_cli("create", "--json", config=project)
        assert as_json.returncode == EXIT_LOCKED and json.loads(as_json.stdout)["error"]["code"] == "locked"
    assert sorted(p.name for p in backups.iterdir()) == before
    assert not (project.parent / "r").exists()


def test_usage_mistakes_exit_2(project):
    run_cli_in_process("create", config=project)  # setup; the mistakes are made on real processes
    proc = run_cli("restore", "latest", "--source", "nope", "--to", str(project.parent / "r"), config=project)
    assert proc.returncode == EXIT_USAGE and "no source 'nope'" in proc.stderr, proc.stderr
    assert run_cli("frobnicate", config=project).returncode == EXIT_USAGE
    assert run_cli("restore", config=project).returncode == EXIT_USAGE
    assert run_cli("list", "--bogus", config=project).returncode == EXIT_USAGE


@pytest.mark.slow
def test_ctrl_c_exits_130_and_commits_nothing(tmp_path):
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "sources": [
        {"type": "command", "name": "slow", "command": "echo started >&2; sleep 60; echo done"}]}}))
    # As from a terminal: SIGINT at its default even when the suite itself was started with it
    # ignored (a background job of a non-interactive shell), which Python would then keep ignoring.
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "-c", str(config), "create", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            c.name() == "sleep" for c in psutil.Process(proc.pid).children(recursive=True)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # the dump command is running now
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert "interrupted; nothing was committed" in err and "Traceback" not in err
    backups = tmp_path / "backups"
    assert not [p for p in backups.iterdir() if not p.name.startswith(".")], list(backups.iterdir())


@pytest.mark.slow
def test_sigterm_during_create_cleans_up_records_the_failure_and_exits_143(tmp_path):
    """What systemd, Kubernetes and docker stop send: handled as Ctrl-C, not a silent death."""
    import psutil

    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "sources": [
        {"type": "command", "name": "slow", "command": "head -c 40000000 /dev/urandom; sleep 60"}]}}))
    backups = tmp_path / "backups"
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "-c", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    sleeping = []
    written = lambda: sum(p.stat().st_size for p in backups.glob(".*tmp"))  # noqa: E731
    while time.monotonic() < deadline and not (sleeping and written() > 2**20):
        assert proc.poll() is None, proc.communicate()
        sleeping = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "sleep"]
        time.sleep(0.1)
    assert sleeping and written() > 2**20, list(backups.iterdir())
    proc.send_signal(signal.SIGTERM)  # the archive is half written, the dump command still running
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED == 143, (proc.returncode, err)
    assert err.splitlines() == ["error: terminated by SIGTERM; nothing was committed"], err
    assert list(backups.iterdir()) == []  # no temporary file, no archive
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sleeping)
    status = json.loads(run_cli("status", "--json", config=config).stdout)["targets"]["local"]
    assert status["last_error"] == "terminated by SIGTERM; nothing was committed" and not status.get("last_success")
    # the CLI called in a process of its own puts the handler back (an application's stays its own)
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli_in_process("status", config=config).returncode == 1  # overdue
    assert signal.getsignal(signal.SIGTERM) == before


def test_shell_completion_scripts_and_completions(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        proc = run_cli_in_process("completion", shell)
        assert proc.returncode == 0 and "eternia-backup" in proc.stdout and len(proc.stdout) > 200, proc.stderr
    out = tmp_path / "completions"
    line = "eternia-backup res"
    env = {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n",
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    proc = subprocess.run([sys.executable, "-m", "eternia_backup"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split() == ["restore"]


def test_init_writes_a_config_that_checks_and_backs_up_at_once(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("remember")
    proc = cli_in(tmp_path, "init")
    assert proc.returncode == 0 and (tmp_path / "eternia-backup.yaml").exists(), proc.stderr
    text = (tmp_path / "eternia-backup.yaml").read_text()
    for key in ("enabled:", "frequency:", "retention_days:", "storage_path:", "cloud_backup:", "bucket:",
                "# sources:", "# targets:", "# encryption:", "# schedule:"):
        assert key in text, key
    assert cli_in(tmp_path, "config", "check").returncode == 0
    created = cli_in(tmp_path, "create")
    assert created.returncode == 0 and Path(created.stdout.strip()).exists(), created.stderr
    restored = cli_in(tmp_path, "restore", "latest", "--to", str(tmp_path / "r"), "--yes")
    assert restored.returncode == 0 and (tmp_path / "r" / "data" / "notes.txt").read_text() == "remember"

    again = cli_in(tmp_path, "init")
    assert again.returncode == EXIT_USAGE and "already exists" in again.stderr
    assert (tmp_path / "eternia-backup.yaml").read_text() == text
    other = cli_in(tmp_path, "init", "--path", str(tmp_path / "sub.yaml"))
    assert other.returncode == 0 and (tmp_path / "sub.yaml").read_text() == text


def test_init_writes_where_config_or_the_environment_say_and_never_over_a_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("remember")
    for args in (("-c", "myapp.yaml", "init"), ("init", "--config", "myapp.yaml")):
        proc = cli_in(tmp_path, *args)
        if args[0] == "-c":
            assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {tmp_path / 'myapp.yaml'}", proc.stderr
            assert "`eternia-backup -c myapp.yaml create`" in proc.stderr  # the next step finds it
            text = (tmp_path / "myapp.yaml").read_text()
        else:  # the second time: the file is there and stays as it was
            assert proc.returncode == EXIT_USAGE and "myapp.yaml already exists" in proc.stderr, proc.stderr
            assert "`eternia-backup -c myapp.yaml config check`" in proc.stderr
            assert (tmp_path / "myapp.yaml").read_text() == text
    assert not (tmp_path / "eternia-backup.yaml").exists()
    created = cli_in(tmp_path, "-c", "myapp.yaml", "create")
    assert created.returncode == 0 and Path(created.stdout.strip()).is_file(), created.stderr

    env = {"ETERNIA_BACKUP_CONFIG": str(tmp_path / "from-env.yaml")}
    assert cli_in(tmp_path, "init", env=env).returncode == 0
    assert (tmp_path / "from-env.yaml").read_text() == text and not (tmp_path / "eternia-backup.yaml").exists()
    assert cli_in(tmp_path, "config", "check", env=env).returncode == 0
    again = cli_in(tmp_path, "init", env=env)
    assert again.returncode == EXIT_USAGE and "from-env.yaml already exists" in again.stderr

    # --path is init's own option: it wins over a -c (from an alias, say), and the next steps name it
    both = cli_in(tmp_path, "-c", "a.yaml", "init", "--path", "b.yaml")
    assert both.returncode == 0 and (tmp_path / "b.yaml").is_file() and not (tmp_path / "a.yaml").exists()
    assert "`eternia-backup -c b.yaml create`" in both.stderr


def test_config_not_found_points_at_init(tmp_path):
    proc = cli_in(tmp_path, "create")
    assert proc.returncode == EXIT_USAGE and "eternia-backup init" in proc.stderr, proc.stderr
