"""Built-in source ``directory``: a tree of files, with include/exclude globs.

Patterns are matched against the POSIX path relative to the source's root; a
pattern without ``/`` also matches a bare file or directory name anywhere
(``*.tmp``, ``cache``). An excluded directory is not descended into. With
``include`` set, only matching files are backed up (directories are kept, so
the tree's shape survives). Symlinks are stored as links; one that leads
outside the tree is skipped with a warning, since restore would refuse it.
Sockets, FIFOs and devices are skipped.

The tree may change while it is read (a living application): an entry that
vanishes after it was listed is skipped, a file that changes while read is
archived as read, and an unreadable one is skipped (``on_unreadable: fail``
makes that fatal); each is a warning recorded in the manifest, and the backup
is still made.

The framework's own storage inside the tree (``storage_paths``, set by the
manager: local targets, the state directory) and what interrupted restores left
(``.<name>.eternia-restore-*``) are never read, and an in-place restore carries
that storage into the new tree. SQLite databases (found by their 16-byte header)
are warned about, or with ``sqlite: snapshot`` copied through the backup API.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import operator
import os
import posixpath
import shutil
import sqlite3
import stat as statmod
from pathlib import Path
from typing import Literal

from pydantic import Field

from eternia_backup.api import (
    DirectorySwapPlan,
    EntryWriter,
    Source,
    SourceError,
    SourceOptions,
    UnreadableFileError,
    hookimpl,
    read_xattrs,
    scratch_dir,
    xattr_namespaces_kept,
)

log = logging.getLogger("eternia_backup.source.directory")

PATH_MAX = 4096  # Linux: the longest path the kernel opens; longer ones fail with ENAMETOOLONG
_NAME = operator.attrgetter("name")  # the sort key of a listing (a lambda cost a Python call per entry)


class DirectoryOptions(SourceOptions):
    path: str = Field(description="The directory, relative to the config file.", examples=["state/files"])
    include: list[str] = Field([], description="Glob patterns: only matching files are backed up "
                               "(directories are kept).", examples=[["*.json", "uploads/*"]])
    exclude: list[str] = Field([], description="Glob patterns of files and directories left out; a pattern "
                               "without / matches a name anywhere.", examples=[["*.tmp", "cache"]])
    on_unreadable: Literal["warn", "fail"] = Field(
        "warn", description="A file or directory that cannot be read: warn skips it with a warning (exit 3), "
        "fail fails the backup.", examples=["fail"])
    sqlite: Literal["warn", "snapshot", "ignore"] = Field(
        "warn", description="SQLite databases found in the tree: warn (copy their bytes, warn at create and "
        "config check), snapshot (copy each through SQLite's backup API, leaving out its -wal/-journal/-shm "
        "files) or ignore (copy, no warning).", examples=["snapshot"])


def _matches(relpath: str, patterns: list[str]) -> bool:
    base = relpath.rsplit("/", 1)[-1]
    for pat in patterns:
        pat = pat.strip("/")
        if fnmatch.fnmatchcase(relpath, pat) or fnmatch.fnmatchcase(relpath, pat + "/*"):
            return True
        if "/" not in pat and fnmatch.fnmatchcase(base, pat):
            return True
    return False


class DirectorySource(Source):
    type_name = "directory"
    options_model = DirectoryOptions
    restore_plan_types = (DirectorySwapPlan,)
    supports_increments = True  # sorted walk, stat passed to add_file
    drill_keys = ("files",)  # a drill counts the restored tree and hashes a sample (eternia_backup.drill)

    @property
    def root(self) -> Path:
        p = Path(self.options.path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def describe(self):
        return {"type": self.type_name, "name": self.name, "path": str(self.root),
                "include": list(self.options.include), "exclude": list(self.options.exclude)}

    def check(self) -> None:
        root = self.root
        if not root.exists():
            raise SourceError(f"source {self.name!r}: directory {root} does not exist; create it or fix its path")
        if not root.is_dir():
            raise SourceError(f"source {self.name!r}: {root} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SourceError(f"source {self.name!r}: directory {root} is not readable (permission denied)")
        if self._is_the_storage():
            raise SourceError(f"source {self.name!r}: directory {root} is where backups are stored; "
                              "back up the application's directory and keep backups elsewhere (or in a subdirectory)")

    def backup(self, writer: EntryWriter) -> None:
        self.check()
        root = self.root
        self._real_root = os.path.realpath(root)
        self._xattr_namespaces = xattr_namespaces_kept()
        self._storage_ids = self._storage_inodes()
        self._storage_inos = {ino for _dev, ino in self._storage_ids}
        # A Path per file cost ~1.5 us (300,000 tiny files: 0.5 s); writers that say so get the str.
        self._file_path = str if getattr(writer, "str_paths", False) else Path
        # A writer that stats the open file itself (stat_optional) gets regular files unstat'ed:
        # the listing's file type needs no syscall, and an lstat was ~4 us a file. Databases taken
        # by snapshot are recognised before they are archived, so sqlite: snapshot keeps the stat.
        self._unstated = getattr(writer, "stat_optional", False) and self.options.sqlite != "snapshot"
        self._sqlite_workdir = None
        try:
            self._directory(writer, str(root), "", root.stat())
        finally:
            if self._sqlite_workdir is not None:
                shutil.rmtree(self._sqlite_workdir, ignore_errors=True)

    def _leads_outside(self, path: str, relpath: str, target: str) -> bool:
        """True for a link restore would refuse: outside by its text, or on disk through other links."""
        if posixpath.isabs(target) or posixpath.normpath(posixpath.join(posixpath.dirname(relpath), target)).startswith(".."):
            return True
        resolved = os.path.realpath(path)
        return resolved != self._real_root and not resolved.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def _unreadable(self, writer: EntryWriter, relpath: str, error: SourceError) -> None:
        """``on_unreadable: warn`` (the default) skips it with a warning; ``fail`` fails the backup."""
        if self.options.on_unreadable == "fail":
            raise SourceError(f"{error} (on_unreadable is 'fail'; make it readable, exclude it, "
                              "or set on_unreadable: warn)") from error
        writer.warn(relpath, "unreadable (permission denied); skipped")

    def _directory(self, writer: EntryWriter, path: str, rel: str, st: os.stat_result) -> None:
        """Archive one directory and what is under it; one that vanished or cannot be listed is skipped."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_NAME)
        except OSError as exc:
            if not rel:  # the root itself: an empty section would restore as an empty tree
                raise SourceError(f"source {self.name!r}: cannot read directory {path}: {exc.strerror}") from exc
            if isinstance(exc, FileNotFoundError):
                writer.warn(rel, "directory vanished before it was read; skipped")
            elif isinstance(exc, NotADirectoryError):
                writer.warn(rel, "was replaced by a file before it was read; skipped")
            elif isinstance(exc, PermissionError):
                self._unreadable(writer, rel, SourceError(f"source {self.name!r}: cannot read directory {path}: "
                                                          "permission denied"))
            else:
                raise
            return
        writer.add_directory(rel, mode=st.st_mode, mtime=st.st_mtime, uid=st.st_uid, gid=st.st_gid,
                             **self._extras(writer, path, rel, st))
        for entry in entries:
            self._entry(writer, entry, f"{rel}/{entry.name}" if rel else entry.name)

    def _extras(self, writer: EntryWriter, path: str, rel: str, st: os.stat_result) -> dict:
        """Exact mtime and extended attributes, for writers that take them (the built-in tar does)."""
        if not writer.exact_metadata:
            return {}
        try:
            xattrs = read_xattrs(path, self._xattr_namespaces)
        except OSError as exc:
            writer.warn(rel, f"extended attributes could not be read ({exc.strerror}); archived without them")
            xattrs = {}
        return {"mtime_ns": st.st_mtime_ns, "xattrs": xattrs}

    def _entry(self, writer: EntryWriter, entry: os.DirEntry, relpath: str) -> None:
        opts = self.options
        if opts.exclude and _matches(relpath, opts.exclude):
            return
        if self._left_out(entry):
            return
        # (a str of n characters encodes to at most 4n bytes: most paths need no encoding)
        path = entry.path
        if len(path) * 4 >= PATH_MAX and len(os.fsencode(path)) >= PATH_MAX:
            writer.warn(relpath, f"its path is {PATH_MAX} bytes or longer (PATH_MAX), which restore cannot "
                                 "create; skipped")
            return
        if self._unstated and (not opts.include or _matches(relpath, opts.include)):
            try:  # the listing's type: no syscall where the filesystem gives it (most do), else an lstat
                listed_file = entry.is_file(follow_symlinks=False)
            except OSError:
                listed_file = False  # the stat below says what happened
            if listed_file:
                self._listed_file(writer, path, relpath)
                return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            writer.warn(relpath, "vanished before it was read; skipped")
            return
        except PermissionError:  # a directory we may list (r) but not enter (x)
            self._unreadable(writer, relpath, SourceError(f"source {self.name!r}: cannot stat {entry.path}: "
                                                          "permission denied"))
            return
        if statmod.S_ISDIR(st.st_mode):
            self._directory(writer, entry.path, relpath, st)
        elif opts.include and not _matches(relpath, opts.include):
            return
        elif statmod.S_ISREG(st.st_mode):
            if opts.sqlite != "ignore" and is_sqlite_file(entry.path, st) \
                    and self._sqlite_handled(writer, relpath, Path(entry.path), st):
                return
            try:
                writer.add_file(relpath, self._file_path(entry.path), stat=st)
            except UnreadableFileError as exc:
                self._unreadable(writer, relpath, exc)
        elif statmod.S_ISLNK(st.st_mode):
            self._symlink(writer, entry.path, relpath, st)
        else:
            log.warning("source %r: skipping %s: not a regular file, directory or symlink", self.name, relpath)

    def _listed_file(self, writer: EntryWriter, path: str, relpath: str) -> None:
        """A file the listing says is regular, archived without a stat here: the writer checks the
        open file (one replaced meanwhile is skipped with a warning) and returns its fstat."""
        try:
            st = writer.add_file(relpath, self._file_path(path))
        except UnreadableFileError as exc:
            self._unreadable(writer, relpath, exc)
            return
        if st is not None and st.st_size >= SQLITE_SMALLEST and self.options.sqlite == "warn" \
                and is_sqlite_file(path):
            log.warning("%s", self._sqlite_advice(relpath))

    def _symlink(self, writer: EntryWriter, path: str, relpath: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            writer.warn(relpath, "vanished before it was read; skipped")
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: replaced by something that is not a link
                raise
            writer.warn(relpath, "was replaced by something other than a symlink before it was read; skipped")
            return
        if self._leads_outside(path, relpath, target):
            log.warning("source %r: skipping symlink %s -> %s: it leads outside the tree", self.name, relpath, target)
            return
        if writer.exact_metadata:
            writer.add_symlink(relpath, target, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)
        else:
            writer.add_symlink(relpath, target, mtime=st.st_mtime)

    def estimate_size(self) -> int | None:
        """The bytes of the regular files the walk would take (metadata only: no file is read)."""
        self._storage_ids = self._storage_inodes()  # backups stored inside are left out, as by the walk
        total, stack = 0, [(self.root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        relpath = f"{rel}/{entry.name}" if rel else entry.name
                        if self.options.exclude and _matches(relpath, self.options.exclude):
                            continue
                        if self._is_storage(entry.name, entry.inode(), entry.path):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, relpath))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # the backup itself says what cannot be read
        return total

    # -- our own storage inside the tree (self-inclusion) --------------------------

    def storage_inside(self) -> list[Path]:
        """The framework's storage paths (``storage_paths``) that lie inside this tree."""
        root = os.path.realpath(self.root)
        return [p for p in self.storage_paths if _inside(os.path.realpath(p), root)]

    def _is_the_storage(self) -> bool:
        root = os.path.realpath(self.root)
        return any(os.path.realpath(p) == root for p in self.storage_paths)

    def _storage_inodes(self) -> set[tuple[int, int]]:
        ids = set()
        for p in self.storage_inside():
            try:
                st = os.stat(p)
            except OSError:
                continue
            ids.add((st.st_dev, st.st_ino))
        return ids

    def _left_out(self, entry: os.DirEntry) -> bool:
        """Our storage, or the -wal/-journal/-shm file of a database taken by snapshot."""
        name = entry.name
        if name.startswith(".") and (".eternia-restore-" in name or ".eternia-replaced-" in name):
            return True
        if self._storage_inos and entry.inode() in self._storage_inos \
                and self._is_storage(name, entry.inode(), entry.path):
            return True
        return self.options.sqlite == "snapshot" and _database_of_sibling(Path(entry.path)) is not None

    def _is_storage(self, name: str, inode: int, path: str) -> bool:
        """Our storage, or what an interrupted restore left: never part of the backup."""
        if name.startswith(".") and (".eternia-restore-" in name or ".eternia-replaced-" in name):
            return True
        if not any(inode == ino for _dev, ino in self._storage_ids):
            return False
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._storage_ids

    # -- SQLite databases in the tree ------------------------------------------------

    def _sqlite_handled(self, writer: EntryWriter, relpath: str, path: Path, st) -> bool:
        """Take a database found in the tree through the backup API (``sqlite: snapshot``), or warn;
        True when done here."""
        mode = self.options.sqlite
        if mode == "warn":
            log.warning("%s", self._sqlite_advice(relpath))
            return False
        from eternia_backup.builtin.sqlite import remove_copy, snapshot

        if self._sqlite_workdir is None:
            self._sqlite_workdir = scratch_dir("dir-sqlite")
        copy = self._sqlite_workdir / "copy.db"
        try:
            snapshot(path, copy, label=f"source {self.name!r}")
            os.utime(copy, (st.st_atime, st.st_mtime))
            os.chmod(copy, st.st_mode & 0o7777)
            writer.add_file(relpath, copy, stat=None)
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"source {self.name!r}: cannot snapshot SQLite database {path}: {exc}") from exc
        finally:
            for p in self._sqlite_workdir.iterdir():
                remove_copy(p)
        return True

    def _sqlite_advice(self, relpath: str) -> str:
        name = posixpath.splitext(posixpath.basename(relpath))[0] or "db"
        return (f"source {self.name!r}: {relpath} is a SQLite database; copying a live database's bytes can give "
                f"a corrupt copy. Back it up as its own source (exclude it here: exclude: [{relpath}]):  "
                f"{{type: sqlite, name: {name}, path: {self.root / relpath}}}  "
                f"or set sqlite: snapshot on source {self.name!r}")

    def sqlite_databases(self, limit: int = 20) -> list[str]:
        """Relative paths of SQLite databases in the tree (for config check), at most ``limit``."""
        found: list[str] = []
        self._storage_ids = self._storage_inodes()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            dirnames[:] = [d for d in dirnames
                           if not (self.options.exclude and _matches(f"{rel}/{d}".lstrip("/"), self.options.exclude))
                           and not self._is_storage(d, os.lstat(os.path.join(dirpath, d)).st_ino,
                                                    os.path.join(dirpath, d))]
            for f in sorted(filenames):
                relpath = f"{rel}/{f}".lstrip("/")
                if self.options.exclude and _matches(relpath, self.options.exclude):
                    continue
                if is_sqlite_file(Path(dirpath) / f):
                    found.append(relpath)
                    if len(found) >= limit:
                        return found
        return found

    def notes(self) -> list[str]:
        lines = []
        inside = [p for p in self.storage_inside() if os.path.realpath(p) != os.path.realpath(self.root)]
        if self._is_the_storage():
            lines.append(f"warning: source {self.name!r} is the storage directory {self.root} itself; "
                         "create will refuse it")
        if inside:
            names = ", ".join(os.path.relpath(p, self.root) + "/" for p in inside)
            lines.append(f"note: source {self.name!r} contains local storage {names}; it is excluded from that source")
        if self.options.sqlite == "warn" and self.root.is_dir():
            lines += ["warning: " + self._sqlite_advice(rel) for rel in self.sqlite_databases()]
        return lines

    def default_destination(self) -> Path:
        return self.root

    def restore_plan(self, destination: Path | None):
        return DirectorySwapPlan(destination or self.root, f"source {self.name!r}", carry=self.storage_paths)


SQLITE_HEADER = b"SQLite format 3\x00"
#: a database file holds whole pages of at least 512 bytes (SQLite's smallest page size):
#: a smaller file is never one, and is not opened to look
SQLITE_SMALLEST = 512
_SIDECARS = ("-wal", "-journal", "-shm")


def is_sqlite_file(path: Path, st=None) -> bool:
    """Whether ``path`` is a SQLite database, by its 16-byte header."""
    if st is not None and st.st_size < SQLITE_SMALLEST:
        return False
    try:  # os calls, not open(): a buffered file object per file cost more than the check
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.read(fd, len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False
    finally:
        os.close(fd)


def _database_of_sibling(path: Path) -> Path | None:
    """The database a -wal/-journal/-shm file belongs to, if it is one."""
    for suffix in _SIDECARS:
        if path.name.endswith(suffix):
            db = path.with_name(path.name[: -len(suffix)])
            if db.is_file() and is_sqlite_file(db):
                return db
    return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@hookimpl
def eternia_register_sources(register):
    register(DirectorySource)
