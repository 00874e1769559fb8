"""Built-in archiver: POSIX tar (pax), readable by every ``tar``.

Each source's entries go under ``<source name>/``. Headers are built from
``os.stat`` directly (no owner-name lookups: a measurable cost, measured
by benchmarks/memory.py). A pax header is written only when needed: a non-ASCII or
long name, an mtime with a fractional second (kept to the nanosecond), extended
attributes (``SCHILY.xattr.*``, as GNU tar writes them). Hardlinks are written
once and then as link members (LNKTYPE); sparse files are GNU sparse 1.0
members, as ``tar --format=posix -S`` writes them: holes are neither read nor stored.

The writer builds the headers itself (:func:`_header`, byte for byte what
``tarfile`` writes in PAX format; anything unusual is left to ``tarfile``) and
gathers small writes: at 300,000 tiny files, tarfile's per-member work (a TarInfo
copy, its dict, three writes through the whole pipeline) was most of the time.
The archive is read back with ``tarfile``.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import hashlib
import os
import stat as statmod
import tarfile
import zlib
from pathlib import Path
from typing import IO, BinaryIO, Iterator

from eternia_backup.api import (
    ArchiveError,
    Archiver,
    ArchiveReader,
    EntryWriter,
    Member,
    SourceError,
    SourceWarnings,
    UnreadableFileError,
    hookimpl,
    read_xattrs,
    tarheaders,
    xattr_namespaces_kept,
)

_COPY_BUFSIZE = 1024 * 1024
_ZEROS = bytes(_COPY_BUFSIZE)  # what a hole reads as, shared, never written to
_XATTR = "SCHILY.xattr."  # GNU tar's and star's pax records for extended attributes
_BLOCK = tarfile.BLOCKSIZE
#: files up to this size are read in one call and their data gathered with the headers
_SMALL_FILE = 64 * 1024
#: small writes (headers, small files, padding) are joined into writes of about this size:
#: each write goes through the byte counter, the compressor and the fan-out to the targets
_GATHER = 256 * 1024


# -- headers: eternia_backup.tarheaders (shared with the restore's feed to GNU tar) --------------

_header = tarheaders.member_header
_file_header_parts = tarheaders.file_header_parts
_file_header = tarheaders.file_header
_NUL512, _NULS, _HEADER_BYTES = tarheaders.NUL512, tarheaders.NULS, tarheaders.HEADER_BYTES
adler32 = zlib.adler32
_HAVE_XATTRS = hasattr(os, "listxattr")  # not on macOS and the BSDs
_READ_FLAGS = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
_S_IFMT, _S_IFREG = statmod.S_IFMT(0o177777), statmod.S_IFREG


def _pad(size: int) -> bytes:
    return _NUL512[: -size % _BLOCK]


class _EndOfData(OSError):
    """A stream gave fewer bytes than the size its header declares."""


class _SectionWriter(EntryWriter):
    """Writes one source's entries under ``<source>/``; counts size and entries."""

    exact_metadata = True
    str_paths = True  # add_file takes the path as a str too
    #: add_file(..., digest=True) returns the sha256 of the bytes archived (incremental
    #: backups record it to tell a file that only grew); add_stream takes mtime_ns
    file_digests = True
    #: add_file needs no stat= (the header comes from fstat of the open file) and returns that
    #: fstat, or None when the file was skipped: a source need not stat a file before adding it
    stat_optional = True

    def __init__(self, tar: "_TarWriter", source: str):
        self.tar = tar
        self.prefix = source
        self.size = 0
        self.entries = 0
        self.warnings = SourceWarnings(source)
        # (st_dev, st_ino) -> member name, for files with st_nlink > 1 only: a
        # tree of ordinary files costs nothing here.
        self.links: dict[tuple[int, int], str] = {}
        self.xattr_namespaces = xattr_namespaces_kept()

    def _name(self, relpath: str) -> str:
        relpath = relpath.strip("/")
        return f"{self.prefix}/{relpath}" if relpath else self.prefix

    @staticmethod
    def _records(mtime_ns: int | None, xattrs: dict[str, bytes] | None) -> dict[str, str]:
        pax = {}
        if mtime_ns is not None and mtime_ns % 1_000_000_000:
            # exact; a float would keep ~100 ns
            if mtime_ns > 0:
                sec, frac = divmod(mtime_ns, 1_000_000_000)
                pax["mtime"] = f"{sec}.{frac:09d}".rstrip("0")
            else:
                pax["mtime"] = pax_time(mtime_ns)
        if xattrs:
            for name, value in xattrs.items():
                pax[_XATTR + name] = value.decode("utf-8", "surrogateescape")
        return pax

    def _entry(self, relpath: str, kind: bytes, *, mode: int, mtime: float, uid: int = 0, gid: int = 0,
               linkname: str = "", mtime_ns: int | None = None, xattrs: dict[str, bytes] | None = None) -> None:
        """A member without data."""
        seconds = int(mtime) if mtime_ns is None else mtime_ns // 1_000_000_000
        self.tar.put(_header(self._name(relpath), kind, statmod.S_IMODE(mode), uid, gid, 0, seconds, linkname,
                             self._records(mtime_ns, xattrs)))
        self.entries += 1

    def add_directory(self, relpath, *, mode, mtime, uid=0, gid=0, mtime_ns=None, xattrs=None):
        self._entry(relpath, tarfile.DIRTYPE, mode=mode, mtime=mtime, uid=uid, gid=gid, mtime_ns=mtime_ns,
                    xattrs=xattrs)

    def add_file(self, relpath, path: Path, *, stat=None, digest: bool = False):
        """Archive a file as it is read; a living tree's surprises become warnings.

        A file that vanished (or stopped being a regular file) is skipped; one
        that changed while read is archived as read; both with a warning. A
        permission error raises UnreadableFileError: the source decides.
        ``stat`` is ignored (kept for callers): the header comes from fstat of the open file,
        which is returned (None when skipped). With ``digest``, returns ``(size, sha256 hex)`` of the
        bytes archived for a file larger than 64 KiB stored as a plain member (not sparse, not a hard
        link), else None.
        """
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            self.warn(relpath, "vanished before it was read; skipped")
            return
        except PermissionError as exc:
            raise UnreadableFileError(f"source {self.prefix!r}: cannot read {path}: permission denied") from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
                self.warn(relpath, "was replaced by something other than a file before it was read; skipped")
                return
            raise
        try:
            before = os.fstat(fd)
            if not self._add_small_file(relpath, fd, before):
                if not statmod.S_ISREG(before.st_mode):
                    self.warn(relpath, "was replaced by something other than a file before it was read; skipped")
                    return None
                hashed = self._add_open_file(relpath, fd, before, digest)
                if digest:
                    return hashed
        finally:
            os.close(fd)
        return None if digest else before

    def _add_small_file(self, relpath: str, fd: int, st: os.stat_result) -> bool:
        """The common case in one go: a small regular file, one link, no holes, no xattrs, a plain
        name; False, having written nothing, for any other (``_add_open_file`` takes it)."""
        size = st.st_size
        if not (st.st_mode & _S_IFMT == _S_IFREG and st.st_nlink == 1 and size <= _SMALL_FILE
                and st.st_blocks * 512 >= size):
            return False
        try:  # most files have no xattrs: one call says so
            if _HAVE_XATTRS and os.listxattr(fd):
                return False
        except OSError:
            return False
        header = _file_header_parts(self._name(relpath), st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns)
        if header is None:
            return False
        data = os.pread(fd, size, 0) if size else b""
        if len(data) != size:  # it shrank
            return False
        pad = -size % _BLOCK
        self.tar.put_parts(header + (data, _NULS[pad]), _HEADER_BYTES[len(header)] + size + pad)
        self.size += size
        self.entries += 1
        if _changed(st, os.fstat(fd)):
            self.warn(relpath, "changed while it was read; archived as read, its contents may be inconsistent")
        return True

    def _add_open_file(self, relpath: str, fd: int, before: os.stat_result,
                       digest: bool = False) -> tuple[int, str] | None:
        if before.st_nlink > 1 and self._add_hardlink(relpath, before):
            return None
        name = self._name(relpath)
        try:  # most files have no xattrs: one call says so
            listed = os.listxattr(fd) if _HAVE_XATTRS else ()
        except OSError:
            listed = None  # read_xattrs says what it means
        xattrs = self._xattrs(fd, relpath) if listed or listed is None else None
        size = before.st_size
        fields = (statmod.S_IMODE(before.st_mode), before.st_uid, before.st_gid)
        seconds = before.st_mtime_ns // 1_000_000_000
        padded = 0
        data = None
        hashing = None
        if size <= _SMALL_FILE and before.st_blocks * 512 >= size:  # small, no holes: one read
            data = os.pread(fd, size, 0) if size else b""
        if data is not None and len(data) == size:
            header = None if xattrs else _file_header(name, *fields, size, before.st_mtime_ns)
            if header is None:
                header = _header(name, tarfile.REGTYPE, *fields, size, seconds, "",
                                 self._records(before.st_mtime_ns, xattrs))
            self.tar.put(header + data + _NUL512[: -size % _BLOCK])
            self.size += size
            self.entries += 1
        else:  # large, sparse, or it shrank before it was read
            pax = self._records(before.st_mtime_ns, xattrs)
            stream = _FileStream(fd, before)
            regions = _data_map(fd, size) if stream.sparse else None
            stored_name = name
            if regions is not None:
                stream = _SparseStream(fd, regions)
                # GNU tar, bsdtar and Python's tarfile read the real name and size from the
                # pax records; the ustar name is a fixed ASCII placeholder, so a tar without
                # sparse support extracts a harmless GNUSparseFile.0/... instead of a wrong file.
                pax.update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": name, "GNU.sparse.realsize": str(size)})
                stored_name = "GNUSparseFile.0/" + _SPARSE_PLACEHOLDER
                size = len(stream.map_block) + sum(length for _, length in regions)
            elif digest:
                stream = hashing = HashingStream(stream)
            self._add_stream(_header(stored_name, tarfile.REGTYPE, *fields, size, seconds, "", pax),
                             stream, size, relpath)
            padded = (hashing.inner if hashing is not None else stream).padded
        after = os.fstat(fd)
        if padded:
            self.warn(relpath, f"shrank while it was read: its last {padded} bytes were archived as zeros")
        elif _changed(before, after):
            self.warn(relpath, "changed while it was read; archived as read, its contents may be inconsistent")
        if before.st_nlink > 1:
            self.links[(before.st_dev, before.st_ino)] = name
        return (size, hashing.sha.hexdigest()) if hashing is not None else None

    def _add_hardlink(self, relpath: str, st: os.stat_result) -> bool:
        """A link member to the earlier member of the same inode, if there is one (tar's LNKTYPE)."""
        target = self.links.get((st.st_dev, st.st_ino))
        if target is None:
            return False
        self._entry(relpath, tarfile.LNKTYPE, mode=st.st_mode, mtime=0, mtime_ns=st.st_mtime_ns,
                    uid=st.st_uid, gid=st.st_gid, linkname=target)
        return True

    def _xattrs(self, target, relpath: str) -> dict[str, bytes]:
        try:
            return read_xattrs(target, self.xattr_namespaces)
        except OSError as exc:
            self.warn(relpath, f"extended attributes could not be read ({exc.strerror}); archived without them")
            return {}

    def add_stream(self, relpath, stream: BinaryIO, size: int, *, mode=0o600, mtime, mtime_ns=None):
        seconds = int(mtime) if mtime_ns is None else mtime_ns // 1_000_000_000
        header = _header(self._name(relpath), tarfile.REGTYPE, statmod.S_IMODE(mode), 0, 0, size, seconds, "",
                         self._records(mtime_ns, None))
        self._add_stream(header, stream, size, relpath)

    def _add_stream(self, header: bytes, stream, size: int, what) -> None:
        try:
            self.tar.put_member(header, stream, size)
        except _EndOfData as exc:
            raise SourceError(
                f"source {self.prefix!r}: {what} shrank while being read; "
                "stop writes to it during backups (use the source's before/after commands)"
            ) from exc
        self.size += size
        self.entries += 1

    def add_symlink(self, relpath, target, *, mtime, mtime_ns=None):
        self._entry(relpath, tarfile.SYMTYPE, mode=0o777, mtime=mtime, linkname=target, mtime_ns=mtime_ns)


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    """GNU tar's test for "file changed as we read it": size, mtime or ctime moved."""
    return ((before.st_size, before.st_mtime_ns, before.st_ctime_ns)
            != (after.st_size, after.st_mtime_ns, after.st_ctime_ns))


class HashingStream:
    """Passes reads through and hashes them (sha256): the digest of exactly what was archived."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        return data


class _FileStream:
    """Exactly ``size`` bytes of an open file, as tarfile's copy loop needs them.

    A file with holes is normally written as a sparse member (_SparseStream);
    this stream still skips reading holes (SEEK_DATA/SEEK_HOLE) whenever the
    file has fewer blocks than bytes, e.g. when it gained holes after it was
    mapped. A file that ends early (it shrank while read) is padded with
    zeros, as GNU tar does, and ``padded`` says by how much.
    """

    def __init__(self, fd: int, st: os.stat_result):
        self.fd = fd
        self.size = st.st_size
        self.pos = 0
        self.padded = 0
        self.sparse = st.st_blocks * 512 < st.st_size
        self.region_end = 0 if self.sparse else self.size
        self.in_hole = False

    def read(self, n: int = -1) -> bytes:
        want = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        parts = []
        while want > 0:
            chunk = self._read_some(want)
            parts.append(chunk)
            want -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        if self.pos >= self.region_end:
            self._find_region()
        k = min(n, self.region_end - self.pos)
        if self.in_hole:
            data = _ZEROS if k == len(_ZEROS) else bytes(k)
        else:
            data = os.pread(self.fd, k, self.pos)
            if not data:  # the file ends before the size its header declares
                self.padded = self.size - self.pos
                self.in_hole, self.region_end = True, self.size
                data = bytes(k)
        self.pos += len(data)
        return data

    def _find_region(self) -> None:
        """Where the data or hole at ``pos`` ends."""
        if not self.sparse:
            self.in_hole, self.region_end = False, self.size
            return
        try:
            data = os.lseek(self.fd, self.pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # the filesystem cannot say: read everything
                self.sparse = False
                self.in_hole, self.region_end = False, self.size
                return
            data = self.size  # no data after pos: a hole to the end
        if data > self.pos:
            self.in_hole, self.region_end = True, min(data, self.size)
            return
        hole = os.lseek(self.fd, self.pos, os.SEEK_HOLE)
        self.in_hole, self.region_end = False, min(hole, self.size)
        if self.region_end <= self.pos:  # changed under us: read on to the end
            self.region_end = self.size


def _data_map(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of each data region, as GNU tar's sparse map; None when the file has
    no hole or the filesystem cannot say. A trailing hole ends the map with (size, 0), as GNU tar does."""
    regions, pos = [], 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                break  # only a hole from pos on
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            regions.append((start, end - start))
            pos = end
    except OSError:
        return None
    if sum(length for _, length in regions) >= size:
        return None
    if not regions or regions[-1][0] + regions[-1][1] < size:
        regions.append((size, 0))
    return regions


_SPARSE_PLACEHOLDER = "sparse-file-see-GNU.sparse.name"


class _SparseStream:
    """The data of a GNU sparse 1.0 member: the map (in 512-byte blocks), then each data region.

    Holes are neither read nor stored. A region that ends early (the file
    shrank while read) is padded with zeros and counted in ``padded``.
    """

    def __init__(self, fd: int, regions: list[tuple[int, int]]):
        text = f"{len(regions)}\n" + "".join(f"{off}\n{length}\n" for off, length in regions)
        raw = text.encode("ascii")
        self.map_block = raw + bytes(-len(raw) % tarfile.BLOCKSIZE)
        self.fd = fd
        self.padded = 0
        self.pieces = [(None, self.map_block)] + [(off, length) for off, length in regions if length]
        self.index = 0
        self.done = 0  # bytes of the current piece already produced

    def read(self, n: int = -1) -> bytes:
        parts = []
        while (n < 0 or n > 0) and self.index < len(self.pieces):
            offset, what = self.pieces[self.index]
            total = len(what) if offset is None else what
            k = total - self.done if n < 0 else min(n, total - self.done)
            if offset is None:
                chunk = what[self.done:self.done + k]
            else:
                chunk = os.pread(self.fd, k, offset + self.done)
                if not chunk:  # the file ends before this region does
                    self.padded += k
                    chunk = bytes(k)
            parts.append(chunk)
            self.done += len(chunk)
            if n > 0:
                n -= len(chunk)
            if self.done == total:
                self.index, self.done = self.index + 1, 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


def pax_time(ns: int) -> str:
    """Exact decimal seconds of a time in nanoseconds, as a pax ``mtime`` record."""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return ("-" if ns < 0 else "") + f"{sec}.{frac:09d}".rstrip("0").rstrip(".")


def ns_from_pax(text: str) -> int | None:
    """Nanoseconds of a pax time record (``1700000000.123456789``), or None if it is not one."""
    sec, dot, frac = text.partition(".")
    if sec.isdigit() and sec.isascii() and (not dot or (frac.isdigit() and frac.isascii())):
        return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])  # the usual case, without Decimal
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return int(value.scaleb(9).to_integral_value(rounding=decimal.ROUND_FLOOR))


class _TarWriter:
    """The archive stream: members' blocks, then the end-of-archive blocks, as tarfile writes them."""

    def __init__(self, fileobj: IO[bytes]):
        self.out = fileobj
        self.offset = 0
        self._parts: list[bytes] = []
        self._gathered = 0

    def put(self, data: bytes) -> None:
        """Small data: gathered, written with the next ones."""
        self._parts.append(data)
        self._gathered += len(data)
        self.offset += len(data)
        if self._gathered >= _GATHER:
            self.flush()

    def put_parts(self, parts: tuple, size: int) -> None:
        """Small data in pieces, ``size`` bytes in all: gathered, written with the next ones."""
        self._parts += parts
        self._gathered += size
        self.offset += size
        if self._gathered >= _GATHER:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts, self._gathered = [], 0
            self.out.write(data)

    def put_member(self, header: bytes, stream, size: int) -> None:
        """A member's header and ``size`` bytes of ``stream``; _EndOfData if it gives fewer."""
        self.put(header)
        if size <= _SMALL_FILE:
            data = stream.read(size) if size else b""
            if len(data) < size:
                raise _EndOfData("unexpected end of data")
            self.put(data)
        else:
            self.flush()
            left = size
            while left:
                want = min(left, _COPY_BUFSIZE)
                data = stream.read(want)
                if len(data) < want:
                    raise _EndOfData("unexpected end of data")
                self.out.write(data)
                self.offset += want
                left -= want
        self.put(_pad(size))

    def section(self, source_name: str) -> _SectionWriter:
        return _SectionWriter(self, source_name)

    def close(self) -> None:
        self.put(bytes(2 * _BLOCK))
        self.put(bytes(-self.offset % tarfile.RECORDSIZE))
        self.flush()


_READ = 1024 * 1024  # what the archive stream is read in: the read-ahead's chunk
_LARGE_READ = 64 * 1024  # data reads from this size on take what is there (no copy into a joined buffer)


class _ForwardReader:
    """A buffered stream that tarfile can read in its plain ``"r:"`` mode: ``tell()`` and forward ``seek()``.

    tarfile's stream mode (``"r|"``) re-reads everything through a 10 KiB buffer
    with a join per read (~1 s of 20 when restoring 1 GiB). In ``"r:"`` mode it
    reads headers and data straight from its file object and seeks past what it
    skips; seeking forward here reads and drops. Seeking backwards is refused:
    nothing in reading a tar in order needs it.

    The stream underneath is read a chunk at a time and a header or a small
    file's data is a slice of that chunk: at 300,000 tiny files, four calls down
    the reader stack per member (pax header, its records, ustar header, data)
    were a tenth of the restore. ``read(n)`` gives exactly ``n`` bytes (fewer
    only at the end), as tarfile needs; ``read_some(n)`` may give fewer, without
    joining, for copying file data.
    """

    def __init__(self, inner: IO[bytes]):
        self.inner = inner
        self.pos = 0  # position in the stream of the next byte read
        self.buf = b""  # the chunk being read, from offset ``bpos`` on
        self.bpos = 0

    def read(self, n: int = -1) -> bytes:
        b = self.bpos
        if n is not None and 0 <= n <= len(self.buf) - b:  # the usual case: inside the chunk
            self.bpos = b + n
            self.pos += n
            return self.buf[b:b + n]
        parts = [self.buf[b:]]
        have = len(parts[0])
        self.buf, self.bpos = b"", 0
        while n is None or n < 0 or have < n:
            chunk = self.inner.read(_READ if n is None or n < 0 else max(n - have, _READ))
            if not chunk:
                break
            if n is not None and 0 <= n < have + len(chunk):  # keep the rest for the next reads
                self.buf, self.bpos = chunk, n - have
                chunk = chunk[:n - have]
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one unless at the end), without joining chunks."""
        b = self.bpos
        left = len(self.buf) - b
        if left:
            k = n if n < left else left
            self.bpos = b + k
            self.pos += k
            return self.buf if k == len(self.buf) else self.buf[b:b + k]
        if n < _LARGE_READ:  # a small read: buffer a chunk
            self.buf, self.bpos = self.inner.read(_READ), 0
            if not self.buf:
                return b""
            return self.read_some(n)
        data = self.inner.read(n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def push_back(self, data: bytes) -> None:
        """Un-read ``data`` (the bytes just read): the next reads return it again."""
        n = len(data)
        if n <= self.bpos and self.buf[self.bpos - n:self.bpos] == data:
            self.bpos -= n  # still in the chunk (the usual case)
        else:
            self.buf, self.bpos = data + self.buf[self.bpos:], 0
        self.pos -= n

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence != 0:
            raise OSError("a tar stream can only move forward")
        if offset < self.pos:
            raise OSError(f"a tar stream cannot go back from {self.pos} to {offset}")
        if offset - self.pos <= len(self.buf) - self.bpos:  # inside the chunk: a member's padding
            self.bpos += offset - self.pos
            self.pos = offset
        while self.pos < offset:
            if not self.read_some(min(offset - self.pos, _COPY_BUFSIZE)):
                break  # the end: tarfile's next read finds it
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


_PAX_KEPT = frozenset(("path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname", "atime", "ctime"))
_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.LNKTYPE: "hardlink"}
_KIND_OF_BYTE = {t[0]: kind for t, kind in _KINDS.items()}
_PAX_TYPE = tarfile.XHDTYPE[0]
_POSIX_MAGIC = tarfile.POSIX_MAGIC
_NO_DEVICE = frozenset((bytes(16), b"0000000\x000000000\x00"))  # no device numbers, as ours and tarfile write
_PAX_SEEN: dict[bytes, int] = {}  # pax header blocks checked already -> size of their records
_NO_XATTRS: dict = {}  # shared by members without extended attributes; Member is frozen, nobody changes it
_new = object.__new__
_PARSED = None  # set by tests: a list that counts the members parsed here rather than by tarfile


def _checksum(block: bytes) -> int:
    """tarfile's unsigned header checksum (the checksum field counted as spaces), summed in C:
    adler32's first half is 1 + the sum of the bytes modulo 65521, exact for up to 256 bytes.
    ``sum()`` over the bytes took 2-3 us of the ~20 a tiny file costs, twice per member."""
    return ((adler32(block[:148]) & 0xFFFF) + (adler32(block[156:356]) & 0xFFFF)
            + (adler32(block[356:_BLOCK]) & 0xFFFF) - 3 + 256)


def _pax_size(block: bytes) -> int | None:
    """The size of a pax header's records (its name and times are of no use), checksum checked;
    None when it is unusual or over 1 MiB."""
    if block[124] >= 0x80:
        return None
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    return size if stored == _checksum(block) and 0 <= size <= 1024 * 1024 else None


class _TarReader(ArchiveReader):
    """Reads the members this archiver writes itself, and leaves anything unusual to ``tarfile``.

    With exact mtimes nearly every member is a pax header and a ustar header;
    tarfile spent ~250 us per small file on them (regex, per-field helpers, a
    TarInfo), more than writing the file. The common case -- a file, directory,
    symlink or hardlink with POSIX magic, no prefix, at most a pax header of the
    usual keys -- is parsed here straight into a Member, to the same values
    tarfile gives; anything else (sparse, GNU long names, global headers,
    base-256 numbers, a bad checksum, the end) is un-read and read by tarfile
    itself, which stays the judge of odd archives (tests/test_tar_reader.py
    reads archives of ours and of GNU tar both ways).
    """

    def __init__(self, fileobj: IO[bytes]):
        self.stream = _ForwardReader(fileobj)
        try:
            self.tar = tarfile.open(fileobj=self.stream, mode="r:", encoding="utf-8", errors="surrogateescape")
        except tarfile.TarError as exc:
            raise ArchiveError(f"not a readable tar archive: {exc}") from exc
        except EOFError as exc:
            raise ArchiveError("archive is truncated: it ends in the middle of a member") from exc
        #: the current member: tarfile's TarInfo when tarfile read it, else its name, data offset and size
        self._current: tarfile.TarInfo | None = None
        self._data: tuple[str, int, int] | None = None

    def __iter__(self) -> Iterator[Member]:
        tar, stream = self.tar, self.stream
        try:
            while True:
                # (tarfile reads the first member itself, and the end of an empty archive)
                if tar.firstmember is None and not tar.pax_headers and stream.pos <= tar.offset:
                    if stream.pos != tar.offset:
                        stream.seek(tar.offset)  # over the data of the member before, if not read
                    read: list[bytes] = []
                    member = self._fast(read)
                    if member is not None:
                        yield member
                        continue
                    stream.push_back(b"".join(read))
                info = tar.next()
                if info is None:
                    return
                tar.members.clear()  # bounded memory whatever the member count
                self._current, self._data = info, None
                yield _member(info)
        except tarfile.TarError as exc:
            raise ArchiveError(f"archive is damaged or truncated: {exc}") from exc
        except EOFError as exc:
            raise ArchiveError("archive is truncated: it ends in the middle of a member") from exc

    def _fast(self, read: list[bytes]) -> Member | None:
        """The next member, parsed here; None (with what it read in ``read``) to leave it to tarfile."""
        stream = self.stream
        block = stream.read(_BLOCK)
        read.append(block)
        if len(block) != _BLOCK:
            return None
        pax = None
        mtime_ns = None
        if block[156] == _PAX_TYPE:
            size = _PAX_SEEN.get(block)  # our pax headers differ only by the size of their records
            if size is None:
                size = _pax_size(block)
                if size is None:
                    return None
                if len(_PAX_SEEN) < 256:
                    _PAX_SEEN[block] = size
            padded = -(-size // _BLOCK) * _BLOCK
            data = stream.read(padded + _BLOCK)  # the records and the member's own header
            read.append(data)
            if len(data) != padded + _BLOCK:
                return None
            block = data[padded:]
            records = data[:size]
            # the usual records: "NN mtime=SECONDS.FRACTION\n" alone
            space = records.find(b" ")
            if (records[space + 1:space + 7] == b"mtime=" and records[-1] == 0x0A
                    and records[:space].isdigit() and int(records[:space]) == size):
                value = records[space + 7:-1]
                sec, dot, frac = value.partition(b".")
                if sec.isdigit() and frac.isdigit() and len(frac) <= 9:
                    mtime_ns = int(sec) * 1_000_000_000 + int(frac.ljust(9, b"0"))
                else:  # an unusual number: the general route
                    pax = {"mtime": value.decode("utf-8", "surrogateescape")}
                    mtime_ns = None
                try:
                    mtime = float(value)
                except ValueError:
                    return None
            else:
                pax = _pax_records(records)
                if pax is None:
                    return None
        kind = _KIND_OF_BYTE.get(block[156])
        if kind is None or block[257:265] != _POSIX_MAGIC or block[345] or block[329:345] not in _NO_DEVICE:
            return None  # other types, GNU or old formats, a ustar prefix, device numbers
        stored = block[148:156]
        try:
            stored = int(stored[:6], 8) if stored[6] == 0 and stored[7] == 0x20 else \
                int(stored.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if stored != _checksum(block):
            return None
        try:
            try:  # the fields as writers fill them: octal digits, then a NUL
                if block[107] or block[115] or block[123] or block[135] or block[147]:
                    raise ValueError
                mode, uid, gid = int(block[100:107], 8), int(block[108:115], 8), int(block[116:123], 8)
                size, seconds = int(block[124:135], 8), int(block[136:147], 8)
            except ValueError:  # as tarfile reads them: up to a NUL, spaces stripped
                mode, uid, gid, size, seconds = [int(block[a:b].split(b"\0", 1)[0].strip() or b"0", 8)
                                                 for a, b in ((100, 108), (108, 116), (116, 124), (124, 136),
                                                              (136, 148))]
        except ValueError:
            return None
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        linkname = block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") if block[157] else ""
        if kind == "file" and block[156] == 0 and name.endswith("/"):
            kind = "dir"  # an old tar's directory (tarfile reads it so too)
        if mtime_ns is None:
            mtime = seconds
        xattrs = _NO_XATTRS
        if pax:
            for key, value in pax.items():  # as tarfile's _apply_pax_info
                if key == "path":
                    name = value.rstrip("/")
                elif key == "mtime":
                    try:
                        mtime = float(value)
                    except ValueError:
                        mtime = 0
                    mtime_ns = ns_from_pax(value)
                elif key == "linkpath":
                    linkname = value
                elif key in ("size", "uid", "gid"):
                    try:
                        number = int(value)
                    except ValueError:
                        number = 0
                    if key == "size":
                        size = number
                    elif key == "uid":
                        uid = number
                    else:
                        gid = number
                elif key.startswith(_XATTR):
                    if xattrs is _NO_XATTRS:
                        xattrs = {}
                    xattrs[key[len(_XATTR):]] = value.encode("utf-8", "surrogateescape")
        if kind == "dir":
            name = name.rstrip("/")
        if size < 0:
            return None
        offset_data = stream.pos
        self.tar.offset = offset_data + (-(-size // _BLOCK) * _BLOCK if kind == "file" else 0)
        self._current, self._data = None, (name, offset_data, size)
        if _PARSED is not None:
            _PARSED.append(name)
        member = _new(Member)  # a frozen dataclass's __init__ costs 2 us: its fields are set directly
        member.__dict__.update(name=name, kind=kind, size=size, mode=mode, mtime=mtime, uid=uid, gid=gid,
                               linkname=linkname,
                               mtime_ns=mtime_ns if mtime_ns is not None else int(mtime) * 1_000_000_000,
                               xattrs=xattrs)
        return member

    def open_member(self, member: Member) -> BinaryIO:
        if self._data is not None:
            name, offset_data, size = self._data
            assert name == member.name
            if member.kind != "file":
                raise ArchiveError(f"member {member.name!r} has no data")
            if self.stream.pos != offset_data:
                self.stream.seek(offset_data)
            return _DataStream(self.stream, size, name)
        info = self._current
        assert info is not None and info.name == member.name
        if info.sparse is not None or not info.isreg():
            f = self.tar.extractfile(info)
            if f is None:
                raise ArchiveError(f"member {member.name!r} has no data")
            return _MemberStream(f, member.name)
        self.stream.seek(info.offset_data)
        return _DataStream(self.stream, info.size, member.name)

    def close(self) -> None:
        self.tar.close()


def _pax_records(data: bytes) -> dict[str, str] | None:
    """``"%d key=value\\n"`` records of the usual keys; None when any is unusual or malformed."""
    records: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            return None
        try:
            length = int(data[pos:space])
        except ValueError:
            return None
        stop = pos + length
        if length <= 0 or stop > end or data[stop - 1] != 0x0A:
            return None
        key, eq, value = data[space + 1:stop - 1].partition(b"=")
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not eq or (name not in _PAX_KEPT and not name.startswith(_XATTR)):
            return None
        records[name] = value.decode("utf-8", "surrogateescape")
        pos = stop
    return records


class _MemberStream:
    """A member's data; a cut archive is an ArchiveError here too (tarfile raises ReadError mid-member)."""

    def __init__(self, f, name: str):
        self._f = f
        self._name = name

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"archive is truncated or damaged in member {self._name!r}: {exc}") from exc

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DataStream:
    """A plain member's data, read straight from the archive stream (no tarfile layers)."""

    def __init__(self, stream: _ForwardReader, size: int, name: str):
        self._stream = stream
        self._left = size
        self._name = name

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._stream.read_some(self._left if n is None or n < 0 or n > self._left else n)
        if not data:
            raise ArchiveError(f"archive is truncated in member {self._name!r}: it ends {self._left} bytes early")
        self._left -= len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def _member(info: tarfile.TarInfo) -> Member:
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk():
        kind = "other:device"
    elif info.isfifo():
        kind = "other:fifo"
    else:
        kind = f"other:type {info.type!r}"
    pax = info.pax_headers
    mtime_ns = ns_from_pax(pax["mtime"]) if "mtime" in pax else None
    xattrs = {k[len(_XATTR):]: v.encode("utf-8", "surrogateescape") for k, v in pax.items() if k.startswith(_XATTR)}
    return Member(name=info.name, kind=kind, size=info.size, mode=info.mode, mtime=info.mtime,
                  uid=info.uid, gid=info.gid, linkname=info.linkname,
                  mtime_ns=mtime_ns if mtime_ns is not None else int(info.mtime) * 1_000_000_000, xattrs=xattrs)


class TarArchiver(Archiver):
    format_name = "tar"
    extension = ".tar"

    @contextlib.contextmanager
    def writer(self, fileobj):
        w = _TarWriter(fileobj)
        yield w
        w.close()

    def reader(self, fileobj) -> _TarReader:
        return _TarReader(fileobj)


@hookimpl
def eternia_register_archivers(register):
    register(TarArchiver)
