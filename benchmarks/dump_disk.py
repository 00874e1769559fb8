"""Peak extra disk while a 1 GiB dump is backed up: what lands outside the backup storage.

A ``command`` source writes ``--size`` bytes of SHAKE-128 output (incompressible,
deterministic) to stdout, as a database dump tool would; ``eternia-backup create``
archives it to local storage. While it runs, the sizes of everything under TMPDIR,
the state directory and the dump's working directory are polled every 5 ms (the
places a spool could land), as well as the largest open file of the process tree
outside the storage directory. Prints wall time, peak RSS and those peaks.

    .venv/bin/python benchmarks/dump_disk.py            # 1 GiB
    .venv/bin/python benchmarks/dump_disk.py --size 256M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_measured  # noqa: E402

GENERATOR = """import hashlib, sys
n = {size}
out = sys.stdout.buffer
i = 0
while n > 0:
    block = hashlib.shake_128(str(i).encode()).digest(min(n, 1 << 20))
    out.write(block)
    n -= len(block)
    i += 1
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def open_files_outside(pid_root: int, storage: Path) -> int:
    """The largest regular file the process tree holds open outside ``storage`` (an unlinked spool counts)."""
    import psutil

    largest = 0
    try:
        procs = [psutil.Process(pid_root)] + psutil.Process(pid_root).children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            for f in p.open_files():
                if str(storage) in f.path:
                    continue
                try:
                    largest = max(largest, os.stat(f"/proc/{p.pid}/fd/{f.fd}").st_size)
                except OSError:
                    pass
        except psutil.Error:
            continue
    return largest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="dump size (default 1G)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="eternia-dump-bench-"))
    try:
        tmp, state, storage = work / "tmp", work / "state", work / "backups"
        for d in (tmp, state):
            d.mkdir()
        (work / "gen.py").write_text(GENERATOR.format(size=size))
        cfg = work / "eternia-backup.yaml"
        cfg.write_text(yaml.safe_dump({"backup": {
            "name": "dump", "storage_path": str(storage), "state_dir": str(state),
            "sources": [{"type": "command", "name": "db", "command": f"{sys.executable} gen.py",
                         "filename": "db.dump"}]}}))
        env = {**os.environ, "TMPDIR": str(tmp)}
        exe = Path(sys.executable).with_name("eternia-backup")
        peaks = {"tmpdir": 0, "state_dir": 0, "open_file_outside_storage": 0}
        stop = threading.Event()
        pids: list[int] = []

        def poll() -> None:
            while not stop.is_set():
                peaks["tmpdir"] = max(peaks["tmpdir"], tree_bytes(tmp))
                peaks["state_dir"] = max(peaks["state_dir"], tree_bytes(state))
                if pids:
                    peaks["open_file_outside_storage"] = max(peaks["open_file_outside_storage"],
                                                             open_files_outside(pids[0], storage))
                time.sleep(0.005)

        import psutil

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        finder = threading.Thread(target=lambda: pids.extend(
            [p.pid for p in _wait_for(lambda: [q for q in psutil.process_iter(["cmdline"])
                                               if q.info["cmdline"] and str(cfg) in " ".join(q.info["cmdline"])])]),
            daemon=True)
        finder.start()
        result = run_measured([str(exe), "--config", str(cfg), "create", "--json"], env=env, cwd=work)
        stop.set()
        poller.join()
        stored = json.loads(result["stdout"])
        figures = {
            "dump_bytes": size, "seconds": round(result["seconds"], 2),
            "peak_rss_mib": round(result["peak_rss_mib"], 1),
            "archive_bytes": stored["size"],
            "peak_tmpdir_bytes": peaks["tmpdir"], "peak_state_dir_bytes": peaks["state_dir"],
            "largest_open_file_outside_storage_bytes": peaks["open_file_outside_storage"],
            "load": os.getloadavg()[0],
        }
        print(json.dumps(figures, indent=2))
        outside = max(peaks["tmpdir"] + peaks["state_dir"], peaks["open_file_outside_storage"])
        print(f"peak extra disk outside the backup storage: {outside / 2**20:.1f} MiB "
              f"for a {size / 2**30:.2f} GiB dump (goal: <= 64 MiB)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_for(find, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = find()
        if found:
            return found[:1]
        time.sleep(0.01)
    return []


if __name__ == "__main__":
    sys.exit(main())
