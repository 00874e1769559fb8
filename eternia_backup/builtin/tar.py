"""Built-in archiver: POSIX tar (pax), readable by every ``tar``.

Each source's entries go under ``<source name>/``. Headers are built from
``os.stat`` directly (no owner-name lookups) and mtimes are whole seconds, so no
per-file pax header is needed for ASCII names: both were measurable costs
(benchmarks/memory.py measures a run). The archive is written with ``tarfile`` in plain ``"w"``
mode onto a stream that reports ``tell()``; stream mode ("w|") re-slices its
buffer and was 2.7x slower.
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
import tarfile
from pathlib import Path
from typing import IO, BinaryIO, Iterator

from eternia_backup import hookimpl
from eternia_backup.errors import ArchiveError, SourceError
from eternia_backup.providers import Archiver, ArchiveReader, EntryWriter, Member

_COPY_BUFSIZE = 1024 * 1024


class _SectionWriter(EntryWriter):
    """Writes one source's entries under ``<source>/``; counts size and entries."""

    def __init__(self, tar: tarfile.TarFile, source: str):
        self.tar = tar
        self.prefix = source
        self.size = 0
        self.entries = 0

    def _info(self, relpath: str, kind: bytes, *, mode: int, mtime: float, size: int = 0,
              uid: int = 0, gid: int = 0, linkname: str = "") -> tarfile.TarInfo:
        relpath = relpath.strip("/")
        info = tarfile.TarInfo(f"{self.prefix}/{relpath}" if relpath else self.prefix)
        info.type = kind
        info.mode = statmod.S_IMODE(mode)
        info.mtime = int(mtime)
        info.size = size
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.linkname = linkname
        return info

    def _add(self, info: tarfile.TarInfo, stream=None) -> None:
        self.tar.addfile(info, stream)
        # tarfile keeps every header it wrote (TarFile.members); nothing here
        # reads them back, and at 400,000 files they cost ~170 MiB.
        self.tar.members.clear()

    def add_directory(self, relpath, *, mode, mtime, uid=0, gid=0):
        self._add(self._info(relpath, tarfile.DIRTYPE, mode=mode, mtime=mtime, uid=uid, gid=gid))
        self.entries += 1

    def add_file(self, relpath, path: Path, *, stat=None):
        try:
            with open(path, "rb") as f:
                st = stat or os.fstat(f.fileno())
                info = self._info(relpath, tarfile.REGTYPE, mode=st.st_mode, mtime=st.st_mtime,
                                  size=st.st_size, uid=st.st_uid, gid=st.st_gid)
                self._add_stream(info, f, path)
        except PermissionError as exc:
            raise SourceError(f"source {self.prefix!r}: cannot read {path}: permission denied") from exc
        except FileNotFoundError as exc:
            raise SourceError(f"source {self.prefix!r}: {path} disappeared while being backed up") from exc
        except IsADirectoryError as exc:
            raise SourceError(f"source {self.prefix!r}: {path} changed from a file to a directory") from exc

    def add_stream(self, relpath, stream: BinaryIO, size: int, *, mode=0o600, mtime):
        info = self._info(relpath, tarfile.REGTYPE, mode=mode, mtime=mtime, size=size)
        self._add_stream(info, stream, relpath)

    def _add_stream(self, info: tarfile.TarInfo, stream, what) -> None:
        try:
            self._add(info, stream)
        except OSError as exc:
            if "unexpected end of data" in str(exc):
                raise SourceError(
                    f"source {self.prefix!r}: {what} shrank while being read; "
                    "stop writes to it during backups (use the source's before/after commands)"
                ) from exc
            raise
        self.size += info.size
        self.entries += 1

    def add_symlink(self, relpath, target, *, mtime):
        self._add(self._info(relpath, tarfile.SYMTYPE, mode=0o777, mtime=mtime, linkname=target))
        self.entries += 1


class _TarWriter:
    def __init__(self, fileobj: IO[bytes]):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", errors="surrogateescape")
        self.tar.copybufsize = _COPY_BUFSIZE  # used by addfile's copy loop

    def section(self, source_name: str) -> _SectionWriter:
        return _SectionWriter(self.tar, source_name)

    def close(self) -> None:
        self.tar.close()


class _TarReader(ArchiveReader):
    def __init__(self, fileobj: IO[bytes]):
        try:
            self.tar = tarfile.open(fileobj=fileobj, mode="r|", encoding="utf-8", errors="surrogateescape")
        except tarfile.TarError as exc:
            raise ArchiveError(f"not a readable tar archive: {exc}") from exc
        self._current: tarfile.TarInfo | None = None

    def __iter__(self) -> Iterator[Member]:
        try:
            while (info := self.tar.next()) is not None:
                self.tar.members.clear()  # bounded memory whatever the member count
                self._current = info
                yield _member(info)
        except tarfile.TarError as exc:
            raise ArchiveError(f"archive is damaged or truncated: {exc}") from exc
        except EOFError as exc:
            raise ArchiveError("archive is truncated: it ends in the middle of a member") from exc

    def open_member(self, member: Member) -> BinaryIO:
        assert self._current is not None and self._current.name == member.name
        f = self.tar.extractfile(self._current)
        if f is None:
            raise ArchiveError(f"member {member.name!r} has no data")
        return f

    def close(self) -> None:
        self.tar.close()


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
    return Member(name=info.name, kind=kind, size=info.size, mode=info.mode, mtime=info.mtime,
                  uid=info.uid, gid=info.gid, linkname=info.linkname)


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
