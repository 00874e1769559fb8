"""Incremental backups: what changed since the parent, and which archive of a chain holds a path.

Backup side: :class:`ChangeFilter` sits between a source that supports
increments and the archive. It merges the entries the source adds (in path
order) with the parent's file index, passes on only what is new or changed
(size, mtime_ns, ctime_ns, inode, mode for files; target and mtime for links;
directories always), and records every entry in the new index with the backup
that holds it. Entries of the parent that the walk did not meet are *removed*:
listed in the archive's ``.eternia/removed`` member (NUL-separated archive
paths) and counted in the manifest.

A file of 1 MiB or more that only grew since the parent (same inode and mode,
larger, and its first bytes hash to the digest the parent's index recorded: a
log) is not archived whole: only the bytes after the old size go in, as the
member ``<path>.eternia-append-<offset>``, and the index entry lists that
backup in its ``appends``. Everything else that changed is archived whole.

Restore side: :class:`ChainFilter` reads the restored backup's index once and
says, for a member of one archive of the chain, whether it is the version the
restored backup has (its origin in that index is that archive). Each path is
extracted once; removed paths are in no index and so never come back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat as statmod
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import scratch
from .errors import SourceError
from .streams import append_name, split_append, split_part
from .file_index import (APPENDS, CTIME, DIGEST, INO, KIND, LINK, MODE, MTIME, ORIGIN, PATH, SIZE, Cursor,
                         IndexReader, path_key)

log = logging.getLogger("eternia_backup.increments")

#: the framework's own members of an archive live under ``.eternia/`` (a source name
#: starts with a letter or digit): ``removed`` in incremental backups, ``sources.json``
#: in encrypted ones; restore and verify read over them
META_DIR = ".eternia"
REMOVED_MEMBER = "removed"
SOURCES_MEMBER = "sources.json"
#: how many removed paths per source the manifest lists (the archive member has all)
REMOVED_IN_MANIFEST = 100
#: files this large get a digest in the index, and only they can be stored as appended parts
APPEND_MIN = 1024 * 1024
_READ = 1024 * 1024


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
    appended: int = 0  # of the changed files, those stored as what was appended since the parent

    def record(self) -> dict:
        return {"mode": self.mode, "changed": self.changed, "unchanged": self.unchanged,
                "appended": self.appended, "removed": self.removed, "removed_paths": list(self.removed_paths)}


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
        self._digests = getattr(inner, "file_digests", False)  # the archiver can hash what it stores
        self.stat_optional = False  # the walk's stat is compared with the parent's index

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
        if stat is not None and old is not None and self._digests and _may_have_grown(old, stat):
            entry = self._add_appended(relpath, path, old)
            if entry is not None:
                self._index.add(entry)
                self.counts.changed += 1
                self.counts.appended += 1
                return
        before = self._inner.entries
        wants_digest = self._digests and stat is not None and stat.st_size >= APPEND_MIN
        digest = None
        if wants_digest:
            digest = self._inner.add_file(relpath, path, stat=stat, digest=True)
        else:  # (what an archiver returns without digest=True is not a digest)
            self._inner.add_file(relpath, path, stat=stat)
        if stat is None:
            entry = [relpath.strip("/"), "f", -1, 0, 0, 0, 0, self._id, ""]  # never equal: always archived
        else:
            entry = [relpath.strip("/"), "f", stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino,
                     stat.st_mode, self._id, ""]
            if digest is not None and digest[0] == stat.st_size:  # the bytes archived are those the walk saw
                entry.append(digest[1])
        self._written(before, old, entry)

    def _add_appended(self, relpath: str, path, old: list) -> list | None:
        """Archive only what was appended to ``path`` since the parent; its new index entry, or None
        when it did not only grow (then it is archived whole)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None  # archiving it whole says what happened (vanished, unreadable ...)
        try:
            before = os.fstat(fd)
            offset = old[SIZE]
            if not statmod.S_ISREG(before.st_mode) or not _may_have_grown(old, before) \
                    or before.st_blocks * 512 < before.st_size:  # a sparse file is archived whole, with its holes
                return None
            sha = hashlib.sha256()
            pos = 0
            while pos < offset:
                chunk = os.pread(fd, min(_READ, offset - pos), pos)
                if not chunk:
                    return None
                sha.update(chunk)
                pos += len(chunk)
            if sha.hexdigest() != old[DIGEST]:
                return None  # rewritten, not only appended to
            tail = _Tail(fd, offset, before.st_size - offset, sha)
            self._inner.add_stream(append_name(relpath.strip("/"), offset), tail, tail.size,
                                   mode=before.st_mode, mtime=before.st_mtime_ns / 1e9, mtime_ns=before.st_mtime_ns)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if tail.padded:
            self._inner.warn(relpath, f"shrank while it was read: its last {tail.padded} bytes were archived as zeros")
        elif (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != \
                (after.st_size, after.st_mtime_ns, after.st_ctime_ns):
            self._inner.warn(relpath, "changed while it was read; archived as read, its contents may be inconsistent")
        appends = list(old[APPENDS]) if len(old) > APPENDS else []
        return [relpath.strip("/"), "f", before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino,
                before.st_mode, old[ORIGIN], "", sha.hexdigest(), appends + [[self._id, offset]]]

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


def _may_have_grown(old: list, st) -> bool:
    """Whether a file may be ``old`` with bytes appended: same inode and mode, larger, and a digest to check."""
    return (old[KIND] == "f" and len(old) > DIGEST and bool(old[DIGEST]) and old[SIZE] >= APPEND_MIN
            and st.st_size > old[SIZE] and st.st_ino == old[INO] and st.st_mode == old[MODE]
            and st.st_nlink == 1)  # a hard-linked file is archived whole: its other names share the bytes


class _Tail:
    """The ``size`` bytes of an open file after ``offset``, hashed on into ``sha`` as they are read.

    A file that ends early (truncated while read) is padded with zeros, as the
    archiver does for whole files, and ``padded`` says by how much; the digest
    covers the zeros too, since that is what a restore gives.
    """

    def __init__(self, fd: int, offset: int, size: int, sha):
        self.fd, self.pos, self.end, self.size, self.sha = fd, offset, offset + size, size, sha
        self.padded = 0

    def read(self, n: int = -1) -> bytes:
        want = self.end - self.pos if n < 0 else min(n, self.end - self.pos)
        parts, got = [], 0
        while got < want and not self.padded:
            chunk = os.pread(self.fd, want - got, self.pos + got)
            if not chunk:  # the file ends early: zeros from here on
                self.padded = self.end - (self.pos + got)
                break
            parts.append(chunk)
            got += len(chunk)
        if got < want:
            parts.append(bytes(want - got))
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        self.sha.update(data)
        return data


# -- restore side -------------------------------------------------------------------------------


class ChainFilter:
    """Which archive of a chain holds each path of the restored backup, read from its index once.

    The restored backup's index is read in one pass and, per (archive, source),
    the paths that archive contributes are spooled to a private temporary file
    in path order (memory stays flat; a million paths take some 40 MB of disk):
    the whole file, or what was appended to it after some offset.
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
                    path = entry[PATH].encode("utf-8", "surrogateescape")
                    self._spool(entry[ORIGIN], source).write(b"w:" + path + b"\0")
                    if len(entry) > APPENDS:
                        for link, offset in entry[APPENDS]:
                            self._spool(link, source).write(b"%d:" % offset + path + b"\0")
        finally:
            reader.close()

    def _spool(self, link_id: str, source: str):
        spool = self._spools.get((link_id, source))
        if spool is None:
            spool = self._spools[(link_id, source)] = scratch.temporary_file("chain")
        return spool

    def for_link(self, link_id: str) -> "LinkFilter":
        return LinkFilter(self, link_id)

    def paths(self, link_id: str, source: str):
        """``[path, what]`` that archive ``link_id`` contributes to ``source``, in path order:
        ``what`` is ``"w"`` for the whole file, else the offset its appended part starts at."""
        spool = self._spools.get((link_id, source))
        if spool is None:
            return
        spool.seek(0)
        rest = b""
        while chunk := spool.read(1024 * 1024):
            *whole, rest = (rest + chunk).split(b"\0")
            for record in whole:
                what, path = record.split(b":", 1)
                yield [path.decode("utf-8", "surrogateescape"), what.decode()]

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
        self._last: tuple[str, list | None] | None = None  # the last path asked about, and its record

    def wants(self, source: str, relpath: str) -> bool:
        if source not in self._chain.indexed:
            return self._link == self._chain.restored
        if source != self._source:
            self._source, self._last = source, None
            self._cursor = Cursor(self._chain.paths(self._link, source))
        # a dump in parts is one entry of the index; an appended part is asked for by its file's
        # path (it is in the archive where the file is in the walk's order)
        piece, what = split_part(relpath), "w"
        if piece is None:
            piece = split_append(relpath)
            what = str(piece[1]) if piece is not None else "w"
        key = piece[0] if piece is not None else relpath
        if self._last is not None and self._last[0] == key:
            record = self._last[1]
        else:
            record = self._cursor.seek(key)
            self._last = (key, record)
        return record is not None and record[1] == what
