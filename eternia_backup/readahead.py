"""Reading a stream ahead in a background thread.

Restoring takes turns between decompressing (zstd, age, sha256: C code that
releases the GIL) and writing files (system calls that release it too). Done
in one thread, the two add up; with the decoding moved to a thread of its own
they overlap on a second core, as ``tar -I zstd`` overlaps its two processes.
"""

from __future__ import annotations

import queue
import threading

from .threads import Worker

_CHUNK = 1024 * 1024


class ReadAhead:
    """A reader over ``inner`` that a background thread fills ``chunk`` bytes at a time.

    At most ``depth`` chunks are held (memory: ``depth * chunk``). An error
    raised by ``inner`` is raised by the ``read`` that reaches it, in the
    reading thread. ``close()`` stops the thread and waits for it; after it,
    ``inner`` is no longer read and may be used by the caller again.
    """

    def __init__(self, inner, chunk: int = _CHUNK, depth: int = 4):
        self.inner = inner
        self.chunk = chunk
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._done = False
        self._thread = Worker(self._fill, name="eternia-read-ahead")

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.inner.read(self.chunk)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next(self) -> bool:
        """Take the next chunk into the buffer; False at the end of the stream."""
        if self._done:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            self._thread.join()
            raise item
        if not item:
            self._done = True
            self._thread.join()
            return False
        self._buffer = memoryview(item)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buffer)]
            self._buffer = memoryview(b"")
            while self._next():
                parts.append(bytes(self._buffer))
            self._buffer = memoryview(b"")
            return b"".join(parts)
        if not self._buffer and not self._next():
            return b""
        data = self._buffer[:n]
        self._buffer = self._buffer[len(data):]
        # a whole chunk is handed on as it is, without a copy
        return data.obj if len(data) == len(data.obj) else data.tobytes()

    def readinto(self, b) -> int:
        if not self._buffer and not self._next():
            return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put() waiting for room
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._done = True
        self._buffer = memoryview(b"")
