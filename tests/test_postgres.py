"""The first-party postgres plugin against the machine's real PostgreSQL (127.0.0.1:5432).

Loaded through its entry point like any third-party plugin.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import yaml

from eternia_backup.testing import SourceConformance

PSQL = shutil.which("psql")


def psql(sql: str, db: str = "postgres") -> str:
    proc = subprocess.run([PSQL, "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout.strip()


@pytest.fixture
def database():
    if PSQL is None or shutil.which("pg_dump") is None:
        pytest.skip("the PostgreSQL client tools are not installed")
    try:
        psql("select 1")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    name = f"eternia_test_{uuid.uuid4().hex[:8]}"
    psql(f"create database {name}")
    psql("create table orders (id int primary key, item text); "
         "insert into orders select g, 'item ' || g from generate_series(1, 500) g", db=name)
    yield name
    psql(f"drop database if exists {name} with (force)")


def test_postgres_backup_and_restore_in_place(app, database, cli, tmp_path):
    section = {"storage_path": "backups",
               "sources": [{"type": "postgres", "name": "appdb",
                            "dsn": f"postgresql://postgres@127.0.0.1:5432/{database}"}]}
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    plugins = cli("plugins")
    assert "postgres" in plugins.stdout
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    psql("delete from orders where id > 10; insert into orders values (9999, 'after the backup')", db=database)
    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert psql("select count(*), max(id) from orders", db=database) == "500|500"
    to = cli("restore", "latest", "--to", str(tmp_path / "dump"), "--yes", config=config)
    assert to.returncode == 0, to.stderr
    assert (tmp_path / "dump" / "appdb" / "dump.pgcustom").read_bytes().startswith(b"PGDMP")


def test_postgres_dump_failure_names_the_cause_without_the_password(app, cli):
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    password = "pg-secret-Tq93Lm"
    section = {"storage_path": "backups",
               "sources": [{"type": "postgres", "name": "appdb",
                            "dsn": f"postgresql://nosuchuser:{password}@127.0.0.1:5432/nosuchdb"}]}
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    proc = cli("-vv", "create", config=config)
    assert proc.returncode == 1
    assert "pg_dump exited" in proc.stderr and password not in proc.stderr + proc.stdout
    backups = app / "backups"
    assert not backups.exists() or not [p for p in backups.iterdir() if p.name.endswith(".json")]


class TestPostgresSource(SourceConformance):
    """The plugin against the conformance kit; a ``--to`` restore is read back by pg_restore into a new database."""

    @pytest.fixture
    def source_section(self, database):
        return {"type": "postgres", "name": "appdb", "dsn": f"postgresql://postgres@127.0.0.1:5432/{database}"}

    @staticmethod
    def _rows(db: str) -> str:
        return psql("select count(*), sum(id), md5(string_agg(item, ',' order by id)) from orders", db=db)

    def capture_state(self, section):
        return self._rows(section["dsn"].rsplit("/", 1)[1])

    def restored_state(self, section, directory):
        dump = directory / section["name"] / "dump.pgcustom"
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
             db=section["dsn"].rsplit("/", 1)[1])
