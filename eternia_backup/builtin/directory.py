"""Built-in source ``directory``: a tree of files, with include/exclude globs.

Patterns are matched against the POSIX path relative to the source's root; a
pattern without ``/`` also matches a bare file or directory name anywhere
(``*.tmp``, ``cache``). An excluded directory is not descended into. With
``include`` set, only matching files are backed up (directories are kept, so
the tree's shape survives). Symlinks are stored as links; one that leads
outside the tree is skipped with a warning, since restore would refuse it.
Sockets, FIFOs and devices are skipped.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import stat as statmod
from pathlib import Path

from pydantic import Field

from eternia_backup import hookimpl
from eternia_backup.errors import SourceError
from eternia_backup.plans import DirectorySwapPlan
from eternia_backup.providers import EntryWriter, Source, SourceOptions

log = logging.getLogger("eternia_backup.source.directory")


class DirectoryOptions(SourceOptions):
    path: str = Field(description="The directory, relative to the config file.", examples=["state/files"])
    include: list[str] = Field([], description="Glob patterns: only matching files are backed up "
                               "(directories are kept).", examples=[["*.json", "uploads/*"]])
    exclude: list[str] = Field([], description="Glob patterns of files and directories left out; a pattern "
                               "without / matches a name anywhere.", examples=[["*.tmp", "cache"]])


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
        st = root.stat()
        writer.add_directory("", mode=st.st_mode, mtime=st.st_mtime, uid=st.st_uid, gid=st.st_gid)
        self._real_root = os.path.realpath(root)
        self._walk(writer, root, "")

    def _leads_outside(self, path: str, relpath: str, target: str) -> bool:
        """True for a link restore would refuse: outside by its text, or on disk through other links."""
        if posixpath.isabs(target) or posixpath.normpath(posixpath.join(posixpath.dirname(relpath), target)).startswith(".."):
            return True
        resolved = os.path.realpath(path)
        return resolved != self._real_root and not resolved.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def _walk(self, writer: EntryWriter, directory: Path, rel: str) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError as exc:
            raise SourceError(f"source {self.name!r}: cannot read directory {directory}: permission denied") from exc
        opts = self.options
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            if opts.exclude and _matches(relpath, opts.exclude):
                continue
            st = entry.stat(follow_symlinks=False)
            if statmod.S_ISDIR(st.st_mode):
                writer.add_directory(relpath, mode=st.st_mode, mtime=st.st_mtime, uid=st.st_uid, gid=st.st_gid)
                self._walk(writer, Path(entry.path), relpath)
            elif opts.include and not _matches(relpath, opts.include):
                continue
            elif statmod.S_ISREG(st.st_mode):
                writer.add_file(relpath, Path(entry.path), stat=None)
            elif statmod.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                if self._leads_outside(entry.path, relpath, target):
                    log.warning("source %r: skipping symlink %s -> %s: it leads outside the tree", self.name, relpath, target)
                    continue
                writer.add_symlink(relpath, target, mtime=st.st_mtime)
            else:
                log.warning("source %r: skipping %s: not a regular file, directory or symlink", self.name, relpath)

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
