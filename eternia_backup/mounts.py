"""Mount points that /etc/fstab declares and that are not mounted now.

A storage directory made under one (an unmounted NAS share or USB disk) would fill the
disk beneath the mount point, and its backups would vanish under the mount once it is
back (rsnapshot's ``no_create_root`` exists for the same trap). Where either file cannot
be read (another system, a container without /etc/fstab), nothing is declared and
nothing is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FSTAB = Path("/etc/fstab")
MOUNTINFO = Path("/proc/self/mountinfo")

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    r"""fstab and mountinfo write a space as \040 (a tab \011, a backslash \134)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def declared_mount_points(fstab: Path | None = None) -> set[Path]:
    """The mount points /etc/fstab lists (swap and pseudo entries left out); empty when unreadable."""
    try:
        text = (fstab or FSTAB).read_text(errors="replace")
    except OSError:
        return set()
    points = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        point = _unescape(fields[1])
        if fields[2] != "swap" and point.startswith("/"):
            points.add(Path(point))
    return points


def mounted_points(mountinfo: Path | None = None) -> set[Path] | None:
    """What is mounted now, from /proc/self/mountinfo (field 5); None when it cannot be read."""
    try:
        text = (mountinfo or MOUNTINFO).read_text(errors="replace")
    except OSError:
        return None
    return {Path(_unescape(fields[4])) for fields in (line.split() for line in text.splitlines()) if len(fields) > 4}


def unmounted_mount_point(path: Path) -> Path | None:
    """The fstab mount point that would hold ``path`` and is not mounted now, or None.

    The nearest declared mount point above the path (symlinks resolved) decides: under a
    mounted /mnt/nas, or under / alone, nothing is refused.
    """
    declared = declared_mount_points()
    if not declared:
        return None
    mounted = mounted_points()
    if mounted is None:
        return None
    real = Path(os.path.realpath(path))
    for candidate in (real, *real.parents):
        if candidate in declared:
            return None if candidate in mounted else candidate
    return None
