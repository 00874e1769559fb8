"""Source ``callable``: an application object's state, through two functions of the application.

An example third-party source. It imports only :mod:`eternia_backup.api`.

::

    sources:
      - type: callable
        name: inventory
        target: "myapp.state:snapshot"    # returns the state as JSON-able data
        restore: "myapp.state:restore"    # takes that data and makes it the live state
        python_path: [/srv/myapp]         # where myapp is importable from, if not installed

The backup holds ``<name>/snapshot.json``. A restore stages the snapshot, and
on commit first takes a snapshot of the live state (to roll back to), then
calls ``restore``. ``restore`` must set the whole state (so calling it twice
with the same data gives the same state): the restore journal may call it
again after a crash.

**Crash safety.** :meth:`CallableRestorePlan.journal_entry` records the
staged snapshot and the restore function; if the process dies during
``commit``, the next ``eternia-backup create`` or ``restore`` calls
:meth:`CallableRestorePlan.resume` with that entry, which calls ``restore``
with the staged snapshot, so the restore is finished.

**Test hook.** When the environment variable
``EXAMPLE_CALLABLE_PAUSE_IN_COMMIT`` names a file, ``commit`` writes that file
and sleeps for 60 s before calling ``restore``: a test kills the process
there to prove the journal finishes the restore. Never set it otherwise.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from eternia_backup.api import (
    DirectorySwapPlan,
    EntryWriter,
    RestoreError,
    RestorePlan,
    Source,
    SourceError,
    SourceOptions,
    hookimpl,
    remove_tree,
)

__version__ = "0.1.0"

SNAPSHOT = "snapshot.json"
PAUSE_ENV = "EXAMPLE_CALLABLE_PAUSE_IN_COMMIT"


class CallableOptions(SourceOptions):
    target: str = Field(description="module:function returning the state as JSON-able data.",
                        examples=["myapp.state:snapshot"])
    restore: str | None = Field(None, description="module:function taking that data and making it the live "
                                "state; without it, only restore --to works.", examples=["myapp.state:restore"])
    python_path: list[str] = Field([], description="Directories added to sys.path before importing.",
                                   examples=[["/srv/myapp"]])


def load_function(spec: str, python_path: list[str] | tuple[str, ...] = ()) -> Callable:
    """The function named ``module:function``, importing ``module`` (from ``python_path`` too)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SourceError(f"{spec!r} is not module:function")
    for directory in reversed(python_path):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"cannot load {spec}: {exc}") from exc
    if not callable(obj):
        raise SourceError(f"{spec} is not callable")
    return obj


class CallableSource(Source):
    type_name = "callable"
    options_model = CallableOptions

    def describe(self):
        return {"type": self.type_name, "name": self.name, "target": self.options.target}

    def _snapshot(self) -> bytes:
        fn = load_function(self.options.target, self.options.python_path)
        try:
            return json.dumps(fn(), sort_keys=True, indent=1).encode()
        except (TypeError, ValueError) as exc:
            raise SourceError(f"source {self.name!r}: {self.options.target} returned data that is not "
                              f"JSON-able: {exc}") from exc

    def check(self) -> None:
        try:
            load_function(self.options.target, self.options.python_path)
        except SourceError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None

    def backup(self, writer: EntryWriter) -> None:
        self.check()
        data = self._snapshot()
        writer.add_stream(SNAPSHOT, io.BytesIO(data), len(data), mode=0o600, mtime=time.time())

    def restore_plan(self, destination: Path | None) -> RestorePlan:
        if destination is not None:
            return DirectorySwapPlan(destination, f"source {self.name!r}")
        if self.options.restore is None:
            raise RestoreError(f"source {self.name!r} has no restore function; add `restore: module:function`, "
                               "or restore with --to DIR to get snapshot.json")
        return CallableRestorePlan(self.name, self.options.restore, self.options.target,
                                   tuple(self.options.python_path))


class CallableRestorePlan(RestorePlan):
    """Stage snapshot.json; commit calls the restore function; resumable after a crash."""

    def __init__(self, source_name: str, restore: str, snapshot: str, python_path: tuple[str, ...]):
        self.label = f"source {source_name!r}"
        self.restore = restore
        self.snapshot = snapshot
        self.python_path = python_path
        self.staging_dir = Path(tempfile.gettempdir()) / "eternia-callable-not-prepared"
        self.previous: Any = None
        self.committed = False
        self.description = f"{self.label}: call {restore}"

    def prepare(self) -> None:
        load_function(self.restore, self.python_path)  # fail before anything is staged
        self.staging_dir = Path(tempfile.mkdtemp(prefix="eternia-callable-"))

    def replaces_existing(self) -> bool:
        return True

    def changes(self) -> list[str]:
        return [f"{self.label}: would call {self.restore} with the backed-up snapshot"]

    def _staged(self) -> Any:
        try:
            return json.loads((self.staging_dir / SNAPSHOT).read_bytes())
        except FileNotFoundError:
            raise RestoreError(f"{self.label}: the backup holds no {SNAPSHOT}") from None
        except ValueError as exc:
            raise RestoreError(f"{self.label}: {SNAPSHOT} in the backup is not JSON: {exc}") from exc

    def commit(self) -> None:
        data = self._staged()
        self.previous = load_function(self.snapshot, self.python_path)()  # what rollback puts back
        pause = os.environ.get(PAUSE_ENV)
        if pause:  # test hook (see the module docstring)
            Path(pause).write_text(str(os.getpid()))
            time.sleep(60)
        _call_restore(self.restore, self.python_path, data, self.label)
        self.committed = True

    def rollback(self) -> None:
        if self.committed:
            _call_restore(self.restore, self.python_path, self.previous, self.label)
            self.committed = False

    def discard(self) -> None:
        if self.staging_dir.name != "eternia-callable-not-prepared":
            remove_tree(self.staging_dir)

    def journal_entry(self) -> dict[str, Any]:
        return {"destination": f"{self.label} ({self.restore})", "restore": self.restore,
                "python_path": list(self.python_path), "staging": str(self.staging_dir)}

    @classmethod
    def resume(cls, entry: dict[str, Any]) -> str:
        """Call the restore function with the staged snapshot again: it sets the whole state, so repeating is safe."""
        staging = Path(entry["staging"])
        try:
            data = json.loads((staging / SNAPSHOT).read_bytes())
        except (OSError, ValueError):
            return f"{entry['destination']}: the staged snapshot is gone; restore it again"
        _call_restore(entry["restore"], entry.get("python_path", []), data, entry["destination"])
        remove_tree(staging)
        return f"{entry['destination']}: the restored snapshot was put back"


def _call_restore(spec: str, python_path, data: Any, label: str) -> None:
    fn = load_function(spec, python_path)
    try:
        fn(data)
    except Exception as exc:
        raise RestoreError(f"{label}: {spec} failed: {exc}") from exc


CallableSource.restore_plan_types = (DirectorySwapPlan, CallableRestorePlan)


@hookimpl
def eternia_register_sources(register):
    register(CallableSource)
