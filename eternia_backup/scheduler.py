"""The scheduler: a background thread (or ``eternia-backup run``) that makes
backups at the configured slots.

* Never overlaps: one thread runs one job at a time, and each job takes the
  host's lock file (and, for shared remote targets, a lease).
* Catches up: a slot missed while the application was down runs shortly after
  start (``catch_up: true``); with ``false`` it waits for the next slot.
* No bursts and no duplicates when the clock jumps: only the latest due slot
  runs, and a slot at or before one already handled never runs again.
* A failed run is retried with exponential backoff until the next slot.
* An exception in a job never kills the thread.
* Restore drills (``drill.schedule``) run in the same thread, so never beside
  a backup of this scheduler, and under the same lock as any other run; a
  slot's backup goes first when both are due. A drill skipped because another
  process holds the lock is retried like a failed backup; a drill whose checks
  fail is not (its result is recorded for ``status``).

``clock`` and ``wait`` can be injected so tests can drive time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from .errors import EterniaBackupError
from .schedule import next_slot, previous_slot, zone

log = logging.getLogger("eternia_backup.scheduler")

MAX_SLEEP = 60.0  # re-read the clock at least this often, to notice jumps


class SchedulerError(EterniaBackupError):
    """The scheduler was used wrongly (started twice, ...)."""


@dataclasses.dataclass
class RunOutcome:
    slot: datetime
    status: str  # "ok", "skipped", "failed"
    message: str
    duration: float = 0.0


class Scheduler:
    def __init__(self, manager, *, clock: Callable[[], datetime] | None = None,
                 wait: Callable[[float], bool] | None = None):
        self.manager = manager
        self.schedule = manager.config.schedule
        self.tz, self.tz_name = zone(self.schedule.timezone)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._stop = threading.Event()
        self.cancel = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self.outcomes: list[RunOutcome] = []
        self.next_run: datetime | None = None
        self.drill_cron: str | None = manager.config.drill.schedule
        self.drill_outcomes: list[RunOutcome] = []
        self.next_drill: datetime | None = None

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise SchedulerError("the scheduler is already running; stop it before starting it again")
        if not self.manager.config.enabled:
            log.info("backups are disabled (backup.enabled: false); nothing is scheduled")
            return
        self.manager.prepare_scheduled_runs()
        self._stop.clear()
        self.cancel.clear()
        self._thread = threading.Thread(target=self._loop, name="eternia-backup-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler started: %s in %s", self.schedule.label, self.tz_name)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop; a running backup gets ``timeout`` seconds to finish, then is abandoned safely."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("abandoning the running backup (no manifest is written, temporary files are removed)")
            self.cancel.set()
            self._thread.join()
        self._thread = None
        log.info("scheduler stopped")

    # -- the loop ----------------------------------------------------------------

    def _first_handled_slot(self, due: datetime) -> datetime:
        """The newest slot considered handled at start (catch-up logic)."""
        if not self.schedule.catch_up:
            return due
        last = self.manager.last_successful_slot()
        if last is None:
            newest = self.manager.newest_backup_time()
            if newest is not None and newest >= due:
                return due
            last = newest
        if last is None or last < due:
            log.info("catching up: the slot at %s has no backup yet", due.isoformat())
            return due - timedelta(microseconds=1)
        return last

    def _first_handled_drill(self, due: datetime) -> datetime:
        """The newest drill slot considered handled at start: catch up a missed one like backups."""
        if not self.schedule.catch_up:
            return due
        last = (self.manager.state.read().get("drill") or {}).get("last_run")
        try:
            ran = datetime.fromisoformat(last.replace("Z", "+00:00")) if last else None
        except (AttributeError, ValueError):
            ran = None
        if ran is None or ran < due:
            log.info("catching up: the drill slot at %s has no drill yet", due.isoformat())
            return due - timedelta(microseconds=1)
        return due

    def _loop(self) -> None:
        cron, tz = self.schedule.cron, self.tz
        try:
            handled = self._first_handled_slot(previous_slot(cron, self.clock(), tz))
        except Exception:
            log.exception("could not read the last backup; catching up")
            handled = previous_slot(cron, self.clock(), tz) - timedelta(microseconds=1)
        pending: datetime | None = None
        attempts = 0
        run_at: datetime | None = None
        drill = self.drill_cron
        drill_handled = drill_pending = drill_at = None
        drill_attempts = 0
        if drill:
            try:
                drill_handled = self._first_handled_drill(previous_slot(drill, self.clock(), tz))
            except Exception:
                log.exception("could not read the last drill; catching up")
                drill_handled = previous_slot(drill, self.clock(), tz) - timedelta(microseconds=1)
        while not self._stop.is_set():
            now = self.clock()
            due = previous_slot(cron, now, tz)
            if due > handled:  # a new slot (only the latest, whatever the clock did)
                pending, attempts, run_at, handled = due, 0, now, due
            if drill:
                drill_due = previous_slot(drill, now, tz)
                if drill_due > drill_handled:
                    drill_pending, drill_attempts, drill_at, drill_handled = drill_due, 0, now, drill_due
            backup_due = pending is not None and run_at is not None and now >= run_at
            if not backup_due and drill_pending is not None and now >= drill_at:
                outcome = self._run_drill(drill_pending)
                if outcome.status == "skipped" and drill_attempts < self.schedule.retry_attempts:
                    delay = self.schedule.retry_backoff_seconds * 2 ** drill_attempts
                    drill_attempts += 1
                    drill_at = self.clock() + timedelta(seconds=delay)
                    log.warning("drill for slot %s skipped (%s); retry %d of %d in %.0fs", drill_pending.isoformat(),
                                outcome.message, drill_attempts, self.schedule.retry_attempts, delay)
                else:
                    drill_pending = drill_at = None
                continue
            if backup_due:
                outcome = self._run(pending)
                if self._stop.is_set():
                    break  # stopping: no retry to announce
                if outcome.status == "failed" and attempts < self.schedule.retry_attempts:
                    delay = self.schedule.retry_backoff_seconds * 2 ** attempts
                    attempts += 1
                    run_at = self.clock() + timedelta(seconds=delay)
                    log.warning("retry %d of %d for slot %s in %.0fs", attempts, self.schedule.retry_attempts,
                                pending.isoformat(), delay)
                else:
                    pending = run_at = None
                continue
            upcoming = next_slot(cron, max(now, handled), tz)
            self.next_run = min(upcoming, run_at) if run_at is not None else upcoming
            wake = self.next_run
            if drill:
                upcoming_drill = next_slot(drill, max(now, drill_handled), tz)
                self.next_drill = min(upcoming_drill, drill_at) if drill_at is not None else upcoming_drill
                wake = min(wake, self.next_drill)
            seconds = (wake - now).total_seconds()
            if self._wait(max(0.0, min(seconds, MAX_SLEEP))):
                break

    def _run(self, slot: datetime) -> RunOutcome:
        started = self.clock()
        log.info("scheduled backup for slot %s: starting", slot.isoformat())
        try:
            outcome = self.manager.run_scheduled(slot, cancel=self.cancel)
        except Exception as exc:  # never let one run kill the thread
            log.exception("scheduled backup for slot %s crashed", slot.isoformat())
            outcome = RunOutcome(slot, "failed", f"unexpected {type(exc).__name__}: {exc}")
        outcome.duration = (self.clock() - started).total_seconds()
        upcoming = next_slot(self.schedule.cron, max(self.clock(), slot), self.tz)
        level = logging.WARNING if outcome.status == "failed" else logging.INFO
        log.log(level, "scheduled backup for slot %s: %s in %.1fs: %s; next run at %s", slot.isoformat(),
                outcome.status, outcome.duration, outcome.message, upcoming.isoformat())
        self.outcomes.append(outcome)
        return outcome

    def _run_drill(self, slot: datetime) -> RunOutcome:
        started = self.clock()
        log.info("scheduled drill for slot %s: starting", slot.isoformat())
        try:
            outcome = self.manager.run_scheduled_drill(slot)
        except Exception as exc:  # never let one run kill the thread
            log.exception("scheduled drill for slot %s crashed", slot.isoformat())
            outcome = RunOutcome(slot, "failed", f"unexpected {type(exc).__name__}: {exc}")
        outcome.duration = (self.clock() - started).total_seconds()
        level = logging.WARNING if outcome.status == "failed" else logging.INFO
        log.log(level, "scheduled drill for slot %s: %s in %.1fs: %s", slot.isoformat(), outcome.status,
                outcome.duration, outcome.message)
        self.drill_outcomes.append(outcome)
        return outcome
