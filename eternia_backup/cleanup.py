"""Cleanup: apply retention on every target by its own listing, and remove leftovers.

A target whose listing fails is skipped (nothing deleted there) and reported.
Only backups of this config's series (``name``) and environment are judged.
A backup is deleted manifest first, so it stops existing before its archive
goes; an archive left by a failed delete is a leftover for the next run.
Leftovers (temporary files, archives without a manifest) and unfinished
uploads are "orphans": reported by ``status`` and ``cleanup --dry-run`` with
age and size, removed once older than the grace period, or at once when their
writer, on this host, is dead (its host and PID are in the temporary name, and
an S3 upload has a marker with that name beside it). The grace period exists
because a writer on another host cannot be asked whether it still runs.

A deletion counts only when the target confirmed it; what could not be deleted
is listed with the reason and makes the cleanup fail.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from datetime import datetime, timezone, tzinfo
from typing import Any

from .catalog import in_series, list_target
from .inventory import summarize
from .chains import mark_broken_chains
from .config import Retention
from .errors import EterniaBackupError, IntegrityError
from .manifest import archive_stem
from .providers import Target, UploadCleanup
from .retention import Candidate, plan_retention
from .scratch import pid_alive
from .storage import parse_temp_name
from .verify import check_size, check_stored_archive

log = logging.getLogger("eternia_backup.cleanup")


@dataclasses.dataclass
class Orphan:
    """A temporary file, an archive without manifest, or an unfinished upload."""

    name: str
    kind: str  # "temporary file", "archive without manifest", "unfinished upload"
    age_seconds: float | None
    size: int | None
    writer: str | None  # "host:pid (dead)" / "host:pid (running)" / "host:pid (other host)", when known
    due: bool  # cleanup removes it now (writer dead, or older than the grace period)
    handle: Any = dataclasses.field(default=None, repr=False)
    removed: bool = False  # cleanup removed (aborted) it, and the target confirmed

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "age_seconds": None if self.age_seconds is None else int(self.age_seconds),
                "size": self.size, "writer": self.writer, "due": self.due, "removed": self.removed}


@dataclasses.dataclass
class TargetCleanup:
    """What cleanup did on one target: only what the target confirmed counts as done.

    ``deleted``: backup ids deleted (would be, in a dry run); ``not_deleted``:
    ``{"name", "reason"}`` for each backup or file that could not be deleted;
    ``leftovers_removed``: names of orphans removed (would be); ``orphans``:
    every orphan found, removed or not (see :class:`Orphan`); ``error``: why the
    target failed, or None.
    """

    target: str
    deleted: list[str] = dataclasses.field(default_factory=list)
    kept: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    leftovers_removed: list[str] = dataclasses.field(default_factory=list)
    not_deleted: list[dict[str, str]] = dataclasses.field(default_factory=list)
    orphans: list[Orphan] = dataclasses.field(default_factory=list)
    error: str | None = None
    unlisted: bool = False  # the listing failed: nothing was judged here
    #: backups whose archive was read and found damaged before deleting ({id: problem}; not in the JSON)
    found_damaged: dict[str, str] = dataclasses.field(default_factory=dict)
    #: what the target holds after this cleanup (:func:`.inventory.summarize`; not in the JSON), None when unknown
    inventory: dict | None = None

    def fail(self, name: str, reason: str) -> None:
        """Record a deletion the target refused."""
        self.not_deleted.append({"name": name, "reason": reason})
        problem = f"could not delete {name}: {reason}"
        self.error = f"{self.error}; {problem}" if self.error else problem
        log.info("cleanup on target %r: %s", self.target, problem)  # the CLI prints result.errors

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["orphans"] = [o.to_dict() for o in self.orphans]
        del data["found_damaged"]
        del data["inventory"]
        return data


@dataclasses.dataclass
class CleanupResult:
    dry_run: bool
    targets: list[TargetCleanup]

    @property
    def deleted_count(self) -> int:
        return sum(len(t.deleted) for t in self.targets)

    @property
    def errors(self) -> dict[str, str]:
        return {t.target: t.error for t in self.targets if t.error}

    @property
    def not_deleted(self) -> list[dict[str, str]]:
        return [{"target": t.target, **n} for t in self.targets for n in t.not_deleted]

    @property
    def unlisted_targets(self) -> list[dict[str, str]]:
        return [{"target": t.target, "error": t.error or ""} for t in self.targets if t.unlisted]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        """``--json`` of cleanup.

        ``deleted_count`` counts only deletions the targets confirmed;
        ``not_deleted`` lists ``{"target", "name", "reason"}`` for each refused
        one; ``unlisted_targets`` lists ``{"target", "error"}`` for each target
        whose listing failed (nothing was judged or deleted there); per target,
        ``orphans`` lists ``{"name", "kind", "age_seconds", "size", "writer", "due"}``.
        """
        return {"dry_run": self.dry_run, "deleted_count": self.deleted_count, "ok": self.ok,
                "not_deleted": self.not_deleted, "unlisted_targets": self.unlisted_targets,
                "targets": [t.to_dict() for t in self.targets]}


def _writer(parsed: tuple[str, str, int] | None, here: str) -> tuple[str | None, bool]:
    """(who wrote it, for people; whether that writer is known to be dead)."""
    if parsed is None:
        return None, False
    _, host, pid = parsed
    if host != here:
        return f"{host}:{pid} (other host)", False
    dead = not pid_alive(pid)
    return f"{host}:{pid} ({'dead' if dead else 'running'})", dead


def find_orphans(listing, uploads, *, name: str, grace_seconds: float, now: float | None = None) -> list[Orphan]:
    """Leftover files of a listing and unfinished ``uploads`` of series ``name``, with age, size, writer.

    ``due`` is true when the writer is dead on this host or the orphan is older
    than the grace period.
    """
    now = time.time() if now is None else now
    here = socket.gethostname().split(".")[0]
    orphans = []
    markers: dict[str, tuple[str, str, int]] = {}
    for f in listing.leftovers:
        parsed = parse_temp_name(f.name)
        if parsed is not None:
            markers[parsed[0]] = parsed
        writer, dead = _writer(parsed, here)
        age = None if f.mtime is None else now - f.mtime
        orphans.append(Orphan(f.name, "temporary file" if parsed else "archive without manifest", age, f.size,
                              writer, dead or (age is not None and age > grace_seconds)))
    for upload in uploads:
        if not in_series(upload.name, name):  # not another series' (it has its own grace period)
            continue
        writer, dead = _writer(markers.get(upload.name), here)
        age = None if upload.started is None else now - upload.started
        orphans.append(Orphan(upload.name, "unfinished upload", age, upload.size, writer,
                              dead or (age is not None and age > grace_seconds), handle=upload))
    return orphans


def _with_the_newest_checked(target: Target, copies: list, plan, policy: Retention, now, tz,
                             found: dict[str, str]):
    """Before an intact backup is deleted, read the archives of the one kept as the newest intact backup.

    The listing shows sizes, not contents: a flipped byte in the newest backup
    (or in the full backup of its chain) would make it look restorable while
    the older good backups go. So, only when the plan deletes an intact backup,
    the stored bytes of the newest intact one and of its chain are hashed and
    compared with their manifests; a damaged one is marked so, and retention is
    planned again without it, until the newest intact backup really is one.
    """
    by_id = {c.backup_id: c for c in copies}
    checked: set[str] = set()
    while any(by_id[i].ok for i in plan.delete if i in by_id):
        newest = next((i for i, reasons in plan.keep.items() if "newest intact backup" in reasons), None)
        if newest is None:
            return plan
        links = [by_id[i] for i in (*(by_id[newest].manifest.chain), newest) if i in by_id]
        damaged = None
        for link in links:
            if link.backup_id in checked:
                continue
            try:
                check_size(link, link.manifest)
                check_stored_archive(link)  # a StorageError (unreadable) goes to the caller: nothing is deleted
            except IntegrityError as exc:
                damaged = link
                link.problem = found[link.backup_id] = str(exc)
                log.warning("cleanup on target %r: %s; it no longer counts as intact", target.name, exc)
                break
            checked.add(link.backup_id)
        if damaged is None:
            return plan
        mark_broken_chains(copies)  # what was built on it is broken too
        plan = plan_retention(retention_candidates(copies), policy, now, tz)
    return plan


def retention_candidates(copies) -> list[Candidate]:
    """What retention judges: each copy's id, time, whether it is intact (its chain too), and its chain."""
    return [Candidate(c.backup_id, c.created_at, c.ok, c.manifest.chain if c.manifest else ())
            for c in copies if c.created_at is not None]


def cleanup_target(target: Target, *, name: str, environment: str, policy: Retention, tz: tzinfo | None,
                   dry_run: bool, now: datetime | None = None, guard=None, cache=None,
                   foreign=None) -> TargetCleanup:
    """Apply retention on one target. ``guard()`` runs before each delete and may raise (a lost lease).

    ``foreign(manifest)`` is true for a backup of this series that another application made (read
    on this host from other paths, :mod:`.origin`): retention leaves those to their own maker.
    """
    report = TargetCleanup(target.name)
    now = now or datetime.now(timezone.utc)
    try:
        listing = list_target(target, name, cache, update_index=not dry_run)  # a dry run writes nothing
    except EterniaBackupError as exc:
        report.error = f"listing failed, nothing deleted: {exc}"
        report.unlisted = True
        log.info("cleanup on target %r: %s", target.name, report.error)  # the CLI prints result.errors
        return report
    unreadable = [c for c in listing.copies if c.unreadable]
    if unreadable:  # a partial view: what is kept cannot be decided, so nothing goes
        report.error = (f"{len(unreadable)} manifest(s) could not be read, nothing deleted: "
                        + "; ".join(c.problem or c.manifest_file for c in unreadable[:3]))
        log.info("cleanup on target %r: %s", target.name, report.error)
        return report
    ours = [c for c in listing.copies if c.manifest is None or c.manifest.environment == environment]
    if foreign is not None:
        theirs = [c for c in ours if c.manifest is not None and foreign(c.manifest)]
        if theirs:
            log.warning("cleanup on target %r: %d backup(s) of this series were made on this host from other "
                        "paths than this config's sources, e.g. %s; retention leaves them alone (another "
                        "application sharing this storage and backup.name? give each its own name; if this "
                        "application's state moved, delete them by hand, manifest first)",
                        target.name, len(theirs), theirs[0].backup_id)
            ours = [c for c in ours if c not in theirs]
    plan = plan_retention(retention_candidates(ours), policy, now, tz)
    try:
        plan = _with_the_newest_checked(target, ours, plan, policy, now, tz, report.found_damaged)
    except EterniaBackupError as exc:  # the newest backup could not be read: whether it is whole is unknown
        report.error = f"the newest backup could not be read to check it, nothing deleted: {exc}"
        log.info("cleanup on target %r: %s", target.name, report.error)
        return report
    report.kept = plan.keep
    by_id = {c.backup_id: c for c in ours}
    for backup_id in plan.delete:
        copy = by_id[backup_id]
        if dry_run:
            report.deleted.append(backup_id)
            continue
        if guard is not None:
            guard()
        _delete_backup(target, copy, report)
    if not dry_run:
        report.inventory = summarize(ours, environment=environment, gone=report.deleted, now=now)

    try:
        uploads = target.incomplete_uploads() if isinstance(target, UploadCleanup) else []
    except EterniaBackupError as exc:
        problem = f"unfinished uploads could not be listed: {exc}"
        report.error = f"{report.error}; {problem}" if report.error else problem
        uploads = []
    orphans = find_orphans(listing, uploads, name=name, grace_seconds=policy.incomplete_grace_hours * 3600)
    report.orphans = orphans
    for orphan in orphans:
        if not orphan.due:
            continue
        if not dry_run:
            try:
                if orphan.handle is not None:
                    target.abort_upload(orphan.handle)
                else:
                    target.delete(orphan.name)
            except EterniaBackupError as exc:  # reported: it holds space until removed
                report.fail(orphan.name, str(exc))
                continue
            orphan.removed = True
        report.leftovers_removed.append(orphan.name + (" (unfinished upload)" if orphan.handle is not None else ""))
    return report


def _delete_backup(target: Target, copy, report: TargetCleanup) -> None:
    """Manifest first (the backup stops existing), then the archive; count only what the target confirmed."""
    try:
        target.delete(copy.manifest_file)
    except EterniaBackupError as exc:
        report.fail(copy.backup_id, str(exc))
        return
    report.deleted.append(copy.backup_id)
    log.info("cleanup on target %r: deleted backup %s", target.name, copy.backup_id)
    # never through a manifest that names another backup's archive
    stem = archive_stem(copy.manifest_file)
    files = [copy.archive_file] if copy.archive_file else []
    if copy.manifest is not None and copy.manifest.files_index is not None:
        files.append(copy.manifest.files_index.file)
    for filename in files:
        if archive_stem(filename) != stem:
            continue
        try:
            target.delete(filename)
        except EterniaBackupError as exc:  # a leftover now; the next cleanup retries it
            report.fail(filename, str(exc))
