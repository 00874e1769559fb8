"""Source ``redis``: a Redis server through ``redis-cli --rdb``.

The backup is one RDB snapshot of the whole server (every database), taken the
way a replica takes it: the server forks and sends what it held at that moment,
so it is consistent. It is archived as ``<source>/dump.rdb``.

An in-place restore writes the RDB into the server's own ``dir`` as its
``dbfilename`` and makes the server load it: with ``restart_command`` (a server
managed by systemd and the like) by restarting it, else by ``DEBUG RELOAD
NOSAVE``. Before that it takes a fresh snapshot of what the server holds, which
is what ``rollback`` (and a failed commit) loads again.

The password goes to redis-cli in ``REDISCLI_AUTH``, never in argv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from eternia_backup.api import (
    CommandOutput,
    ConfigError,
    DirectorySwapPlan,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    child_env,
    describe_os_error,
    fsync_dir,
    hookimpl,
    remember_secret,
    remove_tree,
    run_process,
    scratch_dir,
    scratch_file,
    stderr_tail,
)

DUMP_NAME = "dump.rdb"
RDB_MAGIC = b"REDIS"
#: seconds a short command (PING, CONFIG GET) may take when no ``timeout`` is set
COMMAND_TIMEOUT = 30.0
#: seconds the server may take to answer again after ``restart_command`` when no ``timeout`` is set
RESTART_WAIT = 60.0


class RedisOptions(SourceOptions):
    host: str = Field("127.0.0.1", description="The server's host name or address.", examples=["127.0.0.1"])
    port: int = Field(6379, ge=1, le=65535, description="The server's TCP port.", examples=[6379])
    url: str | None = Field(None, description="The server as a redis://[user[:password]@]host[:port] URL, instead "
                            "of host and port; the password goes to redis-cli in REDISCLI_AUTH.",
                            examples=["redis://backup:${REDIS_PASSWORD}@127.0.0.1:6379"])
    user: str | None = Field(None, description="The ACL user (Redis 6 and later); default: the default user.",
                             examples=["backup"])
    password: str | None = Field(None, description="The password (AUTH); given to redis-cli in REDISCLI_AUTH, "
                                 "never on its command line.", examples=["${REDIS_PASSWORD}"])
    redis_cli: str = Field("redis-cli", description="The redis-cli program (a name on PATH or a path).",
                           examples=["/usr/local/bin/redis-cli"])
    timeout: float | None = Field(None, gt=0, description="Seconds the dump (or the restart_command) may run; "
                                  "default: as long as it takes.", examples=[600])
    restart_command: str | None = Field(None, description="Shell command that restarts the server, run by an "
                                        "in-place restore to load the restored RDB; default: DEBUG RELOAD NOSAVE "
                                        "(needs enable-debug-command).",
                                        examples=["systemctl restart redis-server"])

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme == "rediss":
            raise PydanticCustomError("redis_url", "a redis:// url; rediss:// (tls) is not supported yet")
        try:
            parts.port
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme != "redis" or not parts.hostname:
            raise PydanticCustomError("redis_url", "a url such as redis://127.0.0.1:6379")
        if parts.path.strip("/") not in ("", "0"):
            raise PydanticCustomError("redis_url", "a url without a database number: a backup holds every database")
        return url


class RedisSource(Source):
    type_name = "redis"
    options_model = RedisOptions
    restore_plan_types = (DirectorySwapPlan,)  # RedisRestorePlan keeps nothing a later run could finish

    def __init__(self, name, options, base_dir):
        super().__init__(name, options, base_dir)
        self.label = f"source {self.name!r}"
        opts = self.options
        self.host, self.port, self.user, self.password = opts.host, opts.port, opts.user, opts.password
        if opts.url is not None:
            parts = urlsplit(opts.url)
            for given, clash in ((opts.model_fields_set & {"host", "port"}, "host/port"),
                                 (parts.password is not None and opts.password is not None, "password"),
                                 (parts.username and opts.user is not None, "user")):
                if given:
                    raise ConfigError(f"{self.label}: give either url or {clash}, not both")
            self.host, self.port = parts.hostname, parts.port or 6379
            self.user = unquote(parts.username) if parts.username else opts.user
            self.password = unquote(parts.password) if parts.password is not None else opts.password
        if self.password:
            remember_secret(self.password)
        self.where = f"{self.host}:{self.port}" + (f" as user {self.user!r}" if self.user else "")

    def describe(self):
        details = {"type": self.type_name, "name": self.name, "host": self.host, "port": self.port}
        if self.user:
            details["user"] = self.user
        return details

    # -- redis-cli ------------------------------------------------------------------------

    def cli(self, args: list[str], *, error: type[Exception], doing: str,
            timeout: float | None = COMMAND_TIMEOUT) -> str:
        """Run redis-cli against the server; its output as text. Raise ``error`` naming what it was ``doing``."""
        user = ["--user", self.user] if self.user else []
        argv = [self.options.redis_cli, "-h", self.host, "-p", str(self.port), *user, *args]
        env = child_env({"REDISCLI_AUTH": self.password} if self.password else None)
        with scratch_file("dump") as out:
            try:
                status, stderr = run_process(argv, shell=False, stdout=out, timeout=timeout, env=env)
            except FileNotFoundError as exc:
                raise error(f"{self.label}: {self.options.redis_cli} not found; install the Redis command-line "
                            "tools (apt install redis-tools) or set redis_cli to its path") from exc
            except PermissionError as exc:
                raise error(f"{self.label}: {self.options.redis_cli} cannot be run (permission denied); "
                            "fix redis_cli") from exc
            except subprocess.TimeoutExpired as exc:
                raise error(f"{self.label}: redis-cli ran longer than {timeout} s while {doing} at {self.where} and "
                            "was stopped; raise timeout or check the server") from exc
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        if status != 0:
            raise error(f"{self.label}: {doing} at {self.where} failed: {self._explain(stderr + text.encode())}")
        return text

    def _explain(self, output: bytes) -> str:
        """What went wrong, and what to do, from redis-cli's messages."""
        text = output.decode("utf-8", "replace")
        if "Could not connect" in text or "Connection refused" in text or "Name or service not known" in text:
            return f"cannot connect ({stderr_tail(output)}); is the server running? check host and port"
        if "WRONGPASS" in text or "invalid password" in text:
            check = "password and user" if self.user else "password"
            return f"authentication failed (wrong user or password); check {check}"
        if "NOAUTH" in text:
            return "the server requires a password; set password (e.g. password: ${REDIS_PASSWORD})"
        if "NOPERM" in text:
            return f"permission denied by the server's ACL ({stderr_tail(output)}); grant the user that command"
        return stderr_tail(output)

    def check(self) -> None:
        reply = self.cli(["-e", "PING"], error=SourceError, doing="connecting").strip()
        if reply != "PONG":
            raise SourceError(f"{self.label}: the server at {self.where} answered PING with {reply[:200]!r}; "
                              "is it a Redis server?")

    def dump_rdb(self, path: Path, *, error: type[Exception] = SourceError) -> None:
        """Write a snapshot of the whole server into the new file ``path`` (0600), as a replica receives it."""
        # redis-cli opens the file without O_TRUNC and with mode 0644: create it empty and private first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.cli(["--rdb", str(path)], error=error, doing="taking a snapshot (redis-cli --rdb)",
                 timeout=self.options.timeout)
        with open(path, "rb") as f:
            if f.read(len(RDB_MAGIC)) != RDB_MAGIC:
                raise error(f"{self.label}: redis-cli --rdb from {self.where} wrote no RDB file; check that the "
                            "server is Redis and that the user may run SYNC and REPLCONF")

    def backup(self, writer) -> None:
        """Archive the snapshot as redis-cli receives it (``--rdb -``): no copy of it on disk."""
        started = time.time()
        user = ["--user", self.user] if self.user else []
        argv = [self.options.redis_cli, "-h", self.host, "-p", str(self.port), *user, "--rdb", "-"]
        env = child_env({"REDISCLI_AUTH": self.password} if self.password else None)
        doing = "taking a snapshot (redis-cli --rdb)"
        rdb = _RdbCheck(self.label, self.where)

        def check(status: int, stderr: bytes) -> None:  # before the last part is archived
            if status != 0:
                raise SourceError(f"{self.label}: {doing} at {self.where} failed: {self._explain(stderr)}")
            rdb.check()

        try:
            output = CommandOutput(argv, shell=False, env=env, timeout=self.options.timeout, on_end=check)
        except FileNotFoundError as exc:
            raise SourceError(f"{self.label}: {self.options.redis_cli} not found; install the Redis command-line "
                              "tools (apt install redis-tools) or set redis_cli to its path") from exc
        except PermissionError as exc:
            raise SourceError(f"{self.label}: {self.options.redis_cli} cannot be run (permission denied); "
                              "fix redis_cli") from exc
        rdb.stream = output
        try:
            with output:
                writer.add_stream(DUMP_NAME, rdb, None, mode=0o600, mtime=started)
                output.at_end()
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"{self.label}: redis-cli ran longer than {self.options.timeout} s while {doing} at "
                              f"{self.where} and was stopped; raise timeout or check the server") from exc

    def restore_plan(self, destination: Path | None):
        if destination is not None:
            return DirectorySwapPlan(destination, self.label)
        return RedisRestorePlan(self)


class _RdbCheck:
    """The snapshot stream, remembering its first bytes: it must start as an RDB file does."""

    def __init__(self, label: str, where: str):
        self.label, self.where = label, where
        self.stream = None
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if len(self.head) < len(RDB_MAGIC):
            self.head += data[: len(RDB_MAGIC) - len(self.head)]
        return data

    def at_end(self) -> None:
        self.stream.at_end()

    def check(self) -> None:
        if self.head != RDB_MAGIC:
            raise SourceError(f"{self.label}: redis-cli --rdb from {self.where} sent no RDB file; check that the "
                              "server is Redis and that the user may run SYNC and REPLCONF")


class RedisRestorePlan(RestorePlan):
    """Put the staged RDB where the running server keeps its own and make the server load it."""

    def __init__(self, source: RedisSource):
        self.source = source
        self.label = source.label
        self.staging_dir = Path("eternia-redis-not-prepared")
        self.workdir: Path | None = None  # in the server's dir: the snapshot kept for rollback
        self.target: Path | None = None  # the server's dir / dbfilename
        self.save: str | None = None  # the server's save points, off while we work
        self.previous: Path | None = None  # what the server held before the commit, as an RDB
        self.installed = False  # the target holds the backup's RDB now
        self.committed = False
        self.keep_workdir = False  # putting the previous data back failed: leave it for a person
        self.how = "restart_command" if source.options.restart_command else "DEBUG RELOAD NOSAVE"
        self.description = f"{self.label}: load the backup's RDB into the Redis server at {source.where}"

    def prepare(self) -> None:
        self.staging_dir = scratch_dir("redis-restore")

    def replaces_existing(self) -> bool:
        return True

    def changes(self) -> list[str]:
        return [f"{self.label}: would replace every key of the Redis server at {self.source.where} with the "
                f"backup's (the RDB goes into the server's dir, then {self.how})"]

    # -- talking to the server ------------------------------------------------------------------

    def _cli(self, *args: str, doing: str) -> str:
        return self.source.cli(["-e", *args], error=RestoreError, doing=doing)

    def _config(self) -> dict[str, str]:
        lines = self._cli("CONFIG", "GET", "dir", "dbfilename", "appendonly", "save",
                          doing="reading the server's dir (CONFIG GET)").splitlines()
        config = dict(zip(lines[0::2], lines[1::2]))
        if not config.get("dir") or not config.get("dbfilename"):
            raise RestoreError(f"{self.label}: the server at {self.source.where} did not say where it keeps its RDB "
                               "(CONFIG GET dir dbfilename); restore --to DIR and copy dump.rdb by hand")
        return config

    def _wait_for_background_save(self) -> None:
        """A BGSAVE running now would rename its file over the one we put in place."""
        deadline = time.monotonic() + (self.source.options.timeout or RESTART_WAIT)
        while "rdb_bgsave_in_progress:1" in self._cli("INFO", "persistence", doing="reading INFO persistence"):
            if time.monotonic() > deadline:
                raise RestoreError(f"{self.label}: the server at {self.source.where} is still saving in the "
                                   "background; try again when it is done")
            time.sleep(0.2)

    def _load(self) -> None:
        """Make the server read its dbfilename again."""
        command = self.source.options.restart_command
        if command is None:
            self._cli("DEBUG", "RELOAD", "NOSAVE", doing="loading the RDB (DEBUG RELOAD NOSAVE)")
            return
        try:
            status, stderr = run_process(command, shell=True, timeout=self.source.options.timeout, env=child_env())
        except subprocess.TimeoutExpired as exc:
            raise RestoreError(f"{self.label}: restart_command ran longer than {self.source.options.timeout} s "
                               "and was stopped") from exc
        if status != 0:
            raise RestoreError(f"{self.label}: restart_command exited with status {status}: {stderr_tail(stderr)}")
        deadline = time.monotonic() + (self.source.options.timeout or RESTART_WAIT)
        while True:  # until it answers, and has finished loading (LOADING is an error reply)
            try:
                if self._cli("PING", doing="waiting for the restarted server").strip() == "PONG":
                    return
            except RestoreError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    # -- the commit ----------------------------------------------------------------------------

    def commit(self) -> None:
        staged = self.staging_dir / DUMP_NAME
        if not staged.is_file():
            raise RestoreError(f"{self.label}: the backup holds no {DUMP_NAME}")
        config = self._config()
        if config.get("appendonly") == "yes":
            raise RestoreError(f"{self.label}: the server at {self.source.where} has appendonly yes: it would load "
                               "its AOF, not the restored RDB, when it starts; restore by hand (docs/databases.md) "
                               "or turn appendonly off first. Nothing was changed")
        if self.source.options.restart_command is None:
            try:
                self._cli("DEBUG", "HELP", doing="checking that DEBUG RELOAD may be used")
            except RestoreError as exc:
                raise RestoreError(
                    f"{exc}. Set restart_command (e.g. systemctl restart redis-server) for this source, or set "
                    "enable-debug-command local in the server's config (and restart it) so that DEBUG RELOAD "
                    "NOSAVE can load the RDB. Nothing was changed") from exc
        target = Path(config["dir"]) / config["dbfilename"]
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=".eternia-redis-", dir=config["dir"]))
        except OSError as exc:
            raise RestoreError(f"{self.label}: cannot write into the server's dir {config['dir']} "
                               f"({describe_os_error(exc)}); run the restore on the Redis host as a user that may "
                               "write there (often redis or root), or restore --to DIR and copy dump.rdb by hand. "
                               "Nothing was changed") from exc
        self.target = target
        try:
            self._cli("CONFIG", "SET", "save", "", doing="turning automatic saves off (CONFIG SET save)")
            self.save = config.get("save", "")
            self._wait_for_background_save()
            previous = self.workdir / "previous.rdb"
            self.source.dump_rdb(previous, error=RestoreError)  # before ours is in place: a SYNC may write there
            self.previous = previous
            self._install(staged)
            self._load()
        except BaseException as exc:
            try:
                self._put_back()
            except Exception as undo:
                self.keep_workdir = True
                raise RestoreError(f"{exc}; and putting the server's previous data back failed too ({undo}); it "
                                   f"is kept in {self.previous}") from exc
            if isinstance(exc, RestoreError):
                raise RestoreError(f"{exc}; the server's previous data was put back") from exc
            raise
        self._restore_save_config()
        self.committed = True

    def _install(self, rdb: Path) -> None:
        """Copy ``rdb`` beside the target, owned and permitted like the file it replaces, and rename it in."""
        new = self.workdir / "restored.rdb"
        with open(rdb, "rb") as src, open(new, "wb") as dst:  # workdir is 0700: private until the chmod
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        like = self.target if self.target.exists() else None
        st = os.stat(like) if like else os.stat(self.target.parent)
        os.chmod(new, (st.st_mode & 0o666) if like else 0o600)
        if os.geteuid() == 0:  # a server running as redis must be able to read it
            os.chown(new, st.st_uid, st.st_gid)
        os.replace(new, self.target)
        self.installed = True
        fsync_dir(self.target.parent)

    def _restore_save_config(self) -> None:
        if self.source.options.restart_command is None:  # a restarted server read its own config again
            self._cli("CONFIG", "SET", "save", self.save, doing="turning automatic saves back on (CONFIG SET save)")

    def _put_back(self) -> None:
        """Load the snapshot taken before the commit (if it got that far)."""
        if self.installed:
            self._install(self.previous)  # a copy: the snapshot stays in workdir until discard
            self._load()
            self.installed = False
        if self.save is not None:
            self._restore_save_config()

    def rollback(self) -> None:
        if self.committed:
            self.keep_workdir = True  # until the snapshot is loaded again
            self._cli("CONFIG", "SET", "save", "", doing="turning automatic saves off (CONFIG SET save)")
            self._put_back()
            self.committed = False
            self.keep_workdir = False

    def discard(self) -> None:
        if self.staging_dir.name != "eternia-redis-not-prepared":
            remove_tree(self.staging_dir)
        if self.workdir is not None and not self.keep_workdir:
            remove_tree(self.workdir)


@hookimpl
def eternia_register_sources(register):
    register(RedisSource)
