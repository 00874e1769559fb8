"""The first-party redis plugin against real redis-server processes of its own.

Every test starts its own server on a free loopback port, with its files in the
test's tmp_path, and kills it at the end; the machine's shared Redis is never
touched. The plugin is loaded through its entry point like any third-party plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from eternia_backup.testing import SourceConformance

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None,
                       reason="redis-server and redis-cli are not installed (apt install redis-server)"),
    # every test starts its own server and most take a snapshot through replication: about 3 s each,
    # 75 s of the fast suite's work; `make test` (and CI) runs them
    pytest.mark.slow,
]

PASSWORD = "redis-Secret-7qXv2"


# -- a small RESP client, so that the tests do not depend on redis-cli ------------------------------


class ReplyError(Exception):
    """An error reply of the server."""


class Client:
    def __init__(self, port: int, password: str | None = None, user: str | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        if password is not None:
            self.call("AUTH", *([user] if user else []), password)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, *args) -> None:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))

    def call(self, *args):
        self.send(*args)
        return self.read()

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"unexpected reply {line!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of this test: 127.0.0.1 only, its dir, pidfile and log in ``root``."""

    def __init__(self, root: Path, *, password: str | None = None, debug: bool = True, save: str = "",
                 extra: dict[str, str] | None = None):
        self.root = root
        self.port = free_port()
        self.password = password
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pidfile = root / "redis.pid"
        self.conf = root / "redis.conf"
        settings = {"port": "", "bind": "127.0.0.1", "dir": str(self.dir), "dbfilename": "dump.rdb",
                    "save": f'"{save}"', "appendonly": "no", "daemonize": "yes", "pidfile": str(self.pidfile),
                    "logfile": str(root / "redis.log"), "enable-debug-command": "local" if debug else "no",
                    # the default 5 s wait for more replicas before each snapshot; one test keeps it
                    "repl-diskless-sync-delay": "0"}
        if password:
            settings["requirepass"] = password
        settings.update(extra or {})
        self.settings = settings
        self.start()

    def start(self) -> None:
        for _ in range(5):
            self.settings["port"] = str(self.port)
            self.conf.write_text("".join(f"{k} {v}\n" for k, v in self.settings.items()))
            subprocess.run([REDIS_SERVER, str(self.conf)], check=True, timeout=30)
            if self.wait_ready():
                return
            self.port = free_port()  # another process took it between free_port() and the bind
        raise RuntimeError(f"redis-server did not start; see {self.settings['logfile']}")

    def wait_ready(self) -> bool:
        """True once our server answers; False when its port was taken (it writes its pid file after binding)."""
        log = Path(self.settings["logfile"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pid() is not None:
                try:
                    c = self.client()
                    try:
                        if c.call("PING") == "PONG":
                            return True
                    finally:
                        c.close()
                except (OSError, ReplyError):
                    pass
            elif log.exists() and f"Failed listening on port {self.port} " in log.read_text(errors="replace"):
                return False
            time.sleep(0.05)
        return False

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"redis-server" in cmdline else None  # ours: the pid file lives in our tmp_path

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.02)

    @property
    def restart_command(self) -> str:
        """What a service manager does: stop it gracefully (SIGTERM), then start it again."""
        return (f"pid=$(cat '{self.pidfile}'); kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done; "
                f"'{REDIS_SERVER}' '{self.conf}'")

    def client(self) -> Client:
        return Client(self.port, self.password)

    def call(self, *args):
        c = self.client()
        try:
            return c.call(*args)
        finally:
            c.close()

    def section(self, name: str = "cache", **options) -> dict:
        section = {"type": "redis", "name": name, "host": "127.0.0.1", "port": self.port}
        return {**section, **options}


def snapshot(server_or_client) -> dict:
    """Every key of every database: (type, value, whether it has a TTL)."""
    c = server_or_client.client() if isinstance(server_or_client, RedisServer) else server_or_client
    try:
        state = {}
        keyspace = c.call("INFO", "keyspace")
        dbs = [int(line.split(":")[0][2:]) for line in keyspace.splitlines() if line.startswith("db")]
        for db in dbs:
            c.call("SELECT", db)
            for key in c.call("KEYS", "*"):
                kind = c.call("TYPE", key)
                value = {"string": lambda: c.call("GET", key),
                         "hash": lambda: sorted(c.call("HGETALL", key)),
                         "list": lambda: c.call("LRANGE", key, 0, -1),
                         "set": lambda: sorted(c.call("SMEMBERS", key)),
                         "zset": lambda: c.call("ZRANGE", key, 0, -1, "WITHSCORES")}[kind]()
                state[(db, key)] = (kind, value, c.call("PTTL", key) > 0)
        return state
    finally:
        if c is not server_or_client:
            c.close()


def fill(server: RedisServer) -> None:
    """Each type of value, some with a TTL, in two databases."""
    c = server.client()
    try:
        for i in range(50):
            c.call("SET", f"str:{i}", f"value {i} " * (i % 5 + 1))
        c.call("SET", "session:1", "expires", "EX", 86400)
        c.call("HSET", "user:1", "name", "Ada", "lang", "en", "score", "42")
        c.call("EXPIRE", "user:1", 7200)
        c.call("RPUSH", "queue", *[f"job-{i}" for i in range(20)])
        c.call("SADD", "tags", "a", "b", "c", "Grüße")
        c.call("ZADD", "board", 1, "one", 2.5, "two-and-a-half", -3, "minus-three")
        c.call("PEXPIRE", "board", 3_600_000)
        c.call("MSET", "pair:a", 0, "pair:b", 0, "total:x", 500, "total:y", 500)
        c.call("SELECT", 3)
        c.call("SET", "other-db", "kept")
    finally:
        c.close()


def change(server: RedisServer) -> None:
    """Changes after the backup: a restore must undo every one."""
    c = server.client()
    try:
        c.call("SET", "after-backup", "must be gone")
        c.call("DEL", "str:1", "queue")
        c.call("HSET", "user:1", "name", "Bob")
        c.call("PERSIST", "session:1")
        c.call("ZADD", "board", 9, "late")
        c.call("SELECT", 3)
        c.call("FLUSHDB")
    finally:
        c.close()


def read_rdb(rdb: Path, root: Path) -> dict:
    """The keys an RDB file holds, read by a scratch server of its own."""
    scratch = RedisServer(root, debug=False, extra={"dbfilename": rdb.name, "dir": str(rdb.parent)})
    try:
        return snapshot(scratch)
    finally:
        scratch.stop()


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis")
    yield s
    s.stop()


def write_config(directory: Path, *sources: dict, **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": {"storage_path": "backups", "sources": list(sources), **extra}}))
    return path


def manifests(directory: Path) -> list[Path]:
    backups = directory / "backups"
    return sorted(backups.glob("*.json")) if backups.exists() else []


def leftovers(server: RedisServer) -> list[str]:
    return sorted(p.name for p in server.dir.iterdir() if p.name.startswith(".eternia"))


# -- round trips ------------------------------------------------------------------------------------


@pytest.fixture
def default_server(tmp_path):
    """A server at Redis's defaults for snapshots (a replica's snapshot waits repl-diskless-sync-delay: 5 s)."""
    s = RedisServer(tmp_path / "redis", save="3600 1 300 100", extra={"repl-diskless-sync-delay": "5"})
    yield s
    s.stop()


def test_round_trip_in_place_keeps_types_and_ttls_and_drops_later_keys(default_server, cli, tmp_path):
    server = default_server
    fill(server)
    original = snapshot(server)
    config = write_config(tmp_path / "app", server.section())
    assert "eternia-backup-redis" in cli("plugins").stdout
    created = cli("create", config=config)
    assert created.returncode == 0, created.stderr
    change(server)
    assert snapshot(server) != original

    restored = cli("restore", "latest", "--yes", config=config)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(server) == original
    assert server.call("EXISTS", "after-backup") == 0
    assert 0 < server.call("TTL", "session:1") <= 86400 and server.call("TTL", "session:1") > 86400 - 120
    assert 3_600_000 - 120_000 < server.call("PTTL", "board") <= 3_600_000
    assert server.call("CONFIG", "GET", "save") == ["save", "3600 1 300 100"]  # off while restoring, then back
    assert leftovers(server) == []

    to = cli("restore", "latest", "--to", str(tmp_path / "out"), "--yes", config=config)
    assert to.returncode == 0, to.stderr
    rdb = tmp_path / "out" / "cache" / "dump.rdb"
    assert rdb.read_bytes().startswith(b"REDIS")
    assert read_rdb(rdb, tmp_path / "scratch") == original


def test_restart_command_restores_a_server_whose_shutdown_would_save(tmp_path, cli):
    # save points: a graceful shutdown writes the RDB; the restore must keep it from overwriting ours
    server = RedisServer(tmp_path / "redis", debug=False, save="3600 1")
    try:
        fill(server)
        original = snapshot(server)
        config = write_config(tmp_path / "app", server.section(restart_command=server.restart_command))
        assert cli("create", config=config).returncode == 0
        change(server)
        before = server.pid()
        restored = cli("restore", "latest", "--yes", config=config)
        assert restored.returncode == 0, restored.stderr
        assert server.pid() != before  # it was restarted
        assert snapshot(server) == original
        assert server.call("EXISTS", "after-backup") == 0
        assert server.call("CONFIG", "GET", "save") == ["save", "3600 1"]  # from its config file
        assert leftovers(server) == []
    finally:
        server.stop()


def test_url_with_acl_user(server, cli, tmp_path):
    server.call("ACL", "SETUSER", "backup", "on", ">backup-Pw-93k", "~*", "&*", "+@all")
    server.call("ACL", "SETUSER", "default", "off")
    server.password = None

    def as_backup() -> Client:
        return Client(server.port, "backup-Pw-93k", user="backup")

    server.client = as_backup
    fill(server)
    original = snapshot(server)
    config = write_config(tmp_path / "app", {"type": "redis", "name": "cache",
                                             "url": f"redis://backup:${{REDIS_PW}}@127.0.0.1:{server.port}"})
    env = {"REDIS_PW": "backup-Pw-93k"}
    created = cli("create", config=config, env=env)
    assert created.returncode == 0, created.stderr
    manifest = json.loads(manifests(tmp_path / "app")[0].read_text())
    details = manifest["sources"][0]["details"]
    assert details == {"type": "redis", "name": "cache", "host": "127.0.0.1", "port": server.port, "user": "backup"}
    change(server)
    assert cli("restore", "latest", "--yes", config=config, env=env).returncode == 0
    assert snapshot(server) == original


def test_restore_by_hand_as_documented(server, cli, tmp_path):
    """plugins/eternia-backup-redis/README.md: zstd -d | tar -x, stop the server, copy dump.rdb into its dir, start."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    fill(server)
    original = snapshot(server)
    config = write_config(tmp_path / "app", server.section())
    assert cli("create", config=config).returncode == 0
    change(server)
    archive = next((tmp_path / "app" / "backups").glob("*.tar.zst"))
    out = tmp_path / "by-hand"
    out.mkdir()
    subprocess.run(f"zstd -d < '{archive}' | tar -x", shell=True, cwd=out, check=True)
    assert server.call("CONFIG", "GET", "dir") == ["dir", str(server.dir)]
    server.stop()
    shutil.copy(out / "cache" / "dump.rdb", server.dir / "dump.rdb")
    server.start()
    assert snapshot(server) == original


def test_a_later_source_failing_rolls_the_server_back(backed_up, cli, tmp_path):
    """A command source commits after the redis plan (it pipes: irreversible); its failure loads the snapshot."""
    server, state, config = backed_up
    failing = {"type": "command", "name": "app", "command": "echo state", "restore_command": "cat >/dev/null; exit 4"}
    write_config(tmp_path / "app", server.section(), failing)
    assert cli("create", config=config).returncode == 0
    server.call("SET", "after-second-backup", "stays")
    state = snapshot(server)
    proc = cli("restore", "latest", "--yes", config=config)
    assert proc.returncode != 0 and "exit" in proc.stderr.lower(), proc.stderr
    assert snapshot(server) == state
    assert server.call("CONFIG", "GET", "save") == ["save", ""]
    assert leftovers(server) == []


def test_a_failed_load_puts_the_previous_data_back(tmp_path, cli):
    server = RedisServer(tmp_path / "redis", debug=False)
    try:
        fill(server)
        marker = tmp_path / "restarts"
        # fails the first time without touching the server, restarts it the second time
        command = (f"if [ ! -e '{marker}' ]; then touch '{marker}'; echo 'unit not found' >&2; exit 5; fi; "
                   + server.restart_command)
        config = write_config(tmp_path / "app", server.section(restart_command=command))
        assert cli("create", config=config).returncode == 0
        change(server)
        state = snapshot(server)
        proc = cli("restore", "latest", "--yes", config=config)
        assert proc.returncode != 0
        assert "restart_command exited with status 5: unit not found" in proc.stderr, proc.stderr
        assert "the server's previous data was put back" in proc.stderr
        assert snapshot(server) == state
        assert leftovers(server) == []
    finally:
        server.stop()


# -- a writer during the backup ---------------------------------------------------------------------


def test_a_backup_during_transactions_holds_every_transaction_whole(server, cli, tmp_path):
    fill(server)
    server.call("CONFIG", "SET", "rdb-key-save-delay", 20000)  # 20 ms per key: the snapshot takes >1 s
    stop = threading.Event()
    done = []

    def writer():
        c = server.client()
        try:
            n = 0
            while not stop.is_set():
                n += 1
                for cmd in (("MULTI",), ("INCR", "pair:a"), ("INCR", "pair:b"), ("DECRBY", "total:x", 7),
                            ("INCRBY", "total:y", 7), ("RPUSH", f"batch:{n % 5}", n), ("EXEC",)):
                    c.send(*cmd)
                for _ in range(7):
                    c.read()
                done.append(n)
        finally:
            c.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        at_start = len(done)
        created = cli("create", config=write_config(tmp_path / "app", server.section()))
        at_end = len(done)
    finally:
        stop.set()
        thread.join(30)
    assert created.returncode == 0, created.stderr
    assert at_end > at_start + 10, "the writer must have run during the backup"
    config = tmp_path / "app" / "eternia-backup.yaml"
    assert cli("restore", "latest", "--to", str(tmp_path / "out"), "--yes", config=config).returncode == 0
    state = read_rdb(tmp_path / "out" / "cache" / "dump.rdb", tmp_path / "scratch")
    a, b = int(state[(0, "pair:a")][1]), int(state[(0, "pair:b")][1])
    assert a == b and at_start <= a <= at_end + 1, (a, b, at_start, at_end)
    assert int(state[(0, "total:x")][1]) + int(state[(0, "total:y")][1]) == 1000
    assert sum(len(state[(0, f"batch:{i}")][1]) for i in range(5) if (0, f"batch:{i}") in state) == a


# -- failures that change nothing -------------------------------------------------------------------


def test_backup_of_a_server_that_is_down(cli, tmp_path):
    config = write_config(tmp_path / "app", {"type": "redis", "name": "cache", "port": free_port()})
    proc = cli("create", config=config)
    assert proc.returncode != 0
    assert "source 'cache'" in proc.stderr and "cannot connect" in proc.stderr
    assert "is the server running? check host and port" in proc.stderr
    assert manifests(tmp_path / "app") == []


def test_backup_with_a_missing_redis_cli(server, cli, tmp_path):
    config = write_config(tmp_path / "app", server.section(redis_cli=str(tmp_path / "no" / "redis-cli")))
    proc = cli("create", config=config)
    assert proc.returncode != 0
    assert "source 'cache'" in proc.stderr and "redis-cli not found" in proc.stderr
    assert "set redis_cli" in proc.stderr
    assert manifests(tmp_path / "app") == []


@pytest.mark.parametrize("password, expected", [
    ("wrong-Password-1", "authentication failed (wrong user or password); check password"),
    (None, "the server requires a password; set password"),
])
def test_backup_with_bad_credentials(tmp_path, cli, password, expected):
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    try:
        options = {"password": password} if password else {}
        config = write_config(tmp_path / "app", server.section(**options))
        proc = cli("create", config=config)
        assert proc.returncode != 0
        assert "source 'cache'" in proc.stderr and expected in proc.stderr, proc.stderr
        assert PASSWORD not in proc.stderr + proc.stdout
        assert password is None or password not in proc.stderr + proc.stdout
        assert manifests(tmp_path / "app") == []
    finally:
        server.stop()


def test_a_dump_longer_than_timeout_is_stopped(server, cli, tmp_path):
    fill(server)
    server.call("CONFIG", "SET", "rdb-key-save-delay", 100000)  # 0.1 s per key: minutes for the whole dump
    config = write_config(tmp_path / "app", server.section(timeout=1))
    started = time.monotonic()
    proc = cli("create", config=config)
    assert proc.returncode != 0
    assert time.monotonic() - started < 30
    assert "source 'cache': redis-cli ran longer than 1.0 s while taking a snapshot" in proc.stderr, proc.stderr
    assert "raise timeout" in proc.stderr
    assert manifests(tmp_path / "app") == []
    children = [_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert not [c for c in children if c.split(b"\0")[0].endswith(b"redis-cli") and str(server.port).encode() in c]


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def backed_up(server, cli, tmp_path):
    """A backup of ``server``, then changes after it: (server, state now, config path)."""
    fill(server)
    config = write_config(tmp_path / "app", server.section())
    assert cli("create", config=config).returncode == 0
    change(server)
    return server, snapshot(server), config


def _unchanged(server: RedisServer, state: dict) -> None:
    assert snapshot(server) == state
    assert server.call("EXISTS", "after-backup") == 1
    assert sorted(p.name for p in server.dir.iterdir()) == []  # no dump.rdb, no leftovers
    assert server.call("CONFIG", "GET", "save") == ["save", ""]


def test_restore_refused_when_debug_is_disabled_and_no_restart_command(tmp_path, cli):
    server = RedisServer(tmp_path / "redis", debug=False)
    try:
        fill(server)
        config = write_config(tmp_path / "app", server.section())
        assert cli("create", config=config).returncode == 0
        change(server)
        state = snapshot(server)
        proc = cli("restore", "latest", "--yes", config=config)
        assert proc.returncode != 0
        assert "source 'cache'" in proc.stderr and "DEBUG command not allowed" in proc.stderr
        assert "Set restart_command" in proc.stderr and "enable-debug-command local" in proc.stderr
        assert "Nothing was changed" in proc.stderr
        _unchanged(server, state)
    finally:
        server.stop()


def test_restore_refused_when_the_servers_dir_cannot_be_written(backed_up, cli, tmp_path):
    server, state, config = backed_up
    if os.geteuid() != 0:
        server.dir.chmod(0o555)
        undo = ["chmod", "0755", str(server.dir)]
    else:  # root writes through any mode bits: make the directory immutable instead
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(server.dir)], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i does not work here")
        undo = [chattr, "-i", str(server.dir)]
    try:
        proc = cli("restore", "latest", "--yes", config=config)
    finally:
        subprocess.run(undo, check=True)
    assert proc.returncode != 0
    assert f"cannot write into the server's dir {server.dir} (permission denied)" in proc.stderr, proc.stderr
    assert "Nothing was changed" in proc.stderr
    _unchanged(server, state)


def test_restore_refused_when_appendonly_is_on(backed_up, cli):
    server, state, config = backed_up
    server.call("CONFIG", "SET", "appendonly", "yes")
    proc = cli("restore", "latest", "--yes", config=config)
    assert proc.returncode != 0
    assert "appendonly yes" in proc.stderr and "Nothing was changed" in proc.stderr
    server.call("CONFIG", "SET", "appendonly", "no")
    assert snapshot(server) == state
    assert [p for p in server.dir.iterdir() if p.name.startswith((".eternia", "dump"))] == []


def test_restore_when_the_server_is_down(backed_up, cli, tmp_path):
    server, state, config = backed_up
    server.stop()
    proc = cli("restore", "latest", "--yes", config=config)
    assert proc.returncode != 0
    assert "source 'cache'" in proc.stderr and "cannot connect" in proc.stderr
    assert sorted(p.name for p in server.dir.iterdir()) == []


def test_restore_with_a_wrong_password(tmp_path, cli):
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    try:
        fill(server)
        config = write_config(tmp_path / "app", server.section(password=PASSWORD))
        assert cli("create", config=config).returncode == 0
        change(server)
        state = snapshot(server)
        write_config(tmp_path / "app", server.section(password="wrong-Password-1"))
        proc = cli("restore", "latest", "--yes", config=config)
        assert proc.returncode != 0
        assert "authentication failed" in proc.stderr and PASSWORD not in proc.stderr + proc.stdout
        assert "wrong-Password-1" not in proc.stderr + proc.stdout
        _unchanged(server, state)
    finally:
        server.stop()


def test_options_are_checked_before_any_io(cli, tmp_path):
    for options, expected in [
        ({"url": "redis://127.0.0.1:6390", "port": 6391}, "source 'cache': give either url or host/port, not both"),
        ({"url": "rediss://127.0.0.1:6390"}, "sources[0].url: expected a redis:// url; rediss:// (tls) is not"),
        ({"url": "http://127.0.0.1:6390"}, "sources[0].url: expected a url such as redis://127.0.0.1:6379"),
        ({"url": "redis://127.0.0.1:6390/2"}, "sources[0].url: expected a url without a database number"),
        ({"url": "redis://:a-Password@127.0.0.1:6390", "password": "other-Pw"}, "give either url or password"),
        ({"port": 0}, "sources[0].port: expected"),
    ]:
        config = write_config(tmp_path / "app", {"type": "redis", "name": "cache", **options})
        proc = cli("config", "check", config=config)
        assert proc.returncode != 0 and expected in proc.stderr, (options, proc.stderr)
        assert "a-Password" not in proc.stderr and "other-Pw" not in proc.stderr


# -- secrets ----------------------------------------------------------------------------------------


def test_the_password_is_never_in_argv_logs_manifests_or_output(tmp_path, real_cli):
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    try:
        fill(server)
        c = server.client()
        try:
            c.call("SELECT", 1)
            for i in range(100):
                c.call("SET", f"slow:{i}", i)
        finally:
            c.close()
        server.call("CONFIG", "SET", "rdb-key-save-delay", 10000)  # ~1.7 s per dump: time to look at children
        app = tmp_path / "app"
        config = write_config(app, server.section(password="${REDIS_TEST_PASSWORD}"))
        env = {"REDIS_TEST_PASSWORD": PASSWORD}
        seen: list[bytes] = []
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                for entry in os.scandir("/proc"):
                    if entry.name.isdigit():
                        try:
                            cmdline = Path(entry.path, "cmdline").read_bytes()
                        except OSError:
                            continue
                        if b"redis-cli" in cmdline or PASSWORD.encode() in cmdline:
                            seen.append(cmdline)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            created = real_cli("-vv", "create", config=config, env=env)
            change(server)
            restored = real_cli("-vv", "restore", "latest", "--yes", config=config, env=env)
        finally:
            stop.set()
            poller.join(30)
        assert created.returncode == 0, created.stderr
        assert restored.returncode == 0, restored.stderr
        assert any(b"--rdb" in s for s in seen), "the poller must have seen redis-cli --rdb running"
        assert not [s for s in seen if PASSWORD.encode() in s]

        shown = real_cli("config", "show", config=config, env=env)
        dry = real_cli("restore", "latest", "--dry-run", config=config, env=env)
        listed = real_cli("list", config=config, env=env)
        for proc in (created, restored, shown, dry, listed):
            assert proc.returncode == 0, proc.stderr
            assert PASSWORD not in proc.stdout + proc.stderr
        assert "would replace every key" in dry.stdout + dry.stderr
        files = [p for p in app.rglob("*") if p.is_file() and ".tar" not in p.name]
        assert manifests(app) and all(PASSWORD not in p.read_text(errors="replace") for p in files)
        state_dir = Path(os.environ["XDG_STATE_HOME"])
        for p in state_dir.rglob("*"):
            if p.is_file():
                assert PASSWORD.encode() not in p.read_bytes(), p
        assert PASSWORD not in (server.root / "redis.log").read_text()
    finally:
        server.stop()


# -- the conformance kit ----------------------------------------------------------------------------


class TestRedisSource(SourceConformance):
    """Counters moved in MULTI/EXEC transactions: a torn snapshot would break their sum."""

    @pytest.fixture
    def source_section(self, server):
        fill(server)
        self.server = server
        return server.section("cache")

    def capture_state(self, section):
        return snapshot(self.server)

    def restored_state(self, section, directory):
        return read_rdb(directory / section["name"] / "dump.rdb", directory.parent / f"scratch-{time.time_ns()}")

    def mutate_state(self, section):
        c = self.server.client()
        try:
            for i in range(200):
                c.send("MULTI")
                c.send("DECRBY", "total:x", 3)
                c.send("INCRBY", "total:y", 3)
                c.send("INCR", "pair:a")
                c.send("INCR", "pair:b")
                c.send("EXEC")
                for _ in range(5):
                    c.read()
            c.call("SET", "after-backup", "x")
            c.call("DEL", "queue")
        finally:
            c.close()

    def assert_consistent(self, section, restored):
        assert int(restored[(0, "total:x")][1]) + int(restored[(0, "total:y")][1]) == 1000
        assert restored[(0, "pair:a")][1] == restored[(0, "pair:b")][1]
