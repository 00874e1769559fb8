"""Manifests already read, kept on this machine so that listing a remote target costs one LIST.

A manifest is written once and never changed, so a listed manifest whose name,
size and ETag (or, where the store has no ETag, modification time) equal a
cached one's has the cached bytes: no request is needed. Anything else (a new
manifest, one rewritten under the same name, a cache file that is missing,
unreadable or from another version) is read from the target again; the target's
manifests stay the truth, the cache only saves requests. Entries for manifests
no longer listed are dropped when the cache is saved.

One JSON file per target in the state directory (0600, written atomically):
two processes saving at once each write a complete file, and either is correct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .fsutil import make_private_dirs
from .providers import StoredFile

log = logging.getLogger("eternia_backup.catalog")

CACHE_VERSION = 1


def key_of(stored: StoredFile) -> list | None:
    """What must match for cached bytes to be the stored file's; None when the listing cannot tell."""
    if stored.size is None or (stored.etag is None and stored.mtime is None):
        return None
    return [stored.size, stored.etag, None if stored.etag else stored.mtime]


def bytes_match(stored: StoredFile, data: bytes) -> bool:
    """Whether ``data`` can be the stored file's bytes: its size, and its MD5 where the ETag is one.

    A single PUT's ETag is the MD5 of its bytes; a multipart or KMS-encrypted
    object's is not, and then the size (with the ETag in the key) is all we have.
    """
    if len(data) != stored.size:
        return False
    etag = (stored.etag or "").strip('"')
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
    return True


class ManifestCache:
    """The cached manifests of one target (``url``), in ``directory``."""

    def __init__(self, directory: Path, url: str):
        self.path = Path(directory) / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")
        self.url = url
        self.entries: dict[str, dict] = {}
        self.changed = False
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") == CACHE_VERSION and raw.get("url") == self.url:
                self.entries = {k: v for k, v in raw["entries"].items()
                                if isinstance(v, dict) and isinstance(v.get("data"), str)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            log.info("manifest cache %s is unreadable (%s); reading the manifests again", self.path, exc)
            self.changed = True

    def get(self, stored: StoredFile) -> bytes | None:
        entry = self.entries.get(stored.name)
        key = key_of(stored)
        if entry is None or key is None or entry.get("key") != key:
            return None
        return entry["data"].encode()

    def put(self, stored: StoredFile, data: bytes) -> None:
        key = key_of(stored)
        if key is None or not bytes_match(stored, data):
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return  # not a manifest we could use anyway
        self.entries[stored.name] = {"key": key, "data": text}
        self.changed = True

    def save(self, listed: set[str]) -> None:
        """Write the cache, keeping only manifests still listed; a failure only costs requests later."""
        stale = [n for n in self.entries if n not in listed]
        for n in stale:
            del self.entries[n]
        if not (self.changed or stale):
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            make_private_dirs(self.path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "url": self.url, "entries": self.entries}, f)
            os.replace(tmp, self.path)
            self.changed = False
        except OSError as exc:
            log.info("could not save the manifest cache %s: %s", self.path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
