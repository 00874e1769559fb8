"""Dumps of unknown size, archived as they are produced: split into parts, joined again on restore.

A tar member needs its size before its data, and a dump command's output has
none until it ends. Rather than spooling the whole dump to disk first, a
source may call ``add_stream(relpath, stream, None, ...)``: the framework reads
the stream in parts of :data:`PART_SIZE` (16 MiB) held in one reused buffer. A dump that
fits in one part is one ordinary member ``relpath``; a longer one is the
members ``relpath.eternia-part-00001``, ``-00002`` ... in order, which a restore
joins back into ``relpath`` (by hand: ``cat relpath.eternia-part-* > relpath``).
No temporary file is written at all.

Incremental backups use the same idea for a file that only grew (a log): the
bytes added since the parent are the member ``relpath.eternia-append-<offset>``
(see :mod:`eternia_backup.increments`), which a restore appends to the file
restored from the chain's earlier archives, whose size is exactly ``offset``.
"""

from __future__ import annotations

import re

#: bytes of a dump held in memory at once (one part; one buffer, reused)
PART_SIZE = 16 * 1024 * 1024
PART_SUFFIX = ".eternia-part-"
_PART_RE = re.compile(r"^(?P<base>.+)" + re.escape(PART_SUFFIX) + r"(?P<n>\d{5})$")


def part_name(relpath: str, number: int) -> str:
    return f"{relpath}{PART_SUFFIX}{number:05d}"


def split_part(relpath: str) -> tuple[str, int] | None:
    """(the dump's path, part number) for a part's name, else None."""
    m = _PART_RE.match(relpath)
    return (m["base"], int(m["n"])) if m else None


APPEND_SUFFIX = ".eternia-append-"
_APPEND_RE = re.compile(r"^(?P<base>.+)" + re.escape(APPEND_SUFFIX) + r"(?P<offset>\d+)$")


def append_name(relpath: str, offset: int) -> str:
    """The member holding what was appended to ``relpath`` after its first ``offset`` bytes."""
    return f"{relpath}{APPEND_SUFFIX}{offset}"


def split_append(relpath: str) -> tuple[str, int] | None:
    """(the file's path, offset) for an appended part's name, else None."""
    m = _APPEND_RE.match(relpath)
    return (m["base"], int(m["offset"])) if m else None


def logical_path(relpath: str) -> str:
    """The path a member restores to: a part of a dump or an appended part counts as its file."""
    piece = split_part(relpath) or split_append(relpath)
    return piece[0] if piece is not None else relpath


class _Fill:
    """Reads a stream into one reused buffer, part by part (no copy per part)."""

    def __init__(self, stream, size: int):
        self.stream = stream
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.carry = b""  # a byte read ahead to tell whether more follows

    def next_part(self) -> int:
        """Fill the buffer; the number of bytes in it (fewer than its size only at the end)."""
        filled = len(self.carry)
        self.view[:filled] = self.carry
        self.carry = b""
        readinto = getattr(self.stream, "readinto", None)
        while filled < len(self.buf):
            if readinto is not None:
                n = readinto(self.view[filled:])
            else:
                data = self.stream.read(len(self.buf) - filled)
                n = len(data)
                self.view[filled:filled + n] = data
            if not n:
                break
            filled += n
        return filled

    def more(self) -> bool:
        """Whether the stream has more after a full part (reads one byte ahead)."""
        self.carry = self.stream.read(1)
        return bool(self.carry)


class _ViewReader:
    """Reads the first ``size`` bytes of a memoryview, as the archiver's copy loop wants them."""

    def __init__(self, view: memoryview, size: int):
        self.view = view[:size]
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else min(len(self.view), self.pos + n)
        data = bytes(self.view[self.pos:end])
        self.pos = end
        return data


class PartSplitter:
    """An EntryWriter proxy in front of an archive section: ``add_stream`` with ``size=None`` goes in parts."""

    def __init__(self, inner, part_size: int = PART_SIZE):
        self._inner = inner
        self._part_size = part_size
        self.exact_metadata = getattr(inner, "exact_metadata", False)
        self.str_paths = getattr(inner, "str_paths", False)
        # called per entry: bound here, not looked up through __getattr__ each time
        self.add_file, self.add_directory, self.add_symlink = inner.add_file, inner.add_directory, inner.add_symlink

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def add_stream(self, relpath, stream, size, *, mode=0o600, mtime, **extra):
        if size is not None:
            return self._inner.add_stream(relpath, stream, size, mode=mode, mtime=mtime, **extra)
        fill = _Fill(stream, self._part_size)
        at_end = getattr(stream, "at_end", None)  # CommandOutput: did the dump succeed? (before the last part)
        n = fill.next_part()
        more = n == self._part_size and fill.more()
        if not more:  # it fits in one part: one ordinary member
            if at_end is not None:
                at_end()
            return self._inner.add_stream(relpath, _ViewReader(fill.view, n), n, mode=mode, mtime=mtime)
        number = 0
        while True:
            number += 1
            self._inner.add_stream(part_name(relpath, number), _ViewReader(fill.view, n), n, mode=mode, mtime=mtime)
            if not more:
                return None
            n = fill.next_part()
            more = n == self._part_size and fill.more()
            if not more and at_end is not None:
                at_end()
