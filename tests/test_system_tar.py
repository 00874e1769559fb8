"""Small files of a restore made by GNU tar (eternia_backup.system_tar): the same tree as the Python
extractor makes, tar started only where it pays, and a tar that fails fails the restore cleanly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from eternia_backup import RestoreError
from eternia_backup import system_tar
from eternia_backup.manager import BackupManager

pytestmark = pytest.mark.skipif(system_tar.gnu_tar() is None, reason="GNU tar is not installed")

NS = 1_700_000_000_123_456_789


def world(base: Path, *, incremental: bool = False) -> tuple[Path, Path]:
    data = base / "data"
    data.mkdir(parents=True)
    section = {"storage_path": "backups", "sources": [{"type": "directory", "name": "data", "path": "data"}]}
    if incremental:
        section["archive"] = {"incremental": {"enabled": True, "full_every": 5}}
    config = base / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    return config, data


def fill(data: Path, files: int = 400) -> None:
    """An application tree of many small files with everything a restore must get right."""
    for i in range(files):
        d = data / f"dir-{i % 7}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.json").write_bytes(b'{"n": %d}\n' % i * (i % 5))  # empty ones too
        os.chmod(d / f"f{i:04d}.json", (0o644, 0o600, 0o755, 0o444, 0o000)[i % 5])
        os.utime(d / f"f{i:04d}.json", ns=(NS + i, NS + i * 1_000_000_001))
    long_dir = data / ("long-" + "x" * 90) / ("y" * 80)
    long_dir.mkdir(parents=True)
    (long_dir / ("z" * 60 + ".txt")).write_text("a path of more than 100 bytes\n")
    (data / "naïve café ☕.txt").write_text("unicode name\n")
    (data / os.fsdecode(b"not-utf8-\xff.bin")).write_bytes(b"a name that is not UTF-8\n")
    (data / "edge-64k.bin").write_bytes(os.urandom(64 * 1024))
    (data / "over-64k.bin").write_bytes(os.urandom(64 * 1024 + 1))
    os.link(data / "dir-1" / "f0001.json", data / "hard-to-small.json")
    os.link(data / "over-64k.bin", data / "hard-to-large.bin")
    (data / "setuid-tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(data / "setuid-tool", 0o4755)
    os.symlink("dir-2/f0002.json", data / "link-to-small")
    ro = data / "read-only"
    ro.mkdir()
    for i in range(5):
        (ro / f"r{i}").write_text(f"inside a 0500 directory {i}\n")
    os.chmod(ro, 0o500)
    os.utime(ro, ns=(NS, NS))


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a user would compare: type, mode, mtime, content, hard-link groups, owner."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
            else:
                first = inodes.setdefault(st.st_ino, rel)
                with open(path, "rb") as f:
                    content = f.read()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, content,
                            first if st.st_nlink > 1 else None)
    return out


def test_many_small_files_restore_the_same_by_tar_as_by_python(tmp_path, monkeypatch, tar_processes, caplog):
    config, data = world(tmp_path)
    fill(data)
    backup_id = BackupManager.from_config(config).create_backup().backup_id
    want = snapshot(data)
    mode = want["setuid-tool"]
    want["setuid-tool"] = (mode[0], 0o755, *mode[2:])  # --to strips set-id bits, whoever makes the file

    monkeypatch.setenv("ETERNIA_BACKUP_SYSTEM_TAR", "0")
    BackupManager.from_config(config).restore_backup(backup_id, to=tmp_path / "by-python")
    assert tar_processes == []
    monkeypatch.delenv("ETERNIA_BACKUP_SYSTEM_TAR")
    caplog.clear()
    BackupManager.from_config(config).restore_backup(backup_id, to=tmp_path / "by-tar")

    assert len(tar_processes) == 1, "one tar for the one source, started after the first small files"
    assert snapshot(tmp_path / "by-tar" / "data") == want
    assert snapshot(tmp_path / "by-python" / "data") == want
    assert "setuid/setgid bits" in caplog.text and "setuid-tool" in caplog.text
    assert not list((tmp_path / "by-tar").rglob("*eternia*")), "nothing of ours is left in the tree"


def test_a_restore_of_a_few_files_starts_no_tar(tmp_path, tar_processes):
    config, data = world(tmp_path)
    for i in range(system_tar.START_AFTER):
        (data / f"{i}.txt").write_text(str(i))
    mgr = BackupManager.from_config(config)
    mgr.restore_backup(mgr.create_backup().backup_id, to=tmp_path / "out")
    assert tar_processes == []
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == sorted(
        f"{i}.txt" for i in range(system_tar.START_AFTER))


def test_headers_are_read_back_by_tarfile_as_written():
    import io
    import tarfile

    for rel, kind, link in [("a/b.txt", b"0", ""), ("x" * 150 + "/é.txt", b"0", ""),
                            ("hard", b"1", "a/b.txt"), ("hard2", b"1", "ü" * 80)]:
        size = 3 if kind == b"0" else 0
        blob = b"".join(system_tar.header_parts(rel, kind, 0o640, 12, 34, size, NS, link))
        blob += (b"hi\n" + bytes(509) if size else b"") + bytes(1024)
        member = tarfile.open(fileobj=io.BytesIO(blob)).next()
        assert (member.name, member.linkname, member.mode, member.uid, member.gid, member.size) == \
            (rel, link, 0o640, 12, 34, size)
        assert member.pax_headers["mtime"] == "1700000000.123456789"
    assert system_tar.header_parts(os.fsdecode(b"\xff"), b"0", 0o644, 0, 0, 0, NS) is None  # left to Python
    assert system_tar.header_parts("before-1970", b"0", 0o644, 0, 0, 0, -NS) is None


def fake_tar(tmp_path: Path, monkeypatch, body: str) -> None:
    """A "GNU tar" first in PATH that runs ``body`` (a shell script) when asked to extract."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "tar"
    script.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "tar (GNU tar) 1.34"; exit 0; fi\n' + body)
    script.chmod(0o755)
    (bin_dir / "gtar").symlink_to(script)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    system_tar.gnu_tar.cache_clear()


@pytest.fixture
def clear_tar_cache():
    system_tar.gnu_tar.cache_clear()
    yield
    system_tar.gnu_tar.cache_clear()


@pytest.mark.parametrize("body", [
    # reads part of the stream, then fails as a full disk would
    'head -c 100000 >/dev/null; echo "tar: dir-3/f0123.json: Cannot write: No space left on device" >&2; exit 2\n',
    # dies before reading anything
    'echo "tar: simulated crash" >&2; exit 2\n',
], ids=["disk full", "dies at once"])
def test_a_failing_tar_fails_the_restore_and_changes_nothing(tmp_path, monkeypatch, clear_tar_cache, body,
                                                             tar_processes):
    config, data = world(tmp_path)
    fill(data, files=2000)
    mgr = BackupManager.from_config(config)
    backup_id = mgr.create_backup().backup_id
    os.chmod(data / "read-only", 0o700)
    (data / "changed-since.txt").write_text("the current state, which must survive\n")
    before = snapshot(data)
    fake_tar(tmp_path, monkeypatch, body)
    beside = sorted(os.listdir(tmp_path))

    with pytest.raises(RestoreError) as info:
        BackupManager.from_config(config).restore_backup(backup_id)

    message = str(info.value)
    assert "system tar failed" in message or "stopped reading" in message
    assert "No space left on device" in message or "simulated crash" in message
    assert "ETERNIA_BACKUP_SYSTEM_TAR=0" in message or "stopped reading" in message
    assert snapshot(data) == before, "the current state is untouched"
    assert sorted(os.listdir(tmp_path)) == beside, "no staging directory is left beside it"
    assert tar_processes and all(p.proc.returncode is not None for p in tar_processes), "tar was waited for"


def test_without_gnu_tar_python_makes_every_file(tmp_path, monkeypatch, tar_processes, clear_tar_cache):
    config, data = world(tmp_path)
    fill(data)
    backup_id = BackupManager.from_config(config).create_backup().backup_id
    bin_dir = tmp_path / "bsd-bin"
    bin_dir.mkdir()
    (bin_dir / "tar").write_text('#!/bin/sh\necho "bsdtar 3.6.2 - libarchive 3.6.2"\n')
    (bin_dir / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # a tar that is not GNU tar, and no other
    BackupManager.from_config(config).restore_backup(backup_id, to=tmp_path / "out")
    assert tar_processes == []
    assert (tmp_path / "out" / "data" / "dir-3" / "f0003.json").read_bytes() == b'{"n": 3}\n' * 3


def test_an_incremental_appending_to_a_file_tar_made(tmp_path, monkeypatch, tar_processes):
    """The file an incremental appended to was made by tar in the full backup's archive: it must be
    on disk before the appended part is added to it."""
    monkeypatch.setattr(system_tar, "START_AFTER", 0)
    config, data = world(tmp_path, incremental=True)
    log_file = data / "app.log"
    log_file.write_bytes(b"line\n" * 2000)  # 10 KB: a small file, tar's
    for i in range(50):
        (data / f"s{i}.txt").write_text(str(i))
    mgr = BackupManager.from_config(config)
    mgr.create_backup()
    with open(log_file, "ab") as f:
        f.write(b"appended\n" * 100)
    second = mgr.create_backup()
    assert second.manifest.is_incremental

    mgr.restore_backup(second.backup_id, to=tmp_path / "out")

    assert (tmp_path / "out" / "data" / "app.log").read_bytes() == log_file.read_bytes()
    assert tar_processes, "tar made the full backup's small files"
