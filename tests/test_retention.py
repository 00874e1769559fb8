"""plan_retention: which backups a retention policy keeps and deletes (pure, no I/O).

The rules a user relies on: retention_days 0 keeps everything; the window keeps
young backups; keep_* counts count buckets *that have a backup* (so downtime never
turns them into "delete everything", kopia#3758); buckets follow the configured time
zone; the newest intact backup always survives; damaged backups never stand in for
a kept copy. Then properties over random sets, policies, clocks, zones and orders.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eternia_backup.config import Retention
from eternia_backup.retention import Candidate, plan_retention

UTC = timezone.utc
NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)


def backup(at: datetime, ok: bool = True, backup_id: str | None = None) -> Candidate:
    return Candidate(backup_id or f"{at:%Y%m%dT%H%M%SZ}-{'ok' if ok else 'bad'}", at, ok)


def ago(**delta) -> datetime:
    return NOW - timedelta(**delta)


def kept_ids(plan) -> set[str]:
    return set(plan.keep)


# -- retention_days and the window ----------------------------------------------------


def test_retention_days_zero_keeps_everything_even_damaged_and_ancient():
    cands = [backup(ago(days=d)) for d in (0, 1, 400, 4000)] + [backup(ago(days=900), ok=False)]
    plan = plan_retention(cands, Retention(days=0), NOW, UTC)
    assert plan.delete == []
    assert kept_ids(plan) == {c.backup_id for c in cands}


def test_days_window_keeps_younger_and_deletes_older():
    inside = [backup(ago(days=d)) for d in (0, 3, 6)]
    edge = backup(ago(days=7))  # exactly at the cutoff: still inside
    outside = [backup(ago(days=7, seconds=1)), backup(ago(days=8)), backup(ago(days=100))]
    plan = plan_retention(inside + [edge] + outside, Retention(days=7), NOW, UTC)
    assert kept_ids(plan) == {c.backup_id for c in inside + [edge]}
    assert set(plan.delete) == {c.backup_id for c in outside}


def test_damaged_backups_inside_the_window_stay_and_outside_go():
    young_bad = backup(ago(days=1), ok=False)
    old_bad = backup(ago(days=30), ok=False)
    good = backup(ago(hours=1))
    plan = plan_retention([young_bad, old_bad, good], Retention(days=7), NOW, UTC)
    assert young_bad.backup_id in plan.keep
    assert plan.delete == [old_bad.backup_id]


# -- keep_last and the bucket counts -----------------------------------------------


def test_keep_last_keeps_the_n_newest_beyond_the_window():
    cands = [backup(ago(days=d)) for d in range(10, 20)]
    plan = plan_retention(cands, Retention(days=7, keep_last=3), NOW, UTC)
    assert kept_ids(plan) == {backup(ago(days=d)).backup_id for d in (10, 11, 12)}
    assert len(plan.delete) == 7


def test_keep_last_without_days_is_the_only_rule():
    cands = [backup(ago(hours=h)) for h in range(6)]
    plan = plan_retention(cands, Retention(days=0, keep_last=2), NOW, UTC)
    assert kept_ids(plan) == {backup(ago(hours=h)).backup_id for h in (0, 1)}


def test_keep_daily_after_30_days_of_downtime_still_keeps_7_backups():
    """kopia#3758: counts are buckets among existing backups, not a time window."""
    last = ago(days=30)
    cands = [backup(last - timedelta(days=d, hours=h)) for d in range(60) for h in (0, 6, 12)]
    plan = plan_retention(cands, Retention(days=7, keep_daily=7), NOW, UTC)
    assert len(plan.keep) == 7
    # the newest backup of each of the 7 most recent days that have backups
    assert kept_ids(plan) == {backup(last - timedelta(days=d)).backup_id for d in range(7)}
    assert len(plan.delete) == len(cands) - 7


def test_keep_hourly_counts_hours_that_have_a_backup():
    # two backups in each of 5 hours, with a 3-hour gap after the newest hour
    base = datetime(2024, 6, 15, 8, 0, tzinfo=UTC)
    cands = [backup(base - timedelta(hours=h, minutes=m)) for h in (0, 4, 5, 6, 7) for m in (10, 40)]
    plan = plan_retention(cands, Retention(days=0, keep_hourly=3), NOW, UTC)
    # newest of hours 07:xx, 03:xx, 02:xx (h=0 -> 07:50; h=4 -> 03:50; h=5 -> 02:50)
    expected = {backup(base - timedelta(hours=h, minutes=10)).backup_id for h in (0, 4, 5)}
    assert kept_ids(plan) == expected


def test_keep_weekly_uses_iso_weeks():
    # 2024-06-10 is a Monday; backups on Sunday 06-09 and Monday 06-10 are in different weeks
    sunday = backup(datetime(2024, 6, 9, 20, tzinfo=UTC))
    monday = backup(datetime(2024, 6, 10, 1, tzinfo=UTC))
    friday = backup(datetime(2024, 6, 14, 1, tzinfo=UTC))
    older = backup(datetime(2024, 6, 5, 1, tzinfo=UTC))  # same ISO week as sunday
    plan = plan_retention([sunday, monday, friday, older], Retention(days=0, keep_weekly=2), NOW, UTC)
    assert kept_ids(plan) == {friday.backup_id, sunday.backup_id}


def test_keep_monthly_and_yearly():
    cands = [backup(datetime(y, m, 28, tzinfo=UTC)) for y in (2021, 2022, 2023) for m in (1, 6, 12)]
    cands += [backup(datetime(2024, 1, 3, tzinfo=UTC))]
    plan = plan_retention(cands, Retention(days=0, keep_monthly=2), NOW, UTC)
    assert kept_ids(plan) == {backup(datetime(2024, 1, 3, tzinfo=UTC)).backup_id,
                              backup(datetime(2023, 12, 28, tzinfo=UTC)).backup_id}
    plan = plan_retention(cands, Retention(days=0, keep_yearly=3), NOW, UTC)
    assert kept_ids(plan) == {backup(datetime(y, m, d, tzinfo=UTC)).backup_id
                              for (y, m, d) in ((2024, 1, 3), (2023, 12, 28), (2022, 12, 28))}


def test_rules_combine_as_a_union():
    cands = [backup(ago(days=d)) for d in range(0, 400, 5)]
    plan = plan_retention(cands, Retention(days=10, keep_last=4, keep_monthly=3), NOW, UTC)
    ids = kept_ids(plan)
    assert {backup(ago(days=d)).backup_id for d in (0, 5, 10, 15)} <= ids  # window 0,5,10 + last 4 -> 15
    assert any("keep_monthly" in reason for reasons in plan.keep.values() for reason in reasons)
    assert all(backup(ago(days=d)).backup_id in plan.delete for d in (200, 395))


def test_buckets_use_the_configured_time_zone():
    """A backup at 23:30 UTC belongs to the next day in Asia/Tokyo (UTC+9)."""
    evening = backup(datetime(2024, 3, 1, 14, 0, tzinfo=UTC))  # Tokyo 03-01 23:00
    late = backup(datetime(2024, 3, 1, 23, 30, tzinfo=UTC))    # Tokyo 03-02 08:30
    next_day = backup(datetime(2024, 3, 2, 1, 0, tzinfo=UTC))  # Tokyo 03-02 10:00
    cands = [evening, late, next_day]
    policy = Retention(days=0, keep_daily=2)
    in_utc = plan_retention(cands, policy, NOW, UTC)
    assert kept_ids(in_utc) == {next_day.backup_id, late.backup_id}
    in_tokyo = plan_retention(cands, policy, NOW, ZoneInfo("Asia/Tokyo"))
    assert kept_ids(in_tokyo) == {next_day.backup_id, evening.backup_id}
    assert in_tokyo.delete == [late.backup_id]


# -- the newest intact backup and damaged backups -----------------------------------


def test_newest_intact_backup_survives_when_everything_is_older_than_the_window():
    cands = [backup(ago(days=d)) for d in (40, 50, 60)]
    plan = plan_retention(cands, Retention(days=7), NOW, UTC)
    assert kept_ids(plan) == {cands[0].backup_id}
    assert sorted(plan.delete) == sorted(c.backup_id for c in cands[1:])


def test_newest_intact_backup_survives_behind_damaged_newer_ones():
    good = backup(ago(days=40))
    bad = [backup(ago(days=d), ok=False) for d in (30, 35)]
    plan = plan_retention(bad + [good], Retention(days=7), NOW, UTC)
    assert good.backup_id in plan.keep
    assert set(plan.delete) == {c.backup_id for c in bad}


def test_damaged_newest_does_not_count_for_keep_last():
    damaged = backup(ago(hours=1), ok=False)
    intact = backup(ago(hours=2))
    older = backup(ago(hours=3))
    plan = plan_retention([damaged, intact, older], Retention(days=0, keep_last=1), NOW, UTC)
    assert intact.backup_id in plan.keep
    assert older.backup_id in plan.delete


def test_damaged_backups_do_not_fill_daily_buckets():
    # each day: a damaged backup in the evening, an intact one in the morning
    cands = []
    for d in range(5):
        day = datetime(2024, 6, 10 + d, tzinfo=UTC)
        cands += [backup(day + timedelta(hours=20), ok=False), backup(day + timedelta(hours=8))]
    plan = plan_retention(cands, Retention(days=0, keep_daily=3), NOW, UTC)
    assert kept_ids(plan) == {backup(datetime(2024, 6, 10 + d, 8, tzinfo=UTC)).backup_id for d in (2, 3, 4)}


def test_nothing_to_plan():
    plan = plan_retention([], Retention(days=7, keep_last=3), NOW, UTC)
    assert plan.keep == {} and plan.delete == []


# -- properties ---------------------------------------------------------------------

ZONES = ["UTC", "America/Chicago", "Europe/Helsinki", "Asia/Kolkata", "Pacific/Chatham"]
START = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 10 * 365 * 86400

# zero often, so that policies where only the window (or nothing) applies come up
count = st.one_of(st.just(0), st.just(0), st.integers(min_value=1, max_value=12))
policies = st.builds(Retention, days=st.one_of(st.just(0), st.integers(min_value=1, max_value=800)), keep_last=count,
                     keep_hourly=count, keep_daily=count, keep_weekly=count, keep_monthly=count,
                     keep_yearly=count)


@st.composite
def candidate_sets(draw):
    n = draw(st.integers(min_value=0, max_value=40))
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=1, max_size=8), min_size=n, max_size=n,
                        unique=True))
    cands = []
    for backup_id in ids:
        # sometimes crowd into a few days to exercise equal buckets and equal times
        if draw(st.booleans()):
            at = START + timedelta(seconds=draw(st.integers(0, SPAN_SECONDS)))
        else:
            at = datetime(2020, 3, 8, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 4 * 24 * 60)) // 30 * 30)
        cands.append(Candidate(backup_id, at, draw(st.booleans())))
    return cands


nows = st.integers(0, SPAN_SECONDS + 86400 * 400).map(lambda s: START + timedelta(seconds=s))
zones = st.sampled_from(ZONES).map(ZoneInfo)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(candidate_sets(), policies, nows, zones)
def test_property_newest_intact_is_kept(cands, policy, now, tz):
    plan = plan_retention(cands, policy, now, tz)
    intact = [c for c in cands if c.ok]
    if intact:
        newest = max(intact, key=lambda c: (c.created_at, c.backup_id))
        assert newest.backup_id in plan.keep
        assert newest.backup_id not in plan.delete
        # whatever tie-break is used, some intact backup of the newest time survives
        latest = max(c.created_at for c in intact)
        assert any(c.backup_id in plan.keep for c in intact if c.created_at == latest)


@PROPERTY
@given(candidate_sets(), policies, nows, zones)
def test_property_keep_and_delete_partition_the_candidates(cands, policy, now, tz):
    plan = plan_retention(cands, policy, now, tz)
    all_ids = {c.backup_id for c in cands}
    assert set(plan.keep) | set(plan.delete) == all_ids
    assert not set(plan.keep) & set(plan.delete)
    assert len(plan.delete) == len(set(plan.delete))


@PROPERTY
@given(candidate_sets(), policies, nows, zones, st.randoms(use_true_random=False))
def test_property_result_does_not_depend_on_input_order(cands, policy, now, tz, rnd):
    first = plan_retention(cands, policy, now, tz)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    second = plan_retention(shuffled, policy, now, tz)
    assert set(first.keep) == set(second.keep)
    assert sorted(first.delete) == sorted(second.delete)
    assert {k: sorted(v) for k, v in first.keep.items()} == {k: sorted(v) for k, v in second.keep.items()}


@PROPERTY
@given(candidate_sets(), policies, nows, zones)
def test_property_every_kept_backup_has_a_reason(cands, policy, now, tz):
    plan = plan_retention(cands, policy, now, tz)
    for backup_id, reasons in plan.keep.items():
        assert reasons and all(isinstance(r, str) and r for r in reasons), backup_id


@PROPERTY
@given(candidate_sets(), nows, zones)
def test_property_days_zero_without_counts_deletes_nothing(cands, now, tz):
    plan = plan_retention(cands, Retention(days=0), now, tz)
    assert plan.delete == []
    assert set(plan.keep) == {c.backup_id for c in cands}


@PROPERTY
@given(candidate_sets(), policies, nows, zones)
def test_property_window_and_counts_are_honoured(cands, policy, now, tz):
    """Everything inside the window survives, and each keep_* count keeps at least
    min(N, buckets with an intact backup) backups, never counting damaged ones."""
    plan = plan_retention(cands, policy, now, tz)
    if policy.days:
        for c in cands:
            if c.created_at >= now - timedelta(days=policy.days):
                assert c.backup_id in plan.keep
    intact = [c for c in cands if c.ok]
    kept_intact = [c for c in intact if c.backup_id in plan.keep]
    assert len(kept_intact) >= min(policy.keep_last, len(intact))
    keys = {
        "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
        "keep_daily": lambda t: t.date(),
        "keep_weekly": lambda t: t.isocalendar()[:2],
        "keep_monthly": lambda t: (t.year, t.month),
        "keep_yearly": lambda t: t.year,
    }
    for rule, key in keys.items():
        wanted = getattr(policy, rule)
        buckets = {key(c.created_at.astimezone(tz)) for c in intact}
        kept_buckets = {key(c.created_at.astimezone(tz)) for c in kept_intact}
        # the newest `wanted` buckets that have an intact backup each keep one
        newest = sorted(buckets, reverse=True)[:wanted]
        assert set(newest) <= kept_buckets, rule


def test_equal_creation_times_give_one_answer_whatever_the_order():
    """Equal creation times (same second on two hosts) still give one order-free answer."""
    at = ago(days=30)
    cands = [Candidate(f"id{i:02d}", at, i % 3 != 0) for i in range(20)]
    policy = Retention(days=7, keep_last=2)
    plans = []
    for seed in range(10):
        shuffled = list(cands)
        random.Random(seed).shuffle(shuffled)
        plans.append(plan_retention(shuffled, policy, NOW, UTC))
    assert all(set(p.keep) == set(plans[0].keep) for p in plans)
    assert len(plans[0].keep) == 2
    assert all(c.ok for c in cands if c.backup_id in plans[0].keep)


@pytest.mark.parametrize("zone", ZONES)
def test_keep_hourly_over_europes_spring_forward_night_in_every_zone(zone):
    """Backups every 30 minutes over a DST night: keep_hourly keeps one per local hour."""
    tz = ZoneInfo(zone)
    base = datetime(2024, 3, 31, 0, tzinfo=UTC)  # Europe's spring-forward night
    cands = [backup(base + timedelta(minutes=30 * i)) for i in range(12)]
    plan = plan_retention(cands, Retention(days=0, keep_hourly=3), base + timedelta(days=1), tz)
    assert cands[-1].backup_id in plan.keep
    assert len(plan.keep) == 3
