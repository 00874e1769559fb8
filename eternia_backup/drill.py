"""Restore drills: prove on a schedule that a backup restores and its data checks out.

A drill restores a backup into a private scratch directory (never the live
destination), runs the configured checks on what was restored, records the
outcome in the state file (``status``, metrics, notifications), and removes
the scratch copy.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime


@dataclasses.dataclass
class DrillCheck:
    """One check of a drill: what was checked, on which source, and what it found."""

    source: str
    name: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class DrillResult:
    """The outcome of one drill; ``ok`` only when the restore worked and every check passed."""

    backup_id: str
    started_at: datetime
    duration: float
    checks: list[DrillCheck]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    @property
    def failed_checks(self) -> list[DrillCheck]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        """``--json`` of drill (documented in docs/json.md)."""
        return {
            "backup_id": self.backup_id,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "duration_seconds": round(self.duration, 3),
            "error": self.error,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }
