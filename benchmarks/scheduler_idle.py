#!/usr/bin/env python3
"""CPU used by ``eternia-backup run`` between runs (issue 14: "the scheduler idle: no measurable CPU").

Starts the real CLI's scheduler on a throw-away config whose next run is months
away (``catch_up: false``), lets it settle, then reads its CPU time from
``/proc/<pid>/stat`` at the start and the end of a quiet window and prints the
difference, with the wake-ups seen (voluntary context switches). Linux only.

    python benchmarks/scheduler_idle.py              # a 60 s window
    python benchmarks/scheduler_idle.py --seconds 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).with_name("eternia-backup"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def wakeups(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def measure(seconds: float, settle: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="eternia-idle-"))
    try:
        (work / "data").mkdir()
        (work / "data" / "state.json").write_text('{"idle": true}')
        config = work / "eternia-backup.yaml"
        # Midnight on 1 January: never inside the window (unless run then).
        config.write_text("backup:\n  schedule:\n    cron: '0 0 1 1 *'\n    catch_up: false\n")
        env = {**os.environ, "XDG_STATE_HOME": str(work / "state")}
        proc = subprocess.Popen([CLI, "--config", str(config), "run"], env=env, cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(settle)
            if proc.poll() is not None:
                raise SystemExit(f"the scheduler exited with {proc.returncode} before the window")
            cpu0, wake0, t0 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, wake1, t1 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return {"window_s": round(t1 - t0, 1), "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 4), "wakeups": wake1 - wake0,
                "clock_tick_s": 1 / os.sysconf("SC_CLK_TCK")}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the quiet window (default 60)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to let start-up finish first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = measure(args.seconds, args.settle)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"scheduler idle for {result['window_s']} s: {result['cpu_s']} s CPU "
              f"({result['cpu_percent']} %), {result['wakeups']} wake-ups "
              f"(CPU time is counted in ticks of {result['clock_tick_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
