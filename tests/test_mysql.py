"""The first-party mysql plugin against the machine's real MariaDB (127.0.0.1:3306, root without a password).

Loaded through its entry point like any third-party plugin. Every test works on
databases of its own (eternia_test_<random>), dropped afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from eternia_backup import BackupManager
from eternia_backup.api import ConfigError, RestoreError
from eternia_backup.testing import SourceConformance

CLIENT = shutil.which("mariadb") or shutil.which("mysql")
DUMP = shutil.which("mariadb-dump") or shutil.which("mysqldump")
ROOT_LOGIN = ["--host=127.0.0.1", "--port=3306", "--user=root"]

# integration tests against the machine's real server (tens of databases made and dropped): `make test`
# and CI run them; `make test-fast` leaves them out to stay within its budget
pytestmark = pytest.mark.slow


def sql(query: str, db: str | None = None, *, user: list[str] = ROOT_LOGIN) -> str:
    """Run SQL as root; the output without column names, tab-separated."""
    proc = subprocess.run([CLIENT, *user, "--batch", "--skip-column-names", *([db] if db else []), "-e", query],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def server():
    if CLIENT is None or DUMP is None:
        pytest.skip("the MariaDB/MySQL client tools (mariadb, mariadb-dump) are not installed")
    try:
        sql("select 1")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no MariaDB/MySQL server reachable as root at 127.0.0.1:3306: {exc}")


SCHEMA = """
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT NOT NULL, note VARCHAR(200)) ENGINE=InnoDB;
CREATE TABLE pair_a (batch INT PRIMARY KEY) ENGINE=InnoDB;
CREATE TABLE pair_b (batch INT PRIMARY KEY) ENGINE=InnoDB;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
  INSERT INTO audit (order_id, note) VALUES (NEW.id, CONCAT('added ', NEW.item));
CREATE VIEW big_orders AS SELECT id, item, qty FROM orders WHERE qty > 5;
CREATE FUNCTION order_total() RETURNS INT READS SQL DATA RETURN (SELECT COALESCE(SUM(qty), 0) FROM orders);
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE order_id < 0;
INSERT INTO orders (item, qty)
  WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 300)
  SELECT CONCAT('item ', n, ' – Grüße'), n % 10 FROM seq;
DELETE FROM orders WHERE id > 290;
INSERT INTO pair_a VALUES (1), (2); INSERT INTO pair_b VALUES (1), (2);
CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB;
INSERT INTO blobs VALUES (1, UNHEX('000D0A5C27225CFFFE1A80C3')), (2, RANDOM_BYTES(1024)), (3, '');
"""


def new_name(kind: str = "test") -> str:
    return f"eternia_{kind}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_user(server):
    """make(databases, grants=()) -> (name, password) of a new user allowed everything on ``databases``.

    It sees only those (and what ``grants`` adds), so ``databases: all`` as this
    user is not disturbed by the databases other tests create and drop meanwhile.
    Dropped afterwards.
    """
    made: list[str] = []

    def make(databases: list[str], grants: tuple[str, ...] = ()) -> tuple[str, str]:
        name = new_name("user")[:32]
        password = f"Pw-{uuid.uuid4().hex[:12]}-\"q'uote\\ $x"
        literal = password.replace("\\", "\\\\").replace("'", "\\'")
        made.append(name)
        for host in ("127.0.0.1", "localhost"):
            sql(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{literal}'")
            for db in databases:
                sql(f"GRANT ALL ON `{db}`.* TO '{name}'@'{host}'")
            # the routines' bodies (SHOW CREATE FUNCTION of root's function), and re-creating root's objects
            sql(f"GRANT SELECT ON mysql.proc TO '{name}'@'{host}'; GRANT SET USER ON *.* TO '{name}'@'{host}'")
            for grant in grants:
                sql(f"GRANT {grant} TO '{name}'@'{host}'")
        return name, password

    yield make
    for name in made:
        for host in ("127.0.0.1", "localhost"):
            sql(f"DROP USER IF EXISTS '{name}'@'{host}'")


@pytest.fixture
def databases(server):
    """make() -> the name of a new database with the full schema (or empty); all dropped afterwards."""
    made: list[str] = []

    def make(schema: str = SCHEMA) -> str:
        name = new_name()
        made.append(name)
        sql(f"CREATE DATABASE `{name}`")
        if schema:
            sql(schema, name)
        return name

    yield make
    for name in made:
        sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def database(databases) -> str:
    return databases()


def snapshot(db: str) -> dict:
    """Everything a restore must bring back: rows, views, triggers, routines, events, the next auto-increment id."""
    schema = f"table_schema = '{db}'"
    return {
        "tables": sql(f"SELECT table_name, table_type FROM information_schema.tables WHERE {schema} "
                      "ORDER BY table_name"),
        "orders": sql("SELECT id, item, qty FROM orders ORDER BY id", db),
        "audit": sql("SELECT id, order_id, note FROM audit ORDER BY id", db),
        "pairs": (sql("SELECT GROUP_CONCAT(batch ORDER BY batch) FROM pair_a", db),
                  sql("SELECT GROUP_CONCAT(batch ORDER BY batch) FROM pair_b", db)),
        "blobs": sql("SELECT id, HEX(b) FROM blobs ORDER BY id", db),
        "view": sql("SELECT * FROM big_orders ORDER BY id", db),
        "total": sql("SELECT order_total()", db),
        "triggers": sql("SELECT trigger_name, action_timing, event_manipulation, action_statement "
                        f"FROM information_schema.triggers WHERE trigger_schema = '{db}' ORDER BY trigger_name"),
        "routines": sql(f"SELECT routine_name, routine_type, routine_definition FROM information_schema.routines "
                        f"WHERE routine_schema = '{db}' ORDER BY routine_name"),
        "events": sql(f"SELECT event_name, interval_value, interval_field, event_definition "
                      f"FROM information_schema.events WHERE event_schema = '{db}'"),
        "next_id": sql(f"SELECT auto_increment FROM information_schema.tables WHERE {schema} "
                       "AND table_name = 'orders'"),
    }


def change_after_backup(db: str) -> None:
    """What a restore in place must undo: rows changed, the sequence advanced, objects dropped and created."""
    sql("DELETE FROM orders WHERE id < 100; UPDATE orders SET qty = 99 WHERE id = 200; "
        "INSERT INTO orders (item, qty) VALUES ('after the backup', 1); "
        "DROP TRIGGER IF EXISTS orders_audit; CREATE TABLE IF NOT EXISTS created_later (x INT); "
        "CREATE OR REPLACE PROCEDURE created_later_proc() SELECT 1; "
        "CREATE OR REPLACE VIEW big_orders AS SELECT 1 AS id", db)


def write_config(directory: Path, sources: list[dict], **section) -> Path:
    config = directory / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "sources": sources, **section}},
                                     allow_unicode=True))
    return config


def mysql_source(dbs, **options) -> dict:
    return {"type": "mysql", "name": "db", "host": "127.0.0.1", "port": 3306, "user": "root", "databases": dbs,
            **options}


def stored(app: Path) -> list[str]:
    backups = app / "backups"
    return sorted(p.name for p in backups.iterdir()) if backups.exists() else []


def unpack(app: Path, into: Path) -> list[str]:
    """The archive unpacked as the docs say, by hand (zstd -dc ... | tar -x); its member names."""
    (archive,) = (app / "backups").glob("*.tar.zst")
    into.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -x -C '{into}'", shell=True, check=True, timeout=60)
    return sorted(str(p.relative_to(into)) for p in into.rglob("*"))


# -- round trips ---------------------------------------------------------------------------


def test_plugin_is_listed_with_its_version(cli):
    proc = cli("plugins")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.split()[:2] == ["source", "mysql"])
    assert line.split()[2:] == ["mysql", "eternia-backup-mysql", "0.1.0"]


def test_round_trip_in_place_with_two_databases(app, databases, cli, tmp_path):
    first, second = databases(), databases("CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT);"
                                           "INSERT INTO notes (body) VALUES ('one'), ('two');")
    config = write_config(app, [mysql_source([first, second])])
    original = snapshot(first)
    notes = sql("SELECT id, body FROM notes ORDER BY id", second)
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr

    change_after_backup(first)
    sql("DELETE FROM notes; CREATE TABLE later (x INT)", second)
    assert snapshot(first) != original

    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(first) == original
    assert sql("SELECT id, body FROM notes ORDER BY id", second) == notes
    assert sql("SHOW TABLES", second) == "notes"  # created after the backup: gone
    assert sql(f"SHOW PROCEDURE STATUS WHERE Db = '{first}'") == ""
    # the sequence goes on where it was at the backup, and the trigger fires again
    sql("INSERT INTO orders (item, qty) VALUES ('next', 1)", first)
    assert sql("SELECT MAX(id) FROM orders", first) == original["next_id"]
    assert sql("SELECT note FROM audit ORDER BY id DESC LIMIT 1", first) == "added next"

    # --to DIR gives the dumps as files, which load by hand (docs/databases.md)
    to = cli("restore", "latest", "--to", str(tmp_path / "out"), "--yes", config=config)
    assert to.returncode == 0, to.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "db").iterdir()) == sorted([f"{first}.sql", f"{second}.sql"])
    assert unpack(app, tmp_path / "by-hand") == sorted(["db", f"db/{first}.sql", f"db/{second}.sql"])
    sql(f"DROP DATABASE `{first}`")
    with open(tmp_path / "by-hand" / "db" / f"{first}.sql", "rb") as dump:
        subprocess.run([CLIENT, *ROOT_LOGIN], stdin=dump, check=True, timeout=120)
    sql("DELETE FROM orders WHERE item = 'next'; DELETE FROM audit WHERE note = 'added next'", first)
    assert {k: v for k, v in snapshot(first).items() if k != "next_id"} == \
        {k: v for k, v in original.items() if k != "next_id"}

    manifest = json.loads(next((app / "backups").glob("*.manifest.json")).read_text())
    details = manifest["sources"][0]["details"]
    assert details == {"type": "mysql", "name": "db", "host": "127.0.0.1", "port": 3306, "user": "root",
                       "databases": [first, second]}


def test_all_leaves_out_the_system_databases_and_backs_up_ours(app, databases, make_user, cli, tmp_path):
    mine, other = databases("CREATE TABLE t (x INT); INSERT INTO t VALUES (42);"), databases("")
    user, password = make_user([mine, other], grants=("SELECT, SHOW VIEW ON mysql.*", "SELECT ON sys.*",
                                                      "SELECT ON performance_schema.*"))
    seen = sql("SHOW DATABASES", user=["--host=127.0.0.1", f"--user={user}", f"--password={password}"]).split()
    assert {"mysql", "sys", "information_schema", "performance_schema", mine, other} <= set(seen)
    config = write_config(app, [mysql_source("all", user=user, password="${ETERNIA_TEST_MYSQL_PASSWORD}")])
    created = cli("create", config=config, env={"ETERNIA_TEST_MYSQL_PASSWORD": password})
    assert created.returncode == 0, created.stderr
    names = unpack(app, tmp_path / "unpacked")
    assert {f"db/{mine}.sql", f"db/{other}.sql"} <= set(names)
    assert not {f"db/{s}.sql" for s in ("mysql", "sys", "information_schema", "performance_schema")} & set(names)
    # named in a list, mysql is backed up
    config = write_config(app, [mysql_source([mine, "mysql"], user=user, password="${ETERNIA_TEST_MYSQL_PASSWORD}",
                                             dump_args=["--skip-events"])])
    created = cli("create", config=config, env={"ETERNIA_TEST_MYSQL_PASSWORD": password})
    assert created.returncode == 0, created.stderr


def test_with_all_a_database_dropped_during_the_backup_is_a_warning(app, databases, make_user, cli, tmp_path):
    kept, dropped = databases("CREATE TABLE t (x INT)"), databases("CREATE TABLE t (x INT)")
    user, password = make_user([kept, dropped])
    login = {"user": user, "password": "${ETERNIA_TEST_MYSQL_PASSWORD}"}
    env = {"ETERNIA_TEST_MYSQL_PASSWORD": password}
    dropping = tmp_path / "dropping-dump"  # drops the database just before its dump starts
    dropping.write_text(f'#!/bin/sh\ncase "$*" in *{dropped}*) "{CLIENT}" {" ".join(ROOT_LOGIN)} '
                        f'-e "DROP DATABASE {dropped}";; esac\nexec "{DUMP}" "$@"\n')
    dropping.chmod(0o755)
    created = cli("create", config=write_config(app, [mysql_source("all", mysqldump=str(dropping), **login)]),
                  env=env)
    assert created.returncode == 3, created.stderr
    assert f"{dropped}.sql: the database was dropped while the backup ran" in created.stderr
    names = unpack(app, tmp_path / "unpacked")
    assert f"db/{kept}.sql" in names and f"db/{dropped}.sql" not in names
    manifest = json.loads(next((app / "backups").glob("*.manifest.json")).read_text())
    assert kept in manifest["sources"][0]["details"]["databases"]
    assert dropped not in manifest["sources"][0]["details"]["databases"]
    # a database named in a list is required: its disappearance fails the backup
    failed = cli("create", config=write_config(app, [mysql_source([kept, dropped], **login)]), env=env)
    assert failed.returncode == 1 and "do not exist" in failed.stderr


def test_a_dump_that_meets_a_changed_table_is_taken_again(app, database, cli, tmp_path):
    """mysqldump's error 1412 (a table changed after the snapshot began) asks for a retry."""
    tries = tmp_path / "tries"
    flaky = tmp_path / "flaky-dump"  # fails with 1412 (after some output) until ``tries`` has two lines
    flaky.write_text(f'#!/bin/sh\necho x >> "{tries}"\nif [ "$(wc -l < "{tries}")" -lt 2 ]; then echo partial; '
                     "echo 'mariadb-dump: Error 1412: Table definition has changed, please retry transaction' >&2; "
                     f'exit 3; fi\nexec "{DUMP}" "$@"\n')
    flaky.chmod(0o755)
    config = write_config(app, [mysql_source([database], mysqldump=str(flaky))])
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    assert len(tries.read_text().splitlines()) == 2
    names = unpack(app, tmp_path / "unpacked")
    assert names == ["db", f"db/{database}.sql"]
    assert not (tmp_path / "unpacked" / "db" / f"{database}.sql").read_bytes().startswith(b"partial")

    tries.write_text("")
    flaky.write_text("#!/bin/sh\necho 'mariadb-dump: Error 1412: Table definition has changed' >&2\nexit 3\n")
    failed = cli("create", config=config)
    assert failed.returncode == 1 and "Table definition has changed" in failed.stderr, failed.stderr


def test_restore_into_another_database(app, databases, cli):
    source_db = databases()
    target = new_name("copy")
    config = write_config(app, [mysql_source([source_db], restore_to_database=target)])
    original = snapshot(source_db)
    try:
        created = cli("create", config=config)
        assert created.returncode == 0, created.stderr
        change_after_backup(source_db)
        changed = snapshot(source_db)
        dry = cli("restore", "latest", "--dry-run", config=config)
        assert dry.returncode == 0 and f"database {target}" in dry.stdout, dry.stdout + dry.stderr
        restored = cli("restore", "latest", "--yes", config=config)
        assert restored.returncode == 0, restored.stderr
        assert snapshot(target) == original
        assert snapshot(source_db) == changed  # the original is left alone
        sql(f"CREATE TABLE `{target}`.stray (x INT)")  # a second restore replaces the copy again
        assert cli("restore", "latest", "--yes", config=config).returncode == 0
        assert snapshot(target) == original
    finally:
        sql(f"DROP DATABASE IF EXISTS `{target}`")


def test_restore_to_database_from_the_command_line(app, database, cli):
    """restore --source db --to-database NAME: the backup's one database into NAME; the original is left alone."""
    target = new_name("copy")
    config = write_config(app, [mysql_source([database])])
    original = snapshot(database)
    try:
        assert cli("create", config=config).returncode == 0
        change_after_backup(database)
        changed = snapshot(database)
        dry = cli("restore", "latest", "--source", "db", "--to-database", target, "--dry-run", config=config)
        assert dry.returncode == 0 and f"database {target}" in dry.stdout, dry.stdout + dry.stderr
        restored = cli("restore", "latest", "--source", "db", "--to-database", target, "--yes", config=config)
        assert restored.returncode == 0, restored.stderr
        assert snapshot(target) == original
        assert snapshot(database) == changed
        bad = cli("restore", "latest", "--source", "db", "--to-database", "a/b", "--yes", config=config)
        assert bad.returncode != 0 and "not a database name" in bad.stderr, bad.stderr
    finally:
        sql(f"DROP DATABASE IF EXISTS `{target}`")


def test_restore_plan_takes_the_target_database_as_an_argument(app, database, tmp_path):
    """The constructor argument a CLI option (restore --to-database NAME) can pass."""
    from eternia_backup_mysql import MysqlRestorePlan

    mgr = BackupManager.from_config(write_config(app, [mysql_source([database])]))
    mgr.create_backup()
    target = new_name("copy")
    try:
        plan = MysqlRestorePlan(mgr.sources["db"], to_database=target)
        assert f"database {target}" in plan.changes()[0] and plan.replaces_existing()
        mgr.restore_backup("latest", to=tmp_path / "out")
        plan.prepare()
        try:  # as the framework does: stage the source's members, then commit
            shutil.copy(tmp_path / "out" / "db" / f"{database}.sql", plan.staging_dir)
            plan.commit()
        finally:
            plan.discard()
        assert not plan.staging_dir.exists()
        assert snapshot(target) == snapshot(database)
    finally:
        sql(f"DROP DATABASE IF EXISTS `{target}`")
    with pytest.raises(RestoreError, match="not a database name"):
        MysqlRestorePlan(mgr.sources["db"], to_database="../etc")


# -- consistency under writes ---------------------------------------------------------------


class Writer:
    """A client process committing pairs of rows (pair_a, pair_b) in transactions until stopped."""

    def __init__(self, db: str, start: int, count: int = 100_000):
        script = "".join(f"START TRANSACTION; INSERT INTO pair_a VALUES ({n}); DO SLEEP(0.002); "
                         f"INSERT INTO pair_b VALUES ({n}); COMMIT;\n" for n in range(start, start + count))
        self.proc = subprocess.Popen([CLIENT, *ROOT_LOGIN, db], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.thread = threading.Thread(target=self._feed, args=(script.encode(),), daemon=True)
        self.thread.start()

    def _feed(self, script: bytes) -> None:
        try:
            self.proc.stdin.write(script)
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.thread.join(10)


def wait_for_rows(db: str, more_than: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while int(sql("SELECT COUNT(*) FROM pair_b", db)) <= more_than:
        assert time.monotonic() < deadline, "the writer wrote nothing"
        time.sleep(0.05)


def test_backup_during_writes_is_one_consistent_snapshot(app, database, cli):
    config = write_config(app, [mysql_source([database])])
    sql("INSERT INTO orders (item, qty) SELECT CONCAT(a.item, b.id), 1 FROM orders a, orders b WHERE b.id < 60",
        database)  # ~17,000 more rows: the dump takes a while
    writer = Writer(database, start=1000)
    try:
        wait_for_rows(database, 20)
        created = cli("create", config=config)
        assert created.returncode == 0, created.stderr
        at_backup_end = int(sql("SELECT COUNT(*) FROM pair_b", database))
        wait_for_rows(database, at_backup_end + 5)  # still writing after the backup
    finally:
        writer.stop()
    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    a, b = snapshot(database)["pairs"]
    assert a == b, "a transaction was half in the dump"
    assert 20 < len(b.split(",")) <= at_backup_end


# -- failures change nothing ----------------------------------------------------------------


def assert_failed_cleanly(proc, *expected: str, password: str | None = None) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    message = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert "source 'db'" in message, message
    for part in expected:
        assert part in message, message
    assert "Traceback" not in text
    if password:
        assert password not in text
    return message


@pytest.mark.parametrize("case, options, expected", [
    ("server down", {"port": 1}, ["cannot connect", "127.0.0.1:1", "check that it is running"]),
    ("wrong password", {"password": "not-the-password-8Zq"}, ["authentication failed", "check the user, password"]),
    ("database missing", {"databases": ["eternia_no_such_db_x"]}, ["eternia_no_such_db_x", "do not exist"]),
    ("dump tool missing", {"mysqldump": "/nonexistent/mariadb-dump"}, ["/nonexistent/mariadb-dump", "not found",
                                                                        "install the MariaDB or MySQL client"]),
    ("client missing", {"mysql": "/nonexistent/mariadb"}, ["/nonexistent/mariadb", "not found", "set mysql:"]),
    ("option file missing", {"option_file": "no-such.cnf"}, ["no-such.cnf does not exist"]),
])
def test_backup_failure_says_what_and_writes_nothing(app, database, cli, case, options, expected):
    before = snapshot(database)
    config = write_config(app, [mysql_source([database], **options)])
    proc = cli("create", config=config)
    assert_failed_cleanly(proc, *expected, password=options.get("password"))
    assert [n for n in stored(app) if n.endswith(".json")] == []
    assert snapshot(database) == before


@pytest.mark.parametrize("case, options, expected", [
    ("server down", {"port": 1}, ["cannot connect"]),
    ("wrong password", {"password": "not-the-password-8Zq"}, ["authentication failed"]),
    ("client missing", {"mysql": "/nonexistent/mariadb"}, ["not found"]),
])
def test_restore_failure_changes_nothing(app, database, cli, case, options, expected):
    good = write_config(app, [mysql_source([database])])
    assert cli("create", config=good).returncode == 0
    change_after_backup(database)
    changed = snapshot(database)
    bad = write_config(app, [mysql_source([database], **options)])
    proc = cli("restore", "latest", "--yes", config=bad)
    assert_failed_cleanly(proc, *expected, password=options.get("password"))
    assert snapshot(database) == changed


def test_an_incomplete_dump_is_refused_before_anything_changes(app, database, tmp_path):
    mgr = BackupManager.from_config(write_config(app, [mysql_source([database])]))
    mgr.create_backup()
    change_after_backup(database)
    changed = snapshot(database)
    from eternia_backup_mysql import check_dump

    mgr.restore_backup("latest", to=tmp_path / "out")
    dump = tmp_path / "out" / "db" / f"{database}.sql"
    text = dump.read_bytes()
    assert check_dump(dump, database) is None
    dump.write_bytes(text[: len(text) // 2])
    assert "incomplete" in check_dump(dump, database)
    assert snapshot(database) == changed


@pytest.mark.parametrize("options, expected", [
    ({"dump_args": ["--password=x"]}, "password on the command line"),
    ({"dump_args": ["-psecret"]}, "password on the command line"),
    ({"dump_args": ["--pass=x"]}, "password on the command line"),
    ({"databases": ["information_schema"]}, "cannot be backed up"),
    ({"databases": ["a/b"]}, "not a database name"),
    ({"databases": []}, "at least one database"),
    ({"databases": ["a", "b"], "restore_to_database": "c"}, "exactly one database"),
    ({"databases": "all", "restore_to_database": "c"}, "exactly one database"),
    ({"port": 70000}, "port"),
])
def test_bad_options_are_config_errors_before_any_io(app, options, expected):
    config = write_config(app, [mysql_source(["x"], **options)])
    with pytest.raises(ConfigError) as err:
        BackupManager.from_config(config)
    assert expected in str(err.value)


# -- secrets --------------------------------------------------------------------------------


@pytest.fixture
def mysql_user(database, make_user):
    """A dedicated user with a password, allowed everything on ``database``."""
    return make_user([database])


class ProcessWatch:
    """Polls every process's argv (and the environment of the database tools) while it runs."""

    def __init__(self):
        self.seen: dict[int, tuple[bytes, bytes]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopping.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = Path(f"/proc/{pid}/environ").read_bytes() if b"maria" in cmdline or \
                        b"mysql" in cmdline else b""
                except OSError:
                    continue
                if cmdline:
                    self.seen[int(pid)] = (cmdline, environ)
            time.sleep(0.01)

    def stop(self) -> dict[int, tuple[bytes, bytes]]:
        self.stopping.set()
        self.thread.join(10)
        return self.seen


def test_the_password_is_never_shown(app, database, mysql_user, real_cli, tmp_path):
    user, password = mysql_user
    slow = tmp_path / "bin"
    slow.mkdir()
    for name, real in (("slow-dump", DUMP), ("slow-client", CLIENT)):  # slow enough for the poller to see them
        (slow / name).write_text(f'#!/bin/sh\nsleep 0.3\nexec "{real}" "$@"\n')
        (slow / name).chmod(0o755)
    source = mysql_source([database], user=user, password="${ETERNIA_TEST_MYSQL_PASSWORD}",
                          mysqldump=str(slow / "slow-dump"), mysql=str(slow / "slow-client"))
    config = write_config(app, [source])
    env = {"ETERNIA_TEST_MYSQL_PASSWORD": password}
    original = snapshot(database)

    watch = ProcessWatch()
    try:
        outputs = [real_cli("-vv", "create", config=config, env=env)]
        assert outputs[-1].returncode == 0, outputs[-1].stderr
        change_after_backup(database)
        for args in (("config", "show"), ("config", "check"), ("-vv", "restore", "latest", "--dry-run"),
                     ("-vv", "restore", "latest", "--yes"), ("list",), ("-vv", "verify", "latest"),
                     ("status",)):
            outputs.append(real_cli(*args, config=config, env=env))
            assert outputs[-1].returncode == 0, (args, outputs[-1].stderr)
        # a failing run too: its error message and log
        outputs.append(real_cli("-vv", "create", config=config, env={**env, "ETERNIA_TEST_MYSQL_PASSWORD": "x" +
                                                                     password}))
        assert outputs[-1].returncode == 1
    finally:
        seen = watch.stop()
    assert snapshot(database) == original, "the restore as the dedicated user worked"

    secret = password.encode()
    tools = {pid: (cmd, envb) for pid, (cmd, envb) in seen.items() if str(slow).encode() in cmd or
             (DUMP.encode() in cmd and user.encode() in cmd)}
    dumps = [cmd for cmd, _ in tools.values() if b"--single-transaction" in cmd]
    assert dumps, "the poller never saw the dump running"
    assert any(b"--defaults-extra-file=/dev/fd/" in cmd for cmd in dumps)
    for pid, (cmdline, environ) in seen.items():
        assert secret not in cmdline, f"the password is in the argv of pid {pid}: {cmdline!r}"
    for pid, (cmdline, environ) in tools.items():
        assert secret not in environ, f"the password is in the environment of {cmdline!r}"
        assert b"MYSQL_PWD" not in environ and b"ETERNIA_TEST_MYSQL_PASSWORD" not in environ

    for proc in outputs:
        assert password not in proc.stdout + proc.stderr
    assert "********" in outputs[1].stdout  # config show masks it
    manifests = list((app / "backups").glob("*.json"))
    assert manifests and all(secret not in p.read_bytes() for p in manifests)
    assert unpack(app, tmp_path / "unpacked") == ["db", f"db/{database}.sql"]
    assert secret not in (tmp_path / "unpacked" / "db" / f"{database}.sql").read_bytes()


def test_a_dump_leaves_no_temporary_file_even_on_failure(app, database, real_cli, tmp_path):
    """The dump is archived as mysqldump writes it: nothing appears in TMPDIR, not even for a moment."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    slow = tmp_path / "slow-dump"
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec "{DUMP}" "$@"\n')
    slow.chmod(0o755)
    modes: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            # ours only, not the temporary files of others (tmpXXXX)
            for path in [*tmp.glob("eternia-*"), *tmp.glob("eternia-*/*")]:
                try:
                    modes.add((path.name if path.is_file() else "dir", path.stat().st_mode & 0o777))
                except OSError:
                    pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ok = real_cli("create", config=write_config(app, [mysql_source([database], mysqldump=str(slow))]),
                      env={"TMPDIR": str(tmp)})
        assert ok.returncode == 0, ok.stderr
        assert [p for p in tmp.iterdir() if p.name.startswith("eternia-")] == []
        failed = real_cli("create", config=write_config(app, [mysql_source([database], mysqldump=str(slow),
                                                                           dump_args=["--no-such-option"])]),
                          env={"TMPDIR": str(tmp)})
        assert failed.returncode == 1 and "exited with status" in failed.stderr, failed.stderr
        assert [p for p in tmp.iterdir() if p.name.startswith("eternia-")] == []
    finally:
        done.set()
        watcher.join(10)
    assert modes == set()


# -- the conformance kit --------------------------------------------------------------------


class TestMysqlSource(SourceConformance):
    """The plugin against the conformance kit; a ``--to`` dump is loaded by hand into a scratch database."""

    @pytest.fixture
    def source_section(self, database):
        return mysql_source([database])

    def capture_state(self, section):
        return snapshot(section["databases"][0])

    def restored_state(self, section, directory):
        db = section["databases"][0]
        dump = (directory / section["name"] / f"{db}.sql").read_bytes()  # blobs: not text
        scratch = new_name("kit")
        try:
            subprocess.run([CLIENT, *ROOT_LOGIN], input=dump.replace(f"`{db}`".encode(), f"`{scratch}`".encode()),
                           check=True, capture_output=True, timeout=120)
            return snapshot(scratch)
        finally:
            sql(f"DROP DATABASE IF EXISTS `{scratch}`")

    def mutate_state(self, section):
        db = section["databases"][0]
        start = int(sql("SELECT COALESCE(MAX(batch), 0) FROM pair_b", db)) + 1
        script = "".join(f"START TRANSACTION; INSERT INTO pair_a VALUES ({n}); DO SLEEP(0.002); "
                         f"INSERT INTO pair_b VALUES ({n}); COMMIT;\n" for n in range(start, start + 150))
        subprocess.run([CLIENT, *ROOT_LOGIN, db], input=script, text=True, check=True, timeout=120)
        change_after_backup(db)

    def assert_same_state(self, original, restored):
        assert restored == original

    def assert_consistent(self, section, restored):
        a, b = restored["pairs"]
        assert a == b, "a transaction was half in the dump"
        assert re.fullmatch(r"[\d,]+", b)



def test_a_server_that_never_answers_fails_the_backup_in_time(app, database, cli, monkeypatch):
    """It takes the connection and says nothing: the client's connect timeout ends the wait, with a message."""
    import socket

    import eternia_backup_mysql

    monkeypatch.setattr(eternia_backup_mysql, "CONNECT_TIMEOUT", 2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        config = write_config(app, [mysql_source([database], port=silent.getsockname()[1])])
        started = time.monotonic()
        proc = cli("create", config=config)
        assert time.monotonic() - started < 30
    finally:
        silent.close()
    assert_failed_cleanly(proc, "cannot connect", "check that it is running")
    assert [n for n in stored(app) if n.endswith(".json")] == []
