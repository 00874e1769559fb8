"""Every CLI command, as a new user would try them.

Each test makes the example app's state (``app`` fixture), writes its config
and runs the CLI: ``eternia_backup.cli.main`` in this process (the ``cli``
fixture, see conftest), or ``python -m eternia_backup`` in a real subprocess
(``real_cli``) for creating a backup, exit statuses, config discovery and the
console script. Nothing is mocked: real files, real archives, real restores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

import eternia_backup
from make_state import make_state  # examples/app, put on sys.path by conftest

ROOT = Path(__file__).resolve().parent.parent
ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6,}")


# -- helpers -------------------------------------------------------------------------


def section(**overrides) -> dict:
    """The app's backup: section (directory + sqlite source, local storage)."""
    data = {
        "storage_path": "backups",
        "retention_days": 7,
        "sources": [
            {"type": "directory", "name": "files", "path": "state/files"},
            {"type": "sqlite", "name": "db", "path": "state/app.db"},
        ],
    }
    data.update(overrides)
    return data


def assert_error(proc: subprocess.CompletedProcess, status: int) -> str:
    """The command failed with ``status`` and said why in one ``error:`` line, no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


def create(cli, config: Path) -> Path:
    """Make a backup; returns the archive path the CLI printed."""
    out = ok(cli("create", config=config)).strip()
    assert len(out.splitlines()) == 1, out
    return Path(out)


def backup_now(config: Path) -> Path:
    """Setup for tests of other commands: a backup made through the Python API, in-process."""
    from eternia_backup import BackupManager

    return Path(os.fspath(BackupManager.from_config(config).create_backup()))


def backup_id(archive: Path) -> str:
    m = ID_RE.search(archive.name)
    assert m, archive
    return m.group(0)


def manifest_of(archive: Path) -> Path:
    return archive.with_name(archive.name.split(".tar", 1)[0] + ".manifest.json")


def list_json(cli, config: Path) -> list[dict]:
    return json.loads(ok(cli("list", "--json", config=config)))["backups"]


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, and for files content and mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes(), int(st.st_mtime))
    return out


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_state(app: Path) -> None:
    """What a bad deploy does: change, delete and add files, and write to the database."""
    files = app / "state" / "files"
    (files / "users" / "user-0001.json").write_text('{"broken": true}')
    (files / "orders" / "order-0000.json").unlink()
    (files / "users" / "intruder.json").write_text("{}")
    conn = sqlite3.connect(app / "state" / "app.db")
    conn.execute("DELETE FROM events WHERE id < 50")
    conn.execute("INSERT INTO events (kind, payload) VALUES ('bad', '{}')")
    conn.commit()
    conn.close()


def hidden_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def wait_next_second() -> None:
    """Backup ids have one-second resolution; make the next backup's second differ."""
    time.sleep(1.05 - (time.time() % 1.0))


@pytest.fixture
def cfg(write_config) -> Path:
    return write_config(section())


# -- create ----------------------------------------------------------------------------


def test_create_prints_the_archive_written_private_with_its_manifest(real_cli, app, cfg):
    archive = create(real_cli, cfg)
    assert archive.parent == app / "backups"
    assert archive.is_file() and archive.name.endswith(".tar.zst")
    assert archive.name.startswith("eternia-backup-" + backup_id(archive))
    manifest = manifest_of(archive)
    assert manifest.is_file()
    doc = json.loads(manifest.read_text())
    assert doc["backup_id"] == backup_id(archive)
    assert doc["archive"]["file"] == archive.name
    assert doc["archive"]["size"] == archive.stat().st_size
    assert [s["name"] for s in doc["sources"]] == ["files", "db"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert stat.S_IMODE((app / "backups").stat().st_mode) == 0o700
    # nothing else: no temporary files left behind
    assert sorted(p.name for p in (app / "backups").iterdir()) == sorted([archive.name, manifest.name])


def test_created_archive_opens_with_the_standard_tools(cli, app, cfg):
    if not (shutil.which("tar") and shutil.which("zstd")):
        pytest.skip("needs the tar and zstd command-line tools")
    archive = backup_now(cfg)
    out = app / "by-hand"
    out.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -x -C '{out}'", shell=True, check=True)
    assert (out / "files" / "users" / "user-0000.json").read_bytes() == \
        (app / "state" / "files" / "users" / "user-0000.json").read_bytes()
    assert rows(out / "db" / "app.db") == rows(app / "state" / "app.db")


# -- list ------------------------------------------------------------------------------


def test_list_shows_backups_newest_first(cli, app, cfg):
    assert "no backups yet" in ok(cli("list", config=cfg))

    older = create(cli, cfg)
    wait_next_second()
    newer = create(cli, cfg)
    made = [newer, older]
    ids = [backup_id(a) for a in made]

    table = ok(cli("list", config=cfg)).splitlines()
    assert table[0].split()[:2] == ["ID", "CREATED"]
    assert [line.split()[0] for line in table[1:]] == ids
    for line, archive in zip(table[1:], made):
        assert "files,db" in line and " ok " in line and str(archive) in line

    entries = list_json(cli, cfg)
    assert [e["backup_id"] for e in entries] == ids
    now = datetime.now(timezone.utc)
    for e, archive in zip(entries, made):
        created = datetime.strptime(e["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert now - timedelta(minutes=5) < created <= now
        assert e["size"] == archive.stat().st_size
        assert e["sources"] == ["files", "db"]
        assert e["state"] == "ok"
        assert [c["url"] for c in e["copies"]] == [str(archive)]


def test_list_names_a_truncated_backup_damaged(cli, app, cfg):
    archive = backup_now(cfg)
    with open(archive, "r+b") as f:
        f.truncate(archive.stat().st_size - 10)
    (entry,) = list_json(cli, cfg)
    assert entry["state"] == "damaged"
    assert "bytes" in entry["copies"][0]["problem"]
    assert "damaged" in ok(cli("list", config=cfg))


def test_list_json_newest_first_within_the_same_second(cli, app, cfg):
    """Two backups made in the same second (cron and a manual one): the later one is newer."""
    older = backup_now(cfg)
    (app / "state" / "files" / "users" / "user-0000.json").write_text('{"version": "newer"}')
    wait_next_second()
    newer = backup_now(cfg)
    # Give both the id they would get if made in the same second, with random
    # parts that sort the other way round (ids are '<second>-<random hex>').
    second = backup_id(newer).split("-")[0]
    for archive, token in ((older, "ffffff"), (newer, "000000")):
        doc = json.loads(manifest_of(archive).read_text())
        new_id = f"{second}-{token}"
        new_archive = archive.with_name(f"eternia-backup-{new_id}.tar.zst")
        doc["backup_id"] = new_id
        doc["archive"]["file"] = new_archive.name
        manifest_of(archive).unlink()
        archive.rename(new_archive)
        manifest_of(new_archive).write_text(json.dumps(doc))
    entries = list_json(cli, cfg)
    assert [e["backup_id"] for e in entries] == [f"{second}-000000", f"{second}-ffffff"]
    ok(cli("restore", "latest", "--to", str(app / "r"), "--source", "files", "--yes", config=cfg))
    assert "newer" in (app / "r" / "files" / "users" / "user-0000.json").read_text()


# -- verify ----------------------------------------------------------------------------


def test_verify_latest_id_path_and_all(cli, app, cfg):
    older = backup_now(cfg)
    wait_next_second()
    newer = backup_now(cfg)
    out = ok(cli("verify", "latest", config=cfg))
    assert out.startswith("ok") and backup_id(newer) in out and "entries" in out
    out = ok(cli("verify", backup_id(older), config=cfg))
    assert out.startswith("ok") and backup_id(older) in out
    out = ok(cli("verify", str(older), config=cfg))  # a path works too
    assert out.startswith("ok") and backup_id(older) in out
    out = ok(cli("verify", "--all", config=cfg))
    assert out.count("ok ") == 2 and "DAMAGED" not in out

    # damage the older one: same size, different bytes, only the checksum can tell
    flip_byte(older)
    proc = cli("verify", "--all", config=cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    damaged = [line for line in proc.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1 and backup_id(older) in damaged[0] and "sha256" in damaged[0]
    assert any(line.startswith("ok") and backup_id(newer) in line for line in proc.stdout.splitlines())
    proc = cli("verify", backup_id(older), config=cfg)
    assert proc.returncode == 1 and "DAMAGED" in proc.stdout and backup_id(older) in proc.stdout

    # `verify` (latest) is what a monitoring job runs: a truncated newest backup must fail it,
    # not be skipped in favour of an older one
    with open(newer, "r+b") as f:
        f.truncate(newer.stat().st_size - 100)
    for args in (["verify"], ["verify", "latest"]):
        proc = cli(*args, config=cfg)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert backup_id(newer) in proc.stdout and "bytes" in proc.stdout


def test_verify_with_no_backups_and_an_unknown_id(cli, app, cfg):
    line = assert_error(cli("verify", "latest", config=cfg), 1)
    assert "no backups" in line and "create" in line
    line = assert_error(cli("verify", "20000101T000000Z-abcdef", config=cfg), 1)
    assert "20000101T000000Z-abcdef" in line


# -- restore ---------------------------------------------------------------------------


def test_restore_latest_to_a_directory_equals_the_original(cli, app, cfg):
    backup_now(cfg)
    original, original_rows = tree(app / "state" / "files"), rows(app / "state" / "app.db")
    out = ok(cli("restore", "latest", "--to", str(app / "restored"), "--yes", config=cfg))
    assert "restored" in out
    assert tree(app / "restored" / "files") == original
    assert "empty-dir" in original and "settings/préférences-ünïcode.json" in original
    assert rows(app / "restored" / "db" / "app.db") == original_rows
    # the live state was not touched
    assert tree(app / "state" / "files") == original


def test_restore_in_place_puts_the_original_back(cli, app, cfg):
    backup_now(cfg)
    original, original_rows = tree(app / "state" / "files"), rows(app / "state" / "app.db")
    damage_state(app)
    assert tree(app / "state" / "files") != original and rows(app / "state" / "app.db") != original_rows

    ok(cli("restore", "latest", "--yes", config=cfg, input=""))
    assert tree(app / "state" / "files") == original
    assert rows(app / "state" / "app.db") == original_rows
    assert hidden_leftovers(app / "state") == []  # no staging or replaced copies left


def test_restore_without_yes_and_no_terminal_refuses(cli, app, cfg):
    backup_now(cfg)
    damage_state(app)
    before, before_rows = tree(app / "state" / "files"), rows(app / "state" / "app.db")
    line = assert_error(cli("restore", "latest", config=cfg, input=""), 1)
    assert "--yes" in line
    assert tree(app / "state" / "files") == before
    assert rows(app / "state" / "app.db") == before_rows
    assert hidden_leftovers(app / "state") == []


def test_restore_on_a_terminal_asks_first(app, cfg):
    """On a terminal, restore asks; 'n' changes nothing, 'y' restores."""
    import pty

    proc = subprocess.run([sys.executable, "-m", "eternia_backup", "--config", str(cfg), "create"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    archive = Path(proc.stdout.strip())
    original = tree(app / "state" / "files")
    damage_state(app)
    damaged = tree(app / "state" / "files")

    def restore_answering(answer: str) -> subprocess.CompletedProcess:
        master, slave = pty.openpty()
        try:
            os.write(master, answer.encode() + b"\n")
            return subprocess.run(
                [sys.executable, "-m", "eternia_backup", "--config", str(cfg), "restore", str(archive)],
                stdin=slave, capture_output=True, text=True, timeout=60)
        finally:
            os.close(slave)
            os.close(master)

    proc = restore_answering("n")
    assert proc.returncode == 1 and "Go ahead?" in proc.stdout, proc.stdout + proc.stderr
    assert "This restore will:" in proc.stderr and f"replace the contents of {app / 'state' / 'files'}" in proc.stderr
    assert "cancelled" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(app / "state" / "files") == damaged

    proc = restore_answering("y")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree(app / "state" / "files") == original


def test_restore_dry_run_changes_nothing_and_says_what_would_change(cli, app, cfg):
    backup_now(cfg)
    damage_state(app)
    before, before_rows = tree(app / "state" / "files"), rows(app / "state" / "app.db")
    out = ok(cli("restore", "latest", "--dry-run", config=cfg, input=""))
    assert "dry run" in out and "nothing was changed" in out
    assert f"would replace the contents of {app / 'state' / 'files'}" in out
    assert f"would replace SQLite database {app / 'state' / 'app.db'}" in out
    assert tree(app / "state" / "files") == before
    assert rows(app / "state" / "app.db") == before_rows
    assert hidden_leftovers(app / "state") == []

    # into a new directory: it says it would create it, and does not
    out = ok(cli("restore", "latest", "--dry-run", "--to", str(app / "r"), config=cfg))
    assert "would create" in out
    assert not (app / "r").exists()


def test_restore_one_source_only(cli, app, cfg):
    backup_now(cfg)
    original_rows = rows(app / "state" / "app.db")
    damage_state(app)
    damaged_files = tree(app / "state" / "files")

    out = ok(cli("restore", "latest", "--source", "db", "--yes", config=cfg))
    assert "(db)" in out
    assert rows(app / "state" / "app.db") == original_rows
    assert tree(app / "state" / "files") == damaged_files  # the other source is left alone

    ok(cli("restore", "latest", "--source", "files", "--to", str(app / "r"), "--yes", config=cfg))
    assert sorted(p.name for p in (app / "r").iterdir()) == ["files"]

    line = assert_error(cli("restore", "latest", "--source", "nope", "--yes", config=cfg), 2)  # a usage mistake
    assert "'nope'" in line and "files" in line and "db" in line


def test_restore_refuses_a_corrupted_archive_and_changes_nothing(cli, app, cfg):
    archive = backup_now(cfg)
    damage_state(app)
    before, before_rows = tree(app / "state" / "files"), rows(app / "state" / "app.db")
    flip_byte(archive)
    line = assert_error(cli("restore", str(archive), "--yes", config=cfg), 1)
    assert "sha256" in line
    assert tree(app / "state" / "files") == before
    assert rows(app / "state" / "app.db") == before_rows
    assert hidden_leftovers(app / "state") == []


def test_restore_an_archive_without_its_manifest_is_refused(cli, app, cfg):
    archive = backup_now(cfg)
    manifest_of(archive).unlink()
    line = assert_error(cli("restore", str(archive), "--to", str(app / "r"), "--yes", config=cfg), 1)
    assert "manifest" in line
    assert not (app / "r").exists()


# -- download --------------------------------------------------------------------------


@pytest.fixture
def two_targets(write_config) -> Path:
    return write_config(section(targets=[{"name": "nas", "url": "nas"}]))


def test_an_in_place_restore_of_another_apps_backup_in_shared_storage_is_refused(cli, tmp_path):
    """Two applications with one storage_path and the default backup.name share a series, so app A's
    ``latest`` can be app B's backup: restoring it in place would replace A's state with B's. A backup
    read from other paths on this host is refused in place (and in a dry run), nothing changes;
    ``--to`` takes it elsewhere, ``--force`` restores it in place (a state that moved)."""
    shared = tmp_path / "shared"
    apps = {}
    for app in ("appA", "appB"):
        (tmp_path / app / "data").mkdir(parents=True)
        (tmp_path / app / "data" / f"{app}.txt").write_text(app)
        config = tmp_path / app / "eternia-backup.yaml"
        config.write_text(yaml.safe_dump({"backup": {"storage_path": str(shared)}}))
        apps[app] = config
        assert cli("create", "-q", config=config).returncode == 0
    for args in (("--yes",), ("--dry-run",)):
        proc = cli("restore", "latest", *args, config=apps["appA"])
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "was made on this host from other paths" in proc.stderr, proc.stderr
        assert str(tmp_path / "appB" / "data") in proc.stderr and "backup.name" in proc.stderr, proc.stderr
        assert sorted(p.name for p in (tmp_path / "appA" / "data").iterdir()) == ["appA.txt"]
    assert cli("restore", "latest", "--to", str(tmp_path / "out"), "--yes", config=apps["appA"]).returncode == 0
    assert (tmp_path / "out" / "data" / "appB.txt").read_text() == "appB"
    assert cli("restore", "latest", "--yes", config=apps["appB"]).returncode == 0  # its own: as ever
    proc = cli("restore", "latest", "--yes", "--force", config=apps["appA"])
    assert proc.returncode == 0 and "going ahead: --force" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "appA" / "data").iterdir()) == ["appB.txt"]


def test_retention_leaves_alone_another_apps_backups_in_shared_storage(cli, tmp_path):
    """With keep_last: 1, app B's cleanup deleted app A's only backup (one series for both); backups
    made on this host from other paths are now left to their maker, with a warning saying why."""
    shared, made = tmp_path / "shared", {}
    for app in ("appA", "appB"):
        (tmp_path / app / "data").mkdir(parents=True)
        (tmp_path / app / "data" / f"{app}.txt").write_text(app)
        config = tmp_path / app / "eternia-backup.yaml"
        config.write_text(yaml.safe_dump({"backup": {"storage_path": str(shared), "retention": {"keep_last": 1}}}))
        made[app] = (config, [ID_RE.search(cli("create", "--json", config=config).stdout).group(0)
                              for _ in range(2)])
    proc = cli("cleanup", "--json", config=made["appB"][0])
    assert proc.returncode == 0, proc.stderr
    assert "2 backup(s) of this series were made on this host from other paths" in proc.stderr, proc.stderr
    left = {b["backup_id"] for b in json.loads(cli("list", "--json", config=made["appA"][0]).stdout)["backups"]}
    assert left == {*made["appA"][1], made["appB"][1][1]}  # B's older one went; A's two stayed
    assert cli("cleanup", config=made["appA"][0]).returncode == 0
    left = {b["backup_id"] for b in json.loads(cli("list", "--json", config=made["appA"][0]).stdout)["backups"]}
    assert left == {made["appA"][1][1], made["appB"][1][1]}


def test_restore_to_a_file_says_so(cli, app, cfg):
    assert cli("create", config=cfg).returncode == 0
    line = assert_error(cli("restore", "latest", "--to", str(cfg), "--yes", config=cfg), 2)
    assert f"--to {cfg} is a file, not a directory" in line, line
    assert sorted(p.name for p in cfg.parent.iterdir() if p.name.startswith(".eternia")) == []


def test_download_to_a_directory_copies_archive_and_manifest(cli, app, two_targets):
    archive = backup_now(two_targets)
    on_nas = app / "nas" / archive.name
    assert on_nas.is_file() and manifest_of(on_nas).is_file()

    out = ok(cli("download", str(on_nas), "--to", str(app / "dl"), config=two_targets)).strip()
    got = Path(out)
    assert got == app / "dl" / archive.name
    assert got.read_bytes() == on_nas.read_bytes()
    assert manifest_of(got).read_bytes() == manifest_of(on_nas).read_bytes()
    assert stat.S_IMODE(got.stat().st_mode) == 0o600
    assert sorted(p.name for p in (app / "dl").iterdir()) == sorted([got.name, manifest_of(got).name])
    assert backup_id(archive) in ok(cli("verify", str(got), config=two_targets))

    # a file:// URL names the same backup
    out = ok(cli("download", on_nas.as_uri(), "--to", str(app / "dl2"), config=two_targets)).strip()
    assert Path(out).read_bytes() == on_nas.read_bytes()


def test_download_without_to_restores_the_local_copy_from_another_target(cli, app, two_targets):
    archive = backup_now(two_targets)
    original = archive.read_bytes()
    archive.unlink()
    manifest_of(archive).unlink()  # the local disk lost its copy
    out = ok(cli("download", str(app / "nas" / archive.name), config=two_targets)).strip()
    assert Path(out) == archive
    assert archive.read_bytes() == original and manifest_of(archive).is_file()
    ok(cli("verify", "--all", config=two_targets))


def test_download_of_a_corrupted_backup_fails_and_leaves_nothing(cli, app, two_targets):
    archive = backup_now(two_targets)
    flip_byte(app / "nas" / archive.name)
    line = assert_error(cli("download", str(app / "nas" / archive.name), "--to", str(app / "dl"),
                            config=two_targets), 1)
    assert "sha256" in line
    assert not (app / "dl").exists() or list((app / "dl").iterdir()) == []


# -- cleanup ---------------------------------------------------------------------------


def test_cleanup_with_keep_last(cli, app, write_config):
    sec = section(retention={"keep_last": 2})
    del sec["retention_days"]
    cfg = write_config(sec)
    made = [backup_now(cfg) for _ in range(3)]

    out = ok(cli("cleanup", "--dry-run", config=cfg))
    assert f"would delete {backup_id(made[0])}" in out and "would delete 1 backup(s)" in out
    assert all(a.exists() and manifest_of(a).exists() for a in made)

    out = ok(cli("cleanup", config=cfg))
    assert out.strip().endswith("deleted 1 backup(s)") and f"deleted {backup_id(made[0])}" in out
    assert {e["backup_id"] for e in list_json(cli, cfg)} == {backup_id(made[1]), backup_id(made[2])}
    assert not made[0].exists() and not manifest_of(made[0]).exists()
    assert ok(cli("cleanup", config=cfg)).strip().endswith("deleted 0 backup(s)")


def test_cleanup_retention_days_and_never_the_newest(cli, app, write_config):
    cfg = write_config(section(retention_days=0))
    made = [backup_now(cfg) for _ in range(3)]

    def age(archive: Path, days: int) -> None:
        m = manifest_of(archive)
        doc = json.loads(m.read_text())
        old = datetime.now(timezone.utc) - timedelta(days=days)
        doc["created_at"] = old.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        m.write_text(json.dumps(doc))

    age(made[0], 30)
    age(made[1], 20)
    # retention_days: 0 keeps everything, however old
    assert ok(cli("cleanup", config=cfg)).strip().endswith("deleted 0 backup(s)")

    cfg = write_config(section(retention_days=7))
    out = ok(cli("cleanup", "--dry-run", config=cfg))
    assert "would delete 2 backup(s)" in out
    assert all(a.exists() for a in made)
    out = ok(cli("cleanup", config=cfg))
    assert "deleted 2 backup(s)" in out
    assert [e["backup_id"] for e in list_json(cli, cfg)] == [backup_id(made[2])]

    age(made[2], 10)  # the only backup is old now: still never deleted
    assert ok(cli("cleanup", config=cfg)).strip().endswith("deleted 0 backup(s)")
    assert made[2].exists() and manifest_of(made[2]).exists()


# -- plugins, config, version ----------------------------------------------------------


def test_plugins_lists_every_builtin_provider(cli):
    out = ok(cli("plugins"))
    rows_ = [line.split() for line in out.splitlines()]
    provided = {(r[0], r[1]) for r in rows_}
    for kind, name in [("source", "directory"), ("source", "sqlite"), ("source", "command"),
                       ("archiver", "tar"), ("compression", "zstd"), ("compression", "gzip"),
                       ("compression", "xz"), ("compression", "none")]:
        assert (kind, name) in provided, out
    assert any(r[0] == "target" and "fsspec" in " ".join(r) for r in rows_), out
    # which plugin provides it
    assert any(r[:2] == ["source", "sqlite"] and r[2] == "eternia_backup.builtin.sqlite" for r in rows_)

    data = json.loads(ok(cli("plugins", "--json")))
    names = {(p["kind"], p["name"]) for p in data["plugins"]}
    assert ("compression", "xz") in names and ("source", "command") in names


def test_config_check(cli, app, cfg, write_config):
    out = ok(cli("config", "check", config=cfg))
    assert str(cfg) in out and "ok" in out

    write_config(section(retention_days="seven"))
    line = assert_error(cli("config", "check", config=cfg), 2)
    assert "backup.retention_days" in line and "'seven'" in line


def test_config_check_refuses_nested_directory_sources_and_two_targets_in_one_directory(cli, app, write_config):
    """Both passed config check, then every in-place restore failed (nested sources) or every create
    collided with itself (one directory twice); now they are config errors (exit 2), before any I/O."""
    cfg = write_config(section(sources=[{"type": "directory", "name": "files", "path": "state/files"},
                                        {"type": "directory", "name": "uploads", "path": "state/files/../files/up"}]))
    line = assert_error(cli("config", "check", config=cfg), 2)
    assert "'uploads'" in line and "lies inside 'files'" in line and str(app / "state" / "files") in line, line
    assert_error(cli("create", config=cfg), 2)
    assert not (app / "backups").exists()
    cfg = write_config(section(targets=[{"name": "copy", "url": str(app / "backups") + "/"}]))
    line = assert_error(cli("config", "check", config=cfg), 2)
    assert "'copy' and 'local' are one directory" in line, line
    cfg = write_config(section(sources=[{"type": "directory", "name": "files", "path": "state/files"},
                                        {"type": "directory", "name": "more", "path": "state/files-more"}]))
    (app / "state" / "files-more").mkdir()
    assert cli("config", "check", config=cfg).returncode == 0  # a shared name prefix is no nesting


def test_config_check_fails_when_create_could_not_work_on_this_machine(cli, app, write_config):
    """A valid config whose source directory or SQLite file is missing, whose storage is a file, or
    whose identity file cannot be read: config check names each problem and exits 1 (it said ok)."""
    (app / "not-a-dir").write_text("x")
    cfg = write_config(section(storage_path="not-a-dir", sources=[
        {"type": "directory", "name": "files", "path": "state/nothing-here"},
        {"type": "sqlite", "name": "db", "path": "state/missing.db"}],
        encryption={"enabled": True, "passphrase": "pw", "identity_file": "no-key.txt"}))
    proc = cli("config", "check", config=cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, proc.stdout
    assert "state/nothing-here does not exist" in problems[0] and "missing.db does not exist" in problems[1]
    assert "not-a-dir is a file" in problems[2] and "no-key.txt cannot be read" in problems[3]
    data = json.loads(cli("config", "check", "--json", config=cfg).stdout)
    assert data["ok"] is False and len(data["problems"]) == 4
    cfg = write_config(section())
    data = json.loads(ok(cli("config", "check", "--json", config=cfg)))
    assert data["ok"] is True and data["problems"] == []


def test_a_key_given_twice_is_refused_by_config_check_and_create(cli, app, cfg):
    """YAML keeps the last of two equal keys: a second backup: section with enabled: false, or a
    repeated retention_days, would silently change the config."""
    text = cfg.read_text()
    cfg.write_text(text + "backup:\n  enabled: false\n")
    for args in (("config", "check"), ("create",)):
        line = assert_error(cli(*args, config=cfg), 2)
        assert line.endswith(f"{cfg}: backup: given twice, at lines 1 and {len(text.splitlines()) + 1} "
                             "(YAML would keep only the last); remove one"), line
    cfg.write_text(text.replace("  retention_days: 7\n", "  retention_days: 7\n  retention_days: 30\n"))
    line = assert_error(cli("create", config=cfg), 2)
    assert "backup.retention_days: given twice" in line
    assert not (app / "backups").exists()


def test_config_show_masks_secrets(cli, app, write_config):
    cfg = write_config(section(targets=[
        {"name": "nas", "url": "nas", "options": {"secret": "hunter2hunter2", "password": "${NAS_PASSWORD}"}},
    ]))
    env = {"NAS_PASSWORD": "correcthorsebattery"}
    for args in (("config", "show"), ("config", "show", "--json")):
        proc = cli(*args, config=cfg, env=env)
        out = ok(proc)
        assert "hunter2hunter2" not in out + proc.stderr
        assert "correcthorsebattery" not in out + proc.stderr
        assert "********" in out
    shown = yaml.safe_load(ok(cli("config", "show", config=cfg, env=env)))["backup"]
    assert [t["name"] for t in shown["targets"]] == ["local", "nas"]
    assert shown["targets"][0]["url"] == str(app / "backups")
    assert shown["retention"]["days"] == 7
    assert [s["name"] for s in shown["sources"]] == ["files", "db"]

    # nor do the logs of a real backup show them
    proc = cli("-vv", "create", config=cfg, env=env)
    ok(proc)
    assert "hunter2hunter2" not in proc.stdout + proc.stderr
    assert "correcthorsebattery" not in proc.stdout + proc.stderr


def test_version(cli):
    out = ok(cli("--version"))
    assert out.strip() == f"eternia-backup {eternia_backup.__version__}"


def test_console_script_is_the_same_program(real_cli, app, cfg):
    script = Path(sys.executable).parent / "eternia-backup"
    assert script.is_file(), f"console script missing: {script} (pip install -e .)"
    for args in (["--version"], ["plugins"]):
        by_module = real_cli(*args)
        by_script = subprocess.run([str(script), *args], capture_output=True, text=True)
        assert by_module.returncode == by_script.returncode == 0
        assert by_module.stdout == by_script.stdout
    # and it makes backups the same way
    proc = subprocess.run([str(script), "--config", str(cfg), "create"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_file()


# -- exit status, error lines, config discovery ---------------------------------------


def test_usage_errors_exit_2_without_traceback(real_cli, cfg):
    for args in (["frobnicate"], ["restore"], ["verify", "latest", "--all"], []):
        proc = real_cli(*args, config=cfg)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_command_or_backup_says_what_to_give(real_cli, cfg):
    for command in ("restore", "ls"):
        proc = real_cli(command, config=cfg)
        assert proc.returncode == 2
        assert "required: backup (name one: 'latest', an id from 'eternia-backup list'" in proc.stderr
    proc = real_cli(config=cfg)
    assert proc.returncode == 2 and "'eternia-backup --help'" in proc.stderr


def test_config_errors_exit_2_and_change_nothing(real_cli, app, write_config):
    cfg = write_config(section(retention_days="seven"))
    for args in (["create"], ["restore", "latest", "--yes"], ["config", "show"]):
        line = assert_error(real_cli(*args, config=cfg), 2)
        assert "backup.retention_days" in line and "whole number" in line and "'seven'" in line
    assert not (app / "backups").exists()


def test_operation_failures_exit_1(real_cli, app, cfg):
    line = assert_error(real_cli("restore", "nosuchbackup", "--yes", config=cfg), 1)
    assert "nosuchbackup" in line
    line = assert_error(real_cli("restore", "latest", "--yes", config=cfg), 1)
    assert "no backups" in line
    line = assert_error(real_cli("download", str(app / "nothing-here.tar.zst"), config=cfg), 1)
    assert "nothing-here" in line


def _cli_as_nobody(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI run by user nobody through runuser (tests run as root, who may write anywhere), with
    runuser's environment (HOME=/nonexistent, as for a service user), no $XDG_STATE_HOME, plus ``env``."""
    import pwd
    import sysconfig

    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run the CLI as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    python = sys.executable
    code = "import sys; from eternia_backup.cli import main; sys.exit(main(sys.argv[1:]))"
    if subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True).returncode:
        # this interpreter lives where nobody may not go (/root): the system's, with our packages
        python = shutil.which("python3", path="/usr/bin:/bin")
        version = subprocess.run([python or "false", "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()
        if version != str(sys.version_info[:2]):
            pytest.skip("no interpreter user nobody may run")
        code = f"import site; site.addsitedir({sysconfig.get_path('purelib')!r}); {code}"
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", "-u", "XDG_STATE_HOME", *extra, python, "-c", code, *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_a_state_directory_that_cannot_be_made_is_a_clear_error(cli, tmp_path):
    """A service user whose storage is /var/backups/myapp (its own, in a directory only root may
    write) and whose home does not exist: the state directory can be made neither beside the
    storage nor in the home, and the error says which, why and what to do."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="eternia-nobody-"))  # pytest's tmp_path is root-only
    try:
        os.chmod(base, 0o755)
        (base / "rootonly" / "myapp").mkdir(parents=True)
        (base / "app" / "data").mkdir(parents=True)
        (base / "app" / "data" / "a.txt").write_text("hello")
        config = base / "app" / "eternia-backup.yaml"
        config.write_text(f"backup:\n  storage_path: {base / 'rootonly' / 'myapp'}\n")
        for p in (base / "rootonly" / "myapp", base / "app" / "data", base / "app" / "data" / "a.txt"):
            os.chown(p, 65534, 65534)
        quiet = {"ETERNIA_BACKUP_DISABLE_PLUGINS": "postgres,mysql,redis"}  # not importable by nobody

        line = assert_error(_cli_as_nobody("create", cwd=config.parent, env=quiet), 1)
        assert "cannot make the state directory /nonexistent/.local/state/eternia-backup" in line, line
        assert "permission denied" in line and f"cannot write {base / 'rootonly'}" in line
        assert "backup.state_dir" in line and "XDG_STATE_HOME" in line
        assert "unexpected" not in line
        assert not list((base / "rootonly" / "myapp").iterdir())
        for command in ("cleanup", "drill"):  # they take the lock without temporary files
            line = assert_error(_cli_as_nobody(command, cwd=config.parent, env=quiet), 1)
            assert "cannot make the state directory /nonexistent/.local/state/eternia-backup" in line, line

        # what it says to do works: $XDG_STATE_HOME, or backup.state_dir
        xdg = base / "app" / "xdg"
        line = assert_error(_cli_as_nobody("create", cwd=config.parent, env={**quiet, "XDG_STATE_HOME": xdg}), 1)
        assert f"cannot make the state directory {xdg}/eternia-backup" in line  # not there yet: the app dir is root's
        os.chown(base / "app", 65534, 65534)
        ok(_cli_as_nobody("create", cwd=config.parent, env={**quiet, "XDG_STATE_HOME": xdg}))
        assert (xdg / "eternia-backup").is_dir()
        assert len(list((base / "rootonly" / "myapp").glob("*.manifest.json"))) == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)

    # one that cannot be made for anyone (not even root): beside storage in /proc, or backup.state_dir there
    for storage, state_dir, said in (("/proc/nope", None, "/proc/.nope.eternia"),
                                     ("/sys/backups", None, "/sys/.backups.eternia"),
                                     (str(tmp_path / "backups"), "/proc/nope-state", "/proc/nope-state")):
        config = tmp_path / "eternia-backup.yaml"
        config.write_text(yaml.safe_dump({"backup": {"storage_path": storage, "state_dir": state_dir}}))
        (tmp_path / "data").mkdir(exist_ok=True)
        line = assert_error(cli("create", config=config), 1)
        assert f"cannot make the state directory {said}" in line and "unexpected" not in line, line
        assert storage in line if state_dir is None else "set by backup.state_dir" in line

    # with a state directory that can be made, a storage directory that cannot is named as such
    for storage in ("/proc/nope", "/sys/backups"):
        config.write_text(yaml.safe_dump({"backup": {"storage_path": storage, "state_dir": str(tmp_path / "st")}}))
        line = assert_error(cli("create", config=config), 1)
        assert f"target 'local': cannot create the storage directory {storage}: " in line, line
        assert "choose another path" in line and "unexpected" not in line


def test_config_discovery_order(cli, real_cli, app, cfg, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # --config
    create(cli, cfg)
    assert len(list_json(cli, cfg)) == 1
    # $ETERNIA_BACKUP_CONFIG
    out = ok(real_cli("list", "--json", env={"ETERNIA_BACKUP_CONFIG": str(cfg)}, cwd=elsewhere))
    assert len(json.loads(out)["backups"]) == 1
    # ./eternia-backup.yaml in the working directory
    out = ok(real_cli("list", "--json", cwd=app))
    assert len(json.loads(out)["backups"]) == 1
    # --config wins over the variable, the variable over ./eternia-backup.yaml
    line = assert_error(real_cli("list", config=elsewhere / "none.yaml",
                            env={"ETERNIA_BACKUP_CONFIG": str(cfg)}, cwd=app), 2)
    assert "none.yaml" in line
    line = assert_error(real_cli("list", env={"ETERNIA_BACKUP_CONFIG": str(elsewhere / "gone.yaml")}, cwd=app), 2)
    assert "gone.yaml" in line and "ETERNIA_BACKUP_CONFIG" in line


def test_missing_config_says_how_to_fix_it(real_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_error(real_cli("create", cwd=empty), 2)
    assert "eternia-backup.yaml" in line and "--config" in line and "ETERNIA_BACKUP_CONFIG" in line
    assert list(empty.iterdir()) == []


# -- the seed's script and the README's first command -------------------------------


def test_seed_restore_script_list_and_restore_path(tmp_path):
    """The original description's workflow in a copy of the example app: Python API backup, script list + restore."""
    app = tmp_path / "app"
    (app / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "app" / "eternia-backup.yaml", app / "eternia-backup.yaml")
    shutil.copy(ROOT / "examples" / "app" / "scripts" / "restore_backup.py", app / "scripts")
    shutil.copytree(ROOT / "examples" / "app" / "modules", app / "modules")
    make_state(app / "state", files=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETERNIA_")}

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, *args], cwd=app, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    assert "no backups yet" in run("scripts/restore_backup.py", "list")
    out = run("-c", "from modules.backup_manager import backup_manager\n"
                    "backup_path = backup_manager.create_backup()\n"
                    'print(f"Backup created at: {backup_path}")\n')
    assert out.startswith("Backup created at: ")
    archive = Path(out.split(": ", 1)[1].strip())
    assert archive.parent == app / "backups" and archive.is_file()

    listed = run("scripts/restore_backup.py", "list")
    assert backup_id(archive) in listed

    original = {k: v for k, v in tree(app / "state" / "files").items()
                if not (k.startswith("cache") or k.endswith(".tmp"))}  # the example excludes these
    original_rows = rows(app / "state" / "app.db")
    shutil.rmtree(app / "state")  # disaster
    out = run("scripts/restore_backup.py", "restore", str(archive))
    assert backup_id(archive) in out
    assert tree(app / "state" / "files") == original
    assert rows(app / "state" / "app.db") == original_rows

    out = run("-c", "from modules.backup_manager import backup_manager\n"
                    "deleted_count = backup_manager.cleanup_old_backups()\n"
                    'print(f"Deleted {deleted_count} old backups")\n')
    assert out.strip() == "Deleted 0 old backups"


def test_readme_first_command_demo(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ETERNIA_")}, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("OK: the restored state equals the original"), proc.stdout


def test_to_database_is_refused_clearly_where_it_cannot_apply(cli, app, write_config):
    cfg = write_config()
    backup_now(cfg)
    line = assert_error(cli("restore", "latest", "--to-database", "copy", config=cfg), 2)
    assert "needs exactly one --source" in line and "files, db" in line
    line = assert_error(cli("restore", "latest", "--source", "files", "--to-database", "copy", config=cfg), 2)
    assert "source 'files' (type directory) cannot be restored into another database" in line
    line = assert_error(cli("restore", "latest", "--source", "db", "--to-database", "copy", "--to",
                            str(app / "out"), config=cfg), 2)
    assert "cannot be combined with --to DIR" in line
    assert not (app / "out").exists()
