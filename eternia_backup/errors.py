"""The exception hierarchy.

Every error the framework raises on purpose is an :class:`EterniaBackupError`;
the CLI prints those as one line without a traceback. Messages say what is wrong
and what to do, and never contain a secret.
"""

from __future__ import annotations

import signal

# Exit statuses of the CLI, documented in docs/json.md and README.md. 3 and 11
# follow restic, whose codes operators already script against.
EXIT_OK = 0  #: done
EXIT_FAILED = 1  #: an operation failed
EXIT_USAGE = 2  #: a usage or configuration error; nothing was done
#: the backup was made, but some files could not be read or changed while read; or the restore
#: was made, but what it replaced could not be removed completely
EXIT_WARNINGS = 3
EXIT_LOCKED = 11  #: skipped: another run holds the lock (create, restore, cleanup)
EXIT_INTERRUPTED = 130  #: Ctrl-C / SIGINT (128 + 2); the message says what, if anything, was committed
EXIT_TERMINATED = 143  #: SIGTERM (128 + 15: systemd, Kubernetes, docker stop), handled as Ctrl-C


class EterniaBackupError(Exception):
    """Base of every error the framework raises on purpose."""

    #: CLI exit status for this kind of error.
    exit_code = EXIT_FAILED
    #: A stable name for scripts (``--json`` prints it as ``error.code``).
    code = "failed"


class ConfigError(EterniaBackupError, ValueError):
    """The configuration is invalid; raised before any I/O."""

    exit_code = EXIT_USAGE
    code = "config"


class PluginError(EterniaBackupError):
    """A plugin could not be loaded, or implements a hook that does not exist."""

    exit_code = EXIT_USAGE
    code = "plugin"


class SourceError(EterniaBackupError):
    """A source could not produce or put back its state."""

    code = "source"


class UnreadableFileError(SourceError):
    """A file of a source could not be opened (permission denied); the source decides whether that is fatal."""


class ArchiveError(EterniaBackupError):
    """An archive could not be written or read."""

    code = "archive"


class StorageError(EterniaBackupError, OSError):
    """A storage target failed (missing, unreachable, denied, full)."""

    code = "storage"


class StateDirError(StorageError):
    """The state directory (lock, last-run record, temporary files) cannot be made or written."""


class BackupNotFoundError(StorageError, FileNotFoundError):
    """No backup matches what was asked for."""

    code = "not_found"


class IntegrityError(EterniaBackupError):
    """A backup does not match its manifest (size, checksum, contents)."""

    code = "integrity"


class LatestDamagedError(IntegrityError):
    """``latest`` was asked for and the newest backup is damaged (``backup_id`` names it)."""

    def __init__(self, backup_id: str, problem: str):
        super().__init__(f"the newest backup {backup_id} is damaged ({problem}); nothing was changed. Pass an "
                         "explicit backup id, or --allow-older (allow_older=True) to use the newest good backup")
        self.backup_id = backup_id


class UnsafeArchiveError(IntegrityError):
    """An archive member would write outside the destination, or is not allowed."""

    code = "unsafe_archive"


class UsageError(EterniaBackupError, ValueError):
    """A call names something that does not exist (a source, an option); nothing was done."""

    exit_code = EXIT_USAGE
    code = "usage"


class RestoreError(EterniaBackupError):
    """A restore could not be completed; the current state was left as it was."""

    code = "restore"


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal, with what is known: which one, and where a backup was committed.

    A KeyboardInterrupt, so whatever cleans up after Ctrl-C (temporary files,
    uploads) does so here too, and an application catching KeyboardInterrupt
    still does. The CLI raises it on SIGTERM; a backup interrupted after it was
    committed to some targets raises it with ``result`` (copies and failures).
    """

    def __init__(self, message: str, signum: int = signal.SIGINT, result=None):
        super().__init__(message)
        self.signum = signum
        self.result = result

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process ended by the signal

    @staticmethod
    def reason(exc: BaseException) -> str:
        """What stopped a command: "terminated by SIGTERM", or "interrupted" (Ctrl-C)."""
        return "terminated by SIGTERM" if getattr(exc, "signum", None) == signal.SIGTERM else "interrupted"


def raise_interrupted(signum: int, frame) -> None:
    """The CLI's SIGTERM handler: the command stops as on Ctrl-C (a restore's swaps hold it back)."""
    raise Interrupted("terminated by SIGTERM; nothing was committed", signum)


class LeftoverError(RestoreError):
    """A restore is complete, but what it replaced could not be removed; ``leftovers`` is ``{path: why}``."""

    def __init__(self, message: str, leftovers: dict[str, str]):
        super().__init__(message)
        self.leftovers = leftovers


class InterruptedAfterRestore(Interrupted):
    """Ctrl-C (or the CLI's SIGTERM) once the restored state was live: the message says so, and what is
    left to remove.

    A KeyboardInterrupt still (a caller's Ctrl-C handling keeps working); the CLI prints its message
    instead of "nothing was committed"."""


class BackupFailedError(EterniaBackupError):
    """A backup failed on at least one target.

    ``result`` holds what did succeed, so callers can see which copies exist.
    """

    code = "backup_failed"

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
