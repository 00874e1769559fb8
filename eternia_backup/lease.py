"""One backup per slot when replicas share a target: a lease on the target.

The lease is a small object ``<name>.lease`` on the shared target, created with
a conditional write (S3 ``If-None-Match: *``). It names its holder and expires;
the holder renews it (``If-Match`` on its ETag) while it works, and an expired
lease is taken over the same way, so two replicas can never both hold it.

The holder trusts its own monotonic clock, not the store: its lease is valid
until ``ttl - margin`` after the last successful renewal *request was sent*. A
holder that was paused (SIGSTOP, a long GC, a suspended VM) past that point
finds :meth:`Lease.check` failing and stops before committing or deleting
anything.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from .errors import EterniaBackupError
from .providers import ConditionalWrites, Target

log = logging.getLogger("eternia_backup.lease")


class LeaseLost(EterniaBackupError):
    """This process no longer holds the lease; it must not commit or delete anything."""


class LeaseUnsupported(EterniaBackupError):
    """The target does not enforce conditional writes, so a lease there would be false."""


def probe_conditional_writes(target: Target) -> bool:
    """True when the target refuses a second If-None-Match write of one name."""
    name = f".lease-probe-{secrets.token_hex(6)}"
    if not isinstance(target, ConditionalWrites):
        return False
    try:
        first = target.conditional_put(name, b"1", if_none_match=True)
        second = target.conditional_put(name, b"2", if_none_match=True)
    finally:
        try:
            target.delete(name)
        except Exception:
            pass
    return first is not None and second is None


class Lease:
    def __init__(self, target: Target, name: str, ttl: float, *, margin: float | None = None):
        self.target = target
        self.filename = f"{name}.lease"
        self.ttl = ttl
        self.margin = margin if margin is not None else min(ttl / 3, 30.0)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.etag: str | None = None
        self.valid_until = 0.0  # monotonic
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl, "ttl": self.ttl}).encode()

    def acquire(self) -> bool:
        """Take the lease (or an expired one); False when another holder has it."""
        sent = time.monotonic()
        etag = self.target.conditional_put(self.filename, self._body(), if_none_match=True)
        if etag is None:
            current = self.target.read_with_etag(self.filename)
            if current is None:
                return False  # released in between; the next slot will try again
            data, current_etag = current
            try:
                expires = float(json.loads(data)["expires_at"])
                holder = json.loads(data).get("owner", "?")
            except (ValueError, KeyError, TypeError):
                expires, holder = 0.0, "unreadable"
            if time.time() < expires:
                log.info("lease %s is held by %s until %s", self.filename, holder, time.ctime(expires))
                return False
            sent = time.monotonic()
            etag = self.target.conditional_put(self.filename, self._body(), if_match=current_etag)
            if etag is None:
                return False
            log.warning("took over the expired lease of %s", holder)
        self.etag = etag
        self.valid_until = sent + self.ttl - self.margin
        self._thread = threading.Thread(target=self._renew_loop, name="eternia-lease", daemon=True)
        self._thread.start()
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if time.monotonic() >= self.valid_until:
                self.lost = "the lease expired before it could be renewed (was this process paused?)"
                return
            sent = time.monotonic()
            try:
                etag = self.target.conditional_put(self.filename, self._body(), if_match=self.etag)
            except EterniaBackupError as exc:
                log.warning("could not renew the lease: %s", exc)
                continue  # retried until valid_until passes
            if etag is None:
                self.lost = "another holder took the lease over"
                return
            self.etag = etag
            self.valid_until = sent + self.ttl - self.margin

    def check(self) -> None:
        """Raise LeaseLost unless the lease is certainly still ours."""
        if self.lost:
            raise LeaseLost(f"lease on {self.target.display_url} lost: {self.lost}; nothing more is committed or deleted")
        if time.monotonic() >= self.valid_until:
            self.lost = "the lease expired (was this process paused?)"
            raise LeaseLost(f"lease on {self.target.display_url} lost: {self.lost}; nothing more is committed or deleted")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.etag and not self.lost:
            try:
                self.target.conditional_delete(self.filename, self.etag)
            except EterniaBackupError as exc:
                log.warning("could not release the lease (it expires by itself): %s", exc)
        self.etag = None
