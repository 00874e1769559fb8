"""Hashing and counting the bytes of a stream as it passes, in either direction."""

from __future__ import annotations

import hashlib
from typing import IO, BinaryIO

_CHUNK = 1024 * 1024


class HashingReader:
    """Reads through ``inner`` while hashing and counting the bytes read."""

    def __init__(self, inner: BinaryIO):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0
        #: reading ``inner`` raised (a store's error, not the archive's)
        self.failed = False

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.inner.read(n)
        except BaseException:
            self.failed = True
            raise
        self.sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class HashingWriter:
    """A write-only file that hashes and counts what passes to ``inner``."""

    def __init__(self, inner: IO[bytes]):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        pass
