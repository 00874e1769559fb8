"""Round trips: every source type through every compression, with real files.

What a user checks after a restore: the bytes, modes, mtimes, empty directories,
non-ASCII names, symlinks and include/exclude rules of a directory; a SQLite
database that was being written to; a dump command's output. Also: the archive
opens with the system's ``tar``/``zstd``/``gzip``/``xz``; backup files are
private whatever the umask; a backup that fails part-way leaves nothing that
looks like a backup; several targets get the same archive from one read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup import SourceError, hookimpl
from eternia_backup.manager import BackupManager
from eternia_backup.plans import DirectorySwapPlan
from eternia_backup.plugins import get_plugin_manager
from eternia_backup.providers import Source, SourceOptions

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)

COMPRESSIONS = ["zstd", "gzip", "xz", "none"]
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz", "xz": ".tar.xz", "none": ".tar"}
UNICODE_FILE = "données/été ✓.txt"


# -- helpers ---------------------------------------------------------------------


def write_cfg(base: Path, section: dict, name: str = "eternia-backup.yaml") -> Path:
    path = base / name
    path.write_text(yaml.safe_dump({"backup": section}, allow_unicode=True), encoding="utf-8")
    return path


def make_tree(root: Path) -> Path:
    """A tree with everything a directory source must keep."""
    root.mkdir(parents=True)
    (root / "plain.txt").write_bytes(b"plain text\n")
    os.chmod(root / "plain.txt", 0o640)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    os.chmod(root / "bin" / "run.sh", 0o755)
    (root / "empty").mkdir()
    os.chmod(root / "empty", 0o750)
    (root / "données").mkdir()
    (root / UNICODE_FILE).write_bytes("contenu accentué ✓\n".encode())
    deep = root / "deep" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "blob.bin").write_bytes(bytes(range(256)) * 300 + os.urandom(4096))
    (root / "zero-bytes").write_bytes(b"")
    os.symlink("données/été ✓.txt", root / "link-to-unicode")
    os.symlink("../../../plain.txt", root / "deep" / "a" / "b" / "up-link")
    os.symlink("a/b", root / "deep" / "dir-link")
    # Distinct whole-second mtimes, set bottom-up so directory mtimes stick.
    stamp = 1_600_000_000
    for dirpath, dirnames, filenames in sorted(os.walk(root), key=lambda t: -len(Path(t[0]).parts)):
        for n in filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                stamp += 1000
                os.utime(p, (stamp, stamp))
        stamp += 1000
        os.utime(dirpath, (stamp, stamp))
    return root


def tree_state(root: Path, *, metadata: bool = True) -> dict[str, tuple]:
    """Everything a user compares: type, bytes, link target, mode and whole-second mtime."""
    out: dict[str, tuple] = {}
    st = root.lstat()
    if metadata:
        out["."] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime)) if metadata else ("dir",)
            else:
                data = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", data, stat.S_IMODE(st.st_mode), int(st.st_mtime)) if metadata else ("file", data)
    return out


def make_db(path: Path, rows: int = 200) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
    conn.executemany("INSERT INTO items (name, payload) VALUES (?, ?)",
                     [(f"item-{i}", os.urandom(64)) for i in range(rows)])
    conn.commit()
    conn.close()


def db_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT id, name, payload FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


def storage_files(storage: Path) -> list[str]:
    return sorted(os.listdir(storage)) if storage.exists() else []


def temp_files(storage: Path) -> list[str]:
    return [n for n in storage_files(storage) if n.startswith(".") and n.endswith(".tmp")]


def manifests(storage: Path) -> list[str]:
    return [n for n in storage_files(storage) if n.endswith(".manifest.json")]


# -- every source type through every compression -----------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_directory_round_trip_keeps_everything(tmp_path, compression):
    tree = make_tree(tmp_path / "state" / "tree")
    original = tree_state(tree)
    cfg = write_cfg(tmp_path, {"storage_path": "backups", "archive": {"compression": compression},
                               "sources": [{"type": "directory", "name": "tree", "path": "state/tree"}]})
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()
    assert os.fspath(result).endswith(EXTENSIONS[compression])
    assert mgr.verify_backup(result.backup_id).ok

    # Restored elsewhere: identical, mode and mtime included.
    mgr.restore_backup(result.backup_id, to=tmp_path / "elsewhere")
    restored = tmp_path / "elsewhere" / "tree"
    assert tree_state(restored) == original
    assert (restored / UNICODE_FILE).read_text(encoding="utf-8") == "contenu accentué ✓\n"
    assert os.access(restored / "bin" / "run.sh", os.X_OK)
    assert (restored / "link-to-unicode").read_bytes() == (tree / UNICODE_FILE).read_bytes()
    assert (restored / "deep" / "a" / "b" / "up-link").read_bytes() == b"plain text\n"
    assert list((restored / "empty").iterdir()) == []

    # Restored in place over a damaged tree: back to the original.
    (tree / "plain.txt").write_bytes(b"overwritten")
    (tree / "new-file").write_bytes(b"not in the backup")
    shutil.rmtree(tree / "empty")
    (tree / "bin" / "run.sh").chmod(0o600)
    mgr.restore_backup(result.backup_id)
    assert tree_state(tree) == original
    assert [n for n in os.listdir(tree.parent) if n.startswith(".")] == []


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_sqlite_round_trip(tmp_path, compression):
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "app.db"
    make_db(db)
    original = db_rows(db)
    cfg = write_cfg(tmp_path, {"storage_path": "backups", "archive": {"compression": compression},
                               "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]})
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()
    assert mgr.verify_backup(result.backup_id).ok

    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    assert db_rows(tmp_path / "out" / "db" / "app.db") == original

    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM items WHERE id % 2 = 0")
    conn.execute("INSERT INTO items (name, payload) VALUES ('after backup', x'00')")
    conn.commit()
    conn.close()
    assert db_rows(db) != original
    mgr.restore_backup(result.backup_id)
    assert db_rows(db) == original


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_command_round_trip(tmp_path, compression):
    out = tmp_path / "restored dump.bin"
    cfg = write_cfg(tmp_path, {
        "storage_path": "backups", "archive": {"compression": compression},
        "sources": [{"type": "command", "name": "dump", "command": "printf 'hello dump'",
                     "restore_command": f"cat > '{out}'"}],
    })
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()
    assert mgr.verify_backup(result.backup_id).ok
    assert [s.size for s in result.manifest.sources] == [len(b"hello dump")]

    mgr.restore_backup(result.backup_id)
    assert out.read_bytes() == b"hello dump"

    mgr.restore_backup(result.backup_id, to=tmp_path / "files")
    assert (tmp_path / "files" / "dump" / "dump").read_bytes() == b"hello dump"


def test_round_trip_through_the_cli(tmp_path):
    tree = make_tree(tmp_path / "state" / "tree")
    original = tree_state(tree)
    cfg = write_cfg(tmp_path, {"storage_path": "backups",
                               "sources": [{"type": "directory", "name": "tree", "path": "state/tree"}]})
    created = run_cli("create", config=cfg)
    assert created.returncode == 0, created.stderr
    archive = Path(created.stdout.strip())
    assert archive.is_file() and archive.parent == tmp_path / "backups"

    listed = run_cli("list", "--json", config=cfg)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)["backups"]
    assert entry["state"] == "ok" and entry["sources"] == ["tree"]

    verified = run_cli("verify", "latest", config=cfg)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    restored = run_cli("restore", "latest", "--to", str(tmp_path / "out"), "--yes", config=cfg)
    assert restored.returncode == 0, restored.stderr
    assert tree_state(tmp_path / "out" / "tree") == original


# -- directory details ---------------------------------------------------------------


def _glob_tree(root: Path) -> None:
    for rel, text in {
        "notes.txt": "notes", "users/a.json": "{}", "users/deep/b.json": "[]",
        "settings/prefs.json": "{}", "settings/scratch.tmp": "x", "cache/blob.json": "{}",
        "cache/more/c.json": "{}", "logs/app.log": "log",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("rules, expected_files", [
    ({"exclude": ["cache", "*.tmp"]},
     {"notes.txt", "users/a.json", "users/deep/b.json", "settings/prefs.json", "logs/app.log"}),
    ({"include": ["*.json"]},
     {"users/a.json", "users/deep/b.json", "settings/prefs.json", "cache/blob.json", "cache/more/c.json"}),
    ({"include": ["*.json", "logs/*"], "exclude": ["cache", "users/deep"]},
     {"users/a.json", "settings/prefs.json", "logs/app.log"}),
])
def test_include_exclude_globs(tmp_path, rules, expected_files):
    _glob_tree(tmp_path / "state")
    cfg = write_cfg(tmp_path, {"storage_path": "backups",
                               "sources": [{"type": "directory", "name": "s", "path": "state", **rules}]})
    mgr = BackupManager.from_config(cfg)
    mgr.create_backup()
    mgr.restore_backup("latest", to=tmp_path / "out")
    restored = tree_state(tmp_path / "out" / "s", metadata=False)
    files = {k for k, v in restored.items() if v[0] == "file"}
    assert files == expected_files
    for excluded_dir in rules.get("exclude", []):
        if "*" not in excluded_dir:
            assert excluded_dir not in restored, f"excluded directory {excluded_dir} was backed up"


# -- SQLite under load ------------------------------------------------------------------


WRITER = textwrap.dedent("""
    import os, sqlite3, sys, time
    db, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    n = 0
    while not os.path.exists(stop):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO items (name, payload) VALUES (?, ?)",
                         [(f"live-{n}-{i}", os.urandom(200)) for i in range(10)])
        conn.execute("UPDATE meta SET total = total + 10")
        conn.execute("COMMIT")
        n += 1
        if n == 20:
            open(ready, "w").close()
    conn.close()
""")


def _count(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return (conn.execute("SELECT count(*) FROM items").fetchone()[0],
                conn.execute("SELECT total FROM meta").fetchone()[0])
    finally:
        conn.close()


def test_sqlite_written_to_during_backup_restores_consistent(tmp_path):
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
    conn.execute("CREATE TABLE meta (total INTEGER)")
    conn.executemany("INSERT INTO items (name, payload) VALUES (?, ?)",
                     [(f"seed-{i}", os.urandom(200)) for i in range(30000)])
    conn.execute("INSERT INTO meta VALUES (30000)")
    conn.commit()
    conn.close()
    cfg = write_cfg(tmp_path, {"storage_path": "backups",
                               "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]})
    mgr = BackupManager.from_config(cfg)

    stop, ready = tmp_path / "stop", tmp_path / "ready"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert writer.poll() is None, "writer process died"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.01)
        assert (tmp_path / "state" / "app.db-wal").exists(), "the database is not being written in WAL mode"
        before, _ = _count(db)
        results = [mgr.create_backup() for _ in range(3)]
        after, _ = _count(db)
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert writer.returncode == 0
    assert after > before, "the writer did not write during the backups; the test proves nothing"

    for i, result in enumerate(results):
        dest = tmp_path / f"out{i}"
        mgr.restore_backup(result.backup_id, to=dest)
        restored = dest / "db" / "app.db"
        assert not (dest / "db" / "app.db-wal").exists()
        conn = sqlite3.connect(restored)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rows = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            total = conn.execute("SELECT total FROM meta").fetchone()[0]
        finally:
            conn.close()
        assert rows == total, "restored rows do not match the counter written in the same transaction"
        assert rows % 10 == 0 and before <= rows <= after


def test_sqlite_restore_in_place_with_an_open_connection(tmp_path):
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "app.db"
    make_db(db, rows=500)
    original = db_rows(db)
    cfg = write_cfg(tmp_path, {"storage_path": "backups",
                               "sources": [{"type": "sqlite", "name": "db", "path": "state/app.db"}]})
    mgr = BackupManager.from_config(cfg)
    result = mgr.create_backup()

    app_conn = sqlite3.connect(db)  # the application keeps its connection open
    try:
        app_conn.execute("PRAGMA journal_mode=WAL")
        app_conn.execute("DELETE FROM items WHERE id > 100")
        app_conn.execute("INSERT INTO items (name, payload) VALUES ('written after the backup', x'01')")
        app_conn.commit()
        assert app_conn.execute("SELECT count(*) FROM items").fetchone()[0] == 101

        mgr.restore_backup(result.backup_id)

        assert app_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert app_conn.execute("SELECT id, name, payload FROM items ORDER BY id").fetchall() == original
        app_conn.execute("INSERT INTO items (name, payload) VALUES ('still writable', x'02')")
        app_conn.commit()
    finally:
        app_conn.close()
    rows = db_rows(db)
    assert rows[:-1] == original and rows[-1][1] == "still writable"
    assert [n for n in os.listdir(db.parent) if "eternia" in n] == []


# -- command source failures ---------------------------------------------------------------


def test_failing_command_fails_the_backup_and_leaves_nothing(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "f.txt").write_text("x")
    good = write_cfg(tmp_path, {"storage_path": "backups",
                                "sources": [{"type": "directory", "name": "files", "path": "state"}]}, "good.yaml")
    earlier = BackupManager.from_config(good).create_backup()
    before = storage_files(tmp_path / "backups")

    bad = write_cfg(tmp_path, {"storage_path": "backups", "sources": [
        {"type": "directory", "name": "files", "path": "state"},
        {"type": "command", "name": "dump", "command": "sh -c 'echo boom >&2; exit 3'"},
    ]}, "bad.yaml")
    mgr = BackupManager.from_config(bad)
    with pytest.raises(SourceError) as info:
        mgr.create_backup()
    assert "boom" in str(info.value) and "status 3" in str(info.value)
    assert storage_files(tmp_path / "backups") == before
    assert [b.backup_id for b in mgr.list_backups()] == [earlier.backup_id]

    proc = run_cli("create", config=bad)
    assert proc.returncode == 1
    assert "boom" in proc.stderr and "status 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert storage_files(tmp_path / "backups") == before
    assert BackupManager.from_config(good).verify_backup(earlier.backup_id).ok


# -- the archive is standard ---------------------------------------------------------------------


def _system_tar(compression: str, archive: Path, *args: str) -> bytes:
    """Run the system's tar (through zstd -dc for zstd) the way a person would."""
    needed = {"zstd": ["tar", "zstd"], "gzip": ["tar", "gzip"], "xz": ["tar", "xz"], "none": ["tar"]}[compression]
    for tool in needed:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    gnu = b"GNU tar" in subprocess.run(["tar", "--version"], capture_output=True).stdout
    quoting = ["--quoting-style=literal"] if gnu else []
    if compression == "zstd":  # zstd -dc X | tar ...
        unz = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True)
        cmd, stdin = ["tar", *quoting, *args, "-f", "-"], unz.stdout
    else:  # tar -tzf X, tar -tJf X, tar -tf X
        flag = {"gzip": ["-z"], "xz": ["-J"], "none": []}[compression]
        cmd, stdin = ["tar", *quoting, *flag, *args, "-f", str(archive)], None
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_archive_opens_with_system_tools(tmp_path, compression):
    tree = make_tree(tmp_path / "state" / "tree")
    make_db(tmp_path / "state" / "app.db")
    cfg = write_cfg(tmp_path, {"storage_path": "backups", "archive": {"compression": compression}, "sources": [
        {"type": "directory", "name": "tree", "path": "state/tree"},
        {"type": "sqlite", "name": "db", "path": "state/app.db"},
        {"type": "command", "name": "dump", "command": "printf 'hello dump'"},
    ]})
    archive = Path(os.fspath(BackupManager.from_config(cfg).create_backup()))

    listing = _system_tar(compression, archive, "-t").decode("utf-8", "surrogateescape").splitlines()
    names = {n.rstrip("/") for n in listing}
    expected = {"tree"} | {f"tree/{rel}" for rel in tree_state(tree) if rel != "."}
    expected |= {"db/app.db", "dump/dump"}
    assert names == expected

    out = tmp_path / "by-hand"
    out.mkdir()
    _system_tar(compression, archive, "-x", "-C", str(out))
    assert tree_state(out / "tree", metadata=False) == tree_state(tree, metadata=False)
    assert (out / "dump" / "dump").read_bytes() == b"hello dump"
    assert db_rows(out / "db" / "app.db") == db_rows(tmp_path / "state" / "app.db")


# -- private files whatever the umask -------------------------------------------------------------


@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_backup_files_are_private_with_umask_zero(tmp_path, umask_zero):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "f.txt").write_text("secret state")
    cfg = write_cfg(tmp_path, {"storage_path": "backups",
                               "sources": [{"type": "directory", "name": "files", "path": "state"}]})
    result = BackupManager.from_config(cfg).create_backup()
    storage = tmp_path / "backups"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    archive = Path(os.fspath(result))
    manifest = storage / result.manifest.filename
    for f in (archive, manifest):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f"{f.name} is {oct(f.stat().st_mode)}"


def test_created_parent_directories_of_storage_are_not_world_writable(tmp_path, umask_zero):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "f.txt").write_text("secret state")
    cfg = write_cfg(tmp_path, {"storage_path": "new/parent/backups",
                               "sources": [{"type": "directory", "name": "files", "path": "state"}]})
    BackupManager.from_config(cfg).create_backup()
    assert stat.S_IMODE((tmp_path / "new" / "parent" / "backups").stat().st_mode) == 0o700
    for d in (tmp_path / "new", tmp_path / "new" / "parent"):
        assert not stat.S_IMODE(d.stat().st_mode) & 0o002, f"{d} is world-writable"


# -- throwaway plugin sources ---------------------------------------------------------------------


class ExplodingOptions(SourceOptions):
    error: str = "runtime"  # "runtime" or "interrupt"
    storage: str


class ExplodingSource(Source):
    """Writes 2 MB, then fails the way a buggy plugin or a Ctrl-C would."""

    type_name = "test-exploding"
    options_model = ExplodingOptions
    temp_files_seen: list[str] = []

    def backup(self, writer):
        data = os.urandom(2 * 1024 * 1024)
        writer.add_stream("partial.bin", io.BytesIO(data), len(data), mtime=time.time())
        ExplodingSource.temp_files_seen = temp_files(Path(self.options.storage))
        if self.options.error == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("exploded in the middle of the source")

    def restore_plan(self, destination):
        return DirectorySwapPlan(destination, f"source {self.name!r}")


class CountingSource(Source):
    type_name = "test-counting"
    calls = 0

    def backup(self, writer):
        CountingSource.calls += 1
        data = b"counted " * 100_000
        writer.add_stream("counted.bin", io.BytesIO(data), len(data), mtime=time.time())

    def restore_plan(self, destination):
        return DirectorySwapPlan(destination, f"source {self.name!r}")


class _TestPlugin:
    @hookimpl
    def eternia_register_sources(self, register):
        register(ExplodingSource)
        register(CountingSource)


def _manager(cfg: Path) -> BackupManager:
    from eternia_backup.config import load_config

    return BackupManager(load_config(cfg), plugin_manager=get_plugin_manager(extra_plugins=(_TestPlugin(),)))


@pytest.mark.parametrize("error", ["runtime", "interrupt"])
def test_exception_inside_a_source_leaves_no_backup_and_no_temp_file(tmp_path, error):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    storage = tmp_path / "backups"
    good = write_cfg(tmp_path, {"storage_path": "backups",
                                "sources": [{"type": "directory", "name": "files", "path": "state"}]}, "good.yaml")
    earlier = [BackupManager.from_config(good).create_backup() for _ in range(2)]
    before = storage_files(storage)

    bad = write_cfg(tmp_path, {"storage_path": "backups", "sources": [
        {"type": "directory", "name": "files", "path": "state"},
        {"type": "test-exploding", "name": "boom", "error": error, "storage": str(storage)},
    ]}, "bad.yaml")
    ExplodingSource.temp_files_seen = []
    mgr = _manager(bad)
    expected = KeyboardInterrupt if error == "interrupt" else RuntimeError
    with pytest.raises(expected):
        mgr.create_backup()

    assert ExplodingSource.temp_files_seen, "no temporary file existed when the source failed"
    assert temp_files(storage) == []
    assert storage_files(storage) == before
    assert len(manifests(storage)) == 2
    assert sorted(b.backup_id for b in mgr.list_backups()) == sorted(r.backup_id for r in earlier)
    for r in earlier:
        assert mgr.verify_backup(r.backup_id).ok


def test_two_targets_get_the_archive_and_sources_are_read_once(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "f.txt").write_text("in both targets")
    cfg = write_cfg(tmp_path, {
        "targets": [{"name": "first", "url": "t1"}, {"name": "second", "url": "elsewhere/t2"}],
        "sources": [{"type": "test-counting", "name": "counted"},
                    {"type": "directory", "name": "files", "path": "state"}],
    })
    CountingSource.calls = 0
    mgr = _manager(cfg)
    result = mgr.create_backup()
    assert CountingSource.calls == 1
    assert sorted(c.target for c in result.copies) == ["first", "second"]

    archive_name = result.manifest.archive.file
    t1, t2 = tmp_path / "t1", tmp_path / "elsewhere" / "t2"
    assert storage_files(t1) == storage_files(t2) == sorted([archive_name, result.manifest.filename])
    assert (t1 / archive_name).read_bytes() == (t2 / archive_name).read_bytes()
    assert hashlib.sha256((t2 / archive_name).read_bytes()).hexdigest() == result.manifest.archive.sha256

    [entry] = mgr.list_backups()
    assert entry.state == "ok" and len(entry.copies) == 2
    reports = mgr.verify_all()
    assert len(reports) == 2 and all(r.ok for r in reports)

    # Either copy restores on its own.
    (t1 / archive_name).unlink()
    mgr.restore_backup(str(t2 / archive_name), to=tmp_path / "out")
    assert (tmp_path / "out" / "files" / "f.txt").read_text() == "in both targets"
    assert (tmp_path / "out" / "counted" / "counted.bin").read_bytes() == b"counted " * 100_000


def test_command_failing_half_way_is_reported_by_the_cli(tmp_path):
    """A dump that wrote some output and then failed: exit 1, one line naming the cause, nothing kept."""
    (tmp_path / "state").mkdir()
    cfg = write_cfg(tmp_path, {"storage_path": "backups", "sources": [
        {"type": "command", "name": "dump", "command": "printf partial; sh -c 'echo half way >&2; exit 7'"}]})
    proc = run_cli("create", config=cfg)
    assert proc.returncode == 1
    assert "half way" in proc.stderr and "status 7" in proc.stderr
    assert storage_files(tmp_path / "backups") == []
    assert "no backups yet" in run_cli("list", config=cfg).stdout
