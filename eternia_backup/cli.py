"""The command line: parse, call the manager, print. Nothing else lives here.

Exit status: 0 success, 1 an operation failed, 2 usage or configuration error.
Errors print one line (``-v`` adds the chain of causes), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import __version__, redact
from .errors import BackupFailedError, EterniaBackupError

log = logging.getLogger("eternia_backup")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


class _Progress:
    """A byte-count progress bar on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- commands --------------------------------------------------------------------


def cmd_create(mgr, args) -> int:
    from .locks import BackupInProgress

    progress = _Progress(not args.json, "backup")
    try:
        result = mgr.create_backup(progress=progress if progress.bar else None)
    except BackupInProgress as exc:
        progress.close()
        if args.json:
            _print_json({"skipped": True, "reason": str(exc)})
        print(f"skipped: {exc}", file=sys.stderr)
        return EXIT_OK
    except BackupFailedError as exc:
        progress.close()
        if args.json and exc.result is not None:
            _print_json(exc.result.to_dict())
        raise
    progress.close()
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.location)
    return EXIT_OK


def cmd_list(mgr, args) -> int:
    listings, errors = mgr.listings()
    from .catalog import merge

    from .catalog import unlisted_dicts

    entries = merge(listings)
    if args.json:
        _print_json({"backups": [e.to_dict() for e in entries], "errors": errors,
                     "unlisted_targets": unlisted_dicts(errors)})
    else:
        if not entries and not errors:
            print("no backups yet; make one with `eternia-backup create`")
        elif entries:
            rows = [("ID", "CREATED (UTC)", "SIZE", "SOURCES", "STATE", "LOCATION")]
            for e in entries:
                m = e.manifest
                created = e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "?"
                sources = ",".join(s.name for s in m.sources) if m else "?"
                where = " ".join(c.url for c in e.copies)
                state = e.state
                if not e.ok or e.state != "ok":
                    state += ": " + "; ".join(f"{c.target.name}: {c.problem.split(': ', 1)[-1]}"
                                              for c in e.copies if c.problem)
                rows.append((e.backup_id, created, _human_size(m.archive.size if m else None), sources, state, where))
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for r in rows:
                print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
        for name, err in errors.items():
            print(f"warning: target {name!r} could not be listed, its backups are not shown: {err}",
                  file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def _copy_to_verify(mgr, reference: str):
    """For ``verify``, ``latest`` is the newest backup even when it is damaged.

    (``restore latest`` takes the newest *intact* one; a verify that skipped a
    broken newest backup would report ok on an older one.)
    """
    return mgr.find_backup(reference, intact=False)


def cmd_verify(mgr, args) -> int:
    unlisted = []
    if args.all:
        reports = mgr.verify_all()
    else:
        from .catalog import unlisted_dicts
        from .verify import verify_copy

        copy = _copy_to_verify(mgr, args.backup or "latest")
        unlisted = unlisted_dicts(copy.unlisted_targets)
        reports = [verify_copy(copy, mgr.registry, mgr.config.encryption)]
    if args.json:
        _print_json({"ok": all(r.ok for r in reports), "backups": [r.to_dict() for r in reports],
                     "unlisted_targets": unlisted})
    else:
        if not reports:
            print("no backups to verify")
        for r in reports:
            if r.ok and r.note:
                print(f"ok       {r.backup_id}  {_human_size(r.size)}  {r.url}  ({r.note})")
            elif r.ok:
                print(f"ok       {r.backup_id}  {_human_size(r.size)}, {r.entries} entries  {r.url}")
            else:
                print(f"DAMAGED  {r.backup_id}  {r.problem}")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def _confirm_factory(args):
    if args.yes:
        return None

    def confirm(changes: list[str]) -> bool:
        if not sys.stdin.isatty():
            from .errors import RestoreError

            raise RestoreError("restore would replace existing state and there is no terminal to confirm it; "
                               "pass --yes to go ahead (or --dry-run to see what would change)")
        print("This restore will:", file=sys.stderr)
        for line in changes:
            print(f"  - {line.replace('would ', '')}", file=sys.stderr)
        answer = input("Go ahead? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return confirm


def cmd_restore(mgr, args) -> int:
    result = mgr.restore_backup(args.backup, to=args.to, sources=args.source or None, dry_run=args.dry_run,
                                confirm=_confirm_factory(args), allow_partial_listing=args.allow_partial_listing)
    if args.json:
        _print_json(result.to_dict())
    elif args.dry_run:
        print(f"dry run: backup {result.backup_id} verified; nothing was changed")
        for line in result.changes:
            print(f"  {line}")
    else:
        print(f"restored backup {result.backup_id} ({', '.join(result.sources)})")
    return EXIT_OK


def cmd_download(mgr, args) -> int:
    path = mgr.download_backup(args.url, to=args.to)
    if args.json:
        _print_json({"path": str(path)})
    else:
        print(path)
    return EXIT_OK


def cmd_cleanup(mgr, args) -> int:
    result = mgr.cleanup(dry_run=args.dry_run)
    if args.json:
        _print_json(result.to_dict())
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for t in result.targets:
            for backup_id in t.deleted:
                print(f"{verb} {backup_id} on {t.target}")
            for o in t.orphans:
                print(f"{t.target}: {_orphan_line(o)}; {_orphan_action(o, args.dry_run)}")
            if t.leftovers_removed:
                print(f"{'would remove' if args.dry_run else 'removed'} {len(t.leftovers_removed)} leftover file(s) on {t.target}")
        print(f"{verb} {result.deleted_count} backup(s)")
        for name, err in result.errors.items():
            print(f"error: target {name!r}: {err}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def _orphan_line(o) -> str:
    """One orphan (dict or object) for people: what, where, how old, how big, whose."""
    d = o if isinstance(o, dict) else o.to_dict()
    age = "age unknown" if d["age_seconds"] is None else f"{d['age_seconds'] / 3600:.1f} h old"
    writer = f", written by {d['writer']}" if d.get("writer") else ""
    return f"{d['kind']} {d['name']}: {_human_size(d['size'])}, {age}{writer}"


def _orphan_action(o, dry_run: bool) -> str:
    verb = "aborted" if o.kind == "unfinished upload" else "removed"
    if not o.due:
        return f"kept (its writer may still run; {verb} after the grace period)"
    if dry_run:
        return f"would be {verb}"
    return verb if o.removed else f"could not be {verb} (see the error below)"


def cmd_status(mgr, args) -> int:
    status = mgr.status()
    if args.json:
        _print_json(status)
    else:
        newest = status["newest_backup"]
        print(f"schedule:   {status['schedule']} ({status['timezone']})"
              + ("" if status["enabled"] else "  [automated backups disabled]"))
        print(f"next run:   {status['next_run']}")
        if newest:
            hours = newest["age_seconds"] / 3600
            print(f"newest:     {newest['backup_id']}  {_human_size(newest['size'])}  {hours:.1f} h old  "
                  f"on {', '.join(newest['copies'])}")
        elif status.get("unlisted_targets"):
            print("newest:     unknown (a target could not be listed)")
        else:
            print("newest:     none")
        for name, t in status["targets"].items():
            line = f"target {name}: last success {t.get('last_success') or 'never'}"
            if t.get("last_failure"):
                line += f"; last failure {t['last_failure']}: {t.get('last_error')}"
            if t.get("listing_error"):
                line += f"; cannot list: {t['listing_error']}"
            print(line)
            if t.get("orphans_error"):
                print(f"  {t['orphans_error']}")
            for o in t.get("orphans") or []:
                print(f"  orphan: {_orphan_line(o)}" + ("; cleanup removes it" if o["due"] else ""))
        if status.get("interrupted_restore"):
            print(f"INTERRUPTED RESTORE: {status['interrupted_restore']}")
        if status["overdue"]:
            print(f"OVERDUE: no complete backup in the last {status['overdue_after_seconds'] // 3600} h "
                  "(twice the schedule's period)")
    # a target that cannot be listed is a failure too: its newest backup is unknown
    return EXIT_FAILED if status["overdue"] or status["unlisted_targets"] else EXIT_OK


def cmd_run(mgr, args) -> int:
    """The scheduler in the foreground until SIGTERM/SIGINT; then a graceful stop."""
    import signal
    import threading

    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        if signals["count"] > 1 and mgr.scheduler is not None:
            mgr.scheduler.cancel.set()  # a second signal: abandon the running backup now
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.verbose == 0:
        logging.getLogger("eternia_backup").setLevel(logging.INFO)  # a daemon logs one line per run
    if not mgr.config.enabled:
        log.warning("backups are disabled (backup.enabled: false); nothing is scheduled. Exiting.")
        return EXIT_OK
    mgr.start_scheduler()
    log.info("next run at %s", mgr.status()["next_run"])
    while not stop.wait(1.0):
        pass
    log.info("stopping: waiting up to %ss for a running backup", args.grace)
    mgr.stop_scheduler(timeout=args.grace)
    return EXIT_OK


def cmd_keygen(args) -> int:
    from pathlib import Path

    from .encryption import generate_identity_file

    path = Path(args.output)
    if path.exists():
        print(f"error: {path} exists; refusing to overwrite a key (choose another --output)", file=sys.stderr)
        return EXIT_USAGE
    public = generate_identity_file(path)
    if args.json:
        _print_json({"identity_file": str(path.absolute()), "recipient": public})
    else:
        print(f"# wrote the private identity to {path} (mode 0600); keep a copy somewhere safe", file=sys.stderr)
        print(public)
    return EXIT_OK


def cmd_plugins(args) -> int:
    from .plugins import build_registry, get_plugin_manager

    registry = build_registry(get_plugin_manager())
    provided = sorted(registry.all(), key=lambda p: (p.kind, p.name))
    if args.json:
        _print_json([{"kind": p.kind, "name": p.name, "plugin": p.plugin,
                      "class": f"{p.cls.__module__}.{p.cls.__qualname__}"} for p in provided])
        return EXIT_OK
    for p in provided:
        name = "* (any fsspec protocol)" if p.name == "*" else p.name
        print(f"{p.kind:<12} {name:<26} {p.plugin}")
    return EXIT_OK


def cmd_config(args) -> int:
    from .config import load_config
    from .manager import BackupManager

    config = load_config(args.config)
    BackupManager(config)  # plugin-level validation (source options, levels, URLs)
    if args.config_command == "check":
        if args.json:
            _print_json({"ok": True, "path": str(config.path)})
        else:
            print(f"{config.path}: ok ({len(config.sources)} source(s), {len(config.targets)} target(s))")
        return EXIT_OK
    data = config.as_dict(masked=True)
    if args.json:
        _print_json(data)
    else:
        import yaml

        print(yaml.safe_dump({"backup": data}, sort_keys=False).rstrip())
    return EXIT_OK


# -- parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = argparse.ArgumentParser(prog="eternia-backup", description="Backups of application state you can trust.")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="config file (default: $ETERNIA_BACKUP_CONFIG, else ./eternia-backup.yaml)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv for debug)")
    p.add_argument("--version", action="version", version=f"eternia-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("create", parents=[common], help="make a backup now and print where it went")
    sub.add_parser("list", parents=[common], help="list backups on every target, newest first")

    s = sub.add_parser("restore", parents=[common], help="verify a backup and restore it")
    s.add_argument("backup", help="a path, URL, backup id (or unique prefix), or 'latest'")
    s.add_argument("--to", metavar="DIR", help="restore into DIR/<source> instead of the configured places")
    s.add_argument("--source", action="append", metavar="NAME", help="restore only this source (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="verify and say what would change; change nothing")
    s.add_argument("--yes", "-y", action="store_true", help="replace existing state without asking")
    s.add_argument("--allow-partial-listing", action="store_true",
                   help="when a target cannot be listed, let 'latest' be the newest backup of the others")

    s = sub.add_parser("download", parents=[common], help="copy a backup from a URL into local storage, verified")
    s.add_argument("url", help="URL or path of a backup's archive or manifest")
    s.add_argument("--to", metavar="DIR", help="directory to download into (default: the local storage)")

    s = sub.add_parser("cleanup", parents=[common], help="apply retention on every target")
    s.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")

    s = sub.add_parser("verify", parents=[common], help="check backups: presence, size, sha256, contents")
    g = s.add_mutually_exclusive_group()
    g.add_argument("backup", nargs="?", help="a path, URL, backup id or 'latest' (default)")
    g.add_argument("--all", action="store_true", help="verify every copy of every backup")

    sub.add_parser("status", parents=[common],
                   help="last success/failure, next run, newest backup; exit 1 when overdue")
    s = sub.add_parser("run", help="run the scheduler in the foreground until SIGTERM/SIGINT")
    s.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="on stop, how long a running backup may finish before it is abandoned (default 30)")

    s = sub.add_parser("keygen", parents=[common],
                       help="write a new age identity file (0600) and print its public recipient")
    s.add_argument("--output", "-o", default="eternia-backup.key", metavar="FILE",
                   help="where to write the identity (default: eternia-backup.key); never overwritten")

    sub.add_parser("plugins", parents=[common], help="list source types, archivers, compressions and targets")

    s = sub.add_parser("config", help="check or show the configuration")
    csub = s.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    csub.add_parser("check", parents=[common], help="validate the config file")
    csub.add_parser("show", parents=[common], help="print the effective config, secrets masked")
    return p


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redact.RedactingFilter())
    logger = logging.getLogger("eternia_backup")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _describe_error(exc: BaseException, verbose: int) -> str:
    message = redact.redact_text(str(exc)) or type(exc).__name__
    if verbose:
        cause = exc.__cause__ or exc.__context__
        while cause is not None:
            message += f"\n  caused by {type(cause).__name__}: {redact.redact_text(str(cause))}"
            cause = cause.__cause__ or cause.__context__
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "plugins":
            return cmd_plugins(args)
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "config":
            return cmd_config(args)
        from .manager import BackupManager

        mgr = BackupManager.from_config(args.config)
        handler = {
            "create": cmd_create, "list": cmd_list, "restore": cmd_restore, "download": cmd_download,
            "cleanup": cmd_cleanup, "verify": cmd_verify, "status": cmd_status, "run": cmd_run,
        }[args.command]
        return handler(mgr, args)
    except EterniaBackupError as exc:
        print(f"error: {_describe_error(exc, args.verbose)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was committed", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, and the details with -v
        if args.verbose >= 2:
            import traceback

            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {_describe_error(exc, args.verbose)} "
              "(please report this; run with -vv for details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
