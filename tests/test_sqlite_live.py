"""Issue 9, items 5 and 8: live SQLite databases, with a real writer process.

The writer commits one row and one counter increment per transaction, so every
consistent copy satisfies ``count(items) == counter.n``. Each restored copy, from
the ``sqlite`` source and from a ``directory`` source with ``sqlite: snapshot``,
must pass ``integrity_check`` and that invariant, in WAL and rollback mode. A
plain directory source warns about the database at ``config check`` and ``create``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eternia_backup.manager import BackupManager

from conftest import ROOT, run_cli_in_process as run_cli  # the CLI in this process (see conftest)

sys.path.insert(0, str(ROOT / "benchmarks"))
from sqlite_writer import invariant_problem, make_database  # noqa: E402

WRITER = ROOT / "benchmarks" / "sqlite_writer.py"


class Writer:
    """The application: a process committing every few milliseconds until stopped."""

    def __init__(self, db: Path, out: Path):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(out), "--interval", "0.003"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> dict:
        self.proc.terminate()
        assert self.proc.wait(30) == 0, "the writer failed (database is locked?)"
        return json.loads(self.out.read_text())


@pytest.fixture(params=["wal", "delete"])
def live_db(request, tmp_path):
    db = tmp_path / "app" / "live.db"
    db.parent.mkdir()
    make_database(db, journal_mode=request.param, size_mib=24)
    writer = Writer(db, tmp_path / "writer.json")
    yield db
    stats = writer.stop()
    assert stats["commits"] > 10


def _config(tmp_path: Path, sources: list[dict]) -> Path:
    import yaml

    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": {"storage_path": str(tmp_path / "backups"), "sources": sources}}))
    return cfg


@pytest.mark.slow
def test_sqlite_source_copies_are_consistent_under_a_writer(tmp_path, live_db):
    mgr = BackupManager.from_config(_config(tmp_path, [{"type": "sqlite", "name": "db", "path": str(live_db)}]))
    for i in range(3):
        result = mgr.create_backup()
        out = tmp_path / f"out{i}"
        mgr.restore_backup(result.backup_id, to=out)
        assert invariant_problem(out / "db" / "live.db") is None


@pytest.mark.slow
def test_directory_source_takes_databases_through_the_backup_api(tmp_path, live_db):
    (live_db.parent / "notes.txt").write_text("a plain file")
    mgr = BackupManager.from_config(_config(tmp_path, [
        {"type": "directory", "name": "app", "path": str(live_db.parent), "sqlite": "snapshot"}]))
    assert mgr.config_notes() == []
    for i in range(3):
        result = mgr.create_backup()
        out = tmp_path / f"out{i}"
        mgr.restore_backup(result.backup_id, to=out)
        restored = out / "app"
        assert sorted(p.name for p in restored.iterdir()) == ["live.db", "notes.txt"]  # no -wal, -journal, -shm
        assert invariant_problem(restored / "live.db") is None


def test_directory_source_warns_about_a_database(tmp_path):
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    make_database(app / "sub" / "shop.sqlite", journal_mode="wal", size_mib=0.1)
    (app / "not-a-db.sqlite").write_bytes(b"SQLite format 2\0" + b"x" * 100)
    cfg = _config(tmp_path, [{"type": "directory", "name": "app", "path": str(app)}])
    proc = run_cli("config", "check", config=cfg)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stdout
    assert "sub/shop.sqlite" in warnings[0] and "type: sqlite" in warnings[0] and "sqlite: snapshot" in warnings[0]
    proc = run_cli("create", config=cfg)
    assert proc.returncode == 0, proc.stderr
    assert "sub/shop.sqlite" in proc.stderr and "type: sqlite" in proc.stderr
    assert "not-a-db" not in proc.stderr
