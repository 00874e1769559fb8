"""Running the commands of sources and hooks so that a stopping scheduler can abandon them.

``run_backup`` publishes its cancel event in :data:`CANCEL`; :func:`run` polls it
while the command runs, and kills the command's whole process group when it is
set, so ``stop_scheduler(timeout)`` and ``eternia-backup run --grace`` are
honoured even in the middle of a long dump.

Commands get only what they need: their environment is ours without the AWS
credentials and without every variable a secret of the config (the encryption
passphrase, a secret key) was read from (:func:`child_env`). A source that needs
one lists it in its ``env:``; it is passed in the environment, never in argv.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import threading
import time

from . import scratch
from .errors import EterniaBackupError

CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("eternia_cancel", default=None)

#: never passed to commands unless a source's ``env:`` names them
WITHHELD_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
_withheld_lock = threading.Lock()


def withhold_env(name: str) -> None:
    """Keep variable ``name`` (a secret's source, seen while loading the config) from commands."""
    with _withheld_lock:
        WITHHELD_ENV.add(name)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment minus the withheld secrets, plus ``extra`` (a source's ``env:``)."""
    with _withheld_lock:
        withheld = set(WITHHELD_ENV)
    env = {k: v for k, v in os.environ.items() if k not in withheld}
    env.update(extra or {})
    return env


class Cancelled(EterniaBackupError):
    """The backup was abandoned (the scheduler is stopping); nothing was committed."""


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the backup running in this context was abandoned.

    The framework checks between archive writes and :func:`run` polls while a
    command runs; a source doing long work of its own in Python (a slow API
    walk) calls this now and then, so ``stop_scheduler(timeout)`` is honoured.
    """
    cancel = CANCEL.get()
    if cancel is not None and cancel.is_set():
        raise Cancelled("backup abandoned because the scheduler is stopping; nothing was committed")


def run(args, *, shell: bool, cwd=None, stdin=None, stdout=None, timeout: float | None = None,
        env=None, pass_fds: tuple[int, ...] = ()) -> tuple[int, bytes]:
    """Run a command; return (exit status, stderr). Raises Cancelled or TimeoutExpired.

    Without ``env`` the command gets :func:`child_env` (no secrets). ``pass_fds``
    are file descriptors the command inherits (as ``/dev/fd/N``): a way to hand
    it a secret that is neither in argv nor in its environment.
    """
    cancel = CANCEL.get()
    if env is None:
        env = child_env()
    with scratch.temporary_file("stderr") as err:
        proc = subprocess.Popen(args, shell=shell, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=err,
                                env=env, start_new_session=True, pass_fds=pass_fds)
        waited = 0.0
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    waited += 0.2
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("backup abandoned because the scheduler is stopping; nothing was committed")
                    if timeout is not None and waited >= timeout:
                        raise subprocess.TimeoutExpired(args, timeout) from None
        except BaseException:
            _kill_group(proc)
            raise
        err.seek(0)
        return proc.returncode, err.read()


class CommandOutput:
    """A command's stdout as a readable stream: a dump archived while it is produced, never spooled.

    Use as a context manager; read to the end, then :meth:`finish` gives
    ``(exit status, stderr)``. A watchdog stops the command (its whole process
    group) when ``timeout`` passes or the backup is cancelled: the stream then
    ends early and :meth:`finish` raises ``TimeoutExpired`` or :class:`Cancelled`.
    Leaving the block early (an error) kills the command.
    """

    def __init__(self, args, *, shell: bool, cwd=None, env=None, timeout: float | None = None,
                 pass_fds: tuple[int, ...] = (), on_end=None):
        self.args = args
        self.timeout = timeout
        self.on_end = on_end
        self._result: tuple[int, bytes] | None = None
        self._cancel = CANCEL.get()  # a context variable: the watchdog thread would not see it
        self._err = scratch.temporary_file("stderr")
        try:
            self.proc = subprocess.Popen(args, shell=shell, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._err, env=env if env is not None else child_env(),
                                         start_new_session=True, bufsize=0, pass_fds=pass_fds)
        except BaseException:
            self._err.close()
            raise
        self.timed_out = self.cancelled = False
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="eternia-command-watch", daemon=True).start()

    def _watch(self) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not self._done.wait(0.2):
            if self._cancel is not None and self._cancel.is_set():
                self.cancelled = True
            elif deadline is not None and time.monotonic() >= deadline:
                self.timed_out = True
            else:
                continue
            _signal_group(self.proc)
            return

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the output (fewer as they arrive); b"" at its end."""
        return self.proc.stdout.read(n)

    def readinto(self, b) -> int:
        """Read into ``b`` (what the framework uses); 0 at the end."""
        return self.proc.stdout.readinto(b)

    def readable(self) -> bool:
        """Always true: a file-like object for ``add_stream``."""
        return True

    def finish(self) -> tuple[int, bytes]:
        """Wait for the command; (exit status, stderr). Raises Cancelled or TimeoutExpired if it was stopped."""
        if self._result is None:
            self.proc.stdout.close()
            self.proc.wait()
            self._done.set()
            if self.cancelled:
                raise Cancelled("backup abandoned because the scheduler is stopping; nothing was committed")
            if self.timed_out:
                raise subprocess.TimeoutExpired(self.args, self.timeout)
            self._err.seek(0)
            self._result = (self.proc.returncode, self._err.read())
        return self._result

    def at_end(self) -> None:
        """Called by the framework once the output ended, before its last part is archived: waits for
        the command and calls ``on_end(status, stderr)``, which raises for a failed dump. A dump that
        fails within its first part (16 MiB) thus leaves nothing in the archive, and may be retried."""
        status, stderr = self.finish()
        if self.on_end is not None:
            self.on_end(status, stderr)

    def __enter__(self) -> "CommandOutput":
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self.proc.returncode is None:
            _kill_group(self.proc)
        self.proc.stdout.close()
        self._err.close()


def _signal_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


STDERR_TAIL = 2000


def stderr_tail(data: bytes) -> str:
    """The end of a command's stderr for an error message: at most 2,000 characters, secrets masked."""
    from .redact import redact_text

    text = data.decode("utf-8", "replace").strip()
    if len(text) > STDERR_TAIL:
        text = "..." + text[-STDERR_TAIL:]
    return redact_text(text) or "(no stderr)"
