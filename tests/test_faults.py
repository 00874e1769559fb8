"""Storage that misbehaves, disks that fill up, dumps that fail half way.

Failing, truncating, corrupting and slow storage; a full disk; a failing dump;
cleanup against failing storage. A throw-away target
plugin, ``faulty://<absolute path>``, wraps the built-in local target on a real
local directory and injects what real stores do: errors on open, read, list and
delete, reads that end early, bit flips on read, slow calls. It says it is not
local, so restore downloads through it exactly as from a remote store. Backups,
restores, verify, list and cleanup then run through it with real files.

Disk full is a real small filesystem (a 2 MB tmpfs mounted for the test; skipped
with the reason when mounting is not permitted), and a failing dump is a real
shell command that prints part of its output and exits 1.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import types
from pathlib import Path

import pytest
import yaml
from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)

from eternia_backup import BackupManager, hookimpl
from eternia_backup.config import parse_config
from eternia_backup.errors import EterniaBackupError, IntegrityError, StorageError
from eternia_backup.plugins import get_plugin_manager
from eternia_backup.providers import AtomicWrite, Target
from eternia_backup.builtin.local_target import LocalTarget

# -- the fault-injecting target -------------------------------------------------------------


class Faults:
    """What one target does wrong; tests set these attributes.

    ``fail``: operation -> filename pattern ("" for every file) whose calls raise;
    ``flip_at``: byte offset of archive reads whose lowest bit is flipped;
    ``short_by``: archive reads end this many bytes early;
    ``read_error_after``: archive reads raise EIO after this many bytes;
    ``delay``: seconds every call (and every read of a chunk) takes;
    ``misread_manifest``: filename pattern -> (how, count): the next ``count`` reads of
    a matching manifest come back with one bit flipped (``"flip"``) or cut in half (``"short"``);
    ``archive_bytes_read`` counts what archive reads returned, and ``on_archive_read``
    (if set) is called after each of them.
    """

    def __init__(self) -> None:
        self.fail: dict[str, str] = {}
        self.misread_manifest: dict[str, tuple[str, int]] = {}
        self.flip_at: int | None = None
        self.short_by: int | None = None
        self.read_error_after: int | None = None
        self.delay = 0.0
        self.calls: list[str] = []
        self.slept = 0.0
        self.archive_bytes_read = 0
        self.on_archive_read = None

    def clear(self) -> None:
        self.__init__()


FAULTS: dict[str, Faults] = {}


def _is_archive(filename: str) -> bool:
    return ".tar" in filename and not filename.endswith(".manifest.json") and not filename.startswith(".")


class FaultyReader:
    """A file object from the store whose reads are flipped, cut short, failing or slow."""

    def __init__(self, inner, faults: Faults, archive: bool):
        self.inner, self.faults, self.archive = inner, faults, archive
        self.pos = 0
        self.end = None
        if archive and faults.short_by is not None:
            self.end = os.fstat(inner.fileno()).st_size - faults.short_by

    def read(self, n: int = -1) -> bytes:
        f = self.faults
        if f.delay:
            time.sleep(f.delay)
            f.slept += f.delay
        if self.archive and f.read_error_after is not None and self.pos >= f.read_error_after:
            raise OSError(errno.EIO, "Input/output error (injected)")
        if self.end is not None:
            n = max(0, self.end - self.pos) if n is None or n < 0 else min(n, max(0, self.end - self.pos))
        data = self.inner.read(n)
        if self.archive and f.flip_at is not None and self.pos <= f.flip_at < self.pos + len(data):
            b = bytearray(data)
            b[f.flip_at - self.pos] ^= 0x01
            data = bytes(b)
        self.pos += len(data)
        if self.archive:
            f.archive_bytes_read += len(data)
            if f.on_archive_read is not None:
                f.on_archive_read()
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaultyWrite(AtomicWrite):
    def __init__(self, inner: AtomicWrite, target: FaultyTarget):
        self.inner, self.target = inner, target

    def write(self, data) -> int:
        self.target._enter("write")
        return self.inner.write(data)

    def commit(self) -> None:
        self.target._enter("commit")
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class FaultyTarget(Target):
    """``faulty:///abs/path``: the built-in LocalTarget on /abs/path, with injected faults."""

    protocols = ("faulty",)

    def __init__(self, name, url, options):
        super().__init__(name, url, options)
        self.path = url.split("://", 1)[1]
        self.inner = LocalTarget(name, self.path, {})
        self.faults = FAULTS.setdefault(name, Faults())

    def _enter(self, op: str, filename: str = "") -> None:
        f = self.faults
        f.calls.append(f"{op} {filename}".strip())
        if f.delay:
            time.sleep(f.delay)
            f.slept += f.delay
        pattern = f.fail.get(op)
        if pattern is not None and pattern in filename:
            # What the built-in target raises when its store fails.
            raise self.inner.error_for(op if op != "open_read" else "read", OSError(errno.EIO, "Input/output error"),
                                       filename or None)

    # A remote store as far as the framework can tell: restore downloads through open_read.
    def file_url(self, filename):
        return f"faulty://{self.path}/{filename}"

    def check(self):
        self._enter("check")
        self.inner.check()

    def list(self):
        self._enter("list")
        return self.inner.list()

    def open_write(self, filename):
        self._enter("open_write", filename)
        return FaultyWrite(self.inner.open_write(filename), self)

    def open_read(self, filename):
        self._enter("open_read", filename)
        for pattern, (how, count) in self.faults.misread_manifest.items():
            if count > 0 and pattern in filename and filename.endswith(".manifest.json"):
                self.faults.misread_manifest[pattern] = (how, count - 1)
                with self.inner.open_read(filename) as f:
                    data = bytearray(f.read())
                if how == "flip":
                    data[5] ^= 0x01  # in the first key: "format" becomes "gormat"
                else:
                    del data[len(data) // 2:]
                return io.BytesIO(bytes(data))
        return FaultyReader(self.inner.open_read(filename), self.faults, _is_archive(filename))

    def size(self, filename):
        self._enter("size", filename)
        return self.inner.size(filename)

    def exists(self, filename):
        self._enter("exists", filename)
        return self.inner.exists(filename)

    def delete(self, filename):
        self._enter("delete", filename)
        self.inner.delete(filename)


faulty_plugin = types.ModuleType("faulty_target_plugin")
faulty_plugin.eternia_register_targets = hookimpl(lambda register: register(FaultyTarget))


@pytest.fixture(autouse=True)
def _fresh_faults():
    FAULTS.clear()
    yield
    FAULTS.clear()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The process's temporary directory, to see what a restore leaves there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def manager(app: Path, targets: list[dict], **extra) -> BackupManager:
    section = {
        "sources": [
            {"type": "directory", "name": "files", "path": "state/files"},
            {"type": "sqlite", "name": "db", "path": "state/app.db"},
        ],
        "targets": targets,
        "state_dir": str(app / "eternia-state"),
        **extra,
    }
    pm = get_plugin_manager(load_entry_points=False, extra_plugins=(faulty_plugin,))
    return BackupManager(parse_config(section, base_dir=app), plugin_manager=pm)


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its kind and content hash (an absent root is {})."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in filenames:
            p = Path(dirpath) / n
            out[os.path.relpath(p, root)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def remote(app) -> tuple[BackupManager, Path, str, dict]:
    """One backup on faulty:// (the bytes on disk are good) and what it holds; the live state moved on since."""
    store = app / "remote-store"
    mgr = manager(app, [{"name": "remote", "url": f"faulty://{store}"}])
    backup_id = mgr.create_backup().backup_id
    backed_up = tree(app / "state" / "files")
    (app / "state" / "files" / "users" / "user-0000.json").write_text('{"changed": "after the backup"}')
    (app / "state" / "files" / "added-after.txt").write_text("new")
    return mgr, store, backup_id, backed_up


def archive_size(store: Path) -> int:
    (archive,) = [p for p in store.iterdir() if _is_archive(p.name)]
    return archive.stat().st_size


def assert_refused_and_nothing_written(mgr, app, backup_id, private_tmp, exc_type=IntegrityError,
                                       verify_exc=IntegrityError) -> str:
    """verify and restore (to a new directory and in place) fail naming the backup; nothing changes."""
    live = tree(app / "state")
    with pytest.raises(verify_exc) as verified:
        mgr.verify_backup(backup_id)
    assert backup_id in str(verified.value)
    out = app / "restored"
    with pytest.raises(exc_type) as restored:
        mgr.restore_backup(backup_id, to=out)
    assert backup_id in str(restored.value)
    assert not out.exists(), f"the restore wrote {tree(out)}"
    with pytest.raises(exc_type):
        mgr.restore_backup(backup_id, confirm=lambda changes: True)
    assert tree(app / "state") == live, "the live state changed"
    assert sorted(p.name for p in (app / "state").iterdir()) == sorted(n for n in live if "/" not in n)
    assert list(private_tmp.iterdir()) == [], "the download was left in the temporary directory"
    return str(restored.value)


def test_restore_streams_a_remote_archive_once_without_a_temporary_copy(remote, app, private_tmp):
    """The archive is read once, hashed while it is extracted; no copy of it goes to the temporary directory."""
    mgr, store, backup_id, backed_up = remote
    size = archive_size(store)
    faults = FAULTS["remote"]
    in_tmp: list[list[str]] = []
    faults.on_archive_read = lambda: in_tmp.append([p.name for p in private_tmp.rglob("*")])
    mgr.restore_backup(backup_id, to=app / "restored")
    assert faults.archive_bytes_read == size
    assert in_tmp and all(names == [] for names in in_tmp), in_tmp[-1]
    assert tree(app / "restored" / "files") == backed_up
    faults.archive_bytes_read = 0
    mgr.restore_backup(backup_id, dry_run=True)  # a dry run reads it once too, to check the sha256
    assert faults.archive_bytes_read == size


# -- reads that lie --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_bit_flip_on_read_is_found_and_nothing_is_written(remote, app, private_tmp, where):
    mgr, store, backup_id, backed_up = remote
    size = archive_size(store)
    FAULTS["remote"].flip_at = {"start": 0, "middle": size // 2, "end": size - 1}[where]

    message = assert_refused_and_nothing_written(mgr, app, backup_id, private_tmp)
    assert "sha256" in message or "checksum" in message, message
    # The stored bytes were good all along: once the store reads right, all is well.
    FAULTS["remote"].clear()
    assert mgr.verify_backup(backup_id).ok
    mgr.restore_backup(backup_id, to=app / "restored")
    assert tree(app / "restored" / "files") == backed_up


@pytest.mark.parametrize("missing", [1, "half"])
def test_short_read_is_an_error_and_nothing_is_written(remote, app, private_tmp, missing):
    mgr, store, backup_id, _ = remote
    FAULTS["remote"].short_by = archive_size(store) // 2 if missing == "half" else missing

    message = assert_refused_and_nothing_written(mgr, app, backup_id, private_tmp)
    assert "bytes" in message or "truncated" in message, message


def test_read_error_half_way_is_a_clear_error_and_nothing_is_written(remote, app, private_tmp):
    mgr, store, backup_id, _ = remote
    FAULTS["remote"].read_error_after = archive_size(store) // 2
    live = tree(app / "state")
    out = app / "restored"
    with pytest.raises(StorageError) as info:  # an error of the store, not an "unexpected OSError"
        mgr.restore_backup(backup_id, to=out)
    message = str(info.value)
    assert backup_id in message and "'remote'" in message and "Input/output error" in message, message
    assert "nothing was changed" in message
    assert not out.exists()
    with pytest.raises(StorageError):
        mgr.restore_backup(backup_id, confirm=lambda changes: True)
    assert tree(app / "state") == live
    assert list(private_tmp.iterdir()) == []


def test_verify_reports_a_read_error_half_way_as_that_backups_problem(remote, app):
    mgr, store, backup_id, _ = remote
    FAULTS["remote"].read_error_after = archive_size(store) // 2
    reports = mgr.verify_all()
    assert len(reports) == 1 and not reports[0].ok
    assert backup_id in reports[0].problem and "Input/output error" in reports[0].problem


def test_open_error_is_a_clear_error_and_nothing_is_written(remote, app, private_tmp):
    mgr, _store, backup_id, _ = remote
    FAULTS["remote"].fail["open_read"] = ".tar"
    message = assert_refused_and_nothing_written(mgr, app, backup_id, private_tmp, exc_type=StorageError,
                                                 verify_exc=EterniaBackupError)
    assert "'remote'" in message and "Input/output error" in message


def test_slow_target_still_completes(app, private_tmp):
    store = app / "slow-store"
    mgr = manager(app, [{"name": "slow", "url": f"faulty://{store}"}], retention={"keep_last": 1})
    FAULTS["slow"].delay = 0.05
    first = mgr.create_backup()
    second = mgr.create_backup()
    assert [e.backup_id for e in mgr.list_backups()] == [second.backup_id, first.backup_id]
    assert mgr.verify_backup(second.backup_id).ok
    mgr.restore_backup(second.backup_id, to=app / "restored")
    assert tree(app / "restored" / "files") == tree(app / "state" / "files")
    result = mgr.cleanup()
    assert result.ok and result.deleted_count == 1
    assert [e.backup_id for e in mgr.list_backups()] == [second.backup_id]
    faults = FAULTS["slow"]
    assert faults.slept >= 0.05 * 20 and len(faults.calls) >= 20, "the target was not slow"


# -- listing and deleting --------------------------------------------------------------------


def test_list_error_deletes_nothing_there_and_the_other_target_is_still_cleaned(app):
    flaky_store, local_store = app / "flaky-store", app / "local-store"
    targets = [{"name": "local", "url": str(local_store)}, {"name": "flaky", "url": f"faulty://{flaky_store}"}]
    mgr = manager(app, targets, retention={"keep_last": 1})
    ids = [mgr.create_backup().backup_id for _ in range(3)]
    flaky_before = sorted(os.listdir(flaky_store))
    assert len(flaky_before) == 6

    FAULTS["flaky"].fail["list"] = ""
    result = mgr.cleanup()
    assert not result.ok
    by_target = {t.target: t for t in result.targets}
    assert by_target["flaky"].deleted == [] and "listing failed" in by_target["flaky"].error
    assert sorted(os.listdir(flaky_store)) == flaky_before, "cleanup deleted on a target it could not list"
    assert sorted(by_target["local"].deleted) == sorted(ids[:2]) and by_target["local"].error is None
    assert sorted(os.listdir(local_store)) == sorted(n for n in flaky_before if ids[2] in n)
    with pytest.raises(StorageError) as info:
        mgr.cleanup_old_backups()
    assert "flaky" in str(info.value) and "list" in str(info.value)
    # list still shows what the other target holds, and says which target failed.
    listings, errors = mgr.listings()
    assert list(errors) == ["flaky"] and [c.backup_id for lst in listings for c in lst.copies] == [ids[2]]

    FAULTS["flaky"].clear()  # the store is back: retention catches up there
    assert mgr.cleanup().ok
    assert sorted(os.listdir(flaky_store)) == sorted(os.listdir(local_store))


@pytest.mark.parametrize("how", ["flip", "short"])
def test_a_manifest_misread_once_does_not_get_a_good_backup_deleted(app, how):
    """Retention deletes damaged backups; a manifest that merely read wrong once is not damaged."""
    store = app / "store"
    mgr = manager(app, [{"name": "remote", "url": f"faulty://{store}"}], retention={"keep_last": 3})
    ids = [mgr.create_backup().backup_id for _ in range(3)]
    before = sorted(os.listdir(store))
    FAULTS["remote"].misread_manifest[ids[1]] = (how, 1)

    result = mgr.cleanup()
    assert result.deleted_count == 0, f"a good backup was deleted after one bad read: {result.to_dict()}"
    assert sorted(os.listdir(store)) == before
    assert FAULTS["remote"].misread_manifest[ids[1]] == (how, 0)  # the bad read did happen
    assert [e.backup_id for e in mgr.list_backups()] == ids[::-1]
    assert all(e.state == "ok" for e in mgr.list_backups())


@pytest.mark.parametrize("failing", ["manifest", "archive"])
def test_delete_error_is_reported_and_never_half_deletes_a_listed_backup(app, failing):
    """A backup is deleted manifest first: if that fails it is still whole and listed; if the
    archive's delete fails the backup is already gone and its archive is a leftover."""
    store = app / "store"
    mgr = manager(app, [{"name": "remote", "url": f"faulty://{store}"}],
                  retention={"keep_last": 1, "incomplete_grace_hours": 0})
    old, new = mgr.create_backup(), mgr.create_backup()
    FAULTS["remote"].fail["delete"] = ".manifest.json" if failing == "manifest" else ".tar"

    result = mgr.cleanup()
    assert not result.ok and old.backup_id in result.errors["remote"]
    assert "Input/output error" in result.errors["remote"]
    listed = [e.backup_id for e in mgr.list_backups()]
    if failing == "manifest":
        assert listed == [new.backup_id, old.backup_id]
        assert mgr.verify_backup(old.backup_id).ok  # nothing of it was deleted
    else:
        assert listed == [new.backup_id]  # its manifest is gone: no longer a backup
        assert (store / old.manifest.archive.file).exists()
    with pytest.raises(StorageError):
        mgr.cleanup_old_backups()

    FAULTS["remote"].clear()
    assert mgr.cleanup().ok
    assert sorted(os.listdir(store)) == sorted([new.manifest.filename, new.manifest.archive.file])
    assert [e.backup_id for e in mgr.list_backups()] == [new.backup_id]


# -- disk full, on a real small filesystem ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, mounted for this test and unmounted after it."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a 2 MB tmpfs, which needs root")
    if shutil.which("mount") is None:
        pytest.skip("disk-full tests need the mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not permitted in this container?): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def write_cfg(path: Path, section: dict) -> Path:
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def test_disk_full_during_backup(tmp_path, small_disk):
    state = tmp_path / "state"
    state.mkdir()
    (state / "small.txt").write_text("fits\n" * 1000)
    cfg = write_cfg(tmp_path / "eternia-backup.yaml", {
        "storage_path": str(small_disk / "backups"),
        "sources": [{"type": "directory", "name": "files", "path": "state"}],
    })
    run = lambda *a: run_cli(*a, config=cfg, cwd=tmp_path)
    first = run("create")
    assert first.returncode == 0, first.stderr
    earlier = json.loads(run("list", "--json").stdout)["backups"]
    stored = sorted(os.listdir(small_disk / "backups"))

    (state / "big.bin").write_bytes(random.Random(7).randbytes(3 * 1024 * 1024))  # cannot compress
    proc = run("create")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no space left" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(small_disk / "backups")) == stored, "a temporary file or partial archive was left"
    listed = json.loads(run("list", "--json").stdout)["backups"]
    assert [b["backup_id"] for b in listed] == [b["backup_id"] for b in earlier]
    assert run("verify", "--all").returncode == 0
    out = tmp_path / "restored"
    assert run("restore", "latest", "--to", str(out)).returncode == 0
    assert (out / "files" / "small.txt").read_text() == "fits\n" * 1000
    status = json.loads(run("status", "--json").stdout)
    assert "no space left" in status["targets"]["local"]["last_error"].lower()
    assert status["newest_backup"]["backup_id"] == earlier[0]["backup_id"]


def test_disk_full_during_restore(tmp_path, small_disk):
    """The live directory is on the small disk; staging the restore beside it fills the disk."""
    live = small_disk / "data"
    live.mkdir()
    rng = random.Random(11)
    (live / "new.bin").write_bytes(rng.randbytes(1300 * 1024))
    cfg = write_cfg(tmp_path / "eternia-backup.yaml", {
        "storage_path": str(tmp_path / "backups"),
        "sources": [{"type": "directory", "name": "data", "path": str(live)}],
    })
    run = lambda *a: run_cli(*a, config=cfg, cwd=tmp_path)
    assert run("create").returncode == 0
    (live / "new.bin").unlink()
    (live / "current.bin").write_bytes(rng.randbytes(1000 * 1024))
    (live / "notes.txt").write_text("the current state\n")
    before = tree(live)

    proc = run("restore", "latest", "--yes")
    assert proc.returncode != 0, "a restore that could not be written was reported as a success"
    assert "restored" not in proc.stdout
    assert "no space left" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(live) == before, "the live state changed"
    assert sorted(os.listdir(small_disk)) == ["data"], "staging was left on the full disk"
    assert run("verify", "latest").returncode == 0  # the backup itself is fine


# -- a dump that fails half way ----------------------------------------------------------------


def test_command_failing_half_way_is_not_kept_and_not_counted(tmp_path):
    """A dump that printed 2 MB and then exited 1: the backup failed, nothing of it is kept,
    list and status show the earlier backups only, and retention still keeps both of them."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "app.txt").write_text("application files\n")
    cfg = write_cfg(tmp_path / "eternia-backup.yaml", {
        "storage_path": "backups",
        "retention": {"keep_last": 2, "incomplete_grace_hours": 0},
        "sources": [
            {"type": "directory", "name": "files", "path": "state"},
            {"type": "command", "name": "dump",
             "command": "head -c 2000000 /dev/urandom; echo 'dump broke half way' >&2; exit $DUMP_EXIT"},
        ],
    })

    def run(*args, fail=False):
        return run_cli(*args, config=cfg, cwd=tmp_path, env={"DUMP_EXIT": "1" if fail else "0"})

    assert run("create").returncode == 0
    assert run("create").returncode == 0
    good = [b["backup_id"] for b in json.loads(run("list", "--json").stdout)["backups"]]
    stored = sorted(os.listdir(tmp_path / "backups"))

    proc = run("create", fail=True)
    assert proc.returncode == 1
    assert "dump broke half way" in proc.stderr and "status 1" in proc.stderr
    assert sorted(os.listdir(tmp_path / "backups")) == stored, "the failed backup left files"
    assert [b["backup_id"] for b in json.loads(run("list", "--json").stdout)["backups"]] == good
    status = json.loads(run("status", "--json").stdout)
    assert status["newest_backup"]["backup_id"] == good[0]
    assert "dump broke half way" in status["targets"]["local"]["last_error"]
    # keep_last: 2 still means the two good backups: the failed one pushed nothing out.
    cleanup = run("cleanup", "--json")
    assert cleanup.returncode == 0 and json.loads(cleanup.stdout)["deleted_count"] == 0
    assert sorted(os.listdir(tmp_path / "backups")) == stored
    assert run("verify", "--all").returncode == 0
