#!/usr/bin/env python3
"""The longest time an application's SQLite writer waits while the ``sqlite`` source copies the database.

Not a test: a measurement to read. For each journal mode (WAL and rollback) it
builds a database of the given size (default 1 GiB) in a temporary directory,
starts a writer process (``sqlite_writer.py``: one small transaction every 5 ms,
each commit timed), lets it warm up, runs the ``sqlite`` source's backup as
``create`` does, stops the writer and prints:

* how long the copy took,
* the longest single commit of the writer while the copy ran (its stall),
* how many commits the writer made meanwhile,
* the writer's longest commit in 5 s before the copy (what the disk costs anyway),
* in rollback mode, how long the source held its read lock to finish the copy
  (the longest locked pass) and, in brackets, how many locked passes it tried,
* the 1-minute load average when the copy began,
* whether the copy passes ``integrity_check`` and ``count(items) == counter.n``.

    python benchmarks/sqlite_stall.py                 # 1 GiB, both modes
    python benchmarks/sqlite_stall.py --size-mib 64 --modes wal

Measured 2026-11-29 on a shared 2-core VM (ext4, other jobs running; the
writer's longest commit without any copy was 25-120 ms), 1 GiB, writer
committing every 5 ms:

    before (one backup step)   WAL 1017-1317 ms   rollback 6326-6699 ms
    after  (paced steps)       WAL  226-271 ms    rollback  637-1409 ms (quiet), up to 14 s under heavy load
    after, machine otherwise idle (08:45 UTC)   WAL 165 ms   rollback 632 ms (copy 13.6 s / 2.5 s)

In WAL mode nothing waits on a lock: with the copy written to tmpfs
(TMPDIR=/dev/shm) the longest stall was 118 ms; the rest is the disk, shared
with the copy being written. In rollback mode a writer this busy restarts every
stepped copy. The source then used to copy the whole file under one read lock
(632 ms at 1 GiB on the idle machine); now it copies and compares the file
without a lock and only compares and patches it under the lock (memcmp of two
pre-faulted mappings, two threads), so the lock costs memory bandwidth:

    quiet moment (10:40 UTC, load 3.6 falling, CPU pressure 17%)
                     rollback: lock 95 ms (first locked pass), writer's longest stall 147 ms, copy 10.7 s
                     WAL in the same run: 83 ms
    load 3.5-6 (10:44-10:54, other people's jobs)
                     rollback: lock 160-228 ms (13 passes: every budgeted one gave up), stall 210-273 ms
    load 5-9 (10:22-10:44)
                     rollback: lock 173-817 ms (13 passes), stall 239-924 ms
                     WAL in all these runs: 50-99 ms

The writer's stall is the lock plus its busy handler's next retry (SQLite's
default retries 103, 128, 178, 228 ms after it began waiting) plus its own
commit. memcmp of two 1 GiB files took 90-100 ms on this machine when quiet
and 250-390 ms when other jobs loaded it (they contend for memory bandwidth:
nice -10 did not help), so under load the lock stays over 200 ms; the source
warns then, naming the time and suggesting WAL. Nothing outside SQLite tells
which pages a commit wrote, so the locked pass has to compare the whole file.

Removing the 1 GiB temporary copy at the end stalled the writer too (240 ms on
the quiet machine: one large free makes the next ext4 journal commit, with its
discard, slow, and the writer's fsync waits for it). The copy is now shrunk 32
MiB at a time before it is unlinked. Three runs after that, idle machine
(11:31-11:34 UTC, load 0.6-0.9), 1 GiB, writer committing every 5 ms:

    WAL        longest stall  0.0 / 22.4 / 0.0 ms
    rollback   longest stall  105.5 / 105.4 / 135.8 ms, lock held 92 / 90 / 115 ms (first locked pass)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from sqlite_writer import invariant_problem, make_database  # noqa: E402

from eternia_backup.builtin import sqlite as sqlite_source  # noqa: E402
from eternia_backup.builtin.sqlite import SqliteOptions, SqliteSource  # noqa: E402
from eternia_backup.providers import EntryWriter  # noqa: E402


class _LockHeld(logging.Handler):
    """Collects how long the source held a read lock to finish a rollback-mode copy (its debug record)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.held: list[float] = []
        self.gave_up = 0  # locked passes that ran over their budget and let go

    def emit(self, record):
        if hasattr(record, "sqlite_lock_held"):
            self.held.append(record.sqlite_lock_held)
        elif "gave up" in record.getMessage():
            self.gave_up += 1


class _Checker(EntryWriter):
    """Receives the copy the source made and checks it before the source removes it."""

    def __init__(self):
        self.problem: str | None = "no file was written"

    def add_file(self, relpath, path, *, stat=None):
        self.problem = invariant_problem(path)

    def _unexpected(self, *args, **kwargs):
        raise AssertionError("the sqlite source writes one file and nothing else")

    add_directory = add_stream = add_symlink = _unexpected


def measure(directory: Path, mode: str, size_mib: float) -> dict:
    db = directory / f"bench-{mode}.db"
    t = time.monotonic()
    make_database(db, journal_mode=mode, size_mib=size_mib)
    built = time.monotonic() - t
    out = directory / f"writer-{mode}.json"
    writer = subprocess.Popen([sys.executable, str(HERE / "sqlite_writer.py"), str(db), str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        writer.stdout.readline()  # "ready"
        time.sleep(1.0)
        quiet_start = time.monotonic()  # the writer alone: what the disk costs without a copy
        time.sleep(5.0)
        quiet_end = time.monotonic()
        source = SqliteSource("bench", SqliteOptions(path=str(db)), directory)
        checker = _Checker()
        locked = _LockHeld()
        logger = logging.getLogger("eternia_backup.source.sqlite")
        logger.addHandler(locked)
        load = os.getloadavg()[0]
        start = time.monotonic()
        try:
            source.backup(checker)
        finally:
            end = time.monotonic()
            logger.removeHandler(locked)
        time.sleep(0.5)
    finally:
        writer.terminate()
        writer.wait(30)
    data = json.loads(out.read_text())
    during = [d for s, d in data["stalls"] if s <= end and s + d >= start]
    alone = [d for s, d in data["stalls"] if quiet_start <= s <= quiet_end]
    return {"mode": mode, "size_mib": round(db.stat().st_size / 2**20), "build_s": round(built, 1),
            "copy_s": round(end - start, 3), "longest_stall_ms": round(1000 * max(during, default=0.0), 1),
            "slow_commits": len(during),
            "longest_without_copy_ms": round(1000 * max(alone, default=0.0), 1), "writer_commits": data["commits"],
            "copy_ok": checker.problem is None, "problem": checker.problem,
            "lock_held_ms": round(1000 * locked.held[-1], 1) if locked.held else None, "gave_up": locked.gave_up,
            "load": round(load, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=float, default=1024)
    p.add_argument("--modes", nargs="+", default=["wal", "delete"], help="journal modes (wal, delete, truncate ...)")
    p.add_argument("--dir", default=None, help="where to build the databases (default: a temp dir)")
    p.add_argument("--step-pages", type=int, default=None, help="override STEP_PAGES of the sqlite source")
    p.add_argument("--pause", type=float, default=None, help="override STEP_PAUSE (seconds) of the sqlite source")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.step_pages is not None and hasattr(sqlite_source, "STEP_PAGES"):
        sqlite_source.STEP_PAGES = args.step_pages
    if args.pause is not None and hasattr(sqlite_source, "STEP_PAUSE"):
        sqlite_source.STEP_PAUSE = args.pause
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("eternia_backup.source.sqlite").setLevel(logging.DEBUG)  # its lock-held record
    directory = Path(tempfile.mkdtemp(prefix="eternia-sqlite-stall-", dir=args.dir))
    results = []
    try:
        for mode in args.modes:
            results.append(measure(directory, mode, args.size_mib))
            for f in directory.glob("bench-*"):
                os.unlink(f)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'mode':<8} {'size':>8} {'copy':>8} {'longest stall':>14} {'without copy':>13} {'lock held':>14} "
          f"{'slow commits':>13} {'commits':>8} {'load':>5}  copy")
    for r in results:
        held = "-" if r["lock_held_ms"] is None else f"{r['lock_held_ms']:.1f} ms ({r['gave_up'] + 1})"
        print(f"{r['mode']:<8} {r['size_mib']:>5} MiB {r['copy_s']:>7.2f}s {r['longest_stall_ms']:>11.1f} ms "
              f"{r['longest_without_copy_ms']:>10.1f} ms {held:>14} "
              f"{r['slow_commits']:>13} {r['writer_commits']:>8} {r['load']:>5.2f}  {'ok' if r['copy_ok'] else r['problem']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
