"""The main job on the embedded example: back up, list, verify, restore, compare.

Runs the real CLI (``python -m eternia_backup``) against the example app's config
in a fresh working directory, then checks that the restored state equals the
original: every file's bytes, mode and mtime, the empty directory, and every row
of the SQLite database.

Usage: python examples/demo.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "app"))
from make_state import make_state  # noqa: E402


def run(*args: str, config: Path, env: dict | None = None, echo: bool = True) -> str:
    cmd = [sys.executable, "-m", "eternia_backup", "--config", str(config), *args]
    if echo:
        print("$ eternia-backup " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if echo:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo failed: `eternia-backup {' '.join(args)}` exited with {proc.returncode}")
    return proc.stdout


def tree_differences(a: Path, b: Path, excluded: set[str]) -> list[str]:
    problems = []
    for root, dirs, files in os.walk(a):
        rel = Path(root).relative_to(a)
        dirs[:] = [d for d in dirs if d not in excluded]
        for name in dirs + [f for f in files if not any(f.endswith(e.lstrip("*")) for e in excluded if e.startswith("*"))]:
            src, dst = Path(root) / name, b / rel / name
            if not dst.exists():
                problems.append(f"missing: {rel / name}")
                continue
            s, d = src.stat(), dst.stat()
            if (s.st_mode & 0o7777) != (d.st_mode & 0o7777):
                problems.append(f"mode differs: {rel / name}")
            if int(s.st_mtime) != int(d.st_mtime):
                problems.append(f"mtime differs: {rel / name}")
            if src.is_file() and not filecmp.cmp(src, dst, shallow=False):
                problems.append(f"content differs: {rel / name}")
    return problems


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def run_demo(work: Path, env: dict | None = None, restore_from: str | None = None) -> bool:
    """Back up the example app in ``work``, list, verify, restore, compare. True if equal."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "eternia-backup.yaml"
    shutil.copy(HERE / "app" / "eternia-backup.yaml", config)
    make_state(work / "state")
    print(f"example application state in {work / 'state'}")

    location = run("create", config=config, env=env).strip()
    run("list", config=config, env=env)
    copies = json.loads(run("list", "--json", config=config, env=env, echo=False))["backups"][0]["copies"]
    run("verify", "--all", config=config, env=env)
    source = location
    if restore_from is not None:
        source = next(c["url"] for c in copies if c["url"].startswith(restore_from))
    restored = work / "restored"
    run("restore", source, "--to", str(restored), "--yes", config=config, env=env)

    problems = tree_differences(work / "state" / "files", restored / "state", {"cache", "*.tmp"})
    if rows(work / "state" / "app.db") != rows(restored / "database" / "app.db"):
        problems.append("database rows differ")
    if problems:
        print("RESTORED STATE DIFFERS:\n  " + "\n  ".join(problems))
        return False
    print(f"OK: the restored state equals the original (restored from {source})")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where to put the example app (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="eternia-demo-")).absolute()
    ok = run_demo(work)
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
