"""eternia-backup: pluggable backup and recovery for application state.

``from eternia_backup import backup_manager`` gives a manager configured lazily
from the config file (``$ETERNIA_BACKUP_CONFIG`` or ``./eternia-backup.yaml``).
Plugins import everything they use from :mod:`eternia_backup.api` (hookimpl,
the provider base classes, errors, helpers); the other modules are private.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("eternia_backup")

from . import redact as _redact  # noqa: E402

# Secrets are masked in the library's log records for every application, not
# only under the CLI (which adds its own handler with the same filter).
_redact.install_log_guard()

from .errors import (  # noqa: E402
    BackupFailedError,
    ConfigError,
    EterniaBackupError,
    IntegrityError,
    PluginError,
    RestoreError,
    SourceError,
    StorageError,
)


def __getattr__(name: str):
    # Imported lazily so that `import eternia_backup` in a plugin stays cheap
    # and never reads a config file.
    if name in ("BackupManager", "backup_manager"):
        from . import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'eternia_backup' has no attribute {name!r}")


__all__ = [
    "__version__", "hookimpl", "BackupManager", "backup_manager",
    "EterniaBackupError", "ConfigError", "PluginError", "SourceError", "StorageError",
    "IntegrityError", "RestoreError", "BackupFailedError",
]
