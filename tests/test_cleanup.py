"""Cleanup end to end: real backups on real local storage, aged, then retention applied.

Backups are made with create_backup(), then aged by rewriting the manifest's
``created_at`` (the archive's bytes stay as they are, so its size and sha256 in the
manifest stay valid) and by setting both files' mtimes to that age, as they would be
on a disk that has really held them that long.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eternia_backup import BackupManager, StorageError

DAY = 86400


# -- helpers ----------------------------------------------------------------------------


def make_backups(mgr: BackupManager, n: int) -> list[str]:
    """n real backups; their ids, oldest first."""
    return [mgr.create_backup().backup_id for _ in range(n)]


def files_of(storage: Path, backup_id: str) -> list[Path]:
    found = sorted(p for p in storage.iterdir() if backup_id in p.name and not p.name.startswith("."))
    assert found, f"no files of {backup_id} in {storage}"
    return found


def age(storage: Path, backup_id: str, days: float) -> None:
    """Make a backup look `days` old: created_at in its manifest, and the files' mtimes."""
    (manifest,) = storage.glob(f"*-{backup_id}.manifest.json")
    data = json.loads(manifest.read_text())
    created = datetime.now(timezone.utc) - timedelta(days=days)
    data["created_at"] = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data["finished_at"] = (created + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    manifest.write_text(json.dumps(data, indent=2) + "\n")
    stamp = created.timestamp()
    for f in files_of(storage, backup_id):
        os.utime(f, (stamp, stamp))


def snapshot(directory: Path) -> dict[str, tuple[int, float]]:
    return {p.name: (p.lstat().st_size, p.lstat().st_mtime) for p in directory.iterdir()}


def exists(storage: Path, backup_id: str) -> bool:
    return any(backup_id in p.name for p in storage.iterdir())


@pytest.fixture
def storage(app) -> Path:
    return app / "backups"


@pytest.fixture
def refused_url():
    """An http:// store that is down: a loopback port bound but not listening (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/backups"
    sock.close()


# -- retention on real backups ---------------------------------------------------------


def test_cleanup_old_backups_deletes_backups_past_the_window(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(mgr, 5)
    for backup_id, days in zip(ids, (30, 20, 10, 2, 0)):
        age(storage, backup_id, days)

    assert mgr.cleanup_old_backups() == 3

    for gone in ids[:3]:
        assert not exists(storage, gone), f"{gone} (manifest or archive) is still there"
    kept = ids[3:]
    assert sorted(p.name for p in storage.iterdir()) == sorted(
        f.name for backup_id in kept for f in files_of(storage, backup_id))
    assert [e.backup_id for e in mgr.list_backups()] == kept[::-1]
    for backup_id in kept:
        assert len(files_of(storage, backup_id)) == 2  # archive and manifest
        mgr.verify_backup(backup_id)
    assert mgr.cleanup_old_backups() == 0  # nothing more to do


def test_newest_backup_survives_when_everything_is_past_the_window(write_config, storage, tmp_path):
    mgr = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (50, 40, 30)):
        age(storage, backup_id, days)

    assert mgr.cleanup_old_backups() == 2
    assert [e.backup_id for e in mgr.list_backups()] == [ids[-1]]
    mgr.verify_backup("latest")
    restored = tmp_path / "restored"
    mgr.restore_backup("latest", to=restored, confirm=lambda _: True)
    assert any(restored.rglob("user-0000.json"))


def test_retention_days_zero_keeps_even_years_old_backups(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=0))
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (3000, 900, 400)):
        age(storage, backup_id, days)
    before = snapshot(storage)
    assert mgr.cleanup_old_backups() == 0
    assert snapshot(storage) == before


def test_damaged_newest_backup_does_not_count_as_the_kept_copy(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (30, 20, 10)):
        age(storage, backup_id, days)
    (archive,) = storage.glob(f"*-{ids[2]}.tar.zst")
    with open(archive, "r+b") as f:  # truncated, as by an interrupted copy
        f.truncate(archive.stat().st_size // 2)

    mgr.cleanup_old_backups()

    assert exists(storage, ids[1]), "the newest intact backup was deleted"
    assert not exists(storage, ids[0])
    assert not exists(storage, ids[2]), "a damaged backup past the window was kept"
    mgr.verify_backup("latest")


def test_a_flipped_byte_in_the_newest_backup_is_found_before_an_older_one_is_deleted(write_config, storage):
    """Sizes match, so the listing calls it intact: cleanup reads it before it lets the older good one go."""
    mgr = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (30, 20, 10)):
        age(storage, backup_id, days)
    (archive,) = storage.glob(f"*-{ids[2]}.tar.zst")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    mgr.cleanup_old_backups()

    assert exists(storage, ids[1]), "the newest backup that restores was deleted"
    assert not exists(storage, ids[0]) and not exists(storage, ids[2])
    mgr.verify_backup(ids[1])


def test_a_newest_backup_that_cannot_be_read_stops_deletions_on_that_target(write_config, storage, monkeypatch):
    """Whether it is whole is unknown (EIO, a dropped connection): cleanup deletes nothing there and says so."""
    import errno

    from eternia_backup.builtin.local_target import LocalTarget

    mgr = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (30, 20, 10)):
        age(storage, backup_id, days)

    read = LocalTarget.open_read

    def unreadable(self, filename):  # the manifests read, the archives do not
        if filename.endswith(".tar.zst"):
            raise OSError(errno.EIO, "Input/output error")
        return read(self, filename)

    monkeypatch.setattr(LocalTarget, "open_read", unreadable)
    result = mgr.cleanup()
    assert result.deleted_count == 0 and not result.ok
    assert "could not be read to check it, nothing deleted" in result.errors["local"]
    assert all(exists(storage, i) for i in ids)


def test_dry_run_reports_what_would_go_and_deletes_nothing(write_config, storage, cli):
    config = write_config(retention_days=7)
    mgr = BackupManager.from_config(config)
    ids = make_backups(mgr, 4)
    for backup_id, days in zip(ids, (30, 20, 1, 0)):
        age(storage, backup_id, days)
    before = snapshot(storage)

    result = mgr.cleanup(dry_run=True)
    assert result.dry_run and result.ok
    assert result.deleted_count == 2
    assert sorted(result.targets[0].deleted) == sorted(ids[:2])
    assert snapshot(storage) == before

    proc = cli("cleanup", "--dry-run", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "would delete 2 backup(s)" in proc.stdout
    assert all(f"would delete {i}" in proc.stdout for i in ids[:2])
    assert snapshot(storage) == before

    assert mgr.cleanup_old_backups() == 2  # and the real run does what the dry run said
    assert not exists(storage, ids[0]) and not exists(storage, ids[1])


# -- failing and partial listings ------------------------------------------------------


def test_a_target_that_cannot_be_listed_is_reported_and_the_other_is_still_cleaned(
        write_config, storage, refused_url, app, cli):
    local_only = BackupManager.from_config(write_config(retention_days=7))
    ids = make_backups(local_only, 3)
    for backup_id, days in zip(ids, (30, 20, 0)):
        age(storage, backup_id, days)

    config = write_config(retention_days=7, targets=[{"name": "remote", "url": refused_url}])
    mgr = BackupManager.from_config(config)
    result = mgr.cleanup(dry_run=True)
    assert not result.ok and set(result.errors) == {"remote"}
    assert "nothing deleted" in result.errors["remote"]

    with pytest.raises(StorageError, match="remote") as raised:
        mgr.cleanup_old_backups()
    assert raised.value.result.deleted_count == 2  # the local target was still cleaned
    assert not exists(storage, ids[0]) and not exists(storage, ids[1]) and exists(storage, ids[2])

    age(storage, ids[2], 25)
    make_backups(local_only, 1)
    proc = cli("cleanup", config=config)
    assert proc.returncode == 1
    assert "deleted 1 backup(s)" in proc.stdout
    assert "remote" in proc.stderr and "Traceback" not in proc.stderr
    assert not exists(storage, ids[2])


def test_a_target_path_that_is_a_regular_file_is_a_listing_error(write_config, app):
    (app / "not-a-dir").write_text("oops, storage_path names a file")
    mgr = BackupManager.from_config(write_config(retention_days=7, storage_path="not-a-dir"))
    result = mgr.cleanup()
    assert not result.ok and "local" in result.errors


def antedate(storage: Path, backup_id: str, days: float) -> str:
    """Rename a local backup as if made `days` ago (new id, same bytes); returns its new id.

    On S3 a file's time cannot be set, so an old backup there needs an old id.
    """
    (manifest,) = storage.glob(f"*-{backup_id}.manifest.json")
    (archive,) = storage.glob(f"*-{backup_id}.tar.zst")
    created = datetime.now(timezone.utc) - timedelta(days=days)
    new_id = f"{created:%Y%m%dT%H%M%SZ}-{backup_id.rsplit('-', 1)[1]}"
    data = json.loads(manifest.read_text())
    data["backup_id"] = new_id
    data["archive"]["file"] = archive.name.replace(backup_id, new_id)
    data["created_at"] = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data["finished_at"] = (created + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    archive.rename(storage / data["archive"]["file"])
    (storage / manifest.name.replace(backup_id, new_id)).write_text(json.dumps(data, indent=2) + "\n")
    manifest.unlink()
    return new_id


class FaultyS3Proxy(ThreadingHTTPServer):
    """A real HTTP proxy in front of the S3 server that answers 403 AccessDenied to GETs
    of chosen keys (as S3 does for an object whose KMS key one may not use); HEAD, LIST
    and DELETE pass through. Set ``deny`` to a list of key fragments."""

    daemon_threads = True

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.deny: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        if self.command == "GET" and any(d in self.path for d in self.server.deny):
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection") or (k.lower() == "content-length"
                                                                     and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def faulty_s3(s3_server):
    proxy = FaultyS3Proxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_a_manifest_that_cannot_be_read_makes_cleanup_delete_nothing_on_that_target(
        write_config, storage, s3_server, s3_env, s3_bucket, faulty_s3):
    """A manifest that cannot be read right now may be a good backup: it is not "damaged",
    and cleanup must not delete it (nor anything else there) on a partial view."""
    local = BackupManager.from_config(write_config(retention_days=7))
    made = make_backups(local, 3)
    ids = [antedate(storage, made[0], 40), antedate(storage, made[1], 30), made[2]]
    s3 = s3_server.client()
    for f in storage.iterdir():
        s3.put(str(f), f"{s3_bucket}/app/{f.name}")
    before = sorted(s3.find(s3_bucket))
    cloud = BackupManager.from_config(write_config(retention_days=7, storage_path=None, targets=[{
        "name": "cloud", "url": f"s3://{s3_bucket}/app",
        "options": {"client_kwargs": {"endpoint_url": faulty_s3.endpoint}}}]))
    faulty_s3.deny = [f"{ids[1]}.manifest.json"]

    with pytest.raises(StorageError, match="could not be read") as raised:
        cloud.cleanup_old_backups()
    assert "cloud" in str(raised.value)
    assert sorted(s3.find(s3_bucket)) == before, "cleanup deleted on a partial view"

    faulty_s3.deny = []  # the error passes: the backup was good all along
    cloud.verify_backup(ids[1])
    assert cloud.cleanup_old_backups() == 2
    assert [e.backup_id for e in cloud.list_backups()] == [ids[2]]


def test_unfinished_s3_uploads_of_another_series_are_not_aborted(write_config, s3_server, s3_env, s3_bucket):
    """Series `app` (grace 0) aborts its own unfinished multipart upload, never `app-db`'s,
    which keeps the grace period of its own config."""
    s3 = s3_server.client()
    stamp = datetime.now(timezone.utc) - timedelta(days=3)
    keys = {series: f"app/{series}-{stamp:%Y%m%dT%H%M%SZ}-abc123.tar.zst" for series in ("app", "app-db")}
    for key in keys.values():
        s3.call_s3("create_multipart_upload", Bucket=s3_bucket, Key=key)
    mgr = BackupManager.from_config(write_config(
        retention_days=7, name="app", storage_path=None, retention={"incomplete_grace_hours": 0},
        targets=[{"name": "cloud", "url": f"s3://{s3_bucket}/app",
                  "options": {"client_kwargs": {"endpoint_url": s3_server.endpoint}}}]))

    result = mgr.cleanup()

    assert result.ok, result.errors
    left = s3.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads") or []
    assert [u["Key"] for u in left] == [keys["app-db"]]


def test_a_stray_manifest_naming_another_backups_archive_never_deletes_that_archive(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=7, retention={"keep_last": 2}))
    old, new = make_backups(mgr, 2)
    age(storage, old, 30)
    (manifest,) = storage.glob(f"*-{old}.manifest.json")
    stray = storage / manifest.name.replace(old, old.split("-")[0] + "-abcdef")
    shutil.copy(manifest, stray)  # a hand-made copy: describes `old`, lives under another id
    os.utime(stray, (time.time() - 30 * DAY,) * 2)

    mgr.cleanup_old_backups()

    assert not stray.exists()  # the damaged copy is gone ...
    mgr.verify_backup(old)  # ... and `old`, kept by keep_last 2, is whole
    mgr.verify_backup(new)


# -- other series and environments in the same storage --------------------------------


def test_other_environments_and_other_names_in_the_same_directory_are_never_touched(write_config, storage):
    prod = BackupManager.from_config(write_config(retention_days=7, name="app", environment="prod"))
    staging = BackupManager.from_config(write_config(retention_days=7, name="app", environment="staging"))
    other = BackupManager.from_config(write_config(retention_days=7, name="app-db", environment="prod"))
    prod_ids, staging_ids, other_ids = (make_backups(m, 2) for m in (prod, staging, other))
    for backup_id in prod_ids + staging_ids + other_ids:
        age(storage, backup_id, 60)
    theirs = {p.name: p.read_bytes() for i in staging_ids + other_ids for p in files_of(storage, i)}

    assert prod.cleanup_old_backups() == 1

    assert not exists(storage, prod_ids[0]) and exists(storage, prod_ids[1])
    assert {n: (storage / n).read_bytes() for n in theirs if (storage / n).exists()} == theirs
    for mgr, ids in ((staging, staging_ids), (other, other_ids)):
        for backup_id in ids:
            mgr.verify_backup(backup_id)
    # and each of them cleans only its own
    assert other.cleanup_old_backups() == 1
    assert all(exists(storage, i) for i in staging_ids)


# -- leftovers ---------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_are_removed_when_their_writer_is_dead_or_the_grace_period_is_over(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=7))
    keep_id, orphan_id = make_backups(mgr, 2)
    (orphan_manifest,) = storage.glob(f"*-{orphan_id}.manifest.json")
    orphan_manifest.unlink()  # an archive whose manifest was never written
    (orphan_archive,) = storage.glob(f"*-{orphan_id}.tar.zst")
    (archive,) = storage.glob(f"*-{keep_id}.tar.zst")
    host = socket.gethostname().split(".")[0]
    base = archive.name.replace(keep_id, keep_id[:17] + "0000aa")
    dead = storage / f".{base}.{host}.{_dead_pid()}.tmp"
    live = storage / f".{base.replace('0000aa', '0000bb')}.{host}.{os.getpid()}.tmp"
    elsewhere = storage / f".{base.replace('0000aa', '0000cc')}.otherhost.{_dead_pid()}.tmp"
    for f in (dead, live, elsewhere):
        f.write_bytes(b"partial archive")

    result = mgr.cleanup()
    assert result.ok
    assert not dead.exists(), "a temp file of a dead writer on this host was kept"
    assert live.exists() and elsewhere.exists(), "a temp file still within its grace period was removed"
    assert orphan_archive.exists(), "a fresh archive without manifest (maybe being committed) was removed"
    assert result.targets[0].leftovers_removed == [dead.name]

    old = time.time() - 25 * 3600  # past the default 24 h grace period
    for f in (live, elsewhere, orphan_archive):
        os.utime(f, (old, old))
    result = mgr.cleanup()
    assert not live.exists() and not elsewhere.exists() and not orphan_archive.exists()
    assert sorted(result.targets[0].leftovers_removed) == sorted([live.name, elsewhere.name, orphan_archive.name])
    assert sorted(p.name for p in storage.iterdir()) == [f.name for f in files_of(storage, keep_id)]
    mgr.verify_backup(keep_id)


def test_dry_run_removes_no_leftover(write_config, storage):
    mgr = BackupManager.from_config(write_config(retention_days=7))
    (backup_id,) = make_backups(mgr, 1)
    host = socket.gethostname().split(".")[0]
    (archive,) = storage.glob("*.tar.zst")
    temp = storage / f".{archive.name.replace(backup_id, backup_id[:17] + 'ffffff')}.{host}.{_dead_pid()}.tmp"
    temp.write_bytes(b"partial")
    result = mgr.cleanup(dry_run=True)
    assert result.targets[0].leftovers_removed == [temp.name]
    assert temp.exists()


# -- the CLI -----------------------------------------------------------------------------


def test_cli_cleanup_prints_the_count_and_exits_zero(write_config, storage, cli):
    config = write_config(retention_days=7)
    mgr = BackupManager.from_config(config)
    ids = make_backups(mgr, 3)
    for backup_id, days in zip(ids, (9, 8, 0)):
        age(storage, backup_id, days)
    proc = cli("cleanup", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "deleted 2 backup(s)" in proc.stdout
    assert [e.backup_id for e in mgr.list_backups()] == [ids[2]]
    proc = cli("cleanup", config=config)
    assert proc.returncode == 0 and "deleted 0 backup(s)" in proc.stdout
