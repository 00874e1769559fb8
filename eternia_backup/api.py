"""The plugin API: everything a plugin may use, and the only module it should import.

A plugin implements hooks (:mod:`eternia_backup.hookspecs`) marked with
:data:`hookimpl` and registers provider classes that subclass the base classes
here. Names in ``__all__`` are the stable API (see docs/plugins.md); every other
module of ``eternia_backup`` is private and may change in any release. The
built-in providers (:mod:`eternia_backup.builtin`) import nothing else either.

Base classes
    :class:`Source` (with :class:`SourceOptions`), :class:`RestorePlan`,
    :class:`Archiver`, :class:`Compression`, :class:`Target`.
What they exchange
    :class:`EntryWriter`, :class:`ArchiveReader`, :class:`Member`,
    :class:`AtomicWrite`, :class:`StoredFile`, :class:`IncompleteUpload`.
Optional target interfaces (detected with ``isinstance``)
    :class:`LocalPaths`, :class:`ConditionalWrites`, :class:`UploadCleanup`.
Errors
    :class:`EterniaBackupError` and its subclasses.
Helpers
    Running a child process the scheduler can cancel (:func:`run_process`,
    :class:`CommandOutput` for a dump archived as it is produced,
    :func:`child_env`, :func:`check_cancelled`), secret masking (:func:`remember_secret`,
    :func:`redact_text`), atomic staging (:class:`DirectorySwapPlan`,
    :func:`sibling`, :func:`remove_tree`, :func:`remove_stale_siblings`,
    :func:`fsync_dir`, :func:`make_private_dirs`), a storage directory that must not be made
    under an unmounted fstab mount point (:func:`unmounted_mount_point`), private temporary space in the
    state directory (:func:`scratch_dir`, :func:`scratch_file`), the temporary-name convention
    (:func:`temp_name`, :func:`parse_temp_name`), extended attributes
    (:func:`read_xattrs`, :func:`xattr_namespaces_kept`), tar header blocks as
    ``tarfile`` writes them, built fast (the module :mod:`tarheaders`).
"""

from __future__ import annotations

from typing import Callable

from . import __version__, hookimpl, tarheaders
from .errors import (
    ArchiveError,
    BackupNotFoundError,
    ConfigError,
    EterniaBackupError,
    IntegrityError,
    PluginError,
    RestoreError,
    SourceError,
    StorageError,
    UnreadableFileError,
)
from .fsutil import (
    describe_os_error,
    fsync_dir,
    make_private_dirs,
    read_xattrs,
    remove_stale_siblings,
    remove_tree,
    sibling,
    xattr_namespaces_kept,
)
from .drill import DrillCheck, sql_result_true
from .mounts import unmounted_mount_point
from .plans import DirectorySwapPlan
from .process import Cancelled, CommandOutput, check_cancelled, child_env, stderr_tail
from .process import run as run_process
from .providers import (
    ArchiveReader,
    Archiver,
    AtomicWrite,
    Compression,
    ConditionalWrites,
    EntryWriter,
    IncompleteUpload,
    LocalPaths,
    Member,
    RestorePlan,
    Source,
    SourceOptions,
    SourceWarnings,
    StoredFile,
    Target,
    UploadCleanup,
    local_path_of,
)
from .redact import RedactingFilter, redact_text
from .sizes import human_size
from .scratch import make_dir as scratch_dir
from .scratch import temporary_file as scratch_file
from .redact import remember as remember_secret
from .storage import parse_temp_name, split_protocol, temp_name

#: The ``register`` callable a registry hook receives: ``register(ProviderClass)``.
Register = Callable[[type], None]

__all__ = [
    # hooks
    "__version__", "hookimpl", "Register",
    # providers
    "Source", "SourceOptions", "RestorePlan", "Archiver", "Compression", "Target",
    "EntryWriter", "SourceWarnings", "ArchiveReader", "Member",
    "AtomicWrite", "StoredFile", "IncompleteUpload",
    "LocalPaths", "ConditionalWrites", "UploadCleanup", "local_path_of", "DrillCheck", "sql_result_true",
    # errors
    "EterniaBackupError", "ConfigError", "PluginError", "SourceError", "UnreadableFileError",
    "ArchiveError", "StorageError", "BackupNotFoundError", "IntegrityError", "RestoreError", "Cancelled",
    # helpers
    "run_process", "CommandOutput", "check_cancelled", "child_env", "stderr_tail", "remember_secret", "redact_text", "RedactingFilter", "human_size", "describe_os_error",
    "DirectorySwapPlan", "sibling", "remove_tree", "remove_stale_siblings", "fsync_dir", "make_private_dirs",
    "temp_name", "parse_temp_name", "split_protocol", "read_xattrs", "xattr_namespaces_kept",
    "scratch_dir", "scratch_file", "tarheaders", "unmounted_mount_point",
]
