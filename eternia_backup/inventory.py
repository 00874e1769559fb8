"""What a target holds, in a few figures: intact backups, oldest and newest, bytes stored.

Computed from a listing a command made anyway (list, status, cleanup, the
incremental plan) and kept in the state file, so the metrics never list a
target (an S3 bucket) just to be written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from .timefmt import iso_utc


def stored_bytes(manifest) -> int:
    """Bytes a backup occupies on a target: its archive and its file index."""
    return manifest.archive.size + (manifest.files_index.size if manifest.files_index is not None else 0)


def summarize(copies: Iterable, *, environment: str, gone: Iterable[str] = (),
              now: datetime | None = None) -> dict:
    """``{"backups", "oldest", "newest", "bytes", "listed_at"}`` for one target's listed copies.

    Only intact backups of ``environment`` count (a damaged one is no backup to
    restore); ``gone`` names backups deleted since the listing was made.
    """
    gone = set(gone)
    ours = [c for c in copies if c.ok and c.manifest.environment == environment and c.backup_id not in gone]
    times = sorted(c.created_at for c in ours if c.created_at is not None)
    return {
        "backups": len(ours),
        "oldest": iso_utc(times[0]) if times else None,
        "newest": iso_utc(times[-1]) if times else None,
        "bytes": sum(stored_bytes(c.manifest) for c in ours),
        "listed_at": iso_utc(now or datetime.now(timezone.utc)),
    }


def add_backup(inventory: dict, *, created_at: str, size: int) -> None:
    """Count a backup just stored, without listing the target again."""
    inventory["backups"] = int(inventory.get("backups") or 0) + 1
    inventory["bytes"] = int(inventory.get("bytes") or 0) + size
    inventory["newest"] = created_at
    if not inventory.get("oldest"):
        inventory["oldest"] = created_at
