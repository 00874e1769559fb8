#!/usr/bin/env python3
"""eternia-backup against tar+zstd, restic, borg and rclone, side by side, whole processes.

Generates a deterministic application state (benchmarks/dataset.py) in a temporary
directory outside the repository, then for each scenario runs the real CLI of this
environment (``eternia-backup --config C ...``, a subprocess) and the anchors, several
times, alternating within each repeat (the order rotates per repeat) so that drift hits
all alike. Reports median, min-max, MB/s of the input, peak RSS and output size, and
writes ``<out>/latest.json`` and ``<out>/latest.md``. A missing anchor is a printed
line, not a failure. Temporary data is removed at the end, also on Ctrl-C or SIGTERM.

Scenarios (``--only`` takes a comma-separated list):
  create        create, local target               vs tar -I 'zstd -T0 -3' -cf, restic backup, borg create
  restore       restore into an empty directory    vs tar -I zstd -xf, restic restore, borg extract
  create-s3     create, local + S3 (SeaweedFS)     vs tar+zstd then rclone copyto; rclone copyto alone
  restore-s3    restore straight from S3           vs rclone cat | tar -I zstd -x
  tiny          create / restore of N tiny files   vs tar+zstd / tar -xf
  list          list, status, cleanup --dry-run with N backups in S3 (cold then warm cache, S3 requests)

    make bench
    .venv/bin/python benchmarks/bench.py --size 128M --tiny 20000 --repeat 1 --list-backups 100
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import MIB, generate_state, generate_tiny, human, parse_size  # noqa: E402
from measure import compile_package, kill_running, run_measured, timed_env  # noqa: E402

SCENARIOS = ["create", "restore", "create-s3", "restore-s3", "tiny", "list"]
REPO = Path(__file__).resolve().parent.parent


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size
    return total


def rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fresh(path: Path) -> None:
    rm(path)
    path.mkdir(parents=True)


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "eternia-backup"
    return [str(script)] if script.exists() else [sys.executable, "-m", "eternia_backup"]


def tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def machine() -> dict:
    mem = 0
    model = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        ours = version("eternia-backup")
    except Exception:
        ours = "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "cpu": model,
        "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg(), "eternia_backup": ours, "commit": commit,
        "tools": {"zstd": tool_version(["zstd", "--version"]), "tar": tool_version(["tar", "--version"]),
                  "restic": tool_version(["restic", "version"]), "rclone": tool_version(["rclone", "version"]),
                  "borg": tool_version(["borg", "--version"])},
    }


@dataclass
class Contender:
    name: str
    cmd: list[str] | str
    ours: bool = False
    shell: bool = False
    cwd: Path | None = None
    env: dict | None = None
    before: Callable[[], None] | None = None   # untimed, before each run (fresh output)
    size: Callable[[], int] | None = None      # output bytes, after each run
    after: Callable[[], None] | None = None    # untimed, after each run (remove output)
    ok_codes: tuple = (0,)
    runs: list = field(default_factory=list)
    error: str | None = None


def summarize(c: Contender, input_bytes: int) -> dict:
    row = {"name": c.name, "ours": c.ours, "command": c.cmd if isinstance(c.cmd, str) else shlex.join(map(str, c.cmd))}
    if c.error and not c.runs:
        row["error"] = c.error
        return row
    secs = [r["seconds"] for r in c.runs]
    med = statistics.median(secs)
    row.update({
        "runs": len(secs), "seconds": [round(s, 3) for s in secs], "median_s": round(med, 3),
        "min_s": round(min(secs), 3), "max_s": round(max(secs), 3),
        "mb_s": round(input_bytes / 1e6 / med, 1) if med > 0 else None,
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in c.runs), 1),
        "largest_process": max(c.runs, key=lambda r: r["peak_rss_mib"])["largest_process"],
        "tree_peak_mib": round(max(r["tree_peak_mib"] for r in c.runs), 1),
        "output_bytes": c.runs[-1].get("output_bytes"),
    })
    if c.error:
        row["error"] = c.error
    return row


def read_through(root: Path) -> None:
    """Read every file under ``root`` (into the page cache; nothing is kept)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


class Bench:
    def __init__(self, args, tmp: Path, tiny_tmp: Path | None = None):
        self.args = args
        self.tmp = tmp
        self.tiny_tmp = tiny_tmp or tmp  # the tiny-file scenario's place (a tmpfs by default)
        self.cli = cli_command()
        self.env = timed_env()
        self.results: dict[str, dict] = {}
        self.s3 = None
        self.proxy = None
        self.data = tmp / "data"
        self.input_bytes = 0
        self.ids: dict[str, str] = {}
        self.load_max = 0.0  # the 1-minute load average seen after each run: other work shows here

    # -- helpers ------------------------------------------------------------------------

    def config(self, name: str, body: dict) -> Path:
        path = self.tmp / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"backup": {"name": "bench", "retention_days": 0, **body}}, indent=1))
        return path

    def ours(self, config: Path, *args: str) -> list[str]:
        return self.cli + ["--config", str(config), "-q", *args]

    def compare(self, scenario: str, contenders: list[Contender], input_bytes: int, note: str = "",
                warm: list[Path] = ()) -> None:
        """Run the contenders ``--repeat`` times, alternating; ``warm``: the inputs read into the page
        cache (untimed) before each run."""
        log(f"\n== {scenario} ({human(input_bytes)} input, {self.args.repeat} repeat(s))")
        live = [c for c in contenders if c.error is None]
        for c in contenders:
            if c.error:
                log(f"   {c.name}: skipped ({c.error})")
        for rep in range(self.args.repeat):
            k = rep % len(live) if live else 0
            for c in live[k:] + live[:k]:
                if c.error and not c.runs:
                    continue
                try:
                    if c.before:
                        c.before()
                    # The last run's gigabyte of dirty pages must not be written back during this
                    # one: without it a restore took 4 to 12 s depending on what ran before it.
                    os.sync()
                    # borg drops the files it read from the page cache (posix_fadvise DONTNEED): whoever
                    # ran after it read the data set from disk (ours took 5.5 s there, 3.1-3.5 s elsewhere).
                    for path in warm:
                        read_through(path)
                    r = run_measured(c.cmd, env=c.env or self.env, shell=c.shell, cwd=c.cwd, ok_codes=c.ok_codes)
                    if c.size:
                        r["output_bytes"] = c.size()
                    c.runs.append(r)
                    self.load_max = max(self.load_max, os.getloadavg()[0])
                    log(f"   [{rep + 1}] {c.name:<34} {r['seconds']:7.2f} s  {r['peak_rss_mib']:6.0f} MiB")
                except Exception as exc:  # a failed run is reported, the others go on
                    c.error = str(exc).strip()[-600:]
                    log(f"   [{rep + 1}] {c.name}: FAILED {c.error}")
                finally:
                    if c.after:
                        c.after()
        rows = [summarize(c, input_bytes) for c in contenders]
        ours = next((r for r in rows if r["ours"] and "median_s" in r), None)
        for r in rows:
            if ours and not r["ours"] and "median_s" in r and r["median_s"] > 0:
                r["ratio"] = round(ours["median_s"] / r["median_s"], 2)
        self.results[scenario] = {"input_bytes": input_bytes, "rows": rows, "note": note}

    # -- scenarios ----------------------------------------------------------------------

    def restic_env(self, repo: Path) -> dict:
        return {**self.env, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": str(self.tmp / "restic-cache")}

    def borg_env(self) -> dict:
        return {**self.env, "BORG_BASE_DIR": str(self.tmp / "borg-base"), "BORG_PASSPHRASE": "",
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def scenario_create(self) -> None:
        out = self.tmp / "out"
        out.mkdir(exist_ok=True)
        local = out / "ours-local"
        self.cfg_local = self.config("local", {
            "storage_path": str(local), "state_dir": str(self.tmp / "state-local"),
            "sources": [{"type": "directory", "name": "data", "path": str(self.data), "sqlite": "ignore"}]})
        tarball = out / "anchor.tar.zst"
        restic_repo, borg_repo = out / "restic", out / "borg"
        cs = [
            Contender("eternia-backup create", self.ours(self.cfg_local, "create", "--json"), ours=True,
                      before=lambda: rm(local), size=lambda: du(local)),
            Contender("tar -I 'zstd -T0 -3' -cf", f"tar -I 'zstd -T0 -3' -cf '{tarball}' -C '{self.data}' .",
                      shell=True, before=lambda: rm(tarball), size=lambda: du(tarball)),
        ]
        if shutil.which("restic"):
            renv = self.restic_env(restic_repo)

            def restic_init():
                rm(restic_repo)
                subprocess.run(["restic", "init", "-q"], env=renv, check=True, capture_output=True)
            cs.append(Contender("restic backup (first)", ["restic", "backup", "-q", "."], cwd=self.data, env=renv,
                                before=restic_init, size=lambda: du(restic_repo)))
        else:
            cs.append(Contender("restic backup (first)", "", error="restic not installed"))
        if shutil.which("borg"):
            benv = self.borg_env()

            def borg_init():
                rm(borg_repo)
                subprocess.run(["borg", "init", "-e", "none", str(borg_repo)], env=benv, check=True,
                               capture_output=True)
            cs.append(Contender("borg create (zstd,3)", ["borg", "create", "--compression", "zstd,3",
                                                         f"{borg_repo}::bench", "."], cwd=self.data, env=benv,
                                before=borg_init, size=lambda: du(borg_repo)))
        else:
            cs.append(Contender("borg create (zstd,3)", "", error="borg not installed"))
        self.compare("create, local", cs, self.input_bytes, warm=[self.data])
        if cs[0].runs:
            self.ids["local"] = json.loads(cs[0].runs[-1]["stdout"])["backup_id"]

    def scenario_restore(self) -> None:
        if "local" not in self.ids:
            self.scenario_create()
        out = self.tmp / "out"
        dest = self.tmp / "restored"
        empty = lambda: fresh(dest)  # noqa: E731
        gone = lambda: rm(dest)  # noqa: E731
        cs = [Contender("eternia-backup restore --to", self.ours(self.cfg_local, "restore", self.ids["local"],
                                                                 "--to", str(dest), "--yes"),
                        ours=True, before=empty, size=lambda: du(dest), after=gone),
              Contender("tar -I zstd -xf", f"tar -I zstd -xf '{out / 'anchor.tar.zst'}' -C '{dest}'", shell=True,
                        before=empty, size=lambda: du(dest), after=gone)]
        if (out / "restic").exists():
            cs.append(Contender("restic restore", ["restic", "restore", "-q", "latest", "--target", str(dest)],
                                env=self.restic_env(out / "restic"), before=empty, size=lambda: du(dest), after=gone))
        else:
            cs.append(Contender("restic restore", "", error="no restic repository (restic missing or failed)"))
        if (out / "borg").exists():
            cs.append(Contender("borg extract", ["borg", "extract", f"{out / 'borg'}::bench"], cwd=dest,
                                env=self.borg_env(), before=empty, size=lambda: du(dest), after=gone))
        else:
            cs.append(Contender("borg extract", "", error="no borg repository (borg missing or failed)"))
        self.compare("restore into an empty dir", cs, self.input_bytes,
                     note="ours verifies the archive's sha256 and every member", warm=[out])

    def start_s3(self) -> None:
        if self.s3 is not None:
            return
        from eternia_backup.testing import ADMIN, SeaweedFS
        log("starting SeaweedFS on loopback ...")
        self.s3 = SeaweedFS(self.tmp / "seaweedfs").start()
        self.s3.make_bucket("bench")
        self.fs = self.s3.client()
        self.s3_options = {"key": ADMIN[0], "secret": ADMIN[1], "client_kwargs": {"endpoint_url": self.s3.endpoint}}
        self.rclone_env = {**self.env, "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
                           "RCLONE_CONFIG_S3_ENDPOINT": self.s3.endpoint, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ADMIN[0],
                           "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": ADMIN[1], "RCLONE_CONFIG_S3_REGION": "us-east-1",
                           "RCLONE_CONFIG": "/dev/null"}
        # rclone refuses AWS_CA_BUNDLE ("unable to load custom CA bundle"); the endpoint is plain http on loopback
        self.rclone_env.pop("AWS_CA_BUNDLE", None)

    def s3_clear(self, prefix: str) -> None:
        self.fs.invalidate_cache()
        keys = self.fs.find(f"bench/{prefix}")
        if keys:
            self.fs.rm(keys)

    def scenario_create_s3(self) -> None:
        self.start_s3()
        out = self.tmp / "out"
        out.mkdir(exist_ok=True)
        local = out / "ours-s3-local"
        self.cfg_s3_both = self.config("local-s3", {
            "storage_path": str(local), "state_dir": str(self.tmp / "state-s3"),
            "sources": [{"type": "directory", "name": "data", "path": str(self.data), "sqlite": "ignore"}],
            "targets": [{"name": "s3", "url": "s3://bench/ours", "options": self.s3_options}]})
        tarball = out / "s3-anchor.tar.zst"
        tar = f"tar -I 'zstd -T0 -3' -cf '{tarball}' -C '{self.data}' ."

        def ours_before():
            rm(local)
            self.s3_clear("ours")
        cs = [Contender("eternia-backup create (local + S3)", self.ours(self.cfg_s3_both, "create", "--json"),
                        ours=True, before=ours_before, size=lambda: du(local))]
        if shutil.which("rclone"):
            subprocess.run(tar, shell=True, check=True)  # for "upload alone", before its first run
            cs.append(Contender("tar+zstd, then rclone copyto", f"{tar} && rclone copyto -q '{tarball}' "
                                "s3:bench/anchor/out.tar.zst", shell=True, env=self.rclone_env,
                                before=lambda: (rm(tarball), self.s3_clear("anchor/out.tar.zst")),
                                size=lambda: du(tarball)))
            cs.append(Contender("upload alone: rclone copyto", ["rclone", "copyto", "-q", str(tarball),
                                                                "s3:bench/upload/out.tar.zst"],
                                env=self.rclone_env, before=lambda: self.s3_clear("upload"), size=lambda: du(tarball)))
            # tar+zstd alone (the other half of the goal), in the same alternation
            cs.append(Contender("tar+zstd alone", f"tar -I 'zstd -T0 -3' -cf '{tarball}.2' -C '{self.data}' .", shell=True,
                                before=lambda: rm(Path(f"{tarball}.2")), size=lambda: du(Path(f"{tarball}.2")),
                                after=lambda: rm(Path(f"{tarball}.2"))))
        else:
            cs.append(Contender("tar+zstd, then rclone copyto", "", error="rclone not installed"))
        self.compare("create, local + S3", cs, self.input_bytes,
                     note="goal: ours <= 1.1x the slower of tar+zstd alone and the upload alone", warm=[self.data])
        rows = {r["name"]: r for r in self.results["create, local + S3"]["rows"]}
        halves = [rows[k]["median_s"] for k in ("upload alone: rclone copyto", "tar+zstd alone")
                  if "median_s" in rows.get(k, {})]
        if len(halves) == 2 and "median_s" in rows[cs[0].name]:
            self.results["create, local + S3"]["vs_slower_half"] = round(rows[cs[0].name]["median_s"] / max(halves), 2)
        if cs[0].runs:
            self.ids["s3"] = json.loads(cs[0].runs[-1]["stdout"])["backup_id"]

    def scenario_restore_s3(self) -> None:
        if "s3" not in self.ids:
            self.scenario_create_s3()
        self.cfg_s3_only = self.config("s3-only", {
            "state_dir": str(self.tmp / "state-s3-only"),
            "sources": [{"type": "directory", "name": "data", "path": str(self.data), "sqlite": "ignore"}],
            "targets": [{"name": "s3", "url": "s3://bench/ours", "options": self.s3_options}]})
        dest = self.tmp / "restored"
        empty = lambda: fresh(dest)  # noqa: E731
        gone = lambda: rm(dest)  # noqa: E731
        cs = [Contender("eternia-backup restore from S3", self.ours(self.cfg_s3_only, "restore", self.ids["s3"],
                                                                    "--to", str(dest), "--yes"),
                        ours=True, before=empty, size=lambda: du(dest), after=gone)]
        if shutil.which("rclone"):
            cs.append(Contender("rclone cat | tar -I zstd -x", f"set -o pipefail; rclone cat s3:bench/anchor/out.tar.zst"
                                f" | tar -I zstd -x -C '{dest}'", shell=True, env=self.rclone_env,
                                before=empty, size=lambda: du(dest), after=gone))
        else:
            cs.append(Contender("rclone cat | tar -I zstd -x", "", error="rclone not installed"))
        self.compare("restore straight from S3", cs, self.input_bytes,
                     note="ours verifies the archive's sha256 and every member")

    def scenario_tiny(self) -> None:
        n = self.args.tiny
        tiny = self.tiny_tmp / "tiny"
        log(f"\ngenerating {n} tiny files ...")
        t0 = time.monotonic()
        made = generate_tiny(tiny, n)
        os.sync()
        log(f"  {n} files, {human(made['bytes'])} in {time.monotonic() - t0:.1f} s")
        self.tiny_made = {**made, "seconds": round(time.monotonic() - t0, 1)}
        out = self.tiny_tmp / "out-tiny"
        out.mkdir(exist_ok=True)
        local = out / "ours"
        cfg = self.config("tiny", {"storage_path": str(local), "state_dir": str(self.tiny_tmp / "state-tiny"),
                                   "sources": [{"type": "directory", "name": "tiny", "path": str(tiny)}]})
        tarball = out / "anchor.tar.zst"
        create = [Contender("eternia-backup create", self.ours(cfg, "create", "--json"), ours=True,
                            before=lambda: rm(local), size=lambda: du(local)),
                  Contender("tar -I 'zstd -T0 -3' -cf", f"tar -I 'zstd -T0 -3' -cf '{tarball}' -C '{tiny}' .",
                            shell=True, before=lambda: rm(tarball), size=lambda: du(tarball))]
        where = f" in {self.args.tiny_workdir}" if self.tiny_tmp != self.tmp else ""
        self.compare(f"tiny files ({n:,}{where}): create, local", create, made["bytes"], warm=[tiny])
        if not create[0].runs:
            return
        bid = json.loads(create[0].runs[-1]["stdout"])["backup_id"]
        dest = self.tiny_tmp / "restored"
        empty = lambda: fresh(dest)  # noqa: E731
        gone = lambda: rm(dest)  # noqa: E731
        restore = [Contender("eternia-backup restore --to", self.ours(cfg, "restore", bid, "--to", str(dest), "--yes"),
                             ours=True, before=empty, size=lambda: du(dest), after=gone),
                   Contender("tar -I zstd -xf", f"tar -I zstd -xf '{tarball}' -C '{dest}'", shell=True,
                             before=empty, size=lambda: du(dest), after=gone)]
        self.compare(f"tiny files ({n:,}{where}): restore into an empty dir", restore, made["bytes"], warm=[out])
        rm(tiny)
        rm(out)

    def scenario_list(self) -> None:
        from eternia_backup.testing.s3proxy import CountingProxy
        self.start_s3()
        n = self.args.list_backups
        src = self.tmp / "list-src"
        src.mkdir(exist_ok=True)
        for i in range(3):
            (src / f"f{i}.json").write_text(json.dumps({"i": i, "text": "x" * 100}))
        prefix = "many"
        self.s3_clear(prefix)
        body = {"sources": [{"type": "directory", "name": "small", "path": str(src)}], "retention_days": 0}
        direct = self.config("many-direct", {**body, "state_dir": str(self.tmp / "state-many-direct"),
                                             "targets": [{"name": "s3", "url": f"s3://bench/{prefix}",
                                                          "options": self.s3_options}]})
        log(f"\n== listing {n} backups in S3: making them with BackupManager.create_backup() in one process ...")
        maker = ("import sys, time\nfrom eternia_backup import BackupManager\n"
                 "m = BackupManager.from_config(sys.argv[1])\nt = time.monotonic()\n"
                 "for i in range(int(sys.argv[2])):\n    m.create_backup()\n"
                 "    if (i + 1) % 100 == 0: print(i + 1, round(time.monotonic() - t, 1), file=sys.stderr, flush=True)\n")
        t0 = time.monotonic()
        made = subprocess.run([sys.executable, "-c", maker, str(direct), str(n)], env=self.env, text=True,
                              stderr=subprocess.PIPE)
        make_s = time.monotonic() - t0
        if made.returncode != 0:
            self.results["list"] = {"error": f"making {n} backups failed: {made.stderr[-1500:]}"}
            log(self.results["list"]["error"])
            return
        log(f"  made {n} backups in {make_s:.1f} s ({make_s / n * 1000:.0f} ms each)")
        self.proxy = CountingProxy(self.s3.endpoint)
        opts = {**self.s3_options, "client_kwargs": {"endpoint_url": self.proxy.endpoint}}
        proxied = self.config("many-proxy", {**body, "targets": [{"name": "s3", "url": f"s3://bench/{prefix}",
                                                                   "options": opts}]})
        rows = []
        # The first listing of all finds no index object beside the manifests (create_backup() alone
        # writes none): it reads every manifest and writes the index. Every later cold command
        # (another machine, an empty state directory) reads the index instead.
        commands = [("list --json (the first ever: no index yet)", ["list", "--json"], (0,), 0),
                    ("list --json", ["list", "--json"], (0,), self.args.repeat),
                    ("status --json", ["status", "--json"], (0, 1), self.args.repeat),
                    ("cleanup --dry-run", ["cleanup", "--dry-run"], (0,), self.args.repeat)]
        for label, cmd, ok, warm_runs in commands:
            xdg = self.tmp / f"xdg-{cmd[0]}-{warm_runs}"
            fresh(xdg)
            env = {**self.env, "XDG_STATE_HOME": str(xdg)}
            runs = []
            for k in range(1 + warm_runs):
                self.proxy.take()
                try:
                    r = run_measured(self.ours(proxied, *cmd), env=env, ok_codes=ok)
                except Exception as exc:
                    runs.append({"error": str(exc)[-600:]})
                    log(f"   {cmd[0]}: FAILED {exc}")
                    break
                counts = self.proxy.take()
                r["requests"] = sum(counts.values())
                r["requests_by_kind"] = {f"{m} {kind}": v for (m, kind), v in sorted(counts.items())}
                if cmd[0] == "list":
                    r["listed"] = len(json.loads(r["stdout"])["backups"])
                r["cache"] = "cold" if k == 0 else "warm"
                runs.append(r)
                log(f"   {cmd[0]:<8} {r['cache']:<5} {r['seconds']:6.2f} s  {r['requests']:5d} requests  "
                    f"{r['peak_rss_mib']:5.0f} MiB" + (f"  listed {r['listed']}" if "listed" in r else ""))
            ok_runs = [r for r in runs if "seconds" in r]
            cold = ok_runs[0] if ok_runs else None
            warm = ok_runs[1:]
            rows.append({
                "command": label, "error": next((r["error"] for r in runs if "error" in r), None),
                "cold_s": round(cold["seconds"], 3) if cold else None,
                "cold_requests": cold["requests"] if cold else None,
                "warm_median_s": round(statistics.median(r["seconds"] for r in warm), 3) if warm else None,
                "warm_min_s": round(min(r["seconds"] for r in warm), 3) if warm else None,
                "warm_max_s": round(max(r["seconds"] for r in warm), 3) if warm else None,
                "warm_requests": warm[-1]["requests"] if warm else None,
                "requests_by_kind_cold": cold["requests_by_kind"] if cold else None,
                "requests_by_kind_warm": warm[-1]["requests_by_kind"] if warm else None,
                "peak_rss_mib": round(max(r["peak_rss_mib"] for r in ok_runs), 1) if ok_runs else None,
                "listed": cold.get("listed") if cold else None,
            })
        self.results["list"] = {"backups": n, "make_seconds": round(make_s, 1), "rows": rows}

    # -- the run ------------------------------------------------------------------------

    def run(self) -> dict:
        only = self.args.only
        size = parse_size(self.args.size)
        needs_state = any(s in only for s in ("create", "restore", "create-s3", "restore-s3"))
        info = machine()
        log(f"machine: {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu']}, load {info['loadavg_start']}")
        if needs_state:
            log(f"generating {human(size)} of state in {self.data} ...")
            t0 = time.monotonic()
            self.made = generate_state(self.data, size)
            os.sync()  # its writeback must not land in the first measured step
            self.made["seconds"] = round(time.monotonic() - t0, 1)
            self.input_bytes = self.made["bytes"]
            log(f"  {self.made['files']} files, {human(self.made['bytes'])} in {self.made['seconds']} s")
        compile_package(self.env)
        t_start = time.monotonic()
        for name in SCENARIOS:
            if name not in only or (name == "tiny" and self.args.tiny <= 0) or \
                    (name == "list" and self.args.list_backups <= 0):
                continue
            getattr(self, "scenario_" + name.replace("-", "_"))()
        info["loadavg_end"] = os.getloadavg()
        info["loadavg_1min_max"] = round(self.load_max, 2)
        return {"machine": info, "args": {"size": self.args.size, "tiny": self.args.tiny, "repeat": self.args.repeat,
                                          "list_backups": self.args.list_backups, "only": sorted(only)},
                "dataset": getattr(self, "made", None), "tiny_dataset": getattr(self, "tiny_made", None),
                "seconds_total": round(time.monotonic() - t_start, 1), "scenarios": self.results}

    def close(self) -> None:
        kill_running()
        if self.proxy is not None:
            self.proxy.close()
        if self.s3 is not None:
            self.s3.stop()


# -- reporting ------------------------------------------------------------------------------


def fmt_s(row: dict) -> str:
    if "median_s" not in row:
        return "-"
    if row["runs"] == 1:
        return f"{row['median_s']:.2f} s"
    return f"{row['median_s']:.2f} s ({row['min_s']:.2f}–{row['max_s']:.2f})"


def markdown(report: dict) -> str:
    m = report["machine"]
    t = m["tools"]
    ds = report.get("dataset") or {}
    lines = [
        "# eternia-backup benchmark",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['cpu']}; Python {m['python']}, {m['os']}; "
        f"{m['date']}; load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}; highest 1-minute load seen after a run "
        f"{m.get('loadavg_1min_max', '?')}" + (" (above the core count: other work shared the machine, figures are noisy)"
                                               if m.get("loadavg_1min_max", 0) > (m["cores"] or 1) else "") + ".",
        f"eternia-backup {m['eternia_backup']} (checkout at commit {m['commit']}); " +
        "; ".join(f"{k}: {v or 'not installed'}" for k, v in t.items()) + ".",
        "",
    ]
    if ds:
        lines.append(f"Data set: {human(ds['bytes'])}, {ds['files']:,} files ({ds['small_files']:,} small JSON, "
                     f"{ds['medium_files']} medium, one binary, one log, SQLite {ds['sqlite_rows']:,} rows). "
                     f"Repeats: {report['args']['repeat']}, alternating; median (min–max). Ratio = ours / anchor "
                     "(below 1: ours faster). MB/s = input bytes / median.")
        lines.append("")
    lines += ["| scenario | command | time | MB/s | peak RSS | output | ours ÷ this |",
              "|---|---|---|---|---|---|---|"]
    for name, sc in report["scenarios"].items():
        if name == "list":
            continue
        for row in sc["rows"]:
            label = row["name"].replace("|", "\\|")
            who = f"**{label}**" if row["ours"] else label
            if "median_s" not in row:
                lines.append(f"| {name} | {who} | {'FAILED' if row['ours'] else 'skipped'}: "
                             f"{row.get('error', '')[:120].replace('|', '/')} | | | | |")
                continue
            out = human(row["output_bytes"]) if row.get("output_bytes") is not None else "-"
            ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
            err = " (then FAILED)" if row.get("error") else ""
            lines.append(f"| {name} | {who} | {fmt_s(row)}{err} | {row['mb_s']} | {row['peak_rss_mib']:.0f} MiB | "
                         f"{out} | {ratio} |")
    s3 = report["scenarios"].get("create, local + S3", {})
    if "vs_slower_half" in s3:
        lines += ["", f"create, local + S3: ours ÷ the slower of tar+zstd alone and the upload alone = "
                  f"**{s3['vs_slower_half']:.2f}x** (the issue's goal: ≤ 1.1x)."]
    lst = report["scenarios"].get("list")
    if lst:
        lines += ["", f"Listing {lst.get('backups', '?')} backups in one S3 target (SeaweedFS on loopback, through a "
                  f"counting proxy; made in {lst.get('make_seconds', '?')} s by BackupManager.create_backup() "
                  "in one process). Cold = empty state directory (no manifest cache): what a new machine or "
                  "container pays; warm = the same state directory again.", ""]
        if "error" in lst:
            lines.append(f"FAILED: {lst['error'][:300]}")
        else:
            lines += ["| command | cold | S3 requests, cold | warm, median (min–max) | S3 requests, warm | peak RSS |",
                      "|---|---|---|---|---|---|"]
            for r in lst["rows"]:
                if r["cold_s"] is None:
                    lines.append(f"| `{r['command']}` | FAILED: {(r['error'] or '')[:120]} | | | | |")
                    continue
                warm = (f"{r['warm_median_s']:.2f} s ({r['warm_min_s']:.2f}–{r['warm_max_s']:.2f})"
                        if r["warm_median_s"] is not None else "-")
                lines.append(f"| `{r['command']}` | {r['cold_s']:.2f} s | {r['cold_requests']} | {warm} | "
                             f"{'-' if r['warm_requests'] is None else r['warm_requests']} | {r['peak_rss_mib']:.0f} MiB |")
    lines += ["", f"Whole run: {report['seconds_total']:.0f} s of measuring (plus generating the data set). "
              "Command: `" + report["command"] + "`.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", default="1G", help="size of the generated state (default 1G; 256M, 4G ...)")
    p.add_argument("--tiny", type=int, default=300_000, help="files of 1-200 bytes for the tiny scenario (0 skips)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each contender (default 3)")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios ({','.join(SCENARIOS)})")
    p.add_argument("--list-backups", type=int, default=1000, help="backups in S3 for the listing scenario (0 skips)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where latest.json/.md go")
    p.add_argument("--workdir", default=None, help="where the temporary directory is made (default: system temp)")
    p.add_argument("--tiny-workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where the tiny-file scenario works (default /dev/shm, a tmpfs: creating 300,000 files "
                        "on this VM's disk took 46 to 94 s for tar alone, varying with the disk, not the program; "
                        "'' for --workdir)")
    args = p.parse_args()
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is needed for the anchors")

    tmp = Path(tempfile.mkdtemp(prefix="eternia-bench-", dir=args.workdir))
    if tmp.resolve().is_relative_to(REPO):
        p.error("--workdir must be outside the repository")
    tiny_tmp = tmp
    if args.tiny_workdir and args.tiny > 0 and "tiny" in args.only:
        tiny_tmp = Path(tempfile.mkdtemp(prefix="eternia-bench-tiny-", dir=args.tiny_workdir))
        if tiny_tmp.resolve().is_relative_to(REPO):
            p.error("--tiny-workdir must be outside the repository")

    def on_term(*_):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args, tmp, tiny_tmp)
    try:
        report = bench.run()
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tiny_tmp, ignore_errors=True)
    report["command"] = ("python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    if len(sys.argv) == 1:
        report["command"] += " (defaults: --size 1G --tiny 300000 --repeat 3 --list-backups 1000)"
    md = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    for r in report["scenarios"].values():
        for row in r.get("rows", []):
            row.pop("stdout", None)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "latest.md").write_text(md)
    print(md)
    log(f"written: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
