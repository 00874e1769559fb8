"""Restore drills: prove on a schedule that a backup restores and its data checks out.

A drill restores a backup into a private scratch directory (never the live
destination), runs the configured checks on what was restored, records the
outcome in the state file (``status``, metrics, notifications), and removes
the scratch copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import EterniaBackupError, IntegrityError
from .hashing import HashingReader
from .streams import split_append, split_part
from .timefmt import iso_utc

log = logging.getLogger("eternia_backup.drill")


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
            "started_at": iso_utc(self.started_at),
            "duration_seconds": round(self.duration, 3),
            "error": self.error,
            "failed_checks": self.failed_names,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    @property
    def failed_names(self) -> list[str]:
        """``source:check`` of each failed check (just the check for one about the whole backup)."""
        return [f"{c.source}:{c.name}" if c.source else c.name for c in self.failed_checks]

    def to_state(self) -> dict:
        """What ``state["drill"]`` keeps of the last drill (status, metrics)."""
        return {
            "last_run": iso_utc(self.started_at),
            "backup_id": self.backup_id,
            "ok": self.ok,
            "duration_seconds": round(self.duration, 3),
            "failed_checks": self.failed_names,
            "error": self.error,
        }

    def describe_failure(self) -> str:
        """One line naming each failed check, its source and why (for the CLI and logs)."""
        parts = [f"check {c.name!r} of source {c.source!r} failed: {c.detail}" if c.source
                 else f"{c.name} failed: {c.detail}" for c in self.failed_checks]
        if self.error and not parts:
            parts.append(self.error)
        return f"drill of backup {self.backup_id} failed: " + "; ".join(parts)


def sql_result_true(value: Any) -> bool:
    """Whether the first value an SQL check returned counts as passing.

    NULL, no row, 0, an empty string and the words false/f/no/off fail; anything
    else passes (``psql -tA`` prints booleans as ``t``/``f``).
    """
    if value is None:
        return False
    if isinstance(value, (bytes, bytearray)):
        return bool(value)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "f", "false", "no", "off")
    return bool(value)


# -- running a drill ---------------------------------------------------------------------------------


class _Picked:
    """A member chosen for the sample: its hash is taken as the archive streams it to staging."""

    def __init__(self, rel: str, member):
        self.rel = rel
        self.member = member
        self.hashing: HashingReader | None = None


class _HashingReader:
    """An archive reader whose ``open_member`` hashes the bytes the extractor reads."""

    def __init__(self, inner, picked: _Picked):
        self._inner = inner
        self._picked = picked

    def open_member(self, member):
        self._picked.hashing = HashingReader(self._inner.open_member(member))
        return self._picked.hashing

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class SampleTap:
    """Picks ``sizes[source]`` files of each source uniformly at random as the archive streams
    (reservoir sampling, so one pass and no list of every file), hashing each picked one."""

    def __init__(self, sizes: dict[str, int], rng: random.Random | None = None):
        self.sizes = sizes
        self.rng = rng or random.SystemRandom()
        self.seen: dict[str, int] = {}
        self.picked: dict[str, list[_Picked]] = {}

    def __call__(self, source: str, rel: str, member, reader):
        n = self.sizes.get(source, 0)
        if n <= 0 or member.kind != "file":
            return reader
        appended = split_append(rel)
        if appended is not None:  # the file picked earlier in the chain is longer now: no longer a sample
            picked = self.picked.get(source, [])
            picked[:] = [p for p in picked if p.rel != appended[0]]
            return reader
        if split_part(rel) is not None:  # a piece of a dump, joined after staging: not a file of its own
            return reader
        k = self.seen.get(source, 0)
        self.seen[source] = k + 1
        picked = self.picked.setdefault(source, [])
        if len(picked) < n:
            picked.append(_Picked(rel, member))
            return _HashingReader(reader, picked[-1])
        j = self.rng.randrange(k + 1)
        if j >= n:
            return reader
        picked[j] = _Picked(rel, member)
        return _HashingReader(reader, picked[j])


def expected_entries(record) -> int:
    """Entries the restored source holds, as the manifest recorded them at backup time (an
    incremental's archive holds only the changes; its counts say how many were unchanged)."""
    inc = record.increment
    if inc and inc.get("mode") == "changes":
        return int(inc.get("changed", 0)) + int(inc.get("unchanged", 0))
    return record.entries


def count_tree(root: Path) -> tuple[int, int]:
    """(entries including ``root`` itself, regular files) of a restored tree; links are not followed."""
    if not root.is_dir() or root.is_symlink():
        return (1 if root.exists() or root.is_symlink() else 0), (1 if root.is_file() else 0)
    entries, files = 1, 0
    for dirpath, dirs, names in os.walk(root):
        entries += len(dirs) + len(names)
        files += sum(1 for n in names if os.path.isfile(os.path.join(dirpath, n))
                     and not os.path.islink(os.path.join(dirpath, n)))
    return entries, files


def file_checks(source: str, restored: Path, record, checks, picked: list[_Picked]) -> list[DrillCheck]:
    """The ``files`` checks of a tree: entry count against the manifest, min_count, sampled hashes."""
    found: list[DrillCheck] = []
    entries, files = count_tree(restored)
    expected = expected_entries(record)
    found.append(DrillCheck(source, "entries", entries == expected,
                            f"{entries} entries restored, the manifest recorded {expected}"))
    if checks.files_min_count is not None:
        found.append(DrillCheck(source, "min_count", files >= checks.files_min_count,
                                f"{files} regular files restored; at least {checks.files_min_count} wanted"))
    if checks.files_sample > 0:
        bad = []
        for p in picked:
            path = restored / p.rel
            if p.hashing is None or p.hashing.size != p.member.size:
                bad.append(f"{p.rel} (not read whole from the archive)")
                continue
            try:
                digest, size = _sha256_of(path)
            except OSError as exc:
                bad.append(f"{p.rel} ({exc.strerror or exc})")
                continue
            if size != p.hashing.size or digest != p.hashing.sha.hexdigest():
                bad.append(f"{p.rel} (restored {size} bytes differ from the archive's {p.hashing.size})")
        detail = (f"{len(picked)} sampled file(s) read back match the archive's sha256" if not bad else
                  f"{len(bad)} of {len(picked)} sampled file(s) differ from the archive: " + ", ".join(bad[:5]))
        found.append(DrillCheck(source, "sample_sha256", not bad, detail))
    return found


def _sha256_of(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def command_check(source: str, restored: Path, checks, *, cwd: Path, backup_id: str) -> DrillCheck:
    """The ``command`` check: exit status 0 with the restored copy in $RESTORE_DIR passes."""
    from .hooks import run_hook

    env = {"RESTORE_DIR": str(restored), "ETERNIA_SOURCE": source, "ETERNIA_BACKUP_ID": backup_id}
    try:
        run_hook(f"drill.checks.{source}.command", checks.command, cwd=cwd, env=env, timeout=checks.timeout)
    except EterniaBackupError as exc:
        return DrillCheck(source, "command", False, str(exc))
    return DrillCheck(source, "command", True, "exited with status 0")


def run_checks(manager, copy, scratch: Path) -> list[DrillCheck]:
    """Restore ``copy`` into ``scratch`` (``<scratch>/<source>``) and check each source.

    Every source is restored as the archive holds it (a database as its file or dump), so
    nothing of the live state is touched and each source's checks see its own copy. A
    restore that fails is the failed check ``restore``; the other checks need a restore.
    """
    from . import restore

    manifest = copy.manifest
    if manifest is None or copy.problem:
        raise IntegrityError(f"{copy.describe()} is damaged: {copy.problem or 'no manifest'}")
    drill = manager.config.drill
    sizes = {}
    for record in manifest.sources:
        src = manager.sources.get(record.name)
        if src is not None and "files" in src.drill_keys:
            sizes[record.name] = drill.checks_for(record.name).files_sample
    tap = SampleTap(sizes)
    try:
        links = manager.chain_of(copy)
        restore.restore_copy(copy, sources={}, selected=None, to=scratch, dry_run=False,
                             registry=manager.registry, pm=manager.pm, encryption=manager.config.encryption,
                             journal_path=None, links=links, tap=tap)
    except EterniaBackupError as exc:
        if getattr(exc, "damaged_backup", None):
            manager._record_checked({exc.damaged_backup: str(exc)}, [])
        return [DrillCheck("", "restore", False, str(exc))]
    checks = [DrillCheck("", "restore", True, f"{len(manifest.sources)} source(s) restored; every archive's size "
                                              "and sha256 match the manifest")]
    for record in manifest.sources:
        name, restored = record.name, scratch / record.name
        src = manager.sources.get(name)
        cfg = drill.checks_for(name)
        if src is not None and "files" in src.drill_keys:
            checks += file_checks(name, restored, record, cfg, tap.picked.get(name, []))
        if src is not None:
            try:
                checks += src.drill(restored, cfg)
            except Exception as exc:  # a plugin's bug is a failed check, not a crashed drill
                log.exception("source %r: drill checks crashed", name)
                checks.append(DrillCheck(name, "drill", False, f"the {src.type_name} source's checks failed: "
                                                               f"{type(exc).__name__}: {exc}"))
        if cfg.command:
            checks.append(command_check(name, restored, cfg, cwd=manager.config.base_dir,
                                        backup_id=copy.backup_id))
    for c in checks:
        log.log(logging.INFO if c.ok else logging.WARNING, "drill %s: %s%s: %s: %s", copy.backup_id,
                f"{c.source}: " if c.source else "", c.name, "ok" if c.ok else "FAILED", c.detail)
    return checks
