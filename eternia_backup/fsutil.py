"""Small filesystem helpers shared by restore plans and sources."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


def sibling(path: Path, purpose: str) -> Path:
    """A hidden, unique name beside ``path`` (same filesystem, so renames are atomic)."""
    return path.parent / f".{path.name}.eternia-{purpose}-{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file or tree if it exists, never following symlinks."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


def make_private_dirs(path: Path, mode: int = 0o700) -> None:
    """mkdir -p where every directory created is ``mode`` whatever the umask."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=mode, exist_ok=True)
        os.chmod(p, mode)


def remove_empty_dirs(path: Path) -> None:
    """Remove ``path`` and the directories under it, bottom-up, as far as they are empty."""
    if not path.is_dir() or path.is_symlink():
        return
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass
