"""Crash safety, proven with real SIGKILL: a killed create, cleanup after a killed create, a killed restore.

``python -m eternia_backup create`` and ``restore --yes`` run in real subprocesses
on an app holding ~32 MB (random bytes and text, so compression takes its time)
and are killed with SIGKILL at seeded random moments:

* from outside, at a random delay after the process started or after its
  temporary archive appeared on disk;
* from inside, at named points no outside timer can hit reliably: after a
  random number of archive bytes, right before and after the archive's rename,
  when the manifest is written, right before and after the manifest's rename,
  before and after a restore's swap, between the two renames of the swap and
  between the swaps of two sources. A ``sitecustomize`` module on PYTHONPATH
  (written by the tests, active only when ``ETERNIA_TEST_KILL_AT`` is set)
  makes the process SIGKILL itself at that point: a real process, killed for
  real, at a real point of the real code.

After each kill, as a user would check: every earlier backup passes
``verify``, ``list`` shows no trace of the killed one, the next ``create`` and
``cleanup`` leave the storage holding exactly the listed backups (temporary
files of the dead process and an archive without manifest are removed), and a
killed restore left either the old state or the new one, never a mix.

Iterations: ``ETERNIA_CRASH_RUNS`` (per random test) overrides the count; the
default keeps the file fast and still kills more than 20 times in total;
``ETERNIA_FULL_CRASH_TESTS=1`` runs the full count. ``ETERNIA_CRASH_SEED``
changes the seed (every failure message repeats it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

FULL = os.environ.get("ETERNIA_FULL_CRASH_TESTS") == "1"
SEED = int(os.environ.get("ETERNIA_CRASH_SEED", "1729"))
_runs = os.environ.get("ETERNIA_CRASH_RUNS")
CREATE_RUNS = int(_runs) if _runs else (60 if FULL else 8)
RESTORE_RUNS = int(_runs) if _runs else (30 if FULL else 8)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900 if FULL else 300),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

# -- the kill points: loaded by the child Python at start-up ----------------------------------

KILLPOINTS = '''\
"""Kill points for tests/test_crash.py; inert unless ETERNIA_TEST_KILL_AT is set.

The process SIGKILLs itself (no cleanup, no finally blocks, no atexit) at the
named point of the real code.
"""
import os
import signal

_SPEC = os.environ.get("ETERNIA_TEST_KILL_AT", "")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _is_manifest(path):
    return os.fspath(path).endswith(".manifest.json")


def _is_archive(path):
    name = os.path.basename(os.fspath(path))
    return ".tar" in name and not name.startswith(".") and not _is_manifest(name) and ".files." not in name


if _SPEC:
    _point, _, _arg = _SPEC.partition(":")
    from eternia_backup import plans
    from eternia_backup.builtin import local_target as storage

    if _point == "archive-bytes":  # after exactly N bytes of the archive reached its temp file
        _limit = int(_arg)
        _write = storage.LocalAtomicWrite.write

        def write(self, data):
            if _is_manifest(self.final):
                return _write(self, data)
            done = getattr(self, "_killpoint_done", 0)
            if done + len(data) >= _limit:
                _write(self, bytes(data)[: _limit - done])
                _die()
            self._killpoint_done = done + len(data)
            return _write(self, data)

        storage.LocalAtomicWrite.write = write

    elif _point in ("archive-before-rename", "archive-renamed", "manifest-before-rename", "manifest-renamed",
                    "index-renamed"):
        _replace = os.replace
        _which = {"archive": _is_archive, "manifest": _is_manifest,
                  "index": lambda p: os.fspath(p).endswith(".files.jsonl.zst")}[_point.split("-")[0]]

        def replace(src, dst, *args, **kwargs):
            if _which(dst) and _point.endswith("before-rename"):
                _die()
            _replace(src, dst, *args, **kwargs)
            if _which(dst) and _point.endswith("renamed"):
                _die()

        os.replace = replace

    elif _point == "manifest-write":  # the archive is committed and its size checked
        _write_bytes = storage.LocalTarget.write_bytes

        def write_bytes(self, filename, data):
            if _is_manifest(filename):
                _die()
            return _write_bytes(self, filename, data)

        storage.LocalTarget.write_bytes = write_bytes

    elif _point in ("swap-start", "swap-done", "between-sources"):
        _commit = plans.DirectorySwapPlan.commit

        def commit(self):
            if _point == "swap-start":  # everything staged and checked, nothing swapped yet
                _die()
            _commit(self)
            if _point in ("swap-done", "between-sources"):  # first swap done, nothing discarded
                _die()

        plans.DirectorySwapPlan.commit = commit

    elif _point == "sigint-in-swap":  # a Ctrl-C right after the exchange, before the plan knows it committed
        _fsync_dir = plans.fsync_dir

        def fsync_dir(directory):
            os.kill(os.getpid(), signal.SIGINT)
            _fsync_dir(directory)

        plans.fsync_dir = fsync_dir

    elif _point == "swap-first-rename":  # the first rename of the swap has happened, not the second
        import types

        class _Os(types.ModuleType):
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def rename(src, dst, *args, **kwargs):
                os.rename(src, dst, *args, **kwargs)
                _die()

        plans.os = _Os("os")
        plans.exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE: the two-rename fallback

    else:
        raise SystemExit(f"unknown kill point {_SPEC!r}")
'''


# -- the world: an app with a few tens of MB, a config, a storage directory -------------------


def make_tree(root: Path, rng: random.Random) -> None:
    """~32 MB: random blobs (incompressible) and text documents, some nested."""
    (root / "blobs").mkdir(parents=True)
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    for i in range(5):
        (root / "blobs" / f"blob-{i}.bin").write_bytes(rng.randbytes(4 * 1024 * 1024))
    for i in range(300):
        line = f"document {i}: {rng.random():.12f} the quick brown fox jumps over the lazy dog\n"
        (root / "docs" / f"doc-{i:03d}.txt").write_text(line * 400)
    (root / "docs" / "deep" / "er" / "note.txt").write_text("deep note\n")
    (root / "empty").mkdir()


def tree_digest(root: Path) -> str | None:
    """One hash of a tree's names, kinds and file contents; None when it does not exist."""
    if not root.exists():
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        h.update(f"D {rel}\n".encode())
        for n in sorted(filenames):
            p = Path(dirpath) / n
            if p.is_symlink():
                h.update(f"L {rel}/{n} -> {os.readlink(p)}\n".encode())
            else:
                h.update(f"F {rel}/{n} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash-template") / "files"
    make_tree(root, random.Random(SEED))
    return root


@pytest.fixture(scope="module")
def killpoints(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("killpoints")
    (directory / "sitecustomize.py").write_text(KILLPOINTS)
    return directory


class World:
    def __init__(self, root: Path, template: Path, killpoints: Path, sources=("files",), incremental=False):
        self.root = root
        self.killpoints = killpoints
        self.state = root / "state"
        self.storage = root / "backups"
        self.incremental = incremental
        #: an archive and its manifest; with incremental backups, the file index too
        self.files_per_backup = 3 if incremental else 2
        for name in sources:
            shutil.copytree(template, self.state / name)
        self.config = root / "eternia-backup.yaml"
        self.config.write_text(yaml.safe_dump({"backup": {
            "storage_path": "backups",
            "sources": [{"type": "directory", "name": n, "path": f"state/{n}"} for n in sources],
            "retention": {"keep_last": 2, "incomplete_grace_hours": 0},
            "archive": {"incremental": {"enabled": incremental}},
        }}))

    # -- the CLI, as a user runs it --------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, config=self.config, cwd=self.root)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.cli(*args)
        assert proc.returncode == 0, f"{' '.join(args)} (seed {SEED}) failed: {proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc

    def listed(self) -> list[dict]:
        proc = self.cli("list", "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["errors"] == {}
        return data["backups"]

    def listed_ids(self) -> list[str]:
        return [b["backup_id"] for b in self.listed()]

    def spawn(self, *args: str, kill_at: str | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.pop("ETERNIA_TEST_KILL_AT", None)
        if kill_at is not None:
            env["ETERNIA_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.killpoints), env.get("PYTHONPATH")]))
        return subprocess.Popen([sys.executable, "-m", "eternia_backup", "--config", str(self.config), *args],
                                cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # -- what is on disk -------------------------------------------------------------------

    def stored(self) -> list[str]:
        return sorted(os.listdir(self.storage))

    def expected_files(self, ids: list[str]) -> list[str]:
        return sorted(n for n in self.stored() if not n.startswith(".") and any(i in n for i in ids))


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[bool, str]:
    """Wait for a spawned process; (killed by SIGKILL?, its output)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{out}{err}"


def kill_after(proc: subprocess.Popen, delay: float, *, when=None, timeout: float = 60) -> tuple[bool, str]:
    """SIGKILL ``proc`` ``delay`` seconds after ``when()`` first holds (or after start)."""
    deadline = time.monotonic() + timeout
    if when is not None:
        while proc.poll() is None and not when():
            assert time.monotonic() < deadline, "the process never reached the moment to kill it"
            time.sleep(0.0005)
    end = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(min(0.001, max(0.0, end - time.monotonic())))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return finish(proc)


# -- backups ----------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path, template, killpoints) -> World:
    w = World(tmp_path, template, killpoints)
    # Timing, for the random delays: the whole run, and from the temporary archive's appearance.
    started = time.monotonic()
    proc = w.spawn("create")
    while proc.poll() is None and not temp_archive_present(w):
        time.sleep(0.0005)
    writing = time.monotonic()
    assert finish(proc)[1].startswith("exit 0\n")
    w.create_seconds, w.write_seconds = time.monotonic() - started, time.monotonic() - writing
    w.ok("create")
    w.archive_size = max(os.path.getsize(w.storage / n) for n in w.stored() if ".tar" in n)
    assert w.archive_size > 20 * 1024 * 1024, "the archive should be tens of MB (random bytes)"
    return w


BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")


def new_manifests(w: World, earlier: list[str]) -> list[str]:
    return [n for n in w.stored() if n.endswith(".manifest.json") and not any(i in n for i in earlier)]


def temp_archive_present(w: World) -> bool:
    try:
        names = os.listdir(w.storage)
    except FileNotFoundError:
        return False
    return any(n.startswith(".") and n.endswith(".tmp") and ".tar" in n for n in names)


def temp_archive_bytes(w: World) -> int:
    """Bytes written so far to a temporary archive (0 when there is none)."""
    for n in os.listdir(w.storage) if w.storage.exists() else ():
        if n.startswith(".") and n.endswith(".tmp") and ".tar" in n:
            try:
                return os.path.getsize(w.storage / n)
            except FileNotFoundError:  # renamed meanwhile
                pass
    return 0


def wait_stopped(pid: int) -> None:
    """Until every thread of a SIGSTOPped process has stopped (its files no longer grow)."""
    stat_file = Path(f"/proc/{pid}/stat")
    if not stat_file.exists():  # no procfs: give the signal time to land
        time.sleep(0.5)
        return
    while stat_file.read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)


def check_after_killed_create(w: World, earlier: list[str], what: str) -> None:
    """Everything a user checks after a backup was killed, then the next create and cleanup."""
    where = f"{what} (seed {SEED})"
    # list: the earlier backups, in order, all ok; no trace of the killed one.
    listed = w.listed()
    assert [b["backup_id"] for b in listed] == earlier, f"{where}: list changed: {listed}"
    assert all(b["state"] == "ok" for b in listed), f"{where}: {listed}"
    killed_files = [n for n in w.stored() if not any(i in n for i in earlier)]
    for name in killed_files:
        assert BACKUP_ID.search(name)[0] not in json.dumps(listed), f"{where}: `list` shows {name}"
    # Under a final name only an archive may remain (committed, its manifest never written);
    # whatever the dead process left is private, like every backup file.
    for name in killed_files:
        assert (name.startswith(".") and name.endswith(".tmp")) or (".tar" in name and "manifest" not in name) \
            or name.endswith(".files.jsonl.zst"), f"{where}: left {name} under a final name"
        assert stat.S_IMODE(os.stat(w.storage / name).st_mode) == 0o600, f"{where}: {name} is not 0600"
    # verify: every earlier backup is whole.
    proc = w.cli("verify", "--all", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], f"{where}: verify failed: {proc.stdout}{proc.stderr}"
    assert sorted(r["backup_id"] for r in report["backups"]) == sorted(earlier)
    # The next create works (no stale lock) and cleanup removes the leftovers.
    new = w.ok("create").stdout.strip()
    assert Path(new).is_file()
    if w.incremental:  # built on the newest good backup, as if the killed one had never been
        manifest = json.loads((w.storage / (Path(new).name.split(".tar")[0] + ".manifest.json")).read_text())
        assert manifest["kind"] == "incremental" and manifest["parent"] == earlier[0], f"{where}: {manifest}"
    cleaned = w.ok("cleanup")
    if killed_files:
        assert "leftover" in cleaned.stdout, f"{where}: cleanup did not remove {killed_files}: {cleaned.stdout}"
    after = w.listed_ids()
    assert Path(new).name.split(".tar")[0].endswith(after[0]), f"{where}: the new backup is not the newest: {after}"
    assert after[1:] == earlier[: len(after) - 1]
    # Exactly the listed backups' archives and manifests are left: no temp file, no orphan.
    assert w.stored() == w.expected_files(after) and len(w.stored()) == w.files_per_backup * len(after), \
        f"{where}: storage holds {w.stored()} for backups {after}"


def test_sigkill_while_the_archive_is_written(world):
    """Random moments: after N random bytes (inside), or a random delay after start or after
    the temporary archive appeared (outside). Nothing appears under the final name."""
    w = world
    rng = random.Random(SEED)
    kills = completed = 0
    for run in range(CREATE_RUNS):
        earlier = w.listed_ids()
        mode = ("bytes", "after-temp", "after-start")[run % 3]
        if mode == "bytes":
            offset = rng.randrange(1, w.archive_size)
            what = f"run {run}: killed after {offset} archive bytes"
            killed, out = finish(w.spawn("create", kill_at=f"archive-bytes:{offset}"))
            assert killed, f"{what}: the kill point was not reached: {out}"
        elif mode == "after-temp":
            delay = rng.uniform(0, w.write_seconds)
            what = f"run {run}: killed {delay:.3f}s after the temporary archive appeared"
            killed, out = kill_after(w.spawn("create"), delay, when=lambda: temp_archive_present(w))
        else:
            delay = rng.uniform(0.05, w.create_seconds)
            what = f"run {run}: killed {delay:.3f}s after start"
            killed, out = kill_after(w.spawn("create"), delay)
        if killed and not new_manifests(w, earlier):
            kills += 1
            check_after_killed_create(w, earlier, what)
        else:  # it finished first, or was killed after its commit point: then it is a whole backup
            completed += 1
            assert killed or out.startswith("exit 0\n"), f"{what}: {out}"
            assert len(w.listed_ids()) == len(earlier) + 1
            w.ok("verify", "latest")
            w.ok("cleanup")
    print(f"create killed {kills} times, {completed} finished before the kill (seed {SEED})")
    assert kills >= CREATE_RUNS * 2 // 3, f"only {kills} of {CREATE_RUNS} runs were killed (seed {SEED})"


@pytest.mark.parametrize("point", [
    "archive-before-rename",   # archive complete and fsynced under its temporary name
    "archive-renamed",         # archive under its final name, size not yet checked
    "manifest-write",          # archive committed and checked; the manifest is being written
    "manifest-before-rename",  # manifest complete under its temporary name
])
def test_sigkill_between_archive_and_manifest(world, point):
    """The backup does not exist until its manifest does; restore takes the previous one."""
    w = world
    earlier = w.listed_ids()
    killed, out = finish(w.spawn("create", kill_at=point))
    assert killed, f"{point}: the kill point was not reached: {out}"
    orphans = [n for n in w.stored() if not n.startswith(".") and not any(i in n for i in earlier)]
    if point == "archive-before-rename":
        assert orphans == [], f"{point}: something appeared under a final name: {orphans}"
    else:
        assert len(orphans) == 1 and orphans[0].endswith(".tar.zst"), orphans  # the archive, alone
    # restore latest takes the previous backup, and the orphan is never offered.
    restored = w.ok("restore", "latest", "--to", str(w.root / "out")).stdout
    assert f"restored backup {earlier[0]}" in restored
    assert tree_digest(w.root / "out" / "files") == tree_digest(w.state / "files")
    check_after_killed_create(w, earlier, point)


def test_sigkill_right_after_the_manifest_is_renamed_keeps_the_backup(world):
    """The commit point: killed after it, the backup is complete and listed."""
    w = world
    earlier = w.listed_ids()
    killed, out = finish(w.spawn("create", kill_at="manifest-renamed"))
    assert killed, out
    ids = w.listed_ids()
    assert len(ids) == len(earlier) + 1 and ids[1:] == earlier
    w.ok("verify", ids[0])
    w.ok("cleanup")
    assert w.stored() == w.expected_files(w.listed_ids())


def test_cleanup_removes_a_dead_writers_temp_file_at_once_and_an_orphan_archive_after_the_grace(world):
    """With the default grace period (24 h): the temporary file of a killed backup goes at
    the next cleanup (its writer, on this host, is dead); an archive whose manifest was
    never written is kept, unlisted, until the grace period has passed."""
    w = world
    w.config.write_text(w.config.read_text().replace("incomplete_grace_hours: 0", "incomplete_grace_hours: 24"))
    earlier = w.listed_ids()
    assert finish(w.spawn("create", kill_at=f"archive-bytes:{w.archive_size // 2}"))[0]
    (temp,) = [n for n in w.stored() if n.endswith(".tmp")]
    assert f".{os.uname().nodename.split('.')[0]}." in temp  # named with this host and the dead pid
    w.ok("cleanup")
    assert w.stored() == w.expected_files(earlier), f"the dead writer's {temp} was kept"

    assert finish(w.spawn("create", kill_at="archive-renamed"))[0]
    (orphan,) = [n for n in w.stored() if not any(i in n for i in earlier)]
    w.ok("cleanup")
    assert orphan in w.stored(), "an archive without manifest went before its grace period"
    assert w.listed_ids() == earlier
    w.config.write_text(w.config.read_text().replace("incomplete_grace_hours: 24", "incomplete_grace_hours: 0"))
    w.ok("cleanup")
    assert w.stored() == w.expected_files(earlier) and len(w.stored()) == 2 * len(earlier)


def test_cleanup_never_touches_a_backup_in_progress(world):
    """Retention during a backup: a create paused (SIGSTOP) half way through its archive; cleanup
    on the same host finds the lock held and skips (exit 11); a dry run (no lock, as a cleanup
    from another host sharing the storage) leaves the live writer's temporary file alone;
    resumed, the backup completes and verifies."""
    w = world
    w.config.write_text(w.config.read_text().replace("incomplete_grace_hours: 0", "incomplete_grace_hours: 24"))
    earlier = w.listed_ids()
    proc = w.spawn("create")
    try:
        deadline = time.monotonic() + 60
        while temp_archive_bytes(w) < w.archive_size // 4 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        proc.send_signal(signal.SIGSTOP)
        wait_stopped(proc.pid)
        (temp,) = [n for n in w.stored() if n.endswith(".tmp")]
        size = os.path.getsize(w.storage / temp)
        skipped = w.cli("cleanup")
        assert skipped.returncode == 11 and "skipped" in skipped.stderr, skipped.stderr
        dry = json.loads(w.ok("cleanup", "--dry-run", "--json").stdout)
        (target,) = dry["targets"]
        assert temp not in target["leftovers_removed"], dry
        assert [o["due"] for o in target["orphans"] if o["name"] == temp] in ([], [False]), dry
        assert temp in w.stored() and os.path.getsize(w.storage / temp) == size
        assert w.listed_ids() == earlier
    finally:
        proc.send_signal(signal.SIGCONT)
    out = finish(proc)[1]
    assert out.startswith("exit 0\n"), out
    ids = w.listed_ids()
    assert len(ids) == len(earlier) + 1 and ids[1:] == earlier
    w.ok("verify", ids[0])


# -- restores -----------------------------------------------------------------------------------


class RestoreWorld:
    """A backup of the NEW state; the live directory holds the OLD state, which a restore replaces."""

    def __init__(self, w: World, sources: tuple[str, ...]):
        self.w = w
        self.sources = sources
        self.new = {s: tree_digest(w.state / s) for s in sources}
        w.ok("create")
        self.backup_id = w.listed_ids()[0]
        self.pristine = w.root / "pristine-old"
        for s in sources:
            self.change(w.state / s)
            shutil.copytree(w.state / s, self.pristine / s, symlinks=True)
        self.old = {s: tree_digest(w.state / s) for s in sources}
        assert all(self.old[s] != self.new[s] for s in sources)

    @staticmethod
    def change(root: Path) -> None:
        (root / "blobs" / "blob-0.bin").unlink()
        (root / "docs" / "doc-001.txt").write_text("changed after the backup\n")
        (root / "only-in-old.txt").write_text("written after the backup\n")
        shutil.rmtree(root / "docs" / "deep")

    def live(self) -> dict[str, str | None]:
        return {s: tree_digest(self.w.state / s) for s in self.sources}

    def leftovers(self) -> list[Path]:
        return sorted(p for p in self.w.state.iterdir() if p.name.startswith(".") and ".eternia-" in p.name)

    def reset(self) -> None:
        """Back to the OLD state, and no hidden leftovers (housekeeping between runs)."""
        for s in self.sources:
            shutil.rmtree(self.w.state / s, ignore_errors=True)
            shutil.copytree(self.pristine / s, self.w.state / s, symlinks=True)
        for p in self.leftovers():
            shutil.rmtree(p)
        assert self.live() == self.old

    def check_after_kill(self, what: str) -> str:
        """Old or new, never a mix; backups intact; a plain restore then finishes the job."""
        live = self.live()
        side = "old" if live == self.old else "new" if live == self.new else None
        assert side is not None, (f"{what} (seed {SEED}): the live state is a mix or missing: "
                                  f"{ {s: ('old' if d == self.old[s] else 'new' if d == self.new[s] else d) for s, d in live.items()} }; "
                                  f"beside it: {[p.name for p in self.leftovers()]}")
        report = json.loads(self.w.cli("verify", "--all", "--json").stdout)
        assert report["ok"], f"{what}: {report}"
        self.w.ok("restore", "latest", "--yes")
        assert self.live() == self.new, f"{what}: the restore after the kill did not restore the backup"
        return side


@pytest.fixture
def restore_world(tmp_path, template, killpoints) -> RestoreWorld:
    w = World(tmp_path, template, killpoints)
    rw = RestoreWorld(w, ("files",))
    started = time.monotonic()
    w.ok("restore", "latest", "--yes")
    rw.seconds = time.monotonic() - started
    assert rw.live() == rw.new
    rw.reset()
    return rw


def kill_restores(rw: "RestoreWorld", rng: random.Random, runs: int, label: str) -> tuple[int, dict[str, int]]:
    """Restore ``latest`` ``runs`` times, killed at random moments and at the swap; check each outcome.

    Returns how many were killed, and how often the live state was left old or new.
    """
    w = rw.w
    staging = lambda: any(".eternia-restore-" in p.name for p in w.state.iterdir())
    sides = {"old": 0, "new": 0}
    kills = 0
    for run in range(runs):
        mode = ("after-start", "after-staging-began", "swap-start", "swap-done")[run % 4]
        if mode == "after-start":
            delay = rng.uniform(0.1, rw.seconds)
            what = f"run {run}: {label} killed {delay:.3f}s after start"
            killed, out = kill_after(w.spawn("restore", "latest", "--yes"), delay)
        elif mode == "after-staging-began":
            delay = rng.uniform(0, rw.seconds / 3)
            what = f"run {run}: {label} killed {delay:.3f}s after staging began"
            killed, out = kill_after(w.spawn("restore", "latest", "--yes"), delay, when=staging)
        else:
            what = f"run {run}: {label} killed at {mode}"
            killed, out = finish(w.spawn("restore", "latest", "--yes", kill_at=mode))
            assert killed, f"{what}: the kill point was not reached: {out}"
        if not killed:
            assert out.startswith("exit 0\n") and f"restored backup {rw.backup_id}" in out, f"{what}: {out}"
        kills += killed
        sides[rw.check_after_kill(what)] += 1
        rw.reset()
    return kills, sides


def test_sigkill_during_restore_leaves_old_or_new_state(restore_world):
    kills, sides = kill_restores(restore_world, random.Random(SEED + 1), RESTORE_RUNS, "restore")
    print(f"restore killed {kills} times; left old state {sides['old']}, new state {sides['new']} (seed {SEED})")
    assert kills >= RESTORE_RUNS * 3 // 4, f"only {kills} of {RESTORE_RUNS} restores were killed (seed {SEED})"
    if RESTORE_RUNS >= 4:
        assert sides["old"] and sides["new"], "the kills should land both before and after the swap"


def assert_reported_then_finished(rw: "RestoreWorld", what: str) -> None:
    """`status` names the interrupted restore; the next restore finishes it: new state, no leftovers."""
    w = rw.w
    status = w.cli("status")
    assert "INTERRUPTED RESTORE" in status.stdout and rw.backup_id in status.stdout, f"{what}: {status.stdout}"
    w.ok("restore", "latest", "--yes")
    assert rw.live() == rw.new, f"{what}: the next restore did not finish the job"
    assert rw.leftovers() == [], f"{what}: left beside the destination: {rw.leftovers()}"
    assert "INTERRUPTED" not in w.cli("status").stdout


def test_sigkill_between_the_two_renames_of_the_fallback_swap(restore_world):
    """Where RENAME_EXCHANGE is missing the swap is two renames; the journal covers the moment between."""
    rw, w = restore_world, restore_world.w
    killed, out = finish(w.spawn("restore", "latest", "--yes", kill_at="swap-first-rename"))
    if not killed:  # the test itself is broken
        raise RuntimeError(f"the kill point was not reached: {out}")
    assert rw.live()["files"] is None  # the old state was moved aside, the new not yet in
    aside = [p for p in rw.leftovers() if ".eternia-replaced-" in p.name]
    assert len(aside) == 1 and tree_digest(aside[0]) == rw.old["files"]  # nothing lost
    assert_reported_then_finished(rw, "killed between the two renames of the swap")


def test_sigkill_between_the_swaps_of_two_sources(tmp_path, template, killpoints):
    """Killed after the first source's swap: reported, and the next run finishes every source (no mix)."""
    w = World(tmp_path, template, killpoints, sources=("files", "media"))
    rw = RestoreWorld(w, ("files", "media"))
    killed, out = finish(w.spawn("restore", "latest", "--yes", kill_at="between-sources"))
    if not killed:  # the test itself is broken
        raise RuntimeError(f"the kill point was not reached: {out}")
    assert_reported_then_finished(rw, "killed between the swaps of two sources")
    created = w.cli("create")  # a backup after a finished restore holds the restored state
    assert created.returncode == 0, created.stderr


def test_killed_restore_leftovers_are_removed_or_reported_by_the_next_restore(restore_world):
    rw, w = restore_world, restore_world.w
    killed, out = finish(w.spawn("restore", "latest", "--yes", kill_at="swap-done"))
    if not killed:  # not the known bug: the test itself is broken
        raise RuntimeError(f"the kill point was not reached: {out}")
    if not rw.leftovers():
        raise RuntimeError("the kill after the swap should leave what it replaced beside the destination")
    again = w.ok("restore", "latest", "--yes")
    remaining = rw.leftovers()
    assert not remaining or all(p.name in again.stdout + again.stderr for p in remaining), \
        f"left silently beside the destination: {[p.name for p in remaining]}"


def test_ctrl_c_in_the_swap_waits_for_it_and_says_the_restore_was_made(restore_world):
    """A SIGINT between the exchange and the plan knowing it committed: the swap completes (the Ctrl-C is
    held), the message says so, and the old state stays whole for the next run to remove."""
    rw, w = restore_world, restore_world.w
    proc = w.spawn("restore", "latest", "--yes", kill_at="sigint-in-swap")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}: {out}{err}"
    assert "nothing was committed" not in err and "the live data is the backup's" in err, err
    assert rw.live() == rw.new
    [left] = rw.leftovers()
    assert tree_digest(left) == rw.old["files"] and str(left) in err  # nothing of it lost yet
    assert_reported_then_finished(rw, "a Ctrl-C in the swap")


def test_killed_after_the_swap_with_an_old_state_that_cannot_be_removed(restore_world):
    """The next runs finish the restore, warn about what they cannot remove, and are not blocked by it."""
    rw, w = restore_world, restore_world.w
    locked = w.state / "files" / "locked.log"
    locked.write_text("old state, immutable\n")
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work here (needs root and a filesystem with file attributes)")
    try:
        killed, out = finish(w.spawn("restore", "latest", "--yes", kill_at="swap-done"))
        if not killed:  # the test itself is broken
            raise RuntimeError(f"the kill point was not reached: {out}")
        created = w.ok("create")  # finishes the restore; what it cannot remove is a warning
        [left] = rw.leftovers()
        assert str(left) in created.stderr and "remove it by hand" in created.stderr, created.stderr
        assert rw.live() == rw.new and [p.name for p in left.iterdir()] == ["locked.log"]
        status = w.cli("status", "--json")
        report = json.loads(status.stdout)
        assert status.returncode == 1 and report["interrupted_restore"] is None, status.stdout
        assert [r["path"] for r in report["restore_leftovers"]] == [str(left)]
        w.ok("restore", "latest", "--yes")
        subprocess.run(["chattr", "-i", str(left / "locked.log")], check=True)
        w.ok("create")
        assert rw.leftovers() == [] and json.loads(w.cli("status", "--json").stdout)["restore_leftovers"] == []
    finally:
        for p in w.state.rglob("locked.log"):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)


# -- incremental backups ------------------------------------------------------------------------


def change_some(root: Path, rng: random.Random, run: int) -> None:
    """What an hour of an application changes: one blob rewritten, a document edited, one added."""
    (root / "blobs" / f"blob-{run % 5}.bin").write_bytes(rng.randbytes(2 * 1024 * 1024))
    (root / "docs" / f"doc-{rng.randrange(300):03d}.txt").write_text(f"edited in run {run}\n" * 500)
    (root / "docs" / f"new-{run}.txt").write_text(f"added in run {run}\n")


@pytest.fixture
def inc_world(tmp_path, template, killpoints) -> World:
    """A full backup and an incremental on top of it; the next ones are incremental too."""
    w = World(tmp_path, template, killpoints, incremental=True)
    w.ok("create")
    w.rng = random.Random(SEED + 7)
    change_some(w.state / "files", w.rng, 0)
    started = time.monotonic()
    w.ok("create")
    w.create_seconds = time.monotonic() - started
    latest = w.listed()[0]
    assert latest["kind"] == "incremental"
    w.archive_size = latest["size"]
    return w


def test_sigkill_during_an_incremental_backup(inc_world):
    """Killed anywhere before its manifest, an incremental leaves the chain as it was; the next one
    builds on the newest good backup, and cleanup removes what the dead one left (its index too)."""
    w = inc_world
    points = ["archive-bytes", "after-start", "archive-renamed", "index-renamed", "manifest-write",
              "manifest-before-rename"]
    kills = 0
    for run, point in enumerate(points, start=1):
        earlier = w.listed_ids()
        change_some(w.state / "files", w.rng, run)
        if point == "archive-bytes":
            offset = w.rng.randrange(1, w.archive_size)
            what = f"incremental killed after {offset} archive bytes"
            killed, out = finish(w.spawn("create", kill_at=f"archive-bytes:{offset}"))
        elif point == "after-start":
            delay = w.rng.uniform(0.05, w.create_seconds)
            what = f"incremental killed {delay:.3f}s after start"
            killed, out = kill_after(w.spawn("create"), delay)
        else:
            what = f"incremental killed at {point}"
            killed, out = finish(w.spawn("create", kill_at=point))
            assert killed, f"{what}: the kill point was not reached: {out}"
        if killed and not new_manifests(w, earlier):
            kills += 1
            check_after_killed_create(w, earlier, what)
        else:
            assert killed or out.startswith("exit 0\n"), f"{what}: {out}"
            w.ok("verify", "latest")
            w.ok("cleanup")
    assert kills >= len(points) - 1, f"only {kills} of {len(points)} incrementals were killed (seed {SEED})"
    # every backup of the chain still restores
    latest = w.listed()[0]
    assert latest["kind"] == "incremental"
    w.ok("restore", "latest", "--to", str(w.root / "out"))
    assert tree_digest(w.root / "out" / "files") == tree_digest(w.state / "files")


@pytest.fixture
def chain_restore_world(tmp_path, template, killpoints) -> RestoreWorld:
    """The NEW state is in an incremental backup on top of a full one of an earlier state."""
    w = World(tmp_path, template, killpoints, incremental=True)
    w.ok("create")
    change_some(w.state / "files", random.Random(SEED + 9), 1)
    rw = RestoreWorld(w, ("files",))
    assert w.listed()[0]["kind"] == "incremental"
    started = time.monotonic()
    w.ok("restore", "latest", "--yes")
    rw.seconds = time.monotonic() - started
    assert rw.live() == rw.new
    rw.reset()
    return rw


def test_sigkill_during_a_chain_restore_leaves_old_or_new_state(chain_restore_world):
    """The chain's archives are all staged before anything is swapped: old or new, never a mix."""
    runs = max(6, RESTORE_RUNS // 2)
    kills, sides = kill_restores(chain_restore_world, random.Random(SEED + 11), runs, "chain restore")
    print(f"chain restore killed {kills} of {runs} times; left old state {sides['old']}, new {sides['new']}")
    assert kills >= 2  # at the swap points, always; at random moments, when they came before the end
    assert sides["old"] and sides["new"], "the kills should land both before and after the swap"
