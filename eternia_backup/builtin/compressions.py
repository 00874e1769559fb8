"""Built-in compressions: zstd (default), gzip, xz and none.

Each produces the standard format of its command-line tool, so an archive can be
unpacked by hand with ``zstd -d``, ``gunzip`` or ``xz -d`` and ``tar``.
"""

from __future__ import annotations

import gzip
import lzma
from typing import IO

import zstandard

from eternia_backup.api import Compression, hookimpl


JOB_SIZE = 4 * 1024 * 1024  # bytes each zstd worker compresses at a time


class ZstdCompression(Compression):
    name = "zstd"
    extension = ".zst"
    levels = (-7, 22)

    def compressor(self, fileobj, level):
        # threads=-1: one worker per core; the pipeline's Python work is small.
        # write_checksum: without it a flipped byte decompresses silently into
        # wrong data (tests/test_format_conformance.py); 4 bytes per frame.
        # job_size: zstd's default job at level 3 is 8 MiB per worker, with its
        # buffers 119 MiB resident for 1 GiB; 4 MiB jobs hold 68 MiB, as fast
        # (measured on 2 cores). The frames are the same standard zstd.
        params = zstandard.ZstdCompressionParameters.from_level(
            3 if level is None else level, threads=-1, job_size=JOB_SIZE, write_checksum=True)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        return cctx.stream_writer(fileobj, closefd=False)

    def decompressor(self, fileobj):
        return zstandard.ZstdDecompressor().stream_reader(fileobj, read_across_frames=True, closefd=False)


class GzipCompression(Compression):
    name = "gzip"
    extension = ".gz"
    levels = (0, 9)

    def compressor(self, fileobj, level):
        return gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=6 if level is None else level, mtime=0)

    def decompressor(self, fileobj):
        return gzip.GzipFile(fileobj=fileobj, mode="rb")


class XzCompression(Compression):
    name = "xz"
    extension = ".xz"
    levels = (0, 9)

    def compressor(self, fileobj, level):
        return lzma.LZMAFile(fileobj, "wb", preset=6 if level is None else level)

    def decompressor(self, fileobj):
        return lzma.LZMAFile(fileobj, "rb")


class _Passthrough:
    """A writer that forwards bytes unchanged; close() leaves the inner stream open."""

    def __init__(self, fileobj: IO[bytes]):
        self._f = fileobj

    def write(self, data) -> int:
        return self._f.write(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoCompression(Compression):
    name = "none"
    extension = ""

    def compressor(self, fileobj, level):
        return _Passthrough(fileobj)

    def decompressor(self, fileobj):
        return _Passthrough(fileobj)


@hookimpl
def eternia_register_compressions(register):
    for cls in (ZstdCompression, GzipCompression, XzCompression, NoCompression):
        register(cls)
