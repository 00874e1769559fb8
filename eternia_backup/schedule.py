"""When backups are due: cron maths in a time zone, nothing else.

Frequencies are cron expressions at the natural boundaries (start of the hour,
midnight, Monday, the 1st; :data:`eternia_backup.config.FREQUENCY_CRON`). Slots are computed with cronsim
on wall-clock time in the configured zone (zoneinfo) and compared in UTC, so a
daylight-saving change neither skips nor doubles a daily run: a 02:30 that does
not exist runs at 03:00, a 03:30 that happens twice runs once. Hourly slots
follow real hours.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim

UTC = timezone.utc


def local_zone() -> tuple[tzinfo, str]:
    """The machine's zone, DST rules included, and a name for it."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            key = target.split("zoneinfo/", 1)[1]
            return ZoneInfo(key), key
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime"), "localtime"
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC, "UTC"


def zone(name: str | None) -> tuple[tzinfo, str]:
    return (ZoneInfo(name), name) if name else local_zone()


def next_slot(cron: str, after: datetime, tz: tzinfo) -> datetime:
    """The first slot strictly after ``after`` (aware), in UTC."""
    after = after.astimezone(UTC)
    for t in CronSim(cron, after.astimezone(tz).replace(microsecond=0)):
        u = t.astimezone(UTC)
        if u > after:
            return u
    raise ValueError(f"cron expression {cron!r} has no future slot")


def previous_slot(cron: str, at: datetime, tz: tzinfo) -> datetime:
    """The latest slot at or before ``at`` (aware), in UTC."""
    at = at.astimezone(UTC)
    start = (at + timedelta(seconds=1)).astimezone(tz).replace(microsecond=0)
    found = None
    for t in CronSim(cron, start, reverse=True):
        u = t.astimezone(UTC)
        if u <= at:
            found = u
            break
    if found is None:
        raise ValueError(f"cron expression {cron!r} has no past slot")
    # Walking backwards in wall-clock time can miss slots when ``at`` lies in
    # the repeated hour after a fall-back (03:10 the second time comes "before"
    # 03:30 the first time on the wall clock, though after it in real time).
    # ``found`` is a slot at or before ``at``; walk forward, which is exact.
    while (n := next_slot(cron, found, tz)) <= at:
        found = n
    return found


def period(cron: str, tz: tzinfo, around: datetime) -> timedelta:
    """The longest gap between consecutive slots near ``around`` (a month at most)."""
    t = previous_slot(cron, around, tz)
    longest = timedelta(0)
    for _ in range(6):
        n = next_slot(cron, t, tz)
        longest = max(longest, n - t)
        t = n
    return longest
