"""The manifest: the JSON record that makes a backup exist.

It is written last, beside the archive, and is what list, verify, retention and
restore read. It never holds a secret: sources are described by their plugins'
``describe()``, and encryption by public recipients only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timezone
from typing import Any

from .errors import IntegrityError

FORMAT = "eternia-backup-manifest"
#: full backups keep version 1, which every release reads; an incremental backup is
#: version 3 (2 before files that only grew were stored as appended parts), so that
#: a release that knows no chains, or no appended parts, refuses it instead of
#: restoring only part of the changes
FORMAT_VERSION = 1
INCREMENTAL_FORMAT_VERSION = 3
INCREMENTAL_VERSIONS = (2, INCREMENTAL_FORMAT_VERSION)
SUPPORTED_VERSIONS = (FORMAT_VERSION, *INCREMENTAL_VERSIONS)
MANIFEST_SUFFIX = ".manifest.json"
_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6,}$")
# <name>-<YYYYmmddTHHMMSSZ>-<hex>.<archiver ext>[.<compression ext>][.age]
ARCHIVE_RE = re.compile(
    r"^(?P<stem>.+-\d{8}T\d{6}Z-[0-9a-f]{6,})\.(?P<ext>(?!manifest\.json$)[A-Za-z0-9]+(\.[A-Za-z0-9]+)*)$"
)
MANIFEST_RE = re.compile(r"^(?P<stem>.+-(?P<id>\d{8}T\d{6}Z-[0-9a-f]{6,}))" + re.escape(MANIFEST_SUFFIX) + "$")


def new_backup_id(now: datetime, random_hex: str) -> str:
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{random_hex}"


def is_backup_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def format_time(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A time as :func:`format_time` writes it (``2026-12-07T04:17:35.123456Z``); ValueError otherwise.
    ``fromisoformat`` first: strptime was a tenth of ``status`` with 1,000 backups."""
    if len(text) == 27 and text[-1] == "Z" and text[10] == "T" and text[19] == ".":
        try:
            return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class SourceRecord:
    name: str
    type: str
    size: int
    entries: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: what could not be archived faithfully: the first ones as {path, problem}, and how many in all
    warnings: list[dict[str, str]] = dataclasses.field(default_factory=list)
    warning_count: int = 0
    #: in a backup that records a file index: ``{"mode": "changes" | "whole", "changed": n,
    #: "unchanged": n, "removed": n, "removed_paths": [first ones]}``; "whole" for a source
    #: archived entirely (it cannot be diffed, or there was no base for it)
    increment: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """A stored object of the backup beside its archive (the file index)."""

    file: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ArchiveRecord:
    file: str
    format: str
    compression: str
    size: int
    sha256: str
    content_size: int  # bytes of the uncompressed archive stream


@dataclasses.dataclass(frozen=True)
class Manifest:
    backup_id: str
    name: str
    created_at: datetime
    finished_at: datetime
    environment: str
    host: str
    framework_version: str
    sources: tuple[SourceRecord, ...]
    archive: ArchiveRecord
    encryption: dict[str, Any] | None = None
    #: "full" or "incremental"; an incremental holds only what changed since ``parent``
    kind: str = "full"
    parent: str | None = None
    #: the backups this one needs, oldest (the full one) first, ending with ``parent``
    chain: tuple[str, ...] = ()
    #: the per-source file index recorded with this backup (the next incremental's base)
    files_index: FileRecord | None = None

    def public(self) -> "Manifest":
        """What is stored beside the archive: an encrypted backup's manifest is plain text, so it keeps
        only what list, retention and verify need (no source details, no paths); the rest is inside
        the encrypted archive (``.eternia/sources.json``)."""
        if not self.encryption:
            return self
        sources = tuple(dataclasses.replace(
            s, details={}, warnings=[],
            increment=None if s.increment is None else {**s.increment, "removed_paths": []})
            for s in self.sources)
        return dataclasses.replace(self, sources=sources)

    @property
    def format_version(self) -> int:
        return INCREMENTAL_FORMAT_VERSION if self.kind == "incremental" else FORMAT_VERSION

    @property
    def is_incremental(self) -> bool:
        return self.kind == "incremental"

    @property
    def filename(self) -> str:
        return manifest_name_for(self.archive.file)

    @property
    def total_source_size(self) -> int:
        return sum(s.size for s in self.sources)

    @property
    def warning_count(self) -> int:
        return sum(s.warning_count for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.kind != "full" or self.files_index is not None:
            extra = {"kind": self.kind, "parent": self.parent, "chain": list(self.chain),
                     "files_index": dataclasses.asdict(self.files_index) if self.files_index else None}
        sources = []
        for s in self.sources:
            d = dataclasses.asdict(s)
            if d["increment"] is None:
                del d["increment"]
            sources.append(d)
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "backup_id": self.backup_id,
            "name": self.name,
            "created_at": format_time(self.created_at),
            "finished_at": format_time(self.finished_at),
            "environment": self.environment,
            "host": self.host,
            "framework_version": self.framework_version,
            "sources": sources,
            "archive": dataclasses.asdict(self.archive),
            "encryption": self.encryption,
            **extra,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> "Manifest":
        """Parse and check a manifest; IntegrityError names ``where`` and the problem."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"manifest {where} does not parse as JSON: {exc}") from None
        try:
            if raw.get("format") != FORMAT:
                raise ValueError(f"not an eternia-backup manifest (format {raw.get('format')!r})")
            if raw.get("format_version") not in SUPPORTED_VERSIONS:
                raise ValueError(
                    f"format_version {raw.get('format_version')!r} is not supported by this version; upgrade eternia-backup"
                )
            archive = raw["archive"]
            record = ArchiveRecord(
                file=_str(archive["file"]), format=_str(archive["format"]),
                compression=_str(archive["compression"]), size=_int(archive["size"]),
                sha256=_sha(archive["sha256"]), content_size=_int(archive["content_size"]),
            )
            if "/" in record.file or record.file.startswith(".") or not ARCHIVE_RE.match(record.file):
                raise ValueError(f"archive file name {record.file!r} is not a backup archive name")
            backup_id = _str(raw["backup_id"])
            if not is_backup_id(backup_id):
                raise ValueError(f"backup_id {backup_id!r} is malformed")
            sources = tuple(
                SourceRecord(name=_str(s["name"]), type=_str(s["type"]), size=_int(s["size"]),
                             entries=_int(s["entries"]), details=dict(s.get("details") or {}),
                             warnings=_warnings(s.get("warnings") or []),
                             warning_count=_int(s.get("warning_count", 0)),
                             increment=_increment(s.get("increment")))
                for s in raw["sources"]
            )
            kind = raw.get("kind", "full")
            if kind not in ("full", "incremental"):
                raise ValueError(f"kind {kind!r} is neither 'full' nor 'incremental'")
            if (kind == "incremental") != (raw.get("format_version") in INCREMENTAL_VERSIONS):
                raise ValueError(f"a {kind} backup cannot have format_version {raw.get('format_version')!r}")
            chain = tuple(_str(c) for c in raw.get("chain") or ())
            parent = raw.get("parent")
            if kind == "incremental":
                if not chain or parent != chain[-1] or not all(is_backup_id(c) for c in chain):
                    raise ValueError("an incremental backup needs a chain of backup ids ending with its parent")
            elif parent is not None or chain:
                raise ValueError("a full backup has no parent")
            index = raw.get("files_index")
            files_index = None
            if index is not None:
                files_index = FileRecord(file=_str(index["file"]), size=_int(index["size"]),
                                         sha256=_sha(index["sha256"]))
                if "/" in files_index.file or archive_stem(files_index.file) != archive_stem(record.file):
                    raise ValueError(f"file index name {files_index.file!r} does not belong to {record.file!r}")
            if kind == "incremental" and files_index is None:
                raise ValueError("an incremental backup has no file index")
            return cls(
                backup_id=backup_id, name=_str(raw["name"]),
                created_at=parse_time(raw["created_at"]), finished_at=parse_time(raw["finished_at"]),
                environment=_str(raw["environment"]), host=_str(raw["host"]),
                framework_version=_str(raw["framework_version"]), sources=sources,
                archive=record, encryption=raw.get("encryption"),
                kind=kind, parent=parent, chain=chain, files_index=files_index,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise IntegrityError(f"manifest {where} is invalid: {what}") from None


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise TypeError(f"expected a whole number >= 0, got {v!r}")
    return v


def _warnings(v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of warnings, got {v!r}")
    return [{"path": _str(w["path"]), "problem": _str(w["problem"])} for w in v]


def _increment(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or v.get("mode") not in ("changes", "whole"):
        raise TypeError(f"expected an increment record, got {v!r}")
    for key in ("changed", "unchanged", "removed", "appended"):
        _int(v.get(key, 0))
    return dict(v)


def _sha(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
        raise ValueError(f"sha256 {v!r} is not 64 hex digits")
    return v


def manifest_name_for(archive_file: str) -> str:
    m = ARCHIVE_RE.match(archive_file)
    stem = m["stem"] if m else archive_file.split(".tar", 1)[0]
    return stem + MANIFEST_SUFFIX


def archive_stem(filename: str) -> str | None:
    """The ``<name>-<id>`` part of an archive or manifest file name, else None."""
    m = MANIFEST_RE.match(filename) or ARCHIVE_RE.match(filename)
    return m["stem"] if m else None
