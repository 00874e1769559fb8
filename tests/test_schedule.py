"""When backups are due: the pure cron and calendar maths of eternia_backup.schedule.

What a user relies on: ``frequency`` fires at the start of each hour, at
midnight, at midnight on Monday, at midnight on the first of the month, in the
configured zone; a cron expression works instead; across real daylight-saving
changes (2021-03-14 America/Chicago, 2017-10-29 Europe/Helsinki, and the other
halves of those years) a daily run happens exactly once per local day, the next
time always moves forward, and hourly follows real hours (23 on the short day,
25 on the long one). No I/O, no clock of its own: every "now" is given.
"""

from __future__ import annotations

import collections
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from eternia_backup.config import parse_config
from eternia_backup.errors import ConfigError
from eternia_backup.schedule import local_zone, next_slot, period, previous_slot, zone

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
CHICAGO = ZoneInfo("America/Chicago")
HELSINKI = ZoneInfo("Europe/Helsinki")


def schedule_of(tmp_path, **section):
    """The effective Schedule for a ``backup:`` section, through the real config loader."""
    return parse_config({"storage_path": "backups", **section}, base_dir=tmp_path, environ={}).schedule


def local(tz, *args, fold=0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)


def slots_between(cron: str, tz, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while True:
        t = next_slot(cron, t, tz)
        if t >= end:
            return out
        out.append(t)


# -- the four frequencies at their boundaries -------------------------------------------


@pytest.mark.parametrize("frequency, after, expected", [
    # start of each hour
    ("hourly", (2024, 5, 15, 10, 17, 33), (2024, 5, 15, 11, 0)),
    ("hourly", (2024, 5, 15, 10, 59, 59), (2024, 5, 15, 11, 0)),
    ("hourly", (2024, 5, 15, 11, 0, 0), (2024, 5, 15, 12, 0)),  # strictly after: not the same hour again
    ("hourly", (2024, 12, 31, 23, 30, 0), (2025, 1, 1, 0, 0)),
    # midnight
    ("daily", (2024, 5, 15, 10, 17, 33), (2024, 5, 16, 0, 0)),
    ("daily", (2024, 5, 15, 23, 59, 59), (2024, 5, 16, 0, 0)),
    ("daily", (2024, 5, 16, 0, 0, 0), (2024, 5, 17, 0, 0)),
    ("daily", (2024, 2, 28, 12, 0, 0), (2024, 2, 29, 0, 0)),  # leap day
    # midnight on Monday (2024-05-20 is a Monday)
    ("weekly", (2024, 5, 15, 10, 0, 0), (2024, 5, 20, 0, 0)),
    ("weekly", (2024, 5, 19, 23, 59, 59), (2024, 5, 20, 0, 0)),
    ("weekly", (2024, 5, 20, 0, 0, 0), (2024, 5, 27, 0, 0)),
    ("weekly", (2024, 12, 31, 9, 0, 0), (2025, 1, 6, 0, 0)),
    # midnight on the first of the month
    ("monthly", (2024, 1, 31, 23, 59, 59), (2024, 2, 1, 0, 0)),
    ("monthly", (2024, 2, 1, 0, 0, 0), (2024, 3, 1, 0, 0)),
    ("monthly", (2024, 2, 15, 8, 0, 0), (2024, 3, 1, 0, 0)),
    ("monthly", (2024, 12, 1, 0, 0, 1), (2025, 1, 1, 0, 0)),
])
def test_frequency_fires_at_its_boundary_in_the_configured_zone(tmp_path, frequency, after, expected):
    s = schedule_of(tmp_path, frequency=frequency, timezone="Europe/Berlin")
    assert s.label == frequency and s.timezone == "Europe/Berlin"
    tz, _ = zone(s.timezone)
    got = next_slot(s.cron, local(BERLIN, *after), tz)
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)  # compared in UTC
    assert got == local(BERLIN, *expected)
    # the slot itself is "at or before" itself, and nothing lies between it and the next
    assert previous_slot(s.cron, got, tz) == got
    assert previous_slot(s.cron, got - timedelta(microseconds=1), tz) < got


def test_weekly_is_monday_and_monthly_the_first_every_time(tmp_path):
    for frequency, check in (("weekly", lambda d: d.weekday() == 0), ("monthly", lambda d: d.day == 1)):
        s = schedule_of(tmp_path, frequency=frequency, timezone="Europe/Berlin")
        slots = slots_between(s.cron, BERLIN, local(BERLIN, 2023, 12, 20), local(BERLIN, 2025, 2, 1))
        assert slots, frequency
        for t in slots:
            wall = t.astimezone(BERLIN)
            assert check(wall) and (wall.hour, wall.minute, wall.second) == (0, 0, 0), (frequency, wall)
        assert len(slots) == (58 if frequency == "weekly" else 13)  # 2024-01-01 .. 2025-01-01


def test_midnight_is_the_zones_midnight_not_utcs(tmp_path):
    after = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)
    tokyo = next_slot(schedule_of(tmp_path, frequency="daily", timezone="Asia/Tokyo").cron, after, ZoneInfo("Asia/Tokyo"))
    chicago = next_slot(schedule_of(tmp_path, frequency="daily", timezone="America/Chicago").cron, after, CHICAGO)
    assert tokyo == datetime(2024, 5, 15, 15, 0, tzinfo=UTC)  # 00:00 JST on the 16th
    assert chicago == datetime(2024, 5, 16, 5, 0, tzinfo=UTC)  # 00:00 CDT on the 16th


def test_no_timezone_means_the_machines_zone_and_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "America/Chicago")
    s = schedule_of(tmp_path, frequency="daily")
    assert s.timezone is None
    tz, name = zone(s.timezone)
    assert name == "America/Chicago"
    assert next_slot(s.cron, datetime(2024, 1, 10, 12, tzinfo=UTC), tz) == datetime(2024, 1, 11, 6, tzinfo=UTC)
    assert local_zone()[1] == "America/Chicago"


# -- cron expressions ------------------------------------------------------------------


@pytest.mark.parametrize("cron, after, expected", [
    ("30 2 * * *", (2024, 5, 15, 1, 0), (2024, 5, 15, 2, 30)),
    ("30 2 * * *", (2024, 5, 15, 2, 30), (2024, 5, 16, 2, 30)),
    ("*/15 * * * *", (2024, 5, 15, 10, 14, 59), (2024, 5, 15, 10, 15)),
    ("*/15 * * * *", (2024, 5, 15, 10, 45), (2024, 5, 15, 11, 0)),
    ("0 9 * * 1-5", (2024, 5, 17, 9, 0), (2024, 5, 20, 9, 0)),  # Friday 09:00 -> Monday 09:00
    ("0 3 1,15 * *", (2024, 5, 2, 0, 0), (2024, 5, 15, 3, 0)),
    ("0 0 29 2 *", (2024, 3, 1, 0, 0), (2028, 2, 29, 0, 0)),
])
def test_cron_expression_instead_of_frequency(tmp_path, cron, after, expected):
    s = schedule_of(tmp_path, schedule={"cron": cron, "timezone": "Europe/Berlin"})
    assert s.cron == cron and s.label == f"cron {cron}"
    assert next_slot(s.cron, local(BERLIN, *after), BERLIN) == local(BERLIN, *expected)


@pytest.mark.parametrize("section, needle", [
    ({"schedule": {"cron": "61 * * * *"}}, "backup.schedule.cron"),
    ({"schedule": {"cron": "0 0 30 2 *"}}, "backup.schedule.cron"),  # never happens
    ({"schedule": {"cron": "@daily"}}, "backup.schedule.cron"),
    ({"schedule": {"cron": "0 * * * *"}, "frequency": "daily"}, "both set"),
    ({"timezone": "Mars/Olympus_Mons"}, "backup.timezone"),
    ({"schedule": {"timezone": "CEST"}}, "backup.schedule.timezone"),
    ({"timezone": "Europe/Berlin", "schedule": {"timezone": "Europe/Paris"}}, "disagree"),
])
def test_a_schedule_that_cannot_work_is_refused_at_load(tmp_path, section, needle):
    with pytest.raises(ConfigError, match=needle):
        schedule_of(tmp_path, **section)


# -- daylight saving -------------------------------------------------------------------

# (zone, a local date of a clock change, what happens that night)
DST_DAYS = [
    (CHICAGO, (2021, 3, 14), "spring forward 02:00 -> 03:00"),
    (CHICAGO, (2021, 11, 7), "fall back 02:00 -> 01:00"),
    (HELSINKI, (2017, 10, 29), "fall back 04:00 -> 03:00"),
    (HELSINKI, (2017, 3, 26), "spring forward 03:00 -> 04:00"),
]
DAILY_CRONS = ["0 0 * * *", "30 2 * * *", "30 1 * * *", "30 3 * * *", "0 3 * * *"]


@pytest.mark.parametrize("tz, day, what", DST_DAYS, ids=[f"{t.key}-{d[0]}-{d[1]:02}" for t, d, _ in DST_DAYS])
@pytest.mark.parametrize("cron", DAILY_CRONS)
def test_daily_runs_exactly_once_per_local_day_across_a_dst_change(tz, day, what, cron):
    minute = timedelta(minutes=1)
    slots = slots_between(cron, tz, local(tz, *day) - timedelta(days=3) - minute,
                          local(tz, *day) + timedelta(days=4) - minute)
    per_day = collections.Counter(t.astimezone(tz).date() for t in slots)
    assert sorted(per_day) == [(local(tz, *day) + timedelta(days=d)).date() for d in range(-3, 4)], what
    assert set(per_day.values()) == {1}, (what, per_day)
    assert slots == sorted(slots) and len(set(slots)) == len(slots)
    gaps = {b - a for a, b in zip(slots, slots[1:])}
    assert gaps <= {timedelta(hours=h) for h in (23, 23.5, 24, 24.5, 25)}, (what, gaps)


def test_the_issues_two_transitions_at_their_exact_local_times():
    # Chicago, 2021-03-14: 02:30 does not exist; the 02:30 run happens at 03:00 CDT, once.
    cron = "30 2 * * *"
    got = slots_between(cron, CHICAGO, local(CHICAGO, 2021, 3, 13), local(CHICAGO, 2021, 3, 16))
    assert [t.astimezone(CHICAGO).strftime("%m-%d %H:%M %Z") for t in got] == [
        "03-13 02:30 CST", "03-14 03:00 CDT", "03-15 02:30 CDT"]
    # Midnight on the short day is still one run, 24 real hours after the previous one.
    got = slots_between("0 0 * * *", CHICAGO, local(CHICAGO, 2021, 3, 13, 12), local(CHICAGO, 2021, 3, 16))
    assert [t.isoformat() for t in got] == ["2021-03-14T06:00:00+00:00", "2021-03-15T05:00:00+00:00"]
    # Helsinki, 2017-10-29: 03:30 happens twice on the wall clock; the run happens once,
    # and the day's 02:30 and midnight runs are unaffected.
    got = slots_between("30 3 * * *", HELSINKI, local(HELSINKI, 2017, 10, 28, 12), local(HELSINKI, 2017, 10, 30, 12))
    assert [t.isoformat() for t in got] == ["2017-10-29T00:30:00+00:00", "2017-10-30T01:30:00+00:00"]
    got = slots_between(cron, HELSINKI, local(HELSINKI, 2017, 10, 28, 12), local(HELSINKI, 2017, 10, 30, 12))
    assert [t.isoformat() for t in got] == ["2017-10-28T23:30:00+00:00", "2017-10-30T00:30:00+00:00"]


@pytest.mark.parametrize("tz, day, what", DST_DAYS, ids=[f"{t.key}-{d[0]}-{d[1]:02}" for t, d, _ in DST_DAYS])
def test_hourly_follows_real_hours_across_a_dst_change(tz, day, what):
    start, end = local(tz, *day) - timedelta(days=1), local(tz, *day) + timedelta(days=2)
    slots = slots_between("0 * * * *", tz, start, end)
    assert {b - a for a, b in zip(slots, slots[1:])} == {timedelta(hours=1)}, what
    per_day = collections.Counter(t.astimezone(tz).date() for t in slots)
    expected = 23 if "spring" in what else 25
    assert per_day[local(tz, *day).date()] == expected, what
    assert per_day[(local(tz, *day) + timedelta(days=1)).date()] == 24


@pytest.mark.parametrize("tz, day, what", DST_DAYS, ids=[f"{t.key}-{d[0]}-{d[1]:02}" for t, d, _ in DST_DAYS])
@pytest.mark.parametrize("cron", DAILY_CRONS + ["0 * * * *", "*/20 * * * *", "15 0-6 * * *"])
def test_next_time_always_moves_forward_and_previous_is_the_latest(tz, day, what, cron):
    """From any moment around the change (every 7m13s): previous <= now < next, with no
    slot in between, and previous is exactly the slot before next."""
    start = datetime(*day, tzinfo=UTC) - timedelta(hours=14)
    known = slots_between(cron, tz, start - timedelta(days=2), start + timedelta(days=3))
    t = start
    while t < start + timedelta(hours=40):
        nxt, prev = next_slot(cron, t, tz), previous_slot(cron, t, tz)
        assert prev <= t < nxt, (what, cron, t)
        expected_prev = max(s for s in known if s <= t)
        assert prev == expected_prev, (what, cron, t.astimezone(tz), prev.astimezone(tz), expected_prev.astimezone(tz))
        assert nxt == min(s for s in known if s > t)
        assert next_slot(cron, prev, tz) == nxt
        t += timedelta(minutes=7, seconds=13)


def test_previous_slot_inside_the_repeated_hour_is_not_yesterdays():
    """Helsinki 2017-10-29: at 03:10 the *second* time (01:10 UTC), today's 03:30 run
    (00:30 UTC, 40 minutes ago) is the latest slot. Were yesterday's returned, a
    scheduler started then would think the day's slot handled and skip the day."""
    at = local(HELSINKI, 2017, 10, 29, 3, 10, fold=1)
    assert at.astimezone(UTC) == datetime(2017, 10, 29, 1, 10, tzinfo=UTC)
    assert previous_slot("30 3 * * *", at, HELSINKI) == datetime(2017, 10, 29, 0, 30, tzinfo=UTC)
    chicago = local(CHICAGO, 2021, 11, 7, 1, 5, fold=1)  # 01:05 CST, after 01:30 CDT
    assert previous_slot("30 1 * * *", chicago, CHICAGO) == datetime(2021, 11, 7, 6, 30, tzinfo=UTC)


# -- the period behind `status`'s "overdue" -------------------------------------------


@pytest.mark.parametrize("frequency, expected", [
    ("hourly", timedelta(hours=1)), ("daily", timedelta(days=1)),
    ("weekly", timedelta(days=7)), ("monthly", timedelta(days=31)),
])
def test_period_of_each_frequency(tmp_path, frequency, expected):
    cron = schedule_of(tmp_path, frequency=frequency).cron
    assert period(cron, UTC, datetime(2024, 5, 15, 10, 0, tzinfo=UTC)) == expected


def test_period_around_a_long_dst_day_is_the_longest_gap():
    # the 25-hour day must not make a backup made at its start look overdue early
    assert period("0 0 * * *", CHICAGO, local(CHICAGO, 2021, 11, 6, 12)) == timedelta(hours=25)
    assert period("30 2 * * *", ZoneInfo("Asia/Tokyo"), datetime(2024, 5, 15, tzinfo=UTC)) == timedelta(days=1)
