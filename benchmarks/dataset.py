#!/usr/bin/env python3
"""A deterministic application state to back up: same seed and size, same bytes.

``generate_state(root, size_bytes)`` writes, per GiB of ``size``, a mix measured on a
typical application (see /work/shared/PERFORMANCE-NOTES.md):

* ~20,000 small JSON documents of 1-16 KiB in 100 directories (~16%),
* ~225 medium files, half random, half compressible text (~30%),
* one large, poorly compressible binary (~29%: 85% random MiB blocks, 15% zero),
* one log of timestamped request lines (~20%),
* one SQLite database (WAL, checkpointed; ~5%),

under ``root/files`` and ``root/app.db``. ``generate_tiny(root, n)`` writes ``n`` files of
1-200 bytes, 1,000 per directory (300,000 in a few seconds).

Random bytes come from SHAKE-128 of (seed, label, counter), not os.urandom: they are
incompressible yet repeatable, and no two blocks are alike (so restic and borg cannot
deduplicate what a real application would not repeat either).

    python benchmarks/dataset.py /tmp/state --size 1G
    python benchmarks/dataset.py /tmp/tiny --tiny 300000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

KIB, MIB, GIB = 1024, 1024 ** 2, 1024 ** 3
SHARE = {"small": 0.16, "medium": 0.30, "binary": 0.29, "log": 0.20, "sqlite": 0.05}
SMALL_PER_GIB = 20_000
MEDIUM_PER_GIB = 225
TINY_PER_DIR = 1000

WORDS = ["user", "order", "session", "token", "amount", "status", "ok", "pending", "eu-west",
         "checkout", "cart", "refund", "shipping", "alpha", "beta", "gamma", "delta"]


def parse_size(text: str) -> int:
    """'1G', '256M', '512K', '1048576' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": KIB, "M": MIB, "G": GIB, "T": GIB * 1024}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "KMGT" else t) * mult)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Bytes:
    """Deterministic incompressible bytes: SHAKE-128 of (seed, label, counter)."""

    def __init__(self, seed: int, label: str):
        self.prefix = f"{seed}:{label}:".encode()
        self.counter = 0

    def take(self, n: int) -> bytes:
        self.counter += 1
        return hashlib.shake_128(self.prefix + str(self.counter).encode()).digest(n)


def _text_pool(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        w = rng.choice(WORDS) if rng.random() < 0.7 else f"{rng.getrandbits(32):08x}"
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def generate_state(root: Path, size: int, seed: int = 7) -> dict:
    """Write the mixed state of about ``size`` bytes under root/files and root/app.db."""
    rng = random.Random(seed)
    rand = Bytes(seed, "state")
    files = root / "files"
    made = {"small_files": 0, "medium_files": 0, "bytes": 0}
    pool = _text_pool(rng, 4 * MIB)  # text is sliced from here: fast, and compresses like text
    gib = size / GIB

    def text(n: int) -> str:
        start = rng.randrange(0, len(pool) - n - 1)
        return pool[start:start + n]

    # many small JSON documents, 1-16 KiB, in 100 directories
    n_small = max(1, round(SMALL_PER_GIB * gib))
    mean = SHARE["small"] * size / n_small
    for d in range(min(100, n_small)):
        (files / "docs" / f"{d:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n_small):
        n = int(min(16 * KIB, max(KIB, rng.uniform(0.12, 1.88) * mean)))
        doc = {"id": i, "user": f"user-{rng.randrange(10**6)}", "score": round(rng.random(), 6),
               "tags": rng.sample(["a", "b", "c", "d", "e"], 2)}
        doc["notes"] = text(max(0, n - len(json.dumps(doc)) - 12))
        data = json.dumps(doc).encode()
        (files / "docs" / f"{i % 100:02d}" / f"doc-{i:06d}.json").write_bytes(data)
        made["bytes"] += len(data)
    made["small_files"] = n_small

    # medium files, half random, half compressible text
    n_medium = max(2, round(MEDIUM_PER_GIB * gib))
    each = int(SHARE["medium"] * size / n_medium)
    (files / "media").mkdir(parents=True)
    (files / "reports").mkdir(parents=True)
    for i in range(n_medium):
        if i % 2:
            path, data = files / "media" / f"blob-{i:04d}.bin", rand.take(each)
        else:
            path = files / "reports" / f"report-{i:04d}.txt"
            block = text(min(MIB, len(pool) // 2)).encode()
            data = (f"report {i}\n".encode() + block * (each // len(block) + 1))[:each]
        path.write_bytes(data)
        made["bytes"] += len(data)
    made["medium_files"] = n_medium

    # one large binary, mostly random (85% random MiB blocks, 15% zero runs)
    big = int(SHARE["binary"] * size)
    with open(files / "model.bin", "wb") as f:
        left = big
        while left > 0:
            n = min(MIB, left)
            f.write(rand.take(n) if rng.random() < 0.85 else bytes(n))
            left -= n
    made["bytes"] += big

    # a log: 16 distinct 1 MiB blocks of request lines, picked at random
    blocks = []
    for _ in range(16):
        lines, n = [], 0
        while n < MIB:
            line = (f"2024-06-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                    f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z {rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} "
                    f"req={rng.getrandbits(48):012x} path=/api/{rng.choice(['orders', 'users', 'cart'])}/"
                    f"{rng.randint(1, 99999)} status={rng.choice([200, 200, 200, 201, 404, 500])} ms={rng.randint(1, 900)}\n")
            lines.append(line)
            n += len(line)
        blocks.append("".join(lines).encode()[:MIB])
    log_size = int(SHARE["log"] * size)
    with open(files / "app.log", "wb") as f:
        written = 0
        while written < log_size:
            chunk = blocks[rng.randrange(len(blocks))][: log_size - written]
            f.write(chunk)
            written += len(chunk)
    made["bytes"] += log_size

    # a SQLite database of events with JSON payloads
    db = root / "app.db"
    db_target = int(SHARE["sqlite"] * size)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, kind TEXT, payload TEXT)")
    row = 0
    while db.stat().st_size < db_target:
        batch = [(f"2024-06-01T00:00:{row + k}", rng.choice(["login", "order", "logout"]),
                  json.dumps({"n": row + k, "blob": rand.take(150).hex(), "text": text(200)}))
                 for k in range(2000)]
        conn.executemany("INSERT INTO events (ts, kind, payload) VALUES (?, ?, ?)", batch)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        row += len(batch)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm files left beside it
    conn.close()
    made["sqlite_rows"] = row
    made["bytes"] += db.stat().st_size
    made["files"] = n_small + n_medium + 3
    return made


def generate_tiny(root: Path, n: int, seed: int = 7) -> dict:
    """``n`` files of 1-200 bytes, TINY_PER_DIR per directory, under root."""
    rng = random.Random(seed)
    pool = _text_pool(rng, 64 * KIB).encode()
    total = 0
    d = root
    for i in range(n):
        if i % TINY_PER_DIR == 0:
            d = root / f"d{i // TINY_PER_DIR:04d}"
            d.mkdir(parents=True)
            dirpath = str(d)
        size = rng.randint(1, 200)
        start = rng.randrange(0, len(pool) - size)
        fd = os.open(f"{dirpath}/f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, pool[start:start + size])
        os.close(fd)
        total += size
    return {"files": n, "bytes": total, "directories": (n + TINY_PER_DIR - 1) // TINY_PER_DIR}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="directory to create (must not exist)")
    p.add_argument("--size", default="1G", help="size of the state (default 1G)")
    p.add_argument("--tiny", type=int, default=None, help="instead: N files of 1-200 bytes")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    if a.root.exists():
        p.error(f"{a.root} exists")
    t0 = time.monotonic()
    made = generate_tiny(a.root, a.tiny, a.seed) if a.tiny is not None else \
        generate_state(a.root, parse_size(a.size), a.seed)
    made["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
