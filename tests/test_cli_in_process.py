"""The in-process CLI fixture (``cli``) answers as the real process (``real_cli``) does,
and leaves nothing of a call behind in the test process."""

from __future__ import annotations

import logging
import os
import re
import warnings

import pytest

from conftest import run_cli, run_cli_in_process
from eternia_backup import process, redact


def untimed(log: str) -> str:
    """Log lines without their time stamps (the two runs may fall in different seconds)."""
    return re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ", "", log, flags=re.MULTILINE)


def unlisted(out: str) -> str:
    """Output without the time each target was listed (``status --json``'s inventory): each run lists anew."""
    return re.sub(r'"listed_at": "[^"]*"', '"listed_at": "…"', out)


@pytest.mark.parametrize("args", [
    ["--version"],
    ["restore", "--help"],
    ["plugins", "--json"],
    ["--json", "frobnicate"],
    ["restore"],
    ["config", "show"],
    ["list", "--json"],
    ["verify", "latest"],
    ["status", "--json"],
    ["-vv", "restore", "latest", "--to", "r", "--yes"],
], ids=" ".join)
def test_same_status_stdout_and_stderr_as_a_real_process(write_config, app, args):
    config = write_config(targets=[{"name": "nas", "url": "nas", "options": {"secret": "${NAS_SECRET}"}}])
    env = {"NAS_SECRET": "hunter2hunter2"}
    real = run_cli(*args, config=config, env=env, cwd=app)
    here = run_cli_in_process(*args, config=config, env=env, cwd=app)
    assert (here.returncode, unlisted(here.stdout), untimed(here.stderr)) == \
        (real.returncode, unlisted(real.stdout), untimed(real.stderr))
    assert "hunter2hunter2" not in here.stdout + here.stderr


def test_a_call_leaves_logging_environment_cwd_and_secrets_as_they_were(write_config, app):
    config = write_config(targets=[{"name": "nas", "url": "nas", "options": {"secret": "${NAS_SECRET}"}}])
    logger, root = logging.getLogger("eternia_backup"), logging.getLogger()
    before = (logger.handlers[:], logger.level, logger.propagate, root.handlers[:], root.level,
              dict(os.environ), os.getcwd(), set(redact._known), set(process.WITHHELD_ENV), warnings.filters[:])
    proc = run_cli_in_process("-vv", "create", config=config, env={"NAS_SECRET": "hunter2hunter2"}, cwd=app)
    assert proc.returncode == 0, proc.stderr
    assert " DEBUG " in proc.stderr and "hunter2hunter2" not in proc.stderr
    after = (logger.handlers[:], logger.level, logger.propagate, root.handlers[:], root.level,
             dict(os.environ), os.getcwd(), set(redact._known), set(process.WITHHELD_ENV), warnings.filters[:])
    assert after == before
    assert "hunter2hunter2" not in redact._known and "NAS_SECRET" not in process.WITHHELD_ENV


def test_a_call_starts_as_a_new_process_would(write_config, monkeypatch):
    """Secrets this process remembered (from other tests) mask nothing in the CLI's output."""
    monkeypatch.setattr(redact, "_known", {"nosuchbackup"})
    proc = run_cli_in_process("restore", "nosuchbackup", "--yes", config=write_config())
    assert proc.returncode == 1 and "'nosuchbackup'" in proc.stderr, proc.stderr
    assert redact._known == {"nosuchbackup"}


@pytest.mark.parametrize("args, env", [(["run"], {}), (["status"], {"TZ": "UTC"}),
                                       (["plugins"], {"PYTHONPATH": "/nowhere"})])
def test_what_needs_a_real_process_is_refused(args, env):
    with pytest.raises(AssertionError, match="run_cli"):
        run_cli_in_process(*args, env=env)
