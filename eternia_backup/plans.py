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

from .errors import RestoreError
from .fsutil import exchange, fsync_dir, remove_stale_siblings, remove_tree, sibling
from .providers import RestorePlan

log = logging.getLogger("eternia_backup.restore")


class DirectorySwapPlan(RestorePlan):
    """Replace the directory ``destination`` with the staged tree."""

    def __init__(self, destination: Path, label: str):
        self.destination = Path(destination).absolute()
        self.label = label
        self.staging_dir = sibling(self.destination, "restore")
        self.replaced: Path | None = None
        self.committed = False
        self.description = f"{label}: replace directory {self.destination}"

    def prepare(self) -> None:
        parent = self.destination.parent
        if self.destination.is_symlink():
            raise RestoreError(
                f"{self.label}: destination {self.destination} is a symlink; restore with --to DIR "
                "or remove the link"
            )
        if self.destination.exists() and not self.destination.is_dir():
            raise RestoreError(f"{self.label}: destination {self.destination} exists and is not a directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_siblings(self.destination, keep=self.staging_dir):
                log.warning("%s: removed %s, left by an interrupted restore", self.label, stale)
            self.staging_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise RestoreError(f"{self.label}: cannot create a staging directory in {parent}: {exc.strerror}") from exc

    def replaces_existing(self) -> bool:
        return self.destination.exists() and any(self.destination.iterdir())

    def changes(self) -> list[str]:
        if self.destination.exists():
            return [f"{self.label}: would replace the contents of {self.destination}"]
        return [f"{self.label}: would create {self.destination}"]

    def commit(self) -> None:
        if self.destination.exists():
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
        return {"kind": "directory-swap", "destination": str(self.destination),
                "staging": str(self.staging_dir), "staged_inode": [st.st_dev, st.st_ino]}

    def discard(self) -> None:
        remove_tree(self.staging_dir)
        if self.replaced is not None:
            remove_tree(self.replaced)
            self.replaced = None
