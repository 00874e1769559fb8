"""Every kind of target: a local directory, memory://, S3 (SeaweedFS) and FTP (pyftpdlib), all real.

The conformance kit's :class:`~eternia_backup.testing.TargetConformance` runs
against each built-in target (the target's own contract). Below it, the whole
pipeline runs on each kind of target through the Python API, checked as a user
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
from eternia_backup.api import UploadCleanup
from eternia_backup.builtin.fsspec_target import FsspecTarget
from eternia_backup.builtin.local_target import LocalTarget
from eternia_backup.builtin.s3_target import S3Target
from eternia_backup.config import parse_config
from eternia_backup.errors import IntegrityError, SourceError
from eternia_backup.manifest import format_time
from eternia_backup.testing import TargetConformance

# -- the kit, on every built-in target --------------------------------------------------


class TestLocalTarget(TargetConformance):
    @pytest.fixture
    def target(self, tmp_path):
        return LocalTarget("kit", str(tmp_path / "not-yet" / "store"), {})


class TestFileUrlTarget(TargetConformance):
    large_size = 4 * 2**20  # the same class as TestLocalTarget: only the URL form differs

    @pytest.fixture
    def target(self, tmp_path):
        return LocalTarget("kit", (tmp_path / "store").as_uri(), {})


class TestMemoryTarget(TargetConformance):
    @pytest.fixture
    def target(self):
        return FsspecTarget("kit", f"memory://kit-{uuid.uuid4().hex[:8]}", {})


class TestS3Target(TargetConformance):
    @pytest.fixture
    def target(self, s3_env, s3_bucket):
        return S3Target("kit", f"s3://{s3_bucket}/prefix", {})

    def target_section(self, target):
        return {"name": "kit", "url": target.url}  # its .options hold the session it built; credentials: s3_env


class TestFtpTarget(TargetConformance):
    @pytest.fixture
    def target(self, ftp_url):
        url, options = ftp_url
        return FsspecTarget("kit", url, options)


# -- the pipeline, on every kind of target -------------------------------------------------


@pytest.fixture(params=["local", "memory", "s3", "ftp"])
def target_entry(request, tmp_path) -> dict:
    if request.param == "local":
        return {"name": "t", "url": str(tmp_path / "store")}
    if request.param == "memory":
        return {"name": "t", "url": f"memory://conformance-{uuid.uuid4().hex[:8]}"}
    if request.param == "ftp":
        url, options = request.getfixturevalue("ftp_url")
        return {"name": "t", "url": url, "options": options}
    request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("s3_bucket")
    return {"name": "t", "url": f"s3://{bucket}/prod"}


@pytest.fixture
def manager(app, target_entry):
    def make(**extra) -> BackupManager:
        section = {
            "sources": [
                {"type": "directory", "name": "files", "path": "state/files"},
                {"type": "sqlite", "name": "db", "path": "state/app.db"},
            ],
            "targets": [target_entry],
            "state_dir": "eternia-state",  # not the user's: two test workers would share its lock
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


# -- a store that connects when opened, and never answers -------------------------------


class SilentServer:
    """Accepts TCP connections on loopback and never says a word (an FTP server that hangs)."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never answered

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_an_unreachable_ftp_target_fails_its_operations_once_each_command_and_the_local_copy_is_kept(app):
    import time

    from conftest import run_cli_in_process as run_cli

    server = SilentServer()
    try:
        config = app / "eternia-backup.yaml"
        config.write_text(
            "backup:\n  storage_path: backups\n  sources: [{type: directory, name: files, path: state/files}]\n"
            f"  targets: [{{name: f, url: 'ftp://127.0.0.1:{server.port}/x',\n"
            "              options: {username: u, password: ftp-secret-1234, timeout: 1}}]\n")
        for command, status, says in ((["list"], 1, "target 'f' could not be listed"),
                                      (["create"], 1, "kept on: local")):
            before = len(server.accepted)
            started = time.monotonic()
            proc = run_cli(*command, config=config)
            took = time.monotonic() - started
            assert proc.returncode == status, proc.stderr
            assert says in proc.stderr and "timed out" in proc.stderr and "unexpected" not in proc.stderr
            assert "ftp-secret-1234" not in proc.stderr + proc.stdout
            # one connection timeout per command, not one per operation
            assert len(server.accepted) - before == 1, command
            assert took < 5, (command, took)
        listed = run_cli("list", "--json", config=config)
        assert len(json.loads(listed.stdout)["backups"]) == 1  # the local copy
    finally:
        server.close()
