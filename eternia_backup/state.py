"""What happened last: per-target success/failure times, sizes, durations, counts.

Kept in a small JSON file (0600) in the state directory: ``backup.state_dir``,
else the first local target, else ``~/.local/state/eternia-backup``. ``status``
reads it, the scheduler records slots in it, and the Prometheus metrics are
made from it. The last success's time, duration and size are written only when
a run succeeded, so a failed run never hides them; what each target held when
it was last listed is kept as its ``inventory`` (:mod:`.inventory`). Updates
are serialised across processes by a lock on the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import StateDirError
from .fsutil import fsync_dir, make_private_dirs
from .mounts import unmounted_mount_point
from .timefmt import iso_utc

log = logging.getLogger("eternia_backup.state")


def default_state_dir(config) -> Path:
    """Beside the first local storage directory (``.<dir>.eternia``), so that all
    processes using that storage share the lock; else the user's state dir.
    Never inside the storage directory, which holds backups only."""
    return _choose_state_dir(config)[0]


_SET = "set by backup.state_dir"


def _choose_state_dir(config) -> tuple[Path, str]:
    """The state directory and why it is there (said when it cannot be made)."""
    if config.state_dir is not None:
        return config.state_dir, _SET
    why = "there is no local storage to keep it beside"
    for t in config.targets:
        if "://" not in t.url or t.url.startswith("file://"):
            storage = Path(t.url.removeprefix("file://"))
            beside = storage.parent / f".{storage.name}.eternia"
            if beside.exists() or _writable_ancestor(storage.parent):
                return beside, f"beside the storage directory {storage}"
            why = f"this user cannot write {storage.parent} to keep it beside the storage directory {storage}"
            break
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "eternia-backup", f"in $XDG_STATE_HOME: {why}"
    return Path.home() / ".local" / "state" / "eternia-backup", f"in the user's home: {why}"


def _writable_ancestor(path: Path) -> bool:
    for p in (path, *path.parents):
        if p.exists():
            return os.access(p, os.W_OK | os.X_OK)
    return False


@contextlib.contextmanager
def _locked_dir(path: Path):
    """An exclusive flock on the state directory itself, for one read-modify-write of the state
    file: `list` in one process and a backup in another both update it. (No lock file: the
    directory is the lock; released when the descriptor closes, also if the process dies.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return iso_utc(datetime.now(timezone.utc))


@dataclasses.dataclass
class StateStore:
    path: Path
    #: Why the state directory is where it is (said when it cannot be made).
    why: str = ""
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_config(cls, config) -> "StateStore":
        directory, why = _choose_state_dir(config)
        return cls(directory / f".{config.name}-{config.environment}.state.json", why)

    def make_dir(self, inside: Path | None = None) -> None:
        """Make the state directory (0700), and ``inside`` it, or raise :class:`StateDirError` saying
        which directory, why it is there and what to do: it holds the lock and the last-run record,
        so it is never silently moved elsewhere (two runs would then keep two records)."""
        directory = self.path.parent
        point = None if directory.exists() else unmounted_mount_point(directory)
        if point is not None:
            raise StateDirError(
                f"will not make the state directory {directory} (it is {self.why}) under {point}, a mount point "
                "in /etc/fstab that is not mounted: mount it, or set backup.state_dir")
        try:
            make_private_dirs(inside or directory)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))
        except OSError as exc:
            failed = f" on {exc.filename}" if exc.filename and Path(exc.filename) != directory else ""
            cause = (exc.strerror or str(exc)).lower()
            where = "" if self.why == _SET else "(or $XDG_STATE_HOME) "
            raise StateDirError(
                f"cannot make the state directory {directory}, which holds the lock and the last-run record: "
                f"{cause}{failed} (it is {self.why}); set backup.state_dir: {where}to a directory this user "
                "can write, or fix the permissions") from exc

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("state file %s is unreadable (%s); starting afresh", self.path, exc)
            return {}

    def update(self, change) -> dict[str, Any]:
        """Apply ``change(data)`` and write the file atomically."""
        with self._lock:
            make_private_dirs(self.path.parent)
            with _locked_dir(self.path.parent):  # another process's update in between would be lost
                return self._update(change)

    def _update(self, change) -> dict[str, Any]:
        data = self.read()
        change(data)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        return data

    def record_backup(self, *, targets: list[str], copies: list[str], failures: dict[str, str],
                      duration: float, size: int, backup_id: str | None, warning_count: int = 0,
                      stored: int | None = None) -> dict[str, Any]:
        """Per target: a success sets the last success's time, duration, size and warnings; a failure
        sets the last failure's time and error and counts it, and leaves the last success's figures
        as they were (a dashboard showing the last good backup's size must not drop to 0)."""
        def change(data):
            now = _now()
            per = data.setdefault("targets", {})
            for name in targets:
                t = per.setdefault(name, {"failures_total": 0})
                if name in copies:
                    t["last_result"] = "success"
                    t["last_success"] = now
                    t["last_duration_seconds"] = round(duration, 3)
                    t["last_size_bytes"] = size
                    t["last_backup_id"] = backup_id
                    t["last_warning_count"] = warning_count
                    if isinstance(t.get("inventory"), dict):
                        from .inventory import add_backup

                        add_backup(t["inventory"], created_at=now, size=size if stored is None else stored)
                else:
                    t["last_result"] = "failure"
                    t["last_failure"] = now
                    t["last_error"] = failures.get(name, "failed")
                    t["failures_total"] = int(t.get("failures_total", 0)) + 1

        return self.update(change)

    def record_inventory(self, inventories: dict[str, dict]) -> None:
        """Remember what each target held when it was last listed (see :mod:`.inventory`)."""
        if not inventories:
            return

        def change(data):
            per = data.setdefault("targets", {})
            for name, inventory in inventories.items():
                per.setdefault(name, {"failures_total": 0})["inventory"] = inventory

        self.update(change)

    def record_slot(self, slot: datetime, *, succeeded: bool) -> None:
        def change(data):
            data["last_attempted_slot"] = iso_utc(slot)
            if succeeded:
                data["last_successful_slot"] = iso_utc(slot)

        self.update(change)

    def record_checked(self, *, damaged: dict[str, str] | None = None, intact: list[str] | None = None) -> None:
        """Remember backups whose stored archive was found damaged by reading it (verify, restore,
        cleanup), and forget those a later read found intact: the next incremental never builds on
        a chain that holds a damaged one (a listing cannot see a flipped byte)."""
        def change(data):
            known = data.setdefault("damaged_backups", {})
            for backup_id in intact or ():
                known.pop(backup_id, None)
            for backup_id, problem in (damaged or {}).items():
                known[backup_id] = {"problem": problem[:500], "found": _now()}

        self.update(change)

    def damaged_backups(self) -> set[str]:
        """Ids of backups recorded as damaged (see :meth:`record_checked`)."""
        known = self.read().get("damaged_backups")
        return set(known) if isinstance(known, dict) else set()

    def record_leftovers(self, found: dict[str, str], gone: list[str] = ()) -> None:
        """Remember what restores replaced and could not remove (``{path: why}``), and forget what has
        gone since: ``status`` shows each until then (the state it holds is an old one, taking space)."""
        if not found and not gone:
            return

        def change(data):
            known = data.get("restore_leftovers")
            known = known if isinstance(known, dict) else {}
            for path in gone:
                known.pop(path, None)
            for path, why in found.items():
                since = (known.get(path) or {}).get("since") or _now()
                known[path] = {"error": why[:500], "since": since}
            if known:
                data["restore_leftovers"] = known
            else:
                data.pop("restore_leftovers", None)

        self.update(change)

    def restore_leftovers(self) -> dict[str, dict]:
        """``{path: {"error", "since"}}`` of :meth:`record_leftovers`."""
        known = self.read().get("restore_leftovers")
        return known if isinstance(known, dict) else {}
