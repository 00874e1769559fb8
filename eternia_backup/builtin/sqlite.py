"""Built-in source ``sqlite``: a consistent online copy through the sqlite3 backup API.

The database is never copied as a raw file (a live database, WAL mode included,
would give a torn copy). Restore checks the staged copy with
``PRAGMA integrity_check`` and then writes it into the live database with the
backup API too: one SQLite transaction, so readers see the old or the new
database, and connections the application holds stay valid. What it replaced is
kept (as a consistent copy) until the whole restore succeeded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from pydantic import Field

from eternia_backup.api import (
    EntryWriter,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    hookimpl,
    remove_stale_siblings,
    remove_tree,
    sibling,
)

log = logging.getLogger("eternia_backup.source.sqlite")


class SqliteOptions(SourceOptions):
    path: str = Field(description="The database file, relative to the config file.", examples=["state/app.db"])
    timeout: float = Field(30.0, description="Seconds to wait for a lock held by the application.",
                           examples=[60])


def _connect(path: Path, *, mode: str, timeout: float = 30.0) -> sqlite3.Connection:
    uri = f"{path.absolute().as_uri()}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


def _copy(src: Path | sqlite3.Connection, dst: Path, timeout: float = 30.0) -> None:
    """A consistent copy of ``src`` into the new file ``dst`` (backup API, one step: for restores)."""
    source = src if isinstance(src, sqlite3.Connection) else _connect(src, mode="rw", timeout=timeout)
    target = sqlite3.connect(dst, isolation_level=None)
    try:
        source.backup(target)
        # A standalone file: no WAL beside it, so the archive holds one file.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        if source is not src:
            source.close()


# Copying a live database without stalling its writers. Each step holds the
# source's read lock only while it copies STEP_PAGES pages, then pauses.
# WAL mode: one read transaction is held across all steps, so the copy is one
# snapshot and writers are never blocked (WAL readers do not block writers).
# Rollback-journal mode: a read lock blocks writers' commits, so it is released
# between steps; a commit by the application meanwhile restarts the copy (SQLite
# does that, so the result is still one snapshot). After MAX_RESTARTS restarts
# the database is copied in one go under one read lock instead (its file bytes,
# the fastest consistent copy while no one can commit), with a warning saying
# how long writers were held. benchmarks/sqlite_stall.py measures both.
STEP_PAGES = 1024
STEP_PAUSE = 0.02  # seconds between steps: the writers' window
MAX_RESTARTS = 3


class _Restarted(Exception):
    pass


def snapshot(path: Path, dst: Path, *, timeout: float = 30.0, label: str = "") -> None:
    """A consistent copy of the live database ``path`` into the new file ``dst``, in steps."""
    source = _connect(path, mode="rw", timeout=timeout)
    try:
        wal = source.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        if wal:
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_master")  # pin one snapshot for every step
            try:
                _stepped(source, dst, max_restarts=None)
            finally:
                source.execute("COMMIT")
            return
        try:
            _stepped(source, dst, max_restarts=MAX_RESTARTS)
        except _Restarted:
            _remove_quietly(dst)
            held = _copy_under_read_lock(source, path, dst)
            log.warning("%sSQLite database %s changed %d times while it was copied in steps (rollback-journal "
                        "mode); copied it in one go under a read lock instead, which held the application's "
                        "writers for up to %.2f s. PRAGMA journal_mode=WAL avoids this", label and f"{label}: ",
                        path, MAX_RESTARTS, held)
    finally:
        source.close()


def _stepped(source: sqlite3.Connection, dst: Path, *, max_restarts: int | None) -> None:
    state = {"remaining": None, "restarts": 0}
    target = sqlite3.connect(dst, isolation_level=None)
    flush = os.open(dst, os.O_RDONLY)

    def pause(status, remaining, total):
        if state["remaining"] is not None and remaining > state["remaining"]:
            state["restarts"] += 1  # another connection wrote: SQLite started over
            if max_restarts is not None and state["restarts"] > max_restarts:
                raise _Restarted()
        state["remaining"] = remaining
        # Write each step out now: a large backlog of our dirty pages would make
        # the application's own fsyncs wait (ext4 commits them together).
        os.fdatasync(flush)
        if remaining:
            time.sleep(STEP_PAUSE)

    try:
        source.backup(target, pages=STEP_PAGES, progress=pause, sleep=STEP_PAUSE)
        target.execute("PRAGMA journal_mode=DELETE")  # a standalone file: no WAL beside it
    finally:
        target.close()
        os.close(flush)


def _copy_under_read_lock(source: sqlite3.Connection, path: Path, dst: Path) -> float:
    """Copy the file's bytes while holding a read lock (no commit can happen); returns seconds held."""
    source.execute("BEGIN")
    start = time.monotonic()
    try:
        source.execute("SELECT count(*) FROM sqlite_master")  # SHARED lock; a hot journal is rolled back first
        shutil.copyfile(path, dst)
    finally:
        source.execute("COMMIT")
    return time.monotonic() - start


def _remove_quietly(path: Path) -> None:
    for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def integrity_problem(path: Path) -> str | None:
    try:
        conn = _connect(path, mode="ro")
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    result = "; ".join(r[0] for r in rows)
    return None if result == "ok" else result


def write_into(staged: Path, destination: Path) -> None:
    """Replace the live database's contents with ``staged`` in one SQLite transaction."""
    src = _connect(staged, mode="ro")
    try:
        dst = _connect(destination, mode="rw")
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


class SqliteSource(Source):
    type_name = "sqlite"
    options_model = SqliteOptions

    @property
    def path(self) -> Path:
        p = Path(self.options.path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def describe(self):
        return {"type": self.type_name, "name": self.name, "path": str(self.path)}

    def estimate_size(self) -> int | None:
        return self.path.stat().st_size

    def check(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"source {self.name!r}: SQLite database {self.path} does not exist; fix its path")

    def backup(self, writer: EntryWriter) -> None:
        self.check()
        workdir = Path(tempfile.mkdtemp(prefix="eternia-sqlite-"))
        try:
            copy = workdir / self.path.name
            try:
                snapshot(self.path, copy, timeout=self.options.timeout, label=f"source {self.name!r}")
            except sqlite3.DatabaseError as exc:
                raise SourceError(f"source {self.name!r}: cannot back up SQLite database {self.path}: {exc}") from exc
            os.utime(copy, (time.time(), self.path.stat().st_mtime))
            os.chmod(copy, self.path.stat().st_mode & 0o777)
            writer.add_file(self.path.name, copy)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def default_destination(self) -> Path:
        return self.path

    def restore_plan(self, destination: Path | None):
        if destination is not None:
            return SqliteRestorePlan(destination / self.path.name, self.name, self.path.name, within=destination)
        return SqliteRestorePlan(self.path, self.name, self.path.name)


class SqliteRestorePlan(RestorePlan):
    """Stage, check, then write into the database with the backup API.

    With ``within`` (a ``--to`` restore) the database and the directory holding it
    are new places: a symlink already there is refused rather than followed, so a
    link planted in the destination cannot make the restore write elsewhere. In
    place, the configured path is the application's own and is used as it is.
    """

    def __init__(self, destination: Path, source_name: str, member: str, within: Path | None = None):
        self.within = Path(within).absolute() if within is not None else None
        self.destination = Path(destination).absolute()
        self.label = f"source {source_name!r}"
        self.member = member
        self.staging_dir = sibling(self.destination, "restore")
        self.previous: Path | None = None
        self.created = False
        self.description = f"{self.label}: replace SQLite database {self.destination}"

    def prepare(self) -> None:
        if self.within is not None:
            for p in (self.within, self.destination):
                if p.is_symlink():
                    raise RestoreError(f"{self.label}: destination {p} is a symlink; it would be written through. "
                                       "Remove the link or restore into another directory")
        try:
            self.destination.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_siblings(self.destination, keep=self.staging_dir)
            self.staging_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise RestoreError(f"{self.label}: cannot create a staging directory beside {self.destination}: {exc.strerror}") from exc

    def _staged(self) -> Path:
        staged = self.staging_dir / self.member
        if not staged.is_file():
            raise RestoreError(f"{self.label}: the backup holds no database file {self.member!r}")
        return staged

    def replaces_existing(self) -> bool:
        return self.destination.exists()

    def changes(self) -> list[str]:
        verb = "replace" if self.destination.exists() else "create"
        return [f"{self.label}: would {verb} SQLite database {self.destination}"]

    def commit(self) -> None:
        staged = self._staged()
        problem = integrity_problem(staged)
        if problem:
            raise RestoreError(f"{self.label}: the database in the backup fails integrity_check: {problem}")
        if not self.destination.exists():
            os.replace(staged, self.destination)
            self.created = True
            return
        self.previous = self.staging_dir / (self.member + ".previous")
        try:
            _copy(self.destination, self.previous)
            write_into(staged, self.destination)
        except sqlite3.DatabaseError as exc:
            raise RestoreError(f"{self.label}: cannot write {self.destination}: {exc}") from exc

    def journal_entry(self) -> dict:
        return {"destination": str(self.destination),
                "staged": str(self.staging_dir / self.member), "staging": str(self.staging_dir)}

    @classmethod
    def resume(cls, entry: dict) -> str:
        """Write the staged database in again: the backup API makes that safe to repeat."""
        destination, staged = Path(entry["destination"]), Path(entry["staged"])
        if staged.exists():
            if destination.exists():
                write_into(staged, destination)
            else:
                os.replace(staged, destination)
        remove_tree(Path(entry["staging"]))
        return f"{destination}: the restored database was written"

    def rollback(self) -> None:
        if self.created:
            os.unlink(self.destination)
            self.created = False
        elif self.previous is not None and self.previous.exists():
            src = _connect(self.previous, mode="ro")
            try:
                dst = _connect(self.destination, mode="rw")
                try:
                    src.backup(dst)
                finally:
                    dst.close()
            finally:
                src.close()

    def discard(self) -> None:
        remove_tree(self.staging_dir)


SqliteSource.restore_plan_types = (SqliteRestorePlan,)


@hookimpl
def eternia_register_sources(register):
    register(SqliteSource)
