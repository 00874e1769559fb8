"""Living sources: files that vanish, change or cannot be read while a backup runs.

The backup is still made; each problem is a warning naming the file, kept in the
manifest, logged, and turned into exit status 3 by ``create``. The other
processes are real: a deleting process and a writer process run at a chosen
point of the backup, deterministically: the backup's ``progress`` callback is
called for every chunk written to the archive stream, so after the first
megabytes of the first (big, sorted first) file, the next entries are listed
but not yet read; the callback runs the other process to completion there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from eternia_backup.errors import EXIT_WARNINGS
from eternia_backup.manager import BackupManager

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)

MIB = 1024 * 1024


def make_world(base: Path, **source_options) -> tuple[Path, Path]:
    """A data/ tree whose first entry (sorted) is a 6 MiB file; returns (config, data dir)."""
    data = base / "data"
    data.mkdir(parents=True)
    (data / "a-big.bin").write_bytes(os.urandom(6 * MIB))
    (data / "keep.txt").write_text("kept\n")
    config = base / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups",
        "sources": [{"type": "directory", "name": "data", "path": "data", **source_options}],
    }}))
    return config, data


def run_at(offset: int, action):
    """A progress callback that runs ``action()`` once, when the archive stream passes ``offset`` bytes."""
    state = {"written": 0, "done": False}

    def progress(n: int) -> None:
        state["written"] += n
        if not state["done"] and state["written"] >= offset:
            state["done"] = True
            action()

    return progress


def other_process(code: str) -> None:
    """Run Python ``code`` in a separate process, to completion."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def restored(mgr: BackupManager, backup_id: str, dest: Path) -> Path:
    mgr.restore_backup(backup_id, to=dest)
    return dest / "data"


def problems(result) -> dict[str, str]:
    return {w["path"]: w["problem"] for w in result.warnings}


def test_file_and_directory_deleted_between_listing_and_reading_are_skipped_with_warnings(tmp_path, caplog):
    config, data = make_world(tmp_path)
    (data / "b-rotated.log").write_text("old log\n")
    (data / "c-tmpdir").mkdir()
    (data / "c-tmpdir" / "scratch").write_text("x")
    deleter = (f"import os, shutil; os.unlink({str(data / 'b-rotated.log')!r}); "
               f"shutil.rmtree({str(data / 'c-tmpdir')!r})")
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(deleter)))

    assert result.ok and result.warning_count == 2
    found = problems(result)
    assert "vanished" in found["b-rotated.log"] and "vanished" in found["c-tmpdir"]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("b-rotated.log" in m and "vanished" in m for m in logged)
    manifest = json.loads(Path(str(result)).with_name(result.manifest.filename).read_text())
    assert manifest["sources"][0]["warning_count"] == 2
    assert {w["path"] for w in manifest["sources"][0]["warnings"]} == {"b-rotated.log", "c-tmpdir"}
    assert mgr.verify_backup(result.backup_id).ok
    out = restored(mgr, result.backup_id, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["a-big.bin", "keep.txt"]
    assert mgr.list_backups()[0].to_dict()["warning_count"] == 2


@pytest.mark.parametrize("replacement", ["symlink", "fifo", "directory"])
def test_file_replaced_after_it_was_listed_is_skipped_with_a_warning(tmp_path, replacement):
    """The walk takes a regular file's type from the listing (no stat): what replaces it before it is
    opened is not read (a FIFO would block, a link is not followed), and the rest is backed up."""
    config, data = make_world(tmp_path)
    swapped = data / "b-swapped.txt"
    swapped.write_text("a regular file when listed\n")
    make = {"symlink": "os.symlink('keep.txt', p)", "fifo": "os.mkfifo(p)", "directory": "os.mkdir(p)"}[replacement]
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(
        f"import os; p = {str(swapped)!r}; os.unlink(p); {make}")))

    assert result.ok and result.warning_count == 1
    assert problems(result) == {"b-swapped.txt": "was replaced by something other than a file before it was read; "
                                                 "skipped"}
    out = restored(mgr, result.backup_id, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["a-big.bin", "keep.txt"]


def test_file_rewritten_in_place_while_read_is_archived_and_warned(tmp_path):
    config, data = make_world(tmp_path)
    big = data / "a-big.bin"
    writer = (f"f = open({str(big)!r}, 'r+b'); f.seek({4 * MIB}); f.write(b'N' * {2 * MIB}); f.close()")
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(writer)))

    assert result.warning_count == 1
    assert "changed while it was read" in problems(result)["a-big.bin"]
    out = restored(mgr, result.backup_id, tmp_path / "out")
    assert (out / "a-big.bin").stat().st_size == 6 * MIB  # archived as read: the new tail
    assert (out / "a-big.bin").read_bytes()[-10:] == b"N" * 10


def test_file_truncated_while_read_is_padded_with_zeros_and_warned(tmp_path):
    config, data = make_world(tmp_path)
    big = data / "a-big.bin"
    head = big.read_bytes()[: 3 * MIB]
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(f"import os; os.truncate({str(big)!r}, {3 * MIB})")))

    assert result.warning_count == 1
    assert f"its last {3 * MIB} bytes were archived as zeros" in problems(result)["a-big.bin"]
    assert mgr.verify_backup(result.backup_id).ok
    restored_big = (restored(mgr, result.backup_id, tmp_path / "out") / "a-big.bin").read_bytes()
    assert restored_big == head + bytes(3 * MIB)


def test_file_growing_while_read_is_archived_at_its_first_size_and_warned(tmp_path):
    config, data = make_world(tmp_path)
    big = data / "a-big.bin"
    original = big.read_bytes()
    mgr = BackupManager.from_config(config)

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(
        f"open({str(big)!r}, 'ab').write(b'appended' * 1000)")))

    assert "changed while it was read" in problems(result)["a-big.bin"]
    assert (restored(mgr, result.backup_id, tmp_path / "out") / "a-big.bin").read_bytes() == original


def test_unchanged_tree_has_no_warnings_and_create_exits_0(tmp_path):
    config, _ = make_world(tmp_path)
    r = run_cli("create", "--json", config=config)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["warning_count"] == 0 and out["warnings"] == []


# -- unreadable files: skipped with a warning, or fatal with on_unreadable: fail -------------


def _as_nobody() -> list[str]:
    """Run the CLI without root's bypass of file permissions (tests run as root here)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is needed to drop root for this test")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def shared_tmp():
    """A tmp dir a dropped-privilege process can use (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="eternia-living-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _unreadable_world(base: Path, **options) -> Path:
    config, data = make_world(base, **options)
    (data / "secret.key").write_text("root only\n")
    os.chmod(data / "secret.key", 0o000)
    (data / "private").mkdir()
    (data / "private" / "inside.txt").write_text("x")
    os.chmod(data / "private", 0o000)
    (data / "listed").mkdir()  # may be listed (r) but not entered (x)
    (data / "listed" / "unseen.txt").write_text("x")
    os.chmod(data / "listed", 0o644)
    if os.geteuid() == 0:
        for p in [base, *base.rglob("*")]:
            if p.name not in ("secret.key", "private", "inside.txt", "listed", "unseen.txt"):
                os.chown(p, 65534, 65534)
    return config


def _cli(prefix: list[str], *args: str, config: Path) -> subprocess.CompletedProcess:
    cmd = prefix + [sys.executable, "-m", "eternia_backup", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=config.parent,
                          env={**os.environ, "HOME": str(config.parent)})


def test_unreadable_file_and_directory_are_skipped_and_create_exits_3_naming_them(shared_tmp):
    prefix = _as_nobody()
    config = _unreadable_world(shared_tmp)

    r = _cli(prefix, "create", config=config)
    assert r.returncode == EXIT_WARNINGS == 3, r.stderr
    summary = [line for line in r.stderr.splitlines() if line.startswith("warning: backup")]
    assert len(summary) == 1
    assert "3 warning(s)" in summary[0] and "data/secret.key" in summary[0] and "data/private" in summary[0]
    assert "data/listed/unseen.txt" in summary[0] and "permission denied" in summary[0]

    listed = json.loads(_cli(prefix, "list", "--json", config=config).stdout)
    assert listed["backups"][0]["warning_count"] == 3
    table = _cli(prefix, "list", config=config).stdout.splitlines()
    assert "  ok (3 warnings)  " in table[1], table  # not a plain "ok"
    status = json.loads(_cli(prefix, "status", "--json", config=config).stdout)
    assert status["newest_backup"]["warning_count"] == 3

    r = _cli(prefix, "create", "--json", config=config)
    assert r.returncode == 3
    body = json.loads(r.stdout)
    assert body["warning_count"] == 3
    assert {(w["source"], w["path"]) for w in body["warnings"]} == {
        ("data", "secret.key"), ("data", "private"), ("data", "listed/unseen.txt")}


def test_on_unreadable_fail_fails_the_backup_naming_the_file(shared_tmp):
    prefix = _as_nobody()
    config = _unreadable_world(shared_tmp, on_unreadable="fail")
    r = _cli(prefix, "create", config=config)
    assert r.returncode == 1
    assert "permission denied" in r.stderr and "data/listed/unseen.txt" in r.stderr  # the first one, sorted
    assert "on_unreadable" in r.stderr
    assert not [p for p in (shared_tmp / "backups").iterdir() if p.name.endswith(".manifest.json")]


def test_on_unreadable_rejects_unknown_values(tmp_path):
    config, _ = make_world(tmp_path, on_unreadable="ignore")
    with pytest.raises(Exception, match="on_unreadable"):
        BackupManager.from_config(config)


# -- paths longer than PATH_MAX ------------------------------------------------------------


def test_path_longer_than_path_max_is_skipped_with_a_warning_not_a_failure(tmp_path):
    config, data = make_world(tmp_path)
    fd = os.open(data, os.O_RDONLY)
    try:
        for i in range(18):  # 18 x 251 bytes: well past 4096
            name = f"{i:02d}" + "d" * 249
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)

    r = run_cli("create", "--json", config=config)
    assert r.returncode == 3, r.stderr
    body = json.loads(r.stdout)
    assert body["warning_count"] == 1 and "PATH_MAX" in body["warnings"][0]["problem"]
    mgr = BackupManager.from_config(config)
    assert mgr.verify_backup("latest").ok
    mgr.restore_backup("latest", to=tmp_path / "out")
    assert (tmp_path / "out" / "data" / "keep.txt").read_text() == "kept\n"


def test_warnings_are_capped_in_the_manifest_with_the_total_count(tmp_path):
    config, data = make_world(tmp_path)
    many = 130
    for i in range(many):
        (data / f"z-{i:03d}.tmp").write_text("x")
    mgr = BackupManager.from_config(config)
    deleter = f"import glob, os; [os.unlink(p) for p in glob.glob({str(data)!r} + '/z-*.tmp')]"

    result = mgr.create_backup(progress=run_at(2 * MIB, lambda: other_process(deleter)))

    record = result.manifest.sources[0]
    assert record.warning_count == many and len(record.warnings) == 100
    assert result.to_dict()["warning_count"] == many
