"""Writing many small files on a few threads.

Restoring 20,000 small files is mostly system calls (open, write, chmod, utime,
close), which release the GIL: on threads they overlap each other and the
archive's decoding, as they could not on the thread that reads the archive.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable


class WritePool:
    """Runs ``fn(*args)`` on ``workers`` threads, holding at most ``max_bytes`` of queued data.

    The first error a write raised is raised again in the caller's thread, by
    the next :meth:`submit` or by :meth:`wait_all`; once one failed, no more
    writes start. :meth:`close` cancels what has not started and waits for the
    rest, so nothing writes after it returns.
    """

    def __init__(self, workers: int = 2, max_bytes: int = 32 * 1024 * 1024, max_pending: int = 512):
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="eternia-write")
        self._pending: collections.deque[tuple[concurrent.futures.Future, int]] = collections.deque()
        self._held = 0
        self.max_bytes = max_bytes
        self.max_pending = max_pending

    def submit(self, fn: Callable, nbytes: int, *args) -> None:
        self._reap(block=False)
        while self._pending and (self._held + nbytes > self.max_bytes or len(self._pending) >= self.max_pending):
            self._reap_one()
        self._pending.append((self._pool.submit(fn, *args), nbytes))
        self._held += nbytes

    def _reap(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][0].done()):
            self._reap_one()

    def _reap_one(self) -> None:
        future, nbytes = self._pending.popleft()
        self._held -= nbytes
        try:
            future.result()
        except BaseException:
            self.close()
            raise

    def wait_all(self) -> None:
        """Wait for every write; raises the first that failed."""
        self._reap(block=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._held = 0
