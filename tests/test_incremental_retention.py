"""Retention with incremental backups: every backup cleanup keeps stays restorable.

A kept incremental backup keeps its whole chain ("base of <id>"), so cleanup
never leaves a kept backup that cannot be restored. The property test runs
random schedules on a real BackupManager, real files and a local target:
changes to the source tree, incremental and full backups, a user (or a failing
disk) deleting a backup's archive, manifest or file index, flipped bytes, and
cleanups with random policies at a controlled clock. After each cleanup:

1. every backup that was intact before (its whole chain present, no archive
   flipped) and was kept is still listed as ok and restores to exactly the tree
   it captured;
2. the newest intact backup is never deleted (intact as cleanup can know it: a
   flipped byte is found only by reading the archive: cleanup reads the newest
   kept chain before it deletes an intact backup, see the test below);
3. no kept incremental loses a link of its chain to cleanup;
4. cleanup deletes only the files of the backups it reports deleted (manifest,
   archive, file index), all of them, and nothing else;

and its dry run, and ``list``'s "kept only as a base", say what it then does.

Then plain tests of the chain a keep_last 1 policy keeps, and of how the CLI
shows backups kept only as a base.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from eternia_backup import catalog
from eternia_backup.config import Retention
from eternia_backup.errors import IntegrityError
from eternia_backup.manager import BackupManager
from eternia_backup.retention import only_as_base

UTC = timezone.utc
START = datetime(2024, 6, 15, 0, 0, tzinfo=UTC)
NAME = "inc"


# -- a clock the backups and cleanup read -----------------------------------------------


class Clock:
    """``datetime`` as eternia_backup.backup, .cleanup and .manager see it: ``now()`` is ``self.at``."""

    def __init__(self, at: datetime):
        self.at = at
        clock = self

        class FakeDatetime(datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.at if tz is None else clock.at.astimezone(tz)

        self.datetime = FakeDatetime

    def advance(self, **delta) -> None:
        self.at += timedelta(**delta)

    def installed(self) -> ExitStack:
        stack = ExitStack()
        for module in ("eternia_backup.backup", "eternia_backup.cleanup", "eternia_backup.manager"):
            stack.enter_context(mock.patch(f"{module}.datetime", self.datetime))
        return stack


# -- the source tree --------------------------------------------------------------------

# paths a change may touch: a path can turn from a file into a directory, a link, or go
PATHS = ["a", "b", "d", "d/x", "d/y", "e/z"]
# unique mtimes: a rewrite of the same size in one clock tick is still seen as a change
_mtime = [1_600_000_000 * 10**9]


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _make_parent(root: Path, rel: str) -> None:
    parent = root
    for part in rel.split("/")[:-1]:
        parent = parent / part
        if not parent.is_dir() or parent.is_symlink():
            _clear(parent)
            parent.mkdir()


def apply_change(root: Path, change: tuple) -> None:
    op, rel = change[0], change[1]
    path = root / rel
    if op == "remove":
        _clear(path)
        return
    _make_parent(root, rel)
    _clear(path)
    if op == "write":
        path.write_bytes(change[2])
        _mtime[0] += 10**9 + 1
        os.utime(path, ns=(_mtime[0], _mtime[0]))
    elif op == "link":
        os.symlink(change[2], path)
    else:
        path.mkdir()


def tree_of(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: file contents, link targets, directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


# -- the schedule -----------------------------------------------------------------------

changes = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.binary(max_size=40)),
    st.tuples(st.just("link"), st.sampled_from(PATHS), st.sampled_from(["a", "x", "missing"])),
    st.tuples(st.just("mkdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("remove"), st.sampled_from(PATHS)),
)
# mostly policies that delete something: days 0 with a keep_* count
policies = st.builds(Retention, days=st.sampled_from([0, 0, 0, 1, 2]), keep_last=st.sampled_from([0, 1, 1, 2, 3]),
                     keep_hourly=st.sampled_from([0, 0, 0, 2]), keep_daily=st.sampled_from([0, 0, 1, 2]),
                     keep_weekly=st.sampled_from([0, 0, 0, 1]))
hours = st.integers(min_value=1, max_value=40)
steps = st.one_of(
    st.tuples(st.just("change"), st.lists(changes, min_size=1, max_size=3)),
    st.tuples(st.just("create"), hours),
    st.tuples(st.just("create"), hours),
    st.tuples(st.just("full"), hours),
    st.tuples(st.just("damage"), st.sampled_from(["archive", "manifest", "index", "flip", "flip index"]), st.integers(0, 20)),
    st.tuples(st.just("cleanup"), policies, st.integers(min_value=0, max_value=30)),
)
schedules = st.builds(lambda first, middle, policy: [("create", 1), *first, *middle, ("cleanup", policy, 1)],
                      st.lists(st.tuples(st.just("create"), hours), max_size=3), st.lists(steps, max_size=12),
                      policies)
full_every = st.sampled_from([None, 2, 3, "2d"])


@dataclasses.dataclass
class Made:
    """One backup the schedule made, and what happened to its files since."""

    backup_id: str
    tree: dict
    chain: tuple[str, ...]
    manifest: str
    archive: str
    index: str
    gone: set = dataclasses.field(default_factory=set)  # "manifest", "archive", "index" deleted by the test
    flipped: bool = False  # a byte of its archive
    flipped_index: bool = False
    deleted: bool = False  # by cleanup


def setup_dir(base: Path, full_every) -> Path:
    (base / "data").mkdir()
    (base / "data" / "a").write_bytes(b"first")
    incremental = {"enabled": True} if full_every is None else {"enabled": True, "full_every": full_every}
    config = base / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "name": NAME, "storage_path": "backups", "timezone": "UTC",
        "sources": [{"type": "directory", "name": "data", "path": "data"}],
        "archive": {"incremental": incremental}}}))
    return config


class Run:
    """A schedule being played; ``made`` in creation order."""

    def __init__(self, base: Path, mgr: BackupManager, clock: Clock):
        self.base, self.mgr, self.clock = base, mgr, clock
        self.storage = base / "backups"
        self.made: dict[str, Made] = {}
        # for hypothesis' statistics: did the schedules reach what matters?
        self.incremental_restores = 0
        self.full_deleted = 0
        self.kept_as_base = 0
        self.storage.mkdir(exist_ok=True)
        # bystanders: a note and two other series' old backups ("inc-db" starts like "inc"); cleanup
        # must never touch them
        (self.storage / "README.txt").write_text("not a backup\n")
        for other in ("incx", "inc-db"):
            (self.storage / f"{other}-20200101T000000Z-abcdef.tar.zst").write_bytes(b"another series")
            (self.storage / f"{other}-20200101T000000Z-abcdef.files.jsonl.zst").write_bytes(b"its index")

    def links(self, made: Made) -> list[Made]:
        """Its chain and itself, oldest first."""
        return [self.made[link] for link in made.chain] + [made]

    def listed_intact(self, made: Made) -> bool:
        """What the catalog can tell without reading archives: the manifest and archive of every link are
        there, and the backup's own file index if it is incremental (a restore reads only that index)."""
        def present(m: Made) -> bool:
            return not m.deleted and not ({"manifest", "archive"} & m.gone)

        return (all(present(m) for m in self.links(made))
                and not (made.chain and "index" in made.gone))

    def restorable(self, made: Made) -> bool:
        """Every file of its chain is there, no archive of it flipped, and its own index too if it needs one."""
        return (self.listed_intact(made) and not any(m.flipped for m in self.links(made))
                and not (made.chain and made.flipped_index))

    def create(self, full: bool) -> None:
        tree = tree_of(self.base / "data")
        result = self.mgr.create_backup(full=full)
        m = result.manifest
        assert result.ok and m.files_index is not None
        assert full is False or not m.is_incremental
        self.made[result.backup_id] = Made(result.backup_id, tree, tuple(m.chain),
                                           f"{NAME}-{result.backup_id}.manifest.json", m.archive.file,
                                           m.files_index.file)

    def damage(self, what: str, pick: int) -> None:
        alive = [m for m in self.made.values() if not m.deleted and "manifest" not in m.gone]
        if not alive:
            return
        made = alive[pick % len(alive)]
        name = {"manifest": made.manifest, "index": made.index, "flip index": made.index}.get(what, made.archive)
        path = self.storage / name
        if not path.exists():
            return
        if what.startswith("flip"):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
            made.flipped_index = made.flipped_index or what == "flip index"
            made.flipped = made.flipped or what == "flip"
        else:
            path.unlink()
            made.gone.add(what)

    def listing(self) -> dict[str, catalog.BackupCopy]:
        return {c.backup_id: c for c in catalog.list_target(self.mgr.targets[0], NAME).copies}

    def check_restores(self, made: Made) -> None:
        out = Path(tempfile.mkdtemp(dir=self.base, prefix="out-"))
        self.mgr.restore_backup(made.backup_id, to=out)
        self.incremental_restores += bool(made.chain)
        assert tree_of(out / "data") == made.tree, f"backup {made.backup_id} restored another tree"
        shutil.rmtree(out)

    def cleanup(self, policy: Retention) -> None:
        self.mgr.config = dataclasses.replace(self.mgr.config, retention=policy)
        before = self.listing()
        files_before = set(os.listdir(self.storage))
        # the catalog sees missing files (of a backup or of its chain), not flipped bytes
        for backup_id, copy in before.items():
            assert copy.ok == self.listed_intact(self.made[backup_id]), (backup_id, copy.problem)
        restorable = [m for m in self.made.values() if m.backup_id in before and self.restorable(m)]
        listed = [m for m in self.made.values() if m.backup_id in before and self.listed_intact(m)]
        newest_intact = listed[-1] if listed else None

        (dry,) = self.mgr.cleanup(dry_run=True).targets
        listings, _ = self.mgr.listings()
        if not dry.found_damaged:  # else cleanup read a flipped byte that list, which reads no archive, cannot see
            assert self.mgr.kept_only_as_base(listings) == {i for i, why in dry.kept.items() if only_as_base(why)}

        result = self.mgr.cleanup()
        (report,) = result.targets
        assert (sorted(report.deleted), report.kept) == (sorted(dry.deleted), dry.kept), "the dry run said otherwise"
        assert result.ok, result.errors
        deleted = set(report.deleted)
        after = self.listing()
        files_after = set(os.listdir(self.storage))
        self.kept_as_base += sum(only_as_base(r) for r in report.kept.values())
        context = f"policy {policy}, kept {report.kept}, deleted {sorted(deleted)}"

        # 4. only the deleted backups' own files went, and all of them
        assert deleted <= set(before)
        expected_gone = set()
        for backup_id in deleted:
            made = self.made[backup_id]
            made.deleted = True
            self.full_deleted += not made.chain
            expected_gone |= {made.manifest, made.archive, made.index}
        assert files_before - files_after == expected_gone & files_before, context
        assert not report.leftovers_removed  # young leftovers stay (grace period)
        for made in self.made.values():
            if made.index in files_after and made.manifest not in files_after:
                assert "manifest" in made.gone, f"{made.index} was left without its manifest ({context})"

        # 2. the newest intact backup survives: intact as the listing shows it, unless cleanup read a
        # flipped byte in it (or its chain) before deleting, and then the newest one whose archives
        # read back whole survives; see test_a_flipped_byte_in_the_newest_chain_never_costs_...
        if newest_intact is not None and not report.found_damaged:
            assert newest_intact.backup_id not in deleted, f"newest intact {newest_intact.backup_id} deleted; {context}"
        if report.found_damaged:
            whole = [m for m in listed if not any(link.flipped for link in self.links(m))]
            if whole:
                assert whole[-1].backup_id not in deleted, f"newest whole {whole[-1].backup_id} deleted; {context}"

        # 3. a kept incremental keeps every link it had
        for backup_id, copy in after.items():
            for link in self.made[backup_id].chain:
                if link in before:
                    assert link in after, f"{link}, a base of kept {backup_id}, was deleted; {context}"
            if before[backup_id].ok:
                assert copy.ok, f"{backup_id} was ok and is now {copy.problem}; {context}"

        # 1. every kept intact backup restores to its tree
        for made in restorable:
            if made.backup_id in deleted:
                continue
            assert after[made.backup_id].ok, f"{made.backup_id}: {after[made.backup_id].problem}; {context}"
            self.check_restores(made)


def play(schedule: list, full_every) -> Run:
    base = Path(tempfile.mkdtemp(prefix="eternia-incret-"))
    clock = Clock(START)
    try:
        # durability is not under test here, and fsyncs are most of a step's time
        with clock.installed(), mock.patch("os.fsync"):
            mgr = BackupManager.from_config(setup_dir(base, full_every))
            run = Run(base, mgr, clock)
            for step in schedule:
                kind = step[0]
                if kind == "change":
                    for change in step[1]:
                        apply_change(base / "data", change)
                elif kind in ("create", "full"):
                    clock.advance(hours=step[1], seconds=17)
                    run.create(full=kind == "full")
                elif kind == "damage":
                    run.damage(step[1], step[2])
                else:
                    clock.advance(hours=step[2])
                    run.cleanup(step[1])
        return run
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the property -----------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(schedule=schedules, full_every=full_every)
@example(schedule=[("create", 1), ("change", [("write", "d/x", b"x")]), ("create", 2), ("change", [("link", "a", "d")]),
                   ("create", 3), ("cleanup", Retention(keep_last=1), 1), ("full", 30), ("change", [("remove", "d")]),
                   ("create", 2), ("damage", "index", 1), ("cleanup", Retention(keep_last=1), 1),
                   ("create", 5), ("cleanup", Retention(days=1), 30)],
         full_every=None)
def test_every_backup_retention_keeps_stays_restorable(schedule, full_every):
    run = play(schedule, full_every)
    event(f"incremental backups restored: {min(run.incremental_restores, 3)}+")
    event(f"full backups deleted by cleanup: {min(run.full_deleted, 1)}+")
    event(f"kept only as a base: {min(run.kept_as_base, 1)}+")


# -- plain tests ------------------------------------------------------------------------


@pytest.fixture
def chain_of_four(tmp_path):
    """A full backup and three incrementals on it, an hour apart, with keep_last 1; (config, ids oldest first)."""
    config = setup_dir(tmp_path, None)
    data = yaml.safe_load(config.read_text())
    data["backup"]["retention"] = {"keep_last": 1}
    config.write_text(yaml.safe_dump(data))
    clock = Clock(datetime.now(UTC) - timedelta(hours=5))
    ids = []
    with clock.installed():
        mgr = BackupManager.from_config(config)
        for i in range(4):
            (tmp_path / "data" / f"f{i}").write_text(f"file {i}")
            clock.advance(hours=1)
            ids.append(mgr.create_backup().backup_id)
    manifests = [json.loads((tmp_path / "backups" / f"{NAME}-{i}.manifest.json").read_text()) for i in ids]
    assert [m["kind"] for m in manifests] == ["full", "incremental", "incremental", "incremental"]
    assert manifests[3]["chain"] == ids[:3]
    return config, ids


def test_keep_last_1_keeps_the_whole_chain_of_the_newest_backup(chain_of_four):
    config, ids = chain_of_four
    mgr = BackupManager.from_config(config)
    result = mgr.cleanup()

    (report,) = result.targets
    assert report.deleted == []
    assert set(report.kept) == set(ids)
    assert report.kept[ids[3]] == ["newest intact backup", "keep_last"]
    for base in ids[:3]:
        assert report.kept[base] == [f"base of {ids[3]}"]
    out = config.parent / "out"
    mgr.restore_backup(ids[3], to=out)
    assert tree_of(out / "data") == tree_of(config.parent / "data")


def test_keep_last_1_after_a_full_backup_deletes_the_old_chain(chain_of_four):
    config, ids = chain_of_four
    mgr = BackupManager.from_config(config)
    newest = mgr.create_backup(full=True).backup_id
    result = mgr.cleanup()

    (report,) = result.targets
    assert sorted(report.deleted) == sorted(ids)
    assert set(os.listdir(config.parent / "backups")) >= {f"{NAME}-{newest}.manifest.json"}
    assert not [n for n in os.listdir(config.parent / "backups") if any(i in n for i in ids)]


def test_cli_cleanup_dry_run_and_list_show_backups_kept_only_as_a_base(chain_of_four, real_cli, cli):
    config, ids = chain_of_four
    before = sorted(os.listdir(config.parent / "backups"))

    dry = real_cli("cleanup", "--dry-run", config=config)
    assert dry.returncode == 0, dry.stderr
    for base in ids[:3]:
        assert f"kept {base} on local only as a base (base of {ids[3]})" in dry.stdout
    assert f"kept {ids[3]}" not in dry.stdout
    assert "would delete 0 backup(s)" in dry.stdout
    assert sorted(os.listdir(config.parent / "backups")) == before

    listed = cli("list", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    flags = {b["backup_id"]: b["kept_only_as_base"] for b in json.loads(listed.stdout)["backups"]}
    assert flags == {ids[0]: True, ids[1]: True, ids[2]: True, ids[3]: False}

    table = cli("list", config=config)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("(kept only as a base)") == 3


def test_a_flipped_byte_in_the_newest_chain_never_costs_the_last_restorable_backup(tmp_path):
    """Cleanup reads the newest kept chain before it deletes an intact backup: a flipped byte there
    (invisible in a listing) makes it keep the older backup that still restores."""
    config = setup_dir(tmp_path, None)
    clock = Clock(datetime.now(UTC) - timedelta(days=3))
    with clock.installed():
        mgr = BackupManager.from_config(config)
        older = mgr.create_backup().backup_id
        clock.advance(days=1)
        base = mgr.create_backup(full=True)
        clock.advance(days=1)
        (tmp_path / "data" / "b").write_text("new")
        newest = mgr.create_backup()
    assert newest.manifest.chain == (base.backup_id,)
    archive = tmp_path / "backups" / base.manifest.archive.file
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    mgr.config = dataclasses.replace(mgr.config, retention=Retention(keep_last=1))

    with pytest.raises(IntegrityError):  # the newest chain cannot be restored
        mgr.restore_backup(newest.backup_id, to=tmp_path / "out-newest")

    dry = mgr.cleanup(dry_run=True)
    result = mgr.cleanup()
    (report,) = result.targets
    assert report.kept[older] == ["newest intact backup", "keep_last"]  # the last one that restores
    assert sorted(report.deleted) == sorted([base.backup_id, newest.backup_id]) == sorted(dry.targets[0].deleted)
    mgr.restore_backup(older, to=tmp_path / "out-older")
