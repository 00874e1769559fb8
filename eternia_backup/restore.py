"""Restore: verify, stage beside the destination, swap in, roll back on failure.

Order of work, so that nothing live changes until everything is known good:

1. the archive's size on the target is checked against the manifest;
2. each selected source gets a restore plan, which stages into a hidden
   directory beside its destination, as the archive streams from the target
   (read once, local or remote: no temporary copy of the archive); members are
   checked (:mod:`.safety`), the expansion is capped by the manifest's recorded
   size, and the stored bytes are hashed as they are read;
3. only when the whole archive was read and its size and sha256 match the
   manifest are the plans committed, reversible ones first; if one fails,
   those already committed are rolled back;
4. what was replaced is removed once every plan committed; what cannot be
   removed (an immutable file) is reported as a leftover, never as a failure:
   the restore is complete. A Ctrl-C is held back during the swaps, and one
   after them says that the restore was made.

A dry run reads the archive once too, to check its sha256, and stages nothing.

An incremental backup is restored from its chain in the same single staged
pass: every link's archive (full first) streams through the same extractor,
which takes from each only the paths whose version the restored backup holds
(its file index says which archive that is); each archive's size and sha256 are
checked, and nothing is swapped in unless every link matched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import types
from pathlib import Path
from typing import Callable

from . import file_index, journal
from .catalog import BackupCopy
from .errors import (
    ArchiveError,
    BackupNotFoundError,
    EterniaBackupError,
    IntegrityError,
    Interrupted,
    InterruptedAfterRestore,
    RestoreError,
    UsageError,
    raise_interrupted,
)
from .fsutil import processes_using, remove_empty_dirs, why_not_removed
from .increments import META_DIR, ChainFilter, LinkFilter, is_meta_member
from .streams import logical_path
from .plans import DirectorySwapPlan
from .plugins import call_lifecycle
from .progress import NO_PROGRESS, Progress, ProgressReader
from .providers import RestorePlan, Source
from .safety import Extractor, MemberChecker
from .verify import (
    Content,
    HashingReader,
    check_size,
    check_stored_archive,
    compare_checksum,
    keys_for,
    open_archive,
    reading_failed,
)

log = logging.getLogger("eternia_backup.restore")


@dataclasses.dataclass
class RestoreResult:
    backup_id: str
    sources: list[str]
    changes: list[str]
    dry_run: bool
    url: str
    #: targets that could not be listed when the backup was chosen: [{"target", "error"}]
    unlisted_targets: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: what the restore replaced and could not remove (it is complete all the same): [{"path", "error"}]
    leftovers: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """``--json`` of restore; ``unlisted_targets`` is ``[{"target": name, "error": why}]``, ``leftovers``
        ``[{"path": left, "error": why}]``."""
        return dataclasses.asdict(self)


def restore_copy(copy: BackupCopy, *, sources: dict[str, Source], selected: list[str] | None,
                 to: Path | None, dry_run: bool, registry, pm,
                 confirm: Callable[[list[str]], bool] | None = None, encryption=None,
                 journal_path: Path | None = None, keep_setid: bool = False, force: bool = False,
                 progress: Progress = NO_PROGRESS, links: list[BackupCopy] | None = None,
                 to_database: str | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None, tap=None) -> RestoreResult:
    """Restore ``copy``; ``links`` is its chain on the same target, full first and ``copy`` last
    (:func:`eternia_backup.chains.chain_copies`), for an incremental backup.

    ``tap(source, relpath, member, reader)`` sees each member staged and returns the
    reader to extract it with (a drill wraps some to hash what the archive holds)."""
    manifest = copy.manifest
    if manifest is None or copy.problem:
        raise IntegrityError(f"{copy.describe()} is damaged: {copy.problem or 'no manifest'}; nothing was changed")
    if manifest.is_incremental and not links:
        raise IntegrityError(f"{copy.describe()} is incremental and its chain was not found; nothing was changed")
    links = links or [copy]
    in_backup = [s.name for s in manifest.sources]
    names = list(selected) if selected else in_backup
    for n in names:
        if n not in in_backup:
            raise UsageError(f"backup {copy.backup_id} has no source {n!r}; it has: {', '.join(in_backup)}")
    missing = [n for n in names if n not in sources]
    if missing and to is None:
        raise UsageError(
            f"source(s) {', '.join(missing)} of backup {copy.backup_id} are not in the current config, so it is "
            "unknown where they go; restore with --to DIR"
        )

    identities = check_links(links, encryption)  # before anything: a missing link or key changes nothing

    if to_database is not None:
        _check_to_database(names, sources, to, to_database)
    if (include or exclude) and to is None:
        raise UsageError("--include/--exclude restore part of a backup: give --to DIR (in place, the rest of "
                         "the state would be replaced by nothing); nothing was changed")
    plans: dict[str, RestorePlan] = {}
    for n in names:
        src = sources.get(n)
        if src is None:  # only with --to: the dump lands as files
            plans[n] = DirectorySwapPlan(to / n, f"source {n!r}")
        elif to_database is not None:
            plans[n] = src.restore_plan(None, database=to_database)
        else:
            plans[n] = src.restore_plan(to / n if to is not None else None)
    changes = [line for p in plans.values() for line in p.changes()]
    result = RestoreResult(copy.backup_id, names, changes, dry_run, copy.url)
    for p in plans.values():  # up front: say why a swap cannot be done before verifying, asking or staging
        if isinstance(p, DirectorySwapPlan):
            p.refuse_unswappable()
    created_to = to is not None and not to.exists()
    committed = False
    if dry_run:
        progress.phase("verify", sum(link.manifest.archive.size for link in links))
        for link in links:
            check_stored_archive(link, progress)
        log.info("restore %s: size and sha256 verified%s", copy.backup_id,
                 f" (and of the {len(links) - 1} backup(s) it is built on)" if len(links) > 1 else "")
        call_lifecycle(pm, "eternia_restore_started", backup_id=copy.backup_id, sources=names,
                       destination=to, dry_run=True)
        call_lifecycle(pm, "eternia_restore_finished", backup_id=copy.backup_id, error=None, result=result)
        return result
    try:
        _check_open_files(plans, force)
        if confirm is not None and any(p.replaces_existing() for p in plans.values()):
            if not confirm(changes):
                raise RestoreError("restore cancelled; nothing was changed")
        call_lifecycle(pm, "eternia_restore_started", backup_id=copy.backup_id, sources=names,
                       destination=to, dry_run=False)
        try:
            _stage_chain(links, plans, registry, identities, encryption,
                         keep_setid=_setid_allowed(keep_setid, to), progress=progress, include=include,
                         exclude=exclude, tap=tap)
            log.info("restore %s: staged; size and sha256 verified", copy.backup_id)
            if journal_path is not None:  # the next run finishes the swaps if this process dies
                journal.write(journal_path, copy.backup_id,
                              [journal.entry_for(p, getattr(sources.get(n), "type_name", None))
                               for n, p in plans.items()])
            with _interrupts_held() as held:
                _commit_all(plans)
                committed = True
        except BaseException as exc:
            if committed and isinstance(exc, KeyboardInterrupt):  # the moment after the held swaps
                raise _interrupted_after(copy, plans, exc) from None
            call_lifecycle(pm, "eternia_restore_finished", backup_id=copy.backup_id, error=exc, result=None)
            if isinstance(exc, OSError) and not isinstance(exc, EterniaBackupError):
                raise RestoreError(f"restore of {copy.backup_id} failed: {exc.strerror or exc}; "
                                   "the current state was left as it was") from exc
            raise
    finally:
        if not committed:
            if journal_path is not None:  # first: nothing is to be finished from a staging half removed
                journal.remove(journal_path)  # rolled back
            for p in plans.values():
                for path, why in _discard(p).items():
                    log.warning("%s: %s could not be removed: %s; remove it by hand", p.description, path, why)
            if created_to:  # never after success: restored empty directories stay
                remove_empty_dirs(to)  # a failed restore leaves no empty --to directory behind
    # The restored state is live: from here on the restore is complete, whatever happens.
    if held.interrupted:  # the journal stays: the next run removes the rest
        raise _interrupted_after(copy, plans, Interrupted("", held.signum))
    try:
        result.leftovers = [{"path": path, "error": why} for p in plans.values()
                            for path, why in _discard(p).items()]  # the CLI and `status` say what to do
    except KeyboardInterrupt as exc:
        raise _interrupted_after(copy, plans, exc) from None
    if journal_path is not None:
        journal.remove(journal_path)  # finished
    call_lifecycle(pm, "eternia_restore_finished", backup_id=copy.backup_id, error=None, result=result)
    log.info("restore %s: done (%s)", copy.backup_id, ", ".join(names))
    return result


@contextlib.contextmanager
def _interrupts_held():
    """Hold a Ctrl-C (or the CLI's SIGTERM) back while the swaps run (renames, fsyncs: milliseconds), so
    that it never leaves some sources swapped and not others, nor a swap done that this process thinks
    undone; ``.interrupted`` says whether one came, ``.signum`` which."""
    held = types.SimpleNamespace(interrupted=False, signum=signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield held  # no signal raises in a thread
        return
    # only handlers that raise are held: the scheduler's own handlers, or none at all, stay as they are
    raising = {signum: handler for signum in (signal.SIGINT, signal.SIGTERM)
               if (handler := signal.getsignal(signum)) in (signal.default_int_handler, raise_interrupted)}

    def hold(signum, _frame):
        held.interrupted, held.signum = True, signum

    for signum in raising:
        signal.signal(signum, hold)
    try:
        yield held
    finally:
        for signum, handler in raising.items():
            signal.signal(signum, handler)


def _discard(plan: RestorePlan) -> dict[str, str]:
    """``plan.discard()``; what it could not remove is returned (``{path: why}``), never raised: it would
    hide a failed restore's own error, or turn a complete restore into a failed one."""
    try:
        plan.discard()
    except OSError as exc:
        where = plan.leftover() if isinstance(plan, DirectorySwapPlan) else None
        return {str(where or exc.filename or plan.staging_dir): why_not_removed(exc)}
    return {}


def _interrupted_after(copy: BackupCopy, plans: dict[str, RestorePlan],
                       exc: BaseException) -> InterruptedAfterRestore:
    """The truth about a Ctrl-C (or SIGTERM) after the swaps: restored, and what of the old state is left."""
    left = [str(p.leftover()) for p in plans.values() if isinstance(p, DirectorySwapPlan) and p.leftover()]
    return InterruptedAfterRestore(
        f"{Interrupted.reason(exc)} after the restore of backup {copy.backup_id} was complete: the live data "
        f"is the backup's; removing the state it replaced was cut short"
        + (f" ({', '.join(left)} {'is' if len(left) == 1 else 'are'} left)" if left else "")
        + "; the next create, restore or drill removes it", getattr(exc, "signum", signal.SIGINT))


def _check_to_database(names: list[str], sources: dict[str, Source], to: Path | None, database: str) -> None:
    """``--to-database`` names one database source, restored into the server (not ``--to DIR``)."""
    if to is not None:
        raise UsageError("--to-database restores into the database server; it cannot be combined with --to DIR")
    if len(names) != 1:
        raise UsageError(f"--to-database {database} needs exactly one --source (a database source); "
                         f"this restore has: {', '.join(names)}")
    src = sources.get(names[0])
    if src is None or not getattr(src, "restores_to_database", False):
        what = f"type {src.type_name}" if src is not None else "not in the current config"
        raise UsageError(f"source {names[0]!r} ({what}) cannot be restored into another database; "
                         "--to-database works for database sources such as postgres and mysql")


def _check_open_files(plans: dict[str, RestorePlan], force: bool) -> None:
    """Refuse to swap a directory that processes hold files open under (``force`` only warns).

    After the swap they would go on reading and writing the old, deleted tree.
    """
    for plan in plans.values():
        if not isinstance(plan, DirectorySwapPlan) or not plan.destination.is_dir():
            continue
        users = processes_using(plan.destination, ignore=plan.carried_paths())
        if not users:
            continue
        named = ", ".join(f"pid {pid} ({cmd}: {path})" for pid, cmd, path in users[:5])
        more = f" and {len(users) - 5} more" if len(users) > 5 else ""
        message = (f"{plan.label}: {len(users)} process(es) hold files open under {plan.destination}: {named}{more}; "
                   "after the swap they would keep using the old, deleted tree")
        if force:
            log.warning("%s (going ahead: --force)", message)
            continue
        raise RestoreError(f"{message}. Stop them first, restore with --to DIR, or pass --force to restore anyway; "
                           "nothing was changed")


def _setid_allowed(asked: bool, to: Path | None) -> bool:
    """Set-id bits come back only when asked, as root, in place: anywhere else they hand a
    stranger's program the restorer's privileges (a --to tree is often inspected by hand)."""
    if not asked:
        return False
    if to is not None or os.geteuid() != 0:
        log.warning("--keep-setid applies only to a restore as root into the configured places; "
                    "set-id bits are stripped (%s)", "restoring with --to" if to is not None else "not root")
        return False
    return True


def check_links(links: list[BackupCopy], encryption) -> dict[str, list | None]:
    """Before a backup (``links[-1]``, with its chain) is read: every archive is there at its size, a key
    opens each, and an incremental's file index checks; returns the identities per backup id."""
    for link in links:
        check_size(link, link.manifest)
    identities = {link.backup_id: keys_for(link.manifest, encryption) for link in links}  # no key, no restore
    restored = links[-1]
    if restored.manifest.is_incremental:
        check_index(restored)
    return identities


def check_index(copy: BackupCopy) -> None:
    """Check the stored file index of ``copy`` against its manifest (size, sha256) before it is relied on."""
    record = copy.manifest.files_index
    try:
        size = copy.target.size(record.file)
    except BackupNotFoundError:
        raise IntegrityError(f"{copy.describe()}: file index {record.file} is missing; nothing was changed") from None
    if size != record.size:
        raise IntegrityError(f"{copy.describe()}: file index {record.file} is {size} bytes, the manifest says "
                             f"{record.size}; nothing was changed")
    file_index.check_stored(copy.target, record, copy.describe())


def _stage_chain(links: list[BackupCopy], plans: dict[str, RestorePlan], registry, identities: dict,
                 encryption=None, *, keep_setid: bool = False, progress: Progress = NO_PROGRESS,
                 include: list[str] | None = None, exclude: list[str] | None = None, tap=None) -> None:
    """Stage the restored backup (the last link) from every archive of its chain, oldest first.

    ``include``/``exclude`` (glob patterns over ``<source>/<path>``) restore only part of it.
    """
    for p in plans.values():
        p.prepare()
    extractor = Extractor({n: p.staging_dir for n, p in plans.items()}, where=links[-1].describe(),
                          keep_setid=keep_setid)

    touched: set[str] = set()

    def extract(source: str, rel: str, member, reader) -> None:
        if include or exclude:
            rel_path = logical_path(rel)  # a part of a dump, or an appended part, goes with its file
            if not wanted_by_patterns(f"{source}/{rel_path}" if rel else source, include, exclude):
                return
        touched.add(source)
        extractor.add(source, rel, member, tap(source, rel, member, reader) if tap is not None else reader)

    # a whole restore hands members straight to the extractor: no layer per member
    visit = extract if include or exclude or tap is not None else extractor.add
    try:
        read_backup(links, registry, identities, visit, selected=set(plans), progress=progress, phase="restore")
        extractor.finish()
    except BaseException:
        extractor.abort()  # nothing may still write into the staging directories being thrown away
        raise
    if include or exclude:  # a source nothing of which was selected is not restored (no empty directory)
        for name in [n for n in plans if n not in touched]:
            plans.pop(name).discard()


def wanted_by_patterns(path: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    """restic-like selection of ``<source>/<path>``: included (a pattern matches it, one of its parent
    directories, or, without ``/``, its name) and not excluded the same way."""
    return (not include or _matches(path, include)) and not (exclude and _matches(path, exclude))


def _matches(path: str, patterns: list[str]) -> bool:
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes):
            return True
        if "/" not in pat and any(fnmatch.fnmatchcase(name, pat) for name in parts[1:]):
            return True
    return False


def read_backup(links: list[BackupCopy], registry, identities: dict, visit, *, selected: set[str] | None = None,
                progress: Progress = NO_PROGRESS, phase: str = "read") -> None:
    """Call ``visit(source, relpath, member, reader)`` for each entry of the backup ``links[-1]`` holds.

    An incremental backup's entries come from every archive of its chain (``links``,
    full first), each path from the one archive holding the restored version. Every
    archive is read once and its size and sha256 checked against its manifest;
    ``visit`` may read the current member. ``selected`` limits the sources.
    """
    restored = links[-1]
    manifest = restored.manifest
    progress.phase(phase, sum(link.manifest.archive.size for link in links))
    chain = None
    if manifest.is_incremental:  # which archive holds each path: the restored backup's index, read once
        chain = ChainFilter(file_index.IndexReader(restored.target, manifest.files_index,
                                                   identities[restored.backup_id], restored.describe()),
                            restored.backup_id)
    try:
        for link in links:
            wanted = chain.for_link(link.backup_id) if chain is not None else None
            try:
                _stage(link, visit, selected, registry, identities[link.backup_id], wanted, progress)
            except IntegrityError as exc:
                exc.damaged_backup = link.backup_id  # the manager remembers it (no incremental builds on it)
                raise
    finally:
        if chain is not None:
            chain.close()


def _stage(copy: BackupCopy, visit, selected: set[str] | None, registry, identities: list | None,
           wanted: LinkFilter | None, progress: Progress = NO_PROGRESS) -> None:
    """Hand the selected sources' members of one archive to ``visit``, in one read of it.

    ``wanted`` (a chain) says which members this archive contributes; the others are read over.

    The stored bytes are hashed as they stream in; the staged trees count only
    once the size and sha256 matched the manifest at the end. When reading or
    unpacking fails half way, the rest is read and hashed so that a damaged
    archive is reported as such rather than by whatever the damage broke first.
    """
    manifest = copy.manifest
    archiver = registry.archiver(manifest.archive.format)()
    compression = registry.compression(manifest.archive.compression)()
    where = copy.describe()
    checker = MemberChecker([s.name for s in manifest.sources], where=where)
    with open_archive(copy) as raw:
        hashing = HashingReader(ProgressReader(raw, progress))
        content = Content(hashing, manifest, compression, identities, where, read_ahead=True)
        try:
            reader = archiver.reader(content)
            check, file_done = checker.check, progress.file_done
            for member in reader:
                if member.name.startswith(META_DIR) and is_meta_member(member.name):
                    continue  # what the framework stores for itself (.eternia/)
                source, rel = check(member)
                if (selected is None or source in selected) and (wanted is None or wanted.wants(source, rel)):
                    visit(source, rel, member, reader)
                file_done()
            checker.finish()
            content.finish()
            hashing.drain()
        except IntegrityError as exc:  # unsafe members, a wrong key or altered ciphertext
            _explain_damage(copy, hashing, content, exc)
            raise
        except ArchiveError as exc:
            _explain_damage(copy, hashing, content, exc)
            raise IntegrityError(f"{where}: {exc}") from exc
        except EterniaBackupError:
            raise
        except OSError as exc:
            if hashing.failed:
                raise reading_failed(copy, exc) from exc
            raise RestoreError(f"restore of {copy.backup_id} failed while staging: {exc.strerror or exc}; "
                               "the current state was left as it was") from exc
        except Exception as exc:  # zstd, gzip, lzma and tarfile each raise their own
            _explain_damage(copy, hashing, content, exc)
            raise IntegrityError(f"{where}: archive cannot be read: {exc}") from exc
        finally:
            content.close()
    compare_checksum(copy, manifest, hashing)


def _explain_damage(copy: BackupCopy, hashing: HashingReader, content: Content, exc: BaseException) -> None:
    """Raise the checksum mismatch instead of ``exc`` when the stored bytes differ from the manifest's."""
    content.close()
    try:
        hashing.drain()
    except OSError as read_error:
        raise reading_failed(copy, read_error) from exc
    compare_checksum(copy, copy.manifest, hashing)


def _commit_all(plans: dict[str, RestorePlan]) -> None:
    ordered = sorted(plans.values(), key=lambda p: p.irreversible)
    done: list[RestorePlan] = []
    try:
        for p in ordered:
            p.commit()
            done.append(p)
    except BaseException as exc:
        for p in reversed(done):
            try:
                p.rollback()
            except Exception as rb:  # say so loudly: state may be mixed
                log.critical("rollback of %s failed: %s", p.description, rb)
                raise RestoreError(
                    f"restore failed ({exc}) and rolling back {p.description} failed too ({rb}); "
                    f"what was replaced is kept beside the destination"
                ) from exc
        if isinstance(exc, OSError) and not isinstance(exc, EterniaBackupError):
            raise RestoreError(f"restore failed: {exc.strerror or exc}; the current state was left as it was") from exc
        raise
