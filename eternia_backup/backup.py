"""One backup: sources -> archiver -> compressor -> sha256 -> every target.

The sources are read once, whatever the number of targets: the compressed stream
fans out to one atomic writer per target. A target that fails is aborted (its
temporary file removed) and the others go on. Each target's archive is committed,
its size checked on the target, and only then is the manifest written beside it:
a backup exists on a target only when its manifest does.

Targets are opened concurrently, each in a thread. A target still opening when
the sources are read (a slow or dead cloud endpoint) does not hold up the
others: its share of the stream is kept in a private temporary file and handed
over when it opens; the targets that are open commit first, and a target that
fails to open within its own timeouts is a failed target (partial success).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import secrets
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import __version__, logformat, process, scratch
from .errors import BackupFailedError, EterniaBackupError, Interrupted, StorageError
from .hooks import GlobalHooks, run_hook
from .streams import PartSplitter
from .file_index import Cursor, IndexReader, IndexWriter, index_name
from .increments import META_DIR, REMOVED_MEMBER, SOURCES_MEMBER, ChangeFilter, RemovedList, SourceIncrement, fingerprint
from .manifest import ArchiveRecord, Manifest, SourceRecord, archive_stem, new_backup_id
from .plugins import call_lifecycle
from .progress import Progress, as_progress
from .providers import Archiver, AtomicWrite, Compression, Source, Target, local_path_of
from .storage import describe_os_error

log = logging.getLogger("eternia_backup.backup")


@dataclasses.dataclass(frozen=True)
class Copy:
    """One stored copy of a backup."""

    target: str
    url: str
    local_path: Path | None


@dataclasses.dataclass
class BackupResult:
    """What ``create_backup()`` returns: prints as the backup's location.

    ``os.fspath()`` gives the local archive's path when a local target holds one.
    """

    backup_id: str
    manifest: Manifest | None
    copies: list[Copy]
    failures: dict[str, str]
    duration: float

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.copies)

    @property
    def size(self) -> int:
        return self.manifest.archive.size if self.manifest else 0

    @property
    def location(self) -> str:
        local = [c for c in self.copies if c.local_path is not None]
        return str(local[0].local_path) if local else (self.copies[0].url if self.copies else "")

    def __fspath__(self) -> str:
        for c in self.copies:
            if c.local_path is not None:
                return str(c.local_path)
        raise TypeError(f"backup {self.backup_id} has no local copy; its location is {self.location}")

    def __str__(self) -> str:
        return self.location

    @property
    def warnings(self) -> list[dict[str, str]]:
        """What could not be archived faithfully ({source, path, problem}; the first ones per source)."""
        if self.manifest is None:
            return []
        return [{"source": s.name, **w} for s in self.manifest.sources for w in s.warnings]

    @property
    def warning_count(self) -> int:
        return self.manifest.warning_count if self.manifest else 0

    def to_dict(self) -> dict:
        return {
            "backup_id": self.backup_id, "ok": self.ok, "location": self.location,
            "size": self.size, "duration_seconds": round(self.duration, 3),
            "copies": [{"target": c.target, "url": c.url} for c in self.copies],
            "failures": self.failures,
            "warning_count": self.warning_count, "warnings": self.warnings,
        }


BackupCancelled = process.Cancelled


@dataclasses.dataclass
class IncrementPlan:
    """How a backup relates to earlier ones, when incremental backups are on.

    Every such backup records a file index. With a ``parent`` it is incremental:
    only what changed since the parent is archived; ``open_parent_index()`` reads
    the parent's index (checked before this backup started).
    """

    parent: Manifest | None = None
    open_parent_index: Callable[[], IndexReader] | None = None
    #: where an encrypted backup keeps an unencrypted copy of its index (the state directory)
    plain_index: Path | None = None


class _BaseSections:
    """The parent's index, handed out source by source as the backup reaches each."""

    def __init__(self, reader: IndexReader | None):
        self.reader = reader
        self.sections = reader.sections() if reader is not None else iter(())

    def take(self, name: str, fp: str) -> Cursor | None:
        """The parent's entries of source ``name``, if they are a valid base (same fingerprint)."""
        for header, entries in self.sections:
            if header["source"] == name:
                if header.get("indexed") and header.get("fingerprint") == fp:
                    return Cursor(entries)
                log.info("source %r: no usable base in the parent backup (its configuration changed); "
                         "archived whole", name)
                return None
        return None  # a source the parent did not have, or in another order: archived whole

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class _CountingWriter:
    """The stream tarfile writes to: counts bytes (tarfile needs ``tell()``)."""

    def __init__(self, inner, progress: Progress, cancel=None):
        self.inner = inner
        self.count = 0
        self.progress = progress
        self.cancel = cancel

    def write(self, data) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise BackupCancelled("backup abandoned because the scheduler is stopping; nothing was committed")
        n = len(data)
        self.inner.write(data)
        self.count += n
        self.progress.advance(n)
        return n

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        pass


#: how long every target gets to open before the sources are read (the others go on without it)
OPEN_WAIT = 1.0
#: how long a failed backup waits for targets still opening, so they can abort their upload
ABANDON_WAIT = 5.0


class _Opening:
    """A target's writer being opened in a thread; until it is open, its data waits in a spool file."""

    def __init__(self, target: Target, archive_file: str):
        self.target = target
        self.writer: AtomicWrite | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        self.spool = None
        self._scratch = scratch.current_root()  # taken here: the spool may be made from another thread
        self._abandoned = False
        self._lock = threading.Lock()
        threading.Thread(target=self._open, args=(archive_file,), name=f"eternia-open-{target.name}",
                         daemon=True).start()

    def _open(self, archive_file: str) -> None:
        try:
            writer = self.target.open_write(archive_file)
        except Exception as exc:
            self.error = exc if isinstance(exc, EterniaBackupError) else self.target.error_for("write", exc,
                                                                                              archive_file)
            self.done.set()
            return
        with self._lock:
            abandoned, self.writer = self._abandoned, writer
        if abandoned:  # the backup ended while this target was opening
            writer.abort()
        self.done.set()

    def keep(self, data) -> None:
        """Keep data meant for the target until it is open (a private, unlinked temporary file)."""
        if self.spool is None:
            self.spool = scratch.temporary_file("spool", self._scratch)
        self.spool.write(data)

    def hand_over(self) -> AtomicWrite:
        """The open writer, with everything kept for it written first."""
        if self.spool is not None:
            self.spool.seek(0)
            while chunk := self.spool.read(1024 * 1024):
                self.writer.write(chunk)
            self.spool.close()
            self.spool = None
        return self.writer

    def abandon(self) -> None:
        # Under the lock, either the writer is set (and _open saw "not abandoned", so
        # it is ours to abort) or it is not yet (and _open will abort it itself).
        with self._lock:
            self._abandoned = True
            writer = self.writer
        if writer is not None:
            writer.abort()
        if self.spool is not None:
            self.spool.close()
            self.spool = None


class _FanOut:
    """Hashes the compressed stream and writes it to every live target writer (or its spool, while opening)."""

    def __init__(self, writers: dict[str, AtomicWrite], failures: dict[str, str], targets: dict[str, Target],
                 pending: dict[str, _Opening] | None = None):
        self.writers = writers
        self.failures = failures
        self.targets = targets
        self.pending = pending or {}
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.resolve()
        for name, w in list(self.writers.items()):
            try:
                w.write(data)
            except Exception as exc:
                self.fail(name, self.targets[name].error_for("write to", exc))
        for name, opening in list(self.pending.items()):
            try:
                opening.keep(data)
            except OSError as exc:
                self.pending.pop(name).abandon()
                self.fail(name, StorageError(f"target {name!r}: cannot keep the archive while the target "
                                             f"opens: {describe_os_error(exc)}"))
        if not self.writers and not self.pending:
            raise StorageError("every target failed: " + "; ".join(f"{n}: {m}" for n, m in self.failures.items()))
        return len(data)

    def resolve(self, block: bool = False) -> list[str]:
        """Move targets that finished opening to the writers (or failures); return the names added."""
        added = []
        for name, opening in list(self.pending.items()):
            if block:
                opening.done.wait()
            if not opening.done.is_set():
                continue
            del self.pending[name]
            if opening.error is not None:
                opening.abandon()
                self.fail(name, opening.error)
                continue
            try:
                self.writers[name] = opening.hand_over()
                added.append(name)
            except Exception as exc:
                opening.abandon()
                self.fail(name, self.targets[name].error_for("write to", exc))
        return added

    def abort_all(self) -> None:
        for w in self.writers.values():
            w.abort()
        for opening in self.pending.values():
            opening.abandon()
        # A target still opening aborts its upload when it opens: give it a moment, so a
        # failed backup usually returns with nothing left behind. One that takes longer
        # (a dead endpoint) leaves an upload that cleanup aborts once its writer is gone.
        deadline = time.monotonic() + ABANDON_WAIT
        for opening in self.pending.values():
            opening.done.wait(max(0.0, deadline - time.monotonic()))

    def fail(self, name: str, error: Exception) -> None:
        w = self.writers.pop(name, None)
        if w is not None:
            w.abort()
        self.failures[name] = str(error)
        log.info("%s", self.failures[name])  # raised to the caller too

    def flush(self) -> None:
        pass


def _run_hook_command(source: Source, when: str, command: str) -> None:
    # no secrets in a hook's environment, except what the source's env: lists
    run_hook(f"source {source.name!r}: {when} command", command, cwd=source.base_dir,
             env=getattr(source.options, "env", None), timeout=source.options.hook_timeout)


class _CountingSection:
    """A source's EntryWriter that reports each entry added as one file done."""

    def __init__(self, inner, progress: Progress):
        self._inner = inner
        self._progress = progress

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name.startswith("add_") and callable(attr):
            def counted(*args, **kwargs):
                result = attr(*args, **kwargs)
                self._progress.file_done()
                return result
            return counted
        return attr


def estimated_size(sources: list[Source]) -> int | None:
    """Sum of the sources' own estimates; None when one cannot tell (a dump command)."""
    total = 0
    for source in sources:
        try:
            size = source.estimate_size()
        except OSError:
            size = None
        if size is None:
            return None
        total += size
    return total


def _with_increment(source: Source, section, backup_id: str, index: IndexWriter | None, base: _BaseSections,
                    removed: RemovedList | None):
    """The writer the source writes into, and its increment counts (None without an index)."""
    if index is None:
        return section, None, None
    fp = fingerprint(source)
    diffable = bool(getattr(source, "supports_increments", False))
    index.begin_source(source.name, source.type_name, fp, diffable)
    if not diffable:
        return section, SourceIncrement("whole"), None
    cursor = base.take(source.name, fp) if removed is not None else None
    counts = SourceIncrement("changes" if cursor is not None else "whole")
    changes = ChangeFilter(section, source.name, backup_id, cursor, index, removed, counts)
    return changes, counts, changes


def _backup_source(source: Source, section, progress: Progress) -> None:
    before, after = source.options.before, source.options.after
    if before:
        _run_hook_command(source, "before", before)
    try:
        source.backup(_CountingSection(section, progress) if progress.wants_totals else section)
    finally:
        if after:
            _run_hook_command(source, "after", after)


def run_backup(*, name: str, environment: str, sources: list[Source], targets: list[Target],
               archiver: Archiver, compression: Compression, level: int | None, pm,
               config=None, progress: "Progress | Callable[[int], None] | None" = None,
               now: datetime | None = None, guard: Callable[[], None] | None = None,
               cancel=None, encryptor=None, increment: IncrementPlan | None = None) -> BackupResult:
    """Make one backup on every target. Raises BackupFailedError if any target failed.

    ``guard()`` is called before anything is committed and may raise (a lost
    lease) to abandon the backup; ``cancel`` (an Event) abandons it between writes.
    ``progress`` (a :class:`~eternia_backup.progress.Progress`, or a callable
    taking a byte count) is told the bytes archived and the entries added.
    ``increment`` (incremental backups on) records a file index, and with a
    parent archives only what changed since it.
    """
    progress = as_progress(progress)
    started = time.monotonic()
    created = now or datetime.now(timezone.utc)
    backup_id = new_backup_id(created, secrets.token_hex(3))
    archive_file = f"{name}-{backup_id}{archiver.extension}{compression.extension}"
    if encryptor is not None:
        archive_file += ".age"
    by_name = {t.name: t for t in targets}
    failures: dict[str, str] = {}
    fan = _FanOut({}, failures, by_name)
    encrypting = None
    parent = increment.parent if increment is not None else None
    index = None
    if increment is not None:
        index = IndexWriter(backup_id, encryptor,
                            increment.plain_index.parent if increment.plain_index is not None else None)
    removed = RemovedList() if parent is not None else None
    base = _BaseSections(None)
    hooks = GlobalHooks(getattr(config, "hooks", None), getattr(config, "base_dir", Path.cwd()), backup_id)
    cancel_token = process.CANCEL.set(cancel)  # commands of sources and hooks watch it too
    id_token = logformat.BACKUP_ID.set(backup_id)  # JSON log lines carry it
    call_lifecycle(pm, "eternia_backup_started", backup_id=backup_id, config=config)
    log.info("backup %s: started (%d source(s), %d target(s))", backup_id, len(sources), len(targets))

    try:
        for source in sources:  # a missing source fails here, before any target is touched
            source.check()
        _open_targets(fan, targets, archive_file)
        progress.phase("backup", estimated_size(sources) if progress.wants_totals else None)
        sink = fan
        if encryptor is not None:  # compress, then encrypt, then hash what is stored
            encrypting = sink = encryptor.writer(fan)
        compressor = compression.compressor(sink, level)
        counter = _CountingWriter(compressor, progress, cancel)
        records: list[SourceRecord] = []
        if parent is not None:
            base = _BaseSections(increment.open_parent_index())
        hooks.before()
        with archiver.writer(counter) as aw:
            for source in sources:
                section = PartSplitter(aw.section(source.name))  # dumps of unknown size go in parts
                log.debug("backup %s: source %r (%s) starting", backup_id, source.name, source.type_name)
                writer, counts, changes = _with_increment(source, section, backup_id, index, base, removed)
                _backup_source(source, writer, progress)
                if changes is not None:
                    changes.finish()
                warned = section.warnings
                records.append(SourceRecord(source.name, source.type_name, section.size, section.entries,
                                            details=source.describe(), warnings=list(warned.items),
                                            warning_count=warned.count,
                                            increment=counts.record() if counts is not None else None))
                log.info("backup %s: source %r: %d entries, %d bytes", backup_id, source.name,
                         section.entries, section.size)
            if encryptor is not None:  # the details the plain manifest leaves out, encrypted with the data
                details = json.dumps([dataclasses.asdict(r) for r in records], indent=1).encode()
                aw.section(META_DIR).add_stream(SOURCES_MEMBER, io.BytesIO(details), len(details), mode=0o600,
                                                mtime=created.timestamp())
            if removed is not None:  # the paths to delete after extracting this archive over its parent's state
                removed.spool.seek(0)
                aw.section(META_DIR).add_stream(REMOVED_MEMBER, removed.spool, removed.size, mode=0o600,
                                                mtime=created.timestamp())
        hooks.after()  # every source is read: the application may write again while the rest is stored
        base.close()
        compressor.close()
        if encrypting is not None:
            encrypting.close()
        files_index = None
        if index is not None:
            files_index = index.close(index_name(archive_stem(archive_file), encryptor is not None))
        if guard is not None:
            guard()
        manifest = Manifest(
            backup_id=backup_id, name=name, created_at=created, finished_at=datetime.now(timezone.utc),
            environment=environment, host=socket.gethostname(), framework_version=__version__,
            sources=tuple(records),
            archive=ArchiveRecord(file=archive_file, format=archiver.format_name, compression=compression.name,
                                  size=fan.size, sha256=fan.sha.hexdigest(), content_size=counter.count),
            encryption=encryptor.record if encryptor is not None else None,
            kind="incremental" if parent is not None else "full",
            parent=parent.backup_id if parent is not None else None,
            chain=(*parent.chain, parent.backup_id) if parent is not None else (),
            files_index=files_index,
        )
    except BaseException as exc:
        try:
            hooks.after()  # resume writes first, whatever failed
        except Exception as after_error:
            log.warning("%s", after_error)
        base.close()
        if encrypting is not None:
            encrypting.abort()
        if index is not None:
            index.discard()
        fan.abort_all()
        hooks.on_error(exc)
        call_lifecycle(pm, "eternia_backup_failed", backup_id=backup_id, error=exc, result=None)
        if isinstance(exc, OSError) and not isinstance(exc, EterniaBackupError):
            raise StorageError(f"backup {backup_id} failed: {describe_os_error(exc)}") from exc
        raise

    finally:
        process.CANCEL.reset(cancel_token)
        logformat.BACKUP_ID.reset(id_token)
        if removed is not None:
            removed.close()
    copies: list[Copy] = []  # filled as targets commit: an interrupted commit still knows where it is
    try:
        try:
            _commit(manifest, fan, by_name, guard, list(fan.writers), index, copies)  # the open ones first: local
            _commit(manifest, fan, by_name, guard, fan.resolve(block=True), index, copies)  # then the slow ones
        except BaseException as exc:
            fan.abort_all()
            if not copies or not isinstance(exc, KeyboardInterrupt):
                hooks.on_error(exc)
                call_lifecycle(pm, "eternia_backup_failed", backup_id=backup_id, error=exc, result=None)
                raise
            # Ctrl-C (or SIGTERM) after some targets committed: those copies are complete and kept,
            # as after any other per-target failure; say so rather than "nothing was committed".
            interrupted = interrupted_after_commit(exc, BackupResult(
                backup_id, manifest, copies, failures, time.monotonic() - started), by_name)
            hooks.on_error(interrupted)
            call_lifecycle(pm, "eternia_backup_failed", backup_id=backup_id, error=interrupted,
                           result=interrupted.result)
            raise interrupted from exc
        else:
            if index is not None and copies:
                try:
                    index.keep_plain(increment.plain_index)
                except OSError as exc:  # the next backup is then a full one
                    log.warning("could not keep the local copy of the file index at %s: %s",
                                increment.plain_index, describe_os_error(exc))
        finally:
            if index is not None:
                index.discard()
        result = BackupResult(backup_id, manifest, copies, failures, time.monotonic() - started)
        if failures:
            error = BackupFailedError(
                f"backup {backup_id} failed on {len(failures)} of {len(targets)} target(s): "
                + "; ".join(failures.values())
                + (f" (kept on: {', '.join(c.target for c in copies)})" if copies else ""),
                result,
            )
            hooks.on_error(error)
            call_lifecycle(pm, "eternia_backup_failed", backup_id=backup_id, error=error, result=result)
            raise error
        log.info("backup %s: done in %.1fs, %d bytes, at %s", backup_id, result.duration, result.size, result.location)
        if result.warning_count:
            log.warning("backup %s: made with %d warning(s); the manifest lists them", backup_id, result.warning_count)
        call_lifecycle(pm, "eternia_backup_succeeded", result=result)
        return result
    except KeyboardInterrupt as exc:
        if not copies or getattr(exc, "result", None) is not None:
            raise
        # Ctrl-C (or SIGTERM) once every commit was done, in what comes after (the index kept, the
        # lifecycle hooks and notifications): the backup is made, say so rather than "nothing was committed".
        raise interrupted_after_commit(exc, BackupResult(
            backup_id, manifest, copies, failures, time.monotonic() - started), by_name) from exc


def _open_targets(fan: _FanOut, targets: list[Target], archive_file: str) -> None:
    """Open every target concurrently; give them OPEN_WAIT together, then go on with those open."""
    fan.pending = {t.name: _Opening(t, archive_file) for t in targets}
    deadline = time.monotonic() + OPEN_WAIT
    for opening in fan.pending.values():
        opening.done.wait(max(0.0, deadline - time.monotonic()))
    fan.resolve()
    if not fan.writers and not fan.pending:
        raise StorageError("every target failed: " + "; ".join(fan.failures.values()))
    for name in fan.pending:
        log.info("target %r is still opening; the backup goes on and hands it the archive when it opens", name)


def interrupted_after_commit(exc: KeyboardInterrupt, result: BackupResult, targets: dict[str, Target]) -> Interrupted:
    """The interrupt, saying which targets hold the backup; the others are failures of this backup."""
    reason = Interrupted.reason(exc)
    for name in targets:
        if name not in result.failures and all(c.target != name for c in result.copies):
            result.failures[name] = f"target {name!r}: {reason} before the backup was committed to it"
    committed = ", ".join(c.target for c in result.copies)
    if result.failures:
        message = f"{reason}: backup {result.backup_id} was committed to {committed} only; " \
                  f"not to {', '.join(result.failures)}"
    else:  # every target committed: only what runs after a backup was cut short
        message = f"{reason} after backup {result.backup_id} was committed to {committed}: the backup is " \
                  "complete; what runs after a backup (notifications, hooks, the status record) may not " \
                  "have finished"
    return Interrupted(message, getattr(exc, "signum", signal.SIGINT), result)


def _commit(manifest: Manifest, fan: _FanOut, targets: dict[str, Target], guard, names: list[str],
            index: IndexWriter | None, copies: list[Copy]) -> None:
    """Commit the targets ``names``, appending each copy made to ``copies``."""
    archive_file = manifest.archive.file
    first = len(copies)  # this call's copies: a lost lease takes back only those
    for name in names:
        writer = fan.writers.get(name)
        if writer is None:
            continue
        target = targets[name]
        try:
            if guard is not None:
                guard()
        except BaseException:
            for w in fan.writers.values():
                w.abort()
            for c in copies[first:]:  # the lease holder lost it: take back what this run committed
                _delete_quietly(targets[c.target], manifest.filename)
                _delete_quietly(targets[c.target], archive_file)
                if manifest.files_index is not None:
                    _delete_quietly(targets[c.target], manifest.files_index.file)
            raise
        try:
            writer.commit()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                fan.fail(name, StorageError(f"target {name!r}: {Interrupted.reason(exc)} before "
                                            f"{archive_file} was committed"))
                raise
            fan.fail(name, target.error_for("commit", exc, archive_file))
            continue
        try:
            stored = target.size(archive_file)
            if stored != manifest.archive.size:
                raise StorageError(f"stored archive is {stored} bytes, expected {manifest.archive.size}")
            if index is not None:  # before the manifest: a backup exists only with everything it needs
                index.store(target)
            target.write_bytes(manifest.filename, manifest.public().to_json())
        except BaseException as exc:
            _delete_quietly(target, archive_file)
            if index is not None:
                _delete_quietly(target, index.record.file)
            fan.writers.pop(name, None)
            if not isinstance(exc, Exception):
                fan.failures[name] = f"target {name!r}: {Interrupted.reason(exc)} before the manifest was written"
            else:
                fan.failures[name] = str(exc if isinstance(exc, EterniaBackupError) else
                                         target.error_for("commit", exc, archive_file))
            log.info("%s", fan.failures[name])
            if not isinstance(exc, Exception):
                raise
            continue
        copies.append(Copy(name, target.file_url(archive_file), local_path_of(target, archive_file)))


def _delete_quietly(target: Target, filename: str) -> None:
    try:
        target.delete(filename)
    except Exception as exc:  # cleanup removes it later as a leftover
        log.warning("could not remove %s from target %r: %s", filename, target.name, exc)
