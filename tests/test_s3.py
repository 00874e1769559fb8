"""Cloud backups on S3, against a real S3 server (SeaweedFS) with enforced identities.

The original description's cloud_backup section as written; every failure of the cloud gives exit
status 1 and one line saying what to check, and loses nothing; an interrupted
multipart upload never becomes an object and is cleaned up.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from eternia_backup.builtin.s3_target import MAX_PART, MAX_PARTS, max_archive_size, part_size
from conftest import run_cli
from eternia_backup.testing import ADMIN, READER, SeaweedFS

SEED_SECTION = """
backup:
  enabled: true                # Enable or disable automated backups
  frequency: daily             # Backup frequency: hourly, daily, weekly, monthly
  retention_days: 7            # Number of days to keep backups (0 = keep forever)
  storage_path: backups        # Local directory to store backups

  cloud_backup:
    enabled: true              # Enable or disable cloud backups
    provider: aws              # Cloud provider (currently only 'aws' is supported)
    bucket: {bucket}    # S3 bucket name
    region: us-west-2          # AWS region
    endpoint_url: {endpoint}
"""


def cloud_config(app: Path, bucket: str, endpoint: str, **cloud) -> Path:
    section = {
        "storage_path": "backups",
        "retention_days": 7,
        "sources": [{"type": "directory", "name": "files", "path": "state/files"},
                    {"type": "sqlite", "name": "db", "path": "state/app.db"}],
        "cloud_backup": {"enabled": True, "provider": "aws", "bucket": bucket, "region": "us-west-2",
                         "endpoint_url": endpoint, **cloud},
    }
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def creds(key=ADMIN, **extra) -> dict:
    return {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1], **extra}


def keys(server, bucket) -> list[str]:
    return sorted(server.client().find(bucket))


def local_backups(app: Path) -> list[str]:
    d = app / "backups"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def assert_one_clean_line(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_seed_config_verbatim_puts_backups_under_bucket_and_environment(app, s3_server, cli, tmp_path):
    bucket = "eternia-backups"
    if not s3_server.client().exists(bucket):
        s3_server.make_bucket(bucket)
    (app / "data").mkdir()
    (app / "data" / "settings.json").write_text('{"a": 1}')
    config = app / "eternia-backup.yaml"
    config.write_text(SEED_SECTION.format(bucket=bucket, endpoint=s3_server.endpoint))
    proc = cli("create", config=config, env=creds(ETERNIA_ENV="staging"))
    assert proc.returncode == 0, proc.stderr
    local = Path(proc.stdout.strip())
    assert local.parent == app / "backups" and local.exists()
    stored = keys(s3_server, bucket)
    assert f"{bucket}/staging/{local.name}" in stored
    assert f"{bucket}/staging/{local.name.replace('.tar.zst', '.manifest.json')}" in stored
    manifest = json.loads(s3_server.client().cat(f"{bucket}/staging/{local.name.replace('.tar.zst', '.manifest.json')}"))
    assert manifest["environment"] == "staging"
    assert ADMIN[1] not in json.dumps(manifest)


def test_list_merges_targets_and_restore_prefers_local(app, s3_server, s3_bucket, cli, tmp_path):
    config = cloud_config(app, s3_bucket, s3_server.endpoint)
    assert cli("create", config=config, env=creds()).returncode == 0
    proc = cli("list", "--json", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    backups = json.loads(proc.stdout)["backups"]
    assert len(backups) == 1
    urls = sorted(c["url"] for c in backups[0]["copies"])
    assert urls[0].startswith(str(app / "backups")) and urls[1].startswith(f"s3://{s3_bucket}/default/")
    proc = cli("restore", "latest", "--to", str(tmp_path / "r"), "--yes", "--json", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["url"].startswith(str(app / "backups"))
    # restore straight from the S3 URL, and download it (by the manifest's key)
    s3_url = urls[1]
    proc = cli("restore", s3_url, "--to", str(tmp_path / "from-s3"), "--yes", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "from-s3" / "db" / "app.db").exists()
    manifest_url = s3_url.replace(".tar.zst", ".manifest.json")
    proc = cli("download", manifest_url, "--to", str(tmp_path / "dl"), config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    downloaded = Path(proc.stdout.strip())
    assert downloaded.exists() and (downloaded.parent / Path(manifest_url).name).exists()
    # the local copy gone: latest comes from S3
    for p in (app / "backups").iterdir():
        p.unlink()
    proc = cli("restore", "latest", "--to", str(tmp_path / "r2"), "--yes", "--json", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["url"].startswith("s3://")


def test_missing_bucket_is_a_clear_error_unless_create_bucket(app, s3_server, cli):
    config = cloud_config(app, "no-such-bucket-here", s3_server.endpoint)
    proc = cli("create", config=config, env=creds())
    assert_one_clean_line(proc, "'no-such-bucket-here' does not exist", "create_bucket")
    assert len([n for n in local_backups(app) if n.endswith(".manifest.json")]) == 1  # the local copy is kept
    config = cloud_config(app, "made-by-eternia", s3_server.endpoint, create_bucket=True)
    proc = cli("create", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    assert any(k.endswith(".manifest.json") for k in keys(s3_server, "made-by-eternia"))


def test_a_scheduler_with_create_bucket_takes_its_lease_in_a_bucket_not_made_yet(app, s3_server, s3_env,
                                                                                   monkeypatch):
    """The lease probe is the scheduler's first write: with create_bucket it makes the bucket, so replicas
    get their per-slot lease from the first run (it said "access denied" and fell back to local locking);
    a listing before that says the bucket comes with the next backup, not "set create_bucket"."""
    from eternia_backup.manager import BackupManager

    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    for k, v in creds().items():
        monkeypatch.setenv(k, v)
    manager = BackupManager.from_config(cloud_config(app, bucket, s3_server.endpoint, create_bucket=True))
    proc = run_cli("list", config=app / "eternia-backup.yaml", env=creds())
    assert "does not exist yet; the next backup creates it" in proc.stderr, proc.stderr
    manager.prepare_scheduled_runs()
    assert manager.lease_target is not None and manager.lease_target.name != "local"
    assert s3_server.client().exists(bucket)
    assert [k for k in keys(s3_server, bucket) if "lease-probe" in k] == []  # the probe cleans up


@pytest.mark.parametrize("key, needle", [
    ((ADMIN[0], "not-the-secret-at-all"), "wrong secret key"),
    (("AKIAUNKNOWNKEY000000", ADMIN[1]), "access key is unknown"),
    (READER, "access denied"),
])
@pytest.mark.slow
def test_bad_credentials_and_read_only_identity(app, s3_server, s3_bucket, cli, key, needle):
    config = cloud_config(app, s3_bucket, s3_server.endpoint)
    assert cli("create", config=config, env=creds()).returncode == 0
    before = local_backups(app)
    proc = cli("-v", "create", config=config, env=creds(key))
    assert proc.returncode == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert key[1] not in proc.stderr and key[1] not in proc.stdout
    assert set(before) <= set(local_backups(app))  # earlier backups intact, new local copy kept
    assert len([k for k in keys(s3_server, s3_bucket) if k.endswith(".manifest.json")]) == 1
    proc = cli("list", config=config, env=creds(key))
    if key == READER:
        assert proc.returncode == 0, proc.stderr  # reading is allowed
    else:
        assert proc.returncode == 1 and needle in proc.stderr


@pytest.mark.slow
def test_unreachable_endpoint_is_retried_visibly_then_one_clear_error(app, cli):
    config = cloud_config(app, "some-bucket", "http://127.0.0.1:9")
    started = time.monotonic()
    proc = cli("create", config=config, env=creds())
    elapsed = time.monotonic() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot reach http://127.0.0.1:9" in errors[0] and "endpoint_url" in errors[0]
    retries = [ln for ln in lines if ln not in errors]  # each retry: a warning naming endpoint and attempt
    assert [("retry 1 of 2" in r, "retry 2 of 2" in r) for r in retries] == [(True, False), (False, True)]
    assert all("WARNING" in r and "S3 endpoint http://127.0.0.1:9" in r for r in retries)
    assert elapsed < 90
    assert [n for n in local_backups(app) if n.endswith(".manifest.json")]


def test_provider_other_than_aws_is_a_config_error(app, cli):
    config = app / "eternia-backup.yaml"
    config.write_text("backup:\n  cloud_backup: {enabled: true, provider: gcp, bucket: abc}\n")
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2
    assert "backup.cloud_backup.provider" in proc.stderr and "aws" in proc.stderr and "targets" in proc.stderr


def test_s3_as_plain_target_url_with_options(app, s3_server, s3_bucket, cli, tmp_path):
    section = {"sources": [{"type": "directory", "name": "files", "path": "state/files"}],
               "targets": [{"name": "bucket", "url": f"s3://{s3_bucket}/team/app",
                            "options": {"key": ADMIN[0], "secret": ADMIN[1],
                                        "client_kwargs": {"endpoint_url": s3_server.endpoint}}}]}
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    proc = cli("create", config=config, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"s3://{s3_bucket}/team/app/")
    shown = cli("config", "show", config=config, env=env)
    assert shown.returncode == 0 and ADMIN[1] not in shown.stdout and "********" in shown.stdout
    assert cli("verify", "latest", config=config, env=env).returncode == 0


def test_part_size_keeps_any_archive_within_10000_parts():
    assert part_size(0) >= 5 * 2**20
    assert all(5 * 2**20 <= part_size(n) <= MAX_PART for n in range(MAX_PARTS))
    assert max_archive_size() >= 5 * 2**40  # S3's largest object fits
    # Memory is about a part or two: small for the archives most people have.
    total, n = 0, 0
    while total < 100 * 2**30:
        total += part_size(n)
        n += 1
    assert part_size(n) <= 64 * 2**20  # a 100 GiB archive never needs parts over 64 MiB
    assert n < MAX_PARTS


def test_an_upload_grows_its_parts_and_is_one_object_only_after_commit(s3_env, s3_bucket, monkeypatch):
    """Parts are uploaded as the archive is written, growing in size; nothing is visible before commit."""
    from eternia_backup.builtin import s3_target

    # 5 MiB (S3's smallest part), then 6 MiB, 7 MiB ...: the growth that takes 1,000 parts in real use.
    monkeypatch.setattr(s3_target, "part_size", lambda done: (5 + done) * 2**20)
    target = s3_target.S3Target("cloud", f"s3://{s3_bucket}/grow", {})
    data = os.urandom(20 * 2**20)
    writer = target.open_write("big.tar.zst")
    for i in range(0, len(data), 2**20):
        writer.write(data[i:i + 2**20])
    writer.drain()  # parts are uploaded by a background thread: wait for those handed to it
    # 5 + 6 + 7 MiB uploaded, 2 MiB buffered; two uploader threads finish them in any order
    assert sorted(p["PartNumber"] for p in writer.parts) == [1, 2, 3]
    assert [f.name for f in target.list() if not f.name.startswith(".")] == []
    uploads = target.incomplete_uploads()
    assert [u.name for u in uploads] == ["big.tar.zst"] and uploads[0].size == 18 * 2**20
    writer.commit()
    assert target.size("big.tar.zst") == len(data)
    assert target.read_bytes("big.tar.zst") == data
    third = target.fs.call_s3("head_object", Bucket=s3_bucket, Key="grow/big.tar.zst", PartNumber=3)
    last = target.fs.call_s3("head_object", Bucket=s3_bucket, Key="grow/big.tar.zst", PartNumber=4)
    assert (third["PartsCount"], third["ContentLength"], last["ContentLength"]) == (4, 7 * 2**20, 2 * 2**20)
    assert target.incomplete_uploads() == []
    assert [f.name for f in target.list()] == ["big.tar.zst"]  # the creator marker is gone too


def test_parts_upload_in_the_background_with_a_bounded_queue(s3_env, s3_bucket, monkeypatch):
    """write() returns while parts upload; it waits while PARTS_AT_ONCE are not yet uploaded (memory bound)."""
    from eternia_backup.builtin import s3_target

    monkeypatch.setattr(s3_target, "part_size", lambda done: 5 * 2**20)
    allocated, part_buffer = [], s3_target._part_buffer
    monkeypatch.setattr(s3_target, "_part_buffer", lambda size: allocated.append(size) or part_buffer(size))
    target = s3_target.S3Target("cloud", f"s3://{s3_bucket}/queue", {})
    writer = target.open_write("a.tar.zst")
    gate, call_s3 = threading.Event(), target.fs.call_s3

    def held(method, *args, **kwargs):
        if method == "upload_part":
            assert gate.wait(60)
        return call_s3(method, *args, **kwargs)

    target.fs.call_s3 = held
    data = os.urandom(30 * 2**20)
    done = threading.Event()

    def produce():
        for i in range(0, len(data), 2**20):
            writer.write(data[i:i + 2**20])
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(1.0)
        # PARTS_AT_ONCE parts in flight (held), one being filled: the writer waits
        assert not done.is_set()
        assert writer._sent == s3_target.PARTS_AT_ONCE
        assert writer.buffer.tell() <= 5 * 2**20
    finally:
        gate.set()
    producer.join(60)
    assert done.is_set()
    writer.commit()
    assert target.read_bytes("a.tar.zst") == data
    assert target.incomplete_uploads() == []
    # six parts went through the memory of three: uploaded parts' buffers are filled again
    assert allocated == [5 * 2**20] * (s3_target.PARTS_AT_ONCE + 1)


def test_a_part_failing_in_the_background_fails_the_target_and_leaves_nothing(app, s3_server, s3_bucket,
                                                                                monkeypatch):
    """An upload_part error in the uploader thread fails the S3 target (a StorageError naming it) on a
    later write or the commit; the upload is aborted, the local copy is kept."""
    from eternia_backup.builtin import s3_target
    from eternia_backup.errors import BackupFailedError
    from eternia_backup.manager import BackupManager

    (app / "state" / "files" / "big.bin").write_bytes(os.urandom(24 * 2**20))  # several 5 MiB parts
    monkeypatch.setattr(s3_target, "part_size", lambda done: 5 * 2**20)
    for k, v in creds().items():
        monkeypatch.setenv(k, v)
    config = cloud_config(app, s3_bucket, s3_server.endpoint)
    manager = BackupManager.from_config(config)
    (cloud,) = [t for t in manager.targets if t.name == "cloud"]
    call_s3, threads = cloud.fs.call_s3, set()

    def failing(method, *args, **kwargs):
        if method == "upload_part":
            threads.add(threading.current_thread().name)
            if kwargs["PartNumber"] == 2:
                raise OSError(errno.ECONNRESET, "connection reset by peer (injected)")
        return call_s3(method, *args, **kwargs)

    cloud.fs.call_s3 = failing
    with pytest.raises(BackupFailedError, match="target 'cloud'.*injected") as raised:
        manager.create_backup()
    assert threads == {"eternia-upload-cloud"}  # the parts went up from the uploader thread
    result = raised.value.result
    assert [c.target for c in result.copies] == ["local"] and list(result.failures) == ["cloud"]
    fs = s3_server.client()
    assert not fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")
    assert keys(s3_server, s3_bucket) == []  # no object, no marker
    assert not [t for t in threading.enumerate() if t.name.startswith("eternia-upload-")]


# -- interrupted uploads: a real process, a real server --------------------------------


def slow_config(app: Path, bucket: str, endpoint: str, gate: Path) -> Path:
    big = app / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(40 * 2**20))  # several parts of 8 MiB
    section = {
        "storage_path": "backups",
        "retention": {"incomplete_grace_hours": 0},
        "sources": [
            {"type": "directory", "name": "big", "path": "big"},
            # waits at a gate: the archive's first parts are uploaded by then
            {"type": "command", "name": "late", "command": "echo late",
             "before": f"while [ ! -e {gate} ]; do sleep 0.1; done"},
        ],
        "archive": {"compression": "none"},
        "cloud_backup": {"enabled": True, "bucket": bucket, "endpoint_url": endpoint},
    }
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def start_create(config: Path, env: dict) -> subprocess.Popen:
    # its own process group, so the gate's shell loop is killed with it
    return subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                            start_new_session=True)


def wait_for_parts(server: SeaweedFS, bucket: str, proc, timeout: float = 120) -> None:
    fs = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads") or []
        for u in uploads:
            parts = fs.call_s3("list_parts", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts") or []
            if len(parts) >= 2:
                return
        time.sleep(0.2)
    raise AssertionError("no multipart upload with parts appeared")


@pytest.mark.slow
def test_kill_9_during_multipart_upload_leaves_no_trace_and_cleanup_aborts_it(app, s3_server, s3_bucket, cli):
    gate = app / "gate"
    config = slow_config(app, s3_bucket, s3_server.endpoint, gate)
    proc = start_create(config, creds())
    try:
        wait_for_parts(s3_server, s3_bucket, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        gate.touch()  # ends any shell still waiting at the gate
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # no object under a backup's name; only the marker naming the upload's creator
    assert [k.rsplit("/", 1)[-1].startswith(".") and k.endswith(".tmp") for k in keys(s3_server, s3_bucket)] == [True]
    listed = cli("list", "--json", config=config, env=creds())
    assert listed.returncode == 0 and json.loads(listed.stdout)["backups"] == []
    assert [n for n in local_backups(app) if not n.startswith(".")] == []
    fs = s3_server.client()
    assert fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")
    cleaned = cli("cleanup", "--json", config=config, env=creds())
    assert cleaned.returncode == 0, cleaned.stderr
    assert not fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")
    assert keys(s3_server, s3_bucket) == []  # the marker is gone with its upload
    assert [n for n in local_backups(app)] == []  # the local temp file of the dead process is gone too


@pytest.mark.slow
def test_server_stopping_mid_multipart_upload(app, tmp_path, cli):
    server = SeaweedFS(tmp_path / "disposable").start()
    try:
        bucket = server.make_bucket("disposable")
        gate = app / "gate"
        config = slow_config(app, bucket, server.endpoint, gate)
        proc = start_create(config, creds())
        wait_for_parts(server, bucket, proc)
        server.stop()
        gate.touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert "Traceback" not in err
        assert "target 'cloud'" in err and "kept on: local" in err
        server.start()
        # nothing committed; at most the marker naming the upload's creator
        assert all(k.rsplit("/", 1)[-1].startswith(".") for k in keys(server, bucket))
        # the local copy is complete and verifies
        assert cli("verify", "latest", config=config, env=creds()).returncode == 0
        cleaned = cli("cleanup", config=config, env=creds())
        assert cleaned.returncode == 0, cleaned.stderr
        assert not server.client().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
        assert keys(server, bucket) == []
    finally:
        server.stop()


def interrupt_config(app: Path, bucket: str, endpoint: str, source: dict) -> Path:
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups", "sources": [source], "archive": {"compression": "none"},
        "cloud_backup": {"enabled": True, "bucket": bucket, "endpoint_url": endpoint}}}))
    return path


def no_upload_left(config: Path, server: SeaweedFS, bucket: str) -> None:
    from eternia_backup import BackupManager

    cloud = next(t for t in BackupManager.from_config(config).targets if t.name == "cloud")
    assert cloud.incomplete_uploads() == []
    assert not server.client().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
    assert keys(server, bucket) == []  # no object, no marker


@pytest.mark.slow
def test_sigterm_during_multipart_upload_aborts_it_and_exits_143(app, s3_server, s3_bucket, s3_env, cli):
    """docker stop, systemd, Kubernetes: SIGTERM to the process alone, while parts are uploaded."""
    config = interrupt_config(app, s3_bucket, s3_server.endpoint, {
        "type": "command", "name": "slow", "command": "head -c 40000000 /dev/urandom; sleep 60"})
    proc = start_create(config, creds())
    try:
        wait_for_parts(s3_server, s3_bucket, proc)
        assert any(n.startswith(".") and n.endswith(".tmp") for n in local_backups(app)), local_backups(app)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.splitlines() == ["error: terminated by SIGTERM; nothing was committed"], err
    assert local_backups(app) == []  # the temporary archive is gone
    no_upload_left(config, s3_server, s3_bucket)
    status = json.loads(cli("status", "--json", config=config, env=creds()).stdout)["targets"]
    assert {t["last_error"] for t in status.values()} == {"terminated by SIGTERM; nothing was committed"}


@pytest.mark.slow
def test_ctrl_c_while_only_the_cloud_copy_is_left_says_the_local_one_was_committed(app, s3_server, s3_bucket,
                                                                                  s3_env, cli):
    from eternia_backup.testing.s3proxy import CountingProxy

    (app / "small").mkdir()
    (app / "small" / "notes.txt").write_text("hello")
    proxy = CountingProxy(s3_server.endpoint)
    try:
        ctrl_c_while_the_cloud_copy_uploads(app, proxy, s3_server, s3_bucket, cli)
    finally:
        proxy.close()


def ctrl_c_while_the_cloud_copy_uploads(app, proxy, s3_server, s3_bucket, cli):
    from eternia_backup.errors import EXIT_INTERRUPTED

    config = interrupt_config(app, s3_bucket, proxy.endpoint,
                              {"type": "directory", "name": "small", "path": "small"})
    proxy.hold(lambda method, path: method == "PUT" and "partNumber=" in path)  # the cloud copy stalls
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **creds()},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as on a terminal
    try:
        deadline = time.monotonic() + 60
        # the two targets commit side by side: the local manifest and the cloud's part arrive in either order
        while time.monotonic() < deadline and not (list((app / "backups").glob("*.manifest.json")) and proxy.held):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        manifest = json.loads(next((app / "backups").glob("*.manifest.json")).read_text())
        assert proxy.held == 1  # the local copy is committed, the cloud's one part is held
        proc.send_signal(signal.SIGINT)
        time.sleep(1)  # Ctrl-C reaches create while it waits for that part
        proxy.release()  # the abort waits for the part in flight, then aborts the upload
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    backup_id = manifest["backup_id"]
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert err.splitlines() == [f"error: interrupted: backup {backup_id} was committed to local only; "
                                "not to cloud"], err
    listed = json.loads(cli("list", "--json", config=config, env=creds()).stdout)["backups"]
    assert [(b["backup_id"], [c["target"] for c in b["copies"]]) for b in listed] == [(backup_id, ["local"])]
    assert cli("verify", backup_id, config=config, env=creds()).returncode == 0
    status = json.loads(cli("status", "--json", config=config, env=creds()).stdout)["targets"]
    assert status["local"]["last_backup_id"] == backup_id and status["local"]["last_success"]
    assert not status["local"].get("last_error")
    assert not status["cloud"].get("last_success")
    assert status["cloud"]["last_error"].startswith("target 'cloud': interrupted before"), status["cloud"]
    no_upload_left(config, s3_server, s3_bucket)


@pytest.mark.slow
def test_sigterm_during_cleanup_says_what_stays_deleted_and_cleanup_finishes_later(app, s3_server, s3_bucket,
                                                                                 s3_env, cli):
    """A cleanup stopped half way has deleted some backups: "nothing was committed" was wrong. The
    deletes are held at the S3 server's door while SIGTERM arrives; the next cleanup finishes."""
    from eternia_backup.errors import EXIT_TERMINATED
    from eternia_backup.testing.s3proxy import CountingProxy

    proxy = CountingProxy(s3_server.endpoint)
    try:
        config = app / "eternia-backup.yaml"
        config.write_text(yaml.safe_dump({"backup": {
            "sources": [{"type": "directory", "name": "files", "path": "state/files"}],
            "targets": [{"name": "cloud", "url": f"s3://{s3_bucket}/app",
                         "options": {"client_kwargs": {"endpoint_url": proxy.endpoint}}}],
            "retention": {"keep_last": 1}}}))
        for _ in range(3):
            assert cli("create", config=config, env=creds()).returncode == 0
        proxy.hold(lambda method, path: method == "DELETE")
        proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "cleanup"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **creds()})
        try:
            deadline = time.monotonic() + 60
            while proxy.held == 0:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)  # the signal reaches cleanup while it waits for that delete
            proxy.release()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == EXIT_TERMINATED, (proc.returncode, out, err)
        assert "nothing was committed" not in err and "stay deleted" in err and "run cleanup again" in err, err
        assert cli("cleanup", config=config, env=creds()).returncode == 0
        listed = json.loads(cli("list", "--json", config=config, env=creds()).stdout)["backups"]
        assert len(listed) == 1, listed
    finally:
        proxy.close()


@pytest.mark.parametrize("text", ["2026-12-07T14:14:20.525Z", "2026-12-07T14:14:20Z", "2026-12-07T15:14:20.5+01:00",
                                  "Mon, 07 Dec 2026 14:14:20 GMT", "1796652860", 1796652860.25])
def test_timestamps_read_as_botocore_reads_them(text):
    """Listing times are read by fromisoformat (dateutil was a tenth of a listing); the same instants."""
    from botocore.utils import parse_timestamp as botocore_parse_timestamp

    from eternia_backup.builtin.s3_target import parse_timestamp

    ours, theirs = parse_timestamp(text), botocore_parse_timestamp(text)
    assert ours == theirs and ours.utcoffset() == theirs.utcoffset() and ours.tzinfo is not None
