"""Source ``postgres``: PostgreSQL databases through pg_dump / pg_restore.

Each database is dumped in pg_dump's custom format (consistent: one transaction
snapshot per database), archived as ``<source>/<db>.pgcustom`` (the single
database of a ``dsn:``-only source as ``<source>/dump.pgcustom``, as before);
``pg_dumpall --globals-only`` (roles, tablespaces) as ``<source>/globals.sql``.

A restore into the server never edits a live database: each dump is restored
into a fresh scratch database, and only when every one restored do the live
ones change, by renames inside one transaction (the old ones are then dropped).
A failure before that leaves every live database as it was.

A password in a ``postgresql://`` URL DSN is moved into ``PGPASSWORD`` so it
never shows in a process listing; a key/value DSN is passed on as written.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import subprocess
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, model_validator

from eternia_backup.api import (
    CommandOutput,
    DirectorySwapPlan,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    child_env,
    hookimpl,
    redact_text,
    remember_secret,
    remove_tree,
    run_process,
    scratch_dir,
    scratch_file,
    stderr_tail,
)

log = logging.getLogger("eternia_backup.source.postgres")

DUMP_NAME = "dump.pgcustom"  # the one database of a source without `databases:`
DUMP_SUFFIX = ".pgcustom"
GLOBALS_NAME = "globals.sql"
NAMEDATALEN = 63  # PostgreSQL's longest identifier, in bytes
FIELD_SEPARATOR = "\x1f"  # between psql's output columns: no database or role name holds it
#: how every dump is restored (into a new database: a restore and a drill alike); --no-owner: objects belong
#: to the dsn's user, so a dump of another server's roles restores
PG_RESTORE_FLAGS = ("--no-owner", "--single-transaction", "--exit-on-error")
#: ``timeout=`` of run/query when not given: the source's ``timeout:`` option
_OPTION = object()


class PostgresOptions(SourceOptions):
    dsn: str = Field(description="The server (and, without `databases`, the database) as a "
                     "postgresql://user:password@host:port/db URL; the password goes to the tools in PGPASSWORD. "
                     "With `databases`, its database is only the one connected to for listing and maintenance.",
                     examples=["postgresql://app:${PGPASSWORD}@127.0.0.1/appdb"])
    databases: list[str] | Literal["all"] | None = Field(
        None, description="The databases to back up, each its own dump; `all`: every database that allows "
        "connections except template0/template1. Default: the dsn's database.", examples=[["app", "billing"], "all"])
    exclude_databases: list[str] = Field([], description="Databases left out of `databases: all`.",
                                         examples=[["postgres"]])
    globals: bool | None = Field(None, description="Also archive `pg_dumpall --globals-only` (roles, tablespaces) as "
                                 "globals.sql. Default: true with `databases: all`, else false.", examples=[True])
    restore_globals: bool = Field(False, description="Run globals.sql before the databases at an in-place restore. "
                                  "Off by default: it creates and alters roles of the whole server (passwords "
                                  "too), not only of the restored databases.", examples=[True])
    schemas: list[str] = Field([], description="Dump only these schemas (pg_dump --schema, each a pattern).",
                               examples=[["public", "billing"]])
    exclude_tables: list[str] = Field([], description="Leave these tables' definitions and data out "
                                      "(pg_dump --exclude-table, each a pattern).", examples=[["public.sessions"]])
    pg_dump_args: list[str] = Field([], description="More pg_dump arguments, passed as written.",
                                    examples=[["--no-comments"]])
    pg_dump: str = Field("pg_dump", description="The pg_dump program (a name on PATH or a path).",
                         examples=["/usr/lib/postgresql/16/bin/pg_dump"])
    pg_dumpall: str = Field("pg_dumpall", description="The pg_dumpall program (for globals).",
                            examples=["/usr/lib/postgresql/16/bin/pg_dumpall"])
    pg_restore: str = Field("pg_restore", description="The pg_restore program (a name on PATH or a path).",
                            examples=["/usr/lib/postgresql/16/bin/pg_restore"])
    psql: str = Field("psql", description="The psql program (lists databases, creates and renames them at restore).",
                      examples=["/usr/lib/postgresql/16/bin/psql"])
    timeout: float | None = Field(None, description="Seconds pg_dump or pg_restore may run; default: as long as "
                                  "it takes.", examples=[3600])

    @model_validator(mode="after")
    def _check(self):
        if self.exclude_databases and self.databases != "all":
            raise ValueError("exclude_databases applies only to databases: all")
        if isinstance(self.databases, list):
            if not self.databases:
                raise ValueError("databases lists no database; name at least one, or write all")
            for name in self.databases:
                if not name or "\0" in name or len(name.encode()) > NAMEDATALEN:
                    raise ValueError(f"databases: {name!r} is not a PostgreSQL database name")
            if len(set(self.databases)) != len(self.databases):
                raise ValueError("databases names a database twice")
        return self

    @property
    def with_globals(self) -> bool:
        return self.globals if self.globals is not None else self.databases == "all"


def split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """(DSN without its password, environment carrying it) for URL-style DSNs."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or parts.password is None:
        return dsn, {}
    remember_secret(parts.password)
    remember_secret(unquote(parts.password))
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": unquote(parts.password)}


def with_database(dsn: str, database: str) -> str:
    """``dsn`` (without its password) pointed at ``database``."""
    parts = urlsplit(dsn)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + quote(database, safe="")))
    value = "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if "=" not in dsn:  # a bare database name
        return f"dbname={value}"
    return f"{dsn} dbname={value}"  # libpq: the last dbname= wins


def dsn_database(dsn: str) -> str | None:
    """The database a DSN names, or ``None`` (libpq then takes the user's name)."""
    parts = urlsplit(dsn)
    if parts.scheme in ("postgres", "postgresql"):
        return unquote(parts.path.lstrip("/")) or None
    if "=" not in dsn:
        return dsn.strip() or None
    found = re.findall(r"dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    if not found:
        return None
    value = found[-1]
    return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") else value


def member_name(database: str) -> str:
    """``<db>.pgcustom``; a ``/`` or ``%`` in the name is %-escaped (a member name is a path)."""
    return quote(database, safe=" !$&'()*+,;=:@-._~") + DUMP_SUFFIX


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def derived_name(database: str, what: str) -> str:
    """``<database>_eternia_<what>_<random>``, cut to PostgreSQL's 63 bytes."""
    suffix = f"_eternia_{what}_{secrets.token_hex(4)}"
    head = database.encode()[:NAMEDATALEN - len(suffix)].decode(errors="ignore")
    return head + suffix


def major_of(version: str) -> str:
    """'15.20 (Debian ...)' -> '15'; '9.6.24' -> '9.6'."""
    numbers = re.findall(r"\d+", version)[:2]
    if not numbers:
        return version
    return numbers[0] if int(numbers[0]) >= 10 else ".".join(numbers)


def hint_for(stderr: str, program: str) -> str:
    """What a person should do about a client tool's error."""
    if "server version mismatch" in stderr:
        return (f"{program} is older than the server; install the PostgreSQL client tools of the server's major "
                f"version (or newer) and set {program}: to that program if it is not first on PATH")
    if "timeout expired" in stderr:
        return ("the server took the connection but did not answer within the connect timeout; check that a "
                "PostgreSQL server (not another service) listens at the dsn's host and port, and that it is not hung")
    if "Connection refused" in stderr or "could not connect" in stderr or "Is the server running" in stderr:
        return "no PostgreSQL server answers there; start it, or fix the host and port in dsn"
    if ("password authentication failed" in stderr or re.search(r'role "[^"]*" does not exist', stderr)
            or "no pg_hba.conf entry" in stderr or "authentication failed" in stderr):
        return "the server refused the login; check the user and password in dsn (and the server's pg_hba.conf)"
    if re.search(r'database "[^"]*" does not exist', stderr):
        return "the database does not exist on the server; create it, or fix the database name in the config"
    if "permission denied to create database" in stderr:
        return ("the dsn's user may not create databases, and a restore into the server restores into a new one "
                "first; grant it CREATEDB (ALTER ROLE ... CREATEDB) or restore as a superuser")
    if "permission denied" in stderr or "must be superuser" in stderr:
        return "the dsn's user lacks a privilege this needs (see the error)"
    return "see the error"


# What a dump without --create lacks and a database replaced in place should keep: its own settings
# (ALTER DATABASE ... SET), connection limit, GRANTs and comment, copied server-side so that no value is parsed
# here. List-valued settings are written bare, as pg_dumpall does: quoted they would become one element.
COPY_DATABASE_PROPERTIES = """
do $eternia$
declare
  r record;
  live constant text := :live;
  scratch constant text := :scratch;
begin
  for r in select cfg from pg_db_role_setting st join pg_database d on d.oid = st.setdatabase,
                  unnest(st.setconfig) cfg where d.datname = live and st.setrole = 0 loop
    execute format('alter database %I set %s to %s', scratch, split_part(r.cfg, '=', 1),
      case when split_part(r.cfg, '=', 1) in ('search_path', 'temp_tablespaces', 'local_preload_libraries',
               'session_preload_libraries', 'shared_preload_libraries', 'unix_socket_directories')
           then substr(r.cfg, strpos(r.cfg, '=') + 1) else quote_literal(substr(r.cfg, strpos(r.cfg, '=') + 1)) end);
  end loop;
  for r in select datconnlimit from pg_database where datname = live and datconnlimit <> -1 loop
    execute format('alter database %I connection limit %s', scratch, r.datconnlimit);
  end loop;
  if (select datacl from pg_database where datname = live) is not null then
    execute format('revoke all on database %I from public', scratch);
    for r in select a.grantee, a.privilege_type, a.is_grantable from pg_database d, aclexplode(d.datacl) a
             where d.datname = live loop
      execute format('grant %s on database %I to %s%s', r.privilege_type, scratch,
        case when r.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(r.grantee)) end,
        case when r.is_grantable then ' with grant option' else '' end);
    end loop;
  end if;
  for r in select shobj_description(oid, 'pg_database') as note from pg_database where datname = live loop
    if r.note is not null then
      execute format('comment on database %I is %L', scratch, r.note);
    end if;
  end loop;
end
$eternia$
"""


#: seconds the tools wait for the server to answer a connection (libpq's PGCONNECT_TIMEOUT)
CONNECT_TIMEOUT = 10


class PostgresSource(Source):
    type_name = "postgres"
    options_model = PostgresOptions
    restores_to_database = True
    restore_plan_types = (DirectorySwapPlan,)  # PgRestorePlan renames in one transaction: nothing to resume

    def __init__(self, name, options, base_dir):
        super().__init__(name, options, base_dir)
        self.dsn, self.env = split_password(self.options.dsn)
        # a server that accepts the connection and never answers would hold every tool forever
        # (libpq waits without end by default): give up connecting after CONNECT_TIMEOUT seconds,
        # unless the dsn (connect_timeout=) or the environment (PGCONNECT_TIMEOUT) says otherwise
        if "connect_timeout" not in self.dsn and "PGCONNECT_TIMEOUT" not in os.environ:
            self.env = {"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT), **self.env}

    @property
    def where(self) -> str:
        return redact_text(self.dsn)

    def describe(self):
        details = {"type": self.type_name, "name": self.name, "dsn": self.where}
        if self.options.databases is not None:
            details["databases"] = self.options.databases
            details["globals"] = self.options.with_globals
        return details

    # -- running the client tools ------------------------------------------------------

    def run(self, args: list[str], *, database: str | None, doing: str, error: type[Exception],
            outcome: str, stdout=None, check: bool = True, timeout=_OPTION) -> tuple[int, str]:
        """Run a client tool through the framework (a stopping scheduler can cancel it); with ``check``, raise
        ``error`` naming the source, ``doing``, the cause, what to do and ``outcome`` (what was left as it was).
        ``database=None`` connects to the dsn's database; ``""`` passes no connection at all. ``timeout``:
        seconds (``None``: no limit); by default the source's ``timeout:``."""
        program = os.path.basename(args[0])
        limit = f"timeout: {self.options.timeout} s" if timeout is _OPTION else f"its timeout of {timeout} s"
        if timeout is _OPTION:
            timeout = self.options.timeout
        try:
            status, stderr = run_process(self._with_dbname(args, database), shell=False, stdout=stdout,
                                         timeout=timeout, env=child_env(self.env))
        except FileNotFoundError as exc:
            raise self._not_found(exc, program, doing, outcome, error) from exc
        except subprocess.TimeoutExpired as exc:
            raise self._timed_out(program, doing, outcome, error, limit) from exc
        text = stderr_tail(stderr) if stderr.strip() else ""
        if check and status != 0:
            raise self._failed(program, status, text, doing, outcome, error)
        return status, text

    def stream(self, writer, member: str, args: list[str], *, database: str | None, doing: str) -> None:
        """Archive a dump tool's stdout as ``member`` while it runs: no copy of the dump on disk.

        The framework asks whether the tool succeeded before it archives the dump's last
        part, so a dump that fails within its first 16 MiB has left nothing in the archive.
        """
        program, outcome = os.path.basename(args[0]), "nothing was backed up"

        def check(status: int, stderr: bytes) -> None:
            if status != 0:
                text = stderr_tail(stderr) if stderr.strip() else ""
                raise self._failed(program, status, text, doing, outcome, SourceError)

        try:
            output = CommandOutput(self._with_dbname(args, database), shell=False, timeout=self.options.timeout,
                                   env=child_env(self.env), on_end=check)
        except FileNotFoundError as exc:
            raise self._not_found(exc, program, doing, outcome, SourceError) from exc
        try:
            with output:
                writer.add_stream(member, output, None, mode=0o600, mtime=time.time())
                output.at_end()
        except subprocess.TimeoutExpired as exc:
            raise self._timed_out(program, doing, outcome, SourceError) from exc

    def _with_dbname(self, args: list[str], database: str | None) -> list[str]:
        if database == "":
            return args
        dsn = self.dsn if database is None else with_database(self.dsn, database)
        return [*args, f"--dbname={dsn}"]

    def _not_found(self, exc: FileNotFoundError, program: str, doing: str, outcome: str, error: type[Exception]):
        return error(f"source {self.name!r}: {exc.filename} not found while {doing}; install the PostgreSQL "
                     f"client tools (postgresql-client) or set {program}: to its path; {outcome}")

    def _timed_out(self, program: str, doing: str, outcome: str, error: type[Exception], limit: str | None = None):
        limit = limit or f"timeout: {self.options.timeout} s"
        return error(f"source {self.name!r}: {program} ran longer than {limit} while "
                     f"{doing} and was stopped; {outcome}")

    def _failed(self, program: str, status: int, text: str, doing: str, outcome: str, error: type[Exception]):
        return error(f"source {self.name!r}: {doing} failed ({program} exited with status {status}): "
                     f"{hint_for(text, program)}; {outcome}. {program} said: {text}")

    def query(self, sql: str, *, database: str | None = None, doing: str, error: type[Exception] = SourceError,
              outcome: str = "nothing was changed", timeout=_OPTION) -> list[str]:
        """The rows of ``sql`` (psql unaligned, one string per row)."""
        with scratch_file("dump") as out:
            self.run([self.options.psql, "-X", "-q", "-t", "-A", "-F", FIELD_SEPARATOR, "-v", "ON_ERROR_STOP=1",
                      "-c", sql],
                     database=database, doing=doing, error=error, outcome=outcome, stdout=out, timeout=timeout)
            out.seek(0)
            return [line for line in out.read().decode("utf-8", "replace").splitlines() if line]

    def connection_database(self, error: type[Exception] = SourceError, outcome: str = "nothing was changed") -> str:
        """The dsn's database, as the server names it (libpq's default is the user's name)."""
        return self.query("select current_database()", doing="connecting to the server", error=error,
                          outcome=outcome)[0]

    # -- backup ------------------------------------------------------------------------

    def check(self) -> None:
        self.connection_database(outcome="nothing was backed up")

    def databases(self) -> list[str]:
        """The databases to dump now; ``[]`` for a ``dsn:``-only source (its one database, as ``dump.pgcustom``)."""
        chosen = self.options.databases
        if chosen is None:
            return []
        if chosen != "all":
            return list(chosen)
        rows = self.query("select datname from pg_database where datallowconn "
                          "and datname not in ('template0', 'template1') order by datname",
                          doing="listing the databases", outcome="nothing was backed up")
        return [db for db in rows if db not in self.options.exclude_databases]

    def backup(self, writer) -> None:
        """Each dump is archived as pg_dump writes it (no temporary file)."""
        if self.options.with_globals:
            self.dump_globals(writer)
        databases = self.databases()
        if not databases:
            self.dump_database(None, writer, DUMP_NAME)
        for db in databases:
            before = writer.entries
            try:
                self.dump_database(db, writer, member_name(db))
            except SourceError:
                # with all, a database dropped since it was listed is gone, not lost (its failed
                # dump left nothing in the archive: it failed within its first part)
                if self.options.databases == "all" and writer.entries == before and self._gone(db):
                    writer.warn(member_name(db), f"database {db} was dropped while the backup ran; not backed up")
                    continue
                raise

    def _gone(self, database: str) -> bool:
        return not self.query(f"select 1 from pg_database where datname = {literal(database)}",
                              doing="listing the databases", outcome="nothing was backed up")

    def dump_database(self, database: str | None, writer, member: str) -> None:
        """pg_dump of one database (``None``: the dsn's) into the archive as ``member``."""
        opts = self.options
        args = [opts.pg_dump, "--format=custom"]
        args += [f"--schema={s}" for s in opts.schemas]
        args += [f"--exclude-table={t}" for t in opts.exclude_tables]
        args += opts.pg_dump_args
        what = f"database {database}" if database is not None else "the dsn's database"
        self.stream(writer, member, args, database=database, doing=f"dumping {what}")

    def dump_globals(self, writer) -> None:
        """pg_dumpall --globals-only (roles, tablespaces) into the archive as globals.sql."""
        self.stream(writer, GLOBALS_NAME, [self.options.pg_dumpall, "--globals-only"], database=None,
                    doing="dumping the roles and tablespaces (globals: true)")

    # -- restore -----------------------------------------------------------------------

    #: ``drill.checks.<source>``: ``restore`` (pg_restore into a scratch database, default true) and ``sql``
    #: (a list run in every database, or a mapping of database names to queries)
    drill_keys = ("restore", "sql", "sql_by_database")

    def drill(self, restored: Path, checks) -> list:
        """Each dump pg_restored into a scratch database on the server, the ``sql`` checks run there, then
        dropped (``eternia_backup_postgres.drill``); the live databases are not touched."""
        from .drill import run_drill

        return run_drill(self, restored, checks)

    def restore_plan(self, destination: Path | None, database: str | None = None):
        if destination is not None:
            return DirectorySwapPlan(destination, f"source {self.name!r}")
        if database is not None:
            chosen = self.options.databases
            if chosen == "all" or (isinstance(chosen, list) and len(chosen) != 1):
                raise RestoreError(
                    f"source {self.name!r} backs up {'all databases' if chosen == 'all' else 'several databases'}; "
                    f"--to-database {database} restores one: configure a source whose databases: lists that one "
                    "database (or restore --to DIR and pg_restore by hand); nothing was changed")
            if not database or "\0" in database or len(database.encode()) > NAMEDATALEN:
                raise RestoreError(f"--to-database {database!r} is not a PostgreSQL database name; nothing was changed")
        return PgRestorePlan(self, database)


class PgRestorePlan(RestorePlan):
    """Restore each dump into a scratch database, then rename every one into place in one transaction."""

    irreversible = True  # runs after every plan that can roll back

    def __init__(self, source: PostgresSource, to_database: str | None = None):
        self.source = source
        self.to_database = to_database
        self.staging_dir = Path("eternia-pg-not-prepared")
        into = f"database {to_database}" if to_database else "its databases"
        self.description = f"source {source.name!r}: pg_restore into {into} at {source.where}"
        self.label = f"source {source.name!r}"

    def prepare(self) -> None:
        self.staging_dir = scratch_dir("pg-restore")

    def _exists(self, database: str, maintenance: str | None = None) -> bool:
        return bool(self.source.query(f"select 1 from pg_database where datname = {literal(database)}",
                                      database=maintenance or self._maintenance({database}), doing="looking for the database",
                                      error=RestoreError))

    def replaces_existing(self) -> bool:
        if self.to_database is None:
            return True
        try:
            return self._exists(self.to_database)
        except RestoreError:
            return True  # ask: the commit will say what is wrong with the server

    def changes(self) -> list[str]:
        if self.to_database is not None:
            return [f"{self.label}: would restore the backup's database into database {self.to_database} at "
                    f"{self.source.where} (created, or replaced whole if it exists)"]
        globals_note = " after running globals.sql (restore_globals: true)" if self.source.options.restore_globals \
            else ""
        return [f"{self.label}: would replace each database of the backup at {self.source.where} with its dump "
                f"(restored into a new database, then renamed into place){globals_note}"]

    def _maintenance(self, busy: set[str]) -> str:
        """A database to connect to for CREATE/ALTER/DROP DATABASE: not one of ``busy`` (renamed or dropped)."""
        for candidate in (self._connection_db, "postgres", "template1"):
            if candidate and candidate not in busy:
                return candidate
        return "template1"

    _connection_db: str | None = None

    def _dumps(self) -> list[tuple[str, Path]]:
        """(database to restore into, dump) for every dump staged."""
        staged = sorted(p for p in self.staging_dir.iterdir() if p.name.endswith(DUMP_SUFFIX))
        if not staged:
            raise RestoreError(f"{self.label}: the backup holds no database dump; nothing was changed")
        if self.to_database is not None:
            if len(staged) != 1:
                raise RestoreError(f"{self.label}: --to-database {self.to_database} restores one database, but this "
                                   f"backup holds {len(staged)}; nothing was changed")
            return [(self.to_database, staged[0])]
        out = []
        for dump in staged:
            if dump.name == DUMP_NAME:  # a dsn:-only source: its dsn's database (which may have been dropped)
                out.append((dsn_database(self.source.dsn) or self.source.connection_database(RestoreError), dump))
            else:
                out.append((unquote(dump.name[:-len(DUMP_SUFFIX)]), dump))
        return out

    def commit(self) -> None:
        source = self.source
        self._connection_db = dsn_database(source.dsn)
        dumps = self._dumps()
        self._warn_versions(dumps)
        globals_sql = self.staging_dir / GLOBALS_NAME
        if source.options.restore_globals and self.to_database is None:
            if not globals_sql.is_file():
                raise RestoreError(f"{self.label}: restore_globals is true but the backup holds no {GLOBALS_NAME} "
                                   "(it was taken without globals: true); nothing was changed")
            self._restore_globals(globals_sql)
        scratches: list[tuple[str, str]] = []  # (live, scratch)
        try:
            for live, dump in dumps:
                scratch = derived_name(live, "restore")
                self._create_like(scratch, live)
                scratches.append((live, scratch))
                source.run([source.options.pg_restore, *PG_RESTORE_FLAGS, str(dump)], database=scratch, doing=f"restoring database {live} (into {scratch})",
                           error=RestoreError, outcome=f"database {live} was left as it was")
            self._swap(scratches)
        except BaseException:
            for _live, scratch in scratches:
                self._drop(scratch)
            raise

    def _warn_versions(self, dumps: list[tuple[str, Path]]) -> None:
        """One warning when the server's major version is not the one the dumps were taken from."""
        rows = self.source.query("show server_version_num", database=self._maintenance({db for db, _ in dumps}),
                                 doing="reading the server's version", error=RestoreError)
        num = int(rows[0])
        server = str(num // 10000) if num >= 100000 else f"{num // 10000}.{num // 100 % 100}"
        dumped = set()
        for _live, dump in dumps:
            with scratch_file("dump") as out:
                self.source.run([self.source.options.pg_restore, "--list", str(dump)], database="",
                                doing=f"reading {dump.name}", error=RestoreError, outcome="nothing was changed",
                                stdout=out)
                out.seek(0)
                match = re.search(rb"Dumped from database version: (\S+)", out.read())
            if match:
                dumped.add(major_of(match.group(1).decode()))
        others = sorted(dumped - {server})
        if others:
            log.warning("%s: the backup was dumped from PostgreSQL %s, the server is PostgreSQL %s; pg_restore "
                        "usually copes, but check the restored databases (extensions, changed defaults)",
                        self.label, " and ".join(others), server)

    def _restore_globals(self, path: Path) -> None:
        # Not ON_ERROR_STOP: roles that exist already ("role ... already exists") are the usual case and harmless;
        # the CREATE fails, the ALTER ROLE after it still sets the backed-up attributes.
        with scratch_file("dump") as out:
            _status, text = self.source.run([self.source.options.psql, "-X", "-q", "-f", str(path)],
                                            database=self._maintenance(set()), doing=f"running {GLOBALS_NAME}",
                                            error=RestoreError, outcome="nothing was changed", stdout=out)
        problems = [line for line in text.splitlines() if "ERROR" in line and "already exists" not in line]
        if problems:
            log.warning("%s: %d statement(s) of %s failed (roles and tablespaces may differ from the backup's): %s",
                        self.label, len(problems), GLOBALS_NAME, "; ".join(problems[:5]))

    def _create_like(self, scratch: str, live: str) -> None:
        """CREATE DATABASE scratch with the live database's owner, encoding and locale (if it exists)."""
        source = self.source
        maintenance = self._maintenance({live, scratch})
        rows = source.query(
            "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
            f"from pg_database where datname = {literal(live)}", database=maintenance,
            doing=f"reading database {live}'s settings", error=RestoreError)
        create = f"create database {ident(scratch)} template template0"
        if rows:
            owner, encoding, collate, ctype = rows[0].split(FIELD_SEPARATOR)
            create += (f" owner {ident(owner)} encoding {literal(encoding)} lc_collate {literal(collate)} "
                       f"lc_ctype {literal(ctype)}")
        source.query(create, database=maintenance, doing=f"creating the scratch database {scratch}",
                     error=RestoreError, outcome=f"database {live} was left as it was")
        if rows:
            source.query(COPY_DATABASE_PROPERTIES.replace(":live", literal(live)).replace(":scratch", literal(scratch)),
                         database=maintenance, doing=f"copying database {live}'s settings to {scratch}",
                         error=RestoreError, outcome=f"database {live} was left as it was")

    def _swap(self, scratches: list[tuple[str, str]]) -> None:
        """Every scratch database takes its live one's name in one transaction; the old ones are then dropped."""
        source = self.source
        busy = {name for pair in scratches for name in pair}
        maintenance = self._maintenance(busy)
        renames, old, closed = [], [], []
        try:
            for live, scratch in scratches:
                if self._exists(live, maintenance):
                    # No new sessions from here on: the rename fails while any is connected.
                    source.query(f"alter database {ident(live)} allow_connections false", database=maintenance,
                                 doing=f"closing database {live} to new sessions", error=RestoreError)
                    closed.append(live)
                    retired = derived_name(live, "old")
                    old.append(retired)
                    renames.append(f"alter database {ident(live)} rename to {ident(retired)};")
                renames.append(f"alter database {ident(scratch)} rename to {ident(live)};")
            if closed:
                rows = source.query(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname in "
                    f"({', '.join(literal(db) for db in closed)}) and pid <> pg_backend_pid()",
                    database=maintenance, doing="ending the sessions of the databases replaced", error=RestoreError)
                ended = int(rows[0]) if rows else 0
                if ended:
                    log.warning("%s: terminated %d session(s) connected to database(s) %s, which the restore "
                                "replaces", self.label, ended, ", ".join(closed))
            source.query("begin; " + " ".join(renames) + " commit;", database=maintenance,
                         doing="renaming the restored databases into place", error=RestoreError,
                         outcome="every database was left as it was")
        except BaseException:
            for live in closed:
                try:
                    source.query(f"alter database {ident(live)} allow_connections true", database=maintenance,
                                 doing=f"opening database {live} to sessions again", error=RestoreError)
                except RestoreError as exc:
                    log.error("%s; run: ALTER DATABASE %s ALLOW_CONNECTIONS true", exc, ident(live))
            raise
        for retired in old:
            self._drop(retired)

    def _drop(self, database: str) -> None:
        try:
            self.source.query(f"drop database if exists {ident(database)} with (force)",
                              database=self._maintenance({database}), doing=f"dropping database {database}",
                              error=RestoreError)
        except RestoreError as exc:
            log.warning("%s; drop database %s by hand", exc, database)

    def discard(self) -> None:
        if self.staging_dir.name != "eternia-pg-not-prepared":
            remove_tree(self.staging_dir)


@hookimpl
def eternia_register_sources(register):
    register(PostgresSource)
