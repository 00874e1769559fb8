"""A copy of a remote target's manifests in one object beside them, so a cold listing costs two requests.

The local manifest cache (:mod:`.manifest_cache`) saves requests on a machine
that listed before; a new container, a CronJob's fresh pod or a second host
starts empty and would read every manifest, one request each (about 6 s per
1,000 on loopback, most of it botocore's work per request). This index,
``<series>.index.json.zst`` on the target, holds the manifests' bytes keyed
like the local cache (name, size and ETag or mtime). It is only a cache:

* an entry is used only when its key equals the listing's for that manifest,
  and, where the ETag is the MD5 of the object (a single PUT), when its bytes
  have that MD5; anything else is read from the manifest itself;
* entries for manifests no longer listed are ignored;
* an index that is missing, unreadable or of another version counts as empty.

A listing rewrites the index (one PUT, best effort: a read-only credential only
costs requests later) when it had to read ``REWRITE_AFTER`` or more manifests
itself or when as many entries were stale; so the requests of a cold listing
stay about the same whatever the number of backups. Two writers at once each
write a complete index; either is correct. The manifests stay the truth.
"""

from __future__ import annotations

import json
import logging

import zstandard

from .manifest_cache import bytes_match, key_of
from .providers import LocalPaths, StoredFile, Target

log = logging.getLogger("eternia_backup.catalog")

INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json.zst"
#: manifests read one by one (or stale entries) before the index is rewritten
REWRITE_AFTER = 10


def index_name(series: str) -> str:
    return series + INDEX_SUFFIX


def wants_index(target: Target) -> bool:
    """Remote targets only: a local directory lists and reads its manifests at disk speed."""
    return not isinstance(target, LocalPaths)


class ManifestIndex:
    """The index object of one series on one target, as listed in ``files``."""

    def __init__(self, target: Target, series: str, files: dict[str, StoredFile]):
        self.target = target
        self.series = series
        self.name = index_name(series)
        self.stored = files.get(self.name)
        self.entries: dict[str, dict] = {}
        self.loaded = False
        self.readable = self.stored is not None

    def load(self) -> None:
        """Read the index once (one request); a bad or missing one counts as empty."""
        if self.loaded or self.stored is None:
            return
        self.loaded = True
        try:
            raw = json.loads(zstandard.ZstdDecompressor().decompress(
                self.target.read_bytes(self.name), max_output_size=256 * 1024 * 1024))
            if raw.get("version") != INDEX_VERSION or raw.get("series") != self.series:
                raise ValueError(f"version {raw.get('version')!r} of series {raw.get('series')!r}")
            self.entries = {k: v for k, v in raw["entries"].items()
                            if isinstance(v, dict) and isinstance(v.get("data"), str)}
        except Exception as exc:  # a store's error or a damaged object: read the manifests instead
            self.readable = False
            log.info("target %r: manifest index %s not used (%s); reading the manifests",
                     self.target.name, self.name, exc)

    def get(self, stored: StoredFile) -> bytes | None:
        entry = self.entries.get(stored.name)
        if entry is None or entry.get("key") != key_of(stored):
            return None
        data = entry["data"].encode()
        if not bytes_match(stored, data):
            return None
        return data

    def maybe_save(self, manifests: dict[str, tuple[StoredFile, bytes]], read_one_by_one: int) -> None:
        """Rewrite the index when it saved too little: missing, stale, or many manifests read one by one."""
        if len(manifests) < REWRITE_AFTER and self.stored is None:
            return  # a handful of backups: not worth an object
        stale = sum(1 for n in self.entries if n not in manifests)
        if self.stored is not None and self.readable and read_one_by_one < REWRITE_AFTER and stale < REWRITE_AFTER:
            return
        entries = {name: {"key": key_of(stored), "data": data.decode()}
                   for name, (stored, data) in manifests.items() if key_of(stored) is not None}
        body = json.dumps({"version": INDEX_VERSION, "series": self.series, "entries": entries}).encode()
        try:
            self.target.write_bytes(self.name, zstandard.ZstdCompressor(level=3).compress(body))
            log.debug("target %r: manifest index %s rewritten (%d manifests)", self.target.name, self.name,
                      len(entries))
        except Exception as exc:  # read-only credentials, a passing error: only requests are lost
            log.info("target %r: could not write the manifest index %s: %s", self.target.name, self.name, exc)
