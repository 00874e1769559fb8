"""The directory source's walk and the writer it adds files to: when the walk stats a file itself.

A writer that says ``stat_optional`` (the built-in tar's sections) stats the open file
and returns that stat, so the walk adds regular files without an lstat of its own; any
other writer (a plugin's archiver, the incremental ChangeFilter) gets ``stat=`` as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from eternia_backup.api import EntryWriter
from eternia_backup.builtin.directory import DirectoryOptions, DirectorySource


class Recording(EntryWriter):
    """Records add_file calls; with ``stat_optional`` returns the file's stat as the tar writer does."""

    def __init__(self, stat_optional: bool):
        self.stat_optional = stat_optional
        self.files: dict[str, object] = {}

    def add_directory(self, relpath, *, mode, mtime, uid=0, gid=0):
        pass

    def add_file(self, relpath, path, *, stat=None):
        self.files[relpath] = stat
        return os.stat(path) if self.stat_optional else None

    def add_stream(self, relpath, stream, size, *, mode=0o600, mtime):
        pass

    def add_symlink(self, relpath, target, *, mtime):
        pass


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.bin").write_bytes(b"SQLite format 2\0" + bytes(600))  # header-like, not a database
    with sqlite3.connect(root / "sub" / "shop.db") as db:
        db.execute("CREATE TABLE t (x)")
    return root


def walk(root: Path, writer: Recording) -> None:
    DirectorySource("app", DirectoryOptions(path=str(root)), root).backup(writer)


def test_a_writer_that_does_not_stat_files_gets_the_walks_lstat(tmp_path):
    root = tree(tmp_path / "app")
    writer = Recording(stat_optional=False)
    walk(root, writer)
    assert sorted(writer.files) == ["a.txt", "sub/b.bin", "sub/shop.db"]
    for relpath, st in writer.files.items():
        assert (st.st_ino, st.st_size) == (os.lstat(root / relpath).st_ino, os.lstat(root / relpath).st_size)


@pytest.mark.parametrize("stat_optional", [True, False])
def test_a_database_is_found_with_or_without_the_walks_stat(tmp_path, caplog, stat_optional):
    root = tree(tmp_path / "app")
    writer = Recording(stat_optional=stat_optional)
    with caplog.at_level(logging.WARNING, logger="eternia_backup.source.directory"):
        walk(root, writer)
    if stat_optional:
        assert set(writer.files.values()) == {None}  # added without a stat of the walk's own
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "sub/shop.db is a SQLite database" in warned[0]
