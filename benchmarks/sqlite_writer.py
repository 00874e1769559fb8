#!/usr/bin/env python3
"""An application's writer for a SQLite database: commits until SIGTERM, timing each commit.

Used by ``benchmarks/sqlite_stall.py`` and the live-SQLite tests. Every commit
inserts one row into ``items`` and increments ``counter.n`` in one transaction,
so any consistent copy satisfies ``count(items) == counter.n``.

    python sqlite_writer.py DB OUT.json [--interval 0.005] [--blob 4000]

``make_database`` creates such a database (``items``, ``counter``) of a given size.
On SIGTERM the writer writes ``{"commits", "max_stall", "stalls"}`` to OUT.json,
where ``stalls`` lists ``[start, seconds]`` (time.monotonic, shared by processes on
Linux) of commits slower than 20 ms, and exits 0. A commit that fails is an error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import time


def make_database(path, *, journal_mode: str, size_mib: float, blob: int = 4000) -> None:
    """A database in ``journal_mode`` (wal, delete ...) of about ``size_mib`` MiB."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, payload BLOB)")
    conn.execute("CREATE TABLE counter(n INTEGER NOT NULL)")
    rows = max(1, int(size_mib * 1024 * 1024 / (blob + 100)))
    conn.execute("BEGIN")
    conn.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?) "
                 "INSERT INTO items(payload) SELECT randomblob(?) FROM r", (rows, blob))
    conn.execute("INSERT INTO counter(n) VALUES (?)", (rows,))
    conn.execute("COMMIT")
    if journal_mode.lower() == "wal":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def invariant_problem(path) -> str | None:
    """None when the copy at ``path`` is sound and ``count(items) == counter.n``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            return f"integrity_check: {check[:3]}"
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        n = conn.execute("SELECT n FROM counter").fetchone()[0]
        return None if count == n else f"count(items) = {count} but counter.n = {n}"
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("out")
    p.add_argument("--interval", type=float, default=0.005, help="pause between commits (seconds)")
    p.add_argument("--blob", type=int, default=4000, help="bytes per inserted row")
    args = p.parse_args()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    conn = sqlite3.connect(args.db, isolation_level=None, timeout=120)
    commits, max_stall, stalls = 0, 0.0, []
    print("ready", flush=True)
    while not stop["now"]:
        start = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO items(payload) VALUES (randomblob(?))", (args.blob,))
        conn.execute("UPDATE counter SET n = n + 1")
        conn.execute("COMMIT")
        took = time.monotonic() - start
        commits += 1
        max_stall = max(max_stall, took)
        if took > 0.02:
            stalls.append([start, took])
        time.sleep(args.interval)
    conn.close()
    with open(args.out, "w") as f:
        json.dump({"commits": commits, "max_stall": max_stall, "stalls": stalls}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
