"""Base classes for the providers that plugins register.

A plugin subclasses one of these and registers the class through a registry hook
(see :mod:`eternia_backup.hookspecs`). The built-ins in
:mod:`eternia_backup.builtin` are complete examples.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from pathlib import Path
from typing import IO, Any, BinaryIO, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field


#: seconds a hook command may run unless the config says (eternia_backup.hooks.DEFAULT_TIMEOUT)
HOOK_TIMEOUT = 300.0


class SourceOptions(BaseModel):
    """Base for a source's options model: unknown keys are errors.

    ``before`` and ``after`` are shell commands run around the source's backup,
    to quiesce the application for a consistent snapshot; ``after`` runs even
    when the backup of the source failed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    before: str | None = Field(None, description="A shell command run before the source is backed up; "
                               "a failure fails the backup.", examples=["systemctl stop myapp-worker"])
    after: str | None = Field(None, description="A shell command run after the source was backed up, "
                              "even when that failed.", examples=["systemctl start myapp-worker"])
    hook_timeout: float = Field(HOOK_TIMEOUT, gt=0, description="Seconds the before and after commands may each run; "
                                "one that runs longer is stopped and fails the backup.", examples=[60])


# -- what sources write into and archivers read back -------------------------

_log = logging.getLogger("eternia_backup.source")


class SourceWarnings:
    """What one source could not archive faithfully: kept for the manifest, logged as it happens.

    Only the first ``cap`` are kept (and logged) so that a tree of a million
    unreadable files does not make a million-line manifest; ``count`` is the total.
    """

    cap = 100

    def __init__(self, source: str):
        self.source = source
        self.items: list[dict[str, str]] = []
        self.count = 0

    def add(self, relpath: str, problem: str) -> None:
        """Count one warning; keep and log it while fewer than ``cap`` were."""
        self.count += 1
        if self.count <= self.cap:
            self.items.append({"path": relpath, "problem": problem})
            _log.warning("source %r: %s: %s", self.source, relpath or ".", problem)
        elif self.count == self.cap + 1:
            _log.warning("source %r: more than %d warnings; only their number is kept", self.source, self.cap)


class EntryWriter(abc.ABC):
    """What a source writes its entries into during a backup.

    Paths are POSIX paths relative to the source's own root; the framework puts
    them under ``<source name>/`` in the archive. Sizes and counts are tracked
    for the manifest.
    """

    #: True when ``add_directory`` and ``add_symlink`` also take ``mtime_ns=``
    #: (exact mtime) and ``add_directory`` takes ``xattrs=`` ({name: bytes}).
    exact_metadata = False

    @abc.abstractmethod
    def add_directory(self, relpath: str, *, mode: int, mtime: float, uid: int = 0, gid: int = 0) -> None:
        """Add a directory entry with its permission bits, mtime and owner."""

    @abc.abstractmethod
    def add_file(self, relpath: str, path: Path, *, stat=None) -> None:
        """Add a regular file from disk (read as it is streamed).

        A file that vanished is skipped and one that changed while read is
        archived as read, each with a :meth:`warn`; a permission error raises
        :class:`~eternia_backup.errors.UnreadableFileError`.
        """

    @abc.abstractmethod
    def add_stream(self, relpath: str, stream: BinaryIO, size: int | None, *, mode: int = 0o600,
                   mtime: float) -> None:
        """Add ``size`` bytes read from ``stream``.

        A source may pass ``size=None`` for a stream of unknown length (a dump
        command's stdout, see :class:`~eternia_backup.api.CommandOutput`): the
        framework archives it as it is read, in parts of 16 MiB held in memory
        (:mod:`eternia_backup.streams`), and a restore joins them; no temporary
        file is needed. Archivers always receive a size.
        """

    @abc.abstractmethod
    def add_symlink(self, relpath: str, target: str, *, mtime: float) -> None:
        """Add a symbolic link pointing at ``target`` (never followed)."""

    @property
    def warnings(self) -> SourceWarnings:
        """This source's warnings; archivers may set ``self.warnings`` to name the source."""
        if "_warnings" not in self.__dict__:
            self.__dict__["_warnings"] = SourceWarnings(getattr(self, "source_name", "?"))
        return self.__dict__["_warnings"]

    @warnings.setter
    def warnings(self, value: SourceWarnings) -> None:
        self.__dict__["_warnings"] = value

    def warn(self, relpath: str, problem: str) -> None:
        """Record that ``relpath`` was skipped or archived imperfectly; the backup goes on."""
        self.warnings.add(relpath, problem)


@dataclasses.dataclass(frozen=True)
class Member:
    """One entry read back from an archive."""

    name: str  # POSIX path inside the archive, as stored
    kind: str  # "file", "dir", "symlink", "hardlink", or "other:<what>"
    size: int
    mode: int  # permission bits including setuid/setgid/sticky
    mtime: float
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    mtime_ns: int | None = None  # exact, when the archive has it (pax mtime)
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)  # name -> value


class ArchiveReader(abc.ABC):
    """Iterates over an archive's members; ``open_member`` reads the current one."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Member]:
        """The archive's members, in archive order."""

    @abc.abstractmethod
    def open_member(self, member: Member) -> BinaryIO:
        """A reader of the current member's bytes (only during iteration, before the next member)."""
# -- providers -------------------------------------------------------------


class Source(abc.ABC):
    """A kind of application state: knows how to back it up and put it back.

    Subclasses set ``type_name`` (YAML ``type:``) and ``options_model``.
    """

    type_name: ClassVar[str]
    options_model: ClassVar[type[SourceOptions]] = SourceOptions
    #: The :class:`RestorePlan` classes this source's ``restore_plan`` returns:
    #: the restore journal finds a plan's ``resume`` here after a crash.
    restore_plan_types: ClassVar[tuple[type["RestorePlan"], ...]] = ()
    #: True when an incremental backup may archive only what changed in this source.
    #: Such a source adds its entries in path order (a directory, then its children
    #: sorted by name) and passes ``stat=`` (an ``os.lstat`` result) to ``add_file``:
    #: the framework compares size, mtime_ns, ctime_ns, inode and mode with the
    #: parent backup's file index and skips unchanged files. Other sources (dumps)
    #: are archived whole in every backup.
    supports_increments: ClassVar[bool] = False
    #: True when ``restore_plan(None, database=NAME)`` restores into another database
    #: than the configured one (``restore --source S --to-database NAME``), creating it
    #: if missing; the plan leaves the configured database alone.
    restores_to_database: ClassVar[bool] = False

    #: The framework's own storage on this machine (local targets' directories, the
    #: state directory with its lock, journal and status files), as absolute paths.
    #: The manager sets it from the configuration; a source that reads a tree must
    #: leave these out, and a restore must not replace them.
    storage_paths: tuple[Path, ...] = ()

    def __init__(self, name: str, options: SourceOptions, base_dir: Path):
        self.name = name
        self.options = options
        self.base_dir = base_dir

    def notes(self) -> list[str]:
        """Advice about this source for ``config check`` (one line each); may read the disk."""
        return []

    #: The keys of ``backup.drill.checks.<source>`` this source type understands beside
    #: ``command`` and ``timeout`` (which every source has): ``files`` (the framework's
    #: entry count and sampled hashes, for sources restored as a tree) and the keys its
    #: :meth:`drill` checks (``integrity_check``, ``sql`` ...). Others are config errors.
    #: ``sql_by_database`` (not a key): ``sql`` may also be a mapping of database names to
    #: queries (``checks.sql_by_database``), for a source of several databases.
    drill_keys: ClassVar[tuple[str, ...]] = ()

    def drill(self, restored: Path, checks) -> list:
        """Check this source's restored copy in a restore drill; one ``DrillCheck`` per check.

        ``restored`` is ``<scratch>/<source name>``: the source's entries as the archive
        holds them (a database's file or dump files), in a private scratch directory the
        framework removes afterwards. ``checks`` is the config's ``DrillChecks``
        (``sql``, ``integrity_check``, ``timeout`` ...). A check that fails is a
        ``DrillCheck(source, name, ok=False, detail=why)``, not an exception.
        """
        return []

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source; never a secret."""
        return {"type": self.type_name, "name": self.name}

    def check(self) -> None:
        """Fail with :class:`SourceError` if the source cannot be read now."""

    @abc.abstractmethod
    def backup(self, writer: EntryWriter) -> None:
        """Write the source's current state into ``writer``, consistently."""

    def estimate_size(self) -> int | None:
        """About how many bytes ``backup`` will write, cheaply, for a progress bar; None if unknown."""
        return None

    def default_destination(self) -> Path | None:
        """Where a restore without ``--to`` puts this source, or None if it pipes."""
        return None

    @abc.abstractmethod
    def restore_plan(self, destination: Path | None) -> "RestorePlan":
        """A plan that stages this source's entries and then installs them."""


class RestorePlan(abc.ABC):
    """Stages one source's entries, then installs them all-or-nothing.

    The framework calls ``prepare`` (create ``staging_dir``), extracts the
    source's entries into ``staging_dir`` (relative paths), then, once every
    source is staged and checked, ``commit`` on each plan (reversible plans
    first); on a failure it calls ``rollback`` on the committed ones, and in
    the end ``discard``, which removes staging and what ``commit`` kept.

    **Crash safety.** Just before the first ``commit`` the framework writes a
    restore journal holding every plan's :meth:`journal_entry`. If the process
    dies while committing, the next run looks the plan class up again through
    the registry (the source's type and :attr:`Source.restore_plan_types`) and
    calls the class method :meth:`resume` with that entry, so every source ends
    with the restored state. A plan whose ``journal_entry`` is ``None`` cannot
    be finished after a crash; the next run says so.
    """

    staging_dir: Path
    description: str = ""
    #: True when ``commit`` cannot be undone (a database restored by a tool).
    #: Such plans are committed last, after every reversible one succeeded.
    irreversible: ClassVar[bool] = False

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create ``staging_dir``; raise :class:`~eternia_backup.errors.RestoreError` if the destination is unusable."""

    def changes(self) -> list[str]:
        """Human-readable lines saying what ``commit`` would change (for dry runs)."""
        return [self.description]

    def replaces_existing(self) -> bool:
        """True when ``commit`` replaces state that exists now (restore asks before that)."""
        return False

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the staged state live; keep what it replaced until ``discard``."""

    def rollback(self) -> None:
        """Undo ``commit`` (only called after it returned)."""

    def discard(self) -> None:
        """Remove staging and what ``commit`` kept for rollback; safe to call more than once."""

    def journal_entry(self) -> dict[str, Any] | None:
        """JSON-able data with which :meth:`resume` finishes ``commit`` after a crash, or None.

        Include ``"destination"`` (shown by ``status``). Called after staging,
        before the first commit of the restore.
        """
        return None

    @classmethod
    def resume(cls, entry: dict[str, Any]) -> str:
        """Finish the commit described by ``entry`` (from :meth:`journal_entry`) after a crash.

        Must be safe to call when the commit had not started, had half
        happened, or had completed. Returns one line saying what was done.
        """
        return f"{entry.get('destination', '?')}: cannot be finished automatically; restore it again"


class Archiver(abc.ABC):
    """Packs entries into one byte stream and reads them back."""

    format_name: ClassVar[str]
    extension: ClassVar[str]

    @abc.abstractmethod
    def writer(self, fileobj: IO[bytes]):
        """A context manager giving an object with ``section(source_name)``
        returning an :class:`EntryWriter` for that source."""

    @abc.abstractmethod
    def reader(self, fileobj: IO[bytes]) -> ArchiveReader:
        """An :class:`ArchiveReader` over the (decompressed, decrypted) stream ``fileobj``."""
class Compression(abc.ABC):
    """A byte-stream compression (``zstd``, ``gzip``, ``xz``, ``none``)."""

    name: ClassVar[str]
    extension: ClassVar[str]  # ".zst"; "" for none
    levels: ClassVar[tuple[int, int] | None] = None  # allowed range, or None

    @abc.abstractmethod
    def compressor(self, fileobj: IO[bytes], level: int | None) -> IO[bytes]:
        """A writable stream; closing it flushes but does not close ``fileobj``."""

    @abc.abstractmethod
    def decompressor(self, fileobj: IO[bytes]) -> IO[bytes]:
        """A readable stream of the decompressed bytes."""


class AtomicWrite(abc.ABC):
    """A file being written to a target: visible under its name only on commit."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int:
        """Write bytes (archives arrive in chunks of about 1 MiB)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the file visible under its final name, complete; raise if that failed."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything written; safe to call more than once, and after a failed commit."""


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One file directly under a target, as its listing says."""

    name: str
    size: int | None
    mtime: float | None  # POSIX seconds, when the store says
    #: the store's entity tag, when it has one: a listed manifest with the same
    #: name, size and ETag as one read before is not read again
    etag: str | None = None


@dataclasses.dataclass(frozen=True)
class IncompleteUpload:
    """An upload that was started and never committed (e.g. an S3 multipart upload)."""

    name: str
    started: float | None  # POSIX seconds
    handle: Any = None  # what the target needs to abort it
    size: int | None = None  # bytes uploaded so far, when the store says


class Target(abc.ABC):
    """A place that stores backups: a flat directory named by a URL.

    The required core is :meth:`list`, :meth:`open_read`, :meth:`open_write`
    (atomic), :meth:`size`, :meth:`delete` and :meth:`file_url`. Optional
    abilities are separate interfaces a target class also inherits, and the
    framework detects them with ``isinstance``: :class:`LocalPaths`,
    :class:`ConditionalWrites`, :class:`UploadCleanup`.

    **Temporary names.** A file being written may appear in :meth:`list` only
    under a temporary name made by :func:`eternia_backup.api.temp_name`
    (``.<name>.<host>.<pid>.tmp``): cleanup recognises such names, and removes
    one whose writer is dead (same host) or that is older than the grace period.
    Errors are :class:`~eternia_backup.errors.StorageError` (or
    :class:`~eternia_backup.errors.BackupNotFoundError` for a missing file) with
    a message naming the target and what to check, never a credential.
    """

    #: URL protocols served (``("s3", "s3a")``); ``"*"`` means any protocol fsspec opens.
    protocols: ClassVar[tuple[str, ...]]
    #: How many small files (manifests) the framework may read from this target
    #: at once when listing it. 1 for a store that holds one connection per
    #: client (ftp:// servers limit them); a store that answers requests in
    #: parallel (S3) saves most of a listing's time with more.
    read_concurrency: ClassVar[int] = 1

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        self.name = name
        self.url = url
        self.options = options

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for messages."""
        from .redact import redact_text

        return redact_text(self.url)

    def error_for(self, action: str, exc: BaseException, filename: str | None = None):
        """A StorageError (BackupNotFoundError for a missing file) for a failed ``action``."""
        from .errors import BackupNotFoundError, StorageError
        from .fsutil import describe_os_error

        where = self.file_url(filename) if filename else self.display_url
        cls = BackupNotFoundError if isinstance(exc, FileNotFoundError) else StorageError
        return cls(f"target {self.name!r}: cannot {action} {where}: {describe_os_error(exc)}")

    def write_bytes(self, filename: str, data: bytes) -> None:
        """Write a small file atomically (the manifest); failures become StorageError."""
        from .errors import EterniaBackupError

        writer = self.open_write(filename)
        try:
            writer.write(data)
            writer.commit()
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception) and not isinstance(exc, EterniaBackupError):
                raise self.error_for("write", exc, filename) from exc
            raise

    def read_bytes(self, filename: str) -> bytes:
        """A small file's bytes (a manifest); failures become StorageError."""
        from .errors import EterniaBackupError

        try:
            with self.open_read(filename) as f:
                return f.read()
        except EterniaBackupError:
            raise
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def check(self) -> None:
        """Fail with StorageError if the target cannot be written now (creates its directory)."""

    @abc.abstractmethod
    def list(self) -> list[StoredFile]:
        """Every file directly under the target; [] when its directory does not exist yet.

        Raises StorageError when the store cannot be listed (a missing bucket is
        a failure, not an empty listing).
        """

    @abc.abstractmethod
    def open_write(self, filename: str) -> AtomicWrite:
        """Start writing ``filename``; nothing is visible under that name before ``commit``."""

    @abc.abstractmethod
    def open_read(self, filename: str) -> BinaryIO:
        """A readable binary file object; BackupNotFoundError when it does not exist."""

    @abc.abstractmethod
    def size(self, filename: str) -> int:
        """The stored size in bytes, as the store reports it now."""

    @abc.abstractmethod
    def delete(self, filename: str) -> None:
        """Delete one file; return only when the store confirmed it (or it was absent).

        Raise StorageError saying why otherwise: cleanup counts a deletion only
        when this returned, so a store that answers "ok" for a refused delete
        would make retention report deletions that never happened.
        """

    @abc.abstractmethod
    def file_url(self, filename: str) -> str:
        """Where the file is, for people: a path or URL (no password)."""


class LocalPaths(abc.ABC):
    """Optional target interface: the target is a directory on this machine.

    The framework then leaves that directory out of directory sources, carries
    it over when a restore replaces a tree holding it, prefers this copy when
    reading, and reports its path.
    """

    @property
    @abc.abstractmethod
    def root_path(self) -> Path:
        """The absolute directory holding the target's files."""

    def local_path(self, filename: str) -> Path:
        """The path of ``filename`` on this machine."""
        return self.root_path / filename


class ConditionalWrites(abc.ABC):
    """Optional target interface: compare-and-swap writes, for leases shared by several hosts."""

    @abc.abstractmethod
    def conditional_put(self, filename: str, data: bytes, *, if_none_match: bool = False,
                        if_match: str | None = None) -> str | None:
        """Write only if absent (``if_none_match``) or unchanged (``if_match`` ETag).

        Returns the new ETag, or None when the condition did not hold.
        """

    @abc.abstractmethod
    def read_with_etag(self, filename: str) -> tuple[bytes, str] | None:
        """The file's bytes and ETag, or None if it does not exist."""

    @abc.abstractmethod
    def conditional_delete(self, filename: str, etag: str) -> bool:
        """Delete only if unchanged; False when the condition did not hold."""


class UploadCleanup(abc.ABC):
    """Optional target interface: uploads that live outside the listing (S3 multipart uploads)."""

    @abc.abstractmethod
    def incomplete_uploads(self) -> list[IncompleteUpload]:
        """Uploads left uncommitted under this target (cleanup aborts old ones)."""

    @abc.abstractmethod
    def abort_upload(self, upload: IncompleteUpload) -> None:
        """Abort one upload returned by :meth:`incomplete_uploads`."""


def local_path_of(target: Target, filename: str = "") -> Path | None:
    """The local path of ``filename`` on ``target``, or None when the target is not local."""
    return target.local_path(filename) if isinstance(target, LocalPaths) else None
