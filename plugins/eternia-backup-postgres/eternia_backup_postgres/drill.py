"""Restore drills of postgres sources: prove each dump restores, on the server itself.

Each dump of the restored backup is ``pg_restore``d (the plugin's own restore flags)
into a new scratch database ``eternia_drill_<db>_<random>`` on the source's server,
the ``sql`` checks run there, and the scratch database is dropped whatever happened
(a failed restore or query, a timeout, a stopping scheduler). The live databases
are only read (their encoding and locale). A scratch database of a drill that was
killed is recognized by its name prefix and its comment and dropped by the next drill.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote

from eternia_backup.api import DrillCheck, EterniaBackupError, sql_result_true

from . import (
    DUMP_NAME,
    DUMP_SUFFIX,
    FIELD_SEPARATOR,
    NAMEDATALEN,
    PG_RESTORE_FLAGS,
    dsn_database,
    ident,
    literal,
)

log = logging.getLogger("eternia_backup.source.postgres")

SCRATCH_PREFIX = "eternia_drill_"
#: what a drill writes as its scratch database's comment: who made it (host and process)
COMMENT_PREFIX = "eternia-backup drill scratch database of "
#: seconds a DROP DATABASE may take (it ends the sessions connected first)
DROP_TIMEOUT = 120


def scratch_name(database: str) -> str:
    """``eternia_drill_<database>_<random>``, cut to PostgreSQL's 63 bytes."""
    suffix = "_" + secrets.token_hex(4)
    head = (SCRATCH_PREFIX + database).encode()[:NAMEDATALEN - len(suffix)].decode(errors="ignore")
    return head + suffix


def dumps_of(restored: Path) -> list[tuple[str | None, Path]]:
    """(database, dump) of each dump the backup holds; ``None``: the dsn's database (``dump.pgcustom``)."""
    if not restored.is_dir():
        return []
    found = []
    for dump in sorted(restored.iterdir()):
        if dump.name == DUMP_NAME:
            found.append((None, dump))
        elif dump.name.endswith(DUMP_SUFFIX) and dump.is_file():
            found.append((unquote(dump.name[:-len(DUMP_SUFFIX)]), dump))
    return found


def run_drill(source, restored: Path, checks) -> list[DrillCheck]:
    """The checks of one postgres source's restored copy (see the module's docstring)."""
    dumps = dumps_of(restored)
    if not dumps:
        return [DrillCheck(source.name, "dumps", False, "the backup holds no database dump")]
    if checks.restore is False:  # only that each dump is whole enough for pg_restore to read its contents
        return [_list_check(source, db, dump) for db, dump in dumps]
    try:
        drop_leftovers(source)
    except EterniaBackupError as exc:
        log.warning("%s; leftover scratch databases (named %s*) were not dropped", exc, SCRATCH_PREFIX)
    found: list[DrillCheck] = []
    per_database = dict(checks.sql_by_database)
    drilled = set()
    for db, dump in dumps:
        if db is None:
            try:
                db = dsn_database(source.dsn) or source.connection_database(outcome="no database was changed")
            except EterniaBackupError as exc:
                found.append(DrillCheck(source.name, "pg_restore", False, str(exc)))
                continue
        drilled.add(db)
        found += _drill_database(source, db, dump, checks.sql + per_database.get(db, ()), checks.timeout)
    for db in per_database.keys() - drilled:
        found.append(DrillCheck(source.name, f"sql[{db}]", False, f"drill.checks.{source.name}.sql names database "
                                f"{db}, and the backup holds no dump of it (it has: {', '.join(sorted(drilled))})"))
    return found


def _list_check(source, db: str | None, dump: Path) -> DrillCheck:
    label = db or dsn_database(source.dsn) or "the dsn's database"
    name = f"pg_restore_list[{label}]"
    try:
        with tempfile.TemporaryFile() as out:
            source.run([source.options.pg_restore, "--list", str(dump)], database="",
                       doing=f"reading the dump of database {label}", error=EterniaBackupError,
                       outcome="no database was changed", stdout=out)
            entries = sum(1 for line in out.read().splitlines() if line and not line.startswith(b";"))
    except EterniaBackupError as exc:
        return DrillCheck(source.name, name, False, str(exc))
    return DrillCheck(source.name, name, True, f"pg_restore --list read {entries} entries (restore: false)")


def _drill_database(source, db: str, dump: Path, queries: tuple[str, ...], timeout: float) -> list[DrillCheck]:
    """Create the scratch database, pg_restore into it, run the queries there; always drop it."""
    scratch = scratch_name(db)
    outcome = f"database {db} was not touched"
    restore_name = f"pg_restore[{db}]"
    found: list[DrillCheck] = []
    created = False
    try:
        try:
            _create(source, scratch, db, outcome)
            created = True
            source.run([source.options.pg_restore, *PG_RESTORE_FLAGS, str(dump)], database=scratch,
                       doing=f"restoring database {db} into the scratch database {scratch}",
                       error=EterniaBackupError, outcome=outcome)
        except EterniaBackupError as exc:
            found.append(DrillCheck(source.name, restore_name, False, str(exc)))
            return found
        found.append(DrillCheck(source.name, restore_name, True,
                                f"{dump.name} restored into a scratch database with pg_restore"))
        for i, query in enumerate(queries):
            found.append(_sql_check(source, db, scratch, query, f"sql[{i}][{db}]", timeout))
        return found
    finally:
        if created or _exists(source, scratch):
            drop(source, scratch)


def _create(source, scratch: str, live: str, outcome: str) -> None:
    """CREATE DATABASE with the live database's encoding and locale (when it exists), marked as a drill's."""
    rows = source.query("select pg_encoding_to_char(encoding), datcollate, datctype from pg_database "
                        f"where datname = {literal(live)}", doing=f"reading database {live}'s encoding",
                        error=EterniaBackupError, outcome=outcome)
    create = f"create database {ident(scratch)} template template0"
    if rows:
        encoding, collate, ctype = rows[0].split(FIELD_SEPARATOR)
        create += f" encoding {literal(encoding)} lc_collate {literal(collate)} lc_ctype {literal(ctype)}"
    source.query(create, doing=f"creating the scratch database {scratch}", error=EterniaBackupError,
                 outcome=outcome)
    comment = f"{COMMENT_PREFIX}{socket.gethostname()} {os.getpid()}"
    source.query(f"comment on database {ident(scratch)} is {literal(comment)}",
                 doing=f"marking the scratch database {scratch}", error=EterniaBackupError, outcome=outcome)


def _sql_check(source, db: str, scratch: str, query: str, name: str, timeout: float) -> DrillCheck:
    """``query`` in the scratch database; its first value must be true (``sql_result_true``)."""
    try:
        rows = source.query(query, database=scratch, doing=f"running check {name} on the restored database {db}",
                            error=EterniaBackupError, outcome=f"database {db} was not touched", timeout=timeout)
    except EterniaBackupError as exc:
        return DrillCheck(source.name, name, False, f"database {db}: {query!r}: {exc}")
    value = rows[0].split(FIELD_SEPARATOR)[0] if rows else None
    return DrillCheck(source.name, name, sql_result_true(value),
                      f"database {db}: {query!r} returned {value!r}" + ("" if rows else " (no row)"))


def _exists(source, database: str) -> bool:
    try:
        return bool(_uncancellable(source.query, f"select 1 from pg_database where datname = {literal(database)}",
                                   doing="looking for the scratch database", error=EterniaBackupError,
                                   timeout=DROP_TIMEOUT))
    except EterniaBackupError:
        return False  # the server is unreachable: the next drill drops a leftover


def drop(source, scratch: str) -> None:
    """DROP the scratch database (ending its sessions), even while the scheduler stops; log a failure."""
    try:
        _uncancellable(source.query, f"drop database if exists {ident(scratch)} with (force)",
                       doing=f"dropping the scratch database {scratch}", error=EterniaBackupError,
                       timeout=DROP_TIMEOUT)
    except EterniaBackupError as exc:
        log.warning("%s; the next drill drops it (or: DROP DATABASE %s)", exc, ident(scratch))


def _uncancellable(func, *args, **kwargs):
    """``func`` outside the scheduler's cancel context: a stopping scheduler still gets its cleanup."""
    return contextvars.Context().run(func, *args, **kwargs)


def drop_leftovers(source) -> None:
    """Drop scratch databases of drills that died before dropping theirs.

    One made on this host whose process is gone is dropped; one of another host (or
    without the mark) only when no session is connected to it, so that a drill
    running elsewhere keeps its scratch database.
    """
    rows = source.query(
        "select d.datname, coalesce(shobj_description(d.oid, 'pg_database'), ''), "
        "(select count(*) from pg_stat_activity a where a.datname = d.datname) "
        f"from pg_database d where left(d.datname, {len(SCRATCH_PREFIX)}) = {literal(SCRATCH_PREFIX)}",
        doing="looking for scratch databases left by killed drills", error=EterniaBackupError)
    host = socket.gethostname()
    for row in rows:
        name, comment, sessions = row.split(FIELD_SEPARATOR)
        mine = comment.startswith(COMMENT_PREFIX + host + " ")
        if mine:
            pid = comment.rsplit(" ", 1)[-1]
            if pid.isdigit() and _alive(int(pid)):
                continue
        elif int(sessions or 0):
            continue
        log.warning("source %r: dropping the scratch database %s of a drill that did not finish", source.name, name)
        drop(source, name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process's other drill (a thread of the scheduler)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

