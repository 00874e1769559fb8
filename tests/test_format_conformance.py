"""The built-in archiver and compressions against the conformance kit."""

from __future__ import annotations

import lzma
import tarfile

import pytest
import zstandard

from eternia_backup.builtin.compressions import GzipCompression, NoCompression, XzCompression, ZstdCompression
from eternia_backup.builtin.tar import TarArchiver
from eternia_backup.testing import ArchiverConformance, CompressionConformance


class TestTarArchiver(ArchiverConformance):
    @pytest.fixture
    def archiver(self):
        return TarArchiver()


class TestZstd(CompressionConformance):
    errors = (zstandard.ZstdError,)
    # A cut zstd stream reads as a shorter one without an error; the manifest's
    # size and SHA-256 catch that at verify and restore (test_integrity.py).
    detects_truncation = False

    @pytest.fixture
    def compression(self):
        return ZstdCompression()


class TestGzip(CompressionConformance):
    errors = (OSError, EOFError)  # gzip.BadGzipFile is an OSError

    @pytest.fixture
    def compression(self):
        return GzipCompression()


class TestXz(CompressionConformance):
    errors = (lzma.LZMAError, EOFError)

    @pytest.fixture
    def compression(self):
        return XzCompression()


class TestNone(CompressionConformance):
    detects_corruption = False
    detects_truncation = False

    @pytest.fixture
    def compression(self):
        return NoCompression()


@pytest.mark.parametrize("name, kind, mode, uid, gid, size, mtime, linkname, pax", [
    ("src/a.txt", tarfile.REGTYPE, 0o644, 1000, 1000, 5, 1_700_000_000, "", {}),
    ("src/a.txt", tarfile.REGTYPE, 0o4755, 0, 0, 0, 0, "", {"mtime": "1700000000.123456789"}),
    ("src/dir", tarfile.DIRTYPE, 0o755, 1, 2, 0, 1_700_000_000, "", {"mtime": "1.5", "SCHILY.xattr.user.a": "b"}),
    ("src/" + "x" * 96, tarfile.REGTYPE, 0o600, 0, 0, 1, 1, "", {}),  # 100 characters: fits
    ("src/" + "x" * 97, tarfile.REGTYPE, 0o600, 0, 0, 1, 1, "", {}),  # 101: a pax path record
    ("src/dir" + "y" * 93, tarfile.DIRTYPE, 0o700, 0, 0, 0, 1, "", {}),  # 100 + "/": a pax path record
    ("src/ünï.txt", tarfile.REGTYPE, 0o600, 0, 0, 3, 1, "", {}),
    ("src/bad\udcff", tarfile.REGTYPE, 0o600, 0, 0, 3, 1, "", {}),  # not UTF-8: hdrcharset=BINARY
    ("src/l", tarfile.SYMTYPE, 0o777, 0, 0, 0, 1, "../" + "t" * 120, {}),
    ("src/h", tarfile.LNKTYPE, 0o644, 0, 0, 0, 1, "src/a.txt", {"mtime": "9.000000001"}),
    ("src/big", tarfile.REGTYPE, 0o644, 2**21 + 5, 2**30, 8**11, -5, "", {}),  # numbers that need pax
    ("src/x", tarfile.REGTYPE, 0o644, 0, 0, 1, 1, "", {"SCHILY.xattr.user.bin": "\udcff\x00"}),
    ("src/x", tarfile.REGTYPE, 0o644, 0, 0, 1, 1, "", {"SCHILY.xattr.user.n": "v" * 600}),  # 3-digit length
])
def test_headers_are_what_tarfile_writes(name, kind, mode, uid, gid, size, mtime, linkname, pax):
    """The writer builds headers itself (for speed): byte for byte tarfile's PAX_FORMAT headers."""
    from eternia_backup.builtin.tar import _header

    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.mtime = kind, mode, uid, gid, size, mtime
    info.linkname, info.uname, info.gname, info.pax_headers = linkname, "", "", dict(pax)
    assert _header(name, kind, mode, uid, gid, size, mtime, linkname, pax) == \
        info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("name, mode, uid, gid, size, mtime_ns", [
    ("src/a.txt", 0o644, 1000, 1000, 5, 1_700_000_000_123_456_789),
    ("src/a.txt", 0o100644, 0, 0, 0, 1_700_000_000_000_000_000),  # a whole second: no pax record
    ("src/a.txt", 0o4755, 0, 0, 200, 1_700_000_000_100_000_000),  # trailing zeros dropped
    ("src/" + "x" * 96, 0o600, 0, 0, 1, 1),  # 100 characters, 1 ns after the epoch
    ("src/" + "x" * 97, 0o600, 0, 0, 1, 5_000_000_001),  # 101: left to _header (a pax path record)
    ("src/ünï.txt", 0o600, 0, 0, 3, 7),  # not ASCII: left to _header
    ("src/big", 0o644, 2**21 + 5, 0, 1, 1),  # a uid that needs pax: left to _header
])
def test_the_plain_file_header_is_the_general_one(name, mode, uid, gid, size, mtime_ns):
    """_file_header (the tiny-file fast path) gives exactly what _header gives, or leaves it to it."""
    from eternia_backup.builtin.tar import _SectionWriter, _file_header, _header

    general = _header(name, tarfile.REGTYPE, mode & 0o7777, uid, gid, size, mtime_ns // 1_000_000_000, "",
                      _SectionWriter._records(mtime_ns, None))
    fast = _file_header(name, mode, uid, gid, size, mtime_ns)  # the pax block of this size is known now
    assert fast is None or fast == general
    if name.isascii() and len(name) <= 100 and uid < 8**7:
        assert fast == general
