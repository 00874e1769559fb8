"""The built-in archiver and compressions against the conformance kit."""

from __future__ import annotations

import lzma

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
