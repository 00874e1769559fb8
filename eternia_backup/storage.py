"""The one place that talks to fsspec: URLs, options, atomic writes, errors.

A target is a directory named by a URL. Files are written so that a file is
visible under its final name only when it is complete:

* local disk: a temporary name in the same directory (``.<name>.<host>.<pid>.tmp``),
  fsynced, renamed, and the directory fsynced; files 0600, directories 0700;
* other fsspec stores: a temporary name, then a move; the temporary name is
  removed if anything fails.

Storage errors become :class:`StorageError` (or :class:`BackupNotFoundError`)
with a message naming the target and what to check; credentials never appear.
"""

from __future__ import annotations

import errno
import os
import socket
import stat as statmod
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from . import redact
from .errors import BackupNotFoundError, ConfigError, StorageError
from .fsutil import fsync_dir, make_private_dirs
from .providers import AtomicWrite, StoredFile, Target

TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600
DIR_MODE = 0o700


def split_protocol(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def temp_name(filename: str) -> str:
    """Temporary name of a file being written: hidden, marked with host and pid."""
    host = socket.gethostname().split(".")[0] or "host"
    return f".{filename}.{host}.{os.getpid()}{TMP_SUFFIX}"


def parse_temp_name(name: str) -> tuple[str, str, int] | None:
    """(final filename, host, pid) of a temporary name, or None."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    body = name[1 : -len(TMP_SUFFIX)]
    try:
        rest, pid = body.rsplit(".", 1)
        final, host = rest.rsplit(".", 1)
        return final, host, int(pid)
    except ValueError:
        return None


def describe_os_error(exc: BaseException) -> str:
    """A short cause for an OSError, without the secret-bearing repr of a URL."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, NotADirectoryError):
        return str(exc) or "not a directory"
    text = str(exc) or type(exc).__name__
    return redact.redact_text(text.splitlines()[0][:300])


class LocalAtomicWrite(AtomicWrite):
    def __init__(self, directory: Path, filename: str):
        self.final = directory / filename
        self.tmp = directory / temp_name(filename)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._done = False

    def write(self, data) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


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
        discard = getattr(self._file, "discard", None)
        try:
            if discard is not None:
                discard()  # never complete a partial upload on close
            else:
                self._file.close()
        except Exception:
            pass
        try:
            if self.target.fs.exists(self.tmp):
                self.target.fs.rm(self.tmp)
        except Exception:
            pass


class FsspecTarget(Target):
    """A target for any URL fsspec can open: plain paths, file://, memory://, s3:// ..."""

    protocols = ("*",)

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        super().__init__(name, url, options)
        self.protocol = split_protocol(url)
        fs_options = {k: v for k, v in options.items() if not k.startswith("eternia_")}
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **fs_options)
        except (ImportError, ValueError) as exc:
            hint = " (install eternia-backup[s3])" if self.protocol in ("s3", "s3a") else ""
            raise ConfigError(f"target {name!r}: cannot open {redact.redact_text(url)}: {exc}{hint}") from None
        except TypeError as exc:
            raise ConfigError(f"target {name!r}: invalid storage options: {redact.redact_text(str(exc))}") from None
        self.root = self.root.rstrip("/") or self.root
        self._dir_ready = False

    # -- naming ------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def display_url(self) -> str:
        return redact.redact_text(self.url)

    def join(self, filename: str) -> str:
        return f"{self.root}/{filename}"

    def file_url(self, filename: str) -> str:
        if self.is_local:
            return str(Path(self.root) / filename)
        return self.fs.unstrip_protocol(self.join(filename))

    def local_path(self, filename: str) -> Path | None:
        return Path(self.root) / filename if self.is_local else None

    def error_for(self, action: str, exc: BaseException, filename: str | None = None) -> StorageError:
        where = self.file_url(filename) if filename else self.display_url
        cause = describe_os_error(exc)
        cls = BackupNotFoundError if isinstance(exc, FileNotFoundError) else StorageError
        return cls(f"target {self.name!r}: cannot {action} {where}: {cause}")

    # -- operations ----------------------------------------------------------

    def ensure_dir(self) -> None:
        if self._dir_ready:
            return
        try:
            if self.is_local:
                path = Path(self.root)
                # Each missing parent too is 0700 whatever the umask: a
                # world-writable parent would let anyone move backups away.
                make_private_dirs(path, DIR_MODE)
                if not path.is_dir():
                    raise NotADirectoryError(f"{path} is not a directory")
                if statmod.S_IMODE(path.stat().st_mode) != DIR_MODE and path.stat().st_uid == os.getuid():
                    os.chmod(path, DIR_MODE)
            else:
                self.fs.makedirs(self.root, exist_ok=True)
        except Exception as exc:
            raise self.error_for("create the directory", exc) from exc
        self._dir_ready = True

    def check(self) -> None:
        self.ensure_dir()

    def list(self) -> list[StoredFile]:
        try:
            if self.is_local:
                root = Path(self.root)
                if not root.exists():
                    return []
                if not root.is_dir():
                    raise NotADirectoryError(f"{root} is not a directory; fix the target's path")
            elif self.fs.isfile(self.root):
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
            mtime = e.get("mtime") or e.get("LastModified") or e.get("created")
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            files.append(StoredFile(name, e.get("size"), float(mtime) if mtime is not None else None))
        return files

    def open_write(self, filename: str) -> AtomicWrite:
        self.ensure_dir()
        try:
            if self.is_local:
                return LocalAtomicWrite(Path(self.root), filename)
            return FsspecAtomicWrite(self, filename)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def open_read(self, filename: str) -> BinaryIO:
        try:
            if self.is_local:
                return open(Path(self.root) / filename, "rb")
            return self.fs.open(self.join(filename), "rb")
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def size(self, filename: str) -> int:
        try:
            if self.is_local:
                return os.stat(Path(self.root) / filename).st_size
            info = self.fs.info(self.join(filename))
            return int(info["size"])
        except Exception as exc:
            raise self.error_for("stat", exc, filename) from exc

    def exists(self, filename: str) -> bool:
        try:
            if self.is_local:
                return (Path(self.root) / filename).exists()
            return self.fs.exists(self.join(filename))
        except Exception as exc:
            raise self.error_for("check", exc, filename) from exc

    def delete(self, filename: str) -> None:
        try:
            if self.is_local:
                os.unlink(Path(self.root) / filename)
            else:
                # One file, one request whose answer says whether it was deleted:
                # a bulk delete (s3fs's rm) ignores the per-key errors of a 200 reply.
                self.fs.rm_file(self.join(filename))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self.error_for("delete", exc, filename) from exc


def target_for_url(url: str, options: dict[str, Any] | None = None, name: str = "url") -> FsspecTarget:
    """A generic target for the directory holding ``url`` (used by download/restore URL)."""
    return FsspecTarget(name, url, options or {})
