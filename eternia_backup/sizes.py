"""Byte counts as people read them, in every message (CLI, logs, notifications)."""

from __future__ import annotations


def human_size(n: int | float | None) -> str:
    """``812 B``, ``5.8 KiB``, ``572.9 MiB``, ``1.2 TiB``; ``-`` when unknown (None)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
