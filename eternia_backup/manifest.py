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
FORMAT_VERSION = 1
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
    format_version: int = FORMAT_VERSION

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
            "sources": [dataclasses.asdict(s) for s in self.sources],
            "archive": dataclasses.asdict(self.archive),
            "encryption": self.encryption,
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
            if raw.get("format_version") != FORMAT_VERSION:
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
                             warning_count=_int(s.get("warning_count", 0)))
                for s in raw["sources"]
            )
            return cls(
                backup_id=backup_id, name=_str(raw["name"]),
                created_at=parse_time(raw["created_at"]), finished_at=parse_time(raw["finished_at"]),
                environment=_str(raw["environment"]), host=_str(raw["host"]),
                framework_version=_str(raw["framework_version"]), sources=sources,
                archive=record, encryption=raw.get("encryption"),
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
