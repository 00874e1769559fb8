"""BackupManager: the public Python API that ties config, plugins and logic together.

``backup_manager`` is a default instance configured lazily from the config file
(``$ETERNIA_BACKUP_CONFIG`` or ``./eternia-backup.yaml``) on first use, so the
snippets of SEED.md run unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from . import backup as backup_mod
from . import catalog, cleanup, restore, verify
from .config import BackupConfig, load_config
from .errors import ConfigError, EterniaBackupError, IntegrityError, StorageError
from .plugins import Registry, build_registry, call_lifecycle, get_plugin_manager
from .providers import Source, Target
from .storage import split_protocol

log = logging.getLogger("eternia_backup")


class BackupManager:
    """Make, list, verify, restore and clean up the backups of one configuration."""

    def __init__(self, config: BackupConfig, *, plugin_manager=None):
        self.config = config
        self.pm = plugin_manager or get_plugin_manager()
        self.registry: Registry = build_registry(self.pm)
        # Everything below validates without I/O, so bad config fails here.
        self.sources: dict[str, Source] = {}
        for i, spec in enumerate(config.sources):
            self.sources[spec.name] = self._make_source(i, spec)
        try:
            self.archiver = self.registry.archiver(config.archive_format)()
        except ConfigError as exc:
            raise ConfigError(f"backup.archive.format: {exc}") from None
        try:
            self.compression = self.registry.compression(config.compression)()
        except ConfigError as exc:
            raise ConfigError(f"backup.archive.compression: {exc}") from None
        self._check_level()
        self.targets: list[Target] = [self._make_target(t.name, t.url, t.options) for t in config.targets]
        self.tz = ZoneInfo(config.timezone) if config.timezone else None

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None, **kwargs) -> "BackupManager":
        """A manager for the config file at ``path`` (or found as the CLI finds it)."""
        return cls(load_config(path), **kwargs)

    # -- construction ------------------------------------------------------------

    def _make_source(self, index: int, spec) -> Source:
        try:
            cls = self.registry.source(spec.type)
        except ConfigError as exc:
            raise ConfigError(f"backup.sources[{index}].type: {exc}") from None
        try:
            options = cls.options_model.model_validate(spec.options)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    import difflib

                    hint = difflib.get_close_matches(key, list(cls.options_model.model_fields), n=1)
                    problems.append(f"backup.sources[{index}].{key}: unknown key for a {spec.type} source"
                                    + (f"; did you mean {hint[0]!r}?" if hint else ""))
                elif err["type"] == "missing":
                    problems.append(f"backup.sources[{index}].{key}: required for a {spec.type} source")
                else:
                    problems.append(f"backup.sources[{index}].{key}: expected {err['msg'].lower()}, "
                                    f"got {err.get('input')!r}")
            raise ConfigError("; ".join(problems)) from None
        return cls(spec.name, options, self.config.base_dir)

    def _check_level(self) -> None:
        level, levels = self.config.compression_level, self.compression.levels
        if level is None:
            return
        if levels is None:
            raise ConfigError(f"backup.archive.level: compression {self.compression.name!r} takes no level, got {level}")
        if not levels[0] <= level <= levels[1]:
            raise ConfigError(f"backup.archive.level: expected a whole number from {levels[0]} to {levels[1]} "
                              f"for {self.compression.name}, got {level}")

    def _make_target(self, name: str, url: str, options: dict) -> Target:
        cls = self.registry.target_for(split_protocol(url))
        return cls(name, url, options)

    def _target_for_url(self, url: str) -> Target:
        # A URL of a configured target reuses its options (credentials, endpoint).
        for t in self.targets:
            if url.rstrip("/") == t.url.rstrip("/"):
                return t
        for t in self.targets:
            if split_protocol(url) == split_protocol(t.url) and split_protocol(url) != "file":
                return self._make_target("url", url, t.options)
        return self._make_target("url", url, {})

    # -- operations ------------------------------------------------------------------

    def create_backup(self, *, progress: Callable[[int], None] | None = None) -> backup_mod.BackupResult:
        """Back up every source to every target; returns where the backup went.

        Raises :class:`BackupFailedError` (with ``.result``) when a target failed.
        """
        for s in self.sources.values():
            s.check()
        return backup_mod.run_backup(
            name=self.config.name, environment=self.config.environment,
            sources=list(self.sources.values()), targets=self.targets,
            archiver=self.archiver, compression=self.compression, level=self.config.compression_level,
            hook=self.pm.hook, config=self.config, progress=progress,
        )

    def listings(self) -> tuple[list[catalog.TargetListing], dict[str, str]]:
        listings, errors = [], {}
        for t in self.targets:
            try:
                listings.append(catalog.list_target(t, self.config.name))
            except EterniaBackupError as exc:
                errors[t.name] = str(exc)
                log.info("cannot list target %r: %s", t.name, exc)
        return listings, errors

    def list_backups(self) -> list[catalog.BackupEntry]:
        """Every backup on every target, merged by id, newest first."""
        listings, errors = self.listings()
        if errors and not listings:
            raise StorageError("; ".join(errors.values()))
        return catalog.merge(listings)

    def find_backup(self, backup: str) -> catalog.BackupCopy:
        """The best copy of ``backup``: a path, a URL, a backup id (or prefix), or ``latest``."""
        backup = os.fspath(backup)
        copy = catalog.copy_from_reference(backup, self._target_for_url)
        if copy is not None:
            return copy
        entry = catalog.find(self.list_backups(), backup)
        return entry.best

    def verify_backup(self, backup: str) -> verify.VerifyReport:
        """Fully check one backup; raises IntegrityError naming the backup and the problem."""
        report = verify.verify_copy(self.find_backup(backup), self.registry)
        if not report.ok:
            raise IntegrityError(report.problem)
        return report

    def verify_all(self) -> list[verify.VerifyReport]:
        """Check every copy of every backup; never raises for a damaged one."""
        listings, errors = self.listings()
        if errors:
            raise StorageError("; ".join(errors.values()))
        return [verify.verify_copy(c, self.registry) for e in catalog.merge(listings) for c in e.copies]

    def restore_backup(self, backup: str, *, to: str | os.PathLike | None = None,
                       sources: list[str] | None = None, dry_run: bool = False,
                       confirm: Callable[[list[str]], bool] | None = None) -> restore.RestoreResult:
        """Verify, stage and swap a backup into place (or into ``to``)."""
        copy = self.find_backup(backup)
        return restore.restore_copy(
            copy, sources=self.sources, selected=sources, to=Path(to).absolute() if to is not None else None,
            dry_run=dry_run, registry=self.registry, hook=self.pm.hook, confirm=confirm,
        )

    def download_backup(self, url: str, *, to: str | os.PathLike | None = None) -> Path:
        """Copy a backup (archive and manifest) into local storage, verified; returns the archive's path."""
        copy = self.find_backup(url)
        if copy.manifest is None or copy.problem:
            raise IntegrityError(f"{copy.describe()} is damaged: {copy.problem}")
        dest = self._download_target(to)
        manifest = copy.manifest
        writer = dest.open_write(manifest.archive.file)
        try:
            with copy.target.open_read(manifest.archive.file) as src:
                hashing = verify.HashingReader(src)
                while chunk := hashing.read(1024 * 1024):
                    writer.write(chunk)
            verify._compare(copy, manifest, hashing)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        dest.write_bytes(manifest.filename, manifest.to_json())
        return dest.local_path(manifest.archive.file) or Path(dest.file_url(manifest.archive.file))

    def _download_target(self, to) -> Target:
        if to is not None:
            return self._make_target("download", str(Path(to).absolute()), {})
        for t in self.targets:
            if t.is_local:
                return t
        raise StorageError("no local storage is configured to download into; set backup.storage_path or pass --to DIR")

    def cleanup(self, *, dry_run: bool = False) -> cleanup.CleanupResult:
        """Apply retention on every target; a target whose listing fails is left untouched."""
        result = cleanup.CleanupResult(dry_run, [
            cleanup.cleanup_target(t, name=self.config.name, environment=self.config.environment,
                                   policy=self.config.retention, tz=self.tz, dry_run=dry_run)
            for t in self.targets
        ])
        if not dry_run:
            call_lifecycle(self.pm.hook.eternia_cleanup_finished, result=result)
        return result

    def cleanup_old_backups(self) -> int:
        """SEED.md's API: apply retention, return how many backups were deleted.

        Raises StorageError (with ``.result``) if a target could not be cleaned.
        """
        result = self.cleanup()
        if not result.ok:
            err = StorageError("cleanup failed on " + "; ".join(f"target {k!r}: {v}" for k, v in result.errors.items()))
            err.result = result
            raise err
        return result.deleted_count


class _DefaultManager:
    """``backup_manager``: a BackupManager made from the config file on first use."""

    def __init__(self) -> None:
        self._manager: BackupManager | None = None
        self._lock = threading.Lock()

    def _get(self) -> BackupManager:
        with self._lock:
            if self._manager is None:
                self._manager = BackupManager.from_config()
            return self._manager

    def reload(self) -> None:
        """Forget the loaded config; the next use reads the config file again."""
        with self._lock:
            self._manager = None

    def __getattr__(self, name: str):
        return getattr(self._get(), name)

    def __repr__(self) -> str:
        return f"<default BackupManager ({'loaded' if self._manager else 'not loaded yet'})>"


backup_manager = _DefaultManager()
