"""Create the example application's state: JSON files and a SQLite database.

Usage: python make_state.py [DIR] [--files N]   (DIR defaults to ./state beside this file)
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path


def make_state(root: Path, files: int = 50, seed: int = 7) -> Path:
    rng = random.Random(seed)
    tree = root / "files"
    for sub in ("users", "orders", "settings", "empty-dir", "cache"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        doc = {"id": i, "name": f"user-{i}", "score": rng.randint(0, 1000), "tags": ["a", "b"][: i % 3]}
        (tree / "users" / f"user-{i:04d}.json").write_text(json.dumps(doc, indent=2))
    for i in range(files // 5):
        (tree / "orders" / f"order-{i:04d}.json").write_text(json.dumps({"order": i, "total": rng.random() * 100}))
    (tree / "settings" / "préférences-ünïcode.json").write_text(json.dumps({"theme": "dark", "lang": "fr"}))
    (tree / "settings" / "scratch.tmp").write_text("not worth keeping")
    (tree / "cache" / "blob.bin").write_bytes(bytes(rng.getrandbits(8) for _ in range(1024)))
    db = root / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT, payload TEXT)")
    conn.executemany("INSERT INTO events (kind, payload) VALUES (?, ?)",
                     [(rng.choice(["login", "order", "logout"]), json.dumps({"n": i})) for i in range(files * 10)])
    conn.commit()
    conn.close()
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", nargs="?", default=str(Path(__file__).parent / "state"))
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    print(make_state(Path(args.dir), args.files))
