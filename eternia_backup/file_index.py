"""The file index: per source, every entry of a backup with the metadata that tells a change.

Recorded beside the manifest of every backup made with incremental backups on
(``<name>-<id>.files.jsonl.zst``, ``.age`` added when encrypted). The next
incremental backup compares the tree it walks with it, without reading
unchanged files; a restore of an incremental backup reads from it which backup
of the chain holds each path (its *origin*).

The format is zstd-compressed JSON lines, written and read as a stream, so
memory stays flat whatever the number of files:

* the first line: ``{"format": "eternia-backup-files", "version": 1, "backup_id": ...}``;
* per source, a header object ``{"source": name, "type": ..., "fingerprint": ...,
  "indexed": true|false}`` (``indexed`` is false for a source archived whole in
  every backup: no entries follow);
* then its entries in path order (a directory, then its children sorted by
  name), each an array ``[path, kind, size, mtime_ns, ctime_ns, inode, mode,
  origin, link]``: kind ``f`` file, ``d`` directory, ``l`` symlink, ``s``
  stream (a dump: never compared); ``origin`` is the backup id whose archive
  holds the entry.

Version 2 entries of files may have two more fields: ``digest``, the sha256 of
the file's content as restored (recorded for files of 1 MiB or more, so that
the next backup can tell a file that only grew), and ``appends``,
``[[backup_id, offset], ...]``: the archives holding what was appended to the
file after its first ``offset`` bytes (member ``<path>.eternia-append-<offset>``),
oldest first; the file's first bytes come from ``origin``. Version 1 indexes
(no such fields) are still read.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import zstandard

from . import scratch
from .errors import EterniaBackupError, IntegrityError
from .hashing import HashingReader, HashingWriter
from .manifest import FileRecord

FORMAT = "eternia-backup-files"
VERSION = 2
READ_VERSIONS = (1, 2)
SUFFIX = ".files.jsonl.zst"

# positions in an entry
PATH, KIND, SIZE, MTIME, CTIME, INO, MODE, ORIGIN, LINK, DIGEST, APPENDS = range(11)


def index_name(archive_stem: str, encrypted: bool) -> str:
    """The index object's file name for a backup whose files start with ``archive_stem``."""
    return archive_stem + SUFFIX + (".age" if encrypted else "")


def path_key(path: str) -> list[str]:
    """The order sources add entries in: a directory, then its children sorted by name."""
    return path.split("/")


class IndexWriter:
    """Writes an index into a private temporary file; :meth:`store` copies it to a target.

    With ``plain_dir`` (encrypted backups), a second, unencrypted copy is written
    there too and kept by :meth:`keep_plain`: the next incremental reads it on a
    host that holds only the recipients' public keys (no identity to decrypt the
    stored one). It holds paths and sizes of the live tree, on the same host,
    readable by its owner only.
    """

    _BATCH = 2000

    def __init__(self, backup_id: str, encryptor=None, plain_dir: Path | None = None):
        self.backup_id = backup_id
        self.spool = scratch.temporary_file("index")
        self._hashing = HashingWriter(self.spool)
        self._encrypting = encryptor.writer(self._hashing) if encryptor is not None else None
        sink = self._encrypting if self._encrypting is not None else self._hashing
        self._zstd = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(sink, closefd=False)
        self._plain = self._plain_hashing = self._plain_zstd = None
        if encryptor is not None and plain_dir is not None:
            plain_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # made in the scratch directory (same file system: the state directory), named for its
            # process, so a copy left by a process that died is removed by the next run
            self._plain = tempfile.NamedTemporaryFile(dir=scratch.ROOT.get() or plain_dir, prefix=scratch.prefix("index"),
                                                      suffix=".tmp", delete=False)
            self._plain_hashing = HashingWriter(self._plain)
            self._plain_zstd = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
                self._plain_hashing, closefd=False)
        self._lines: list[str] = []
        self.record: FileRecord | None = None
        self._line({"format": FORMAT, "version": VERSION, "backup_id": backup_id})

    def _line(self, obj: Any) -> None:
        self._lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        if len(self._lines) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode("utf-8", "surrogateescape")
            self._zstd.write(data)
            if self._plain_zstd is not None:
                self._plain_zstd.write(data)
            self._lines = []

    def begin_source(self, name: str, type_name: str, fingerprint: str, indexed: bool) -> None:
        self._line({"source": name, "type": type_name, "fingerprint": fingerprint, "indexed": indexed})

    def add(self, entry: list) -> None:
        self._line(entry)

    def close(self, filename: str) -> FileRecord:
        self._flush()
        self._zstd.close()
        if self._encrypting is not None:
            self._encrypting.close()
        if self._plain_zstd is not None:
            self._plain_zstd.close()
            self._plain.flush()
            os.fsync(self._plain.fileno())
            self._plain.close()
        self.record = FileRecord(filename, self._hashing.size, self._hashing.sha.hexdigest())
        return self.record

    def keep_plain(self, path: Path) -> None:
        """Keep the unencrypted copy as ``path`` (with ``path.json`` describing it), replacing an older one."""
        if self._plain is None:
            return
        record = {"backup_id": self.backup_id, "size": self._plain_hashing.size,
                  "sha256": self._plain_hashing.sha.hexdigest()}
        os.replace(self._plain.name, path)
        self._plain = None
        meta = path.with_name(path.name + ".json")
        tmp = meta.with_name("." + meta.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, meta)

    def store(self, target) -> None:
        """Copy the closed index to ``target`` atomically under its name."""
        writer = target.open_write(self.record.file)
        try:
            self.spool.seek(0)
            while chunk := self.spool.read(1024 * 1024):
                writer.write(chunk)
            writer.commit()
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception) and not isinstance(exc, EterniaBackupError):
                raise target.error_for("write", exc, self.record.file) from exc
            raise

    def discard(self) -> None:
        if self._encrypting is not None:
            self._encrypting.abort()
        self.spool.close()
        if self._plain is not None:
            self._plain.close()
            try:
                os.unlink(self._plain.name)
            except FileNotFoundError:
                pass
            self._plain = None


class LocalIndexFile:
    """The kept unencrypted copy of the newest index (see :class:`IndexWriter`), read like a target's file."""

    def __init__(self, path: Path):
        self.path = path

    def record(self) -> tuple[str, FileRecord] | None:
        """(backup id, record) of the kept copy, or None when there is none."""
        try:
            meta = json.loads(self.path.with_name(self.path.name + ".json").read_text())
            return meta["backup_id"], FileRecord(self.path.name, int(meta["size"]), str(meta["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def open_read(self, filename: str):
        return open(self.path, "rb")

    def error_for(self, action: str, exc: BaseException, filename: str | None = None):
        from .errors import StorageError

        return StorageError(f"cannot {action} the local copy of the file index {self.path}: {exc}")

    def describe(self) -> str:
        return f"the local copy of the file index {self.path}"


def _open(target, record: FileRecord):
    """The stored index, opened for reading (a store's errors become StorageErrors)."""
    try:
        return target.open_read(record.file)
    except EterniaBackupError:
        raise
    except OSError as exc:
        raise target.error_for("read", exc, record.file) from exc


class IndexReader:
    """Reads one stored index forward: its sources' headers and entries, in order.

    Callers check the stored bytes first (:func:`check_stored`): this decodes them.
    """

    def __init__(self, target, record: FileRecord, identities: list | None, where: str):
        self.where = where
        self.record = record
        self._raw = source = _open(target, record)
        self._decrypting = None
        if identities is not None:
            from .encryption import DecryptingReader

            self._decrypting = source = DecryptingReader(self._raw, identities)
        stream = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False)
        self._text = io.BufferedReader(stream, 1024 * 1024)
        self._pending: Any = None
        header = self._next()
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") not in READ_VERSIONS:
            raise IntegrityError(f"{where}: file index {record.file} is not an index this version reads")
        self.backup_id = header.get("backup_id")

    def _next(self) -> Any:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        try:
            line = self._text.readline()
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{self.where}: file index {self.record.file} is damaged: {exc}") from exc
        if not line:
            return None
        try:
            return json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError as exc:
            raise IntegrityError(f"{self.where}: file index {self.record.file} is damaged: {exc}") from exc

    def sections(self) -> Iterator[tuple[dict, Iterator[list]]]:
        """(header, entries) per source, in order; consume the entries before the next section."""
        while True:
            header = self._next()
            while isinstance(header, list):  # the rest of a section the caller did not read
                header = self._next()
            if header is None:
                return
            if not isinstance(header, dict) or "source" not in header:
                raise IntegrityError(f"{self.where}: file index {self.record.file} is damaged (entry outside a source)")
            yield header, self._entries()

    def _entries(self) -> Iterator[list]:
        while True:
            item = self._next()
            if item is None:
                return
            if isinstance(item, dict):
                self._pending = item
                return
            yield item

    def close(self) -> None:
        if self._decrypting is not None:
            self._decrypting.close()
        try:
            self._raw.close()
        except OSError:
            pass


class Cursor:
    """One source's entries of an index, walked forward in path order (a merge with a walk)."""

    def __init__(self, entries: Iterator[list]):
        self._entries = entries
        self._advance()

    def _advance(self) -> None:
        self.current = next(self._entries, None)
        self.current_key = path_key(self.current[PATH]) if self.current is not None else None

    def seek(self, path: str, passed=None) -> list | None:
        """The entry for ``path``, or None; entries before it are handed to ``passed``."""
        key = path_key(path)
        while self.current is not None and self.current_key < key:
            if passed is not None:
                passed(self.current)
            self._advance()
        if self.current is not None and self.current_key == key:
            found = self.current
            self._advance()
            return found
        return None

    def rest(self, passed) -> None:
        while self.current is not None:
            passed(self.current)
            self._advance()


def check_stored(target, record: FileRecord, where: str) -> None:
    """Hash a stored index and compare it with its manifest record (size, sha256); IntegrityError if they differ.

    The lines are not decoded here: the readers do that, and a damaged stream fails them too.
    """
    with _open(target, record) as raw:
        hashing = HashingReader(raw)
        hashing.drain()
    if hashing.size != record.size or hashing.sha.hexdigest() != record.sha256:
        raise IntegrityError(f"{where}: file index {record.file} does not match its manifest "
                             "(size or sha256 differ: it is damaged)")
