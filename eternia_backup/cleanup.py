"""Cleanup: apply retention on every target by its own listing, and remove leftovers.

A target whose listing fails is skipped (nothing deleted there) and reported.
Only backups of this config's series (``name``) and environment are judged.
A backup is deleted manifest first, so it stops existing before its archive
goes; an archive left by a failed delete is a leftover for the next run.
Leftovers (temporary files, archives without a manifest) are removed once older
than the grace period, or at once when their writer, on this host, is dead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from datetime import datetime, timezone, tzinfo

from .catalog import in_series, list_target
from .config import Retention
from .errors import EterniaBackupError
from .manifest import archive_stem
from .providers import Target
from .retention import Candidate, plan_retention
from .storage import parse_temp_name

log = logging.getLogger("eternia_backup.cleanup")


@dataclasses.dataclass
class TargetCleanup:
    target: str
    deleted: list[str] = dataclasses.field(default_factory=list)
    kept: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    leftovers_removed: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


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
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "deleted_count": self.deleted_count, "ok": self.ok,
                "targets": [dataclasses.asdict(t) for t in self.targets]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_expired(name: str, mtime: float | None, grace_seconds: float, now: float, here: str) -> bool:
    parsed = parse_temp_name(name)
    if parsed is not None:
        _, host, pid = parsed
        if host == here and not _pid_alive(pid):
            return True
    return mtime is not None and now - mtime > grace_seconds


def cleanup_target(target: Target, *, name: str, environment: str, policy: Retention, tz: tzinfo | None,
                   dry_run: bool, now: datetime | None = None, guard=None) -> TargetCleanup:
    """Apply retention on one target. ``guard()`` runs before each delete and may raise (a lost lease)."""
    report = TargetCleanup(target.name)
    now = now or datetime.now(timezone.utc)
    try:
        listing = list_target(target, name)
    except EterniaBackupError as exc:
        report.error = f"listing failed, nothing deleted: {exc}"
        log.error("cleanup on target %r: %s", target.name, report.error)
        return report
    unreadable = [c for c in listing.copies if c.unreadable]
    if unreadable:  # a partial view: what is kept cannot be decided, so nothing goes
        report.error = (f"{len(unreadable)} manifest(s) could not be read, nothing deleted: "
                        + "; ".join(c.problem or c.manifest_file for c in unreadable[:3]))
        log.error("cleanup on target %r: %s", target.name, report.error)
        return report
    ours = [c for c in listing.copies if c.manifest is None or c.manifest.environment == environment]
    candidates = [Candidate(c.backup_id, c.created_at, c.ok) for c in ours if c.created_at is not None]
    plan = plan_retention(candidates, policy, now, tz)
    report.kept = plan.keep
    by_id = {c.backup_id: c for c in ours}
    for backup_id in plan.delete:
        copy = by_id[backup_id]
        if dry_run:
            report.deleted.append(backup_id)
            continue
        if guard is not None:
            guard()
        try:
            target.delete(copy.manifest_file)
            # never through a manifest that names another backup's archive
            if copy.archive_file and archive_stem(copy.archive_file) == archive_stem(copy.manifest_file):
                target.delete(copy.archive_file)
        except EterniaBackupError as exc:
            report.error = f"could not delete {backup_id}: {exc}"
            log.error("cleanup on target %r: %s", target.name, report.error)
            continue
        report.deleted.append(backup_id)
        log.info("cleanup on target %r: deleted backup %s", target.name, backup_id)

    grace = policy.incomplete_grace_hours * 3600
    here = socket.gethostname().split(".")[0]
    for f in listing.leftovers:
        if not _leftover_expired(f.name, f.mtime, grace, time.time(), here):
            continue
        if not dry_run:
            try:
                target.delete(f.name)
            except EterniaBackupError as exc:
                log.warning("cleanup on target %r: could not remove leftover %s: %s", target.name, f.name, exc)
                problem = f"could not remove leftover {f.name}: {exc}"  # reported: it holds space until removed
                report.error = f"{report.error}; {problem}" if report.error else problem
                continue
        report.leftovers_removed.append(f.name)
    try:
        uploads = target.incomplete_uploads()
    except EterniaBackupError as exc:
        log.warning("cleanup on target %r: %s", target.name, exc)
        uploads = []
    for upload in uploads:
        if not in_series(upload.name, name):  # not another series' (it has its own grace period)
            continue
        if upload.started is not None and time.time() - upload.started <= grace:
            continue
        if not dry_run:
            try:
                target.abort_upload(upload)
            except EterniaBackupError as exc:
                log.warning("cleanup on target %r: %s", target.name, exc)
                continue
        report.leftovers_removed.append(upload.name + " (unfinished upload)")
    return report
