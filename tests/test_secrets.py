"""Secrets everywhere they can be, and nowhere they must not be.

S3 keys in the environment and in the config, a DSN with a password, an
encryption passphrase: none may appear in debug logs, error messages,
``config show``, manifests or any file left on disk.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from eternia_backup.testing import ADMIN

ENV_SECRET = "env-secret-Zq81xLw0"
CONFIG_SECRET = "config-secret-Kp44rTz9"
DSN_PASSWORD = "dsn-pass-Hy62mNb3"
PASSPHRASE = "passphrase-Ww37cVx5"
VAR_SECRET = "var-secret-Lm20pQa7"  # a command source's env: value, from ${DB_PASS}
INLINE_SECRET = "inline-secret-Rt93sDk1"  # written as ${INLINE_PASS} inside a command string
HOOK_SECRET = "hook-secret-Nb58vCx2"  # a literal value in hooks.env
SECRETS = (ENV_SECRET, CONFIG_SECRET, DSN_PASSWORD, PASSPHRASE, ADMIN[1], VAR_SECRET, INLINE_SECRET, HOOK_SECRET)


def all_files(*roots: Path):
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                yield p


def assert_clean(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"secret {s[:8]}... leaked in {where}"


@pytest.mark.slow
def test_no_secret_in_logs_errors_config_show_manifests_or_files(app, s3_server, s3_bucket, cli, tmp_path):
    dsn = f"postgresql://app:{DSN_PASSWORD}@127.0.0.1:5432/appdb"
    section = {
        "storage_path": "backups",
        "sources": [
            {"type": "directory", "name": "files", "path": "state/files"},
            # a dump command whose DSN carries a password (the command just prints)
            {"type": "command", "name": "dump", "command": f"echo connecting to {dsn} >&2; echo dumped",
             "restore_command": "cat > /dev/null", "env": {"DB_PASS": "${DB_PASS}"}},
            # a tool that insists on its password in argv, written as ${VAR}; and one read from env:
            {"type": "command", "name": "inline", "command": "echo login -p${INLINE_PASS} >&2; test -n \"$DB_PASS\"; "
             "echo inline dump", "env": {"DB_PASS": "${DB_PASS}"}},
        ],
        "hooks": {"before_backup": 'test "$HOOK_TOKEN" = ' + HOOK_SECRET, "env": {"HOOK_TOKEN": HOOK_SECRET}},
        "targets": [{"name": "s3", "url": f"s3://{s3_bucket}/env",
                     "options": {"key": ADMIN[0], "secret": "${S3_SECRET}",
                                 "client_kwargs": {"endpoint_url": s3_server.endpoint}}},
                    {"name": "other", "url": f"s3://{s3_bucket}/other",
                     "options": {"key": ADMIN[0], "secret": ADMIN[1],  # a literal in the config
                                 "client_kwargs": {"endpoint_url": s3_server.endpoint}}}],
        "encryption": {"enabled": True, "passphrase": "${BACKUP_PASSPHRASE}"},
        # a webhook whose URL carries credentials; nothing listens there, so it is logged as undeliverable
        "notify": {"webhook": {"url": f"http://hook:{CONFIG_SECRET}@127.0.0.1:9/notify", "on_success": True,
                               "timeout_seconds": 2}},
    }
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    env = {"S3_SECRET": ADMIN[1], "BACKUP_PASSPHRASE": PASSPHRASE, "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
           "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "DB_PASS": VAR_SECRET, "INLINE_PASS": INLINE_SECRET}

    outputs = []
    for args in (["-vv", "create"], ["-vv", "list"], ["-vv", "verify", "--all"], ["config", "show"],
                 ["config", "show", "--json"], ["-vv", "status"], ["-vv", "cleanup"],
                 ["-vv", "restore", "latest", "--dry-run"]):
        proc = cli(*args, config=config, env=env)
        outputs.append((args, proc))
        assert_clean(proc.stdout + proc.stderr, f"`{' '.join(args)}`")
    assert outputs[0][1].returncode == 0, outputs[0][1].stderr
    assert "********" in outputs[3][1].stdout

    # errors: a failing dump with the DSN in its stderr, a wrong S3 secret
    section["sources"][1]["command"] = f"echo 'FATAL: password authentication failed for {dsn}' >&2; exit 2"
    config.write_text(yaml.safe_dump({"backup": section}))
    failed = cli("-vv", "create", config=config, env=env)
    assert failed.returncode == 1 and "password authentication failed" in failed.stderr
    assert_clean(failed.stdout + failed.stderr, "a failing dump's error")
    bad = cli("-vv", "create", config=config, env={**env, "S3_SECRET": "wrong-" + ENV_SECRET})
    assert bad.returncode == 1
    assert_clean(bad.stdout + bad.stderr, "a wrong secret's error")

    # restore, then everything left on disk and in the bucket
    section["sources"][1]["command"] = "echo dumped"
    config.write_text(yaml.safe_dump({"backup": section}))
    restored = cli("-vv", "restore", "latest", "--to", str(tmp_path / "restored"), "--yes", config=config, env=env)
    assert restored.returncode == 0, restored.stderr
    assert_clean(restored.stdout + restored.stderr, "restore")
    for f in all_files(app, tmp_path / "restored"):  # state, lock, backups, restored files
        if f.name == "eternia-backup.yaml":
            continue  # the user's own file holds what the user wrote there
        data = f.read_bytes()
        for s in SECRETS:
            assert s.encode() not in data, f"secret {s[:8]}... found in {f}"
    for key in s3_server.client().find(s3_bucket):
        data = s3_server.client().cat(key)
        for s in SECRETS:
            assert s.encode() not in data, f"secret {s[:8]}... found in s3://{key}"


def test_backup_files_are_owner_only_whatever_the_umask(app, cli, write_config):
    import os

    old = os.umask(0)
    try:
        proc = cli("create", config=write_config())
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    storage = app / "backups"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    for f in storage.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.slow  # passphrase mode costs an scrypt per backup, restore and verify
def test_an_encrypted_backups_plain_manifest_holds_no_source_details_or_paths(tmp_path, monkeypatch):
    """With encryption on, what lies in clear beside the archive is only what list, retention and verify need."""
    import json
    import zstandard

    from eternia_backup.manager import BackupManager

    monkeypatch.setenv("BACKUP_PASSPHRASE", PASSPHRASE)
    files = tmp_path / "secret-project-name"
    files.mkdir()
    (files / "salaries-2026.xlsx").write_bytes(b"x" * 100)
    section = {
        "name": "app", "storage_path": str(tmp_path / "backups"),
        "sources": [{"type": "directory", "name": "files", "path": str(files)},
                    {"type": "command", "name": "dump", "command": "printf %s dump-marker-Tr55", "filename": "d"}],
        "encryption": {"enabled": True, "passphrase": "${BACKUP_PASSPHRASE}"},
        "archive": {"incremental": {"enabled": True}},
    }
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    mgr = BackupManager.from_config(cfg)
    mgr.create_backup()
    (files / "salaries-2026.xlsx").unlink()
    result = mgr.create_backup()
    assert result.manifest.sources[0].increment["removed_paths"] == ["salaries-2026.xlsx"]  # the caller sees them
    plain = "".join(p.read_text() for p in (tmp_path / "backups").glob("*.manifest.json"))
    for word in ("secret-project-name", "salaries", "dump-marker", PASSPHRASE):
        assert word not in plain, f"{word} in a plain manifest"
    stored = json.loads((tmp_path / "backups" / result.manifest.filename).read_text())
    assert [(s["name"], s["type"]) for s in stored["sources"]] == [("files", "directory"), ("dump", "command")]
    assert stored["sources"][0]["increment"]["removed"] == 1
    # the details are inside the encrypted archive, and the backup restores and verifies as ever
    assert mgr.verify_backup(result.backup_id).ok
    mgr.restore_backup(result.backup_id, to=tmp_path / "r")
    assert (tmp_path / "r" / "dump" / "d").read_bytes() == b"dump-marker-Tr55"
    assert sorted(p.name for p in (tmp_path / "r" / "files").iterdir()) == []
    from eternia_backup.encryption import DecryptingReader, identities_for

    ids = identities_for(stored["encryption"], mgr.config.encryption)
    with open(tmp_path / "backups" / result.manifest.archive.file, "rb") as raw:
        tar = zstandard.ZstdDecompressor().stream_reader(DecryptingReader(raw, ids)).read()
    assert b"secret-project-name" in tar and b".eternia/sources.json" in tar


@pytest.mark.parametrize("command", [
    "echo dumping --password=lit-pass-Qx71; echo data",
    "PGPASSWORD=lit-pass-Qx71 sh -c 'echo data'",
    "MYSQL_PWD='lit-pass-Qx71' sh -c 'echo data'",
])
def test_a_password_written_into_a_command_is_masked_everywhere(tmp_path, cli, command):
    """Users do write passwords into dump commands; they never reach config show, logs or manifests."""
    section = {"name": "app", "storage_path": str(tmp_path / "backups"),
               "sources": [{"type": "command", "name": "dump", "command": command}]}
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    for args in (["-vv", "create"], ["config", "show"], ["-vv", "restore", "latest", "--to", str(tmp_path / "r"),
                                                          "--dry-run"], ["list", "--json"]):
        proc = cli(*args, config=cfg)
        assert proc.returncode == 0, proc.stderr
        assert "lit-pass-Qx71" not in proc.stdout + proc.stderr, args
    for p in (tmp_path / "backups").glob("*.json"):
        assert "lit-pass-Qx71" not in p.read_text()


def test_a_password_in_env_reaches_the_shell_command_through_the_environment_not_argv(tmp_path, cli, monkeypatch):
    """The documented way: env: {DB_PASS: ${VAR}} and $DB_PASS in the command; the shell expands it, so the
    value is not in the shell's argv (/proc/<pid>/cmdline), nor in config show or the manifest."""
    monkeypatch.setenv("INLINE_DB_PASS", "inline-pass-Vv82kJ")
    command = ("tr '\\0' ' ' < /proc/$$/cmdline > " + str(tmp_path / "argv.txt") +
               "; [ \"$DB_PASS\" = \"$(printf %s inline-pass; printf %s -Vv82kJ)\" ] && echo got-it")
    section = {"name": "app", "storage_path": str(tmp_path / "backups"),
               "sources": [{"type": "command", "name": "dump", "command": command, "filename": "d",
                            "env": {"DB_PASS": "${INLINE_DB_PASS}"}}]}
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": section}))
    created = cli("create", config=cfg)
    assert created.returncode == 0, created.stderr
    argv = (tmp_path / "argv.txt").read_text()
    assert "$DB_PASS" in argv and "inline-pass-Vv82kJ" not in argv
    assert cli("restore", "latest", "--to", str(tmp_path / "r"), config=cfg).returncode == 0
    assert (tmp_path / "r" / "dump" / "d").read_text() == "got-it\n"  # the shell did get the value
    shown = cli("config", "show", config=cfg)
    assert "inline-pass-Vv82kJ" not in shown.stdout + shown.stderr
    for p in (tmp_path / "backups").glob("*.json"):
        assert "inline-pass-Vv82kJ" not in p.read_text()
