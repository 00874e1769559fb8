"""Issue 9, item 9: an in-place restore that cannot swap safely says why, before changing anything.

A source that is a mount point (a real tmpfs) is refused up front with what to do
instead; a process holding a file open under the destination (a real child
process) is named, and ``--force`` goes ahead.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
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
