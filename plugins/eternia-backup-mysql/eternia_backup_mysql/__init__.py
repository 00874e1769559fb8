"""Source ``mysql``: MySQL or MariaDB databases through mariadb-dump / mysqldump.

Each database is dumped on its own (``--single-transaction --routines
--triggers --events --databases NAME``: one consistent snapshot of its InnoDB
tables) and archived as ``<source>/<database>.sql``, a file that ``mariadb <
db.sql`` loads by hand. Restore drops each database of the backup and loads
its dump again, so objects created after the backup are gone; with
``restore_to_database`` the one database of the backup goes to another name.

The password never reaches argv or the environment: the tools get it in an
option file they read through an inherited file descriptor
(``--defaults-extra-file=/dev/fd/N``), held in memory (memfd) where the system
has that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

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
    remember_secret,
    remove_tree,
    run_process,
    scratch_dir,
    scratch_file,
    stderr_tail,
)

#: left out of ``databases: all``; ``mysql`` and ``sys`` can still be named in a list
SYSTEM_DATABASES = ("information_schema", "performance_schema", "sys", "mysql")
#: views of the server's memory, not data: no dump can hold them
NOT_DUMPABLE = ("information_schema", "performance_schema")
DUMP_FLAGS = ("--single-transaction", "--routines", "--triggers", "--events")
DUMP_ATTEMPTS = 3
#: seconds the client waits for the server to answer a connection
CONNECT_TIMEOUT = 10

log = logging.getLogger("eternia_backup.source.mysql")  # under eternia_backup: masked like the framework's own


def _check_database_name(name: str) -> str:
    # The server refuses '/', '\\' and '.' in database names, so <name>.sql is one plain file name;
    # a leading '-' would be read by the tools as an option.
    if not name or len(name) > 64 or any(c in name for c in "/\\.\0") or name.startswith("-") or name != name.strip():
        raise ValueError(f"{name!r} is not a database name this source can back up")
    return name


class MysqlOptions(SourceOptions):
    host: str | None = Field(None, description="The server's host name or address; default: the tools' default "
                             "(the local socket).", examples=["127.0.0.1"])
    port: int | None = Field(None, ge=1, le=65535, json_schema_extra={"expected": "a TCP port, 1 to 65535"},
                             description="The server's TCP port; default 3306.",
                             examples=[3306])
    socket: str | None = Field(None, description="The server's Unix socket, instead of host and port.",
                               examples=["/run/mysqld/mysqld.sock"])
    user: str | None = Field(None, description="The user to connect as; default: the tools' default.",
                             examples=["backup"])
    password: str | None = Field(None, description="The user's password, best given as ${VARIABLE}; handed to "
                                 "the tools in an option file through a file descriptor, never on their command "
                                 "line.", examples=["${MYSQL_PASSWORD}"])
    option_file: str | None = Field(None, description="An existing my.cnf-style option file the tools read too "
                                    "(credentials, TLS settings); relative to the config file.",
                                    examples=["/etc/eternia/mysql-backup.cnf"])
    databases: list[str] | Literal["all"] = Field(
        json_schema_extra={"expected": "a list of database names, or all"}, description="The databases to back up, or `all`: every database the user sees except information_schema, "
        "performance_schema, sys and mysql (name those in a list to include them).",
        examples=[["shop", "wiki"]])
    dump_args: list[str] = Field(default_factory=list, description="More arguments for mariadb-dump / mysqldump "
                                 "(never a password).", examples=[["--hex-blob"]])
    mysqldump: str | None = Field(None, description="The dump program (a name on PATH or a path); default: "
                                  "mariadb-dump if it is on PATH, else mysqldump.", examples=["/usr/bin/mysqldump"])
    mysql: str | None = Field(None, description="The client program that lists and restores databases; default: "
                              "mariadb if it is on PATH, else mysql.", examples=["/usr/bin/mysql"])
    timeout: float | None = Field(None, gt=0, json_schema_extra={"expected": "a number of seconds > 0"},
                                  description="Seconds each dump or restore command may run; "
                                  "default: as long as it takes.", examples=[3600])
    restore_to_database: str | None = Field(
        None, description="Restore in place into this database instead of the one backed up (which is left "
        "alone); needs `databases` to name exactly one database.", examples=["shop_restored"])

    @field_validator("databases", mode="wrap")
    @classmethod
    def _databases(cls, value, handler):
        try:
            value = handler(value)
        except ValidationError:  # one message rather than one per member of the union
            raise ValueError("a list of database names, or all") from None
        if value == "all":
            return value
        if not value:
            raise ValueError("name at least one database, or write all")
        for name in value:
            _check_database_name(name)
            if name in NOT_DUMPABLE:
                raise ValueError(f"{name} is a view of the server's state, not data, and cannot be backed up")
        if len(set(value)) != len(value):
            raise ValueError("a database is named twice")
        return value

    @field_validator("dump_args")
    @classmethod
    def _no_password_in_args(cls, value):
        for arg in value:
            name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
            if (name is not None and len(name) >= 3 and "password".startswith(name)) or \
                    (name is None and arg.startswith("-p")):
                raise ValueError("a password on the command line is visible to every user of the machine; "
                                 "use the password or option_file key")
        return value

    @field_validator("restore_to_database")
    @classmethod
    def _restore_name(cls, value, info: ValidationInfo):
        if value is None:
            return value
        databases = info.data.get("databases")
        if databases is not None and (databases == "all" or len(databases) != 1):
            raise ValueError("restore_to_database needs databases to name exactly one database")
        return _check_database_name(value)


def quote_name(name: str) -> str:
    """A database name as an SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def _option_value(value: str) -> str:
    """A value for a my.cnf line, quoted so that any character survives."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") \
        .replace("\t", "\\t")
    return f'"{escaped}"'


class MysqlSource(Source):
    type_name = "mysql"
    options_model = MysqlOptions
    restore_plan_types = (DirectorySwapPlan,)  # MysqlRestorePlan pipes into the server: nothing to resume
    restores_to_database = True  # restore_plan(None, database=NAME): restore --source S --to-database NAME

    def __init__(self, name, options, base_dir):
        super().__init__(name, options, base_dir)
        if options.password:
            remember_secret(options.password)
        self.dumped: list[str] | None = None  # the databases the last backup() wrote

    # -- what and where ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The server, for messages."""
        opts = self.options
        if opts.socket:
            return f"socket {opts.socket}"
        return f"{opts.host or 'localhost'}:{opts.port or 3306}"

    @property
    def option_file(self) -> Path | None:
        return self.base_dir / Path(self.options.option_file).expanduser() if self.options.option_file else None

    def describe(self):
        opts = self.options
        details = {"type": self.type_name, "name": self.name}
        details.update({k: v for k, v in (("host", opts.host), ("port", opts.port), ("socket", opts.socket),
                                          ("user", opts.user)) if v is not None})
        details["databases"] = self.dumped if self.dumped is not None else opts.databases
        return details

    def _program(self, key: str) -> str:
        configured = getattr(self.options, key)
        if configured:
            return configured
        preferred, fallback = {"mysqldump": ("mariadb-dump", "mysqldump"), "mysql": ("mariadb", "mysql")}[key]
        return preferred if shutil.which(preferred) else fallback

    # -- running the tools -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _credentials(self) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """(leading arguments, file descriptors to pass) that give a tool the password and option_file."""
        lines = []
        if self.option_file is not None:
            lines.append(f"!include {self.option_file.resolve()}")
        if self.options.password:
            lines += ["[client]", f"password={_option_value(self.options.password)}"]
        if not lines:
            yield [], ()
            return
        data = ("\n".join(lines) + "\n").encode()
        if hasattr(os, "memfd_create"):
            # In memory, readable only through this descriptor: the tools open /dev/fd/N (more than
            # once: mariadb-dump reads its option files twice, so a pipe would not do).
            fd = os.memfd_create("eternia-mysql-options", os.MFD_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)  # a memfd starts 0777, and the tools ignore a world-writable option file
                _write_all(fd, data)
                yield [f"--defaults-extra-file=/dev/fd/{fd}"], (fd,)
            finally:
                os.close(fd)
            return
        workdir = str(scratch_dir("mysql-client"))  # 0700; elsewhere than Linux
        try:
            path = os.path.join(workdir, "client.cnf")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            yield [f"--defaults-extra-file={path}"], ()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _connection_args(self) -> list[str]:
        opts = self.options
        return [f"--{key}={value}" for key, value in (("host", opts.host), ("port", opts.port),
                                                        ("socket", opts.socket), ("user", opts.user))
                if value is not None]

    def _run(self, key: str, args: list[str], *, error: type[Exception], what: str, stdin=None,
             stdout=None) -> bytes:
        """Run the ``mysqldump`` or ``mysql`` program with the credentials; raise ``error`` saying what went wrong."""
        program = self._program(key)
        if self.option_file is not None and not self.option_file.is_file():
            raise error(f"source {self.name!r}: option_file {self.option_file} does not exist; fix its path")
        with self._credentials() as (leading, fds):
            try:
                # the client (not mariadb-dump, which has no such option) gives up on a server that takes
                # the connection and never answers; every backup and restore asks it first
                timeout = [f"--connect-timeout={CONNECT_TIMEOUT}"] if key == "mysql" else []
                status, stderr = run_process([program, *leading, *self._connection_args(), *timeout, *args], shell=False,
                                             stdin=stdin, stdout=stdout, timeout=self.options.timeout,
                                             env=child_env(), pass_fds=fds)
            except FileNotFoundError as exc:
                raise error(f"source {self.name!r}: the program {program!r} was not found{what}; install the "
                            f"MariaDB or MySQL client tools (apt install mariadb-client) or set {key}: to its "
                            "path") from exc
            except PermissionError as exc:
                raise error(f"source {self.name!r}: the program {program!r} cannot be run{what}: permission "
                            f"denied; fix {key}:") from exc
            except subprocess.TimeoutExpired as exc:
                raise error(f"source {self.name!r}: {program} ran longer than timeout: {self.options.timeout} s "
                            f"and was stopped{what}") from exc
        if status != 0:
            raise self._error(program, status, stderr, error, what)
        return stderr

    def _error(self, program: str, status: int, stderr: bytes, error: type[Exception], what: str) -> Exception:
        """The exception for a tool that failed, with the server's error code as ``server_error``."""
        tail = stderr_tail(stderr)
        # "ERROR 1045 (28000): ...", "Got error: 1045: ...", "Error 1412: ...", "... (1142)"
        found = re.search(r"\berror:? (\d{4})\b", tail, re.IGNORECASE) or re.search(r"\((\d{4})\)$", tail)
        failure = error(self._failure(program, status, tail, found.group(1) if found else None, what))
        failure.server_error = found.group(1) if found else None  # type: ignore[attr-defined]
        return failure

    def _failure(self, program: str, status: int, tail: str, code: str | None, what: str) -> str:
        """The message for a failed tool: the problem by the server's error code, and what to do."""
        head = f"source {self.name!r}: "
        if code in ("2002", "2003", "2005", "2006", "2013"):
            return (f"{head}cannot connect to the MySQL/MariaDB server at {self.where}{what}: {tail}; check that "
                    "it is running and the host, port and socket options")
        if code == "1045":
            return (f"{head}authentication failed for user {self.options.user or '(default)'} at {self.where}"
                    f"{what}: {tail}; check the user, password and option_file options")
        if code == "1049":
            return f"{head}the database does not exist at {self.where}{what}: {tail}; check the databases option"
        if code == "1044":
            return (f"{head}user {self.options.user or '(default)'} may not use the database at {self.where}"
                    f"{what}: {tail}; grant it the privileges a dump needs, or check the databases option")
        return f"{head}{program} exited with status {status}{what}: {tail}"

    def server_databases(self, error: type[Exception] = SourceError) -> list[str]:
        """The databases the user sees on the server (also proves the client, the server and the login work)."""
        with scratch_file("dump") as out:
            self._run("mysql", ["--batch", "--skip-column-names", "--raw", "--execute=SHOW DATABASES"],
                      error=error, what=" (listing the databases)", stdout=out)
            out.seek(0)
            return [line for line in out.read().decode("utf-8", "replace").splitlines() if line]

    def databases(self) -> list[str]:
        """The databases a backup dumps now; a configured one that is missing is a ``SourceError``."""
        seen = self.server_databases()
        if self.options.databases == "all":
            return [db for db in seen if db not in SYSTEM_DATABASES]
        missing = [db for db in self.options.databases if db not in seen]
        if missing:
            raise SourceError(f"source {self.name!r}: database(s) {', '.join(missing)} do not exist at {self.where} "
                              f"(or user {self.options.user or '(default)'} may not see them); create them or fix "
                              "the databases option")
        return list(self.options.databases)

    # -- backup ---------------------------------------------------------------------------------

    def check(self):
        program = self._program("mysqldump")
        if shutil.which(program) is None:
            raise SourceError(f"source {self.name!r}: the program {program!r} was not found; install the MariaDB "
                              "or MySQL client tools (apt install mariadb-client) or set mysqldump: to its path")
        self.databases()

    def backup(self, writer) -> None:
        databases = self.databases()
        if not databases:
            writer.warn("", f"no databases to back up at {self.where} (all leaves out {', '.join(SYSTEM_DATABASES)})")
        dumped = []
        for database in databases:
            try:
                self.dump(database, writer)
            except SourceError as exc:
                # with all, a database dropped since it was listed is gone, not lost
                if self.options.databases != "all" or getattr(exc, "server_error", None) != "1049":
                    raise
                writer.warn(f"{database}.sql", "the database was dropped while the backup ran; not backed up")
                continue
            dumped.append(database)
        self.dumped = dumped

    def dump(self, database: str, writer) -> None:
        """Dump one database into ``writer`` as ``<database>.sql``, archived as mysqldump writes it (no copy on disk).

        The framework holds the first 16 MiB in memory and asks whether the dump succeeded before it
        archives the last part, so a dump that fails early (a table altered during it: error 1412,
        a database dropped meanwhile: 1049) has left nothing in the archive and is retried or skipped;
        a longer one that fails fails the backup (the next scheduled attempt dumps it again).
        """
        program = self._program("mysqldump")
        what = f" (dumping database {database})"
        if self.option_file is not None and not self.option_file.is_file():
            raise SourceError(f"source {self.name!r}: option_file {self.option_file} does not exist; fix its path")
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            started, before = time.time(), writer.entries

            def check(status: int, stderr: bytes) -> None:
                if status != 0:
                    raise self._error(program, status, stderr, SourceError, what)

            with self._credentials() as (leading, fds):
                args = [program, *leading, *self._connection_args(), *DUMP_FLAGS, *self.options.dump_args,
                        "--databases", database]
                try:
                    output = CommandOutput(args, shell=False, env=child_env(), timeout=self.options.timeout,
                                           pass_fds=fds, on_end=check)
                except FileNotFoundError as exc:
                    raise SourceError(f"source {self.name!r}: the program {program!r} was not found{what}; install "
                                      "the MariaDB or MySQL client tools (apt install mariadb-client) or set "
                                      "mysqldump: to its path") from exc
                try:
                    with output:
                        writer.add_stream(f"{database}.sql", output, None, mode=0o600, mtime=started)
                        output.at_end()
                    return
                except subprocess.TimeoutExpired as exc:
                    raise SourceError(f"source {self.name!r}: {program} ran longer than timeout: "
                                      f"{self.options.timeout} s and was stopped{what}") from exc
                except SourceError as exc:
                    # 1412: a table was created or altered after the snapshot began (a migration, say),
                    # and the server asks for the transaction to be retried
                    retry = (getattr(exc, "server_error", None) == "1412" and attempt < DUMP_ATTEMPTS
                             and writer.entries == before)
                    if not retry:
                        raise
            log.info("source %r: a table of %s changed during its dump; dumping it again", self.name, database)
            time.sleep(attempt)

    # -- restore --------------------------------------------------------------------------------

    def restore_plan(self, destination: Path | None, database: str | None = None):
        """``database`` (``restore --to-database NAME``) wins over the ``restore_to_database`` option."""
        if destination is not None:
            return DirectorySwapPlan(destination, f"source {self.name!r}")
        return MysqlRestorePlan(self, to_database=database or self.options.restore_to_database)

    def load(self, dump: Path, database: str, target: str) -> None:
        """Drop ``target`` and load the dump of ``database`` into it, in one client session."""
        read_end, write_end = os.pipe()
        failed: list[BaseException] = []

        def feed() -> None:
            try:
                with open(write_end, "wb") as sink, open(dump, "rb") as f:
                    _feed(f, sink, database, target)
            except BrokenPipeError:
                pass  # the client stopped; its exit status says why
            except BaseException as exc:
                failed.append(exc)

        feeder = threading.Thread(target=feed, name=f"eternia-mysql-restore-{target}", daemon=True)
        feeder.start()
        try:
            self._run("mysql", ["--batch"], error=RestoreError, what=f" (loading database {target})",
                      stdin=read_end)
        finally:
            os.close(read_end)
            feeder.join()
        if failed:
            raise RestoreError(f"source {self.name!r}: reading the staged dump of {database} failed: "
                               f"{failed[0]}") from failed[0]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _statement_patterns(database: str) -> tuple[re.Pattern, re.Pattern]:
    name = re.escape(quote_name(database).encode())
    create = re.compile(rb"^CREATE DATABASE (?:/\*!32312 IF NOT EXISTS\*/ )?" + name)
    renamed = re.compile(rb"^(?:USE |(?:/\*!\d+ )?ALTER DATABASE )" + name)
    return create, renamed


def _feed(dump: BinaryIO, sink: BinaryIO, database: str, target: str) -> None:
    """The dump of ``database`` as statements that replace ``target``.

    A ``DROP DATABASE`` goes before the dump's ``CREATE DATABASE``; for another
    target the dump's statements that name the database (CREATE DATABASE, USE,
    ALTER DATABASE: mysqldump writes each on a line of its own) name the target.
    """
    create, renamed = _statement_patterns(database)
    old, new = quote_name(database).encode(), quote_name(target).encode()
    for line in dump:
        if create.match(line):
            sink.write(f"DROP DATABASE IF EXISTS {quote_name(target)};\n".encode())
            sink.write(line.replace(old, new, 1))
            break
        sink.write(line)
    if target == database:
        shutil.copyfileobj(dump, sink, 1 << 20)
        return
    for line in dump:
        sink.write(line.replace(old, new, 1) if renamed.match(line) else line)


def check_dump(dump: Path, database: str) -> str | None:
    """Why the staged dump cannot be loaded safely, or None: it must create its database and be complete."""
    create, _ = _statement_patterns(database)
    with open(dump, "rb") as f:
        head = f.read(1 << 16)
        if not any(create.match(line) for line in head.splitlines()):
            return (f"the dump of {database} holds no CREATE DATABASE statement near its start (was it made with "
                    "--no-create-db?); restore it by hand with --to DIR")
        if b"\n-- " in head or head.startswith(b"-- "):  # with comments, mysqldump ends with this line
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            if b"-- Dump completed" not in f.read():
                return f"the dump of {database} is incomplete (no 'Dump completed' line at its end)"
    return None


class MysqlRestorePlan(RestorePlan):
    """Drop each database of the backup and load its dump; or the one database into ``to_database``."""

    irreversible = True  # runs after every plan that can roll back

    def __init__(self, source: MysqlSource, to_database: str | None = None):
        self.source = source
        if to_database is not None:
            try:
                _check_database_name(to_database)
            except ValueError as exc:
                raise RestoreError(f"source {source.name!r}: {exc}") from None
        self.to_database = to_database
        self.staging_dir = Path("eternia-mysql-not-prepared")
        into = f"database {to_database}" if to_database else "its databases"
        self.description = f"source {source.name!r}: load the dumps into {into} at {source.where}"

    def prepare(self) -> None:
        # The client, the server and the login are checked before anything is staged or changed.
        self.source.server_databases(error=RestoreError)
        self.staging_dir = scratch_dir("mysql-restore")

    def replaces_existing(self) -> bool:
        return True

    def changes(self) -> list[str]:
        label = f"source {self.source.name!r}"
        configured = self.source.options.databases
        named = "the databases in the backup" if configured == "all" else ", ".join(configured)
        if self.to_database:
            return [f"{label}: would drop and recreate database {self.to_database} at {self.source.where} and "
                    f"load the backup of {named} into it"]
        return [f"{label}: would drop and recreate {named} at {self.source.where} and load the backup "
                "(objects created since the backup are lost)"]

    def commit(self) -> None:
        label = f"source {self.source.name!r}"
        dumps = sorted(self.staging_dir.glob("*.sql"))
        if not dumps:
            raise RestoreError(f"{label}: the backup holds no database dump (<database>.sql); nothing was changed")
        if self.to_database and len(dumps) != 1:
            raise RestoreError(f"{label}: restore_to_database takes one database, the backup holds {len(dumps)} "
                               f"({', '.join(d.stem for d in dumps)}); nothing was changed")
        for dump in dumps:
            problem = check_dump(dump, dump.stem)
            if problem:
                raise RestoreError(f"{label}: {problem}; nothing was changed")
        done: list[str] = []
        for dump in dumps:
            target = self.to_database or dump.stem
            try:
                self.source.load(dump, dump.stem, target)
            except RestoreError as exc:
                before = f"; already restored: {', '.join(done)}" if done else ""
                raise RestoreError(f"{exc} (database {target} may be incomplete now; restore it again{before})") \
                    from exc
            done.append(target)

    def discard(self) -> None:
        if self.staging_dir.name != "eternia-mysql-not-prepared":
            remove_tree(self.staging_dir)


@hookimpl
def eternia_register_sources(register):
    register(MysqlSource)
