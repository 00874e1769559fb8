"""The first-party postgres plugin against the machine's real PostgreSQL (127.0.0.1:5432).

Loaded through its entry point like any third-party plugin. Every test works on
databases (and roles) of its own, with a random suffix, and drops them
afterwards; `databases: all` is restored in place only on a private server
this module starts (initdb as the postgres user), never on the shared one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from eternia_backup.testing import SourceConformance

PSQL = shutil.which("psql")
PG_DUMP = shutil.which("pg_dump")  # the real one: some tests put a fake first on PATH
SHARED = {"host": "127.0.0.1", "port": "5432"}

# integration tests against the machine's real server (tens of databases made and dropped): `make test`
# and CI run them; `make test-fast` leaves them out to stay within its budget
pytestmark = pytest.mark.slow


def psql(sql: str, db: str = "postgres", server: dict = SHARED, user: str = "postgres") -> str:
    proc = subprocess.run([PSQL, "-X", "-h", server["host"], "-p", server["port"], "-U", user, "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-tAc", sql], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout.strip()


def content(db: str, server: dict = SHARED) -> str:
    """A checksum of a database's whole content: schema and rows (plain pg_dump is deterministic)."""
    proc = subprocess.run([PG_DUMP, "-h", server["host"], "-p", server["port"], "-U", "postgres",
                           "--no-owner", "-d", db], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # pg_dump >= 15.14 fences its output with a random \restrict key
    lines = [line for line in proc.stdout.splitlines() if not line.startswith((b"\\restrict", b"\\unrestrict"))]
    return hashlib.sha256(b"\n".join(lines)).hexdigest()


def databases(server: dict = SHARED, like: str = "%") -> set[str]:
    return set(psql(f"select datname from pg_database where datname like '{like}'", server=server).split())


def reachable() -> None:
    if PSQL is None or shutil.which("pg_dump") is None:
        pytest.skip("the PostgreSQL client tools are not installed")
    try:
        psql("select 1")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")


@pytest.fixture
def new_db():
    """make(): a new empty database of this test; it and anything derived from it are dropped afterwards."""
    reachable()
    made: list[str] = []

    def make(prefix: str = "eternia_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        psql(f"create database {name}")
        made.append(name)
        return name

    yield make
    for name in made:
        for db in databases(like=f"{name}%"):  # also <name>_eternia_restore_* left by a failed test
            psql(f'drop database if exists "{db}" with (force)')


@pytest.fixture
def database(new_db):
    name = new_db()
    psql("create table orders (id int primary key, item text); "
         "insert into orders select g, 'item ' || g from generate_series(1, 500) g", db=name)
    return name


def write_config(app: Path, source: dict, **backup) -> Path:
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "sources": [source], **backup}}))
    return config


def dsn(db: str = "postgres", user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:5432/{db}"


def manifests(app: Path) -> list[Path]:
    backups = app / "backups"
    return sorted(backups.glob("*.json")) if backups.exists() else []


def members(app: Path) -> list[str]:
    archive = next((app / "backups").glob("*.tar.zst"))
    proc = subprocess.run(f"zstd -dc '{archive}' | tar -t", shell=True, capture_output=True, text=True, check=True)
    return sorted(line for line in proc.stdout.splitlines() if not line.endswith("/") and "/" in line
                  and not line.startswith(".eternia"))


SCHEMA = """
create table orders (id serial primary key, item text not null, amount int not null);
create table audit (order_id int, at timestamptz default now());
create sequence invoice_no start 1000;
create view big_orders as select id, item from orders where amount > 50;
create function log_order() returns trigger language plpgsql as
  $$ begin insert into audit(order_id) values (new.id); return new; end $$;
create trigger orders_audit after insert on orders for each row execute function log_order();
insert into orders (item, amount) select 'item ' || g, g from generate_series(1, 100) g;
select nextval('invoice_no') from generate_series(1, 5);
"""


def test_round_trip_of_two_databases_in_place(app, new_db, cli, tmp_path, request):
    one, two = new_db(), new_db()
    psql(SCHEMA, db=one)
    reader = f"eternia_reader_{uuid.uuid4().hex[:8]}"
    psql(f"create role {reader} nologin")
    request.addfinalizer(lambda: psql(f"drop owned by {reader}; drop role {reader}"))  # its grant on the database
    properties = (f"alter database {one} set search_path to \"$user\", public; alter database {one} set work_mem "
                  f"to '8MB'; alter database {one} connection limit 40; revoke all on database {one} from public; "
                  f"grant connect on database {one} to {reader}; comment on database {one} is 'the shop''s'")
    psql(properties)
    properties_of = ("select d.datconnlimit, d.datacl::text, shobj_description(d.oid, 'pg_database'), "
                     "(select setconfig::text from pg_db_role_setting where setdatabase = d.oid and setrole = 0) "
                     f"from pg_database d where datname = '{one}'")
    props_before = psql(properties_of).replace(one, "DB")
    psql("create table notes (id int primary key, body text); insert into notes values (1, 'kept')", db=two)
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [one, two]})
    before = content(one), content(two)
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    assert members(app) == sorted([f"pg/{one}.pgcustom", f"pg/{two}.pgcustom"])

    psql("insert into orders (item, amount) values ('after', 99); select nextval('invoice_no');"
         "create table later_table (x int); create view later_view as select 1 as one;"
         "create function later_function() returns int language sql as 'select 1';"
         "create sequence later_sequence; drop view big_orders", db=one)
    psql("drop table notes", db=two)
    session = subprocess.Popen([PSQL, "-X", "-h", "127.0.0.1", "-U", "postgres", "-d", one, "-c",
                                "select pg_sleep(60)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # the session is connected
            if psql(f"select count(*) from pg_stat_activity where datname = '{one}'") == "1":
                break
            time.sleep(0.1)
        restored = cli("restore", "latest", "--yes", config=config)
        assert restored.returncode == 0, restored.stderr
        assert session.wait(10) != 0  # terminated
    finally:
        session.kill()
        session.wait()
    assert "terminated 1 session(s)" in restored.stderr
    assert (content(one), content(two)) == before
    assert psql(properties_of).replace(one, "DB") == props_before  # the database's own settings are kept
    objects = psql("select string_agg(relname, ',' order by relname) from pg_class "
                   "where relname like 'later%' or relname = 'big_orders'", db=one)
    assert objects == "big_orders"
    assert psql("select count(*) from pg_proc where proname = 'later_function'", db=one) == "0"
    # sequences and triggers carry on where the backup left them
    assert psql("select nextval('invoice_no')", db=one) == "1005"
    assert psql("insert into orders (item, amount) values ('new', 1) returning id", db=one).splitlines()[0] == "101"
    assert psql("select count(*) from audit where order_id = 101", db=one) == "1"
    assert not databases(like=f"{one}_eternia%") and not databases(like=f"{two}_eternia%")

    to = cli("restore", "latest", "--to", str(tmp_path / "dump"), "--yes", config=config)
    assert to.returncode == 0, to.stderr
    assert (tmp_path / "dump" / "pg" / f"{two}.pgcustom").read_bytes().startswith(b"PGDMP")


def test_the_dsn_form_is_unchanged_and_objects_made_after_the_backup_are_gone(app, database, cli, tmp_path):
    config = write_config(app, {"type": "postgres", "name": "appdb", "dsn": dsn(database)})
    assert "postgres" in cli("plugins").stdout
    before = content(database)
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    assert members(app) == ["appdb/dump.pgcustom"]
    psql("delete from orders where id > 10; insert into orders values (9999, 'after the backup');"
         "create table later (x int); create view later_view as select 1;"
         "create function later_fn() returns int language sql as 'select 2'", db=database)
    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert content(database) == before
    assert psql("select count(*), max(id) from orders", db=database) == "500|500"
    assert psql("select count(*) from pg_class where relname like 'later%'", db=database) == "0"
    assert psql("select count(*) from pg_proc where proname = 'later_fn'", db=database) == "0"
    to = cli("restore", "latest", "--to", str(tmp_path / "dump"), "--yes", config=config)
    assert to.returncode == 0, to.stderr
    assert (tmp_path / "dump" / "appdb" / "dump.pgcustom").read_bytes().startswith(b"PGDMP")

    psql(f"drop database {database}")  # a database that is gone is created again
    again = cli("restore", "latest", "--yes", config=config)
    assert again.returncode == 0, again.stderr
    assert content(database) == before


def test_the_restore_by_hand_of_the_docs(app, new_db, cli, tmp_path):
    db, by_hand = new_db(), new_db()
    psql(SCHEMA, db=db)
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [db], "globals": True})
    assert cli("create", config=config).returncode == 0
    archive = next((app / "backups").glob("*.tar.zst"))
    work = tmp_path / "by-hand"
    work.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -x", shell=True, cwd=work, check=True)
    assert "CREATE ROLE postgres;" in (work / "pg" / "globals.sql").read_text()
    subprocess.run([shutil.which("pg_restore"), "-h", "127.0.0.1", "-U", "postgres", "-d", by_hand, "--clean",
                    "--if-exists", f"pg/{db}.pgcustom"], cwd=work, check=True, capture_output=True)
    assert content(by_hand) == content(db)


def start_writer(db: str) -> subprocess.Popen:
    """A psql process inserting pairs of rows, one transaction per pair, until killed."""
    psql("create table pairs (pair int, half int, primary key (pair, half))", db=db)
    script = "\n".join(f"begin; insert into pairs values ({i}, 1); select pg_sleep(0.001); "
                       f"insert into pairs values ({i}, 2); commit;" for i in range(1, 200_000))
    writer = subprocess.Popen([PSQL, "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    threading.Thread(target=lambda: _feed(writer, script), daemon=True).start()
    for _ in range(100):
        if psql("select count(*) from pairs", db=db) != "0":
            return writer
        time.sleep(0.05)
    raise AssertionError("the writer wrote nothing")


def _feed(proc: subprocess.Popen, script: str) -> None:
    try:
        proc.stdin.write(script)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def test_a_backup_during_writes_restores_one_snapshot_into_another_database(app, new_db, cli):
    live, copy = new_db(), f"eternia_test_copy_{uuid.uuid4().hex[:8]}"
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [live]})
    writer = start_writer(live)
    try:
        created = cli("create", config=config)
    finally:
        writer.kill()
        writer.wait()
    assert created.returncode == 0, created.stderr
    live_before = content(live)
    try:
        # a missing database replaces nothing: no confirmation needed
        restored = cli("restore", "latest", "--source", "pg", "--to-database", copy, config=config)
        assert restored.returncode == 0, restored.stderr
        halves = psql("select count(*), count(*) filter (where n <> 2) from "
                      "(select pair, count(*) n from pairs group by pair) p", db=copy)
        pairs, torn = map(int, halves.split("|"))
        assert pairs > 0 and torn == 0
        assert content(live) == live_before  # the source's own database was not touched

        # an existing database is replaced whole (after confirmation: --yes)
        psql("create table stray (x int)", db=copy)
        refused = cli("restore", "latest", "--source", "pg", "--to-database", copy, config=config)
        assert refused.returncode != 0 and "pass --yes" in refused.stderr
        assert psql("select count(*) from pg_class where relname = 'stray'", db=copy) == "1"
        again = cli("restore", "latest", "--source", "pg", "--to-database", copy, "--yes", config=config)
        assert again.returncode == 0, again.stderr
        assert psql("select count(*) from pg_class where relname = 'stray'", db=copy) == "0"
        assert not databases(like=f"{copy}_eternia%")
    finally:
        psql(f"drop database if exists {copy} with (force)")


def test_schemas_exclude_tables_and_pg_dump_args_reach_pg_dump(app, new_db, cli, tmp_path):
    db = new_db()
    psql("create schema app; create schema scratch; create table app.orders (id int); "
         "create table app.sessions (id int); create table scratch.junk (id int); "
         "comment on table app.orders is 'the orders'", db=db)
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [db],
                                "schemas": ["app"], "exclude_tables": ["app.sessions"],
                                "pg_dump_args": ["--no-comments"]})
    assert cli("create", config=config).returncode == 0
    assert cli("restore", "latest", "--to", str(tmp_path / "out"), config=config).returncode == 0
    listing = subprocess.run([shutil.which("pg_restore"), "--list", str(tmp_path / "out" / "pg" / f"{db}.pgcustom")],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE app orders" in listing
    assert "sessions" not in listing and "junk" not in listing and "COMMENT" not in listing


def test_to_database_needs_a_source_of_one_database(app, new_db, cli):
    one, two = new_db(), new_db()
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [one, two]})
    assert cli("create", config=config).returncode == 0
    before = content(one), content(two)
    proc = cli("restore", "latest", "--source", "pg", "--to-database", f"{one}_x", "--yes", config=config)
    assert proc.returncode != 0
    assert "several databases" in proc.stderr and "lists that one database" in proc.stderr
    assert (content(one), content(two)) == before and not databases(like=f"{one}_x%")


def test_databases_all_on_the_shared_server_lists_every_database_and_the_globals(app, new_db, cli, tmp_path):
    mine, gone = new_db(), new_db()
    role = f"eternia_role_{uuid.uuid4().hex[:8]}"
    psql(f"create role {role} nologin")
    # a database dropped between the listing and its dump (here: just before its pg_dump starts)
    spy = fake_program(tmp_path / "bin", "pg_dump",
                       f'case "$*" in *{gone}*) {PSQL} -X -q -h 127.0.0.1 -U postgres -d postgres '
                       f'-c "drop database {gone}";; esac\nexec {PG_DUMP} "$@"\n')
    try:
        config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": "all",
                                    "exclude_databases": ["root"], "pg_dump": str(spy)})
        created = cli("create", config=config)
        assert created.returncode == 3, created.stderr  # a warning, not a failure
        assert f"database {gone} was dropped while the backup ran" in created.stdout + created.stderr
        names = members(app)
        assert {"pg/globals.sql", f"pg/{mine}.pgcustom", "pg/postgres.pgcustom"} <= set(names)
        assert not {"pg/template0.pgcustom", "pg/template1.pgcustom", "pg/root.pgcustom",
                    f"pg/{gone}.pgcustom"} & set(names)
        assert f"CREATE ROLE {role};" in subprocess.run(
            f"zstd -dc '{next((app / 'backups').glob('*.tar.zst'))}' | tar -xO pg/globals.sql", shell=True,
            capture_output=True, text=True, check=True).stdout
    finally:
        psql(f"drop role if exists {role}")


@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    """A PostgreSQL server of this module alone (unix socket only), for restoring `databases: all` in place."""
    reachable()
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb or os.geteuid() != 0:
        pytest.skip("a private server needs initdb and root (to run it as the postgres user)")
    bindir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="eternia-test-pg-"))  # pytest's tmp dirs are closed to the postgres user
    shutil.chown(root, "postgres")
    root.chmod(0o700)
    as_postgres = {"user": "postgres", "capture_output": True, "timeout": 120}
    proc = subprocess.run([bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres"], **as_postgres)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "start", "-o",
                           f"-c listen_addresses='' -k {root} -p 5439"], **as_postgres)
    assert proc.returncode == 0, proc.stderr + (root / "log").read_bytes()
    try:
        yield {"host": str(root), "port": "5439"}
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop"], **as_postgres)
        shutil.rmtree(root, ignore_errors=True)


def test_databases_all_with_globals_restored_in_place(app, private_server, cli):
    server = private_server
    psql("create role app_owner login password 'app-Pw-81x'", server=server)
    psql("create database shop owner app_owner", server=server)
    psql("create database scratchpad", server=server)
    psql("create table items (id int primary key); insert into items select generate_series(1, 50)",
         db="shop", server=server)
    url = f"postgresql://postgres@/postgres?host={server['host']}&port={server['port']}"
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": url, "databases": "all",
                                "exclude_databases": ["scratchpad"], "restore_globals": True})
    before = {db: content(db, server) for db in ("shop", "postgres")}
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    assert members(app) == ["pg/globals.sql", "pg/postgres.pgcustom", "pg/shop.pgcustom"]

    psql("drop database shop", server=server)
    psql("drop role app_owner; create table later (x int)", server=server)
    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert psql("select rolcanlogin from pg_roles where rolname = 'app_owner'", server=server) == "t"
    assert psql("select pg_get_userbyid(datdba) from pg_database where datname = 'shop'", server=server) == \
        "postgres"  # the database was missing: a new one belongs to the restoring user
    assert {db: content(db, server) for db in ("shop", "postgres")} == before
    assert "scratchpad" in databases(server)
    assert not databases(server, like="%eternia%")


# -- failures: clear, and nothing changed ----------------------------------------------------------------------


def fake_program(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def assert_failed_cleanly(proc, app: Path, *, says: list[str], secret: str | None = None) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = proc.stderr
    for words in says:
        assert words in message, message
    assert "source 'pg'" in message
    if secret is not None:
        assert secret not in proc.stdout + proc.stderr
    assert manifests(app) == []


@pytest.mark.parametrize("case", ["server down", "server silent", "unknown role", "database missing",
                                  "pg_dump missing", "pg_dump older than the server"])
def test_backup_failures_say_what_to_do(app, database, cli, tmp_path, monkeypatch, case):
    secret = "pg-secret-Tq93Lm"
    source = {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [database]}
    says = []
    if case == "server down":
        source["dsn"] = f"postgresql://postgres:{secret}@127.0.0.1:1/postgres"
        says = ["no PostgreSQL server answers there", "fix the host and port"]
    elif case == "server silent":  # it takes the connection and never answers: the connect timeout ends it
        import eternia_backup_postgres

        monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
        monkeypatch.setattr(eternia_backup_postgres, "CONNECT_TIMEOUT", 2)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        source["dsn"] = f"postgresql://postgres:{secret}@127.0.0.1:{silent.getsockname()[1]}/postgres"
        says = ["did not answer within the connect timeout", "listens at the dsn's host and port"]
    elif case == "unknown role":
        source["dsn"] = f"postgresql://nosuchuser:{secret}@127.0.0.1:5432/postgres"
        says = ["the server refused the login", "check the user and password"]
    elif case == "database missing":
        source["databases"] = [f"{database}_missing"]
        says = [f"dumping database {database}_missing failed", "does not exist on the server"]
    elif case == "pg_dump missing":
        source["pg_dump"] = str(tmp_path / "nowhere" / "pg_dump")
        says = ["not found", "install the PostgreSQL client tools"]
    else:
        bindir = tmp_path / "bin"
        fake_program(bindir, "pg_dump", "echo 'pg_dump: error: server version: 15.20; pg_dump version: 14.11' >&2\n"
                     "echo 'pg_dump: error: aborting because of server version mismatch' >&2\nexit 1\n")
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        says = ["pg_dump is older than the server", "install the PostgreSQL client tools of the server's major"]
    before = content(database)
    started = time.monotonic()
    proc = cli("-vv", "create", config=write_config(app, source))
    assert time.monotonic() - started < 60
    assert_failed_cleanly(proc, app, says=says, secret=secret)
    assert content(database) == before
    if case == "server silent":
        silent.close()


@pytest.mark.parametrize("case", ["server down", "pg_restore fails", "pg_restore missing"])
def test_restore_failures_change_nothing(app, database, cli, tmp_path, case):
    source = {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [database]}
    assert cli("create", config=write_config(app, source)).returncode == 0
    psql("insert into orders values (10001, 'after the backup'); create table later (x int)", db=database)
    changed = content(database)
    if case == "server down":
        source["dsn"] = "postgresql://postgres@127.0.0.1:1/postgres"
        says = ["no PostgreSQL server answers there"]
    elif case == "pg_restore fails":  # restores the whole dump (into the scratch database), then fails
        source["pg_restore"] = str(fake_program(tmp_path / "bin", "pg_restore",
                                                f'{shutil.which("pg_restore")} "$@" || exit\n'
                                                'case "$*" in *--list*) exit 0;; esac\n'
                                                "echo 'pg_restore: error: simulated failure' >&2\nexit 1\n"))
        says = [f"restoring database {database}", f"database {database} was left as it was", "simulated failure"]
    else:
        source["pg_restore"] = str(tmp_path / "nowhere" / "pg_restore")
        says = ["not found", "install the PostgreSQL client tools"]
    config = write_config(app, source)
    proc = cli("restore", "latest", "--yes", config=config)
    assert proc.returncode == 1, proc.stderr
    for words in says:
        assert words in proc.stderr
    assert content(database) == changed
    assert not databases(like=f"{database}_eternia%")


def test_a_server_of_another_major_version_is_one_warning(app, new_db, cli, tmp_path):
    one, two = new_db(), new_db()
    fake = fake_program(tmp_path / "bin", "pg_restore",
                        f'case "$*" in *--list*) {shutil.which("pg_restore")} "$@" | '
                        "sed 's/Dumped from database version: [0-9]*/Dumped from database version: 14/'; exit;; esac\n"
                        f'exec {shutil.which("pg_restore")} "$@"\n')
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [one, two],
                                "pg_restore": str(fake)})
    assert cli("create", config=config).returncode == 0
    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert restored.stderr.count("dumped from PostgreSQL 14, the server is PostgreSQL 15") == 1


def test_the_password_is_never_in_argv_logs_or_manifests(app, new_db, cli, tmp_path):
    secret = "pg-Secret-w8Kq2z"
    role = f"eternia_pw_{uuid.uuid4().hex[:8]}"
    db = new_db()
    psql(f"create role {role} login createdb password '{secret}'; alter database {db} owner to {role}")
    try:
        psql(f"create table big (id int, pad text); insert into big select g, repeat('x', 200) "
             f"from generate_series(1, 300000) g; alter table big owner to {role}", db=db)
        log_dir = tmp_path / "dumpstat"
        log_dir.mkdir()
        spy = fake_program(tmp_path / "bin", "pg_dump",
                           'out="$(readlink /proc/$$/fd/1)"\n'  # dash redirects in the shell itself: read fd 1 first
                           f'printf %s "$out" > {log_dir}/stdout\n'
                           f'exec {shutil.which("pg_dump")} "$@"\n')
        config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(db, f"{role}:{secret}"),
                                    "databases": [db], "pg_dump": str(spy)})
        seen, found = [], []
        done = threading.Event()

        def watch():
            while not done.is_set():
                for path in glob.glob("/proc/[0-9]*/cmdline"):
                    try:
                        argv = Path(path).read_bytes()
                    except OSError:
                        continue
                    if b"pg_dump" in argv and b"--format=custom" in argv:
                        seen.append(argv)
                    if secret.encode() in argv:
                        found.append(argv)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            created = cli("-vv", "create", config=config)
        finally:
            done.set()
            watcher.join()
        assert created.returncode == 0, created.stderr
        assert seen, "the watcher never saw pg_dump running"
        assert found == []
        assert secret not in created.stdout + created.stderr
        # the dump goes straight into the archive through a pipe: no file holds it, private or not
        assert (log_dir / "stdout").read_text().startswith("pipe:")
        for path in (app / "backups").rglob("*.json"):
            assert secret not in path.read_text()
        listed = cli("list", "--json", config=config)
        assert secret not in listed.stdout
        details = json.loads(manifests(app)[0].read_text())
        assert secret not in json.dumps(details)
        restored = cli("-vv", "restore", "latest", "--yes", config=config)
        assert restored.returncode == 0, restored.stderr
        assert secret not in restored.stdout + restored.stderr
        # a drill (checks not configured: the restore into a scratch database is the default) as a
        # user that is no superuser, only CREATEDB
        drilled = cli("-vv", "drill", "--json", config=config)
        assert drilled.returncode == 0, drilled.stdout + drilled.stderr
        assert [c["name"] for c in json.loads(drilled.stdout)["checks"]] == ["restore", f"pg_restore[{db}]"]
        assert secret not in drilled.stdout + drilled.stderr
        assert scratches(db) == set()
    finally:
        for name in databases(like=f"{db}%") | scratches(db):
            psql(f'drop database if exists "{name}" with (force)')
        psql(f"drop role if exists {role}")


def test_option_errors_name_the_key(app, cli):
    config = write_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": ["a"],
                                "exclude_databases": ["b"]})
    proc = cli("config", "check", config=config)
    assert proc.returncode != 0 and "exclude_databases applies only to databases: all" in proc.stderr


# -- restore drills -------------------------------------------------------------------------------------------


def drill_config(app: Path, source: dict, checks: dict) -> Path:
    return write_config(app, source, drill={"checks": {source["name"]: checks}})


def scratches(live: str) -> set[str]:
    """Scratch databases a drill made of database ``live`` and left on the server."""
    return databases(like=f"eternia\\_drill\\_{live}\\_%")


def test_a_drill_restores_each_dump_into_a_scratch_database_and_drops_it(app, database, cli):
    config = drill_config(app, {"type": "postgres", "name": "appdb", "dsn": dsn(database)}, {
        "sql": ["SELECT count(*) = 500 FROM orders",
                "SELECT current_database() LIKE 'eternia_drill_%'",  # the queries ran in the scratch database
                f"SELECT current_database() <> '{database}'"]})
    assert cli("config", "check", config=config).returncode == 0
    assert cli("create", config=config).returncode == 0
    psql("insert into orders values (9999, 'after the backup')", db=database)
    before = content(database)

    out = cli("drill", "--json", config=config)

    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    got = {c["name"]: c for c in doc["checks"] if c["source"] == "appdb"}
    assert set(got) == {f"pg_restore[{database}]", f"sql[0][{database}]", f"sql[1][{database}]",
                        f"sql[2][{database}]"}
    assert all(c["ok"] for c in got.values()), got
    assert got[f"sql[0][{database}]"]["detail"] == f"database {database}: 'SELECT count(*) = 500 FROM orders' " \
                                                     "returned 't'"
    assert content(database) == before  # the live database (with its row made after the backup) as it was
    assert scratches(database) == set()


def test_a_false_or_failing_query_fails_the_drill_naming_database_and_query(app, new_db, cli):
    shop, notes = new_db(), new_db()
    psql("create table orders (id int); insert into orders values (1)", db=shop)
    psql("create table notes (id int)", db=notes)
    config = drill_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [shop, notes]}, {
        "sql": ["SELECT count(*) > 0 FROM orders", "SELECT pg_sleep(30) IS NOT NULL"], "timeout": 1})
    assert cli("create", config=config).returncode == 0
    before = content(shop), content(notes)

    out = cli("drill", "--json", config=config)

    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert sorted(doc["failed_checks"]) == sorted([f"pg:sql[1][{shop}]", f"pg:sql[0][{notes}]",
                                                   f"pg:sql[1][{notes}]"]), doc
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name[f"pg_restore[{shop}]"]["ok"] and by_name[f"pg_restore[{notes}]"]["ok"]
    assert by_name[f"sql[0][{shop}]"]["ok"]
    missing = by_name[f"sql[0][{notes}]"]["detail"]
    assert missing.startswith(f"database {notes}: 'SELECT count(*) > 0 FROM orders': ")
    assert 'relation "orders" does not exist' in missing
    assert "psql ran longer than its timeout of 1.0 s" in by_name[f"sql[1][{shop}]"]["detail"]
    assert f"check 'sql[0][{notes}]' of source 'pg' failed" in out.stderr
    assert (content(shop), content(notes)) == before
    assert scratches(shop) == scratches(notes) == set()


def test_sql_as_a_mapping_runs_each_database_s_own_queries(app, new_db, cli):
    shop, notes = new_db(), new_db()
    psql("create table orders (id int); insert into orders values (1)", db=shop)
    psql("create table notes (id int)", db=notes)
    config = drill_config(app, {"type": "postgres", "name": "pg", "dsn": dsn(), "databases": [shop, notes]}, {
        "sql": {shop: ["SELECT count(*) = 1 FROM orders", "SELECT to_regclass('notes') IS NULL"],
                notes: "SELECT count(*) = 0 FROM notes", "gone": "SELECT true"}})
    assert cli("create", config=config).returncode == 0

    doc = json.loads(cli("drill", "--json", config=config).stdout)

    assert sorted((c["name"], c["ok"]) for c in doc["checks"] if c["source"]) == sorted([
        (f"pg_restore[{shop}]", True), (f"sql[0][{shop}]", True), (f"sql[1][{shop}]", True),
        (f"pg_restore[{notes}]", True), (f"sql[0][{notes}]", True), ("sql[gone]", False)])
    assert doc["failed_checks"] == ["pg:sql[gone]"]
    assert "names database gone, and the backup holds no dump of it" in doc["checks"][-1]["detail"]
    assert scratches(shop) == scratches(notes) == set()


def test_a_dump_pg_restore_cannot_restore_fails_the_drill(app, database, cli, tmp_path):
    truncating = tmp_path / "pg_dump"  # archives a dump cut short, as a full disk or a bug would
    truncating.write_text(f"#!/bin/sh\n'{PG_DUMP}' \"$@\" > '{tmp_path}/whole' || exit 1\n"
                          f"head -c -200 '{tmp_path}/whole'\n")
    truncating.chmod(0o755)
    config = drill_config(app, {"type": "postgres", "name": "appdb", "dsn": dsn(database),
                                "pg_dump": str(truncating)}, {"sql": "SELECT true"})
    assert cli("create", config=config).returncode == 0
    before = content(database)

    out = cli("drill", "--json", config=config)

    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["failed_checks"] == [f"appdb:pg_restore[{database}]"]  # the queries need a restored database
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == f"pg_restore[{database}]")
    assert "pg_restore exited with status 1" in detail and "end of file" in detail, detail
    assert f"database {database} was not touched" in detail
    assert content(database) == before
    assert scratches(database) == set()

    # restore: false only reads each dump's table of contents, which the truncated dump still has
    listed = drill_config(app, {"type": "postgres", "name": "appdb", "dsn": dsn(database),
                                "pg_dump": str(truncating)}, {"restore": False})
    doc = json.loads(cli("drill", "--json", config=listed).stdout)
    assert [(c["name"], c["ok"]) for c in doc["checks"] if c["source"]] == [(f"pg_restore_list[{database}]", True)]


def test_a_scratch_database_of_a_killed_drill_is_dropped_by_the_next(app, database, cli):
    import socket

    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed, running, elsewhere = (f"eternia_drill_{database}_{what}" for what in ("killed", "running", "other"))
    for name, comment in ((killed, f"{host} {dead.pid}"), (running, f"{host} {os.getpid()}"),
                          (elsewhere, "db2.example 4242")):
        psql(f"create database {name}")
        psql(f"comment on database {name} is 'eternia-backup drill scratch database of {comment}'")
    session = subprocess.Popen([PSQL, "-X", "-h", "127.0.0.1", "-U", "postgres", "-d", elsewhere, "-c",
                                "select pg_sleep(60)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # a drill on another host is connected to its scratch database
            if psql(f"select count(*) from pg_stat_activity where datname = '{elsewhere}'") == "1":
                break
            time.sleep(0.1)
        config = drill_config(app, {"type": "postgres", "name": "appdb", "dsn": dsn(database)}, {})
        assert cli("create", config=config).returncode == 0
        out = cli("drill", config=config)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"dropping the scratch database {killed} of a drill that did not finish" in out.stderr
        assert scratches(database) == {running, elsewhere}
    finally:
        session.kill()
        session.wait()
        for name in (killed, running, elsewhere):
            psql(f"drop database if exists {name} with (force)")


def test_drill_keys_of_a_postgres_source_are_checked(app, cli):
    source = {"type": "postgres", "name": "pg", "dsn": dsn()}
    proc = cli("config", "check", config=drill_config(app, source, {"integrity_check": True}))
    assert proc.returncode != 0
    assert ("backup.drill.checks.pg.integrity_check: a postgres source has no such check; it has: restore, sql, "
            "command, timeout") in proc.stderr
    proc = cli("config", "check", config=drill_config(app, source, {"restore": False, "sql": ["select 1"]}))
    assert proc.returncode != 0 and "backup.drill.checks.pg.sql: the queries run in the restored scratch database" \
        in proc.stderr


# -- the conformance kit --------------------------------------------------------------------------------------


class TestPostgresSource(SourceConformance):
    """The dsn form; a ``--to`` restore is read back by pg_restore into a new database."""

    member = "dump.pgcustom"

    @pytest.fixture
    def source_section(self, database):
        return {"type": "postgres", "name": "appdb", "dsn": dsn(database)}

    @staticmethod
    def _db(section) -> str:
        return section["dsn"].rsplit("/", 1)[1]

    @staticmethod
    def _rows(db: str) -> str:
        return psql("select count(*), sum(id), md5(string_agg(item, ',' order by id)) from orders", db=db)

    def capture_state(self, section):
        return self._rows(self._db(section))

    def restored_state(self, section, directory):
        dump = directory / section["name"] / self.member.format(db=self._db(section))
        scratch = f"eternia_kit_{uuid.uuid4().hex[:8]}"
        psql(f"create database {scratch}")
        try:
            subprocess.run([shutil.which("pg_restore"), "-h", "127.0.0.1", "-U", "postgres", "--no-owner",
                            "-d", scratch, str(dump)], check=True, capture_output=True, timeout=120)
            return self._rows(scratch)
        finally:
            psql(f"drop database if exists {scratch} with (force)")

    def mutate_state(self, section):
        psql("delete from orders where id > 10; insert into orders values (9999, 'after the backup')",
             db=self._db(section))


class TestPostgresDatabasesSource(TestPostgresSource):
    """The `databases:` form: the dsn names only the server (and its database postgres to connect to)."""

    member = "{db}.pgcustom"

    @pytest.fixture
    def source_section(self, database):
        return {"type": "postgres", "name": "appdb", "dsn": dsn(),
                "databases": [database]}

    @staticmethod
    def _db(section) -> str:
        return section["databases"][0]
