"""Listing many backups in S3: one LIST, not one request per backup, and always what the manifests say.

A counting HTTP proxy sits between the real CLI and the real SeaweedFS server,
so the tests count the requests a command makes. 200 backups are made from one
real backup by copying its archive and rewriting its manifest under new ids
(the server cannot tell them from backups made one by one). Two caches save
requests: the manifests already read on this machine (the state directory),
and the index object beside the manifests for a machine that has not listed yet.
"""

from __future__ import annotations

import os
import json
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from eternia_backup.manager import BackupManager

from eternia_backup.testing.s3proxy import CountingProxy

BACKUPS = 200

pytestmark = pytest.mark.slow  # S3 scale: hundreds of objects and CLI runs per test


@pytest.fixture
def proxy(s3_server):
    p = CountingProxy(s3_server.endpoint)
    yield p
    p.close()


@pytest.fixture
def many(app, s3_env, s3_bucket, s3_server, proxy):
    """A config whose only target is S3 (through the proxy), holding BACKUPS backups."""
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "sources": [{"type": "directory", "name": "files", "path": "state/files"}],
        "targets": [{"name": "cloud", "url": f"s3://{s3_bucket}/prod",
                     "options": {"client_kwargs": {"endpoint_url": proxy.endpoint}}}],
        "retention_days": 100000}}))
    made = run_cli("create", "--json", config=config)
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)["backup_id"]
    fs = s3_server.client()
    manifest_key = next(k for k in fs.find(s3_bucket) if k.endswith(".manifest.json"))
    archive_key = next(k for k in fs.find(s3_bucket) if ".tar" in k and not k.rsplit("/", 1)[1].startswith("."))
    manifest = fs.cat_file(manifest_key).decode()
    for i in range(1, BACKUPS):
        new = f"2020{(i // 28) % 12 + 1:02d}{i % 28 + 1:02d}T{i % 24:02d}0000Z-{uuid.uuid4().hex[:6]}"
        fs.call_s3("copy_object", Bucket=s3_bucket, Key=archive_key.split("/", 1)[1].replace(first, new),
                   CopySource={"Bucket": s3_bucket, "Key": archive_key.split("/", 1)[1]})
        fs.pipe_file(manifest_key.replace(first, new), manifest.replace(first, new).encode())
    proxy.take()
    return config, fs, manifest_key.rsplit("/", 1)[0]


INDEX = "eternia-backup.index.json.zst"


def index_requests(proxy_requests: list[tuple[str, str]], method: str) -> int:
    return sum(1 for m, path in proxy_requests if m == method and path.split("?")[0].endswith(INDEX))


def fresh_machine(tmp_path: Path) -> dict:
    """The environment of a machine that never listed this bucket: an empty state directory."""
    d = tmp_path / f"machine-{uuid.uuid4().hex[:6]}"
    return {"XDG_STATE_HOME": str(d)}


def ids(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return sorted(b["backup_id"] for b in json.loads(proc.stdout)["backups"])


def manifest_gets(counts: Counter) -> int:
    return counts[("GET", "manifest")] + counts[("HEAD", "manifest")]


def test_list_reads_each_manifest_once_then_only_lists(many, proxy):
    config, _, _ = many
    first = ids(run_cli("list", "--json", config=config))
    assert len(first) == BACKUPS
    counts = proxy.take()
    # one GET each, no HEAD before it; but the first backup's own manifest was read already: its
    # create listed the target once (for the metrics' counts) and cached it
    assert manifest_gets(counts) == BACKUPS - 1
    assert counts[("HEAD", "manifest")] == 0

    for command in (["list", "--json"], ["status", "--json"], ["cleanup", "--dry-run", "--json"]):
        proc = run_cli(*command, config=config)
        assert proc.returncode == 0, proc.stderr
        counts = proxy.take()
        assert manifest_gets(counts) == 0, (command, counts)
        assert sum(counts.values()) <= 6, (command, counts)  # the bucket check, LIST pages, unfinished uploads
    assert ids(run_cli("list", "--json", config=config)) == first


def test_the_listing_follows_the_manifests_not_the_cache(many, proxy):
    config, fs, prefix = many
    before = ids(run_cli("list", "--json", config=config))
    proxy.take()

    # A manifest removed by someone else: gone from the listing.
    gone = before[3]
    fs.rm_file(next(k for k in fs.find(prefix) if gone in k and k.endswith(".manifest.json")))
    # A manifest rewritten in place (new bytes, same name): read again, and its problem shown.
    damaged = before[5]
    key = next(k for k in fs.find(prefix) if damaged in k and k.endswith(".manifest.json"))
    raw = json.loads(fs.cat_file(key))
    raw["archive"]["size"] += 1
    fs.pipe_file(key, json.dumps(raw).encode())
    # A new backup: listed.
    made = run_cli("create", "--json", config=config)
    assert made.returncode == 0, made.stderr
    new = json.loads(made.stdout)["backup_id"]

    listed = json.loads(run_cli("list", "--json", config=config).stdout)["backups"]
    assert sorted(b["backup_id"] for b in listed) == sorted(set(before) - {gone} | {new})
    assert next(b for b in listed if b["backup_id"] == damaged)["state"] == "damaged"
    assert next(b for b in listed if b["backup_id"] == new)["state"] == "ok"
    assert manifest_gets(proxy.take()) <= 2  # the rewritten manifest and the new one, once each
    assert ids(run_cli("list", "--json", config=config)) == sorted(set(before) - {gone} | {new})
    assert manifest_gets(proxy.take()) == 0


def test_a_corrupted_or_missing_cache_is_rebuilt_from_the_manifests(many, proxy):
    config, fs, prefix = many
    before = ids(run_cli("list", "--json", config=config))
    cache_files = list(Path(os.environ["XDG_STATE_HOME"]).glob("**/manifest-cache/*.json"))
    assert cache_files, "no cache written"
    for f in cache_files:
        f.write_text('{"version": 1, "url": "s3://x", "entries": {"a": 1}')  # cut off
    fs.rm_file(f"{prefix}/{INDEX}")  # and no index to fall back on
    proxy.take()
    assert ids(run_cli("list", "--json", config=config)) == before
    assert manifest_gets(proxy.take()) == BACKUPS
    for f in cache_files:
        f.unlink()
    fs.rm_file(f"{prefix}/{INDEX}")
    assert ids(run_cli("list", "--json", config=config)) == before
    assert manifest_gets(proxy.take()) == BACKUPS
    assert ids(run_cli("list", "--json", config=config)) == before
    assert manifest_gets(proxy.take()) == 0


def test_a_new_machine_lists_from_the_index_object(many, proxy, tmp_path):
    """The first listing writes the index beside the manifests; a machine with an empty cache reads it."""
    config, fs, prefix = many
    before = ids(run_cli("list", "--json", config=config))
    assert index_requests(proxy.requests, "PUT") == 1
    assert fs.exists(f"{prefix}/{INDEX}")
    proxy.take()
    for command in (["list", "--json"], ["status", "--json"], ["cleanup", "--dry-run", "--json"]):
        proc = run_cli(*command, config=config, env=fresh_machine(tmp_path))
        assert proc.returncode == 0, proc.stderr
        requests = list(proxy.requests)
        counts = proxy.take()
        assert manifest_gets(counts) == 0, (command, counts)
        assert index_requests(requests, "GET") == 1 and index_requests(requests, "PUT") == 0
        assert sum(counts.values()) <= 7, (command, counts)  # the index, the bucket check, LIST pages, uploads
        if command[0] == "list":
            assert ids(proc) == before


def test_the_index_object_is_only_a_cache(many, proxy, tmp_path):
    """Forged or damaged entries are not believed: the manifests are read instead, and the index rewritten."""
    import zstandard

    config, fs, prefix = many
    before = json.loads(run_cli("list", "--json", config=config).stdout)["backups"]
    raw = json.loads(zstandard.ZstdDecompressor().decompress(fs.cat_file(f"{prefix}/{INDEX}")))
    name, entry = sorted(raw["entries"].items())[0]
    forged = json.loads(entry["data"])
    forged["archive"]["size"] += 1  # the listing would call that backup damaged
    entry["data"] = json.dumps(forged)[: len(entry["data"])].ljust(len(entry["data"]))  # same size
    fs.pipe_file(f"{prefix}/{INDEX}", zstandard.ZstdCompressor().compress(json.dumps(raw).encode()))
    proxy.take()
    listed = json.loads(run_cli("list", "--json", config=config, env=fresh_machine(tmp_path)).stdout)["backups"]
    assert [(b["backup_id"], b["state"]) for b in listed] == [(b["backup_id"], b["state"]) for b in before]
    assert manifest_gets(proxy.take()) == 1  # the forged one, from its manifest

    fs.pipe_file(f"{prefix}/{INDEX}", b"not an index at all")
    listed = json.loads(run_cli("list", "--json", config=config, env=fresh_machine(tmp_path)).stdout)["backups"]
    assert [(b["backup_id"], b["state"]) for b in listed] == [(b["backup_id"], b["state"]) for b in before]
    requests = list(proxy.requests)
    assert manifest_gets(proxy.take()) == BACKUPS
    assert index_requests(requests, "PUT") == 1  # rebuilt from the manifests
    run_cli("list", "--json", config=config, env=fresh_machine(tmp_path))
    assert manifest_gets(proxy.take()) == 0


def test_the_index_follows_new_and_removed_backups(many, proxy, tmp_path):
    config, fs, prefix = many
    before = ids(run_cli("list", "--json", config=config))
    # Three new backups: a new machine reads just those three manifests, and leaves the index as it is.
    made = [json.loads(run_cli("create", "--json", config=config).stdout)["backup_id"] for _ in range(3)]
    proxy.take()
    assert ids(run_cli("list", "--json", config=config, env=fresh_machine(tmp_path))) == sorted(before + made)
    requests = list(proxy.requests)
    assert manifest_gets(proxy.take()) == 3
    assert index_requests(requests, "PUT") == 0
    # Twelve removed (by hand): the listing follows the manifests, and the stale index is rewritten.
    gone = before[:12]
    for backup_id in gone:
        fs.rm_file(next(k for k in fs.find(prefix) if backup_id in k and k.endswith(".manifest.json")))
    expected = sorted(set(before + made) - set(gone))
    assert ids(run_cli("list", "--json", config=config, env=fresh_machine(tmp_path))) == expected
    requests = list(proxy.requests)
    proxy.take()
    assert index_requests(requests, "PUT") == 1
    assert ids(run_cli("list", "--json", config=config, env=fresh_machine(tmp_path))) == expected
    assert manifest_gets(proxy.take()) == 0


def test_a_dry_run_writes_no_index(many, proxy, tmp_path):
    config, fs, prefix = many
    proc = run_cli("cleanup", "--dry-run", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    assert index_requests(proxy.requests, "PUT") == 0
    assert not fs.exists(f"{prefix}/{INDEX}")


def test_concurrent_listings_agree_and_leave_a_usable_cache(many, proxy):
    config, _, _ = many
    results = [None] * 4

    def run(i):
        results[i] = run_cli("list", "--json", config=config)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listings = [ids(r) for r in results]
    assert all(len(x) == BACKUPS for x in listings) and all(x == listings[0] for x in listings)
    proxy.take()
    assert ids(run_cli("list", "--json", config=config)) == listings[0]
    assert manifest_gets(proxy.take()) == 0


def test_a_scheduled_runs_bookkeeping_reads_no_manifest_again(many, proxy):
    """One scheduled run (is there a backup for this slot? the backup; retention) on a machine that
    listed before reads no stored manifest again (only the new one, once), so its requests do not
    grow with the number of backups."""
    config, _, _ = many
    before = ids(run_cli("list", "--json", config=config))
    assert len(before) == BACKUPS
    proxy.take()
    manager = BackupManager.from_config(config)
    outcome = manager.run_scheduled(datetime.now(timezone.utc))
    assert outcome.status == "ok", outcome.message
    read = [path for method, path in proxy.requests if method in ("GET", "HEAD") and ".manifest.json" in path]
    counts = proxy.take()
    [new] = [b.backup_id for b in manager.list_backups() if b.backup_id not in before]
    assert len(read) <= 1 and all(new in path for path in read), read  # only the new backup's, new here
    # the upload (marker, multipart, parts, size check, manifest) and a few LISTs; not one per backup
    assert sum(counts.values()) < 40, counts
    proxy.take()
    skipped = manager.run_scheduled(datetime.now(timezone.utc) - timedelta(minutes=1))
    assert skipped.status == "skipped" and "already exists" in skipped.message
    counts = proxy.take()
    assert manifest_gets(counts) == 0 and sum(counts.values()) <= 6, counts
    assert len(ids(run_cli("list", "--json", config=config))) == BACKUPS + 1
