"""Corruption is found before it hurts.

A backup is damaged on disk in each way storage damages files (a flipped byte at
the start, middle or end; truncation; a lost manifest or archive; a manifest
that does not parse or does not match). Then, as a user would: ``verify``
names the backup and the problem (API and CLI, exit 1); ``restore`` refuses
before changing anything (the live state is byte-identical afterwards); ``list``
shows the damage it can see from a listing and never lists an archive that has
no manifest; the older, intact backup still verifies and restores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from eternia_backup import EterniaBackupError, IntegrityError
from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns, st.st_ino)
            else:
                out[rel] = ("other", st.st_mode, os.readlink(p) if p.is_symlink() else None)
    return out


class Setup:
    def __init__(self, app: Path, config: Path):
        self.app, self.config = app, config
        self.state = app / "state"
        self.storage = app / "backups"
        mgr = self.manager()
        self.good = mgr.create_backup()
        (self.state / "files" / "users" / "user-0000.json").write_text('{"changed": "between backups"}')
        self.victim = mgr.create_backup()
        # The live state moves on, so a restore that went ahead would change it.
        (self.state / "files" / "users" / "user-0001.json").write_text('{"changed": "after the backups"}')
        (self.state / "files" / "new-after-backup.txt").write_text("new")
        conn = sqlite3.connect(self.state / "app.db")
        conn.execute("DELETE FROM events WHERE id > 10")
        conn.commit()
        conn.close()

    def manager(self) -> BackupManager:
        return BackupManager.from_config(self.config)

    @property
    def archive(self) -> Path:
        return self.storage / self.victim.manifest.archive.file

    @property
    def manifest(self) -> Path:
        return self.storage / self.victim.manifest.filename


@pytest.fixture
def setup(app, write_config) -> Setup:
    return Setup(app, write_config())


def flip(offset_of):
    def damage(s: Setup) -> None:
        data = bytearray(s.archive.read_bytes())
        data[offset_of(len(data))] ^= 0x01
        s.archive.write_bytes(bytes(data))
    return damage


def truncate(s: Setup) -> None:
    data = s.archive.read_bytes()
    s.archive.write_bytes(data[: len(data) // 2])


def drop_manifest(s: Setup) -> None:
    s.manifest.unlink()


def drop_archive(s: Setup) -> None:
    s.archive.unlink()


def garble_manifest(s: Setup) -> None:
    s.manifest.write_bytes(s.manifest.read_bytes()[:150])  # cut off mid-JSON


def wrong_sha(s: Setup) -> None:
    data = json.loads(s.manifest.read_text())
    data["archive"]["sha256"] = hashlib.sha256(b"some other archive").hexdigest()
    s.manifest.write_text(json.dumps(data, indent=2))


# name: (damage, the words naming the problem, does a listing see it)
CASES = {
    "flipped byte at start": (flip(lambda n: 0), "sha256 does not match", False),
    "flipped byte in middle": (flip(lambda n: n // 2), "sha256 does not match", False),
    "flipped byte at end": (flip(lambda n: n - 1), "sha256 does not match", False),
    "truncated archive": (truncate, "bytes, the manifest says", True),
    "manifest without archive": (drop_archive, "missing", True),
    "manifest does not parse": (garble_manifest, "does not parse", True),
    "manifest sha256 does not match": (wrong_sha, "sha256 does not match", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_backup_is_found_and_never_restored(setup, case):
    damage, problem, listing_sees_it = CASES[case]
    s = setup
    victim_id = s.victim.backup_id
    damage(s)
    state_before = snapshot(s.state)
    mgr = s.manager()

    # verify: IntegrityError naming the backup and the problem.
    with pytest.raises(IntegrityError) as info:
        mgr.verify_backup(victim_id)
    assert victim_id in str(info.value) and problem in str(info.value)

    proc = run_cli("verify", victim_id, config=s.config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert victim_id in out and problem in out and "Traceback" not in out

    # restore refuses before changing anything, in place and elsewhere.
    with pytest.raises(IntegrityError) as info:
        mgr.restore_backup(victim_id)
    assert victim_id in str(info.value)
    with pytest.raises(IntegrityError):
        mgr.restore_backup(victim_id, to=s.app / "elsewhere")
    assert not (s.app / "elsewhere").exists()
    proc = run_cli("restore", victim_id, "--yes", config=s.config)
    assert proc.returncode == 1 and victim_id in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(s.state) == state_before
    assert [n for n in os.listdir(s.state) if n.startswith(".")] == []

    # list: still there, marked damaged when a listing can tell.
    entries = {e.backup_id: e for e in mgr.list_backups()}
    assert set(entries) == {s.good.backup_id, victim_id}
    assert entries[s.good.backup_id].state == "ok"
    listed = json.loads(run_cli("list", "--json", config=s.config).stdout)
    states = {b["backup_id"]: b["state"] for b in listed["backups"]}
    assert states[s.good.backup_id] == "ok"
    if listing_sees_it:
        assert entries[victim_id].state != "ok"
        assert states[victim_id] != "ok"
        # "latest" is the newest backup: damaged, so an error names it (tests/test_latest.py)
        with pytest.raises(IntegrityError, match=victim_id):
            mgr.find_backup("latest")
        assert mgr.find_backup("latest", allow_older=True).backup_id == s.good.backup_id

    # verify --all names the damaged one and fails; the good one still verifies.
    proc = run_cli("verify", "--all", config=s.config)
    assert proc.returncode == 1
    assert f"DAMAGED  {victim_id}" in proc.stdout and f"ok       {s.good.backup_id}" in proc.stdout

    # The older backup is untouched and restores.
    assert mgr.verify_backup(s.good.backup_id).ok
    mgr.restore_backup(s.good.backup_id, to=s.app / "from-good")
    assert (s.app / "from-good" / "files" / "users" / "user-0000.json").read_text() != '{"changed": "between backups"}'


def test_archive_without_manifest_is_not_a_backup(setup):
    s = setup
    victim_id = s.victim.backup_id
    drop_manifest(s)
    state_before = snapshot(s.state)
    mgr = s.manager()

    assert [e.backup_id for e in mgr.list_backups()] == [s.good.backup_id]
    listed = json.loads(run_cli("list", "--json", config=s.config).stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [s.good.backup_id]
    assert mgr.find_backup("latest").backup_id == s.good.backup_id

    # By id: not known. By path: a clear error saying the manifest is missing.
    with pytest.raises(EterniaBackupError, match="no backup"):
        mgr.restore_backup(victim_id)
    with pytest.raises(IntegrityError) as info:
        mgr.restore_backup(str(s.archive))
    message = str(info.value)
    assert victim_id in message and "no manifest" in message
    with pytest.raises(IntegrityError, match="no manifest"):
        mgr.verify_backup(str(s.archive))

    for args in (["restore", str(s.archive), "--yes"], ["restore", str(s.archive), "--to", str(s.app / "x"), "--yes"],
                 ["verify", str(s.archive)]):
        proc = run_cli(*args, config=s.config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "no manifest" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (s.app / "x").exists()
    assert snapshot(s.state) == state_before


def test_restore_by_path_of_a_damaged_archive_refuses(setup):
    s = setup
    flip(lambda n: n // 3)(s)
    state_before = snapshot(s.state)
    for ref in (str(s.archive), str(s.manifest)):
        proc = run_cli("restore", ref, "--yes", config=s.config)
        assert proc.returncode == 1 and "sha256 does not match" in proc.stderr, proc.stderr
        assert s.victim.backup_id in proc.stderr
    assert snapshot(s.state) == state_before


def test_dry_run_of_a_damaged_backup_fails_too(setup):
    """A dry run verifies: it must not report a damaged backup as restorable."""
    s = setup
    flip(lambda n: n - 1)(s)
    proc = run_cli("restore", s.victim.backup_id, "--dry-run", config=s.config)
    assert proc.returncode == 1 and "sha256 does not match" in proc.stderr


def test_latest_is_the_newest_even_within_one_second(setup):
    """Two backups made in the same second: the one made last is listed first and is ``latest``."""
    s = setup
    src = json.loads(s.manifest.read_text())
    made = []
    # Same second; the backup made later gets the smaller random part of its id.
    for hexpart, micro in (("ffffff", "100000"), ("000000", "900000")):
        backup_id = f"20200101T000000Z-{hexpart}"
        data = json.loads(json.dumps(src))
        data["backup_id"] = backup_id
        data["created_at"] = data["finished_at"] = f"2020-01-01T00:00:00.{micro}Z"
        data["archive"]["file"] = f"eternia-backup-{backup_id}.tar.zst"
        shutil.copyfile(s.archive, s.storage / data["archive"]["file"])
        (s.storage / f"eternia-backup-{backup_id}.manifest.json").write_text(json.dumps(data))
        made.append(backup_id)
    for f in (s.archive, s.manifest, s.storage / s.good.manifest.archive.file, s.storage / s.good.manifest.filename):
        f.unlink()
    mgr = s.manager()
    assert [e.backup_id for e in mgr.list_backups()] == [made[1], made[0]]
    assert mgr.find_backup("latest").backup_id == made[1]
    listed = json.loads(run_cli("list", "--json", config=s.config).stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [made[1], made[0]]
