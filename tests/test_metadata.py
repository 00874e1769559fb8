"""Metadata: what tar keeps, we keep. Hardlinks, extended attributes, sparse
files, nanosecond mtimes; and GNU tar restores them from our archives by hand.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml
import zstandard

from eternia_backup.builtin.directory import DirectoryOptions, DirectorySource
from eternia_backup.builtin.tar import TarArchiver
from eternia_backup.manager import BackupManager

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
NS = 1_700_000_000_123_456_789  # an mtime with all nine fractional digits


def world(base: Path) -> tuple[Path, Path]:
    data = base / "data"
    data.mkdir(parents=True)
    config = base / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups", "sources": [{"type": "directory", "name": "data", "path": "data"}]}}))
    return config, data


def members_of(result) -> dict[str, tarfile.TarInfo]:
    """The archive's members, read with plain tarfile from the zstd stream."""
    with open(os.fspath(result), "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return {m.name: m for m in tar.getmembers()}


def plain_tar(result, dest: Path) -> Path:
    """Our archive decompressed (with the zstandard module) to a plain .tar file."""
    with open(os.fspath(result), "rb") as f, open(dest, "wb") as out:
        zstandard.ZstdDecompressor().copy_stream(f, out)
    return dest


def set_tree_mtimes(root: Path, ns: int) -> None:
    for p in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(ns, ns))


# -- hardlinks -------------------------------------------------------------------------------


def test_hardlinks_are_archived_once_and_restored_as_links(tmp_path, extractor):
    config, data = world(tmp_path)
    payload = os.urandom(2 * MIB)
    (data / "a.bin").write_bytes(payload)
    (data / "sub").mkdir()
    os.link(data / "a.bin", data / "b.bin")
    os.link(data / "a.bin", data / "sub" / "c.bin")
    (data / "single.txt").write_text("one link\n")
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup()

    members = members_of(result)
    assert members["data/a.bin"].isreg() and members["data/a.bin"].size == 2 * MIB
    assert members["data/b.bin"].islnk() and members["data/b.bin"].linkname == "data/a.bin"
    assert members["data/sub/c.bin"].islnk() and members["data/sub/c.bin"].linkname == "data/a.bin"
    assert result.manifest.sources[0].size < 2 * MIB + 100  # the data is stored once
    assert mgr.verify_backup(result.backup_id).ok

    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    out = tmp_path / "out" / "data"
    inodes = {(out / n).stat().st_ino for n in ("a.bin", "b.bin", "sub/c.bin")}
    assert len(inodes) == 1 and (out / "a.bin").stat().st_nlink == 3
    assert (out / "sub" / "c.bin").read_bytes() == payload
    assert (out / "single.txt").stat().st_nlink == 1


def test_hardlink_detection_keeps_no_state_for_single_link_files(tmp_path):
    """Memory stays flat: only files with st_nlink > 1 enter the (dev, ino) table, and the
    writer keeps no list of the members it wrote (tarfile's TarFile.members did)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2000):
        (data / f"f{i:04d}").write_bytes(b"x")
    os.link(data / "f0000", data / "linked")
    source = DirectorySource("data", DirectoryOptions(path=str(data)), tmp_path)
    with TarArchiver().writer(io.BytesIO()) as w:
        section = w.section("data")
        source.backup(section)
        assert len(section.links) == 1
        # what the writer holds: the small writes gathered and not yet written, nothing per member
        assert sum(map(len, w._parts)) < 256 * 1024 and set(vars(w)) == {"out", "offset", "_parts", "_gathered"}


# -- extended attributes -----------------------------------------------------------------------


def test_extended_attributes_round_trip_as_schily_xattr_records(tmp_path, extractor):
    config, data = world(tmp_path)
    f = data / "tagged.txt"
    f.write_text("with attributes\n")
    os.setxattr(f, "user.origin", b"upload")
    os.setxattr(f, "user.binary", b"\xff\x00\xfe raw")
    (data / "dir").mkdir()
    os.setxattr(data / "dir", "user.kind", b"folder")
    if os.geteuid() == 0:
        os.setxattr(f, "trusted.owner", b"root-only")
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup()

    pax = members_of(result)["data/tagged.txt"].pax_headers
    assert pax["SCHILY.xattr.user.origin"] == "upload"
    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    out = tmp_path / "out" / "data"
    assert os.getxattr(out / "tagged.txt", "user.origin") == b"upload"
    assert os.getxattr(out / "tagged.txt", "user.binary") == b"\xff\x00\xfe raw"
    assert os.getxattr(out / "dir", "user.kind") == b"folder"
    if os.geteuid() == 0:
        assert os.getxattr(out / "tagged.txt", "trusted.owner") == b"root-only"


def test_an_attribute_the_filesystem_refuses_is_a_warning_not_a_failure(tmp_path, caplog):
    """ext4 keeps a file's attributes in one 4 KiB block: a 60 KiB value cannot be set there."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_restore_safety import dir_member, file_member, plant_backup

    info, body = file_member("files/big-attr.txt", b"data\n")
    info.pax_headers = {"SCHILY.xattr.user.big": "v" * 60_000, "SCHILY.xattr.user.small": "ok"}
    storage = tmp_path / "backups"
    archive, backup_id = plant_backup(storage, [dir_member("files"), (info, body)])
    config = tmp_path / "eternia-backup.yaml"
    (tmp_path / "files").mkdir()
    config.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups", "sources": [{"type": "directory", "name": "files", "path": "files"}]}}))

    BackupManager.from_config(config).restore_backup(backup_id, to=tmp_path / "out")

    out = tmp_path / "out" / "files" / "big-attr.txt"
    assert out.read_bytes() == b"data\n" and os.getxattr(out, "user.small") == b"ok"
    try:
        os.getxattr(out, "user.big")
    except OSError:  # refused here: the restore went on and said so
        assert any("could not be restored" in r.getMessage() and "user.big" in r.getMessage()
                   for r in caplog.records if r.levelname == "WARNING")


# -- nanosecond mtimes -------------------------------------------------------------------------


def test_mtimes_keep_nanoseconds_for_files_dirs_and_symlinks(tmp_path, extractor):
    config, data = world(tmp_path)
    (data / "f.txt").write_text("x")
    (data / "d").mkdir()
    (data / "d" / "g.txt").write_text("y")
    os.symlink("f.txt", data / "link")
    set_tree_mtimes(data, NS)
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup()

    assert members_of(result)["data/f.txt"].pax_headers["mtime"] == "1700000000.123456789"
    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    out = tmp_path / "out" / "data"
    for rel in ("", "f.txt", "d", "d/g.txt", "link"):
        assert os.lstat(out / rel).st_mtime_ns == NS, rel


# -- sparse files ------------------------------------------------------------------------------


def make_sparse(path: Path, size: int, data_at: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data_at.items():
            f.seek(offset)
            f.write(chunk)


def data_regions(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each data region, by SEEK_DATA/SEEK_HOLE."""
    regions, pos = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return regions


def read_regions(path: Path, regions) -> bytes:
    with open(path, "rb") as f:
        out = b""
        for start, end in regions:
            f.seek(start)
            out += f.read(end - start)
        return out


def check_sparse_round_trip(tmp_path: Path, size: int) -> dict:
    config, data = world(tmp_path)
    sparse = data / "disk.img"
    pieces = {0: b"head" * 1024, size // 2: os.urandom(4 * KIB)}  # 8 KiB of data
    make_sparse(sparse, size, pieces)
    assert sparse.stat().st_blocks * 512 <= 64 * KIB
    mgr = BackupManager.from_config(config)

    started = time.monotonic()
    result = mgr.create_backup()
    archive_seconds = time.monotonic() - started
    started = time.monotonic()
    assert mgr.verify_backup(result.backup_id).ok
    verify_seconds = time.monotonic() - started
    started = time.monotonic()
    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    restore_seconds = time.monotonic() - started

    out = tmp_path / "out" / "data" / "disk.img"
    st = out.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 <= 64 * KIB, f"restored fully allocated: {st.st_blocks * 512} bytes on disk"
    regions = data_regions(out)
    assert read_regions(out, regions) == read_regions(sparse, data_regions(sparse))
    with open(out, "rb") as f:
        assert f.read(4096) == pieces[0][:4096]
        f.seek(size // 2)
        assert f.read(4 * KIB) == pieces[size // 2]
    return {"archive_seconds": archive_seconds, "verify_seconds": verify_seconds,
            "restore_seconds": restore_seconds, "restored_disk_bytes": st.st_blocks * 512,
            "archive_bytes": result.size}


def test_sparse_file_keeps_its_holes(tmp_path):
    check_sparse_round_trip(tmp_path, 64 * MIB)


@pytest.mark.slow
def test_sparse_2gib_file_is_archived_quickly_and_restored_sparse(tmp_path, capsys):
    figures = check_sparse_round_trip(tmp_path, 2 * GIB)
    with capsys.disabled():
        print(f"\n2 GiB sparse file (8 KiB data): archived in {figures['archive_seconds']:.2f} s, "
              f"archive {figures['archive_bytes']} bytes; verified in {figures['verify_seconds']:.2f} s; "
              f"restored in {figures['restore_seconds']:.2f} s using {figures['restored_disk_bytes']} bytes on disk")
    assert figures["archive_bytes"] < 1 * MIB


# -- GNU tar by hand -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
def test_gnu_tar_by_hand_restores_hardlinks_xattrs_and_nanosecond_mtimes(tmp_path):
    config, data = world(tmp_path)
    (data / "a.txt").write_text("shared\n")
    os.link(data / "a.txt", data / "b.txt")
    os.setxattr(data / "a.txt", "user.origin", b"upload")
    make_sparse(data / "disk.img", 64 * MIB, {MIB: b"data" * 1024})
    set_tree_mtimes(data, NS)
    result = BackupManager.from_config(config).create_backup()
    archive = plain_tar(result, tmp_path / "by-hand.tar")
    out = tmp_path / "by-hand"
    out.mkdir()

    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xpf", str(archive), "-C", str(out)],
                   check=True, capture_output=True)

    a, b = out / "data" / "a.txt", out / "data" / "b.txt"
    assert a.stat().st_ino == b.stat().st_ino and a.read_text() == "shared\n"
    assert os.getxattr(a, "user.origin") == b"upload"
    assert a.stat().st_mtime_ns == NS
    assert (out / "data").stat().st_mtime_ns == NS
    disk = out / "data" / "disk.img"  # GNU sparse 1.0, as tar -S writes it
    assert disk.stat().st_size == 64 * MIB and disk.stat().st_blocks * 512 <= 64 * KIB
    with open(disk, "rb") as f:
        f.seek(MIB)
        assert f.read(4096) == b"data" * 1024


# -- permission bits whatever the umask or default ACL ---------------------------------------------

MODES = {"rw-r--r--": 0o644, "private": 0o600, "exec": 0o755, "read-only": 0o444, "none": 0o000,
         "group-write": 0o664, "all": 0o777, "sticky": 0o1755, "setuid": 0o4755}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o777])
def test_restored_files_get_their_archived_modes_whatever_the_umask(tmp_path, extractor, umask):
    """Files are created with their final mode when the kernel keeps it (no chmod); a umask that
    would drop bits must not show in the restored tree (setuid is stripped, as always)."""
    config, data = world(tmp_path)
    for name, mode in MODES.items():
        (data / name).write_bytes(name.encode())
        os.chmod(data / name, mode)
    (data / "sub").mkdir()
    (data / "sub" / "deep").write_bytes(b"deep")
    os.chmod(data / "sub" / "deep", 0o640)
    result = BackupManager.from_config(config).create_backup()
    old = os.umask(umask)
    try:
        BackupManager.from_config(config).restore_backup(result.backup_id, to=tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out" / "data"
    for name, mode in MODES.items():
        want = mode & ~0o6000  # --to never keeps set-id bits
        assert (out / name).stat().st_mode & 0o7777 == want, name
        assert (out / name).read_bytes() == name.encode()
    assert (out / "sub" / "deep").stat().st_mode & 0o7777 == 0o640
    assert not [p for p in out.rglob("*eternia-mode-probe*")], "the probe file is removed"


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl is not installed")
def test_restored_files_get_their_archived_modes_under_a_default_acl(tmp_path, extractor):
    """A default ACL on the destination's parent masks new files instead of the umask."""
    config, data = world(tmp_path)
    for name, mode in MODES.items():
        (data / name).write_bytes(name.encode())
        os.chmod(data / name, mode)
    result = BackupManager.from_config(config).create_backup()
    parent = tmp_path / "acl"
    parent.mkdir()
    proc = subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::r--,o::---,m::r--", str(parent)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"this filesystem takes no default ACL: {proc.stderr.decode().strip()}")
    BackupManager.from_config(config).restore_backup(result.backup_id, to=parent / "out")
    out = parent / "out" / "data"
    for name, mode in MODES.items():
        assert (out / name).stat().st_mode & 0o7777 == mode & ~0o6000, name
