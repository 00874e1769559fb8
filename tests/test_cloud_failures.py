"""Cloud failures told truthfully (issue 15), against a real S3 server (SeaweedFS).

Read-only credentials, a wrong secret, an endpoint that accepts connections and
never answers (a listener in this process), a SIGKILL mid-upload, and the
environment of a running dump command, each checked the way an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup.errors import BackupFailedError, StorageError
from eternia_backup.manager import BackupManager
from eternia_backup.redact import redact_text
from eternia_backup.testing import ADMIN, READER

SOURCES = [{"type": "directory", "name": "files", "path": "state/files"}]


def creds(key=ADMIN, **extra) -> dict:
    return {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1], **extra}


def write(app: Path, section: dict) -> Path:
    path = app / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def cloud_section(bucket: str, endpoint: str, *, local: bool = True, **cloud) -> dict:
    section = {"sources": SOURCES,
               "cloud_backup": {"enabled": True, "bucket": bucket, "endpoint_url": endpoint, **cloud}}
    if local:
        section["storage_path"] = "backups"
    else:  # the only target is the cloud
        section["targets"] = [{"name": "cloud", "url": f"s3://{bucket}/default",
                               "options": {"client_kwargs": {"endpoint_url": endpoint}}}]
        del section["cloud_backup"]
        section["state_dir"] = "state-dir"  # not the user's: other runs on this machine hold that lock
    return section


def keys(server, bucket) -> list[str]:
    return sorted(server.client().find(bucket))


def manifests(server, bucket) -> list[str]:
    return [k for k in keys(server, bucket) if k.endswith(".manifest.json")]


def error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


# -- 1. a deletion counts only when the store confirms it -------------------------------


@pytest.mark.slow
def test_cleanup_with_read_only_credentials_claims_nothing(app, s3_server, s3_bucket, cli, monkeypatch):
    config = write(app, {**cloud_section(s3_bucket, s3_server.endpoint, local=False), "retention": {"keep_last": 1}})
    for _ in range(2):
        assert cli("create", config=config, env=creds()).returncode == 0
    before = keys(s3_server, s3_bucket)
    assert len([k for k in before if k.endswith(".manifest.json")]) == 2

    proc = cli("cleanup", "--json", config=config, env=creds(READER))
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["deleted_count"] == 0
    (cloud,) = result["targets"]
    assert cloud["deleted"] == [] and cloud["leftovers_removed"] == []
    assert len(result["not_deleted"]) == 1 and "access denied" in result["not_deleted"][0]["reason"]
    assert "s3:DeleteObject" in result["not_deleted"][0]["reason"]

    proc = cli("cleanup", config=config, env=creds(READER))
    assert proc.returncode == 1
    assert "deleted 0 backup(s)" in proc.stdout and "deleted 2" not in proc.stdout
    assert len(error_lines(proc)) == 1 and "access denied" in proc.stderr  # each error once
    assert proc.stderr.count("access denied") == 1

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER[1])
    with pytest.raises(StorageError, match="access denied") as raised:
        BackupManager.from_config(config).cleanup_old_backups()
    assert raised.value.result.deleted_count == 0
    assert keys(s3_server, s3_bucket) == before  # every object still there

    # the same cleanup with write access deletes, and says so
    proc = cli("cleanup", "--json", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted_count"] == 1
    assert len(manifests(s3_server, s3_bucket)) == 1


# -- 2. bounded, visible waiting: an endpoint that accepts and never answers ---------------


@pytest.fixture
def black_hole():
    """A loopback listener that accepts connections and never answers; yields its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def timed(cli, *args, **kw):
    started = time.monotonic()
    proc = cli(*args, **kw, timeout=300)
    return proc, time.monotonic() - started


FAST = {"connect_timeout": 1, "read_timeout": 1, "max_attempts": 2}


@pytest.mark.slow
def test_black_hole_fails_every_command_quickly_and_visibly(app, black_hole, cli, tmp_path):
    config = write(app, cloud_section("black-hole", black_hole, **FAST))
    times = {}
    proc, times["create"] = timed(cli, "create", config=config, env=creds())
    assert proc.returncode == 1
    assert "kept on: local" in proc.stderr and "cannot reach " + black_hole in proc.stderr
    retries = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert retries and all(f"S3 endpoint {black_hole} is not answering" in r and "retry 1 of 1" in r for r in retries)
    assert len(list((app / "backups").glob("*.manifest.json"))) == 1  # the local copy was made

    proc, times["list"] = timed(cli, "list", config=config, env=creds())
    assert proc.returncode == 1 and "'cloud' could not be listed" in proc.stderr
    proc, times["restore"] = timed(cli, "restore", "latest", "--dry-run", config=config, env=creds())
    assert proc.returncode == 1 and "'cloud'" in error_lines(proc)[0]
    proc, times["status"] = timed(cli, "status", config=config, env=creds())
    assert proc.returncode == 1 and "cannot list" in proc.stdout
    proc, times["cleanup"] = timed(cli, "cleanup", config=config, env=creds())
    assert proc.returncode == 1 and "listing failed, nothing deleted" in proc.stderr
    print(f"time to fail against the black hole with {FAST}: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    assert all(t < 120 for t in times.values()), times
    assert all(t < 40 for t in times.values()), times  # 1 s timeouts: seconds, not minutes


@pytest.mark.slow
def test_black_hole_through_the_api_is_a_partial_success(app, black_hole, monkeypatch):
    config = write(app, cloud_section("black-hole", black_hole, **FAST))
    for k, v in creds().items():
        monkeypatch.setenv(k, v)
    manager = BackupManager.from_config(config)
    started = time.monotonic()
    with pytest.raises(BackupFailedError, match="target 'cloud'.*cannot reach") as raised:
        manager.create_backup()
    assert time.monotonic() - started < 30
    result = raised.value.result
    assert [c.target for c in result.copies] == ["local"] and list(result.failures) == ["cloud"]
    assert os.path.exists(os.fspath(result))  # the local archive
    with pytest.raises(StorageError, match="'cloud'.*newest backup may be there"):
        manager.find_backup("latest")
    assert manager.find_backup("latest", allow_partial_listing=True).backup_id == result.backup_id


@pytest.mark.slow
def test_black_hole_with_default_timeouts_never_delays_the_local_copy(app, black_hole):
    config = write(app, cloud_section("black-hole", black_hole))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **creds()})
    try:
        while not list((app / "backups").glob("*.manifest.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - started < 30, "the local copy waited for the cloud"
            time.sleep(0.2)
        local_done = time.monotonic() - started
        assert proc.poll() is None  # still waiting for the cloud, with the local copy made
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    print(f"default timeouts: local copy after {local_done:.1f} s, create failed after {elapsed:.1f} s")
    assert proc.returncode == 1 and "kept on: local" in err
    assert "retry 1 of 2" in err and "retry 2 of 2" in err
    assert elapsed < 120


# -- 3. listings say when they are incomplete ----------------------------------------------


WRONG = (ADMIN[0], "not-the-secret-at-all")


@pytest.mark.slow
def test_wrong_secret_with_a_local_copy_never_falls_back_silently(app, s3_server, s3_bucket, cli, tmp_path):
    config = write(app, cloud_section(s3_bucket, s3_server.endpoint))
    assert cli("create", config=config, env=creds()).returncode == 0
    env = creds(WRONG)

    proc = cli("restore", "latest", "--dry-run", config=config, env=env)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "'cloud'" in line and "newest backup may be there" in line and "--allow-partial-listing" in line
    assert "wrong secret" in line

    proc = cli("restore", "latest", "--dry-run", "--allow-partial-listing", "--json", config=config, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["url"].startswith(str(app / "backups"))
    assert [u["target"] for u in out["unlisted_targets"]] == ["cloud"]
    assert "'cloud'" in proc.stderr  # the fallback is said, not silent

    proc = cli("list", config=config, env=env)
    assert proc.returncode == 1 and "no backups yet" not in proc.stdout
    assert len(proc.stdout.splitlines()) == 2  # header and the local backup
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: target 'cloud'")]
    for args in (("list",), ("status",), ("cleanup",)):
        proc = cli(*args, "--json", config=config, env=env)
        assert proc.returncode == 1, args
        unlisted = json.loads(proc.stdout)["unlisted_targets"]
        assert [u["target"] for u in unlisted] == ["cloud"] and "wrong secret" in unlisted[0]["error"], args
    proc = cli("verify", "latest", config=config, env=env)
    assert proc.returncode == 1 and "newest backup may be there" in proc.stderr


@pytest.mark.slow
def test_wrong_secret_with_empty_local_storage_never_says_no_backups(app, s3_server, s3_bucket, cli):
    config = write(app, cloud_section(s3_bucket, s3_server.endpoint))
    assert cli("create", config=config, env=creds()).returncode == 0
    backup_id = json.loads(cli("list", "--json", config=config, env=creds()).stdout)["backups"][0]["backup_id"]
    for p in (app / "backups").iterdir():
        p.unlink()
    env = creds(WRONG)

    proc = cli("list", config=config, env=env)
    assert proc.returncode == 1 and proc.stdout == "" and "no backups yet" not in proc.stderr
    assert "warning: target 'cloud' could not be listed" in proc.stderr
    proc = cli("restore", "latest", "--dry-run", "--allow-partial-listing", config=config, env=env)
    assert proc.returncode == 1 and "no backups yet" not in proc.stderr
    assert "'cloud' could not be listed" in proc.stderr and "may be there" in proc.stderr
    proc = cli("restore", backup_id, "--dry-run", config=config, env=env)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "no backup" not in line and "'cloud' could not be listed" in line and "may be there" in line
    # with the right secret it is all there
    proc = cli("restore", backup_id, "--dry-run", config=config, env=creds())
    assert proc.returncode == 0, proc.stderr


# -- 4. orphans found and named -------------------------------------------------------------


@pytest.mark.slow
def test_upload_of_a_killed_create_is_reported_then_aborted(app, s3_server, s3_bucket, cli):
    from test_s3 import slow_config, start_create, wait_for_parts

    gate = app / "gate"
    config = slow_config(app, s3_bucket, s3_server.endpoint, gate)
    section = yaml.safe_load(config.read_text())
    del section["backup"]["retention"]  # the default grace period (24 h): only the dead PID allows abort now
    config.write_text(yaml.safe_dump(section))
    proc = start_create(config, creds())
    try:
        wait_for_parts(s3_server, s3_bucket, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        gate.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    fs = s3_server.client()
    assert fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")

    status = cli("status", "--json", config=config, env=creds())
    orphans = json.loads(status.stdout)["targets"]["cloud"]["orphans"]
    (upload,) = [o for o in orphans if o["kind"] == "unfinished upload"]
    assert upload["size"] >= 16 * 2**20 and upload["age_seconds"] < 600
    assert upload["writer"].endswith(f":{proc.pid} (dead)") and upload["due"]
    text = cli("status", config=config, env=creds()).stdout
    assert f"orphan: unfinished upload {upload['name']}" in text and "MiB" in text and "h old" in text
    local_orphans = json.loads(status.stdout)["targets"]["local"]["orphans"]
    assert [o["kind"] for o in local_orphans] == ["temporary file"]

    dry = cli("cleanup", "--dry-run", config=config, env=creds())
    assert dry.returncode == 0, dry.stderr
    assert f"unfinished upload {upload['name']}" in dry.stdout and "would be aborted" in dry.stdout
    assert "temporary file" in dry.stdout
    assert fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")  # a dry run aborts nothing

    cleaned = cli("cleanup", "--json", config=config, env=creds())
    assert cleaned.returncode == 0, cleaned.stderr
    cloud = [t for t in json.loads(cleaned.stdout)["targets"] if t["target"] == "cloud"][0]
    assert f"{upload['name']} (unfinished upload)" in cloud["leftovers_removed"]
    assert not fs.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads")
    assert keys(s3_server, s3_bucket) == []  # the creator's marker too
    assert list((app / "backups").iterdir()) == []


# -- 5. config check catches what it can -------------------------------------------------


@pytest.mark.parametrize("bucket", ["My_Bucket", "ab", "bucket..name", "192.168.1.1", "-bucket"])
def test_invalid_bucket_names_are_config_errors(app, cli, bucket):
    config = write(app, {"sources": SOURCES, "cloud_backup": {"enabled": True, "bucket": bucket}})
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2, proc.stdout
    assert "backup.cloud_backup.bucket" in proc.stderr and "create_bucket" not in proc.stderr


def test_invalid_bucket_in_a_target_url_is_a_config_error(app, cli):
    config = write(app, {"sources": SOURCES, "targets": [{"url": "s3://My_Bucket/x"}]})
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2 and "'My_Bucket'" in proc.stderr and "uppercase" in proc.stderr


def test_hints_name_the_credential_source_and_permission(app, s3_server, s3_bucket, cli):
    # credentials from the config file's target options
    section = {"sources": SOURCES, "targets": [{"name": "bucket", "url": f"s3://{s3_bucket}/x", "options": {
        "key": WRONG[0], "secret": WRONG[1], "client_kwargs": {"endpoint_url": s3_server.endpoint}}}]}
    proc = cli("create", config=write(app, section), env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert proc.returncode == 1 and "config file" in proc.stderr and "AWS_SECRET_ACCESS_KEY" not in proc.stderr
    # from the environment
    config = write(app, cloud_section(s3_bucket, s3_server.endpoint))
    proc = cli("list", config=config, env=creds(WRONG))
    assert "environment" in proc.stderr and "wrong secret" in proc.stderr
    # a denied bucket creation names s3:CreateBucket
    config = write(app, cloud_section("not-there-yet", s3_server.endpoint, create_bucket=True))
    proc = cli("create", config=config, env=creds(READER))
    assert proc.returncode == 1 and "s3:CreateBucket" in proc.stderr


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_bad_timeouts_are_config_errors(app, cli, value):
    config = write(app, {"sources": SOURCES, "cloud_backup": {"enabled": True, "bucket": "abc", "read_timeout": value}})
    proc = cli("config", "check", config=config)
    assert proc.returncode == 2 and "backup.cloud_backup.read_timeout" in proc.stderr


# -- 6. children get only what they need ---------------------------------------------------


def test_dump_commands_and_hooks_get_no_cloud_or_passphrase_secrets(app, cli):
    pidfile, gate, hook_env = app / "dump.pid", app / "gate", app / "hook-env"
    section = {
        "storage_path": "backups",
        "encryption": {"enabled": True, "passphrase": "${MY_BACKUP_PASSPHRASE}"},
        "sources": [{"type": "command", "name": "dump", "env": {"PGPASSWORD": "${DUMP_PASSWORD}"},
                     "command": f"echo $$ > {pidfile}; while [ ! -e {gate} ]; do sleep 0.1; done; echo dumped",
                     "before": f"env > {hook_env}"}],
    }
    config = write(app, section)
    secrets = {"AWS_ACCESS_KEY_ID": "AKIA-in-env", "AWS_SECRET_ACCESS_KEY": "aws-secret-in-env",
               "AWS_SESSION_TOKEN": "aws-token-in-env", "MY_BACKUP_PASSPHRASE": "correct horse battery",
               "DUMP_PASSWORD": "pg-password-for-the-dump"}
    proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), "create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **secrets})
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        raw = Path(f"/proc/{pidfile.read_text().strip()}/environ").read_bytes()
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MY_BACKUP_PASSPHRASE",
                 "DUMP_PASSWORD"):
        assert name not in environ, name
    assert environ["PGPASSWORD"] == "pg-password-for-the-dump"  # listed in env:, so given
    assert "PATH" in environ
    hook = hook_env.read_text()
    for value in ("aws-secret-in-env", "AKIA-in-env", "aws-token-in-env", "correct horse battery"):
        assert value not in hook


def test_dsn_mask_keeps_the_closing_quote():
    assert redact_text("dsn='host=db password=s3cr3t-pw' failed") == "dsn='host=db password=********' failed"
    assert redact_text('"host=db password=s3cr3t-pw"') == '"host=db password=********"'
    assert redact_text("host=db password='a b c' user=x") == "host=db password='********' user=x"
