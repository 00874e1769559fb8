"""Chains of incremental backups: choosing a parent, finding the links of a chain on a target.

A chain is a full backup and the incrementals made on top of it, each naming
its parent. A copy of an incremental backup on a target is restorable only when
every link of its chain is on that same target and intact: the catalog marks
it damaged otherwise (:func:`mark_broken_chains`), so ``list`` shows it and
retention never counts it as a kept copy.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from .backup import IncrementPlan
from .errors import EterniaBackupError, IntegrityError
from .file_index import IndexReader, LocalIndexFile, check_stored
from .increments import Incremental, why_full

log = logging.getLogger("eternia_backup.chains")


def mark_broken_chains(copies: list) -> None:
    """Give each incremental copy a ``problem`` when its chain is incomplete on its target (naming the
    missing link) or its own file index is missing; run once every copy has its own archive's problems."""
    by_id = {c.backup_id: c for c in copies}
    broken = {}
    for copy in copies:
        manifest = copy.manifest
        if manifest is None or copy.problem or not manifest.is_incremental:
            continue
        for link in manifest.chain:
            base = by_id.get(link)
            if base is None:
                broken[copy.backup_id] = f"its chain is broken on this target: base backup {link} is missing"
                break
            if base.problem and not base.unreadable:
                broken[copy.backup_id] = f"its chain is broken on this target: base backup {link} is damaged"
                break
    for copy in copies:  # after the loop: a link is judged by its own archive, not by its chain
        copy.problem = copy.problem or broken.get(copy.backup_id)
        if copy.problem is None and copy.index_problem and copy.manifest.is_incremental:
            copy.problem = copy.index_problem  # the restore of an incremental reads its index


def chain_copies(copy, listing_copies: list) -> list:
    """The copies of every link of ``copy``'s chain on its target, oldest first, then ``copy``.

    Raises IntegrityError naming the first link that is missing or damaged there.
    """
    manifest = copy.manifest
    by_id = {c.backup_id: c for c in listing_copies}
    links = []
    for link in manifest.chain:
        base = by_id.get(link)
        if base is None or base.manifest is None:
            raise IntegrityError(f"{copy.describe()} is incremental and its base backup {link} is missing on "
                                 f"target {copy.target.name!r}; it cannot be restored from there, and nothing "
                                 "was changed")
        if base.problem and base.problem != base.index_problem:  # a base's own index is not needed here
            raise IntegrityError(f"{copy.describe()} is incremental and its base backup {link} is damaged "
                                 f"({base.problem}); nothing was changed")
        links.append(base)
    return [*links, copy]


def _same_encryption(parent_record: dict | None, encryptor) -> bool:
    if encryptor is None or parent_record is None:
        return encryptor is None and parent_record is None
    return (list(parent_record.get("recipients") or []) == list(encryptor.settings.recipients)
            and bool(parent_record.get("passphrase_identity")) == bool(encryptor.settings.passphrase))


def plan_increment(policy: Incremental, *, full: bool, entries: list, unlisted: dict[str, str],
                   target_names: list[str], environment: str, encryptor, encryption_settings,
                   now: datetime, plain_index: Path | None = None,
                   damaged: set[str] | frozenset[str] = frozenset()) -> IncrementPlan | None:
    """The plan of the next backup: None without incremental backups, else full or on top of a parent.

    The parent is the newest backup, when it is intact on every target (so that
    every copy of the new backup has its whole chain beside it) and its file
    index reads back as recorded; anything else makes a full backup, with a
    log line saying why. An encrypted parent's index is read from the local
    unencrypted copy (``plain_index``) when no key to decrypt it is configured
    (a host holding only the recipients' public keys).
    """
    if not policy.enabled:
        return None
    full_plan = IncrementPlan(plain_index=plain_index)
    if full:
        log.info("a full backup, as asked (--full)")
        return full_plan
    if unlisted:
        log.warning("this backup is a full one: target(s) %s could not be listed, so the newest backup "
                    "there is unknown", ", ".join(repr(n) for n in unlisted))
        return full_plan
    ours = [e for e in entries if e.manifest is not None and e.manifest.environment == environment]
    if not ours:
        log.info("a full backup: there is no earlier backup to build on")
        return full_plan
    newest = ours[0]
    parent = newest.manifest
    by_target = {c.target.name: c for c in newest.copies}
    missing = [n for n in target_names
               if n not in by_target or not by_target[n].ok or by_target[n].index_problem]
    if parent.files_index is None:
        reason = f"the newest backup {newest.backup_id} has no file index (made without incremental backups)"
    elif missing:
        reason = (f"the newest backup {newest.backup_id} is not intact (or has no file index) on target(s) "
                  f"{', '.join(repr(n) for n in missing)}")
    elif damaged & {*parent.chain, parent.backup_id}:
        found = sorted(damaged & {*parent.chain, parent.backup_id})
        reason = (f"reading {', '.join(found)} found it damaged (verify, restore or cleanup), so the chain "
                  f"of {newest.backup_id} is not built on")
    elif not _same_encryption(parent.encryption, encryptor):
        reason = "the encryption settings changed since the newest backup"
    else:
        full_id = parent.chain[0] if parent.is_incremental else parent.backup_id
        full_entry = next((e for e in ours if e.backup_id == full_id), None)
        reason = why_full(parent, full_entry.created_at if full_entry else None, policy, now)
    if reason:
        log.info("a full backup: %s", reason)
        return full_plan
    copy = newest.best
    source, record, where = copy.target, parent.files_index, copy.describe()
    try:
        from .encryption import DecryptionError
        from .verify import keys_for

        try:
            identities = keys_for(parent, encryption_settings)
        except DecryptionError:
            local = LocalIndexFile(plain_index) if plain_index is not None else None
            kept = local.record() if local is not None else None
            if kept is None or kept[0] != parent.backup_id:
                raise
            source, record, where, identities = local, kept[1], local.describe(), None
        check_stored(source, record, where)
    except EterniaBackupError as exc:
        log.warning("a full backup: the file index of %s cannot be used (%s)", newest.backup_id, exc)
        return full_plan
    log.info("an incremental backup on top of %s", newest.backup_id)
    return IncrementPlan(parent=parent, plain_index=plain_index,
                         open_parent_index=lambda: IndexReader(source, record, identities, where))
