"""One suite, every kind of target: a local directory, memory://, and S3 (SeaweedFS).

Each test makes real backups through the Python API and checks what a user
would: the backup is listed, verifies, restores to the same bytes, is found by
id and as ``latest``, survives retention as the newest copy, and a failure
leaves nothing on the target.
"""

from __future__ import annotations

import filecmp
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from eternia_backup import BackupManager
from eternia_backup.config import parse_config
from eternia_backup.errors import IntegrityError, SourceError
from eternia_backup.api import UploadCleanup
from eternia_backup.manifest import format_time


@pytest.fixture(params=["local", "memory", "s3"])
def target_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"
    request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/prod"


@pytest.fixture
def manager(app, target_url):
    def make(**extra) -> BackupManager:
        section = {
            "sources": [
                {"type": "directory", "name": "files", "path": "state/files"},
                {"type": "sqlite", "name": "db", "path": "state/app.db"},
            ],
            "targets": [{"name": "t", "url": target_url}],
            **extra,
        }
        return BackupManager(parse_config(section, base_dir=app))

    return make


def same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)

    def walk(c) -> bool:
        if c.left_only or c.right_only or c.diff_files or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        return not mismatch and not errors and all(walk(s) for s in c.subdirs.values())

    return walk(cmp)


def stored_names(mgr) -> list[str]:
    return sorted(f.name for f in mgr.targets[0].list())


def test_backup_is_listed_and_verifies(manager):
    mgr = manager()
    result = mgr.create_backup()
    entries = mgr.list_backups()
    assert [e.backup_id for e in entries] == [result.backup_id]
    assert entries[0].state == "ok"
    copy = entries[0].copies[0]
    assert copy.url == result.copies[0].url
    configured = mgr.targets[0].url
    if "://" in configured:  # a URL target reports URLs of its own protocol
        assert copy.url.startswith(configured.split("://")[0] + "://")
    else:  # a local target reports plain paths under its directory
        assert copy.url.startswith(configured.rstrip("/") + "/")
    report = mgr.verify_backup(result.backup_id)
    assert report.ok and report.entries == sum(s.entries for s in result.manifest.sources)
    names = stored_names(mgr)
    assert names == sorted([result.manifest.archive.file, result.manifest.filename])


def test_restore_latest_and_by_id_give_the_original(manager, app, tmp_path):
    mgr = manager()
    first = mgr.create_backup()
    (app / "state" / "files" / "users" / "user-0000.json").write_text("changed after the first backup")
    second = mgr.create_backup()
    mgr.restore_backup("latest", to=tmp_path / "latest")
    assert same_tree(app / "state" / "files", tmp_path / "latest" / "files")
    mgr.restore_backup(first.backup_id, to=tmp_path / "first")
    restored = (tmp_path / "first" / "files" / "users" / "user-0000.json").read_text()
    assert restored != "changed after the first backup"
    assert second.backup_id != first.backup_id


def test_restore_in_place_replaces_current_state(manager, app):
    mgr = manager()
    mgr.create_backup()
    victim = app / "state" / "files" / "orders" / "order-0001.json"
    original = victim.read_bytes()
    victim.write_text("broken")
    (app / "state" / "files" / "new-file.txt").write_text("appeared after the backup")
    mgr.restore_backup("latest")
    assert victim.read_bytes() == original
    assert not (app / "state" / "files" / "new-file.txt").exists()
    leftovers = [p.name for p in (app / "state").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_corrupted_archive_fails_verify_and_restore(manager, tmp_path):
    mgr = manager()
    result = mgr.create_backup()
    target = mgr.targets[0]
    data = bytearray(target.read_bytes(result.manifest.archive.file))
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(result.manifest.archive.file, bytes(data))
    with pytest.raises(IntegrityError, match=result.backup_id):
        mgr.verify_backup(result.backup_id)
    with pytest.raises(IntegrityError):
        mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cleanup_keeps_newest_and_deletes_old(manager):
    mgr = manager(retention_days=1)
    old = [mgr.create_backup() for _ in range(2)]
    newest = mgr.create_backup()
    target = mgr.targets[0]
    # Age every backup by 10 days: retention must still keep the newest.
    for r in old + [newest]:
        raw = json.loads(target.read_bytes(r.manifest.filename))
        raw["created_at"] = format_time(datetime.now(timezone.utc) - timedelta(days=10))
        target.write_bytes(r.manifest.filename, json.dumps(raw).encode())
    dry = mgr.cleanup(dry_run=True)
    assert dry.deleted_count == 2
    assert len(mgr.list_backups()) == 3
    assert mgr.cleanup_old_backups() == 2
    assert [e.backup_id for e in mgr.list_backups()] == [newest.backup_id]
    assert stored_names(mgr) == sorted([newest.manifest.archive.file, newest.manifest.filename])


def test_failed_backup_leaves_nothing(manager, app):
    mgr = manager(sources=[
        {"type": "directory", "name": "files", "path": "state/files"},
        {"type": "command", "name": "dump", "command": "echo partial; echo dump failed >&2; exit 4"},
    ])
    with pytest.raises(SourceError, match="dump failed"):
        mgr.create_backup()
    assert stored_names(mgr) == []
    assert mgr.list_backups() == []
    target = mgr.targets[0]
    if isinstance(target, UploadCleanup):
        assert target.incomplete_uploads() == []


def test_download_copies_and_verifies(manager, tmp_path):
    mgr = manager()
    result = mgr.create_backup()
    path = mgr.download_backup(result.copies[0].url, to=tmp_path / "dl")
    assert path.name == result.manifest.archive.file
    assert path.stat().st_size == result.manifest.archive.size
    assert (tmp_path / "dl" / result.manifest.filename).exists()
