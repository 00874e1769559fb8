"""Where a backup's sources were read from, so that an in-place restore does not pour another
application's state into this one.

Two applications that share a storage place and keep the default ``backup.name`` write one series:
``latest`` may then be the other application's backup. Each manifest records the host and, for
file-based sources (directory, sqlite), the absolute path read. A backup made on this host from
another path than the config's is refused for an in-place restore unless forced: on another host
(a restore onto a new machine) paths may differ by design, and sources without a recorded path
(commands, databases, encrypted manifests, which keep no details) are not compared.
"""

from __future__ import annotations

import os
import socket

from .errors import RestoreError
from .manifest import Manifest
from .providers import Source


def moved_sources(manifest: Manifest, sources: dict[str, Source], names: list[str]) -> list[tuple[str, str, str]]:
    """``(name, recorded path, configured path)`` of each selected source read elsewhere on this host."""
    if manifest.host != socket.gethostname():
        return []
    moved = []
    for record in manifest.sources:
        source = sources.get(record.name)
        if record.name not in names or source is None:
            continue
        recorded, current = record.details.get("path"), source.describe().get("path")
        # realpath: one directory reached through a symlink (or another -c path to the config) is no move
        if recorded and current and os.path.realpath(recorded) != os.path.realpath(current):
            moved.append((record.name, recorded, current))
    return moved


def check_same_origin(manifest: Manifest, sources: dict[str, Source], names: list[str]) -> None:
    """Raise RestoreError when a selected source of ``manifest`` was read from another path on this host."""
    moved = moved_sources(manifest, sources, names)
    if not moved:
        return
    which = "; ".join(f"source {name!r} was read from {recorded}, the config's is {current}"
                      for name, recorded, current in moved)
    raise RestoreError(
        f"backup {manifest.backup_id} was made on this host from other paths ({which}): it may be another "
        "application's backup that shares this storage and backup.name. Restore it elsewhere with --to DIR, "
        "or pass --force if this application's state moved; give each application its own backup.name. "
        "Nothing was changed")
