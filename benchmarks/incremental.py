#!/usr/bin/env python3
"""Incremental backups measured: no-change backups, small change sets, chain restores, a big index.

Generates the deterministic application state of benchmarks/dataset.py in a
temporary directory outside the repository and runs the real CLI of this
environment (``eternia-backup --config C ...``, a subprocess measured by
measure.py) with ``archive.incremental`` on, beside restic where installed:

  no-change   the second backup of an unchanged state: ours (incremental) vs restic's;
              ours' stored bytes as a % of the full archive          goals: <= restic's time, <= 1%
  changes     1% of the small files rewritten + the log appended by 10 MiB: ours' stored
              bytes vs tar of exactly those changes, zstd -3         goal: <= 1.2x
  chain       restore of the 24th incremental vs restore of a full backup (create --full)
              of the same state, into an empty dir; both trees checked against the live one
                                                                     goal: <= 1.3x
  index       an incremental backup (and its restore) with a 1,000,000-entry file index:
              peak RSS and time                                      goal: <= 150 MB

Each timed run starts after a sync and, for data on disk, a read of its inputs into the
page cache (untimed), as bench.py does. Writes ``<out>/incremental.json`` and
``<out>/incremental.md`` and prints the table. Temporary data is removed at the end, also
on Ctrl-C or SIGTERM.

    make bench-incremental
    .venv/bin/python benchmarks/incremental.py --size 128M --tiny 20000 --chain 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cli_command, du, fresh, log, machine, read_through, rm  # noqa: E402
from dataset import MIB, _text_pool, generate_state, generate_tiny, human, parse_size  # noqa: E402
from measure import compile_package, kill_running, run_measured, timed_env  # noqa: E402

FIGURES = ["no-change", "changes", "chain", "index"]
REPO = Path(__file__).resolve().parent.parent
APPEND = 10 * MIB  # what the log grows by per change set
CHANGED_SHARE = 0.01  # of the small files, per change set


# -- the tree: deterministic changes, and a checksum -------------------------------------------


def small_files(data: Path) -> list[Path]:
    return sorted((data / "files" / "docs").glob("*/doc-*.json"))


def log_lines(rng: random.Random, n_bytes: int) -> bytes:
    """``n_bytes`` of new request lines, like dataset.py's log but never repeating its blocks."""
    lines, n = [], 0
    while n < n_bytes:
        line = (f"2024-07-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z {rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} "
                f"req={rng.getrandbits(48):012x} path=/api/{rng.choice(['orders', 'users', 'cart'])}/"
                f"{rng.randint(1, 99999)} status={rng.choice([200, 200, 200, 201, 404, 500])} ms={rng.randint(1, 900)}\n")
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:n_bytes]


def change_set(data: Path, rnd: int, appended_to: Path | None = None, *, churn: bool = False,
               append: int = APPEND) -> dict:
    """Change the state as round ``rnd`` (same round, same bytes).

    Rewrites 1% of the small JSON files (picked by a seeded RNG; same size range, new
    notes text and a new score) and appends ``append`` bytes (10 MiB) of new lines to files/app.log. The
    appended bytes are also written to ``appended_to`` (for the reference archive).
    ``churn``: also one new small file and one removed, so that a chain restore has
    additions and removals to get right.
    """
    rng = random.Random(f"incremental-round-{rnd}")
    docs = small_files(data)
    picked = sorted(rng.sample(docs, max(1, round(len(docs) * CHANGED_SHARE))))
    pool = _text_pool(rng, 256 * 1024)
    for p in picked:
        doc = json.loads(p.read_bytes())
        n = max(0, len(doc.get("notes", "")))
        start = rng.randrange(0, len(pool) - n - 1)
        doc.update(score=round(rng.random(), 6), rev=rnd, notes=pool[start:start + n])
        p.write_bytes(json.dumps(doc).encode())
    tail = log_lines(rng, append) if append else b""
    if tail:
        with open(data / "files" / "app.log", "ab") as f:
            f.write(tail)
    if appended_to is not None:
        appended_to.parent.mkdir(parents=True, exist_ok=True)
        appended_to.write_bytes(tail)
    made = {"changed": [str(p.relative_to(data)) for p in picked], "appended": len(tail)}
    if churn:
        new = data / "files" / "docs" / f"{rnd % 100:02d}" / f"new-{rnd:04d}.json"
        new.write_bytes(json.dumps({"id": f"new-{rnd}", "notes": pool[:2000]}).encode())
        kept = set(picked)
        gone = rng.choice([d for d in docs if d not in kept])
        gone.unlink()
        made.update(added=str(new.relative_to(data)), removed=str(gone.relative_to(data)))
    return made


def tree_digest(root: Path) -> dict:
    """sha256 over every entry below ``root``, in path order: relative path, type, permission
    bits, and a file's size and sha256 of its content (a link's target). Not mtimes."""
    h = hashlib.sha256()
    count = 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb", buffering=0) as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
                what = f"f {st.st_size} {content}"
            elif stat.S_ISLNK(st.st_mode):
                what = "l " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                what = "d"
            else:
                what = "?"
            h.update(f"{rel}\0{what}\0{stat.S_IMODE(st.st_mode):o}\n".encode("utf-8", "surrogateescape"))
            count += 1
    return {"sha256": h.hexdigest(), "entries": count}


def restored_root(dest: Path, source: str) -> Path:
    """Where ``restore --to DEST`` put a source's tree."""
    return dest / source if (dest / source).is_dir() else dest


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def median(xs):
    return round(statistics.median(xs), 3) if xs else None


# -- the run -----------------------------------------------------------------------------------


class IncrementalBench:
    def __init__(self, args, tmp: Path, shm: Path):
        self.args = args
        self.tmp = tmp
        self.shm = shm
        self.cli = cli_command()
        self.env = timed_env()
        compile_package(self.env)
        self.data = tmp / "data"
        self.results: dict[str, dict] = {}
        self.loads: list[float] = []

    # -- helpers ------------------------------------------------------------------------

    def config(self, name: str, source: Path, store: Path, state: Path) -> Path:
        path = self.tmp / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        body = {"backup": {"name": "bench", "retention_days": 0, "storage_path": str(store), "state_dir": str(state),
                           "sources": [{"type": "directory", "name": "data", "path": str(source),
                                        "sqlite": "ignore"}],
                           "archive": {"incremental": {"enabled": True, "full_every": 1000}}}}
        path.write_text(json.dumps(body, indent=1))
        return path

    def measured(self, cmd, *, warm=(), env=None, cwd=None) -> dict:
        """sync, read ``warm`` into the page cache, then run and measure ``cmd``; the load after it."""
        os.sync()
        for p in warm:
            read_through(p)
        r = run_measured(cmd, env=env or self.env, cwd=cwd)
        r["load_1min"] = load()
        self.loads.append(r["load_1min"])
        r.pop("stderr", None)
        return r

    def create(self, cfg: Path, store: Path, *, full: bool = False, warm=()) -> dict:
        before = du(store) if store.exists() else 0
        r = self.measured(self.cli + ["--config", str(cfg), "-q", "create", "--json"] + (["--full"] if full else []),
                          warm=warm)
        out = json.loads(r.pop("stdout"))
        r["backup_id"] = out["backup_id"]
        r["stored_bytes"] = du(store) - before  # archive + file index + manifest
        r.update(self.files_of(store, out["backup_id"]))
        return r

    @staticmethod
    def files_of(store: Path, backup_id: str) -> dict:
        """The manifest's kind and the sizes of the archive and the file index of ``backup_id``."""
        manifest = next(p for p in store.rglob(f"*{backup_id}*.json") if not p.name.endswith(".jsonl"))
        m = json.loads(manifest.read_text())
        archive = m.get("archive", {})
        index = m.get("files_index") or {}
        return {"kind": m.get("kind"), "archive_bytes": archive.get("size"), "index_bytes": index.get("size"),
                "manifest_bytes": manifest.stat().st_size}

    def restore(self, cfg: Path, backup_id: str, dest: Path, live: dict, *, warm=()) -> dict:
        fresh(dest)
        r = self.measured(self.cli + ["--config", str(cfg), "-q", "restore", backup_id, "--to", str(dest), "--yes"],
                          warm=warm)
        r.pop("stdout", None)
        got = tree_digest(restored_root(dest, "data"))
        r["tree_matches"] = got == live
        r["restored_entries"] = got["entries"]
        if not r["tree_matches"]:
            log(f"   !! restored tree of {backup_id} differs from the live tree: {got} vs {live}")
        rm(dest)
        return r

    def restic_env(self, repo: Path) -> dict:
        return {**self.env, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": str(self.tmp / "restic-cache")}

    def restic_backup(self, repo: Path) -> dict:
        before = du(repo)
        r = self.measured(["restic", "backup", "-q", "."], cwd=self.data, env=self.restic_env(repo), warm=[self.data])
        r.pop("stdout", None)
        r["stored_bytes"] = du(repo) - before
        return r

    @staticmethod
    def brief(r: dict) -> dict:
        keep = ("seconds", "peak_rss_mib", "tree_peak_mib", "stored_bytes", "archive_bytes", "index_bytes", "kind",
                "backup_id", "load_1min", "tree_matches", "restored_entries")
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep}

    # -- figures 1 and 2: one chain, restic beside it ------------------------------------

    def figures_1_2(self) -> None:
        store = self.tmp / "store"
        cfg = self.config("main", self.data, store, self.tmp / "state")
        restic = shutil.which("restic") is not None
        repo = self.tmp / "restic"
        if not restic:
            log("restic is not installed: its figures are skipped")
        log("\n== the first (full) backups")
        full = self.create(cfg, store, warm=[self.data])
        log(f"   ours full      {full['seconds']:6.2f} s  {full['peak_rss_mib']:5.0f} MiB  "
            f"{human(full['archive_bytes'])} archive ({full['kind']})")
        first = {"ours": self.brief(full)}
        if restic:
            subprocess.run(["restic", "init", "-q"], env=self.restic_env(repo), check=True, capture_output=True)
            rf = self.restic_backup(repo)
            log(f"   restic first   {rf['seconds']:6.2f} s  {rf['peak_rss_mib']:5.0f} MiB  {human(rf['stored_bytes'])}")
            first["restic"] = self.brief(rf)
        self.results["first"] = first
        full_archive = full["archive_bytes"]

        if "no-change" in self.args.only:
            log(f"\n== no-change backup ({self.args.repeat} repeat(s), alternating)")
            ours, theirs = [], []
            for rep in range(self.args.repeat):
                order = ["ours", "restic"] if rep % 2 == 0 else ["restic", "ours"]
                for who in order:
                    if who == "ours":
                        r = self.create(cfg, store, warm=[self.data])
                        ours.append(r)
                        log(f"   [{rep + 1}] ours   {r['seconds']:6.2f} s  {r['peak_rss_mib']:5.0f} MiB  "
                            f"stored {human(r['stored_bytes'])} ({r['kind']}; archive {human(r['archive_bytes'])}, "
                            f"index {human(r['index_bytes'] or 0)})  load {r['load_1min']}")
                    elif restic:
                        r = self.restic_backup(repo)
                        theirs.append(r)
                        log(f"   [{rep + 1}] restic {r['seconds']:6.2f} s  {r['peak_rss_mib']:5.0f} MiB  "
                            f"added {human(r['stored_bytes'])}  load {r['load_1min']}")
            res = {"full_archive_bytes": full_archive, "ours": [self.brief(r) for r in ours],
                   "ours_median_s": median([r["seconds"] for r in ours]),
                   "ours_stored_pct_of_full": round(100 * statistics.median(r["stored_bytes"] for r in ours)
                                                    / full_archive, 3),
                   "ours_archive_pct_of_full": round(100 * statistics.median(r["archive_bytes"] for r in ours)
                                                     / full_archive, 6),
                   "kinds": sorted({r["kind"] for r in ours}), "load_1min": [r["load_1min"] for r in ours + theirs]}
            if theirs:
                res.update(restic=[self.brief(r) for r in theirs], restic_median_s=median([r["seconds"] for r in theirs]))
                res["ratio"] = round(res["ours_median_s"] / res["restic_median_s"], 2)
            self.results["no-change"] = res

        if "changes" in self.args.only:
            log(f"\n== 1% of the small files changed + the log appended by {human(APPEND)} "
                f"({self.args.repeat} round(s), alternating)")
            rounds = []
            for rep in range(self.args.repeat):
                alone_dir = self.tmp / f"alone-{rep}"
                made = change_set(self.data, rep + 1, alone_dir / "files" / "app.log")
                ref = self.reference(made, alone_dir)
                row = {"changed_files": len(made["changed"]), "appended_bytes": made["appended"], **ref}
                order = ["ours", "restic"] if rep % 2 == 0 else ["restic", "ours"]
                for who in order:
                    if who == "ours":
                        r = self.create(cfg, store, warm=[self.data])
                        row["ours"] = self.brief(r)
                    elif restic:
                        row["restic"] = self.brief(self.restic_backup(repo))
                o = row["ours"]
                row["ratio_stored"] = round(o["stored_bytes"] / ref["alone_bytes"], 2)
                row["ratio_archive"] = round(o["archive_bytes"] / ref["alone_bytes"], 2)
                log(f"   [{rep + 1}] ours {o['seconds']:.2f} s, stored {human(o['stored_bytes'])} ({o['kind']}; archive "
                    f"{human(o['archive_bytes'])}, index {human(o['index_bytes'] or 0)}); the changes alone "
                    f"{human(ref['alone_bytes'])} -> {row['ratio_stored']:.2f}x; changed files whole "
                    f"{human(ref['whole_files_bytes'])}" + (f"; restic {row['restic']['seconds']:.2f} s, added "
                                                           f"{human(row['restic']['stored_bytes'])}"
                                                           if "restic" in row else ""))
                rm(alone_dir)
                rounds.append(row)
            self.results["changes"] = {
                "rounds": rounds, "ratio_median": median([r["ratio_stored"] for r in rounds]),
                "ours_stored_median": median([r["ours"]["stored_bytes"] for r in rounds]),
                "alone_median": median([r["alone_bytes"] for r in rounds]),
                "whole_files_median": median([r["whole_files_bytes"] for r in rounds]),
                "ours_median_s": median([r["ours"]["seconds"] for r in rounds]),
                "restic_median_s": median([r["restic"]["seconds"] for r in rounds if "restic" in r]),
                "restic_added_median": median([r["restic"]["stored_bytes"] for r in rounds if "restic" in r]),
                "load_1min": [r["ours"]["load_1min"] for r in rounds]}
        rm(repo)
        rm(store)

    def reference(self, made: dict, alone_dir: Path) -> dict:
        """What the changes compress to alone, and what the changed files do whole.

        alone: ``tar -cf - -C DATA <changed small files> -C ALONE files/app.log | zstd -3``, where
        ALONE/files/app.log holds only the appended bytes (GNU tar's default format, zstd's CLI,
        single-threaded). whole: the same with the whole current log instead of its tail: the least
        an archive of whole changed files can hold.
        """
        listing = alone_dir / "changed.list"
        listing.write_text("".join(p + "\n" for p in made["changed"]))
        sizes = {}
        for key, log_dir in (("alone_bytes", alone_dir), ("whole_files_bytes", self.data)):
            out = alone_dir / f"{key}.tar.zst"
            cmd = (f"tar -cf - -C {shlex.quote(str(self.data))} -T {shlex.quote(str(listing))} "
                   f"-C {shlex.quote(str(log_dir))} files/app.log | zstd -3 -T1 -q -c > {shlex.quote(str(out))}")
            subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
            sizes[key] = out.stat().st_size
        return sizes

    # -- figure 3: restore of the Nth incremental vs a full backup of the same state --------

    def figure_3(self) -> None:
        n = self.args.chain
        store = self.tmp / "store-chain"
        cfg = self.config("chain", self.data, store, self.tmp / "state-chain")
        log(f"\n== chain: a full backup, then {n} incrementals, each after a change set with churn")
        made = [self.create(cfg, store, warm=[self.data])]
        for i in range(n):
            change_set(self.data, 100 + i, churn=True, append=self.args.chain_append)
            r = self.create(cfg, store, warm=[self.data])
            made.append(r)
            log(f"   incremental {i + 1:2d}: {r['seconds']:5.2f} s  {r['peak_rss_mib']:4.0f} MiB  {r['kind']}  "
                f"stored {human(r['stored_bytes'])}  load {r['load_1min']}")
        full = self.create(cfg, store, full=True, warm=[self.data])
        log(f"   create --full: {full['seconds']:.2f} s, {full['kind']}, archive {human(full['archive_bytes'])}")
        live = tree_digest(self.data)
        dest = self.tmp / "restored"
        chain_runs, full_runs = [], []
        for rep in range(self.args.restore_repeat):
            order = ["chain", "full"] if rep % 2 == 0 else ["full", "chain"]
            for who in order:
                backup_id = made[-1]["backup_id"] if who == "chain" else full["backup_id"]
                r = self.restore(cfg, backup_id, dest, live, warm=[store])
                (chain_runs if who == "chain" else full_runs).append(r)
                log(f"   [{rep + 1}] restore {who:<5} {r['seconds']:6.2f} s  {r['peak_rss_mib']:5.0f} MiB  "
                    f"tree matches: {r['tree_matches']}  load {r['load_1min']}")
        chain_s, full_s = median([r["seconds"] for r in chain_runs]), median([r["seconds"] for r in full_runs])
        self.results["chain"] = {
            "incrementals": n, "appended_per_link": self.args.chain_append, "kinds": [r["kind"] for r in made],
            "chain_archive_bytes": sum(r["archive_bytes"] for r in made), "full_archive_bytes": full["archive_bytes"],
            "create_seconds": [round(r["seconds"], 2) for r in made], "full_create": self.brief(full),
            "live_tree": live, "chain_restores": [self.brief(r) for r in chain_runs],
            "full_restores": [self.brief(r) for r in full_runs], "chain_median_s": chain_s, "full_median_s": full_s,
            "ratio": round(chain_s / full_s, 2),
            "trees_match": all(r["tree_matches"] for r in chain_runs + full_runs),
            "load_1min": [r["load_1min"] for r in chain_runs + full_runs]}
        rm(store)

    # -- figure 4: a 1,000,000-entry file index ----------------------------------------------

    def figure_4(self) -> None:
        n = self.args.tiny
        root = self.shm / "index"
        tree, store, dest = root / "tree", root / "store", root / "restored"
        log(f"\n== index: {n:,} files of 1-200 bytes in {root}")
        t0 = time.monotonic()
        made = generate_tiny(tree, n)
        log(f"   made in {time.monotonic() - t0:.1f} s")
        cfg = self.config("index", tree, store, root / "state")
        warm = [] if self.shm != self.tmp else [tree]  # a tmpfs is memory already
        full = self.create(cfg, store, warm=warm)
        log(f"   full:        {full['seconds']:6.1f} s  {full['peak_rss_mib']:5.0f} MiB  archive "
            f"{human(full['archive_bytes'])}, index {human(full['index_bytes'] or 0)}  load {full['load_1min']}")
        rng = random.Random("index-change")
        files = sorted(rng.sample(range(n), min(n, 10)))
        for i in files:
            p = tree / f"d{i // 1000:04d}" / f"f{i:07d}.txt"
            p.write_bytes(f"changed {i}\n".encode())
        inc = self.create(cfg, store, warm=warm)
        log(f"   incremental: {inc['seconds']:6.1f} s  {inc['peak_rss_mib']:5.0f} MiB  ({inc['kind']}) archive "
            f"{human(inc['archive_bytes'])}, index {human(inc['index_bytes'] or 0)}  load {inc['load_1min']}")
        res = {"files": made["files"], "changed": len(files), "full": self.brief(full), "incremental": self.brief(inc)}
        if self.args.index_restore:
            live = tree_digest(tree)
            r = self.restore(cfg, inc["backup_id"], dest, live, warm=warm)
            log(f"   restore of the incremental: {r['seconds']:6.1f} s  {r['peak_rss_mib']:5.0f} MiB  "
                f"tree matches: {r['tree_matches']}  load {r['load_1min']}")
            res["restore"] = self.brief(r)
        self.results["index"] = res
        rm(root)

    def run(self) -> dict:
        info = machine()
        log(f"machine: {info['cores']} cores, {info['memory_gib']} GiB, load {info['loadavg_start']}")
        t_start = time.monotonic()
        only = self.args.only
        if only & {"no-change", "changes", "chain"}:
            size = parse_size(self.args.size)
            log(f"generating {human(size)} of state in {self.data} ...")
            t0 = time.monotonic()
            self.made = generate_state(self.data, size)
            os.sync()
            self.made["seconds"] = round(time.monotonic() - t0, 1)
            log(f"  {self.made['files']} files, {human(self.made['bytes'])} in {self.made['seconds']} s")
            if only & {"no-change", "changes"}:
                self.figures_1_2()
            if "chain" in only:
                self.figure_3()
            rm(self.data)
        if "index" in only and self.args.tiny > 0:
            self.figure_4()
        info["loadavg_end"] = os.getloadavg()
        info["load_1min_after_runs"] = {"min": min(self.loads, default=None), "max": max(self.loads, default=None),
                                        "median": median(self.loads)}
        return {"machine": info, "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(self.args).items()
                                          if k not in ("out", "workdir", "shm")},
                "dataset": getattr(self, "made", None), "seconds_total": round(time.monotonic() - t_start, 1),
                "figures": self.results}


# -- reporting ----------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def loads(xs) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "-"


def markdown(report: dict) -> str:
    m = report["machine"]
    f = report["figures"]
    ds = report.get("dataset") or {}
    la = m["load_1min_after_runs"]
    lines = ["# eternia-backup: incremental backups", "",
             f"Machine: {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['cpu']}; Python {m['python']}; {m['date']}; "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
             f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])}; 1-minute load after the timed runs "
             f"{la['min']}–{la['max']} (median {la['median']})"
             + (" (above the core count: other work shared the machine, figures are noisy)"
                if (la["max"] or 0) > (m["cores"] or 1) else "") + ".",
             f"eternia-backup {m['eternia_backup']} (commit {m['commit']}); restic: "
             f"{m['tools'].get('restic') or 'not installed'}; zstd: {m['tools'].get('zstd')}.", ""]
    if ds:
        lines += [f"Data set: {human(ds['bytes'])}, {ds['files']:,} files (benchmarks/dataset.py, `--size "
                  f"{report['args']['size']}`). Incremental backups on (`full_every: 1000`), local target.", ""]
    lines += ["| figure | measured | goal | met | load (1 min) |", "|---|---|---|---|---|"]
    nc = f.get("no-change")
    if nc:
        if "restic_median_s" in nc:
            lines.append(f"| no-change backup: time, ours ÷ restic | {nc['ours_median_s']:.2f} s ÷ "
                         f"{nc['restic_median_s']:.2f} s = {nc['ratio']:.2f}x | ≤ 1x | {verdict(nc['ratio'] <= 1)} | "
                         f"{loads(nc['load_1min'])} |")
        else:
            lines.append(f"| no-change backup: time | {nc['ours_median_s']:.2f} s (restic not installed) | "
                         f"≤ restic | - | {loads(nc['load_1min'])} |")
        lines.append(f"| no-change backup: stored (archive + index + manifest) ÷ full archive | "
                     f"{nc['ours_stored_pct_of_full']:.3f}% (the archive alone: {human(nc['ours'][-1]['archive_bytes'])}, "
                     f"the index {human(nc['ours'][-1]['index_bytes'] or 0)}; full archive {human(nc['full_archive_bytes'])}) | "
                     f"≤ 1% | {verdict(nc['ours_stored_pct_of_full'] <= 1)} | {loads(nc['load_1min'])} |")
    ch = f.get("changes")
    if ch:
        lines.append(f"| 1% small files + 10 MiB log append: stored ÷ the changes alone (tar, zstd -3) | "
                     f"{human(ch['ours_stored_median'])} ÷ {human(ch['alone_median'])} = {ch['ratio_median']:.2f}x | "
                     f"≤ 1.2x | {verdict(ch['ratio_median'] <= 1.2)} | {loads(ch['load_1min'])} |")
    cn = f.get("chain")
    if cn:
        lines.append(f"| restore of the {ordinal(cn['incrementals'])} incremental (the log appended by "
                     f"{human(cn.get('appended_per_link', APPEND))} per link) ÷ restore of a full backup of the same "
                     f"state | {cn['chain_median_s']:.2f} s ÷ {cn['full_median_s']:.2f} s = {cn['ratio']:.2f}x; "
                     f"trees match: {cn['trees_match']} | ≤ 1.3x | {verdict(cn['ratio'] <= 1.3 and cn['trees_match'])} "
                     f"| {loads(cn['load_1min'])} |")
    ix = f.get("index")
    if ix:
        inc = ix["incremental"]
        mb = inc["peak_rss_mib"] * MIB / 1e6
        lines.append(f"| peak RSS of an incremental backup, {ix['files']:,}-entry index | {inc['peak_rss_mib']:.0f} MiB "
                     f"({mb:.0f} MB), {inc['seconds']:.1f} s | ≤ 150 MB | {verdict(mb <= 150)} | {inc['load_1min']} |")
        if "restore" in ix:
            r = ix["restore"]
            lines.append(f"| peak RSS of restoring that incremental | {r['peak_rss_mib']:.0f} MiB, {r['seconds']:.1f} s; "
                         f"tree matches: {r['tree_matches']} | - | - | {r['load_1min']} |")
    lines.append("")
    first = f.get("first")
    if first:
        o = first["ours"]
        text = f"First (full) backup: ours {o['seconds']:.2f} s, archive {human(o['archive_bytes'])}"
        if "restic" in first:
            text += f"; restic {first['restic']['seconds']:.2f} s, {human(first['restic']['stored_bytes'])}"
        lines += [text + ".", ""]
    if nc:
        lines += ["No-change backups, each run: ours " + ", ".join(
            f"{r['seconds']:.2f} s / {human(r['stored_bytes'])} ({r['kind']})" for r in nc["ours"]) +
            ("; restic " + ", ".join(f"{r['seconds']:.2f} s / {human(r['stored_bytes'])} added" for r in nc["restic"])
             if "restic" in nc else "") + ".", ""]
    if ch:
        lines += [f"Change sets ({len(ch['rounds'])} rounds, each {ch['rounds'][0]['changed_files']} small JSON files "
                  f"rewritten with new text and {human(ch['rounds'][0]['appended_bytes'])} of new lines appended to "
                  "files/app.log). *The changes alone*: `tar -cf - -C DATA <the changed files> -C ALONE files/app.log "
                  "| zstd -3 -T1`, where ALONE/files/app.log holds only the appended bytes. *Changed files whole*: the "
                  "same with the whole log, the least an archive of whole files can hold. Ours: the bytes the "
                  "incremental added to the target (archive, file index, manifest).", "",
                  "| round | ours: time | stored (archive / index) | the changes alone | changed files whole | "
                  "ours ÷ alone | restic: time, added |", "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(ch["rounds"], 1):
            o = r["ours"]
            rs = f"{r['restic']['seconds']:.2f} s, {human(r['restic']['stored_bytes'])}" if "restic" in r else "-"
            lines.append(f"| {i} | {o['seconds']:.2f} s | {human(o['stored_bytes'])} ({human(o['archive_bytes'])} / "
                         f"{human(o['index_bytes'] or 0)}) | {human(r['alone_bytes'])} | {human(r['whole_files_bytes'])} "
                         f"| {r['ratio_stored']:.2f}x | {rs} |")
        lines.append("")
    if cn:
        lines += [f"Chain: a full backup then {cn['incrementals']} incrementals, each after a change set as above "
                  f"(the log appended by {human(cn.get('appended_per_link', APPEND))}) plus "
                  "one new and one removed small file; then `create --full` of the same state. The chain's archives "
                  f"hold {human(cn['chain_archive_bytes'])}, the full backup's {human(cn['full_archive_bytes'])}. "
                  f"Restores (`restore ID --to DIR --yes`, an empty DIR, alternating): chain "
                  + ", ".join(f"{r['seconds']:.2f} s" for r in cn["chain_restores"]) + "; full "
                  + ", ".join(f"{r['seconds']:.2f} s" for r in cn["full_restores"]) +
                  f". Each restored tree compared with the live one ({cn['live_tree']['entries']:,} entries: path, "
                  "type, permission bits, size and sha256 of content).", ""]
    if ix:
        lines += [f"Index: {ix['files']:,} files of 1-200 bytes (dataset.py `--tiny`), a full backup "
                  f"({ix['full']['seconds']:.1f} s, {ix['full']['peak_rss_mib']:.0f} MiB), then {ix['changed']} files "
                  f"rewritten and an incremental ({human(ix['incremental']['archive_bytes'])} archive, "
                  f"{human(ix['incremental']['index_bytes'] or 0)} index).", ""]
    lines += [f"Whole run: {report['seconds_total']:.0f} s. Command: `{report['command']}`.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", default="1G", help="size of the generated state (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="runs of the no-change and change-set figures (default 3)")
    p.add_argument("--chain", type=int, default=24, help="incrementals before the chain restore (default 24)")
    p.add_argument("--chain-append", type=parse_size, default=APPEND,
                   help="bytes appended to the log in each change set of the chain figure (default 10M; 0: the "
                        "small files only)")
    p.add_argument("--restore-repeat", type=int, default=1, help="restores of each in the chain figure (default 1)")
    p.add_argument("--tiny", type=int, default=1_000_000, help="files for the index figure (default 1,000,000; 0 skips)")
    p.add_argument("--no-index-restore", dest="index_restore", action="store_false",
                   help="skip restoring the incremental of the index figure")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated figures ({','.join(FIGURES)})")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where incremental.json/.md go")
    p.add_argument("--workdir", default=None, help="where the temporary directory is made (default: system temp)")
    p.add_argument("--shm", default="/dev/shm" if os.path.isdir("/dev/shm") else "",
                   help="where the index figure's tree goes (default /dev/shm; '' for --workdir)")
    args = p.parse_args()
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.only - set(FIGURES):
        p.error(f"unknown figure(s): {', '.join(sorted(args.only - set(FIGURES)))}")
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is needed for the reference archive")
    tmp = Path(tempfile.mkdtemp(prefix="eternia-incbench-", dir=args.workdir))
    shm = Path(tempfile.mkdtemp(prefix="eternia-incbench-", dir=args.shm)) if args.shm else tmp
    for d in (tmp, shm):
        if d.resolve().is_relative_to(REPO):
            p.error("--workdir and --shm must be outside the repository")

    def on_term(*_):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, on_term)
    bench = IncrementalBench(args, tmp, shm)
    try:
        report = bench.run()
    finally:
        kill_running()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    report["command"] = ("python benchmarks/incremental.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    md = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "incremental.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "incremental.md").write_text(md)
    print(md)
    log(f"written: {args.out / 'incremental.json'}, {args.out / 'incremental.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
