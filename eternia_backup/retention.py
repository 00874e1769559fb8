"""Retention: which backups to keep, decided per target from its own listing.

Rules (a backup survives if any rule keeps it):

* ``days`` (``retention_days``): backups younger than this are kept. 0 means
  keep forever, unless keep_* counts are set, which then are the only rules.
* ``keep_last`` N: the N newest intact backups.
* ``keep_hourly`` / ``daily`` / ``weekly`` / ``monthly`` / ``yearly`` N: the
  newest intact backup of each of the N most recent hours/days/... that *have*
  a backup (counted among existing backups, not as a time window, so downtime
  never makes them delete everything), in the configured time zone.
* The newest intact backup is never deleted.
* A kept incremental backup keeps its whole chain: every backup it is built on
  is kept too ("base of <id>"), so retention never leaves a kept backup that
  cannot be restored. An incremental whose chain is broken is not intact.

Damaged backups never count as a kept copy; they are deleted only once older
than the window. The decision depends only on the set of backups, not on the
order they were listed in.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, tzinfo
from typing import Callable, Iterable

from .config import Retention


@dataclasses.dataclass(frozen=True)
class Candidate:
    backup_id: str
    created_at: datetime
    ok: bool
    #: the backups this one is built on (incremental), oldest first
    chain: tuple[str, ...] = ()


@dataclasses.dataclass
class RetentionPlan:
    keep: dict[str, list[str]]  # backup id -> reasons
    delete: list[str]


_BUCKETS: dict[str, Callable[[datetime], tuple]] = {
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar()[:2]),
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: (t.year,),
}


def plan_retention(candidates: Iterable[Candidate], policy: Retention, now: datetime,
                   tz: tzinfo | None = None) -> RetentionPlan:
    """Decide what to keep and delete. Pure: no I/O, no clock of its own."""
    items = sorted(candidates, key=lambda c: (c.created_at, c.backup_id), reverse=True)
    keep: dict[str, list[str]] = {}

    def keep_it(c: Candidate, why: str) -> None:
        keep.setdefault(c.backup_id, []).append(why)

    counts = {k: getattr(policy, k) for k in ("keep_last", *_BUCKETS)}
    if policy.days == 0 and not any(counts.values()):
        return RetentionPlan({c.backup_id: ["retention_days is 0: keep forever"] for c in items}, [])

    intact = [c for c in items if c.ok]
    if intact:
        keep_it(intact[0], "newest intact backup")
    if policy.days:
        cutoff = now - timedelta(days=policy.days)
        for c in items:
            if c.created_at >= cutoff:
                keep_it(c, f"younger than {policy.days} day(s)")
    for c in intact[: counts["keep_last"]]:
        keep_it(c, "keep_last")
    for rule, key in _BUCKETS.items():
        wanted = counts[rule]
        seen: set[tuple] = set()
        for c in intact:
            if len(seen) >= wanted:
                break
            bucket = key(c.created_at.astimezone(tz))  # tz None: local zone
            if bucket not in seen:
                seen.add(bucket)
                keep_it(c, rule)
    by_id = {c.backup_id: c for c in items}
    for c in items:
        if c.backup_id in keep and not all(r.startswith("base of ") for r in keep[c.backup_id]):
            for link in c.chain:
                if link in by_id:
                    keep.setdefault(link, []).append(f"base of {c.backup_id}")
    delete = [c.backup_id for c in items if c.backup_id not in keep]
    return RetentionPlan(keep, delete)


def only_as_base(reasons: list[str]) -> bool:
    """True when a backup is kept only because a kept incremental is built on it."""
    return bool(reasons) and all(r.startswith("base of ") for r in reasons)
