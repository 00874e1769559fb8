"""Dumps of unknown size, archived as they are produced: split into parts, joined again on restore.

A tar member needs its size before its data, and a dump command's output has
none until it ends. Rather than spooling the whole dump to disk first, a
source may call ``add_stream(relpath, stream, None, ...)``: the framework reads
the stream in parts of :data:`PART_SIZE` bytes held in memory. A dump that
fits in one part is one ordinary member ``relpath``; a longer one is the
members ``relpath.eternia-part-00001``, ``-00002`` ... in order, which a restore
joins back into ``relpath`` (by hand: ``cat relpath.eternia-part-* > relpath``).
No temporary file is written at all.
"""

from __future__ import annotations

import io
import re

#: bytes of a dump held in memory at once (one part)
PART_SIZE = 32 * 1024 * 1024
PART_SUFFIX = ".eternia-part-"
_PART_RE = re.compile(r"^(?P<base>.+)" + re.escape(PART_SUFFIX) + r"(?P<n>\d{5})$")


def part_name(relpath: str, number: int) -> str:
    return f"{relpath}{PART_SUFFIX}{number:05d}"


def split_part(relpath: str) -> tuple[str, int] | None:
    """(the dump's path, part number) for a part's name, else None."""
    m = _PART_RE.match(relpath)
    return (m["base"], int(m["n"])) if m else None


def _read_up_to(stream, n: int) -> bytearray:
    """Up to ``n`` bytes, fewer only at the end (a pipe returns what it has)."""
    buf = bytearray()
    while len(buf) < n:
        data = stream.read(min(n - len(buf), 4 * 1024 * 1024))
        if not data:
            break
        buf += data
    return buf


class PartSplitter:
    """An EntryWriter proxy in front of an archive section: ``add_stream`` with ``size=None`` goes in parts."""

    def __init__(self, inner, part_size: int = PART_SIZE):
        self._inner = inner
        self._part_size = part_size
        self.exact_metadata = getattr(inner, "exact_metadata", False)
        self.str_paths = getattr(inner, "str_paths", False)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def add_stream(self, relpath, stream, size, *, mode=0o600, mtime):
        if size is not None:
            return self._inner.add_stream(relpath, stream, size, mode=mode, mtime=mtime)
        data = _read_up_to(stream, self._part_size + 1)
        if len(data) <= self._part_size:
            return self._inner.add_stream(relpath, io.BytesIO(data), len(data), mode=mode, mtime=mtime)
        number = 1
        while data:
            chunk, data = data[: self._part_size], data[self._part_size:]
            self._inner.add_stream(part_name(relpath, number), io.BytesIO(chunk), len(chunk), mode=mode, mtime=mtime)
            number += 1
            data += _read_up_to(stream, self._part_size - len(data))
        return None
