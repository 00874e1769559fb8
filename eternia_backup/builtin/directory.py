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
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import posixpath
import stat as statmod
from pathlib import Path
from typing import Literal

from pydantic import Field

from eternia_backup import hookimpl
from eternia_backup.errors import SourceError, UnreadableFileError
from eternia_backup.fsutil import read_xattrs, xattr_namespaces_kept
from eternia_backup.plans import DirectorySwapPlan
from eternia_backup.providers import EntryWriter, Source, SourceOptions

log = logging.getLogger("eternia_backup.source.directory")

PATH_MAX = 4096  # Linux: the longest path the kernel opens; longer ones fail with ENAMETOOLONG


class DirectoryOptions(SourceOptions):
    path: str = Field(description="The directory, relative to the config file.", examples=["state/files"])
    include: list[str] = Field([], description="Glob patterns: only matching files are backed up "
                               "(directories are kept).", examples=[["*.json", "uploads/*"]])
    exclude: list[str] = Field([], description="Glob patterns of files and directories left out; a pattern "
                               "without / matches a name anywhere.", examples=[["*.tmp", "cache"]])
    on_unreadable: Literal["warn", "fail"] = Field(
        "warn", description="A file or directory that cannot be read: warn skips it with a warning (exit 3), "
        "fail fails the backup.", examples=["fail"])


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

    def backup(self, writer: EntryWriter) -> None:
        self.check()
        root = self.root
        self._real_root = os.path.realpath(root)
        self._xattr_namespaces = xattr_namespaces_kept()
        self._directory(writer, str(root), "", root.stat())

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
                entries = sorted(it, key=lambda e: e.name)
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
        if len(os.fsencode(entry.path)) >= PATH_MAX:
            writer.warn(relpath, f"its path is {PATH_MAX} bytes or longer (PATH_MAX), which restore cannot "
                                 "create; skipped")
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
            try:
                writer.add_file(relpath, Path(entry.path), stat=st)
            except UnreadableFileError as exc:
                self._unreadable(writer, relpath, exc)
        elif statmod.S_ISLNK(st.st_mode):
            self._symlink(writer, entry.path, relpath, st)
        else:
            log.warning("source %r: skipping %s: not a regular file, directory or symlink", self.name, relpath)

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
        total, stack = 0, [(self.root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        relpath = f"{rel}/{entry.name}" if rel else entry.name
                        if self.options.exclude and _matches(relpath, self.options.exclude):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, relpath))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # the backup itself says what cannot be read
        return total

    def default_destination(self) -> Path:
        return self.root

    def restore_plan(self, destination: Path | None):
        return DirectorySwapPlan(destination or self.root, f"source {self.name!r}")


@hookimpl
def eternia_register_sources(register):
    register(DirectorySource)
