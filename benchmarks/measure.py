"""Run a whole process (or a shell pipeline) and measure it: wall seconds and peak RSS.

``run_measured(cmd)`` starts ``cmd`` in its own process group, samples every member of
its process tree every 20 ms, and returns the wall time, the largest process's peak RSS
(the kernel's VmHWM) and the tree's peak RSS (sum of the members' RSS). ``kill_running()``
ends the process group of a measurement still running (on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

_running: set[subprocess.Popen] = set()


def timed_env() -> dict[str, str]:
    """The environment of a timed run of ours: unbuffered, no config from the caller's shell, and
    bytecode written (with PYTHONDONTWRITEBYTECODE, as in some development shells, every run
    compiled the package's modules again: 0.13 s a run; a pip install compiles them once)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ETERNIA_BACKUP_CONFIG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_package(env: dict[str, str]) -> None:
    """Untimed: the package's bytecode written once, as an install would have."""
    import sys
    subprocess.run([sys.executable, "-c", "import compileall, os, eternia_backup\n"
                    "compileall.compile_dir(os.path.dirname(eternia_backup.__file__), quiet=1)"],
                   env=env, check=False, stdout=subprocess.DEVNULL)


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB; VmHWM is its peak RSS since its last exec."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def kill_running() -> None:
    """SIGTERM, then SIGKILL, the process group of every measurement still running."""
    for proc in list(_running):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                proc.wait(timeout=3)
                break
            except subprocess.TimeoutExpired:
                continue


def run_measured(cmd, *, env=None, shell: bool = False, cwd=None, ok_codes=(0,), interval: float = 0.02,
                 timeout: float | None = None) -> dict:
    """Run cmd; wall seconds, the largest process's peak RSS, and the tree's peak RSS.

    The per-process peak is the kernel's own high-water mark (VmHWM), read every
    ``interval`` seconds while the process lives. Not ``ru_maxrss`` from wait4: on Linux
    that also counts the RSS the child had before its exec, i.e. a copy of this script.
    Raises RuntimeError when the exit status is not in ``ok_codes``.
    """
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            executable="/bin/bash" if shell else None, start_new_session=True)
    _running.add(proc)
    hwm: dict[tuple[int, str], int] = {}
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            try:
                root = psutil.Process(proc.pid)
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            tree = 0
            for q in procs:
                rss, high = _status_kib(q.pid)
                tree += rss
                try:
                    key = (q.pid, q.name())
                except psutil.Error:
                    continue
                hwm[key] = max(hwm.get(key, 0), high)
            peak_tree = max(peak_tree, tree)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        seconds = time.monotonic() - start
        done.set()
        sampler.join()
        if proc.returncode is None:
            kill_running()
        _running.discard(proc)
    if proc.returncode not in ok_codes:
        shown = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
        raise RuntimeError(f"{shown} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    largest = max(hwm.items(), key=lambda kv: kv[1], default=((0, "?"), 0))
    return {"seconds": seconds, "peak_rss_mib": largest[1] / 1024, "largest_process": largest[0][1],
            "tree_peak_mib": peak_tree / 1024, "returncode": proc.returncode,
            "stdout": out.decode(errors="replace").strip(), "stderr": err.decode(errors="replace").strip()}
