"""Issue 9, item 9: an in-place restore that cannot swap safely says why, before changing anything.

A source that is a mount point (a real tmpfs) is refused up front with what to do
instead; a process holding a file open under the destination (a real child
process) is named, and ``--force`` goes ahead.

After the swap the restore is complete: an old state that cannot be removed (a
real immutable file) is a warning that names it, never a failure, and blocks no
later run; a Ctrl-C (a real SIGINT to a real process) says that the restore was made.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def files_config(app, write_config):
    return write_config(sources=[{"type": "directory", "name": "files", "path": "state/files"}])


def test_a_source_that_is_a_mount_point_is_refused_with_what_to_do(app, files_config):
    files = app / "state" / "files"
    BackupManager.from_config(files_config).create_backup()
    saved = _digest(files)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(files)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (files / "on-the-mount.txt").write_text("live")
        proc = run_cli("restore", "latest", "--yes", config=files_config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = proc.stderr.strip()
        assert "mount point" in line and "--to" in line and "unmount" in line, line
        assert len(line.splitlines()) == 1 and "Busy" not in line
        assert _digest(files) == {"on-the-mount.txt": hashlib.sha256(b"live").hexdigest()}
        proc = run_cli("restore", "latest", "--dry-run", config=files_config)
        assert proc.returncode == 1 and "mount point" in proc.stderr, proc.stdout + proc.stderr
        assert [p.name for p in (app / "state").iterdir() if ".eternia-" in p.name] == []
        proc = run_cli("restore", "latest", "--to", str(app / "elsewhere"), "--yes", config=files_config)
        assert proc.returncode == 0, proc.stderr
        assert _digest(app / "elsewhere" / "files") == saved
    finally:
        subprocess.run(["umount", str(files)], check=True)


def test_a_mount_point_inside_the_source_is_refused_too(app, files_config):
    files = app / "state" / "files"
    BackupManager.from_config(files_config).create_backup()
    inner = files / "mounted-here"
    inner.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(inner)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (inner / "on-the-mount.txt").write_text("live")
        before = _digest(files)
        proc = run_cli("restore", "latest", "--yes", config=files_config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert str(inner) in proc.stderr and "mount point" in proc.stderr and "--to" in proc.stderr
        assert _digest(files) == before and (inner / "on-the-mount.txt").read_text() == "live"
    finally:
        subprocess.run(["umount", str(inner)], check=True)


def test_a_process_holding_a_file_open_is_named_and_force_goes_ahead(app, files_config):
    files = app / "state" / "files"
    mgr = BackupManager.from_config(files_config)
    mgr.create_backup()
    saved = _digest(files)
    held = files / "held-open.log"
    held.write_text("the application's log\n")
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; f = open(sys.argv[1], 'a'); print('ready', flush=True); sys.stdin.read()",
                              str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        before = _digest(files)
        proc = run_cli("restore", "latest", "--yes", config=files_config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"pid {child.pid}" in proc.stderr and "held-open.log" in proc.stderr and "--force" in proc.stderr
        assert _digest(files) == before

        # The API says the same; restoring elsewhere is not affected.
        with pytest.raises(Exception, match=f"pid {child.pid}"):
            mgr.restore_backup("latest", confirm=lambda _: True)
        mgr.restore_backup("latest", to=app / "elsewhere")

        proc = run_cli("restore", "latest", "--yes", "--force", config=files_config)
        assert proc.returncode == 0, proc.stderr
        assert f"pid {child.pid}" in proc.stderr  # warned, then went ahead
        assert _digest(files) == saved
    finally:
        child.kill()
        child.wait()


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def _leftovers(app: Path) -> list[Path]:
    return sorted(p for p in (app / "state").iterdir() if ".eternia-" in p.name)


def test_an_old_state_that_cannot_be_removed_is_a_warning_and_blocks_no_later_run(app, files_config):
    """User test: `chattr +i` on a file of the live tree, then `restore latest`: the restore failed with
    "unexpected PermissionError" after the swap, and every later create and drill failed the same way."""
    files = app / "state" / "files"
    assert run_cli("create", config=files_config).returncode == 0
    saved = _digest(files)
    (files / "sub").mkdir()
    (files / "sub" / "written-after-the-backup.txt").write_text("old state\n")
    locked = files / "locked.log"
    locked.write_text("old state, immutable\n")
    if not _chattr("+i", locked):
        pytest.skip("chattr +i does not work here (needs root and a filesystem with file attributes)")
    try:
        proc = run_cli("restore", "latest", "--yes", config=files_config)
        assert proc.returncode == 3, proc.stdout + proc.stderr  # done, with a warning
        assert "restored backup" in proc.stdout and "unexpected" not in proc.stderr
        [left] = _leftovers(app)
        assert f"{left} is left" in proc.stderr and "Operation not permitted" in proc.stderr, proc.stderr
        assert "remove it by hand" in proc.stderr and "chattr -i" in proc.stderr
        assert _digest(files) == saved  # the live data is the backup's
        assert [p.name for p in left.iterdir()] == ["locked.log"]  # the rest of the old state is gone

        status = run_cli("status", "--json", config=files_config)
        assert status.returncode == 1, status.stdout  # monitoring sees it
        report = json.loads(status.stdout)
        assert report["interrupted_restore"] is None
        assert [(r["path"], "Operation not permitted" in r["error"]) for r in report["restore_leftovers"]] == \
            [(str(left), True)]
        status = run_cli("status", config=files_config)
        assert f"RESTORE LEFTOVER: {left}" in status.stdout and status.returncode == 1

        # Later runs try once, warn, and go on.
        for args in (("create",), ("drill",), ("restore", "latest", "--yes")):
            proc = run_cli(*args, config=files_config)
            assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
            assert str(left) in proc.stderr and "remove it by hand" in proc.stderr, proc.stderr
        assert _digest(files) == saved and _leftovers(app) == [left]

        # Once it can be removed, the next run removes it and `status` is clean.
        assert _chattr("-i", left / "locked.log")
        assert run_cli("create", config=files_config).returncode == 0
        assert _leftovers(app) == []
        status = run_cli("status", "--json", config=files_config)
        assert status.returncode == 0 and json.loads(status.stdout)["restore_leftovers"] == [], status.stdout
    finally:
        for p in app.rglob("locked.log"):
            _chattr("-i", p)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("signum, status, said", [(signal.SIGINT, 130, "interrupted after the restore"),
                                                   (signal.SIGTERM, 143, "terminated by SIGTERM after the restore")])
def test_ctrl_c_after_the_swap_says_that_the_restore_was_made(app, files_config, signum, status, said):
    """User test: SIGINT late in `restore latest --yes` printed "interrupted; nothing was committed" while
    the live data already was the backup's. The signal here comes once the destination is another
    directory (the swap happened), while the old state (20,000 files) is being removed; SIGTERM (systemd,
    docker stop) is handled alike."""
    files = app / "state" / "files"
    assert run_cli("create", config=files_config).returncode == 0
    saved = _digest(files)
    many = files / "written-after-the-backup"
    many.mkdir()
    for i in range(20000):
        (many / f"{i}.txt").write_text("x")
    before = _inode(files)
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(files_config),
                             "restore", "latest", "--yes"], cwd=app, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and _inode(files) == before:
        assert time.monotonic() < deadline, "the restore never swapped"
        time.sleep(0.0005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, f"exit {proc.returncode}: {out}{err}"
    assert "nothing was committed" not in err and "the live data is the backup's" in err and said in err, err
    assert _digest(files) == saved
    [left] = _leftovers(app)  # what remains of the old state
    assert f"{left} is left" in err and "the next create, restore or drill removes it" in err, err

    status = run_cli("status", config=files_config)
    assert "INTERRUPTED RESTORE" in status.stdout, status.stdout
    proc = run_cli("create", config=files_config)
    assert proc.returncode == 0, proc.stderr
    assert _leftovers(app) == [] and "INTERRUPTED" not in run_cli("status", config=files_config).stdout
    assert _digest(files) == saved
