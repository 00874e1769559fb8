"""Built-in source ``sqlite``: a consistent online copy of a live database.

A live database's bytes, copied as they come, give a torn copy. So the copy is
made with the sqlite3 backup API, or, in rollback-journal mode under a writer
that commits all the time, from the file's bytes made equal to the committed
database under one short read lock (see the comment above STEP_PAGES: it says
why and what it costs). Restore checks the staged copy with
``PRAGMA integrity_check`` and then writes it into the live database with the
backup API too: one SQLite transaction, so readers see the old or the new
database, and connections the application holds stay valid. What it replaced is
kept (as a consistent copy) until the whole restore succeeded.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from pydantic import Field

from eternia_backup.api import (
    DrillCheck,
    EntryWriter,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    hookimpl,
    remove_stale_siblings,
    remove_tree,
    scratch_dir,
    sibling,
    sql_result_true,
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
    _create_private(dst)
    target = sqlite3.connect(dst, isolation_level=None)
    try:
        source.backup(target)
        # A standalone file: no WAL beside it, so the archive holds one file.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        if source is not src:
            source.close()


# Copying a live database without stalling its writers.
#
# WAL mode: the backup API in steps of STEP_PAGES pages, all inside one read
# transaction, so the copy is one snapshot; WAL readers never block writers.
#
# Rollback-journal mode (DELETE, TRUNCATE, PERSIST): a reader's SHARED lock
# blocks every writer's commit for as long as it is held, so the work done under
# it must be small. First the backup API in steps, the lock released between
# them; a commit by the application meanwhile restarts the copy (SQLite does
# that, so the result is still one snapshot). That suits a database written now
# and then. A writer committing all the time restarts it forever, so after
# MAX_RESTARTS restarts the copy is made from the file's bytes instead
# (_copy_by_compare):
#
#   1. the file is copied without any lock, in paced chunks (torn: fine);
#   2. then, still without a lock, passes compare the copy with the file and
#      rewrite the chunks that differ, until little changed during a pass;
#   3. then, under ONE short read lock (taking it rolls back a hot journal, and
#      no one can commit while it is held), the same compare-and-patch once more,
#      plus the file's new size. When the lock is released the copy equals the
#      committed database at that instant, byte for byte: one snapshot.
#
# Step 3 must read the whole file (nothing outside SQLite says which pages a
# commit wrote), so its cost is memory bandwidth, not disk: the file and the
# copy are mapped (MAP_SHARED, so they show the page cache as it is now) and
# pre-faulted before the lock is taken, and compared with libc memcmp from
# COMPARE_THREADS threads (ctypes releases the GIL); only differing 64 KiB
# pieces are rewritten. On the 2-core VM of benchmarks/sqlite_stall.py, 1 GiB
# compares in ~90-130 ms when the machine is otherwise idle and 250-400 ms when
# other jobs load it, against 0.6 s for copying the file under the lock as this
# source did before. So a locked pass has a budget (LOCK_BUDGETS): over it, it
# lets go and is tried again later; the last try finishes regardless, and a lock
# held longer than LOCK_WARNING is warned about, suggesting WAL mode (which
# never blocks writers). The whole file under one lock remains only where the
# file cannot be mapped.
#
# The copy is the file's bytes, so it keeps the page size, a file that shrank
# (VACUUM) or grew since it was mapped is followed under the lock, and it is a
# standalone database: no -journal (a hot one was rolled back before the locked
# pass), and a database switched to WAL meanwhile is copied the WAL way.
STEP_PAGES = 1024
STEP_PAUSE = 0.02  # seconds between steps: the writers' window
MAX_RESTARTS = 3
CHUNK = 1 << 20  # compare granularity
PATCH = 1 << 16  # rewrite granularity inside a chunk that differs
PRECOPY = STEP_PAGES * 4096  # bytes written (then fdatasync, STEP_PAUSE) per paced step of a lock-free pass
CONVERGED = 16 << 20  # a lock-free pass that rewrote less than this is close enough
MAX_PASSES = 4
COMPARE_THREADS = max(1, min(4, os.cpu_count() or 1))
# Seconds a locked pass may take before it gives up (the writers go on) to be
# tried again RETRY_PAUSE and another lock-free pass later: the compare's speed
# depends on what else the machine runs, so a later try may fit. After these,
# one more pass finishes however long it takes. SQLite's default busy handler
# retries 103, 128, 178, 228 ms after a writer began waiting: a lock released
# within 0.12 s lets it commit at 128 ms, within 0.15 s at 178 ms.
LOCK_BUDGETS = (0.12,) * 4 + (0.15,) * 8
RETRY_PAUSE = 0.5
LOCK_WARNING = 0.2  # seconds


def _create_private(dst: Path) -> None:
    """Create the copy 0600 before SQLite opens it (it would use the umask): it holds the application's data."""
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600))


class _Restarted(Exception):
    pass


def snapshot(path: Path, dst: Path, *, timeout: float = 30.0, label: str = "") -> None:
    """A consistent copy of the live database ``path`` into the new file ``dst``, without long locks."""
    source = _connect(path, mode="rw", timeout=timeout)
    try:
        wal = source.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        if wal:
            _wal_snapshot(source, dst)
            return
        try:
            _stepped(source, dst, max_restarts=MAX_RESTARTS)
            return
        except _Restarted:
            _remove_quietly(dst)
        try:
            held = _copy_by_compare(source, path, dst)
        except _BecameWal:
            _remove_quietly(dst)
            _wal_snapshot(source, dst)
            return
        except _CannotMap as exc:
            log.debug("cannot map %s (%s); copying it under one read lock", path, exc)
            _remove_quietly(dst)
            held = _copy_under_read_lock(source, path, dst)
        log.debug("SQLite database %s: copy finished under a read lock held %.3f s", path, held,
                  extra={"sqlite_lock_held": held})
        if held > LOCK_WARNING:
            log.warning("%sSQLite database %s (rollback-journal mode) is written continuously; finishing its copy "
                        "held the application's writers for up to %.2f s. PRAGMA journal_mode=WAL avoids this",
                        label and f"{label}: ", path, held)
    finally:
        source.close()


def _wal_snapshot(source: sqlite3.Connection, dst: Path) -> None:
    source.execute("BEGIN")
    source.execute("SELECT count(*) FROM sqlite_master")  # pin one snapshot for every step
    try:
        _stepped(source, dst, max_restarts=None)
    finally:
        source.execute("COMMIT")


def _stepped(source: sqlite3.Connection, dst: Path, *, max_restarts: int | None) -> None:
    state = {"remaining": None, "restarts": 0}
    _create_private(dst)
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


class _BecameWal(Exception):
    """The database was switched to WAL mode during the copy: its file alone is not the database."""


class _CannotMap(Exception):
    pass


def _copy_by_compare(source: sqlite3.Connection, path: Path, dst: Path) -> float:
    """Copy a rollback-journal database from its bytes; see the comment above STEP_PAGES. Returns seconds locked.

    ``source`` holds no lock when called. The file is opened once and closed only
    after the last lock is released: closing any descriptor of a file drops every
    POSIX lock the process holds on it, SQLite's included.
    """
    src_fd = os.open(path, os.O_RDONLY)
    try:
        dst_fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(MAX_PASSES):
                if _pass_unlocked(src_fd, dst_fd) < CONVERGED:
                    break
            held = 0.0
            for attempt, budget in enumerate(LOCK_BUDGETS, 1):
                try:
                    held = max(held, _pass_locked(source, src_fd, dst_fd, budget=budget))
                    break
                except _OverBudget as exc:
                    held = max(held, exc.held)
                    log.debug("%s: locked pass %d gave up after %.3f s; trying again", path, attempt, exc.held)
                    time.sleep(RETRY_PAUSE)
                    _pass_unlocked(src_fd, dst_fd)  # catch up with the commits let through meanwhile
            else:
                held = max(held, _pass_locked(source, src_fd, dst_fd))
            os.fdatasync(dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return held


def _pass_unlocked(src_fd: int, dst_fd: int) -> int:
    """Bring the copy close to the file without any lock (reads may be torn); returns bytes rewritten.

    Read with pread, not a mapping: the file may shrink meanwhile, and a mapping
    read past its end kills the process (SIGBUS). Written out every PRECOPY bytes
    so a backlog of our dirty pages does not make the application's fsyncs wait.
    """
    size = os.fstat(src_fd).st_size
    rewritten = unsynced = 0
    for off in range(0, size, CHUNK):
        s = os.pread(src_fd, CHUNK, off)
        if not s:
            break  # shorter now: the next pass or the locked one sees the new size
        d = os.pread(dst_fd, len(s), off)
        if s == d:
            continue
        if len(d) != len(s):
            os.pwrite(dst_fd, s, off)
            n = len(s)
        else:
            n = 0
            view = memoryview(s)
            for p in range(0, len(s), PATCH):
                if view[p:p + PATCH] != d[p:p + PATCH]:
                    n += os.pwrite(dst_fd, view[p:p + PATCH], off + p)
        rewritten += n
        unsynced += n
        if unsynced >= PRECOPY:
            os.fdatasync(dst_fd)
            unsynced = 0
            time.sleep(STEP_PAUSE)  # the disk is shared with the application's own fsyncs
    os.ftruncate(dst_fd, size)
    os.fdatasync(dst_fd)
    return rewritten


class _OverBudget(Exception):
    def __init__(self, held: float):
        super().__init__(held)
        self.held = held


def _pass_locked(source: sqlite3.Connection, src_fd: int, dst_fd: int, budget: float | None = None) -> float:
    """Under one read lock, make the copy equal to the file; returns the seconds the lock was held.

    Both files are mapped and pre-faulted before the lock is taken, so the locked
    part is memcmp at memory speed plus rewriting what changed since the last pass.
    With a ``budget`` (seconds), a pass that would hold the lock longer stops,
    releases it and raises _OverBudget (the copy is then partly patched: the
    next pass goes on from there).
    """
    size = os.fstat(src_fd).st_size
    os.ftruncate(dst_fd, size)
    src = _Map(src_fd, size)
    try:
        copy = _Map(dst_fd, size)
        try:
            source.execute("BEGIN")
            start = None
            try:
                source.execute("SELECT count(*) FROM sqlite_master")  # SHARED lock; a hot journal is rolled back first
                start = time.monotonic()
                done = _patch(src, copy, src_fd, dst_fd, None if budget is None else start + budget)
            finally:
                source.execute("COMMIT")
                held = 0.0 if start is None else time.monotonic() - start
        finally:
            copy.close()
    finally:
        src.close()
    if not done:
        raise _OverBudget(held)
    return held


def _patch(src: "_Map", copy: "_Map", src_fd: int, dst_fd: int, deadline: float | None) -> bool:
    """The locked part of _pass_locked; False when it passed the deadline (the copy is then partly patched)."""
    now = os.fstat(src_fd).st_size  # cannot change until COMMIT
    end = min(now, src.length)  # the mapping's pages past the file's end must not be read
    if end >= 20 and 2 in src.read(18, 2):
        raise _BecameWal()  # file format version 2: WAL mode
    differing = src.differing(copy, end, deadline)
    if differing is None:
        return False
    for off in differing:
        if deadline is not None and time.monotonic() > deadline:
            return False
        stop = min(off + CHUNK, end)
        for p in range(off, stop, PATCH):
            n = min(PATCH, stop - p)
            if src.differs(copy, p, n):
                os.pwrite(dst_fd, src.read(p, n), p)
    if now > src.length:
        _copy_range(src_fd, dst_fd, src.length, now)
    elif now < src.length:
        os.ftruncate(dst_fd, now)
    return True


def _copy_range(src_fd: int, dst_fd: int, start: int, stop: int) -> None:
    off = start
    while off < stop:
        data = os.pread(src_fd, min(CHUNK, stop - off), off)
        if not data:
            raise OSError(f"the file ended at {off} instead of {stop} bytes")
        os.pwrite(dst_fd, data, off)
        off += len(data)


_libc = None


def _lib():
    global _libc
    if _libc is None:
        import ctypes.util

        name = ctypes.util.find_library("c")
        if not name or not hasattr(mmap, "MAP_SHARED"):
            raise _CannotMap("no C library to map files with")
        lib = ctypes.CDLL(name, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.memcmp.restype = ctypes.c_int
        lib.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _libc = lib
    return _libc


class _Map:
    """A read-only shared mapping of a file's first ``length`` bytes, its pages faulted in now.

    libc's mmap through ctypes, because Python's mmap module gives no address of
    a read-only mapping to hand to memcmp. MAP_SHARED: it shows the page cache,
    so later writes by other processes are seen without faulting the pages again.
    """

    def __init__(self, fd: int, length: int):
        self.length = length
        self.addr = 0
        if length:
            lib = _lib()
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            addr = lib.mmap(None, length, mmap.PROT_READ, flags, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise _CannotMap(os.strerror(ctypes.get_errno()))
            self.addr = addr

    def close(self) -> None:
        if self.addr:
            _lib().munmap(self.addr, self.length)
            self.addr = 0

    def read(self, offset: int, n: int) -> bytes:
        return ctypes.string_at(self.addr + offset, n)

    def differs(self, other: "_Map", offset: int, n: int) -> bool:
        return _lib().memcmp(self.addr + offset, other.addr + offset, n) != 0

    def differing(self, other: "_Map", end: int, deadline: float | None = None) -> list[int] | None:
        """Offsets of the CHUNKs in [0, end) that differ, compared by COMPARE_THREADS threads.

        None when time.monotonic() passed ``deadline`` before the comparison was done.
        """
        starts = range(0, end, CHUNK)
        found: list[list[int]] = []
        late = threading.Event()

        def compare(part: range) -> None:
            memcmp, a, b, mine, clock = _lib().memcmp, self.addr, other.addr, [], time.monotonic
            for i, off in enumerate(part):
                if memcmp(a + off, b + off, min(CHUNK, end - off)):
                    mine.append(off)
                if deadline is not None and not i % 16 and (late.is_set() or clock() > deadline):
                    late.set()
                    return
            found.append(mine)

        n = COMPARE_THREADS if len(starts) >= 64 else 1
        per = -(-len(starts) // n) if starts else 0
        threads = [threading.Thread(target=compare, args=(starts[i * per:(i + 1) * per],)) for i in range(1, n)]
        for t in threads:
            t.start()
        try:
            compare(starts[:per])
        finally:
            for t in threads:
                t.join()
        if late.is_set():
            return None
        return sorted(off for part in found for off in part)


# Removing the copy. Freeing a 1 GiB file at once makes the filesystem's next
# journal commit large (with the `discard` mount option, one big discard), and
# the application's own fsyncs wait for it: 240 ms of writer stall measured at
# 1 GiB, after the copy was made without any. Shrunk SHRINK_STEP at a time with
# a pause, each commit stays small.
SHRINK_STEP = 32 << 20
SHRINK_PAUSE = 0.01


def remove_copy(path: Path) -> None:
    """Remove a large temporary copy without making the application's writers wait; never raises."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        fd = None
    if fd is not None:
        try:
            size = os.fstat(fd).st_size
            while size > SHRINK_STEP:
                size -= SHRINK_STEP
                os.ftruncate(fd, size)
                os.fdatasync(fd)
                time.sleep(SHRINK_PAUSE)
        except OSError:
            pass
        finally:
            os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass


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


def _sql_check(source: str, db: Path, query: str, name: str, timeout: float) -> DrillCheck:
    """Run ``query`` read-only on ``db``; its first value must be true (:func:`sql_result_true`)."""
    deadline = time.monotonic() + timeout
    try:
        conn = _connect(db, mode="ro")
        try:
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
            row = conn.execute(query).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        why = f"ran longer than {timeout:g} s" if time.monotonic() > deadline else str(exc)
        return DrillCheck(source, name, False, f"{query!r}: {why}")
    value = row[0] if row else None
    return DrillCheck(source, name, sql_result_true(value), f"{query!r} returned {value!r}"
                      + ("" if row else " (no row)"))


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
        workdir = scratch_dir("sqlite")  # 0700 in the state directory, never /tmp
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
            remove_copy(workdir / self.path.name)
            shutil.rmtree(workdir, ignore_errors=True)

    def default_destination(self) -> Path:
        return self.path

    drill_keys = ("integrity_check", "sql")

    def drill(self, restored: Path, checks) -> list[DrillCheck]:
        """integrity_check (unless turned off) and each ``sql`` query on the restored database file."""
        db = restored / self.path.name
        if not db.is_file():
            return [DrillCheck(self.name, "database", False, f"the backup holds no database file {self.path.name!r}")]
        found = []
        if checks.integrity_check is not False:
            problem = integrity_problem(db)
            found.append(DrillCheck(self.name, "integrity_check", problem is None,
                                    "PRAGMA integrity_check: ok" if problem is None
                                    else f"PRAGMA integrity_check: {problem[:500]}"))
        for i, query in enumerate(checks.sql):
            found.append(_sql_check(self.name, db, query, f"sql[{i}]", checks.timeout))
        return found

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
