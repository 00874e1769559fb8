"""Restore plans that plugins reuse: staging beside the destination, then a swap.

A plan stages a source's entries in a hidden directory beside the destination
(same filesystem, so the swap is a rename), and on commit moves the current
state aside, moves the staged state in, and keeps what it replaced until the
whole restore succeeded; rollback puts it back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import LeftoverError, RestoreError
from .fsutil import (exchange, fsync_dir, link_tree, mount_points_under, remove_stale_siblings, remove_tree, sibling,
                     why_not_removed)
from .providers import RestorePlan

log = logging.getLogger("eternia_backup.restore")


class DirectorySwapPlan(RestorePlan):
    """Replace the directory ``destination`` with the staged tree."""

    def __init__(self, destination: Path, label: str, carry: tuple[Path, ...] = ()):
        self.destination = Path(destination).absolute()
        self.label = label
        self.carry = tuple(Path(p).absolute() for p in carry)
        self.staging_dir = sibling(self.destination, "restore")
        self.replaced: Path | None = None
        self.committed = False
        self.description = f"{label}: replace directory {self.destination}"

    def prepare(self) -> None:
        parent = self.destination.parent
        self.refuse_unswappable()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_siblings(self.destination, keep=self.staging_dir):
                log.warning("%s: removed %s, left by an interrupted restore", self.label, stale)
            self.staging_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise RestoreError(f"{self.label}: cannot create a staging directory in {parent}: {exc.strerror}") from exc

    def refuse_unswappable(self) -> None:
        """What no swap can do, said before anything (and by a dry run): replace a symlink or a file, move a
        mount point, or remove a filesystem mounted inside the old tree."""
        if self.destination.is_symlink():
            raise RestoreError(
                f"{self.label}: destination {self.destination} is a symlink; restore with --to DIR "
                "or remove the link"
            )
        if self.destination.exists() and not self.destination.is_dir():
            raise RestoreError(f"{self.label}: destination {self.destination} exists and is not a directory")
        if not self.destination.is_dir():
            return
        mounts = mount_points_under(self.destination)
        if os.path.realpath(self.destination) in mounts:
            raise RestoreError(
                f"{self.label}: destination {self.destination} is a mount point; a restore swaps the directory "
                "itself for the staged one, which cannot be done to a mount point. Restore with --to DIR and copy "
                "the files in, or unmount it first (the restore then fills the directory beneath)")
        if mounts:
            raise RestoreError(
                f"{self.label}: {mounts[0]} inside destination {self.destination} is a mount point; the swap would "
                "move it away with the old tree and replace it with a plain directory. Restore with --to DIR, "
                "or unmount it first")

    def replaces_existing(self) -> bool:
        return self.destination.exists() and any(self.destination.iterdir())

    def changes(self) -> list[str]:
        if self.destination.exists():
            return [f"{self.label}: would replace the contents of {self.destination}"]
        return [f"{self.label}: would create {self.destination}"]

    def carried_paths(self) -> list[Path]:
        """Our own storage inside the destination: carried into the new tree, never replaced."""
        root = os.path.realpath(self.destination)
        return [p for p in self.carry if p.exists() and _inside(os.path.realpath(p), root)
                and os.path.realpath(p) != root]

    def _carried_relpaths(self) -> list[str]:
        root = os.path.realpath(self.destination)
        return [os.path.relpath(os.path.realpath(p), root) for p in self.carried_paths()]

    def commit(self) -> None:
        if self.destination.exists():
            carry_storage(self.destination, self.staging_dir, self._carried_relpaths(), self.label)
            # One atomic exchange where the system has it: the destination is
            # never missing, and the old state lands under the staging name.
            if exchange(self.staging_dir, self.destination):
                self.replaced = self.staging_dir
            else:
                self.replaced = sibling(self.destination, "replaced")
                os.rename(self.destination, self.replaced)
                try:
                    os.rename(self.staging_dir, self.destination)
                except OSError:
                    os.rename(self.replaced, self.destination)
                    self.replaced = None
                    raise
        else:
            os.rename(self.staging_dir, self.destination)
        fsync_dir(self.destination.parent)
        self.committed = True

    def rollback(self) -> None:
        if not self.committed:
            return
        if self.replaced is None:
            os.rename(self.destination, self.staging_dir)
        elif self.replaced == self.staging_dir:
            exchange(self.staging_dir, self.destination)
        else:
            os.rename(self.destination, self.staging_dir)
            os.rename(self.replaced, self.destination)
        self.replaced = None
        self.committed = False

    def journal_entry(self) -> dict:
        """What the restore journal needs to finish this swap after a crash."""
        st = self.staging_dir.stat()
        return {"destination": str(self.destination),
                "staging": str(self.staging_dir), "staged_inode": [st.st_dev, st.st_ino],
                "carry": self._carried_relpaths()}

    @classmethod
    def resume(cls, entry: dict) -> str:
        """Finish a swap the process died in: the staged tree (known by its inode) ends up in place."""
        destination, staging = Path(entry["destination"]), Path(entry["staging"])
        if _same(destination, entry["staged_inode"]):
            result = "already swapped in"
        elif not destination.exists() and _same(staging, entry["staged_inode"]):
            os.rename(staging, destination)
            result = "the staged state was moved into place"
        elif _same(staging, entry["staged_inode"]):
            carry_storage(destination, staging, entry.get("carry", []))  # it may have died while linking
            if not exchange(staging, destination):
                aside = destination.with_name(f".{destination.name}.eternia-replaced-journal")
                os.rename(destination, aside)
                os.rename(staging, destination)
            result = "the staged state was swapped in"
        else:
            return f"{destination}: the staged state is gone; restore it again"
        fsync_dir(destination.parent)
        old = [] if _same(staging, entry["staged_inode"]) else [staging]  # after an exchange it holds the old state
        left: dict[str, str] = {}
        for p in [*old, *destination.parent.glob(f".{destination.name}.eternia-replaced-*")]:
            try:
                remove_tree(p, keep_going=True)
            except OSError as exc:  # the restore is complete: what cannot be removed is reported, never a stop
                left[str(p)] = why_not_removed(exc)
        if left:
            raise LeftoverError(f"{destination}: {result}; what it replaced could not be removed: "
                                + "; ".join(f"{p} ({why})" for p, why in left.items())
                                + "; remove it by hand (`status` reports it until it is gone)", left)
        return f"{destination}: {result}; removed what it replaced"

    def discard(self) -> None:
        """Remove staging and what was replaced, as far as possible; raises the first OSError at the end."""
        failed = None
        for path in (self.staging_dir, self.replaced):
            try:
                if path is not None:
                    remove_tree(path, keep_going=True)
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        self.replaced = None

    def leftover(self) -> Path | None:
        """What :meth:`discard` left (the replaced state, or staging), if anything."""
        return next((p for p in (self.replaced, self.staging_dir) if p is not None and os.path.lexists(p)), None)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def carry_storage(destination: Path, staging: Path, relpaths: list[str], label: str = "restore") -> None:
    """Put hard links to our storage (backups, state, lock, journal) into the staged tree.

    The swap then brings the very same files into the new tree: at every moment
    they exist under their own path, whichever tree is live, and nothing of them is
    copied. What an older backup holds at that place is dropped: the live storage wins.
    Safe to repeat (the restore journal does, after a crash).
    """
    for rel in relpaths:
        staged = staging / rel
        try:
            remove_tree(staged)
            staged.parent.mkdir(parents=True, exist_ok=True)
            link_tree(destination / rel, staged)
        except OSError as exc:
            raise RestoreError(
                f"{label}: cannot carry the backup storage {destination / rel} into the restored tree "
                f"({exc.strerror or exc}); it lies inside the destination (on another filesystem?). "
                "Restore with --to DIR, or move the storage out of the source") from exc


def _same(path: Path, inode: list) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return [st.st_dev, st.st_ino] == list(inode)
