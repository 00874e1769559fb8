"""Never two runs at once on one host: an flock()ed lock file beside local storage.

The kernel drops an flock when its process dies, so a lock left by a killed
process is taken over at once and a live one never is; the PID written into the
file is only there to say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from pathlib import Path

from .errors import EXIT_LOCKED, EterniaBackupError
from .fsutil import make_private_dirs


class BackupInProgress(EterniaBackupError):
    """Another backup or cleanup of the same storage is running; this one was skipped."""

    exit_code = EXIT_LOCKED
    code = "locked"


class LocalLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._owner: int | None = None

    def acquire(self, what: str = "backup") -> "LocalLock":
        """Take the lock or raise BackupInProgress naming the holder."""
        make_private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise BackupInProgress(f"another backup or cleanup is running ({holder}); this {what} was skipped") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}".encode())
        self._fd = fd
        self._owner = threading.get_ident()
        return self

    @property
    def held(self) -> bool:
        """True while the calling thread holds the lock."""
        return self._fd is not None and self._owner == threading.get_ident()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._owner = None

    def __enter__(self) -> "LocalLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()
