"""What backups exist: listing targets, merging copies, finding one backup.

A backup exists on a target when its manifest does. Each copy is checked
against its listing (archive present, size as the manifest says); a manifest
that does not parse or whose archive is missing marks the copy ``damaged``.
Temporary files and archives without a manifest are ``leftovers``: never
listed as backups, removed by cleanup.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from .errors import (
    BackupNotFoundError,
    EterniaBackupError,
    IntegrityError,
    StorageError,
)
from .manifest import (
    ARCHIVE_RE,
    MANIFEST_RE,
    MANIFEST_SUFFIX,
    Manifest,
    archive_stem,
    is_backup_id,
    manifest_name_for,
)
from .chains import mark_broken_chains
from .manifest_cache import ManifestCache
from .manifest_index import ManifestIndex, wants_index
from .providers import LocalPaths, StoredFile, Target
from .storage import parse_temp_name

log = logging.getLogger("eternia_backup.catalog")


@dataclasses.dataclass
class BackupCopy:
    """One backup on one target."""

    target: Target
    backup_id: str
    manifest_file: str
    manifest: Manifest | None
    problem: str | None = None  # why the copy is damaged
    #: what is wrong with its file index (missing, wrong size): an incremental cannot be restored
    #: without it (it is then ``problem`` too), a full one can; neither can be a base for the next one
    index_problem: str | None = None
    unreadable: bool = False  # the manifest could not be read (storage error): state unknown
    #: targets that could not be listed when this copy was found ({name: error})
    unlisted_targets: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and self.problem is None

    @property
    def state(self) -> str:
        return "ok" if self.ok else "damaged"

    @property
    def created_at(self) -> datetime | None:
        return self.manifest.created_at if self.manifest else _time_from_id(self.backup_id)

    @property
    def archive_file(self) -> str | None:
        return self.manifest.archive.file if self.manifest else None

    @property
    def url(self) -> str:
        return self.target.file_url(self.archive_file or self.manifest_file)

    def describe(self) -> str:
        return f"backup {self.backup_id} on target {self.target.name!r} ({self.url})"


@dataclasses.dataclass
class BackupEntry:
    """One backup id with its copies on every target, best copy first."""

    backup_id: str
    copies: list[BackupCopy]

    @property
    def best(self) -> BackupCopy:
        return sorted(self.copies, key=lambda c: (not c.ok, not isinstance(c.target, LocalPaths)))[0]

    @property
    def ok(self) -> bool:
        return any(c.ok for c in self.copies)

    @property
    def state(self) -> str:
        if all(c.ok for c in self.copies):
            return "ok"
        return "partly damaged" if self.ok else "damaged"

    @property
    def manifest(self) -> Manifest | None:
        return self.best.manifest

    @property
    def created_at(self) -> datetime | None:
        return self.best.created_at

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "backup_id": self.backup_id,
            "created_at": m.to_dict()["created_at"] if m else None,
            "state": self.state,
            "size": m.archive.size if m else None,
            "sources": [s.name for s in m.sources] if m else [],
            "kind": m.kind if m else None,
            "parent": m.parent if m else None,
            "environment": m.environment if m else None,
            "warning_count": m.warning_count if m else None,
            "copies": [{"target": c.target.name, "url": c.url, "state": c.state, "problem": c.problem}
                       for c in self.copies],
        }


@dataclasses.dataclass
class TargetListing:
    target: Target
    copies: list[BackupCopy]
    leftovers: list[StoredFile]
    files: dict[str, StoredFile]


def _time_from_id(backup_id: str) -> datetime | None:
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _read_manifest(target: Target, fname: str, data: bytes | None = None) -> tuple[Manifest, bytes]:
    """Read and parse a manifest; one that does not parse is read again before it is called damaged.

    A store can return wrong bytes once (a flipped bit, a cut-off read): such a
    backup is good, and retention deletes damaged ones. Two different reads are
    a StorageError (state unknown, nothing deleted), the same bad bytes twice an
    IntegrityError.
    """
    where = target.file_url(fname)
    if data is None:
        data = target.read_bytes(fname)
    try:
        return Manifest.from_json(data, where=where), data
    except IntegrityError as first:
        again = target.read_bytes(fname)
        if again == data:
            raise
        try:
            return Manifest.from_json(again, where=where), again
        except IntegrityError:
            raise StorageError(f"manifest {where} reads differently each time ({first}); "
                               "the store returns unreliable data") from None


def _fetch_manifests(target: Target, stored: list[StoredFile], cache: ManifestCache | None,
                     index: ManifestIndex | None = None) -> tuple[dict[str, bytes | Exception], int]:
    """The bytes of each manifest (or the error reading it), and how many were read one by one.

    From the local cache, else from the target's index object (when more than
    one is missing), else read (concurrently where the target allows: one
    request each, mostly waiting).
    """
    found: dict[str, bytes | Exception] = {}
    missing = []
    for s in stored:
        data = cache.get(s) if cache is not None else None
        if data is None:
            missing.append(s)
        else:
            found[s.name] = data
    if index is not None and len(missing) > 1:
        index.load()
        still = []
        for s in missing:
            data = index.get(s)
            if data is None:
                still.append(s)
            else:
                found[s.name] = data
        missing = still

    def read(s: StoredFile) -> bytes | Exception:
        try:
            return target.read_bytes(s.name)
        except EterniaBackupError as exc:
            return exc

    if len(missing) > 1 and target.read_concurrency > 1:
        with ThreadPoolExecutor(max_workers=min(target.read_concurrency, len(missing))) as pool:
            results = list(pool.map(read, missing))
    else:
        results = [read(s) for s in missing]
    for s, result in zip(missing, results):
        found[s.name] = result
    return found, len(missing)


def list_target(target: Target, name: str, cache: ManifestCache | None = None, *,
                update_index: bool = True) -> TargetListing:
    """Every backup of series ``name`` on ``target``; raises StorageError if listing fails.

    With a ``cache``, manifests read before (same name, size and ETag) are not
    read again, and the others are remembered once they parsed. A remote
    target's index object (:mod:`.manifest_index`) is used the same way, and
    rewritten when it saved too little (not with ``update_index=False``).
    """
    files = {f.name: f for f in target.list()}
    log.debug("target %r: %d file(s) listed at %s", target.name, len(files), target.file_url(""))
    copies: list[BackupCopy] = []
    claimed: set[str] = set()
    wanted = []
    for fname in sorted(files):
        m = MANIFEST_RE.match(fname)
        if m and fname.startswith(name + "-") and m["stem"] == f"{name}-{m['id']}":
            wanted.append((fname, m))
    index = ManifestIndex(target, name, files) if wants_index(target) else None
    fetched, read_one_by_one = _fetch_manifests(target, [files[f] for f, _ in wanted], cache, index)
    good: dict[str, tuple[StoredFile, bytes]] = {}  # manifests that parsed, for the index
    for fname, m in wanted:
        copy = BackupCopy(target, m["id"], fname, None)
        try:
            data = fetched[fname]
            if isinstance(data, Exception):
                raise data
            manifest, data = _read_manifest(target, fname, data)
            good[fname] = (files[fname], data)
            if cache is not None and cache.get(files[fname]) is None:
                cache.put(files[fname], data)  # it parsed: worth keeping
        except IntegrityError as exc:
            copy.problem = str(exc)
            claimed.update(n for n in files if archive_stem(n) == m["stem"])
            copies.append(copy)
            continue
        except StorageError as exc:
            # Unknown, not damaged: it may be a good backup behind a passing error.
            copy.problem = f"manifest unreadable: {exc}"
            copy.unreadable = True
            claimed.update(n for n in files if archive_stem(n) == m["stem"])
            copies.append(copy)
            continue
        copy.manifest = manifest
        if manifest.backup_id != m["id"] or manifest_name_for(manifest.archive.file) != fname:
            copy.problem = f"manifest {fname} describes another backup ({manifest.backup_id})"
        claimed.add(manifest.archive.file)
        if manifest.files_index is not None:
            claimed.add(manifest.files_index.file)
        stored = files.get(manifest.archive.file)
        if copy.problem is None:
            if stored is None:
                copy.problem = f"archive {manifest.archive.file} is missing"
            elif stored.size is not None and stored.size != manifest.archive.size:
                copy.problem = (f"archive {manifest.archive.file} is {stored.size} bytes, "
                                f"the manifest says {manifest.archive.size}")
            if manifest.files_index is not None:
                stored_index = files.get(manifest.files_index.file)
                if stored_index is None:
                    copy.index_problem = f"file index {manifest.files_index.file} is missing"
                elif stored_index.size is not None and stored_index.size != manifest.files_index.size:
                    copy.index_problem = (f"file index {manifest.files_index.file} is {stored_index.size} bytes, "
                                          f"the manifest says {manifest.files_index.size}")
        copies.append(copy)
    mark_broken_chains(copies)  # by the archives of the chain: a base's own index is not needed to restore
    leftovers = [f for n, f in files.items() if n not in claimed and _is_leftover_of(n, name)]
    if cache is not None:
        cache.save({f for f, _ in wanted})
    if index is not None and update_index:
        index.maybe_save(good, read_one_by_one)
    return TargetListing(target, copies, leftovers, files)


def in_series(filename: str, name: str) -> bool:
    """Whether an archive or manifest name is ``<name>-<backup id>...``, exactly this series.

    A plain prefix test would take series ``app-db``'s files for series ``app``'s.
    """
    stem = archive_stem(filename)
    return stem is not None and stem.startswith(name + "-") and is_backup_id(stem[len(name) + 1:])


def _is_leftover_of(filename: str, name: str) -> bool:
    """A temporary file of series ``name``, or an archive of it (caller checks it has no manifest)."""
    parsed = parse_temp_name(filename)
    if parsed is not None:
        return in_series(parsed[0], name)
    return bool(ARCHIVE_RE.match(filename)) and in_series(filename, name)


def merge(listings: list[TargetListing]) -> list[BackupEntry]:
    """Backups of every target merged by id, newest first."""
    by_id: dict[str, BackupEntry] = {}
    for listing in listings:
        for copy in listing.copies:
            by_id.setdefault(copy.backup_id, BackupEntry(copy.backup_id, [])).copies.append(copy)
    # Newest first by creation time: ids only have whole seconds, and two backups
    # made in one second would otherwise be ordered by their random part. A backup
    # with no readable manifest has only its id's second: within that second it
    # counts as the newer one, so that "latest" never passes over it unseen.
    return sorted(by_id.values(), key=_newest_first_key, reverse=True)


def _newest_first_key(e: BackupEntry) -> tuple:
    created = e.created_at or _EPOCH
    return (created.replace(microsecond=0), e.manifest is None, created, e.backup_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def copy_from_reference(reference: str, target_factory) -> BackupCopy | None:
    """A backup named by a local path or URL of its archive or manifest, else None.

    ``target_factory(url)`` gives a Target for the directory holding it.
    """
    is_url = "://" in reference
    if not is_url and not os.path.exists(reference):
        return None
    if is_url:
        directory, _, fname = reference.rstrip("/").rpartition("/")
    else:
        p = Path(reference).absolute()
        if p.is_dir():
            raise BackupNotFoundError(f"{reference} is a directory; name a backup archive or manifest file")
        directory, fname = str(p.parent), p.name
    if fname.endswith(MANIFEST_SUFFIX):
        manifest_file = fname
    elif ARCHIVE_RE.match(fname):
        manifest_file = manifest_name_for(fname)
    else:
        raise BackupNotFoundError(
            f"{reference} is not a backup archive or manifest (expected a name like "
            f"<name>-<YYYYmmddTHHMMSSZ>-<id>.tar.zst)"
        )
    target = target_factory(directory)
    m = MANIFEST_RE.match(manifest_file)
    backup_id = m["id"] if m else manifest_file
    copy = BackupCopy(target, backup_id, manifest_file, None)
    try:
        data = target.read_bytes(manifest_file)
    except BackupNotFoundError:
        raise IntegrityError(
            f"backup {reference} has no manifest ({manifest_file} is missing): it is incomplete or "
            "was copied without its manifest, so it cannot be verified; copy the manifest beside it"
        ) from None
    copy.manifest = Manifest.from_json(data, where=target.file_url(manifest_file))
    copy.backup_id = copy.manifest.backup_id
    return copy


def unlisted_dicts(unlisted: dict[str, str]) -> list[dict[str, str]]:
    """The ``"unlisted_targets"`` of JSON outputs: ``[{"target": name, "error": why}]``."""
    return [{"target": name, "error": error} for name, error in unlisted.items()]


def _unlisted_words(unlisted: dict[str, str]) -> str:
    names = ", ".join(repr(n) for n in unlisted)
    return f"target{'s' if len(unlisted) > 1 else ''} {names} could not be listed ({'; '.join(unlisted.values())})"


def check_latest_is_knowable(entries: list[BackupEntry], unlisted: dict[str, str],
                             allow_partial_listing: bool) -> None:
    """Refuse to name a ``latest`` that an unlisted target may hold a newer one than.

    Also the two "nothing found" answers: "no backups yet" only when every target
    was listed and is empty.
    """
    if unlisted and not allow_partial_listing:
        raise StorageError(f"cannot tell which backup is the latest: {_unlisted_words(unlisted)}, and the "
                           "newest backup may be there; fix that target, name a backup id, or pass "
                           "--allow-partial-listing to use the newest of what was listed")
    if not entries:
        if unlisted:
            raise BackupNotFoundError(f"no backup on the targets that could be listed, and {_unlisted_words(unlisted)}; "
                                      "the backups may be there: fix that target and try again")
        raise BackupNotFoundError("there are no backups yet; make one with `eternia-backup create`")


def find(entries: list[BackupEntry], wanted: str, *, unlisted: dict[str, str] | None = None) -> BackupEntry:
    """The backup named by its id or by a unique id prefix (``latest``: BackupManager.resolve_latest).

    ``unlisted`` names the targets whose listing failed: an id not found may be
    there, and the error says so.
    """
    unlisted = unlisted or {}
    exact = [e for e in entries if e.backup_id == wanted]
    if exact:
        return exact[0]
    matches = [e for e in entries if e.backup_id.startswith(wanted) or e.backup_id.endswith("-" + wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise BackupNotFoundError(
            f"{wanted!r} matches {len(matches)} backups ({', '.join(e.backup_id for e in matches[:5])}); give more of the id"
        )
    if unlisted:
        raise BackupNotFoundError(
            f"backup {wanted!r} is not on the targets that could be listed, and {_unlisted_words(unlisted)}; "
            "it may be there: fix that target and try again"
        )
    raise BackupNotFoundError(
        f"no backup {wanted!r}: not a file, URL or known backup id; see `eternia-backup list`"
    )

