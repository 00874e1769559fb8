"""Hostile archives: restore refuses them and writes nothing, anywhere.

Each archive is built by hand with ``tarfile`` and zstandard and comes with a
matching, hand-written manifest (sha256, size, content_size and entry counts all
consistent), so only the member checks can stop it. Every hostile archive
starts with ordinary members, so a restore that got as far as the hostile one
has already written something into its staging area: the test then checks that
the staging area is gone and the destination is as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import sqlite3
import stat
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
import zstandard

from eternia_backup import IntegrityError, RestoreError
from eternia_backup.errors import UnsafeArchiveError
from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)

NAME = "eternia-backup"

# every hostile archive is refused whether its ordinary files are made by Python or by GNU tar
pytestmark = pytest.mark.usefixtures("extractor")


# -- building archives by hand -------------------------------------------------------


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def dir_member(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_700_000_000
    return info, None


def link_member(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname, info.mode, info.mtime = target, 0o777, 1_700_000_000
    return info, None


def special_member(name: str, kind: bytes, major: int = 0, minor: int = 0) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o666, 1_700_000_000
    info.devmajor, info.devminor = major, minor
    return info, None


GOOD = [
    dir_member("files"),
    file_member("files/keep-1.txt", b"ordinary member one\n"),
    dir_member("files/sub"),
    file_member("files/sub/keep-2.bin", os.urandom(300_000)),
]


def tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def plant_backup(storage: Path, members, *, sources=("files",), content_size: int | None = None,
                 raw_tar: bytes | None = None) -> tuple[Path, str]:
    """Write an archive and a consistent manifest into ``storage``; returns (archive path, backup id)."""
    storage.mkdir(parents=True, exist_ok=True)
    content = raw_tar if raw_tar is not None else tar_bytes(members)
    compressed = zstandard.ZstdCompressor().compress(content)
    now = datetime.now(timezone.utc)
    backup_id = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    archive_file = f"{NAME}-{backup_id}.tar.zst"
    counts = {s: 0 for s in sources}
    sizes = {s: 0 for s in sources}
    for info, data in members:
        top = info.name.lstrip("/").split("/", 1)[0]
        if top in counts:
            counts[top] += 1
            sizes[top] += info.size if info.isreg() else 0
    if sum(counts.values()) != len(members):  # members outside every source still count
        counts[sources[0]] += len(members) - sum(counts.values())
    manifest = {
        "format": "eternia-backup-manifest",
        "format_version": 1,
        "backup_id": backup_id,
        "name": NAME,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "finished_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "environment": "default",
        "host": socket.gethostname(),
        "framework_version": "0.1.0",
        "sources": [{"name": s, "type": "directory", "size": sizes[s], "entries": counts[s],
                     "details": {"type": "directory", "name": s}} for s in sources],
        "archive": {
            "file": archive_file, "format": "tar", "compression": "zstd", "size": len(compressed),
            "sha256": hashlib.sha256(compressed).hexdigest(),
            "content_size": len(content) if content_size is None else content_size,
        },
        "encryption": None,
    }
    (storage / archive_file).write_bytes(compressed)
    (storage / f"{NAME}-{backup_id}.manifest.json").write_text(json.dumps(manifest, indent=2))
    return storage / archive_file, backup_id


# -- the world the restore must not change -----------------------------------------------


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Type, bytes, mode and link target of everything under root (not following links)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if p in skip:
                continue
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest(), stat.S_IMODE(st.st_mode), st.st_ino)
            else:
                out[rel] = ("other", st.st_mode)
    return out


def file_fingerprint(path: str) -> tuple:
    st = os.stat(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), st.st_mode, st.st_nlink, st.st_mtime_ns, st.st_ino


class World:
    """A tmp dir with live state, a restore destination, an outside victim and storage."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(4)
        self.storage = root / "backups"
        self.state = root / "state" / "files"
        self.state.mkdir(parents=True)
        (self.state / "live.txt").write_text("live state, must survive")
        self.outside = root / "outside"
        self.outside.mkdir()
        self.victim = self.outside / "victim.txt"
        self.victim.write_text("victim: must never change")
        self.dest = root / "restore-here"
        (self.dest / "files").mkdir(parents=True)
        (self.dest / "files" / "existing.txt").write_text("what the destination held before")
        self.config = root / "eternia-backup.yaml"
        self.config.write_text(yaml.safe_dump({"backup": {
            "storage_path": "backups",
            "sources": [{"type": "directory", "name": "files", "path": "state/files"}],
        }}))
        self.etc_passwd = file_fingerprint("/etc/passwd")

    def manager(self) -> BackupManager:
        return BackupManager.from_config(self.config)

    def before(self) -> dict:
        # storage, and the state dir beside it (the host lock, state, restore journal)
        return snapshot(self.root, skip=(str(self.storage), str(self.root / ".backups.eternia")))

    def outside_paths(self) -> list[str]:
        """Paths that hostile members aim at; none of them may appear."""
        return [str(self.outside / "pwned"), str(self.root / "pwned"), f"/tmp/eternia-pwned-{self.token}",
                f"/etc/eternia-pwned-{self.token}", str(self.outside / f"pwned-{self.token}")]

    def assert_untouched(self, before: dict) -> None:
        for p in self.outside_paths():
            assert not os.path.lexists(p), f"restore wrote {p} outside the destination"
        assert self.victim.read_text() == "victim: must never change"
        assert file_fingerprint("/etc/passwd") == self.etc_passwd
        after = self.before()
        assert after == before, _diff(before, after)
        leftovers = [n for n in os.listdir(self.dest) if n.startswith(".")]
        assert leftovers == [], f"staging left behind: {leftovers}"


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"the tree changed: added {added}, removed {removed}, changed {changed}"


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


# -- the hostile cases -------------------------------------------------------------------------


def hostile_cases(w: World) -> dict[str, list]:
    t = w.token
    up_to_root = "../" * 40
    return {
        "absolute path": [file_member(str(w.outside / "pwned"), b"x")],
        "absolute /tmp path": [file_member(f"/tmp/eternia-pwned-{t}", b"x")],
        "leading ../": [file_member("../outside/pwned", b"x")],
        "source/../../x": [file_member("files/../../outside/pwned", b"x")],
        "deep ../ to /tmp": [file_member(f"files/{up_to_root}tmp/eternia-pwned-{t}", b"x")],
        "dot-dot hidden in the middle": [file_member("files/sub/./../../../pwned", b"x")],
        "symlink to /etc then a file through it": [
            link_member("files/etc", "/etc"), file_member(f"files/etc/eternia-pwned-{t}", b"x")],
        "symlink to /etc alone": [link_member("files/etc", "/etc")],
        "symlink with ../../ target": [link_member("files/up", "../../outside")],
        "symlink ../../ then a file through it": [
            link_member("files/up", "../../outside"), file_member(f"files/up/pwned-{t}", b"x")],
        "inside symlink then a file through it": [
            link_member("files/sub/here", "."), file_member("files/sub/here/through.txt", b"x")],
        "symlink chain escaping through another symlink": [
            dir_member("files/a"), link_member("files/a/up", ".."),
            link_member("files/esc", "a/up/../.."), file_member(f"files/esc/outside/pwned-{t}", b"x")],
        "symlink chain escaping, no file through it": [
            dir_member("files/a"), link_member("files/a/up", ".."), link_member("files/esc", "a/up/../..")],
        "symlink chain escaping, link listed first": [
            link_member("files/esc", "a/up/../../outside"), dir_member("files/a"), link_member("files/a/up", "..")],
        "symlink replacing a directory that holds earlier members": [
            dir_member("files/d"), file_member("files/d/x.txt", b"x"), link_member("files/d", "sub")],
        "hardlink to an absolute outside path": [link_member("files/h", str(w.victim), hard=True)],
        "hardlink with ../ to an outside file": [link_member("files/h", "../outside/victim.txt", hard=True)],
        "hardlink to /etc/passwd": [link_member("files/passwd", "/etc/passwd", hard=True)],
        "hardlink to a later member": [
            link_member("files/h", "files/later.txt", hard=True), file_member("files/later.txt", b"x")],
        "character device": [special_member("files/null", tarfile.CHRTYPE, 1, 3)],
        "block device": [special_member("files/sda", tarfile.BLKTYPE, 8, 0)],
        "FIFO": [special_member("files/fifo", tarfile.FIFOTYPE)],
        "duplicate member names": [file_member("files/keep-1.txt", b"second copy, different bytes\n")],
        "member outside any source": [file_member("other-source/x.txt", b"x")],
        "bare source member as a file": [file_member("files", b"replaces the source root")],
    }


CASE_NAMES = [
    "absolute path", "absolute /tmp path", "leading ../", "source/../../x", "deep ../ to /tmp",
    "dot-dot hidden in the middle", "symlink to /etc then a file through it", "symlink to /etc alone",
    "symlink with ../../ target", "symlink ../../ then a file through it",
    "inside symlink then a file through it", "symlink chain escaping through another symlink",
    "symlink chain escaping, no file through it", "symlink chain escaping, link listed first",
    "symlink replacing a directory that holds earlier members",
    "hardlink to an absolute outside path", "hardlink with ../ to an outside file", "hardlink to /etc/passwd",
    "hardlink to a later member", "character device", "block device", "FIFO",
    "duplicate member names", "member outside any source", "bare source member as a file",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_archive_is_refused_and_nothing_changes(world, case):
    hostile = hostile_cases(world)[case]
    archive, backup_id = plant_backup(world.storage, GOOD + hostile)
    mgr = world.manager()
    before = world.before()

    with pytest.raises(IntegrityError) as info:
        mgr.restore_backup(str(archive), to=world.dest)
    assert backup_id in str(info.value)
    world.assert_untouched(before)

    # In place too (the configured source path), and by backup id.
    with pytest.raises(IntegrityError):
        mgr.restore_backup(backup_id)
    world.assert_untouched(before)

    # verify says what restore would refuse: a backup that verifies must restore.
    with pytest.raises(IntegrityError) as info:
        mgr.verify_backup(backup_id)
    assert backup_id in str(info.value) and "refused" in str(info.value)


# -- set-id bits: archived, verified ok, stripped on restore unless kept on purpose -----------

SETID = [file_member("files/suid", b"#!/bin/sh\n", mode=0o4755), file_member("files/sgid", b"#!/bin/sh\n", mode=0o2755)]


def test_setid_archive_verifies_and_restores_with_the_bits_stripped_and_one_warning(world, caplog):
    archive, backup_id = plant_backup(world.storage, GOOD + SETID)
    mgr = world.manager()
    assert mgr.verify_backup(backup_id).ok

    caplog.clear()
    mgr.restore_backup(backup_id, to=world.dest, keep_setid=True)  # --to: never kept
    out = world.dest / "files"
    assert stat.S_IMODE((out / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sgid").stat().st_mode) == 0o755
    assert (out / "keep-1.txt").read_bytes() == b"ordinary member one\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "setuid/setgid" in r.getMessage()]
    assert len(warnings) == 1 and "2 file(s)" in warnings[0] and "--keep-setid" in warnings[0]

    mgr.restore_backup(backup_id)  # in place, not asked: stripped too
    assert stat.S_IMODE((world.state / "suid").stat().st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="keeping set-id bits needs root")
def test_setid_bits_are_kept_in_place_as_root_with_keep_setid(world):
    archive, backup_id = plant_backup(world.storage, GOOD + SETID)
    world.manager().restore_backup(backup_id, keep_setid=True)
    assert stat.S_IMODE((world.state / "suid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((world.state / "sgid").stat().st_mode) == 0o2755


def test_setid_file_made_by_create_restores_through_the_cli(world):
    """The issue's reproduction: create, list, verify, restore (in place and --to) all succeed."""
    (world.state / "bin").mkdir()
    tool = world.state / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(tool, 0o4755)
    assert run_cli("create", config=world.config).returncode == 0
    verify = run_cli("verify", config=world.config)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    r = run_cli("restore", "latest", "--to", str(world.dest / "cli"), config=world.config)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("setuid/setgid") == 1
    assert stat.S_IMODE((world.dest / "cli" / "files" / "bin" / "tool").stat().st_mode) == 0o755
    r = run_cli("restore", "latest", "--yes", "--keep-setid", config=world.config)
    assert r.returncode == 0, r.stderr
    expected = 0o4755 if os.geteuid() == 0 else 0o755
    assert stat.S_IMODE(tool.stat().st_mode) == expected


def _dummy_world() -> World:
    w = World.__new__(World)
    w.token, w.root = "t", Path("/nonexistent")
    w.outside, w.victim = w.root / "outside", w.root / "outside" / "victim.txt"
    return w


def test_every_hostile_case_is_parametrized():
    assert sorted(CASE_NAMES) == sorted(hostile_cases(_dummy_world()))


# -- more hostile archives ---------------------------------------------------------------------


def test_archive_expanding_beyond_its_manifest_is_refused(world):
    members = GOOD + [file_member("files/bomb.bin", b"\0" * 5_000_000)]
    content = tar_bytes(members)
    archive, backup_id = plant_backup(world.storage, members, content_size=len(content) // 10)
    mgr = world.manager()
    before = world.before()
    with pytest.raises(UnsafeArchiveError) as info:
        mgr.restore_backup(str(archive), to=world.dest)
    assert "expands beyond" in str(info.value) and backup_id in str(info.value)
    world.assert_untouched(before)
    with pytest.raises(IntegrityError, match="expands beyond"):
        mgr.verify_backup(backup_id)


def _pax_override(path_in_header: str, real_path: str) -> bytes:
    """A member whose ustar name looks harmless while its pax header says otherwise."""
    info, data = file_member(path_in_header, b"smuggled")
    info.pax_headers = {"path": real_path}
    return tar_bytes(GOOD + [(info, data)])


@pytest.mark.parametrize("real_path", ["../outside/pwned", "/tmp/eternia-pwned-{token}",
                                       "files/../../outside/pwned"])
def test_pax_path_override_is_refused(world, real_path):
    real_path = real_path.format(token=world.token)
    raw = _pax_override("files/harmless.txt", real_path)
    info, data = file_member(real_path, b"smuggled")
    archive, backup_id = plant_backup(world.storage, GOOD + [(info, data)], raw_tar=raw)
    before = world.before()
    with pytest.raises(UnsafeArchiveError):
        world.manager().restore_backup(str(archive), to=world.dest)
    world.assert_untouched(before)


def test_gnu_long_name_with_dot_dot_is_refused(world):
    long_name = "files/" + "d" * 150 + "/../../../outside/pwned"
    members = GOOD + [file_member(long_name, b"x")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    archive, _ = plant_backup(world.storage, members, raw_tar=buf.getvalue())
    before = world.before()
    with pytest.raises(UnsafeArchiveError, match="contains '..'"):
        world.manager().restore_backup(str(archive), to=world.dest)
    world.assert_untouched(before)


def test_hostile_archive_through_the_cli(world):
    archive, backup_id = plant_backup(world.storage, GOOD + [link_member("files/etc", "/etc"),
                                                             file_member(f"files/etc/eternia-pwned-{world.token}", b"x")])
    before = world.before()
    proc = run_cli("restore", str(archive), "--to", str(world.dest), "--yes", config=world.config)
    assert proc.returncode == 1
    assert "refused" in proc.stderr and backup_id in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    world.assert_untouched(before)


# -- links already in the destination -----------------------------------------------------------


def _benign(world: World) -> tuple[Path, str]:
    return plant_backup(world.storage, [
        dir_member("files"), file_member("files/victim.txt", b"restored content\n"),
        dir_member("files/sub"), file_member("files/sub/inner.txt", b"inner\n"),
    ])


def test_symlink_inside_the_destination_is_replaced_not_followed(world):
    """duplicacy#691: a link in the target named like a member must not be written through."""
    dest = world.dest / "files"
    (dest / "victim.txt").unlink(missing_ok=True)
    os.symlink(world.victim, dest / "victim.txt")
    os.symlink(world.outside, dest / "sub")
    archive, _ = _benign(world)
    world.manager().restore_backup(str(archive), to=world.dest)

    assert world.victim.read_text() == "victim: must never change"
    assert sorted(os.listdir(world.outside)) == ["victim.txt"]
    assert not (dest / "victim.txt").is_symlink() and (dest / "victim.txt").read_bytes() == b"restored content\n"
    assert not (dest / "sub").is_symlink() and (dest / "sub" / "inner.txt").read_bytes() == b"inner\n"
    assert sorted(os.listdir(world.dest)) == ["files"]


def test_destination_that_is_a_symlink_to_outside_is_refused(world):
    """The source's own directory in the destination is a link leading outside."""
    shutil.rmtree(world.dest / "files")
    os.symlink(world.outside, world.dest / "files")
    archive, _ = _benign(world)
    before = world.before()
    with pytest.raises(RestoreError, match="symlink"):
        world.manager().restore_backup(str(archive), to=world.dest)
    world.assert_untouched(before)
    assert sorted(os.listdir(world.outside)) == ["victim.txt"]


def test_configured_source_path_that_is_a_symlink_is_refused_in_place(world):
    shutil.rmtree(world.state)
    os.symlink(world.outside, world.state)
    archive, _ = _benign(world)
    before = world.before()
    with pytest.raises(RestoreError, match="symlink"):
        world.manager().restore_backup(str(archive))
    with pytest.raises(RestoreError, match="symlink"):  # a dry run says what the restore would say
        world.manager().restore_backup(str(archive), dry_run=True)
    world.assert_untouched(before)


def test_symlinked_parent_of_destination_is_not_a_way_out(world):
    """--to through a link: everything lands where the link points, nothing beside it."""
    os.symlink(world.outside, world.root / "via-link")
    archive, _ = _benign(world)
    world.manager().restore_backup(str(archive), to=world.root / "via-link")
    assert world.victim.read_text() == "victim: must never change"
    assert sorted(os.listdir(world.outside)) == ["files", "victim.txt"]
    assert (world.outside / "files" / "victim.txt").read_bytes() == b"restored content\n"


# -- a sneaky link in a real tree -----------------------------------------------------------------


def test_directory_source_skips_links_escaping_through_other_links(world):
    """A tree holding ``a/up -> ..`` and ``esc -> a/up/../..``: esc is outside on disk.

    The backup must leave it out (with a warning) rather than store a link that
    restore refuses, which would make the whole backup unrestorable.
    """
    (world.state / "a").mkdir()
    os.symlink("..", world.state / "a" / "up")
    os.symlink("a/up/../..", world.state / "esc")
    os.symlink("a/up/live.txt", world.state / "fine")
    mgr = world.manager()
    result = mgr.create_backup()
    assert mgr.verify_backup(result.backup_id).ok
    mgr.restore_backup(result.backup_id, to=world.dest)
    restored = world.dest / "files"
    assert not os.path.lexists(restored / "esc")
    assert os.readlink(restored / "a" / "up") == ".."
    assert (restored / "fine").read_text() == "live state, must survive"
    for p in restored.rglob("*"):
        if p.is_symlink():
            real = os.path.realpath(p)
            assert real == str(restored) or real.startswith(str(restored) + os.sep), f"{p} leads to {real}"


# -- a normal restore swaps atomically -------------------------------------------------------------


def test_restore_over_an_existing_directory_swaps_and_leaves_no_staging(world):
    (world.state / "sub").mkdir()
    (world.state / "sub" / "deep.txt").write_text("deep")
    mgr = world.manager()
    result = mgr.create_backup()
    expected = snapshot(world.state)

    (world.state / "live.txt").write_text("changed after the backup")
    (world.state / "added.txt").write_text("not in the backup")
    old_inode = world.state.stat().st_ino
    held = os.open(world.state, os.O_RDONLY)  # a process still inside the old tree
    try:
        mgr.restore_backup(result.backup_id)
        # The old tree was swapped away whole (not rewritten file by file) ...
        assert world.state.stat().st_ino != old_inode
        assert os.fstat(held).st_ino == old_inode
    finally:
        os.close(held)
    after = snapshot(world.state)
    assert {k: v[:3] for k, v in after.items()} == {k: v[:3] for k, v in expected.items()}
    assert not (world.state / "added.txt").exists()
    hidden = [n for n in os.listdir(world.state.parent) if n.startswith(".")]
    assert hidden == [], f"staging or replaced trees left behind: {hidden}"

    # Into an existing --to destination as well.
    mgr.restore_backup(result.backup_id, to=world.dest)
    assert not (world.dest / "files" / "existing.txt").exists()
    assert (world.dest / "files" / "sub" / "deep.txt").read_text() == "deep"
    assert [n for n in os.listdir(world.dest) if n.startswith(".")] == []


def test_failed_restore_leaves_existing_state_and_no_staging(world):
    """A hostile member late in a big archive: staging had content, and it is gone afterwards."""
    big = [file_member(f"files/bulk/{i:03d}.bin", os.urandom(20_000)) for i in range(50)]
    archive, _ = plant_backup(world.storage, GOOD + [dir_member("files/bulk")] + big
                              + [special_member("files/zz-device", tarfile.CHRTYPE, 1, 3)])
    before_state = snapshot(world.state)
    before = world.before()
    with pytest.raises(UnsafeArchiveError, match="device"):
        world.manager().restore_backup(str(archive))
    assert snapshot(world.state) == before_state
    world.assert_untouched(before)
    assert [n for n in os.listdir(world.state.parent) if n.startswith(".")] == []


@pytest.mark.parametrize("planted", ["database file", "source directory"])
def test_sqlite_restore_does_not_write_through_a_symlink_in_the_destination(world, planted):
    """A link already in the --to destination, where the database goes, leads to another database."""
    db = world.root / "state" / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (x TEXT)")
    conn.execute("INSERT INTO items VALUES ('from the backup')")
    conn.commit()
    conn.close()
    victim_db = world.outside / "app.db"
    conn = sqlite3.connect(victim_db)
    conn.execute("CREATE TABLE precious (y TEXT)")
    conn.execute("INSERT INTO precious VALUES ('must survive')")
    conn.commit()
    conn.close()
    victim_before = file_fingerprint(str(victim_db))
    world.config.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups", "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]}}))
    mgr = world.manager()
    result = mgr.create_backup()

    if planted == "database file":
        (world.dest / "db").mkdir()
        os.symlink(victim_db, world.dest / "db" / "app.db")
    else:
        os.symlink(world.outside, world.dest / "db")
    before = world.before()
    with pytest.raises(RestoreError, match="symlink"):
        mgr.restore_backup(result.backup_id, to=world.dest)
    assert file_fingerprint(str(victim_db)) == victim_before
    assert sorted(os.listdir(world.outside)) == ["app.db", "victim.txt"]
    world.assert_untouched(before)


@pytest.mark.parametrize("name", [
    "src/a", "src", "src/a/b.txt", "src/.hidden", "src/./a", "src/../x", "./src/a", "src//a", "src/a/",
    "/src/a", "C:/x", "src/a\\b", "src/a\x00b", "..", ".", "", "src/..", "src/a/..", "src/a.", "src/a..b",
    ".eternia/x", "src/ünï", "s:rc/a",
])
def test_the_plain_name_shortcut_agrees_with_split_member(name):
    """MemberChecker skips split_member for names already in normal form: only for names it would
    give back unchanged."""
    from eternia_backup.safety import _plain_name, split_member

    if _plain_name(name):
        source, _, rel = name.partition("/")
        assert split_member(name) == (source, rel)
