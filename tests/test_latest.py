"""Issue 9, item 7: "latest" means the same backup to the CLI and the API.

The newest backup is damaged three ways (truncated archive, broken manifest, a
flipped byte that only reading the archive finds). ``verify`` and ``restore`` of
``latest``, through the CLI and through the API, all name the newest backup and
fail; nothing is restored from an older one unless ``--allow-older`` /
``allow_older=True`` says so, and then it is the newest good one.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from eternia_backup import IntegrityError
from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def truncate(archive: Path, manifest: Path) -> None:
    with open(archive, "r+b") as f:
        f.truncate(archive.stat().st_size - 100)


def break_manifest(archive: Path, manifest: Path) -> None:
    manifest.write_text(manifest.read_text()[:40])


def flip_byte(archive: Path, manifest: Path) -> None:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.fixture
def two_backups(app, write_config):
    cfg = write_config(sources=[{"type": "directory", "name": "files", "path": "state/files"}])
    mgr = BackupManager.from_config(cfg)
    older = mgr.create_backup()
    (app / "state" / "files" / "changed.txt").write_text("between the backups")
    time.sleep(1.05)  # a manifest that does not parse leaves only the id's whole seconds to order by
    newer = mgr.create_backup()
    (app / "state" / "files" / "changed.txt").write_text("after the backups: live data")
    storage = app / "backups"
    return cfg, older, newer, storage / newer.manifest.archive.file, storage / newer.manifest.filename


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate, break_manifest, flip_byte])
def test_latest_is_the_newest_backup_for_cli_and_api(app, two_backups, damage):
    cfg, older, newer, archive, manifest = two_backups
    damage(archive, manifest)
    live = app / "state" / "files"
    before = _digest(live)
    mgr = BackupManager.from_config(cfg)

    # API: verify and restore name the newest backup and say what to do.
    with pytest.raises(IntegrityError) as verified:
        mgr.verify_backup("latest")
    with pytest.raises(IntegrityError) as restored:
        mgr.restore_backup("latest", confirm=lambda _: True)
    with pytest.raises(IntegrityError):
        mgr.restore_backup("latest", to=app / "api-out")
    for exc in (verified.value, restored.value):
        assert newer.backup_id in str(exc) and older.backup_id not in str(exc)
        assert "--allow-older" in str(exc) and "explicit backup id" in str(exc)

    # CLI: the same answer.
    proc = run_cli("verify", "latest", config=cfg)
    assert proc.returncode == 1 and f"DAMAGED  {newer.backup_id}" in proc.stdout, proc.stdout + proc.stderr
    assert "--allow-older" in proc.stdout
    for args in (["restore", "latest", "--yes"], ["restore", "latest", "--to", str(app / "cli-out"), "--yes"]):
        proc = run_cli(*args, config=cfg)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert newer.backup_id in proc.stderr and "--allow-older" in proc.stderr
        assert older.backup_id not in proc.stderr + proc.stdout
    assert _digest(live) == before
    assert not (app / "api-out").exists() and not (app / "cli-out").exists()

    # Asked for explicitly: the newest good one, for both.
    assert mgr.verify_backup("latest", allow_older=True).backup_id == older.backup_id
    proc = run_cli("verify", "latest", "--allow-older", config=cfg)
    assert proc.returncode == 0 and older.backup_id in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli("restore", "latest", "--allow-older", "--to", str(app / "cli-out"), "--yes", config=cfg)
    assert proc.returncode == 0 and f"restored backup {older.backup_id}" in proc.stdout, proc.stdout + proc.stderr
    assert newer.backup_id in proc.stderr  # the warning names what was skipped
    result = mgr.restore_backup("latest", to=app / "api-out", allow_older=True)
    assert result.backup_id == older.backup_id
    assert not (app / "api-out" / "files" / "changed.txt").exists()


def test_latest_without_damage_is_the_newest(app, two_backups):
    cfg, older, newer, _archive, _manifest = two_backups
    mgr = BackupManager.from_config(cfg)
    assert mgr.resolve_latest().backup_id == newer.backup_id
    assert mgr.verify_backup("latest").backup_id == newer.backup_id
    assert mgr.verify_backup("latest", allow_older=True).backup_id == newer.backup_id
    proc = run_cli("verify", config=cfg)
    assert proc.returncode == 0 and newer.backup_id in proc.stdout
    assert not os.listdir(app / "backups") == []
