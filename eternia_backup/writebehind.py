"""Writing a stream behind the writer, in a background thread.

Creating takes turns between reading files (Python and system calls) and
compressing, hashing and storing what was read (zstd, sha256 and the targets'
writes: C code and system calls that release the GIL). Done in one thread, the
reading stops whenever zstd's workers are busy and the stream waits for them;
with the compressing side moved to a thread of its own the two overlap, as the
two processes of ``tar | zstd`` do.
"""

from __future__ import annotations

import queue
import threading


class WriteBehind:
    """A writer whose writes a background thread hands to ``inner``, in order.

    At most ``depth`` writes wait (memory: ``depth`` times the largest write);
    the data written must not change afterwards (``bytes``). An error raised by
    ``inner.write`` is raised by the next ``write`` or by ``close``, in the
    writing thread; what was written after it is dropped. ``close()`` waits for
    every write to be done; ``abort()`` drops what waits and waits for the write
    in progress. After either, ``inner`` is no longer touched by the thread.
    """

    def __init__(self, inner, depth: int = 16):
        self.inner = inner
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="eternia-write-behind", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        write = self.inner.write
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            if self._dropping:
                continue
            try:
                write(item)
            except BaseException as exc:  # handed to the writer, raised there
                self._error = exc
                self._dropping = True

    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Wait until everything written is handed to ``inner``; raise the error of a write that failed."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what waits; return when the thread no longer writes to ``inner``."""
        self._dropping = True
        if not self._closed:
            self._closed = True
            self._queue.put(None)  # the thread drains without writing: there is room soon
            self._thread.join()
