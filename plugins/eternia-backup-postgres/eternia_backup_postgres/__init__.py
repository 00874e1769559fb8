"""Source ``postgres``: a PostgreSQL database through pg_dump / pg_restore.

The dump is pg_dump's custom format (consistent: one transaction snapshot),
archived as ``<source>/dump.pgcustom``. Restore stages it and runs
``pg_restore --clean --if-exists --no-owner --single-transaction`` on it, so a
failed restore leaves the database as it was. A password in a
``postgresql://`` URL DSN is moved into ``PGPASSWORD`` so it never shows in a
process listing; a key/value DSN is passed on as written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from eternia_backup.api import (
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
    stderr_tail,
)

DUMP_NAME = "dump.pgcustom"


class PostgresOptions(SourceOptions):
    dsn: str = Field(description="The database as a postgresql://user:password@host:port/db URL; the password "
                     "goes to the tools in PGPASSWORD.", examples=["postgresql://app:${PGPASSWORD}@127.0.0.1/appdb"])
    pg_dump: str = Field("pg_dump", description="The pg_dump program (a name on PATH or a path).",
                         examples=["/usr/lib/postgresql/16/bin/pg_dump"])
    pg_restore: str = Field("pg_restore", description="The pg_restore program (a name on PATH or a path).",
                            examples=["/usr/lib/postgresql/16/bin/pg_restore"])
    timeout: float | None = Field(None, description="Seconds pg_dump or pg_restore may run; default: as long as "
                                  "it takes.", examples=[3600])


def split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """(DSN without its password, environment carrying it) for URL-style DSNs."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or parts.password is None:
        return dsn, {}
    remember_secret(parts.password)
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": parts.password}


class PostgresSource(Source):
    type_name = "postgres"
    options_model = PostgresOptions
    restore_plan_types = (DirectorySwapPlan,)  # PgRestorePlan is one pg_restore transaction: nothing to resume

    def describe(self):
        return {"type": self.type_name, "name": self.name, "dsn": redact_text(split_password(self.options.dsn)[0])}

    def _run(self, args: list[str], *, what: str, error: type[Exception], stdout=None) -> None:
        """Run a client tool through the framework, so a stopping scheduler can cancel it; raise ``error`` on failure."""
        dsn, env = split_password(self.options.dsn)
        try:
            status, stderr = run_process([*args, f"--dbname={dsn}"], shell=False, stdout=stdout,
                                         timeout=self.options.timeout, env=child_env(env))
        except FileNotFoundError as exc:
            raise error(f"source {self.name!r}: {exc.filename} not found; install the PostgreSQL client tools") \
                from exc
        except subprocess.TimeoutExpired as exc:
            raise error(f"source {self.name!r}: {args[0]} ran longer than timeout: {self.options.timeout} s "
                        f"and was stopped{what}") from exc
        if status != 0:
            raise error(f"source {self.name!r}: {args[0]} exited with status {status}{what}: {stderr_tail(stderr)}")

    def backup(self, writer) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="eternia-pg-"))
        try:
            dump = workdir / DUMP_NAME
            started = time.time()
            with open(dump, "wb") as out:
                self._run([self.options.pg_dump, "--format=custom"], what="", error=SourceError, stdout=out)
            with open(dump, "rb") as f:
                writer.add_stream(DUMP_NAME, f, os.fstat(f.fileno()).st_size, mode=0o600, mtime=started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def restore_plan(self, destination: Path | None):
        if destination is not None:
            return DirectorySwapPlan(destination, f"source {self.name!r}")
        return PgRestorePlan(self)


class PgRestorePlan(RestorePlan):
    irreversible = True  # runs after every plan that can roll back

    def __init__(self, source: PostgresSource):
        self.source = source
        self.staging_dir = Path(tempfile.gettempdir()) / "eternia-pg-not-prepared"
        self.description = f"source {source.name!r}: pg_restore into {source.describe()['dsn']}"

    def prepare(self) -> None:
        self.staging_dir = Path(tempfile.mkdtemp(prefix="eternia-pg-restore-"))

    def replaces_existing(self) -> bool:
        return True

    def changes(self) -> list[str]:
        return [f"source {self.source.name!r}: would replace the database {self.source.describe()['dsn']} "
                "(pg_restore --clean)"]

    def commit(self) -> None:
        dump = self.staging_dir / DUMP_NAME
        if not dump.is_file():
            raise RestoreError(f"source {self.source.name!r}: the backup holds no {DUMP_NAME}")
        opts = self.source.options
        self.source._run([opts.pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction",
                          "--exit-on-error", str(dump)], what=" (the database was left as it was)", error=RestoreError)

    def discard(self) -> None:
        if self.staging_dir.name != "eternia-pg-not-prepared":
            remove_tree(self.staging_dir)


@hookimpl
def eternia_register_sources(register):
    register(PostgresSource)
