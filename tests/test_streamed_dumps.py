"""Dumps archived as they are produced: no temporary copy, parts joined on restore.

What a user checks: a dump bigger than one part (16 MiB) comes back byte for
byte, in place of the parts, also from an incremental chain and by hand with
``cat``; while it is archived, no temporary file grows anywhere (TMPDIR is
watched); a dump command that fails or hangs half way commits nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup.errors import SourceError
from eternia_backup.manager import BackupManager

# 40 MiB of deterministic, incompressible bytes: three parts of 16 MiB
DUMP = ("python3 -c 'import hashlib,sys\n"
        "for i in range(40 * 32):\n"
        "    sys.stdout.buffer.write(hashlib.shake_128(str(i).encode()).digest(32768))'")


def expected_dump() -> bytes:
    return b"".join(hashlib.shake_128(str(i).encode()).digest(32768) for i in range(40 * 32))


def make_config(tmp_path: Path, command: str = DUMP, **extra) -> Path:
    (tmp_path / "files").mkdir(exist_ok=True)
    (tmp_path / "files" / "a.txt").write_text("a\n")
    section = {"name": "app", "storage_path": str(tmp_path / "backups"),
               "sources": [{"type": "command", "name": "db", "command": command, "filename": "db.dump",
                            "timeout": 60},
                           {"type": "directory", "name": "files", "path": str(tmp_path / "files")}],
               **extra}
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    return cfg


def watch_size(directory: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        total = 0
        for dirpath, _, files in os.walk(directory):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        peak[0] = max(peak[0], total)
        time.sleep(0.005)


def test_a_dump_bigger_than_a_part_is_archived_without_a_temporary_copy_and_restores_whole(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    mgr = BackupManager.from_config(make_config(tmp_path))
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=watch_size, args=(tmp, stop, peak))
    watcher.start()
    try:
        result = mgr.create_backup()
    finally:
        stop.set()
        watcher.join()
    assert peak[0] < 1024 * 1024, f"{peak[0]} bytes were written to TMPDIR during the backup"
    names = subprocess.run(["tar", "-tf", "-"], input=_tar(result.location), capture_output=True,
                           check=True).stdout.decode().split()
    assert [n for n in names if n.startswith("db/")] == [
        "db/db.dump.eternia-part-00001", "db/db.dump.eternia-part-00002", "db/db.dump.eternia-part-00003"]
    assert mgr.verify_backup(result.backup_id).entries == len(names)
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r" / "db").iterdir()) == ["db.dump"]
    restored = (tmp_path / "r" / "db" / "db.dump").read_bytes()
    assert hashlib.sha256(restored).hexdigest() == hashlib.sha256(expected_dump()).hexdigest()
    # by hand: the parts, concatenated in name order
    out = tmp_path / "by-hand"
    out.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=_tar(result.location), check=True)
    subprocess.run("cat db/db.dump.eternia-part-* > db.dump", shell=True, cwd=out, check=True)
    assert (out / "db.dump").read_bytes() == restored


def _tar(path: str) -> bytes:
    import zstandard

    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read()


def test_a_small_dump_is_one_ordinary_member(tmp_path):
    mgr = BackupManager.from_config(make_config(tmp_path, command="printf 'small dump'"))
    result = mgr.create_backup()
    names = subprocess.run(["tar", "-tf", "-"], input=_tar(result.location), capture_output=True,
                           check=True).stdout.decode().split()
    assert "db/db.dump" in names
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    assert (tmp_path / "r" / "db" / "db.dump").read_bytes() == b"small dump"


def test_a_dump_in_parts_restores_from_an_incremental_chain(tmp_path):
    mgr = BackupManager.from_config(make_config(tmp_path, archive={"incremental": {"enabled": True}}))
    mgr.create_backup()
    (tmp_path / "files" / "b.txt").write_text("b\n")
    result = mgr.create_backup()
    assert result.manifest.kind == "incremental"
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    assert (tmp_path / "r" / "db" / "db.dump").read_bytes() == expected_dump()
    assert sorted(p.name for p in (tmp_path / "r" / "files").iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("command,message", [
    (DUMP.replace("range(40 * 32)", "range(20 * 32)") + "; echo 'lost the connection' >&2; exit 4",
     "exited with status 4: lost the connection"),
    ("head -c 40000000 /dev/zero; sleep 60", "did not finish within 2"),
])
def test_a_dump_that_fails_half_way_commits_nothing(tmp_path, command, message):
    cfg = make_config(tmp_path, command=command)
    data = yaml.safe_load(cfg.read_text())
    data["backup"]["sources"][0]["timeout"] = 2
    cfg.write_text(yaml.safe_dump(data))
    mgr = BackupManager.from_config(cfg)
    started = time.monotonic()
    with pytest.raises(SourceError, match=message):
        mgr.create_backup()
    assert time.monotonic() - started < 30
    assert mgr.list_backups() == []
    assert [p.name for p in (tmp_path / "backups").iterdir() if not p.name.startswith(".eternia")] == []


@pytest.mark.parametrize("size", [0, 1, 1000, 4096, 4097, 8191, 8192, 8193, 3 * 4096 + 5])
def test_parts_cut_at_every_boundary_come_back_whole(tmp_path, size):
    """Small parts (4 KiB) cut a stream exactly at, before and after part boundaries."""
    import io

    from eternia_backup.builtin.tar import TarArchiver
    from eternia_backup.safety import Extractor, MemberChecker
    from eternia_backup.streams import PartSplitter

    data = os.urandom(size)
    archive = io.BytesIO()
    archiver = TarArchiver()
    with archiver.writer(archive) as aw:
        PartSplitter(aw.section("db"), part_size=4096).add_stream("d.bin", io.BytesIO(data), None, mtime=1e9)
    archive.seek(0)
    staging = tmp_path / "db"
    staging.mkdir()
    reader = archiver.reader(archive)
    checker, extractor = MemberChecker(["db"], "test"), Extractor({"db": staging}, "test")
    names = []
    for member in reader:
        source, rel = checker.check(member)
        names.append(rel)
        extractor.add(source, rel, member, reader)
    extractor.finish()
    parts = -(-size // 4096) if size > 4096 else 1
    assert len(names) == parts
    assert sorted(p.name for p in staging.iterdir()) == ["d.bin"]
    assert (staging / "d.bin").read_bytes() == data
