"""BackupManager: the public Python API that ties config, plugins and logic together.

``backup_manager`` is a default instance configured lazily from the config file
(``$ETERNIA_BACKUP_CONFIG``, else ``eternia-backup.yaml`` in the current directory or beside the
application's main script) on first use, so the
project's original snippets (``from ... import backup_manager``;
``backup_manager.create_backup()``, README.md) run unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from . import backup as backup_mod
from . import catalog, cleanup, restore, scratch, verify
from .config import BackupConfig, config_from_mapping, load_config, unknown_key_hint
from .drill import DrillResult
from .errors import (
    BackupFailedError,
    BackupNotFoundError,
    ConfigError,
    EterniaBackupError,
    IntegrityError,
    Interrupted,
    LatestDamagedError,
    RestoreError,
    SourceError,
    StateDirError,
    StorageError,
    UsageError,
)
from .fsutil import remove_tree, why_not_removed
from .locks import LocalLock
from .sizes import human_size
from .plugins import Registry, build_registry, call_lifecycle, get_plugin_manager
from .mounts import unmounted_mount_point
from .progress import NO_PROGRESS, Progress, ProgressReader
from .manifest_cache import ManifestCache
from .providers import LocalPaths, Source, Target, UploadCleanup, local_path_of
from .state import StateStore
from .storage import split_protocol
from .timefmt import iso_utc

log = logging.getLogger("eternia_backup")

# notify.<kind> -> (module, class) of the built-in notifier plugins
NOTIFIERS = {
    "webhook": ("eternia_backup.builtin.webhook", "WebhookNotifier"),
    "healthchecks": ("eternia_backup.builtin.healthchecks", "HealthchecksNotifier"),
    "apprise": ("eternia_backup.builtin.apprise_notifier", "AppriseNotifier"),
}


def _in_scratch(method):
    """Run an operation with its temporary files in ``<state dir>/tmp`` (eternia_backup.scratch), after
    removing what processes that died left there."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.scratch_space():
            return method(self, *args, **kwargs)

    return wrapper


def _names(value, what: str) -> list[str] | None:
    """A list of names or patterns; one string is one of them (``sources="db"``), not its characters."""
    if value is None or isinstance(value, str):
        return None if value is None else [value]
    try:
        names = list(value)
    except TypeError:
        names = [value]
    wrong = [n for n in names if not isinstance(n, str)]
    if wrong:
        raise UsageError(f"{what}: expected a name or a list of names (strings), got {wrong[0]!r}")
    return names


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
        self._check_drill()
        self.targets: list[Target] = [self._make_target(t.name, t.url, t.options) for t in config.targets]
        self._check_overlaps()
        self.tz = ZoneInfo(config.timezone) if config.timezone else None
        if config.encryption is not None:
            from .encryption import parse_recipient

            # Check the recipients now, before any I/O. (Not by building an
            # Encryptor: in passphrase mode that costs a scrypt on every command.)
            for i, r in enumerate(config.encryption.recipients):
                parse_recipient(r, f"backup.encryption.recipients[{i}]")
        self.state = StateStore.for_config(config)
        self.lock = LocalLock(self.state.path.parent / f".{config.name}-{config.environment}.lock")
        storage = self.storage_paths()
        for source in self.sources.values():
            source.storage_paths = storage  # never back up (or restore over) our own storage
        self.lease_target: Target | None = None
        self._scheduler = None
        self._scheduler_lock = threading.Lock()
        self._metrics_server = None
        self._signal_handlers: dict = {}  # signal -> the handler start_scheduler(handle_signals=True) replaced
        self._register_notifiers()

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None, *, base_dir: str | os.PathLike | None = None,
                    **kwargs) -> "BackupManager":
        """A manager for the config file at ``path``, or found as the CLI finds it.

        Without ``path``: ``$ETERNIA_BACKUP_CONFIG``, else ``eternia-backup.yaml`` in
        ``base_dir`` (pass your application's directory: ``Path(__file__).parent``),
        else in the current directory, then beside the application's main script.
        """
        return cls(load_config(path, base_dir=base_dir), **kwargs)

    @classmethod
    def from_dict(cls, mapping: dict, *, base_dir: str | os.PathLike | None = None, **kwargs) -> "BackupManager":
        """A manager for a config already in memory (from the application's own settings).

        ``mapping`` is the ``backup:`` section (``{"storage_path": "backups", ...}``) or a
        whole document holding one; ``${VAR}`` is substituted as in a file. Relative paths
        are relative to ``base_dir``, by default the directory of the application's main
        script, else the current directory: pass ``base_dir`` under a server (gunicorn,
        uvicorn) whose main script is not the application.
        """
        return cls(config_from_mapping(mapping, base_dir=base_dir), **kwargs)

    # -- construction ------------------------------------------------------------

    def _register_notifiers(self) -> None:
        """One plugin per ``notify:`` entry, through the same pluggy registration as any plugin's."""
        for i, spec in enumerate(self.config.notifiers):
            module, cls = NOTIFIERS[spec.kind]
            if self.pm.is_blocked(module):  # ETERNIA_BACKUP_DISABLE_PLUGINS names the module
                continue
            notifier = getattr(importlib.import_module(module), cls)(spec, self.config)
            self.pm.register(notifier, name=f"{module}[{i}]")

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
                    allowed = [k for k in cls.options_model.model_fields if k not in ("type", "name")]
                    problems.append(f"backup.sources[{index}].{key}: unknown key for a {spec.type} source"
                                    + unknown_key_hint(key, allowed))
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

    def _check_drill(self) -> None:
        """Each key of ``drill.checks.<source>`` must be one that source's type can check."""
        for name, checks in self.config.drill.checks.items():
            src = self.sources[name]
            allowed = (*(k for k in src.drill_keys if k != "sql_by_database"), "command", "timeout")
            for key in checks.keys:
                if key not in allowed:
                    raise ConfigError(f"backup.drill.checks.{name}.{key}: a {src.type_name} source has no such "
                                      f"check; it has: {', '.join(allowed)}")
            if checks.sql_by_database and "sql_by_database" not in src.drill_keys:
                raise ConfigError(f"backup.drill.checks.{name}.sql: a {src.type_name} source checks one database; "
                                  "write its queries as a list, not as a mapping of database names")

    def _check_overlaps(self) -> None:
        """Directory sources inside one another, or two local targets in one directory, never work:
        files archived twice and an in-place restore that cannot swap both; every write colliding."""
        def real(path) -> str:
            return os.path.realpath(path)

        trees = [(name, real(s.describe()["path"])) for name, s in self.sources.items()
                 if s.type_name == "directory" and s.describe().get("path")]
        for name, root in trees:
            for other, other_root in trees:
                if name != other and (root == other_root or root.startswith(other_root.rstrip("/") + "/")):
                    raise ConfigError(
                        f"backup.sources: {name!r} ({root}) lies inside {other!r} ({other_root}): its files "
                        f"would be archived twice and an in-place restore cannot swap both; back up {other!r} "
                        f"alone (it holds {name!r}), or keep the sources in separate directories")
        seen: dict[str, str] = {}
        for t in self.targets:
            path = local_path_of(t)
            if path is None:
                continue
            if real(path) in seen:
                raise ConfigError(f"backup.targets: {t.name!r} and {seen[real(path)]!r} are one directory "
                                  f"({real(path)}); every backup would be written there twice; keep one of them")
            seen[real(path)] = t.name

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

    def storage_paths(self) -> tuple[Path, ...]:
        """Where this configuration keeps things on this machine: local targets and the state directory.

        Sources leave these out of backups (self-inclusion) and restores carry them over.
        """
        paths = [t.root_path for t in self.targets if isinstance(t, LocalPaths)]
        paths.append(self.state.path.parent.absolute())
        return tuple(dict.fromkeys(paths))

    def _acquire_lock(self, what: str) -> LocalLock:
        """The host lock, in the state directory: one that cannot be made is said as such."""
        self.state.make_dir()
        return self.lock.acquire(what)

    @contextlib.contextmanager
    def scratch_space(self):
        """Temporary files of the operation run inside go to ``<state dir>/tmp`` (0700), not /tmp.

        What a process that died left there (named with its pid) is removed first;
        what a live process (another scheduler or CLI on this state) uses is kept.
        """
        root = scratch.root_for(self.state.path.parent)
        if scratch.ROOT.get() == root:
            yield root  # already inside an operation of this manager
            return
        self.state.make_dir(root)
        with scratch.using(root):
            scratch.remove_stale(root)
            yield root

    def config_notes(self) -> list[str]:
        """One line per thing a careful user should know about this configuration (``config check``)."""
        return [line for source in self.sources.values() for line in source.notes()]

    def config_problems(self) -> list[str]:
        """What on this machine makes the valid config fail now (``config check``; exit 1): a file-based
        source that is missing or unreadable, local storage that is a file or would be made under an
        unmounted fstab mount point. Only local checks: no
        database or bucket is contacted."""
        problems = []
        for source in self.sources.values():
            if not source.describe().get("path"):
                continue  # commands, databases: checked when they run
            try:
                source.check()
            except EterniaBackupError as exc:
                problems.append(f"{exc} (create would fail)")
        for target in self.targets:
            path = local_path_of(target)
            if path is not None and path.exists() and not path.is_dir():
                problems.append(f"target {target.name!r}: {path} is a file, not a directory; fix the path "
                                "(create would fail)")
            elif path is not None and not path.exists() and (point := unmounted_mount_point(path)) is not None:
                problems.append(f"target {target.name!r}: {path} would be made under {point}, a mount point in "
                                "/etc/fstab that is not mounted; mount it (create would fail)")
        encryption = self.config.encryption
        if encryption is not None and encryption.identity_file is not None \
                and not os.access(encryption.identity_file, os.R_OK):
            problems.append(f"backup.encryption.identity_file: {encryption.identity_file} cannot be read here "
                            "(restore and verify need it)")
        return problems

    # -- operations ------------------------------------------------------------------

    @_in_scratch
    def create_backup(self, *, progress: "Progress | Callable[[int], None] | None" = None, guard=None,
                      cancel=None, full: bool = False) -> backup_mod.BackupResult:
        """Back up every source to every target; returns where the backup went.

        With ``archive.incremental`` on, the backup holds only what changed since
        the newest backup, unless ``full`` (or ``full_every`` says it is time).

        Raises :class:`BackupFailedError` (with ``.result``) when a target failed,
        and :class:`BackupInProgress` when another backup of this storage runs.
        ``progress`` is a :class:`~eternia_backup.progress.Progress` (or a
        callable taking a byte count).
        """
        if self.lock.held:
            self.finish_interrupted_restore()  # never back up a half-restored state
            return self._create(progress, guard, cancel, full)
        with self._acquire_lock("backup"):
            self.finish_interrupted_restore()
            return self._create(progress, guard, cancel, full)

    def _increment_plan(self, full: bool, encryptor):
        """Full or incremental, and on top of which backup (None when incremental backups are off)."""
        from .chains import plan_increment

        policy = self.config.incremental
        if not policy.enabled:
            return None
        listings, errors = ([], {}) if full else self.listings()
        return plan_increment(policy, full=full, entries=catalog.merge(listings), unlisted=errors,
                              target_names=[t.name for t in self.targets], environment=self.config.environment,
                              encryptor=encryptor, encryption_settings=self.config.encryption,
                              now=datetime.now(timezone.utc), plain_index=self.plain_index_path,
                              damaged=self.state.damaged_backups())

    @property
    def plain_index_path(self) -> Path:
        """Where an encrypted backup keeps the unencrypted copy of its file index (for the next incremental)."""
        return self.state.path.parent / "file-index" / f"{self.config.name}-{self.config.environment}.files.jsonl.zst"

    def _create(self, progress, guard, cancel, full=False) -> backup_mod.BackupResult:
        try:
            encryptor = self._encryptor()
            increment = self._increment_plan(full, encryptor)
            result = backup_mod.run_backup(
                name=self.config.name, environment=self.config.environment,
                sources=list(self.sources.values()), targets=self.targets,
                archiver=self.archiver, compression=self.compression, level=self.config.compression_level,
                pm=self.pm, config=self.config, progress=progress, guard=guard, cancel=cancel,
                encryptor=encryptor, increment=increment,
            )
        except BackupFailedError as exc:
            self._record(exc.result, {t.name: str(exc) for t in self.targets})
            raise
        except EterniaBackupError as exc:
            self._record(None, {t.name: str(exc) for t in self.targets})
            default = next((s for s in self.config.sources if s.default), None)
            # the hint is for the default directory's own problem (missing, unreadable), not a hook's
            if isinstance(exc, SourceError) and default is not None \
                    and self.sources[default.name].describe().get("path", "\0") in str(exc):
                raise SourceError(f"{exc} (backup.sources is not set, so the directory data/ beside the "
                                  "config file is backed up; list your sources under backup.sources)") from exc
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in the CLI: a failure where nothing was committed
            partial = getattr(exc, "result", None)  # committed to some targets (errors.Interrupted)
            reason = f"{Interrupted.reason(exc)}; nothing was committed"
            self._record(partial, {} if partial is not None else {t.name: reason for t in self.targets})
            raise
        try:
            self._record(result, {})
        except KeyboardInterrupt as exc:  # the backup is made: say so, not "nothing was committed"
            if getattr(exc, "result", None) is not None:
                raise
            raise backup_mod.interrupted_after_commit(exc, result, {}) from exc
        return result

    def _encryptor(self):
        if not self.config.encrypt:
            return None
        from .encryption import Encryptor

        return Encryptor(self.config.encryption)  # a fresh one per backup (passphrase mode)

    def _record(self, result, failures: dict[str, str]) -> None:
        """Remember per-target outcomes (status, metrics); never fails the backup."""
        from .inventory import stored_bytes

        try:
            copies = [c.target for c in result.copies] if result else []
            manifest = result.manifest if result else None
            state = self.state.record_backup(
                targets=[t.name for t in self.targets], copies=copies,
                failures={**failures, **(result.failures if result else {})},
                duration=result.duration if result else 0.0, size=result.size if result else 0,
                backup_id=result.backup_id if result else None,
                warning_count=result.warning_count if result else 0,
                stored=stored_bytes(manifest) if manifest is not None else None)
            self._first_inventory(state, copies)
        except OSError as exc:
            log.warning("could not record the outcome in %s: %s", self.state.path, exc)
        self.write_metrics()

    def _first_inventory(self, state: dict, copies: list[str]) -> None:
        """List, once, the targets a backup just went to whose holdings were never recorded.

        From then on each backup is added to the inventory without a listing, and every
        listing (list, status, cleanup) refreshes it: `create` from cron still gets
        per-target counts, and S3 is not listed after every backup for the metrics.
        """
        per = state.get("targets") or {}
        listings = []
        for t in self.targets:
            if t.name in copies and not isinstance((per.get(t.name) or {}).get("inventory"), dict):
                try:
                    listings.append(catalog.list_target(t, self.config.name, self.manifest_cache(t)))
                except EterniaBackupError as exc:
                    log.debug("target %r: not listed for its inventory: %s", t.name, exc)
        self._record_inventory(self._inventories(listings))

    def metrics_collector(self):
        """The Prometheus collector of this configuration: reads the state file on each collection."""
        from .metrics import StateCollector

        return StateCollector(self.state.read, name=self.config.name, environment=self.config.environment,
                              targets=[t.name for t in self.targets])

    def write_metrics(self) -> Path | None:
        """Write the Prometheus textfile (``metrics.textfile``) from the state file; its path, or None.

        Called after every command that changes the state (backup, cleanup, restore,
        verify, drill, and listings, which record what each target holds). Never raises
        for I/O: the metrics are worth a warning, not a failed backup.
        """
        path = self.config.metrics_textfile
        if path is None:
            return None
        from .metrics import write_textfile

        try:
            write_textfile(path, self.metrics_collector())
        except OSError as exc:
            log.warning("could not write the metrics textfile %s: %s", path, exc)
            return None
        return path

    def _inventories(self, listings: list[catalog.TargetListing]) -> dict[str, dict]:
        """What each listed target holds (metrics, status), for the listings whose every manifest was read."""
        from .inventory import summarize

        return {li.target.name: summarize(li.copies, environment=self.config.environment)
                for li in listings if not any(c.unreadable for c in li.copies)}

    def _record_inventory(self, inventories: dict[str, dict]) -> None:
        """Remember what the targets just listed hold (metrics, status); never fails the command."""
        try:
            self.state.record_inventory(inventories)
        except OSError as exc:
            log.debug("could not record what the targets hold in %s: %s", self.state.path, exc)

    def manifest_cache(self, target: Target) -> ManifestCache | None:
        """The manifests of a remote target already read (local ones cost no request to read again)."""
        if isinstance(target, LocalPaths):
            return None
        return ManifestCache(self.state.path.parent / "manifest-cache", target.url)

    def listings(self) -> tuple[list[catalog.TargetListing], dict[str, str]]:
        """Every target's listing, and why the others could not be listed.

        What each listed target holds is recorded in the state (and the metrics
        textfile), so the metrics never list a target themselves.
        """
        listings, errors = [], {}
        for t in self.targets:
            try:
                listings.append(catalog.list_target(t, self.config.name, self.manifest_cache(t)))
            except EterniaBackupError as exc:
                errors[t.name] = str(exc)
                log.info("cannot list target %r: %s", t.name, exc)  # callers report it (list, restore ...)
        if listings:
            self._record_inventory(self._inventories(listings))
            self.write_metrics()
        return listings, errors

    def list_backups(self) -> list[catalog.BackupEntry]:
        """Every backup on every target, merged by id, newest first."""
        listings, errors = self.listings()
        if errors and not listings:
            raise StorageError("; ".join(errors.values()))
        return catalog.merge(listings)

    def kept_only_as_base(self, listings: list[catalog.TargetListing]) -> set[str]:
        """Ids of backups that retention keeps only because a kept incremental is built on them (on some target)."""
        from .retention import only_as_base, plan_retention

        found: set[str] = set()
        now = datetime.now(timezone.utc)
        for listing in listings:
            ours = [c for c in listing.copies if c.manifest is None or c.manifest.environment == self.config.environment]
            plan = plan_retention(cleanup.retention_candidates(ours), self.config.retention, now, self.tz)
            found.update(i for i, reasons in plan.keep.items() if only_as_base(reasons))
        return found

    def find_backup(self, backup: str, *, allow_older: bool = False,
                    allow_partial_listing: bool = False) -> catalog.BackupCopy:
        """The best copy of ``backup``: a path, a URL, a backup id (or prefix), or ``latest``.

        When a target cannot be listed, ``latest`` is refused (the newest backup
        may be there) unless ``allow_partial_listing``; the copy found carries
        the unlisted targets in ``unlisted_targets``.
        """
        backup = os.fspath(backup)
        copy = catalog.copy_from_reference(backup, self._target_for_url)
        if copy is not None:
            return copy
        listings, errors = self.listings()
        if errors and not listings:
            raise StorageError("no target could be listed: " + "; ".join(errors.values()))
        entries = catalog.merge(listings)
        if backup == "latest":
            catalog.check_latest_is_knowable(entries, errors, allow_partial_listing)
            if errors:
                log.warning("using the newest backup on the targets that could be listed (not on %s)",
                            ", ".join(repr(n) for n in errors))
            copy = self.resolve_latest(entries, allow_older=allow_older)
        else:
            copy = catalog.find(entries, backup, unlisted=errors).best
        return dataclasses.replace(copy, unlisted_targets=dict(errors))

    def resolve_latest(self, entries: list[catalog.BackupEntry] | None = None, *,
                       allow_older: bool = False) -> catalog.BackupCopy:
        """What ``latest`` means, for the CLI and the API alike: the newest backup.

        If the newest backup is damaged, an error names it (never a silent older
        one). With ``allow_older``, the newest backup that fully verifies (its
        archive read and checked, so a flipped byte counts too) is used instead,
        with a warning naming what was skipped.
        """
        if entries is None:
            entries = self.list_backups()
        if not entries:
            raise BackupNotFoundError("there are no backups yet; make one with `eternia-backup create`")
        newest = entries[0]
        if not allow_older:
            if not newest.ok:
                raise LatestDamagedError(newest.backup_id, _problems(newest))
            return newest.best
        skipped = []
        for entry in entries:
            problem = _problems(entry) if not entry.ok else None
            if problem is None:
                report = verify.verify_copy(entry.best, self.registry, self.config.encryption)
                if report.ok:
                    if skipped:
                        log.warning("latest: using %s, the newest good backup (--allow-older); skipped: %s",
                                    entry.backup_id, "; ".join(skipped))
                    return entry.best
                problem = report.problem
            skipped.append(f"{entry.backup_id} ({problem})")
        raise IntegrityError("no intact backup: every listed backup is damaged (see `eternia-backup list`)")

    @_in_scratch
    def verify_report(self, backup: str, *, allow_older: bool = False, allow_partial_listing: bool = False,
                      progress: Progress = NO_PROGRESS) -> verify.VerifyReport:
        """Fully check one backup and report; a damaged newest backup asked for as ``latest`` is a failed report.

        The report's ``unlisted_targets`` names targets that could not be listed.
        """
        try:
            copy = self.find_backup(backup, allow_older=allow_older, allow_partial_listing=allow_partial_listing)
        except LatestDamagedError as exc:  # known damaged from the listing (as recorded): no new finding
            return verify.VerifyReport(exc.backup_id, "", False, str(exc), damaged=exc.backup_id)
        try:
            links = self.chain_of(copy)
        except IntegrityError as exc:  # a base missing or damaged: this backup cannot be restored
            return verify.VerifyReport(copy.backup_id, copy.url, False, str(exc), damaged=copy.backup_id)
        if links:
            report = verify.verify_chain(links, self.registry, self.config.encryption, progress)
        else:
            report = verify.verify_copy(copy, self.registry, self.config.encryption, progress)
        self._record_checked({report.damaged: report.problem or ""} if report.damaged else {},
                             [c.backup_id for c in links or [copy]] if report.ok else [])
        report.unlisted_targets = catalog.unlisted_dicts(copy.unlisted_targets)
        self.write_metrics()
        if not report.ok and backup == "latest" and not allow_older:
            report.problem += "; pass an explicit backup id, or --allow-older to use the newest good backup"
        return report

    def verify_backup(self, backup: str, *, allow_older: bool = False, allow_partial_listing: bool = False,
                      progress: Progress = NO_PROGRESS) -> verify.VerifyReport:
        """Fully check one backup; raises IntegrityError naming the backup and the problem."""
        report = self.verify_report(backup, allow_older=allow_older, allow_partial_listing=allow_partial_listing,
                                    progress=progress)
        if not report.ok:
            raise IntegrityError(report.problem)
        return report

    @_in_scratch
    def verify_all(self, *, progress: Progress = NO_PROGRESS) -> list[verify.VerifyReport]:
        """Check every copy of every backup; never raises for a damaged one."""
        listings, errors = self.listings()
        if errors:
            raise StorageError("cannot verify every backup: " + "; ".join(errors.values()))
        reports = [verify.verify_copy(c, self.registry, self.config.encryption, progress)
                   for e in catalog.merge(listings) for c in e.copies]
        self._record_checked({r.damaged: r.problem or "" for r in reports if r.damaged},
                             [r.backup_id for r in reports if r.ok])
        self.write_metrics()
        return reports

    def _record_checked(self, damaged: dict[str, str], intact: list[str]) -> None:
        """Remember what reading archives showed: damaged ones, and those that read back intact."""
        if not damaged and not intact:
            return
        try:
            self.state.record_checked(damaged=damaged, intact=intact)
        except OSError as exc:
            log.warning("could not record what reading the archives found in %s: %s", self.state.path, exc)

    @_in_scratch
    def restore_backup(self, backup: str, *, to: str | os.PathLike | None = None,
                       sources: str | list[str] | None = None, dry_run: bool = False,
                       confirm: Callable[[list[str]], bool] | None = None, allow_older: bool = False,
                       force: bool = False, keep_setid: bool = False, allow_partial_listing: bool = False,
                       progress: Progress = NO_PROGRESS, to_database: str | None = None,
                       include: str | list[str] | None = None,
                       exclude: str | list[str] | None = None) -> restore.RestoreResult:
        """Verify, stage and swap a backup into place (or into ``to``).

        ``latest`` is the newest backup; if it is damaged the restore fails unless
        ``allow_older`` (then the newest good one is used). ``force`` goes ahead
        although processes hold files open under an in-place destination, or the backup
        was made on this host from other paths than the config's (:mod:`.origin`).
        ``latest`` is refused while a target cannot be listed (the newest backup
        may be there) unless ``allow_partial_listing``. Setuid/setgid bits are stripped (one warning) unless ``keep_setid`` and
        the restore runs as root into the configured places. ``to_database`` restores
        the one selected database source into that database instead of its own.
        ``include``/``exclude`` (glob patterns over ``<source>/<path>``, with ``to``)
        restore only the matching part. Each of ``sources``, ``include`` and ``exclude`` is a
        list, or one string for one name or pattern.
        """
        sources, include, exclude = _names(sources, "sources"), _names(include, "include"), _names(exclude, "exclude")
        args = (backup, to, sources, dry_run, confirm, allow_older, force, keep_setid, allow_partial_listing, progress,
                to_database, include, exclude)
        if dry_run:
            return self._restore(*args)
        try:
            if self.lock.held:
                self.finish_interrupted_restore()
                return self._restore(*args)
            with self._acquire_lock("restore"):
                self.finish_interrupted_restore()
                return self._restore(*args)
        finally:
            self.write_metrics()

    def _restore(self, backup, to, sources, dry_run, confirm, allow_older, force, keep_setid,
                 allow_partial_listing, progress, to_database=None, include=None,
                 exclude=None) -> restore.RestoreResult:
        if to is not None and Path(to).exists() and not Path(to).is_dir():
            raise UsageError(f"--to {to} is a file, not a directory; give a directory to restore into "
                             "(it is made if missing); nothing was changed")
        copy = self.find_backup(backup, allow_older=allow_older, allow_partial_listing=allow_partial_listing)
        links = self.chain_of(copy)
        if to is None and to_database is None and copy.manifest is not None:
            self._check_origin(copy.manifest, sources, force)
        try:
            result = restore.restore_copy(
                copy, sources=self.sources, selected=sources, to=Path(to).absolute() if to is not None else None,
                dry_run=dry_run, registry=self.registry, pm=self.pm, confirm=confirm,
                encryption=self.config.encryption, journal_path=self.journal_path, force=force,
                keep_setid=keep_setid, progress=progress, links=links, to_database=to_database,
                include=include, exclude=exclude,
            )
        except IntegrityError as exc:  # found only by reading the archive (a flipped byte)
            from .encryption import DecryptionError

            if getattr(exc, "damaged_backup", None) and not isinstance(exc, DecryptionError):
                self._record_checked({exc.damaged_backup: str(exc)}, [])

            if backup == "latest" and not allow_older and not isinstance(exc, DecryptionError):  # a key is no damage
                raise LatestDamagedError(copy.backup_id, str(exc)) from exc
            raise
        result.unlisted_targets = catalog.unlisted_dicts(copy.unlisted_targets)
        self._record_leftovers({left["path"]: left["error"] for left in result.leftovers})
        return result

    def _made_elsewhere(self, manifest) -> bool:
        """Made on this host from other paths than this config's sources: another application's backup."""
        from .origin import moved_sources

        return bool(moved_sources(manifest, self.sources, [s.name for s in manifest.sources]))

    def _check_origin(self, manifest, selected: list[str] | None, force: bool) -> None:
        """An in-place restore of a backup read from other paths on this host: refused, or with
        ``force`` a warning (the application's state moved)."""
        from .origin import check_same_origin

        names = list(selected) if selected else [s.name for s in manifest.sources]
        try:
            check_same_origin(manifest, self.sources, names)
        except RestoreError as exc:
            if not force:
                raise
            log.warning("%s (going ahead: --force)", str(exc).rsplit(". Restore it elsewhere", 1)[0])

    @_in_scratch
    def list_members(self, backup: str, path: str | None = None, *, allow_partial_listing: bool = False,
                     progress: Progress = NO_PROGRESS) -> list[dict]:
        """What a backup holds (under ``path``, a ``<source>/...`` prefix), as restore would put it back.

        Each entry: ``path``, ``type`` (file, dir, symlink, hardlink), ``size``, ``mode`` (octal
        text), ``mtime`` (UTC ISO 8601) and ``link``. The archives are read (and checked) once;
        an incremental backup shows its whole state, from its chain.
        """
        from .streams import split_append, split_part

        copy = self.find_backup(backup, allow_partial_listing=allow_partial_listing)
        if copy.manifest is None or copy.problem:
            raise IntegrityError(f"{copy.describe()} is damaged: {copy.problem or 'no manifest'}")
        links = self.chain_of(copy) or [copy]
        identities = restore.check_links(links, self.config.encryption)
        prefix = (path or "").strip("/")
        rows: dict[str, dict] = {}

        def visit(source: str, rel: str, member, reader) -> None:
            part, appended = split_part(rel), split_append(rel)
            piece = part or appended
            name = f"{source}/{piece[0] if piece else rel}" if rel else source
            if prefix and name != prefix and not name.startswith(prefix + "/"):
                return
            mtime = datetime.fromtimestamp(member.mtime_ns / 1e9 if member.mtime_ns is not None else member.mtime,
                                           timezone.utc)
            if piece is not None and name in rows:  # a dump in parts, or a file and what was appended to it
                rows[name]["size"] += member.size
                if appended is not None:  # the file as it is after the append (the chain is read oldest first)
                    rows[name].update(mode=f"{member.mode & 0o7777:04o}", mtime=iso_utc(mtime))
                return
            rows[name] = {"path": name, "type": member.kind, "size": member.size,
                          "mode": f"{member.mode & 0o7777:04o}", "mtime": iso_utc(mtime),
                          "link": member.linkname or None}

        restore.read_backup(links, self.registry, identities, visit, progress=progress, phase="list")
        if prefix and not rows:
            raise BackupNotFoundError(f"backup {copy.backup_id} holds nothing under {prefix!r}; see "
                                      f"`eternia-backup ls {copy.backup_id}`")
        return [rows[k] for k in sorted(rows)]

    @_in_scratch
    def read_file(self, backup: str, path: str, out, *, allow_partial_listing: bool = False) -> int:
        """Write the file ``path`` (``<source>/...``) of a backup to the binary stream ``out``; its size.

        The file is staged in a private directory first, so nothing is written to ``out``
        unless the archives it came from matched their checksums.
        """
        import glob

        name = path.strip("/")
        if "/" not in name:
            raise UsageError(f"--stdout {path}: name a file as <source>/<path>, e.g. files/config.json")
        staging = scratch.make_dir("stdout")  # 0700, in <state dir>/tmp
        try:
            self.restore_backup(backup, to=staging / "r", sources=[name.split("/", 1)[0]],
                                include=[glob.escape(name)], allow_partial_listing=allow_partial_listing)
            staged = staging / "r" / name
            if staged.is_symlink() or not staged.is_file():
                raise BackupNotFoundError(f"backup {backup} has no file {name!r}; see `eternia-backup ls`")
            size = 0
            with open(staged, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    out.write(chunk)
                    size += len(chunk)
            out.flush()
            return size
        finally:
            with contextlib.suppress(OSError):  # a leftover goes with the next operation after this process
                remove_tree(staging)

    def chain_of(self, copy: catalog.BackupCopy) -> list[catalog.BackupCopy] | None:
        """The copies of an incremental backup's chain on its own target (full first, ``copy`` last); None for a full one.

        Raises IntegrityError naming a link that is missing or damaged there.
        """
        manifest = copy.manifest
        if manifest is None or copy.problem or not manifest.is_incremental:
            return None
        from .chains import chain_copies

        listing = catalog.list_target(copy.target, manifest.name, self.manifest_cache(copy.target))
        return chain_copies(copy, listing.copies)

    @property
    def journal_path(self) -> Path:
        return self.state.path.parent / f".{self.config.name}-{self.config.environment}.restore-journal.json"

    def finish_interrupted_restore(self) -> list[str]:
        """Finish a restore that a crash stopped half way (see :mod:`.journal`), and try once more to remove
        what earlier restores replaced and could not remove. One that still cannot be removed is a
        warning (and in ``status``), never a reason to stop a create, restore or drill."""
        from . import journal

        left: dict[str, str] = {}
        done = journal.finish(self.journal_path, self.registry, leftovers=left)
        gone = []
        for path in self.state.restore_leftovers():
            if path in left:
                continue
            if ".eternia-" not in Path(path).name or not os.path.lexists(path):  # only ever our own hidden trees
                gone.append(path)
                continue
            try:
                remove_tree(Path(path), keep_going=True)
            except OSError as exc:
                left[path] = why_not_removed(exc)
                log.warning("%s, the state an earlier restore replaced, still cannot be removed: %s; remove it by "
                            "hand", path, left[path])
            else:
                log.warning("removed %s, the state an earlier restore replaced", path)
                gone.append(path)
        self._record_leftovers(left, gone)
        return done

    def _record_leftovers(self, found: dict[str, str], gone: list[str] = ()) -> None:
        try:
            self.state.record_leftovers(found, gone)
        except OSError as exc:
            log.warning("could not record restore leftovers in %s: %s", self.state.path, exc)

    @_in_scratch
    def download_backup(self, url: str, *, to: str | os.PathLike | None = None,
                        progress: Progress = NO_PROGRESS) -> Path:
        """Copy a backup (archive, file index, manifest) into local storage, verified; returns the archive's path.

        An incremental backup comes with every backup of its chain, so the copy can be restored on its own.
        """
        copy = self.find_backup(url)
        if copy.manifest is None or copy.problem:
            raise IntegrityError(f"{copy.describe()} is damaged: {copy.problem}")
        dest = self._download_target(to)
        for link in self.chain_of(copy) or [copy]:
            self._download_one(link, dest, progress)
        manifest = copy.manifest
        return local_path_of(dest, manifest.archive.file) or Path(dest.file_url(manifest.archive.file))

    def _download_one(self, copy: catalog.BackupCopy, dest: Target, progress: Progress) -> None:
        manifest = copy.manifest
        files = [(manifest.archive.file, manifest.archive.size, manifest.archive.sha256)]
        if manifest.files_index is not None:
            files.append((manifest.files_index.file, manifest.files_index.size, manifest.files_index.sha256))
        for name, size, sha256 in files:
            writer = dest.open_write(name)
            progress.phase("download", size)
            try:
                with copy.target.open_read(name) as src:
                    hashing = verify.HashingReader(ProgressReader(src, progress))
                    while chunk := hashing.read(1024 * 1024):
                        writer.write(chunk)
                if hashing.size != size or hashing.sha.hexdigest() != sha256:
                    raise IntegrityError(f"{copy.describe()}: {name} does not match its manifest (size or "
                                         "sha256 differ); nothing was downloaded from it")
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        dest.write_bytes(manifest.filename, manifest.to_json())

    def _download_target(self, to) -> Target:
        if to is not None:
            return self._make_target("download", str(Path(to).absolute()), {})
        for t in self.targets:
            if isinstance(t, LocalPaths):
                return t
        raise StorageError("no local storage is configured to download into; set backup.storage_path or pass --to DIR")

    def cleanup(self, *, dry_run: bool = False, guard=None) -> cleanup.CleanupResult:
        """Apply retention on every target; a target whose listing fails is left untouched.

        Takes the host lock (not for a dry run), so a cleanup never runs beside a
        backup or restore of this storage: raises :class:`BackupInProgress` then.
        """
        if dry_run or self.lock.held:
            return self._cleanup(dry_run, guard)
        with self._acquire_lock("cleanup"):
            return self._cleanup(dry_run, guard)

    def _cleanup(self, dry_run: bool, guard) -> cleanup.CleanupResult:
        if not dry_run:
            call_lifecycle(self.pm, "eternia_cleanup_started", targets=[t.name for t in self.targets])
        result = cleanup.CleanupResult(dry_run, [
            cleanup.cleanup_target(t, name=self.config.name, environment=self.config.environment,
                                   policy=self.config.retention, tz=self.tz, dry_run=dry_run, guard=guard,
                                   cache=self.manifest_cache(t), foreign=self._made_elsewhere)
            for t in self.targets
        ])
        self._record_checked({i: p for t in result.targets for i, p in t.found_damaged.items()}, [])
        if not dry_run:
            self._record_inventory({t.target: t.inventory for t in result.targets if t.inventory is not None})
            self.write_metrics()
            call_lifecycle(self.pm, "eternia_cleanup_finished", result=result)
        return result

    def cleanup_old_backups(self) -> int:
        """The original API (README.md): apply retention, return how many backups were deleted.

        Raises StorageError (with ``.result``) if a target could not be cleaned.
        """
        result = self.cleanup()
        if not result.ok:
            err = StorageError("cleanup failed on " + "; ".join(f"target {k!r}: {v}" for k, v in result.errors.items()))
            err.result = result
            raise err
        return result.deleted_count


    # -- restore drills -------------------------------------------------------------

    @property
    def drill_scratch_path(self) -> Path:
        """The private (0700) directory a drill restores into, in the state directory; removed after
        every drill, and a leftover of a killed one by the next."""
        return self.state.path.parent / f".{self.config.name}-{self.config.environment}.drill"

    def drill(self, backup: str | None = None) -> DrillResult:
        """Restore a backup (default: ``drill.backup``, latest) into a scratch directory and check it.

        Never touches the live state or the storage (it only reads backups); records the
        outcome (``status``, metrics, the drill hooks) and returns it: a failed check is a
        result with ``ok`` false, not an exception. Takes the host lock like a restore:
        raises :class:`BackupInProgress` while a backup, restore or cleanup runs.
        """
        if self.lock.held:
            return self._drill(backup or self.config.drill.backup)
        with self._acquire_lock("drill"):
            self.finish_interrupted_restore()
            return self._drill(backup or self.config.drill.backup)

    def _drill(self, wanted: str) -> DrillResult:
        import time

        from . import drill as drill_mod

        started, t0 = datetime.now(timezone.utc), time.monotonic()
        scratch = self.drill_scratch_path
        backup_id, checks, error = wanted, [], None
        announced = False
        try:
            remove_tree(scratch)  # a drill killed before it cleaned up
            from .fsutil import make_private_dirs

            make_private_dirs(scratch)
            copy = self.find_backup(wanted)
            backup_id = copy.backup_id
            call_lifecycle(self.pm, "eternia_drill_started", backup_id=backup_id)
            announced = True
            log.info("drill %s: restoring into %s", backup_id, scratch)
            checks = drill_mod.run_checks(self, copy, scratch)
            restore_failed = [c for c in checks if c.name == "restore" and not c.ok]
            if restore_failed:
                error = restore_failed[0].detail
        except EterniaBackupError as exc:
            error = str(exc)
        finally:
            try:
                remove_tree(scratch)
            except OSError as exc:
                log.warning("drill: could not remove the scratch copy %s: %s; the next drill removes it",
                            scratch, exc)
        if not announced:
            call_lifecycle(self.pm, "eternia_drill_started", backup_id=backup_id)
        result = drill_mod.DrillResult(backup_id, started, time.monotonic() - t0, checks, error)
        try:
            self.state.update(lambda data: data.__setitem__("drill", result.to_state()))
        except OSError as exc:
            log.warning("could not record the drill in %s: %s", self.state.path, exc)
        self.write_metrics()
        if result.ok:
            log.info("drill %s: ok (%d checks) in %.1fs", backup_id, len(checks), result.duration)
        else:  # each failed check was logged as a warning already
            log.info("%s", result.describe_failure())
        call_lifecycle(self.pm, "eternia_drill_finished", result=result)
        return result

    def run_scheduled_drill(self, slot: datetime):
        """One scheduled drill: skipped (to be retried) while another run holds the lock."""
        from .locks import BackupInProgress
        from .scheduler import RunOutcome

        try:
            result = self.drill()
        except BackupInProgress as exc:
            return RunOutcome(slot, "skipped", str(exc))
        if result.ok:
            return RunOutcome(slot, "ok", f"drill of {result.backup_id}: {len(result.checks)} checks passed")
        return RunOutcome(slot, "failed", result.describe_failure())

    # -- scheduling ---------------------------------------------------------------

    def prepare_scheduled_runs(self) -> None:
        """Find a shared target that enforces conditional writes, for the lease."""
        from .lease import probe_conditional_writes

        self.lease_target = None
        for t in self.targets:
            if isinstance(t, LocalPaths):
                continue  # a lease is for targets shared by several hosts
            try:
                supported = probe_conditional_writes(t)
            except EterniaBackupError as exc:
                log.warning("target %r: could not test conditional writes (%s); using local locking only", t.name, exc)
                continue
            if supported:
                self.lease_target = t
                log.info("target %r enforces conditional writes: replicas sharing it take a lease per slot", t.name)
                return
            log.warning("target %r does not enforce conditional writes: replicas sharing it cannot take a lease; "
                        "falling back to local locking (run one scheduler per target)", t.name)

    def last_successful_slot(self) -> datetime | None:
        text = self.state.read().get("last_successful_slot")
        return datetime.fromisoformat(text) if text else None

    def newest_backup_time(self) -> datetime | None:
        for entry in self.list_backups():
            if entry.ok:
                return entry.created_at
        return None

    def run_scheduled(self, slot: datetime, *, cancel=None):
        """One scheduled run: lock, lease, one backup per slot, then retention."""
        from .lease import Lease
        from .locks import BackupInProgress
        from .scheduler import RunOutcome

        try:
            self._acquire_lock("scheduled backup")
        except BackupInProgress as exc:
            return RunOutcome(slot, "skipped", str(exc))
        except StateDirError as exc:  # nowhere to record the slot either; said, not a crash
            return RunOutcome(slot, "failed", str(exc))
        lease = None
        try:
            if self.lease_target is not None:
                lease = Lease(self.lease_target, f"{self.config.name}-{self.config.environment}",
                              self.config.schedule.lease_ttl_seconds)
                if not lease.acquire():
                    lease = None
                    return RunOutcome(slot, "skipped", "another replica holds the lease for this slot")
            newest = self.newest_backup_time()
            if newest is not None and newest >= slot:
                return RunOutcome(slot, "skipped", f"a backup for this slot already exists (made {newest.isoformat()})")
            guard = lease.check if lease else None
            result = self.create_backup(guard=guard, cancel=cancel)
            cleaned = self.cleanup(guard=guard)
            self.state.record_slot(slot, succeeded=True)
            message = f"{human_size(result.size)} at {result.location}; retention deleted {cleaned.deleted_count}"
            if result.warning_count:
                message += f"; made with {result.warning_count} warning(s), listed in its manifest"
            if not cleaned.ok:
                return RunOutcome(slot, "failed", message + "; retention failed: " + "; ".join(cleaned.errors.values()))
            return RunOutcome(slot, "ok", message)
        except EterniaBackupError as exc:
            self.state.record_slot(slot, succeeded=False)
            return RunOutcome(slot, "failed", str(exc))
        finally:
            if lease is not None:
                lease.release()
            self.lock.release()

    def start_scheduler(self, *, handle_signals: bool = False, grace: float | None = 30.0, **kwargs) -> None:
        """Start automated backups in a background thread; returns at once.

        It installs no signal handler: the application stops it from its own shutdown
        (FastAPI's lifespan, ``atexit``, a server hook; see docs/embedding.md) with
        :meth:`stop_scheduler`. ``handle_signals=True`` (from the main thread) is for a
        server that has no shutdown hook (wsgiref, a plain script): on SIGTERM or SIGINT
        the scheduler is stopped (a running backup gets ``grace`` seconds, then is
        abandoned), and then the handler that was there before runs: by default the
        process ends as the signal says, as it would have without the scheduler.
        """
        from .scheduler import Scheduler, SchedulerError

        with self._scheduler_lock:  # two threads starting at once must not make two schedulers
            if self._scheduler is not None and self._scheduler.running:
                raise SchedulerError("the scheduler is already running; stop it before starting it again")
            if handle_signals and threading.current_thread() is not threading.main_thread():
                raise SchedulerError("start_scheduler(handle_signals=True) must be called from the main thread "
                                     "(Python runs signal handlers there); otherwise call stop_scheduler() from "
                                     "the application's shutdown (docs/embedding.md)")
            self._start_metrics_server()
            try:
                self._scheduler = Scheduler(self, **kwargs)
                self._scheduler.start()
            except BaseException:
                self._stop_metrics_server()
                raise
            if handle_signals:
                self._handle_signals(grace)

    def _handle_signals(self, grace: float | None) -> None:
        import signal

        def handler(signum, frame):
            log.info("signal %d: stopping the scheduler (a running backup gets %ss)", signum, grace)
            previous = self._signal_handlers.get(signum, signal.SIG_DFL)
            self.stop_scheduler(timeout=grace)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:  # what the signal would have done: end the process
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._signal_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, handler)

    def stop_scheduler(self, timeout: float | None = 30.0) -> None:
        """Stop automated backups; a running backup gets ``timeout`` seconds, then is abandoned safely.

        Also closes the ``/metrics`` endpoint (``metrics.listen``). Safe to call more than once, and
        from any thread. Handlers installed by ``start_scheduler(handle_signals=True)`` are put back as
        they were (from the main thread).
        """
        try:
            if self._scheduler is not None:
                self._scheduler.stop(timeout)
        finally:
            self._stop_metrics_server()
        if self._signal_handlers and threading.current_thread() is threading.main_thread():
            import signal

            for signum, previous in self._signal_handlers.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self._signal_handlers.clear()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the ``/metrics`` endpoint listens on while the scheduler runs; None without one."""
        return self._metrics_server.address if self._metrics_server is not None else None

    def _start_metrics_server(self) -> None:
        """Serve ``/metrics`` on ``metrics.listen`` (a ConfigError when the address cannot be bound)."""
        if self.config.metrics_listen is None or self._metrics_server is not None:
            return
        from .metrics import MetricsServer

        server = MetricsServer(self.config.metrics_listen, self.metrics_collector())
        server.start()
        self._metrics_server = server

    def _stop_metrics_server(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.stop()

    @property
    def scheduler(self):
        return self._scheduler

    def __enter__(self) -> "BackupManager":
        self.start_scheduler()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_scheduler()

    def status(self) -> dict:
        """Last success/failure per target, next run, newest backup; ``overdue`` for alerting.

        ``unlisted_targets``: ``[{"target", "error"}]`` for targets that could not
        be listed (the newest backup may be there, so ``newest_backup`` is only
        the newest of the others); per target, ``orphans`` lists temporary files
        and unfinished uploads (``{"name", "kind", "age_seconds", "size",
        "writer", "due"}``, see :class:`cleanup.Orphan`). ``restore_leftovers``: ``[{"path", "error",
        "since"}]``, what restores replaced and could not remove (a person must).
        """
        from .schedule import next_slot, period, zone

        now = datetime.now(timezone.utc)
        tz, tz_name = zone(self.config.schedule.timezone)
        listings, errors = self.listings()  # records what the targets hold: read the state after it
        state = self.state.read()
        orphans, orphan_errors = self._orphans(listings)
        newest = next((e for e in catalog.merge(listings) if e.ok), None)
        limit = 2 * period(self.config.schedule.cron, tz, now)
        age = (now - newest.created_at) if newest else None
        scheduler_next = self._scheduler.next_run if self._scheduler and self._scheduler.running else None
        return {
            "enabled": self.config.enabled,
            "schedule": self.config.schedule.label,
            "timezone": tz_name,
            "next_run": iso_utc(scheduler_next or next_slot(self.config.schedule.cron, now, tz)),
            "newest_backup": None if newest is None else {
                "backup_id": newest.backup_id, "created_at": iso_utc(newest.created_at),
                "age_seconds": int(age.total_seconds()), "size": newest.manifest.archive.size,
                "warning_count": newest.manifest.warning_count,
                "copies": [c.target.name for c in newest.copies if c.ok],
            },
            # no schedule runs while disabled: nothing can be late (an outside cron has its own alarm)
            "overdue": self.config.enabled and (newest is None or age > limit),
            "interrupted_restore": _journal_description(self.journal_path),
            "restore_leftovers": [{"path": path, "error": left.get("error"), "since": left.get("since")}
                                  for path, left in (state.get("restore_leftovers") or {}).items()
                                  if os.path.lexists(path)],
            "overdue_after_seconds": int(limit.total_seconds()),
            "targets": {t.name: {**(state.get("targets") or {}).get(t.name, {}),
                                 "listing_error": errors.get(t.name),
                                 "orphans": [o.to_dict() for o in orphans.get(t.name, [])],
                                 "orphans_error": orphan_errors.get(t.name)}
                        for t in self.targets},
            "unlisted_targets": catalog.unlisted_dicts(errors),
            "drill": self._drill_status(state.get("drill"), tz, now),
        }

    def _drill_status(self, last, tz, now: datetime) -> dict:
        """The last drill (as recorded), the drill schedule, and whether a drill is overdue."""
        from .schedule import next_slot, period

        last = last if isinstance(last, dict) else {}
        cron = self.config.drill.schedule
        limit = 2 * period(cron, tz, now) if cron else None
        ran = last.get("last_run")
        overdue = False
        if limit is not None:
            try:
                overdue = ran is None or now - datetime.fromisoformat(ran.replace("Z", "+00:00")) > limit
            except (TypeError, ValueError):
                overdue = True
        scheduler = self._scheduler if self._scheduler and self._scheduler.running else None
        upcoming = getattr(scheduler, "next_drill", None) or (next_slot(cron, now, tz) if cron else None)
        return {
            "schedule": cron,
            "next_run": iso_utc(upcoming),
            "last_run": ran,
            "backup_id": last.get("backup_id"),
            "ok": last.get("ok"),
            "duration_seconds": last.get("duration_seconds"),
            "failed_checks": list(last.get("failed_checks") or []),
            "error": last.get("error"),
            "overdue": overdue,
            "overdue_after_seconds": int(limit.total_seconds()) if limit is not None else None,
        }

    def _orphans(self, listings) -> tuple[dict[str, list[cleanup.Orphan]], dict[str, str]]:
        """Orphans per listed target (an unlisted one is not asked again), and why uploads could not be listed."""
        grace = self.config.retention.incomplete_grace_hours * 3600
        found, errors = {}, {}
        for listing in listings:
            try:
                target = listing.target
                uploads = target.incomplete_uploads() if isinstance(target, UploadCleanup) else []
            except EterniaBackupError as exc:
                errors[listing.target.name] = f"unfinished uploads could not be listed: {exc}"
                uploads = []
            found[listing.target.name] = cleanup.find_orphans(listing, uploads, name=self.config.name,
                                                              grace_seconds=grace)
        return found, errors


def _problems(entry: catalog.BackupEntry) -> str:
    return "; ".join(c.problem for c in entry.copies if c.problem) or "damaged"


def _journal_description(path: Path) -> str | None:
    from . import journal

    try:
        return journal.describe(path)
    except EterniaBackupError as exc:
        return str(exc)


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
