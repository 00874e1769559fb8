"""Built-in target: a directory on this machine (plain paths and ``file://`` URLs).

A file is visible under its final name only when it is complete: it is written
under a temporary name in the same directory (``.<name>.<host>.<pid>.tmp``),
fsynced, renamed, and the directory is fsynced. Files are 0600 and directories
0700 whatever the umask, each missing parent included: a world-writable parent
would let anyone move backups away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import stat as statmod
from pathlib import Path
from typing import Any, BinaryIO

from eternia_backup.api import (
    AtomicWrite,
    LocalPaths,
    StorageError,
    StoredFile,
    Target,
    describe_os_error,
    fsync_dir,
    hookimpl,
    make_private_dirs,
    temp_name,
    unmounted_mount_point,
)

FILE_MODE = 0o600
DIR_MODE = 0o700

#: how much of a file is written before the kernel is asked to start writing it to disk
WRITEBACK_STEP = 16 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


def _sync_file_range():
    """Linux's sync_file_range(2), or None (other systems, or libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_start_writeback = _sync_file_range()


class LocalAtomicWrite(AtomicWrite):
    def __init__(self, directory: Path, filename: str):
        self.final = directory / filename
        self.tmp = directory / temp_name(filename)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._done = False
        self._written = 0
        self._flushed = 0  # bytes whose writeback was started

    def write(self, data) -> int:
        n = self._file.write(data)
        self._written += n
        if self._written - self._flushed >= WRITEBACK_STEP and _start_writeback is not None:
            # The disk writes the archive while the rest is made, so the fsync of the commit
            # waits for the last few megabytes, not for all of them (the fsync still decides).
            _start_writeback(self._file.fileno(), self._flushed, self._written - self._flushed,
                             _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written
        return n

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


class LocalTarget(Target, LocalPaths):
    """A directory on local disk."""

    protocols = ("file", "local")

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        super().__init__(name, url, options)
        path = url.split("://", 1)[1] if "://" in url else url
        self._root = Path(path).expanduser().absolute()
        self._dir_ready = False

    @property
    def root_path(self) -> Path:
        return self._root

    def file_url(self, filename: str) -> str:
        return str(self._root / filename)

    def check(self) -> None:
        if self._dir_ready:
            return
        path = self._root
        if not path.exists():
            self._refuse_unmounted(path)
        try:
            make_private_dirs(path, DIR_MODE)
            if not path.is_dir():
                raise NotADirectoryError(f"{path} is not a directory")
            st = path.stat()
            if statmod.S_IMODE(st.st_mode) != DIR_MODE and st.st_uid == os.getuid():
                os.chmod(path, DIR_MODE)
        except OSError as exc:  # not "not found" (a backup that is missing): the directory cannot be made
            where = f" on {exc.filename}" if exc.filename and Path(exc.filename) != path else ""
            cause = (exc.strerror or describe_os_error(exc)).lower()
            raise StorageError(f"target {self.name!r}: cannot create the storage directory {path}: {cause}{where}; "
                               "create it for the user that runs the backups, or choose another path") from exc
        except Exception as exc:
            raise self.error_for("create the directory", exc) from exc
        self._dir_ready = True

    def _refuse_unmounted(self, path: Path) -> None:
        """Not under an fstab mount point that is not mounted: the backups would go to the disk beneath."""
        point = unmounted_mount_point(path)
        if point is not None:
            raise StorageError(f"target {self.name!r}: the storage directory {path} does not exist, and {point} "
                               "is a mount point in /etc/fstab that is not mounted; mount it (the backups "
                               "would go to the disk beneath it and vanish under it once mounted), or create "
                               f"{path} yourself if they are meant to go there")

    def list(self) -> list[StoredFile]:
        root = self._root
        try:
            if not root.exists():
                return []
            if not root.is_dir():
                raise NotADirectoryError(f"{root} is not a directory; fix the target's path")
            files = []
            with os.scandir(root) as entries:
                for e in entries:
                    try:
                        if not e.is_file(follow_symlinks=False):
                            continue
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listed
                    files.append(StoredFile(e.name, st.st_size, st.st_mtime))
            return files
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self.error_for("list", exc) from exc

    def open_write(self, filename: str) -> AtomicWrite:
        self.check()
        try:
            return LocalAtomicWrite(self._root, filename)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def open_read(self, filename: str) -> BinaryIO:
        try:
            return open(self._root / filename, "rb")
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def size(self, filename: str) -> int:
        try:
            return os.stat(self._root / filename).st_size
        except Exception as exc:
            raise self.error_for("stat", exc, filename) from exc

    def delete(self, filename: str) -> None:
        try:
            os.unlink(self._root / filename)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self.error_for("delete", exc, filename) from exc


@hookimpl
def eternia_register_targets(register):
    register(LocalTarget)
