"""Background threads that can be waited for after a Ctrl-C.

On CPython 3.11 (seen with 3.11.7), a ``Thread.join()`` interrupted by
KeyboardInterrupt (Ctrl-C, or the CLI's SIGTERM) marks the thread as ended
while it still runs: every later ``join()`` returns at once. Cleanup that
waits for a worker before closing or deleting what it writes to (an archive
being encrypted, a pipe into tar) would then not wait. A :class:`Worker` is
waited for through an Event that its thread sets when it really ends.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class Worker:
    """A daemon thread running ``target(*args)``, with a ``join`` that a Ctrl-C cannot spoil."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str):
        self._ended = threading.Event()

        def run() -> None:
            try:
                target(*args)
            finally:
                self._ended.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the thread has ended (True), or ``timeout`` seconds passed (False)."""
        return self._ended.wait(timeout)

    def is_alive(self) -> bool:
        return not self._ended.is_set()
