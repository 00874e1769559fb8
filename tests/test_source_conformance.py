"""The built-in sources against the conformance kit: directory, sqlite and command, on real files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from eternia_backup.testing import SourceConformance


def read_tree(root: Path) -> dict[str, object]:
    """Every entry under ``root``: file bytes, link targets, directories (with their mode bits)."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode & 0o7777)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


class TestDirectorySource(SourceConformance):
    @pytest.fixture
    def source_section(self, tmp_path):
        root = tmp_path / "app" / "files"
        (root / "users").mkdir(parents=True)
        (root / "empty-dir").mkdir()
        for i in range(20):
            (root / "users" / f"user-{i}.json").write_text(f'{{"id": {i}, "name": "user {i}"}}\n')
        (root / "blob.bin").write_bytes(os.urandom(200_000))
        (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
        (root / "script.sh").chmod(0o750)
        (root / "latest").symlink_to("users/user-0.json")
        return {"type": "directory", "name": "files", "path": str(root)}

    def capture_state(self, section):
        return read_tree(Path(section["path"]))

    def restored_state(self, section, directory):
        return read_tree(directory / section["name"])

    def mutate_state(self, section):
        root = Path(section["path"])
        (root / "users" / "user-3.json").write_text("changed")
        (root / "users" / "user-4.json").unlink()
        (root / "new.txt").write_text("appeared after the backup")
        (root / "script.sh").chmod(0o700)


class TestSqliteSource(SourceConformance):
    """Accounts whose balances always sum to 1000: a torn copy would break the sum."""

    @pytest.fixture
    def source_section(self, tmp_path):
        path = tmp_path / "app" / "app.db"
        path.parent.mkdir(parents=True)
        db = sqlite3.connect(path)
        db.execute("pragma journal_mode=wal")
        db.execute("create table accounts (id integer primary key, balance integer)")
        db.executemany("insert into accounts values (?, ?)", [(i, 100) for i in range(10)])
        db.commit()
        db.close()
        return {"type": "sqlite", "name": "db", "path": str(path)}

    @staticmethod
    def _rows(path: Path) -> list[tuple]:
        db = sqlite3.connect(path)
        try:
            return db.execute("select id, balance from accounts order by id").fetchall()
        finally:
            db.close()

    def capture_state(self, section):
        return self._rows(Path(section["path"]))

    def restored_state(self, section, directory):
        return self._rows(directory / section["name"] / Path(section["path"]).name)

    def mutate_state(self, section):
        db = sqlite3.connect(section["path"], timeout=30)
        try:
            for i in range(195):  # many small transfers (not a whole round: the balances change)
                with db:
                    db.execute("update accounts set balance = balance - 7 where id = ?", (i % 10,))
                    db.execute("update accounts set balance = balance + 7 where id = ?", ((i + 3) % 10,))
        finally:
            db.close()

    def assert_consistent(self, section, restored):
        assert sum(balance for _, balance in restored) == 1000
        assert len(restored) == 10


class TestCommandSource(SourceConformance):
    @pytest.fixture
    def source_section(self, tmp_path):
        state = tmp_path / "app" / "state.txt"
        state.parent.mkdir(parents=True)
        state.write_text("the application's state\n" * 100)
        return {"type": "command", "name": "dump", "filename": "state.txt",
                "command": f"cat '{state}'", "restore_command": f"cat > '{state}'"}

    def _path(self, section) -> Path:
        return Path(section["command"].split("'")[1])

    def capture_state(self, section):
        return self._path(section).read_bytes()

    def restored_state(self, section, directory):
        return (directory / section["name"] / section["filename"]).read_bytes()

    def mutate_state(self, section):
        self._path(section).write_text("changed after the backup\n")
