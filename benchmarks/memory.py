#!/usr/bin/env python3
"""Peak memory and time of `eternia-backup create / restore / verify` on a generated state.

Not a test: a measurement to read. It generates application state of a given size
(default 2 GiB) mixed like a typical application's state -- many small JSON files,
medium files of which half are random, one big mostly-random binary, a log and a
SQLite database -- in a temporary directory outside the repository, then runs the
real CLI in a subprocess for each step and reports, per step:

* seconds (wall clock),
* peak RSS of the largest process (the kernel's high-water mark VmHWM, read every
  20 ms while it runs; for a shell pipeline, its largest member),
* peak RSS of the whole process tree (the sum of the members' RSS, sampled every 20 ms),
* the size of what it produced (archive, restored tree).

For comparison it runs the anchors with the standard tools: ``tar | cat`` (the
reading floor; GNU tar skips reading when its output is /dev/null, so the stream
goes through a pipe), ``tar | zstd -T0 -3 > file`` then ``sync`` (the full-archive
floor, written to the same disk as ours) and ``tar -I zstd -xf`` of our own archive
into an empty directory.

The state is generated once, synced, and sits in the page cache for every run (24 GiB
RAM machines); all steps read it from memory alike. Times on small VMs swing (the
kernel's cost of fresh memory and writeback); use ``--repeat 3`` for medians. The temporary data is removed at the
end, also on Ctrl-C or SIGTERM.

    python benchmarks/memory.py                      # 2 GiB, table
    python benchmarks/memory.py --size-mib 256 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
GOAL_MIB = 200  # the bound for a 2 GiB backup: about 200 MB resident

from dataset import generate_state  # noqa: E402  (benchmarks/ is sys.path[0]): the mix of bench.py
from measure import _status_kib, compile_package, run_measured, timed_env  # noqa: E402,F401  (benchmarks/ is sys.path[0])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "eternia-backup"
    return [str(script)] if script.exists() else [sys.executable, "-m", "eternia_backup"]


# -- the run -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the generated state (default 2048)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each step; medians are reported")
    parser.add_argument("--workdir", default=None, help="where to make the temporary directory (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--no-anchors", action="store_true", help="skip the tar/zstd comparisons")
    parser.add_argument("--s3", action="store_true",
                        help="also back up to a local SeaweedFS S3 server (multipart upload) and restore from it")
    args = parser.parse_args()

    for tool in ("tar", "zstd"):
        if not args.no_anchors and shutil.which(tool) is None:
            parser.error(f"{tool} is needed for the anchors (or pass --no-anchors)")

    tmp = Path(tempfile.mkdtemp(prefix="eternia-bench-", dir=args.workdir))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _median(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for k in ("seconds", "peak_rss_mib", "tree_peak_mib", *(["output_mib"] if "output_mib" in out else [])):
        out[k] = statistics.median(r[k] for r in runs)
    out["runs"] = len(runs)
    return out


def _run(tmp: Path, args) -> int:
    state, backups = tmp / "state", tmp / "backups"
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"generating {args.size_mib} MiB of state in {state} ...")
    t0 = time.monotonic()
    made = generate_state(state, args.size_mib * MIB)
    os.sync()  # its writeback must not land in the first measured step
    made["seconds"] = round(time.monotonic() - t0, 1)
    log(f"  {made['files']} files, {made['bytes'] / MIB:.0f} MiB in {made['seconds']}s")

    config = tmp / "eternia-backup.yaml"
    config.write_text(json.dumps({"backup": {  # JSON is YAML
        "name": "bench", "storage_path": str(backups), "retention_days": 0,
        "sources": [{"type": "directory", "name": "files", "path": str(state / "files")},
                    {"type": "sqlite", "name": "db", "path": str(state / "app.db")}],
    }}))
    cli = cli_command() + ["--config", str(config)]
    env = timed_env()
    compile_package(env)
    results: dict[str, dict] = {}

    def step(name: str, cmd, *, before=None, size=None, **kw) -> None:
        runs = []
        for _ in range(args.repeat):
            if before:
                before()
            log(f"{name} ...")
            r = run_measured(cmd, env=env, **kw)
            if size:
                r["output_mib"] = size() / MIB
            runs.append(r)
        results[name] = _median(runs)

    def fresh_backups():
        shutil.rmtree(backups, ignore_errors=True)

    step("eternia-backup create", cli + ["create"], before=fresh_backups,
         size=lambda: sum(p.stat().st_size for p in backups.glob("*.tar.zst")))
    (archive,) = backups.glob("*.tar.zst")
    restored = tmp / "restored"
    step("eternia-backup restore latest", cli + ["restore", "latest", "--to", str(restored), "--yes"],
         before=lambda: shutil.rmtree(restored, ignore_errors=True), size=lambda: du(restored))
    shutil.rmtree(restored, ignore_errors=True)
    step("eternia-backup verify latest", cli + ["verify", "latest"])

    if args.s3:
        from eternia_backup.testing import ADMIN, SeaweedFS

        log("starting SeaweedFS on loopback ...")
        server = SeaweedFS(tmp / "seaweedfs").start()
        try:
            server.make_bucket("bench")
            s3_config = tmp / "eternia-backup-s3.yaml"
            s3_config.write_text(json.dumps({"backup": {
                "name": "bench", "retention_days": 0, "state_dir": str(tmp / "s3-state"),
                "sources": [{"type": "directory", "name": "files", "path": str(state / "files")},
                            {"type": "sqlite", "name": "db", "path": str(state / "app.db")}],
                "targets": [{"name": "s3", "url": "s3://bench/bench",
                             "options": {"key": ADMIN[0], "secret": ADMIN[1],
                                         "client_kwargs": {"endpoint_url": server.endpoint}}}],
            }}))
            s3_cli = cli_command() + ["--config", str(s3_config)]
            fs = server.client()
            step("eternia-backup create (S3 only)", s3_cli + ["create"],
                 before=lambda: [fs.rm(k) for k in fs.find("bench")],
                 size=lambda: sum(fs.du(k) for k in fs.find("bench") if k.endswith(".tar.zst")))
            step("eternia-backup restore latest (from S3)",
                 s3_cli + ["restore", "latest", "--to", str(restored), "--yes"],
                 before=lambda: shutil.rmtree(restored, ignore_errors=True), size=lambda: du(restored))
            shutil.rmtree(restored, ignore_errors=True)
        finally:
            server.stop()

    if not args.no_anchors:
        q = f"'{state}'"
        step("anchor: tar -cf - | cat >/dev/null", f"tar -C {q} -cf - . | cat > /dev/null", shell=True)
        anchor_file = tmp / "anchor.tar.zst"  # written to disk and fsynced, as our archive is
        step("anchor: tar -cf - | zstd -T0 -3 > file", f"tar -C {q} -cf - . | zstd -q -T0 -3 > '{anchor_file}' "
             f"&& sync '{anchor_file}'", shell=True, before=lambda: anchor_file.unlink(missing_ok=True),
             size=lambda: anchor_file.stat().st_size)
        anchor_file.unlink(missing_ok=True)
        out = tmp / "extracted"

        def empty_out():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        step("anchor: tar -I zstd -xf (our archive)", f"tar -I zstd -xf '{archive}' -C '{out}'",
             shell=True, before=empty_out, size=lambda: du(out))
        shutil.rmtree(out, ignore_errors=True)

    create = results["eternia-backup create"]
    report = {
        "size_mib": args.size_mib, "state": made, "repeat": args.repeat,
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "steps": {k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items() if kk != "stdout"}
                  for k, v in results.items()},
        "goal_peak_rss_mib": GOAL_MIB,
        "create_within_goal": create["peak_rss_mib"] <= GOAL_MIB,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nstate: {made['files']} files, {made['bytes'] / MIB:.0f} MiB "
              f"({made['small_files']} small, {made['medium_files']} medium, 1 binary, 1 log, "
              f"SQLite {made['sqlite_rows']} rows); python {report['python']}, {report['cpus']} CPUs")
        print(f"{'step':<40} {'seconds':>8} {'peak RSS MiB':>13} {'(process)':<15} {'tree peak MiB':>14} {'output MiB':>11}")
        for name, r in results.items():
            output = f"{r['output_mib']:.1f}" if "output_mib" in r else "-"
            print(f"{name:<40} {r['seconds']:>8.2f} {r['peak_rss_mib']:>13.1f} {r['largest_process'][:15]:<15} "
                  f"{r['tree_peak_mib']:>14.1f} {output:>11}")
        verdict = "within" if report["create_within_goal"] else "OVER"
        print(f"\nbackup peak RSS {create['peak_rss_mib']:.1f} MiB: {verdict} the ~{GOAL_MIB} MiB goal")
        if "eternia-backup create (S3 only)" in results:
            up = results["eternia-backup create (S3 only)"]
            print(f"S3 multipart upload of a {up.get('output_mib', 0):.0f} MiB archive: peak RSS "
                  f"{up['peak_rss_mib']:.1f} MiB in {up['seconds']:.1f}s")
    return 0 if report["create_within_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
