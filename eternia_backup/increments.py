"""Incremental backups: what changed since the parent, and which archive of a chain holds a path.

Backup side: :class:`ChangeFilter` sits between a source that supports
increments and the archive. It merges the entries the source adds (in path
order) with the parent's file index, passes on only what is new or changed
(size, mtime_ns, ctime_ns, inode, mode for files; target and mtime for links;
directories always), and records every entry in the new index with the backup
that holds it. Entries of the parent that the walk did not meet are *removed*:
listed in the archive's ``.eternia/removed`` member (NUL-separated archive
paths) and counted in the manifest.

Restore side: :class:`ChainFilter` reads the restored backup's index once and
says, for a member of one archive of the chain, whether it is the version the
restored backup has (its origin in that index is that archive). Each path is
extracted once; removed paths are in no index and so never come back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import scratch
from .errors import SourceError
from .streams import split_part
from .file_index import CTIME, INO, KIND, LINK, MODE, MTIME, ORIGIN, PATH, SIZE, Cursor, IndexReader, path_key

log = logging.getLogger("eternia_backup.increments")

#: the framework's own members of an archive live under ``.eternia/`` (a source name
#: starts with a letter or digit): ``removed`` in incremental backups, ``sources.json``
#: in encrypted ones; restore and verify read over them
META_DIR = ".eternia"
REMOVED_MEMBER = "removed"
SOURCES_MEMBER = "sources.json"
#: how many removed paths per source the manifest lists (the archive member has all)
REMOVED_IN_MANIFEST = 100


def is_meta_member(name: str) -> bool:
    return name == META_DIR or name.startswith(META_DIR + "/")


def fingerprint(source) -> str:
    """What makes a source's previous index a valid base: its type and description (path, patterns)."""
    text = json.dumps(source.describe(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- choosing the parent ----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``2w``, ``30m``, ``90s``; ValueError otherwise."""
    m = _DURATION.match(text)
    if not m or int(m[1]) == 0:
        raise ValueError(f"{text!r} is not a duration such as 7d, 12h or 2w")
    return timedelta(**{_UNITS[m[2]]: int(m[1])})


@dataclass(frozen=True)
class Incremental:
    """``archive.incremental`` of the config."""

    enabled: bool = False
    full_every: int | None = None  # incrementals after a full one
    full_after: timedelta | None = None  # age of the chain's full backup
    text: str | None = None  # full_every as written, when a duration


def why_full(parent_manifest, full_created: datetime | None, policy: Incremental, now: datetime) -> str | None:
    """Why the next backup after ``parent_manifest`` must be full, or None."""
    increments_so_far = len(parent_manifest.chain) if parent_manifest.is_incremental else 0
    if policy.full_every is not None and increments_so_far + 1 > policy.full_every:
        return f"full_every: {policy.full_every} incrementals were made since the last full backup"
    if policy.full_after is not None and full_created is not None and now - full_created >= policy.full_after:
        return "full_every: the last full backup is older than that"
    return None


# -- backup side --------------------------------------------------------------------------------


@dataclass
class SourceIncrement:
    """Counts for one source, for the manifest."""

    mode: str  # "changes" or "whole"
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    removed_paths: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"mode": self.mode, "changed": self.changed, "unchanged": self.unchanged,
                "removed": self.removed, "removed_paths": list(self.removed_paths)}


class RemovedList:
    """Removed archive paths of every source, spooled to a private temporary file (NUL-separated)."""

    def __init__(self):
        self.spool = scratch.temporary_file("removed")
        self.size = 0

    def add(self, archive_path: str) -> None:
        data = archive_path.encode("utf-8", "surrogateescape") + b"\0"
        self.spool.write(data)
        self.size += len(data)

    def close(self) -> None:
        self.spool.close()


class ChangeFilter:
    """An EntryWriter in front of a source's archive section: passes on only what changed.

    ``base`` is the parent's entries of this source (None: everything is new, and
    ``removed`` may be None); ``index`` receives every entry with its origin. The source must add entries
    in path order (a directory, then its children by name): an entry out of
    order fails the backup, since the merge with the base would be wrong.
    """

    def __init__(self, inner, source_name: str, backup_id: str, base: Cursor | None, index,
                 removed: RemovedList | None, counts: SourceIncrement):
        self._inner = inner
        self._source = source_name
        self._id = backup_id
        self._base = base
        self._index = index
        self._removed = removed
        self.counts = counts
        self._last: list[str] | None = None
        self.exact_metadata = getattr(inner, "exact_metadata", False)
        self.str_paths = getattr(inner, "str_paths", False)

    def __getattr__(self, name: str):  # size, entries, warnings, warn ...
        return getattr(self._inner, name)

    # -- merge with the base --------------------------------------------------------

    def _removed_entry(self, entry: list) -> None:
        self.counts.removed += 1
        path = entry[PATH]
        if len(self.counts.removed_paths) < REMOVED_IN_MANIFEST:
            self.counts.removed_paths.append(path)
        self._removed.add(f"{self._source}/{path}" if path else self._source)

    def _seek(self, relpath: str) -> list | None:
        relpath = relpath.strip("/")
        key = path_key(relpath)
        if self._last is not None and key <= self._last:
            raise SourceError(f"source {self._source!r} added {relpath!r} out of path order; a source that "
                              "supports incremental backups must add a directory, then its children sorted by name")
        self._last = key
        if self._base is None:
            return None
        return self._base.seek(relpath, self._removed_entry)

    def _written(self, before: int, old: list | None, entry: list) -> None:
        """Record ``entry`` if the inner writer took it; a base entry not taken counts as removed."""
        if self._inner.entries > before:
            self._index.add(entry)
            self.counts.changed += 1
        elif old is not None:
            self._removed_entry(old)

    def finish(self) -> None:
        """The walk ended: what is left of the base was removed."""
        if self._base is not None:
            self._base.rest(self._removed_entry)

    # -- EntryWriter ----------------------------------------------------------------------

    def add_directory(self, relpath, *, mode, mtime, uid=0, gid=0, **extra):
        old = self._seek(relpath)
        before = self._inner.entries
        self._inner.add_directory(relpath, mode=mode, mtime=mtime, uid=uid, gid=gid, **extra)
        mtime_ns = extra.get("mtime_ns") or int(mtime * 1e9)
        self._written(before, old, [relpath.strip("/"), "d", 0, mtime_ns, 0, 0, mode, self._id, ""])

    def add_file(self, relpath, path, *, stat=None):
        old = self._seek(relpath)
        if stat is not None and old is not None and old[KIND] == "f" and old[SIZE] == stat.st_size \
                and old[MTIME] == stat.st_mtime_ns and old[CTIME] == stat.st_ctime_ns \
                and old[INO] == stat.st_ino and old[MODE] == stat.st_mode:
            self._index.add(old)  # unchanged: its origin stays
            self.counts.unchanged += 1
            return
        before = self._inner.entries
        self._inner.add_file(relpath, path, stat=stat)
        if stat is None:
            entry = [relpath.strip("/"), "f", -1, 0, 0, 0, 0, self._id, ""]  # never equal: always archived
        else:
            entry = [relpath.strip("/"), "f", stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino,
                     stat.st_mode, self._id, ""]
        self._written(before, old, entry)

    def add_stream(self, relpath, stream, size, *, mode=0o600, mtime):
        old = self._seek(relpath)
        before = self._inner.entries
        self._inner.add_stream(relpath, stream, size, mode=mode, mtime=mtime)
        self._written(before, old, [relpath.strip("/"), "s", size, 0, 0, 0, mode, self._id, ""])

    def add_symlink(self, relpath, target, *, mtime, **extra):
        old = self._seek(relpath)
        mtime_ns = extra.get("mtime_ns") or int(mtime * 1e9)
        if old is not None and old[KIND] == "l" and old[LINK] == target and old[MTIME] == mtime_ns:
            self._index.add(old)
            self.counts.unchanged += 1
            return
        before = self._inner.entries
        self._inner.add_symlink(relpath, target, mtime=mtime, **extra)
        self._written(before, old, [relpath.strip("/"), "l", 0, mtime_ns, 0, 0, 0o777, self._id, target])


# -- restore side -------------------------------------------------------------------------------


class ChainFilter:
    """Which archive of a chain holds each path of the restored backup, read from its index once.

    The restored backup's index is read in one pass and, per (archive, source),
    the paths that archive contributes are spooled to a private temporary file
    in path order (memory stays flat; a million paths take some 40 MB of disk).
    :meth:`for_link` then gives the filter one archive's members go through.
    """

    def __init__(self, reader: IndexReader, restored_id: str):
        self.restored = restored_id
        self.indexed: set[str] = set()
        self._spools: dict[tuple[str, str], object] = {}
        try:
            for header, entries in reader.sections():
                source = header["source"]
                if not header.get("indexed"):
                    continue  # archived whole: it comes from the restored backup's own archive
                self.indexed.add(source)
                for entry in entries:
                    spool = self._spools.get((entry[ORIGIN], source))
                    if spool is None:
                        spool = self._spools[(entry[ORIGIN], source)] = scratch.temporary_file("chain")
                    spool.write(entry[PATH].encode("utf-8", "surrogateescape") + b"\0")
        finally:
            reader.close()

    def for_link(self, link_id: str) -> "LinkFilter":
        return LinkFilter(self, link_id)

    def paths(self, link_id: str, source: str):
        """The paths archive ``link_id`` contributes to ``source``, in path order."""
        spool = self._spools.get((link_id, source))
        if spool is None:
            return
        spool.seek(0)
        rest = b""
        while chunk := spool.read(1024 * 1024):
            *whole, rest = (rest + chunk).split(b"\0")
            for path in whole:
                yield [path.decode("utf-8", "surrogateescape")]

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


class LinkFilter:
    """For one archive of a chain: is a member the version the restored backup holds?"""

    def __init__(self, chain: ChainFilter, link_id: str):
        self._chain = chain
        self._link = link_id
        self._source: str | None = None
        self._cursor: Cursor | None = None
        self._last: tuple[str, bool] | None = None  # the last path asked about, and the answer

    def wants(self, source: str, relpath: str) -> bool:
        if source not in self._chain.indexed:
            return self._link == self._chain.restored
        if source != self._source:
            self._source, self._last = source, None
            self._cursor = Cursor(self._chain.paths(self._link, source))
        part = split_part(relpath)  # a dump in parts is one entry of the index
        key = part[0] if part is not None else relpath
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        wanted = self._cursor.seek(key) is not None
        self._last = (key, wanted)
        return wanted
