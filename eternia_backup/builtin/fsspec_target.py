"""Built-in target: any URL fsspec can open that no other target serves (``memory://``, ``ftp://`` ...).

It serves the protocol ``"*"``: the registry uses it when no plugin registered
the URL's protocol itself. A file is written under a temporary name
(``.<name>.<host>.<pid>.tmp``) and moved to its final name on commit; the
temporary name is removed if anything fails.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from eternia_backup.api import (
    AtomicWrite,
    ConfigError,
    StoredFile,
    Target,
    hookimpl,
    redact_text,
    split_protocol,
    temp_name,
)


# Seconds before a store that could not be reached is tried again: one command
# waits for one connection timeout, not one per operation; a scheduler tries again later.
RECONNECT_AFTER = 60.0


class FsspecAtomicWrite(AtomicWrite):
    """Write to a temporary name with fsspec, then move it into place."""

    def __init__(self, target: "FsspecTarget", filename: str):
        self.target = target
        self.final = target.join(filename)
        self.tmp = target.join(temp_name(filename))
        self._file = target.fs.open(self.tmp, "wb")
        self._done = False

    def write(self, data) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.close()
        self.target.fs.mv(self.tmp, self.final)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        discard = getattr(self._file, "discard", None)  # fsspec's AbstractBufferedFile: never complete on close
        try:
            if discard is not None:
                try:
                    discard()
                finally:
                    # discard() does not close: a later close() (even from __del__)
                    # would upload the buffer, recreating the temp file (ftp://)
                    self._file.closed = True
            else:
                self._file.close()
        except Exception:
            pass
        try:
            self.target.fs.rm_file(self.tmp)
        except Exception:
            pass  # never written, or already gone


class FsspecTarget(Target):
    """A directory of any filesystem fsspec can open; target options are its storage options."""

    protocols = ("*",)

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        super().__init__(name, url, options)
        import fsspec  # only when such a target is configured: it costs start-up time

        self.protocol = split_protocol(url)
        self._fs_options = {k: v for k, v in options.items() if not k.startswith("eternia_")}
        self._fs = None
        self._unreached: tuple[float, OSError] | None = None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **self._fs_options)
        except OSError as exc:
            # A store that connects when opened (ftp://) and cannot be reached now:
            # operations fail as a StorageError saying why (the other targets keep
            # working), and connecting is tried again after RECONNECT_AFTER.
            self._unreached = (time.monotonic(), exc)
            self.root = fsspec.get_filesystem_class(self.protocol)._strip_protocol(url)
        except (ImportError, ValueError) as exc:
            hint = " (install eternia-backup[s3])" if self.protocol in ("s3", "s3a") else ""
            raise ConfigError(f"target {name!r}: cannot open {redact_text(url)}: {exc}{hint}") from None
        except TypeError as exc:
            raise ConfigError(f"target {name!r}: invalid storage options: {redact_text(str(exc))}") from None
        self.root = self.root.rstrip("/") or self.root
        self._dir_ready = False
        self._threads = threading.local()
        self._dir_lock = threading.Lock()

    @property
    def fs(self):
        """The filesystem; one per thread when it is not thread-safe.

        A synchronous fsspec filesystem may hold one connection (ftp:// does)
        that two threads writing at once would interleave on; an async one
        (s3fs) is safe to share. Instances made for other threads skip fsspec's
        instance cache, which would hand back the shared one.
        """
        shared = self._fs
        if shared is None:  # not reached when configured
            shared = self._connect()
        if shared.async_impl or threading.current_thread() is self._owner:
            return shared
        fs = getattr(self._threads, "fs", None)
        if fs is None:
            fs = self._threads.fs = type(shared)(**shared.storage_options, skip_instance_cache=True)
        return fs

    def _connect(self):
        """Connect now, unless the last try failed less than RECONNECT_AFTER ago (then fail at once, as it did)."""
        import fsspec

        if self._unreached is not None and time.monotonic() - self._unreached[0] < RECONNECT_AFTER:
            raise self._unreached[1]
        try:
            self.fs = fsspec.core.url_to_fs(self.url, **self._fs_options)[0]
        except OSError as exc:
            self._unreached = (time.monotonic(), exc)
            raise
        self._unreached = None
        return self._fs

    @fs.setter
    def fs(self, value) -> None:
        self._fs = value
        self._owner = threading.current_thread()

    def join(self, filename: str) -> str:
        return f"{self.root}/{filename}"

    def file_url(self, filename: str) -> str:
        if self._fs is None:  # never reached: no filesystem to ask (and error messages need this)
            return redact_text(f"{self.url.rstrip('/')}/{filename}")
        url = self.fs.unstrip_protocol(self.join(filename))
        host = urlsplit(self.url).hostname
        if host and host not in url:  # ftp://: the host is in the filesystem's options, not in its paths
            url = f"{self.url.rstrip('/')}/{filename}"
        return redact_text(url)

    def ensure_dir(self) -> None:
        with self._dir_lock:  # writers in several threads: one makedirs (ftp's is check-then-create)
            if self._dir_ready:
                return
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except Exception as exc:
                self._forget_listings()
                try:
                    made = self.fs.isdir(self.root)  # by another process meanwhile
                except Exception:
                    made = False
                if not made:
                    raise self.error_for("create the directory", exc) from exc
            self._dir_ready = True

    def check(self) -> None:
        self.ensure_dir()

    def _forget_listings(self) -> None:
        """Drop the filesystem's listings cache: other processes write here too (ftp:// caches every ls)."""
        if self._fs is None:
            return  # not connected yet: nothing cached, and no reason to try connecting here
        try:
            self.fs.invalidate_cache(self.root)
        except Exception:
            pass

    def list(self) -> list[StoredFile]:
        self._forget_listings()
        try:
            if self.fs.isfile(self.root):
                raise NotADirectoryError(f"{self.display_url} is a file, not a directory; fix the target's URL")
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self.error_for("list", exc) from exc
        files = []
        for e in entries:
            if e.get("type") not in ("file", None):
                continue
            if e["name"].rstrip("/") == self.root.rstrip("/"):
                continue  # the directory itself (SeaweedFS lists an emptied "prefix/" as a key)
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            etag = e.get("ETag") or e.get("etag")
            files.append(StoredFile(name, e.get("size"), _mtime(e), str(etag) if etag else None))
        return files

    def open_write(self, filename: str) -> AtomicWrite:
        self.ensure_dir()
        try:
            return FsspecAtomicWrite(self, filename)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def open_read(self, filename: str) -> BinaryIO:
        self._forget_listings()  # the size a file object reads up to comes from a listing
        try:
            return self.fs.open(self.join(filename), "rb")
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def size(self, filename: str) -> int:
        self._forget_listings()
        try:
            return int(self.fs.info(self.join(filename))["size"])
        except Exception as exc:
            raise self.error_for("stat", exc, filename) from exc

    def delete(self, filename: str) -> None:
        path = self.join(filename)
        try:
            # One file, one request whose answer says whether it was deleted:
            # a bulk delete (s3fs's rm) ignores the per-key errors of a 200 reply.
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            # Some stores answer a missing file with a generic error (ftp: "550");
            # absent afterwards is what a delete promises.
            self._forget_listings()
            try:
                gone = not self.fs.exists(path)
            except Exception:
                gone = False
            if not gone:
                raise self.error_for("delete", exc, filename) from exc


def _mtime(entry: dict[str, Any]) -> float | None:
    """POSIX seconds from a listing entry, in the forms fsspec filesystems use; None if unknown."""
    mtime = entry.get("mtime") or entry.get("LastModified") or entry.get("created") or entry.get("modify")
    if hasattr(mtime, "timestamp"):
        return mtime.timestamp()
    if isinstance(mtime, str) and len(mtime) >= 14 and mtime[:14].isdigit():
        # ftp's MLSD "modify" fact: YYYYMMDDHHMMSS[.sss] in UTC (RFC 3659), not a number of seconds
        try:
            return datetime.strptime(mtime[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None
    try:
        return float(mtime) if mtime is not None else None
    except (TypeError, ValueError):
        return None  # a format this store's listing uses that we do not know


@hookimpl
def eternia_register_targets(register):
    register(FsspecTarget)
