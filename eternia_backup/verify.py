"""Checking a backup copy against its manifest: presence, size, sha256, contents.

``verify_copy`` reads the archive once: the raw bytes are hashed while they are
decompressed and every member header is checked for safety. Nothing is
written anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO

from .catalog import BackupCopy
from .errors import (
    ArchiveError,
    BackupNotFoundError,
    EterniaBackupError,
    IntegrityError,
    StorageError,
    UnsafeArchiveError,
)
from .hashing import HashingReader
from .increments import is_meta_member
from .manifest import Manifest
from .progress import NO_PROGRESS, Progress, ProgressReader
from .safety import MemberChecker
from .storage import describe_os_error

_CHUNK = 1024 * 1024


class LimitedReader:
    """Refuses to produce more than ``limit`` bytes (decompression bombs)."""

    def __init__(self, inner, limit: int, what: str):
        self.inner, self.limit, self.what = inner, limit, what
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.count += len(data)
        if self.count > self.limit:
            raise UnsafeArchiveError(f"{self.what}: archive expands beyond the {self.limit} bytes its manifest records")
        return data

    def readable(self) -> bool:
        return True


@dataclasses.dataclass
class VerifyReport:
    backup_id: str
    url: str
    ok: bool
    problem: str | None
    size: int | None = None
    entries: int | None = None
    note: str | None = None
    #: targets that could not be listed when the backup was chosen ([{"target", "error"}]);
    #: the command's JSON carries it once, beside the reports
    unlisted_targets: list[dict[str, str]] = dataclasses.field(default_factory=list, repr=False)
    #: the backup whose stored archive was found damaged (a base of the chain, or this one)
    damaged: str | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        del data["unlisted_targets"], data["damaged"]
        return data


def check_size(copy: BackupCopy, manifest: Manifest) -> None:
    try:
        size = copy.target.size(manifest.archive.file)
    except BackupNotFoundError:
        raise IntegrityError(f"{copy.describe()}: archive {manifest.archive.file} is missing") from None
    if size != manifest.archive.size:
        raise IntegrityError(
            f"{copy.describe()}: archive is {size} bytes, the manifest says {manifest.archive.size} (truncated or altered)"
        )


def check_checksum(copy: BackupCopy, manifest: Manifest, stream: BinaryIO) -> None:
    """Hash a whole archive stream and compare with the manifest."""
    reader = HashingReader(stream)
    reader.drain()
    compare_checksum(copy, manifest, reader)


def compare_checksum(copy: BackupCopy, manifest: Manifest, reader: HashingReader) -> None:
    """Raise IntegrityError unless what ``reader`` read has the manifest's size and sha256."""
    if reader.size != manifest.archive.size:
        raise IntegrityError(
            f"{copy.describe()}: read {reader.size} bytes, the manifest says {manifest.archive.size} (truncated or altered)"
        )
    if reader.sha.hexdigest() != manifest.archive.sha256:
        raise IntegrityError(f"{copy.describe()}: sha256 does not match the manifest (the archive is corrupted)")


def open_archive(copy: BackupCopy):
    """The stored archive, opened for one sequential read (a store's errors become StorageErrors)."""
    try:
        return copy.target.open_read(copy.manifest.archive.file)
    except EterniaBackupError:
        raise
    except OSError as exc:
        raise StorageError(f"{copy.describe()}: opening the archive failed: {describe_os_error(exc)}; "
                           "nothing was changed") from exc


def reading_failed(copy: BackupCopy, exc: OSError) -> StorageError:
    """A store's file object failing mid-read with its own errors (EIO, a reset connection)."""
    return StorageError(f"{copy.describe()}: reading the archive failed: {describe_os_error(exc)}; "
                        "nothing was changed")


def check_stored_archive(copy: BackupCopy, progress: Progress = NO_PROGRESS) -> None:
    """Hash a copy's stored archive and compare it with its manifest: IntegrityError when it differs,
    StorageError when the store cannot be read."""
    with open_archive(copy) as raw:
        try:
            check_checksum(copy, copy.manifest, ProgressReader(raw, progress))
        except OSError as exc:
            if isinstance(exc, EterniaBackupError):
                raise
            raise reading_failed(copy, exc) from exc


class Content:
    """The archive's tar stream read from its stored bytes: (decrypt,) decompress, cap.

    ``finish()`` reads to the end and stops any decryption thread, after which
    the HashingReader underneath may be drained safely.
    """

    def __init__(self, hashing: HashingReader, manifest: Manifest, compression, identities: list | None, where: str,
                 *, read_ahead: bool = False):
        self.decrypting = None
        source = hashing
        if manifest.encryption:
            from .encryption import DecryptingReader

            self.decrypting = source = DecryptingReader(hashing, identities or [])
        self.stream = LimitedReader(compression.decompressor(source), manifest.archive.content_size, where)
        #: with ``read_ahead``, a thread reads, hashes and decompresses while the caller works
        self.ahead = None
        if read_ahead:
            from .readahead import ReadAhead

            self.ahead = self.stream = ReadAhead(self.stream)

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        while self.stream.read(_CHUNK):
            pass
        if self.ahead is not None:
            self.ahead.close()
        if self.decrypting is not None:
            while self.decrypting.read(_CHUNK):
                pass
            self.decrypting.close()

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
        if self.decrypting is not None:
            self.decrypting.close()


def keys_for(manifest: Manifest, encryption) -> list | None:
    """Identities to decrypt this backup (None when it is not encrypted)."""
    if not manifest.encryption:
        return None
    from .encryption import identities_for

    return identities_for(manifest.encryption, encryption)


def verify_chain(links: list[BackupCopy], registry, encryption=None, progress: Progress = NO_PROGRESS) -> VerifyReport:
    """Verify an incremental backup (the last of ``links``) and every backup it is built on."""
    copy = links[-1]
    for link in links[:-1]:  # what the restore reads of a base: its archive
        report = verify_copy(link, registry, encryption, progress, check_files_index=False)
        if not report.ok:
            state = "is damaged" if report.damaged else "cannot be verified"
            return VerifyReport(copy.backup_id, copy.url, False,
                                f"{copy.describe()}: its base backup {link.backup_id} {state}: {report.problem}",
                                damaged=report.damaged)
    report = verify_copy(copy, registry, encryption, progress)
    if report.ok:
        report.note = " ".join(filter(None, [report.note, f"its chain of {len(links) - 1} base backup(s) verified too"]))
    return report


def _wrong_key(copy: BackupCopy, exc: Exception):
    """The error for a backup whose stored bytes match its manifest but that the configured key cannot open."""
    from .encryption import DecryptionError

    return DecryptionError(f"{copy.describe()}: its stored bytes match the manifest (size and sha256), but it "
                           f"cannot be opened with the configured key, so a restore would fail: {exc}")


def verify_copy(copy: BackupCopy, registry, encryption=None, progress: Progress = NO_PROGRESS, *,
                check_files_index: bool = True) -> VerifyReport:
    """Verify one copy fully; returns a report (ok or the problem), never raises IntegrityError.

    An encrypted backup with no key configured is checked for size and sha256
    only, and the report's ``note`` says so; one that the configured key does not
    open is a failed report (not damage: its stored bytes are intact).
    """
    from .encryption import DecryptionError, NoKeyError

    report = VerifyReport(copy.backup_id, copy.url, False, None)
    try:
        manifest = copy.manifest
        own_index_only = copy.problem is not None and copy.problem == copy.index_problem and not check_files_index
        if manifest is None or (copy.problem and not own_index_only):
            raise IntegrityError(f"{copy.describe()}: {copy.problem or 'manifest missing'}")
        check_size(copy, manifest)
        archiver = registry.archiver(manifest.archive.format)()
        compression = registry.compression(manifest.archive.compression)()
        try:
            identities = keys_for(manifest, encryption)
        except NoKeyError as exc:
            # No key configured (a verifier that holds none): the stored bytes can still be checked.
            check_stored_archive(copy)
            report.ok, report.size = True, manifest.archive.size
            report.note = f"size and sha256 checked; contents not read: {exc}"
            return report
        except DecryptionError as exc:
            # A key is configured and does not open it: a restore with this config would fail.
            check_stored_archive(copy)
            raise _wrong_key(copy, exc) from None
        progress.phase(f"verify {copy.backup_id}", manifest.archive.size)
        with copy.target.open_read(manifest.archive.file) as raw:
            hashing = HashingReader(ProgressReader(raw, progress))
            content = Content(hashing, manifest, compression, identities, copy.describe())
            checker = MemberChecker([s.name for s in manifest.sources], where=copy.describe())
            entries = 0
            try:
                reader = archiver.reader(content)
                for member in reader:
                    if is_meta_member(member.name):  # what the framework stores for itself (.eternia/)
                        continue
                    checker.check(member)
                    if member.kind == "file":
                        f = reader.open_member(member)
                        while f.read(_CHUNK):
                            pass
                    entries += 1
                    progress.file_done()
                checker.finish()
                content.finish()
                hashing.drain()
            except UnsafeArchiveError:
                content.close()
                raise
            except Exception as exc:  # zstd, gzip, lzma and tarfile each raise their own
                # A checksum mismatch explains a broken stream best.
                content.close()
                hashing.drain()
                compare_checksum(copy, manifest, hashing)
                if isinstance(exc, DecryptionError):  # the stored bytes are what was written: the key is wrong
                    raise _wrong_key(copy, exc) from exc
                if isinstance(exc, ArchiveError):
                    raise IntegrityError(f"{copy.describe()}: {exc}") from exc
                raise IntegrityError(f"{copy.describe()}: archive cannot be read: {exc}") from exc
            compare_checksum(copy, manifest, hashing)
            expected = sum(s.entries for s in manifest.sources)
            if entries != expected:
                raise IntegrityError(f"{copy.describe()}: archive holds {entries} entries, the manifest says {expected}")
            if manifest.files_index is not None and check_files_index:
                from .restore import check_index

                try:
                    check_index(copy)
                except IntegrityError as exc:
                    if manifest.is_incremental:  # its restore reads the index
                        raise
                    report.note = f"{exc}; the backup restores without it, but the next one cannot build on it"
        report.ok, report.size, report.entries = True, manifest.archive.size, entries
    except UnsafeArchiveError as exc:
        report.problem, report.damaged = str(exc), copy.backup_id
    except IntegrityError as exc:
        report.problem = str(exc)
        from .encryption import DecryptionError

        if not isinstance(exc, DecryptionError):  # a missing or wrong key is no damage (altered bytes
            report.damaged = copy.backup_id       # fail the sha256 comparison first)
    except StorageError as exc:
        report.problem = f"{copy.describe()}: {exc}"
    except OSError as exc:  # a store's file object failing half way (EIO, a reset connection)
        report.problem = f"{copy.describe()}: reading the archive failed: {describe_os_error(exc)}"
    return report
