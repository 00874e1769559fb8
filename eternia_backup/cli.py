"""The command line: parse, call the manager, print. Nothing else lives here.

Exit status (constants in :mod:`.errors`, documented in docs/json.md): 0 done,
1 failed, 2 usage or configuration error, 3 done with warnings, 11
skipped because another run holds the lock, 130 interrupted (Ctrl-C), 143
terminated (SIGTERM, handled as Ctrl-C). Errors print one
line (``-v`` adds the chain of causes), never a traceback. With ``--json`` every
command prints exactly one JSON document (``"version": 1``) on stdout, errors
included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from . import __version__, redact
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_WARNINGS,
    BackupFailedError,
    EterniaBackupError,
    Interrupted,
    raise_interrupted,
    UsageError,
)
from .logformat import FORMATS, make_handler
from .sizes import human_size
from .timefmt import display_zone, for_people

log = logging.getLogger("eternia_backup")

JSON_VERSION = 1


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps({"version": JSON_VERSION, **data}, indent=2, default=str))


def _json_logs(args) -> bool:
    return getattr(args, "log_format", None) == "json"


def _say(args, message: str, level: int = logging.INFO) -> None:
    """A message for people on stderr: printed, or with --log-format json a log record (every stderr
    line is then JSON). It shows whenever the text would have been printed: the logger's level
    (WARNING without -v) does not hide it."""
    if _json_logs(args):
        logger = logging.getLogger("eternia_backup.cli")
        logger.handle(logger.makeRecord(logger.name, level, __file__, 0, message, None, None))
    else:
        print(message, file=sys.stderr)


def _warn(args, message: str, level: int = logging.WARNING) -> None:
    """``warning: ...`` (``error: ...``) on stderr, or a WARNING (ERROR) record with JSON logs."""
    if _json_logs(args):
        _say(args, message, level)
    else:
        _say(args, f"{'error' if level >= logging.ERROR else 'warning'}: {message}")


def _progress(args):
    """A terminal progress bar, or None: not with -q, --json or JSON logs, nor when stderr is not a terminal."""
    if args.quiet or args.json or _json_logs(args) or not sys.stderr.isatty():
        return None
    from .progress import TerminalProgress

    return TerminalProgress()


def _summary_wanted(args) -> bool:
    if _json_logs(args):
        return not args.quiet and not args.json  # an INFO record for the log shipper, one per backup
    return not args.quiet and not args.json and (sys.stderr.isatty() or args.verbose > 0)


def _zone(mgr):
    return display_zone(mgr.config.timezone)


# -- commands --------------------------------------------------------------------


def cmd_create(mgr, args) -> int:
    progress = _progress(args)
    try:
        result = mgr.create_backup(progress=progress, full=args.full)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.location)
        if _summary_wanted(args):
            m = result.manifest
            entries = sum(s.entries for s in m.sources)  # files, directories and links
            data = m.total_source_size  # the sources' bytes, not the tar stream (headers, padding)
            ratio = data / m.archive.size if m.archive.size else 0.0
            kind = ""
            if m.is_incremental:
                unchanged = sum((s.increment or {}).get("unchanged", 0) for s in m.sources)
                removed = sum((s.increment or {}).get("removed", 0) for s in m.sources)
                kind = f"incremental on top of {m.parent} ({unchanged} unchanged, {removed} removed), "
            _say(args, f"backup {result.backup_id}: {kind}{entries} entries, {human_size(data)} in, "
                 f"{human_size(m.archive.size)} stored (ratio {ratio:.2f}), {result.duration:.1f} s")
    if result.warning_count:
        _print_backup_warnings(args, result)
        return EXIT_WARNINGS
    return EXIT_OK


def _print_backup_warnings(args, result, shown: int = 5) -> None:
    """One line on stderr: how many warnings, and the first few names with their problem."""
    first = "; ".join(f"{w['source']}/{w['path']}: {w['problem']}" for w in result.warnings[:shown])
    more = f"; and {result.warning_count - shown} more" if result.warning_count > shown else ""
    text = (f"backup {result.backup_id} was made with {result.warning_count} warning(s): {first}{more} "
            "(the manifest lists them)")
    _warn(args, text)


def cmd_list(mgr, args) -> int:
    listings, errors = mgr.listings()
    from .catalog import merge

    from .catalog import unlisted_dicts

    entries = merge(listings)
    base_only = mgr.kept_only_as_base(listings)
    if args.json:
        _print_json({"backups": [{**e.to_dict(), "kept_only_as_base": e.backup_id in base_only} for e in entries],
                     "errors": errors, "unlisted_targets": unlisted_dicts(errors)})
    else:
        zone = _zone(mgr)
        if not entries and not errors:
            print("no backups yet; make one with `eternia-backup create`")
        elif entries:
            rows = [("ID", "CREATED", "KIND", "SIZE", "SOURCES", "STATE", "LOCATION")]
            for e in entries:
                m = e.manifest
                sources = ",".join(s.name for s in m.sources) if m else "?"
                where = " ".join(c.url for c in e.copies)
                state = e.state
                if not e.ok or e.state != "ok":
                    state += ": " + "; ".join(f"{c.target.name}: {c.problem.split(': ', 1)[-1]}"
                                              for c in e.copies if c.problem)
                if m is not None and m.warning_count:  # made with warnings: some files are not faithful
                    state += f" ({m.warning_count} warning{'s' if m.warning_count != 1 else ''})"
                if e.backup_id in base_only:
                    state += " (kept only as a base)"
                kind = "?" if m is None else ("incr" if m.is_incremental else "full")
                rows.append((e.backup_id, for_people(e.created_at, zone) if e.created_at else "?", kind,
                             human_size(m.archive.size if m else None), sources, state, where))
            widths = [max(len(r[i]) for r in rows) for i in range(6)]
            for r in rows:
                print("  ".join(r[i].ljust(widths[i]) for i in range(6)) + "  " + r[6])
        for name, err in errors.items():
            _warn(args, f"target {name!r} could not be listed, its backups are not shown: {err}")
    return EXIT_FAILED if errors else EXIT_OK


def _span(seconds: float) -> str:
    """``10 min``, ``48 h``, ``14 d``: an overdue window in the unit people read it in."""
    if seconds < 3 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 3 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} d"


def cmd_verify(mgr, args) -> int:
    from .progress import NO_PROGRESS

    progress = _progress(args) or NO_PROGRESS
    unlisted = []
    try:
        if args.all:
            reports = mgr.verify_all(progress=progress)
        else:
            report = mgr.verify_report(args.backup or "latest", allow_older=args.allow_older,
                                       allow_partial_listing=args.allow_partial_listing, progress=progress)
            unlisted = report.unlisted_targets
            reports = [report]
    finally:
        progress.close()
    if args.json:
        _print_json({"ok": all(r.ok for r in reports), "backups": [r.to_dict() for r in reports],
                     "unlisted_targets": unlisted})
    else:
        if not reports:
            print("no backups to verify")
        for r in reports:
            if r.ok and r.note:
                print(f"ok       {r.backup_id}  {human_size(r.size)}  {r.url}  ({r.note})")
            elif r.ok:
                print(f"ok       {r.backup_id}  {human_size(r.size)}, {r.entries} entries  {r.url}")
            else:  # damaged, or not checkable here (unreadable store, a key that does not open it)
                print(f"{'DAMAGED' if r.damaged else 'FAILED ':7}  {r.backup_id}  {r.problem}")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def cmd_drill(mgr, args) -> int:
    result = mgr.drill(args.backup)
    if args.json:
        _print_json(result.to_dict())
    else:
        for c in result.checks:
            where = f"{c.source}: " if c.source else ""
            print(f"{'ok    ' if c.ok else 'FAILED'}  {where}{c.name}: {c.detail}")
        if result.ok:
            print(f"drill of {result.backup_id}: ok, {len(result.checks)} checks in {result.duration:.1f} s; "
                  "the scratch copy was removed")
    if not result.ok:
        print(f"error: {result.describe_failure()}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


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
        try:
            answer = input("Go ahead? [y/N] ")
        except EOFError:  # Ctrl-D: no answer is "no"
            print(file=sys.stderr)
            return False
        return answer.strip().lower() in ("y", "yes")

    return confirm


def cmd_ls(mgr, args) -> int:
    from .progress import NO_PROGRESS

    progress = _progress(args) or NO_PROGRESS
    try:
        rows = mgr.list_members(args.backup, args.path, allow_partial_listing=args.allow_partial_listing,
                                progress=progress)
    finally:
        progress.close()
    if args.json:
        _print_json({"entries": rows})
        return EXIT_OK
    zone = _zone(mgr)
    for r in rows:
        when = for_people(r["mtime"], zone)
        link = f" -> {r['link']}" if r["link"] and r["type"] == "symlink" else ""
        kind = {"dir": "d", "symlink": "l", "hardlink": "h"}.get(r["type"], "-")
        print(f"{kind}{r['mode']}  {human_size(r['size']) if r['type'] == 'file' else '-':>10}  {when}  "
              f"{r['path']}{'/' if r['type'] == 'dir' else ''}{link}")
    return EXIT_OK


def cmd_restore(mgr, args) -> int:
    from .progress import NO_PROGRESS

    if args.stdout is not None:
        if args.to or args.include or args.exclude or args.dry_run or args.json:
            raise UsageError("--stdout PATH writes one file; it cannot be combined with --to, --include, "
                             "--exclude, --dry-run or --json")
        mgr.read_file(args.backup, args.stdout, sys.stdout.buffer, allow_partial_listing=args.allow_partial_listing)
        return EXIT_OK
    progress = _progress(args) or NO_PROGRESS
    try:
        result = mgr.restore_backup(args.backup, to=args.to, sources=args.source or None, dry_run=args.dry_run,
                                    confirm=_confirm_factory(args), keep_setid=args.keep_setid,
                                    allow_older=args.allow_older, force=args.force,
                                    allow_partial_listing=args.allow_partial_listing, progress=progress,
                                    to_database=args.to_database, include=args.include, exclude=args.exclude)
    finally:
        progress.close()
    if args.json:
        _print_json(result.to_dict())
    elif args.dry_run:
        print(f"dry run: backup {result.backup_id} verified; nothing was changed")
        for line in result.changes:
            print(f"  {line}")
    else:
        print(f"restored backup {result.backup_id} ({', '.join(result.sources)})")
        if _summary_wanted(args) and progress is not NO_PROGRESS:
            _say(args, f"restore {result.backup_id}: {progress.files} files in {progress.elapsed:.1f} s")
    for left in result.leftovers:
        _warn(args, f"backup {result.backup_id} was restored, but the state it replaced could not be removed "
                    f"completely: {left['path']} is left ({left['error']}); remove it by hand. `status` "
                    "reports it until it is gone, and later runs try again")
    return EXIT_WARNINGS if result.leftovers else EXIT_OK


def cmd_download(mgr, args) -> int:
    from .progress import NO_PROGRESS

    progress = _progress(args) or NO_PROGRESS
    try:
        path = mgr.download_backup(args.url, to=args.to, progress=progress)
    finally:
        progress.close()
    if args.json:
        _print_json({"path": str(path)})
    else:
        print(path)
    return EXIT_OK


def cmd_cleanup(mgr, args) -> int:
    from .retention import only_as_base

    result = mgr.cleanup(dry_run=args.dry_run)
    if args.json:
        _print_json(result.to_dict())
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for t in result.targets:
            for backup_id in t.deleted:
                print(f"{verb} {backup_id} on {t.target}")
            for backup_id, reasons in t.kept.items():
                if only_as_base(reasons):
                    print(f"kept {backup_id} on {t.target} only as a base ({', '.join(reasons)})")
            for o in t.orphans:
                print(f"{t.target}: {_orphan_line(o)}; {_orphan_action(o, args.dry_run)}")
            if t.leftovers_removed:
                print(f"{'would remove' if args.dry_run else 'removed'} {len(t.leftovers_removed)} leftover file(s) on {t.target}")
        print(f"{verb} {result.deleted_count} backup(s)")
        for name, err in result.errors.items():
            _warn(args, f"target {name!r}: {err}", logging.ERROR)
    return EXIT_OK if result.ok else EXIT_FAILED


def _orphan_line(o) -> str:
    """One orphan (dict or object) for people: what, where, how old, how big, whose."""
    d = o if isinstance(o, dict) else o.to_dict()
    age = "age unknown" if d["age_seconds"] is None else f"{d['age_seconds'] / 3600:.1f} h old"
    writer = f", written by {d['writer']}" if d.get("writer") else ""
    return f"{d['kind']} {d['name']}: {human_size(d['size'])}, {age}{writer}"


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
        zone = _zone(mgr)
        newest = status["newest_backup"]
        print(f"schedule:   {status['schedule']} ({status['timezone']})"
              + ("" if status["enabled"] else "  [automated backups disabled]"))
        print(f"next run:   {for_people(status['next_run'], zone)}" if status["enabled"]
              else "next run:   none (backup.enabled is false: `run` makes no backups)")
        if newest:
            hours = newest["age_seconds"] / 3600
            print(f"newest:     {newest['backup_id']}  {for_people(newest['created_at'], zone)}  "
                  f"{human_size(newest['size'])}  {hours:.1f} h old  on {', '.join(newest['copies'])}")
        elif status.get("unlisted_targets"):
            print("newest:     unknown (a target could not be listed)")
        else:
            print("newest:     none")
        for name, t in status["targets"].items():
            line = f"target {name}: last success {for_people(t['last_success'], zone) if t.get('last_success') else 'never'}"
            if t.get("last_failure"):
                line += f"; last failure {for_people(t['last_failure'], zone)}: {t.get('last_error')}"
            if t.get("listing_error"):
                line += f"; cannot list: {t['listing_error']}"
            print(line)
            if t.get("orphans_error"):
                print(f"  {t['orphans_error']}")
            for o in t.get("orphans") or []:
                print(f"  orphan: {_orphan_line(o)}" + ("; cleanup removes it" if o["due"] else ""))
        if status.get("interrupted_restore"):
            print(f"INTERRUPTED RESTORE: {status['interrupted_restore']}")
        for left in status["restore_leftovers"]:
            print(f"RESTORE LEFTOVER: {left['path']}, the state a restore replaced on "
                  f"{for_people(left['since'], zone)}, could not be removed ({left['error']}); remove it by hand")
        if status["overdue"]:
            print(f"OVERDUE: no complete backup in the last {_span(status['overdue_after_seconds'])} "
                  "(twice the schedule's period)")
        _print_drill_status(status["drill"], zone)
    drill = status["drill"]
    # a target that cannot be listed is a failure too: its newest backup is unknown
    failed = (status["overdue"] or status["unlisted_targets"] or status["restore_leftovers"] or drill["ok"] is False
              or drill["overdue"])
    return EXIT_FAILED if failed else EXIT_OK


def _print_drill_status(drill: dict, zone) -> None:
    if drill["last_run"] is None and drill["schedule"] is None:
        return  # drills are not used here: say nothing
    line = "last drill: "
    if drill["last_run"] is None:
        line += "never"
    else:
        line += f"{for_people(drill['last_run'], zone)}  {drill['backup_id']}  "
        if drill["ok"]:
            line += "ok"
        else:
            line += "FAILED: " + (", ".join(drill["failed_checks"]) or drill["error"] or "?")
    if drill["schedule"]:
        line += f"  (schedule cron {drill['schedule']}, next {for_people(drill['next_run'], zone)})"
    print(line)
    if drill["overdue"]:
        print(f"DRILL OVERDUE: no restore drill in the last {_span(drill['overdue_after_seconds'])} "
              "(twice the drill schedule's period)")


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
    if args.verbose == 0 and not args.quiet:
        logging.getLogger("eternia_backup").setLevel(logging.INFO)  # a daemon logs one line per run
    if not mgr.config.enabled:
        log.warning("backups are disabled (backup.enabled: false); nothing is scheduled. Exiting.")
        if args.json:
            _print_json({"stopped": True, "reason": "backups are disabled"})
        return EXIT_OK
    mgr.start_scheduler()
    log.info("next run at %s", for_people(mgr.status()["next_run"], _zone(mgr)))
    while not stop.wait(1.0):
        pass
    log.info("stopping: waiting up to %ss for a running backup", args.grace)
    mgr.stop_scheduler(timeout=args.grace)
    if args.json:
        _print_json({"stopped": True, "reason": "signal"})
    return EXIT_OK


def cmd_keygen(args) -> int:
    from pathlib import Path

    from .encryption import generate_identity_file
    from .errors import UsageError

    path = Path(args.output)
    if path.exists():
        raise UsageError(f"{path} exists; refusing to overwrite a key (choose another --output)")
    public = generate_identity_file(path)
    if args.json:
        _print_json({"identity_file": str(path.absolute()), "recipient": public})
    else:
        _say(args, f"# wrote the private identity to {path} (mode 0600); keep a copy somewhere safe", logging.WARNING)
        print(public)
    return EXIT_OK


def cmd_plugins(args) -> int:
    from .plugins import build_registry, distribution_of, get_plugin_manager

    pm = get_plugin_manager()
    registry = build_registry(pm)
    provided = sorted(registry.all(), key=lambda p: (p.kind, p.name))
    status = EXIT_FAILED if registry.failures else EXIT_OK  # a broken plugin is worth a non-zero status
    if args.json:
        rows = []
        for p in provided:
            dist, version = distribution_of(pm, p.plugin)
            rows.append({"kind": p.kind, "name": p.name, "plugin": p.plugin, "distribution": dist,
                         "version": version, "class": f"{p.cls.__module__}.{p.cls.__qualname__}"})
        failed = [{"plugin": f.name, "entry_point": f.value, "distribution": f.distribution, "version": f.version,
                   "error": f.error} for f in registry.failures]
        _print_json({"plugins": rows, "failed": failed})
        return status
    for p in provided:
        name = "* (any other protocol)" if p.name == "*" else p.name
        dist, version = distribution_of(pm, p.plugin)
        print(f"{p.kind:<12} {name:<24} {p.plugin:<40} {dist} {version}")
    for f in registry.failures:
        print(f"FAILED       {f.name:<24} {f.value:<40} {f.distribution} {f.version}: {f.error}")
    return status


def cmd_config(args) -> int:
    if args.config_command == "schema":
        from .config_reference import json_schema

        print(json.dumps(json_schema(), indent=2))  # a JSON Schema document, as editors expect it
        return EXIT_OK

    from .config import load_config
    from .manager import BackupManager

    config = load_config(args.config)
    _apply_config_logging(args, config)
    mgr = BackupManager(config)  # plugin-level validation (source options, levels, URLs)
    if args.config_command == "check":
        notes, problems = mgr.config_notes(), [] if args.file_only else mgr.config_problems()
        if args.json:
            _print_json({"ok": not problems, "path": str(config.path), "notes": notes, "problems": problems})
        else:
            verdict = "valid, but it cannot work here yet" if problems else "ok"
            print(f"{config.path}: {verdict} ({len(config.sources)} source(s), {len(config.targets)} target(s))")
            for line in notes:
                print(line)
            for line in problems:
                print(f"problem: {line}")
        return EXIT_FAILED if problems else EXIT_OK
    data = config.as_dict(masked=True)
    if args.json:
        _print_json({"config": data})
    else:
        import yaml

        print(yaml.safe_dump({"backup": data}, sort_keys=False).rstrip())
    return EXIT_OK


def _init_path(args) -> tuple[str, str]:
    """Where ``init`` writes, and the ``-c`` the next commands need to find it ('' when they find it
    anyway): where --path, else -c, else $ETERNIA_BACKUP_CONFIG say, so that ``-c myapp.yaml init``
    then ``-c myapp.yaml create`` use one file. (--path wins: -c may come from an alias.)"""
    import shlex
    from pathlib import Path

    from .config import CONFIG_ENV, DEFAULT_CONFIG_NAME

    given = args.path if args.path is not None else args.config
    if given is not None:
        return given, "" if Path(given) == Path(DEFAULT_CONFIG_NAME) else f"-c {shlex.quote(given)} "
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME, ""


def cmd_init(args) -> int:
    from .starter import write_starter

    where, option = _init_path(args)
    path = write_starter(where, option=option)
    if args.json:
        _print_json({"path": str(path)})
    else:
        print(f"wrote {path}")
        if not args.quiet:
            _say(args, "next: put the state to back up in data/ beside it (or list sources), then run "
                 f"`eternia-backup {option}config check` and `eternia-backup {option}create`")
    return EXIT_OK


def cmd_completion(args) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["eternia-backup"], shell=args.shell))
    return EXIT_OK


# -- parsing -----------------------------------------------------------------------


_PARTIAL = "when a target cannot be listed, let 'latest' be the newest backup of the others"
_ALLOW_OLDER = "for 'latest': if the newest backup is damaged, use the newest good one instead of failing"


class _ArgumentError(Exception):
    """argparse's complaint, raised instead of printed so --json can report it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit 2 itself
        if message == "the following arguments are required: backup":
            message += " (name one: 'latest', an id from 'eternia-backup list', a path or a URL)"
        elif message == "the following arguments are required: COMMAND":
            message += " (the commands: 'eternia-backup --help'; a first config: 'eternia-backup init')"
        raise _ArgumentError(self, message)


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-c/-v/-q/--json/--log-format, accepted before and after the subcommand.

    The subcommand's copies leave nothing set unless given (SUPPRESS), and count
    under their own names, so ``-v create -v`` is ``-vv``.
    """
    unset = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-c", "--config", metavar="PATH", **({"default": None} if top else unset),
                        help="config file (default: $ETERNIA_BACKUP_CONFIG, else ./eternia-backup.yaml)")
    parser.add_argument("-v", "--verbose", action="count", dest="verbose" if top else "verbose_sub",
                        default=0 if top else argparse.SUPPRESS, help="more output: -v info, -vv debug")
    parser.add_argument("-q", "--quiet", action="store_true", dest="quiet" if top else "quiet_sub",
                        default=False if top else argparse.SUPPRESS, help="only errors; no progress bar")
    parser.add_argument("--json", action="store_true", dest="json" if top else "json_sub",
                        default=False if top else argparse.SUPPRESS,
                        help="print one JSON document on stdout (see docs/json.md)")
    parser.add_argument("--log-format", choices=FORMATS, dest="log_format" if top else "log_format_sub",
                        default=None if top else argparse.SUPPRESS,
                        help="log lines on stderr as text, or one JSON object per line (see docs/monitoring.md); "
                        "default: the config's log.format, else text")


#: name -> (one-line description, examples); shown by `eternia-backup COMMAND --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("write a commented starter eternia-backup.yaml (never overwrites a file)",
             "eternia-backup init\n  eternia-backup -c /etc/myapp/eternia-backup.yaml init"),
    "create": ("make a backup now and print where it went",
               "eternia-backup create\n  eternia-backup create --full\n"
               "  eternia-backup -c /etc/myapp/eternia-backup.yaml create --json"),
    "list": ("list backups on every target, newest first",
             "eternia-backup list\n  eternia-backup list --json | jq '.backups[0].backup_id'"),
    "ls": ("list what a backup holds: type, mode, size, time and path of each entry",
           "eternia-backup ls latest\n  eternia-backup ls latest files/uploads --json"),
    "restore": ("verify a backup and restore it (in place, or into --to DIR)",
                "eternia-backup restore latest --dry-run\n  eternia-backup restore latest --to /tmp/r --source db\n"
                "  eternia-backup restore 20261129T020000Z-3f2a1c --yes"),
    "download": ("copy a backup from a URL into local storage, verified",
                 "eternia-backup download s3://bucket/production/eternia-backup-20261129T020000Z-3f2a1c.tar.zst"),
    "cleanup": ("apply retention on every target",
                "eternia-backup cleanup --dry-run\n  eternia-backup cleanup"),
    "verify": ("check backups: presence, size, sha256, every member",
               "eternia-backup verify\n  eternia-backup verify --all --json"),
    "status": ("last success/failure, next run, newest backup, last drill; exit 1 when overdue or the drill failed",
               "eternia-backup status\n  eternia-backup status --json"),
    "drill": ("restore a backup into a private scratch directory, check it, remove it; exit 1 when a check fails",
              "eternia-backup drill\n  eternia-backup drill 20261129T020000Z-3f2a1c --json"),
    "run": ("run the scheduler in the foreground until SIGTERM/SIGINT",
            "eternia-backup run\n  eternia-backup run --grace 120"),
    "keygen": ("write a new age identity file (0600) and print its public recipient",
               "eternia-backup keygen -o key.txt"),
    "plugins": ("list source types, archivers, compressions and targets",
                "eternia-backup plugins"),
    "config": ("check, show or describe the configuration",
               "eternia-backup config check\n  eternia-backup config show\n  eternia-backup config schema > schema.json"),
    "completion": ("print a shell completion script for bash, zsh or fish",
                   'eval "$(eternia-backup completion bash)"     # in ~/.bashrc\n'
                   '  eval "$(eternia-backup completion zsh)"      # in ~/.zshrc\n'
                   "  eternia-backup completion fish | source       # in ~/.config/fish/config.fish"),
}


def _add_command(sub, name: str, *, global_options: bool = True) -> argparse.ArgumentParser:
    line, examples = COMMANDS[name]
    p = sub.add_parser(name, help=line, description=line[0].upper() + line[1:] + ".",
                       epilog="examples:\n  " + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    if global_options:
        _global_options(p, top=False)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eternia-backup", description="Backups of application state you can trust.",
                epilog="exit status: 0 done, 1 failed, 2 usage or config error, 3 done with warnings,\n"
                       "11 skipped (another run holds the lock), 130 interrupted (Ctrl-C),\n"
                       f"{EXIT_TERMINATED} terminated (SIGTERM, handled as Ctrl-C).\n"
                       "Start with `eternia-backup init`; `eternia-backup COMMAND --help` shows examples.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, top=True)
    p.add_argument("--version", action="version", version=f"eternia-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = _add_command(sub, "init")
    s.add_argument("--path", metavar="FILE",
                   help="where to write it (default: --config, else $ETERNIA_BACKUP_CONFIG, else ./eternia-backup.yaml)")
    s = _add_command(sub, "create")
    s.add_argument("--full", action="store_true",
                   help="a full backup, also when archive.incremental is on (the next incrementals build on it)")
    _add_command(sub, "list")

    s = _add_command(sub, "restore")
    s.add_argument("backup", help="a path, URL, backup id (or unique prefix), or 'latest'")
    s.add_argument("--to", metavar="DIR", help="restore into DIR/<source> instead of the configured places")
    s.add_argument("--source", action="append", metavar="NAME", help="restore only this source (repeatable)")
    s.add_argument("--include", action="append", metavar="PATTERN",
                   help="restore only paths matching PATTERN (<source>/<path> glob; a directory brings its tree; "
                   "without /, a name anywhere); repeatable; needs --to")
    s.add_argument("--exclude", action="append", metavar="PATTERN", help="leave out paths matching PATTERN; repeatable")
    s.add_argument("--stdout", metavar="PATH", help="write the one file <source>/<path> to stdout (checked first)")
    s.add_argument("--to-database", metavar="NAME",
                   help="restore the one --source database into database NAME (created if missing) instead of its own")
    s.add_argument("--dry-run", action="store_true", help="verify and say what would change; change nothing")
    s.add_argument("--yes", "-y", action="store_true", help="replace existing state without asking")
    s.add_argument("--keep-setid", action="store_true",
                   help="keep setuid/setgid bits (as root, restoring in place only; otherwise they are stripped)")
    s.add_argument("--allow-older", action="store_true", help=_ALLOW_OLDER)
    s.add_argument("--force", action="store_true",
                   help="restore in place although processes hold files open under the destination, or "
                   "the backup was read from other paths on this host (the state moved)")
    s.add_argument("--allow-partial-listing", action="store_true", help=_PARTIAL)

    s = _add_command(sub, "ls")
    s.add_argument("backup", help="a path, URL, backup id (or unique prefix), or 'latest'")
    s.add_argument("path", nargs="?", help="only what is under <source>/<path>")
    s.add_argument("--allow-partial-listing", action="store_true", help=_PARTIAL)

    s = _add_command(sub, "download")
    s.add_argument("url", help="URL or path of a backup's archive or manifest")
    s.add_argument("--to", metavar="DIR", help="directory to download into (default: the local storage)")

    s = _add_command(sub, "cleanup")
    s.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")

    s = _add_command(sub, "verify")
    g = s.add_mutually_exclusive_group()
    g.add_argument("backup", nargs="?", help="a path, URL, backup id or 'latest' (default)")
    g.add_argument("--all", action="store_true", help="verify every copy of every backup")
    s.add_argument("--allow-older", action="store_true", help=_ALLOW_OLDER)
    s.add_argument("--allow-partial-listing", action="store_true", help=_PARTIAL)

    _add_command(sub, "status")
    s = _add_command(sub, "drill")
    s.add_argument("backup", nargs="?", help="a backup id (or unique prefix), path, URL or 'latest' "
                   "(default: backup.drill.backup, latest)")
    s = _add_command(sub, "run")
    s.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="on stop, how long a running backup may finish before it is abandoned (default 30)")

    s = _add_command(sub, "keygen")
    s.add_argument("--output", "-o", default="eternia-backup.key", metavar="FILE",
                   help="where to write the identity (default: eternia-backup.key); never overwritten")

    _add_command(sub, "plugins")

    s = _add_command(sub, "config")
    csub = s.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    for action, line in (("check", "validate the config file, and the paths it names on this machine"),
                         ("show", "print the effective config, secrets masked"),
                         ("schema", "print the JSON Schema of the config file (for editors)")):
        c = csub.add_parser(action, help=line, description=line[0].upper() + line[1:] + ".",
                            epilog=f"example:\n  eternia-backup config {action}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(c, top=False)
        if action == "check":
            c.add_argument("--file-only", action="store_true",
                           help="check the file only, not this machine's paths (a config for another machine)")

    s = _add_command(sub, "completion")
    s.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
    return p


def _merge_global_options(args: argparse.Namespace) -> argparse.Namespace:
    args.verbose += getattr(args, "verbose_sub", 0)
    args.quiet = args.quiet or getattr(args, "quiet_sub", False)
    args.json = args.json or getattr(args, "json_sub", False)
    args.log_format = getattr(args, "log_format_sub", None) or args.log_format
    if args.quiet:
        args.verbose = 0
    return args


def _setup_logging(verbosity: int, quiet: bool = False, fmt: str | None = None) -> None:
    """Our log records on stderr, masked, in ``fmt`` (text, or json: one object per line).

    With json, other libraries' warnings go through the same handler too, so every
    line on stderr parses.
    """
    if quiet:
        level = logging.ERROR
    else:
        level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = make_handler(fmt or "text", sys.stderr)
    logger = logging.getLogger("eternia_backup")
    previous = logger.handlers[:]
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    root = logging.getLogger()
    for old in previous:  # a second call (the config's log.format) replaces the first one's handler
        if old in root.handlers:
            root.removeHandler(old)
    if fmt == "json":
        root.addHandler(handler)


def _apply_config_logging(args, config) -> None:
    """``log.format`` of the config file, unless --log-format said otherwise (the CLI wins)."""
    if args.log_format is None and config.log_format != "text":
        args.log_format = config.log_format
        _setup_logging(args.verbose, args.quiet, args.log_format)


def _describe_error(exc: BaseException, verbose: int) -> str:
    message = redact.redact_text(str(exc)) or type(exc).__name__
    if verbose:
        cause = exc.__cause__ or exc.__context__
        while cause is not None:
            message += f"\n  caused by {type(cause).__name__}: {redact.redact_text(str(cause))}"
            cause = cause.__cause__ or cause.__context__
    return message


def _report_error(args, message: str, code: str, status: int, **extra: Any) -> int:
    """One line on stderr (an ERROR record with JSON logs); with --json also the error document on stdout."""
    if args is not None and _json_logs(args):
        logging.getLogger("eternia_backup.cli").error(message, extra={"error_code": code, "exit_status": status})
    else:
        print(f"error: {message}", file=sys.stderr)
    if args is not None and getattr(args, "json", False):
        _print_json({"error": {"message": message.split("\n", 1)[0], "code": code, "exit_status": status},
                     **extra})
    return status


def _run(args) -> int:
    if args.command == "plugins":
        return cmd_plugins(args)
    if args.command == "keygen":
        return cmd_keygen(args)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "completion":
        return cmd_completion(args)
    from .config import load_config
    from .manager import BackupManager

    config = load_config(args.config)
    _apply_config_logging(args, config)
    mgr = BackupManager(config)
    handler = {
        "create": cmd_create, "list": cmd_list, "ls": cmd_ls, "restore": cmd_restore, "download": cmd_download,
        "cleanup": cmd_cleanup, "verify": cmd_verify, "status": cmd_status, "run": cmd_run, "drill": cmd_drill,
    }[args.command]
    return handler(mgr, args)


@contextlib.contextmanager
def _sigterm_as_interrupt(wanted: bool = True):
    """SIGTERM (systemd, Kubernetes, docker stop) raises :class:`Interrupted`, as Ctrl-C raises
    KeyboardInterrupt: the command cleans up (temporary files, uploads) and says what was committed.

    Only the CLI does this, from the main thread, and only where SIGTERM would have ended the process
    (not when the parent ignores it); the previous handler is put back afterwards.
    """
    if not wanted or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _report_interrupt(args, exc: KeyboardInterrupt) -> int:
    """Ctrl-C (130) or SIGTERM (143): one line saying what was committed; a partial backup's copies in --json."""
    if isinstance(exc, Interrupted):
        message, status = str(exc), exc.exit_code
        extra = {"backup": exc.result.to_dict()} if exc.result is not None else {}
    else:
        message, status, extra = "interrupted; nothing was committed", EXIT_INTERRUPTED, {}
    if args.command == "cleanup" and not getattr(args, "dry_run", False):  # deletions are one by one
        message = message.replace("nothing was committed", "the backups deleted until then stay deleted, "
                                  "the others are kept; run cleanup again to finish")
    return _report_error(args, message, "interrupted", status, **extra)


def _asks_json_logs(argv: list[str]) -> bool:
    """--log-format json in an argument list argparse refused (its usage error must be a JSON line too)."""
    return "--log-format=json" in argv or any(a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # only a completing shell pays for the import
        import argcomplete

        argcomplete.autocomplete(parser)
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _merge_global_options(parser.parse_args(argv))
    except _ArgumentError as exc:
        if _asks_json_logs(argv):
            _setup_logging(0, False, "json")
            logging.getLogger("eternia_backup.cli").error(str(exc), extra={"error_code": "usage",
                                                                            "exit_status": EXIT_USAGE})
            if "--json" in argv:
                _print_json({"error": {"message": str(exc), "code": "usage", "exit_status": EXIT_USAGE}})
        elif "--json" in argv:
            print(f"error: {exc}", file=sys.stderr)
            _print_json({"error": {"message": str(exc), "code": "usage", "exit_status": EXIT_USAGE}})
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, args.quiet, args.log_format)
    try:
        with _sigterm_as_interrupt(args.command != "run"):  # `run` stops gracefully on its own
            return _run(args)
    except BackupFailedError as exc:
        extra = {"backup": exc.result.to_dict()} if exc.result is not None else {}
        return _report_error(args, _describe_error(exc, args.verbose), exc.code, exc.exit_code, **extra)
    except EterniaBackupError as exc:
        return _report_error(args, _describe_error(exc, args.verbose), exc.code, exc.exit_code)
    except KeyboardInterrupt as exc:  # Interrupted (SIGTERM, a partial backup, a restore made) says more
        return _report_interrupt(args, exc)
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, and the details with -vv
        if args.verbose >= 2 and _json_logs(args):
            log.debug("unexpected %s", type(exc).__name__, exc_info=True)
        elif args.verbose >= 2:
            import traceback

            traceback.print_exc()
        return _report_error(args, f"unexpected {type(exc).__name__}: {_describe_error(exc, args.verbose)} "
                                   "(please report this; run with -vv for details)", "unexpected", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
