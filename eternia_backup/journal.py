"""The restore journal: how the next run finishes a restore that was killed while swapping.

Written (fsynced, 0600) into the state directory once every source of a restore
is staged and checked, just before the first swap; removed when the restore has
finished or rolled back. If a process dies in between, the next ``restore`` or
``create`` finishes the restore first (every source gets the restored state, so
there is never a mix of old and new), and ``status`` says that one is pending.

Entries are written by restore plans (``journal_entry()``); a plan without one
cannot be finished automatically, and the next run says so.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import RestoreError
from .fsutil import exchange, fsync_dir, remove_tree

log = logging.getLogger("eternia_backup.journal")


def write(path: Path, backup_id: str, entries: list[dict]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"backup_id": backup_id, "entries": entries}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove(path: Path) -> None:
    try:
        os.unlink(path)
        fsync_dir(path.parent)
    except FileNotFoundError:
        pass


def pending(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RestoreError(f"the restore journal {path} is unreadable ({exc}); check the restored "
                           "directories by hand, then delete the journal") from None


def describe(path: Path) -> str | None:
    data = pending(path)
    if data is None:
        return None
    dests = ", ".join(e.get("destination", "?") for e in data.get("entries", []))
    return (f"a restore of backup {data.get('backup_id')} was interrupted ({dests}); the next "
            "`eternia-backup restore` or `create` finishes it first")


def finish(path: Path) -> list[str]:
    """Finish an interrupted restore, if any; returns what was done."""
    data = pending(path)
    if data is None:
        return []
    done = []
    for entry in data.get("entries", []):
        kind = entry.get("kind")
        if kind == "directory-swap":
            done.append(_finish_swap(entry))
        elif kind == "sqlite":
            done.append(_finish_sqlite(entry))
        else:
            done.append(f"{entry.get('destination', '?')}: cannot be finished automatically; restore it again")
    remove(path)
    for line in done:
        log.warning("finished an interrupted restore of %s: %s", data.get("backup_id"), line)
    return done


def _same(path: Path, inode: list) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return [st.st_dev, st.st_ino] == list(inode)


def _aside(destination: Path) -> list[Path]:
    return [p for p in destination.parent.glob(f".{destination.name}.eternia-replaced-*")]


def _finish_swap(entry: dict) -> str:
    destination, staging = Path(entry["destination"]), Path(entry["staging"])
    if _same(destination, entry["staged_inode"]):
        result = "already swapped in; removed what it replaced"
    elif not destination.exists() and _same(staging, entry["staged_inode"]):
        os.rename(staging, destination)
        result = "the staged state was moved into place"
    elif _same(staging, entry["staged_inode"]):
        from .plans import carry_storage

        carry_storage(destination, staging, entry.get("carry", []))  # it may have died while linking
        if not exchange(staging, destination):
            aside = destination.with_name(f".{destination.name}.eternia-replaced-journal")
            os.rename(destination, aside)
            os.rename(staging, destination)
        result = "the staged state was swapped in"
    else:
        return f"{destination}: the staged state is gone; restore it again"
    fsync_dir(destination.parent)
    if not _same(staging, entry["staged_inode"]):
        remove_tree(staging)  # after an exchange it holds the old state
    for p in _aside(destination):
        remove_tree(p)
    return f"{destination}: {result}"


def _finish_sqlite(entry: dict) -> str:
    from .builtin.sqlite import write_into

    destination, staged = Path(entry["destination"]), Path(entry["staged"])
    if staged.exists():
        if destination.exists():
            write_into(staged, destination)
        else:
            os.replace(staged, destination)
    remove_tree(Path(entry["staging"]))
    return f"{destination}: the restored database was written"
