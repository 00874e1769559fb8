"""Hook specifications: every hook a plugin can implement, and nothing else.

Plugins implement these with the :data:`eternia_backup.hookimpl` marker. Hooks
are always called with keyword arguments; an implementation may accept fewer
arguments than the specification lists. Argument names are public API.

There are two groups:

* **Registry hooks** (``eternia_register_*``) are called once when a plugin
  manager is built. Each receives a ``register`` callable and calls it for every
  provider the plugin offers. The built-in providers use exactly these hooks.
* **Lifecycle hooks** (``eternia_backup_*``, ``eternia_restore_*``,
  ``eternia_cleanup_*``) observe what the framework does. They run in the
  process doing the work; an exception raised by one is logged and does not
  change the outcome of the backup, restore or cleanup.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # for type checkers only, as pytest's hookspec does: no import cost, no cycle
    from .backup import BackupResult
    from .cleanup import CleanupResult
    from .config import BackupConfig
    from .drill import DrillResult
    from .providers import Archiver, Compression, Source, Target
    from .restore import RestoreResult

hookspec = pluggy.HookspecMarker("eternia_backup")


# -- registry hooks ---------------------------------------------------------


@hookspec
def eternia_register_sources(register: Callable[[type[Source]], None]) -> None:
    """Offer source types: the things whose state is backed up.

    :param register: call ``register(SourceClass)`` for each source type.
        ``SourceClass`` subclasses :class:`eternia_backup.api.Source`;
        its ``type_name`` class attribute is the ``type:`` used in YAML, and
        its ``options_model`` (a pydantic model) validates the rest of the
        source's YAML mapping. Registering a type name that another plugin
        already registered is a :class:`~eternia_backup.errors.PluginError`.
    """


@hookspec
def eternia_register_archivers(register: Callable[[type[Archiver]], None]) -> None:
    """Offer archive formats: how entries are packed into one byte stream.

    :param register: call ``register(ArchiverClass)``; ``ArchiverClass``
        subclasses :class:`eternia_backup.api.Archiver` and its
        ``format_name`` is the value of ``archive.format`` in YAML.
    """


@hookspec
def eternia_register_compressions(register: Callable[[type[Compression]], None]) -> None:
    """Offer compressions applied to the archive stream.

    :param register: call ``register(CompressionClass)``; the class subclasses
        :class:`eternia_backup.api.Compression` and its ``name`` is the
        value of ``archive.compression`` in YAML.
    """


@hookspec
def eternia_register_targets(register: Callable[[type[Target]], None]) -> None:
    """Offer storage targets for URL protocols.

    :param register: call ``register(TargetClass)``; the class subclasses
        :class:`eternia_backup.api.Target` and lists the URL protocols it
        serves in ``protocols`` (``("s3", "s3a")``). The protocol ``"*"``
        means "any protocol fsspec can open" and is used when no plugin
        registered the URL's protocol specifically, so a plugin can add
        per-protocol behaviour on top of the generic target.
    """


@hookspec(firstresult=True)
def eternia_cloud_backup_target(settings: dict[str, Any], environment: str) -> tuple[str, dict[str, Any]] | None:
    """Turn the ``cloud_backup:`` section of the config into a target, for its ``provider``.

    Called while the config is loaded, when ``cloud_backup.enabled`` is true;
    the first plugin that returns something wins. The built-in S3 plugin
    answers for ``provider: aws``.

    :param settings: the section's keys as validated by the config schema
        (``provider``, ``bucket``, ``region``, ``endpoint_url``, ``prefix``,
        ``storage_class``, ``server_side_encryption``, ``kms_key_id``,
        ``create_bucket``, ``connect_timeout``, ``read_timeout``,
        ``max_attempts``); ``None`` where not set.
    :param environment: the config's environment name; backups of each
        environment go to their own place (the S3 plugin appends it to the prefix).
    :return: ``(url, options)`` of the target named ``cloud`` (the URL must
        be served by a registered target), or ``None`` when the plugin does not
        serve ``settings["provider"]``. Raise
        :class:`~eternia_backup.errors.ConfigError` naming the
        ``backup.cloud_backup.<key>`` at fault for a bad value.
    """


# -- lifecycle hooks --------------------------------------------------------


@hookspec
def eternia_backup_started(backup_id: str, config: BackupConfig) -> None:
    """A backup is about to read its sources.

    :param backup_id: the id the backup will have (``20261127T020000Z-1a2b3c``).
    :param config: the validated :class:`~eternia_backup.config.BackupConfig`;
        read-only. Secret values in it are plain strings: never log or send
        them; ``config.as_dict()`` gives a copy with secrets masked.
    """


@hookspec
def eternia_backup_succeeded(result: BackupResult) -> None:
    """A backup was committed on every target.

    :param result: the :class:`~eternia_backup.backup.BackupResult`: backup id,
        manifest, the copies written (target name and URL), duration, size,
        and ``warnings`` (files skipped or changed while read; ``warning_count``).
    """


@hookspec
def eternia_backup_failed(backup_id: str, error: BaseException, result: BackupResult | None) -> None:
    """A backup failed on at least one target.

    :param backup_id: the id of the failed backup.
    :param error: the error that made it fail; its message names the target
        and the cause and holds no secret.
    :param result: the :class:`~eternia_backup.backup.BackupResult` with the
        copies that did succeed (possibly none), or ``None`` when the backup
        failed before anything was written.
    """


@hookspec
def eternia_restore_started(backup_id: str, sources: list[str], destination: Path | None, dry_run: bool) -> None:
    """A restore is about to stage and swap state (also for a dry run, after the archive was checked).

    The archive's size matched its manifest; its sha256 is checked while it is
    staged, and nothing live changes unless it matches.

    :param backup_id: the backup being restored.
    :param sources: names of the sources being restored.
    :param destination: the ``--to`` directory, or ``None`` for the
        configured places.
    :param dry_run: true when nothing will be changed.
    """


@hookspec
def eternia_restore_finished(backup_id: str, error: BaseException | None, result: RestoreResult | None) -> None:
    """A restore ended.

    :param backup_id: the backup that was restored.
    :param error: ``None`` on success, else the exception that stopped it
        (the current state was left as it was).
    :param result: the :class:`~eternia_backup.restore.RestoreResult`, or
        ``None`` when the restore failed before staging.
    """


@hookspec
def eternia_cleanup_started(targets: list[str]) -> None:
    """Retention is about to run (not called for a dry run).

    :param targets: names of the targets it will run on.
    """


@hookspec
def eternia_cleanup_finished(result: CleanupResult) -> None:
    """Retention ran on every target.

    :param result: the :class:`~eternia_backup.retention.CleanupResult`: per
        target what was deleted, kept (and why) and any listing error.
    """


@hookspec
def eternia_drill_started(backup_id: str) -> None:
    """A restore drill is about to restore a backup into a scratch directory.

    :param backup_id: the backup the drill restores.
    """


@hookspec
def eternia_drill_finished(result: DrillResult) -> None:
    """A restore drill ended; the scratch copy is already removed.

    :param result: the :class:`~eternia_backup.drill.DrillResult`: backup id,
        start time, duration, each check (source, name, ok, detail), the error
        that stopped the drill if any, and ``ok``.
    """
