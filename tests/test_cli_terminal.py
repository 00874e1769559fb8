"""The CLI on a real terminal: every command that shows progress or asks a question.

The rest of the suite runs without a TTY, as cron does; a user's first command runs
on one (the first ``create`` in a terminal once crashed in the progress bar). Each
test runs the real CLI with stdin, stdout and stderr on a pseudo-terminal and fails
on any traceback or "unexpected" error.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Terminal:
    """A child process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen([sys.executable, "-m", "eternia_backup", *args], cwd=cwd,
                                     stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        os.close(slave)
        self.raw = b""

    def read_for(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                self.raw += chunk
        return self.text

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.read_for(0.3)
                break
            self.read_for(0.2)
        assert needle in self.text, self.text
        return self.text

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read_for(0.2)
        self.read_for(0.3)
        if self.proc.poll() is None:
            self.proc.kill()
            pytest.fail(f"still running after {timeout} s: {self.text}")
        os.close(self.master)
        return self.proc.returncode, self.text

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")


def no_crash(text: str) -> None:
    assert "Traceback" not in text, text
    assert "unexpected" not in text, text


@pytest.fixture
def big_app(tmp_path) -> Path:
    """An app whose data/ takes long enough to archive that the bar is drawn more than once."""
    data = tmp_path / "data"
    for d in range(4):
        (data / f"dir{d}").mkdir(parents=True)
        for i in range(40):
            (data / f"dir{d}" / f"f{i}.bin").write_bytes(os.urandom(256 * 1024))
    (tmp_path / "eternia-backup.yaml").write_text(yaml.safe_dump(
        {"backup": {"storage_path": "backups", "retention_days": 7, "timezone": "Asia/Kolkata"}}))
    return tmp_path


def run_on_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    return Terminal(*args, cwd=cwd).finish()


def test_create_shows_bytes_of_the_total_then_one_summary_line(big_app):
    status, out = run_on_terminal(big_app, "create")
    no_crash(out)
    assert status == 0, out
    assert "backup:" in out and "%|" in out, out  # a bar with a known total
    assert re.search(r"/40\.\dM \[", out) and "B/s" in out, out  # of the total (40 MiB), with a rate
    clean = ANSI.sub("", out)
    summary = [line for line in clean.splitlines() if line.startswith("backup 2")]
    assert len(summary) == 1, clean
    assert re.search(r"\d+ entries, 40.0 MiB in, [\d.]+ MiB stored \(ratio [\d.]+\), [\d.]+ s", summary[0]), summary
    assert any(line.strip().endswith(".tar.zst") for line in clean.splitlines()), clean


def test_quiet_and_json_draw_no_bar_on_a_terminal(big_app):
    status, out = run_on_terminal(big_app, "create", "-q")
    assert status == 0 and "%|" not in out and "entries," not in out, out
    status, out = run_on_terminal(big_app, "create", "--json")
    assert status == 0 and "%|" not in out and '"version": 1' in out, out


def test_restore_verify_download_and_cleanup_on_a_terminal(big_app, tmp_path):
    assert run_on_terminal(big_app, "create")[0] == 0
    status, out = run_on_terminal(big_app, "verify")
    no_crash(out)
    assert status == 0 and "ok " in out, out

    status, out = run_on_terminal(big_app, "restore", "latest", "--to", str(tmp_path / "restored"))
    no_crash(out)
    assert status == 0 and "restored backup" in out, out
    assert (tmp_path / "restored" / "data" / "dir3" / "f39.bin").read_bytes() == \
        (big_app / "data" / "dir3" / "f39.bin").read_bytes()

    archive = next((big_app / "backups").glob("*.tar.zst"))
    status, out = run_on_terminal(big_app, "download", str(archive), "--to", str(tmp_path / "dl"))
    no_crash(out)
    assert status == 0 and (tmp_path / "dl" / archive.name).exists(), out

    status, out = run_on_terminal(big_app, "cleanup", "--dry-run")
    no_crash(out)
    assert status == 0 and "would delete 0 backup(s)" in out, out
    status, out = run_on_terminal(big_app, "list")
    no_crash(out)
    assert status == 0 and "+05:30" in out, out  # times in the configured zone, with its offset


@pytest.mark.slow
def test_in_place_restore_asks_on_the_terminal_and_does_what_is_answered(big_app):
    assert run_on_terminal(big_app, "create")[0] == 0
    victim = big_app / "data" / "dir0" / "f0.bin"
    original = victim.read_bytes()

    victim.write_bytes(b"changed")
    term = Terminal("restore", "latest", cwd=big_app)
    term.wait_for("Go ahead? [y/N]")
    term.send("n\n")
    status, out = term.finish()
    no_crash(out)
    assert status == 1 and "cancelled" in out and victim.read_bytes() == b"changed", out

    term = Terminal("restore", "latest", cwd=big_app)
    term.wait_for("Go ahead? [y/N]")
    term.send("\x04")  # Ctrl-D: no answer, as "n"
    status, out = term.finish()
    no_crash(out)
    assert status == 1 and "restore cancelled; nothing was changed" in out and victim.read_bytes() == b"changed", out

    term = Terminal("restore", "latest", cwd=big_app)
    term.wait_for("Go ahead? [y/N]")
    term.send("y\n")
    status, out = term.finish()
    no_crash(out)
    assert status == 0 and victim.read_bytes() == original, out


@pytest.mark.slow
def test_run_on_a_terminal_for_a_few_seconds_then_ctrl_c(big_app):
    term = Terminal("run", cwd=big_app)
    out = term.wait_for("next run at", timeout=30)
    assert "+05:30" in out, out
    term.read_for(2)
    os.killpg(term.proc.pid, signal.SIGINT)
    status, out = term.finish(timeout=60)
    no_crash(out)
    assert status == 0, out


def test_init_then_create_on_a_terminal_in_a_new_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("hello")
    status, out = run_on_terminal(tmp_path, "init")
    no_crash(out)
    assert status == 0 and (tmp_path / "eternia-backup.yaml").exists(), out
    status, out = run_on_terminal(tmp_path, "create")
    no_crash(out)
    assert status == 0 and list((tmp_path / "backups").glob("*.tar.zst")), out
