"""Progress of long work: what the engine reports, and the terminal bar that shows it.

The engine (backup, restore, verify, download) reports through the small
:class:`Progress` interface: ``phase()`` when a pass over the data starts (with
its total in bytes when known), ``advance()`` per chunk, ``file_done()`` per
archive member. :data:`NO_PROGRESS` ignores everything, so library callers pay
nothing. :class:`TerminalProgress` draws a tqdm bar on stderr: bytes done of
the total, rate, time left and files done. The CLI uses it only when stderr is
a terminal and ``-q``/``--json`` are not given.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class Progress:
    """Receives progress reports; the base class ignores them."""

    #: Whether totals are worth computing (a walk of the sources costs time).
    wants_totals = False

    def phase(self, name: str, total: int | None) -> None:
        """A new pass over the data begins (``total`` bytes, None when unknown)."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes of the current pass are done."""

    def file_done(self) -> None:
        """One more archive member was written or read."""

    def close(self) -> None:
        """The work ended (successfully or not): clear whatever was drawn."""


NO_PROGRESS = Progress()


class CallbackProgress(Progress):
    """Adapts a plain ``callback(nbytes)`` (the 0.1 API of ``create_backup``)."""

    def __init__(self, callback: Callable[[int], None]):
        self.callback = callback

    def advance(self, nbytes: int) -> None:
        self.callback(nbytes)


def as_progress(value: "Progress | Callable[[int], None] | None") -> Progress:
    """A Progress for whatever a caller passed: a Progress, a callable, or None."""
    if value is None:
        return NO_PROGRESS
    if isinstance(value, Progress):
        return value
    return CallbackProgress(value)


class TerminalProgress(Progress):
    """A tqdm bar on a terminal, and the totals for the summary line."""

    wants_totals = True

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.files = 0
        self.started = time.monotonic()
        self._last_postfix = 0.0

    def phase(self, name: str, total: int | None) -> None:
        import shutil

        from tqdm import tqdm

        if self.bar is not None:
            self.bar.close()
        # A terminal that reports 0 columns (a fresh pty, `script`) would get no bar at all.
        width = shutil.get_terminal_size((80, 24)).columns
        # ``leave=False``: the bar disappears and the one summary line stays.
        self.bar = tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                        file=self.stream, leave=False, ncols=width, mininterval=0.2)

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self) -> None:
        self.files += 1
        now = time.monotonic()
        # Formatting the postfix costs more than a file of a few bytes: at most 5 times a second.
        if self.bar is not None and now - self._last_postfix > 0.2:
            self._last_postfix = now
            self.bar.set_postfix_str(f"{self.files} files", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class ProgressReader:
    """A binary reader that reports every byte read to a Progress."""

    def __init__(self, inner, progress: Progress):
        self.inner = inner
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.progress.advance(len(data))
        return data

    def readinto(self, b) -> int:
        n = self.inner.readinto(b)
        self.progress.advance(n or 0)
        return n

    def readable(self) -> bool:
        return True

    def __getattr__(self, name):  # seek, tell, close ... of the file underneath
        return getattr(self.inner, name)
