"""Storage target ``sqlitestore://``: backups kept as rows of one SQLite file.

An example third-party target for a store that fsspec does not know. It
imports only :mod:`eternia_backup.api`, the stable plugin API.

``sqlitestore:///var/backups/app.sqlite`` keeps every file in that database:
a row of ``files`` (name, size, mtime, etag) and its bytes in ``chunks`` rows
of up to 1 MiB. The contract of a target, and how it is met here:

* **Atomic writes.** ``open_write`` inserts a row under the temporary name
  (:func:`~eternia_backup.api.temp_name`, the convention cleanup knows) and
  each ``write`` commits a chunk, so a killed writer leaves a temp-named row
  that ``eternia-backup cleanup`` removes. ``commit`` renames the row to its
  final name in one transaction: readers see the old file or the new one.
* **Conditional writes** (:class:`~eternia_backup.api.ConditionalWrites`):
  an ETag per version, compared inside a ``BEGIN IMMEDIATE`` transaction, so
  several hosts sharing the file on a network filesystem with working locks
  can hold a scheduler lease.
* **Errors** are :class:`~eternia_backup.api.StorageError` naming the target
  (``BackupNotFoundError`` for a missing file), made by ``Target.error_for``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from eternia_backup.api import (
    AtomicWrite,
    ConditionalWrites,
    ConfigError,
    StoredFile,
    Target,
    hookimpl,
    temp_name,
)

__version__ = "0.1.0"

CHUNK = 2**20
SCHEMA = """
create table if not exists files (name text primary key, size integer not null, mtime real not null,
                                  etag text not null);
create table if not exists chunks (name text not null, seq integer not null, data blob not null,
                                   primary key (name, seq));
"""


class SqliteStoreTarget(Target, ConditionalWrites):
    """Files as rows of one SQLite database (``sqlitestore:///abs/path.sqlite``)."""

    protocols = ("sqlitestore",)

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        super().__init__(name, url, options)
        path = url.split("://", 1)[1]
        if not path.startswith("/"):
            raise ConfigError(f"target {name!r}: {url} must name an absolute path (sqlitestore:///var/x.sqlite)")
        self.path = Path(path)
        self.timeout = float(options.get("timeout", 30))

    # -- plumbing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self, *, create: bool = True, immediate: bool = False):
        """A connection in one transaction, committed on success; a connection per call is thread-safe."""
        if not create and not self.path.exists():
            raise FileNotFoundError(str(self.path))
        if create:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute("pragma journal_mode=wal")  # readers never wait for a writer
            db.executescript(SCHEMA)
            db.execute("begin immediate" if immediate else "begin")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")
        finally:
            db.close()

    def _call(self, action: str, filename: str | None, fn):
        try:
            return fn()
        except sqlite3.Error as exc:
            raise self.error_for(action, OSError(f"{self.path}: {exc}"), filename) from exc
        except OSError as exc:
            raise self.error_for(action, exc, filename) from exc

    # -- the required core --------------------------------------------------------------

    def file_url(self, filename: str) -> str:
        return f"sqlitestore://{self.path}#{filename}" if filename else f"sqlitestore://{self.path}"

    def check(self) -> None:
        def run():
            with self._db():
                pass
        self._call("open", None, run)

    def list(self) -> list[StoredFile]:
        def run():
            try:
                with self._db(create=False) as db:
                    rows = db.execute("select name, size, mtime, etag from files").fetchall()
            except FileNotFoundError:
                return []  # not created yet
            # the ETag changes with every commit: the framework's manifest cache trusts it
            return [StoredFile(n, s, m, e or None) for n, s, m, e in rows]
        return self._call("list", None, run)

    def open_write(self, filename: str) -> AtomicWrite:
        return self._call("write", filename, lambda: SqliteStoreWrite(self, filename))

    def open_read(self, filename: str) -> BinaryIO:
        def run():
            with self._db(create=False) as db:
                row = db.execute("select size from files where name = ?", (filename,)).fetchone()
            if row is None:
                raise FileNotFoundError(filename)
            return io.BufferedReader(_ChunkReader(self, filename), buffer_size=CHUNK)
        return self._call("read", filename, run)

    def size(self, filename: str) -> int:
        def run():
            with self._db(create=False) as db:
                row = db.execute("select size from files where name = ?", (filename,)).fetchone()
            if row is None:
                raise FileNotFoundError(filename)
            return int(row[0])
        return self._call("stat", filename, run)

    def delete(self, filename: str) -> None:
        def run():
            with self._db() as db:
                db.execute("delete from files where name = ?", (filename,))
                db.execute("delete from chunks where name = ?", (filename,))
        self._call("delete", filename, run)

    # -- conditional writes ---------------------------------------------------------------

    def conditional_put(self, filename, data, *, if_none_match=False, if_match=None):
        def run():
            with self._db(immediate=True) as db:
                row = db.execute("select etag from files where name = ?", (filename,)).fetchone()
                if (if_none_match and row is not None) or (if_match is not None and (row is None or row[0] != if_match)):
                    return None
                etag = uuid.uuid4().hex
                _replace(db, filename, [bytes(data)], etag)
                return etag
        return self._call("write", filename, run)

    def read_with_etag(self, filename):
        def run():
            try:
                with self._db(create=False) as db:
                    row = db.execute("select etag from files where name = ?", (filename,)).fetchone()
                    if row is None:
                        return None
                    data = b"".join(r[0] for r in db.execute(
                        "select data from chunks where name = ? order by seq", (filename,)))
                    return data, row[0]
            except FileNotFoundError:
                return None
        return self._call("read", filename, run)

    def conditional_delete(self, filename, etag):
        def run():
            with self._db(immediate=True) as db:
                gone = db.execute("delete from files where name = ? and etag = ?", (filename, etag)).rowcount
                if gone:
                    db.execute("delete from chunks where name = ?", (filename,))
                return bool(gone)
        return self._call("delete", filename, run)


def _replace(db: sqlite3.Connection, name: str, pieces: list[bytes], etag: str) -> None:
    db.execute("delete from files where name = ?", (name,))
    db.execute("delete from chunks where name = ?", (name,))
    db.executemany("insert into chunks values (?, ?, ?)", [(name, i, p) for i, p in enumerate(pieces)])
    db.execute("insert into files values (?, ?, ?, ?)", (name, sum(map(len, pieces)), time.time(), etag))


class SqliteStoreWrite(AtomicWrite):
    """Chunks under a temporary name, each committed; renamed in one transaction on commit."""

    def __init__(self, target: SqliteStoreTarget, filename: str):
        self.target = target
        self.final = filename
        self.tmp = temp_name(filename)
        self.buffer = bytearray()
        self.seq = 0
        self.size = 0
        self._done = False
        with target._db() as db:
            _replace(db, self.tmp, [], "")  # visible at once, under the temp name: cleanup can find it

    def _flush(self, limit: int) -> None:
        while len(self.buffer) >= limit and self.buffer:
            piece = bytes(self.buffer[:CHUNK])
            del self.buffer[:CHUNK]
            with self.target._db() as db:
                db.execute("insert into chunks values (?, ?, ?)", (self.tmp, self.seq, piece))
                db.execute("update files set size = size + ?, mtime = ? where name = ?",
                           (len(piece), time.time(), self.tmp))
            self.seq += 1

    def write(self, data) -> int:
        self.buffer += data
        self.target._call("write", self.final, lambda: self._flush(CHUNK))
        return len(data)

    def commit(self) -> None:
        def run():
            self._flush(1)
            with self.target._db(immediate=True) as db:
                db.execute("delete from files where name = ?", (self.final,))
                db.execute("delete from chunks where name = ?", (self.final,))
                db.execute("update chunks set name = ? where name = ?", (self.final, self.tmp))
                db.execute("update files set name = ?, etag = ? where name = ?",
                           (self.final, uuid.uuid4().hex, self.tmp))
        self.target._call("commit", self.final, run)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.buffer = bytearray()
        with contextlib.suppress(Exception):  # what is left has a temp name: cleanup removes it
            self.target.delete(self.tmp)


class _ChunkReader(io.RawIOBase):
    """Reads a file's chunks one at a time (memory stays at one chunk)."""

    def __init__(self, target: SqliteStoreTarget, name: str):
        self.target = target
        self.name = name
        self.seq = 0
        self.pending = b""
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.pending and not self.eof:
            def run():
                with self.target._db(create=False) as db:
                    return db.execute("select data from chunks where name = ? and seq = ?",
                                      (self.name, self.seq)).fetchone()
            row = self.target._call("read", self.name, run)
            if row is None:
                self.eof = True
            else:
                self.pending = row[0]
                self.seq += 1
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


@hookimpl
def eternia_register_targets(register):
    register(SqliteStoreTarget)
