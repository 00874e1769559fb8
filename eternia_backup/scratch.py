"""Private temporary files: in the state directory, never in /tmp, and never left behind.

A backup needs temporary space (a consistent copy of a SQLite database, a
spool, a restore's staging of a dump). In an application that embeds the
scheduler, a process killed during a backup must not leave a copy of the
application's data in a shared, world-listable place. So every temporary file
and directory of an operation is created

* under ``<state dir>/tmp/`` (0700), beside the lock and status files of the
  storage it belongs to (``/tmp`` only for a source used outside a manager);
* private: directories 0700, files 0600 (whatever the umask);
* named with the host and the pid that own it (``sqlite-4242@web-1~x1y2z3``),
  so that :func:`remove_stale` at the start of the next operation removes
  exactly what a dead process left: never what a live process (another
  scheduler or CLI sharing the state directory) still uses.

Unnamed files (:func:`temporary_file`) use ``O_TMPFILE`` where the kernel has
it: they vanish with the process whatever killed it.

The manager sets the place for the duration of an operation (:func:`using`);
sources and restore plans ask for :func:`make_dir` / :func:`temporary_file`
(``eternia_backup.api.scratch_dir`` and ``scratch_file``) from the thread that
runs them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from .fsutil import make_private_dirs, remove_tree

log = logging.getLogger("eternia_backup.scratch")

#: The current operation's scratch root (``<state dir>/tmp``); None outside an operation.
ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("eternia_scratch_root", default=None)

#: An entry of another host (a state directory on a shared volume) is removed only after this long.
FOREIGN_GRACE_SECONDS = 7 * 24 * 3600

_NAME = re.compile(r"^(?P<what>[A-Za-z0-9_-]+)-(?P<pid>\d+)@(?P<host>[^~/]+)~")


def _host() -> str:
    return (socket.gethostname().split(".")[0] or "host").replace("~", "-").replace("/", "-")


def prefix(what: str) -> str:
    """The start of a scratch entry's name: what it is, this pid and host."""
    what = re.sub(r"[^A-Za-z0-9_-]", "-", what) or "tmp"
    return f"{what}-{os.getpid()}@{_host()}~"


def root_for(state_dir: Path) -> Path:
    """The scratch root of a state directory."""
    return Path(state_dir) / "tmp"


def current_root() -> Path:
    """Where temporary things go now: the operation's scratch root, else the system's temp dir."""
    root = ROOT.get()
    if root is None:
        return Path(tempfile.gettempdir())
    make_private_dirs(root)
    return root


@contextlib.contextmanager
def using(root: Path) -> Iterator[Path]:
    """Make ``root`` (0700) the place of temporary files for the code run inside the block."""
    make_private_dirs(root)
    os.chmod(root, 0o700)
    token = ROOT.set(root)
    try:
        yield root
    finally:
        ROOT.reset(token)


def make_dir(what: str, root: Path | None = None) -> Path:
    """A new private (0700) directory for this process, for a source's or restore plan's temporary files.

    It is made in the operation's scratch space, ``<state dir>/tmp/`` (the
    system's temporary directory for a source used outside a manager), named
    with this process's pid and host. The caller removes it when done
    (:func:`eternia_backup.api.remove_tree`); one left by a process that died
    is removed at the start of the next backup or restore. Call it from the
    thread that runs ``backup`` or ``prepare``.
    """
    return Path(tempfile.mkdtemp(prefix=prefix(what), dir=root or current_root()))


def temporary_file(what: str = "spool", root: Path | None = None) -> IO[bytes]:
    """An unnamed private (0600) read/write binary file in the scratch space, gone when closed.

    Where the kernel supports it the file never has a name (``O_TMPFILE``), so
    it goes with the process however it ends. Same place as :func:`make_dir`.
    """
    return tempfile.TemporaryFile(prefix=prefix(what), dir=root or current_root())


def owner(name: str) -> tuple[str, int] | None:
    """(host, pid) that made a scratch entry, from its name; None for a name not made here."""
    m = _NAME.match(name)
    return (m["host"], int(m["pid"])) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _started(pid: int) -> float | None:
    """When process ``pid`` started (POSIX seconds), from /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def _newest_mtime(path: Path) -> float:
    st = path.lstat()
    newest = st.st_mtime
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            for child in os.scandir(path):
                with contextlib.suppress(OSError):
                    newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
    return newest


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """True when no live process owns the scratch entry ``path``.

    Same host: its pid is dead, or is now another process (started after the
    entry was made). Another host (a shared volume): untouched for
    :data:`FOREIGN_GRACE_SECONDS`. A name not made here is never stale.
    """
    who = owner(path.name)
    if who is None:
        return False
    host, pid = who
    now = time.time() if now is None else now
    try:
        made = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if host != _host():
        return now - _newest_mtime(path) > FOREIGN_GRACE_SECONDS
    if pid == os.getpid():
        return False  # ours: another thread of this process may be using it
    if not pid_alive(pid):
        return True
    started = _started(pid)
    return started is not None and started > made + 1.0  # the pid was reused since


def remove_stale(root: Path) -> list[Path]:
    """Remove what dead processes left under ``root``; the paths removed."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot list temporary files in %s: %s", root, exc)
        return []
    for entry in entries:
        path = Path(entry.path)
        if not is_stale(path):
            continue
        try:
            remove_tree(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the temporary %s left by a process that ended: %s", path, exc)
            continue
        log.info("removed the temporary %s left by process %s that ended", path, "@".join(map(str, owner(path.name)[::-1])))
        removed.append(path)
    return removed
