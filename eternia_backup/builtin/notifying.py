"""What the built-in notifiers share: the event model, the log tail, and delivery with a deadline.

Each notifier (``webhook``, ``healthchecks``, ``apprise``) is a plugin
instance implementing the lifecycle hooks through :class:`Notifier`, which
turns each hook into an :class:`Event` (operation, status, a one-line message,
the fields of docs/monitoring.md) and hands the ones its configuration asks for
to :meth:`Notifier.send`. Sending happens on a background thread
(:class:`Courier`), so that a receiver that hangs can never hold up a backup:
a start event is queued and the operation goes on at once; an end event
waits for delivery at most ``timeout_seconds``, then the operation goes on and
a warning is logged. Nothing here ever raises into the operation.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import socket
import threading
import urllib.request
from datetime import datetime, timezone
from typing import Any

from eternia_backup.api import __version__, hookimpl, human_size, redact_text

log = logging.getLogger("eternia_backup.notify")

PAYLOAD_VERSION = 1  # of the webhook's JSON body; docs/monitoring.md says what each version holds
LOG_TAIL_BYTES = 10_000  # the log lines sent with a failure, at most
LIST_LIMIT = 20  # warnings, checks ... listed in one event, at most
VERBS = {"start": "started", "success": "succeeded", "warning": "succeeded", "failure": "failed"}


@dataclasses.dataclass
class Event:
    """One thing that happened to a backup, cleanup or drill, as every notifier sees it."""

    operation: str  # backup, cleanup, drill
    status: str  # start, success, warning, failure
    message: str  # one line for people, secrets masked
    backup_id: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # operation-specific, see docs/monitoring.md
    log_tail: str = ""  # this run's last log lines (failures only)
    time: datetime = dataclasses.field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def name(self) -> str:
        """``backup.started``, ``backup.succeeded`` (also with warnings), ``backup.failed`` ..."""
        return f"{self.operation}.{VERBS[self.status]}"


class LogTail(logging.Handler):
    """Keeps the last lines logged by eternia_backup while one operation runs (the ``/fail`` body)."""

    observer = True  # it only listens: the library's log guard still lets records reach logging.lastResort

    def __init__(self, limit: int = LOG_TAIL_BYTES) -> None:
        super().__init__(logging.NOTSET)
        self.limit = limit
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            datefmt="%Y-%m-%dT%H:%M:%S%z"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = redact_text(self.format(record))
        except Exception:  # a record that cannot be formatted is left out, never raised
            return
        with self.lock:
            self.lines.append(line)
            self.size += len(line.encode()) + 1
            while self.size > self.limit and len(self.lines) > 1:
                self.size -= len(self.lines.popleft().encode()) + 1

    def text(self, last_line: str = "") -> str:
        """The lines kept, plus ``last_line``; the start is cut so the whole stays within the limit."""
        with self.lock:
            lines = list(self.lines)
        if last_line:
            lines.append(last_line)
        text = "\n".join(lines)
        data = text.encode()
        if len(data) > self.limit:
            text = data[-self.limit:].decode(errors="ignore")
        return text


@dataclasses.dataclass
class _Parcel:
    event: Event
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    abandoned: bool = False


class Courier:
    """Sends one notifier's events in order, on a thread of its own that lives while there is work."""

    def __init__(self, label: str, timeout: float, send) -> None:
        self.label = label
        self.timeout = timeout
        self._send = send
        self._lock = threading.Lock()
        self._queue: collections.deque[_Parcel] = collections.deque()
        self._worker: threading.Thread | None = None

    def post(self, event: Event, *, wait: bool) -> bool:
        """Queue ``event``; with ``wait``, wait until it was delivered, at most the timeout. True if delivered."""
        parcel = _Parcel(event)
        with self._lock:
            self._queue.append(parcel)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"eternia-notify {self.label}", daemon=True)
                self._worker.start()
        if not wait:
            return False
        if parcel.done.wait(self.timeout):
            return not parcel.abandoned
        with self._lock:
            if parcel.done.is_set():
                return not parcel.abandoned
            parcel.abandoned = True
        log.warning("%s: could not deliver %s within %g s (no answer); carrying on without it",
                    self.label, event.name, self.timeout)
        return False

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                parcel = self._queue[0]
            try:
                self._send(parcel.event)
            except Exception as exc:  # anything a receiver or a library does must stay here
                with self._lock:
                    parcel.abandoned, reported = True, parcel.abandoned
                if not reported:
                    log.warning("%s: could not deliver %s: %s", self.label, parcel.event.name,
                                redact_text(str(exc)) or type(exc).__name__)
            finally:
                with self._lock:
                    self._queue.popleft()
                parcel.done.set()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class Notifier:
    """Base of the built-in notifiers: the lifecycle hooks become :class:`Event` s for :meth:`send`.

    ``spec`` is the configured notifier (kind, key, urls, events, operations,
    timeout_seconds, and ``wants(operation, status)``); ``config`` the
    BackupConfig (its name and environment go into every event).
    """

    def __init__(self, spec, config) -> None:
        self.spec = spec
        self.app_name = config.name
        self.environment = config.environment
        self.host = socket.gethostname()
        self.courier = Courier(self.label, spec.timeout_seconds, self.send)
        self._tails: dict[str, LogTail] = {}

    @property
    def label(self) -> str:
        """How log lines name this notifier: its key and kind, never its URL (which may hold a token)."""
        return f"notifier {self.spec.key}"

    def send(self, event: Event) -> None:
        """Deliver one event; raise on failure (it is logged). Runs on the courier's thread."""
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------

    def _started(self, operation: str, message: str, backup_id: str | None = None, **fields) -> None:
        tail = self._tails.pop(operation, None)
        if tail is not None:
            logging.getLogger("eternia_backup").removeHandler(tail)
        if self.spec.wants(operation, "failure"):
            self._tails[operation] = tail = LogTail()
            logging.getLogger("eternia_backup").addHandler(tail)
        if self.spec.wants(operation, "start"):
            self.courier.post(Event(operation, "start", redact_text(message), backup_id, fields), wait=False)

    def _finished(self, operation: str, status: str, message: str, backup_id: str | None = None,
                  **fields) -> None:
        tail = self._tails.pop(operation, None)
        if tail is not None:
            logging.getLogger("eternia_backup").removeHandler(tail)
        if not self.spec.wants(operation, status):
            return
        message = redact_text(message)
        event = Event(operation, status, message, backup_id, fields)
        if status == "failure" and tail is not None:
            event.log_tail = tail.text(f"{event.time.astimezone().strftime('%Y-%m-%dT%H:%M:%S%z')} ERROR {message}")
        self.courier.post(event, wait=True)

    def _where(self) -> str:
        return f"{self.app_name} ({self.environment})"

    # -- backups ----------------------------------------------------------------------------

    @hookimpl
    def eternia_backup_started(self, backup_id, config):
        sources = [s.name for s in config.sources]
        targets = [t.name for t in config.targets]
        self._started("backup", f"backup {backup_id} of {self._where()} started ({_plural(len(sources), 'source')}, "
                      f"{_plural(len(targets), 'target')})", backup_id, sources=sources, targets=targets)

    @hookimpl
    def eternia_backup_succeeded(self, result):
        warnings = [{k: redact_text(str(v)) for k, v in w.items()} for w in result.warnings[:LIST_LIMIT]]
        status = "warning" if result.warning_count else "success"
        message = f"backup {result.backup_id} of {self._where()} succeeded: {human_size(result.size)} in " \
                  f"{result.duration:.1f} s"
        if result.warning_count:
            message += f", with {_plural(result.warning_count, 'warning')} (files skipped or changed while read; " \
                       "the manifest lists them)"
        self._finished("backup", status, message, result.backup_id, size=result.size,
                       duration_seconds=round(result.duration, 3), warning_count=result.warning_count,
                       warnings=warnings, copies=_copies(result))

    @hookimpl
    def eternia_backup_failed(self, backup_id, error, result):
        failures = {k: redact_text(v) for k, v in (result.failures.items() if result else [])}
        error_text = redact_text(str(error)) or type(error).__name__
        self._finished("backup", "failure", f"backup {backup_id} of {self._where()} failed: {error_text}", backup_id,
                       error=error_text, copies=_copies(result), failures=failures)

    # -- cleanups ---------------------------------------------------------------------------

    @hookimpl
    def eternia_cleanup_started(self, targets):
        self._started("cleanup", f"cleanup of {self._where()} started ({_plural(len(targets), 'target')})",
                      targets=list(targets))

    @hookimpl
    def eternia_cleanup_finished(self, result):
        errors = {k: redact_text(v) for k, v in result.errors.items()}
        not_deleted = [{k: redact_text(str(v)) for k, v in n.items()} for n in result.not_deleted[:LIST_LIMIT]]
        fields = dict(deleted_count=result.deleted_count, errors=errors, not_deleted=not_deleted)
        deleted = _plural(result.deleted_count, "backup")
        # a target that could not be listed (or failed otherwise) fails the cleanup; one that
        # refused some deletions only warns: retention ran, and the next cleanup tries again
        failed = {t.target: errors[t.target] for t in result.targets
                  if t.target in errors and (t.unlisted or not t.not_deleted)}
        if failed:
            problems = "; ".join(f"target {k!r}: {v}" for k, v in failed.items())
            self._finished("cleanup", "failure", f"cleanup of {self._where()} failed ({deleted} deleted): {problems}",
                           **fields)
        elif result.not_deleted:
            self._finished("cleanup", "warning", f"cleanup of {self._where()} deleted {deleted} but could not delete "
                           f"{len(result.not_deleted)}: " + "; ".join(
                               f"{n['name']} on {n['target']}: {n['reason']}" for n in not_deleted[:3]), **fields)
        else:
            self._finished("cleanup", "success", f"cleanup of {self._where()} deleted {deleted}", **fields)

    # -- drills -----------------------------------------------------------------------------

    @hookimpl
    def eternia_drill_started(self, backup_id):
        self._started("drill", f"drill of backup {backup_id} of {self._where()} started", backup_id)

    @hookimpl
    def eternia_drill_finished(self, result):
        checks = [{"source": c.source, "name": c.name, "ok": c.ok, "detail": redact_text(c.detail or "")}
                  for c in result.checks[:LIST_LIMIT]]
        error = redact_text(result.error) if result.error else None
        fields = dict(ok=result.ok, duration_seconds=round(result.duration, 3), error=error, checks=checks)
        where = f"drill of backup {result.backup_id} of {self._where()}"
        if result.ok:
            self._finished("drill", "success", f"{where} passed ({_plural(len(result.checks), 'check')})",
                           result.backup_id, **fields)
        else:
            failed = [f"{c.source}: {c.name}: {redact_text(c.detail or 'failed')}" for c in result.failed_checks]
            self._finished("drill", "failure", f"{where} failed: " + "; ".join(([error] if error else []) + failed[:5]),
                           result.backup_id, **fields)


def _copies(result) -> list[dict[str, str]]:
    return [{"target": c.target, "url": redact_text(c.url)} for c in (result.copies if result else [])]


def common_fields(notifier: Notifier, event: Event) -> dict[str, Any]:
    """The fields every webhook payload starts with (docs/monitoring.md)."""
    return {
        "version": PAYLOAD_VERSION,
        "event": event.name,
        "operation": event.operation,
        "status": event.status,
        "message": event.message,
        "name": notifier.app_name,
        "environment": notifier.environment,
        "host": notifier.host,
        "time": event.time.isoformat(timespec="seconds"),
        "framework_version": __version__,
        "backup_id": event.backup_id,
    }


def post(url: str, body: bytes, timeout: float, content_type: str) -> None:
    """POST ``body``; raises (URLError, OSError, ValueError) when the receiver cannot be reached or says no."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type,
                                              "User-Agent": f"eternia-backup/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read(1024)
