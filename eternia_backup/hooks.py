"""Shell commands run around a backup: per source (``before``/``after``) and once around all sources.

The global ``hooks:`` of the config run once per backup, so that an application
can quiesce writes once for a snapshot of several sources: ``before_backup``
before the first source is read (a failure fails the backup before anything is
read), ``after_backup`` once every source was read or the reading failed (it
always runs once ``before_backup`` did, to let writes resume early: uploads go
on after it), and ``on_error`` when the backup failed, with the error in
``$ETERNIA_ERROR``. Every command has a timeout: one that runs longer is
stopped and counts as failed. Commands get no secrets but their ``env:``
(passed in the environment, never in argv) and ``$ETERNIA_BACKUP_ID``.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from pathlib import Path

from . import process
from .errors import SourceError
from .providers import HOOK_TIMEOUT
from .redact import redact_text

log = logging.getLogger("eternia_backup.hooks")

#: seconds a hook command may run when the config does not say (the sources' before/after too)
DEFAULT_TIMEOUT = HOOK_TIMEOUT


@dataclasses.dataclass(frozen=True)
class Hooks:
    """``backup.hooks`` of the config."""

    before_backup: str | None = None
    after_backup: str | None = None
    on_error: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT


def run_hook(label: str, command: str, *, cwd: Path, env: dict[str, str] | None, timeout: float | None) -> None:
    """Run one hook command through the shell; raise SourceError naming ``label`` when it fails or times out."""
    log.info("%s: running", label)
    try:
        status, stderr = process.run(command, shell=True, cwd=cwd, env=process.child_env(env), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SourceError(f"{label} ran longer than its timeout of {timeout:g} s and was stopped; make it "
                          "faster or raise the timeout") from None
    if status != 0:
        tail = redact_text(stderr.decode("utf-8", "replace").strip()[-1000:]) or "(no stderr)"
        raise SourceError(f"{label} exited with status {status}: {tail}")


class GlobalHooks:
    """The config's ``hooks:`` for one backup: before, after (once, if before ran) and on error."""

    def __init__(self, hooks: Hooks | None, cwd: Path, backup_id: str):
        self.hooks = hooks or Hooks()
        self.cwd = cwd
        self.env = {**self.hooks.env, "ETERNIA_BACKUP_ID": backup_id}
        self._after_due = False

    def before(self) -> None:
        if self.hooks.before_backup:
            self._after_due = True  # a before_backup that failed half way may have paused writes
            run_hook("hooks.before_backup command", self.hooks.before_backup, cwd=self.cwd, env=self.env,
                     timeout=self.hooks.timeout)
        elif self.hooks.after_backup:
            self._after_due = True

    def after(self) -> None:
        """Run after_backup once (it resumes writes); a failure fails the backup."""
        if not self._after_due:
            return
        self._after_due = False
        if self.hooks.after_backup:
            run_hook("hooks.after_backup command", self.hooks.after_backup, cwd=self.cwd, env=self.env,
                     timeout=self.hooks.timeout)

    def on_error(self, error: BaseException) -> None:
        """Run on_error with the (secret-free) error in $ETERNIA_ERROR; its own failure is only logged."""
        if not self.hooks.on_error:
            return
        try:
            run_hook("hooks.on_error command", self.hooks.on_error, cwd=self.cwd,
                     env={**self.env, "ETERNIA_ERROR": redact_text(str(error))}, timeout=self.hooks.timeout)
        except Exception as exc:  # the backup's own error is what the caller reports
            log.warning("%s", exc)
