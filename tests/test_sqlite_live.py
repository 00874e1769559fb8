"""Issue 9, items 5 and 8: live SQLite databases, with a real writer process.

The writer commits one row and one counter increment per transaction, so every
consistent copy satisfies ``count(items) == counter.n``. Each restored copy, from
the ``sqlite`` source and from a ``directory`` source with ``sqlite: snapshot``,
must pass ``integrity_check`` and that invariant, in WAL and rollback mode. A
plain directory source warns about the database at ``config check`` and ``create``.
"""

from __future__ import annotations

import json
import os
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


# -- rollback-journal mode: the copy finished by compare-and-patch under one read lock ----------------

CHANGE = {
    # more rows than the file had: it grows past what was mapped before the lock
    "grow": "BEGIN; INSERT INTO items(payload) SELECT randomblob(4000) FROM items LIMIT 700; "
            "UPDATE counter SET n = (SELECT count(*) FROM items); COMMIT;",
    # most rows deleted and the file vacuumed: it shrinks below what was mapped
    "shrink": "BEGIN; DELETE FROM items WHERE id % 8 != 0; UPDATE counter SET n = (SELECT count(*) FROM items); "
              "COMMIT; VACUUM;",
    # a new page size: every page differs
    "page-size": "PRAGMA page_size=16384; VACUUM;",
}


def _change_in_another_process(db: Path, script: str) -> None:
    code = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.executescript(sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(db), script], check=True, timeout=60)


class _ChangesBeforeLocking:
    """The source connection, but another process changes the database just before the read lock is taken."""

    def __init__(self, conn, db: Path, script: str):
        self.conn, self.db, self.script = conn, db, script

    def execute(self, sql, *args):
        if sql == "BEGIN" and self.script:
            _change_in_another_process(self.db, self.script)
            self.script = None
        return self.conn.execute(sql, *args)


@pytest.mark.parametrize("change", sorted(CHANGE))
def test_compare_and_patch_follows_growth_shrink_and_page_size(tmp_path, change):
    """The locked pass makes a stale copy equal to the file, whose size changed after it was mapped."""
    import os

    from eternia_backup.builtin import sqlite as sq

    db = tmp_path / "app.db"
    make_database(db, journal_mode="delete", size_mib=6)
    copy = tmp_path / "copy.db"
    conn = sq._connect(db, mode="rw")
    src_fd = os.open(db, os.O_RDONLY)
    dst_fd = os.open(copy, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert sq._pass_unlocked(src_fd, dst_fd) == db.stat().st_size  # the first pass copies everything
        _change_in_another_process(db, "BEGIN; UPDATE items SET payload = randomblob(4000) WHERE id % 50 = 0; "
                                       "COMMIT;")  # the copy is now stale in places
        before = db.stat().st_size
        sq._pass_locked(_ChangesBeforeLocking(conn, db, CHANGE[change]), src_fd, dst_fd)
    finally:
        os.close(dst_fd)
        os.close(src_fd)
        conn.close()
    after = db.stat().st_size
    assert (after > before) if change == "grow" else (after < before) if change == "shrink" else True
    assert copy.read_bytes() == db.read_bytes()
    assert invariant_problem(copy) is None


def test_a_hot_journal_is_rolled_back_before_the_locked_pass(tmp_path):
    """A writer died mid-transaction with pages already in the file: the copy holds the database without them."""
    from eternia_backup.builtin import sqlite as sq

    db = tmp_path / "app.db"
    make_database(db, journal_mode="delete", size_mib=2)
    rows = sqlite3_count(db)
    crash = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('PRAGMA cache_size=10'); c.execute('BEGIN'); "
             "c.execute('INSERT INTO items(payload) SELECT randomblob(4000) FROM items'); os._exit(0)")
    subprocess.run([sys.executable, "-c", crash, str(db)], check=True, timeout=60)
    journal = Path(f"{db}-journal")
    assert journal.stat().st_size > 0  # hot: the file holds spilled pages of a transaction that never committed
    copy = tmp_path / "copy.db"
    conn = sq._connect(db, mode="rw")
    try:
        sq._copy_by_compare(conn, db, copy)
    finally:
        conn.close()
    assert not journal.exists()
    assert invariant_problem(copy) is None
    assert sqlite3_count(copy) == rows
    assert copy.read_bytes() == db.read_bytes()


def sqlite3_count(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_rollback_copy_under_a_busy_writer_is_finished_under_one_short_lock(tmp_path, caplog):
    """A writer committing every few ms restarts the stepped copy; the compare-and-patch copy is consistent."""
    import logging

    from eternia_backup.builtin.sqlite import snapshot

    db = tmp_path / "live.db"
    make_database(db, journal_mode="delete", size_mib=32)
    writer = Writer(db, tmp_path / "writer.json")
    try:
        with caplog.at_level(logging.DEBUG, logger="eternia_backup.source.sqlite"):
            for i in range(3):
                copy = tmp_path / f"copy{i}.db"
                snapshot(db, copy)
                assert invariant_problem(copy) is None
                assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"copy{i}")) == [copy.name]
    finally:
        stats = writer.stop()
    held = [r.sqlite_lock_held for r in caplog.records if hasattr(r, "sqlite_lock_held")]
    assert len(held) == 3, "the stepped copy was never restarted: the writer did not commit during it"
    assert stats["commits"] > 50


def test_a_locked_pass_over_its_budget_releases_the_lock_and_the_next_one_finishes(tmp_path, monkeypatch, caplog):
    """Every budgeted pass gives up at once (budget 0); the copy is still exactly the database."""
    import logging

    from eternia_backup.builtin import sqlite as sq

    monkeypatch.setattr(sq, "LOCK_BUDGETS", (0.0, 0.0))
    monkeypatch.setattr(sq, "RETRY_PAUSE", 0.0)
    db = tmp_path / "app.db"
    make_database(db, journal_mode="delete", size_mib=80)  # more than 64 chunks: compared by several threads
    copy = tmp_path / "copy.db"
    conn = _ChangesBeforeLocking(sq._connect(db, mode="rw"), db, CHANGE["grow"])
    try:
        with caplog.at_level(logging.DEBUG, logger="eternia_backup.source.sqlite"):
            sq._copy_by_compare(conn, db, copy)
    finally:
        conn.conn.close()
    assert sum("gave up" in r.getMessage() for r in caplog.records) == 2
    assert copy.read_bytes() == db.read_bytes()
    assert invariant_problem(copy) is None


def test_a_database_switched_to_wal_during_the_copy_is_not_taken_from_its_file(tmp_path):
    """The file of a WAL database is not the whole database: the locked pass notices and stops."""
    from eternia_backup.builtin import sqlite as sq

    db = tmp_path / "app.db"
    make_database(db, journal_mode="delete", size_mib=2)
    conn = _ChangesBeforeLocking(sq._connect(db, mode="rw"), db, "PRAGMA journal_mode=WAL;")
    try:
        with pytest.raises(sq._BecameWal):
            sq._copy_by_compare(conn, db, tmp_path / "copy.db")
        sq._remove_quietly(tmp_path / "copy.db")
        sq._wal_snapshot(conn.conn, tmp_path / "copy.db")  # what snapshot() does then
    finally:
        conn.conn.close()
    assert invariant_problem(tmp_path / "copy.db") is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.db"]


def test_the_temporary_copy_is_removed_by_shrinking_it_first(tmp_path, monkeypatch):
    """remove_copy frees a large copy in steps (so the application's fsyncs never wait for one huge free)."""
    from eternia_backup.builtin import sqlite as sqlite_source

    monkeypatch.setattr(sqlite_source, "SHRINK_STEP", 1 << 20)
    monkeypatch.setattr(sqlite_source, "SHRINK_PAUSE", 0)
    copy = tmp_path / "copy.db"
    copy.write_bytes(os.urandom(5 * (1 << 20) + 123))
    sizes = []
    real = os.ftruncate
    monkeypatch.setattr(sqlite_source.os, "ftruncate", lambda fd, n: (sizes.append(n), real(fd, n))[1])
    sqlite_source.remove_copy(copy)
    assert not copy.exists()
    assert sizes == [4 * (1 << 20) + 123, 3 * (1 << 20) + 123, 2 * (1 << 20) + 123, (1 << 20) + 123, 123]

    # A link in its place is removed, never followed; a missing copy is no error.
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 100)
    copy.symlink_to(victim)
    sqlite_source.remove_copy(copy)
    assert not copy.is_symlink() and victim.read_bytes() == b"x" * 100
    sqlite_source.remove_copy(copy)
