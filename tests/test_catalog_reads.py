"""How a listing reads manifests: at most ``Target.read_concurrency`` at once, through the cache.

A real local store behind a target that counts what it is asked and from how
many threads at once (a store that allows one connection per client must never
see two reads in flight).
"""

from __future__ import annotations

import threading
import time

import pytest

from eternia_backup import BackupManager
from eternia_backup.builtin.local_target import LocalTarget
from eternia_backup.catalog import list_target
from eternia_backup.config import parse_config
from eternia_backup.manifest_cache import ManifestCache


class CountingTarget(LocalTarget):
    """The local target, seen as remote (no LocalPaths), counting reads in flight."""

    def __init__(self, inner: LocalTarget, concurrency: int):
        self.__dict__.update(inner.__dict__)
        self.read_concurrency = concurrency
        self.reads = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def read_bytes(self, filename):
        with self._lock:
            self.reads += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.02)  # a request's round trip
            return super().read_bytes(filename)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Six real backups of one small source on a local target."""
    app = tmp_path_factory.mktemp("app")
    (app / "data").mkdir()
    (app / "data" / "f.txt").write_text("x")
    mgr = BackupManager(parse_config({"storage_path": "backups"}, base_dir=app))
    for _ in range(6):
        mgr.create_backup()
    return mgr.targets[0]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_manifests_are_read_at_most_read_concurrency_at_once(store, concurrency):
    target = CountingTarget(store, concurrency)
    listing = list_target(target, "eternia-backup")
    assert len(listing.copies) == 6 and all(c.ok for c in listing.copies)
    assert target.reads == 6
    if concurrency == 1:
        assert target.most_in_flight == 1
    else:
        assert 1 < target.most_in_flight <= concurrency


def test_a_cached_manifest_is_not_read_again_and_a_changed_one_is(store, tmp_path):
    target = CountingTarget(store, 4)
    cache = ManifestCache(tmp_path, target.url)
    first = list_target(target, "eternia-backup", cache)
    assert target.reads == 6
    again = list_target(target, "eternia-backup", ManifestCache(tmp_path, target.url))
    assert target.reads == 6  # a new process: from the saved cache
    assert [c.backup_id for c in again.copies] == [c.backup_id for c in first.copies]

    changed = first.copies[2].manifest_file  # rewritten in place: new size and mtime
    target.write_bytes(changed, target.read_bytes(changed) + b"\n")
    target.reads = 0
    third = list_target(target, "eternia-backup", ManifestCache(tmp_path, target.url))
    assert target.reads == 1  # only the rewritten manifest
    assert all(c.ok for c in third.copies)
