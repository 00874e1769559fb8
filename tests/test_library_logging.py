"""Library use masks secrets in log records as the CLI does.

Each test runs a small application in a fresh interpreter, so that the logging
setup is exactly the application's (``logging.basicConfig()`` or none at all)
and nothing of pytest's or other tests' handlers is involved.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

S3_SECRET = "s3-secret-Vb93kQe1"
DB_PASSWORD = "dsn-pass-Lm27wRt5"

CONFIG = f"""\
backup:
  storage_path: backups
  targets:
    - name: s3
      url: s3://bucket/app
      options:
        key: AKIAEXAMPLEKEY
        secret: {S3_SECRET}
        client_kwargs: {{endpoint_url: "http://127.0.0.1:9"}}
        max_attempts: 1  # the S3 target's retries (2 s, then 4 s): fail fast on the closed port
        connect_timeout: 1
  sources:
    - {{type: directory, name: data, path: data}}
    - {{type: postgres, name: db, pg_dump: /nonexistent/pg_dump,
        dsn: "postgresql://app:{DB_PASSWORD}@127.0.0.1:9/app"}}
"""

# A monitoring plugin with a bug: its exception quotes the DSN and the S3 secret.
# The library logs it with the traceback (plugins.call_lifecycle).
APP = f"""\
import logging, sys
{{setup}}
from eternia_backup import BackupManager, hookimpl
from eternia_backup.plugins import get_plugin_manager

class Leaky:
    @hookimpl
    def eternia_backup_failed(self):
        raise RuntimeError("cannot reach postgresql://app:{DB_PASSWORD}@db/app with key {S3_SECRET}")

manager = BackupManager.from_config("eternia-backup.yaml",
                                    plugin_manager=get_plugin_manager(extra_plugins=(Leaky(),)))
try:
    manager.create_backup()
except Exception as exc:
    print("create failed:", type(exc).__name__)
# loggers the library or a plugin creates later, records with the secret in their arguments
logging.getLogger("eternia_backup.source.custom").error("dump of %s failed", "{DB_PASSWORD}")
logging.getLogger("eternia_backup").warning("secret was %s", "{S3_SECRET}")
logging.getLogger("eternia_backup.backup").info("plain %s", "message")
"""


@pytest.fixture
def workdir(tmp_path) -> Path:
    pytest.importorskip("eternia_backup_postgres")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello\n")
    (tmp_path / "eternia-backup.yaml").write_text(CONFIG)
    return tmp_path


def run_app(workdir: Path, setup: str) -> subprocess.CompletedProcess:
    script = workdir / "app.py"
    script.write_text(APP.replace("{setup}", textwrap.dedent(setup)))
    return subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=120)


def test_basicconfig_application_never_sees_a_secret(workdir):
    proc = run_app(workdir, """
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="%(name)s %(levelname)s %(message)s")
        logging.getLogger("eternia_backup").setLevel(logging.DEBUG)
    """)
    out = proc.stdout + proc.stderr
    assert "create failed: SourceError" in out, out
    assert "eternia_backup_failed hook failed" in out  # the plugin's error was logged ...
    assert "postgresql://app:********@db/app" in out  # ... masked, not dropped
    assert "dump of ******** failed" in out
    assert "plain message" in out
    assert S3_SECRET not in out and DB_PASSWORD not in out, out


def test_without_logging_config_warnings_still_reach_stderr_masked(workdir):
    proc = run_app(workdir, "")
    assert "secret was ********" in proc.stderr  # logging.lastResort, as before
    assert "plain message" not in proc.stderr  # INFO is not shown by lastResort
    assert S3_SECRET not in proc.stderr + proc.stdout and DB_PASSWORD not in proc.stderr + proc.stdout


def test_guard_keeps_message_templates_without_secrets():
    import logging

    from eternia_backup.redact import RedactingFilter

    record = logging.LogRecord("eternia_backup.backup", logging.INFO, __file__, 1, "copied %d files", (3,), None)
    RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("copied %d files", (3,))
