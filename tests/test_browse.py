"""Browsing a backup and restoring part of it: `ls`, `restore --include/--exclude`, `restore --stdout`.

What a user checks: `ls` shows what a restore would give (an incremental's whole
state, a dump in parts as one file), for plain, encrypted and incremental backups;
`--include` restores only what matches, `--exclude` leaves out what matches; a file
comes to stdout byte for byte, and not at all from a damaged archive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from eternia_backup.manager import BackupManager


def make_config(tmp_path: Path, **extra) -> Path:
    data = tmp_path / "data"
    (data / "uploads" / "2026").mkdir(parents=True, exist_ok=True)
    (data / "uploads" / "2026" / "a.png").write_bytes(os.urandom(5000))
    (data / "uploads" / "b.txt").write_text("bee\n")
    (data / "config.json").write_text('{"k": 1}\n')
    (data / "notes.txt").write_text("notes\n")
    os.symlink("notes.txt", data / "link")
    section = {"name": "app", "storage_path": str(tmp_path / "backups"),
               "sources": [{"type": "directory", "name": "files", "path": str(data)},
                           {"type": "command", "name": "dump", "command": "printf dumped", "filename": "d.sql"}],
               **extra}
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    return cfg


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("extra", [
    pytest.param({}, id="plain"),
    pytest.param({"encryption": {"enabled": True, "passphrase": "${BROWSE_PASS}"}}, id="encrypted",
                 marks=pytest.mark.slow),  # an scrypt per backup and per read
    pytest.param({"archive": {"incremental": {"enabled": True}}}, id="incremental")])
def test_ls_shows_what_a_restore_gives(tmp_path, cli, monkeypatch, extra):
    monkeypatch.setenv("BROWSE_PASS", "browse-passphrase-1")
    cfg = make_config(tmp_path, **extra)
    mgr = BackupManager.from_config(cfg)
    mgr.create_backup()
    (tmp_path / "data" / "notes.txt").unlink()
    (tmp_path / "data" / "new.txt").write_text("new\n")
    mgr.create_backup()
    r = cli("ls", "latest", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    rows = {e["path"]: e for e in json.loads(r.stdout)["entries"]}
    mgr.restore_backup("latest", to=tmp_path / "r")
    assert set(rows) == tree(tmp_path / "r") - {"dump"}  # a dump source's directory is made by the restore
    assert rows["files/uploads/2026/a.png"]["size"] == 5000 and rows["files/uploads/2026/a.png"]["type"] == "file"
    assert rows["files/link"]["type"] == "symlink" and rows["files/link"]["link"] == "notes.txt"
    assert "files/notes.txt" not in rows and "files/new.txt" in rows
    assert rows["dump/d.sql"]["size"] == len("dumped")
    r = cli("ls", "latest", "files/uploads", config=cfg)
    assert r.returncode == 0
    assert [line.split()[-1] for line in r.stdout.splitlines()] == [
        "files/uploads/", "files/uploads/2026/", "files/uploads/2026/a.png", "files/uploads/b.txt"]
    r = cli("ls", "latest", "files/nothing-here", config=cfg)
    assert r.returncode == 1 and "holds nothing under 'files/nothing-here'" in r.stderr


def test_restore_include_and_exclude(tmp_path, cli):
    cfg = make_config(tmp_path)
    BackupManager.from_config(cfg).create_backup()
    r = cli("restore", "latest", "--include", "files/uploads", "--exclude", "*.png", "--to", str(tmp_path / "r"),
            config=cfg)
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "r") == {"files", "files/uploads", "files/uploads/b.txt", "files/uploads/2026"}
    r = cli("restore", "latest", "--include", "*.json", "--to", str(tmp_path / "r2"), config=cfg)
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "r2") == {"files", "files/config.json"}
    assert (tmp_path / "r2" / "files" / "config.json").read_text() == '{"k": 1}\n'
    r = cli("restore", "latest", "--include", "files/uploads", config=cfg)
    assert r.returncode == 2 and "give --to DIR" in r.stderr


def test_restore_api_takes_one_string_as_one_source_or_pattern(tmp_path):
    """restore_backup(sources="files") is the source files, not the sources 'f', 'i', 'l' ...;
    likewise one include or exclude pattern."""
    from eternia_backup.errors import UsageError

    cfg = make_config(tmp_path)
    mgr = BackupManager.from_config(cfg)
    mgr.create_backup()
    result = mgr.restore_backup("latest", to=tmp_path / "r", sources="files")
    assert result.sources == ["files"] and "dump" not in tree(tmp_path / "r")
    assert (tmp_path / "r" / "files" / "notes.txt").read_text() == "notes\n"
    mgr.restore_backup("latest", to=tmp_path / "r2", sources=("dump",))  # any iterable of names
    assert tree(tmp_path / "r2") == {"dump", "dump/d.sql"}

    mgr.restore_backup("latest", to=tmp_path / "r3", include="files/uploads", exclude="*.png")
    assert tree(tmp_path / "r3") == {"files", "files/uploads", "files/uploads/b.txt", "files/uploads/2026"}

    with pytest.raises(UsageError, match="has no source 'nothing'; it has: "):
        mgr.restore_backup("latest", to=tmp_path / "r4", sources="nothing")
    with pytest.raises(UsageError, match=r"sources: expected a name or a list of names \(strings\), got 3"):
        mgr.restore_backup("latest", to=tmp_path / "r5", sources=["files", 3])


def test_restore_stdout_writes_one_file(tmp_path, cli):
    cfg = make_config(tmp_path)
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()
    r = cli("restore", "latest", "--stdout", "files/uploads/b.txt", config=cfg)
    assert r.returncode == 0 and r.stdout == "bee\n"
    r = cli("restore", "latest", "--stdout", "dump/d.sql", config=cfg)
    assert r.returncode == 0 and r.stdout == "dumped"
    r = cli("restore", "latest", "--stdout", "files/missing.txt", config=cfg)
    assert r.returncode == 1 and "has no file 'files/missing.txt'" in r.stderr and r.stdout == ""
    archive = Path(result.location)  # damaged: nothing comes out, whatever the file
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    r = cli("restore", result.backup_id, "--stdout", "files/uploads/b.txt", config=cfg)
    assert r.returncode == 1 and r.stdout == ""
    assert not list((tmp_path / "backups").glob(".eternia-stdout-*"))
