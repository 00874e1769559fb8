"""Incremental backups: chains of full and incremental backups on real trees.

What a user checks: every backup of a chain restores to exactly the tree it was
made of (files added, changed, removed, renamed, turned into directories and
back, symlinks changed), across compressions and with encryption; an unchanged
tree gives a tiny backup that reads no file; the by-hand procedure of
docs/format.md gives the same tree; a missing or damaged link is an error naming
it and nothing changes; chains on S3; retention keeps the bases of kept backups.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup.errors import IntegrityError
from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli

COMPRESSIONS = ["zstd", "gzip", "xz", "none"]


# -- helpers ---------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` as a user compares it: kind, bytes or link target, mode, mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def write(path: Path, data: bytes | str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)


def make_initial(root: Path) -> None:
    write(root / "keep.txt", "unchanged for ever\n", 0o640)
    write(root / "change.txt", "version 1\n")
    write(root / "same-size.txt", "AAAA\n")
    write(root / "rename-me.txt", "moving\n")
    write(root / "becomes-dir", "a file first\n")
    write(root / "dir-becomes-file" / "child.txt", "child\n")
    write(root / "dir-becomes-file" / "deeper" / "x.txt", "x\n")
    write(root / "subtree" / "a" / "b.txt", "b\n")
    write(root / "subtree" / "c.txt", "c\n")
    write(root / "données" / "été ✓.txt", "unicode\n")
    write(root / "big.bin", os.urandom(300_000))
    write(root / "script.sh", "#!/bin/sh\n", 0o755)
    (root / "empty").mkdir()
    os.symlink("keep.txt", root / "link")
    os.link(root / "keep.txt", root / "hardlink-to-keep")
    write(root / "logs" / "app.log", log_lines(0, 30_000))  # ~1.2 MB: big enough to be stored as appends
    write(root / "logs" / "shared.log", log_lines(0, 30_000))
    os.link(root / "logs" / "shared.log", root / "logs" / "shared-link.log")


def log_lines(start: int, count: int) -> bytes:
    return b"".join(b"%08d %s request served\n" % (i, os.urandom(8).hex().encode()) for i in range(start, start + count))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def step_changes(root: Path) -> None:
    write(root / "change.txt", "version 2, longer\n")
    st = (root / "same-size.txt").stat()
    write(root / "same-size.txt", "BBBB\n")  # same size, and the old mtime put back: only ctime tells
    os.utime(root / "same-size.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    write(root / "added" / "new.txt", "new\n")
    with open(os.path.join(os.fsencode(root), b"not-utf8-\xff.txt"), "wb") as f:  # a name that is no UTF-8
        f.write(b"bytes\n")
    os.rename(root / "rename-me.txt", root / "renamed.txt")
    (root / "script.sh").chmod(0o700)
    append(root / "logs" / "app.log", log_lines(30_000, 2_000))  # only grew: stored as what was appended
    append(root / "logs" / "shared.log", log_lines(30_000, 10))  # hard-linked: archived whole


def step_types(root: Path) -> None:
    (root / "becomes-dir").unlink()
    write(root / "becomes-dir" / "inside.txt", "now a directory\n")
    shutil.rmtree(root / "dir-becomes-file")
    write(root / "dir-becomes-file", "now a file\n")
    (root / "link").unlink()
    os.symlink("renamed.txt", root / "link")
    shutil.rmtree(root / "subtree")
    with open(root / "big.bin", "ab") as f:  # a small file that grows: archived whole
        f.write(os.urandom(50_000))
    append(root / "logs" / "app.log", log_lines(32_000, 1_000))  # a second appended part


def step_back(root: Path) -> None:
    os.unlink(os.path.join(os.fsencode(root), b"not-utf8-\xff.txt"))
    shutil.rmtree(root / "becomes-dir")
    write(root / "becomes-dir", "a file again\n")
    write(root / "subtree" / "c.txt", "c is back, different\n")  # removed, then added again
    (root / "hardlink-to-keep").unlink()
    with open(root / "logs" / "app.log", "r+b") as f:  # rewritten inside, then grown: archived whole
        f.seek(100)
        f.write(b"X")
    append(root / "logs" / "app.log", log_lines(33_000, 10))


def step_none(root: Path) -> None:
    pass


STEPS = [step_changes, step_types, step_none, step_back]


def config(base: Path, *, compression: str = "zstd", encryption: dict | None = None, full_every=None,
           targets: list | None = None, retention: dict | None = None) -> Path:
    section = {
        "name": "app",
        "sources": [{"type": "directory", "name": "files", "path": str(base / "data")}],
        "archive": {"compression": compression, "incremental": {"enabled": True}},
        "retention_days": 0,
    }
    if full_every is not None:
        section["archive"]["incremental"]["full_every"] = full_every
    if targets is None:
        section["storage_path"] = str(base / "backups")
    else:
        section["targets"] = targets
        section["state_dir"] = str(base / "state")
    if encryption:
        section["encryption"] = encryption
    if retention:
        section.pop("retention_days")
        section["retention"] = retention
    path = base / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}, allow_unicode=True))
    return path


def chain_of_backups(base: Path, mgr: BackupManager, steps=STEPS) -> list[tuple[str, dict]]:
    """A full backup, then one per step: [(backup id, the tree it was made of)]."""
    root = base / "data"
    made = []
    result = mgr.create_backup()
    made.append((result.backup_id, snapshot(root)))
    for step in steps:
        time.sleep(0.01)  # distinct mtimes
        step(root)
        result = mgr.create_backup()
        made.append((result.backup_id, snapshot(root)))
    return made


def manifest_of(mgr: BackupManager, backup_id: str):
    return next(e for e in mgr.list_backups() if e.backup_id == backup_id).manifest


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_backup_of_a_chain_restores_to_its_own_tree(tmp_path, compression):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path, compression=compression))
    made = chain_of_backups(tmp_path, mgr)
    kinds = [manifest_of(mgr, i).kind for i, _ in made]
    assert kinds == ["full"] + ["incremental"] * len(STEPS)
    assert manifest_of(mgr, made[-1][0]).chain == tuple(i for i, _ in made[:-1])
    for n, (backup_id, tree) in enumerate(made):
        out = tmp_path / f"restored-{n}"
        mgr.restore_backup(backup_id, to=out)
        assert snapshot(out / "files") == tree, f"backup {n} ({backup_id})"


@pytest.mark.slow  # passphrase mode costs an scrypt per backup and per restore
def test_an_encrypted_chain_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_PASSPHRASE", "correct horse battery staple")
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path, encryption={"enabled": True,
                                                                  "passphrase": "${BACKUP_PASSPHRASE}"}))
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    assert manifest_of(mgr, made[-1][0]).kind == "incremental"
    index = (tmp_path / "backups").glob("*.files.jsonl.zst.age")
    assert len(list(index)) == 3  # the file index is encrypted like the archive
    for n, (backup_id, tree) in enumerate(made):
        mgr.restore_backup(backup_id, to=tmp_path / f"r{n}")
        assert snapshot(tmp_path / f"r{n}" / "files") == tree
    raw = b"".join(p.read_bytes() for p in (tmp_path / "backups").iterdir() if not p.name.endswith(".json"))
    assert b"rename-me" not in raw and b"renamed" not in raw  # no path in clear beside the manifests
    manifests = "".join(p.read_text() for p in (tmp_path / "backups").glob("*.manifest.json"))
    assert "rename-me" not in manifests  # the removed paths are only inside the encrypted archive


def test_a_host_with_only_the_public_key_makes_incrementals(tmp_path, cli):
    """The backup host holds only the recipient: the stored index cannot be decrypted there, so the
    next incremental reads the private unencrypted copy kept in the state directory."""
    key = tmp_path / "key.txt"
    assert cli("keygen", "--output", str(key)).returncode == 0
    recipient = next(line.split(": ", 1)[1] for line in key.read_text().splitlines() if "public key" in line)
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path, encryption={"enabled": True, "recipients": [recipient]}))
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    assert [manifest_of(mgr, i).kind for i, _ in made] == ["full", "incremental", "incremental"]
    kept = mgr.plain_index_path
    assert kept.is_file() and (kept.stat().st_mode & 0o777) == 0o600
    assert (kept.parent.stat().st_mode & 0o777) == 0o700
    # the restore needs the identity, as for any encrypted backup
    restorer = BackupManager.from_config(config(tmp_path, encryption={
        "enabled": True, "recipients": [recipient], "identity_file": str(key)}))
    for n, (backup_id, tree) in enumerate(made):
        restorer.restore_backup(backup_id, to=tmp_path / f"r{n}")
        assert snapshot(tmp_path / f"r{n}" / "files") == tree


def test_in_place_restore_of_an_incremental_brings_back_that_moment(tmp_path):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path))
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    write(tmp_path / "data" / "later.txt", "made after the backups")
    mgr.restore_backup(made[1][0], confirm=lambda changes: True)
    assert snapshot(tmp_path / "data") == made[1][1]


def test_an_unchanged_tree_gives_a_tiny_backup_that_reads_no_file(tmp_path):
    root = tmp_path / "data"
    for i in range(50):
        write(root / f"d{i % 5}" / f"f{i}.bin", os.urandom(20_000))
    mgr = BackupManager.from_config(config(tmp_path))
    full = mgr.create_backup()
    again = mgr.create_backup()
    assert again.manifest.kind == "incremental" and again.warning_count == 0
    increment = again.manifest.sources[0].increment
    assert (increment["mode"], increment["changed"], increment["unchanged"], increment["removed"]) == \
        ("changes", 6, 50, 0)  # the root and five directories are always archived; no file
    assert again.size < full.size / 100


def test_removed_paths_are_listed_in_the_archive_and_the_manifest(tmp_path):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path))
    mgr.create_backup()
    step_changes(tmp_path / "data")
    result = mgr.create_backup()
    increment = result.manifest.sources[0].increment
    assert increment["removed"] == 1 and increment["removed_paths"] == ["rename-me.txt"]
    listed = subprocess.run(["tar", "-xOf", "-", ".eternia/removed"], input=_decompressed(result.location),
                            capture_output=True, check=True).stdout
    assert listed.split(b"\0") == [b"files/rename-me.txt", b""]


def _decompressed(path: str) -> bytes:
    import zstandard

    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read()


# -- the by-hand procedure of docs/format.md ----------------------------------------------------

BY_HAND = r"""
set -eu
mkdir -p "$OUT" && cd "$OUT"
for archive in $CHAIN; do
  # delete what the backup removed since its parent, then extract it over the tree
  zstd -dc "$archive" | tar -xOf - .eternia/removed 2>/dev/null | xargs -0 -r rm -rf -- || true
  zstd -dc "$archive" | tar --exclude=.eternia -xf -
  # a file that only grew: put its new bytes after the size it had, with their time and mode
  find . -type f -name '*.eternia-append-*' -print0 | while IFS= read -r -d '' part; do
    file=${part%.eternia-append-*}
    truncate -s "${part##*.eternia-append-}" "$file" && cat "$part" >> "$file"
    touch -r "$part" "$file" && chmod --reference="$part" "$file" && rm "$part"
  done
done
"""


@pytest.mark.skipif(not shutil.which("zstd") or not shutil.which("tar"), reason="needs the zstd and tar tools")
def test_the_documented_shell_loop_restores_an_incremental_by_hand(tmp_path):
    doc = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    loop = "\n".join(BY_HAND.strip().splitlines()[2:])
    assert loop in doc, "the loop tested here is the one docs/format.md shows"
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path))
    made = chain_of_backups(tmp_path, mgr)
    last = manifest_of(mgr, made[-1][0])
    chain = [manifest_of(mgr, i).archive.file for i in last.chain] + [last.archive.file]
    out = tmp_path / "by-hand"
    subprocess.run(["bash", "-c", BY_HAND], check=True, cwd=tmp_path / "backups",
                   env={**os.environ, "OUT": str(out), "CHAIN": " ".join(str(tmp_path / "backups" / a) for a in chain)})
    ours = tmp_path / "ours"
    mgr.restore_backup(made[-1][0], to=ours)
    assert snapshot(out / "files") == snapshot(ours / "files") == made[-1][1]


# -- when to make a full backup -------------------------------------------------------------------


def test_full_every_and_create_full(tmp_path):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path, full_every=2))
    kinds = []
    for _ in range(4):
        kinds.append(mgr.create_backup().manifest.kind)
    assert kinds == ["full", "incremental", "incremental", "full"]
    assert mgr.create_backup(full=True).manifest.kind == "full"
    r = run_cli("create", "--full", "--json", config=tmp_path / "eternia-backup.yaml")
    code, out, err = r.returncode, r.stdout, r.stderr
    assert code == 0
    assert manifest_of(mgr, json.loads(out)["backup_id"]).kind == "full"


def test_full_every_as_a_duration(tmp_path, monkeypatch):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path, full_every="1h"))
    assert mgr.create_backup().manifest.kind == "full"
    assert mgr.create_backup().manifest.kind == "incremental"
    import eternia_backup.manager as manager_mod
    from datetime import datetime, timedelta, timezone

    later = datetime.now(timezone.utc) + timedelta(hours=2)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(manager_mod, "datetime", Clock)
    assert mgr.create_backup().manifest.kind == "full"


@pytest.mark.parametrize("value,expected", [(0, "got 0"), ("soon", "got 'soon'"), (True, "got True")])
def test_a_bad_full_every_is_a_clear_config_error(tmp_path, value, expected):
    make_initial(tmp_path / "data")
    cfg = config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["backup"]["archive"]["incremental"]["full_every"] = value
    cfg.write_text(yaml.safe_dump(data))
    r = run_cli("config", "check", config=cfg)
    code, out, err = r.returncode, r.stdout, r.stderr
    assert code == 2 and expected in err
    assert "backup.archive.incremental.full_every: expected a number of backups >= 1, or a duration such as 7d" in err


def test_a_changed_source_path_makes_that_source_whole_again(tmp_path):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path))
    mgr.create_backup()
    shutil.copytree(tmp_path / "data", tmp_path / "data2", symlinks=True)
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "data"), str(tmp_path / "data2")))
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()
    assert result.manifest.kind == "incremental"
    assert result.manifest.sources[0].increment["mode"] == "whole"
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    assert snapshot(tmp_path / "r" / "files") == snapshot(tmp_path / "data2")


def test_dump_sources_are_archived_whole_in_every_backup(tmp_path):
    import sqlite3

    make_initial(tmp_path / "data")
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as c:
        c.execute("create table t (x)")
        c.execute("insert into t values (1)")
    cfg = config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["backup"]["sources"].append({"type": "sqlite", "name": "db", "path": str(db)})
    cfg.write_text(yaml.safe_dump(data))
    mgr = BackupManager.from_config(cfg)
    mgr.create_backup()
    result = mgr.create_backup()
    records = {s.name: s for s in result.manifest.sources}
    assert records["db"].increment["mode"] == "whole" and records["db"].entries >= 1
    with sqlite3.connect(db) as c:
        c.execute("insert into t values (2)")
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    restored = next((tmp_path / "r" / "db").iterdir())
    with sqlite3.connect(restored) as c:
        assert c.execute("select x from t").fetchall() == [(1,)]


# -- broken chains ----------------------------------------------------------------------------------


def _chain(tmp_path):
    make_initial(tmp_path / "data")
    mgr = BackupManager.from_config(config(tmp_path))
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    return mgr, made


def test_a_missing_base_makes_the_chain_unrestorable_and_is_named(tmp_path, cli):
    mgr, made = _chain(tmp_path)
    base = manifest_of(mgr, made[1][0])
    (tmp_path / "backups" / base.archive.file).unlink()
    before = snapshot(tmp_path / "data")
    entries = {e.backup_id: e for e in mgr.list_backups()}
    assert not entries[made[2][0]].ok
    assert f"base backup {made[1][0]} is damaged" in entries[made[2][0]].copies[0].problem
    with pytest.raises(IntegrityError, match=made[1][0]):
        mgr.restore_backup(made[2][0], confirm=lambda c: True)
    assert snapshot(tmp_path / "data") == before
    r = cli("list", config=tmp_path / "eternia-backup.yaml")
    code, out, err = r.returncode, r.stdout, r.stderr
    line = next(line for line in out.splitlines() if line.startswith(made[2][0]))
    assert "damaged" in line and f"base backup {made[1][0]} is damaged" in line
    # the next backup cannot build on a broken chain: it is full
    assert mgr.create_backup().manifest.kind == "full"


def test_a_damaged_base_archive_fails_the_restore_before_anything_changes(tmp_path):
    mgr, made = _chain(tmp_path)
    full = manifest_of(mgr, made[0][0])
    path = tmp_path / "backups" / full.archive.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path / "data")
    with pytest.raises(IntegrityError, match="sha256|corrupt|damaged"):
        mgr.restore_backup(made[2][0], confirm=lambda c: True)
    assert snapshot(tmp_path / "data") == before
    report = mgr.verify_report(made[2][0])
    assert not report.ok and made[0][0] in report.problem


def test_no_incremental_builds_on_a_chain_that_reading_found_damaged(tmp_path):
    """A flipped byte keeps sizes: the listing calls the chain intact, but once verify (or a restore, or
    cleanup) read it, the next backup is a full one instead of one more link nobody can restore."""
    mgr, made = _chain(tmp_path)
    full = manifest_of(mgr, made[0][0])
    path = tmp_path / "backups" / full.archive.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert all(e.ok for e in mgr.list_backups())  # invisible to a listing
    assert not mgr.verify_report(made[2][0]).ok
    assert mgr.create_backup().manifest.kind == "full"
    path.write_bytes(bytes(data[: len(data) // 2]) + bytes([data[len(data) // 2] ^ 0xFF]) + bytes(data[len(data) // 2 + 1:]))
    assert mgr.verify_report(made[0][0]).ok  # repaired (a copy put back): recorded intact again
    assert made[0][0] not in mgr.state.damaged_backups()


def test_a_damaged_file_index_is_named(tmp_path):
    mgr, made = _chain(tmp_path)
    last = manifest_of(mgr, made[2][0])
    path = tmp_path / "backups" / last.files_index.file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path / "data")
    with pytest.raises(IntegrityError, match="file index"):
        mgr.restore_backup(made[2][0], confirm=lambda c: True)
    assert snapshot(tmp_path / "data") == before
    assert mgr.create_backup().manifest.kind == "full"  # not built on an index that does not check


def test_a_lost_index_damages_only_what_needs_it(tmp_path):
    """A full backup restores without its index, an incremental needs only its own: losing a base's
    index costs nothing but the next backup's base (it is then a full one)."""
    mgr, made = _chain(tmp_path)
    (tmp_path / "backups" / manifest_of(mgr, made[0][0]).files_index.file).unlink()
    (tmp_path / "backups" / manifest_of(mgr, made[1][0]).files_index.file).unlink()
    entries = {e.backup_id: e for e in mgr.list_backups()}
    assert entries[made[0][0]].ok and entries[made[2][0]].ok
    assert not entries[made[1][0]].ok and "file index" in entries[made[1][0]].copies[0].problem
    for n in (0, 2):
        mgr.restore_backup(made[n][0], to=tmp_path / f"r{n}")
        assert snapshot(tmp_path / f"r{n}" / "files") == made[n][1]
    assert mgr.verify_report(made[2][0]).ok
    full = mgr.verify_report(made[0][0])
    assert full.ok and "file index" in full.note
    (tmp_path / "backups" / manifest_of(mgr, made[2][0]).files_index.file).unlink()
    assert mgr.create_backup().manifest.kind == "full"


def test_verify_checks_the_chain_and_verify_all_reads_each_archive_once(tmp_path, cli):
    mgr, made = _chain(tmp_path)
    report = mgr.verify_report(made[2][0])
    assert report.ok and "chain of 2 base backup(s)" in report.note
    r = cli("verify", "--all", "--json", config=tmp_path / "eternia-backup.yaml")
    code, out, err = r.returncode, r.stdout, r.stderr
    assert code == 0
    reports = json.loads(out)["backups"]
    assert sorted(r["backup_id"] for r in reports) == sorted(i for i, _ in made)


def test_download_of_an_incremental_brings_its_whole_chain(tmp_path, cli):
    mgr, made = _chain(tmp_path)
    r = cli("download", made[2][0], "--to", str(tmp_path / "dl"), config=tmp_path / "eternia-backup.yaml")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert len(names) == 9 and all(any(i in n for i, _ in made) for n in names)  # 3 backups x 3 files
    restored = tmp_path / "from-download"
    manifest = tmp_path / "dl" / manifest_of(mgr, made[2][0]).filename
    r = cli("restore", str(manifest), "--to", str(restored), config=tmp_path / "eternia-backup.yaml")
    assert r.returncode == 0, r.stderr
    assert snapshot(restored / "files") == made[2][1]


# -- retention -----------------------------------------------------------------------------------------


def test_retention_keeps_the_chain_of_a_kept_backup(tmp_path, cli):
    make_initial(tmp_path / "data")
    cfg = config(tmp_path, retention={"keep_last": 1})
    mgr = BackupManager.from_config(cfg)
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    result = mgr.cleanup(dry_run=True)
    kept = result.targets[0].kept
    assert sorted(kept) == sorted(i for i, _ in made) and result.deleted_count == 0
    assert kept[made[0][0]] == [f"base of {made[2][0]}"]
    r = cli("cleanup", "--dry-run", config=cfg)
    code, out = r.returncode, r.stdout
    assert code == 0
    assert f"kept {made[0][0]} on local only as a base" in out
    r = cli("list", "--json", config=cfg)
    code, out, err = r.returncode, r.stdout, r.stderr
    flags = {b["backup_id"]: b["kept_only_as_base"] for b in json.loads(out)["backups"]}
    assert flags == {made[0][0]: True, made[1][0]: True, made[2][0]: False}
    # a new full backup ends the old chain: cleanup may delete all of it
    mgr.create_backup(full=True)
    result = mgr.cleanup()
    assert sorted(result.targets[0].deleted) == sorted(i for i, _ in made)
    assert sorted(p.name.split(".", 1)[1] for p in (tmp_path / "backups").iterdir()) == \
        ["files.jsonl.zst", "manifest.json", "tar.zst"]  # the index went with its backup


# -- S3 ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_chain_on_s3_restores_from_s3_alone(tmp_path, s3_env, s3_bucket):
    make_initial(tmp_path / "data")
    targets = [{"name": "local", "url": str(tmp_path / "backups")},
               {"name": "cloud", "url": f"s3://{s3_bucket}/inc"}]
    mgr = BackupManager.from_config(config(tmp_path, targets=targets))
    made = chain_of_backups(tmp_path, mgr, STEPS[:2])
    assert manifest_of(mgr, made[-1][0]).kind == "incremental"
    for p in (tmp_path / "backups").iterdir():  # the local copies are gone
        p.unlink()
    for n, (backup_id, tree) in enumerate(made):
        mgr.restore_backup(backup_id, to=tmp_path / f"r{n}")
        assert snapshot(tmp_path / f"r{n}" / "files") == tree
    # with the local copies gone, the next backup is full (its chain would be incomplete there)
    assert mgr.create_backup().manifest.kind == "full"


# -- the plugin contract -------------------------------------------------------------------------------


def _unordered_plugin():
    """A third-party source that says it supports increments but adds entries out of path order."""
    import io

    from eternia_backup import hookimpl
    from eternia_backup.api import DirectorySwapPlan, Source

    class UnorderedSource(Source):
        type_name = "test-unordered"
        supports_increments = True

        def backup(self, writer):
            for name in ("b.txt", "a.txt"):
                writer.add_stream(name, io.BytesIO(b"x"), 1, mtime=time.time())

        def restore_plan(self, destination):
            return DirectorySwapPlan(destination, f"source {self.name!r}")

    class Plugin:
        @hookimpl
        def eternia_register_sources(self, register):
            register(UnorderedSource)

    return Plugin()


def test_a_source_that_adds_entries_out_of_order_fails_clearly_and_commits_nothing(tmp_path):
    from eternia_backup.config import load_config
    from eternia_backup.errors import SourceError
    from eternia_backup.plugins import get_plugin_manager

    cfg = config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["backup"]["sources"] = [{"type": "test-unordered", "name": "odd"}]
    cfg.write_text(yaml.safe_dump(data))
    mgr = BackupManager(load_config(cfg), plugin_manager=get_plugin_manager(extra_plugins=(_unordered_plugin(),)))
    with pytest.raises(SourceError, match="added 'a.txt' out of path order"):
        mgr.create_backup()
    assert mgr.list_backups() == []
    assert not (tmp_path / "backups").exists() or list((tmp_path / "backups").iterdir()) == []


# -- files that only grew (logs) --------------------------------------------------------------------


def _members(archive: str) -> list[str]:
    return subprocess.run(["tar", "-tf", "-"], input=_decompressed(archive), capture_output=True,
                          check=True).stdout.decode().splitlines()


def test_a_file_that_only_grew_is_stored_as_what_was_appended(tmp_path):
    root = tmp_path / "data"
    log = root / "app.log"
    write(log, log_lines(0, 100_000))  # ~4 MB
    write(root / "note.txt", "a small file\n")
    mgr = BackupManager.from_config(config(tmp_path))
    full = mgr.create_backup()
    versions = [(full.backup_id, log.read_bytes(), log.stat().st_mtime_ns)]
    for n in range(3):
        before = log.stat().st_size
        time.sleep(0.01)
        append(log, log_lines(100_000 + 1000 * n, 1000))  # ~40 KB more
        result = mgr.create_backup()
        increment = result.manifest.sources[0].increment
        assert (increment["changed"], increment["appended"]) == (2, 1)  # the root directory, and the log
        assert result.size < full.size / 20  # the new lines only, not the whole log again
        assert f"files/app.log.eternia-append-{before}" in _members(result.location)
        versions.append((result.backup_id, log.read_bytes(), log.stat().st_mtime_ns))

    for n, (backup_id, data, mtime_ns) in enumerate(versions):
        mgr.restore_backup(backup_id, to=tmp_path / f"r{n}")
        restored = tmp_path / f"r{n}" / "files"
        assert (restored / "app.log").read_bytes() == data, f"backup {n}"
        assert (restored / "app.log").stat().st_mtime_ns == mtime_ns
        assert sorted(p.name for p in restored.iterdir()) == ["app.log", "note.txt"]

    last_id, last_data, _ = versions[-1]
    [row] = mgr.list_members(last_id, "files/app.log")
    assert (row["path"], row["size"]) == ("files/app.log", len(last_data))
    out = tmp_path / "stdout.bin"
    with open(out, "wb") as f:
        assert mgr.read_file(last_id, "files/app.log", f) == len(last_data)
    assert out.read_bytes() == last_data
    mgr.restore_backup(last_id, to=tmp_path / "only-logs", include=["*.log"])
    assert [p.name for p in (tmp_path / "only-logs" / "files").iterdir()] == ["app.log"]
    assert (tmp_path / "only-logs" / "files" / "app.log").read_bytes() == last_data

    # rotated by truncation (copytruncate), then longer than before: not an append of the old bytes
    with open(log, "wb") as f:
        f.write(log_lines(500_000, 110_000))
    result = mgr.create_backup()
    assert result.manifest.sources[0].increment["appended"] == 0
    mgr.restore_backup(result.backup_id, to=tmp_path / "rotated")
    assert (tmp_path / "rotated" / "files" / "app.log").read_bytes() == log.read_bytes()


def test_an_appended_part_without_its_file_is_refused(tmp_path):
    """A restore never appends to the wrong bytes: the file must be there, exactly as long as the offset."""
    import io

    from eternia_backup.builtin.tar import TarArchiver
    from eternia_backup.errors import UnsafeArchiveError
    from eternia_backup.safety import Extractor, MemberChecker

    for existing in (None, b"x" * 9, b"x" * 10):
        archive = io.BytesIO()
        with TarArchiver().writer(archive) as aw:
            aw.section("files").add_stream("a.log.eternia-append-10", io.BytesIO(b"appended\n"), 9, mtime=1e9)
        archive.seek(0)
        staging = tmp_path / f"s{len(existing or b'')}"
        staging.mkdir()
        if existing is not None:
            (staging / "a.log").write_bytes(existing)
        reader = TarArchiver().reader(archive)
        checker, extractor = MemberChecker(["files"], "test"), Extractor({"files": staging}, "test")
        member = next(iter(reader))
        source, rel = checker.check(member)
        if existing == b"x" * 10:
            extractor.add(source, rel, member, reader)
            assert (staging / "a.log").read_bytes() == b"x" * 10 + b"appended\n"
        else:
            with pytest.raises(UnsafeArchiveError, match="appends to a.log at byte 10"):
                extractor.add(source, rel, member, reader)
            assert (staging / "a.log").exists() == (existing is not None)
