"""Times as people and scripts read them.

Scripts (``--json``, state files) get UTC ISO-8601 with ``Z``; people get the
configured ``timezone`` (else the machine's) with its offset, so a time is never
ambiguous whichever zone the reader is in.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo


def iso_utc(dt: datetime | None) -> str | None:
    """``2026-11-29T07:02:11Z``: for JSON and files."""
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> datetime | None:
    """The inverse of :func:`iso_utc` (also reads ``+00:00`` offsets of older state files)."""
    return datetime.fromisoformat(text) if text else None


def display_zone(name: str | None) -> tzinfo | None:
    """The zone times are shown in: ``name``, else None for the machine's local zone."""
    return ZoneInfo(name) if name else None


def for_people(dt: datetime | str | None, zone: tzinfo | None = None) -> str:
    """``2026-11-29 08:02:11 +01:00`` in ``zone`` (None: the machine's zone)."""
    if isinstance(dt, str):
        dt = parse_iso(dt)
    if dt is None:
        return "-"
    local = dt.astimezone(zone) if zone is not None else dt.astimezone()
    return local.isoformat(sep=" ", timespec="seconds")
