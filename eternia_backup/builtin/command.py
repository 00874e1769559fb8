"""Built-in source ``command``: the stdout of a dump command is the backup entry.

``command`` runs through ``/bin/sh -c`` when it is a string and directly when it
is a list. Its stdout is archived as it is produced, as ``<source>/<filename>``
(a dump over 16 MiB as parts ``<filename>.eternia-part-00001``, ... that a
restore joins again; see :mod:`eternia_backup.streams`): no temporary copy. A non-zero exit fails
the backup, with the end of the command's stderr in the error. Restore pipes the
entry into ``restore_command``; with ``--to DIR`` the dump file is written there
instead. A restore command cannot be rolled back, so it runs after every other
source of the restore has been put in place.

The commands (and the source's ``before``/``after`` hooks) run without the AWS
credentials and the variables of the config's secrets (see
:mod:`eternia_backup.process`); ``env:`` maps the variables a dump tool does
need (values may be ``${VAR}``), passed in its environment, never in argv.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pydantic import Field

from eternia_backup.api import (
    CommandOutput,
    DirectorySwapPlan,
    EntryWriter,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    child_env,
    hookimpl,
    redact_text,
    remove_tree,
    scratch_dir,
    stderr_tail,
)



class CommandOptions(SourceOptions):
    command: str | list[str] = Field(description="The dump command: its stdout is the backup (a string runs "
                                     "through /bin/sh -c, a list directly).", examples=["pg_dump -Fc mydb"])
    restore_command: str | list[str] | None = Field(None, description="Gets the dump on stdin at restore; "
                                                    "without it, only restore --to works.",
                                                    examples=["pg_restore -d mydb --clean"])
    filename: str = Field("dump", description="The dump's file name in the archive (<source>/<filename>).",
                          examples=["mydb.pgcustom"])
    timeout: float | None = Field(None, description="Seconds the command may run; default: as long as it takes.",
                                  examples=[3600])
    env: dict[str, str] = Field({}, description="Extra environment of the commands and hooks, passed through the "
                                "environment (never argv); values may be ${VAR}.",
                                examples=[{"PGPASSWORD": "${PGPASSWORD}"}])


def run_args(command: str | list[str]) -> tuple[list[str] | str, bool]:
    return (command, True) if isinstance(command, str) else (list(command), False)


def _shown(command: str | list[str]) -> str:
    return redact_text(command if isinstance(command, str) else " ".join(command))


class CommandSource(Source):
    type_name = "command"
    options_model = CommandOptions
    restore_plan_types = (DirectorySwapPlan,)  # CommandRestorePlan keeps no journal entry: it cannot be resumed

    def describe(self):
        return {"type": self.type_name, "name": self.name, "filename": self.options.filename,
                "command": _shown(self.options.command)}

    def backup(self, writer: EntryWriter) -> None:
        """Archive the command's stdout as it is produced (in parts: no temporary file), then check its exit."""
        opts = self.options
        args, shell = run_args(opts.command)
        started = time.time()
        def failed(status: int, stderr: bytes) -> None:  # the backup fails: nothing of it is committed
            if status != 0:
                raise SourceError(f"source {self.name!r}: command {_shown(opts.command)!r} exited with status "
                                  f"{status}: {stderr_tail(stderr)}")

        try:
            output = CommandOutput(args, shell=shell, cwd=self.base_dir, timeout=opts.timeout, env=child_env(opts.env),
                                   on_end=failed)
        except FileNotFoundError as exc:
            raise SourceError(f"source {self.name!r}: command not found: {exc.filename}") from exc
        try:
            with output:
                writer.add_stream(opts.filename, output, None, mode=0o600, mtime=started)
                output.at_end()  # (already done by the framework; a writer that reads to the end without it)
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"source {self.name!r}: command did not finish within {opts.timeout}s") from exc

    def restore_plan(self, destination: Path | None):
        if destination is not None:
            return DirectorySwapPlan(destination, f"source {self.name!r}")
        if self.options.restore_command is None:
            raise RestoreError(
                f"source {self.name!r} has no restore_command; add one to its config, "
                "or restore with --to DIR to get the dump file"
            )
        return CommandRestorePlan(self)


class CommandRestorePlan(RestorePlan):
    #: runs after every plan that can roll back
    irreversible = True

    def __init__(self, source: CommandSource):
        self.source = source
        self.staging_dir = Path("eternia-restore-not-prepared")  # set by prepare
        self._prepared = False
        self.description = f"source {source.name!r}: pipe {source.options.filename} into {_shown(source.options.restore_command)!r}"

    def prepare(self) -> None:
        self.staging_dir = scratch_dir(f"restore-{self.source.name}")
        self._prepared = True

    def replaces_existing(self) -> bool:
        return True

    def changes(self) -> list[str]:
        return [f"source {self.source.name!r}: would run {_shown(self.source.options.restore_command)!r} "
                f"with {self.source.options.filename} on its input"]

    def commit(self) -> None:
        opts = self.source.options
        staged = self.staging_dir / opts.filename
        if not staged.is_file():
            raise RestoreError(f"source {self.source.name!r}: the backup holds no {opts.filename!r}")
        args, shell = run_args(opts.restore_command)
        with open(staged, "rb") as f:
            try:
                proc = subprocess.run(args, shell=shell, stdin=f, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, cwd=self.source.base_dir, timeout=opts.timeout,
                                      env=child_env(opts.env))
            except FileNotFoundError as exc:
                raise RestoreError(f"source {self.source.name!r}: restore command not found: {exc.filename}") from exc
        if proc.returncode != 0:
            raise RestoreError(
                f"source {self.source.name!r}: restore command exited with status {proc.returncode}: "
                f"{stderr_tail(proc.stderr)}"
            )

    def discard(self) -> None:
        if self._prepared:
            remove_tree(self.staging_dir)
            self._prepared = False


@hookimpl
def eternia_register_sources(register):
    register(CommandSource)
