"""The restore journal: how the next run finishes a restore that was killed while swapping.

Written (fsynced, 0600) into the state directory once every source of a restore
is staged and checked, just before the first swap; removed when the restore has
finished or rolled back. If a process dies in between, the next ``restore`` or
``create`` finishes the restore first (every source gets the restored state, so
there is never a mix of old and new), and ``status`` says that one is pending.

Each entry holds a plan's own ``journal_entry()`` and names its class and its
source's type; the next run finds that class again through the plugin registry
(``Source.restore_plan_types``) and calls its ``resume``, so a third-party
plan is finished exactly like a built-in one. A plan without an entry cannot be
finished automatically, and the next run says so.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import EterniaBackupError, LeftoverError, RestoreError
from .fsutil import fsync_dir
from .plans import DirectorySwapPlan
from .providers import RestorePlan

if TYPE_CHECKING:
    from .plugins import Registry

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


def entry_for(plan: RestorePlan, source_type: str | None) -> dict:
    """The journal entry of ``plan``: its own data, and how to find its class again after a crash."""
    data = plan.journal_entry()
    return {"source_type": source_type, "plan": plan_id(type(plan)),
            "destination": str((data or {}).get("destination") or plan.description),
            "data": data}


def plan_id(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# Entries written by 0.1.0, before plans resumed themselves (kind -> plan class).
_OLD_KINDS = {"directory-swap": "eternia_backup.plans:DirectorySwapPlan"}


def _plan_class(entry: dict, registry: Registry | None) -> type[RestorePlan] | None:
    """The plan class named by ``entry``, looked up among the classes the registry knows (never imported by name)."""
    wanted = entry.get("plan") or _OLD_KINDS.get(entry.get("kind", ""))
    candidates: list[type[RestorePlan]] = [DirectorySwapPlan]
    if registry is not None:
        types = [entry["source_type"]] if entry.get("source_type") else registry.names("source")
        for t in types:
            try:
                candidates.extend(registry.source(t).restore_plan_types)
            except EterniaBackupError:
                continue  # its plugin is gone: said below
    for cls in candidates:
        if plan_id(cls) == wanted:
            return cls
    return None


def finish(path: Path, registry: Registry | None = None, leftovers: dict[str, str] | None = None) -> list[str]:
    """Finish an interrupted restore, if any; returns what was done.

    What a finished swap replaced and cannot be removed goes into ``leftovers`` (``{path: why}``):
    the restore is complete all the same, and the journal goes."""
    data = pending(path)
    if data is None:
        return []
    done = []
    for entry in data.get("entries", []):
        cls = _plan_class(entry, registry)
        payload = entry.get("data") if "plan" in entry else entry
        destination = entry.get("destination", "?")
        if cls is None:
            done.append(f"{destination}: its restore plan ({entry.get('plan') or entry.get('kind')}) is not known "
                        "to any installed plugin; restore it again")
        elif payload is None:  # the plan keeps no journal entry
            done.append(f"{destination}: cannot be finished automatically; restore it again")
        else:
            try:
                done.append(cls.resume(payload))
            except LeftoverError as exc:
                done.append(str(exc))
                if leftovers is not None:
                    leftovers.update(exc.leftovers)
    remove(path)
    for line in done:
        log.warning("finished an interrupted restore of %s: %s", data.get("backup_id"), line)
    return done
