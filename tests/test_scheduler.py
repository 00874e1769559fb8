"""Automated backups, end to end: the scheduler thread, `eternia-backup run`, locks,
S3 leases, catching up, retries, status, the webhook notifier and the metrics file.

Everything is real: backups are made into real local storage or a real SeaweedFS
bucket, processes are real and get real signals. Time is the only thing a test
drives: the scheduler takes a ``clock`` and a ``wait``, and :class:`VirtualClock`
gives it a time that stands still (the test moves it) or races ahead (each wait
jumps to the time the scheduler asked for, so a slot passes in milliseconds).
Virtual time is set in the future, so that backups made now are older than every
slot the scheduler sees, as they would be in real life.

Slow sources are ``command`` sources waiting at a *gate* (a file the test creates),
so "during a backup" is a moment the test chooses, not a race.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from eternia_backup import hookimpl
from eternia_backup.locks import BackupInProgress
from eternia_backup.timefmt import iso_utc
from eternia_backup.manager import BackupManager
from eternia_backup.plugins import get_plugin_manager
from eternia_backup.api import DirectorySwapPlan
from eternia_backup.providers import Source
from eternia_backup.scheduler import SchedulerError

UTC = timezone.utc


# -- helpers ------------------------------------------------------------------------------


class VirtualClock:
    """The scheduler's clock and wait.

    Frozen (the default), time moves only when the test calls :meth:`set`; each
    wait sleeps a few real milliseconds. With ``auto``, each wait advances time by
    what the scheduler asked to sleep, so it reaches its next slot at once.
    """

    def __init__(self, now: datetime, *, auto: bool = False, real_sleep: float = 0.005):
        self._now = now
        self.auto = auto
        self.real_sleep = real_sleep
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, now: datetime) -> None:
        with self._lock:
            self._now = now

    def wait(self, seconds: float) -> bool:
        time.sleep(self.real_sleep)
        if self.auto:
            with self._lock:
                self._now += timedelta(seconds=max(seconds, 0.001))
        return False  # the scheduler's own stop flag ends its loop


def future_hour(days: int = 2) -> datetime:
    """A whole hour ``days`` from now (UTC): later than any backup a test makes."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def quiet_for(seconds: float = 0.3) -> None:
    """Let a spinning scheduler run ~60 loop iterations in which nothing should happen."""
    time.sleep(seconds)


def manifests(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.glob("*.manifest.json")) if storage.exists() else []


def archives(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.iterdir() if ".tar" in p.name and not p.name.startswith(".")) \
        if storage.exists() else []


def temp_files(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.iterdir() if p.name.endswith(".tmp")) if storage.exists() else []


def gate_command(gate: Path, payload: str = "payload", started: Path | None = None) -> str:
    """A dump command that finishes only once ``gate`` exists (and makes ``started`` when it starts)."""
    mark = f"touch '{started}'; " if started is not None else ""
    return f"{mark}while [ ! -e '{gate}' ]; do sleep 0.05; done; echo {payload}"


def write_section(app: Path, section: dict, name: str = "eternia-backup.yaml") -> Path:
    path = app / name
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


def local_section(**over) -> dict:
    section = {
        "storage_path": "backups",
        "sources": [{"type": "directory", "name": "files", "path": "state/files"}],
        "schedule": {"timezone": "UTC"},
    }
    section.update(over)
    return section


def scheduler_lines(records) -> list[str]:
    return [r.getMessage() for r in records if r.name == "eternia_backup.scheduler"]


@pytest.fixture
def records():
    """Log records of eternia_backup at INFO and above, whatever other tests did to logging."""
    logger = logging.getLogger("eternia_backup")
    got: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            got.append(record)

    handler = ListHandler(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temp directory that sources spool into, to check nothing is left there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def stop_all(app):
    """Stops every manager's scheduler a test started, even when it fails."""
    managers: list[BackupManager] = []
    yield managers.append
    (app / "gate").touch()  # a backup waiting at its gate can finish
    for m in managers:
        if m.scheduler is not None and m.scheduler.running:
            m.stop_scheduler(timeout=0)


def popen_cli(config: Path, *args: str, env: dict | None = None, new_session: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=new_session)


def kill_group(proc: subprocess.Popen) -> None:
    """End a test's own process and what is left of its children (it was started in its own
    session, so its process group is its pid, and outlives it while a child lives)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


# -- catching up, with a clock the test holds ------------------------------------------------------


def test_catch_up_runs_right_after_start_when_the_last_slot_has_no_backup(app, records, stop_all):
    config = write_section(app, local_section(frequency="daily"))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    mgr.create_backup()  # made now: newer than today's midnight slot
    assert len(manifests(storage)) == 1

    # Started later the same day: the last slot has its backup, nothing to catch up.
    vc = VirtualClock(datetime.now(UTC) + timedelta(seconds=1))
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    quiet_for()
    assert mgr.scheduler.outcomes == [] and len(manifests(storage)) == 1
    mgr.stop_scheduler(timeout=5)

    # Started two days later: midnight came while the application was down.
    later = future_hour(days=2) + timedelta(hours=1, minutes=7)
    midnight = later.replace(hour=0, minute=0)
    vc = VirtualClock(later)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, what="the catch-up run")
    quiet_for()
    [outcome] = mgr.scheduler.outcomes  # one run, not one per missed day
    assert (outcome.slot, outcome.status) == (midnight, "ok"), outcome
    assert len(manifests(storage)) == 2
    assert mgr.last_successful_slot() == midnight
    assert mgr.scheduler.next_run == midnight + timedelta(days=1)
    assert any("catching up" in m for m in scheduler_lines(records))
    mgr.stop_scheduler(timeout=5)

    # A restart at the same moment: the state says the slot is done.
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    quiet_for()
    assert mgr.scheduler.outcomes == [] and len(manifests(storage)) == 2
    mgr.stop_scheduler(timeout=5)


def test_catch_up_false_waits_for_the_next_slot(app, stop_all):
    config = write_section(app, local_section(frequency="daily", schedule={"timezone": "UTC", "catch_up": False}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    later = future_hour(days=2) + timedelta(hours=5)
    next_midnight = later.replace(hour=0) + timedelta(days=1)
    vc = VirtualClock(later)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    quiet_for()
    assert mgr.scheduler.outcomes == [] and manifests(storage) == []  # no backup at all, still waits
    assert mgr.scheduler.next_run == next_midnight
    assert mgr.status()["next_run"] == iso_utc(next_midnight)

    vc.set(next_midnight - timedelta(seconds=1))
    quiet_for()
    assert mgr.scheduler.outcomes == []
    vc.set(next_midnight + timedelta(seconds=2))
    wait_for(lambda: mgr.scheduler.outcomes, what="the midnight run")
    quiet_for()
    assert [(o.slot, o.status) for o in mgr.scheduler.outcomes] == [(next_midnight, "ok")]
    assert len(manifests(storage)) == 1
    mgr.stop_scheduler(timeout=5)


def test_a_restart_inside_the_repeated_hour_still_catches_up_the_days_run(app, stop_all):
    """Helsinki, 2017-10-29: the 03:30 run was due at 03:30 EEST (00:30 UTC); the application
    was down then and starts at 03:10 the second time (EET, 01:10 UTC). Yesterday's run is
    recorded; today's must be caught up, not skipped until tomorrow."""
    helsinki = ZoneInfo("Europe/Helsinki")
    config = write_section(app, local_section(schedule={"cron": "30 3 * * *", "timezone": "Europe/Helsinki"}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    mgr.state.record_slot(datetime(2017, 10, 28, 0, 30, tzinfo=UTC), succeeded=True)
    vc = VirtualClock(datetime(2017, 10, 29, 3, 10, fold=1, tzinfo=helsinki))
    assert vc().astimezone(UTC) == datetime(2017, 10, 29, 1, 10, tzinfo=UTC)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, timeout=5, what="the day's run to be caught up")
    assert [(o.slot, o.status) for o in mgr.scheduler.outcomes] == [(datetime(2017, 10, 29, 0, 30, tzinfo=UTC), "ok")]
    mgr.stop_scheduler(timeout=5)


def test_clock_jumping_back_or_forward_gives_no_duplicate_and_no_burst(app, stop_all):
    config = write_section(app, local_section(frequency="hourly"))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    h0 = future_hour()
    vc = VirtualClock(h0 + timedelta(minutes=5))
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: len(mgr.scheduler.outcomes) == 1, what="the first run (catch-up of a fresh storage)")

    def slots():
        quiet_for()
        return [(o.slot, o.status) for o in mgr.scheduler.outcomes]

    assert slots() == [(h0, "ok")]
    vc.set(h0 - timedelta(minutes=55))  # NTP steps the clock back an hour
    assert slots() == [(h0, "ok")]
    vc.set(h0 + timedelta(seconds=1))  # ... and h0 comes round again: already done
    assert slots() == [(h0, "ok")]
    vc.set(h0 + timedelta(hours=1, seconds=1))  # the next hour runs normally
    wait_for(lambda: len(mgr.scheduler.outcomes) == 2, what="the next hour's run")
    assert slots() == [(h0, "ok"), (h0 + timedelta(hours=1), "ok")]
    vc.set(h0 + timedelta(days=1, hours=1, minutes=30))  # forward a day: 24 slots missed
    wait_for(lambda: len(mgr.scheduler.outcomes) == 3, what="the run after the jump")
    assert slots() == [(h0, "ok"), (h0 + timedelta(hours=1), "ok"), (h0 + timedelta(days=1, hours=1), "ok")]
    assert len(manifests(storage)) == 3
    mgr.stop_scheduler(timeout=5)


# -- a real scheduler thread, fast virtual time ---------------------------------------------------


@pytest.mark.parametrize("zone_name, cron, start, end, expected", [
    ("America/Chicago", "30 2 * * *", "2021-03-12T12:00", "2021-03-16T12:00",
     ["03-12 02:30 CST", "03-13 02:30 CST", "03-14 03:00 CDT", "03-15 02:30 CDT", "03-16 02:30 CDT"]),
    ("Europe/Helsinki", "30 3 * * *", "2017-10-27T12:00", "2017-10-30T12:00",
     ["10-27 03:30 EEST", "10-28 03:30 EEST", "10-29 03:30 EEST", "10-30 03:30 EET"]),
    ("Europe/Helsinki", "0 0 * * *", "2017-10-27T12:00", "2017-10-31T12:00",
     ["10-27 00:00 EEST", "10-28 00:00 EEST", "10-29 00:00 EEST", "10-30 00:00 EET", "10-31 00:00 EET"]),
])
def test_the_scheduler_loop_runs_once_per_day_across_a_dst_change(app, stop_all, zone_name, cron, start, end,
                                                                  expected):
    """The loop itself (not only the maths), its clock racing through the change a minute at a time.
    (These slots lie in the past, so after the first backup the runs find a newer backup
    and skip: what counts here is when the scheduler decided to run, and how often.)"""
    tz = ZoneInfo(zone_name)
    config = write_section(app, local_section(schedule={"cron": cron, "timezone": zone_name}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    vc = VirtualClock(datetime.fromisoformat(start).replace(tzinfo=tz), auto=True, real_sleep=0)
    stop_at = datetime.fromisoformat(end).replace(tzinfo=tz)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: vc() >= stop_at, timeout=30, what="virtual time to pass the change")
    mgr.stop_scheduler(timeout=5)
    got = [o.slot.astimezone(tz).strftime("%m-%d %H:%M %Z") for o in mgr.scheduler.outcomes]
    assert got[:len(expected)] == expected
    assert len(got) in (len(expected), len(expected) + 1)  # the clock may pass one more slot before stopping
    assert mgr.scheduler.outcomes[0].status == "ok" and len(manifests(app / "backups")) == 1


def test_scheduler_thread_makes_backups_each_slot_applies_retention_and_logs(app, records, stop_all):
    config = write_section(app, local_section(schedule={"cron": "*/10 * * * *", "timezone": "UTC"},
                                              retention={"keep_last": 2}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    start = future_hour() + timedelta(minutes=3)
    vc = VirtualClock(start, auto=True)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: len(mgr.scheduler.outcomes) >= 5, timeout=30, what="five scheduled runs")
    mgr.stop_scheduler(timeout=10)
    assert not mgr.scheduler.running

    outcomes = mgr.scheduler.outcomes
    assert all(o.status == "ok" for o in outcomes), outcomes
    slots = [o.slot for o in outcomes]
    assert slots[0] == start.replace(minute=0)  # fresh storage: caught up at once
    assert all(b - a == timedelta(minutes=10) for a, b in zip(slots, slots[1:])), slots  # every slot, once
    # retention ran after each run, as part of its result
    assert "retention deleted 0" in outcomes[0].message and "retention deleted 0" in outcomes[1].message
    assert all("retention deleted 1" in o.message for o in outcomes[2:]), [o.message for o in outcomes]
    kept = manifests(storage)
    assert len(kept) == 2 and len(archives(storage)) == 2 and temp_files(storage) == []
    newest_two = [Path(o.message.split(" at ", 1)[1].split(";")[0]).name for o in outcomes[-2:]]
    assert sorted(a.split(".tar")[0] for a in newest_two) == [m.removesuffix(".manifest.json") for m in kept]
    # one line per run: slot, result, duration, size and where, next run
    lines = scheduler_lines(records)
    assert any(line.startswith("scheduler started: cron */10 * * * * in UTC") for line in lines)
    for o in outcomes:
        [line] = [m for m in lines if m.startswith(f"scheduled backup for slot {o.slot.isoformat()}: ok in")]
        assert str(storage) in line and "next run at " in line and "retention deleted" in line
    assert lines[-1] == "scheduler stopped"
    assert mgr.last_successful_slot() == slots[-1]


@pytest.mark.slow
def test_stop_during_a_backup_abandons_it_safely(app, private_tmp, records, stop_all):
    gate = app / "gate"
    config = write_section(app, local_section(
        sources=[{"type": "directory", "name": "files", "path": "state/files"},
                 {"type": "command", "name": "dump", "command": gate_command(gate)}]))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    vc = VirtualClock(future_hour())
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: temp_files(storage), what="the scheduled backup to be writing")
    safety = threading.Timer(15, gate.touch)  # were the lock broken, the checks below would wait at the gate
    safety.daemon = True
    safety.start()

    # Meanwhile nothing else may back up this storage, from this process or another manager.
    with pytest.raises(BackupInProgress):
        mgr.create_backup()
    with pytest.raises(BackupInProgress):
        BackupManager.from_config(config).create_backup()

    threading.Timer(0.5, gate.touch).start()  # the dump ends after stop gave up waiting
    mgr.stop_scheduler(timeout=0.1)
    assert not mgr.scheduler.running
    [outcome] = mgr.scheduler.outcomes
    assert outcome.status == "failed" and "abandoned" in outcome.message, outcome
    assert manifests(storage) == [] and archives(storage) == [] and temp_files(storage) == []
    assert list(private_tmp.iterdir()) == []  # the dump's spool file is gone too
    assert mgr.last_successful_slot() is None
    assert any("abandoning the running backup" in r.getMessage() for r in records)
    # the lock went with it
    assert manifests(Path(os.fspath(mgr.create_backup())).parent)


def test_stop_waits_for_a_backup_that_finishes_within_the_timeout(app, stop_all):
    gate = app / "gate"
    config = write_section(app, local_section(
        sources=[{"type": "command", "name": "dump", "command": gate_command(gate)}]))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    vc = VirtualClock(future_hour())
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: temp_files(storage), what="the scheduled backup to be writing")
    threading.Timer(0.5, gate.touch).start()
    t0 = time.monotonic()
    mgr.stop_scheduler(timeout=20)
    assert time.monotonic() - t0 < 10
    [outcome] = mgr.scheduler.outcomes
    assert outcome.status == "ok", outcome
    assert len(manifests(storage)) == 1 and temp_files(storage) == []


def test_start_twice_is_an_error_and_the_context_manager_runs_and_stops(app, stop_all):
    config = write_section(app, local_section())
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    with mgr:  # the real clock: a fresh storage is caught up at once
        scheduler = mgr.scheduler
        assert scheduler.running
        with pytest.raises(SchedulerError, match="already running"):
            mgr.start_scheduler()
        with pytest.raises(SchedulerError, match="already running"):
            scheduler.start()
        assert mgr.scheduler is scheduler and scheduler.running
        wait_for(lambda: scheduler.outcomes, what="the catch-up run")
        assert mgr.status()["next_run"] == iso_utc(scheduler.next_run)
    assert not scheduler.running
    assert [o.status for o in scheduler.outcomes] == ["ok"]  # one scheduler, one run
    assert len(manifests(storage)) == 1


def test_starting_from_two_threads_at_once_starts_one_scheduler(app):
    config = write_section(app, local_section(schedule={"timezone": "UTC", "catch_up": False}))
    done = threading.Event()  # ends every scheduler of this test, orphaned or not

    def wait(seconds):
        return done.wait(min(seconds, 0.05))

    try:
        for _ in range(20):
            mgr = BackupManager.from_config(config)
            barrier = threading.Barrier(2)
            results = []

            def start(mgr=mgr, barrier=barrier, results=results):
                barrier.wait()
                try:
                    mgr.start_scheduler(wait=wait)
                    results.append("started")
                except SchedulerError:
                    results.append("refused")

            threads = [threading.Thread(target=start) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            mgr.stop_scheduler(timeout=5)
            assert sorted(results) == ["refused", "started"]
    finally:
        done.set()


def test_enabled_false_schedules_nothing_and_says_so(app, records, real_cli):
    config = write_section(app, local_section(enabled=False))
    mgr = BackupManager.from_config(config)
    vc = VirtualClock(future_hour(), auto=True)
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    assert not mgr.scheduler.running
    quiet_for()
    assert manifests(app / "backups") == []
    assert any("disabled" in r.getMessage() and "nothing is scheduled" in r.getMessage() for r in records)
    mgr.stop_scheduler()

    proc = real_cli("run", config=config, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "disabled" in proc.stderr and "nothing is scheduled" in proc.stderr
    assert manifests(app / "backups") == []


def test_failed_runs_retry_with_backoff_never_kill_the_thread_and_success_is_recorded_only_on_success(
        app, records, stop_all):
    config = write_section(app, local_section(
        frequency="hourly", schedule={"timezone": "UTC", "retry_attempts": 2, "retry_backoff_seconds": 60}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    storage = app / "backups"
    files = app / "state" / "files"
    h0 = future_hour()

    # A first, good run.
    vc = VirtualClock(h0 + timedelta(seconds=1))
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, what="the first run")
    first_success = mgr.status()["targets"]["local"]["last_success"]
    assert mgr.last_successful_slot() == h0 and first_success

    # The source's directory disappears; the next slot fails, then is retried after 60 s and 120 s more.
    files.rename(app / "state" / "files-away")
    h1 = h0 + timedelta(hours=1)
    outcomes = mgr.scheduler.outcomes

    def statuses():
        quiet_for()
        return [o.status for o in outcomes]

    vc.set(h1 + timedelta(seconds=1))
    wait_for(lambda: len(outcomes) == 2, what="the failing run")
    assert statuses() == ["ok", "failed"] and "does not exist" in outcomes[1].message
    assert mgr.scheduler.running  # the failure did not kill the thread
    assert mgr.last_successful_slot() == h0  # not moved by a failure
    assert mgr.status()["targets"]["local"]["last_success"] == first_success
    vc.set(h1 + timedelta(seconds=59))
    assert statuses() == ["ok", "failed"]  # backoff: not yet
    vc.set(h1 + timedelta(seconds=62))
    wait_for(lambda: len(outcomes) == 3, what="the first retry")
    vc.set(h1 + timedelta(seconds=180))
    assert statuses() == ["ok", "failed", "failed"]  # the second backoff doubles: 120 s
    vc.set(h1 + timedelta(seconds=184))
    wait_for(lambda: len(outcomes) == 4, what="the second retry")
    vc.set(h1 + timedelta(minutes=50))
    assert statuses() == ["ok", "failed", "failed", "failed"]  # retry_attempts: 2, then wait for the next slot
    assert [o.slot for o in outcomes[1:]] == [h1] * 3
    assert mgr.last_successful_slot() == h0 and manifests(storage) and len(manifests(storage)) == 1
    assert sum(m.startswith("retry ") and h1.isoformat() in m for m in scheduler_lines(records)) == 2

    # The directory is back: the next slot runs, and only now is success recorded.
    (app / "state" / "files-away").rename(files)
    h2 = h0 + timedelta(hours=2)
    vc.set(h2 + timedelta(seconds=1))
    wait_for(lambda: len(outcomes) == 5, what="the next slot's run")
    assert outcomes[-1].status == "ok" and outcomes[-1].slot == h2
    assert mgr.last_successful_slot() == h2
    assert mgr.status()["targets"]["local"]["last_success"] >= first_success
    assert len(manifests(storage)) == 2
    mgr.stop_scheduler(timeout=5)


class FlakySource(Source):
    """A third-party source with a bug: raises a plain RuntimeError while ``break-me`` exists."""

    type_name = "flaky"

    def backup(self, writer) -> None:
        if (self.base_dir / "break-me").exists():
            raise RuntimeError("list index out of range (a bug in a plugin)")
        writer.add_stream("data", io.BytesIO(b"fine\n"), 5, mtime=time.time())

    def restore_plan(self, destination):
        return DirectorySwapPlan(destination or self.base_dir / "flaky", f"source {self.name!r}")


class FlakyPlugin:
    @hookimpl
    def eternia_register_sources(self, register):
        register(FlakySource)


def test_an_unexpected_exception_in_a_run_does_not_kill_the_scheduler(app, records, stop_all):
    config = write_section(app, local_section(frequency="hourly", sources=[{"type": "flaky", "name": "flaky"}],
                                              schedule={"timezone": "UTC", "retry_attempts": 0}))
    pm = get_plugin_manager(load_entry_points=False, extra_plugins=(FlakyPlugin(),))
    mgr = BackupManager.from_config(config, plugin_manager=pm)
    stop_all(mgr)
    (app / "break-me").touch()
    h0 = future_hour()
    vc = VirtualClock(h0 + timedelta(seconds=1))
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, what="the crashing run")
    [crashed] = mgr.scheduler.outcomes
    assert crashed.status == "failed" and "RuntimeError" in crashed.message and "list index" in crashed.message
    quiet_for()
    assert mgr.scheduler.running
    assert any(r.exc_info and "crashed" in r.getMessage() for r in records)  # with its traceback, for the bug report
    assert mgr.last_successful_slot() is None

    (app / "break-me").unlink()
    vc.set(h0 + timedelta(hours=1, seconds=1))
    wait_for(lambda: len(mgr.scheduler.outcomes) == 2, what="the next slot's run")
    assert mgr.scheduler.outcomes[1].status == "ok"
    assert mgr.last_successful_slot() == h0 + timedelta(hours=1)
    assert len(manifests(app / "backups")) == 1
    mgr.stop_scheduler(timeout=5)


def test_a_state_directory_that_cannot_be_made_fails_the_run_with_its_reason_not_a_crash(app, records, stop_all):
    (app / "a-file").write_text("not a directory")
    config = write_section(app, local_section(frequency="hourly", state_dir=str(app / "a-file" / "state"),
                                              schedule={"timezone": "UTC", "retry_attempts": 0}))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    vc = VirtualClock(future_hour() + timedelta(seconds=1))
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, what="the run")
    [failed] = mgr.scheduler.outcomes
    assert failed.status == "failed", failed
    assert failed.message.startswith(f"cannot make the state directory {app / 'a-file' / 'state'}"), failed.message
    assert "not a directory" in failed.message and "set by backup.state_dir" in failed.message
    assert not any(r.exc_info for r in records)  # a reason, not a crash with a traceback
    assert mgr.scheduler.running
    mgr.stop_scheduler(timeout=5)


# -- two processes, one local storage -----------------------------------------------------------


def test_two_creates_started_together_make_one_backup_and_the_other_skips(app):
    gate = app / "gate"
    config = write_section(app, local_section(sources=[{"type": "command", "name": "dump",
                                                         "command": gate_command(gate)}]))
    storage = app / "backups"
    procs = [popen_cli(config, "create"), popen_cli(config, "create")]
    try:
        # both are running; one holds the lock and waits at the gate, the other has finished
        done = wait_for(lambda: [p for p in procs if p.poll() is not None], timeout=20,
                        what="one create to give way")
        assert temp_files(storage)  # the other is mid-backup
        gate.touch()
        results = [p.communicate(timeout=20) + (p.returncode,) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert sorted(r[2] for r in results) == [0, 11], results  # 11: skipped, as restic's "failed to lock"
    skipped = [r for r in results if "skipped" in r[1]]
    made = [r for r in results if "skipped" not in r[1]]
    assert len(skipped) == 1 and len(made) == 1, results
    assert skipped[0] == ("", skipped[0][1], 11) and "another backup or cleanup is running" in skipped[0][1]
    assert done[0] is procs[results.index(skipped[0])]
    assert len(manifests(storage)) == 1 and temp_files(storage) == []
    assert made[0][0].strip().startswith(str(storage))


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_create(app, cli):
    gate = app / "gate"
    config = write_section(app, local_section(sources=[{"type": "command", "name": "dump",
                                                         "command": "${DUMP:-echo quick}"}]))
    storage = app / "backups"
    holder = popen_cli(config, "create", env={"DUMP": gate_command(gate)})
    try:
        wait_for(lambda: temp_files(storage), what="the first create to hold the lock")
        lock = next((app / ".backups.eternia").glob("*.lock"))
        assert f"pid {holder.pid}" in lock.read_text()
        os.kill(holder.pid, signal.SIGKILL)  # only the Python process: its dump child lives on
        holder.wait(timeout=10)
        proc = cli("create", config=config, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert "skipped" not in proc.stderr
        assert len(manifests(storage)) == 1
    finally:
        gate.touch()  # the orphaned dump (its own process group) ends instead of waiting forever
        kill_group(holder)


# -- `eternia-backup run` and SIGTERM -------------------------------------------------------------


def run_daemon(app: Path, private_tmp: Path, *args: str):
    gate = app / "gate"
    config = write_section(app, local_section(sources=[
        {"type": "directory", "name": "files", "path": "state/files"},
        {"type": "command", "name": "dump", "command": gate_command(gate)}]))
    proc = popen_cli(config, "run", *args, env={"TMPDIR": str(private_tmp)})
    return proc, gate


@pytest.mark.slow
def test_sigterm_to_run_lets_the_running_backup_finish_within_the_grace(app, private_tmp):
    storage = app / "backups"
    proc, gate = run_daemon(app, private_tmp, "--grace", "30")
    try:
        wait_for(lambda: temp_files(storage), what="`run` to start the catch-up backup")
        proc.send_signal(signal.SIGTERM)
        threading.Timer(0.5, gate.touch).start()
        _, err = proc.communicate(timeout=20)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    assert "scheduler started: daily in UTC" in err and "starting" in err and "next run at" in err
    assert "stopping: waiting up to 30" in err and ": ok in " in err, err
    assert len(manifests(storage)) == 1 and len(archives(storage)) == 1 and temp_files(storage) == []
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_sigterm_to_run_past_the_grace_abandons_the_backup_with_nothing_half_made(app, private_tmp):
    storage = app / "backups"
    proc, gate = run_daemon(app, private_tmp, "--grace", "0.3")
    try:
        wait_for(lambda: temp_files(storage), what="`run` to start the catch-up backup")
        proc.send_signal(signal.SIGTERM)
        threading.Timer(2.0, gate.touch).start()  # the dump outlasts the grace
        _, err = proc.communicate(timeout=20)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    assert "scheduled backup for slot" in err and "starting" in err
    assert "abandoning the running backup" in err and "abandoned" in err
    assert manifests(storage) == [] and archives(storage) == [] and temp_files(storage) == []
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_sigterm_to_run_stops_within_the_grace_even_during_a_long_dump(app, private_tmp):
    storage = app / "backups"
    proc, gate = run_daemon(app, private_tmp, "--grace", "1")
    try:
        wait_for(lambda: temp_files(storage), what="`run` to start the catch-up backup")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=6)  # the grace, and a generous margin
        except subprocess.TimeoutExpired:
            raise AssertionError("`run` still running 5 s after its 1 s grace") from None
        assert proc.returncode == 0
        assert manifests(storage) == [] and temp_files(storage) == []
    finally:
        gate.touch()
        kill_group(proc)


# -- status ------------------------------------------------------------------------------------


def age_newest_manifest(storage: Path, by: timedelta) -> None:
    path = storage / manifests(storage)[-1]
    data = json.loads(path.read_text())
    for key in ("created_at", "finished_at"):
        t = datetime.strptime(data[key], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) - by
        data[key] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path.write_text(json.dumps(data))


def test_status_exit_codes_and_json(app, cli, real_cli):
    config = write_section(app, local_section(
        sources=[{"type": "command", "name": "dump", "command": "${DUMP:-echo dump}"}],
        schedule={"timezone": "Europe/Helsinki"}))
    storage = app / "backups"

    proc = cli("status", config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # no backup at all
    assert "OVERDUE" in proc.stdout and "newest:     none" in proc.stdout
    data = json.loads(cli("status", "--json", config=config).stdout)
    assert data["overdue"] is True and data["newest_backup"] is None

    assert cli("create", config=config).returncode == 0
    proc = cli("status", config=config)
    assert proc.returncode == 0, proc.stdout
    assert "OVERDUE" not in proc.stdout and "schedule:   daily (Europe/Helsinki)" in proc.stdout
    proc = cli("status", "--json", config=config)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    manifest = json.loads((storage / manifests(storage)[0]).read_text())
    now = datetime.now(UTC)
    next_run = datetime.fromisoformat(data["next_run"])
    assert data["enabled"] is True and data["schedule"] == "daily" and data["timezone"] == "Europe/Helsinki"
    assert now < next_run <= now + timedelta(days=1)
    assert next_run.astimezone(ZoneInfo("Europe/Helsinki")).strftime("%H:%M") == "00:00"
    newest = data["newest_backup"]
    assert newest["backup_id"] == manifest["backup_id"] and newest["size"] == manifest["archive"]["size"]
    assert 0 <= newest["age_seconds"] < 60 and newest["copies"] == ["local"]
    assert data["overdue"] is False and data["overdue_after_seconds"] == 2 * 86400
    assert data["targets"]["local"]["last_success"] and data["targets"]["local"]["listing_error"] is None

    # A failed backup shows as the target's last failure; a fresh complete backup still counts.
    proc = cli("create", config=config, env={"DUMP": "echo disk on fire >&2; exit 4"})
    assert proc.returncode == 1
    proc = cli("status", "--json", config=config)
    assert proc.returncode == 0
    target = json.loads(proc.stdout)["targets"]["local"]
    assert target["last_failure"] and "exited with status 4" in target["last_error"]

    # without a timezone, the machine's zone is used and named
    section = yaml.safe_load(config.read_text())
    del section["backup"]["schedule"]["timezone"]
    config.write_text(yaml.safe_dump(section))
    # (TZ is read by a new process: a real one)
    data = json.loads(real_cli("status", "--json", config=config, env={"TZ": "America/Chicago"}).stdout)
    assert data["timezone"] == "America/Chicago"
    assert datetime.fromisoformat(data["next_run"]).astimezone(ZoneInfo("America/Chicago")).strftime("%H:%M") == "00:00"

    age_newest_manifest(storage, timedelta(days=1, hours=12))  # older than a period, within two
    assert cli("status", config=config).returncode == 0
    age_newest_manifest(storage, timedelta(days=1))  # now 2.5 days: more than twice daily
    proc = cli("status", config=config)
    assert proc.returncode == 1 and "OVERDUE" in proc.stdout
    data = json.loads(cli("status", "--json", config=config).stdout)
    assert data["overdue"] is True and data["newest_backup"]["age_seconds"] >= 2.5 * 86400 - 60
    assert "in the last 2 d (twice" in proc.stdout or "in the last 48 h (twice" in proc.stdout, proc.stdout


def test_status_says_overdue_in_minutes_for_a_short_schedule_and_not_at_all_when_disabled(app, cli):
    config = write_section(app, local_section(schedule={"cron": "*/5 * * * *"}))
    proc = cli("status", config=config)
    assert proc.returncode == 1 and "OVERDUE: no complete backup in the last 10 min" in proc.stdout, proc.stdout
    config = write_section(app, local_section(enabled=False))
    proc = cli("status", config=config)  # no backup at all, but no scheduled run is due either
    assert proc.returncode == 0 and "OVERDUE" not in proc.stdout, proc.stdout
    assert "next run:   none (backup.enabled is false" in proc.stdout, proc.stdout
    assert json.loads(cli("status", "--json", config=config).stdout)["overdue"] is False


# -- webhook notifier and metrics -----------------------------------------------------------------


SECRET = "hunter2-SECRET-value-7f3a"


def webhook_config(app: Path, url: str, **webhook) -> Path:
    return write_section(app, local_section(
        sources=[{"type": "command", "name": "dump", "command": "${DUMP:-echo dump}"}],
        targets=[{"name": "local", "url": "backups", "options": {"secret": "${APP_SECRET}"}}],
        storage_path=None,
        notify={"webhook": {"url": url, "timeout_seconds": 2, **webhook}}))


def test_webhook_receives_the_failure_with_the_error_and_no_secret(app, cli, receiver):
    config = webhook_config(app, f"{receiver.base}/hooks/backup")
    # the dump fails and prints the secret in its error output
    env = {"APP_SECRET": SECRET, "DUMP": 'echo "cannot log in with $APP_SECRET" >&2; exit 3'}
    proc = cli("create", config=config, env=env)
    assert proc.returncode == 1 and SECRET not in proc.stderr
    [(_, path, headers, body)] = receiver.requests
    assert path == "/hooks/backup" and headers["Content-Type"] == "application/json"
    assert SECRET.encode() not in body
    event = json.loads(body)
    assert event["event"] == "backup.failed" and event["name"] == "eternia-backup"
    assert event["environment"] == "default" and event["host"] == socket.gethostname()
    assert "exited with status 3" in event["error"] and "cannot log in with" in event["error"]
    assert event["backup_id"]

    # a success is not sent unless asked for
    proc = cli("create", config=config, env={"APP_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert len(receiver.requests) == 1


def test_webhook_on_success_sends_the_success(app, cli, receiver):
    config = webhook_config(app, f"{receiver.base}/hooks/backup", on_success=True)
    proc = cli("create", "--json", config=config, env={"APP_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    [(_, _, _, body)] = receiver.requests
    event = json.loads(body)
    assert event["event"] == "backup.succeeded" and event["backup_id"] == result["backup_id"]
    assert event["size"] == result["size"] and event["copies"][0]["target"] == "local"
    assert SECRET.encode() not in body


@pytest.mark.slow
def test_an_unreachable_or_silent_webhook_never_fails_the_backup(app, cli):
    storage = app / "backups"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = webhook_config(app, f"http://127.0.0.1:{port}/hook", on_success=True)
    proc = cli("create", config=config, env={"APP_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert "could not deliver backup.succeeded" in proc.stderr
    assert len(manifests(storage)) == 1

    # a server that accepts the connection and never answers: the timeout (2 s) bounds the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        config = webhook_config(app, f"http://127.0.0.1:{silent.getsockname()[1]}/hook", on_success=True)
        t0 = time.monotonic()
        proc = cli("create", config=config, env={"APP_SECRET": SECRET})
        assert time.monotonic() - t0 < 15
    assert proc.returncode == 0, proc.stderr
    assert "could not deliver" in proc.stderr and len(manifests(storage)) == 2


def read_metrics(path: Path) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, s.labels.get("target"))] = s.value
    return out


def test_metrics_textfile_after_a_success_and_a_failure(app, cli):
    config = write_section(app, local_section(
        sources=[{"type": "command", "name": "dump", "command": "${DUMP:-echo dump}"}],
        metrics={"textfile": "metrics/eternia-backup.prom"}))
    textfile = app / "metrics" / "eternia-backup.prom"
    before = time.time()
    assert cli("create", config=config).returncode == 0
    size = json.loads((app / "backups" / manifests(app / "backups")[0]).read_text())["archive"]["size"]
    assert cli("create", config=config, env={"DUMP": "exit 5"}).returncode == 1
    m = read_metrics(textfile)
    assert before - 1 <= m[("eternia_backup_last_success_timestamp_seconds", "local")] <= time.time() + 1
    assert m[("eternia_backup_last_duration_seconds", "local")] >= 0
    assert m[("eternia_backup_last_size_bytes", "local")] == size
    assert m[("eternia_backup_failures_total", "local")] == 1
    text = textfile.read_text()
    assert 'name="eternia-backup"' in text and 'environment="default"' in text
    assert [p.name for p in textfile.parent.iterdir()] == ["eternia-backup.prom"]  # no temp file left


def test_a_missing_source_directory_is_counted_and_alerted(app, cli, receiver):
    config = write_section(app, local_section(metrics={"textfile": "metrics.prom"},
                                              notify={"webhook": {"url": f"{receiver.base}/hooks/backup"}}))
    assert cli("create", config=config).returncode == 0
    (app / "state" / "files").rename(app / "state" / "moved")
    proc = cli("create", config=config)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    target = json.loads(cli("status", "--json", config=config).stdout)["targets"]["local"]
    assert target.get("last_failure") and "does not exist" in target.get("last_error", "")
    assert read_metrics(app / "metrics.prom")[("eternia_backup_failures_total", "local")] == 1
    assert [json.loads(b)["event"] for _, _, _, b in receiver.requests] == ["backup.failed"]


# -- replicas sharing one S3 bucket -----------------------------------------------------------------

REPLICA = r"""
import json, logging, sys, time
from datetime import datetime
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from eternia_backup.manager import BackupManager
mgr = BackupManager.from_config(sys.argv[1])
mgr.prepare_scheduled_runs()
print(json.dumps({"lease": mgr.lease_target is not None}), flush=True)
for slot, at in json.loads(sys.argv[2]):
    time.sleep(max(0.0, at - time.time()))
    out = mgr.run_scheduled(datetime.fromisoformat(slot))
    print(json.dumps({"slot": slot, "status": out.status, "message": out.message}), flush=True)
"""


def replica_config(app: Path, bucket: str, endpoint: str, n: int, command: str = "echo payload") -> Path:
    return write_section(app, {
        "name": "app",
        "sources": [{"type": "command", "name": "dump", "command": command}],
        "targets": [{"name": "cloud", "url": f"s3://{bucket}/shared",
                     "options": {"client_kwargs": {"endpoint_url": endpoint}}}],
        "state_dir": f"replica-{n}-state",  # another host: its own lock and state
        "schedule": {"timezone": "UTC", "lease_ttl_seconds": 10},
    }, name=f"replica-{n}.yaml")


def start_replica(config: Path, plan: list[tuple[datetime, float]]) -> subprocess.Popen:
    items = json.dumps([[slot.isoformat(), at] for slot, at in plan])
    return subprocess.Popen([sys.executable, "-c", REPLICA, str(config), items], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def bucket_keys(s3_server, bucket: str) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in s3_server.client().find(bucket))


def bucket_manifests(s3_server, bucket: str) -> list[dict]:
    fs = s3_server.client()
    return [json.loads(fs.cat(k)) for k in sorted(fs.find(bucket)) if k.endswith(".manifest.json")]


def lease_body(s3_server, bucket: str) -> dict | None:
    fs = s3_server.client()
    key = f"{bucket}/shared/app-default.lease"
    try:
        return json.loads(fs.cat(key))
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_two_replicas_make_exactly_one_backup_per_slot(app, s3_env, s3_server, s3_bucket):
    configs = [replica_config(app, s3_bucket, s3_server.endpoint, n) for n in (1, 2)]
    first = time.time() + 3
    plan = [(datetime.fromtimestamp(first + 2.5 * i, UTC), first + 2.5 * i) for i in range(3)]
    procs = [start_replica(c, plan) for c in configs]
    try:
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    lines = [[json.loads(x) for x in out.splitlines()] for out, _ in outputs]
    assert [ls[0] for ls in lines] == [{"lease": True}] * 2  # SeaweedFS enforces If-None-Match
    runs = [r for ls in lines for r in ls[1:]]
    for slot, _ in plan:
        got = sorted(r["status"] for r in runs if r["slot"] == slot.isoformat())
        assert got == ["ok", "skipped"], (slot, runs)
    made = bucket_manifests(s3_server, s3_bucket)
    assert len(made) == 3, bucket_keys(s3_server, s3_bucket)
    created = sorted(datetime.strptime(m["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) for m in made)
    for (slot, _), t in zip(plan, created):
        assert t >= slot
    assert lease_body(s3_server, s3_bucket) is None  # released after each slot
    # a replica that comes late to the last slot (slow clock, restarted) takes the free lease
    # and still makes no second backup
    late = BackupManager.from_config(replica_config(app, s3_bucket, s3_server.endpoint, 3))
    late.prepare_scheduled_runs()
    outcome = late.run_scheduled(plan[-1][0])
    assert outcome.status == "skipped" and "already exists" in outcome.message, outcome
    assert len(bucket_manifests(s3_server, s3_bucket)) == 3
    skipped = [r["message"] for r in runs if r["status"] == "skipped"]
    assert all("another replica holds the lease" in m or "already exists" in m for m in skipped), skipped


@pytest.mark.slow
def test_a_replica_killed_holding_the_lease_is_taken_over_after_expiry(app, s3_env, s3_server, s3_bucket, records):
    gate = app / "never-opened"
    slot = datetime.now(UTC).replace(microsecond=0)
    holder = start_replica(replica_config(app, s3_bucket, s3_server.endpoint, 1, gate_command(gate)),
                           [(slot, 0)])
    try:
        wait_for(lambda: lease_body(s3_server, s3_bucket), timeout=20, what="the first replica's lease")
        os.killpg(holder.pid, signal.SIGKILL)  # the replica and its dump, at once
        holder.wait(timeout=10)
    finally:
        gate.touch()  # a dump in its own process group survives the kill: let it end
        kill_group(holder)
    lease = lease_body(s3_server, s3_bucket)
    assert lease and str(holder.pid) in lease["owner"]

    other = BackupManager.from_config(replica_config(app, s3_bucket, s3_server.endpoint, 2))
    other.prepare_scheduled_runs()
    assert other.lease_target is not None
    early = other.run_scheduled(slot)  # the dead holder's lease has not expired: never taken early
    assert early.status == "skipped" and "another replica holds the lease" in early.message
    assert bucket_manifests(s3_server, s3_bucket) == []

    time.sleep(max(0.0, lease["expires_at"] - time.time()) + 0.5)
    late = other.run_scheduled(slot)
    assert late.status == "ok", late
    assert any("took over the expired lease" in r.getMessage() for r in records)
    [made] = bucket_manifests(s3_server, s3_bucket)
    assert made["created_at"] >= slot.strftime("%Y-%m-%dT%H:%M:%S")
    assert lease_body(s3_server, s3_bucket) is None


@pytest.mark.slow
def test_a_holder_paused_past_its_lease_does_not_commit_after_it_resumes(app, s3_env, s3_server, s3_bucket):
    gate, started = app / "gate", app / "dump-started"
    slot = datetime.now(UTC).replace(microsecond=0)
    holder = start_replica(replica_config(app, s3_bucket, s3_server.endpoint, 1,
                                          gate_command(gate, "stale", started)), [(slot, 0)])
    try:
        wait_for(lambda: lease_body(s3_server, s3_bucket), timeout=20, what="the first replica's lease")
        # paused while its dump runs (on a slow machine, stopping it as soon as the lease appeared could
        # catch it before it looked for an existing backup: it then skips the slot, also safely)
        wait_for(started.exists, timeout=20, what="the first replica's dump")
        os.kill(holder.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM ...
        lease = lease_body(s3_server, s3_bucket)
        gate.touch()  # its dump is complete: on waking it has only to commit

        time.sleep(max(0.0, lease["expires_at"] - time.time()) + 0.5)
        other = BackupManager.from_config(replica_config(app, s3_bucket, s3_server.endpoint, 2))
        other.prepare_scheduled_runs()
        taken = other.run_scheduled(slot)
        assert taken.status == "ok", taken

        os.kill(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=30)
    finally:
        kill_group(holder)
    assert holder.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "failed" and "lease" in result["message"] and "lost" in result["message"], result
    [made] = bucket_manifests(s3_server, s3_bucket)  # the replica that held the lease, only
    keys = bucket_keys(s3_server, s3_bucket)
    assert len(keys) == 2 and all(made["backup_id"] in k for k in keys), keys  # its archive and manifest
    uploads = s3_server.client().call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads") or []
    assert uploads == []  # the paused holder aborted its upload


@pytest.mark.slow
def test_a_store_without_conditional_writes_warns_at_start_and_uses_local_locking(app, records, stop_all):
    memory = f"memory://eternia-sched-{uuid.uuid4().hex[:8]}/shared"
    config = write_section(app, local_section(targets=[{"name": "local", "url": "backups"},
                                                       {"name": "mem", "url": memory}], storage_path=None))
    mgr = BackupManager.from_config(config)
    stop_all(mgr)
    vc = VirtualClock(future_hour())
    mgr.start_scheduler(clock=vc, wait=vc.wait)
    wait_for(lambda: mgr.scheduler.outcomes, what="the catch-up run")
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("'mem' does not enforce conditional writes" in w and "local locking" in w for w in warnings), warnings
    assert mgr.lease_target is None
    [outcome] = mgr.scheduler.outcomes
    assert outcome.status == "ok", outcome
    [entry] = mgr.list_backups()
    assert sorted(c.target.name for c in entry.copies) == ["local", "mem"]
    mgr.stop_scheduler(timeout=5)
