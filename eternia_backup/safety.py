"""Refusing hostile archive members and extracting safely.

Nothing here relies on ``tarfile``'s extraction filters (they have had several
bypasses). Every member name is checked by hand: relative, no ``..``, inside a
known source, a type we write ourselves (file, directory, symlink, hardlink to
an earlier file), no setuid/setgid file. Extraction goes into a fresh staging
directory with ``O_EXCL | O_NOFOLLOW``; symlinks are created last, and a member
whose parent path is a symlink of the archive is refused, so nothing is ever
written through a link.
"""

from __future__ import annotations

import os
import posixpath
import stat as statmod
from pathlib import Path

from .errors import UnsafeArchiveError
from .providers import Member

_COPY = 1024 * 1024
_MAX_HOPS = 64  # symlinks followed while resolving one link (Linux stops at 40, macOS at 32)


def split_member(name: str) -> tuple[str, str]:
    """(source name, relative path) of a safe member name; raises for unsafe ones."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"member {name!r} has a forbidden character")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} contains '..'")
    if not parts:
        raise UnsafeArchiveError(f"member {name!r} has an empty path")
    return parts[0], "/".join(parts[1:])


def link_stays_inside(relpath: str, linkname: str) -> bool:
    if not linkname or posixpath.isabs(linkname):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), linkname))
    return not (resolved == ".." or resolved.startswith("../"))


class MemberChecker:
    """Checks each member of one archive in order, remembering links seen."""

    def __init__(self, sources: list[str], where: str):
        self.sources = set(sources)
        self.where = where
        self.symlinks: dict[tuple[str, str], str] = {}  # (source, rel) -> link target
        self.files: set[tuple[str, str]] = set()
        self.seen: set[tuple[str, str]] = set()
        self.parents: set[tuple[str, str]] = set()  # directories that hold a member seen so far

    def refuse(self, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{self.where}: refused: {why}")

    def check(self, m: Member) -> tuple[str, str]:
        try:
            source, rel = split_member(m.name)
        except UnsafeArchiveError as exc:
            raise self.refuse(str(exc)) from None
        if source not in self.sources:
            raise self.refuse(f"member {m.name!r} belongs to no source of the backup")
        if (source, rel) in self.seen:
            raise self.refuse(f"member {m.name!r} appears twice")
        self.seen.add((source, rel))
        parent = rel
        while parent:
            parent = posixpath.dirname(parent)
            if (source, parent) in self.symlinks:
                raise self.refuse(f"member {m.name!r} would be written through the symlink {source}/{parent}")
        if m.kind == "other:device":
            raise self.refuse(f"member {m.name!r} is a device")
        if m.kind == "other:fifo":
            raise self.refuse(f"member {m.name!r} is a FIFO")
        if m.kind.startswith("other"):
            raise self.refuse(f"member {m.name!r} has an unsupported type ({m.kind[6:]})")
        if m.kind != "dir" and m.mode & (statmod.S_ISUID | statmod.S_ISGID):
            raise self.refuse(f"member {m.name!r} is setuid/setgid")
        if m.kind == "symlink":
            if not rel or not link_stays_inside(rel, m.linkname):
                raise self.refuse(f"symlink {m.name!r} -> {m.linkname!r} leads outside its source")
            if (source, rel) in self.parents:
                raise self.refuse(f"symlink {m.name!r} would replace a directory holding earlier members")
            self.symlinks[(source, rel)] = m.linkname
        elif m.kind == "hardlink":
            try:
                lsource, lrel = split_member(m.linkname)
            except UnsafeArchiveError:
                raise self.refuse(f"hardlink {m.name!r} -> {m.linkname!r} leads outside the archive") from None
            if (lsource, lrel) not in self.files or lsource != source:
                raise self.refuse(f"hardlink {m.name!r} -> {m.linkname!r} does not point to an earlier file of its source")
        elif m.kind == "file":
            if not rel:
                raise self.refuse(f"member {m.name!r} replaces a source's root with a file")
            self.files.add((source, rel))
        parent = rel
        while parent:
            parent = posixpath.dirname(parent)
            self.parents.add((source, parent))
        return source, rel

    def finish(self) -> None:
        """After the last member: refuse symlinks that leave their source through other symlinks.

        ``link_stays_inside`` judges one link by its text, but ``a/up/../..`` is
        inside by text and outside on disk when ``a/up`` is itself a link to
        ``..``. Every link is resolved here against all the archive's links.
        """
        for (source, rel), target in self.symlinks.items():
            if self._escapes(source, posixpath.dirname(rel), target):
                raise self.refuse(f"symlink {source}/{rel} -> {target!r} leads outside its source "
                                  "through other symlinks of the archive")

    def _escapes(self, source: str, start: str, target: str) -> bool:
        stack = [p for p in start.split("/") if p]
        hops = 0
        pending = [p for p in target.split("/")]
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return True
                stack.pop()
                continue
            stack.append(part)
            link = self.symlinks.get((source, "/".join(stack)))
            if link is not None:
                hops += 1
                if hops > _MAX_HOPS:  # more than any OS follows: the lookup fails (ELOOP)
                    return False
                stack.pop()
                pending[:0] = link.split("/")
        return False


class Extractor:
    """Writes checked members into per-source staging directories."""

    def __init__(self, staging: dict[str, Path], where: str):
        self.staging = staging
        self.where = where
        self.dirs: list[tuple[Path, Member]] = []
        self.links: list[tuple[Path, Member]] = []
        self.root_is_owner = os.geteuid() == 0

    def _path(self, source: str, rel: str) -> Path:
        return self.staging[source] / rel if rel else self.staging[source]

    def add(self, source: str, rel: str, m: Member, reader) -> None:
        if source not in self.staging:
            return  # a source not being restored
        dest = self._path(source, rel)
        if m.kind == "dir":
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise UnsafeArchiveError(f"{self.where}: refused: {m.name!r} is a directory and also another entry")
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.dirs.append((dest, m))
        elif m.kind == "file":
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write(dest, reader.open_member(m), m)
        elif m.kind == "hardlink":
            lsource, lrel = split_member(m.linkname)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self._path(lsource, lrel), "rb", opener=_nofollow_opener) as f:
                self._write(dest, f, m)
        elif m.kind == "symlink":
            self.links.append((dest, m))

    def _write(self, dest: Path, src, m: Member) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(dest, flags, 0o600)
        except FileExistsError:
            raise UnsafeArchiveError(f"{self.where}: refused: member {m.name!r} appears twice") from None
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = src.read(_COPY)
                if not chunk:
                    break
                out.write(chunk)
            if self.root_is_owner:
                os.fchown(out.fileno(), m.uid, m.gid)
            os.fchmod(out.fileno(), statmod.S_IMODE(m.mode) & 0o1777)
        os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for dest, m in self.links:
            if os.path.lexists(dest):
                raise UnsafeArchiveError(f"{self.where}: refused: symlink {m.name!r} would replace another entry")
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.symlink(m.linkname, dest)
            try:
                os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)
            except (NotImplementedError, OSError):
                pass
        for dest, m in sorted(self.dirs, key=lambda d: len(d[0].parts), reverse=True):
            if self.root_is_owner:
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
            os.chmod(dest, statmod.S_IMODE(m.mode))
            os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)


def _nofollow_opener(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))
