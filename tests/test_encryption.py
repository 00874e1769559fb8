"""Encryption at rest: standard age files, keys never stored, wrong keys refused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
import yaml

from eternia_backup import BackupManager
from eternia_backup.config import parse_config
from eternia_backup.encryption import DecryptionError
from eternia_backup.errors import ConfigError, IntegrityError

PASSPHRASE = "correct horse battery staple 42"


@pytest.fixture
def keypair(tmp_path, cli):
    key = tmp_path / "key.txt"
    proc = cli("keygen", "--output", str(key))
    assert proc.returncode == 0, proc.stderr
    return key, proc.stdout.strip()


def section(**encryption) -> dict:
    return {
        "storage_path": "backups",
        "sources": [{"type": "directory", "name": "files", "path": "state/files"},
                    {"type": "sqlite", "name": "db", "path": "state/app.db"}],
        "encryption": {"enabled": True, **encryption},
    }


def manager(app, **encryption) -> BackupManager:
    return BackupManager(parse_config(section(**encryption), base_dir=app))


def test_keygen_writes_a_private_identity_and_prints_the_recipient(keypair, cli):
    key, recipient = keypair
    assert recipient.startswith("age1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = key.read_text()
    assert "AGE-SECRET-KEY-1" in text and recipient in text
    again = cli("keygen", "--output", str(key))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert key.read_text() == text


def test_recipient_backup_is_a_standard_age_file_and_restores(app, keypair, tmp_path):
    key, recipient = keypair
    mgr = manager(app, recipients=[recipient], identity_file=str(key))
    result = mgr.create_backup()
    archive = result.copies[0].local_path
    assert archive.name.endswith(".tar.zst.age")
    assert archive.read_bytes().startswith(b"age-encryption.org/v1")
    manifest = json.loads(archive.with_name(result.manifest.filename).read_text())
    assert manifest["encryption"]["scheme"] == "age"
    assert manifest["encryption"]["recipients"] == [recipient]
    assert "AGE-SECRET-KEY" not in json.dumps(manifest)
    assert mgr.verify_backup(result.backup_id).entries == sum(s.entries for s in result.manifest.sources)
    mgr.restore_backup("latest", to=tmp_path / "out")
    original = (app / "state" / "files" / "users" / "user-0003.json").read_bytes()
    assert (tmp_path / "out" / "files" / "users" / "user-0003.json").read_bytes() == original


@pytest.mark.skipif(shutil.which("age") is None or shutil.which("zstd") is None,
                    reason="the age and zstd command-line tools are not installed")
def test_the_age_tool_decrypts_it_by_hand(app, keypair):
    key, recipient = keypair
    result = manager(app, recipients=[recipient]).create_backup()
    archive = result.copies[0].local_path
    listing = subprocess.run(f"age -d -i {key} {archive} | zstd -d | tar -t", shell=True,
                             capture_output=True, text=True, check=True).stdout.split()
    assert "files/users/user-0000.json" in listing and "db/app.db" in listing


def test_passphrase_backup_restores_and_stores_no_passphrase(app, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_PASSPHRASE", PASSPHRASE)
    mgr = manager(app, passphrase="${BACKUP_PASSPHRASE}")
    result = mgr.create_backup()
    backups = app / "backups"
    for f in backups.iterdir():
        assert PASSPHRASE.encode() not in f.read_bytes()
    manifest = json.loads((backups / result.manifest.filename).read_text())
    assert "passphrase_identity" in manifest["encryption"]
    assert "AGE-SECRET-KEY" not in json.dumps(manifest)
    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    assert (tmp_path / "out" / "db" / "app.db").exists()
    shown = mgr.config.as_dict()
    assert PASSPHRASE not in json.dumps(shown)


def test_wrong_key_and_wrong_passphrase_are_refused_without_output(app, keypair, tmp_path, monkeypatch, cli):
    key, recipient = keypair
    mgr = manager(app, recipients=[recipient], passphrase=PASSPHRASE)
    mgr.create_backup()
    other = tmp_path / "other.txt"
    assert cli("keygen", "--output", str(other)).returncode == 0
    wrong = manager(app, recipients=[recipient], identity_file=str(other), passphrase="not the passphrase")
    with pytest.raises(DecryptionError, match="wrong key"):
        wrong.restore_backup("latest", to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    only_passphrase = manager(app, recipients=[recipient], passphrase="not the passphrase")
    with pytest.raises(DecryptionError, match="passphrase does not open"):
        only_passphrase.restore_backup("latest", to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    nokey = BackupManager(parse_config({**section(), "encryption": {"enabled": False}}, base_dir=app))
    with pytest.raises(DecryptionError, match="no key"):
        nokey.restore_backup("latest", to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # verify without a key still checks the stored bytes, and says what it did not check
    report = nokey.verify_backup("latest")
    assert report.ok and "contents not read" in report.note


def test_verify_fails_when_the_configured_key_does_not_open_the_backup(app, keypair, tmp_path, cli):
    """A verify that says ok while every restore would fail keeps monitoring green: a configured
    passphrase or identity file that does not open the backup fails verify (exit 1), and is not
    reported as damage (the stored bytes are intact; the right key still restores)."""
    key, recipient = keypair
    other = tmp_path / "other.txt"
    assert cli("keygen", "--output", str(other)).returncode == 0
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section(recipients=[recipient], passphrase="${PASS}")}))
    assert cli("create", config=config, env={"PASS": PASSPHRASE}).returncode == 0
    for wrong in ({"passphrase": "${PASS}"}, {"identity_file": str(other)}):
        config.write_text(yaml.safe_dump({"backup": section(recipients=[recipient], **wrong)}))
        proc = cli("verify", config=config, env={"PASS": "not the passphrase"})
        assert proc.returncode == 1, (wrong, proc.stdout, proc.stderr)
        [line] = proc.stdout.splitlines()
        assert line.startswith("FAILED ") and "cannot be opened with the configured key" in line, line
        assert "match the manifest" in line and "not the passphrase" not in line, line
        listed = json.loads(cli("list", "--json", config=config, env={"PASS": "x"}).stdout)["backups"]
        assert [b["state"] for b in listed] == ["ok"], listed  # not marked damaged
    config.write_text(yaml.safe_dump({"backup": section(recipients=[recipient], passphrase="${PASS}")}))
    proc = cli("verify", config=config, env={"PASS": PASSPHRASE})
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stdout + proc.stderr


def test_tampered_ciphertext_gives_an_authentication_error_and_no_plaintext(app, keypair, tmp_path):
    """The attacker also fixes the manifest's checksum: only age's authentication can tell."""
    key, recipient = keypair
    mgr = manager(app, recipients=[recipient], identity_file=str(key))
    result = mgr.create_backup()
    archive = result.copies[0].local_path
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    mpath = archive.with_name(result.manifest.filename)
    manifest = json.loads(mpath.read_text())
    import hashlib

    manifest["archive"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="decrypt"):
        mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    with pytest.raises(IntegrityError):
        mgr.verify_backup(result.backup_id)


def test_bad_encryption_config_fails_before_any_io(app):
    with pytest.raises(ConfigError, match="recipients .*or a passphrase"):
        parse_config(section(), base_dir=app)
    with pytest.raises(ConfigError, match=r"backup\.encryption\.recipients\[0\].*age1"):
        manager(app, recipients=["ssh-rsa AAAA not an age key"])
    assert not (app / "backups").exists()


def test_encrypted_backup_through_the_cli(app, keypair, cli, tmp_path):
    key, recipient = keypair
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section(recipients=[recipient], identity_file=str(key))}))
    env = {}
    created = cli("-vv", "create", config=config, env=env)
    assert created.returncode == 0, created.stderr
    assert "AGE-SECRET-KEY" not in created.stderr
    assert cli("verify", "--all", config=config, env=env).returncode == 0
    restored = cli("restore", "latest", "--to", str(tmp_path / "r"), "--yes", config=config, env=env)
    assert restored.returncode == 0, restored.stderr
    shown = cli("config", "show", config=config, env=env)
    assert "AGE-SECRET-KEY" not in shown.stdout and recipient in shown.stdout
    os.unlink(key)
    failed = cli("restore", "latest", "--to", str(tmp_path / "r2"), "--yes", config=config, env=env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert not (tmp_path / "r2").exists()
