"""Refusing hostile archive members and extracting safely.

Nothing here relies on ``tarfile``'s extraction filters (they have had several
bypasses). Every member name is checked by hand: relative, no ``..``, inside a
known source, a type we write ourselves (file, directory, symlink, hardlink to
an earlier file of the same source). Extraction goes into a fresh staging
directory with ``O_EXCL | O_NOFOLLOW``; symlinks are created last, and a member
whose parent path is a symlink of the archive is refused, so nothing is ever
written through a link.

Setuid/setgid bits are archived as they are (an application's ``bin/`` may
need them) and are not a reason to refuse an archive; the extractor strips them,
and the ``security.capability`` attribute that grants privileges the same way,
unless the caller asked to keep them (``--keep-setid``: as root, in place).
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import stat as statmod
from pathlib import Path

from .errors import UnsafeArchiveError
from .providers import Member
from .streams import split_append, split_part
from .system_tar import MAX_FORWARDED_SIZE, TarFeed

log = logging.getLogger("eternia_backup.restore")

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


def _plain_name(name: str) -> bool:
    """A member name already in normal form (``source/a/b``: no empty, ``.`` or ``..`` part, no
    forbidden character), which :func:`split_member` would give back unchanged. Most names are;
    the others go through :func:`split_member`, which normalizes or refuses them."""
    return name != "" and not ("//" in name or "/." in name or "\\" in name or "\x00" in name
                               or name.startswith(("/", ".")) or name.endswith("/") or name[1:2] == ":")


class MemberChecker:
    """Checks each member of one archive in order, remembering links seen.

    Members are remembered by their normalized name (``source/rel``, or ``source``
    for a source's root): for a plain name that is the member's own string, so a
    million members cost one dict entry each, not two sets of tuples.
    """

    def __init__(self, sources: list[str], where: str):
        self.sources = set(sources)
        self.where = where
        self.symlinks: dict[tuple[str, str], str] = {}  # (source, rel) -> link target
        self.seen: dict[str, bool] = {}  # normalized name -> is a regular file (a hard link may point to it)
        self.parents: set[str] = set()  # normalized names of directories that hold a member seen so far

    def refuse(self, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{self.where}: refused: {why}")

    def check(self, m: Member) -> tuple[str, str]:
        name = m.name
        if _plain_name(name):
            key = name
            source, _, rel = name.partition("/")
        else:
            try:
                source, rel = split_member(name)
            except UnsafeArchiveError as exc:
                raise self.refuse(str(exc)) from None
            key = f"{source}/{rel}" if rel else source
        if source not in self.sources:
            raise self.refuse(f"member {name!r} belongs to no source of the backup")
        if key in self.seen:
            raise self.refuse(f"member {name!r} appears twice")
        kind = m.kind
        if self.symlinks:
            parent = rel
            while parent:
                parent = parent.rpartition("/")[0]
                if (source, parent) in self.symlinks:
                    raise self.refuse(f"member {name!r} would be written through the symlink {source}/{parent}")
        if kind == "file":
            if not rel:
                raise self.refuse(f"member {name!r} replaces a source's root with a file")
        elif kind == "symlink":
            if not rel or not link_stays_inside(rel, m.linkname):
                raise self.refuse(f"symlink {name!r} -> {m.linkname!r} leads outside its source")
            if key in self.parents:
                raise self.refuse(f"symlink {name!r} would replace a directory holding earlier members")
            self.symlinks[(source, rel)] = m.linkname
        elif kind == "hardlink":
            try:
                lsource, lrel = split_member(m.linkname)
            except UnsafeArchiveError:
                raise self.refuse(f"hardlink {name!r} -> {m.linkname!r} leads outside the archive") from None
            if lsource != source or not self.seen.get(f"{lsource}/{lrel}" if lrel else lsource):
                raise self.refuse(f"hardlink {name!r} -> {m.linkname!r} does not point to an earlier file of its source")
        elif kind == "other:device":
            raise self.refuse(f"member {name!r} is a device")
        elif kind == "other:fifo":
            raise self.refuse(f"member {name!r} is a FIFO")
        elif kind.startswith("other"):
            raise self.refuse(f"member {name!r} has an unsupported type ({kind[6:]})")
        self.seen[key] = kind == "file"
        parents = self.parents
        parent = key
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            if parent in parents:
                break  # and so are its own parents
            parents.add(parent)
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


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_PIECE = ".eternia-"  # in the name of a dump's part or of an appended part (eternia_backup.streams)
_BLOCK = 4096  # the unit holes are made of: a filesystem block on ext4/xfs/btrfs
_ZERO_CHUNK = bytes(_COPY)
_SETID = statmod.S_ISUID | statmod.S_ISGID
_PRIVILEGE_XATTRS = ("security.capability",)  # grants privileges like setuid does


class Extractor:
    """Writes checked members into per-source staging directories.

    ``keep_setid`` keeps setuid/setgid bits (and file capabilities); the caller
    allows it only as root restoring in place. Otherwise they are stripped and
    :meth:`finish` logs one warning line saying how many and where.

    Paths are plain strings here (pathlib cost more per tiny file than its write),
    and a plain file is created with its final mode when the kernel gives it that
    mode (see :meth:`_creatable`): open, write, set mtime, close. Past the first few
    hundred, small files and hard links go to GNU tar instead where there is one
    (:mod:`eternia_backup.system_tar`: it makes them on the other core); :meth:`finish`
    waits for it, and :meth:`abort` stops it when the restore fails.
    """

    def __init__(self, staging: dict[str, Path], where: str, *, keep_setid: bool = False):
        self.staging = staging
        self.roots = {name: os.fspath(path) for name, path in staging.items()}
        self.where = where
        self.keep_setid = keep_setid
        self.dirs: list[tuple[str, Member]] = []
        self.links: list[tuple[str, Member]] = []
        self.root_is_owner = os.geteuid() == 0
        self.xattr_namespaces = ("user.", "trusted.", "security.") if self.root_is_owner else ("user.",)
        self.stripped: list[str] = []  # members whose setid bits were stripped
        self.xattr_failures: list[str] = []  # "member: name (reason)"
        self.made_dirs: set[str] = set()  # staging directories known to exist (no mkdir per file)
        #: parts of dumps archived in pieces (eternia_backup.streams), joined in finish()
        self.parts: dict[Path, list[tuple[int, str, Member]]] = {}
        #: per staging root: the permission bits a file created there keeps of the mode it is created
        #: with, and the owner it gets (see _creatable)
        self.created: dict[str, tuple[int, int, int]] = {}
        self.feed = TarFeed(same_owner=self.root_is_owner, where=where)
        self.forward = self.feed.usable

    def _path(self, source: str, rel: str) -> str:
        return f"{self.roots[source]}/{rel}" if rel else self.roots[source]

    def add(self, source: str, rel: str, m: Member, reader) -> None:
        root = self.roots.get(source)
        if root is None:
            return  # a source not being restored
        dest = f"{root}/{rel}" if rel else root
        kind = m.kind
        if kind == "file":
            part = None
            if _PIECE in rel:  # a dump in parts, or what an incremental appended (rare: one test first)
                appended = split_append(rel)
                if appended is not None:
                    self.feed.settle(root)  # the file appended to must be on disk
                    self._append(self._path(source, appended[0]), appended[1], reader.open_member(m), m)
                    return
                part = split_part(rel)
            elif self.forward and m.size <= MAX_FORWARDED_SIZE and not m.xattrs \
                    and (self.feed.active(root) or self.feed.wants()):
                self._forward(root, rel, m, reader)
                return
            parent = dest.rpartition("/")[0]
            if parent not in self.made_dirs:
                self._make_dir(parent)
            self._write(dest, root, reader.open_member(m), m)
            if part is not None:
                whole = Path(parent) / posixpath.basename(part[0])
                self.parts.setdefault(whole, []).append((part[1], dest, m))
        elif kind == "dir":
            try:
                st = os.lstat(dest)
            except FileNotFoundError:
                pass
            else:
                if not statmod.S_ISDIR(st.st_mode):
                    raise UnsafeArchiveError(f"{self.where}: refused: {m.name!r} is a directory and also another entry")
            self._make_dir(dest)
            self.dirs.append((dest, m))
        elif kind == "hardlink":
            self._link(source, dest, m)
        elif kind == "symlink":
            self.links.append((dest, m))

    def _make_dir(self, path: str) -> None:
        if path not in self.made_dirs:
            os.makedirs(path, mode=0o700, exist_ok=True)
            self.made_dirs.add(path)

    def _forward(self, root: str, rel: str, m: Member, reader) -> None:
        """Hand a small file to tar, or write it here when tar cannot take it (a name not in UTF-8)."""
        mode = statmod.S_IMODE(m.mode)
        if mode & _SETID:
            mode = self._mode(m)  # (counts it as stripped, once)
        data = _read_exactly(reader.open_member(m), m.size)
        if not self.feed.file(root, rel, m, mode, data):
            dest = f"{root}/{rel}"
            self._make_dir(dest.rpartition("/")[0])
            self._write(dest, root, io.BytesIO(data), m)

    def _link(self, source: str, dest: str, m: Member) -> None:
        """A hard link to an earlier file of the same source (MemberChecker made sure of both)."""
        lsource, lrel = split_member(m.linkname)
        if lsource != source:
            raise UnsafeArchiveError(f"{self.where}: refused: hardlink {m.name!r} leaves its source")
        root = self.roots[source]
        if self.feed.active(root):  # the target may be tar's: tar links it after making it
            if self.feed.hardlink(root, dest[len(root) + 1:], lrel, m):
                return
            self.feed.settle(root)
        self._make_dir(dest.rpartition("/")[0])
        try:
            # Staging holds no symlink yet (they are made in finish()), so no
            # component of either path can lead elsewhere.
            os.link(self._path(lsource, lrel), dest, follow_symlinks=False)
        except FileExistsError:
            raise UnsafeArchiveError(f"{self.where}: refused: member {m.name!r} appears twice") from None

    def _mode(self, m: Member) -> int:
        mode = statmod.S_IMODE(m.mode)
        if mode & _SETID and m.kind != "dir" and not self.keep_setid:
            self.stripped.append(m.name)
            mode &= ~_SETID
        return mode

    def _creatable(self, root: str) -> tuple[int, int, int]:
        """(permission bits, uid, gid) a file created under ``root`` gets: which bits of its creation
        mode it keeps, and its owner.

        The kernel masks a new file's mode with the umask, or with the directory's
        default ACL where it has one (inherited by every directory made under the
        staging root). Both keep a fixed subset of the bits; a probe file created
        with 0o777 shows which. A mode inside that subset needs no chmod after
        the create; any other (setid, sticky, bits the mask drops) still gets one.
        The owner is ours, the group ours or the directory's (setgid directories,
        inherited too): as root, a member owned so needs no chown either.
        """
        found = self.created.get(root)
        if found is None:
            probe = f"{root}/..eternia-mode-probe-{os.getpid()}"
            try:
                fd = os.open(probe, _CREATE, 0o777)
            except OSError:
                found = (0, -1, -1)  # always chmod (and chown as root)
            else:
                try:
                    st = os.fstat(fd)
                    found = (statmod.S_IMODE(st.st_mode) & 0o777, st.st_uid, st.st_gid)
                finally:
                    os.close(fd)
                    os.unlink(probe)
            self.created[root] = found
        return found

    def _write(self, dest: str, root: str, src, m: Member) -> None:
        mode = statmod.S_IMODE(m.mode)
        if mode & _SETID:
            mode = self._mode(m)
        # Created with its final mode when nothing follows that needs more (an owner change
        # as root, which clears setid bits; xattrs, which need write permission on the file).
        # As root, a member owned as the new file already is needs no chown.
        created = self.created.get(root) or self._creatable(root)
        final = (not mode & ~created[0] and not m.xattrs
                 and (not self.root_is_owner or (m.uid == created[1] and m.gid == created[2])))
        try:
            fd = os.open(dest, _CREATE, mode if final else 0o600)
        except FileExistsError:
            raise UnsafeArchiveError(f"{self.where}: refused: member {m.name!r} appears twice") from None
        try:
            size = m.size
            if size < _BLOCK:  # no whole block that could be a hole: one write (most files of a tree)
                if size:
                    data = src.read(size)
                    if len(data) != size:  # the archive stream gave it in pieces
                        _write_all_fd(fd, src, size, data)
                    elif (n := os.write(fd, data)) != size:  # a short write: a full disk, a signal
                        _write_view(fd, memoryview(data)[n:])
            else:
                with os.fdopen(fd, "wb", buffering=0, closefd=False) as out:
                    size, ends_in_hole = _write_sparse(out, src)
                    if ends_in_hole:
                        out.truncate(size)  # a file ending in a hole gets its length
            if not final:
                if self.root_is_owner:
                    os.fchown(fd, m.uid, m.gid)  # first: chown clears setid bits and capabilities
                if m.xattrs:
                    self._set_xattrs(fd, m)
                os.fchmod(fd, mode)
            ns = m.mtime_ns if m.mtime_ns is not None else int(m.mtime * 1_000_000_000)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def _append(self, dest: str, offset: int, src, m: Member) -> None:
        """What an incremental backup stored as appended to a file: the file, staged from the chain's
        earlier archives (read oldest first), must be a plain file of exactly ``offset`` bytes."""
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            fd = None
        try:
            if fd is None or not statmod.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size != offset:
                raise UnsafeArchiveError(f"{self.where}: refused: {m.name!r} appends to {os.path.basename(dest)} at byte "
                                         f"{offset}, but the chain's earlier archives do not give a file of "
                                         "that size there")
            while chunk := src.read(_COPY):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if os.fstat(fd).st_size != offset + m.size:
                raise UnsafeArchiveError(f"{self.where}: refused: {m.name!r} holds fewer bytes than it declares")
            os.fchmod(fd, self._mode(m))
            _set_mtime(fd, m)
        finally:
            if fd is not None:
                os.close(fd)

    def _set_xattrs(self, target, m: Member) -> None:
        """Restore what the filesystem and our rights allow; a refusal is a warning, not a failure."""
        for name, value in m.xattrs.items():
            if not name.startswith(self.xattr_namespaces):
                self.xattr_failures.append(f"{m.name}: {name} (needs root)")
                continue
            if name in _PRIVILEGE_XATTRS and not self.keep_setid:
                self.stripped.append(m.name)
                continue
            if not hasattr(os, "setxattr"):
                self.xattr_failures.append(f"{m.name}: {name} (this platform has no extended attributes)")
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as exc:
                self.xattr_failures.append(f"{m.name}: {name} ({exc.strerror})")

    def _join_parts(self) -> None:
        """Join each dump archived in parts back into one file, in part order (then the parts are gone)."""
        for whole, parts in self.parts.items():
            parts.sort(key=lambda p: p[0])
            if [n for n, _, _ in parts] != list(range(1, len(parts) + 1)):
                raise UnsafeArchiveError(f"{self.where}: refused: the parts of {whole.name} are not 1..{len(parts)} "
                                         f"(found {[n for n, _, _ in parts]})")
            if os.path.lexists(whole):
                raise UnsafeArchiveError(f"{self.where}: refused: {whole.name} is both a file and a dump in parts")
            first = parts[0][1]
            os.rename(first, whole)
            with open(whole, "ab") as out:
                for _, path, _ in parts[1:]:
                    with open(path, "rb") as f:
                        while chunk := f.read(_COPY):
                            out.write(chunk)
                    os.unlink(path)
            _set_mtime(whole, parts[0][2])

    def abort(self) -> None:
        """The restore failed: stop what still writes into the staging directories."""
        self.feed.abort()

    def finish(self) -> None:
        self.feed.finish()  # first: everything below needs tar's files on disk
        self._join_parts()
        for dest, m in self.links:
            if os.path.lexists(dest):
                raise UnsafeArchiveError(f"{self.where}: refused: symlink {m.name!r} would replace another entry")
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            os.symlink(m.linkname, dest)
            try:
                _set_mtime(dest, m)
            except (NotImplementedError, OSError):
                pass
        for dest, m in sorted(self.dirs, key=lambda d: d[0].count("/"), reverse=True):
            self._set_xattrs(dest, m)
            if self.root_is_owner:
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
            os.chmod(dest, statmod.S_IMODE(m.mode))
            _set_mtime(dest, m)
        self._report()

    def _report(self) -> None:
        """One warning line per kind of thing not restored as archived."""
        if self.stripped:
            log.warning("%s: setuid/setgid bits (or file capabilities) of %d file(s) were not restored, e.g. %s; "
                        "to keep them restore in place as root with --keep-setid (keep_setid=True)",
                        self.where, len(self.stripped), ", ".join(self.stripped[:3]))
        if self.xattr_failures:
            log.warning("%s: %d extended attribute(s) could not be restored, e.g. %s",
                        self.where, len(self.xattr_failures), "; ".join(self.xattr_failures[:3]))


def _set_mtime(path: Path | int, m: Member) -> None:
    ns = m.mtime_ns if m.mtime_ns is not None else int(m.mtime * 1_000_000_000)
    if isinstance(path, int):
        os.utime(path, ns=(ns, ns))  # an open file
    else:
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _read_exactly(src, size: int) -> bytes:
    """``size`` bytes of a member (fewer only at the end of a damaged archive: its checksum fails)."""
    data = src.read(size) if size else b""
    if len(data) < size:
        pieces = [data]
        got = len(data)
        while got < size and (chunk := src.read(size - got)):
            pieces.append(chunk)
            got += len(chunk)
        data = b"".join(pieces)
    return data


def _write_sparse(out, src) -> tuple[int, bool]:
    """Copy ``src`` into ``out``, seeking over all-zero blocks so they stay holes.

    Returns the size and whether the file ends in a hole (then it needs a truncate to get its length).

    A 2 GiB file with 8 KiB of data is restored with ~8 KiB on disk. Whole
    zero chunks are skipped with one comparison (memcmp); others are split
    into 4 KiB blocks, and runs of data blocks are written at once.
    """
    size, hole_at_end = 0, False
    while chunk := src.read(_COPY):
        n = len(chunk)
        if _ZERO_CHUNK.startswith(chunk):  # all zeros (a memcmp, no copy)
            out.seek(n, os.SEEK_CUR)
            hole_at_end = True
        elif n < _BLOCK:  # no whole block: nothing to skip
            _write_all(out, chunk)
            hole_at_end = False
        else:
            hole_at_end = _write_blocks(out, memoryview(chunk))
        size += n
    return size, hole_at_end


def _write_all_fd(fd: int, src, size: int, first: bytes = b"") -> None:
    """Copy the ``size`` bytes of a small member with plain writes; ``first``: its first bytes, read already."""
    chunk = first
    while True:
        size -= len(chunk)
        _write_view(fd, memoryview(chunk))
        if size <= 0:
            break
        chunk = src.read(size)
        if not chunk:
            break


def _write_view(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _write_all(out, data) -> None:
    """``out`` is unbuffered: a write may take only part (a full disk, a signal)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _write_blocks(out, view: memoryview) -> bool:
    """Write ``view``, seeking over its all-zero 4 KiB blocks; True when it ends in one."""
    start = 0  # first byte of the pending run of data
    for off in range(0, len(view), _BLOCK):
        block = view[off:off + _BLOCK]
        if len(block) == _BLOCK and _ZERO_CHUNK.startswith(block):
            if off > start:
                _write_all(out, view[start:off])
            out.seek(_BLOCK, os.SEEK_CUR)
            start = off + _BLOCK
    if start < len(view):
        _write_all(out, view[start:])
        return False
    return True
